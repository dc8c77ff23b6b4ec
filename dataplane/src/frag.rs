//! IP fragments: the first fragment decides for the whole datagram.
//!
//! ```text
//!  Fragment::First(id) ──▶ conntrack/policy verdict ──record(id, verdict)──▶ [tracker]
//!  Fragment::Later(id) ──────────────────────────────────lookup(id)─────────┘
//!                                      found: the first fragment's verdict
//!                                      not found: drop, counted `fragment_no_first`
//! ```
//!
//! Only the first fragment carries the transport header (RFC 791 §2.3,
//! RFC 8200 §4.5), so later fragments cannot be matched against port rules.
//! The dataplane does not reassemble (that would mean buffering frames that
//! belong to the NIC's ring); it remembers each first fragment's verdict by
//! datagram identity — (source, destination, identification, protocol),
//! RFC 791 §3.2 — for a fixed time from the first fragment, like a
//! reassembly timer (RFC 791 suggests 15 s; Linux `ipfrag_time` is 30 s).
//!
//! The pipeline stores with each verdict the table generation and the first
//! fragment's flow: a later fragment that arrives under a newer table is
//! judged again by it (`pipeline.rs`), so a revocation reaches the rest of
//! a datagram too.
//!
//! A later fragment that arrives before its first fragment is dropped: the
//! sender's retransmission will usually arrive in order, and forwarding
//! fragments of an unknown datagram would let them bypass port rules.
//! The tracker is a bounded set-associative cache, so a flood of first
//! fragments can only make later fragments of other datagrams drop, never
//! pass. Each record belongs to the port its first fragment came in on, and
//! a full set gives up a record of the port holding most of it, or the
//! newcomer's own when its port holds half the set or as many as any other
//! (`assoc.rs`, `insert_shared`): a pod, or the uplink, sending first
//! fragments at any rate takes free and expired slots, but takes the
//! others' live records only while it holds fewer than half the set and
//! fewer than the port it takes from, so one flooding port cannot push the
//! other ports' datagrams out before their later fragments arrive.

use crate::assoc::{Inserted, SetAssoc};
use crate::parse::{Addr, Flow, FragmentId};

/// The identity of a fragmented datagram (RFC 791 §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatagramKey {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Identification.
    pub id: u32,
    /// Protocol field of the fragmented datagram.
    pub proto: u8,
}

impl DatagramKey {
    /// The datagram a fragment of `flow` belongs to.
    #[inline]
    pub fn of(flow: &Flow, f: FragmentId) -> Self {
        DatagramKey { src: flow.src, dst: flow.dst, id: f.id, proto: f.proto }
    }
}

/// Records first-fragment verdicts `V` for later fragments.
pub struct FragTracker<V> {
    cache: SetAssoc<DatagramKey, (V, u32)>,
    timeout: u64,
    evicted: u64,
}

impl<V: Copy + Default> FragTracker<V> {
    /// Room for at least `capacity` datagrams; each record lives `timeout` ns.
    pub fn new(capacity: usize, timeout: u64) -> Self {
        FragTracker { cache: SetAssoc::new(capacity), timeout, evicted: 0 }
    }

    /// Records the verdict of a datagram's first fragment, which came in on
    /// port `owner`.
    #[inline]
    pub fn first(&mut self, id: &DatagramKey, verdict: V, owner: u32, now: u64) {
        let expires = now.saturating_add(self.timeout);
        if self.cache.insert_shared(*id, (verdict, owner), expires, now, |&(_, o)| o) == Inserted::Evicted {
            self.evicted += 1;
        }
    }

    /// The verdict for a later fragment, if its first fragment was seen
    /// within the timeout.
    #[inline]
    pub fn later(&self, id: &DatagramKey, now: u64) -> Option<V> {
        self.cache.get(id, now).map(|(v, _)| v)
    }

    /// Records replaced before their timeout to make room.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Slots holding a record (including expired ones not yet reused).
    pub fn used(&self) -> usize {
        self.cache.used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> DatagramKey {
        DatagramKey { src: Addr::v4([10, 0, 0, 1]), dst: Addr::v4([10, 0, 0, 2]), id: n, proto: 17 }
    }

    #[test]
    fn first_decides_later_until_timeout() {
        let mut t: FragTracker<bool> = FragTracker::new(64, 30);
        t.first(&id(1), true, 0, 0);
        t.first(&id(2), false, 0, 0);
        assert_eq!(t.later(&id(1), 10), Some(true));
        assert_eq!(t.later(&id(2), 10), Some(false));
        // Unknown datagram, or same id with another protocol: no first seen.
        assert_eq!(t.later(&id(3), 10), None);
        assert_eq!(t.later(&DatagramKey { proto: 6, ..id(1) }, 10), None);
        // The timer runs from the first fragment.
        assert_eq!(t.later(&id(1), 30), None);
    }

    #[test]
    fn flood_of_firsts_is_bounded() {
        let mut t: FragTracker<bool> = FragTracker::new(16, 1000);
        for n in 0..10_000 {
            t.first(&id(n), true, 0, 0);
        }
        assert!(t.used() <= 16);
        assert!(t.evicted() >= 10_000 - 16);
        // The newest records are there.
        assert_eq!(t.later(&id(9_999), 1), Some(true));
    }

    #[test]
    fn a_flooding_port_keeps_to_its_share() {
        // Port 2's datagram was recorded first; port 1 then floods first
        // fragments, far more than the tracker holds, before port 2's later
        // fragments come.
        let mut t: FragTracker<bool> = FragTracker::new(64, 1000);
        let quiet = DatagramKey { src: Addr::v4([10, 0, 0, 9]), ..id(7) };
        t.first(&quiet, true, 2, 0);
        for n in 0..10_000 {
            t.first(&id(n), false, 1, 1 + u64::from(n) / 100);
        }
        assert!(t.evicted() >= 10_000 - 64);
        assert_eq!(t.later(&quiet, 200), Some(true));
        // And one recorded in the middle of the flood.
        let late = DatagramKey { src: Addr::v4([10, 0, 0, 9]), ..id(8) };
        t.first(&late, true, 2, 300);
        for n in 10_000..20_000 {
            t.first(&id(n), false, 1, 300);
        }
        assert_eq!(t.later(&late, 400), Some(true));
        assert_eq!(t.later(&quiet, 400), Some(true));
    }
}
