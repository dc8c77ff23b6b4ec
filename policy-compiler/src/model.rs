//! Validated domain types. Everything past [`crate::validate`] works on these,
//! never on raw API objects, so the compiler cannot meet an invalid value.

use std::fmt;
use std::net::IpAddr;

use crate::cidr::IpBlock;
use crate::selector::{Labels, Selector};

/// Label every namespace carries since Kubernetes 1.21 (set by the API server).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Direction of a policy side, seen from the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic arriving at the selected pod.
    Ingress = 0,
    /// Traffic leaving the selected pod.
    Egress = 1,
}

impl Direction {
    /// Both directions, ingress first.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The name used in `policyTypes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

/// A transport protocol a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6), the default.
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
        }
    }

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; case-sensitive like the API server).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// Which ports of which protocol a rule entry allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Ports `lo..=hi` of `protocol`; a rule without `port` is `0..=65535`.
    Range {
        /// Protocol.
        protocol: Protocol,
        /// First port.
        lo: u16,
        /// Last port, inclusive.
        hi: u16,
    },
    /// A named container port of the destination pod.
    Named {
        /// Protocol the container port must declare.
        protocol: Protocol,
        /// The port's name (an IANA service name).
        name: String,
    },
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::Range { protocol, lo: 0, hi: 65535 } => write!(f, "{protocol}/*"),
            PortMatch::Range { protocol, lo, hi } if lo == hi => write!(f, "{protocol}/{lo}"),
            PortMatch::Range { protocol, lo, hi } => write!(f, "{protocol}/{lo}-{hi}"),
            PortMatch::Named { protocol, name } => write!(f, "{protocol}/{name}"),
        }
    }
}

/// Which namespaces a selector peer looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceMatch {
    /// Only the policy's own namespace (no `namespaceSelector`).
    Own(String),
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// One `from`/`to` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Pods picked by namespace and pod selectors (ANDed). Never matches a
    /// non-pod address.
    Pods {
        /// Namespaces searched.
        namespaces: NamespaceMatch,
        /// Pods matched inside them (`podSelector` absent means all).
        pods: Selector,
    },
    /// Addresses in a CIDR block minus its exceptions; matches pod IPs too.
    Block(IpBlock),
}

/// One ingress or egress rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Peers; empty means every peer, pod or not.
    pub peers: Vec<Peer>,
    /// Ports; empty means every protocol and port (ICMP included).
    pub ports: Vec<PortMatch>,
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.podSelector`: pods of `namespace` this policy isolates.
    pub pod_selector: Selector,
    /// Does it isolate the selected pods for [ingress, egress]? (effective `policyTypes`)
    pub isolates: [bool; 2],
    /// Rules per direction, [ingress, egress]; empty for a direction it does not isolate.
    pub rules: [Vec<Rule>; 2],
    /// False when the object failed validation: it is kept, fail-closed, with no rules.
    pub valid: bool,
}

impl Policy {
    /// Rules for one direction.
    pub fn rules(&self, d: Direction) -> &[Rule] {
        &self.rules[d as usize]
    }

    /// Does this policy isolate its pods in direction `d`?
    pub fn isolates(&self, d: Direction) -> bool {
        self.isolates[d as usize]
    }
}

/// A container port with a name, for named-port rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// Port name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// A namespace: name and labels (with [`NAMESPACE_NAME_LABEL`] always present).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
}

impl NamespaceInfo {
    /// A namespace that pods or policies name but the input does not hold:
    /// assumed to exist with only its name label (as a snapshot does).
    pub fn assumed(name: &str) -> NamespaceInfo {
        NamespaceInfo {
            name: name.to_string(),
            labels: [(NAMESPACE_NAME_LABEL.to_string(), name.to_string())].into(),
        }
    }
}

/// A pod that NetworkPolicy applies to: has an IP, is not host-network, not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Pod IPs (one per family at most, as the API allows).
    pub ips: Vec<IpAddr>,
    /// Named container ports, for named-port rules.
    pub named_ports: Vec<NamedPort>,
    /// Every declared container port (named or not), in declaration order.
    pub container_ports: Vec<(Protocol, u16)>,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
