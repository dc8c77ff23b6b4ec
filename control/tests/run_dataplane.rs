//! `portcullis run` with ports, as an operator starts it: the binary, a config
//! file, real veth interfaces (root only). What the daemon refuses at start-up
//! and what it binds.
//!
//! Root only: without it a test prints `SKIP:` and passes, or fails when
//! PORTCULLIS_REQUIRE_ROOT_TESTS=1 (`dataplane::testing::root`). Each test creates links whose names start with a per-process prefix and
//! removes them in `Drop`, also when it fails. Run:
//!
//! ```text
//! cargo test -p control --test run_dataplane -- --nocapture
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataplane::testing::root::sh;

const EXE: &str = env!("CARGO_BIN_EXE_portcullis");

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
}

/// A veth pair in the host namespace (both ends up, IPv6 off), `queues` RX and TX
/// queues on each end, and a scratch directory; removed on drop.
struct Links {
    host: String,
    dir: PathBuf,
}

impl Links {
    fn new(tag: &str, queues: u32) -> Links {
        let host = format!("pcd{tag}{}", std::process::id() % 10000);
        let peer = format!("{host}p");
        let dir = std::env::temp_dir().join(format!("portcullis-{host}"));
        let links = Links { host: host.clone(), dir };
        links.cleanup();
        std::fs::create_dir_all(links.dir.join("manifests")).unwrap();
        let q = queues.to_string();
        #[rustfmt::skip]
        sh(&["ip", "link", "add", &host, "numrxqueues", &q, "numtxqueues", &q,
             "type", "veth", "peer", "name", &peer, "numrxqueues", &q, "numtxqueues", &q])
        .expect("veth");
        for l in [&host, &peer] {
            let _ = sh(&["sysctl", "-qw", &format!("net.ipv6.conf.{l}.disable_ipv6=1")]);
            sh(&["ip", "link", "set", l, "up"]).unwrap();
        }
        links
    }

    /// Writes a config with the veth's host end as the one port and starts the daemon.
    fn daemon(&self, config: &str, status: u16) -> Daemon {
        let path = self.dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(EXE)
            .args([
                "run",
                "--log-format",
                "text",
                "--manifests",
                self.dir.join("manifests").to_str().unwrap(),
            ])
            .args(["--config", path.to_str().unwrap(), "--status-address", &format!("127.0.0.1:{status}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon { child }
    }

    fn cleanup(&self) {
        let _ = sh(&["ip", "link", "del", &self.host]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.cleanup();
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    /// Waits up to `limit` for the daemon to exit; its status and stderr, or
    /// `None` if it still runs.
    fn exit_within(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return Some((st, err));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then SIGKILL after 10 s; returns what it wrote on stderr
    /// (nothing if it had to be killed).
    fn terminate(&mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        match self.exit_within(Duration::from_secs(10)) {
            Some((_, err)) => err,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                String::new()
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// `ports[].queues` is honoured, and an interface with more RX queues than are bound
/// is refused at start-up with an error naming it (frames on the unbound queue would
/// escape the dataplane).
#[test]
fn run_binds_the_configured_queues_and_refuses_an_unbound_one() {
    if dataplane::testing::root::skip(&[]) {
        return;
    }
    let _serial = serial();
    let links = Links::new("q", 2);
    let h = links.host.clone();

    // Default queues (1) on a two-queue interface: refused.
    let status = free_port();
    let mut d = links.daemon(
        &format!("ports: [{{interface: {h}}}]\nxdp: {{attach: generic, frame_count: 1024}}\n"),
        status,
    );
    let (st, err) = d.exit_within(Duration::from_secs(20)).expect("the daemon must refuse to start");
    assert!(!st.success(), "{err}");
    assert!(err.contains(&format!("port {h} has 2 RX queues but only 1 would be bound")), "{err}");

    // Both queues, two workers: it runs, one socket per queue. Worker 1's core
    // does not exist: it runs unpinned, and the daemon says so.
    let status = free_port();
    let mut d = links.daemon(
        &format!(
            "ports: [{{interface: {h}, queues: 2}}]\nworkers: [0, 1023]\nxdp: {{attach: generic, frame_count: 1024}}\n"
        ),
        status,
    );
    wait_for("readyz", || get(status, "/readyz").is_some_and(|r| r.0 == 200));
    let s: serde_json::Value = serde_json::from_str(&get(status, "/status").unwrap().1).unwrap();
    assert_eq!(s["dataplane"]["workers"], 2, "{s}");
    let bindings = &s["dataplane"]["bindings"];
    assert_eq!(
        bindings,
        &serde_json::json!([
            {"worker": 0, "port": h, "queue": 0},
            {"worker": 1, "port": h, "queue": 1},
        ]),
        "{s}"
    );
    assert_eq!(
        s["dataplane"]["cores"][1],
        serde_json::json!({"worker": 1, "core": 1023, "pinned": false}),
        "{s}"
    );
    assert_eq!(s["dataplane"]["cores"][0]["core"], 0, "{s}");
    // The control threads keep off worker 0's core (the daemon inherits this
    // test's cpuset); with a one-core cpuset they can only share it.
    let allowed = control::cpus::current().unwrap();
    let control: Vec<usize> =
        if allowed.len() > 1 { allowed.iter().copied().filter(|&c| c != 0).collect() } else { allowed };
    assert_eq!(s["dataplane"]["control_cores"], serde_json::json!(control), "{s}");
    let err = d.terminate();
    let warning =
        err.lines().find(|l| l.contains("worker could not be pinned")).unwrap_or_else(|| panic!("{err}"));
    assert!(warning.contains("WARN") && warning.contains("core=1023"), "{warning}");

    // `workers: auto`: one worker per queue, on the last cores of the cpuset.
    let status = free_port();
    let mut d = links.daemon(
        &format!("ports: [{{interface: {h}, queues: 2}}]\nworkers: auto\nxdp: {{attach: generic, frame_count: 1024}}\n"),
        status,
    );
    wait_for("readyz", || get(status, "/readyz").is_some_and(|r| r.0 == 200));
    let s: serde_json::Value = serde_json::from_str(&get(status, "/status").unwrap().1).unwrap();
    // The last two cores of the cpuset (with one core, both workers on it),
    // worked out here rather than by the function under test.
    let allowed = control::cpus::current().unwrap();
    let picked = match allowed.len() {
        0 => vec![0, 0],
        1 => vec![allowed[0]; 2],
        n => allowed[n - 2..].to_vec(),
    };
    let cores: Vec<serde_json::Value> = picked
        .iter()
        .enumerate()
        .map(|(w, c)| serde_json::json!({"worker": w, "core": c, "pinned": true}))
        .collect();
    assert_eq!(s["dataplane"]["cores"], serde_json::json!(cores), "{s}");
    assert_eq!(s["dataplane"]["workers"], 2, "{s}");
    d.terminate();
}

/// `scripts/root-check.sh`, which `scripts/demo.sh` uses, follows the same rule as the
/// root-only tests: where namespaces cannot be created it prints `SKIP: <why>` and exits 2,
/// or fails (exit 1) with PORTCULLIS_REQUIRE_ROOT_TESTS=1. Checked as an ordinary user
/// and, when root, as root in a user namespace (`ip netns add` is refused there).
#[test]
fn root_check_script_skips_or_fails_as_required() {
    let script = format!("{}/../scripts/root-check.sh", env!("CARGO_MANIFEST_DIR"));
    let run = |wrapper: &[&str], require: bool| {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([script.as_str(), "the demo"]);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        if require {
            c.env("PORTCULLIS_REQUIRE_ROOT_TESTS", "1");
        } else {
            c.env_remove("PORTCULLIS_REQUIRE_ROOT_TESTS");
        }
        let o = c.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        (o.status.code(), text)
    };
    let root = sh(&["id", "-u"]).is_ok_and(|u| u.trim() == "0");
    let mut cases: Vec<(&[&str], &str)> = Vec::new();
    if root {
        cases.push((&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"], "not root"));
        cases.push((&["unshare", "--user", "--map-root-user", "--"], "root, but `ip netns add` fails"));
        // And where it can run, it says nothing and exits 0, with or without the variable.
        if dataplane::testing::root::missing(&[]).is_none() {
            assert_eq!(run(&[], true), (Some(0), String::new()));
        }
    } else {
        cases.push((&[], "not root"));
    }
    for (wrapper, why) in cases {
        let (code, out) = run(wrapper, false);
        assert_eq!(code, Some(2), "{wrapper:?}: {out}");
        assert!(out.starts_with(&format!("SKIP: {why}")), "{out}");
        let (code, out) = run(wrapper, true);
        assert_eq!(code, Some(1), "{wrapper:?}: {out}");
        assert!(
            out.starts_with(&format!(
                "error: PORTCULLIS_REQUIRE_ROOT_TESTS=1 and the demo cannot run: {why}"
            )),
            "{out}"
        );
    }
}

/// Capability numbers (`include/uapi/linux/capability.h`) of the names a DaemonSet may add.
fn capability_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "IPC_LOCK" => 14,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its number here"),
    }
}

/// The daemon binds its sockets with exactly the capabilities `deploy/daemonset.yaml`
/// grants, read from the manifest so the two cannot drift: UID 0 with every other
/// capability dropped (bounding, permitted and effective sets; no inheritable or
/// ambient ones), no_new_privs when `allowPrivilegeEscalation: false`, and a 64 KiB
/// memlock limit like a container runtime's default (CAP_IPC_LOCK must cover the UMEM).
#[test]
fn the_daemon_binds_with_exactly_the_daemonset_capabilities() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    if dataplane::testing::root::skip(&["setpriv", "prlimit"]) {
        return;
    }
    let _serial = serial();
    let manifest = format!("{}/../deploy/daemonset.yaml", env!("CARGO_MANIFEST_DIR"));
    let ds: DaemonSet = serde_yaml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let container = &ds.spec.template.spec.expect("pod spec").containers[0];
    let sc = container.security_context.clone().expect("securityContext");
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "the test assumes drop: [ALL]");
    let added = caps.add.unwrap_or_default();
    assert!(!added.is_empty());
    assert_eq!(sc.run_as_user, Some(0), "the test runs the daemon as UID 0, as the manifest does");
    let bounding: Vec<String> = added.iter().map(|c| format!("+{}", c.to_ascii_lowercase())).collect();
    let mask: u64 = added.iter().map(|c| 1u64 << capability_bit(c)).sum();

    let links = Links::new("c", 1);
    let h = links.host.clone();
    let status = free_port();
    let config = links.dir.join("config.yaml");
    std::fs::write(&config, format!("ports: [{{interface: {h}}}]\nxdp: {{attach: native}}\n")).unwrap();
    let mut argv: Vec<String> =
        ["prlimit", "--memlock=65536:65536", "--", "setpriv", "--inh-caps=-all", "--ambient-caps=-all"]
            .map(String::from)
            .to_vec();
    argv.push(format!("--bounding-set=-all,{}", bounding.join(",")));
    if sc.allow_privilege_escalation == Some(false) {
        argv.push("--no-new-privs".into());
    }
    argv.extend(["--", EXE, "run", "--log-format", "text", "--manifests"].map(String::from));
    argv.push(links.dir.join("manifests").to_string_lossy().into_owned());
    argv.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    argv.extend(["--status-address".into(), format!("127.0.0.1:{status}")]);
    let child =
        Command::new(&argv[0]).args(&argv[1..]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut d = Daemon { child };

    let t = Instant::now();
    while get(status, "/readyz").is_none_or(|r| r.0 != 200) {
        if let Some((st, err)) = d.exit_within(Duration::from_millis(100)) {
            panic!("the daemon did not start with the DaemonSet's capabilities {added:?} ({st}):\n{err}");
        }
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for /readyz");
    }
    // It runs with exactly those capabilities (setpriv execs, so the pid is the daemon's).
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let cap = |k: &str| {
        let line = proc_status.lines().find(|l| l.starts_with(k)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(
        (cap("CapEff:"), cap("CapPrm:"), cap("CapBnd:"), cap("CapInh:"), cap("CapAmb:")),
        (mask, mask, mask, 0, 0),
        "{proc_status}"
    );
    assert!(proc_status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    // Its sockets are bound, and its XDP program is on the port.
    let s: serde_json::Value = serde_json::from_str(&get(status, "/status").unwrap().1).unwrap();
    assert_eq!(s["dataplane"]["bindings"], serde_json::json!([{"worker": 0, "port": h, "queue": 0}]), "{s}");
    let link = sh(&["ip", "link", "show", &h]).unwrap();
    assert!(link.contains("xdp"), "{link}");
    // SIGTERM: it stops and nothing is left on the port.
    d.terminate();
    let link = sh(&["ip", "link", "show", &h]).unwrap();
    assert!(!link.contains("xdp"), "{link}");
}

/// `/status` (`enforcement`) and `portcullis_enforcing` say whether the node
/// drops what policy denies: before the first sync (held back here by a
/// manifest file that does not parse) with either start-up table, once a
/// table from the sources is in force, and with `enforce: false`. Also
/// `policy_metrics: false`.
#[test]
fn status_and_metrics_say_whether_the_node_enforces() {
    if dataplane::testing::root::skip(&[]) {
        return;
    }
    let _serial = serial();
    let links = Links::new("e", 1);
    let h = links.host.clone();
    let manifest = links.dir.join("manifests/policy.yaml");
    let broken = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}, bogus: 1}\n";
    let fixed = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}}\n";
    let enforcing = |status: u16| -> Option<(String, String)> {
        let s: serde_json::Value = serde_json::from_str(&get(status, "/status")?.1).ok()?;
        let m = get(status, "/metrics")?.1;
        let gauge = m.lines().find_map(|l| l.strip_prefix("portcullis_enforcing "))?.to_string();
        Some((s["enforcement"].as_str()?.to_string(), gauge))
    };
    let base = format!("ports: [{{interface: {h}}}]\nxdp: {{attach: generic, frame_count: 1024}}\n");
    let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));

    // Fail-closed start-up table, then the sources' table.
    std::fs::write(&manifest, broken).unwrap();
    let status = free_port();
    let mut d = links.daemon(&base, status);
    wait_for("status", || enforcing(status).is_some());
    assert_eq!(enforcing(status), pair("start_up_fail_closed", "1"));
    assert_eq!(get(status, "/readyz").unwrap().0, 503);
    std::fs::write(&manifest, fixed).unwrap();
    wait_for("the sources' table in force", || enforcing(status) == pair("policy", "1"));
    // Per-policy counters are served by default (left out below).
    assert!(get(status, "/metrics")
        .unwrap()
        .1
        .contains("# TYPE portcullis_policy_allowed_connections counter"));
    d.terminate();

    // Fail-open start-up table: nothing is enforced until the first sync.
    std::fs::write(&manifest, broken).unwrap();
    let status = free_port();
    let mut d = links.daemon(&format!("{base}fail_open: true\n"), status);
    wait_for("status", || enforcing(status).is_some());
    assert_eq!(enforcing(status), pair("start_up_fail_open", "0"));
    std::fs::write(&manifest, fixed).unwrap();
    wait_for("the sources' table in force", || enforcing(status) == pair("policy", "1"));
    d.terminate();

    // `enforce: false`: ready, and says it does not enforce. (And
    // `policy_metrics: false` leaves the per-policy counters out.)
    let status = free_port();
    let mut d = links.daemon(&format!("{base}enforce: false\npolicy_metrics: false\n"), status);
    wait_for("readyz", || get(status, "/readyz").is_some_and(|r| r.0 == 200));
    assert_eq!(enforcing(status), pair("off", "0"));
    let metrics = get(status, "/metrics").unwrap().1;
    assert!(!metrics.contains("portcullis_policy_allowed_connections"), "{metrics}");
    assert!(metrics.contains("portcullis_node_exempt_connections_total"), "{metrics}");
    d.terminate();
}
