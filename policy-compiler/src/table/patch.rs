//! Incremental compilation: a policy change recompiles only the sides of its
//! own namespace, a pod change only that pod's entry and addresses, and a
//! namespace change only the sides whose namespace selectors it concerns, in
//! a copy of the last table.
//!
//! ```text
//!  PolicyChange(s) ───▶ cluster.policies updated ───▶ per changed namespace N:
//!                                                     sides of N's identities rebuilt,
//!                                                     appended to a copy of the table;
//!                                                     N's pod entries point at them
//!  PodChange(s) ──────▶ cluster.pods updated ───────▶ per pod: its entry (its identity's
//!                                                     block and sides) and its addresses
//!  NamespaceChange(s) ▶ cluster.namespaces updated ─▶ new or deleted empty namespace: no
//!                                                     side; new labels: the namespace's
//!                                                     block keys expanded anew in the sides
//!                                                     whose peers start or stop seeing it
//!  anything else (an address two pods claim, a new ipBlock or port name, new
//!  labels on a namespace where pod patches paired label sets, rebuilds of
//!  over a quarter of a large cluster's namespaces, a rebuilt namespace past
//!  its ipBlock budget, a pod change in one) ──▶ full compile
//! ```
//!
//! Why a policy patch is exact: a policy only selects pods of its own
//! namespace, so a side (a direction and a list of isolating policies)
//! belongs to one namespace, and no other namespace's pod uses it.
//! Everything else a side reads is derived from pods and namespaces
//! (identities, identity blocks), from its own policies (its range maps,
//! and whether they fit its namespace's budget, which a patch decides
//! afresh for each namespace it rebuilds), or from the set of ipBlocks and
//! port names (pods' "inside some ipBlock" bits, interned names), which a
//! patch requires unchanged (`PolicyContext::covers`; an ipBlock no policy
//! uses any more only leaves some pod addresses marked for nothing).
//!
//! Why a pod patch is exact: a pod with the labels of an existing identity
//! is, to every selector, that identity, so it gets that identity's sides
//! and (block, bit) and no side changes. The same holds for a label set that
//! no selector of any policy tells from an existing identity's (a rollout's new
//! `pod-template-hash`); the pairing is remembered, and a policy change that
//! would tell them apart compiles in full. A label set that selectors do
//! tell apart becomes a new identity in a free bit of its namespace's
//! blocks (a fresh block, numbered after all others, when they are full or
//! the namespace has none yet). Its own namespace's sides are rebuilt; the
//! sides of other namespaces whose policies can see it keep their peer
//! tables but the identity block's key, which is expanded anew
//! (`SideBuilder::rebuild_keys`): every peer whose resolution changed,
//! changed in that block only.
//!
//! Why a namespace patch is exact: to a selector, a namespace is its labels
//! and its pods' identities. A new namespace has no pods yet (a pod or
//! policy that names a namespace the table does not know brings it in with
//! only its name label, as a full snapshot assumes it), so no resolution
//! changes; nor does one for a deleted namespace that holds nothing. A
//! namespace deleted while pods or policies remain in it keeps only its name
//! label, as a snapshot assumes it. New labels change the resolution of
//! exactly the selector peers whose namespace selector matches the old
//! labels but not the new ones, or the reverse, and only in the namespace's
//! own blocks, whose keys are expanded anew as for a new identity.
//!
//! A pod that leaves only takes its addresses with it; its identity
//! may stay in the table without pods, which neither a verdict nor the rule
//! it names can tell from its absence (reason groups follow the selectors'
//! form, not the pods).
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

/// One pod change: `namespace/name` is now `pod`, or is gone (`None`: deleted,
/// or no longer a policy endpoint: no IP, host network, finished).
#[derive(Clone, Debug)]
pub struct PodChange {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// The validated pod, or `None`.
    pub pod: Option<PodInfo>,
}

/// One namespace change: namespace `name` now has `namespace`'s labels, or
/// is deleted (`None`).
#[derive(Clone, Debug)]
pub struct NamespaceChange {
    /// Name of the namespace.
    pub name: String,
    /// The validated namespace, or `None` for a delete.
    pub namespace: Option<NamespaceInfo>,
}

/// How [`IncrementalCompiler::apply`], [`IncrementalCompiler::apply_pods`]
/// or [`IncrementalCompiler::apply_namespaces`] compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compilation {
    /// Only the sides of these namespaces were rebuilt.
    Patched {
        /// Namespaces whose sides were rebuilt.
        namespaces: Vec<String>,
    },
    /// Only these pods' entries and addresses were updated, and, for pods
    /// with a label set new to their namespace, the sides of the namespaces
    /// whose policies can tell it apart.
    PodsPatched {
        /// Pods changed.
        pods: usize,
        /// Namespaces whose sides were rebuilt.
        namespaces: Vec<String>,
        /// Sides elsewhere that got the keys of new identity blocks or
        /// identities, their other keys kept.
        rekeyed: usize,
    },
    /// Namespaces were added, relabelled or deleted.
    NamespacesPatched {
        /// Namespaces changed.
        changed: usize,
        /// Namespaces whose sides were rebuilt in full (only when a stored
        /// resolution was stale; usually none).
        namespaces: Vec<String>,
        /// Sides that got the keys of a relabelled namespace's identity
        /// blocks anew, their other keys kept.
        rekeyed: usize,
    },
    /// The whole table was compiled again, and why.
    Full {
        /// What a patch could not handle.
        reason: String,
    },
}

/// A cluster snapshot and its compiled table, kept up to date by policy and pod changes.
pub struct IncrementalCompiler {
    cluster: Cluster,
    table: Arc<DecisionTable>,
    ids: Identities,
    ctx: PolicyContext,
    /// The table's policy index of each policy of `cluster`, in its order.
    policy_ids: Vec<u32>,
    /// Heap bytes patches appended since the last full compile (about what
    /// the replaced sides still hold), and the label sets of `aliases`:
    /// those are dropped only by a full compile, so they count towards the
    /// compaction that bounds them (a label no selector reads, changing on
    /// every pod update, would otherwise add one alias per update forever).
    appended_bytes: usize,
    /// Bytes of the arrays patches append to, after the last full compile.
    base_bytes: usize,
    /// Earlier tables, kept so that a patch can copy into the buffers of one
    /// nobody else holds any more: memory already mapped, where fresh
    /// allocations of this size would fault every page in again (about 1.5x
    /// the copy time at 10,000 policies; see docs/performance.md).
    spare: std::collections::VecDeque<Arc<DecisionTable>>,
    /// Selector peers resolved so far (they depend only on namespaces and
    /// identities; a pod patch that adds an identity resolves again the
    /// peers that look at its namespace).
    peers: PeerCache,
    /// [ingress, egress] side of each identity, as the table has them.
    identity_sides: Vec<[u32; 2]>,
    /// The table's pod index of each pod of `cluster`, in its order (pod
    /// patches append entries and leave those of deleted pods unused).
    table_pods: Vec<u32>,
    /// Label sets that pod patches gave an existing identity of their
    /// namespace because no selector of any policy tells the two apart (a
    /// rollout's new `pod-template-hash`): (namespace, identity, labels). A
    /// policy change whose selectors would tell them apart compiles in full.
    aliases: Vec<(u32, u32, Labels)>,
    /// Every distinct selector peer of the snapshot's policies, for
    /// [`Self::twin_of`]; built when a pod patch first needs it, dropped by
    /// every policy change.
    all_peers: std::sync::OnceLock<Vec<(NamespaceMatch, Selector)>>,
    /// Inside [`Self::batch`]: patches go on in one copy, published at its end.
    batching: bool,
    /// That copy, between two patches of a batch, and its data bytes before
    /// the batch's first patch.
    draft: Option<DecisionTable>,
    draft_before: Option<usize>,
    /// Sides whose keys patches rebuilt in place since the last publication:
    /// what their pods' address entries keep of them is refreshed with it
    /// (sides appended since are refreshed anyway).
    rebuilt_sides: Vec<u32>,
    /// Pods (table indexes) given other sides since the last publication:
    /// their address entries are refreshed with it.
    moved_pods: Vec<u32>,
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
            table: Arc::new(full.table),
            ids: full.ids,
            ctx: full.ctx,
            appended_bytes: 0,
            base_bytes,
            spare: Default::default(),
            peers: full.peers,
            identity_sides: full.identity_sides,
            aliases: Vec::new(),
            all_peers: std::sync::OnceLock::new(),
            batching: false,
            draft: None,
            draft_before: None,
            rebuilt_sides: Vec::new(),
            moved_pods: Vec::new(),
            table_pods: (0..cluster.pods.len() as u32).collect(),
            cluster,
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

    /// Compiles the current snapshot in full, dropping what patches left
    /// unused. Namespaces that changes brought pods or policies into are
    /// assumed, as a full snapshot would (see `Cluster::from_parts`), and
    /// assumed ones that nothing lives in any more are dropped.
    pub fn compact(&mut self) {
        let Cluster { mut namespaces, pods, policies, assumed } = std::mem::take(&mut self.cluster);
        namespaces.retain(|n| assumed.binary_search(&n.name).is_err());
        self.replace(Cluster::from_parts(namespaces, pods, policies));
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
        self.all_peers = std::sync::OnceLock::new();
        let mut blocker = None;
        for ch in &changes {
            if ch.policy.is_some() && !self.ids.ns_index.contains_key(ch.namespace.as_str()) {
                // Assumed, as in a full snapshot (see `apply_pods`).
                self.assume_namespace(&ch.namespace);
            }
            if let Some(p) = &ch.policy {
                if p.namespace != ch.namespace || p.name != ch.name {
                    blocker = Some(format!(
                        "change of {}/{} carries {}/{}",
                        ch.namespace, ch.name, p.namespace, p.name
                    ));
                } else if !self.ctx.covers(p) {
                    blocker =
                        Some(format!("policy {}/{} brings a new ipBlock or port name", p.namespace, p.name));
                } else if self.splits_an_alias(p) {
                    blocker = Some(format!(
                        "policy {}/{} tells apart label sets that pod patches treated as one",
                        p.namespace, p.name
                    ));
                }
            }
            if blocker.is_some() {
                break;
            }
        }
        let mut table = blocker.is_none().then(|| self.copy_for_patch());
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
                    // A blocked batch compiles in full, which numbers the
                    // policies afresh; until then `policy_ids` follows only
                    // patched batches (an added policy got no id above).
                    if table.is_some() {
                        self.policy_ids.remove(i);
                    }
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
            self.compact();
            return Compilation::Full { reason: blocker.unwrap_or_default() };
        };
        let before = data_bytes(&t);
        let (names, _) = self.patch_namespaces(&mut t, touched, &Rekey::default());
        if let Some(reason) = past_budget(&t, &names) {
            self.compact();
            return Compilation::Full { reason };
        }
        self.drop_empty_assumed();
        self.publish_patch(t, before);
        Compilation::Patched { namespaces: names }
    }

    /// Rebuilds the sides of namespaces `touched` (indexes) into `t` and
    /// points their pods at them; then, in the other namespaces, expands
    /// anew the keys of `rekey.blocks` in every side whose policies use a
    /// peer of `rekey`. Returns the rebuilt namespaces' names and the number
    /// of sides whose keys were expanded anew.
    fn patch_namespaces(
        &mut self,
        t: &mut DecisionTable,
        mut touched: Vec<u32>,
        rekey: &Rekey,
    ) -> (Vec<String>, usize) {
        touched.sort_unstable();
        touched.dedup();
        let mut b = SideBuilder::new(
            SetBuilder::resume(
                std::mem::take(&mut t.entries),
                std::mem::take(&mut t.entry_rules),
                std::mem::take(&mut t.port_indexes),
            ),
            std::mem::take(&mut t.patch_slots),
            std::mem::take(&mut t.groups),
        );
        b.table_flag = PATCHED;
        b.ranges = std::mem::take(&mut t.ranges);
        let mut c = Compiler::new(&self.cluster, &self.ids, &self.ctx, &self.policy_ids);
        c.known = Some(&self.peers);
        let mut names = Vec::new();
        for &ns in &touched {
            let name = self.cluster.namespaces[ns as usize].name.as_str();
            names.push(name.to_string());
            let policies = range_of(&self.cluster.policies, name, |p| &p.namespace);
            let pods = range_of(&self.cluster.pods, name, |p| &p.namespace);
            let mut replaced: Vec<u32> = pods
                .clone()
                .flat_map(|i| t.pods[self.table_pods[i] as usize].sides)
                .filter(|s| *s != 0)
                .collect();
            replaced.sort_unstable();
            replaced.dedup();
            t.stats.replaced_sides += replaced.len();
            let plan = c.plan_sides(policies, &self.ids.ns_identities[ns as usize], t.sides.len() as u32);
            // The namespace's range maps fit its budget, or none is built.
            t.ipblock_dropped.retain(|(n, _)| n != name);
            b.drop_ranges = !b.ranges_fit(&c, plan.lists.iter());
            if b.drop_ranges {
                t.ipblock_dropped.push((
                    name.to_string(),
                    ipblock_policies(&self.cluster, &self.policy_ids, plan.lists.iter()),
                ));
                t.ipblock_dropped.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
            for (dir, list) in &plan.lists {
                t.sides.push(b.build(&mut c, *dir, list));
                let a = t.side_policies.len() as u32;
                t.side_policies.extend(list.iter().map(|&pi| self.policy_ids[pi as usize]));
                t.side_info.push(SideInfo { policies: (a, t.side_policies.len() as u32), dir: Some(*dir) });
            }
            for &id in &self.ids.ns_identities[ns as usize] {
                self.identity_sides[id as usize] = plan.identity_sides.get(&id).copied().unwrap_or_default();
            }
            for pi in pods {
                let identity = self.ids.pod_identity[pi];
                t.pods[self.table_pods[pi] as usize].sides = self.identity_sides[identity as usize];
                self.moved_pods.push(self.table_pods[pi]);
            }
        }
        let mut rekeyed = 0;
        if !rekey.peers.is_empty() {
            let mut blocks = rekey.blocks.clone();
            blocks.sort_unstable();
            blocks.dedup();
            // Cluster index of each table policy index.
            let cluster_of: HashMap<u32, u32> =
                self.policy_ids.iter().enumerate().map(|(pi, &id)| (id, pi as u32)).collect();
            // Per policy (cluster index) and direction: does it use a peer of
            // `rekey`? (One pass: the test hashes selectors.)
            let uses: Vec<[bool; 2]> =
                self.cluster.policies.iter().map(|pol| Direction::BOTH.map(|d| rekey.uses(pol, d))).collect();
            let mut namespaces: Vec<u32> = self
                .cluster
                .policies
                .iter()
                .zip(&uses)
                .filter(|(_, u)| u[0] || u[1])
                .filter_map(|(pol, _)| self.ids.ns_index.get(pol.namespace.as_str()).copied())
                .filter(|ns| touched.binary_search(ns).is_err())
                .collect();
            namespaces.dedup();
            let mut list = Vec::new();
            let mut old = Vec::new();
            for ns in namespaces {
                let mut sides: Vec<u32> = self.ids.ns_identities[ns as usize]
                    .iter()
                    .flat_map(|&id| self.identity_sides[id as usize])
                    .filter(|&s| s != 0)
                    .collect();
                sides.sort_unstable();
                sides.dedup();
                for s in sides {
                    let info = &t.side_info[s as usize];
                    let dir = info.dir.expect("a side of a namespace has a direction");
                    list.clear();
                    list.extend(
                        t.side_policies[info.policies.0 as usize..info.policies.1 as usize]
                            .iter()
                            .map(|id| cluster_of[id]),
                    );
                    if !list.iter().any(|&pi| uses[pi as usize][dir as usize]) {
                        continue;
                    }
                    let se = t.sides[s as usize];
                    let base = (se.table & !PATCHED) as usize;
                    // A table in `patch_slots` belongs to this copy alone (the
                    // published table has its own): rewritten in place.
                    let (slots, reuse): (&[Slot], _) =
                        if se.table & PATCHED == 0 { (&t.slots, None) } else { (&b.slots, Some(base)) };
                    old.clear();
                    old.extend_from_slice(&slots[base..base + (1 << se.table_bits)]);
                    t.sides[s as usize] = b.rebuild_keys(&mut c, (dir, &list), &blocks, (se, &old, reuse));
                    self.rebuilt_sides.push(s);
                    rekeyed += 1;
                }
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
        t.stats.indexed_port_sets = b.sets.indexes.len();
        t.stats.dropped_ipblock_namespaces = t.ipblock_dropped.len();
        (t.entries, t.entry_rules, t.port_indexes, t.patch_slots, t.groups, t.ranges) =
            (b.sets.entries, b.sets.rules, b.sets.indexes, b.slots, b.groups, b.ranges);
        t.stats.cidr_ranges = t.ranges.ranges();
        t.stats.port_entries = t.entries.len() - t.stats.port_sets - 1 - t.stats.indexed_port_sets;
        t.stats.policies = self.cluster.policies.len();
        t.stats.invalid_policies = self.cluster.policies.iter().filter(|p| !p.valid).count();
        t.stats.sides = t.side_info.len();
        (names, rekeyed)
    }

    /// Runs `f`, whose patches (any of [`Self::apply_namespaces`],
    /// [`Self::apply_pods`], [`Self::apply`]) then work on one copy of the
    /// table, published once at the end: a batch of several kinds of changes
    /// costs one copy, not one per kind. A part that compiles in full
    /// publishes at once, and the parts after it patch that table.
    pub fn batch<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.batching = true;
        self.draft_before = None;
        let r = f(self);
        self.batching = false;
        if let Some(t) = self.draft.take() {
            let before = self.draft_before.take().unwrap_or(0);
            self.publish_now(t, before);
        }
        r
    }

    /// A copy of the current table to patch (the batch's copy when there is
    /// one), in a spare table's buffers when one is free.
    fn copy_for_patch(&mut self) -> DecisionTable {
        if let Some(t) = self.draft.take() {
            return t;
        }
        let free = self.spare.iter().position(|t| Arc::strong_count(t) == 1);
        let reuse = free.and_then(|i| self.spare.remove(i)).and_then(|t| Arc::try_unwrap(t).ok());
        copy_to_patch(&self.table, reuse)
    }

    /// Makes patched `t` the current table (`before`: its data bytes before
    /// the patch), or, inside a batch, keeps it for the batch's next patch.
    fn publish_patch(&mut self, t: DecisionTable, before: usize) {
        if self.batching {
            self.draft_before.get_or_insert(before);
            self.draft = Some(t);
            return;
        }
        self.publish_now(t, before);
    }

    fn publish_now(&mut self, mut t: DecisionTable, before: usize) {
        let rebuilt = std::mem::take(&mut self.rebuilt_sides);
        let moved = std::mem::take(&mut self.moved_pods);
        t.refresh_denials(t.side_denials.len(), &rebuilt, &moved);
        t.stats.namespaces = self.cluster.namespaces.len();
        t.stats.identity_blocks = self.ids.blocks as usize;
        t.stats.memory_bytes = t.memory_estimate();
        self.appended_bytes += data_bytes(&t).saturating_sub(before);
        let old = std::mem::replace(&mut self.table, Arc::new(t));
        self.spare.push_back(old);
        if self.spare.len() > SPARE_TABLES {
            self.spare.pop_front();
        }
    }

    /// Applies pod changes (in order) and updates the table: each pod's own
    /// entry and addresses when it can, a full compile otherwise (see the
    /// module's text for when). Either way the table equals a full compile
    /// of the updated snapshot, verdict for verdict and reason for reason.
    pub fn apply_pods(&mut self, changes: Vec<PodChange>) -> Compilation {
        let mut t = self.copy_for_patch();
        let before = data_bytes(&t);
        let n = changes.len();
        let mut blocker = None;
        let mut touched = Touched::default();
        // A pod in a namespace the table does not know yet (its Namespace
        // object not seen, or seen later): the namespace is assumed with only
        // its name label, as in a full snapshot. All of them first: an
        // insertion moves the indexes of the namespaces after it.
        for p in changes.iter().filter_map(|ch| ch.pod.as_ref()) {
            if !self.ids.ns_index.contains_key(p.namespace.as_str()) {
                self.assume_namespace(&p.namespace);
            }
        }
        for ch in changes {
            if blocker.is_none() {
                match self.check_pod(&t, &ch) {
                    Ok(identity) => {
                        self.patch_pod(&mut t, ch, identity, &mut touched);
                        continue;
                    }
                    Err(reason) => blocker = Some(reason),
                }
            }
            self.set_pod(ch);
        }
        let Touched { rebuild: mut touched, rekey } = touched;
        touched.sort_unstable();
        touched.dedup();
        // Rebuilding a good part of a large cluster's namespaces costs about
        // a full compile, which also drops what patches left unused.
        if blocker.is_none() && touched.len() > 8 && touched.len() * 4 > self.ids.ns_identities.len() {
            blocker = Some(format!(
                "new label sets change the sides of {} of {} namespaces",
                touched.len(),
                self.ids.ns_identities.len()
            ));
        }
        if let Some(reason) = blocker {
            self.compact();
            return Compilation::Full { reason };
        }
        let (namespaces, rekeyed) = if touched.is_empty() && rekey.peers.is_empty() {
            (Vec::new(), 0)
        } else {
            self.patch_namespaces(&mut t, touched, &rekey)
        };
        if let Some(reason) = past_budget(&t, &namespaces) {
            self.compact();
            return Compilation::Full { reason };
        }
        self.drop_empty_assumed();
        t.stats.pods = self.cluster.pods.len();
        t.stats.pod_ips = t.addr_v4.len() + t.addr_v6.len();
        t.stats.identities = self.ids.labels.len();
        self.publish_patch(t, before);
        Compilation::PodsPatched { pods: n, namespaces, rekeyed }
    }

    /// Applies namespace changes (in order) and updates the table. A new
    /// namespace holds no pods yet (a pod or policy naming a namespace the
    /// table does not know brings it in, assumed as a snapshot assumes it),
    /// so adding one changes no verdict; a relabelled namespace's block keys
    /// are expanded anew in the sides whose peers' namespace selectors start
    /// or stop matching it; a deleted namespace that still holds pods or
    /// policies keeps only its name label, as a snapshot assumes it, and an
    /// empty one leaves. Either way the table equals a full compile of the
    /// updated snapshot, verdict for verdict and reason for reason.
    pub fn apply_namespaces(&mut self, changes: Vec<NamespaceChange>) -> Compilation {
        let changed = changes.len();
        let mut touched: Vec<String> = Vec::new();
        let mut rekey = Rekey::default();
        let mut blocker = None;
        for ch in changes {
            let holds = !self.holds_nothing(&ch.name);
            let info = match ch.namespace {
                Some(mut info) => {
                    info.name = ch.name;
                    info.labels.insert(NAMESPACE_NAME_LABEL.to_string(), info.name.clone());
                    self.mark_assumed(&info.name, false);
                    info
                }
                None if holds => {
                    self.mark_assumed(&ch.name, true);
                    NamespaceInfo::assumed(&ch.name)
                }
                None => {
                    self.remove_namespace(&ch.name);
                    continue;
                }
            };
            match self.ids.ns_index.get(info.name.as_str()) {
                None => self.insert_namespace(info),
                // Blocked: the rest only updates the snapshot for the full compile.
                Some(&ns) if blocker.is_some() => self.cluster.namespaces[ns as usize] = info,
                Some(&ns) => blocker = self.relabel_namespace(ns, info, &mut touched, &mut rekey).err(),
            }
        }
        if let Some(reason) = blocker {
            self.compact();
            return Compilation::Full { reason };
        }
        let mut t = self.copy_for_patch();
        let before = data_bytes(&t);
        let touched: Vec<u32> =
            touched.iter().filter_map(|n| self.ids.ns_index.get(n.as_str()).copied()).collect();
        let (namespaces, rekeyed) = if touched.is_empty() && rekey.peers.is_empty() {
            (Vec::new(), 0)
        } else {
            self.patch_namespaces(&mut t, touched, &rekey)
        };
        if let Some(reason) = past_budget(&t, &namespaces) {
            self.compact();
            return Compilation::Full { reason };
        }
        self.publish_patch(t, before);
        Compilation::NamespacesPatched { changed, namespaces, rekeyed }
    }

    /// Adds namespace `name`, which pods or policies name but no Namespace
    /// object gave, with only its name label (as a full snapshot does).
    fn assume_namespace(&mut self, name: &str) {
        self.insert_namespace(NamespaceInfo::assumed(name));
        self.mark_assumed(name, true);
    }

    /// Records in `cluster.assumed` (sorted) whether namespace `name` is
    /// there only because pods or policies live in it.
    fn mark_assumed(&mut self, name: &str, assumed: bool) {
        let list = &mut self.cluster.assumed;
        match (list.binary_search_by(|n| n.as_str().cmp(name)), assumed) {
            (Err(i), true) => list.insert(i, name.to_string()),
            (Ok(i), false) => {
                list.remove(i);
            }
            _ => {}
        }
    }

    /// Do no pods and no policies of the snapshot live in namespace `name`?
    fn holds_nothing(&self, name: &str) -> bool {
        range_of(&self.cluster.pods, name, |p| &p.namespace).is_empty()
            && range_of(&self.cluster.policies, name, |p| &p.namespace).is_empty()
    }

    /// Drops the assumed namespaces that nothing lives in any more (their
    /// last pod or policy left, or they were assumed when their Namespace
    /// object was deleted first), as a full snapshot would not have them.
    fn drop_empty_assumed(&mut self) {
        let empty: Vec<String> =
            self.cluster.assumed.iter().filter(|n| self.holds_nothing(n)).cloned().collect();
        for n in empty {
            self.remove_namespace(&n);
        }
    }

    /// Adds namespace `info` (not in the table yet, and holding no pods or
    /// policies yet) at its place in name order, shifting the indexes of the
    /// namespaces after it.
    fn insert_namespace(&mut self, info: NamespaceInfo) {
        let at = self.cluster.namespaces.partition_point(|n| n.name < info.name);
        let at32 = at as u32;
        for v in self.ids.ns_index.values_mut().filter(|v| **v >= at32) {
            *v += 1;
        }
        for a in self.aliases.iter_mut().filter(|a| a.0 >= at32) {
            a.0 += 1;
        }
        self.ids.ns_index.insert(info.name.clone(), at32);
        self.ids.ns_identities.insert(at, Vec::new());
        self.ids.ns_blocks.insert(at, Vec::new());
        self.cluster.namespaces.insert(at, info);
    }

    /// Removes namespace `name`, which holds no pods or policies any more.
    /// Identities its pods had since the last full compile stay, in no
    /// namespace: no pod has them, so no verdict can see them. The selector
    /// peers that looked at the namespace are resolved again without them,
    /// so that a later comparison sees only later changes; the sides keep
    /// their keys for those blocks, which no lookup asks for any more.
    fn remove_namespace(&mut self, name: &str) {
        self.mark_assumed(name, false);
        let Some(&at32) = self.ids.ns_index.get(name) else { return };
        let at = at32 as usize;
        let keys: Vec<(NamespaceMatch, Selector)> = if self.ids.ns_identities[at].is_empty() {
            Vec::new()
        } else {
            let info = &self.cluster.namespaces[at];
            self.peers.keys().filter(|k| looks_at(&k.0, info)).cloned().collect()
        };
        self.ids.ns_index.remove(name);
        for v in self.ids.ns_index.values_mut().filter(|v| **v > at32) {
            *v -= 1;
        }
        self.aliases.retain(|a| a.0 != at32);
        for a in self.aliases.iter_mut().filter(|a| a.0 > at32) {
            a.0 -= 1;
        }
        self.ids.ns_identities.remove(at);
        self.ids.ns_blocks.remove(at);
        self.cluster.namespaces.remove(at);
        let mut c = Compiler::new(&self.cluster, &self.ids, &self.ctx, &self.policy_ids);
        let fresh: Vec<_> = keys.iter().map(|k| Arc::new(c.resolve_uncached(&k.0, &k.1))).collect();
        drop(c);
        self.peers.extend(keys.into_iter().zip(fresh));
    }

    /// Gives namespace `ns` the labels of `info`. When it has identities,
    /// every selector peer whose namespace selector starts or stops
    /// matching it is resolved again: it changes in the namespace's blocks
    /// only, so the sides using it get those keys anew (`rekey`); a peer
    /// whose stored resolution differed elsewhere too has the namespaces of
    /// the policies using it rebuilt (`touched`, by name).
    /// Label sets pod patches paired with an identity of the namespace (see
    /// `aliases`) were paired under the old labels: those need a full compile.
    fn relabel_namespace(
        &mut self,
        ns: u32,
        info: NamespaceInfo,
        touched: &mut Vec<String>,
        rekey: &mut Rekey,
    ) -> Result<(), String> {
        let old = &self.cluster.namespaces[ns as usize];
        if old.labels == info.labels {
            return Ok(());
        }
        if self.ids.ns_identities[ns as usize].is_empty() {
            self.cluster.namespaces[ns as usize] = info;
            return Ok(());
        }
        if self.aliases.iter().any(|a| a.0 == ns) {
            let reason = format!(
                "namespace {} changed labels, and pod patches paired label sets in it that its new selectors may tell apart",
                info.name
            );
            self.cluster.namespaces[ns as usize] = info;
            return Err(reason);
        }
        let keys: Vec<(NamespaceMatch, Selector)> = self
            .peers
            .keys()
            .filter(|k| matches!(&k.0, NamespaceMatch::Selector(s) if s.matches(&old.labels) != s.matches(&info.labels)))
            .cloned()
            .collect();
        self.cluster.namespaces[ns as usize] = info;
        let blocks = self.ids.ns_blocks(ns).to_vec();
        let mut here = Touched { rebuild: Vec::new(), rekey: std::mem::take(rekey) };
        self.resolve_again(&keys, &blocks, &mut here);
        *rekey = here.rekey;
        touched.extend(here.rebuild.into_iter().map(|i| self.cluster.namespaces[i as usize].name.clone()));
        Ok(())
    }

    /// Which identity the pod of `ch` takes (`None` for a delete), or why
    /// `ch` cannot be patched into `t`.
    fn check_pod(&self, t: &DecisionTable, ch: &PodChange) -> Result<Option<PodIdentity>, String> {
        let key = format!("{}/{}", ch.namespace, ch.name);
        // A pod leaving may bring its namespace back under the budget (see `past_budget`).
        if t.ipblock_dropped.iter().any(|(n, _)| *n == ch.namespace) {
            return Err(format!("namespace {} is past its ipBlock budget", ch.namespace));
        }
        let at = self.pod_index(&ch.namespace, &ch.name);
        let old = at.ok().map(|i| (&self.cluster.pods[i], self.table_pods[i]));
        let mut identity = None;
        if let Some(p) = &ch.pod {
            if p.namespace != ch.namespace || p.name != ch.name {
                return Err(format!("change of pod {key} carries {}", p.key()));
            }
            // (`apply_pods` added the namespace if it was new.)
            identity = Some(if let Some(id) = self.identity_of(p) {
                PodIdentity::Existing(id)
            } else if let Some(id) = self.twin_of(p) {
                PodIdentity::Twin(id)
            } else {
                PodIdentity::New
            });
            for ip in &p.ips {
                if t.addr(*ip).is_some_and(|e| Some(e.pod) != old.map(|(_, ti)| ti)) {
                    return Err(format!("address {ip} of pod {key} is claimed by another pod"));
                }
            }
        }
        // An address the old pod owned that another pod also claims changes owner.
        if let Some((old, _)) = old {
            let shared = old
                .ips
                .iter()
                .find(|ip| self.cluster.pods.iter().any(|q| !std::ptr::eq(q, old) && q.ips.contains(ip)));
            if let Some(ip) = shared {
                return Err(format!("address {ip} of pod {key} is claimed by another pod"));
            }
        }
        Ok(identity)
    }

    /// Patches `ch`, whose pod takes `identity` (see [`Self::check_pod`]),
    /// into `t` and the snapshot; adds to `touched` what a new identity
    /// asks to rebuild.
    fn patch_pod(
        &mut self,
        t: &mut DecisionTable,
        ch: PodChange,
        identity: Option<PodIdentity>,
        touched: &mut Touched,
    ) {
        let at = self.pod_index(&ch.namespace, &ch.name);
        if let Ok(i) = at {
            let ti = self.table_pods[i];
            for ip in &self.cluster.pods[i].ips {
                match split(*ip) {
                    (Family::V4, v) => t.addr_v4.remove(&(v as u32)),
                    (Family::V6, v) => t.addr_v6.remove(&v),
                };
            }
            // A deleted pod leaves its entry unused; an update rewrites it below.
            t.pods[ti as usize] = PodEntry { sides: [0, 0], block_bit: 0, named: 0 };
        }
        let (Some(p), Some(identity)) = (ch.pod.as_ref(), identity) else {
            self.set_pod(PodChange { pod: None, ..ch });
            return;
        };
        let identity = match identity {
            PodIdentity::Existing(id) => id,
            PodIdentity::Twin(twin) => {
                if !self.aliases.iter().any(|(_, id, l)| *id == twin && *l == p.labels) {
                    let ns = self.ids.ns_index[p.namespace.as_str()];
                    self.appended_bytes += alias_bytes(&p.labels);
                    self.aliases.push((ns, twin, p.labels.clone()));
                }
                twin
            }
            PodIdentity::New => self.add_identity(p, touched),
        };
        let p = ch.pod.expect("matched above");
        let sides = self.identity_sides[identity as usize];
        let entry = pod_entry(&p, self.ids.identity_block[identity as usize], sides, &self.ctx, &mut t.named);
        // An update keeps the pod's table index; a new pod gets the next one.
        let ti = match at {
            Ok(i) => self.table_pods[i],
            Err(_) => {
                t.added_pod_keys.push((p.namespace.clone(), p.name.clone()));
                t.pods.push(entry);
                (t.pods.len() - 1) as u32
            }
        };
        t.pods[ti as usize] = entry;
        for ip in &p.ips {
            let e = t.addr_entry(ti, *ip);
            match split(*ip) {
                (Family::V4, v) => t.addr_v4.insert(v as u32, e),
                (Family::V6, v) => t.addr_v6.insert(v, e),
            };
        }
        let i = self.set_pod(PodChange { pod: Some(p), ..ch }).expect("a pod was set");
        self.table_pods[i] = ti;
        self.ids.pod_identity[i] = identity;
    }

    /// Updates the snapshot (and the per-pod indexes kept in its order);
    /// returns the pod's index when it is present after the change.
    fn set_pod(&mut self, ch: PodChange) -> Option<usize> {
        match (self.pod_index(&ch.namespace, &ch.name), ch.pod) {
            (Ok(i), Some(p)) => {
                self.cluster.pods[i] = p;
                Some(i)
            }
            (Ok(i), None) => {
                self.cluster.pods.remove(i);
                self.table_pods.remove(i);
                self.ids.pod_identity.remove(i);
                None
            }
            (Err(i), Some(p)) => {
                self.cluster.pods.insert(i, p);
                self.table_pods.insert(i, u32::MAX);
                self.ids.pod_identity.insert(i, u32::MAX);
                Some(i)
            }
            (Err(_), None) => None,
        }
    }

    fn pod_index(&self, namespace: &str, name: &str) -> Result<usize, usize> {
        self.cluster
            .pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
    }

    /// An identity of `p`'s namespace that every selector treats like `p`'s
    /// labels: the pod selectors of the namespace's policies and of every
    /// selector peer, of any policy, that looks at the namespace. Peers of
    /// policies that select no pod yet count too: a later pod can bring
    /// them into force, and nothing then checks the aliases again (only
    /// policy changes do, see [`Self::splits_an_alias`]).
    fn twin_of(&self, p: &PodInfo) -> Option<u32> {
        let &ns = self.ids.ns_index.get(p.namespace.as_str())?;
        let info = &self.cluster.namespaces[ns as usize];
        let own = &self.cluster.policies[range_of(&self.cluster.policies, &info.name, |q| &q.namespace)];
        let peers = self.all_peers.get_or_init(|| {
            let rules =
                self.cluster.policies.iter().flat_map(|q| Direction::BOTH.iter().flat_map(|d| q.rules(*d)));
            let mut seen = std::collections::HashSet::new();
            rules
                .flat_map(|r| &r.peers)
                .filter_map(|peer| match peer {
                    Peer::Pods { namespaces, pods } if seen.insert((namespaces, pods)) => {
                        Some((namespaces.clone(), pods.clone()))
                    }
                    _ => None,
                })
                .collect()
        });
        let selectors: Vec<&Selector> = own
            .iter()
            .map(|q| &q.pod_selector)
            .chain(peers.iter().filter(|(m, _)| looks_at(m, info)).map(|(_, s)| s))
            .collect();
        let seen: Vec<bool> = selectors.iter().map(|s| s.matches(&p.labels)).collect();
        self.ids.ns_identities[ns as usize].iter().copied().find(|&id| {
            let labels = &self.ids.labels[id as usize];
            selectors.iter().zip(&seen).all(|(s, &m)| s.matches(labels) == m)
        })
    }

    /// Would policy `p` tell apart a label set patched onto an identity
    /// (see `aliases`) from that identity's own labels?
    fn splits_an_alias(&self, p: &Policy) -> bool {
        self.aliases.iter().any(|(ns, id, labels)| {
            let own = &self.ids.labels[*id as usize];
            let ns = &self.cluster.namespaces[*ns as usize];
            let splits = |s: &Selector| s.matches(labels) != s.matches(own);
            (p.namespace == ns.name && splits(&p.pod_selector))
                || Direction::BOTH.iter().flat_map(|d| p.rules(*d)).flat_map(|r| &r.peers).any(|peer| {
                    matches!(peer, Peer::Pods { namespaces, pods } if looks_at(namespaces, ns) && splits(pods))
                })
        })
    }

    /// Adds the identity of `p` (in a free bit of its namespace's blocks,
    /// or a fresh block) and re-resolves every selector peer that looks at
    /// its namespace. A peer that now resolves differently (the identity
    /// matches, or the namespace has a new block) differs in the identity's
    /// block only: the sides of the policies using it get that block's key
    /// anew (`touched.rekey`). The pod's own namespace is rebuilt
    /// (`touched.rebuild`): its policies' pod selectors may pick the new
    /// identity, which then needs sides.
    fn add_identity(&mut self, p: &PodInfo, touched: &mut Touched) -> u32 {
        let ns = self.ids.ns_index[p.namespace.as_str()];
        let id = self.ids.labels.len() as u32;
        let local = self.ids.ns_identities[ns as usize].len();
        // A namespace whose blocks are full (or that has none yet) gets a
        // fresh block, numbered after every other: a namespace's blocks stay
        // in ascending order, which resolutions rely on.
        if local / BLOCK_BITS == self.ids.ns_blocks(ns).len() {
            self.ids.ns_blocks[ns as usize].push(self.ids.blocks);
            self.ids.blocks += 1;
        }
        let block = self.ids.ns_blocks(ns)[local / BLOCK_BITS];
        self.ids.labels.push(p.labels.clone());
        self.ids.ns_identities[ns as usize].push(id);
        self.ids.identity_block.push((block, (local % BLOCK_BITS) as u32));
        self.identity_sides.push([0, 0]);
        touched.rebuild.push(ns);

        let info = &self.cluster.namespaces[ns as usize];
        let keys: Vec<(NamespaceMatch, Selector)> =
            self.peers.keys().filter(|k| looks_at(&k.0, info)).cloned().collect();
        self.resolve_again(&keys, &[block], touched);
        id
    }

    /// Resolves the selector peers `keys` again. A peer that now resolves
    /// differently only in identity blocks `blocks` goes to `touched.rekey`;
    /// the namespaces (indexes) whose policies use one that changed
    /// elsewhere too (a stale resolution) go to `touched.rebuild`.
    fn resolve_again(&mut self, keys: &[(NamespaceMatch, Selector)], blocks: &[u32], touched: &mut Touched) {
        let mut changed = PeerCache::new();
        {
            let mut c = Compiler::new(&self.cluster, &self.ids, &self.ctx, &self.policy_ids);
            for k in keys {
                let fresh = c.resolve_uncached(&k.0, &k.1);
                if self.peers.get(k).is_none_or(|r| **r != fresh) {
                    changed.insert(k.clone(), Arc::new(fresh));
                }
            }
        }
        let mut elsewhere = PeerCache::new();
        for (k, fresh) in &changed {
            if self.peers.get(k).is_some_and(|old| same_outside(old, fresh, blocks)) {
                touched.rekey.peers.insert(k.clone());
            } else {
                elsewhere.insert(k.clone(), fresh.clone());
            }
        }
        if changed.len() > elsewhere.len() {
            touched.rekey.blocks.extend_from_slice(blocks);
        }
        if !elsewhere.is_empty() {
            for pol in &self.cluster.policies {
                if uses_peer(pol, &Direction::BOTH, |k| elsewhere.contains_key(&k)) {
                    touched.rebuild.extend(self.ids.ns_index.get(pol.namespace.as_str()));
                }
            }
        }
        self.peers.extend(changed);
    }

    /// The identity of a pod with `p`'s namespace and labels, if one exists.
    fn identity_of(&self, p: &PodInfo) -> Option<u32> {
        let &ns = self.ids.ns_index.get(p.namespace.as_str())?;
        self.ids.ns_identities[ns as usize]
            .iter()
            .copied()
            .find(|&id| self.ids.labels[id as usize] == p.labels)
    }
}

/// The identity a changed pod takes (see [`IncrementalCompiler::check_pod`]).
#[derive(Clone, Copy, Debug)]
enum PodIdentity {
    /// The identity of its namespace and labels.
    Existing(u32),
    /// An identity of its namespace no selector of any policy tells its labels from.
    Twin(u32),
    /// A new identity, in a free bit of its namespace's blocks.
    New,
}

/// What changes of identities ask to rebuild.
#[derive(Debug, Default)]
struct Touched {
    /// Namespaces (indexes) whose sides are rebuilt in full: a new
    /// identity's own (its policies' pod selectors may pick it), and those
    /// whose policies use a peer that changed beyond `rekey.blocks`.
    rebuild: Vec<u32>,
    /// Peers whose resolution changed only in the keys of `rekey.blocks`.
    rekey: Rekey,
}

/// Selector peers whose resolution changed only in some identity blocks:
/// the sides that use them keep their peer tables but those blocks' keys,
/// which are expanded anew ([`SideBuilder::rebuild_keys`]), in place.
#[derive(Debug, Default)]
struct Rekey {
    blocks: Vec<u32>,
    peers: hashbrown::HashSet<(NamespaceMatch, Selector)>,
}

impl Rekey {
    fn uses(&self, pol: &Policy, dir: Direction) -> bool {
        uses_peer(pol, &[dir], |k| self.peers.contains(&k))
    }
}

/// Does a rule of `pol`, in directions `dirs`, have a selector peer for which `is` holds?
fn uses_peer(pol: &Policy, dirs: &[Direction], is: impl Fn(PeerRef<'_>) -> bool) -> bool {
    dirs.iter()
        .flat_map(|d| pol.rules(*d))
        .flat_map(|r| &r.peers)
        .any(|peer| matches!(peer, Peer::Pods { namespaces, pods } if is(PeerRef(namespaces, pods))))
}

/// Do resolutions `a` and `b` agree outside identity blocks `blocks`?
fn same_outside(a: &Resolution, b: &Resolution, blocks: &[u32]) -> bool {
    let outside =
        |r: &Resolution| r.blocks.iter().filter(|x| !blocks.contains(&x.0)).copied().collect::<Vec<_>>();
    a.all_pods == b.all_pods && outside(a) == outside(b)
}

/// Does a peer's namespace part select namespace `ns`?
fn looks_at(m: &NamespaceMatch, ns: &NamespaceInfo) -> bool {
    match m {
        NamespaceMatch::Own(n) => *n == ns.name,
        NamespaceMatch::Selector(s) => s.matches(&ns.labels),
    }
}

/// The range of a slice sorted by namespace that holds namespace `ns`.
fn range_of<T>(v: &[T], ns: &str, key: impl Fn(&T) -> &String) -> std::ops::Range<usize> {
    let a = v.partition_point(|x| key(x).as_str() < ns);
    let b = a + v[a..].partition_point(|x| key(x).as_str() == ns);
    a..b
}

/// A rebuilt namespace past its ipBlock budget: the reason to compile in
/// full instead. A patch counts the sides of identities whose pods have all
/// left (a full compile drops those identities), so it may find a namespace
/// past its budget where a full compile would not; the other way round
/// cannot happen, so a patch that fits is exact.
fn past_budget(t: &DecisionTable, rebuilt: &[String]) -> Option<String> {
    let ns = rebuilt.iter().find(|n| t.ipblock_dropped.iter().any(|(d, _)| d == *n))?;
    Some(format!("namespace {ns} is past its ipBlock budget"))
}

/// Heap bytes of an alias: its entry, and each label's strings and tree node.
fn alias_bytes(labels: &Labels) -> usize {
    std::mem::size_of::<(u32, u32, Labels)>()
        + labels.iter().map(|(k, v)| k.len() + v.len() + 2 * std::mem::size_of::<String>()).sum::<usize>()
}

/// Bytes of the arrays a patch appends to (by length, not capacity; port
/// indexes, never grown, by their heap bytes).
fn data_bytes(t: &DecisionTable) -> usize {
    use std::mem::size_of;
    (t.slots.len() + t.patch_slots.len()) * size_of::<Slot>()
        + t.groups.len() * size_of::<Group>()
        + t.entries.len() * size_of::<PortEntry>()
        + t.entry_rules.len() * size_of::<RuleRef>()
        + t.sides.len() * size_of::<SideEntry>()
        + t.side_denials.len() * 8
        + t.side_info.len() * size_of::<SideInfo>()
        + t.side_policies.len() * 4
        + t.pods.len() * size_of::<PodEntry>()
        + t.named.len() * size_of::<NamedEntry>()
        + t.ranges.data_bytes()
        + t.port_indexes.iter().map(|i| i.bytes()).sum::<usize>()
}

/// A copy of `t` to patch, made in the buffers of `into` when given: the
/// arrays a patch appends to get room to grow without moving again; the
/// parts a patch never changes are shared.
fn copy_to_patch(t: &DecisionTable, into: Option<DecisionTable>) -> DecisionTable {
    use super::copy_with_room as room;
    // The empty table's buffers are tiny: a first patch allocates afresh.
    let mut out = into.unwrap_or_default();
    out.addr_v4.clone_from(&t.addr_v4);
    out.addr_v6.clone_from(&t.addr_v6);
    out.pods.clone_from(&t.pods);
    out.pod_keys = t.pod_keys.clone();
    out.added_pod_keys.clone_from(&t.added_pod_keys);
    out.named.clone_from(&t.named);
    out.in_blocks.clone_from(&t.in_blocks);
    out.ranges.copy_with_room(&t.ranges);
    room(&mut out.sides, &t.sides);
    room(&mut out.side_denials, &t.side_denials);
    room(&mut out.side_info, &t.side_info);
    room(&mut out.side_policies, &t.side_policies);
    out.slots = t.slots.clone();
    room(&mut out.patch_slots, &t.patch_slots);
    room(&mut out.groups, &t.groups);
    room(&mut out.entries, &t.entries);
    room(&mut out.entry_rules, &t.entry_rules);
    out.port_indexes.clone_from(&t.port_indexes);
    out.ipblock_dropped.clone_from(&t.ipblock_dropped);
    out.policies = t.policies.clone();
    out.stats = t.stats.clone();
    out
}
