//! Policy sources: tasks that turn the Kubernetes API or a manifest
//! directory into [`Change`]s for the index owner.
//!
//! ```text
//!  kube watcher (Namespace) ─┐
//!  kube watcher (Pod)        ├─▶ mpsc<SourceMsg> ─▶ index owner (daemon.rs)
//!  kube watcher (NetPolicy)  │
//!  manifest dir poller ──────┘
//! ```
//!
//! One task per watched kind. Each watcher lists, then watches; on an error
//! it reconnects with backoff (kube-runtime's default: exponential, capped),
//! and when it has to list again (its resourceVersion expired, HTTP 410) the
//! complete list replaces that kind's objects, so a delete that happened while
//! disconnected is not lost. The index keeps only the validated, compiler-
//! relevant form of each object; no full copy of the cluster is kept.

use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
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
/// container ports), so even transient copies stay small.
pub fn strip_pod(p: corev1::Pod) -> corev1::Pod {
    let spec = p.spec.map(|s| corev1::PodSpec {
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .map(|c| corev1::Container { name: c.name, ports: c.ports, ..Default::default() })
            .collect(),
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

async fn watch_kind<K>(api: Api<K>, kind: Kind, tx: mpsc::Sender<SourceMsg>, wrap: impl Fn(K) -> Object)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let cfg = watcher::Config::default();
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
    let mut buffer: Vec<Object> = Vec::new();
    let mut healthy = true;
    while let Some(ev) = stream.next().await {
        let msg = match ev {
            Ok(ev) => {
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
                match ev {
                    Event::Init => {
                        buffer.clear();
                        continue;
                    }
                    Event::InitApply(o) => {
                        buffer.push(wrap(o));
                        continue;
                    }
                    Event::InitDone => {
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
                tracing::warn!(kind = ?kind, error = %e, "watch failed; retrying with backoff, last table stays in force");
                SourceMsg::Health { source: KUBE, kind: Some(kind), error: Some(e.to_string()) }
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Polls a manifest directory every `interval`; sends every object in force
/// once every file has parsed (until then the source is not synced, so the
/// dataplane stays fail-closed), then the changes (computed per changed
/// file) as they come.
pub async fn run_manifests(dir: String, interval: Duration, tx: mpsc::Sender<SourceMsg>) {
    let mut md = ManifestDir::new(&dir);
    let mut first = true;
    let mut last_report = String::new();
    let mut conflicts = Vec::new();
    loop {
        md.scan();
        let changes = md.take_changes();
        // Conflicts change only when the objects in force do.
        if first || changes.is_some() {
            conflicts = md.conflicts();
        }
        let report = format!(
            "{:?}{:?}{:?}",
            md.status().iter().map(|s| &s.errors).collect::<Vec<_>>(),
            conflicts,
            md.dir_error()
        );
        if report != last_report {
            last_report = report;
            let mut errs: Vec<String> = conflicts.iter().map(|c| c.to_string()).collect();
            errs.extend(md.dir_error().map(str::to_string));
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
            if tx.send(SourceMsg::Files(md.status(), errs)).await.is_err() {
                return;
            }
        }
        if first && !md.complete() {
            // Nothing is known of a broken file yet: wait (fail closed,
            // not ready) rather than sync without it; the errors are out.
            tokio::time::sleep(interval).await;
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
        tokio::time::sleep(interval).await;
    }
}
