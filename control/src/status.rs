//! The read-only HTTP status endpoint.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 `ok` while the process runs and every dataplane worker is alive; else 503 |
//! | `/readyz`  | 200 `ready` once every source synced and its table is published; else 503 |
//! | `/status`  | JSON: whether denied traffic is dropped (`enforcement`), sources with sync state and staleness, table generation and compile time, object counts, invalid objects, manifest files, and the dataplane's per-port/per-worker counters |
//! | `/metrics` | Prometheus text format (OpenMetrics) |
//!
//! With `status_token_file` configured, `/status` and `/metrics` need
//! `Authorization: Bearer <token>` ([`read_token`]); the probes' endpoints do not.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::daemon::Shared;

/// What the dataplane exposes to the status endpoint.
pub trait DataplaneView: Send + Sync {
    /// Are all worker threads running?
    fn workers_alive(&self) -> bool;
    /// Counters and occupancy as JSON.
    fn status_json(&self) -> serde_json::Value;
    /// Appends its metrics in Prometheus text format (without the final `# EOF`).
    fn encode_metrics(&self, out: &mut String);
    /// What the workers do with traffic policy denies, now.
    fn enforcement(&self) -> Enforcement;
}

/// What the workers do with traffic policy denies: the answer to "is this
/// node enforcing?", in `/status` (`enforcement`) and as the
/// `portcullis_enforcing` gauge (1 for [`Enforcement::Policy`] and
/// [`Enforcement::StartUpFailClosed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// A table compiled from the sources' state is in force.
    Policy,
    /// Before the first sync, with `fail_open: false`: pod traffic is dropped.
    StartUpFailClosed,
    /// Before the first sync, with `fail_open: true`: everything passes.
    StartUpFailOpen,
    /// `enforce: false`: every packet is forwarded without policy.
    Off,
    /// No dataplane runs (no ports configured): nothing is enforced here.
    NoDataplane,
    /// The dataplane has stopped (shutting down), or cannot be asked.
    Stopped,
}

impl Enforcement {
    /// Does traffic that policy denies get dropped?
    pub fn drops_denied(self) -> bool {
        matches!(self, Enforcement::Policy | Enforcement::StartUpFailClosed)
    }
}

/// Server state.
#[derive(Clone)]
pub struct AppState {
    /// Control-plane state.
    pub shared: Arc<Shared>,
    /// The dataplane, when one runs.
    pub dataplane: Option<Arc<dyn DataplaneView>>,
    /// `status_token_file` of the configuration: `/status` and `/metrics` need its token.
    pub token_file: Option<Arc<str>>,
}

/// The token in `file`: its content without surrounding white space
/// (a Secret written with `echo` ends with a newline).
pub fn read_token(file: &str) -> std::io::Result<String> {
    let t = std::fs::read_to_string(file)?.trim().to_string();
    if t.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"));
    }
    Ok(t)
}

/// `None` when the request may see `/status` and `/metrics`, else the
/// answer: 401 without the configured token (compared in constant time),
/// 503 when the token file cannot be read (the endpoint fails closed).
fn refused(s: &AppState, headers: &header::HeaderMap) -> Option<Response> {
    let file = s.token_file.as_deref()?;
    let want = match read_token(file) {
        Ok(t) => t,
        Err(e) => {
            // At most once a minute: every request would log it, and any pod can send some.
            static LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let last = LOGGED.load(std::sync::atomic::Ordering::Relaxed);
            if now >= last + 60
                && LOGGED
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::error!(file, error = %e, "status_token_file cannot be read; /status and /metrics refused");
            }
            return Some((StatusCode::SERVICE_UNAVAILABLE, "status token file unreadable\n").into_response());
        }
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same = given.len() == want.len()
        && given.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    (!same).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"portcullis\"")],
            "a bearer token is required (status_token_file)\n",
        )
            .into_response()
    })
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

async fn status(State(s): State<AppState>, headers: header::HeaderMap) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let mut v = serde_json::to_value(s.shared.status_now()).unwrap_or_default();
    v["uptime_seconds"] = serde_json::json!(s.shared.started.elapsed().as_secs_f64());
    v["dataplane"] = s.dataplane.as_ref().map(|d| d.status_json()).unwrap_or(serde_json::Value::Null);
    v["enforcement"] = serde_json::json!(enforcement(&s));
    v["build"] = serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "commit": crate::COMMIT});
    axum::Json(v).into_response()
}

fn enforcement(s: &AppState) -> Enforcement {
    s.dataplane.as_ref().map_or(Enforcement::NoDataplane, |d| d.enforcement())
}

async fn metrics(State(s): State<AppState>, headers: header::HeaderMap) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let mut out = String::new();
    if let Some(d) = &s.dataplane {
        d.encode_metrics(&mut out);
    }
    let e = enforcement(&s);
    let _ = writeln!(
        out,
        "# HELP portcullis_enforcing 1 while traffic that policy denies is dropped (a compiled table, or the fail-closed start-up table); 0 with enforce: false, the fail-open start-up table, no dataplane, or a stopped one (/status says which)\n\
         # TYPE portcullis_enforcing gauge\nportcullis_enforcing {}",
        u8::from(e.drops_denied())
    );
    let _ = writeln!(
        out,
        "# HELP portcullis_build This build: its version and the commit it was built from\n\
         # TYPE portcullis_build info\nportcullis_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::COMMIT
    );
    {
        let reg = s.shared.registry.lock().expect("registry lock");
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
        .into_response()
}

/// Binds the status address. `[::]` (the default) takes IPv4 and IPv6
/// connections on one socket whatever the host's `net.ipv6.bindv6only`, so
/// the kubelet's probes reach it on the node's address on IPv4, IPv6 and
/// dual-stack nodes alike; on a host with IPv6 disabled it falls back to
/// `0.0.0.0`. Any other address is bound as given.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    if !(addr.is_ipv6() && addr.ip().is_unspecified()) {
        return std::net::TcpListener::bind(addr);
    }
    let fd = match rustix::net::socket(AddressFamily::INET6, SocketType::STREAM, None) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::AFNOSUPPORT) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::info!(address = %v4, "IPv6 is disabled on this host: status endpoint on IPv4 only");
            return std::net::TcpListener::bind(v4);
        }
        Err(e) => return Err(e.into()),
    };
    sockopt::set_ipv6_v6only(&fd, false)?;
    // As std's bind does: a restart may rebind while old connections linger in TIME_WAIT.
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Limits of the status server: it listens on every address of a node whose
/// pods can all reach it, so no client may hold it up or fill its memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; one more is closed at once.
    pub connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read: Duration,
    /// Longest life of a connection (a scraper keeping one open reconnects).
    pub connection: Duration,
    /// Largest request head buffered, in bytes.
    pub buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 64,
            header_read: Duration::from_secs(10),
            connection: Duration::from_secs(120),
            buffer: 16 * 1024,
        }
    }
}

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, state: AppState) -> std::io::Result<()> {
    let listener = bind(addr)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(address = %listener.local_addr()?, "status endpoint listening");
    serve_on(listener, router(state), Limits::default()).await
}

/// Serves `app` on `listener` within `limits`. (Not `axum::serve`: it sets
/// no time limit on reading a request's headers, and no limit on
/// connections, so a pod trickling headers on many connections could make
/// the daemon run out of memory.)
pub async fn serve_on(listener: tokio::net::TcpListener, app: Router, limits: Limits) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors, or a connection reset before it was
            // accepted: not a reason to stop serving.
            Err(e) => {
                tracing::warn!(error = %e, "status endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the limit: closed at once (dropped), not queued.
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .max_buf_size(limits.buffer)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::{router, serve_on, AppState, Limits};

    /// A status server with no dataplane, on a loopback port, within
    /// `limits`; it serves while the runtime lives.
    fn serve(limits: Limits) -> (tokio::runtime::Runtime, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            router(AppState { shared: crate::daemon::Shared::new(), dataplane: None, token_file: None });
        rt.spawn(serve_on(listener, app, limits));
        (rt, addr)
    }

    /// Reads until the server closes the connection (or `within` passes):
    /// what it sent, and whether it closed.
    fn read_until_closed(c: &mut TcpStream, within: Duration) -> (String, bool) {
        c.set_read_timeout(Some(within)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (String::from_utf8_lossy(&got).into_owned(), true)
                }
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            }
        }
    }

    /// A client trickling a request's headers is cut off after the header
    /// time limit, connections beyond the limit are closed at once, and a
    /// well-behaved request is answered meanwhile and afterwards.
    #[test]
    fn slow_or_surplus_clients_cannot_hold_the_status_server() {
        let limits = Limits {
            connections: 2,
            header_read: Duration::from_millis(500),
            connection: Duration::from_secs(30),
            buffer: 16 * 1024,
        };
        let (_rt, addr) = serve(limits);
        let ask = || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            read_until_closed(&mut c, Duration::from_secs(5)).0
        };
        assert!(ask().starts_with("HTTP/1.1 200"), "{}", ask());

        // Two clients that never finish their headers hold both connections...
        let mut slow: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // ...so a third is closed at once, unanswered.
        let mut third = TcpStream::connect(addr).unwrap();
        let (got, closed) = read_until_closed(&mut third, Duration::from_millis(400));
        assert!(closed && got.is_empty(), "{closed} {got:?}");
        // The slow ones are cut off after the header time limit, not left open.
        let t = Instant::now();
        for c in &mut slow {
            let (_, closed) = read_until_closed(c, Duration::from_secs(5));
            assert!(closed, "a client trickling headers is still connected after {:?}", t.elapsed());
        }
        // A client that connects and sends nothing is cut off too.
        let mut silent = TcpStream::connect(addr).unwrap();
        assert!(
            read_until_closed(&mut silent, Duration::from_secs(5)).1,
            "a silent client is still connected"
        );
        // And the server answers again.
        assert!(ask().starts_with("HTTP/1.1 200"), "{}", ask());
    }

    /// `/status` and `/metrics` name the build (version and commit), so a
    /// rollout's nodes can be told apart.
    #[test]
    fn status_and_metrics_name_the_build() {
        let (_rt, addr) = serve(Limits::default());
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let got = read_until_closed(&mut c, Duration::from_secs(5)).0;
            got.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
        };
        assert!(!crate::COMMIT.is_empty());
        let status: serde_json::Value = serde_json::from_str(&get("/status")).unwrap();
        assert_eq!(
            status["build"],
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "commit": crate::COMMIT})
        );
        let metrics = get("/metrics");
        let line = format!(
            "portcullis_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            crate::COMMIT
        );
        assert!(metrics.contains(&format!("# TYPE portcullis_build info\n{line}")), "{metrics}");
    }

    /// The default address (`[::]`) answers on IPv4 and on IPv6, as a probe of the
    /// node's address reaches it on either kind of cluster.
    #[test]
    fn the_unspecified_ipv6_address_takes_both_families() {
        let mut default: SocketAddr = crate::config::DEFAULT_STATUS_ADDRESS.parse().unwrap();
        default.set_port(0);
        let l = super::bind(default).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut targets = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        // The kernel lists the addresses of IPv6 here: is `::1` on `lo`? (Not
        // when IPv6 is disabled at boot, or by sysctl in a container.)
        let v6_loopback = std::fs::read_to_string("/proc/net/if_inet6")
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("00000000000000000000000000000001 ")));
        if v6_loopback {
            assert!(l.local_addr().unwrap().is_ipv6(), "bound {:?}", l.local_addr());
            targets.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
        } else {
            // Only where the host has IPv6 disabled or no `::1`: said on the
            // test's stderr, which the harness does not capture, and a
            // failure where every capability is required (CI).
            let why = "no IPv6 loopback address on this host: only IPv4 is checked";
            assert!(!dataplane::testing::root::required(), "{why}");
            let _ = writeln!(std::io::stderr(), "SKIP (part): {why}");
        }
        for to in targets {
            let mut c = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect {to}: {e}"));
            let (mut s, from) = l.accept().unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            assert_eq!(from.ip().to_canonical(), to.ip(), "accepted from {from}");
        }
        // Another address is bound as given: an IPv4 one takes no IPv6 connection.
        let v4 = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(v4.local_addr().unwrap().is_ipv4());
    }
}
