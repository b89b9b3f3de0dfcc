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
use crate::config::{AntiAffinity, Config, Mode, parse_bool};
use crate::model::{ClaimInfo, ExistingPlaceholder, NodeInfo, PinnedPod, Run, RunPhase, Scheduling};
use crate::names::{self, NameSeed};
use k8s_openapi::api::apps::v1::StatefulSet;
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
            RunStatus::StoodDown => "left to Tekton's own affinity assistant".into(),
        }
    }
}

/// The plan for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub name: String,
    pub uid: String,
    pub mode: Mode,
    pub status: RunStatus,
    pub claims: Vec<ManagedClaim>,
    pub ignored: Vec<IgnoredBinding>,
    /// Managed claim -> the placeholder holding it for this run.
    pub holders: BTreeMap<String, String>,
    /// Per-run modes: the one placeholder every task pod of the run goes to.
    pub home: Option<String>,
    /// Things a person should know (become Warning Events).
    pub warnings: Vec<String>,
}

/// A grouping that needs two placeholders together: its pods that need both stay unpinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub run: String,
    pub claims: BTreeSet<String>,
    pub placeholders: Vec<String>,
    pub message: String,
}

/// A placeholder that must exist after the plan is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPlaceholder {
    pub name: String,
    pub claims: BTreeSet<String>,
    pub mode: Mode,
    /// Active runs that use it: its owner references.
    pub owners: Vec<Owner>,
    /// The mode of each owner, by uid ([`names::ANNOTATION_RUN_MODES`]).
    pub run_modes: BTreeMap<String, Mode>,
    /// Unfinished pinned pods that need it (I4).
    pub pinned_pods: Vec<String>,
    pub node: Option<Arc<NodeInfo>>,
    pub node_selector: BTreeMap<String, String>,
    /// `Some` when it does not exist yet: what to create it from ([`Self::statefulset`]).
    pub create: Option<NewPlaceholder>,
}

/// What a placeholder to create is made from, besides its claims, owners and the config.
/// The StatefulSet itself is built on demand: the webhook never needs it, and building one
/// costs more than planning a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPlaceholder {
    /// The scheduling of the run that creates it (or of a pinned pod's run).
    pub scheduling: Scheduling,
    pub anti_affinity: AntiAffinity,
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
    pub delete: Vec<String>,
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

/// A placeholder while the plan is being built.
struct Slot {
    name: String,
    claims: BTreeSet<String>,
    mode: Mode,
    existing: bool,
    /// Run uids in its owner references, and runs whose pinned pods need it: these runs keep
    /// using it while the add-on is disabled.
    prior_owners: BTreeSet<String>,
    /// Recorded modes of the runs it served, by uid.
    prior_modes: BTreeMap<String, Mode>,
    users: BTreeSet<usize>,
    pinned_pods: Vec<String>,
    node: Option<Arc<NodeInfo>>,
    node_selector: BTreeMap<String, String>,
    /// For new slots: the run whose scheduling it takes.
    creator: Option<usize>,
}

struct Builder<'a> {
    state: &'a NamespaceState<'a>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    holder: BTreeMap<String, usize>,
    conflicts: Vec<Conflict>,
    warnings: Vec<String>,
    /// Run uid -> placeholders that run owned before this plan (owner references, or pinned
    /// pods' demand). Built once before runs are planned, so planning stays linear in runs.
    owned_by: HashMap<String, BTreeSet<usize>>,
    /// Run uid -> the mode recorded for it on an existing placeholder.
    recorded_modes: HashMap<String, Mode>,
}

/// The plan for one namespace.
pub fn plan(state: &NamespaceState<'_>) -> Plan {
    let mut b = Builder {
        state,
        slots: Vec::new(),
        by_name: HashMap::new(),
        holder: BTreeMap::new(),
        conflicts: Vec::new(),
        warnings: Vec::new(),
        owned_by: HashMap::new(),
        recorded_modes: HashMap::new(),
    };
    let mut existing: Vec<&ExistingPlaceholder> = state.placeholders.iter().collect();
    existing.sort_by(|a, c| a.name.cmp(&c.name));
    for e in existing {
        b.add_existing(e);
    }

    let mut order: Vec<usize> = (0..state.runs.len()).collect();
    order.sort_by(|&a, &c| {
        let (a, c) = (&state.runs[a], &state.runs[c]);
        (a.created.is_none(), &a.created, &a.name, &a.uid).cmp(&(c.created.is_none(), &c.created, &c.name, &c.uid))
    });

    let mut pinned: Vec<&PinnedPod> = state.pinned_pods.iter().collect();
    pinned.sort_by(|a, c| (&a.placeholder, &a.name).cmp(&(&c.placeholder, &c.name)));
    for p in pinned {
        b.add_pinned_demand(p);
    }
    for (i, slot) in b.slots.iter().enumerate() {
        for uid in &slot.prior_owners {
            b.owned_by.entry(uid.clone()).or_default().insert(i);
        }
        for (uid, mode) in &slot.prior_modes {
            b.recorded_modes.entry(uid.clone()).or_insert(*mode);
        }
    }

    let runs: Vec<RunPlan> = order.iter().map(|&i| b.plan_run(i)).collect();
    b.finish(runs)
}

impl<'a> Builder<'a> {
    fn add_slot(&mut self, slot: Slot) -> usize {
        let idx = self.slots.len();
        for c in &slot.claims {
            self.holder.entry(c.clone()).or_insert(idx);
        }
        self.by_name.insert(slot.name.clone(), idx);
        self.slots.push(slot);
        idx
    }

    /// A placeholder to create for run `ri`, with that run's scheduling.
    fn add_new(&mut self, name: String, claims: BTreeSet<String>, mode: Mode, ri: usize) -> usize {
        let node_selector = placeholder::merged_node_selector(self.state.config, &self.state.runs[ri].scheduling);
        self.add_slot(Slot {
            name,
            claims,
            mode,
            existing: false,
            prior_owners: BTreeSet::new(),
            prior_modes: BTreeMap::new(),
            users: BTreeSet::new(),
            pinned_pods: Vec::new(),
            node: None,
            node_selector,
            creator: Some(ri),
        })
    }

    fn add_existing(&mut self, e: &ExistingPlaceholder) {
        if self.by_name.contains_key(&e.name) {
            return;
        }
        for c in &e.claims {
            if let Some(&other) = self.holder.get(c) {
                // I1 already broken outside our control (a race, or a hand-made copy): keep the
                // first holder by name, say so.
                self.warnings.push(format!(
                    "claim {c} is mounted by two placeholders, {} and {}; pods are pinned to {} only",
                    self.slots[other].name, e.name, self.slots[other].name
                ));
            }
        }
        self.add_slot(Slot {
            name: e.name.clone(),
            claims: e.claims.clone(),
            mode: e.mode.unwrap_or(self.state.config.mode),
            existing: true,
            prior_owners: e.owners.iter().map(|o| o.uid.clone()).collect(),
            prior_modes: e.run_modes.clone(),
            users: BTreeSet::new(),
            pinned_pods: Vec::new(),
            node: e.node.clone(),
            node_selector: e.node_selector.clone(),
            creator: None,
        });
    }

    /// I4: a pinned pod's placeholder exists, whatever the config says.
    fn add_pinned_demand(&mut self, p: &PinnedPod) {
        if let Some(&idx) = self.by_name.get(&p.placeholder) {
            self.slots[idx].pinned_pods.push(p.name.clone());
            self.slots[idx].prior_owners.extend(p.run_uid.clone());
            return;
        }
        if let Some((c, &other)) = p.claims.iter().find_map(|c| self.holder.get(c).map(|o| (c, o))) {
            self.warnings.push(format!(
                "pod {} is pinned to placeholder {}, which is gone, and its claim {c} is now held by {}: \
                 it cannot be recreated without mounting {c} twice",
                p.name, p.placeholder, self.slots[other].name
            ));
            return;
        }
        let run = p.run_uid.as_ref().and_then(|uid| self.state.runs.iter().position(|r| &r.uid == uid));
        let mode =
            run.and_then(|i| annotated_mode(&self.state.runs[i]).ok().flatten()).unwrap_or(self.state.config.mode);
        let node_selector = placeholder::merged_node_selector(
            self.state.config,
            run.map(|i| &self.state.runs[i].scheduling).unwrap_or(&NO_SCHEDULING),
        );
        self.add_slot(Slot {
            name: p.placeholder.clone(),
            claims: p.claims.clone(),
            mode,
            existing: false,
            prior_owners: p.run_uid.iter().cloned().collect(),
            prior_modes: BTreeMap::new(),
            users: BTreeSet::new(),
            pinned_pods: vec![p.name.clone()],
            node: None,
            node_selector,
            creator: run,
        });
    }

    fn plan_run(&mut self, ri: usize) -> RunPlan {
        let state = self.state;
        let run = &state.runs[ri];
        let run_claims = claims::run_claims(run, state.claims, state.missing_claims);
        let managed_names = run_claims.names();
        let mut warnings = Vec::new();
        let owned: BTreeSet<usize> = self.owned_by.get(&run.uid).cloned().unwrap_or_default();
        // The mode is fixed when the run is first seen: recorded on the placeholders it uses.
        let recorded = self.recorded_modes.get(&run.uid).copied();
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
            mode,
            status: RunStatus::Managed,
            claims: run_claims.managed,
            ignored: run_claims.ignored,
            holders: BTreeMap::new(),
            home: None,
            warnings,
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

        let may_create = state.config.enabled;
        // With the add-on disabled, a run keeps using what it owns and nothing else.
        let usable = |i: usize| may_create || owned.contains(&i);
        let groups = claims::run_groups(run, &managed_names, mode);
        for group in &groups {
            let mut targets: BTreeSet<usize> = BTreeSet::new();
            let mut remainder: BTreeSet<String> = BTreeSet::new();
            for c in group {
                match self.holder.get(c) {
                    Some(&i) if usable(i) => {
                        targets.insert(i);
                    }
                    Some(_) => {}
                    None => {
                        remainder.insert(c.clone());
                    }
                }
            }
            if group.is_empty() && mode.per_run() {
                // A per-run placeholder with no claim: named after the run, so found by name.
                let name = names::placeholder_name(NameSeed::Run { name: &run.name, uid: &run.uid });
                match self.by_name.get(&name) {
                    Some(&i) if usable(i) => {
                        targets.insert(i);
                    }
                    Some(_) => {}
                    None if may_create => {
                        targets.insert(self.add_new(name, BTreeSet::new(), mode, ri));
                    }
                    None => {}
                }
            } else if !remainder.is_empty() && may_create {
                let name = names::placeholder_name(NameSeed::Claims(&remainder));
                if let Some(&taken) = self.by_name.get(&name) {
                    rp.warnings.push(format!(
                        "placeholder name {name} is taken by a placeholder holding [{}]; claims [{}] are not held",
                        join(&self.slots[taken].claims),
                        join(&remainder)
                    ));
                } else {
                    targets.insert(self.add_new(name, remainder, mode, ri));
                }
            } else if !remainder.is_empty() {
                rp.warnings.push(format!(
                    "the add-on is disabled (enabled: false): claims [{}] get no new placeholder",
                    join(&remainder)
                ));
            }
            if targets.len() > 1 {
                let placeholders: Vec<String> = targets.iter().map(|&i| self.slots[i].name.clone()).collect();
                let held: Vec<String> = targets
                    .iter()
                    .map(|&i| {
                        let s = &self.slots[i];
                        let users: Vec<&str> = s.users.iter().map(|&u| state.runs[u].name.as_str()).collect();
                        if users.is_empty() {
                            s.name.clone()
                        } else {
                            format!("{} (held for runs {})", s.name, users.join(", "))
                        }
                    })
                    .collect();
                let message = format!(
                    "run {} needs claims [{}] on one node, but they are held by different placeholders: {}; \
                     its pods that mount claims of more than one of them are not pinned",
                    run.name,
                    join(group),
                    held.join(" and ")
                );
                rp.warnings.push(message.clone());
                self.conflicts.push(Conflict { run: run.name.clone(), claims: group.clone(), placeholders, message });
            }
            for c in group {
                if let Some(&i) = self.holder.get(c).filter(|&&i| targets.contains(&i)) {
                    rp.holders.insert(c.clone(), self.slots[i].name.clone());
                }
            }
            if mode.per_run() && targets.len() == 1 {
                rp.home = targets.iter().next().map(|&i| self.slots[i].name.clone());
            }
            for &i in &targets {
                let others: Vec<&str> = self.slots[i].users.iter().map(|&u| state.runs[u].name.as_str()).collect();
                if mode == Mode::IsolatePipelineRun && !others.is_empty() {
                    rp.warnings.push(format!(
                        "isolate-pipelinerun: run {} shares placeholder {} with runs {}: they run on one node",
                        run.name,
                        self.slots[i].name,
                        others.join(", ")
                    ));
                }
                self.slots[i].users.insert(ri);
                self.slots[i].prior_modes.insert(run.uid.clone(), mode);
            }
        }
        rp
    }

    fn finish(self, runs: Vec<RunPlan>) -> Plan {
        let state = self.state;
        let mut placeholders = Vec::with_capacity(self.slots.len());
        let mut delete = Vec::new();
        // Slots are consumed: their data moves into the plan instead of being copied.
        for slot in self.slots {
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
            let run_modes: BTreeMap<String, Mode> = slot
                .users
                .iter()
                .filter_map(|&u| {
                    let uid = &state.runs[u].uid;
                    Some((uid.clone(), *slot.prior_modes.get(uid)?))
                })
                .collect();
            let create = (!slot.existing).then(|| {
                let scheduling = slot.creator.map(|c| &state.runs[c].scheduling).unwrap_or(&NO_SCHEDULING);
                let anti_affinity = match slot.mode {
                    // Shared by runs: isolation is impossible, spreading is still worth asking.
                    Mode::IsolatePipelineRun if slot.users.len() > 1 => AntiAffinity::Preferred,
                    Mode::IsolatePipelineRun => AntiAffinity::Required,
                    _ => state.config.placeholder_anti_affinity,
                };
                NewPlaceholder { scheduling: scheduling.clone(), anti_affinity }
            });
            placeholders.push(PlannedPlaceholder {
                name: slot.name,
                claims: slot.claims,
                mode: slot.mode,
                owners,
                run_modes,
                pinned_pods: slot.pinned_pods,
                node: slot.node,
                node_selector: slot.node_selector,
                create,
            });
        }
        placeholders.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        delete.sort();
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

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The run's opt-out annotation: absent means enabled.
pub fn run_enabled(run: &Run) -> Result<bool, String> {
    annotation_enabled(&run.annotations)
}

/// `affinity-assistant.dev/enabled` on a run or pod; an unreadable value is an error (the
/// user meant something: the add-on keeps its hands off).
pub fn annotation_enabled(annotations: &BTreeMap<String, String>) -> Result<bool, String> {
    match annotations.get(names::ANNOTATION_ENABLED) {
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
