//! Processes SYNs of new allowed connections through a whole `Pipeline`,
//! for counting instructions per new flow under callgrind:
//!
//! ```sh
//! cargo build --release -p dataplane --example new_flows
//! valgrind --tool=callgrind --toggle-collect='*new_flows*run*' target/release/examples/new_flows 10 4096
//! ```
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dataplane::parse::TcpFlags as F;
use dataplane::testing::{self, Host};
use dataplane::{Pipeline, PipelineConfig, PublishedTable, WorkerCounters};

fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).map_or(d, |a| a.parse().expect("a number"));
    let (policies, flows) = (arg(1, 10), arg(2, 4096));
    let (table, pairs) = testing::scale_table(policies);
    let pin = |h: Host, id| Host { mac: Host::new(id).mac, ..h };
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|f| {
            let (cl, sv) = pairs[f % pairs.len()];
            let (cl, sv) = (pin(cl, 0xfffff0), pin(sv, 0xfffff1));
            testing::tcp(&cl, 1024 + (f / pairs.len()) as u16, &sv, 80, F::SYN, false, &[])
        })
        .collect();
    let cfg = PipelineConfig { conntrack_capacity: flows * 2, ..Default::default() };
    let tables = Arc::new(ArcSwap::from_pointee(PublishedTable::new(1, table, 1)));
    let mut p = Pipeline::new(&cfg, tables, Arc::new(WorkerCounters::new(2)));
    p.begin_batch(0);
    let (c, s) = (pin(Host::new(1), 0xfffff0), pin(Host::new(2), 0xfffff1));
    p.process(1, &testing::arp_request(&s, &c), 0);
    run(&mut p, &frames);
    let snap = p.counters().snapshot();
    eprintln!("{} frames, {} dropped", frames.len(), snap.dropped);
}

#[inline(never)]
fn run(p: &mut Pipeline, frames: &[Vec<u8>]) {
    p.begin_batch(1);
    for f in frames {
        black_box(p.process(0, black_box(f), 1));
    }
}
