//! A generated [`Cluster`] written back as Kubernetes API objects (a JSON
//! `kind: List`, which `portcullis check --state` and `portcullis run --manifests`
//! read like `kubectl get -o json` output), so that the daemon can be measured
//! on the same clusters as the compiler benchmarks.
//!
//! Selectors are written as `matchExpressions` (every requirement kind
//! round-trips); a port range `0..=65535` is a port entry without `port`.

use policy_compiler::cidr::IpBlock;
use policy_compiler::model::{NamespaceMatch, Peer, PortMatch, Protocol, Rule};
use policy_compiler::selector::{Requirement, Selector};
use policy_compiler::Cluster;
use serde_json::{json, Map, Value};

fn selector(s: &Selector) -> Value {
    let exprs: Vec<Value> = s
        .requirements()
        .iter()
        .map(|r| match r {
            Requirement::In { key, values } => json!({"key": key, "operator": "In", "values": values}),
            Requirement::NotIn { key, values } => json!({"key": key, "operator": "NotIn", "values": values}),
            Requirement::Exists { key } => json!({"key": key, "operator": "Exists"}),
            Requirement::DoesNotExist { key } => json!({"key": key, "operator": "DoesNotExist"}),
        })
        .collect();
    if exprs.is_empty() {
        json!({})
    } else {
        json!({ "matchExpressions": exprs })
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn block(b: &IpBlock) -> Value {
    let mut v = json!({ "cidr": b.cidr.to_string() });
    if !b.except.is_empty() {
        v["except"] = b.except.iter().map(|c| Value::String(c.to_string())).collect();
    }
    v
}

fn peer(p: &Peer) -> Value {
    match p {
        Peer::Pods { namespaces: NamespaceMatch::Own(_), pods } => json!({ "podSelector": selector(pods) }),
        Peer::Pods { namespaces: NamespaceMatch::Selector(ns), pods } => {
            let mut v = json!({ "namespaceSelector": selector(ns) });
            if !pods.requirements().is_empty() {
                v["podSelector"] = selector(pods);
            }
            v
        }
        Peer::Block(b) => json!({ "ipBlock": block(b) }),
    }
}

fn port(p: &PortMatch) -> Value {
    match p {
        PortMatch::Range { protocol: pr, lo: 0, hi: 65535 } => json!({ "protocol": protocol(*pr) }),
        PortMatch::Range { protocol: pr, lo, hi } if lo == hi => {
            json!({ "protocol": protocol(*pr), "port": lo })
        }
        PortMatch::Range { protocol: pr, lo, hi } => {
            json!({ "protocol": protocol(*pr), "port": lo, "endPort": hi })
        }
        PortMatch::Named { protocol: pr, name } => json!({ "protocol": protocol(*pr), "port": name }),
    }
}

fn rule(r: &Rule, peers_key: &str) -> Value {
    let mut v = Map::new();
    if !r.peers.is_empty() {
        v.insert(peers_key.into(), r.peers.iter().map(peer).collect());
    }
    if !r.ports.is_empty() {
        v.insert("ports".into(), r.ports.iter().map(port).collect());
    }
    Value::Object(v)
}

/// The cluster as one JSON `List` of Namespaces, Pods and NetworkPolicies.
pub fn to_list(c: &Cluster) -> Value {
    let mut items = Vec::with_capacity(c.namespaces.len() + c.pods.len() + c.policies.len());
    for ns in &c.namespaces {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": ns.name, "labels": ns.labels },
        }));
    }
    for p in &c.pods {
        let ports: Vec<Value> = p
            .container_ports
            .iter()
            .map(|(pr, n)| {
                let mut v = json!({ "containerPort": n, "protocol": protocol(*pr) });
                if let Some(np) = p.named_ports.iter().find(|np| np.port == *n && np.protocol == *pr) {
                    v["name"] = json!(np.name);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = p.ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect();
        items.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": p.name, "namespace": p.namespace, "labels": p.labels },
            "spec": { "containers": [{ "name": "app", "image": "app", "ports": ports }] },
            "status": { "phase": "Running", "podIP": p.ips[0].to_string(), "podIPs": ips },
        }));
    }
    for pol in &c.policies {
        let mut types = Vec::new();
        let mut spec = json!({ "podSelector": selector(&pol.pod_selector) });
        if pol.isolates[0] {
            types.push("Ingress");
            spec["ingress"] = pol.rules[0].iter().map(|r| rule(r, "from")).collect();
        }
        if pol.isolates[1] {
            types.push("Egress");
            spec["egress"] = pol.rules[1].iter().map(|r| rule(r, "to")).collect();
        }
        spec["policyTypes"] = json!(types);
        items.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": pol.name, "namespace": pol.namespace },
            "spec": spec,
        }));
    }
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1 as corev1;
    use k8s_openapi::api::networking::v1 as netv1;

    #[test]
    fn a_generated_cluster_round_trips_through_api_objects() {
        let original = crate::generate(300, 200, 7);
        let list = to_list(&original);
        let (mut ns, mut pods, mut pols) = (Vec::new(), Vec::new(), Vec::new());
        for item in list["items"].as_array().unwrap() {
            match item["kind"].as_str().unwrap() {
                "Namespace" => ns.push(serde_json::from_value::<corev1::Namespace>(item.clone()).unwrap()),
                "Pod" => pods.push(serde_json::from_value::<corev1::Pod>(item.clone()).unwrap()),
                _ => pols.push(serde_json::from_value::<netv1::NetworkPolicy>(item.clone()).unwrap()),
            }
        }
        let (back, problems) = Cluster::from_objects(&ns, &pods, &pols);
        assert!(
            problems.iter().all(|p| p.severity != policy_compiler::validate::Severity::Error),
            "{problems:?}"
        );
        assert_eq!(back.namespaces, original.namespaces);
        assert_eq!(back.pods.len(), original.pods.len());
        for (b, o) in back.pods.iter().zip(&original.pods) {
            let sorted = |p: &policy_compiler::model::PodInfo| {
                let mut p = p.clone();
                p.named_ports.sort_by(|a, b| a.name.cmp(&b.name));
                p
            };
            assert_eq!(sorted(b), sorted(o), "pod {}/{}", o.namespace, o.name);
        }
        assert_eq!(back.policies.len(), original.policies.len());
        for (b, o) in back.policies.iter().zip(&original.policies) {
            assert_eq!(b, o, "policy {}/{}", o.namespace, o.name);
        }
    }
}
