//! The Kubernetes source against a scripted API server (tower-test, as
//! kube-rs recommends): initial list, add, modify, delete, a failing watch
//! with reconnection, and an expired resourceVersion forcing a relist in
//! which an object deleted during the disconnect is gone.

use std::collections::BTreeSet;
use std::time::Duration;

use control::index::{Index, Kind};
use control::sources::{run_kube, SourceMsg, PROBE_TIMEOUT, RECOVERY_QUIET};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn policy(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x", "resourceVersion": "1"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}
    })
}

fn list(kind: &str, rv: &str, items: Vec<Value>) -> Response<Body> {
    let body = json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items});
    Response::new(Body::from(serde_json::to_vec(&body).unwrap()))
}

fn watch_events(events: &[(&str, Value)]) -> Response<Body> {
    let mut out = Vec::new();
    for (t, o) in events {
        out.extend(serde_json::to_vec(&json!({"type": t, "object": o})).unwrap());
        out.push(b'\n');
    }
    Response::new(Body::from(out))
}

/// A `Status` object of a failure, as the API server sends it.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

/// A failed request's response.
fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(&status(code, reason, message)).unwrap()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// A watch that ends at once: its resourceVersion has expired.
fn expired_watch() -> Response<Body> {
    watch_events(&[("ERROR", status(410, "Expired", "too old resource version"))])
}

/// What a scripted NetworkPolicy collection does with one request.
enum Np {
    /// Answer now.
    Answer(Response<Body>),
    /// Never answer (a watch held open, or a request left hanging).
    Park,
    /// Answer after this long.
    Later(Duration, Response<Body>),
}

/// A scripted API server: Namespaces and Pods are empty lists whose watches
/// stay open; each NetworkPolicy request (its URI, and whether it is a
/// watch) goes to `np`.
async fn np_scripted(mut handle: Handle, mut np: impl FnMut(&str, bool) -> Np) {
    let mut parked = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        assert_list_or_watch(&req);
        let uri = req.uri().to_string();
        let watch = uri.contains("watch=true");
        let reply = if uri.starts_with("/apis/networking.k8s.io/v1/networkpolicies") {
            np(&uri, watch)
        } else if watch {
            Np::Park
        } else if uri.starts_with("/api/v1/namespaces") {
            Np::Answer(list("NamespaceList", "1", vec![]))
        } else {
            Np::Answer(list("PodList", "1", vec![]))
        };
        match reply {
            Np::Answer(r) => send.send_response(r),
            Np::Park => parked.push(send),
            Np::Later(after, r) => {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    send.send_response(r);
                });
            }
        }
    }
}

/// The scripted API server. Namespaces and pods: one list, then watches that
/// never answer. NetworkPolicies: the scenario below.
/// Every request the daemon makes is a list or a watch of one of the three
/// collections, cluster-wide: what `deploy/clusterrole.yaml` grants (`list`,
/// `watch`), and nothing it does not (`get` of one object, any write).
/// (The mock runs in a spawned task, where a panic would only show as the
/// test timing out: a violation is printed and the test process aborted.)
fn assert_list_or_watch<B>(req: &Request<B>) {
    let uri = req.uri();
    let collections = ["/api/v1/namespaces", "/api/v1/pods", "/apis/networking.k8s.io/v1/networkpolicies"];
    if req.method() != http::Method::GET || !collections.contains(&uri.path()) {
        eprintln!("kube_mock: not a cluster-wide list or watch: {} {uri}", req.method());
        std::process::abort();
    }
}

async fn api_server(mut handle: Handle) {
    let mut np_lists = 0;
    let mut np_watches = 0;
    let mut parked = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        assert_list_or_watch(&req);
        let uri = req.uri().to_string();
        let watch = uri.contains("watch=true");
        if uri.starts_with("/api/v1/namespaces") || uri.starts_with("/api/v1/pods") {
            if watch {
                parked.push(send); // hold the watch open
            } else if uri.starts_with("/api/v1/namespaces") {
                send.send_response(list(
                    "NamespaceList",
                    "1",
                    vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})],
                ));
            } else {
                send.send_response(list(
                    "PodList",
                    "1",
                    vec![json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
                        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]},
                        "status": {"podIP": "10.0.0.1", "phase": "Running"}})],
                ));
            }
            continue;
        }
        assert!(uri.starts_with("/apis/networking.k8s.io/v1/networkpolicies"), "unexpected request {uri}");
        if !watch {
            np_lists += 1;
            match np_lists {
                // Initial list.
                1 => send.send_response(list(
                    "NetworkPolicyList",
                    "10",
                    vec![policy("p1", 80), policy("p2", 80)],
                )),
                // Relist after the expired resourceVersion: p3 was deleted while we were away.
                _ => send.send_response(list("NetworkPolicyList", "30", vec![policy("p1", 8080)])),
            }
            continue;
        }
        np_watches += 1;
        match np_watches {
            // Add, modify, delete; then the stream ends (the client re-watches).
            1 => send.send_response(watch_events(&[
                ("ADDED", policy("p3", 80)),
                ("MODIFIED", policy("p1", 81)),
                ("DELETED", policy("p2", 80)),
            ])),
            // The API server fails: the watcher reports it and retries with backoff.
            2 => send.send_response(failure(500, "InternalError", "etcd unavailable")),
            // Back, but our resourceVersion has expired: relist.
            3 => send.send_response(expired_watch()),
            _ => parked.push(send),
        }
    }
}

fn policies(idx: &Index) -> Vec<String> {
    let (c, _) = idx.snapshot();
    c.policies
        .iter()
        .map(|p| {
            let port = match &p.rules[0][0].ports[0] {
                policy_compiler::model::PortMatch::Range { lo, .. } => *lo,
                _ => 0,
            };
            format!("{}:{port}", p.name)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn list_watch_error_and_relist() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    tokio::spawn(api_server(handle));
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(run_kube(client, tx));
    let mut idx = Index::new();
    let mut synced = BTreeSet::new();
    let mut errors = Vec::new();
    let mut seen_states = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen_states.last().map(String::as_str) != Some("[\"p1:8080\"]") {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; states so far: {seen_states:?}, errors {errors:?}"))
            .expect("source ended");
        match msg {
            SourceMsg::Change { source, change, .. } => {
                idx.apply(source, change);
                let s = format!("{:?}", policies(&idx));
                if seen_states.last() != Some(&s) && s != "[]" {
                    seen_states.push(s);
                }
            }
            SourceMsg::Synced { kind, .. } => {
                synced.insert(format!("{kind:?}"));
            }
            SourceMsg::Health { kind, error, .. } => {
                assert_eq!(kind, Some(Kind::NetworkPolicy));
                errors.push(error);
            }
            SourceMsg::Files(..) | SourceMsg::Changes { .. } => unreachable!("not from the kube source"),
        }
    }
    // Initial list, then add, modify, delete, then the relist without p3.
    assert_eq!(
        seen_states,
        vec![
            "[\"p1:80\", \"p2:80\"]",
            "[\"p1:80\", \"p2:80\", \"p3:80\"]",
            "[\"p1:81\", \"p2:80\", \"p3:80\"]",
            "[\"p1:81\", \"p3:80\"]",
            "[\"p1:8080\"]",
        ],
        "errors: {errors:?}"
    );
    assert_eq!(synced, ["Namespace", "NetworkPolicy", "Pod"].iter().map(|s| s.to_string()).collect());
    assert!(
        errors
            .iter()
            .any(|e| e.as_deref().is_some_and(|e| e.contains("etcd unavailable") || e.contains("500"))),
        "the failing watch is reported: {errors:?}"
    );
    assert_eq!(errors.last(), Some(&None), "recovery is reported: {errors:?}");
    let (c, _) = idx.snapshot();
    assert_eq!(c.pods.len(), 1);
    assert_eq!(c.namespaces.len(), 1);
}

/// Namespaces and pods as above; NetworkPolicies: a list, a watch that
/// fails, then watches that succeed and stay quiet (no change, so no event).
/// Lists after the first (the source's probe) are answered too.
/// With `hang_first_probe`, the first list after the initial one (the
/// source's first probe) is never answered, as on a half-open connection.
async fn quiet_after_error(handle: Handle, hang_first_probe: bool) {
    let (mut np_watches, mut np_lists) = (0, 0);
    np_scripted(handle, move |_, watch| {
        if watch {
            np_watches += 1;
            return if np_watches == 1 {
                Np::Answer(failure(500, "InternalError", "etcd unavailable"))
            } else {
                Np::Park
            };
        }
        np_lists += 1;
        if hang_first_probe && np_lists == 2 {
            return Np::Park;
        }
        Np::Answer(list("NetworkPolicyList", "10", vec![policy("p1", 80)]))
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_watch_back_from_an_error_is_reported_healthy_without_waiting_for_a_change() {
    let healthy_after = back_from_error(false).await;
    // Not before the quiet period: a watch still failing would have failed again.
    assert!(healthy_after >= RECOVERY_QUIET, "{healthy_after:?}");
    assert!(healthy_after < RECOVERY_QUIET * 2, "{healthy_after:?}");
}

/// A probe that gets no answer gives up after its timeout, and the next one,
/// a quiet period later, reports the source back.
#[tokio::test(start_paused = true)]
async fn a_probe_left_unanswered_times_out_and_is_tried_again() {
    let healthy_after = back_from_error(true).await;
    let expected = RECOVERY_QUIET * 2 + PROBE_TIMEOUT;
    assert!(healthy_after >= expected, "{healthy_after:?}");
    assert!(healthy_after < expected + RECOVERY_QUIET, "{healthy_after:?}");
}

/// Runs the source against [`quiet_after_error`]; how long after the watch
/// error the source was reported healthy.
async fn back_from_error(hang_first_probe: bool) -> Duration {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    tokio::spawn(quiet_after_error(handle, hang_first_probe));
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(run_kube(client, tx));
    let mut failed_at = None;
    loop {
        // Virtual time: the test ends as soon as the runtime is idle long enough.
        let msg = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("a health report within 10 minutes (virtual)")
            .expect("source ended");
        if let SourceMsg::Health { kind, error, .. } = msg {
            assert_eq!(kind, Some(Kind::NetworkPolicy));
            match (error, failed_at) {
                (Some(e), _) => {
                    assert!(e.contains("etcd unavailable") || e.contains("500"), "{e}");
                    failed_at = Some(tokio::time::Instant::now());
                }
                (None, Some(t)) => return t.elapsed(),
                (None, None) => panic!("healthy reported before any error"),
            }
        }
    }
}

/// Namespaces and pods as in [`quiet_after_error`]; NetworkPolicies: a list,
/// then a watch whose resourceVersion has expired, then every list fails
/// (an overloaded API server). The time of each NetworkPolicy list after the
/// first goes to `relists`.
async fn relist_keeps_failing(
    handle: Handle,
    relists: std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
) {
    let mut np_lists = 0;
    np_scripted(handle, move |_, watch| {
        if watch {
            return Np::Answer(expired_watch());
        }
        np_lists += 1;
        if np_lists == 1 {
            return Np::Answer(list("NetworkPolicyList", "10", vec![policy("p1", 80)]));
        }
        relists.lock().unwrap().push(tokio::time::Instant::now());
        Np::Answer(failure(429, "TooManyRequests", "too many requests"))
    })
    .await
}

/// A relist that keeps failing backs off (the waits grow to the cap, instead
/// of starting over at each attempt), and the source stays unhealthy the
/// whole time: the start of each attempt is not taken for the source being
/// back, nor is the probe, while a list is under way.
#[tokio::test(start_paused = true)]
async fn a_relist_that_keeps_failing_backs_off_and_stays_unhealthy() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let relists = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    tokio::spawn(relist_keeps_failing(handle, relists.clone()));
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(run_kube(client, tx));
    let end = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut health = Vec::new();
    while let Ok(msg) = tokio::time::timeout_at(end, rx.recv()).await {
        if let SourceMsg::Health { kind, error, .. } = msg.expect("source ended") {
            assert_eq!(kind, Some(Kind::NetworkPolicy));
            health.push(error);
        }
    }
    let first_error = health.iter().position(Option::is_some).expect("the expired watch is reported");
    let back = health[first_error..].iter().filter(|h| h.is_none()).count();
    assert_eq!(back, 0, "reported healthy {back} times while failing, of {} reports", health.len());
    let times = relists.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 0.8 s doubling to 30 s, each plus up to as much again: about 15-25
    // attempts in ten minutes (starting over at each attempt: about 500).
    assert!((8..=30).contains(&times.len()), "{} relists: {gaps:?}", times.len());
    assert!(gaps.iter().rev().take(3).all(|g| *g >= Duration::from_secs(30)), "{gaps:?}");
    assert!(gaps[0] < Duration::from_secs(5), "{gaps:?}");
}

/// Namespaces and pods as in [`quiet_after_error`]; NetworkPolicies: a list,
/// then a watch whose resourceVersion has expired, then a relist that takes
/// `RELIST_TAKES` to be answered. The source's probes (lists of one) are
/// answered at once.
async fn slow_relist(handle: Handle) {
    let (mut np_lists, mut np_watches) = (0, 0);
    np_scripted(handle, move |uri, watch| {
        if watch {
            np_watches += 1;
            return if np_watches == 1 { Np::Answer(expired_watch()) } else { Np::Park };
        }
        let answer = list("NetworkPolicyList", "20", vec![policy("p1", 80)]);
        if uri.contains("limit=1&") || uri.ends_with("limit=1") {
            return Np::Answer(answer); // the source's probe
        }
        np_lists += 1;
        if np_lists == 1 {
            Np::Answer(answer)
        } else {
            Np::Later(RELIST_TAKES, answer)
        }
    })
    .await
}

const RELIST_TAKES: Duration = Duration::from_secs(200);

/// While a relist is under way the source is not probed back to healthy: it
/// is healthy again when the list completes, however long that takes.
#[tokio::test(start_paused = true)]
async fn a_slow_relist_is_not_taken_for_the_source_being_back() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    tokio::spawn(slow_relist(handle));
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(run_kube(client, tx));
    let mut failed_at = None;
    let healthy_after = loop {
        let msg = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("a health report within 10 minutes (virtual)")
            .expect("source ended");
        if let SourceMsg::Health { error, .. } = msg {
            match (error, failed_at) {
                (Some(_), None) => failed_at = Some(tokio::time::Instant::now()),
                (Some(e), Some(_)) => panic!("a second error: {e}"),
                (None, Some(t)) => break tokio::time::Instant::now() - t,
                (None, None) => panic!("healthy reported before any error"),
            }
        }
    };
    assert!(healthy_after >= RELIST_TAKES, "healthy after {healthy_after:?}, before the relist ended");
    assert!(healthy_after < RELIST_TAKES + Duration::from_secs(5), "{healthy_after:?}");
}
