//! Answers for people and programs: verdict reasons, `explain`, and the
//! reachability matrix.

use std::fmt::Write as _;
use std::net::IpAddr;

use policy_compiler::model::{
    Direction, NamespaceMatch, Peer, PodInfo, PortMatch, IPPROTO_ICMP, IPPROTO_ICMPV6,
};
use policy_compiler::model::{NamespaceInfo, NAMESPACE_NAME_LABEL};
use policy_compiler::reference::{self, SideDetail};
use policy_compiler::selector::{Labels, Requirement, Selector};
use policy_compiler::{
    Cluster, Compiled, DecisionTable, ObjectRef, Problem, Protocol, Severity, Side, Verdict,
};
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

/// An end of a connection as given: an IP address, or a pod by `namespace/name`.
enum End<'a> {
    Ip(IpAddr),
    Pod(&'a PodInfo),
}

fn parse_end<'a>(c: &'a Compiled, s: &str) -> Result<End<'a>, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(End::Ip(ip));
    }
    let (ns, name) =
        s.split_once('/').ok_or_else(|| format!("{s:?} is neither an IP address nor namespace/pod"))?;
    if ns.parse::<IpAddr>().is_ok() {
        return Err(format!("{s:?} is an address range: give one address ({ns})"));
    }
    c.cluster
        .pod(ns, name)
        .map(End::Pod)
        .ok_or_else(|| format!("no pod {ns}/{name} with an IP in the state (pods without IPs, host-network and finished pods are not policy endpoints)"))
}

fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

/// The families a pod has addresses in, its first address's first.
fn families(p: &PodInfo) -> Vec<u8> {
    let mut f: Vec<u8> = p.ips.iter().map(|ip| family_of(*ip)).collect();
    f.dedup();
    f
}

/// The address family a protocol runs over, when only one: ICMP (1) is
/// IPv4's, ICMPv6 (58) IPv6's.
pub fn protocol_family(proto: u8) -> Option<u8> {
    match proto {
        1 => Some(4),
        58 => Some(6),
        _ => None,
    }
}

/// [`protocol_family`] of a protocol named as [`protocol_name`] names it.
fn protocol_family_of(name: &str) -> Option<u8> {
    parse_protocol(name).ok().and_then(protocol_family)
}

/// The family to ask about for `proto`: `family` when given, else the one
/// the protocol implies; an error when they disagree (ICMPv6 over IPv4).
pub fn family_for(proto: u8, family: Option<u8>) -> Result<Option<u8>, String> {
    match (family, protocol_family(proto)) {
        (Some(f), Some(p)) if f != p => Err(format!(
            "{} runs over IPv{p} only, not over IPv{f} (the family asked for)",
            protocol_name(proto)
        )),
        (f, p) => Ok(f.or(p)),
    }
}

/// Resolves both ends of one connection of protocol `proto`, which has one
/// address family: `family` when given, else the protocol's (ICMP over
/// IPv4, ICMPv6 over IPv6), else the family of an end given as an address,
/// else the first family of the source pod's addresses that the destination
/// pod has too (a pod with only IPv6 is asked about over IPv6).
///
/// A pod asked about by name must own its address in the table: when two
/// live pods list one address, the first by `namespace/name` does
/// (docs/semantics.md, D5), and a question about the other would be
/// answered for the owner, so it is refused with both names.
pub fn resolve_pair(
    c: &Compiled,
    from: &str,
    to: &str,
    proto: u8,
    family: Option<u8>,
) -> Result<(IpAddr, IpAddr), String> {
    let ends = [(from, parse_end(c, from)?), (to, parse_end(c, to)?)];
    // Where the family comes from, for the message when a pod lacks it.
    // The protocol decides the family (ICMP, ICMPv6 without --family).
    let by_protocol = family.is_none() && protocol_family(proto).is_some();
    let mut why = match protocol_family(proto).filter(|_| by_protocol) {
        Some(f) => format!(" ({} runs over IPv{f} only)", protocol_name(proto)),
        None => String::from(" (the family asked for)"),
    };
    let given = family_for(proto, family)?.or_else(|| {
        ends.iter().find_map(|(text, e)| match e {
            End::Ip(ip) => {
                why = format!(" ({text}, the other end, is IPv{})", family_of(*ip));
                Some(family_of(*ip))
            }
            End::Pod(_) => None,
        })
    });
    let family = match (given, &ends[0].1, &ends[1].1) {
        (Some(f), _, _) => f,
        (None, End::Pod(a), End::Pod(b)) => {
            let (fa, fb) = (families(a), families(b));
            shared_family(&fa, &fb).ok_or_else(|| {
                format!(
                    "{from} and {to} have no address family in common ({from}: {}; {to}: {}): no connection between them is possible",
                    describe_families(&fa),
                    describe_families(&fb)
                )
            })?
        }
        _ => unreachable!("an end given as an address sets the family"),
    };
    let mut ips = [IpAddr::from([0, 0, 0, 0]); 2];
    for (i, (text, end)) in ends.iter().enumerate() {
        ips[i] = match end {
            End::Ip(ip) if family_of(*ip) == family => *ip,
            End::Ip(ip) => {
                return Err(format!(
                    "{text} is IPv{} but the connection is IPv{family}{}: both ends need one address family",
                    family_of(*ip),
                    if by_protocol { why.as_str() } else { "" }
                ))
            }
            End::Pod(p) => {
                let ip = pod_ip(p, Some(family))
                    .ok_or_else(|| format!("pod {text} has no IPv{family} address{why}"))?;
                if let Some((ns, name)) = other_owner(c, p, ip) {
                    return Err(format!(
                        "pod {text} shares its address {ip} with pod {ns}/{name}, which owns it in the table (of two live pods with one address, the first by namespace/name does; docs/semantics.md, D5): the answer would be {ns}/{name}'s. Ask about {ns}/{name} or the address"
                    ));
                }
                ip
            }
        };
    }
    Ok((ips[0], ips[1]))
}

/// The family a connection between pods with these families uses: the
/// source's first that the destination has too.
fn shared_family(from: &[u8], to: &[u8]) -> Option<u8> {
    from.iter().copied().find(|f| to.contains(f))
}

/// The pod that owns `ip` in the table when it is not `p` (docs/semantics.md, D5).
fn other_owner<'a>(c: &'a Compiled, p: &PodInfo, ip: IpAddr) -> Option<(&'a str, &'a str)> {
    c.table.pod_at(ip).filter(|(ns, name)| (*ns, *name) != (p.namespace.as_str(), p.name.as_str()))
}

fn describe_families(f: &[u8]) -> String {
    f.iter().map(|f| format!("IPv{f}")).collect::<Vec<_>>().join(" and ")
}

/// Warnings for named ports no pod can match: a rule port naming a
/// container port (`port: http`) that no pod the policy selects declares
/// with that protocol (ingress), or that no pod at all declares (egress,
/// where the destination pod declares it). Such a rule allows nothing on
/// that port, silently: usually a typo, so a close name is suggested.
pub fn named_port_warnings(c: &Cluster) -> Vec<Problem> {
    use std::collections::BTreeSet;
    // Every named port of a set of pods, as (protocol, name).
    fn names<'a>(pods: impl Iterator<Item = &'a PodInfo>) -> BTreeSet<(Protocol, &'a str)> {
        pods.flat_map(|p| &p.named_ports).map(|n| (n.protocol, n.name.as_str())).collect()
    }
    if c.pods.is_empty() {
        return Vec::new();
    }
    let everywhere = names(c.pods.iter());
    // The pods of a namespace (pods are sorted by namespace: one run).
    let pods_of = |ns: &str| {
        let first = c.pods.partition_point(|p| p.namespace.as_str() < ns);
        &c.pods[first..first + c.pods[first..].partition_point(|p| p.namespace == ns)]
    };
    let mut selected = std::collections::HashMap::new();
    let mut out = Vec::new();
    for pol in c.policies.iter().filter(|p| p.valid) {
        for dir in Direction::BOTH {
            let rules = &pol.rules[dir as usize];
            if !rules.iter().flat_map(|r| &r.ports).any(|m| matches!(m, PortMatch::Named { .. })) {
                continue;
            }
            let declared = match dir {
                Direction::Ingress => {
                    // Policies of a namespace often share a pod selector.
                    let selected = selected.entry((&pol.namespace, &pol.pod_selector)).or_insert_with(|| {
                        let own =
                            pods_of(&pol.namespace).iter().filter(|p| pol.pod_selector.matches(&p.labels));
                        own.clone().next().map(|_| names(own))
                    });
                    // Nothing selected: nothing to compare with.
                    let Some(selected) = selected else { continue };
                    &*selected
                }
                Direction::Egress => &everywhere,
            };
            let field = if dir == Direction::Ingress { "ingress" } else { "egress" };
            for (ri, rule) in rules.iter().enumerate() {
                for m in &rule.ports {
                    let PortMatch::Named { protocol, name } = m else { continue };
                    if declared.contains(&(*protocol, name.as_str())) {
                        continue;
                    }
                    let guess = declared
                        .iter()
                        .filter(|(p, _)| p == protocol)
                        .map(|(_, n)| (crate::manifest::edit_distance(n, name), *n))
                        .filter(|(d, _)| *d <= 2)
                        .min()
                        .map(|(_, n)| format!(" (did you mean {n:?}?)"))
                        .unwrap_or_default();
                    let whose = match dir {
                        Direction::Ingress => "no pod this policy selects declares",
                        Direction::Egress => "no pod in the input declares",
                    };
                    out.push(Problem {
                        severity: Severity::Warning,
                        object: ObjectRef {
                            kind: "NetworkPolicy",
                            namespace: pol.namespace.clone(),
                            name: pol.name.clone(),
                        },
                        field: format!("spec.{field}[{ri}].ports"),
                        message: format!(
                            "{whose} a {protocol} container port named {name:?}, so this port entry allows nothing{guess}"
                        ),
                    });
                }
            }
        }
    }
    out
}

/// Warnings for selectors that match nothing in the input: a policy whose
/// `podSelector` selects none of its namespace's pods; a peer whose
/// `namespaceSelector` matches no namespace, or whose `podSelector` matches
/// none of the pods of the namespaces it looks in. Such a policy is valid
/// and means what it says, but it isolates nobody, or the peer allows
/// nothing: usually a mistyped label, so the label no pod (namespace)
/// carries is named, with a close one when there is. Judged only where the
/// input can tell: a namespace with no pod in the input is not judged, a
/// selector matching a pod that is no policy endpoint (`others`: pods with
/// no address yet, on the host network, finished; namespace and labels) is
/// no mistake, namespace selectors are judged only when the input holds
/// Namespace objects, and a namespace named by `kubernetes.io/metadata.name`
/// that is not in the input is taken to be outside it unless its name is a
/// letter or two from one that is.
pub fn selector_warnings(c: &Cluster, others: &[(&str, &Labels)]) -> Vec<Problem> {
    use std::collections::HashMap;
    if c.pods.is_empty() {
        return Vec::new();
    }
    // The pods of a namespace (pods are sorted by namespace: one run).
    let pods_of = |ns: &str| {
        let first = c.pods.partition_point(|p| p.namespace.as_str() < ns);
        &c.pods[first..first + c.pods[first..].partition_point(|p| p.namespace == ns)]
    };
    // Pods by (namespace, label, value), so that a selector with an
    // equality is matched against the pods carrying it, not every pod.
    let mut by_label: HashMap<(&str, &str, &str), Vec<&Labels>> = HashMap::new();
    for p in &c.pods {
        for (k, v) in &p.labels {
            by_label.entry((&p.namespace, k, v)).or_default().push(&p.labels);
        }
    }
    let selects_in = |sel: &Selector, ns: &str| match sel.first_equality() {
        Some((k, v)) => by_label.get(&(ns, k, v)).is_some_and(|ls| ls.iter().any(|l| sel.matches(l))),
        None => pods_of(ns).iter().any(|p| sel.matches(&p.labels)),
    };
    let selects_other = |sel: &Selector, ns: &str| others.iter().any(|(n, l)| *n == ns && sel.matches(l));
    fn labels_of<'a>(pods: impl IntoIterator<Item = &'a PodInfo>) -> Vec<&'a Labels> {
        pods.into_iter().map(|p| &p.labels).collect()
    }
    let given: Vec<&NamespaceInfo> =
        c.namespaces.iter().filter(|n| c.assumed.binary_search(&n.name).is_err()).collect();
    // Policies share selectors: each (namespace, selector) is matched once.
    let mut some_pod: HashMap<(&str, &Selector), bool> = HashMap::new();
    let mut namespaces_of: HashMap<&Selector, Vec<&str>> = HashMap::new();
    let mut out = Vec::new();
    for pol in c.policies.iter().filter(|p| p.valid) {
        let warn = |field: String, message: String| Problem {
            severity: Severity::Warning,
            object: ObjectRef {
                kind: "NetworkPolicy",
                namespace: pol.namespace.clone(),
                name: pol.name.clone(),
            },
            field,
            message,
        };
        let own = pods_of(&pol.namespace);
        if !own.is_empty()
            && !*some_pod
                .entry((&pol.namespace, &pol.pod_selector))
                .or_insert_with(|| selects_in(&pol.pod_selector, &pol.namespace))
            && !selects_other(&pol.pod_selector, &pol.namespace)
        {
            let why = unmet(&pol.pod_selector, &labels_of(own), "pod");
            out.push(warn(
                "spec.podSelector".into(),
                format!(
                    "selects none of the {} pod(s) of namespace {} in the input, so this policy applies to no pod{why}",
                    own.len(),
                    pol.namespace
                ),
            ));
        }
        for dir in Direction::BOTH {
            let (field, peers) = match dir {
                Direction::Ingress => ("ingress", "from"),
                Direction::Egress => ("egress", "to"),
            };
            for (ri, rule) in pol.rules(dir).iter().enumerate() {
                for (pi, peer) in rule.peers.iter().enumerate() {
                    let Peer::Pods { namespaces, pods } = peer else { continue };
                    let at = format!("spec.{field}[{ri}].{peers}[{pi}]");
                    let own_ns;
                    let searched: &[&str] = match namespaces {
                        NamespaceMatch::Own(ns) => {
                            own_ns = [ns.as_str()];
                            &own_ns
                        }
                        NamespaceMatch::Selector(sel) => {
                            let found = namespaces_of.entry(sel).or_insert_with(|| {
                                c.namespaces
                                    .iter()
                                    .filter(|n| sel.matches(&n.labels))
                                    .map(|n| n.name.as_str())
                                    .collect()
                            });
                            if found.is_empty() {
                                if !given.is_empty() && !outside_the_input(sel, &given) {
                                    let labels: Vec<_> = given.iter().map(|n| &n.labels).collect();
                                    out.push(warn(
                                        format!("{at}.namespaceSelector"),
                                        format!(
                                            "matches none of the {} namespace(s) in the input, so this peer matches no pod{}",
                                            given.len(),
                                            unmet(sel, &labels, "namespace")
                                        ),
                                    ));
                                }
                                continue;
                            }
                            found
                        }
                    };
                    if pods.is_everything() {
                        continue;
                    }
                    let mut candidates = 0;
                    let mut matched = false;
                    for ns in searched {
                        let in_ns = pods_of(ns);
                        candidates += in_ns.len();
                        if !in_ns.is_empty()
                            && *some_pod.entry((ns, pods)).or_insert_with(|| selects_in(pods, ns))
                        {
                            matched = true;
                            break;
                        }
                    }
                    if matched || candidates == 0 || searched.iter().any(|ns| selects_other(pods, ns)) {
                        continue;
                    }
                    let all = labels_of(searched.iter().flat_map(|ns| pods_of(ns)));
                    let place = match searched {
                        [ns] => format!("namespace {ns}"),
                        more => format!("the {} namespaces it selects", more.len()),
                    };
                    out.push(warn(
                        format!("{at}.podSelector"),
                        format!(
                            "matches none of the {} pod(s) of {place} in the input, so this peer matches no pod{}",
                            all.len(),
                            unmet(pods, &all, "pod")
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// Does `sel` name namespaces by `kubernetes.io/metadata.name` that are
/// not in the input (`given`), none of them a letter or two from one that
/// is? Then it looks outside the input, not mistyped.
fn outside_the_input(sel: &Selector, given: &[&NamespaceInfo]) -> bool {
    sel.requirements().iter().any(|r| match r {
        Requirement::In { key, values } if key == NAMESPACE_NAME_LABEL => values
            .iter()
            .all(|v| given.iter().all(|n| n.name != *v && crate::manifest::edit_distance(&n.name, v) > 2)),
        _ => false,
    })
}

/// `n` and the noun for it: "1 pod", "2 pods".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Why `sel` matches none of `labels` (of pods or namespaces: `what`): the
/// first of its requirements that none of them meets, with the closest key
/// or value they carry.
fn unmet(sel: &Selector, labels: &[&Labels], what: &str) -> String {
    use std::collections::BTreeSet;
    // The closest of `have` to `want`, two edits at most.
    fn close<'a>(want: &str, have: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        have.filter(|h| *h != want)
            .map(|h| (crate::manifest::edit_distance(h, want), h))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, h)| h)
    }
    let wanted = |key: &str, values: &[String]| match values {
        [v] => format!("{key}={v}"),
        vs => format!("{key} in ({})", vs.join(",")),
    };
    for r in sel.requirements() {
        let (key, values) = match r {
            Requirement::In { key, values } => (key, Some(values)),
            Requirement::Exists { key } => (key, None),
            // Every candidate carries what these exclude.
            Requirement::NotIn { key, values } => {
                if labels.iter().all(|l| l.get(key).is_some_and(|v| values.contains(v))) {
                    return format!(": every {what} has {}", wanted(key, values));
                }
                continue;
            }
            Requirement::DoesNotExist { key } => {
                if labels.iter().all(|l| l.contains_key(key)) {
                    return format!(": every {what} has a label {key:?}");
                }
                continue;
            }
        };
        if !labels.iter().any(|l| l.contains_key(key)) {
            let keys: BTreeSet<&str> = labels.iter().flat_map(|l| l.keys().map(String::as_str)).collect();
            let guess =
                close(key, keys.into_iter()).map(|g| format!(" (did you mean {g:?}?)")).unwrap_or_default();
            return format!(": no {what} has a label {key:?}{guess}");
        }
        let Some(values) = values else { continue };
        if labels.iter().any(|l| l.get(key).is_some_and(|v| values.contains(v))) {
            continue;
        }
        let seen: BTreeSet<&str> = labels.iter().filter_map(|l| l.get(key)).map(String::as_str).collect();
        let guess = match values.as_slice() {
            [v] => close(v, seen.iter().copied()).map(|g| format!(" (did you mean {key}={g}?)")),
            _ => None,
        }
        .unwrap_or_default();
        const SHOWN: usize = 5;
        let shown: Vec<&str> = seen.iter().copied().take(SHOWN).collect();
        let more = match seen.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        return format!(
            ": no {what} has {}{guess}; {key} is {}{more} there",
            wanted(key, values),
            shown.join(", ")
        );
    }
    format!(": no {what} meets all of {sel} at once")
}

/// The destination port a question about `proto` asks for: required (1-65535)
/// for TCP, UDP and SCTP, unused (0) for every other protocol.
pub fn flow_port(proto: u8, port: Option<u16>) -> Result<u16, String> {
    if Protocol::from_number(proto).is_none() {
        // A port given with ICMP is a mistaken question, not one to answer
        // as if it were not there (0 is accepted: tools write it for "none").
        return match port {
            Some(p) if p != 0 => Err(format!(
                "{} has no ports: leave the port out (only rules without `ports` allow it)",
                protocol_name(proto)
            )),
            _ => Ok(0),
        };
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

/// Labels as `k=v,k=v` (`none` when there are none).
fn labels_text(l: &policy_compiler::selector::Labels) -> String {
    if l.is_empty() {
        return "none".into();
    }
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Why `peer` does not match the other end of the flow (`ip`, pod `pod`).
fn peer_mismatch(c: &Cluster, peer: &Peer, ip: IpAddr, pod: Option<usize>) -> String {
    match peer {
        Peer::Block(b) => {
            let (f, a) = policy_compiler::cidr::split(ip);
            if b.cidr.contains(f, a) {
                format!("{ip} is in an except of it")
            } else {
                format!("{ip} is outside {}", b.cidr)
            }
        }
        Peer::Pods { namespaces, pods } => match pod.map(|i| &c.pods[i]) {
            None => format!("{ip} is no pod's address, and a selector matches only pods"),
            Some(p) => {
                let ns_labels = c.namespace(&p.namespace).map(|n| &n.labels);
                let mut why = Vec::new();
                if !reference::namespace_matches(c, namespaces, &p.namespace) {
                    why.push(match (namespaces, ns_labels) {
                        (NamespaceMatch::Own(_), _) => format!("{} is in namespace {}", p.key(), p.namespace),
                        (_, Some(l)) => {
                            format!("{}'s namespace has labels {}", p.key(), labels_text(l))
                        }
                        (_, None) => format!("{}'s namespace is unknown", p.key()),
                    });
                }
                if !pods.matches(&p.labels) {
                    let who = if why.is_empty() { format!("{} has", p.key()) } else { "has".into() };
                    why.push(format!("{who} labels {}", labels_text(&p.labels)));
                }
                why.join(" and ")
            }
        },
    }
}

/// A named port as the destination pod declares it (`TCP/metrics = 9090`),
/// or that it does not.
fn named_port_text(m: &PortMatch, dst: Option<&PodInfo>) -> String {
    let PortMatch::Named { protocol, name } = m else {
        return m.to_string();
    };
    let numbers: Vec<String> = dst
        .into_iter()
        .flat_map(|d| d.named_ports.iter())
        .filter(|n| n.name == *name && n.protocol == *protocol)
        .map(|n| n.port.to_string())
        .collect();
    match (dst, numbers.is_empty()) {
        (None, _) => format!("{m} (the destination is no pod: a name matches only a pod's port)"),
        (Some(d), true) => format!("{m} ({} declares no {protocol} port {name})", d.key()),
        (Some(_), false) => format!("{m} (= {} on the destination)", numbers.join(" or ")),
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
                            rule.ports
                                .iter()
                                .map(|m| named_port_text(m, dst_pod))
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        // Why no peer matches, each in a few words.
                        let peer_why = || {
                            let why: Vec<String> = rule
                                .peers
                                .iter()
                                .enumerate()
                                .map(|(i, pe)| {
                                    let why = peer_mismatch(cluster, pe, peer_ip, peer_pod);
                                    if rule.peers.len() == 1 {
                                        why
                                    } else {
                                        format!("peer {i}: {why}")
                                    }
                                })
                                .collect();
                            format!(": {}", why.join("; "))
                        };
                        let verdict = match (peer_ok, port_ok) {
                            (true, true) => "ALLOWS".to_string(),
                            (false, true) => format!("peer does not match{}", peer_why()),
                            (true, false) => "port does not match".to_string(),
                            (false, false) => format!("neither peer nor port matches{}", peer_why()),
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
    /// Destination port, or `None` when each destination is probed on its own
    /// first container port, or the protocol has no ports.
    pub port: Option<u16>,
    /// The protocol has no ports (ICMP, ...): every pair is probed, without a port.
    pub portless: bool,
    /// The one address family probed (given, or the protocol's: ICMP is
    /// IPv4's, ICMPv6 IPv6's); `None`: each pair's own.
    pub family: Option<u8>,
    /// Pods as `namespace/name`, rows and columns in this order.
    pub pods: Vec<String>,
    /// Rows: from; columns: to. `None` when the destination has no port to
    /// probe, or (without a family given) no address of the source's family.
    pub allowed: Vec<Vec<Option<bool>>>,
}

/// Computes the matrix from the table. With `port: None`, each destination is
/// probed on its first declared container port of that protocol (as the Calico
/// stars demo does); destinations without one are `None`. A protocol without
/// ports (ICMP, ...) needs none. Each pair is probed over `family` when given,
/// else over the source's first family that the destination has too; a pair
/// with no common family is `None`, and so is every cell of a pod whose
/// address another pod owns in the table (docs/semantics.md, D5).
pub fn matrix(c: &Compiled, proto: u8, port: Option<u16>, family: Option<u8>) -> Matrix {
    let portless = Protocol::from_number(proto).is_none();
    let pods: Vec<&PodInfo> = c.cluster.pods.iter().filter(|p| pod_ip(p, family).is_some()).collect();
    // Per pod: its families in order, and its address of each family when
    // the pod owns it in the table.
    let ends: Vec<(Vec<u8>, [Option<IpAddr>; 2])> = pods
        .iter()
        .map(|p| {
            let owned = |f| pod_ip(p, Some(f)).filter(|ip| other_owner(c, p, *ip).is_none());
            (families(p), [owned(4), owned(6)])
        })
        .collect();
    let allowed = ends
        .iter()
        .map(|(from_families, from)| {
            pods.iter()
                .zip(&ends)
                .map(|(to_pod, (to_families, to))| {
                    let f = match family {
                        Some(f) => f,
                        None => shared_family(from_families, to_families)?,
                    };
                    let i = usize::from(f == 6);
                    let (src, dst) = (from[i]?, to[i]?);
                    let port = if portless { 0 } else { port.or_else(|| first_port(to_pod, proto))? };
                    Some(c.table.verdict(src, dst, proto, port).allowed())
                })
                .collect()
        })
        .collect();
    Matrix {
        protocol: protocol_name(proto),
        port: if portless { None } else { port },
        portless,
        family,
        pods: pods.iter().map(|p| p.key()).collect(),
        allowed,
    }
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
            _ if self.portless => self.protocol.clone(),
            Some(p) => format!("{}/{p}", self.protocol),
            None => format!("{}/own", self.protocol),
        };
        let _ = write!(out, "{title:<first$}");
        for p in &self.pods {
            let _ = write!(out, "  {p}");
        }
        out.push('\n');
        if self.pods.is_empty() {
            let _ = match self.family {
                Some(f) => writeln!(
                    out,
                    "(no pod has an IPv{f} address{})",
                    match protocol_family_of(&self.protocol) {
                        Some(_) => format!(": {} runs over IPv{f} only", self.protocol),
                        None => String::new(),
                    }
                ),
                None => writeln!(out, "(no pods)"),
            };
        }
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
                "(-: nothing to probe: {}{}the pod's address belongs to another pod in the table)",
                if self.portless || self.port.is_some() {
                    String::new()
                } else {
                    format!("the destination declares no {} container port (give --port), or ", self.protocol)
                },
                if self.family.is_some() { "" } else { "the two pods have no address family in common, or " }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of [`selector_warnings`] for a YAML input, as `field: message`.
    fn selector_lint(yaml: &str) -> Vec<String> {
        let s = crate::manifest::parse("test.yaml", yaml).unwrap();
        let c = policy_compiler::compile(&s.namespaces, &s.pods, &s.policies);
        assert!(!c.has_errors(), "{:?}", c.problems);
        selector_warnings(&c.cluster, &[])
            .iter()
            .map(|p| format!("{}: {}: {}", p.object, p.field, p.message))
            .collect()
    }

    const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: empty, labels: {team: green}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web, tier: front}}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: b, labels: {app: db, tier: back}}
status: {phase: Running, podIP: 10.0.0.2}
";

    fn policy(ns: &str, spec: &str) -> String {
        format!("{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n{spec}")
    }

    #[test]
    fn selectors_matching_pods_get_no_warning() {
        let spec = "
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, other]}]}
  ingress:
  - from:
    - podSelector: {matchLabels: {tier: front}}
    - namespaceSelector: {matchLabels: {team: blue}}
      podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}
    - namespaceSelector: {}
    - ipBlock: {cidr: 10.9.0.0/16}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}
";
        assert_eq!(selector_lint(&policy("a", spec)), Vec::<String>::new());
    }

    #[test]
    fn only_namespaces_with_pods_in_the_input_are_judged() {
        // Policies alone: nothing to compare with.
        let alone = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: typo}}\n";
        assert_eq!(selector_lint(alone), Vec::<String>::new());
        // A namespace without pods: neither its policy's selector nor a peer
        // looking only there is judged; a namespace selector matching it is fine.
        let spec = "
  podSelector: {matchLabels: {app: typo}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: typo}}
    - namespaceSelector: {matchLabels: {team: green}}
      podSelector: {matchLabels: {app: typo}}
";
        assert_eq!(selector_lint(&policy("empty", spec)), Vec::<String>::new());
    }

    #[test]
    fn the_first_label_no_pod_has_is_named_with_a_close_one() {
        let spec = "
  podSelector: {matchLabels: {app: web, tier: frnt}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {teem: blue}}
    - namespaceSelector: {}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [dbb, webb]}]}
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [red, blue]}]}
      podSelector: {matchLabels: {app: web, tier: back}}
    - podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
";
        assert_eq!(
            selector_lint(&policy("a", spec)),
            [
                "NetworkPolicy a/p: spec.podSelector: selects none of the 1 pod(s) of namespace a in the input, so this policy applies to no pod: no pod has tier=frnt (did you mean tier=front?); tier is front there",
                "NetworkPolicy a/p: spec.ingress[0].from[0].namespaceSelector: matches none of the 3 namespace(s) in the input, so this peer matches no pod: no namespace has a label \"teem\" (did you mean \"team\"?)",
                // Several values: no guess, the values there listed.
                "NetworkPolicy a/p: spec.ingress[0].from[1].podSelector: matches none of the 2 pod(s) of the 3 namespaces it selects in the input, so this peer matches no pod: no pod has app in (dbb,webb); app is db, web there",
                // Each label is on some pod, never both on one.
                "NetworkPolicy a/p: spec.ingress[0].from[2].podSelector: matches none of the 2 pod(s) of the 2 namespaces it selects in the input, so this peer matches no pod: no pod meets all of app=web,tier=back at once",
                "NetworkPolicy a/p: spec.ingress[0].from[3].podSelector: matches none of the 1 pod(s) of namespace a in the input, so this peer matches no pod: every pod has app=web",
            ]
        );
    }

    #[test]
    fn namespace_selectors_are_judged_only_against_namespaces_the_input_holds() {
        let pods_and_policy = |namespaces: &str, peer: &str| {
            format!(
                "{namespaces}
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: a, labels: {{app: web}}}}
status: {{phase: Running, podIP: 10.0.0.1}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: a}}
spec:
  podSelector: {{}}
  egress:
  - to:
    - namespaceSelector: {{matchLabels: {peer}}}
"
            )
        };
        let a = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {team: red}}\n---";
        // No Namespace object (`kubectl get pods,netpol -o yaml`): nothing to judge by.
        assert_eq!(selector_lint(&pods_and_policy("", "{team: blue}")), Vec::<String>::new());
        // A namespace named that is not in the input is outside it...
        let name = "{kubernetes.io/metadata.name: kube-system}";
        assert_eq!(selector_lint(&pods_and_policy(a, name)), Vec::<String>::new());
        // ...unless it is a letter or two from one that is.
        assert_eq!(
            selector_lint(&pods_and_policy(a, "{kubernetes.io/metadata.name: aa}")),
            ["NetworkPolicy a/p: spec.egress[0].to[0].namespaceSelector: matches none of the 1 namespace(s) in the input, so this peer matches no pod: no namespace has kubernetes.io/metadata.name=aa (did you mean kubernetes.io/metadata.name=a?); kubernetes.io/metadata.name is a there"]
        );
        assert_eq!(
            selector_lint(&pods_and_policy(a, "{team: blu}")),
            ["NetworkPolicy a/p: spec.egress[0].to[0].namespaceSelector: matches none of the 1 namespace(s) in the input, so this peer matches no pod: no namespace has team=blu; team is red there"]
        );
    }

    #[test]
    fn a_selector_matching_pods_that_are_no_endpoints_is_no_mistake() {
        // A host-network or pending pod carries the label: `check` passes such pods.
        let spec = "
  podSelector: {matchLabels: {app: exporter}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: exporter}}
";
        let s = crate::manifest::parse("test.yaml", &policy("a", spec)).unwrap();
        let c = policy_compiler::compile(&s.namespaces, &s.pods, &s.policies);
        let exporter: Labels = [("app".to_string(), "exporter".to_string())].into();
        let messages = |others: &[(&str, &Labels)]| selector_warnings(&c.cluster, others).len();
        assert_eq!(messages(&[]), 2);
        assert_eq!(messages(&[("a", &exporter)]), 0);
        // In another namespace it is not one of these pods.
        assert_eq!(messages(&[("b", &exporter)]), 2);
    }

    #[test]
    fn selectors_of_only_exclusions_name_what_every_pod_has() {
        let spec = "
  podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}
";
        assert_eq!(
            selector_lint(&policy("a", spec)),
            ["NetworkPolicy a/p: spec.podSelector: selects none of the 1 pod(s) of namespace a in the input, so this policy applies to no pod: every pod has a label \"tier\""]
        );
    }

    #[test]
    fn many_values_are_cut_short() {
        let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n");
        for i in 0..7 {
            yaml += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: a, labels: {{app: v{i}}}}}\nstatus: {{phase: Running, podIP: 10.0.0.{}}}\n", i + 1);
        }
        yaml += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: zzzz}}\n";
        assert_eq!(
            selector_lint(&yaml),
            ["NetworkPolicy a/p: spec.podSelector: selects none of the 7 pod(s) of namespace a in the input, so this policy applies to no pod: no pod has app=zzzz; app is v0, v1, v2, v3, v4 and 2 more there"]
        );
    }

    #[test]
    fn count_names_one_and_many() {
        assert_eq!(
            [count(0, "pod", "pods"), count(1, "policy", "policies"), count(2, "policy", "policies")],
            ["0 pods", "1 policy", "2 policies"]
        );
    }
}
