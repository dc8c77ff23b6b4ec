//! Lock-free counters, one set per worker and per port.
//!
//! Each [`WorkerCounters`] has exactly **one writer**, its worker thread (the
//! pipeline and that worker's I/O code). An increment is therefore a relaxed
//! load and a relaxed store of an `AtomicU64` — two plain `mov`s on x86, no
//! locked instruction — and readers (the control plane, any thread) see
//! every value whole, at most a few packets old. Two writers on one set
//! would lose increments (never corrupt memory): give each worker its own.
//! The set is aligned to a cache line so that workers do not share lines.
//!
//! Conntrack's own event counts and table occupancy are published once per
//! batch by [`crate::pipeline::Pipeline::begin_batch`] (gauges).
//!
//! [`WorkerCounters::snapshot`] gives a plain serde struct; the control plane
//! sums the workers with [`CountersSnapshot::add`] and serves JSON like this
//! (one worker, two ports, abbreviated lists marked `…`):
//!
//! ```json
//! {
//!   "frames_in": 1042, "bytes_in": 99310, "forwarded": 1000, "flooded": 12,
//!   "dropped": 30, "batches": 57,
//!   "drops": { "policy": 21, "revoked": 2, "fail_closed": 0, "non_ip": 1,
//!              "fragment_no_first": 1, "conntrack_full": 0, "tcp_no_connection": 0,
//!              "same_port": 3, "bad_port": 0, "parse": 2 },
//!   "parse_errors": { "ethernet_truncated": 0, "ipv4_truncated": 2, … },
//!   "conntrack": { "entries": 310, "capacity": 65536, "created": 352, "picked_up": 3,
//!                  "related": 1, "revoked": 2, "expired": 40, "evicted": 0, "full": 0,
//!                  "over_share": 0 },
//!   "mac_entries": 6, "fragments_evicted": 0,
//!   "table_generation": 7, "fail_closed": false,
//!   "ports": [ { "rx_frames": 530, "rx_bytes": 50110, "tx_frames": 512, "tx_bytes": 49200, "tx_dropped": 0 },
//!              { "rx_frames": 512, "rx_bytes": 49200, "tx_frames": 500, "tx_bytes": 48000, "tx_dropped": 0 } ]
//! }
//! ```
//! `dropped` is the sum of `drops`; `parse` is the sum of `parse_errors`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::conntrack::CtStats;
use crate::parse::ParseError;
use crate::pipeline::DropReason;

/// A counter with a single writer (see the module doc).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one. Only the owning worker may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets a gauge. Only the owning worker may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// Reads the value (any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Per-port counters. The pipeline fills `rx_*`; the worker's I/O code fills `tx_*`.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PortCounters {
    /// Frames received on the port (handed to the pipeline).
    pub rx_frames: Counter,
    /// Bytes of those frames.
    pub rx_bytes: Counter,
    /// Frames put on the port's TX ring (forwarded frames and flood copies),
    /// counted by the worker when the ring accepts them (`worker.rs`).
    pub tx_frames: Counter,
    /// Bytes of those frames (Ethernet header included, no FCS).
    pub tx_bytes: Counter,
    /// Frames that were to go out of the port but were dropped because its
    /// TX ring and the worker's pending queue for it were full (the port's
    /// share of the worker's `tx_full`).
    pub tx_dropped: Counter,
    /// The kernel's counters of this worker's socket on the port
    /// (`XDP_STATISTICS`), read by the worker about once a second: frames
    /// lost before the dataplane saw them.
    pub kernel: KernelCounters,
}

/// The kernel's drop counters of one AF_XDP socket (`struct xdp_statistics`).
#[derive(Debug, Default)]
pub struct KernelCounters {
    /// Frames the kernel dropped on receive (`rx_dropped`).
    pub rx_dropped: Counter,
    /// Frames dropped because the RX ring was full (the worker fell behind).
    pub rx_ring_full: Counter,
    /// Times a frame found no free buffer on the fill ring.
    pub fill_ring_empty: Counter,
    /// Invalid RX descriptors.
    pub rx_invalid: Counter,
    /// Invalid TX descriptors.
    pub tx_invalid: Counter,
}

/// Counters for one worker.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerCounters {
    /// Frames handed to the pipeline.
    pub frames_in: Counter,
    /// Bytes of those frames.
    pub bytes_in: Counter,
    /// Frames given `Action::Forward`.
    pub forwarded: Counter,
    /// Frames given `Action::Flood`.
    pub flooded: Counter,
    /// Batches begun.
    pub batches: Counter,
    /// Packets denied by policy and not sent to the denied-flow log (rate
    /// limit or full queue; see [`crate::observe::DenyLog`]).
    pub denied_log_suppressed: Counter,
    /// Frames from a port with no pod carrying a MAC a pod port speaks
    /// with (see [`crate::addresses`]).
    pub pod_mac_conflicts: Counter,
    drops: [Counter; DropReason::KINDS],
    parse_errors: [Counter; ParseError::COUNT],
    ct_entries: Counter,
    ct_capacity: Counter,
    ct_created: Counter,
    ct_picked_up: Counter,
    ct_related: Counter,
    ct_revoked: Counter,
    ct_expired: Counter,
    ct_evicted: Counter,
    ct_full: Counter,
    ct_over_share: Counter,
    mac_entries: Counter,
    fragments_evicted: Counter,
    table_generation: Counter,
    fail_closed: Counter,
    ports: Box<[PortCounters]>,
}

impl WorkerCounters {
    /// Counters for a worker serving `ports` ports.
    pub fn new(ports: usize) -> Self {
        WorkerCounters {
            frames_in: Counter::default(),
            bytes_in: Counter::default(),
            forwarded: Counter::default(),
            flooded: Counter::default(),
            batches: Counter::default(),
            denied_log_suppressed: Counter::default(),
            pod_mac_conflicts: Counter::default(),
            drops: Default::default(),
            parse_errors: Default::default(),
            ct_entries: Counter::default(),
            ct_capacity: Counter::default(),
            ct_created: Counter::default(),
            ct_picked_up: Counter::default(),
            ct_related: Counter::default(),
            ct_revoked: Counter::default(),
            ct_expired: Counter::default(),
            ct_evicted: Counter::default(),
            ct_full: Counter::default(),
            ct_over_share: Counter::default(),
            mac_entries: Counter::default(),
            fragments_evicted: Counter::default(),
            table_generation: Counter::default(),
            // Until the first batch says otherwise, report fail-closed.
            fail_closed: {
                let c = Counter::default();
                c.set(1);
                c
            },
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
        }
    }

    /// Per-port counters, indexed by port id.
    pub fn ports(&self) -> &[PortCounters] {
        &self.ports
    }

    /// Counts a dropped frame.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason.kind()) {
            c.inc();
        }
        if let DropReason::Parse(e) = reason {
            if let Some(c) = self.parse_errors.get(e.index()) {
                c.inc();
            }
        }
    }

    /// Drops counted for `reason` (for `Parse(e)`: those of kind `e`).
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Parse(e) => self.parse_errors.get(e.index()).map_or(0, Counter::get),
            r => self.drops.get(r.kind()).map_or(0, Counter::get),
        }
    }

    /// Publishes conntrack gauges (worker only).
    pub(crate) fn publish_conntrack(&self, entries: usize, capacity: usize, s: &CtStats) {
        self.ct_entries.set(entries as u64);
        self.ct_capacity.set(capacity as u64);
        self.ct_created.set(s.created);
        self.ct_picked_up.set(s.picked_up);
        self.ct_related.set(s.related);
        self.ct_revoked.set(s.revoked);
        self.ct_expired.set(s.expired);
        self.ct_evicted.set(s.evicted);
        self.ct_full.set(s.full);
        self.ct_over_share.set(s.over_share);
    }

    /// Generation of the table this worker uses (one atomic read).
    pub fn table_generation(&self) -> u64 {
        self.table_generation.get()
    }

    /// Publishes table and L2 gauges (worker only).
    pub(crate) fn publish_state(
        &self,
        generation: u64,
        fail_closed: bool,
        mac_entries: usize,
        fragments_evicted: u64,
    ) {
        self.table_generation.set(generation);
        self.fail_closed.set(u64::from(fail_closed));
        self.mac_entries.set(mac_entries as u64);
        self.fragments_evicted.set(fragments_evicted);
    }

    /// A consistent-enough copy for serving (each value is exact; values
    /// are read one after the other while the worker runs).
    pub fn snapshot(&self) -> CountersSnapshot {
        let drops: BTreeMap<&'static str, u64> =
            DropReason::KIND_NAMES.iter().zip(self.drops.iter()).map(|(n, c)| (*n, c.get())).collect();
        let parse_errors: BTreeMap<&'static str, u64> =
            ParseError::ALL.iter().zip(self.parse_errors.iter()).map(|(e, c)| (e.name(), c.get())).collect();
        CountersSnapshot {
            frames_in: self.frames_in.get(),
            bytes_in: self.bytes_in.get(),
            forwarded: self.forwarded.get(),
            flooded: self.flooded.get(),
            dropped: drops.values().sum(),
            batches: self.batches.get(),
            denied_log_suppressed: self.denied_log_suppressed.get(),
            pod_mac_conflicts: self.pod_mac_conflicts.get(),
            drops,
            parse_errors,
            conntrack: ConntrackSnapshot {
                entries: self.ct_entries.get(),
                capacity: self.ct_capacity.get(),
                created: self.ct_created.get(),
                picked_up: self.ct_picked_up.get(),
                related: self.ct_related.get(),
                revoked: self.ct_revoked.get(),
                expired: self.ct_expired.get(),
                evicted: self.ct_evicted.get(),
                full: self.ct_full.get(),
                over_share: self.ct_over_share.get(),
            },
            mac_entries: self.mac_entries.get(),
            fragments_evicted: self.fragments_evicted.get(),
            table_generation: self.table_generation.get(),
            fail_closed: self.fail_closed.get() != 0,
            ports: self
                .ports
                .iter()
                .map(|p| PortSnapshot {
                    rx_frames: p.rx_frames.get(),
                    rx_bytes: p.rx_bytes.get(),
                    tx_frames: p.tx_frames.get(),
                    tx_bytes: p.tx_bytes.get(),
                    tx_dropped: p.tx_dropped.get(),
                    kernel_rx_dropped: p.kernel.rx_dropped.get(),
                    kernel_rx_ring_full: p.kernel.rx_ring_full.get(),
                    kernel_fill_ring_empty: p.kernel.fill_ring_empty.get(),
                    kernel_rx_invalid: p.kernel.rx_invalid.get(),
                    kernel_tx_invalid: p.kernel.tx_invalid.get(),
                })
                .collect(),
        }
    }
}

/// Plain copy of one port's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortSnapshot {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Frames lost to a full TX ring.
    pub tx_dropped: u64,
    /// Kernel (`XDP_STATISTICS` of the workers' sockets on the port, read
    /// about once a second): frames the kernel dropped on receive.
    pub kernel_rx_dropped: u64,
    /// Kernel: frames dropped because the RX ring was full.
    pub kernel_rx_ring_full: u64,
    /// Kernel: times a frame found the fill ring empty.
    pub kernel_fill_ring_empty: u64,
    /// Kernel: invalid RX descriptors.
    pub kernel_rx_invalid: u64,
    /// Kernel: invalid TX descriptors.
    pub kernel_tx_invalid: u64,
}

/// Plain copy of conntrack gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackSnapshot {
    /// Entries held.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
    /// Connections created (including pickups).
    pub created: u64,
    /// TCP/echo connections picked up mid-stream.
    pub picked_up: u64,
    /// ICMP errors passed as related.
    pub related: u64,
    /// Connections revoked by a newer table.
    pub revoked: u64,
    /// Entries expired.
    pub expired: u64,
    /// Embryonic/closed entries evicted for new ones.
    pub evicted: u64,
    /// New connections refused for lack of room.
    pub full: u64,
    /// Of those, refused because the pod they came from held its share.
    pub over_share: u64,
}

/// Plain, serializable copy of a worker's counters (or a sum over workers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// Frames handed to the pipeline.
    pub frames_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Frames forwarded to one port.
    pub forwarded: u64,
    /// Frames flooded.
    pub flooded: u64,
    /// Frames dropped (sum of `drops`).
    pub dropped: u64,
    /// Batches.
    pub batches: u64,
    /// Packets denied by policy and left out of the denied-flow log.
    pub denied_log_suppressed: u64,
    /// Frames from a port with no pod with a MAC a pod port speaks with.
    pub pod_mac_conflicts: u64,
    /// Drops by reason (snake_case names of [`DropReason`] kinds).
    pub drops: BTreeMap<&'static str, u64>,
    /// Parse errors by kind ([`ParseError::name`]).
    pub parse_errors: BTreeMap<&'static str, u64>,
    /// Connection tracking.
    pub conntrack: ConntrackSnapshot,
    /// Learned MAC addresses.
    pub mac_entries: u64,
    /// Fragment records replaced before their timeout.
    pub fragments_evicted: u64,
    /// Generation of the table in use (for a sum: the lowest over workers).
    pub table_generation: u64,
    /// The table in use is fail-closed (for a sum: any worker is).
    pub fail_closed: bool,
    /// Per port.
    pub ports: Vec<PortSnapshot>,
}

impl CountersSnapshot {
    /// Adds another worker's snapshot into this one (counters and gauges summed;
    /// generation is the minimum, fail-closed the disjunction).
    pub fn add(&mut self, o: &CountersSnapshot) {
        let first = self.batches == 0 && self.frames_in == 0 && self.ports.is_empty();
        self.frames_in += o.frames_in;
        self.bytes_in += o.bytes_in;
        self.forwarded += o.forwarded;
        self.flooded += o.flooded;
        self.dropped += o.dropped;
        self.batches += o.batches;
        self.denied_log_suppressed += o.denied_log_suppressed;
        self.pod_mac_conflicts += o.pod_mac_conflicts;
        for (k, v) in &o.drops {
            *self.drops.entry(k).or_default() += v;
        }
        for (k, v) in &o.parse_errors {
            *self.parse_errors.entry(k).or_default() += v;
        }
        let (c, d) = (&mut self.conntrack, &o.conntrack);
        c.entries += d.entries;
        c.capacity += d.capacity;
        c.created += d.created;
        c.picked_up += d.picked_up;
        c.related += d.related;
        c.revoked += d.revoked;
        c.expired += d.expired;
        c.evicted += d.evicted;
        c.full += d.full;
        c.over_share += d.over_share;
        self.mac_entries += o.mac_entries;
        self.fragments_evicted += o.fragments_evicted;
        self.table_generation =
            if first { o.table_generation } else { self.table_generation.min(o.table_generation) };
        self.fail_closed |= o.fail_closed;
        if self.ports.len() < o.ports.len() {
            self.ports.resize(o.ports.len(), PortSnapshot::default());
        }
        for (p, q) in self.ports.iter_mut().zip(&o.ports) {
            p.rx_frames += q.rx_frames;
            p.rx_bytes += q.rx_bytes;
            p.tx_frames += q.tx_frames;
            p.tx_bytes += q.tx_bytes;
            p.tx_dropped += q.tx_dropped;
            p.kernel_rx_dropped += q.kernel_rx_dropped;
            p.kernel_rx_ring_full += q.kernel_rx_ring_full;
            p.kernel_fill_ring_empty += q.kernel_fill_ring_empty;
            p.kernel_rx_invalid += q.kernel_rx_invalid;
            p.kernel_tx_invalid += q.kernel_tx_invalid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshots() {
        let c = WorkerCounters::new(2);
        c.frames_in.add(3);
        c.count_drop(DropReason::Policy);
        c.count_drop(DropReason::Parse(ParseError::TcpTruncated));
        c.count_drop(DropReason::Parse(ParseError::TcpTruncated));
        c.ports()[1].rx_frames.inc();
        let s = c.snapshot();
        assert_eq!(s.frames_in, 3);
        assert_eq!(s.drops["policy"], 1);
        assert_eq!(s.drops["parse"], 2);
        assert_eq!(s.parse_errors["tcp_truncated"], 2);
        assert_eq!(s.dropped, 3);
        assert_eq!(s.ports[1].rx_frames, 1);
        assert!(s.fail_closed);
        assert_eq!(c.dropped(DropReason::Parse(ParseError::TcpTruncated)), 2);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["drops"]["policy"], 1);
        assert_eq!(json["conntrack"]["capacity"], 0);
        let mut sum = CountersSnapshot::default();
        sum.add(&s);
        sum.add(&s);
        assert_eq!(sum.dropped, 6);
        assert_eq!(sum.parse_errors["tcp_truncated"], 4);
        assert_eq!(sum.ports[1].rx_frames, 2);
    }

    #[test]
    fn counters_are_cache_line_aligned() {
        assert_eq!(std::mem::align_of::<WorkerCounters>(), 64);
        assert_eq!(std::mem::align_of::<PortCounters>(), 64);
    }
}
