//! The suite without a cluster: the scenario bodies of `e2e.rs`, the fake Tekton and every
//! helper, run against the in-memory API server of `tests/support/apiserver.rs`, with the
//! add-on's real controller and its real webhook review logic as the pod admission step.
//!
//! That server models objects, status subresources, selectors, watches and garbage
//! collection, not controllers or scheduling. Stand-ins play those parts here, and only as
//! far as these tests need: kube-controller-manager's ServiceAccount and StatefulSet
//! controllers, and a scheduler that knows cordons, taints, one required pod-affinity term
//! (matched by labels in the pod's namespace, on the hostname) and spreading placeholders.
//! So these runs prove that the suite's own logic holds together and agrees with the add-on
//! (which objects the fake Tekton makes, what the webhook does to them, what the controller
//! does in answer, what the assertions read); only a real cluster proves the scheduling.

use crate::admission::Admitting;
use crate::apiserver::FakeApiServer;
use crate::cluster::{is_schedulable, node_of, required_terms};
use crate::env::{Env, Settings, drive};
use crate::tekton::Mode;
use affinity_assistant::decider::CacheDecider;
use affinity_assistant::names;
use affinity_assistant::webhook::metrics::WaitMetrics;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::world::{LEASE, OWN as OWN_NAMESPACE};
pub const NODES: [&str; 2] = ["node-1", "node-2"];

/// The API server plus the add-on and the stand-ins, running until dropped.
struct Offline {
    client: Client,
    /// Leadership, held for as long as the harness runs: the controller stops when it closes.
    _leader: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The webhook's wait metrics, for the scenarios to read (`Env::admission_waits`).
    waits: WaitMetrics,
}

impl Drop for Offline {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs a scenario body of `e2e.rs` offline, with fake Tekton. Bounds are short: nothing here
/// waits on real machines.
pub async fn run<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let offline = start().await;
    let vars = [("E2E_KUBECONFIG", "(in-memory)"), ("E2E_TIMEOUT", "20"), ("E2E_MOVE_TIMEOUT", "20")];
    let settings = Settings::from_lookup(|k| vars.iter().find(|(v, _)| *v == k).map(|(_, x)| x.to_string()))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{name}: offline settings"));
    crate::cluster::preflight(&offline.client, &settings, Mode::Fake)
        .await
        .unwrap_or_else(|e| panic!("{name}: preflight against the in-memory cluster: {e:#}"));
    let mut env = Env::offline(name, offline.client.clone(), settings, Mode::Fake);
    env.admission_waits = Some(offline.waits.clone());
    drive(name, Arc::new(env), body).await;
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {names::TOPOLOGY_HOSTNAME: name}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}})
}

async fn start() -> Offline {
    // The add-on's logs, with RUST_LOG=affinity_assistant=debug and --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let server = FakeApiServer::new();
    for n in NODES {
        server.insert(node(n));
    }
    // A fresh leader Lease: the webhook pins only while a controller holds one.
    let lease = k8s_openapi::api::coordination::v1::Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(OWN_NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("offline".into()),
            lease_duration_seconds: Some(3600),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..Default::default()
        }),
    };
    server.insert(
        serde_json::to_value(&lease)
            .map(|mut v| {
                v["apiVersion"] = json!("coordination.k8s.io/v1");
                v["kind"] = json!("Lease");
                v
            })
            .unwrap_or_default(),
    );
    // The configuration the add-on ships (src/manifests.rs): the preflight looks for it, and
    // support/admission.rs calls the webhook for the pods its entries select.
    crate::admission::install_webhook_configuration(&server, OWN_NAMESPACE);
    let plain = server.client();
    let crate::world::Controller { caches, leader, stop, mut tasks, .. } =
        crate::world::Controller::start(plain.clone(), "offline", true);
    tasks.push(tokio::spawn(control_plane(plain.clone())));
    let mut decider = CacheDecider::new(caches, Some(plain), OWN_NAMESPACE, LEASE);
    let waits = WaitMetrics::register(&mut Default::default());
    decider.metrics = Some(waits.clone());
    let client = Admitting::new(server, Arc::new(decider)).client();
    Offline { client, _leader: leader, stop, tasks, waits }
}

/// The stand-ins for kube-controller-manager and kube-scheduler, every 50 ms.
async fn control_plane(client: Client) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Err(e) = control_plane_tick(&client).await {
            eprintln!("offline control plane: {e:#}");
        }
    }
}

async fn control_plane_tick(client: &Client) -> anyhow::Result<()> {
    // The ServiceAccount controller: every namespace gets `default`.
    for ns in Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await? {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name_any());
        if sas.get_opt("default").await?.is_none() {
            let sa = ServiceAccount {
                metadata: kube::api::ObjectMeta { name: Some("default".into()), ..Default::default() },
                ..Default::default()
            };
            sas.create(&PostParams::default(), &sa).await?;
        }
    }
    // The StatefulSet controller, for one replica: pod `<name>-0` from the template, once
    // any previous pod of that name is gone.
    for sts in Api::<StatefulSet>::all(client.clone()).list(&ListParams::default()).await? {
        let ns = sts.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod_name = format!("{}-0", sts.name_any());
        if sts.metadata.deletion_timestamp.is_some() || pods.get_opt(&pod_name).await?.is_some() {
            continue;
        }
        let template = sts.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "labels": meta.labels, "annotations": meta.annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts.name_any(),
                    "uid": sts.uid(), "controller": true, "blockOwnerDeletion": true}]},
            "spec": template.spec,
        });
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?).await?;
    }
    // The scheduler.
    let all: Vec<Pod> = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .iter()
        .filter(|n| is_schedulable(n))
        .map(|n| n.name_any())
        .collect();
    nodes.sort();
    for pod in all.iter().filter(|p| node_of(p).is_none() && p.metadata.deletion_timestamp.is_none()) {
        if let Some(node) = choose_node(pod, &all, &nodes) {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let bind = json!({"spec": {"nodeName": node}});
            pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&bind)).await?;
        }
    }
    Ok(())
}

/// Where the stand-in scheduler binds a pod, if anywhere: with a required pod-affinity term,
/// the node of a live bound pod in its namespace that the term's labels select (no such pod,
/// or its node not schedulable: the pod waits, as with kube-scheduler); a placeholder goes
/// to the schedulable node with the fewest placeholders; anything else to the first node.
pub fn choose_node(pod: &Pod, pods: &[Pod], nodes: &[String]) -> Option<String> {
    let live_node = |p: &Pod| node_of(p).filter(|_| p.metadata.deletion_timestamp.is_none()).map(String::from);
    if let Some(term) = required_terms(pod).first() {
        let wanted = term.label_selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
        return pods
            .iter()
            .filter(|p| p.namespace() == pod.namespace())
            .filter(|p| wanted.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .find_map(live_node)
            .filter(|n| nodes.contains(n));
    }
    let is_placeholder =
        |p: &Pod| p.labels().get(names::LABEL_APP_COMPONENT).map(String::as_str) == Some(names::COMPONENT_PLACEHOLDER);
    if is_placeholder(pod) {
        let load = |n: &String| pods.iter().filter(|p| is_placeholder(p) && live_node(p).as_ref() == Some(n)).count();
        return nodes.iter().min_by_key(|n| load(n)).cloned();
    }
    nodes.first().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: Value, node: Option<&str>, terms: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns, "labels": labels},
            "spec": {"containers": [], "nodeName": node,
                "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}}))
        .unwrap()
    }

    #[test]
    fn the_stand_in_scheduler_follows_the_term_and_spreads_placeholders() {
        let nodes: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
        let placeholder = |node: Option<&str>| {
            pod(
                "a",
                json!({names::LABEL_APP_COMPONENT: names::COMPONENT_PLACEHOLDER, names::LABEL_PLACEHOLDER: "aa-x"}),
                node,
                json!([]),
            )
        };
        let bound = [placeholder(Some("node-2"))];
        let term = json!([{"labelSelector": {"matchLabels": {names::LABEL_PLACEHOLDER: "aa-x"}}, "topologyKey": names::TOPOLOGY_HOSTNAME}]);
        assert_eq!(choose_node(&pod("a", json!({}), None, term.clone()), &bound, &nodes).as_deref(), Some("node-2"));
        assert_eq!(choose_node(&pod("b", json!({}), None, term.clone()), &bound, &nodes), None, "other namespace");
        assert_eq!(choose_node(&pod("a", json!({}), None, term), &bound, &nodes[..1]), None, "its node is cordoned");
        assert_eq!(choose_node(&placeholder(None), &bound, &nodes).as_deref(), Some("node-1"));
        assert_eq!(choose_node(&pod("a", json!({}), None, json!([])), &bound, &nodes).as_deref(), Some("node-1"));
    }

    // The scenario bodies of e2e.rs, offline.

    #[tokio::test]
    async fn offline_shared_claim() {
        run("shared-claim", crate::shared_claim).await;
    }

    #[tokio::test]
    async fn offline_spread() {
        run("spread", crate::spread).await;
    }

    #[tokio::test]
    async fn offline_left_alone() {
        run("left-alone", crate::left_alone).await;
    }

    #[tokio::test]
    async fn offline_run_ends() {
        run("run-ends", crate::run_ends).await;
    }

    #[tokio::test]
    async fn offline_cordon() {
        run("cordon", crate::cordon).await;
    }

    #[tokio::test]
    async fn offline_restricted() {
        run("restricted", crate::restricted).await;
    }

    #[tokio::test]
    async fn offline_recreate() {
        run("recreate", crate::recreate).await;
    }

    /// The fake Argo alone: passes without the add-on's Argo support.
    #[tokio::test]
    async fn offline_fake_argo_plays_argos_part() {
        run("fake-argo", crate::argo::fake_self_test).await;
    }

    // The Argo scenarios, with the fake playing Argo's part. They need the add-on's Argo
    // support (src/engine/argo.rs and the Argo entry of the webhook configuration from
    // src/manifests.rs): until it lands they fail, first at `argo::prepare`.

    #[tokio::test]
    async fn offline_argo_shared_claim() {
        run("argo-shared-claim", crate::argo_shared_claim).await;
    }

    #[tokio::test]
    async fn offline_argo_left_alone() {
        run("argo-left-alone", crate::argo_left_alone).await;
    }

    #[tokio::test]
    async fn offline_argo_completes() {
        run("argo-completes", crate::argo_completes).await;
    }

    #[tokio::test]
    async fn offline_argo_claim_gc() {
        run("argo-claim-gc", crate::argo_claim_gc).await;
    }

    #[tokio::test]
    async fn offline_argo_retry() {
        run("argo-retry", crate::argo_retry).await;
    }

    #[tokio::test]
    async fn offline_argo_parameter_claim() {
        run("argo-param-claim", crate::argo_parameter_claim).await;
    }
}
