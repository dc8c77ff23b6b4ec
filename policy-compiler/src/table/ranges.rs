//! Address ranges: where an address falls among a set of `ipBlock`s.
//!
//! ```text
//!  a side's ipBlock rules ──sweep──▶ ranges of one family, each with the
//!  (IpBlock, rule) pairs        set of rules whose blocks contain it
//!                               ──value(rules)──▶ a port set per range
//!                               ──▶ RangeMaps: starts, values, and for a map
//!                                   of more than 8 ranges a bucket index
//!  lookup: (map, address) ──scan, or bucket──▶ a few starts ──▶ value (0: no range)
//! ```
//!
//! Each side's maps are built from its own rules only (sides of one
//! direction with the same rules share them), so their size follows its own
//! ipBlocks: another namespace's policy, however many `except` entries it
//! has, adds nothing to them. A sweep visits each range
//! once and tells sets of active rules apart by a 128-bit Zobrist hash, so
//! building a map costs its boundaries (sorted) plus the port sets it
//! produces, never ranges times rules.

use super::HashMap;
use crate::cidr::{Family, IpBlock};

/// Many address maps, back to back in flat arrays (a table copies them
/// for a patch in a few `memcpy`s). A map partitions one family's address
/// space into ranges, each with a value; 0 means "in no range".
#[derive(Clone, Debug, Default)]
pub(super) struct RangeMaps {
    maps: Vec<MapHeader>,
    /// Each map's range starts, ascending, the first one 0.
    starts: Vec<u128>,
    /// The value of each range, parallel to `starts`.
    values: Vec<u32>,
    /// Each map's bucket index (maps of more than [`SCANNED`] ranges):
    /// `lead[b]` (relative to the map's first start) is the first start at
    /// or above bucket `b`'s first address (the addresses whose top `k` bits
    /// are `b`): `2^k` buckets, then one more entry, `len`.
    lead: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct MapHeader {
    /// First index in `starts` and `values`.
    starts: u32,
    /// First index in `lead`, or [`NO_LEAD`] for a map that is scanned.
    lead: u32,
    /// An address shifted right by this is its bucket.
    shift: u8,
}

impl RangeMaps {
    /// The value of the range of map `map` holding `addr` (0 when the map
    /// does not exist). `addr` must be of the map's family.
    #[inline]
    pub(super) fn value_of(&self, map: u32, addr: u128) -> u32 {
        let Some(h) = self.maps.get(map as usize) else {
            return 0;
        };
        if h.lead == NO_LEAD {
            return self.value_in(map, self.span(map), addr);
        }
        let lead = self.lead.get(h.lead as usize..).unwrap_or_default();
        let b = (addr >> h.shift) as usize;
        let (Some(&lo), Some(&hi)) = (lead.get(b), lead.get(b + 1)) else {
            return 0;
        };
        // The last start <= addr is in this bucket or, when none of the
        // bucket's is, the last one before it (every bucket but the first has
        // a start below it, and the first start is 0).
        let first = h.starts as usize;
        let bucket = self.starts.get(first + lo as usize..first + hi as usize).unwrap_or_default();
        let i = lo as usize + bucket.partition_point(|s| *s <= addr);
        match i {
            0 => 0,
            i => self.values.get(first + i - 1).copied().unwrap_or(0),
        }
    }

    /// [`Self::value_of`] for a map whose starts are `starts[first..first +
    /// len]` ([`Self::span`], kept by the caller next to the map's index):
    /// a map of at most [`SCANNED`] ranges is scanned in place, without
    /// reading its header or bucket index (two cache lines fewer).
    #[inline]
    pub(super) fn value_in(&self, map: u32, (first, len): (u32, u32), addr: u128) -> u32 {
        if len as usize > SCANNED {
            return self.value_of(map, addr);
        }
        // A map of a few ranges: scanned.
        let (first, len) = (first as usize, len as usize);
        let starts = self.starts.get(first..first + len).unwrap_or_default();
        match starts.iter().take_while(|s| **s <= addr).count() {
            0 => 0,
            i => self.values.get(first + i - 1).copied().unwrap_or(0),
        }
    }

    /// Where map `map`'s starts lie: (first index, number).
    pub(super) fn span(&self, map: u32) -> (u32, u32) {
        let m = map as usize;
        let first = self.maps[m].starts;
        let end = self.maps.get(m + 1).map_or(self.starts.len() as u32, |h| h.starts);
        (first, end - first)
    }

    /// Appends a map of `family` and returns its index. `starts` ascend
    /// from 0; `values` is parallel to it.
    pub(super) fn push(&mut self, family: Family, starts: &[u128], values: &[u32]) -> u32 {
        debug_assert!(starts.first() == Some(&0) && starts.len() == values.len());
        debug_assert!(starts.windows(2).all(|w| w[0] < w[1]));
        // 2^k buckets for fewer than 2^k starts (16 <= 2^k <= 65,536): one or
        // two starts a bucket when boundaries are spread out; a crowded
        // bucket is binary-searched.
        let k = (usize::BITS - starts.len().leading_zeros()).clamp(4, 16);
        let shift = u32::from(family.bits()) - k;
        let mut header =
            MapHeader { starts: self.starts.len() as u32, lead: self.lead.len() as u32, shift: shift as u8 };
        self.starts.extend_from_slice(starts);
        self.values.extend_from_slice(values);
        if starts.len() <= SCANNED {
            header.lead = NO_LEAD;
            self.maps.push(header);
            return (self.maps.len() - 1) as u32;
        }
        let mut i = 0;
        for b in 0..1u128 << k {
            let first = b << shift;
            while i < starts.len() && starts[i] < first {
                i += 1;
            }
            self.lead.push(i as u32);
        }
        self.lead.push(starts.len() as u32);
        self.maps.push(header);
        (self.maps.len() - 1) as u32
    }

    /// Ranges over all maps.
    pub(super) fn ranges(&self) -> usize {
        self.starts.len()
    }

    /// Bytes of the maps, by length (not capacity).
    pub(super) fn data_bytes(&self) -> usize {
        self.maps.len() * std::mem::size_of::<MapHeader>()
            + self.starts.len() * 16
            + (self.values.len() + self.lead.len()) * 4
    }

    /// Heap bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.maps.capacity() * std::mem::size_of::<MapHeader>()
            + self.starts.capacity() * 16
            + (self.values.capacity() + self.lead.capacity()) * 4
    }

    /// Frees the arrays' spare capacity.
    pub(super) fn shrink_to_fit(&mut self) {
        self.maps.shrink_to_fit();
        self.starts.shrink_to_fit();
        self.values.shrink_to_fit();
        self.lead.shrink_to_fit();
    }

    /// `src`'s arrays into `self`'s buffers, with room to grow.
    pub(super) fn copy_with_room(&mut self, src: &RangeMaps) {
        use super::copy_with_room as room;
        room(&mut self.maps, &src.maps);
        room(&mut self.starts, &src.starts);
        room(&mut self.values, &src.values);
        room(&mut self.lead, &src.lead);
    }
}

/// Maps of at most this many ranges are scanned rather than bucketed.
pub(super) const SCANNED: usize = 8;

/// `MapHeader::lead` of a map without a bucket index.
const NO_LEAD: u32 = u32::MAX;

/// Scratch of [`sweep`], reused from side to side.
#[derive(Default)]
pub(super) struct Sweep {
    events: Vec<(u128, u32, Ev)>,
    /// Per block (local index): inside its cidr? how many excepts deep?
    state: Vec<(bool, u32, bool)>,
    /// Per rule: how many of its blocks contain the current range.
    count: Vec<u32>,
    active: std::collections::BTreeSet<u32>,
    seen: HashMap<u128, u32>,
    rules: Vec<u32>,
    keys: Keys,
    pub(super) starts: Vec<u128>,
    pub(super) values: Vec<u32>,
}

/// Secret keys for the rules' Zobrist values, drawn for each [`Sweep`] from
/// the standard library's `RandomState`. XOR is linear: with public keys,
/// a policy author could pick rules whose keys cancel out, and so give two
/// different sets of rules one hash (and one address the other's port set).
/// With secret keys, two different sets of one side collide with
/// probability 2^-128: two compiles of the same input differ all but never.
struct Keys(std::collections::hash_map::RandomState);

impl Default for Keys {
    fn default() -> Self {
        Keys(std::collections::hash_map::RandomState::new())
    }
}

impl Keys {
    /// Rule `rule`'s 128-bit key.
    fn of(&self, rule: u32) -> u128 {
        use std::hash::BuildHasher;
        u128::from(self.0.hash_one((0u8, rule))) << 64 | u128::from(self.0.hash_one((1u8, rule)))
    }
}

/// A boundary: at an address, a block enters or leaves its cidr or one of
/// its excepts.
#[derive(Clone, Copy, Debug)]
enum Ev {
    CidrIn,
    CidrOut,
    ExceptIn,
    ExceptOut,
}

/// Partitions `family`'s address space by the blocks of `pairs` ((block,
/// rule): rule `rule` names block `blocks[block]`; blocks of the other
/// family are skipped) into `s.starts` and `s.values`: each range's value
/// is `value(active)`, where `active` lists, ascending, the rules with a
/// block containing the range (after `except`), or 0 where there is none.
/// `value` is called once per distinct list; adjacent ranges of equal value
/// are merged. An error from `value` stops the sweep.
///
/// Two lists are told apart by the XOR of their rules' secret 128-bit keys
/// ([`Keys`]).
pub(super) fn sweep<E>(
    blocks: &[IpBlock],
    pairs: &[(u32, u32)],
    family: Family,
    s: &mut Sweep,
    mut value: impl FnMut(&[u32]) -> Result<u32, E>,
) -> Result<(), E> {
    s.events.clear();
    s.starts.clear();
    s.values.clear();
    s.starts.push(0);
    s.values.push(0);
    let top = if family == Family::V4 { u128::from(u32::MAX) } else { u128::MAX };
    // `pairs` index, by block.
    let mut by_block: Vec<(u32, u32)> =
        pairs.iter().copied().filter(|&(b, _)| blocks[b as usize].cidr.family == family).collect();
    if by_block.is_empty() {
        return Ok(());
    }
    by_block.sort_unstable();
    // Local block i: its rules are by_block[first[i]..first[i + 1]].
    let mut first: Vec<u32> = Vec::new();
    let mut rules_len = 0u32;
    for (i, &(b, r)) in by_block.iter().enumerate() {
        rules_len = rules_len.max(r + 1);
        if i == 0 || by_block[i - 1].0 != b {
            let local = first.len() as u32;
            first.push(i as u32);
            let blk = &blocks[b as usize];
            s.events.push((blk.cidr.first(), local, Ev::CidrIn));
            if blk.cidr.last() < top {
                s.events.push((blk.cidr.last() + 1, local, Ev::CidrOut));
            }
            for e in &blk.except {
                s.events.push((e.first(), local, Ev::ExceptIn));
                if e.last() < top {
                    s.events.push((e.last() + 1, local, Ev::ExceptOut));
                }
            }
        }
    }
    first.push(by_block.len() as u32);
    s.events.sort_unstable_by_key(|e| (e.0, e.1));
    s.state.clear();
    s.state.resize(first.len() - 1, (false, 0, false));
    s.count.clear();
    s.count.resize(rules_len as usize, 0);
    s.active.clear();
    s.seen.clear();
    let mut hash = 0u128;
    let mut i = 0;
    while i < s.events.len() {
        let at = s.events[i].0;
        while i < s.events.len() && s.events[i].0 == at {
            let (_, b, ev) = s.events[i];
            i += 1;
            let st = &mut s.state[b as usize];
            match ev {
                Ev::CidrIn => st.0 = true,
                Ev::CidrOut => st.0 = false,
                Ev::ExceptIn => st.1 += 1,
                Ev::ExceptOut => st.1 -= 1,
            }
            let now = st.0 && st.1 == 0;
            if now == st.2 {
                continue;
            }
            st.2 = now;
            for &(_, r) in &by_block[first[b as usize] as usize..first[b as usize + 1] as usize] {
                let c = &mut s.count[r as usize];
                let was = *c > 0;
                if now {
                    *c += 1;
                } else {
                    *c -= 1;
                }
                if was != (*c > 0) {
                    hash ^= s.keys.of(r);
                    if now {
                        s.active.insert(r);
                    } else {
                        s.active.remove(&r);
                    }
                }
            }
        }
        let v = if s.active.is_empty() {
            0
        } else if let Some(&v) = s.seen.get(&hash) {
            v
        } else {
            s.rules.clear();
            s.rules.extend(s.active.iter().copied());
            let v = value(&s.rules)?;
            s.seen.insert(hash, v);
            v
        };
        if *s.starts.last().expect("starts at 0") == at {
            *s.values.last_mut().expect("parallel") = v;
            // The range before may now have the same value: merge.
            let n = s.values.len();
            if n >= 2 && s.values[n - 2] == v {
                s.starts.pop();
                s.values.pop();
            }
        } else if *s.values.last().expect("parallel") != v {
            s.starts.push(at);
            s.values.push(v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::Cidr;

    /// Maps built by sweeps agree with a direct reading of the blocks, at
    /// each boundary, one below it, and random addresses, for both
    /// families, with blocks at the bottom and the top of the space, and
    /// several maps in one `RangeMaps`.
    #[test]
    fn maps_agree_with_a_direct_reading_of_the_blocks() {
        let mut next = super::super::test_rng(0x2545_f491_4f6c_dd1du64);
        let mut maps = RangeMaps::default();
        let mut s = Sweep::default();
        let mut checked = 0;
        for family in [Family::V4, Family::V6] {
            for n in [1usize, 3, 40, 700] {
                let bits = family.bits();
                let top = if bits == 32 { u32::MAX as u128 } else { u128::MAX };
                let mut blocks = Vec::new();
                for i in 0..n {
                    let len = if i % 7 == 0 { next() as u8 % 9 } else { bits - 8 + next() as u8 % 8 };
                    let addr =
                        if i % 5 == 0 { top } else { (u128::from(next()) << 64 | u128::from(next())) & top };
                    let cidr = Cidr::new(family, addr, len);
                    let except = if i % 3 == 0 && len + 2 <= bits {
                        vec![Cidr::new(family, cidr.first() + (1u128 << (bits - len - 2)), len + 2)]
                    } else {
                        vec![]
                    };
                    blocks.push(IpBlock { cidr, except });
                }
                // Rules name one to three blocks each; some blocks are in several rules.
                let rules = n.div_ceil(2) as u32;
                let mut pairs: Vec<(u32, u32)> =
                    (0..n as u32).map(|b| (b, (next() % u64::from(rules)) as u32)).collect();
                pairs.extend(
                    (0..n as u32 / 4).map(|b| (b * 3 % n as u32, (next() % u64::from(rules)) as u32)),
                );
                // Values: the active rules, interned here.
                let mut lists: Vec<Vec<u32>> = vec![vec![]];
                sweep(&blocks, &pairs, family, &mut s, |active| -> Result<u32, ()> {
                    lists.push(active.to_vec());
                    Ok(lists.len() as u32 - 1)
                })
                .unwrap();
                let starts = s.starts.clone();
                assert!(starts.len() > 1, "the blocks make ranges");
                let m = maps.push(family, &starts, &s.values);
                let direct = |a: u128| -> Vec<u32> {
                    let mut r: Vec<u32> = pairs
                        .iter()
                        .filter(|&&(b, _)| blocks[b as usize].contains(family, a))
                        .map(|&(_, r)| r)
                        .collect();
                    r.sort_unstable();
                    r.dedup();
                    r
                };
                let mut probes = vec![0, top, top - 1];
                for &st in &starts {
                    probes.extend([st, st.wrapping_sub(1) & top, st.saturating_add(1).min(top)]);
                }
                probes.extend((0..2000).map(|_| (u128::from(next()) << 64 | u128::from(next())) & top));
                for a in probes {
                    assert_eq!(maps.value_in(m, maps.span(m), a), maps.value_of(m, a));
                    let got = &lists[maps.value_of(m, a) as usize];
                    assert_eq!(got, &direct(a), "{family:?}, {n} blocks, address {a:#x}");
                    checked += 1;
                }
                // Each distinct list was built once.
                let mut distinct = lists.clone();
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), lists.len(), "{family:?}, {n} blocks");
            }
        }
        assert!(checked > 16_000);
    }

    /// n blocks `0.0.0.0/0 except <distinct /32>` in one rule: the rule is
    /// active everywhere, so the map is one range and one value (the
    /// expansion that used to cost n² memory).
    #[test]
    fn one_rule_of_many_overlapping_blocks_is_one_range() {
        let n = 5000u32;
        let blocks: Vec<IpBlock> = (0..n)
            .map(|i| IpBlock {
                cidr: Cidr::new(Family::V4, 0, 0),
                except: vec![Cidr::new(Family::V4, 0x0b00_0000 + u128::from(i), 32)],
            })
            .collect();
        let pairs: Vec<(u32, u32)> = (0..n).map(|b| (b, 0)).collect();
        let mut s = Sweep::default();
        let mut calls = 0;
        sweep(&blocks, &pairs, Family::V4, &mut s, |active| -> Result<u32, ()> {
            assert_eq!(active, [0]);
            calls += 1;
            Ok(7)
        })
        .unwrap();
        assert_eq!((s.starts.as_slice(), s.values.as_slice(), calls), (&[0u128][..], &[7u32][..], 1));
    }
}
