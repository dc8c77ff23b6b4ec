//! Writes the ipBlock inputs that used to cost the compiler quadratic
//! memory, as a Kubernetes `List` in JSON for `portcullis check --state`
//! (docs/performance.md, "Session 21: range maps per side").
//!
//! ```sh
//! cargo run --release -p portcullis-benches --example ipblock_inputs -- MODE N OUT.json
//! /usr/bin/time -f "%e s %M KB" target/release/portcullis check --state OUT.json
//! ```
//!
//! Modes, each with namespace `att` and its pod:
//! - `one-rule`: one egress rule of N peers `0.0.0.0/0 except <a distinct /32>`;
//! - `rules`: N egress rules, each with its own port and `0.0.0.0/0 except <a distinct /32>`;
//! - `tenants`: one policy with N spaced `except` entries in `10.0.0.0/8`, and N other
//!   namespaces, each with a pod and a three-rule egress policy (DNS to
//!   `10.0.0.0/8`, 443 to `0.0.0.0/0 except 10.0.0.0/8`, 8080 to a /32).

use serde_json::{json, Value};

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn pod(ns: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": "p", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn egress(ns: &str, name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": rules},
    })
}

/// `{first}.{b}.{c}.{d}/32` for i = 65,536 b + 256 c + d.
fn host(first: u8, i: usize) -> String {
    format!("{first}.{}.{}.{}/32", i >> 16 & 255, i >> 8 & 255, i & 255)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, n, out] = &args[..] else {
        eprintln!("usage: ipblock_inputs one-rule|rules|tenants N OUT.json");
        std::process::exit(2);
    };
    let n: usize = n.replace([',', '_'], "").parse().expect("N: a number");
    let mut items = vec![namespace("att"), pod("att", "192.168.0.1")];
    match mode.as_str() {
        "one-rule" => {
            let peers: Vec<Value> =
                (0..n).map(|i| json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": [host(11, i)]}})).collect();
            items.push(egress("att", "big", json!([{"to": peers}])));
        }
        "rules" => {
            let rules: Vec<Value> = (0..n)
                .map(|i| {
                    json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [host(11, i)]}}],
                           "ports": [{"port": 1 + i % 60_000}]})
                })
                .collect();
            items.push(egress("att", "big", json!(rules)));
        }
        "tenants" => {
            // Every other address: adjacent holes would make one range.
            let excepts: Vec<String> = (0..n).map(|i| host(10, 2 * i)).collect();
            items.push(egress(
                "att",
                "big",
                json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}]}]),
            ));
            for t in 0..n {
                let ns = format!("t{t}");
                items.push(namespace(&ns));
                items.push(pod(&ns, &format!("192.169.{}.{}", t >> 8 & 255, t & 255)));
                items.push(egress(
                    &ns,
                    "egress",
                    json!([
                        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 53, "protocol": "UDP"}]},
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]},
                        {"to": [{"ipBlock": {"cidr": format!("172.16.{}.{}/32", t >> 8 & 255, t & 255)}}],
                         "ports": [{"port": 8080}]},
                    ]),
                ));
            }
        }
        other => {
            eprintln!("unknown mode {other}: one-rule, rules or tenants");
            std::process::exit(2);
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(out, serde_json::to_string(&list).expect("serializable"))
        .unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
}
