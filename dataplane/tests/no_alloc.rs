//! The packet path allocates and frees nothing: a counting global allocator
//! watches `begin_batch` and `process` over every kind of frame and event
//! (hits, misses, pickups, evictions, a full table, fragments, table swaps
//! and revocation, parse errors; uplinks, the node's port, the MAC table
//! filling up, VLAN tags, neighbour discovery, ICMP errors, the deny log,
//! and every timeout running out).

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
        // A free on the packet path is as bad as an allocation (and freeing a
        // whole table there would stall the worker): counted too.
        note();
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
    // The control plane keeps the tables it replaced while a worker may hold
    // them (`control/src/enforce.rs`), so the worker does not free one: as here.
    let _retired = tables.swap(next);
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

/// Three pods, an uplink and the node's port; the MAC table fills up, the
/// deny log is on, and the clock runs past every timeout.
#[test]
fn a_switch_with_uplinks_and_the_node_allocates_nothing() {
    use dataplane::observe::DenyLog;
    use dataplane::parse::{parse, Class, L4};
    const SEC: u64 = 1_000_000_000;
    let cfg = PipelineConfig {
        ports: 5,
        conntrack_capacity: 64,
        fragment_capacity: 4,
        mac_capacity: 8,
        ..Default::default()
    };
    let (c, s, o, node) = (Host::new(1), Host::new(2), Host::new(3), Host::new(100));
    let pods = [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
    let addresses =
        Addresses::new(pods.into_iter().chain([None, None]).collect(), vec![node.v4(), node.v6()])
            .with_node_ports(vec![false, false, false, false, true]);
    let tables = Arc::new(ArcSwap::from_pointee(
        PublishedTable::new(1, testing::client_server_table(), 1).with_addresses(addresses.clone()),
    ));
    // A queue nobody drains: it fills, and the rest is counted as suppressed.
    let (tx, _rx) = crossbeam_channel::bounded(4);
    let mut p = Pipeline::new(&cfg, tables.clone(), Arc::new(WorkerCounters::new(5)))
        .with_deny_log(DenyLog::new(tx, 1_000_000));

    const UPLINK: u16 = 3;
    const NODE: u16 = 4;
    let outside = Host::new(60);
    let mut forger = c;
    forger.mac = outside.mac;
    let mut frames: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut forged = Vec::new();
    for (port, h) in [(0, c), (1, s), (2, o)] {
        frames.push((port, testing::arp_request(&h, &outside)));
    }
    for v6 in [false, true] {
        // Uplink: allowed into the open pod, denied into the isolated server (deny log),
        // forged with a pod's address, a pod's MAC (a conflict), tagged.
        let q = testing::udp(&outside, 5353, &o, 53, v6, b"q");
        frames.push((UPLINK, q.clone()));
        frames.push((2, testing::udp(&o, 53, &outside, 5353, v6, b"a")));
        frames.push((UPLINK, testing::tcp(&outside, 4000, &s, 80, F::SYN, v6, &[])));
        forged.push(testing::tcp(&forger, 4001, &s, 80, F::SYN, v6, &[]));
        frames.push((UPLINK, forged[forged.len() - 1].clone()));
        let mut conflict = outside;
        conflict.mac = c.mac;
        frames.push((UPLINK, testing::udp(&conflict, 1, &o, 53, v6, b"q")));
        frames.push((UPLINK, testing::tagged(&q, 7)));
        // The node: its exemption into the isolated server, and a hairpin.
        frames.push((NODE, testing::tcp(&node, 5000, &s, 8080, F::SYN, v6, &[])));
        frames.push((NODE, testing::tcp(&c, 5001, &s, 80, F::SYN, v6, &[])));
        // Pods: allowed, denied, ICMP errors (one quoting a packet to the pod, one not).
        let syn = testing::tcp(&c, 6000, &s, 80, F::SYN, v6, &[]);
        frames.push((0, syn.clone()));
        frames.push((1, testing::unreachable(&s, &c, &testing::tcp(&c, 6000, &s, 80, F::ACK, v6, &[]), v6)));
        frames.push((1, testing::unreachable(&s, &o, &testing::tcp(&o, 1, &c, 2, F::ACK, v6, &[]), v6)));
        frames.push((2, testing::tcp(&o, 6001, &s, 80, F::SYN, v6, &[])));
        frames.push((0, testing::tagged(&syn, 7)));
    }
    // Neighbour discovery: a solicitation for the pod's own address, a router advertisement.
    frames.push((0, testing::nd(&c, 135, c.ip6, s.ip6)));
    frames.push((0, testing::nd(&c, 134, c.ip6, [0; 16])));
    frames.push((UPLINK, testing::nd(&outside, 135, outside.ip6, c.ip6)));
    // More stations behind the uplink than the MAC table holds.
    for n in 0..20 {
        frames.push((UPLINK, testing::arp_request(&Host::new(200 + n), &c)));
    }
    // A fragmented datagram into the open pod.
    let mut first = testing::udp(&outside, 7000, &o, 53, false, &[0; 64]);
    testing::make_ipv4_fragment(&mut first, 9, 0, true);
    let mut later = first.clone();
    testing::make_ipv4_fragment(&mut later, 9, 9, false);
    frames.push((UPLINK, first));
    frames.push((UPLINK, later));
    // The ICMP errors are read as such (the builder is right): every one of them.
    let mut icmp_errors = 0;
    for (_, f) in frames.iter().filter(|(port, _)| *port == 1) {
        if let Ok(Class::Ip(pkt)) = parse(f).map(|f| f.class) {
            if pkt.flow.proto == 1 || pkt.flow.proto == 58 {
                assert!(matches!(pkt.l4, L4::IcmpError(Some(_))), "{:?}", pkt.l4);
                icmp_errors += 1;
            }
        }
    }
    assert_eq!(icmp_errors, 4, "two ICMP errors per address family, each read as such");

    let mut rounds = 0;
    let n = allocations_in(|| {
        // Three rounds: at the start, 5 minutes later (UDP, fragments, half-open
        // TCP and the MAC table's entries have timed out), 7 hours later (everything).
        for now in [0, 300 * SEC, 7 * 3600 * SEC] {
            p.begin_batch(now);
            for (i, (port, f)) in frames.iter().enumerate() {
                if i % 16 == 0 {
                    p.begin_batch(now + i as u64);
                }
                std::hint::black_box(p.process(*port, f, now + i as u64));
            }
            rounds += 1;
        }
    });
    assert_eq!(rounds, 3);
    assert_eq!(n, 0, "allocations or frees on the packet path");
    // The paths meant were taken.
    let snap = p.counters().snapshot();
    for reason in ["policy", "spoofed_source"] {
        assert!(snap.drops[reason] > 0, "no {reason} drop: {:?}", snap.drops);
    }
    assert!(snap.pod_mac_conflicts > 0, "no MAC conflict");
    // (Other frames drop as spoofed_source too: the uplink's forgeries are that
    // themselves, before any state, so once more here shows it.)
    for f in &forged {
        let dropped = dataplane::Action::Drop(dataplane::pipeline::DropReason::SpoofedSource);
        assert_eq!(p.process(UPLINK, f, 8 * 3600 * SEC), dropped);
    }
    assert!(snap.conntrack.expired > 0, "nothing expired");
    assert!(snap.denied_log_suppressed > 0, "the deny log never filled");
}
