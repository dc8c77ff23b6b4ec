//! The compiled decision table and its lookup.
//!
//! ```text
//!  src IP ──hash──▶ pod entry ─┐                        ┌─▶ egress side of src  ─┐
//!     (miss: CIDR class)       ├─ identities, sides ────┤                        ├─▶ Verdict
//!  dst IP ──hash──▶ pod entry ─┘                        └─▶ ingress side of dst ─┘
//!
//!  side check = side.any ∪ side.any_pod ∪ map[(side, Identity)] ∪ map[(side, Namespace)]
//!               ∪ map[(side, CidrClass)]  — each a small port set, tested in order
//! ```
//!
//! Compile-time equivalence classes keep the table small:
//! - *identity*: pods with the same namespace and labels (selectors cannot tell them apart);
//! - *side*: identities selected by the same list of policies in one direction share
//!   one side, so a policy selecting many pods is expanded once;
//! - *CIDR class*: addresses contained in the same set of `ipBlock`s (after `except`).
//!
//! A lookup is two IP hash probes, then per side at most three hash probes and
//! the scan of the few port entries found: no step depends on the number of
//! policies or pods. See `docs/architecture.md`.

use std::net::IpAddr;

use hashbrown::HashMap;

use crate::cidr::{split, Family, IpBlock};
use crate::cluster::Cluster;
use crate::model::*;
use crate::selector::{Labels, Selector};

/// Protocol value of a port entry that matches every protocol (a rule without `ports`).
const ANY_PROTO: u8 = 255;

/// Which rule allowed a side: index of the policy in [`DecisionTable::policy`] and of the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Policy index.
    pub policy: u32,
    /// Rule index in the policy's ingress or egress list.
    pub rule: u32,
}

/// The outcome for one side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// That end is not a pod; the side is not evaluated.
    NotPod,
    /// The pod is not isolated in this direction: everything passes.
    NotIsolated,
    /// Allowed by this rule: one rule that matches. The table tests rules
    /// without peers first, then peers matching every pod, then pod,
    /// namespace and ipBlock peers, in policy order within each group, and
    /// stops at the first match; `portcullis explain` lists every matching rule.
    Allowed(RuleRef),
    /// Isolated and no rule matched. The id lists the isolating policies
    /// ([`DecisionTable::isolating_policies`]).
    Denied(SideId),
}

impl Side {
    /// Does this side let the flow pass?
    pub fn allows(self) -> bool {
        !matches!(self, Side::Denied(_))
    }
}

/// Identifies one set of isolating policies in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SideId(pub u32);

/// The answer for one flow: both sides, as [`crate::reference`] defines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Egress of the source pod.
    pub egress: Side,
    /// Ingress of the destination pod.
    pub ingress: Side,
}

impl Verdict {
    /// A connection passes when both sides allow it.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// One allowed (protocol, ports) and the rule it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortEntry {
    /// IP protocol number, or `ANY_PROTO`.
    proto: u8,
    lo: u16,
    hi: u16,
    /// Interned port name (1-based) for a named port, 0 for numbers.
    name: u32,
    rule: RuleRef,
}

impl PortEntry {
    #[inline]
    fn matches(&self, proto: u8, port: u16, dst_named: &[NamedEntry]) -> bool {
        if self.proto == ANY_PROTO {
            return true;
        }
        if self.proto != proto {
            return false;
        }
        if self.name == 0 {
            self.lo <= port && port <= self.hi
        } else {
            dst_named.iter().any(|n| n.name == self.name && n.proto == proto && n.port == port)
        }
    }
}

/// A pod's named container port, with the name interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct NamedEntry {
    name: u32,
    proto: u8,
    port: u16,
}

/// Per-pod data the lookup needs.
#[derive(Clone, Debug)]
struct PodEntry {
    identity: u32,
    namespace: u32,
    /// Side ids, [ingress, egress]; 0 = not isolated.
    sides: [u32; 2],
    /// Range in `named`.
    named: (u32, u32),
}

/// Per pod IP: which pod and which CIDR class the address falls in.
#[derive(Clone, Copy, Debug)]
struct AddrEntry {
    pod: u32,
    class: u32,
}

#[derive(Clone, Debug, Default)]
struct SideEntry {
    /// Port set allowing every peer (rules without `from`/`to`).
    any: u32,
    /// Port set allowing every pod (selector peers that match all pods).
    any_pod: u32,
    /// Range in `side_policies`.
    policies: (u32, u32),
    dir: Option<Direction>,
}

/// Address → CIDR class: sorted interval starts and the class of each interval.
#[derive(Clone, Debug, Default)]
struct ClassIndex {
    starts: Vec<u128>,
    classes: Vec<u32>,
}

impl ClassIndex {
    #[inline]
    fn class_of(&self, addr: u128) -> u32 {
        // Index of the last start <= addr. `starts[0] == 0` when non-empty.
        let i = self.starts.partition_point(|s| *s <= addr);
        if i == 0 {
            0
        } else {
            self.classes[i - 1]
        }
    }
}

/// Peer key kinds in the (side, peer) map.
const KIND_IDENTITY: u64 = 0;
const KIND_NAMESPACE: u64 = 1;
const KIND_CIDR: u64 = 2;

#[inline]
fn key(side: u32, kind: u64, id: u32) -> u64 {
    ((side as u64) << 32) | (kind << 30) | id as u64
}

/// Facts about a compiled table, for status pages and sizing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Namespaces.
    pub namespaces: usize,
    /// Pods with an IP that policy applies to.
    pub pods: usize,
    /// Pod IP addresses indexed.
    pub pod_ips: usize,
    /// Distinct (namespace, labels) identities.
    pub identities: usize,
    /// Policies (valid and fail-closed).
    pub policies: usize,
    /// Policies that failed validation.
    pub invalid_policies: usize,
    /// Distinct isolating policy sets (per direction), plus the "not isolated" side.
    pub sides: usize,
    /// Entries of the (side, peer) map.
    pub peer_keys: usize,
    /// Port entries over all port sets.
    pub port_entries: usize,
    /// Distinct ipBlocks.
    pub ip_blocks: usize,
    /// CIDR classes (0 is "in no ipBlock").
    pub cidr_classes: usize,
    /// Estimated heap bytes held by the table.
    pub memory_bytes: usize,
}

/// An immutable, compiled answer to "may this connection pass?".
///
/// Built by [`DecisionTable::compile`]; looked up with [`DecisionTable::verdict`].
#[derive(Clone, Debug)]
pub struct DecisionTable {
    addr_v4: HashMap<u32, AddrEntry>,
    addr_v6: HashMap<u128, AddrEntry>,
    pods: Vec<PodEntry>,
    pod_keys: Vec<(String, String)>,
    named: Vec<NamedEntry>,
    cidr_v4: ClassIndex,
    cidr_v6: ClassIndex,
    sides: Vec<SideEntry>,
    side_policies: Vec<u32>,
    peer_map: HashMap<u64, u32>,
    /// Port sets: ranges in `entries`; set 0 is empty.
    port_sets: Vec<(u32, u32)>,
    entries: Vec<PortEntry>,
    policies: Vec<(String, String)>,
    stats: TableStats,
}

impl Default for DecisionTable {
    /// The empty table: no pods, so everything passes. Control planes should
    /// not publish this before their first sync (see the dataplane's fail-closed mode).
    fn default() -> Self {
        DecisionTable::compile(&Cluster::default())
    }
}

/// What the other end of a flow is, for a side check.
#[derive(Clone, Copy)]
struct PeerInfo {
    pod: Option<(u32, u32)>, // (identity, namespace)
    class: u32,
}

impl DecisionTable {
    /// Looks up one flow: `src` opens a connection to `dst`, IP protocol
    /// `protocol` (6 TCP, 17 UDP, 132 SCTP, 1/58 ICMP...), destination port
    /// `port` (0 for portless protocols). Allocation-free.
    #[inline]
    pub fn verdict(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Verdict {
        let s = self.addr(src);
        let d = self.addr(dst);
        if s.is_none() && d.is_none() {
            return Verdict { egress: Side::NotPod, ingress: Side::NotPod };
        }
        let peer = |a: Option<AddrEntry>, ip: IpAddr| match a {
            Some(e) => {
                let p = &self.pods[e.pod as usize];
                PeerInfo { pod: Some((p.identity, p.namespace)), class: e.class }
            }
            None => PeerInfo { pod: None, class: self.class_of(ip) },
        };
        let dst_named: &[NamedEntry] = match d {
            Some(e) => {
                let (a, b) = self.pods[e.pod as usize].named;
                &self.named[a as usize..b as usize]
            }
            None => &[],
        };
        let egress = match s {
            None => Side::NotPod,
            Some(e) => {
                self.check(self.pods[e.pod as usize].sides[1], peer(d, dst), protocol, port, dst_named)
            }
        };
        let ingress = match d {
            None => Side::NotPod,
            Some(e) => {
                self.check(self.pods[e.pod as usize].sides[0], peer(s, src), protocol, port, dst_named)
            }
        };
        Verdict { egress, ingress }
    }

    #[inline]
    fn addr(&self, ip: IpAddr) -> Option<AddrEntry> {
        match ip {
            IpAddr::V4(a) => self.addr_v4.get(&u32::from(a)).copied(),
            IpAddr::V6(a) => self.addr_v6.get(&u128::from(a)).copied(),
        }
    }

    #[inline]
    fn class_of(&self, ip: IpAddr) -> u32 {
        match split(ip) {
            (Family::V4, a) => self.cidr_v4.class_of(a),
            (Family::V6, a) => self.cidr_v6.class_of(a),
        }
    }

    #[inline]
    fn check(&self, side: u32, peer: PeerInfo, proto: u8, port: u16, dst_named: &[NamedEntry]) -> Side {
        if side == 0 {
            return Side::NotIsolated;
        }
        let se = &self.sides[side as usize];
        if let Some(r) = self.set_match(se.any, proto, port, dst_named) {
            return Side::Allowed(r);
        }
        if let Some((identity, ns)) = peer.pod {
            if let Some(r) = self.set_match(se.any_pod, proto, port, dst_named) {
                return Side::Allowed(r);
            }
            for k in [key(side, KIND_IDENTITY, identity), key(side, KIND_NAMESPACE, ns)] {
                if let Some(&set) = self.peer_map.get(&k) {
                    if let Some(r) = self.set_match(set, proto, port, dst_named) {
                        return Side::Allowed(r);
                    }
                }
            }
        }
        if peer.class != 0 {
            if let Some(&set) = self.peer_map.get(&key(side, KIND_CIDR, peer.class)) {
                if let Some(r) = self.set_match(set, proto, port, dst_named) {
                    return Side::Allowed(r);
                }
            }
        }
        Side::Denied(SideId(side))
    }

    #[inline]
    fn set_match(&self, set: u32, proto: u8, port: u16, dst_named: &[NamedEntry]) -> Option<RuleRef> {
        let (a, b) = self.port_sets[set as usize];
        self.entries[a as usize..b as usize]
            .iter()
            .find(|e| e.matches(proto, port, dst_named))
            .map(|e| e.rule)
    }

    /// `(namespace, name)` of a policy named in a [`RuleRef`] or side.
    pub fn policy(&self, index: u32) -> (&str, &str) {
        let (ns, n) = &self.policies[index as usize];
        (ns, n)
    }

    /// The policies isolating a denied side, and its direction.
    pub fn isolating_policies(&self, side: SideId) -> (Option<Direction>, impl Iterator<Item = u32> + '_) {
        let se = &self.sides[side.0 as usize];
        let (a, b) = se.policies;
        (se.dir, self.side_policies[a as usize..b as usize].iter().copied())
    }

    /// `(namespace, name)` of the pod owning `ip`, if any.
    pub fn pod_at(&self, ip: IpAddr) -> Option<(&str, &str)> {
        self.addr(ip).map(|e| {
            let (ns, n) = &self.pod_keys[e.pod as usize];
            (ns.as_str(), n.as_str())
        })
    }

    /// Size and shape of the table.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// Compiles a validated cluster snapshot. Deterministic: the same snapshot
    /// gives the same table and the same reasons.
    pub fn compile(cluster: &Cluster) -> DecisionTable {
        Compiler::new(cluster).run()
    }
}

/// How a selector peer resolves against the current pods.
#[derive(Clone, Debug, Default)]
struct Resolution {
    all_pods: bool,
    namespaces: Vec<u32>,
    identities: Vec<u32>,
}

struct Identity {
    namespace: u32,
    labels: Labels,
}

struct Compiler<'a> {
    cluster: &'a Cluster,
    ns_index: HashMap<&'a str, u32>,
    identities: Vec<Identity>,
    /// Identities per namespace.
    ns_identities: Vec<Vec<u32>>,
    pod_identity: Vec<u32>,
    names: HashMap<String, u32>,
    pod_cache: HashMap<(&'a Selector, u32), (bool, Vec<u32>)>,
    ns_cache: HashMap<&'a Selector, Vec<u32>>,
}

impl<'a> Compiler<'a> {
    fn new(cluster: &'a Cluster) -> Self {
        let ns_index: HashMap<&str, u32> =
            cluster.namespaces.iter().enumerate().map(|(i, n)| (n.name.as_str(), i as u32)).collect();
        let mut identities = Vec::new();
        let mut ident_index: HashMap<(u32, &Labels), u32> = HashMap::new();
        let mut ns_identities = vec![Vec::new(); cluster.namespaces.len()];
        let mut pod_identity = Vec::with_capacity(cluster.pods.len());
        for p in &cluster.pods {
            let ns = ns_index[p.namespace.as_str()];
            let id = *ident_index.entry((ns, &p.labels)).or_insert_with(|| {
                identities.push(Identity { namespace: ns, labels: p.labels.clone() });
                ns_identities[ns as usize].push((identities.len() - 1) as u32);
                (identities.len() - 1) as u32
            });
            pod_identity.push(id);
        }
        // Intern the port names policies refer to (1-based; 0 means "numeric").
        let mut names = HashMap::new();
        for pol in &cluster.policies {
            for d in Direction::BOTH {
                for r in pol.rules(d) {
                    for m in &r.ports {
                        if let PortMatch::Named { name, .. } = m {
                            let n = names.len() as u32 + 1;
                            names.entry(name.clone()).or_insert(n);
                        }
                    }
                }
            }
        }
        Compiler {
            cluster,
            ns_index,
            identities,
            ns_identities,
            pod_identity,
            names,
            pod_cache: HashMap::new(),
            ns_cache: HashMap::new(),
        }
    }

    /// Namespaces (indexes) a namespace selector matches.
    fn namespaces_matching(&mut self, sel: &'a Selector) -> Vec<u32> {
        if let Some(v) = self.ns_cache.get(sel) {
            return v.clone();
        }
        let v: Vec<u32> = self
            .cluster
            .namespaces
            .iter()
            .enumerate()
            .filter(|(_, n)| sel.matches(&n.labels))
            .map(|(i, _)| i as u32)
            .collect();
        self.ns_cache.insert(sel, v.clone());
        v
    }

    /// Identities of namespace `ns` a pod selector matches, and whether that is all of them.
    fn identities_matching(&mut self, sel: &'a Selector, ns: u32) -> (bool, Vec<u32>) {
        if let Some(v) = self.pod_cache.get(&(sel, ns)) {
            return v.clone();
        }
        let all = &self.ns_identities[ns as usize];
        let v: Vec<u32> =
            all.iter().copied().filter(|i| sel.matches(&self.identities[*i as usize].labels)).collect();
        let r = (v.len() == all.len(), v);
        self.pod_cache.insert((sel, ns), r.clone());
        r
    }

    fn resolve(&mut self, namespaces: &'a NamespaceMatch, pods: &'a Selector) -> Resolution {
        let ns_list = match namespaces {
            NamespaceMatch::Own(n) => self.ns_index.get(n.as_str()).map(|i| vec![*i]).unwrap_or_default(),
            NamespaceMatch::Selector(s) => self.namespaces_matching(s),
        };
        let mut r = Resolution::default();
        for ns in ns_list {
            if self.ns_identities[ns as usize].is_empty() {
                continue;
            }
            let (all, ids) = self.identities_matching(pods, ns);
            if all {
                r.namespaces.push(ns);
            } else {
                r.identities.extend(ids);
            }
        }
        let populated = self.ns_identities.iter().filter(|v| !v.is_empty()).count();
        if r.namespaces.len() == populated && populated > 0 {
            r.all_pods = true;
        }
        r
    }

    fn run(mut self) -> DecisionTable {
        let cluster = self.cluster;

        // 1. Which policies isolate each identity, per direction; identical lists share a side.
        let mut lists: Vec<[Vec<u32>; 2]> = vec![[Vec::new(), Vec::new()]; self.identities.len()];
        for (pi, pol) in cluster.policies.iter().enumerate() {
            let Some(&ns) = self.ns_index.get(pol.namespace.as_str()) else {
                continue;
            };
            let (_, ids) = self.identities_matching(&pol.pod_selector, ns);
            for id in ids {
                for d in Direction::BOTH {
                    if pol.isolates(d) {
                        lists[id as usize][d as usize].push(pi as u32);
                    }
                }
            }
        }
        let mut sides: Vec<SideEntry> = vec![SideEntry::default()];
        let mut side_lists: Vec<(Direction, Vec<u32>)> = vec![(Direction::Ingress, Vec::new())];
        let mut side_index: HashMap<(Direction, Vec<u32>), u32> = HashMap::new();
        let mut identity_sides = vec![[0u32; 2]; self.identities.len()];
        for (id, l) in lists.into_iter().enumerate() {
            for d in Direction::BOTH {
                let list = l[d as usize].clone();
                if list.is_empty() {
                    continue;
                }
                let next = sides.len() as u32;
                let s = *side_index.entry((d, list.clone())).or_insert_with(|| {
                    sides.push(SideEntry { dir: Some(d), ..Default::default() });
                    side_lists.push((d, list));
                    next
                });
                identity_sides[id][d as usize] = s;
            }
        }

        // 2. CIDR classes over every distinct ipBlock.
        let mut blocks: Vec<&IpBlock> = Vec::new();
        for pol in &cluster.policies {
            for d in Direction::BOTH {
                for r in pol.rules(d) {
                    for p in &r.peers {
                        if let Peer::Block(b) = p {
                            blocks.push(b);
                        }
                    }
                }
            }
        }
        blocks.sort();
        blocks.dedup();
        let block_id: HashMap<&IpBlock, u32> =
            blocks.iter().enumerate().map(|(i, b)| (*b, i as u32)).collect();
        let mut block_classes: Vec<Vec<u32>> = vec![Vec::new(); blocks.len()];
        let mut class_count = 1u32; // 0 = in no block
        let cidr_v4 = build_classes(&blocks, Family::V4, &mut class_count, &mut block_classes);
        let cidr_v6 = build_classes(&blocks, Family::V6, &mut class_count, &mut block_classes);

        // 3. Expand every side's rules into port sets keyed by peer.
        let mut any_sets: Vec<Vec<PortEntry>> = vec![Vec::new(); sides.len()];
        let mut any_pod_sets: Vec<Vec<PortEntry>> = vec![Vec::new(); sides.len()];
        let mut keyed: HashMap<u64, Vec<PortEntry>> = HashMap::new();
        let mut key_order: Vec<u64> = Vec::new();
        let mut push = |keyed: &mut HashMap<u64, Vec<PortEntry>>, k: u64, es: &[PortEntry]| {
            let v = keyed.entry(k).or_insert_with(|| {
                key_order.push(k);
                Vec::new()
            });
            v.extend_from_slice(es);
        };
        for (s, (dir, list)) in side_lists.iter().enumerate().skip(1) {
            for &pi in list {
                let pol = &cluster.policies[pi as usize];
                for (ri, rule) in pol.rules(*dir).iter().enumerate() {
                    let rr = RuleRef { policy: pi, rule: ri as u32 };
                    let es = self.port_entries(rule, rr);
                    if rule.peers.is_empty() {
                        any_sets[s].extend_from_slice(&es);
                        continue;
                    }
                    for peer in &rule.peers {
                        match peer {
                            Peer::Block(b) => {
                                for &c in &block_classes[block_id[b] as usize] {
                                    push(&mut keyed, key(s as u32, KIND_CIDR, c), &es);
                                }
                            }
                            Peer::Pods { namespaces, pods } => {
                                let r = self.resolve(namespaces, pods);
                                if r.all_pods {
                                    any_pod_sets[s].extend_from_slice(&es);
                                    continue;
                                }
                                for ns in r.namespaces {
                                    push(&mut keyed, key(s as u32, KIND_NAMESPACE, ns), &es);
                                }
                                for id in r.identities {
                                    push(&mut keyed, key(s as u32, KIND_IDENTITY, id), &es);
                                }
                            }
                        }
                    }
                }
            }
        }

        // 4. Flatten port sets.
        let mut entries: Vec<PortEntry> = Vec::new();
        let mut port_sets: Vec<(u32, u32)> = vec![(0, 0)];
        let mut add_set = |es: &[PortEntry], entries: &mut Vec<PortEntry>| -> u32 {
            if es.is_empty() {
                return 0;
            }
            let a = entries.len() as u32;
            for e in es {
                if !entries[a as usize..].contains(e) {
                    entries.push(*e);
                }
            }
            port_sets.push((a, entries.len() as u32));
            (port_sets.len() - 1) as u32
        };
        let mut side_policies = Vec::new();
        for (s, se) in sides.iter_mut().enumerate() {
            se.any = add_set(&any_sets[s], &mut entries);
            se.any_pod = add_set(&any_pod_sets[s], &mut entries);
            let a = side_policies.len() as u32;
            side_policies.extend_from_slice(&side_lists[s].1);
            se.policies = (a, side_policies.len() as u32);
        }
        let mut peer_map = HashMap::with_capacity(key_order.len());
        for k in key_order {
            let set = add_set(&keyed[&k], &mut entries);
            peer_map.insert(k, set);
        }

        // 5. Pods and their addresses.
        let mut pods = Vec::with_capacity(cluster.pods.len());
        let mut named = Vec::new();
        let mut addr_v4 = HashMap::new();
        let mut addr_v6 = HashMap::new();
        let mut pod_keys = Vec::with_capacity(cluster.pods.len());
        for (pi, p) in cluster.pods.iter().enumerate() {
            let identity = self.pod_identity[pi];
            let a = named.len() as u32;
            for np in &p.named_ports {
                if let Some(&n) = self.names.get(&np.name) {
                    named.push(NamedEntry { name: n, proto: np.protocol.number(), port: np.port });
                }
            }
            pods.push(PodEntry {
                identity,
                namespace: self.identities[identity as usize].namespace,
                sides: identity_sides[identity as usize],
                named: (a, named.len() as u32),
            });
            pod_keys.push((p.namespace.clone(), p.name.clone()));
            for ip in &p.ips {
                match split(*ip) {
                    (Family::V4, v) => {
                        let e = AddrEntry { pod: pi as u32, class: cidr_v4.class_of(v) };
                        addr_v4.entry(v as u32).or_insert(e);
                    }
                    (Family::V6, v) => {
                        let e = AddrEntry { pod: pi as u32, class: cidr_v6.class_of(v) };
                        addr_v6.entry(v).or_insert(e);
                    }
                }
            }
        }

        let policies: Vec<(String, String)> =
            cluster.policies.iter().map(|p| (p.namespace.clone(), p.name.clone())).collect();
        let mut t = DecisionTable {
            addr_v4,
            addr_v6,
            pods,
            pod_keys,
            named,
            cidr_v4,
            cidr_v6,
            sides,
            side_policies,
            peer_map,
            port_sets,
            entries,
            policies,
            stats: TableStats::default(),
        };
        t.stats = TableStats {
            namespaces: cluster.namespaces.len(),
            pods: cluster.pods.len(),
            pod_ips: t.addr_v4.len() + t.addr_v6.len(),
            identities: self.identities.len(),
            policies: cluster.policies.len(),
            invalid_policies: cluster.policies.iter().filter(|p| !p.valid).count(),
            sides: t.sides.len(),
            peer_keys: t.peer_map.len(),
            port_entries: t.entries.len(),
            ip_blocks: blocks.len(),
            cidr_classes: class_count as usize,
            memory_bytes: t.memory_estimate(),
        };
        t
    }

    fn port_entries(&self, rule: &Rule, rr: RuleRef) -> Vec<PortEntry> {
        if rule.ports.is_empty() {
            return vec![PortEntry { proto: ANY_PROTO, lo: 0, hi: u16::MAX, name: 0, rule: rr }];
        }
        rule.ports
            .iter()
            .map(|m| match m {
                PortMatch::Range { protocol, lo, hi } => {
                    PortEntry { proto: protocol.number(), lo: *lo, hi: *hi, name: 0, rule: rr }
                }
                PortMatch::Named { protocol, name } => {
                    PortEntry { proto: protocol.number(), lo: 0, hi: 0, name: self.names[name], rule: rr }
                }
            })
            .collect()
    }
}

impl DecisionTable {
    fn memory_estimate(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: one control byte per bucket plus the slot; buckets ≈ capacity * 8/7.
        let hm = |cap: usize, slot: usize| cap * 8 / 7 * (slot + 1);
        hm(self.addr_v4.capacity(), size_of::<(u32, AddrEntry)>())
            + hm(self.addr_v6.capacity(), size_of::<(u128, AddrEntry)>())
            + hm(self.peer_map.capacity(), size_of::<(u64, u32)>())
            + self.pods.capacity() * size_of::<PodEntry>()
            + self.pod_keys.iter().map(|(a, b)| a.capacity() + b.capacity() + 48).sum::<usize>()
            + self.named.capacity() * size_of::<NamedEntry>()
            + self.cidr_v4.starts.capacity() * 20
            + self.cidr_v6.starts.capacity() * 20
            + self.sides.capacity() * size_of::<SideEntry>()
            + self.side_policies.capacity() * 4
            + self.port_sets.capacity() * 8
            + self.entries.capacity() * size_of::<PortEntry>()
            + self.policies.iter().map(|(a, b)| a.capacity() + b.capacity() + 48).sum::<usize>()
    }
}

/// Partitions one family's address space by every ipBlock boundary; each
/// interval's class is the set of blocks containing it (after `except`).
/// Records, for each block, the classes it contains.
fn build_classes(
    blocks: &[&IpBlock],
    family: Family,
    class_count: &mut u32,
    block_classes: &mut [Vec<u32>],
) -> ClassIndex {
    // Boundary events: at address `a`, block `b` enters (+) or leaves (-) its cidr
    // or one of its excepts. Ends are `last + 1`; a block reaching the top of the
    // space never ends.
    #[derive(Clone, Copy)]
    enum Ev {
        CidrIn,
        CidrOut,
        ExceptIn,
        ExceptOut,
    }
    let mut events: Vec<(u128, u32, Ev)> = Vec::new();
    let top = if family == Family::V4 { u32::MAX as u128 } else { u128::MAX };
    for (bi, b) in blocks.iter().enumerate() {
        if b.cidr.family != family {
            continue;
        }
        let bi = bi as u32;
        events.push((b.cidr.first(), bi, Ev::CidrIn));
        if b.cidr.last() < top {
            events.push((b.cidr.last() + 1, bi, Ev::CidrOut));
        }
        for e in &b.except {
            events.push((e.first(), bi, Ev::ExceptIn));
            if e.last() < top {
                events.push((e.last() + 1, bi, Ev::ExceptOut));
            }
        }
    }
    if events.is_empty() {
        return ClassIndex::default();
    }
    events.sort_by_key(|e| (e.0, e.1));
    let mut in_cidr = vec![false; blocks.len()];
    let mut except_depth = vec![0u32; blocks.len()];
    let mut active: std::collections::BTreeSet<u32> = Default::default();
    let mut class_ids: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut idx = ClassIndex { starts: vec![0], classes: vec![0] };
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while i < events.len() && events[i].0 == at {
            let (_, b, ev) = events[i];
            let b = b as usize;
            match ev {
                Ev::CidrIn => in_cidr[b] = true,
                Ev::CidrOut => in_cidr[b] = false,
                Ev::ExceptIn => except_depth[b] += 1,
                Ev::ExceptOut => except_depth[b] -= 1,
            }
            if in_cidr[b] && except_depth[b] == 0 {
                active.insert(b as u32);
            } else {
                active.remove(&(b as u32));
            }
            i += 1;
        }
        let set: Vec<u32> = active.iter().copied().collect();
        let class = if set.is_empty() {
            0
        } else {
            *class_ids.entry(set.clone()).or_insert_with(|| {
                let c = *class_count;
                *class_count += 1;
                for &b in &set {
                    block_classes[b as usize].push(c);
                }
                c
            })
        };
        if *idx.starts.last().unwrap() == at {
            *idx.classes.last_mut().unwrap() = class;
        } else if *idx.classes.last().unwrap() != class {
            idx.starts.push(at);
            idx.classes.push(class);
        }
    }
    idx
}
