//! `pcl-load`: the end-to-end load test's tools (see `benches/e2e/side-by-side.sh`).
//!
//! * `cluster`: the bench cluster of N policies as a manifest (JSON `List`) for Portcullis;
//! * `nft`: the same policies as an nftables ruleset, linear chain or per-pod sets;
//! * `gen`: the traffic generator: AF_XDP TX of 64-byte UDP or TCP frames over
//!   many flows, a share of them denied by policy, from inside a namespace;
//! * `plan`: what a given number of sent frames holds per class (for the sink's check).
//!
//! Frames and flows come from `portcullis_benches::load`; this file only does I/O.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use dataplane::traffic::transmit;
use dataplane::xsk::{AttachMode, CopyMode, Umem, XskConfig, XskSocket};
use portcullis_benches::load::{self, FlowPlan, Shape, Template, L4};

#[derive(Parser)]
#[command(name = "pcl-load", about = "Portcullis end-to-end load test tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ShapeArg {
    Linear,
    Sets,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the bench cluster (Namespaces, Pods, NetworkPolicies) as a JSON List.
    Cluster {
        /// NetworkPolicies in total (the load policy is one of them).
        #[arg(long)]
        policies: usize,
        /// Generated pods (besides the generator and the sink).
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Output file.
        #[arg(long)]
        out: String,
    },
    /// Writes the bench cluster's policies as an nftables ruleset; prints its size as JSON.
    Nft {
        /// NetworkPolicies in total.
        #[arg(long)]
        policies: usize,
        /// Generated pods.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Linear chain or per-pod chains with sets.
        #[arg(long, value_enum)]
        shape: ShapeArg,
        /// Output file.
        #[arg(long)]
        out: String,
    },
    /// Sends frames from the generator pod to the sink pod; prints what was sent as JSON.
    Gen(GenArgs),
    /// Prints how many of the first `--frames` frames of a plan are allowed and denied.
    Plan {
        /// Distinct flows.
        #[arg(long)]
        flows: u32,
        /// Percentage of frames in denied flows.
        #[arg(long)]
        deny_percent: u32,
        /// Frames sent.
        #[arg(long)]
        frames: u64,
    },
}

#[derive(clap::Args)]
struct GenArgs {
    /// Interface (inside the generator's namespace).
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// Source MAC (the generator pod's).
    #[arg(long)]
    src_mac: String,
    /// Destination MAC (the sink pod's).
    #[arg(long)]
    dst_mac: String,
    /// IP family: 4 or 6.
    #[arg(long, default_value_t = 4)]
    family: u8,
    /// udp or tcp (ACK segments of an open connection).
    #[arg(long, value_enum, default_value = "udp")]
    proto: Proto,
    /// Distinct flows (1 to 50,000,000).
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Percentage of frames in flows policy denies (0 to 99).
    #[arg(long, default_value_t = 10)]
    deny_percent: u32,
    /// Frame size (64: IPv4 and UDP over IPv6; TCP over IPv6 is 74).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to send.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Frames per second at most (0: as fast as the TX ring drains).
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// XDP attach mode of the generator's socket: native or generic.
    #[arg(long, default_value = "native")]
    attach: String,
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut m = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("bad MAC {s}"));
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s}"))?;
    }
    Ok(m)
}

fn write_file(path: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))
}

/// Frames of each class among the first `n` frames of `plan`.
fn classes(plan: &FlowPlan, n: u64) -> (u64, u64) {
    let d = u64::from(plan.deny_percent);
    let denied = n / 100 * d + (n % 100).min(d);
    (n - denied, denied)
}

fn gen(a: &GenArgs) -> Result<serde_json::Value, String> {
    let (src, dst): (IpAddr, IpAddr) = match a.family {
        4 => (load::GEN_IPS.0.into(), load::SINK_IPS.0.into()),
        6 => (load::GEN_IPS.1.into(), load::SINK_IPS.1.into()),
        f => return Err(format!("--family {f}: 4 or 6")),
    };
    if a.flows == 0 || a.flows > 50_000_000 {
        return Err("--flows: 1 to 50,000,000".into());
    }
    let l4 = match a.proto {
        Proto::Udp => L4::Udp,
        Proto::Tcp => L4::Tcp,
    };
    let t = Template::new(mac(&a.src_mac)?, mac(&a.dst_mac)?, src, dst, l4, a.size);
    let plan = FlowPlan::new(a.flows, a.deny_percent);
    let cfg = XskConfig {
        attach: match a.attach.as_str() {
            "native" => AttachMode::Native,
            "generic" => AttachMode::Generic,
            o => return Err(format!("--attach {o}: native or generic")),
        },
        copy: CopyMode::Copy,
        ..XskConfig::default()
    };
    let (mut umem, mut free) = Umem::new(&cfg, 4096).map_err(|e| e.to_string())?;
    let mut sock = XskSocket::bind(&mut umem, &a.ifname, 0, &cfg).map_err(|e| e.to_string())?;
    let duration = Duration::from_secs_f64(a.seconds.max(0.0));
    let done = transmit(&umem, &mut free, &mut sock, cfg.tx_ring as usize, duration, a.pps, |k, buf| {
        let (_, sport, dport) = plan.frame(k);
        t.write(buf, sport, dport);
        t.len()
    })
    .map_err(|e| e.to_string())?;
    let (sent, secs) = (done.sent, done.seconds);
    let (allowed, denied) = classes(&plan, sent);
    Ok(serde_json::json!({
        "sent": sent, "allowed": allowed, "denied": denied, "seconds": secs,
        "flows_allowed": plan.allowed, "flows_denied": plan.denied,
        "frame_bytes": t.len(),
    }))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Cluster { policies, pods, out } => {
            if policies == 0 {
                return Err("--policies: at least 1 (the load policy)".into());
            }
            let c = load::bench_cluster(policies, pods);
            let list = portcullis_benches::manifests::to_list(&c);
            write_file(&out, &serde_json::to_string(&list).map_err(|e| e.to_string())?)
        }
        Cmd::Nft { policies, pods, shape, out } => {
            if policies == 0 {
                return Err("--policies: at least 1 (the load policy)".into());
            }
            let c = load::bench_cluster(policies, pods);
            let shape = match shape {
                ShapeArg::Linear => Shape::Linear,
                ShapeArg::Sets => Shape::Sets,
            };
            let (text, stats) = load::nft_ruleset(&c, shape);
            write_file(&out, &text)?;
            println!(
                "{}",
                serde_json::json!({"rules": stats.rules, "sets": stats.sets, "chains": stats.chains})
            );
            Ok(())
        }
        Cmd::Gen(a) => {
            let report = gen(&a)?;
            println!("{report}");
            Ok(())
        }
        Cmd::Plan { flows, deny_percent, frames } => {
            let (allowed, denied) = classes(&FlowPlan::new(flows, deny_percent), frames);
            println!("{}", serde_json::json!({"allowed": allowed, "denied": denied}));
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "pcl-load: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_benches::load::Class;

    #[test]
    fn class_counts_match_the_plan_frame_by_frame() {
        for (flows, d) in [(1, 10), (100_000, 10), (1000, 0), (7, 33)] {
            let plan = FlowPlan::new(flows, d);
            let mut denied = 0;
            for n in 0..1234u64 {
                assert_eq!(classes(&plan, n), (n - denied, denied), "{flows} {d} {n}");
                if plan.frame(n).0 == Class::Denied {
                    denied += 1;
                }
            }
        }
    }
}
