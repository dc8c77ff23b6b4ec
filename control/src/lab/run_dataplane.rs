//! `lab dataplane`: the dataplane process of a lab. Every pod's host-side
//! veth is a port of one switch-mode dataplane; the decision table is
//! compiled from the lab's files and published through an `ArcSwap`.
//!
//! Policy changes: on SIGHUP the process reads the lab's files again
//! (`cluster.yaml`, then `applied/*` in name order), recompiles, and stores
//! the new table in the `ArcSwap`; workers pick it up at their next batch.
//! The new generation is then written to `<dir>/generation` (what `lab apply`
//! waits for). A file that fails to load leaves the old table in force and
//! is reported in `<dir>/reload-error`. SIGTERM or SIGINT stops it cleanly:
//! sockets closed, XDP programs detached.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clap::Args;
use dataplane::addresses::{Addresses, PodAddrs};
use dataplane::pipeline::{PipelineConfig, PublishedTable};
use dataplane::xsk::{AttachMode, CopyMode, XskConfig};
use dataplane::{Dataplane, DataplaneConfig};
use thiserror::Error;

use super::policy;
use super::state::{self, write_atomic};
use crate::manifest::LoadErrors;

/// `lab dataplane` arguments.
#[derive(Args, Debug, Clone)]
pub struct DataplaneArgs {
    /// State directory of the lab.
    #[arg(long = "lab-dir")]
    pub dir: PathBuf,
    /// Interfaces (ports), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ports: Vec<String>,
    /// native, generic or auto.
    #[arg(long, default_value = "native")]
    pub attach: String,
    /// copy, zero-copy or auto.
    #[arg(long, default_value = "copy")]
    pub copy: String,
    /// Cores to pin workers to.
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
}

/// The dataplane process failed.
#[derive(Debug, Error)]
pub enum DataplaneError {
    /// A setting has an unknown value.
    #[error("--{option}: unknown value {value:?}")]
    Option {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
    },
    /// A port that is none of the lab's pod links.
    #[error("port {port} is not the link of any pod of the lab")]
    PortWithoutPod {
        /// The interface.
        port: String,
    },
    /// The lab's files could not be loaded at start.
    #[error("loading the lab's objects")]
    Load(#[from] LoadErrors),
    /// The dataplane did not start.
    #[error("starting the dataplane")]
    Start(#[from] dataplane::StartError),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signal(#[source] std::io::Error),
    /// Writing to the state directory.
    #[error("writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Parses an attach mode name.
pub fn attach_mode(s: &str) -> Result<AttachMode, DataplaneError> {
    match s {
        "native" | "drv" => Ok(AttachMode::Native),
        "generic" | "skb" => Ok(AttachMode::Generic),
        "auto" => Ok(AttachMode::Auto),
        _ => Err(DataplaneError::Option { option: "attach", value: s.into() }),
    }
}

/// Parses a copy mode name.
pub fn copy_mode(s: &str) -> Result<CopyMode, DataplaneError> {
    match s {
        "copy" => Ok(CopyMode::Copy),
        "zero-copy" | "zerocopy" => Ok(CopyMode::ZeroCopy),
        "auto" => Ok(CopyMode::Auto),
        _ => Err(DataplaneError::Option { option: "copy", value: s.into() }),
    }
}

/// The pod behind each of `ports` (the lab's pod links), so that a pod can
/// neither send as another nor receive another's traffic (see
/// `dataplane::addresses`). Every port of a lab leads to a pod.
fn port_pods(dir: &Path, ports: &[String]) -> Result<Addresses, DataplaneError> {
    let path = dir.join(state::STATE_FILE);
    let lab = state::LabState::load(dir).map_err(|source| DataplaneError::Io { path, source })?;
    let pods = ports
        .iter()
        .map(|port| match lab.pods.iter().find(|p| p.host_if == *port) {
            Some(pod) => Ok(Some(PodAddrs::new(pod.addrs.iter().map(|(ip, _)| *ip)))),
            None => Err(DataplaneError::PortWithoutPod { port: port.clone() }),
        })
        .collect::<Result<_, _>>()?;
    Ok(Addresses::new(pods, Vec::new()))
}

fn table(dir: &Path, generation: u64, addresses: &Addresses) -> Result<PublishedTable, LoadErrors> {
    let compiled = policy::load(&policy::lab_files(dir))?.compile();
    for p in &compiled.problems {
        eprintln!("generation {generation}: {p}");
    }
    Ok(PublishedTable::new(generation, compiled.table, 1).with_addresses(addresses.clone()))
}

/// Runs until SIGTERM/SIGINT.
pub fn run(args: &DataplaneArgs) -> Result<(), DataplaneError> {
    let dir = &args.dir;
    let io = |path: PathBuf| move |source| DataplaneError::Io { path, source };
    let xsk = XskConfig {
        attach: attach_mode(&args.attach)?,
        copy: copy_mode(&args.copy)?,
        ..XskConfig::default()
    };
    let mut generation = 1;
    let addresses = port_pods(dir, &args.ports)?;
    let tables = Arc::new(ArcSwap::from_pointee(table(dir, generation, &addresses)?));
    let cfg = DataplaneConfig {
        ports: args.ports.clone(),
        cores: args.cores.clone(),
        xsk,
        pipeline: PipelineConfig::default(),
        ..DataplaneConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(DataplaneError::Signal)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()).map_err(DataplaneError::Signal)?;
    let dp = Dataplane::start(&cfg, tables.clone())?;
    eprintln!("dataplane up: ports {:?}, {:?}", args.ports, cfg.xsk);
    let gen_file = dir.join(state::GENERATION_FILE);
    // The generation file says what the workers enforce (what `lab apply`
    // waits for), not merely what was published.
    if !taken_up(&dp, generation) {
        eprintln!("warning: the workers have not taken up generation {generation} after {TAKE_UP:?}");
    }
    write_atomic(&gen_file, format!("{generation}\n").as_bytes()).map_err(io(gen_file.clone()))?;
    let mut last_counters = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            let err_file = dir.join(state::RELOAD_ERROR_FILE);
            match table(dir, generation + 1, &addresses) {
                Ok(t) => {
                    generation += 1;
                    tables.store(Arc::new(t));
                    dp.waker().wake();
                    if taken_up(&dp, generation) {
                        let _ = std::fs::remove_file(&err_file);
                        write_atomic(&gen_file, format!("{generation}\n").as_bytes())
                            .map_err(io(gen_file.clone()))?;
                        eprintln!("published generation {generation}");
                    } else {
                        let e = format!(
                            "generation {generation} was published, but the workers have not taken it up after {TAKE_UP:?}"
                        );
                        eprintln!("{e}");
                        write_atomic(&err_file, e.as_bytes()).map_err(io(err_file.clone()))?;
                    }
                }
                Err(e) => {
                    eprintln!("reload failed, generation {generation} stays: {e}");
                    write_atomic(&err_file, e.to_string().as_bytes()).map_err(io(err_file.clone()))?;
                }
            }
        }
        if last_counters.elapsed() >= Duration::from_secs(1) {
            last_counters = Instant::now();
            write_counters(dir, &dp, generation);
        }
    }
    write_counters(dir, &dp, generation);
    dp.shutdown();
    eprintln!("dataplane stopped");
    Ok(())
}

/// How long a published table may take to reach every worker (idle workers
/// look for one at least every `idle_poll_ms`, and are woken besides).
const TAKE_UP: Duration = Duration::from_secs(5);

/// Waits until every worker enforces `generation` (true), or [`TAKE_UP`] passed.
fn taken_up(dp: &Dataplane, generation: u64) -> bool {
    let deadline = Instant::now() + TAKE_UP;
    while dp.enforced_generation() < generation {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn write_counters(dir: &Path, dp: &Dataplane, generation: u64) {
    let io = dp.io_counters();
    let json = serde_json::json!({
        "generation": generation,
        "io": {
            "rx": io.rx, "tx": io.tx, "dropped": io.dropped, "tx_full": io.tx_full,
            "flood_copies": io.flood_copies, "no_frame": io.no_frame, "no_socket": io.no_socket,
            "kicks": io.kicks, "kick_errors": io.kick_errors,
        },
        "pipeline": dp.pipeline_counters(),
    });
    let _ = write_atomic(&dir.join(state::COUNTERS_FILE), format!("{json:#}\n").as_bytes());
}
