//! A small world of Tekton-shaped objects on the in-memory API server, shared by the tests
//! that drive the controller (runs, claims, nodes, placeholder pods) and a polling helper.
#![allow(dead_code)]

use super::apiserver::FakeApiServer;
use affinity_assistant::cluster::Caches;
use affinity_assistant::cluster::watch::{self, WatchOptions};
use affinity_assistant::controller::{self, Context, ControllerMetrics, Options};
use affinity_assistant::names;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The add-on's namespace in every test world.
pub const OWN: &str = "affinity-assistant";
pub const LEASE: &str = "affinity-assistant-leader";

/// Controller options for tests: the move grace period and resync shortened so that tests
/// wait for them in milliseconds.
pub fn test_options() -> Options {
    Options {
        grace_period: Duration::from_millis(300),
        not_ready_after: Duration::from_secs(300),
        pending_after: Duration::from_secs(120),
        concurrency: 4,
        resync: Duration::from_millis(500),
    }
}

/// Test logs, filtered by `RUST_LOG`, captured per test.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// A stored Secret's data, decoded.
pub fn secret_data(server: &FakeApiServer, ns: &str, name: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let s: k8s_openapi::api::core::v1::Secret = server.get_as(ns, name).expect("the Secret exists");
    s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// Caches, watchers and a controller, as `run` wires them, with leadership in the test's hands.
pub struct Controller {
    pub caches: Arc<Caches>,
    pub leader: tokio::sync::watch::Sender<bool>,
    pub stop: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The controller's context (its memory sizes, for bounds checks).
    pub ctx: Arc<Context>,
}

impl Controller {
    /// Starts them; `identity` names the Event reporter instance.
    pub fn start(client: Client, identity: &str, leader: bool) -> Controller {
        Self::start_with(client, identity, leader, None)
    }

    /// As [`Controller::start`], also reading Tekton's `feature-flags` in `tekton_namespace`
    /// (its `coschedule` flag) as `run --tekton-namespace` does.
    pub fn start_with(client: Client, identity: &str, leader: bool, tekton_namespace: Option<&str>) -> Controller {
        Self::start_watching(client, identity, leader, tekton_namespace, &[])
    }

    /// As [`Controller::start_with`], watching only `namespaces` (`--watch-namespace`; empty: all).
    pub fn start_watching(
        client: Client,
        identity: &str,
        leader: bool,
        tekton_namespace: Option<&str>,
        namespaces: &[&str],
    ) -> Controller {
        init_tracing();
        let caches = Arc::new(Caches::default());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "affinity-assistant".into(),
                instance: Some(identity.into()),
            },
        );
        let reporter = controller::config_reporter(recorder, metrics.clone());
        let watch_options = WatchOptions {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            own_namespace: OWN.into(),
            config_name: "feature-flags".into(),
            lease_name: LEASE.into(),
            tekton_namespace: tekton_namespace.map(String::from),
        };
        let (triggers, mut tasks) = watch::start(client.clone(), caches.clone(), &watch_options, reporter);
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(leader);
        let ctx = Context::new(client, caches.clone(), metrics, leader_rx, test_options(), Some(identity.into()));
        let stop = CancellationToken::new();
        tasks.push(tokio::spawn(controller::run(ctx.clone(), triggers, stop.clone().cancelled_owned())));
        Controller { caches, leader: leader_tx, stop, tasks, ctx }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

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

/// A fresh leader Lease held by `holder` for an hour: the webhook pins only while a controller
/// holds one.
pub fn leader_lease(holder: &str) -> Value {
    let renew = k8s_openapi::jiff::Timestamp::now();
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": OWN},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renew)}})
}
