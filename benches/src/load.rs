//! The end-to-end load test's pure parts: the cluster it enforces, the flows
//! the generator sends, the frames it builds, and the same policies as
//! nftables rules for the kernel's side of the comparison.
//!
//! ```text
//!  bench_cluster(N, pods) ──▶ Cluster ──▶ manifests (Portcullis reads them)
//!                                  └────▶ nft_ruleset(shape) (the kernel loads it)
//!  FlowPlan { flows, deny % } ──▶ frame k ──▶ (class, src port, dst port) ──▶ Template::write
//! ```
//!
//! Two pods live in namespace [`LOAD_NS`]: the generator `gen` and the sink
//! `sink`. Exactly one policy, `load/allow-gen`, speaks about them: the sink
//! is isolated for ingress and accepts TCP and UDP from `gen` on ports
//! [`ALLOWED_PORTS`]. Frames to [`DENIED_PORTS`] are the ones policy must
//! deny. The other N - 1 policies come from [`crate::generate`] over `pods`
//! pods: they do not select the two pods, but every enforcer has to look
//! past them, which is what the comparison measures.
//!
//! Nothing here does I/O; `src/bin/pcl-load.rs` sends, and
//! `e2e/side-by-side.sh` sets up namespaces and counts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_compiler::cidr::{split, Family, IpBlock};
use policy_compiler::model::{
    NamespaceInfo, NamespaceMatch, Peer, PodInfo, Policy, PortMatch, Protocol, Rule, NAMESPACE_NAME_LABEL,
};
use policy_compiler::selector::Selector;
use policy_compiler::Cluster;

/// Namespace of the generator and sink pods.
pub const LOAD_NS: &str = "load";
/// Destination ports policy allows from the generator to the sink (TCP and UDP).
pub const ALLOWED_PORTS: (u16, u16) = (1000, 1999);
/// Destination ports policy denies.
pub const DENIED_PORTS: (u16, u16) = (2000, 2999);
/// Source ports the generator uses.
pub const SOURCE_PORTS: (u16, u16) = (10000, 59999);
/// The generator pod's addresses.
pub const GEN_IPS: (Ipv4Addr, Ipv6Addr) =
    (Ipv4Addr::new(10, 250, 0, 1), Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1));
/// The sink pod's addresses.
pub const SINK_IPS: (Ipv4Addr, Ipv6Addr) =
    (Ipv4Addr::new(10, 250, 0, 2), Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2));

/// The cluster of a run with `policies` NetworkPolicies (at least 1: the
/// load policy) over about `pods` generated pods plus the two load pods.
pub fn bench_cluster(policies: usize, pods: usize) -> Cluster {
    let g = crate::generate(pods, policies.saturating_sub(1), 1);
    let mut namespaces = g.namespaces;
    let mut all_pods = g.pods;
    let mut all_policies = g.policies;
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    namespaces.push(NamespaceInfo {
        name: LOAD_NS.into(),
        labels: labels(&[(NAMESPACE_NAME_LABEL, LOAD_NS), ("team", "load"), ("env", "bench")]),
    });
    for (name, (v4, v6)) in [("gen", GEN_IPS), ("sink", SINK_IPS)] {
        all_pods.push(PodInfo {
            namespace: LOAD_NS.into(),
            name: name.into(),
            labels: labels(&[("app", name)]),
            ips: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
            named_ports: vec![],
            container_ports: vec![],
        });
    }
    let range = |protocol| PortMatch::Range { protocol, lo: ALLOWED_PORTS.0, hi: ALLOWED_PORTS.1 };
    all_policies.push(Policy {
        namespace: LOAD_NS.into(),
        name: "allow-gen".into(),
        pod_selector: Selector::from_labels([("app", "sink")]),
        isolates: [true, false],
        rules: [
            vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceMatch::Own(LOAD_NS.into()),
                    pods: Selector::from_labels([("app", "gen")]),
                }],
                ports: vec![range(Protocol::Tcp), range(Protocol::Udp)],
            }],
            vec![],
        ],
        valid: true,
    });
    Cluster::from_parts(namespaces, all_pods, all_policies)
}

/// Which frames the generator sends: `flows` distinct 5-tuples, of which
/// `deny_percent` percent (at least one when the share is not zero) are
/// flows policy denies; frames cycle through the flows of each class, and
/// `deny_percent` of the frames are denied ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowPlan {
    /// Distinct allowed flows.
    pub allowed: u32,
    /// Distinct denied flows.
    pub denied: u32,
    /// Percentage of frames that belong to denied flows.
    pub deny_percent: u32,
}

/// The class of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Policy allows it: it must arrive.
    Allowed,
    /// Policy denies it: it must not arrive.
    Denied,
}

impl FlowPlan {
    /// A plan of `flows` flows (at least 1 allowed) with `deny_percent` (0..=99) of
    /// the frames denied.
    pub fn new(flows: u32, deny_percent: u32) -> FlowPlan {
        let deny_percent = deny_percent.min(99);
        let denied = if deny_percent == 0 { 0 } else { (flows / 100 * deny_percent).max(1) };
        FlowPlan { allowed: flows.saturating_sub(denied).max(1), denied, deny_percent }
    }

    /// Class and (source port, destination port) of frame `k`.
    #[inline]
    pub fn frame(&self, k: u64) -> (Class, u16, u16) {
        let in_hundred = (k % 100) as u32;
        let (class, n, i, base) = if in_hundred < self.deny_percent {
            // The denied frames' own counter: frame k is the j-th denied frame.
            let j = (k / 100) * u64::from(self.deny_percent) + u64::from(in_hundred);
            (Class::Denied, self.denied, j, DENIED_PORTS.0)
        } else {
            let j =
                (k / 100) * u64::from(100 - self.deny_percent) + u64::from(in_hundred - self.deny_percent);
            (Class::Allowed, self.allowed, j, ALLOWED_PORTS.0)
        };
        let flow = (i % u64::from(n.max(1))) as u32;
        let sports = u32::from(SOURCE_PORTS.1 - SOURCE_PORTS.0) + 1;
        let sport = SOURCE_PORTS.0 + (flow % sports) as u16;
        let dport = base + ((flow / sports) % 1000) as u16;
        (class, sport, dport)
    }
}

/// L4 protocol of the generated frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// UDP datagrams.
    Udp,
    /// TCP segments with ACK set (a connection already open: trackers pick it up).
    Tcp,
}

/// A prebuilt frame whose ports are patched per frame, with the L4 checksum
/// updated incrementally (RFC 1624).
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
    l4: usize,
    csum_at: Option<usize>,
    udp: bool,
    /// One's-complement sum of the pseudo-header and segment with both ports zero.
    partial: u32,
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

impl Template {
    /// Ethernet + IP + UDP/TCP from `src` to `dst` (both of one family), padded
    /// to at least `size` bytes (64 fits IPv4 and UDP over IPv6; TCP over IPv6
    /// needs 74).
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: IpAddr,
        dst: IpAddr,
        l4: L4,
        size: usize,
    ) -> Template {
        let l4_len = match l4 {
            L4::Udp => 8,
            L4::Tcp => 20,
        };
        let proto = match l4 {
            L4::Udp => 17u8,
            L4::Tcp => 6u8,
        };
        let ip_len = if src.is_ipv4() { 20 } else { 40 };
        let total = (14 + ip_len + l4_len).max(size);
        let seg_len = total - 14 - ip_len;
        let mut f = Vec::with_capacity(total);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        let mut pseudo = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + seg_len) as u16).to_be_bytes());
                ip[6] = 0x40;
                ip[8] = 64;
                ip[9] = proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = !fold(sum16(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(seg_len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(seg_len as u16).to_be_bytes());
                ip[6] = proto;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&ip);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(seg_len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, proto]);
            }
            _ => panic!("source and destination of different families"),
        }
        let l4_at = f.len();
        let csum_at = match l4 {
            L4::Udp => {
                f.extend_from_slice(&[0, 0, 0, 0]);
                f.extend_from_slice(&(seg_len as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
                l4_at + 6
            }
            L4::Tcp => {
                f.extend_from_slice(&[0, 0, 0, 0]);
                f.extend_from_slice(&1u32.to_be_bytes()); // seq
                f.extend_from_slice(&1u32.to_be_bytes()); // ack
                f.extend_from_slice(&[0x50, 0x10]); // data offset 5, ACK
                f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
                l4_at + 16
            }
        };
        f.resize(total, 0);
        let partial = sum16(&pseudo) + sum16(&f[l4_at..]);
        // UDP over IPv4 may go without a checksum (RFC 768); everything else needs one.
        let csum_at = (!(l4 == L4::Udp && src.is_ipv4())).then_some(csum_at);
        Template { bytes: f, l4: l4_at, csum_at, udp: l4 == L4::Udp, partial }
    }

    /// Frame length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a frame has headers.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes the frame with these ports into `out` (at least [`Template::len`] bytes).
    #[inline]
    pub fn write(&self, out: &mut [u8], sport: u16, dport: u16) {
        let out = &mut out[..self.bytes.len()];
        out.copy_from_slice(&self.bytes);
        out[self.l4..self.l4 + 2].copy_from_slice(&sport.to_be_bytes());
        out[self.l4 + 2..self.l4 + 4].copy_from_slice(&dport.to_be_bytes());
        if let Some(at) = self.csum_at {
            let mut c = !fold(self.partial + u32::from(sport) + u32::from(dport));
            if c == 0 && self.udp {
                c = 0xffff; // UDP: a computed zero is sent as all ones (RFC 768, RFC 8200)
            }
            out[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// How the kernel's rules are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Every rule of every policy in one chain, evaluated in order
    /// (iptables-style enforcers: a rule per policy rule, ipsets for peers).
    Linear,
    /// A verdict map from pod address to that pod's own chain, holding only the
    /// rules of the policies that select it; peers are sets (per-endpoint
    /// chains with set lookups, as Calico's nftables mode does).
    Sets,
}

/// Counts of what a ruleset holds, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RulesetStats {
    /// Rules in policy chains.
    pub rules: usize,
    /// Named address sets.
    pub sets: usize,
    /// Chains (besides the base chain).
    pub chains: usize,
}

/// Name of the nftables table the ruleset creates (family `inet`).
pub const NFT_TABLE: &str = "portcullis_bench";

struct Emitter<'c> {
    cluster: &'c Cluster,
    ns_of: HashMap<&'c str, &'c NamespaceInfo>,
    peer_cache: HashMap<Peer, Vec<usize>>,
    sets: HashMap<(Family, Vec<IpAddr>), String>,
    set_defs: String,
    stats: RulesetStats,
}

fn fam_kw(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::V4 => ("ip", "ipv4_addr"),
        Family::V6 => ("ip6", "ipv6_addr"),
    }
}

fn proto_kw(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One address side of a rule: nothing (any address), a set of pod addresses,
/// an ipBlock, or those pods' addresses that lie in a block.
#[derive(Clone)]
enum Addr {
    Any,
    Pods(Vec<usize>),
    Block(IpBlock),
    PodsIn(Vec<usize>, IpBlock),
}

impl<'c> Emitter<'c> {
    fn pods_of_peer(&mut self, peer: &Peer) -> Vec<usize> {
        if let Some(v) = self.peer_cache.get(peer) {
            return v.clone();
        }
        let Peer::Pods { namespaces, pods } = peer else { return vec![] };
        let v: Vec<usize> = (0..self.cluster.pods.len())
            .filter(|&i| {
                let p = &self.cluster.pods[i];
                let ns_ok = match namespaces {
                    NamespaceMatch::Own(ns) => p.namespace == *ns,
                    NamespaceMatch::Selector(sel) => {
                        self.ns_of.get(p.namespace.as_str()).is_some_and(|n| sel.matches(&n.labels))
                    }
                };
                ns_ok && pods.matches(&p.labels)
            })
            .collect();
        self.peer_cache.insert(peer.clone(), v.clone());
        v
    }

    /// A named set holding these pods' addresses of family `f` (`None` if there are none).
    fn set_of(&mut self, f: Family, pods: &[usize]) -> Option<String> {
        let ips: Vec<IpAddr> = pods.iter().flat_map(|&i| self.cluster.pods[i].ips.iter().copied()).collect();
        self.set_of_ips(f, ips)
    }

    /// A named set holding the addresses of family `f` (`None` if there are none).
    fn set_of_ips(&mut self, f: Family, mut ips: Vec<IpAddr>) -> Option<String> {
        ips.retain(|ip| split(*ip).0 == f);
        if ips.is_empty() {
            return None;
        }
        ips.sort();
        ips.dedup();
        let n = self.sets.len();
        let (kw, ty) = fam_kw(f);
        let set_defs = &mut self.set_defs;
        let stats = &mut self.stats;
        let name = self.sets.entry((f, ips)).or_insert_with_key(|(_, ips)| {
            let name = format!("a{n}_{kw}");
            let _ = write!(set_defs, "  set {name} {{ type {ty}; elements = {{ ");
            for (i, ip) in ips.iter().enumerate() {
                let _ = write!(set_defs, "{}{ip}", if i > 0 { ", " } else { "" });
            }
            set_defs.push_str(" } }\n");
            stats.sets += 1;
            name
        });
        Some(format!("@{name}"))
    }

    fn addr_match(&mut self, f: Family, dir_kw: &str, a: &Addr) -> Option<String> {
        let (kw, _) = fam_kw(f);
        match a {
            Addr::Any => Some(String::new()),
            Addr::Pods(p) => self.set_of(f, p).map(|s| format!("{kw} {dir_kw} {s} ")),
            Addr::PodsIn(p, b) => {
                let ips = p
                    .iter()
                    .flat_map(|&i| self.cluster.pods[i].ips.iter().copied())
                    .filter(|ip| {
                        let (f, a) = split(*ip);
                        b.contains(f, a)
                    })
                    .collect();
                self.set_of_ips(f, ips).map(|s| format!("{kw} {dir_kw} {s} "))
            }
            Addr::Block(b) => {
                if b.cidr.family != f {
                    return None;
                }
                let mut m = format!("{kw} {dir_kw} {} ", b.cidr);
                if !b.except.is_empty() {
                    let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                    let _ = write!(m, "{kw} {dir_kw} != {{ {} }} ", ex.join(", "));
                }
                Some(m)
            }
        }
    }

    /// The rules of one policy rule for the pods `local` (the side the policy
    /// selects). With `match_local` false the caller's chain is only reached
    /// for those pods (a per-endpoint chain) and the rules leave them out,
    /// except where a named port's number differs between them.
    fn rule_lines(
        &mut self,
        out: &mut String,
        rule: &Rule,
        ingress: bool,
        local: &[usize],
        match_local: bool,
    ) {
        let (local_kw, peer_kw) = if ingress { ("daddr", "saddr") } else { ("saddr", "daddr") };
        let peers: Vec<Addr> = if rule.peers.is_empty() {
            vec![Addr::Any]
        } else {
            rule.peers
                .iter()
                .map(|p| match p {
                    Peer::Block(b) => Addr::Block(b.clone()),
                    Peer::Pods { .. } => Addr::Pods(self.pods_of_peer(p)),
                })
                .collect()
        };
        let ports: Vec<Option<&PortMatch>> =
            if rule.ports.is_empty() { vec![None] } else { rule.ports.iter().map(Some).collect() };
        let base_local = match_local.then(|| local.to_vec());
        for peer in &peers {
            for port in &ports {
                // (local restriction, peer, port text); named ports split pods by number.
                let mut combos: Vec<(Option<Vec<usize>>, Addr, String)> = Vec::new();
                match port {
                    None => combos.push((base_local.clone(), peer.clone(), String::new())),
                    Some(PortMatch::Range { protocol, lo, hi }) => {
                        let p = proto_kw(*protocol);
                        let text = if (*lo, *hi) == (0, 65535) {
                            format!("meta l4proto {p} ")
                        } else if lo == hi {
                            format!("meta l4proto {p} th dport {lo} ")
                        } else {
                            format!("meta l4proto {p} th dport {lo}-{hi} ")
                        };
                        combos.push((base_local.clone(), peer.clone(), text));
                    }
                    Some(PortMatch::Named { protocol, name }) => {
                        // The number comes from the destination pod: the local pod for
                        // ingress, the peer for egress (never a non-pod address).
                        let pods = &self.cluster.pods;
                        let number = |i: usize| {
                            pods[i]
                                .named_ports
                                .iter()
                                .find(|np| np.name == *name && np.protocol == *protocol)
                                .map(|np| np.port)
                        };
                        let dst_pods: Vec<usize> = if ingress {
                            local.to_vec()
                        } else {
                            match peer {
                                Addr::Pods(p) | Addr::PodsIn(p, _) => p.clone(),
                                Addr::Any => (0..pods.len()).collect(),
                                Addr::Block(b) => (0..pods.len())
                                    .filter(|&i| {
                                        pods[i].ips.iter().any(|ip| {
                                            let (f, a) = split(*ip);
                                            b.contains(f, a)
                                        })
                                    })
                                    .collect(),
                            }
                        };
                        let mut by_port: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
                        for i in dst_pods {
                            if let Some(n) = number(i) {
                                by_port.entry(n).or_default().push(i);
                            }
                        }
                        let p = proto_kw(*protocol);
                        for (n, group) in by_port {
                            let text = format!("meta l4proto {p} th dport {n} ");
                            if ingress {
                                combos.push((Some(group), peer.clone(), text));
                            } else {
                                // The peer's own addresses (of those in the block, only pods').
                                let peer = match peer {
                                    Addr::Block(b) => Addr::PodsIn(group, b.clone()),
                                    _ => Addr::Pods(group),
                                };
                                combos.push((base_local.clone(), peer, text));
                            }
                        }
                    }
                }
                for (loc, peer_addr, port_text) in combos {
                    for f in [Family::V4, Family::V6] {
                        let loc_text = match &loc {
                            Some(pods) => match self.addr_match(f, local_kw, &Addr::Pods(pods.clone())) {
                                Some(t) => t,
                                None => continue,
                            },
                            None => String::new(),
                        };
                        let Some(peer_text) = self.addr_match(f, peer_kw, &peer_addr) else { continue };
                        if loc_text.is_empty() && peer_text.is_empty() {
                            // Nothing family-specific: one rule serves both families.
                            if f == Family::V6 {
                                continue;
                            }
                        }
                        let _ = writeln!(out, "    {loc_text}{peer_text}{port_text}return");
                        self.stats.rules += 1;
                    }
                }
            }
        }
    }
}

/// The cluster's policies as an nftables ruleset (table `inet`
/// [`NFT_TABLE`], base chain on the forward hook with connection tracking),
/// to load with `nft -f` where bridged traffic passes the inet hooks
/// (`net.bridge.bridge-nf-call-iptables=1`). Semantics as the compiler's for
/// the traffic the load test sends (both directions, `policyTypes`, empty
/// peers and ports, ipBlock except, named ports); not a general enforcer.
pub fn nft_ruleset(cluster: &Cluster, shape: Shape) -> (String, RulesetStats) {
    let mut e = Emitter {
        cluster,
        ns_of: cluster.namespaces.iter().map(|n| (n.name.as_str(), n)).collect(),
        peer_cache: HashMap::new(),
        sets: HashMap::new(),
        set_defs: String::new(),
        stats: RulesetStats::default(),
    };
    // Pods each policy selects.
    let selected: Vec<Vec<usize>> = cluster
        .policies
        .iter()
        .map(|pol| {
            (0..cluster.pods.len())
                .filter(|&i| {
                    let p = &cluster.pods[i];
                    p.namespace == pol.namespace && pol.pod_selector.matches(&p.labels)
                })
                .collect()
        })
        .collect();
    let mut chains = String::new();
    let mut base = String::new();
    base.push_str("    ct state established,related accept\n");
    for (d, ingress) in [(1usize, false), (0usize, true)] {
        // Chain and map names: `pin`/`peg` (policy ingress/egress), never nft keywords.
        let dname = if ingress { "pin" } else { "peg" };
        let local_kw = if ingress { "daddr" } else { "saddr" };
        match shape {
            Shape::Linear => {
                let mut body = String::new();
                let mut isolated: Vec<usize> = Vec::new();
                for (pi, pol) in cluster.policies.iter().enumerate() {
                    if !pol.isolates[d] {
                        continue;
                    }
                    isolated.extend(&selected[pi]);
                    for rule in &pol.rules[d] {
                        e.rule_lines(&mut body, rule, ingress, &selected[pi], true);
                    }
                }
                isolated.sort_unstable();
                isolated.dedup();
                for f in [Family::V4, Family::V6] {
                    if let Some(s) = e.set_of(f, &isolated) {
                        let _ = writeln!(body, "    {} {local_kw} {s} drop", fam_kw(f).0);
                    }
                }
                let _ = write!(chains, "  chain {dname} {{\n{body}  }}\n");
                e.stats.chains += 1;
                let _ = writeln!(base, "    jump {dname}");
            }
            Shape::Sets => {
                // Pods grouped by the exact list of policies isolating them in this direction.
                let mut by_pod: Vec<Vec<usize>> = vec![Vec::new(); cluster.pods.len()];
                for (pi, pol) in cluster.policies.iter().enumerate() {
                    if pol.isolates[d] {
                        for &i in &selected[pi] {
                            by_pod[i].push(pi);
                        }
                    }
                }
                let mut groups: HashMap<Vec<usize>, Vec<usize>> = HashMap::new();
                for (i, pols) in by_pod.into_iter().enumerate() {
                    if !pols.is_empty() {
                        groups.entry(pols).or_default().push(i);
                    }
                }
                let mut groups: Vec<(Vec<usize>, Vec<usize>)> = groups.into_iter().collect();
                groups.sort();
                let mut vmap: [Vec<String>; 2] = [Vec::new(), Vec::new()];
                for (gi, (pols, pods)) in groups.iter().enumerate() {
                    let chain = format!("{dname}_{gi}");
                    let mut body = String::new();
                    for &pi in pols {
                        let pol = &cluster.policies[pi];
                        for rule in &pol.rules[d] {
                            e.rule_lines(&mut body, rule, ingress, pods, false);
                        }
                    }
                    body.push_str("    drop\n");
                    let _ = write!(chains, "  chain {chain} {{\n{body}  }}\n");
                    e.stats.chains += 1;
                    for &i in pods {
                        for ip in &cluster.pods[i].ips {
                            let k = usize::from(ip.is_ipv6());
                            vmap[k].push(format!("{ip} : jump {chain}"));
                        }
                    }
                }
                for (k, f) in [Family::V4, Family::V6].into_iter().enumerate() {
                    if vmap[k].is_empty() {
                        continue;
                    }
                    let (kw, ty) = fam_kw(f);
                    let name = format!("v{dname}_{kw}");
                    let _ = writeln!(
                        e.set_defs,
                        "  map {name} {{ type {ty} : verdict; elements = {{ {} }} }}",
                        vmap[k].join(", ")
                    );
                    let _ = writeln!(base, "    {kw} {local_kw} vmap @{name}");
                }
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "table inet {NFT_TABLE} {{");
    out.push_str(&e.set_defs);
    out.push_str(&chains);
    let _ = write!(
        out,
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{base}  }}\n}}\n"
    );
    (out, e.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::DecisionTable;

    #[test]
    fn the_load_policy_allows_exactly_the_allowed_ports() {
        for n in [1, 100] {
            let c = bench_cluster(n, 200);
            assert_eq!(c.policies.len(), n);
            let t = DecisionTable::compile(&c);
            for (gen, sink) in [(GEN_IPS.0.into(), SINK_IPS.0.into()), (GEN_IPS.1.into(), SINK_IPS.1.into())]
            {
                for proto in [6, 17] {
                    for port in [ALLOWED_PORTS.0, ALLOWED_PORTS.1] {
                        assert!(t.verdict(gen, sink, proto, port).allowed(), "{n} {proto} {port}");
                    }
                    for port in [DENIED_PORTS.0, DENIED_PORTS.1, 80] {
                        assert!(!t.verdict(gen, sink, proto, port).allowed(), "{n} {proto} {port}");
                    }
                }
            }
        }
    }

    #[test]
    fn flow_plan_shares_and_counts() {
        let p = FlowPlan::new(100_000, 10);
        assert_eq!((p.allowed, p.denied), (90_000, 10_000));
        let mut seen = std::collections::HashSet::new();
        let mut denied = 0;
        for k in 0..1_000_000u64 {
            let (c, s, d) = p.frame(k);
            match c {
                Class::Denied => {
                    denied += 1;
                    assert!((DENIED_PORTS.0..=DENIED_PORTS.1).contains(&d));
                }
                Class::Allowed => assert!((ALLOWED_PORTS.0..=ALLOWED_PORTS.1).contains(&d)),
            }
            assert!((SOURCE_PORTS.0..=SOURCE_PORTS.1).contains(&s));
            seen.insert((s, d));
        }
        assert_eq!(denied, 100_000);
        assert_eq!(seen.len(), 100_000, "every flow of the plan is sent");
        let one = FlowPlan::new(1, 10);
        assert_eq!((one.allowed, one.denied), (1, 1));
        let none = FlowPlan::new(1, 0);
        assert!((0..1000).all(|k| none.frame(k) == (Class::Allowed, SOURCE_PORTS.0, ALLOWED_PORTS.0)));
    }

    /// Independent check of a frame: parse it back and verify every checksum.
    fn verify(frame: &[u8]) -> (IpAddr, IpAddr, u8, u16, u16) {
        let v4 = frame[12..14] == [0x08, 0x00];
        let (ip_len, proto, src, dst, seg) = if v4 {
            assert_eq!(fold(sum16(&frame[14..34])), 0xffff, "IPv4 header checksum");
            let s: [u8; 4] = frame[26..30].try_into().unwrap();
            let d: [u8; 4] = frame[30..34].try_into().unwrap();
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            (20, frame[23], IpAddr::from(s), IpAddr::from(d), total - 20)
        } else {
            let s: [u8; 16] = frame[22..38].try_into().unwrap();
            let d: [u8; 16] = frame[38..54].try_into().unwrap();
            (
                40,
                frame[20],
                IpAddr::from(s),
                IpAddr::from(d),
                usize::from(u16::from_be_bytes([frame[18], frame[19]])),
            )
        };
        let l4 = &frame[14 + ip_len..14 + ip_len + seg];
        let mut pseudo = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(seg as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(seg as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, proto]);
            }
            _ => unreachable!(),
        }
        let udp4_no_sum = proto == 17 && v4 && l4[6..8] == [0, 0];
        if !udp4_no_sum {
            assert_eq!(fold(sum16(&pseudo) + sum16(l4)), 0xffff, "L4 checksum");
        }
        (src, dst, proto, u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
    }

    #[test]
    fn frames_carry_the_ports_and_valid_checksums() {
        let m1 = [2, 0, 0, 0, 0, 1];
        let m2 = [2, 0, 0, 0, 0, 2];
        for (s, d) in [(GEN_IPS.0.into(), SINK_IPS.0.into()), (GEN_IPS.1.into(), SINK_IPS.1.into())] {
            for l4 in [L4::Udp, L4::Tcp] {
                let t = Template::new(m1, m2, s, d, l4, 64);
                assert!(t.len() >= 64 && t.len() <= 74);
                let mut buf = [0u8; 128];
                for (sp, dp) in [(10000, 1000), (59999, 2999), (0xffff, 0xffff), (12345, 1500)] {
                    t.write(&mut buf, sp, dp);
                    let proto = if l4 == L4::Udp { 17 } else { 6 };
                    assert_eq!(verify(&buf[..t.len()]), (s, d, proto, sp, dp));
                }
            }
        }
    }

    #[test]
    fn rulesets_name_every_policy_shape() {
        let c = bench_cluster(300, 300);
        let (lin, ls) = nft_ruleset(&c, Shape::Linear);
        let (sets, ss) = nft_ruleset(&c, Shape::Sets);
        // The load policy's rule: from gen's set to sink's, on the allowed range.
        for text in [&lin, &sets] {
            assert!(text.contains("meta l4proto udp th dport 1000-1999 return"), "{text}");
            assert!(text.contains("ct state established,related accept"));
        }
        assert!(lin.contains("jump pin") && lin.contains("jump peg"));
        assert!(sets.contains("ip daddr vmap @vpin_ip") && sets.contains("ip6 daddr vmap @vpin_ip6"));
        // Linear: one chain per direction with every rule; sets: a chain per group of pods.
        assert_eq!(ls.chains, 2);
        assert!(ss.chains > 2);
        assert!(ls.rules > 300, "{ls:?}");
        // ipBlock with except, and named ports resolved to numbers.
        assert!(lin.contains("!= {"), "an except is written");
        assert!(!lin.contains("th dport http"), "named ports are numbers");
    }
}
