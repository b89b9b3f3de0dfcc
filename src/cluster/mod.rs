//! The add-on's view of the cluster: watch-fed caches shared by the controller and the webhook,
//! and the conversion of cached objects into the decision core's inputs.
//!
//! Both shells read the same caches and call [`Caches::plan`], so they see one decision per
//! namespace. The webhook's common case is a cache hit on the namespace's plan: no API call.

pub mod store;
pub mod watch;

use crate::config::Config;
use crate::core::{self, MissingClaims, NamespaceState, Plan};
use crate::engine::tekton::{self, PipelineRun};
use crate::model::{ClaimInfo, ExistingPlaceholder, NodeInfo, PinnedPod, Run};
use crate::names;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use store::{NsStore, trim_meta};

/// The label selector of placeholders (StatefulSets and their pods).
pub fn placeholder_selector() -> String {
    format!(
        "{}={},{}={}",
        names::LABEL_APP_MANAGED_BY,
        names::APP_NAME,
        names::LABEL_APP_COMPONENT,
        names::COMPONENT_PLACEHOLDER
    )
}

/// The label selector of task pods of any engine (Tekton today).
pub fn task_pod_selector() -> String {
    tekton::LABEL_PIPELINE_RUN.to_string()
}

/// Pods: only metadata, the node, the phase and conditions are read.
pub fn trim_pod(pod: &mut Pod) {
    trim_meta(pod);
    if let Some(spec) = pod.spec.as_mut() {
        let node = spec.node_name.take();
        let volumes = spec.volumes.take();
        *spec = Default::default();
        spec.node_name = node;
        spec.volumes = volumes;
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// Nodes: labels, taints, cordon and conditions; not the image list.
pub fn trim_node(node: &mut Node) {
    trim_meta(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.node_info = None;
        status.allocatable = None;
        status.capacity = None;
    }
}

/// Runs: the add-on reads only its own annotations (opt-out, mode), never labels, owners,
/// finalizers or versions; with thousands of active runs these are most of what a run would cost.
pub fn trim_run(run: &mut PipelineRun) {
    trim_meta(run);
    let meta = &mut run.metadata;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    // The watcher keeps its own resourceVersion; the store never compares them.
    meta.resource_version = None;
    meta.generation = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(names::DOMAIN));
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    if let Some(status) = run.status.as_mut() {
        status.conditions.retain(|c| c.type_ == "Succeeded");
        for c in &mut status.conditions {
            c.reason = String::new();
        }
    }
}

/// Everything the add-on watches.
pub struct Caches {
    pub runs: NsStore<PipelineRun>,
    pub claims: NsStore<PersistentVolumeClaim>,
    pub placeholders: NsStore<StatefulSet>,
    pub placeholder_pods: NsStore<Pod>,
    pub task_pods: NsStore<Pod>,
    pub nodes: NsStore<Node>,
    pub leases: NsStore<Lease>,
    /// Namespaces labelled `affinity-assistant.dev/enabled: "false"` (only those are watched).
    pub opted_out: NsStore<Namespace>,
    config: RwLock<Arc<Config>>,
    config_version: std::sync::atomic::AtomicU64,
    /// Tekton's `coschedule` flag, when it could be read.
    tekton_coschedule: RwLock<Option<Option<String>>>,
    plans: Mutex<HashMap<String, (u64, Arc<Plan>)>>,
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            runs: NsStore::new(trim_run),
            claims: NsStore::new(trim_meta),
            placeholders: NsStore::new(trim_meta),
            placeholder_pods: NsStore::new(trim_pod),
            task_pods: NsStore::new(trim_pod),
            nodes: NsStore::new(trim_node),
            leases: NsStore::new(trim_meta),
            opted_out: NsStore::new(trim_meta),
            config: RwLock::new(Arc::new(Config::default())),
            config_version: Default::default(),
            tekton_coschedule: RwLock::new(None),
            plans: Mutex::new(HashMap::new()),
        }
    }
}

impl Caches {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.config_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// `Some(value)` once Tekton's feature-flags were read (`value` is `coschedule`).
    pub fn set_tekton_coschedule(&self, value: Option<Option<String>>) {
        *self.tekton_coschedule.write().unwrap_or_else(|e| e.into_inner()) = value;
        self.config_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn tekton_coschedule(&self) -> Option<Option<String>> {
        self.tekton_coschedule.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the stores the decisions need have completed their first list.
    pub fn ready(&self) -> bool {
        self.runs.is_ready()
            && self.claims.is_ready()
            && self.placeholders.is_ready()
            && self.placeholder_pods.is_ready()
            && self.task_pods.is_ready()
            && self.nodes.is_ready()
    }

    /// A version that changes whenever anything a namespace's plan reads changes.
    fn version(&self, ns: &str) -> u64 {
        use std::sync::atomic::Ordering;
        [
            self.runs.ns_version(ns),
            self.claims.ns_version(ns),
            self.placeholders.ns_version(ns),
            self.placeholder_pods.ns_version(ns),
            self.task_pods.ns_version(ns),
            self.nodes.version(),
            self.opted_out.version(),
            self.config_version.load(Ordering::Acquire),
        ]
        .iter()
        .fold(0u64, |acc, v| acc.wrapping_mul(1_000_003).wrapping_add(*v))
    }

    /// The core's inputs for a namespace, from the caches.
    pub fn inputs(&self, ns: &str) -> Inputs {
        let coschedule = self.tekton_coschedule();
        let runs = self
            .runs
            .in_namespace(ns)
            .iter()
            .filter_map(|pr| {
                let mut run = pr.to_run().ok()?;
                if let Some(value) = &coschedule {
                    run.engine_assistant = tekton::tekton_would_serve(value.as_deref(), &run);
                }
                Some(run)
            })
            .collect();
        let claims = self
            .claims
            .in_namespace(ns)
            .iter()
            .map(|pvc| (pvc.metadata.name.clone().unwrap_or_default(), claim_info(pvc)))
            .collect();
        let pods = self.placeholder_pods.in_namespace(ns);
        let placeholders = self
            .placeholders
            .in_namespace(ns)
            .iter()
            .filter_map(|sts| {
                crate::views::placeholder_from_statefulset(sts, |name| {
                    bound_node(name, &pods).and_then(|n| self.nodes.get("", &n)).map(|n| Arc::new(node_info(&n)))
                })
            })
            .collect();
        let pinned = self.task_pods.in_namespace(ns).iter().filter_map(|p| pinned_pod(p)).collect();
        let opted_out = self.opted_out.get("", ns).is_some();
        Inputs { namespace: ns.to_string(), runs, claims, placeholders, pinned, opted_out }
    }

    /// The plan of a namespace, recomputed only when something it reads has changed.
    pub fn plan(&self, ns: &str) -> Arc<Plan> {
        let version = self.version(ns);
        if let Some((v, plan)) = self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(ns)
            && *v == version
        {
            return plan.clone();
        }
        let plan = Arc::new(self.inputs(ns).plan(&self.config(), MissingClaims::Wait));
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).insert(ns.to_string(), (version, plan.clone()));
        plan
    }

    /// Every namespace with something the add-on may act on.
    pub fn namespaces(&self) -> std::collections::BTreeSet<String> {
        let mut out = self.runs.namespaces();
        out.extend(self.placeholders.namespaces());
        out.extend(self.task_pods.namespaces());
        out
    }
}

/// The core's inputs for one namespace.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub namespace: String,
    pub runs: Vec<Run>,
    pub claims: BTreeMap<String, ClaimInfo>,
    pub placeholders: Vec<ExistingPlaceholder>,
    pub pinned: Vec<PinnedPod>,
    /// The namespace is labelled `affinity-assistant.dev/enabled: "false"`: planned as with
    /// `enabled: false` (no new placeholders; existing ones kept for the runs they serve).
    pub opted_out: bool,
}

impl Inputs {
    pub fn plan(&self, config: &Config, missing: MissingClaims) -> Plan {
        let disabled;
        let config = if self.opted_out && config.enabled {
            disabled = Config { enabled: false, ..config.clone() };
            &disabled
        } else {
            config
        };
        core::plan(&NamespaceState {
            namespace: &self.namespace,
            config,
            runs: &self.runs,
            claims: &self.claims,
            placeholders: &self.placeholders,
            pinned_pods: &self.pinned,
            missing_claims: missing,
        })
    }
}

pub fn claim_info(pvc: &PersistentVolumeClaim) -> ClaimInfo {
    let status = pvc.status.as_ref();
    ClaimInfo {
        name: pvc.metadata.name.clone().unwrap_or_default(),
        spec_access_modes: pvc.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default(),
        status_access_modes: status.and_then(|s| s.access_modes.clone()).unwrap_or_default(),
        bound: status.and_then(|s| s.phase.as_deref()) == Some("Bound"),
        node_pinned: false,
    }
}

pub fn node_info(node: &Node) -> NodeInfo {
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints: node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default(),
    }
}

/// The node a placeholder's pod is bound to (its StatefulSet pod is `<name>-0`).
pub fn bound_node(placeholder: &str, pods: &[Arc<Pod>]) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get(names::LABEL_PLACEHOLDER)).map(String::as_str)
                == Some(placeholder)
        })
        .and_then(|p| p.spec.as_ref()?.node_name.clone())
}

/// A pinned, unfinished pod: demand for its placeholder (I4).
pub fn pinned_pod(pod: &Pod) -> Option<PinnedPod> {
    crate::views::pinned_from_pod(pod)
}

/// Whether a controller holds a fresh leader lease (`now` in seconds since the epoch).
pub fn lease_fresh(lease: &Lease, now: i64) -> bool {
    let Some(spec) = lease.spec.as_ref() else { return false };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    let (Some(renew), Some(duration)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return false;
    };
    !holder.is_empty() && renew.0.as_second() + i64::from(duration) > now
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trimming_a_run_keeps_every_decision_input() {
        let fixture = |phase: &str| {
            json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
                "metadata": {"name": "r", "namespace": "ci", "uid": "u1", "creationTimestamp": "2026-11-23T00:00:00Z",
                    "labels": {"tekton.dev/pipeline": "build"}, "finalizers": ["chains.tekton.dev"],
                    "annotations": {names::ANNOTATION_MODE: "pipelineruns", "team": "a",
                        "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
                "spec": {"pipelineRef": {"name": "build"},
                    "workspaces": [{"name": "src", "persistentVolumeClaim": {"claimName": "c"}}]},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "x"},
                        {"type": "Succeeded", "status": phase, "reason": "Running"}],
                    "pipelineSpec": {"tasks": [{"name": "t", "workspaces": [{"name": "src"}]}]}}})
        };
        for phase in ["Unknown", "True", "False"] {
            let original: PipelineRun = serde_json::from_value(fixture(phase)).unwrap();
            let mut trimmed = original.clone();
            trim_run(&mut trimmed);
            let mut want = original.to_run().unwrap();
            want.annotations.retain(|k, _| k.starts_with(names::DOMAIN));
            assert_eq!(trimmed.to_run().unwrap(), want, "phase {phase}");
            assert_eq!(want.annotations.len(), 1, "the add-on's own annotation is kept");
            assert!(trimmed.metadata.labels.is_none() && trimmed.metadata.finalizers.is_none());
        }
    }
}
