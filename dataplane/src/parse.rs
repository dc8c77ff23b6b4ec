//! Frame parsing: one pass over the headers of an Ethernet frame, no allocation.
//!
//! ```text
//!  &[u8] ─▶ Ethernet II ─▶ [802.1Q] ─┬─ 0x0806 ─▶ ARP ──────────────────────────▶ Class::Arp
//!                                    ├─ 0x0800 ─▶ IPv4 (+options, +AH) ─┐
//!                                    ├─ 0x86dd ─▶ IPv6 (+ext headers) ──┼─▶ L4 ─▶ Class::Ip(IpPacket)
//!                                    │                                   │   TCP / UDP / SCTP / ICMPv4 / ICMPv6
//!                                    │             ICMPv6 133..=137 ─────┴─────▶ Class::NeighbourDiscovery
//!                                    │             (hop limit 255, no extension header; behind one: Err)
//!                                    └─ anything else ─────────────────────────▶ Class::Other(ether_type)
//!  malformed or truncated anywhere ───────────────────────────────────────────▶ Err(ParseError)
//! ```
//!
//! Each header is sliced once with etherparse's `*HeaderSlice::from_slice`,
//! which checks the length before any field is read; every further sub-slice
//! is taken with `get(..)`, so no input can make this module panic. The
//! result, [`Frame`], is `Copy` and holds no borrow of the buffer, so the
//! caller may hand the buffer back to the NIC as soon as it has an action.
//!
//! What is parsed and why:
//! - **Lengths come from the IP headers**, not the frame: Ethernet pads short
//!   frames to 60 bytes (IEEE 802.3 minimum frame), so bytes beyond the IPv4
//!   total length / IPv6 payload length are padding and are ignored; a frame
//!   *shorter* than the IP header claims is truncated and rejected.
//! - **Fragments**: only the first fragment (offset 0) carries the transport
//!   header (RFC 791 §2.3, RFC 8200 §4.5). Later fragments report
//!   [`L4::Other`] with ports 0 and the datagram identity so [`crate::frag`] can give them
//!   the first fragment's verdict. A first fragment too short to hold the
//!   whole transport header is rejected (tiny-fragment attack, RFC 1858 §3.1;
//!   RFC 7112 for IPv6 header chains), and so is an IPv4 TCP fragment at
//!   offset 8 bytes (overlapping-fragment attack, RFC 1858 §3.2).
//! - **ICMP errors** carry the start of the packet that caused them (RFC 792,
//!   RFC 4443 §2.4 c); the embedded header's flow is returned so conntrack can
//!   pass the error as *related* to a tracked connection.
//! - **ICMP echo** is tracked like a connection keyed by its identifier. The
//!   request is encoded as ports `(id, 0)` and the reply as `(0, id)`, so a
//!   reply's flow is exactly the mirror of its request's (conntrack relies
//!   on this). A request in the other direction is a different flow, except
//!   with identifier 0: its ports are `(0, 0)` like the reply's, and only the
//!   message type ([`L4::EchoRequest`] / [`L4::EchoReply`]) tells them apart;
//!   conntrack keys echo by that role.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpPacketSlice, EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
    UdpHeaderSlice,
};

/// A MAC address.
pub type Mac = [u8; 6];

/// An IPv4 or IPv6 address in 16 aligned bytes: IPv6 as is, IPv4 as the
/// IPv4-mapped IPv6 address `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2).
///
/// Aligned 128-bit addresses keep [`Flow`] small and cheap to copy, hash
/// and compare ([`IpAddr`] is a 17-byte enum with byte alignment). The
/// encoding is unambiguous because the parser rejects IPv6 packets that
/// carry an IPv4-mapped address on the wire ([`ParseError::Ipv6MappedAddress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Addr(pub u128);

impl Addr {
    const V4_MAPPED: u128 = 0xffff_u128 << 32;

    /// From IPv4 address bytes.
    #[inline]
    pub fn v4(b: [u8; 4]) -> Addr {
        Addr(Self::V4_MAPPED | u128::from(u32::from_be_bytes(b)))
    }

    /// From IPv6 address bytes.
    #[inline]
    pub fn v6(b: [u8; 16]) -> Addr {
        Addr(u128::from_be_bytes(b))
    }

    /// Is this an IPv4 address?
    #[inline]
    pub fn is_v4(self) -> bool {
        self.0 >> 32 == 0xffff
    }

    /// As a standard library address.
    #[inline]
    pub fn ip(self) -> IpAddr {
        if self.is_v4() {
            IpAddr::V4(Ipv4Addr::from(self.0 as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.0))
        }
    }
}

impl From<IpAddr> for Addr {
    #[inline]
    fn from(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(a) => Addr::v4(a.octets()),
            IpAddr::V6(a) => Addr::v6(a.octets()),
        }
    }
}

/// IP protocol numbers this module dispatches on (IANA "Assigned Internet Protocol Numbers").
pub mod proto {
    /// ICMP for IPv4 (RFC 792).
    pub const ICMP: u8 = 1;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
    /// ICMPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// SCTP (RFC 9260).
    pub const SCTP: u8 = 132;
}

/// Why a frame could not be parsed. Counted per variant, never formatted on
/// the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParseError {
    /// Shorter than an Ethernet II header (14 bytes).
    EthernetTruncated = 0,
    /// An 802.1Q tag is cut short.
    VlanTruncated,
    /// The ARP packet is shorter than its address lengths say.
    ArpTruncated,
    /// The frame ends before the IPv4 header or its total length.
    Ipv4Truncated,
    /// IPv4 version or header length is invalid, or total length < header length.
    Ipv4Malformed,
    /// The frame ends before the IPv6 header, its payload length or an extension header.
    Ipv6Truncated,
    /// IPv6 version is wrong, hop-by-hop is not first, or the extension chain is too long.
    Ipv6Malformed,
    /// The (first fragment's) TCP header is cut short.
    TcpTruncated,
    /// TCP data offset below 5 words.
    TcpMalformed,
    /// The UDP header is cut short.
    UdpTruncated,
    /// The SCTP common header (12 bytes) is cut short.
    SctpTruncated,
    /// The ICMP header (8 bytes) is cut short.
    IcmpTruncated,
    /// An ICMP error's embedded packet is malformed or shorter than IP header + 8 bytes.
    IcmpInnerMalformed,
    /// An IPv4 TCP fragment at offset 8 bytes, which could rewrite the TCP flags (RFC 1858 §3.2).
    TinyFragment,
    /// An IPv6 header with an IPv4-mapped source or destination (RFC 4291 §2.5.5.2).
    Ipv6MappedAddress,
    /// ICMPv6 neighbour discovery (133..=137, hop limit 255) behind an extension
    /// header or fragmented. ND needs neither (RFC 6980 forbids fragments), and
    /// passes without policy on checks of the headers read (from a pod's port,
    /// or on a wire given the link's prefixes): one behind a routing header
    /// would go beyond the destination checked.
    NdExtensionHeader,
}

impl ParseError {
    /// Number of variants (size of a per-reason counter array).
    pub const COUNT: usize = 16;

    /// Every variant, in discriminant order.
    pub const ALL: [ParseError; Self::COUNT] = [
        ParseError::EthernetTruncated,
        ParseError::VlanTruncated,
        ParseError::ArpTruncated,
        ParseError::Ipv4Truncated,
        ParseError::Ipv4Malformed,
        ParseError::Ipv6Truncated,
        ParseError::Ipv6Malformed,
        ParseError::TcpTruncated,
        ParseError::TcpMalformed,
        ParseError::UdpTruncated,
        ParseError::SctpTruncated,
        ParseError::IcmpTruncated,
        ParseError::IcmpInnerMalformed,
        ParseError::TinyFragment,
        ParseError::Ipv6MappedAddress,
        ParseError::NdExtensionHeader,
    ];

    /// Index into a per-reason counter array.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name, used as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            ParseError::EthernetTruncated => "ethernet_truncated",
            ParseError::VlanTruncated => "vlan_truncated",
            ParseError::ArpTruncated => "arp_truncated",
            ParseError::Ipv4Truncated => "ipv4_truncated",
            ParseError::Ipv4Malformed => "ipv4_malformed",
            ParseError::Ipv6Truncated => "ipv6_truncated",
            ParseError::Ipv6Malformed => "ipv6_malformed",
            ParseError::TcpTruncated => "tcp_truncated",
            ParseError::TcpMalformed => "tcp_malformed",
            ParseError::UdpTruncated => "udp_truncated",
            ParseError::SctpTruncated => "sctp_truncated",
            ParseError::IcmpTruncated => "icmp_truncated",
            ParseError::IcmpInnerMalformed => "icmp_inner_malformed",
            ParseError::TinyFragment => "tiny_fragment",
            ParseError::Ipv6MappedAddress => "ipv6_mapped_address",
            ParseError::NdExtensionHeader => "nd_extension_header",
        }
    }
}

/// TCP header flags (byte 13 of the header, RFC 9293 §3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN: no more data from sender.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// PSH: push function.
    pub const PSH: u8 = 0x08;
    /// ACK: acknowledgment field significant.
    pub const ACK: u8 = 0x10;

    /// SYN set.
    #[inline]
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// ACK set.
    #[inline]
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// FIN set.
    #[inline]
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// RST set.
    #[inline]
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// A connection opener: SYN without ACK.
    #[inline]
    pub fn is_syn_only(self) -> bool {
        self.0 & (Self::SYN | Self::ACK) == Self::SYN
    }
}

/// A unidirectional flow: the 5-tuple of one packet, as it travels.
///
/// For ICMP echo the ports encode the identifier (request `(id, 0)`, reply
/// `(0, id)`, see the module doc: with identifier 0 they do not tell a
/// request from a reply); for protocols without ports both are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// IP protocol number of the transport (after IPv6 extension headers / AH).
    pub proto: u8,
    /// Source port (or encoded echo identifier).
    pub src_port: u16,
    /// Destination port (or encoded echo identifier).
    pub dst_port: u16,
}

impl Flow {
    /// The same flow seen from the other end.
    #[inline]
    pub fn reversed(&self) -> Flow {
        Flow {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// The port NetworkPolicy matches on: the destination port for TCP, UDP
    /// and SCTP, 0 for every other protocol (policy ports only name those three).
    #[inline]
    pub fn policy_port(&self) -> u16 {
        match self.proto {
            proto::TCP | proto::UDP | proto::SCTP => self.dst_port,
            _ => 0,
        }
    }
}

/// Fragmentation state of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// A whole datagram (also an IPv6 atomic fragment, RFC 6946).
    None,
    /// Offset 0, more fragments follow: carries the transport header.
    First(FragmentId),
    /// A later fragment: no transport header.
    Later(FragmentId),
}

/// What identifies the fragments of one datagram besides its source and
/// destination (which are the flow's): identification and protocol (RFC 791
/// §3.2; RFC 8200 §4.5 — for IPv6 the protocol is the fragment header's Next
/// Header, the same in every fragment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentId {
    /// Identification (16 bits for IPv4, 32 for IPv6).
    pub id: u32,
    /// Protocol field of the fragmented datagram.
    pub proto: u8,
}

/// What the transport layer turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP with these flags.
    Tcp(TcpFlags),
    /// UDP.
    Udp,
    /// SCTP (ports from the common header).
    Sctp,
    /// ICMP or ICMPv6 echo request.
    EchoRequest,
    /// ICMP or ICMPv6 echo reply.
    EchoReply,
    /// ICMP error about the packet whose flow is given (`None` when the
    /// embedded packet cannot be related: a later fragment or an ICMP error itself).
    IcmpError(Option<Flow>),
    /// Any other ICMP message.
    IcmpOther,
    /// Another IP protocol, or a later fragment whose transport is unknown.
    Other,
}

/// An IP packet's facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPacket {
    /// The 5-tuple.
    pub flow: Flow,
    /// Transport details.
    pub l4: L4,
    /// Fragmentation.
    pub fragment: Fragment,
}

/// The class of a frame, which decides how the pipeline treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// ARP (RFC 826): forwarded without policy. (What a pod port checks in
    /// it is read again by [`arp_sender`]: the common path carries nothing.)
    Arp,
    /// IPv6 neighbour discovery, ICMPv6 133..=137 with hop limit 255 and no
    /// extension header (RFC 4861 §6-8; behind one: [`ParseError::NdExtensionHeader`]):
    /// forwarded without policy. (What a pod port checks: [`nd_facts`]; that
    /// it stays on the link, from a pod's port or on a wire given the link's
    /// prefixes: `Addresses::neighbour_on_link`.)
    NeighbourDiscovery,
    /// IPv4 or IPv6: subject to policy.
    Ip(IpPacket),
    /// Any other EtherType (including 802.3 length frames and stacked VLAN tags).
    Other(u16),
}

/// A parsed frame: L2 addresses and the class. `Copy`, borrows nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source MAC.
    pub src_mac: Mac,
    /// 802.1Q VLAN id, if the frame was tagged.
    pub vlan: Option<u16>,
    /// What the frame carries.
    pub class: Class,
}

/// At most this many IPv6 extension headers are walked; more is treated as
/// malformed. Bounds the work per frame (RFC 8200 §4.1 recommends each
/// header appear at most once, so real chains are short).
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The IPv6 extension headers walked (RFC 8200 §4): those a receiving Linux
/// kernel walks too (`ipv6_ext_hdr`). IANA also lists Mobility (135), HIP
/// (139) and Shim6 (140) as extension headers, but Linux delivers a packet
/// with one of them to that protocol's handler (or answers a Parameter
/// Problem), never to the transport header behind it: so they are the
/// packet's protocol here too, judged as portless, rather than skipped to
/// judge a TCP header the receiver never reads.
mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
}

/// What follows the Ethernet header and at most one 802.1Q tag.
fn l3(frame: &[u8]) -> Option<(EtherType, &[u8])> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    let rest = frame.get(eth.slice().len()..)?;
    if eth.ether_type() != EtherType::VLAN_TAGGED_FRAME {
        return Some((eth.ether_type(), rest));
    }
    let tag = SingleVlanHeaderSlice::from_slice(rest).ok()?;
    Some((tag.ether_type(), rest.get(tag.slice().len()..)?))
}

/// Does this IPv6 frame carry a routing header with segments left to visit
/// (RFC 8200 §4.4)? Its destination is then only the first hop of a path
/// its sender chose, and the destination is all that policy judges. What a
/// pod port checks. `upper`: the upper-layer protocol [`parse`] found
/// (`Flow::proto`) for a whole packet or a first fragment; when the IPv6
/// header names it, there is no extension header, the usual case, told with
/// one load and a test. `None` (a later fragment, whose `proto` is only what
/// its fragment header says): the headers are always walked. `false` for
/// IPv4.
#[inline]
pub fn ipv6_source_routed(frame: &[u8], upper: Option<u8>) -> bool {
    if frame.len() > 14 + 6 && frame[12] == 0x86 && frame[13] == 0xdd && Some(frame[14 + 6]) == upper {
        return false;
    }
    source_routed_frame(frame)
}

/// Does this IPv4 frame carry a loose or strict source-route option (RFC 791:
/// LSRR, type 131; SSRR, type 137) with hops left to visit? Its destination
/// is then only the next hop of a path its sender chose. What a pod port
/// checks; `false` for IPv6, and for a header without options (the usual
/// case: one load and a test).
#[inline]
pub fn ipv4_source_routed(frame: &[u8]) -> bool {
    if frame.len() > 14 && u16::from_be_bytes([frame[12], frame[13]]) == 0x0800 && frame[14] & 0x0f == 5 {
        return false;
    }
    ipv4_source_route_option(frame)
}

/// [`ipv4_source_routed`] past its usual case: a walk of the options.
#[cold]
fn ipv4_source_route_option(frame: &[u8]) -> bool {
    let Some((EtherType::IPV4, ip)) = l3(frame) else {
        return false;
    };
    let Ok(h) = Ipv4HeaderSlice::from_slice(ip) else {
        return false;
    };
    let mut options = h.slice().get(20..).unwrap_or(&[]);
    while let Some(&kind) = options.first() {
        match kind {
            0 => return false, // end of options
            1 => options = &options[1..],
            _ => {
                let Some(&len) = options.get(1).filter(|l| **l >= 2) else { return false };
                // The pointer (third byte, from 4) runs past the length once
                // every hop of the route has been visited.
                if matches!(kind, 131 | 137) && options.get(2).is_some_and(|ptr| *ptr <= len) {
                    return true;
                }
                options = options.get(usize::from(len)..).unwrap_or(&[]);
            }
        }
    }
    false
}

/// [`ipv6_source_routed`] past its usual case.
#[cold]
fn source_routed_frame(frame: &[u8]) -> bool {
    let Some((ether_type, ip)) = l3(frame) else {
        return false;
    };
    match ip.get(6) {
        Some(&next) if ether_type == EtherType::IPV6 => {
            source_routed_chain(next, ip.get(40..).unwrap_or(&[]))
        }
        _ => false,
    }
}

/// [`ipv6_source_routed`]'s walk of the extension headers, as [`ipv6_chain`]
/// walks them.
#[cold]
fn source_routed_chain(mut next: u8, mut data: &[u8]) -> bool {
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let len = match next {
            ext::ROUTING | ext::HOP_BY_HOP | ext::DEST_OPTS => {
                let Ok(h) = Ipv6RawExtHeaderSlice::from_slice(data) else { return false };
                // Byte 3 of a routing header: segments left.
                if next == ext::ROUTING && h.slice().get(3).is_some_and(|left| *left > 0) {
                    return true;
                }
                next = h.next_header().0;
                h.slice().len()
            }
            ext::AUTH => {
                let Ok(h) = IpAuthHeaderSlice::from_slice(data) else { return false };
                next = h.next_header().0;
                h.slice().len()
            }
            ext::FRAGMENT => {
                let Ok(h) = Ipv6FragmentHeaderSlice::from_slice(data) else { return false };
                if h.fragment_offset().value() != 0 {
                    return false;
                }
                next = h.next_header().0;
                h.slice().len()
            }
            _ => return false,
        };
        data = data.get(len..).unwrap_or(&[]);
    }
    false
}

/// The sender's IPv4 address of an ARP frame for IPv4 (what a pod port
/// checks; read only for ARP from a pod port, so the common path carries none).
pub fn arp_sender(frame: &[u8]) -> Option<[u8; 4]> {
    let (ether_type, rest) = l3(frame)?;
    let arp = ArpPacketSlice::from_slice(rest).ok().filter(|_| ether_type == EtherType::ARP)?;
    (arp.proto_addr_type() == EtherType::IPV4).then(|| arp.sender_protocol_addr().try_into().ok()).flatten()
}

/// The target IPv4 address of an ARP frame for IPv4 (whom a unicast ARP
/// frame is for: read only when one would go to a pod's port).
pub fn arp_target(frame: &[u8]) -> Option<[u8; 4]> {
    let (ether_type, rest) = l3(frame)?;
    let arp = ArpPacketSlice::from_slice(rest).ok().filter(|_| ether_type == EtherType::ARP)?;
    (arp.proto_addr_type() == EtherType::IPV4).then(|| arp.target_protocol_addr().try_into().ok()).flatten()
}

/// The IPv6 destination of a frame (whom a unicast neighbour discovery
/// frame is for: read only when one would go to a pod's port).
pub fn ipv6_destination(frame: &[u8]) -> Option<[u8; 16]> {
    let (ether_type, rest) = l3(frame)?;
    let h = Ipv6HeaderSlice::from_slice(rest).ok().filter(|_| ether_type == EtherType::IPV6)?;
    Some(h.destination())
}

/// What a pod port checks in a neighbour discovery frame: ICMPv6 type,
/// IPv6 source, and the target address of a solicitation or advertisement.
pub struct NdFacts {
    /// ICMPv6 type (133 router solicitation ... 137 redirect).
    pub kind: u8,
    /// IPv6 source address.
    pub src: [u8; 16],
    /// Target address of a neighbour solicitation (135) or advertisement (136).
    pub target: Option<[u8; 16]>,
}

/// [`NdFacts`] of a frame [`parse`] classed as neighbour discovery.
pub fn nd_facts(frame: &[u8]) -> Option<NdFacts> {
    let (ether_type, rest) = l3(frame)?;
    let h = Ipv6HeaderSlice::from_slice(rest).ok().filter(|_| ether_type == EtherType::IPV6)?;
    let hlen = h.slice().len();
    let payload = rest.get(hlen..hlen + usize::from(h.payload_length()))?;
    let chain = ipv6_chain(h.next_header().0, payload).ok()?;
    let kind = *chain.data.first()?;
    let target = match kind {
        135 | 136 => Some(chain.data.get(8..24)?.try_into().ok()?),
        _ => None,
    };
    Some(NdFacts { kind, src: h.source(), target })
}

/// Parses one Ethernet II frame.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Frame, ParseError> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| ParseError::EthernetTruncated)?;
    let mut ether_type = eth.ether_type();
    let mut rest = frame.get(eth.slice().len()..).unwrap_or(&[]);
    let mut vlan = None;
    // One 802.1Q tag (IEEE 802.1Q §9.6). Stacked tags (QinQ) stay `Other`:
    // the pipeline cannot see the policy-relevant headers behind them.
    if ether_type == EtherType::VLAN_TAGGED_FRAME {
        let tag = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| ParseError::VlanTruncated)?;
        vlan = Some(tag.vlan_identifier().value());
        ether_type = tag.ether_type();
        rest = rest.get(tag.slice().len()..).unwrap_or(&[]);
    }
    let class = match ether_type {
        EtherType::ARP => {
            ArpPacketSlice::from_slice(rest).map_err(|_| ParseError::ArpTruncated)?;
            Class::Arp
        }
        EtherType::IPV4 => parse_ipv4(rest)?,
        EtherType::IPV6 => parse_ipv6(rest)?,
        other => Class::Other(other.0),
    };
    Ok(Frame { dst_mac: eth.destination(), src_mac: eth.source(), vlan, class })
}

#[inline]
fn parse_ipv4(data: &[u8]) -> Result<Class, ParseError> {
    use etherparse::err::ipv4::HeaderSliceError;
    let h = Ipv4HeaderSlice::from_slice(data).map_err(|e| match e {
        HeaderSliceError::Len(_) => ParseError::Ipv4Truncated,
        HeaderSliceError::Content(_) => ParseError::Ipv4Malformed,
    })?;
    let total = usize::from(h.total_len());
    let hlen = h.slice().len();
    if total < hlen {
        return Err(ParseError::Ipv4Malformed);
    }
    // Bytes past total_len are Ethernet padding.
    let payload = data.get(hlen..total).ok_or(ParseError::Ipv4Truncated)?;
    let src = Addr::v4(h.source());
    let dst = Addr::v4(h.destination());
    let offset = h.fragments_offset().value();
    let header_proto = h.protocol().0;
    let fid = FragmentId { id: u32::from(h.identification()), proto: header_proto };
    let fragment = if offset != 0 {
        Fragment::Later(fid)
    } else if h.more_fragments() {
        Fragment::First(fid)
    } else {
        Fragment::None
    };
    if let Fragment::Later(_) = fragment {
        // RFC 1858 §3.2: a TCP fragment at offset 1 (8 bytes) can overwrite
        // the flags of the first fragment's header; no legitimate sender
        // produces it.
        if offset == 1 && header_proto == proto::TCP {
            return Err(ParseError::TinyFragment);
        }
        return Ok(Class::Ip(IpPacket {
            flow: Flow { src, dst, proto: header_proto, src_port: 0, dst_port: 0 },
            l4: L4::Other,
            fragment,
        }));
    }
    // IPv4 AH (RFC 4302) sits between IP and the transport header.
    let (l4_proto, l4_data) = if header_proto == ext::AUTH {
        let ah = IpAuthHeaderSlice::from_slice(payload).map_err(|_| ParseError::Ipv4Truncated)?;
        let rest = payload.get(ah.slice().len()..).unwrap_or(&[]);
        (ah.next_header().0, rest)
    } else {
        (header_proto, payload)
    };
    let (flow, l4) = parse_l4(src, dst, l4_proto, l4_data, false)?;
    Ok(Class::Ip(IpPacket { flow, l4, fragment }))
}

/// The upper-layer protocol and data after walking an IPv6 extension chain.
struct Ipv6Chain<'a> {
    proto: u8,
    data: &'a [u8],
    /// Fragment header: (identification, offset in 8-byte units, more fragments, its next header).
    frag: Option<(u32, u16, bool, u8)>,
}

/// Walks the extension headers (RFC 8200 §4) until an upper-layer header or
/// a later fragment. Used for packets and for the (truncated) packet inside
/// an ICMPv6 error; etherparse's own walker is not used because it would
/// parse the payload of a non-first fragment as headers.
#[inline]
fn ipv6_chain(first: u8, mut data: &[u8]) -> Result<Ipv6Chain<'_>, ParseError> {
    let mut next = first;
    let mut frag = None;
    for i in 0..=MAX_IPV6_EXT_HEADERS {
        match next {
            ext::HOP_BY_HOP if i != 0 => {
                // RFC 8200 §4.1: hop-by-hop must immediately follow the IPv6 header.
                return Err(ParseError::Ipv6Malformed);
            }
            ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTS => {
                let h = Ipv6RawExtHeaderSlice::from_slice(data).map_err(|_| ParseError::Ipv6Truncated)?;
                next = h.next_header().0;
                data = data.get(h.slice().len()..).unwrap_or(&[]);
            }
            ext::AUTH => {
                let h = IpAuthHeaderSlice::from_slice(data).map_err(|_| ParseError::Ipv6Truncated)?;
                next = h.next_header().0;
                data = data.get(h.slice().len()..).unwrap_or(&[]);
            }
            ext::FRAGMENT => {
                let h = Ipv6FragmentHeaderSlice::from_slice(data).map_err(|_| ParseError::Ipv6Truncated)?;
                next = h.next_header().0;
                data = data.get(h.slice().len()..).unwrap_or(&[]);
                let offset = h.fragment_offset().value();
                frag = Some((h.identification(), offset, h.more_fragments(), next));
                if offset != 0 {
                    // What follows is the middle of the datagram, not a header.
                    return Ok(Ipv6Chain { proto: next, data, frag });
                }
            }
            _ => return Ok(Ipv6Chain { proto: next, data, frag }),
        }
    }
    Err(ParseError::Ipv6Malformed)
}

#[inline]
fn parse_ipv6(data: &[u8]) -> Result<Class, ParseError> {
    use etherparse::err::ipv6::HeaderSliceError;
    let h = Ipv6HeaderSlice::from_slice(data).map_err(|e| match e {
        HeaderSliceError::Len(_) => ParseError::Ipv6Truncated,
        HeaderSliceError::Content(_) => ParseError::Ipv6Malformed,
    })?;
    let hlen = h.slice().len();
    // Payload length 0 would mean a jumbogram (RFC 2675), impossible on
    // Ethernet; it is taken literally as an empty payload.
    let end = hlen + usize::from(h.payload_length());
    let payload = data.get(hlen..end).ok_or(ParseError::Ipv6Truncated)?;
    let src = Addr::v6(h.source());
    let dst = Addr::v6(h.destination());
    // RFC 4291 §2.5.5.2 / RFC 4038 §4.2: IPv4-mapped addresses do not appear
    // in IPv6 headers on the wire; accepting them would let an IPv6 packet
    // pass for the IPv4 pod with the same low 32 bits.
    if src.is_v4() || dst.is_v4() {
        return Err(ParseError::Ipv6MappedAddress);
    }
    let chain = ipv6_chain(h.next_header().0, payload)?;
    let fragment = match chain.frag {
        // Offset 0 and M clear: an atomic fragment, a whole datagram (RFC 6946).
        Some((_, 0, false, _)) | None => Fragment::None,
        Some((id, offset, _, frag_next)) => {
            let fid = FragmentId { id, proto: frag_next };
            if offset == 0 {
                Fragment::First(fid)
            } else {
                Fragment::Later(fid)
            }
        }
    };
    if let Fragment::Later(fid) = fragment {
        return Ok(Class::Ip(IpPacket {
            flow: Flow { src, dst, proto: fid.proto, src_port: 0, dst_port: 0 },
            l4: L4::Other,
            fragment,
        }));
    }
    // RFC 4861 §6.1.1, §7.1.1, §8.1: ND messages arrive with hop limit 255
    // (proof that they were not forwarded); RFC 6980 forbids fragmenting them.
    if chain.proto == proto::ICMPV6 && h.hop_limit() == 255 {
        if let Some(133..=137) = chain.data.first() {
            // Nor do they need extension headers. Behind a routing header one
            // would be addressed beyond the destination a pod's port checks;
            // classed as IP it would skip the checks of what it speaks for.
            if h.next_header().0 != proto::ICMPV6 {
                return Err(ParseError::NdExtensionHeader);
            }
            // Still require the fixed ICMPv6 header.
            if chain.data.len() < 8 {
                return Err(ParseError::IcmpTruncated);
            }
            // A solicitation or advertisement carries its target address.
            if matches!(chain.data.first(), Some(135 | 136)) && chain.data.len() < 24 {
                return Err(ParseError::IcmpTruncated);
            }
            return Ok(Class::NeighbourDiscovery);
        }
    }
    let (flow, l4) = parse_l4(src, dst, chain.proto, chain.data, true)?;
    Ok(Class::Ip(IpPacket { flow, l4, fragment }))
}

/// Reads ports (or ICMP facts) from the transport header of a whole packet
/// or a first fragment. `v6` selects ICMPv6 type numbers.
#[inline]
fn parse_l4(src: Addr, dst: Addr, proto_nr: u8, data: &[u8], v6: bool) -> Result<(Flow, L4), ParseError> {
    use etherparse::err::tcp::HeaderSliceError;
    let mut flow = Flow { src, dst, proto: proto_nr, src_port: 0, dst_port: 0 };
    let l4 = match proto_nr {
        proto::TCP => {
            let t = TcpHeaderSlice::from_slice(data).map_err(|e| match e {
                HeaderSliceError::Len(_) => ParseError::TcpTruncated,
                HeaderSliceError::Content(_) => ParseError::TcpMalformed,
            })?;
            flow.src_port = t.source_port();
            flow.dst_port = t.destination_port();
            L4::Tcp(TcpFlags(t.slice().get(13).copied().unwrap_or(0)))
        }
        proto::UDP => {
            let u = UdpHeaderSlice::from_slice(data).map_err(|_| ParseError::UdpTruncated)?;
            flow.src_port = u.source_port();
            flow.dst_port = u.destination_port();
            L4::Udp
        }
        proto::SCTP => {
            // RFC 9260 §3.1: the common header is 12 bytes: source port,
            // destination port, verification tag, checksum.
            let (sp, dp) = match data {
                [a, b, c, d, _, _, _, _, _, _, _, _, ..] => {
                    (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
                }
                _ => return Err(ParseError::SctpTruncated),
            };
            flow.src_port = sp;
            flow.dst_port = dp;
            L4::Sctp
        }
        proto::ICMP if !v6 => icmp(&mut flow, data, false)?,
        proto::ICMPV6 if v6 => icmp(&mut flow, data, true)?,
        _ => L4::Other,
    };
    Ok((flow, l4))
}

/// ICMP types used here. ICMPv4 from RFC 792, ICMPv6 from RFC 4443.
mod icmp_type {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAMETER_PROBLEM: u8 = 12;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

#[inline]
fn icmp(flow: &mut Flow, data: &[u8], v6: bool) -> Result<L4, ParseError> {
    use icmp_type::*;
    // Type, code, checksum, then 4 bytes whose meaning depends on the type:
    // every ICMP message has at least these 8 bytes (RFC 792, RFC 4443 §2.1).
    let (ty, id) = match data {
        [ty, _code, _, _, a, b, _, _, ..] => (*ty, u16::from_be_bytes([*a, *b])),
        _ => return Err(ParseError::IcmpTruncated),
    };
    let is_error = if v6 {
        // RFC 4443 §2.1: types 0-127 are errors; 1-4 carry the invoking packet.
        (1..=4).contains(&ty)
    } else {
        matches!(ty, V4_DEST_UNREACHABLE | V4_TIME_EXCEEDED | V4_PARAMETER_PROBLEM)
    };
    let (req, rep) = if v6 { (V6_ECHO_REQUEST, V6_ECHO_REPLY) } else { (V4_ECHO_REQUEST, V4_ECHO_REPLY) };
    Ok(if ty == req {
        flow.src_port = id;
        L4::EchoRequest
    } else if ty == rep {
        flow.dst_port = id;
        L4::EchoReply
    } else if is_error {
        L4::IcmpError(inner_flow(data.get(8..).unwrap_or(&[]), v6)?)
    } else {
        L4::IcmpOther
    })
}

/// The flow of the packet embedded in an ICMP error: its IP header and at
/// least the first 8 bytes of its payload (RFC 792 "Internet Header + 64
/// bits of Original Data Datagram"; RFC 4443 §2.4 c asks for as much as fits).
fn inner_flow(data: &[u8], v6: bool) -> Result<Option<Flow>, ParseError> {
    let bad = ParseError::IcmpInnerMalformed;
    let (src, dst, proto_nr, l4, later_fragment) = if v6 {
        let h = Ipv6HeaderSlice::from_slice(data).map_err(|_| bad)?;
        let chain =
            ipv6_chain(h.next_header().0, data.get(h.slice().len()..).unwrap_or(&[])).map_err(|_| bad)?;
        (
            Addr::v6(h.source()),
            Addr::v6(h.destination()),
            chain.proto,
            chain.data,
            matches!(chain.frag, Some((_, off, _, _)) if off != 0),
        )
    } else {
        let h = Ipv4HeaderSlice::from_slice(data).map_err(|_| bad)?;
        (
            Addr::v4(h.source()),
            Addr::v4(h.destination()),
            h.protocol().0,
            data.get(h.slice().len()..).unwrap_or(&[]),
            h.fragments_offset().value() != 0,
        )
    };
    if later_fragment {
        return Ok(None);
    }
    let mut flow = Flow { src, dst, proto: proto_nr, src_port: 0, dst_port: 0 };
    let eight: [u8; 8] = match l4.get(..8) {
        Some(b) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            a
        }
        None => return Err(bad),
    };
    match proto_nr {
        proto::TCP | proto::UDP | proto::SCTP => {
            flow.src_port = u16::from_be_bytes([eight[0], eight[1]]);
            flow.dst_port = u16::from_be_bytes([eight[2], eight[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let id = u16::from_be_bytes([eight[4], eight[5]]);
            let (req, rep) = if v6 {
                (icmp_type::V6_ECHO_REQUEST, icmp_type::V6_ECHO_REPLY)
            } else {
                (icmp_type::V4_ECHO_REQUEST, icmp_type::V4_ECHO_REPLY)
            };
            if eight[0] == req {
                flow.src_port = id;
            } else if eight[0] == rep {
                flow.dst_port = id;
            } else {
                // No ICMP error is sent about an ICMP error (RFC 1122 §3.2.2).
                return Ok(None);
            }
        }
        _ => {}
    }
    Ok(Some(flow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    /// Ethernet + IPv4 (10.0.0.1 → 10.0.0.2, id 0x1234, DF) + TCP 40000 → 80 SYN.
    /// Checksums are not checked by the parser and left as in a capture.
    const TCP_SYN_V4: [u8; 54] = [
        0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00, // ethernet
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, // ipv4
        10, 0, 0, 1, 10, 0, 0, 2, //
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0, // tcp
    ];

    /// 802.1Q tag (VLAN 5) + IPv4 with one 4-byte option (NOP NOP NOP EOL) + UDP 5353 → 53,
    /// padded to the 60-byte Ethernet minimum.
    const UDP_VLAN_OPTS_V4: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x0a, 0x81, 0x00, 0x00, 0x05, 0x08,
        0x00, // ethernet + 802.1Q
        0x46, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, 0x00, 0x00, // ipv4, IHL 6
        10, 0, 0, 1, 10, 0, 0, 2, 0x01, 0x01, 0x01, 0x00, // addresses, options
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // udp
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
    ];

    /// IPv6 fd00::1 → fd00::2, hop-by-hop (8 bytes) then SCTP 7000 → 9000 (common header only).
    const SCTP_HBH_V6: [u8; 14 + 40 + 8 + 12] = [
        0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd, // ethernet
        0x60, 0, 0, 0, 0x00, 20, 0x00, 64, // ipv6: payload 20, next = hop-by-hop
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, //
        132, 0, 1, 4, 0, 0, 0, 0, // hop-by-hop: next SCTP, len 0, PadN
        0x1b, 0x58, 0x23, 0x28, 0, 0, 0, 1, 0, 0, 0, 0, // sctp common header
    ];

    /// ICMPv4 port unreachable from 10.0.0.2 to 10.0.0.1 about UDP 10.0.0.1:5353 → 10.0.0.2:53.
    const ICMP_UNREACH_V4: [u8; 14 + 20 + 8 + 20 + 8] = [
        0x02, 0, 0, 0, 0, 0x0a, 0x02, 0, 0, 0, 0, 0x0b, 0x08, 0x00, // ethernet
        0x45, 0, 0, 56, 0, 2, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1, // ipv4
        3, 3, 0, 0, 0, 0, 0, 0, // icmp: dest unreachable, port unreachable
        0x45, 0, 0, 36, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // inner ipv4
        0x14, 0xe9, 0x00, 0x35, 0, 16, 0, 0, // inner udp
    ];

    /// IPv6 neighbour solicitation (type 135, hop limit 255).
    const ND_NS: [u8; 14 + 40 + 24] = [
        0x33, 0x33, 0xff, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd, // ethernet
        0x60, 0, 0, 0, 0, 24, 58, 255, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, //
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2, //
        135, 0, 0, 0, 0, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    ];

    /// ARP request 10.0.0.1 asks for 10.0.0.2.
    const ARP_REQ: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x06, //
        0, 1, 0x08, 0x00, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 0x0a, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ];

    fn v4(a: [u8; 4]) -> Addr {
        Addr::v4(a)
    }

    fn ip(frame: &[u8]) -> IpPacket {
        match parse(frame).expect("parses").class {
            Class::Ip(p) => p,
            c => panic!("not IP: {c:?}"),
        }
    }

    #[test]
    fn tcp_syn_ipv4() {
        let f = parse(&TCP_SYN_V4).unwrap();
        assert_eq!(f.dst_mac, MAC_B);
        assert_eq!(f.src_mac, MAC_A);
        assert_eq!(f.vlan, None);
        let p = ip(&TCP_SYN_V4);
        assert_eq!(
            p.flow,
            Flow { src: v4([10, 0, 0, 1]), dst: v4([10, 0, 0, 2]), proto: 6, src_port: 40000, dst_port: 80 }
        );
        assert_eq!(p.l4, L4::Tcp(TcpFlags(TcpFlags::SYN)));
        assert!(TcpFlags(TcpFlags::SYN).is_syn_only());
        assert_eq!(p.fragment, Fragment::None);
        assert_eq!(p.flow.policy_port(), 80);
    }

    #[test]
    fn vlan_ipv4_options_udp_with_padding() {
        let f = parse(&UDP_VLAN_OPTS_V4).unwrap();
        assert_eq!(f.vlan, Some(5));
        let p = ip(&UDP_VLAN_OPTS_V4);
        assert_eq!(p.l4, L4::Udp);
        assert_eq!((p.flow.src_port, p.flow.dst_port), (5353, 53));
    }

    #[test]
    fn ipv6_hop_by_hop_sctp() {
        let p = ip(&SCTP_HBH_V6);
        assert_eq!(p.l4, L4::Sctp);
        assert_eq!(p.flow.proto, 132);
        assert_eq!((p.flow.src_port, p.flow.dst_port), (7000, 9000));
        assert_eq!(p.flow.policy_port(), 9000);
    }

    #[test]
    fn sctp_short_common_header_is_truncated() {
        // Cut 4 bytes of the SCTP header and shrink the IPv6 payload length to match.
        let mut f = SCTP_HBH_V6[..SCTP_HBH_V6.len() - 4].to_vec();
        f[14 + 5] = 16;
        assert_eq!(parse(&f), Err(ParseError::SctpTruncated));
    }

    #[test]
    fn icmp_error_carries_inner_flow() {
        let p = ip(&ICMP_UNREACH_V4);
        let inner =
            Flow { src: v4([10, 0, 0, 1]), dst: v4([10, 0, 0, 2]), proto: 17, src_port: 5353, dst_port: 53 };
        assert_eq!(p.l4, L4::IcmpError(Some(inner)));
        assert_eq!(p.flow.policy_port(), 0);
    }

    #[test]
    fn icmpv6_packet_too_big_carries_inner_tcp_flow() {
        // fd00::2 tells fd00::1 its TCP segment to fd00::2 port 443 was too big.
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0a, 0x02, 0, 0, 0, 0, 0x0b, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8 + 40 + 8, 58, 64]);
        let a1 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let a2 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        f.extend_from_slice(&a2);
        f.extend_from_slice(&a1);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0x05, 0x00]); // type 2, MTU 1280
        f.extend_from_slice(&[0x60, 0, 0, 0, 0x05, 0xc8, 6, 64]); // inner: payload 1480, TCP
        f.extend_from_slice(&a1);
        f.extend_from_slice(&a2);
        f.extend_from_slice(&[0xc3, 0x50, 0x01, 0xbb, 0, 0, 0, 1]); // 50000 -> 443, seq
        let p = ip(&f);
        let inner = Flow { src: Addr::v6(a1), dst: Addr::v6(a2), proto: 6, src_port: 50000, dst_port: 443 };
        assert_eq!(p.l4, L4::IcmpError(Some(inner)));
        assert_eq!(p.flow.proto, 58);
    }

    #[test]
    fn icmp_error_with_short_inner_is_malformed() {
        let mut f = ICMP_UNREACH_V4[..ICMP_UNREACH_V4.len() - 4].to_vec();
        f[14 + 3] = 52;
        assert_eq!(parse(&f), Err(ParseError::IcmpInnerMalformed));
    }

    #[test]
    fn neighbour_discovery_and_arp() {
        assert_eq!(parse(&ND_NS).unwrap().class, Class::NeighbourDiscovery);
        assert!(nd_facts(&ND_NS).is_some_and(|f| f.kind == 135 && f.target.is_some()));
        assert_eq!(parse(&ARP_REQ).unwrap().class, Class::Arp);
        assert!(arp_sender(&ARP_REQ).is_some());
        // A "neighbour solicitation" that was routed (hop limit 254) is not ND.
        let mut routed = ND_NS;
        routed[14 + 7] = 254;
        assert!(matches!(parse(&routed).unwrap().class, Class::Ip(IpPacket { l4: L4::IcmpOther, .. })));
        // One behind an extension header (a routing header would take it beyond
        // the destination checked; hop-by-hop, destination options or a fragment
        // header would make it IP, past the checks of what it speaks for) is refused.
        for header in [43, 0, 60, 44] {
            let mut behind = ND_NS[..14 + 40].to_vec();
            behind[14 + 5] += 8; // payload length
            behind[14 + 6] = header;
            let ext = if header == 44 { [58, 0, 0, 0, 0, 0, 0, 1] } else { [58, 0, 4, 0, 0, 0, 0, 0] };
            behind.extend_from_slice(&ext);
            behind.extend_from_slice(&ND_NS[14 + 40..]);
            assert_eq!(parse(&behind), Err(ParseError::NdExtensionHeader), "behind header {header}");
        }
        assert_eq!(parse(&ARP_REQ[..30]), Err(ParseError::ArpTruncated));
    }

    #[test]
    fn an_ipv4_source_route_with_hops_left_is_source_routing() {
        use crate::testing::{udp, with_ipv4_options, Host};
        let (a, b) = (Host::new(1), Host::new(2));
        let plain = udp(&a, 5000, &b, 53, false, b"q");
        // LSRR (131) or SSRR (137) of one hop, 10.0.0.9, pointer `ptr`; NOP padding.
        let routed = |kind: u8, ptr: u8| with_ipv4_options(&plain, &[1, kind, 7, ptr, 10, 0, 0, 9]);
        assert!(!ipv4_source_routed(&plain));
        assert!(!ipv4_source_routed(&udp(&a, 5000, &b, 53, true, b"q")), "IPv6");
        assert!(ipv4_source_routed(&routed(131, 4)) && ipv4_source_routed(&routed(137, 4)));
        assert!(!ipv4_source_routed(&routed(131, 8)), "every hop visited: the destination is the last");
        // Found behind other options (router alert, 148); other options (record
        // route, 7) are not source routing; end of options stops the walk.
        assert!(ipv4_source_routed(&with_ipv4_options(&plain, &[148, 4, 0, 0, 131, 7, 4, 10, 0, 0, 9, 0])));
        assert!(!ipv4_source_routed(&with_ipv4_options(&plain, &[1, 7, 7, 4, 0, 0, 0, 0])));
        assert!(!ipv4_source_routed(&with_ipv4_options(&plain, &[0, 131, 7, 4, 10, 0, 0, 9])));
        // Every such frame still parses as IP.
        for f in [routed(131, 4), routed(137, 8)] {
            assert!(matches!(parse(&f).unwrap().class, Class::Ip(IpPacket { l4: L4::Udp, .. })), "{f:?}");
        }
    }

    #[test]
    fn a_routing_header_with_segments_left_is_source_routing() {
        use crate::testing::{udp, with_ipv6_header, Host};
        let (a, b) = (Host::new(1), Host::new(2));
        let plain = udp(&a, 5000, &b, 53, true, b"q");
        // Routing header type 4 (segment routing), segments left `left`.
        let routed = |left: u8| with_ipv6_header(&plain, 43, vec![0, 0, 4, left, 0, 0, 0, 0]);
        assert!(!ipv6_source_routed(&plain, Some(17)));
        assert!(!ipv6_source_routed(&udp(&a, 5000, &b, 53, false, b"q"), Some(17)), "IPv4");
        assert!(ipv6_source_routed(&routed(1), Some(17)));
        assert!(!ipv6_source_routed(&routed(0), Some(17)), "no segment left: the destination is the last");
        // Behind other headers.
        let hop = |f: &[u8]| with_ipv6_header(f, 0, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let dest = |f: &[u8]| with_ipv6_header(f, 60, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let atomic = |f: &[u8]| with_ipv6_header(f, 44, vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(ipv6_source_routed(&hop(&routed(2)), Some(17)));
        assert!(ipv6_source_routed(&dest(&atomic(&routed(1))), Some(17)));
        assert!(!ipv6_source_routed(&hop(&dest(&plain)), Some(17)));
        // Every such frame still parses as IP (policy sees its first hop).
        for f in [routed(1), hop(&routed(2)), dest(&atomic(&routed(1)))] {
            assert!(matches!(parse(&f).unwrap().class, Class::Ip(IpPacket { l4: L4::Udp, .. })), "{f:?}");
        }
    }

    #[test]
    fn other_ethertypes() {
        let mut lldp = TCP_SYN_V4;
        lldp[12] = 0x88;
        lldp[13] = 0xcc;
        assert_eq!(parse(&lldp).unwrap().class, Class::Other(0x88cc));
        // Stacked tags: 802.1Q inside 802.1Q stays opaque.
        let mut qinq = UDP_VLAN_OPTS_V4.to_vec();
        qinq[16] = 0x81;
        qinq[17] = 0x00;
        assert_eq!(parse(&qinq).unwrap().class, Class::Other(0x8100));
    }

    #[test]
    fn malformed_frames() {
        assert_eq!(parse(&[]), Err(ParseError::EthernetTruncated));
        assert_eq!(parse(&TCP_SYN_V4[..13]), Err(ParseError::EthernetTruncated));
        assert_eq!(parse(&UDP_VLAN_OPTS_V4[..16]), Err(ParseError::VlanTruncated));
        assert_eq!(parse(&TCP_SYN_V4[..30]), Err(ParseError::Ipv4Truncated));
        // Total length says 40, frame has 20 bytes of IP.
        assert_eq!(parse(&TCP_SYN_V4[..34]), Err(ParseError::Ipv4Truncated));
        let mut bad_ihl = TCP_SYN_V4;
        bad_ihl[14] = 0x44;
        assert_eq!(parse(&bad_ihl), Err(ParseError::Ipv4Malformed));
        let mut bad_total = TCP_SYN_V4;
        bad_total[17] = 10; // total length below the header length
        assert_eq!(parse(&bad_total), Err(ParseError::Ipv4Malformed));
        let mut short_tcp = TCP_SYN_V4;
        short_tcp[17] = 30; // total 30: only 10 bytes of TCP
        assert_eq!(parse(&short_tcp), Err(ParseError::TcpTruncated));
        let mut bad_doff = TCP_SYN_V4;
        bad_doff[14 + 20 + 12] = 0x40;
        assert_eq!(parse(&bad_doff), Err(ParseError::TcpMalformed));
        let mut v6_bad_version = SCTP_HBH_V6;
        v6_bad_version[14] = 0x40;
        assert_eq!(parse(&v6_bad_version), Err(ParseError::Ipv6Malformed));
        assert_eq!(parse(&SCTP_HBH_V6[..SCTP_HBH_V6.len() - 1]), Err(ParseError::Ipv6Truncated));
    }

    #[test]
    fn ipv4_fragments() {
        // First fragment: MF set, offset 0 — transport parsed.
        let mut first = TCP_SYN_V4;
        first[20] = 0x20;
        let p = ip(&first);
        let fid = FragmentId { id: 0x1234, proto: 6 };
        assert_eq!(p.fragment, Fragment::First(fid));
        assert_eq!(p.flow.dst_port, 80);
        // Later fragment at offset 16 bytes: no ports.
        let mut later = TCP_SYN_V4;
        later[20] = 0x00;
        later[21] = 0x02;
        let p = ip(&later);
        assert_eq!(p.fragment, Fragment::Later(fid));
        assert_eq!((p.l4, p.flow.dst_port), (L4::Other, 0));
        // Offset 8 bytes for TCP: RFC 1858 overlapping fragment.
        let mut overlap = TCP_SYN_V4;
        overlap[21] = 0x01;
        assert_eq!(parse(&overlap), Err(ParseError::TinyFragment));
    }

    /// IPv6 with a fragment header (id 7) in front of UDP; `offset_units` in 8-byte units.
    fn v6_fragment(offset_units: u16, more: bool) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 16, 44, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let off = (offset_units << 3) | u16::from(more);
        f.extend_from_slice(&[17, 0, (off >> 8) as u8, off as u8, 0, 0, 0, 7]);
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn ipv6_fragments() {
        let p = ip(&v6_fragment(0, true));
        assert!(matches!(p.fragment, Fragment::First(FragmentId { id: 7, proto: 17, .. })));
        assert_eq!(p.flow.dst_port, 53);
        let p = ip(&v6_fragment(3, false));
        assert!(matches!(p.fragment, Fragment::Later(FragmentId { id: 7, proto: 17, .. })));
        assert_eq!(p.flow.dst_port, 0);
        // Atomic fragment (RFC 6946): a whole datagram.
        let p = ip(&v6_fragment(0, false));
        assert_eq!(p.fragment, Fragment::None);
        assert_eq!(p.flow.dst_port, 53);
    }

    #[test]
    fn echo_request_and_reply_flows_mirror() {
        let mut req = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00];
        req.extend_from_slice(&[0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        req.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let mut rep = req.clone();
        rep[26..30].copy_from_slice(&[10, 0, 0, 2]);
        rep[30..34].copy_from_slice(&[10, 0, 0, 1]);
        rep[34] = 0;
        let a = ip(&req);
        let b = ip(&rep);
        assert_eq!(a.l4, L4::EchoRequest);
        assert_eq!(b.l4, L4::EchoReply);
        assert_eq!(a.flow.reversed(), b.flow);
        assert_eq!(a.flow.src_port, 0x1234);
    }

    #[test]
    fn ipv4_mapped_addresses_in_ipv6_are_rejected() {
        let mut f = SCTP_HBH_V6;
        // Source ::ffff:10.0.0.1
        f[14 + 8..14 + 24].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(parse(&f), Err(ParseError::Ipv6MappedAddress));
        let a = Addr::v4([10, 0, 0, 1]);
        assert!(a.is_v4());
        assert_eq!(a.ip(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(Addr::from(a.ip()), a);
        let b: IpAddr = "fd00::1".parse().unwrap();
        assert!(!Addr::from(b).is_v4());
        assert_eq!(Addr::from(b).ip(), b);
    }

    /// Mobility, HIP and Shim6 headers end the walk: the packet is of that
    /// protocol, as the receiving kernel sees it, not of the TCP header
    /// behind it.
    #[test]
    fn mobility_hip_and_shim6_headers_are_the_packets_protocol() {
        for proto in [135, 139, 140] {
            let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd];
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 28, proto, 64]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            // The header (8 bytes), its next header TCP; then a SYN to port 80.
            f.extend_from_slice(&[6, 0, 5, 0, 0, 0, 0, 0]);
            f.extend_from_slice(&[
                0xc3, 0x50, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
            ]);
            let p = ip(&f);
            assert_eq!((p.flow.proto, p.flow.dst_port, p.l4), (proto, 0, L4::Other), "{proto}");
            assert!(!ipv6_source_routed(&f, None), "{proto}");
        }
    }

    #[test]
    fn too_many_extension_headers() {
        let n = MAX_IPV6_EXT_HEADERS + 1;
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd];
        let plen = (n * 8 + 8) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, 60, 64]);
        f.extend_from_slice(&[0xfd; 32]);
        for _ in 0..n {
            f.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
        assert_eq!(parse(&f), Err(ParseError::Ipv6Malformed));
    }

    #[test]
    fn parse_error_table_is_consistent() {
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    fn fixtures() -> Vec<Vec<u8>> {
        vec![
            TCP_SYN_V4.to_vec(),
            UDP_VLAN_OPTS_V4.to_vec(),
            SCTP_HBH_V6.to_vec(),
            ICMP_UNREACH_V4.to_vec(),
            ND_NS.to_vec(),
            ARP_REQ.to_vec(),
            v6_fragment(0, true),
            nd_of_kind(136),
            nd_of_kind(133),
        ]
    }

    /// [`ND_NS`] as another neighbour discovery message (type `kind`).
    fn nd_of_kind(kind: u8) -> Vec<u8> {
        let mut f = ND_NS.to_vec();
        f[14 + 40] = kind;
        f
    }

    /// Parses `f` and reads it again with every helper the pod-port checks
    /// use (none may panic), and checks that what `parse` classes as neighbour
    /// discovery gives those checks their facts.
    fn parse_and_read_again(f: &[u8]) {
        let class = parse(f).map(|p| p.class);
        let _ = (arp_sender(f), arp_target(f), ipv6_destination(f), ipv4_source_routed(f));
        for upper in [None, Some(6), Some(17), Some(58)] {
            let _ = ipv6_source_routed(f, upper);
        }
        let nd = nd_facts(f);
        if let Ok(Class::NeighbourDiscovery) = class {
            let nd = nd.expect("facts of a frame classed as neighbour discovery");
            assert!((133..=137).contains(&nd.kind));
            assert_eq!(nd.target.is_some(), matches!(nd.kind, 135 | 136));
            assert!(ipv6_destination(f).is_some());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Random bytes never panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            parse_and_read_again(&bytes);
        }

        /// Valid frames with random bytes overwritten and a random cut never
        /// panic; this reaches the deep paths that random bytes cannot.
        #[test]
        fn mutated_fixtures_never_panic(
            which in 0usize..9,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut f = fixtures()[which].clone();
            for (at, b) in edits {
                let n = f.len();
                f[at % n] = b;
            }
            let n = f.len();
            f.truncate(cut % (n + 1));
            parse_and_read_again(&f);
        }
    }
}
