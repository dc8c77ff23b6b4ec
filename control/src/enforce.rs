//! The dataplane as `portcullis run` drives it: the configuration mapped to
//! ports and workers, compiled tables published to the workers, counters
//! served by the status endpoint, and a clean stop.
//!
//! ```text
//!  index owner ──Publisher──▶ ArcSwap<PublishedTable> ──(one load per batch)──▶ workers
//!                                 ▲ start: fail-closed (or fail-open) table
//!  /status, /metrics ◀── DataplaneView ◀── per-worker counters (lock-free)
//! ```
//!
//! Until the first complete sync the workers hold a start-up table: with
//! `fail_open: false` (default) only ARP and neighbour discovery pass; with
//! `fail_open: true` everything passes. Publication never blocks a worker:
//! the owner stores a new `Arc` and the workers pick it up at their next
//! batch. The previous table is kept alive here for a while so that freeing
//! it happens on the control side, not on a worker thread.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dataplane::addresses::{Addresses, PodAddrs};
use dataplane::observe::{DeniedFlow, HitDirection};
use dataplane::pipeline::{Mode as PipelineMode, PipelineConfig, PublishedTable};
use dataplane::xsk::{AttachMode, CopyMode, XskConfig};
use dataplane::{Dataplane, DataplaneConfig, StartError, Waker};
use policy_compiler::{DecisionTable, Side};

use crate::config::{Attach, Config, Mode};
use crate::daemon::{Publication, Publisher};
use crate::status::{DataplaneView, Enforcement};

/// Tables kept alive after being replaced (the last one a worker may still hold).
const KEEP_TABLES: usize = 2;

/// Older replaced tables are kept too while a worker still holds them, up to
/// this many in all, so that the worker letting go is not the one that frees
/// a table (megabytes, between two packets): it is freed here, later.
const HOLD_TABLES: usize = 8;

/// Allowed connections per (namespace, policy, direction).
type HitTotals = BTreeMap<(String, String, HitDirection), u64>;

/// The running dataplane and the table slot it reads.
pub struct Enforcer {
    dataplane: Mutex<Option<Dataplane>>,
    tables: Arc<ArcSwap<PublishedTable>>,
    retired: Mutex<Retired>,
    ports: Vec<String>,
    workers: usize,
    waker: Waker,
    /// What the configuration says of the node and the link, for every
    /// published table.
    link: LinkFacts,
    denied: Option<crossbeam_channel::Receiver<DeniedFlow>>,
    /// The cores the control threads may run on (those started after
    /// `cpus::keep_off_workers`, as `run` is), read at start.
    control_cores: Vec<usize>,
    /// Per port: the pod addresses last published, and that pod's epoch
    /// (counted up whenever they change: see `dataplane::pins`).
    port_epochs: Mutex<Vec<(Option<PodAddrs>, u16)>>,
    /// `enforce` and `fail_open` of the configuration.
    enforce: bool,
    fail_open: bool,
    /// `policy_metrics` of the configuration.
    policy_metrics: bool,
}

/// The next epoch of a port (1..=0x7fff, never the one before).
fn next_epoch(e: u16) -> u16 {
    e % 0x7fff + 1
}

/// Replaced tables still alive, and the hit counts of those already freed.
#[derive(Default)]
struct Retired {
    tables: VecDeque<Arc<PublishedTable>>,
    folded: HitTotals,
    /// Node-exemption admissions of the tables already freed.
    folded_node: u64,
}

impl Retired {
    /// Frees the replaced tables no worker holds any more, but the newest
    /// [`KEEP_TABLES`], and, beyond [`HOLD_TABLES`], the oldest even if one
    /// is held (a worker stuck that long frees it itself). Their hits are
    /// folded into the totals. Called at each publication and each scrape,
    /// so tables a worker let go of are freed here, soon, not by the worker.
    fn trim(&mut self) {
        let mut i = 0;
        while i + KEEP_TABLES < self.tables.len() {
            let held = self.tables.get(i).is_some_and(|t| Arc::strong_count(t) > 1);
            if held && self.tables.len() <= HOLD_TABLES {
                i += 1;
                continue;
            }
            if let Some(t) = self.tables.remove(i) {
                // A worker still on this table (stuck through many publications)
                // may add a few more hits after this; they are not counted.
                add_hits(&mut self.folded, &t);
                self.folded_node += t.hits.node_exempt_total();
            }
        }
    }
}

/// Adds a table's per-policy hit counts into `totals`.
fn add_hits(totals: &mut HitTotals, t: &PublishedTable) {
    for i in 0..t.hits.policies() {
        for dir in [HitDirection::Ingress, HitDirection::Egress] {
            let n = t.hits.total(i, dir);
            if n > 0 {
                let (ns, name) = t.table.policy(i as u32);
                *totals.entry((ns.to_string(), name.to_string(), dir)).or_default() += n;
            }
        }
    }
}

/// Forgets the totals of policies `table` does not name: a deleted policy's
/// series leaves `/metrics` once a table without it is in force, so that
/// generated policy names do not grow the series without bound (a policy
/// created again under the same name starts from 0, a counter reset). A
/// patched table still names the policies deleted since the last full
/// compile; the next compaction drops them. It walks every policy (0.5 ms at
/// 10,000), so scrapes do it, and publications every [`PRUNE_EVERY`]th time.
const PRUNE_EVERY: u64 = 64;

fn prune_hits(totals: &mut HitTotals, table: &DecisionTable) {
    let live: std::collections::HashSet<(&str, &str)> =
        (0..table.policy_slots()).map(|i| table.policy(i as u32)).collect();
    totals.retain(|(ns, name, _), _| live.contains(&(ns.as_str(), name.as_str())));
}

/// Maps the run configuration to the dataplane's.
pub fn dataplane_config(cfg: &Config) -> DataplaneConfig {
    // `auto` is resolved by `portcullis run` before it narrows its affinity;
    // a caller that did not gets it resolved against its own.
    let cores = cfg.worker_cores(&crate::cpus::current().unwrap_or_default());
    let sockets = cfg.ports.len().max(1) as u32;
    // UMEM frames per worker, split over the RX/fill and TX/completion rings of its
    // sockets, each ring a power of two.
    let ring = (cfg.xdp.frame_count / (2 * sockets)).max(64);
    let ring = 1u32 << (31 - ring.leading_zeros());
    DataplaneConfig {
        ports: cfg.ports.iter().map(|p| p.interface.clone()).collect(),
        queues: cfg.ports.iter().map(|p| p.queues).collect(),
        workers: cores.len(),
        cores,
        xsk: XskConfig {
            copy: if cfg.xdp.zero_copy { CopyMode::ZeroCopy } else { CopyMode::Copy },
            attach: match cfg.xdp.attach {
                Attach::Native => AttachMode::Native,
                Attach::Generic => AttachMode::Generic,
            },
            rx_ring: ring,
            tx_ring: ring,
            ..XskConfig::default()
        },
        pipeline: PipelineConfig {
            mode: match cfg.mode {
                Mode::Switch => PipelineMode::Switch,
                Mode::Wire => PipelineMode::Wire,
            },
            conntrack_capacity: cfg.conntrack.capacity as usize,
            conntrack_pod_share: cfg.conntrack.pod_share,
            timeouts: cfg.conntrack.timeouts,
            enforce: cfg.enforce,
            ..PipelineConfig::default()
        },
        denied_log_per_second: cfg.denied_flow_log_per_second,
        ..DataplaneConfig::default()
    }
}

/// What the configuration says of the node and the pods' link, given to the
/// workers with every table (see `dataplane::addresses`).
#[derive(Clone, Debug)]
struct LinkFacts {
    node_addresses: Vec<std::net::IpAddr>,
    node_ports: Vec<bool>,
    link_prefixes: Option<Vec<(std::net::Ipv6Addr, u8)>>,
}

impl LinkFacts {
    fn of(cfg: &Config) -> Self {
        LinkFacts {
            node_addresses: cfg.node_addresses.clone(),
            node_ports: cfg.ports.iter().map(|p| p.node).collect(),
            link_prefixes: cfg.link_prefixes.as_ref().map(|v| v.iter().map(|p| (p.addr, p.len)).collect()),
        }
    }

    /// `pods` behind the ports (with their `epochs`), and these facts.
    fn addresses(&self, pods: Vec<Option<PodAddrs>>, epochs: Vec<u16>) -> Addresses {
        Addresses::new(pods, self.node_addresses.clone())
            .with_node_ports(self.node_ports.clone())
            .with_link_prefixes(self.link_prefixes.clone())
            .with_epochs(epochs)
    }
}

/// The addresses of the fail-closed start-up table. Pod ports are pod ports
/// from the start: until the first table says their addresses, ARP and ND
/// from them may speak for none (probes from 0.0.0.0 and ::, and link-local
/// ND, still pass), and ND from them stays on the link as it does later.
fn start_up_addresses(cfg: &Config) -> Addresses {
    let pods: Vec<_> = cfg.ports.iter().map(|p| p.pod.as_ref().map(|_| PodAddrs::default())).collect();
    let epochs = pods.iter().map(|p| if p.is_some() { 1 } else { 0 }).collect();
    LinkFacts::of(cfg).addresses(pods, epochs)
}

impl Enforcer {
    /// Opens the ports and starts the workers with the start-up table.
    pub fn start(cfg: &Config) -> Result<Arc<Enforcer>, StartError> {
        let first = if cfg.fail_open {
            PublishedTable::new(0, DecisionTable::default(), 1)
        } else {
            PublishedTable::fail_closed().with_addresses(start_up_addresses(cfg))
        };
        let port_epochs = (0..cfg.ports.len())
            .map(|p| {
                let a = first.addresses.pod_at(p as dataplane::PortId).copied();
                (a, if a.is_some() { 1 } else { 0 })
            })
            .collect();
        let tables = Arc::new(ArcSwap::from_pointee(first));
        let dcfg = dataplane_config(cfg);
        let dp = Dataplane::start(&dcfg, tables.clone())?;
        if !cfg.enforce {
            tracing::warn!("enforce: false: every IP packet is forwarded without policy (benchmarks only)");
        }
        tracing::info!(ports = ?dcfg.ports, workers = dcfg.workers, fail_open = cfg.fail_open, "dataplane started");
        for w in dp.cores().iter().filter(|w| !w.pinned) {
            if let Some(core) = w.core {
                tracing::warn!(
                    worker = w.worker,
                    core,
                    "worker could not be pinned to its core (no such CPU, or outside the allowed cpuset); \
                     it runs unpinned"
                );
            }
        }
        let denied = (cfg.denied_flow_log_per_second > 0).then(|| dp.denied_flows());
        Ok(Arc::new(Enforcer {
            workers: dp.worker_count(),
            waker: dp.waker(),
            dataplane: Mutex::new(Some(dp)),
            tables,
            retired: Mutex::new(Retired::default()),
            ports: dcfg.ports,
            link: LinkFacts::of(cfg),
            denied,
            control_cores: crate::cpus::current().unwrap_or_default(),
            port_epochs: Mutex::new(port_epochs),
            enforce: cfg.enforce,
            fail_open: cfg.fail_open,
            policy_metrics: cfg.policy_metrics,
        }))
    }

    /// A publisher that hands every new table to the workers.
    pub fn publisher(self: &Arc<Self>) -> Publisher {
        let me = self.clone();
        Box::new(move |p: Publication| {
            let pods: Vec<Option<PodAddrs>> =
                p.port_addresses.into_iter().map(|a| a.map(PodAddrs::new)).collect();
            // A port's epoch moves whenever its pod's addresses change, so that
            // a pod that leaves and comes back is a new pod to the MAC pins.
            let epochs = {
                let mut known = me.port_epochs.lock().expect("port epochs lock");
                known.resize(pods.len(), (None, 0));
                for (k, now) in known.iter_mut().zip(&pods) {
                    if k.0 != *now {
                        *k = (*now, next_epoch(k.1));
                    }
                }
                known.iter().map(|k| k.1).collect()
            };
            let addresses = me.link.addresses(pods, epochs);
            let generation = p.generation;
            let table = PublishedTable::new(p.generation, p.table, me.workers).with_addresses(addresses);
            // Swapped under the lock, so a scrape sees the old table's hits
            // either as the current table's or as a retired one's, never neither.
            let mut r = me.retired.lock().expect("retired lock");
            let old = me.tables.swap(Arc::new(table));
            // Idle workers take the table now, not at the end of their poll timeout.
            me.waker.wake();
            r.tables.push_back(old);
            r.trim();
            // Deleted policies' totals are left out of every scrape (`policy_hits`);
            // dropping them from the folded totals too keeps those bounded, and
            // once in a while is enough for that (it walks every policy).
            if generation.is_multiple_of(PRUNE_EVERY) {
                prune_hits(&mut r.folded, &me.tables.load().table);
            }
        })
    }

    /// Connections allowed per policy and direction since start (tables
    /// replaced long ago included).
    pub fn policy_hits(&self) -> HitTotals {
        let mut r = self.retired.lock().expect("retired lock");
        r.trim();
        let mut totals = r.folded.clone();
        for t in &r.tables {
            add_hits(&mut totals, t);
        }
        let current = self.tables.load();
        add_hits(&mut totals, &current);
        prune_hits(&mut totals, &current.table);
        totals
    }

    /// Connections from the node's addresses into pods that policy alone
    /// would deny, admitted by the node exemption, since start.
    pub fn node_exempt_connections(&self) -> u64 {
        let r = self.retired.lock().expect("retired lock");
        r.folded_node
            + r.tables.iter().map(|t| t.hits.node_exempt_total()).sum::<u64>()
            + self.tables.load().hits.node_exempt_total()
    }

    /// Logs the denied flows the workers reported since the last call (one
    /// JSON line each, target `portcullis::denied`); returns how many.
    pub fn log_denied_flows(&self) -> usize {
        let Some(rx) = &self.denied else { return 0 };
        let mut n = 0;
        while let Ok(d) = rx.try_recv() {
            n += 1;
            let (denied_by, egress, ingress) = {
                let r = self.retired.lock().expect("retired lock");
                let current = self.tables.load();
                let table = std::iter::once(&**current)
                    .chain(r.tables.iter().map(|t| &**t))
                    .find(|t| t.generation == d.generation);
                denied_fields(table, &d)
            };
            tracing::info!(
                target: "portcullis::denied",
                src = %d.src,
                dst = %d.dst,
                protocol = %protocol_name(d.protocol),
                port = d.port,
                denied_by,
                egress_isolated_by = egress.as_deref().unwrap_or(""),
                ingress_isolated_by = ingress.as_deref().unwrap_or(""),
                generation = d.generation,
                worker = d.worker,
                "denied flow"
            );
        }
        n
    }

    /// The lowest table generation the workers have picked up.
    pub fn enforced_generation(&self) -> Option<u64> {
        self.dataplane.lock().ok()?.as_ref().map(|d| d.enforced_generation())
    }

    /// Stops the workers, closes the sockets and detaches the XDP programs.
    pub fn shutdown(&self) {
        if let Some(dp) = self.dataplane.lock().expect("dataplane lock").take() {
            dp.shutdown();
            tracing::info!("dataplane stopped; XDP programs detached");
        }
    }
}

/// What a denied-flow log line says of the sides: which denied (`egress`,
/// `ingress` or `both`) and the isolating policies of each denying side.
fn denied_fields(
    table: Option<&PublishedTable>,
    d: &DeniedFlow,
) -> (&'static str, Option<String>, Option<String>) {
    let (egress, ingress) = (denying(table, d.verdict.egress), denying(table, d.verdict.ingress));
    let denied_by = match (&egress, &ingress) {
        (Some(_), Some(_)) => "both",
        (Some(_), None) => "egress",
        _ => "ingress",
    };
    (denied_by, egress, ingress)
}

/// The isolating policies of a denied side, `ns/name` comma-separated
/// (`?` when the table that decided is no longer held); `None` when the side allowed.
fn denying(table: Option<&PublishedTable>, side: Side) -> Option<String> {
    let Side::Denied(id) = side else { return None };
    let Some(t) = table else { return Some("?".into()) };
    let (_, policies) = t.table.isolating_policies(id);
    let names: Vec<String> = policies
        .map(|i| {
            let (ns, name) = t.table.policy(i);
            format!("{ns}/{name}")
        })
        .collect();
    Some(names.join(","))
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

impl DataplaneView for Enforcer {
    fn workers_alive(&self) -> bool {
        self.dataplane.lock().map(|d| d.as_ref().is_some_and(|d| d.workers_alive())).unwrap_or(false)
    }

    fn status_json(&self) -> serde_json::Value {
        let Ok(d) = self.dataplane.lock() else { return serde_json::Value::Null };
        let Some(d) = d.as_ref() else { return serde_json::json!({"running": false}) };
        serde_json::json!({
            "running": true,
            "ports": self.ports,
            "workers": d.worker_count(),
            "bindings": d
                .bindings()
                .iter()
                .map(|b| {
                    let port = self.ports.get(usize::from(b.port)).map(String::as_str).unwrap_or("?");
                    serde_json::json!({"worker": b.worker, "port": port, "queue": b.queue})
                })
                .collect::<Vec<_>>(),
            "cores": d.cores(),
            "control_cores": self.control_cores,
            "pipeline": d.pipeline_counters(),
            "per_worker": d.pipeline_counters_per_worker(),
            "io": d.io_counters(),
        })
    }

    fn enforcement(&self) -> Enforcement {
        if !self.enforce {
            return Enforcement::Off;
        }
        // Generation 0 is the start-up table; the lowest one a worker uses
        // decides (a worker still on it passes or drops as it says).
        match self.enforced_generation() {
            None => Enforcement::Stopped,
            Some(g) if g > 0 => Enforcement::Policy,
            Some(_) if self.fail_open => Enforcement::StartUpFailOpen,
            Some(_) => Enforcement::StartUpFailClosed,
        }
    }

    fn encode_metrics(&self, out: &mut String) {
        let Ok(d) = self.dataplane.lock() else { return };
        let Some(d) = d.as_ref() else { return };
        let c = d.pipeline_counters();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let suffix = if kind == "counter" { "_total" } else { "" };
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{suffix}{labels} {v}");
            }
        };
        let (mut packets, mut bytes) = (Vec::new(), Vec::new());
        for (i, p) in c.ports.iter().enumerate() {
            let port = self.ports.get(i).map(String::as_str).unwrap_or("?");
            let (rx, tx) = (
                format!("{{port=\"{port}\",direction=\"rx\"}}"),
                format!("{{port=\"{port}\",direction=\"tx\"}}"),
            );
            packets.extend([(rx.clone(), p.rx_frames), (tx.clone(), p.tx_frames)]);
            bytes.extend([(rx, p.rx_bytes), (tx, p.tx_bytes)]);
        }
        family("portcullis_port_packets", "counter", "Frames received and sent per port", &packets);
        family(
            "portcullis_port_bytes",
            "counter",
            "Bytes of the frames received and sent per port (Ethernet header to end of payload, no FCS)",
            &bytes,
        );
        let mut kernel = Vec::new();
        for (i, p) in c.ports.iter().enumerate() {
            let port = self.ports.get(i).map(String::as_str).unwrap_or("?");
            for (reason, v) in [
                ("rx_dropped", p.kernel_rx_dropped),
                ("rx_ring_full", p.kernel_rx_ring_full),
                ("fill_ring_empty", p.kernel_fill_ring_empty),
                ("rx_invalid", p.kernel_rx_invalid),
                ("tx_invalid", p.kernel_tx_invalid),
            ] {
                kernel.push((format!("{{port=\"{port}\",reason=\"{reason}\"}}"), v));
            }
        }
        family(
            "portcullis_port_kernel_drops",
            "counter",
            "The kernel's AF_XDP socket counters per port (XDP_STATISTICS, read about once a second): frames lost before the dataplane saw them",
            &kernel,
        );
        let verdicts = vec![
            ("{verdict=\"forwarded\"}".to_string(), c.forwarded),
            ("{verdict=\"flooded\"}".to_string(), c.flooded),
            ("{verdict=\"dropped\"}".to_string(), c.dropped),
        ];
        family("portcullis_packets", "counter", "Frames handled by the pipeline, by verdict", &verdicts);
        let drops: Vec<(String, u64)> =
            c.drops.iter().map(|(r, v)| (format!("{{reason=\"{r}\"}}"), *v)).collect();
        family("portcullis_dropped_packets", "counter", "Frames dropped, by reason", &drops);
        let parse: Vec<(String, u64)> =
            c.parse_errors.iter().map(|(r, v)| (format!("{{kind=\"{r}\"}}"), *v)).collect();
        family("portcullis_parse_errors", "counter", "Malformed frames, by kind", &parse);
        let mut tx_dropped = Vec::new();
        for (i, p) in c.ports.iter().enumerate() {
            let port = self.ports.get(i).map(String::as_str).unwrap_or("?");
            tx_dropped.push((format!("{{port=\"{port}\"}}"), p.tx_dropped));
        }
        family(
            "portcullis_port_tx_dropped",
            "counter",
            "Frames forwarded to a port but lost because its TX ring was full (counted as forwarded too)",
            &tx_dropped,
        );
        let io = d.io_counters();
        family(
            "portcullis_io_drops",
            "counter",
            "Frames lost outside the verdict: no free UMEM frame for a copy, no socket for the output port on the worker, or a ring descriptor outside the UMEM (dropped unread; expected 0)",
            &[
                ("{reason=\"no_frame\"}".to_string(), io.no_frame),
                ("{reason=\"no_socket\"}".to_string(), io.no_socket),
                ("{reason=\"bad_descriptor\"}".to_string(), io.bad_descriptors),
            ],
        );
        // Each worker has its own connection table: one full table next to
        // empty ones must show, so these are per worker (sum them for the node).
        let per_worker = d.pipeline_counters_per_worker();
        let by_worker = |f: &dyn Fn(&dataplane::counters::CountersSnapshot) -> u64| -> Vec<(String, u64)> {
            per_worker.iter().enumerate().map(|(w, c)| (format!("{{worker=\"{w}\"}}"), f(c))).collect()
        };
        family(
            "portcullis_conntrack_entries",
            "gauge",
            "Tracked connections, per worker",
            &by_worker(&|c| c.conntrack.entries),
        );
        family(
            "portcullis_conntrack_capacity",
            "gauge",
            "Connection table capacity, per worker",
            &by_worker(&|c| c.conntrack.capacity),
        );
        let pinned: Vec<(String, u64)> =
            d.cores().iter().map(|w| (format!("{{worker=\"{}\"}}", w.worker), u64::from(w.pinned))).collect();
        family(
            "portcullis_worker_pinned",
            "gauge",
            "1 when the worker is pinned to its configured core; 0 when it runs unpinned",
            &pinned,
        );
        let ct = &c.conntrack;
        family("portcullis_connections", "counter", "Connections created", &[(String::new(), ct.created)]);
        family(
            "portcullis_conntrack_refused",
            "counter",
            "New connections refused because the table was full (or the pod they came from held its share of it)",
            &[(String::new(), ct.full)],
        );
        family(
            "portcullis_conntrack_over_share",
            "counter",
            "Of the refused connections, those refused because the pod they came from held its share of the table (conntrack.pod_share)",
            &[(String::new(), ct.over_share)],
        );
        family(
            "portcullis_conntrack_evicted",
            "counter",
            "Tracked connections not yet answered or already closed, removed before their timeout to make room for a new one",
            &[(String::new(), ct.evicted)],
        );
        family(
            "portcullis_conntrack_picked_up",
            "counter",
            "Connections tracked from the middle (a TCP segment without entry, allowed in its own direction; after a restart or an idle timeout)",
            &[(String::new(), ct.picked_up)],
        );
        family(
            "portcullis_conntrack_related",
            "counter",
            "ICMP errors passed as related to a tracked connection",
            &[(String::new(), ct.related)],
        );
        family(
            "portcullis_conntrack_expired",
            "counter",
            "Tracked connections removed at their idle timeout",
            &[(String::new(), ct.expired)],
        );
        family(
            "portcullis_connections_revoked",
            "counter",
            "Tracked connections cut by a newer table",
            &[(String::new(), ct.revoked)],
        );
        // Up to two series per policy: left out when the configuration says so.
        if self.policy_metrics {
            let hits: Vec<(String, u64)> = self
                .policy_hits()
                .into_iter()
                .map(|((ns, name, dir), n)| {
                    let dir = match dir {
                        HitDirection::Ingress => "ingress",
                        HitDirection::Egress => "egress",
                    };
                    (
                        format!(
                            "{{namespace=\"{}\",policy=\"{}\",direction=\"{dir}\"}}",
                            label(&ns),
                            label(&name)
                        ),
                        n,
                    )
                })
                .collect();
            family(
                "portcullis_policy_allowed_connections",
                "counter",
                "Connections allowed per policy and direction (a rule of the policy matched), counted when admitted",
                &hits,
            );
        }
        family(
            "portcullis_node_exempt_connections",
            "counter",
            "Connections from the node's own addresses into pods that policy alone would deny, admitted by the node exemption (kubelet probes)",
            &[(String::new(), self.node_exempt_connections())],
        );
        family(
            "portcullis_denied_flow_log_suppressed",
            "counter",
            "Packets denied by policy and left out of the denied-flow log (rate limit or full queue)",
            &[(String::new(), c.denied_log_suppressed)],
        );
        family(
            "portcullis_pod_mac_conflicts",
            "counter",
            "Frames from a port with no pod whose source MAC a pod port speaks with: passed but not learnt (one side forges that MAC)",
            &[(String::new(), c.pod_mac_conflicts)],
        );
        family(
            "portcullis_enforced_table_generation",
            "gauge",
            "Lowest table generation the workers use",
            &[(String::new(), c.table_generation)],
        );
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replaced tables are freed by the control plane once no worker holds
    /// them (the newest two are kept anyway); a held one is kept, up to eight.
    #[test]
    fn replaced_tables_are_freed_here_once_no_worker_holds_them() {
        let table = |g| Arc::new(PublishedTable::new(g, policy_compiler::DecisionTable::default(), 1));
        let mut r = Retired::default();
        r.tables.extend((0..5).map(table));
        // A worker on table 0, another on table 2.
        let (w0, w2) = (r.tables[0].clone(), r.tables[2].clone());
        r.trim();
        let gens = |r: &Retired| r.tables.iter().map(|t| t.generation).collect::<Vec<_>>();
        assert_eq!(gens(&r), [0, 2, 3, 4]);
        drop(w0);
        r.trim();
        assert_eq!(gens(&r), [2, 3, 4]);
        drop(w2);
        r.trim();
        assert_eq!(gens(&r), [3, 4]);
        // Workers stuck on many tables: no more than eight are kept.
        let held: Vec<_> = (10..20).map(table).collect();
        r.tables.extend(held.iter().cloned());
        r.trim();
        assert_eq!(r.tables.len(), HOLD_TABLES);
        assert_eq!(gens(&r), (12..20).collect::<Vec<_>>());
    }

    /// Before the first table, ND from a pod's port (which may speak only for
    /// link-local addresses then) reaches the node's addresses and the link's
    /// prefixes as it will later, and nothing beyond.
    #[test]
    fn the_start_up_table_keeps_neighbour_discovery_to_the_link() {
        use dataplane::testing::{nd_to, Host};
        let cfg = Config::parse(
            "c.yaml",
            "ports: [{interface: a, pod: x/w}, {interface: b, node: true}]\n\
             node_addresses: ['2001:db8::10']\nlink_prefixes: ['fd00:1::/64']\n",
        )
        .unwrap();
        let a = start_up_addresses(&cfg);
        let pod = a.pod_at(0).copied().expect("port a leads to a pod from the start");
        assert!(a.pod_at(1).is_none() && a.from_node("2001:db8::10".parse().unwrap(), 1));
        let to = |dst: &str| {
            let dst = dst.parse::<std::net::Ipv6Addr>().unwrap().octets();
            let link_local = "fe80::5".parse::<std::net::Ipv6Addr>().unwrap().octets();
            a.neighbour_on_link(
                Some(&pod),
                &nd_to(&Host::new(1), [2, 0, 0, 0, 0, 9], dst, 135, link_local, [0; 16]),
            )
        };
        assert!(to("2001:db8::10") && to("fd00:1::1") && to("fe80::1") && to("ff02::2"));
        assert!(!to("2001:db8::11") && !to("fd00:2::1"));
        assert!(!a.checks_every_neighbour(), "a pod port: the other ports are not checked");
        // A wire checks every port's ND once the segment's prefixes are given.
        let wire = |extra: &str| {
            let text = format!("mode: wire\nports: [{{interface: a}}, {{interface: b}}]\n{extra}");
            start_up_addresses(&Config::parse("c.yaml", &text).unwrap())
        };
        assert!(wire("link_prefixes: ['fd00:1::/64']\n").checks_every_neighbour());
        assert!(!wire("").checks_every_neighbour());
    }

    #[test]
    fn a_ports_epoch_always_moves_and_is_never_zero() {
        let mut e = 1;
        for _ in 0..0x10000 {
            let n = next_epoch(e);
            assert!(n != e && (1..=0x7fff).contains(&n), "{e} -> {n}");
            e = n;
        }
    }

    /// Pods a (x) and b (y); x denies all egress, y denies all ingress.
    fn both_deny() -> PublishedTable {
        let text = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: 'y'}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: 'y'}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-ingress, namespace: 'y'}
spec: {podSelector: {}}
";
        let s = crate::manifest::parse("test.yaml", text).unwrap();
        let (c, problems) = policy_compiler::Cluster::from_objects(&s.namespaces, &s.pods, &s.policies);
        assert!(problems.is_empty(), "{problems:?}");
        PublishedTable::new(7, DecisionTable::compile(&c), 1)
    }

    fn denied(t: &PublishedTable, src: &str, dst: &str) -> DeniedFlow {
        let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
        DeniedFlow {
            src,
            dst,
            protocol: 6,
            port: 80,
            verdict: t.table.verdict_both(src, dst, 6, 80),
            generation: 7,
            worker: 0,
        }
    }

    #[test]
    fn hits_of_deleted_policies_are_forgotten() {
        let t = both_deny();
        let mut totals: HitTotals = BTreeMap::new();
        for (ns, name) in [("x", "no-egress"), ("y", "no-ingress"), ("y", "deleted"), ("z", "no-egress")] {
            totals.insert((ns.into(), name.into(), HitDirection::Ingress), 3);
        }
        prune_hits(&mut totals, &t.table);
        let left: Vec<(&str, &str)> = totals.keys().map(|(ns, n, _)| (ns.as_str(), n.as_str())).collect();
        assert_eq!(left, [("x", "no-egress"), ("y", "no-ingress")]);
    }

    #[test]
    fn a_log_line_names_every_denying_side() {
        let t = both_deny();
        let d = denied(&t, "10.0.0.1", "10.0.0.2");
        let (by, egress, ingress) = denied_fields(Some(&t), &d);
        assert_eq!(by, "both");
        assert_eq!(egress.as_deref(), Some("x/no-egress"));
        assert_eq!(ingress.as_deref(), Some("y/no-ingress"));
        // Egress only (b -> a: a's ingress is open, b's egress too; a -> a: egress denies).
        let d = denied(&t, "10.0.0.1", "10.0.0.1");
        assert_eq!(denied_fields(Some(&t), &d), ("egress", Some("x/no-egress".into()), None));
        // The table that decided is gone: both sides are still named, as unknown.
        let d = denied(&t, "10.0.0.1", "10.0.0.2");
        assert_eq!(denied_fields(None, &d), ("both", Some("?".into()), Some("?".into())));
    }
}
