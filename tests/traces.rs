//! Replays of the real Tekton traces (`tests/fixtures/tekton/traces`) against the add-on as
//! it ships, on the in-memory API server with scheduler, provisioner, kubelet and
//! StatefulSet-controller stand-ins (`support/replay.rs`, `support/scheduler.rs`).
//!
//! One test per trace and mode: `ordered` (resourceVersion order, gaps x0.1 capped at 50 ms)
//! and `shuffled` (the same, events of different objects recorded within 10 ms of each other
//! reordered, seeded). Each prints its figures (`cargo test --test traces -- --nocapture`) and
//! asserts: every managed task pod pinned, no claim's task pods on two nodes, no pod stranded,
//! no placeholder left once its runs ended, every pinned pod with exactly one added term.
//! `cargo test --test traces trace_summary -- --ignored --nocapture` prints the table of all.
mod support;

use serde_json::{Value, json};
use support::admission::{pod_create_namespace, selected};
use support::replay::{self, Options, Outcome};
use support::scheduler::{self, Snapshot};

const SHUFFLE_SEED: u64 = 20_261_129;

async fn run(trace: &str, options: Options) -> Outcome {
    let outcome = replay::replay(trace, &options).await;
    println!("{}", outcome.report());
    outcome
}

fn assert_clean(outcome: &Outcome) {
    let failures = outcome.check();
    assert!(failures.is_empty(), "{}: {}", outcome.summary(), failures.join("\n"));
}

fn ordered() -> Options {
    Options::default()
}

fn shuffled() -> Options {
    Options { shuffle: Some(SHUFFLE_SEED), ..Options::default() }
}

fn with_flags(o: Options) -> Options {
    Options { tekton_coschedule: Some("workspaces".into()), ..o }
}

macro_rules! trace_tests {
    ($($name:ident: $trace:expr, $options:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            assert_clean(&run($trace, $options).await);
        }
    )*};
}

trace_tests! {
    pipelineref_parallel_ordered: "pipelineref-parallel.jsonl", ordered();
    pipelineref_parallel_shuffled: "pipelineref-parallel.jsonl", shuffled();
    inline_two_templates_ordered: "inline-two-templates.jsonl", ordered();
    inline_two_templates_shuffled: "inline-two-templates.jsonl", shuffled();
    shared_cache_plus_template_ordered: "shared-cache-plus-template.jsonl", ordered();
    shared_cache_plus_template_shuffled: "shared-cache-plus-template.jsonl", shuffled();
    cancel_ordered: "cancel.jsonl", ordered();
    cancel_shuffled: "cancel.jsonl", shuffled();
    cancel_run_finally_ordered: "cancel-run-finally.jsonl", ordered();
    cancel_run_finally_shuffled: "cancel-run-finally.jsonl", shuffled();
    retry_ordered: "retry.jsonl", ordered();
    retry_shuffled: "retry.jsonl", shuffled();
    pod_template_and_opt_out_ordered: "pod-template-and-opt-out.jsonl", ordered();
    pod_template_and_opt_out_shuffled: "pod-template-and-opt-out.jsonl", shuffled();
    // Tekton's own assistant on, and the add-on told so (Tekton's feature-flags readable) ...
    tekton_own_assistant_flags_ordered: "tekton-own-affinity-assistant.jsonl", with_flags(ordered());
    tekton_own_assistant_flags_shuffled: "tekton-own-affinity-assistant.jsonl", with_flags(shuffled());
    // ... and not: Tekton's StatefulSet shows up after the add-on has seen the run.
    tekton_own_assistant_unknown_ordered: "tekton-own-affinity-assistant.jsonl", ordered();
    tekton_own_assistant_unknown_shuffled: "tekton-own-affinity-assistant.jsonl", shuffled();
}

/// Every trace in both modes, one after the other, as a table (no assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints the figures of every replay; run with --ignored --nocapture"]
async fn trace_summary() {
    let mut rows = Vec::new();
    let (mut first, mut later, mut first_waited) = (Vec::new(), Vec::new(), 0usize);
    for trace in [
        "pipelineref-parallel.jsonl",
        "inline-two-templates.jsonl",
        "shared-cache-plus-template.jsonl",
        "cancel.jsonl",
        "cancel-run-finally.jsonl",
        "retry.jsonl",
        "pod-template-and-opt-out.jsonl",
        "tekton-own-affinity-assistant.jsonl",
    ] {
        let mut modes = vec![ordered(), shuffled()];
        if trace.starts_with("tekton-own") {
            modes.extend([with_flags(ordered()), with_flags(shuffled())]);
        }
        for options in modes {
            let outcome = replay::replay(trace, &options).await;
            let (f, l) = outcome.latencies();
            first.extend(f);
            later.extend(l);
            first_waited += outcome.managed().filter(|p| p.first_wave && p.waited).count();
            let failures = outcome.check();
            rows.push(format!(
                "{}\n    -> {}",
                outcome.summary(),
                if failures.is_empty() { "ok".into() } else { failures.join("; ") }
            ));
        }
    }
    println!("\n{}", rows.join("\n"));
    first.sort();
    later.sort();
    let pct = |v: &[std::time::Duration], q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied();
    println!(
        "\nadmission of managed pods (in-process, create through the webhook):\n  first wave: {} pods, p50 {:?}, p99 {:?}, {} decided without any wait\n  later:      {} pods, p50 {:?}, p99 {:?}",
        first.len(),
        pct(&first, 0.5),
        pct(&first, 0.99),
        first.len() - first_waited,
        later.len(),
        pct(&later, 0.5),
        pct(&later, 0.99)
    );
}

// ---------------------------------------------------------------------------------------------
// The harness itself.

#[test]
fn only_pod_creates_are_admitted() {
    use hyper::Method;
    assert_eq!(pod_create_namespace(&Method::POST, "/api/v1/namespaces/ci/pods").as_deref(), Some("ci"));
    assert_eq!(pod_create_namespace(&Method::PATCH, "/api/v1/namespaces/ci/pods"), None);
    assert_eq!(pod_create_namespace(&Method::POST, "/api/v1/namespaces/ci/pods/p/eviction"), None);
    assert_eq!(pod_create_namespace(&Method::POST, "/api/v1/namespaces/ci/persistentvolumeclaims"), None);
}

#[test]
fn the_shipped_object_selector_takes_task_pods_not_placeholders() {
    let server = support::apiserver::FakeApiServer::new();
    support::admission::install_webhook_configuration(&server, "affinity-assistant");
    let configurations = server.list("mutatingwebhookconfigurations", "");
    let pod = |labels: Value| json!({"metadata": {"labels": labels}});
    let calls = |ns: &str, labels: Value| selected(&configurations, ns, &json!({}), &pod(labels)).len();
    assert_eq!(calls("ci", json!({"tekton.dev/pipelineRun": "r"})), 1);
    assert_eq!(calls("ci", json!({"tekton.dev/pipelineRun": "r", "affinity-assistant.dev/placeholder": "x"})), 0);
    assert_eq!(calls("ci", json!({"app": "x"})), 0);
    // The namespaceSelector: never kube-system or the add-on's own namespace.
    assert_eq!(calls("kube-system", json!({"tekton.dev/pipelineRun": "r"})), 0);
    assert_eq!(calls("affinity-assistant", json!({"tekton.dev/pipelineRun": "r"})), 0);
    let off = json!({"affinity-assistant.dev/enabled": "false"});
    assert!(selected(&configurations, "ci", &off, &pod(json!({"tekton.dev/pipelineRun": "r"}))).is_empty());
}

#[test]
fn label_selectors_are_read_as_kube_apiserver_reads_them() {
    use support::admission::label_selector_matches as m;
    let labels = json!({"a": "1", "b": "2"});
    assert!(m(&Value::Null, &labels));
    assert!(m(&json!({}), &labels));
    assert!(m(&json!({"matchLabels": {"a": "1"}}), &labels));
    assert!(!m(&json!({"matchLabels": {"a": "2"}}), &labels));
    let e = |op: &str, key: &str, values: Value| json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]});
    assert!(m(&e("In", "a", json!(["0", "1"])), &labels));
    assert!(!m(&e("In", "c", json!(["1"])), &labels));
    assert!(m(&e("NotIn", "c", json!(["1"])), &labels), "NotIn selects a missing label");
    assert!(!m(&e("NotIn", "a", json!(["1"])), &labels));
    assert!(m(&e("Exists", "b", Value::Null), &labels));
    assert!(m(&e("DoesNotExist", "c", Value::Null), &labels));
    assert!(!m(&e("Gt", "a", json!(["0"])), &labels), "an unknown operator selects nothing");
}

#[test]
fn traces_load_in_resource_version_order() {
    for trace in ["pipelineref-parallel.jsonl", "tekton-own-affinity-assistant.jsonl"] {
        let events = replay::load(trace);
        assert!(events.windows(2).all(|w| w[0].rv < w[1].rv), "{trace}");
    }
    // The PVC of tekton-own-affinity-assistant was recorded after Tekton's StatefulSet but
    // written before it.
    let events = replay::load("tekton-own-affinity-assistant.jsonl");
    let pos = |kind: &str| events.iter().position(|e| e.kind == kind && e.change == "ADDED").unwrap();
    assert!(pos("PersistentVolumeClaim") < pos("StatefulSet"));
}

#[test]
fn pipelines_are_rebuilt_with_the_annotations_tekton_merged() {
    let p = replay::pipelines(&replay::load("pod-template-and-opt-out.jsonl"));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["metadata"]["name"], "opted-out");
    assert_eq!(p[0]["metadata"]["annotations"]["affinity-assistant.dev/enabled"], "false");
    assert!(p[0]["spec"]["tasks"].as_array().is_some_and(|t| t.len() == 2));
    let p = replay::pipelines(&replay::load("pipelineref-parallel.jsonl"));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["metadata"]["name"], "build");
    assert_eq!(p[0]["metadata"]["annotations"]["example.com/team"], "ci");
    assert!(p[0]["spec"]["finally"].is_array());
    assert!(replay::pipelines(&replay::load("inline-two-templates.jsonl")).is_empty());
}

#[test]
fn shuffling_swaps_only_close_events_of_different_objects() {
    let events = replay::load("pipelineref-parallel.jsonl");
    let shuffled = replay::shuffle(&events, 1, 0.010);
    assert_eq!(shuffled.len(), events.len());
    assert_eq!(
        shuffled.iter().map(|e| e.rv).collect::<Vec<_>>(),
        replay::shuffle(&events, 1, 0.010).iter().map(|e| e.rv).collect::<Vec<_>>(),
        "seeded"
    );
    assert_ne!(
        shuffled.iter().map(|e| e.rv).collect::<Vec<_>>(),
        events.iter().map(|e| e.rv).collect::<Vec<_>>(),
        "something moved"
    );
    for (i, a) in shuffled.iter().enumerate() {
        for b in &shuffled[i + 1..] {
            if a.rv > b.rv {
                assert!((a.t - b.t).abs() <= 0.010, "{} {} / {} {}", a.kind, a.name(), b.kind, b.name());
                assert!(!(a.kind == b.kind && a.name() == b.name()), "per-object order kept: {}", a.name());
            }
        }
    }
}

fn node(name: &str, extra: Value) -> Value {
    let mut n = scheduler::nodes().into_iter().find(|n| n["metadata"]["name"] == name).unwrap();
    json_patch::merge(&mut n, &extra);
    n
}

fn pod(name: &str, labels: Value, spec: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ci", "uid": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Pending"}});
    json_patch::merge(&mut p["spec"], &spec);
    p
}

fn bound(mut p: Value, node: &str) -> Value {
    p["spec"]["nodeName"] = node.into();
    p["status"]["phase"] = "Running".into();
    p
}

fn snapshot(pods: Vec<Value>) -> Snapshot {
    Snapshot { nodes: scheduler::nodes(), pods, ..Snapshot::default() }
}

fn feasible(p: &Value, snap: &Snapshot) -> Vec<String> {
    snap.nodes
        .iter()
        .filter(|n| scheduler::filter(p, n, snap).is_none())
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_scheduler_honours_node_selectors_affinity_taints_and_cordons() {
    let mut snap = snapshot(vec![]);
    let zone_b = pod("p", json!({}), json!({"nodeSelector": {"topology.kubernetes.io/zone": "zone-b"}}));
    assert_eq!(feasible(&zone_b, &snap), ["node-b", "node-d", "node-f"]);
    let affinity = |op: &str, values: Value| {
        pod(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": op, "values": values}]}]}}}}),
        )
    };
    assert_eq!(feasible(&affinity("In", json!(["node-a", "node-c"])), &snap), ["node-a", "node-c"]);
    assert_eq!(feasible(&affinity("NotIn", json!(["node-a"])), &snap).len(), 5);
    assert_eq!(feasible(&affinity("Exists", json!([])), &snap).len(), 6);
    assert!(feasible(&affinity("DoesNotExist", json!([])), &snap).is_empty());
    snap.nodes[0] = node("node-a", json!({"spec": {"taints": [{"key": "ci", "value": "x", "effect": "NoSchedule"}]}}));
    snap.nodes[1] = node("node-b", json!({"spec": {"taints": [{"key": "gpu", "effect": "NoExecute"}]}}));
    snap.nodes[2] = node("node-c", json!({"spec": {"unschedulable": true}}));
    snap.nodes[3] = node("node-d", json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}));
    let plain = pod("p", json!({}), json!({}));
    assert_eq!(feasible(&plain, &snap), ["node-d", "node-e", "node-f"]);
    let tolerant = pod(
        "p",
        json!({}),
        json!({"tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Equal", "value": "", "effect": "NoExecute"}]}),
    );
    assert_eq!(feasible(&tolerant, &snap), ["node-a", "node-b", "node-d", "node-e", "node-f"]);
    let all = pod("p", json!({}), json!({"tolerations": [{"operator": "Exists"}]}));
    assert_eq!(feasible(&all, &snap).len(), 6, "an empty key with Exists tolerates every taint, the cordon too");
    let msg = scheduler::choose(&zone_b, &snapshot(vec![]), 1).map(|_| ()).err();
    assert_eq!(msg, None);
    let nowhere = affinity("In", json!(["node-z"]));
    let msg = scheduler::choose(&nowhere, &snap, 1).unwrap_err();
    assert!(
        msg.starts_with(
            "0/6 nodes are available: 5 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable"
        ),
        "{msg}"
    );
}

#[test]
fn required_pod_affinity_needs_one_pod_matching_every_term() {
    let term =
        |k: &str, v: &str| json!({"labelSelector": {"matchLabels": {k: v}}, "topologyKey": "kubernetes.io/hostname"});
    let pinned = |terms: Vec<Value>| {
        pod(
            "t",
            json!({}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}),
        )
    };
    let holder_x = bound(pod("x", json!({"placeholder": "x"}), json!({})), "node-c");
    let holder_y = bound(pod("y", json!({"placeholder": "y"}), json!({})), "node-c");
    let snap = snapshot(vec![holder_x.clone(), holder_y.clone()]);
    assert_eq!(feasible(&pinned(vec![term("placeholder", "x")]), &snap), ["node-c"]);
    // Two terms, satisfied by two pods on the same node: still Pending.
    assert!(feasible(&pinned(vec![term("placeholder", "x"), term("placeholder", "y")]), &snap).is_empty());
    // No pod matches: Pending ...
    assert!(feasible(&pinned(vec![term("placeholder", "z")]), &snap).is_empty());
    // ... unless the pod matches its own term (the first of a group goes anywhere).
    let own = pod(
        "t",
        json!({"placeholder": "z"}),
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("placeholder", "z")]}}}),
    );
    assert_eq!(feasible(&own, &snap).len(), 6);
    // A pod matching its own term once another matching pod exists: that pod's node only.
    let snap = snapshot(vec![holder_x, holder_y, bound(pod("z", json!({"placeholder": "z"}), json!({})), "node-f")]);
    assert_eq!(feasible(&own, &snap), ["node-f"]);
    // Terminating, finished and other namespaces' pods do not count.
    let mut gone = bound(pod("x", json!({"placeholder": "x"}), json!({})), "node-c");
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    let mut done = bound(pod("x2", json!({"placeholder": "x"}), json!({})), "node-d");
    done["status"]["phase"] = "Succeeded".into();
    let mut elsewhere = bound(pod("x3", json!({"placeholder": "x"}), json!({})), "node-e");
    elsewhere["metadata"]["namespace"] = "other".into();
    assert!(feasible(&pinned(vec![term("placeholder", "x")]), &snapshot(vec![gone, done, elsewhere])).is_empty());
}

#[test]
fn placeholders_spread_and_unpinned_pods_vary() {
    let anti = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchLabels": {"app.kubernetes.io/component": "placeholder"}}, "topologyKey": "kubernetes.io/hostname"}}]}}});
    let labels = json!({"app.kubernetes.io/component": "placeholder"});
    let mut pods = Vec::new();
    for i in 0..6 {
        let p = pod(&format!("ph-{i}"), labels.clone(), anti.clone());
        let n = scheduler::choose(&p, &snapshot(pods.clone()), 3).unwrap();
        pods.push(bound(p, &n));
    }
    let nodes: std::collections::BTreeSet<_> =
        pods.iter().map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes.len(), 6, "one placeholder per node");
    let chosen: std::collections::BTreeSet<String> = (0..20)
        .map(|seed| scheduler::choose(&pod("t", json!({}), json!({})), &snapshot(vec![]), seed).unwrap())
        .collect();
    assert!(chosen.len() > 1, "unpinned pods do not all go to one node: {chosen:?}");
}

#[test]
fn volumes_keep_pods_in_their_zone_and_missing_claims_keep_them_pending() {
    let user = pod("t", json!({}), json!({"volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "src"}}]}));
    let mut snap = snapshot(vec![]);
    let msg = scheduler::choose(&user, &snap, 1).unwrap_err();
    assert!(msg.contains("persistentvolumeclaim \"src\" not found"), "{msg}");
    snap.claims.insert(
        ("ci".into(), "src".into()),
        json!({"metadata": {"name": "src", "namespace": "ci"}, "spec": {"accessModes": ["ReadWriteOnce"]}}),
    );
    assert_eq!(feasible(&user, &snap).len(), 6, "WaitForFirstConsumer: unbound, any zone");
    snap.claims.insert(("ci".into(), "src".into()), json!({"metadata": {"name": "src", "namespace": "ci"},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1"}, "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}}));
    snap.volumes.insert(
        "pv-1".into(),
        json!({"metadata": {"name": "pv-1"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}]}]}}}}),
    );
    assert_eq!(feasible(&user, &snap), ["node-b", "node-d", "node-f"]);
    // The kubelet: a Running pod on another node holds the ReadWriteOnce volume.
    let holder = bound(
        pod("h", json!({}), json!({"volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "src"}}]})),
        "node-b",
    );
    snap.pods = vec![holder];
    let mut waiting = bound(user.clone(), "node-d");
    waiting["status"]["phase"] = "Pending".into();
    assert!(scheduler::multi_attach(&waiting, &snap).is_some_and(|m| m.contains("Multi-Attach")));
    let mut same = bound(user, "node-b");
    same["status"]["phase"] = "Pending".into();
    assert_eq!(scheduler::multi_attach(&same, &snap), None);
}
