//! `portcullis run`: the daemon. Wires sources, the index owner, the status
//! endpoint and (when ports are configured) the dataplane, and stops cleanly
//! on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwapOption;
use policy_compiler::DecisionTable;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::daemon::{self, OwnerConfig, Shared};
use crate::sources::{self, KUBE, MANIFESTS};
use crate::status::{self, AppState};

/// How often a manifest directory is scanned: changes apply within a second.
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

/// The latest published table, for whoever enforces it.
pub type TableSlot = Arc<ArcSwapOption<(u64, DecisionTable)>>;

/// Runs until SIGTERM/SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    if !opts.kube && opts.manifests.is_none() {
        bail!("no policy source: give --kube and/or --manifests DIR");
    }
    let shared = Shared::new();
    let (tx, rx) = mpsc::channel(4096);
    let mut expected = Vec::new();
    if opts.kube {
        let client = kube::Client::try_default()
            .await
            .context("cannot configure the Kubernetes client (in-cluster config or kubeconfig)")?;
        expected.push(KUBE);
        tokio::spawn(sources::run_kube(client, tx.clone()));
    }
    if let Some(dir) = &opts.manifests {
        expected.push(MANIFESTS);
        tokio::spawn(sources::run_manifests(dir.clone(), MANIFEST_POLL, tx.clone()));
    }
    drop(tx);
    let slot: TableSlot = Arc::default();
    let s2 = slot.clone();
    let publish: daemon::Publisher = Box::new(move |g, t, _| s2.store(Some(Arc::new((g, t)))));
    let owner_cfg =
        OwnerConfig { debounce: Duration::from_millis(opts.config.debounce_ms), sources: expected };
    let owner = tokio::spawn(daemon::run_owner(rx, shared.clone(), publish, owner_cfg));
    let app = AppState { shared: shared.clone(), dataplane: None };
    let addr = opts.config.status_address;
    let server = tokio::spawn(async move { status::serve(addr, app).await });
    tracing::info!(fail_open = opts.config.fail_open, ports = opts.config.ports.len(), "portcullis running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        r = server => match r {
            Ok(Err(e)) => bail!("status endpoint on {addr} failed: {e}"),
            _ => bail!("status endpoint stopped"),
        },
        _ = owner => bail!("every policy source stopped"),
    }
    Ok(())
}
