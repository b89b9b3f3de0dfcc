//! The namespace plan: which placeholders must exist, what each holds, which runs own it,
//! and which existing ones go. SPEC "Grouping" and invariants I1, I3 and I4.
//!
//! Placeholders are shared by runs of one namespace, so the unit of decision is the namespace.
//! The plan is computed in a fixed order so that it does not depend on the order its inputs
//! arrive in: existing placeholders (by name) first, then placeholders that pinned pods still
//! need (I4), then active runs (oldest first). Each step only adds holders for claims nobody
//! holds yet (I1) and never changes an existing placeholder (I3).

use super::claims::{self, IgnoredBinding, ManagedClaim, MissingClaims};
use super::placeholder::{self, Owner, PlaceholderParts};
use super::scheduling;
use crate::config::{AntiAffinity, Config, Mode, parse_bool};
use crate::model::{
    ClaimInfo, ExistingPlaceholder, Name, NodeInfo, OwnerRun, PinnedPod, PodMounts, Run, RunPhase, Scheduling,
};
use crate::names::{self, NameSeed};
use k8s_openapi::api::apps::v1::StatefulSet;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Everything the plan is made from: one namespace.
pub struct NamespaceState<'a> {
    pub namespace: &'a str,
    pub config: &'a Config,
    pub runs: &'a [Run],
    pub claims: &'a BTreeMap<String, ClaimInfo>,
    pub placeholders: &'a [ExistingPlaceholder],
    pub pinned_pods: &'a [PinnedPod],
    /// What unfinished task pods mount (and, in the webhook, the pod being admitted): the
    /// claims of runs that take them from their pods ([`Run::claims_from_pods`]).
    pub task_pods: &'a [PodMounts],
    pub missing_claims: MissingClaims,
}

/// Why a run gets no placeholder of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Managed,
    /// Not running (pending, done, or its pipeline not resolved yet).
    NotActive(RunPhase),
    /// `affinity-assistant.dev/enabled: "false"` on the run or its pipeline.
    OptedOut,
    /// The opt-out annotation has a value that is neither true nor false: hands off.
    InvalidAnnotation(String),
    /// `enabled: false` in the config and the run owns no placeholder.
    Disabled,
    /// The engine's own affinity assistant serves this run.
    StoodDown,
}

impl RunStatus {
    pub fn describe(&self) -> String {
        match self {
            RunStatus::Managed => "managed".into(),
            RunStatus::NotActive(RunPhase::Pending) => "not active: pending".into(),
            RunStatus::NotActive(RunPhase::Done) => "not active: done".into(),
            RunStatus::NotActive(RunPhase::AwaitingSpec) => {
                "not active: waiting for its pipeline to be resolved".into()
            }
            RunStatus::NotActive(RunPhase::Active) => "active".into(),
            RunStatus::OptedOut => format!("opted out ({}: \"false\")", names::ANNOTATION_ENABLED),
            RunStatus::InvalidAnnotation(m) => format!("left alone: {m}"),
            RunStatus::Disabled => "not managed: the add-on is disabled (enabled: false)".into(),
            RunStatus::StoodDown => "left to the engine's own affinity assistant".into(),
        }
    }
}

/// The plan for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub name: Name,
    pub uid: Name,
    /// The run's `apiVersion` and `kind` (what Events about it name).
    pub api_version: Name,
    pub kind: Name,
    pub mode: Mode,
    pub status: RunStatus,
    pub claims: Vec<ManagedClaim>,
    pub ignored: Vec<IgnoredBinding>,
    /// Managed claim -> the placeholder holding it for this run (riders included: their
    /// pods go to the placeholder of the claims they are used with).
    pub holders: BTreeMap<Name, Name>,
    /// Claims of this run that ride with a placeholder that does not mount them (SPEC
    /// "Grouping"), each with that placeholder.
    pub riders: BTreeMap<Name, Name>,
    /// Claims whose pods cannot be pinned for now (a rider whose bound volume cannot be used on
    /// its holder's node), with the reason (I5).
    pub unpinnable: BTreeMap<Name, String>,
    /// Per-run modes: the one placeholder every task pod of the run goes to.
    pub home: Option<Name>,
    /// Things a person should know (become Warning Events).
    pub warnings: Vec<String>,
    /// [`Run::claims_from_pods`]: a claim its pod mounts that this plan has not judged must be
    /// planned with that pod ([`super::pin::unplanned_claims`]).
    pub claims_from_pods: bool,
}

/// A grouping that needs two placeholders together: its pods that need both stay unpinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub run: Name,
    pub claims: BTreeSet<Name>,
    pub placeholders: Vec<Name>,
    pub message: String,
}

/// A placeholder that must exist after the plan is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPlaceholder {
    pub name: Name,
    pub claims: BTreeSet<Name>,
    pub mode: Mode,
    /// Active runs that use it: its owner references.
    pub owners: Vec<Owner>,
    /// The mode of each owner, by uid ([`names::ANNOTATION_RUN_MODES`]).
    pub run_modes: BTreeMap<Name, Mode>,
    /// Unfinished pinned pods that need it (I4).
    pub pinned_pods: Vec<String>,
    pub node: Option<Arc<NodeInfo>>,
    pub node_selector: BTreeMap<String, String>,
    /// `Some` when it does not exist yet: what to create it from ([`Self::statefulset`]).
    pub create: Option<NewPlaceholder>,
    /// Claims that ride with it: used together with its claims by some run, held by nobody
    /// else, never mounted by it (I3). Their volumes follow it to its node.
    pub riders: BTreeSet<Name>,
    /// Its pod exists.
    pub pod_exists: bool,
    /// Why it cannot come to exist or run ([`ExistingPlaceholder::refused`]).
    pub refused: Option<String>,
}

/// What a placeholder to create is made from, besides its claims, owners and the config.
/// The StatefulSet itself is built on demand: the webhook never needs it, and building one
/// costs more than planning a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPlaceholder {
    /// The scheduling of the run that creates it (or of a pinned pod's run).
    pub scheduling: Scheduling,
    pub anti_affinity: AntiAffinity,
    /// The placeholder it must run next to ([`PlaceholderParts::follows`]).
    pub follows: Option<Name>,
}

impl PlannedPlaceholder {
    /// The complete StatefulSet to create; `None` for a placeholder that exists.
    pub fn statefulset(&self, namespace: &str, config: &Config) -> Option<StatefulSet> {
        let new = self.create.as_ref()?;
        Some(placeholder::statefulset(&PlaceholderParts {
            namespace,
            name: &self.name,
            claims: &self.claims,
            mode: self.mode,
            owners: &self.owners,
            run_modes: &self.run_modes,
            scheduling: &new.scheduling,
            anti_affinity: new.anti_affinity,
            follows: new.follows.as_deref(),
            config,
        }))
    }
}

/// The decision for a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub namespace: String,
    pub runs: Vec<RunPlan>,
    /// Sorted by name.
    pub placeholders: Vec<PlannedPlaceholder>,
    /// Existing placeholders nothing needs any more.
    pub delete: Vec<Name>,
    pub conflicts: Vec<Conflict>,
    /// Problems with the namespace's existing state (e.g. one claim held twice).
    pub warnings: Vec<String>,
}

impl Plan {
    /// A run by uid when the caller knows it, else by name.
    pub fn run(&self, name: &str, uid: Option<&str>) -> Option<&RunPlan> {
        match uid {
            Some(uid) => self.runs.iter().find(|r| r.uid == uid),
            None => self.runs.iter().find(|r| r.name == name),
        }
    }

    pub fn placeholder(&self, name: &str) -> Option<&PlannedPlaceholder> {
        self.placeholders.binary_search_by(|p| p.name.as_str().cmp(name)).ok().map(|i| &self.placeholders[i])
    }
}

/// A placeholder while the plan is being built. It borrows what it can from the state, and
/// shares the names it puts in the plan.
struct Slot<'a> {
    name: Name,
    claims: SlotClaims<'a>,
    mode: Mode,
    existing: bool,
    /// Its owner references and the run uids of pinned pods that need it: these runs keep
    /// using it while the add-on is disabled.
    owner_refs: &'a [OwnerRun],
    pinned_runs: Vec<&'a str>,
    /// Recorded modes of the runs it served, by uid (an existing placeholder's annotation).
    prior_modes: Option<&'a BTreeMap<Name, Mode>>,
    /// Indices of the runs that use it, ascending.
    users: Vec<usize>,
    pinned_pods: Vec<String>,
    node: Option<Arc<NodeInfo>>,
    node_selector: Cow<'a, BTreeMap<String, String>>,
    /// For new slots: the run whose scheduling it takes.
    creator: Option<usize>,
    riders: BTreeSet<Name>,
    pod_exists: bool,
    refused: Option<&'a str>,
    /// For a slot made again for pinned pods after another took some of its claims: that one.
    follows: Option<Name>,
}

/// A slot's claims: an existing placeholder's, a pinned pod's, or a new placeholder's.
enum SlotClaims<'a> {
    Existing(&'a BTreeSet<Name>),
    Pinned(&'a BTreeSet<String>),
    New(BTreeSet<Name>),
}

impl SlotClaims<'_> {
    fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let (names, pinned) = match self {
            SlotClaims::Existing(set) => (Some(set.iter()), None),
            SlotClaims::New(set) => (Some(set.iter()), None),
            SlotClaims::Pinned(set) => (None, Some(set.iter())),
        };
        names.into_iter().flatten().map(Name::as_str).chain(pinned.into_iter().flatten().map(String::as_str))
    }

    fn into_set(self) -> BTreeSet<Name> {
        match self {
            SlotClaims::Existing(set) => set.clone(),
            SlotClaims::Pinned(set) => set.iter().map(Name::from).collect(),
            SlotClaims::New(set) => set,
        }
    }
}

/// Adds `i` to a sorted list of indices, once.
fn insert_sorted(list: &mut Vec<usize>, i: usize) {
    if let Err(at) = list.binary_search(&i) {
        list.insert(at, i);
    }
}

/// Buffers `plan_run` reuses from run to run instead of allocating its own.
#[derive(Default)]
struct Scratch<'a> {
    managed: Vec<&'a Name>,
    group: Vec<&'a Name>,
    remainder: Vec<&'a Name>,
    targets: Vec<usize>,
    name: String,
    labels: Vec<Option<usize>>,
    parent: Vec<usize>,
}

struct Builder<'a> {
    state: &'a NamespaceState<'a>,
    /// The state's PVCs by name: looked up once per binding, cheaper hashed than in a tree
    /// of a thousand strings.
    pvcs: HashMap<&'a str, &'a ClaimInfo>,
    slots: Vec<Slot<'a>>,
    by_name: HashMap<Name, usize>,
    holder: HashMap<&'a str, usize>,
    conflicts: Vec<Conflict>,
    warnings: Vec<String>,
    /// Run uid -> placeholders that run owned before this plan (owner references, or pinned
    /// pods' demand), ascending. Built once before runs are planned, so planning stays linear
    /// in runs; only while the add-on is disabled, the one time it is read.
    owned_by: HashMap<&'a str, Vec<usize>>,
    /// Run uid -> the mode recorded for it on an existing placeholder.
    recorded_modes: HashMap<&'a str, Mode>,
    /// By run index: when it was planned (its place in the planning order) and its mode.
    planned: Vec<Option<(usize, Mode)>>,
    scratch: Scratch<'a>,
}

/// The plan for one namespace.
pub fn plan(state: &NamespaceState<'_>) -> Plan {
    let adopted = claims::adopt_pod_claims(state.runs, state.task_pods, state.placeholders);
    build(state, &adopted)
}

/// `adopted`: the runs with the claims their pods name ([`claims::adopt_pod_claims`]), by
/// index in `state.runs`. Every run is planned from its spec first, and only then with what
/// its pods named: a claim a pod names joins what the specs decided (the placeholders the
/// controller made before the pod came), never the other way round, so the webhook, deciding
/// with the pod, and the controller, planning before it saw the pod, agree.
fn build<'a>(state: &'a NamespaceState<'a>, adopted: &'a [(usize, Run)]) -> Plan {
    let mut b = Builder {
        state,
        pvcs: state.claims.iter().map(|(name, pvc)| (name.as_str(), pvc)).collect(),
        slots: Vec::with_capacity(state.placeholders.len() + state.runs.len()),
        by_name: HashMap::with_capacity(state.placeholders.len() + state.runs.len()),
        holder: HashMap::with_capacity(state.claims.len()),
        conflicts: Vec::new(),
        warnings: Vec::new(),
        owned_by: HashMap::new(),
        recorded_modes: HashMap::new(),
        planned: vec![None; state.runs.len()],
        scratch: Scratch::default(),
    };
    let mut existing: Vec<&ExistingPlaceholder> = state.placeholders.iter().collect();
    existing.sort_by(|a, c| a.name.cmp(&c.name));
    for e in existing {
        b.add_existing(e);
    }

    // Oldest first; the index last makes the unstable sort as deterministic as a stable one.
    let mut order: Vec<(bool, Option<&str>, &str, &str, usize)> = state
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.created.is_none(), r.created.as_deref(), r.name.as_str(), r.uid.as_str(), i))
        .collect();
    order.sort_unstable();

    let mut pinned: Vec<&PinnedPod> = state.pinned_pods.iter().collect();
    pinned.sort_by(|a, c| (&a.placeholder, &a.name).cmp(&(&c.placeholder, &c.name)));
    for &p in &pinned {
        b.add_pinned_demand(p);
    }
    // Only once every pinned pod's placeholder is in: which pod comes first must not decide
    // whether a gone placeholder can be made again.
    for p in pinned {
        b.carry_mounted(p);
    }
    for (i, slot) in b.slots.iter().enumerate() {
        if !state.config.enabled {
            for uid in slot.owner_refs.iter().map(|o| o.uid.as_str()).chain(slot.pinned_runs.iter().copied()) {
                let owned = b.owned_by.entry(uid).or_default();
                if owned.last() != Some(&i) {
                    owned.push(i);
                }
            }
        }
        for (uid, mode) in slot.prior_modes.into_iter().flatten() {
            b.recorded_modes.entry(uid.as_str()).or_insert(*mode);
        }
    }

    let mut runs: Vec<RunPlan> =
        order.iter().enumerate().map(|(seq, &(.., i))| b.plan_run(i, seq, &state.runs[i])).collect();
    for (seq, &(.., i)) in order.iter().enumerate() {
        // `adopted` is in index order, as `adopt_pod_claims` walks the runs.
        if let Ok(at) = adopted.binary_search_by_key(&i, |(j, _)| *j) {
            let run = &adopted[at].1;
            b.conflicts.retain(|c| c.run != run.name);
            runs[seq] = b.plan_run(i, seq, run);
        }
    }
    b.finish(runs)
}

impl<'a> Builder<'a> {
    /// Adds a slot holding `claims` (where nothing holds them yet).
    fn add_slot(&mut self, slot: Slot<'a>, claims: impl Iterator<Item = &'a str>) -> usize {
        let idx = self.slots.len();
        for c in claims {
            self.holder.entry(c).or_insert(idx);
        }
        self.by_name.insert(slot.name.clone(), idx);
        self.slots.push(slot);
        idx
    }

    /// A placeholder to create for run `ri`, with that run's scheduling.
    fn add_new(&mut self, name: Name, claims: &[&'a Name], mode: Mode, ri: usize) -> usize {
        let node_selector = placeholder::merged_node_selector(self.state.config, &self.state.runs[ri].scheduling);
        let slot = Slot {
            name,
            claims: SlotClaims::New(claims.iter().map(|&c| c.clone()).collect()),
            mode,
            existing: false,
            owner_refs: &[],
            pinned_runs: Vec::new(),
            prior_modes: None,
            users: Vec::new(),
            pinned_pods: Vec::new(),
            node: None,
            node_selector: Cow::Owned(node_selector),
            creator: Some(ri),
            riders: BTreeSet::new(),
            pod_exists: false,
            refused: None,
            follows: None,
        };
        self.add_slot(slot, claims.iter().map(|c| c.as_str()))
    }

    fn add_existing(&mut self, e: &'a ExistingPlaceholder) {
        if self.by_name.contains_key(e.name.as_str()) {
            return;
        }
        for c in &e.claims {
            if let Some(&other) = self.holder.get(c.as_str()) {
                // I1 already broken outside our control (a race, or a hand-made copy): keep the
                // first holder by name, say so.
                self.warnings.push(format!(
                    "claim {c} is mounted by two placeholders, {} and {}; pods are pinned to {} only",
                    self.slots[other].name, e.name, self.slots[other].name
                ));
            }
        }
        let slot = Slot {
            name: e.name.clone(),
            claims: SlotClaims::Existing(&e.claims),
            mode: e.mode.unwrap_or(self.state.config.mode),
            existing: true,
            owner_refs: &e.owners,
            pinned_runs: Vec::new(),
            prior_modes: Some(&e.run_modes),
            users: Vec::new(),
            pinned_pods: Vec::new(),
            node: e.node.clone(),
            node_selector: Cow::Borrowed(&e.node_selector),
            creator: None,
            riders: BTreeSet::new(),
            pod_exists: e.pod_exists,
            refused: e.refused.as_deref(),
            follows: None,
        };
        self.add_slot(slot, e.claims.iter().map(Name::as_str));
    }

    /// I4: a pinned pod's placeholder exists, whatever the config says.
    fn add_pinned_demand(&mut self, p: &'a PinnedPod) {
        if let Some(&idx) = self.by_name.get(p.placeholder.as_str()) {
            self.slots[idx].pinned_pods.push(p.name.clone());
            self.slots[idx].pinned_runs.extend(p.run_uid.as_deref());
            return;
        }
        // Claims another placeholder took meanwhile (two admissions that raced, a webhook with
        // a stale cache): it is made again without them, next to that one, so the pods pinned
        // to it still run where their volumes are (I4, I5). Taken by two: it cannot be.
        let taken: BTreeSet<usize> = p.claims.iter().filter_map(|c| self.holder.get(c.as_str()).copied()).collect();
        let follows = match taken.len() {
            0 => None,
            1 => taken.first().map(|&t| self.slots[t].name.clone()),
            _ => {
                let holders: Vec<&str> = taken.iter().map(|&t| self.slots[t].name.as_str()).collect();
                self.warnings.push(format!(
                    "pod {} is pinned to placeholder {}, which is gone, and its claims are now held by {}: it \
                     cannot be made again next to all of them",
                    p.name,
                    p.placeholder,
                    holders.join(" and ")
                ));
                return;
            }
        };
        if let Some(leader) = &follows {
            self.warnings.push(format!(
                "pod {} is pinned to placeholder {}, which is gone, and placeholder {leader} now holds some of its \
                 claims: {} is made again without them, next to {leader}",
                p.name, p.placeholder, p.placeholder
            ));
        }
        let run = p.run_uid.as_ref().and_then(|uid| self.state.runs.iter().position(|r| r.uid == *uid));
        let mode =
            run.and_then(|i| annotated_mode(&self.state.runs[i]).ok().flatten()).unwrap_or(self.state.config.mode);
        let node_selector = placeholder::merged_node_selector(
            self.state.config,
            run.map(|i| &self.state.runs[i].scheduling).unwrap_or(&NO_SCHEDULING),
        );
        // Its claims nobody else holds: all of them unless another took some.
        let free: Vec<&'a str> = p.claims.iter().map(String::as_str).filter(|c| !self.holder.contains_key(c)).collect();
        let claims = match &follows {
            None => SlotClaims::Pinned(&p.claims),
            Some(_) => SlotClaims::New(free.iter().map(|&c| Name::from(c)).collect()),
        };
        let slot = Slot {
            name: Name::from(&p.placeholder),
            claims,
            mode,
            existing: false,
            owner_refs: &[],
            pinned_runs: p.run_uid.as_deref().into_iter().collect(),
            prior_modes: None,
            users: Vec::new(),
            pinned_pods: vec![p.name.clone()],
            node: None,
            node_selector: Cow::Owned(node_selector),
            creator: run,
            riders: BTreeSet::new(),
            pod_exists: false,
            refused: None,
            follows,
        };
        self.add_slot(slot, free.into_iter());
    }

    /// The claims a pinned pod mounts that nobody holds ride with its placeholder: its volumes
    /// are on that node while it runs, so whatever else mounts them must go there too, whichever
    /// run asks first (a rider is otherwise decided anew by every plan). Not a claim whose
    /// bound volume cannot be used on that node (or whose node is not known yet): the runs'
    /// plans judge that one, and leave its pods unpinned where it cannot be used (I5).
    fn carry_mounted(&mut self, p: &'a PinnedPod) {
        let Some(&idx) = self.by_name.get(p.placeholder.as_str()) else { return };
        for c in &p.mounted {
            let Some(pvc) = self.pvcs.get(c.as_str()) else { continue };
            // Only a claim that could be managed: a shared volume may be anywhere.
            if pvc.deleted
                || claims::access_verdict(pvc.access_modes()).is_err()
                || self.holder.contains_key(c.as_str())
            {
                continue;
            }
            if self.volume_usable_on(c, idx) == Some(true) {
                self.holder.insert(c.as_str(), idx);
                self.slots[idx].riders.insert(Name::from(c));
            }
        }
    }

    /// Plans run `ri`, the `seq`-th in planning order, as `run` has it (its spec, or its spec
    /// and what its pods named).
    fn plan_run(&mut self, ri: usize, seq: usize, run: &'a Run) -> RunPlan {
        let state = self.state;
        let run_claims = claims::run_claims(run, |c| self.pvcs.get(c).copied(), state.missing_claims);
        let mut warnings = Vec::new();
        // Empty unless the add-on is disabled (see `owned_by`).
        let owned: Vec<usize> = self.owned_by.get(run.uid.as_str()).cloned().unwrap_or_default();
        // The mode is fixed when the run is first seen: recorded on the placeholders it uses.
        let recorded = self.recorded_modes.get(run.uid.as_str()).copied();
        let mode = match annotated_mode(run) {
            Ok(Some(m)) => m,
            Ok(None) => recorded.unwrap_or(state.config.mode),
            Err(e) => {
                warnings.push(e);
                recorded.unwrap_or(state.config.mode)
            }
        };
        let mut rp = RunPlan {
            name: run.name.clone(),
            uid: run.uid.clone(),
            api_version: run.api_version.clone(),
            kind: run.kind.clone(),
            mode,
            status: RunStatus::Managed,
            claims: run_claims.managed,
            ignored: run_claims.ignored,
            holders: BTreeMap::new(),
            riders: BTreeMap::new(),
            unpinnable: BTreeMap::new(),
            home: None,
            warnings,
            claims_from_pods: run.claims_from_pods,
        };
        rp.status = match run_enabled(run) {
            _ if run.phase != RunPhase::Active => RunStatus::NotActive(run.phase.clone()),
            Err(e) => RunStatus::InvalidAnnotation(e),
            Ok(false) => RunStatus::OptedOut,
            Ok(true) if run.engine_assistant => RunStatus::StoodDown,
            Ok(true) if !state.config.enabled && owned.is_empty() => RunStatus::Disabled,
            Ok(true) => RunStatus::Managed,
        };
        if rp.status != RunStatus::Managed {
            return rp;
        }
        self.planned[ri] = Some((seq, mode));

        let may_create = state.config.enabled;
        // With the add-on disabled, a run keeps using what it owns and nothing else.
        let usable = |i: usize| may_create || owned.contains(&i);
        let mut s = std::mem::take(&mut self.scratch);
        // The managed claims' names as the run's bindings hold them: they outlive the plan.
        s.managed.clear();
        s.managed.extend(
            run.bindings
                .iter()
                .filter_map(|b| b.source.claim_name())
                .filter(|c| rp.claims.iter().any(|m| m.name == **c)),
        );
        s.managed.sort_unstable();
        s.managed.dedup();
        let groups = claims::group_labels(run, &s.managed, mode, &mut s.labels, &mut s.parent);
        for g in 0..groups {
            s.group.clear();
            s.group.extend(s.managed.iter().zip(&s.labels).filter(|&(_, l)| *l == Some(g)).map(|(&c, _)| c));
            let group = &s.group;
            s.targets.clear();
            s.remainder.clear();
            for &c in group {
                match self.holder.get(c.as_str()) {
                    Some(&i) if usable(i) => insert_sorted(&mut s.targets, i),
                    Some(_) => {}
                    None => s.remainder.push(c),
                }
            }
            // Per-run modes: a placeholder made while the run had no claim is named after the
            // run, so found by name. Once it exists it stays the run's one placeholder: claims
            // seen later (a PVC that appears, a claim only a pod names) ride with it.
            let mut home = None;
            if mode.per_run() {
                s.name.clear();
                names::push_placeholder_name(&mut s.name, NameSeed::Run { name: &run.name, uid: &run.uid });
                match self.by_name.get(s.name.as_str()) {
                    // It exists, or a pinned pod needs it.
                    Some(&i) if usable(i) => home = Some(i),
                    // Not for a run whose claims its pods will name: a claimless placeholder
                    // placed before them could sit where their volumes cannot be used; the
                    // placeholder of the first claim they name is the run's one instead.
                    None if group.is_empty() && may_create && !names_claims_by_pod(run) => {
                        home = Some(self.add_new(s.name.as_str().into(), &[], mode, ri))
                    }
                    _ => {}
                }
            }
            // The run's own claimless placeholder takes the claims nobody holds only when no
            // other placeholder holds any of the group (a claim already held keeps its holder,
            // and the new ones ride with that): pods that mount claims never need both.
            let others = s.targets.len();
            let rides_with = match others {
                0 => home,
                1 => Some(s.targets[0]),
                _ => None,
            };
            if let Some(i) = home.filter(|_| others == 0) {
                insert_sorted(&mut s.targets, i);
            }
            if let (false, Some(t)) = (s.remainder.is_empty(), rides_with) {
                // The claims nobody holds ride with the one placeholder that holds the others
                // (or the run's own): a second placeholder would be sent wherever the scheduler
                // likes, away from the first, and the pods that mount both could never run.
                self.ride(&mut rp, t, &s.remainder);
            } else if !s.remainder.is_empty() && may_create {
                // Named after the claims the run's spec names, where there are any: the pods
                // that name other claims with them (each admitted before the caches saw the
                // others) then all go to the placeholder the spec alone would make.
                s.name.clear();
                let any_spec_named = s.remainder.iter().any(|c| !claims::is_pod_named(run, c));
                names::push_claims_placeholder_name(
                    &mut s.name,
                    s.remainder.iter().filter(|c| !any_spec_named || !claims::is_pod_named(run, c)).map(|c| c.as_str()),
                );
                if let Some(&taken) = self.by_name.get(s.name.as_str()) {
                    rp.warnings.push(format!(
                        "placeholder name {} is taken by a placeholder holding [{}]; claims [{}] are not held",
                        s.name,
                        join(self.slots[taken].claims.iter()),
                        join(s.remainder.iter().map(|c| c.as_str()))
                    ));
                } else {
                    insert_sorted(&mut s.targets, self.add_new(s.name.as_str().into(), &s.remainder, mode, ri));
                }
            } else if !s.remainder.is_empty() {
                rp.warnings.push(format!(
                    "the add-on is disabled (enabled: false): claims [{}] get no new placeholder",
                    join(s.remainder.iter().map(|c| c.as_str()))
                ));
            }
            let targets = &s.targets;
            if targets.len() > 1 {
                let placeholders: Vec<Name> = targets.iter().map(|&i| self.slots[i].name.clone()).collect();
                let held: Vec<String> = targets
                    .iter()
                    .map(|&i| {
                        let slot = &self.slots[i];
                        let users: Vec<&str> = slot.users.iter().map(|&u| state.runs[u].name.as_str()).collect();
                        if users.is_empty() {
                            slot.name.to_string()
                        } else {
                            format!("{} (held for runs {})", slot.name, users.join(", "))
                        }
                    })
                    .collect();
                let message = format!(
                    "run {} needs claims [{}] on one node, but they are held by different placeholders: {}; \
                     its pods that mount claims of more than one of them are not pinned",
                    run.name,
                    join(group.iter().map(|c| c.as_str())),
                    held.join(" and ")
                );
                rp.warnings.push(message.clone());
                self.conflicts.push(Conflict {
                    run: run.name.clone(),
                    claims: group.iter().map(|&c| c.clone()).collect(),
                    placeholders,
                    message,
                });
            }
            for &c in group {
                if let Some(&i) = self.holder.get(c.as_str()).filter(|&&i| targets.contains(&i))
                    && !rp.unpinnable.contains_key(c)
                {
                    rp.holders.insert(c.clone(), self.slots[i].name.clone());
                }
            }
            if mode.per_run()
                && let Some(i) = home.or((targets.len() == 1).then(|| targets[0]))
            {
                rp.home = Some(self.slots[i].name.clone());
            }
            if let Some(i) = home.filter(|i| !targets.contains(i)) {
                // It holds nothing: it only needs the run as a user, for the pods with no claim.
                insert_sorted(&mut self.slots[i].users, ri);
            }
            for &i in targets {
                let slot = &mut self.slots[i];
                if mode == Mode::IsolatePipelineRun && !slot.users.is_empty() {
                    let others: Vec<&str> = slot.users.iter().map(|&u| state.runs[u].name.as_str()).collect();
                    rp.warnings.push(format!(
                        "isolate-pipelinerun: run {} shares placeholder {} with runs {}: they run on one node",
                        run.name,
                        slot.name,
                        others.join(", ")
                    ));
                }
                insert_sorted(&mut slot.users, ri);
            }
        }
        self.scratch = s;
        rp
    }

    /// Lets `claims` (held by nobody) ride with slot `t`: its pods' claims go to its node. A
    /// claim whose bound volume cannot be used there does not ride: its pods stay unpinned.
    fn ride(&mut self, rp: &mut RunPlan, t: usize, claims: &[&'a Name]) {
        for &c in claims {
            let slot = &self.slots[t];
            let unusable = match self.volume_usable_on(c, t) {
                Some(true) => None,
                Some(false) => Some(format!(
                    "claim {c} rides with placeholder {} on node {}, but its volume cannot be used on that node \
                     (PersistentVolume node affinity); pods that mount it are not pinned",
                    slot.name,
                    slot.node.as_ref().map(|n| n.name.as_str()).unwrap_or_default()
                )),
                // Resolves itself once the holder is bound: no warning on the run.
                None => {
                    rp.unpinnable.insert(
                        c.clone(),
                        format!(
                            "placeholder {} is not on a node yet, and claim {c}'s volume is bound to some nodes only",
                            slot.name
                        ),
                    );
                    continue;
                }
            };
            if let Some(why) = unusable {
                rp.warnings.push(why.clone());
                rp.unpinnable.insert(c.clone(), why);
                continue;
            }
            self.holder.insert(c.as_str(), t);
            self.slots[t].riders.insert(c.clone());
            rp.riders.insert(c.clone(), self.slots[t].name.clone());
        }
    }

    /// Whether claim `c`'s volume can be used on slot `t`'s node (PersistentVolume node
    /// affinity): `None` while that is not known (a volume bound to some nodes only, a slot on
    /// no node yet).
    fn volume_usable_on(&self, c: &str, t: usize) -> Option<bool> {
        let affinity = self.pvcs.get(c).and_then(|pvc| pvc.volume_node_affinity.as_ref());
        match (affinity, &self.slots[t].node) {
            (None, _) => Some(true),
            (Some(sel), Some(node)) => Some(scheduling::node_selector_matches(sel, node)),
            (Some(_), None) => None,
        }
    }

    /// The mode a placeholder records for its user `u`: that of the last planned of its users
    /// with `u`'s uid (runs are told apart by uid; two with one uid share the entry).
    fn recorded_mode(&self, slot: &Slot<'_>, u: usize) -> Option<Mode> {
        let uid = &self.state.runs[u].uid;
        let same_uid = slot.users.iter().filter(|&&v| self.state.runs[v].uid == *uid);
        same_uid.filter_map(|&v| self.planned[v]).max_by_key(|&(seq, _)| seq).map(|(_, mode)| mode)
    }

    fn finish(mut self, runs: Vec<RunPlan>) -> Plan {
        let state = self.state;
        // Names are unique among slots: building in name order sorts the plan without moving
        // whole placeholders around.
        let mut in_order: Vec<usize> = (0..self.slots.len()).collect();
        in_order.sort_unstable_by(|&a, &b| self.slots[a].name.cmp(&self.slots[b].name));
        let mut slots: Vec<Option<Slot<'_>>> = std::mem::take(&mut self.slots).into_iter().map(Some).collect();
        let mut placeholders = Vec::with_capacity(slots.len());
        let mut delete = Vec::new();
        for i in in_order {
            let Some(slot) = slots[i].take() else { continue };
            if slot.existing && slot.users.is_empty() && slot.pinned_pods.is_empty() {
                delete.push(slot.name);
                continue;
            }
            let mut owners: Vec<Owner> = slot
                .users
                .iter()
                .map(|&u| {
                    let r = &state.runs[u];
                    Owner {
                        api_version: r.api_version.clone(),
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        uid: r.uid.clone(),
                    }
                })
                .collect();
            owners.sort();
            let run_modes: BTreeMap<Name, Mode> = slot
                .users
                .iter()
                .filter_map(|&u| Some((state.runs[u].uid.clone(), self.recorded_mode(&slot, u)?)))
                .collect();
            let create = (!slot.existing).then(|| {
                let scheduling = slot.creator.map(|c| &state.runs[c].scheduling).unwrap_or(&NO_SCHEDULING);
                let anti_affinity = match slot.mode {
                    // Shared by runs: isolation is impossible, spreading is still worth asking.
                    Mode::IsolatePipelineRun if slot.users.len() > 1 => AntiAffinity::Preferred,
                    Mode::IsolatePipelineRun => AntiAffinity::Required,
                    _ => state.config.placeholder_anti_affinity,
                };
                NewPlaceholder { scheduling: scheduling.clone(), anti_affinity, follows: slot.follows.clone() }
            });
            placeholders.push(PlannedPlaceholder {
                name: slot.name,
                claims: slot.claims.into_set(),
                mode: slot.mode,
                owners,
                run_modes,
                pinned_pods: slot.pinned_pods,
                node: slot.node,
                node_selector: slot.node_selector.into_owned(),
                create,
                riders: slot.riders,
                pod_exists: slot.pod_exists,
                refused: slot.refused.map(String::from),
            });
        }
        Plan {
            namespace: state.namespace.to_string(),
            runs,
            placeholders,
            delete,
            conflicts: self.conflicts,
            warnings: self.warnings,
        }
    }
}

static NO_SCHEDULING: Scheduling = Scheduling {
    node_selector: BTreeMap::new(),
    tolerations: Vec::new(),
    affinity: None,
    image_pull_secrets: Vec::new(),
    priority_class_name: None,
};

/// The run's spec leaves some claim for its pods to name.
fn names_claims_by_pod(run: &Run) -> bool {
    run.bindings.iter().any(|b| matches!(b.source, crate::model::ClaimSource::NamedByPod { .. }))
}

fn join<'s>(names: impl IntoIterator<Item = &'s str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// The run's opt-out annotation: absent means enabled.
pub fn run_enabled(run: &Run) -> Result<bool, String> {
    annotation_enabled(&run.annotations)
}

/// `affinity-assistant.dev/enabled` on a run or pod; an unreadable value is an error (the
/// user meant something: the add-on keeps its hands off).
pub fn annotation_enabled<K, V>(annotations: &BTreeMap<K, V>) -> Result<bool, String>
where
    K: std::borrow::Borrow<str> + Ord,
    V: AsRef<str>,
{
    match annotations.get(names::ANNOTATION_ENABLED).map(AsRef::as_ref) {
        None => Ok(true),
        Some(v) => {
            parse_bool(v).map_err(|allowed| format!("annotation {}: {v:?}: {allowed}", names::ANNOTATION_ENABLED))
        }
    }
}

/// The run's mode annotation; an invalid value is an error and the caller falls back.
pub fn annotated_mode(run: &Run) -> Result<Option<Mode>, String> {
    match run.annotations.get(names::ANNOTATION_MODE) {
        None => Ok(None),
        Some(v) => v.parse::<Mode>().map(Some).map_err(|_| {
            format!(
                "annotation {}: {v:?} is not one of workspaces, pipelineruns, isolate-pipelinerun; using the configured mode",
                names::ANNOTATION_MODE
            )
        }),
    }
}
