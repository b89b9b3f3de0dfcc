//! Replays a recorded trace of the real Tekton controller (`tests/fixtures/tekton/traces`)
//! into the in-memory API server with the add-on running against it as it ships (caches,
//! watchers, controller, and the webhook's review code in front of pod creation), with the
//! stand-ins of `scheduler.rs` placing pods, and measures what the add-on did.
//!
//! What is replayed, in `metadata.resourceVersion` order (or shuffled within the real
//! reordering windows, see [`shuffle`]), the gaps between events scaled down:
//! - the Pipelines the runs reference (not in the traces: the user made them first) are
//!   rebuilt from the first `status.pipelineSpec` recorded for a run referencing them, with
//!   the annotations Tekton later merged onto that run, and created before anything else;
//! - PipelineRuns: ADDED is a create (recorded spec and metadata minus server fields); a
//!   MODIFIED that changes labels, annotations or spec is an update; one that changes the
//!   status is a write to `/status`;
//! - TaskRuns: created (their pods are owned by them); later changes are skipped (the add-on
//!   does not read them);
//! - PVCs: created (spec and metadata; never the recorded status, binding annotations or
//!   `spec.volumeName`: the provisioner stand-in binds them); later changes skipped;
//! - Pods: ADDED is a create through the webhook, without `spec.nodeName` and status; a
//!   MODIFIED to phase Succeeded/Failed is the recorded kubelet: it is applied once the pod is
//!   bound and started in OUR world (within a bounded wait; else the pod is recorded as
//!   stranded and finished anyway, so that the rest of the trace stays as recorded); a
//!   MODIFIED that sets `deletionTimestamp`, or DELETED, is Tekton's delete (graceful);
//! - Tekton's own StatefulSet: ADDED and DELETED; its pod comes from the StatefulSet
//!   controller stand-in, so Pod events of pods owned by a StatefulSet are skipped.
//! - NOTE lines and everything else are skipped.
//!
//! Objects keep their recorded uids (the server is told to keep them): Tekton's PVC names
//! and the pods' `tekton.dev/pipelineRunUID` labels derive from them.
#![allow(dead_code)]

use super::admission::Admitting;
use super::apiserver::FakeApiServer;
use super::scheduler::{self, Cluster, node_name, pod_claims};
use super::world::{self, LEASE, OWN};
use affinity_assistant::decider::CacheDecider;
use affinity_assistant::names;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub const TEKTON_NAMESPACE: &str = "tekton-pipelines";
const ANNOTATION_TEKTON_ASSISTANT: &str = "pipeline.tekton.dev/affinity-assistant";

/// One recorded watch event.
#[derive(Clone, Debug)]
pub struct Event {
    pub t: f64,
    pub kind: String,
    pub change: String,
    pub object: Value,
    pub rv: u64,
}

impl Event {
    pub fn ns(&self) -> &str {
        str_at(&self.object, "/metadata/namespace").unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        str_at(&self.object, "/metadata/name").unwrap_or_default()
    }
    pub fn uid(&self) -> &str {
        str_at(&self.object, "/metadata/uid").unwrap_or_default()
    }
    fn id(&self) -> (String, String, String) {
        (self.kind.clone(), self.ns().to_string(), self.name().to_string())
    }
    fn owners(&self) -> Vec<&str> {
        arr(&self.object, "/metadata/ownerReferences").iter().filter_map(|r| r["uid"].as_str()).collect()
    }
    fn owned_by_statefulset(&self) -> bool {
        arr(&self.object, "/metadata/ownerReferences").iter().any(|r| r["kind"] == "StatefulSet")
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn phase(v: &Value) -> Option<&str> {
    str_at(v, "/status/phase")
}

pub fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekton/traces")
}

/// The events of a trace in resourceVersion order, NOTE lines dropped.
pub fn load(trace: &str) -> Vec<Event> {
    let path = traces_dir().join(trace);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut events: Vec<Event> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{trace}: {e}: {l}")))
        .filter(|v| v["type"] != "NOTE")
        .map(|v| {
            let object = v["object"].clone();
            let rv =
                str_at(&object, "/metadata/resourceVersion").and_then(|r| r.parse().ok()).expect("resourceVersion");
            Event {
                t: v["t"].as_f64().unwrap_or_default(),
                kind: v["kind"].as_str().unwrap_or_default().to_string(),
                change: v["type"].as_str().unwrap_or_default().to_string(),
                object,
                rv,
            }
        })
        .collect();
    events.sort_by_key(|e| e.rv);
    events
}

/// The Pipelines the trace's runs reference by name, rebuilt: the spec from the first
/// `status.pipelineSpec` recorded for a run referencing each, the annotations those that
/// Tekton merged onto that run after it was ADDED (the run's own win, so they came from the
/// Pipeline).
pub fn pipelines(events: &[Event]) -> Vec<Value> {
    let mut added: HashMap<String, BTreeMap<String, Value>> = HashMap::new();
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "PipelineRun") {
        let Some(pipeline) = str_at(&e.object, "/spec/pipelineRef/name") else { continue };
        let annotations = |o: &Value| -> BTreeMap<String, Value> {
            o.pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()
        };
        if e.change == "ADDED" {
            added.insert(e.uid().to_string(), annotations(&e.object));
            continue;
        }
        let Some(spec) = e.object.pointer("/status/pipelineSpec") else { continue };
        if out.contains_key(pipeline) {
            continue;
        }
        let before = added.get(e.uid()).cloned().unwrap_or_default();
        // The last state of this run: Tekton merges the Pipeline's annotations once; take them
        // from the run's final recorded state.
        let last = events
            .iter()
            .rfind(|x| x.kind == "PipelineRun" && x.uid() == e.uid())
            .map(|x| annotations(&x.object))
            .unwrap_or_default();
        let merged: serde_json::Map<String, Value> =
            last.into_iter().filter(|(k, _)| !before.contains_key(k)).collect();
        let mut p = json!({"apiVersion": "tekton.dev/v1", "kind": "Pipeline",
            "metadata": {"name": pipeline, "namespace": e.ns()}, "spec": spec});
        if !merged.is_empty() {
            p["metadata"]["annotations"] = Value::Object(merged);
        }
        out.insert(pipeline.to_string(), p);
    }
    out.into_values().collect()
}

/// A small seeded generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Whether `b`, recorded after `a`, cannot have happened before it: the same object; `b`
/// creates an object owned by what `a` creates; `b` creates a pod mounting the claim `a`
/// creates; `b` creates anything after `a` finished a pod (Tekton reacts to it).
fn depends(a: &Event, b: &Event) -> bool {
    if a.id() == b.id() {
        return true;
    }
    if b.change == "ADDED" && a.change == "ADDED" && b.owners().contains(&a.uid()) {
        return true;
    }
    if b.change == "ADDED" && b.kind == "Pod" && a.change == "ADDED" && a.kind == "PersistentVolumeClaim" {
        return pod_claims(&b.object).iter().any(|c| c == a.name());
    }
    if b.change == "ADDED" && a.kind == "Pod" && matches!(phase(&a.object), Some("Succeeded" | "Failed")) {
        return true;
    }
    false
}

/// The events reordered as the real system could have ordered them: only events of different
/// objects whose recorded times are within `window` of each other may swap, never against a
/// dependency ([`depends`]); the order per object is kept. Seeded, deterministic.
pub fn shuffle(events: &[Event], seed: u64, window: f64) -> Vec<Event> {
    let mut out = events.to_vec();
    let mut rng = Rng::new(seed);
    for _ in 0..12 {
        for i in 0..out.len().saturating_sub(1) {
            let (a, b) = (&out[i], &out[i + 1]);
            if rng.next().is_multiple_of(2) && (a.t - b.t).abs() <= window && !depends(a, b) {
                out.swap(i, i + 1);
            }
        }
    }
    out
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// Recorded gaps are multiplied by this ...
    pub scale: f64,
    /// ... and capped at this.
    pub cap: Duration,
    /// Shuffle within the reordering windows with this seed (None: resourceVersion order).
    pub shuffle: Option<u64>,
    /// How long the recorded kubelet waits for a pod to be bound and started in our world.
    pub start_wait: Duration,
    /// After the last event: how long to wait for placeholders to go and pods to start.
    pub settle: Duration,
    /// Tekton's `feature-flags` ConfigMap, with this `coschedule` value (None: absent).
    pub tekton_coschedule: Option<String>,
    /// The scheduler's tiebreak seed.
    pub seed: u64,
    /// How long after a DELETE a bound pod goes.
    pub pod_termination: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scale: 0.1,
            cap: Duration::from_millis(50),
            shuffle: None,
            start_wait: Duration::from_millis(1500),
            settle: Duration::from_secs(3),
            tekton_coschedule: None,
            seed: 7,
            pod_termination: Duration::from_millis(30),
        }
    }
}

/// One task pod of the replay.
#[derive(Clone, Debug, Default)]
pub struct TaskPod {
    pub namespace: String,
    pub name: String,
    pub run: String,
    /// Created before its run's `status.pipelineSpec` was written.
    pub first_wave: bool,
    /// A Tekton task pod of a run not opted out, not pinned by Tekton's own assistant,
    /// mounting a ReadWriteOnce claim.
    pub managed: bool,
    pub opted_out: bool,
    pub tekton_assistant: bool,
    pub pinned: bool,
    /// Required podAffinity terms the webhook added.
    pub added_terms: Vec<Value>,
    pub pinned_to: Option<String>,
    pub claims: Vec<String>,
    /// Why it never ran, if so.
    pub stranded: Option<String>,
    /// How long its create took through the webhook (in-process: the review, any wait, the store).
    pub admission: Duration,
    /// The decision waited (for its run's spec or its placeholder's pod).
    pub waited: bool,
}

/// What a replay measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub trace: String,
    pub mode: String,
    pub pods: Vec<TaskPod>,
    /// claim -> nodes its task pods were bound to.
    pub claim_nodes: BTreeMap<String, BTreeSet<String>>,
    /// Claims of runs not opted out.
    pub guarded_claims: BTreeSet<String>,
    /// The add-on's placeholders (names) that still exist with no active run to serve.
    pub leftover: Vec<String>,
    /// Every placeholder the add-on made during the replay.
    pub placeholders_made: BTreeSet<String>,
    pub warnings: usize,
    pub warning_texts: Vec<String>,
    pub wall: Duration,
}

impl Outcome {
    pub fn managed(&self) -> impl Iterator<Item = &TaskPod> {
        self.pods.iter().filter(|p| p.managed)
    }
    pub fn pinned_managed(&self) -> usize {
        self.managed().filter(|p| p.pinned).count()
    }
    pub fn split_claims(&self) -> Vec<String> {
        self.claim_nodes
            .iter()
            .filter(|(c, nodes)| nodes.len() > 1 && self.guarded_claims.contains(*c))
            .map(|(c, _)| c.clone())
            .collect()
    }
    /// Stranded pods of runs not opted out (the ones the add-on must not strand).
    pub fn stranded(&self) -> Vec<&TaskPod> {
        self.pods.iter().filter(|p| p.stranded.is_some() && !p.opted_out).collect()
    }
    /// Admission latencies of managed pods, `(first wave, later)`, each sorted.
    pub fn latencies(&self) -> (Vec<Duration>, Vec<Duration>) {
        let mut first: Vec<Duration> = self.managed().filter(|p| p.first_wave).map(|p| p.admission).collect();
        let mut later: Vec<Duration> = self.managed().filter(|p| !p.first_wave).map(|p| p.admission).collect();
        first.sort();
        later.sort();
        (first, later)
    }

    pub fn first_wave(&self) -> usize {
        self.pods.iter().filter(|p| p.first_wave).count()
    }
    /// Pinned pods that do not carry exactly one added term selecting their placeholder.
    pub fn bad_terms(&self) -> Vec<&TaskPod> {
        self.pods
            .iter()
            .filter(|p| p.pinned)
            .filter(|p| {
                let [term] = p.added_terms.as_slice() else { return true };
                let wanted = json!({names::LABEL_PLACEHOLDER: p.pinned_to.clone().unwrap_or_default()});
                term["topologyKey"] != names::TOPOLOGY_HOSTNAME || term["labelSelector"]["matchLabels"] != wanted
            })
            .collect()
    }

    /// The one-line summary of the figures.
    pub fn summary(&self) -> String {
        format!(
            "{:<38} {:<9} pinned {}/{} managed | split claims {} | stranded {} | leftover placeholders {} (made {}) | first-wave pods {} | webhook warnings {} | {:.2?}",
            self.trace,
            self.mode,
            self.pinned_managed(),
            self.managed().count(),
            self.split_claims().len(),
            self.stranded().len(),
            self.leftover.len(),
            self.placeholders_made.len(),
            self.first_wave(),
            self.warnings,
            self.wall
        )
    }

    /// The summary, then a line per pod that is unpinned-but-managed, stranded or badly pinned.
    pub fn report(&self) -> String {
        let mut out = self.summary();
        for p in &self.pods {
            let mut notes = Vec::new();
            if p.managed && !p.pinned {
                notes.push("managed, NOT pinned".to_string());
            }
            if let Some(why) = &p.stranded {
                notes.push(format!("stranded: {why}"));
            }
            if p.first_wave {
                notes.push("first wave".into());
            }
            if !notes.is_empty() {
                out.push_str(&format!("\n    {}/{}: {}", p.namespace, p.name, notes.join("; ")));
            }
        }
        for c in self.split_claims() {
            out.push_str(&format!("\n    claim {c} split over {:?}", self.claim_nodes[&c]));
        }
        for l in &self.leftover {
            out.push_str(&format!("\n    placeholder {l} left after its runs ended"));
        }
        for w in &self.warning_texts {
            out.push_str(&format!("\n    warning: {w}"));
        }
        out
    }

    /// The assertions every trace must pass.
    pub fn check(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let unpinned: Vec<&str> = self.managed().filter(|p| !p.pinned).map(|p| p.name.as_str()).collect();
        if !unpinned.is_empty() {
            failures.push(format!("{} managed pods not pinned: {unpinned:?}", unpinned.len()));
        }
        let split = self.split_claims();
        if !split.is_empty() {
            failures.push(format!("claims split over nodes: {split:?}"));
        }
        let stranded: Vec<String> = self
            .stranded()
            .iter()
            .map(|p| format!("{} ({})", p.name, p.stranded.clone().unwrap_or_default()))
            .collect();
        if !stranded.is_empty() {
            failures.push(format!("stranded pods: {stranded:?}"));
        }
        if !self.leftover.is_empty() {
            failures.push(format!("placeholders left after their runs ended: {:?}", self.leftover));
        }
        let bad: Vec<&str> = self.bad_terms().iter().map(|p| p.name.as_str()).collect();
        if !bad.is_empty() {
            failures.push(format!("pinned pods without exactly one added term to their placeholder: {bad:?}"));
        }
        failures
    }
}

fn dyn_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version, plural) = match kind {
        "PipelineRun" => ("tekton.dev", "v1", "pipelineruns"),
        "TaskRun" => ("tekton.dev", "v1", "taskruns"),
        "Pipeline" => ("tekton.dev", "v1", "pipelines"),
        "StatefulSet" => ("apps", "v1", "statefulsets"),
        "PersistentVolumeClaim" => ("", "v1", "persistentvolumeclaims"),
        "Pod" => ("", "v1", "pods"),
        other => panic!("no API for {other}"),
    };
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version,
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// What a client sends on create: the recorded object minus what the server and the other
/// controllers set.
fn for_create(obj: &Value) -> Value {
    let mut out = json!({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": {}});
    for field in ["name", "namespace", "uid", "labels", "annotations", "ownerReferences"] {
        if let Some(v) = obj["metadata"].get(field) {
            out["metadata"][field] = v.clone();
        }
    }
    if let Some(spec) = obj.get("spec") {
        out["spec"] = spec.clone();
    }
    out
}

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a recorded object deserializes")
}

fn required_terms(pod: &Value) -> Vec<Value> {
    arr(pod, "/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution").to_vec()
}

fn run_done(run: &Value) -> bool {
    arr(run, "/status/conditions")
        .iter()
        .any(|c| c["type"] == "Succeeded" && matches!(c["status"].as_str(), Some("True" | "False")))
}

fn is_placeholder(obj: &Value) -> bool {
    str_at(obj, &format!("/metadata/labels/{}", names::LABEL_APP_MANAGED_BY.replace('/', "~1")))
        == Some(names::APP_NAME)
}

/// Replays one trace and measures; panics only on harness errors.
pub async fn replay(trace: &str, options: &Options) -> Outcome {
    let started = std::time::Instant::now();
    let recorded = load(trace);
    let events = match options.shuffle {
        Some(seed) => shuffle(&recorded, seed, 0.010),
        None => recorded.clone(),
    };
    let namespace = recorded.iter().map(|e| e.ns().to_string()).find(|n| !n.is_empty()).expect("a namespaced event");

    // The cluster, before the add-on starts.
    let server = FakeApiServer::new();
    server.set_keep_uids(true);
    server.set_pod_termination(options.pod_termination);
    server.run_statefulset_controller();
    Cluster::install(&server);
    for ns in [namespace.as_str(), OWN, TEKTON_NAMESPACE] {
        server.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    server.insert(world::leader_lease("replay"));
    super::admission::install_webhook_configuration(&server, OWN);
    if let Some(value) = &options.tekton_coschedule {
        server.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "feature-flags", "namespace": TEKTON_NAMESPACE}, "data": {"coschedule": value}}));
    }
    let plain = server.client();
    for p in pipelines(&recorded) {
        dyn_api(&plain, &namespace, "Pipeline").create(&PostParams::default(), &object(p)).await.expect("Pipeline");
    }

    // The add-on, as it ships.
    let controller = world::Controller::start_with(plain.clone(), "replay", true, Some(TEKTON_NAMESPACE));
    let waits = affinity_assistant::webhook::metrics::WaitMetrics::register(&mut Default::default());
    let mut decider = CacheDecider::new(controller.caches.clone(), Some(plain.clone()), OWN, LEASE);
    decider.metrics = Some(waits.clone());
    let decider = Arc::new(decider);
    let waited = || -> u64 {
        let kinds = ["pipeline-spec", "placeholder-pod"];
        kinds.iter().flat_map(|k| [waits.count(k, "decided"), waits.count(k, "budget")]).sum()
    };
    let admitting = Admitting::new(server.clone(), decider.clone());
    let admitted = admitting.client();
    let cluster = Cluster::new(server.clone(), options.seed);
    let bindings = cluster.bindings();
    let cluster_task = cluster.spawn();
    let caches = controller.caches.clone();
    let flags_known = options.tekton_coschedule.is_none();
    world::eventually("the add-on's caches", Duration::from_secs(10), || {
        caches.ready() && decider.controller_alive() && (flags_known || caches.assistant_flag("tekton").is_some())
    })
    .await;

    // Placeholders made, seen as they come (they may be gone at the end).
    let made: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let watcher = {
        let (server, made) = (server.clone(), made.clone());
        let mut rx = server.changes();
        tokio::spawn(async move {
            loop {
                for s in server.list("statefulsets", "").iter().filter(|s| is_placeholder(s)) {
                    let name = str_at(s, "/metadata/name").unwrap_or_default().to_string();
                    made.lock().unwrap_or_else(|e| e.into_inner()).insert(name);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let mut last: HashMap<(String, String, String), Value> = HashMap::new();
    let mut spec_written: HashSet<String> = HashSet::new();
    let mut pods: Vec<TaskPod> = Vec::new();
    let final_runs: HashMap<String, Value> =
        recorded.iter().filter(|e| e.kind == "PipelineRun").map(|e| (e.name().to_string(), e.object.clone())).collect();
    let claim_modes: HashMap<String, Vec<String>> = recorded
        .iter()
        .filter(|e| e.kind == "PersistentVolumeClaim")
        .map(|e| {
            let modes =
                arr(&e.object, "/spec/accessModes").iter().filter_map(|m| m.as_str().map(String::from)).collect();
            (e.name().to_string(), modes)
        })
        .collect();
    let mut prev_t = 0.0f64;
    for e in &events {
        let gap = ((e.t - prev_t).max(0.0) * options.scale).min(options.cap.as_secs_f64());
        prev_t = prev_t.max(e.t);
        if gap > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        let before = last.insert(e.id(), e.object.clone());
        let ns = e.ns().to_string();
        let name = e.name().to_string();
        match (e.kind.as_str(), e.change.as_str()) {
            ("PipelineRun", "ADDED") => {
                dyn_api(&plain, &ns, "PipelineRun")
                    .create(&PostParams::default(), &object(for_create(&e.object)))
                    .await
                    .expect("create run");
            }
            ("PipelineRun", "MODIFIED") => {
                let before = before.unwrap_or(json!({}));
                let api = dyn_api(&plain, &ns, "PipelineRun");
                let meta_changed = ["labels", "annotations"]
                    .iter()
                    .any(|f| before["metadata"].get(*f) != e.object["metadata"].get(*f));
                if meta_changed || before.get("spec") != e.object.get("spec") {
                    let mut current = serde_json::to_value(api.get(&name).await.expect("run")).expect("JSON");
                    for f in ["labels", "annotations"] {
                        current["metadata"][f] = e.object["metadata"].get(f).cloned().unwrap_or(Value::Null);
                    }
                    current["spec"] = e.object["spec"].clone();
                    api.replace(&name, &PostParams::default(), &object(current)).await.expect("update run");
                }
                if before.get("status") != e.object.get("status") {
                    let mut current = serde_json::to_value(api.get(&name).await.expect("run")).expect("JSON");
                    current["status"] = e.object["status"].clone();
                    api.replace_status(&name, &PostParams::default(), &object(current)).await.expect("run status");
                    if e.object.pointer("/status/pipelineSpec").is_some() {
                        spec_written.insert(name.clone());
                    }
                }
            }
            ("TaskRun", "ADDED") | ("StatefulSet", "ADDED") => {
                dyn_api(&plain, &ns, &e.kind)
                    .create(&PostParams::default(), &object(for_create(&e.object)))
                    .await
                    .expect("create");
            }
            ("StatefulSet", "DELETED") => {
                let _ = dyn_api(&plain, &ns, "StatefulSet").delete(&name, &DeleteParams::background()).await;
            }
            ("PersistentVolumeClaim", "ADDED") => {
                let mut pvc = for_create(&e.object);
                if let Some(a) = pvc["metadata"]["annotations"].as_object_mut() {
                    a.retain(|k, _| {
                        !(k.starts_with("pv.kubernetes.io/")
                            || k.starts_with("volume.kubernetes.io/")
                            || k.starts_with("volume.beta.kubernetes.io/"))
                    });
                }
                if let Some(spec) = pvc["spec"].as_object_mut() {
                    spec.remove("volumeName");
                }
                dyn_api(&plain, &ns, "PersistentVolumeClaim")
                    .create(&PostParams::default(), &object(pvc))
                    .await
                    .expect("PVC");
            }
            ("Pod", _) if e.owned_by_statefulset() => {}
            ("Pod", "ADDED") => {
                let mut pod = for_create(&e.object);
                if let Some(spec) = pod["spec"].as_object_mut() {
                    spec.remove("nodeName");
                }
                let api: Api<Pod> = Api::namespaced(admitted.clone(), &ns);
                let (waits_before, started) = (waited(), std::time::Instant::now());
                let created = api.create(&PostParams::default(), &object(pod)).await.expect("pod create");
                let admission = started.elapsed();
                let did_wait = waited() > waits_before;
                let created = serde_json::to_value(created).expect("JSON");
                let run = str_at(&e.object, "/metadata/labels/tekton.dev~1pipelineRun").unwrap_or_default().to_string();
                let run_obj = final_runs.get(&run).cloned().unwrap_or(json!({}));
                let opt_out =
                    |o: &Value| str_at(o, "/metadata/annotations/affinity-assistant.dev~1enabled") == Some("false");
                let opted_out = opt_out(&run_obj) || opt_out(&e.object);
                let tekton_assistant = e
                    .object
                    .pointer(&format!("/metadata/annotations/{}", ANNOTATION_TEKTON_ASSISTANT.replace('/', "~1")))
                    .is_some();
                let claims = pod_claims(&e.object);
                let rwo = claims.iter().any(|c| {
                    let modes = claim_modes.get(c).cloned().unwrap_or_default();
                    modes.iter().any(|m| m == "ReadWriteOnce")
                        && !modes.iter().any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany")
                });
                let original = required_terms(&e.object);
                let added: Vec<Value> =
                    required_terms(&created).into_iter().filter(|t| !original.contains(t)).collect();
                let pinned_label =
                    str_at(&created, &format!("/metadata/labels/{}", names::LABEL_PINNED.replace('/', "~1")))
                        == Some("true");
                pods.push(TaskPod {
                    namespace: ns.clone(),
                    name: name.clone(),
                    first_wave: !spec_written.contains(&run),
                    managed: !opted_out && !tekton_assistant && rwo,
                    opted_out,
                    tekton_assistant,
                    pinned: pinned_label || !added.is_empty(),
                    added_terms: added,
                    pinned_to: str_at(
                        &created,
                        &format!("/metadata/annotations/{}", names::ANNOTATION_PINNED_TO.replace('/', "~1")),
                    )
                    .map(String::from),
                    claims,
                    run,
                    stranded: None,
                    admission,
                    waited: did_wait,
                });
            }
            ("Pod", "MODIFIED") => {
                let before = before.unwrap_or(json!({}));
                let api: Api<Pod> = Api::namespaced(plain.clone(), &ns);
                if e.object.pointer("/metadata/deletionTimestamp").is_some()
                    && before.pointer("/metadata/deletionTimestamp").is_none()
                {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                    continue;
                }
                let done = matches!(phase(&e.object), Some("Succeeded" | "Failed"));
                if done && phase(&e.object) != phase(&before) {
                    let why = wait_started(&server, &ns, &name, options.start_wait).await;
                    if let Some(why) = why.clone()
                        && let Some(p) = pods.iter_mut().find(|p| p.namespace == ns && p.name == name)
                    {
                        p.stranded.get_or_insert(why);
                    }
                    if server.get("pods", &ns, &name).is_some() {
                        let status = json!({"status": {"phase": phase(&e.object)}});
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await
                            .expect("pod status");
                    }
                }
            }
            ("Pod", "DELETED") => {
                let api: Api<Pod> = Api::namespaced(plain.clone(), &ns);
                if server.get("pods", &ns, &name).is_some_and(|p| !scheduler::terminating(&p)) {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
            }
            _ => {}
        }
    }

    // Settle: unfinished task pods of the trace must start; the add-on's placeholders with no
    // active run left must go.
    let deadline = Instant::now() + options.settle;
    let leftover = |server: &FakeApiServer| -> Vec<String> {
        let runs: HashMap<String, Value> = server
            .list("pipelineruns.tekton.dev", "")
            .into_iter()
            .map(|r| (str_at(&r, "/metadata/uid").unwrap_or_default().to_string(), r))
            .collect();
        server
            .list("statefulsets", "")
            .into_iter()
            .filter(is_placeholder)
            .filter(|s| {
                !arr(s, "/metadata/ownerReferences")
                    .iter()
                    .filter(|o| o["kind"] == "PipelineRun")
                    .any(|o| o["uid"].as_str().and_then(|u| runs.get(u)).is_some_and(|r| !run_done(r)))
            })
            .map(|s| str_at(&s, "/metadata/name").unwrap_or_default().to_string())
            .collect()
    };
    let unstarted = |server: &FakeApiServer, pods: &[TaskPod]| -> Vec<(String, String)> {
        pods.iter()
            .filter(|p| p.stranded.is_none())
            .filter_map(|p| {
                let pod = server.get("pods", &p.namespace, &p.name)?;
                let waiting = !scheduler::terminating(&pod) && phase(&pod) == Some("Pending");
                waiting.then(|| (p.namespace.clone(), p.name.clone()))
            })
            .collect()
    };
    while Instant::now() < deadline && (!leftover(&server).is_empty() || !unstarted(&server, &pods).is_empty()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (ns, name) in unstarted(&server, &pods) {
        let why = not_started(&server, &ns, &name);
        if let Some(p) = pods.iter_mut().find(|p| p.namespace == ns && p.name == name) {
            p.stranded = Some(format!("{why} at the end"));
        }
    }
    let leftover = leftover(&server);

    // Claims: the nodes their task pods were bound to.
    let mut claim_nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let task_pods: HashMap<(String, String), &TaskPod> =
        pods.iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
    for b in bindings.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if task_pods.contains_key(&(b.namespace.clone(), b.pod.clone())) {
            for c in &b.claims {
                claim_nodes.entry(c.clone()).or_default().insert(b.node.clone());
            }
        }
    }
    let guarded_claims = pods.iter().filter(|p| !p.opted_out).flat_map(|p| p.claims.clone()).collect();

    watcher.abort();
    cluster_task.abort();
    controller.stop().await;
    let mode = match (&options.shuffle, &options.tekton_coschedule) {
        (None, None) => "ordered",
        (Some(_), None) => "shuffled",
        (None, Some(_)) => "ordered+flags",
        (Some(_), Some(_)) => "shuffled+flags",
    };
    let reviews = admitting.reviews();
    Outcome {
        trace: trace.trim_end_matches(".jsonl").to_string(),
        mode: mode.to_string(),
        pods,
        claim_nodes,
        guarded_claims,
        leftover,
        placeholders_made: made.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        warnings: admitting.warnings(),
        warning_texts: reviews.iter().flat_map(|r| r.warnings.iter().map(move |w| format!("{}: {w}", r.pod))).collect(),
        wall: started.elapsed(),
    }
}

/// Waits until the pod is bound and Running (started) in our world; `Some(why)` if it is not
/// within `wait` (it is gone: `None`, nothing to finish).
async fn wait_started(server: &FakeApiServer, ns: &str, name: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let pod = server.get("pods", ns, name)?;
        if node_name(&pod).is_some() && phase(&pod) == Some("Running") {
            return None;
        }
        if Instant::now() > deadline {
            return Some(not_started(server, ns, name));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Why a pod has not started: never bound (with the scheduler's message), or bound and unable
/// to start (the Multi-Attach error).
fn not_started(server: &FakeApiServer, ns: &str, name: &str) -> String {
    let Some(pod) = server.get("pods", ns, name) else { return "gone".into() };
    match node_name(&pod) {
        None => {
            let msg = arr(&pod, "/status/conditions")
                .iter()
                .find(|c| c["type"] == "PodScheduled")
                .and_then(|c| c["message"].as_str())
                .unwrap_or("not tried yet");
            format!("never bound: {msg}")
        }
        Some(node) => {
            let snap = scheduler::Snapshot::read(server);
            let why = scheduler::multi_attach(&pod, &snap).unwrap_or_else(|| "not started".into());
            format!("bound to {node}, cannot start: {why}")
        }
    }
}
