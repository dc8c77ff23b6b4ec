//! Connection tracking: NetworkPolicy allows *connections*, not packets.
//!
//! ```text
//!  IpPacket ──key──▶ index (HashTable<u32>) ──slot──▶ Entry { state, expires, generation, .. }
//!     │                  miss │                         hit │
//!     │                       ▼                             ▼
//!     │        Policy::allows(flow)? ──no──▶ Drop(Policy)   stale generation? ─▶ re-check the
//!     │                  │ yes                              original direction; denied ─▶ remove,
//!     │                  ▼                                  Drop(Revoked)
//!     │        free slot, or reclaim (expired, then          │
//!     │        embryonic) ──none──▶ Drop(Full)               ▼
//!     │                  ▼                                  advance state, refresh timeout, Pass
//!     └── ICMP error ──▶ lookup of the embedded flow ──▶ Pass(Related)
//! ```
//!
//! **One table per worker, no locks.** A worker serves queue *i* of every
//! port, so both directions of a flow must reach the same worker. On veth
//! pairs (one queue) that is automatic; on multi-queue NICs it needs
//! *symmetric* RSS (a hash key that gives `hash(a,b) == hash(b,a)`, e.g. the
//! repeated `0x6d5a` key, or `ethtool -X .. hfunc toeplitz` with a symmetric
//! key / `xor` hfunc). Without it, replies land on another worker whose table
//! has never seen the connection, and are judged as new flows in their own
//! direction: dropped, unless policy allows that direction by itself (a TCP
//! reply segment drops as [`CtDrop::NoConnection`], see pickup below). Only
//! [`Conntrack::with_reverse_pickup`] (`tcp_reverse_pickup`, off by default)
//! would pass TCP replies there, and nothing passes UDP ones: symmetric RSS
//! is a requirement, not an optimisation.
//!
//! **Keys are canonical**: the two endpoints are ordered, so one entry serves
//! both directions with one probe; the entry remembers which endpoint opened
//! the connection. ICMP echo is keyed by role instead: the requester (a
//! request's source, a reply's destination) comes first, so a reply maps to
//! its request's entry and a request in the other direction is another
//! connection, decided by policy, also for identifier 0, whose request
//! `(id, 0)` and reply `(0, id)` ports ([`crate::parse`]) are both `(0, 0)`.
//! An echo reply without entry passes (untracked) only when policy allows it
//! in its own direction; one that only its request's direction would allow
//! is dropped, as Linux conntrack holds a reply to no request invalid.
//! Other ICMP messages are never tracked nor matched against echo entries.
//!
//! **Memory is fixed at construction.** Entries live in a slab of `capacity`
//! slots; the index is a `hashbrown::HashTable<u32>` reserved for twice the
//! capacity so that hashbrown always rehashes in place (it only allocates when
//! live items exceed half its capacity) and never allocates after `new`.
//! The hash is foldhash with a per-table random seed, so an attacker cannot
//! aim collisions at one bucket. (Removals leave tombstones; when they use
//! up the index's slack hashbrown rehashes in place — O(index size) once in
//! a while under heavy churn, a latency spike but no allocation.)
//!
//! **When the table is full**, a new connection may take the slot of (in
//! order) an expired entry or an *embryonic* one — never replied to, a TCP
//! handshake not completed (a SYN-ACK alone does not protect it), closed
//! by RST/FIN, or a datagram flow that is not yet assured (see below) —
//! found among the next [`RECLAIM_SCAN`] slots of a rotating cursor. TCP
//! entries that have seen a reply and are not closed, and assured datagram
//! flows, are never evicted, so a flood of new flows cannot push out
//! established connections; it is refused and counted instead. The scan bound keeps the
//! per-packet cost bounded; an expired slot outside the window is found on a
//! later attempt or by [`Conntrack::expire_step`].
//!
//! **Each pod's share** ([`Conntrack::with_pod_share`]): the entries of
//! connections opened from one pod port ([`Policy::owner`]) are counted, and
//! a new one is refused (counted in `full` and `over_share`) while its pod
//! holds its share, so one pod that pins entries fills its share, not the
//! table. Connections from ports with no pod count against no share.
//!
//! **TCP** follows the handshake loosely (as a stateful firewall does, not a
//! TCP stack: no sequence-window checks): SYN → SynSent, SYN-ACK from the
//! responder → SynReceived, ACK from the initiator → Established, FIN from
//! either side → Closing, FIN from both or RST → Closed; each state has its
//! own timeout ([`Timeouts`]). A bare SYN from the initiator of a connection
//! that is still open (SynReceived, Established) is passed and changes
//! nothing, as Linux ignores it; a retransmitted SYN (SynSent) is tracked.
//! Any other bare SYN that hits an entry is a new connection (port reuse after
//! a close, or a peer trying
//! to open a connection backwards through an entry) and is evaluated by
//! policy: admitted, it replaces the entry in its slot; denied, it is dropped
//! and the entry stays, so a SYN that policy refuses (perhaps spoofed) cannot
//! tear down the connection whose 4-tuple it reuses. **Mid-stream pickup** (a non-SYN packet
//! without entry, after an agent restart or an idle timeout) is allowed when
//! policy allows a connection *from the packet's source* to its destination,
//! as Linux conntrack's loose pickup followed by rules on `ct state new`
//! does; the entry is Established, oriented as the packet, and counted
//! embryonic until the other side speaks. That orientation says nothing about
//! who opened the connection: when it runs from the lower port to the higher
//! (server to client, by the look of it) and both sides have spoken, a
//! re-check against a new table that denies it but allows the other way round
//! turns the entry round instead of revoking it. A packet that policy allows only as
//! a *reply* (the reverse orientation; a reset too) is dropped as
//! [`CtDrop::NoConnection`]: without state nothing
//! tells a genuine reply from a forged one, and passing it would deliver
//! segments of a denied flow (an ACK scan through the enforcer maps the
//! denied ports). The cost: after a restart, a connection whose responder
//! speaks first waits for its initiator's next segment (a retransmission,
//! an ACK or a keepalive); [`Conntrack::with_reverse_pickup`] restores the
//! permissive behaviour for nodes that prefer it. Pickup can be turned off
//! (`loose_tcp = false`), then such packets drop as [`CtDrop::NoConnection`].
//!
//! **UDP** (and SCTP, other protocols) follows Linux
//! (`net/netfilter/nf_conntrack_proto_udp.c`): a flow is Unreplied until the
//! responder answers, then Replied; both keep the short
//! [`Timeouts::udp_unreplied`] (30 s, Linux `nf_conntrack_udp_timeout`) and
//! stay evictable, because a single query and answer (DNS) is all most such
//! flows ever are, and a pod sending thousands of queries a second from fresh
//! source ports must not pin the table. Only when the initiator sends again
//! after an answer is the flow *Assured* (a stream): the long [`Timeouts::udp`]
//! (120 s, `nf_conntrack_udp_timeout_stream`) and protection from eviction.
//! Answers alone never assure a flow, so the responder cannot pin entries.
//!
//! **Revocation.** Every entry stores the table generation it was checked
//! against. A hit on an entry from an older generation re-checks the
//! original direction against the current table; if it is now denied the
//! entry is removed and the packet dropped, so a revoked connection stops
//! within one batch of the new table. [`Conntrack::revalidate_step`] /
//! [`Conntrack::revalidate_all`] do the same for idle entries.
//!
//! Time is an argument (`now`, nanoseconds on any monotonic clock), so
//! expiry is tested without sleeping.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};

use crate::parse::{proto, Addr, Flow, IpPacket, TcpFlags, L4};

/// Slots examined per reclaim attempt when the table is full.
pub const RECLAIM_SCAN: usize = 64;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Answers "may this connection be opened?" for one direction.
pub trait Policy {
    /// Does policy allow `flow` to open a connection? Only a question:
    /// conntrack asks it to decide, to probe which orientation a mid-stream
    /// packet may belong to, and to re-check entries against a newer table,
    /// so it must not count anything.
    fn allows(&self, flow: &Flow) -> bool;

    /// Would policy allow `flow`, the reverse of a packet that has no
    /// entry (is the packet a reply?). No packet of `flow` was seen, so
    /// nothing that depends on where its packets arrive (the node's
    /// exemption) applies. Default: [`Policy::allows`].
    #[inline]
    fn allows_reverse(&self, flow: &Flow) -> bool {
        self.allows(flow)
    }

    /// The pod port the packet came from, when it came from one: a new
    /// connection counts against that pod's share of the table
    /// ([`Conntrack::with_pod_share`]). Default: none (no share applies).
    #[inline]
    fn owner(&self) -> Option<u16> {
        None
    }

    /// Conntrack admitted a new connection whose initiator's flow is `flow`
    /// ([`Policy::allows`] said yes and the connection got a slot: the
    /// outcome is [`CtPass::New`] or [`CtPass::PickedUp`]). Called once per
    /// connection, never for packets that track nothing; implementations may
    /// count it. Default: nothing.
    #[inline]
    fn admitted(&self, _flow: &Flow) {}
}

impl Policy for policy_compiler::DecisionTable {
    #[inline]
    fn allows(&self, flow: &Flow) -> bool {
        self.verdict(flow.src.ip(), flow.dst.ip(), flow.proto, flow.policy_port()).allowed()
    }
}

/// Idle timeouts per state, in seconds. Each packet of a connection restarts
/// its state's timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP handshake (SYN seen, or SYN-ACK seen): default 30. Short, because
    /// half-open entries are what a SYN flood creates.
    pub tcp_handshake: u64,
    /// TCP established: default 21600 (6 h). Long-lived idle connections
    /// (database pools) outlive shorter values; after expiry the next packet
    /// is picked up and re-evaluated anyway.
    pub tcp_established: u64,
    /// TCP after one side's FIN (half-closed): default 120.
    pub tcp_closing: u64,
    /// TCP after FIN from both sides or RST: default 10, long enough for the
    /// final ACK and retransmitted FINs.
    pub tcp_closed: u64,
    /// UDP, SCTP and other protocols once *assured*: the initiator sent again
    /// after an answer (a stream, Linux `nf_conntrack_udp_timeout_stream`):
    /// default 120. Assured flows are never evicted when the table is full.
    pub udp: u64,
    /// UDP, SCTP and other protocols before any answer and after a single
    /// exchange (query and answer, as DNS; Linux `nf_conntrack_udp_timeout`):
    /// default 30. Such flows may be evicted when the table is full.
    pub udp_unreplied: u64,
    /// ICMP echo: default 30.
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_handshake: 30,
            tcp_established: 21_600,
            tcp_closing: 120,
            tcp_closed: 10,
            udp: 120,
            udp_unreplied: 30,
            icmp: 30,
        }
    }
}

/// Timeouts in nanoseconds, indexed by [`State`].
#[derive(Clone, Copy, Debug)]
struct TimeoutsNs([u64; State::COUNT]);

impl TimeoutsNs {
    fn new(t: &Timeouts) -> Self {
        let s = |secs: u64| secs.saturating_mul(NANOS_PER_SEC);
        let mut a = [0u64; State::COUNT];
        a[State::Free as usize] = 0;
        a[State::SynSent as usize] = s(t.tcp_handshake);
        a[State::SynReceived as usize] = s(t.tcp_handshake);
        a[State::Established as usize] = s(t.tcp_established);
        a[State::Closing as usize] = s(t.tcp_closing);
        a[State::Closed as usize] = s(t.tcp_closed);
        a[State::Unreplied as usize] = s(t.udp_unreplied);
        a[State::Replied as usize] = s(t.udp_unreplied);
        a[State::Assured as usize] = s(t.udp);
        a[State::Echo as usize] = s(t.icmp);
        TimeoutsNs(a)
    }

    #[inline]
    fn of(&self, s: State) -> u64 {
        self.0[s as usize]
    }
}

/// The state of a tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Slot not in use.
    Free = 0,
    /// TCP: SYN seen from the initiator.
    SynSent,
    /// TCP: SYN-ACK seen from the responder.
    SynReceived,
    /// TCP: handshake completed (or picked up mid-stream).
    Established,
    /// TCP: FIN seen from one side.
    Closing,
    /// TCP: FIN from both sides, or RST.
    Closed,
    /// Datagram protocol, no answer yet.
    Unreplied,
    /// Datagram protocol, answered, but the initiator has not sent again
    /// since: short timeout, evictable.
    Replied,
    /// Datagram protocol, the initiator sent again after an answer (a
    /// stream): long timeout, never evicted.
    Assured,
    /// ICMP echo.
    Echo,
}

impl State {
    const COUNT: usize = 10;
}

/// Why conntrack refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtDrop {
    /// No entry and policy denies the connection.
    Policy,
    /// The entry's connection is denied by a newer table: removed.
    Revoked,
    /// No entry, policy allows, but the table is full of live connections.
    Full,
    /// A TCP packet without SYN and without entry that is not picked up (pickup
    /// off, or allowed by policy only as a reply).
    NoConnection,
}

/// Why conntrack let a packet pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtPass {
    /// Belongs to a tracked connection.
    Tracked,
    /// Opened a new connection (entry created).
    New,
    /// Non-SYN TCP or echo reply without entry, allowed in one orientation: entry created.
    PickedUp,
    /// An ICMP error about a tracked connection.
    Related,
    /// Allowed by policy but not tracked (RST without entry, unrelated ICMP
    /// errors, other ICMP messages): policy is evaluated on every such packet.
    Untracked,
}

/// Conntrack's answer for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Let it through.
    Pass(CtPass),
    /// Drop it.
    Drop(CtDrop),
}

/// Conntrack's own event counts (plain integers owned by the worker; the
/// pipeline publishes them to [`crate::counters::WorkerCounters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CtStats {
    /// Entries created (new connections and pickups).
    pub created: u64,
    /// Of those, TCP/echo mid-stream pickups.
    pub picked_up: u64,
    /// ICMP errors passed as related.
    pub related: u64,
    /// Entries removed because a newer table denies them (on hit or by sweep).
    pub revoked: u64,
    /// Entries removed on expiry (sweep, reclaim, or a hit on an expired entry).
    pub expired: u64,
    /// Embryonic or closed entries evicted to make room.
    pub evicted: u64,
    /// New connections refused because the table was full of live entries
    /// (or the pod they came from held its share of it: `over_share`).
    pub full: u64,
    /// Of those, refused because the pod they came from held its whole share
    /// of the table ([`Conntrack::with_pod_share`]).
    pub over_share: u64,
}

/// [`Entry::owner`] of an entry that counts against no pod's share.
const NO_OWNER: u16 = u16::MAX;

/// Canonical key: endpoint `a` is the smaller of (address, port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    a: u128,
    b: u128,
    /// proto | port_a << 16 | port_b << 32 (the family is in the addresses, see [`Addr`])
    meta: u64,
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(self.a);
        h.write_u128(self.b);
        h.write_u64(self.meta);
    }
}

/// How the endpoints of a flow are ordered in its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// By (address, port): both directions of a connection give one key.
    Canonical,
    /// ICMP echo request: the requester (the source) is endpoint `a`.
    EchoRequest,
    /// ICMP echo reply: the requester (the destination) is endpoint `a`.
    EchoReply,
}

impl Order {
    /// The order of a packet's flow: echo by its message type. Keying echo by
    /// role keeps a request and the reply to it on one entry and a request in
    /// the other direction on another, also for identifier 0, where the ports
    /// of a request `(id, 0)` and of a reply `(0, id)` are both `(0, 0)` and
    /// only the type tells them apart (Linux keeps the ICMP type in its
    /// tuple for the same reason).
    #[inline]
    fn of_packet(pkt: &IpPacket) -> Order {
        match pkt.l4 {
            L4::EchoRequest => Order::EchoRequest,
            L4::EchoReply => Order::EchoReply,
            _ => Order::Canonical,
        }
    }

    /// The order of a flow without its packet (a packet quoted by an ICMP
    /// error, a lookup by flow): an ICMP flow is an echo, a reply when its
    /// ports are `(0, id)` with `id != 0`, else a request. With identifier 0
    /// it may be either: the second value is the other reading.
    #[inline]
    fn of_flow(f: &Flow) -> (Order, Option<Order>) {
        match f.proto {
            proto::ICMP | proto::ICMPV6 => match (f.src_port, f.dst_port) {
                (0, 0) => (Order::EchoRequest, Some(Order::EchoReply)),
                (0, _) => (Order::EchoReply, None),
                _ => (Order::EchoRequest, None),
            },
            _ => (Order::Canonical, None),
        }
    }
}

/// The key of a flow (see [`Order`]) and whether the flow's source is endpoint `a`.
#[inline]
fn key_of(f: &Flow, order: Order) -> (Key, bool) {
    let (s, d) = (f.src.0, f.dst.0);
    let src_is_a = match order {
        Order::Canonical => (s, f.src_port) <= (d, f.dst_port),
        Order::EchoRequest => true,
        Order::EchoReply => false,
    };
    let (a, pa, b, pb) =
        if src_is_a { (s, f.src_port, d, f.dst_port) } else { (d, f.dst_port, s, f.src_port) };
    let meta = u64::from(f.proto) | (u64::from(pa) << 16) | (u64::from(pb) << 32);
    (Key { a, b, meta }, src_is_a)
}

/// A slot of the slab.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Key,
    hash: u64,
    expires: u64,
    generation: u64,
    state: State,
    /// The initiator is endpoint `a` of the key.
    orig_is_a: bool,
    /// A packet from the responder has passed.
    replied: bool,
    /// Picked up mid-stream: the orientation is the first packet seen's,
    /// not known to be the opener's.
    pickup: bool,
    /// The pod port whose share this entry counts against, or [`NO_OWNER`].
    owner: u16,
    /// FIN seen: bit 0 from the initiator, bit 1 from the responder.
    fins: u8,
}

impl Entry {
    /// Does `policy` still allow this connection? A TCP connection picked
    /// up mid-stream is oriented as the first segment seen after the pickup,
    /// which says nothing about who opened it (after a restart the server
    /// may speak first, and may be allowed to reach the client too). When
    /// the recorded orientation is denied, the connection was picked up from
    /// its server's side by the look of its ports (the recorded initiator
    /// has the lower port: a service's, against an ephemeral one), both ends
    /// have spoken (so it is no forgery), and the other orientation is
    /// allowed, the entry is turned round instead of revoked: a policy change
    /// that denies only the wrong orientation does not cut the connection.
    /// A pickup oriented client first keeps its orientation, and is revoked
    /// as any connection is.
    fn still_allowed<P: Policy>(&mut self, policy: &P) -> bool {
        let flow = self.original();
        if policy.allows(&flow) {
            return true;
        }
        let server_first = flow.proto == crate::parse::proto::TCP && flow.src_port < flow.dst_port;
        // `allows`, not `allows_reverse`: both ends have spoken, so the other
        // orientation is judged as a connection opened that way would be (the
        // node's exemption included, as for any re-check).
        if self.pickup && self.replied && server_first && policy.allows(&flow.reversed()) {
            self.orig_is_a = !self.orig_is_a;
            // The FIN bits are per role (initiator, responder): swapped with them.
            self.fins = (self.fins & 1) << 1 | (self.fins >> 1) & 1;
            return true;
        }
        false
    }

    const FREE: Entry = Entry {
        key: Key { a: 0, b: 0, meta: 0 },
        hash: 0,
        expires: 0,
        generation: 0,
        state: State::Free,
        orig_is_a: true,
        replied: false,
        pickup: false,
        owner: NO_OWNER,
        fins: 0,
    };

    /// The initiator's flow.
    fn original(&self) -> Flow {
        let k = &self.key;
        let pa = (k.meta >> 16) as u16;
        let pb = (k.meta >> 32) as u16;
        let (a, b) = (Addr(k.a), Addr(k.b));
        let (src, sp, dst, dp) = if self.orig_is_a { (a, pa, b, pb) } else { (b, pb, a, pa) };
        Flow { src, dst, proto: k.meta as u8, src_port: sp, dst_port: dp }
    }

    /// May this entry be evicted for a new connection before it expires?
    /// Not once both sides have spoken (TCP), or once assured (datagrams).
    /// ICMP echo always may (as in Linux, which never assures it): each
    /// ping is its own exchange, and pings with fresh identifiers must not
    /// be able to pin the table.
    ///
    /// A TCP connection is protected once Established: a SYN-ACK alone
    /// (`SynReceived`) does not count, or a flood of spoofed SYNs to a
    /// listening pod, each answered, would pin the table for the handshake
    /// timeout (Linux early drop likewise takes any connection not yet assured).
    #[inline]
    fn evictable(&self) -> bool {
        !self.replied
            || matches!(
                self.state,
                State::SynSent | State::SynReceived | State::Closed | State::Replied | State::Echo
            )
    }
}

/// A read-only view of one tracked connection (for tests, `explain`, dumps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The initiator's flow.
    pub original: Flow,
    /// State.
    pub state: State,
    /// The responder has answered.
    pub replied: bool,
    /// Expiry time (ns).
    pub expires: u64,
    /// Table generation last checked against.
    pub generation: u64,
}

/// What a packet that found its key in the index turned out to be.
enum Hit {
    /// Decided as a packet of the tracked connection.
    Done(Outcome),
    /// The entry had expired (counted): remove it, treat the packet as new.
    Expired,
    /// A bare SYN that opens a new connection on the entry's 4-tuple: treat it
    /// as new, replacing the entry only if it is admitted.
    NewSyn,
}

/// Direction of a packet relative to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Orig,
    Reply,
}

/// A worker-local connection table. See the module documentation.
pub struct Conntrack {
    slots: Box<[Entry]>,
    index: HashTable<u32>,
    free: Vec<u32>,
    hasher: DefaultHashBuilder,
    timeouts: TimeoutsNs,
    loose_tcp: bool,
    reverse_pickup: bool,
    reclaim_cursor: usize,
    expire_cursor: usize,
    revalidate_cursor: usize,
    /// Entries per owner (pod port), and the most one may hold.
    owned: Vec<u32>,
    share: u32,
    stats: CtStats,
}

impl Conntrack {
    /// A table of `capacity` connections (at least 1). All memory is
    /// allocated here. `loose_tcp` enables mid-stream pickup.
    pub fn new(capacity: usize, timeouts: &Timeouts, loose_tcp: bool) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Conntrack {
            slots: vec![Entry::FREE; capacity].into_boxed_slice(),
            // Twice the capacity: see the module doc (no growth, rehash in place).
            index: HashTable::with_capacity(capacity * 2),
            // Popped from the end: slot 0 first.
            free: (0..capacity as u32).rev().collect(),
            hasher: DefaultHashBuilder::default(),
            timeouts: TimeoutsNs::new(timeouts),
            loose_tcp,
            reverse_pickup: false,
            reclaim_cursor: 0,
            expire_cursor: 0,
            revalidate_cursor: 0,
            owned: Vec::new(),
            share: u32::MAX,
            stats: CtStats::default(),
        }
    }

    /// Caps the entries that new connections from one pod port may hold at
    /// `percent` of the table (at least one), for `ports` ports: a pod that
    /// opens connections faster than they time out then fills its share, not
    /// the whole table, and connections of other pods (and to pods from
    /// outside, which count against no share) still get slots. 100: no cap.
    pub fn with_pod_share(mut self, ports: usize, percent: u8) -> Self {
        if percent < 100 {
            self.owned = vec![0; ports];
            let share = self.slots.len() * usize::from(percent) / 100;
            self.share = share.clamp(1, u32::MAX as usize) as u32;
        }
        self
    }

    /// Also picks up a mid-stream TCP packet, or an ICMP echo reply, that
    /// policy allows only in the reverse orientation, as the reply of a
    /// connection its destination opened (see the module documentation for
    /// the risk). Default off.
    pub fn with_reverse_pickup(mut self, on: bool) -> Self {
        self.reverse_pickup = on;
        self
    }

    /// Maximum number of connections.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Connections currently held (some may have expired but not yet been swept).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// No connections held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Event counts since construction.
    pub fn stats(&self) -> &CtStats {
        &self.stats
    }

    /// The connection `flow` belongs to (in either direction), if tracked.
    /// An ICMP flow is an echo request, or a reply if its ports are `(0, id)`
    /// with `id != 0` (an identifier-0 flow is read as a request).
    pub fn get(&self, flow: &Flow) -> Option<ConnInfo> {
        let (key, _) = key_of(flow, Order::of_flow(flow).0);
        let slot = self.find(&key, self.hasher.hash_one(key))?;
        let e = &self.slots[slot];
        Some(ConnInfo {
            original: e.original(),
            state: e.state,
            replied: e.replied,
            expires: e.expires,
            generation: e.generation,
        })
    }

    #[inline]
    fn find(&self, key: &Key, hash: u64) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| slots.get(i as usize).is_some_and(|e| e.key == *key && e.state != State::Free))
            .map(|&i| i as usize)
    }

    fn remove(&mut self, slot: usize) {
        let Some(e) = self.slots.get_mut(slot) else {
            return;
        };
        if e.state == State::Free {
            return;
        }
        let hash = e.hash;
        e.state = State::Free;
        if let Some(n) = self.owned.get_mut(usize::from(e.owner)) {
            *n = n.saturating_sub(1);
        }
        if let Ok(occ) = self.index.find_entry(hash, |&i| i as usize == slot) {
            occ.remove();
        }
        self.free.push(slot as u32);
    }

    /// Decides one IP packet (not a later fragment: those have no ports and
    /// are handled by [`crate::frag`]). `generation` identifies `policy`.
    pub fn packet<P: Policy>(&mut self, pkt: &IpPacket, policy: &P, generation: u64, now: u64) -> Outcome {
        match pkt.l4 {
            L4::IcmpError(inner) => return self.icmp_error(pkt, inner, policy, generation, now),
            // Never tracked, and never part of an echo connection (its ports,
            // (0, 0), are those of an echo with identifier 0).
            L4::IcmpOther => {
                return if policy.allows(&pkt.flow) {
                    Outcome::Pass(CtPass::Untracked)
                } else {
                    Outcome::Drop(CtDrop::Policy)
                };
            }
            _ => {}
        }
        let flow = &pkt.flow;
        let (key, src_is_a) = key_of(flow, Order::of_packet(pkt));
        let hash = self.hasher.hash_one(key);
        let mut reuse = None;
        if let Some(slot) = self.find(&key, hash) {
            match self.hit(slot, src_is_a, pkt, policy, generation, now) {
                Hit::Done(o) => return o,
                Hit::Expired => self.remove(slot), // evaluate as new
                // Evaluate as new; the old entry gives up its slot only if the
                // SYN is admitted (a denied SYN, maybe spoofed, must not tear
                // down the connection it collides with).
                Hit::NewSyn => reuse = Some(slot),
            }
        }
        self.miss(pkt, key, hash, src_is_a, reuse, policy, generation, now)
    }

    /// A packet of a tracked connection.
    #[inline]
    fn hit<P: Policy>(
        &mut self,
        slot: usize,
        src_is_a: bool,
        pkt: &IpPacket,
        policy: &P,
        generation: u64,
        now: u64,
    ) -> Hit {
        let timeouts = self.timeouts;
        let Some(e) = self.slots.get_mut(slot) else {
            return Hit::Expired;
        };
        if e.expires <= now {
            self.stats.expired += 1;
            return Hit::Expired;
        }
        let dir = if src_is_a == e.orig_is_a { Dir::Orig } else { Dir::Reply };
        let mut stray_syn = false;
        if let L4::Tcp(flags) = pkt.l4 {
            if flags.is_syn_only() {
                match (e.state, dir) {
                    // A retransmitted SYN.
                    (State::SynSent, Dir::Orig) => {}
                    // A stray SYN from the initiator of an open connection (a
                    // duplicate, or a client that lost its state: the server's
                    // challenge ACK gets the client's RST, which closes the
                    // entry): passed, changing nothing, as Linux ignores it.
                    // Replacing the entry would leave the live connection in
                    // SynSent, which only a SYN-ACK leaves, on the handshake timeout.
                    (State::SynReceived | State::Established, Dir::Orig) => stray_syn = true,
                    // A new connection on the 4-tuple of one that is over, or
                    // a SYN from the responder's side: decided afresh.
                    _ => return Hit::NewSyn,
                }
            }
        }
        let mut dir = dir;
        if e.generation != generation {
            let orientation = e.orig_is_a;
            if !e.still_allowed(policy) {
                self.stats.revoked += 1;
                self.remove(slot);
                return Hit::Done(Outcome::Drop(CtDrop::Revoked));
            }
            e.generation = generation;
            // Turned round: a bare SYN taken for the initiator's is then the
            // responder's, decided afresh.
            if e.orig_is_a != orientation {
                if stray_syn {
                    return Hit::NewSyn;
                }
                dir = if dir == Dir::Orig { Dir::Reply } else { Dir::Orig };
            }
        }
        if stray_syn {
            return Hit::Done(Outcome::Pass(CtPass::Tracked));
        }
        if dir == Dir::Reply {
            e.replied = true;
        }
        e.state = match (e.state, pkt.l4) {
            (s, L4::Tcp(f)) => tcp_next(s, dir, f, &mut e.fins),
            (State::Unreplied, _) if dir == Dir::Reply => State::Replied,
            (State::Replied, _) if dir == Dir::Orig => State::Assured,
            (s, _) => s,
        };
        e.expires = now.saturating_add(timeouts.of(e.state));
        Hit::Done(Outcome::Pass(CtPass::Tracked))
    }

    /// A packet without a live entry, or a bare SYN on the 4-tuple of the
    /// entry in slot `reuse` (which it replaces only if admitted).
    #[allow(clippy::too_many_arguments)]
    fn miss<P: Policy>(
        &mut self,
        pkt: &IpPacket,
        key: Key,
        hash: u64,
        src_is_a: bool,
        reuse: Option<usize>,
        policy: &P,
        generation: u64,
        now: u64,
    ) -> Outcome {
        let flow = &pkt.flow;
        // (initial state, is the packet's source the initiator?, picked up?)
        let (state, src_initiates, pickup) = match pkt.l4 {
            L4::Tcp(f) if f.is_syn_only() => {
                if !policy.allows(flow) {
                    return Outcome::Drop(CtDrop::Policy);
                }
                (State::SynSent, true, false)
            }
            L4::Tcp(f) => {
                let forward = policy.allows(flow);
                let backward = !forward && policy.allows_reverse(&flow.reversed());
                if !forward && !backward {
                    return Outcome::Drop(CtDrop::Policy);
                }
                if f.rst() {
                    // Nothing to track: the connection is over (a reset of a
                    // connection either side may have opened ends nothing else).
                    // Allowed only as a reply, it is judged as any reply-only
                    // segment: without state nothing tells it from a forged one.
                    return if forward || self.reverse_pickup {
                        Outcome::Pass(CtPass::Untracked)
                    } else {
                        Outcome::Drop(CtDrop::NoConnection)
                    };
                }
                if !self.loose_tcp || (backward && !self.reverse_pickup) {
                    // Not picked up: no pickup at all, or a reply-only segment
                    // that may be forged (module documentation).
                    return Outcome::Drop(CtDrop::NoConnection);
                }
                (State::Established, forward, true)
            }
            L4::EchoReply => {
                if policy.allows(flow) {
                    // Allowed in its own direction: nothing to track.
                    return Outcome::Pass(CtPass::Untracked);
                } else if self.reverse_pickup && policy.allows_reverse(&flow.reversed()) {
                    (State::Echo, false, true)
                } else {
                    // A reply to no request seen: Linux conntrack calls it
                    // invalid. Passing it because policy would allow the
                    // request lets any pod send unsolicited replies into an
                    // isolated pod, as a reply-only TCP segment would.
                    return Outcome::Drop(CtDrop::Policy);
                }
            }
            L4::EchoRequest => {
                if !policy.allows(flow) {
                    return Outcome::Drop(CtDrop::Policy);
                }
                (State::Echo, true, false)
            }
            L4::IcmpOther | L4::IcmpError(_) => {
                return if policy.allows(flow) {
                    Outcome::Pass(CtPass::Untracked)
                } else {
                    Outcome::Drop(CtDrop::Policy)
                };
            }
            L4::Udp | L4::Sctp | L4::Other => {
                if !policy.allows(flow) {
                    return Outcome::Drop(CtDrop::Policy);
                }
                (State::Unreplied, true, false)
            }
        };
        // A pod at its share of the table opens nothing more (replacing one of
        // its own entries is no more).
        let owner = if self.owned.is_empty() { None } else { policy.owner() };
        if let Some(o) = owner {
            if self.owned.get(usize::from(o)).is_some_and(|n| *n >= self.share)
                && !reuse
                    .and_then(|r| self.slots.get(r))
                    .is_some_and(|e| e.state != State::Free && e.owner == o)
            {
                self.stats.full += 1;
                self.stats.over_share += 1;
                return Outcome::Drop(CtDrop::Full);
            }
        }
        // A replaced entry keeps its slot and its index entry (same key, same hash).
        let indexed = reuse.is_some();
        let Some(slot) = reuse.or_else(|| self.free.pop().map(|s| s as usize)).or_else(|| self.reclaim(now))
        else {
            self.stats.full += 1;
            return Outcome::Drop(CtDrop::Full);
        };
        let orig_is_a = src_is_a == src_initiates;
        let e = Entry {
            key,
            hash,
            expires: now.saturating_add(self.timeouts.of(state)),
            generation,
            state,
            orig_is_a,
            // A picked-up connection counts as embryonic until the other side speaks;
            // an echo reply picked up *is* the other side.
            replied: pickup && !src_initiates,
            pickup,
            owner: owner.unwrap_or(NO_OWNER),
            fins: 0,
        };
        let Some(dst) = self.slots.get_mut(slot) else {
            return Outcome::Drop(CtDrop::Full);
        };
        // The entry replaced (a new SYN on its 4-tuple) leaves its owner's share.
        if indexed && dst.state != State::Free {
            if let Some(n) = self.owned.get_mut(usize::from(dst.owner)) {
                *n = n.saturating_sub(1);
            }
        }
        *dst = e;
        if let Some(n) = owner.and_then(|o| self.owned.get_mut(usize::from(o))) {
            *n += 1;
        }
        if !indexed {
            let slots = &self.slots;
            self.index.insert_unique(hash, slot as u32, |&i| slots.get(i as usize).map_or(0, |e| e.hash));
        }
        self.stats.created += 1;
        // Counted only now: the connection is in the table.
        policy.admitted(&if src_initiates { *flow } else { flow.reversed() });
        if pickup {
            self.stats.picked_up += 1;
            Outcome::Pass(CtPass::PickedUp)
        } else {
            Outcome::Pass(CtPass::New)
        }
    }

    /// An ICMP error passes as related when the packet it quotes belongs to
    /// a tracked connection and the error goes back to that packet's sender
    /// (RFC 792, RFC 4443 §2.4: errors are sent to the offending packet's source).
    fn icmp_error<P: Policy>(
        &mut self,
        pkt: &IpPacket,
        inner: Option<crate::parse::Flow>,
        policy: &P,
        generation: u64,
        now: u64,
    ) -> Outcome {
        if let Some(inner) = inner {
            if inner.src == pkt.flow.dst {
                // A quoted identifier-0 echo may be a request or a reply: either
                // reading that finds a live connection relates the error to it.
                let (order, other) = Order::of_flow(&inner);
                for order in std::iter::once(order).chain(other) {
                    if let Some(o) = self.related(&inner, order, policy, generation, now) {
                        return o;
                    }
                }
            }
        }
        if policy.allows(&pkt.flow) {
            Outcome::Pass(CtPass::Untracked)
        } else {
            Outcome::Drop(CtDrop::Policy)
        }
    }

    /// The outcome of an ICMP error quoting `inner` (read in `order`) if
    /// `inner` belongs to a live connection: related, or revoked.
    fn related<P: Policy>(
        &mut self,
        inner: &Flow,
        order: Order,
        policy: &P,
        generation: u64,
        now: u64,
    ) -> Option<Outcome> {
        let (key, _) = key_of(inner, order);
        let slot = self.find(&key, self.hasher.hash_one(key))?;
        let e = self.slots.get_mut(slot)?;
        if e.expires <= now {
            return None;
        }
        if e.generation != generation {
            if !e.still_allowed(policy) {
                self.stats.revoked += 1;
                self.remove(slot);
                return Some(Outcome::Drop(CtDrop::Revoked));
            }
            e.generation = generation;
        }
        self.stats.related += 1;
        Some(Outcome::Pass(CtPass::Related))
    }

    /// Frees a slot for a new connection when none is free: the first expired
    /// entry among the next [`RECLAIM_SCAN`] slots, else the first evictable one.
    fn reclaim(&mut self, now: u64) -> Option<usize> {
        let n = self.slots.len();
        let mut candidate = None;
        for _ in 0..RECLAIM_SCAN.min(n) {
            let i = self.reclaim_cursor;
            self.reclaim_cursor = if i + 1 == n { 0 } else { i + 1 };
            let Some(e) = self.slots.get(i) else { continue };
            if e.state == State::Free {
                continue;
            }
            if e.expires <= now {
                self.stats.expired += 1;
                self.remove(i);
                return self.free.pop().map(|s| s as usize);
            }
            if candidate.is_none() && e.evictable() {
                candidate = Some(i);
            }
        }
        let i = candidate?;
        self.stats.evicted += 1;
        self.remove(i);
        self.free.pop().map(|s| s as usize)
    }

    /// Removes expired entries among the next `budget` slots (a rotating
    /// cursor). Call once per batch to keep occupancy honest. Returns the
    /// number removed.
    pub fn expire_step(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let i = self.expire_cursor;
            self.expire_cursor = if i + 1 == n { 0 } else { i + 1 };
            if let Some(e) = self.slots.get(i) {
                if e.state != State::Free && e.expires <= now {
                    self.remove(i);
                    removed += 1;
                }
            }
        }
        self.stats.expired += removed as u64;
        removed
    }

    /// Re-checks up to `budget` slots (rotating cursor) whose entries were
    /// checked against an older generation; removes those now denied.
    /// Returns the number revoked.
    pub fn revalidate_step<P: Policy>(&mut self, policy: &P, generation: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut revoked = 0;
        for _ in 0..budget.min(n) {
            let i = self.revalidate_cursor;
            self.revalidate_cursor = if i + 1 == n { 0 } else { i + 1 };
            revoked += usize::from(self.revalidate_slot(i, policy, generation));
        }
        revoked
    }

    /// Re-checks every entry against `policy` (see [`Conntrack::revalidate_step`]).
    /// O(capacity): for idle time or tests, not between packets of a busy worker.
    pub fn revalidate_all<P: Policy>(&mut self, policy: &P, generation: u64) -> usize {
        let mut revoked = 0;
        for i in 0..self.slots.len() {
            revoked += usize::from(self.revalidate_slot(i, policy, generation));
        }
        revoked
    }

    fn revalidate_slot<P: Policy>(&mut self, i: usize, policy: &P, generation: u64) -> bool {
        let Some(e) = self.slots.get_mut(i) else {
            return false;
        };
        if e.state == State::Free || e.generation == generation {
            return false;
        }
        if e.still_allowed(policy) {
            e.generation = generation;
            false
        } else {
            self.stats.revoked += 1;
            self.remove(i);
            true
        }
    }

    /// Forgets every connection (keeps the memory).
    pub fn clear(&mut self) {
        self.index.clear();
        self.free.clear();
        self.owned.fill(0);
        for (i, e) in self.slots.iter_mut().enumerate().rev() {
            *e = Entry::FREE;
            self.free.push(i as u32);
        }
    }
}

/// TCP state after a packet with `flags` in direction `dir` (bare SYNs were
/// handled by the caller).
#[inline]
fn tcp_next(s: State, dir: Dir, flags: TcpFlags, fins: &mut u8) -> State {
    if flags.rst() || s == State::Closed {
        // Reset, or over already (a FIN after a RST reopens nothing).
        return State::Closed;
    }
    if flags.fin() {
        *fins |= if dir == Dir::Orig { 1 } else { 2 };
        return if *fins == 3 { State::Closed } else { State::Closing };
    }
    match (s, dir) {
        (State::SynSent, Dir::Reply) if flags.syn() && flags.ack() => State::SynReceived,
        (State::SynReceived, Dir::Orig) if flags.ack() && !flags.syn() => State::Established,
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{proto, Fragment, TcpFlags as F};
    use std::cell::Cell;

    const SEC: u64 = NANOS_PER_SEC;

    fn ip(s: &str) -> Addr {
        Addr::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    fn tcp(src: &str, sp: u16, dst: &str, dp: u16, flags: u8) -> IpPacket {
        IpPacket {
            flow: Flow { src: ip(src), dst: ip(dst), proto: proto::TCP, src_port: sp, dst_port: dp },
            l4: L4::Tcp(F(flags)),
            fragment: Fragment::None,
        }
    }

    fn udp(src: &str, sp: u16, dst: &str, dp: u16) -> IpPacket {
        IpPacket {
            flow: Flow { src: ip(src), dst: ip(dst), proto: proto::UDP, src_port: sp, dst_port: dp },
            l4: L4::Udp,
            fragment: Fragment::None,
        }
    }

    /// Allows connections to 10.0.0.2 port 80 (TCP) and 53 (UDP), ICMP to
    /// 10.0.0.2; counts calls. `deny_all` flips it to deny everything.
    struct ToServer {
        deny_all: Cell<bool>,
        calls: Cell<u32>,
        /// The flows [`Policy::admitted`] was told about.
        admitted: std::cell::RefCell<Vec<Flow>>,
    }

    impl ToServer {
        fn new() -> Self {
            ToServer { deny_all: Cell::new(false), calls: Cell::new(0), admitted: Default::default() }
        }
    }

    impl Policy for ToServer {
        fn allows(&self, f: &Flow) -> bool {
            self.calls.set(self.calls.get() + 1);
            !self.deny_all.get()
                && f.dst == ip("10.0.0.2")
                && match f.proto {
                    proto::TCP => f.dst_port == 80,
                    proto::UDP => f.dst_port == 53,
                    proto::ICMP => true,
                    _ => false,
                }
        }

        fn admitted(&self, flow: &Flow) {
            self.admitted.borrow_mut().push(*flow);
        }
    }

    const C: &str = "10.0.0.1";
    const S: &str = "10.0.0.2";

    #[test]
    fn tcp_handshake_and_replies() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let syn = tcp(C, 40000, S, 80, F::SYN);
        assert_eq!(ct.packet(&syn, &p, 1, 0), Outcome::Pass(CtPass::New));
        assert_eq!(ct.get(&syn.flow).unwrap().state, State::SynSent);
        // SYN retransmission passes without a new policy lookup.
        let calls = p.calls.get();
        assert_eq!(ct.packet(&syn, &p, 1, 1), Outcome::Pass(CtPass::Tracked));
        assert_eq!(p.calls.get(), calls);
        let synack = tcp(S, 80, C, 40000, F::SYN | F::ACK);
        assert_eq!(ct.packet(&synack, &p, 1, 2), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.get(&syn.flow).unwrap().state, State::SynReceived);
        let ack = tcp(C, 40000, S, 80, F::ACK);
        assert_eq!(ct.packet(&ack, &p, 1, 3), Outcome::Pass(CtPass::Tracked));
        let info = ct.get(&syn.flow).unwrap();
        assert_eq!(info.state, State::Established);
        assert!(info.replied);
        assert_eq!(info.original, syn.flow);
        assert_eq!(info.expires, 3 + 21_600 * SEC);
        // Server → client data: a reply, passes though policy would deny it.
        let data = tcp(S, 80, C, 40000, F::ACK | F::PSH);
        assert!(!p.allows(&data.flow));
        assert_eq!(ct.packet(&data, &p, 1, 4), Outcome::Pass(CtPass::Tracked));
        assert_eq!(p.calls.get(), calls + 1); // only the assert above
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn denied_syn_creates_nothing() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let syn = tcp(C, 40000, S, 22, F::SYN);
        assert_eq!(ct.packet(&syn, &p, 1, 0), Outcome::Drop(CtDrop::Policy));
        assert!(ct.is_empty());
    }

    #[test]
    fn fin_and_rst_shorten_timeouts() {
        let p = ToServer::new();
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, &t, true);
        let syn = tcp(C, 40000, S, 80, F::SYN);
        ct.packet(&syn, &p, 1, 0);
        ct.packet(&tcp(S, 80, C, 40000, F::SYN | F::ACK), &p, 1, 0);
        ct.packet(&tcp(C, 40000, S, 80, F::ACK), &p, 1, 0);
        ct.packet(&tcp(C, 40000, S, 80, F::FIN | F::ACK), &p, 1, 10);
        let i = ct.get(&syn.flow).unwrap();
        assert_eq!((i.state, i.expires), (State::Closing, 10 + 120 * SEC));
        ct.packet(&tcp(S, 80, C, 40000, F::FIN | F::ACK), &p, 1, 20);
        let i = ct.get(&syn.flow).unwrap();
        assert_eq!((i.state, i.expires), (State::Closed, 20 + 10 * SEC));
        // After the closed timeout the entry is gone: a late ACK is a pickup.
        let late = tcp(C, 40000, S, 80, F::ACK);
        assert_eq!(ct.packet(&late, &p, 1, 21 + 10 * SEC), Outcome::Pass(CtPass::PickedUp));
        // RST moves straight to Closed.
        ct.packet(&tcp(S, 80, C, 40000, F::RST), &p, 1, 30 + 10 * SEC);
        assert_eq!(ct.get(&syn.flow).unwrap().state, State::Closed);
    }

    #[test]
    fn handshake_expires() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), false);
        let syn = tcp(C, 40000, S, 80, F::SYN);
        ct.packet(&syn, &p, 1, 0);
        let synack = tcp(S, 80, C, 40000, F::SYN | F::ACK);
        // 30 s later the half-open entry is dead; without pickup the SYN-ACK drops.
        assert_eq!(ct.packet(&synack, &p, 1, 30 * SEC), Outcome::Drop(CtDrop::NoConnection));
        assert_eq!(ct.stats().expired, 1);
    }

    #[test]
    fn pickup_follows_the_packet_unless_reverse_pickup_is_on() {
        let p = ToServer::new();
        // By default a mid-stream packet is judged in its own direction: the
        // server's segment, allowed only as a reply, is dropped and tracks nothing.
        let mut strict = Conntrack::new(16, &Timeouts::default(), true);
        let reply = tcp(S, 80, C, 40000, F::ACK);
        assert_eq!(strict.packet(&reply, &p, 1, 0), Outcome::Drop(CtDrop::NoConnection));
        assert!(strict.is_empty());
        // The client's segment picks the connection up; then the server's passes as its reply.
        let data = tcp(C, 40000, S, 80, F::ACK);
        assert_eq!(strict.packet(&data, &p, 1, 0), Outcome::Pass(CtPass::PickedUp));
        assert_eq!(strict.get(&data.flow).unwrap().original, data.flow);
        assert_eq!(strict.packet(&reply, &p, 1, 0), Outcome::Pass(CtPass::Tracked));

        let mut ct = Conntrack::new(16, &Timeouts::default(), true).with_reverse_pickup(true);
        // With reverse pickup the first packet seen may be the server's reply: allowed backwards.
        assert_eq!(ct.packet(&reply, &p, 1, 0), Outcome::Pass(CtPass::PickedUp));
        let i = ct.get(&reply.flow).unwrap();
        assert_eq!(i.original, reply.flow.reversed());
        assert_eq!(i.state, State::Established);
        assert!(i.replied); // the responder spoke
                            // A non-SYN from a disallowed pair is dropped.
        let stray = tcp(C, 40000, S, 22, F::ACK);
        assert_eq!(ct.packet(&stray, &p, 1, 0), Outcome::Drop(CtDrop::Policy));
        // RST without entry passes if allowed, creates nothing.
        let rst = tcp(C, 40001, S, 80, F::RST);
        assert_eq!(ct.packet(&rst, &p, 1, 0), Outcome::Pass(CtPass::Untracked));
        assert_eq!(ct.len(), 1);
    }

    /// A policy that allows everything, saying the packets come from `owner`.
    struct From(Option<u16>);
    impl Policy for From {
        fn allows(&self, _: &Flow) -> bool {
            true
        }
        fn owner(&self) -> Option<u16> {
            self.0
        }
    }

    /// A pod that pins entries (assured UDP flows) fills its share of the
    /// table, not the table: other pods, and connections from outside, still
    /// get slots; once its entries go, it may open more.
    #[test]
    fn one_pod_fills_its_share_of_the_table_not_the_table() {
        let mut ct = Conntrack::new(8, &Timeouts::default(), true).with_pod_share(3, 50);
        let (a, b) = (From(Some(0)), From(Some(1)));
        let assured = |ct: &mut Conntrack, p: &From, port: u16, now: u64| {
            let q = udp(C, port, S, 53);
            let r = ct.packet(&q, p, 1, now);
            if r == Outcome::Pass(CtPass::New) {
                ct.packet(&udp(S, 53, C, port), p, 1, now);
                ct.packet(&q, p, 1, now);
            }
            r
        };
        for port in 0..4 {
            assert_eq!(assured(&mut ct, &a, 1000 + port, 0), Outcome::Pass(CtPass::New));
        }
        // Pod A holds its four slots (half of eight): its fifth is refused.
        assert_eq!(assured(&mut ct, &a, 1004, 0), Outcome::Drop(CtDrop::Full));
        assert_eq!((ct.stats().full, ct.stats().over_share), (1, 1));
        // Pod B, and a connection from no pod, still get slots.
        assert_eq!(assured(&mut ct, &b, 2000, 0), Outcome::Pass(CtPass::New));
        assert_eq!(assured(&mut ct, &From(None), 3000, 0), Outcome::Pass(CtPass::New));
        // A's packets on its own connections still pass.
        assert_eq!(ct.packet(&udp(C, 1000, S, 53), &a, 1, 1), Outcome::Pass(CtPass::Tracked));
        // Once A's flows time out (assured UDP: 120 s), it may open again.
        assert_eq!(ct.expire_step(200 * SEC, 8), 6);
        assert_eq!(assured(&mut ct, &a, 1004, 200 * SEC), Outcome::Pass(CtPass::New));
        // A pod at its share may still open a connection on the 4-tuple of one of
        // its own that is over (the new SYN replaces the entry: no extra one).
        let mut ct = Conntrack::new(4, &Timeouts::default(), true).with_pod_share(3, 50);
        let syn = |port| tcp(C, port, S, 80, F::SYN);
        for port in [4000, 4001] {
            assert_eq!(ct.packet(&syn(port), &a, 1, 0), Outcome::Pass(CtPass::New));
            assert_eq!(
                ct.packet(&tcp(S, 80, C, port, F::SYN | F::ACK), &a, 1, 0),
                Outcome::Pass(CtPass::Tracked)
            );
            assert_eq!(ct.packet(&tcp(C, port, S, 80, F::ACK), &a, 1, 0), Outcome::Pass(CtPass::Tracked));
        }
        assert_eq!(ct.packet(&syn(4002), &a, 1, 0), Outcome::Drop(CtDrop::Full));
        assert_eq!(ct.packet(&tcp(C, 4000, S, 80, F::RST), &a, 1, 1), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.packet(&syn(4000), &a, 1, 2), Outcome::Pass(CtPass::New));
        assert_eq!(ct.packet(&syn(4002), &a, 1, 2), Outcome::Drop(CtDrop::Full), "still at its share");
        // Another pod's SYN on that 4-tuple would take the entry from A.
        assert_eq!(ct.packet(&tcp(C, 4001, S, 80, F::RST), &a, 1, 3), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.packet(&syn(4001), &b, 1, 4), Outcome::Pass(CtPass::New));
        assert_eq!(ct.packet(&syn(4002), &a, 1, 4), Outcome::Pass(CtPass::New), "A gave one up");
        // Without a share (100%) one pod may take the whole table.
        let mut ct = Conntrack::new(8, &Timeouts::default(), true).with_pod_share(3, 100);
        for port in 0..8 {
            assert_eq!(assured(&mut ct, &a, 1000 + port, 0), Outcome::Pass(CtPass::New));
        }
    }

    /// A reset that policy allows only as a reply (the server's, with no
    /// entry) is a reply-only segment: dropped unless reverse pickup is on.
    #[test]
    fn a_reply_only_reset_without_a_connection_is_dropped() {
        let p = ToServer::new();
        let rst = tcp(S, 80, C, 40000, F::RST);
        let mut strict = Conntrack::new(16, &Timeouts::default(), true);
        assert_eq!(strict.packet(&rst, &p, 1, 0), Outcome::Drop(CtDrop::NoConnection));
        // The client's own reset is allowed in its direction and passes.
        let own = tcp(C, 40000, S, 80, F::RST);
        assert_eq!(strict.packet(&own, &p, 1, 0), Outcome::Pass(CtPass::Untracked));
        assert!(strict.is_empty());
        let mut permissive = Conntrack::new(16, &Timeouts::default(), true).with_reverse_pickup(true);
        assert_eq!(permissive.packet(&rst, &p, 1, 0), Outcome::Pass(CtPass::Untracked));
    }

    /// After a restart the server speaks first, in a direction policy allows
    /// too (here, at first, everything): the connection is picked up
    /// oriented server → client. A new table then denies that orientation
    /// but allows client → server: the connection is turned round, not
    /// revoked, on its next packet and in the sweep alike.
    #[test]
    fn a_picked_up_connection_allowed_the_other_way_round_survives_a_new_table() {
        struct Everything;
        impl Policy for Everything {
            fn allows(&self, _: &Flow) -> bool {
                true
            }
        }
        let to_server = ToServer::new();
        let (from_server, from_client) = (tcp(S, 80, C, 40000, F::ACK), tcp(C, 40000, S, 80, F::ACK));
        for sweep in [false, true] {
            let mut ct = Conntrack::new(16, &Timeouts::default(), true);
            assert_eq!(ct.packet(&from_server, &Everything, 1, 0), Outcome::Pass(CtPass::PickedUp));
            assert_eq!(ct.get(&from_server.flow).unwrap().original, from_server.flow);
            assert_eq!(ct.packet(&from_client, &Everything, 1, 1), Outcome::Pass(CtPass::Tracked));
            if sweep {
                assert_eq!(ct.revalidate_all(&to_server, 2), 0, "revoked by the sweep");
            }
            assert_eq!(ct.packet(&from_client, &to_server, 2, 2), Outcome::Pass(CtPass::Tracked));
            assert_eq!(ct.packet(&from_server, &to_server, 2, 3), Outcome::Pass(CtPass::Tracked));
            let i = ct.get(&from_client.flow).unwrap();
            assert_eq!(i.original, from_client.flow, "turned round");
            assert_eq!(i.state, State::Established);
        }
        // An ICMP error quoting it, the first packet after the new table, turns it
        // round too (it is related, not a reason to revoke).
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        ct.packet(&from_server, &Everything, 1, 0);
        ct.packet(&from_client, &Everything, 1, 1);
        let err = IpPacket {
            flow: Flow { src: ip("10.0.0.9"), dst: ip(C), proto: proto::ICMP, src_port: 0, dst_port: 0 },
            l4: L4::IcmpError(Some(from_client.flow)),
            fragment: Fragment::None,
        };
        assert_eq!(ct.packet(&err, &to_server, 2, 2), Outcome::Pass(CtPass::Related));
        assert_eq!(ct.get(&from_client.flow).unwrap().original, from_client.flow);
        // Turned round, a bare SYN from the server is the responder's: decided
        // afresh (and denied), not passed as the initiator's stray SYN.
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        ct.packet(&from_server, &Everything, 1, 0);
        ct.packet(&from_client, &Everything, 1, 1);
        let syn = tcp(S, 80, C, 40000, F::SYN);
        assert_eq!(ct.packet(&syn, &to_server, 2, 2), Outcome::Drop(CtDrop::Policy));
        // Only once both ends have spoken: a pickup the other end never answered
        // is revoked (it may be forged).
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        assert_eq!(ct.packet(&from_server, &Everything, 1, 0), Outcome::Pass(CtPass::PickedUp));
        assert_eq!(ct.revalidate_all(&to_server, 2), 1);
        // A pickup oriented client first (the recorded initiator has the higher,
        // ephemeral port) is taken at its word: when a new table denies it, it is
        // revoked, though the server's side is allowed to reach the client.
        struct FromServer;
        impl Policy for FromServer {
            fn allows(&self, f: &Flow) -> bool {
                f.src == ip(S) && f.src_port == 80
            }
        }
        for sweep in [false, true] {
            let mut ct = Conntrack::new(16, &Timeouts::default(), true);
            assert_eq!(ct.packet(&from_client, &Everything, 1, 0), Outcome::Pass(CtPass::PickedUp));
            assert_eq!(ct.packet(&from_server, &Everything, 1, 1), Outcome::Pass(CtPass::Tracked));
            if sweep {
                assert_eq!(ct.revalidate_all(&FromServer, 2), 1);
            } else {
                assert_eq!(ct.packet(&from_server, &FromServer, 2, 2), Outcome::Drop(CtDrop::Revoked));
            }
        }
        // And a connection whose opening was seen keeps its orientation: the
        // server's connection to the client is revoked when only client → server is allowed.
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let syn = tcp(S, 80, C, 40000, F::SYN);
        assert_eq!(ct.packet(&syn, &Everything, 1, 0), Outcome::Pass(CtPass::New));
        let synack = tcp(C, 40000, S, 80, F::SYN | F::ACK);
        assert_eq!(ct.packet(&synack, &Everything, 1, 1), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.packet(&from_client, &to_server, 2, 2), Outcome::Drop(CtDrop::Revoked));
    }

    /// `Policy::admitted` (what the per-policy counters count) is called once
    /// per connection that gets a slot, with its initiator's flow: never for
    /// probes, packets that track nothing, or connections refused as full.
    #[test]
    fn only_connections_given_a_slot_are_admitted() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(2, &Timeouts::default(), true);
        let icmp_other = IpPacket {
            flow: Flow { src: ip(C), dst: ip(S), proto: proto::ICMP, src_port: 0, dst_port: 0 },
            l4: L4::IcmpOther,
            fragment: Fragment::None,
        };
        let nothing_tracked = [
            (tcp(S, 80, C, 40000, F::ACK), Outcome::Drop(CtDrop::NoConnection)),
            (tcp(C, 40001, S, 80, F::RST), Outcome::Pass(CtPass::Untracked)),
            (icmp_other, Outcome::Pass(CtPass::Untracked)),
            // An echo reply whose request (S -> C) policy denies, allowed itself.
            (echo(C, S, 9, false), Outcome::Pass(CtPass::Untracked)),
            (tcp(C, 40002, S, 22, F::SYN), Outcome::Drop(CtDrop::Policy)),
        ];
        for (pkt, outcome) in &nothing_tracked {
            for _ in 0..3 {
                assert_eq!(ct.packet(pkt, &p, 1, 0), *outcome, "{pkt:?}");
            }
        }
        assert!(ct.is_empty());
        assert_eq!(*p.admitted.borrow(), []);

        // A connection with several packets: once, at its first.
        let syn = tcp(C, 40003, S, 80, F::SYN);
        for pkt in [&syn, &syn, &tcp(S, 80, C, 40003, F::SYN | F::ACK), &tcp(C, 40003, S, 80, F::ACK)] {
            assert!(matches!(ct.packet(pkt, &p, 1, 1), Outcome::Pass(_)));
        }
        // A ping: its request's flow is the connection's.
        let request = echo(C, S, 7, true);
        assert_eq!(ct.packet(&request, &p, 1, 1), Outcome::Pass(CtPass::New));
        assert_eq!(*p.admitted.borrow(), [syn.flow, request.flow]);
        // The echo entry gives way to a new connection (pings never pin the table).
        let syn2 = tcp(C, 40004, S, 80, F::SYN);
        for pkt in [&syn2, &tcp(S, 80, C, 40004, F::SYN | F::ACK), &tcp(C, 40004, S, 80, F::ACK)] {
            assert!(matches!(ct.packet(pkt, &p, 1, 2), Outcome::Pass(_)));
        }
        assert_eq!(*p.admitted.borrow(), [syn.flow, request.flow, syn2.flow]);
        // Full of live entries (two established connections): refused, not admitted.
        assert_eq!(ct.packet(&tcp(C, 40005, S, 80, F::SYN), &p, 1, 3), Outcome::Drop(CtDrop::Full));
        assert_eq!(p.admitted.borrow().len(), 3);
    }

    #[test]
    fn syn_from_responder_side_is_not_a_reply() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let syn = tcp(C, 40000, S, 80, F::SYN);
        ct.packet(&syn, &p, 1, 0);
        ct.packet(&tcp(S, 80, C, 40000, F::SYN | F::ACK), &p, 1, 0);
        ct.packet(&tcp(C, 40000, S, 80, F::ACK), &p, 1, 0);
        // The server (or anyone spoofing it) tries to open a connection *to* the
        // client's port using the tracked 4-tuple: decided by policy (denied) and
        // dropped, and the client's established connection is left alone.
        let backwards = tcp(S, 80, C, 40000, F::SYN);
        assert_eq!(ct.packet(&backwards, &p, 1, 1), Outcome::Drop(CtDrop::Policy));
        let i = ct.get(&backwards.flow).unwrap();
        assert_eq!((i.original, i.state, i.replied), (syn.flow, State::Established, true));
        assert_eq!(ct.packet(&tcp(S, 80, C, 40000, F::ACK), &p, 1, 2), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.packet(&tcp(C, 40000, S, 80, F::ACK), &p, 1, 2), Outcome::Pass(CtPass::Tracked));
        assert_eq!((ct.len(), ct.stats().created), (1, 1));
    }

    #[test]
    fn allowed_syn_on_a_tracked_tuple_replaces_the_connection() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let syn = tcp(C, 40000, S, 80, F::SYN);
        ct.packet(&syn, &p, 1, 0);
        ct.packet(&tcp(S, 80, C, 40000, F::SYN | F::ACK), &p, 1, 0);
        ct.packet(&tcp(C, 40000, S, 80, F::ACK), &p, 1, 0);
        ct.packet(&tcp(C, 40000, S, 80, F::FIN | F::ACK), &p, 1, 1);
        ct.packet(&tcp(S, 80, C, 40000, F::FIN | F::ACK), &p, 1, 1);
        assert_eq!(ct.get(&syn.flow).unwrap().state, State::Closed);
        // The client reuses its port: a new connection in the same slot.
        assert_eq!(ct.packet(&syn, &p, 1, 2), Outcome::Pass(CtPass::New));
        let i = ct.get(&syn.flow).unwrap();
        assert_eq!(
            (i.original, i.state, i.replied, i.expires),
            (syn.flow, State::SynSent, false, 2 + 30 * SEC)
        );
        assert_eq!((ct.len(), ct.stats().created), (1, 2));
        // Removing the old entry left the index consistent: the handshake goes on.
        let synack = tcp(S, 80, C, 40000, F::SYN | F::ACK);
        assert_eq!(ct.packet(&synack, &p, 1, 3), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.get(&syn.flow).unwrap().state, State::SynReceived);
    }

    #[test]
    fn udp_reply_and_timeouts() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let q = udp(C, 5353, S, 53);
        assert_eq!(ct.packet(&q, &p, 1, 0), Outcome::Pass(CtPass::New));
        let i = ct.get(&q.flow).unwrap();
        assert_eq!((i.state, i.expires), (State::Unreplied, 30 * SEC));
        let a = udp(S, 53, C, 5353);
        assert_eq!(ct.packet(&a, &p, 1, SEC), Outcome::Pass(CtPass::Tracked));
        let i = ct.get(&q.flow).unwrap();
        assert_eq!((i.state, i.expires), (State::Replied, 31 * SEC));
        // The client speaks again: a stream, long timeout.
        assert_eq!(ct.packet(&q, &p, 1, SEC), Outcome::Pass(CtPass::Tracked));
        let i = ct.get(&q.flow).unwrap();
        assert_eq!((i.state, i.expires), (State::Assured, 121 * SEC));
        // The server cannot start its own flow to another client port.
        let other = udp(S, 53, C, 5354);
        assert_eq!(ct.packet(&other, &p, 1, SEC), Outcome::Drop(CtDrop::Policy));
        // Expired: the answer after 121 s is a new (denied) flow.
        assert_eq!(ct.packet(&a, &p, 1, 121 * SEC), Outcome::Drop(CtDrop::Policy));
    }

    /// A pod sending DNS queries from fresh source ports (each answered once)
    /// must not pin the table: single exchanges keep the short timeout and
    /// stay evictable, as in Linux (`nf_conntrack_udp_timeout`, 30 s).
    #[test]
    fn single_exchange_udp_flows_are_short_lived_and_evictable() {
        let p = ToServer::new();
        let n = 8;
        let mut ct = Conntrack::new(n, &Timeouts::default(), true);
        for port in 0..n as u16 {
            assert_eq!(ct.packet(&udp(C, 1000 + port, S, 53), &p, 1, 0), Outcome::Pass(CtPass::New));
            assert_eq!(ct.packet(&udp(S, 53, C, 1000 + port), &p, 1, 0), Outcome::Pass(CtPass::Tracked));
            let i = ct.get(&udp(C, 1000 + port, S, 53).flow).unwrap();
            assert_eq!((i.state, i.replied, i.expires), (State::Replied, true, 30 * SEC));
        }
        // The table is full of answered queries; new connections still get slots.
        assert_full_table_gives_way(&mut ct, &p, n);
        // Unevicted, they are gone after the short timeout.
        let mut ct = Conntrack::new(n, &Timeouts::default(), true);
        ct.packet(&udp(C, 1000, S, 53), &p, 1, 0);
        ct.packet(&udp(S, 53, C, 1000), &p, 1, SEC);
        assert_eq!(ct.expire_step(31 * SEC - 1, n), 0);
        assert_eq!(ct.expire_step(31 * SEC, n), 1);
    }

    #[test]
    fn answered_pings_never_pin_the_table() {
        let p = ToServer::new();
        let n = 8;
        let mut ct = Conntrack::new(n, &Timeouts::default(), true);
        for id in 0..n as u16 {
            assert_eq!(ct.packet(&echo(C, S, 100 + id, true), &p, 1, 0), Outcome::Pass(CtPass::New));
            assert_eq!(ct.packet(&echo(S, C, 100 + id, false), &p, 1, 0), Outcome::Pass(CtPass::Tracked));
        }
        assert_full_table_gives_way(&mut ct, &p, n);
    }

    /// `ct`, full with `n` entries, takes `n` new TCP connections by evicting them all.
    #[track_caller]
    fn assert_full_table_gives_way(ct: &mut Conntrack, p: &ToServer, n: usize) {
        assert_eq!(ct.len(), n);
        for port in 0..n as u16 {
            assert_eq!(ct.packet(&tcp(C, 2000 + port, S, 80, F::SYN), p, 1, SEC), Outcome::Pass(CtPass::New));
        }
        assert_eq!((ct.stats().evicted, ct.stats().full), (n as u64, 0));
    }

    /// A UDP flow becomes assured (long timeout, never evicted) once its
    /// initiator sends again after an answer; answers alone do not assure it.
    #[test]
    fn udp_flow_is_assured_when_the_initiator_speaks_after_a_reply() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(2, &Timeouts::default(), true);
        let (q, a) = (udp(C, 5000, S, 53), udp(S, 53, C, 5000));
        let state = |ct: &Conntrack| ct.get(&q.flow).map(|i| (i.state, i.expires));
        ct.packet(&q, &p, 1, 0);
        assert_eq!(state(&ct), Some((State::Unreplied, 30 * SEC)));
        ct.packet(&a, &p, 1, SEC);
        ct.packet(&a, &p, 1, 2 * SEC);
        assert_eq!(state(&ct), Some((State::Replied, 32 * SEC)));
        assert_eq!(ct.packet(&q, &p, 1, 3 * SEC), Outcome::Pass(CtPass::Tracked));
        assert_eq!(state(&ct), Some((State::Assured, 123 * SEC)));
        ct.packet(&a, &p, 1, 4 * SEC);
        assert_eq!(state(&ct), Some((State::Assured, 124 * SEC)));
        // A second assured flow fills the table: nothing can be evicted.
        let (q2, a2) = (udp(C, 5001, S, 53), udp(S, 53, C, 5001));
        for pkt in [&q2, &a2, &q2] {
            ct.packet(pkt, &p, 1, 5 * SEC);
        }
        assert_eq!(ct.packet(&tcp(C, 2000, S, 80, F::SYN), &p, 1, 6 * SEC), Outcome::Drop(CtDrop::Full));
        assert_eq!(state(&ct), Some((State::Assured, 124 * SEC)));
    }

    fn echo(src: &str, dst: &str, id: u16, request: bool) -> IpPacket {
        IpPacket {
            flow: Flow {
                src: ip(src),
                dst: ip(dst),
                proto: proto::ICMP,
                src_port: if request { id } else { 0 },
                dst_port: if request { 0 } else { id },
            },
            l4: if request { L4::EchoRequest } else { L4::EchoReply },
            fragment: Fragment::None,
        }
    }

    #[test]
    fn icmp_echo_and_related_error() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        assert_eq!(ct.packet(&echo(C, S, 7, true), &p, 1, 0), Outcome::Pass(CtPass::New));
        assert_eq!(ct.packet(&echo(S, C, 7, false), &p, 1, 0), Outcome::Pass(CtPass::Tracked));
        // An echo *request* from the server is its own flow: denied.
        assert_eq!(ct.packet(&echo(S, C, 7, true), &p, 1, 0), Outcome::Drop(CtDrop::Policy));
        // A port unreachable from the server about a tracked UDP flow is related.
        let q = udp(C, 5353, S, 53);
        ct.packet(&q, &p, 1, 0);
        let err = |inner: Flow, to: &str| IpPacket {
            flow: Flow { src: ip(S), dst: ip(to), proto: proto::ICMP, src_port: 0, dst_port: 0 },
            l4: L4::IcmpError(Some(inner)),
            fragment: Fragment::None,
        };
        assert_eq!(ct.packet(&err(q.flow, C), &p, 1, 0), Outcome::Pass(CtPass::Related));
        // The same error sent to someone else is not related (and policy denies it).
        assert_eq!(ct.packet(&err(q.flow, "10.0.0.9"), &p, 1, 0), Outcome::Drop(CtDrop::Policy));
        // An error about an untracked flow is not related.
        assert_eq!(ct.packet(&err(udp(C, 1, S, 2).flow, C), &p, 1, 0), Outcome::Drop(CtDrop::Policy));
        assert_eq!(ct.stats().related, 1);
    }

    /// With identifier 0 a request is ports (0, 0) and so is a reply: the
    /// other side's request must not pass as the reply of a tracked one.
    #[test]
    fn echo_id_zero_request_in_the_other_direction_is_not_a_reply() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        assert_eq!(ct.packet(&echo(C, S, 0, true), &p, 1, 0), Outcome::Pass(CtPass::New));
        // The server's own request to the client: a new flow, denied.
        assert_eq!(ct.packet(&echo(S, C, 0, true), &p, 1, 1), Outcome::Drop(CtDrop::Policy));
        // The reply passes, and the client's next request is the same connection.
        assert_eq!(ct.packet(&echo(S, C, 0, false), &p, 1, 2), Outcome::Pass(CtPass::Tracked));
        assert_eq!(ct.packet(&echo(C, S, 0, true), &p, 1, 3), Outcome::Pass(CtPass::Tracked));
        assert_eq!((ct.len(), ct.stats().created), (1, 1));
        let i = ct.get(&echo(C, S, 0, true).flow).unwrap();
        assert_eq!((i.original, i.replied), (echo(C, S, 0, true).flow, true));
        // Other ICMP messages are never part of an echo connection (they too are (0, 0)).
        let other = IpPacket {
            flow: Flow { src: ip(S), dst: ip(C), proto: proto::ICMP, src_port: 0, dst_port: 0 },
            l4: L4::IcmpOther,
            fragment: Fragment::None,
        };
        assert_eq!(ct.packet(&other, &p, 1, 4), Outcome::Drop(CtDrop::Policy));
        // An error quoting the request (sent to the client) or the reply (sent to the
        // server) is related, though a quoted id-0 echo does not say which it was.
        let err = |inner: &IpPacket, to: &str| IpPacket {
            flow: Flow { src: ip("10.0.0.9"), dst: ip(to), proto: proto::ICMP, src_port: 0, dst_port: 0 },
            l4: L4::IcmpError(Some(inner.flow)),
            fragment: Fragment::None,
        };
        assert_eq!(ct.packet(&err(&echo(C, S, 0, true), C), &p, 1, 5), Outcome::Pass(CtPass::Related));
        assert_eq!(ct.packet(&err(&echo(S, C, 0, false), S), &p, 1, 5), Outcome::Pass(CtPass::Related));
        // With a non-zero identifier the quoted message's ports say which it was.
        ct.packet(&echo(C, S, 7, true), &p, 1, 6);
        assert_eq!(ct.packet(&err(&echo(S, C, 7, false), S), &p, 1, 6), Outcome::Pass(CtPass::Related));
        assert_eq!(ct.stats().related, 3);
    }

    #[test]
    fn revocation_on_hit_and_by_sweep() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(16, &Timeouts::default(), true);
        let a = tcp(C, 40000, S, 80, F::SYN);
        let b = udp(C, 5353, S, 53);
        ct.packet(&a, &p, 1, 0);
        ct.packet(&b, &p, 1, 0);
        // Generation 2 still allows: the hit re-checks once and moves on.
        let calls = p.calls.get();
        ct.packet(&a, &p, 2, 1);
        assert_eq!(p.calls.get(), calls + 1);
        ct.packet(&a, &p, 2, 2);
        assert_eq!(p.calls.get(), calls + 1);
        assert_eq!(ct.get(&a.flow).unwrap().generation, 2);
        // Generation 3 denies everything: the reply is dropped, entry gone.
        p.deny_all.set(true);
        let reply = tcp(S, 80, C, 40000, F::SYN | F::ACK);
        assert_eq!(ct.packet(&reply, &p, 3, 3), Outcome::Drop(CtDrop::Revoked));
        assert!(ct.get(&a.flow).is_none());
        // The idle UDP flow is revoked by the sweep.
        assert_eq!(ct.revalidate_all(&p, 3), 1);
        assert!(ct.is_empty());
        assert_eq!(ct.stats().revoked, 2);
    }

    #[test]
    fn revalidate_step_is_bounded() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(8, &Timeouts::default(), true);
        for port in 0..8 {
            ct.packet(&udp(C, 1000 + port, S, 53), &p, 1, 0);
        }
        p.deny_all.set(true);
        assert_eq!(ct.revalidate_step(&p, 2, 3), 3);
        assert_eq!(ct.len(), 5);
        assert_eq!(ct.revalidate_step(&p, 2, 100), 5);
        assert!(ct.is_empty());
    }

    #[test]
    fn full_table_refuses_but_never_evicts_established() {
        let p = ToServer::new();
        let n = 8;
        let mut ct = Conntrack::new(n, &Timeouts::default(), true);
        // Fill with assured UDP flows (query, answer, query).
        for port in 0..n as u16 {
            ct.packet(&udp(C, 1000 + port, S, 53), &p, 1, 0);
            ct.packet(&udp(S, 53, C, 1000 + port), &p, 1, 0);
            ct.packet(&udp(C, 1000 + port, S, 53), &p, 1, 0);
        }
        assert_eq!(ct.len(), n);
        // A flood of new flows is refused, and counted.
        for port in 0..100u16 {
            assert_eq!(
                ct.packet(&tcp(C, 2000 + port, S, 80, F::SYN), &p, 1, SEC),
                Outcome::Drop(CtDrop::Full)
            );
        }
        assert_eq!(ct.stats().full, 100);
        for port in 0..n as u16 {
            assert!(ct.get(&udp(C, 1000 + port, S, 53).flow).is_some());
        }
        // Once they expire (120 s after the last packet), slots are reclaimed.
        assert_eq!(ct.packet(&tcp(C, 3000, S, 80, F::SYN), &p, 1, 121 * SEC), Outcome::Pass(CtPass::New));
        assert_eq!(ct.stats().expired, 1);
    }

    #[test]
    fn embryonic_entries_are_evicted_under_pressure() {
        let p = ToServer::new();
        let n = 8;
        let mut ct = Conntrack::new(n, &Timeouts::default(), true);
        // Half established (assured UDP), half half-open SYNs.
        for port in 0..4u16 {
            ct.packet(&udp(C, 1000 + port, S, 53), &p, 1, 0);
            ct.packet(&udp(S, 53, C, 1000 + port), &p, 1, 0);
            ct.packet(&udp(C, 1000 + port, S, 53), &p, 1, 0);
        }
        for port in 0..4u16 {
            ct.packet(&tcp(C, 2000 + port, S, 80, F::SYN), &p, 1, 0);
        }
        // A SYN flood: each new SYN evicts a half-open one, never an established one.
        for port in 0..50u16 {
            assert_eq!(ct.packet(&tcp(C, 5000 + port, S, 80, F::SYN), &p, 1, 1), Outcome::Pass(CtPass::New));
        }
        for port in 0..4u16 {
            assert!(ct.get(&udp(C, 1000 + port, S, 53).flow).is_some());
        }
        assert_eq!(ct.stats().evicted, 50);
        assert_eq!(ct.len(), n);
    }

    /// A SYN flood from spoofed sources to a listening pod: every SYN is
    /// answered, so the entries are SynReceived, and they must still give way
    /// (or the table stays full for the handshake timeout). Established
    /// connections never do.
    #[test]
    fn answered_syns_are_still_embryonic() {
        let p = ToServer::new();
        let n = 8;
        let mut ct = Conntrack::new(n, &Timeouts::default(), true);
        for port in 0..2u16 {
            for pkt in [
                tcp(C, 1000 + port, S, 80, F::SYN),
                tcp(S, 80, C, 1000 + port, F::SYN | F::ACK),
                tcp(C, 1000 + port, S, 80, F::ACK),
            ] {
                ct.packet(&pkt, &p, 1, 0);
            }
        }
        for port in 0..6u16 {
            ct.packet(&tcp(C, 2000 + port, S, 80, F::SYN), &p, 1, 0);
            ct.packet(&tcp(S, 80, C, 2000 + port, F::SYN | F::ACK), &p, 1, 0);
            assert_eq!(ct.get(&tcp(C, 2000 + port, S, 80, 0).flow).unwrap().state, State::SynReceived);
        }
        assert_eq!(ct.len(), n);
        for port in 0..50u16 {
            assert_eq!(ct.packet(&tcp(C, 5000 + port, S, 80, F::SYN), &p, 1, 1), Outcome::Pass(CtPass::New));
            ct.packet(&tcp(S, 80, C, 5000 + port, F::SYN | F::ACK), &p, 1, 1);
        }
        for port in 0..2u16 {
            assert_eq!(ct.get(&tcp(C, 1000 + port, S, 80, 0).flow).unwrap().state, State::Established);
        }
        assert_eq!(ct.stats().evicted, 50);
        assert_eq!(ct.stats().full, 0);
    }

    /// A stray SYN from the client of an established connection (a duplicate,
    /// or forged) is passed and changes nothing: the connection stays
    /// Established, so the server may go on speaking first after it.
    #[test]
    fn a_stray_syn_leaves_an_established_connection_as_it_was() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(4, &Timeouts::default(), true);
        for pkt in
            [tcp(C, 1000, S, 80, F::SYN), tcp(S, 80, C, 1000, F::SYN | F::ACK), tcp(C, 1000, S, 80, F::ACK)]
        {
            ct.packet(&pkt, &p, 1, 0);
        }
        let before = ct.get(&tcp(C, 1000, S, 80, 0).flow).unwrap();
        assert_eq!(before.state, State::Established);
        assert_eq!(ct.packet(&tcp(C, 1000, S, 80, F::SYN), &p, 1, SEC), Outcome::Pass(CtPass::Tracked));
        assert_eq!(
            ct.get(&tcp(C, 1000, S, 80, 0).flow).unwrap(),
            before,
            "nothing changed, not even the timeout"
        );
        // Long after the handshake timeout, the server speaks first: still tracked.
        let later = 100 * SEC;
        assert_eq!(ct.packet(&tcp(S, 80, C, 1000, F::ACK), &p, 1, later), Outcome::Pass(CtPass::Tracked));
        // After a RST, a SYN opens a new connection on the 4-tuple; a FIN after the RST reopens nothing.
        ct.packet(&tcp(C, 1000, S, 80, F::RST), &p, 1, later);
        ct.packet(&tcp(S, 80, C, 1000, F::FIN | F::ACK), &p, 1, later);
        assert_eq!(ct.get(&tcp(C, 1000, S, 80, 0).flow).unwrap().state, State::Closed);
        assert_eq!(ct.packet(&tcp(C, 1000, S, 80, F::SYN), &p, 1, later), Outcome::Pass(CtPass::New));
        assert_eq!(ct.get(&tcp(C, 1000, S, 80, 0).flow).unwrap().state, State::SynSent);
    }

    /// An echo reply to no request seen is dropped, even when policy would
    /// allow the request: otherwise any pod could send replies into a pod
    /// isolated against it. A reply allowed in its own direction passes
    /// untracked; with reverse pickup on, a reply is picked up as before.
    #[test]
    fn an_unsolicited_echo_reply_is_dropped() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(4, &Timeouts::default(), true);
        // S -> C is not allowed; C -> S (the request it would answer) is.
        assert_eq!(ct.packet(&echo(S, C, 9, false), &p, 1, 0), Outcome::Drop(CtDrop::Policy));
        assert!(ct.is_empty());
        assert_eq!(ct.packet(&echo(C, S, 9, false), &p, 1, 0), Outcome::Pass(CtPass::Untracked));
        // A real ping: the reply belongs to it.
        assert_eq!(ct.packet(&echo(C, S, 9, true), &p, 1, 0), Outcome::Pass(CtPass::New));
        assert_eq!(ct.packet(&echo(S, C, 9, false), &p, 1, 0), Outcome::Pass(CtPass::Tracked));
        let mut permissive = Conntrack::new(4, &Timeouts::default(), true).with_reverse_pickup(true);
        assert_eq!(permissive.packet(&echo(S, C, 9, false), &p, 1, 0), Outcome::Pass(CtPass::PickedUp));
    }

    #[test]
    fn expire_step_sweeps() {
        let p = ToServer::new();
        let mut ct = Conntrack::new(4, &Timeouts::default(), true);
        ct.packet(&udp(C, 1, S, 53), &p, 1, 0);
        ct.packet(&udp(C, 2, S, 53), &p, 1, 10 * SEC);
        assert_eq!(ct.expire_step(30 * SEC, 4), 1);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.expire_step(40 * SEC, 4), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn churn_never_grows_the_index() {
        // Many insert/remove cycles leave tombstones; the index must rehash
        // in place, never reallocate.
        let p = ToServer::new();
        let mut ct = Conntrack::new(64, &Timeouts::default(), true);
        let cap = ct.index.capacity();
        for round in 0..200u64 {
            for port in 0..64u16 {
                ct.packet(&udp(C, port, S, 53), &p, 1, round * 31 * SEC);
            }
        }
        assert_eq!(ct.index.capacity(), cap);
        assert!(ct.len() <= 64);
    }

    #[test]
    fn ipv6_and_ipv4_keys_do_not_collide() {
        // ::a.b.c.d (IPv4-compatible) has the same low 32 bits as a.b.c.d.
        let p = |_: &Flow| true;
        struct All<F>(F);
        impl<F: Fn(&Flow) -> bool> Policy for All<F> {
            fn allows(&self, f: &Flow) -> bool {
                (self.0)(f)
            }
        }
        let mut ct = Conntrack::new(4, &Timeouts::default(), true);
        ct.packet(&udp("10.0.0.1", 1, "10.0.0.2", 2), &All(p), 1, 0);
        assert!(ct.get(&udp("::10.0.0.1", 1, "::10.0.0.2", 2).flow).is_none());
        assert!(ct.get(&udp("10.0.0.2", 2, "10.0.0.1", 1).flow).is_some());
    }
}
