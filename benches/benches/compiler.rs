//! Policy compiler benchmarks over generated, realistic clusters
//! ([`portcullis_benches::generate`]):
//!
//! * `lookup/10k_pods/{10,1000,10000}`: `DecisionTable::verdict` (the
//!   packet path's lookup, which stops at an ingress denial) over a fixed
//!   mix of 4,096 flows, one group so the ratios come from one run;
//!   `lookup/10k_pods_both_sides/...`: `DecisionTable::verdict_both`;
//! * `compile/10k_pods/{1000,10000}`: `DecisionTable::compile` (the table's
//!   drop is not timed);
//! * `patch/10k_pods/{1000,10000}`: `IncrementalCompiler::apply` of one
//!   changed policy (the policies take turns, so every namespace gets
//!   patched; compacted whenever a tenth of the side data is unused, which
//!   is not timed): what a policy change costs the control plane, against
//!   the full compile above;
//! * `pod_patch/10k_pods/{1000,10000}`: `IncrementalCompiler::apply_pods`
//!   of a rollout step (a pod deleted, a replica with its labels and a new
//!   address added): what a pod change costs the control plane;
//! * `namespace_patch/10k_pods/{1000,10000}`: a new namespace (labelled like
//!   a generated one, so other namespaces' policies see its pods) and its
//!   first pod, one batch (`IncrementalCompiler::batch`): a new identity
//!   block, whose key the sides that see it get anew; the namespace and pod
//!   are deleted again after each step, untimed;
//! * `memory`: prints `stats()` and the heap bytes the tables really hold,
//!   counted by the global allocator of this binary.
//!
//! ```sh
//! cargo bench -p portcullis-benches --bench compiler
//! ```

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use policy_compiler::model::NamespaceInfo;
use policy_compiler::{
    Cluster, Compilation, DecisionTable, IncrementalCompiler, NamespaceChange, PodChange, PolicyChange,
};
use portcullis_benches::{generate, measure_heap, sample_flows, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const PODS: usize = 10_000;
const SEED: u64 = 1;
const FLOWS: usize = 4_096;

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.sample_size(50).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(FLOWS as u64));
    for policies in [10, 1_000, 10_000] {
        let cluster = generate(PODS, policies, SEED);
        let table = DecisionTable::compile(&cluster);
        let flows = sample_flows(&cluster, FLOWS, SEED);
        let allowed =
            flows.iter().filter(|f| table.verdict(f.src, f.dst, f.protocol, f.port).allowed()).count();
        eprintln!("lookup/10k_pods/{policies}: {allowed} of {FLOWS} flows allowed");
        g.bench_with_input(BenchmarkId::new("10k_pods", policies), &flows, |b, flows| {
            b.iter(|| {
                for f in flows {
                    black_box(table.verdict(black_box(f.src), black_box(f.dst), f.protocol, f.port));
                }
            })
        });
        // Both sides always evaluated (`portcullis query`; the denied-flow log).
        g.bench_with_input(BenchmarkId::new("10k_pods_both_sides", policies), &flows, |b, flows| {
            b.iter(|| {
                for f in flows {
                    black_box(table.verdict_both(black_box(f.src), black_box(f.dst), f.protocol, f.port));
                }
            })
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    // Seconds per iteration: flat sampling, ten samples of one iteration each.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(1));
    for policies in [1_000, 10_000] {
        let cluster = generate(PODS, policies, SEED);
        g.bench_with_input(BenchmarkId::new("10k_pods", policies), &cluster, |b, cluster| {
            b.iter_with_large_drop(|| DecisionTable::compile(black_box(cluster)))
        });
    }
    g.finish();
}

/// Times `step` (which times its own `apply`) against an
/// `IncrementalCompiler` per policy count; compacts, untimed, whenever a
/// tenth of the side data is unused.
fn bench_changes(
    c: &mut Criterion,
    group: &str,
    mut step: impl FnMut(&mut IncrementalCompiler, &Cluster, usize) -> Duration,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    for policies in [1_000, 10_000] {
        let cluster = generate(PODS, policies, SEED);
        let mut inc = IncrementalCompiler::new(cluster.clone());
        let mut n = 0usize;
        g.bench_function(BenchmarkId::new("10k_pods", policies), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    if inc.stale_share() > 0.1 {
                        inc.compact();
                    }
                    n += 1;
                    timed += step(&mut inc, &cluster, n);
                }
                timed
            })
        });
    }
    g.finish();
}

fn patch(c: &mut Criterion) {
    bench_changes(c, "patch", |inc, cluster, n| {
        // Each policy again, with its first rule's ports reversed: same
        // names and ipBlocks, so a patch (asserted below).
        let mut p = cluster.policies[n * 97 % cluster.policies.len()].clone();
        if let Some(r) = p.rules[0].first_mut() {
            r.ports.reverse();
        }
        let ch = PolicyChange { namespace: p.namespace.clone(), name: p.name.clone(), policy: Some(p) };
        let t = Instant::now();
        let how = inc.apply(vec![ch]);
        let took = t.elapsed();
        assert!(matches!(how, Compilation::Patched { .. }), "{how:?}");
        took
    });
}

fn pod_patch(c: &mut Criterion) {
    bench_changes(c, "pod_patch", |inc, _, n| {
        // A rollout step: one pod replaced by a new replica (same labels, a
        // new name and address), as one change set.
        let pods = &inc.cluster().pods;
        let old = pods[n * 7919 % pods.len()].clone();
        let mut new = old.clone();
        new.name = format!("{}-r{n}", old.name);
        new.ips = vec![IpAddr::V4(Ipv4Addr::from(0x6464_0000 + n as u32))];
        let changes = vec![
            PodChange { namespace: old.namespace.clone(), name: old.name.clone(), pod: None },
            PodChange { namespace: new.namespace.clone(), name: new.name.clone(), pod: Some(new) },
        ];
        let t = Instant::now();
        let how = inc.apply_pods(changes);
        let took = t.elapsed();
        assert!(matches!(how, Compilation::PodsPatched { .. }), "{how:?}");
        took
    });
}

fn namespace_patch(c: &mut Criterion) {
    bench_changes(c, "namespace_patch", |inc, cluster, n| {
        let like = &cluster.namespaces[1 + n * 7 % (cluster.namespaces.len() - 1)];
        let name = format!("bench-ns-{n}");
        let mut labels = like.labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
        let mut pod = cluster.pods.iter().find(|p| p.namespace == like.name).expect("a pod").clone();
        pod.namespace = name.clone();
        pod.ips = vec![IpAddr::V4(Ipv4Addr::from(0x6465_0000 + n as u32))];
        let ns = NamespaceChange {
            name: name.clone(),
            namespace: Some(NamespaceInfo { name: name.clone(), labels }),
        };
        let add = PodChange { namespace: name.clone(), name: pod.name.clone(), pod: Some(pod.clone()) };
        let t = Instant::now();
        let how = inc.batch(|inc| [inc.apply_namespaces(vec![ns]), inc.apply_pods(vec![add])]);
        let took = t.elapsed();
        assert!(how.iter().all(|h| !matches!(h, Compilation::Full { .. })), "{how:?}");
        // Not timed: both leave again, so the cluster stays the same size.
        inc.batch(|inc| {
            inc.apply_pods(vec![PodChange { namespace: name.clone(), name: pod.name, pod: None }]);
            inc.apply_namespaces(vec![NamespaceChange { name, namespace: None }]);
        });
        took
    });
}

/// Not timed: prints each table's stats and its real heap size.
fn memory(_: &mut Criterion) {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    for policies in [10, 1_000, 10_000] {
        let cluster = generate(PODS, policies, SEED);
        let (table, held, peak) = measure_heap(&ALLOC, || DecisionTable::compile(&cluster));
        let s = table.stats();
        println!(
            "memory/10k_pods/{policies}: estimate {:.1} MiB, heap held {:.1} MiB ({held} B), compile peak {:.1} MiB; {s:?}",
            mib(s.memory_bytes),
            mib(held),
            mib(peak),
        );
    }
}

criterion_group!(benches, lookup, compile, patch, pod_patch, namespace_patch, memory);
criterion_main!(benches);
