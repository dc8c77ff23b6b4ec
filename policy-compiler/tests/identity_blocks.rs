//! The table keys pod peers by identity block (up to 64 identities of one
//! namespace, one bit each). The property test's clusters have a handful of
//! identities per namespace, so they never fill a block; this test builds a
//! namespace of 200 identities (four blocks, the last one partial) whose
//! peers match scattered subsets, whole namespaces and single identities, and
//! checks every verdict and reason against the reference evaluator.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use policy_compiler::model::*;
use policy_compiler::reference::{self, SideDetail};
use policy_compiler::selector::{Labels, Selector};
use policy_compiler::validate::{FieldErrors, FieldPath};
use policy_compiler::{Cluster, DecisionTable, Side};

mod common;
use common::named_side;

const BIG: usize = 200;
const SMALL: usize = 10;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// `key In (values)`, through the real parser.
fn sel_in(key: &str, values: &[&str]) -> Selector {
    let sel = metav1::LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![metav1::LabelSelectorRequirement {
            key: key.into(),
            operator: "In".into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }]),
    };
    let (mut errs, mut legacy) = (FieldErrors::default(), FieldErrors::default());
    let s = Selector::parse(&sel, &FieldPath::root("t"), &mut errs, &mut legacy);
    assert!(errs.is_empty() && legacy.is_empty(), "{errs}{legacy}");
    s
}

fn tcp(lo: u16, hi: u16) -> PortMatch {
    PortMatch::Range { protocol: Protocol::Tcp, lo, hi }
}

/// Pods of the policy's own namespace `ns` (no `namespaceSelector`).
fn pods_in(ns: &str, pods: Selector) -> Peer {
    Peer::Pods { namespaces: NamespaceMatch::Own(ns.into()), pods }
}

/// Pods of another namespace, selected by its name label.
fn pods_of(ns: &str, pods: Selector) -> Peer {
    Peer::Pods { namespaces: NamespaceMatch::Selector(sel_in(NAMESPACE_NAME_LABEL, &[ns])), pods }
}

fn any_ns(pods: Selector) -> Peer {
    Peer::Pods { namespaces: NamespaceMatch::Selector(Selector::everything()), pods }
}

fn policy(ns: &str, name: &str, pod_selector: Selector, ingress: Vec<Rule>, egress: Vec<Rule>) -> Policy {
    Policy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector,
        isolates: [!ingress.is_empty(), !egress.is_empty()],
        rules: [ingress, egress],
        valid: true,
    }
}

fn cluster() -> Cluster {
    let namespaces = ["big", "small"]
        .iter()
        .map(|n| NamespaceInfo {
            name: n.to_string(),
            labels: labels(&[(NAMESPACE_NAME_LABEL, n.to_string()), ("env", format!("{n}-env"))]),
        })
        .collect();
    let mut pods = Vec::new();
    for (ns, count, base) in [("big", BIG, 0u32), ("small", SMALL, 1_000)] {
        for i in 0..count {
            let n = base + i as u32;
            pods.push(PodInfo {
                namespace: ns.into(),
                name: format!("p{i}"),
                // `n` makes every pod its own identity.
                labels: labels(&[
                    ("n", n.to_string()),
                    ("m", (i % 5).to_string()),
                    ("k", (i % 3).to_string()),
                ]),
                ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))],
                named_ports: if i % 2 == 1 {
                    vec![NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 80 }]
                } else {
                    Vec::new()
                },
                container_ports: vec![(Protocol::Tcp, 80)],
            });
        }
    }
    let policies = vec![
        policy(
            "big",
            "k0-from-m12",
            sel_in("k", &["0"]),
            vec![Rule { peers: vec![pods_in("big", sel_in("m", &["1", "2"]))], ports: vec![tcp(80, 80)] }],
            Vec::new(),
        ),
        policy(
            "big",
            "all-mixed",
            Selector::everything(),
            vec![
                Rule { peers: vec![any_ns(sel_in("k", &["1"]))], ports: vec![tcp(81, 81)] },
                Rule { peers: vec![pods_in("big", Selector::everything())], ports: vec![tcp(82, 82)] },
                Rule {
                    peers: vec![pods_in("big", sel_in("n", &["3", "63", "64", "70", "130", "199"]))],
                    ports: vec![tcp(80, 81)],
                },
                Rule {
                    peers: vec![pods_in("big", sel_in("m", &["4"]))],
                    ports: vec![PortMatch::Named { protocol: Protocol::Tcp, name: "http".into() }],
                },
            ],
            Vec::new(),
        ),
        policy(
            "big",
            "m3-egress",
            sel_in("m", &["3"]),
            Vec::new(),
            vec![
                Rule { peers: vec![pods_in("big", sel_in("k", &["2"]))], ports: vec![tcp(80, 80)] },
                Rule { peers: vec![pods_of("small", Selector::everything())], ports: Vec::new() },
                Rule { peers: vec![any_ns(sel_in("m", &["0", "3"]))], ports: vec![tcp(83, 83)] },
            ],
        ),
        policy(
            "small",
            "from-big",
            Selector::everything(),
            vec![
                Rule { peers: vec![pods_of("big", sel_in("m", &["0"]))], ports: vec![tcp(80, 80)] },
                Rule {
                    peers: vec![any_ns(Selector::everything())],
                    ports: vec![PortMatch::Named { protocol: Protocol::Tcp, name: "http".into() }],
                },
            ],
            Vec::new(),
        ),
    ];
    Cluster::from_parts(namespaces, pods, policies)
}

fn check(table: Side, reference: &SideDetail, what: &str) {
    assert_eq!(table.allows(), reference.allows(), "{what}: {table:?} vs {reference:?}");
    match (table, reference) {
        (Side::NotIsolated, SideDetail::Pod { isolating, .. }) => assert!(isolating.is_empty(), "{what}"),
        (Side::Allowed(r), SideDetail::Pod { allowing, .. }) => {
            assert!(allowing.contains(&(r.policy as usize, r.rule as usize)), "{what}: {r:?} vs {allowing:?}")
        }
        (Side::Denied(_), SideDetail::Pod { isolating, allowing, .. }) => {
            assert!(!isolating.is_empty() && allowing.is_empty(), "{what}")
        }
        (t, r) => panic!("{what}: shape differs: {t:?} vs {r:?}"),
    }
}

#[test]
fn blocks_of_many_identities_agree_with_reference() {
    let cluster = cluster();
    let table = DecisionTable::compile(&cluster);
    assert_eq!(table.stats().identities, BIG + SMALL);
    assert_eq!(table.stats().identity_blocks, 4 + 1);
    let ips: Vec<IpAddr> = cluster.pods.iter().map(|p| p.ips[0]).collect();
    // Every source in a stride of the big namespace (all four blocks) and all of
    // the small one, to a stride of destinations, on each port a rule names.
    let srcs: Vec<IpAddr> = ips.iter().copied().step_by(7).chain(ips[BIG..].iter().copied()).collect();
    let dsts: Vec<IpAddr> = ips.iter().copied().step_by(3).chain(ips[BIG..].iter().copied()).collect();
    let mut allowed = 0;
    for &src in &srcs {
        for &dst in &dsts {
            for port in 80..=83 {
                let v = table.verdict_both(src, dst, 6, port);
                let r = reference::evaluate(&cluster, src, dst, 6, port);
                let what = format!("{src} -> {dst} tcp/{port}");
                check(v.egress, &r.egress, &format!("egress {what}"));
                check(v.ingress, &r.ingress, &format!("ingress {what}"));
                allowed += usize::from(v.allowed());
            }
        }
    }
    // Neither everything nor nothing: the masks split the blocks.
    let total = srcs.len() * dsts.len() * 4;
    assert!(allowed > total / 10 && allowed < total * 9 / 10, "{allowed} of {total}");
}

/// The same cluster reached by policy changes: each policy added one at a
/// time, then one edited and one deleted. Every change is a patch (no new
/// namespace, ipBlock or port name after the first full compile) and every
/// table gives the reference's verdicts and reasons, with the patched table's
/// policy indexes translated by name.
#[test]
fn patches_over_many_identities_agree_with_reference() {
    use policy_compiler::{Compilation, IncrementalCompiler, PolicyChange};
    let target = cluster();
    let mut start = target.clone();
    // Keep one policy naming the port `http`, so that later ones bring no new name.
    start.policies.retain(|p| p.name == "from-big");
    let mut inc = IncrementalCompiler::new(start);
    let ips: Vec<IpAddr> = target.pods.iter().map(|p| p.ips[0]).collect();
    let srcs: Vec<IpAddr> = ips.iter().copied().step_by(7).chain(ips[BIG..].iter().copied()).collect();
    let dsts: Vec<IpAddr> = ips.iter().copied().step_by(3).chain(ips[BIG..].iter().copied()).collect();
    let agree = |inc: &IncrementalCompiler| {
        let (c, t) = (inc.cluster(), inc.table());
        let name = |i: u32| t.policy(i);
        for &src in &srcs {
            for &dst in &dsts {
                for port in 80..=83 {
                    let v = t.verdict_both(src, dst, 6, port);
                    let r = reference::evaluate(c, src, dst, 6, port);
                    let what = format!("{src} -> {dst} tcp/{port}");
                    assert_eq!(v.allowed(), r.allowed(), "{what}");
                    for (side, detail) in [(v.egress, &r.egress), (v.ingress, &r.ingress)] {
                        // Each side on its own: two sides wrong in opposite ways give the same overall verdict.
                        assert_eq!(side.allows(), detail.allows(), "{what}: {side:?} vs {detail:?}");
                        if let (Side::Allowed(rr), SideDetail::Pod { allowing, .. }) = (side, detail) {
                            let (ns, n) = name(rr.policy);
                            let ok = allowing.iter().any(|&(p, ru)| {
                                let p = &c.policies[p];
                                (p.namespace.as_str(), p.name.as_str(), ru) == (ns, n, rr.rule as usize)
                            });
                            assert!(ok, "{what}: {ns}/{n} rule {} is not an allowing rule", rr.rule);
                        }
                    }
                }
            }
        }
    };
    for p in target.policies.iter().filter(|p| p.name != "from-big") {
        let ch =
            PolicyChange { namespace: p.namespace.clone(), name: p.name.clone(), policy: Some(p.clone()) };
        assert_eq!(inc.apply(vec![ch]), Compilation::Patched { namespaces: vec![p.namespace.clone()] });
        agree(&inc);
    }
    assert_eq!(inc.cluster(), &target);
    assert!(inc.table().stats().replaced_sides > 0);
    assert!(inc.stale_share() > 0.0);
    // Edit: `all-mixed` loses its last two rules; delete: `m3-egress`.
    let mut edited = target.policies.iter().find(|p| p.name == "all-mixed").unwrap().clone();
    edited.rules[0].truncate(2);
    let changes = vec![
        PolicyChange { namespace: "big".into(), name: "all-mixed".into(), policy: Some(edited) },
        PolicyChange { namespace: "big".into(), name: "m3-egress".into(), policy: None },
    ];
    assert_eq!(inc.apply(changes), Compilation::Patched { namespaces: vec!["big".into()] });
    agree(&inc);
    assert_eq!(inc.table().stats().policies, 3);
    // Compaction gives a table without replaced sides, with the same verdicts.
    let before: Vec<bool> = srcs.iter().map(|s| inc.table().verdict(*s, dsts[5], 6, 81).allowed()).collect();
    inc.compact();
    assert_eq!(inc.table().stats().replaced_sides, 0);
    assert_eq!(inc.stale_share(), 0.0);
    let after: Vec<bool> = srcs.iter().map(|s| inc.table().verdict(*s, dsts[5], 6, 81).allowed()).collect();
    assert_eq!(before, after);
    agree(&inc);
    // A new ipBlock needs a full compile; a policy in a namespace the table
    // does not know brings the namespace in (only its name label) and patches.
    let mut with_block = target.policies[0].clone();
    with_block.rules[0][0].peers.push(Peer::Block(policy_compiler::cidr::IpBlock {
        cidr: policy_compiler::cidr::Cidr::parse("10.0.0.0/30").unwrap(),
        except: vec![],
    }));
    let ch =
        PolicyChange { namespace: "big".into(), name: with_block.name.clone(), policy: Some(with_block) };
    assert!(matches!(inc.apply(vec![ch]), Compilation::Full { .. }));
    agree(&inc);
    let mut elsewhere = target.policies[0].clone();
    elsewhere.namespace = "new".into();
    let ch = PolicyChange { namespace: "new".into(), name: elsewhere.name.clone(), policy: Some(elsewhere) };
    assert_eq!(inc.apply(vec![ch]), Compilation::Patched { namespaces: vec!["new".into()] });
    assert!(inc.cluster().namespace("new").is_some());
    agree(&inc);
}

/// The rule a verdict names follows the selectors' form: a pod selector
/// that happens to match every pod of its namespace is still a pod peer
/// (tested before whole-namespace peers), whatever pods exist. So a pod
/// patch, which keeps the identity of a pod that left, names the same rule
/// as a full compile, which drops it.
#[test]
fn reasons_follow_the_selectors_form_so_pod_patches_and_full_compiles_agree() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use policy_compiler::{Compilation, IncrementalCompiler, PodChange};
    let pod = |name: &str, ip: &str| -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: z, labels: {{app: {name}}}}}\nstatus: {{podIP: {ip}, phase: Running}}"
        ))
        .unwrap()
    };
    let policy = |name: &str, from: &str| -> NetworkPolicy {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: z}}\nspec: {{podSelector: {{}}, ingress: [{{from: [{{podSelector: {from}}}]}}]}}"
        ))
        .unwrap()
    };
    // In policy order, the namespace-wide rule comes first.
    let policies = [policy("a-all", "{}"), policy("b-a", "{matchLabels: {app: a}}")];
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let named = |t: &DecisionTable| match t.verdict(a, a, 6, 80).ingress {
        Side::Allowed(r) => t.policy(r.policy).1.to_string(),
        other => panic!("{other:?}"),
    };
    let (both, _) = Cluster::from_objects(&[], &[pod("a", "10.0.0.1"), pod("x", "10.0.0.2")], &policies);
    let (only_a, _) = Cluster::from_objects(&[], &[pod("a", "10.0.0.1")], &policies);
    assert_eq!(named(&DecisionTable::compile(&both)), "b-a");
    assert_eq!(
        named(&DecisionTable::compile(&only_a)),
        "b-a",
        "app=a matching every pod makes it no namespace peer"
    );
    let mut inc = IncrementalCompiler::new(both);
    let how = inc.apply_pods(vec![PodChange { namespace: "z".into(), name: "x".into(), pod: None }]);
    assert!(matches!(how, Compilation::PodsPatched { .. }), "{how:?}");
    assert_eq!(inc.cluster(), &only_a);
    assert_eq!(named(inc.table()), "b-a");
}

/// A running pod of namespace `z` (`labels` in YAML flow style).
fn pod(name: &str, labels: &str, ip: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: z, labels: {labels}}}\nstatus: {{podIP: {ip}, phase: Running}}"
    ))
    .unwrap()
}

/// The change that adds (or updates) that pod.
fn change(name: &str, labels: &str, ip: &str) -> policy_compiler::PodChange {
    let (c, _) = Cluster::from_objects(&[], &[pod(name, labels, ip)], &[]);
    policy_compiler::PodChange { namespace: "z".into(), name: name.into(), pod: c.pods.into_iter().next() }
}

/// A namespace whose identity block is full: a rollout (a label set no
/// selector tells from an existing one) still patches, taking that identity;
/// a label set some selector does tell apart needs a new identity, which
/// goes into a fresh block of the namespace, still a patch.
#[test]
fn a_full_identity_block_takes_rollouts_and_new_label_sets_get_a_new_block() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use policy_compiler::{Compilation, IncrementalCompiler};
    let pods: Vec<_> =
        (0..64).map(|i| pod(&format!("p{i}"), &format!("{{app: a{i}}}"), &format!("10.0.1.{i}"))).collect();
    // a0 may reach a1, and so may app=new, which a peer of its own names
    // (so no present label set looks like it) but no pod has yet.
    let policy: NetworkPolicy = serde_yaml::from_str(
        "metadata: {name: to-a1, namespace: z}\nspec: {podSelector: {matchLabels: {app: a1}}, ingress: [{from: [{podSelector: {matchLabels: {app: a0}}}, {podSelector: {matchLabels: {app: new}}}]}]}",
    )
    .unwrap();
    let (cluster, _) = Cluster::from_objects(&[], &pods, std::slice::from_ref(&policy));
    let mut inc = IncrementalCompiler::new(cluster);
    assert_eq!(inc.table().stats().identities, 64);
    let (a1, r0, n): (IpAddr, IpAddr, IpAddr) =
        ("10.0.1.1".parse().unwrap(), "10.0.2.1".parse().unwrap(), "10.0.2.2".parse().unwrap());
    // A new replica of a0 from a new ReplicaSet: patched, and it may reach a1.
    let how = inc.apply_pods(vec![change("r0", "{app: a0, pod-template-hash: h2}", "10.0.2.1")]);
    assert_eq!(how, Compilation::PodsPatched { pods: 1, namespaces: vec![], rekeyed: 0 });
    assert!(inc.table().verdict(r0, a1, 6, 80).allowed());
    assert_eq!(inc.table().stats().identities, 64);
    // app=new: told apart by the policy, no room for a 65th identity in the
    // block: a second block for the namespace, and a1's side rebuilt.
    assert_eq!(inc.table().stats().identity_blocks, 1);
    let how = inc.apply_pods(vec![change("n", "{app: new}", "10.0.2.2")]);
    assert_eq!(how, Compilation::PodsPatched { pods: 1, namespaces: vec!["z".into()], rekeyed: 0 });
    assert_eq!(inc.table().stats().identity_blocks, 2);
    assert_eq!(inc.table().stats().identities, 65);
    assert!(inc.table().verdict(n, a1, 6, 80).allowed());
    assert!(inc.table().verdict(r0, a1, 6, 80).allowed());
    // Another new label set there: the second block's next bit.
    let m: IpAddr = "10.0.2.3".parse().unwrap();
    let how = inc.apply_pods(vec![change("m", "{app: other}", "10.0.2.3")]);
    assert!(matches!(how, Compilation::PodsPatched { .. }), "{how:?}");
    assert_eq!(inc.table().stats().identity_blocks, 2);
    assert!(!inc.table().verdict(m, a1, 6, 80).allowed());
    assert!(inc.table().verdict(n, a1, 6, 80).allowed());
    // A full compile numbers the blocks afresh (and gives r0's label set an
    // identity of its own), with the same verdicts.
    inc.compact();
    assert_eq!(inc.table().stats().identities, 67);
    assert!(!inc.table().verdict(m, a1, 6, 80).allowed());
    assert!(inc.table().verdict(n, a1, 6, 80).allowed());
    assert!(inc.table().verdict(r0, a1, 6, 80).allowed());
}

/// A policy that selects no pod yet still has peers that tell label sets
/// apart. Found by `pod_patches_equal_a_full_compile`: a pod labelled
/// `tier: web` was patched onto the identity of `app: b` (no *resolved*
/// selector told them apart, and the policy's peers were not resolved
/// because it selected nothing); when an `app: a` pod came, the policy
/// isolated it and its peer `app: b` let the `tier: web` pod in too.
#[test]
fn peers_of_a_policy_that_selects_nothing_yet_keep_label_sets_apart() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use policy_compiler::{Compilation, IncrementalCompiler};
    let policy: NetworkPolicy = serde_yaml::from_str(
        "metadata: {name: a-from-b, namespace: z}\nspec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
    )
    .unwrap();
    let (cluster, _) = Cluster::from_objects(&[], &[pod("b", "{app: b}", "10.0.0.1")], &[policy]);
    let mut inc = IncrementalCompiler::new(cluster);
    let (b, web, a): (IpAddr, IpAddr, IpAddr) =
        ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
    // tier=web gets an identity of its own: the policy's peer tells it from app=b.
    let how = inc.apply_pods(vec![change("web", "{tier: web}", "10.0.0.2")]);
    assert_eq!(how, Compilation::PodsPatched { pods: 1, namespaces: vec!["z".into()], rekeyed: 0 });
    assert_eq!(inc.table().stats().identities, 2);
    let how = inc.apply_pods(vec![change("a", "{app: a}", "10.0.0.3")]);
    assert!(matches!(how, Compilation::PodsPatched { .. }), "{how:?}");
    let full = DecisionTable::compile(inc.cluster());
    for t in [inc.table(), &full] {
        assert!(t.verdict(b, a, 6, 80).allowed());
        assert!(matches!(t.verdict(web, a, 6, 80).ingress, Side::Denied(_)), "tier=web is not app=b");
    }
}

/// One random change of [`pod_patches_over_many_identities_equal_a_full_compile`].
#[derive(Clone, Debug)]
enum Edit {
    /// A pod `new{step}` in `big` (or `small`) with labels `n`, `m`, `k`
    /// (an `n` of 0..400 is often an identity that exists, often not),
    /// and a `pod-template-hash` when `hash` (a rollout: no selector reads it).
    Add {
        big: bool,
        n: u32,
        m: u32,
        k: u32,
        hash: Option<u8>,
        reuse_ip: bool,
    },
    /// Pod `pick` (modulo the pods) gets other `n` and `m` labels.
    Relabel {
        pick: usize,
        n: u32,
        m: u32,
    },
    Delete {
        pick: usize,
    },
    /// Policy `pick` (modulo the policies) selects `n In (values)` in its
    /// first rule's first peer instead.
    Policy {
        pick: usize,
        values: Vec<u32>,
    },
}

fn edit_strategy() -> impl proptest::strategy::Strategy<Value = Edit> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (any::<bool>(), 0u32..400, 0u32..6, 0u32..4, proptest::option::of(0u8..3), proptest::bool::weighted(0.1))
            .prop_map(|(big, n, m, k, hash, reuse_ip)| Edit::Add { big, n, m, k, hash, reuse_ip }),
        2 => (any::<usize>(), 0u32..400, 0u32..6).prop_map(|(pick, n, m)| Edit::Relabel { pick, n, m }),
        2 => any::<usize>().prop_map(|pick| Edit::Delete { pick }),
        1 => (any::<usize>(), proptest::collection::vec(0u32..400, 1..6))
            .prop_map(|(pick, values)| Edit::Policy { pick, values }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// The property test of `table_vs_reference.rs` has a handful of
    /// identities per namespace. This one starts from the cluster above
    /// with `keep` of its 200 `big` pods (so the last identity block is
    /// anywhere from nearly empty to full) and applies random pod and policy
    /// changes: after each, the patched table gives the verdicts and reasons
    /// of a full compile of the same snapshot.
    #[test]
    fn pod_patches_over_many_identities_equal_a_full_compile(
        keep in 60usize..=200,
        edits in proptest::collection::vec(edit_strategy(), 1..14),
    ) {
        use policy_compiler::{IncrementalCompiler, PodChange, PolicyChange};
        let mut start = cluster();
        start.pods.retain(|p| p.namespace != "big" || p.name[1..].parse::<usize>().unwrap() < keep);
        let mut inc = IncrementalCompiler::new(start);
        for (step, edit) in edits.into_iter().enumerate() {
            let pods = inc.cluster().pods.clone();
            let ch = |p: PodInfo| PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) };
            let how = match edit.clone() {
                Edit::Add { big, n, m, k, hash, reuse_ip } => {
                    let mut l = labels(&[("n", n.to_string()), ("m", m.to_string()), ("k", k.to_string())]);
                    if let Some(h) = hash {
                        l.insert("pod-template-hash".into(), format!("h{h}"));
                    }
                    let ip = if reuse_ip {
                        pods[n as usize % pods.len()].ips[0]
                    } else {
                        IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + step as u32))
                    };
                    let p = PodInfo {
                        namespace: if big { "big" } else { "small" }.into(),
                        name: format!("new{step}"),
                        labels: l,
                        ips: vec![ip],
                        named_ports: if n % 2 == 1 {
                            vec![NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 80 }]
                        } else {
                            Vec::new()
                        },
                        container_ports: vec![(Protocol::Tcp, 80)],
                    };
                    inc.apply_pods(vec![ch(p)])
                }
                Edit::Relabel { pick, n, m } => {
                    let mut p = pods[pick % pods.len()].clone();
                    p.labels.insert("n".into(), n.to_string());
                    p.labels.insert("m".into(), m.to_string());
                    inc.apply_pods(vec![ch(p)])
                }
                Edit::Delete { pick } => {
                    let p = &pods[pick % pods.len()];
                    inc.apply_pods(vec![PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: None }])
                }
                Edit::Policy { pick, values } => {
                    let mut p = inc.cluster().policies[pick % inc.cluster().policies.len()].clone();
                    let values: Vec<String> = values.iter().map(u32::to_string).collect();
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    let rule = p.rules.iter_mut().flatten().next().expect("every policy has a rule");
                    let Peer::Pods { pods, .. } = &mut rule.peers[0] else {
                        panic!("the generated policies' first peer selects pods: {:?}", rule.peers[0])
                    };
                    *pods = sel_in("n", &values);
                    inc.apply(vec![PolicyChange { namespace: p.namespace.clone(), name: p.name.clone(), policy: Some(p) }])
                }
            };
            let full = DecisionTable::compile(inc.cluster());
            let t = inc.table();
            let ips: Vec<IpAddr> = inc.cluster().pods.iter().map(|p| p.ips[0]).collect();
            let srcs: Vec<IpAddr> = ips.iter().copied().step_by(5).chain(ips.iter().rev().take(12).copied()).collect();
            let dsts: Vec<IpAddr> = ips.iter().copied().step_by(4).chain(ips.iter().rev().take(12).copied()).collect();
            for &s in &srcs {
                for &d in &dsts {
                    for port in 80..=83 {
                        let (a, b) = (t.verdict_both(s, d, 6, port), full.verdict_both(s, d, 6, port));
                        proptest::prop_assert_eq!(named_side(t, a.egress), named_side(&full, b.egress), "egress {} -> {} tcp/{} after {:?}: {:?}", s, d, port, edit, how);
                        proptest::prop_assert_eq!(named_side(t, a.ingress), named_side(&full, b.ingress), "ingress {} -> {} tcp/{} after {:?}: {:?}", s, d, port, edit, how);
                    }
                }
            }
        }
    }
}

/// A batch of policy changes that cannot be patched (here: a new port name)
/// compiles in full, whatever else it holds. Found by the control crate's
/// random-changes test: a batch adding one policy and deleting another that
/// sorts after it panicked while bookkeeping the policy indexes, although
/// the full compile that follows renumbers them anyway.
#[test]
fn a_blocked_batch_that_adds_and_deletes_policies_compiles_in_full() {
    use policy_compiler::{Compilation, IncrementalCompiler, PolicyChange};
    let mut inc = IncrementalCompiler::new(cluster());
    let added = policy(
        "big",
        "a-new",
        sel_in("k", &["1"]),
        vec![Rule {
            peers: vec![pods_in("big", Selector::everything())],
            ports: vec![PortMatch::Named { protocol: Protocol::Tcp, name: "grpc".into() }],
        }],
        Vec::new(),
    );
    let changes = vec![
        PolicyChange { namespace: "big".into(), name: "a-new".into(), policy: Some(added) },
        PolicyChange { namespace: "small".into(), name: "from-big".into(), policy: None },
    ];
    let how = inc.apply(changes);
    assert!(matches!(&how, Compilation::Full { reason } if reason.contains("port name")), "{how:?}");
    let names: Vec<&str> = inc.cluster().policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a-new", "all-mixed", "k0-from-m12", "m3-egress"]);
    assert_eq!(inc.table().stats().policies, 4);
    // And patches work again afterwards.
    let ch = PolicyChange { namespace: "big".into(), name: "a-new".into(), policy: None };
    assert_eq!(inc.apply(vec![ch]), Compilation::Patched { namespaces: vec!["big".into()] });
    assert_eq!(inc.table().stats().policies, 3);
}

/// A new namespace's first pod is seen by the policies of every other
/// namespace (a whole-namespace peer by team label, and a `namespaceSelector:
/// {}` peer by app label), but only its own namespace's sides are rebuilt:
/// the other namespaces' sides get the new identity block's key and keep
/// their other keys. Relabelling the namespace out of the team does the
/// same. After each step the table equals a full compile, reason for reason.
#[test]
fn a_new_namespace_and_its_first_pod_rebuild_no_other_namespace() {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use policy_compiler::{Compilation, IncrementalCompiler, NamespaceChange, PodChange};
    let namespaces: Vec<String> = (0..12).map(|i| format!("ns{i:02}")).collect();
    let mut pods = Vec::new();
    let mut policies = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        pods.push(serde_yaml::from_str::<k8s_openapi::api::core::v1::Pod>(&format!(
            "metadata: {{name: server, namespace: {ns}, labels: {{app: server}}}}\nstatus: {{podIP: 10.1.{i}.1, phase: Running}}"
        )).unwrap());
        policies.push(serde_yaml::from_str::<NetworkPolicy>(&format!(
            "metadata: {{name: in, namespace: {ns}}}\nspec: {{podSelector: {{matchLabels: {{app: server}}}}, ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: 80}}]}}, {{from: [{{namespaceSelector: {{matchLabels: {{team: x}}}}}}], ports: [{{port: 81}}]}}]}}"
        )).unwrap());
    }
    let ns_objects: Vec<Namespace> = namespaces
        .iter()
        .map(|n| serde_yaml::from_str(&format!("metadata: {{name: {n}}}")).unwrap())
        .collect();
    let (cluster, _) = Cluster::from_objects(&ns_objects, &pods, &policies);
    let mut inc = IncrementalCompiler::new(cluster);
    let same_as_full = |inc: &IncrementalCompiler, client: IpAddr| {
        let full = DecisionTable::compile(inc.cluster());
        for i in 0..namespaces.len() {
            let server = IpAddr::V4(Ipv4Addr::new(10, 1, i as u8, 1));
            for port in [80, 81, 82] {
                let (a, b) = (
                    inc.table().verdict_both(client, server, 6, port),
                    full.verdict_both(client, server, 6, port),
                );
                assert_eq!(named_side(inc.table(), a.ingress), named_side(&full, b.ingress), "port {port}");
                assert_eq!(a.allowed(), b.allowed());
            }
        }
    };
    let labelled = |team: &str| NamespaceInfo {
        name: "new".into(),
        labels: [("team".to_string(), team.to_string())].into(),
    };
    let how =
        inc.apply_namespaces(vec![NamespaceChange { name: "new".into(), namespace: Some(labelled("x")) }]);
    assert_eq!(how, Compilation::NamespacesPatched { changed: 1, namespaces: vec![], rekeyed: 0 });
    let (c, _) = Cluster::from_objects(
        &[],
        &[serde_yaml::from_str(
            "metadata: {name: c, namespace: new, labels: {app: client}}\nstatus: {podIP: 10.2.0.1, phase: Running}",
        )
        .unwrap()],
        &[],
    );
    let client: IpAddr = "10.2.0.1".parse().unwrap();
    let ch = PodChange { namespace: "new".into(), name: "c".into(), pod: c.pods.into_iter().next() };
    let how = inc.apply_pods(vec![ch]);
    // One side per namespace (all its servers' ingress) gets the new block.
    assert_eq!(how, Compilation::PodsPatched { pods: 1, namespaces: vec!["new".into()], rekeyed: 12 });
    let server: IpAddr = "10.1.3.1".parse().unwrap();
    assert!(inc.table().verdict(client, server, 6, 80).allowed());
    assert!(inc.table().verdict(client, server, 6, 81).allowed());
    assert!(!inc.table().verdict(client, server, 6, 82).allowed());
    same_as_full(&inc, client);
    // Out of team x: port 81 closes, port 80 stays open (the app label).
    let how =
        inc.apply_namespaces(vec![NamespaceChange { name: "new".into(), namespace: Some(labelled("y")) }]);
    assert_eq!(how, Compilation::NamespacesPatched { changed: 1, namespaces: vec![], rekeyed: 12 });
    assert!(inc.table().verdict(client, server, 6, 80).allowed());
    assert!(!inc.table().verdict(client, server, 6, 81).allowed());
    same_as_full(&inc, client);
}

/// A label no selector reads, changing on every update of a pod (a build
/// number), pairs each new label set with the pod's identity. Those pairings
/// are kept until a full compile, so they count as stale data: the share
/// that triggers the daemon's compaction grows with them instead of staying
/// 0 while they pile up. Verdicts stay those of a full compile.
#[test]
fn label_churn_no_selector_reads_counts_towards_compaction() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use policy_compiler::{Compilation, IncrementalCompiler};
    let policy: NetworkPolicy = serde_yaml::from_str(
        "metadata: {name: from-b, namespace: z}\nspec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
    )
    .unwrap();
    let pods = [pod("a", "{app: a, build: '0'}", "10.0.0.1"), pod("b", "{app: b}", "10.0.0.2")];
    let (cluster, _) = Cluster::from_objects(&[], &pods, std::slice::from_ref(&policy));
    let mut inc = IncrementalCompiler::new(cluster);
    let mut share = inc.stale_share();
    assert_eq!(share, 0.0);
    for i in 1..=200 {
        let how = inc.apply_pods(vec![change("a", &format!("{{app: a, build: '{i}'}}"), "10.0.0.1")]);
        assert!(matches!(how, Compilation::PodsPatched { .. }), "{how:?}");
        let now = inc.stale_share();
        assert!(now > share, "update {i}: the stale share stayed at {now}");
        share = now;
    }
    let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let full = DecisionTable::compile(inc.cluster());
    for (s, d) in [(b, a), (a, b), (a, a)] {
        assert_eq!(inc.table().verdict_both(s, d, 6, 80), full.verdict_both(s, d, 6, 80));
    }
}
