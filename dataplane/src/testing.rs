//! Frame and policy builders for tests, benchmarks and traffic generators.
//!
//! Nothing here is on the packet path: these functions allocate freely.
//! Frames are built with etherparse's `PacketBuilder` (valid checksums);
//! policy clusters with `policy_compiler::Cluster::from_parts`.

use std::net::{IpAddr, Ipv4Addr};

use crate::parse::Addr;

use etherparse::PacketBuilder;
use policy_compiler::cidr::IpBlock;
use policy_compiler::model::{NamespaceInfo, NamespaceMatch, Peer, PodInfo, Policy, PortMatch, Rule};
use policy_compiler::selector::Selector;
use policy_compiler::{Cluster, DecisionTable, Protocol};

use crate::parse::{Mac, TcpFlags};

/// A station: MAC, IPv4 and IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// MAC address.
    pub mac: Mac,
    /// IPv4 address.
    pub ip4: [u8; 4],
    /// IPv6 address.
    pub ip6: [u8; 16],
}

impl Host {
    /// Host number `n` (1-based is conventional): MAC 02:00:00:nn:nn:nn,
    /// 10.x.y.z and fd00::x:y:z derived from `n`.
    pub fn new(n: u32) -> Host {
        let b = n.to_be_bytes();
        let mut ip6 = [0u8; 16];
        ip6[0] = 0xfd;
        ip6[13..16].copy_from_slice(&b[1..4]);
        Host { mac: [0x02, 0, 0, b[1], b[2], b[3]], ip4: [10, b[1], b[2], b[3]], ip6 }
    }

    /// The IPv4 address.
    pub fn v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.ip4))
    }

    /// The IPv6 address.
    pub fn v6(&self) -> IpAddr {
        IpAddr::V6(self.ip6.into())
    }

    /// The IPv4 address as the dataplane stores it.
    pub fn addr4(&self) -> Addr {
        Addr::v4(self.ip4)
    }
}

fn l3(from: &Host, to: &Host, v6: bool) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(from.mac, to.mac);
    if v6 {
        eth.ipv6(from.ip6, to.ip6, 64)
    } else {
        eth.ipv4(from.ip4, to.ip4, 64)
    }
}

/// A TCP segment with `flags` ([`TcpFlags`] bits) and `payload`.
pub fn tcp(from: &Host, sport: u16, to: &Host, dport: u16, flags: u8, v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = l3(from, to, v6).tcp(sport, dport, 1, 65535);
    if flags & TcpFlags::SYN != 0 {
        b = b.syn();
    }
    if flags & TcpFlags::ACK != 0 {
        b = b.ack(1);
    }
    if flags & TcpFlags::FIN != 0 {
        b = b.fin();
    }
    if flags & TcpFlags::RST != 0 {
        b = b.rst();
    }
    if flags & TcpFlags::PSH != 0 {
        b = b.psh();
    }
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("writing to a Vec");
    v
}

/// A UDP datagram.
pub fn udp(from: &Host, sport: u16, to: &Host, dport: u16, v6: bool, payload: &[u8]) -> Vec<u8> {
    let b = l3(from, to, v6).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("writing to a Vec");
    v
}

/// An ICMP (v6: ICMPv6) echo request or reply.
pub fn echo(from: &Host, to: &Host, id: u16, request: bool, v6: bool) -> Vec<u8> {
    let b = l3(from, to, v6);
    let mut v = Vec::new();
    let payload = [0u8; 8];
    match (v6, request) {
        (false, true) => b.icmpv4_echo_request(id, 1).write(&mut v, &payload),
        (false, false) => b.icmpv4_echo_reply(id, 1).write(&mut v, &payload),
        (true, true) => b.icmpv6_echo_request(id, 1).write(&mut v, &payload),
        (true, false) => b.icmpv6_echo_reply(id, 1).write(&mut v, &payload),
    }
    .expect("writing to a Vec");
    v
}

/// An ARP request (RFC 826) from `from` asking for `to`'s IPv4 address, broadcast.
pub fn arp_request(from: &Host, to: &Host) -> Vec<u8> {
    let mut v = Vec::with_capacity(42);
    v.extend_from_slice(&[0xff; 6]);
    v.extend_from_slice(&from.mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    v.extend_from_slice(&from.mac);
    v.extend_from_slice(&from.ip4);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&to.ip4);
    v
}

/// An IPv6 neighbour discovery message of ICMPv6 type `kind` (133..=137) from
/// `from`'s MAC, IPv6 source `src`, to all nodes, with `target` (read for
/// 135 and 136). The checksum is not computed: the dataplane does not check it.
pub fn nd(from: &Host, kind: u8, src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let all_nodes = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    nd_to(from, [0x33, 0x33, 0, 0, 0, 1], all_nodes, kind, src, target)
}

/// [`nd`] addressed to `dst` (IPv6) at `dst_mac`.
pub fn nd_to(
    from: &Host,
    dst_mac: [u8; 6],
    dst: [u8; 16],
    kind: u8,
    src: [u8; 16],
    target: [u8; 16],
) -> Vec<u8> {
    let mut v = dst_mac.to_vec();
    v.extend_from_slice(&from.mac);
    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 24, 58, 255]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&target);
    v
}

/// `frame` (IPv6, as the builders here make) with `header` (an extension
/// header, its first byte the next header to link to; it is filled in)
/// inserted after the IPv6 header.
pub fn with_ipv6_header(frame: &[u8], kind: u8, mut header: Vec<u8>) -> Vec<u8> {
    let mut v = frame.to_vec();
    header[0] = v[14 + 6];
    v[14 + 6] = kind;
    let len = u16::from_be_bytes([v[14 + 4], v[14 + 5]]) + header.len() as u16;
    v[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    v.splice(14 + 40..14 + 40, header);
    v
}

/// `frame` (IPv4, as the builders here make) with `options` (a multiple of 4
/// bytes) after its 20-byte header. The header checksum is left as it was.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let mut v = frame.to_vec();
    v[14] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([v[16], v[17]]) + options.len() as u16;
    v[16..18].copy_from_slice(&total.to_be_bytes());
    v.splice(14 + 20..14 + 20, options.iter().copied());
    v
}

/// An ICMP destination unreachable (port unreachable; ICMPv6: type 1 code 4)
/// from `from` to `to`, quoting `quoted`'s IP header and the 8 bytes after
/// it (`quoted`: an Ethernet frame, as the builders here make). Checksums
/// are not computed.
pub fn unreachable(from: &Host, to: &Host, quoted: &[u8], v6: bool) -> Vec<u8> {
    let ip = &quoted[14..];
    let header = if v6 { 40 } else { usize::from(ip[0] & 0x0f) * 4 };
    let inner = &ip[..(header + 8).min(ip.len())];
    let (kind, code) = if v6 { (1, 4) } else { (3, 3) };
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(inner);
    let mut v = Vec::with_capacity(14 + 40 + icmp.len());
    v.extend_from_slice(&to.mac);
    v.extend_from_slice(&from.mac);
    if v6 {
        v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        v.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        v.extend_from_slice(&[58, 64]);
        v.extend_from_slice(&from.ip6);
        v.extend_from_slice(&to.ip6);
    } else {
        v.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        v.extend_from_slice(&(20 + icmp.len() as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        v.extend_from_slice(&from.ip4);
        v.extend_from_slice(&to.ip4);
    }
    v.extend_from_slice(&icmp);
    v
}

/// An ARP reply (RFC 826) from `from`, saying its IPv4 address, unicast to `to`.
pub fn arp_reply(from: &Host, to: &Host) -> Vec<u8> {
    let mut v = Vec::with_capacity(42);
    v.extend_from_slice(&to.mac);
    v.extend_from_slice(&from.mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    v.extend_from_slice(&from.mac);
    v.extend_from_slice(&from.ip4);
    v.extend_from_slice(&to.mac);
    v.extend_from_slice(&to.ip4);
    v
}

/// The same frame with an 802.1Q tag for VLAN `vid` after the MAC addresses.
pub fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    v.extend_from_slice(&[0x81, 0x00]);
    v.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    v.extend_from_slice(&frame[12..]);
    v
}

/// Marks an untagged IPv4 frame as a fragment: identification `id`, offset
/// in 8-byte units, more-fragments flag. (The IPv4 header checksum is not
/// recomputed; the dataplane does not check it.)
pub fn make_ipv4_fragment(frame: &mut [u8], id: u16, offset_units: u16, more: bool) {
    let ip = 14;
    frame[ip + 4..ip + 6].copy_from_slice(&id.to_be_bytes());
    let v = (offset_units & 0x1fff) | if more { 0x2000 } else { 0 };
    frame[ip + 6..ip + 8].copy_from_slice(&v.to_be_bytes());
}

fn ns(name: &str) -> NamespaceInfo {
    NamespaceInfo { name: name.to_string(), labels: Default::default() }
}

fn pod(namespace: &str, name: &str, app: &str, host: &Host) -> PodInfo {
    PodInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![host.v4(), host.v6()],
        named_ports: vec![],
        container_ports: vec![],
    }
}

/// A small cluster in namespace `default`: pods `client` (Host 1), `server`
/// (Host 2) and `other` (Host 3, not isolated). `server` accepts TCP 80,
/// UDP 53 and SCTP 9000 from `client` only; `client` accepts no connection
/// at all (ingress isolated, no rules), so anything reaching it must be a
/// reply of a tracked connection.
pub fn client_server_table() -> DecisionTable {
    client_server(true)
}

/// The same cluster where `server` accepts nothing (its policy has no rules).
pub fn client_server_table_denying() -> DecisionTable {
    client_server(false)
}

fn client_server(allow: bool) -> DecisionTable {
    let rules = if allow {
        vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceMatch::Own("default".into()),
                pods: Selector::from_labels([("app", "client")]),
            }],
            ports: vec![
                PortMatch::Range { protocol: Protocol::Tcp, lo: 80, hi: 80 },
                PortMatch::Range { protocol: Protocol::Udp, lo: 53, hi: 53 },
                PortMatch::Range { protocol: Protocol::Sctp, lo: 9000, hi: 9000 },
            ],
        }]
    } else {
        vec![]
    };
    let policy = Policy {
        namespace: "default".into(),
        name: "server-ingress".into(),
        pod_selector: Selector::from_labels([("app", "server")]),
        isolates: [true, false],
        rules: [rules, vec![]],
        valid: true,
    };
    let client_ingress = Policy {
        namespace: "default".into(),
        name: "client-ingress".into(),
        pod_selector: Selector::from_labels([("app", "client")]),
        isolates: [true, false],
        rules: [vec![], vec![]],
        valid: true,
    };
    let cluster = Cluster::from_parts(
        vec![ns("default")],
        vec![
            pod("default", "client", "client", &Host::new(1)),
            pod("default", "server", "server", &Host::new(2)),
            pod("default", "other", "other", &Host::new(3)),
        ],
        vec![policy, client_ingress],
    );
    DecisionTable::compile(&cluster)
}

/// A synthetic cluster with `policies` NetworkPolicies (at least 1), for
/// scale benchmarks. Namespaces hold 100 apps each, one pod per app
/// (`Host::new(k + 1)` for app number `k`); policy `k` isolates app `k` for
/// ingress and allows TCP 80 from app `k + 1` of its namespace, TCP 8080
/// from every pod of the next namespace and TCP 9090 from 192.168.0.0/16,
/// so lookups exercise identity, namespace and CIDR keys.
///
/// Returns the table and, for each policy, an allowed (client, server) pair
/// on TCP 80.
pub fn scale_table(policies: usize) -> (DecisionTable, Vec<(Host, Host)>) {
    const APPS: usize = 100;
    let n = policies.max(1);
    let namespaces = n.div_ceil(APPS);
    let ns_name = |i: usize| format!("ns{i}");
    let app_name = |k: usize| format!("app{}", k % APPS);
    let host = |k: usize| Host::new(k as u32 + 1);
    // One pod per app slot; with fewer policies than 100 the namespace still
    // gets one more pod so that app k + 1 exists.
    let pods_total = n + 1;
    let pods: Vec<PodInfo> = (0..pods_total)
        .map(|k| {
            let nsi = (k / APPS).min(namespaces - 1);
            pod(&ns_name(nsi), &format!("pod{k}"), &app_name(k), &host(k))
        })
        .collect();
    let block = IpBlock {
        cidr: policy_compiler::cidr::Cidr::parse("192.168.0.0/16").expect("valid CIDR"),
        except: vec![],
    };
    let tcp = |p: u16| PortMatch::Range { protocol: Protocol::Tcp, lo: p, hi: p };
    let pols: Vec<Policy> = (0..n)
        .map(|k| {
            let nsi = k / APPS;
            Policy {
                namespace: ns_name(nsi),
                name: format!("pol{k}"),
                pod_selector: Selector::from_labels([("app", app_name(k).as_str())]),
                isolates: [true, false],
                rules: [
                    vec![
                        Rule {
                            peers: vec![Peer::Pods {
                                namespaces: NamespaceMatch::Own(ns_name(nsi)),
                                pods: Selector::from_labels([("app", app_name(k + 1).as_str())]),
                            }],
                            ports: vec![tcp(80)],
                        },
                        Rule {
                            peers: vec![Peer::Pods {
                                namespaces: NamespaceMatch::Selector(Selector::from_labels([(
                                    "kubernetes.io/metadata.name",
                                    ns_name((nsi + 1) % namespaces).as_str(),
                                )])),
                                pods: Selector::everything(),
                            }],
                            ports: vec![tcp(8080)],
                        },
                        Rule { peers: vec![Peer::Block(block.clone())], ports: vec![tcp(9090)] },
                    ],
                    vec![],
                ],
                valid: true,
            }
        })
        .collect();
    let nss = (0..namespaces).map(|i| ns(&ns_name(i))).collect();
    let cluster = Cluster::from_parts(nss, pods, pols);
    let table = DecisionTable::compile(&cluster);
    let pairs = (0..n)
        .map(|k| {
            // Client: the pod with app k + 1 in the same namespace.
            let nsi = k / APPS;
            let client_slot = nsi * APPS + (k + 1) % APPS;
            let client = if client_slot < pods_total { client_slot } else { k + 1 };
            (host(client), host(k))
        })
        .collect();
    (table, pairs)
}

/// The one rule for tests that need root (network namespaces, veth, AF_XDP).
///
/// A root-only test starts with
///
/// ```no_run
/// if dataplane::testing::root::skip(&["ethtool"]) {
///     return;
/// }
/// ```
///
/// When the machine cannot run it ([`missing`](root::missing) says why: not root, a tool
/// missing, `ip netns add` refused, as in an unprivileged container whose UID
/// is 0), the test prints `SKIP: <why>` and passes, unless the environment
/// variable [`REQUIRE`](root::REQUIRE) is `1`: then it fails. CI sets it (`.ci/run`), so a
/// runner that silently lost its privileges cannot turn the end-to-end tests
/// into passing no-ops. `scripts/demo.sh` follows the same rule.
pub mod root {
    use std::path::Path;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Runs a command (`args[0]` with the rest as arguments): its standard
    /// output, or an error naming the command with its standard error.
    pub fn sh(args: &[&str]) -> Result<String, String> {
        let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Sends one hand-made IPv6 neighbour solicitation (hop limit 255) out of
    /// `ifname` in network namespace `netns`, with the interface's MAC, IPv6
    /// source `src`, to `dst` (also its target) at MAC `02:00:00:00:00:99`,
    /// which no test station has. Needs `python3` (a raw `AF_PACKET` socket).
    pub fn send_solicitation(netns: &str, ifname: &str, src: &str, dst: &str) -> Result<(), String> {
        const SEND: &str = r#"
import socket, sys
ifname = sys.argv[1]
mac = bytes.fromhex(open('/sys/class/net/%s/address' % ifname).read().strip().replace(':', ''))
src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in sys.argv[2:4])
icmp = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + dst
ip = bytes([0x60, 0, 0, 0]) + len(icmp).to_bytes(2, 'big') + bytes([58, 255]) + src + dst
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
s.send(bytes.fromhex('020000000099') + mac + b'\x86\xdd' + ip + icmp)
"#;
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", SEND, ifname, src, dst])
            .output()
            .map_err(|e| format!("ip netns exec {netns} python3: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The environment variable that turns a skipped root-only test into a failure.
    pub const REQUIRE: &str = "PORTCULLIS_REQUIRE_ROOT_TESTS";

    /// True when [`REQUIRE`] is set to `1`.
    pub fn required() -> bool {
        std::env::var(REQUIRE).is_ok_and(|v| v == "1")
    }

    /// Why a root-only test cannot run here, or `None` if it can: the effective
    /// UID is 0, `ip` and every tool in `tools` are on `PATH`, and a network
    /// namespace can really be created (and is removed again).
    pub fn missing(tools: &[&str]) -> Option<String> {
        match effective_uid() {
            Some(0) => {}
            Some(_) => return Some("not root: network namespaces, veth and AF_XDP need root".into()),
            None => return Some("cannot read the effective UID from /proc/self/status".into()),
        }
        for tool in std::iter::once(&"ip").chain(tools) {
            if !on_path(tool) {
                return Some(format!("{tool} is missing (run scripts/install-deps.sh)"));
            }
        }
        // Unique per call: the tests of one binary run on several threads at once.
        static PROBES: AtomicU32 = AtomicU32::new(0);
        let name = format!("pcl-probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(o) if o.status.success() => {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                None
            }
            Ok(o) => {
                Some(format!("root, but `ip netns add` fails: {}", String::from_utf8_lossy(&o.stderr).trim()))
            }
            Err(e) => Some(format!("root, but `ip netns add` cannot run: {e}")),
        }
    }

    /// What a root-only test does when it cannot run for `why`: `true` (skip,
    /// after printing `SKIP: <why>`), or a panic when [`REQUIRE`] is `1`.
    pub fn skip_because(why: &str) -> bool {
        skip_test("root-only test", why)
    }

    /// [`skip_because`] for a test of kind `what`.
    fn skip_test(what: &str, why: &str) -> bool {
        if required() {
            panic!("{REQUIRE}=1 and this {what} cannot run: {why}");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests,
        // and a skip must show in a plain `cargo test` run.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIP: {why}\n"));
        true
    }

    /// For a test that needs `tool` (one scripts/install-deps.sh installs)
    /// but not root: `true` (skip, after printing `SKIP: <why>`) when `tool`
    /// is not on `PATH`, or a panic when [`REQUIRE`] is `1`.
    pub fn skip_without(tool: &str) -> bool {
        !on_path(tool) && skip_test("test", &format!("{tool} is missing (run scripts/install-deps.sh)"))
    }

    /// [`missing`] then [`skip_because`]: `true` when the caller must return.
    pub fn skip(tools: &[&str]) -> bool {
        match missing(tools) {
            None => false,
            Some(why) => skip_because(&why),
        }
    }

    /// The effective UID (`Uid:` line of `/proc/self/status`: real, effective, ...).
    fn effective_uid() -> Option<u32> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    }

    fn on_path(tool: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| Path::new(&d).join(tool).is_file()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Policy as _;
    use crate::parse::{parse, Class, Flow};

    #[test]
    fn scale_table_pairs_are_allowed_and_others_denied() {
        for n in [1, 10, 250] {
            let (t, pairs) = scale_table(n);
            assert_eq!(t.stats().policies, n);
            for (c, s) in &pairs {
                let allowed =
                    Flow { src: c.addr4(), dst: s.addr4(), proto: 6, src_port: 40000, dst_port: 80 };
                assert!(t.allows(&allowed), "n={n} {c:?} -> {s:?}");
                assert!(!t.allows(&Flow { dst_port: 81, ..allowed }));
            }
        }
    }

    #[test]
    fn builders_parse() {
        let (a, b) = (Host::new(1), Host::new(2));
        for v6 in [false, true] {
            let f = tcp(&a, 1, &b, 2, TcpFlags::SYN, v6, &[]);
            assert!(matches!(parse(&f).unwrap().class, Class::Ip(_)));
            let f = echo(&a, &b, 9, true, v6);
            assert!(matches!(parse(&f).unwrap().class, Class::Ip(_)));
        }
        assert_eq!(parse(&arp_request(&a, &b)).unwrap().class, Class::Arp);
        assert_eq!(crate::parse::arp_sender(&arp_request(&a, &b)), Some(a.ip4));
    }
}
