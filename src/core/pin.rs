//! The pod decision (SPEC "Task pods", invariants I2 and I5): pin a task pod to the one
//! placeholder that holds every managed claim it mounts, or leave it alone and say why.

use super::plan::{Plan, PlannedPlaceholder, RunStatus, annotation_enabled};
use super::scheduling;
use crate::engine::EngineSkip;
use crate::model::Name;
use crate::names;
use crate::pod::TaskPod;
use json_patch::jsonptr::Pointer;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Affinity, PodAffinity, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Why a pod is left as it is. The `as_str` values are metric labels: keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Not a task pod of any engine's run.
    NotTaskPod,
    /// One of our own placeholder pods.
    Placeholder,
    /// The engine's own placeholder pod.
    EnginePlaceholder,
    /// The engine's own affinity assistant pinned it.
    EngineAssistant,
    /// Already carries our term (a reinvocation): nothing to add.
    AlreadyPinned,
    /// The pod or its run opted out.
    OptedOut,
    /// The run is not in the plan (not seen yet, or gone).
    RunNotFound,
    /// The run is not active, not managed, or disabled.
    RunNotManaged,
    /// `workspaces` mode and the pod mounts no managed claim.
    NoManagedClaim,
    /// The claims it mounts have no placeholder (disabled, or not yet decidable).
    NoPlaceholder,
    /// I5: it already has a required podAffinity term of its own.
    OwnPodAffinity,
    /// I5: its claims are held by two different placeholders.
    ClaimsSplit,
    /// I5: its own nodeSelector / node affinity / tolerations exclude the placeholder's node.
    NodeExcluded,
    /// No controller holds a fresh leader lease: nobody would create the placeholder.
    NoController,
    /// I5: its placeholder cannot come to exist or run (refused by quota, LimitRange or
    /// admission, or unschedulable): a pod pinned to it would wait forever.
    PlaceholderRefused,
    /// I5: a claim it mounts rides with a placeholder on whose node its volume cannot be used.
    VolumeExcluded,
    /// The decision could not be made within the webhook's budget (a wait or a read ran out).
    Budget,
    /// A reinvocation after a later webhook added its own required podAffinity term, or node
    /// constraints that exclude the placeholder's node: the pin is taken back.
    PinWithdrawn,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotTaskPod => "not-task-pod",
            SkipReason::Placeholder => "placeholder",
            SkipReason::EnginePlaceholder => "engine-placeholder",
            SkipReason::EngineAssistant => "engine-affinity-assistant",
            SkipReason::AlreadyPinned => "already-pinned",
            SkipReason::OptedOut => "opted-out",
            SkipReason::RunNotFound => "run-not-found",
            SkipReason::RunNotManaged => "run-not-managed",
            SkipReason::NoManagedClaim => "no-managed-claim",
            SkipReason::NoPlaceholder => "no-placeholder",
            SkipReason::OwnPodAffinity => "own-pod-affinity",
            SkipReason::ClaimsSplit => "claims-split",
            SkipReason::NodeExcluded => "node-excluded",
            SkipReason::NoController => "no-controller",
            SkipReason::PlaceholderRefused => "placeholder-refused",
            SkipReason::VolumeExcluded => "volume-excluded",
            SkipReason::Budget => "budget",
            SkipReason::PinWithdrawn => "pin-withdrawn",
        }
    }

    /// Whether a person should hear about it (an AdmissionReview warning): the pod may share
    /// a volume with pods on other nodes.
    pub fn warns(self) -> bool {
        matches!(
            self,
            SkipReason::RunNotFound
                | SkipReason::OwnPodAffinity
                | SkipReason::ClaimsSplit
                | SkipReason::NodeExcluded
                | SkipReason::NoController
                | SkipReason::PlaceholderRefused
                | SkipReason::VolumeExcluded
                | SkipReason::Budget
                | SkipReason::PinWithdrawn
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub reason: SkipReason,
    pub message: String,
    /// On a reinvocation: the JSONPatch that takes back the pin an earlier call added (another
    /// webhook has since made it unschedulable, I2/I5).
    pub undo: Option<Patch>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    pub run: String,
    pub placeholder: String,
    /// The managed claims the pod mounts.
    pub claims: Vec<String>,
    /// The one term added (I2).
    pub term: PodAffinityTerm,
    /// The pod's affinity with the term added.
    pub affinity: Affinity,
    /// The JSONPatch for the AdmissionReview; applying it twice changes nothing more.
    pub patch: Patch,
    /// The placeholder's pod exists. Until it does, the webhook may wait a moment: a quota the
    /// task pod would fill first could refuse the placeholder for good.
    pub placeholder_ready: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Pin(Box<Pin>),
    Skip(Skip),
}

impl Decision {
    pub fn skip_reason(&self) -> Option<SkipReason> {
        match self {
            Decision::Skip(s) => Some(s.reason),
            Decision::Pin(_) => None,
        }
    }
}

fn skip(reason: SkipReason, message: impl Into<String>) -> Decision {
    Decision::Skip(Skip { reason, message: message.into(), undo: None })
}

/// The term that pins a pod next to a placeholder.
pub fn pin_term(placeholder: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some([(names::LABEL_PLACEHOLDER.to_string(), placeholder.to_string())].into()),
            match_expressions: None,
        }),
        topology_key: names::TOPOLOGY_HOSTNAME.to_string(),
        ..Default::default()
    }
}

/// Whether a term is one the add-on wrote.
pub fn is_pin_term(term: &PodAffinityTerm) -> bool {
    term.label_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .is_some_and(|m| m.len() == 1 && m.contains_key(names::LABEL_PLACEHOLDER))
}

/// "pod ns/name", formatted only when a message is built: pinning needs no message.
struct Who<'a> {
    namespace: &'a str,
    pod: &'a crate::pod::PodMeta<'a>,
}

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pod.name.is_empty() {
            write!(f, "pod {}/{}*", self.namespace, self.pod.generate_name)
        } else {
            write!(f, "pod {}/{}", self.namespace, self.pod.name)
        }
    }
}

/// Decides what a task pod gets. `controller_alive`: a controller holds a fresh leader
/// lease, so a placeholder the plan promises will be created.
pub fn decide(pod: &TaskPod, plan: &Plan, controller_alive: bool) -> Decision {
    let meta = &pod.metadata;
    let who = Who { namespace: &plan.namespace, pod: meta };
    if meta.labels.contains_key(names::LABEL_PLACEHOLDER) {
        return skip(SkipReason::Placeholder, format!("{who} is a placeholder"));
    }
    let identity = &pod.identity;
    match identity.skip {
        Some(EngineSkip::EnginePlaceholder) => {
            return skip(SkipReason::EnginePlaceholder, format!("{who} is {}'s own placeholder", identity.title));
        }
        Some(EngineSkip::EngineAssistant) => {
            return skip(
                SkipReason::EngineAssistant,
                format!("{who} is pinned by {}'s own affinity assistant", identity.title),
            );
        }
        Some(EngineSkip::EngineHelper) => {
            return skip(SkipReason::NotTaskPod, format!("{who} is one of {}'s own helper pods", identity.title));
        }
        None => {}
    }
    let Some(run_ref) = &identity.run else {
        return skip(SkipReason::NotTaskPod, format!("{who} belongs to no pipeline run"));
    };
    let required = pod.required_pod_affinity();
    if required.iter().any(is_pin_term) {
        return reinvoked(pod, plan, &who);
    }
    match annotation_enabled(&meta.annotations) {
        Ok(true) => {}
        Ok(false) => return skip(SkipReason::OptedOut, format!("{who}: run {} opted out", run_ref.name)),
        Err(e) => return skip(SkipReason::OptedOut, format!("{who}: {e}")),
    }
    let Some(run) = plan.run(&run_ref.name, run_ref.uid.as_deref()) else {
        return skip(
            SkipReason::RunNotFound,
            format!("{who}: {} run {} is not known to affinity-assistant; not pinned", identity.title, run_ref.name),
        );
    };
    if run.status != RunStatus::Managed {
        let reason =
            if matches!(run.status, RunStatus::OptedOut) { SkipReason::OptedOut } else { SkipReason::RunNotManaged };
        return skip(reason, format!("{who}: run {} is {}", run.name, run.status.describe()));
    }

    let pod_claims = pod.claims();
    let managed: BTreeSet<&str> =
        pod_claims.iter().copied().filter(|c| run.claims.iter().any(|m| m.name == *c)).collect();
    let target: &PlannedPlaceholder = if managed.is_empty() {
        match (&run.home, run.mode.per_run()) {
            (Some(home), true) => match plan.placeholder(home) {
                Some(p) => p,
                None => return skip(SkipReason::NoPlaceholder, format!("{who}: placeholder {home} is not planned")),
            },
            (None, true) => {
                return skip(
                    SkipReason::NoPlaceholder,
                    format!("{who}: run {} has no single placeholder ({} mode)", run.name, run.mode),
                );
            }
            (_, false) => {
                return skip(SkipReason::NoManagedClaim, format!("{who} mounts no managed claim"));
            }
        }
    } else {
        if let Some((claim, why)) = managed.iter().find_map(|c| run.unpinnable.get_key_value(*c)) {
            return skip(SkipReason::VolumeExcluded, format!("{who} mounts claim {claim}: {why}"));
        }
        let holders: BTreeSet<&str> = managed.iter().filter_map(|c| run.holders.get(*c).map(Name::as_str)).collect();
        let unheld: Vec<&str> = managed.iter().copied().filter(|c| !run.holders.contains_key(*c)).collect();
        if holders.len() > 1 {
            return skip(
                SkipReason::ClaimsSplit,
                format!(
                    "{who} mounts claims held by different placeholders ({}); pinning it to one would leave it Pending \
                     forever, so it is not pinned and may wait for a volume attached elsewhere",
                    holders.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let Some(name) = holders.into_iter().next().filter(|_| unheld.is_empty()) else {
            return skip(
                SkipReason::NoPlaceholder,
                format!("{who}: claims [{}] have no placeholder", unheld.join(", ")),
            );
        };
        match plan.placeholder(name) {
            Some(p) => p,
            None => return skip(SkipReason::NoPlaceholder, format!("{who}: placeholder {name} is not planned")),
        }
    };

    if let Some(why) = &target.refused {
        return skip(
            SkipReason::PlaceholderRefused,
            format!(
                "{who}: placeholder {} cannot run ({why}); a pod pinned to it would wait forever, so it is not pinned",
                target.name
            ),
        );
    }
    if !required.is_empty() {
        return skip(
            SkipReason::OwnPodAffinity,
            format!(
                "{who} has a required podAffinity of its own; the scheduler needs one pod matching every term, \
                 which placeholder {} cannot be, so it is not pinned",
                target.name
            ),
        );
    }
    if let Some(why) = node_excluded(pod, target) {
        return skip(
            SkipReason::NodeExcluded,
            format!("{who} cannot run where placeholder {} is: {why}; not pinned", target.name),
        );
    }
    if !controller_alive {
        return skip(
            SkipReason::NoController,
            format!("{who}: no affinity-assistant controller holds the leader lease; not pinned to {}", target.name),
        );
    }

    let term = pin_term(&target.name);
    let claims: Vec<String> = managed.iter().map(|c| c.to_string()).collect();
    let patch = pin_patch(pod, &target.name, &target.claims);
    let mut affinity = pod.spec.affinity.clone().unwrap_or_default();
    affinity
        .pod_affinity
        .get_or_insert_with(PodAffinity::default)
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(Vec::new)
        .push(term.clone());
    Decision::Pin(Box::new(Pin {
        run: run.name.to_string(),
        placeholder: target.name.to_string(),
        claims,
        term,
        affinity,
        patch,
        placeholder_ready: target.pod_exists,
    }))
}

/// Claims the pod mounts that the plan has not judged for its run (neither managed nor left
/// alone), where the run takes its claims from its pods ([`crate::model::Run::claims_from_pods`]):
/// the pod is the first to name them, and the plan must be made again with the pod among its
/// run's pods ([`crate::model::PodMounts`]) before [`decide`] can tell what it gets.
pub fn unplanned_claims<'p>(pod: &'p TaskPod, plan: &Plan) -> Vec<&'p str> {
    let Some(run_ref) = &pod.identity.run else { return Vec::new() };
    let Some(run) = plan.run(&run_ref.name, run_ref.uid.as_deref()) else { return Vec::new() };
    if !run.claims_from_pods || run.status != RunStatus::Managed {
        return Vec::new();
    }
    // Left alone, or given a placeholder (or a reason for none). A managed claim with neither is
    // one no task of the spec mounts: its pods say what it goes with.
    let judged = |c: &str| {
        run.holders.contains_key(c)
            || run.unpinnable.contains_key(c)
            || run.ignored.iter().any(|i| i.claim.as_ref().is_some_and(|n| n == c))
    };
    pod.claims().into_iter().filter(|c| !judged(c)).collect()
}

/// A pod that already carries our term: a reinvocation (`reinvocationPolicy: IfNeeded`) after a
/// later webhook changed it. The pin stays only while the pod can still schedule: no required
/// podAffinity term of anyone else (the scheduler needs ONE pod matching every term, I2) and
/// no node constraint excluding the placeholder's node (I5). Otherwise it is taken back.
fn reinvoked(pod: &TaskPod, plan: &Plan, who: &Who<'_>) -> Decision {
    let required = pod.required_pod_affinity();
    let ours: Vec<usize> = (0..required.len()).filter(|&i| is_pin_term(&required[i])).collect();
    let placeholder = pin_target(&required[ours[0]]).unwrap_or_default();
    let why = if ours.len() < required.len() {
        Some(format!(
            "another admission webhook added a required podAffinity term after {who} was pinned to {placeholder}; \
             the scheduler needs one pod matching every term, which the placeholder cannot be"
        ))
    } else {
        plan.placeholder(placeholder).and_then(|target| {
            node_excluded(pod, target).map(|why| {
                format!("another admission webhook changed {who}'s node constraints: it cannot run where placeholder {placeholder} is ({why})")
            })
        })
    };
    let Some(why) = why else {
        return skip(SkipReason::AlreadyPinned, format!("{who} is already pinned"));
    };
    Decision::Skip(Skip {
        reason: SkipReason::PinWithdrawn,
        message: format!("{why}; the pin was taken back and the pod is not pinned"),
        undo: Some(unpin_patch(pod, &ours)),
    })
}

/// Why the pod cannot run where its placeholder is (I5): its node constraints exclude the
/// placeholder's node, or, before that is bound, the placeholder's own selector.
fn node_excluded(pod: &TaskPod, target: &PlannedPlaceholder) -> Option<String> {
    match &target.node {
        Some(node) => scheduling::node_excludes(
            node,
            &pod.spec.node_selector,
            pod.required_node_affinity(),
            &pod.spec.tolerations,
        ),
        None => scheduling::selectors_conflict(&pod.spec.node_selector, &target.node_selector),
    }
}

/// The placeholder a pin term selects.
fn pin_target(term: &PodAffinityTerm) -> Option<&str> {
    term.label_selector.as_ref()?.match_labels.as_ref()?.get(names::LABEL_PLACEHOLDER).map(String::as_str)
}

/// Removes our terms (highest index first, so earlier indices stay valid), our label and our
/// annotations.
fn unpin_patch(pod: &TaskPod, ours: &[usize]) -> Patch {
    let remove = |path: json_patch::jsonptr::PointerBuf| PatchOperation::Remove(json_patch::RemoveOperation { path });
    let mut ops: Vec<PatchOperation> = ours
        .iter()
        .rev()
        .map(|i| {
            let mut path = paths::REQUIRED_TERMS.to_buf();
            path.push_back(i.to_string());
            remove(path)
        })
        .collect();
    if pod.metadata.labels.contains_key(names::LABEL_PINNED) {
        ops.push(remove(paths::LABEL_PINNED.to_buf()));
    }
    for (key, path) in [
        (names::ANNOTATION_PINNED_TO, paths::ANNOTATION_PINNED_TO),
        (names::ANNOTATION_CLAIMS, paths::ANNOTATION_CLAIMS),
    ] {
        if pod.metadata.annotations.contains_key(key) {
            ops.push(remove(path.to_buf()));
        }
    }
    Patch(ops)
}

impl Pin {
    /// The JSONPatch as the AdmissionReview carries it (before base64).
    pub fn patch_json(&self) -> serde_json::Result<Vec<u8>> {
        // Room for the usual four operations, so the buffer is not regrown while writing.
        let mut out = Vec::with_capacity(1024);
        serde_json::to_writer(&mut out, &self.patch)?;
        Ok(out)
    }
}

/// The paths the patch adds at, escaped once here (`/` in a key is `~1`); a test checks them
/// against the names they spell.
mod paths {
    use json_patch::jsonptr::Pointer;

    pub const AFFINITY: &Pointer = Pointer::from_static("/spec/affinity");
    pub const POD_AFFINITY: &Pointer = Pointer::from_static("/spec/affinity/podAffinity");
    pub const REQUIRED_TERMS: &Pointer =
        Pointer::from_static("/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution");
    pub const LABELS: &Pointer = Pointer::from_static("/metadata/labels");
    pub const LABEL_PINNED: &Pointer = Pointer::from_static("/metadata/labels/affinity-assistant.dev~1pinned");
    pub const ANNOTATIONS: &Pointer = Pointer::from_static("/metadata/annotations");
    pub const ANNOTATION_PINNED_TO: &Pointer =
        Pointer::from_static("/metadata/annotations/affinity-assistant.dev~1pinned-to");
    pub const ANNOTATION_CLAIMS: &Pointer =
        Pointer::from_static("/metadata/annotations/affinity-assistant.dev~1claims");
}

fn add(path: &Pointer, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: path.to_buf(), value })
}

/// [`pin_term`] as JSON, written directly rather than serialised from the typed term.
fn pin_term_json(placeholder: &str) -> Value {
    json!({
        "labelSelector": {"matchLabels": {names::LABEL_PLACEHOLDER: placeholder}},
        "topologyKey": names::TOPOLOGY_HOSTNAME,
    })
}

/// Adds at the deepest level that exists, so every pre-existing term is kept and each op
/// replaces whole values: applying the patch a second time changes nothing.
fn pin_patch(pod: &TaskPod, placeholder: &str, held: &BTreeSet<Name>) -> Patch {
    let term = pin_term_json(placeholder);
    let affinity = pod.spec.affinity.as_ref();
    let mut ops = Vec::with_capacity(4);
    ops.push(match affinity {
        None => {
            add(paths::AFFINITY, json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}))
        }
        Some(a) if a.pod_affinity.is_none() => {
            add(paths::POD_AFFINITY, json!({"requiredDuringSchedulingIgnoredDuringExecution": [term]}))
        }
        Some(_) => add(paths::REQUIRED_TERMS, json!([term])),
    });
    let claims_csv = held.iter().map(Name::as_str).collect::<Vec<_>>().join(",");
    if pod.metadata.labels.is_empty() {
        ops.push(add(paths::LABELS, json!({ names::LABEL_PINNED: "true" })));
    } else {
        ops.push(add(paths::LABEL_PINNED, json!("true")));
    }
    if pod.metadata.annotations.is_empty() {
        ops.push(add(
            paths::ANNOTATIONS,
            json!({ names::ANNOTATION_PINNED_TO: placeholder, names::ANNOTATION_CLAIMS: claims_csv }),
        ));
    } else {
        ops.push(add(paths::ANNOTATION_PINNED_TO, json!(placeholder)));
        ops.push(add(paths::ANNOTATION_CLAIMS, json!(claims_csv)));
    }
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;

    #[test]
    fn patch_paths_spell_the_names() {
        let path = |tokens: &[&str]| PointerBuf::from_tokens(tokens.iter().copied());
        assert_eq!(paths::AFFINITY, path(&["spec", "affinity"]));
        assert_eq!(paths::POD_AFFINITY, path(&["spec", "affinity", "podAffinity"]));
        assert_eq!(
            paths::REQUIRED_TERMS,
            path(&["spec", "affinity", "podAffinity", "requiredDuringSchedulingIgnoredDuringExecution"])
        );
        assert_eq!(paths::LABELS, path(&["metadata", "labels"]));
        assert_eq!(paths::LABEL_PINNED, path(&["metadata", "labels", names::LABEL_PINNED]));
        assert_eq!(paths::ANNOTATIONS, path(&["metadata", "annotations"]));
        assert_eq!(paths::ANNOTATION_PINNED_TO, path(&["metadata", "annotations", names::ANNOTATION_PINNED_TO]));
        assert_eq!(paths::ANNOTATION_CLAIMS, path(&["metadata", "annotations", names::ANNOTATION_CLAIMS]));
    }

    #[test]
    fn the_term_json_is_the_serialised_term() {
        let name = "aa-x-0123456789";
        assert_eq!(pin_term_json(name), serde_json::to_value(pin_term(name)).unwrap());
    }
}
