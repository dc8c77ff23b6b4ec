//! The index owner: one task applies every source's changes to the
//! [`Index`] (updates that change nothing compiled are dropped there),
//! compiles (a patch when it can, in full otherwise: see `compile`) at
//! most once per debounce period, and publishes the new table with the
//! addresses of the pods behind the dataplane's ports. It also keeps the
//! status and metrics the HTTP endpoint serves.
//!
//! ```text
//!  SourceMsg ──▶ apply to Index ──(debounce)──▶ patch / full compile ──▶ Publisher (ArcSwap store)
//!                     │                                                   │
//!                     └──────────────────── Status / Metrics ◀────────────┘
//! ```
//!
//! The debounce is a leading edge: a change after a quiet period compiles at
//! once; during a burst (a rollout) compilations are at least a period apart.
//!
//! Until every expected (source, kind) has completed one full list, no table
//! compiled from partial state is published: the dataplane stays in its
//! start-up mode (fail-closed unless configured fail-open) and `/readyz`
//! answers 503. After that, losing a source changes nothing in force: the
//! last table stays until the source is back (a watch resumes from the last
//! version it saw, and lists again only when that version has expired).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use policy_compiler::{Compilation, DecisionTable, IncrementalCompiler, Severity, TableStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::index::{Index, Kind, Pending};
use crate::manifest_dir::FileStatus;
use crate::sources::{SourceId, SourceMsg};

/// One table the owner publishes.
pub struct Publication {
    /// Increases by one per publication, from 1.
    pub generation: u64,
    /// The table (the compiler keeps a reference to patch the next one from).
    pub table: Arc<DecisionTable>,
    /// When a source saw the oldest change this table includes (for change-to-enforced latency).
    pub oldest_change: Option<Instant>,
    /// For each pod of [`OwnerConfig::port_pods`], in its order: its addresses in the
    /// table (empty when it has none), `None` for a port with no pod.
    pub port_addresses: Vec<Option<Vec<std::net::IpAddr>>>,
}

/// Receives every table the owner publishes.
pub type Publisher = Box<dyn Fn(Publication) + Send>;

/// Owner settings.
#[derive(Clone, Debug)]
pub struct OwnerConfig {
    /// Least time between two compilations (leading edge: a change after a
    /// quiet period compiles at once).
    pub debounce: Duration,
    /// The sources that must sync before the first publication.
    pub sources: Vec<SourceId>,
    /// Compile in full, in a quiet moment, once the data patches left
    /// unused reaches this share of the live data
    /// (`IncrementalCompiler::stale_share`).
    pub compact_share: f64,
    /// The quiet time before that full compile.
    pub compact_after: Duration,
    /// Past this share, the next change compiles in full even when changes
    /// never pause (bounds memory; that one change pays a full compile).
    pub compact_share_max: f64,
    /// The pod (namespace, name) behind each dataplane port, if any: each
    /// publication carries their addresses.
    pub port_pods: Vec<Option<(String, String)>>,
}

impl OwnerConfig {
    /// Debounce `debounce`; compaction at 50% after 1 s of quiet, or at 400% regardless.
    pub fn new(debounce: Duration, sources: Vec<SourceId>) -> Self {
        OwnerConfig {
            debounce,
            sources,
            compact_share: 0.5,
            compact_after: Duration::from_secs(1),
            compact_share_max: 4.0,
            port_pods: Vec::new(),
        }
    }
}

/// One (source, kind) as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceStatus {
    /// Has it completed a full list since start?
    pub synced: bool,
    /// Last error, while unhealthy.
    pub error: Option<String>,
    /// Seconds since the last event or successful list. A quiet, healthy watch
    /// delivers nothing, so this grows without bound then: alert on `error`
    /// and `unhealthy_for_seconds`, not on this.
    pub seconds_since_last_event: f64,
    /// Seconds it has been unhealthy, if it is.
    pub unhealthy_for_seconds: Option<f64>,
    #[serde(skip)]
    last_event: Option<Instant>,
    #[serde(skip)]
    unhealthy_since: Option<Instant>,
}

/// What `/status` serves (the dataplane part is added by the server).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusData {
    /// Sources by name and kind.
    pub sources: BTreeMap<String, SourceStatus>,
    /// True once every source synced and a table from that state is published.
    pub ready: bool,
    /// Generation of the last table published (0: start-up table); the workers
    /// take it up at their next batch (`dataplane.pipeline.table_generation`).
    pub table_generation: u64,
    /// When it was published (seconds since the Unix epoch).
    pub table_published_unix: Option<f64>,
    /// How long its compilation took, in milliseconds.
    pub compile_ms: Option<f64>,
    /// How it was compiled: `full` (and why), or `patch` of the namespaces
    /// whose policies changed.
    pub compilation: Option<String>,
    /// Objects known, by kind.
    pub objects: BTreeMap<String, usize>,
    /// Size of the table.
    pub table: TableStats,
    /// Every invalid object with its error (policies among them are enforced
    /// fail-closed), and every policy whose ipBlock rules were left out for
    /// their namespace's size (those rules allow nothing; the message says so).
    pub invalid: Vec<String>,
    /// Warnings about valid objects.
    pub warnings: Vec<String>,
    /// Manifest files and their errors (manifest source only).
    pub files: Vec<FileStatus>,
    /// Manifest-level errors (conflicts, unreadable directory).
    pub file_errors: Vec<String>,
    /// Recent latencies, from a source seeing a change until the table is
    /// published / until every worker uses it.
    pub latency: Latencies,
    /// Set when the last full compile panicked (a bug in the compiler): the
    /// table in force stays, and the next change compiles again.
    pub compile_error: Option<String>,
}

/// Recent latency samples, summarized.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latencies {
    /// Change seen by a source → table published.
    pub change_to_publish: Recent,
    /// Change seen by a source → every dataplane worker uses the table.
    pub change_to_enforced: Recent,
}

/// The last [`Recent::KEEP`] samples of a latency, served as a summary.
#[derive(Clone, Debug, Default)]
pub struct Recent {
    samples: VecDeque<f64>,
}

impl Recent {
    /// Samples kept.
    pub const KEEP: usize = 1000;

    /// Adds one sample, in seconds.
    pub fn push(&mut self, seconds: f64) {
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(seconds);
    }

    /// The `q` quantile (nearest rank) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = self.samples.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1] * 1e3)
    }
}

impl Serialize for Recent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Recent", 4)?;
        st.serialize_field("samples", &self.samples.len())?;
        st.serialize_field("median_ms", &self.quantile_ms(0.5))?;
        st.serialize_field("p99_ms", &self.quantile_ms(0.99))?;
        st.serialize_field("max_ms", &self.quantile_ms(1.0))?;
        st.end()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
    kind: String,
}

/// Control-plane metrics (the dataplane's are collected at scrape time by the server).
pub struct Metrics {
    generation: Gauge,
    ready: Gauge,
    compile_seconds: Histogram,
    change_to_publish_seconds: Histogram,
    change_to_enforced_seconds: Histogram,
    objects: Family<KindLabel, Gauge>,
    invalid: Gauge,
    source_up: Family<SourceLabel, Gauge>,
    /// Unix time of the last publication, and of each source's last event.
    published_at: Gauge<f64, std::sync::atomic::AtomicU64>,
    source_event_at: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    file_errors: Gauge,
    compile_failures: prometheus_client::metrics::counter::Counter,
}

/// Seconds since the Unix epoch, for timestamp gauges.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    fn new(reg: &mut Registry) -> Self {
        let m = Metrics {
            generation: Gauge::default(),
            ready: Gauge::default(),
            compile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            change_to_publish_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            change_to_enforced_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            objects: Family::default(),
            invalid: Gauge::default(),
            source_up: Family::default(),
            published_at: Gauge::default(),
            source_event_at: Family::default(),
            file_errors: Gauge::default(),
            compile_failures: Default::default(),
        };
        reg.register(
            "portcullis_compile_failures",
            "Full compiles that panicked (a bug): no table was published and the one in force stays",
            m.compile_failures.clone(),
        );
        reg.register(
            "portcullis_table_generation",
            "Generation of the last decision table published (the workers' is portcullis_enforced_table_generation)",
            m.generation.clone(),
        );
        reg.register(
            "portcullis_table_published_timestamp_seconds",
            "Unix time the last decision table was published (0 before the first)",
            m.published_at.clone(),
        );
        reg.register(
            "portcullis_source_last_event_timestamp_seconds",
            "Unix time a source last delivered an event (or recovered) for a kind",
            m.source_event_at.clone(),
        );
        reg.register(
            "portcullis_manifest_file_errors",
            "Manifest files rejected (their last good version stays in force; a restart would not sync until they parse, and would take an emptied file as holding nothing), objects defined twice, and an unreadable directory",
            m.file_errors.clone(),
        );
        reg.register(
            "portcullis_ready",
            "1 once every source synced and its table is published",
            m.ready.clone(),
        );
        reg.register(
            "portcullis_compile_duration_seconds",
            "Time to compile a decision table",
            m.compile_seconds.clone(),
        );
        reg.register(
            "portcullis_policy_change_to_publish_seconds",
            "From a source seeing a change to the table that includes it being published",
            m.change_to_publish_seconds.clone(),
        );
        reg.register(
            "portcullis_policy_change_to_enforced_seconds",
            "From a source seeing a change to every dataplane worker using the table that includes it",
            m.change_to_enforced_seconds.clone(),
        );
        reg.register("portcullis_objects", "Objects known, by kind", m.objects.clone());
        reg.register(
            "portcullis_invalid_objects",
            "Objects that fail validation, and policies whose ipBlock rules were left out for their namespace's budget",
            m.invalid.clone(),
        );
        reg.register("portcullis_source_up", "1 while a source's watch is healthy", m.source_up.clone());
        m
    }
}

/// State shared by the owner and the status server.
pub struct Shared {
    /// Status document.
    pub status: Mutex<StatusData>,
    /// Metrics registry (encoded by `/metrics`).
    pub registry: Mutex<Registry>,
    metrics: Metrics,
    /// Process start.
    pub started: Instant,
}

impl Shared {
    /// Fresh state with the metrics registered.
    pub fn new() -> Arc<Shared> {
        let mut reg = Registry::default();
        let metrics = Metrics::new(&mut reg);
        Arc::new(Shared {
            status: Mutex::new(StatusData::default()),
            registry: Mutex::new(reg),
            metrics,
            started: Instant::now(),
        })
    }

    /// The status document with staleness computed now.
    pub fn status_now(&self) -> StatusData {
        let mut s = self.status.lock().expect("status lock").clone();
        let now = Instant::now();
        for src in s.sources.values_mut() {
            src.seconds_since_last_event =
                src.last_event.map_or(now - self.started, |t| now - t).as_secs_f64();
            src.unhealthy_for_seconds = src.unhealthy_since.map(|t| (now - t).as_secs_f64());
        }
        s
    }

    /// Records one change-to-enforced latency.
    pub fn observe_enforced(&self, seconds: f64) {
        self.metrics.change_to_enforced_seconds.observe(seconds);
        self.status.lock().expect("status lock").latency.change_to_enforced.push(seconds);
    }

    /// Is a table from fully synced state published?
    pub fn ready(&self) -> bool {
        self.status.lock().expect("status lock").ready
    }
}

use crate::sources::source_name;

const KINDS: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

/// Runs the owner until the channel closes. Returns the final index (tests).
pub async fn run_owner(
    mut rx: mpsc::Receiver<SourceMsg>,
    shared: Arc<Shared>,
    publish: Publisher,
    cfg: OwnerConfig,
) -> Index {
    let mut index = Index::new();
    let expected: BTreeSet<(SourceId, Kind)> =
        cfg.sources.iter().flat_map(|s| KINDS.iter().map(move |k| (*s, *k))).collect();
    let mut synced: BTreeSet<(SourceId, Kind)> = BTreeSet::new();
    {
        let mut st = shared.status.lock().expect("status lock");
        for (s, k) in &expected {
            st.sources.insert(format!("{}/{}", source_name(*s), k.name()), SourceStatus::default());
        }
    }
    let mut generation = 0u64;
    let mut deadline: Option<Instant> = None;
    // Leading-edge debounce: a change arriving after a quiet period is compiled at
    // once; during a burst, publications are at least `debounce` apart, so a
    // rollout of many objects compiles a few times, not once per object.
    let mut last_publish: Option<Instant> = None;
    let due = |last: Option<Instant>| match last {
        Some(t) => (t + cfg.debounce).max(Instant::now()),
        None => Instant::now(),
    };
    let mut oldest_unpublished: Option<Instant> = None;
    let mut out = Output { shared: &shared, publish, logged: BTreeSet::new(), port_pods: &cfg.port_pods };
    let mut compiler: Option<IncrementalCompiler> = None;
    // A full compile that drops what patches left unused, once things are quiet.
    let mut compact_at: Option<Instant> = None;
    loop {
        // A wake-up already due is handled at once, not after a timer round
        // (tokio's timers tick in milliseconds).
        let wake = deadline.or(compact_at);
        let msg = match wake {
            Some(d) if d <= Instant::now() => None,
            Some(d) => tokio::select! {
                m = rx.recv() => Some(m),
                _ = tokio::time::sleep_until(d) => None,
            },
            None => Some(rx.recv().await),
        };
        let Some(msg) = msg else {
            if deadline.take().is_some() {
                if synced.is_superset(&expected) {
                    last_publish = Some(Instant::now());
                    let how = match compile(&mut index, &mut compiler, cfg.compact_share_max) {
                        Ok(how) => how,
                        Err(e) => {
                            shared.metrics.compile_failures.inc();
                            shared.status.lock().expect("status lock").compile_error = Some(e);
                            continue;
                        }
                    };
                    generation += 1;
                    // The first table is the start-up sync, not a change: no latency sample.
                    let oldest = oldest_unpublished.take().filter(|_| generation > 1);
                    shared.status.lock().expect("status lock").compile_error = None;
                    let c = compiler.as_ref().expect("compiled");
                    compact_at =
                        (c.stale_share() >= cfg.compact_share).then(|| Instant::now() + cfg.compact_after);
                    publish_now(&mut out, &index, c, how, generation, oldest);
                    add_cross_object_warnings(&shared, &index).await;
                }
            } else if let Some(c) = compiler.as_mut() {
                compact_at = None;
                let t0 = Instant::now();
                // A full compile, so guarded as one: a panic keeps the table in force.
                let compacted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    #[cfg(test)]
                    if tests::PANIC_IN_FULL.with(|p| p.replace(false)) {
                        panic!("injected by a test");
                    }
                    c.compact()
                }));
                if let Err(panic) = compacted {
                    let what = panic_message(&*panic);
                    tracing::error!(
                        panic = what,
                        "a compaction panicked (a bug: please report it); the table in force stays until a change compiles"
                    );
                    compiler = None;
                    shared.metrics.compile_failures.inc();
                    shared.status.lock().expect("status lock").compile_error =
                        Some(format!("a compaction panicked: {what}"));
                    continue;
                }
                let c = compiler.as_ref().expect("compacted");
                generation += 1;
                let how = Compiled {
                    kinds: vec![Compilation::Full { reason: "compaction".into() }],
                    took: t0.elapsed(),
                };
                publish_now(&mut out, &index, c, how, generation, None);
                add_cross_object_warnings(&shared, &index).await;
            } else {
                compact_at = None;
            }
            continue;
        };
        // Changes postpone compaction until things are quiet again.
        if let Some(c) = compact_at.as_mut() {
            *c = Instant::now() + cfg.compact_after;
        }
        let Some(msg) = msg else { break };
        let now = Instant::now();
        let shadows = index.shadow_changes();
        match msg {
            SourceMsg::Change { source, change, seen } => {
                let kind = change_kind(&change);
                if index.apply(source, change) {
                    oldest_unpublished = Some(oldest_unpublished.map_or(seen, |o| o.min(seen)));
                    deadline.get_or_insert_with(|| due(last_publish));
                }
                touch(&shared, source, kind, now, None);
            }
            SourceMsg::Changes { source, changes, seen } => {
                let mut kinds = BTreeSet::new();
                let mut changed = false;
                for change in changes {
                    kinds.insert(change_kind(&change));
                    changed |= index.apply(source, change);
                }
                if changed {
                    oldest_unpublished = Some(oldest_unpublished.map_or(seen, |o| o.min(seen)));
                    deadline.get_or_insert_with(|| due(last_publish));
                }
                for kind in kinds {
                    touch(&shared, source, kind, now, None);
                }
            }
            SourceMsg::Synced { source, kind } => {
                synced.insert((source, kind));
                touch(&shared, source, kind, now, None);
                if let Ok(mut st) = shared.status.lock() {
                    if let Some(s) = st.sources.get_mut(&format!("{}/{}", source_name(source), kind.name())) {
                        s.synced = true;
                    }
                }
                if synced.is_superset(&expected) {
                    deadline.get_or_insert_with(|| due(last_publish));
                }
            }
            SourceMsg::Health { source, kind, error } => {
                for k in kind.map(|k| vec![k]).unwrap_or_else(|| KINDS.to_vec()) {
                    touch(&shared, source, k, now, Some(error.clone()));
                }
            }
            SourceMsg::Files(files, errors) => {
                let broken = files.iter().filter(|f| !f.errors.is_empty()).count() + errors.len();
                shared.metrics.file_errors.set(broken as i64);
                let mut st = shared.status.lock().expect("status lock");
                st.files = files;
                st.file_errors = errors;
            }
        }
        // A definition came to wait behind another's, or stopped waiting: the
        // warnings are brought up to date now (a publication, if one follows,
        // rebuilds them again; if its compile fails, these stand).
        if index.shadow_changes() != shadows && generation > 0 {
            refresh_warnings(&shared, &index).await;
        }
    }
    index
}

/// The warnings `/status` shows, rebuilt from the index as a publication
/// builds them (the objects' own, then those between objects).
async fn refresh_warnings(shared: &Shared, index: &Index) {
    let warnings: Vec<String> =
        index.problems().iter().filter(|p| p.severity == Severity::Warning).map(|p| p.to_string()).collect();
    shared.status.lock().expect("status lock").warnings = warnings;
    add_cross_object_warnings(shared, index).await;
}

fn change_kind(c: &crate::index::Change) -> Kind {
    match c {
        crate::index::Change::Apply(o) => o.kind(),
        crate::index::Change::Delete(k, ..) | crate::index::Change::Replace(k, _) => *k,
    }
}

/// Records an event from a source; `health` is `Some(None)` when it recovered,
/// `Some(Some(e))` when it failed, `None` for a plain event.
fn touch(shared: &Shared, source: SourceId, kind: Kind, now: Instant, health: Option<Option<String>>) {
    let name = format!("{}/{}", source_name(source), kind.name());
    let mut st = shared.status.lock().expect("status lock");
    let s = st.sources.entry(name).or_default();
    match health {
        Some(Some(e)) => {
            s.error = Some(e);
            s.unhealthy_since.get_or_insert(now);
        }
        Some(None) | None => {
            s.error = None;
            s.unhealthy_since = None;
            s.last_event = Some(now);
        }
    }
    let up = i64::from(s.error.is_none());
    drop(st);
    let label = SourceLabel { source: source_name(source).into(), kind: kind.name().into() };
    if up == 1 {
        shared.metrics.source_event_at.get_or_create(&label).set(unix_now());
    }
    shared.metrics.source_up.get_or_create(&label).set(up);
}

/// How a table was compiled, and how long that took.
struct Compiled {
    /// In the order applied: new and relabelled namespaces, pod changes,
    /// policy changes, then deleted namespaces.
    kinds: Vec<Compilation>,
    took: Duration,
}

/// Brings the compiler up to date with the index: patches when only
/// namespaces, pods and policies changed, a full compile of a fresh snapshot
/// otherwise (a relist, the first table, or after a patch panicked). A full
/// compile that panics (a bug) is an error: nothing is published, the table
/// in force stays, and the next call compiles in full again, rather than the
/// panic ending the daemon, whose restart would fail closed on every pod.
fn compile(
    index: &mut Index,
    compiler: &mut Option<IncrementalCompiler>,
    share_max: f64,
) -> Result<Compiled, String> {
    let t0 = Instant::now();
    let pending = index.take_pending();
    let patched =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| patch(pending, compiler, share_max)));
    let reason = match patched {
        Ok(Some(kinds)) => return Ok(Compiled { kinds, took: t0.elapsed() }),
        Ok(None) if compiler.is_some() => "objects relisted".to_string(),
        Ok(None) => "first table".to_string(),
        Err(panic) => {
            // A bug in the patch code: its state is suspect, so start over
            // from the index (what the table must equal anyway) rather than
            // let the panic end the daemon.
            let what = panic_message(&*panic);
            tracing::error!(panic = what, "a patch panicked; compiling the index in full");
            format!("a patch panicked: {what}")
        }
    };
    let (cluster, _) = index.snapshot();
    let fresh = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        if tests::PANIC_IN_FULL.with(|p| p.replace(false)) {
            panic!("injected by a test");
        }
        IncrementalCompiler::new(cluster)
    }));
    match fresh {
        Ok(c) => {
            *compiler = Some(c);
            Ok(Compiled { kinds: vec![Compilation::Full { reason }], took: t0.elapsed() })
        }
        Err(panic) => {
            *compiler = None;
            let what = panic_message(&*panic);
            tracing::error!(
                panic = what,
                "a full compile panicked (a bug: please report it); the table in force stays until a change compiles"
            );
            Err(format!("a full compile panicked: {what}"))
        }
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown")
}

/// The patch half of [`compile`]: `None` when `pending` needs a full compile
/// of a fresh snapshot (a relist, or no compiler yet).
fn patch(
    pending: Pending,
    compiler: &mut Option<IncrementalCompiler>,
    share_max: f64,
) -> Option<Vec<Compilation>> {
    #[cfg(test)]
    if tests::PANIC_IN_PATCH.with(|p| p.replace(false)) {
        panic!("injected by a test");
    }
    match (pending, compiler.as_mut()) {
        (Pending::Objects { namespaces, pods, policies }, Some(c)) => {
            // New and relabelled namespaces first: a pod or policy may live in
            // one that arrives in the same batch. Deleted ones last: their pods
            // and policies usually leave in the same batch, and a namespace
            // deleted while they remain is kept, relabelled, until they go.
            // One copy of the table for all of them (`batch`).
            let (deleted, namespaces): (Vec<_>, Vec<_>) =
                namespaces.into_iter().partition(|n| n.namespace.is_none());
            let kinds = c.batch(|c| {
                let mut kinds = Vec::new();
                if !namespaces.is_empty() {
                    kinds.push(c.apply_namespaces(namespaces));
                }
                if !pods.is_empty() {
                    kinds.push(c.apply_pods(pods));
                }
                if !policies.is_empty() {
                    kinds.push(c.apply(policies));
                }
                if !deleted.is_empty() {
                    kinds.push(c.apply_namespaces(deleted));
                }
                kinds
            });
            let patched_only = kinds.iter().all(|k| !matches!(k, Compilation::Full { .. }));
            // Changes that never pause for a compaction: compact now, at the cost of this one.
            Some(if patched_only && c.stale_share() >= share_max {
                c.compact();
                vec![Compilation::Full { reason: "unused data from patches past its bound".into() }]
            } else {
                kinds
            })
        }
        _ => None,
    }
}

/// What a pod or namespace patch rebuilt beyond its own objects, for
/// `compilation`: namespaces whose sides were rebuilt, and sides elsewhere
/// that got new identity blocks' keys.
fn patched_sides(namespaces: &[String], rekeyed: usize) -> String {
    let mut s = String::new();
    if !namespaces.is_empty() {
        s += &format!(" and of namespace(s) {}", namespaces.join(", "));
    }
    if rekeyed > 0 {
        s += &format!(" and of {rekeyed} side(s) elsewhere (new keys)");
    }
    s
}

/// Adds the problems between objects (missing namespaces, shared pod IPs)
/// to `/status` warnings. It walks every object, so it runs after a
/// publication, and after yielding once: the task that measures when the
/// workers enforce the new table, woken by the publication, runs first
/// instead of waiting for the walk.
async fn add_cross_object_warnings(shared: &Shared, index: &Index) {
    tokio::task::yield_now().await;
    let cross: Vec<String> = index.cross_object_problems().iter().map(|p| p.to_string()).collect();
    if !cross.is_empty() {
        shared.status.lock().expect("status lock").warnings.extend(cross);
    }
}

/// Where publications go: the workers (through `publish`), status, metrics
/// and logs.
struct Output<'a> {
    shared: &'a Shared,
    publish: Publisher,
    /// Invalid objects already logged (each is logged once).
    logged: BTreeSet<String>,
    port_pods: &'a [Option<(String, String)>],
}

fn publish_now(
    out: &mut Output<'_>,
    index: &Index,
    compiler: &IncrementalCompiler,
    how: Compiled,
    generation: u64,
    oldest_change: Option<Instant>,
) {
    let Output { shared, publish, logged, port_pods } = out;
    let logged = &mut *logged;
    let problems = index.problems();
    // Compile time includes the copy a publication takes.
    let t1 = Instant::now();
    let table = compiler.shared_table();
    let compile = how.took + t1.elapsed();
    let compilation: Vec<String> = how
        .kinds
        .iter()
        .map(|k| match k {
            Compilation::Full { reason } => format!("full ({reason})"),
            Compilation::Patched { namespaces } => format!("patch of namespace(s) {}", namespaces.join(", ")),
            Compilation::PodsPatched { pods, namespaces, rekeyed } => {
                format!("patch of {pods} pod(s){}", patched_sides(namespaces, *rekeyed))
            }
            Compilation::NamespacesPatched { changed, namespaces, rekeyed } => {
                format!("patch of {changed} namespace change(s){}", patched_sides(namespaces, *rekeyed))
            }
        })
        .collect();
    let compilation =
        if compilation.is_empty() { "no change".to_string() } else { compilation.join(", then ") };
    let stats = table.stats().clone();
    // Policies whose ipBlock rules the compiler left out (fail closed) for
    // their size: errors, as invalid ones are.
    let too_large = if stats.dropped_ipblock_namespaces > 0 { table.budget_problems() } else { Vec::new() };
    let port_addresses = port_pods
        .iter()
        .map(|p| {
            p.as_ref()
                .map(|(ns, name)| compiler.cluster().pod(ns, name).map(|p| p.ips.clone()).unwrap_or_default())
        })
        .collect();
    publish(Publication { generation, table, oldest_change, port_addresses });
    let published = Instant::now();
    let m = &shared.metrics;
    m.generation.set(generation as i64);
    m.published_at.set(unix_now());
    m.ready.set(1);
    m.compile_seconds.observe(compile.as_secs_f64());
    let change_to_publish = oldest_change.map(|c| (published - c).as_secs_f64());
    if let Some(secs) = change_to_publish {
        m.change_to_publish_seconds.observe(secs);
    }
    let counts = index.counts();
    for k in KINDS {
        m.objects
            .get_or_create(&KindLabel { kind: k.name().into() })
            .set(*counts.get(&k).unwrap_or(&0) as i64);
    }
    let invalid: Vec<String> = problems
        .iter()
        .chain(&too_large)
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.to_string())
        .collect();
    // The objects' own warnings; those between objects follow (see
    // `add_cross_object_warnings`).
    let warnings: Vec<String> =
        problems.iter().filter(|p| p.severity == Severity::Warning).map(|p| p.to_string()).collect();
    m.invalid.set(invalid.len() as i64);
    let now_set: BTreeSet<String> = invalid.iter().cloned().collect();
    for p in now_set.difference(logged) {
        tracing::error!(problem = %p, "invalid object or policy past the ipBlock budget: fail closed (the message says what)");
    }
    *logged = now_set;
    tracing::info!(
        generation,
        namespaces = stats.namespaces,
        pods = stats.pods,
        policies = stats.policies,
        invalid = invalid.len(),
        compile_ms = compile.as_secs_f64() * 1e3,
        compilation = %compilation,
        change_to_publish_ms = change_to_publish.map(|s| s * 1e3),
        "decision table published"
    );
    let mut st = shared.status.lock().expect("status lock");
    st.ready = true;
    st.table_generation = generation;
    st.table_published_unix =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
    st.compile_ms = Some(compile.as_secs_f64() * 1e3);
    st.compilation = Some(compilation);
    if let Some(secs) = change_to_publish {
        st.latency.change_to_publish.push(secs);
    }
    st.objects = KINDS.iter().map(|k| (k.name().to_string(), *counts.get(k).unwrap_or(&0))).collect();
    st.table = stats;
    st.invalid = invalid;
    st.warnings = warnings;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Change, Object};
    use crate::sources::KUBE;
    use std::net::IpAddr;

    thread_local! {
        /// Makes the next `patch` on this thread panic.
        pub(super) static PANIC_IN_PATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        pub(super) static PANIC_IN_FULL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A panic in the patch code (a bug) costs a full compile of the index,
    /// not the daemon.
    #[test]
    fn a_panicking_patch_falls_back_to_a_full_compile_of_the_index() {
        let mut index = Index::new();
        let mut compiler = None;
        let pod = |name: &str, ip: &str| -> Object {
            Object::Pod(Box::new(yaml(&format!(
                "metadata: {{name: {name}, namespace: a, labels: {{app: w}}}}\nstatus: {{podIP: {ip}, phase: Running}}"
            ))))
        };
        index.apply(0, Change::Apply(pod("p0", "10.1.0.1")));
        index.apply(
            0,
            Change::Apply(Object::NetworkPolicy(Box::new(yaml(
                "metadata: {name: deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Ingress]}",
            )))),
        );
        compile(&mut index, &mut compiler, 4.0).unwrap();
        index.apply(0, Change::Apply(pod("p1", "10.1.0.2")));
        PANIC_IN_PATCH.with(|p| p.set(true));
        let how = compile(&mut index, &mut compiler, 4.0).unwrap();
        assert!(
            matches!(&how.kinds[..], [Compilation::Full { reason }] if reason == "a patch panicked: injected by a test"),
            "{:?}",
            how.kinds
        );
        let c = compiler.as_ref().unwrap();
        assert_eq!(c.cluster(), &index.snapshot().0);
        let (p0, p1): (IpAddr, IpAddr) = ("10.1.0.1".parse().unwrap(), "10.1.0.2".parse().unwrap());
        assert!(!c.table().verdict(p0, p1, 6, 80).allowed(), "p1 is isolated by the deny-all");
        // The next change patches again.
        index.apply(0, Change::Delete(Kind::Pod, "a".into(), "p1".into()));
        let how = compile(&mut index, &mut compiler, 4.0).unwrap();
        assert!(matches!(&how.kinds[..], [Compilation::PodsPatched { .. }]), "{:?}", how.kinds);

        // A full compile that panics is an error, with no compiler left: the
        // caller publishes nothing, and the next change compiles in full.
        index.apply(0, Change::Apply(pod("p2", "10.1.0.3")));
        PANIC_IN_PATCH.with(|p| p.set(true));
        PANIC_IN_FULL.with(|p| p.set(true));
        let e = compile(&mut index, &mut compiler, 4.0).err().unwrap();
        assert_eq!(e, "a full compile panicked: injected by a test");
        assert!(compiler.is_none());
        index.apply(0, Change::Apply(pod("p3", "10.1.0.4")));
        let how = compile(&mut index, &mut compiler, 4.0).unwrap();
        assert!(matches!(&how.kinds[..], [Compilation::Full { .. }]), "{:?}", how.kinds);
        let c = compiler.as_ref().unwrap();
        assert_eq!(c.cluster(), &index.snapshot().0, "p2 and p3 both in");
    }

    #[test]
    fn recent_latencies_give_nearest_rank_quantiles_over_the_last_samples() {
        let mut r = Recent::default();
        assert_eq!(r.quantile_ms(0.5), None);
        for i in 1..=100 {
            r.push(f64::from(i) / 1000.0);
        }
        assert_eq!(r.quantile_ms(0.5), Some(50.0));
        assert_eq!(r.quantile_ms(0.99), Some(99.0));
        assert_eq!(r.quantile_ms(1.0), Some(100.0));
        for _ in 0..Recent::KEEP {
            r.push(0.002);
        }
        assert_eq!(r.quantile_ms(1.0), Some(2.0), "old samples are forgotten");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["samples"], Recent::KEEP);
        assert_eq!(v["p99_ms"], 2.0);
    }

    type Published = Arc<Mutex<Vec<(u64, Arc<DecisionTable>)>>>;

    fn publisher() -> (Publisher, Published) {
        let out: Published = Arc::default();
        let o = out.clone();
        (Box::new(move |p: Publication| o.lock().unwrap().push((p.generation, p.table))), out)
    }

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).unwrap()
    }

    /// An owner of one Kubernetes source, debounce 50 ms, compaction at `compact_share`.
    fn start_owner(
        compact_share: f64,
    ) -> (mpsc::Sender<SourceMsg>, Arc<Shared>, Published, tokio::task::JoinHandle<Index>) {
        let (tx, rx) = mpsc::channel(64);
        let shared = Shared::new();
        let (publish, out) = publisher();
        let mut cfg = OwnerConfig::new(Duration::from_millis(50), vec![KUBE]);
        cfg.compact_share = compact_share;
        let owner = tokio::spawn(run_owner(rx, shared.clone(), publish, cfg));
        (tx, shared, out, owner)
    }

    fn change(c: Change) -> SourceMsg {
        SourceMsg::Change { source: KUBE, change: c, seen: Instant::now() }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_published_before_every_kind_synced_then_changes_are_debounced() {
        // No compaction: every publication below is a change's.
        let (tx, shared, out, owner) = start_owner(f64::INFINITY);
        let pod: Object =
            Object::Pod(Box::new(yaml("metadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}")));
        tx.send(change(Change::Replace(Kind::Pod, vec![pod]))).await.unwrap();
        tx.send(SourceMsg::Synced { source: KUBE, kind: Kind::Pod }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(out.lock().unwrap().is_empty(), "partial state must not be published");
        assert!(!shared.ready());
        for k in [Kind::Namespace, Kind::NetworkPolicy] {
            tx.send(change(Change::Replace(k, vec![]))).await.unwrap();
            tx.send(SourceMsg::Synced { source: KUBE, kind: k }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(out.lock().unwrap().len(), 1);
        assert!(shared.ready());
        // A burst: the first change is compiled at once (leading edge), the rest
        // together one debounce period later.
        for i in 0..5 {
            let p: Object = Object::NetworkPolicy(Box::new(yaml(&format!(
                "metadata: {{name: p{i}, namespace: x}}\nspec: {{podSelector: {{}}}}"
            ))));
            tx.send(change(Change::Apply(p))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        {
            let out = out.lock().unwrap();
            assert_eq!(out.len(), 3);
            let (g, t) = &out[2];
            assert_eq!(*g, 3);
            let a: IpAddr = "10.0.0.1".parse().unwrap();
            let other: IpAddr = "10.9.9.9".parse().unwrap();
            assert!(!t.verdict(other, a, 6, 80).allowed());
        }
        // A lost source changes nothing in force and is visible in the status.
        tx.send(SourceMsg::Health { source: KUBE, kind: None, error: Some("connection refused".into()) })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let st = shared.status_now();
        assert_eq!(st.table_generation, 3);
        let pods = &st.sources["kubernetes/Pod"];
        assert_eq!(pods.error.as_deref(), Some("connection refused"));
        assert!(pods.unhealthy_for_seconds.unwrap() >= 3.0);
        assert_eq!(out.lock().unwrap().len(), 3);
        drop(tx);
        owner.await.unwrap();
    }

    /// A definition from the manifests that waits behind the cluster's is
    /// reported at once, and the report goes when it does, with nothing
    /// published (nothing in force changed).
    #[tokio::test(start_paused = true)]
    async fn a_definition_waiting_behind_another_is_reported_without_a_publication() {
        use crate::sources::MANIFESTS;
        let (tx, rx) = mpsc::channel(64);
        let shared = Shared::new();
        let (publish, out) = publisher();
        let cfg = OwnerConfig::new(Duration::from_millis(50), vec![KUBE, MANIFESTS]);
        let owner = tokio::spawn(run_owner(rx, shared.clone(), publish, cfg));
        let policy = |port: u16| -> Object {
            Object::NetworkPolicy(Box::new(yaml(&format!(
                "metadata: {{name: p, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {port}}}]}}]}}"
            ))))
        };
        let ns: Object = Object::Namespace(Box::new(yaml("metadata: {name: x}")));
        for source in [KUBE, MANIFESTS] {
            for k in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
                let objs = match (source, k) {
                    (KUBE, Kind::Namespace) => vec![ns.clone()],
                    (KUBE, Kind::NetworkPolicy) => vec![policy(80)],
                    _ => vec![],
                };
                tx.send(SourceMsg::Change { source, change: Change::Replace(k, objs), seen: Instant::now() })
                    .await
                    .unwrap();
                tx.send(SourceMsg::Synced { source, kind: k }).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(out.lock().unwrap().len(), 1);
        let waiting = |shared: &Shared| {
            shared.status_now().warnings.iter().any(|w| w.contains("also defined by manifests"))
        };
        assert!(!waiting(&shared));
        let from_file = |c| SourceMsg::Change { source: MANIFESTS, change: c, seen: Instant::now() };
        tx.send(from_file(Change::Apply(policy(81)))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(waiting(&shared), "{:?}", shared.status_now().warnings);
        tx.send(from_file(Change::Delete(Kind::NetworkPolicy, "x".into(), "p".into()))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting(&shared), "{:?}", shared.status_now().warnings);
        assert_eq!(out.lock().unwrap().len(), 1, "nothing in force changed");
        drop(tx);
        owner.await.unwrap();
    }

    /// A full compile that panics publishes nothing: the table in force
    /// stays, `/status` and the metrics say why, and the next change compiles.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_full_compile_keeps_the_table_in_force() {
        let (tx, shared, out, owner) = start_owner(f64::INFINITY);
        for k in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
            tx.send(change(Change::Replace(k, vec![]))).await.unwrap();
            tx.send(SourceMsg::Synced { source: KUBE, kind: k }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(out.lock().unwrap().len(), 1);
        let policy = |i: usize| -> Object {
            Object::NetworkPolicy(Box::new(yaml(&format!(
                "metadata: {{name: p{i}, namespace: x}}\nspec: {{podSelector: {{}}}}"
            ))))
        };
        // The owner runs on this thread (a current-thread runtime): the injection reaches it.
        PANIC_IN_PATCH.with(|p| p.set(true));
        PANIC_IN_FULL.with(|p| p.set(true));
        tx.send(change(Change::Apply(policy(1)))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(out.lock().unwrap().len(), 1, "nothing published");
        let st = shared.status_now();
        assert_eq!(st.table_generation, 1);
        assert_eq!(st.compile_error.as_deref(), Some("a full compile panicked: injected by a test"));
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &shared.registry.lock().unwrap()).unwrap();
        assert!(metrics.contains("portcullis_compile_failures_total 1"), "{metrics}");
        // The next change compiles both policies in full and publishes.
        tx.send(change(Change::Apply(policy(2)))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(out.lock().unwrap().len(), 2);
        let st = shared.status_now();
        assert_eq!((st.table_generation, st.compile_error), (2, None));
        assert_eq!(st.objects["NetworkPolicy"], 2);
        assert_eq!(st.table.policies, 2);
        drop(tx);
        owner.await.unwrap();
    }

    /// The same for a compaction in quiet time, which is a full compile too.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_compaction_keeps_the_table_in_force() {
        // Any patch asks for a compaction.
        let (tx, shared, out, owner) = start_owner(0.0);
        for k in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
            tx.send(change(Change::Replace(k, vec![]))).await.unwrap();
            tx.send(SourceMsg::Synced { source: KUBE, kind: k }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let policy = |i: usize| -> Object {
            Object::NetworkPolicy(Box::new(yaml(&format!(
                "metadata: {{name: p{i}, namespace: x}}\nspec: {{podSelector: {{}}}}"
            ))))
        };
        tx.send(change(Change::Apply(policy(1)))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(out.lock().unwrap().len(), 2, "first table, then the patch");
        PANIC_IN_FULL.with(|p| p.set(true));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(out.lock().unwrap().len(), 2, "the compaction published nothing");
        let st = shared.status_now();
        assert_eq!(st.table_generation, 2);
        assert_eq!(st.compile_error.as_deref(), Some("a compaction panicked: injected by a test"));
        // The next change compiles in full.
        tx.send(change(Change::Apply(policy(2)))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = shared.status_now();
        assert_eq!((st.table_generation, st.compile_error, st.table.policies), (3, None, 2));
        drop(tx);
        owner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn policy_pod_and_namespace_changes_are_patched_and_quiet_time_compacts() {
        // Any patch asks for a compaction.
        let (tx, shared, out, owner) = start_owner(0.0);
        let labelled = |name: &str, app: &str, ip: &str| -> Object {
            Object::Pod(Box::new(yaml(&format!(
                "metadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}"
            ))))
        };
        let pod = |name: &str, ip: &str| labelled(name, name, ip);
        let allow_from_b = |port: u16| -> Object {
            Object::NetworkPolicy(Box::new(yaml(&format!(
                "metadata: {{name: to-a, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: b}}}}}}], ports: [{{port: {port}}}]}}]"
            ))))
        };
        tx.send(change(Change::Replace(Kind::Namespace, vec![]))).await.unwrap();
        tx.send(change(Change::Replace(Kind::Pod, vec![pod("a", "10.0.0.1"), pod("b", "10.0.0.2")])))
            .await
            .unwrap();
        tx.send(change(Change::Replace(Kind::NetworkPolicy, vec![allow_from_b(80)]))).await.unwrap();
        for k in KINDS {
            tx.send(SourceMsg::Synced { source: KUBE, kind: k }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.status_now().compilation.as_deref(), Some("full (first table)"));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let verdict = |port| out.lock().unwrap().last().unwrap().1.verdict(b, a, 6, port).allowed();
        assert!(verdict(80) && !verdict(81));

        // A policy edit: a patch of its namespace, with the new verdicts.
        tx.send(change(Change::Apply(allow_from_b(81)))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.status_now().compilation.as_deref(), Some("patch of namespace(s) x"));
        assert!(!verdict(80) && verdict(81));
        assert!(shared.status_now().table.replaced_sides > 0);
        let generation = shared.status_now().table_generation;

        // Quiet for `compact_after`: a full compile drops the replaced sides,
        // with the same verdicts and no latency sample.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let st = shared.status_now();
        assert_eq!(st.table_generation, generation + 1);
        assert_eq!(st.compilation.as_deref(), Some("full (compaction)"));
        assert_eq!(st.table.replaced_sides, 0);
        assert!(st.latency.change_to_publish.quantile_ms(1.0).is_some());
        assert!(!verdict(80) && verdict(81));

        // A pod with labels no pod of its namespace had: its namespace's sides are rebuilt too.
        tx.send(change(Change::Apply(pod("c", "10.0.0.3")))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            shared.status_now().compilation.as_deref(),
            Some("patch of 1 pod(s) and of namespace(s) x")
        );
        // A pod in a namespace the table does not know: the namespace is
        // assumed (only its name label), the pod is the first identity of
        // its own new block, and only its own namespace's sides are built.
        let elsewhere = "metadata: {name: d, namespace: w}\nstatus: {podIP: 10.0.0.9}";
        tx.send(change(Change::Apply(Object::Pod(Box::new(yaml(elsewhere)))))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            shared.status_now().compilation.as_deref(),
            Some("patch of 1 pod(s) and of namespace(s) w")
        );
        // Its Namespace object, arriving later with a label: a patch too.
        let w = Object::Namespace(Box::new(yaml("metadata: {name: w, labels: {team: blue}}")));
        tx.send(change(Change::Apply(w))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.status_now().compilation.as_deref(), Some("patch of 1 namespace change(s)"));
        assert_eq!(shared.status_now().table.namespaces, 2);

        // Another replica of b: a patch of that pod alone, and it is let in like b.
        let b2: IpAddr = "10.0.0.4".parse().unwrap();
        let from = |src, port| out.lock().unwrap().last().unwrap().1.verdict(src, a, 6, port).allowed();
        assert!(!from(b2, 81), "not a pod yet: a's ingress denies it");
        tx.send(change(Change::Apply(labelled("b2", "b", "10.0.0.4")))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.status_now().compilation.as_deref(), Some("patch of 1 pod(s)"));
        assert!(from(b2, 81) && !from(b2, 80));
        assert_eq!(shared.status_now().table.pods, 5);

        // b leaves: patched too, and its address is no longer let in.
        tx.send(change(Change::Delete(Kind::Pod, "x".into(), "b".into()))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.status_now().compilation.as_deref(), Some("patch of 1 pod(s)"));
        assert!(!from(b, 81) && from(b2, 81));
        assert_eq!(shared.status_now().table.pods, 4);
        drop(tx);
        owner.await.unwrap();
    }

    /// Random object changes from two sources, in batches, through the
    /// index and `compile` as the daemon runs them (patches where it can):
    /// after every compile the compiler holds exactly the index's snapshot,
    /// and its table gives the verdicts and reasons of a full compile of
    /// that snapshot. The mix reaches every path: pods with and without
    /// addresses, disputed addresses, rollouts (a `hash` label), a policy
    /// that reads `hash` (so it splits those), policies that select nothing
    /// yet, namespaces relabelled and deleted, and deletes from a source
    /// that does not own the object. The seed is fixed; `PORTCULLIS_TEST_SEED=N`
    /// explores others.
    #[test]
    fn random_changes_compile_to_what_a_full_compile_of_the_index_gives() {
        let mut state = std::env::var("PORTCULLIS_TEST_SEED").map_or(0x5eed_u64, |s| s.parse().unwrap());
        let mut next = move |n: u64| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        };
        let policies = [
            "podSelector: {matchLabels: {app: d}}, ingress: [{from: [{podSelector: {matchLabels: {app: w}}}], ports: [{port: 80}]}]",
            "podSelector: {}, policyTypes: [Ingress]",
            "podSelector: {matchLabels: {app: w}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {team: x}}}]}]",
            "podSelector: {matchExpressions: [{key: hash, operator: Exists}]}, ingress: [{from: [{podSelector: {matchLabels: {hash: h1}}}]}]",
            "podSelector: {matchLabels: {app: d}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: w}}}], ports: [{port: 81}]}]",
            "podSelector: {matchLabels: {app: none-yet}}, ingress: [{from: [{podSelector: {matchLabels: {app: d}}}]}]",
        ];
        let ips: Vec<IpAddr> = (1..=16).map(|i| format!("10.1.0.{i}").parse().unwrap()).collect();
        let (mut patched, mut full_compiles) = (0, 0);
        for case in 0..150 {
            let mut index = Index::new();
            let mut compiler: Option<IncrementalCompiler> = None;
            for step in 0..30 {
                let source = next(2) as u16;
                let ns = ["a", "b", "c"][next(3) as usize];
                let change = match next(24) {
                    0 => {
                        let labels = ["{}", "{team: x}", "{team: y}"][next(3) as usize];
                        Change::Apply(Object::Namespace(Box::new(yaml(&format!(
                            "metadata: {{name: {ns}, labels: {labels}}}"
                        )))))
                    }
                    1 => Change::Delete(Kind::Namespace, String::new(), ns.into()),
                    2..=13 => {
                        let app = ["w", "d"][next(2) as usize];
                        let hash = ["", ", hash: h0", ", hash: h1", ", hash: h2"][next(4) as usize];
                        let status = match next(6) {
                            0 => "{phase: Pending}".to_string(),
                            _ => format!("{{podIP: {}, phase: Running}}", ips[next(16) as usize]),
                        };
                        Change::Apply(Object::Pod(Box::new(yaml(&format!(
                            "metadata: {{name: p{}, namespace: {ns}, labels: {{app: {app}{hash}}}}}\nstatus: {status}",
                            next(6)
                        )))))
                    }
                    14..=17 => Change::Delete(Kind::Pod, ns.into(), format!("p{}", next(6))),
                    18..=21 => Change::Apply(Object::NetworkPolicy(Box::new(yaml(&format!(
                        "metadata: {{name: q{}, namespace: {ns}}}\nspec: {{{}}}",
                        next(4),
                        policies[next(policies.len() as u64) as usize]
                    ))))),
                    _ => Change::Delete(Kind::NetworkPolicy, ns.into(), format!("q{}", next(4))),
                };
                index.apply(source, change);
                if next(3) == 0 {
                    continue; // a batch of several changes
                }
                let how = compile(&mut index, &mut compiler, 4.0).unwrap();
                for k in &how.kinds {
                    match k {
                        Compilation::Full { .. } => full_compiles += 1,
                        _ => patched += 1,
                    }
                }
                let c = compiler.as_ref().unwrap();
                let (snapshot, _) = index.snapshot();
                // The same snapshot: pods, policies, and namespaces (those
                // of Namespace objects, and those assumed because pods or
                // policies live in them, which leave with the last of them).
                assert_eq!(c.cluster(), &snapshot, "case {case} step {step}");
                let (t, full) = (c.table(), DecisionTable::compile(&snapshot));
                for &s in &ips {
                    for &d in &ips {
                        for port in [80, 81] {
                            let (a, b) = (t.verdict_both(s, d, 6, port), full.verdict_both(s, d, 6, port));
                            let what = format!(
                                "case {case} step {step}: {s} -> {d} tcp/{port} after {:?}",
                                how.kinds
                            );
                            // Verdict, both sides' rule or isolating policies, and pod names.
                            assert_eq!(
                                crate::report::verdict_json(t, s, d, 6, port, &a),
                                crate::report::verdict_json(&full, s, d, 6, port, &b),
                                "{what}"
                            );
                        }
                    }
                }
            }
        }
        // Both paths ran, the patches most.
        assert!(patched > full_compiles && full_compiles > 100, "{patched} patched, {full_compiles} full");
    }
}
