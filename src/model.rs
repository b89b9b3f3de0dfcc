//! Engine-neutral inputs of the decision core.
//!
//! An engine adapter (Tekton today) turns its objects into these; the core never sees an
//! engine's own types. Everything here is plain data: cheap to build, compare and clone.

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, NodeSelector, Taint, Toleration};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A name (of a run, claim, workspace or placeholder), shared rather than copied: a plan
/// repeats names in owner references, holders and per-run modes, and cloning a `Name` counts a
/// reference instead of allocating. It compares, orders, hashes and prints as its `str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.into())
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name(s.as_str().into())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

/// Where a run is in its life, as far as placeholders care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunPhase {
    /// Running (or about to): its placeholders should exist.
    Active,
    /// Held back by its creator (Tekton `PipelineRunPending`).
    Pending,
    /// Finished, failed or cancelled.
    Done,
    /// Its pipeline is not known yet: a `pipelineRef` whose Pipeline is not seen, or one with a
    /// resolver before the engine writes the resolved spec (its first pods may come first).
    AwaitingSpec,
}

/// A run of a pipeline engine (a Tekton PipelineRun, an Argo Workflow).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Engine name, e.g. `tekton`.
    pub engine: &'static str,
    pub namespace: String,
    pub name: Name,
    pub uid: Name,
    /// `apiVersion` and `kind` for owner references.
    pub api_version: Name,
    pub kind: Name,
    /// RFC 3339 creation time: the order in which runs claim placeholders.
    pub created: Option<String>,
    /// Run annotations, already merged with its pipeline's (run wins).
    pub annotations: BTreeMap<String, String>,
    pub phase: RunPhase,
    pub bindings: Vec<Binding>,
    pub tasks: Vec<TaskUsage>,
    /// Run-wide pod scheduling (Tekton `taskRunTemplate.podTemplate`).
    pub scheduling: Scheduling,
    /// The engine's own affinity assistant serves this run: the add-on stands down.
    pub engine_assistant: bool,
    /// While the spec is not known ([`RunPhase::AwaitingSpec`]): the definition it names (a
    /// Tekton Pipeline, an Argo WorkflowTemplate), which the add-on can read itself. `None`
    /// with `AwaitingSpec`: only the engine knows it yet (a Tekton resolver).
    pub definition: Option<Name>,
    /// That definition is cluster-scoped (Argo's ClusterWorkflowTemplate,
    /// [`crate::engine::Engine::cluster_definition_kind`]).
    pub cluster_definition: bool,
    /// Per-task scheduling overrides, by task name, applied to a definition's tasks when the
    /// run is resolved against it (Tekton `taskRunSpecs[].podTemplate`).
    pub task_overrides: Vec<(String, Scheduling)>,
    /// Its pods may mount claims its spec does not name (a claim name the engine fills in when
    /// it builds the pod, a patch applied to the pod): a PVC one of its task pods mounts is a
    /// claim of the run all the same, grouped with the claims that pod mounts with it.
    pub claims_from_pods: bool,
}

impl Run {
    /// Plays the engine's part for a run whose definition is known but whose resolved spec
    /// the engine has not written yet: the definition's tasks, its annotations under the run's
    /// own (the run wins). Only a run awaiting that very definition changes.
    pub fn resolve(&mut self, definition: &Definition) {
        if self.definition.is_none() {
            return;
        }
        // The definition's opt-out and mode count for the run (run wins), resolved or not: an
        // engine that does not merge them itself (Argo) still means them.
        for (k, v) in &definition.annotations {
            self.annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if self.phase != RunPhase::AwaitingSpec {
            return;
        }
        self.tasks = definition
            .tasks
            .iter()
            .map(|t| {
                let mut t = t.clone();
                if t.scheduling.is_none() {
                    t.scheduling =
                        self.task_overrides.iter().find(|(n, _)| *n == t.name).map(|(_, s)| Box::new(s.clone()));
                }
                t
            })
            .collect();
        self.phase = RunPhase::Active;
    }
}

/// A run's definition (a Tekton Pipeline, an Argo WorkflowTemplate), as far as resolving a
/// run against it goes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Definition {
    pub name: Name,
    /// The add-on's own annotations on it (opt-out, mode): the engine merges them into the run.
    pub annotations: BTreeMap<String, String>,
    pub tasks: Vec<TaskUsage>,
    /// Workspaces the definition brings itself (Argo's template volumes and claim templates,
    /// claim names relative to the run): the engine adds them when it resolves a run.
    pub bindings: Vec<Binding>,
}

/// A workspace binding of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub workspace: Name,
    pub source: ClaimSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimSource {
    /// An existing PVC, by name.
    Claim(Name),
    /// A PVC the engine creates per run from a template.
    Template { claim: Name, access_modes: Vec<String> },
    /// A PVC the engine names only when it builds a pod (an Argo `{{inputs.parameters.x}}`):
    /// the pods' own volumes say which ([`Run::claims_from_pods`]). `expr`: the name as
    /// written; `volume`: the name of the pod volume that will mount it. Whatever claim a pod
    /// mounts under that volume is grouped as the tasks using this binding group it.
    NamedByPod { expr: Name, volume: Name },
    /// emptyDir, configMap, secret, projected, csi: nothing to hold.
    Other,
}

impl ClaimSource {
    pub fn claim(&self) -> Option<&str> {
        self.claim_name().map(Name::as_str)
    }

    pub fn claim_name(&self) -> Option<&Name> {
        match self {
            ClaimSource::Claim(c) | ClaimSource::Template { claim: c, .. } => Some(c),
            ClaimSource::NamedByPod { .. } | ClaimSource::Other => None,
        }
    }
}

/// Which of the run's workspaces one task uses.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUsage {
    pub name: String,
    /// A `finally` task.
    pub finally: bool,
    /// Run workspace names; `None` when it cannot be read (propagated workspaces): the task
    /// then counts as using every workspace of the run.
    pub workspaces: Option<Vec<String>>,
    /// Per-task pod scheduling overrides (Tekton `taskRunSpecs[].podTemplate`). Boxed: rare,
    /// and runs are cached by the thousand with several tasks each.
    pub scheduling: Option<Box<Scheduling>>,
}

/// Pod scheduling constraints a run (or task) asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scheduling {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub priority_class_name: Option<String>,
}

impl Scheduling {
    pub fn required_node_affinity(&self) -> Option<&NodeSelector> {
        self.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()
    }

    /// `self` with each field that `over` sets replaced (how Tekton applies a task's
    /// podTemplate over the run's).
    pub fn overlaid(&self, over: &Scheduling) -> Scheduling {
        Scheduling {
            node_selector: if over.node_selector.is_empty() {
                self.node_selector.clone()
            } else {
                over.node_selector.clone()
            },
            tolerations: if over.tolerations.is_empty() { self.tolerations.clone() } else { over.tolerations.clone() },
            affinity: over.affinity.clone().or_else(|| self.affinity.clone()),
            image_pull_secrets: if over.image_pull_secrets.is_empty() {
                self.image_pull_secrets.clone()
            } else {
                over.image_pull_secrets.clone()
            },
            priority_class_name: over.priority_class_name.clone().or_else(|| self.priority_class_name.clone()),
        }
    }
}

/// A PersistentVolumeClaim, as far as access modes go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimInfo {
    pub name: String,
    pub spec_access_modes: Vec<String>,
    /// `status.accessModes`, authoritative once the claim is bound.
    pub status_access_modes: Vec<String>,
    pub bound: bool,
    /// A PV pins the volume to one node (`nodeAffinity` on the hostname): the controller must
    /// never move a placeholder holding it.
    pub node_pinned: bool,
    /// The bound PV's required node affinity (zone or node): where the volume can be used. A
    /// claim that rides with another claim's placeholder must be usable on its node.
    pub volume_node_affinity: Option<NodeSelector>,
    /// The PVC was seen and then deleted (Argo's `volumeClaimGC` deletes a Workflow's claims
    /// before its completed phase shows): it is no longer managed, even where the run still
    /// names it, so its placeholder goes.
    pub deleted: bool,
}

impl ClaimInfo {
    pub fn access_modes(&self) -> &[String] {
        if self.bound && !self.status_access_modes.is_empty() {
            &self.status_access_modes
        } else {
            &self.spec_access_modes
        }
    }
}

/// A node, as far as scheduling checks go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// A run that owns a placeholder (from its owner references).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerRun {
    pub name: Name,
    pub uid: Name,
}

/// A placeholder that exists in the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExistingPlaceholder {
    pub name: Name,
    pub claims: BTreeSet<Name>,
    pub owners: Vec<OwnerRun>,
    /// The mode that created it (its annotation).
    pub mode: Option<crate::config::Mode>,
    /// The mode each run it serves was first seen with, by run uid.
    pub run_modes: BTreeMap<Name, crate::config::Mode>,
    /// Its pod's node selector (for pods checked before it is bound).
    pub node_selector: BTreeMap<String, String>,
    /// The node its pod is bound to.
    /// Shared: many placeholders sit on one node.
    pub node: Option<std::sync::Arc<NodeInfo>>,
    /// Its pod exists (bound or not). Until it does, a pod pinned to it could take the last
    /// slot of a quota the placeholder needs: the webhook waits a moment for it.
    pub pod_exists: bool,
    /// Its pod cannot come to exist or to run: the StatefulSet controller's create was refused
    /// (quota, LimitRange, admission), or it stayed unschedulable past a short grace. The
    /// reason, as the cluster said it. Nothing is pinned to it while this holds (I5).
    pub refused: Option<String>,
}

/// The PVCs a task pod mounts, and its run: a pinned, unfinished pod in the cache, or the pod
/// being admitted. What a run whose claims come from its pods ([`Run::claims_from_pods`])
/// mounts. (A pod the webhook left alone names nothing: a placeholder made for its volume
/// could take the volume away from it.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMounts {
    pub engine: &'static str,
    pub run_name: Name,
    /// `None` when the pod does not say (the run is then matched by name).
    pub run_uid: Option<Name>,
    /// Sorted by claim, each claim once.
    pub claims: Vec<PodClaim>,
}

/// A claim a pod mounts, and the pod volume it mounts it under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodClaim {
    pub claim: Name,
    pub volume: Name,
}

impl PodMounts {
    pub fn is_of(&self, run: &Run) -> bool {
        self.engine == run.engine
            && match &self.run_uid {
                Some(uid) => *uid == run.uid,
                None => self.run_name == run.name,
            }
    }
}

/// A pinned pod that has not finished: demand for its placeholder (I4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPod {
    pub name: String,
    pub run_uid: Option<String>,
    pub placeholder: String,
    /// The claims its placeholder mounts (its annotation): what the placeholder is recreated
    /// with.
    pub claims: BTreeSet<String>,
    /// The PVCs the pod mounts. Its volumes are on its placeholder's node while it runs, so a
    /// claim among them that no placeholder holds rides with that placeholder.
    pub mounted: BTreeSet<String>,
}
