//! Incremental compilation: a policy change recompiles only the sides of its
//! own namespace, in a copy of the last table.
//!
//! ```text
//!  PolicyChange(s) ──▶ cluster.policies updated ──▶ per changed namespace N:
//!                                                   sides of N's identities rebuilt,
//!                                                   appended to a copy of the table;
//!                                                   N's pod entries point at them
//!  anything else (a pod, a namespace, a new ipBlock or port name) ──▶ full compile
//! ```
//!
//! Why this is exact: a policy only selects pods of its own namespace, so a
//! side (a direction and a list of isolating policies) belongs to one
//! namespace, and no other namespace's pod uses it. Everything else a side
//! reads is derived from pods and namespaces (identities, identity blocks) or
//! from the set of ipBlocks and port names (CIDR classes, interned names),
//! which a patch requires unchanged (`PolicyContext::covers`; an ipBlock no
//! policy uses any more only leaves the partition finer than needed).
//!
//! What it costs: the replaced sides' data stays in the table, unused, until
//! the next full compile ([`IncrementalCompiler::stale_share`] says how much;
//! the control plane compacts in a quiet moment). Policies keep their index
//! for as long as they exist; new ones are appended to the table's name list,
//! and deleted ones leave an unused name behind (so a [`RuleRef`] in a
//! connection tracked under an older table still names the right policy).

use std::sync::Arc;

use super::*;

/// One policy change: `namespace/name` is now `policy`, or is deleted (`None`).
#[derive(Clone, Debug)]
pub struct PolicyChange {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name of the policy.
    pub name: String,
    /// The validated policy, or `None` for a delete.
    pub policy: Option<Policy>,
}

/// How [`IncrementalCompiler::apply`] compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compilation {
    /// Only the sides of these namespaces were rebuilt.
    Patched {
        /// Namespaces whose sides were rebuilt.
        namespaces: Vec<String>,
    },
    /// The whole table was compiled again, and why.
    Full {
        /// What a patch could not handle.
        reason: String,
    },
}

/// A cluster snapshot and its compiled table, kept up to date by policy changes.
pub struct IncrementalCompiler {
    cluster: Cluster,
    table: Arc<DecisionTable>,
    ids: Identities,
    ctx: PolicyContext,
    /// The table's policy index of each policy of `cluster`, in its order.
    policy_ids: Vec<u32>,
    /// Heap bytes patches appended since the last full compile (about what
    /// the replaced sides still hold).
    appended_bytes: usize,
    /// Bytes of the arrays patches append to, after the last full compile.
    base_bytes: usize,
    /// Earlier tables, kept so that a patch can copy into the buffers of one
    /// nobody else holds any more: memory already mapped, where fresh
    /// allocations of this size would fault every page in again (about 1.5x
    /// the copy time at 10,000 policies; see docs/performance.md).
    spare: std::collections::VecDeque<Arc<DecisionTable>>,
    /// Selector peers resolved so far (they depend only on namespaces and
    /// pods, which patches never change).
    peers: PeerCache,
}

/// Earlier tables an [`IncrementalCompiler`] keeps for their buffers: enough
/// for the tables a dataplane still holds right after a publication (the
/// current one and two retired ones), plus one free.
const SPARE_TABLES: usize = 4;

impl IncrementalCompiler {
    /// Compiles `cluster` in full.
    pub fn new(cluster: Cluster) -> Self {
        let full = compile_full(&cluster);
        let base_bytes = data_bytes(&full.table);
        IncrementalCompiler {
            policy_ids: (0..cluster.policies.len() as u32).collect(),
            cluster,
            table: Arc::new(full.table),
            ids: full.ids,
            ctx: full.ctx,
            appended_bytes: 0,
            base_bytes,
            spare: Default::default(),
            peers: full.peers,
        }
    }

    /// The snapshot the table was compiled from.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The current table.
    pub fn table(&self) -> &DecisionTable {
        &self.table
    }

    /// The current table, shared (publishing it costs no copy).
    pub fn shared_table(&self) -> Arc<DecisionTable> {
        self.table.clone()
    }

    /// Replaces the snapshot and compiles it in full.
    pub fn replace(&mut self, cluster: Cluster) {
        *self = IncrementalCompiler::new(cluster);
    }

    /// Compiles the current snapshot in full, dropping what patches left unused.
    pub fn compact(&mut self) {
        let cluster = std::mem::take(&mut self.cluster);
        self.replace(cluster);
    }

    /// What patches appended since the last full compile (about what the
    /// replaced sides hold, unused), relative to the side data of that
    /// compile: 1.0 when the unused data has grown as large as the live data.
    pub fn stale_share(&self) -> f64 {
        self.appended_bytes as f64 / self.base_bytes.max(1) as f64
    }

    /// Applies policy changes (in order; the last change of a policy wins)
    /// and recompiles: only the changed namespaces' sides when it can, the
    /// whole table otherwise. Either way the table equals a full compile of
    /// the updated snapshot, verdict for verdict and reason for reason.
    pub fn apply(&mut self, changes: Vec<PolicyChange>) -> Compilation {
        let mut blocker = None;
        for ch in &changes {
            if !self.ids.ns_index.contains_key(ch.namespace.as_str()) {
                blocker = Some(format!("namespace {:?} is new", ch.namespace));
            } else if let Some(p) = &ch.policy {
                if p.namespace != ch.namespace || p.name != ch.name {
                    blocker = Some(format!(
                        "change of {}/{} carries {}/{}",
                        ch.namespace, ch.name, p.namespace, p.name
                    ));
                } else if !self.ctx.covers(p) {
                    blocker =
                        Some(format!("policy {}/{} brings a new ipBlock or port name", p.namespace, p.name));
                }
            }
            if blocker.is_some() {
                break;
            }
        }
        let mut table = blocker.is_none().then(|| {
            let free = self.spare.iter().position(|t| Arc::strong_count(t) == 1);
            let reuse = free.and_then(|i| self.spare.remove(i)).and_then(|t| Arc::try_unwrap(t).ok());
            copy_to_patch(&self.table, reuse)
        });
        let mut touched: Vec<u32> = Vec::new();
        for ch in changes {
            let key = (ch.namespace.as_str(), ch.name.as_str());
            let at =
                self.cluster.policies.binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&key));
            if let Some(&ns) = self.ids.ns_index.get(ch.namespace.as_str()) {
                touched.push(ns);
            }
            match (at, ch.policy) {
                (Ok(i), Some(p)) => self.cluster.policies[i] = p,
                (Ok(i), None) => {
                    self.cluster.policies.remove(i);
                    self.policy_ids.remove(i);
                }
                (Err(i), Some(p)) => {
                    if let Some(t) = table.as_mut() {
                        self.policy_ids.insert(i, t.policies.len() as u32);
                        Arc::make_mut(&mut t.policies)
                            .push((p.namespace.as_str().into(), p.name.as_str().into()));
                    }
                    self.cluster.policies.insert(i, p);
                }
                (Err(_), None) => {}
            }
        }
        let Some(mut t) = table else {
            // Policies in a new namespace: the snapshot assumes it, as a full
            // snapshot would (see `Cluster::from_parts`).
            let cluster = std::mem::take(&mut self.cluster);
            let Cluster { namespaces, pods, policies } = cluster;
            self.replace(Cluster::from_parts(namespaces, pods, policies));
            return Compilation::Full { reason: blocker.unwrap_or_default() };
        };
        touched.sort_unstable();
        touched.dedup();
        let before = data_bytes(&t);
        let mut b = SideBuilder::new(
            SetBuilder::resume(std::mem::take(&mut t.entries), std::mem::take(&mut t.entry_rules)),
            std::mem::take(&mut t.patch_slots),
            std::mem::take(&mut t.groups),
        );
        b.table_flag = PATCHED;
        let mut c = Compiler::new(&self.cluster, &self.ids, &self.ctx, &self.policy_ids);
        c.known = Some(&self.peers);
        let mut names = Vec::new();
        for &ns in &touched {
            let name = self.cluster.namespaces[ns as usize].name.as_str();
            names.push(name.to_string());
            let policies = range_of(&self.cluster.policies, name, |p| &p.namespace);
            let pods = range_of(&self.cluster.pods, name, |p| &p.namespace);
            let mut replaced: Vec<u32> =
                pods.clone().flat_map(|i| t.pods[i].sides).filter(|s| *s != 0).collect();
            replaced.sort_unstable();
            replaced.dedup();
            t.stats.replaced_sides += replaced.len();
            let plan = c.plan_sides(policies, &self.ids.ns_identities[ns as usize], t.sides.len() as u32);
            for (dir, list) in &plan.lists {
                t.sides.push(b.build(&mut c, *dir, list));
                let a = t.side_policies.len() as u32;
                t.side_policies.extend(list.iter().map(|&pi| self.policy_ids[pi as usize]));
                t.side_info.push(SideInfo { policies: (a, t.side_policies.len() as u32), dir: Some(*dir) });
            }
            for pi in pods {
                let identity = self.ids.pod_identity[pi];
                t.pods[pi].sides = plan.identity_sides.get(&identity).copied().unwrap_or_default();
            }
        }
        // Resolutions this patch made, kept for the next ones.
        let fresh: Vec<((NamespaceMatch, Selector), Arc<Resolution>)> = c
            .peer_cache
            .iter()
            .filter(|((n, p), _)| !self.peers.contains_key(&PeerRef(n, p)))
            .map(|((n, p), r)| (((*n).clone(), (*p).clone()), r.clone()))
            .collect();
        drop(c);
        self.peers.extend(fresh);
        t.stats.peer_keys += b.peer_keys;
        t.stats.peer_groups += b.peer_groups;
        t.stats.port_sets += b.sets.interned.len();
        (t.entries, t.entry_rules, t.patch_slots, t.groups) =
            (b.sets.entries, b.sets.rules, b.slots, b.groups);
        t.stats.port_entries = t.entries.len() - t.stats.port_sets - 1;
        t.stats.policies = self.cluster.policies.len();
        t.stats.invalid_policies = self.cluster.policies.iter().filter(|p| !p.valid).count();
        t.stats.sides = t.side_info.len();
        t.stats.memory_bytes = t.memory_estimate();
        self.appended_bytes += data_bytes(&t) - before;
        let old = std::mem::replace(&mut self.table, Arc::new(t));
        self.spare.push_back(old);
        if self.spare.len() > SPARE_TABLES {
            self.spare.pop_front();
        }
        Compilation::Patched { namespaces: names }
    }
}

/// The range of a slice sorted by namespace that holds namespace `ns`.
fn range_of<T>(v: &[T], ns: &str, key: impl Fn(&T) -> &String) -> std::ops::Range<usize> {
    let a = v.partition_point(|x| key(x).as_str() < ns);
    let b = a + v[a..].partition_point(|x| key(x).as_str() == ns);
    a..b
}

/// Bytes of the arrays a patch appends to (by length, not capacity).
fn data_bytes(t: &DecisionTable) -> usize {
    use std::mem::size_of;
    (t.slots.len() + t.patch_slots.len()) * size_of::<Slot>()
        + t.groups.len() * size_of::<Group>()
        + t.entries.len() * size_of::<PortEntry>()
        + t.entry_rules.len() * size_of::<RuleRef>()
        + t.sides.len() * size_of::<SideEntry>()
        + t.side_info.len() * size_of::<SideInfo>()
        + t.side_policies.len() * 4
}

/// A copy of `t` to patch, made in the buffers of `into` when given: the
/// arrays a patch appends to get room to grow without moving again; the
/// parts a patch never changes are shared.
fn copy_to_patch(t: &DecisionTable, into: Option<DecisionTable>) -> DecisionTable {
    fn room<T: Clone>(dst: &mut Vec<T>, src: &[T]) {
        dst.clear();
        dst.reserve(src.len() + src.len() / 16 + 64);
        dst.extend_from_slice(src);
    }
    // The empty table's buffers are tiny: a first patch allocates afresh.
    let mut out = into.unwrap_or_default();
    out.addr_v4.clone_from(&t.addr_v4);
    out.addr_v6.clone_from(&t.addr_v6);
    out.pods.clone_from(&t.pods);
    out.pod_keys = t.pod_keys.clone();
    out.named.clone_from(&t.named);
    out.cidr.clone_from(&t.cidr);
    room(&mut out.sides, &t.sides);
    room(&mut out.side_info, &t.side_info);
    room(&mut out.side_policies, &t.side_policies);
    out.slots = t.slots.clone();
    room(&mut out.patch_slots, &t.patch_slots);
    room(&mut out.groups, &t.groups);
    room(&mut out.entries, &t.entries);
    room(&mut out.entry_rules, &t.entry_rules);
    out.policies = t.policies.clone();
    out.stats = t.stats.clone();
    out
}
