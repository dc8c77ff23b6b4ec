//! `portcullis run --manifests DIR` as a user runs it: the binary, a real
//! directory, the HTTP status endpoint. Add, change, break (the broken file's
//! last good version stays in force), delete; and every endpoint answers
//! with its documented content, `/metrics` in valid Prometheus text format;
//! with a dataplane (root), a real Prometheus scrapes it and evaluates the
//! alerts of deploy/monitoring/.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("yaml"));
        // Where a test moves the directory (and may fail before moving it back).
        let _ = std::fs::remove_dir_all(self.dir.with_extension("away"));
    }
}

/// A port free now, and never handed out before in this process: the tests
/// run in parallel, and two daemons given one port would answer each other's
/// requests (the kernel may hand out a port again once its listener closed).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String, String)> {
    get_with(port, path, "")
}

/// [`get`] with extra header lines (each ending in `\r\n`).
fn get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String, String)> {
    request(port, path, "1.1", headers)
}

/// GET `path` in HTTP/`version`, closing the connection after the answer:
/// (status code, head, body).
fn request(port: u16, path: &str, version: &str, headers: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/{version}\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    // Bodies are small; axum sends them with content-length (no chunking) for these handlers.
    Some((code, head.to_string(), body.to_string()))
}

fn status(port: u16) -> serde_json::Value {
    serde_json::from_str(&get(port, "/status").unwrap().2).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn start(files: &[(&str, &str)]) -> Daemon {
    let d = spawn(files);
    wait_for("readyz", || get(d.port, "/readyz").is_some_and(|r| r.0 == 200));
    d
}

/// The daemon on a fresh directory holding `files`, not waited for.
fn spawn(files: &[(&str, &str)]) -> Daemon {
    spawn_with(files, "{}\n")
}

/// [`spawn`] with the configuration file `config`.
fn spawn_with(files: &[(&str, &str)], config_text: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("pcl-run-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    for (n, t) in files {
        std::fs::write(dir.join(n), t).unwrap();
    }
    let port = free_port();
    // An empty configuration (defaults, no ports), next to the directory rather than in
    // it, so that a file in /etc/portcullis on the machine does not count.
    let config = dir.with_extension("yaml");
    std::fs::write(&config, config_text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--manifests", dir.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(["--status-address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon { child, port, dir }
}

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
                    status: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n\
                    status: {podIP: 10.0.0.2}\n";

fn policy(port: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress: [{{ports: [{{port: {port}}}]}}]\n"
    )
}

#[test]
fn manifest_directory_add_change_break_delete() {
    let d = start(&[("pods.yaml", PODS)]);
    let s = status(d.port);
    assert_eq!(s["ready"], true);
    assert_eq!(s["objects"]["Pod"], 2);
    let g0 = s["table_generation"].as_u64().unwrap();
    // Add.
    std::fs::write(d.dir.join("policy.yaml"), policy("80")).unwrap();
    wait_for("policy added", || status(d.port)["objects"]["NetworkPolicy"] == 1);
    let g1 = status(d.port)["table_generation"].as_u64().unwrap();
    assert!(g1 > g0);
    // Change.
    std::fs::write(d.dir.join("policy.yaml"), policy("81")).unwrap();
    wait_for("policy changed", || status(d.port)["table_generation"].as_u64().unwrap() > g1);
    // Republished from the new version (what it allows is tested in `manifest_dir`'s own tests).
    let s = status(d.port);
    let f =
        s["files"].as_array().unwrap().iter().find(|f| f["file"].as_str().unwrap().ends_with("policy.yaml"));
    let f = f.unwrap();
    assert_eq!((&f["objects"], f["errors"].as_array().unwrap().len()), (&serde_json::json!(1), 0), "{f}");
    // Break: reported with file, object and field; the last good version stays in force.
    let g2 = status(d.port)["table_generation"].as_u64().unwrap();
    std::fs::write(d.dir.join("policy.yaml"), policy("0")).unwrap();
    wait_for("error reported", || {
        status(d.port)["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| !f["errors"].as_array().unwrap().is_empty())
    });
    let s = status(d.port);
    let f = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"].as_str().unwrap().ends_with("policy.yaml"))
        .unwrap();
    let err = f["errors"][0].as_str().unwrap();
    assert!(
        err.contains(
            "policy.yaml: document 1 (line 1): NetworkPolicy x/p: field spec.ingress[0].ports[0].port"
        ),
        "{err}"
    );
    assert_eq!(f["objects"], 1, "last good version in force");
    assert_eq!(s["objects"]["NetworkPolicy"], 1);
    assert_eq!(s["table_generation"].as_u64().unwrap(), g2, "nothing republished");
    // Delete.
    std::fs::remove_file(d.dir.join("policy.yaml")).unwrap();
    wait_for("policy deleted", || status(d.port)["objects"]["NetworkPolicy"] == 0);
}

/// A file rewritten in place (`kubectl get ... > file` truncates it, then writes it) is
/// read only once its writer has closed it: a half-written file that happens to parse
/// never replaces what is in force. A file emptied keeps its last good version, with an
/// error naming it, until it is deleted.
#[test]
fn a_file_being_rewritten_is_read_once_its_writer_closes_it() {
    use std::io::Write;
    let p = |port| policy(port);
    let q = |port: &str| policy(port).replace("name: p,", "name: q,");
    let d = start(&[("pods.yaml", PODS), ("policies.yaml", &format!("{}---\n{}", p("80"), q("81")))]);
    assert_eq!(status(d.port)["objects"]["NetworkPolicy"], 2);
    // Truncated and half written, still open: the first policy alone parses.
    let mut f = std::fs::File::create(d.dir.join("policies.yaml")).unwrap();
    f.write_all(format!("{}---\n", p("80")).as_bytes()).unwrap();
    f.flush().unwrap();
    // Another file written after it is read, so the directory was scanned since the
    // half-written file appeared; the half-written file was not applied.
    std::fs::write(d.dir.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: later}\n")
        .unwrap();
    wait_for("the later file is read", || status(d.port)["objects"]["Namespace"] == 1);
    let s = status(d.port);
    assert_eq!(s["objects"]["NetworkPolicy"], 2, "a half-written file was applied: {s}");
    assert_eq!(being_written(&s, "policies.yaml"), Some(true), "{s}");
    assert_eq!(s["table"]["policies"], 2, "{s}");
    let g0 = s["table_generation"].as_u64().unwrap();
    // The rest, then close: the new version (q on port 82) is read.
    f.write_all(q("82").as_bytes()).unwrap();
    drop(f);
    wait_for("the rewritten file is applied", || status(d.port)["table_generation"].as_u64().unwrap() > g0);
    assert_eq!(status(d.port)["objects"]["NetworkPolicy"], 2);
    let g1 = status(d.port)["table_generation"].as_u64().unwrap();
    // Emptied and closed: an error, and both policies stay in force.
    std::fs::File::create(d.dir.join("policies.yaml")).unwrap();
    let file_error = |s: &serde_json::Value| {
        s["files"].as_array().unwrap().iter().find_map(|f| {
            let e = f["errors"][0].as_str()?;
            f["file"].as_str().unwrap().ends_with("policies.yaml").then(|| e.to_string())
        })
    };
    wait_for("the empty file is reported", || file_error(&status(d.port)).is_some());
    let s = status(d.port);
    let err = file_error(&s).unwrap();
    assert!(err.contains("policies.yaml") && err.contains("holds no objects any more"), "{err}");
    assert!(err.contains("last good version (2 objects) stays in force"), "{err}");
    assert_eq!(s["objects"]["NetworkPolicy"], 2, "{s}");
    assert_eq!(s["table_generation"].as_u64().unwrap(), g1, "{s}");
    // Deleting the file removes them.
    std::fs::remove_file(d.dir.join("policies.yaml")).unwrap();
    wait_for("policies deleted", || status(d.port)["objects"]["NetworkPolicy"] == 0);
}

/// A file linked into the directory (`ln -s`, as a ConfigMap volume's keys are) is
/// applied at once: it was not written in place, so there is nothing to wait for.
#[test]
fn a_symlinked_file_is_applied_without_waiting() {
    let d = start(&[("pods.yaml", PODS)]);
    let target = d.dir.join(".target");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("policy.yaml"), policy("80")).unwrap();
    std::os::unix::fs::symlink(target.join("policy.yaml"), d.dir.join("policy.yaml")).unwrap();
    // The write guard would hold a file it takes for one being written for 10 s,
    // and /status would say so meanwhile.
    wait_for("the linked policy", || {
        let s = status(d.port);
        assert_ne!(being_written(&s, "policy.yaml"), Some(true), "held as being written: {s}");
        s["table"]["policies"] == 1
    });
    assert_eq!(being_written(&status(d.port), "policy.yaml"), Some(false));
}

/// `being_written` of the file named `name` in `/status`, if it is listed.
fn being_written(s: &serde_json::Value, name: &str) -> Option<bool> {
    s["files"].as_array()?.iter().find(|f| f["file"].as_str().is_some_and(|p| p.ends_with(name)))?
        ["being_written"]
        .as_bool()
}

/// A second definition of an object in force, added after the first sync, changes
/// nothing in force but is reported at once (in `/status` and the metric); removing
/// it clears the report.
#[test]
fn a_conflicting_file_added_later_is_reported_and_cleared() {
    let d = start(&[("pods.yaml", PODS), ("policy.yaml", &policy("80"))]);
    let g = status(d.port)["table_generation"].as_u64().unwrap();
    std::fs::write(d.dir.join("z-override.yaml"), policy("81")).unwrap();
    let errors = |port| status(port)["file_errors"].to_string();
    wait_for("the conflict is reported", || errors(d.port).contains("also defined at"));
    assert!(errors(d.port).contains("z-override.yaml"), "{}", errors(d.port));
    let m = || metric(&get(d.port, "/metrics").unwrap().2, "portcullis_manifest_file_errors");
    assert_eq!(m(), Some(1.0));
    assert_eq!(status(d.port)["table_generation"].as_u64().unwrap(), g, "nothing in force changed");
    std::fs::remove_file(d.dir.join("z-override.yaml")).unwrap();
    wait_for("the conflict is cleared", || !errors(d.port).contains("also defined at"));
    assert_eq!(m(), Some(0.0));
}

/// A manifest directory that goes away keeps what is in force, and the source is
/// reported down (in `/status` and `portcullis_source_up`) until it is back.
#[test]
fn an_unreadable_directory_is_a_source_down() {
    let d = start(&[("pods.yaml", PODS), ("policy.yaml", &policy("80"))]);
    let up = |port| {
        metric(&get(port, "/metrics").unwrap().2, "portcullis_source_up{source=\"manifests\",kind=\"Pod\"}")
    };
    assert_eq!(up(d.port), Some(1.0));
    let away = d.dir.with_extension("away");
    std::fs::rename(&d.dir, &away).unwrap();
    wait_for("the source is down", || up(d.port) == Some(0.0));
    let s = status(d.port);
    let err = s["sources"]["manifests/Pod"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("manifest directory unreadable"), "{s}");
    assert_eq!(s["objects"]["NetworkPolicy"], 1, "what is in force stays: {s}");
    std::fs::rename(&away, &d.dir).unwrap();
    wait_for("the source is back", || up(d.port) == Some(1.0));
    assert!(status(d.port)["sources"]["manifests/Pod"]["error"].is_null());
}

/// A `--config` file that does not exist is an error naming it, before anything is
/// served; only the default path may be absent.
#[test]
fn a_missing_config_file_given_explicitly_is_an_error() {
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let missing = dir.join("no-such-config.yaml");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--manifests", dir.to_str().unwrap(), "--config", missing.to_str().unwrap()])
        .args(["--status-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(10) || get(port, "/readyz").is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portcullis run started with a missing --config file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains(&format!("error: cannot read {}: No such file", missing.display())), "{err}");
}

#[test]
fn a_missing_manifest_directory_is_an_error() {
    let port = free_port();
    let guard = tempfile::tempdir().unwrap();
    let config = guard.path().join("config.yaml");
    std::fs::write(&config, "{}\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--manifests", "/nonexistent/policies", "--config", config.to_str().unwrap()])
        .args(["--status-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--manifests /nonexistent/policies: cannot read the directory"), "{err}");
}

#[test]
fn a_file_broken_at_start_keeps_the_node_unready_until_it_parses() {
    // A default deny with a typo: starting without it would enforce nothing.
    let broken =
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n\
                  spec: {podSelector: {}, policyType: [Ingress]}\n";
    let d = spawn(&[("00-pods.yaml", PODS), ("10-deny.yaml", broken)]);
    wait_for("the status endpoint", || get(d.port, "/status").is_some());
    wait_for("the broken file in /status", || status(d.port)["files"].to_string().contains("policyType"));
    // A file written after it is read, so the directory was scanned again since:
    // still not ready, nothing published.
    std::fs::write(d.dir.join("05-ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: later}\n")
        .unwrap();
    wait_for("the later file is read", || {
        status(d.port)["files"].as_array().is_some_and(|fs| {
            fs.iter()
                .any(|f| f["file"].as_str().is_some_and(|n| n.ends_with("05-ns.yaml")) && f["objects"] == 1)
        })
    });
    assert_eq!(get(d.port, "/readyz").unwrap().0, 503);
    let s = status(d.port);
    assert_eq!(s["ready"], false, "{s}");
    std::fs::write(d.dir.join("10-deny.yaml"), broken.replace("policyType", "policyTypes")).unwrap();
    wait_for("readyz", || get(d.port, "/readyz").is_some_and(|r| r.0 == 200));
    let s = status(d.port);
    assert_eq!(s["table"]["policies"], 1, "{s}");
}

#[test]
fn every_endpoint_answers_as_documented() {
    let d = start(&[("pods.yaml", PODS), ("policy.yaml", &policy("80"))]);
    let (code, _, body) = get(d.port, "/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = get(d.port, "/readyz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let s = status(d.port);
    for key in [
        "sources",
        "ready",
        "table_generation",
        "table_published_unix",
        "compile_ms",
        "objects",
        "table",
        "invalid",
        "files",
        "uptime_seconds",
    ] {
        assert!(s.get(key).is_some(), "/status lacks {key}: {s}");
    }
    let src = &s["sources"]["manifests/NetworkPolicy"];
    assert_eq!(src["synced"], true);
    assert!(src["seconds_since_last_event"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["table"]["pods"], 2);
    assert_eq!(s["table"]["policies"], 1);

    let (code, head, body) = get(d.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    check_prometheus_text(&body);
    for m in [
        "portcullis_table_generation",
        "portcullis_ready 1",
        "portcullis_compile_duration_seconds_count 1",
        "portcullis_objects{kind=\"NetworkPolicy\"} 1",
        "portcullis_invalid_objects 0",
        "portcullis_source_up{source=\"manifests\",kind=\"Pod\"} 1",
        "portcullis_policy_change_to_publish_seconds_bucket",
        "portcullis_manifest_file_errors 0",
    ] {
        assert!(body.contains(m), "/metrics lacks {m}:\n{body}");
    }
    // Timestamps an alert can compare with time(): set, and recent.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for m in [
        "portcullis_table_published_timestamp_seconds",
        "portcullis_source_last_event_timestamp_seconds{source=\"manifests\",kind=\"NetworkPolicy\"}",
    ] {
        let t = metric(&body, m).unwrap_or_else(|| panic!("/metrics lacks {m}:\n{body}"));
        assert!((now - 60.0..=now + 1.0).contains(&t), "{m} = {t}, now {now}");
    }
    // A rejected file shows in the metrics too.
    std::fs::write(d.dir.join("policy.yaml"), policy("0")).unwrap();
    wait_for("the rejected file is counted", || {
        metric(&get(d.port, "/metrics").unwrap().2, "portcullis_manifest_file_errors") == Some(1.0)
    });
}

/// A strict reading of the Prometheus/OpenMetrics text format: every family
/// declared with HELP and TYPE before its samples, sample names belong to the
/// declared family (with the histogram/counter suffixes), label sets are
/// well-formed, values parse as floats, the exposition ends with `# EOF`.
fn check_prometheus_text(body: &str) {
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF");
    for l in &lines[..lines.len() - 1] {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap();
            assert!(matches!(t, "counter" | "gauge" | "histogram" | "summary" | "info" | "unknown"), "{l}");
            types.insert(name.to_string(), t.to_string());
            continue;
        }
        if l.starts_with("# HELP ") || l.starts_with("# UNIT ") {
            continue;
        }
        assert!(!l.starts_with('#'), "unknown comment {l}");
        let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {l}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {l}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels {l}");
                for kv in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad label {kv} in {l}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name {k}");
                    assert!(v.starts_with('"') && v.ends_with('"'), "unquoted label value in {l}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count", "_total", "_created", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} before/without its # TYPE");
    }
}

/// `portcullis run` with ports: the stars pods in namespaces (`lab up --run-manifests`),
/// the daemon as their dataplane. `/status` and `/metrics` carry the dataplane's
/// counters, and SIGTERM leaves no XDP program on the ports.
#[test]
fn daemon_with_a_dataplane_serves_its_counters_and_detaches_on_sigterm() {
    if dataplane::testing::root::skip(&[]) {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_portcullis");
    let tag = std::process::id() % 10000;
    let prefix = format!("prd{tag}");
    // Removed when dropped, also when the test fails.
    let work_dir = tempfile::Builder::new().prefix("pcl-run-dp-").tempdir().unwrap();
    let work = work_dir.path().to_path_buf();
    let manifests = work.join("policies");
    std::fs::create_dir_all(&manifests).unwrap();
    let stars = format!("{}/../examples/stars", env!("CARGO_MANIFEST_DIR"));
    for f in ["00-cluster.yaml", "01-default-deny.yaml", "02-allow-ui.yaml"] {
        std::fs::copy(format!("{stars}/{f}"), manifests.join(f)).unwrap();
    }
    let lab_dir = work.join("lab");
    let port = free_port();
    struct Down(Vec<String>);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(&self.0[0]).args(&self.0[1..]).output();
        }
    }
    let _down = Down(
        [exe, "lab", "down", "--lab-dir", lab_dir.to_str().unwrap(), "--prefix", &prefix]
            .map(String::from)
            .to_vec(),
    );
    let up = Command::new(exe)
        .args(["lab", "up", "--lab-dir", lab_dir.to_str().unwrap(), "--prefix", &prefix])
        .args(["-f", &format!("{stars}/00-cluster.yaml"), "--run-manifests", manifests.to_str().unwrap()])
        .args(["--status-address", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(up.status.success(), "lab up: {}", String::from_utf8_lossy(&up.stderr));
    wait_for("the daemon enforces the table", || {
        get(port, "/status").is_some_and(|(_, _, b)| {
            let s: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
            s["ready"] == true && s["dataplane"]["pipeline"]["table_generation"].as_u64() >= Some(1)
        })
    });
    // Traffic: the management UI reaches the client (allow-ui in client); the client does not
    // reach the frontend (default-deny in stars).
    let probe = Command::new(exe)
        .args(["lab", "probe", "--lab-dir", lab_dir.to_str().unwrap(), "--output", "json"])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let s = status(port);
    let dp = &s["dataplane"];
    assert_eq!(dp["running"], true);
    assert_eq!(dp["ports"].as_array().unwrap().len(), 4);
    assert!(dp["pipeline"]["frames_in"].as_u64().unwrap() > 0, "{dp}");
    assert!(dp["pipeline"]["drops"]["policy"].as_u64().unwrap() > 0, "default deny dropped something: {dp}");
    let (code, _, body) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    check_prometheus_text(&body);
    for m in [
        "portcullis_port_packets_total{port=",
        "portcullis_port_kernel_drops_total{port=",
        "portcullis_dropped_packets_total{reason=\"policy\"}",
        "portcullis_conntrack_entries",
        "portcullis_conntrack_evicted_total 0",
        "portcullis_conntrack_over_share_total 0",
        "portcullis_conntrack_picked_up_total",
        "portcullis_node_exempt_connections_total",
        "portcullis_conntrack_related_total",
        "portcullis_conntrack_entries{worker=\"0\"}",
        "portcullis_conntrack_capacity{worker=\"0\"}",
        "portcullis_worker_pinned{worker=\"0\"}",
        "portcullis_io_drops_total{reason=\"no_frame\"}",
        // Real traffic went through the rings: no descriptor was out of the UMEM.
        "portcullis_io_drops_total{reason=\"bad_descriptor\"} 0",
        "portcullis_port_tx_dropped_total{port=",
        "portcullis_conntrack_expired_total",
        "portcullis_enforced_table_generation",
        "portcullis_policy_change_to_enforced_seconds_count",
    ] {
        assert!(body.contains(m), "/metrics lacks {m}:\n{body}");
    }
    // Per-port TX counters are counted (the probe's allowed traffic left through the ports):
    // /status and /metrics agree, and frames went out.
    let ports = dp["pipeline"]["ports"].as_array().unwrap();
    let tx: u64 = ports.iter().map(|p| p["tx_frames"].as_u64().unwrap()).sum();
    // (42 bytes: an ARP frame, the smallest sent here; veths do not pad frames to 60.
    // With more ARP than IP through a port, its average falls below 60.)
    assert!(
        tx > 0
            && ports.iter().all(|p| p["tx_bytes"].as_u64().unwrap() >= 42 * p["tx_frames"].as_u64().unwrap()),
        "{dp}"
    );
    // The kernel's socket counters are read per port (zero here: nothing overran).
    for p in ports {
        for k in ["kernel_rx_dropped", "kernel_rx_ring_full", "kernel_fill_ring_empty", "kernel_rx_invalid"] {
            assert!(p[k].is_u64(), "{k} missing: {p}");
        }
    }
    let tx_metric: f64 = (0..4)
        .filter_map(|i| {
            metric(&body, &format!("portcullis_port_packets_total{{port=\"{prefix}h{i}\",direction=\"tx\"}}"))
        })
        .sum();
    assert!(tx_metric > 0.0, "no TX in portcullis_port_packets_total:\n{body}");
    // Bytes per port and direction, as /status counted them (/status was read first: the
    // same or more), and some went out.
    for (i, p) in ports.iter().enumerate() {
        for dir in ["rx", "tx"] {
            let name = format!("portcullis_port_bytes_total{{port=\"{prefix}h{i}\",direction=\"{dir}\"}}");
            let m = metric(&body, &name).unwrap_or_else(|| panic!("/metrics lacks {name}:\n{body}"));
            let st = p[format!("{dir}_bytes")].as_u64().unwrap() as f64;
            assert!(m >= st, "{name} {m}, /status {st}");
        }
    }
    let tx_bytes: f64 = (0..4)
        .filter_map(|i| {
            metric(&body, &format!("portcullis_port_bytes_total{{port=\"{prefix}h{i}\",direction=\"tx\"}}"))
        })
        .sum();
    assert!(tx_bytes >= 42.0 * tx_metric, "tx bytes {tx_bytes} for {tx_metric} frames");
    // Per-policy allow hits: the probe's connections from the UI into the client namespace.
    let hits = metric(&body, "portcullis_policy_allowed_connections_total{namespace=\"client\",policy=\"allow-ui\",direction=\"ingress\"}");
    assert!(hits.is_some_and(|n| n >= 1.0), "no allow hits for client/allow-ui:\n{body}");
    assert!(
        metric(&body, "portcullis_policy_allowed_connections_total{namespace=\"stars\",policy=\"default-deny\",direction=\"ingress\"}").is_none(),
        "a policy without rules allows nothing"
    );
    prometheus_evaluates_the_alerts(port, &manifests, &work);
    // The denied-flow log (the lab configures 20 per second): client -> frontend was denied by
    // the ingress side, isolated by stars/default-deny.
    // (The lab runs the daemon with text logs.)
    let log = std::fs::read_to_string(lab_dir.join("dataplane.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("portcullis::denied")
            && l.contains("src=10.77.0.40")
            && l.contains("dst=10.77.0.30")
            && l.contains("denied_by=\"ingress\"")
            && l.contains("ingress_isolated_by=\"stars/allow-ui,stars/default-deny\"")),
        "no denied-flow line for client -> frontend in the daemon log:\n{log}"
    );
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    // SIGTERM: the daemon stops and no XDP program is left on the ports.
    let pid = std::fs::read_to_string(lab_dir.join("lab.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["dataplane_pid"].as_u64())
        .expect("daemon pid in lab.json");
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    wait_for("the daemon to exit", || {
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        }
    });
    for i in 0..4 {
        let out = Command::new("ip").args(["-d", "link", "show", &format!("{prefix}h{i}")]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "link {prefix}h{i} still there for the check");
        assert!(
            !text.contains("prog/xdp") && !text.contains(" xdp "),
            "XDP program left on {prefix}h{i}:\n{text}"
        );
    }
}

/// A real Prometheus scrapes the daemon on `port` and evaluates the alerts of
/// deploy/monitoring/: every series selector in an alert on the daemon's own
/// metrics matches some series it exports (a renamed metric or label would
/// leave an alert that can never fire), every rule evaluates without error,
/// and a manifest file that does not parse, written to `manifests`, makes
/// PortcullisManifestRejected pending and nothing else. `work`: a scratch
/// directory. Skips without `prometheus` (fails in CI).
fn prometheus_evaluates_the_alerts(port: u16, manifests: &std::path::Path, work: &std::path::Path) {
    if dataplane::testing::root::skip_without("prometheus") {
        return;
    }
    let rule_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/monitoring/prometheusrule.yaml"
    ))
    .unwrap();
    let rule: serde_yaml::Value = serde_yaml::from_str(&rule_text).unwrap();
    let dir = work.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: portcullis\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    // The number a one-series instant query gives, if any.
    let value = |q: &str| -> Option<f64> {
        let r = prometheus_api(prom_port, &format!("/api/v1/query?query={}", url_encode(q)))?;
        r["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let t = Instant::now();
    while value("up{job=\"portcullis\"}") != Some(1.0) {
        assert!(t.elapsed() < Duration::from_secs(30), "Prometheus did not scrape the daemon:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each selector of the daemon's metrics in each alert matches what the daemon exports.
    fn selectors(e: &promql_parser::parser::Expr, out: &mut Vec<String>) {
        use promql_parser::parser::Expr;
        match e {
            Expr::VectorSelector(v) => out.push(v.to_string()),
            Expr::MatrixSelector(m) => out.push(m.vs.to_string()),
            Expr::Aggregate(a) => selectors(&a.expr, out),
            Expr::Binary(b) => {
                selectors(&b.lhs, out);
                selectors(&b.rhs, out);
            }
            Expr::Paren(p) => selectors(&p.expr, out),
            Expr::Unary(u) => selectors(&u.expr, out),
            Expr::Subquery(s) => selectors(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
            _ => {}
        }
    }
    let mut checked = 0;
    for group in rule["spec"]["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            let (name, expr) = (r["alert"].as_str().unwrap(), r["expr"].as_str().unwrap());
            let mut found = Vec::new();
            selectors(&promql_parser::parser::parse(expr).unwrap(), &mut found);
            for sel in found.iter().filter(|s| s.starts_with("portcullis_")) {
                let n = value(&format!("count({sel})"));
                assert!(n.is_some_and(|n| n >= 1.0), "{name}: {sel} matches no series the daemon exports");
                checked += 1;
            }
        }
    }
    // Every selector of the daemon's metrics (a new alert on them changes this count).
    assert_eq!(checked, 13, "selectors of portcullis_ metrics checked");
    // A manifest file that does not parse: the daemon keeps the last good table and counts
    // the file; the alert goes pending (it fires after 5 minutes).
    let broken = manifests.join("zz-broken.yaml");
    std::fs::write(&broken, "kind: NetworkPolicy\nmetadata: {name: [\n").unwrap();
    let alerts = || -> Vec<(String, String)> {
        let r = prometheus_api(prom_port, "/api/v1/alerts").unwrap_or_default();
        let list = r["data"]["alerts"].as_array().cloned().unwrap_or_default();
        list.iter()
            .map(|a| {
                let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (field(&a["labels"]["alertname"]), field(&a["state"]))
            })
            .collect()
    };
    let t = Instant::now();
    while !alerts().iter().any(|(n, s)| n == "PortcullisManifestRejected" && s == "pending") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no pending PortcullisManifestRejected: {:?}",
            alerts()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing else is wrong with the daemon. (Alerts on the kernel's drop counters are not
    // asserted: a busy machine may drop a frame while this runs.)
    for (name, state) in alerts() {
        assert!(
            name == "PortcullisManifestRejected" || name == "PortcullisDataplaneBehind",
            "{name} is {state}: {:?}",
            alerts()
        );
    }
    // Every rule was evaluated, without error.
    let rules = prometheus_api(prom_port, "/api/v1/rules").unwrap();
    let rules: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 14);
    for r in rules {
        assert_eq!(r["health"], "ok", "{r}");
        assert!(!r["lastEvaluation"].as_str().unwrap_or("0001").starts_with("0001"), "never evaluated: {r}");
    }
    std::fs::remove_file(&broken).unwrap();
    wait_for("the broken file to be forgotten", || {
        get(port, "/metrics")
            .is_some_and(|(_, _, b)| metric(&b, "portcullis_manifest_file_errors") == Some(0.0))
    });
}

/// GET `path` from a Prometheus on `port`: its JSON answer. (HTTP/1.0: the
/// answer is not chunked.)
fn prometheus_api(port: u16, path: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&request(port, path, "1.0", "")?.2).ok()
}

/// Percent-encodes a query parameter.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the sample named exactly `series` (name and labels) in Prometheus text.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// With `status_token_file`, `/status` and `/metrics` answer only a request
/// with the token (read again at each request: a rotated Secret applies at
/// once); the probes' endpoints stay open. A token file that cannot be read
/// stops the start, naming it.
#[test]
fn status_and_metrics_can_require_a_bearer_token() {
    let tokens = tempfile::tempdir().unwrap();
    let token = tokens.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let config = format!("status_token_file: {}\n", token.display());
    let d = spawn_with(&[("pods.yaml", PODS)], &config);
    wait_for("readyz", || get(d.port, "/readyz").is_some_and(|r| r.0 == 200));
    assert_eq!(get(d.port, "/healthz").unwrap().0, 200);
    for path in ["/status", "/metrics"] {
        let (code, head, _) = get(d.port, path).unwrap();
        assert_eq!(code, 401, "{path} without a token");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
        assert_eq!(get_with(d.port, path, "Authorization: Bearer s3cre\r\n").unwrap().0, 401, "{path}");
        assert_eq!(get_with(d.port, path, "Authorization: Bearer s3cret\r\n").unwrap().0, 200, "{path}");
    }
    // Rotated: the old token no longer works, the new one does.
    std::fs::write(&token, "n3w").unwrap();
    assert_eq!(get_with(d.port, "/status", "Authorization: Bearer s3cret\r\n").unwrap().0, 401);
    assert_eq!(get_with(d.port, "/status", "Authorization: Bearer n3w\r\n").unwrap().0, 200);
    drop(d);

    // Missing: the daemon does not start, and says why.
    let missing = tokens.path().join("missing");
    let guard = tempfile::tempdir().unwrap();
    let config = guard.path().join("config.yaml");
    std::fs::write(&config, format!("status_token_file: {}\n", missing.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--manifests", guard.path().to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(["--status-address", &format!("127.0.0.1:{}", free_port()), "--log-format", "text"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("status_token_file {}: cannot read a token", missing.display())), "{err}");
}

/// A policy whose ipBlock rules expand past its namespace's budget (1,500
/// rules, each with its own port and `0.0.0.0/0 except` a different
/// address): the daemon enforces it with those rules allowing nothing, and
/// says so in `/status` `invalid` and `portcullis_invalid_objects`; a
/// smaller version clears both.
#[test]
fn a_policy_past_the_ipblock_budget_is_reported_by_the_daemon() {
    let holed = |n: u32| {
        let mut text = String::from(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: x}\n\
             spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n",
        );
        for i in 0..n {
            text += &format!(
                "  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [11.0.{}.{}/32]}}}}]\n    ports: [{{port: {}}}]\n",
                i >> 8,
                i & 255,
                1000 + i
            );
        }
        text
    };
    let d = start(&[("pods.yaml", PODS), ("big.yaml", &holed(1_500))]);
    let invalid = |port: u16| -> Vec<String> {
        status(port)["invalid"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    wait_for("the policy counted", || status(d.port)["objects"]["NetworkPolicy"] == 1);
    let found = invalid(d.port);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("NetworkPolicy x/big: spec.egress: the ipBlock rules of namespace x's"),
        "{found:?}"
    );
    assert_eq!(status(d.port)["table"]["dropped_ipblock_namespaces"], 1);
    let body = get(d.port, "/metrics").unwrap().2;
    assert_eq!(metric(&body, "portcullis_invalid_objects"), Some(1.0), "{body}");
    std::fs::write(d.dir.join("big.yaml"), holed(100)).unwrap();
    wait_for("the report cleared", || invalid(d.port).is_empty());
    assert_eq!(status(d.port)["table"]["dropped_ipblock_namespaces"], 0);
    let body = get(d.port, "/metrics").unwrap().2;
    assert_eq!(metric(&body, "portcullis_invalid_objects"), Some(0.0), "{body}");
}
