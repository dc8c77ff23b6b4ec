//! `portcullis lab`: a cluster's pods as network namespaces on one machine,
//! switched by a real dataplane, probed with real connections.
//!
//! ```text
//!   cluster.yaml ──lab up──▶ per pod: netns <prefix>-<ns>.<pod>, veth eth0 ⇄ <prefix>h<i>
//!                             echo server (TCP+UDP on the pod's container ports)
//!                             one `lab dataplane` process: every <prefix>h<i> is a port (switch mode)
//!   lab probe   ──▶ from every pod to every pod, a real request/response ──▶ reachability matrix
//!   lab apply   ──▶ file copied to <dir>/applied/, SIGHUP ──▶ dataplane recompiles, publishes (ArcSwap)
//!   lab down    ──▶ every process, namespace and link with the prefix, and the state dir
//! ```
//!
//! Everything the lab creates is recorded in a state directory
//! (default `/run/portcullis-lab`, see [`state`]) and named with a prefix, so
//! `lab down` cleans up even after a crash. Needs root.

pub mod apply;
pub mod cmd;
pub mod down;
pub mod flood;
pub mod policy;
pub mod probe;
pub mod run_dataplane;
pub mod serve;
pub mod state;
pub mod up;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use thiserror::Error;

/// `--family`: 4 or 6, nothing else.
pub fn parse_family_arg(s: &str) -> Result<u8, String> {
    match s {
        "4" => Ok(4),
        "6" => Ok(6),
        _ => Err("the address family is 4 or 6".into()),
    }
}

/// Default state directory.
pub const DEFAULT_DIR: &str = "/run/portcullis-lab";
/// Default name prefix of namespaces and links.
pub const DEFAULT_PREFIX: &str = "pcllab";

/// `portcullis lab ...`
#[derive(Args, Debug)]
pub struct LabArgs {
    /// The lab command.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// Where the lab's state lives.
#[derive(Args, Debug, Clone)]
pub struct DirArgs {
    /// State directory of the lab.
    #[arg(long = "lab-dir", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// The lab commands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Create a namespace per pod, start echo servers and the dataplane.
    Up(up::UpArgs),
    /// Remove everything the lab created (also after a crash).
    Down(down::DownArgs),
    /// Real connections from every pod to every pod: a reachability matrix.
    Probe(probe::ProbeArgs),
    /// Change the lab's policies: add or replace objects, recompile, publish.
    Apply(apply::ApplyArgs),
    /// Packets per second through the lab: an AF_XDP UDP flood between two pods.
    Flood(flood::FloodArgs),
    /// Print the dataplane's counters.
    Counters(DirArgs),
    /// (internal) The dataplane process `lab up` starts.
    #[command(hide = true)]
    Dataplane(run_dataplane::DataplaneArgs),
    /// (internal) The echo server run in each pod namespace.
    #[command(hide = true)]
    Serve(serve::ServeArgs),
    /// (internal) Probes from inside one pod namespace (targets on stdin).
    #[command(hide = true)]
    ProbeFrom(probe::ProbeFromArgs),
    /// (internal) The AF_XDP frame generator run inside a pod namespace.
    #[command(hide = true)]
    FloodSend(flood::FloodSendArgs),
}

/// A lab command failed.
#[derive(Debug, Error)]
pub enum LabError {
    /// `lab up`.
    #[error(transparent)]
    Up(#[from] up::UpError),
    /// `lab down`.
    #[error(transparent)]
    Down(#[from] down::DownError),
    /// `lab probe`.
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    /// `lab apply`.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// `lab flood`.
    #[error(transparent)]
    Flood(#[from] flood::FloodError),
    /// `lab dataplane`.
    #[error(transparent)]
    Dataplane(#[from] run_dataplane::DataplaneError),
    /// `lab serve`.
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    /// `lab counters`.
    #[error("reading the counters in {dir}")]
    Counters {
        /// State directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs a lab command.
pub fn run(args: LabArgs) -> Result<(), LabError> {
    match args.command {
        LabCommand::Up(a) => up::up(&a)?,
        LabCommand::Down(a) => down::down(&a)?,
        LabCommand::Probe(a) => probe::probe(&a)?,
        LabCommand::Apply(a) => apply::apply(&a)?,
        LabCommand::Flood(a) => flood::flood(&a)?,
        LabCommand::Counters(a) => {
            let text = std::fs::read_to_string(a.dir.join(state::COUNTERS_FILE))
                .map_err(|source| LabError::Counters { dir: a.dir.clone(), source })?;
            println!("{}", text.trim_end());
        }
        LabCommand::Dataplane(a) => run_dataplane::run(&a)?,
        LabCommand::Serve(a) => serve::serve(&a)?,
        LabCommand::ProbeFrom(a) => probe::probe_from(&a)?,
        LabCommand::FloodSend(a) => flood::flood_send(&a)?,
    }
    Ok(())
}
