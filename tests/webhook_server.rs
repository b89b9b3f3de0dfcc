//! The webhook over HTTPS on loopback: real AdmissionReviews in Tekton's pod shape, through a
//! TLS client that trusts only the served CA (issue "The mutating admission webhook", 1 and 3).

mod common;
mod webhook_support;

use affinity_assistant::core::{Decision, SkipReason};
use affinity_assistant::model::NodeInfo;
use affinity_assistant::names;
use affinity_assistant::pod::TaskPod;
use affinity_assistant::webhook::metrics::{error, ignored};
use affinity_assistant::webhook::{Decider, Outcome, PlanDecider};
use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use webhook_support::{Client, review, start, to_bytes};

/// A run `build-1` with two claims bound together by one task, and one more task.
fn world() -> (World, affinity_assistant::model::Run) {
    let r =
        run("build-1", &[("src", "source"), ("cache", "cache")], &[("build", &["src", "cache"]), ("lint", &["src"])]);
    (World::new(vec![r.clone()], rwo(&["source", "cache"])), r)
}

fn decider(w: &World, controller_alive: bool) -> PlanDecider {
    PlanDecider { plans: [(NS.to_string(), Arc::new(w.plan()))].into(), controller_alive }
}

/// The fixture's pod shape (`tekton-task-pod-shape.yaml`) for `run`'s task, mounting `claims`.
fn fixture_pod(r: &affinity_assistant::model::Run, task: &str, claims: &[&str]) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tekton/tekton-task-pod-shape.yaml");
    let text = std::fs::read_to_string(path).expect("fixture");
    let mut pod: Value = serde_saphyr::from_str(&text).expect("fixture YAML");
    let labels = &mut pod["metadata"]["labels"];
    labels["tekton.dev/pipelineRun"] = json!(r.name);
    labels["tekton.dev/pipelineRunUID"] = json!(r.uid);
    labels["tekton.dev/pipelineTask"] = json!(task);
    labels["tekton.dev/taskRun"] = json!(format!("{}-{task}", r.name));
    pod["metadata"]["name"] = json!(format!("{}-{task}-pod", r.name));
    pod["metadata"]["namespace"] = json!(NS);
    // The fixture shows the affinity Tekton's own assistant would inject; ours is off.
    pod["spec"].as_object_mut().unwrap().remove("affinity");
    let mut volumes = vec![json!({"name": "tekton-internal-workspace", "emptyDir": {}})];
    for (i, c) in claims.iter().enumerate() {
        volumes.push(json!({"name": format!("ws-{i:05x}"), "persistentVolumeClaim": {"claimName": c}}));
    }
    pod["spec"]["volumes"] = json!(volumes);
    pod["spec"]["containers"] =
        json!([{"name": "step-build", "image": "golang", "command": ["/tekton/bin/entrypoint"]}]);
    pod
}

async fn admit(client: &mut Client, body: &Value) -> Value {
    let r = client.post("/mutate/pods", &to_bytes(body)).await.expect("response");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_well_formed(&v);
    v
}

fn assert_well_formed(v: &Value) {
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
    assert_eq!(v["kind"], "AdmissionReview", "{v}");
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert!(v["response"]["uid"].is_string(), "{v}");
    if v["response"].get("patch").is_some() {
        assert_eq!(v["response"]["patchType"], "JSONPatch");
    }
}

fn warnings(v: &Value) -> Vec<String> {
    v["response"]["warnings"]
        .as_array()
        .map(|a| a.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn patch_of(v: &Value) -> Option<json_patch::Patch> {
    let b64 = v["response"]["patch"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 patch");
    Some(serde_json::from_slice(&bytes).expect("JSON Patch"))
}

/// Asserts the answer leaves the pod alone; returns its warnings.
fn assert_unchanged(v: &Value, uid: &str) -> Vec<String> {
    assert_eq!(v["response"]["uid"], uid, "{v}");
    assert!(v["response"].get("patch").is_none() && v["response"].get("patchType").is_none(), "{v}");
    warnings(v)
}

#[tokio::test]
async fn pinned_pod_gets_the_cores_patch_with_the_same_uid() {
    let (w, r) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let mut client = server.client().await;
    let pod = fixture_pod(&r, "build", &["source", "cache"]);
    let v = admit(&mut client, &review("705ab4f5-6393-11e8-b7cc-42010a800002", &pod, "CREATE")).await;
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(warnings(&v).is_empty());
    let patch = patch_of(&v).expect("a patch");

    // Exactly the core's decision for the pod as the webhook saw it (namespace from the request).
    let mut seen = pod.clone();
    seen["metadata"].as_object_mut().unwrap().remove("namespace");
    let mut task_pod = TaskPod::from_value(&seen).unwrap();
    task_pod.metadata.namespace = NS.into();
    let Decision::Pin(pin) = affinity_assistant::core::decide(&task_pod, &w.plan(), true) else { panic!("pin") };
    assert_eq!(patch, pin.patch);

    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("patch applies to the pod");
    let terms = patched["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .unwrap();
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(terms[0]["labelSelector"]["matchLabels"][names::LABEL_PLACEHOLDER], json!(pin.placeholder));
    assert_eq!(patched["metadata"]["labels"][names::LABEL_PINNED], "true");
    assert_eq!(patched["metadata"]["annotations"][names::ANNOTATION_PINNED_TO], json!(pin.placeholder));
    assert_eq!(server.metrics.admissions(Outcome::Pinned), 1);
    server.stop().await;
}

#[tokio::test]
async fn dry_run_is_decided_the_same() {
    let (w, r) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let mut client = server.client().await;
    let mut body = review("u-dry", &fixture_pod(&r, "lint", &["source"]), "CREATE");
    body["request"]["dryRun"] = json!(true);
    assert!(patch_of(&admit(&mut client, &body).await).is_some());
    server.stop().await;
}

#[tokio::test]
async fn existing_affinity_is_kept() {
    let (w, r) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let mut client = server.client().await;
    let mut pod = fixture_pod(&r, "build", &["source"]);
    let node_affinity = json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}});
    let preferred = json!([{"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}},
        "topologyKey": "kubernetes.io/hostname"}}]);
    let anti = json!({"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm":
        {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}}]});
    pod["spec"]["affinity"] = json!({"nodeAffinity": node_affinity, "podAffinity":
        {"preferredDuringSchedulingIgnoredDuringExecution": preferred}, "podAntiAffinity": anti});
    let v = admit(&mut client, &review("u-aff", &pod, "CREATE")).await;
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch_of(&v).expect("pinned")).unwrap();
    let a = &patched["spec"]["affinity"];
    assert_eq!(a["nodeAffinity"], node_affinity);
    assert_eq!(a["podAntiAffinity"], anti);
    assert_eq!(a["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"], preferred);
    assert_eq!(a["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// Every skip: unchanged, the same uid, a warning exactly when the reason warns (I5).
#[tokio::test]
async fn every_skip_and_i5_case_is_allowed_unchanged_with_warnings_where_due() {
    let (w, r) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let mut client = server.client().await;
    let base = || fixture_pod(&r, "build", &["source"]);
    let mut cases: Vec<(SkipReason, Value)> = Vec::new();

    let mut p = base();
    p["metadata"]["labels"][names::LABEL_PLACEHOLDER] = json!("aa-x");
    cases.push((SkipReason::Placeholder, p));
    let mut p = base();
    p["metadata"]["labels"]["app.kubernetes.io/component"] = json!("affinity-assistant");
    cases.push((SkipReason::EnginePlaceholder, p));
    let mut p = base();
    p["metadata"]["annotations"]["pipeline.tekton.dev/affinity-assistant"] = json!("affinity-assistant-835c6588ed");
    cases.push((SkipReason::EngineAssistant, p));
    let mut p = base();
    p["metadata"]["labels"] = json!({"app": "web"});
    cases.push((SkipReason::NotTaskPod, p));
    let mut p = base();
    p["metadata"]["annotations"][names::ANNOTATION_ENABLED] = json!("false");
    cases.push((SkipReason::OptedOut, p));
    cases.push((SkipReason::NoManagedClaim, fixture_pod(&r, "notify", &[])));
    let stranger = run("stranger", &[("w", "source")], &[("t", &["w"])]);
    cases.push((SkipReason::RunNotFound, fixture_pod(&stranger, "t", &["source"])));
    let mut p = base();
    p["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}});
    cases.push((SkipReason::OwnPodAffinity, p));
    let mut p = base();
    p["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        affinity_assistant::core::pin::pin_term("aa-already")]}});
    cases.push((SkipReason::AlreadyPinned, p));

    for (i, (reason, pod)) in cases.iter().enumerate() {
        let uid = format!("uid-{i}");
        let v = admit(&mut client, &review(&uid, pod, "CREATE")).await;
        let warns = assert_unchanged(&v, &uid);
        assert_eq!(!warns.is_empty(), reason.warns(), "{reason:?}: {v}");
        for w in &warns {
            assert!(w.starts_with("affinity-assistant: "), "{w}");
            assert!(w.contains(pod["metadata"]["name"].as_str().unwrap()), "{w} should name the pod");
        }
        assert_eq!(server.metrics.admissions(Outcome::Skipped(*reason)), 1, "{reason:?}");
    }
    server.stop().await;

    // I5 cases that need other worlds: a node that excludes the pod, claims split over two
    // placeholders, no controller.
    let node = NodeInfo { name: "n1".into(), labels: [("zone".to_string(), "a".to_string())].into(), taints: vec![] };
    let (mut bound, r) = world();
    let plan = bound.plan();
    bound.apply(&plan, Some(&node));
    let mut p = fixture_pod(&r, "build", &["source"]);
    p["spec"]["nodeSelector"] = json!({"zone": "b"});
    let mut split = World::new(
        vec![run("a", &[("w", "ca")], &[("t", &["w"])]), run("b", &[("w", "cb")], &[("t", &["w"])])],
        rwo(&["ca", "cb"]),
    );
    let first = split.plan();
    split.apply(&first, None);
    let c = run("c", &[("x", "ca"), ("y", "cb")], &[("both", &["x", "y"])]);
    split.runs.push(c.clone());
    let (plain, r2) = world();
    for (reason, d, pod) in [
        (SkipReason::NodeExcluded, decider(&bound, true), p),
        (SkipReason::ClaimsSplit, decider(&split, true), fixture_pod(&c, "both", &["ca", "cb"])),
        (SkipReason::NoController, decider(&plain, false), fixture_pod(&r2, "build", &["source"])),
    ] {
        let server = start(d, |_| {}).await;
        let mut client = server.client().await;
        let v = admit(&mut client, &review("i5", &pod, "CREATE")).await;
        let warns = assert_unchanged(&v, "i5");
        assert_eq!(warns.len(), 1, "{reason:?}: {v}");
        assert!(warns[0].contains("not pinned"), "{reason:?}: {}", warns[0]);
        assert_eq!(server.metrics.admissions(Outcome::Skipped(reason)), 1, "{reason:?}: {v}");
        server.stop().await;
    }
}

#[tokio::test]
async fn malformed_and_foreign_requests_get_a_valid_answer() {
    let (w, r) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let mut client = server.client().await;
    let pod = fixture_pod(&r, "build", &["source"]);

    // Not JSON (truncated mid-way): the uid is still found, the answer carries a warning.
    let full = to_bytes(&review("u-trunc", &pod, "CREATE"));
    let r1 = client.post("/mutate/pods", &full[..full.len() / 2]).await.unwrap();
    let v = r1.json();
    assert_well_formed(&v);
    assert_eq!(assert_unchanged(&v, "u-trunc").len(), 1);
    for body in [&b""[..], b"null", b"[]", b"{", b"\xff\xfe\x00", b"{\"request\": 5}", b"42"] {
        let v = client.post("/mutate/pods", body).await.unwrap().json();
        assert_well_formed(&v);
        assert_eq!(assert_unchanged(&v, "").len(), 1, "{v}");
    }

    // Wrong apiVersion / kind of the review.
    for (api, kind) in [("admission.k8s.io/v1beta1", "AdmissionReview"), ("admission.k8s.io/v1", "Pod")] {
        let mut body = review("u-api", &pod, "CREATE");
        body["apiVersion"] = json!(api);
        body["kind"] = json!(kind);
        let v = admit(&mut client, &body).await;
        assert_eq!(assert_unchanged(&v, "u-api").len(), 1);
    }

    // Not a Pod, a subresource, or not a CREATE: ignored, no warning.
    let mut deployment = review("u-kind", &pod, "CREATE");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let mut binding = review("u-sub", &pod, "CREATE");
    binding["request"]["subResource"] = json!("binding");
    for (uid, body) in [
        ("u-kind", deployment),
        ("u-sub", binding),
        ("u-upd", review("u-upd", &pod, "UPDATE")),
        ("u-del", review("u-del", &pod, "DELETE")),
    ] {
        let v = admit(&mut client, &body).await;
        assert!(assert_unchanged(&v, uid).is_empty(), "{v}");
    }
    assert_eq!(server.metrics.admissions(Outcome::Ignored(ignored::NOT_CREATE)), 2);
    assert_eq!(server.metrics.admissions(Outcome::Ignored(ignored::NOT_POD)), 2);

    // A pod with a field of the wrong type: its path is named.
    let mut bad = review("u-pod", &pod, "CREATE");
    bad["request"]["object"]["spec"]["volumes"][0]["name"] = json!(7);
    let v = admit(&mut client, &bad).await;
    let warns = assert_unchanged(&v, "u-pod");
    assert!(warns[0].contains("spec.volumes[0].name"), "{warns:?}");
    assert_eq!(server.metrics.admissions(Outcome::Error(error::INVALID_POD)), 1);

    // A CREATE without object.
    let mut empty = review("u-none", &pod, "CREATE");
    empty["request"]["object"] = Value::Null;
    assert_eq!(assert_unchanged(&admit(&mut client, &empty).await, "u-none").len(), 1);

    // Other paths and methods are plain HTTP errors, and the connection still works after.
    assert_eq!(client.get("/mutate/pods").await.unwrap().status, 405);
    assert_eq!(client.get("/nope").await.unwrap().status, 404);
    let v = admit(&mut client, &review("u-after", &pod, "CREATE")).await;
    assert!(patch_of(&v).is_some());
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_answered_without_being_kept() {
    let (w, r) = world();
    let server = start(decider(&w, true), |o| o.max_body_bytes = 64 * 1024).await;
    let mut pod = fixture_pod(&r, "build", &["source"]);
    pod["metadata"]["annotations"]["big"] = json!("x".repeat(200 * 1024));
    let body = to_bytes(&review("u-big", &pod, "CREATE"));
    let mut client = server.client().await;
    let v = client.post("/mutate/pods", &body).await.unwrap().json();
    assert_well_formed(&v);
    let warns = assert_unchanged(&v, "u-big");
    assert!(warns[0].contains("larger than 65536 bytes"), "{warns:?}");
    assert_eq!(server.metrics.admissions(Outcome::Error(error::BODY_TOO_LARGE)), 1);

    // Chunked, without Content-Length: bounded the same way.
    let mut client = server.client().await;
    let mut raw = b"POST /mutate/pods HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(16 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    client.write_raw(&raw).await.unwrap();
    let v = client.read_response().await.unwrap().json();
    assert_eq!(assert_unchanged(&v, "u-big").len(), 1);
    assert_eq!(server.metrics.admissions(Outcome::Error(error::BODY_TOO_LARGE)), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_client_does_not_stall_other_requests() {
    let (w, r) = world();
    let server = start(decider(&w, true), |o| {
        o.request_timeout = Duration::from_millis(1500);
        o.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let body = to_bytes(&review("u-slow", &fixture_pod(&r, "build", &["source"]), "CREATE"));

    // One client sends half a request and stalls; another only opens TCP and never says hello.
    let mut slow = server.client().await;
    let head = format!("POST /mutate/pods HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    slow.write_raw(head.as_bytes()).await.unwrap();
    slow.write_raw(&body[..body.len() / 2]).await.unwrap();
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut half_head = server.client().await;
    half_head.write_raw(b"POST /mutate/pods HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    let started = Instant::now();
    let mut fast = server.client().await;
    for i in 0..20 {
        let v = admit(&mut fast, &review(&format!("u-{i}"), &fixture_pod(&r, "lint", &["source"]), "CREATE")).await;
        assert!(patch_of(&v).is_some());
    }
    assert!(started.elapsed() < Duration::from_millis(1000), "others waited: {:?}", started.elapsed());

    // The stalled request is answered once its time is up (allowed, with a warning), not kept.
    let v = tokio::time::timeout(Duration::from_secs(5), slow.read_response()).await.expect("answered").unwrap().json();
    assert_well_formed(&v);
    assert_eq!(assert_unchanged(&v, "u-slow").len(), 1);
    assert_eq!(server.metrics.admissions(Outcome::Error(error::BODY_UNREADABLE)), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_cannot_connect() {
    let (w, _) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let (other_ca, _, _) = webhook_support::test_certs();
    let err = Client::connect(server.addr, webhook_support::client_config(&other_ca)).await.err().expect("refused");
    assert!(err.to_string().contains("certificate") || err.to_string().contains("Unknown"), "{err}");
    server.client().await;
    server.stop().await;
}

/// A decider whose caches have not synced, that panics, or that hangs.
struct Odd {
    ready: AtomicBool,
    panic: bool,
    hang: bool,
}

impl Decider for Odd {
    async fn decide(&self, pod: &TaskPod<'_>) -> Decision {
        if self.panic {
            panic!("bug in a decider for {}", pod.metadata.display_name());
        }
        if self.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Decision::Skip(affinity_assistant::core::Skip {
            reason: SkipReason::NoPlaceholder,
            message: "none".into(),
            undo: None,
        })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn not_ready_panicking_or_slow_deciders_never_block_a_pod() {
    let (_, r) = world();
    let pod = fixture_pod(&r, "build", &["source"]);

    let server = start(Odd { ready: AtomicBool::new(false), panic: false, hang: false }, |_| {}).await;
    assert!(!(server.ready)());
    let mut client = server.client().await;
    let warns = assert_unchanged(&admit(&mut client, &review("u-nr", &pod, "CREATE")).await, "u-nr");
    assert!(warns[0].contains("not synced"), "{warns:?}");
    assert_eq!(server.metrics.admissions(Outcome::Error(error::NOT_READY)), 1);
    server.stop().await;

    let server = start(Odd { ready: AtomicBool::new(true), panic: true, hang: false }, |_| {}).await;
    let mut client = server.client().await;
    for uid in ["p1", "p2"] {
        let warns = assert_unchanged(&admit(&mut client, &review(uid, &pod, "CREATE")).await, uid);
        assert!(warns[0].contains("internal error"), "{warns:?}");
    }
    assert_eq!(server.metrics.admissions(Outcome::Error(error::INTERNAL)), 2);
    server.stop().await;

    let server = start(Odd { ready: AtomicBool::new(true), panic: false, hang: true }, |o| {
        o.decide_timeout = Duration::from_millis(100)
    })
    .await;
    let mut client = server.client().await;
    let warns = assert_unchanged(&admit(&mut client, &review("u-hang", &pod, "CREATE")).await, "u-hang");
    assert!(warns[0].contains("no decision within 100 ms"), "{warns:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_requests_in_flight() {
    let (w, r) = world();
    let server = start(decider(&w, true), |_| {}).await;
    let body = to_bytes(&review("u-inflight", &fixture_pod(&r, "build", &["source"]), "CREATE"));
    let mut client = server.client().await;
    let head = format!("POST /mutate/pods HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    client.write_raw(head.as_bytes()).await.unwrap();
    client.write_raw(&body[..100]).await.unwrap();
    let mut idle = server.client().await;
    let _ = admit(&mut idle, &review("u-idle", &fixture_pod(&r, "lint", &["source"]), "CREATE")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "no longer accepting");
    assert!(!server.task.is_finished(), "waits for the request in flight");
    client.write_raw(&body[100..]).await.unwrap();
    let v = client.read_response().await.expect("in-flight request answered").json();
    assert_eq!(v["response"]["uid"], "u-inflight");
    assert!(patch_of(&v).is_some());
    tokio::time::timeout(Duration::from_secs(2), server.task).await.expect("stopped").unwrap().unwrap();
}

#[tokio::test]
async fn health_server_serves_liveness_readiness_and_metrics() {
    use affinity_assistant::health::{HealthServer, Readiness};
    use affinity_assistant::webhook::WebhookMetrics;
    use tokio::io::AsyncWriteExt;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let (w, r) = world();
    let d = Arc::new(decider(&w, true));
    WebhookMetrics::register_cache_sizes(&mut registry, d.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let health = HealthServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(registry),
        Readiness::new().with("caches", move || flag.load(Ordering::Relaxed)).with("tls", || true),
    )
    .await
    .unwrap();
    let addr = health.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(health.run(shutdown.clone()));

    // One admission through a server sharing the metrics.
    let (ca, cert, key) = webhook_support::test_certs();
    let store = affinity_assistant::webhook::certs::CertStore::new();
    store.load_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let mut options =
        affinity_assistant::webhook::WebhookOptions::new(affinity_assistant::webhook::certs::TlsSource::Store(store));
    options.addr = "127.0.0.1:0".parse().unwrap();
    let server = affinity_assistant::webhook::WebhookServer::bind(options, d, metrics).await.unwrap();
    let waddr = server.local_addr();
    let wtask = tokio::spawn(server.run(shutdown.clone()));
    let mut client = Client::connect(waddr, webhook_support::client_config(&ca)).await.unwrap();
    admit(&mut client, &review("u-m", &fixture_pod(&r, "build", &["source"]), "CREATE")).await;

    let get = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        webhook_support::read_response(&mut tcp, &mut buf).await.unwrap()
    };
    assert_eq!(get("/healthz").await.status, 200);
    let not_ready = get("/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(String::from_utf8_lossy(&not_ready.body), "not ready: caches\n");
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get("/readyz").await.status, 200);
    let m = get("/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("affinity_assistant_admissions_total{outcome=\"pinned\",reason=\"\"} 1"), "{text}");
    assert!(text.contains("affinity_assistant_admission_duration_seconds_count 1"), "{text}");
    assert!(text.contains("affinity_assistant_cache_objects"), "{text}");
    shutdown.cancel();
    task.await.unwrap();
    wtask.await.unwrap().unwrap();
}
