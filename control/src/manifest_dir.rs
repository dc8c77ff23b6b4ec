//! A directory of manifests as a policy source, for hosts without a cluster,
//! the lab and the demo.
//!
//! Each file is read, parsed strictly and validated as a unit. A file that
//! fails (bad YAML, unknown field, invalid policy, an object already defined
//! by another file) is reported with file, object and field, and its **last
//! good version stays in force**, so a typo never opens or closes anything.
//! A deleted file's objects are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use policy_compiler::Severity;

use crate::index::Object;
use crate::manifest::{self, LoadError, LoadErrors, Origin, State};

/// A file with unchanged metadata is still read in full every this many scans.
const REREAD_EVERY: u32 = 25;

/// Last seen version of one file.
#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<(SystemTime, u64, u64)>,
    /// Modification time and length at the last read, and scans since: a file
    /// whose metadata did not change is not read again, except every
    /// [`REREAD_EVERY`] scans (a rewrite may keep both).
    meta: Option<(SystemTime, u64)>,
    scans_since_read: u32,
    last_good: Option<State>,
    error: Option<LoadErrors>,
}

/// The directory and what is known about each file in it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    dir_error: Option<String>,
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
        ManifestDir { dir: dir.into(), files: BTreeMap::new(), dir_error: None }
    }

    /// Reads the directory again. Returns true when the objects in force changed.
    pub fn scan(&mut self) -> bool {
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
        let before: Vec<String> = self.files.keys().cloned().collect();
        for f in &before {
            if !listed.contains(f) {
                let gone = self.files.remove(f);
                changed |= gone.is_some_and(|g| g.last_good.is_some());
            }
        }
        for f in listed {
            let meta = std::fs::metadata(&f).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
            if let Some(st) = self.files.get_mut(&f) {
                if meta.is_some() && st.meta == meta && st.scans_since_read < REREAD_EVERY {
                    st.scans_since_read += 1;
                    continue;
                }
            }
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(_) => continue, // raced with a delete or rename; next scan sees it
            };
            let fp = fingerprint(Path::new(&f), &text);
            let st = self.files.entry(f.clone()).or_default();
            st.meta = meta;
            st.scans_since_read = 0;
            if fp.is_some() && st.fingerprint == fp {
                continue;
            }
            st.fingerprint = fp;
            match check_file(&f, &text) {
                Ok(state) => {
                    st.last_good = Some(state);
                    st.error = None;
                    changed = true;
                }
                Err(e) => st.error = Some(e),
            }
        }
        changed
    }

    /// Every object in force: the last good version of each file. An object also
    /// defined by an earlier file (by name order) is left out and reported.
    pub fn objects(&self) -> (Vec<Object>, Vec<LoadError>) {
        let mut seen: BTreeMap<manifest::ObjectKey, Origin> = BTreeMap::new();
        let mut out = Vec::new();
        let mut conflicts = Vec::new();
        for st in self.files.values() {
            let Some(s) = &st.last_good else { continue };
            for (key, origin) in &s.origins {
                if let Some(prev) = seen.get(key) {
                    conflicts.push(LoadError {
                        origin: origin.clone(),
                        object: Some(format!("{} {}/{}", key.0, key.1, key.2)),
                        field: None,
                        line: None,
                        message: format!("also defined at {prev}; this definition is ignored"),
                    });
                } else {
                    seen.insert(key.clone(), origin.clone());
                }
            }
            let keep = |kind: &'static str, ns: &str, name: &str| {
                let k = (
                    kind,
                    if kind == "Namespace" { String::new() } else { ns.to_string() },
                    name.to_string(),
                );
                s.origins.get(&k).is_some_and(|o| seen.get(&k) == Some(o))
            };
            for n in &s.namespaces {
                if keep("Namespace", "", n.metadata.name.as_deref().unwrap_or("")) {
                    out.push(Object::Namespace(Box::new(n.clone())));
                }
            }
            for p in &s.pods {
                let o = Object::Pod(Box::new(p.clone()));
                let (ns, name) = o.key();
                if keep("Pod", &ns, &name) {
                    out.push(o);
                }
            }
            for p in &s.policies {
                let o = Object::NetworkPolicy(Box::new(p.clone()));
                let (ns, name) = o.key();
                if keep("NetworkPolicy", &ns, &name) {
                    out.push(o);
                }
            }
        }
        (out, conflicts)
    }

    /// Per-file standing.
    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|(f, st)| FileStatus {
                file: f.clone(),
                objects: st.last_good.as_ref().map_or(0, |s| s.origins.len()),
                errors: st
                    .error
                    .as_ref()
                    .map(|e| e.0.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The directory-level error, if the directory cannot be read.
    pub fn dir_error(&self) -> Option<&str> {
        self.dir_error.as_deref()
    }
}

/// Parses and validates one file as a unit: any error rejects the whole file.
fn check_file(file: &str, text: &str) -> Result<State, LoadErrors> {
    let state = manifest::parse(file, text)?;
    let mut errs = Vec::new();
    for p in &state.policies {
        let (_, problems) = policy_compiler::validate::policy(p);
        for pr in problems.into_iter().filter(|p| p.severity == Severity::Error) {
            let origin = state
                .origin_of(pr.object.kind, &pr.object.namespace, &pr.object.name)
                .cloned()
                .unwrap_or(Origin { file: file.to_string(), document: 0, line: 0, item: None });
            errs.push(LoadError {
                origin,
                object: Some(pr.object.to_string()),
                field: Some(pr.field),
                line: None,
                message: pr.message,
            });
        }
    }
    for p in &state.pods {
        let (_, problems) = policy_compiler::validate::pod(p);
        {
            for pr in problems {
                errs.push(LoadError {
                    origin: state
                        .origin_of("Pod", &pr.object.namespace, &pr.object.name)
                        .cloned()
                        .unwrap_or(Origin { file: file.to_string(), document: 0, line: 0, item: None }),
                    object: Some(pr.object.to_string()),
                    field: Some(pr.field),
                    line: None,
                    message: pr.message,
                });
            }
        }
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
}
