//! The boundary: Kubernetes API objects in, validated domain types out.
//!
//! Validation mirrors the API server's (`pkg/apis/networking/validation`
//! `ValidateNetworkPolicySpec`, and `ValidateLabelSelector`), so a policy the
//! API server would reject is reported here with the same field path. A policy
//! that fails is kept *fail-closed*: it still isolates the pods it selects in
//! the directions it names, and allows nothing.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cidr::{parse_ip_sloppy, Cidr, Family, IpBlock};
use crate::model::*;
use crate::selector::{Labels, Selector};

/// A rule's peers and ports as the API has them.
type RawRule<'a> = (Option<&'a Vec<netv1::NetworkPolicyPeer>>, Option<&'a Vec<netv1::NetworkPolicyPort>>);

/// Namespace assumed for an object whose `metadata.namespace` is absent, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A field path in API notation, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// A path starting at `name`.
    pub fn root(name: &str) -> Self {
        FieldPath(name.to_string())
    }
    /// `self.name`.
    pub fn field(&self, name: &str) -> Self {
        FieldPath(format!("{}.{name}", self.0))
    }
    /// `self[i]`.
    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }
    /// `self.name[key]` (map entry).
    pub fn key(&self, name: &str, key: &str) -> Self {
        FieldPath(format!("{}.{name}[{key}]", self.0))
    }
    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Where.
    pub path: FieldPath,
    /// What is wrong, in the API server's words where it has them.
    pub message: String,
}

/// Errors collected while validating one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// Records an error.
    pub fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(FieldError { path, message: message.into() });
    }
    /// No errors?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

/// The object a problem is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `NetworkPolicy`, `Pod` or `Namespace`.
    pub kind: &'static str,
    /// Namespace (empty for a Namespace).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The object is invalid; a policy is enforced fail-closed.
    Error,
    /// Valid, but probably not what the author meant.
    Warning,
}

/// Something wrong with one input object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The object.
    pub object: ObjectRef,
    /// Field path inside it.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}: {}: {}", self.object, self.field, self.message)
    }
}

fn problems_from(errs: FieldErrors, object: &ObjectRef, severity: Severity) -> Vec<Problem> {
    errs.0
        .into_iter()
        .map(|e| Problem { severity, object: object.clone(), field: e.path.0, message: e.message })
        .collect()
}

/// An object's namespace: `metadata.namespace`, `default` when missing or
/// empty ("An empty namespace is equivalent to the default namespace").
pub fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// Validates a NetworkPolicy. Returns the domain policy (fail-closed when
/// invalid: `valid == false`, no rules) and its problems.
pub fn policy(np: &netv1::NetworkPolicy) -> (Policy, Vec<Problem>) {
    let namespace = namespace_of(&np.metadata);
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = ObjectRef { kind: "NetworkPolicy", namespace: namespace.clone(), name: name.clone() };
    let mut errs = FieldErrors::default();
    let mut warnings = FieldErrors::default();
    if name.is_empty() {
        errs.push(FieldPath::root("metadata.name"), "Required value");
    }
    check_object_name(&name, &namespace, &mut errs);
    let meta = FieldPath::root("metadata");
    crate::selector::validate_labels(np.metadata.labels.iter().flatten(), &meta, &mut errs);
    crate::selector::validate_annotations(np.metadata.annotations.as_ref(), &meta, &mut errs);
    let spec_path = FieldPath::root("spec");
    let default_spec = netv1::NetworkPolicySpec::default();
    // `spec` is a non-pointer struct in the API: an object without it is a valid
    // policy selecting every pod of its namespace for ingress, allowing nothing.
    let spec = np.spec.as_ref().unwrap_or(&default_spec);

    // spec.podSelector is a non-pointer struct in the API; null decodes as `{}`.
    let sel_path = spec_path.field("podSelector");
    let mut sel_errs = FieldErrors::default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => Selector::parse(s, &sel_path, &mut sel_errs, &mut warnings),
        None => Selector::everything(),
    };
    // Fail closed on a bad podSelector: isolate every pod of the namespace.
    let pod_selector = if sel_errs.is_empty() {
        pod_selector
    } else {
        errs.0.extend(sel_errs.0);
        Selector::everything()
    };

    // Effective policyTypes (API server defaulting, `SetDefaults_NetworkPolicy`).
    let types_path = spec_path.field("policyTypes");
    let mut isolates = [false; 2];
    let mut types_ok = true;
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            isolates[Direction::Ingress as usize] = true;
            isolates[Direction::Egress as usize] = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            if types.len() > 2 {
                errs.push(types_path.clone(), "may not specify more than two policyTypes");
                types_ok = false;
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => isolates[0] = true,
                    "Egress" => isolates[1] = true,
                    other => {
                        errs.push(
                            types_path.index(i),
                            format!(
                                "Unsupported value: {other:?}: supported values: \"Ingress\", \"Egress\""
                            ),
                        );
                        types_ok = false;
                    }
                }
            }
        }
    }
    if !types_ok {
        // We cannot tell what was meant: isolate both directions.
        isolates = [true, true];
    }

    let mut rules: [Vec<Rule>; 2] = [Vec::new(), Vec::new()];
    let ingress: Vec<RawRule<'_>> =
        spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect();
    let egress: Vec<_> = spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect();
    for (dir, list, field, peers_field) in
        [(Direction::Ingress, ingress, "ingress", "from"), (Direction::Egress, egress, "egress", "to")]
    {
        let dir_path = spec_path.field(field);
        for (i, (peers, ports)) in list.into_iter().enumerate() {
            let rule_path = dir_path.index(i);
            let rule =
                parse_rule(&namespace, peers, ports, &rule_path, peers_field, &mut errs, &mut warnings);
            if isolates[dir as usize] {
                rules[dir as usize].push(rule);
            }
        }
        let n = rules[dir as usize].len();
        let declared = match dir {
            Direction::Ingress => spec.ingress.as_ref().map_or(0, Vec::len),
            Direction::Egress => spec.egress.as_ref().map_or(0, Vec::len),
        };
        if declared > 0 && n == 0 && types_ok {
            warnings.push(
                dir_path,
                format!("{declared} {field} rule(s) ignored: policyTypes does not include {}", dir.as_str()),
            );
        }
    }

    let valid = errs.is_empty();
    if !valid {
        rules = [Vec::new(), Vec::new()];
    }
    let mut problems = problems_from(errs, &object, Severity::Error);
    problems.extend(problems_from(warnings, &object, Severity::Warning));
    (Policy { namespace, name, pod_selector, isolates, rules, valid }, problems)
}

fn parse_rule(
    namespace: &str,
    peers: Option<&Vec<netv1::NetworkPolicyPeer>>,
    ports: Option<&Vec<netv1::NetworkPolicyPort>>,
    path: &FieldPath,
    peers_field: &str,
    errs: &mut FieldErrors,
    warnings: &mut FieldErrors,
) -> Rule {
    let mut rule = Rule::default();
    for (j, p) in ports.into_iter().flatten().enumerate() {
        if let Some(m) = parse_port(p, &path.field("ports").index(j), errs) {
            rule.ports.push(m);
        }
    }
    for (j, peer) in peers.into_iter().flatten().enumerate() {
        if let Some(p) = parse_peer(namespace, peer, &path.field(peers_field).index(j), errs, warnings) {
            rule.peers.push(p);
        }
    }
    rule
}

fn parse_peer(
    namespace: &str,
    peer: &netv1::NetworkPolicyPeer,
    path: &FieldPath,
    errs: &mut FieldErrors,
    warnings: &mut FieldErrors,
) -> Option<Peer> {
    let count = [peer.pod_selector.is_some(), peer.namespace_selector.is_some(), peer.ip_block.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if count == 0 {
        errs.push(path.clone(), "Required value: must specify a peer");
        return None;
    }
    if let Some(b) = &peer.ip_block {
        if count > 1 {
            errs.push(path.clone(), "Forbidden: may not specify both ipBlock and another peer");
            return None;
        }
        return parse_ip_block(b, &path.field("ipBlock"), errs, warnings).map(Peer::Block);
    }
    let pods = match &peer.pod_selector {
        Some(s) => Selector::parse(s, &path.field("podSelector"), errs, warnings),
        None => Selector::everything(),
    };
    let namespaces = match &peer.namespace_selector {
        Some(s) => {
            NamespaceMatch::Selector(Selector::parse(s, &path.field("namespaceSelector"), errs, warnings))
        }
        None => NamespaceMatch::Own(namespace.to_string()),
    };
    Some(Peer::Pods { namespaces, pods })
}

fn parse_ip_block(
    b: &netv1::IPBlock,
    path: &FieldPath,
    errs: &mut FieldErrors,
    warnings: &mut FieldErrors,
) -> Option<IpBlock> {
    // An IPv4-mapped IPv6 block is an IPv4 block, as for the API server; it
    // warns that the plain form is meant.
    // Like the API server (`GetWarningsForCIDR`), it also warns of bits set
    // after the prefix (`10.0.0.7/24` is all of 10.0.0.0/24, perhaps not what
    // was meant) and of leading zeros (`010.0.0.0/8`, read as decimal), both
    // accepted.
    // `outer`: the cidr of an except.
    let mut mapped = |field: FieldPath, text: &str, c: &Cidr, outer: Option<&Cidr>| {
        if c.family == Family::V4 && text.contains(':') {
            let message = match outer {
                // An IPv4-mapped except as long as its IPv4 cidr passes
                // upstream's test as written (`/96` against `/0`) and excepts
                // all of it: written as an IPv4 block it would be refused.
                Some(o) if c.len <= o.len => format!(
                    "{text:?} is an IPv4-mapped IPv6 block, read as the IPv4 block {c}: all of `cidr` {o}, \
                     so this ipBlock matches no address"
                ),
                _ => format!("{text:?} is an IPv4-mapped IPv6 block, read as the IPv4 block {c}: write {c}"),
            };
            warnings.push(field.clone(), message);
        }
        let address = text.split_once('/').map_or(text, |(a, _)| a);
        let whole = if address.contains(':') { 128 } else { 32 };
        if let Ok(one) = Cidr::parse(&format!("{address}/{whole}")) {
            if one.addr != c.addr {
                warnings.push(
                    field.clone(),
                    format!(
                        "{text:?} has bits set after its prefix length: it is the whole block {c}; \
                         write {c}, or {one} if the one address is meant"
                    ),
                );
            }
        }
        // `/08`: Go's netip refuses a prefix length with a leading zero, as
        // it refuses the address forms above.
        let prefix_ok = text.split_once('/').is_none_or(|(_, l)| l == "0" || !l.starts_with('0'));
        if address.parse::<std::net::IpAddr>().is_err() || !prefix_ok {
            warnings.push(
                field,
                format!(
                    "{text:?} is not written in the standard form (leading zeros in an octet, group or \
                     prefix length), read as {c}; write {c}: API servers that validate strictly refuse it"
                ),
            );
        }
    };
    let cidr = match Cidr::parse(&b.cidr) {
        Ok(c) => {
            mapped(path.field("cidr"), &b.cidr, &c, None);
            c
        }
        Err(e) => {
            let msg = if b.cidr.is_empty() { "Required value".to_string() } else { e.to_string() };
            errs.push(path.field("cidr"), msg);
            return None;
        }
    };
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let p = path.field("except").index(i);
        // Upstream's test (`ValidateIPBlock`): the except's address inside the
        // cidr (an IPv4-mapped address counts as IPv4) and its prefix length,
        // as written, longer.
        let written = |t: &str| t.rsplit_once('/').and_then(|(_, l)| l.parse::<u8>().ok());
        match Cidr::parse(e) {
            Ok(c) if cidr.contains(c.family, c.addr) && written(&b.cidr) < written(e) => {
                mapped(p.clone(), e, &c, Some(&cidr));
                except.push(c)
            }
            Ok(_) => errs.push(p, format!("{e:?}: must be a strict subset of `cidr` {}", b.cidr)),
            Err(err) => errs.push(p, err.to_string()),
        }
    }
    except.sort();
    except.dedup();
    Some(IpBlock { cidr, except })
}

fn parse_port(p: &netv1::NetworkPolicyPort, path: &FieldPath, errs: &mut FieldErrors) -> Option<PortMatch> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => match Protocol::parse(s) {
            Some(proto) => proto,
            None => {
                errs.push(
                    path.field("protocol"),
                    format!("Unsupported value: {s:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                );
                return None;
            }
        },
    };
    let end_path = path.field("endPort");
    match (&p.port, p.end_port) {
        (None, None) => Some(PortMatch::Range { protocol, lo: 0, hi: 65535 }),
        (None, Some(_)) => {
            errs.push(end_path, "may not be specified when `port` is not specified");
            None
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = check_port_number(*n, &path.field("port"), errs)?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = check_port_number(e, &end_path, errs)?;
                    if hi < lo {
                        errs.push(end_path, "must be greater than or equal to `port`");
                        return None;
                    }
                    hi
                }
            };
            Some(PortMatch::Range { protocol, lo, hi })
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                errs.push(end_path, "may not be specified when `port` is non-numeric");
                return None;
            }
            if let Err(msg) = check_port_name(name) {
                errs.push(path.field("port"), msg);
                return None;
            }
            Some(PortMatch::Named { protocol, name: name.clone() })
        }
    }
}

fn check_port_number(n: i32, path: &FieldPath, errs: &mut FieldErrors) -> Option<u16> {
    if (1..=65535).contains(&n) {
        Some(n as u16)
    } else {
        errs.push(path.clone(), format!("Invalid value: {n}: must be between 1 and 65535, inclusive"));
        None
    }
}

/// An IANA service name (`validation.IsValidPortName`): 1-15 characters of
/// lowercase alphanumerics and '-', at least one letter, no leading, trailing
/// or doubled '-'.
pub fn check_port_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    if ok {
        return Ok(());
    }
    // A number YAML 1.2 reads as text but kubectl's YAML 1.1 as a number
    // (`0100` octal, `1_000`, `0x50`): say so rather than call it a bad name.
    let numeric = !b.is_empty()
        && (b.iter().all(|c| c.is_ascii_digit() || *c == b'_')
            || name
                .strip_prefix("0x")
                .is_some_and(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit())));
    let hint = if numeric {
        " (meant as a number? write it unquoted in plain decimal: kubectl would read 0100 as octal 64 and 1_000 as 1000)"
    } else {
        ""
    };
    Err(format!(
        "Invalid value: {name:?}: a port name must be 1-15 lowercase alphanumerics or '-', contain a letter, and not start, end or double '-'{hint}"
    ))
}

/// Converts a Namespace. The `kubernetes.io/metadata.name` label is added
/// (the API server sets it on every namespace since 1.21).
pub fn namespace(ns: &corev1::Namespace) -> Result<NamespaceInfo, Problem> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(Problem {
            severity: Severity::Error,
            object: ObjectRef { kind: "Namespace", namespace: String::new(), name },
            field: "metadata.name".into(),
            message: "Required value".into(),
        });
    }
    let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
    Ok(NamespaceInfo { name, labels })
}

/// What the API server would refuse in a Namespace that [`namespace`] still
/// converts: a name that is not a DNS label, invalid labels. Reported as
/// errors; the namespace keeps its labels as given (dropping one could make a
/// `NotIn` or `DoesNotExist` selector match it, which would fail open).
pub fn namespace_problems(ns: &corev1::Namespace) -> Vec<Problem> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut errs = FieldErrors::default();
    if !name.is_empty() && !crate::selector::is_dns_name(&name, true) {
        errs.push(
            FieldPath::root("metadata.name"),
            format!("Invalid value: {name:?}: a namespace name is a DNS label (at most 63 lowercase alphanumerics or '-', starting and ending with an alphanumeric)"),
        );
    }
    crate::selector::validate_labels(
        ns.metadata.labels.iter().flatten(),
        &FieldPath::root("metadata"),
        &mut errs,
    );
    crate::selector::validate_annotations(
        ns.metadata.annotations.as_ref(),
        &FieldPath::root("metadata"),
        &mut errs,
    );
    let object = ObjectRef { kind: "Namespace", namespace: String::new(), name };
    problems_from(errs, &object, Severity::Error)
}

/// A pod's or policy's `metadata.name`, when present: a DNS subdomain; and
/// its namespace (`metadata.namespace`, `default` when absent), a DNS label.
fn check_object_name(name: &str, namespace: &str, errs: &mut FieldErrors) {
    if !name.is_empty() && !crate::selector::is_dns_name(name, false) {
        errs.push(
            FieldPath::root("metadata.name"),
            format!("Invalid value: {name:?}: a name is a DNS subdomain (lowercase alphanumerics, '-' and '.', starting and ending with an alphanumeric)"),
        );
    }
    if !crate::selector::is_dns_name(namespace, true) {
        errs.push(
            FieldPath::root("metadata.namespace"),
            format!("Invalid value: {namespace:?}: a namespace name is a DNS label (at most 63 lowercase alphanumerics or '-', starting and ending with an alphanumeric)"),
        );
    }
}

/// Converts a Pod. `None` for pods NetworkPolicy does not apply to:
/// host-network pods (their address is the node's), pods without a valid IP,
/// and pods in phase Succeeded or Failed.
///
/// An invalid field never turns a pod into a non-pod address (that would skip
/// its isolation, failing open): the bad field (an unparsable IP, a bad
/// container port) is dropped and reported, and the pod stays an endpoint with
/// everything else it declares.
pub fn pod(p: &corev1::Pod) -> (Option<PodInfo>, Vec<Problem>) {
    let namespace = namespace_of(&p.metadata);
    let name = p.metadata.name.clone().unwrap_or_default();
    let object = ObjectRef { kind: "Pod", namespace: namespace.clone(), name: name.clone() };
    let mut errs = FieldErrors::default();
    let mut warnings = FieldErrors::default();
    if name.is_empty() {
        errs.push(FieldPath::root("metadata.name"), "Required value");
    }
    check_object_name(&name, &namespace, &mut errs);
    crate::selector::validate_labels(
        p.metadata.labels.iter().flatten(),
        &FieldPath::root("metadata"),
        &mut errs,
    );
    crate::selector::validate_annotations(
        p.metadata.annotations.as_ref(),
        &FieldPath::root("metadata"),
        &mut errs,
    );
    let spec = p.spec.as_ref();
    // Pods policy does not apply to are still reported for a bad name or
    // labels (the API server refuses those whatever the pod is).
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return (None, problems_from(errs, &object, Severity::Error));
    }
    let status = p.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded" | "Failed") => return (None, problems_from(errs, &object, Severity::Error)),
        // `""` decodes as the absent value in the API server.
        None | Some("" | "Pending" | "Running" | "Unknown") => {}
        // A misspelled phase keeps the pod an endpoint (isolated), reported.
        Some(other) => errs.push(
            FieldPath::root("status.phase"),
            format!("Unsupported value: {other:?}: supported values: \"Pending\", \"Running\", \"Succeeded\", \"Failed\", \"Unknown\""),
        ),
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(st) = status {
        let listed: Vec<(FieldPath, &str)> = match st.pod_ips.as_deref() {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, a)| (FieldPath::root("status.podIPs").index(i).field("ip"), a.ip.as_str()))
                .collect(),
            _ => st.pod_ip.iter().map(|a| (FieldPath::root("status.podIP"), a.as_str())).collect(),
        };
        for (path, text) in listed {
            // Leading zeros (`010.0.0.1`) as the API server reads them in this legacy field.
            let ip = parse_ip_sloppy(text);
            // An IPv4-mapped address (`::ffff:10.0.0.7`) is the IPv4 address
            // the pod's packets carry, as Kubernetes reads it (Go's `To4`); the
            // API server accepts it with a warning, and so does Portcullis.
            let ip = ip.map(|a| {
                let canonical = a.to_canonical();
                if canonical != a {
                    warnings.push(
                        path.clone(),
                        format!("{text:?} is an IPv4-mapped IPv6 address, read as the IPv4 address {canonical}: write {canonical}"),
                    );
                }
                canonical
            });
            match ip {
                // At most one address per family, no repeats (validatePodIPs).
                // Every address listed stays the pod's (isolated); the list is reported.
                Some(ip) if ips.contains(&ip) => errs.push(path, format!("Duplicate value: {text:?}")),
                Some(ip) if ips.iter().any(|a| a.is_ipv4() == ip.is_ipv4()) => {
                    errs.push(
                        path,
                        format!(
                            "Invalid value: {text:?}: may specify no more than one IP for each IP family"
                        ),
                    );
                    ips.push(ip);
                }
                Some(ip) => ips.push(ip),
                None => errs.push(path, format!("invalid IP address {text:?}")),
            }
        }
        // `podIPs[0]` must be `podIP`. When they disagree, both addresses are
        // the pod's (isolated), and the disagreement is reported.
        if let (Some(ip), Some(first)) = (st.pod_ip.as_deref(), st.pod_ips.as_deref().and_then(|l| l.first()))
        {
            let canonical = |t: &str| parse_ip_sloppy(t).map(|a| a.to_canonical());
            // Only `podIPs` was read above: a `podIP` that is no address is reported here.
            if canonical(ip).is_none() {
                errs.push(FieldPath::root("status.podIP"), format!("invalid IP address {ip:?}"));
            }
            if let (Some(a), b) = (canonical(ip), canonical(&first.ip)) {
                if Some(a) != b {
                    errs.push(
                        FieldPath::root("status.podIP"),
                        format!("Invalid value: {ip:?}: must be the first of status.podIPs ({:?})", first.ip),
                    );
                    if !ips.contains(&a) {
                        ips.push(a);
                    }
                }
            }
        }
    }
    let mut named_ports = Vec::new();
    let mut container_ports = Vec::new();
    // The app containers, then the init containers: a sidecar (an init
    // container with `restartPolicy: Always`) runs alongside them, so its
    // ports are the pod's too (docs/semantics.md, D4); the ports of other
    // init containers are validated, as the API server does, but never
    // served while the pod runs.
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default().iter().enumerate();
    let init = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default().iter().enumerate();
    let all = containers.map(|(i, c)| ("spec.containers", i, c, true)).chain(
        init.map(|(i, c)| ("spec.initContainers", i, c, c.restart_policy.as_deref() == Some("Always"))),
    );
    for (field, ci, c, serves) in all {
        // A port name is unique within a container (validateContainerPorts);
        // across containers a repeat is only warned about (docs/semantics.md, D3).
        let mut names_here: Vec<&str> = Vec::new();
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let path = FieldPath::root(field).index(ci).field("ports").index(pi);
            let protocol = match cp.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => match Protocol::parse(s) {
                    Some(p) => p,
                    None => {
                        errs.push(path.field("protocol"), format!("Unsupported value: {s:?}"));
                        continue;
                    }
                },
            };
            let Some(port) = u16::try_from(cp.container_port).ok().filter(|p| *p > 0) else {
                errs.push(path.field("containerPort"), "must be between 1 and 65535, inclusive");
                continue;
            };
            if serves && !container_ports.contains(&(protocol, port)) {
                container_ports.push((protocol, port));
            }
            let Some(port_name) = &cp.name else { continue };
            if let Err(m) = check_port_name(port_name) {
                errs.push(path.field("name"), m);
                continue;
            }
            // Both declarations are kept (a named rule matches either): reported, not dropped.
            if names_here.contains(&port_name.as_str()) {
                errs.push(path.field("name"), format!("Duplicate value: {port_name:?}"));
            }
            names_here.push(port_name);
            if serves {
                named_ports.push(NamedPort { name: port_name.clone(), protocol, port });
            }
        }
    }
    let mut problems = problems_from(errs, &object, Severity::Error);
    problems.extend(problems_from(warnings, &object, Severity::Warning));
    if ips.is_empty() || name.is_empty() {
        return (None, problems);
    }
    named_ports.sort();
    named_ports.dedup();
    let labels = p.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    (Some(PodInfo { namespace, name, labels, ips, named_ports, container_ports }), problems)
}
