//! Answers for people and programs: verdict reasons, `explain`, and the
//! reachability matrix.

use std::fmt::Write as _;
use std::net::IpAddr;

use policy_compiler::model::{Direction, NamespaceMatch, Peer, PodInfo, IPPROTO_ICMP, IPPROTO_ICMPV6};
use policy_compiler::reference::{self, SideDetail};
use policy_compiler::{Cluster, Compiled, DecisionTable, Protocol, Side, Verdict};
use serde::Serialize;
use serde_json::{json, Value};

/// A protocol given on the command line or in a JSON query: a name
/// (`TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`, any case) or an IP protocol number.
pub fn parse_protocol(s: &str) -> Result<u8, String> {
    if let Ok(n) = s.parse::<u64>() {
        return u8::try_from(n)
            .map_err(|_| format!("unknown protocol {n} (TCP, UDP, SCTP, ICMP, ICMPv6 or a number 0-255)"));
    }
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        "ICMP" => Ok(IPPROTO_ICMP),
        "ICMPV6" => Ok(IPPROTO_ICMPV6),
        _ => Err(format!("unknown protocol {s:?} (TCP, UDP, SCTP, ICMP, ICMPv6 or a number 0-255)")),
    }
}

/// Name of an IP protocol number.
pub fn protocol_name(p: u8) -> String {
    match Protocol::from_number(p) {
        Some(pr) => pr.to_string(),
        None if p == IPPROTO_ICMP => "ICMP".into(),
        None if p == IPPROTO_ICMPV6 => "ICMPv6".into(),
        None => format!("proto-{p}"),
    }
}

/// Resolves `namespace/pod` or an IP address. For a pod, `family` picks the
/// address (4 or 6); without it the first listed IP is used.
pub fn resolve_endpoint(cluster: &Cluster, s: &str, family: Option<u8>) -> Result<IpAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    let (ns, name) =
        s.split_once('/').ok_or_else(|| format!("{s:?} is neither an IP address nor namespace/pod"))?;
    if ns.parse::<IpAddr>().is_ok() {
        return Err(format!("{s:?} is an address range: give one address ({ns})"));
    }
    let pod = cluster
        .pod(ns, name)
        .ok_or_else(|| format!("no pod {ns}/{name} with an IP in the state (pods without IPs, host-network and finished pods are not policy endpoints)"))?;
    pod_ip(pod, family).ok_or_else(|| format!("pod {ns}/{name} has no IPv{} address", family.unwrap_or(4)))
}

/// Resolves both ends of one connection, which has one address family:
/// `family` when given, else the family of an end given as an address, else
/// the source pod's first IP's.
pub fn resolve_pair(
    cluster: &Cluster,
    from: &str,
    to: &str,
    family: Option<u8>,
) -> Result<(IpAddr, IpAddr), String> {
    let fam = |ip: IpAddr| if ip.is_ipv4() { 4 } else { 6 };
    let literal = |s: &str| s.parse::<IpAddr>().ok().map(fam);
    let family = family.or_else(|| literal(from)).or_else(|| literal(to));
    let src = resolve_endpoint(cluster, from, family)?;
    let dst = resolve_endpoint(cluster, to, family.or(Some(fam(src))))?;
    for (end, ip) in [(from, src), (to, dst)] {
        if let Some(f) = family.filter(|f| *f != fam(ip)) {
            return Err(format!(
                "{end} is IPv{} but the connection is IPv{f}: both ends need one address family",
                fam(ip)
            ));
        }
    }
    Ok((src, dst))
}

/// The destination port a question about `proto` asks for: required (1-65535)
/// for TCP, UDP and SCTP, unused (0) for every other protocol.
pub fn flow_port(proto: u8, port: Option<u16>) -> Result<u16, String> {
    if Protocol::from_number(proto).is_none() {
        return Ok(0);
    }
    match port {
        Some(0) => Err("port 0 is not a destination port (1-65535)".into()),
        Some(p) => Ok(p),
        None => Err(format!(
            "a {} question needs the destination port (--port, or \"port\" in a JSON line)",
            protocol_name(proto)
        )),
    }
}

/// The pod's address of the requested family (or its first).
pub fn pod_ip(pod: &PodInfo, family: Option<u8>) -> Option<IpAddr> {
    match family {
        None => pod.ips.first().copied(),
        Some(4) => pod.ips.iter().copied().find(IpAddr::is_ipv4),
        Some(_) => pod.ips.iter().copied().find(IpAddr::is_ipv6),
    }
}

fn policy_key(t: &DecisionTable, idx: u32) -> String {
    let (ns, n) = t.policy(idx);
    format!("{ns}/{n}")
}

fn side_json(t: &DecisionTable, s: Side) -> Value {
    match s {
        Side::NotPod => json!({"result": "not-a-pod"}),
        Side::NotIsolated => json!({"result": "not-isolated"}),
        Side::Allowed(r) => json!({"result": "allowed", "policy": policy_key(t, r.policy), "rule": r.rule}),
        Side::Denied(id) => {
            let (_, pols) = t.isolating_policies(id);
            let names: Vec<String> = pols.map(|p| policy_key(t, p)).collect();
            json!({"result": "denied", "isolated_by": names})
        }
        Side::Skipped => json!({"result": "skipped"}),
    }
}

/// The JSON answer for one query (batch mode and `--output json`).
pub fn verdict_json(t: &DecisionTable, src: IpAddr, dst: IpAddr, proto: u8, port: u16, v: &Verdict) -> Value {
    let pod = |ip| t.pod_at(ip).map(|(ns, n)| format!("{ns}/{n}"));
    json!({
        "src": src.to_string(),
        "dst": dst.to_string(),
        "src_pod": pod(src),
        "dst_pod": pod(dst),
        "protocol": protocol_name(proto),
        "port": port,
        "verdict": if v.allowed() { "allow" } else { "deny" },
        "egress": side_json(t, v.egress),
        "ingress": side_json(t, v.ingress),
    })
}

fn side_text(t: &DecisionTable, s: Side) -> String {
    match s {
        Side::NotPod => "not a pod (not evaluated)".into(),
        Side::NotIsolated => "not isolated".into(),
        Side::Allowed(r) => format!("allowed by {} rule {}", policy_key(t, r.policy), r.rule),
        Side::Denied(id) => {
            let (_, pols) = t.isolating_policies(id);
            let names: Vec<String> = pols.map(|p| policy_key(t, p)).collect();
            format!("denied (isolated by {})", names.join(", "))
        }
        Side::Skipped => "not evaluated (the other side denied)".into(),
    }
}

fn endpoint_text(t: &DecisionTable, ip: IpAddr) -> String {
    match t.pod_at(ip) {
        Some((ns, n)) => format!("{ns}/{n} ({ip})"),
        None => format!("{ip}"),
    }
}

/// One line for a person: `ALLOW x/a (10.0.1.1) -> ... : egress ...; ingress ...`.
pub fn verdict_line(
    t: &DecisionTable,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
    v: &Verdict,
) -> String {
    format!(
        "{} {} -> {} {}{}: egress {}; ingress {}",
        if v.allowed() { "ALLOW" } else { "DENY" },
        endpoint_text(t, src),
        endpoint_text(t, dst),
        protocol_name(proto),
        if Protocol::from_number(proto).is_some() { format!("/{port}") } else { String::new() },
        side_text(t, v.egress),
        side_text(t, v.ingress),
    )
}

fn peer_text(p: &Peer) -> String {
    match p {
        Peer::Block(b) => format!("ipBlock {b}"),
        Peer::Pods { namespaces, pods } => {
            let ns = match namespaces {
                NamespaceMatch::Own(n) => format!("namespace {n}"),
                NamespaceMatch::Selector(s) => format!("namespaces [{s}]"),
            };
            format!("pods [{pods}] in {ns}")
        }
    }
}

/// `portcullis explain`: every policy that selects each side, every rule that
/// allows, and for a denial why each rule did not match. Computed with the
/// reference evaluator and cross-checked against the table.
pub fn explain(c: &Compiled, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> String {
    let cluster = &c.cluster;
    let detail = reference::evaluate(cluster, src, dst, proto, port);
    let v = c.table.verdict_both(src, dst, proto, port);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {}, {}{}: {}",
        endpoint_text(&c.table, src),
        endpoint_text(&c.table, dst),
        protocol_name(proto),
        if Protocol::from_number(proto).is_some() { format!(" port {port}") } else { String::new() },
        if detail.allowed() { "ALLOWED" } else { "DENIED" }
    );
    let dst_pod = reference::pod_of(cluster, dst).map(|i| &cluster.pods[i]);
    for (dir, side, peer_ip, peer_pod) in [
        (Direction::Egress, &detail.egress, dst, reference::pod_of(cluster, dst)),
        (Direction::Ingress, &detail.ingress, src, reference::pod_of(cluster, src)),
    ] {
        let what =
            if dir == Direction::Egress { "egress of the source" } else { "ingress of the destination" };
        match side {
            SideDetail::NotPod => {
                let _ = writeln!(out, "  {what}: not a pod, so no NetworkPolicy applies");
            }
            SideDetail::Pod { pod, isolating, allowing } => {
                let p = &cluster.pods[*pod];
                if isolating.is_empty() {
                    let _ = writeln!(
                        out,
                        "  {what} {}: not isolated (no NetworkPolicy in {} selects it with {} in policyTypes): allowed",
                        p.key(),
                        p.namespace,
                        dir.as_str()
                    );
                    continue;
                }
                let names: Vec<String> = isolating
                    .iter()
                    .map(|i| format!("{}/{}", cluster.policies[*i].namespace, cluster.policies[*i].name))
                    .collect();
                let _ = writeln!(out, "  {what} {}: isolated by {}", p.key(), names.join(", "));
                for &pi in isolating {
                    let pol = &cluster.policies[pi];
                    let field = if dir == Direction::Egress { "egress" } else { "ingress" };
                    if !pol.valid {
                        let _ = writeln!(
                            out,
                            "    {}/{}: INVALID (fails validation), enforced fail-closed: allows nothing",
                            pol.namespace, pol.name
                        );
                        continue;
                    }
                    if pol.rules(dir).is_empty() {
                        let _ = writeln!(
                            out,
                            "    {}/{}: no {field} rules: allows nothing",
                            pol.namespace, pol.name
                        );
                    }
                    for (ri, rule) in pol.rules(dir).iter().enumerate() {
                        let peer_ok = rule.peers.is_empty()
                            || rule.peers.iter().any(|pe| {
                                reference::peer_matches(cluster, &pol.namespace, pe, peer_ip, peer_pod)
                            });
                        let port_ok = rule.ports.is_empty()
                            || rule.ports.iter().any(|m| reference::port_matches(m, proto, port, dst_pod));
                        let peers = if rule.peers.is_empty() {
                            "any peer".to_string()
                        } else {
                            rule.peers.iter().map(peer_text).collect::<Vec<_>>().join(" OR ")
                        };
                        let ports = if rule.ports.is_empty() {
                            "any port".to_string()
                        } else {
                            rule.ports.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
                        };
                        let verdict = match (peer_ok, port_ok) {
                            (true, true) => "ALLOWS".to_string(),
                            (false, true) => "peer does not match".to_string(),
                            (true, false) => "port does not match".to_string(),
                            (false, false) => "neither peer nor port matches".to_string(),
                        };
                        let _ = writeln!(
                            out,
                            "    {}/{} {field}[{ri}]: {peers}; {ports}: {verdict}",
                            pol.namespace, pol.name
                        );
                    }
                }
                let _ = writeln!(out, "    => {}", if allowing.is_empty() { "denied" } else { "allowed" });
            }
        }
    }
    if v.allowed() != detail.allowed() {
        let _ = writeln!(
            out,
            "INTERNAL ERROR: the compiled table says {} but the reference evaluation says {}; please report this",
            if v.allowed() { "allow" } else { "deny" },
            if detail.allowed() { "allow" } else { "deny" }
        );
    }
    out
}

/// A reachability matrix: `allowed[i][j]` is pod i connecting to pod j.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Protocol name.
    pub protocol: String,
    /// Destination port, or `None` when each destination is probed on its own first container port.
    pub port: Option<u16>,
    /// Pods as `namespace/name`, rows and columns in this order.
    pub pods: Vec<String>,
    /// Rows: from; columns: to. `None` when the destination has no port to
    /// probe, or (without a family given) no address of the source's family.
    pub allowed: Vec<Vec<Option<bool>>>,
}

/// Computes the matrix from the table. With `port: None`, each destination is
/// probed on its first declared container port of that protocol (as the Calico
/// stars demo does); destinations without one are `None`.
pub fn matrix(c: &Compiled, proto: u8, port: Option<u16>, family: Option<u8>) -> Matrix {
    let pods: Vec<&PodInfo> = c.cluster.pods.iter().filter(|p| pod_ip(p, family).is_some()).collect();
    let allowed = pods
        .iter()
        .map(|from| {
            let src = pod_ip(from, family).expect("filtered");
            let family = family.or(Some(if src.is_ipv4() { 4 } else { 6 }));
            pods.iter()
                .map(|to| {
                    // One family per connection: a destination without an address of the source's is `None`.
                    let dst = pod_ip(to, family)?;
                    let port = port.or_else(|| first_port(to, proto))?;
                    Some(c.table.verdict(src, dst, proto, port).allowed())
                })
                .collect()
        })
        .collect();
    Matrix { protocol: protocol_name(proto), port, pods: pods.iter().map(|p| p.key()).collect(), allowed }
}

/// The first declared container port of `proto` (named or not), as the stars demo probes.
pub fn first_port(p: &PodInfo, proto: u8) -> Option<u16> {
    p.container_ports.iter().find(|(pr, _)| pr.number() == proto).map(|(_, port)| *port)
}

impl Matrix {
    /// The table as the upstream e2e tests print it: rows are sources,
    /// columns destinations; `.` connected, `X` blocked, `-` nothing to probe.
    pub fn render(&self) -> String {
        let first = self.pods.iter().map(String::len).max().unwrap_or(1).max(8);
        let mut out = String::new();
        let title = match self.port {
            Some(p) => format!("{}/{p}", self.protocol),
            None => format!("{}/own", self.protocol),
        };
        let _ = write!(out, "{title:<first$}");
        for p in &self.pods {
            let _ = write!(out, "  {p}");
        }
        out.push('\n');
        for (i, row) in self.allowed.iter().enumerate() {
            let _ = write!(out, "{:<first$}", self.pods[i]);
            for (j, cell) in row.iter().enumerate() {
                let mark = match cell {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "-",
                };
                let w = self.pods[j].len();
                let _ = write!(out, "  {mark:^w$}");
            }
            out.push('\n');
        }
        if self.allowed.iter().flatten().any(Option::is_none) {
            let _ = writeln!(
                out,
                "(-: nothing to probe: the destination declares no {} container port (give --port), or has no address of the source's family)",
                self.protocol
            );
        }
        out
    }
}
