//! `portcullis run` configuration: a YAML file (`--config`, which must exist;
//! without it [`DEFAULT_CONFIG_PATH`] if present), every field optional with a
//! documented default, unknown fields rejected. Command-line flags override the
//! file. The operators' reference is docs/configuration.md (a test keeps its
//! fields and defaults equal to these).
//!
//! ```yaml
//! mode: switch            # switch | wire
//! ports:                  # interfaces that become dataplane ports
//!   - interface: eth1
//!     pod: default/web      # switch mode: the pod behind this port (its host-side veth)
//!   - interface: eth2
//!     queues: 2
//!     node: false           # true: the port facing the node's own stack (see node_addresses)
//! node_addresses: []     # the node's own addresses, e.g. [192.168.0.10] (also --node-address)
//! link_prefixes: null    # IPv6 prefixes on the pods' link, e.g. ['fd00:10:244:1::/64'];
//!                         # null: each pod's own /64 in switch mode, no check in mode wire
//! workers: [2, 3]         # cores to pin workers to (default [0]); worker i serves queue i of
//!                         # every port bound on more than i queues; or `auto`: one worker per
//!                         # queue, on the last cores of the daemon's cpuset
//! xdp:
//!   attach: native        # native | generic
//!   zero_copy: false      # true on NICs that support it; veth only does copy mode
//!   frame_count: 8192
//! conntrack:
//!   capacity: 262144
//!   timeouts:             # idle timeouts per connection state, seconds (1 to 2592000)
//!     tcp_handshake: 30
//!     tcp_established: 21600
//!     tcp_closing: 120
//!     tcp_closed: 10
//!     udp: 120            # UDP/SCTP once assured
//!     udp_unreplied: 30
//!     icmp: 30
//!   pod_share: 50         # percent of each worker's table one pod's connections may hold
//! fail_open: false
//! status_address: "[::]:9877"
//! status_token_file: null  # a file holding a token: /status and /metrics then need it
//! debounce_ms: 50        # minimum time between two compilations
//! denied_flow_log_per_second: 0
//! policy_metrics: true   # per-policy allow counters in /metrics
//! enforce: true          # false: forward without policy (benchmarks only)
//! ```

use std::net::SocketAddr;

use dataplane::observe::MAX_DENY_LOG_PER_SECOND;
use dataplane::pipeline::MAX_CAPACITY;
use serde::{Deserialize, Serialize};

/// The configuration file `portcullis run` reads when `--config` is not given, if it
/// exists (where `deploy/daemonset.yaml` mounts the ConfigMap).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/portcullis/config.yaml";

/// Default address of the status endpoint (`/healthz`, `/readyz`, `/status`, `/metrics`).
/// All interfaces of both families, because on a host-network pod the kubelet probes the
/// node's address, which is IPv6 on IPv6 and IPv6-first clusters.
pub const DEFAULT_STATUS_ADDRESS: &str = "[::]:9877";

/// Longest conntrack idle timeout accepted, in seconds (30 days): a larger value is
/// more likely milliseconds typed as seconds than a wish.
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// Forwarding mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An L2 learning switch across all ports (MAC learning with ageing, flooding of
    /// broadcast and unknown destinations). For a node whose pod interfaces are ports.
    #[default]
    Switch,
    /// A two-port bump in the wire: everything from one port goes out of the other.
    Wire,
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// Driver (native) XDP: fastest where the driver supports it.
    #[default]
    Native,
    /// Generic (SKB) XDP: works on every interface, slower.
    Generic,
}

/// One interface the dataplane binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Interface name.
    pub interface: String,
    /// Queues to bind, `0..queues`, one AF_XDP socket each; worker i binds queue i, so at
    /// most as many queues as workers. Default 1. It must equal the interface's RX queue
    /// count (the `rx-N` entries of `/sys/class/net/<interface>/queues`: RX plus combined
    /// channels): the daemon refuses to start when the interface has more, because frames
    /// on an unbound queue would escape the dataplane (reduce them with `ethtool -L`), or
    /// fewer. With more than one, the NIC needs symmetric RSS so that both
    /// directions of a flow reach the same worker, and every port should have the same
    /// count: a worker drops (and counts as `no_socket`) a frame for a port on which it
    /// has no queue.
    #[serde(default = "one")]
    pub queues: u32,
    /// Switch mode: the pod behind this port, `namespace/name` (the port is the host end
    /// of the pod's veth). IP frames from the port must carry one of that pod's addresses
    /// as source, and the port receives only IP addressed to that pod, whatever MAC
    /// addresses claim: without it a pod could send as another pod, or receive another
    /// pod's traffic by claiming its MAC. Until the pod has an address in the table, the
    /// port passes no IP. Default none: an uplink or other port with no pod behind it
    /// (no such checks). See docs/deployment.md.
    #[serde(default)]
    pub pod: Option<String>,
    /// This port faces the node's own network stack (the kubelet's probes arrive here).
    /// When any port says so, connections from `node_addresses` get the node's exemption
    /// only on those ports; when none does, on every port without a `pod`, where anything
    /// able to send with the node's source address gets it too, except in mode wire,
    /// where the node's addresses are then ignored (logged at start: a warning when the
    /// config file gives them, information when only `--node-address` does). Default `false`.
    #[serde(default)]
    pub node: bool,
}

fn one() -> u32 {
    1
}

/// AF_XDP settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Attach mode. Default `native`.
    pub attach: Attach,
    /// Ask for zero-copy. Default `false`: veth refuses it (EOPNOTSUPP); real NICs with
    /// driver support should set it, saving a copy per packet.
    pub zero_copy: bool,
    /// UMEM frames per worker (2048 bytes each, so frames up to an MTU of 1500), at least
    /// 64; a worker gets a few more when `frame_count / (2 x ports)` is under 64, the
    /// smallest ring. Default 8192 (16 MiB), which needs CAP_IPC_LOCK or a memlock limit that large. More frames
    /// absorb longer bursts: 32768 lost nothing below capacity where 8192 lost ~0.1% at
    /// start-up (docs/performance.md).
    pub frame_count: u32,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig { attach: Attach::Native, zero_copy: false, frame_count: 8192 }
    }
}

/// Connection tracking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Tracked connections per worker, 1 to 16,777,216 (2^24, the dataplane's limit).
    /// Default 262,144 (about 25 MiB per worker). When
    /// full, a new connection takes the slot of a half-open or closed TCP connection, of a
    /// UDP or SCTP flow that is not assured (unanswered, or a single query and answer, as
    /// DNS) or of an ICMP echo; otherwise it is refused and counted. Established TCP connections and assured UDP
    /// flows (the initiator sent again after an answer) are never evicted.
    pub capacity: u32,
    /// Idle timeouts per connection state, in seconds, 1 to 2,592,000 (30 days); the
    /// defaults are `dataplane::conntrack::Timeouts`'s: TCP handshake 30, established
    /// 21,600 (6 h; Linux's 5 days is too long for a fixed table: an idle established
    /// connection keeps its slot, never evicted, until it times out), closing 120,
    /// closed 10; UDP/SCTP 30 until assured, 120 after; ICMP echo 30.
    pub timeouts: dataplane::conntrack::Timeouts,
    /// The most of a worker's table that connections opened from one pod's port may
    /// hold, in percent, 1 to 100. Default 50: a pod that opens connections faster than
    /// they time out (assured UDP flows, silent TCP connections) fills half the table,
    /// and the other pods' connections still get slots. Connections opened from a port
    /// with no pod (an uplink, the node's) count against no share. 100: no share.
    pub pod_share: u8,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 262_144,
            timeouts: dataplane::conntrack::Timeouts::default(),
            pod_share: 50,
        }
    }
}

/// An IPv6 prefix, written `address/length` (host bits must be zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Prefix {
    /// The prefix's address.
    pub addr: std::net::Ipv6Addr,
    /// Its length, 0 to 128.
    pub len: u8,
}

impl TryFrom<String> for Ipv6Prefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').ok_or(format!("{s:?} is not an IPv6 prefix (address/length)"))?;
        let addr: std::net::Ipv6Addr =
            addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
        let len: u8 = Some(len)
            .filter(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && !(l.len() > 1 && l.starts_with('0'))
            })
            .and_then(|l| l.parse().ok())
            .filter(|l| (1..=128).contains(l))
            .ok_or(format!(
                "{s:?}: the length must be a number from 1 to 128 (/0 would reach every address)"
            ))?;
        if addr.to_ipv4_mapped().is_some() {
            return Err(format!("{s:?}: an IPv4-mapped prefix (no pod's IPv6 neighbour is in it)"));
        }
        let host = if len == 128 { 0 } else { u128::MAX >> len };
        if u128::from(addr) & host != 0 {
            return Err(format!("{s:?}: host bits set past /{len}"));
        }
        Ok(Ipv6Prefix { addr, len })
    }
}

impl From<Ipv6Prefix> for String {
    fn from(p: Ipv6Prefix) -> String {
        format!("{}/{}", p.addr, p.len)
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Forwarding mode. Default `switch`.
    pub mode: Mode,
    /// Interfaces. Default none (the daemon then only compiles and serves status: useful to
    /// check a policy set without touching traffic).
    pub ports: Vec<PortConfig>,
    /// Cores to pin workers to. Default `[0]`. A worker whose core cannot be used (the
    /// machine has no such CPU, or it is outside the daemon's cpuset) runs unpinned: a
    /// warning is logged at start and `/status` shows `pinned: false` for it. `auto`:
    /// as many workers as the most queues of a port, on the last cores of the cpuset the
    /// daemon starts with (see [`Workers::Auto`]).
    pub workers: Workers,
    /// AF_XDP settings.
    pub xdp: XdpConfig,
    /// Connection tracking.
    pub conntrack: ConntrackConfig,
    /// Before the first complete sync of the policy source, pass pod traffic (`true`) or
    /// drop it (`false`, default). Fail-open keeps pods reachable while the API server is
    /// unreachable at start-up, at the risk of letting through traffic policy would deny.
    pub fail_open: bool,
    /// Status endpoint address. Default `[::]:9877`: every address of both families
    /// ([`crate::status::bind`]).
    pub status_address: SocketAddr,
    /// Minimum time between two compilations, in milliseconds. Default 50. A change after a
    /// quiet period is compiled at once; during a burst (a rollout) changes are batched and
    /// compiled at most once per period. Larger values save CPU on busy clusters and delay
    /// enforcement of changes inside a burst by up to this much.
    pub debounce_ms: u64,
    /// Log at most this many packets denied by policy per second, per worker (0, the
    /// default, logs none; at most 1,000,000). See docs/operations.md, "Denied flows".
    pub denied_flow_log_per_second: u32,
    /// Serve `portcullis_policy_allowed_connections_total` (one series per policy and
    /// direction that allowed something: up to twice the policies, on every node).
    /// Default `true`; `false` leaves the family out of `/metrics` on clusters where that
    /// many series per node costs more than it tells.
    pub policy_metrics: bool,
    /// Enforce NetworkPolicy. Default `true`. `false` forwards every IP packet with no
    /// connection tracking and no policy lookup (the table is still compiled and served):
    /// it exists to measure the forwarding path's own ceiling, and is logged as a warning.
    /// Never set it on a node that relies on Portcullis for isolation.
    pub enforce: bool,
    /// This node's own addresses (`--node-address` adds to them). A new connection from
    /// one of them into a pod is allowed even when the pod is isolated for ingress, as
    /// upstream specifies (kubelet probes). Default none.
    pub node_addresses: Vec<std::net::IpAddr>,
    /// The IPv6 prefixes of the pods' link (this node's pod prefix; a gateway's global
    /// address as a /128). Neighbour discovery passes without policy, so it may be
    /// addressed only to the link: link-scope multicast, link-local addresses, this
    /// node's pods (switch mode), `node_addresses`, and these prefixes, which replace the
    /// default (so include the gateway's global address if it is not in them).
    /// Switch mode checks the ND of each port with a `pod`. Default none (`null`): each
    /// pod's own /64, which suits a bridge-style pod prefix of /64 and wider; where pods
    /// of other nodes share that /64 (per-node prefixes of /80, /96, /120...), give this
    /// node's prefix, so that neighbour discovery cannot be routed to them. `[]`: no
    /// global prefix at all (a gateway on a link-local address, as many routed CNIs use).
    /// Mode wire checks every port's ND, in both directions, only when these are given:
    /// give every prefix resolved on the segment (its hosts', its routers', prefixes a
    /// router answers for by proxy); `[]` is refused there, as it would drop every
    /// unicast neighbour discovery to a global address. Read at start: a new prefix
    /// needs a restart. See docs/deployment.md.
    pub link_prefixes: Option<Vec<Ipv6Prefix>>,
    /// A file holding a bearer token (a mounted Secret's key). When set, `/status` and
    /// `/metrics` answer only requests carrying `Authorization: Bearer <token>`;
    /// `/healthz` and `/readyz` stay open for the kubelet's probes. Read at start (it
    /// must exist and not be empty) and at every request, so a rotated Secret applies
    /// without a restart. Default none: no token needed.
    pub status_token_file: Option<String>,
}

impl Config {
    /// The workers' cores: the list given, or for `auto` those
    /// [`Workers::pick`] chooses among `allowed` (the daemon's cpuset).
    pub fn worker_cores(&self, allowed: &[usize]) -> Vec<usize> {
        match &self.workers {
            Workers::Cores(c) => c.clone(),
            Workers::Auto => {
                let count = self.ports.iter().map(|p| p.queues as usize).max().unwrap_or(1).max(1);
                Workers::pick(count, allowed)
            }
        }
    }

    /// Replaces `auto` by the cores it picks among `allowed`; call it once,
    /// with the cpuset the daemon started with, before narrowing that.
    pub fn resolve_workers(&mut self, allowed: &[usize]) {
        self.workers = Workers::Cores(self.worker_cores(allowed));
    }

    /// On a wire, both ports face other machines: without a port marked
    /// `node: true` (facing this node's own stack), anything on either side
    /// could send with the node's addresses and get the exemption, and the
    /// node's own probes do not cross the wire anyway. So there the node's
    /// addresses are dropped; returns those dropped (to be logged).
    pub fn drop_unanchored_node_addresses(&mut self) -> Vec<std::net::IpAddr> {
        if self.mode == Mode::Wire && !self.ports.iter().any(|p| p.node) {
            std::mem::take(&mut self.node_addresses)
        } else {
            Vec::new()
        }
    }
}

/// The most workers `workers: auto` starts (one per queue index): more
/// queues than this on one port is a typo, not a NIC.
pub const MAX_AUTO_WORKERS: usize = 256;

/// Where the dataplane workers run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One worker per core listed; worker `i` is pinned to the `i`-th.
    Cores(Vec<usize>),
    /// One worker per queue index (the most `queues` of any port, at least
    /// one), pinned to the last cores of the cpuset the daemon starts with,
    /// so that the first ones are left to the control plane; with too few
    /// cores, workers share them. For a DaemonSet whose nodes' kubelets hand
    /// out different exclusive cores, which a fixed list cannot name.
    Auto,
}

impl Workers {
    /// The cores `Auto` picks for `count` workers among `allowed` (sorted):
    /// the last `count`, or all of them, repeated, when there are fewer.
    pub fn pick(count: usize, allowed: &[usize]) -> Vec<usize> {
        if allowed.is_empty() {
            return vec![0; count];
        }
        if allowed.len() >= count {
            allowed[allowed.len() - count..].to_vec()
        } else {
            allowed.iter().copied().cycle().take(count).collect()
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Cores(c) => c.serialize(s),
            Workers::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of core numbers, or `auto`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Workers, A::Error> {
                let mut cores = Vec::new();
                while let Some(c) = seq.next_element::<usize>()? {
                    cores.push(c);
                }
                Ok(Workers::Cores(cores))
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Switch,
            ports: Vec::new(),
            workers: Workers::Cores(vec![0]),
            xdp: XdpConfig::default(),
            conntrack: ConntrackConfig::default(),
            fail_open: false,
            status_address: DEFAULT_STATUS_ADDRESS.parse().expect("valid default"),
            debounce_ms: 50,
            denied_flow_log_per_second: 0,
            policy_metrics: true,
            enforce: true,
            node_addresses: Vec::new(),
            link_prefixes: None,
            status_token_file: None,
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// File.
        path: String,
        /// Cause (in the message, not a separate source: `{:#}` would print it twice).
        cause: std::io::Error,
    },
    /// The YAML is invalid or has unknown or mistyped fields.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// Parser message, with the field and line.
        message: String,
    },
    /// Values that do not fit together.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Parses a configuration text (`path` for messages).
    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: format!(
                "field {}: {}",
                e.path(),
                crate::manifest::clean_message(&e.path().to_string(), &e.inner().to_string())
            ),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// The configuration `portcullis run` uses: the file given with `--config`, which
    /// must exist (a typo in the path must not silently start a node with no ports);
    /// without one, [`DEFAULT_CONFIG_PATH`] if it exists, else the defaults. Returns the
    /// file read, if any.
    pub fn load_for_run(explicit: Option<&str>) -> Result<(Config, Option<String>), ConfigError> {
        Config::load_for_run_from(explicit, DEFAULT_CONFIG_PATH)
    }

    fn load_for_run_from(
        explicit: Option<&str>,
        default_path: &str,
    ) -> Result<(Config, Option<String>), ConfigError> {
        match explicit {
            Some(path) => Ok((Config::load(path)?, Some(path.to_string()))),
            None if std::path::Path::new(default_path).exists() => {
                Ok((Config::load(default_path)?, Some(default_path.to_string())))
            }
            None => Ok((Config::default(), None)),
        }
    }

    /// Reads and parses a file.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|cause| ConfigError::Read { path: path.to_string(), cause })?;
        Config::parse(path, &text)
    }

    /// Checks values that serde cannot.
    pub fn check(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid { path: path.to_string(), message });
        if self.mode == Mode::Wire && !self.ports.is_empty() && self.ports.len() != 2 {
            return bad(format!("mode wire needs exactly 2 ports, {} given", self.ports.len()));
        }
        if self.workers == Workers::Cores(Vec::new()) {
            return bad("workers: at least one core (or auto)".into());
        }
        for p in &self.ports {
            let most = match &self.workers {
                Workers::Cores(c) => c.len(),
                Workers::Auto => MAX_AUTO_WORKERS,
            };
            if p.queues == 0 || p.queues as usize > most {
                return bad(format!(
                    "ports: {} has {} queues; must be 1..={most} (one worker serves each queue index)",
                    p.interface, p.queues,
                ));
            }
        }
        if self.mode == Mode::Wire && self.link_prefixes.as_ref().is_some_and(Vec::is_empty) {
            return bad(
                "link_prefixes: [] in mode wire would drop all unicast neighbour discovery to global \
                        addresses on the segment; give its prefixes, or leave link_prefixes out"
                    .to_string(),
            );
        }
        let mut pods = std::collections::BTreeSet::new();
        for p in &self.ports {
            let Some(pod) = &p.pod else { continue };
            if self.mode == Mode::Wire {
                return bad(format!(
                    "ports: {}: pod is for mode switch (a wire's ports lead to no pod)",
                    p.interface
                ));
            }
            if !matches!(pod.split_once('/'), Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/'))
            {
                return bad(format!("ports: {}: pod must be namespace/name, got {pod:?}", p.interface));
            }
            if !pods.insert(pod) {
                return bad(format!("ports: {}: pod {pod} is behind another port too", p.interface));
            }
            if p.node {
                return bad(format!(
                    "ports: {}: a port leads to a pod or faces the node, not both",
                    p.interface
                ));
            }
        }
        // The dataplane's own bound (`PipelineConfig::validate`), checked here under
        // this file's field name.
        let capacity = self.conntrack.capacity;
        if capacity == 0 || capacity as usize > MAX_CAPACITY {
            return bad(format!("conntrack.capacity must be between 1 and {MAX_CAPACITY}, got {capacity}"));
        }
        if !(1..=100).contains(&self.conntrack.pod_share) {
            return bad(format!(
                "conntrack.pod_share must be between 1 and 100 (percent), got {}",
                self.conntrack.pod_share
            ));
        }
        let t = &self.conntrack.timeouts;
        for (name, secs) in [
            ("tcp_handshake", t.tcp_handshake),
            ("tcp_established", t.tcp_established),
            ("tcp_closing", t.tcp_closing),
            ("tcp_closed", t.tcp_closed),
            ("udp", t.udp),
            ("udp_unreplied", t.udp_unreplied),
            ("icmp", t.icmp),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                return bad(format!(
                    "conntrack.timeouts.{name} must be between 1 and {MAX_TIMEOUT_SECS} seconds, got {secs}"
                ));
            }
        }
        if self.xdp.frame_count < 64 {
            return bad(format!("xdp.frame_count must be at least 64, got {}", self.xdp.frame_count));
        }
        if self.denied_flow_log_per_second > MAX_DENY_LOG_PER_SECOND {
            return bad(format!(
                "denied_flow_log_per_second must be at most {MAX_DENY_LOG_PER_SECOND}, got {}",
                self.denied_flow_log_per_second
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_example_parses_and_defaults_apply() {
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse("doc", &doc).unwrap();
        assert_eq!(c.ports[1].queues, 2);
        assert_eq!(c.ports[0].queues, 1);
        assert_eq!(c.workers, Workers::Cores(vec![2, 3]));
        // The documented defaults are the real defaults.
        let d = Config { ports: c.ports.clone(), workers: c.workers.clone(), ..Default::default() };
        assert_eq!(c, d);
        assert_eq!(Config::parse("e", "{}").unwrap(), Config::default());
    }

    #[test]
    fn only_the_default_config_path_may_be_missing() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path();
        let missing = dir.join("missing.yaml");
        let missing = missing.to_str().unwrap();
        // Given and missing: an error naming the path.
        let e = Config::load_for_run_from(Some(missing), missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!("cannot read {missing}: ")), "{e}");
        // Not given, default path missing: defaults.
        assert_eq!(Config::load_for_run_from(None, missing).unwrap(), (Config::default(), None));
        // Not given, default path present: that file.
        let present = dir.join("config.yaml");
        std::fs::write(&present, "debounce_ms: 7\n").unwrap();
        let present = present.to_str().unwrap();
        let (c, from) = Config::load_for_run_from(None, present).unwrap();
        assert_eq!((c.debounce_ms, from.as_deref()), (7, Some(present)));
    }

    #[test]
    fn unknown_and_inconsistent_fields_are_rejected() {
        let e = Config::parse("c.yaml", "mode: switch\nport: []\n").unwrap_err().to_string();
        assert!(e.contains("c.yaml: field port: unknown field `port`"), "{e}");
        let e = Config::parse("c.yaml", "xdp: {zerocopy: true}\n").unwrap_err().to_string();
        assert!(e.contains("field xdp.zerocopy: unknown field"), "{e}");
        let e = Config::parse("c.yaml", "mode: wire\nports: [{interface: a}]\n").unwrap_err().to_string();
        assert!(e.contains("mode wire needs exactly 2 ports"), "{e}");
        let e = Config::parse("c.yaml", "workers: [1]\nports: [{interface: a, queues: 2}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be 1..=1"), "{e}");
        for queues in [0, 257] {
            let e = Config::parse(
                "c.yaml",
                &format!("workers: auto\nports: [{{interface: a, queues: {queues}}}]\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(&format!("a has {queues} queues; must be 1..=256")), "{e}");
        }
        let e = Config::parse("c.yaml", "workers: []\n").unwrap_err().to_string();
        assert!(e.contains("workers: at least one core (or auto)"), "{e}");
        let e = Config::parse("c.yaml", "workers: any\n").unwrap_err().to_string();
        assert!(e.contains("field workers") && e.contains("a list of core numbers, or `auto`"), "{e}");
    }

    #[test]
    fn auto_workers_take_the_last_cores_of_the_cpuset_one_per_queue() {
        let c =
            Config::parse("c.yaml", "workers: auto\nports: [{interface: a, queues: 2}, {interface: b}]\n")
                .unwrap();
        assert_eq!(c.workers, Workers::Auto);
        // The kubelet gave this container cores 4-6: two workers on 5 and 6, 4 for the control plane.
        assert_eq!(c.worker_cores(&[4, 5, 6]), vec![5, 6]);
        // Just enough cores: all of them (the control plane then shares, with a warning).
        assert_eq!(c.worker_cores(&[4, 5]), vec![4, 5]);
        // Too few: workers share.
        assert_eq!(c.worker_cores(&[7]), vec![7, 7]);
        let mut r = c.clone();
        r.resolve_workers(&[0, 1, 2, 3]);
        assert_eq!(r.workers, Workers::Cores(vec![2, 3]));
        // No ports: one worker (none runs, but the count stays valid).
        let c = Config::parse("c.yaml", "workers: auto\n").unwrap();
        assert_eq!(c.worker_cores(&[0, 1]), vec![1]);
        // Written back as it was read.
        assert_eq!(serde_yaml::to_string(&Workers::Auto).unwrap().trim(), "auto");
    }

    /// Each out-of-range value is reported on its own, naming the field as the
    /// file spells it and the value given.
    #[test]
    fn out_of_range_values_name_their_field_and_value() {
        let err = |text: &str| Config::parse("c.yaml", text).unwrap_err().to_string();
        let e = err("conntrack: {capacity: 0}\n");
        assert_eq!(e, "c.yaml: conntrack.capacity must be between 1 and 16777216, got 0");
        let e = err("conntrack: {capacity: 16777217}\n");
        assert_eq!(e, "c.yaml: conntrack.capacity must be between 1 and 16777216, got 16777217");
        let e = err("conntrack: {pod_share: 0}\n");
        assert_eq!(e, "c.yaml: conntrack.pod_share must be between 1 and 100 (percent), got 0");
        let e = err("conntrack: {pod_share: 101}\n");
        assert_eq!(e, "c.yaml: conntrack.pod_share must be between 1 and 100 (percent), got 101");
        let e = err("conntrack: {timeouts: {tcp_established: 0}}\n");
        assert_eq!(
            e,
            "c.yaml: conntrack.timeouts.tcp_established must be between 1 and 2592000 seconds, got 0"
        );
        let e = err("conntrack: {timeouts: {udp: 2592001}}\n");
        assert_eq!(e, "c.yaml: conntrack.timeouts.udp must be between 1 and 2592000 seconds, got 2592001");
        let e = err("conntrack: {timeouts: {tcp_establshed: 60}}\n");
        assert!(e.contains("field conntrack.timeouts.tcp_establshed: unknown field"), "{e}");
        let e = err("xdp: {frame_count: 63}\n");
        assert_eq!(e, "c.yaml: xdp.frame_count must be at least 64, got 63");
        let e = err("denied_flow_log_per_second: 1000000001\n");
        assert_eq!(e, "c.yaml: denied_flow_log_per_second must be at most 1000000, got 1000000001");
        // The bounds themselves are accepted.
        let c = Config::parse(
            "c.yaml",
            "conntrack: {capacity: 16777216}\nxdp: {frame_count: 64}\ndenied_flow_log_per_second: 1000000\n",
        )
        .unwrap();
        assert_eq!(
            (c.conntrack.capacity, c.xdp.frame_count, c.denied_flow_log_per_second),
            (1 << 24, 64, 1_000_000)
        );
        // Timeouts reach the dataplane.
        let t = Config::parse("c.yaml", "conntrack: {timeouts: {tcp_established: 3600}}\n").unwrap();
        let d = crate::enforce::dataplane_config(&t);
        assert_eq!(d.pipeline.timeouts.tcp_established, 3600);
        assert_eq!(d.pipeline.timeouts.udp, dataplane::conntrack::Timeouts::default().udp);
        // The capacity bound is the dataplane's own.
        let mut d = crate::enforce::dataplane_config(&c);
        assert!(d.pipeline.validate().is_ok());
        d.pipeline.conntrack_capacity += 1;
        assert!(d.pipeline.validate().is_err());
    }

    #[test]
    fn on_a_wire_the_node_is_exempt_only_through_a_marked_port() {
        let node = "node_addresses: [192.168.0.10]\n";
        let mut c = Config::parse(
            "c.yaml",
            &format!("mode: wire\nports: [{{interface: a}}, {{interface: b}}]\n{node}"),
        )
        .unwrap();
        assert_eq!(
            c.drop_unanchored_node_addresses(),
            vec!["192.168.0.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(c.node_addresses.is_empty());
        let mut c = Config::parse(
            "c.yaml",
            &format!("mode: wire\nports: [{{interface: a, node: true}}, {{interface: b}}]\n{node}"),
        )
        .unwrap();
        assert!(c.drop_unanchored_node_addresses().is_empty());
        assert_eq!(c.node_addresses.len(), 1);
        // Switch mode keeps its rule: without marks, the ports without a pod.
        let mut c = Config::parse(
            "c.yaml",
            &format!("ports: [{{interface: a, pod: x/w}}, {{interface: b}}]\n{node}"),
        )
        .unwrap();
        assert!(c.drop_unanchored_node_addresses().is_empty());
    }

    #[test]
    fn a_port_names_the_pod_behind_it_once_and_only_in_switch_mode() {
        let c = Config::parse(
            "c.yaml",
            "ports: [{interface: a, pod: x/web}, {interface: b}]\nnode_addresses: [192.168.0.10, 'fd00::10']\n",
        )
        .unwrap();
        assert_eq!(c.ports[0].pod.as_deref(), Some("x/web"));
        assert_eq!(c.ports[1].pod, None);
        assert_eq!(c.node_addresses.len(), 2);
        let err = |text: &str| Config::parse("c.yaml", text).unwrap_err().to_string();
        assert!(err("ports: [{interface: a, pod: web}]\n")
            .contains("ports: a: pod must be namespace/name, got \"web\""));
        assert!(err("ports: [{interface: a, pod: x/w}, {interface: b, pod: x/w}]\n")
            .contains("ports: b: pod x/w is behind another port too"));
        assert!(err("mode: wire\nports: [{interface: a, pod: x/w}, {interface: b}]\n")
            .contains("pod is for mode switch"));
        assert!(err("node_addresses: [not-an-ip]\n").contains("node_addresses"));
        // Prefixes of the pods' link: absent, empty, given; each mistake named.
        assert_eq!(Config::parse("c.yaml", "mode: switch\n").unwrap().link_prefixes, None);
        assert_eq!(Config::parse("c.yaml", "link_prefixes: []\n").unwrap().link_prefixes, Some(vec![]));
        let c =
            Config::parse("c.yaml", "link_prefixes: ['fd00:10:244:1::/64', '2001:db8::1/128', 'fd00::/8']\n")
                .unwrap();
        let given: Vec<String> = c.link_prefixes.unwrap().into_iter().map(String::from).collect();
        assert_eq!(given, ["fd00:10:244:1::/64", "2001:db8::1/128", "fd00::/8"]);
        for (bad, why) in [
            ("fd00::", "not an IPv6 prefix"),
            ("10.0.0.0/8", "is not an IPv6 address"),
            ("fd00::/129", "a number from 1 to 128"),
            ("::/0", "a number from 1 to 128"),
            ("fd00::/+64", "a number from 1 to 128"),
            ("fd00::/064", "a number from 1 to 128"),
            ("fd00::/ 64", "a number from 1 to 128"),
            ("fd00::%eth0/64", "is not an IPv6 address"),
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
            ("fd00::1/64", "host bits set past /64"),
        ] {
            let e = err(&format!("link_prefixes: ['{bad}']\n"));
            assert!(e.contains("link_prefixes") && e.contains(why), "{bad}: {e}");
        }
        let wire = "mode: wire\nports: [{interface: a}, {interface: b}]\n";
        assert!(err(&format!("{wire}link_prefixes: []\n")).contains("link_prefixes: [] in mode wire"));
        assert!(Config::parse("c.yaml", &format!("{wire}link_prefixes: ['fd00::/64']\n")).is_ok());
        assert!(err("ports: [{interface: a, pod: x/w, node: true}]\n")
            .contains("leads to a pod or faces the node, not both"));
        let c = Config::parse("c.yaml", "ports: [{interface: a, node: true}]\n").unwrap();
        assert!(c.ports[0].node);
    }

    /// docs/configuration.md documents every field, with the default the code
    /// has, and nothing else; its complete file is a valid configuration.
    #[test]
    fn the_reference_documents_every_field_with_its_default() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md"))
            .unwrap();
        // Field rows: "| `path` | default | ...".
        let mut rows = std::collections::BTreeMap::new();
        for line in doc.lines() {
            let cells: Vec<&str> = line.split(" | ").collect();
            if let [first, default, ..] = cells[..] {
                if let Some(path) = first.strip_prefix("| `").and_then(|f| f.strip_suffix('`')) {
                    assert!(rows.insert(path.to_string(), default.to_string()).is_none(), "{path} twice");
                }
            }
        }
        // The fields, with their defaults (a port with its defaults for `ports[]`).
        let c = serde_json::to_value(Config::default()).unwrap();
        let port = PortConfig { interface: "eth0".into(), queues: one(), pod: None, node: false };
        let mut fields = std::collections::BTreeMap::new();
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        walk(&path, v, out);
                    }
                }
                serde_json::Value::String(s) => drop(out.insert(prefix.to_string(), format!("`{s}`"))),
                v => drop(out.insert(prefix.to_string(), format!("`{v}`"))),
            }
        }
        walk("", &c, &mut fields);
        let port = serde_json::to_value(port).unwrap();
        walk("ports[]", &port, &mut fields);
        fields.insert("ports[].interface".into(), "required".into());
        assert_eq!(
            rows.keys().collect::<Vec<_>>(),
            fields.keys().collect::<Vec<_>>(),
            "docs/configuration.md's field rows and the configuration's fields differ"
        );
        assert_eq!(rows, fields, "a default in docs/configuration.md differs from the code's");
        // The complete file loads, and leaves out no field.
        let yaml = doc.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
        let parsed = Config::parse("docs/configuration.md", yaml).unwrap();
        let top: std::collections::BTreeSet<&str> = yaml
            .lines()
            .filter_map(|l| l.split(':').next())
            .map(|k| k.trim().trim_start_matches("- "))
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .collect();
        for path in fields.keys() {
            let last = path.rsplit(['.', ']']).next().unwrap();
            assert!(top.contains(last), "the complete file in docs/configuration.md leaves out {path}");
        }
        assert_eq!(parsed.ports.len(), 2);
    }
}
