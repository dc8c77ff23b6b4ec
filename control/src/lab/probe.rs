//! `lab probe`: a real connection attempt from every pod to every pod, shown
//! as the reachability matrix the upstream Kubernetes e2e tests print (and
//! in the same JSON shape as `portcullis matrix`, so the two can be compared).
//!
//! Each source pod gets one `lab probe-from` process inside its namespace
//! (`ip netns exec`), all started at once; each runs its probes in parallel
//! threads. A probe succeeds only when the answer names the pod aimed at.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use policy_compiler::model::PodInfo;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::state::LabState;
use super::{policy, DirArgs};
use crate::manifest::LoadErrors;
use crate::report::{self, first_port, parse_protocol, Matrix};

/// `lab probe` arguments.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// State directory.
    #[command(flatten)]
    pub dir: DirArgs,
    /// Protocols, comma-separated (TCP, UDP).
    #[arg(long, default_value = "TCP", value_delimiter = ',')]
    pub protocol: Vec<String>,
    /// Destination ports, comma-separated. Without it, each destination is
    /// probed on its own first container port (as `portcullis matrix` does).
    #[arg(long, value_delimiter = ',')]
    pub port: Vec<u16>,
    /// Address family (4 or 6); default: each pod's first IP.
    #[arg(long, value_parser = crate::lab::parse_family_arg)]
    pub family: Option<u8>,
    /// How long one probe may take, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Output: text (matrices) or json.
    #[arg(long, default_value = "text")]
    pub output: String,
}

/// `lab probe-from` arguments (internal).
#[derive(Args, Debug, Clone)]
pub struct ProbeFromArgs {
    /// State directory (marks the process as the lab's).
    #[arg(long = "lab-dir")]
    pub dir: PathBuf,
    /// Per-probe timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// `lab probe` failed.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// No lab in this directory.
    #[error("no lab in {dir} (run `portcullis lab up`)")]
    NoLab {
        /// State directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The lab's objects could not be read.
    #[error("reading the lab's objects")]
    Load(#[from] LoadErrors),
    /// A protocol name is not known.
    #[error("protocol {0}")]
    Protocol(String),
    /// A prober process failed.
    #[error("probing from {from}: {message}")]
    Prober {
        /// The source pod.
        from: String,
        /// What happened.
        message: String,
    },
    /// Reading targets or writing results.
    #[error("probe-from I/O")]
    Io(#[from] std::io::Error),
}

/// One probe to run from a pod.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    /// `namespace/name` of the destination (expected in the answer).
    pub to: String,
    /// Destination address.
    pub ip: IpAddr,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Destination port.
    pub port: u16,
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The destination answered with its name.
    Connected,
    /// No answer in time (what a policy drop looks like).
    Timeout,
    /// TCP reset or ICMP port unreachable: reached, but nothing listening.
    Refused,
    /// Something answered, but not the pod aimed at.
    WrongAnswer,
    /// Any other error.
    Error,
}

/// The result of one probe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeResult {
    /// What was probed.
    pub target: Target,
    /// How it ended.
    pub outcome: Outcome,
    /// Time taken in milliseconds.
    pub millis: u64,
}

/// Probes and prints the matrices.
pub fn probe(args: &ProbeArgs) -> Result<(), ProbeError> {
    let (matrices, odd) = probe_matrices(args)?;
    for note in &odd {
        eprintln!("warning: {note}");
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&matrices).unwrap_or_default());
    } else {
        for (i, m) in matrices.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", m.render());
        }
    }
    Ok(())
}

/// Probes every pair for every protocol and port; one matrix each. A cell
/// is allowed when the destination answered with its name and denied when
/// nothing answered in time (what a policy drop looks like). Any other end
/// (refused, another pod answering, an error) says nothing about policy (a
/// refusal even means the packet got through): the cell is `None`, and the
/// second list says which cells those are and why.
pub fn probe_matrices(args: &ProbeArgs) -> Result<(Vec<Matrix>, Vec<String>), ProbeError> {
    let dir = &args.dir.dir;
    let lab = LabState::load(dir).map_err(|source| ProbeError::NoLab { dir: dir.clone(), source })?;
    let compiled = policy::load(&policy::lab_files(dir))?.compile();
    // Pods in the compiled cluster's order (as `portcullis matrix`), limited to
    // those the lab created.
    let pods: Vec<(&PodInfo, &super::state::LabPod)> = compiled
        .cluster
        .pods
        .iter()
        .filter_map(|p| lab.pods.iter().find(|l| l.key == p.key()).map(|l| (p, l)))
        .filter(|(p, _)| report::pod_ip(p, args.family).is_some())
        .collect();
    let mut specs = Vec::new();
    for name in &args.protocol {
        let proto = parse_protocol(name).map_err(ProbeError::Protocol)?;
        if args.port.is_empty() {
            specs.push((proto, None));
        } else {
            specs.extend(args.port.iter().map(|p| (proto, Some(*p))));
        }
    }
    // Targets of every source, all specs together, so one process per source.
    let mut per_source: Vec<Vec<Target>> = vec![Vec::new(); pods.len()];
    for (i, _) in pods.iter().enumerate() {
        for (proto, port) in &specs {
            for (to, _) in &pods {
                let Some(port) = port.or_else(|| first_port(to, *proto)) else { continue };
                let ip = report::pod_ip(to, args.family).expect("filtered");
                per_source[i].push(Target { to: to.key(), ip, protocol: *proto, port });
            }
        }
    }
    let results =
        run_probers(dir, &pods.iter().map(|(_, l)| l.netns.clone()).collect::<Vec<_>>(), &per_source, args)?;
    let keys: Vec<String> = pods.iter().map(|(p, _)| p.key()).collect();
    let mut out = Vec::new();
    let mut odd = Vec::new();
    for (proto, port) in &specs {
        let allowed = pods
            .iter()
            .enumerate()
            .map(|(i, (from, _))| {
                pods.iter()
                    .map(|(to, _)| {
                        let port = port.or_else(|| first_port(to, *proto))?;
                        let r = results[i].iter().find(|r| {
                            r.target.to == to.key() && r.target.protocol == *proto && r.target.port == port
                        })?;
                        match r.outcome {
                            Outcome::Connected => Some(true),
                            Outcome::Timeout => Some(false),
                            other => {
                                odd.push(format!(
                                    "{} -> {} {}/{port}: {} (shown as -: says nothing about policy)",
                                    from.key(),
                                    to.key(),
                                    report::protocol_name(*proto),
                                    match other {
                                        Outcome::Refused => "refused: reached, but nothing listens there",
                                        Outcome::WrongAnswer => "another pod answered",
                                        _ => "the probe failed",
                                    }
                                ));
                                None
                            }
                        }
                    })
                    .collect()
            })
            .collect();
        out.push(Matrix {
            protocol: report::protocol_name(*proto),
            port: *port,
            portless: policy_compiler::Protocol::from_number(*proto).is_none(),
            pods: keys.clone(),
            allowed,
            family: args.family,
        });
    }
    Ok((out, odd))
}

/// Starts one `lab probe-from` per source namespace, all at once.
fn run_probers(
    dir: &Path,
    netns: &[String],
    targets: &[Vec<Target>],
    args: &ProbeArgs,
) -> Result<Vec<Vec<ProbeResult>>, ProbeError> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for (ns, t) in netns.iter().zip(targets) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args(["lab", "probe-from", "--lab-dir"])
            .arg(dir)
            .args(["--timeout-ms", &args.timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        for target in t {
            serde_json::to_writer(&mut stdin, target).map_err(std::io::Error::other)?;
            stdin.write_all(b"\n")?;
        }
        drop(stdin);
        children.push((ns.clone(), child));
    }
    let mut all = Vec::new();
    for (ns, child) in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(ProbeError::Prober {
                from: ns,
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut results = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let r: ProbeResult = serde_json::from_str(line).map_err(|e| ProbeError::Prober {
                from: ns.clone(),
                message: format!("bad result line: {e}"),
            })?;
            results.push(r);
        }
        all.push(results);
    }
    Ok(all)
}

/// Probes every target read from stdin (JSON lines), in parallel, and writes
/// one result per line to stdout.
pub fn probe_from(args: &ProbeFromArgs) -> Result<(), ProbeError> {
    let mut targets = Vec::new();
    for line in BufReader::new(std::io::stdin().lock()).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        targets.push(serde_json::from_str::<Target>(&line).map_err(std::io::Error::other)?);
    }
    let timeout = Duration::from_millis(args.timeout_ms.max(10));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<ProbeResult>>> = Mutex::new(vec![None; targets.len()]);
    let threads = targets.len().clamp(1, 64);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = targets.get(i) else { break };
                let token = format!("{}-{i}", std::process::id());
                let start = Instant::now();
                let outcome = match t.protocol {
                    6 => probe_tcp(t, &token, timeout),
                    17 => probe_udp(t, &token, timeout),
                    _ => Outcome::Error,
                };
                let r =
                    ProbeResult { target: t.clone(), outcome, millis: start.elapsed().as_millis() as u64 };
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    let mut out = std::io::stdout().lock();
    for r in results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten() {
        serde_json::to_writer(&mut out, &r).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn expected(t: &Target, token: &str) -> String {
    format!("{} {token}\n", t.to)
}

fn probe_tcp(t: &Target, token: &str, timeout: Duration) -> Outcome {
    let addr = SocketAddr::new(t.ip, t.port);
    let start = Instant::now();
    let conn = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(c) => c,
        Err(e) => return classify(&e),
    };
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(10));
    if conn.set_read_timeout(Some(left)).is_err() || conn.set_write_timeout(Some(left)).is_err() {
        return Outcome::Error;
    }
    if let Err(e) = (&conn).write_all(format!("probe {token}\n").as_bytes()) {
        return classify(&e);
    }
    let mut line = String::new();
    match BufReader::new(&conn).take(256).read_line(&mut line) {
        Ok(_) if line == expected(t, token) => Outcome::Connected,
        Ok(0) => Outcome::Refused,
        Ok(_) => Outcome::WrongAnswer,
        Err(e) => classify(&e),
    }
}

fn probe_udp(t: &Target, token: &str, timeout: Duration) -> Outcome {
    let bind: SocketAddr =
        if t.ip.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
    let Ok(sock) = UdpSocket::bind(bind) else { return Outcome::Error };
    if sock.connect(SocketAddr::new(t.ip, t.port)).is_err() {
        return Outcome::Error;
    }
    let request = format!("probe {token}\n");
    let want = expected(t, token);
    // A datagram can be lost (e.g. while the neighbour is being resolved):
    // send up to three times within the timeout.
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    let mut last = Outcome::Timeout;
    for attempt in 0..3u32 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = (left / (3 - attempt)).max(Duration::from_millis(5));
        if sock.set_read_timeout(Some(wait)).is_err() || sock.send(request.as_bytes()).is_err() {
            return Outcome::Error;
        }
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == *want.as_bytes() => return Outcome::Connected,
            Ok(_) => last = Outcome::WrongAnswer,
            Err(e) => {
                last = classify(&e);
                if last == Outcome::Refused {
                    return last;
                }
            }
        }
    }
    last
}

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Outcome::Timeout,
        ConnectionRefused | ConnectionReset => Outcome::Refused,
        _ => Outcome::Error,
    }
}
