//! Engine adapters: the one place that knows a pipeline engine's object shapes.
//!
//! An engine is one file implementing [`Engine`]: which resource is its run and how one becomes
//! the neutral [`crate::model::Run`] (once, when it enters the cache), its run definitions
//! (Tekton's Pipeline), which pods are its task pods and which run each belongs to, which of its
//! pods to leave alone, the RBAC it needs and the webhook selector that sends its pods to the
//! add-on, and how the add-on stands down where the engine has its own assistant. The core and
//! the shells (controller, webhook, `render`, `manifests`) only ever go through this trait;
//! [`engines`] is the registry.

pub mod argo;
pub mod tekton;

use crate::model::{Definition, Run};
use crate::pod::{PodMeta, TaskPod};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The run a task pod belongs to, as the pod says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub name: String,
    /// Absent on pods made by hand or by old engine versions.
    pub uid: Option<String>,
}

/// Why an engine says a pod is not the add-on's to pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineSkip {
    /// The engine's own placeholder pod.
    EnginePlaceholder,
    /// The engine's own affinity assistant already pinned this pod.
    EngineAssistant,
    /// One of the engine's own helper pods (Argo's agent and artifact-GC pods): never user work.
    EngineHelper,
}

/// A custom resource an engine defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Kind {
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// For kube's dynamic API (`Api::<DynamicObject>::namespaced_with`).
    pub fn api_resource(&self) -> kube::core::ApiResource {
        kube::core::ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// One RBAC grant an engine needs: `group`, `resource`, verbs.
pub type EngineGrant = (&'static str, &'static str, &'static [&'static str]);

/// The webhook entry of an engine: its task pods have `label`, and none of `not_labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelector {
    pub label: &'static str,
    pub not_labels: &'static [&'static str],
}

/// An engine's own affinity assistant (Tekton's): the add-on stands down for the runs it serves.
pub trait OwnAssistant: Send + Sync {
    /// The label selector of its placeholder StatefulSets.
    fn placeholder_selector(&self) -> String;
    /// The runs (uids and names) one of its placeholders serves.
    fn serves(&self, sts: &StatefulSet) -> Vec<String>;
    /// Where its switch is: (ConfigMap name, key) in the engine's namespace.
    fn flag(&self) -> (&'static str, &'static str);
    /// Whether the flag's value switches it on at all.
    fn enabled(&self, value: Option<&str>) -> bool;
    /// Whether, with the flag's value, it serves `run`.
    fn would_serve(&self, value: Option<&str>, run: &Run) -> bool;
}

/// A pipeline engine.
pub trait Engine: Send + Sync {
    /// Short name, used in logs, metric labels and [`Run::engine`].
    fn name(&self) -> &'static str;
    /// How people call it ("Tekton", "Argo Workflows"), for messages.
    fn title(&self) -> &'static str;
    /// Its run resource.
    fn run_kind(&self) -> Kind;
    /// The definitions its runs may name before their spec is resolved, if any.
    fn definition_kind(&self) -> Option<Kind>;
    /// A cluster-scoped kind of definition its runs may name (Argo's ClusterWorkflowTemplate):
    /// watched and read cluster-wide, named by runs with [`Run::cluster_definition`].
    fn cluster_definition_kind(&self) -> Option<Kind> {
        None
    }
    /// A run object (its metadata and the rest of the document) as the neutral run. Fails only
    /// when the run cannot be identified or is malformed. Only the add-on's own annotations
    /// need to be kept.
    fn run(&self, meta: &ObjectMeta, data: &serde_json::Value) -> Result<Run, ParseError>;
    /// A definition object, as far as resolving a run against it goes.
    fn definition(&self, meta: &ObjectMeta, data: &serde_json::Value) -> Result<Definition, ParseError>;
    /// The webhook selector of its task pods (and the label selector of the task-pod watch).
    fn pod_selector(&self) -> PodSelector;
    /// The run a pod belongs to, or `None` when it is not one of this engine's task pods.
    fn pod_run(&self, pod: &PodMeta) -> Option<RunRef>;
    /// The pipeline task a task pod runs, for logs and `render`.
    fn pod_task<'a>(&self, pod: &'a PodMeta) -> Option<&'a str>;
    /// A pod of the engine's that is not the add-on's to pin.
    fn pod_skip(&self, pod: &PodMeta) -> Option<EngineSkip>;
    /// What the add-on reads of the engine's resources (beyond pods, PVCs and its own objects).
    fn rbac(&self) -> Vec<EngineGrant>;
    /// RBAC for its cluster-scoped resources (granted cluster-wide whatever namespaces are
    /// watched).
    fn cluster_rbac(&self) -> Vec<EngineGrant> {
        Vec::new()
    }
    /// Its own affinity assistant, if it has one.
    fn own_assistant(&self) -> Option<&dyn OwnAssistant> {
        None
    }
    /// Resolves a run whose spec the engine has not written yet against the definition it
    /// names (its tasks, its annotations under the run's).
    fn resolve(&self, run: &mut Run, definition: &Definition) {
        run.resolve(definition);
    }
    /// `render`: the pod the engine would create for `task` of `run`, mounting `claims`.
    fn sample_pod<'r>(&self, run: &'r Run, task: &str, finally: bool, claims: &[String]) -> TaskPod<'r>;
}

/// Every engine the add-on knows, in the order a pod is offered to them.
pub fn engines() -> &'static [&'static dyn Engine] {
    &[&tekton::Tekton, &argo::Argo]
}

/// The engine of a run (`Run::engine`).
pub fn by_name(name: &str) -> Option<&'static dyn Engine> {
    engines().iter().copied().find(|e| e.name() == name)
}

/// The engine and run a pod belongs to, and whether an engine says to leave it alone.
pub fn identify(pod: &PodMeta) -> crate::pod::Identity {
    let owner = engines().iter().copied().find_map(|e| Some((e, e.pod_run(pod)?)));
    let skip = engines().iter().copied().find_map(|e| Some((e, e.pod_skip(pod)?)));
    let engine = owner.as_ref().map(|(e, _)| *e).or(skip.map(|(e, _)| e));
    crate::pod::Identity {
        engine: engine.map(|e| e.name()).unwrap_or(""),
        title: engine.map(|e| e.title()).unwrap_or(""),
        run: owner.map(|(_, r)| r),
        skip: skip.map(|(_, s)| s),
    }
}

/// Only the add-on's own annotations (the rest is not read, and runs are cached by the
/// thousand).
pub fn own_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(crate::names::DOMAIN))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Kubernetes shapes engines share: a volume's claim reference and a claim template (Tekton's
/// `volumeClaimTemplate` workspace, Argo's `volumeClaimTemplates`), trimmed to what is read.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    #[serde(default, deserialize_with = "nullable")]
    pub claim_name: String,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimTemplate {
    #[serde(default)]
    pub metadata: Option<TemplateMeta>,
    #[serde(default)]
    pub spec: Option<TemplateSpec>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub access_modes: Vec<String>,
}

/// The pod scheduling fields engines' specs share (Tekton's `podTemplate`, Argo's workflow and
/// template specs), flattened into each.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodScheduling {
    #[serde(default, deserialize_with = "nullable")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    #[serde(default)]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    #[serde(default)]
    pub priority_class_name: Option<String>,
}

impl PodScheduling {
    /// The neutral scheduling, with the image pull secrets the engine has beside these.
    pub fn to_scheduling(
        &self,
        image_pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
    ) -> crate::model::Scheduling {
        crate::model::Scheduling {
            node_selector: self.node_selector.clone(),
            tolerations: self.tolerations.clone(),
            affinity: self.affinity.clone(),
            image_pull_secrets,
            priority_class_name: self.priority_class_name.clone().filter(|p| !p.is_empty()),
        }
    }
}

/// A document that could not be read as the type it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field with the wrong type: `path` names it (`spec.workspaces[0].name`).
    #[error("{kind}: field {path}: {message}")]
    Field { kind: String, path: String, message: String },
    /// A required field is missing or empty.
    #[error("{kind}: {message}")]
    Invalid { kind: String, message: String },
}

/// Deserialises `value` into `T`, naming the offending field on error.
pub fn from_value<'a, T: serde::Deserialize<'a>>(kind: &str, value: &'a serde_json::Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| ParseError::Field {
        kind: kind.to_string(),
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// `serde_json::from_slice`, checking UTF-8 once for the whole document: reading from bytes,
/// serde_json checks every string it keeps (keys included) one by one, which costs more than
/// one pass over the document. Bytes that are not UTF-8 go to `from_slice` itself, so the
/// result and the errors are the same.
pub fn from_json_slice<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Serde helper: a `null` collection or string reads as its default (API servers and humans
/// both write `field: null`).
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::from_json_slice;
    use crate::pod::TaskPod;

    #[test]
    fn from_json_slice_reads_as_from_slice_does() {
        let docs: [&[u8]; 4] = [
            br#"{"metadata": {"name": "p\u00e9", "labels": {"a\/b": "\"c\""}}, "spec": {"x": "\n"}}"#,
            // Not UTF-8 inside a field nobody reads: from_slice never looks at it.
            b"{\"metadata\": {\"name\": \"p\"}, \"spec\": {\"x\": \"\xff\"}}",
            // Not UTF-8 where it is read: the same error either way.
            b"{\"metadata\": {\"name\": \"\xff\"}}",
            br#"{"metadata": {"name": 1}}"#,
        ];
        for doc in docs {
            let fast = from_json_slice::<TaskPod>(doc).map_err(|e| e.to_string());
            let slow = serde_json::from_slice::<TaskPod>(doc).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(doc));
        }
    }
}
