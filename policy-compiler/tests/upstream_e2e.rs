//! The upstream Kubernetes e2e NetworkPolicy suite, as data
//! (`tests/upstream/`, format in its README): every case's steps are applied
//! to the x,y,z × a,b,c model, and after each step the compiled table's
//! reachability must equal upstream's expected matrix for every probed
//! protocol and port. Self-connections are not compared, as upstream does not
//! (`ignoreLoopback`, kubernetes#95879). Probes are IPv4 pod IP to pod IP.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    apply: Option<String>,
    delete: Option<Vec<String>>,
    expect: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    protocol: String,
    port: u16,
    default: bool,
    edits: Vec<Edit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    from: Option<String>,
    to: Option<String>,
    all_ingress: Option<String>,
    all_egress: Option<String>,
    connected: bool,
}

#[derive(Default, Clone)]
struct World {
    namespaces: BTreeMap<String, corev1::Namespace>,
    pods: BTreeMap<(String, String), corev1::Pod>,
    policies: BTreeMap<(String, String), netv1::NetworkPolicy>,
}

impl World {
    fn apply(&mut self, text: &str) {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap().to_string();
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            match kind.as_str() {
                "Namespace" => {
                    self.namespaces.insert(name, serde_yaml::from_value(v).unwrap());
                }
                "Pod" => {
                    self.pods.insert((ns, name), serde_yaml::from_value(v).unwrap());
                }
                "NetworkPolicy" => {
                    self.policies.insert((ns, name), serde_yaml::from_value(v).unwrap());
                }
                k => panic!("unexpected kind {k}"),
            }
        }
    }
}

fn matches_side(side: &str, pod: &str) -> bool {
    side == "*" || side == pod || pod.split('/').next() == Some(side)
}

fn protocol(p: &str) -> u8 {
    match p {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        other => panic!("protocol {other}"),
    }
}

#[test]
fn upstream_netpol_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream");
    let mut model = World::default();
    model.apply(&std::fs::read_to_string(dir.join("model.yaml")).unwrap());
    assert_eq!(model.pods.len(), 9);
    let mut files: Vec<_> =
        std::fs::read_dir(dir.join("cases")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 48, "every It() of upstream network_policy.go");
    let mut failures = Vec::new();
    let mut matrices = 0;
    let mut cells = 0;
    for f in &files {
        let case: Case = serde_yaml::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut world = model.clone();
        for (si, step) in case.steps.iter().enumerate() {
            for d in step.delete.iter().flatten() {
                let (ns, name) = d.split_once('/').unwrap();
                assert!(world.policies.remove(&(ns.into(), name.into())).is_some(), "{file}: delete {d}");
            }
            if let Some(a) = &step.apply {
                world.apply(a);
            }
            let ns: Vec<_> = world.namespaces.values().cloned().collect();
            let pods: Vec<_> = world.pods.values().cloned().collect();
            let pols: Vec<_> = world.policies.values().cloned().collect();
            let compiled = policy_compiler::compile(&ns, &pods, &pols);
            assert!(!compiled.has_errors(), "{file} step {si}: {:?}", compiled.problems);
            let names: Vec<String> = world.pods.keys().map(|(n, p)| format!("{n}/{p}")).collect();
            let ips: Vec<IpAddr> = names
                .iter()
                .map(|k| {
                    let (n, p) = k.split_once('/').unwrap();
                    *compiled.cluster.pod(n, p).unwrap().ips.iter().find(|i| i.is_ipv4()).unwrap()
                })
                .collect();
            for e in &step.expect {
                matrices += 1;
                let mut want: BTreeMap<(usize, usize), bool> = BTreeMap::new();
                for i in 0..names.len() {
                    for j in 0..names.len() {
                        want.insert((i, j), e.default);
                    }
                }
                for ed in &e.edits {
                    for i in 0..names.len() {
                        for j in 0..names.len() {
                            let hit = match (&ed.from, &ed.to, &ed.all_ingress, &ed.all_egress) {
                                (Some(fr), Some(to), None, None) => {
                                    matches_side(fr, &names[i]) && matches_side(to, &names[j])
                                }
                                (None, None, Some(p), None) => names[j] == *p,
                                (None, None, None, Some(p)) => names[i] == *p,
                                _ => panic!("{file}: malformed edit"),
                            };
                            if hit {
                                want.insert((i, j), ed.connected);
                            }
                        }
                    }
                }
                let proto = protocol(&e.protocol);
                for ((i, j), w) in want {
                    if i == j {
                        continue; // upstream ignores loopback
                    }
                    cells += 1;
                    let got = compiled.table.verdict(ips[i], ips[j], proto, e.port).allowed();
                    if got != w {
                        failures.push(format!(
                            "{file} ({}) step {si} {}/{}: {} -> {}: expected {}, got {}",
                            case.name,
                            e.protocol,
                            e.port,
                            names[i],
                            names[j],
                            if w { "connected" } else { "blocked" },
                            if got { "connected" } else { "blocked" }
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} cell(s) differ:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(matrices, 65);
    assert_eq!(cells, 65 * 72);
}
