//! `lab up`: namespaces, veth pairs, echo servers and the dataplane.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use policy_compiler::model::PodInfo;
use policy_compiler::Severity;
use thiserror::Error;

use super::cmd::{self, CommandError};
use super::state::{self, LabPod, LabState};
use super::{down, policy, DirArgs, DEFAULT_PREFIX};
use crate::manifest::LoadErrors;

/// `lab up` arguments.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Cluster file: namespaces, pods (with status.podIPs) and policies, as `--state` reads.
    #[arg(long = "file", short = 'f')]
    pub file: PathBuf,
    /// State directory.
    #[command(flatten)]
    pub dir: DirArgs,
    /// Prefix of every namespace (`<prefix>-<ns>.<pod>`) and host link
    /// (`<prefix>h<i>`) the lab creates: lowercase letters and digits, at most 9.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// XDP attach mode of the dataplane: native, generic or auto.
    #[arg(long, default_value = "native")]
    pub attach: String,
    /// AF_XDP copy mode: copy, zero-copy or auto (veth supports only copy).
    #[arg(long, default_value = "copy")]
    pub copy: String,
    /// Cores to pin the dataplane's workers to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Start even when policies are invalid (they are enforced fail-closed).
    #[arg(long)]
    pub allow_invalid: bool,
    /// Use the daemon as the lab's dataplane: `portcullis run --manifests DIR` with the pods'
    /// host links as ports, so policy files dropped into DIR are enforced as an operator's
    /// would be (instead of `lab apply`). DIR should hold the cluster's namespaces and pods too.
    #[arg(long, value_name = "DIR")]
    pub run_manifests: Option<PathBuf>,
    /// Status endpoint of the daemon started by `--run-manifests`.
    #[arg(long, default_value = "127.0.0.1:9877")]
    pub status_address: std::net::SocketAddr,
}

/// `lab up` failed. Whatever was created is removed again before returning.
#[derive(Debug, Error)]
pub enum UpError {
    /// The prefix cannot make valid interface names.
    #[error("prefix {prefix:?}: use 1 to 9 lowercase letters or digits")]
    Prefix {
        /// The prefix.
        prefix: String,
    },
    /// A lab is already up with this state directory.
    #[error("a lab is already up in {dir} (run `portcullis lab down` first)")]
    AlreadyUp {
        /// State directory.
        dir: PathBuf,
    },
    /// The cluster file could not be read.
    #[error("reading the cluster file")]
    Load(#[from] LoadErrors),
    /// The cluster file has invalid objects.
    #[error(
        "{count} invalid object(s) in the cluster file (use --allow-invalid to enforce them fail-closed)"
    )]
    Invalid {
        /// Number of errors.
        count: usize,
    },
    /// No pod has an IP address.
    #[error("no pod with an IP address (status.podIPs) in the cluster file")]
    NoPods,
    /// A file in the state directory.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A process the lab starts did not become ready.
    #[error("{what} did not start; its log {log} ends with:\n{tail}")]
    NotReady {
        /// Which process.
        what: String,
        /// Its log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io { path: path.to_path_buf(), source }
}

/// Brings a lab up.
pub fn up(args: &UpArgs) -> Result<(), UpError> {
    let p = &args.prefix;
    if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(UpError::Prefix { prefix: p.clone() });
    }
    let dir = &args.dir.dir;
    if dir.join(state::STATE_FILE).exists() {
        return Err(UpError::AlreadyUp { dir: dir.clone() });
    }
    let objects = policy::load(std::slice::from_ref(&args.file))?;
    let compiled = objects.compile();
    let errors = compiled.problems.iter().filter(|p| p.severity == Severity::Error).count();
    for problem in &compiled.problems {
        eprintln!("{problem}");
    }
    if errors > 0 && !args.allow_invalid {
        return Err(UpError::Invalid { count: errors });
    }
    let pods: Vec<&PodInfo> = compiled.cluster.pods.iter().filter(|p| !p.ips.is_empty()).collect();
    if pods.is_empty() {
        return Err(UpError::NoPods);
    }
    std::fs::create_dir_all(dir.join(state::APPLIED_DIR)).map_err(io_err(dir))?;
    std::fs::copy(&args.file, dir.join(state::CLUSTER_FILE)).map_err(io_err(&args.file))?;
    let mut lab =
        LabState { prefix: p.clone(), pods: Vec::new(), dataplane_pid: None, dataplane_args: Vec::new() };
    let result = build(args, dir, &pods, &mut lab);
    if result.is_err() {
        let _ = lab.save(dir);
        let _ = down::down(&down::DownArgs { dir: args.dir.clone(), prefix: Some(p.clone()) });
    }
    result
}

fn build(args: &UpArgs, dir: &Path, pods: &[&PodInfo], lab: &mut LabState) -> Result<(), UpError> {
    let lens = prefix_lengths(pods.iter().flat_map(|p| p.ips.iter().copied()));
    for (i, pod) in pods.iter().enumerate() {
        let key = pod.key();
        let netns = format!("{}-{}.{}", lab.prefix, pod.namespace, pod.name);
        let host_if = format!("{}h{i}", lab.prefix);
        let addrs: Vec<(IpAddr, u8)> =
            pod.ips.iter().map(|ip| (*ip, if ip.is_ipv4() { lens.0 } else { lens.1 })).collect();
        let mut ports: Vec<u16> = pod.container_ports.iter().map(|(_, port)| *port).collect();
        ports.sort_unstable();
        ports.dedup();
        let lab_pod = LabPod { key, netns, host_if, addrs, mac: mac_of(&pod.key()), ports, server_pid: None };
        lab.pods.push(lab_pod.clone());
        lab.save(dir).map_err(io_err(dir))?;
        create_pod(&lab_pod)?;
    }
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let dir_s = dir.to_string_lossy().into_owned();
    for (i, pod) in lab.pods.iter_mut().enumerate() {
        let log = dir.join(format!("serve-{i}.log"));
        let ready = dir.join(format!("serve-{i}.ready"));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.netns]).arg(&exe).args(["lab", "serve", "--lab-dir", &dir_s]);
        c.args(["--label", &pod.key, "--ready"]).arg(&ready);
        for (ip, _) in &pod.addrs {
            c.args(["--bind", &ip.to_string()]);
        }
        if !pod.ports.is_empty() {
            let ports: Vec<String> = pod.ports.iter().map(u16::to_string).collect();
            c.args(["--ports", &ports.join(",")]);
        }
        pod.server_pid = Some(spawn(c, &log)?);
        wait_ready(&format!("echo server of {}", pod.key), &log, pod.server_pid, || ready.exists())?;
    }
    lab.save(dir).map_err(io_err(dir))?;
    let ports: Vec<String> = lab.pods.iter().map(|p| p.host_if.clone()).collect();
    let mut dp_args = vec!["--ports".to_string(), ports.join(","), "--attach".into(), args.attach.clone()];
    dp_args.extend(["--copy".into(), args.copy.clone()]);
    if !args.cores.is_empty() {
        let cores: Vec<String> = args.cores.iter().map(usize::to_string).collect();
        dp_args.extend(["--cores".into(), cores.join(",")]);
    }
    let log = dir.join(state::DATAPLANE_LOG);
    if let Some(manifests) = &args.run_manifests {
        // The daemon, configured like a node whose pod links are ports.
        let config = dir.join("run-config.yaml");
        let cfg = format!(
            "mode: switch\nports:\n{}workers: [{}]\nxdp: {{attach: {}, zero_copy: false}}\nstatus_address: \"{}\"\n\
             denied_flow_log_per_second: 20\n",
            lab.pods.iter().map(|p| format!("  - interface: {}\n    pod: {}\n", p.host_if, p.key)).collect::<String>(),
            args.cores.first().copied().unwrap_or(0),
            if args.attach == "generic" { "generic" } else { "native" },
            args.status_address
        );
        std::fs::write(&config, cfg).map_err(io_err(&config))?;
        let mut c = Command::new(&exe);
        c.arg("run").arg("--manifests").arg(manifests).arg("--config").arg(&config);
        c.args(["--log-format", "text"]);
        lab.dataplane_pid = Some(spawn(c, &log)?);
        lab.dataplane_args = Vec::new();
        lab.save(dir).map_err(io_err(dir))?;
        let addr = args.status_address;
        wait_ready("portcullis run", &log, lab.dataplane_pid, || http_ok(addr, "/readyz"))?;
    } else {
        let mut c = Command::new(&exe);
        c.args(["lab", "dataplane", "--lab-dir", &dir_s]).args(&dp_args);
        lab.dataplane_pid = Some(spawn(c, &log)?);
        lab.dataplane_args = dp_args;
        lab.save(dir).map_err(io_err(dir))?;
        wait_ready("the dataplane", &log, lab.dataplane_pid, || state::generation(dir).is_some())?;
    }
    println!(
        "lab up: {} pods, dataplane pid {}, state in {}",
        lab.pods.len(),
        lab.dataplane_pid.unwrap_or_default(),
        dir.display()
    );
    for p in &lab.pods {
        let ips: Vec<String> = p.addrs.iter().map(|(ip, len)| format!("{ip}/{len}")).collect();
        println!("  {:<24} netns {:<28} port {:<10} {}", p.key, p.netns, p.host_if, ips.join(" "));
    }
    Ok(())
}

/// Creates the namespace and veth pair of one pod.
fn create_pod(p: &LabPod) -> Result<(), CommandError> {
    let tmp = format!("{}c", p.host_if);
    cmd::run("ip", &["netns", "add", &p.netns])?;
    cmd::run("ip", &["link", "add", &p.host_if, "type", "veth", "peer", "name", &tmp])?;
    cmd::run("ip", &["link", "set", &tmp, "netns", &p.netns])?;
    let ns = |prog: &str, args: &[&str]| cmd::in_netns(&p.netns, prog, args);
    ns("ip", &["link", "set", &tmp, "name", "eth0"])?;
    ns("ip", &["link", "set", "eth0", "address", &p.mac])?;
    // Addresses must be usable at once: no IPv6 duplicate address detection.
    ns("sysctl", &["-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
    for (ip, len) in &p.addrs {
        let a = format!("{ip}/{len}");
        if ip.is_ipv6() {
            ns("ip", &["addr", "add", &a, "dev", "eth0", "nodad"])?;
        } else {
            ns("ip", &["addr", "add", &a, "dev", "eth0"])?;
        }
    }
    ns("ip", &["link", "set", "lo", "up"])?;
    ns("ip", &["link", "set", "eth0", "up"])?;
    // A veth hands TCP/UDP to its peer with CHECKSUM_PARTIAL; forwarded
    // through AF_XDP such frames arrive with bad checksums (MACHINE-NOTES).
    ns("ethtool", &["-K", "eth0", "tx", "off"])?;
    // The host side carries only the pods' traffic: no addresses, no IPv6
    // chatter of its own.
    let _ = cmd::run("sysctl", &["-qw", &format!("net.ipv6.conf.{}.disable_ipv6=1", p.host_if)]);
    cmd::run("ip", &["link", "set", &p.host_if, "up"])?;
    Ok(())
}

/// Prefix lengths (IPv4, IPv6) that put every pod address on one link: the
/// bits all addresses of the family share, at most /24 and /64.
pub fn prefix_lengths(ips: impl Iterator<Item = IpAddr>) -> (u8, u8) {
    // Per family: the first address seen, and the bits where others differ.
    let mut v4: Option<(u32, u32)> = None;
    let mut v6: Option<(u128, u128)> = None;
    for ip in ips {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                v4 = Some(v4.map_or((a, 0), |(first, diff)| (first, diff | (first ^ a))));
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                v6 = Some(v6.map_or((a, 0), |(first, diff)| (first, diff | (first ^ a))));
            }
        }
    }
    let l4 = v4.map_or(24, |(_, d)| d.leading_zeros().min(24) as u8);
    let l6 = v6.map_or(64, |(_, d)| d.leading_zeros().min(64) as u8);
    (l4, l6)
}

/// A stable, locally administered unicast MAC for a pod (FNV-1a of its key).
pub fn mac_of(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[3], b[4], b[5], b[6], b[7])
}

/// Starts a background process in its own process group, output to `log`.
fn spawn(mut c: Command, log: &Path) -> Result<u32, UpError> {
    let out = std::fs::File::create(log).map_err(io_err(log))?;
    let err = out.try_clone().map_err(io_err(log))?;
    c.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let child = c.spawn().map_err(io_err(log))?;
    Ok(child.id())
}

/// Waits until `ready()` or 20 s, failing early when the process died.
/// Does `GET path` on `addr` answer 200?
pub fn http_ok(addr: std::net::SocketAddr, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn wait_ready(what: &str, log: &Path, pid: Option<u32>, ready: impl Fn() -> bool) -> Result<(), UpError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ready() {
            return Ok(());
        }
        let alive = pid.is_some_and(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        });
        if !alive || Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            return Err(UpError::NotReady { what: what.into(), log: log.to_path_buf(), tail });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lengths_cover_all_pods() {
        let ips = ["10.0.1.1", "10.0.2.2", "fd00::1", "fd00::2:1"].map(|s| s.parse::<IpAddr>().unwrap());
        assert_eq!(prefix_lengths(ips.into_iter()), (22, 64));
        let one = ["10.1.2.3".parse().unwrap()];
        assert_eq!(prefix_lengths(one.into_iter()), (24, 64));
    }

    #[test]
    fn macs_are_stable_unicast_and_local() {
        let m = mac_of("x/a");
        assert_eq!(m, mac_of("x/a"));
        assert_ne!(m, mac_of("x/b"));
        assert!(m.starts_with("02:"));
    }
}
