//! Processes segments of established connections through a whole `Pipeline`,
//! as the criterion group `established` does, for counting instructions per
//! packet under callgrind (deterministic, unlike timings on a shared machine):
//!
//! ```sh
//! cargo build --release -p dataplane --example established
//! valgrind --tool=callgrind --toggle-collect='*established*run*' \
//!     target/release/examples/established uplink_to_pod 1024
//! ```
//!
//! Modes: `plain` (no port leads to a pod), `pod_ports` (both do),
//! `uplink_to_pod` (the client behind an uplink: a port with no pod, not
//! facing the node; the server on a pod's port), `wire` (mode wire, two
//! ports), `wire_prefixes` (the same given the link's prefixes: every
//! port's neighbour discovery is checked). Each with `_v6` appended: the
//! same over IPv6 (`pod_ports_v6`).
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dataplane::addresses::{Addresses, PodAddrs};
use dataplane::parse::TcpFlags as F;
use dataplane::testing::{self, Host};
use dataplane::{Action, Pipeline, PipelineConfig, PublishedTable, WorkerCounters};

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "uplink_to_pod".into());
    // `<mode>_v6`: the same over IPv6.
    let (mode, v6) = match arg.strip_suffix("_v6") {
        Some(m) => (m.to_string(), true),
        None => (arg, false),
    };
    let flows: u16 = std::env::args().nth(2).map_or(1024, |a| a.parse().expect("a number"));
    let pin = |h: Host, id| Host { mac: Host::new(id).mac, ..h };
    let (cl, sv) = (pin(Host::new(1), 0xfffff0), pin(Host::new(2), 0xfffff1));
    let addresses = match mode.as_str() {
        "plain" => Addresses::default(),
        "pod_ports" => Addresses::new(
            [cl, sv].map(|h| Some(PodAddrs::new([h.v4(), h.v6()]))).into_iter().chain([None]).collect(),
            vec![Host::new(100).v4()],
        ),
        // Port 2 faces the node, so port 0 is an uplink proper.
        "uplink_to_pod" => Addresses::new(vec![None, Some(PodAddrs::new([sv.v4(), sv.v6()])), None], vec![])
            .with_node_ports(vec![false, false, true]),
        "wire" => Addresses::default(),
        "wire_prefixes" => Addresses::new(vec![None; 2], vec![])
            .with_link_prefixes(Some(vec![(std::net::Ipv6Addr::from(sv.ip6), 64)])),
        m => panic!("unknown mode {m:?}: plain, pod_ports, uplink_to_pod, wire or wire_prefixes"),
    };
    let table = PublishedTable::new(1, testing::client_server_table(), 1).with_addresses(addresses);
    let cfg = if mode.starts_with("wire") {
        PipelineConfig {
            mode: dataplane::pipeline::Mode::Wire,
            ports: 2,
            conntrack_capacity: 65_536,
            ..Default::default()
        }
    } else {
        PipelineConfig { ports: 3, conntrack_capacity: 65_536, ..Default::default() }
    };
    let mut p = Pipeline::new(
        &cfg,
        Arc::new(ArcSwap::from_pointee(table)),
        Arc::new(WorkerCounters::new(usize::from(cfg.ports))),
    );
    p.begin_batch(0);
    p.process(1, &testing::arp_request(&sv, &cl), 0);
    for i in 0..flows {
        let syn = testing::tcp(&cl, 10_000 + i, &sv, 80, F::SYN, v6, &[]);
        assert_eq!(p.process(0, &syn, 0), Action::Forward(1));
    }
    let acks: Vec<Vec<u8>> =
        (0..flows).map(|i| testing::tcp(&cl, 10_000 + i, &sv, 80, F::ACK | F::PSH, v6, b"x")).collect();
    run(&mut p, &acks);
    let snap = p.counters().snapshot();
    eprintln!("{mode}: {} frames, {} dropped", acks.len(), snap.dropped);
}

#[inline(never)]
fn run(p: &mut Pipeline, frames: &[Vec<u8>]) {
    p.begin_batch(1);
    for f in frames {
        black_box(p.process(0, black_box(f), 1));
    }
}
