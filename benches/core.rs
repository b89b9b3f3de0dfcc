//! Benchmarks of the decision core's hot paths.
//!
//! - `pod_decision`: what the webhook does per task pod: read the pod, decide, serialise the
//!   JSONPatch. Target: < 20 µs.
//! - `namespace_plan`: what the controller does per reconcile of a namespace. Target: < 5 ms
//!   for 1,000 active runs.
//!
//! Run with `hack/bench.sh` (or `cargo bench --bench core -- --noplot`). For instruction counts,
//! which a busy machine does not disturb, see [`fixed_count`]:
//! `AA_BENCH_COUNT=pod_json:200 valgrind --tool=callgrind --toggle-collect='*measured*' <bench binary>`.
//! (Under valgrind sha2 falls back to its portable code: SHA-NI is hidden, so hashing weighs
//! more there than on the machine.)

use affinity_assistant::config::Config;
use affinity_assistant::core::pin::unplanned_claims;
use affinity_assistant::core::{Decision, MissingClaims, NamespaceState, Plan, decide, plan};
use affinity_assistant::engine::tekton::PipelineRun;
use affinity_assistant::model::{
    Binding, ClaimInfo, ClaimSource, ExistingPlaceholder, NodeInfo, OwnerRun, Run, RunPhase, Scheduling, TaskUsage,
};
use affinity_assistant::pod::TaskPod;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use k8s_openapi::api::core::v1::Taint;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

const NAMESPACE: &str = "ci";
const TASK_POD: &[u8] = include_bytes!("../tests/data/task-pod.json");
const ADMISSION_REVIEW: &[u8] = include_bytes!("../tests/data/admission-review-pod.json");
const BUILD_1_UID: &str = "0d8f1a2b-0000-4000-8000-000000000001";

// ---------------------------------------------------------------------------------------------
// Fixtures (built outside the timed loops)
// ---------------------------------------------------------------------------------------------

fn rwo(name: &str) -> (String, ClaimInfo) {
    let modes = vec!["ReadWriteOnce".to_string()];
    (
        name.to_string(),
        ClaimInfo {
            name: name.to_string(),
            spec_access_modes: modes.clone(),
            status_access_modes: modes,
            bound: true,
            node_pinned: false,
            volume_node_affinity: None,
            deleted: false,
        },
    )
}

/// RFC 3339 timestamp `secs` seconds after 2024-05-01T08:00:00Z (less than a day).
fn created(secs: u32) -> String {
    format!("2024-05-01T{:02}:{:02}:{:02}Z", 8 + secs / 3600, (secs / 60) % 60, secs % 60)
}

/// A version-4-shaped UUID from `seed`: real UIDs differ from their first characters on,
/// which matters to every comparison the plan makes between them.
fn uid(seed: u64) -> String {
    let mut next = {
        let mut state = seed;
        move || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    };
    let (a, b) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

fn task(name: &str, workspaces: Option<&[&str]>) -> TaskUsage {
    TaskUsage {
        name: name.to_string(),
        finally: false,
        workspaces: workspaces.map(|ws| ws.iter().map(|w| w.to_string()).collect()),
        scheduling: None,
    }
}

fn active_run(name: String, uid: String, created: String, bindings: Vec<Binding>, tasks: Vec<TaskUsage>) -> Run {
    Run {
        engine: "tekton",
        namespace: NAMESPACE.to_string(),
        name: name.into(),
        uid: uid.into(),
        api_version: "tekton.dev/v1".into(),
        kind: "PipelineRun".into(),
        created: Some(created),
        annotations: BTreeMap::new(),
        phase: RunPhase::Active,
        bindings,
        tasks,
        scheduling: Scheduling::default(),
        engine_assistant: false,
        definition: None,
        task_overrides: Vec::new(),
        claims_from_pods: false,
        cluster_definition: false,
    }
}

fn bind(workspace: &str, claim: String) -> Binding {
    Binding { workspace: workspace.into(), source: ClaimSource::Claim(claim.into()) }
}

/// `build-1` as the Tekton adapter reads it: the run the task pod in tests/data belongs to.
fn build_1() -> Run {
    let pr = PipelineRun::from_value(&json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {
            "name": "build-1",
            "namespace": NAMESPACE,
            "uid": BUILD_1_UID,
            "creationTimestamp": "2024-05-01T09:30:00Z",
            "labels": {"tekton.dev/pipeline": "build"}
        },
        "spec": {
            "pipelineRef": {"name": "build"},
            "workspaces": [
                {"name": "source", "persistentVolumeClaim": {"claimName": "source-pvc"}},
                {"name": "cache", "persistentVolumeClaim": {"claimName": "cache-pvc"}},
                {"name": "git-credentials", "secret": {"secretName": "git-credentials"}}
            ]
        },
        "status": {
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            "pipelineSpec": {
                "tasks": [
                    {"name": "fetch", "workspaces": [{"name": "output", "workspace": "source"},
                                                     {"name": "basic-auth", "workspace": "git-credentials"}]},
                    {"name": "unit-tests", "workspaces": [{"name": "source"}, {"name": "cache"}]},
                    {"name": "lint", "workspaces": [{"name": "source"}]}
                ],
                "finally": [{"name": "report", "workspaces": [{"name": "source"}]}]
            }
        }
    }))
    .expect("build-1 parses");
    pr.to_run().expect("build-1 is a run")
}

/// ~50 active runs in `ci`, `build-1` among them; every claim ReadWriteOnce.
fn decision_fixture() -> (Vec<Run>, BTreeMap<String, ClaimInfo>) {
    let mut runs = vec![build_1()];
    let mut claims: BTreeMap<String, ClaimInfo> = [rwo("source-pvc"), rwo("cache-pvc")].into();
    for i in 0..49u32 {
        let (src, cache) = (format!("app-{i}-src"), format!("app-{i}-cache"));
        claims.extend([rwo(&src), rwo(&cache)]);
        runs.push(active_run(
            format!("app-{i}"),
            uid(u64::from(i)),
            created(i * 61),
            vec![bind("source", src), bind("cache", cache)],
            vec![
                task("fetch", Some(&["source"])),
                task("build", Some(&["source", "cache"])),
                task("notify", Some(&[])),
            ],
        ));
    }
    (runs, claims)
}

fn namespace_state<'a>(
    config: &'a Config,
    runs: &'a [Run],
    claims: &'a BTreeMap<String, ClaimInfo>,
    placeholders: &'a [ExistingPlaceholder],
) -> NamespaceState<'a> {
    NamespaceState {
        namespace: NAMESPACE,
        config,
        runs,
        claims,
        placeholders,
        pinned_pods: &[],
        task_pods: &[],
        missing_claims: MissingClaims::Wait,
    }
}

/// The placeholders of `plan` as they look once created and scheduled onto `node`.
fn as_existing(plan: &Plan, node: &NodeInfo) -> Vec<ExistingPlaceholder> {
    plan.placeholders
        .iter()
        .map(|p| ExistingPlaceholder {
            name: p.name.clone(),
            claims: p.claims.clone(),
            owners: p.owners.iter().map(|o| OwnerRun { name: o.name.clone(), uid: o.uid.clone() }).collect(),
            mode: Some(p.mode),
            run_modes: p.run_modes.clone(),
            node_selector: p.node_selector.clone(),
            node: Some(std::sync::Arc::new(node.clone())),
            pod_exists: true,
            refused: None,
        })
        .collect()
}

fn worker_node() -> NodeInfo {
    let labels = [
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/hostname", "ci-pool-a-7f9c2"),
        ("node.kubernetes.io/instance-type", "n2-standard-8"),
        ("topology.kubernetes.io/zone", "europe-west1-b"),
    ];
    NodeInfo {
        name: "ci-pool-a-7f9c2".to_string(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        taints: vec![Taint {
            key: "ci.example.com/dedicated".to_string(),
            value: Some("tekton".to_string()),
            effect: "NoSchedule".to_string(),
            time_added: None,
        }],
    }
}

/// Webhook path: raw pod bytes -> decision -> patch bytes.
fn pin_pod(bytes: &[u8], plan: &Plan) -> Vec<u8> {
    let pod = TaskPod::from_json(bytes).expect("task pod parses");
    match decide(&pod, plan, true) {
        Decision::Pin(pin) => pin.patch_json().expect("patch serialises"),
        Decision::Skip(s) => panic!("expected a pin, got {:?}: {}", s.reason, s.message),
    }
}

/// Webhook path with the envelope: AdmissionReview bytes -> `request.object` -> decision -> patch.
fn pin_review(bytes: &[u8], plan: &Plan) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(bytes).expect("review parses");
    let object = review.pointer_mut("/request/object").map(Value::take).expect("request.object");
    let pod = TaskPod::deserialize(object).expect("task pod parses").identified();
    match decide(&pod, plan, true) {
        Decision::Pin(pin) => pin.patch_json().expect("patch serialises"),
        Decision::Skip(s) => panic!("expected a pin, got {:?}: {}", s.reason, s.message),
    }
}

/// Checked once, outside timing: the benchmarks measure a pin, not a cheap skip.
fn assert_pins(bytes: &[u8], plan: &Plan, expect_placeholder: &str) {
    let pod = TaskPod::from_json(bytes).expect("task pod parses");
    match decide(&pod, plan, true) {
        Decision::Pin(pin) => {
            assert_eq!(pin.run, "build-1");
            assert_eq!(pin.placeholder, expect_placeholder);
            assert_eq!(pin.claims, ["cache-pvc", "source-pvc"]);
            assert_eq!(pin.patch.0.len(), 4, "{:?}", pin.patch);
        }
        Decision::Skip(s) => panic!("expected a pin, got {:?}: {}", s.reason, s.message),
    }
}

// ---------------------------------------------------------------------------------------------
// pod_decision
// ---------------------------------------------------------------------------------------------

fn pod_decision(c: &mut Criterion) {
    let config = Config::default();
    let (runs, claims) = decision_fixture();
    let fresh = plan(&namespace_state(&config, &runs, &claims, &[]));
    let holder = fresh
        .run("build-1", Some(BUILD_1_UID))
        .and_then(|r| r.holders.get("source-pvc"))
        .cloned()
        .expect("build-1's source-pvc has a placeholder");
    assert_eq!(fresh.placeholder(&holder).map(|p| p.claims.len()), Some(2), "source-pvc and cache-pvc share one");
    assert_pins(TASK_POD, &fresh, &holder);

    // Steady state: the placeholders exist and run on a node, so the I5 check compares the
    // pod's nodeSelector, required node affinity and tolerations with a real node.
    let existing = as_existing(&fresh, &worker_node());
    let bound = plan(&namespace_state(&config, &runs, &claims, &existing));
    assert!(bound.placeholders.iter().all(|p| p.create.is_none() && p.node.is_some()));
    assert_pins(TASK_POD, &bound, &holder);

    let mut group = c.benchmark_group("pod_decision");
    group.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function("pod_json", |b| b.iter(|| pin_pod(black_box(TASK_POD), black_box(&fresh))));
    group.bench_function("admission_review", |b| b.iter(|| pin_review(black_box(ADMISSION_REVIEW), black_box(&fresh))));
    group
        .bench_function("pod_json_placeholder_on_node", |b| b.iter(|| pin_pod(black_box(TASK_POD), black_box(&bound))));

    // An Argo task pod (tests/fixtures/argo/argo-pod-shape.yaml as the webhook receives it),
    // of a Workflow of 3 parallel steps on a volumeClaimTemplate, in the same namespace.
    let argo_pod = argo_pod_json();
    let mut with_argo = runs.clone();
    with_argo.push(argo_run());
    let argo_plan = plan(&namespace_state(&config, &with_argo, &claims, &[]));
    let pod = TaskPod::from_json(&argo_pod).expect("the Argo pod parses");
    assert!(matches!(decide(&pod, &argo_plan, true), Decision::Pin(_)), "the Argo pod is pinned");
    group.bench_function("argo_pod_json", |b| b.iter(|| pin_pod(black_box(&argo_pod), black_box(&argo_plan))));

    // The same pod when its Workflow names the claim only by an input parameter: the first pod
    // to name it makes the webhook plan the namespace (50 Tekton runs and the Workflow) again
    // with the pod among its run's pods.
    let mut with_named = runs.clone();
    with_named.push(argo_run_named_by_pod());
    let mut named_claims = claims.clone();
    named_claims.insert("ci-example-7xk2p-workdir".into(), rwo("ci-example-7xk2p-workdir").1);
    let cached = plan(&namespace_state(&config, &with_named, &named_claims, &[]));
    let first_to_name = |bytes: &[u8]| -> Vec<u8> {
        let pod = TaskPod::from_json(bytes).expect("task pod parses");
        assert!(!unplanned_claims(&pod, &cached).is_empty());
        let mounts = [pod.mounts().expect("a pod of a run")];
        let state = NamespaceState { task_pods: &mounts, ..namespace_state(&config, &with_named, &named_claims, &[]) };
        match decide(&pod, &plan(&state), true) {
            Decision::Pin(pin) => pin.patch_json().expect("patch serialises"),
            Decision::Skip(s) => panic!("expected a pin, got {:?}: {}", s.reason, s.message),
        }
    };
    first_to_name(&argo_pod);
    group.bench_function("argo_pod_first_to_name_its_claim", |b| b.iter(|| first_to_name(black_box(&argo_pod))));
    group.finish();
}

/// [`argo_run`] with its claim named by an input parameter instead of a volumeClaimTemplate:
/// only the pod says which claim it mounts.
fn argo_run_named_by_pod() -> Run {
    use affinity_assistant::engine::Engine;
    let use_claim = |image: &str| {
        json!({"volumes": [{"name": "workdir", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}}],
            "inputs": {"parameters": [{"name": "pvc"}]},
            "container": {"image": image, "volumeMounts": [{"name": "workdir", "mountPath": "/go"}]}})
    };
    let mut build = use_claim("golang");
    build["name"] = json!("build-golang-example");
    let mut hello = use_claim("debian");
    hello["name"] = json!("run-hello");
    let wf = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "ci-example-7xk2p", "namespace": NAMESPACE, "uid": "0b6c3f0e-1d2a-4c1e-9a77-5f2f9d1d0c11",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"entrypoint": "ci-example",
            "templates": [
                {"name": "ci-example", "steps": [[{"name": "build", "template": "build-golang-example"}],
                    [{"name": "test", "template": "run-hello"}]]},
                build, hello]},
        "status": {"phase": "Running"}});
    let obj: kube::api::DynamicObject = serde_json::from_value(wf).expect("a Workflow");
    affinity_assistant::engine::argo::Argo.run(&obj.metadata, &obj.data).expect("the Workflow reads")
}

/// The Argo fixture pod, as JSON bytes (the webhook reads JSON).
fn argo_pod_json() -> Vec<u8> {
    let text = include_str!("../tests/fixtures/argo/argo-pod-shape.yaml");
    let pod: Value = serde_saphyr::from_str(text).expect("the fixture is YAML");
    serde_json::to_vec(&pod).expect("JSON")
}

/// The fixture pod's Workflow (`ci-example-7xk2p`, examples/ci.yaml), as its adapter reads it.
fn argo_run() -> Run {
    use affinity_assistant::engine::Engine;
    let wf = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "ci-example-7xk2p", "namespace": NAMESPACE, "uid": "0b6c3f0e-1d2a-4c1e-9a77-5f2f9d1d0c11",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"entrypoint": "ci-example",
            "volumeClaimTemplates": [{"metadata": {"name": "workdir"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            "templates": [
                {"name": "ci-example", "steps": [[{"name": "build", "template": "build-golang-example"}],
                    [{"name": "test", "template": "run-hello"}]]},
                {"name": "build-golang-example", "container": {"image": "golang", "volumeMounts": [{"name": "workdir", "mountPath": "/go"}]}},
                {"name": "run-hello", "container": {"image": "debian", "volumeMounts": [{"name": "workdir", "mountPath": "/go"}]}}]},
        "status": {"phase": "Running"}});
    let obj: kube::api::DynamicObject = serde_json::from_value(wf).expect("a Workflow");
    affinity_assistant::engine::argo::Argo.run(&obj.metadata, &obj.data).expect("the Workflow reads")
}

// ---------------------------------------------------------------------------------------------
// namespace_plan
// ---------------------------------------------------------------------------------------------

/// `n` active runs with 1-3 claims each:
/// - every run i binds `source` -> `src-{i}`;
/// - runs with i % 3 == 0 bind `cache` -> `cache-{i / 9}`, so each cache is shared by three runs;
/// - runs with i % 5 == 0 bind `out` -> `out-{i}`.
///
/// 2-5 tasks per run use different subsets, one of them sometimes unreadable (propagated
/// workspaces: it uses every claim), so grouping merges and splits; creation times are
/// shuffled so the oldest-first ordering has work to do.
fn namespace_fixture(n: u32) -> (Vec<Run>, BTreeMap<String, ClaimInfo>) {
    let mut runs = Vec::with_capacity(n as usize);
    let mut claims = BTreeMap::new();
    for i in 0..n {
        let mut bindings = vec![bind("source", format!("src-{i}"))];
        let has_cache = i % 3 == 0;
        let has_out = i % 5 == 0;
        if has_cache {
            bindings.push(bind("cache", format!("cache-{}", i / 9)));
        }
        if has_out {
            bindings.push(bind("out", format!("out-{i}")));
        }
        bindings.push(Binding { workspace: "docker-config".into(), source: ClaimSource::Other });
        for b in &bindings {
            if let Some(c) = b.source.claim() {
                claims.entry(c.to_string()).or_insert_with(|| rwo(c).1);
            }
        }

        let build: &[&str] = if has_cache { &["source", "cache"] } else { &["source"] };
        let test: &[&str] = if has_out { &["source", "out"] } else { &["source"] };
        let all = [
            task("fetch", Some(&["source", "docker-config"])),
            task("build", Some(build)),
            task("test", Some(test)),
            task("publish", if i % 7 == 0 { None } else { Some(&["out"]) }),
            task("notify", Some(&[])),
        ];
        let tasks = all.into_iter().take(2 + (i % 4) as usize).collect();
        runs.push(active_run(
            format!("pr-{i:04}"),
            uid(1_000_000 + u64::from(i)),
            created((i * 7919) % 43_200),
            bindings,
            tasks,
        ));
    }
    (runs, claims)
}

fn namespace_plan(c: &mut Criterion) {
    let config = Config::default();
    let mut group = c.benchmark_group("namespace_plan");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    for n in [100u32, 1_000] {
        let (runs, claims) = namespace_fixture(n);
        let state = namespace_state(&config, &runs, &claims, &[]);
        let first = plan(&state);
        assert!(first.runs.iter().all(|r| r.status == affinity_assistant::core::RunStatus::Managed));
        // Runs sharing a cache: the later ones' claims ride with the first one's placeholder.
        assert!(
            first.conflicts.is_empty() && first.placeholders.len() as u32 >= n / 2,
            "{} placeholders",
            first.placeholders.len()
        );
        assert!(first.runs.iter().any(|r| !r.riders.is_empty()), "the fixture has riders");
        group.bench_with_input(BenchmarkId::new("fresh", n), &state, |b, s| b.iter(|| plan(black_box(s))));

        // Steady state: every placeholder already exists and is scheduled.
        let existing = as_existing(&first, &worker_node());
        let steady_state = namespace_state(&config, &runs, &claims, &existing);
        let steady = plan(&steady_state);
        assert!(steady.placeholders.iter().all(|p| p.create.is_none()) && steady.delete.is_empty());
        group.bench_with_input(BenchmarkId::new("existing", n), &steady_state, |b, s| b.iter(|| plan(black_box(s))));
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Fixed-count mode, for instruction counts
// ---------------------------------------------------------------------------------------------

/// `AA_BENCH_COUNT=<case>[:<iterations>]` runs one case a fixed number of times instead of
/// criterion, so that `valgrind --tool=callgrind --toggle-collect='*measured*'` counts the same
/// work on every run (wall-clock figures on a busy machine are too noisy to compare). Cases:
/// `pod_json`, `pod_json_placeholder_on_node`, `admission_review`, `plan_fresh_<n>`,
/// `plan_existing_<n>`.
fn fixed_count(spec: &str) {
    let (case, iterations) = match spec.split_once(':') {
        Some((case, n)) => (case, n.parse().expect("AA_BENCH_COUNT=<case>:<iterations>")),
        None => (spec, 100u32),
    };
    let config = Config::default();
    let workload: Box<dyn Fn()> = if let Some(rest) = case.strip_prefix("plan_") {
        let (which, n) = rest.split_once('_').expect("plan_fresh_<n> or plan_existing_<n>");
        let (runs, claims) = namespace_fixture(n.parse().expect("run count"));
        let first = plan(&namespace_state(&config, &runs, &claims, &[]));
        let existing = match which {
            "fresh" => Vec::new(),
            "existing" => as_existing(&first, &worker_node()),
            other => panic!("unknown plan case {other}"),
        };
        Box::new(move || {
            black_box(plan(black_box(&namespace_state(&config, &runs, &claims, &existing))));
        })
    } else {
        let (runs, claims) = decision_fixture();
        let fresh = plan(&namespace_state(&config, &runs, &claims, &[]));
        let the_plan = match case {
            "pod_json" | "admission_review" => fresh,
            "pod_json_placeholder_on_node" => {
                plan(&namespace_state(&config, &runs, &claims, &as_existing(&fresh, &worker_node())))
            }
            other => panic!("unknown case {other}"),
        };
        let input = if case == "admission_review" { ADMISSION_REVIEW } else { TASK_POD };
        let pin: fn(&[u8], &Plan) -> Vec<u8> = if case == "admission_review" { pin_review } else { pin_pod };
        Box::new(move || {
            black_box(pin(black_box(input), black_box(&the_plan)));
        })
    };
    measured(iterations, &*workload);
}

#[inline(never)]
fn measured(iterations: u32, workload: &dyn Fn()) {
    for _ in 0..iterations {
        workload();
    }
}

criterion_group!(benches, pod_decision, namespace_plan);

fn main() {
    match std::env::var("AA_BENCH_COUNT") {
        Ok(spec) => fixed_count(&spec),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
