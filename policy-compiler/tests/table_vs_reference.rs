//! Property test: for random clusters, policies and flows, the compiled
//! table's verdicts equal the reference evaluator's, side by side, and every
//! rule the table names as the reason is one the reference says allows.
//!
//! The universe is kept small (few labels, a /28 of IPv4, a handful of IPv6
//! addresses, ports around 80) so that random selectors, CIDRs and ports
//! collide often and every branch of the compiler is exercised.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use policy_compiler::cidr::{Cidr, IpBlock};
use policy_compiler::model::*;
use policy_compiler::reference::{self, SideDetail};
use policy_compiler::selector::{Labels, Selector};
use policy_compiler::validate::{FieldErrors, FieldPath};
use policy_compiler::{Cluster, DecisionTable, Side, Verdict};
use proptest::prelude::*;

mod common;
use common::named_side;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];

fn ip_pool() -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = (0..16).map(|i| format!("10.0.0.{i}").parse().unwrap()).collect();
    v.extend((0..6).map(|i| format!("fd00::{i}").parse::<IpAddr>().unwrap()));
    v
}

fn labels_strategy() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
    )
        .prop_map(|(app, tier)| {
            let mut l = Labels::new();
            if let Some(a) = app {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = tier {
                l.insert("tier".into(), t.into());
            }
            l
        })
}

fn selector_strategy() -> impl Strategy<Value = Selector> {
    let req = (
        prop::sample::select(vec!["app", "tier", "team"]),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
        prop::sample::subsequence(vec!["a", "b", "1", "blue"], 1..=2),
    );
    (
        prop::option::of((
            prop::sample::select(vec!["app", "team"]),
            prop::sample::select(vec!["a", "b", "blue"]),
        )),
        prop::collection::vec(req, 0..=2),
    )
        .prop_map(|(ml, exprs)| {
            let sel = metav1::LabelSelector {
                match_labels: ml.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
                match_expressions: Some(
                    exprs
                        .into_iter()
                        .map(|(k, op, vals)| metav1::LabelSelectorRequirement {
                            key: k.into(),
                            operator: op.into(),
                            values: matches!(op, "In" | "NotIn")
                                .then(|| vals.iter().map(|s| s.to_string()).collect()),
                        })
                        .collect(),
                ),
            };
            let (mut errs, mut legacy) = (FieldErrors::default(), FieldErrors::default());
            let s = Selector::parse(&sel, &FieldPath::root("t"), &mut errs, &mut legacy);
            assert!(errs.is_empty() && legacy.is_empty(), "{errs}{legacy}");
            s
        })
}

/// An ipBlock `{base}{host}/{len}` with the `except` entries of `ex` that it
/// strictly contains (the others would be invalid).
fn ip_block(base: &str, len: u8, host: u32, ex: Vec<(u8, u32)>) -> IpBlock {
    let cidr = Cidr::parse(&format!("{base}{host}/{len}")).unwrap();
    let except = ex
        .into_iter()
        .map(|(l, h)| Cidr::parse(&format!("{base}{h}/{l}")).unwrap())
        .filter(|e| cidr.strictly_contains(e))
        .collect();
    IpBlock { cidr, except }
}

fn cidr_strategy() -> impl Strategy<Value = IpBlock> {
    prop_oneof![
        (
            prop::sample::select(vec![0u8, 8, 28, 29, 30, 32]),
            0u32..16,
            prop::collection::vec((29u8..=32, 0u32..16), 0..=2)
        )
            .prop_map(|(len, host, ex)| ip_block("10.0.0.", len, host, ex)),
        (
            prop::sample::select(vec![0u8, 64, 125, 126, 128]),
            0u32..6,
            prop::collection::vec((126u8..=128, 0u32..6), 0..=2)
        )
            .prop_map(|(len, host, ex)| ip_block("fd00::", len, host, ex)),
    ]
}

fn peer_strategy() -> impl Strategy<Value = (Option<Selector>, Selector, Option<IpBlock>, u8)> {
    (prop::option::of(selector_strategy()), selector_strategy(), prop::option::of(cidr_strategy()), 0u8..3)
}

fn port_strategy() -> impl Strategy<Value = PortMatch> {
    let proto = prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    prop_oneof![
        (proto.clone(), 79u16..=82, 0u16..=2).prop_map(|(protocol, lo, w)| PortMatch::Range {
            protocol,
            lo,
            hi: lo + w
        }),
        proto.clone().prop_map(|protocol| PortMatch::Range { protocol, lo: 0, hi: 65535 }),
        (proto, prop::sample::select(vec!["http", "dns", "metrics"]))
            .prop_map(|(protocol, n)| PortMatch::Named { protocol, name: n.into() }),
    ]
}

fn rule_strategy(ns: &'static str) -> impl Strategy<Value = Rule> {
    (prop::collection::vec(peer_strategy(), 0..=2), prop::collection::vec(port_strategy(), 0..=2)).prop_map(
        move |(peers, ports)| Rule {
            peers: peers
                .into_iter()
                .map(|(nsel, psel, block, kind)| match (kind, block) {
                    (0, Some(b)) => Peer::Block(b),
                    _ => Peer::Pods {
                        namespaces: match nsel {
                            Some(s) => NamespaceMatch::Selector(s),
                            None => NamespaceMatch::Own(ns.to_string()),
                        },
                        pods: psel,
                    },
                })
                .collect(),
            ports,
        },
    )
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (0usize..3, 0u32..1000).prop_flat_map(|(nsi, id)| {
        let ns = NAMESPACES[nsi];
        (
            selector_strategy(),
            any::<[bool; 2]>(),
            prop::collection::vec(rule_strategy(ns), 0..=3),
            prop::collection::vec(rule_strategy(ns), 0..=3),
        )
            .prop_map(move |(pod_selector, isolates, ing, eg)| Policy {
                namespace: ns.to_string(),
                name: format!("p{id}"),
                pod_selector,
                rules: [if isolates[0] { ing } else { vec![] }, if isolates[1] { eg } else { vec![] }],
                isolates,
                valid: true,
            })
    })
}

fn pod_strategy() -> impl Strategy<Value = (usize, Labels, Vec<usize>, Vec<(usize, usize)>)> {
    (
        0usize..3,
        labels_strategy(),
        prop::collection::vec(0usize..22, 1..=2),
        prop::collection::vec((0usize..3, 0usize..4), 0..=3),
    )
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(prop::option::of(prop::sample::select(vec!["blue", "a"])), 3),
        prop::collection::vec(pod_strategy(), 0..=7),
        prop::collection::vec(policy_strategy(), 0..=6),
    )
        .prop_map(|(ns_teams, pods, policies)| {
            let pool = ip_pool();
            let namespaces = NAMESPACES
                .iter()
                .zip(ns_teams)
                .map(|(n, team)| NamespaceInfo {
                    name: n.to_string(),
                    labels: team.map(|t| [("team".to_string(), t.to_string())].into()).unwrap_or_default(),
                })
                .collect();
            let mut used = std::collections::HashSet::new();
            let names = ["http", "dns", "metrics"];
            let protos = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
            let pods = pods
                .into_iter()
                .enumerate()
                .filter_map(|(i, (nsi, labels, ips, ports))| {
                    // Each IP belongs to one pod at most; at most one per family.
                    let mut v4 = false;
                    let mut v6 = false;
                    let ips: Vec<IpAddr> = ips
                        .into_iter()
                        .map(|k| pool[k])
                        .filter(|ip| {
                            let fam = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                            !std::mem::replace(fam, true) && used.insert(*ip)
                        })
                        .collect();
                    if ips.is_empty() {
                        return None;
                    }
                    let mut named_ports: Vec<NamedPort> = ports
                        .into_iter()
                        .map(|(n, p)| NamedPort {
                            name: names[n].into(),
                            protocol: protos[p % 3],
                            port: 79 + p as u16,
                        })
                        .collect();
                    named_ports.sort();
                    named_ports.dedup();
                    Some(PodInfo {
                        namespace: NAMESPACES[nsi].into(),
                        name: format!("pod{i}"),
                        labels,
                        ips,
                        container_ports: named_ports.iter().map(|n| (n.protocol, n.port)).collect(),
                        named_ports,
                    })
                })
                .collect();
            Cluster::from_parts(namespaces, pods, policies)
        })
}

fn flow_strategy() -> impl Strategy<Value = (usize, usize, u8, u16)> {
    (0usize..22, 0usize..22, prop::sample::select(vec![6u8, 17, 132, 1, 58]), 78u16..=83)
}

fn check_side(table_side: Side, reference: &SideDetail, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        table_side.allows(),
        reference.allows(),
        "{} disagrees: {:?} vs {:?}",
        what,
        table_side,
        reference
    );
    match (table_side, reference) {
        (Side::NotPod, SideDetail::NotPod) => {}
        (Side::NotIsolated, SideDetail::Pod { isolating, .. }) => prop_assert!(isolating.is_empty()),
        (Side::Allowed(r), SideDetail::Pod { allowing, .. }) => prop_assert!(
            allowing.contains(&(r.policy as usize, r.rule as usize)),
            "{} names rule {:?}, reference allows by {:?}",
            what,
            r,
            allowing
        ),
        (Side::Denied(_), SideDetail::Pod { isolating, allowing, .. }) => {
            prop_assert!(!isolating.is_empty() && allowing.is_empty())
        }
        (t, r) => prop_assert!(false, "{} shape differs: {:?} vs {:?}", what, t, r),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn table_agrees_with_reference(cluster in cluster_strategy(), flows in prop::collection::vec(flow_strategy(), 1..40)) {
        let table = DecisionTable::compile(&cluster);
        let pool = ip_pool();
        for (s, d, proto, port) in flows {
            let (src, dst) = (pool[s], pool[d]);
            let v = table.verdict_both(src, dst, proto, port);
            let r = reference::evaluate(&cluster, src, dst, proto, port);
            check_side(v.egress, &r.egress, &format!("egress {src}->{dst} {proto}/{port}"))?;
            check_side(v.ingress, &r.ingress, &format!("ingress {src}->{dst} {proto}/{port}"))?;
            prop_assert_eq!(v.allowed(), r.allowed());
            // The packet path's lookup: the same, but the egress side is skipped
            // when ingress already denied.
            let fast = table.verdict(src, dst, proto, port);
            let expected = match v.ingress {
                Side::Denied(_) => Verdict { egress: Side::Skipped, ..v },
                _ => v,
            };
            prop_assert_eq!(fast, expected, "{}->{} {}/{}", src, dst, proto, port);
        }
    }

    #[test]
    fn compile_is_deterministic(cluster in cluster_strategy()) {
        let a = DecisionTable::compile(&cluster);
        let b = DecisionTable::compile(&cluster);
        prop_assert_eq!(a.stats(), b.stats());
        let pool = ip_pool();
        for s in &pool {
            for d in &pool {
                prop_assert_eq!(a.verdict_both(*s, *d, 6, 80), b.verdict_both(*s, *d, 6, 80));
            }
        }
    }
}

/// One edit of the policies: add the generated policy, replace an existing
/// policy's spec by it (same namespace), or delete an existing policy.
fn edit_strategy() -> impl Strategy<Value = (u8, Policy, usize)> {
    (0u8..3, policy_strategy(), any::<usize>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Policy changes applied to an `IncrementalCompiler` (patched when it
    /// can, compiled in full when not) give, after every change, the same
    /// verdicts and reasons as a full compile of the same snapshot.
    #[test]
    fn patched_table_equals_a_full_compile(
        cluster in cluster_strategy(),
        edits in prop::collection::vec(edit_strategy(), 1..8),
    ) {
        use policy_compiler::{IncrementalCompiler, PolicyChange};
        let mut inc = IncrementalCompiler::new(cluster);
        let pool = ip_pool();
        for (kind, mut pol, pick) in edits {
            let existing = &inc.cluster().policies;
            let change = match (kind, existing.is_empty()) {
                (1, false) => {
                    let e = &existing[pick % existing.len()];
                    if e.namespace == pol.namespace {
                        pol.name = e.name.clone();
                    }
                    PolicyChange { namespace: pol.namespace.clone(), name: pol.name.clone(), policy: Some(pol) }
                }
                (2, false) => {
                    let e = &existing[pick % existing.len()];
                    PolicyChange { namespace: e.namespace.clone(), name: e.name.clone(), policy: None }
                }
                _ => PolicyChange { namespace: pol.namespace.clone(), name: pol.name.clone(), policy: Some(pol) },
            };
            inc.apply(vec![change]);
            let full = DecisionTable::compile(inc.cluster());
            let t = inc.table();
            prop_assert_eq!(t.stats().policies, full.stats().policies);
            for s in &pool {
                for d in &pool {
                    for (proto, port) in [(6u8, 80u16), (17, 81), (132, 79), (6, 82), (1, 0)] {
                        let a = t.verdict_both(*s, *d, proto, port);
                        let b = full.verdict_both(*s, *d, proto, port);
                        prop_assert_eq!(named_side(t, a.egress), named_side(&full, b.egress), "egress {}->{} {}/{}", s, d, proto, port);
                        prop_assert_eq!(named_side(t, a.ingress), named_side(&full, b.ingress), "ingress {}->{} {}/{}", s, d, proto, port);
                    }
                }
            }
        }
    }
}

/// A pod for a pod edit: the generated parts, with at most one address per family.
fn edited_pod(
    name: String,
    (nsi, labels, ips, ports): (usize, Labels, Vec<usize>, Vec<(usize, usize)>),
) -> PodInfo {
    let pool = ip_pool();
    let (mut v4, mut v6) = (false, false);
    let ips: Vec<IpAddr> = ips
        .into_iter()
        .map(|k| pool[k])
        .filter(|ip| !std::mem::replace(if ip.is_ipv4() { &mut v4 } else { &mut v6 }, true))
        .collect();
    let names = ["http", "dns", "metrics"];
    let protos = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
    let mut named_ports: Vec<NamedPort> = ports
        .into_iter()
        .map(|(n, p)| NamedPort { name: names[n].into(), protocol: protos[p % 3], port: 79 + p as u16 })
        .collect();
    named_ports.sort();
    named_ports.dedup();
    PodInfo {
        namespace: NAMESPACES[nsi].into(),
        name,
        labels,
        ips,
        container_ports: named_ports.iter().map(|n| (n.protocol, n.port)).collect(),
        named_ports,
    }
}

type PodParts = (usize, Labels, Vec<usize>, Vec<(usize, usize)>);

/// After a patch (`how`), the incremental compiler's table has the same
/// namespaces and pods, the same pod at every address, and the same verdicts
/// and reasons as a full compile of its snapshot.
fn agrees_with_full_compile(
    inc: &policy_compiler::IncrementalCompiler,
    how: &policy_compiler::Compilation,
) -> Result<(), TestCaseError> {
    let pool = ip_pool();
    let full = DecisionTable::compile(inc.cluster());
    let t = inc.table();
    prop_assert_eq!(t.stats().namespaces, full.stats().namespaces, "{:?}", how);
    prop_assert_eq!(t.stats().pods, full.stats().pods, "{:?}", how);
    prop_assert_eq!(t.stats().pod_ips, full.stats().pod_ips, "{:?}", how);
    for s in &pool {
        prop_assert_eq!(t.pod_at(*s), full.pod_at(*s), "pod at {} after {:?}", s, how);
        for d in &pool {
            for (proto, port) in [(6u8, 80u16), (17, 81), (132, 79), (6, 82), (1, 0)] {
                let a = t.verdict_both(*s, *d, proto, port);
                let b = full.verdict_both(*s, *d, proto, port);
                for (side, x, y) in [("egress", a.egress, b.egress), ("ingress", a.ingress, b.ingress)] {
                    prop_assert_eq!(
                        named_side(t, x),
                        named_side(&full, y),
                        "{} {}->{} {}/{} after {:?}",
                        side,
                        s,
                        d,
                        proto,
                        port,
                        how
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Pod changes (deletes, updates that keep or change labels and
    /// addresses, new pods) mixed with policy changes, applied to an
    /// `IncrementalCompiler`, give after every change the same verdicts,
    /// reasons and pod names as a full compile of the same snapshot; and a
    /// new pod in a namespace with pods is patched, not compiled in full,
    /// unless an address is disputed.
    #[test]
    fn pod_patches_equal_a_full_compile(
        cluster in cluster_strategy(),
        edits in prop::collection::vec((0u8..6, policy_strategy(), pod_strategy(), any::<usize>()), 1..10),
    ) {
        use policy_compiler::{Compilation, IncrementalCompiler, PodChange, PolicyChange};
        let mut inc = IncrementalCompiler::new(cluster);
        for (step, (kind, pol, parts, pick)) in edits.into_iter().enumerate() {
            let pods = inc.cluster().pods.clone();
            let how = match (kind, pods.is_empty()) {
                (0, _) => inc.apply(vec![PolicyChange { namespace: pol.namespace.clone(), name: pol.name.clone(), policy: Some(pol) }]),
                (1 | 2, false) => {
                    // Delete, or replace with a pod of the same name and namespace.
                    let e = &pods[pick % pods.len()];
                    let pod = (kind == 2).then(|| {
                        let mut parts: PodParts = parts;
                        parts.0 = NAMESPACES.iter().position(|n| *n == e.namespace).unwrap();
                        edited_pod(e.name.clone(), parts)
                    });
                    inc.apply_pods(vec![PodChange { namespace: e.namespace.clone(), name: e.name.clone(), pod }])
                }
                (3, false) => {
                    // A new pod with the labels of an existing one: patched unless an address is disputed.
                    let e = &pods[pick % pods.len()];
                    let mut parts: PodParts = parts;
                    parts.0 = NAMESPACES.iter().position(|n| *n == e.namespace).unwrap();
                    parts.1 = e.labels.clone();
                    let p = edited_pod(format!("new{step}"), parts);
                    let disputed = p.ips.iter().any(|ip| pods.iter().any(|q| q.ips.contains(ip)));
                    let how = inc.apply_pods(vec![PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) }]);
                    prop_assert_eq!(matches!(how, Compilation::PodsPatched { .. }), !disputed, "{:?}", how);
                    how
                }
                _ => {
                    // Any labels: a new label set in a namespace with pods is patched
                    // too (its identity added, the sides that can tell it apart rebuilt).
                    let p = edited_pod(format!("new{step}"), parts);
                    let disputed = p.ips.iter().any(|ip| pods.iter().any(|q| q.ips.contains(ip)));
                    let populated = pods.iter().any(|q| q.namespace == p.namespace);
                    let how = inc.apply_pods(vec![PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) }]);
                    // (A namespace whose pods all left keeps their identities: patched too.)
                    if populated && !disputed {
                        prop_assert!(matches!(how, Compilation::PodsPatched { .. }), "{:?}", how);
                    }
                    how
                }
            };
            agrees_with_full_compile(&inc, &how)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Namespace changes (a new namespace, new labels, a delete, of an empty
    /// namespace or of one that still holds pods) mixed with pod and policy
    /// changes, applied to an `IncrementalCompiler`, give after every change
    /// the same verdicts, reasons and pod names as a full compile of the
    /// same snapshot; a new namespace, and a new pod in it (the namespace's
    /// first identity block), are patched, not compiled in full.
    #[test]
    fn namespace_patches_equal_a_full_compile(
        cluster in cluster_strategy(),
        edits in prop::collection::vec(
            (0u8..8, 0usize..4, prop::option::of(prop::sample::select(vec!["blue", "a"])), policy_strategy(), pod_strategy(), any::<usize>()),
            1..12,
        ),
    ) {
        use policy_compiler::{Compilation, IncrementalCompiler, NamespaceChange, PodChange, PolicyChange};
        const ALL: [&str; 4] = ["w", "x", "y", "z"];
        let mut inc = IncrementalCompiler::new(cluster);
        let pool = ip_pool();
        // Namespaces that have a Namespace object.
        let mut objects: std::collections::BTreeSet<String> = NAMESPACES.iter().map(|n| n.to_string()).collect();
        for (step, (kind, nsi, team, pol, parts, pick)) in edits.into_iter().enumerate() {
            let ns = ALL[nsi];
            let known = inc.cluster().namespace(ns).is_some();
            let pods = inc.cluster().pods.clone();
            let how = match kind {
                0 => {
                    let labels: Labels = team.map(|t| [("team".to_string(), t.to_string())].into()).unwrap_or_default();
                    let how = inc.apply_namespaces(vec![NamespaceChange {
                        name: ns.into(),
                        namespace: Some(NamespaceInfo { name: ns.into(), labels }),
                    }]);
                    objects.insert(ns.into());
                    if !known {
                        prop_assert!(matches!(how, Compilation::NamespacesPatched { .. }), "{:?}", how);
                    }
                    how
                }
                1 => {
                    objects.remove(ns);
                    inc.apply_namespaces(vec![NamespaceChange { name: ns.into(), namespace: None }])
                }
                2 => {
                    let mut p = edited_pod(format!("new{step}"), parts);
                    p.namespace = ns.into();
                    let disputed = p.ips.iter().any(|ip| pods.iter().any(|q| q.ips.contains(ip)));
                    let how = inc.apply_pods(vec![PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) }]);
                    if !disputed {
                        prop_assert!(matches!(how, Compilation::PodsPatched { .. }), "{:?}", how);
                    }
                    how
                }
                3 if !pods.is_empty() => {
                    let e = &pods[pick % pods.len()];
                    inc.apply_pods(vec![PodChange { namespace: e.namespace.clone(), name: e.name.clone(), pod: None }])
                }
                4 => inc.apply(vec![PolicyChange { namespace: pol.namespace.clone(), name: pol.name.clone(), policy: Some(pol) }]),
                6 => {
                    // Two new pods in one batch, the second often in a
                    // namespace that sorts first ("w") and may be new.
                    let mut p = edited_pod(format!("new{step}"), parts);
                    p.namespace = ns.into();
                    let mut q = p.clone();
                    q.name = format!("other{step}");
                    q.namespace = ALL[(nsi + 3) % 4].into();
                    q.ips = vec![pool[pick % pool.len()]];
                    if pick % 2 == 0 {
                        q.labels.insert("tier".into(), "2".into());
                    }
                    inc.apply_pods(
                        [p, q].into_iter().map(|p| PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) }).collect(),
                    )
                }
                7 => {
                    // One batch (one copy of the table): the namespace gets
                    // labels, a pod arrives in it, a policy changes, and an
                    // existing pod and the namespace after it in `ALL` leave.
                    let labels: Labels = team.map(|t| [("team".to_string(), t.to_string())].into()).unwrap_or_default();
                    let mut p = edited_pod(format!("new{step}"), parts);
                    p.namespace = ns.into();
                    let gone = (!pods.is_empty()).then(|| pods[pick % pods.len()].clone());
                    let next = ALL[(nsi + 1) % 4];
                    objects.insert(ns.into());
                    objects.remove(next);
                    let kinds = inc.batch(|inc| {
                        let mut kinds = vec![inc.apply_namespaces(vec![NamespaceChange {
                            name: ns.into(),
                            namespace: Some(NamespaceInfo { name: ns.into(), labels }),
                        }])];
                        let mut changes = vec![PodChange { namespace: p.namespace.clone(), name: p.name.clone(), pod: Some(p) }];
                        changes.extend(gone.map(|g| PodChange { namespace: g.namespace, name: g.name, pod: None }));
                        kinds.push(inc.apply_pods(changes));
                        kinds.push(inc.apply(vec![PolicyChange { namespace: pol.namespace.clone(), name: pol.name.clone(), policy: Some(pol) }]));
                        kinds.push(inc.apply_namespaces(vec![NamespaceChange { name: next.into(), namespace: None }]));
                        kinds
                    });
                    kinds.into_iter().last().unwrap()
                }
                _ => {
                    let existing = &inc.cluster().policies;
                    if existing.is_empty() {
                        continue;
                    }
                    let e = &existing[pick % existing.len()];
                    let ch = PolicyChange { namespace: e.namespace.clone(), name: e.name.clone(), policy: None };
                    inc.apply(vec![ch])
                }
            };
            // The namespaces a snapshot of the same objects has: those with an
            // object, and those pods or policies live in (assumed).
            let c = inc.cluster();
            let mut expected = objects.clone();
            expected.extend(c.pods.iter().map(|p| p.namespace.clone()));
            expected.extend(c.policies.iter().map(|p| p.namespace.clone()));
            let held: std::collections::BTreeSet<String> = c.namespaces.iter().map(|n| n.name.clone()).collect();
            prop_assert_eq!(held, expected, "after {:?}", how);
            let assumed: Vec<&String> = c.namespaces.iter().map(|n| &n.name).filter(|n| !objects.contains(*n)).collect();
            prop_assert_eq!(c.assumed.iter().collect::<Vec<_>>(), assumed);
            agrees_with_full_compile(&inc, &how)?;
        }
    }
}
