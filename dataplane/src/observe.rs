//! What the packet path tells the control plane beyond counters: which
//! policies allow connections (per-policy allow hits) and, rate-limited,
//! which flows were denied.
//!
//! ```text
//!  conntrack miss ── Admission::allows ── table.verdict ─┬─ allowed: remembered; once the connection has
//!                                                        │  a slot, Admission::admitted →
//!                                                        │  PolicyHits[row][policy, direction] += 1
//!                                                        └─ denied: if the packet drops as Drop(Policy)
//!                                                           and the log has a token, its own flow is
//!                                                           looked up again → bounded channel
//!  control plane: sums PolicyHits rows (per table generation); drains the channel and logs
//! ```
//!
//! Hits are counted per *connection*: once, when conntrack admits a new
//! connection into its table (outcome New or PickedUp), never per packet, for
//! a probe (a mid-stream packet checked in both orientations), for a packet
//! that tracks nothing (RST without connection, other ICMP), or for a
//! connection refused because the table is full. The denied-flow log counts
//! *packets*: a denied flow is never tracked, so each of its packets (a
//! retransmitted SYN, every datagram of a flood) is offered again, and the
//! token bucket bounds what reaches the log. Neither allocates or
//! locks on the packet path: hit counters are atomics preallocated with each
//! published table, one row per worker; denied flows go through a
//! preallocated bounded `crossbeam_channel` (`try_send`, dropped and counted
//! when full) after a per-worker token bucket.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use policy_compiler::{DecisionTable, Side, Verdict};
use serde::Serialize;

use crate::addresses::Addresses;
use crate::conntrack::Policy;
use crate::counters::Counter;
use crate::parse::Flow;
use crate::pipeline::PortId;

/// Direction of a policy's rule, as an index into [`PolicyHits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HitDirection {
    /// An ingress rule of the destination pod's policy.
    Ingress = 0,
    /// An egress rule of the source pod's policy.
    Egress = 1,
}

/// Connections allowed per policy and direction, for one published table,
/// and connections the node exemption admitted that policy alone would deny.
/// Indexed by the table's policy index ([`DecisionTable::policy`]); the pair
/// after the last policy counts the node exemption. One row
/// of counters per worker, so workers never write the same cache line
/// (except at row boundaries); `fetch_add` keeps a count exact even when two
/// workers share a row.
#[derive(Debug, Default)]
pub struct PolicyHits {
    width: usize,
    rows: usize,
    counts: Box<[AtomicU64]>,
}

impl PolicyHits {
    /// Counters for `policies` policies and `rows` workers (at least one row).
    pub fn new(policies: usize, rows: usize) -> Self {
        let width = policies * 2 + 2;
        let rows = rows.max(1);
        PolicyHits { width, rows, counts: (0..width * rows).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Number of policies counted.
    pub fn policies(&self) -> usize {
        self.width.saturating_sub(2) / 2
    }

    /// Connections from the node's addresses that policy alone would deny,
    /// admitted by the node exemption, summed over workers.
    pub fn node_exempt_total(&self) -> u64 {
        let i = self.policies() * 2;
        (0..self.rows).filter_map(|r| self.counts.get(r * self.width + i)).map(|c| c.load(Relaxed)).sum()
    }

    #[inline]
    fn add(&self, row: usize, policy: u32, dir: HitDirection) {
        // A worker's own row without a division (this runs for every new connection).
        let row = if row < self.rows { row } else { row % self.rows };
        let i = row * self.width + policy as usize * 2 + dir as usize;
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Connections the policy at `policy` allowed in `dir`, summed over workers.
    pub fn total(&self, policy: usize, dir: HitDirection) -> u64 {
        if policy >= self.policies() {
            return 0;
        }
        (0..self.rows).map(|r| self.counts[r * self.width + policy * 2 + dir as usize].load(Relaxed)).sum()
    }
}

/// A packet policy denied (dropped as `Policy`), as the worker saw it, with
/// the verdict of its own flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeniedFlow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
    /// Both sides of the verdict (at least one is [`Side::Denied`]; built with
    /// `verdict_both`, so neither is skipped).
    pub verdict: Verdict,
    /// Generation of the table that decided.
    pub generation: u64,
    /// Worker index.
    pub worker: usize,
}

/// Capacity of the denied-flow channel: at most this many records wait for
/// the control plane; more are dropped (and counted).
pub const DENIED_QUEUE: usize = 1024;

/// The receiving end the control plane drains, and the sending end each worker clones.
pub fn denied_channel() -> (Sender<DeniedFlow>, Receiver<DeniedFlow>) {
    crossbeam_channel::bounded(DENIED_QUEUE)
}

/// Highest rate a [`DenyLog`] accepts, records per second per worker
/// (higher rates are capped to it). A million a second is already far more
/// than a log can take; the bound keeps the bucket's refill interval (one
/// token every `1e9 / rate` ns) at least a microsecond, never zero.
pub const MAX_DENY_LOG_PER_SECOND: u32 = 1_000_000;

/// A worker's rate-limited sender of [`DeniedFlow`]s: a token bucket of
/// `per_second` tokens (burst the same), refilled from the packet clock.
#[derive(Debug)]
pub struct DenyLog {
    tx: Option<Sender<DeniedFlow>>,
    per_second: u64,
    /// Nanoseconds per token: `NANOS_PER_SEC / per_second`, at least 1000.
    interval: u64,
    tokens: u64,
    refilled: u64,
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

impl DenyLog {
    /// Off: offers nothing.
    pub fn off() -> Self {
        DenyLog { tx: None, per_second: 0, interval: NANOS_PER_SEC, tokens: 0, refilled: 0 }
    }

    /// At most `per_second` records per second (0: off) into `tx`; rates
    /// above [`MAX_DENY_LOG_PER_SECOND`] are capped to it.
    pub fn new(tx: Sender<DeniedFlow>, per_second: u32) -> Self {
        if per_second == 0 {
            return Self::off();
        }
        let per_second = u64::from(per_second.min(MAX_DENY_LOG_PER_SECOND));
        DenyLog {
            tx: Some(tx),
            per_second,
            interval: NANOS_PER_SEC / per_second,
            tokens: per_second,
            refilled: 0,
        }
    }

    /// Is logging on?
    #[inline]
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends the record `make` builds if the bucket has a token; counts it in
    /// `suppressed` otherwise (no token, or the channel is full). `make` runs
    /// only with a token: what it costs (a second lookup of the flow) is
    /// bounded by the rate.
    #[inline]
    pub fn offer(&mut self, make: impl FnOnce() -> DeniedFlow, now: u64, suppressed: &Counter) {
        let Some(tx) = &self.tx else { return };
        let elapsed = now.saturating_sub(self.refilled);
        // `interval` is at least 1000 (see `new`); `checked_div` makes a zero
        // harmless anyway: this runs on the packet path and must not panic.
        let add = elapsed.checked_div(self.interval).unwrap_or(0);
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.per_second);
            self.refilled = now;
        }
        if self.tokens == 0 {
            suppressed.inc();
            return;
        }
        self.tokens -= 1;
        match tx.try_send(make()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => suppressed.inc(),
        }
    }
}

/// The table as conntrack sees it on a worker, for one packet: counts the
/// policies that allowed each connection conntrack admits into `hits`.
pub struct Admission<'a> {
    table: &'a DecisionTable,
    hits: &'a PolicyHits,
    row: usize,
    /// The packet's flow, as it travels (borrowed: an admission is made for
    /// every packet, and copying a flow is most of its cost).
    packet: &'a Flow,
    /// For the last allowing verdict, a fingerprint of its flow and the
    /// policies that allowed it, [egress, ingress] ([`NO_RULE`]: that side had
    /// no rule to allow it): conntrack admits the flow it just asked about, so
    /// counting it needs no second lookup (a different fingerprint looks the
    /// flow up again). Two integers, not the verdict: copying the verdict the
    /// lookup just wrote to memory as one wide value stalled store forwarding,
    /// a fifth of a new connection's cost.
    allowed: Cell<Option<(u64, [u32; 2])>>,
    /// The fingerprint of the last flow the node exemption allowed.
    exempted: Cell<Option<u64>>,
    /// The port the packet arrived on (for the node's exemption).
    in_port: PortId,
    /// The ports' pods and the node's addresses: which pod port the packet
    /// came from ([`Policy::owner`], asked only for a new connection), and
    /// the node's exemption (a tracked connection from one of its addresses
    /// that is checked again, another packet's flow, keeps it, as in
    /// [`crate::pipeline::PublishedTable`]'s re-checks).
    addresses: Option<&'a Addresses>,
    /// `addresses` has node addresses (without them nothing is exempt: no
    /// test per question).
    node: bool,
}

impl<'a> Admission<'a> {
    /// `table`, counting into row `row` of `hits`, for a packet whose flow is `packet`.
    pub fn new(table: &'a DecisionTable, hits: &'a PolicyHits, row: usize, packet: &'a Flow) -> Self {
        Admission {
            table,
            hits,
            row,
            packet,
            in_port: 0,
            addresses: None,
            node: false,
            allowed: Cell::new(None),
            exempted: Cell::new(None),
        }
    }

    /// Also allows the packet's connection when it comes from the node (one
    /// of its addresses, arriving on `in_port` where the node's traffic
    /// arrives; see [`crate::addresses`]); such a connection counts a policy
    /// hit only when a rule of the table allows it too.
    /// Which ports lead to pods comes with it: a new connection from one
    /// counts against that pod's share of the connection table.
    pub fn with_node(self, addresses: &'a Addresses, in_port: PortId) -> Self {
        Admission { in_port, addresses: Some(addresses), node: addresses.any_node_address(), ..self }
    }

    /// The table's answer, remembered for [`Policy::admitted`].
    #[inline]
    fn allows_by_table(&self, flow: &Flow) -> bool {
        let v = self.verdict(flow);
        if v.allowed() {
            self.allowed.set(Some((fingerprint(flow), [rule_policy(v.egress), rule_policy(v.ingress)])));
        }
        v.allowed()
    }

    #[inline]
    fn verdict(&self, flow: &Flow) -> Verdict {
        self.table.verdict(flow.src.ip(), flow.dst.ip(), flow.proto, flow.policy_port())
    }
}

/// A cheap summary of a flow, direction included: which flow a remembered
/// verdict is for. (Conntrack admits the flow it last found allowed, so this
/// only guards against a caller that does not; a collision could at worst
/// count a hit for the wrong rule, never change a decision.)
#[inline]
fn fingerprint(f: &Flow) -> u64 {
    // The low 64 bits hold all of an IPv4 address and the interface part of an
    // IPv6 one; source and destination are mixed differently, so a flow and
    // its reverse differ.
    (f.src.0 as u64).rotate_left(29) ^ f.dst.0 as u64 ^ (u64::from(f.src_port) << 16 | u64::from(f.dst_port))
}

impl Policy for Admission<'_> {
    #[inline]
    fn allows(&self, flow: &Flow) -> bool {
        // The packet's own flow: exempt when it arrived from the node. Another
        // flow (a tracked connection re-checked on a packet of its other side):
        // exempt when it comes from a node address, as it was when admitted.
        let exempt = match self.addresses.filter(|_| self.node) {
            Some(a) if flow == self.packet => a.from_node(flow.src.ip(), self.in_port),
            Some(a) => a.is_node(flow.src.ip()),
            None => false,
        };
        if exempt {
            self.exempted.set(Some(fingerprint(flow)));
            return true;
        }
        self.allows_by_table(flow)
    }

    #[inline]
    fn allows_reverse(&self, flow: &Flow) -> bool {
        // A pod's packet to the node's address is no proof the node opened
        // the connection: only the table answers.
        self.allows_by_table(flow)
    }

    #[inline]
    fn owner(&self) -> Option<u16> {
        match self.addresses {
            Some(a) if a.is_pod_port(usize::from(self.in_port)) => Some(self.in_port),
            _ => None,
        }
    }

    #[inline]
    fn admitted(&self, flow: &Flow) {
        let [egress, ingress] = match self.allowed.get() {
            Some((f, policies)) if f == fingerprint(flow) => policies,
            _ => {
                let v = self.verdict(flow);
                if !v.allowed() && self.exempted.get() == Some(fingerprint(flow)) {
                    // Only the node exemption let it in.
                    self.hits.add(self.row, self.hits.policies() as u32, HitDirection::Ingress);
                }
                [rule_policy(v.egress), rule_policy(v.ingress)]
            }
        };
        if egress != NO_RULE {
            self.hits.add(self.row, egress, HitDirection::Egress);
        }
        if ingress != NO_RULE {
            self.hits.add(self.row, ingress, HitDirection::Ingress);
        }
    }
}

/// No rule allowed that side (it was not isolated, or not a pod).
const NO_RULE: u32 = u32::MAX;

/// The policy whose rule allowed a side, or [`NO_RULE`].
#[inline]
fn rule_policy(side: Side) -> u32 {
    match side {
        Side::Allowed(r) => r.policy,
        _ => NO_RULE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counting a connection uses the verdict remembered from the question
    /// about that same flow; for another flow it looks the table up again.
    #[test]
    fn admitted_counts_the_admitted_flows_rules_not_the_last_questions() {
        use crate::testing::{client_server_table, Host};
        let table = client_server_table();
        let server =
            (0..table.policy_slots() as u32).find(|&i| table.policy(i).1 == "server-ingress").unwrap();
        let hits = PolicyHits::new(table.policy_slots(), 1);
        let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
        let to_server = Flow { src: c.addr4(), dst: s.addr4(), proto: 6, src_port: 40000, dst_port: 80 };
        let to_other = Flow { dst: o.addr4(), ..to_server };
        let a = Admission::new(&table, &hits, 0, &to_server);
        assert!(a.allows(&to_server) && a.allows(&to_other));
        // The last question was `to_other` (no rule: nothing isolates it).
        a.admitted(&to_server);
        assert_eq!(hits.total(server as usize, HitDirection::Ingress), 1);
        let a = Admission::new(&table, &hits, 0, &to_server);
        assert!(a.allows(&to_server));
        a.admitted(&to_other);
        assert_eq!(hits.total(server as usize, HitDirection::Ingress), 1, "to_other matched no rule");
        a.admitted(&to_server);
        assert_eq!(hits.total(server as usize, HitDirection::Ingress), 2);
    }

    /// The node's exemption holds for a packet from the node on a port
    /// facing it, and for tracked connections re-checked, but not for the
    /// reverse of a pod's packet that has no entry (is it a reply?): no
    /// packet of that direction was seen, from the node or anywhere.
    #[test]
    fn the_node_exemption_is_not_given_to_a_direction_never_seen() {
        use crate::addresses::{Addresses, PodAddrs};
        use crate::testing::{client_server_table, Host};
        let table = client_server_table();
        let hits = PolicyHits::new(table.policy_slots(), 1);
        let (s, node) = (Host::new(2), Host::new(100));
        // Port 0 faces the node, port 1 leads to the isolated server.
        let addresses = Addresses::new(vec![None, Some(PodAddrs::new([s.v4()]))], vec![node.v4()]);
        let from_node = Flow { src: node.addr4(), dst: s.addr4(), proto: 6, src_port: 50000, dst_port: 8080 };
        assert!(!table.allows(&from_node), "the table alone denies it");
        let reply = from_node.reversed();
        let a = Admission::new(&table, &hits, 0, &reply).with_node(&addresses, 1);
        assert!(!a.allows_reverse(&from_node));
        assert!(a.allows(&from_node), "a tracked connection from the node keeps its exemption");
        let b = Admission::new(&table, &hits, 0, &from_node).with_node(&addresses, 0);
        assert!(b.allows(&from_node));
        let c = Admission::new(&table, &hits, 0, &from_node).with_node(&addresses, 1);
        assert!(!c.allows(&from_node), "the node's address from a pod's port is only a claim");
    }

    #[test]
    fn hits_sum_over_rows_and_ignore_out_of_range() {
        let h = PolicyHits::new(3, 2);
        h.add(0, 1, HitDirection::Ingress);
        h.add(1, 1, HitDirection::Ingress);
        h.add(3, 1, HitDirection::Ingress); // row 3 folds onto row 1
        h.add(0, 2, HitDirection::Egress);
        h.add(0, 7, HitDirection::Egress); // no such policy: ignored
        assert_eq!(h.total(1, HitDirection::Ingress), 3);
        assert_eq!(h.total(1, HitDirection::Egress), 0);
        assert_eq!(h.total(2, HitDirection::Egress), 1);
        assert_eq!(h.total(7, HitDirection::Egress), 0);
        assert_eq!(h.policies(), 3);
    }

    fn denied(port: u16) -> DeniedFlow {
        DeniedFlow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            protocol: 6,
            port,
            verdict: Verdict { egress: Side::NotPod, ingress: Side::Denied(policy_compiler::SideId(0)) },
            generation: 1,
            worker: 0,
        }
    }

    #[test]
    fn deny_log_is_rate_limited_and_refills_with_time() {
        let (tx, rx) = denied_channel();
        let suppressed = Counter::default();
        let mut log = DenyLog::new(tx, 2);
        for port in 0..5 {
            log.offer(|| denied(port), 0, &suppressed);
        }
        assert_eq!(rx.try_iter().count(), 2, "burst of two");
        assert_eq!(suppressed.get(), 3);
        // Half a second later: one token back.
        for port in 0..3 {
            log.offer(|| denied(port), NANOS_PER_SEC / 2, &suppressed);
        }
        assert_eq!(rx.try_iter().map(|d| d.port).collect::<Vec<_>>(), vec![0]);
        assert_eq!(suppressed.get(), 5);
        // Without a token the record (a second table lookup) is not even built.
        log.offer(|| unreachable!("built without a token"), NANOS_PER_SEC / 2, &suppressed);
        assert_eq!(suppressed.get(), 6);
        // Ten seconds idle: the bucket holds at most `per_second`.
        for port in 0..5 {
            log.offer(|| denied(port), 10 * NANOS_PER_SEC, &suppressed);
        }
        assert_eq!(rx.try_iter().count(), 2);
    }

    /// A rate above one per nanosecond (a configuration typo, or a caller
    /// that skips `Config::check`) used to divide by zero in `offer` and
    /// panic the worker: it is capped at `MAX_DENY_LOG_PER_SECOND`.
    #[test]
    fn deny_log_rate_beyond_a_billion_is_capped_and_never_panics() {
        for rate in [1_000_000_001, 4_000_000_000, u32::MAX] {
            let (tx, rx) = denied_channel();
            let suppressed = Counter::default();
            let mut log = DenyLog::new(tx, rate);
            assert!(log.enabled());
            for (i, now) in [0, 1, 999, NANOS_PER_SEC, u64::MAX / 2, u64::MAX].into_iter().enumerate() {
                log.offer(|| denied(i as u16), now, &suppressed);
            }
            assert_eq!(rx.try_iter().count(), 6, "rate {rate}");
            assert_eq!(suppressed.get(), 0);
        }
        // The cap is a rate: a burst of `MAX + 1` at one instant loses one
        // (the channel holds DENIED_QUEUE, so drain as we go).
        let (tx, rx) = denied_channel();
        let suppressed = Counter::default();
        let mut log = DenyLog::new(tx, u32::MAX);
        let mut sent = 0;
        for _ in 0..=MAX_DENY_LOG_PER_SECOND {
            log.offer(|| denied(1), 5, &suppressed);
            sent += rx.try_iter().count();
        }
        assert_eq!((sent, suppressed.get()), (MAX_DENY_LOG_PER_SECOND as usize, 1));
    }

    #[test]
    fn deny_log_off_sends_nothing_and_counts_nothing() {
        let (tx, rx) = denied_channel();
        let suppressed = Counter::default();
        let mut log = DenyLog::new(tx, 0);
        assert!(!log.enabled());
        log.offer(|| denied(1), 0, &suppressed);
        assert_eq!(rx.try_iter().count(), 0);
        assert_eq!(suppressed.get(), 0);
    }
}
