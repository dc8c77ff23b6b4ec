//! A driver for profilers (`perf record`, `valgrind --tool=callgrind`):
//! compiles a generated cluster, or looks flows up in it in a loop.
//!
//! ```sh
//! cargo build --release -p portcullis-benches --example profile
//! perf record -g target/release/examples/profile compile 10000 10000
//! perf record target/release/examples/profile lookup 10000 10000 5000
//! valgrind --tool=callgrind --branch-sim=yes --toggle-collect='*look_up*' \
//!     target/release/examples/profile lookup 10000 10000 20
//! target/release/examples/profile compare 10000
//! target/release/examples/profile digest 10000
//! target/release/examples/profile split 10000
//! FLOWS=49152 target/release/examples/profile isolated 10000
//! target/release/examples/profile classes 10000
//! target/release/examples/profile patch 10000 10000
//! target/release/examples/profile rollout 10000 10000
//! target/release/examples/profile namespace 10000 10000
//! target/release/examples/profile ports 2000 2000
//! ```
//!
//! `ports ENTRIES NAMED` times a denied lookup against a long port list: a
//! pod declaring NAMED named ports (TCP 20000 + i), and a rule allowing its
//! client ENTRIES ports, half of them names the pod declares, half numbers;
//! the client asks for a port none of them allows, so a scan would try
//! every entry.
//!
//! `namespace PODS POLICIES` creates 20 namespaces, one after the other,
//! each labelled like the generated ones (so namespace selectors of other
//! policies match it), then its first pod, then a second pod with other
//! labels, then deletes the pods and the namespace, and prints how each step
//! was compiled and its time. Between rounds it compacts (a full compile)
//! when the daemon would, once patches left unused data half the size of
//! the live data.
//!
//! `rollout PODS POLICIES` gives 20 pods, one after the other, a label set
//! new to their namespace (a rollout's new `pod-template-hash`) and prints
//! how each was compiled: the namespaces whose sides were rebuilt and the
//! time.
//!
//! `patch PODS POLICIES` times the steps of a one-policy change through
//! `IncrementalCompiler` (the patch, a copy of the table as a publication
//! takes) against a full compile, fastest of 20 rounds (`ROUNDS=N` runs N
//! patches, for a profiler; only the first 20 also compile in full).
//!
//! `[FLOWS=N] compare PODS [both]` builds the 10-, 1,000- and 10,000-policy tables and times
//! lookups (`verdict`, or `verdict_both` with `both`) over them in alternating
//! rounds, reporting each table's fastest round: on a shared, noisy machine
//! that ratio is steadier than separate runs. `FLOWS`: distinct sample flows
//! per table and round (default 4,096, as the criterion bench).
//!
//! `digest PODS` prints, for the same three tables, a hash of every verdict
//! (`verdict_both`: both sides, with the rule or side named) over 200,000
//! sample flows, checking that `verdict` agrees with it: two builds of the
//! compiler give the same digests when they agree on every verdict and reason.
//!
//! `[FLOWS=N] [ONLY=I] isolated PODS` times the three tables of `compare` on
//! the sample flows (N generated, default 4,096) whose destination is
//! isolated for ingress in all three: the same flows to the same pods, only
//! the number of policies differs. `ONLY=I` (0, 1 or 2) instead runs 20
//! rounds of table I's lookups, for `valgrind --toggle-collect='*look_up*'`.
//!
//! `[HOT=1] classes PODS` sorts the sample flows by what the 10,000-policy
//! table answers (source and destination a pod or not, the kind of each
//! side's answer) and times each class on the 10- and 10,000-policy tables
//! (alternating, fastest of 200 rounds), with its share of the difference.
//! `HOT=1` repeats each class's first 16 flows instead (what remains when
//! nothing misses the cache). `CLASS='<name as printed>' ONLY=<0|1>` instead
//! runs 20 rounds of that class on one table, for `valgrind
//! --toggle-collect='*look_up*'`.
//!
//! `split PODS` times the 10- and 10,000-policy tables (alternating, fastest
//! of 200 rounds) on three flow sets: the pod-to-pod sample flows, the sample
//! flows with a non-pod end, and 64 sample flows repeated (a working set that
//! stays in cache: what remains is instructions and branches, not misses).

use std::hint::black_box;
use std::time::Instant;

use policy_compiler::DecisionTable;
use portcullis_benches::{generate, sample_flows};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let mode = args.first().map_or("compile", String::as_str);
    if mode == "compare" {
        return compare(num(1, 10_000), args.get(2).map(String::as_str) == Some("both"));
    }
    let (pods, policies) = (num(1, 10_000), num(2, 10_000));
    if mode == "digest" {
        return digest(pods);
    }
    if mode == "split" {
        return split(pods);
    }
    if mode == "isolated" {
        return isolated(pods);
    }
    if mode == "classes" {
        return classes(pods);
    }
    if mode == "patch" {
        return patch(pods, policies);
    }
    if mode == "rollout" {
        return rollout(pods, policies);
    }
    if mode == "namespace" {
        return namespace(pods, policies);
    }
    if mode == "ports" {
        return long_ports(pods, policies);
    }
    let cluster = generate(pods, policies, 1);
    let t = Instant::now();
    let table = DecisionTable::compile(&cluster);
    eprintln!("compile: {:?}", t.elapsed());
    if mode == "lookup" {
        let rounds = num(3, 10_000);
        let flows = sample_flows(&cluster, 4_096, 1);
        let t = Instant::now();
        for _ in 0..rounds {
            look_up(&table, &flows);
        }
        let ns = t.elapsed().as_nanos() as f64 / (rounds * flows.len()) as f64;
        eprintln!("lookup: {ns:.1} ns/flow over {} flows x {rounds}", flows.len());
    }
}

/// The lookup loop on its own, for `valgrind --tool=callgrind
/// --toggle-collect='*look_up*'`: counts lookups only, not the compile.
#[inline(never)]
fn look_up(table: &DecisionTable, flows: &[portcullis_benches::Flow]) {
    for f in flows {
        black_box(table.verdict(black_box(f.src), black_box(f.dst), f.protocol, f.port));
    }
}

fn compare(pods: usize, both: bool) {
    let sizes = [10, 1_000, 10_000];
    // More distinct flows than 4,096 make a working set larger than the caches.
    let flows_per_round: usize =
        std::env::var("FLOWS").map_or(4_096, |v| v.parse().expect("FLOWS: a number"));
    let tables: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let c = generate(pods, n, 1);
            (DecisionTable::compile(&c), sample_flows(&c, flows_per_round, 1))
        })
        .collect();
    let mut best = [f64::MAX; 3];
    for _ in 0..200 {
        for (i, (table, flows)) in tables.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..25 {
                for f in flows {
                    let (src, dst) = (black_box(f.src), black_box(f.dst));
                    if both {
                        black_box(table.verdict_both(src, dst, f.protocol, f.port));
                    } else {
                        black_box(table.verdict(src, dst, f.protocol, f.port));
                    }
                }
            }
            best[i] = best[i].min(t.elapsed().as_nanos() as f64 / (25 * flows.len()) as f64);
        }
    }
    for (n, b) in sizes.iter().zip(best) {
        println!(
            "{pods} pods, {n} policies, {flows_per_round} flows: {b:.1} ns/lookup (fastest of 200 rounds), {:.2}x of 10",
            b / best[0]
        );
    }
}

fn digest(pods: usize) {
    use std::hash::{Hash, Hasher};
    for n in [10, 1_000, 10_000] {
        let c = generate(pods, n, 1);
        let table = DecisionTable::compile(&c);
        let flows = sample_flows(&c, 200_000, 2);
        // SipHash with fixed keys: the same verdicts give the same digest in every build.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut allowed = 0;
        for f in &flows {
            let v = table.verdict_both(f.src, f.dst, f.protocol, f.port);
            allowed += usize::from(v.allowed());
            // The packet path's lookup must agree with it.
            let fast = table.verdict(f.src, f.dst, f.protocol, f.port);
            assert!(
                fast == v
                    || matches!(fast.ingress, policy_compiler::Side::Denied(_))
                        && fast == policy_compiler::Verdict { egress: policy_compiler::Side::Skipped, ..v }
            );
            v.hash(&mut h);
        }
        println!(
            "{pods} pods, {n} policies: {allowed} of {} allowed, digest {:016x}",
            flows.len(),
            h.finish()
        );
    }
}

fn split(pods: usize) {
    let tables: Vec<_> = [10, 10_000]
        .iter()
        .map(|&n| {
            let c = generate(pods, n, 1);
            let t = DecisionTable::compile(&c);
            let all = sample_flows(&c, 4_096, 1);
            let is_pod = |ip| t.pod_at(ip).is_some();
            let pod_pod: Vec<_> = all.iter().copied().filter(|f| is_pod(f.src) && is_pod(f.dst)).collect();
            let external: Vec<_> = all.iter().copied().filter(|f| !is_pod(f.src) || !is_pod(f.dst)).collect();
            let hot: Vec<_> = (0..all.len()).map(|i| all[i % 64]).collect();
            (n, t, [pod_pod, external, hot])
        })
        .collect();
    let mut best = [[f64::MAX; 3]; 2];
    for _ in 0..200 {
        for (i, (_, table, sets)) in tables.iter().enumerate() {
            for (j, flows) in sets.iter().enumerate() {
                let t = Instant::now();
                for _ in 0..25 {
                    for f in flows {
                        black_box(table.verdict(black_box(f.src), black_box(f.dst), f.protocol, f.port));
                    }
                }
                best[i][j] = best[i][j].min(t.elapsed().as_nanos() as f64 / (25 * flows.len()) as f64);
            }
        }
    }
    for (i, (n, _, sets)) in tables.iter().enumerate() {
        println!(
            "{pods} pods, {n} policies: pod-pod {:.1} ns ({} flows), non-pod end {:.1} ns ({} flows), 64 hot flows {:.1} ns",
            best[i][0],
            sets[0].len(),
            best[i][1],
            sets[1].len(),
            best[i][2]
        );
    }
}

fn isolated(pods: usize) {
    use policy_compiler::Side;
    let samples: usize = std::env::var("FLOWS").map_or(4_096, |v| v.parse().expect("FLOWS: a number"));
    let sizes = [10, 1_000, 10_000];
    let built: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let c = generate(pods, n, 1);
            (DecisionTable::compile(&c), sample_flows(&c, samples, 1))
        })
        .collect();
    // The sample flows are the same for every size (same pods, same seed).
    assert!(built.iter().all(|(_, f)| f == &built[0].1));
    let isolated = |t: &DecisionTable, f: &portcullis_benches::Flow| {
        matches!(t.verdict_both(f.src, f.dst, f.protocol, f.port).ingress, Side::Allowed(_) | Side::Denied(_))
    };
    let flows: Vec<_> =
        built[0].1.iter().copied().filter(|f| built.iter().all(|(t, _)| isolated(t, f))).collect();
    if let Ok(only) = std::env::var("ONLY") {
        // For callgrind: one table's lookups only, a few rounds.
        let i: usize = only.parse().expect("ONLY: 0, 1 or 2");
        for _ in 0..20 {
            look_up(&built[i].0, &flows);
        }
        return;
    }
    let mut best = [f64::MAX; 3];
    for _ in 0..200 {
        for (i, (table, _)) in built.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..25 {
                look_up(table, &flows);
            }
            best[i] = best[i].min(t.elapsed().as_nanos() as f64 / (25 * flows.len()) as f64);
        }
    }
    for ((n, b), (table, _)) in sizes.iter().zip(best).zip(&built) {
        let allowed =
            flows.iter().filter(|f| table.verdict(f.src, f.dst, f.protocol, f.port).allowed()).count();
        println!(
            "{pods} pods, {n} policies, {} flows to pods isolated for ingress at every size ({allowed} allowed): \
             {b:.1} ns/lookup (fastest of 200 rounds), {:.2}x of 10",
            flows.len(),
            b / best[0]
        );
    }
}

fn rollout(pods: usize, policies: usize) {
    use policy_compiler::{Compilation, IncrementalCompiler, PodChange};
    let cluster = generate(pods, policies, 1);
    let mut inc = IncrementalCompiler::new(cluster.clone());
    for round in 0..20 {
        let mut p = cluster.pods[round * 487 % cluster.pods.len()].clone();
        p.labels.insert("pod-template-hash".into(), format!("h{round}"));
        let ch = PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) };
        let t = Instant::now();
        let how = inc.apply_pods(vec![ch]);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match how {
            Compilation::PodsPatched { namespaces, .. } => {
                println!("{ms:.2} ms: patch, sides of {} namespace(s) rebuilt", namespaces.len())
            }
            other => println!("{ms:.2} ms: {other:?}"),
        }
    }
}

fn namespace(pods: usize, policies: usize) {
    use policy_compiler::model::NamespaceInfo;
    use policy_compiler::{Compilation, IncrementalCompiler, NamespaceChange, PodChange};
    let cluster = generate(pods, policies, 1);
    let mut inc = IncrementalCompiler::new(cluster.clone());
    let show = |what: &str, ms: f64, how: Compilation| {
        match how {
        Compilation::Full { reason } => println!("  {what}: {ms:.2} ms, full compile ({reason})"),
        Compilation::NamespacesPatched { namespaces, rekeyed, .. }
        | Compilation::PodsPatched { namespaces, rekeyed, .. } => println!(
            "  {what}: {ms:.2} ms, patch, sides of {} namespace(s) rebuilt, {rekeyed} side(s) elsewhere given new keys",
            namespaces.len()
        ),
        other => println!("  {what}: {ms:.2} ms, {other:?}"),
    }
    };
    for round in 0..20 {
        // As the daemon does after a quiet second: a full compile once
        // patches left unused data half the size of the live data.
        if inc.stale_share() > 0.5 {
            let t = Instant::now();
            inc.compact();
            println!("compaction: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        // A namespace like a generated one (its labels), under a new name.
        let like = &cluster.namespaces[1 + round * 7 % (cluster.namespaces.len() - 1)];
        let name = format!("new-{round}");
        let mut labels = like.labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
        println!("round {round} (labels of {}):", like.name);
        let ns = NamespaceInfo { name: name.clone(), labels };
        let t = Instant::now();
        let how = inc.apply_namespaces(vec![NamespaceChange { name: name.clone(), namespace: Some(ns) }]);
        show("namespace created", t.elapsed().as_secs_f64() * 1e3, how);
        // Pods with the labels of pods of the namespace it resembles.
        let siblings: Vec<_> = cluster.pods.iter().filter(|p| p.namespace == like.name).collect();
        let mut names = Vec::new();
        for (k, what) in [(0, "its first pod"), (siblings.len() / 2, "a pod with other labels")] {
            let mut p = siblings[k].clone();
            p.namespace = name.clone();
            p.ips = vec![std::net::IpAddr::from([100, 100, round as u8, k as u8])];
            names.push(p.name.clone());
            let t = Instant::now();
            let how = inc.apply_pods(vec![PodChange {
                namespace: name.clone(),
                name: p.name.clone(),
                pod: Some(p),
            }]);
            show(what, t.elapsed().as_secs_f64() * 1e3, how);
        }
        let gone =
            names.into_iter().map(|n| PodChange { namespace: name.clone(), name: n, pod: None }).collect();
        let t = Instant::now();
        let how = inc.apply_pods(gone);
        show("pods deleted", t.elapsed().as_secs_f64() * 1e3, how);
        let t = Instant::now();
        let how = inc.apply_namespaces(vec![NamespaceChange { name, namespace: None }]);
        show("namespace deleted", t.elapsed().as_secs_f64() * 1e3, how);
    }
}

fn patch(pods: usize, policies: usize) {
    use policy_compiler::{IncrementalCompiler, PolicyChange};
    let cluster = generate(pods, policies, 1);
    let mut inc = IncrementalCompiler::new(cluster.clone());
    let mut best = [f64::MAX; 3];
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    for round in 0..rounds {
        // Re-apply an existing policy with one rule's ports moved: same names, same blocks.
        let mut p = cluster.policies[round * 7 % cluster.policies.len()].clone();
        if let Some(r) = p.rules[0].first_mut() {
            r.ports.reverse();
        }
        let ch = PolicyChange { namespace: p.namespace.clone(), name: p.name.clone(), policy: Some(p) };
        let t = Instant::now();
        black_box(inc.apply(vec![ch]));
        best[0] = best[0].min(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        black_box(inc.table().clone());
        best[1] = best[1].min(t.elapsed().as_secs_f64() * 1e3);
        // Under a profiler, the full compiles would drown the patches.
        if round < 20 {
            let t = Instant::now();
            black_box(DecisionTable::compile(&cluster));
            best[2] = best[2].min(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "{pods} pods, {policies} policies: patch {:.2} ms, table copy {:.2} ms, full compile {:.1} ms (fastest of 20)",
        best[0], best[1], best[2]
    );
}

fn long_ports(entries: usize, named: usize) {
    use serde_json::json;
    let declared: Vec<_> = (0..named)
        .map(|i| json!({"name": format!("n{i}"), "containerPort": 20_000 + i, "protocol": "TCP"}))
        .collect();
    let pod = |name: &str, ip: &str, ports: &[serde_json::Value]| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("a pod")
    };
    let ports: Vec<_> = (0..entries)
        .map(|i| {
            if i % 2 == 0 {
                json!({"port": format!("n{}", i / 2 % named.max(1))})
            } else {
                json!({"port": 30_000 + i})
            }
        })
        .collect();
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "a", "name": "many-ports"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": ports}]},
    }))
    .expect("a policy");
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "a"}})).expect("a namespace");
    let c = policy_compiler::compile(
        &[ns],
        &[pod("server", "10.0.0.1", &declared), pod("client", "10.0.0.2", &[])],
        &[policy],
    );
    assert!(!c.has_errors(), "{:?}", c.problems);
    let (client, server): (std::net::IpAddr, std::net::IpAddr) =
        ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
    assert!(!c.table.verdict(client, server, 6, 1).allowed());
    assert!(c.table.verdict(client, server, 6, 20_000).allowed() || named == 0);
    let mut best = f64::MAX;
    for _ in 0..20 {
        let rounds = 2_000;
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(c.table.verdict(black_box(client), black_box(server), 6, black_box(1)));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / rounds as f64);
    }
    println!("{entries} port entries ({} named), {named} named ports on the pod: denied lookup {best:.0} ns (fastest of 20 rounds)", entries / 2 + entries % 2);
}

fn classes(pods: usize) {
    use policy_compiler::Side;
    let kind = |s: &Side| match s {
        Side::NotPod => "notpod",
        Side::NotIsolated => "open",
        Side::Allowed(_) => "allow",
        Side::Denied(_) => "deny",
        Side::Skipped => "skip",
    };
    let built: Vec<_> = [10, 10_000]
        .iter()
        .map(|&n| {
            let c = generate(pods, n, 1);
            (DecisionTable::compile(&c), sample_flows(&c, 4_096, 1))
        })
        .collect();
    // The sample flows are the same for both sizes (same pods, same seed).
    assert_eq!(built[0].1, built[1].1);
    let big = &built[1].0;
    let mut classes: std::collections::BTreeMap<String, Vec<portcullis_benches::Flow>> = Default::default();
    for f in &built[1].1 {
        let v = big.verdict(f.src, f.dst, f.protocol, f.port);
        let k = format!(
            "{}->{} in:{} eg:{}",
            if big.pod_at(f.src).is_some() { "pod" } else { "ext" },
            if big.pod_at(f.dst).is_some() { "pod" } else { "ext" },
            kind(&v.ingress),
            kind(&v.egress)
        );
        classes.entry(k).or_default().push(*f);
    }
    if std::env::var("HOT").is_ok() {
        // Each class's first 16 flows, repeated: what stays when nothing misses the cache.
        for flows in classes.values_mut() {
            let n = flows.len();
            let hot: Vec<_> = (0..n).map(|i| flows[i % 16.min(n)]).collect();
            *flows = hot;
        }
    }
    if let (Ok(class), Ok(only)) = (std::env::var("CLASS"), std::env::var("ONLY")) {
        // For callgrind: one class on one table (0: 10 policies, 1: 10,000), 20 rounds.
        let i: usize = only.parse().expect("ONLY: 0 or 1");
        let flows = &classes[&class];
        for _ in 0..20 {
            look_up(&built[i].0, flows);
        }
        return;
    }
    let mut best: Vec<[f64; 2]> = vec![[f64::MAX; 2]; classes.len()];
    for _ in 0..200 {
        for (j, flows) in classes.values().enumerate() {
            for (i, (table, _)) in built.iter().enumerate() {
                let t = Instant::now();
                for _ in 0..25 {
                    look_up(table, flows);
                }
                best[j][i] = best[j][i].min(t.elapsed().as_nanos() as f64 / (25 * flows.len()) as f64);
            }
        }
    }
    let gap: f64 = classes.values().zip(&best).map(|(f, b)| f.len() as f64 * (b[1] - b[0])).sum();
    for ((k, flows), b) in classes.iter().zip(&best) {
        println!(
            "{k:32} {:5} flows: {:5.1} ns at 10, {:5.1} at 10,000 ({:+5.1}), {:5.1}% of the gap",
            flows.len(),
            b[0],
            b[1],
            b[1] - b[0],
            100.0 * flows.len() as f64 * (b[1] - b[0]) / gap
        );
    }
}
