//! The packet path allocates nothing: a counting global allocator watches
//! `begin_batch` and `process` over every kind of frame and event (hits,
//! misses, pickups, evictions, a full table, fragments, table swaps and
//! revocation, parse errors).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dataplane::addresses::{Addresses, PodAddrs};
use dataplane::parse::TcpFlags as F;
use dataplane::testing::{self, Host};
use dataplane::{Pipeline, PipelineConfig, PublishedTable, WorkerCounters};

struct Counting;

thread_local! {
    /// Allocations on this thread while armed (`None` when not armed).
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

fn note() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the same arguments, so the
// `GlobalAlloc` contract is exactly `System`'s; `note` only touches a
// const-initialised thread-local `Cell` and cannot allocate or unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same layout the caller gave us, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

#[test]
fn packet_path_does_not_allocate() {
    // The counter itself works.
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 16]))) > 0);

    let cfg = PipelineConfig {
        ports: 3,
        conntrack_capacity: 256,
        fragment_capacity: 16,
        mac_capacity: 16,
        ..Default::default()
    };
    // Every port leads to a pod, and the node has an address: the address checks run too.
    let addresses = Addresses::new(
        [1, 2, 3].map(|n| Some(PodAddrs::new([Host::new(n).v4(), Host::new(n).v6()]))).to_vec(),
        vec![Host::new(100).v4()],
    );
    let tables = Arc::new(ArcSwap::from_pointee(
        PublishedTable::new(1, testing::client_server_table(), 1).with_addresses(addresses.clone()),
    ));
    let counters = Arc::new(WorkerCounters::new(3));
    let mut p = Pipeline::new(&cfg, tables.clone(), counters);
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));

    // Every frame is built before the allocator is armed.
    let mut frames: Vec<(u16, Vec<u8>)> = Vec::new();
    frames.push((0, testing::arp_request(&c, &s)));
    frames.push((1, testing::arp_request(&s, &c)));
    for v6 in [false, true] {
        for port in 0..400u16 {
            // More flows than the table holds: misses, inserts, eviction, refusals.
            frames.push((0, testing::tcp(&c, 1000 + port, &s, 80, F::SYN, v6, &[])));
            frames.push((1, testing::tcp(&s, 80, &c, 1000 + port, F::SYN | F::ACK, v6, &[])));
            frames.push((0, testing::tcp(&c, 1000 + port, &s, 80, F::ACK, v6, b"x")));
        }
        frames.push((0, testing::udp(&c, 5353, &s, 53, v6, b"q")));
        frames.push((1, testing::udp(&s, 53, &c, 5353, v6, b"a")));
        frames.push((0, testing::echo(&c, &o, 9, true, v6)));
        frames.push((2, testing::echo(&o, &c, 9, false, v6)));
        frames.push((0, testing::tcp(&c, 1, &s, 22, F::SYN, v6, &[])));
        frames.push((1, testing::tcp(&s, 80, &c, 7, F::ACK, v6, &[])));
    }
    let mut first = testing::udp(&c, 5353, &s, 53, false, &[0; 64]);
    testing::make_ipv4_fragment(&mut first, 5, 0, true);
    let mut later = first.clone();
    testing::make_ipv4_fragment(&mut later, 5, 9, false);
    frames.push((0, later.clone()));
    frames.push((0, first));
    frames.push((0, later));
    frames.push((0, vec![0u8; 10]));
    frames.push((0, vec![0xffu8; 80]));
    frames.push((9, testing::arp_request(&c, &s)));

    let n = allocations_in(|| {
        p.begin_batch(0);
        for (i, (port, f)) in frames.iter().enumerate() {
            if i % 32 == 0 {
                p.begin_batch(i as u64);
            }
            std::hint::black_box(p.process(*port, f, i as u64));
        }
    });
    assert_eq!(n, 0, "allocations on the packet path");
    assert!(p.counters().snapshot().conntrack.full > 0 || p.conntrack().len() == 256);

    // A new, denying table: the switch and the revocations allocate nothing either.
    let next =
        Arc::new(PublishedTable::new(2, testing::client_server_table_denying(), 1).with_addresses(addresses));
    tables.store(next);
    let n = allocations_in(|| {
        for (i, (port, f)) in frames.iter().enumerate() {
            if i % 32 == 0 {
                p.begin_batch(1_000 + i as u64);
            }
            std::hint::black_box(p.process(*port, f, 1_000 + i as u64));
        }
    });
    assert_eq!(n, 0, "allocations on the packet path after a table swap");
    p.begin_batch(10_000);
    assert!(p.counters().snapshot().conntrack.revoked > 0);
}
