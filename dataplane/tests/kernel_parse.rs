//! The frame parser against the Linux kernel: for IP packets with option and
//! extension-header chains, the protocol and destination port the parser
//! judges must be those the kernel delivers to.
//!
//! Policy is judged on what `dataplane::parse` reads from a packet, and the
//! receiving pod's kernel acts on what it reads. Where the two differ, a
//! packet judged as "TCP to port 80" could reach something else. Here a
//! kernel in a network namespace is the oracle: every probe goes to an
//! address with nothing listening, so the kernel's answer names what it
//! parsed (a TCP reset comes from the port it saw; an ICMP port or protocol
//! unreachable, or ICMPv6 "unrecognized next header" with its pointer, quotes
//! the packet). For every probe the kernel answered so, the parser must
//! either refuse the packet (the dataplane then drops it) or read the same
//! protocol, and for TCP (and UDP over IPv4) the same port.
//!
//! Probes: a fixed list of the cases the parser handles specially (IPv4
//! options, IPv6 extension headers including routing, fragment, AH,
//! Mobility, HIP, Shim6, ESP and no-next-header, fragmented datagrams with
//! overlapping pieces), and random chains of those from a fixed seed
//! (`PORTCULLIS_KERNEL_PARSE_SEED` to try another). The sender is a small
//! Python script with an `AF_PACKET` socket (`tests/kernel_oracle.py`).
//!
//! Needs root (network namespaces); skips, saying why, otherwise, or fails
//! when PORTCULLIS_REQUIRE_ROOT_TESTS=1 (`dataplane::testing::root`).

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use dataplane::parse::{parse, Class, Fragment};
use dataplane::testing::root::sh;

const TX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x5e, 0x01];
const RX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x5e, 0x02];
const TX4: [u8; 4] = [10, 99, 0, 1];
const RX4: [u8; 4] = [10, 99, 0, 2];
const TX6: [u8; 16] = [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const RX6: [u8; 16] = [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const AH: u8 = 51;

/// A sender namespace and a receiver namespace joined by a veth pair.
struct Link {
    prefix: String,
    tx: String,
    rx: String,
}

impl Link {
    fn new() -> Result<Link, String> {
        let prefix = format!("pkp{}", std::process::id() % 100_000);
        let link = Link { tx: format!("{prefix}-t"), rx: format!("{prefix}-r"), prefix: prefix.clone() };
        link.cleanup();
        sh(&["ip", "netns", "add", &link.tx])?;
        sh(&["ip", "netns", "add", &link.rx])?;
        let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        sh(&["ip", "link", "set", &a, "netns", &link.tx])?;
        sh(&["ip", "link", "set", &b, "netns", &link.rx])?;
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let (tx, rx) = (link.tx.clone(), link.rx.clone());
        let t = |cmd: &[&str]| sh(&[&["ip", "netns", "exec", &tx][..], cmd].concat());
        let r = |cmd: &[&str]| sh(&[&["ip", "netns", "exec", &rx][..], cmd].concat());
        // The sender's kernel stays out of it: no addresses, no IPv6.
        t(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        t(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        t(&["ip", "link", "set", &a, "name", "eth0"])?;
        t(&["ip", "link", "set", "eth0", "address", &mac(TX_MAC), "up"])?;
        // The receiver answers every probe at once: no ICMP rate limits, static
        // neighbours (no ARP or ND before an answer).
        r(&["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])?;
        r(&["sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"])?;
        let _ = r(&["sysctl", "-qw", "net.ipv4.icmp_msgs_per_sec=100000"]);
        let _ = r(&["sysctl", "-qw", "net.ipv4.icmp_msgs_burst=100000"]);
        r(&["ip", "link", "set", &b, "name", "eth0"])?;
        r(&["ip", "link", "set", "eth0", "address", &mac(RX_MAC)])?;
        r(&["ip", "addr", "add", "10.99.0.2/24", "dev", "eth0"])?;
        r(&["ip", "addr", "add", "fd99::2/64", "dev", "eth0", "nodad"])?;
        r(&["ip", "link", "set", "eth0", "up"])?;
        r(&[
            "ip",
            "neigh",
            "replace",
            "10.99.0.1",
            "lladdr",
            &mac(TX_MAC),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        r(&["ip", "neigh", "replace", "fd99::1", "lladdr", &mac(TX_MAC), "dev", "eth0", "nud", "permanent"])?;
        Ok(link)
    }

    fn cleanup(&self) {
        let _ = sh(&["ip", "netns", "del", &self.tx]);
        let _ = sh(&["ip", "netns", "del", &self.rx]);
        // A pair left in this namespace by a start that failed half way.
        let _ = sh(&["ip", "link", "del", &format!("{}a", self.prefix)]);
    }

    /// Sends each probe's frames from the sender and returns what the
    /// receiver sent back for each, in order, waiting up to `wait_ms` for a
    /// first answer (answers come at once: the wait is for a loaded machine).
    fn ask(&self, probes: &[Probe], wait_ms: u32) -> Vec<Vec<Vec<u8>>> {
        let mut input = String::new();
        for p in probes {
            let frames: Vec<String> = p.frames.iter().map(|f| hex(f)).collect();
            writeln!(input, "{}", frames.join(",")).unwrap();
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), input).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kernel_oracle.py");
        let rx_mac = hex(&RX_MAC);
        let out = Command::new("ip")
            .args(["netns", "exec", &self.tx, "python3", script, "eth0", &rx_mac, &wait_ms.to_string()])
            .stdin(Stdio::from(std::fs::File::open(file.path()).unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success(), "oracle: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let answers: Vec<Vec<Vec<u8>>> = text
            .lines()
            .map(|l| if l == "-" { Vec::new() } else { l.split(',').map(unhex).collect() })
            .collect();
        assert_eq!(answers.len(), probes.len(), "one answer line per probe");
        answers
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

// ---- Building probes -------------------------------------------------------

/// One probe: the frames of one datagram, and what identifies the answers to it.
#[derive(Clone)]
struct Probe {
    what: String,
    frames: Vec<Vec<u8>>,
    v6: bool,
    /// The transport source port (unique per probe).
    sport: u16,
    /// IPv4 identification / IPv6 flow label (unique per probe).
    tag: u32,
    /// For a probe with an authentication header: the same probe without
    /// it, which the kernel reads through (see [`through_ah`]).
    twin: Option<Box<Probe>>,
}

/// Index offset of a probe's AH-free twin (its source port and tag).
const TWIN: usize = 10_000;

/// The probes, each followed by its AH-free twin if it has one.
fn with_twins(probes: Vec<Probe>) -> Vec<Probe> {
    probes
        .into_iter()
        .flat_map(|p| {
            let twin = p.twin.as_deref().cloned();
            std::iter::once(p).chain(twin)
        })
        .collect()
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The transport checksum over the pseudo-header.
fn l4_checksum(v6: bool, proto: u8, segment: &[u8]) -> u16 {
    let mut acc = 0;
    if v6 {
        acc = sum16(&TX6, acc);
        acc = sum16(&RX6, acc);
        acc += segment.len() as u32 + u32::from(proto);
    } else {
        acc = sum16(&TX4, acc);
        acc = sum16(&RX4, acc);
        acc += u32::from(proto) + segment.len() as u32;
    }
    let c = fold(sum16(segment, acc));
    if c == 0 && proto == UDP {
        0xffff
    } else {
        c
    }
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// A TCP SYN with `payload` bytes of data, with its checksum.
fn tcp_syn(v6: bool, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t.resize(20 + payload, 0xab);
    let c = l4_checksum(v6, TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A transport header (and a little payload) of `proto` with its checksum.
fn transport(v6: bool, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        TCP => tcp_syn(v6, sport, dport, 0),
        UDP => {
            let mut t = Vec::new();
            t.extend_from_slice(&sport.to_be_bytes());
            t.extend_from_slice(&dport.to_be_bytes());
            t.extend_from_slice(&16u16.to_be_bytes());
            t.extend_from_slice(&[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
            let c = l4_checksum(v6, UDP, &t);
            t[6..8].copy_from_slice(&c.to_be_bytes());
            t
        }
        SCTP => {
            // Common header and an INIT chunk.
            let mut t = Vec::new();
            t.extend_from_slice(&sport.to_be_bytes());
            t.extend_from_slice(&dport.to_be_bytes());
            t.extend_from_slice(&[0; 8]);
            t.extend_from_slice(&[1, 0, 0, 20]);
            t.extend_from_slice(&[0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
            let c = crc32c(&t);
            t[8..12].copy_from_slice(&c.to_le_bytes());
            t
        }
        // Anything else: a few bytes the kernel has no handler for.
        _ => vec![0; 8],
    }
}

fn ethernet(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + packet.len());
    f.extend_from_slice(&RX_MAC);
    f.extend_from_slice(&TX_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// An IPv4 packet: `options` (padded to 4 bytes with end-of-list), fragment
/// `offset` (bytes, a multiple of 8) and more-fragments flag, `payload`.
fn ipv4(id: u16, proto: u8, options: &[u8], offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 5 + opts.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&TX4);
    h.extend_from_slice(&RX4);
    h.extend_from_slice(&opts);
    let c = fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    ethernet(0x0800, &h)
}

fn ipv6(flow: u32, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = (0x6000_0000u32 | (flow & 0xf_ffff)).to_be_bytes().to_vec();
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&TX6);
    h.extend_from_slice(&RX6);
    h.extend_from_slice(payload);
    ethernet(0x86dd, &h)
}

/// IPv6 extension headers, and protocols the parser ends its walk at.
#[derive(Clone, Copy, Debug)]
enum Ext {
    HopByHop,
    Destination,
    /// Routing header of a type, with segments left.
    Routing(u8, u8),
    /// An atomic fragment (offset 0, no more fragments).
    AtomicFragment,
    Auth,
    Mobility,
    Hip,
    Shim6,
    Esp,
    NoNext,
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Destination => 60,
            Ext::Routing(..) => 43,
            Ext::AtomicFragment => 44,
            Ext::Auth => 51,
            Ext::Mobility => 135,
            Ext::Hip => 139,
            Ext::Shim6 => 140,
            Ext::Esp => 50,
            Ext::NoNext => 59,
        }
    }

    /// The header's bytes, linking to `next`.
    fn bytes(self, next: u8, id: u32) -> Vec<u8> {
        match self {
            // PadN of 4: an 8-byte header with nothing in it.
            Ext::HopByHop | Ext::Destination => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Ext::Routing(kind, left) => {
                let mut h = vec![next, 2, kind, left, 0, 0, 0, 0];
                if kind == 4 {
                    h[4] = 0; // last entry
                }
                h.extend_from_slice(&RX6);
                h
            }
            Ext::AtomicFragment => {
                let mut h = vec![next, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h
            }
            // 24 bytes: 12 of header, 12 of integrity check value.
            Ext::Auth => {
                let mut h = vec![next, 4, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1];
                h.extend_from_slice(&[0; 12]);
                h
            }
            // Generic 8-byte layout (next header, length, then the header's own bytes).
            Ext::Mobility => vec![59, 0, 0x20, 0, 0, 0, 0, 0],
            Ext::Hip | Ext::Shim6 => vec![next, 0, 0, 0, 0, 0, 0, 0],
            Ext::Esp => vec![0, 0, 0x10, 0x01, 0, 0, 0, 1],
            Ext::NoNext => Vec::new(),
        }
    }
}

/// An IPv6 probe: `exts` in order, then `proto` to `dport`.
fn v6_probe(i: usize, what: &str, exts: &[Ext], proto: u8, dport: u16) -> Probe {
    let (sport, tag) = (20_000 + i as u16, i as u32 + 1);
    let mut body = transport(true, proto, sport, dport);
    let mut next = proto;
    for e in exts.iter().rev() {
        let mut h = e.bytes(next, tag);
        if matches!(e, Ext::NoNext) {
            body.clear();
        }
        if matches!(e, Ext::Esp) {
            body = h;
        } else {
            h.extend_from_slice(&body);
            body = h;
        }
        next = e.number();
    }
    let twin = exts.iter().any(|e| matches!(e, Ext::Auth)).then(|| {
        let without: Vec<Ext> = exts.iter().copied().filter(|e| !matches!(e, Ext::Auth)).collect();
        Box::new(v6_probe(i + TWIN, "twin", &without, proto, dport))
    });
    Probe {
        what: format!("{what}: IPv6 {exts:?} proto {proto} port {dport}"),
        frames: vec![ipv6(tag, next, &body)],
        v6: true,
        sport,
        tag,
        twin,
    }
}

/// An IPv4 probe with an authentication header, then `proto` to `dport`.
fn v4_ah_probe(i: usize, proto: u8, dport: u16) -> Probe {
    let (sport, tag) = (20_000 + i as u16, i as u32 + 1);
    let mut body = Ext::Auth.bytes(proto, tag);
    body.extend_from_slice(&transport(false, proto, sport, dport));
    Probe {
        what: format!("IPv4 [Auth] proto {proto} port {dport}"),
        frames: vec![ipv4(tag as u16, AH, &[], 0, false, &body)],
        v6: false,
        sport,
        tag,
        twin: Some(Box::new(v4_probe(i + TWIN, "twin", &[], proto, dport))),
    }
}

/// An IPv4 probe with `options` then `proto` to `dport`.
fn v4_probe(i: usize, what: &str, options: &[u8], proto: u8, dport: u16) -> Probe {
    let (sport, tag) = (20_000 + i as u16, i as u32 + 1);
    let body = transport(false, proto, sport, dport);
    Probe {
        what: format!("{what}: IPv4 options {options:02x?} proto {proto} port {dport}"),
        frames: vec![ipv4(tag as u16, proto, options, 0, false, &body)],
        v6: false,
        sport,
        tag,
        twin: None,
    }
}

/// A TCP SYN with 12 bytes of data to `dport` in two fragments split at
/// `split` bytes (a multiple of 8: 24 puts the whole header in the first);
/// with `overlap`, a third fragment between them again at offset 0
/// carries the first `split` bytes with another destination port.
fn fragmented(i: usize, v6: bool, split: usize, overlap: bool, dport: u16) -> Probe {
    let (sport, tag) = (20_000 + i as u16, i as u32 + 1);
    let seg = tcp_syn(v6, sport, dport, 12);
    let other = tcp_syn(v6, sport, dport.wrapping_add(1), 12);
    let mut pieces = vec![(0, true, &seg[..split])];
    if overlap {
        pieces.push((0, true, &other[..split]));
    }
    pieces.push((split, false, &seg[split..]));
    let frames = pieces
        .into_iter()
        .map(|(off, more, data)| {
            if v6 {
                let mut h = vec![TCP, 0];
                h.extend_from_slice(&((off as u16) | u16::from(more)).to_be_bytes());
                h.extend_from_slice(&tag.to_be_bytes());
                h.extend_from_slice(data);
                ipv6(tag, 44, &h)
            } else {
                ipv4(tag as u16, TCP, &[], off, more, data)
            }
        })
        .collect();
    let what = format!(
        "fragments of a TCP SYN to {dport}, split at {split}{}, IPv{}",
        if overlap { ", a second first fragment to the next port" } else { "" },
        if v6 { 6 } else { 4 }
    );
    Probe { what, frames, v6, sport, tag, twin: None }
}

/// The cases the parser treats specially.
fn fixed_probes() -> Vec<Probe> {
    use Ext::*;
    let mut probes: Vec<Probe> = Vec::new();
    let mut add = |p: &dyn Fn(usize) -> Probe| {
        let i = probes.len();
        probes.push(p(i));
    };
    add(&|i| v4_probe(i, "plain", &[], TCP, 80));
    add(&|i| v4_probe(i, "plain", &[], UDP, 53));
    add(&|i| v6_probe(i, "plain", &[], TCP, 80));
    add(&|i| v6_probe(i, "plain", &[], UDP, 53));
    add(&|i| v4_probe(i, "SCTP", &[], SCTP, 80));
    add(&|i| v6_probe(i, "SCTP", &[], SCTP, 80));
    add(&|i| v4_probe(i, "GRE", &[], 47, 0));
    add(&|i| v4_probe(i, "unassigned protocol", &[], 253, 0));
    add(&|i| v6_probe(i, "unassigned protocol", &[], 253, 0));
    // IPv4 options: no-ops, end of list, record route, a consumed and an
    // unconsumed loose source route, router alert, timestamp, an unknown one.
    add(&|i| v4_probe(i, "NOPs", &[1, 1, 1, 1], TCP, 443));
    add(&|i| v4_probe(i, "end of list first", &[0, 1, 1, 1], TCP, 443));
    add(&|i| v4_probe(i, "record route", &[7, 7, 4, 0, 0, 0, 0], TCP, 22));
    add(&|i| v4_probe(i, "LSRR consumed", &[1, 131, 7, 8, 10, 99, 0, 2], TCP, 22));
    add(&|i| v4_probe(i, "LSRR hops left", &[1, 131, 7, 4, 10, 99, 0, 9], TCP, 22));
    add(&|i| v4_probe(i, "router alert", &[148, 4, 0, 0], UDP, 5353));
    add(&|i| v4_probe(i, "timestamp", &[68, 8, 5, 0, 0, 0, 0, 0], TCP, 8080));
    add(&|i| v4_probe(i, "unknown option", &[0x9e, 4, 0, 0], TCP, 8080));
    add(&|i| v4_probe(i, "option length past the header", &[1, 1, 7, 9], TCP, 8080));
    // IPv6 extension headers.
    add(&|i| v6_probe(i, "", &[HopByHop], TCP, 80));
    add(&|i| v6_probe(i, "", &[Destination], TCP, 81));
    add(&|i| v6_probe(i, "", &[HopByHop, Destination, AtomicFragment], UDP, 53));
    add(&|i| v6_probe(i, "HBH not first", &[Destination, HopByHop], TCP, 80));
    add(&|i| v6_probe(i, "", &[Routing(0, 0)], TCP, 80));
    add(&|i| v6_probe(i, "", &[Routing(0, 1)], TCP, 80));
    add(&|i| v6_probe(i, "", &[Routing(2, 0)], TCP, 80));
    add(&|i| v6_probe(i, "", &[Routing(3, 0)], TCP, 80));
    add(&|i| v6_probe(i, "", &[Routing(4, 0)], TCP, 80));
    add(&|i| v6_probe(i, "", &[Routing(4, 1)], TCP, 80));
    add(&|i| v6_probe(i, "", &[AtomicFragment], TCP, 80));
    add(&|i| v6_probe(i, "", &[Auth], TCP, 80));
    add(&|i| v6_probe(i, "", &[Destination, Auth, Destination], UDP, 53));
    add(&|i| v4_ah_probe(i, TCP, 80));
    add(&|i| v4_ah_probe(i, UDP, 53));
    add(&|i| v6_probe(i, "", &[Mobility], TCP, 80));
    add(&|i| v6_probe(i, "", &[Destination, Mobility], TCP, 80));
    add(&|i| v6_probe(i, "", &[Hip], TCP, 80));
    add(&|i| v6_probe(i, "", &[Shim6], TCP, 80));
    add(&|i| v6_probe(i, "", &[Esp], TCP, 80));
    add(&|i| v6_probe(i, "", &[NoNext], TCP, 80));
    add(&|i| v6_probe(i, "", &[Destination, NoNext], TCP, 80));
    // Fragmented datagrams: the whole TCP header in the first fragment, part
    // of it, the ports only, and a second first fragment with other ports.
    for v6 in [false, true] {
        for (split, overlap) in [(24, false), (24, true), (16, false), (8, false), (8, true)] {
            probes.push(fragmented(probes.len(), v6, split, overlap, 80));
        }
    }
    probes
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_probes(seed: u64, first: usize, count: usize) -> Vec<Probe> {
    use Ext::*;
    let mut rng = Rng(seed | 1);
    let ports = [22, 53, 80, 443, 8080, 9000];
    let protos = [TCP, TCP, TCP, UDP, UDP, SCTP, 253];
    let exts = [
        HopByHop,
        Destination,
        Destination,
        Routing(0, 0),
        Routing(0, 1),
        Routing(2, 0),
        Routing(4, 0),
        Routing(4, 1),
        AtomicFragment,
        Auth,
        Mobility,
        Hip,
        Shim6,
        Esp,
        NoNext,
    ];
    let options: [&[u8]; 9] = [
        &[1],
        &[0],
        &[7, 7, 4, 0, 0, 0, 0],
        &[131, 7, 8, 10, 99, 0, 2],
        &[131, 7, 4, 10, 99, 0, 9],
        &[137, 7, 8, 10, 99, 0, 2],
        &[148, 4, 0, 0],
        &[68, 8, 5, 0, 0, 0, 0, 0],
        &[0x9e, 4, 0, 0],
    ];
    (first..first + count)
        .map(|i| {
            let proto = protos[rng.below(protos.len())];
            let port = ports[rng.below(ports.len())];
            if rng.below(3) == 0 {
                let mut opts = Vec::new();
                for _ in 0..rng.below(4) {
                    let o = options[rng.below(options.len())];
                    if opts.len() + o.len() <= 40 {
                        opts.extend_from_slice(o);
                    }
                }
                v4_probe(i, "random", &opts, proto, port)
            } else {
                let chain: Vec<Ext> = (0..rng.below(5)).map(|_| exts[rng.below(exts.len())]).collect();
                v6_probe(i, "random", &chain, proto, port)
            }
        })
        .collect()
}

// ---- Reading the kernel's answers ------------------------------------------

/// What the kernel's answer says it parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// A TCP reset (or SYN-ACK) from this port.
    Tcp(u16),
    /// ICMP port unreachable: UDP, to this port when the quote shows it (IPv4).
    Udp(Option<u16>),
    /// ICMP protocol unreachable, ICMPv6 unrecognized next header, or an
    /// SCTP abort: the kernel's last protocol was this one.
    Proto(u8),
}

/// The kernel's reading of probe `p` from its answers, if one answers it.
fn seen(p: &Probe, answers: &[Vec<u8>]) -> Option<Seen> {
    answers.iter().find_map(|a| answer(p, a))
}

fn answer(p: &Probe, a: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*a.get(12)?, *a.get(13)?]);
    let ip = a.get(14..)?;
    let (proto, l4) = match (ethertype, p.v6) {
        (0x0800, false) => (ip[9], ip.get(usize::from(ip[0] & 0x0f) * 4..)?),
        (0x86dd, true) => (ip[6], ip.get(40..)?),
        _ => return None,
    };
    let port = |b: &[u8], at: usize| Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    match proto {
        TCP if port(l4, 2)? == p.sport => Some(Seen::Tcp(port(l4, 0)?)),
        SCTP if port(l4, 2)? == p.sport => Some(Seen::Proto(SCTP)),
        1 if !p.v6 => {
            // The quote: the probe's IPv4 header (its identification), then 8 bytes.
            let q = l4.get(8..)?;
            if u32::from(port(q, 4)?) != p.tag {
                return None;
            }
            match (l4[0], l4[1]) {
                (3, 3) => Some(Seen::Udp(port(q.get(usize::from(q[0] & 0x0f) * 4..)?, 2))),
                (3, 2) => Some(Seen::Proto(q[9])),
                _ => None,
            }
        }
        58 if p.v6 => {
            let q = l4.get(8..)?;
            let flow = u32::from_be_bytes([0, q[1] & 0x0f, q[2], q[3]]);
            if flow != p.tag {
                return None;
            }
            match (l4[0], l4[1]) {
                (1, 4) => Some(Seen::Udp(None)),
                (4, 1) => {
                    let pointer = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]) as usize;
                    Some(Seen::Proto(*q.get(pointer)?))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The parser's readings of a probe: of each frame it judges on its own
/// (an unfragmented packet, or a first fragment; later fragments follow a
/// first one's verdict). Empty when it refuses them all.
fn parsed(p: &Probe) -> Vec<(u8, u16)> {
    p.frames
        .iter()
        .filter_map(|f| match parse(f).ok()?.class {
            Class::Ip(pkt) if !matches!(pkt.fragment, Fragment::Later(_)) => {
                Some((pkt.flow.proto, pkt.flow.dst_port))
            }
            _ => None,
        })
        .collect()
}

/// IPsec's authentication header: the one difference allowed. A kernel
/// with no security association for the packet does not read past it (with
/// no AH module, as here, it answers "unrecognized next header"; with one,
/// it drops the packet), and one with an association delivers the
/// transport behind it once authenticated. The parser, like netfilter's
/// `ipv6_find_hdr` that iptables-based NetworkPolicy dataplanes match with,
/// judges by what follows it: the protocol and port the packet is delivered
/// to when it is delivered at all. Accepted for probes with an AH, whose
/// reading [`compare`] requires to equal that of their twin without it
/// (which the kernel checks like any other probe).
fn through_ah(p: &Probe) -> bool {
    p.twin.is_some()
}

/// Compares the parser with the kernel on `probes`; returns the lines of
/// disagreement, and counts (answered, refused by the parser but delivered).
fn compare(probes: &[Probe], answers: &[Vec<Vec<u8>>]) -> (Vec<String>, usize, Vec<String>) {
    let mut wrong = Vec::new();
    let mut answered = 0;
    let mut refused = Vec::new();
    // Every answer, whichever probe's wait it came in: each names its probe
    // (source port, identification or flow label), so a late one still counts.
    let pool: Vec<Vec<u8>> = answers.iter().flatten().cloned().collect();
    for (p, a) in probes.iter().zip(answers) {
        // Read through its AH, a probe reads as its twin does (refusing it is
        // fine: a hop-by-hop header behind an AH is out of place, before none).
        if let Some(twin) = &p.twin {
            if !parsed(p).is_empty() && parsed(p) != parsed(twin) {
                wrong.push(format!("{}: parser {:?}, without the AH {:?}", p.what, parsed(p), parsed(twin)));
            }
        }
        let Some(kernel) = seen(p, &pool) else {
            if std::env::var_os("PORTCULLIS_KERNEL_PARSE_VERBOSE").is_some() {
                println!("no answer to {}: {:?}", p.what, a.iter().map(|f| hex(f)).collect::<Vec<_>>());
            }
            continue;
        };
        answered += 1;
        let readings = parsed(p);
        if readings.is_empty() {
            refused.push(format!("{}: kernel {kernel:?}, parser refuses", p.what));
            continue;
        }
        let agrees = |&(proto, port): &(u8, u16)| match kernel {
            Seen::Tcp(k) => proto == TCP && port == k,
            Seen::Udp(k) => proto == UDP && k.is_none_or(|k| k == port),
            Seen::Proto(k) => proto == k,
        };
        let allowed_difference = kernel == Seen::Proto(AH) && through_ah(p);
        if !readings.iter().any(agrees) && !allowed_difference {
            wrong.push(format!("{}: kernel {kernel:?}, parser (proto, port) {readings:?}", p.what));
        }
    }
    (wrong, answered, refused)
}

#[test]
fn the_parser_reads_what_the_kernel_delivers() {
    if dataplane::testing::root::skip(&["python3", "sysctl"]) {
        return;
    }
    let link = Link::new().unwrap();
    let fixed = with_twins(fixed_probes());
    let answers = link.ask(&fixed, 300);
    let (wrong, answered, refused) = compare(&fixed, &answers);
    assert!(wrong.is_empty(), "the parser reads otherwise than the kernel:\n{}", wrong.join("\n"));
    println!(
        "fixed probes: {answered} of {} answered by the kernel; parser refused {}:",
        fixed.len(),
        refused.len()
    );
    for r in &refused {
        println!("  {r}");
    }
    // The oracle covers what the test is for: this kernel answers these as
    // follows (a kernel with the Mobility module would answer that one otherwise).
    let expect = |what: &str, want: Seen| {
        let i = fixed.iter().position(|p| p.what.contains(what)).unwrap_or_else(|| panic!("no probe {what}"));
        let pool: Vec<Vec<u8>> = answers.iter().flatten().cloned().collect();
        assert_eq!(seen(&fixed[i], &pool), Some(want), "{}: {:?}", fixed[i].what, answers[i]);
        assert!(!parsed(&fixed[i]).is_empty(), "the parser refuses {}", fixed[i].what);
    };
    expect("plain: IPv4 options [] proto 6 port 80", Seen::Tcp(80));
    expect("plain: IPv4 options [] proto 17 port 53", Seen::Udp(Some(53)));
    expect("plain: IPv6 [] proto 6 port 80", Seen::Tcp(80));
    expect("plain: IPv6 [] proto 17 port 53", Seen::Udp(None));
    expect("IPv6 [Mobility] proto 6", Seen::Proto(135));
    expect("IPv6 [Hip] proto 6", Seen::Proto(139));
    expect("IPv6 [Shim6] proto 6", Seen::Proto(140));
    expect("IPv6 [HopByHop, Destination, AtomicFragment] proto 17", Seen::Udp(None));
    expect("split at 24, IPv4", Seen::Tcp(80));
    expect("split at 24, IPv6", Seen::Tcp(80));
    let seed = std::env::var("PORTCULLIS_KERNEL_PARSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let random = with_twins(random_probes(seed, fixed.len(), 600));
    let (wrong, answered, refused) = compare(&random, &link.ask(&random, 60));
    assert!(
        wrong.is_empty(),
        "seed {seed}: the parser reads otherwise than the kernel:\n{}",
        wrong.join("\n")
    );
    println!(
        "random probes (seed {seed}): {answered} of {} answered; parser refused {}",
        random.len(),
        refused.len()
    );
    assert!(answered >= random.len() / 2, "too few answers ({answered}): is the oracle working?");
}
