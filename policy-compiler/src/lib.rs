//! # policy-compiler
//!
//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) compiled into an
//! immutable decision table that answers "may this connection pass?" in a
//! time that does not grow with the number of policies or pods.
//!
//! ```text
//!  k8s-openapi objects            validated snapshot              compiled
//!  Namespace, Pod,  ──validate──▶  Cluster  ──DecisionTable::compile──▶ DecisionTable
//!  NetworkPolicy       │          (model.rs)       (table.rs)             │
//!                      ▼                                                  ▼
//!               Vec<Problem>                  verdict / verdict_both(src, dst, proto, port)
//!      (object, field path, message;                       -> Verdict { egress, ingress }
//!       invalid policies fail closed)
//!
//!                  reference::evaluate: the slow, literal reading of the
//!                  spec, used by tests and by `portcullis explain`.
//!
//!  PolicyChange(s) ──IncrementalCompiler::apply──▶ the same table, patched:
//!                   only the changed namespaces' sides rebuilt (table/patch.rs)
//!  PodChange(s) ────IncrementalCompiler::apply_pods──▶ patched: only the pods'
//!                   entries and addresses, when their labels are known
//!                   (a new label set: its namespace's sides, and its identity
//!                   block's key in the sides elsewhere that see it)
//!  NamespaceChange(s) ─IncrementalCompiler::apply_namespaces──▶ patched: new
//!                   and empty deleted namespaces change no side; new labels
//!                   give the namespace's block keys anew where selectors see it
//!  several kinds at once: IncrementalCompiler::batch (one copy, one table)
//! ```
//!
//! What comes in: API objects (or an already validated [`Cluster`]). What goes
//! out: a [`DecisionTable`] and the list of [`Problem`]s. This crate does no I/O,
//! reads no clock and contains no `unsafe`; the same input gives the same
//! table (its range maps hash sets of rules with secret random keys, which
//! could only make two compiles differ with probability about 2^-128).
//! Semantics are written down rule by rule in `docs/semantics.md`.

#![forbid(unsafe_code)]

pub mod cidr;
pub mod cluster;
pub mod model;
pub mod reference;
pub mod selector;
pub mod table;
pub mod validate;

pub use cluster::Cluster;
pub use model::{Direction, Protocol};
pub use table::patch::{Compilation, IncrementalCompiler, NamespaceChange, PodChange, PolicyChange};
pub use table::{DecisionTable, RuleRef, Side, SideId, TableStats, Verdict};
pub use validate::{ObjectRef, Problem, Severity};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;

/// A compiled table and the problems found in its input.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The validated snapshot the table was compiled from.
    pub cluster: Cluster,
    /// The table.
    pub table: DecisionTable,
    /// Invalid objects (errors; policies among them are enforced fail-closed),
    /// policies past their namespace's ipBlock budget (errors; their ipBlock
    /// peers match nothing), and warnings.
    pub problems: Vec<Problem>,
}

impl Compiled {
    /// Are there problems of severity [`Severity::Error`]?
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// Validates and compiles API objects in one step.
pub fn compile(
    namespaces: &[corev1::Namespace],
    pods: &[corev1::Pod],
    policies: &[netv1::NetworkPolicy],
) -> Compiled {
    let (cluster, problems) = Cluster::from_objects(namespaces, pods, policies);
    let table = DecisionTable::compile(&cluster);
    let mut problems = problems;
    problems.extend(table.budget_problems());
    Compiled { cluster, table, problems }
}
