//! Packet-path benchmarks: packets per second per core for
//! - `parse`: frame parsing only;
//! - `established`: parse + conntrack hit (conntrack alone, and the whole
//!   `Pipeline::process` with switch and counters);
//! - `verdict/N`: the decision-table lookup alone, N policies;
//! - `new_flow/N`: `Pipeline::process` of a SYN of a new connection
//!   (parse, conntrack miss, table lookup, insert), N policies;
//! - `denied_flow/N`: `Pipeline::process` of a SYN no policy allows
//!   (parse, conntrack miss, table lookup, drop), N policies.
//!
//! Frames sit in one contiguous buffer with a fixed stride, like frames in
//! a UMEM. Run: `cargo bench -p dataplane --bench packet_path`.
//!
//! Time is the benchmark thread's **CPU time**
//! (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the figures
//! are packets per second *per core* even when the machine is shared and
//! the thread is descheduled. Set `PPATH_WALL=1` to measure wall time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use dataplane::addresses::{Addresses, PodAddrs};
use dataplane::conntrack::{Conntrack, Timeouts};
use dataplane::parse::{self, Class, TcpFlags as F};
use dataplane::testing::{self, Host};
use dataplane::{Action, DropReason, Pipeline, PipelineConfig, PublishedTable, WorkerCounters};
use policy_compiler::DecisionTable;

/// CPU time consumed by the calling thread, in nanoseconds
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
fn thread_cpu_ns() -> u64 {
    use rustix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Which clock the benchmark uses (see the crate doc).
#[derive(Clone, Copy)]
enum Clock {
    ThreadCpu,
    Wall(Instant),
}

impl Clock {
    fn now(wall: bool) -> Clock {
        if wall {
            Clock::Wall(Instant::now())
        } else {
            Clock::ThreadCpu
        }
    }
}

/// A criterion measurement of thread CPU time (or wall time).
struct CpuTime {
    wall: bool,
}

/// Read a clock; `elapsed` gives the time since.
#[derive(Clone, Copy)]
struct Mark(Clock, u64);

impl CpuTime {
    fn mark(&self) -> Mark {
        match Clock::now(self.wall) {
            c @ Clock::Wall(_) => Mark(c, 0),
            Clock::ThreadCpu => Mark(Clock::ThreadCpu, thread_cpu_ns()),
        }
    }

    fn elapsed(&self, m: Mark) -> Duration {
        match m.0 {
            Clock::Wall(t) => t.elapsed(),
            Clock::ThreadCpu => Duration::from_nanos(thread_cpu_ns().saturating_sub(m.1)),
        }
    }
}

impl Measurement for CpuTime {
    type Intermediate = Mark;
    type Value = Duration;

    fn start(&self) -> Mark {
        self.mark()
    }
    fn end(&self, m: Mark) -> Duration {
        self.elapsed(m)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, like wall time: reuse its formatter.
        WallTime.formatter()
    }
}

/// Frames per criterion iteration.
const BATCH: usize = 1024;
/// Bytes between frames in the pool.
const STRIDE: usize = 128;

/// Frames in one buffer, fixed stride.
struct Pool {
    buf: Vec<u8>,
    lens: Vec<usize>,
}

impl Pool {
    fn new(frames: impl IntoIterator<Item = Vec<u8>>) -> Pool {
        let mut p = Pool { buf: Vec::new(), lens: Vec::new() };
        for f in frames {
            assert!(f.len() <= STRIDE);
            let at = p.buf.len();
            p.buf.resize(at + STRIDE, 0);
            p.buf[at..at + f.len()].copy_from_slice(&f);
            p.lens.push(f.len());
        }
        p
    }

    #[inline]
    fn get(&self, i: usize) -> &[u8] {
        &self.buf[i * STRIDE..i * STRIDE + self.lens[i]]
    }

    fn len(&self) -> usize {
        self.lens.len()
    }
}

/// Client and server as seen through a gateway: fixed MACs, addresses from `Host`.
fn endpoints(client: Host, server: Host) -> (Host, Host) {
    let (a, b) = (Host::new(0xfffff0), Host::new(0xfffff1));
    (Host { mac: a.mac, ..client }, Host { mac: b.mac, ..server })
}

fn pipeline(table: DecisionTable, capacity: usize) -> Pipeline {
    pipeline_with(PublishedTable::new(1, table, 1), capacity)
}

fn pipeline_with(published: PublishedTable, capacity: usize) -> Pipeline {
    // Port 0: the client's side; 1: the server's; 2: the node's (used by the uplink case).
    let cfg = PipelineConfig { ports: 3, conntrack_capacity: capacity, ..Default::default() };
    let tables = Arc::new(ArcSwap::from_pointee(published));
    let mut p = Pipeline::new(&cfg, tables, Arc::new(WorkerCounters::new(3)));
    p.begin_batch(0);
    // Teach the switch where the server side is.
    let (c, s) = endpoints(Host::new(1), Host::new(2));
    p.process(1, &testing::arp_request(&s, &c), 0);
    p
}

fn bench_parse(c: &mut Criterion<CpuTime>) {
    let (cl, sv) = endpoints(Host::new(1), Host::new(2));
    let pool =
        Pool::new((0..BATCH as u16).map(|i| testing::tcp(&cl, 10_000 + i, &sv, 80, F::ACK, false, &[])));
    let pool6 =
        Pool::new((0..BATCH as u16).map(|i| testing::tcp(&cl, 10_000 + i, &sv, 80, F::ACK, true, &[])));
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, pool) in [("tcp_ipv4", &pool), ("tcp_ipv6", &pool6)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..BATCH {
                    let _ = black_box(parse::parse(black_box(pool.get(i))));
                }
            })
        });
    }
    g.finish();
}

fn bench_established(c: &mut Criterion<CpuTime>) {
    let table = testing::client_server_table();
    let (cl, sv) = endpoints(Host::new(1), Host::new(2));
    let syns =
        Pool::new((0..BATCH as u16).map(|i| testing::tcp(&cl, 10_000 + i, &sv, 80, F::SYN, false, &[])));
    let acks = Pool::new(
        (0..BATCH as u16).map(|i| testing::tcp(&cl, 10_000 + i, &sv, 80, F::ACK | F::PSH, false, b"x")),
    );
    let mut g = c.benchmark_group("established");
    g.throughput(Throughput::Elements(BATCH as u64));

    // parse + Conntrack::packet (hit), nothing else.
    let mut ct = Conntrack::new(65_536, &Timeouts::default(), true);
    for i in 0..syns.len() {
        if let Ok(f) = parse::parse(syns.get(i)) {
            if let Class::Ip(p) = f.class {
                ct.packet(&p, &table, 1, 0);
            }
        }
    }
    g.bench_function("parse_conntrack_hit", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                if let Ok(f) = parse::parse(black_box(acks.get(i))) {
                    if let Class::Ip(p) = f.class {
                        black_box(ct.packet(&p, &table, 1, 1));
                    }
                }
            }
        })
    });

    // The whole Pipeline::process: parse, conntrack hit, MAC learning and lookup,
    // counters; then the same with both ports leading to pods (source check and
    // delivery by address), side by side.
    let pod_ports = Addresses::new(
        [cl, sv].map(|h| Some(PodAddrs::new([h.v4(), h.v6()]))).into_iter().chain([None]).collect(),
        vec![Host::new(100).v4()],
    );
    // The client behind an uplink (no pod, not the node's port: port 2 is), the
    // server on a pod's port: the uplink's frames are checked against the pods'
    // MACs, and their source against the pods' addresses.
    let uplink = Addresses::new(vec![None, Some(PodAddrs::new([sv.v4(), sv.v6()])), None], vec![])
        .with_node_ports(vec![false, false, true]);
    for (name, addresses) in [
        ("pipeline_process", Addresses::default()),
        ("pipeline_process_pod_ports", pod_ports),
        ("pipeline_process_uplink_to_pod", uplink),
    ] {
        let mut p = pipeline_with(PublishedTable::new(1, table.clone(), 1).with_addresses(addresses), 65_536);
        for i in 0..syns.len() {
            assert_eq!(p.process(0, syns.get(i), 0), Action::Forward(1));
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                p.begin_batch(1);
                for i in 0..BATCH {
                    black_box(p.process(0, black_box(acks.get(i)), 1));
                }
            })
        });
    }
    g.finish();
}

fn bench_new_flows(c: &mut Criterion<CpuTime>, clock: &CpuTime) {
    for n in [10usize, 10_000] {
        let t0 = Instant::now();
        let (table, pairs) = testing::scale_table(n);
        eprintln!("compiled {n} policies in {:?}: {:?}", t0.elapsed(), table.stats());
        // 65536 distinct allowed connections spread over the policies' pairs.
        const FLOWS: usize = 65_536;
        let frames: Vec<Vec<u8>> = (0..FLOWS)
            .map(|f| {
                let (cl, sv) = pairs[f % pairs.len()];
                let (cl, sv) = endpoints(cl, sv);
                let sport = 1024 + (f / pairs.len()) as u16;
                testing::tcp(&cl, sport, &sv, 80, F::SYN, false, &[])
            })
            .collect();
        let pool = Pool::new(frames);

        let mut g = c.benchmark_group("verdict");
        g.throughput(Throughput::Elements(BATCH as u64));
        let flows: Vec<_> = (0..BATCH)
            .map(|i| match parse::parse(pool.get(i * 61 % pool.len())) {
                Ok(parse::Frame { class: Class::Ip(p), .. }) => p.flow,
                _ => unreachable!("bench frames are IP"),
            })
            .collect();
        for f in &flows {
            assert!(table.verdict(f.src.ip(), f.dst.ip(), f.proto, f.dst_port).allowed());
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &flows, |b, flows| {
            b.iter(|| {
                for f in flows {
                    black_box(table.verdict(f.src.ip(), f.dst.ip(), f.proto, f.dst_port));
                }
            })
        });
        g.finish();

        let mut g = c.benchmark_group("new_flow");
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut p = pipeline(table, FLOWS);
        let mut next = 0usize;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if next + BATCH > pool.len() {
                        // Untimed: start over with an empty connection table.
                        p.clear_connections();
                        next = 0;
                    }
                    let start = clock.mark();
                    p.begin_batch(1);
                    for i in next..next + BATCH {
                        black_box(p.process(0, black_box(pool.get(i)), 1));
                    }
                    total += clock.elapsed(start);
                    next += BATCH;
                }
                total
            })
        });
        g.finish();
        let snap = p.counters().snapshot();
        assert_eq!(snap.dropped, 0, "every new flow must be allowed: {snap:?}");

        // The same SYNs to port 81, which no policy allows: each is judged and
        // dropped (a denied flow is never tracked, so a flood of them is this
        // cost per packet).
        let denied: Vec<Vec<u8>> = (0..BATCH * 16)
            .map(|f| {
                let (cl, sv) = pairs[f * 7 % pairs.len()];
                let (cl, sv) = endpoints(cl, sv);
                testing::tcp(&cl, 1024 + (f % 50_000) as u16, &sv, 81, F::SYN, false, &[])
            })
            .collect();
        let denied = Pool::new(denied);
        p.begin_batch(1);
        for i in 0..denied.len() {
            assert_eq!(p.process(0, denied.get(i), 1), Action::Drop(DropReason::Policy));
        }
        let mut g = c.benchmark_group("denied_flow");
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut next = 0usize;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                if next + BATCH > denied.len() {
                    next = 0;
                }
                p.begin_batch(1);
                for i in next..next + BATCH {
                    black_box(p.process(0, black_box(denied.get(i)), 1));
                }
                next += BATCH;
            })
        });
        g.finish();
        let snap = p.counters().snapshot();
        assert_eq!(snap.drops.get("policy"), Some(&snap.dropped), "every drop is a policy drop: {snap:?}");
    }
}

fn config(wall: bool) -> Criterion<CpuTime> {
    Criterion::default()
        .with_measurement(CpuTime { wall })
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that
// no undocumented public function is generated.
fn main() {
    let wall = std::env::var_os("PPATH_WALL").is_some();
    eprintln!("measuring {}", if wall { "wall time" } else { "thread CPU time" });
    let mut c = config(wall).configure_from_args();
    bench_parse(&mut c);
    bench_established(&mut c);
    bench_new_flows(&mut c, &CpuTime { wall });
    c.final_summary();
}
