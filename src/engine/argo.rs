//! Argo Workflows (`argoproj.io/v1alpha1`): a Workflow is a run, its templates are the tasks,
//! its volumes (and `volumeClaimTemplates`) the workspaces. The facts this file relies on are in
//! `tests/fixtures/argo/` (shapes read from Argo's source):
//!
//! - task pods carry `workflows.argoproj.io/workflow: <name>` and exactly one controller owner
//!   reference, the Workflow (its uid); Argo's agent and artifact-GC pods also carry
//!   `workflows.argoproj.io/component` and never mount user volumes;
//! - `volumeClaimTemplates[i]` becomes the PVC `<workflow>-<template metadata.name>`;
//!   `spec.volumes` and `templates[].volumes` name existing claims (`{{workflow.parameters.x}}`
//!   is filled in from the Workflow's arguments, as Argo does; anything else in `{{...}}` is only
//!   known when the pod is built);
//! - what a pod mounts is read from the pod: every Workflow takes its claims from its pods
//!   (`Run::claims_from_pods`), which also covers a `podSpecPatch` that adds a volume;
//! - a Workflow is active with phase `""`, `Pending` or `Running` (its first pods come before any
//!   status), done with `Succeeded`, `Failed` or `Error`, and `argo retry` reopens it (same uid);
//! - with `workflowTemplateRef` the effective spec is `status.storedWorkflowTemplateSpec`, written
//!   after the first pods (Argo creates them in the same pass, so a webhook waiting for that
//!   status would wait in vain): until then the WorkflowTemplate, or the ClusterWorkflowTemplate
//!   with `clusterScope: true`, is read, as Tekton's Pipeline is;
//! - Argo does not copy a Workflow's annotations to its pods: opt-out and mode are read from the
//!   Workflow (and its WorkflowTemplate);
//! - a template whose mounts cannot be read from the spec (a `podSpecPatch`, which is how
//!   Kubeflow Pipelines adds its `kfp-workspace`) counts as using every claim of the run.

use super::{
    ClaimRef, ClaimTemplate, Engine, EngineGrant, EngineSkip, Kind, ParseError, PodScheduling, PodSelector, RunRef,
    nullable,
};
use crate::model::{Binding, ClaimSource, Definition, Run, RunPhase, Scheduling, TaskUsage};
use crate::pod::{PodMeta, TaskPod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::IgnoredAny;

pub const API_VERSION: &str = "argoproj.io/v1alpha1";
pub const KIND_WORKFLOW: &str = "Workflow";
pub const KIND_WORKFLOW_TEMPLATE: &str = "WorkflowTemplate";
pub const RUN_KIND: Kind = Kind { group: "argoproj.io", version: "v1alpha1", kind: KIND_WORKFLOW, plural: "workflows" };
pub const KIND_CLUSTER_WORKFLOW_TEMPLATE: &str = "ClusterWorkflowTemplate";
pub const CLUSTER_TEMPLATE_KIND: Kind = Kind {
    group: "argoproj.io",
    version: "v1alpha1",
    kind: KIND_CLUSTER_WORKFLOW_TEMPLATE,
    plural: "clusterworkflowtemplates",
};
pub const TEMPLATE_KIND: Kind =
    Kind { group: "argoproj.io", version: "v1alpha1", kind: KIND_WORKFLOW_TEMPLATE, plural: "workflowtemplates" };

/// The label on every pod of a Workflow.
pub const LABEL_WORKFLOW: &str = "workflows.argoproj.io/workflow";
/// Argo's own helper pods (agent, artifact GC).
pub const LABEL_COMPONENT: &str = "workflows.argoproj.io/component";
/// The workflow node a pod runs.
pub const ANNOTATION_NODE_NAME: &str = "workflows.argoproj.io/node-name";

pub struct Argo;

impl Engine for Argo {
    fn name(&self) -> &'static str {
        "argo"
    }

    fn title(&self) -> &'static str {
        "Argo Workflows"
    }

    fn run_kind(&self) -> Kind {
        RUN_KIND
    }

    fn definition_kind(&self) -> Option<Kind> {
        Some(TEMPLATE_KIND)
    }

    fn cluster_definition_kind(&self) -> Option<Kind> {
        Some(CLUSTER_TEMPLATE_KIND)
    }

    fn run(&self, meta: &ObjectMeta, data: &serde_json::Value) -> Result<Run, ParseError> {
        let wf: Workflow = super::from_value(KIND_WORKFLOW, data)?;
        wf.to_run(meta)
    }

    fn definition(&self, meta: &ObjectMeta, data: &serde_json::Value) -> Result<Definition, ParseError> {
        let t: WorkflowTemplate = super::from_value(KIND_WORKFLOW_TEMPLATE, data)?;
        Ok(Definition {
            name: meta.name.as_deref().unwrap_or_default().into(),
            annotations: super::own_annotations(meta),
            tasks: t.spec.task_usage(),
            bindings: t.spec.bindings(""),
        })
    }

    fn resolve(&self, run: &mut Run, definition: &Definition) {
        let awaiting = run.phase == RunPhase::AwaitingSpec;
        run.resolve(definition);
        if awaiting {
            // The template's own volumes and claim templates, named for this Workflow.
            for b in &definition.bindings {
                if run.bindings.iter().any(|r| r.workspace == b.workspace) {
                    continue;
                }
                let source = match &b.source {
                    ClaimSource::Template { claim, access_modes } => ClaimSource::Template {
                        claim: format!("{}-{claim}", run.name).into(),
                        access_modes: access_modes.clone(),
                    },
                    other => other.clone(),
                };
                run.bindings.push(Binding { workspace: b.workspace.clone(), source });
            }
        }
    }

    fn pod_selector(&self) -> PodSelector {
        PodSelector { label: LABEL_WORKFLOW, not_labels: &[LABEL_COMPONENT] }
    }

    fn pod_run(&self, pod: &PodMeta) -> Option<RunRef> {
        let name = pod.labels.get(LABEL_WORKFLOW).filter(|n| !n.is_empty())?;
        // The run is the pod's Workflow owner (Argo sets exactly one, the controller).
        let uid = pod
            .owner_references
            .iter()
            .find(|o| o.kind == KIND_WORKFLOW && o.api_version.starts_with("argoproj.io/") && o.name == *name)
            .map(|o| o.uid.to_string())
            .filter(|u| !u.is_empty());
        Some(RunRef { name: name.to_string(), uid })
    }

    fn pod_task<'a>(&self, pod: &'a PodMeta) -> Option<&'a str> {
        pod.annotations.get(ANNOTATION_NODE_NAME).map(|t| t.as_ref())
    }

    fn pod_skip(&self, pod: &PodMeta) -> Option<EngineSkip> {
        (pod.labels.contains_key(LABEL_WORKFLOW) && pod.labels.contains_key(LABEL_COMPONENT))
            .then_some(EngineSkip::EngineHelper)
    }

    fn rbac(&self) -> Vec<EngineGrant> {
        vec![
            // Watched into the caches; the webhook GETs a Workflow its cache has not seen yet
            // (Argo copies no annotation to its pods: the opt-out is on the Workflow).
            ("argoproj.io", "workflows", &["get", "list", "watch"]),
            // A workflowTemplateRef's first pods come before Argo stores the template's spec.
            ("argoproj.io", "workflowtemplates", &["get", "list", "watch"]),
        ]
    }

    fn cluster_rbac(&self) -> Vec<EngineGrant> {
        // The same for a workflowTemplateRef with clusterScope: true.
        vec![("argoproj.io", "clusterworkflowtemplates", &["get", "list", "watch"])]
    }

    fn sample_pod<'r>(&self, run: &'r Run, task: &str, _finally: bool, claims: &[String]) -> TaskPod<'r> {
        use crate::pod::{ClaimVolume, PodOwner, PodSpecView, StrMap, VolumeView};
        use std::borrow::Cow;
        let labels: StrMap<'r> = [(Cow::Borrowed(LABEL_WORKFLOW), Cow::Owned(run.name.to_string()))].into();
        let annotations: StrMap<'r> =
            [(Cow::Borrowed(ANNOTATION_NODE_NAME), Cow::Owned(format!("{}.{task}", run.name)))].into();
        TaskPod {
            metadata: PodMeta {
                name: format!("{}-{task}", run.name).into(),
                generate_name: Cow::Borrowed(""),
                namespace: Cow::Borrowed(&run.namespace),
                labels,
                annotations,
                owner_references: vec![PodOwner {
                    api_version: Cow::Borrowed(API_VERSION),
                    kind: Cow::Borrowed(KIND_WORKFLOW),
                    name: Cow::Owned(run.name.to_string()),
                    uid: Cow::Owned(run.uid.to_string()),
                    controller: Some(true),
                }],
            },
            spec: PodSpecView {
                volumes: claims
                    .iter()
                    .map(|c| VolumeView {
                        name: c.clone().into(),
                        persistent_volume_claim: Some(ClaimVolume { claim_name: c.clone().into() }),
                    })
                    .collect(),
                ..Default::default()
            },
            identity: Default::default(),
        }
        .identified()
    }
}

/// `argoproj.io/v1alpha1` Workflow, trimmed to what the add-on reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    #[serde(default)]
    pub spec: WorkflowSpec,
    #[serde(default)]
    pub status: Option<WorkflowStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowTemplate {
    #[serde(default)]
    pub spec: WorkflowSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub phase: String,
    #[serde(default)]
    pub stored_workflow_template_spec: Option<WorkflowSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub templates: Vec<Template>,
    #[serde(default, deserialize_with = "nullable")]
    pub volumes: Vec<Volume>,
    #[serde(default, deserialize_with = "nullable")]
    pub volume_claim_templates: Vec<ClaimTemplate>,
    #[serde(default)]
    pub workflow_template_ref: Option<TemplateRef>,
    /// `{{workflow.parameters.NAME}}` in a claim name is one of these.
    #[serde(default)]
    pub arguments: Option<Arguments>,
    /// Workflow-wide: changes every pod at run time (mounts included).
    #[serde(default)]
    pub pod_spec_patch: Option<IgnoredAny>,
    #[serde(flatten)]
    pub scheduling: PodScheduling,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arguments {
    #[serde(default, deserialize_with = "nullable")]
    pub parameters: Vec<Parameter>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub cluster_scope: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub persistent_volume_claim: Option<ClaimRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub container: Option<Container>,
    #[serde(default)]
    pub script: Option<Container>,
    #[serde(default)]
    pub container_set: Option<ContainerSet>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub sidecars: Vec<Container>,
    /// Always mounted by this template's pods.
    #[serde(default, deserialize_with = "nullable")]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub pod_spec_patch: Option<IgnoredAny>,
    #[serde(flatten)]
    pub scheduling: PodScheduling,
    /// Templates that only orchestrate (no pod of their own).
    #[serde(default)]
    pub steps: Option<IgnoredAny>,
    #[serde(default)]
    pub dag: Option<IgnoredAny>,
    #[serde(default)]
    pub suspend: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, deserialize_with = "nullable")]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSet {
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

/// A claim name Argo fills in only when it builds the pod.
fn is_parameter(name: &str) -> bool {
    name.contains("{{")
}

/// A template's own volume, as a run workspace: `<template>/<volume>` (template volumes may
/// reuse a workflow volume's name).
fn template_workspace(template: &str, volume: &str) -> String {
    format!("{template}/{volume}")
}

impl WorkflowSpec {
    /// The run's workspaces: claim templates (`<prefix><name>`: the PVC's name once the
    /// Workflow's name is known), workflow volumes, every template's own volumes.
    fn bindings(&self, prefix: &str) -> Vec<Binding> {
        let mut out = Vec::new();
        for t in &self.volume_claim_templates {
            let Some(name) = t.metadata.as_ref().map(|m| m.name.as_str()).filter(|n| !n.is_empty()) else { continue };
            out.push(Binding {
                workspace: name.into(),
                source: ClaimSource::Template {
                    claim: format!("{prefix}{name}").into(),
                    access_modes: t.spec.as_ref().map(|s| s.access_modes.clone()).unwrap_or_default(),
                },
            });
        }
        for v in &self.volumes {
            out.push(Binding { workspace: v.name.as_str().into(), source: self.volume_source(v) });
        }
        for t in &self.templates {
            for v in &t.volumes {
                let workspace = template_workspace(&t.name, &v.name).into();
                out.push(Binding { workspace, source: self.volume_source(v) });
            }
        }
        out
    }

    /// A volume's claim, with `{{workflow.parameters.NAME}}` filled in from the Workflow's
    /// arguments as Argo does. A claim named by anything only known when Argo builds the pod
    /// (`{{inputs.parameters.*}}`, a step's output) is taken from the pods that mount it.
    fn volume_source(&self, v: &Volume) -> ClaimSource {
        let Some(claim) = v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()).filter(|c| !c.is_empty())
        else {
            return ClaimSource::Other;
        };
        let mut name = claim.to_string();
        for p in self.arguments.iter().flat_map(|a| &a.parameters) {
            if let Some(value) = &p.value {
                name = name.replace(&format!("{{{{workflow.parameters.{}}}}}", p.name), value);
            }
        }
        if is_parameter(&name) {
            // Argo names a pod's volumes after the template's.
            ClaimSource::NamedByPod { expr: name.into(), volume: v.name.as_str().into() }
        } else {
            ClaimSource::Claim(name.into())
        }
    }

    /// Each template's mounts, as workspaces; `None` where the spec cannot tell.
    fn task_usage(&self) -> Vec<TaskUsage> {
        self.templates
            .iter()
            .filter(|t| t.steps.is_none() && t.dag.is_none() && t.suspend.is_none())
            .map(|t| {
                let unreadable = self.pod_spec_patch.is_some() || t.pod_spec_patch.is_some();
                let workspaces = (!unreadable).then(|| {
                    let mut ws: Vec<String> = t.volumes.iter().map(|v| template_workspace(&t.name, &v.name)).collect();
                    // Any other mount names a workflow volume: this Workflow's, or, for a
                    // template run by reference, the referring Workflow's (unknown names bind
                    // nothing).
                    for m in t.mounts() {
                        if !t.volumes.iter().any(|v| v.name == m) && !ws.iter().any(|w| w == m) {
                            ws.push(m.to_string());
                        }
                    }
                    ws
                });
                TaskUsage { name: t.name.clone(), finally: false, workspaces, scheduling: t.scheduling() }
            })
            .collect()
    }
}

impl Template {
    /// The volume names its containers mount.
    fn mounts(&self) -> impl Iterator<Item = &str> {
        let set = self.container_set.iter().flat_map(|s| s.containers.iter());
        let containers = self.container.iter().chain(&self.script).chain(&self.init_containers).chain(&self.sidecars);
        containers
            .chain(set)
            .flat_map(|c| c.volume_mounts.iter())
            .chain(self.container_set.iter().flat_map(|s| s.volume_mounts.iter()))
            .map(|m| m.name.as_str())
    }

    fn scheduling(&self) -> Option<Box<Scheduling>> {
        let s = self.scheduling.to_scheduling(Vec::new());
        (s != Scheduling::default()).then(|| Box::new(s))
    }
}

impl Workflow {
    /// The neutral run. Fails only when the Workflow cannot be identified.
    pub fn to_run(&self, meta: &ObjectMeta) -> Result<Run, ParseError> {
        let name = meta.name.as_deref().unwrap_or_default();
        if name.is_empty() {
            return Err(ParseError::Invalid { kind: KIND_WORKFLOW.into(), message: "metadata.name is empty".into() });
        }
        let status = self.status.as_ref();
        let stored = status.and_then(|s| s.stored_workflow_template_spec.as_ref());
        let template_ref = self.spec.workflow_template_ref.as_ref().filter(|r| !r.name.is_empty());
        let phase = match status.map(|s| s.phase.as_str()).unwrap_or("") {
            "Succeeded" | "Failed" | "Error" => RunPhase::Done,
            _ if template_ref.is_some() && stored.is_none() => RunPhase::AwaitingSpec,
            // "", Pending, Running (suspended too): its pods may come at any moment.
            _ => RunPhase::Active,
        };
        // The effective spec: the stored template spec (the template merged with this
        // Workflow), else this Workflow's own.
        let spec = stored.unwrap_or(&self.spec);
        let mut bindings = spec.bindings(&format!("{name}-"));
        if !std::ptr::eq(spec, &self.spec) {
            // The Workflow's own volumes, when the stored spec left them out.
            for b in self.spec.bindings(&format!("{name}-")) {
                if !bindings.iter().any(|x| x.workspace == b.workspace) {
                    bindings.push(b);
                }
            }
        }
        let tasks = if phase == RunPhase::AwaitingSpec { Vec::new() } else { spec.task_usage() };
        Ok(Run {
            engine: "argo",
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: name.into(),
            uid: meta.uid.as_deref().unwrap_or_default().into(),
            api_version: API_VERSION.into(),
            kind: KIND_WORKFLOW.into(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            annotations: super::own_annotations(meta),
            phase,
            bindings,
            tasks,
            scheduling: spec.scheduling.to_scheduling(Vec::new()),
            engine_assistant: false,
            definition: template_ref.map(|r| r.name.as_str().into()),
            cluster_definition: template_ref.is_some_and(|r| r.cluster_scope),
            task_overrides: Vec::new(),
            claims_from_pods: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ci".into()),
            uid: Some(format!("uid-{name}")),
            annotations: Some(
                [("affinity-assistant.dev/enabled".to_string(), "false".to_string()), ("x".into(), "y".into())].into(),
            ),
            ..Default::default()
        }
    }

    fn ci_spec() -> serde_json::Value {
        json!({"spec": {"entrypoint": "ci", "arguments": {"parameters": [{"name": "team", "value": "web"}]},
            "volumeClaimTemplates": [{"metadata": {"name": "workdir"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "go-cache"}},
                {"name": "param", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}},
                {"name": "wfparam", "persistentVolumeClaim": {"claimName": "cache-{{workflow.parameters.team}}"}},
                {"name": "cfg", "configMap": {"name": "c"}}],
            "templates": [
                {"name": "ci", "steps": [[{"name": "clone", "template": "clone"}]]},
                {"name": "clone", "container": {"image": "git", "volumeMounts": [{"name": "workdir", "mountPath": "/src"}]}},
                {"name": "build", "container": {"image": "go", "volumeMounts": [{"name": "workdir", "mountPath": "/src"},
                    {"name": "cache", "mountPath": "/cache"}]}, "nodeSelector": {"pool": "big"}},
                {"name": "own", "volumes": [{"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch"}}],
                    "script": {"image": "sh", "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]}},
                {"name": "patched", "container": {"image": "kfp"}, "podSpecPatch": "{}"}]}})
    }

    #[test]
    fn a_workflow_becomes_a_run() {
        let run = Argo.run(&meta("ci-1"), &ci_spec()).unwrap();
        assert_eq!((run.engine, run.kind.as_str(), run.phase.clone()), ("argo", "Workflow", RunPhase::Active));
        assert_eq!(run.annotations.len(), 1, "only the add-on's own annotations are kept");
        let claims: Vec<(&str, Option<&str>)> =
            run.bindings.iter().map(|b| (b.workspace.as_str(), b.source.claim())).collect();
        assert_eq!(
            claims,
            vec![
                ("workdir", Some("ci-1-workdir")),
                ("cache", Some("go-cache")),
                ("param", None),
                ("wfparam", Some("cache-web")),
                ("cfg", None),
                ("own/scratch", Some("scratch")),
            ]
        );
        assert_eq!(
            run.bindings[2].source,
            ClaimSource::NamedByPod { expr: "{{inputs.parameters.pvc}}".into(), volume: "param".into() }
        );
        assert!(run.claims_from_pods, "what an Argo pod mounts is read from the pod");
        let usage: Vec<(&str, Option<Vec<String>>)> =
            run.tasks.iter().map(|t| (t.name.as_str(), t.workspaces.clone())).collect();
        assert_eq!(
            usage,
            vec![
                ("clone", Some(vec!["workdir".into()])),
                ("build", Some(vec!["workdir".into(), "cache".into()])),
                ("own", Some(vec!["own/scratch".into()])),
                ("patched", None),
            ]
        );
        assert_eq!(run.tasks[1].scheduling.as_ref().unwrap().node_selector["pool"], "big");
    }

    #[test]
    fn phases_retry_and_template_refs() {
        let phase = |status: serde_json::Value| {
            let mut v = ci_spec();
            v["status"] = status;
            Argo.run(&meta("w"), &v).unwrap().phase
        };
        assert_eq!(phase(json!(null)), RunPhase::Active, "first pods come before any status");
        for p in ["", "Pending", "Running"] {
            assert_eq!(phase(json!({"phase": p})), RunPhase::Active, "{p}");
        }
        for p in ["Succeeded", "Failed", "Error"] {
            assert_eq!(phase(json!({"phase": p})), RunPhase::Done, "{p}");
        }
        // argo retry: the same Workflow goes back to Running.
        assert_eq!(phase(json!({"phase": "Running"})), RunPhase::Active);

        let by_ref = json!({"spec": {"workflowTemplateRef": {"name": "ci-template"}}});
        let mut run = Argo.run(&meta("r"), &by_ref).unwrap();
        assert_eq!((run.phase.clone(), run.definition.as_deref()), (RunPhase::AwaitingSpec, Some("ci-template")));
        let mut tmeta = meta("ci-template");
        tmeta.annotations = Some([("affinity-assistant.dev/mode".to_string(), "pipelineruns".to_string())].into());
        let def = Argo.definition(&tmeta, &ci_spec()).unwrap();
        Argo.resolve(&mut run, &def);
        assert_eq!(run.phase, RunPhase::Active);
        assert_eq!(run.annotations["affinity-assistant.dev/mode"], "pipelineruns");
        assert!(run.bindings.iter().any(|b| b.source.claim() == Some("r-workdir")), "{:?}", run.bindings);
        // A ClusterWorkflowTemplate is read the same way, cluster-wide.
        let cluster = json!({"spec": {"workflowTemplateRef": {"name": "ci-lib", "clusterScope": true}}});
        let run = Argo.run(&meta("c"), &cluster).unwrap();
        assert_eq!((run.definition.as_deref(), run.cluster_definition), (Some("ci-lib"), true));
        assert_eq!(Argo.cluster_definition_kind().map(|k| k.plural), Some("clusterworkflowtemplates"));
        // Once Argo stored the spec, that is what counts.
        let mut stored = by_ref.clone();
        stored["status"] = json!({"phase": "Running", "storedWorkflowTemplateSpec": ci_spec()["spec"]});
        let run = Argo.run(&meta("r"), &stored).unwrap();
        assert_eq!(run.phase, RunPhase::Active);
        assert_eq!(run.tasks.len(), 4, "the steps template runs no pod of its own");
    }

    #[test]
    fn pods() {
        let pod = PodMeta::deserialize(json!({"labels": {LABEL_WORKFLOW: "ci-1"},
            "annotations": {ANNOTATION_NODE_NAME: "ci-1[1].test(0)"},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "Workflow", "name": "ci-1", "uid": "u1", "controller": true}]}))
        .unwrap();
        assert_eq!(Argo.pod_run(&pod), Some(RunRef { name: "ci-1".into(), uid: Some("u1".into()) }));
        assert_eq!(Argo.pod_task(&pod), Some("ci-1[1].test(0)"));
        assert_eq!(Argo.pod_skip(&pod), None);
        let agent =
            PodMeta::deserialize(json!({"labels": {LABEL_WORKFLOW: "ci-1", LABEL_COMPONENT: "agent"}})).unwrap();
        assert_eq!(Argo.pod_skip(&agent), Some(EngineSkip::EngineHelper));
        let other = PodMeta::deserialize(json!({"labels": {"tekton.dev/pipelineRun": "r"}})).unwrap();
        assert_eq!(Argo.pod_run(&other), None);
    }
}
