//! Long port lists: a rule of 1,200 ports (numbers, ranges, names) against
//! a pod declaring 450 named ports, 60 of them on one port. Such sets are
//! looked up through an index, not scanned (`table/port_index.rs`); the
//! verdicts and the rules named must still be the reference evaluator's.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use policy_compiler::reference::{self, SideDetail};
use policy_compiler::Side;
use serde_json::json;

fn pod(name: &str, ip: &str, labels: serde_json::Value, ports: Vec<serde_json::Value>) -> corev1::Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "a", "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

/// Does the table's answer for one side agree with the reference: the same
/// outcome, and an allowing rule the reference lists too?
fn agrees(side: Side, r: &SideDetail, what: &str) {
    match (side, r) {
        (Side::NotPod, SideDetail::NotPod) => {}
        (Side::NotIsolated, SideDetail::Pod { isolating, .. }) => assert!(isolating.is_empty(), "{what}"),
        (Side::Denied(_), SideDetail::Pod { isolating, allowing, .. }) => {
            assert!(
                !isolating.is_empty() && allowing.is_empty(),
                "{what}: denied, the reference allows by {allowing:?}"
            )
        }
        (Side::Allowed(rr), SideDetail::Pod { allowing, .. }) => assert!(
            allowing.contains(&(rr.policy as usize, rr.rule as usize)),
            "{what}: allowed by {rr:?}, the reference by {allowing:?}"
        ),
        (s, r) => panic!("{what}: table {s:?}, reference {r:?}"),
    }
}

#[test]
fn long_port_lists_answer_like_the_reference() {
    // The server declares p0..p449: p0..p389 TCP on 20000 + i, p390..p449 all on 8080,
    // half of them UDP.
    let server_ports: Vec<_> = (0..450)
        .map(|i| {
            if i < 390 {
                json!({"name": format!("p{i}"), "containerPort": 20_000 + i, "protocol": "TCP"})
            } else {
                let proto = if i % 2 == 0 { "TCP" } else { "UDP" };
                json!({"name": format!("p{i}"), "containerPort": 8080, "protocol": proto})
            }
        })
        .collect();
    let server = pod("server", "10.0.0.1", json!({"app": "server"}), server_ports);
    let client = pod("client", "10.0.0.2", json!({"app": "client"}), vec![]);
    let admin = pod("admin", "10.0.0.3", json!({"role": "admin"}), vec![]);
    // Rule 0: 1,200 entries: single ports, ranges, names (some the server does not declare).
    let mut ports = Vec::new();
    for i in 0..1_200u32 {
        ports.push(match i % 6 {
            0 => json!({"port": 1_000 + i, "protocol": "TCP"}),
            1 => json!({"port": 3_000 + i, "endPort": 3_000 + i + i % 17, "protocol": "UDP"}),
            2 => json!({"port": 5_000 + i, "protocol": "SCTP"}),
            3 => json!({"port": format!("p{}", i / 2), "protocol": "TCP"}),
            4 => json!({"port": format!("p{}", 300 + i / 6), "protocol": if i % 4 == 0 { "TCP" } else { "UDP" }}),
            _ => json!({"port": 10_000 + (i % 50) * 3, "endPort": 10_000 + (i % 50) * 3 + 40}),
        });
    }
    let policies: Vec<netv1::NetworkPolicy> = vec![
        serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "many-ports"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": ports},
                {"from": [{"podSelector": {}}], "ports": [{"port": 8080}, {"port": "p400"}]},
            ]},
        }))
        .unwrap(),
        serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "admin"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "admin"}}}]},
            ]},
        }))
        .unwrap(),
    ];
    let ns: corev1::Namespace = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
    let c = policy_compiler::compile(&[ns], &[server, client, admin], &policies);
    assert!(!c.has_errors(), "{:?}", c.problems);
    assert!(c.table.stats().indexed_port_sets >= 1, "{:?}", c.table.stats());
    let server: IpAddr = "10.0.0.1".parse().unwrap();
    let (mut checked, mut allowed) = (0, 0);
    for from in ["10.0.0.2", "10.0.0.3", "10.0.0.9"] {
        let from: IpAddr = from.parse().unwrap();
        for proto in [6u8, 17, 132, 1] {
            let ports: Vec<u16> = if proto == 1 {
                vec![0]
            } else {
                (0..=21_000).step_by(13).chain([8080, 20_001, 20_389]).collect()
            };
            for port in ports {
                let v = c.table.verdict_both(from, server, proto, port);
                let r = reference::evaluate(&c.cluster, from, server, proto, port);
                agrees(v.ingress, &r.ingress, &format!("{from} -> server {proto}/{port}"));
                assert_eq!(v.allowed(), r.allowed(), "{from} -> server {proto}/{port}");
                checked += 1;
                allowed += usize::from(v.allowed());
            }
        }
    }
    assert!(
        checked > 12_000 && allowed > 3_000 && allowed < checked - 3_000,
        "{allowed} of {checked} allowed"
    );
}
