//! Tekton Pipelines (`tekton.dev/v1`): trimmed views of PipelineRun and Pipeline, and the rules
//! Tekton uses for the things the add-on must predict (PVC names, pod labels).
//!
//! `status.pipelineSpec` carries whole task scripts; these views keep only workspace usage, so
//! a cached run costs a few hundred bytes, not kilobytes.

use super::{
    ClaimRef, ClaimTemplate, Engine, EngineGrant, EngineSkip, Kind, OwnAssistant, ParseError, PodScheduling,
    PodSelector, RunRef, nullable,
};
use crate::model::{Binding, ClaimSource, Definition, Run, RunPhase, Scheduling, TaskUsage};
use crate::pod::{PodMeta, TaskPod};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;

pub const API_VERSION: &str = "tekton.dev/v1";
pub const KIND_PIPELINE_RUN: &str = "PipelineRun";
pub const KIND_PIPELINE: &str = "Pipeline";

/// Task pod labels Tekton sets.
pub const LABEL_PIPELINE_RUN: &str = "tekton.dev/pipelineRun";
pub const LABEL_PIPELINE_RUN_UID: &str = "tekton.dev/pipelineRunUID";
pub const LABEL_PIPELINE_TASK: &str = "tekton.dev/pipelineTask";
/// Set on pods pinned by Tekton's own affinity assistant.
pub const ANNOTATION_TEKTON_ASSISTANT: &str = "pipeline.tekton.dev/affinity-assistant";
/// `app.kubernetes.io/component` value of Tekton's own placeholder pods.
pub const TEKTON_ASSISTANT_COMPONENT: &str = "affinity-assistant";
/// Tekton's feature flag for its own affinity assistant; the add-on needs it `disabled`.
pub const COSCHEDULE_KEY: &str = "coschedule";

/// `spec.status` value that holds a run back.
const SPEC_STATUS_PENDING: &str = "PipelineRunPending";

pub struct Tekton;

/// Tekton's kinds.
pub const RUN_KIND: Kind = Kind { group: "tekton.dev", version: "v1", kind: KIND_PIPELINE_RUN, plural: "pipelineruns" };
pub const PIPELINE_KIND: Kind = Kind { group: "tekton.dev", version: "v1", kind: KIND_PIPELINE, plural: "pipelines" };

impl Engine for Tekton {
    fn name(&self) -> &'static str {
        "tekton"
    }

    fn title(&self) -> &'static str {
        "Tekton"
    }

    fn run_kind(&self) -> Kind {
        RUN_KIND
    }

    fn definition_kind(&self) -> Option<Kind> {
        Some(PIPELINE_KIND)
    }

    fn run(&self, meta: &ObjectMeta, data: &serde_json::Value) -> Result<Run, ParseError> {
        let mut pr: PipelineRun = super::from_value(KIND_PIPELINE_RUN, data)?;
        pr.metadata = meta.clone();
        pr.metadata.annotations = Some(super::own_annotations(meta));
        pr.to_run()
    }

    fn definition(&self, meta: &ObjectMeta, data: &serde_json::Value) -> Result<Definition, ParseError> {
        let mut p: Pipeline = super::from_value(KIND_PIPELINE, data)?;
        p.metadata = meta.clone();
        Ok(p.to_definition())
    }

    fn pod_selector(&self) -> PodSelector {
        PodSelector { label: LABEL_PIPELINE_RUN, not_labels: &[] }
    }

    fn pod_run(&self, pod: &PodMeta) -> Option<RunRef> {
        let name = pod.labels.get(LABEL_PIPELINE_RUN).filter(|n| !n.is_empty())?;
        Some(RunRef {
            name: name.to_string(),
            uid: pod.labels.get(LABEL_PIPELINE_RUN_UID).filter(|u| !u.is_empty()).map(|u| u.to_string()),
        })
    }

    fn pod_task<'a>(&self, pod: &'a PodMeta) -> Option<&'a str> {
        pod.labels.get(LABEL_PIPELINE_TASK).map(|t| t.as_ref())
    }

    fn pod_skip(&self, pod: &PodMeta) -> Option<EngineSkip> {
        if pod.labels.get(crate::names::LABEL_APP_COMPONENT).map(|c| c.as_ref()) == Some(TEKTON_ASSISTANT_COMPONENT) {
            Some(EngineSkip::EnginePlaceholder)
        } else if pod.annotations.contains_key(ANNOTATION_TEKTON_ASSISTANT) {
            Some(EngineSkip::EngineAssistant)
        } else {
            None
        }
    }

    fn rbac(&self) -> Vec<EngineGrant> {
        vec![
            // Watched into the caches; the webhook GETs a run its cache has not seen yet.
            ("tekton.dev", "pipelineruns", &["get", "list", "watch"]),
            // A pipelineRef run's first pods come before Tekton writes its spec: the add-on
            // resolves the Pipeline itself.
            ("tekton.dev", "pipelines", &["get", "list", "watch"]),
        ]
    }

    fn own_assistant(&self) -> Option<&dyn OwnAssistant> {
        Some(&TektonAssistant)
    }

    fn sample_pod<'r>(&self, run: &'r Run, task: &str, finally: bool, claims: &[String]) -> TaskPod<'r> {
        use std::borrow::Cow;
        let labels: crate::pod::StrMap<'r> = [
            (LABEL_PIPELINE_RUN, run.name.to_string()),
            (LABEL_PIPELINE_RUN_UID, run.uid.to_string()),
            (LABEL_PIPELINE_TASK, task.to_string()),
            ("tekton.dev/memberOf", if finally { "finally" } else { "tasks" }.to_string()),
            (crate::names::LABEL_APP_MANAGED_BY, "tekton-pipelines".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)))
        .collect();
        TaskPod {
            metadata: PodMeta {
                name: format!("{}-{task}-pod", run.name).into(),
                generate_name: Cow::Borrowed(""),
                namespace: Cow::Borrowed(&run.namespace),
                labels,
                annotations: crate::pod::borrowed_map(&run.annotations),
                owner_references: Vec::new(),
            },
            spec: crate::pod::PodSpecView {
                volumes: claims
                    .iter()
                    .enumerate()
                    .map(|(i, c)| crate::pod::VolumeView {
                        name: format!("ws-{i}").into(),
                        persistent_volume_claim: Some(crate::pod::ClaimVolume { claim_name: c.clone().into() }),
                    })
                    .collect(),
                ..Default::default()
            },
            identity: Default::default(),
        }
        .identified()
    }
}

/// Tekton's own affinity assistant (`coschedule` in Tekton's `feature-flags`).
pub struct TektonAssistant;

impl OwnAssistant for TektonAssistant {
    fn placeholder_selector(&self) -> String {
        format!("{}={}", crate::names::LABEL_APP_COMPONENT, TEKTON_ASSISTANT_COMPONENT)
    }

    fn serves(&self, sts: &StatefulSet) -> Vec<String> {
        let owners = sts.metadata.owner_references.iter().flatten().map(|o| o.uid.clone());
        let named = sts.metadata.labels.as_ref().and_then(|l| l.get(LABEL_PIPELINE_RUN)).cloned();
        owners.chain(named).collect()
    }

    fn flag(&self) -> (&'static str, &'static str) {
        ("feature-flags", COSCHEDULE_KEY)
    }

    fn enabled(&self, value: Option<&str>) -> bool {
        coschedule_enabled(value)
    }

    fn would_serve(&self, value: Option<&str>, run: &Run) -> bool {
        tekton_would_serve(value, run)
    }
}

/// The PVC Tekton creates for a `volumeClaimTemplate` workspace:
/// `<template name, or "pvc">-<first 10 hex of sha256(binding name + run uid)>`.
pub fn template_claim_name(template_name: Option<&str>, binding: &str, run_uid: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{binding}{run_uid}").as_bytes());
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let prefix = template_name.filter(|n| !n.is_empty()).unwrap_or("pvc");
    format!("{prefix}-{hex}")
}

/// Whether Tekton's own affinity assistant serves a run, given its `coschedule` flag: every
/// run in the per-run modes, runs with a PVC workspace in `workspaces` mode (its default).
pub fn tekton_would_serve(coschedule: Option<&str>, run: &Run) -> bool {
    match coschedule.map(str::trim) {
        Some("disabled") => false,
        Some("pipelineruns" | "isolate-pipelinerun") => true,
        _ => run.bindings.iter().any(|b| b.source.claim().is_some()),
    }
}

/// Whether Tekton's `coschedule` flag leaves its own affinity assistant on.
pub fn coschedule_enabled(value: Option<&str>) -> bool {
    // Tekton's default is "workspaces": an absent flag means on.
    value.map(str::trim) != Some("disabled")
}

/// `tekton.dev/v1` PipelineRun, trimmed: the type the controller's cache holds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRun {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PipelineRunSpec,
    #[serde(default)]
    pub status: Option<PipelineRunStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunSpec {
    #[serde(default)]
    pub pipeline_ref: Option<PipelineRef>,
    #[serde(default)]
    pub pipeline_spec: Option<PipelineSpec>,
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
    #[serde(default)]
    pub task_run_template: Option<TaskRunTemplate>,
    #[serde(default, deserialize_with = "nullable")]
    pub task_run_specs: Vec<TaskRunSpec>,
    #[serde(default, deserialize_with = "nullable")]
    pub workspaces: Vec<WorkspaceBinding>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRef {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub resolver: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunTemplate {
    #[serde(default)]
    pub pod_template: Option<PodTemplate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub pipeline_task_name: String,
    #[serde(default)]
    pub pod_template: Option<PodTemplate>,
}

/// The scheduling part of Tekton's PodTemplate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(flatten)]
    pub scheduling: PodScheduling,
    #[serde(default, deserialize_with = "nullable")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

impl From<&PodTemplate> for Scheduling {
    fn from(t: &PodTemplate) -> Scheduling {
        t.scheduling.to_scheduling(t.image_pull_secrets.clone())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceBinding {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub persistent_volume_claim: Option<ClaimRef>,
    #[serde(default)]
    pub volume_claim_template: Option<ClaimTemplate>,
}

/// A pipeline spec, keeping only which workspaces each task binds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub tasks: Vec<PipelineTask>,
    #[serde(default, deserialize_with = "nullable")]
    pub finally: Vec<PipelineTask>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTask {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub workspaces: Vec<TaskWorkspace>,
    /// Only whether it is there: an embedded spec may use propagated workspaces.
    #[serde(default)]
    pub task_spec: Option<IgnoredAny>,
    /// An embedded pipeline (pipelines in pipelines): its usage cannot be read either.
    #[serde(default)]
    pub pipeline_spec: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskWorkspace {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// The pipeline workspace; empty means the same as `name`.
    #[serde(default, deserialize_with = "nullable")]
    pub workspace: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub pipeline_spec: Option<PipelineSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub type_: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
    #[serde(default, deserialize_with = "nullable")]
    pub reason: String,
}

/// `tekton.dev/v1` Pipeline, trimmed: the type the Pipelines cache holds (a `pipelineRef` run's
/// first pods come before Tekton writes `status.pipelineSpec`, so the add-on resolves the
/// reference itself, as Tekton does).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PipelineSpec,
}

impl PipelineRun {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or("")
    }

    pub fn from_value(value: &serde_json::Value) -> Result<PipelineRun, ParseError> {
        super::from_value(KIND_PIPELINE_RUN, value)
    }

    /// Whether the `Succeeded` condition says the run is over.
    pub fn is_done(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "Succeeded" && matches!(c.status.as_str(), "True" | "False"))
        })
    }

    /// The Pipeline this run names when Tekton has not written `status.pipelineSpec` yet and
    /// the add-on can resolve it itself: a `pipelineRef` by name, without a resolver (git,
    /// bundles, hub and cluster resolutions exist only inside Tekton until the status is written).
    pub fn unresolved_pipeline_name(&self) -> Option<&str> {
        if self.spec.pipeline_spec.is_some() || self.status.as_ref().is_some_and(|s| s.pipeline_spec.is_some()) {
            return None;
        }
        let r = self.spec.pipeline_ref.as_ref()?;
        (r.resolver.is_empty() && !r.name.is_empty()).then_some(r.name.as_str())
    }

    /// The engine-neutral run. Fails only when the run cannot be identified (no name).
    pub fn to_run(&self) -> Result<Run, ParseError> {
        let invalid = |message: String| ParseError::Invalid { kind: KIND_PIPELINE_RUN.into(), message };
        if self.name().is_empty() {
            return Err(invalid("metadata.name is empty".into()));
        }
        for (i, b) in self.spec.workspaces.iter().enumerate() {
            if b.name.is_empty() {
                return Err(invalid(format!("spec.workspaces[{i}].name is empty")));
            }
        }
        let spec = self.status.as_ref().and_then(|s| s.pipeline_spec.as_ref()).or(self.spec.pipeline_spec.as_ref());
        let phase = if self.is_done() {
            RunPhase::Done
        } else if self.spec.status == SPEC_STATUS_PENDING {
            RunPhase::Pending
        } else if spec.is_none() {
            RunPhase::AwaitingSpec
        } else {
            RunPhase::Active
        };
        let bindings = self
            .spec
            .workspaces
            .iter()
            .map(|b| Binding { workspace: b.name.as_str().into(), source: self.claim_source(b) })
            .collect();
        let overrides: BTreeMap<&str, &PodTemplate> = self
            .spec
            .task_run_specs
            .iter()
            .filter_map(|s| Some((s.pipeline_task_name.as_str(), s.pod_template.as_ref()?)))
            .collect();
        let tasks = spec
            .map(|spec| {
                spec.task_usage()
                    .into_iter()
                    .map(|mut t| {
                        t.scheduling = overrides.get(t.name.as_str()).map(|p| Box::new(Scheduling::from(*p)));
                        t
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Resolved later against the named Pipeline: keep the overrides for then.
        let (definition, task_overrides) = match (phase == RunPhase::AwaitingSpec, self.unresolved_pipeline_name()) {
            (true, Some(name)) => {
                (Some(name.into()), overrides.iter().map(|(t, p)| (t.to_string(), Scheduling::from(*p))).collect())
            }
            _ => (None, Vec::new()),
        };
        Ok(Run {
            engine: "tekton",
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            name: self.name().into(),
            uid: self.uid().into(),
            api_version: API_VERSION.into(),
            kind: KIND_PIPELINE_RUN.into(),
            created: self.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            annotations: self.metadata.annotations.clone().unwrap_or_default(),
            phase,
            bindings,
            tasks,
            scheduling: self
                .spec
                .task_run_template
                .as_ref()
                .and_then(|t| t.pod_template.as_ref())
                .map(Scheduling::from)
                .unwrap_or_default(),
            engine_assistant: false,
            definition,
            task_overrides,
            claims_from_pods: false,
            cluster_definition: false,
        })
    }

    fn claim_source(&self, b: &WorkspaceBinding) -> ClaimSource {
        if let Some(c) = b.persistent_volume_claim.as_ref().filter(|c| !c.claim_name.is_empty()) {
            ClaimSource::Claim(c.claim_name.as_str().into())
        } else if let Some(t) = &b.volume_claim_template {
            ClaimSource::Template {
                claim: template_claim_name(t.metadata.as_ref().map(|m| m.name.as_str()), &b.name, self.uid()).into(),
                access_modes: t.spec.as_ref().map(|s| s.access_modes.clone()).unwrap_or_default(),
            }
        } else {
            ClaimSource::Other
        }
    }
}

impl PipelineTask {
    /// The run workspaces this task binds; `None` when an embedded spec may use workspaces
    /// the task does not bind (Tekton propagates them).
    fn usage(&self) -> Option<Vec<String>> {
        if self.workspaces.is_empty() && (self.task_spec.is_some() || self.pipeline_spec.is_some()) {
            return None;
        }
        Some(
            self.workspaces
                .iter()
                .map(|w| if w.workspace.is_empty() { w.name.clone() } else { w.workspace.clone() })
                .collect(),
        )
    }
}

impl Pipeline {
    pub fn from_value(value: &serde_json::Value) -> Result<Pipeline, ParseError> {
        super::from_value(KIND_PIPELINE, value)
    }

    /// What resolving a run against this Pipeline needs.
    pub fn to_definition(&self) -> Definition {
        Definition {
            name: self.metadata.name.as_deref().unwrap_or_default().into(),
            annotations: super::own_annotations(&self.metadata),
            tasks: self.spec.task_usage(),
            bindings: Vec::new(),
        }
    }
}

impl PipelineSpec {
    /// Each task's workspace usage, `tasks` then `finally`.
    pub fn task_usage(&self) -> Vec<TaskUsage> {
        let tasks = self.tasks.iter().map(|t| (t, false));
        let finally = self.finally.iter().map(|t| (t, true));
        tasks
            .chain(finally)
            .map(|(t, finally)| TaskUsage { name: t.name.clone(), finally, workspaces: t.usage(), scheduling: None })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_claim_name_matches_tekton() {
        // From the fixture pod shape: binding "source", run uid ...0001 -> pvc-abd8db64c5.
        assert_eq!(template_claim_name(None, "source", "0d8f1a2b-0000-4000-8000-000000000001"), "pvc-abd8db64c5");
        assert!(template_claim_name(Some("data"), "source", "u").starts_with("data-"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = PipelineRun::from_value(&json!({"metadata": {"name": "r"}, "spec": {"workspaces": [{"name": 3}]}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.workspaces[0].name"), "{err}");
    }

    #[test]
    fn nulls_and_unknown_fields_are_tolerated() {
        let pr = PipelineRun::from_value(&json!({
            "metadata": {"name": "r", "annotations": null, "managedFields": [{}]},
            "spec": {"workspaces": null, "somethingNew": 1, "pipelineSpec": {"tasks": null}},
            "status": null
        }))
        .unwrap();
        let run = pr.to_run().unwrap();
        assert_eq!(run.phase, RunPhase::Active);
        assert!(run.bindings.is_empty());
    }

    #[test]
    fn phases() {
        let phase = |v: serde_json::Value| PipelineRun::from_value(&v).unwrap().to_run().unwrap().phase;
        let inline = json!({"tasks": []});
        assert_eq!(phase(json!({"metadata": {"name": "r"}, "spec": {"pipelineSpec": inline}})), RunPhase::Active);
        assert_eq!(
            phase(json!({"metadata": {"name": "r"}, "spec": {"pipelineSpec": inline, "status": "PipelineRunPending"}})),
            RunPhase::Pending
        );
        assert_eq!(
            phase(json!({"metadata": {"name": "r"}, "spec": {"pipelineRef": {"name": "p"}}})),
            RunPhase::AwaitingSpec
        );
        for s in ["True", "False"] {
            assert_eq!(
                phase(json!({"metadata": {"name": "r"}, "spec": {"pipelineSpec": inline},
                    "status": {"conditions": [{"type": "Succeeded", "status": s}]}})),
                RunPhase::Done
            );
        }
        // Cancelled but still running finally tasks: still active until Succeeded is set.
        assert_eq!(
            phase(json!({"metadata": {"name": "r"}, "spec": {"pipelineSpec": inline, "status": "CancelledRunFinally"},
                "status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}]}})),
            RunPhase::Active
        );
    }

    #[test]
    fn usage_reads_bindings_and_marks_propagation_unknown() {
        let pr = PipelineRun::from_value(&json!({
            "metadata": {"name": "r"},
            "spec": {"pipelineSpec": {"tasks": [
                {"name": "a", "taskRef": {"name": "t"}, "workspaces": [{"name": "src", "workspace": "ws"}, {"name": "cache"}]},
                {"name": "b", "taskRef": {"name": "t"}},
                {"name": "c", "taskSpec": {"steps": [{"script": "cat $(workspaces.ws.path)/x"}]}}
            ], "finally": [{"name": "f", "workspaces": [{"name": "w", "workspace": "ws"}]}]}}
        }))
        .unwrap();
        let run = pr.to_run().unwrap();
        let usage: Vec<_> = run.tasks.iter().map(|t| (t.name.as_str(), t.finally, t.workspaces.clone())).collect();
        assert_eq!(
            usage,
            vec![
                ("a", false, Some(vec!["ws".to_string(), "cache".to_string()])),
                ("b", false, Some(vec![])),
                ("c", false, None),
                ("f", true, Some(vec!["ws".to_string()])),
            ]
        );
    }

    #[test]
    fn status_pipeline_spec_wins_and_resolve_merges_annotations() {
        let pr = PipelineRun::from_value(&json!({
            "metadata": {"name": "r", "annotations": {"affinity-assistant.dev/mode": "pipelineruns"}},
            "spec": {"pipelineRef": {"name": "p"}}
        }))
        .unwrap();
        let p = Pipeline::from_value(&json!({
            "metadata": {"name": "p", "annotations": {"affinity-assistant.dev/mode": "workspaces",
                "affinity-assistant.dev/enabled": "false"}},
            "spec": {"tasks": [{"name": "t", "workspaces": [{"name": "w"}]}]}
        }))
        .unwrap();
        let mut run = pr.to_run().unwrap();
        assert_eq!((run.phase.clone(), run.definition.as_deref()), (RunPhase::AwaitingSpec, Some("p")));
        Tekton.resolve(&mut run, &p.to_definition());
        assert_eq!(run.phase, RunPhase::Active);
        assert_eq!(run.annotations[crate::names::ANNOTATION_MODE], "pipelineruns", "the run wins");
        assert_eq!(run.annotations[crate::names::ANNOTATION_ENABLED], "false", "the Pipeline's is merged");
        assert_eq!(run.tasks.len(), 1);
    }

    #[test]
    fn pod_recognition() {
        let pod = PodMeta::deserialize(json!({"labels": {
            "tekton.dev/pipelineRun": "r", "tekton.dev/pipelineRunUID": "u", "tekton.dev/pipelineTask": "build"}}))
        .unwrap();
        assert_eq!(Tekton.pod_run(&pod), Some(RunRef { name: "r".into(), uid: Some("u".into()) }));
        assert_eq!(Tekton.pod_task(&pod), Some("build"));
        assert_eq!(Tekton.pod_skip(&pod), None);
        let aa =
            PodMeta::deserialize(json!({"labels": {"app.kubernetes.io/component": "affinity-assistant"}})).unwrap();
        assert_eq!(Tekton.pod_skip(&aa), Some(EngineSkip::EnginePlaceholder));
        let pinned =
            PodMeta::deserialize(json!({"annotations": {"pipeline.tekton.dev/affinity-assistant": "x"}})).unwrap();
        assert_eq!(Tekton.pod_skip(&pinned), Some(EngineSkip::EngineAssistant));
        assert!(
            coschedule_enabled(None) && coschedule_enabled(Some("workspaces")) && !coschedule_enabled(Some("disabled"))
        );
    }
}
