//! The compiled decision table and its lookup.
//!
//! ```text
//!  src IP ──hash──▶ pod entry ─┐                           ┌─▶ ingress side of dst ─┐
//!     (miss: not a pod)        ├─ side ids, identity block ┤   (denied: stop)       ├─▶ Verdict
//!  dst IP ──hash──▶ pod entry ─┘       and bit             └─▶ egress side of src  ─┘
//!
//!  side check, pod peer:     slot = side's table[identity block];
//!                            set  = slot's set if the peer's bit is in slot.mask, else side.pod_any
//!                            (then, only for a pod IP inside an ipBlock, the side's range map)
//!  side check, non-pod peer: set  = side's range map at the address (table[CIDR_KEY | family]),
//!                            else side.any
//!  — one probe and one scan of a few port entries; the first matching entry names the rule
//! ```
//!
//! Port sets are interned: identical sets (same entries, same rules) are
//! stored once, back to back in one array, each ended by a marker. Every set
//! a side stores starts with the entries tested before it (rules without
//! peers, then peers matching every pod), so one scan gives the first match.
//! A set of more than 32 entries starts with a header naming its index
//! (`table/port_index.rs`), which gives the same first match without a scan.
//!
//! Compile-time equivalence classes keep the table small:
//! - *identity*: pods with the same namespace and labels (selectors cannot tell them apart);
//! - *identity block*: up to 64 identities of one namespace, one bit each; a
//!   selector peer resolves to (block, mask) pairs, so a peer matching 1,700
//!   identities in 80 namespaces costs about 80 keys per side, not 1,700, and a
//!   whole namespace costs one key per block;
//! - *side*: identities selected by the same list of policies in one direction share
//!   one side, so a policy selecting many pods is expanded once;
//! - *range*: addresses contained in the same set of a side's own `ipBlock`s
//!   (after `except`); each side has its own range map per family
//!   (`table/ranges.rs`; sides of one direction with the same ipBlock policies
//!   share it), so one namespace's ipBlocks never split another's ranges.
//!
//! A lookup is two IP hash probes, then per isolated side one read of the side
//! entry, a one-word Bloom filter test, one probe of the side's own
//! open-addressing table (usually one cache line; a second one, for the
//! range map, when a pod peer inside an ipBlock is not allowed by the first)
//! and the scan of the few port entries found: no step depends on the number
//! of policies or pods (an address inside an ipBlock is found in the side's
//! range map by scanning its few ranges, or, in a map of more than 8, by a
//! bucket index and a binary search only within a crowded bucket). [`DecisionTable::verdict`] checks
//! the destination's ingress side first and stops when it denies;
//! [`DecisionTable::verdict_both`] always checks both. See `docs/architecture.md`.

use std::net::IpAddr;

use hashbrown::HashMap;

use crate::cidr::{split, Family, IpBlock};
use crate::cluster::Cluster;
use crate::model::*;
use crate::selector::{Labels, Selector};

pub mod patch;
mod port_index;
mod ranges;

/// A small deterministic generator (xorshift64) for the unit tests of the
/// table's parts: the same `seed`, the same numbers.
#[cfg(test)]
fn test_rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

use port_index::{SetIndex, INDEXED_PROTO};
use ranges::{RangeMaps, Sweep};

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
    /// without peers first, then peers matching every pod (empty
    /// `namespaceSelector` and `podSelector`), then pod peers, then peers
    /// matching whole namespaces (empty `podSelector`), then ipBlock peers,
    /// in policy order within each group, and stops at the first match;
    /// `portcullis explain` lists every matching rule. The groups follow the
    /// selectors' form, not which pods exist, so a patched table and a full
    /// compile name the same rule.
    Allowed(RuleRef),
    /// Isolated and no rule matched. The id lists the isolating policies
    /// ([`DecisionTable::isolating_policies`]).
    Denied(SideId),
    /// Not evaluated: the other side denied the flow first. Only the egress
    /// side of [`DecisionTable::verdict`] is ever skipped (the destination's
    /// ingress is checked first); [`DecisionTable::verdict_both`] never skips.
    Skipped,
}

impl Side {
    /// Does this side let the flow pass? (A skipped side did not deny it;
    /// the other side did.)
    pub fn allows(self) -> bool {
        !matches!(self, Side::Denied(_))
    }
}

/// Identifies one set of isolating policies in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SideId(pub u32);

/// The answer for one flow: both sides, as [`crate::reference`] defines them
/// (from [`DecisionTable::verdict_both`]), or from [`DecisionTable::verdict`]
/// the same with the egress side [`Side::Skipped`] when ingress denied.
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

/// One allowed (protocol, ports). The rule it came from is kept in a
/// parallel array, so the scan touches 12 bytes per entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PortEntry {
    lo: u16,
    hi: u16,
    /// Interned port name (1-based) for a named port, 0 for numbers.
    name: u32,
    /// IP protocol number, or `ANY_PROTO`.
    proto: u8,
}

/// A port set: the index of its first entry in `entries` / `entry_rules`.
/// Sets are stored back to back, each ended by an entry of protocol
/// [`END_PROTO`]; set 0 is the empty set (a lone end marker).
type SetId = u32;

/// Protocol value of the entry that ends a port set (0 is no protocol a
/// policy can name: only TCP, UDP and SCTP are valid).
const END_PROTO: u8 = 0;
const END: PortEntry = PortEntry { lo: 0, hi: 0, name: 0, proto: END_PROTO };

impl PortEntry {
    #[inline]
    /// `dst_named`: the destination pod's named ports, from their header
    /// (see [`PodEntry::named`]).
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
            let Some((header, list)) = dst_named.split_first() else {
                return false;
            };
            let list = list.get(..header.name as usize).unwrap_or_default();
            let key = (proto, port, self.name);
            if list.len() <= 8 {
                list.iter().any(|n| n.key() == key)
            } else {
                // A pod may declare thousands of named ports.
                list.binary_search_by(|n| n.key().cmp(&key)).is_ok()
            }
        }
    }
}

/// A pod's named container port, with the name interned; or the header of
/// a pod's list, whose `name` is the number of entries that follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NamedEntry {
    name: u32,
    proto: u8,
    port: u16,
}

impl NamedEntry {
    /// A pod's list is sorted by this.
    #[inline]
    fn key(&self) -> (u8, u16, u32) {
        (self.proto, self.port, self.name)
    }
}

/// Per-pod data the lookup needs, 16 bytes (four to a cache line: the pods
/// are the largest array every lookup touches).
#[derive(Clone, Copy, Debug)]
#[repr(align(16))]
struct PodEntry {
    /// Side ids, [ingress, egress]; 0 = not isolated.
    sides: [u32; 2],
    /// `block << 6 | bit`: the identity block of the pod's identity
    /// ([`BLOCK_BITS`] identities of one namespace per block) and the
    /// identity's bit in the block's masks.
    block_bit: u32,
    /// Index in `named` of the header of the pod's named ports (those some
    /// policy names): the header's `name` is their number; they follow it,
    /// sorted by (protocol, port, name), without repeats. Index 0 is the
    /// empty list's header.
    named: u32,
}

/// Per pod IP: which pod, whether some ipBlock of [ingress, egress] rules
/// contains the address (only then is a side's range map searched), and what
/// the pod's sides deny without a look at them, and where its ingress
/// side's peer table is. 12 bytes (a 16-byte bucket in the IPv4 map): an
/// entry every lookup reads anyway.
#[derive(Clone, Copy, Debug)]
struct AddrEntry {
    pod: u32,
    /// Bit `dir`: some ipBlock of direction `dir`'s rules contains the
    /// address. Bit `2 + 2 * dir + family` (0 IPv4, 1 IPv6): the pod's side
    /// of direction `dir` is isolated and denies every non-pod address of
    /// that family (no rule without peers, no ipBlock of the family). Bit
    /// `6 + dir`: the side of `dir` is isolated and its first `any` entry
    /// allows every protocol, so it allows every flow by that entry's rule
    /// (the lookup tests it for egress, where the sides of namespaces that
    /// deny only ingress plus "allow all egress" rules are common). Bits
    /// 8 to 15: a Bloom filter of the (protocol, port) pairs the ingress
    /// side allows any pod peer on this pod (bit [`port_bit`]), its named
    /// ports resolved against this pod's; all ones when a rule allows every
    /// protocol, a range of more than 8 ports, or a long set. A clear bit
    /// denies a pod peer outside every ingress ipBlock without reading the
    /// side.
    flags: u16,
    /// A Bloom filter of the identities (`block << 6 | bit`) the pod's
    /// ingress side has a key for: bit `slot_hash(identity) >> 28`.
    /// `u16::MAX` when the side allows some pod without a key (its
    /// `pod_any` set is not empty) or is not isolated. A clear bit denies a
    /// pod peer outside every ingress ipBlock without reading the side.
    peers: u16,
    /// Where the pod's ingress side's peer table is ([`home_of`]), so that
    /// a probe need not wait for the side entry; 0: read it from the side
    /// entry (no keys, not isolated, or a table beyond [`HOME_BASE`]).
    home: u32,
}

/// Largest table start [`AddrEntry::home`] can hold (26 bits).
const HOME_BASE: u32 = (1 << 26) - 1;

/// A side's peer table as [`AddrEntry::home`] keeps it: `table_bits << 27 |
/// patched << 26 | start`, or 0 when it does not fit (or has no keys).
fn home_of(se: &SideEntry) -> u32 {
    let base = se.table & !PATCHED;
    if se.table_bits == 0 || se.table_bits > 31 || base > HOME_BASE {
        return 0;
    }
    u32::from(se.table_bits) << 27 | u32::from(se.table & PATCHED != 0) << 26 | base
}

impl AddrEntry {
    /// A pod address's entry; what the pod's sides deny is filled in by
    /// [`DecisionTable::refresh_denials`] (until then, nothing).
    fn new(pod: u32, in_block: [bool; 2]) -> Self {
        AddrEntry {
            pod,
            flags: u16::from(in_block[0]) | u16::from(in_block[1]) << 1 | 0xff00,
            peers: u16::MAX,
            home: 0,
        }
    }

    /// Takes what its pod's sides deny from `denials` (a side not there yet
    /// denies nothing here: the lookup then reads the side).
    /// `named`: the table's named-port lists (see [`PodEntry::named`]).
    fn set_denials(
        &mut self,
        pods: &[PodEntry],
        sides: &[SideEntry],
        denials: &[SideDenials],
        named: &[NamedEntry],
    ) {
        let Some(p) = pods.get(self.pod as usize) else { return };
        self.home = sides.get(p.sides[0] as usize).filter(|_| p.sides[0] != 0).map_or(0, home_of);
        let side = |dir: usize| denials.get(p.sides[dir] as usize).copied().unwrap_or(NO_DENIALS);
        let (ingress, egress) = (side(0), side(1));
        let mut ports = (ingress >> 24 & 0xff) as u16;
        let names = (ingress >> 18 & 0x3f) as u32;
        if names != 0 && ports != 0xff {
            // The side's named ports, as numbers on this pod: every port of
            // the pod whose (protocol, name) may be one of them.
            let list = named.get(p.named as usize..).unwrap_or_default();
            let Some((header, list)) = list.split_first() else { return self.set(ingress, egress, 0xff) };
            for n in list.get(..header.name as usize).unwrap_or_default() {
                if names >> name_bit(n.proto, n.name) & 1 != 0 {
                    ports |= 1 << port_bit(n.proto, n.port);
                    if ports == 0xff {
                        break;
                    }
                }
            }
        }
        self.set(ingress, egress, ports);
    }

    fn set(&mut self, ingress: SideDenials, egress: SideDenials, ports: u16) {
        self.peers = ingress as u16;
        self.flags = self.flags & 3
            | ((ingress >> 16) as u16 & 3) << 2
            | ((egress >> 16) as u16 & 3) << 4
            | ((ingress >> 32) as u16 & 1) << 6
            | ((egress >> 32) as u16 & 1) << 7
            | ports << 8;
    }

    /// Does the pod's side of `dir` allow everything through its first
    /// `any` entry (a rule without peers for every protocol)?
    #[inline(always)]
    fn allows_all(&self, dir: Direction) -> bool {
        self.flags >> (6 + dir as u32) & 1 != 0
    }

    #[inline(always)]
    fn in_block(&self, dir: Direction) -> bool {
        self.flags >> dir as u32 & 1 != 0
    }

    /// Does the pod's side of `dir` deny every non-pod address of `peer`'s family?
    #[inline(always)]
    fn denies_non_pod(&self, dir: Direction, peer: IpAddr) -> bool {
        self.flags >> (2 + 2 * dir as u32 + u32::from(peer.is_ipv6())) & 1 != 0
    }
}

/// What [`AddrEntry`] keeps of a side: its `peers` filter (low 16 bits),
/// whether it denies every non-pod IPv4 (bit 16) and IPv6 (bit 17) address,
/// a Bloom filter of its named ports' (protocol, name) (bits 18 to 23, bit
/// [`name_bit`]), its ports filter of numbered ports (bits 24 to 31), and
/// whether its `any` set's first entry allows every protocol (bit 32, see
/// [`ALLOWS_ALL`]).
type SideDenials = u64;

/// [`SideDenials`] bit: the side's first `any` entry allows every protocol,
/// so every peer on every port is allowed by that entry's rule (each set of
/// the side starts with the `any` entries).
const ALLOWS_ALL: SideDenials = 1 << 32;

/// The bit (0 to 5) of a named port's (protocol, name) in a side's names filter.
fn name_bit(proto: u8, name: u32) -> u32 {
    ((name << 8 | u32::from(proto)).wrapping_mul(0x9e37_79b1) >> 16) % 6
}

/// Denials of a side that denies nothing without a look (every filter bit
/// set): side 0, and a side whose denials are not computed yet.
const NO_DENIALS: SideDenials = 0xff00_ffff;

/// The bit of a (protocol, port) pair in an [`AddrEntry`]'s ports filter.
#[inline(always)]
fn port_bit(proto: u8, port: u16) -> u32 {
    (u32::from(port) << 8 | u32::from(proto)).wrapping_mul(0x9e37_79b1) >> 29
}

/// What a lookup needs of a side, 16 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(16))]
struct SideEntry {
    /// Port set allowing every peer (rules without `from`/`to`): what a
    /// non-pod peer gets outside the side's ipBlocks.
    any: SetId,
    /// `any`, then the entries allowing every pod (selector peers that match
    /// all pods): what a pod peer gets when the side has no key for it.
    pod_any: SetId,
    /// The side's peer table: `slots[table + (h & mask)]`, linear probing,
    /// where `mask = (1 << table_bits) - 1` (a side without keys has the free
    /// slot 0 as its table).
    table: u32,
    /// A one-word Bloom filter of the table's keys: bit `slot_hash(key) >> 28`
    /// is set for every key. A probe for a key whose bit is clear is skipped
    /// (most probes of a side with few keys), saving a likely cache miss.
    filter: u16,
    table_bits: u8,
}

/// What `explain` and status pages need of a side.
#[derive(Clone, Debug, Default)]
struct SideInfo {
    /// Range in `side_policies`.
    policies: (u32, u32),
    dir: Option<Direction>,
}

/// A peer-table key is an identity block, or `CIDR_KEY | family` (0 IPv4,
/// 1 IPv6), whose slot's `set` is the side's range map of that family.
const CIDR_KEY: u32 = 1 << 31;
/// What one namespace's range maps may cost: their ranges plus the entries
/// of their distinct port sets (before interning). A range costs about 28
/// bytes, an entry 20 plus up to 36 for a long set's index: at most about
/// 60 MB. A map costs its side's ipBlock boundaries plus one port set per
/// distinct combination of its rules that contain some address; rules with
/// different ports whose blocks overlap with distinct holes (`0.0.0.0/0
/// except` a different address each), hundreds of thousands of boundaries,
/// or many sides whose maps differ, each with a policy of many boundaries,
/// come near it. Sides sharing a map ([`RangeKey`]) count once.
const NAMESPACE_RANGE_BUDGET: usize = 1 << 20;
/// `SideEntry::table` with this bit: the table is in `patch_slots`.
const PATCHED: u32 = 1 << 31;
/// Key of a free slot.
const EMPTY: u32 = u32::MAX;
/// `Slot::set` with this bit: `groups` index of the key's first group.
const MULTI: u32 = 1 << 31;

/// Identities per identity block: one bit each in a `u64` mask.
const BLOCK_BITS: usize = 64;

/// One slot of a side's peer table (16 bytes, four to a cache line).
///
/// For an identity block: the identities of the block some peer of the side
/// matches (`mask`) and their port set, or, when they do not all get the
/// same set, `MULTI | g` where `groups[g..]` split `mask` by port set. For a
/// family's range map: its index in the table's `ranges` as `set`, and
/// where its starts lie (first index, number << 32) as `mask`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u32,
    set: u32,
    mask: u64,
}

const FREE: Slot = Slot { key: EMPTY, set: 0, mask: 0 };

/// Identities of one block that share one port set; a key's groups are
/// consecutive, disjoint, and the last one has `last` set.
#[derive(Clone, Copy, Debug)]
struct Group {
    mask: u64,
    set: SetId,
    last: bool,
}

/// Home position of a key in a peer table (Fibonacci hashing; the table
/// masks the low bits of the product's high half).
#[inline]
fn slot_hash(key: u32) -> u32 {
    ((key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// Linear probing for `key` in the peer table at `slots[base..]` of `mask +
/// 1` slots, from its home slot `base + i` to the key or a free slot.
#[inline(always)]
fn find_slot(slots: &[Slot], base: u32, mask: u32, mut i: u32, key: u32) -> Option<Slot> {
    loop {
        let slot = *slots.get((base + i) as usize)?;
        if slot.key == key {
            return Some(slot);
        }
        if slot.key == EMPTY {
            return None;
        }
        i = (i + 1) & mask;
    }
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
    /// Identity blocks (up to 64 identities of one namespace each).
    pub identity_blocks: usize,
    /// Keys of the sides' peer tables: (side, identity block) and (side, address family of its ipBlocks).
    pub peer_keys: usize,
    /// (identity mask, port set) groups of the (side, identity block) keys.
    pub peer_groups: usize,
    /// Distinct port sets (after interning).
    pub port_sets: usize,
    /// Port entries over all port sets (end markers and index headers not counted).
    pub port_entries: usize,
    /// Port sets of more than 32 entries, looked up through an index rather
    /// than scanned.
    pub indexed_port_sets: usize,
    /// Distinct ipBlocks.
    pub ip_blocks: usize,
    /// Address ranges of the sides' ipBlock maps (each map's first range,
    /// from address 0, included).
    pub cidr_ranges: usize,
    /// Namespaces whose ipBlock rules were left out, allowing nothing, for
    /// expanding beyond the budget ([`DecisionTable::budget_problems`]).
    pub dropped_ipblock_namespaces: usize,
    /// Estimated heap bytes held by the table.
    pub memory_bytes: usize,
    /// Sides no pod uses any more: a patched table (see [`patch`]) keeps the
    /// sides it replaced until the next full compile. 0 after a full compile.
    pub replaced_sides: usize,
}

/// An immutable, compiled answer to "may this connection pass?".
///
/// Built by [`DecisionTable::compile`]; looked up with [`DecisionTable::verdict`].
#[derive(Clone, Debug)]
pub struct DecisionTable {
    addr_v4: HashMap<u32, AddrEntry>,
    addr_v6: HashMap<u128, AddrEntry>,
    pods: Vec<PodEntry>,
    /// (namespace, name) of each pod; shared by a table and its patched copies.
    pod_keys: std::sync::Arc<Vec<(String, String)>>,
    /// (namespace, name) of the pods patches appended (pod index
    /// `pod_keys.len() + i`); empty after a full compile.
    added_pod_keys: Vec<(String, String)>,
    named: Vec<NamedEntry>,
    /// Map `2 * direction + family`: 1 where some ipBlock of that
    /// direction's rules contains the address (for pods' `in_block`).
    in_blocks: RangeMaps,
    /// The sides' range maps: address -> the port set of the side's
    /// ipBlock rules whose blocks contain it (0: none does).
    ranges: RangeMaps,
    sides: Vec<SideEntry>,
    /// Per side, what its pods' address entries keep of it.
    side_denials: Vec<SideDenials>,
    side_info: Vec<SideInfo>,
    side_policies: Vec<u32>,
    /// Every side's peer table, back to back; slot 0 is free, the table of
    /// sides without keys. Shared by a table and its patched copies (the
    /// largest array: patches do not copy it).
    slots: std::sync::Arc<[Slot]>,
    /// Peer tables of the sides patches built (`SideEntry::table` with
    /// [`PATCHED`] set); empty after a full compile.
    patch_slots: Vec<Slot>,
    /// Groups of the keys whose identities do not all get the same port set.
    groups: Vec<Group>,
    /// Interned port sets, back to back, each ended by `END`.
    entries: Vec<PortEntry>,
    /// The rule each entry of `entries` comes from.
    entry_rules: Vec<RuleRef>,
    /// Indexes of the long port sets (see `table/port_index.rs`), by the
    /// number in their header entry.
    port_indexes: Vec<std::sync::Arc<SetIndex>>,
    /// Namespaces whose ipBlock rules were left out for the budget, by name,
    /// with the policies (indexes) and directions that have ipBlock rules.
    ipblock_dropped: Vec<(String, Vec<(u32, Direction)>)>,
    /// (namespace, name) of each policy index; shared by a table and its
    /// patched copies until a patch adds a policy.
    policies: std::sync::Arc<Vec<(std::sync::Arc<str>, std::sync::Arc<str>)>>,
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
    pod: Option<(u32, u32)>, // (identity block, bit)
    /// Is the address inside some ipBlock of the side's direction? (Always
    /// true for a non-pod address: its side's map is searched.)
    in_block: bool,
    ip: IpAddr,
}

impl DecisionTable {
    /// Looks up one flow: `src` opens a connection to `dst`, IP protocol
    /// `protocol` (6 TCP, 17 UDP, 132 SCTP, 1/58 ICMP...), destination port
    /// `port` (0 for portless protocols). Allocation-free. This is the
    /// packet path's lookup: it checks the destination's ingress side first
    /// and stops there when it denies (the egress side is then
    /// [`Side::Skipped`]), so a denied flow, judged again on each of its
    /// packets, costs one side check. Allowed flows get both sides.
    #[inline]
    pub fn verdict(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Verdict {
        self.look_up(src, dst, protocol, port, true)
    }

    /// [`DecisionTable::verdict`] with both sides always evaluated: what
    /// `portcullis query`, deny logs and the reference comparison show.
    #[inline]
    pub fn verdict_both(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Verdict {
        self.look_up(src, dst, protocol, port, false)
    }

    #[inline(always)]
    fn look_up(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16, first_denial: bool) -> Verdict {
        let s = self.addr(src).map(|e| (e, &self.pods[e.pod as usize]));
        let d = self.addr(dst).map(|e| (e, &self.pods[e.pod as usize]));
        if s.is_none() && d.is_none() {
            return Verdict { egress: Side::NotPod, ingress: Side::NotPod };
        }
        let dst_named: &[NamedEntry] = match d {
            Some((_, p)) => self.named.get(p.named as usize..).unwrap_or_default(),
            None => &[],
        };
        let ingress = match d {
            None => Side::NotPod,
            Some((e, p)) => {
                let denied = (e.peers, e.flags >> 8, e.denies_non_pod(Direction::Ingress, src));
                self.check(
                    (p.sides[0], e.home),
                    self.peer(s, src, Direction::Ingress),
                    protocol,
                    port,
                    dst_named,
                    denied,
                )
            }
        };
        if first_denial && matches!(ingress, Side::Denied(_)) {
            return Verdict { egress: Side::Skipped, ingress };
        }
        let egress = match s {
            None => Side::NotPod,
            Some((e, p)) if e.allows_all(Direction::Egress) => self.allowed_by_any(p.sides[1]),
            Some((e, p)) => {
                let denied = (u16::MAX, u16::MAX, e.denies_non_pod(Direction::Egress, dst));
                self.check(
                    (p.sides[1], 0),
                    self.peer(d, dst, Direction::Egress),
                    protocol,
                    port,
                    dst_named,
                    denied,
                )
            }
        };
        Verdict { egress, ingress }
    }

    /// The answer of a side whose first `any` entry allows every protocol
    /// ([`AddrEntry::allows_all`]): that entry's rule, whoever the peer and
    /// whatever the port (every set of the side starts with its `any`
    /// entries). Only bounds checks, which pass, branch on what is read
    /// here, so the side entry and rule loads are off the lookup's critical
    /// path.
    /// A side or rule not where the table says (never, for a table this
    /// module built) denies, as in [`Self::check`].
    #[inline(always)]
    fn allowed_by_any(&self, side: u32) -> Side {
        let rule = self.sides.get(side as usize).and_then(|se| self.entry_rules.get(se.any as usize));
        match rule {
            Some(&r) => Side::Allowed(r),
            None => Side::Denied(SideId(side)),
        }
    }

    /// The other end of a flow, seen from a side of direction `dir`.
    #[inline]
    fn peer(&self, a: Option<(&AddrEntry, &PodEntry)>, ip: IpAddr, dir: Direction) -> PeerInfo {
        match a {
            Some((e, p)) => {
                PeerInfo { pod: Some((p.block_bit >> 6, p.block_bit & 63)), in_block: e.in_block(dir), ip }
            }
            None => PeerInfo { pod: None, in_block: true, ip },
        }
    }

    #[inline]
    fn addr(&self, ip: IpAddr) -> Option<&AddrEntry> {
        match ip {
            IpAddr::V4(a) => self.addr_v4.get(&u32::from(a)),
            IpAddr::V6(a) => self.addr_v6.get(&u128::from(a)),
        }
    }

    /// One side's answer. `(peers, ports, non_pod)`: what the address entry of
    /// the side's pod says the side denies ([`AddrEntry`]), tested first.
    #[inline(always)]
    fn check(
        &self,
        (side, home): (u32, u32),
        peer: PeerInfo,
        proto: u8,
        port: u16,
        dst_named: &[NamedEntry],
        (peers, ports, non_pod): (u16, u16, bool),
    ) -> Side {
        if side == 0 {
            return Side::NotIsolated;
        }
        let denied = match peer.pod {
            Some((block, bit)) => {
                !peer.in_block
                    && (peers >> (slot_hash(block << 6 | bit) >> 28) & 1 == 0
                        || ports >> port_bit(proto, port) & 1 == 0)
            }
            None => non_pod,
        };
        if denied {
            return Side::Denied(SideId(side));
        }
        let Some(se) = self.sides.get(side as usize) else {
            return Side::Denied(SideId(side));
        };
        // One probe and one set scan per peer: each stored set starts with the
        // side's `any` (and, for pods, `any_pod`) entries.
        match peer.pod {
            Some((block, bit)) => {
                // From the address entry's copy of the table's place when it
                // has one: the slot's read then does not wait for the side entry.
                let slot = if home != 0 { self.probe_home(home, block) } else { self.probe(se, block) };
                let set = match slot {
                    Some(slot) if slot.mask >> bit & 1 != 0 => {
                        if slot.set & MULTI == 0 {
                            slot.set
                        } else {
                            self.group_set(slot.set, bit)
                        }
                    }
                    _ => se.pod_any,
                };
                if let Some(r) = self.set_match(set, proto, port, dst_named) {
                    return Side::Allowed(r);
                }
                // A pod IP inside an ipBlock: the side's ipBlock entries come last.
                if peer.in_block {
                    let set = self.range_set(se, peer.ip);
                    if set != 0 {
                        if let Some(r) = self.set_match(set, proto, port, dst_named) {
                            return Side::Allowed(r);
                        }
                    }
                }
            }
            None => {
                let set = match self.range_set(se, peer.ip) {
                    0 => se.any,
                    set => set,
                };
                if let Some(r) = self.set_match(set, proto, port, dst_named) {
                    return Side::Allowed(r);
                }
            }
        }
        Side::Denied(SideId(side))
    }

    /// What a side denies without a look at it ([`SideDenials`]).
    fn denials_of(&self, side: u32) -> SideDenials {
        let Some(se) = self.sides.get(side as usize).filter(|_| side != 0) else { return NO_DENIALS };
        let empty = |set: SetId| self.entries.get(set as usize).is_some_and(|e| e.proto == END_PROTO);
        let mut d = 0;
        if empty(se.any) {
            for f in 0..2 {
                if self.probe(se, CIDR_KEY | f).is_none() {
                    d |= 1 << (16 + f);
                }
            }
        }
        let (slots, base): (&[Slot], u32) = if se.table & PATCHED == 0 {
            (&self.slots, se.table)
        } else {
            (&self.patch_slots, se.table & !PATCHED)
        };
        // A table or group not where the side says (never, for a table this
        // module built) must not read as "no keys": then nothing is denied here.
        let Some(table) = slots.get(base as usize..(base as usize + (1 << se.table_bits))) else {
            return NO_DENIALS;
        };
        let mut peers = if empty(se.pod_any) { 0u32 } else { 0xffff };
        let mut ports = 0;
        self.ports_of(se.pod_any, &mut ports);
        for slot in table.iter().filter(|s| s.key != EMPTY && s.key & CIDR_KEY == 0) {
            let mut m = slot.mask;
            while m != 0 && peers != 0xffff {
                peers |= 1 << (slot_hash(slot.key << 6 | m.trailing_zeros()) >> 28);
                m &= m - 1;
            }
            if slot.set & MULTI == 0 {
                self.ports_of(slot.set, &mut ports);
            } else {
                let Some(groups) = self.groups.get((slot.set & !MULTI) as usize..) else {
                    return NO_DENIALS;
                };
                for g in groups {
                    self.ports_of(g.set, &mut ports);
                    if g.last {
                        break;
                    }
                }
            }
        }
        if self.entries.get(se.any as usize).is_some_and(|e| e.proto == ANY_PROTO) {
            d |= ALLOWS_ALL;
        }
        d | SideDenials::from(peers)
            | SideDenials::from(ports & 0xff) << 24
            | SideDenials::from(ports >> 8 & 0x3f) << 18
    }

    /// Adds a set's entries to `bits`: its numbered ports to the ports
    /// filter (low 8 bits; all set for an entry of every protocol, a range
    /// of more than 8 ports, a long set), its named ports to the names
    /// filter (bits 8 to 13).
    fn ports_of(&self, set: SetId, bits: &mut u32) {
        for e in self.entries.get(set as usize..).unwrap_or_default() {
            match e.proto {
                END_PROTO => return,
                ANY_PROTO | INDEXED_PROTO => break,
                _ if e.hi.saturating_sub(e.lo) >= 8 && e.name == 0 => break,
                proto if e.name != 0 => *bits |= 1 << (8 + name_bit(proto, e.name)),
                proto => {
                    for p in e.lo..=e.hi {
                        *bits |= 1 << port_bit(proto, p);
                    }
                }
            }
        }
        *bits |= 0xff;
    }

    /// Brings `side_denials` up to date for the sides from `first` on and
    /// those in `rebuilt`, then the address entries of the pods on those
    /// sides and of the pods in `moved` (given other sides).
    fn refresh_denials(&mut self, first: usize, rebuilt: &[u32], moved: &[u32]) {
        let first = first.min(self.sides.len());
        if first == self.sides.len() && rebuilt.is_empty() && moved.is_empty() {
            return;
        }
        self.side_denials.truncate(first);
        let fresh: Vec<SideDenials> = (first..self.sides.len()).map(|s| self.denials_of(s as u32)).collect();
        self.side_denials.extend(fresh);
        let mut dirty = vec![false; self.sides.len()];
        dirty[first..].fill(true);
        for &s in rebuilt {
            let d = self.denials_of(s);
            if let (Some(slot), Some(flag)) =
                (self.side_denials.get_mut(s as usize), dirty.get_mut(s as usize))
            {
                *slot = d;
                *flag = true;
            }
        }
        let mut pods_dirty: Vec<bool> =
            self.pods.iter().map(|p| p.sides.iter().any(|&s| dirty.get(s as usize) == Some(&true))).collect();
        for &p in moved {
            if let Some(flag) = pods_dirty.get_mut(p as usize) {
                *flag = true;
            }
        }
        let (pods, sides, denials, named) = (&self.pods, &self.sides, &self.side_denials, &self.named);
        let refresh = |e: &mut AddrEntry| {
            if pods_dirty.get(e.pod as usize) == Some(&true) {
                e.set_denials(pods, sides, denials, named);
            }
        };
        self.addr_v4.values_mut().for_each(refresh);
        self.addr_v6.values_mut().for_each(refresh);
    }

    /// The address entry of pod `pod` (its entry already in place) at `ip`.
    fn addr_entry(&self, pod: u32, ip: IpAddr) -> AddrEntry {
        let mut e = AddrEntry::new(pod, in_blocks_of(&self.in_blocks, ip));
        e.set_denials(&self.pods, &self.sides, &self.side_denials, &self.named);
        e
    }

    /// The port set of the side's ipBlock rules for an address (0: none of
    /// its blocks contains it).
    #[inline]
    fn range_set(&self, se: &SideEntry, ip: IpAddr) -> SetId {
        let (f, v) = split(ip);
        match self.probe(se, CIDR_KEY | f as u32) {
            Some(slot) => self.ranges.value_in(slot.set, (slot.mask as u32, (slot.mask >> 32) as u32), v),
            None => 0,
        }
    }

    /// The slot of `key` in a side's peer table (linear probing from its home slot).
    #[inline]
    fn probe(&self, se: &SideEntry, key: u32) -> Option<Slot> {
        let h = slot_hash(key);
        if se.filter >> (h >> 28) & 1 == 0 {
            return None;
        }
        let mask = (1u32 << se.table_bits) - 1;
        let i = h & mask;
        let (slots, base): (&[Slot], u32) = if se.table & PATCHED == 0 {
            (&self.slots, se.table)
        } else {
            (&self.patch_slots, se.table & !PATCHED)
        };
        find_slot(slots, base, mask, i, key)
    }

    /// [`Self::probe`] of a peer table given as [`AddrEntry::home`] (not
    /// 0). The side's filter is not tested: the home slot's read then
    /// waits for neither the side entry nor a branch on it.
    #[inline]
    fn probe_home(&self, home: u32, key: u32) -> Option<Slot> {
        let mask = (1u32 << (home >> 27)) - 1;
        let base = home & HOME_BASE;
        let slots: &[Slot] = if home >> 26 & 1 == 0 { &self.slots } else { &self.patch_slots };
        find_slot(slots, base, mask, slot_hash(key) & mask, key)
    }

    /// The port set of the group holding `bit`, among the groups from `MULTI | first`
    /// (one of them does: the slot's mask is their union).
    #[inline]
    fn group_set(&self, first: u32, bit: u32) -> SetId {
        let groups = self.groups.get((first & !MULTI) as usize..).unwrap_or_default();
        for g in groups {
            if g.mask >> bit & 1 != 0 {
                return g.set;
            }
            if g.last {
                break;
            }
        }
        0
    }

    #[inline(always)]
    fn set_match(&self, set: SetId, proto: u8, port: u16, dst_named: &[NamedEntry]) -> Option<RuleRef> {
        let es = self.entries.get(set as usize..)?;
        if es.first()?.proto == INDEXED_PROTO {
            return self.indexed_match(set, es[0].name, proto, port, dst_named);
        }
        for (i, e) in es.iter().enumerate() {
            if e.proto == END_PROTO {
                return None;
            }
            if e.matches(proto, port, dst_named) {
                return self.entry_rules.get(set as usize + i).copied();
            }
        }
        None
    }

    /// [`Self::set_match`] for a long set, through its index.
    #[cold]
    #[inline(never)]
    fn indexed_match(
        &self,
        set: SetId,
        index: u32,
        proto: u8,
        port: u16,
        dst_named: &[NamedEntry],
    ) -> Option<RuleRef> {
        let offset = self.port_indexes.get(index as usize)?.first_match(proto, port, dst_named)?;
        self.entry_rules.get(set as usize + 1 + offset as usize).copied()
    }

    /// `(namespace, name)` of a policy named in a [`RuleRef`] or side.
    pub fn policy(&self, index: u32) -> (&str, &str) {
        let (ns, n) = &self.policies[index as usize];
        let (ns, n): (&str, &str) = (ns, n);
        (ns, n)
    }

    /// The policies isolating a denied side, and its direction.
    pub fn isolating_policies(&self, side: SideId) -> (Option<Direction>, impl Iterator<Item = u32> + '_) {
        let se = &self.side_info[side.0 as usize];
        let (a, b) = se.policies;
        (se.dir, self.side_policies[a as usize..b as usize].iter().copied())
    }

    /// `(namespace, name)` of the pod owning `ip`, if any.
    pub fn pod_at(&self, ip: IpAddr) -> Option<(&str, &str)> {
        self.addr(ip).map(|e| {
            let i = e.pod as usize;
            let (ns, n) = match self.pod_keys.get(i) {
                Some(k) => k,
                None => &self.added_pod_keys[i - self.pod_keys.len()],
            };
            (ns.as_str(), n.as_str())
        })
    }

    /// Number of policy indexes a [`RuleRef`] or side may name: the policies
    /// compiled, plus, in a patched table, the names of policies deleted or
    /// added since the last full compile (see [`patch`]).
    pub fn policy_slots(&self) -> usize {
        self.policies.len()
    }

    /// The policies whose ipBlock rules were left out because their
    /// namespace's range maps would cost more than the budget
    /// ([`TableStats::dropped_ipblock_namespaces`]), as errors: in those
    /// namespaces every ipBlock rule allows nothing (fail closed); their
    /// other rules still apply. One per policy and direction, sorted.
    pub fn budget_problems(&self) -> Vec<crate::Problem> {
        let mut out = Vec::new();
        for (namespace, policies) in &self.ipblock_dropped {
            for &(p, dir) in policies {
                let (_, name) = self.policy(p);
                let field = match dir {
                    Direction::Ingress => "spec.ingress",
                    Direction::Egress => "spec.egress",
                };
                out.push(crate::Problem {
                    severity: crate::Severity::Error,
                    object: crate::ObjectRef {
                        kind: "NetworkPolicy",
                        namespace: namespace.clone(),
                        name: name.to_string(),
                    },
                    field: field.to_string(),
                    message: format!(
                        "the ipBlock rules of namespace {namespace}'s policies expand to more than \
                         {NAMESPACE_RANGE_BUDGET} address ranges and port entries; in this namespace their \
                         ipBlock peers match nothing (fail closed), selector peers and other rules still \
                         apply. Merge rules that differ only in their `except` entries, or use fewer ports \
                         per holed block"
                    ),
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.object.namespace, &a.object.name, &a.field).cmp(&(
                &b.object.namespace,
                &b.object.name,
                &b.field,
            ))
        });
        out.dedup();
        out
    }

    /// Size and shape of the table.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// How many pods with an address some policy isolates, [for ingress,
    /// for egress]: one pass over the pods the addresses lead to.
    pub fn isolated_pods(&self) -> [usize; 2] {
        let mut pods: Vec<u32> = self.addr_v4.values().chain(self.addr_v6.values()).map(|e| e.pod).collect();
        pods.sort_unstable();
        pods.dedup();
        let mut n = [0, 0];
        for p in pods.iter().filter_map(|&i| self.pods.get(i as usize)) {
            n[0] += usize::from(p.sides[0] != 0);
            n[1] += usize::from(p.sides[1] != 0);
        }
        n
    }

    /// Compiles a validated cluster snapshot. Deterministic: the same snapshot
    /// gives the same table and the same reasons.
    pub fn compile(cluster: &Cluster) -> DecisionTable {
        compile_full(cluster).table
    }
}

/// How a selector peer resolves against the current pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Resolution {
    all_pods: bool,
    /// (identity block, mask of the matched identities, whole namespace?), by block.
    /// Whole-namespace blocks come from an empty pod selector; their entries
    /// are tested after the per-identity ones, as separate namespace keys
    /// were before blocks.
    blocks: Vec<(u32, u64, bool)>,
}

/// What a compile derives from namespaces and pods alone: namespace
/// indexes, pod identities and their identity blocks. A policy change leaves
/// it as it is (see [`patch`]).
#[derive(Clone, Debug, Default)]
struct Identities {
    ns_index: HashMap<String, u32>,
    /// Labels of each identity.
    labels: Vec<Labels>,
    /// Identities per namespace.
    ns_identities: Vec<Vec<u32>>,
    /// (identity block, bit) of each identity: the identities of a namespace,
    /// in order, fill `BLOCK_BITS`-wide blocks; blocks never span namespaces.
    identity_block: Vec<(u32, u32)>,
    /// Identity blocks of each namespace, in ascending order: consecutive
    /// after a full compile; a patch appends a fresh block (numbered
    /// `blocks`) to a namespace whose blocks are full (see [`patch`]).
    ns_blocks: Vec<Vec<u32>>,
    /// Identity blocks numbered so far.
    blocks: u32,
    pod_identity: Vec<u32>,
}

impl Identities {
    /// The identity blocks of namespace `ns` (none when it has no identities).
    fn ns_blocks(&self, ns: u32) -> &[u32] {
        &self.ns_blocks[ns as usize]
    }

    fn new(cluster: &Cluster) -> Self {
        let ns_index: HashMap<String, u32> =
            cluster.namespaces.iter().enumerate().map(|(i, n)| (n.name.clone(), i as u32)).collect();
        let mut labels = Vec::new();
        let mut ident_index: HashMap<(u32, &Labels), u32> = HashMap::new();
        let mut ns_identities = vec![Vec::new(); cluster.namespaces.len()];
        let mut pod_identity = Vec::with_capacity(cluster.pods.len());
        for p in &cluster.pods {
            let ns = ns_index[p.namespace.as_str()];
            let id = *ident_index.entry((ns, &p.labels)).or_insert_with(|| {
                labels.push(p.labels.clone());
                ns_identities[ns as usize].push((labels.len() - 1) as u32);
                (labels.len() - 1) as u32
            });
            pod_identity.push(id);
        }
        let mut identity_block = vec![(0, 0); labels.len()];
        let mut ns_blocks = Vec::with_capacity(ns_identities.len());
        let mut blocks = 0u32;
        for ids in &ns_identities {
            for (local, &id) in ids.iter().enumerate() {
                identity_block[id as usize] =
                    (blocks + (local / BLOCK_BITS) as u32, (local % BLOCK_BITS) as u32);
            }
            let n = ids.len().div_ceil(BLOCK_BITS) as u32;
            ns_blocks.push((blocks..blocks + n).collect());
            blocks += n;
        }
        Identities { ns_index, labels, ns_identities, identity_block, ns_blocks, blocks, pod_identity }
    }
}

/// What a compile derives from every policy at once: the interned port
/// names and the ipBlocks. A policy change that brings no new port name and
/// no new ipBlock leaves it valid (an ipBlock no policy uses any more only
/// leaves some pod addresses marked `in_block` for nothing).
#[derive(Clone, Debug, Default)]
struct PolicyContext {
    /// Port names policies refer to (1-based; 0 means "numeric").
    names: HashMap<String, u32>,
    /// Distinct ipBlocks of each direction's rules, numbered.
    block_id: [HashMap<IpBlock, u32>; 2],
    /// The same, by number.
    blocks: [Vec<IpBlock>; 2],
    ip_blocks: usize,
}

impl PolicyContext {
    /// The context, and the maps of where some ipBlock of each direction
    /// lies (map `2 * direction + family`).
    fn new(cluster: &Cluster) -> (Self, RangeMaps) {
        let mut ctx = PolicyContext::default();
        for pol in &cluster.policies {
            for d in Direction::BOTH {
                for r in pol.rules(d) {
                    for m in &r.ports {
                        if let PortMatch::Named { name, .. } = m {
                            let n = ctx.names.len() as u32 + 1;
                            ctx.names.entry(name.clone()).or_insert(n);
                        }
                    }
                }
            }
        }
        let mut in_blocks = RangeMaps::default();
        let mut sweep = Sweep::default();
        for d in Direction::BOTH {
            let mut blocks: Vec<&IpBlock> = Vec::new();
            for pol in &cluster.policies {
                for r in pol.rules(d) {
                    for p in &r.peers {
                        if let Peer::Block(b) = p {
                            blocks.push(b);
                        }
                    }
                }
            }
            blocks.sort();
            blocks.dedup();
            ctx.ip_blocks += blocks.len();
            ctx.block_id[d as usize] =
                blocks.iter().enumerate().map(|(i, b)| ((*b).clone(), i as u32)).collect();
            ctx.blocks[d as usize] = blocks.into_iter().cloned().collect();
            // Where some block lies: every block in one "rule", 1 where it is active.
            let pairs: Vec<(u32, u32)> = (0..ctx.blocks[d as usize].len() as u32).map(|b| (b, 0)).collect();
            for f in [Family::V4, Family::V6] {
                let ok: Result<(), std::convert::Infallible> =
                    ranges::sweep(&ctx.blocks[d as usize], &pairs, f, &mut sweep, |_| Ok(1));
                let Ok(()) = ok;
                let m = in_blocks.push(f, &sweep.starts, &sweep.values);
                debug_assert_eq!(m, 2 * d as u32 + f as u32);
            }
        }
        (ctx, in_blocks)
    }

    /// Does this context already cover the policy (its port names and ipBlocks)?
    fn covers(&self, pol: &Policy) -> bool {
        Direction::BOTH.iter().all(|&d| {
            pol.rules(d).iter().all(|r| {
                r.ports.iter().all(|m| match m {
                    PortMatch::Named { name, .. } => self.names.contains_key(name),
                    PortMatch::Range { .. } => true,
                }) && r.peers.iter().all(|p| match p {
                    Peer::Block(b) => self.block_id[d as usize].contains_key(b),
                    Peer::Pods { .. } => true,
                })
            })
        })
    }
}

struct Compiler<'a> {
    cluster: &'a Cluster,
    ids: &'a Identities,
    ctx: &'a PolicyContext,
    /// The table's index of each policy of `cluster` (the identity for a
    /// full compile; a patched table appends new policies to its list).
    policy_ids: &'a [u32],
    pod_cache: HashMap<(&'a Selector, u32), (bool, Vec<u32>)>,
    ns_cache: HashMap<&'a Selector, Vec<u32>>,
    peer_cache: HashMap<(&'a NamespaceMatch, &'a Selector), std::sync::Arc<Resolution>>,
    /// Resolutions from earlier compiles over the same identities (a patch's).
    known: Option<&'a PeerCache>,
}

/// Selector peers resolved against one [`Identities`]: kept by an
/// incremental compiler from one patch to the next.
type PeerCache = HashMap<(NamespaceMatch, Selector), std::sync::Arc<Resolution>>;

/// A borrowed key of a [`PeerCache`] (hashes like the owned one).
#[derive(Hash)]
struct PeerRef<'a>(&'a NamespaceMatch, &'a Selector);

impl hashbrown::Equivalent<(NamespaceMatch, Selector)> for PeerRef<'_> {
    fn equivalent(&self, key: &(NamespaceMatch, Selector)) -> bool {
        *self.0 == key.0 && *self.1 == key.1
    }
}

/// The sides a compile creates: each one's direction and isolating policies
/// (cluster indexes, in cluster order), and each identity's [ingress, egress] side.
struct SidePlan {
    lists: Vec<(Direction, Vec<u32>)>,
    identity_sides: HashMap<u32, [u32; 2]>,
}

impl<'a> Compiler<'a> {
    fn new(cluster: &'a Cluster, ids: &'a Identities, ctx: &'a PolicyContext, policy_ids: &'a [u32]) -> Self {
        Compiler {
            cluster,
            ids,
            ctx,
            policy_ids,
            pod_cache: HashMap::new(),
            ns_cache: HashMap::new(),
            peer_cache: HashMap::new(),
            known: None,
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
        let all = &self.ids.ns_identities[ns as usize];
        let v: Vec<u32> =
            all.iter().copied().filter(|i| sel.matches(&self.ids.labels[*i as usize])).collect();
        let r = (v.len() == all.len(), v);
        self.pod_cache.insert((sel, ns), r.clone());
        r
    }

    /// Resolves a selector peer, once per distinct (namespaces, pods) pair.
    fn resolve(&mut self, namespaces: &'a NamespaceMatch, pods: &'a Selector) -> std::sync::Arc<Resolution> {
        if let Some(r) = self.peer_cache.get(&(namespaces, pods)) {
            return r.clone();
        }
        if let Some(r) = self.known.and_then(|k| k.get(&PeerRef(namespaces, pods))) {
            self.peer_cache.insert((namespaces, pods), r.clone());
            return r.clone();
        }
        let r = std::sync::Arc::new(self.resolve_uncached(namespaces, pods));
        self.peer_cache.insert((namespaces, pods), r.clone());
        r
    }

    fn resolve_uncached(&mut self, namespaces: &'a NamespaceMatch, pods: &'a Selector) -> Resolution {
        let ns_list = match namespaces {
            NamespaceMatch::Own(n) => self.ids.ns_index.get(n.as_str()).map(|i| vec![*i]).unwrap_or_default(),
            NamespaceMatch::Selector(s) => self.namespaces_matching(s),
        };
        // "Every pod of a namespace" and "every pod" are read from the
        // selectors' form (empty), not from which identities exist: the order
        // of a side's entries, and so the rule a verdict names, must not
        // depend on whether some label set has pods right now (a patched
        // table keeps identities whose pods left; a full compile drops them).
        let mut r = Resolution {
            all_pods: pods.is_everything()
                && matches!(namespaces, NamespaceMatch::Selector(s) if s.is_everything()),
            blocks: Vec::new(),
        };
        if r.all_pods {
            return r;
        }
        for ns in ns_list {
            if self.ids.ns_identities[ns as usize].is_empty() {
                continue;
            }
            if pods.is_everything() {
                // Every bit of the namespace's blocks, used or not: an identity
                // added later (see `patch`) is matched without a new resolution.
                for &block in self.ids.ns_blocks(ns) {
                    r.blocks.push((block, u64::MAX, true));
                }
            } else {
                // `ids` are in namespace order, so the blocks come in order.
                let (_, ids) = self.identities_matching(pods, ns);
                for id in ids {
                    let (block, bit) = self.ids.identity_block[id as usize];
                    match r.blocks.last_mut() {
                        Some((b, m, false)) if *b == block => *m |= 1 << bit,
                        _ => r.blocks.push((block, 1 << bit, false)),
                    }
                }
            }
        }
        r
    }

    /// Which of the policies `policies` (cluster indexes) isolate the
    /// identities `identities`, per direction; identical lists share a side,
    /// numbered from `first_side` in identity order.
    fn plan_sides(
        &mut self,
        policies: std::ops::Range<usize>,
        identities: &[u32],
        first_side: u32,
    ) -> SidePlan {
        let cluster = self.cluster;
        let mut lists: HashMap<u32, [Vec<u32>; 2]> = HashMap::new();
        for pi in policies {
            let pol = &cluster.policies[pi];
            let Some(&ns) = self.ids.ns_index.get(pol.namespace.as_str()) else {
                continue;
            };
            let (_, ids) = self.identities_matching(&pol.pod_selector, ns);
            for id in ids {
                for d in Direction::BOTH {
                    if pol.isolates(d) {
                        lists.entry(id).or_default()[d as usize].push(pi as u32);
                    }
                }
            }
        }
        let mut plan = SidePlan { lists: Vec::new(), identity_sides: HashMap::new() };
        let mut side_index: HashMap<(Direction, &[u32]), u32> = HashMap::new();
        for &id in identities {
            let Some(l) = lists.get(&id) else { continue };
            let mut sides = [0u32; 2];
            for d in Direction::BOTH {
                let list = &l[d as usize];
                if list.is_empty() {
                    continue;
                }
                let next = first_side + plan.lists.len() as u32;
                sides[d as usize] = *side_index.entry((d, list.as_slice())).or_insert_with(|| {
                    plan.lists.push((d, list.clone()));
                    next
                });
            }
            plan.identity_sides.insert(id, sides);
        }
        plan
    }

    fn port_entries(&self, rule: &Rule, out: &mut Vec<PortEntry>) {
        out.clear();
        if rule.ports.is_empty() {
            out.push(PortEntry { proto: ANY_PROTO, lo: 0, hi: u16::MAX, name: 0 });
            return;
        }
        out.extend(rule.ports.iter().map(|m| match m {
            PortMatch::Range { protocol, lo, hi } => {
                PortEntry { proto: protocol.number(), lo: *lo, hi: *hi, name: 0 }
            }
            PortMatch::Named { protocol, name } => {
                PortEntry { proto: protocol.number(), lo: 0, hi: 0, name: self.ctx.names[name] }
            }
        }));
    }
}

/// Builds sides' peer tables and port sets into the table's arrays (a
/// fresh table's, or a patched copy's, appending).
struct SideBuilder {
    sets: SetBuilder,
    slots: Vec<Slot>,
    /// Marks the tables placed in `slots` ([`PATCHED`] when `slots` is a
    /// table's `patch_slots`).
    table_flag: u32,
    groups: Vec<Group>,
    peer_keys: usize,
    peer_groups: usize,
    // Scratch, reused from side to side.
    keyed: Vec<Slot>,
    /// (key, namespace-wide?, sequence, identity mask, entry, rule)
    buf: Vec<(u32, bool, u32, u64, PortEntry, RuleRef)>,
    any: Vec<(PortEntry, RuleRef)>,
    any_pod: Vec<(PortEntry, RuleRef)>,
    set_buf: Vec<(PortEntry, RuleRef)>,
    es: Vec<PortEntry>,
    by_set: Vec<(SetId, u64)>,
    /// The range maps of the sides built (a table's `ranges`, appended to).
    ranges: RangeMaps,
    /// Build the next sides without range maps (their namespace's would
    /// cost more than [`NAMESPACE_RANGE_BUDGET`]): their ipBlock rules allow nothing.
    drop_ranges: bool,
    /// The maps built, by what they come from, for sides to share.
    shared: HashMap<RangeKey, [Option<u32>; 2]>,
    /// Per policy (cluster index), lazily: bit 0 / 1, a rule without peers /
    /// with an ipBlock among its ingress rules; bits 2 / 3, egress.
    /// [`UNKNOWN`] until computed.
    policy_flags: Vec<u8>,
    /// Scratch: the side's ipBlock rules.
    cidr: CidrRules,
    sweep: Sweep,
}

/// What a side's range maps depend on: its direction and those of its
/// policies (cluster indexes, in order) with a rule without peers or with
/// an ipBlock in that direction. Sides with the same key get the same maps
/// and share them.
type RangeKey = (Direction, Vec<u32>);

/// `SideBuilder::policy_flags` of a policy not looked at yet.
const UNKNOWN: u8 = 0xff;

/// A side's rules without peers and ipBlock rules, which its range maps are
/// built from.
#[derive(Clone, Debug, Default)]
struct CidrRules {
    /// The side's rules without peers (every range's set starts with them).
    any: Vec<(PortEntry, RuleRef)>,
    /// (block, rule): the side's ipBlock rule `rule` names the direction's
    /// ipBlock number `block`.
    pairs: Vec<(u32, u32)>,
    /// Each ipBlock rule's first entry in `entries`, then the end.
    rules: Vec<u32>,
    entries: Vec<(PortEntry, RuleRef)>,
}

impl CidrRules {
    /// Gathers the rules without peers and (with `blocks`) the ipBlock rules
    /// of the policies `list` (cluster indexes) in direction `dir`.
    fn gather(
        &mut self,
        c: &Compiler<'_>,
        (dir, list): (Direction, &[u32]),
        blocks: bool,
        es: &mut Vec<PortEntry>,
    ) {
        self.any.clear();
        self.pairs.clear();
        self.rules.clear();
        self.entries.clear();
        for &pi in list {
            for (ri, rule) in c.cluster.policies[pi as usize].rules(dir).iter().enumerate() {
                let rr = RuleRef { policy: c.policy_ids[pi as usize], rule: ri as u32 };
                if rule.peers.is_empty() {
                    c.port_entries(rule, es);
                    self.any.extend(es.iter().map(|e| (*e, rr)));
                    continue;
                }
                if !blocks {
                    continue;
                }
                let mut number = None;
                for peer in &rule.peers {
                    if let Peer::Block(b) = peer {
                        let r = *number.get_or_insert_with(|| {
                            c.port_entries(rule, es);
                            self.rules.push(self.entries.len() as u32);
                            self.entries.extend(es.iter().map(|e| (*e, rr)));
                            self.rules.len() as u32 - 1
                        });
                        self.pairs.push((c.ctx.block_id[dir as usize][b], r));
                    }
                }
            }
        }
        self.rules.push(self.entries.len() as u32);
    }

    /// The entries of ipBlock rule `r`.
    fn of(&self, r: u32) -> &[(PortEntry, RuleRef)] {
        &self.entries[self.rules[r as usize] as usize..self.rules[r as usize + 1] as usize]
    }

    /// What the range maps of these rules cost (`blocks`: the direction's
    /// ipBlocks by number): their ranges plus the entries of their distinct
    /// port sets. None past `limit` (the sweep stops there).
    fn cost(&self, blocks: &[IpBlock], sweep: &mut Sweep, limit: usize) -> Option<usize> {
        let mut total = 0usize;
        for f in [Family::V4, Family::V6] {
            // A value per distinct set, as the build gives, so that the same
            // ranges merge and the same boundaries are counted.
            let mut distinct = 0;
            ranges::sweep(blocks, &self.pairs, f, sweep, |active| {
                total += self.any.len() + active.iter().map(|&r| self.of(r).len()).sum::<usize>();
                distinct += 1;
                if total > limit {
                    Err(())
                } else {
                    Ok(distinct)
                }
            })
            .ok()?;
            if distinct > 0 {
                total += sweep.starts.len();
            }
        }
        (total <= limit).then_some(total)
    }
}

impl SideBuilder {
    fn new(sets: SetBuilder, slots: Vec<Slot>, groups: Vec<Group>) -> Self {
        SideBuilder {
            sets,
            slots,
            table_flag: 0,
            groups,
            peer_keys: 0,
            peer_groups: 0,
            keyed: Vec::new(),
            buf: Vec::new(),
            any: Vec::new(),
            any_pod: Vec::new(),
            set_buf: Vec::new(),
            es: Vec::new(),
            by_set: Vec::new(),
            ranges: RangeMaps::default(),
            drop_ranges: false,
            shared: HashMap::new(),
            policy_flags: Vec::new(),
            cidr: CidrRules::default(),
            sweep: Sweep::default(),
        }
    }

    /// Expands one side's rules (policies `list`, cluster indexes) into port
    /// sets keyed by peer, and places its peer table. Keys are produced side
    /// by side, so one flat buffer, sorted and grouped, replaces a map of
    /// small vectors. A selector peer pushes one entry per identity block it
    /// touches, with the mask of the identities it matches there; each
    /// (side, block) key then splits its block's identities into groups that
    /// get the same port set.
    fn build<'a>(&mut self, c: &mut Compiler<'a>, dir: Direction, list: &[u32]) -> SideEntry {
        let mut side = SideEntry::default();
        self.expand(c, dir, list, None, &mut side);
        self.place(&mut side, None);
        side
    }

    /// Do the range maps of these sides (all of one namespace's) fit the
    /// namespace's budget? Sides with the same ipBlock rules count once.
    fn ranges_fit<'l>(
        &mut self,
        c: &Compiler<'_>,
        lists: impl Iterator<Item = &'l (Direction, Vec<u32>)>,
    ) -> bool {
        let mut seen: hashbrown::HashSet<RangeKey> = Default::default();
        let mut total = 0;
        for (dir, list) in lists {
            let Some(key) = self.range_key(c, *dir, list) else { continue };
            if seen.contains(&key) {
                continue;
            }
            self.cidr.gather(c, (*dir, &key.1), true, &mut self.es);
            let blocks = &c.ctx.blocks[*dir as usize];
            match self.cidr.cost(blocks, &mut self.sweep, NAMESPACE_RANGE_BUDGET - total) {
                Some(n) => total += n,
                None => return false,
            }
            seen.insert(key);
        }
        true
    }

    /// The [`RangeKey`] of a side of direction `dir` and policies `list`,
    /// or None when none of them has an ipBlock in that direction.
    fn range_key(&mut self, c: &Compiler<'_>, dir: Direction, list: &[u32]) -> Option<RangeKey> {
        if self.policy_flags.len() < c.cluster.policies.len() {
            self.policy_flags.resize(c.cluster.policies.len(), UNKNOWN);
        }
        let mut any_block = false;
        let mut key = Vec::new();
        for &pi in list {
            let flags = &mut self.policy_flags[pi as usize];
            if *flags == UNKNOWN {
                *flags = 0;
                for (i, d) in Direction::BOTH.into_iter().enumerate() {
                    for r in c.cluster.policies[pi as usize].rules(d) {
                        if r.peers.is_empty() {
                            *flags |= 1 << (2 * i);
                        } else if r.peers.iter().any(|p| matches!(p, Peer::Block(_))) {
                            *flags |= 2 << (2 * i);
                        }
                    }
                }
            }
            let f = *flags >> (2 * dir as usize) & 3;
            any_block |= f & 2 != 0;
            if f != 0 {
                key.push(pi);
            }
        }
        any_block.then_some((dir, key))
    }

    /// The side of [`Self::build`] again, with only the keys of identity
    /// blocks `blocks` expanded anew (a patch's new identities, or a
    /// relabelled namespace's blocks): the rest of its peer table, `old`
    /// (the side's slots, free ones included), is kept as it is, and so are
    /// its `any` and `pod_any` sets (`was`), which no identity changes. Exact
    /// when the resolutions of the side's peers changed in those blocks only.
    /// `reuse`: where `old` lies in `slots` when the table being built owns
    /// it (a patch's own copy of `patch_slots`): rewritten in place if the
    /// keys fit, so that repeated patches do not append a table each time.
    fn rebuild_keys<'a>(
        &mut self,
        c: &mut Compiler<'a>,
        (dir, list): (Direction, &[u32]),
        blocks: &[u32],
        (was, old, reuse): (SideEntry, &[Slot], Option<usize>),
    ) -> SideEntry {
        let mut side = SideEntry { any: was.any, pod_any: was.pod_any, ..SideEntry::default() };
        self.expand(c, dir, list, Some(blocks), &mut side);
        // Count the keys expanded anew, not the kept ones again.
        let peer_keys = self.peer_keys + self.keyed.len();
        self.keyed.extend(old.iter().filter(|s| s.key != EMPTY && !blocks.contains(&s.key)));
        self.place(&mut side, reuse.map(|base| (base, old.len())));
        self.peer_keys = peer_keys;
        side
    }

    /// Expands the side's rules into `keyed` (all keys, or only the
    /// identity blocks `only`), and sets its `any` and `pod_any` sets and
    /// its range maps (when expanding all keys).
    fn expand<'a>(
        &mut self,
        c: &mut Compiler<'a>,
        dir: Direction,
        list: &[u32],
        only: Option<&[u32]>,
        side: &mut SideEntry,
    ) {
        let cluster = c.cluster;
        self.buf.clear();
        self.any_pod.clear();
        self.keyed.clear();
        self.cidr.gather(c, (dir, list), false, &mut self.es);
        self.any.clone_from(&self.cidr.any);
        for &pi in list {
            let pol: &'a Policy = &cluster.policies[pi as usize];
            for (ri, rule) in pol.rules(dir).iter().enumerate() {
                if rule.peers.is_empty() {
                    continue;
                }
                let rr = RuleRef { policy: c.policy_ids[pi as usize], rule: ri as u32 };
                c.port_entries(rule, &mut self.es);
                let es = &self.es;
                let push = |k: u32, whole: bool, mask: u64, buf: &mut Vec<_>| {
                    if only.is_some_and(|only| !only.contains(&k)) {
                        return;
                    }
                    for e in es {
                        let seq = buf.len() as u32;
                        buf.push((k, whole, seq, mask, *e, rr));
                    }
                };
                for peer in &rule.peers {
                    match peer {
                        // In the range maps (`CidrRules::gather`).
                        Peer::Block(_) => {}
                        Peer::Pods { namespaces, pods } => {
                            let r = c.resolve(namespaces, pods);
                            if r.all_pods {
                                self.any_pod.extend(es.iter().map(|e| (*e, rr)));
                                continue;
                            }
                            for &(block, mask, whole) in &r.blocks {
                                push(block, whole, mask, &mut self.buf);
                            }
                        }
                    }
                }
            }
        }
        // Every set of the side starts with the entries tested before it, so a
        // lookup scans one set per peer: rules without peers (`any`) for every
        // peer, then, for pods, rules whose peers match every pod (`any_pod`).
        if only.is_none() {
            side.any = self.sets.add(&self.any);
        }
        let mut pod_prefix = self.any.clone();
        pod_prefix.extend_from_slice(&self.any_pod);
        if only.is_none() {
            side.pod_any = self.sets.add(&pod_prefix);
            // A patch's re-expansion of identity blocks keeps the range maps.
            self.build_ranges(c, dir, list);
        }
        // Per key: entries from identity-level matches first, then namespace-wide
        // ones, each in rule order (the order the table has always tested them in).
        self.buf.sort_unstable_by_key(|x| (x.0, x.1, x.2));
        let buf = std::mem::take(&mut self.buf);
        let mut i = 0;
        while i < buf.len() {
            let k = buf[i].0;
            let j = i + buf[i..].iter().take_while(|x| x.0 == k).count();
            let run = &buf[i..j];
            i = j;
            let union = run.iter().fold(0u64, |m, x| m | x.3);
            if run.iter().all(|x| x.3 == union) {
                self.set_buf.clone_from(&pod_prefix);
                self.set_buf.extend(run.iter().map(|x| (x.4, x.5)));
                self.keyed.push(Slot { key: k, set: self.sets.add(&self.set_buf), mask: union });
                self.peer_groups += 1;
                continue;
            }
            // Identities of the block that see different entries: one port set
            // per identity, identical sets merged into one group.
            self.by_set.clear();
            let mut rest = union;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                self.set_buf.clone_from(&pod_prefix);
                self.set_buf.extend(run.iter().filter(|x| x.3 >> bit & 1 != 0).map(|x| (x.4, x.5)));
                let set = self.sets.add(&self.set_buf);
                match self.by_set.iter_mut().find(|(r, _)| *r == set) {
                    Some((_, m)) => *m |= 1 << bit,
                    None => self.by_set.push((set, 1 << bit)),
                }
            }
            self.peer_groups += self.by_set.len();
            if let [(set, _)] = self.by_set[..] {
                self.keyed.push(Slot { key: k, set, mask: union });
                continue;
            }
            self.keyed.push(Slot { key: k, set: MULTI | self.groups.len() as u32, mask: union });
            let last = self.by_set.len() - 1;
            self.groups.extend(self.by_set.iter().enumerate().map(|(g, &(set, mask))| Group {
                mask,
                set,
                last: g == last,
            }));
        }
        self.buf = buf;
    }

    /// The side's range maps, one per family its ipBlocks have, keyed in
    /// `keyed`; shared with an earlier side of the same [`RangeKey`]. Each
    /// range's port set is the side's `any` entries, then those of its rules
    /// whose blocks contain the range, in rule order. None when
    /// `drop_ranges`: its ipBlock rules then allow nothing.
    fn build_ranges(&mut self, c: &Compiler<'_>, dir: Direction, list: &[u32]) {
        if self.drop_ranges {
            return;
        }
        let Some(key) = self.range_key(c, dir, list) else { return };
        let maps = match self.shared.get(&key) {
            Some(maps) => *maps,
            None => {
                self.cidr.gather(c, (dir, &key.1), true, &mut self.es);
                let blocks = &c.ctx.blocks[dir as usize];
                let mut maps = [None; 2];
                for f in [Family::V4, Family::V6] {
                    let (sets, set_buf, cidr) = (&mut self.sets, &mut self.set_buf, &self.cidr);
                    let built: Result<(), std::convert::Infallible> =
                        ranges::sweep(blocks, &cidr.pairs, f, &mut self.sweep, |active| {
                            set_buf.clone_from(&cidr.any);
                            for &r in active {
                                set_buf.extend_from_slice(cidr.of(r));
                            }
                            Ok(sets.add(set_buf))
                        });
                    let Ok(()) = built;
                    if self.sweep.values.iter().any(|&v| v != 0) {
                        maps[f as usize] = Some(self.ranges.push(f, &self.sweep.starts, &self.sweep.values));
                    }
                }
                self.shared.insert(key, maps);
                maps
            }
        };
        for f in [Family::V4, Family::V6] {
            if let Some(m) = maps[f as usize] {
                let (first, len) = self.ranges.span(m);
                let mask = u64::from(first) | u64::from(len) << 32;
                self.keyed.push(Slot { key: CIDR_KEY | f as u32, set: m, mask });
            }
        }
    }

    /// Places `keyed` as the side's peer table: a power of two at most half
    /// full, so a probe that misses meets a free slot soon.
    /// `reuse`: the start of the side's present table in `slots` (its size
    /// `2^side.table_bits` before the call), rewritten in place when the keys
    /// still fill at most half of it; otherwise a table is appended.
    fn place(&mut self, side: &mut SideEntry, reuse: Option<(usize, usize)>) {
        if !self.keyed.is_empty() {
            let (base, n) = match reuse {
                Some((base, n)) if self.keyed.len() * 2 <= n => {
                    self.slots[base..base + n].fill(FREE);
                    (base, n)
                }
                _ => {
                    let n = (self.keyed.len() * 2).next_power_of_two();
                    let base = self.slots.len();
                    self.slots.resize(base + n, FREE);
                    (base, n)
                }
            };
            for slot in &self.keyed {
                let mut h = slot_hash(slot.key) as usize & (n - 1);
                while self.slots[base + h].key != EMPTY {
                    h = (h + 1) & (n - 1);
                }
                self.slots[base + h] = *slot;
            }
            debug_assert!(base < PATCHED as usize, "slot indexes fit in 31 bits");
            side.table = base as u32 | self.table_flag;
            side.table_bits = n.trailing_zeros() as u8;
            side.filter = self.keyed.iter().fold(0, |f, slot| f | 1 << (slot_hash(slot.key) >> 28));
            self.peer_keys += self.keyed.len();
        }
    }
}

/// A pod's entry: its identity's (block, bit) and sides, and its named
/// ports that some policy names, appended to `named`.
fn pod_entry(
    p: &PodInfo,
    (block, bit): (u32, u32),
    sides: [u32; 2],
    ctx: &PolicyContext,
    named: &mut Vec<NamedEntry>,
) -> PodEntry {
    let header = named.len();
    named.push(NamedEntry { name: 0, proto: 0, port: 0 });
    for np in &p.named_ports {
        if let Some(&n) = ctx.names.get(&np.name) {
            named.push(NamedEntry { name: n, proto: np.protocol.number(), port: np.port });
        }
    }
    let list = &mut named[header + 1..];
    list.sort_unstable_by_key(NamedEntry::key);
    let mut len = 0;
    for i in 0..list.len() {
        if i == 0 || list[i] != list[len - 1] {
            list[len] = list[i];
            len += 1;
        }
    }
    named.truncate(header + 1 + len);
    let first = if len == 0 {
        named.truncate(header);
        0
    } else {
        named[header].name = len as u32;
        header as u32
    };
    debug_assert!(block < 1 << 26, "identity blocks fit in 26 bits");
    PodEntry { sides, block_bit: block << 6 | bit, named: first }
}

/// `src` into `dst`'s buffer, with room to grow: what a patch appends to
/// then seldom moves.
fn copy_with_room<T: Clone>(dst: &mut Vec<T>, src: &[T]) {
    dst.clear();
    dst.reserve(src.len() + src.len() / 16 + 64);
    dst.extend_from_slice(src);
}

/// Is `ip` inside some ipBlock of [ingress, egress] rules? (`in_blocks`: a
/// table's maps of where they lie.)
fn in_blocks_of(in_blocks: &RangeMaps, ip: IpAddr) -> [bool; 2] {
    let (f, v) = split(ip);
    Direction::BOTH.map(|d| in_blocks.value_of(2 * d as u32 + f as u32, v) != 0)
}

/// The policies (table indexes) and directions of `lists` (sides) that have
/// ipBlock rules there, without repeats.
fn ipblock_policies<'l>(
    cluster: &Cluster,
    policy_ids: &[u32],
    lists: impl Iterator<Item = &'l (Direction, Vec<u32>)>,
) -> Vec<(u32, Direction)> {
    let mut out: Vec<(u32, Direction)> = lists
        .flat_map(|(dir, list)| list.iter().map(move |&pi| (pi, *dir)))
        .filter(|&(pi, dir)| {
            cluster.policies[pi as usize]
                .rules(dir)
                .iter()
                .any(|r| r.peers.iter().any(|p| matches!(p, Peer::Block(_))))
        })
        .map(|(pi, dir)| (policy_ids[pi as usize], dir))
        .collect();
    out.sort_unstable_by_key(|&(p, d)| (p, d as u8));
    out.dedup();
    out
}

/// A full compile: the table, and what a later patch reuses.
struct Full {
    table: DecisionTable,
    ids: Identities,
    ctx: PolicyContext,
    peers: PeerCache,
    /// [ingress, egress] side of each identity (0: not isolated).
    identity_sides: Vec<[u32; 2]>,
}

fn compile_full(cluster: &Cluster) -> Full {
    let ids = Identities::new(cluster);
    let (ctx, in_blocks) = PolicyContext::new(cluster);
    let policy_ids: Vec<u32> = (0..cluster.policies.len() as u32).collect();
    let mut c = Compiler::new(cluster, &ids, &ctx, &policy_ids);

    // 1. Which policies isolate each identity, per direction; identical lists share a side.
    let all: Vec<u32> = (0..ids.labels.len() as u32).collect();
    let plan = c.plan_sides(0..cluster.policies.len(), &all, 1);
    let mut sides: Vec<SideEntry> = vec![SideEntry::default()];
    let mut side_info: Vec<SideInfo> = vec![SideInfo::default()];
    let mut side_policies = Vec::new();

    // 2. Each side's rules, expanded into port sets keyed by peer; first,
    // which namespaces' range maps fit their budget.
    let mut b = SideBuilder::new(SetBuilder::default(), vec![FREE], Vec::new());
    let ns_of = |list: &[u32]| cluster.policies[list[0] as usize].namespace.as_str();
    let mut by_namespace: std::collections::BTreeMap<&str, Vec<&(Direction, Vec<u32>)>> = Default::default();
    for l in &plan.lists {
        by_namespace.entry(ns_of(&l.1)).or_default().push(l);
    }
    let mut ipblock_dropped = Vec::new();
    for (ns, lists) in &by_namespace {
        if !b.ranges_fit(&c, lists.iter().copied()) {
            ipblock_dropped
                .push((ns.to_string(), ipblock_policies(cluster, &policy_ids, lists.iter().copied())));
        }
    }
    for (dir, list) in &plan.lists {
        b.drop_ranges = ipblock_dropped.iter().any(|(ns, _)| ns == ns_of(list));
        sides.push(b.build(&mut c, *dir, list));
        let a = side_policies.len() as u32;
        side_policies.extend_from_slice(list);
        side_info.push(SideInfo { policies: (a, side_policies.len() as u32), dir: Some(*dir) });
    }
    let peers: PeerCache = c.peer_cache.drain().map(|((n, p), r)| ((n.clone(), p.clone()), r)).collect();
    drop(c);

    // 3. Pods and their addresses.
    let mut pods = Vec::with_capacity(cluster.pods.len());
    let mut named = vec![NamedEntry { name: 0, proto: 0, port: 0 }];
    let mut addr_v4 = HashMap::new();
    let mut addr_v6 = HashMap::new();
    let mut pod_keys = Vec::with_capacity(cluster.pods.len());
    for (pi, p) in cluster.pods.iter().enumerate() {
        let identity = ids.pod_identity[pi];
        let sides = plan.identity_sides.get(&identity).copied().unwrap_or_default();
        pods.push(pod_entry(p, ids.identity_block[identity as usize], sides, &ctx, &mut named));
        pod_keys.push((p.namespace.clone(), p.name.clone()));
        for ip in &p.ips {
            let e = AddrEntry::new(pi as u32, in_blocks_of(&in_blocks, *ip));
            match split(*ip) {
                (Family::V4, v) => {
                    addr_v4.entry(v as u32).or_insert(e);
                }
                (Family::V6, v) => {
                    addr_v6.entry(v).or_insert(e);
                }
            }
        }
    }

    let policies = std::sync::Arc::new(
        cluster.policies.iter().map(|p| (p.namespace.as_str().into(), p.name.as_str().into())).collect(),
    );
    let pod_keys = std::sync::Arc::new(pod_keys);
    let (peer_keys, peer_groups) = (b.peer_keys, b.peer_groups);
    let port_sets = b.sets.interned.len();
    let indexed_port_sets = b.sets.indexes.len();
    let (mut entries, mut entry_rules, port_indexes) = (b.sets.entries, b.sets.rules, b.sets.indexes);
    let (slots, mut groups, mut ranges) = (b.slots, b.groups, b.ranges);
    ranges.shrink_to_fit();
    entries.shrink_to_fit();
    entry_rules.shrink_to_fit();
    groups.shrink_to_fit();
    let slots: std::sync::Arc<[Slot]> = slots.into();
    let mut t = DecisionTable {
        addr_v4,
        addr_v6,
        pods,
        pod_keys,
        added_pod_keys: Vec::new(),
        named,
        in_blocks,
        ranges,
        sides,
        side_denials: Vec::new(),
        side_info,
        side_policies,
        slots,
        patch_slots: Vec::new(),
        groups,
        entries,
        entry_rules,
        port_indexes,
        ipblock_dropped,
        policies,
        stats: TableStats::default(),
    };
    t.refresh_denials(0, &[], &[]);
    t.stats = TableStats {
        namespaces: cluster.namespaces.len(),
        pods: cluster.pods.len(),
        pod_ips: t.addr_v4.len() + t.addr_v6.len(),
        identities: ids.labels.len(),
        policies: cluster.policies.len(),
        invalid_policies: cluster.policies.iter().filter(|p| !p.valid).count(),
        sides: t.side_info.len(),
        identity_blocks: ids.blocks as usize,
        peer_keys,
        peer_groups,
        port_sets,
        // Each set and the empty set 0 end with a marker; indexed sets start with a header.
        port_entries: t.entries.len() - port_sets - 1 - indexed_port_sets,
        indexed_port_sets,
        ip_blocks: ctx.ip_blocks,
        cidr_ranges: t.ranges.ranges(),
        dropped_ipblock_namespaces: t.ipblock_dropped.len(),
        memory_bytes: t.memory_estimate(),
        replaced_sides: 0,
    };
    let mut identity_sides = vec![[0, 0]; ids.labels.len()];
    for (id, sides) in plan.identity_sides {
        identity_sides[id as usize] = sides;
    }
    Full { table: t, ids, ctx, peers, identity_sides }
}

/// Interns port sets: each distinct sequence of (entry, rule) is stored once,
/// followed by an end marker.
struct SetBuilder {
    entries: Vec<PortEntry>,
    rules: Vec<RuleRef>,
    interned: HashMap<Vec<(PortEntry, RuleRef)>, SetId>,
    /// Indexes of the long sets, in the order of the sets.
    indexes: Vec<std::sync::Arc<SetIndex>>,
    scratch: Vec<(PortEntry, RuleRef)>,
    scratch_entries: Vec<PortEntry>,
    /// Entries of a long set seen so far (a short one is searched instead).
    seen: hashbrown::HashSet<(PortEntry, RuleRef)>,
}

/// Rule stored next to an end marker (never reported).
const NO_RULE: RuleRef = RuleRef { policy: u32::MAX, rule: u32::MAX };

impl Default for SetBuilder {
    /// Set 0, the empty set, is a lone end marker.
    fn default() -> Self {
        SetBuilder::resume(vec![END], vec![NO_RULE], Vec::new())
    }
}

impl SetBuilder {
    /// Appends to a table's existing sets (a patch; its sets are not interned
    /// against the old ones, only against each other).
    fn resume(entries: Vec<PortEntry>, rules: Vec<RuleRef>, indexes: Vec<std::sync::Arc<SetIndex>>) -> Self {
        SetBuilder {
            entries,
            rules,
            interned: HashMap::new(),
            indexes,
            scratch: Vec::new(),
            scratch_entries: Vec::new(),
            seen: Default::default(),
        }
    }

    /// Adds a set (duplicates inside it dropped, first occurrence kept) and returns it.
    fn add(&mut self, set: &[(PortEntry, RuleRef)]) -> SetId {
        if set.is_empty() {
            return 0;
        }
        self.scratch.clear();
        if set.len() <= 16 {
            for x in set {
                if !self.scratch.contains(x) {
                    self.scratch.push(*x);
                }
            }
        } else {
            self.seen.clear();
            self.scratch.extend(set.iter().filter(|x| self.seen.insert(**x)));
        }
        if let Some(r) = self.interned.get(self.scratch.as_slice()) {
            return *r;
        }
        let id = self.entries.len() as SetId;
        if self.scratch.len() > port_index::LONG {
            // A header naming the set's index, which a lookup reads instead of scanning.
            self.scratch_entries.clear();
            self.scratch_entries.extend(self.scratch.iter().map(|(e, _)| *e));
            let n = self.indexes.len() as u32;
            self.indexes.push(std::sync::Arc::new(SetIndex::new(&self.scratch_entries)));
            self.entries.push(PortEntry { lo: 0, hi: 0, name: n, proto: INDEXED_PROTO });
            self.rules.push(NO_RULE);
        }
        for (e, r) in &self.scratch {
            debug_assert!(e.proto != END_PROTO);
            self.entries.push(*e);
            self.rules.push(*r);
        }
        self.entries.push(END);
        self.rules.push(NO_RULE);
        self.interned.insert(self.scratch.clone(), id);
        id
    }
}

impl DecisionTable {
    fn memory_estimate(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: one control byte per bucket plus the slot; buckets ≈ capacity * 8/7.
        let hm = |cap: usize, slot: usize| cap * 8 / 7 * (slot + 1);
        hm(self.addr_v4.capacity(), size_of::<(u32, AddrEntry)>())
            + hm(self.addr_v6.capacity(), size_of::<(u128, AddrEntry)>())
            + (self.slots.len() + self.patch_slots.capacity()) * size_of::<Slot>()
            + self.groups.capacity() * size_of::<Group>()
            + self.pods.capacity() * size_of::<PodEntry>()
            + self
                .pod_keys
                .iter()
                .chain(&self.added_pod_keys)
                .map(|(a, b)| a.capacity() + b.capacity() + 48)
                .sum::<usize>()
            + self.named.capacity() * size_of::<NamedEntry>()
            + self.in_blocks.bytes()
            + self.ranges.bytes()
            + self.sides.capacity() * size_of::<SideEntry>()
            + self.side_denials.capacity() * size_of::<SideDenials>()
            + self.side_info.capacity() * size_of::<SideInfo>()
            + self.side_policies.capacity() * 4
            + self.entries.capacity() * size_of::<PortEntry>()
            + self.entry_rules.capacity() * size_of::<RuleRef>()
            + self.port_indexes.iter().map(|i| i.bytes() + 64).sum::<usize>()
            + self.policies.iter().map(|(a, b)| a.len() + b.len() + 64).sum::<usize>()
    }
}

#[cfg(test)]
mod home_tests {
    use super::*;

    fn side(table: u32, table_bits: u8) -> SideEntry {
        SideEntry { table, table_bits, ..SideEntry::default() }
    }

    #[test]
    fn a_peer_tables_place_round_trips_or_reads_as_none() {
        for (table, bits) in [(1, 1), (HOME_BASE, 31), (PATCHED | 12_345, 5), (PATCHED | HOME_BASE, 2)] {
            let home = home_of(&side(table, bits));
            assert_ne!(home, 0, "{table:#x} / {bits}");
            assert_eq!(home >> 27, u32::from(bits));
            assert_eq!(home >> 26 & 1 != 0, table & PATCHED != 0);
            assert_eq!(home & HOME_BASE, table & !PATCHED);
        }
        // No keys (the shared free slot), or a start the entry cannot hold:
        // 0, and the lookup reads the side entry instead.
        assert_eq!(home_of(&side(0, 0)), 0);
        assert_eq!(home_of(&side(HOME_BASE + 1, 3)), 0);
        assert_eq!(home_of(&side(PATCHED | (HOME_BASE + 1), 3)), 0);
    }
}
