//! Builders for tests: runs and pods are written in Tekton's own JSON shapes and go through
//! the real adapter, so the tests cover the parsing as well as the decisions.
#![allow(dead_code)]

use affinity_assistant::config::Config;
use affinity_assistant::core::{self, Decision, MissingClaims, NamespaceState, Pin, Plan, Skip};
use affinity_assistant::engine::tekton::PipelineRun;
use affinity_assistant::model::{ClaimInfo, ExistingPlaceholder, Name, NodeInfo, PinnedPod, PodMounts, Run};
use affinity_assistant::pod::TaskPod;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

pub const NS: &str = "ci";

/// A run: `bindings` are (workspace, claim) — a claim named `vct:<prefix>` becomes a
/// volumeClaimTemplate, `emptyDir` an emptyDir; `tasks` are (task, workspaces used).
pub fn run_json(name: &str, bindings: &[(&str, &str)], tasks: &[(&str, &[&str])]) -> Value {
    let workspaces: Vec<Value> = bindings
        .iter()
        .map(|(ws, claim)| {
            if let Some(prefix) = claim.strip_prefix("vct:") {
                json!({"name": ws, "volumeClaimTemplate": {"metadata": {"name": prefix},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}})
            } else if *claim == "emptyDir" {
                json!({"name": ws, "emptyDir": {}})
            } else {
                json!({"name": ws, "persistentVolumeClaim": {"claimName": claim}})
            }
        })
        .collect();
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|(t, ws)| {
            let ws: Vec<Value> = ws.iter().map(|w| json!({"name": format!("{w}-in-task"), "workspace": w})).collect();
            json!({"name": t, "taskRef": {"name": "some-task"}, "workspaces": ws})
        })
        .collect();
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": NS, "uid": uid(name),
            "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {}},
        "spec": {"pipelineRef": {"name": "p"}, "workspaces": workspaces},
        "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            "pipelineSpec": {"tasks": tasks}}
    })
}

/// The same run as an Argo Workflow: `bindings` become `spec.volumes` (claims), `tasks`
/// templates whose container mounts those volumes.
pub fn workflow_json(name: &str, bindings: &[(&str, &str)], tasks: &[(&str, &[&str])]) -> Value {
    let volumes: Vec<Value> =
        bindings.iter().map(|(ws, claim)| json!({"name": ws, "persistentVolumeClaim": {"claimName": claim}})).collect();
    let templates: Vec<Value> = tasks
        .iter()
        .map(|(t, ws)| {
            let mounts: Vec<Value> = ws.iter().map(|w| json!({"name": w, "mountPath": format!("/{w}")})).collect();
            json!({"name": t, "container": {"image": "busybox", "volumeMounts": mounts}})
        })
        .collect();
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS, "uid": uid(name),
            "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {}},
        "spec": {"entrypoint": "main", "volumes": volumes, "templates": templates},
        "status": {"phase": "Running"}
    })
}

/// An Argo Workflow's JSON as the Argo adapter reads it.
pub fn to_argo_run(v: &Value) -> Run {
    use affinity_assistant::engine::Engine;
    let obj: kube::api::DynamicObject = serde_json::from_value(v.clone()).expect("a Workflow");
    affinity_assistant::engine::argo::Argo.run(&obj.metadata, &obj.data).expect("identifiable Workflow")
}

pub fn uid(name: &str) -> String {
    format!("uid-{name}")
}

pub fn to_run(v: &Value) -> Run {
    PipelineRun::from_value(v).expect("valid PipelineRun").to_run().expect("identifiable run")
}

pub fn run(name: &str, bindings: &[(&str, &str)], tasks: &[(&str, &[&str])]) -> Run {
    to_run(&run_json(name, bindings, tasks))
}

pub fn pvc(name: &str, modes: &[&str]) -> ClaimInfo {
    ClaimInfo {
        name: name.into(),
        spec_access_modes: modes.iter().map(|m| m.to_string()).collect(),
        status_access_modes: vec![],
        bound: false,
        node_pinned: false,
        volume_node_affinity: None,
        deleted: false,
    }
}

pub fn rwo(names: &[&str]) -> BTreeMap<String, ClaimInfo> {
    names.iter().map(|n| (n.to_string(), pvc(n, &["ReadWriteOnce"]))).collect()
}

/// The namespace under test.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub config: Config,
    pub runs: Vec<Run>,
    pub claims: BTreeMap<String, ClaimInfo>,
    pub placeholders: Vec<ExistingPlaceholder>,
    pub pinned: Vec<PinnedPod>,
    /// Unfinished task pods' mounts (what a run whose claims come from its pods mounts).
    pub mounts: Vec<PodMounts>,
}

impl World {
    pub fn new(runs: Vec<Run>, claims: BTreeMap<String, ClaimInfo>) -> World {
        World { runs, claims, ..Default::default() }
    }

    pub fn plan(&self) -> Plan {
        core::plan(&NamespaceState {
            namespace: NS,
            config: &self.config,
            runs: &self.runs,
            claims: &self.claims,
            placeholders: &self.placeholders,
            pinned_pods: &self.pinned,
            task_pods: &self.mounts,
            missing_claims: MissingClaims::Wait,
        })
    }

    /// Carries out a plan as the controller would: created placeholders exist afterwards
    /// (bound to `node` if given), deleted ones are gone.
    pub fn apply(&mut self, plan: &Plan, node: Option<&NodeInfo>) {
        self.placeholders.retain(|p| !plan.delete.contains(&p.name));
        for p in &plan.placeholders {
            if let Some(e) = self.placeholders.iter_mut().find(|e| e.name == p.name) {
                e.owners = p
                    .owners
                    .iter()
                    .map(|o| affinity_assistant::model::OwnerRun { name: o.name.clone(), uid: o.uid.clone() })
                    .collect();
                e.run_modes = p.run_modes.clone();
            } else {
                self.placeholders.push(ExistingPlaceholder {
                    name: p.name.clone(),
                    claims: p.claims.clone(),
                    owners: p
                        .owners
                        .iter()
                        .map(|o| affinity_assistant::model::OwnerRun { name: o.name.clone(), uid: o.uid.clone() })
                        .collect(),
                    mode: Some(p.mode),
                    run_modes: p.run_modes.clone(),
                    node_selector: p.node_selector.clone(),
                    node: node.cloned().map(std::sync::Arc::new),
                    pod_exists: node.is_some(),
                    refused: None,
                });
            }
        }
    }
}

/// A task pod in its engine's shape (Tekton's or Argo's) for `run`, mounting `claims`.
pub fn pod_json(run: &Run, task: &str, claims: &[&str]) -> Value {
    if run.engine == "argo" {
        return argo_pod_json(run, task, claims);
    }
    let mut volumes = vec![
        json!({"name": "tekton-internal-workspace", "emptyDir": {}}),
        json!({"name": "tekton-internal-home", "emptyDir": {}}),
    ];
    for (i, c) in claims.iter().enumerate() {
        volumes.push(json!({"name": format!("ws-{i:05x}"), "persistentVolumeClaim": {"claimName": c}}));
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("pipeline.tekton.dev/release".into(), json!("v1.0.0"));
    for (k, v) in &run.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-{task}-pod-", run.name),
            "namespace": run.namespace,
            "labels": {
                "tekton.dev/pipeline": "p",
                "tekton.dev/pipelineRun": run.name,
                "tekton.dev/pipelineRunUID": run.uid,
                "tekton.dev/pipelineTask": task,
                "tekton.dev/memberOf": "tasks",
                "tekton.dev/taskRun": format!("{}-{task}", run.name),
                "app.kubernetes.io/managed-by": "tekton-pipelines"
            },
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": format!("{}-{task}", run.name),
                "uid": "taskrun-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{"name": "step-run", "image": "busybox", "command": ["/tekton/bin/entrypoint"]}],
            "volumes": volumes
        }
    })
}

/// A task pod as Argo makes it: the workflow label, the Workflow as owner, node annotations;
/// the run's annotations are NOT copied (Argo does not); the pod's own volumes.
pub fn argo_pod_json(run: &Run, task: &str, claims: &[&str]) -> Value {
    let mut volumes = vec![json!({"name": "var-run-argo", "emptyDir": {}})];
    for (i, c) in claims.iter().enumerate() {
        volumes.push(json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-{task}-1234", run.name),
            "namespace": run.namespace,
            "labels": {"workflows.argoproj.io/workflow": run.name, "workflows.argoproj.io/completed": "false"},
            "annotations": {"workflows.argoproj.io/node-name": format!("{}.{task}", run.name)},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": run.name,
                "uid": run.uid, "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"containers": [{"name": "main", "image": "busybox"}], "volumes": volumes}
    })
}

pub fn pod(run: &Run, task: &str, claims: &[&str]) -> TaskPod<'static> {
    TaskPod::from_value(&pod_json(run, task, claims)).expect("valid pod")
}

pub fn expect_pin(d: Decision) -> Pin {
    match d {
        Decision::Pin(p) => *p,
        Decision::Skip(s) => panic!("expected a pin, got {s:?}"),
    }
}

pub fn expect_skip(d: Decision) -> Skip {
    match d {
        Decision::Skip(s) => s,
        Decision::Pin(p) => panic!("expected a skip, got a pin to {}", p.placeholder),
    }
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn name_set(items: &[&str]) -> BTreeSet<Name> {
    items.iter().map(|&s| Name::from(s)).collect()
}

/// Applies a pin's JSONPatch to a pod's JSON.
pub fn apply_patch(pod: &Value, pin: &Pin) -> Value {
    let mut out = pod.clone();
    json_patch::patch(&mut out, &pin.patch).expect("patch applies");
    out
}
