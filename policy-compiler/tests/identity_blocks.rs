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
    let mut errs = FieldErrors::default();
    let s = Selector::parse(&sel, &FieldPath::root("t"), &mut errs);
    assert!(errs.is_empty(), "{errs}");
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
                let v = table.verdict(src, dst, 6, port);
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
