//! A validated snapshot of the cluster: what the compiler and the reference
//! evaluator both read.

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;

use crate::model::{NamespaceInfo, PodInfo, Policy, NAMESPACE_NAME_LABEL};
use crate::validate::{self, ObjectRef, Problem, Severity};

/// Namespaces, pods and policies after validation, sorted by key so that the
/// same objects in any order compile to the same table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespaces, sorted by name. Every namespace a pod or policy lives in is present.
    pub namespaces: Vec<NamespaceInfo>,
    /// Pods NetworkPolicy applies to, sorted by namespace/name.
    pub pods: Vec<PodInfo>,
    /// Policies (invalid ones fail-closed), sorted by namespace/name.
    pub policies: Vec<Policy>,
    /// Names of the namespaces of `namespaces` that no Namespace object
    /// gave (`from_objects` counts an invalid one as missing), assumed with
    /// only their name label because pods or policies live in them; sorted.
    /// A patch drops such a namespace once nothing lives in it any more.
    /// Build a `Cluster` with `from_objects` or `from_parts`, which fill it.
    pub assumed: Vec<String>,
}

impl Cluster {
    /// Validates API objects into a snapshot. Problems are returned, never
    /// fatal: an invalid policy is kept fail-closed, an invalid pod is left out
    /// (it cannot be addressed), a namespace that pods or policies live in but
    /// that is not in the input is assumed with only its name label.
    pub fn from_objects(
        namespaces: &[corev1::Namespace],
        pods: &[corev1::Pod],
        policies: &[netv1::NetworkPolicy],
    ) -> (Cluster, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut c = Cluster::default();
        for ns in namespaces {
            problems.extend(validate::namespace_problems(ns));
            match validate::namespace(ns) {
                Ok(n) => c.namespaces.push(n),
                Err(p) => problems.push(p),
            }
        }
        for p in pods {
            let (info, ps) = validate::pod(p);
            problems.extend(ps);
            c.pods.extend(info);
        }
        for np in policies {
            let (pol, ps) = validate::policy(np);
            problems.extend(ps);
            c.policies.push(pol);
        }
        c.normalize(&mut problems);
        (c, problems)
    }

    /// Builds a snapshot from already-validated parts (tests, generators).
    pub fn from_parts(namespaces: Vec<NamespaceInfo>, pods: Vec<PodInfo>, policies: Vec<Policy>) -> Cluster {
        let mut c = Cluster { namespaces, pods, policies, assumed: Vec::new() };
        c.normalize(&mut Vec::new());
        c
    }

    fn normalize(&mut self, problems: &mut Vec<Problem>) {
        self.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        self.namespaces.dedup_by(|a, b| a.name == b.name);
        for n in &mut self.namespaces {
            n.labels.insert(NAMESPACE_NAME_LABEL.to_string(), n.name.clone());
        }
        self.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.pods.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        self.policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.policies.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        let known: std::collections::HashSet<&str> =
            self.namespaces.iter().map(|n| n.name.as_str()).collect();
        let found = cross_object_problems(|ns| known.contains(ns), self.pods.iter(), self.policies.iter());
        let mut assumed: Vec<String> = found
            .iter()
            .filter(|p| p.field == "metadata.namespace")
            .map(|p| p.object.namespace.clone())
            .collect();
        assumed.sort();
        assumed.dedup();
        problems.extend(found);
        for ns in &assumed {
            self.namespaces.push(NamespaceInfo::assumed(ns));
        }
        self.assumed = assumed;
        self.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The namespace with this name.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceInfo> {
        self.namespaces.binary_search_by(|n| n.name.as_str().cmp(name)).ok().map(|i| &self.namespaces[i])
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.pods[i])
    }
}

/// The problems between objects of a snapshot: an address claimed by two
/// pods (the first by namespace/name owns it, in the table and in the
/// reference alike), and a pod or policy in a namespace that does not exist
/// (one warning per such namespace, naming its first object; it is assumed
/// with only its name label). `pods` and `policies` in namespace/name order.
pub fn cross_object_problems<'a>(
    namespace_exists: impl Fn(&str) -> bool,
    pods: impl Iterator<Item = &'a PodInfo>,
    policies: impl Iterator<Item = &'a Policy>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut owner: std::collections::HashMap<std::net::IpAddr, &PodInfo> =
        std::collections::HashMap::with_capacity(pods.size_hint().0);
    // The first object (pods before policies) of each namespace that does not
    // exist; names are copied only for those.
    let mut missing: std::collections::BTreeMap<&str, ObjectRef> = Default::default();
    let mut note_missing = |ns: &'a str, kind: &'static str, name: &str| {
        if !missing.contains_key(ns) && !namespace_exists(ns) {
            missing.insert(ns, ObjectRef { kind, namespace: ns.to_string(), name: name.to_string() });
        }
    };
    for p in pods {
        note_missing(&p.namespace, "Pod", &p.name);
        for ip in &p.ips {
            if let Some(f) = owner.get(ip) {
                problems.push(Problem {
                    severity: Severity::Warning,
                    object: ObjectRef { kind: "Pod", namespace: p.namespace.clone(), name: p.name.clone() },
                    field: "status.podIPs".into(),
                    message: format!(
                        "address {ip} is also claimed by pod {}/{}, which is used for it",
                        f.namespace, f.name
                    ),
                });
            } else {
                owner.insert(*ip, p);
            }
        }
    }
    for p in policies {
        note_missing(&p.namespace, "NetworkPolicy", &p.name);
    }
    for (ns, obj) in missing {
        problems.push(Problem {
            severity: Severity::Warning,
            object: obj,
            field: "metadata.namespace".into(),
            message: format!(
                "namespace {ns:?} is not in the input; assuming it exists with only the label {NAMESPACE_NAME_LABEL}={ns}"
            ),
        });
    }
    problems
}
