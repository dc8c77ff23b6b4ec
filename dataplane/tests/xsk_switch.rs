//! The AF_XDP I/O layer alone, on real veth pairs in network namespaces:
//! two "pods" talk through a `Dataplane` in switch mode.
//!
//! Needs root (network namespaces, AF_XDP); skips, saying why, otherwise, or
//! fails when PORTCULLIS_REQUIRE_ROOT_TESTS=1 (`dataplane::testing::root`).
//! Tests here create namespaces and interfaces whose names start with a
//! per-process prefix, remove them in `Drop`, and run one at a time (a mutex
//! in this binary; cargo runs test binaries one after another).

use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use dataplane::pipeline::{ConfigError, Mode, PipelineConfig, PublishedTable};
use dataplane::port::PortError;
use dataplane::testing::root::sh;
use dataplane::xsk::{AttachMode, CopyMode, XskConfig};
use dataplane::{Binding, Dataplane, DataplaneConfig, StartError, WorkerCore};

/// Skips (or, with PORTCULLIS_REQUIRE_ROOT_TESTS=1, fails) when the machine cannot
/// run these tests: see `dataplane::testing::root`.
fn skip() -> bool {
    dataplane::testing::root::skip(&["ethtool", "ping"])
}

/// Serialises the tests of this binary that create namespaces (cargo runs
/// test binaries one after another, so this is enough).
fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two namespaces, each with a veth whose host side is a dataplane port.
struct Pods {
    prefix: String,
}

/// Size of the ICMP echo frames the counter test sends: Ethernet 14 + IPv4 20 +
/// ICMP 8 + payload.
const PING_PAYLOAD: usize = 100;
const PING_FRAME: u64 = 14 + 20 + 8 + PING_PAYLOAD as u64;

impl Pods {
    /// `quiet`: the pods send nothing of their own: IPv6 off before the link
    /// comes up (no router solicitation, DAD, MLD) and static neighbour
    /// entries (no ARP), so every frame the dataplane sees was sent by the test.
    fn new(prefix: &str, quiet: bool) -> Result<Pods, String> {
        Pods::with_queues(prefix, quiet, [1, 1])
    }

    /// Pod `i`'s veth pair has `queues[i]` RX and TX queues on each side.
    fn with_queues(prefix: &str, quiet: bool, queues: [u32; 2]) -> Result<Pods, String> {
        let pods = Pods { prefix: prefix.to_string() };
        pods.cleanup();
        for (i, q) in queues.iter().enumerate() {
            let ns = format!("{prefix}-{i}");
            let host = format!("{prefix}h{i}");
            let pod = format!("{prefix}c{i}");
            sh(&["ip", "netns", "add", &ns])?;
            let q = q.to_string();
            #[rustfmt::skip]
            sh(&["ip", "link", "add", &host, "numrxqueues", &q, "numtxqueues", &q,
                 "type", "veth", "peer", "name", &pod, "numrxqueues", &q, "numtxqueues", &q])?;
            sh(&["ip", "link", "set", &pod, "netns", &ns])?;
            let n = |cmd: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns.as_str()];
                v.extend_from_slice(cmd);
                sh(&v)
            };
            n(&["ip", "link", "set", &pod, "name", "eth0"])?;
            n(&["ip", "link", "set", "eth0", "address", &format!("02:00:00:00:00:0{}", i + 1)])?;
            n(&["ip", "addr", "add", &format!("10.99.0.{}/24", i + 1), "dev", "eth0"])?;
            if quiet {
                n(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])?;
                let peer = 1 - i;
                n(&[
                    "ip",
                    "neigh",
                    "replace",
                    &format!("10.99.0.{}", peer + 1),
                    "lladdr",
                    &format!("02:00:00:00:00:0{}", peer + 1),
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
            n(&["ip", "link", "set", "eth0", "up"])?;
            n(&["ip", "link", "set", "lo", "up"])?;
            n(&["ethtool", "-K", "eth0", "tx", "off"])?;
            let _ = sh(&["sysctl", "-qw", &format!("net.ipv6.conf.{host}.disable_ipv6=1")]);
            sh(&["ip", "link", "set", &host, "up"])?;
        }
        Ok(pods)
    }

    fn exec(&self, i: usize, cmd: &[&str]) -> Result<String, String> {
        let ns = format!("{}-{i}", self.prefix);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(cmd);
        sh(&v)
    }

    fn ports(&self) -> Vec<String> {
        (0..2).map(|i| format!("{}h{i}", self.prefix)).collect()
    }

    fn cleanup(&self) {
        for i in 0..2 {
            let _ = sh(&["ip", "link", "del", &format!("{}h{i}", self.prefix)]);
            let _ = sh(&["ip", "netns", "del", &format!("{}-{i}", self.prefix)]);
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn empty_table() -> Arc<ArcSwap<PublishedTable>> {
    let compiled = policy_compiler::compile(&[], &[], &[]);
    Arc::new(ArcSwap::from_pointee(PublishedTable::new(1, compiled.table, 1)))
}

fn ping_through(attach: AttachMode, mode: Mode, tag: &str) {
    if skip() {
        return;
    }
    let _lock = lock();
    let prefix = format!("pclx{tag}{}", std::process::id() % 10000);
    let pods = Pods::new(&prefix, false).expect("namespaces");
    let cfg = DataplaneConfig {
        ports: pods.ports(),
        pipeline: PipelineConfig { mode, ..PipelineConfig::default() },
        xsk: XskConfig { attach, copy: CopyMode::Copy, ..XskConfig::default() },
        idle_poll_ms: 10,
        ..DataplaneConfig::default()
    };
    let dp = Dataplane::start(&cfg, empty_table()).expect("dataplane start");
    let out = pods.exec(0, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.2"]);
    let io = dp.io_counters();
    dp.shutdown();
    let out = out.unwrap_or_else(|e| panic!("ping failed: {e}; io counters {io:?}"));
    assert!(out.contains("3 received"), "{out}");
    assert!(io.rx >= 6 && io.tx >= 6, "{io:?}");
    // No XDP program left behind on the ports.
    for p in pods.ports() {
        let link = sh(&["ip", "link", "show", &p]).unwrap();
        assert!(!link.contains("xdp"), "{link}");
    }
}

#[test]
fn ping_through_switch_native() {
    ping_through(AttachMode::Native, Mode::Switch, "n");
}

#[test]
fn ping_through_wire_generic() {
    ping_through(AttachMode::Generic, Mode::Wire, "g");
}

/// On a wire given the segment's prefix, the kernels' own neighbour discovery
/// crosses (an IPv6 ping resolves its peer) and a solicitation addressed
/// beyond the segment does not: neighbour discovery passes without policy.
#[test]
fn on_a_wire_neighbour_discovery_stays_on_the_segment() {
    use dataplane::addresses::Addresses;
    if dataplane::testing::root::skip(&["ethtool", "ping", "python3"]) {
        return;
    }
    let _lock = lock();
    let prefix = format!("pcln{}", std::process::id() % 10000);
    let pods = Pods::new(&prefix, false).expect("namespaces");
    for i in 0..2 {
        let addr = format!("fd00:99::{}/64", i + 1);
        pods.exec(i, &["ip", "addr", "add", &addr, "dev", "eth0", "nodad"]).expect("IPv6 address");
    }
    let addresses = Addresses::new(vec![None, None], vec![])
        .with_link_prefixes(Some(vec![("fd00:99::".parse().unwrap(), 64)]));
    let compiled = policy_compiler::compile(&[], &[], &[]);
    let table = PublishedTable::new(1, compiled.table, 1).with_addresses(addresses);
    let cfg = DataplaneConfig {
        ports: pods.ports(),
        pipeline: PipelineConfig { mode: Mode::Wire, ..PipelineConfig::default() },
        xsk: XskConfig { attach: AttachMode::Generic, copy: CopyMode::Copy, ..XskConfig::default() },
        idle_poll_ms: 10,
        ..DataplaneConfig::default()
    };
    let dp = Dataplane::start(&cfg, Arc::new(ArcSwap::from_pointee(table))).expect("dataplane start");
    let off_link = |dp: &Dataplane| dp.pipeline_counters().drops["neighbour_off_link"];
    let ping = pods.exec(0, &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00:99::2"]);
    let before = off_link(&dp);
    let sent = dataplane::testing::root::send_solicitation(
        &format!("{prefix}-0"),
        "eth0",
        "fd00:99::1",
        "2001:db8:bad::1",
    );
    let t = std::time::Instant::now();
    while off_link(&dp) == before && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = off_link(&dp);
    dp.shutdown();
    let ping = ping.unwrap_or_else(|e| panic!("IPv6 ping across the wire failed: {e}"));
    assert!(ping.contains("3 received"), "{ping}");
    sent.expect("the solicitation was sent");
    assert_eq!((before, after), (0, 1), "neighbour_off_link drops before and after the solicitation");
}

/// Per-port and pipeline counters equal what was sent: `N` pings of a known size
/// between two quiet pods (no ARP, no IPv6), so every frame is accounted for.
#[test]
fn counters_match_what_was_sent() {
    if skip() {
        return;
    }
    const N: u64 = 20;
    let _lock = lock();
    let prefix = format!("pclc{}", std::process::id() % 10000);
    let pods = Pods::new(&prefix, true).expect("namespaces");
    let cfg = DataplaneConfig {
        ports: pods.ports(),
        pipeline: PipelineConfig { mode: Mode::Switch, ..PipelineConfig::default() },
        xsk: XskConfig { attach: AttachMode::Native, copy: CopyMode::Copy, ..XskConfig::default() },
        idle_poll_ms: 10,
        ..DataplaneConfig::default()
    };
    let dp = Dataplane::start(&cfg, empty_table()).expect("dataplane start");
    // Nothing of the pods' own may reach the dataplane, before or during the test.
    std::thread::sleep(Duration::from_millis(300));
    let before = (dp.pipeline_counters(), dp.io_counters());
    let size = PING_PAYLOAD.to_string();
    let count = N.to_string();
    let out = pods.exec(0, &["ping", "-c", &count, "-i", "0.02", "-s", &size, "-W", "2", "10.99.0.2"]);
    // Wait for the workers to publish the last frames, then make sure nothing else comes.
    let settle = std::time::Instant::now();
    while dp.io_counters().tx < before.1.tx + 2 * N && settle.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (c, io) = (dp.pipeline_counters(), dp.io_counters());
    dp.shutdown();
    let out = out.unwrap_or_else(|e| panic!("ping failed: {e}"));
    assert!(out.contains(&format!("{N} received")), "{out}");
    assert_eq!(before.0.frames_in, 0, "the pods sent frames of their own: {:?}", before.0);

    assert_eq!(c.ports.len(), 2);
    for (i, p) in c.ports.iter().enumerate() {
        // Port 0 receives the requests and sends the replies; port 1 the other way round.
        assert_eq!(p.rx_frames, N, "port {i} rx: {c:?}");
        assert_eq!(p.rx_bytes, N * PING_FRAME, "port {i} rx bytes: {c:?}");
        assert_eq!(p.tx_frames, N, "port {i} tx: {c:?}");
        assert_eq!(p.tx_bytes, N * PING_FRAME, "port {i} tx bytes: {c:?}");
        assert_eq!(p.tx_dropped, 0, "port {i}: {c:?}");
    }
    assert_eq!(c.frames_in, 2 * N);
    assert_eq!(c.bytes_in, 2 * N * PING_FRAME);
    // The first request goes to a MAC not yet learned (flooded: one copy to the one
    // other port); its reply teaches the switch the requester's MAC and every later
    // frame is forwarded to a learned port.
    assert_eq!((c.flooded, c.forwarded, c.dropped), (1, 2 * N - 1, 0), "{c:?}");
    assert_eq!((io.rx, io.tx, io.flood_copies, io.tx_full), (2 * N, 2 * N, 1, 0), "{io:?}");
}

/// `queues` per port is honoured: a port with q queues is bound on queues 0..q by
/// workers 0..q, and each of those workers receives the frames of its queue.
#[test]
fn each_port_is_bound_on_its_queues() {
    if skip() {
        return;
    }
    let _lock = lock();
    let prefix = format!("pclq{}", std::process::id() % 10000);
    let pods = Pods::with_queues(&prefix, false, [2, 2]).expect("namespaces");
    let ports = pods.ports();
    let cfg = DataplaneConfig {
        ports: ports.clone(),
        queues: vec![2, 2],
        workers: 3,
        xsk: XskConfig { attach: AttachMode::Native, copy: CopyMode::Copy, ..XskConfig::default() },
        idle_poll_ms: 10,
        ..DataplaneConfig::default()
    };
    let dp = Dataplane::start(&cfg, empty_table()).expect("dataplane start");
    let b = |worker, port, queue| Binding { worker, port, queue };
    assert_eq!(
        dp.bindings(),
        &[b(0, 0, 0), b(0, 1, 0), b(1, 0, 1), b(1, 1, 1)],
        "worker 2 has nothing to bind"
    );
    assert_eq!(dp.worker_count(), 3);
    let ping = pods.exec(0, &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.99.0.2"]);
    // Thirty-two UDP datagrams, each from a new socket (a new source port, so a new
    // flow hash): the pod's veth spreads them over its two TX queues, which are the
    // two RX queues of the port (veth_xmit keeps the queue index).
    let udp = pods.exec(0, &["bash", "-c", "for i in $(seq 32); do echo x > /dev/udp/10.99.0.2/9; done"]);
    // The counters are published by the workers as they go: wait (5 s at most) for
    // both queues' flows rather than a fixed time.
    let t = std::time::Instant::now();
    let mut per_worker = dp.pipeline_counters_per_worker();
    while t.elapsed() < Duration::from_secs(5)
        && !(per_worker[0].conntrack.created > 0 && per_worker[1].conntrack.created > 0)
    {
        std::thread::sleep(Duration::from_millis(50));
        per_worker = dp.pipeline_counters_per_worker();
    }
    dp.shutdown();
    let ping = ping.unwrap_or_else(|e| panic!("ping failed: {e}"));
    assert!(ping.contains("2 received"), "{ping}");
    udp.expect("udp");
    // Workers 0 and 1 each tracked connections (their queue's flows): both queues of
    // the ports are bound and enforced. Worker 2 has no socket and saw nothing.
    let created = |w: usize| per_worker[w].conntrack.created;
    assert!(created(0) > 0 && created(1) > 0, "both queues carry flows: {per_worker:?}");
    assert_eq!(per_worker[2].frames_in, 0, "worker 2 has no socket");
}

/// An interface with more RX queues than are bound is refused, naming it: frames on
/// the unbound queue would escape the dataplane.
#[test]
fn an_interface_with_an_unbound_queue_is_refused() {
    if skip() {
        return;
    }
    let _lock = lock();
    let prefix = format!("pclr{}", std::process::id() % 10000);
    let pods = Pods::with_queues(&prefix, false, [2, 1]).expect("namespaces");
    let ports = pods.ports();
    let base = DataplaneConfig {
        ports: ports.clone(),
        xsk: XskConfig { attach: AttachMode::Native, copy: CopyMode::Copy, ..XskConfig::default() },
        ..DataplaneConfig::default()
    };
    // One queue asked for on a two-queue interface.
    let cfg = DataplaneConfig { queues: vec![1, 1], ..base.clone() };
    match Dataplane::start(&cfg, empty_table()) {
        Err(StartError::Port(e @ PortError::UnboundQueues { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("port {} has 2 RX queues but only 1 would be bound", ports[0])),
                "{msg}"
            );
        }
        other => panic!("expected UnboundQueues, got {other:?}"),
    }
    // Every queue asked for, but not enough workers to bind them.
    let cfg = DataplaneConfig { workers: 1, ..base.clone() };
    let e = Dataplane::start(&cfg, empty_table()).expect_err("one worker for two queues");
    assert!(
        e.to_string().contains(&format!("port {} is bound on 2 queues but there are 1 workers", ports[0])),
        "{e}"
    );
    // More queues asked for than the interface has.
    let cfg = DataplaneConfig { queues: vec![2, 2], workers: 2, ..base };
    match Dataplane::start(&cfg, empty_table()) {
        Err(StartError::Port(PortError::NoSuchQueues { ifname, .. })) => assert_eq!(ifname, ports[1]),
        other => panic!("expected NoSuchQueues, got {other:?}"),
    }
    // Nothing left attached.
    for p in &ports {
        let link = sh(&["ip", "link", "show", p]).unwrap();
        assert!(!link.contains("xdp"), "{link}");
    }
}

/// A worker that cannot be pinned to its core still runs, and the dataplane
/// says so (`Dataplane::cores`, which the daemon logs and serves in /status):
/// core 1023 is no CPU of this machine, 5000 is beyond any `cpu_set_t`.
#[test]
fn workers_report_whether_they_were_pinned() {
    if skip() {
        return;
    }
    let _lock = lock();
    let prefix = format!("pclp{}", std::process::id() % 10000);
    let pods = Pods::new(&prefix, false).expect("namespaces");
    // A core this process may use, and one below 1,024 it may not (no CPU, or outside its cpuset).
    let allowed: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
    let usable = *allowed.first().expect("at least one allowed core");
    let unusable = (0..1024).rev().find(|c| !allowed.contains(c)).expect("a core outside the cpuset");
    let cfg = DataplaneConfig {
        ports: pods.ports(),
        workers: 3,
        cores: vec![usable, unusable, 5000],
        xsk: XskConfig { attach: AttachMode::Native, copy: CopyMode::Copy, ..XskConfig::default() },
        idle_poll_ms: 10,
        ..DataplaneConfig::default()
    };
    let dp = Dataplane::start(&cfg, empty_table()).expect("dataplane start");
    let cores = dp.cores().to_vec();
    let alive = dp.workers_alive();
    let ping = pods.exec(0, &["ping", "-c", "1", "-W", "2", "10.99.0.2"]);
    dp.shutdown();
    let c = |worker, core: usize, pinned| WorkerCore { worker, core: Some(core), pinned };
    assert_eq!(cores, [c(0, usable, true), c(1, unusable, false), c(2, 5000, false)]);
    assert!(alive);
    assert!(ping.expect("ping").contains("1 received"));
}

/// Every check runs before any interface is touched: an invalid pipeline
/// configuration is refused with the XDP program already on a port (another
/// tool's, attached through netlink) left in place, not replaced by ours and
/// then removed.
#[test]
fn an_invalid_pipeline_config_leaves_the_interfaces_alone() {
    if dataplane::testing::root::skip(&["ethtool", "ping", "clang"]) {
        return;
    }
    let _lock = lock();
    let prefix = format!("pclv{}", std::process::id() % 10000);
    let pods = Pods::new(&prefix, false).expect("namespaces");
    let ports = pods.ports();
    // Someone else's XDP program: XDP_PASS, compiled here, attached by iproute2 (netlink).
    let guard = tempfile::Builder::new().prefix(&format!("{prefix}-xdp")).tempdir().unwrap();
    let dir = guard.path();
    let (src, obj) = (dir.join("other.c"), dir.join("other.o"));
    std::fs::write(
        &src,
        "__attribute__((section(\"xdp\"), used)) int other_tool(void *ctx) { return 2; }\n\
         char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
    )
    .unwrap();
    sh(&["clang", "-O2", "-target", "bpf", "-c", src.to_str().unwrap(), "-o", obj.to_str().unwrap()])
        .expect("clang -target bpf");
    sh(&["ip", "link", "set", "dev", &ports[0], "xdpgeneric", "obj", obj.to_str().unwrap(), "sec", "xdp"])
        .expect("attach the other program");
    drop(guard);
    let attached = || sh(&["ip", "link", "show", &ports[0]]).unwrap();
    assert!(attached().contains("name other_tool"), "{}", attached());

    let cfg = DataplaneConfig {
        ports: ports.clone(),
        pipeline: PipelineConfig { conntrack_capacity: 0, ..PipelineConfig::default() },
        xsk: XskConfig { attach: AttachMode::Generic, copy: CopyMode::Copy, ..XskConfig::default() },
        ..DataplaneConfig::default()
    };
    match Dataplane::start(&cfg, empty_table()) {
        Err(StartError::Pipeline(ConfigError::Capacity { field: "conntrack_capacity", value: 0 })) => {}
        other => panic!("expected the pipeline's capacity error, got {other:?}"),
    }
    assert!(attached().contains("name other_tool"), "the other program was removed: {}", attached());
    assert!(!sh(&["ip", "link", "show", &ports[1]]).unwrap().contains("xdp"));
}

/// The CI rule (`dataplane::testing::root`): a root-only test that cannot run skips,
/// saying why, unless PORTCULLIS_REQUIRE_ROOT_TESTS=1, which makes it fail. Checked by
/// running one root-only test of this binary where it cannot run: as an ordinary user
/// and, when root, as root in a user namespace, where `ip netns add` is refused.
#[test]
fn a_root_test_that_cannot_run_skips_or_fails_as_required() {
    use dataplane::testing::root::REQUIRE;
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let run = |wrapper: &[&str], require: bool| -> (bool, String) {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([exe, "--exact", "ping_through_switch_native", "--nocapture", "--test-threads=1"]);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        if require {
            c.env(REQUIRE, "1");
        } else {
            c.env_remove(REQUIRE);
        }
        let o = c.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        (o.status.success(), text)
    };
    let root = sh(&["id", "-u"]).is_ok_and(|u| u.trim() == "0");
    let mut cases: Vec<(&[&str], &str)> = Vec::new();
    if root {
        cases.push((&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"], "not root"));
        cases.push((&["unshare", "--user", "--map-root-user", "--"], "root, but `ip netns add` fails"));
    } else {
        cases.push((&[], "not root"));
    }
    for (wrapper, why) in cases {
        let (ok, out) = run(wrapper, false);
        assert!(ok && out.contains(&format!("SKIP: {why}")), "{wrapper:?} without {REQUIRE}:\n{out}");
        let (ok, out) = run(wrapper, true);
        assert!(!ok, "{wrapper:?} with {REQUIRE}=1 must fail:\n{out}");
        assert!(out.contains(&format!("{REQUIRE}=1 and this root-only test cannot run: {why}")), "{out}");
    }
}
