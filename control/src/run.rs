//! `portcullis run`: the daemon. Wires sources, the index owner, the status
//! endpoint and (when ports are configured) the dataplane, and stops cleanly
//! on SIGTERM or SIGINT: sources stop, workers stop, sockets close, XDP
//! programs are detached.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwapOption;
use policy_compiler::DecisionTable;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::{self, OwnerConfig, Publication, Shared};
use crate::enforce::Enforcer;
use crate::sources::{self, KUBE, MANIFESTS};
use crate::status::{self, AppState, DataplaneView};

/// How often a manifest directory is scanned even without an inotify event
/// (those wake the source at once).
pub const MANIFEST_POLL: Duration = Duration::from_millis(200);

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch the Kubernetes API.
    pub kube: bool,
    /// Watch a manifest directory.
    pub manifests: Option<String>,
    /// Configuration.
    pub config: Config,
}

/// The latest published table when no dataplane runs (compile-and-serve mode).
pub type TableSlot = Arc<ArcSwapOption<(u64, Arc<DecisionTable>)>>;

/// The checks of a start before any port is opened: a policy source, a
/// readable manifest directory, a readable token file (also `run --check`'s).
pub fn check_start(kube: bool, manifests: Option<&str>, config: &Config) -> Result<()> {
    if !kube && manifests.is_none() {
        bail!("no policy source: give --kube and/or --manifests DIR");
    }
    if let Some(dir) = manifests {
        // A mistyped path must not start a node that waits forever (or, worse,
        // looks synced); a directory that goes missing later keeps what is in force.
        std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("--manifests {dir}: cannot read the directory: {e}"))?;
    }
    // A token file that cannot be read stops the start, before any port is opened.
    if let Some(f) = &config.status_token_file {
        status::read_token(f)
            .map_err(|e| anyhow::anyhow!("status_token_file {f}: cannot read a token: {e}"))?;
    }
    Ok(())
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    check_start(opts.kube, opts.manifests.as_deref(), &opts.config)?;
    let shared = Shared::new();

    // The dataplane first: if the ports cannot be opened there is nothing to enforce with.
    let enforcer = if opts.config.ports.is_empty() {
        None
    } else {
        let cfg = opts.config.clone();
        // The whole cause chain, down to the errno (`{:#}` at the binary's edge).
        let e = tokio::task::spawn_blocking(move || Enforcer::start(&cfg))
            .await?
            .map_err(|e| anyhow::Error::new(e).context("cannot start the dataplane"))?;
        Some(e)
    };

    let (tx, rx) = mpsc::channel(4096);
    let mut expected = Vec::new();
    if opts.kube {
        let kube_config = kube::Config::infer()
            .await
            .context("cannot configure the Kubernetes client (in-cluster config or kubeconfig)")?;
        let client = kube::Client::try_from(sources::bounded_reads(kube_config))
            .context("cannot configure the Kubernetes client (in-cluster config or kubeconfig)")?;
        expected.push(KUBE);
        tokio::spawn(sources::run_kube(client, tx.clone()));
    }
    if let Some(dir) = &opts.manifests {
        expected.push(MANIFESTS);
        tokio::spawn(sources::run_manifests(dir.clone(), MANIFEST_POLL, tx.clone()));
    }
    drop(tx);

    let publish: daemon::Publisher = match &enforcer {
        Some(e) => {
            // Measure change-to-enforced: from a source seeing a change until every
            // worker reports the generation that includes it.
            let (ltx, lrx) = mpsc::unbounded_channel::<(u64, Instant)>();
            tokio::spawn(watch_enforcement(e.clone(), shared.clone(), lrx));
            if opts.config.denied_flow_log_per_second > 0 {
                tokio::spawn(log_denied_flows(e.clone()));
            }
            let inner = e.publisher();
            Box::new(move |p: Publication| {
                if let Some(t) = p.oldest_change {
                    let _ = ltx.send((p.generation, t));
                }
                inner(p)
            })
        }
        None => {
            let slot: TableSlot = Arc::default();
            Box::new(move |p: Publication| slot.store(Some(Arc::new((p.generation, p.table)))))
        }
    };
    let mut owner_cfg = OwnerConfig::new(Duration::from_millis(opts.config.debounce_ms), expected);
    owner_cfg.port_pods = opts
        .config
        .ports
        .iter()
        .map(|p| {
            p.pod.as_ref().and_then(|k| k.split_once('/')).map(|(ns, n)| (ns.to_string(), n.to_string()))
        })
        .collect();
    let owner = tokio::spawn(daemon::run_owner(rx, shared.clone(), publish, owner_cfg));
    let app = AppState {
        shared: shared.clone(),
        dataplane: enforcer.clone().map(|e| e as Arc<dyn DataplaneView>),
        token_file: opts.config.status_token_file.as_deref().map(Arc::from),
    };
    let addr = opts.config.status_address;
    let server = tokio::spawn(async move { status::serve(addr, app).await });
    tracing::info!(fail_open = opts.config.fail_open, ports = opts.config.ports.len(), "portcullis running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); Ok(()) }
        r = server => match r {
            Ok(Err(e)) => Err(anyhow::anyhow!("status endpoint on {addr} failed: {e}")),
            _ => Err(anyhow::anyhow!("status endpoint stopped")),
        },
        r = owner => match r {
            Err(e) if e.is_panic() => {
                Err(anyhow::anyhow!("the table owner panicked: {}", daemon::panic_message(&*e.into_panic())))
            }
            _ => Err(anyhow::anyhow!("every policy source stopped")),
        },
    };
    if let Some(e) = enforcer {
        tokio::task::spawn_blocking(move || e.shutdown()).await?;
    }
    outcome
}

/// Drains the workers' denied-flow reports once per 200 ms into the log.
async fn log_denied_flows(e: Arc<Enforcer>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        e.log_denied_flows();
    }
}

async fn watch_enforcement(
    e: Arc<Enforcer>,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(u64, Instant)>,
) {
    while let Some((generation, seen)) = rx.recv().await {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if e.enforced_generation().is_some_and(|g| g >= generation) {
                let secs = (Instant::now() - seen).as_secs_f64();
                shared.observe_enforced(secs);
                tracing::debug!(generation, seconds = secs, "table enforced by every worker");
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(generation, "workers did not pick up the table within 10 s");
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}
