//! `lab flood`: packets per second through the lab, end to end.
//!
//! A generator of our own (`lab flood-send`, inside the source pod's
//! namespace) transmits prebuilt UDP frames with AF_XDP on the pod's `eth0`
//! for a few seconds; the receiving pod's kernel counts what arrives on its
//! `eth0` (`/sys/class/net/eth0/statistics/rx_packets`, read inside its
//! namespace before and after). Frames go pod → veth → dataplane (AF_XDP
//! RX, pipeline, AF_XDP TX) → veth → pod, like any pod traffic.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Args;
use dataplane::traffic::transmit;
use dataplane::xsk::{CopyMode, Umem, XskConfig, XskSocket};
use thiserror::Error;

use super::cmd::{self, CommandError};
use super::run_dataplane::attach_mode;
use super::state::LabState;
use super::DirArgs;

/// `lab flood` arguments.
#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    /// State directory.
    #[command(flatten)]
    pub dir: DirArgs,
    /// Sending pod, `namespace/name`.
    #[arg(long)]
    pub from: String,
    /// Receiving pod, `namespace/name`.
    #[arg(long)]
    pub to: String,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Frame size in bytes (Ethernet header included, FCS not), at least 60.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// UDP destination port (best one nothing listens on).
    #[arg(long, default_value_t = 9)]
    pub port: u16,
    /// Attach mode of the generator's socket: native or generic.
    #[arg(long, default_value = "native")]
    pub attach: String,
    /// What the receiving pod does with the frames: `drop` them at its
    /// interface's ingress (an nftables netdev rule, removed afterwards), so
    /// the figure is about delivery to the pod and not about the pod's UDP
    /// stack; or `stack`: full IP/UDP processing (no listener: the kernel
    /// also tries, rate-limited, to send ICMP port unreachable).
    #[arg(long, default_value = "drop")]
    pub sink: String,
}

/// `lab flood-send` arguments (internal; run inside the source namespace).
#[derive(Args, Debug, Clone)]
pub struct FloodSendArgs {
    /// State directory (marks the process as the lab's).
    #[arg(long = "lab-dir")]
    pub dir: PathBuf,
    /// Interface to send on.
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
    /// Source MAC.
    #[arg(long)]
    pub src_mac: String,
    /// Destination MAC.
    #[arg(long)]
    pub dst_mac: String,
    /// Source IPv4.
    #[arg(long)]
    pub src_ip: Ipv4Addr,
    /// Destination IPv4.
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    /// UDP destination port.
    #[arg(long)]
    pub port: u16,
    /// Frame size.
    #[arg(long)]
    pub size: usize,
    /// Seconds to send.
    #[arg(long)]
    pub seconds: f64,
    /// native or generic.
    #[arg(long, default_value = "native")]
    pub attach: String,
}

/// `lab flood` failed.
#[derive(Debug, Error)]
pub enum FloodError {
    /// No lab here.
    #[error("no lab in {dir}")]
    NoLab {
        /// State directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A pod is not in the lab or has no IPv4 address.
    #[error("pod {0} is not in the lab or has no IPv4 address")]
    Pod(String),
    /// A value is out of range.
    #[error("invalid argument: {0}")]
    Argument(String),
    /// A tool failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The generator failed.
    #[error("generator: {0}")]
    Generator(String),
}

/// Runs the measurement and prints the result.
pub fn flood(args: &FloodArgs) -> Result<(), FloodError> {
    let dir = &args.dir.dir;
    let lab = LabState::load(dir).map_err(|source| FloodError::NoLab { dir: dir.clone(), source })?;
    let find = |key: &str| {
        lab.pods
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| {
                p.addrs.iter().find_map(|(ip, _)| match ip {
                    IpAddr::V4(v4) => Some((p, *v4)),
                    IpAddr::V6(_) => None,
                })
            })
            .ok_or_else(|| FloodError::Pod(key.to_string()))
    };
    let (src, src_ip) = find(&args.from)?;
    let (dst, dst_ip) = find(&args.to)?;
    if args.size < 60 || args.size > 1514 {
        return Err(FloodError::Argument(format!("--size {} (60..=1514)", args.size)));
    }
    // Let the switch learn both MACs first (else the flood is flooded).
    let _ = cmd::in_netns(&src.netns, "ping", &["-c", "2", "-i", "0.2", "-W", "1", &dst_ip.to_string()]);
    let rx = || -> Result<u64, FloodError> {
        let s = cmd::in_netns(&dst.netns, "cat", &["/sys/class/net/eth0/statistics/rx_packets"])?;
        s.trim().parse().map_err(|e| FloodError::Generator(format!("rx_packets: {e}")))
    };
    let sink = match args.sink.as_str() {
        "drop" => true,
        "stack" => false,
        other => return Err(FloodError::Argument(format!("--sink {other} (drop or stack)"))),
    };
    let table = "portcullis_flood_sink";
    if sink {
        let _ = cmd::in_netns(&dst.netns, "nft", &["delete", "table", "netdev", table]);
        cmd::in_netns(&dst.netns, "nft", &["add", "table", "netdev", table])?;
        let chain = "{ type filter hook ingress device eth0 priority -500; policy accept; }";
        cmd::in_netns(&dst.netns, "nft", &["add", "chain", "netdev", table, "in", chain])?;
        let port = args.port.to_string();
        cmd::in_netns(
            &dst.netns,
            "nft",
            &["add", "rule", "netdev", table, "in", "udp", "dport", &port, "drop"],
        )?;
    }
    // A flood the lab's policies deny measures drops, not throughput: say so first.
    if let Ok(objects) = super::policy::load(&super::policy::lab_files(dir)) {
        let c = objects.compile();
        let (s, d) = (IpAddr::V4(src_ip), IpAddr::V4(dst_ip));
        let v = c.table.verdict_both(s, d, 17, args.port);
        if !v.allowed() {
            println!(
                "note: the lab's policies deny this flow, so every frame will be dropped by policy: {}",
                crate::report::verdict_line(&c.table, s, d, 17, args.port, &v)
            );
        }
    }
    let result = measure(args, dir, src, src_ip, dst, dst_ip, rx);
    if sink {
        let _ = cmd::in_netns(&dst.netns, "nft", &["delete", "table", "netdev", table]);
    }
    result
}

fn measure(
    args: &FloodArgs,
    dir: &std::path::Path,
    src: &super::state::LabPod,
    src_ip: Ipv4Addr,
    dst: &super::state::LabPod,
    dst_ip: Ipv4Addr,
    rx: impl Fn() -> Result<u64, FloodError>,
) -> Result<(), FloodError> {
    let before = rx()?;
    let exe = std::env::current_exe().map_err(|e| FloodError::Generator(e.to_string()))?;
    let out = Command::new("ip")
        .args(["netns", "exec", &src.netns])
        .arg(&exe)
        .args(["lab", "flood-send", "--lab-dir"])
        .arg(dir)
        .args(["--src-mac", &src.mac, "--dst-mac", &dst.mac])
        .args(["--src-ip", &src_ip.to_string(), "--dst-ip", &dst_ip.to_string()])
        .args(["--port", &args.port.to_string(), "--size", &args.size.to_string()])
        .args(["--seconds", &args.seconds.to_string(), "--attach", &args.attach])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| FloodError::Generator(e.to_string()))?;
    if !out.status.success() {
        return Err(FloodError::Generator(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let received = rx()? - before;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| FloodError::Generator(format!("output: {e}")))?;
    let sent = report["sent"].as_u64().unwrap_or(0);
    let secs = report["seconds"].as_f64().unwrap_or(args.seconds).max(1e-9);
    let lost = sent.saturating_sub(received);
    println!(
        "{} -> {} (sink {}): {}-byte frames for {secs:.2} s: sent {sent} ({:.3} Mpps), received {received} ({:.3} Mpps), lost {lost} ({:.1}%)",
        args.from,
        args.to,
        args.sink,
        args.size,
        sent as f64 / secs / 1e6,
        received as f64 / secs / 1e6,
        if sent > 0 { 100.0 * lost as f64 / sent as f64 } else { 0.0 },
    );
    Ok(())
}

/// The generator: AF_XDP TX of one prebuilt frame, as fast as the ring
/// drains, for `seconds`. Prints `{"sent": N, "seconds": S}`.
pub fn flood_send(args: &FloodSendArgs) -> Result<(), FloodError> {
    let frame = udp_frame(args)?;
    let cfg = XskConfig {
        attach: attach_mode(&args.attach).map_err(|e| FloodError::Argument(e.to_string()))?,
        copy: CopyMode::Copy,
        ..XskConfig::default()
    };
    let gen = |e: &dyn std::fmt::Display| FloodError::Generator(e.to_string());
    let (mut umem, mut free) = Umem::new(&cfg, 4096).map_err(|e| gen(&e))?;
    let mut sock = XskSocket::bind(&mut umem, &args.ifname, 0, &cfg).map_err(|e| gen(&e))?;
    let duration = Duration::from_secs_f64(args.seconds.max(0.0));
    let done = transmit(&umem, &mut free, &mut sock, cfg.tx_ring as usize, duration, 0, |_, buf| {
        buf[..frame.len()].copy_from_slice(&frame);
        frame.len()
    })
    .map_err(|e| gen(&e))?;
    println!("{}", serde_json::json!({ "sent": done.sent, "seconds": done.seconds }));
    Ok(())
}

fn parse_mac(s: &str) -> Result<[u8; 6], FloodError> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(FloodError::Argument(format!("MAC {s}")));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| FloodError::Argument(format!("MAC {s}")))?;
    }
    Ok(mac)
}

/// Ethernet + IPv4 + UDP (no UDP checksum, RFC 768 allows it over IPv4),
/// padded to `size` bytes.
fn udp_frame(a: &FloodSendArgs) -> Result<Vec<u8>, FloodError> {
    let mut f = Vec::with_capacity(a.size);
    f.extend_from_slice(&parse_mac(&a.dst_mac)?);
    f.extend_from_slice(&parse_mac(&a.src_mac)?);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (a.size - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&a.src_ip.octets());
    ip[16..20].copy_from_slice(&a.dst_ip.octets());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&a.port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(a.size, 0);
    Ok(f)
}

/// RFC 1071 Internet checksum of an IPv4 header.
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checksum_of_rfc1071_style_example() {
        // Header from RFC 791-style example (checksum field zero): 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ip_checksum(&h), 0xb861);
    }
}
