//! The AF_XDP I/O layer alone, on real veth pairs in network namespaces:
//! two "pods" talk through a `Dataplane` in switch mode.
//!
//! Needs root (network namespaces, AF_XDP); skips, saying why, otherwise.
//! Tests here create namespaces and interfaces whose names start with a
//! per-process prefix, remove them in `Drop`, and run one at a time (a mutex
//! in this binary; cargo runs test binaries one after another).

use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use dataplane::pipeline::{Mode, PipelineConfig, PublishedTable};
use dataplane::xsk::{AttachMode, CopyMode, XskConfig};
use dataplane::{Dataplane, DataplaneConfig};

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn can_run() -> Option<String> {
    let uid = sh(&["id", "-u"]).ok()?;
    if uid.trim() != "0" {
        return Some("not root".into());
    }
    if sh(&["ip", "netns", "list"]).is_err() {
        return Some("`ip netns` unavailable".into());
    }
    if sh(&["ethtool", "--version"]).is_err() {
        return Some("ethtool missing (scripts/install-deps.sh)".into());
    }
    None
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

impl Pods {
    fn new(prefix: &str) -> Result<Pods, String> {
        let pods = Pods { prefix: prefix.to_string() };
        pods.cleanup();
        for i in 0..2 {
            let ns = format!("{prefix}-{i}");
            let host = format!("{prefix}h{i}");
            let pod = format!("{prefix}c{i}");
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &pod])?;
            sh(&["ip", "link", "set", &pod, "netns", &ns])?;
            let n = |cmd: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns.as_str()];
                v.extend_from_slice(cmd);
                sh(&v)
            };
            n(&["ip", "link", "set", &pod, "name", "eth0"])?;
            n(&["ip", "link", "set", "eth0", "address", &format!("02:00:00:00:00:0{}", i + 1)])?;
            n(&["ip", "addr", "add", &format!("10.99.0.{}/24", i + 1), "dev", "eth0"])?;
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
    if let Some(why) = can_run() {
        eprintln!("SKIP: {why}");
        return;
    }
    let _lock = lock();
    let prefix = format!("pclx{tag}{}", std::process::id() % 10000);
    let pods = Pods::new(&prefix).expect("namespaces");
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
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn ping_through_switch_native() {
    ping_through(AttachMode::Native, Mode::Switch, "n");
}

#[test]
fn ping_through_wire_generic() {
    ping_through(AttachMode::Generic, Mode::Wire, "g");
}
