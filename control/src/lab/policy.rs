//! The lab's objects: the cluster file given to `lab up`, then every file
//! added by `lab apply`, later objects replacing earlier ones with the same
//! kind, namespace and name (as `kubectl apply` does).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::Metadata;
use policy_compiler::Compiled;

use crate::manifest::{self, LoadErrors};

use super::state::{APPLIED_DIR, CLUSTER_FILE};

/// Namespaces, pods and policies after merging.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Namespaces.
    pub namespaces: Vec<corev1::Namespace>,
    /// Pods.
    pub pods: Vec<corev1::Pod>,
    /// NetworkPolicies.
    pub policies: Vec<netv1::NetworkPolicy>,
}

impl Objects {
    /// Adds the objects of `state`, replacing same-named ones.
    pub fn merge(&mut self, state: manifest::State) {
        replace_all(&mut self.namespaces, state.namespaces);
        replace_all(&mut self.pods, state.pods);
        replace_all(&mut self.policies, state.policies);
    }

    /// Validates and compiles.
    pub fn compile(&self) -> Compiled {
        policy_compiler::compile(&self.namespaces, &self.pods, &self.policies)
    }
}

fn replace_all<T: Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    into: &mut Vec<T>,
    new: Vec<T>,
) {
    for obj in new {
        let key = |o: &T| (o.metadata().namespace.clone(), o.metadata().name.clone());
        match into.iter().position(|o| key(o) == key(&obj)) {
            Some(i) => into[i] = obj,
            None => into.push(obj),
        }
    }
}

/// The files that make up the lab's objects, in order.
pub fn lab_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![dir.join(CLUSTER_FILE)];
    if let Ok(rd) = std::fs::read_dir(dir.join(APPLIED_DIR)) {
        let mut applied: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        applied.sort();
        files.extend(applied);
    }
    files
}

/// Loads and merges `files`.
pub fn load(files: &[PathBuf]) -> Result<Objects, LoadErrors> {
    let mut objects = Objects::default();
    let mut errors = Vec::new();
    for f in files {
        match manifest::load(&f.to_string_lossy()) {
            Ok(s) => objects.merge(s),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(LoadErrors(errors))
    }
}
