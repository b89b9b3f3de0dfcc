//! The first pods of a run, placeholders that cannot run, and Tekton's own assistant showing
//! up late: the real controller and the real webhook decider over the in-memory API server,
//! with objects shaped and ordered as the recorded Tekton traces show them
//! (`tests/fixtures/tekton/traces/`): pods before the run's `status.pipelineSpec`, the
//! StatefulSet controller's FailedCreate Events, Tekton's `affinity-assistant-*` StatefulSet.

mod support;

use affinity_assistant::core::{Decision, SkipReason};
use affinity_assistant::decider::CacheDecider;
use affinity_assistant::names;
use affinity_assistant::pod::TaskPod;
use affinity_assistant::webhook::Decider;
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::apiserver::FakeApiServer;
use support::world::*;

const NS: &str = "tekton-smoke";
const WAIT: Duration = Duration::from_secs(10);

/// A fresh leader Lease: the webhook pins only while a controller holds one.
fn lease() -> Value {
    let now = k8s_openapi::jiff::Timestamp::now();
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE, "namespace": OWN},
        "spec": {"holderIdentity": "test", "leaseDurationSeconds": 3600, "renewTime": now.to_string()}})
}

struct World {
    server: FakeApiServer,
    client: Client,
    controller: Controller,
    decider: Arc<CacheDecider>,
}

async fn world(budget: Duration) -> World {
    let server = FakeApiServer::new();
    server.insert(lease());
    server.insert(node("node-a", false));
    let client = server.client();
    let controller = Controller::start(client.clone(), "test", true);
    let mut decider = CacheDecider::new(controller.caches.clone(), Some(client.clone()), OWN, LEASE);
    decider.budget = budget;
    let decider = Arc::new(decider);
    let caches = controller.caches.clone();
    eventually("caches synced", WAIT, || caches.ready()).await;
    World { server, client, controller, decider }
}

/// A pipelineRef run as the user creates it (Tekton has written nothing yet).
fn pipeline_ref_run(name: &str, pipeline_ref: Value) -> Value {
    json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "creationTimestamp": "2026-11-29T14:04:19Z"},
        "spec": {"pipelineRef": pipeline_ref,
            "workspaces": [{"name": "src", "persistentVolumeClaim": {"claimName": format!("{name}-src")}}]}})
}

fn pipeline(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "tekton.dev/v1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"tasks": [
            {"name": "clone", "taskRef": {"name": "t"}, "workspaces": [{"name": "src", "workspace": "src"}]},
            {"name": "unit", "taskRef": {"name": "t"}, "workspaces": [{"name": "src", "workspace": "src"}]}]}})
}

fn pvc(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
}

/// A task pod as Tekton makes it: labels, the merged annotations, the workspace volume.
fn task_pod(run: &str, task: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{run}-{task}-pod"), "namespace": NS, "annotations": annotations,
            "labels": {"tekton.dev/pipelineRun": run, "tekton.dev/pipelineRunUID": format!("uid-{run}"),
                "tekton.dev/pipelineTask": task, "tekton.dev/memberOf": "tasks",
                "app.kubernetes.io/managed-by": "tekton-pipelines"}},
        "spec": {"containers": [{"name": "step-s", "image": "busybox"}],
            "volumes": [{"name": "ws-d33ce", "persistentVolumeClaim": {"claimName": format!("{run}-src")}}]}})
}

async fn decide(w: &World, pod: &Value) -> Decision {
    let pod = TaskPod::from_value(pod).expect("a pod");
    w.decider.decide(&pod).await
}

fn reason(d: &Decision) -> Option<SkipReason> {
    d.skip_reason()
}

fn run_events(server: &FakeApiServer, run: &str, reason: &str) -> Vec<Value> {
    server.list("events", NS).into_iter().filter(|e| e["regarding"]["name"] == run && e["reason"] == reason).collect()
}

#[tokio::test]
async fn a_pipeline_ref_runs_first_pods_are_pinned_before_tekton_writes_the_spec() {
    let w = world(Duration::from_secs(2)).await;
    w.server.insert(pipeline("build", json!({"example.com/team": "ci"})));
    w.server.insert(pvc("build-0-src"));
    w.server.insert(pipeline_ref_run("build-0", json!({"name": "build"})));
    // The controller resolves the Pipeline itself: the placeholder comes before any status.
    eventually("placeholder for the unresolved run", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let name = placeholders(&w.server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(claims_of(&placeholders(&w.server, NS)[0]), ["build-0-src".to_string()].into());
    w.server.insert(placeholder_pod(NS, &name, "node-a"));
    for task in ["clone", "unit"] {
        let d = decide(&w, &task_pod("build-0", task, json!({"example.com/team": "ci"}))).await;
        match d {
            Decision::Pin(pin) => assert_eq!(pin.placeholder, name),
            Decision::Skip(s) => panic!("{task}: {s:?}"),
        }
    }
    w.controller.stop().await;
}

#[tokio::test]
async fn a_pipeline_not_in_the_cache_yet_is_read_directly() {
    let w = world(Duration::from_secs(2)).await;
    // Stop the Pipelines watch from seeing it: the webhook reads it itself.
    use support::apiserver::{Fault, Verb};
    for verb in [Verb::List, Verb::Watch] {
        w.server.faults().fail_next("pipelines", verb, 100_000, Fault::Internal);
    }
    w.server.drop_watches();
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("build-1-src"));
    w.server.insert(pipeline_ref_run("build-1", json!({"name": "build"})));
    let caches = w.controller.caches.clone();
    eventually("run cached", WAIT, || caches.run(NS, "tekton", "build-1").is_some()).await;
    assert!(caches.definition(NS, "tekton", "build").is_none());
    let d = tokio::time::timeout(Duration::from_secs(5), decide(&w, &task_pod("build-1", "clone", json!({})))).await;
    assert!(matches!(d, Ok(Decision::Pin(_))), "{d:?}");
    w.controller.stop().await;
}

#[tokio::test]
async fn a_pipeline_annotation_opt_out_is_honoured_before_the_spec_is_written() {
    let w = world(Duration::from_secs(2)).await;
    w.server.insert(pipeline("opted-out", json!({names::ANNOTATION_ENABLED: "false"})));
    w.server.insert(pvc("out-src"));
    w.server.insert(pipeline_ref_run("out", json!({"name": "opted-out"})));
    let caches = w.controller.caches.clone();
    eventually("run cached", WAIT, || caches.run(NS, "tekton", "out").is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(placeholders(&w.server, NS).is_empty(), "an opted-out run gets no placeholder");
    let d = decide(&w, &task_pod("out", "clone", json!({names::ANNOTATION_ENABLED: "false"}))).await;
    assert_eq!(reason(&d), Some(SkipReason::OptedOut));
    w.controller.stop().await;
}

#[tokio::test]
async fn a_resolver_runs_first_pod_waits_for_the_spec_within_the_budget() {
    let w = world(Duration::from_millis(1500)).await;
    w.server.insert(pvc("remote-src"));
    w.server.insert(pipeline_ref_run("remote", json!({"resolver": "git", "params": [{"name": "url", "value": "x"}]})));
    let caches = w.controller.caches.clone();
    eventually("run cached", WAIT, || caches.run(NS, "tekton", "remote").is_some()).await;
    assert!(placeholders(&w.server, NS).is_empty(), "what a resolver run runs is not known yet");
    // Tekton writes the resolved spec 300 ms after the pod arrives.
    let client = w.client.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = json!({"status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            "pipelineSpec": {"tasks": [{"name": "clone", "workspaces": [{"name": "src", "workspace": "src"}]}]}}});
        runs_api(&client, NS).patch_status("remote", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    });
    let started = std::time::Instant::now();
    let d = decide(&w, &task_pod("remote", "clone", json!({}))).await;
    writer.await.unwrap();
    match d {
        // Pinned once the spec came (the placeholder's pod never comes here: the budget
        // ran out waiting for it, and it pins all the same).
        Decision::Pin(pin) => assert!(!pin.placeholder.is_empty()),
        Decision::Skip(s) => panic!("{s:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A resolver run whose spec never comes: unpinned, with a warning, once the budget is spent.
    w.server.insert(pvc("never-src"));
    w.server.insert(pipeline_ref_run("never", json!({"resolver": "bundles"})));
    eventually("run cached", WAIT, || caches.run(NS, "tekton", "never").is_some()).await;
    let started = std::time::Instant::now();
    let d = decide(&w, &task_pod("never", "clone", json!({}))).await;
    assert_eq!(reason(&d), Some(SkipReason::Budget), "{d:?}");
    assert!(SkipReason::Budget.warns());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "{took:?}");
    w.controller.stop().await;
}

#[tokio::test]
async fn the_webhook_waits_for_the_placeholders_pod_and_pins_to_a_refused_one_never() {
    let w = world(Duration::from_secs(3)).await;
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("q-src"));
    w.server.insert(pipeline_ref_run("q", json!({"name": "build"})));
    eventually("placeholder", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let sts = placeholders(&w.server, NS).remove(0);
    let name = sts["metadata"]["name"].as_str().unwrap().to_string();

    // The placeholder's pod comes 200 ms into the decision: the pod is pinned then.
    let server = w.server.clone();
    let pod_name = name.clone();
    let maker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.insert(placeholder_pod(NS, &pod_name, "node-a"));
    });
    let started = std::time::Instant::now();
    let d = decide(&w, &task_pod("q", "clone", json!({}))).await;
    maker.await.unwrap();
    match d {
        Decision::Pin(pin) => assert!(pin.placeholder_ready, "pinned once its pod exists"),
        Decision::Skip(s) => panic!("{s:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200) && started.elapsed() < Duration::from_secs(2));

    // The pod is gone and the StatefulSet controller cannot recreate it: a ResourceQuota.
    w.server.delete("pods", NS, &format!("{name}-0"));
    w.server.insert(json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.18a3f"), "namespace": NS},
        "involvedObject": {"kind": "StatefulSet", "namespace": NS, "name": name, "uid": sts["metadata"]["uid"],
            "apiVersion": "apps/v1"},
        "reason": "FailedCreate", "type": "Warning", "count": 3,
        "source": {"component": "statefulset-controller"},
        "message": format!("create Pod {name}-0 in StatefulSet {name} failed error: pods \"{name}-0\" is forbidden: \
            exceeded quota: pods, requested: pods=1, used: pods=4, limited: pods=4"),
        "lastTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()}));
    let caches = w.controller.caches.clone();
    eventually("refusal seen", WAIT, || caches.failed_creates.len() == 1).await;
    let started = std::time::Instant::now();
    let d = decide(&w, &task_pod("q", "unit", json!({}))).await;
    assert_eq!(reason(&d), Some(SkipReason::PlaceholderRefused), "{d:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "a refusal is answered at once");
    match &d {
        Decision::Skip(s) => assert!(s.message.contains("exceeded quota"), "{}", s.message),
        Decision::Pin(_) => unreachable!(),
    }
    eventually("a Warning on the run names the reason", WAIT, || {
        run_events(&w.server, "q", "PlaceholderFailedCreate")
            .iter()
            .any(|e| e["type"] == "Warning" && e["note"].as_str().is_some_and(|n| n.contains("exceeded quota")))
    })
    .await;
    // It recovers: the pod exists again, and pods are pinned again.
    w.server.insert(placeholder_pod(NS, &name, "node-a"));
    eventually("pod cached", WAIT, || caches.placeholder_pods.len() == 1).await;
    assert!(matches!(decide(&w, &task_pod("q", "lint", json!({}))).await, Decision::Pin(_)));
    w.controller.stop().await;
}

#[tokio::test]
async fn an_unschedulable_placeholder_is_refused_past_the_grace_and_not_before() {
    let w = world(Duration::from_secs(2)).await;
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("u-src"));
    w.server.insert(pipeline_ref_run("u", json!({"name": "build"})));
    eventually("placeholder", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let name = placeholders(&w.server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    let unschedulable = |ago: i64| {
        let mut pod = placeholder_pod(NS, &name, "node-a");
        pod["spec"]["nodeName"] = Value::Null;
        let at =
            k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second() - ago).unwrap();
        pod["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "lastTransitionTime": at.to_string(),
            "message": "0/6 nodes are available: 6 node(s) didn't match Pod's node affinity/selector."}]});
        pod
    };
    // Just now: normal (its volume may not exist yet); pinned, no Warning.
    w.server.insert(unschedulable(1));
    let caches = w.controller.caches.clone();
    eventually("pod cached", WAIT, || caches.placeholder_pods.len() == 1).await;
    assert!(matches!(decide(&w, &task_pod("u", "clone", json!({}))).await, Decision::Pin(_)));
    // Unschedulable for 8 s: still inside the 10 s grace, still pinned, no Warning...
    w.server.insert(unschedulable(8));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(decide(&w, &task_pod("u", "lint", json!({}))).await, Decision::Pin(_)));
    assert!(run_events(&w.server, "u", "PlaceholderUnschedulable").is_empty(), "no Warning inside the grace");
    // ...and once the grace runs out (nothing changes in the cluster), the run hears why.
    eventually("a Warning on the run", WAIT, || !run_events(&w.server, "u", "PlaceholderUnschedulable").is_empty())
        .await;
    let d = decide(&w, &task_pod("u", "unit", json!({}))).await;
    assert_eq!(reason(&d), Some(SkipReason::PlaceholderRefused), "{d:?}");
    let events = run_events(&w.server, "u", "PlaceholderUnschedulable");
    assert!(events[0]["note"].as_str().unwrap().contains("didn't match"), "{events:?}");
    w.controller.stop().await;
}

#[tokio::test]
async fn tekton_own_assistant_showing_up_late_stands_the_add_on_down() {
    let w = world(Duration::from_secs(2)).await;
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("late-src"));
    w.server.insert(pipeline_ref_run("late", json!({"name": "build"})));
    eventually("our placeholder", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    // Tekton's own (as in tekton-own-affinity-assistant.jsonl): labelled with the run, owned by it.
    w.server.insert(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "affinity-assistant-2fe00e2c9e", "namespace": NS,
            "labels": {"app.kubernetes.io/component": "affinity-assistant",
                "app.kubernetes.io/instance": "affinity-assistant-2fe00e2c9e", "tekton.dev/pipelineRun": "late"},
            "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "name": "late",
                "uid": "uid-late", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/instance": "affinity-assistant-2fe00e2c9e"}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/instance": "affinity-assistant-2fe00e2c9e"}},
                "spec": {"containers": [{"name": "affinity-assistant", "image": "nop"}],
                    "volumes": [{"name": "workspace-0", "persistentVolumeClaim": {"claimName": "late-src"}}]}}}}));
    eventually("ours goes (no pod pinned to it)", WAIT, || placeholders(&w.server, NS).is_empty()).await;
    assert!(w.server.get("statefulsets", NS, "affinity-assistant-2fe00e2c9e").is_some(), "Tekton's is untouched");
    let d = decide(&w, &task_pod("late", "unit", json!({}))).await;
    assert_eq!(reason(&d), Some(SkipReason::RunNotManaged), "{d:?}");
    assert!(!run_events(&w.server, "late", "StoodDown").is_empty());
    w.controller.stop().await;
}

#[tokio::test]
async fn a_stood_down_runs_placeholder_stays_while_a_pod_pinned_to_it_runs() {
    let w = world(Duration::from_secs(2)).await;
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("busy-src"));
    w.server.insert(pipeline_ref_run("busy", json!({"name": "busy"})));
    w.server.insert(pipeline("busy", json!({})));
    eventually("our placeholder", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let name = placeholders(&w.server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    let mut pinned =
        task_pod("busy", "clone", json!({names::ANNOTATION_PINNED_TO: name, names::ANNOTATION_CLAIMS: "busy-src"}));
    pinned["metadata"]["labels"][names::LABEL_PINNED] = json!("true");
    pinned["status"] = json!({"phase": "Running"});
    w.server.insert(pinned);
    // A later pod of the run carries Tekton's own pin.
    let mut theirs =
        task_pod("busy", "unit", json!({"pipeline.tekton.dev/affinity-assistant": "affinity-assistant-x"}));
    theirs["status"] = json!({"phase": "Pending"});
    w.server.insert(theirs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(placeholders(&w.server, NS).len(), 1, "a pod pinned to it still runs there");
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(w.client.clone(), NS);
    api.patch_status(
        "busy-clone-pod",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    eventually("then it goes", WAIT, || placeholders(&w.server, NS).is_empty()).await;
    w.controller.stop().await;
}

#[tokio::test]
async fn tektons_own_placeholder_pod_is_never_reported_as_an_unpinned_task_pod() {
    let w = world(Duration::from_secs(2)).await;
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("own-src"));
    w.server.insert(pipeline_ref_run("own", json!({"name": "build"})));
    eventually("our placeholder", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    // Tekton's placeholder pod carries the run's label and mounts its claim, like a task pod.
    w.server.insert(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "affinity-assistant-2fe00e2c9e-0", "namespace": NS,
            "labels": {"app.kubernetes.io/component": "affinity-assistant", "tekton.dev/pipelineRun": "own"}},
        "spec": {"containers": [{"name": "affinity-assistant", "image": "nop"}],
            "volumes": [{"name": "workspace-0", "persistentVolumeClaim": {"claimName": "own-src"}}]},
        "status": {"phase": "Pending"}}));
    let caches = w.controller.caches.clone();
    eventually("pod cached", WAIT, || caches.task_pods.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(run_events(&w.server, "own", "TaskPodNotPinned").is_empty(), "{:?}", w.server.list("events", NS));
    w.controller.stop().await;
}

#[tokio::test]
async fn a_quota_with_no_room_for_the_placeholder_gets_nothing_pinned_and_the_run_hears_why() {
    let w = world(Duration::from_secs(2)).await;
    // kube-controller-manager's StatefulSet controller (stand-in), and a pod quota already full.
    w.server.run_statefulset_controller();
    w.server.insert(json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods", "namespace": NS},
        "spec": {"hard": {"pods": "1"}}}));
    w.server.insert(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "someone-else", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": {"phase": "Running"}}));
    w.server.insert(pipeline("build", json!({})));
    w.server.insert(pvc("quota-src"));
    w.server.insert(pipeline_ref_run("quota", json!({"name": "build"})));
    eventually("the placeholder's StatefulSet", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let caches = w.controller.caches.clone();
    eventually("the refusal seen", WAIT, || caches.failed_creates.len() == 1).await;
    let d = decide(&w, &task_pod("quota", "clone", json!({}))).await;
    assert_eq!(reason(&d), Some(SkipReason::PlaceholderRefused), "{d:?}");
    eventually("a Warning on the run", WAIT, || {
        run_events(&w.server, "quota", "PlaceholderFailedCreate")
            .iter()
            .any(|e| e["note"].as_str().is_some_and(|n| n.contains("exceeded quota")))
    })
    .await;
    // Room is made: the StatefulSet controller creates the pod on its next try, pods are pinned again.
    w.server.delete("pods", NS, "someone-else");
    eventually("the placeholder's pod", Duration::from_secs(30), || caches.placeholder_pods.len() == 1).await;
    assert!(matches!(decide(&w, &task_pod("quota", "unit", json!({}))).await, Decision::Pin(_)));
    w.controller.stop().await;
}

/// An Argo Workflow whose `use` template names its claim by an input parameter, as the user
/// creates it (Argo has written no status yet).
fn parameter_workflow(name: &str) -> Value {
    json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "creationTimestamp": "2026-11-29T14:04:19Z"},
        "spec": {"entrypoint": "main", "templates": [
            {"name": "main", "steps": [[
                {"name": "a", "template": "use", "arguments": {"parameters": [{"name": "pvc", "value": "shared"}]}},
                {"name": "b", "template": "use", "arguments": {"parameters": [{"name": "pvc", "value": "shared"}]}}]]},
            {"name": "use", "inputs": {"parameters": [{"name": "pvc"}]},
                "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}}],
                "container": {"image": "busybox", "volumeMounts": [{"name": "work", "mountPath": "/work"}]}}]}})
}

/// A pod as Argo builds it for step `step`: the parameter filled in.
fn argo_pod(workflow: &str, step: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{workflow}-use-{step}"), "namespace": NS,
            "labels": {"workflows.argoproj.io/workflow": workflow, "workflows.argoproj.io/completed": "false"},
            "annotations": {"workflows.argoproj.io/node-name": format!("{workflow}[0].{step}")},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": workflow,
                "uid": format!("uid-{workflow}"), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "main", "image": "busybox"}],
            "volumes": [{"name": "var-run-argo", "emptyDir": {}},
                {"name": "work", "persistentVolumeClaim": {"claimName": claim}}]}})
}

#[tokio::test]
async fn an_argo_claim_named_by_a_parameter_is_pinned_at_once_and_its_placeholder_follows_the_pod() {
    // A budget no test should reach: a wait for a placeholder only the pod names would show.
    let budget = Duration::from_secs(30);
    let w = world(budget).await;
    w.server.insert(pvc("shared"));
    w.server.insert(parameter_workflow("wf"));
    let caches = w.controller.caches.clone();
    eventually("the Workflow cached", WAIT, || caches.run(NS, "argo", "wf").is_some()).await;
    assert!(placeholders(&w.server, NS).is_empty(), "no claim is known before a pod names it");

    let a = argo_pod("wf", "a", "shared");
    let started = std::time::Instant::now();
    let pin = match decide(&w, &a).await {
        Decision::Pin(pin) => pin,
        Decision::Skip(s) => panic!("{s:?}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?} for a placeholder nobody can make yet",
        started.elapsed()
    );
    assert_eq!(pin.claims, vec!["shared".to_string()]);

    // The API server creates the pod as the webhook patched it; the controller learns the
    // claim from it and makes the placeholder, owned by the Workflow.
    let mut created = a.clone();
    json_patch::patch(&mut created, &pin.patch).expect("the pin applies");
    w.server.insert(created);
    eventually("the placeholder made from the pod", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let sts = placeholders(&w.server, NS)[0].clone();
    assert_eq!(sts["metadata"]["name"], json!(pin.placeholder));
    assert_eq!(claims_of(&sts), ["shared".to_string()].into());
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], json!("Workflow"));

    // The parallel pod goes to the same placeholder, once that placeholder's pod exists.
    w.server.insert(placeholder_pod(NS, &pin.placeholder, "node-a"));
    match decide(&w, &argo_pod("wf", "b", "shared")).await {
        Decision::Pin(b) => assert_eq!(b.placeholder, pin.placeholder),
        Decision::Skip(s) => panic!("{s:?}"),
    }
    w.controller.stop().await;
}

#[tokio::test]
async fn a_workflow_from_a_cluster_workflow_template_gets_its_placeholder_before_argo_stores_the_spec() {
    // Argo creates the first pods in the same pass that stores the template's spec, after
    // them: a webhook waiting for that status would wait its whole budget for every pod. The
    // ClusterWorkflowTemplate is watched and read like a namespaced one.
    let budget = Duration::from_secs(30);
    let w = world(budget).await;
    w.server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "ClusterWorkflowTemplate",
        "metadata": {"name": "ci-lib"},
        "spec": {"entrypoint": "main",
            "volumeClaimTemplates": [{"metadata": {"name": "workdir"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            "templates": [
                {"name": "main", "steps": [[{"name": "a", "template": "test"}, {"name": "b", "template": "test"}]]},
                {"name": "test", "container": {"image": "busybox", "volumeMounts": [{"name": "workdir", "mountPath": "/w"}]}}]}}));
    w.server.insert(pvc("wf-workdir"));
    w.server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "wf", "namespace": NS, "uid": "uid-wf", "creationTimestamp": "2026-11-29T14:04:19Z"},
        "spec": {"workflowTemplateRef": {"name": "ci-lib", "clusterScope": true}}}));
    eventually("the placeholder, before any status", WAIT, || placeholders(&w.server, NS).len() == 1).await;
    let sts = placeholders(&w.server, NS)[0].clone();
    assert_eq!(claims_of(&sts), ["wf-workdir".to_string()].into());
    let name = sts["metadata"]["name"].as_str().unwrap().to_string();
    w.server.insert(placeholder_pod(NS, &name, "node-a"));
    let started = std::time::Instant::now();
    for step in ["a", "b"] {
        match decide(&w, &argo_pod("wf", step, "wf-workdir")).await {
            Decision::Pin(pin) => assert_eq!(pin.placeholder, name),
            Decision::Skip(s) => panic!("{step}: {s:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    w.controller.stop().await;
}
