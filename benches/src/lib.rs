//! Shared generators for the benchmarks: deterministic, realistic clusters
//! and the flows to look up in them, plus a counting allocator for measuring
//! the real heap size of a compiled table.
//!
//! [`generate`] builds a cluster shaped like a multi-tenant production one:
//!
//! * about 100 namespaces (`pods / 20`, at most 100) labelled `team` (20 teams)
//!   and `env` (prod / staging / dev), plus `kube-system` with two DNS pods;
//! * per namespace up to 50 apps; every pod has `app`, `tier` (web / api / db,
//!   by app), `version` (v1, a fifth of the apps also run a v2 canary) and
//!   `pod-template-hash` (one per app and version, as Deployments do), named
//!   container ports by tier, a unique IPv4 address and, for a third of the
//!   namespaces, an IPv6 address (dual stack);
//! * policies spread round-robin over the namespaces: first a default-deny
//!   ingress per namespace, then DNS egress (with default-deny egress in prod),
//!   then a weighted mix of app-to-app rules on a port or named port,
//!   `namespaceSelector` by team or env, `namespaceSelector` AND `podSelector`,
//!   `ipBlock` with `except`, port ranges (`endPort`), egress to external CIDRs
//!   and selectors with `matchExpressions` (`In`, `NotIn`, `Exists`).
//!
//! Everything comes from [`SplitMix64`] with the given seed, so a seed always
//! gives the same cluster and the same flows.
//!
//! Also here: [`load`] (frames, flows and nftables rulesets for `pcl-load`,
//! the end-to-end generator of `e2e/side-by-side.sh`) and [`manifests`] (a
//! generated cluster written as API objects, for the daemon's measurements).

pub mod load;
pub mod manifests;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use policy_compiler::cidr::{Cidr, IpBlock};
use policy_compiler::model::{
    NamedPort, NamespaceInfo, NamespaceMatch, Peer, PodInfo, Policy, PortMatch, Protocol, Rule,
    NAMESPACE_NAME_LABEL,
};
use policy_compiler::selector::{Labels, Selector};
use policy_compiler::validate::{FieldErrors, FieldPath};
use policy_compiler::Cluster;

/// A tiny seeded PRNG (SplitMix64): deterministic on every platform, no dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for this seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `percent / 100`.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[self.below(items.len())]
    }
}

/// One flow to look up: `src` opens a connection to `dst` on `protocol`/`port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port.
    pub port: u16,
}

const TCP: u8 = 6;
const UDP: u8 = 17;

const APP_NAMES: [&str; 50] = [
    "frontend",
    "checkout",
    "cart",
    "catalog",
    "search",
    "payments",
    "orders",
    "users",
    "auth",
    "billing",
    "inventory",
    "shipping",
    "reviews",
    "recommend",
    "ads",
    "email",
    "notify",
    "gateway",
    "session",
    "profile",
    "media",
    "upload",
    "thumbs",
    "reports",
    "analytics",
    "ledger",
    "pricing",
    "promo",
    "loyalty",
    "fraud",
    "geo",
    "tax",
    "currency",
    "quotes",
    "support",
    "chat",
    "feed",
    "social",
    "wishlist",
    "returns",
    "vendor",
    "partner",
    "audit",
    "config",
    "flags",
    "scheduler",
    "worker",
    "indexer",
    "exporter",
    "importer",
];
const TIERS: [&str; 3] = ["web", "api", "db"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TEAMS: usize = 20;
/// Ports nothing declares and no policy names: flows to them are denied when the destination is isolated.
const UNUSED_PORTS: [u16; 4] = [22, 3306, 11211, 27017];
/// External destinations pods talk to.
const EXTERNAL_V4: [[u8; 4]; 5] =
    [[8, 8, 8, 8], [203, 0, 113, 10], [198, 51, 100, 200], [100, 64, 3, 7], [192, 0, 2, 33]];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Selector operators the generator writes in `matchExpressions`.
#[derive(Clone, Copy, Debug)]
enum Op {
    In,
    NotIn,
    Exists,
}

/// A selector from `matchLabels` and `matchExpressions`, through the real parser.
fn selector(match_labels: &[(&str, &str)], exprs: &[(&str, Op, &[&str])]) -> Selector {
    let sel = metav1::LabelSelector {
        match_labels: (!match_labels.is_empty())
            .then(|| match_labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        match_expressions: (!exprs.is_empty()).then(|| {
            exprs
                .iter()
                .map(|(k, op, vals)| metav1::LabelSelectorRequirement {
                    key: k.to_string(),
                    operator: format!("{op:?}"),
                    values: (!matches!(op, Op::Exists)).then(|| vals.iter().map(|v| v.to_string()).collect()),
                })
                .collect()
        }),
    };
    let (mut errs, mut legacy) = (FieldErrors::default(), FieldErrors::default());
    let s = Selector::parse(&sel, &FieldPath::root("generated"), &mut errs, &mut legacy);
    assert!(errs.is_empty() && legacy.is_empty(), "generator wrote an invalid selector: {errs}{legacy}");
    s
}

fn tcp(port: u16) -> PortMatch {
    PortMatch::Range { protocol: Protocol::Tcp, lo: port, hi: port }
}

fn named(name: &str) -> PortMatch {
    PortMatch::Named { protocol: Protocol::Tcp, name: name.to_string() }
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).expect("generator CIDR")
}

/// The shape of one namespace, kept while generating policies.
struct Ns {
    name: String,
    team: usize,
    env: &'static str,
    /// App names deployed here.
    apps: Vec<&'static str>,
}

fn tier_of(app_index: usize) -> &'static str {
    TIERS[app_index % 3]
}

fn ports_of(tier: &str) -> Vec<NamedPort> {
    let np = |name: &str, port| NamedPort { name: name.to_string(), protocol: Protocol::Tcp, port };
    match tier {
        "web" => vec![np("http", 8080), np("metrics", 9090)],
        "api" => vec![np("http", 8080), np("grpc", 9000), np("metrics", 9090)],
        _ => vec![np("postgres", 5432), np("metrics", 9187)],
    }
}

/// A deterministic, realistic cluster of about `pods` pods and exactly
/// `policies` policies (see the module documentation for its shape).
pub fn generate(pods: usize, policies: usize, seed: u64) -> Cluster {
    let mut rng = SplitMix64::new(seed);
    let n_ns = (pods / 20).clamp(1, 100);
    let per_ns = pods.saturating_sub(2).div_ceil(n_ns).max(1);
    let n_apps = (per_ns / 2).clamp(1, APP_NAMES.len());

    let mut namespaces = vec![NamespaceInfo {
        name: "kube-system".into(),
        labels: labels(&[(NAMESPACE_NAME_LABEL, "kube-system"), ("team", "platform")]),
    }];
    let mut shapes = Vec::with_capacity(n_ns);
    for i in 0..n_ns {
        let team = rng.below(TEAMS);
        let env = match rng.below(10) {
            0..=4 => ENVS[0],
            5..=7 => ENVS[1],
            _ => ENVS[2],
        };
        let name = format!("{}-team{team}-{i}", env);
        // Each namespace deploys its own subset of the app names.
        let mut apps: Vec<&'static str> = APP_NAMES.to_vec();
        for k in (1..apps.len()).rev() {
            apps.swap(k, rng.below(k + 1));
        }
        apps.truncate(n_apps);
        let team_label = format!("team{team}");
        namespaces.push(NamespaceInfo {
            name: name.clone(),
            labels: labels(&[(NAMESPACE_NAME_LABEL, &name), ("team", &team_label), ("env", env)]),
        });
        shapes.push(Ns { name, team, env, apps });
    }

    let mut pod_list = Vec::with_capacity(pods + 2);
    for i in 0..2u32 {
        pod_list.push(PodInfo {
            namespace: "kube-system".into(),
            name: format!("coredns-5d78c9869d-{i}"),
            labels: labels(&[("k8s-app", "kube-dns"), ("pod-template-hash", "5d78c9869d")]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10 + i as u8))],
            named_ports: vec![
                NamedPort { name: "dns".into(), protocol: Protocol::Udp, port: 53 },
                NamedPort { name: "dns-tcp".into(), protocol: Protocol::Tcp, port: 53 },
            ],
            container_ports: vec![(Protocol::Udp, 53), (Protocol::Tcp, 53)],
        });
    }
    let mut seq: u32 = 0;
    for (ni, ns) in shapes.iter().enumerate() {
        let dual_stack = ni % 3 == 0;
        for k in 0..per_ns {
            if pod_list.len() >= pods.max(3) {
                break;
            }
            // Every app has a pod before any app gets a second one.
            let ai = if k < ns.apps.len() { k } else { rng.below(ns.apps.len()) };
            let app = ns.apps[ai];
            let app_global = APP_NAMES.iter().position(|a| *a == app).unwrap_or(0);
            let tier = tier_of(app_global);
            let version = if app_global % 5 == 0 && rng.chance(30) { "v2" } else { "v1" };
            let hash = format!("{:08x}", fnv(&[&ns.name, app, version]) as u32);
            seq += 1;
            let mut ips = vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + seq))];
            if dual_stack {
                ips.push(IpAddr::V6(Ipv6Addr::from(
                    0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + seq as u128,
                )));
            }
            let named_ports = ports_of(tier);
            let container_ports = named_ports.iter().map(|p| (p.protocol, p.port)).collect();
            pod_list.push(PodInfo {
                namespace: ns.name.clone(),
                name: format!("{app}-{hash}-{}", rng.next_u64() % 100_000),
                labels: labels(&[
                    ("app", app),
                    ("tier", tier),
                    ("version", version),
                    ("pod-template-hash", &hash),
                ]),
                ips,
                named_ports,
                container_ports,
            });
        }
    }

    let mut pols = Vec::with_capacity(policies);
    for i in 0..policies {
        let ns = &shapes[i % n_ns];
        let round = i / n_ns;
        pols.push(policy(&mut rng, ns, &shapes, round, i));
    }
    Cluster::from_parts(namespaces, pod_list, pols)
}

fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn own(ns: &Ns, pods: Selector) -> Peer {
    Peer::Pods { namespaces: NamespaceMatch::Own(ns.name.clone()), pods }
}

fn in_namespaces(ns_sel: Selector, pods: Selector) -> Peer {
    Peer::Pods { namespaces: NamespaceMatch::Selector(ns_sel), pods }
}

fn ingress(ns: &Ns, name: String, pod_selector: Selector, rules: Vec<Rule>) -> Policy {
    Policy {
        namespace: ns.name.clone(),
        name,
        pod_selector,
        isolates: [true, false],
        rules: [rules, Vec::new()],
        valid: true,
    }
}

fn egress(ns: &Ns, name: String, pod_selector: Selector, rules: Vec<Rule>) -> Policy {
    Policy {
        namespace: ns.name.clone(),
        name,
        pod_selector,
        isolates: [false, true],
        rules: [Vec::new(), rules],
        valid: true,
    }
}

/// Policy number `i`, the `round`-th in namespace `ns`.
fn policy(rng: &mut SplitMix64, ns: &Ns, all: &[Ns], round: usize, i: usize) -> Policy {
    let app = |rng: &mut SplitMix64| *rng.pick(&ns.apps);
    let app_sel = |a: &str| selector(&[("app", a)], &[]);
    match round {
        0 => ingress(ns, "default-deny-ingress".into(), Selector::everything(), Vec::new()),
        1 => {
            // DNS for everyone; prod namespaces also deny all other egress.
            let dns = Rule {
                peers: vec![in_namespaces(
                    selector(&[(NAMESPACE_NAME_LABEL, "kube-system")], &[]),
                    selector(&[("k8s-app", "kube-dns")], &[]),
                )],
                ports: vec![
                    PortMatch::Range { protocol: Protocol::Udp, lo: 53, hi: 53 },
                    PortMatch::Range { protocol: Protocol::Tcp, lo: 53, hi: 53 },
                ],
            };
            let mut rules = vec![dns];
            if ns.env != "prod" {
                // Outside prod, egress is open apart from the explicit DNS rule.
                rules.push(Rule::default());
            }
            egress(ns, "allow-dns-egress".into(), Selector::everything(), rules)
        }
        _ => {
            let target = app(rng);
            let name = |kind: &str| format!("{target}-{kind}-{i}");
            match rng.below(100) {
                // App to app in the namespace, on a numbered or named port.
                0..=29 => {
                    let from = app(rng);
                    let port = if rng.chance(50) { tcp(8080) } else { named("http") };
                    let ports = if rng.chance(30) { vec![port, named("metrics")] } else { vec![port] };
                    ingress(
                        ns,
                        name("from-app"),
                        app_sel(target),
                        vec![Rule { peers: vec![own(ns, app_sel(from))], ports }],
                    )
                }
                // From every namespace of a team.
                30..=39 => {
                    let team = format!("team{}", if rng.chance(50) { ns.team } else { rng.below(TEAMS) });
                    ingress(
                        ns,
                        name("from-team"),
                        app_sel(target),
                        vec![Rule {
                            peers: vec![in_namespaces(
                                selector(&[("team", &team)], &[]),
                                Selector::everything(),
                            )],
                            ports: vec![tcp(8080)],
                        }],
                    )
                }
                // namespaceSelector AND podSelector, on a named port.
                40..=54 => {
                    let other = rng.pick(all);
                    let from = *rng.pick(&other.apps);
                    let team = format!("team{}", other.team);
                    ingress(
                        ns,
                        name("from-team-app"),
                        app_sel(target),
                        vec![Rule {
                            peers: vec![in_namespaces(selector(&[("team", &team)], &[]), app_sel(from))],
                            ports: vec![named("grpc"), tcp(8080)],
                        }],
                    )
                }
                // Web tier open to prod and staging front ends (matchExpressions In / Exists).
                55..=62 => ingress(
                    ns,
                    name("from-env-web"),
                    selector(&[("tier", "web")], &[("app", Op::In, &[target, app(rng)])]),
                    vec![Rule {
                        peers: vec![in_namespaces(
                            selector(&[], &[("env", Op::In, &["prod", "staging"])]),
                            selector(&[], &[("tier", Op::In, &["web"]), ("app", Op::Exists, &[])]),
                        )],
                        ports: vec![tcp(8080), tcp(8443)],
                    }],
                ),
                // Everything but the database tier, from anything not in dev (NotIn).
                63..=69 => ingress(
                    ns,
                    name("not-db"),
                    selector(&[("app", target)], &[("tier", Op::NotIn, &["db"])]),
                    vec![Rule {
                        peers: vec![in_namespaces(
                            selector(&[], &[("env", Op::NotIn, &["dev"])]),
                            selector(&[], &[("version", Op::In, &["v1", "v2"])]),
                        )],
                        ports: vec![named("metrics")],
                    }],
                ),
                // Public ingress: the internet minus private space (v4 and v6), on 443/8443.
                70..=77 => {
                    let mut peers = vec![Peer::Block(IpBlock {
                        cidr: cidr("0.0.0.0/0"),
                        except: vec![cidr("10.0.0.0/8"), cidr("172.16.0.0/12"), cidr("192.168.0.0/16")],
                    })];
                    if rng.chance(50) {
                        peers.push(Peer::Block(IpBlock {
                            cidr: cidr("::/0"),
                            except: vec![cidr("fd00::/8")],
                        }));
                    }
                    ingress(
                        ns,
                        name("public"),
                        app_sel(target),
                        vec![Rule {
                            peers,
                            ports: vec![
                                PortMatch::Range { protocol: Protocol::Tcp, lo: 8443, hi: 8443 },
                                tcp(8080),
                            ],
                        }],
                    )
                }
                // Egress to a partner network (a random /24 with a hole), HTTPS only.
                78..=85 => {
                    let a = 100 + rng.below(100) as u8;
                    let b = rng.below(256) as u8;
                    let c = rng.below(256) as u8;
                    let hole = rng.below(4) * 64;
                    egress(
                        ns,
                        name("to-partner"),
                        app_sel(target),
                        vec![Rule {
                            peers: vec![Peer::Block(IpBlock {
                                cidr: cidr(&format!("{a}.{b}.{c}.0/24")),
                                except: vec![cidr(&format!("{a}.{b}.{c}.{hole}/26"))],
                            })],
                            ports: vec![tcp(443)],
                        }],
                    )
                }
                // NodePort-like range (endPort) from the whole env.
                86..=91 => {
                    let lo = 30000 + rng.below(2000) as u16;
                    ingress(
                        ns,
                        name("range"),
                        app_sel(target),
                        vec![Rule {
                            peers: vec![in_namespaces(
                                selector(&[("env", ns.env)], &[]),
                                Selector::everything(),
                            )],
                            ports: vec![PortMatch::Range { protocol: Protocol::Tcp, lo, hi: lo + 767 }],
                        }],
                    )
                }
                // Egress from one app to the databases of its namespace and to the shared API tier.
                _ => egress(
                    ns,
                    name("egress-db"),
                    app_sel(target),
                    vec![
                        Rule {
                            peers: vec![own(ns, selector(&[("tier", "db")], &[]))],
                            ports: vec![named("postgres")],
                        },
                        Rule {
                            peers: vec![in_namespaces(
                                selector(&[("team", &format!("team{}", ns.team))], &[]),
                                selector(&[], &[("tier", Op::In, &["api"])]),
                            )],
                            ports: vec![tcp(8080), named("grpc")],
                        },
                    ],
                ),
            }
        }
    }
}

fn v4_of(p: &PodInfo) -> IpAddr {
    *p.ips.iter().find(|ip| ip.is_ipv4()).expect("every generated pod has IPv4")
}

fn v6_of(p: &PodInfo) -> Option<IpAddr> {
    p.ips.iter().find(|ip| ip.is_ipv6()).copied()
}

/// `count` flows over `cluster` (a [`generate`]d one), deterministic for a seed.
/// The mix: pod→pod in one namespace on a declared port (25%) or an unused
/// port (15%), pod→pod across namespaces (15%), pod→DNS over UDP (10%),
/// pod→external (10%), external→pod (10%), IPv6 pod→pod (15%).
pub fn sample_flows(cluster: &Cluster, count: usize, seed: u64) -> Vec<Flow> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_f10a);
    let pods = &cluster.pods;
    assert!(!pods.is_empty(), "sample_flows needs pods");
    let dual: Vec<&PodInfo> = pods.iter().filter(|p| v6_of(p).is_some()).collect();
    let dns: Vec<&PodInfo> = pods.iter().filter(|p| p.labels.contains_key("k8s-app")).collect();
    // Pods grouped by namespace (cluster pods are sorted by namespace).
    let mut groups: Vec<&[PodInfo]> = Vec::new();
    let mut start = 0;
    for i in 1..=pods.len() {
        if i == pods.len() || pods[i].namespace != pods[start].namespace {
            groups.push(&pods[start..i]);
            start = i;
        }
    }
    let declared = |rng: &mut SplitMix64, p: &PodInfo| -> (u8, u16) {
        match p.container_ports.len() {
            0 => (TCP, 8080),
            n => {
                let (proto, port) = p.container_ports[rng.below(n)];
                (proto.number(), port)
            }
        }
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let f = match rng.below(100) {
            0..=39 => {
                let g = *rng.pick(&groups);
                let (s, d) = (rng.pick(g), rng.pick(g));
                let (protocol, port) =
                    if rng.below(40) < 25 { declared(&mut rng, d) } else { (TCP, *rng.pick(&UNUSED_PORTS)) };
                Flow { src: v4_of(s), dst: v4_of(d), protocol, port }
            }
            40..=54 => {
                let (s, d) = (rng.pick(pods), rng.pick(pods));
                let (protocol, port) = declared(&mut rng, d);
                Flow { src: v4_of(s), dst: v4_of(d), protocol, port }
            }
            55..=64 if !dns.is_empty() => {
                let (s, d) = (rng.pick(pods), rng.pick(&dns));
                Flow { src: v4_of(s), dst: v4_of(d), protocol: UDP, port: 53 }
            }
            65..=74 => {
                let e = rng.pick(&EXTERNAL_V4);
                let dst = IpAddr::V4(Ipv4Addr::new(e[0], e[1], e[2], e[3]));
                Flow { src: v4_of(rng.pick(pods)), dst, protocol: TCP, port: 443 }
            }
            75..=84 => {
                let src = IpAddr::V4(Ipv4Addr::new(198, 18, rng.below(256) as u8, rng.below(256) as u8));
                let port = *rng.pick(&[8080, 8443, 22]);
                Flow { src, dst: v4_of(rng.pick(pods)), protocol: TCP, port }
            }
            _ if !dual.is_empty() => {
                let (s, d) = (rng.pick(&dual), rng.pick(&dual));
                let (protocol, port) = declared(&mut rng, d);
                Flow { src: v6_of(s).unwrap_or(v4_of(s)), dst: v6_of(d).unwrap_or(v4_of(d)), protocol, port }
            }
            _ => continue,
        };
        out.push(f);
    }
    out
}

/// A global allocator that counts live and peak heap bytes; install it with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc::new();` in a
/// bench or example binary and read [`CountingAlloc::live`] around the work.
#[derive(Debug, Default)]
pub struct CountingAlloc {
    live: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

impl CountingAlloc {
    /// A counter at zero.
    pub const fn new() -> Self {
        CountingAlloc { live: AtomicUsize::new(0), peak: AtomicUsize::new(0), total: AtomicUsize::new(0) }
    }

    /// Bytes currently allocated.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Highest [`Self::live`] since the last [`Self::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bytes ever allocated (a growing count).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Restarts peak tracking from the current live size.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }

    fn added(&self, n: usize) {
        let now = self.live.fetch_add(n, Ordering::Relaxed) + n;
        self.total.fetch_add(n, Ordering::Relaxed);
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn removed(&self, n: usize) {
        self.live.fetch_sub(n, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's layout and
// pointer unchanged; the counters are side bookkeeping that never touch memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        self.removed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` come from this allocator; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            self.removed(layout.size());
            self.added(new_size);
        }
        p
    }
}

/// Heap bytes a value built by `f` holds once `f` returns, and the peak heap
/// growth while it ran (both relative to the live size before the call).
pub fn measure_heap<T>(alloc: &CountingAlloc, f: impl FnOnce() -> T) -> (T, usize, usize) {
    let before = alloc.live();
    alloc.reset_peak();
    let v = f();
    let held = alloc.live().saturating_sub(before);
    let peak = alloc.peak().saturating_sub(before);
    (v, held, peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::reference;
    use policy_compiler::DecisionTable;

    #[test]
    fn generator_is_deterministic() {
        let a = generate(600, 120, 7);
        let b = generate(600, 120, 7);
        assert_eq!(a, b);
        assert_eq!(sample_flows(&a, 500, 3), sample_flows(&b, 500, 3));
        let c = generate(600, 120, 8);
        assert_ne!(a, c, "another seed gives another cluster");
    }

    #[test]
    fn sizes_are_as_asked() {
        let c = generate(10_000, 1_000, 1);
        assert_eq!(c.pods.len(), 10_000);
        assert_eq!(c.policies.len(), 1_000);
        assert_eq!(c.namespaces.len(), 101);
        let v6 = c.pods.iter().filter(|p| p.ips.len() == 2).count();
        assert!(v6 > 2_000 && v6 < 5_000, "about a third dual-stack: {v6}");
        let mut ips: Vec<IpAddr> = c.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n, "pod IPs are unique");
    }

    #[test]
    fn policies_use_every_feature() {
        let c = generate(2_000, 1_000, 1);
        let rules = || c.policies.iter().flat_map(|p| p.rules.iter().flatten());
        let peers = || rules().flat_map(|r| r.peers.iter());
        assert!(c.policies.iter().any(|p| p.pod_selector.is_everything() && p.rules[0].is_empty()));
        assert!(c.policies.iter().any(|p| p.isolates[1]));
        assert!(peers().any(|p| matches!(p, Peer::Block(b) if !b.except.is_empty())));
        assert!(peers().any(|p| matches!(p, Peer::Pods { namespaces: NamespaceMatch::Selector(_), pods }
            if !pods.is_everything())));
        assert!(rules().flat_map(|r| &r.ports).any(|m| matches!(m, PortMatch::Named { .. })));
        assert!(rules()
            .flat_map(|r| &r.ports)
            .any(|m| matches!(m, PortMatch::Range { lo, hi, .. } if hi > lo)));
        let text: String = peers()
            .filter_map(|p| match p {
                Peer::Pods { namespaces: NamespaceMatch::Selector(n), pods } => Some(format!("{n} {pods} ")),
                _ => None,
            })
            .collect();
        assert!(text.contains(" in (") && text.contains("notin") && text.contains(",app "), "{text}");
    }

    /// Flows mix allowed and denied verdicts, over IPv4, IPv6 and external
    /// addresses, and the table agrees with the reference evaluator on them.
    #[test]
    fn flows_are_both_allowed_and_denied() {
        let c = generate(1_000, 300, 42);
        let t = DecisionTable::compile(&c);
        let flows = sample_flows(&c, 2_000, 42);
        let mut allowed = 0;
        for f in &flows {
            let v = t.verdict(f.src, f.dst, f.protocol, f.port);
            let r = reference::evaluate(&c, f.src, f.dst, f.protocol, f.port);
            assert_eq!(v.allowed(), r.allowed(), "{f:?}");
            allowed += v.allowed() as usize;
        }
        let denied = flows.len() - allowed;
        assert!(
            allowed > flows.len() / 10 && denied > flows.len() / 10,
            "allowed {allowed}, denied {denied}"
        );
        assert!(flows.iter().any(|f| f.src.is_ipv6()));
        assert!(flows.iter().any(|f| t.pod_at(f.dst).is_none()));
        assert!(flows.iter().any(|f| t.pod_at(f.src).is_none()));
        // Large clusters too: the 10,000-policy one still allows and denies.
        let c = generate(10_000, 10_000, 1);
        let t = DecisionTable::compile(&c);
        let flows = sample_flows(&c, 2_000, 1);
        let allowed = flows.iter().filter(|f| t.verdict(f.src, f.dst, f.protocol, f.port).allowed()).count();
        assert!(allowed > 100 && allowed < 1_900, "allowed {allowed} of 2000");
    }
}
