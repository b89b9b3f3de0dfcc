//! Which claims of a run the add-on manages (SPEC "Which claims are managed") and how a run's
//! claims group before other runs are considered (SPEC "Grouping", within one run).

use crate::config::Mode;
use crate::model::{Binding, ClaimInfo, ClaimSource, ExistingPlaceholder, Name, PodMounts, Run, TaskUsage};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

/// What to do with a claim whose PVC is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingClaims {
    /// `render`: it cannot see the cluster, so it assumes ReadWriteOnce and says so.
    AssumeReadWriteOnce,
    /// The controller and webhook: not managed until the PVC is seen.
    Wait,
}

/// Where a managed claim's access modes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessSource {
    /// The PVC (its status once bound, else its spec).
    Claim,
    /// The run's volumeClaimTemplate (the PVC does not exist yet).
    Template,
    /// Nothing: assumed ReadWriteOnce (render only).
    Assumed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedClaim {
    pub name: Name,
    /// The run workspaces bound to it (two workspaces may share one claim).
    pub workspaces: Vec<Name>,
    pub access: AccessSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// emptyDir, configMap, secret, projected, csi.
    NotAClaim,
    /// ReadWriteMany / ReadOnlyMany: any node can mount it.
    Shared(Vec<String>),
    /// ReadWriteOncePod: a placeholder mounting it would lock the tasks out.
    ReadWriteOncePod,
    /// No ReadWriteOnce among the access modes.
    NotReadWriteOnce(Vec<String>),
    /// The PVC has not been seen yet.
    Missing,
    /// The PVC was deleted (the run's engine cleaned it up).
    Deleted,
    /// Named only when the engine builds the pod: the claim its pods mount is managed instead.
    NamedByPod,
}

impl std::fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IgnoreReason::NotAClaim => f.write_str("not a PersistentVolumeClaim"),
            IgnoreReason::Shared(m) => write!(f, "access modes {} let any node mount it", m.join(",")),
            IgnoreReason::ReadWriteOncePod => f.write_str("ReadWriteOncePod: a placeholder would lock the tasks out"),
            IgnoreReason::NotReadWriteOnce(m) => write!(f, "access modes [{}] have no ReadWriteOnce", m.join(",")),
            IgnoreReason::Missing => f.write_str("the PVC does not exist (yet)"),
            IgnoreReason::Deleted => f.write_str("the PVC was deleted"),
            IgnoreReason::NamedByPod => {
                f.write_str("named only when the pod is built: the claim its pods mount is managed at admission")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredBinding {
    pub workspace: Name,
    pub claim: Option<Name>,
    pub reason: IgnoreReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunClaims {
    pub managed: Vec<ManagedClaim>,
    pub ignored: Vec<IgnoredBinding>,
}

impl RunClaims {
    pub fn names(&self) -> BTreeSet<String> {
        self.managed.iter().map(|c| c.name.to_string()).collect()
    }
}

/// Managed when the access modes hold ReadWriteOnce and neither shared mode; never RWOP.
pub fn access_verdict(modes: &[String]) -> Result<(), IgnoreReason> {
    let has = |m: &str| modes.iter().any(|x| x == m);
    if has("ReadWriteOncePod") {
        Err(IgnoreReason::ReadWriteOncePod)
    } else if has("ReadWriteMany") || has("ReadOnlyMany") {
        Err(IgnoreReason::Shared(modes.to_vec()))
    } else if has("ReadWriteOnce") {
        Ok(())
    } else {
        Err(IgnoreReason::NotReadWriteOnce(modes.to_vec()))
    }
}

/// The run's claims, managed or not, each claim once. `pvc` finds a claim's PVC by name.
pub fn run_claims<'p>(run: &Run, pvc: impl Fn(&str) -> Option<&'p ClaimInfo>, missing: MissingClaims) -> RunClaims {
    let mut out = RunClaims::default();
    for b in &run.bindings {
        let Some(claim) = b.source.claim_name() else {
            let (claim, reason) = match &b.source {
                ClaimSource::NamedByPod { expr, .. } => (Some(expr.clone()), IgnoreReason::NamedByPod),
                _ => (None, IgnoreReason::NotAClaim),
            };
            out.ignored.push(IgnoredBinding { workspace: b.workspace.clone(), claim, reason });
            continue;
        };
        if let Some(m) = out.managed.iter_mut().find(|m| m.name == *claim) {
            m.workspaces.push(b.workspace.clone());
            continue;
        }
        let verdict = match (pvc(claim), &b.source) {
            (Some(pvc), _) if pvc.deleted => Err(IgnoreReason::Deleted),
            (Some(pvc), _) => access_verdict(pvc.access_modes()).map(|_| AccessSource::Claim),
            (None, ClaimSource::Template { access_modes, .. }) => {
                access_verdict(access_modes).map(|_| AccessSource::Template)
            }
            (None, _) if missing == MissingClaims::AssumeReadWriteOnce => Ok(AccessSource::Assumed),
            (None, _) => Err(IgnoreReason::Missing),
        };
        match verdict {
            Ok(access) => {
                out.managed.push(ManagedClaim { name: claim.clone(), workspaces: vec![b.workspace.clone()], access })
            }
            Err(reason) => {
                out.ignored.push(IgnoredBinding { workspace: b.workspace.clone(), claim: Some(claim.clone()), reason })
            }
        }
    }
    out
}

/// The task name of what [`adopt_pod_claims`] adds: claims used together by a pod.
pub const POD_TASK: &str = "(pod)";

/// The prefix of the workspace [`adopt_pod_claims`] binds a claim first seen on a pod to.
const POD_WORKSPACE: &str = "(pod)/";

fn pod_workspace(claim: &str) -> Name {
    format!("{POD_WORKSPACE}{claim}").into()
}

/// Runs whose claims come from their pods ([`Run::claims_from_pods`]) with the claims those
/// pods mount added where no binding names them (SPEC: what a pod mounts is read from the pod
/// at admission). Each set of claims used together counts as one task: a pinned pod's mounts,
/// and the claims of a placeholder the run owns (so a claim stays the run's after the pods that
/// mounted it finish, and its placeholder stays while the run is active). A claim a pod mounts
/// under the volume of a [`ClaimSource::NamedByPod`] binding also joins every task that uses
/// that binding, as the spec says: every pod of the run then groups it the same way, whichever
/// of its sibling pods the caches have seen. Only the runs that change, by index, each a copy
/// with the additions: none in the common case, and nothing is copied then.
pub fn adopt_pod_claims(runs: &[Run], pods: &[PodMounts], placeholders: &[ExistingPlaceholder]) -> Vec<(usize, Run)> {
    if !runs.iter().any(|r| r.claims_from_pods) {
        return Vec::new();
    }
    let mut by_uid: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate().filter(|(_, r)| r.claims_from_pods) {
        by_uid.entry(r.uid.as_str()).or_insert(i);
    }
    // Per run, the claim sets that name a claim none of its bindings does, each claim with the
    // pod volume it came under (none for a placeholder's).
    type ClaimSet<'p> = Vec<(&'p Name, Option<&'p Name>)>;
    let mut sets: BTreeMap<usize, BTreeSet<ClaimSet<'_>>> = BTreeMap::new();
    // A claim the spec leaves to the pods: no binding names it, or no task of the spec mounts
    // it (an Argo step's `templateRef` runs a template of another WorkflowTemplate).
    let mut spec_used: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    let mut from_pods = |i: usize, claim: &str| {
        let used = spec_used
            .entry(i)
            .or_insert_with(|| task_claim_refs(&runs[i]).into_iter().flat_map(|(_, claims)| claims).collect());
        !used.contains(claim)
    };
    for p in pods {
        let found = match &p.run_uid {
            Some(uid) => by_uid.get(uid.as_str()).copied().filter(|&i| p.is_of(&runs[i])),
            None => runs.iter().position(|r| r.claims_from_pods && p.is_of(r)),
        };
        let Some(i) = found else { continue };
        if p.claims.iter().any(|c| from_pods(i, &c.claim)) {
            sets.entry(i).or_default().insert(p.claims.iter().map(|c| (&c.claim, Some(&c.volume))).collect());
        }
    }
    for p in placeholders {
        for o in &p.owners {
            if let Some(&i) = by_uid.get(o.uid.as_str())
                && p.claims.iter().any(|c| from_pods(i, c))
            {
                sets.entry(i).or_default().insert(p.claims.iter().map(|c| (c, None)).collect());
            }
        }
    }
    let mut out = Vec::with_capacity(sets.len());
    for (i, sets) in sets {
        let mut run = runs[i].clone();
        let spec_tasks = run.tasks.len();
        let mut usages: BTreeSet<Vec<String>> = BTreeSet::new();
        for set in sets {
            let mut together = Vec::with_capacity(set.len());
            for (claim, volume) in set {
                let workspace = match run.bindings.iter().find(|b| b.source.claim() == Some(claim.as_str())) {
                    Some(b) => b.workspace.clone(),
                    None => {
                        let workspace = pod_workspace(claim);
                        run.bindings
                            .push(Binding { workspace: workspace.clone(), source: ClaimSource::Claim(claim.clone()) });
                        // The tasks that mount this volume, or a volume named by the same
                        // expression, mount the claim with their others.
                        let exprs: Vec<&Name> = run
                            .bindings
                            .iter()
                            .filter_map(|b| match &b.source {
                                ClaimSource::NamedByPod { expr, volume: v } if Some(v) == volume => Some(expr),
                                _ => None,
                            })
                            .collect();
                        for t in run.tasks[..spec_tasks].iter() {
                            let Some(ws) = &t.workspaces else { continue };
                            let fills = ws.iter().any(|w| {
                                run.bindings.iter().any(|b| {
                                    b.workspace == *w
                                        && matches!(&b.source, ClaimSource::NamedByPod { expr, volume: v }
                                            if Some(v) == volume || exprs.contains(&expr))
                                })
                            });
                            if fills {
                                let mut ws = ws.clone();
                                ws.push(workspace.to_string());
                                usages.insert(ws);
                            }
                        }
                        workspace
                    }
                };
                together.push(workspace.to_string());
            }
            usages.insert(together);
        }
        run.tasks.extend(usages.into_iter().map(|ws| TaskUsage {
            name: POD_TASK.into(),
            finally: false,
            workspaces: Some(ws),
            scheduling: None,
        }));
        out.push((i, run));
    }
    out
}

/// Whether `claim` is the run's only because its pods mount it ([`adopt_pod_claims`]).
pub(crate) fn is_pod_named(run: &Run, claim: &str) -> bool {
    !run.bindings.iter().any(|b| b.source.claim() == Some(claim) && !b.workspace.starts_with(POD_WORKSPACE))
}

/// The claims each task mounts (managed or not), by task name; a task whose usage cannot be
/// read mounts every claim of the run.
pub fn task_claims(run: &Run) -> Vec<(&str, BTreeSet<String>)> {
    task_claim_refs(run).into_iter().map(|(t, c)| (t, c.into_iter().map(String::from).collect())).collect()
}

fn task_claim_refs(run: &Run) -> Vec<(&str, BTreeSet<&str>)> {
    let claim_of: BTreeMap<&str, &str> =
        run.bindings.iter().filter_map(|b| Some((b.workspace.as_str(), b.source.claim()?))).collect();
    run.tasks
        .iter()
        .map(|t| {
            let claims = match &t.workspaces {
                Some(ws) => ws.iter().filter_map(|w| claim_of.get(w.as_str()).copied()).collect(),
                None => claim_of.values().copied().collect(),
            };
            (t.name.as_str(), claims)
        })
        .collect()
}

/// How the run's managed claims group, before other runs are considered.
/// `workspaces`: claims one task uses together share a group (transitively); claims no task
/// uses get none. Per-run modes: one group with every managed claim, even an empty one.
pub fn run_groups(run: &Run, managed: &BTreeSet<String>, mode: Mode) -> Vec<BTreeSet<String>> {
    let managed: Vec<&str> = managed.iter().map(String::as_str).collect();
    let mut labels = Vec::new();
    let count = group_labels(run, &managed, mode, &mut labels, &mut Vec::new());
    (0..count)
        .map(|g| managed.iter().zip(&labels).filter(|&(_, l)| *l == Some(g)).map(|(c, _)| c.to_string()).collect())
        .collect()
}

/// [`run_groups`] as a label per claim, for the plan (which walks the groups over borrowed
/// names): `managed` is sorted and each claim once, as a `BTreeSet` iterates; claim `i` is in
/// group `labels[i]` (`None`: in no group), groups numbered `0..count` (returned) in `BTreeSet`
/// order. `parent` is working space; both buffers are the caller's, to be reused.
pub(crate) fn group_labels<C>(
    run: &Run,
    managed: &[&C],
    mode: Mode,
    labels: &mut Vec<Option<usize>>,
    parent: &mut Vec<usize>,
) -> usize
where
    C: Borrow<str> + ?Sized,
{
    labels.clear();
    if mode.per_run() {
        labels.resize(managed.len(), Some(0));
        return 1;
    }
    // Union-find over indices into `managed`, each root the smallest index of its group.
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    parent.clear();
    parent.extend(0..managed.len());
    labels.resize(managed.len(), None);
    for task in &run.tasks {
        let mut first = None;
        for_each_task_claim(run, task.workspaces.as_deref(), |c| {
            let Ok(i) = managed.binary_search_by(|m| (*m).borrow().cmp(c)) else { return };
            // Marks it used; the real labels come below.
            labels[i] = Some(0);
            let Some(f) = first else {
                first = Some(i);
                return;
            };
            let (a, b) = (root(parent, f), root(parent, i));
            parent[a.max(b)] = a.min(b);
        });
    }
    // Walking the claims in order numbers each group at its smallest claim, so the groups come
    // out ordered by their first claim: for disjoint sorted groups, the `BTreeSet` order.
    let mut count = 0;
    for i in 0..managed.len() {
        if labels[i].is_none() {
            continue;
        }
        let r = root(parent, i);
        labels[i] = if r == i {
            count += 1;
            Some(count - 1)
        } else {
            labels[r]
        };
    }
    count
}

/// Calls `f` with each claim a task mounts (a claim bound to two workspaces may come twice):
/// the claims of the run workspaces it names, or of every workspace when `workspaces` is
/// unreadable (`None`). A workspace bound twice counts with its last claim binding, as in
/// [`task_claims`].
fn for_each_task_claim<'r>(run: &'r Run, workspaces: Option<&[String]>, mut f: impl FnMut(&'r str)) {
    let bound_last = |i: usize, b: &crate::model::Binding| {
        run.bindings[i + 1..].iter().all(|later| later.workspace != b.workspace || later.source.claim().is_none())
    };
    match workspaces {
        Some(ws) => {
            for w in ws {
                if let Some(c) = run.bindings.iter().rev().filter(|b| b.workspace == *w).find_map(|b| b.source.claim())
                {
                    f(c);
                }
            }
        }
        None => {
            for (i, b) in run.bindings.iter().enumerate() {
                if let Some(c) = b.source.claim().filter(|_| bound_last(i, b)) {
                    f(c);
                }
            }
        }
    }
}
