//! Helpers shared by the test binaries of this crate.

use policy_compiler::{DecisionTable, Side};

/// A side, with the policies it names given by name, so that tables whose
/// policy indexes differ (a patched one and a full compile) can be compared.
pub fn named_side(t: &DecisionTable, s: Side) -> (u8, Vec<String>, u32) {
    let name = |i: u32| {
        let (ns, n) = t.policy(i);
        format!("{ns}/{n}")
    };
    match s {
        Side::NotPod => (0, vec![], 0),
        Side::NotIsolated => (1, vec![], 0),
        Side::Allowed(r) => (2, vec![name(r.policy)], r.rule),
        Side::Denied(id) => {
            let (dir, list) = t.isolating_policies(id);
            let mut v: Vec<String> = list.map(name).collect();
            v.push(format!("{dir:?}"));
            (3, v, 0)
        }
        Side::Skipped => (4, vec![], 0),
    }
}
