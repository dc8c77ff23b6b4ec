//! A directory of manifests as a policy source, for hosts without a cluster,
//! the lab and the demo.
//!
//! Each file is read, parsed strictly and validated as a unit. A file that
//! fails (bad YAML, unknown field, invalid policy, an object already defined
//! by another file) is reported with file, object and field, and its **last
//! good version stays in force**, so a typo never opens or closes anything.
//! A deleted file's objects are removed.
//!
//! Changes come out as a diff ([`ManifestDir::take_changes`]), computed per
//! changed file: editing one policy in a directory of 20,000 objects costs
//! that file, not the directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use policy_compiler::Severity;

use crate::index::{Change, Kind, Object};
use crate::manifest::{self, LoadError, LoadErrors, ObjectKey, Origin, State};

/// A file with unchanged metadata is still read in full every this many scans.
const REREAD_EVERY: u32 = 25;

/// A file whose modification time is within this of a scan's start is read
/// again by the next scan even when its time and length stay the same: a
/// rewrite within one timestamp tick keeps both.
const RACY: Duration = Duration::from_secs(2);

/// Last seen version of one file.
#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<(SystemTime, u64, u64)>,
    /// Modification time and length at the last read, and scans since: a file
    /// whose metadata did not change is not read again, except every
    /// [`REREAD_EVERY`] scans (a rewrite may keep both).
    meta: Option<(SystemTime, u64)>,
    scans_since_read: u32,
    /// Where each object of the last good version was defined (its objects are in `objects`).
    last_good: Option<State>,
    /// The last good version's objects.
    objects: BTreeMap<ObjectKey, Object>,
    error: Option<LoadErrors>,
}

/// The directory and what is known about each file in it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    dir_error: Option<String>,
    /// The files defining each object, in name order: the first one's
    /// definition is in force, the others are conflicts.
    defs: HashMap<ObjectKey, Vec<String>>,
    /// Objects defined by more than one file.
    conflicted: BTreeSet<ObjectKey>,
    /// Changes to the objects in force not yet taken, and when the file
    /// holding the first of them was read.
    pending: Vec<Change>,
    pending_since: Option<Instant>,
    /// Files the last scan left unread because a writer still had them open.
    deferred: BTreeSet<String>,
}

/// One file's standing, for status pages.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileStatus {
    /// Path.
    pub file: String,
    /// Objects in force from this file (its last good version).
    pub objects: usize,
    /// The current version's errors, when it is broken (the last good version is in force).
    pub errors: Vec<String>,
    /// The last scan left it unread: it is being written (written to and not
    /// closed, for up to 10 s); its last good version, if any, is in force.
    pub being_written: bool,
}

fn fingerprint(p: &Path, text: &str) -> Option<(SystemTime, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let m = std::fs::metadata(p).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    Some((m.modified().ok()?, m.len(), h.finish()))
}

impl ManifestDir {
    /// A source for `dir` (nothing is read until [`ManifestDir::scan`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            dir_error: None,
            defs: HashMap::new(),
            conflicted: BTreeSet::new(),
            pending: Vec::new(),
            pending_since: None,
            deferred: BTreeSet::new(),
        }
    }

    /// Reads the directory again. Returns true when the objects in force changed.
    pub fn scan(&mut self) -> bool {
        self.scan_except(&|_| false)
    }

    /// [`ManifestDir::scan`], leaving unread the files for which `being_written`
    /// (given the file's name within the directory) is true: a writer still
    /// has them open, and what they hold now may be a truncated prefix of what
    /// is being written. Their last good version stays in force; they are read
    /// by a later scan.
    pub fn scan_except(&mut self, being_written: &dyn Fn(&std::ffi::OsStr) -> bool) -> bool {
        self.deferred.clear();
        let listed = match crate::list_manifests(&self.dir.to_string_lossy()) {
            Ok(f) => {
                self.dir_error = None;
                f
            }
            Err(e) => {
                // Keep everything in force: a directory briefly missing (a ConfigMap
                // volume being swapped) must not empty the table.
                self.dir_error = Some(e.to_string());
                return false;
            }
        };
        let mut changed = false;
        // Before any metadata is read: see `RACY` below.
        let scan_started = SystemTime::now();
        let before: Vec<String> = self.files.keys().cloned().collect();
        for f in &before {
            if !listed.contains(f) {
                self.pending_since.get_or_insert_with(Instant::now);
                self.set_objects(f, BTreeMap::new());
                let gone = self.files.remove(f);
                changed |= gone.is_some_and(|g| g.last_good.is_some());
            }
        }
        let listed: Vec<(String, Option<(SystemTime, u64)>)> = listed
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
                (f, meta)
            })
            .collect();
        // A scan that finds a file with new metadata reads only such files:
        // the periodic full reads of unchanged (possibly large) files wait for
        // the next scan, so they never delay a change.
        let unchanged =
            |files: &BTreeMap<String, FileState>, f: &String, meta: &Option<(SystemTime, u64)>| {
                meta.is_some() && files.get(f).is_some_and(|st| st.meta == *meta)
            };
        let something_new = listed.iter().any(|(f, meta)| !unchanged(&self.files, f, meta));
        for (f, meta) in listed {
            if unchanged(&self.files, &f, &meta) {
                let st = self.files.get_mut(&f).expect("known file");
                if st.scans_since_read < REREAD_EVERY || something_new {
                    st.scans_since_read = st.scans_since_read.saturating_add(1);
                    continue;
                }
            }
            if Path::new(&f).file_name().is_some_and(being_written) {
                self.deferred.insert(f);
                continue;
            }
            let read_at = Instant::now();
            let text = match manifest::read_text(&f) {
                Ok(t) => t,
                // Gone since the listing (a delete or rename): the next scan sees it.
                Err(None) => continue,
                // Unreadable (not UTF-8, no permission, a link to a missing file):
                // reported like a file that does not parse; its last good
                // version, if any, stays in force.
                Err(Some(e)) => {
                    let st = self.files.entry(f.clone()).or_default();
                    // Read again on every scan until it can be (a `chmod` keeps mtime and size).
                    st.meta = None;
                    st.scans_since_read = 0;
                    st.fingerprint = None;
                    st.error = Some(e);
                    continue;
                }
            };
            let fp = fingerprint(Path::new(&f), &text);
            let st = self.files.entry(f.clone()).or_default();
            // A file modified so recently that a rewrite now could leave the
            // same timestamp (file systems store it in ticks: 4 ms with most
            // kernels before 6.13, 1 s or 2 s on some) and the same length is
            // read again on the next scan; its metadata is trusted only once it
            // is older than that.
            // (A time further in the future, from an archive or a skewed clock,
            // is trusted: a rewrite now would give the file the present time.)
            let racy =
                meta.is_some_and(|(mtime, _)| mtime + RACY > scan_started && mtime < scan_started + RACY);
            st.meta = if racy { None } else { meta };
            st.scans_since_read = 0;
            if fp.is_some() && st.fingerprint == fp {
                continue;
            }
            st.fingerprint = fp;
            // A panic while reading one file (a bug) is that file's error, as
            // a parse error is: its last good version stays in force, and the
            // source, with every other file, goes on (a panic ending the
            // source would leave the directory unwatched, or, as the only
            // source, stop the daemon into a restart that panics again).
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_file(&f, &text)))
                .unwrap_or_else(|panic| {
                    let what = crate::daemon::panic_message(&*panic);
                    tracing::error!(file = %f, panic = what, "reading a manifest panicked (a bug: please report it)");
                    Err(LoadErrors(vec![LoadError::file(
                        &f,
                        format!("reading it panicked (a bug in Portcullis: please report it): {what}"),
                    )]))
                });
            match checked {
                // A file that held objects and now holds none is taken for one
                // caught mid-write (`> file` truncates first) rather than applied:
                // applying it would lift every policy it held at once.
                Ok(state) if state.is_empty() && !st.objects.is_empty() => {
                    st.error = Some(LoadErrors(vec![LoadError::file(
                        &f,
                        format!(
                            "holds no objects any more (emptied, or caught while being rewritten); its last \
                             good version ({} objects) stays in force: delete the file to remove them",
                            st.objects.len()
                        ),
                    )]));
                }
                Ok(mut state) => {
                    // One line per field, not per object: a `kubectl get` dump
                    // of a newer cluster has the same new fields in every pod.
                    for (e, objects) in manifest::group_ignored(&state.ignored) {
                        tracing::warn!(problem = %e, objects, "field left out");
                    }
                    st.error = None;
                    let objects = file_objects(&mut state);
                    st.last_good = Some(state);
                    self.pending_since.get_or_insert(read_at);
                    self.set_objects(&f, objects);
                    changed = true;
                }
                Err(e) => st.error = Some(e),
            }
        }
        changed
    }

    /// Replaces file `f`'s objects (which must be in `files`, or be gone
    /// with `objects` empty), recording what that changes in force.
    fn set_objects(&mut self, f: &str, objects: BTreeMap<ObjectKey, Object>) {
        let old = self.files.get_mut(f).map(|st| std::mem::take(&mut st.objects)).unwrap_or_default();
        for key in old.keys() {
            if !objects.contains_key(key) {
                self.undefine(f, key);
            }
        }
        for (key, o) in &objects {
            match old.get(key) {
                None => self.define(f, key, o),
                Some(prev)
                    if prev != o && self.defs.get(key).and_then(|l| l.first()).is_some_and(|w| w == f) =>
                {
                    self.pending.push(Change::Apply(o.clone()));
                }
                Some(_) => {}
            }
        }
        if let Some(st) = self.files.get_mut(f) {
            st.objects = objects;
        }
    }

    fn define(&mut self, f: &str, key: &ObjectKey, o: &Object) {
        let list = self.defs.entry(key.clone()).or_default();
        let at = list.partition_point(|x| x.as_str() < f);
        list.insert(at, f.to_string());
        if list.len() > 1 {
            self.conflicted.insert(key.clone());
        }
        if at == 0 {
            self.pending.push(Change::Apply(o.clone()));
        }
    }

    fn undefine(&mut self, f: &str, key: &ObjectKey) {
        let Some(list) = self.defs.get_mut(key) else { return };
        let was_first = list.first().is_some_and(|w| w == f);
        list.retain(|x| x != f);
        if list.len() < 2 {
            self.conflicted.remove(key);
        }
        match list.first() {
            None => {
                self.defs.remove(key);
                if was_first {
                    let (kind, ns, name) = key;
                    self.pending.push(Change::Delete(kind_of(kind), ns.clone(), name.clone()));
                }
            }
            // The next file's definition comes into force.
            Some(next) if was_first => {
                if let Some(o) = self.files.get(next).and_then(|st| st.objects.get(key)) {
                    self.pending.push(Change::Apply(o.clone()));
                }
            }
            Some(_) => {}
        }
    }

    /// Changes to the objects in force since the last call, and when the
    /// first of them was read; `None` when nothing changed.
    pub fn take_changes(&mut self) -> Option<(Vec<Change>, Instant)> {
        let since = self.pending_since.take()?;
        let changes = std::mem::take(&mut self.pending);
        (!changes.is_empty()).then_some((changes, since))
    }

    /// Every object in force: each key's definition in the first file (by
    /// name) that defines it.
    pub fn in_force(&self) -> Vec<Object> {
        let mut keys: Vec<(&ObjectKey, &String)> =
            self.defs.iter().filter_map(|(k, files)| Some((k, files.first()?))).collect();
        keys.sort();
        keys.into_iter().filter_map(|(k, f)| self.files.get(f)?.objects.get(k).cloned()).collect()
    }

    /// Objects defined by more than one file: every definition after the first.
    pub fn conflicts(&self) -> Vec<LoadError> {
        let mut out = Vec::new();
        for key in &self.conflicted {
            let origin = |f: &String| {
                self.files
                    .get(f)
                    .and_then(|st| st.last_good.as_ref())
                    .and_then(|s| s.origins.get(key))
                    .cloned()
            };
            let Some(list) = self.defs.get(key) else { continue };
            let Some(first) = list.first().and_then(origin) else { continue };
            for other in list[1..].iter().filter_map(origin) {
                out.push(LoadError {
                    origin: other,
                    object: Some(manifest::object_name(key)),
                    field: None,
                    line: None,
                    message: format!("also defined at {first}; this definition is ignored"),
                });
            }
        }
        out
    }

    /// Every object in force: the last good version of each file. An object also
    /// defined by an earlier file (by name order) is left out and reported.
    pub fn objects(&self) -> (Vec<Object>, Vec<LoadError>) {
        let mut out = Vec::new();
        for (f, st) in &self.files {
            for (key, o) in &st.objects {
                if self.defs.get(key).and_then(|l| l.first()).is_some_and(|w| w == f) {
                    out.push(o.clone());
                }
            }
        }
        (out, self.conflicts())
    }

    /// Per-file standing.
    pub fn status(&self) -> Vec<FileStatus> {
        let mut files: Vec<FileStatus> = self
            .files
            .iter()
            .map(|(f, st)| FileStatus {
                file: f.clone(),
                objects: st.last_good.as_ref().map_or(0, |s| s.origins.len()),
                errors: st
                    .error
                    .as_ref()
                    .map(|e| e.0.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default(),
                being_written: self.deferred.contains(f),
            })
            .collect();
        // A new file being written has no state yet.
        for f in self.deferred.iter().filter(|f| !self.files.contains_key(*f)) {
            files.push(FileStatus { file: f.clone(), objects: 0, errors: Vec::new(), being_written: true });
        }
        files.sort_by(|a, b| a.file.cmp(&b.file));
        files
    }

    /// The directory-level error, if the directory cannot be read.
    pub fn dir_error(&self) -> Option<&str> {
        self.dir_error.as_deref()
    }

    /// Is every file's content known: the directory read, and no file
    /// broken without a last good version? Until then the objects in force
    /// are not the directory's, and a first sync would enforce less than it
    /// says (a broken `default-deny.yaml` at boot would open every pod).
    pub fn complete(&self) -> bool {
        self.dir_error.is_none()
            && self.deferred.is_empty()
            && self.files.values().all(|st| st.error.is_none() || st.last_good.is_some())
    }

    /// Files the last scan left unread because they were being written.
    pub fn deferred(&self) -> impl Iterator<Item = &str> {
        self.deferred.iter().map(String::as_str)
    }
}

/// A file's objects by key; the state keeps only their origins (one copy in memory).
fn file_objects(state: &mut State) -> BTreeMap<ObjectKey, Object> {
    let mut out = BTreeMap::new();
    let objs = std::mem::take(&mut state.namespaces)
        .into_iter()
        .map(|n| Object::Namespace(Box::new(n)))
        .chain(std::mem::take(&mut state.pods).into_iter().map(|p| Object::Pod(Box::new(p))))
        .chain(std::mem::take(&mut state.policies).into_iter().map(|p| Object::NetworkPolicy(Box::new(p))));
    for o in objs {
        let (ns, name) = o.key();
        let kind = match o.kind() {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        };
        out.entry((kind, ns, name)).or_insert(o);
    }
    out
}

fn kind_of(kind: &str) -> Kind {
    match kind {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        _ => Kind::NetworkPolicy,
    }
}

/// Parses and validates one file as a unit: any error rejects the whole file.
fn check_file(file: &str, text: &str) -> Result<State, LoadErrors> {
    #[cfg(test)]
    if tests::PANIC_ON.with(|p| p.get().is_some_and(|name| file.ends_with(name))) {
        panic!("injected by a test");
    }
    let state = manifest::parse(file, text)?;
    // Another project's policy kind: read, and not enforced.
    for (kind, origin) in state.skipped.iter().filter(|(k, _)| k.contains("NetworkPolicy")) {
        tracing::warn!(%origin, kind = kind.as_str(), "not a Kubernetes NetworkPolicy (networking.k8s.io/v1): not enforced; skipped");
    }
    let mut errs = Vec::new();
    let mut report = |problems: Vec<policy_compiler::Problem>| {
        for pr in problems.into_iter().filter(|p| p.severity == Severity::Error) {
            let origin = state
                .origin_of(pr.object.kind, &pr.object.namespace, &pr.object.name)
                .cloned()
                .unwrap_or_else(|| Origin::file(file));
            errs.push(LoadError {
                origin,
                object: Some(pr.object.to_string()),
                field: Some(pr.field),
                line: None,
                message: pr.message,
            });
        }
    };
    // A namespace's labels decide which selectors match it: an invalid one is
    // held back with the rest of its file, like a policy.
    for ns in &state.namespaces {
        match policy_compiler::validate::namespace(ns) {
            Err(problem) => report(vec![problem]),
            Ok(_) => report(policy_compiler::validate::namespace_problems(ns)),
        }
    }
    for p in &state.policies {
        report(policy_compiler::validate::policy(p).1);
    }
    for p in &state.pods {
        report(policy_compiler::validate::pod(p).1);
    }
    if errs.is_empty() {
        Ok(state)
    } else {
        Err(LoadErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Reading a file whose path ends with this panics.
        pub(super) static PANIC_ON: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
    }

    /// A panic while reading a file (a bug) rejects that file like an error:
    /// its last good version stays in force, and the other files are read.
    #[test]
    fn a_panic_reading_a_file_is_that_files_error() {
        let d = tempdir("panic");
        let f = d.0.join("p.yaml");
        std::fs::write(&f, POLICY.replace("PORT", "80")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(md.scan());
        std::fs::write(&f, POLICY.replace("PORT", "81")).unwrap();
        std::fs::write(d.0.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: later}\n")
            .unwrap();
        PANIC_ON.with(|p| p.set(Some("p.yaml")));
        let changed = md.scan();
        PANIC_ON.with(|p| p.set(None));
        assert!(changed, "the other file is read");
        assert_eq!(policy_port(&md).unwrap(), "Int(80)", "the last good version stays");
        let st = md.status();
        let p = st.iter().find(|s| s.file.ends_with("p.yaml")).unwrap();
        assert_eq!(p.objects, 1);
        assert!(
            p.errors[0]
                .contains("reading it panicked (a bug in Portcullis: please report it): injected by a test"),
            "{:?}",
            p.errors
        );
        assert!(names(&md).iter().any(|n| n.contains("later")), "{:?}", names(&md));
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("pcl-md-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: PORT}]}]\n";

    fn names(md: &ManifestDir) -> Vec<String> {
        md.objects().0.iter().map(|o| format!("{:?}/{}", o.kind(), o.key().1)).collect()
    }

    fn policy_port(md: &ManifestDir) -> Option<String> {
        md.objects().0.iter().find_map(|o| match o {
            Object::NetworkPolicy(p) => {
                Some(format!("{:?}", p.spec.as_ref()?.ingress.as_ref()?[0].ports.as_ref()?[0].port.as_ref()?))
            }
            _ => None,
        })
    }

    /// A rewrite within one timestamp tick of the last read keeps the file's
    /// time and length (here made so by setting the time back): the file was
    /// read so soon after it was written that its metadata is not trusted yet.
    #[test]
    fn a_same_length_rewrite_with_the_same_timestamp_is_seen() {
        let d = tempdir("tick");
        let f = d.0.join("p.yaml");
        let mut md = ManifestDir::new(&d.0);
        std::fs::write(&f, POLICY.replace("PORT", "80")).unwrap();
        let written = std::fs::metadata(&f).unwrap().modified().unwrap();
        assert!(md.scan());
        std::fs::write(&f, POLICY.replace("PORT", "81")).unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(written).unwrap();
        assert!(md.scan(), "the rewrite was not read");
        assert_eq!(policy_port(&md).unwrap(), "Int(81)");
        // Once its time is old enough, unchanged metadata is trusted again:
        // the file is not read on every scan.
        let old = SystemTime::now() - 2 * RACY;
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        md.scan(); // the new time is read (and the same objects found)
        assert!(!md.scan());
        std::fs::write(&f, POLICY.replace("PORT", "82")).unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        assert!(!md.scan(), "an old timestamp and the same length: not read again until the periodic read");
        assert_eq!(policy_port(&md).unwrap(), "Int(81)");
        // A time far in the future (an archive's, a skewed clock's) is trusted as
        // well: such a file is not read on every scan.
        let future = SystemTime::now() + 100 * RACY;
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(future).unwrap();
        md.scan();
        std::fs::write(&f, POLICY.replace("PORT", "83")).unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(future).unwrap();
        assert!(!md.scan(), "a future timestamp kept and the same length: not read on every scan");
    }

    #[test]
    fn add_change_break_delete() {
        let d = tempdir("acbd");
        let f = d.0.join("p.yaml");
        let mut md = ManifestDir::new(&d.0);
        assert!(!md.scan());
        // Add.
        std::fs::write(&f, POLICY.replace("PORT", "80")).unwrap();
        assert!(md.scan());
        assert_eq!(names(&md), vec!["NetworkPolicy/p"]);
        assert_eq!(policy_port(&md).unwrap(), "Int(80)");
        // Change.
        std::fs::write(&f, POLICY.replace("PORT", "81")).unwrap();
        assert!(md.scan());
        assert_eq!(policy_port(&md).unwrap(), "Int(81)");
        // Break (invalid port): last good version stays in force, error reported with its field.
        std::fs::write(&f, POLICY.replace("PORT", "0")).unwrap();
        assert!(!md.scan());
        assert_eq!(policy_port(&md).unwrap(), "Int(81)");
        let st = md.status();
        assert_eq!(st[0].objects, 1);
        assert!(
            st[0].errors[0].contains("NetworkPolicy x/p: field spec.ingress[0].ports[0].port"),
            "{:?}",
            st
        );
        // Break the YAML itself: same.
        std::fs::write(&f, "apiVersion: [\n").unwrap();
        assert!(!md.scan());
        assert_eq!(policy_port(&md).unwrap(), "Int(81)");
        // Repair.
        std::fs::write(&f, POLICY.replace("PORT", "82")).unwrap();
        assert!(md.scan());
        assert_eq!(policy_port(&md).unwrap(), "Int(82)");
        assert!(md.status()[0].errors.is_empty());
        // Delete.
        std::fs::remove_file(&f).unwrap();
        assert!(md.scan());
        assert!(names(&md).is_empty());
    }

    #[test]
    fn an_invalid_namespace_is_held_back_with_its_file() {
        let d = tempdir("badns");
        let f = d.0.join("ns.yaml");
        let ns = |team: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{team: {team}}}}}\n")
        };
        std::fs::write(&f, ns("front")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(md.scan());
        assert_eq!(names(&md), vec!["Namespace/x"]);
        // A label value the API server refuses: the last good labels stay.
        std::fs::write(&f, ns("'front end'")).unwrap();
        assert!(!md.scan());
        let e = &md.status()[0].errors[0];
        assert!(e.contains("ns.yaml") && e.contains("Namespace x") && e.contains("metadata.labels"), "{e}");
        let labels = |md: &ManifestDir| match &md.in_force()[0] {
            Object::Namespace(n) => n.metadata.labels.clone().unwrap_or_default()["team"].clone(),
            o => panic!("{o:?}"),
        };
        assert_eq!(labels(&md), "front");
        // And a bad name too.
        std::fs::write(&f, "apiVersion: v1\nkind: Namespace\nmetadata: {name: X_1}\n").unwrap();
        assert!(!md.scan());
        assert!(md.status()[0].errors[0].contains("metadata.name"), "{:?}", md.status());
    }

    #[test]
    fn an_emptied_file_keeps_its_last_good_version_until_deleted() {
        let d = tempdir("emptied");
        let f = d.0.join("p.yaml");
        std::fs::write(&f, POLICY.replace("PORT", "80")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(md.scan());
        let _ = md.take_changes();
        for empty in ["", "# nothing here\n", "---\n"] {
            std::fs::write(&f, empty).unwrap();
            assert!(!md.scan(), "{empty:?}");
            assert_eq!(names(&md), vec!["NetworkPolicy/p"], "{empty:?}");
            assert!(md.take_changes().is_none());
            let e = &md.status()[0].errors[0];
            assert!(e.contains("p.yaml") && e.contains("holds no objects any more"), "{e}");
            // Fixed: the error goes.
            std::fs::write(&f, POLICY.replace("PORT", "80")).unwrap();
            md.scan();
            assert!(md.status()[0].errors.is_empty());
        }
        // A file that never held objects may be empty.
        std::fs::write(d.0.join("q.yaml"), "").unwrap();
        md.scan();
        assert!(md.status().iter().all(|f| f.errors.is_empty()), "{:?}", md.status());
        std::fs::remove_file(&f).unwrap();
        assert!(md.scan());
        assert!(names(&md).is_empty());
    }

    #[test]
    fn a_file_being_written_is_left_unread_and_holds_back_the_first_sync() {
        let d = tempdir("writing");
        let f = d.0.join("p.yaml");
        std::fs::write(&f, POLICY.replace("PORT", "80")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        let busy = |n: &std::ffi::OsStr| n == "p.yaml";
        assert!(!md.scan_except(&busy));
        assert!(!md.complete(), "a first sync must wait for it");
        assert_eq!(md.deferred().collect::<Vec<_>>(), vec![f.to_str().unwrap()]);
        // Listed as such, though never read yet.
        let listed = |md: &ManifestDir| {
            md.status().into_iter().map(|s| (s.file, s.objects, s.being_written)).collect::<Vec<_>>()
        };
        let name = f.to_str().unwrap().to_string();
        assert_eq!(listed(&md), vec![(name.clone(), 0, true)]);
        assert!(md.scan());
        assert!(md.complete());
        assert_eq!(listed(&md), vec![(name.clone(), 1, false)]);
        // Being rewritten: the version in force stays.
        std::fs::write(&f, POLICY.replace("PORT", "81")).unwrap();
        assert!(!md.scan_except(&busy));
        assert_eq!(policy_port(&md).unwrap(), "Int(80)");
        assert_eq!(listed(&md), vec![(name, 1, true)]);
        assert!(md.scan());
        assert_eq!(policy_port(&md).unwrap(), "Int(81)");
    }

    #[test]
    fn a_new_broken_file_contributes_nothing_and_is_reported() {
        let d = tempdir("newbroken");
        std::fs::write(
            d.0.join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labelz: {}}\n",
        )
        .unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(!md.scan());
        assert!(names(&md).is_empty());
        assert!(
            md.status()[0].errors[0].contains("field metadata.labelz: unknown field"),
            "{:?}",
            md.status()
        );
    }

    #[test]
    fn a_link_to_a_missing_file_is_an_error_not_a_file_left_out() {
        let d = tempdir("dangling");
        let target = d.0.join("namespace.txt");
        std::fs::write(&target, "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n").unwrap();
        std::os::unix::fs::symlink(&target, d.0.join("a.yaml")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(md.scan() && md.complete());
        // The target goes: reported, and what it held stays in force.
        std::fs::remove_file(&target).unwrap();
        assert!(!md.scan());
        let st = md.status();
        assert_eq!(st.len(), 1, "{st:?}");
        assert!(st[0].errors[0].contains("a.yaml: cannot read: a symbolic link to"), "{st:?}");
        assert!(st[0].errors[0].ends_with("namespace.txt, which leads to no file"), "{st:?}");
        assert_eq!(st[0].objects, 1, "{st:?}");
        // The link goes too: so do its objects.
        std::fs::remove_file(d.0.join("a.yaml")).unwrap();
        assert!(md.scan());
        assert!(md.status().is_empty(), "{:?}", md.status());
    }

    #[test]
    fn an_unreadable_file_is_reported_and_the_directory_is_not_complete() {
        let d = tempdir("latin1");
        std::fs::write(
            d.0.join("a.yaml"),
            b"# caf\xe9\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        )
        .unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(!md.scan());
        assert!(!md.complete(), "a first sync must wait for it");
        assert!(
            md.status()[0].errors[0].contains("a.yaml: not UTF-8: line 1 (byte offset 5): byte 0xe9"),
            "{:?}",
            md.status()
        );
        // Fixed: read, in force, complete.
        std::fs::write(d.0.join("a.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n").unwrap();
        assert!(md.scan());
        assert!(md.complete() && md.status()[0].errors.is_empty());
    }

    #[test]
    fn an_object_in_two_files_keeps_the_first() {
        let d = tempdir("dup");
        std::fs::write(d.0.join("a.yaml"), POLICY.replace("PORT", "80")).unwrap();
        std::fs::write(d.0.join("b.yaml"), POLICY.replace("PORT", "81")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        md.scan();
        let (objs, conflicts) = md.objects();
        assert_eq!(objs.len(), 1);
        assert_eq!(policy_port(&md).unwrap(), "Int(80)");
        assert!(conflicts[0].to_string().contains("b.yaml"), "{}", conflicts[0]);
    }

    #[test]
    fn a_missing_directory_keeps_what_is_in_force() {
        let d = tempdir("gone");
        std::fs::write(d.0.join("a.yaml"), POLICY.replace("PORT", "80")).unwrap();
        let mut md = ManifestDir::new(&d.0);
        assert!(md.scan());
        std::fs::remove_dir_all(&d.0).unwrap();
        assert!(!md.scan());
        assert_eq!(names(&md), vec!["NetworkPolicy/p"]);
        assert!(md.dir_error().is_some());
    }

    fn taken(md: &mut ManifestDir) -> Vec<String> {
        let Some((changes, _)) = md.take_changes() else { return vec![] };
        changes
            .iter()
            .map(|c| match c {
                Change::Apply(o @ Object::NetworkPolicy(p)) => {
                    let port = (|| p.spec.as_ref()?.ingress.as_ref()?[0].ports.as_ref()?[0].port.clone())();
                    format!("apply {} {port:?}", o.key().1)
                }
                Change::Apply(o) => format!("apply {:?} {}", o.kind(), o.key().1),
                Change::Delete(k, ns, n) => format!("delete {k:?} {ns}/{n}"),
                Change::Replace(k, _) => format!("replace {k:?}"),
            })
            .collect()
    }

    #[test]
    fn changes_are_diffs_of_the_changed_files_with_conflicts_resolved_by_file_order() {
        let d = tempdir("diff");
        let other = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec: {podSelector: {}}\n";
        std::fs::write(d.0.join("b.yaml"), format!("{}---\n{other}", POLICY.replace("PORT", "81"))).unwrap();
        let mut md = ManifestDir::new(&d.0);
        md.scan();
        let mut first = taken(&mut md);
        first.sort();
        assert_eq!(first, vec!["apply p Some(Int(81))", "apply q None"]);
        // Nothing changed: nothing to take.
        md.scan();
        assert!(md.take_changes().is_none());
        // An earlier file defines p too: its definition comes into force, and b's is a conflict.
        std::fs::write(d.0.join("a.yaml"), POLICY.replace("PORT", "80")).unwrap();
        md.scan();
        assert_eq!(taken(&mut md), vec!["apply p Some(Int(80))"]);
        assert!(md.conflicts()[0].to_string().contains("b.yaml"), "{:?}", md.conflicts());
        // Editing the losing definition changes nothing in force.
        std::fs::write(d.0.join("b.yaml"), format!("{}---\n{other}", POLICY.replace("PORT", "82"))).unwrap();
        md.scan();
        assert!(taken(&mut md).is_empty());
        // Deleting the winner brings b's definition back; deleting b deletes both objects.
        std::fs::remove_file(d.0.join("a.yaml")).unwrap();
        md.scan();
        assert_eq!(taken(&mut md), vec!["apply p Some(Int(82))"]);
        assert!(md.conflicts().is_empty());
        std::fs::remove_file(d.0.join("b.yaml")).unwrap();
        md.scan();
        let mut gone = taken(&mut md);
        gone.sort();
        assert_eq!(gone, vec!["delete NetworkPolicy x/p", "delete NetworkPolicy x/q"]);
        assert!(md.objects().0.is_empty());
    }
}
