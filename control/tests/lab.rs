//! End to end through the lab: pods as network namespaces, the real
//! dataplane (AF_XDP + pipeline) between them, real pings and connections.
//!
//! Needs root (network namespaces, veth, AF_XDP); each test prints `SKIP:`
//! and why, and passes, when that is missing, or fails when
//! PORTCULLIS_REQUIRE_ROOT_TESTS=1 (CI; see `dataplane::testing::root`). Each test uses its own name
//! prefix and state directory and tears its lab down in `Drop` (also when it
//! fails). The tests of this binary run one at a time (a mutex): several
//! labs at once would only compete for the two cores. Run:
//!
//! ```text
//! cargo test -p control --test lab -- --nocapture
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde::Deserialize;

const EXE: &str = env!("CARGO_BIN_EXE_portcullis");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab")
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Deserialize)]
struct Matrix {
    protocol: String,
    port: Option<u16>,
    pods: Vec<String>,
    allowed: Vec<Vec<Option<bool>>>,
}

/// A running lab, torn down on drop.
struct Lab {
    dir: PathBuf,
    prefix: String,
    cluster: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Brings the xyz model up; `None` (after printing why) when the machine
    /// cannot run it.
    fn up(tag: &str) -> Option<Lab> {
        Lab::up_needing(tag, &[])
    }

    /// [`Lab::up`] for a test that also runs `tools`.
    fn up_needing(tag: &str, tools: &[&str]) -> Option<Lab> {
        if dataplane::testing::root::skip(&[&["ethtool", "ping"], tools].concat()) {
            return None;
        }
        let serial = serial();
        let prefix = format!("pt{}{tag}", std::process::id() % 10000);
        let dir = std::env::temp_dir().join(format!("portcullis-lab-test-{prefix}"));
        let lab = Lab { dir, prefix, cluster: examples().join("xyz.yaml"), _serial: serial };
        lab.down();
        let cluster = lab.cluster.to_string_lossy().into_owned();
        lab.ok(&["up", "-f", &cluster, "--prefix", &lab.prefix.clone()]);
        Some(lab)
    }

    fn run(&self, args: &[&str]) -> Output {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut all = vec!["lab"];
        all.extend_from_slice(args);
        all.extend(["--lab-dir", &dir]);
        Command::new(EXE).args(&all).output().expect("run portcullis")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let log = std::fs::read_to_string(self.dir.join("dataplane.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "portcullis lab {args:?} failed:\n{}\n--- dataplane.log ---\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, files: &[&str], reset: bool) {
        let paths: Vec<String> =
            files.iter().map(|f| examples().join(f).to_string_lossy().into_owned()).collect();
        let mut args = vec!["apply"];
        if reset {
            args.push("--reset");
        }
        for p in &paths {
            args.extend(["-f", p.as_str()]);
        }
        self.ok(&args);
    }

    fn probe(&self, protocols: &str, ports: &str) -> Vec<Matrix> {
        let out = self.ok(&[
            "probe",
            "--protocol",
            protocols,
            "--port",
            ports,
            "--output",
            "json",
            "--timeout-ms",
            "700",
        ]);
        serde_json::from_str(&out).expect("probe JSON")
    }

    fn netns(&self, pod: &str) -> String {
        format!("{}-{}", self.prefix, pod.replace('/', "."))
    }

    /// One ping from `from` to `to`'s address of family `family`.
    fn ping(&self, from: &str, to: &str, family: u8) -> bool {
        let ip = pod_ip(to, family);
        Command::new("ip")
            .args(["netns", "exec", &self.netns(from), "ping", "-c", "2", "-i", "0.2", "-W", "1"])
            .arg(ip.to_string())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn down(&self) {
        let _ = self.run(&["down", "--prefix", &self.prefix.clone()]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

/// Addresses in examples/lab/xyz.yaml: x/a .11, x/b .12, ... z/c .19.
fn pod_ip(pod: &str, family: u8) -> IpAddr {
    let (ns, name) = pod.split_once('/').unwrap();
    let n = 11 + (ns.as_bytes()[0] - b'x') * 3 + (name.as_bytes()[0] - b'a');
    if family == 4 {
        format!("10.78.0.{n}").parse().unwrap()
    } else {
        format!("fd00:78::{n:x}").parse().unwrap()
    }
}

/// Checks every off-diagonal cell (a pod reaching itself never crosses the
/// dataplane) against `expect(protocol, port, from, to)`.
fn check(matrices: &[Matrix], expect: impl Fn(&str, u16, &str, &str) -> bool) {
    let mut wrong = Vec::new();
    // Something probed: an empty list or matrix would pass every cell check.
    assert!(!matrices.is_empty(), "no matrix probed");
    for m in matrices {
        assert_eq!(m.pods.len(), 9, "the lab's 9 pods: {:?}", m.pods);
        assert!(m.allowed.len() == 9 && m.allowed.iter().all(|r| r.len() == 9), "{:?}", m.allowed);
        let port = m.port.expect("probed with --port");
        for (i, from) in m.pods.iter().enumerate() {
            for (j, to) in m.pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                let got = m.allowed[i][j].expect("every pod serves the port");
                let want = expect(&m.protocol, port, from, to);
                if got != want {
                    wrong
                        .push(format!("{}/{port} {from} -> {to}: probed {got}, expected {want}", m.protocol));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} cell(s) differ:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn without_policy_ping_tcp_and_udp_pass_both_families() {
    let Some(lab) = Lab::up("n") else { return };
    assert!(lab.ping("x/a", "y/b", 4), "IPv4 ping x/a -> y/b");
    assert!(lab.ping("z/c", "x/a", 6), "IPv6 ping z/c -> x/a");
    let m = lab.probe("TCP,UDP", "80,81");
    assert_eq!(m.len(), 4);
    check(&m, |_, _, _, _| true);
}

#[test]
fn default_deny_blocks_ping_tcp_and_udp() {
    let Some(lab) = Lab::up("d") else { return };
    lab.apply(&["default-deny.yaml"], false);
    assert!(!lab.ping("x/a", "y/b", 4), "ping must be denied");
    check(&lab.probe("TCP,UDP", "80,81"), |_, _, _, _| false);
    // A flood of a denied flow says up front that it measures drops.
    let flood = ["flood", "--from", "x/a", "--to", "y/b", "--seconds", "0.5", "--attach", "generic"];
    let out = lab.ok(&flood);
    assert!(out.contains("note: the lab's policies deny this flow"), "{out}");
    // Back to no policy: everything passes again (the new table is in force).
    lab.apply(&[], true);
    assert!(lab.ping("x/a", "y/b", 4), "ping after removing the policies");
    check(&lab.probe("TCP", "80"), |_, _, _, _| true);
    let out = lab.ok(&flood);
    assert!(!out.contains("note:") && out.contains("received"), "{out}");
}

#[test]
fn allow_by_label_lets_exactly_the_allowed_pairs_through() {
    let Some(lab) = Lab::up("l") else { return };
    // x/b accepts only pod=a of namespace x, on TCP and UDP 80; every other
    // pod is not isolated.
    lab.apply(&["allow-a-to-b.yaml"], false);
    let m = lab.probe("TCP,UDP", "80,81");
    check(&m, |_, port, from, to| to != "x/b" || (from == "x/a" && port == 80));
    assert!(!lab.ping("x/a", "x/b", 4), "ICMP is not allowed into x/b");
    assert!(lab.ping("x/b", "x/a", 4), "x/a is not isolated");

    // The probes agree with the compiler's matrix for the same objects.
    let compiled = Command::new(EXE)
        .args(["matrix", "--protocol", "TCP,UDP", "--port", "80,81", "--output", "json"])
        .args(["--state", &lab.cluster.to_string_lossy()])
        .args(["--state", &examples().join("allow-a-to-b.yaml").to_string_lossy()])
        .output()
        .expect("portcullis matrix");
    assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
    let compiled: Vec<Matrix> = serde_json::from_slice(&compiled.stdout).expect("matrix JSON");
    assert_eq!(m.len(), compiled.len(), "one probed matrix per compiled one");
    for (probed, want) in m.iter().zip(&compiled) {
        assert_eq!((&probed.protocol, probed.port, &probed.pods), (&want.protocol, want.port, &want.pods));
        check(std::slice::from_ref(probed), |_, _, from, to| {
            let i = want.pods.iter().position(|p| p == from).unwrap();
            let j = want.pods.iter().position(|p| p == to).unwrap();
            want.allowed[i][j].unwrap()
        });
    }
}

#[test]
fn replies_pass_but_new_connections_in_the_reverse_direction_are_denied() {
    let Some(lab) = Lab::up("r") else { return };
    // x/a accepts nothing; it may still open connections, whose replies must
    // come back.
    lab.apply(&["deny-ingress-x-a.yaml"], false);
    assert!(lab.ping("x/a", "x/b", 4), "echo reply to x/a");
    assert!(!lab.ping("x/b", "x/a", 4), "echo request to x/a");
    assert!(lab.ping("x/a", "y/c", 6), "IPv6 echo reply to x/a");
    let m = lab.probe("TCP,UDP", "80");
    check(&m, |_, _, _, to| to != "x/a");
}

#[test]
fn a_pod_cannot_send_with_an_address_that_is_not_its_own() {
    let Some(lab) = Lab::up("s") else { return };
    // x/a accepts only one outside address. x/c takes that address too: judged
    // by the source it writes, it would be let in. Its port drops the frames.
    lab.apply(&["allow-x-a-from-outside.yaml"], false);
    let ns = lab.netns("x/c");
    for (addr, prefix, family) in [("10.78.0.200", "24", "-4"), ("fd00:78::c8", "64", "-6")] {
        let add = Command::new("ip")
            .args(["-n", &ns, "addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0", "nodad"])
            .output()
            .unwrap();
        assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
        let target = pod_ip("x/a", if family == "-4" { 4 } else { 6 }).to_string();
        let ping = Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", family, "-c", "2", "-i", "0.2", "-W", "1", "-I", addr, &target,
            ])
            .output()
            .unwrap();
        assert!(!ping.status.success(), "x/c reached x/a as {addr}");
    }
    // The drops are the dataplane's address check, not policy.
    let t = std::time::Instant::now();
    loop {
        let counters: serde_json::Value = serde_json::from_str(&lab.ok(&["counters"])).unwrap();
        let spoofed = counters["pipeline"]["drops"]["spoofed_source"].as_u64().unwrap_or(0);
        if spoofed >= 4 {
            break;
        }
        assert!(t.elapsed().as_secs() < 10, "spoofed_source drops: {spoofed}, want 4: {counters}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // x/c with its own address is still x/c: not let in.
    assert!(!lab.ping("x/c", "x/a", 4));
    assert!(lab.ping("x/c", "x/b", 4), "x/c's own traffic passes");
}

/// The lab dataplane's drop counter `reason`, as of a snapshot taken after
/// this call began (the dataplane writes one a second).
fn drops(lab: &Lab, reason: &str) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let t = std::time::Instant::now();
    while !lab.dir.join("counters.json").exists() {
        assert!(t.elapsed().as_secs() < 10, "no counters written");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let counters: serde_json::Value = serde_json::from_str(&lab.ok(&["counters"])).unwrap();
    counters["pipeline"]["drops"][reason].as_u64().unwrap_or(0)
}

/// Sends one hand-made neighbour solicitation from `pod`'s eth0 (its own MAC
/// and IPv6 address, hop limit 255) to `dst`.
fn solicit(lab: &Lab, pod: &str, dst: &str) {
    let src = pod_ip(pod, 6).to_string();
    dataplane::testing::root::send_solicitation(&lab.netns(pod), "eth0", &src, dst).unwrap();
}

#[test]
fn neighbour_discovery_passes_on_the_link_and_not_beyond() {
    let Some(lab) = Lab::up_needing("n", &["python3"]) else { return };
    // Egress of x/a denied: neighbour discovery passes without policy all the same.
    lab.apply(&["deny-egress-x-a.yaml"], false);
    // Forgotten neighbours: the ping makes the kernels solicit and answer.
    for pod in ["x/a", "y/b"] {
        let flush =
            Command::new("ip").args(["-n", &lab.netns(pod), "neigh", "flush", "all"]).output().unwrap();
        assert!(flush.status.success(), "{}", String::from_utf8_lossy(&flush.stderr));
    }
    assert!(lab.ping("y/b", "x/a", 6), "IPv6 ping y/b -> x/a, neighbours resolved anew");
    assert_eq!(drops(&lab, "neighbour_off_link"), 0);
    // To an address beyond the link (a receiver past the router, say), from
    // a pod whose egress is denied: dropped.
    solicit(&lab, "x/a", "2001:db8:bad::1");
    let t = std::time::Instant::now();
    while drops(&lab, "neighbour_off_link") < 1 {
        assert!(t.elapsed().as_secs() < 10, "no neighbour_off_link drop");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // To a neighbour in the pod's /64: on the link, passes (not dropped for
    // any other reason either).
    let other =
        |lab: &Lab| (drops(lab, "spoofed_source"), drops(lab, "parse"), drops(lab, "neighbour_off_link"));
    let before = other(&lab);
    solicit(&lab, "x/a", "fd00:78::99");
    assert_eq!(other(&lab), before);
    assert_eq!(before.2, 1);
    assert!(lab.ping("y/b", "x/a", 6), "still reachable");
}

#[test]
fn down_cleans_up_after_a_crash() {
    let Some(lab) = Lab::up("c") else { return };
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap()).unwrap();
    let pid = state["dataplane_pid"].as_u64().unwrap().to_string();
    // Crash: the dataplane dies without cleaning up and the state is lost.
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    std::fs::remove_dir_all(&lab.dir).unwrap();
    lab.ok(&["down", "--prefix", &lab.prefix.clone()]);
    let netns =
        String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(!netns.contains(&format!("{}-", lab.prefix)), "namespaces left:\n{netns}");
    let links = String::from_utf8(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).unwrap();
    assert!(!links.contains(&format!("{}h", lab.prefix)), "links left:\n{links}");
    let ps = String::from_utf8(Command::new("ps").args(["-eo", "args"]).output().unwrap().stdout).unwrap();
    let marker = lab.dir.to_string_lossy().into_owned();
    assert!(!ps.lines().any(|l| l.contains(&marker)), "processes left:\n{ps}");
}

#[test]
fn an_established_tcp_connection_survives_allowed_changes_and_is_cut_when_revoked() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let Some(lab) = Lab::up("v") else { return };
    // One TCP connection x/a -> x/b:80 kept open by bash, one request per
    // line we send it; prints what came back for each.
    let script = "exec 3<>/dev/tcp/10.78.0.12/80 || exit 1
        for i in 1 2 3; do
          read go || exit 0
          echo \"probe $i\" >&3
          answer=''; read -t 2 answer <&3
          echo \"$i:$answer\"
        done";
    let mut holder = Command::new("ip")
        .args(["netns", "exec", &lab.netns("x/a"), "bash", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash");
    let mut to = holder.stdin.take().unwrap();
    let mut from = BufReader::new(holder.stdout.take().unwrap());
    let mut round = |expect: &str| {
        to.write_all(b"go\n").unwrap();
        to.flush().unwrap();
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), expect);
    };
    round("1:x/b 1");
    // Still allowed (x/b accepts x/a on TCP 80): the connection goes on.
    lab.apply(&["allow-a-to-b.yaml"], false);
    round("2:x/b 2");
    // Denied now: the tracked connection is revoked, the request gets no answer.
    lab.apply(&["default-deny.yaml"], false);
    round("3:");
    let _ = holder.kill();
    let _ = holder.wait();
}
