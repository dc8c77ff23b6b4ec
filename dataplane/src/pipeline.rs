//! The per-packet decision: parse, policy with connection tracking, L2 forwarding.
//!
//! ```text
//!  (in_port, &[u8], now)
//!     │ in_port out of range ───────────────────────────────────────────▶ Drop(BadPort)
//!     ▼
//!   parse ── error ─────────────────────────────────────────────────────▶ Drop(Parse(kind))
//!     │ port leads to a pod, IP/ARP/ND not for its own addresses,
//!     │   MAC not its pinned one, VLAN tag; or an uplink's IP from a
//!     │   local pod's address ──────────────────────────────────────────▶ Drop(SpoofedSource / LinkLocal)
//!     │ port leads to a pod, ND addressed beyond the link ─────────────▶ Drop(NeighbourOffLink)
//!     │ port leads to a pod, IPv6 routing header / IPv4 source route ──▶ Drop(SourceRouted)
//!     │ learn source MAC (switch mode; not one a pod port speaks with,
//!     │   when it comes from a port with no pod)
//!     ├─ ARP, IPv6 ND ───────────── no policy ─────────────────┐
//!     ├─ other EtherType ── forward_non_ip? ── no ─────────────┼────────▶ Drop(NonIp)
//!     └─ IPv4/IPv6 ── table fail-closed? ── yes ───────────────┼────────▶ Drop(FailClosed)
//!            │ later fragment ── first fragment's verdict ─────┤  (none: Drop(FragmentNoFirst))
//!            ▼                                                  │
//!            │ enforce: false ── no conntrack, no table ───────┤
//!         conntrack: hit → pass (stale generation → re-check,   │
//!         revoked → Drop(Revoked)); miss → table.verdict(..)    │
//!         → Drop(Policy) / insert (full → Drop(ConntrackFull)); │
//!         TCP without SYN, not picked up → Drop(TcpNoConnection)│
//!            │ first fragment: remember the verdict             │
//!            ▼                                                  ▼
//!                       L2: Forward(port) / Flood / Drop(SamePort)
//!        (pod ports: IP to a pod's address → that pod's port; other IP → never a
//!         pod's port: FloodUnbound instead; unicast ARP/ND to a pod's MAC not
//!         for its addresses → FloodUnbound; see crate::addresses;
//!         a wire given the link's prefixes: ND addressed beyond → Drop(NeighbourOffLink))
//! ```
//!
//! One [`Pipeline`] per worker. It owns its connection table, fragment
//! tracker and MAC table, so nothing on the packet path is locked; the
//! shared things are the published table (read through an
//! `arc_swap::Cache`, one check per batch), the worker's own counters, and
//! the pod ports' MAC pins ([`crate::pins`]: one atomic read per frame from
//! a pod port, written when a port first speaks).
//! After [`Pipeline::new`], [`Pipeline::process`] allocates nothing.
//!
//! Usage by the I/O loop:
//! ```text
//! loop {
//!     let batch = rx.poll();                 // up to N descriptors
//!     let now = clock_ns();
//!     pipeline.begin_batch(now);            // table load, sweeps, gauges
//!     for d in batch { match pipeline.process(d.port, d.bytes(), now) { .. } }
//! }
//! ```
//!
//! **Frames that are neither IP nor ARP** (LLDP, STP/802.3 LLC, stacked VLAN
//! tags, MPLS, PPPoE, …) are **dropped by default** (`forward_non_ip =
//! false`). NetworkPolicy speaks only about IP, so such frames can be
//! neither allowed nor denied by it; several of them (QinQ, MPLS, PPPoE)
//! can carry IP past a parser that does not look inside, and pods on a CNI
//! veth need nothing but IPv4, IPv6 and ARP. A bridge would forward them;
//! set `forward_non_ip = true` to behave like one.
//!
//! **ARP and neighbour discovery** pass without policy: without them no IP
//! traffic, allowed or not, could be addressed. They pass even before the
//! first table (fail-closed), so that pods can resolve neighbours as soon
//! as policy arrives. From a pod's port, and on a wire given the link's
//! prefixes from either port, ND must stay on the link (a router would
//! carry it further, past the pod's egress policy):
//! [`crate::addresses::Addresses::neighbour_on_link`].
//!
//! **Policy** is evaluated once per connection, on the conntrack miss, as
//! `table.verdict(src, dst, proto, dst_port)` with port 0 for protocols
//! without ports (ICMP). Replies of a tracked connection pass. See
//! [`crate::conntrack`] for TCP pickup, revocation and eviction.

use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};
use serde::{Deserialize, Serialize};

use crate::addresses::Addresses;
use crate::conntrack::{Conntrack, CtDrop, Outcome, Policy, Timeouts};
use crate::counters::WorkerCounters;
use crate::frag::{DatagramKey, FragTracker};
use crate::observe::{Admission, DeniedFlow, DenyLog, PolicyHits};
use crate::parse::{self, Class, Fragment, Frame, IpPacket, ParseError};
use crate::pins::{LocalPins, Pin, PodPins};
use crate::switch::{Switch, L2};

pub use crate::switch::Mode;

/// A port of this dataplane: a small integer, `0..ports`.
pub type PortId = u16;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Transmit on this port.
    Forward(PortId),
    /// Transmit on every port except the ingress port.
    Flood,
    /// Transmit on every port except the ingress port and the ports that
    /// lead to a pod (an IP frame for an address no pod port has; see
    /// [`crate::addresses`]).
    FloodUnbound,
    /// Drop, for this reason (already counted).
    Drop(DropReason),
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The frame could not be parsed.
    Parse(ParseError),
    /// Policy denies the connection.
    Policy,
    /// The connection was allowed by an older table and is denied by the current one.
    Revoked,
    /// No table has been published yet (fail-closed): only ARP/ND pass.
    FailClosed,
    /// Neither IP nor ARP, and `forward_non_ip` is off.
    NonIp,
    /// A later fragment whose first fragment was not seen (or has timed out).
    FragmentNoFirst,
    /// Policy allows the new connection but the connection table is full.
    ConntrackFull,
    /// TCP without SYN and without connection, not picked up: pickup is off,
    /// or policy allows it only as a reply (which may be forged; see conntrack).
    TcpNoConnection,
    /// The destination MAC is on the ingress port (L2 filtering).
    SamePort,
    /// `in_port` is not a port of this pipeline.
    BadPort,
    /// A frame from a port that leads to a pod speaking for another
    /// (source address or MAC not the pod's, VLAN tags, ...), or IP from
    /// an uplink with a local pod's source address (see [`crate::addresses`]).
    SpoofedSource,
    /// An IPv6 frame from a pod's port with a link-local or unspecified
    /// source, other than neighbour discovery (multicast listener reports,
    /// say): pods talk with their own addresses.
    LinkLocal,
    /// IP from a pod's port that routes itself: IPv6 with a routing header
    /// that has segments left ([`crate::parse::ipv6_source_routed`]), IPv4
    /// with a source-route option with hops left
    /// ([`crate::parse::ipv4_source_routed`]). Policy judges the destination,
    /// only the next hop of a path the pod chose.
    SourceRouted,
    /// Neighbour discovery from a pod's port, or crossing a wire given the
    /// link's prefixes, addressed beyond the link: to
    /// an address that is not link-local, not link-scope multicast, not in
    /// the link's prefixes, and neither a local pod's nor the node's (see
    /// [`crate::addresses::Addresses::neighbour_on_link`]). Such a message
    /// would pass without policy, so it could carry data past an egress policy.
    NeighbourOffLink,
}

impl DropReason {
    /// Number of counted kinds ([`DropReason::Parse`] is one kind).
    pub const KINDS: usize = 14;

    /// snake_case names of the kinds, in [`DropReason::kind`] order.
    pub const KIND_NAMES: [&'static str; Self::KINDS] = [
        "parse",
        "policy",
        "revoked",
        "fail_closed",
        "non_ip",
        "fragment_no_first",
        "conntrack_full",
        "tcp_no_connection",
        "same_port",
        "bad_port",
        "spoofed_source",
        "link_local",
        "neighbour_off_link",
        "source_routed",
    ];

    /// Index of the kind, for counter arrays.
    #[inline]
    pub fn kind(self) -> usize {
        match self {
            DropReason::Parse(_) => 0,
            DropReason::Policy => 1,
            DropReason::Revoked => 2,
            DropReason::FailClosed => 3,
            DropReason::NonIp => 4,
            DropReason::FragmentNoFirst => 5,
            DropReason::ConntrackFull => 6,
            DropReason::TcpNoConnection => 7,
            DropReason::SamePort => 8,
            DropReason::BadPort => 9,
            DropReason::SpoofedSource => 10,
            DropReason::LinkLocal => 11,
            DropReason::NeighbourOffLink => 12,
            DropReason::SourceRouted => 13,
        }
    }
}

/// A compiled table as the control plane publishes it.
///
/// Workers hold the table they use until their next
/// [`Pipeline::begin_batch`]; the last worker to let go of a replaced table
/// frees it, on its own thread. Freeing a large table takes time a packet
/// worker should not spend: the control plane should keep the previous
/// table(s) alive for a while after publishing a new one (for example, keep
/// the last two `Arc`s) so that the drop happens on its side.
#[derive(Debug, Default)]
pub struct PublishedTable {
    /// Increases with every publication; conntrack entries checked against
    /// an older generation are re-checked.
    pub generation: u64,
    /// The policy (shared with the control plane, which patches a copy for
    /// the next publication).
    pub table: std::sync::Arc<policy_compiler::DecisionTable>,
    /// True until the control plane has synced once: IP is dropped, only
    /// ARP/ND pass.
    pub fail_closed: bool,
    /// Connections allowed per policy of `table` (see [`crate::observe`]);
    /// empty counts nothing.
    pub hits: PolicyHits,
    /// The pod behind each port and the node's addresses (see
    /// [`crate::addresses`]); empty: no port leads to a pod, no node exemption.
    pub addresses: Addresses,
}

impl PublishedTable {
    /// The table to publish at startup, before the first sync.
    pub fn fail_closed() -> Self {
        PublishedTable {
            generation: 0,
            table: Default::default(),
            fail_closed: true,
            hits: PolicyHits::default(),
            addresses: Addresses::default(),
        }
    }

    /// A table to enforce, with per-policy hit counters for `workers` workers.
    pub fn new(
        generation: u64,
        table: impl Into<std::sync::Arc<policy_compiler::DecisionTable>>,
        workers: usize,
    ) -> Self {
        let table = table.into();
        let hits = PolicyHits::new(table.policy_slots(), workers);
        PublishedTable { generation, table, fail_closed: false, hits, addresses: Addresses::default() }
    }

    /// The same, with the pods behind the ports and the node's addresses.
    pub fn with_addresses(self, addresses: Addresses) -> Self {
        PublishedTable { addresses, ..self }
    }
}

/// Re-checks of tracked connections against a newer table: the table, plus
/// the node exemption.
impl Policy for PublishedTable {
    #[inline]
    fn allows(&self, flow: &crate::parse::Flow) -> bool {
        self.addresses.is_node(flow.src.ip()) || self.table.allows(flow)
    }
}

/// Per-worker pipeline settings. Every field has a default; unknown fields
/// are rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// `switch` (default): MAC learning over all ports. `wire`: exactly two
    /// ports, each frame goes to the other one.
    pub mode: Mode,
    /// Number of ports, ids `0..ports`. Default 2.
    pub ports: u16,
    /// Connections tracked per worker. Default 65536 (about 5 MiB per
    /// worker with the index). Larger tables survive bigger bursts of new
    /// connections; when full, new connections are refused (see conntrack).
    pub conntrack_capacity: usize,
    /// The most of a worker's connection table that new connections from one
    /// pod's port may hold, in percent (1..=100). Default 50: one pod that
    /// opens connections faster than they time out fills half the table,
    /// not all of it. Connections from ports with no pod count against no
    /// share. 100: no share.
    pub conntrack_pod_share: u8,
    /// Idle timeouts per connection state, seconds.
    pub timeouts: Timeouts,
    /// Pick up TCP connections mid-stream (after a restart or idle expiry)
    /// when policy allows them in either direction. Default true; false
    /// drops non-SYN packets without a connection.
    pub loose_tcp: bool,
    /// Also pick up a mid-stream TCP packet that policy allows only as a reply
    /// (the reverse orientation). Default false: such a packet is dropped,
    /// because it may be forged (see [`crate::conntrack`]).
    pub tcp_reverse_pickup: bool,
    /// Fragmented datagrams remembered per worker. Default 1024.
    pub fragment_capacity: usize,
    /// How long a first fragment's verdict applies to later fragments, seconds. Default 30
    /// (Linux `ipfrag_time`).
    pub fragment_timeout: u64,
    /// MAC addresses learned per worker. Default 4096.
    pub mac_capacity: usize,
    /// MAC ageing time, seconds. Default 300 (IEEE 802.1D).
    pub mac_ageing: u64,
    /// Forward frames that are neither IP nor ARP (like a bridge). Default
    /// false: they are dropped (see the module doc for why).
    pub forward_non_ip: bool,
    /// Conntrack slots swept per batch for expiry, and re-checked per batch
    /// after a new table. Default 64: bounded work per batch; a 65536-entry
    /// table is swept in 1024 batches. 0 turns the sweep off, for tests
    /// that watch what a packet does on its own: expired connections then
    /// stay until a packet of theirs arrives, and a new table is applied to
    /// a connection only at its next packet. The daemon always uses 64.
    pub sweep_budget: usize,
    /// Enforce policy (default true). `false` is for measuring the ceiling of
    /// the forwarding path alone: frames are still parsed, counted and
    /// switched, but every IP packet passes with no connection tracking and no
    /// table lookup, whatever the table says. Never for production.
    pub enforce: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            mode: Mode::Switch,
            ports: 2,
            conntrack_capacity: 65_536,
            conntrack_pod_share: 50,
            timeouts: Timeouts::default(),
            loose_tcp: true,
            tcp_reverse_pickup: false,
            fragment_capacity: 1024,
            fragment_timeout: 30,
            mac_capacity: 4096,
            mac_ageing: 300,
            forward_non_ip: false,
            sweep_budget: 64,
            enforce: true,
        }
    }
}

/// Largest accepted table sizes (entries); beyond this the memory per
/// worker is more likely a typo than a plan.
pub const MAX_CAPACITY: usize = 1 << 24;

/// An invalid [`PipelineConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `ports` is 0.
    #[error("ports must be at least 1")]
    NoPorts,
    /// Wire mode needs exactly two ports.
    #[error("wire mode needs exactly 2 ports, got {ports}")]
    WirePorts {
        /// Configured ports.
        ports: u16,
    },
    /// A capacity is 0 or above [`MAX_CAPACITY`].
    #[error("{field} must be between 1 and {MAX_CAPACITY}, got {value}")]
    Capacity {
        /// Field name.
        field: &'static str,
        /// Configured value.
        value: usize,
    },
    /// `conntrack_pod_share` is not a percentage from 1 to 100.
    #[error("conntrack_pod_share must be between 1 and 100 (percent), got {0}")]
    PodShare(u8),
    /// The counters were made for fewer ports than configured.
    #[error("counters have {counters} ports, configuration has {ports}")]
    CounterPorts {
        /// Ports in the counters.
        counters: usize,
        /// Configured ports.
        ports: u16,
    },
}

impl PipelineConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ports == 0 {
            return Err(ConfigError::NoPorts);
        }
        if self.mode == Mode::Wire && self.ports != 2 {
            return Err(ConfigError::WirePorts { ports: self.ports });
        }
        if !(1..=100).contains(&self.conntrack_pod_share) {
            return Err(ConfigError::PodShare(self.conntrack_pod_share));
        }
        for (field, value) in [
            ("conntrack_capacity", self.conntrack_capacity),
            ("fragment_capacity", self.fragment_capacity),
            ("mac_capacity", self.mac_capacity),
        ] {
            if value == 0 || value > MAX_CAPACITY {
                return Err(ConfigError::Capacity { field, value });
            }
        }
        Ok(())
    }
}

/// What a first fragment leaves for the rest of its datagram: its verdict
/// (`None` = allowed), the generation of the table that gave it, and its
/// flow (ports included: later fragments carry none), to judge the rest
/// again when a newer table arrives before they do.
#[derive(Clone, Copy, Debug)]
struct FragVerdict {
    verdict: Option<DropReason>,
    generation: u64,
    flow: Option<crate::parse::Flow>,
}

impl Default for FragVerdict {
    /// The tracker's empty slots: a record never written drops, should one
    /// ever be read (every record written holds its flow).
    fn default() -> Self {
        FragVerdict { verdict: Some(DropReason::FragmentNoFirst), generation: 0, flow: None }
    }
}

/// One worker's packet path. See the module documentation.
pub struct Pipeline {
    tables: Cache<Arc<ArcSwap<PublishedTable>>, Arc<PublishedTable>>,
    current: Arc<PublishedTable>,
    conntrack: Conntrack,
    frags: FragTracker<FragVerdict>,
    switch: Switch,
    counters: Arc<WorkerCounters>,
    ports: PortId,
    forward_non_ip: bool,
    sweep_budget: usize,
    enforce: bool,
    /// Slots still to re-check against the current generation.
    revalidate_remaining: usize,
    /// This worker's row in [`PolicyHits`].
    worker: usize,
    deny_log: DenyLog,
    /// The MAC each pod port speaks with (the first it used; see
    /// [`crate::addresses`]), shared with the other workers ([`crate::pins`]).
    pins: Arc<PodPins>,
    /// This worker's copy of them, for frames from ports with no pod.
    local_pins: LocalPins,
}

impl Pipeline {
    /// Builds a worker's pipeline; all per-packet memory is allocated here.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`Pipeline::try_new`], which
    /// returns the error instead). Validate configuration at startup.
    pub fn new(
        cfg: &PipelineConfig,
        tables: Arc<ArcSwap<PublishedTable>>,
        counters: Arc<WorkerCounters>,
    ) -> Self {
        match Self::try_new(cfg, tables, counters) {
            Ok(p) => p,
            Err(e) => panic!("invalid pipeline configuration: {e}"),
        }
    }

    /// Like [`Pipeline::new`], returning configuration errors.
    pub fn try_new(
        cfg: &PipelineConfig,
        tables: Arc<ArcSwap<PublishedTable>>,
        counters: Arc<WorkerCounters>,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if counters.ports().len() < usize::from(cfg.ports) {
            return Err(ConfigError::CounterPorts { counters: counters.ports().len(), ports: cfg.ports });
        }
        let mut cache = Cache::new(tables);
        let current = Arc::clone(cache.load());
        let conntrack = Conntrack::new(cfg.conntrack_capacity, &cfg.timeouts, cfg.loose_tcp)
            .with_reverse_pickup(cfg.tcp_reverse_pickup)
            .with_pod_share(usize::from(cfg.ports), cfg.conntrack_pod_share);
        Ok(Pipeline {
            tables: cache,
            conntrack,
            frags: FragTracker::new(
                cfg.fragment_capacity,
                cfg.fragment_timeout.saturating_mul(NANOS_PER_SEC),
            ),
            switch: Switch::new(
                cfg.mode,
                cfg.ports,
                cfg.mac_capacity,
                cfg.mac_ageing.saturating_mul(NANOS_PER_SEC),
            ),
            ports: cfg.ports,
            pins: Arc::new(PodPins::new(usize::from(cfg.ports))),
            local_pins: LocalPins::new(cfg.ports),
            forward_non_ip: cfg.forward_non_ip,
            sweep_budget: cfg.sweep_budget,
            enforce: cfg.enforce,
            revalidate_remaining: 0,
            worker: 0,
            deny_log: DenyLog::off(),
            counters,
            current,
        })
    }

    /// Sets the worker index: its row in the per-policy hit counters and
    /// its name in denied-flow records. Default 0.
    pub fn with_worker(mut self, index: usize) -> Self {
        self.worker = index;
        self
    }

    /// Shares the pod ports' MAC pins with the other workers (see
    /// [`crate::pins`]); by default a pipeline has pins of its own. `pins`
    /// must cover at least this pipeline's ports.
    ///
    /// # Panics
    /// If `pins` has fewer ports than the pipeline (a programming error).
    pub fn with_pins(mut self, pins: Arc<PodPins>) -> Self {
        assert!(pins.ports() >= usize::from(self.ports), "pins for fewer ports than the pipeline has");
        self.pins = pins;
        self.local_pins.refresh(&self.pins);
        self
    }

    /// Sends packets denied by policy, rate-limited, to `log` (see [`crate::observe`]).
    pub fn with_deny_log(mut self, log: DenyLog) -> Self {
        self.deny_log = log;
        self
    }

    /// Starts a batch: picks up a newly published table (one cache check),
    /// re-checks and expires a bounded number of connections, publishes gauges.
    pub fn begin_batch(&mut self, now: u64) {
        let latest = self.tables.load();
        if !Arc::ptr_eq(latest, &self.current) {
            let changed = latest.generation != self.current.generation;
            let old = std::mem::replace(&mut self.current, Arc::clone(latest));
            self.release_changed_ports(&old.addresses);
            if changed && !self.current.fail_closed {
                self.revalidate_remaining = self.conntrack.capacity();
            }
        }
        if self.revalidate_remaining > 0 && !self.current.fail_closed {
            let n = self.revalidate_remaining.min(self.sweep_budget);
            self.conntrack.revalidate_step(&*self.current, self.current.generation, n);
            self.revalidate_remaining -= n;
        }
        self.conntrack.expire_step(now, self.sweep_budget);
        // Pins other workers took or released (one shared load per batch).
        self.local_pins.refresh(&self.pins);
        let c = &self.counters;
        c.batches.inc();
        c.publish_conntrack(self.conntrack.len(), self.conntrack.capacity(), self.conntrack.stats());
        c.publish_state(
            self.current.generation,
            self.current.fail_closed,
            self.switch.learned(),
            self.frags.evicted(),
        );
    }

    /// Decides one frame received on `in_port`. Never allocates, never
    /// panics, counts everything it decides.
    #[inline]
    pub fn process(&mut self, in_port: PortId, frame: &[u8], now: u64) -> Action {
        let action = self.decide(in_port, frame, now);
        let c = &*self.counters;
        c.frames_in.inc();
        c.bytes_in.add(frame.len() as u64);
        if let Some(p) = c.ports().get(usize::from(in_port)) {
            p.rx_frames.inc();
            p.rx_bytes.add(frame.len() as u64);
        }
        match action {
            Action::Forward(_) => c.forwarded.inc(),
            Action::Flood | Action::FloodUnbound => c.flooded.inc(),
            Action::Drop(r) => c.count_drop(r),
        }
        action
    }

    #[inline]
    fn decide(&mut self, in_port: PortId, bytes: &[u8], now: u64) -> Action {
        if in_port >= self.ports {
            return Action::Drop(DropReason::BadPort);
        }
        let frame = match parse::parse(bytes) {
            Ok(f) => f,
            Err(e) => return Action::Drop(DropReason::Parse(e)),
        };
        // A pod's port speaks only for that pod's addresses (before learning:
        // a refused frame teaches nothing). Out of line: ports with no pod pay
        // one test.
        let mut learn = true;
        if self.enforce && self.current.addresses.any_pod_port() {
            match self.pod_port_check(in_port, &frame, bytes, now) {
                Ok(l) => learn = l,
                Err(reason) => return Action::Drop(reason),
            }
        }
        if learn {
            self.switch.learn(in_port, &frame, now);
        }
        // By reference: binding the packet by value copied it out of the frame.
        let verdict = match &frame.class {
            Class::Arp | Class::NeighbourDiscovery => None,
            Class::Other(_) if self.forward_non_ip => None,
            Class::Other(_) => Some(DropReason::NonIp),
            Class::Ip(_) if !self.enforce => None,
            Class::Ip(_) if self.current.fail_closed => Some(DropReason::FailClosed),
            Class::Ip(pkt) => self.ip(pkt, in_port, now),
        };
        if let Some(reason) = verdict {
            return Action::Drop(reason);
        }
        let l2 = self.switch.forward(in_port, &frame, now);
        let a = &self.current.addresses;
        if let (Class::Ip(pkt), true) = (&frame.class, self.enforce && a.any_pod_port()) {
            // To a pod's port only what is addressed to that pod, found by
            // address whatever the MAC table says; the rest never to a pod's port.
            return match (a.port_of(pkt.flow.dst.ip()), l2) {
                (Some(p), _) if p == in_port => Action::Drop(DropReason::SamePort),
                (Some(p), _) => Action::Forward(p),
                // A pod claimed that MAC: the frame goes where an unknown MAC
                // would, to the ports with no pod (the gateway is there).
                (None, L2::Forward(p)) if a.is_pod_port(usize::from(p)) => Action::FloodUnbound,
                (None, L2::Forward(p)) => Action::Forward(p),
                (None, L2::Flood) => Action::FloodUnbound,
                (None, L2::SamePort) => Action::Drop(DropReason::SamePort),
            };
        }
        match (l2, &frame.class) {
            (L2::Forward(p), Class::Arp | Class::NeighbourDiscovery) => self.neighbour_to(p, &frame, bytes),
            (L2::Forward(p), _) => Action::Forward(p),
            (L2::Flood, Class::Arp | Class::NeighbourDiscovery)
                if frame.dst_mac[0] & 1 == 0 && self.enforce && a.any_pod_port() =>
            {
                self.neighbour_unknown(in_port, &frame, bytes)
            }
            (L2::Flood, _) => Action::Flood,
            (L2::SamePort, _) => Action::Drop(DropReason::SamePort),
        }
    }

    /// Where unicast ARP or ND to a MAC the switch does not know (aged out,
    /// or not yet seen by this worker) goes: to the pod it is for, by
    /// address, or else to the ports with no pod, as [`Self::neighbour_to`]
    /// sends what is not for the pod behind a MAC. Flooded to every port, it
    /// would reach a pod holding the destination's MAC (the gateway's, once
    /// the gateway has been silent long enough to age out). ND to a
    /// link-local address, which could be any pod's, is flooded still, and so
    /// is a tagged frame (another VLAN, whose addresses are not the pods').
    #[inline(never)]
    fn neighbour_unknown(&self, in_port: PortId, frame: &Frame, bytes: &[u8]) -> Action {
        if frame.vlan.is_some() {
            return Action::Flood;
        }
        let a = &self.current.addresses;
        match a.neighbour_port(&frame.class, bytes) {
            Some(p) if p == in_port => Action::Drop(DropReason::SamePort),
            Some(p) => Action::Forward(p),
            None if matches!(frame.class, Class::NeighbourDiscovery)
                && parse::ipv6_destination(bytes)
                    .is_some_and(|d| std::net::Ipv6Addr::from(d).is_unicast_link_local()) =>
            {
                Action::Flood
            }
            None => Action::FloodUnbound,
        }
    }

    /// Where ARP or ND that the switch forwards to port `p` goes. To pod
    /// port `p`'s MAC but not for the pod: where an unknown MAC's would, to
    /// the ports with no pod (a pod may hold another station's MAC). On a
    /// wire given the link's prefixes ([`Addresses::checks_every_neighbour`];
    /// a wire forwards every frame to the other port, so all of its ND comes
    /// here), ND addressed beyond the link is dropped. Out of line: off the
    /// IP path.
    #[inline(never)]
    fn neighbour_to(&self, p: PortId, frame: &Frame, bytes: &[u8]) -> Action {
        let a = &self.current.addresses;
        if !self.enforce {
            return Action::Forward(p);
        }
        if matches!(frame.class, Class::NeighbourDiscovery)
            && self.switch.is_wire()
            && a.checks_every_neighbour()
            && !a.neighbour_on_link(None, bytes)
        {
            return Action::Drop(DropReason::NeighbourOffLink);
        }
        match a.pod_at(p) {
            Some(pod) if !pod.receives_neighbour(&frame.class, bytes) => Action::FloodUnbound,
            _ => Action::Forward(p),
        }
    }

    /// Why a frame from `in_port` may not pass, when that port leads to a
    /// pod (see [`crate::addresses`]); `Ok(false)`: it passes, but the
    /// switch must not learn its source MAC there.
    #[inline(never)]
    fn pod_port_check(
        &mut self,
        in_port: PortId,
        frame: &Frame,
        bytes: &[u8],
        now: u64,
    ) -> Result<bool, DropReason> {
        let a = &self.current.addresses;
        let Some(pod) = a.pod_at(in_port) else {
            // IP from a pod of this node, arriving on an uplink: the pods are
            // here, behind their own ports, so it is forged by someone on the
            // uplink's segment to be judged as that pod. Only ports that carry
            // the node's traffic may bring a pod's address back (hairpin).
            // ARP and ND speaking for a pod's address from there are forged
            // the same way, to point the pods' neighbour caches elsewhere.
            if let Class::Ip(pkt) = &frame.class {
                if !a.faces_node(in_port) && a.is_pod_address(pkt.flow.src.ip()) {
                    return Err(DropReason::SpoofedSource);
                }
            } else if !a.faces_node(in_port) && a.neighbour_claims_pod(frame, bytes) {
                return Err(DropReason::SpoofedSource);
            }
            // A MAC a pod port speaks with, used on a port with no pod: one
            // side forges it, and which cannot be told (a pod may have taken
            // the gateway's MAC before the gateway first spoke). The frame
            // passes, as it would have, but is not learnt: learnt, it would
            // make every frame of the pod look like an impersonation;
            // dropped, a pod that took the gateway's MAC would cut it off.
            // Pods still reach the MAC's owner behind this port: IP, ARP
            // and ND not for a pod go to the ports with no pod whatever the
            // MAC table says.
            if self.local_pins.holder(&frame.src_mac).is_none() {
                return Ok(true);
            }
            self.counters.pod_mac_conflicts.inc();
            return Ok(false);
        };
        // A pod has no business with VLAN tags: a tagged frame would leave on
        // a trunk uplink in the VLAN the pod chose, and its (VLAN, MAC) pair
        // would slip past the MAC checks below.
        if frame.vlan.is_some() {
            return Err(DropReason::SpoofedSource);
        }
        // Before the first table IP is dropped as fail-closed, and counted
        // so; it teaches the switch nothing either (a pod must not be able
        // to hold a MAC by sending before the first table).
        if self.current.fail_closed && matches!(frame.class, Class::Ip(_)) {
            return Ok(false);
        }
        if let Some(reason) = pod.refuses(&frame.class, bytes, a) {
            return Err(reason);
        }
        if self.pod_mac_ok(in_port, frame, now) {
            Ok(true)
        } else {
            Err(DropReason::SpoofedSource)
        }
    }

    /// A newer table may put another pod behind a port: the pin of the pod
    /// that left goes (the new pod pins its own MAC with its first frame).
    /// Every worker does this when it takes the table up; the first one
    /// releases the pin, and a pin the new pod took meanwhile stays. (The
    /// worker's copy of the pins is refreshed later in `begin_batch`.)
    fn release_changed_ports(&mut self, old: &Addresses) {
        let new = &self.current.addresses;
        for p in 0..self.ports {
            if old.pod_at(p).is_some() && (new.pod_at(p).is_none() || old.epoch(p) != new.epoch(p)) {
                self.pins.release(usize::from(p), old.epoch(p));
            }
        }
    }

    /// A pod port speaks with one MAC: the first it used, unless that MAC
    /// is live on another port (a station elsewhere, which it must not
    /// impersonate) or another pod port speaks with it; and never with a
    /// MAC that has since shown up live on another port. The pins are
    /// shared by the workers: the first to see the port speak takes it.
    #[inline]
    fn pod_mac_ok(&mut self, in_port: PortId, frame: &Frame, now: u64) -> bool {
        let elsewhere =
            self.switch.station_port(frame.vlan, &frame.src_mac, now).is_some_and(|p| p != in_port);
        let (port, mac) = (usize::from(in_port), frame.src_mac);
        let epoch = self.current.addresses.epoch(in_port);
        let pin = match self.pins.get(port) {
            Some(pin) => pin,
            // The local copy first: a pod repeating another's MAC is refused
            // without a walk over the shared pins.
            None if elsewhere
                || mac[0] & 1 == 1
                || self.local_pins.holder(&mac).is_some_and(|p| p != port)
                || self.pins.held_elsewhere(port, mac) =>
            {
                return false
            }
            None => match self.pins.try_pin(port, Pin { mac, epoch }) {
                Some(pin) => {
                    self.local_pins.note(port, pin.mac);
                    pin
                }
                None => return false,
            },
        };
        // A pin of another pod (a newer table this worker has not taken up,
        // or an older pod's not released yet) is not this pod's.
        pin.epoch == epoch && pin.mac == mac && !elsewhere
    }

    /// Policy for an IP packet: `None` allows.
    #[inline]
    fn ip(&mut self, pkt: &IpPacket, in_port: PortId, now: u64) -> Option<DropReason> {
        let t = &*self.current;
        if let Fragment::Later(id) = pkt.fragment {
            let Some(first) = self.frags.later(&DatagramKey::of(&pkt.flow, id), now) else {
                return Some(DropReason::FragmentNoFirst);
            };
            if first.verdict.is_some() || first.generation == t.generation {
                return first.verdict;
            }
            // Allowed under an older table: still allowed by this one? As its
            // connection would be re-checked (the connection's opening flow,
            // or the first fragment's own when nothing tracks it).
            let Some(flow) = first.flow else {
                return Some(DropReason::FragmentNoFirst);
            };
            let opening = self.conntrack.get(&flow).map_or(flow, |c| c.original);
            return if t.allows(&opening) { None } else { Some(DropReason::Revoked) };
        }
        let admission =
            Admission::new(&t.table, &t.hits, self.worker, &pkt.flow).with_node(&t.addresses, in_port);
        let verdict = match self.conntrack.packet(pkt, &admission, t.generation, now) {
            Outcome::Pass(_) => None,
            Outcome::Drop(CtDrop::Policy) => {
                if self.deny_log.enabled() {
                    // Conntrack denied the packet's own flow (in both orientations, for
                    // a mid-stream segment): the log names both sides of the packet's own
                    // direction, looked up again only when the rate allows a line.
                    let (f, worker, generation) = (&pkt.flow, self.worker, t.generation);
                    let record = || DeniedFlow {
                        src: f.src.ip(),
                        dst: f.dst.ip(),
                        protocol: f.proto,
                        port: f.policy_port(),
                        verdict: t.table.verdict_both(f.src.ip(), f.dst.ip(), f.proto, f.policy_port()),
                        generation,
                        worker,
                    };
                    self.deny_log.offer(record, now, &self.counters.denied_log_suppressed);
                }
                Some(DropReason::Policy)
            }
            Outcome::Drop(CtDrop::Revoked) => Some(DropReason::Revoked),
            Outcome::Drop(CtDrop::Full) => Some(DropReason::ConntrackFull),
            Outcome::Drop(CtDrop::NoConnection) => Some(DropReason::TcpNoConnection),
        };
        if let Fragment::First(id) = pkt.fragment {
            let record = FragVerdict { verdict, generation: t.generation, flow: Some(pkt.flow) };
            self.first_fragment(DatagramKey::of(&pkt.flow, id), record, in_port, now);
        }
        verdict
    }

    /// Records a first fragment's verdict, as `in_port`'s (out of line:
    /// unfragmented packets pay nothing for it).
    #[cold]
    #[inline(never)]
    fn first_fragment(&mut self, id: DatagramKey, record: FragVerdict, in_port: PortId, now: u64) {
        self.frags.first(&id, record, u32::from(in_port), now);
    }

    /// The worker's connection table (read-only: inspection and tests).
    pub fn conntrack(&self) -> &Conntrack {
        &self.conntrack
    }

    /// The worker's counters.
    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// The table in use since the last [`Pipeline::begin_batch`].
    pub fn table(&self) -> &PublishedTable {
        &self.current
    }

    /// Forgets every tracked connection (keeps the memory). Later packets of
    /// those connections are decided as new ones (TCP: picked up).
    pub fn clear_connections(&mut self) {
        self.conntrack.clear();
    }

    /// Re-checks every connection against the current table now. O(capacity);
    /// for an idle worker. Returns the number revoked.
    pub fn revalidate_all(&mut self) -> usize {
        if self.current.fail_closed {
            return 0;
        }
        self.revalidate_remaining = 0;
        let t = &*self.current;
        self.conntrack.revalidate_all(t, t.generation)
    }
}
