//! The cluster index: owned and updated by one task, fed by the sources
//! (Kubernetes watchers, a manifest directory), and compiled into tables.
//!
//! Objects are validated as they arrive and only what the compiler needs is
//! kept (a pod is its labels, IPs and container ports, not its whole spec).
//! A full relist of a kind ([`Change::Replace`]) replaces that kind's objects
//! of that source, so a delete missed while disconnected is not kept alive.
//!
//! Each source's definition of an object is kept. When two sources define
//! the same object (`--kube` and `--manifests` together), the one with the
//! lower [`SourceId`] is in force (the cluster's), the other waits behind
//! it and is reported; whichever is deleted or relisted, the other's stays
//! or comes into force, so no source can remove what another defines.
//!
//! [`SourceId`]: crate::sources::SourceId

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use policy_compiler::model::{NamespaceInfo, PodInfo, Policy};
use policy_compiler::validate;
use policy_compiler::{Cluster, NamespaceChange, PodChange, PolicyChange, Problem};

/// Kinds the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// v1 Namespace.
    Namespace,
    /// v1 Pod.
    Pod,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
}

/// One object of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A namespace.
    Namespace(Box<corev1::Namespace>),
    /// A pod.
    Pod(Box<corev1::Pod>),
    /// A policy.
    NetworkPolicy(Box<netv1::NetworkPolicy>),
}

impl Kind {
    /// The kind's name, as in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

impl Object {
    /// Kind of the object.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// (namespace, name); namespace is empty for a Namespace.
    pub fn key(&self) -> (String, String) {
        let (meta, namespaced) = match self {
            Object::Namespace(o) => (&o.metadata, false),
            Object::Pod(o) => (&o.metadata, true),
            Object::NetworkPolicy(o) => (&o.metadata, true),
        };
        let ns = if namespaced { validate::namespace_of(meta) } else { String::new() };
        (ns, meta.name.clone().unwrap_or_default())
    }
}

/// A change from a source.
#[derive(Clone, Debug)]
pub enum Change {
    /// Added or modified.
    Apply(Object),
    /// Deleted.
    Delete(Kind, String, String),
    /// A full list of one kind from this source: everything of that kind not in
    /// the list is gone.
    Replace(Kind, Vec<Object>),
}

/// What the index keeps per object: the validated form and its problems.
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Namespace(NamespaceInfo),
    /// `None` when the pod is not a policy endpoint (no IP, host network, finished, invalid).
    Pod(Option<PodInfo>),
    Policy(Policy),
}

type Key = (Kind, String, String);

/// One source's definition of an object: the validated form and its problems.
type Def = (Entry, Vec<Problem>);

/// The index. Several sources may feed it; of an object several define, the
/// lowest source id's definition is in force, and a `Replace` from a source
/// only removes that source's definitions.
#[derive(Debug, Default)]
pub struct Index {
    /// The definition in force of each object, and its source.
    entries: BTreeMap<Key, (u16, Entry, Vec<Problem>)>,
    /// Definitions behind the one in force (from sources with a higher id).
    shadowed: BTreeMap<Key, BTreeMap<u16, Def>>,
    /// Bumped whenever `shadowed` changes (its warnings may have).
    shadow_changes: u64,
    generation: u64,
    /// Policies changed since the last [`Index::take_pending`].
    dirty_policies: std::collections::BTreeSet<(String, String)>,
    /// Pods changed since then.
    dirty_pods: std::collections::BTreeSet<(String, String)>,
    /// Namespaces changed since then.
    dirty_namespaces: std::collections::BTreeSet<String>,
    /// A kind was relisted since then.
    structural: bool,
    /// Objects per kind, and the keys of objects with problems: kept up to
    /// date so that a publication does not walk every object.
    counts: BTreeMap<Kind, usize>,
    with_problems: std::collections::BTreeSet<Key>,
}

/// What changed since the last compile, as [`Index::take_pending`] reports it.
#[derive(Debug)]
pub enum Pending {
    /// A kind was relisted: compile a full snapshot.
    Structural,
    /// Only these namespaces, pods and policies changed (each one's current
    /// validated form, or `None` when it is gone or, for a pod, not a policy
    /// endpoint): a patch may do.
    Objects {
        /// Changed namespaces.
        namespaces: Vec<NamespaceChange>,
        /// Changed pods.
        pods: Vec<PodChange>,
        /// Changed policies.
        policies: Vec<PolicyChange>,
    },
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Index { structural: true, ..Index::default() }
    }

    /// Changes to the definitions waiting behind others (their warnings,
    /// [`Index::cross_object_problems`], may have changed with nothing in force).
    pub fn shadow_changes(&self) -> u64 {
        self.shadow_changes
    }

    /// Number of changes applied so far (increases on every effective change).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies a change from `source`. Returns whether anything changed.
    pub fn apply(&mut self, source: u16, change: Change) -> bool {
        match change {
            Change::Apply(obj) => {
                // An update that leaves what the compiler reads as it was (a
                // pod's readiness, a namespace's annotations, a resync) changes
                // nothing: no patch, no publication.
                let (kind, key) = (obj.kind(), obj.key());
                if !self.upsert(source, obj) {
                    return false;
                }
                self.mark(kind, key);
                self.generation += 1;
                true
            }
            Change::Delete(kind, ns, name) => {
                let ns = if kind == Kind::Namespace { String::new() } else { ns };
                // A source deletes only what it owns: with `--kube` and `--manifests`
                // together, a manifest removed from the directory must not take the
                // cluster's object of the same name with it.
                let key = (kind, ns, name);
                let changed = self.withdraw(source, &key);
                if changed {
                    self.generation += 1;
                    self.mark(key.0, (key.1, key.2));
                }
                changed
            }
            Change::Replace(kind, objs) => {
                self.structural = true;
                let mine: Vec<Key> = self
                    .entries
                    .iter()
                    .filter(|((k, _, _), (src, _, _))| *k == kind && *src == source)
                    .map(|(key, _)| key.clone())
                    .chain(
                        self.shadowed
                            .iter()
                            .filter(|((k, _, _), defs)| *k == kind && defs.contains_key(&source))
                            .map(|(key, _)| key.clone()),
                    )
                    .collect();
                for key in &mine {
                    self.withdraw(source, key);
                }
                for o in objs {
                    if o.kind() == kind {
                        self.upsert(source, o);
                    }
                }
                self.counts.clear();
                for (k, _, _) in self.entries.keys() {
                    *self.counts.entry(*k).or_default() += 1;
                }
                self.with_problems = self
                    .entries
                    .iter()
                    .filter(|(_, (_, _, ps))| !ps.is_empty())
                    .map(|(k, _)| k.clone())
                    .collect();
                self.generation += 1;
                true
            }
        }
    }

    fn mark(&mut self, kind: Kind, key: (String, String)) {
        match kind {
            Kind::NetworkPolicy => {
                self.dirty_policies.insert(key);
            }
            Kind::Pod => {
                self.dirty_pods.insert(key);
            }
            Kind::Namespace => {
                self.dirty_namespaces.insert(key.1);
            }
        }
    }

    /// What changed since the last call (since creation, the first time:
    /// everything, a structural change).
    pub fn take_pending(&mut self) -> Pending {
        let dirty = std::mem::take(&mut self.dirty_policies);
        let dirty_pods = std::mem::take(&mut self.dirty_pods);
        let dirty_namespaces = std::mem::take(&mut self.dirty_namespaces);
        if std::mem::take(&mut self.structural) {
            return Pending::Structural;
        }
        let namespaces = dirty_namespaces
            .into_iter()
            .map(|name| {
                let (namespace, (_, name)) =
                    self.current(Kind::Namespace, (String::new(), name), |e| match e {
                        Entry::Namespace(n) => Some(n.clone()),
                        _ => None,
                    });
                NamespaceChange { name, namespace }
            })
            .collect();
        let pods = dirty_pods
            .into_iter()
            .map(|key| {
                let (pod, (namespace, name)) = self.current(Kind::Pod, key, |e| match e {
                    Entry::Pod(p) => p.clone(),
                    _ => None,
                });
                PodChange { namespace, name, pod }
            })
            .collect();
        let policies = dirty
            .into_iter()
            .map(|key| {
                let (policy, (namespace, name)) = self.current(Kind::NetworkPolicy, key, |e| match e {
                    Entry::Policy(p) => Some(p.clone()),
                    _ => None,
                });
                PolicyChange { namespace, name, policy }
            })
            .collect();
        Pending::Objects { namespaces, pods, policies }
    }

    /// What `pick` takes from the object of this kind and key (`None` when it is gone), and the key.
    fn current<T>(
        &self,
        kind: Kind,
        (namespace, name): (String, String),
        pick: impl Fn(&Entry) -> Option<T>,
    ) -> (Option<T>, (String, String)) {
        let key = (kind, namespace, name);
        let got = self.entries.get(&key).and_then(|(_, e, _)| pick(e));
        (got, (key.1, key.2))
    }

    /// Problems between objects: a pod or policy in a namespace that does
    /// not exist, an address two pods claim ([`cross_object_problems`]).
    /// Walks every object: the daemon calls it after a table is published.
    ///
    /// [`cross_object_problems`]: policy_compiler::cluster::cross_object_problems
    pub fn cross_object_problems(&self) -> Vec<Problem> {
        let mut namespaces = std::collections::HashSet::new();
        let mut pods = Vec::new();
        let mut policies = Vec::new();
        // Keys sort by kind, then namespace/name: the order the check needs.
        for (_, entry, _) in self.entries.values() {
            match entry {
                Entry::Namespace(n) => {
                    namespaces.insert(n.name.as_str());
                }
                Entry::Pod(Some(p)) => pods.push(p),
                Entry::Pod(None) => {}
                Entry::Policy(p) => policies.push(p),
            }
        }
        let mut problems = policy_compiler::cluster::cross_object_problems(
            |ns| namespaces.contains(ns),
            pods.iter().copied(),
            policies.iter().copied(),
        );
        problems.extend(self.shadowed_problems());
        problems
    }

    /// One warning per object that more than one source defines.
    fn shadowed_problems(&self) -> impl Iterator<Item = Problem> + '_ {
        use crate::sources::source_name;
        self.shadowed.iter().filter_map(|(key, defs)| {
            let (owner, _, _) = self.entries.get(key)?;
            let others: Vec<&str> = defs.keys().map(|s| source_name(*s)).collect();
            let (kind, namespace, name) = key.clone();
            Some(Problem {
                severity: validate::Severity::Warning,
                object: validate::ObjectRef { kind: kind.name(), namespace, name },
                field: "metadata.name".into(),
                message: format!(
                    "also defined by {}; the definition from {} is in force and the other is ignored until it goes",
                    others.join(", "),
                    source_name(*owner)
                ),
            })
        })
    }

    /// Every object's problems.
    pub fn problems(&self) -> Vec<Problem> {
        self.with_problems
            .iter()
            .filter_map(|k| self.entries.get(k))
            .flat_map(|(_, _, ps)| ps.iter().cloned())
            .collect()
    }

    /// Stores `obj` from `source`; returns whether that changed the entry
    /// (its owner, validated form or problems).
    fn upsert(&mut self, source: u16, obj: Object) -> bool {
        let (ns, name) = obj.key();
        let kind = obj.kind();
        let (entry, problems) = match &obj {
            Object::Namespace(o) => match validate::namespace(o) {
                Ok(n) => (Entry::Namespace(n), validate::namespace_problems(o)),
                Err(p) => {
                    // An invalid namespace keeps only its name label, like a missing one.
                    let info = NamespaceInfo { name: name.clone(), labels: Default::default() };
                    (Entry::Namespace(info), vec![p])
                }
            },
            Object::Pod(o) => {
                let (p, ps) = validate::pod(o);
                (Entry::Pod(p), ps)
            }
            Object::NetworkPolicy(o) => {
                let (p, ps) = validate::policy(o);
                (Entry::Policy(p), ps)
            }
        };
        let key = (kind, ns, name);
        match self.entries.get(&key) {
            // Behind the definition in force: kept for when that one goes.
            Some((owner, _, _)) if *owner < source => {
                self.shadowed.entry(key).or_default().insert(source, (entry, problems));
                self.shadow_changes += 1;
                false
            }
            Some((owner, _, _)) if *owner > source => {
                let (owner, e, ps) = self.entries.get(&key).cloned().expect("present");
                self.shadowed.entry(key.clone()).or_default().insert(owner, (e, ps));
                self.shadow_changes += 1;
                self.set_in_force(key, Some((source, entry, problems)))
            }
            _ => self.set_in_force(key, Some((source, entry, problems))),
        }
    }

    /// Removes `source`'s definition of `key`; the next source's comes into
    /// force if it was the one in force. Returns whether what is in force changed.
    fn withdraw(&mut self, source: u16, key: &Key) -> bool {
        if self.entries.get(key).is_none_or(|(owner, _, _)| *owner != source) {
            if let Some(defs) = self.shadowed.get_mut(key) {
                if defs.remove(&source).is_some() {
                    self.shadow_changes += 1;
                }
                if defs.is_empty() {
                    self.shadowed.remove(key);
                }
            }
            return false;
        }
        let next = self.shadowed.get_mut(key).and_then(|defs| defs.pop_first());
        if next.is_some() {
            self.shadow_changes += 1;
        }
        if self.shadowed.get(key).is_some_and(BTreeMap::is_empty) {
            self.shadowed.remove(key);
        }
        self.set_in_force(key.clone(), next.map(|(src, (e, ps))| (src, e, ps)))
    }

    /// Puts `new` in force for `key` (`None`: nothing), keeping the counts and
    /// the keys with problems; returns whether that changed anything.
    fn set_in_force(&mut self, key: Key, new: Option<(u16, Entry, Vec<Problem>)>) -> bool {
        if self.entries.get(&key) == new.as_ref() {
            return false;
        }
        let kind = key.0;
        match &new {
            Some((_, _, ps)) if !ps.is_empty() => {
                self.with_problems.insert(key.clone());
            }
            _ => {
                self.with_problems.remove(&key);
            }
        }
        let (had, has) = (self.entries.contains_key(&key), new.is_some());
        match new {
            Some(n) => self.entries.insert(key, n),
            None => self.entries.remove(&key),
        };
        let count = self.counts.entry(kind).or_default();
        match (had, has) {
            (false, true) => *count += 1,
            (true, false) => *count = count.saturating_sub(1),
            _ => {}
        }
        true
    }

    /// Counts of objects per kind (all objects, including pods that are not endpoints).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        self.counts.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (*k, *n)).collect()
    }

    /// The validated snapshot to compile, and every object's problems.
    pub fn snapshot(&self) -> (Cluster, Vec<Problem>) {
        let mut namespaces = Vec::new();
        let mut pods = Vec::new();
        let mut policies = Vec::new();
        let mut problems = Vec::new();
        for (_, entry, ps) in self.entries.values() {
            problems.extend(ps.iter().cloned());
            match entry {
                Entry::Namespace(n) => namespaces.push(n.clone()),
                Entry::Pod(Some(p)) => pods.push(p.clone()),
                Entry::Pod(None) => {}
                Entry::Policy(p) => policies.push(p.clone()),
            }
        }
        (Cluster::from_parts(namespaces, pods, policies), problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::DecisionTable;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).unwrap()
    }

    fn pod(ns: &str, name: &str, ip: &str, app: &str) -> Object {
        Object::Pod(Box::new(yaml(&format!(
            "metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}"
        ))))
    }

    fn deny_all(ns: &str) -> Object {
        Object::NetworkPolicy(Box::new(yaml(&format!(
            "metadata: {{name: deny, namespace: {ns}}}\nspec: {{podSelector: {{}}}}"
        ))))
    }

    fn allowed(idx: &Index, from: &str, to: &str) -> bool {
        let (c, _) = idx.snapshot();
        DecisionTable::compile(&c).verdict(from.parse().unwrap(), to.parse().unwrap(), 6, 80).allowed()
    }

    #[test]
    fn apply_modify_delete_reach_the_table() {
        let mut idx = Index::new();
        idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.1", "a")));
        idx.apply(0, Change::Apply(pod("x", "b", "10.0.0.2", "b")));
        assert!(allowed(&idx, "10.0.0.2", "10.0.0.1"));
        idx.apply(0, Change::Apply(deny_all("x")));
        assert!(!allowed(&idx, "10.0.0.2", "10.0.0.1"));
        // Modify: the pod moves to another IP.
        idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.9", "a")));
        assert!(!allowed(&idx, "10.0.0.2", "10.0.0.9"));
        assert!(allowed(&idx, "10.0.0.2", "10.0.0.1"), "old IP is no longer a pod");
        assert!(idx.apply(0, Change::Delete(Kind::NetworkPolicy, "x".into(), "deny".into())));
        assert!(allowed(&idx, "10.0.0.2", "10.0.0.9"));
        assert!(!idx.apply(0, Change::Delete(Kind::NetworkPolicy, "x".into(), "deny".into())));
    }

    #[test]
    fn replace_drops_objects_missing_from_the_relist() {
        let mut idx = Index::new();
        idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.1", "a")));
        idx.apply(0, Change::Apply(deny_all("x")));
        // A relist after a disconnect no longer has the policy: its delete was missed.
        idx.apply(0, Change::Replace(Kind::NetworkPolicy, vec![]));
        assert!(allowed(&idx, "10.0.0.2", "10.0.0.1"));
        assert_eq!(idx.counts().get(&Kind::Pod), Some(&1), "other kinds untouched");
    }

    #[test]
    fn replace_only_touches_its_own_source() {
        let mut idx = Index::new();
        idx.apply(1, Change::Apply(deny_all("x")));
        idx.apply(2, Change::Replace(Kind::NetworkPolicy, vec![]));
        assert_eq!(idx.counts().get(&Kind::NetworkPolicy), Some(&1));
    }

    #[test]
    fn delete_only_touches_its_own_source() {
        let mut idx = Index::new();
        idx.apply(1, Change::Apply(deny_all("x")));
        assert!(!idx.apply(2, Change::Delete(Kind::NetworkPolicy, "x".into(), "deny".into())));
        assert_eq!(idx.counts().get(&Kind::NetworkPolicy), Some(&1));
        assert!(idx.apply(1, Change::Delete(Kind::NetworkPolicy, "x".into(), "deny".into())));
        assert_eq!(idx.counts().get(&Kind::NetworkPolicy), None);
    }

    /// With `--kube` and `--manifests`, both may define the same object: the
    /// cluster's is in force, the manifest's waits behind it (reported), and
    /// neither source's delete or relist removes the other's definition.
    #[test]
    fn two_sources_defining_one_object_never_remove_each_others() {
        use crate::sources::{KUBE, MANIFESTS};
        let open = |idx: &Index| allowed(idx, "10.0.0.2", "10.0.0.1");
        let mut idx = Index::new();
        idx.apply(KUBE, Change::Apply(pod("x", "a", "10.0.0.1", "a")));
        idx.apply(KUBE, Change::Apply(pod("x", "b", "10.0.0.2", "b")));
        idx.apply(KUBE, Change::Apply(deny_all("x")));
        assert!(!open(&idx));
        // The manifest defines the same policy (allowing everything): it waits.
        let allow_all = || {
            Object::NetworkPolicy(Box::new(yaml(
                "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}",
            )))
        };
        assert!(!idx.apply(MANIFESTS, Change::Apply(allow_all())));
        assert!(!open(&idx));
        let warnings: Vec<String> = idx.cross_object_problems().iter().map(|p| p.to_string()).collect();
        assert!(
            warnings.iter().any(|w| w.contains("NetworkPolicy x/deny")
                && w.contains("also defined by manifests; the definition from kubernetes is in force")),
            "{warnings:?}"
        );
        // The manifest goes: the cluster's stays.
        assert!(!idx.apply(MANIFESTS, Change::Delete(Kind::NetworkPolicy, "x".into(), "deny".into())));
        assert!(!open(&idx));
        let shadowed =
            |idx: &Index| idx.cross_object_problems().iter().any(|p| p.message.contains("also defined"));
        assert!(!shadowed(&idx));
        // Back, then the cluster relists: the cluster's definition is replaced by
        // the relist's, and the manifest's still waits.
        idx.apply(MANIFESTS, Change::Apply(allow_all()));
        idx.apply(KUBE, Change::Replace(Kind::NetworkPolicy, vec![deny_all("x")]));
        assert!(!open(&idx));
        assert_eq!(idx.counts().get(&Kind::NetworkPolicy), Some(&1));
        // The cluster deletes its policy: the manifest's comes into force.
        assert!(idx.apply(KUBE, Change::Delete(Kind::NetworkPolicy, "x".into(), "deny".into())));
        assert!(open(&idx));
        assert_eq!(idx.counts().get(&Kind::NetworkPolicy), Some(&1));
        // A relist without it keeps the manifest's; the cluster defining it again wins.
        idx.apply(KUBE, Change::Replace(Kind::NetworkPolicy, vec![]));
        assert!(open(&idx));
        assert!(idx.apply(KUBE, Change::Apply(deny_all("x"))));
        assert!(!open(&idx));
        assert_eq!(idx.counts().get(&Kind::NetworkPolicy), Some(&1), "taken over, still one object");
        let (_, problems) = idx.snapshot();
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn invalid_policy_is_kept_fail_closed_with_its_problem() {
        let mut idx = Index::new();
        idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.1", "a")));
        idx.apply(
            0,
            Change::Apply(Object::NetworkPolicy(Box::new(yaml(
                "metadata: {name: bad, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]",
            )))),
        );
        let (_, problems) = idx.snapshot();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.ingress[0].ports[0].port");
        assert!(!allowed(&idx, "10.0.0.2", "10.0.0.1"));
    }

    #[test]
    fn kept_counts_and_problems_match_a_walk_over_every_object() {
        let bad = |name: &str| {
            Object::NetworkPolicy(Box::new(yaml(&format!(
                "metadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: 0}}]}}]"
            ))))
        };
        let mut idx = Index::new();
        let walk = |idx: &Index| {
            let mut counts = BTreeMap::new();
            for (k, _, _) in idx.entries.keys() {
                *counts.entry(*k).or_insert(0usize) += 1;
            }
            let problems: Vec<String> =
                idx.entries.values().flat_map(|e| e.2.iter().map(|p| p.to_string())).collect();
            (counts, problems)
        };
        let check = |idx: &Index| {
            let (counts, problems) = walk(idx);
            assert_eq!(idx.counts(), counts);
            assert_eq!(idx.problems().iter().map(|p| p.to_string()).collect::<Vec<_>>(), problems);
        };
        idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.1", "a")));
        idx.apply(0, Change::Apply(bad("b1")));
        idx.apply(0, Change::Apply(bad("b2")));
        check(&idx);
        // Fixed: its problem goes; deleted: its count goes.
        idx.apply(0, Change::Apply(deny_all("x")));
        idx.apply(
            0,
            Change::Apply(Object::NetworkPolicy(Box::new(yaml(
                "metadata: {name: b1, namespace: x}\nspec: {podSelector: {}}",
            )))),
        );
        idx.apply(0, Change::Delete(Kind::NetworkPolicy, "x".into(), "b2".into()));
        check(&idx);
        assert_eq!(idx.problems().len(), 0);
        idx.apply(1, Change::Apply(bad("b3")));
        idx.apply(0, Change::Replace(Kind::NetworkPolicy, vec![bad("b4")]));
        check(&idx);
        assert_eq!(idx.problems().len(), 2, "b3 from the other source stays");
        idx.apply(0, Change::Replace(Kind::Pod, vec![]));
        check(&idx);
    }

    #[test]
    fn cross_object_problems_are_those_a_full_load_reports() {
        let mut idx = Index::new();
        idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.1", "a")));
        idx.apply(0, Change::Apply(pod("x", "b", "10.0.0.1", "b")));
        idx.apply(0, Change::Apply(deny_all("y")));
        idx.apply(0, Change::Apply(Object::Namespace(Box::new(yaml("metadata: {name: y}")))));
        let found: Vec<String> = idx.cross_object_problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            found,
            [
                "warning: Pod x/b: status.podIPs: address 10.0.0.1 is also claimed by pod x/a, which is used for it",
                "warning: Pod x/a: metadata.namespace: namespace \"x\" is not in the input; assuming it exists with only the label kubernetes.io/metadata.name=x",
            ]
        );
        // The same check a snapshot's compile runs.
        let (c, _) = idx.snapshot();
        let expect =
            policy_compiler::cluster::cross_object_problems(|ns| ns == "y", c.pods.iter(), c.policies.iter());
        assert_eq!(idx.cross_object_problems(), expect);
    }

    #[test]
    fn an_update_that_changes_nothing_compiled_is_no_change() {
        let mut idx = Index::new();
        let _ = idx.take_pending();
        let ns = |labels: &str| {
            Object::Namespace(Box::new(yaml(&format!("metadata: {{name: x, labels: {{{labels}}}}}"))))
        };
        assert!(idx.apply(0, Change::Apply(ns("team: a"))));
        assert!(
            matches!(idx.take_pending(), Pending::Objects { ref namespaces, .. } if namespaces.len() == 1)
        );
        // A namespace whose annotations changed, and a pod whose readiness did: the
        // compiler reads neither, so nothing is pending and the generation stays.
        let generation = idx.generation();
        let annotated = Object::Namespace(Box::new(yaml(
            "metadata: {name: x, labels: {team: a}, annotations: {owner: me}}",
        )));
        assert!(!idx.apply(0, Change::Apply(annotated)));
        assert!(idx.apply(0, Change::Apply(pod("x", "a", "10.0.0.1", "a"))));
        let _ = idx.take_pending();
        let ready = Object::Pod(Box::new(yaml(
            "metadata: {name: a, namespace: x, labels: {app: a}}\nstatus: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}",
        )));
        assert!(!idx.apply(0, Change::Apply(ready)));
        assert!(
            matches!(idx.take_pending(), Pending::Objects { ref namespaces, ref pods, ref policies } if namespaces.is_empty() && pods.is_empty() && policies.is_empty())
        );
        assert_eq!(idx.generation(), generation + 1, "only the new pod counted");
        // The same object from a source with a higher id waits behind it: no change.
        assert!(!idx.apply(1, Change::Apply(ns("team: z"))));
        // A label change is one.
        assert!(idx.apply(0, Change::Apply(ns("team: b"))));
        match idx.take_pending() {
            Pending::Objects { namespaces, pods, policies } => {
                assert!(pods.is_empty() && policies.is_empty());
                assert_eq!(namespaces.len(), 1);
                assert_eq!(namespaces[0].name, "x");
                let labels = &namespaces[0].namespace.as_ref().expect("present").labels;
                assert_eq!(labels.get("team").map(String::as_str), Some("b"));
            }
            other => panic!("{other:?}"),
        }
        // The waiting definition's delete changes nothing; the one in force's is a
        // change with no namespace.
        assert!(!idx.apply(1, Change::Delete(Kind::Namespace, String::new(), "x".into())));
        assert!(idx.apply(0, Change::Delete(Kind::Namespace, String::new(), "x".into())));
        assert!(matches!(idx.take_pending(),
            Pending::Objects { ref namespaces, .. } if namespaces.len() == 1 && namespaces[0].namespace.is_none()));
    }
}
