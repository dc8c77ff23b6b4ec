//! The obviously-correct evaluator: reads the policies directly for one flow.
//!
//! It is slow on purpose (linear in pods and policies) and written to follow
//! the API reference sentence by sentence, so the fast [`crate::DecisionTable`]
//! can be checked against it (property tests), and so `portcullis explain` can
//! list *every* policy and rule involved, not only the first.

use std::net::IpAddr;

use crate::cidr::split;
use crate::cluster::Cluster;
use crate::model::*;

/// One side (egress of the source, or ingress of the destination) in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SideDetail {
    /// That end is not a pod: the side is not evaluated.
    NotPod,
    /// That end is a pod. `isolating`: indexes (into `Cluster::policies`) of the
    /// policies that select it for this direction; empty means not isolated.
    /// `allowing`: (policy index, rule index) of every rule that allows the flow.
    Pod {
        /// Index of the pod in `Cluster::pods`.
        pod: usize,
        /// Policies isolating the pod in this direction.
        isolating: Vec<usize>,
        /// Rules allowing this flow.
        allowing: Vec<(usize, usize)>,
    },
}

impl SideDetail {
    /// Does this side let the flow pass?
    pub fn allows(&self) -> bool {
        match self {
            SideDetail::NotPod => true,
            SideDetail::Pod { isolating, allowing, .. } => isolating.is_empty() || !allowing.is_empty(),
        }
    }
}

/// The full answer for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    /// Egress side of the source.
    pub egress: SideDetail,
    /// Ingress side of the destination.
    pub ingress: SideDetail,
}

impl Detail {
    /// A connection passes when both sides allow it.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// The pod that owns `ip`, if any.
pub fn pod_of(cluster: &Cluster, ip: IpAddr) -> Option<usize> {
    cluster.pods.iter().position(|p| p.ips.contains(&ip))
}

/// Evaluates one flow: `src` opens a connection to `dst` with IP protocol
/// `protocol` and destination port `port` (ignored for portless protocols).
pub fn evaluate(cluster: &Cluster, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Detail {
    let src_pod = pod_of(cluster, src);
    let dst_pod = pod_of(cluster, dst);
    let dst_info = dst_pod.map(|i| &cluster.pods[i]);
    let side = |subject: Option<usize>, dir: Direction, peer_ip: IpAddr, peer: Option<usize>| {
        match subject {
            None => SideDetail::NotPod,
            Some(s) => {
                let pod = &cluster.pods[s];
                let mut isolating = Vec::new();
                let mut allowing = Vec::new();
                for (pi, pol) in cluster.policies.iter().enumerate() {
                    // A policy applies to the pods of its own namespace that its podSelector selects...
                    if pol.namespace != pod.namespace || !pol.pod_selector.matches(&pod.labels) {
                        continue;
                    }
                    // ...in the directions of its effective policyTypes.
                    if !pol.isolates(dir) {
                        continue;
                    }
                    isolating.push(pi);
                    for (ri, rule) in pol.rules(dir).iter().enumerate() {
                        let peer_ok = rule.peers.is_empty()
                            || rule
                                .peers
                                .iter()
                                .any(|p| peer_matches(cluster, &pol.namespace, p, peer_ip, peer));
                        let port_ok = rule.ports.is_empty()
                            || rule.ports.iter().any(|m| port_matches(m, protocol, port, dst_info));
                        if peer_ok && port_ok {
                            allowing.push((pi, ri));
                        }
                    }
                }
                SideDetail::Pod { pod: s, isolating, allowing }
            }
        }
    };
    Detail {
        egress: side(src_pod, Direction::Egress, dst, dst_pod),
        ingress: side(dst_pod, Direction::Ingress, src, src_pod),
    }
}

/// Does a peer entry match the other end of the flow?
pub fn peer_matches(cluster: &Cluster, policy_ns: &str, peer: &Peer, ip: IpAddr, pod: Option<usize>) -> bool {
    match peer {
        Peer::Block(b) => {
            let (f, a) = split(ip);
            b.contains(f, a)
        }
        Peer::Pods { namespaces, pods } => {
            // Selector peers never match an address that is not a pod's.
            let Some(p) = pod.map(|i| &cluster.pods[i]) else {
                return false;
            };
            if let NamespaceMatch::Own(ns) = namespaces {
                debug_assert_eq!(ns, policy_ns);
            }
            namespace_matches(cluster, namespaces, &p.namespace) && pods.matches(&p.labels)
        }
    }
}

/// Does a selector peer's namespace part match pods of namespace `ns`?
pub fn namespace_matches(cluster: &Cluster, namespaces: &NamespaceMatch, ns: &str) -> bool {
    match namespaces {
        NamespaceMatch::Own(own) => own == ns,
        NamespaceMatch::Selector(sel) => cluster.namespace(ns).is_some_and(|n| sel.matches(&n.labels)),
    }
}

/// Does a port entry match? Named ports are looked up on the destination pod
/// (for ingress the selected pod, for egress the peer); a non-pod destination
/// never matches a named port.
pub fn port_matches(m: &PortMatch, protocol: u8, port: u16, dst: Option<&PodInfo>) -> bool {
    match m {
        PortMatch::Range { protocol: p, lo, hi } => p.number() == protocol && *lo <= port && port <= *hi,
        PortMatch::Named { protocol: p, name } => {
            p.number() == protocol
                && dst.is_some_and(|d| {
                    d.named_ports.iter().any(|np| np.name == *name && np.protocol == *p && np.port == port)
                })
        }
    }
}
