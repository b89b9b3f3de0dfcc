//! Controller figures against the in-memory API server (issue 4), printed, not asserted:
//! cache memory per run (allocation counter), convergence after a restart with 10,000 active
//! runs over 100 namespaces, and run-created -> placeholder-created latency at 100 runs/s.
//! Run: `cargo bench --bench controller` (or `hack/bench.sh`).

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use affinity_assistant::cluster::Caches;
use affinity_assistant::cluster::watch::{self, WatchOptions};
use affinity_assistant::controller::{self, Context, ControllerMetrics, Options};
use affinity_assistant::names::{self, NameSeed};
use apiserver::FakeApiServer;
use serde_json::{Value, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

const RUNS: usize = 10_000;
const NAMESPACES: usize = 100;

fn claims_of(i: usize) -> Vec<String> {
    (0..1 + i % 3).map(|k| format!("run-{i}-c{k}")).collect()
}

/// A PipelineRun as the API server sends it once Tekton resolved it: labels, managedFields,
/// the last-applied annotation, and a status.pipelineSpec with task scripts.
fn run_json(i: usize, ns: &str) -> Value {
    let claims = claims_of(i);
    let ws: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(k, c)| json!({"name": format!("w{k}"), "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let task_ws: Vec<Value> = (0..claims.len()).map(|k| json!({"name": format!("w{k}")})).collect();
    let script = "#!/bin/sh\nset -e\nmake -C $(workspaces.w0.path) test\n".repeat(8);
    let tasks: Vec<Value> = (0..4)
        .map(|t| json!({"name": format!("task-{t}"), "workspaces": task_ws, "taskSpec": {"steps": [{"name": "run", "image": "golang:1.23", "script": script}]}}))
        .collect();
    json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": format!("run-{i}"), "namespace": ns, "uid": format!("uid-{i:08}"),
            "creationTimestamp": "2026-11-23T00:00:00Z",
            "resourceVersion": format!("{}", 48_213_377 + i), "generation": 1,
            "finalizers": ["chains.tekton.dev/pipelinerun"],
            "labels": {"tekton.dev/pipeline": "build", "app": "ci"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(1500)},
            "managedFields": [{"manager": "tekton", "operation": "Update", "fieldsV1": {"f:status": {}}}]},
        "spec": {"pipelineRef": {"name": "build"}, "workspaces": ws},
        "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            "pipelineSpec": {"tasks": tasks}}})
}

fn pvc_json(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
}

fn expected_name(i: usize) -> String {
    let set: BTreeSet<String> = claims_of(i).into_iter().collect();
    names::placeholder_name(NameSeed::Claims(&set))
}

fn memory_per_run() {
    // The runs store exactly as `run` fills it: each run converted once by its engine.
    let caches = Caches::default();
    let store = &caches.runs;
    let docs: Vec<Value> = (0..RUNS).map(|i| run_json(i, &format!("ns-{}", i % NAMESPACES))).collect();
    let json_bytes: usize = docs.iter().map(|d| d.to_string().len()).sum();
    let before = LIVE.load(Ordering::Relaxed);
    for d in &docs {
        // From a borrowed document: the documents stay alive, only what the store keeps counts.
        let obj = <kube::api::DynamicObject as serde::Deserialize>::deserialize(d).unwrap();
        let run = affinity_assistant::cluster::cache_run(&affinity_assistant::engine::tekton::Tekton, &obj).unwrap();
        drop(obj);
        store.apply(kube::runtime::watcher::Event::Apply(run));
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(docs);
    println!(
        "cache memory: {} runs held in {:.1} KiB = {} bytes/run (target < 2,048); their JSON averaged {} bytes",
        store.len(),
        (after - before) as f64 / 1024.0,
        (after - before) / RUNS as isize,
        json_bytes / RUNS
    );
}

/// An Argo Workflow as the API serves it: examples/ci.yaml's shape (a claim template, a
/// clone step, three parallel test pods), with the status Argo keeps (a node per pod).
fn workflow_json(i: usize, ns: &str) -> Value {
    let nodes: serde_json::Map<String, Value> = (0..5)
        .map(|n| {
            (
                format!("wf-{i}-{n}"),
                json!({"id": format!("wf-{i}-{n}"), "name": format!("wf-{i}[1].test({n})"),
                "type": "Pod", "phase": "Running", "templateName": "run-hello", "startedAt": "2026-11-23T00:00:00Z"}),
            )
        })
        .collect();
    json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": format!("wf-{i}"), "namespace": ns, "uid": format!("0b6c3f0e-1d2a-4c1e-9a77-{i:012}"),
            "creationTimestamp": "2026-11-23T00:00:00Z", "resourceVersion": format!("{}", 48_213_377 + i), "generation": 3,
            "labels": {"workflows.argoproj.io/phase": "Running", "workflows.argoproj.io/completed": "false"},
            "annotations": {"workflows.argoproj.io/pod-name-format": "v2"}},
        "spec": {"entrypoint": "ci",
            "volumeClaimTemplates": [{"metadata": {"name": "workdir"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
            "templates": [
                {"name": "ci", "steps": [[{"name": "clone", "template": "clone"}], [{"name": "test", "template": "run-hello",
                    "withItems": [1, 2, 3]}]]},
                {"name": "clone", "container": {"image": "alpine/git", "command": ["sh", "-c"], "args": ["git clone https://example.com/r /src"],
                    "volumeMounts": [{"name": "workdir", "mountPath": "/src"}]}},
                {"name": "run-hello", "inputs": {"parameters": [{"name": "item"}]},
                    "container": {"image": "golang:1.22", "command": ["go", "test", "./..."],
                    "volumeMounts": [{"name": "workdir", "mountPath": "/src"}]}}]},
        "status": {"phase": "Running", "startedAt": "2026-11-23T00:00:00Z", "nodes": nodes,
            "persistentVolumeClaims": [{"name": "workdir", "persistentVolumeClaim": {"claimName": format!("wf-{i}-workdir")}}]}})
}

/// What the runs cache costs per Argo Workflow (target < 2,048 bytes, as for a PipelineRun).
fn memory_per_workflow() {
    let caches = Caches::default();
    let store = &caches.runs;
    let docs: Vec<Value> = (0..RUNS).map(|i| workflow_json(i, &format!("ns-{}", i % NAMESPACES))).collect();
    let json_bytes: usize = docs.iter().map(|d| d.to_string().len()).sum();
    let before = LIVE.load(Ordering::Relaxed);
    for d in &docs {
        let obj = <kube::api::DynamicObject as serde::Deserialize>::deserialize(d).unwrap();
        let run = affinity_assistant::cluster::cache_run(&affinity_assistant::engine::argo::Argo, &obj).unwrap();
        drop(obj);
        store.apply(kube::runtime::watcher::Event::Apply(run));
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(docs);
    println!(
        "cache memory (Argo): {} Workflows held in {:.1} KiB = {} bytes/Workflow (target < 2,048); their JSON averaged {} bytes",
        store.len(),
        (after - before) as f64 / 1024.0,
        (after - before) / RUNS as isize,
        json_bytes / RUNS
    );
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn start(client: kube::Client) -> (tokio_util::sync::CancellationToken, Arc<Caches>) {
    let caches = Arc::new(Caches::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter { controller: "affinity-assistant".into(), instance: None },
    );
    let options = WatchOptions {
        namespaces: vec![],
        own_namespace: "affinity-assistant".into(),
        config_name: "feature-flags".into(),
        lease_name: "affinity-assistant-leader".into(),
        tekton_namespace: None,
    };
    let (triggers, _tasks) =
        watch::start(client.clone(), caches.clone(), &options, controller::config_reporter(recorder, metrics.clone()));
    let (_tx, leader) = tokio::sync::watch::channel(true);
    std::mem::forget(_tx);
    let ctx =
        Context::new(client, caches.clone(), metrics, leader, Options { concurrency: 8, ..Options::default() }, None);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(controller::run(ctx, triggers, stop.clone().cancelled_owned()));
    (stop, caches)
}

async fn controller_figures() {
    let server = FakeApiServer::new();
    server.set_history_limit(200_000);
    let preload = RUNS - 500;
    for i in 0..preload {
        let ns = format!("ns-{}", i % NAMESPACES);
        for c in claims_of(i) {
            server.insert(pvc_json(&c, &ns));
        }
        server.insert(run_json(i, &ns));
    }
    // A restart with every run present: time until every placeholder exists.
    let t0 = Instant::now();
    let (stop, _caches) = start(server.client()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = server.count("statefulsets", "");
        if n >= preload {
            break;
        }
        if Instant::now() > deadline {
            println!("convergence: only {n}/{preload} placeholders after 300 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "convergence after a restart with {preload} active runs over {NAMESPACES} namespaces: {:.2} s (target < 10 s)",
        t0.elapsed().as_secs_f64()
    );

    // A burst of 500 new runs at 100 runs/s: created -> placeholder created.
    let mut pending: Vec<(usize, Instant)> = Vec::new();
    let mut latencies = Vec::new();
    let start_burst = Instant::now();
    let mut next = preload;
    while next < RUNS || !pending.is_empty() {
        let due = start_burst + Duration::from_millis(10 * (next - preload) as u64);
        if next < RUNS && Instant::now() >= due {
            let ns = format!("ns-{}", next % NAMESPACES);
            for c in claims_of(next) {
                server.insert(pvc_json(&c, &ns));
            }
            server.insert(run_json(next, &ns));
            pending.push((next, Instant::now()));
            next += 1;
        }
        pending.retain(|(i, at)| {
            let ns = format!("ns-{}", i % NAMESPACES);
            if server.get("statefulsets", &ns, &expected_name(*i)).is_some() {
                latencies.push(at.elapsed());
                false
            } else {
                true
            }
        });
        if start_burst.elapsed() > Duration::from_secs(120) {
            println!("burst: {} runs still without a placeholder after 120 s", pending.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !latencies.is_empty() {
        let p50 = percentile(&mut latencies, 0.5);
        let p99 = percentile(&mut latencies, 0.99);
        println!(
            "run active -> placeholder created at 100 runs/s ({} runs, {RUNS} active in all): p50 {:.1} ms, p99 {:.1} ms (target p99 < 50 ms)",
            latencies.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    stop.cancel();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run either way.
    memory_per_run();
    memory_per_workflow();
    if std::env::var_os("AA_BENCH_MEMORY_ONLY").is_some() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(controller_figures());
}
