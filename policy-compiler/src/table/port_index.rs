//! Long port sets, indexed so that a lookup does not scan them.
//!
//! ```text
//!  a port set of more than LONG entries ──SetIndex::new──▶ per TCP/UDP/SCTP: port
//!  (stored after a header entry that      ranges, each with its first matching entry;
//!   names its index)                      the first any-protocol entry; the first
//!                                         named entry per (protocol, name)
//!  lookup: (protocol, port, destination's named ports) ──▶ the first matching
//!          entry: one binary search, plus one hash probe per named port the
//!          destination declares on that (protocol, port) (or per named entry
//!          of the set, whichever is fewer)
//! ```
//!
//! A short set is scanned in order and the first matching entry names the
//! rule; an indexed set gives the same entry (the smallest matching offset),
//! so an index changes the cost of a lookup, never its answer or its reason.

use std::collections::BTreeSet;

use super::{HashMap, NamedEntry, PortEntry, ANY_PROTO};
use crate::model::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// Sets of more entries than this get an index.
pub(super) const LONG: usize = 32;
/// Protocol value of an indexed set's header entry; its `name` is the index's number.
pub(super) const INDEXED_PROTO: u8 = 254;
const NONE: u32 = u32::MAX;

/// Where the first matching entry of one long port set is, by protocol and port.
#[derive(Clone, Debug, Default)]
pub(super) struct SetIndex {
    /// TCP, UDP, SCTP: range starts (ascending, the first 0) and, per range,
    /// the offset of the first entry matching its ports by number or by
    /// allowing any protocol ([`NONE`]: none does).
    ports: [(Vec<u16>, Vec<u32>); 3],
    /// Offset of the first entry allowing any protocol: all other protocols get only those.
    any: u32,
    /// (protocol, interned name) -> offset of the first named entry.
    named: HashMap<(u8, u32), u32>,
}

fn proto_slot(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(0),
        IPPROTO_UDP => Some(1),
        IPPROTO_SCTP => Some(2),
        _ => None,
    }
}

impl SetIndex {
    /// The index of a set whose entries (after its header) are `entries`.
    pub(super) fn new(entries: &[PortEntry]) -> SetIndex {
        let any = entries.iter().position(|e| e.proto == ANY_PROTO).map_or(NONE, |i| i as u32);
        let mut named = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.name != 0 {
                named.entry((e.proto, e.name)).or_insert(i as u32);
            }
        }
        let mut ports: [(Vec<u16>, Vec<u32>); 3] = Default::default();
        // (port, entry, starts?): an entry's range starts at `lo` and ends before `hi + 1`.
        let mut events: Vec<(u32, u32, bool)> = Vec::new();
        let mut active = BTreeSet::new();
        for (k, p) in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP].into_iter().enumerate() {
            events.clear();
            for (i, e) in entries.iter().enumerate() {
                if e.name == 0 && (e.proto == p || e.proto == ANY_PROTO) {
                    events.push((u32::from(e.lo), i as u32, true));
                    events.push((u32::from(e.hi) + 1, i as u32, false));
                }
            }
            events.sort_unstable();
            active.clear();
            let (starts, firsts) = &mut ports[k];
            starts.push(0);
            firsts.push(NONE);
            let mut j = 0;
            while j < events.len() {
                let at = events[j].0;
                while j < events.len() && events[j].0 == at {
                    let (_, i, start) = events[j];
                    if start {
                        active.insert(i);
                    } else {
                        active.remove(&i);
                    }
                    j += 1;
                }
                if at > u32::from(u16::MAX) {
                    break;
                }
                let first = active.first().copied().unwrap_or(NONE);
                if u32::from(*starts.last().expect("starts at 0")) == at {
                    *firsts.last_mut().expect("parallel") = first;
                } else if *firsts.last().expect("parallel") != first {
                    starts.push(at as u16);
                    firsts.push(first);
                }
            }
        }
        SetIndex { ports, any, named }
    }

    /// Offset of the first entry matching (`proto`, `port`) for a destination
    /// whose named ports are `dst_named` (from their header), if any.
    #[inline]
    pub(super) fn first_match(&self, proto: u8, port: u16, dst_named: &[NamedEntry]) -> Option<u32> {
        let mut best = match proto_slot(proto) {
            Some(k) => {
                let (starts, firsts) = &self.ports[k];
                let i = starts.partition_point(|s| *s <= port);
                firsts.get(i.wrapping_sub(1)).copied().unwrap_or(NONE)
            }
            None => self.any,
        };
        if !self.named.is_empty() {
            if let Some((header, list)) = dst_named.split_first() {
                // The destination's named ports on this protocol and port: a
                // run of its sorted list, sorted by name.
                let list = list.get(..header.name as usize).unwrap_or_default();
                let a = list.partition_point(|n| (n.proto, n.port) < (proto, port));
                let b = a + list[a..].partition_point(|n| (n.proto, n.port) == (proto, port));
                let run = &list[a..b];
                if run.len() <= self.named.len() {
                    for n in run {
                        if let Some(&i) = self.named.get(&(proto, n.name)) {
                            best = best.min(i);
                        }
                    }
                } else {
                    for (&(p, name), &i) in &self.named {
                        if p == proto && i < best && run.binary_search_by_key(&name, |n| n.name).is_ok() {
                            best = i;
                        }
                    }
                }
            }
        }
        (best != NONE).then_some(best)
    }

    /// Heap bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.ports.iter().map(|(s, f)| s.capacity() * 2 + f.capacity() * 4).sum::<usize>()
            + self.named.capacity() * 13 / 7 * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index's first match equals a scan of the entries in order, for
    /// random long sets (numeric ranges of TCP/UDP/SCTP, any-protocol
    /// entries, named entries) and random destinations' named ports.
    #[test]
    fn first_match_equals_a_scan_in_order() {
        let mut next = super::super::test_rng(0x9e37_79b9_7f4a_7c15u64);
        let protos = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP];
        let mut checked = 0;
        let mut matched = 0;
        for round in 0..200 {
            let n = LONG + 1 + (next() % 300) as usize;
            let entries: Vec<PortEntry> = (0..n)
                .map(|_| {
                    let proto = protos[(next() % 3) as usize];
                    match next() % 400 {
                        0 => PortEntry { proto: ANY_PROTO, lo: 0, hi: u16::MAX, name: 0 },
                        1..=100 => PortEntry { proto, lo: 0, hi: 0, name: 1 + (next() % 12) as u32 },
                        101 => PortEntry { proto, lo: 0, hi: u16::MAX, name: 0 },
                        _ => {
                            let lo = (next() % 200) as u16 + if round % 2 == 0 { 0 } else { 65_300 };
                            let hi = lo.saturating_add((next() % 40) as u16);
                            PortEntry { proto, lo, hi, name: 0 }
                        }
                    }
                })
                .collect();
            // Rounds without any-protocol entries too.
            let entries: Vec<PortEntry> = if round % 3 == 0 {
                entries.into_iter().filter(|e| e.proto != ANY_PROTO).collect()
            } else {
                entries
            };
            let index = SetIndex::new(&entries);
            for _ in 0..300 {
                // A destination with a few named ports, some sharing a port.
                let mut list: Vec<NamedEntry> = (0..next() % 30)
                    .map(|_| NamedEntry {
                        name: 1 + (next() % 12) as u32,
                        proto: protos[(next() % 3) as usize],
                        port: (next() % 8) as u16 * 25,
                    })
                    .collect();
                list.sort_unstable_by_key(NamedEntry::key);
                list.dedup();
                let mut named = vec![NamedEntry { name: list.len() as u32, proto: 0, port: 0 }];
                named.extend(&list);
                let proto = match next() % 10 {
                    0 => 1,
                    p => protos[p as usize % 3],
                };
                let port = match next() % 3 {
                    0 => (next() % 8) as u16 * 25,
                    1 => 65_300 + (next() % 236) as u16,
                    _ => (next() % 240) as u16,
                };
                let scan = entries.iter().position(|e| e.matches(proto, port, &named)).map(|i| i as u32);
                assert_eq!(index.first_match(proto, port, &named), scan, "round {round}, {proto}/{port}");
                checked += 1;
                matched += usize::from(scan.is_some());
            }
        }
        assert!(checked == 60_000 && matched > 10_000 && matched < 55_000, "{matched} of {checked} matched");
    }
}
