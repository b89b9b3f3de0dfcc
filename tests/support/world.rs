//! A small world of Tekton-shaped objects on the in-memory API server, shared by the tests
//! that drive the controller (runs, claims, nodes, placeholder pods) and a polling helper.
#![allow(dead_code)]

use super::apiserver::FakeApiServer;
use affinity_assistant::names;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn placeholders(server: &FakeApiServer, ns: &str) -> Vec<Value> {
    server
        .list("statefulsets", ns)
        .into_iter()
        .filter(|s| s["metadata"]["labels"][names::LABEL_APP_MANAGED_BY] == "affinity-assistant")
        .collect()
}

pub fn claims_of(sts: &Value) -> BTreeSet<String> {
    sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub async fn create_pvc(client: &Client, ns: &str, name: &str, mode: &str) {
    let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = serde_json::from_value(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name}, "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap();
    api.create(&PostParams::default(), &pvc).await.unwrap();
}

pub fn runs_api(client: &Client, ns: &str) -> Api<kube::api::DynamicObject> {
    let ar = kube::api::ApiResource {
        group: "tekton.dev".into(),
        version: "v1".into(),
        api_version: "tekton.dev/v1".into(),
        kind: "PipelineRun".into(),
        plural: "pipelineruns".into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Creates a run the way Tekton leaves it once it starts: the object, then its status with
/// the resolved pipeline spec (the status subresource, as a real API server requires).
pub async fn create_run(client: &Client, ns: &str, name: &str, claims: &[&str], annotations: Value) -> String {
    let workspaces: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": format!("w{i}"), "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let task_ws: Vec<Value> = (0..claims.len()).map(|i| json!({"name": format!("w{i}")})).collect();
    let api = runs_api(client, ns);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"pipelineRef": {"name": "p"}, "workspaces": workspaces}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    let status = json!({"status": {
        "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
        "pipelineSpec": {"tasks": [{"name": "build", "taskRef": {"name": "t"}, "workspaces": task_ws}]}
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    created.metadata.uid.unwrap()
}

pub async fn finish_run(client: &Client, ns: &str, name: &str, outcome: &str) {
    let status = json!({"status": {"conditions": [{"type": "Succeeded", "status": outcome, "reason": "Done"}]}});
    runs_api(client, ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

pub fn node(name: &str, unschedulable: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

/// Plays the StatefulSet controller and the scheduler: the placeholder's pod, bound to `node`.
pub fn placeholder_pod(ns: &str, sts: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{sts}-0"), "namespace": ns,
        "labels": {names::LABEL_APP_NAME: "affinity-assistant", names::LABEL_APP_COMPONENT: "placeholder",
            names::LABEL_APP_MANAGED_BY: "affinity-assistant", names::LABEL_PLACEHOLDER: sts}},
        "spec": {"containers": [{"name": "placeholder", "image": "pause"}], "nodeName": node},
        "status": {"phase": "Running"}})
}
