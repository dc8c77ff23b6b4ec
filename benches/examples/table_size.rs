//! Prints the size of compiled decision tables for generated clusters: the
//! compiler's own estimate (`stats().memory_bytes`) next to the heap bytes
//! really held (counted by a wrapping global allocator), the peak heap while
//! compiling, and one compile's wall time.
//!
//! ```sh
//! cargo run --release -p portcullis-benches --example table_size [PODS POLICIES ...]
//! ```
//!
//! Without arguments: 10,000 pods with 10, 1,000 and 10,000 policies.

use std::time::Instant;

use policy_compiler::DecisionTable;
use portcullis_benches::{generate, measure_heap, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const SEED: u64 = 1;

fn main() {
    let args: Vec<usize> =
        std::env::args().skip(1).map(|a| a.replace([',', '_'], "").parse().expect("numbers")).collect();
    let cases: Vec<(usize, usize)> = if args.is_empty() {
        vec![(10_000, 10), (10_000, 1_000), (10_000, 10_000)]
    } else {
        args.chunks(2).map(|c| (c[0], *c.get(1).unwrap_or(&10_000))).collect()
    };
    println!(
        "| pods | policies | identities | identity blocks | sides | peer keys | peer groups | port entries | CIDR ranges | estimate (MiB) | heap held (MiB) | compile peak (MiB) | compile (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (pods, policies) in cases {
        let cluster = generate(pods, policies, SEED);
        let start = Instant::now();
        let (table, held, peak) = measure_heap(&ALLOC, || DecisionTable::compile(&cluster));
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let s = table.stats();
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            s.pods,
            s.policies,
            s.identities,
            s.identity_blocks,
            s.sides,
            s.peer_keys,
            s.peer_groups,
            s.port_entries,
            s.cidr_ranges,
            mib(s.memory_bytes),
            mib(held),
            mib(peak),
            ms
        );
        drop(table);
    }
}
