//! ipBlock rules at sizes one namespace's author can reach: the table's
//! cost follows each side's own ipBlocks, not their product with anyone
//! else's; sides with the same ipBlock rules share their maps; and a
//! namespace whose rules would still expand past its budget has its
//! ipBlock rules enforced fail-closed and reported, never grown without
//! bound, and without touching other namespaces.
//!
//! Before per-side range maps, one policy of n peers
//! `0.0.0.0/0 except <a distinct /32>` cost n² memory (n = 4,000: 765 MB),
//! and one namespace's many `except` entries multiplied every other
//! namespace's ipBlock tables.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use policy_compiler::{Severity, Side};
use serde_json::json;

fn ns(name: &str) -> corev1::Namespace {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn pod(ns: &str, name: &str, ip: &str) -> corev1::Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

fn egress_policy(ns: &str, name: &str, rules: serde_json::Value) -> netv1::NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": rules},
    }))
    .unwrap()
}

/// `11.0.x.y/32` for i = 256 x + y.
fn host(i: u32) -> String {
    format!("11.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const TCP: u8 = 6;

/// Asserts that `table` allows (or, `allowed` false, denies) the egress side
/// of `src` -> `dst` on `proto`/`port`: not isolated or skipped is neither.
#[track_caller]
fn expect_egress(
    table: &policy_compiler::DecisionTable,
    src: &str,
    dst: &str,
    proto: u8,
    port: u16,
    allowed: bool,
) {
    let v = table.verdict_both(ip(src), ip(dst), proto, port);
    let ok = if allowed { matches!(v.egress, Side::Allowed(_)) } else { matches!(v.egress, Side::Denied(_)) };
    assert!(
        ok,
        "{src} -> {dst} {proto}/{port}: egress should be {}: {v:?}",
        if allowed { "allowed" } else { "denied" }
    );
}

/// One rule, 20,000 peers `0.0.0.0/0 except <a distinct /32>`: every
/// address is in all blocks but at most one, so the rule allows everything.
/// The side's map is one range with one port set.
#[test]
fn one_rule_of_many_holed_blocks_stays_small() {
    let n = 20_000;
    let peers: Vec<_> = (0..n)
        .map(|i| json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": [format!("{}/32", host(i))]}}))
        .collect();
    let c = policy_compiler::compile(
        &[ns("a")],
        &[pod("a", "p", "10.0.0.1")],
        &[egress_policy("a", "big", json!([{"to": peers}]))],
    );
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let s = c.table.stats();
    assert_eq!((s.cidr_ranges, s.dropped_ipblock_namespaces), (1, 0), "{s:?}");
    assert!(s.port_entries <= 4, "{s:?}");
    assert!(s.memory_bytes < 1 << 20, "{s:?}");
    for dst in [host(0), host(n - 1), "8.8.8.8".into(), "11.255.255.255".into()] {
        expect_egress(&c.table, "10.0.0.1", &dst, TCP, 443, true);
    }
}

/// 300 namespaces, each with an egress policy of three ipBlock rules, and
/// one namespace whose policy has n `except` entries inside `10.0.0.0/8`:
/// the other namespaces' maps do not grow with n.
#[test]
fn one_namespaces_excepts_do_not_grow_the_others_maps() {
    let tenants = 300;
    let ranges_for = |n: u32| {
        let mut namespaces = vec![ns("att")];
        let mut pods = vec![pod("att", "p", "192.168.0.1")];
        // Every other address from 10.0.0.0 (adjacent holes would make one range).
        let excepts: Vec<String> = (0..n)
            .map(|i| 2 * i)
            .map(|a| format!("10.{}.{}.{}/32", a >> 16 & 255, a >> 8 & 255, a & 255))
            .collect();
        let mut policies = vec![egress_policy(
            "att",
            "big",
            json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}]}]),
        )];
        for t in 0..tenants {
            let name = format!("t{t}");
            namespaces.push(ns(&name));
            pods.push(pod(&name, "p", &format!("192.169.{}.{}", t >> 8, t & 255)));
            policies.push(egress_policy(
                &name,
                "egress",
                json!([
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 53, "protocol": "UDP"}]},
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]},
                    {"to": [{"ipBlock": {"cidr": format!("172.16.{}.{}/32", t >> 8, t & 255)}}], "ports": [{"port": 8080}]},
                ]),
            ));
        }
        let c = policy_compiler::compile(&namespaces, &pods, &policies);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        // A tenant: DNS inside 10/8 (holes included), 443 outside it.
        expect_egress(&c.table, "192.169.0.7", "10.0.0.3", 17, 53, true);
        expect_egress(&c.table, "192.169.0.7", "10.0.0.3", TCP, 443, false);
        expect_egress(&c.table, "192.169.0.7", "8.8.8.8", TCP, 443, true);
        // The namespace with holes: denied inside them only.
        for (dst, holed) in
            [("10.0.0.4", true), ("10.0.0.3", false), ("10.0.7.208", n > 1000), ("10.200.0.3", false)]
        {
            let v = c.table.verdict_both(ip("192.168.0.1"), ip(dst), TCP, 1);
            assert_eq!(matches!(v.egress, Side::Denied(_)), holed, "{n} holes, to {dst}: {v:?}");
        }
        c.table.stats().cidr_ranges
    };
    let (few, many) = (ranges_for(3), ranges_for(5_000));
    // The holed namespace's own map grows by its 2 x 4,997 more boundaries; nothing else does.
    assert_eq!(many - few, 2 * (5_000 - 3), "{few} ranges with 3 excepts, {many} with 5,000");
}

/// n rules, each with its own port and `0.0.0.0/0 except <a distinct
/// /32>`: inside hole i, every rule but rule i allows, so the side has n
/// port sets of n - 1 entries. Past the budget the namespace's ipBlock
/// rules are left out: their peers match nothing (fail closed), the policy is
/// reported as an error, and other namespaces are untouched.
#[test]
fn a_namespace_past_the_budget_fails_closed_and_is_reported() {
    let n = 1_500; // about 2.25 million entries, past the namespace budget of 2^20
    let rules: Vec<_> = (0..n)
        .map(|i| {
            json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [format!("{}/32", host(i))]}}],
                   "ports": [{"port": 1000 + i}]})
        })
        .collect();
    let mut big_rules = rules.clone();
    // A selector rule in the same policy still applies.
    big_rules.push(json!({"to": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}));
    let small: Vec<_> = rules[..100].to_vec();
    let c = policy_compiler::compile(
        &[ns("a"), ns("b")],
        &[pod("a", "p", "10.0.0.1"), pod("b", "q", "10.0.0.2")],
        &[egress_policy("a", "big", json!(big_rules)), egress_policy("b", "small", json!(small))],
    );
    let s = c.table.stats();
    assert_eq!(s.dropped_ipblock_namespaces, 1, "{s:?}");
    assert!(s.port_entries < 20_000, "{s:?}");
    let errors: Vec<String> =
        c.problems.iter().filter(|p| p.severity == Severity::Error).map(|p| p.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "error: NetworkPolicy a/big: spec.egress: the ipBlock rules of namespace a's policies"
        ),
        "{}",
        errors[0]
    );
    assert!(c.has_errors());
    // a/p: ipBlock rules allow nothing; its selector rule still does.
    expect_egress(&c.table, "10.0.0.1", "8.8.8.8", TCP, 1000, false);
    expect_egress(&c.table, "10.0.0.1", "10.0.0.2", TCP, 80, true);
    // b/q's 100 rules are within the budget: port 1000 + i everywhere but hole i.
    expect_egress(&c.table, "10.0.0.2", "8.8.8.8", TCP, 1050, true);
    expect_egress(&c.table, "10.0.0.2", &host(50), TCP, 1050, false);
    expect_egress(&c.table, "10.0.0.2", &host(50), TCP, 1051, true);
}

/// `k` label sets in namespace `a`, each selected by its own small policy
/// (so each gets its own side), and one policy with 5,000 spaced `except`
/// entries selecting them all. With `distinct_any`, each small policy also
/// has a rule without peers on a port of its own, so no two sides have the
/// same rules. Namespace `b` has an ipBlock rule of its own.
fn many_sides(k: usize, distinct_any: bool) -> policy_compiler::Compiled {
    let mut pods = Vec::new();
    let mut policies = Vec::new();
    let excepts: Vec<String> = (0..5_000u32)
        .map(|i| 2 * i)
        .map(|a| format!("10.{}.{}.{}/32", a >> 16 & 255, a >> 8 & 255, a & 255))
        .collect();
    policies.push(egress_policy(
        "a",
        "big",
        json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}]}]),
    ));
    for i in 0..k {
        let mut p = pod("a", &format!("p{i}"), &format!("192.168.{}.{}", i >> 8, i & 255));
        p.metadata.labels = Some([("id".to_string(), i.to_string())].into());
        pods.push(p);
        let rules = if distinct_any { json!([{"ports": [{"port": 1_000 + i}]}]) } else { json!([]) };
        policies.push(
            serde_json::from_value(json!({
                "metadata": {"namespace": "a", "name": format!("q{i}")},
                "spec": {"podSelector": {"matchLabels": {"id": i.to_string()}}, "policyTypes": ["Egress"], "egress": rules},
            }))
            .unwrap(),
        );
    }
    pods.push(pod("b", "q", "192.169.0.1"));
    policies.push(egress_policy(
        "b",
        "web",
        json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}]),
    ));
    policy_compiler::compile(&[ns("a"), ns("b")], &pods, &policies)
}

/// 200 sides with the same ipBlock rules share one map; 200 sides whose
/// rules differ each need their own, 2 million ranges in all, past the
/// namespace's budget: its ipBlock rules fail closed and are reported; the
/// other namespace keeps its own.
#[test]
fn sides_share_maps_and_many_distinct_ones_count_against_the_namespace() {
    let shared = many_sides(200, false);
    let s = shared.table.stats();
    assert!(!shared.has_errors(), "{:?}", shared.problems);
    assert!(s.sides > 200 && s.cidr_ranges < 10_010, "{s:?}");
    expect_egress(&shared.table, "192.168.0.7", "10.0.0.3", TCP, 1, true);
    expect_egress(&shared.table, "192.168.0.7", "10.0.0.4", TCP, 1, false);

    let distinct = many_sides(200, true);
    let s = distinct.table.stats();
    assert_eq!(s.dropped_ipblock_namespaces, 1, "{s:?}");
    assert!(s.cidr_ranges < 100, "{s:?}");
    let errors: Vec<String> = distinct.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(errors.len(), 1, "only the policy with ipBlock rules: {errors:?}");
    assert!(errors[0].starts_with("error: NetworkPolicy a/big: spec.egress:"), "{errors:?}");
    // a: the ipBlock rule allows nothing, the rule without peers still does.
    expect_egress(&distinct.table, "192.168.0.7", "10.0.0.3", TCP, 1, false);
    expect_egress(&distinct.table, "192.168.0.7", "10.0.0.3", TCP, 1_007, true);
    // b is untouched.
    expect_egress(&distinct.table, "192.169.0.1", "8.8.8.8", TCP, 443, true);
}

/// Patches of a namespace at half its budget (about 490,000 of 1,048,576)
/// never accumulate into a drop; a patch that takes the namespace past its
/// budget and one that brings it back report and clear the problem; after
/// each, the patched table answers like a full compile.
#[test]
fn patches_count_each_namespace_afresh() {
    use policy_compiler::{DecisionTable, IncrementalCompiler, PolicyChange};
    let holed = |n: u32, first_port: u32| -> netv1::NetworkPolicy {
        let rules: Vec<_> = (0..n)
            .map(|i| {
                json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [format!("{}/32", host(i))]}}],
                       "ports": [{"port": first_port + i}]})
            })
            .collect();
        egress_policy("a", "big", json!(rules))
    };
    let c = policy_compiler::compile(
        &[ns("a"), ns("b")],
        &[pod("a", "p", "10.0.0.1"), pod("b", "q", "10.0.0.2")],
        &[
            holed(700, 1_000),
            egress_policy("b", "web", json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])),
        ],
    );
    assert!(!c.has_errors(), "{:?}", c.problems);
    let mut inc = IncrementalCompiler::new(c.cluster);
    let change = |p: &netv1::NetworkPolicy| {
        let (pol, problems) = policy_compiler::validate::policy(p);
        assert!(problems.is_empty(), "{problems:?}");
        PolicyChange { namespace: "a".into(), name: "big".into(), policy: Some(pol) }
    };
    let agrees = |inc: &IncrementalCompiler, round: &str| {
        let full = DecisionTable::compile(inc.cluster());
        let t = inc.table();
        assert_eq!(t.stats().dropped_ipblock_namespaces, full.stats().dropped_ipblock_namespaces, "{round}");
        let text = |t: &DecisionTable| t.budget_problems().iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(text(t), text(&full), "{round}");
        let hole = host(3);
        for (dst, port) in
            [("8.8.8.8", 1_000), ("8.8.8.8", 1_699), (&*hole, 1_003), (&*hole, 1_004), ("8.8.8.8", 80)]
        {
            for src in ["10.0.0.1", "10.0.0.2"] {
                assert_eq!(
                    t.verdict_both(ip(src), ip(dst), TCP, port).allowed(),
                    full.verdict_both(ip(src), ip(dst), TCP, port).allowed(),
                    "{round}: {src} -> {dst}:{port}"
                );
            }
        }
    };
    for round in 0..4 {
        inc.apply(vec![change(&holed(700, 1_000 + round % 2))]);
        assert_eq!(inc.table().stats().dropped_ipblock_namespaces, 0, "round {round}");
        agrees(&inc, &format!("round {round}"));
    }
    // Past the budget (1,100 rules: about 1.2 million entries), then back.
    inc.apply(vec![change(&holed(1_100, 1_000))]);
    assert_eq!(inc.table().budget_problems().len(), 1);
    agrees(&inc, "past the budget");
    expect_egress(inc.table(), "10.0.0.1", "8.8.8.8", TCP, 1_000, false);
    inc.apply(vec![change(&holed(700, 1_000))]);
    assert!(inc.table().budget_problems().is_empty());
    agrees(&inc, "back under");
    expect_egress(inc.table(), "10.0.0.1", "8.8.8.8", TCP, 1_000, true);
}

/// One policy with an ingress ipBlock rule and an egress one of the same
/// port: its two sides have equal-looking rules (the same rule index, the
/// same block number in each direction's numbering) but different blocks,
/// and must not share a map.
#[test]
fn an_ingress_and_an_egress_side_never_share_a_map() {
    let policy: netv1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "a", "name": "both"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443}]}],
                 "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}], "ports": [{"port": 443}]}]},
    }))
    .unwrap();
    let c = policy_compiler::compile(&[ns("a")], &[pod("a", "p", "172.16.0.1")], &[policy]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let p = ip("172.16.0.1");
    for (peer, ingress, egress) in [("10.1.1.1", true, false), ("192.168.1.1", false, true)] {
        let v = c.table.verdict_both(ip(peer), p, TCP, 443);
        assert_eq!(v.ingress.allows(), ingress, "from {peer}: {v:?}");
        let v = c.table.verdict_both(p, ip(peer), TCP, 443);
        assert_eq!(v.egress.allows(), egress, "to {peer}: {v:?}");
    }
}

/// Nested blocks whose ranges all carry sets (no gap in between): one rule
/// allows `0.0.0.0/0` on port 80, another 20,000 single addresses on port
/// 22, so a map has 40,001 ranges and only two port sets. 30 pods whose
/// sides differ (a rule without peers of their own) need 1.2 million ranges:
/// the budget counts them, and the namespace fails closed; 20 fit.
#[test]
fn the_budget_counts_ranges_between_sets_too() {
    let build = |k: usize| {
        let peers: Vec<_> =
            (0..20_000u32).map(|i| json!({"ipBlock": {"cidr": format!("{}/32", host(2 * i))}})).collect();
        let mut policies = vec![egress_policy(
            "a",
            "nested",
            json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 80}]},
                   {"to": peers, "ports": [{"port": 22}]}]),
        )];
        let mut pods = Vec::new();
        for i in 0..k {
            let mut p = pod("a", &format!("p{i}"), &format!("192.168.{}.{}", i >> 8, i & 255));
            p.metadata.labels = Some([("id".to_string(), i.to_string())].into());
            pods.push(p);
            policies.push(
                serde_json::from_value(json!({
                    "metadata": {"namespace": "a", "name": format!("q{i}")},
                    "spec": {"podSelector": {"matchLabels": {"id": i.to_string()}}, "policyTypes": ["Egress"],
                             "egress": [{"ports": [{"port": 1_000 + i}]}]},
                }))
                .unwrap(),
            );
        }
        policy_compiler::compile(&[ns("a")], &pods, &policies)
    };
    let fits = build(20);
    assert_eq!(fits.table.stats().dropped_ipblock_namespaces, 0, "{:?}", fits.table.stats());
    assert!(fits.table.stats().cidr_ranges > 20 * 40_000, "{:?}", fits.table.stats());
    expect_egress(&fits.table, "192.168.0.3", &host(10), TCP, 22, true);
    let past = build(30);
    assert_eq!(past.table.stats().dropped_ipblock_namespaces, 1, "{:?}", past.table.stats());
    assert!(past.table.stats().cidr_ranges < 100, "{:?}", past.table.stats());
    expect_egress(&past.table, "192.168.0.3", &host(10), TCP, 22, false);
}

/// A namespace past its budget because of two sides; the pod of one of them
/// leaves. A patch would still count that side (its identity stays until a
/// full compile), so the pod change compiles in full, and the namespace's
/// ipBlock rules apply again, as a full compile of the same pods says.
#[test]
fn a_pod_leaving_a_namespace_past_its_budget_compiles_in_full() {
    use policy_compiler::{Compilation, DecisionTable, IncrementalCompiler, PodChange};
    // Two pods, each selected by its own policy of 800 holed rules, one port each.
    let holed = |name: &str, id: &str, first_port: u32| -> netv1::NetworkPolicy {
        let rules: Vec<_> = (0..800u32)
            .map(|i| {
                json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [format!("{}/32", host(i))]}}],
                       "ports": [{"port": first_port + i}]})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": name},
            "spec": {"podSelector": {"matchLabels": {"id": id}}, "policyTypes": ["Egress"], "egress": rules},
        }))
        .unwrap()
    };
    let mut pods = vec![pod("a", "p0", "10.0.0.1"), pod("a", "p1", "10.0.0.2")];
    pods[0].metadata.labels = Some([("id".to_string(), "0".to_string())].into());
    pods[1].metadata.labels = Some([("id".to_string(), "1".to_string())].into());
    let c = policy_compiler::compile(&[ns("a")], &pods, &[holed("h0", "0", 1_000), holed("h1", "1", 2_000)]);
    assert_eq!(c.table.stats().dropped_ipblock_namespaces, 1, "{:?}", c.table.stats());
    let mut inc = IncrementalCompiler::new(c.cluster);
    let how = inc.apply_pods(vec![PodChange { namespace: "a".into(), name: "p1".into(), pod: None }]);
    assert!(matches!(how, Compilation::Full { .. }), "{how:?}");
    let full = DecisionTable::compile(inc.cluster());
    assert_eq!(full.stats().dropped_ipblock_namespaces, 0);
    assert!(inc.table().budget_problems().is_empty());
    expect_egress(inc.table(), "10.0.0.1", "8.8.8.8", TCP, 1_000, true);
}
