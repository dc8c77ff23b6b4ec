//! Policy sources: tasks that turn the Kubernetes API or a manifest
//! directory into [`Change`]s for the index owner.
//!
//! ```text
//!  kube watcher (Namespace) ─┐
//!  kube watcher (Pod)        ├─▶ mpsc<SourceMsg> ─▶ index owner (daemon.rs)
//!  kube watcher (NetPolicy)  │
//!  manifest dir ─────────────┘  (read when inotify reports a change,
//!                                and every 200 ms in any case)
//! ```
//!
//! One task per watched kind. Each watcher lists, then watches; on an error
//! it reconnects with backoff (exponential, capped, started over once the
//! source delivers again, a complete list or a watch event, or is found back
//! by a probe, or after two minutes without a failure), and when it has to list again (its resourceVersion expired, HTTP 410) the
//! complete list replaces that kind's objects, so a delete that happened while
//! disconnected is not lost. The index keeps only the validated, compiler-
//! relevant form of each object; no full copy of the cluster is kept.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;

use crate::index::{Change, Kind, Object};
use crate::manifest_dir::{FileStatus, ManifestDir};

/// Identifies a source in messages and in the index (a relist only replaces its own objects).
pub type SourceId = u16;

/// Source id of the Kubernetes API.
pub const KUBE: SourceId = 1;
/// Source id of the manifest directory.
pub const MANIFESTS: SourceId = 2;

/// A source's name in status, metrics and messages.
pub fn source_name(s: SourceId) -> &'static str {
    match s {
        KUBE => "kubernetes",
        MANIFESTS => "manifests",
        _ => "other",
    }
}

/// What a source tells the index owner.
#[derive(Debug)]
pub enum SourceMsg {
    /// A change to apply.
    Change {
        /// Which source.
        source: SourceId,
        /// The change.
        change: Change,
        /// When the source saw it (for change-to-enforced latency).
        seen: Instant,
    },
    /// Several changes seen together (one scan of a manifest directory),
    /// applied as one: the owner compiles once for all of them.
    Changes {
        /// Which source.
        source: SourceId,
        /// The changes, in order.
        changes: Vec<Change>,
        /// When the source saw them.
        seen: Instant,
    },
    /// A kind of this source completed a full list (it is synced).
    Synced {
        /// Which source.
        source: SourceId,
        /// Which kind.
        kind: Kind,
    },
    /// The source lost or regained its connection.
    Health {
        /// Which source.
        source: SourceId,
        /// Which kind (None: the whole source).
        kind: Option<Kind>,
        /// `None` when healthy, else the last error.
        error: Option<String>,
    },
    /// Per-file state of the manifest directory.
    Files(Vec<FileStatus>, Vec<String>),
}

/// Strips a pod to what the compiler reads (labels, IPs, phase, host network,
/// the ports of its containers and sidecars), so even transient copies stay small.
pub fn strip_pod(p: corev1::Pod) -> corev1::Pod {
    let spec = p.spec.map(|s| corev1::PodSpec {
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .map(|c| corev1::Container { name: c.name, ports: c.ports, ..Default::default() })
            .collect(),
        // Sidecars (`restartPolicy: Always`) serve their ports while the pod
        // runs; every init container is kept, so problems name the right index.
        init_containers: s.init_containers.map(|cs| {
            cs.into_iter()
                .map(|c| corev1::Container {
                    name: c.name,
                    ports: c.ports,
                    restart_policy: c.restart_policy,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
    let status = p.status.map(|s| corev1::PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
    corev1::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: p.metadata.name,
            namespace: p.metadata.namespace,
            labels: p.metadata.labels,
            ..Default::default()
        },
        spec,
        status,
    }
}

/// After a watch error, how long without another one before the source is
/// probed and, if the API answers, reported healthy again: longer than the
/// watcher's longest wait between attempts plus one failing attempt, so that
/// a watch still failing is seen failing again first. The backoff caps at
/// 30 s and adds up to as much again at random (60 s), and an attempt may
/// take the client's 30 s connect timeout to fail. (A list under way is not
/// probed: its own end says whether the source is back. A request to open a
/// watch that stalls on a half-open connection fails only after
/// [`KUBE_READ_TIMEOUT`]; the probe, on a connection of its own, may find
/// the API server back before that, and the stalled watch then fails and is
/// reported again.)
pub const RECOVERY_QUIET: std::time::Duration = std::time::Duration::from_secs(90);

/// The recovery probe's longest wait for its list: the watch stream is not
/// polled meanwhile, and a half-open connection would otherwise hold it for
/// as long as the kernel retransmits.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest silence of the API server on a request before it fails:
/// longer than a healthy watch is ever silent (kube-runtime's watcher ends a
/// watch that has delivered nothing for 295 s and opens a new one from where
/// it was), so only a stalled request (a list or a watch request on a
/// connection that died half-open) reaches it. Without it such a request
/// waits as long as the connection lasts, silently: at start the node never
/// gets ready, and a relist leaves the table stale while the source still
/// looks up.
pub const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// The client configuration with [`KUBE_READ_TIMEOUT`] on every response
/// (counted from the request, not from when its pooled connection went idle).
pub fn bounded_reads(config: kube::Config) -> kube::Config {
    bounded_reads_after(config, KUBE_READ_TIMEOUT)
}

fn bounded_reads_after(mut config: kube::Config, timeout: Duration) -> kube::Config {
    config.read_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    config
}

/// Runs the three watchers until the channel closes.
pub async fn run_kube(client: Client, tx: mpsc::Sender<SourceMsg>) {
    let ns = watch_kind(Api::<corev1::Namespace>::all(client.clone()), Kind::Namespace, tx.clone(), |o| {
        Object::Namespace(Box::new(o))
    });
    let pods = watch_kind(Api::<corev1::Pod>::all(client.clone()), Kind::Pod, tx.clone(), |o| {
        Object::Pod(Box::new(strip_pod(o)))
    });
    let pols = watch_kind(Api::<netv1::NetworkPolicy>::all(client), Kind::NetworkPolicy, tx, |o| {
        Object::NetworkPolicy(Box::new(o))
    });
    futures::join!(ns, pods, pols);
}

/// Waits between attempts after a watch or list error: 0.8 s, doubling up
/// to 30 s, plus a random part of up to as much again (so that the nodes of
/// a cluster do not retry in step), as kube-runtime's default backoff.
/// Started over when the source delivers again or is found back (see
/// [`watch_kind`]), and at a failure more than [`Backoff::FORGET`] after
/// the one before.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    last: Option<tokio::time::Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(800);
    const LONGEST: Duration = Duration::from_secs(30);
    /// Failures further apart than this are separate outages (kube-runtime's
    /// default backoff forgets after 120 s too).
    const FORGET: Duration = Duration::from_secs(120);

    fn next(&mut self) -> Duration {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|l| now - l > Self::FORGET) {
            self.failures = 0;
        }
        self.last = Some(now);
        let base = Self::FIRST.saturating_mul(1 << self.failures.min(16)).min(Self::LONGEST);
        self.failures = self.failures.saturating_add(1);
        // A random fraction of `base`, from the standard library's per-process random keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(self.failures);
        let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        base + base.mul_f64(fraction)
    }
}

async fn watch_kind<K>(api: Api<K>, kind: Kind, tx: mpsc::Sender<SourceMsg>, wrap: impl Fn(K) -> Object)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let cfg = watcher::Config::default();
    let probe = api.clone();
    // Not kube-runtime's `default_backoff()`: that starts over at every item
    // the watcher yields, and a list yields `Init` before its request is
    // made, so a relist that keeps failing (an overloaded API server) would
    // be retried about once a second by every node, for as long as it fails.
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg));
    let mut backoff = Backoff::default();
    let mut buffer: Vec<Object> = Vec::new();
    let mut healthy = true;
    // Between `Init` and `InitDone`: a list is under way.
    let mut listing = false;
    let mut last_error = tokio::time::Instant::now();
    loop {
        let ev = if healthy || listing {
            stream.next().await
        } else {
            // A watch that comes back from an error without a relist yields
            // nothing until the next change, which may be days away. So: once
            // no error has come for longer than the longest backoff (a watch
            // still failing would have failed again), a cheap list that
            // succeeds says the source is back. Not while a list is under
            // way: only its end says the source delivers again.
            tokio::select! {
                ev = stream.next() => ev,
                () = tokio::time::sleep_until(last_error + RECOVERY_QUIET) => {
                    let lp = kube::api::ListParams::default().limit(1);
                    if matches!(tokio::time::timeout(PROBE_TIMEOUT, probe.list(&lp)).await, Ok(Ok(_))) {
                        healthy = true;
                        backoff = Backoff::default();
                        tracing::info!(kind = ?kind, "watch back after an error");
                        let m = SourceMsg::Health { source: KUBE, kind: Some(kind), error: None };
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    } else {
                        // Not yet: try again a quiet period from now.
                        last_error = tokio::time::Instant::now();
                    }
                    continue;
                }
            }
        };
        let Some(ev) = ev else { return };
        let msg = match ev {
            Ok(ev) => {
                // `Init` and `InitApply` come before and between a list's
                // requests: only a complete list or a watch event shows the
                // API server answering.
                if matches!(ev, Event::InitDone | Event::Apply(_) | Event::Delete(_)) {
                    backoff = Backoff::default();
                    if !healthy {
                        healthy = true;
                        if tx
                            .send(SourceMsg::Health { source: KUBE, kind: Some(kind), error: None })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                match ev {
                    Event::Init => {
                        listing = true;
                        buffer.clear();
                        continue;
                    }
                    Event::InitApply(o) => {
                        buffer.push(wrap(o));
                        continue;
                    }
                    Event::InitDone => {
                        listing = false;
                        let objs = std::mem::take(&mut buffer);
                        let m = SourceMsg::Change {
                            source: KUBE,
                            change: Change::Replace(kind, objs),
                            seen: Instant::now(),
                        };
                        if tx.send(m).await.is_err() {
                            return;
                        }
                        SourceMsg::Synced { source: KUBE, kind }
                    }
                    Event::Apply(o) => SourceMsg::Change {
                        source: KUBE,
                        change: Change::Apply(wrap(o)),
                        seen: Instant::now(),
                    },
                    Event::Delete(o) => {
                        let (ns, name) = wrap(o).key();
                        SourceMsg::Change {
                            source: KUBE,
                            change: Change::Delete(kind, ns, name),
                            seen: Instant::now(),
                        }
                    }
                }
            }
            Err(e) => {
                healthy = false;
                last_error = tokio::time::Instant::now();
                let wait = backoff.next();
                tracing::warn!(
                    kind = ?kind,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "watch failed; retrying with backoff, last table stays in force"
                );
                let m = SourceMsg::Health { source: KUBE, kind: Some(kind), error: Some(e.to_string()) };
                if tx.send(m).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// How long a burst of directory events (an editor's truncate-then-write, a
/// ConfigMap volume's symlink swap) may last before the directory is read.
const SETTLE: Duration = Duration::from_millis(20);

/// An inotify watch on the manifest directory: wakes the source when a file
/// in it is written, created, removed or renamed, so a change is read within
/// [`SETTLE`] instead of at the next poll. The polls go on (a change inotify
/// cannot see, such as on some network filesystems, is still read). A thread
/// blocks on the inotify descriptor; dropping the watch removes it, and the
/// kernel's `IN_IGNORED` event ends the thread.
struct DirWatch {
    fd: Arc<rustix::fd::OwnedFd>,
    wd: i32,
    woke: Arc<tokio::sync::Notify>,
    gone: Arc<AtomicBool>,
    /// Files created or written to (`IN_CREATE`, `IN_MODIFY`) and not closed
    /// since (`IN_CLOSE_WRITE`), with the time of the last such event.
    writing: Arc<Mutex<HashMap<OsString, std::time::Instant>>>,
}

/// Has the file `name` been created or written to and not closed since (the
/// last time less than [`LONGEST_WRITE`] ago), by [`DirWatch`]'s `writing`?
/// What it holds may be a prefix of what is being written (`kubectl get ...
/// > file` truncates it first).
fn being_written(writing: &Mutex<HashMap<OsString, std::time::Instant>>, name: &std::ffi::OsStr) -> bool {
    let open = writing.lock().unwrap_or_else(|p| p.into_inner());
    open.get(name).is_some_and(|since| since.elapsed() < LONGEST_WRITE)
}

/// A file written to and not closed is read anyway once it has not been
/// written to for this long (a writer that keeps it open, or a lost close
/// event).
const LONGEST_WRITE: Duration = Duration::from_secs(10);

impl DirWatch {
    fn new(dir: &str) -> std::io::Result<DirWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC)?);
        let events = WatchFlags::CLOSE_WRITE
            | WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF;
        let wd = inotify::add_watch(&*fd, dir, events)?;
        let (woke, gone) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicBool::new(false)));
        let writing: Arc<Mutex<HashMap<OsString, std::time::Instant>>> = Default::default();
        let (f, w, g, open) = (fd.clone(), woke.clone(), gone.clone(), writing.clone());
        let dir = std::path::PathBuf::from(dir);
        std::thread::Builder::new().name("manifest-watch".into()).spawn(move || {
            use rustix::fs::inotify::{ReadFlags, Reader};
            let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
            let mut events = Reader::new(&*f, &mut buf);
            loop {
                match events.next() {
                    // The watch was removed (by `drop`) or the directory went away.
                    Ok(e)
                        if e.events().intersects(
                            ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF,
                        ) =>
                    {
                        break
                    }
                    Ok(e) => {
                        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                        if e.events().contains(ReadFlags::QUEUE_OVERFLOW) {
                            // Events were lost, closes among them: nothing is
                            // known to be open (the wake-up rescans everything).
                            open.clear();
                        }
                        if let Some(name) = e.file_name() {
                            let name = OsString::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
                            // A file created empty (`> file`, `cp`) is being
                            // written (a symlink or hard link made in one step
                            // is not); each write restarts the wait.
                            let created_empty = || {
                                std::fs::symlink_metadata(dir.join(&name))
                                    .is_ok_and(|m| m.file_type().is_file() && m.len() == 0)
                            };
                            if e.events().contains(ReadFlags::MODIFY)
                                || e.events().contains(ReadFlags::CREATE) && created_empty()
                            {
                                open.insert(name, std::time::Instant::now());
                            } else if e.events().intersects(
                                ReadFlags::CLOSE_WRITE
                                    | ReadFlags::DELETE
                                    | ReadFlags::MOVED_FROM
                                    | ReadFlags::MOVED_TO,
                            ) {
                                open.remove(&name);
                            }
                        }
                        drop(open);
                        w.notify_one()
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => break,
                }
            }
            g.store(true, Ordering::SeqCst);
            w.notify_one();
        })?;
        Ok(DirWatch { fd, wd, woke, gone, writing })
    }

    /// Waits for an event. False when the watch is gone: the caller polls,
    /// and watches again once the directory is back.
    async fn changed(&self) -> bool {
        self.woke.notified().await;
        !self.gone.load(Ordering::SeqCst)
    }

    /// Forgets the events that came while the burst settled (they are read
    /// by the scan that follows).
    fn settled(&self) -> bool {
        let _ = futures::FutureExt::now_or_never(self.woke.notified());
        !self.gone.load(Ordering::SeqCst)
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Already gone when the directory was removed; nothing to do then.
        let _ = rustix::fs::inotify::remove_watch(&*self.fd, self.wd);
    }
}

/// Waits for the next scan: `interval`, or less when the directory watch
/// reports a change (then [`SETTLE`] more for the rest of the burst).
async fn next_scan(watch: &mut Option<DirWatch>, dir: &str, interval: Duration) {
    if watch.is_none() {
        *watch = DirWatch::new(dir).ok();
    }
    let Some(w) = watch.as_ref() else {
        tokio::time::sleep(interval).await;
        return;
    };
    let alive = tokio::select! {
        _ = tokio::time::sleep(interval) => return,
        alive = w.changed() => alive,
    };
    tokio::time::sleep(SETTLE).await;
    if !alive || !w.settled() {
        *watch = None;
    }
}

/// Reads a manifest directory when inotify reports a change in it, and
/// every `interval` in any case; sends every object in force once every
/// file has parsed (until then the source is not synced, so the dataplane
/// stays fail-closed), then the changes (computed per changed file) as they
/// come.
pub async fn run_manifests(dir: String, interval: Duration, tx: mpsc::Sender<SourceMsg>) {
    let mut watch = match DirWatch::new(&dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir, error = %e, "cannot watch the manifest directory (inotify); reading it every {interval:?} only");
            None
        }
    };
    let mut md = ManifestDir::new(&dir);
    let mut first = true;
    let mut last_report = String::new();
    let mut last_counts = Vec::new();
    let mut dir_down = false;
    loop {
        // File reads off the runtime's two threads (a large file is read in
        // full now and then, even unchanged).
        let open = watch.as_ref().map(|w| w.writing.clone());
        md = match tokio::task::spawn_blocking(move || {
            md.scan_except(&|name| open.as_ref().is_some_and(|o| being_written(o, name)));
            md
        })
        .await
        {
            Ok(md) => md,
            // The runtime is shutting down.
            Err(e) if e.is_cancelled() => return,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let changes = md.take_changes();
        // A definition that loses to an earlier file's changes nothing in force
        // but is a conflict: recomputed on every scan (it walks only the
        // objects defined twice).
        let conflicts = md.conflicts();
        let report = format!(
            "{:?}{:?}{:?}",
            md.status().iter().map(|s| &s.errors).collect::<Vec<_>>(),
            conflicts,
            md.dir_error()
        );
        // Each file's object count, and whether it is being written, is sent
        // too when it changes, so that /status follows a file whose objects
        // changed with no error appearing or going.
        let counts: Vec<(String, usize, bool)> =
            md.status().into_iter().map(|s| (s.file, s.objects, s.being_written)).collect();
        let report_changed = report != last_report;
        if report_changed || counts != last_counts {
            last_counts = counts;
            let mut errs: Vec<String> = conflicts.iter().map(|c| c.to_string()).collect();
            errs.extend(md.dir_error().map(str::to_string));
            if report_changed {
                last_report = report;
                for c in &conflicts {
                    tracing::error!(file = %c.origin.file, error = %c, "object defined twice; this definition is ignored");
                }
                if let Some(e) = md.dir_error() {
                    tracing::error!(dir = %dir, error = %e, "manifest directory unreadable; what is in force stays");
                }
                for f in md.status() {
                    for e in &f.errors {
                        if first {
                            tracing::error!(file = %f.file, error = %e, "manifest rejected; the directory is not synced (fail closed) until every file parses");
                        } else {
                            tracing::error!(file = %f.file, error = %e, "manifest rejected; its last good version stays in force");
                        }
                    }
                }
            }
            if tx.send(SourceMsg::Files(md.status(), errs)).await.is_err() {
                return;
            }
            // An unreadable directory is a source down (what is in force stays).
            let down = md.dir_error().map(|e| format!("manifest directory unreadable: {e}"));
            if down.is_some() != dir_down {
                dir_down = down.is_some();
                if tx.send(SourceMsg::Health { source: MANIFESTS, kind: None, error: down }).await.is_err() {
                    return;
                }
            }
        }
        if first && !md.complete() {
            // Nothing is known of a broken file yet: wait (fail closed,
            // not ready) rather than sync without it; the errors are out.
            next_scan(&mut watch, &dir, interval).await;
            continue;
        }
        if first {
            // The first complete scan lists every kind in full: one `Replace`
            // per kind of every object in force (files are read in name
            // order, so only the first definition of an object is in force).
            let seen = Instant::now();
            let mut by_kind: [(Kind, Vec<Object>); 3] =
                [(Kind::Namespace, vec![]), (Kind::Pod, vec![]), (Kind::NetworkPolicy, vec![])];
            for o in md.in_force() {
                by_kind[o.kind() as usize].1.push(o);
            }
            let changes = by_kind.into_iter().map(|(k, objs)| Change::Replace(k, objs)).collect();
            if tx.send(SourceMsg::Changes { source: MANIFESTS, changes, seen }).await.is_err() {
                return;
            }
            for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
                if tx.send(SourceMsg::Synced { source: MANIFESTS, kind }).await.is_err() {
                    return;
                }
            }
            first = false;
        } else if let Some((changes, seen)) = changes {
            let seen = Instant::from_std(seen);
            if tx.send(SourceMsg::Changes { source: MANIFESTS, changes, seen }).await.is_err() {
                return;
            }
        }
        next_scan(&mut watch, &dir, interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waits double from 0.8 s to the 30 s cap, each plus up to as much
    /// again, and start over after a quiet spell of more than two minutes.
    #[tokio::test(start_paused = true)]
    async fn the_backoff_grows_to_its_cap_and_forgets_an_old_outage() {
        let mut b = Backoff::default();
        let mut base = Backoff::FIRST;
        for _ in 0..8 {
            let w = b.next();
            assert!(w >= base && w < base * 2, "{w:?} for {base:?}");
            base = (base * 2).min(Backoff::LONGEST);
        }
        assert_eq!(base, Backoff::LONGEST);
        tokio::time::advance(Backoff::FORGET + Duration::from_secs(1)).await;
        let w = b.next();
        assert!(w < Backoff::FIRST * 2, "{w:?}");
    }

    /// A list on a connection the server never answers fails once the read
    /// timeout passes, instead of waiting for ever; and the timeout is longer
    /// than a healthy watch is silent.
    #[tokio::test]
    async fn a_request_the_server_never_answers_fails_after_the_read_timeout() {
        // kube-runtime ends a watch silent for its timeout (290 s unless set) and 5 s more.
        let watch_silence =
            Duration::from_secs(u64::from(watcher::Config::default().timeout.unwrap_or(290)) + 5);
        assert!(KUBE_READ_TIMEOUT > watch_silence + Duration::from_secs(30));

        // Accepts, reads the request, never answers.
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", server.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = server.accept().await {
                held.push(c);
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        let client = Client::try_from(bounded_reads_after(config, Duration::from_millis(500))).unwrap();
        let api = Api::<corev1::Pod>::all(client);
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), api.list(&Default::default())).await;
        let r = r.expect("the list must fail by itself, not hang");
        assert!(r.is_err(), "{r:?}");
        assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
    }

    fn namespace(name: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
    }

    #[test]
    fn a_stripped_pod_keeps_what_the_compiler_reads_and_its_sidecars_ports() {
        let pod: corev1::Pod = serde_yaml::from_str(
            r#"
metadata: {name: p, namespace: a, labels: {app: web}, annotations: {big: "x"}}
spec:
  nodeName: n1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]
  initContainers:
  - {name: migrate, image: i, ports: [{name: setup, containerPort: 9000}]}
  - {name: proxy, image: i, restartPolicy: Always, ports: [{name: metrics, containerPort: 15090}]}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}
"#,
        )
        .unwrap();
        let full = policy_compiler::validate::pod(&pod).0.unwrap();
        let stripped = strip_pod(pod);
        assert_eq!(policy_compiler::validate::pod(&stripped).0.unwrap(), full);
        assert!(full.named_ports.iter().any(|n| n.name == "metrics" && n.port == 15090));
        assert!(!full.named_ports.iter().any(|n| n.name == "setup"));
        assert!(stripped.metadata.annotations.is_none());
        let init = stripped.spec.unwrap().init_containers.unwrap();
        assert_eq!(init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["migrate", "proxy"]);
        assert!(init.iter().all(|c| c.image.is_none()));
    }

    /// The next `Changes` message, skipping file reports; it must come well
    /// before the test's hour-long poll.
    async fn wait(rx: &mut mpsc::Receiver<SourceMsg>) -> Vec<Change> {
        let next = async {
            loop {
                match rx.recv().await.expect("the source runs") {
                    SourceMsg::Changes { changes, .. } => return changes,
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), next)
            .await
            .expect("a change is read long before the poll")
    }

    /// With an hour between polls, only the directory watch can make these
    /// changes seen: a new file, an edited one, a removed one, and a file
    /// renamed into place (how editors and ConfigMap volumes replace files).
    #[tokio::test]
    async fn changes_are_read_when_they_happen_not_at_the_next_poll() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path();
        std::fs::write(dir.join("a.yaml"), namespace("a")).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(run_manifests(dir.to_string_lossy().into(), Duration::from_secs(3600), tx));
        let first = wait(&mut rx).await;
        assert!(
            matches!(&first[..], [Change::Replace(Kind::Namespace, ns), ..] if ns.len() == 1),
            "{first:?}"
        );
        let applied = |changes: &[Change]| -> Vec<String> {
            changes
                .iter()
                .filter_map(|c| match c {
                    Change::Apply(o) => Some(o.key().1),
                    _ => None,
                })
                .collect()
        };

        std::fs::write(dir.join("b.yaml"), namespace("b")).unwrap();
        assert_eq!(applied(&wait(&mut rx).await), ["b"]);

        std::fs::write(dir.join("b.yaml"), namespace("b").replace("{name: b}", "{name: b, labels: {x: z}}"))
            .unwrap();
        assert_eq!(applied(&wait(&mut rx).await), ["b"]);

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let removed = wait(&mut rx).await;
        assert!(matches!(&removed[..], [Change::Delete(Kind::Namespace, _, n)] if n == "a"), "{removed:?}");

        std::fs::write(dir.join(".c.yaml.tmp"), namespace("c")).unwrap();
        std::fs::rename(dir.join(".c.yaml.tmp"), dir.join("c.yaml")).unwrap();
        assert_eq!(applied(&wait(&mut rx).await), ["c"]);

        task.abort();
    }
}
