//! The controller against the in-memory API server: lifecycle, sharing, healing, moving,
//! toggles, faults, restarts and leader election (SPEC "Lifecycle", invariants I1, I3, I4, I6).

mod support;

use affinity_assistant::names;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::apiserver::{FakeApiServer, Fault, Verb};
use support::world::*;

const NS: &str = "ci";

/// Starts caches, watchers and a controller that is leader (unless told otherwise).
async fn start(client: Client, leader: bool) -> Controller {
    Controller::start(client, "test", leader)
}

fn owner_names(sts: &Value) -> BTreeSet<String> {
    sts["metadata"]["ownerReferences"]
        .as_array()
        .map(|v| v.iter().filter_map(|o| o["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// (placeholder claim sets) in the namespace, sorted.
fn claim_sets(server: &FakeApiServer, ns: &str) -> Vec<BTreeSet<String>> {
    let mut v: Vec<_> = placeholders(server, ns).iter().map(claims_of).collect();
    v.sort();
    v
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn run_active_gets_a_placeholder_which_goes_when_the_run_ends() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    create_pvc(&client, NS, "rwx", "ReadWriteMany").await;
    create_run(&client, NS, "r1", &["src", "rwx"], json!({})).await;
    eventually("placeholder for src", WAIT, || claim_sets(&server, NS) == vec![set(&["src"])]).await;
    let sts = &placeholders(&server, NS)[0];
    assert_eq!(owner_names(sts), set(&["r1"]));
    assert_eq!(sts["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], false);
    for (outcome, run) in [("True", "r1")] {
        finish_run(&client, NS, run, outcome).await;
    }
    eventually("placeholder gone", WAIT, || placeholders(&server, NS).is_empty()).await;
    // A Normal Event told the run.
    let events = server.list("events", NS);
    assert!(events.iter().any(|e| e["reason"] == "PlaceholderCreated" && e["regarding"]["name"] == "r1"), "{events:?}");
    c.stop().await;
}

#[tokio::test]
async fn failed_cancelled_and_deleted_runs_release_their_placeholders() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    for (i, claim) in ["a", "b", "c"].iter().enumerate() {
        create_pvc(&client, NS, claim, "ReadWriteOnce").await;
        create_run(&client, NS, &format!("r{i}"), &[claim], json!({})).await;
    }
    eventually("three placeholders", WAIT, || placeholders(&server, NS).len() == 3).await;
    finish_run(&client, NS, "r0", "False").await; // failed or cancelled: Succeeded=False
    runs_api(&client, NS).delete("r1", &DeleteParams::default()).await.unwrap();
    eventually("only c's placeholder left", WAIT, || claim_sets(&server, NS) == vec![set(&["c"])]).await;
    c.stop().await;
}

#[tokio::test]
async fn concurrent_runs_share_one_placeholder_until_the_last_one_ends() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "shared", "ReadWriteOnce").await;
    create_run(&client, NS, "a", &["shared"], json!({})).await;
    create_run(&client, NS, "b", &["shared"], json!({})).await;
    eventually("one placeholder, two owners", WAIT, || {
        let p = placeholders(&server, NS);
        p.len() == 1 && owner_names(&p[0]) == set(&["a", "b"])
    })
    .await;
    finish_run(&client, NS, "a", "True").await;
    eventually("owner a dropped", WAIT, || {
        let p = placeholders(&server, NS);
        p.len() == 1 && owner_names(&p[0]) == set(&["b"])
    })
    .await;
    finish_run(&client, NS, "b", "True").await;
    eventually("placeholder gone", WAIT, || placeholders(&server, NS).is_empty()).await;
    c.stop().await;
}

fn pinned_pod(name: &str, placeholder: &str, claims: &str, run_uid: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
        "labels": {"tekton.dev/pipelineRun": "r", "tekton.dev/pipelineRunUID": run_uid, names::LABEL_PINNED: "true"},
        "annotations": {names::ANNOTATION_PINNED_TO: placeholder, names::ANNOTATION_CLAIMS: claims}},
        "spec": {"containers": [{"name": "step", "image": "busybox"}], "nodeName": "n1"},
        "status": {"phase": phase}})
}

#[tokio::test]
async fn a_pinned_pod_keeps_its_placeholder_after_its_run_is_deleted() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    let uid = create_run(&client, NS, "r", &["src"], json!({})).await;
    eventually("placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    let name = placeholders(&server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    server.insert(pinned_pod("r-build-pod", &name, "src", &uid, "Running"));
    // Deleting the run orphaning its pods (the placeholder's only owner goes too).
    runs_api(&client, NS)
        .delete(
            "r",
            &DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Orphan), ..Default::default() },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // I4: the placeholder is there (kept, or re-created from the pod's annotations after GC).
    eventually("placeholder kept for the running pod", WAIT, || claim_sets(&server, NS) == vec![set(&["src"])]).await;
    let p: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    p.patch_status("r-build-pod", &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})))
        .await
        .unwrap();
    eventually("placeholder gone once the pod finished", WAIT, || placeholders(&server, NS).is_empty()).await;
    c.stop().await;
}

#[tokio::test]
async fn a_placeholder_deleted_by_hand_is_recreated_and_foreign_objects_are_untouched() {
    let server = FakeApiServer::new();
    let client = server.client();
    // Not ours: a StatefulSet without our labels, and Tekton's own placeholder.
    server.insert(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "db"}}}}}));
    server.insert(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "affinity-assistant-1", "namespace": NS,
        "labels": {"app.kubernetes.io/component": "affinity-assistant"}},
        "spec": {"selector": {"matchLabels": {"x": "y"}}, "template": {"metadata": {"labels": {"x": "y"}}}}}));
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    create_run(&client, NS, "r", &["src"], json!({})).await;
    eventually("placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    let name = placeholders(&server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually("recreated", WAIT, || server.get("statefulsets", NS, &name).is_some()).await;
    assert!(server.get("statefulsets", NS, "db").is_some());
    assert!(server.get("statefulsets", NS, "affinity-assistant-1").is_some());
    // I6: nothing of the user's was written.
    for r in server.requests() {
        let write = matches!(r.verb, Verb::Create | Verb::Update | Verb::Patch | Verb::Delete);
        if write && matches!(r.resource.as_str(), "persistentvolumeclaims" | "pipelineruns" | "taskruns") {
            // The test itself created and patched these: only requests from the controller count,
            // and the controller never writes them: it has no code path that does. Check by name.
            assert!(r.name.as_deref().is_none_or(|n| ["src", "r"].contains(&n)), "{r:?}");
        }
        if write && r.resource == "statefulsets" {
            assert!(!["db", "affinity-assistant-1"].contains(&r.name.as_deref().unwrap_or("")), "{r:?}");
        }
    }
    c.stop().await;
}

async fn set_config(client: &Client, data: Value) {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), OWN);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "feature-flags", "namespace": OWN}, "data": data});
    api.patch("feature-flags", &PatchParams::apply("test").force(), &Patch::Apply(&cm)).await.unwrap();
}

#[tokio::test]
async fn disabled_stops_new_placeholders_keeps_existing_and_invalid_values_keep_the_last_good_one() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    for claim in ["a", "b"] {
        create_pvc(&client, NS, claim, "ReadWriteOnce").await;
    }
    create_run(&client, NS, "old", &["a"], json!({})).await;
    eventually("placeholder for a", WAIT, || claim_sets(&server, NS) == vec![set(&["a"])]).await;
    set_config(&client, json!({"enabled": "false", "mode": "pipelineruns"})).await;
    eventually("config applied", WAIT, || !c.caches.config().enabled).await;
    create_run(&client, NS, "new", &["b"], json!({})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(claim_sets(&server, NS), vec![set(&["a"])], "no new placeholder, the old one stays");

    // An invalid value: the last good one stays and a Warning Event is recorded on the ConfigMap.
    set_config(&client, json!({"enabled": "maybe", "mode": "pipelineruns"})).await;
    eventually("InvalidConfig event", WAIT, || {
        server
            .list("events", OWN)
            .iter()
            .any(|e| e["reason"] == "InvalidConfig" && e["note"].as_str().unwrap_or("").contains("maybe"))
    })
    .await;
    assert!(!c.caches.config().enabled);

    set_config(&client, json!({"enabled": "true"})).await;
    eventually("b gets its placeholder once enabled", WAIT, || claim_sets(&server, NS).len() == 2).await;
    c.stop().await;
}

#[tokio::test]
async fn opt_out_mode_annotation_and_unresolved_runs() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    for claim in ["a", "b", "x", "y"] {
        create_pvc(&client, NS, claim, "ReadWriteOnce").await;
    }
    create_run(&client, NS, "out", &["a"], json!({names::ANNOTATION_ENABLED: "false"})).await;
    create_run(&client, NS, "per-run", &["x", "y"], json!({names::ANNOTATION_MODE: "pipelineruns"})).await;
    // A pipelineRef run Tekton has not resolved yet: no status.pipelineSpec.
    let api = runs_api(&client, NS);
    let obj: kube::api::DynamicObject =
        serde_json::from_value(json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "waiting"}, "spec": {"pipelineRef": {"name": "p"},
        "workspaces": [{"name": "w", "persistentVolumeClaim": {"claimName": "b"}}]}}))
        .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    eventually("per-run placeholder", WAIT, || claim_sets(&server, NS) == vec![set(&["x", "y"])]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(claim_sets(&server, NS), vec![set(&["x", "y"])], "opted-out and unresolved runs get nothing");
    // Tekton resolves it: now it is active.
    let status = json!({"status": {"pipelineSpec": {"tasks": [{"name": "t", "workspaces": [{"name": "w"}]}]}}});
    api.patch_status("waiting", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    eventually("resolved run's placeholder", WAIT, || claim_sets(&server, NS).len() == 2).await;
    c.stop().await;
}

#[tokio::test]
async fn a_namespace_labelled_opted_out_gets_no_new_placeholders_and_keeps_existing_ones() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "a", "ReadWriteOnce").await;
    create_pvc(&client, NS, "b", "ReadWriteOnce").await;
    create_run(&client, NS, "before", &["a"], json!({})).await;
    eventually("placeholder before the label", WAIT, || claim_sets(&server, NS) == vec![set(&["a"])]).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {names::LABEL_NAMESPACE_ENABLED: "false"}}});
    namespaces.patch(NS, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    eventually("the label seen", WAIT, || c.caches.opted_out.get("", NS).is_some()).await;
    create_run(&client, NS, "after", &["b"], json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(claim_sets(&server, NS), vec![set(&["a"])], "no new placeholder; the existing one stays for its run");
    // Label removed: back to normal.
    let unlabel = json!({"metadata": {"labels": {names::LABEL_NAMESPACE_ENABLED: null}}});
    namespaces.patch(NS, &PatchParams::default(), &Patch::Merge(&unlabel)).await.unwrap();
    eventually("placeholder after the label is removed", WAIT, || claim_sets(&server, NS).len() == 2).await;
    c.stop().await;
}

#[tokio::test]
async fn a_cordoned_nodes_placeholder_moves_once_after_the_grace_period() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(node("n1", false));
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    create_run(&client, NS, "r", &["src"], json!({})).await;
    eventually("placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    let name = placeholders(&server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    server.insert(placeholder_pod(NS, &name, "n1"));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes.patch("n1", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"unschedulable": true}}))).await.unwrap();
    let pod_name = format!("{name}-0");
    // Not before the grace period...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.get("pods", NS, &pod_name).is_some(), "moved before the grace period");
    // ...then once.
    eventually("placeholder pod deleted", WAIT, || server.get("pods", NS, &pod_name).is_none()).await;
    let deletes = || server.requests().iter().filter(|r| r.verb == Verb::Delete && r.resource == "pods").count();
    assert_eq!(deletes(), 1);
    // The StatefulSet controller would recreate it; if it lands on the still-cordoned node
    // again, the next move waits for another grace period.
    server.insert(placeholder_pod(NS, &name, "n1"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(deletes(), 1, "at most one move per grace period");
    let events = server.list("events", NS);
    assert!(events.iter().any(|e| e["reason"] == "PlaceholderMoved"), "{events:?}");
    c.stop().await;
}

#[tokio::test]
async fn a_placeholder_whose_volume_is_pinned_to_its_node_is_not_moved() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(node("n1", true));
    server.insert(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-local"},
        "spec": {"local": {"path": "/mnt/disk"}, "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}));
    server.insert(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "local", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-local"},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}}),
    );
    let c = start(client.clone(), true).await;
    create_run(&client, NS, "r", &["local"], json!({})).await;
    eventually("placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    let name = placeholders(&server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    server.insert(placeholder_pod(NS, &name, "n1"));
    eventually("PlaceholderNotMoved event", WAIT, || {
        server.list("events", NS).iter().any(|e| e["reason"] == "PlaceholderNotMoved")
    })
    .await;
    assert!(server.get("pods", NS, &format!("{name}-0")).is_some());
    c.stop().await;
}

/// Seeded pseudo-random numbers, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// What the controller must converge to for runs r0..r{n} where run i uses claim `c{i % k}`:
/// one placeholder per distinct claim of the active runs.
fn expected(active: &[usize], k: usize) -> Vec<BTreeSet<String>> {
    let mut v: Vec<BTreeSet<String>> =
        active.iter().map(|i| format!("c{}", i % k)).collect::<BTreeSet<_>>().into_iter().map(|c| [c].into()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_random_faults_and_dropped_watches() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), true).await;
    let k = 7;
    for i in 0..k {
        create_pvc(&client, NS, &format!("c{i}"), "ReadWriteOnce").await;
    }
    let mut rng = Rng(42);
    let mut active = Vec::new();
    let faults = [Fault::Conflict, Fault::TooManyRequests, Fault::Internal];
    for i in 0..30 {
        // Faults on every kind the controller reads or writes, including timeouts.
        for resource in ["statefulsets", "pods", "events", "pipelineruns", "persistentvolumeclaims"] {
            if rng.next(3) == 0 {
                // The test's own writes (runs, claims) must get through; the controller only
                // reads those kinds.
                let verbs: &[Verb] = if matches!(resource, "pipelineruns" | "persistentvolumeclaims") {
                    &[Verb::Watch, Verb::List]
                } else {
                    &[Verb::Create, Verb::Patch, Verb::Delete, Verb::Watch, Verb::List]
                };
                let verb = verbs[rng.next(verbs.len() as u64) as usize];
                let fault = if rng.next(6) == 0 {
                    Fault::Timeout(Duration::from_millis(200))
                } else {
                    faults[rng.next(3) as usize]
                };
                server.faults().fail_next(resource, verb, 1 + rng.next(2) as usize, fault);
            }
        }
        if rng.next(5) == 0 {
            server.drop_watches();
        }
        create_run(&client, NS, &format!("r{i}"), &[&format!("c{}", i % k)], json!({})).await;
        active.push(i);
        if rng.next(3) == 0 && !active.is_empty() {
            let j = active.remove(rng.next(active.len() as u64) as usize);
            finish_run(&client, NS, &format!("r{j}"), "True").await;
        }
    }
    server.faults().clear();
    let want = expected(&active, k);
    eventually("converged to the desired placeholders", Duration::from_secs(30), || claim_sets(&server, NS) == want)
        .await;
    // Owners are exactly the active runs using each claim.
    for sts in placeholders(&server, NS) {
        let claim = claims_of(&sts).into_iter().next().unwrap();
        let want: BTreeSet<String> =
            active.iter().filter(|i| format!("c{}", *i % k) == claim).map(|i| format!("r{i}")).collect();
        eventually("owners converge", Duration::from_secs(10), || {
            let s = server.get("statefulsets", NS, sts["metadata"]["name"].as_str().unwrap()).unwrap();
            owner_names(&s) == want
        })
        .await;
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_at_random_points_in_a_stream_of_200_runs_converge() {
    let server = FakeApiServer::new();
    let client = server.client();
    let k = 25;
    for i in 0..k {
        create_pvc(&client, NS, &format!("c{i}"), "ReadWriteOnce").await;
    }
    let mut rng = Rng(7);
    let mut c = start(client.clone(), true).await;
    let mut active = Vec::new();
    for i in 0..200 {
        create_run(&client, NS, &format!("r{i}"), &[&format!("c{}", i % k)], json!({})).await;
        active.push(i);
        if rng.next(2) == 0 {
            let j = active.remove(rng.next(active.len() as u64) as usize);
            finish_run(&client, NS, &format!("r{j}"), "True").await;
        }
        if rng.next(40) == 0 {
            c.stop().await;
            c = start(client.clone(), true).await;
        }
    }
    c.stop().await;
    let c = start(client.clone(), true).await;
    let want = expected(&active, k);
    eventually("converged after the last restart", Duration::from_secs(30), || claim_sets(&server, NS) == want).await;
    // No claim held twice, ever, in the end state (I1).
    let all: Vec<String> = placeholders(&server, NS).iter().flat_map(claims_of).collect();
    assert_eq!(all.len(), all.iter().collect::<BTreeSet<_>>().len());
    c.stop().await;
}

#[tokio::test]
async fn a_follower_does_not_write_and_takes_over_when_it_becomes_leader() {
    let server = FakeApiServer::new();
    let client = server.client();
    let c = start(client.clone(), false).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    create_run(&client, NS, "r", &["src"], json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(placeholders(&server, NS).is_empty(), "a follower writes nothing");
    c.leader.send(true).unwrap();
    eventually("the new leader creates the placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    c.leader.send(false).unwrap();
    finish_run(&client, NS, "r", "True").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(placeholders(&server, NS).len(), 1, "a controller that lost the lease stops writing");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_with_two_controllers() {
    use kube_lease_manager::LeaseManagerBuilder;
    let server = FakeApiServer::new();
    let client = server.client();
    let lease = |id: &str| {
        LeaseManagerBuilder::new(client.clone(), "affinity-assistant-leader")
            .with_namespace(OWN)
            .with_identity(id)
            .with_duration(2)
            .with_grace(1)
    };
    let (mut a_rx, a_task) = lease("a").build().await.unwrap().watch().await;
    let (mut b_rx, b_task) = lease("b").build().await.unwrap().watch().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (*a_rx.borrow_and_update(), *b_rx.borrow_and_update());
        if a != b {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no single leader emerged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_leads = *a_rx.borrow();
    // Stop the leader: the other takes over.
    let (leader_rx, leader_task, follower_rx) = if a_leads { (a_rx, a_task, b_rx) } else { (b_rx, b_task, a_rx) };
    drop(leader_rx);
    let _ = leader_task.await;
    let mut follower_rx = follower_rx;
    tokio::time::timeout(Duration::from_secs(15), async {
        while !*follower_rx.borrow_and_update() {
            follower_rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the follower took over");
    // And the lease says so, for the webhook's freshness check.
    let lease: k8s_openapi::api::coordination::v1::Lease = server.get_as(OWN, "affinity-assistant-leader").unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    assert!(affinity_assistant::cluster::lease_fresh(&lease, now));
    let _ = BTreeMap::<(), ()>::new();
}

/// Writes the add-on made to placeholders: (verb, namespace, name).
fn placeholder_writes(server: &FakeApiServer) -> Vec<(Verb, Option<String>, Option<String>)> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "statefulsets" && matches!(r.verb, Verb::Create | Verb::Delete | Verb::Patch))
        .map(|r| (r.verb, r.namespace, r.name))
        .collect()
}

#[tokio::test]
async fn a_restart_with_slow_and_reordered_lists_deletes_and_replaces_nothing() {
    let server = FakeApiServer::new();
    let client = server.client();
    let first = start(client.clone(), true).await;
    for (i, claim) in ["a", "b", "c"].iter().enumerate() {
        create_pvc(&client, NS, claim, "ReadWriteOnce").await;
        create_run(&client, NS, &format!("r{i}"), &[claim], json!({})).await;
    }
    eventually("three placeholders", WAIT, || placeholders(&server, NS).len() == 3).await;
    first.stop().await;
    server.clear_requests();
    // The restarted add-on sees its placeholders long before the runs, claims, pods, config.
    for resource in ["pipelineruns", "persistentvolumeclaims", "pods", "configmaps", "pipelines"] {
        server.faults().fail_next(resource, Verb::List, 1, Fault::Delay(Duration::from_millis(700)));
    }
    let second = start(client.clone(), true).await;
    let caches = second.caches.clone();
    eventually("placeholders listed", WAIT, || caches.placeholders.len() == 3).await;
    assert!(!caches.ready(), "not ready while runs are still being listed");
    eventually("ready", WAIT, || caches.ready()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(placeholder_writes(&server), vec![], "no placeholder deleted, replaced or changed");
    assert_eq!(placeholders(&server, NS).len(), 3);
    second.stop().await;
}

#[tokio::test]
async fn a_run_seen_before_the_config_gets_the_configured_mode() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "feature-flags", "namespace": OWN},
        "data": {"mode": "pipelineruns"}}),
    );
    for claim in ["x", "y"] {
        server.insert(
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": NS},
            "spec": {"accessModes": ["ReadWriteOnce"]}}),
        );
    }
    // A run using the two claims in two tasks: one placeholder in pipelineruns mode, two in
    // workspaces mode (the default, in force until the ConfigMap is read).
    let run = json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "r", "namespace": NS, "uid": "uid-r"},
        "spec": {"pipelineRef": {"name": "p"}, "workspaces": [
            {"name": "a", "persistentVolumeClaim": {"claimName": "x"}}, {"name": "b", "persistentVolumeClaim": {"claimName": "y"}}]},
        "status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}], "pipelineSpec": {"tasks": [
            {"name": "t1", "workspaces": [{"name": "a"}]}, {"name": "t2", "workspaces": [{"name": "b"}]}]}}});
    server.insert(run);
    server.faults().fail_next("configmaps", Verb::List, 1, Fault::Delay(Duration::from_millis(700)));
    let c = start(client.clone(), true).await;
    eventually("placeholder", WAIT, || !placeholders(&server, NS).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = placeholders(&server, NS);
    assert_eq!(all.len(), 1, "{:?}", all.iter().map(claims_of).collect::<Vec<_>>());
    assert_eq!(all[0]["metadata"]["annotations"][names::ANNOTATION_MODE], "pipelineruns");
    c.stop().await;
}

#[tokio::test]
async fn a_relist_in_one_of_three_watched_namespaces_deletes_nothing_anywhere() {
    let server = FakeApiServer::new();
    let client = server.client();
    let namespaces = ["team-a", "team-b", "team-c"];
    let c = Controller::start_watching(client.clone(), "test", true, None, &namespaces);
    for ns in namespaces {
        create_pvc(&client, ns, "src", "ReadWriteOnce").await;
        create_run(&client, ns, "r", &["src"], json!({})).await;
    }
    for ns in namespaces {
        eventually("placeholder", WAIT, || placeholders(&server, ns).len() == 1).await;
    }
    let caches = c.caches.clone();
    eventually("ready", WAIT, || caches.ready()).await;
    server.clear_requests();
    // Every watch is cut; history is gone, so resuming gets 410 Expired and each watcher
    // relists on its own, at its own pace (team-b's runs list slowly).
    server.set_history_limit(1);
    for i in 0..5 {
        create_pvc(&client, "elsewhere", &format!("noise-{i}"), "ReadWriteOnce").await;
    }
    server.faults().fail_next("pipelineruns", Verb::List, 1, Fault::Delay(Duration::from_millis(400)));
    server.drop_watches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for ns in namespaces {
        assert_eq!(placeholders(&server, ns).len(), 1, "{ns}");
        assert_eq!(caches.runs.in_namespace(ns).len(), 1, "{ns}'s run is still cached");
    }
    let deletes: Vec<_> = placeholder_writes(&server).into_iter().filter(|(v, ..)| *v == Verb::Delete).collect();
    assert_eq!(deletes, vec![], "nothing deleted anywhere");
    c.stop().await;
}

#[tokio::test]
async fn a_move_waits_until_the_pinned_pods_on_the_cordoned_node_finish() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(node("n1", false));
    let c = start(client.clone(), true).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    let uid = create_run(&client, NS, "r", &["src"], json!({})).await;
    eventually("placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    let name = placeholders(&server, NS)[0]["metadata"]["name"].as_str().unwrap().to_string();
    server.insert(placeholder_pod(NS, &name, "n1"));
    // A pinned task pod runs on n1 and holds the volume there.
    server.insert(pinned_pod("r-build-pod", &name, "src", &uid, "Running"));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes.patch("n1", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"unschedulable": true}}))).await.unwrap();
    let pod_name = format!("{name}-0");
    // Well past the grace period (300 ms in tests): it stays, and the runs hear why.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(server.get("pods", NS, &pod_name).is_some(), "moved while a pinned pod runs on the node");
    let events = server.list("events", NS);
    let waiting = events.iter().find(|e| e["reason"] == "PlaceholderMoveWaiting").expect("a waiting Event");
    assert_eq!(waiting["type"], "Normal", "a state that resolves itself is no Warning");
    assert!(waiting["note"].as_str().unwrap().contains("r-build-pod"), "{waiting}");
    // Once it finished, the placeholder moves.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    pods.patch_status(
        "r-build-pod",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    eventually("placeholder pod deleted", WAIT, || server.get("pods", NS, &pod_name).is_none()).await;
    c.stop().await;
}

#[tokio::test]
async fn what_the_controller_keeps_for_a_namespace_goes_with_it() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(node("n1", false));
    let c = start(client.clone(), true).await;
    let size = |kind: &str| c.ctx.memory_sizes().into_iter().find(|(k, _)| *k == kind).map(|(_, n)| n).unwrap();
    // A namespace whose reconciles fail for a while (its creates are refused with 500s): back-off.
    server.faults().fail_next("statefulsets", Verb::Create, 1, Fault::Internal);
    create_pvc(&client, "short-lived", "src", "ReadWriteOnce").await;
    create_run(&client, "short-lived", "r", &["src"], json!({})).await;
    eventually("back-off kept", WAIT, || size("backoff") == 1).await;
    eventually("placeholder", WAIT, || placeholders(&server, "short-lived").len() == 1).await;
    eventually("gauge share kept", WAIT, || size("gauges") == 1).await;
    // The namespace empties: its run finishes, its placeholder goes, nothing of it is kept.
    finish_run(&client, "short-lived", "r", "True").await;
    eventually("placeholder gone", WAIT, || placeholders(&server, "short-lived").is_empty()).await;
    eventually("nothing kept for it", WAIT, || size("backoff") == 0 && size("gauges") == 0).await;
    // A follower publishes no gauges.
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    create_run(&client, NS, "r", &["src"], json!({})).await;
    eventually("gauge share", WAIT, || size("gauges") == 1).await;
    c.leader.send(false).unwrap();
    eventually("follower keeps no gauges", WAIT, || size("gauges") == 0).await;
    c.stop().await;
}

#[tokio::test]
async fn an_engine_whose_crd_is_missing_does_not_hold_the_add_on_back_and_is_picked_up_once_installed() {
    let server = FakeApiServer::new();
    let client = server.client();
    // A Tekton-only cluster: Argo's CRDs are not installed.
    server.set_absent("workflows.argoproj.io", true);
    server.set_absent("workflowtemplates.argoproj.io", true);
    server.set_absent("clusterworkflowtemplates.argoproj.io", true);
    let c = start(client.clone(), true).await;
    let caches = c.caches.clone();
    eventually("ready without Argo", WAIT, || caches.ready()).await;
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    create_run(&client, NS, "r", &["src"], json!({})).await;
    eventually("Tekton's run served", WAIT, || placeholders(&server, NS).len() == 1).await;
    // Argo is installed later: its Workflows are served without a restart.
    server.set_absent("workflows.argoproj.io", false);
    server.set_absent("workflowtemplates.argoproj.io", false);
    server.set_absent("clusterworkflowtemplates.argoproj.io", false);
    create_pvc(&client, NS, "wf-work", "ReadWriteOnce").await;
    server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "wf", "namespace": NS, "uid": "uid-wf"},
        "spec": {"volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "wf-work"}}],
            "templates": [{"name": "build", "container": {"image": "go", "volumeMounts": [{"name": "work", "mountPath": "/w"}]}}]}}));
    eventually("the Workflow's placeholder", Duration::from_secs(60), || placeholders(&server, NS).len() == 2).await;
    let argo = placeholders(&server, NS).into_iter().find(|p| claims_of(p).contains("wf-work")).unwrap();
    assert_eq!(argo["metadata"]["ownerReferences"][0]["kind"], "Workflow");
    assert!(
        argo["metadata"]["labels"].as_object().unwrap().keys().all(|k| !k.starts_with("workflows.argoproj.io")),
        "never Argo's labels on a placeholder"
    );
    c.stop().await;
}
