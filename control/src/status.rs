//! The read-only HTTP status endpoint.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 `ok` while the process runs and every dataplane worker is alive; else 503 |
//! | `/readyz`  | 200 `ready` once every source synced and its table is published; else 503 |
//! | `/status`  | JSON: sources with sync state and staleness, table generation and compile time, object counts, invalid objects, manifest files, and the dataplane's per-port/per-worker counters |
//! | `/metrics` | Prometheus text format (OpenMetrics) |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::daemon::Shared;

/// What the dataplane exposes to the status endpoint.
pub trait DataplaneView: Send + Sync {
    /// Are all worker threads running?
    fn workers_alive(&self) -> bool;
    /// Counters and occupancy as JSON.
    fn status_json(&self) -> serde_json::Value;
    /// Appends its metrics in Prometheus text format (without the final `# EOF`).
    fn encode_metrics(&self, out: &mut String);
}

/// Server state.
#[derive(Clone)]
pub struct AppState {
    /// Control-plane state.
    pub shared: Arc<Shared>,
    /// The dataplane, when one runs.
    pub dataplane: Option<Arc<dyn DataplaneView>>,
}

/// The router (also used by tests without a socket).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Response {
    if s.dataplane.as_ref().is_none_or(|d| d.workers_alive()) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a dataplane worker stopped\n").into_response()
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting for the first complete sync of every source\n")
            .into_response()
    }
}

async fn status(State(s): State<AppState>) -> Response {
    let mut v = serde_json::to_value(s.shared.status_now()).unwrap_or_default();
    v["uptime_seconds"] = serde_json::json!(s.shared.started.elapsed().as_secs_f64());
    v["dataplane"] = s.dataplane.as_ref().map(|d| d.status_json()).unwrap_or(serde_json::Value::Null);
    axum::Json(v).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    if let Some(d) = &s.dataplane {
        d.encode_metrics(&mut out);
    }
    {
        let reg = s.shared.registry.lock().expect("registry lock");
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
        .into_response()
}

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, state: AppState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "status endpoint listening");
    axum::serve(listener, router(state)).await
}
