//! Addresses the dataplane knows besides the table: the pod behind each
//! port (switch mode) and the node's own addresses.
//!
//! ```text
//!  frame in on port p, p leads to pod P:
//!    IP source not P's ─────────────────────────────▶ Drop(SpoofedSource)  (IPv6 link-local: Drop(LinkLocal))
//!    ARP/ND speaking for an address not P's, RA, redirect ──▶ Drop(SpoofedSource)
//!    ND addressed beyond the link (not link-scope multicast, link-local, a local pod,
//!      the node, the link's prefixes: P's /64 by default) ──▶ Drop(NeighbourOffLink)
//!    ICMP error quoting a packet not addressed to P ──▶ Drop(SpoofedSource)
//!    IPv6 routing header with segments left, IPv4 source
//!      route with hops left ─────────────────────────▶ Drop(SourceRouted)
//!    source MAC not the one p first spoke with, or live on another port,
//!      or held by another pod port; any VLAN tag ──────────────────────▶ Drop(SpoofedSource)
//!  frame in on port u, u leads to no pod, source MAC held by a pod port ──▶ passes, not learnt
//!  allowed IP frame (delivery by address, not by MAC):
//!    destination is pod Q's, behind port q ─────────▶ Forward(q)  (Drop(SamePort) if q = p)
//!    any other destination ─────────────────────────▶ MAC forwarding, but a pod's port or a
//!                                                     flood becomes FloodUnbound (ports with no pod)
//!  ARP/ND to the MAC of pod port q, not for q's addresses ──▶ FloodUnbound
//!  new connection from the node's address, on a port facing the node ──▶ allowed
//! ```
//!
//! **Why both checks.** Policy is evaluated on the addresses a packet
//! carries. A pod that could send with another pod's source address would
//! be judged as that pod, and one that could claim another pod's MAC would
//! receive what is allowed to that pod. So on a port that leads to a pod, IP
//! frames must carry one of that pod's addresses as source, and IP frames
//! are delivered to a pod's port only when addressed to that pod, whatever
//! the MAC table says; other IP frames never go to a pod's port (a pod that
//! claims the gateway's MAC only makes frames for the gateway flood to the
//! ports with no pod, where the gateway is). ARP and neighbour discovery
//! from a pod's port may speak only for the pod's own addresses (ARP sender,
//! neighbour advertisement target; IPv6 link-local ones too, which the
//! dataplane does not know), and router advertisements and redirects are
//! refused: otherwise a pod could answer for the gateway's address and
//! make other pods send it their outside traffic (delivered by the checks
//! above to the uplinks under the wrong MAC: lost, a denial of service).
//! Neighbour discovery passes without policy, so from a pod's port it may
//! be addressed only to the link ([`Addresses::neighbour_on_link`]): a
//! router forwards whatever is addressed beyond, and a solicitation to an
//! outside address would carry a pod's data past its egress policy. In
//! mode wire, where no port names a pod, the link's prefixes, when given,
//! keep every port's ND on the link ([`Addresses::checks_every_neighbour`]).
//! And a pod port speaks with one MAC, the first it used, never one that is
//! live on another port or that another pod port speaks with, and never
//! with a VLAN tag (a tag would pick the pod's VLAN on a trunk uplink, and a
//! (VLAN, MAC) pair the switch has not seen would pass the "live elsewhere"
//! test): so a pod cannot take another pod's MAC. The pins are shared by
//! every worker ([`crate::pins`]: the first worker to see a port speak pins
//! it for all), and a port's pin goes when a newer table puts other
//! addresses behind it (a new pod). Before the first table, IP from a pod
//! port is dropped and teaches the switch nothing. A pinned MAC seen on a
//! port with no pod (`pod_mac_conflicts` counts it) means one side forges
//! it, and which cannot be told: the frame passes but is not learnt
//! (learnt, a forger behind an uplink would make the pod's own frames look
//! forged; dropped, a pod that took the gateway's MAC first would cut the
//! gateway off). Whatever MAC a pod holds, unicast ARP and ND reach its
//! port only when they are for the pod's addresses (or an IPv6 link-local
//! one); the rest goes to the ports with no pod, like IP.
//!
//! **Left open.** IPv6 link-local addresses are not known: a pod may speak
//! for any of them in neighbour discovery, including the router's, and so
//! make other pods' outside IPv6 go to its MAC, where the checks above lose
//! it (a denial of service, not a delivery); and ND to a link-local address
//! follows the MAC. Pins are taken from the first frame, so a pod that
//! speaks before a station whose MAC it claims holds that MAC: a pod's, right
//! after the daemon starts or once that pod is replaced (its pin released),
//! and the victim pod is then refused until the daemon restarts; the
//! gateway's, also after the gateway was silent for the MAC ageing time,
//! and the gateway's own frames, and the IP, ARP and ND for its addresses,
//! still reach it, other unicast frames to its MAC do not. It takes
//! `CAP_NET_RAW` and winning that race. The "live elsewhere" test looks the
//! MAC up untagged only (a station seen only tagged on a trunk uplink is
//! not found). A replacement pod with the same addresses behind the same
//! port keeps its predecessor's pin (ports are static in the
//! configuration, so this takes a restart).
//!
//! **The node.** Upstream, a pod isolated for ingress still accepts
//! connections from its own node (`NetworkPolicySpec.ingress`: "OR if the
//! traffic source is the pod's local node"): kubelet probes. The table is
//! the same on every node and knows no node addresses, so the exemption is
//! applied here: a new connection whose source is one of the node's
//! addresses is allowed, when it arrives on a port marked as facing the
//! node's own network stack (`ports[].node`), or, if no port is marked, on
//! any port that leads to no pod. A source address is only a claim: on an
//! unmarked setup, anything that can put a packet with the node's address on
//! an uplink gets the exemption (one way only for TCP: the answer goes to
//! the real node). Re-checks of tracked connections against a newer table
//! keep any connection from a node address (the port it came from is not
//! kept).
//!
//! Both are built by the control plane with each published table (pods get
//! new addresses), and read on the packet path without allocation: a port's
//! pod has at most two addresses (one per family), and destination lookup
//! is one hash probe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;

use crate::parse::{self, Class};
use crate::pipeline::{DropReason, PortId};

/// Does `pkt` (in `frame`) route itself: an IPv6 routing header with
/// segments left, an IPv4 source-route option with hops left?
#[inline]
fn source_routed(frame: &[u8], pkt: &crate::parse::IpPacket, v4: bool) -> bool {
    if v4 {
        return parse::ipv4_source_routed(frame);
    }
    // The upper-layer protocol, but for a later fragment, whose `proto` is
    // only what its fragment header says.
    let upper = (!matches!(pkt.fragment, crate::parse::Fragment::Later(_))).then_some(pkt.flow.proto);
    parse::ipv6_source_routed(frame, upper)
}

/// The addresses of the pod behind one port: at most one per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodAddrs([Option<IpAddr>; 2]);

impl PodAddrs {
    /// The pod's addresses (extra ones of a family already present are ignored:
    /// Kubernetes gives a pod at most one per family).
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut a = [None; 2];
        for ip in ips {
            let slot = &mut a[usize::from(ip.is_ipv6())];
            slot.get_or_insert(ip);
        }
        PodAddrs(a)
    }

    /// Is `ip` one of them?
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0[usize::from(ip.is_ipv6())] == Some(ip)
    }

    /// Why a frame from this pod's port may not pass, if it may not: IP
    /// from an address that is not the pod's; ARP or neighbour discovery
    /// that speaks for an address that is not the pod's; router
    /// advertisements and redirects (a pod is no router); neighbour discovery
    /// addressed beyond the link (`link`: [`Addresses::neighbour_on_link`]);
    /// IP that routes itself ([`parse::ipv6_source_routed`],
    /// [`parse::ipv4_source_routed`]). `frame`: its bytes, read again for ARP,
    /// ND, IPv6 extension headers and IPv4 options.
    #[inline]
    pub fn refuses(&self, class: &Class, frame: &[u8], link: &Addresses) -> Option<DropReason> {
        let own_or_link_local = |a: Ipv6Addr| a.is_unicast_link_local() || self.contains(IpAddr::V6(a));
        let refused = match class {
            Class::Ip(pkt) => {
                let src = pkt.flow.src.ip();
                if self.contains(src) {
                    // A pod receives only packets addressed to it, so an error
                    // it sends quotes one of those: one quoting another's packet
                    // is forged, to pass as related to someone else's connection.
                    return match pkt.l4 {
                        crate::parse::L4::IcmpError(Some(inner)) if !self.contains(inner.dst.ip()) => {
                            Some(DropReason::SpoofedSource)
                        }
                        // Judged by its first hop, it would go where the pod chose.
                        _ if source_routed(frame, pkt, src.is_ipv4()) => Some(DropReason::SourceRouted),
                        _ => None,
                    };
                }
                let link_local =
                    matches!(src, IpAddr::V6(a) if a.is_unspecified() || a.is_unicast_link_local());
                return Some(if link_local { DropReason::LinkLocal } else { DropReason::SpoofedSource });
            }
            // An ARP probe says 0.0.0.0.
            // ARP for anything but IPv4 (or with odd address lengths) is
            // nothing a pod needs: refused, as neighbour discovery that
            // cannot be read is.
            Class::Arp => match parse::arp_sender(frame) {
                Some(s) => s != [0; 4] && !self.contains(IpAddr::V4(Ipv4Addr::from(s))),
                None => true,
            },
            // Stacked VLAN tags (802.1ad, the older 0x9100, 802.1Q inside
            // 802.1ad): with `forward_non_ip` they would leave on a trunk
            // uplink in the VLAN the pod chose. (A single 802.1Q tag is
            // refused by the caller.)
            Class::Other(t) => matches!(t, 0x8100 | 0x88a8 | 0x9100),
            Class::NeighbourDiscovery => match parse::nd_facts(frame) {
                Some(nd) => {
                    let src = Ipv6Addr::from(nd.src);
                    let spoofed = !(src.is_unspecified() || own_or_link_local(src))
                        || matches!(nd.kind, 134 | 137)
                        || nd.kind == 136 && nd.target.is_some_and(|t| !own_or_link_local(Ipv6Addr::from(t)));
                    if !spoofed && !link.neighbour_on_link(Some(self), frame) {
                        return Some(DropReason::NeighbourOffLink);
                    }
                    spoofed
                }
                None => true,
            },
        };
        refused.then_some(DropReason::SpoofedSource)
    }
}

impl PodAddrs {
    /// May an ARP or neighbour discovery frame sent to this pod's MAC go to
    /// its port? Only when it is for one of the pod's addresses (ARP target,
    /// IPv6 destination), or for an IPv6 link-local one (not known here).
    /// So a pod holding another station's MAC (the gateway's) does not
    /// receive the unicast ARP and ND meant for that station.
    #[inline(never)]
    pub fn receives_neighbour(&self, class: &Class, frame: &[u8]) -> bool {
        match class {
            Class::Arp => {
                parse::arp_target(frame).is_some_and(|t| self.contains(IpAddr::V4(Ipv4Addr::from(t))))
            }
            Class::NeighbourDiscovery => parse::ipv6_destination(frame).is_some_and(|d| {
                let d = Ipv6Addr::from(d);
                d.is_unicast_link_local() || self.contains(IpAddr::V6(d))
            }),
            _ => true,
        }
    }
}

/// Bits of [`Addresses`]' filter of pod addresses.
const FILTER_BITS: usize = 4096;

/// An address's bit in that filter (12 bits of a multiplicative hash).
#[inline]
fn addr_bit(ip: IpAddr) -> usize {
    let v = match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let x = u128::from(a);
            x as u64 ^ (x >> 64) as u64
        }
    };
    (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize
}

/// What the control plane tells the workers about addresses, with a table.
#[derive(Clone, Debug, Default)]
pub struct Addresses {
    /// Per port id: the pod behind it, if the port leads to one.
    ports: Vec<Option<PodAddrs>>,
    /// Which port each of those pods' addresses is behind.
    owner: HashMap<IpAddr, PortId>,
    /// A one-hash filter of `owner`'s addresses ([`addr_bit`]; 4,096 bits,
    /// empty when there are none): most addresses that are no pod's are told
    /// so without a probe of `owner` (the source check of uplink traffic).
    owner_filter: Vec<u64>,
    /// The node's own addresses.
    node: Vec<IpAddr>,
    /// Does any port lead to a pod?
    pod_ports: bool,
    /// Per port id: do connections from `node` that arrive there get the
    /// node's exemption?
    node_from: Vec<bool>,
    /// Per port id: which pod this is ([`crate::pins`]): it changes when
    /// another pod comes behind the port, and only then.
    epochs: Vec<u16>,
    /// IPv6 prefixes on the pods' link, as (address bits, length), for
    /// [`Addresses::neighbour_on_link`]; `None`: each pod's own /64.
    link_prefixes: Option<Vec<(u128, u8)>>,
}

impl Addresses {
    /// `ports[p]`: the addresses of the pod behind port `p` (`None`: the port
    /// leads to no pod: an uplink, or mode wire); `node`: the node's addresses.
    /// A pod port with no address yet (the pod has none, or is not in the
    /// table) passes no IP at all.
    pub fn new(ports: Vec<Option<PodAddrs>>, node: Vec<IpAddr>) -> Self {
        let mut owner = HashMap::new();
        for (p, pod) in ports.iter().enumerate() {
            for ip in pod.iter().flat_map(|a| a.0.iter().flatten()) {
                owner.entry(*ip).or_insert(p as PortId);
            }
        }
        let mut owner_filter = if owner.is_empty() { Vec::new() } else { vec![0u64; FILTER_BITS / 64] };
        for ip in owner.keys() {
            let b = addr_bit(*ip);
            owner_filter[b / 64] |= 1 << (b % 64);
        }
        let pod_ports = ports.iter().any(Option::is_some);
        let node_from = ports.iter().map(Option::is_none).collect();
        let epochs = ports.iter().map(|a| a.as_ref().map_or(0, crate::pins::epoch)).collect();
        Addresses { ports, owner, owner_filter, node, pod_ports, node_from, epochs, link_prefixes: None }
    }

    /// The IPv6 prefixes of the pods' link (this node's pod prefix, a
    /// gateway's global address as a /128): neighbour discovery from a pod
    /// may be addressed to them. `None` (the default): to the pod's own /64.
    /// `Some(vec![])`: to none (link-local addresses, local pods and the
    /// node's addresses remain). Given in mode wire (where no port leads to
    /// a pod), they make every port's ND stay on the link
    /// ([`Addresses::checks_every_neighbour`]). Host bits of a prefix are ignored; a
    /// length past 128 is 128.
    pub fn with_link_prefixes(mut self, prefixes: Option<Vec<(Ipv6Addr, u8)>>) -> Self {
        self.link_prefixes =
            prefixes.map(|v| v.into_iter().map(|(a, len)| (u128::from(a), len.min(128))).collect());
        self
    }

    /// Grants the node's exemption only to connections arriving on the ports
    /// marked here (those facing the node's own network stack), when any is;
    /// without marks, on every port that leads to no pod.
    pub fn with_node_ports(mut self, marked: Vec<bool>) -> Self {
        if marked.iter().any(|m| *m) {
            self.node_from = marked;
        }
        self
    }

    /// Says which pod is behind each port: `epochs[p]` must change when
    /// another pod comes behind port `p` (the control plane counts them).
    /// Without this, a pod is known by a hash of its addresses, so a new pod
    /// with its predecessor's addresses passes for it (and keeps its MAC pin).
    /// Ignored unless there is one per port.
    pub fn with_epochs(mut self, epochs: Vec<u16>) -> Self {
        if epochs.len() == self.ports.len() {
            self.epochs = epochs.into_iter().map(|e| e & 0x7fff).collect();
        }
        self
    }

    /// Which pod is behind `port` (see [`Addresses::with_epochs`]); 0 for none.
    #[inline]
    pub fn epoch(&self, port: PortId) -> u16 {
        self.epochs.get(usize::from(port)).copied().unwrap_or(0)
    }

    /// Does any port lead to a pod? (If not, nothing here changes forwarding.)
    #[inline]
    pub fn any_pod_port(&self) -> bool {
        self.pod_ports
    }

    /// Were the node's addresses given? (Without them nothing is exempt.)
    #[inline]
    pub fn any_node_address(&self) -> bool {
        !self.node.is_empty()
    }

    /// The pod behind `port`, if it leads to one.
    #[inline]
    pub fn pod_at(&self, port: PortId) -> Option<&PodAddrs> {
        self.ports.get(usize::from(port)).and_then(Option::as_ref)
    }

    /// Does `port` lead to a pod?
    #[inline]
    pub fn is_pod_port(&self, port: usize) -> bool {
        self.ports.get(port).is_some_and(Option::is_some)
    }

    /// The port behind which `ip` is a pod's address.
    #[inline]
    pub fn port_of(&self, ip: IpAddr) -> Option<PortId> {
        if self.owner.is_empty() {
            return None;
        }
        self.owner.get(&ip).copied()
    }

    /// Is `ip` a pod's address behind one of the ports? (The filter first:
    /// for most other addresses, no probe of the map.)
    #[inline]
    pub fn is_pod_address(&self, ip: IpAddr) -> bool {
        let b = addr_bit(ip);
        self.owner_filter.get(b / 64).is_some_and(|w| w >> (b % 64) & 1 != 0) && self.owner.contains_key(&ip)
    }

    /// Does an ARP or neighbour discovery frame speak for a pod's address
    /// behind one of the ports: an ARP sender, an IPv6 source, or the target
    /// of an advertisement? From a port with no pod (an uplink) that is a
    /// forgery: it would teach the pods' neighbour caches another station's
    /// MAC for a local pod. A tagged frame is another VLAN's, whose addresses
    /// may overlap the pods'. Out of line: ARP and ND are rare.
    #[inline(never)]
    pub fn neighbour_claims_pod(&self, f: &parse::Frame, frame: &[u8]) -> bool {
        if f.vlan.is_some() {
            return false;
        }
        match &f.class {
            Class::Arp => parse::arp_sender(frame).is_some_and(|s| self.is_pod_address(IpAddr::V4(s.into()))),
            Class::NeighbourDiscovery => parse::nd_facts(frame).is_some_and(|nd| {
                self.is_pod_address(IpAddr::V6(nd.src.into()))
                    || nd.kind == 136 && nd.target.is_some_and(|t| self.is_pod_address(IpAddr::V6(t.into())))
            }),
            _ => false,
        }
    }

    /// The pod port a unicast ARP or neighbour discovery frame is for, by
    /// its ARP target or IPv6 destination, when one of the pods owns it.
    #[inline(never)]
    pub fn neighbour_port(&self, class: &Class, frame: &[u8]) -> Option<PortId> {
        let ip = match class {
            Class::Arp => IpAddr::V4(parse::arp_target(frame)?.into()),
            Class::NeighbourDiscovery => IpAddr::V6(parse::ipv6_destination(frame)?.into()),
            _ => return None,
        };
        self.port_of(ip)
    }

    /// Is `ip` one of the node's addresses?
    #[inline]
    pub fn is_node(&self, ip: IpAddr) -> bool {
        self.node.contains(&ip)
    }

    /// Must neighbour discovery from every port stay on the link? When no
    /// port leads to a pod (mode wire) and the link's prefixes were given:
    /// pods then send from behind a port that names none of them, so their
    /// ND is known only by where it goes. The pipeline applies it in mode
    /// wire, where every frame goes to the other port.
    #[inline]
    pub fn checks_every_neighbour(&self) -> bool {
        !self.pod_ports && self.link_prefixes.is_some()
    }

    /// May neighbour discovery that `pod`'s port sent (`frame`) go where it
    /// is addressed? ND passes without policy, and a router forwards a
    /// packet addressed beyond the link whatever it carries, so ND is kept
    /// to the link: link-scope multicast (scope 2: `ff02::/16` with
    /// all-nodes, all-routers, solicited-node; `ff12::/16` ...), link-local
    /// unicast, a local pod's address, the node's, and the link's prefixes
    /// ([`Addresses::with_link_prefixes`]; by default the pod's own /64,
    /// where a bridge gateway's global address usually is: a solicitation
    /// from that address is answered there). `pod`: the pod behind the port
    /// it came from, if one is (`None`: no /64 of a pod's own to fall back
    /// on). Out of line: ND is rare.
    #[inline(never)]
    pub fn neighbour_on_link(&self, pod: Option<&PodAddrs>, frame: &[u8]) -> bool {
        let Some(dst) = parse::ipv6_destination(frame).map(Ipv6Addr::from) else {
            return false;
        };
        if dst.is_multicast() {
            // ff<flags><scope>: scope 2 is the link.
            return dst.segments()[0] & 0xff0f == 0xff02;
        }
        if dst.is_unicast_link_local() {
            return true;
        }
        let bits = u128::from(dst);
        let within = |net: u128, len: u8| len == 0 || (bits ^ net) >> (128 - u32::from(len)) == 0;
        let on_link = match &self.link_prefixes {
            None => matches!(pod.and_then(|p| p.0[1]), Some(IpAddr::V6(own)) if within(u128::from(own), 64)),
            Some(prefixes) => prefixes.iter().any(|&(net, len)| within(net, len)),
        };
        on_link || self.is_pod_address(IpAddr::V6(dst)) || self.is_node(IpAddr::V6(dst))
    }

    /// Does `port` carry the node's own traffic (marked so, or, with no port
    /// marked, any port with no pod)? Hairpinned pod traffic (a pod to a
    /// Service backed by a pod of this node) comes back through such a port
    /// with the first pod's address as source.
    #[inline]
    pub fn faces_node(&self, port: PortId) -> bool {
        self.node_from.get(usize::from(port)).is_some_and(|ok| *ok)
    }

    /// Does a connection from `ip` arriving on `port` come from the node?
    /// (One of its addresses, on a port where the node's traffic arrives.)
    #[inline]
    pub fn from_node(&self, ip: IpAddr, port: PortId) -> bool {
        self.node_from.get(usize::from(port)).is_some_and(|ok| *ok) && self.is_node(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Where neighbour discovery from a pod may be addressed: each clause of
    /// `neighbour_on_link` on its own, and the /64's exact width.
    #[test]
    fn neighbour_discovery_is_kept_to_the_link() {
        use crate::testing::{nd_to, Host};
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let pod = PodAddrs::new([ip("fd00::1")]);
        // A local pod outside the pod's /64, and the node outside it too.
        let ports = vec![Some(pod), Some(PodAddrs::new([ip("fd00:0:0:7::5")])), None];
        let a = Addresses::new(ports, vec![ip("2001:db8::10")]);
        let to = |a: &Addresses, pod: &PodAddrs, dst: &str| {
            let frame = nd_to(
                &Host::new(1),
                [2, 0, 0, 0, 0, 9],
                v6(dst).octets(),
                135,
                v6("fd00::1").octets(),
                [0; 16],
            );
            a.neighbour_on_link(Some(pod), &frame)
        };
        for (dst, on_link) in [
            ("ff02::1:ff00:5", true),            // solicited-node
            ("ff12::1", true),                   // link scope, transient flag
            ("ff01::1", false),                  // interface-local scope: no business on the wire
            ("ff05::2", false),                  // site scope
            ("ff0e::1", false),                  // global scope
            ("fe80::1", true),                   // link-local
            ("febf::1", true),                   // fe80::/10 still
            ("fec0::1", false),                  // past it
            ("fd00::ffff:ffff:ffff:ffff", true), // the pod's /64: its last address
            ("fd00:0:0:1::", false),             // the next /64
            ("fcff:ffff:ffff:ffff::1", false),   // the /64 before
            ("fd00:0:0:7::5", true),             // a local pod, outside the /64
            ("fd00:0:0:7::6", false),            // its neighbour is not
            ("2001:db8::10", true),              // the node
            ("2001:db8::11", false),
            ("::", false),
            ("::1", false),
        ] {
            assert_eq!(to(&a, &pod, dst), on_link, "{dst}");
        }
        // A pod without an IPv6 address has no /64.
        let v4_only = PodAddrs::new([ip("10.0.0.1")]);
        assert!(!to(&a, &v4_only, "fd00::2"));
        assert!(to(&a, &v4_only, "fd00:0:0:7::5") && to(&a, &v4_only, "fe80::1"));
        // Prefixes given replace the /64: a /80 per node, and a gateway's /128.
        let given =
            a.clone().with_link_prefixes(Some(vec![(v6("fd00::1:0:0:0"), 80), (v6("2001:db8:9::1"), 128)]));
        for (dst, on_link) in [
            ("fd00::1:0:0:5", true),
            ("fd00::1:0:ffff:ffff", true),
            ("fd00::2:0:0:5", false),
            ("fd00::2", false), // in the pod's /64, not in the given prefixes
            ("2001:db8:9::1", true),
            ("2001:db8:9::2", false),
            ("fd00:0:0:7::5", true), // local pods and the node stay
            ("2001:db8::10", true),
        ] {
            assert_eq!(to(&given, &pod, dst), on_link, "{dst} with prefixes given");
        }
        // None given: only what is certainly on the link. Host bits are ignored.
        let none = a.clone().with_link_prefixes(Some(vec![]));
        assert!(
            !to(&none, &pod, "fd00::2") && to(&none, &pod, "fe80::2") && to(&none, &pod, "fd00:0:0:7::5")
        );
        let sloppy = a.clone().with_link_prefixes(Some(vec![(v6("fd00:0:0:9::77"), 64)]));
        assert!(to(&sloppy, &pod, "fd00:0:0:9::1") && !to(&sloppy, &pod, "fd00:0:0:a::1"));
        // The extremes: /0 is every address, /128 (or more) one.
        let all = a.clone().with_link_prefixes(Some(vec![(v6("::"), 0)]));
        assert!(to(&all, &pod, "2001:db8:bad::1") && to(&all, &pod, "::1"));
        let one = a.with_link_prefixes(Some(vec![(v6("2001:db8:9::1"), 200)]));
        assert!(to(&one, &pod, "2001:db8:9::1") && !to(&one, &pod, "2001:db8:9::"));
    }

    /// An ICMP error from a pod must quote a packet addressed to that pod (the
    /// only ones it receives): one quoting another pod's connection would pass
    /// as related to it (a reset or an MTU cut by a bystander).
    #[test]
    fn a_pods_icmp_errors_quote_only_packets_addressed_to_it() {
        use crate::parse::{proto, Flow, Fragment, IpPacket, L4};
        use crate::testing::Host;
        let (a, b, c) = (Host::new(1), Host::new(2), Host::new(3));
        let pod = PodAddrs::new([a.v4()]);
        let error = |quoted_dst: &Host| {
            let inner = Flow {
                src: b.addr4(),
                dst: quoted_dst.addr4(),
                proto: proto::UDP,
                src_port: 5000,
                dst_port: 53,
            };
            Class::Ip(IpPacket {
                flow: Flow { src: a.addr4(), dst: b.addr4(), proto: proto::ICMP, src_port: 0, dst_port: 0 },
                l4: L4::IcmpError(Some(inner)),
                fragment: Fragment::None,
            })
        };
        let link = Addresses::default();
        assert_eq!(pod.refuses(&error(&a), &[], &link), None, "about a packet it was sent");
        assert_eq!(pod.refuses(&error(&c), &[], &link), Some(DropReason::SpoofedSource), "about c's packet");
    }

    #[test]
    fn a_pod_has_one_address_per_family_and_ports_are_found_by_address() {
        let a = PodAddrs::new([ip("10.0.0.1"), ip("fd00::1"), ip("10.0.0.9")]);
        assert!(a.contains(ip("10.0.0.1")) && a.contains(ip("fd00::1")));
        assert!(!a.contains(ip("10.0.0.9")), "a second IPv4 address is not the pod's");
        let b = PodAddrs::new([ip("10.0.0.2")]);
        let t =
            Addresses::new(vec![Some(a), None, Some(b), Some(PodAddrs::default())], vec![ip("192.168.0.10")]);
        assert!(t.any_pod_port());
        assert_eq!(t.port_of(ip("fd00::1")), Some(0));
        assert_eq!(t.port_of(ip("10.0.0.2")), Some(2));
        assert_eq!(t.port_of(ip("10.0.0.3")), None);
        assert!(t.is_pod_port(0) && !t.is_pod_port(1) && t.is_pod_port(3) && !t.is_pod_port(9));
        assert_eq!(t.pod_at(3), Some(&PodAddrs::default()));
        assert!(t.is_node(ip("192.168.0.10")) && !t.is_node(ip("10.0.0.1")));
        assert!(!Addresses::default().any_pod_port());
        // The node's exemption: on ports with no pod, or only on the marked ones.
        let node = ip("192.168.0.10");
        assert!(t.from_node(node, 1) && !t.from_node(node, 0) && !t.from_node(ip("10.0.0.1"), 1));
        let t = t.with_node_ports(vec![false, false, false, true]);
        assert!(t.from_node(node, 3) && !t.from_node(node, 1));
    }

    #[test]
    fn pod_addresses_are_told_from_others_whatever_the_filter_says() {
        // 300 pods, dual stack: the 4,096-bit filter has collisions; the answer is exact.
        let pod = |n: u32| {
            PodAddrs::new([
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)),
                IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(n))),
            ])
        };
        let a = Addresses::new((0..300).map(|n| Some(pod(n))).collect(), vec![]);
        for n in 0..600 {
            let ours = n < 300;
            assert_eq!(a.is_pod_address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))), ours, "v4 {n}");
            let v6 = IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(n)));
            assert_eq!(a.is_pod_address(v6), ours, "v6 {n}");
        }
        assert!(!Addresses::default().is_pod_address(ip("10.0.0.1")));
    }
}
