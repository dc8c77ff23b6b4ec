//! The NetworkPolicy semantics of `docs/semantics.md`, one or more tests per
//! rule. Test names carry the rule number of the document (`r05_...` is rule 5
//! there; `d*` are the "where implementations differ" notes).
//!
//! Every flow is asked twice, to the compiled [`policy_compiler::DecisionTable`]
//! and to [`policy_compiler::reference::evaluate`], and both must give the
//! expected answer side by side: which side (source egress, destination ingress)
//! is not a pod, not isolated, allowed (and by which policy and rule) or denied
//! (and by which isolating policies).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use policy_compiler::model::Policy;
use policy_compiler::reference::{self, SideDetail};
use policy_compiler::{compile, Compiled, Direction, Severity, Side};

// ---------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;

/// Addresses that belong to no pod.
const EXT4: &str = "192.0.2.10";
const EXT6: &str = "2001:db8::10";

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    if pairs.is_empty() {
        None
    } else {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

/// A namespace with labels (the API server's name label is *not* added here).
fn ns(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta { name: Some(name.into()), labels: labels(l), ..Default::default() },
        ..Default::default()
    }
}

/// A running pod. `ips` is a comma-separated list: one address goes to
/// `status.podIP`, several to `status.podIPs` (dual stack); "" means no IP yet.
fn pod(namespace: &str, name: &str, ips: &str, l: &[(&str, &str)]) -> Pod {
    let list: Vec<&str> = ips.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let status = PodStatus {
        phase: Some("Running".into()),
        pod_ip: list.first().map(|s| s.to_string()),
        pod_ips: (list.len() > 1).then(|| list.iter().map(|s| PodIP { ip: s.to_string() }).collect()),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            labels: labels(l),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container { name: "main".into(), ..Default::default() }],
            ..Default::default()
        }),
        status: Some(status),
    }
}

/// Modifiers for [`pod`].
trait PodExt {
    /// Adds a container declaring these ports: (name or "", protocol, number).
    fn ports(self, ports: &[(&str, &str, i32)]) -> Pod;
    /// `spec.hostNetwork: true`.
    fn host_network(self) -> Pod;
    /// `status.phase`.
    fn phase(self, phase: &str) -> Pod;
}

impl PodExt for Pod {
    fn ports(mut self, ports: &[(&str, &str, i32)]) -> Pod {
        let spec = self.spec.as_mut().unwrap();
        let n = spec.containers.len();
        spec.containers.push(Container {
            name: format!("c{n}"),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, proto, port)| ContainerPort {
                        container_port: *port,
                        name: (!name.is_empty()).then(|| name.to_string()),
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        self
    }
    fn host_network(mut self) -> Pod {
        self.spec.as_mut().unwrap().host_network = Some(true);
        self
    }
    fn phase(mut self, phase: &str) -> Pod {
        self.status.as_mut().unwrap().phase = Some(phase.into());
        self
    }
}

/// A NetworkPolicy from YAML (apiVersion and kind may be left out).
#[track_caller]
fn np(yaml: &str) -> NetworkPolicy {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"))
}

fn world(namespaces: Vec<Namespace>, pods: Vec<Pod>, policies: &[&str]) -> Compiled {
    let policies: Vec<NetworkPolicy> = policies.iter().map(|y| np(y)).collect();
    compile(&namespaces, &pods, &policies)
}

/// Namespaces x (team=a), y (team=b), z (no labels) and their pods:
///
/// | pod       | IPv4      | IPv6        | labels                |
/// |-----------|-----------|-------------|-----------------------|
/// | x/web     | 10.0.1.1  | fd00::1:1   | app=web, tier=front   |
/// | x/db      | 10.0.1.2  |             | app=db, tier=back     |
/// | x/client  | 10.0.1.3  |             | app=client            |
/// | y/web     | 10.0.2.1  |             | app=web               |
/// | y/client  | 10.0.2.3  | fd00::2:3   | app=client            |
/// | z/client  | 10.0.3.3  |             | app=client            |
fn base_namespaces() -> Vec<Namespace> {
    vec![ns("x", &[("team", "a")]), ns("y", &[("team", "b")]), ns("z", &[])]
}

fn base_pods() -> Vec<Pod> {
    vec![
        pod("x", "web", "10.0.1.1,fd00::1:1", &[("app", "web"), ("tier", "front")]),
        pod("x", "db", "10.0.1.2", &[("app", "db"), ("tier", "back")]),
        pod("x", "client", "10.0.1.3", &[("app", "client")]),
        pod("y", "web", "10.0.2.1", &[("app", "web")]),
        pod("y", "client", "10.0.2.3,fd00::2:3", &[("app", "client")]),
        pod("z", "client", "10.0.3.3", &[("app", "client")]),
    ]
}

const X_WEB: &str = "10.0.1.1";
const X_WEB6: &str = "fd00::1:1";
const X_DB: &str = "10.0.1.2";
const X_CLIENT: &str = "10.0.1.3";
const Y_WEB: &str = "10.0.2.1";
const Y_CLIENT: &str = "10.0.2.3";
const Y_CLIENT6: &str = "fd00::2:3";
const Z_CLIENT: &str = "10.0.3.3";

fn base(policies: &[&str]) -> Compiled {
    world(base_namespaces(), base_pods(), policies)
}

// ---------------------------------------------------------------------------
// Expectations, checked against both the table and the reference evaluator
// ---------------------------------------------------------------------------

/// Expected outcome of one side.
#[derive(Clone, Copy, Debug)]
enum Exp {
    /// That end is not a pod.
    NotPod,
    /// A pod, not isolated in this direction.
    Open,
    /// Allowed by policy `namespace/name`, rule index (in its ingress or egress list).
    Allow(&'static str, u32),
    /// Denied; these policies (`namespace/name`) isolate the pod in this direction.
    Deny(&'static [&'static str]),
}
use Exp::*;

fn key(ns_name: (&str, &str)) -> String {
    format!("{}/{}", ns_name.0, ns_name.1)
}

fn reference_policy_key(c: &Compiled, i: usize) -> String {
    let p = &c.cluster.policies[i];
    format!("{}/{}", p.namespace, p.name)
}

#[track_caller]
fn check_side(c: &Compiled, dir: Direction, got: Side, detail: &SideDetail, exp: Exp, ctx: &str) {
    let what = format!("{ctx}: {} side", dir.as_str());
    match exp {
        NotPod => {
            assert_eq!(got, Side::NotPod, "{what}: table");
            assert_eq!(*detail, SideDetail::NotPod, "{what}: reference");
        }
        Open => {
            assert_eq!(got, Side::NotIsolated, "{what}: table");
            assert!(
                matches!(detail, SideDetail::Pod { isolating, .. } if isolating.is_empty()),
                "{what}: reference says {detail:?}"
            );
        }
        Allow(policy, rule) => {
            let Side::Allowed(r) = got else {
                panic!("{what}: table says {got:?}, expected allowed by {policy} rule {rule}")
            };
            assert_eq!(
                (key(c.table.policy(r.policy)), r.rule),
                (policy.to_string(), rule),
                "{what}: table names the wrong rule"
            );
            let SideDetail::Pod { allowing, .. } = detail else {
                panic!("{what}: reference says {detail:?}")
            };
            assert!(
                allowing.contains(&(r.policy as usize, r.rule as usize)),
                "{what}: reference does not list {policy} rule {rule} among {allowing:?}"
            );
        }
        Deny(policies) => {
            let Side::Denied(id) = got else {
                panic!("{what}: table says {got:?}, expected denied by {policies:?}")
            };
            let (d, list) = c.table.isolating_policies(id);
            assert_eq!(d, Some(dir), "{what}: table side direction");
            let mut got_list: Vec<String> = list.map(|i| key(c.table.policy(i))).collect();
            got_list.sort();
            let mut want: Vec<String> = policies.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(got_list, want, "{what}: table isolating policies");
            let SideDetail::Pod { isolating, allowing, .. } = detail else {
                panic!("{what}: reference says {detail:?}")
            };
            assert!(allowing.is_empty(), "{what}: reference allows by {allowing:?}");
            let mut ref_list: Vec<String> = isolating.iter().map(|i| reference_policy_key(c, *i)).collect();
            ref_list.sort();
            assert_eq!(ref_list, want, "{what}: reference isolating policies");
        }
    }
}

/// Asks `src -> dst` (protocol, port) and checks both sides against the table
/// and the reference evaluator.
#[track_caller]
fn expect(c: &Compiled, src: &str, dst: &str, proto: u8, port: u16, egress: Exp, ingress: Exp) {
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    let ctx = format!("{src} -> {dst} proto {proto} port {port}");
    let v = c.table.verdict_both(s, d, proto, port);
    let r = reference::evaluate(&c.cluster, s, d, proto, port);
    check_side(c, Direction::Egress, v.egress, &r.egress, egress, &ctx);
    check_side(c, Direction::Ingress, v.ingress, &r.ingress, ingress, &ctx);
    assert_eq!(v.allowed(), r.allowed(), "{ctx}: table and reference disagree on the result");
}

/// The overall answer, after checking that table and reference agree on it.
#[track_caller]
fn allowed(c: &Compiled, src: &str, dst: &str, proto: u8, port: u16) -> bool {
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    let v = c.table.verdict_both(s, d, proto, port);
    let r = reference::evaluate(&c.cluster, s, d, proto, port);
    assert_eq!(v.allowed(), r.allowed(), "{src} -> {dst} {proto}/{port}: table {v:?}, reference {r:?}");
    assert_eq!(v.egress.allows(), r.egress.allows(), "{src} -> {dst} {proto}/{port}: egress");
    assert_eq!(v.ingress.allows(), r.ingress.allows(), "{src} -> {dst} {proto}/{port}: ingress");
    v.allowed()
}

fn policy<'a>(c: &'a Compiled, ns_name: &str) -> &'a Policy {
    let (n, name) = ns_name.split_once('/').unwrap();
    c.cluster
        .policies
        .iter()
        .find(|p| p.namespace == n && p.name == name)
        .unwrap_or_else(|| panic!("no policy {ns_name}"))
}

/// (severity, "Kind ns/name", field, message) of every problem.
fn problems(c: &Compiled) -> Vec<(Severity, String, String, String)> {
    c.problems
        .iter()
        .map(|p| (p.severity, p.object.to_string(), p.field.clone(), p.message.clone()))
        .collect()
}

#[track_caller]
fn assert_problem(c: &Compiled, severity: Severity, object: &str, field: &str, message_part: &str) {
    let ps = problems(c);
    assert!(
        ps.iter().any(|(s, o, f, m)| *s == severity && o == object && f == field && m.contains(message_part)),
        "expected {severity:?} on {object} at {field} containing {message_part:?}; got {ps:#?}"
    );
}

#[track_caller]
fn assert_no_problems(c: &Compiled) {
    assert!(c.problems.is_empty(), "{:#?}", problems(c));
}

// Policies used by several tests.
const DENY_ALL_INGRESS_X: &str = "
metadata: {name: deny-in, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";
const DENY_ALL_X: &str = "
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

// ---------------------------------------------------------------------------
// 1. Which connections policies are about
// ---------------------------------------------------------------------------

#[test]
fn r01_flow_with_no_pod_at_either_end_is_not_evaluated() {
    let c = base(&[DENY_ALL_X]);
    expect(&c, EXT4, "198.51.100.7", TCP, 80, NotPod, NotPod);
    expect(&c, EXT6, "2001:db8::99", UDP, 53, NotPod, NotPod);
    expect(&c, EXT4, "198.51.100.7", ICMP, 0, NotPod, NotPod);
    assert!(allowed(&c, EXT4, "198.51.100.7", TCP, 80));
}

#[test]
fn r02_only_the_pod_end_is_evaluated_when_the_other_end_is_not_a_pod() {
    let c = base(&[DENY_ALL_X]);
    // Pod -> outside: only the pod's egress counts.
    expect(&c, X_WEB, EXT4, TCP, 443, Deny(&["x/deny-all"]), NotPod);
    expect(&c, Y_WEB, EXT4, TCP, 443, Open, NotPod);
    // Outside -> pod: only the pod's ingress counts.
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/deny-all"]));
    expect(&c, EXT6, X_WEB6, TCP, 80, NotPod, Deny(&["x/deny-all"]));
    expect(&c, EXT4, Y_WEB, TCP, 80, NotPod, Open);
}

// ---------------------------------------------------------------------------
// 2. Isolation
// ---------------------------------------------------------------------------

#[test]
fn r03_pods_no_policy_selects_are_not_isolated() {
    let c = base(&[r"
metadata: {name: db-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
"]);
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Open);
    expect(&c, X_CLIENT, X_DB, TCP, 5432, Open, Deny(&["x/db-only"]));
    expect(&c, X_DB, X_WEB, TCP, 80, Deny(&["x/db-only"]), Open);
    // A policy only selects pods of its own namespace.
    expect(&c, Y_CLIENT, Y_WEB, TCP, 80, Open, Open);
}

#[test]
fn r04_isolation_is_per_direction() {
    let c = base(&[DENY_ALL_INGRESS_X]);
    // x/web is isolated for ingress only: its egress is untouched.
    expect(&c, X_WEB, Y_WEB, TCP, 80, Open, Open);
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/deny-in"]));
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/deny-in"]));
}

#[test]
fn r05_policy_types_absent_means_ingress_only() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
"]);
    assert_no_problems(&c);
    assert_eq!(policy(&c, "x/p").isolates, [true, false]);
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, X_WEB, EXT4, TCP, 80, Open, NotPod);
}

#[test]
fn r05_policy_types_absent_with_egress_rules_adds_egress() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
"]);
    assert_no_problems(&c);
    assert_eq!(policy(&c, "x/p").isolates, [true, true]);
    expect(&c, X_WEB, EXT4, TCP, 443, Allow("x/p", 0), NotPod);
    expect(&c, X_WEB, "198.51.100.1", TCP, 443, Deny(&["x/p"]), NotPod);
    // Ingress is isolated too (always implied), and there is no ingress rule.
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

#[test]
fn r05_policy_types_absent_with_empty_egress_list_is_ingress_only() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress: []
"]);
    assert_eq!(policy(&c, "x/p").isolates, [true, false]);
    expect(&c, X_WEB, EXT4, TCP, 443, Open, NotPod);
}

#[test]
fn r05_empty_policy_types_list_is_defaulted_like_absent() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: []
  egress:
  - ports: [{port: 53, protocol: UDP}]
"]);
    assert_no_problems(&c);
    assert_eq!(policy(&c, "x/p").isolates, [true, true]);
    expect(&c, X_WEB, EXT4, UDP, 53, Allow("x/p", 0), NotPod);
    expect(&c, X_WEB, EXT4, TCP, 53, Deny(&["x/p"]), NotPod);
}

#[test]
fn r06_explicit_egress_only_ignores_ingress_rules_with_a_warning() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress:
  - from: [{podSelector: {}}]
  - {}
"]);
    assert!(!c.has_errors());
    assert_problem(&c, Severity::Warning, "NetworkPolicy x/p", "spec.ingress", "2 ingress rule(s) ignored");
    let p = policy(&c, "x/p");
    assert!(p.valid);
    assert_eq!(p.isolates, [false, true]);
    assert!(p.rules(Direction::Ingress).is_empty());
    // Ingress not isolated at all; egress isolated with no rule.
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Open);
    expect(&c, X_WEB, X_DB, TCP, 5432, Deny(&["x/p"]), Open);
}

#[test]
fn r06_explicit_ingress_only_ignores_egress_rules_with_a_warning() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
"]);
    assert!(!c.has_errors());
    assert_problem(&c, Severity::Warning, "NetworkPolicy x/p", "spec.egress", "1 egress rule(s) ignored");
    assert_eq!(policy(&c, "x/p").isolates, [true, false]);
    expect(&c, X_WEB, EXT4, TCP, 80, Open, NotPod);
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
}

#[test]
fn r06_explicit_policy_types_without_rules_deny_both_directions() {
    let c = base(&[DENY_ALL_X]);
    assert_no_problems(&c);
    expect(&c, X_WEB, X_DB, TCP, 5432, Deny(&["x/deny-all"]), Deny(&["x/deny-all"]));
    expect(&c, X_WEB6, Y_CLIENT6, TCP, 80, Deny(&["x/deny-all"]), Open);
}

#[test]
fn r07_policies_only_add_allows() {
    let allow_client = r"
metadata: {name: allow-client, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
";
    let c = base(&[DENY_ALL_INGRESS_X, allow_client]);
    // Allowed by the union, although deny-in selects the pod too.
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/allow-client", 0));
    // Denied: both policies isolate x/web, none allows.
    expect(&c, X_DB, X_WEB, TCP, 80, Open, Deny(&["x/allow-client", "x/deny-in"]));
    // x/db only has deny-in.
    expect(&c, X_CLIENT, X_DB, TCP, 5432, Open, Deny(&["x/deny-in"]));
    // Order of the input does not matter.
    let c2 = base(&[allow_client, DENY_ALL_INGRESS_X]);
    expect(&c2, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/allow-client", 0));
    expect(&c2, X_DB, X_WEB, TCP, 80, Open, Deny(&["x/allow-client", "x/deny-in"]));
}

#[test]
fn r08_a_connection_needs_source_egress_and_destination_ingress() {
    let c = base(&[
        r"
metadata: {name: client-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: b}}}]
",
        r"
metadata: {name: web-in, namespace: y}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: db}}}]
",
    ]);
    // Egress allows, ingress denies.
    expect(&c, X_CLIENT, Y_WEB, TCP, 80, Allow("x/client-out", 0), Deny(&["y/web-in"]));
    assert!(!allowed(&c, X_CLIENT, Y_WEB, TCP, 80));
    // Egress denies, ingress allows.
    expect(&c, X_DB, Y_WEB, TCP, 80, Open, Allow("y/web-in", 0));
    expect(&c, X_CLIENT, X_DB, TCP, 80, Deny(&["x/client-out"]), Open);
    assert!(!allowed(&c, X_CLIENT, X_DB, TCP, 80));
    // Both allow.
    expect(&c, X_CLIENT, Y_CLIENT, TCP, 80, Allow("x/client-out", 0), Open);
    assert!(allowed(&c, X_CLIENT, Y_CLIENT, TCP, 80));
}

#[test]
fn r09_isolating_policy_without_ingress_rules_denies_all_ingress() {
    for rules in ["", "  ingress: []\n"] {
        let yaml = format!(
            "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n{rules}"
        );
        let c = base(&[&yaml]);
        assert_no_problems(&c);
        expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
        expect(&c, EXT4, X_WEB, UDP, 53, NotPod, Deny(&["x/p"]));
        expect(&c, EXT4, X_WEB, ICMP, 0, NotPod, Deny(&["x/p"]));
        expect(&c, EXT6, X_WEB6, ICMPV6, 0, NotPod, Deny(&["x/p"]));
    }
}

#[test]
fn r09_isolating_policy_without_egress_rules_denies_all_egress() {
    for rules in ["", "  egress: []\n"] {
        let yaml = format!(
            "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n{rules}"
        );
        let c = base(&[&yaml]);
        assert_no_problems(&c);
        expect(&c, X_WEB, Y_WEB, TCP, 80, Deny(&["x/p"]), Open);
        expect(&c, X_WEB6, EXT6, UDP, 53, Deny(&["x/p"]), NotPod);
        expect(&c, X_WEB, EXT4, ICMP, 0, Deny(&["x/p"]), NotPod);
    }
}

// ---------------------------------------------------------------------------
// 3. Rules
// ---------------------------------------------------------------------------

#[test]
fn r10_a_rule_needs_both_a_matching_peer_and_a_matching_port() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"]);
    expect(&c, X_WEB, X_DB, TCP, 5432, Open, Allow("x/p", 0));
    expect(&c, X_WEB, X_DB, TCP, 5433, Open, Deny(&["x/p"]));
    expect(&c, X_CLIENT, X_DB, TCP, 5432, Open, Deny(&["x/p"]));
}

#[test]
fn r11_missing_or_empty_from_matches_every_source() {
    for from in ["", "    from: []\n"] {
        let yaml = format!(
            "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - ports: [{{port: 80}}]\n{from}"
        );
        let c = base(&[&yaml]);
        assert_no_problems(&c);
        expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
        expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
        expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
        expect(&c, EXT6, X_WEB6, TCP, 80, NotPod, Allow("x/p", 0));
        expect(&c, EXT4, X_WEB, TCP, 81, NotPod, Deny(&["x/p"]));
    }
}

#[test]
fn r11_missing_or_empty_to_matches_every_destination() {
    for to in ["", "    to: []\n"] {
        let yaml = format!(
            "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{{port: 53, protocol: UDP}}]\n{to}"
        );
        let c = base(&[&yaml]);
        assert_no_problems(&c);
        expect(&c, X_WEB, Y_WEB, UDP, 53, Allow("x/p", 0), Open);
        expect(&c, X_WEB, EXT4, UDP, 53, Allow("x/p", 0), NotPod);
        expect(&c, X_WEB6, EXT6, UDP, 53, Allow("x/p", 0), NotPod);
        expect(&c, X_WEB, EXT4, TCP, 53, Deny(&["x/p"]), NotPod);
    }
}

#[test]
fn r12_missing_or_empty_ports_matches_every_protocol_and_port() {
    for ports in ["", "    ports: []\n"] {
        let yaml = format!(
            "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n{ports}"
        );
        let c = base(&[&yaml]);
        assert_no_problems(&c);
        for (proto, port) in [(TCP, 1), (TCP, 65535), (UDP, 53), (SCTP, 9), (ICMP, 0), (47, 0)] {
            expect(&c, X_CLIENT, X_WEB, proto, port, Open, Allow("x/p", 0));
        }
        expect(&c, X_DB, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    }
}

#[test]
fn r12_a_rule_with_neither_peers_nor_ports_allows_everything() {
    let c = base(&[r"
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{}]
  egress: [{}]
"]);
    expect(&c, X_WEB, X_DB, TCP, 5432, Allow("x/allow-all", 0), Allow("x/allow-all", 0));
    expect(&c, EXT4, X_WEB, ICMP, 0, NotPod, Allow("x/allow-all", 0));
    expect(&c, X_WEB6, EXT6, ICMPV6, 0, Allow("x/allow-all", 0), NotPod);
}

#[test]
fn r13_peers_are_ored_and_ports_are_ored() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - ipBlock: {cidr: 192.0.2.0/24}
    ports:
    - port: 5432
    - {port: 53, protocol: UDP}
"]);
    for (src, proto, port) in [(X_WEB, TCP, 5432), (X_WEB, UDP, 53), (EXT4, TCP, 5432), (EXT4, UDP, 53)] {
        assert!(allowed(&c, src, X_DB, proto, port), "{src} {proto}/{port}");
    }
    expect(&c, X_WEB, X_DB, TCP, 53, Open, Deny(&["x/p"]));
    expect(&c, X_CLIENT, X_DB, TCP, 5432, Open, Deny(&["x/p"]));
    expect(&c, "198.51.100.1", X_DB, TCP, 5432, NotPod, Deny(&["x/p"]));
}

#[test]
fn r13_rules_of_one_policy_are_ored() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 9187}]
"]);
    expect(&c, X_WEB, X_DB, TCP, 5432, Open, Allow("x/p", 0));
    expect(&c, X_CLIENT, X_DB, TCP, 9187, Open, Allow("x/p", 1));
    // Peers of one rule never combine with ports of another.
    expect(&c, X_WEB, X_DB, TCP, 9187, Open, Deny(&["x/p"]));
    expect(&c, X_CLIENT, X_DB, TCP, 5432, Open, Deny(&["x/p"]));
}

// ---------------------------------------------------------------------------
// 4. Peers
// ---------------------------------------------------------------------------

const WEB_INGRESS_FROM: &str = "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
";

fn web_ingress_from(peers: &str) -> Compiled {
    base(&[&format!("{WEB_INGRESS_FROM}{peers}")])
}

#[test]
fn r14_pod_selector_alone_selects_pods_of_the_policy_namespace() {
    let c = web_ingress_from("    - podSelector: {matchLabels: {app: client}}\n");
    assert_no_problems(&c);
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    // An empty podSelector: every pod of the namespace, nothing else.
    let c = web_ingress_from("    - podSelector: {}\n");
    expect(&c, X_DB, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

#[test]
fn r15_namespace_selector_alone_selects_every_pod_of_matching_namespaces() {
    let c = web_ingress_from("    - namespaceSelector: {matchLabels: {team: b}}\n");
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_WEB, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_CLIENT6, X_WEB6, TCP, 80, Open, Allow("x/p", 0));
    // Not the policy's own namespace unless it matches.
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

#[test]
fn r16_namespace_and_pod_selector_in_one_peer_are_anded() {
    let c = web_ingress_from(
        "    - namespaceSelector: {matchLabels: {team: b}}\n      podSelector: {matchLabels: {app: client}}\n",
    );
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_WEB, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

#[test]
fn r16_two_peers_are_ored_not_anded() {
    let c = web_ingress_from(
        "    - namespaceSelector: {matchLabels: {team: b}}\n    - podSelector: {matchLabels: {app: client}}\n",
    );
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_WEB, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, X_DB, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

#[test]
fn r17_empty_namespace_selector_selects_every_namespace() {
    let c = web_ingress_from("    - namespaceSelector: {}\n");
    for src in [X_CLIENT, X_DB, Y_WEB, Y_CLIENT, Z_CLIENT, Y_CLIENT6] {
        let dst = if src.contains(':') { X_WEB6 } else { X_WEB };
        expect(&c, src, dst, TCP, 80, Open, Allow("x/p", 0));
    }
    // ...of pods only.
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    // With a pod selector: those pods in every namespace.
    let c =
        web_ingress_from("    - namespaceSelector: {}\n      podSelector: {matchLabels: {app: client}}\n");
    for src in [X_CLIENT, Y_CLIENT, Z_CLIENT] {
        expect(&c, src, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    }
    expect(&c, Y_WEB, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

#[test]
fn r18_ip_block_cidr_and_except_at_their_boundaries() {
    let c = web_ingress_from(
        "    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24, 172.17.255.0/24, 172.17.0.0/30]}\n",
    );
    assert_no_problems(&c);
    for (src, ok) in [
        ("172.16.255.255", false), // just below the cidr
        ("172.17.0.0", false),     // first address, in except 172.17.0.0/30
        ("172.17.0.3", false),     // last address of that except
        ("172.17.0.4", true),      // just after it
        ("172.17.0.255", true),    // just before 172.17.1.0/24
        ("172.17.1.0", false),     // first of the except
        ("172.17.1.255", false),   // last of the except
        ("172.17.2.0", true),      // just after it
        ("172.17.254.255", true),  // just before the except at the end of the cidr
        ("172.17.255.0", false),   // except reaching the end of the cidr
        ("172.17.255.255", false), // last address of the cidr, excepted
        ("172.18.0.0", false),     // just above the cidr
    ] {
        let ingress = if ok { Allow("x/p", 0) } else { Deny(&["x/p"]) };
        expect(&c, src, X_WEB, TCP, 80, NotPod, ingress);
    }
}

#[test]
fn r18_ip_block_cidr_bounds_without_except_and_host_bits() {
    // Host bits in the cidr are accepted (as the API server does) and cleared,
    // with a warning that names both readings (as the API server's does).
    let c = web_ingress_from("    - ipBlock: {cidr: 198.51.100.77/24}\n");
    assert_eq!(problems(&c).len(), 1, "{:#?}", problems(&c));
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "\"198.51.100.77/24\" has bits set after its prefix length: it is the whole block 198.51.100.0/24; \
         write 198.51.100.0/24, or 198.51.100.77/32 if the one address is meant",
    );
    expect(&c, "198.51.99.255", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, "198.51.100.0", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "198.51.100.255", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "198.51.101.0", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    // A /32 is one address.
    let c = web_ingress_from("    - ipBlock: {cidr: 192.0.2.10/32}\n");
    assert_no_problems(&c);
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "192.0.2.11", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
}

#[test]
fn r18_ip_block_whole_space_with_except_at_the_top() {
    let c = web_ingress_from("    - ipBlock: {cidr: 0.0.0.0/0, except: [255.255.255.0/24, 0.0.0.0/8]}\n");
    expect(&c, "0.255.255.255", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, "1.0.0.0", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "255.255.254.255", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "255.255.255.0", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, "255.255.255.255", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    let c = web_ingress_from("    - ipBlock: {cidr: '::/0', except: ['ffff::/16']}\n");
    expect(&c, "::1", X_WEB6, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", X_WEB6, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "ffff::", X_WEB6, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", X_WEB6, TCP, 80, NotPod, Deny(&["x/p"]));
}

#[test]
fn r18_ip_block_ipv6_with_except() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}}]
"]);
    assert_no_problems(&c);
    expect(&c, X_WEB6, EXT6, TCP, 443, Allow("x/p", 0), NotPod);
    expect(&c, X_WEB6, "2001:db8:0:ffff:ffff:ffff:ffff:ffff", TCP, 443, Allow("x/p", 0), NotPod);
    expect(&c, X_WEB6, "2001:db8:1::", TCP, 443, Deny(&["x/p"]), NotPod);
    expect(&c, X_WEB6, "2001:db8:1:ffff:ffff:ffff:ffff:ffff", TCP, 443, Deny(&["x/p"]), NotPod);
    expect(&c, X_WEB6, "2001:db8:2::", TCP, 443, Allow("x/p", 0), NotPod);
    expect(&c, X_WEB6, "2001:db9::", TCP, 443, Deny(&["x/p"]), NotPod);
    // The same pod's IPv4 address is a different source, but the same pod.
    expect(&c, X_WEB, EXT4, TCP, 443, Deny(&["x/p"]), NotPod);
}

#[test]
fn r18_ip_block_families_never_mix() {
    let c = web_ingress_from("    - ipBlock: {cidr: 0.0.0.0/0}\n");
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, EXT6, X_WEB6, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, Y_CLIENT6, X_WEB6, TCP, 80, Open, Deny(&["x/p"]));
    // An IPv4-mapped IPv6 address is IPv6 on the wire: not in an IPv4 block.
    expect(&c, "::ffff:192.0.2.10", X_WEB6, TCP, 80, NotPod, Deny(&["x/p"]));
    let c = web_ingress_from("    - ipBlock: {cidr: '::/0'}\n");
    expect(&c, EXT6, X_WEB6, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
}

#[test]
fn r19_ip_block_matches_pod_addresses_too() {
    let c = web_ingress_from("    - ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.3/32]}\n");
    expect(&c, Y_WEB, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    // The block is about addresses: y/client's IPv6 address is not in it.
    expect(&c, Y_CLIENT6, X_WEB6, TCP, 80, Open, Deny(&["x/p"]));
    // Egress to a pod address.
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 'fd00::2:0/112'}}]
"]);
    expect(&c, X_WEB6, Y_CLIENT6, TCP, 80, Allow("x/p", 0), Open);
    expect(&c, X_WEB, Y_CLIENT, TCP, 80, Deny(&["x/p"]), Open);
}

#[test]
fn r20_selector_peers_never_match_addresses_that_are_not_pods() {
    let c = web_ingress_from("    - namespaceSelector: {}\n      podSelector: {}\n    - podSelector: {}\n");
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, EXT6, X_WEB6, TCP, 80, NotPod, Deny(&["x/p"]));
    // The same in egress.
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
"]);
    expect(&c, X_WEB, Z_CLIENT, TCP, 80, Allow("x/p", 0), Open);
    expect(&c, X_WEB, EXT4, TCP, 80, Deny(&["x/p"]), NotPod);
}

#[test]
fn r21_empty_peer_is_invalid() {
    let c = web_ingress_from("    - {}\n");
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0]",
        "must specify a peer",
    );
    assert!(!policy(&c, "x/p").valid);
    // Fails closed: isolates x/web for ingress, allows nothing.
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
}

#[test]
fn r21_ip_block_with_another_selector_in_one_peer_is_invalid() {
    let c = web_ingress_from("    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n");
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0]",
        "may not specify both ipBlock and another peer",
    );
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

// ---------------------------------------------------------------------------
// 5. Label selectors
// ---------------------------------------------------------------------------

/// Which of the base pods of namespace x a `spec.podSelector` selects
/// (ingress isolation from an external address).
fn selected_in_x(selector: &str) -> Vec<&'static str> {
    let yaml = format!("metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {selector}\n");
    let c = base(&[&yaml]);
    assert_no_problems(&c);
    let mut v = Vec::new();
    for (name, ip) in [("web", X_WEB), ("db", X_DB), ("client", X_CLIENT)] {
        if !allowed(&c, EXT4, ip, TCP, 80) {
            expect(&c, EXT4, ip, TCP, 80, NotPod, Deny(&["x/p"]));
            v.push(name);
        } else {
            expect(&c, EXT4, ip, TCP, 80, NotPod, Open);
        }
    }
    v
}

#[test]
fn r22_match_labels_and_match_expressions_are_anded() {
    assert_eq!(selected_in_x("{matchLabels: {app: web}}"), ["web"]);
    assert_eq!(selected_in_x("{matchLabels: {app: web, tier: back}}"), Vec::<&str>::new());
    assert_eq!(
        selected_in_x(
            "{matchLabels: {tier: back}, matchExpressions: [{key: app, operator: In, values: [db, web]}]}"
        ),
        ["db"]
    );
}

#[test]
fn r22_match_expression_operators() {
    let expr = |k: &str, op: &str, vals: &str| {
        let values = if vals.is_empty() { String::new() } else { format!(", values: [{vals}]") };
        format!("{{matchExpressions: [{{key: {k}, operator: {op}{values}}}]}}")
    };
    assert_eq!(selected_in_x(&expr("app", "In", "web, client")), ["web", "client"]);
    // NotIn and DoesNotExist also select pods that lack the key.
    assert_eq!(selected_in_x(&expr("tier", "NotIn", "front")), ["db", "client"]);
    assert_eq!(selected_in_x(&expr("tier", "Exists", "")), ["web", "db"]);
    assert_eq!(selected_in_x(&expr("tier", "DoesNotExist", "")), ["client"]);
    // Several expressions are ANDed.
    assert_eq!(
        selected_in_x(
            "{matchExpressions: [{key: tier, operator: Exists}, {key: app, operator: NotIn, values: [db]}]}"
        ),
        ["web"]
    );
}

#[test]
fn r23_empty_or_null_pod_selector_selects_every_pod_of_the_namespace() {
    assert_eq!(selected_in_x("{}"), ["web", "db", "client"]);
    assert_eq!(selected_in_x("null"), ["web", "db", "client"]);
    assert_eq!(selected_in_x("{matchLabels: {}, matchExpressions: []}"), ["web", "db", "client"]);
    // A policy without the field at all.
    let c = base(&["metadata: {name: p, namespace: x}\nspec: {policyTypes: [Ingress]}\n"]);
    assert_no_problems(&c);
    expect(&c, EXT4, X_CLIENT, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, Y_CLIENT, TCP, 80, NotPod, Open);
}

#[test]
fn r24_namespaces_carry_their_name_label() {
    let by_name = "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n";
    let c = web_ingress_from(by_name);
    assert_no_problems(&c);
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    // A label set to another value on the object is overwritten, as the API server does.
    let namespaces = vec![
        ns("x", &[]),
        ns("y", &[("kubernetes.io/metadata.name", "z")]),
        ns("z", &[("kubernetes.io/metadata.name", "y")]),
    ];
    let c = world(namespaces, base_pods(), &[&format!("{WEB_INGRESS_FROM}{by_name}")]);
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    // matchExpressions on the name label.
    let c = web_ingress_from(
        "    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x, y]}]}\n",
    );
    expect(&c, Z_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
}

// ---------------------------------------------------------------------------
// 6. Ports and protocols
// ---------------------------------------------------------------------------

fn web_ingress_ports(ports: &str) -> Compiled {
    base(&[&format!(
        "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - ports: {ports}\n"
    )])
}

#[test]
fn r25_protocol_defaults_to_tcp() {
    let c = web_ingress_ports("[{port: 80}]");
    assert_no_problems(&c);
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, UDP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, SCTP, 80, NotPod, Deny(&["x/p"]));
}

#[test]
fn r26_udp_and_sctp_match_only_their_protocol() {
    let c = web_ingress_ports("[{port: 53, protocol: UDP}, {port: 9, protocol: SCTP}]");
    assert_no_problems(&c);
    expect(&c, EXT4, X_WEB, UDP, 53, NotPod, Allow("x/p", 0));
    expect(&c, EXT6, X_WEB6, UDP, 53, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 53, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, SCTP, 9, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 9, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, SCTP, 53, NotPod, Deny(&["x/p"]));
}

#[test]
fn r27_absent_port_means_every_port_of_the_protocol() {
    let c = web_ingress_ports("[{protocol: UDP}]");
    assert_no_problems(&c);
    for port in [0, 1, 53, 65535] {
        expect(&c, EXT4, X_WEB, UDP, port, NotPod, Allow("x/p", 0));
    }
    expect(&c, EXT4, X_WEB, TCP, 53, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, ICMP, 0, NotPod, Deny(&["x/p"]));
    let c = web_ingress_ports("[{}]");
    expect(&c, EXT4, X_WEB, TCP, 65535, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, UDP, 53, NotPod, Deny(&["x/p"]));
}

#[test]
fn r28_end_port_range_is_inclusive_at_both_bounds() {
    let c = web_ingress_ports("[{port: 32000, endPort: 32768}, {port: 5000, endPort: 5000, protocol: SCTP}]");
    assert_no_problems(&c);
    expect(&c, EXT4, X_WEB, TCP, 31999, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, TCP, 32000, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 32500, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 32768, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, TCP, 32769, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, UDP, 32000, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, SCTP, 4999, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_WEB, SCTP, 5000, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, SCTP, 5001, NotPod, Deny(&["x/p"]));
    // Up to the last port.
    let c = web_ingress_ports("[{port: 65000, endPort: 65535, protocol: UDP}]");
    expect(&c, EXT4, X_WEB, UDP, 65535, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_WEB, UDP, 64999, NotPod, Deny(&["x/p"]));
}

/// x/api has container port "http" on 8080/TCP and "dns" on 5353/UDP; x/other
/// (same labels) has "http" on 9090; x/client has "http" on 7070; y/api has
/// "http" on 8443; x/web declares no port.
fn named_port_world(policy: &str) -> Compiled {
    let pods = vec![
        pod("x", "api", "10.0.1.10,fd00::1:10", &[("app", "api")]).ports(&[
            ("http", "TCP", 8080),
            ("dns", "UDP", 5353),
            ("", "TCP", 9999),
        ]),
        pod("x", "other", "10.0.1.11", &[("app", "api")]).ports(&[("http", "TCP", 9090)]),
        pod("x", "client", X_CLIENT, &[("app", "client")]).ports(&[("http", "TCP", 7070)]),
        pod("y", "api", "10.0.2.10", &[("app", "api")]).ports(&[("http", "TCP", 8443)]),
        pod("x", "web", X_WEB, &[("app", "web")]),
    ];
    world(base_namespaces(), pods, &[policy])
}
const X_API: &str = "10.0.1.10";
const X_API6: &str = "fd00::1:10";
const X_OTHER: &str = "10.0.1.11";
const Y_API: &str = "10.0.2.10";

#[test]
fn r29_named_port_in_ingress_resolves_on_the_destination_pod() {
    let c = named_port_world(
        r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - ports: [{port: http}]
",
    );
    assert_no_problems(&c);
    expect(&c, X_CLIENT, X_API, TCP, 8080, Open, Allow("x/p", 0));
    expect(&c, EXT6, X_API6, TCP, 8080, NotPod, Allow("x/p", 0));
    // The number of the name on *this* pod, not on another pod with the same labels.
    expect(&c, X_CLIENT, X_API, TCP, 9090, Open, Deny(&["x/p"]));
    expect(&c, X_CLIENT, X_OTHER, TCP, 9090, Open, Allow("x/p", 0));
    expect(&c, X_CLIENT, X_OTHER, TCP, 8080, Open, Deny(&["x/p"]));
    // Nor the source's number for the name.
    expect(&c, X_CLIENT, X_API, TCP, 7070, Open, Deny(&["x/p"]));
    // An unnamed container port is not reachable by name.
    expect(&c, X_CLIENT, X_API, TCP, 9999, Open, Deny(&["x/p"]));
}

#[test]
fn r29_named_port_in_egress_resolves_on_the_destination_pod() {
    let c = named_port_world(
        r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: http}]
",
    );
    assert_no_problems(&c);
    expect(&c, X_CLIENT, X_API, TCP, 8080, Allow("x/p", 0), Open);
    expect(&c, X_CLIENT, X_OTHER, TCP, 9090, Allow("x/p", 0), Open);
    expect(&c, X_CLIENT, Y_API, TCP, 8443, Allow("x/p", 0), Open);
    expect(&c, X_CLIENT, Y_API, TCP, 8080, Deny(&["x/p"]), Open);
    // The source pod's own "http" (7070) means nothing for the destination.
    expect(&c, X_CLIENT, X_API, TCP, 7070, Deny(&["x/p"]), Open);
}

#[test]
fn r29_named_port_protocol_must_match_the_container_port() {
    let c = named_port_world(
        r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - ports: [{port: dns, protocol: UDP}, {port: http, protocol: UDP}]
",
    );
    expect(&c, EXT4, X_API, UDP, 5353, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_API, TCP, 5353, NotPod, Deny(&["x/p"]));
    // "http" is a TCP port on the pod: a UDP named-port rule does not reach it.
    expect(&c, EXT4, X_API, UDP, 8080, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_API, TCP, 8080, NotPod, Deny(&["x/p"]));
}

#[test]
fn r30_named_port_never_matches_a_destination_that_is_not_a_pod() {
    let c = named_port_world(
        r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
",
    );
    expect(&c, X_CLIENT, X_API, TCP, 8080, Allow("x/p", 0), Open);
    for port in [80, 7070, 8080, 8443, 9090] {
        expect(&c, X_CLIENT, EXT4, TCP, port, Deny(&["x/p"]), NotPod);
    }
    // A destination pod without that name.
    expect(&c, X_CLIENT, X_WEB, TCP, 8080, Deny(&["x/p"]), Open);
}

#[test]
fn r31_icmp_is_only_allowed_by_rules_without_ports() {
    let c = base(&[
        r"
metadata: {name: with-ports, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{protocol: TCP}, {protocol: UDP}, {protocol: SCTP}]
",
        r"
metadata: {name: without-ports, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 192.0.2.0/24}}, {ipBlock: {cidr: '2001:db8::/32'}}]
",
    ]);
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Allow("x/with-ports", 0));
    expect(&c, EXT4, X_WEB, ICMP, 0, NotPod, Deny(&["x/with-ports"]));
    expect(&c, EXT6, X_WEB6, ICMPV6, 0, NotPod, Deny(&["x/with-ports"]));
    // Whatever port value comes with a portless protocol.
    expect(&c, EXT4, X_WEB, ICMP, 80, NotPod, Deny(&["x/with-ports"]));
    expect(&c, EXT4, X_DB, ICMP, 0, NotPod, Allow("x/without-ports", 0));
    expect(&c, "198.51.100.1", X_DB, ICMP, 0, NotPod, Deny(&["x/without-ports"]));
}

// ---------------------------------------------------------------------------
// 7. Pods
// ---------------------------------------------------------------------------

#[test]
fn r32_dual_stack_pod_is_one_endpoint_with_both_addresses() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
"]);
    assert_eq!(c.table.pod_at(X_WEB6.parse().unwrap()), Some(("x", "web")));
    assert_eq!(c.table.pod_at(X_WEB.parse().unwrap()), Some(("x", "web")));
    expect(&c, Y_CLIENT6, X_WEB6, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    expect(&c, EXT6, X_WEB6, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, X_WEB, X_DB, TCP, 5432, Allow("x/p", 0), Open);
    expect(&c, X_WEB6, EXT6, TCP, 5432, Deny(&["x/p"]), NotPod);
}

#[test]
fn r32_pod_ip_is_used_when_pod_ips_is_absent() {
    // `pod()` with one address fills only status.podIP.
    let p = pod("x", "single", "10.0.1.50", &[("app", "web")]);
    assert!(p.status.as_ref().unwrap().pod_ips.is_none());
    let c = world(base_namespaces(), vec![p], &[DENY_ALL_INGRESS_X]);
    expect(&c, EXT4, "10.0.1.50", TCP, 80, NotPod, Deny(&["x/deny-in"]));
}

#[test]
fn r33_pods_without_an_address_are_not_endpoints() {
    let c = world(
        base_namespaces(),
        vec![pod("x", "pending", "", &[("app", "web")]), pod("x", "web", X_WEB, &[("app", "web")])],
        &[DENY_ALL_INGRESS_X],
    );
    assert_no_problems(&c);
    assert!(c.cluster.pod("x", "pending").is_none());
    assert!(c.cluster.pod("x", "web").is_some());
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/deny-in"]));
}

#[test]
fn r33_succeeded_and_failed_pods_are_not_endpoints() {
    for phase in ["Succeeded", "Failed"] {
        // The finished pod's address now belongs to a new pod (or to nobody).
        let pods = vec![
            pod("x", "old", X_WEB, &[("app", "db")]).phase(phase),
            pod("x", "new", X_WEB, &[("app", "web")]),
            pod("x", "gone", "10.0.1.99", &[("app", "web")]).phase(phase),
            pod("y", "client", Y_CLIENT, &[("app", "client")]),
        ];
        let c = world(
            base_namespaces(),
            pods,
            &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
"],
        );
        assert!(c.cluster.pod("x", "old").is_none(), "{phase}");
        assert_eq!(c.table.pod_at(X_WEB.parse().unwrap()), Some(("x", "new")));
        expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Open);
        expect(&c, Y_CLIENT, "10.0.1.99", TCP, 80, Open, NotPod);
    }
    // Pending and Unknown pods with an address are endpoints.
    for phase in ["Pending", "Unknown"] {
        let c = world(base_namespaces(), vec![pod("x", "p", X_WEB, &[]).phase(phase)], &[DENY_ALL_INGRESS_X]);
        expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/deny-in"]));
    }
}

#[test]
fn r34_host_network_pods_are_not_endpoints_their_address_is_the_node() {
    const NODE: &str = "172.31.0.5";
    let mut pods = base_pods();
    pods.push(pod("x", "agent", NODE, &[("app", "web")]).host_network());
    pods.push(pod("y", "agent", NODE, &[("app", "client")]).host_network());
    let c = world(
        base_namespaces(),
        pods,
        &[
            DENY_ALL_X,
            r"
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}]
",
            r"
metadata: {name: from-node, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 172.31.0.0/16}}]
",
        ],
    );
    assert_eq!(c.table.pod_at(NODE.parse().unwrap()), None);
    // deny-all selects x/agent by its labels, but it is not isolated: its traffic is the node's.
    expect(&c, NODE, EXT4, TCP, 80, NotPod, NotPod);
    // A selector peer does not match the host-network pod y/agent (app=client).
    expect(&c, NODE, X_DB, TCP, 5432, NotPod, Deny(&["x/deny-all", "x/from-clients"]));
    expect(&c, Y_CLIENT, X_DB, TCP, 5432, Open, Allow("x/from-clients", 0));
    // An ipBlock matches its (node) address.
    expect(&c, NODE, X_WEB, TCP, 80, NotPod, Allow("x/from-node", 0));
}

#[test]
fn r35_objects_without_namespace_are_in_default() {
    let c = world(
        vec![ns("default", &[("env", "dev")])],
        vec![pod("", "a", "10.0.9.1", &[("app", "a")]), pod("", "b", "10.0.9.2", &[("app", "b")])],
        &[
            r"
metadata: {name: only-a}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
",
            // An empty namespace is the default one too.
            r#"
metadata: {name: empty-ns, namespace: ""}
spec: {podSelector: {matchLabels: {app: nobody}}}
"#,
        ],
    );
    assert_no_problems(&c);
    assert!(c.cluster.pod("default", "a").is_some());
    assert_eq!(policy(&c, "default/only-a").namespace, "default");
    assert_eq!(policy(&c, "default/empty-ns").namespace, "default");
    expect(&c, "10.0.9.1", "10.0.9.2", TCP, 80, Open, Allow("default/only-a", 0));
    expect(&c, EXT4, "10.0.9.2", TCP, 80, NotPod, Deny(&["default/only-a"]));
}

#[test]
fn r36_namespace_missing_from_input_is_assumed_with_only_its_name_label() {
    let c = world(
        vec![ns("x", &[])],
        vec![pod("x", "web", X_WEB, &[("app", "web")]), pod("w", "client", "10.0.4.3", &[("app", "client")])],
        &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: w}}}]
"],
    );
    assert_problem(
        &c,
        Severity::Warning,
        "Pod w/client",
        "metadata.namespace",
        "namespace \"w\" is not in the input",
    );
    assert!(!c.has_errors());
    expect(&c, "10.0.4.3", X_WEB, TCP, 80, Open, Allow("x/p", 0));
    // The same for a policy's namespace.
    let c = world(vec![], vec![], &[DENY_ALL_X]);
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/deny-all",
        "metadata.namespace",
        "assuming it exists",
    );
}

// ---------------------------------------------------------------------------
// 8. Validation and fail-closed enforcement
// ---------------------------------------------------------------------------

/// One invalid policy (`spec` lines under `metadata: {name: bad, namespace: x}`),
/// the problem it must produce, and what it must isolate: [ingress, egress] and
/// whether its podSelector still applies (false: every pod of x).
struct Invalid {
    spec: &'static str,
    field: &'static str,
    message: &'static str,
    isolates: [bool; 2],
}

const INVALID: &[Invalid] = &[
    // policyTypes
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress, Egress, Ingress]\n",
        field: "spec.policyTypes",
        message: "may not specify more than two policyTypes",
        isolates: [true, true],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [ingress]\n  ingress: [{}]\n",
        field: "spec.policyTypes[0]",
        message: "Unsupported value: \"ingress\"",
        isolates: [true, true],
    },
    // peers
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {}}, {}]}]\n",
        field: "spec.ingress[0].from[1]",
        message: "must specify a peer",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]\n",
        field: "spec.egress[0].to[0]",
        message: "may not specify both ipBlock and another peer",
        isolates: [true, true],
    },
    // ipBlock
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: ''}}]}]\n",
        field: "spec.ingress[0].from[0].ipBlock.cidr",
        message: "Required value",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]\n",
        field: "spec.ingress[0].from[0].ipBlock.cidr",
        message: "missing prefix length",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
        field: "spec.ingress[0].from[0].ipBlock.cidr",
        message: "prefix length must be 0-32",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16]}}]}]\n",
        field: "spec.ingress[0].from[0].ipBlock.except[1]",
        message: "must be a strict subset of `cidr`",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]\n",
        field: "spec.ingress[0].from[0].ipBlock.except[0]",
        message: "must be a strict subset of `cidr`",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]}]\n",
        field: "spec.ingress[0].from[0].ipBlock.except[0]",
        message: "must be a strict subset of `cidr`",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.300/24]}}]}]\n",
        field: "spec.egress[0].to[0].ipBlock.except[0]",
        message: "not an IP address",
        isolates: [false, true],
    },
    // selectors inside peers
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: 'no spaces'}}}]}]\n",
        field: "spec.ingress[0].from[0].podSelector.matchLabels[app]",
        message: "invalid label value",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}]}]\n",
        field: "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        message: "must be specified when `operator` is 'In' or 'NotIn'",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists, values: [a]}]}}]}]\n",
        field: "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        message: "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}]}]\n",
        field: "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
        message: "unsupported value \"Equals\"",
        isolates: [true, false],
    },
    Invalid {
        // A prefix label may be longer than 63 characters (IsDNS1123Subdomain has no
        // per-label limit), but not an uppercase one.
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: Example.com/app, operator: Exists}]}}]}]\n",
        field: "spec.ingress[0].from[0].podSelector.matchExpressions[0].key",
        message: "invalid label key",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: -app, operator: Exists}]}}]}]\n",
        field: "spec.ingress[0].from[0].podSelector.matchExpressions[0].key",
        message: "invalid label key",
        isolates: [true, false],
    },
    // ports
    Invalid {
        // What kubectl's YAML 1.1 reads as the number 1000 is a bad port name here: said so.
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: '1_000'}]}]\n",
        field: "spec.ingress[0].ports[0].port",
        message: "meant as a number? write it unquoted in plain decimal",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80, protocol: ICMP}]}]\n",
        field: "spec.ingress[0].ports[0].protocol",
        message: "Unsupported value: \"ICMP\"",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80, protocol: tcp}]}]\n",
        field: "spec.ingress[0].ports[0].protocol",
        message: "Unsupported value: \"tcp\"",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 0}]}]\n",
        field: "spec.ingress[0].ports[0].port",
        message: "must be between 1 and 65535, inclusive",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 65536}]}]\n",
        field: "spec.ingress[0].ports[0].port",
        message: "must be between 1 and 65535, inclusive",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{endPort: 90}]}]\n",
        field: "spec.ingress[0].ports[0].endPort",
        message: "may not be specified when `port` is not specified",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n",
        field: "spec.ingress[0].ports[0].endPort",
        message: "must be greater than or equal to `port`",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80, endPort: 65536}]}]\n",
        field: "spec.ingress[0].ports[0].endPort",
        message: "must be between 1 and 65535, inclusive",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: http, endPort: 90}]}]\n",
        field: "spec.ingress[0].ports[0].endPort",
        message: "may not be specified when `port` is non-numeric",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress, Egress]\n  egress: [{ports: [{port: HTTP}]}]\n",
        field: "spec.egress[0].ports[0].port",
        message: "a port name must be",
        isolates: [true, true],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: '8080'}]}]\n",
        field: "spec.ingress[0].ports[0].port",
        message: "a port name must be",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: my--port}]}]\n",
        field: "spec.ingress[0].ports[0].port",
        message: "a port name must be",
        isolates: [true, false],
    },
    Invalid {
        spec: "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: abcdefghijklmnop}]}]\n",
        field: "spec.ingress[0].ports[0].port",
        message: "a port name must be",
        isolates: [true, false],
    },
];

#[test]
fn r37_every_validation_error_is_reported_at_its_field_and_fails_closed() {
    for case in INVALID {
        let yaml = format!("metadata: {{name: bad, namespace: x}}\nspec:\n{}", case.spec);
        let c = base(&[&yaml]);
        let ctx = format!("case {}: {}", case.field, case.spec);
        let errors: Vec<_> = problems(&c).into_iter().filter(|p| p.0 == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{ctx}: {errors:#?}");
        let (_, object, field, message) = &errors[0];
        assert_eq!(object, "NetworkPolicy x/bad", "{ctx}");
        assert_eq!(field, case.field, "{ctx}");
        assert!(message.contains(case.message), "{ctx}: message {message:?}");
        let p = policy(&c, "x/bad");
        assert!(!p.valid, "{ctx}");
        assert_eq!(p.isolates, case.isolates, "{ctx}");
        assert!(p.rules(Direction::Ingress).is_empty() && p.rules(Direction::Egress).is_empty(), "{ctx}");
        // The policy selects x/web only (its podSelector was valid) and allows nothing.
        let ingress = if case.isolates[0] { Deny(&["x/bad"]) } else { Open };
        let egress = if case.isolates[1] { Deny(&["x/bad"]) } else { Open };
        expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, ingress);
        expect(&c, EXT4, X_WEB, TCP, 80, NotPod, ingress);
        expect(&c, X_WEB, X_DB, TCP, 80, egress, Open);
        expect(&c, X_CLIENT, X_DB, TCP, 80, Open, Open);
    }
}

#[test]
fn r37_a_policy_whose_name_the_api_server_refuses_fails_closed() {
    // `Allow_Web` is no DNS subdomain: the API server would refuse the object;
    // from a manifest file it is reported, and isolates what it selects.
    let c = base(&[r"
metadata: {name: Allow_Web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"]);
    assert_problem(&c, Severity::Error, "NetworkPolicy x/Allow_Web", "metadata.name", "DNS subdomain");
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/Allow_Web"]));
}

#[test]
fn r37_a_policy_whose_labels_or_annotations_the_api_server_refuses_fails_closed() {
    // `ValidateObjectMeta`: label keys and values, annotation keys (checked in
    // lower case, so `Example.com/Note` passes) and their total size.
    let c = base(&[r"
metadata:
  name: p
  namespace: x
  labels: {'bad key': v, app: -x-}
  annotations: {'Example.com/Note': free text, 'bad key!': v}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"]);
    assert_problem(&c, Severity::Error, "NetworkPolicy x/p", "metadata.labels[bad key]", "invalid label key");
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/p",
        "metadata.labels[app]",
        "invalid label value \"-x-\"",
    );
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/p",
        "metadata.annotations[bad key!]",
        "invalid annotation key \"bad key!\"",
    );
    assert_eq!(problems(&c).len(), 3, "{:#?}", problems(&c));
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    // Pods and namespaces too; an annotation value is free text, but all of
    // them together hold at most 256 KiB.
    let mut pods = base_pods();
    pods[0].metadata.annotations = Some([("bad key!".to_string(), "v".to_string())].into());
    let mut namespaces = base_namespaces();
    namespaces[1].metadata.annotations = Some([("big".to_string(), "v".repeat(256 << 10))].into());
    namespaces[2].metadata.annotations = Some([("big".to_string(), "v".repeat((256 << 10) - 3))].into());
    let c = world(namespaces, pods, &[]);
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/web",
        "metadata.annotations[bad key!]",
        "invalid annotation key",
    );
    assert_problem(&c, Severity::Error, "Namespace y", "metadata.annotations", "Too long: 262147 bytes");
    assert_eq!(problems(&c).len(), 2, "{:#?}", problems(&c));
}

#[test]
fn r37_a_namespace_the_api_server_refuses_is_named_in_pods_and_policies() {
    // `metadata.namespace` of a pod or policy must be a DNS label too, as its
    // Namespace's name: "X " (a capital, a trailing space) is reported as an
    // error, and the policy fails closed.
    let mut pods = base_pods();
    pods.push(pod("X ", "web", "10.0.9.1", &[("app", "web")]));
    let c = world(
        base_namespaces(),
        pods,
        &["
metadata: {name: allow, namespace: 'X '}
spec:
  podSelector: {}
  ingress: [{}]
"],
    );
    for object in ["Pod X /web", "NetworkPolicy X /allow"] {
        assert_problem(
            &c,
            Severity::Error,
            object,
            "metadata.namespace",
            "Invalid value: \"X \": a namespace name is a DNS label",
        );
    }
    expect(&c, X_CLIENT, "10.0.9.1", TCP, 80, Open, Deny(&["X /allow"]));
}

#[test]
fn r37_an_invalid_policy_only_adds_isolation_other_policies_still_allow() {
    let c = base(&[
        r"
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]
",
        r"
metadata: {name: good, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
",
    ]);
    assert!(c.has_errors());
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/good", 0));
    // What the invalid rule meant to allow (10.0.0.0/8) is not allowed.
    expect(&c, Y_CLIENT, X_WEB, TCP, 80, Open, Deny(&["x/bad", "x/good"]));
}

#[test]
fn r38_invalid_pod_selector_isolates_every_pod_of_the_namespace() {
    for selector in [
        "{matchLabels: {'app/': web}}",
        "{matchLabels: {app: -web}}",
        "{matchExpressions: [{key: app, operator: NotIn}]}",
        "{matchExpressions: [{key: app, operator: DoesNotExist, values: [web]}]}",
        "{matchExpressions: [{key: app, operator: Has}]}",
        "{matchExpressions: [{key: 'Example.com/app', operator: Exists}]}",
    ] {
        let yaml = format!(
            "metadata: {{name: bad, namespace: x}}\nspec:\n  podSelector: {selector}\n  policyTypes: [Egress]\n  egress: [{{}}]\n"
        );
        let c = base(&[&yaml]);
        let ps = problems(&c);
        assert!(
            ps.iter().all(|p| p.0 == Severity::Error && p.2.starts_with("spec.podSelector.")),
            "{selector}: {ps:#?}"
        );
        assert!(!ps.is_empty(), "{selector}");
        let p = policy(&c, "x/bad");
        assert!(p.pod_selector.is_everything(), "{selector}");
        assert_eq!(p.isolates, [false, true], "{selector}");
        // Every pod of x is isolated for egress, with no rule (egress: [{}] is dropped).
        for src in [X_WEB, X_DB, X_CLIENT] {
            expect(&c, src, EXT4, TCP, 80, Deny(&["x/bad"]), NotPod);
        }
        expect(&c, Y_WEB, EXT4, TCP, 80, Open, NotPod);
    }
    // The field paths.
    let c = base(&[
        "metadata: {name: bad, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: -web}, matchExpressions: [{key: app, operator: In}]}\n",
    ]);
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/bad",
        "spec.podSelector.matchLabels[app]",
        "invalid label value",
    );
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/bad",
        "spec.podSelector.matchExpressions[0].values",
        "must be specified",
    );
}

#[test]
fn r39_invalid_policy_types_isolates_both_directions() {
    let c = base(&[r"
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egres]
  ingress: [{}]
  egress: [{}]
"]);
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/bad",
        "spec.policyTypes[1]",
        "Unsupported value: \"Egres\"",
    );
    // No "rules ignored" warning: we cannot tell which direction was meant.
    assert!(!problems(&c).iter().any(|p| p.0 == Severity::Warning), "{:#?}", problems(&c));
    expect(&c, X_DB, EXT4, TCP, 80, Deny(&["x/bad"]), NotPod);
    expect(&c, EXT4, X_DB, TCP, 80, NotPod, Deny(&["x/bad"]));
    expect(&c, X_WEB, EXT4, TCP, 80, Open, NotPod);
}

#[test]
fn r40_rules_of_an_ignored_direction_are_still_validated() {
    // The API server validates every rule, whatever policyTypes says.
    let c = base(&[r"
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{}]
  ingress: [{from: [{}]}]
"]);
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/bad",
        "spec.ingress[0].from[0]",
        "must specify a peer",
    );
    assert_problem(&c, Severity::Warning, "NetworkPolicy x/bad", "spec.ingress", "ignored");
    let p = policy(&c, "x/bad");
    assert!(!p.valid);
    assert_eq!(p.isolates, [false, true]);
    // Egress fails closed (its valid allow-all rule is dropped); ingress stays open.
    expect(&c, X_WEB, EXT4, TCP, 80, Deny(&["x/bad"]), NotPod);
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Open);
}

#[test]
fn r41_missing_name_is_invalid() {
    let c = base(&[
        "metadata: {namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{}]\n",
    ]);
    assert_problem(&c, Severity::Error, "NetworkPolicy x/", "metadata.name", "Required value");
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/"]));
}

#[test]
fn r41_missing_spec_isolates_ingress_of_the_whole_namespace() {
    // No spec: the defaults apply (podSelector {} and policyTypes [Ingress]), no rules.
    let c = base(&["metadata: {name: nospec, namespace: x}\n"]);
    assert_eq!(policy(&c, "x/nospec").isolates, [true, false]);
    assert!(policy(&c, "x/nospec").pod_selector.is_everything());
    expect(&c, EXT4, X_CLIENT, TCP, 80, NotPod, Deny(&["x/nospec"]));
    expect(&c, Y_CLIENT, X_WEB6, TCP, 80, Open, Deny(&["x/nospec"]));
    expect(&c, X_CLIENT, EXT4, TCP, 80, Open, NotPod);
}

#[test]
fn r41_missing_spec_is_valid() {
    let c = base(&["metadata: {name: nospec, namespace: x}\n"]);
    assert!(!c.has_errors(), "{:#?}", problems(&c));
    assert!(policy(&c, "x/nospec").valid);
}

#[test]
fn r06_duplicate_policy_type_is_accepted() {
    // Two entries, both supported: the API server accepts it.
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress, Egress]
"]);
    assert_no_problems(&c);
    assert_eq!(policy(&c, "x/p").isolates, [false, true]);
    expect(&c, X_WEB, EXT4, TCP, 80, Deny(&["x/p"]), NotPod);
}

#[test]
fn r42_invalid_pods_and_namespaces_are_reported_at_their_field() {
    let bad_ip = pod("x", "bad-ip", "10.0.1.20,not-an-ip", &[]);
    let bad_port_name = pod("x", "bad-port-name", "10.0.1.21", &[]).ports(&[("HTTP", "TCP", 80)]);
    let bad_protocol = pod("x", "bad-protocol", "10.0.1.22", &[]).ports(&[("", "ICMP", 80)]);
    let bad_number =
        pod("x", "bad-number", "10.0.1.23", &[]).ports(&[("", "TCP", 80), ("http", "TCP", 70000)]);
    let no_name = pod("x", "", "10.0.1.24", &[]);
    let c = world(
        vec![ns("x", &[]), ns("", &[])],
        vec![bad_ip, bad_port_name, bad_protocol, bad_number, no_name],
        &[],
    );
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/bad-ip",
        "status.podIPs[1].ip",
        "invalid IP address \"not-an-ip\"",
    );
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/bad-port-name",
        "spec.containers[1].ports[0].name",
        "port name",
    );
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/bad-protocol",
        "spec.containers[1].ports[0].protocol",
        "Unsupported value: \"ICMP\"",
    );
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/bad-number",
        "spec.containers[1].ports[1].containerPort",
        "between 1 and 65535",
    );
    assert_problem(&c, Severity::Error, "Pod x/", "metadata.name", "Required value");
    assert_problem(&c, Severity::Error, "Namespace ", "metadata.name", "Required value");
    // Every pod with a valid address stays an endpoint (fail-closed): only the bad
    // fields are dropped. The pod without a name cannot be addressed and is left out.
    let kept: Vec<&str> = c.cluster.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(kept, ["bad-ip", "bad-number", "bad-port-name", "bad-protocol"]);
    let bad_ip = c.cluster.pod("x", "bad-ip").unwrap();
    assert_eq!(bad_ip.ips, vec!["10.0.1.20".parse::<std::net::IpAddr>().unwrap()]);
    let bad_number = c.cluster.pod("x", "bad-number").unwrap();
    assert!(bad_number.named_ports.is_empty(), "the out-of-range named port is dropped");
}

#[test]
fn r42_invalid_pod_with_a_valid_address_stays_isolated() {
    let bad = pod("x", "bad-port-name", "10.0.1.21", &[("app", "web")]).ports(&[("HTTP", "TCP", 80)]);
    let c = world(base_namespaces(), vec![bad], &[DENY_ALL_INGRESS_X]);
    assert!(c.has_errors());
    expect(&c, EXT4, "10.0.1.21", TCP, 80, NotPod, Deny(&["x/deny-in"]));
}

#[test]
fn r37_ip_block_accepts_what_the_api_server_accepts() {
    let c = web_ingress_from("    - ipBlock: {cidr: 010.0.0.0/8}\n");
    assert_eq!(problems(&c).len(), 1, "{:#?}", problems(&c));
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "read as 10.0.0.0/8",
    );
    expect(&c, "10.1.2.3", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
}

#[test]
fn r18_ip_block_octets_are_read_like_the_api_server_does() {
    let c = web_ingress_from("    - ipBlock: {cidr: 10.0.0.0001/8}\n");
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "leading zeros",
    );
    expect(&c, "10.1.2.3", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    // IPv6 groups of more than four digits, as Go's old parser reads them.
    let c = web_ingress_from("    - ipBlock: {cidr: 'fd00:00000::/64'}\n");
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "leading zeros",
    );
    assert!(!problems(&c).iter().any(|p| p.0 == Severity::Error), "{:#?}", problems(&c));
    expect(&c, "fd00::7", X_WEB6, TCP, 80, NotPod, Allow("x/p", 0));
    // A prefix length with a leading zero, which Go's netip refuses too.
    let c = web_ingress_from("    - ipBlock: {cidr: 10.0.0.0/08}\n");
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "leading zeros in an octet, group or prefix length), read as 10.0.0.0/8",
    );
    expect(&c, "10.1.2.3", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    let c = web_ingress_from("    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}\n");
    assert_no_problems(&c);
    let c = web_ingress_from("    - ipBlock: {cidr: 'fd00:10000::/64'}\n");
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "not an IP address",
    );
}

#[test]
fn r18_a_pod_address_with_leading_zeros_is_read_like_the_api_server_does() {
    // `status.podIP` is a legacy field: `010.0.0.9` is 10.0.0.9, not an invalid pod left out.
    let mut pods = base_pods();
    pods.push(pod("x", "zeros", "010.0.0.9", &[("app", "web")]));
    let c = world(base_namespaces(), pods, &[DENY_ALL_INGRESS_X]);
    assert_no_problems(&c);
    expect(&c, EXT4, "10.0.0.9", TCP, 80, NotPod, Deny(&["x/deny-in"]));
}

#[test]
fn r18_an_ipv4_mapped_pod_address_is_the_pods_ipv4_address() {
    // Kubernetes reads `::ffff:10.0.0.9` as 10.0.0.9 (the API server warns);
    // read as IPv6, the pod's real packets would skip its isolation.
    let mut pods = base_pods();
    pods.push(pod("x", "mapped", "::ffff:10.0.0.9", &[("app", "web")]));
    let c = world(base_namespaces(), pods, &[DENY_ALL_INGRESS_X]);
    assert_problem(
        &c,
        Severity::Warning,
        "Pod x/mapped",
        "status.podIP",
        "read as the IPv4 address 10.0.0.9",
    );
    assert!(!c.problems.iter().any(|p| p.severity == Severity::Error), "{:?}", c.problems);
    expect(&c, EXT4, "10.0.0.9", TCP, 80, NotPod, Deny(&["x/deny-in"]));
    // The mapped form on the wire is IPv6 traffic from an address no pod has.
    expect(&c, EXT6, "::ffff:10.0.0.9", TCP, 80, NotPod, NotPod);
}

#[test]
fn r33_what_the_api_server_refuses_in_pods_and_namespaces_is_reported_and_fails_closed() {
    // A misspelled phase: the pod stays an endpoint (isolated), reported.
    let mut pods = base_pods();
    let mut typo = pod("x", "typo", "10.0.1.50", &[("app", "web")]);
    typo.status.as_mut().unwrap().phase = Some("Runing".into());
    pods.push(typo);
    // podIP that is not podIPs[0]: both addresses are the pod's, reported.
    let mut split = pod("x", "split", "10.0.1.60,fd00::1:60", &[("app", "web")]);
    split.status.as_mut().unwrap().pod_ip = Some("10.0.1.61".into());
    pods.push(split);
    // Bad names and labels.
    pods.push(pod("x", "Bad_Name", "10.0.1.70", &[("app ", "web")]));
    // Two IPv4 addresses, one of them twice: each is the pod's, the list is reported.
    pods.push(pod("x", "two-v4", "10.0.1.80,10.0.1.81,10.0.1.81", &[("app", "web")]));
    // One port name twice in one container.
    pods.push(
        pod("x", "dup-port", "10.0.1.90", &[("app", "web")])
            .ports(&[("web", "TCP", 8080), ("web", "TCP", 9090)]),
    );
    // An empty phase is an absent one: no problem.
    let mut empty_phase = pod("x", "no-phase", "10.0.1.95", &[("app", "web")]);
    empty_phase.status.as_mut().unwrap().phase = Some(String::new());
    pods.push(empty_phase);
    // A `podIP` that is no address, next to a good `podIPs`.
    let mut garbage = pod("x", "garbage", "10.0.1.96,fd00::1:96", &[("app", "web")]);
    garbage.status.as_mut().unwrap().pod_ip = Some("10.0.1.x".into());
    pods.push(garbage);
    // Pods policy does not apply to are still reported for bad labels.
    pods.push(pod("x", "on-host", "192.0.2.77", &[("app ", "web")]).host_network());
    pods.push(pod("x", "done", "10.0.1.97", &[("app ", "web")]).phase("Succeeded"));
    let mut namespaces = base_namespaces();
    namespaces.push(ns("A_b", &[]));
    let c = world(namespaces, pods, &[DENY_ALL_INGRESS_X]);
    assert_problem(&c, Severity::Error, "Pod x/garbage", "status.podIP", "invalid IP address \"10.0.1.x\"");
    assert_problem(&c, Severity::Error, "Pod x/on-host", "metadata.labels[app ]", "invalid label key");
    assert_problem(&c, Severity::Error, "Pod x/done", "metadata.labels[app ]", "invalid label key");
    assert_problem(&c, Severity::Error, "Pod x/typo", "status.phase", "Unsupported value: \"Runing\"");
    assert_problem(&c, Severity::Error, "Pod x/split", "status.podIP", "must be the first of status.podIPs");
    assert_problem(&c, Severity::Error, "Pod x/Bad_Name", "metadata.name", "DNS subdomain");
    assert_problem(&c, Severity::Error, "Pod x/Bad_Name", "metadata.labels[app ]", "invalid label key");
    assert_problem(&c, Severity::Error, "Namespace A_b", "metadata.name", "DNS label");
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/two-v4",
        "status.podIPs[1].ip",
        "no more than one IP for each IP family",
    );
    assert_problem(&c, Severity::Error, "Pod x/two-v4", "status.podIPs[2].ip", "Duplicate value");
    // (`ports` adds a container after the pod's first.)
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/dup-port",
        "spec.containers[1].ports[1].name",
        "Duplicate value: \"web\"",
    );
    assert!(!c.problems.iter().any(|p| p.object.name == "no-phase"), "{:?}", c.problems);
    for ip in [
        "10.0.1.50",
        "10.0.1.60",
        "10.0.1.61",
        "10.0.1.70",
        "10.0.1.80",
        "10.0.1.81",
        "10.0.1.90",
        "10.0.1.95",
        "10.0.1.96",
    ] {
        expect(&c, EXT4, ip, TCP, 80, NotPod, Deny(&["x/deny-in"]));
    }
    // The pods policy does not apply to stay so, reported or not.
    expect(&c, EXT4, "192.0.2.77", TCP, 80, NotPod, NotPod);
    expect(&c, EXT4, "10.0.1.97", TCP, 80, NotPod, NotPod);
}

#[test]
fn r22_a_label_key_prefix_is_a_subdomain_of_any_label_length() {
    let long = "a".repeat(64);
    let c = web_ingress_from(&format!(
        "    - podSelector: {{matchExpressions: [{{key: {long}.example.com/app, operator: DoesNotExist}}]}}\n"
    ));
    assert_no_problems(&c);
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
}

#[test]
fn r18_an_ipv4_mapped_block_is_an_ipv4_block() {
    // Go reads `::ffff:a.b.c.d/n` (n >= 96) as the IPv4 block a.b.c.d/(n-96), and the
    // API server warns to write it so: so do we, in the cidr and in an except.
    let c =
        web_ingress_from("    - ipBlock: {cidr: '::ffff:010.0.0.0/104', except: ['::ffff:10.1.0.0/112']}\n");
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "read as the IPv4 block 10.0.0.0/8",
    );
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "10.1.0.0/16",
    );
    expect(&c, "10.2.3.4", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    expect(&c, "10.1.2.3", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    // A mapped except of a plain IPv4 block is inside it.
    let c = web_ingress_from("    - ipBlock: {cidr: 10.0.0.0/8, except: ['::ffff:10.1.0.0/112']}\n");
    assert!(c.problems.iter().all(|p| p.severity == Severity::Warning), "{:#?}", problems(&c));
    expect(&c, "10.1.2.3", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    expect(&c, "10.2.0.1", X_WEB, TCP, 80, NotPod, Allow("x/p", 0));
    // Strictness compares the prefix lengths as written, as the API server does:
    // /8 against /104 is valid (and excepts the whole block)...
    let c = web_ingress_from("    - ipBlock: {cidr: 10.0.0.0/8, except: ['::ffff:10.0.0.0/104']}\n");
    assert!(c.problems.iter().all(|p| p.severity == Severity::Warning), "{:#?}", problems(&c));
    expect(&c, "10.2.0.1", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    // The warning does not advise the IPv4 form, which would be refused.
    let c = web_ingress_from("    - ipBlock: {cidr: 0.0.0.0/0, except: ['::ffff:0.0.0.0/96']}\n");
    assert_eq!(problems(&c).len(), 1, "{:#?}", problems(&c));
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "read as the IPv4 block 0.0.0.0/0: all of `cidr` 0.0.0.0/0, so this ipBlock matches no address",
    );
    expect(&c, "192.0.2.1", X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    // ...and /104 against /16 is not.
    let c = web_ingress_from("    - ipBlock: {cidr: '::ffff:10.0.0.0/104', except: [10.1.0.0/16]}\n");
    assert_problem(
        &c,
        Severity::Error,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strict subset",
    );
}

// ---------------------------------------------------------------------------
// 9. Connections, not packets
// ---------------------------------------------------------------------------

#[test]
fn r43_a_verdict_is_about_the_direction_that_opens_the_connection() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
"]);
    // web may open a connection to db:5432 (replies pass through conntrack)...
    expect(&c, X_WEB, X_DB, TCP, 5432, Open, Allow("x/p", 0));
    // ...but db may not open one to web: a reply is not a new flow to ask about.
    expect(&c, X_DB, X_WEB, TCP, 40000, Deny(&["x/p"]), Open);
}

// ---------------------------------------------------------------------------
// Where implementations differ: what Portcullis does
// ---------------------------------------------------------------------------

#[test]
fn d1_node_address_is_an_ordinary_non_pod_address() {
    // Upstream allows ingress from the pod's own node always; the compiler does
    // not know node addresses, so node traffic is denied by ingress isolation
    // unless an ipBlock allows it.
    const NODE: &str = "172.31.0.5";
    let c = base(&[DENY_ALL_INGRESS_X]);
    expect(&c, NODE, X_WEB, TCP, 80, NotPod, Deny(&["x/deny-in"]));
    expect(&c, X_WEB, NODE, TCP, 10250, Open, NotPod);
}

#[test]
fn d2_pod_to_itself_is_evaluated_like_any_other_pair() {
    let c = base(&[DENY_ALL_X]);
    expect(&c, X_WEB, X_WEB, TCP, 80, Deny(&["x/deny-all"]), Deny(&["x/deny-all"]));
    // A rule naming the pod itself allows it.
    let c = base(&[r"
metadata: {name: self, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"]);
    expect(&c, X_WEB, X_WEB, TCP, 80, Open, Allow("x/self", 0));
    expect(&c, X_WEB6, X_WEB6, TCP, 80, Open, Allow("x/self", 0));
}

#[test]
fn d3_port_name_declared_by_several_containers_matches_every_number() {
    let pods = vec![pod("x", "api", X_API, &[("app", "api")])
        .ports(&[("http", "TCP", 8080)])
        .ports(&[("http", "TCP", 9090)])];
    let c = world(
        base_namespaces(),
        pods,
        &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
"],
    );
    assert_no_problems(&c);
    expect(&c, EXT4, X_API, TCP, 8080, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_API, TCP, 9090, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_API, TCP, 8081, NotPod, Deny(&["x/p"]));
}

#[test]
fn d4_sidecar_ports_are_named_ports_other_init_containers_are_not() {
    // A sidecar (an init container with restartPolicy: Always) runs alongside
    // the app containers: its named ports are the pod's. An ordinary init
    // container has finished before the pod serves: its names resolve to nothing.
    let mut p = pod("x", "api", X_API, &[("app", "api")]);
    let port = |n: i32, name: &str| ContainerPort {
        container_port: n,
        name: Some(name.into()),
        ..Default::default()
    };
    p.spec.as_mut().unwrap().init_containers = Some(vec![
        Container { name: "migrate".into(), ports: Some(vec![port(15000, "setup")]), ..Default::default() },
        Container {
            name: "sidecar".into(),
            restart_policy: Some("Always".into()),
            ports: Some(vec![port(15090, "metrics")]),
            ..Default::default()
        },
    ]);
    let c = world(
        base_namespaces(),
        vec![p],
        &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: metrics}, {port: setup}]}]
"],
    );
    expect(&c, EXT4, X_API, TCP, 15090, NotPod, Allow("x/p", 0));
    expect(&c, EXT4, X_API, TCP, 15091, NotPod, Deny(&["x/p"]));
    expect(&c, EXT4, X_API, TCP, 15000, NotPod, Deny(&["x/p"]));
    // An init container's bad port is reported at its own path.
    let mut bad = pod("x", "bad", X_WEB, &[("app", "bad")]);
    bad.spec.as_mut().unwrap().init_containers =
        Some(vec![Container { name: "i".into(), ports: Some(vec![port(0, "x")]), ..Default::default() }]);
    let c = world(base_namespaces(), vec![bad], &[]);
    assert_problem(
        &c,
        Severity::Error,
        "Pod x/bad",
        "spec.initContainers[0].ports[0].containerPort",
        "between 1 and 65535",
    );
}

#[test]
fn d10_an_invalid_value_in_match_expressions_is_kept_as_written() {
    // Objects stored before Kubernetes 1.26 may carry one: reported as a
    // warning, the policy stays valid, and the value matches no label.
    let c = world(
        base_namespaces(),
        vec![
            pod("x", "web", X_WEB, &[("app", "web")]),
            pod("x", "client", X_CLIENT, &[("app", "client"), ("team", "a")]),
            pod("x", "api", X_API, &[("app", "api")]),
        ],
        &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: team, operator: In, values: ['payments/eu']}]}
    - podSelector: {matchLabels: {app: client}}
  - from:
    - podSelector: {matchExpressions: [{key: app, operator: NotIn, values: ['not ok', client]}]}
    ports: [{port: 8080}]
"],
    );
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values[0]",
        "refused since Kubernetes 1.26",
    );
    assert!(c.problems.iter().all(|p| p.severity != Severity::Error), "{:?}", c.problems);
    // The other peer of the rule still allows.
    expect(&c, X_CLIENT, X_WEB, TCP, 80, Open, Allow("x/p", 0));
    // `In` by the invalid value matches nobody; `NotIn` excludes nobody by it.
    expect(&c, X_API, X_WEB, TCP, 80, Open, Deny(&["x/p"]));
    expect(&c, X_API, X_WEB, TCP, 8080, Open, Allow("x/p", 1));

    // In spec.podSelector: the policy selects what the selector matches as
    // written (not the whole namespace, as an unusable selector would); in a
    // namespaceSelector, the value matches no namespace.
    let c = world(
        base_namespaces(),
        vec![pod("x", "web", X_WEB, &[("app", "web")]), pod("x", "api", X_API, &[("app", "api")])],
        &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, 'web/v2']}]}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: ['a/b', a]}]}}]
"],
    );
    assert_problem(
        &c,
        Severity::Warning,
        "NetworkPolicy x/p",
        "spec.podSelector.matchExpressions[0].values[1]",
        "refused since Kubernetes 1.26",
    );
    assert!(c.problems.iter().all(|p| p.severity != Severity::Error), "{:?}", c.problems);
    expect(&c, EXT4, X_API, TCP, 80, NotPod, Open);
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Deny(&["x/p"]));
    // x is team=a: its pods are allowed by the valid value.
    expect(&c, X_API, X_WEB, TCP, 80, Open, Allow("x/p", 0));
}

#[test]
fn d5_same_address_for_two_live_pods_first_by_name_wins() {
    let c = world(
        base_namespaces(),
        vec![pod("x", "b", X_WEB, &[("app", "b")]), pod("x", "a", X_WEB, &[("app", "a")])],
        &[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
"],
    );
    assert_eq!(c.table.pod_at(X_WEB.parse().unwrap()), Some(("x", "a")));
    assert_problem(&c, Severity::Warning, "Pod x/b", "status.podIPs", "also claimed by pod x/a");
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Open);
}

/// An egress side whose first rule without peers allows every protocol
/// answers from the pod's address entry, without its peer table: the same
/// rule for every peer (a pod, a non-pod address inside or outside its
/// ipBlocks) and every protocol; and a patch that narrows the rule takes
/// that answer away.
#[test]
fn d6_an_egress_side_allowing_everything_names_that_rule_for_every_flow() {
    use policy_compiler::{Compilation, IncrementalCompiler, PolicyChange};
    let open = r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
    ports: [{port: 443}]
  - {}
";
    let c = base(&[open]);
    for (dst, proto, port, ingress) in [
        (Y_WEB, TCP, 80, Open),
        (X_DB, UDP, 53, Open),
        (EXT4, TCP, 443, NotPod),
        (EXT4, TCP, 80, NotPod),
        ("198.51.100.7", ICMP, 0, NotPod),
    ] {
        expect(&c, X_WEB, dst, proto, port, Allow("x/p", 1), ingress);
    }
    expect(&c, X_WEB6, EXT6, UDP, 9, Allow("x/p", 1), NotPod);
    let mut inc = IncrementalCompiler::new(c.cluster.clone());
    let narrowed = open.replace("  - {}\n", "");
    let ch = PolicyChange {
        namespace: "x".into(),
        name: "p".into(),
        policy: Some(policy(&world(base_namespaces(), base_pods(), &[&narrowed]), "x/p").clone()),
    };
    assert_eq!(inc.apply(vec![ch]), Compilation::Patched { namespaces: vec!["x".into()] });
    let patched = Compiled { table: inc.table().clone(), cluster: inc.cluster().clone(), ..c };
    expect(&patched, X_WEB, EXT4, TCP, 443, Allow("x/p", 0), NotPod);
    expect(&patched, X_WEB, EXT4, TCP, 80, Deny(&["x/p"]), NotPod);
    expect(&patched, X_WEB, Y_WEB, TCP, 80, Deny(&["x/p"]), Open);
}

#[test]
fn d6_allowed_side_names_rules_without_peers_before_peer_rules() {
    let c = base(&[r"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 192.0.2.0/24}}]
  - {}
"]);
    // Documented order (Side::Allowed): rules without peers are tested first, so rule 1
    // is named although rule 0 matches too; `explain` lists both.
    expect(&c, EXT4, X_WEB, TCP, 80, NotPod, Allow("x/p", 1));
}
