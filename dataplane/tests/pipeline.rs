//! The pipeline end to end with real compiled tables: frames in, actions and counters out.

use std::sync::Arc;

use arc_swap::ArcSwap;
use dataplane::parse::{ParseError, TcpFlags as F};
use dataplane::testing::{self, Host};
use dataplane::{
    Action, ConfigError, DropReason, Mode, Pipeline, PipelineConfig, PublishedTable, WorkerCounters,
};

const SEC: u64 = 1_000_000_000;

struct Rig {
    tables: Arc<ArcSwap<PublishedTable>>,
    p: Pipeline,
    client: Host,
    server: Host,
    other: Host,
}

/// Client on port 0, server on port 1, other on port 2 (switch mode).
fn rig_with(cfg: PipelineConfig, published: PublishedTable) -> Rig {
    let tables = Arc::new(ArcSwap::from_pointee(published));
    let counters = Arc::new(WorkerCounters::new(usize::from(cfg.ports)));
    let mut p = Pipeline::new(&cfg, tables.clone(), counters);
    p.begin_batch(0);
    Rig { tables, p, client: Host::new(1), server: Host::new(2), other: Host::new(3) }
}

fn rig() -> Rig {
    let cfg = PipelineConfig { ports: 3, ..Default::default() };
    rig_with(cfg, published(1, testing::client_server_table()))
}

fn published(generation: u64, table: policy_compiler::DecisionTable) -> PublishedTable {
    PublishedTable::new(generation, table, 1)
}

impl Rig {
    /// Lets every station speak once (ARP) so the switch knows where it is.
    fn learn_all(&mut self) {
        let (c, s, o) = (self.client, self.server, self.other);
        assert_eq!(self.p.process(0, &testing::arp_request(&c, &s), 0), Action::Flood);
        assert_eq!(self.p.process(1, &testing::arp_request(&s, &c), 0), Action::Flood);
        assert_eq!(self.p.process(2, &testing::arp_request(&o, &c), 0), Action::Flood);
    }
}

#[test]
fn fail_closed_passes_only_arp_and_nd() {
    let mut r = rig_with(PipelineConfig::default(), PublishedTable::fail_closed());
    let (c, s) = (r.client, r.server);
    let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]);
    assert_eq!(r.p.process(0, &syn, 0), Action::Drop(DropReason::FailClosed));
    assert_eq!(r.p.process(0, &testing::arp_request(&c, &s), 0), Action::Flood);
    assert!(r.p.conntrack().is_empty());
    assert!(r.p.counters().snapshot().fail_closed);
    // The first real table arrives: IP flows from the next batch on.
    r.tables.store(Arc::new(published(1, testing::client_server_table())));
    r.p.begin_batch(1);
    // The client was learned from its dropped frame; the server not yet: flood.
    assert_eq!(r.p.process(0, &syn, 1), Action::Flood);
    let snap = r.p.counters().snapshot();
    assert!(!snap.fail_closed);
    assert_eq!(snap.table_generation, 1);
}

#[test]
fn before_the_first_table_pod_ports_speak_for_no_address() {
    use dataplane::addresses::{Addresses, PodAddrs};
    let addresses = Addresses::new(vec![Some(PodAddrs::default()), None], Vec::new());
    let mut r = rig_with(PipelineConfig::default(), PublishedTable::fail_closed().with_addresses(addresses));
    let (c, gateway) = (r.client, Host::new(50));
    // The pod claims the gateway's address: refused. Its probe passes; IP counts as fail-closed.
    let mut liar = gateway;
    liar.mac = c.mac;
    assert_eq!(r.p.process(0, &testing::arp_request(&liar, &c), 0), Action::Drop(DropReason::SpoofedSource));
    let mut probe = c;
    probe.ip4 = [0; 4];
    assert_eq!(r.p.process(0, &testing::arp_request(&probe, &gateway), 0), Action::Flood);
    let syn = testing::tcp(&c, 40000, &gateway, 80, F::SYN, false, &[]);
    assert_eq!(r.p.process(0, &syn, 0), Action::Drop(DropReason::FailClosed));
}

#[test]
fn connections_not_packets() {
    let mut r = rig();
    r.learn_all();
    let (c, s, o) = (r.client, r.server, r.other);
    for v6 in [false, true] {
        let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, v6, &[]);
        assert_eq!(r.p.process(0, &syn, 1), Action::Forward(1));
        let synack = testing::tcp(&s, 80, &c, 40000, F::SYN | F::ACK, v6, &[]);
        assert_eq!(r.p.process(1, &synack, 2), Action::Forward(0));
        let ack = testing::tcp(&c, 40000, &s, 80, F::ACK, v6, b"GET /");
        assert_eq!(r.p.process(0, &ack, 3), Action::Forward(1));
        // The server may not open its own connection to the client.
        let back = testing::tcp(&s, 80, &c, 40001, F::SYN, v6, &[]);
        assert_eq!(r.p.process(1, &back, 4), Action::Drop(DropReason::Policy));
        // Wrong port, and a pod that is not allowed.
        let ssh = testing::tcp(&c, 40002, &s, 22, F::SYN, v6, &[]);
        assert_eq!(r.p.process(0, &ssh, 4), Action::Drop(DropReason::Policy));
        let stranger = testing::tcp(&o, 40000, &s, 80, F::SYN, v6, &[]);
        assert_eq!(r.p.process(2, &stranger, 4), Action::Drop(DropReason::Policy));
        // UDP 53 request and answer.
        let q = testing::udp(&c, 5353, &s, 53, v6, b"q");
        assert_eq!(r.p.process(0, &q, 5), Action::Forward(1));
        let a = testing::udp(&s, 53, &c, 5353, v6, b"a");
        assert_eq!(r.p.process(1, &a, 6), Action::Forward(0));
        // Ping to the unisolated pod and its reply; ping to the server is denied
        // (its only rule names ports of TCP/UDP/SCTP).
        assert_eq!(r.p.process(0, &testing::echo(&c, &o, 7, true, v6), 7), Action::Forward(2));
        assert_eq!(r.p.process(2, &testing::echo(&o, &c, 7, false, v6), 7), Action::Forward(0));
        assert_eq!(r.p.process(0, &testing::echo(&c, &s, 7, true, v6), 7), Action::Drop(DropReason::Policy));
    }
    let snap = r.p.counters().snapshot();
    assert_eq!(snap.drops["policy"], 8);
    // Conntrack gauges are published per batch.
    assert_eq!(snap.conntrack.created, 0);
    r.p.begin_batch(8);
    let snap = r.p.counters().snapshot();
    assert_eq!(snap.conntrack.created, 6);
    assert_eq!(snap.conntrack.entries, 6);
}

#[test]
fn enforcement_off_forwards_what_policy_denies_and_tracks_nothing() {
    let cfg = PipelineConfig { ports: 3, enforce: false, ..Default::default() };
    let mut r = rig_with(cfg, published(1, testing::client_server_table()));
    r.learn_all();
    let (c, s) = (r.client, r.server);
    // Denied with enforcement on (see connections_not_packets): forwarded here.
    let ssh = testing::tcp(&c, 40002, &s, 22, F::SYN, false, &[]);
    assert_eq!(r.p.process(0, &ssh, 1), Action::Forward(1));
    let back = testing::tcp(&s, 80, &c, 40001, F::SYN, true, &[]);
    assert_eq!(r.p.process(1, &back, 1), Action::Forward(0));
    assert!(r.p.conntrack().is_empty());
    // Malformed frames are still dropped, and ARP still learned.
    assert_eq!(r.p.process(0, &ssh[..20], 1), Action::Drop(DropReason::Parse(ParseError::Ipv4Truncated)));
    assert_eq!(r.p.counters().snapshot().drops["policy"], 0);
}

#[test]
fn revoked_connection_stops_on_its_next_packet() {
    // No background sweep: the revocation must come from the hit itself.
    let cfg = PipelineConfig { ports: 3, sweep_budget: 0, ..Default::default() };
    let mut r = rig_with(cfg, published(1, testing::client_server_table()));
    r.learn_all();
    let (c, s) = (r.client, r.server);
    let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]);
    let synack = testing::tcp(&s, 80, &c, 40000, F::SYN | F::ACK, false, &[]);
    let data = testing::tcp(&c, 40000, &s, 80, F::ACK | F::PSH, false, b"x");
    assert_eq!(r.p.process(0, &syn, 0), Action::Forward(1));
    assert_eq!(r.p.process(1, &synack, 0), Action::Forward(0));
    let idle = testing::udp(&c, 5353, &s, 53, false, b"q");
    assert_eq!(r.p.process(0, &idle, 0), Action::Forward(1));
    // A new table allows the same thing: nothing changes.
    r.tables.store(Arc::new(published(2, testing::client_server_table())));
    r.p.begin_batch(1);
    assert_eq!(r.p.process(0, &data, 1), Action::Forward(1));
    // A table that denies: the very next packet of the connection is dropped.
    r.tables.store(Arc::new(published(3, testing::client_server_table_denying())));
    r.p.begin_batch(2);
    assert_eq!(r.p.process(0, &data, 2), Action::Drop(DropReason::Revoked));
    assert!(r.p.conntrack().get(&flow_of(&data)).is_none());
    // Its replies are now new, denied flows.
    assert_eq!(r.p.process(1, &synack, 2), Action::Drop(DropReason::Policy));
    // The idle UDP flow goes with an explicit sweep.
    assert_eq!(r.p.revalidate_all(), 1);
    assert!(r.p.conntrack().is_empty());
    r.p.begin_batch(3);
    let snap = r.p.counters().snapshot();
    assert_eq!(snap.conntrack.revoked, 2);
    assert_eq!(snap.drops["revoked"], 1);
}

#[test]
fn idle_connections_are_revoked_by_the_batch_sweep() {
    let mut r = rig();
    r.learn_all();
    let (c, s) = (r.client, r.server);
    for port in 0..10u16 {
        let q = testing::udp(&c, 1000 + port, &s, 53, false, b"q");
        assert_eq!(r.p.process(0, &q, 0), Action::Forward(1));
    }
    r.tables.store(Arc::new(published(2, testing::client_server_table_denying())));
    // 64 slots per batch: the whole table is re-checked within capacity / 64 batches.
    let batches = r.p.conntrack().capacity().div_ceil(64);
    for i in 0..batches {
        r.p.begin_batch(1 + i as u64);
    }
    assert!(r.p.conntrack().is_empty());
    assert_eq!(r.p.counters().snapshot().conntrack.revoked, 10);
}

fn flow_of(frame: &[u8]) -> dataplane::parse::Flow {
    match dataplane::parse::parse(frame).unwrap().class {
        dataplane::parse::Class::Ip(p) => p.flow,
        c => panic!("not IP: {c:?}"),
    }
}

#[test]
fn fragments_follow_the_first() {
    let mut r = rig();
    r.learn_all();
    let (c, s) = (r.client, r.server);
    let mut first = testing::udp(&c, 5353, &s, 53, false, &[0; 64]);
    testing::make_ipv4_fragment(&mut first, 77, 0, true);
    let mut later = first.clone();
    testing::make_ipv4_fragment(&mut later, 77, 9, false);
    // A later fragment before its first: dropped.
    assert_eq!(r.p.process(0, &later, 0), Action::Drop(DropReason::FragmentNoFirst));
    assert_eq!(r.p.process(0, &first, 1), Action::Forward(1));
    assert_eq!(r.p.process(0, &later, 2), Action::Forward(1));
    // A denied datagram (port 54): its later fragments are denied too.
    let mut bad_first = testing::udp(&c, 5353, &s, 54, false, &[0; 64]);
    testing::make_ipv4_fragment(&mut bad_first, 78, 0, true);
    let mut bad_later = bad_first.clone();
    testing::make_ipv4_fragment(&mut bad_later, 78, 9, false);
    assert_eq!(r.p.process(0, &bad_first, 3), Action::Drop(DropReason::Policy));
    assert_eq!(r.p.process(0, &bad_later, 3), Action::Drop(DropReason::Policy));
    // The first fragment's verdict lasts 30 s.
    assert_eq!(r.p.process(0, &later, 1 + 30 * SEC), Action::Drop(DropReason::FragmentNoFirst));
}

/// A port sending first fragments far faster than the tracker holds them
/// (1,024 datagrams) does not push out another port's datagram before its
/// later fragments arrive.
#[test]
fn a_fragment_flood_from_one_port_spares_the_others() {
    let mut r = rig();
    r.learn_all();
    let (c, s, o) = (r.client, r.server, r.other);
    let mut first = testing::udp(&c, 5353, &s, 53, false, &[0; 64]);
    testing::make_ipv4_fragment(&mut first, 77, 0, true);
    let mut later = first.clone();
    testing::make_ipv4_fragment(&mut later, 77, 9, false);
    assert_eq!(r.p.process(0, &first, 1), Action::Forward(1));
    let mut flood = testing::udp(&o, 5353, &s, 53, false, &[0; 64]);
    for id in 0..20_000u16 {
        testing::make_ipv4_fragment(&mut flood, id, 0, true);
        r.p.process(2, &flood, 2);
    }
    let flood_later = {
        let mut f = flood.clone();
        testing::make_ipv4_fragment(&mut f, 19_999, 9, false);
        f
    };
    // The flood's newest datagram is tracked (its verdict, whatever it is, is
    // not `fragment_no_first`), the flood's first ones were pushed out, and
    // the client's datagram is still there.
    assert_ne!(r.p.process(2, &flood_later, 3), Action::Drop(DropReason::FragmentNoFirst));
    testing::make_ipv4_fragment(&mut flood, 0, 9, false);
    assert_eq!(r.p.process(2, &flood, 3), Action::Drop(DropReason::FragmentNoFirst));
    assert_eq!(r.p.process(0, &later, 3), Action::Forward(1));
}

/// A newer table reaches the later fragments of a datagram whose first was
/// allowed: judged again as their connection would be, allowed while it is
/// allowed, dropped as revoked once it is not.
#[test]
fn a_new_table_reaches_the_later_fragments_too() {
    let mut r = rig();
    r.learn_all();
    let (c, s) = (r.client, r.server);
    let fragments = |id| {
        let mut first = testing::udp(&c, 5353, &s, 53, false, &[0; 64]);
        testing::make_ipv4_fragment(&mut first, id, 0, true);
        let mut later = first.clone();
        testing::make_ipv4_fragment(&mut later, id, 9, false);
        (first, later)
    };
    // The server's answer, fragmented too: allowed as the reply of the query.
    let mut answer = testing::udp(&s, 53, &c, 5353, false, &[0; 64]);
    testing::make_ipv4_fragment(&mut answer, 90, 0, true);
    let mut answer_later = answer.clone();
    testing::make_ipv4_fragment(&mut answer_later, 90, 9, false);
    let (first, later) = fragments(80);
    assert_eq!(r.p.process(0, &first, 1), Action::Forward(1));
    assert_eq!(r.p.process(1, &answer, 1), Action::Forward(0));
    // A new table that allows the same: the later fragments still pass, the
    // answer's too (judged by its connection, opened by the client).
    r.tables.store(Arc::new(published(2, testing::client_server_table())));
    r.p.begin_batch(2);
    assert_eq!(r.p.process(0, &later, 2), Action::Forward(1));
    assert_eq!(r.p.process(1, &answer_later, 2), Action::Forward(0));
    // A table that denies the query: the rest of the datagram is revoked.
    let (first, later) = fragments(81);
    assert_eq!(r.p.process(0, &first, 3), Action::Forward(1));
    r.tables.store(Arc::new(published(3, testing::client_server_table_denying())));
    r.p.begin_batch(4);
    assert_eq!(r.p.process(0, &later, 4), Action::Drop(DropReason::Revoked));
}

#[test]
fn l2_behaviour_and_non_ip() {
    let mut r = rig();
    let (c, s) = (r.client, r.server);
    // Nothing learned yet: the SYN floods; the SYN-ACK goes to the learned client port.
    let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]);
    assert_eq!(r.p.process(0, &syn, 0), Action::Flood);
    let synack = testing::tcp(&s, 80, &c, 40000, F::SYN | F::ACK, false, &[]);
    assert_eq!(r.p.process(1, &synack, 0), Action::Forward(0));
    // A frame whose destination is on its own ingress port is filtered.
    assert_eq!(r.p.process(0, &syn, 0), Action::Forward(1));
    assert_eq!(r.p.process(1, &syn, 0), Action::Drop(DropReason::SamePort));
    // LLDP is dropped by default.
    let mut lldp = syn.clone();
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_eq!(r.p.process(0, &lldp, 0), Action::Drop(DropReason::NonIp));
    // Bad input port and parse errors are counted.
    assert_eq!(r.p.process(7, &syn, 0), Action::Drop(DropReason::BadPort));
    assert_eq!(r.p.process(0, &syn[..20], 0), Action::Drop(DropReason::Parse(ParseError::Ipv4Truncated)));
    let snap = r.p.counters().snapshot();
    assert_eq!(snap.drops["non_ip"], 1);
    assert_eq!(snap.drops["bad_port"], 1);
    assert_eq!(snap.drops["same_port"], 1);
    assert_eq!(snap.parse_errors["ipv4_truncated"], 1);
    assert_eq!(snap.frames_in, 7);
    assert_eq!(snap.ports[0].rx_frames, 4);
    assert_eq!(snap.ports[0].rx_bytes, 3 * syn.len() as u64 + 20);

    // forward_non_ip behaves like a bridge; wire mode sends to the other port.
    let cfg = PipelineConfig { mode: Mode::Wire, forward_non_ip: true, ..Default::default() };
    let mut w = rig_with(cfg, published(1, testing::client_server_table()));
    assert_eq!(w.p.process(0, &lldp, 0), Action::Forward(1));
    assert_eq!(w.p.process(1, &lldp, 0), Action::Forward(0));
}

#[test]
fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
    let cfg: PipelineConfig = serde_json::from_str(
        r#"{"mode": "wire", "conntrack_capacity": 1024, "timeouts": {"tcp_established": 3600}}"#,
    )
    .unwrap();
    assert_eq!(cfg.mode, Mode::Wire);
    assert_eq!(cfg.ports, 2);
    assert_eq!(cfg.conntrack_capacity, 1024);
    assert_eq!(cfg.timeouts.tcp_established, 3600);
    assert_eq!(cfg.timeouts.tcp_handshake, 30);
    assert!(serde_json::from_str::<PipelineConfig>(r#"{"conntrack_size": 1}"#).is_err());
    assert!(serde_json::from_str::<PipelineConfig>(r#"{"timeouts": {"tcp": 1}}"#).is_err());

    let bad = PipelineConfig { mode: Mode::Wire, ports: 3, ..Default::default() };
    assert_eq!(bad.validate(), Err(ConfigError::WirePorts { ports: 3 }));
    let zero = PipelineConfig { conntrack_capacity: 0, ..Default::default() };
    assert!(matches!(zero.validate(), Err(ConfigError::Capacity { field: "conntrack_capacity", .. })));
    let tables = Arc::new(ArcSwap::from_pointee(PublishedTable::fail_closed()));
    let few = Arc::new(WorkerCounters::new(1));
    assert_eq!(
        Pipeline::try_new(&PipelineConfig::default(), tables, few).err(),
        Some(ConfigError::CounterPorts { counters: 1, ports: 2 })
    );
}

#[test]
fn full_table_refuses_new_connections_and_keeps_established() {
    let cfg = PipelineConfig { ports: 3, conntrack_capacity: 4, ..Default::default() };
    let mut r = rig_with(cfg, published(1, testing::client_server_table()));
    r.learn_all();
    let (c, s) = (r.client, r.server);
    // Four assured UDP flows (query, answer, query again): never evicted.
    for port in 0..4u16 {
        let q = testing::udp(&c, 1000 + port, &s, 53, false, b"q");
        let a = testing::udp(&s, 53, &c, 1000 + port, false, b"a");
        assert_eq!(r.p.process(0, &q, 0), Action::Forward(1));
        assert_eq!(r.p.process(1, &a, 0), Action::Forward(0));
        assert_eq!(r.p.process(0, &q, 0), Action::Forward(1));
    }
    for port in 0..50u16 {
        let syn = testing::tcp(&c, 2000 + port, &s, 80, F::SYN, false, &[]);
        assert_eq!(r.p.process(0, &syn, 1), Action::Drop(DropReason::ConntrackFull));
    }
    let a = testing::udp(&s, 53, &c, 1000, false, b"a");
    assert_eq!(r.p.process(1, &a, 2), Action::Forward(0));
    r.p.begin_batch(3);
    let snap = r.p.counters().snapshot();
    assert_eq!(snap.drops["conntrack_full"], 50);
    assert_eq!(snap.conntrack.full, 50);
    assert_eq!(snap.conntrack.entries, 4);
}

/// With pods behind the ports, one pod filling the table fills only its
/// share (`conntrack_pod_share`, 50% by default): the other pods' new
/// connections, and those from the uplink, still get slots.
#[test]
fn a_pod_filling_the_connection_table_fills_only_its_share() {
    use dataplane::addresses::{Addresses, PodAddrs};
    let cfg = PipelineConfig { ports: 4, conntrack_capacity: 8, ..Default::default() };
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
    let pods = [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
    let addresses = Addresses::new(pods.into_iter().chain([None]).collect(), vec![]);
    let mut r = rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses));
    r.learn_all();
    // The client's assured UDP flows to the server (query, answer, query again).
    let mut opened = 0;
    for port in 0..8u16 {
        let q = testing::udp(&c, 1000 + port, &s, 53, false, b"q");
        if r.p.process(0, &q, 0) != Action::Forward(1) {
            continue;
        }
        opened += 1;
        assert_eq!(
            r.p.process(1, &testing::udp(&s, 53, &c, 1000 + port, false, b"a"), 0),
            Action::Forward(0)
        );
        assert_eq!(r.p.process(0, &q, 0), Action::Forward(1));
    }
    assert_eq!(opened, 4, "half the table");
    // The other pod (not isolated) and a station behind the uplink still connect.
    let outside = Host::new(60);
    assert_eq!(r.p.process(3, &testing::arp_request(&outside, &o), 1), Action::Flood);
    assert_eq!(r.p.process(2, &testing::udp(&o, 7000, &outside, 53, false, b"q"), 1), Action::Forward(3));
    assert_eq!(r.p.process(3, &testing::udp(&outside, 7001, &o, 53, false, b"q"), 1), Action::Forward(2));
    r.p.begin_batch(2);
    let snap = r.p.counters().snapshot();
    assert_eq!((snap.conntrack.full, snap.conntrack.over_share), (4, 4));
    assert_eq!(snap.conntrack.entries, 6);
}

/// SCTP (crafted: the kernel here has no SCTP) is allowed on its policy port
/// and its reply passes; other SCTP ports are denied.
#[test]
fn sctp_by_port() {
    let mut r = rig();
    r.learn_all();
    let (c, s) = (r.client, r.server);
    let sctp = |from: &Host, sp: u16, to: &Host, dp: u16| {
        // IPv4 + SCTP common header (12 bytes) + an empty chunk header.
        let mut f = testing::udp(from, sp, to, dp, false, &[0; 8]);
        f[14 + 9] = 132; // protocol
        f
    };
    assert_eq!(r.p.process(0, &sctp(&c, 7000, &s, 9000), 0), Action::Forward(1));
    assert_eq!(r.p.process(1, &sctp(&s, 9000, &c, 7000), 0), Action::Forward(0));
    assert_eq!(r.p.process(0, &sctp(&c, 7000, &s, 9001), 0), Action::Drop(DropReason::Policy));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid_frames() -> Vec<Vec<u8>> {
        let (c, s) = (Host::new(1), Host::new(2));
        let mut first = testing::udp(&c, 5353, &s, 53, false, &[0; 64]);
        testing::make_ipv4_fragment(&mut first, 5, 0, true);
        let mut later = testing::udp(&c, 5353, &s, 53, false, &[0; 64]);
        testing::make_ipv4_fragment(&mut later, 5, 3, false);
        let syn6 = testing::tcp(&c, 40001, &s, 80, F::SYN, true, &[]);
        let udp6 = testing::udp(&c, 5000, &s, 53, true, b"0123456789abcdef");
        let syn4 = testing::tcp(&c, 40002, &s, 80, F::SYN, false, &[]);
        vec![
            testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]),
            testing::tcp(&s, 80, &c, 40000, F::SYN | F::ACK, true, b"x"),
            testing::udp(&c, 5353, &s, 53, true, b"q"),
            testing::echo(&c, &s, 1, true, false),
            testing::echo(&s, &c, 1, false, true),
            testing::arp_request(&c, &s),
            first,
            nd(&c, 136, c.ip6, c.ip6),
            nd(&s, 135, [0; 16], c.ip6),
            // Headers the parser walks or refuses: fragments, extension
            // headers, options, errors quoting a packet, tags.
            later,
            testing::with_ipv6_header(&udp6, 44, vec![0, 0, 0, 1, 0, 0, 0, 7]),
            testing::with_ipv6_header(&udp6, 44, vec![0, 0, 0, 8, 0, 0, 0, 7]),
            testing::with_ipv6_header(&syn6, 43, vec![0, 0, 4, 1, 0, 0, 0, 0]),
            testing::with_ipv6_header(&syn6, 51, vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
            testing::with_ipv6_header(&syn6, 135, vec![0, 0, 5, 0, 0, 0, 0, 0]),
            testing::with_ipv4_options(&syn4, &[1, 131, 7, 4, 10, 0, 0, 9]),
            testing::unreachable(&s, &c, &syn4, false),
            testing::unreachable(&s, &c, &syn6, true),
            testing::tagged(&syn4, 5),
            testing::tagged(&testing::arp_reply(&s, &c), 5),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes, on any port, at any time: an action, never a panic,
        /// and every frame is counted exactly once. And nothing passes that
        /// the table denies: an IP packet forwarded or flooded is allowed in
        /// its own direction, or belongs to a tracked connection that was
        /// allowed when it opened, or comes from or goes to the node (its
        /// exemption). (Later fragments and ICMP errors follow their first
        /// fragment or their connection, and carry no flow of their own to
        /// judge.) Index past the fixtures: a frame of garbage.
        #[test]
        fn pipeline_never_panics(
            frames in proptest::collection::vec(
                (0usize..24, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                 any::<usize>(), 0u16..4, any::<u64>()),
                1..24),
            pod_ports in any::<bool>(),
        ) {
            use dataplane::addresses::{Addresses, PodAddrs};
            let cfg = PipelineConfig { ports: 3, conntrack_capacity: 8, ..Default::default() };
            let mut table = published(1, testing::client_server_table());
            if pod_ports {
                // Ports 0 and 1 lead to pods (their checks run on every frame), 2 is an uplink.
                let pods = [1, 2].map(|n| Some(PodAddrs::new([Host::new(n).v4(), Host::new(n).v6()])));
                table = table.with_addresses(Addresses::new(pods.into_iter().chain([None]).collect(), vec![Host::new(9).v4()]));
            }
            let mut r = rig_with(cfg, table);
            let base = valid_frames();
            for (which, edits, cut, port, now) in &frames {
                let mut f = base.get(*which).cloned().unwrap_or_else(|| vec![0x55; 64]);
                for (at, b) in edits {
                    let n = f.len();
                    f[at % n] = *b;
                }
                let n = f.len();
                f.truncate(cut % (n + 1));
                r.p.begin_batch(*now);
                let action = r.p.process(*port, &f, *now);
                if matches!(action, Action::Drop(_)) {
                    continue;
                }
                let Ok(dataplane::parse::Frame { class: dataplane::parse::Class::Ip(pkt), .. }) =
                    dataplane::parse::parse(&f)
                else {
                    continue;
                };
                let related = matches!(pkt.l4, dataplane::parse::L4::IcmpError(_))
                    || matches!(pkt.fragment, dataplane::parse::Fragment::Later(_));
                let node = Host::new(9).v4();
                let (flow, table) = (pkt.flow, r.tables.load().table.clone());
                let allowed = |f: dataplane::parse::Flow| {
                    table.verdict(f.src.ip(), f.dst.ip(), f.proto, f.policy_port()).allowed()
                };
                // A reply passes for its tracked connection, which was allowed when it opened.
                let tracked = r.p.conntrack().get(&flow).is_some_and(|c| allowed(c.original));
                prop_assert!(
                    related
                        || (pod_ports && (flow.src.ip() == node || flow.dst.ip() == node))
                        || allowed(flow)
                        || tracked,
                    "{:?} passed ({:?}): {:?}", flow, action, table.verdict_both(flow.src.ip(), flow.dst.ip(), flow.proto, flow.policy_port())
                );
            }
            let s = r.p.counters().snapshot();
            prop_assert_eq!(s.frames_in, frames.len() as u64);
            prop_assert_eq!(s.forwarded + s.flooded + s.dropped, frames.len() as u64);
        }
    }
}

#[test]
fn allowed_connections_are_counted_per_policy_and_denied_ones_logged_at_a_bounded_rate() {
    use dataplane::observe::{denied_channel, DenyLog, HitDirection};
    use policy_compiler::Side;

    let cfg = PipelineConfig { ports: 3, ..Default::default() };
    let tables = Arc::new(ArcSwap::from_pointee(published(1, testing::client_server_table())));
    let counters = Arc::new(WorkerCounters::new(3));
    let (tx, rx) = denied_channel();
    let mut p = Pipeline::new(&cfg, tables.clone(), counters.clone())
        .with_worker(0)
        .with_deny_log(DenyLog::new(tx, 2));
    p.begin_batch(0);
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
    for (port, a, b) in [(0, &c, &s), (1, &s, &c), (2, &o, &c)] {
        assert_eq!(p.process(port, &testing::arp_request(a, b), 0), Action::Flood);
    }
    let server_ingress = (0..2).find(|&i| tables.load().table.policy(i).1 == "server-ingress").unwrap();

    // Three connections client -> server on TCP 80, each with a few packets:
    // three hits for server-ingress (ingress), whatever the packet count.
    for sport in [40000, 40001, 40002] {
        assert_eq!(
            p.process(0, &testing::tcp(&c, sport, &s, 80, F::SYN, false, &[]), SEC),
            Action::Forward(1)
        );
        let synack = testing::tcp(&s, 80, &c, sport, F::SYN | F::ACK, false, &[]);
        assert_eq!(p.process(1, &synack, SEC), Action::Forward(0));
        for _ in 0..3 {
            let data = testing::tcp(&c, sport, &s, 80, F::ACK, false, b"x");
            assert_eq!(p.process(0, &data, SEC), Action::Forward(1));
        }
    }
    let hits = &tables.load().hits;
    assert_eq!(hits.total(server_ingress as usize, HitDirection::Ingress), 3);
    assert_eq!(hits.total(server_ingress as usize, HitDirection::Egress), 0);
    // `other` is not isolated and client's policy allows nothing: no other hit.
    let all: u64 = (0..hits.policies())
        .flat_map(|i| [HitDirection::Ingress, HitDirection::Egress].map(|d| hits.total(i, d)))
        .sum();
    assert_eq!(all, 3);

    // Five denied connections (other -> server) within one instant: two logged
    // (the bucket holds two), three suppressed; none of them is a hit.
    for sport in 50000..50005 {
        let syn = testing::tcp(&o, sport, &s, 80, F::SYN, false, &[]);
        assert_eq!(p.process(2, &syn, 2 * SEC), Action::Drop(DropReason::Policy));
    }
    let logged: Vec<_> = rx.try_iter().collect();
    assert_eq!(logged.len(), 2);
    assert_eq!(counters.snapshot().denied_log_suppressed, 3);
    let d = logged[0];
    assert_eq!((d.src, d.dst, d.protocol, d.port, d.generation), (o.v4(), s.v4(), 6, 80, 1));
    // Both sides are named (the record is built with `verdict_both`).
    assert_eq!(d.verdict.egress, Side::NotIsolated);
    assert!(matches!(d.verdict.ingress, Side::Denied(_)), "{:?}", d.verdict);
    assert_eq!(hits.total(server_ingress as usize, HitDirection::Ingress), 3);
    // A second later the bucket has refilled.
    let syn = testing::tcp(&o, 50010, &s, 80, F::SYN, false, &[]);
    assert_eq!(p.process(2, &syn, 3 * SEC), Action::Drop(DropReason::Policy));
    assert_eq!(rx.try_iter().count(), 1);
}

/// Per-policy allow hits count connections admitted into the table: not the
/// probes of packets that track nothing (a reply-only segment, dropped; RSTs
/// without a connection, passed untracked), nor a connection refused because
/// the table is full.
#[test]
fn policy_hits_count_admitted_connections_only() {
    use dataplane::observe::HitDirection;
    let cfg = PipelineConfig { ports: 3, conntrack_capacity: 1, ..Default::default() };
    let mut r = rig_with(cfg, published(1, testing::client_server_table()));
    r.learn_all();
    let (c, s) = (r.client, r.server);
    let tables = r.tables.clone();
    let server_ingress =
        (0..2).find(|&i| tables.load().table.policy(i).1 == "server-ingress").unwrap() as usize;
    let hits = || tables.load().hits.total(server_ingress, HitDirection::Ingress);

    let reply_only = testing::tcp(&s, 80, &c, 40000, F::ACK, false, &[]);
    assert_eq!(r.p.process(1, &reply_only, 0), Action::Drop(DropReason::TcpNoConnection));
    for _ in 0..3 {
        let rst = testing::tcp(&c, 40001, &s, 80, F::RST, false, &[]);
        assert_eq!(r.p.process(0, &rst, 0), Action::Forward(1));
    }
    assert_eq!(hits(), 0, "no connection was admitted");

    // One connection, several packets: one hit.
    assert_eq!(r.p.process(0, &testing::tcp(&c, 40002, &s, 80, F::SYN, false, &[]), 1), Action::Forward(1));
    let synack = testing::tcp(&s, 80, &c, 40002, F::SYN | F::ACK, false, &[]);
    assert_eq!(r.p.process(1, &synack, 1), Action::Forward(0));
    assert_eq!(r.p.process(0, &testing::tcp(&c, 40002, &s, 80, F::ACK, false, &[]), 1), Action::Forward(1));
    assert_eq!(hits(), 1);

    // The one slot holds that established connection: the next one is refused, not counted.
    let syn = testing::tcp(&c, 40003, &s, 80, F::SYN, false, &[]);
    assert_eq!(r.p.process(0, &syn, 2), Action::Drop(DropReason::ConntrackFull));
    assert_eq!(hits(), 1);
}

/// A denied packet is logged with its own flow's verdict, also when conntrack
/// also asked about the reverse orientation (a mid-stream TCP segment denied
/// both ways: the log must not blame the policies of the other direction).
#[test]
fn denied_flow_log_blames_the_packets_own_direction() {
    use dataplane::observe::{denied_channel, DenyLog};
    use std::net::IpAddr;

    let cfg = PipelineConfig { ports: 3, ..Default::default() };
    let tables = Arc::new(ArcSwap::from_pointee(published(1, testing::client_server_table())));
    let counters = Arc::new(WorkerCounters::new(3));
    let (tx, rx) = denied_channel();
    let mut p = Pipeline::new(&cfg, tables.clone(), counters).with_deny_log(DenyLog::new(tx, 100));
    p.begin_batch(0);
    let (c, s) = (Host::new(1), Host::new(2));
    for (port, a, b) in [(0, &c, &s), (1, &s, &c)] {
        assert_eq!(p.process(port, &testing::arp_request(a, b), 0), Action::Flood);
    }
    let verdict = |src: IpAddr, dst: IpAddr, port: u16| tables.load().table.verdict_both(src, dst, 6, port);
    // server:81 -> client:40000 is denied by the client's ingress policy; the
    // reverse (client -> server:81) by the server's: two different verdicts.
    let forward = verdict(s.v4(), c.v4(), 40000);
    let reverse = verdict(c.v4(), s.v4(), 81);
    assert!(!forward.allowed() && !reverse.allowed() && forward != reverse);
    let ack = testing::tcp(&s, 81, &c, 40000, F::ACK, false, b"x");
    assert_eq!(p.process(1, &ack, SEC), Action::Drop(DropReason::Policy));
    let logged: Vec<_> = rx.try_iter().collect();
    assert_eq!(logged.len(), 1);
    let d = logged[0];
    assert_eq!((d.src, d.dst, d.port), (s.v4(), c.v4(), 40000));
    assert_eq!(d.verdict, forward);
}

/// ICMP echo with identifier 0, on real frames (v4 and v6): the client may ping
/// `other`, `other` may not ping the client (its ingress is isolated). Both
/// requests have ports (0, 0), like the reply: the reverse request must be
/// judged as a request of its own, not passed as the reply.
#[test]
fn echo_id_zero_reverse_request_is_denied() {
    let mut r = rig();
    r.learn_all();
    let (c, o) = (r.client, r.other);
    for v6 in [false, true] {
        assert_eq!(r.p.process(0, &testing::echo(&c, &o, 0, true, v6), 1), Action::Forward(2));
        let reverse = testing::echo(&o, &c, 0, true, v6);
        assert_eq!(r.p.process(2, &reverse, 2), Action::Drop(DropReason::Policy), "v6 {v6}");
        assert_eq!(r.p.process(2, &testing::echo(&o, &c, 0, false, v6), 3), Action::Forward(0));
    }
}

/// Without symmetric RSS a reply reaches a worker that never saw its
/// connection (the conntrack module doc): with the default configuration it
/// is dropped there (TCP: no connection; UDP: denied as a new flow); only
/// `tcp_reverse_pickup` passes TCP replies.
#[test]
fn a_reply_on_a_worker_that_never_saw_the_connection() {
    let tables = Arc::new(ArcSwap::from_pointee(published(1, testing::client_server_table())));
    let worker = |cfg: &PipelineConfig| {
        let mut p = Pipeline::new(cfg, tables.clone(), Arc::new(WorkerCounters::new(3)));
        p.begin_batch(0);
        let (c, s) = (Host::new(1), Host::new(2));
        for (port, a, b) in [(0, &c, &s), (1, &s, &c)] {
            assert_eq!(p.process(port, &testing::arp_request(a, b), 0), Action::Flood);
        }
        p
    };
    let default = PipelineConfig { ports: 3, ..Default::default() };
    assert!(!default.tcp_reverse_pickup);
    let (c, s) = (Host::new(1), Host::new(2));
    let (mut first, mut other) = (worker(&default), worker(&default));
    assert_eq!(first.process(0, &testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]), 1), Action::Forward(1));
    let synack = testing::tcp(&s, 80, &c, 40000, F::SYN | F::ACK, false, &[]);
    assert_eq!(other.process(1, &synack, 1), Action::Drop(DropReason::TcpNoConnection));
    assert_eq!(first.process(0, &testing::udp(&c, 5353, &s, 53, false, b"q"), 1), Action::Forward(1));
    let answer = testing::udp(&s, 53, &c, 5353, false, b"a");
    assert_eq!(other.process(1, &answer, 1), Action::Drop(DropReason::Policy));
    // The same replies on the worker that saw the connections pass.
    assert_eq!(first.process(1, &synack, 1), Action::Forward(0));
    assert_eq!(first.process(1, &answer, 1), Action::Forward(0));

    let mut reverse = worker(&PipelineConfig { tcp_reverse_pickup: true, ..default });
    assert_eq!(reverse.process(1, &synack, 1), Action::Forward(0));
    assert_eq!(reverse.process(1, &answer, 1), Action::Drop(DropReason::Policy));
}

/// Ports 0-2 lead to client, server and other; port 3 is an uplink; the node
/// has `node`. Nobody has spoken yet.
fn pod_ports_rig_silent(node: Vec<std::net::IpAddr>) -> Rig {
    use dataplane::addresses::{Addresses, PodAddrs};
    let cfg = PipelineConfig { ports: 4, ..Default::default() };
    let pods = [1, 2, 3].map(|n| Some(PodAddrs::new([Host::new(n).v4(), Host::new(n).v6()])));
    let addresses = Addresses::new(pods.into_iter().chain([None]).collect(), node);
    rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses))
}

/// [`pod_ports_rig_silent`] after each pod has spoken once.
fn pod_ports_rig(node: Vec<std::net::IpAddr>) -> Rig {
    let mut r = pod_ports_rig_silent(node);
    r.learn_all();
    r
}

/// A pod may not source-route: policy judges a packet's destination, which an
/// IPv6 routing header with segments left, or an IPv4 source-route option
/// with hops left, makes only the next hop of a path the pod chose (a host
/// that follows such routes would take it further).
#[test]
fn a_pod_port_refuses_source_routed_packets() {
    let mut r = pod_ports_rig(vec![]);
    let (c, s) = (r.client, r.server);
    let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, true, &[]);
    let routed = |left: u8| testing::with_ipv6_header(&syn, 43, vec![0, 0, 4, left, 0, 0, 0, 0]);
    assert_eq!(r.p.process(0, &routed(1), 1), Action::Drop(DropReason::SourceRouted));
    assert_eq!(r.p.counters().snapshot().drops["source_routed"], 1);
    // With no segment left the header's destination is the last: judged as usual.
    assert_eq!(r.p.process(0, &routed(0), 1), Action::Forward(1));
    // A later fragment whose fragment header names the routing header's number
    // as its protocol (the IPv6 header names it too) is walked all the same.
    let udp = testing::udp(&c, 5000, &s, 53, true, b"0123456789abcdef");
    let later = testing::with_ipv6_header(&udp, 44, vec![0, 0, 0, 8, 0, 0, 0, 7]);
    let mut later = testing::with_ipv6_header(&later, 43, vec![0, 0, 4, 1, 0, 0, 0, 0]);
    later[14 + 40 + 8] = 43; // the fragment header's next header
    assert_eq!(r.p.process(0, &later, 1), Action::Drop(DropReason::SourceRouted));
    // A port with no pod is not checked (segment routing may be the fabric's):
    // the same frame from the uplink (3) is judged by policy like any other.
    let outside = Host::new(50);
    let syn = testing::tcp(&outside, 40001, &s, 80, F::SYN, true, &[]);
    let plain = r.p.process(3, &syn, 1);
    let syn = testing::tcp(&outside, 40002, &s, 80, F::SYN, true, &[]);
    let routed = testing::with_ipv6_header(&syn, 43, vec![0, 0, 4, 1, 0, 0, 0, 0]);
    assert_eq!(r.p.process(3, &routed, 1), plain);
    assert_eq!(r.p.counters().snapshot().drops["source_routed"], 2);
    // IPv4's loose source route, one hop left: refused the same way; every hop
    // visited (pointer past the length): judged as usual.
    let syn = testing::tcp(&c, 40003, &s, 80, F::SYN, false, &[]);
    let lsrr = |ptr: u8| testing::with_ipv4_options(&syn, &[1, 131, 7, ptr, 10, 0, 0, 9]);
    assert_eq!(r.p.process(0, &lsrr(4), 1), Action::Drop(DropReason::SourceRouted));
    assert_eq!(r.p.process(0, &lsrr(8), 1), Action::Forward(1));
    // The option is copied into every fragment: a later one is refused too.
    let mut later = lsrr(4);
    testing::make_ipv4_fragment(&mut later, 77, 2, false);
    assert_eq!(r.p.process(0, &later, 1), Action::Drop(DropReason::SourceRouted));
    // From the uplink, judged as the same frame without the option.
    let syn = testing::tcp(&outside, 40004, &s, 80, F::SYN, false, &[]);
    let plain = r.p.process(3, &syn, 1);
    let syn = testing::tcp(&outside, 40005, &s, 80, F::SYN, false, &[]);
    let routed = testing::with_ipv4_options(&syn, &[1, 131, 7, 4, 10, 0, 0, 9]);
    assert_eq!(r.p.process(3, &routed, 1), plain);
    assert_eq!(r.p.counters().snapshot().drops["source_routed"], 4);
}

#[test]
fn a_pod_port_speaks_only_with_its_pods_addresses() {
    let mut r = pod_ports_rig(vec![]);
    let (c, s, o) = (r.client, r.server, r.other);
    for v6 in [false, true] {
        // The other pod, denied to the server, pretends to be the client: dropped
        // before policy, whatever the policy would say of the client.
        let spoofed = testing::tcp(&c, 40000, &s, 80, F::SYN, v6, &[]);
        assert_eq!(r.p.process(2, &spoofed, 1), Action::Drop(DropReason::SpoofedSource));
        let spoofed = testing::udp(&c, 5353, &s, 53, v6, b"q");
        assert_eq!(r.p.process(2, &spoofed, 1), Action::Drop(DropReason::SpoofedSource));
        // An address no pod has is not the pod's either.
        let mut stranger = Host::new(9);
        stranger.mac = o.mac;
        let other = testing::udp(&stranger, 5353, &c, 53, v6, b"q");
        assert_eq!(r.p.process(2, &other, 1), Action::Drop(DropReason::SpoofedSource));
        // The real client still gets through.
        let syn = testing::tcp(&c, 40000 + u16::from(v6), &s, 80, F::SYN, v6, &[]);
        assert_eq!(r.p.process(0, &syn, 2), Action::Forward(1));
    }
    assert_eq!(r.p.counters().snapshot().drops["spoofed_source"], 6);
    // An IPv6 link-local source (a multicast listener report, say) is counted apart.
    let mut ll = o;
    ll.ip6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    let report = testing::udp(&ll, 5353, &c, 53, true, b"q");
    assert_eq!(r.p.process(2, &report, 1), Action::Drop(DropReason::LinkLocal));
    // ARP speaks only for the pod's own address (or 0.0.0.0, a probe).
    let mut liar = c;
    liar.mac = o.mac;
    assert_eq!(r.p.process(2, &testing::arp_request(&liar, &s), 3), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &s), 3), Action::Flood);
    let mut probe = o;
    probe.ip4 = [0; 4];
    assert_eq!(r.p.process(2, &testing::arp_request(&probe, &s), 3), Action::Flood);
    // So does neighbour discovery: an advertisement for the pod's own or a link-local
    // address passes; for another pod's address, or a router advertisement, does not.
    let link_local: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    assert_eq!(r.p.process(2, &nd(&o, 136, link_local, o.ip6), 4), Action::Flood);
    assert_eq!(r.p.process(2, &nd(&o, 136, link_local, link_local), 4), Action::Flood);
    assert_eq!(r.p.process(2, &nd(&o, 135, link_local, c.ip6), 4), Action::Flood);
    assert_eq!(r.p.process(2, &nd(&o, 136, link_local, c.ip6), 4), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(r.p.process(2, &nd(&o, 134, link_local, [0; 16]), 4), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(r.p.process(2, &nd(&o, 135, c.ip6, c.ip6), 4), Action::Drop(DropReason::SpoofedSource));
    // A port with no pod behind it (the uplink) is not checked.
    assert_eq!(r.p.process(3, &nd(&Host::new(50), 134, link_local, [0; 16]), 4), Action::Flood);
}

use dataplane::testing::nd;

/// Neighbour discovery passes without policy, so from a pod's port it may go
/// only to neighbours that can be on the link: otherwise a router would carry
/// it (and whatever data it holds) beyond, past the pod's egress policy.
#[test]
fn neighbour_discovery_from_a_pod_stays_on_the_link() {
    use dataplane::testing::nd_to;
    let node: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut r = pod_ports_rig(vec![std::net::IpAddr::from(node)]);
    let (c, o) = (r.client, r.other);
    // The gateway, behind the port with no pod (3), learnt there.
    let gw = Host::new(50);
    assert_eq!(r.p.process(3, &testing::arp_request(&gw, &c), 0), Action::Flood);
    let solicited: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1];
    let link_local: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut same_64 = o.ip6;
    same_64[15] = 0x99;
    let beyond: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0xba, 0xd0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let site_multicast: [u8; 16] = [0xff, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let multicast_mac = [0x33, 0x33, 0, 0, 0, 1];
    // On the link: the kernel's own solicitations and answers.
    let ns = |dst_mac, dst| nd_to(&o, dst_mac, dst, 135, o.ip6, c.ip6);
    let na = |dst_mac, dst| nd_to(&o, dst_mac, dst, 136, o.ip6, o.ip6);
    assert_eq!(r.p.process(2, &ns(multicast_mac, solicited), 1), Action::Flood);
    assert_eq!(
        r.p.process(2, &ns(c.mac, c.ip6), 1),
        Action::Forward(0),
        "unreachability detection, to a pod"
    );
    assert_eq!(r.p.process(2, &na(c.mac, c.ip6), 1), Action::Forward(0), "an answer to a pod");
    assert_eq!(
        r.p.process(2, &na(gw.mac, link_local), 1),
        Action::Forward(3),
        "to the router's link-local address"
    );
    assert_eq!(r.p.process(2, &na(gw.mac, node), 1), Action::Forward(3), "to the node's global address");
    assert_eq!(
        r.p.process(2, &na(gw.mac, same_64), 1),
        Action::Forward(3),
        "to a neighbour in the pod's /64"
    );
    let rs = nd_to(
        &o,
        [0x33, 0x33, 0, 0, 0, 2],
        [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        133,
        o.ip6,
        [0; 16],
    );
    assert_eq!(r.p.process(2, &rs, 1), Action::Flood, "a router solicitation");
    assert_eq!(r.p.counters().snapshot().drops["neighbour_off_link"], 0);
    // Beyond the link: dropped, whatever the MAC, the message or the source.
    let off = [
        ns(gw.mac, beyond),
        na(gw.mac, beyond),
        nd_to(&o, gw.mac, beyond, 133, o.ip6, [0; 16]),
        nd_to(&o, gw.mac, beyond, 135, link_local, c.ip6),
        nd_to(&o, gw.mac, beyond, 135, [0; 16], o.ip6),
        ns([0x33, 0x33, 0, 0, 0, 1], site_multicast),
        ns(gw.mac, [0; 16]),
    ];
    for frame in &off {
        assert_eq!(r.p.process(2, frame, 2), Action::Drop(DropReason::NeighbourOffLink));
    }
    assert_eq!(r.p.counters().snapshot().drops["neighbour_off_link"], off.len() as u64);
    // Speaking for another pod's address is told first, wherever it goes.
    let liar = nd_to(&o, gw.mac, beyond, 136, o.ip6, c.ip6);
    assert_eq!(r.p.process(2, &liar, 2), Action::Drop(DropReason::SpoofedSource));
    // Behind an extension header (hop-by-hop here) an advertisement for another
    // pod's address would pass as IP from the pod's own address: refused.
    let mut padded = na(multicast_mac, solicited);
    padded[14 + 5] += 8;
    padded[14 + 6] = 0;
    padded.splice(14 + 40..14 + 40, [58, 0, 1, 4, 0, 0, 0, 0]);
    padded[14 + 40 + 8 + 8..14 + 40 + 8 + 24].copy_from_slice(&c.ip6);
    let refused = Action::Drop(DropReason::Parse(dataplane::parse::ParseError::NdExtensionHeader));
    assert_eq!(r.p.process(2, &padded, 2), refused);
    // The port with no pod (the uplink side) is not kept to the link (to a MAC
    // unknown here and an address no pod has, it goes to the other ports with no pod).
    let unknown_mac = [0x02, 0, 0, 0, 0, 0x77];
    assert_eq!(
        r.p.process(3, &nd_to(&gw, unknown_mac, beyond, 135, gw.ip6, beyond), 3),
        Action::FloodUnbound
    );
    assert_eq!(r.p.counters().snapshot().drops["neighbour_off_link"], off.len() as u64);
}

/// On a wire no port names a pod: with the link's prefixes given, ND crossing
/// in either direction must be addressed to the link; without them it is not
/// checked (the configuration warns).
#[test]
fn on_a_wire_neighbour_discovery_stays_on_the_link_once_prefixes_are_given() {
    use dataplane::addresses::Addresses;
    use dataplane::testing::nd_to;
    let (h, router) = (Host::new(1), Host::new(2));
    let segment: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let node: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let beyond: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0xba, 0xd0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let link_local: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let solicited: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1];
    let wire = |prefixes: Option<Vec<(std::net::Ipv6Addr, u8)>>| {
        let cfg = PipelineConfig { mode: Mode::Wire, ..Default::default() };
        let addresses =
            Addresses::new(vec![None, None], vec![std::net::IpAddr::from(node)]).with_link_prefixes(prefixes);
        rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses))
    };
    let frames = |from: &Host| {
        [
            (nd_to(from, router.mac, router.ip6, 136, from.ip6, from.ip6), true), // an answer, in the prefix
            (nd_to(from, router.mac, link_local, 135, from.ip6, link_local), true), // to a link-local router
            (nd_to(from, [0x33, 0x33, 0xff, 0, 0, 1], solicited, 135, link_local, router.ip6), true),
            (nd_to(from, router.mac, node, 135, link_local, node), true), // the node
            (nd_to(from, router.mac, beyond, 135, from.ip6, beyond), false),
            (nd_to(from, router.mac, beyond, 136, link_local, from.ip6), false),
        ]
    };
    let mut checked = wire(Some(vec![(segment.into(), 64)]));
    for (port, from) in [(0, h), (1, router)] {
        for (i, (frame, on_link)) in frames(&from).into_iter().enumerate() {
            let want =
                if on_link { Action::Forward(1 - port) } else { Action::Drop(DropReason::NeighbourOffLink) };
            assert_eq!(checked.p.process(port, &frame, 1), want, "port {port}, frame {i}");
        }
    }
    assert_eq!(checked.p.counters().snapshot().drops["neighbour_off_link"], 4);
    // Without prefixes, nothing is checked: a wire knows no pod's /64.
    let mut unchecked = wire(None);
    for (frame, _) in frames(&h) {
        assert_eq!(unchecked.p.process(0, &frame, 1), Action::Forward(1));
    }
}

#[test]
fn a_pod_port_receives_only_what_is_addressed_to_its_pod() {
    let mut r = pod_ports_rig(vec![]);
    let (c, s, o) = (r.client, r.server, r.other);
    // A pod port speaks with one MAC (the first it used): the other pod claiming
    // the server's MAC is refused, and teaches the switch nothing.
    let mut thief = o;
    thief.mac = s.mac;
    let claim = testing::udp(&thief, 9999, &c, 9999, false, b"x");
    assert_eq!(r.p.process(2, &claim, 1), Action::Drop(DropReason::SpoofedSource));
    let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]);
    assert_eq!(r.p.process(0, &syn, 2), Action::Forward(1));
    // A frame to the server's MAC for an address that is not the server's: never to
    // the server's port; to the ports with no pod, as for an unknown MAC.
    let mut to_stranger = Host::new(9);
    to_stranger.mac = s.mac;
    let f = testing::udp(&c, 5000, &to_stranger, 5000, false, b"x");
    assert_eq!(r.p.process(0, &f, 3), Action::FloodUnbound);
    // The gateway behind the uplink: a pod cannot take its MAC, so it stays reached.
    let gateway = Host::new(50);
    assert_eq!(r.p.process(3, &testing::arp_request(&gateway, &c), 3), Action::Flood);
    let mut fake_gateway = o;
    fake_gateway.mac = gateway.mac;
    assert_eq!(
        r.p.process(2, &testing::arp_request(&fake_gateway, &c), 4),
        Action::Drop(DropReason::SpoofedSource)
    );
    let out = testing::udp(&c, 5000, &Host { ip4: [192, 0, 2, 1], ..gateway }, 5000, false, b"x");
    assert_eq!(r.p.process(0, &out, 5), Action::Forward(3));
    // Nor can a station behind the uplink take a pod's MAC (any EtherType): its
    // frames pass but are not learnt, and the pod keeps speaking and being reached.
    let mut forger = Host::new(51);
    forger.mac = s.mac;
    let mut non_ip = testing::arp_request(&forger, &c);
    non_ip[12..14].copy_from_slice(&[0x88, 0xb5]);
    assert_eq!(r.p.process(3, &non_ip, 6), Action::Drop(DropReason::NonIp));
    assert_eq!(r.p.process(3, &testing::arp_request(&forger, &c), 6), Action::Flood);
    assert_eq!(r.p.counters().snapshot().pod_mac_conflicts, 2);
    let synack = testing::tcp(&s, 80, &c, 40000, F::SYN | F::ACK, false, &[]);
    assert_eq!(r.p.process(1, &synack, 7), Action::Forward(0));
    let ack = testing::tcp(&c, 40000, &s, 80, F::ACK, false, &[]);
    assert_eq!(r.p.process(0, &ack, 7), Action::Forward(1));
    // A pod that has not spoken yet cannot start with a MAC live on another port either.
    let mut r = pod_ports_rig_silent(vec![]);
    assert_eq!(r.p.process(3, &testing::arp_request(&gateway, &c), 0), Action::Flood);
    let mut early = r.other;
    early.mac = gateway.mac;
    assert_eq!(r.p.process(2, &testing::arp_request(&early, &c), 0), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(r.p.process(2, &testing::arp_request(&r.other, &c), 0), Action::Flood);
    // An address no pod has, MAC unknown: flooded to the uplink only.
    let f = testing::udp(&c, 5000, &Host::new(10), 5000, false, b"x");
    assert_eq!(r.p.process(0, &f, 3), Action::FloodUnbound);
    // Nothing goes back out of the port it came in on (the unisolated other pod to itself).
    let own = testing::udp(&o, 5000, &o, 5001, false, b"x");
    assert_eq!(r.p.process(2, &own, 3), Action::Drop(DropReason::SamePort));
}

#[test]
fn a_pod_that_speaks_first_with_the_gateways_mac_does_not_cut_the_gateway_off() {
    // Nothing learnt yet (a restart, or the gateway silent past the ageing time):
    // the client's port pins the gateway's MAC with its first frame.
    let mut r = pod_ports_rig_silent(vec![]);
    let (c, o) = (r.client, r.other);
    let gateway = Host { ip4: [192, 0, 2, 1], ..Host::new(50) };
    let mut rogue = c;
    rogue.mac = gateway.mac;
    assert_eq!(r.p.process(0, &testing::arp_request(&rogue, &o), 0), Action::Flood);
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &gateway), 0), Action::Flood);
    // The gateway's own frames still pass (broadcast and unicast), not learnt.
    assert_eq!(r.p.process(3, &testing::arp_request(&gateway, &o), 1), Action::Flood);
    let to_pod = testing::udp(&gateway, 53, &o, 5000, false, b"x");
    assert_eq!(r.p.process(3, &to_pod, 1), Action::Forward(2));
    assert_eq!(r.p.counters().snapshot().pod_mac_conflicts, 2);
    // And pods still reach it: IP to an address no pod has goes to the ports
    // with no pod, not to the port that learnt the gateway's MAC.
    let out = testing::udp(&o, 5000, &gateway, 53, false, b"x");
    assert_eq!(r.p.process(2, &out, 2), Action::FloodUnbound);
    assert_eq!(r.p.counters().snapshot().drops["spoofed_source"], 0);
}

#[test]
fn unicast_arp_reaches_a_pods_port_only_when_it_is_for_the_pod() {
    // Nothing learnt yet: the client pod speaks first with the gateway's MAC, and holds it.
    let mut r = pod_ports_rig_silent(vec![]);
    let (c, o) = (r.client, r.other);
    let gateway = Host { ip4: [192, 0, 2, 1], ..Host::new(50) };
    let rogue = Host { mac: gateway.mac, ..c };
    assert_eq!(r.p.process(0, &testing::arp_request(&rogue, &o), 0), Action::Flood);
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &gateway), 0), Action::Flood);
    // The other pod's unicast ARP reply to the gateway's MAC is for the gateway's
    // address, not the client's: to the ports with no pod, where the gateway is.
    assert_eq!(r.p.process(2, &testing::arp_reply(&o, &gateway), 1), Action::FloodUnbound);
    // A unicast ARP reply for the client's own address (to the MAC it holds) still
    // reaches it.
    assert_eq!(r.p.process(2, &testing::arp_reply(&o, &rogue), 1), Action::Forward(0));
    // The gateway speaking does not take its MAC back (the frame passes, unlearnt),
    // and its ARP keeps reaching it by address.
    assert_eq!(r.p.process(3, &testing::arp_request(&gateway, &o), 2), Action::Flood);
    assert_eq!(r.p.counters().snapshot().pod_mac_conflicts, 1);
    assert_eq!(r.p.process(2, &testing::arp_reply(&o, &gateway), 3), Action::FloodUnbound);
}

/// Workers share the pins: a pod that speaks with another pod's MAC on a worker
/// that has not seen that pod yet is refused there too.
#[test]
fn pins_are_shared_by_the_workers() {
    use dataplane::pins::PodPins;
    let cfg = PipelineConfig { ports: 4, ..Default::default() };
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
    let table = |gen, pods: [Host; 3]| {
        use dataplane::addresses::{Addresses, PodAddrs};
        let pods = pods.map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
        published(gen, testing::client_server_table())
            .with_addresses(Addresses::new(pods.into_iter().chain([None]).collect(), vec![]))
    };
    let tables = Arc::new(ArcSwap::from_pointee(table(1, [c, s, o])));
    let pins = Arc::new(PodPins::new(4));
    let mut w = [0, 1].map(|i| {
        let counters = Arc::new(WorkerCounters::new(4));
        let mut p = Pipeline::new(&cfg, tables.clone(), counters).with_worker(i).with_pins(pins.clone());
        p.begin_batch(0);
        p
    });
    // The client speaks on worker 0 only.
    assert_eq!(w[0].process(0, &testing::arp_request(&c, &s), 0), Action::Flood);
    // The other pod, on worker 1, with the client's MAC: refused, though worker 1
    // never saw the client.
    let thief = Host { mac: c.mac, ..o };
    assert_eq!(
        w[1].process(2, &testing::arp_request(&thief, &s), 0),
        Action::Drop(DropReason::SpoofedSource)
    );
    // Nor can it speak first with its own MAC on worker 0 and another on worker 1.
    assert_eq!(w[0].process(2, &testing::arp_request(&o, &s), 0), Action::Flood);
    let other_mac = Host { mac: Host::new(77).mac, ..o };
    assert_eq!(
        w[1].process(2, &testing::arp_request(&other_mac, &s), 0),
        Action::Drop(DropReason::SpoofedSource)
    );
    assert_eq!(w[1].process(2, &testing::arp_request(&o, &s), 0), Action::Flood);
    // The other pod is replaced (new address, new MAC). Worker 1 takes the new table
    // up first and the new pod pins there; worker 0, later, does not release that pin.
    let new_pod = Host { ip4: [10, 0, 0, 33], ..Host::new(33) };
    tables.store(Arc::new(table(2, [c, s, new_pod])));
    w[1].begin_batch(1);
    assert_eq!(w[1].process(2, &testing::arp_request(&new_pod, &s), 1), Action::Flood);
    w[0].begin_batch(2);
    assert_eq!(pins.get(2).map(|p| p.mac), Some(new_pod.mac));
    assert_eq!(w[0].process(2, &testing::arp_request(&new_pod, &s), 2), Action::Flood);
    let old_mac = Host { mac: o.mac, ..new_pod };
    assert_eq!(
        w[0].process(2, &testing::arp_request(&old_mac, &s), 2),
        Action::Drop(DropReason::SpoofedSource)
    );
    // The uplink check on worker 0 knows the pin worker 1 took.
    let forger = Host { mac: new_pod.mac, ..Host::new(51) };
    assert_eq!(w[0].process(3, &testing::arp_request(&forger, &c), 3), Action::Flood);
    assert_eq!(w[0].counters().snapshot().pod_mac_conflicts, 1);
}

#[test]
fn a_pod_cannot_take_a_mac_another_pod_port_holds() {
    let mut r = pod_ports_rig_silent(vec![]);
    let (c, s, o) = (r.client, r.server, r.other);
    // The client speaks once, then stays silent past the MAC ageing time.
    assert_eq!(r.p.process(0, &testing::arp_request(&c, &s), 0), Action::Flood);
    let later = 1_000 * SEC;
    // The other pod, which never spoke, starts with the client's MAC: refused.
    let thief = Host { mac: c.mac, ..o };
    assert_eq!(
        r.p.process(2, &testing::arp_request(&thief, &s), later),
        Action::Drop(DropReason::SpoofedSource)
    );
    // And the client is still itself.
    assert_eq!(r.p.process(0, &testing::arp_request(&c, &s), later), Action::Flood);
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &s), later), Action::Flood);
}

#[test]
fn a_pod_port_sends_no_vlan_tags() {
    let mut r = pod_ports_rig(vec![]);
    let (c, s) = (r.client, r.server);
    let syn = testing::tcp(&c, 40000, &s, 80, F::SYN, false, &[]);
    for vid in [0, 7] {
        let f = testing::tagged(&syn, vid);
        assert_eq!(r.p.process(0, &f, 1), Action::Drop(DropReason::SpoofedSource), "VLAN {vid}");
        let a = testing::tagged(&testing::arp_request(&c, &s), vid);
        assert_eq!(r.p.process(0, &a, 1), Action::Drop(DropReason::SpoofedSource), "VLAN {vid}");
    }
    // Stacked tags parse as another EtherType; a pod sends none of them either.
    for outer in [[0x88, 0xa8], [0x91, 0x00]] {
        let mut f = testing::tagged(&syn, 7);
        f[12..14].copy_from_slice(&outer);
        assert_eq!(r.p.process(0, &f, 1), Action::Drop(DropReason::SpoofedSource), "outer tag {outer:x?}");
    }
    // Nor ARP for another protocol than IPv4 (the sender cannot be read as the pod's).
    let mut odd = testing::arp_request(&c, &s);
    odd[16..18].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(r.p.process(0, &odd, 1), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(r.p.process(0, &syn, 1), Action::Forward(1));
    // A port with no pod may carry tags (a trunk uplink).
    let gateway = Host::new(50);
    let a = testing::tagged(&testing::arp_request(&gateway, &c), 7);
    assert_eq!(r.p.process(3, &a, 1), Action::Flood);
}

#[test]
fn before_the_first_table_a_pods_ip_teaches_the_switch_nothing() {
    use dataplane::addresses::{Addresses, PodAddrs};
    // As the daemon starts: pod ports known, their addresses not yet.
    let cfg = PipelineConfig { ports: 4, ..Default::default() };
    let pods = (0..3).map(|_| Some(PodAddrs::default())).chain([None]).collect();
    let first = PublishedTable::fail_closed().with_addresses(Addresses::new(pods, vec![]));
    let mut r = rig_with(cfg, first);
    let (c, s) = (r.client, r.server);
    let gateway = Host { ip4: [192, 0, 2, 1], ..Host::new(50) };
    assert_eq!(r.p.process(3, &testing::arp_request(&gateway, &c), 0), Action::Flood);
    // The client floods IP with the gateway's MAC: dropped, and not learnt.
    let rogue = Host { mac: gateway.mac, ..c };
    let forged = testing::udp(&rogue, 5000, &s, 53, false, b"x");
    for _ in 0..3 {
        assert_eq!(r.p.process(0, &forged, 0), Action::Drop(DropReason::FailClosed));
    }
    // The first table; the client speaks before the gateway does again, and
    // cannot take its MAC, still known to be on the gateway's port.
    let pods = [c, s, r.other].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
    let addresses = Addresses::new(pods.into_iter().chain([None]).collect(), vec![]);
    r.tables.store(Arc::new(published(1, testing::client_server_table()).with_addresses(addresses)));
    r.p.begin_batch(1);
    assert_eq!(r.p.process(0, &testing::arp_request(&rogue, &s), 1), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(r.p.process(0, &forged, 1), Action::Drop(DropReason::SpoofedSource));
}

/// A pod that leaves and comes back with the same addresses but a new MAC (the
/// control plane counts the port's epoch up at each change): a worker that
/// missed the table in between still releases the old pin.
#[test]
fn a_pod_back_with_the_same_addresses_is_a_new_pod_when_its_epoch_moved() {
    use dataplane::addresses::{Addresses, PodAddrs};
    let cfg = PipelineConfig { ports: 4, ..Default::default() };
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
    let table = |gen, epoch: u16| {
        let pods = [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
        let addresses = Addresses::new(pods.into_iter().chain([None]).collect(), vec![])
            .with_epochs(vec![1, 1, epoch, 0]);
        published(gen, testing::client_server_table()).with_addresses(addresses)
    };
    let mut r = rig_with(cfg, table(1, 1));
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &c), 0), Action::Flood);
    // Generation 2 (the port empty) is never taken up by this worker; generation 3
    // has the same addresses, epoch 3, and a pod with another MAC.
    r.tables.store(Arc::new(table(3, 3)));
    r.p.begin_batch(1);
    let back = Host { mac: Host::new(99).mac, ..o };
    assert_eq!(r.p.process(2, &testing::arp_request(&back, &c), 1), Action::Flood);
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &c), 1), Action::Drop(DropReason::SpoofedSource));
}

#[test]
fn a_new_pod_behind_a_port_pins_its_own_mac() {
    use dataplane::addresses::{Addresses, PodAddrs};
    let mut r = pod_ports_rig(vec![]);
    let (c, o) = (r.client, r.other);
    // The other pod's port speaks with the other pod's MAC; a frame from its
    // address with another MAC is refused.
    let replacement = Host { ip4: [10, 0, 0, 33], ..Host::new(33) };
    let outside = Host::new(10);
    let new_mac = testing::udp(&Host { mac: replacement.mac, ..o }, 5000, &outside, 5000, false, b"x");
    assert_eq!(r.p.process(2, &new_mac, 1), Action::Drop(DropReason::SpoofedSource));
    let hello = testing::udp(&replacement, 5000, &outside, 5000, false, b"x");
    // The pod is replaced: a new table puts another address behind port 2.
    let pods = [c, r.server, replacement].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
    let addresses = Addresses::new(pods.into_iter().chain([None]).collect(), vec![]);
    let gen = r.tables.load().generation + 1;
    r.tables.store(Arc::new(published(gen, testing::client_server_table()).with_addresses(addresses)));
    r.p.begin_batch(2);
    assert_eq!(r.p.process(2, &hello, 2), Action::FloodUnbound);
    // Its pin holds from now on: the old pod's MAC is refused there.
    let old = testing::udp(&Host { ip4: replacement.ip4, ..o }, 5000, &outside, 5000, false, b"x");
    assert_eq!(r.p.process(2, &old, 3), Action::Drop(DropReason::SpoofedSource));
}

#[test]
fn a_node_connection_survives_a_new_table_whichever_side_speaks_first() {
    use dataplane::addresses::{Addresses, PodAddrs};
    // No background sweep: the re-check happens on the next packet, the pod's reply.
    let cfg = PipelineConfig { ports: 4, sweep_budget: 0, ..Default::default() };
    let (c, s, o, node) = (Host::new(1), Host::new(2), Host::new(3), Host::new(100));
    let pods = [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
    let addresses = Addresses::new(pods.into_iter().chain([None]).collect(), vec![node.v4(), node.v6()]);
    let mut r = rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses.clone()));
    r.learn_all();
    assert_eq!(r.p.process(3, &testing::arp_request(&node, &s), 0), Action::Flood);
    for v6 in [false, true] {
        let q = testing::udp(&node, 5000 + u16::from(v6), &s, 9999, v6, b"q");
        assert_eq!(r.p.process(3, &q, 1), Action::Forward(1));
    }
    r.tables.store(Arc::new(published(2, testing::client_server_table()).with_addresses(addresses.clone())));
    r.p.begin_batch(2);
    for v6 in [false, true] {
        let a = testing::udp(&s, 9999, &node, 5000 + u16::from(v6), v6, b"a");
        assert_eq!(r.p.process(1, &a, 2), Action::Forward(3), "the pod's answer after a new table");
    }
    // And the other way round: after the next table, the node speaks first.
    r.tables.store(Arc::new(published(3, testing::client_server_table()).with_addresses(addresses)));
    r.p.begin_batch(3);
    for v6 in [false, true] {
        let q = testing::udp(&node, 5000 + u16::from(v6), &s, 9999, v6, b"q2");
        assert_eq!(r.p.process(3, &q, 3), Action::Forward(1), "the node's next packet after a new table");
    }
    assert_eq!(r.p.counters().snapshot().drops["revoked"], 0);
}

#[test]
fn the_node_exemption_holds_only_on_the_ports_facing_the_node() {
    use dataplane::addresses::{Addresses, PodAddrs};
    // Port 3 faces the node, port 4 is an uplink: the node's address arriving on
    // the uplink is only a claim.
    let cfg = PipelineConfig { ports: 5, ..Default::default() };
    let (c, s, o, node) = (Host::new(1), Host::new(2), Host::new(3), Host::new(100));
    let pods = [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()])));
    let addresses = Addresses::new(pods.into_iter().chain([None, None]).collect(), vec![node.v4()])
        .with_node_ports(vec![false, false, false, true, false]);
    let mut r = rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses));
    r.learn_all();
    let probe = testing::tcp(&node, 50000, &s, 8080, F::SYN, false, &[]);
    assert_eq!(r.p.process(4, &probe, 1), Action::Drop(DropReason::Policy));
    assert_eq!(r.p.process(3, &probe, 1), Action::Forward(1));
}

/// The client pod is behind port 0; someone on the uplink (port 4) sends with
/// its address to the server, which accepts only the client: forged, dropped.
/// The same packet may come back through the node's port (a hairpin through a
/// Service); with no port marked as the node's, every port without a pod may
/// carry it (the documented gap of an unmarked node port).
#[test]
fn a_pods_address_arriving_on_an_uplink_is_forged() {
    use dataplane::addresses::{Addresses, PodAddrs};
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
    let pods = || [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()]))).into_iter().chain([None, None]);
    for marked in [true, false] {
        let cfg = PipelineConfig { ports: 5, ..Default::default() };
        let mut addresses = Addresses::new(pods().collect(), vec![]);
        if marked {
            addresses = addresses.with_node_ports(vec![false, false, false, true, false]);
        }
        let mut r = rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses));
        r.learn_all();
        for v6 in [false, true] {
            let mut forger = c;
            forger.mac = Host::new(50).mac;
            let syn = testing::tcp(&forger, 40000, &s, 80, F::SYN, v6, &[]);
            let want = if marked { Action::Drop(DropReason::SpoofedSource) } else { Action::Forward(1) };
            assert_eq!(r.p.process(4, &syn, 1), want, "uplink, node port marked: {marked}, v6: {v6}");
            // Through the node's port (hairpin): judged as the client, allowed.
            let syn = testing::tcp(&forger, 41000, &s, 80, F::SYN, v6, &[]);
            assert_eq!(r.p.process(3, &syn, 1), Action::Forward(1), "node port, v6: {v6}");
        }
        // Addresses that are no pod's still come in from the uplink.
        let outside = Host::new(60);
        let q = testing::udp(&outside, 5353, &o, 53, false, b"q");
        assert_eq!(r.p.process(4, &q, 1), Action::Forward(2));
    }
}

/// ARP and ND from an uplink that speak for a local pod's address (an ARP
/// sender, an IPv6 source, an advertisement's target) are forged: they would
/// point the other pods' neighbour caches at the forger's MAC. Through the
/// node's port, and about addresses that are no pod's, they pass.
#[test]
fn neighbour_messages_for_a_pods_address_from_an_uplink_are_forged() {
    use dataplane::addresses::{Addresses, PodAddrs};
    let (c, s, o) = (Host::new(1), Host::new(2), Host::new(3));
    let pods = [c, s, o].map(|h| Some(PodAddrs::new([h.v4(), h.v6()]))).into_iter().chain([None, None]);
    let addresses =
        Addresses::new(pods.collect(), vec![]).with_node_ports(vec![false, false, false, true, false]);
    let cfg = PipelineConfig { ports: 5, ..Default::default() };
    let mut r = rig_with(cfg, published(1, testing::client_server_table()).with_addresses(addresses));
    r.learn_all();
    let forger = Host { mac: Host::new(50).mac, ..s };
    let outsider = Host::new(60);
    let spoofed = Action::Drop(DropReason::SpoofedSource);
    let forged = [
        testing::arp_request(&forger, &c),
        testing::arp_reply(&forger, &c),
        // An unsolicited advertisement of the server's address, from another source.
        testing::nd(&outsider, 136, outsider.ip6, s.ip6),
        // A solicitation from the server's address.
        testing::nd(&forger, 135, s.ip6, c.ip6),
    ];
    for (i, f) in forged.iter().enumerate() {
        assert_eq!(r.p.process(4, f, 1), spoofed, "uplink, frame {i}");
        assert_ne!(r.p.process(3, f, 1), spoofed, "node port, frame {i}");
    }
    assert_eq!(r.p.counters().snapshot().drops["spoofed_source"], 4);
    // Tagged, the same frames are another VLAN's, whose addresses may overlap the pods'.
    for (i, f) in forged.iter().enumerate() {
        assert_ne!(r.p.process(4, &testing::tagged(f, 7), 1), spoofed, "tagged frame {i}");
    }
    // An outside station asking for a pod's address, answering for its own, or
    // checking an address for duplicates (from ::) is no forgery.
    let mut asks = testing::arp_request(&outsider, &s);
    assert_eq!(r.p.process(4, &asks, 2), Action::Flood);
    asks = testing::nd(&outsider, 135, outsider.ip6, s.ip6);
    assert_eq!(r.p.process(4, &asks, 2), Action::Flood);
    assert_eq!(r.p.process(4, &testing::nd(&outsider, 136, outsider.ip6, outsider.ip6), 2), Action::Flood);
    assert_eq!(r.p.process(4, &testing::nd(&outsider, 135, [0; 16], s.ip6), 2), Action::Flood);
    assert_eq!(r.p.counters().snapshot().drops["spoofed_source"], 4);
}

/// Unicast ARP and ND to a MAC no port is known for (a station silent long
/// enough to age out) go by address: to the pod they are for, else to the
/// ports with no pod, never to every pod (a pod holding that station's MAC
/// would get them). ND to a link-local address, which could be any pod's,
/// is flooded still.
#[test]
fn unicast_neighbour_messages_to_an_unknown_mac_go_by_address() {
    let mut r = pod_ports_rig(vec![]);
    let (c, s, o) = (r.client, r.server, r.other);
    let gateway = Host { ip4: [192, 0, 2, 1], ..Host::new(50) };
    assert_eq!(r.p.process(2, &testing::arp_reply(&o, &gateway), 1), Action::FloodUnbound);
    // For the server's address, at a MAC nobody spoke with.
    let server_elsewhere = Host { mac: Host::new(61).mac, ..s };
    assert_eq!(r.p.process(2, &testing::arp_reply(&o, &server_elsewhere), 1), Action::Forward(1));
    assert_eq!(
        r.p.process(1, &testing::arp_reply(&s, &server_elsewhere), 1),
        Action::Drop(DropReason::SamePort)
    );
    let na = |to: [u8; 16]| testing::nd_to(&o, gateway.mac, to, 136, o.ip6, o.ip6);
    assert_eq!(r.p.process(2, &na(gateway.ip6), 1), Action::FloodUnbound);
    assert_eq!(r.p.process(2, &na(c.ip6), 1), Action::Forward(0));
    let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    assert_eq!(r.p.process(2, &na(link_local), 1), Action::Flood);
    // Broadcast ARP is flooded to every port, as before; so is a tagged frame
    // from the uplink (another VLAN's addresses are not the pods').
    assert_eq!(r.p.process(2, &testing::arp_request(&o, &gateway), 1), Action::Flood);
    let tagged = testing::tagged(&testing::arp_reply(&gateway, &server_elsewhere), 7);
    assert_eq!(r.p.process(3, &tagged, 1), Action::Flood);
}

#[test]
fn connections_from_the_node_are_allowed_into_isolated_pods() {
    // The node (a kubelet probe) may connect to the isolated server on any port;
    // another non-pod address may not.
    let node = Host::new(100);
    let mut r = pod_ports_rig(vec![node.v4(), node.v6()]);
    let s = r.server;
    for v6 in [false, true] {
        let probe = testing::tcp(&node, 50000, &s, 8080, F::SYN, v6, &[]);
        assert_eq!(r.p.process(3, &probe, 1), Action::Forward(1));
        let reply = testing::tcp(&s, 8080, &node, 50000, F::SYN | F::ACK, v6, &[]);
        // To the port the node spoke from (its MAC was learnt there), nowhere else.
        assert_eq!(r.p.process(1, &reply, 1), Action::Forward(3));
        let outsider = testing::tcp(&Host::new(101), 50000, &s, 8080, F::SYN, v6, &[]);
        assert_eq!(r.p.process(3, &outsider, 1), Action::Drop(DropReason::Policy));
        // Pings and UDP from the node too.
        assert_eq!(r.p.process(3, &testing::echo(&node, &s, 7, true, v6), 1), Action::Forward(1));
        assert_eq!(r.p.process(3, &testing::udp(&node, 5000, &s, 9999, v6, b"x"), 1), Action::Forward(1));
        // The node's address from a pod's port is no node: dropped as spoofed.
        let mut fake = node;
        fake.mac = r.other.mac;
        let spoof = testing::tcp(&fake, 50001, &s, 8080, F::SYN, v6, &[]);
        assert_eq!(r.p.process(2, &spoof, 1), Action::Drop(DropReason::SpoofedSource));
    }
    // Each connection only the exemption let in is counted once (TCP, ping, UDP per family).
    assert_eq!(r.tables.load().hits.node_exempt_total(), 6);
    // A newer table re-checks tracked connections (in `begin_batch`'s sweep and
    // in full): the node's stay, and their next packets pass.
    let table = r.tables.load().addresses.clone();
    r.tables.store(Arc::new(published(2, testing::client_server_table()).with_addresses(table)));
    r.p.begin_batch(2);
    assert_eq!(r.p.revalidate_all(), 0);
    assert_eq!(r.p.counters().snapshot().conntrack.revoked, 0);
    for v6 in [false, true] {
        let ack = testing::tcp(&node, 50000, &s, 8080, F::ACK, v6, b"GET /healthz");
        assert_eq!(r.p.process(3, &ack, 2), Action::Forward(1));
    }
}
