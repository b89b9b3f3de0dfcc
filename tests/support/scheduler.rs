//! Stand-ins for kube-scheduler, the volume provisioner / PV controller and the kubelet, for
//! tests that need pods placed the way a real cluster places them (the trace replay).
//!
//! The cluster: 6 nodes `node-a`..`node-f` (labels `kubernetes.io/hostname`,
//! `topology.kubernetes.io/zone`: `zone-a` for a, c, e and `zone-b` for b, d, f) and a default
//! StorageClass `standard` with `WaitForFirstConsumer` binding and zonal volumes.
//!
//! The scheduler binds each Pending pod (no `spec.nodeName`, not being deleted) to a node that
//! passes, as kube-scheduler's filters do: `spec.unschedulable` (cordon), `nodeSelector`,
//! required nodeAffinity (`matchExpressions` In/NotIn/Exists/DoesNotExist/Gt/Lt on node labels,
//! `matchFields` on `metadata.name`), taints with effect NoSchedule/NoExecute against
//! tolerations (Exists/Equal, empty key/effect wildcards), volumes (every claim must exist; a
//! bound claim's PersistentVolume node affinity must match the node), required podAffinity
//! (an existing bound, non-terminating, unfinished pod must match ALL the terms, and for every
//! term such a pod must be in the node's topology domain; when no pod anywhere matches all
//! the terms, a pod matching all its own terms may go anywhere, as kube-scheduler allows the
//! first pod of a group) and required podAntiAffinity (the incoming pod's terms only).
//! Among feasible nodes it prefers fewer pods matching its preferred anti-affinity terms
//! (weighted; placeholders spread), then more matching its preferred affinity terms, then the
//! least loaded node (unfinished pods bound there), then a seeded hash of (pod, node): so
//! unpinned pods of one claim can land on different nodes, as they did for real. A pod it
//! cannot place gets `PodScheduled=False`, reason `Unschedulable`, with a message in
//! kube-scheduler's form (`0/6 nodes are available: ...`).
//!
//! On binding, every unbound claim of the pod is provisioned at once in the chosen node's zone
//! (WaitForFirstConsumer): a PersistentVolume with `spec.nodeAffinity.required` on the zone,
//! the claim's access modes and capacity, a `claimRef`; the claim gets `spec.volumeName`, the
//! `volume.kubernetes.io/selected-node` annotation and `status.phase: Bound`.
//!
//! The kubelet starts a bound pod (phase `Running`) unless one of its ReadWriteOnce volumes is
//! in use on another node (an unfinished Running pod there mounts it): the Multi-Attach error,
//! the pod waits until the volume is free.
//!
//! Not modelled: resources and capacity (no pod is refused for cpu/memory, no preemption),
//! topology spread constraints, inter-pod affinity from existing pods' anti-affinity towards
//! the incoming pod (symmetry), `namespaceSelector` in pod affinity terms, `Immediate` volume
//! binding (every class is treated as WaitForFirstConsumer), provisioning latency (binding is
//! instant), volume limits per node, node readiness, scheduling gates, images, container
//! restarts; the kubelet never finishes a pod by itself.
#![allow(dead_code)]

use super::apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const NODES: [&str; 6] = ["node-a", "node-b", "node-c", "node-d", "node-e", "node-f"];
pub const STORAGE_CLASS: &str = "standard";

pub fn zone_of(node: &str) -> &'static str {
    match node {
        "node-a" | "node-c" | "node-e" => "zone-a",
        _ => "zone-b",
    }
}

/// The six nodes of the recorded cluster.
pub fn nodes() -> Vec<Value> {
    NODES
        .iter()
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n, "labels": {HOSTNAME: n, ZONE: zone_of(n), "kubernetes.io/os": "linux"}},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
                    "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}})
        })
        .collect()
}

/// The default StorageClass: WaitForFirstConsumer, zonal volumes.
pub fn storage_class() -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "zonal.example.com", "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"})
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

pub fn node_name(pod: &Value) -> Option<&str> {
    s(pod, "/spec/nodeName").filter(|n| !n.is_empty())
}

pub fn finished(pod: &Value) -> bool {
    matches!(s(pod, "/status/phase"), Some("Succeeded" | "Failed"))
}

pub fn terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// The claims a pod mounts.
pub fn pod_claims(pod: &Value) -> Vec<String> {
    arr(pod, "/spec/volumes")
        .iter()
        .filter_map(|v| s(v, "/persistentVolumeClaim/claimName"))
        .map(String::from)
        .collect()
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// A metav1.LabelSelector (matchLabels and matchExpressions) against labels. A missing or
/// null selector matches nothing, as in pod affinity terms.
pub fn selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    if !sel.is_object() {
        return false;
    }
    let ml = sel.get("matchLabels").and_then(Value::as_object).into_iter().flatten();
    let labels_ok = ml.clone().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    labels_ok && arr(sel, "/matchExpressions").iter().all(|e| expression_matches(e, |k| labels.get(k).cloned()))
}

/// One match expression (label selector or node selector requirement).
fn expression_matches(e: &Value, get: impl Fn(&str) -> Option<String>) -> bool {
    let key = s(e, "/key").unwrap_or_default();
    let values: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
    let got = get(key);
    match s(e, "/operator").unwrap_or_default() {
        "In" => got.is_some_and(|g| values.contains(&g.as_str())),
        "NotIn" => got.is_none_or(|g| !values.contains(&g.as_str())),
        "Exists" => got.is_some(),
        "DoesNotExist" => got.is_none(),
        "Gt" => got
            .and_then(|g| g.parse::<i64>().ok())
            .zip(values.first().and_then(|v| v.parse::<i64>().ok()))
            .is_some_and(|(g, v)| g > v),
        "Lt" => got
            .and_then(|g| g.parse::<i64>().ok())
            .zip(values.first().and_then(|v| v.parse::<i64>().ok()))
            .is_some_and(|(g, v)| g < v),
        _ => false,
    }
}

/// A NodeSelector (`nodeSelectorTerms`, ORed; each term's expressions ANDed) against a node.
pub fn node_selector_matches(sel: &Value, node: &Value) -> bool {
    let terms = arr(sel, "/nodeSelectorTerms");
    let node_labels = labels(node);
    let name = s(node, "/metadata/name").unwrap_or_default().to_string();
    terms.iter().any(|t| {
        let exprs = arr(t, "/matchExpressions");
        let fields = arr(t, "/matchFields");
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|e| expression_matches(e, |k| node_labels.get(k).cloned()))
            && fields.iter().all(|e| expression_matches(e, |k| (k == "metadata.name").then(|| name.clone())))
    })
}

/// Whether a toleration tolerates a taint.
pub fn tolerates(t: &Value, taint: &Value) -> bool {
    let effect_ok = s(t, "/effect").is_none_or(|e| e.is_empty() || Some(e) == s(taint, "/effect"));
    let key = s(t, "/key").unwrap_or_default();
    match s(t, "/operator").unwrap_or("Equal") {
        "Exists" => effect_ok && (key.is_empty() || Some(key) == s(taint, "/key")),
        _ => {
            effect_ok
                && Some(key) == s(taint, "/key")
                && s(t, "/value").unwrap_or_default() == s(taint, "/value").unwrap_or_default()
        }
    }
}

/// What the scheduler sees.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub nodes: Vec<Value>,
    pub pods: Vec<Value>,
    /// (namespace, name) -> PVC
    pub claims: HashMap<(String, String), Value>,
    pub volumes: HashMap<String, Value>,
}

impl Snapshot {
    pub fn read(server: &FakeApiServer) -> Snapshot {
        let mut nodes = server.list("nodes", "");
        nodes.sort_by(|a, b| s(a, "/metadata/name").cmp(&s(b, "/metadata/name")));
        Snapshot {
            nodes,
            pods: server.list("pods", ""),
            claims: server
                .list("persistentvolumeclaims", "")
                .into_iter()
                .map(|c| {
                    let key = (
                        s(&c, "/metadata/namespace").unwrap_or_default().to_string(),
                        s(&c, "/metadata/name").unwrap_or_default().to_string(),
                    );
                    (key, c)
                })
                .collect(),
            volumes: server
                .list("persistentvolumes", "")
                .into_iter()
                .map(|v| (s(&v, "/metadata/name").unwrap_or_default().to_string(), v))
                .collect(),
        }
    }

    fn node(&self, name: &str) -> Option<&Value> {
        self.nodes.iter().find(|n| s(n, "/metadata/name") == Some(name))
    }

    /// Bound, unfinished, not terminating pods: the ones affinity counts.
    fn placed(&self) -> impl Iterator<Item = &Value> {
        self.pods.iter().filter(|p| node_name(p).is_some() && !finished(p) && !terminating(p))
    }

    fn domain<'a>(&'a self, node: &'a Value, key: &str) -> Option<&'a str> {
        s(node, &format!("/metadata/labels/{}", key.replace('~', "~0").replace('/', "~1")))
    }

    fn same_domain(&self, pod: &Value, node: &Value, key: &str) -> bool {
        let Some(want) = self.domain(node, key) else { return false };
        node_name(pod).and_then(|n| self.node(n)).and_then(|n| self.domain(n, key)) == Some(want)
    }
}

fn term_namespaces(term: &Value, pod_ns: &str) -> Vec<String> {
    let listed: Vec<String> = arr(term, "/namespaces").iter().filter_map(Value::as_str).map(String::from).collect();
    if listed.is_empty() { vec![pod_ns.to_string()] } else { listed }
}

fn term_matches(term: &Value, pod_ns: &str, other: &Value) -> bool {
    let ns = s(other, "/metadata/namespace").unwrap_or_default();
    term_namespaces(term, pod_ns).iter().any(|n| n == ns)
        && selector_matches(term.get("labelSelector").unwrap_or(&Value::Null), &labels(other))
}

/// Why `node` cannot take `pod`, or `None` when it can.
pub fn filter(pod: &Value, node: &Value, snap: &Snapshot) -> Option<String> {
    let ns = s(pod, "/metadata/namespace").unwrap_or_default();
    let node_labels = labels(node);
    let tolerations = arr(pod, "/spec/tolerations");
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        let taint = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Some("node(s) were unschedulable".into());
        }
    }
    let selector = pod.pointer("/spec/nodeSelector").and_then(Value::as_object);
    if selector.is_some_and(|sel| sel.iter().any(|(k, v)| node_labels.get(k).map(String::as_str) != v.as_str())) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if let Some(required) = pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
        && !node_selector_matches(required, node)
    {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    for taint in arr(node, "/spec/taints") {
        let hard = matches!(s(taint, "/effect"), Some("NoSchedule" | "NoExecute"));
        if hard && !tolerations.iter().any(|t| tolerates(t, taint)) {
            let (k, v) = (s(taint, "/key").unwrap_or_default(), s(taint, "/value").unwrap_or_default());
            return Some(format!("node(s) had untolerated taint {{{k}: {v}}}"));
        }
    }
    for claim in pod_claims(pod) {
        let Some(pvc) = snap.claims.get(&(ns.to_string(), claim.clone())) else {
            return Some(format!("persistentvolumeclaim \"{claim}\" not found"));
        };
        if terminating(pvc) {
            return Some(format!("persistentvolumeclaim \"{claim}\" is being deleted"));
        }
        if let Some(pv) = s(pvc, "/spec/volumeName").filter(|v| !v.is_empty()) {
            let Some(volume) = snap.volumes.get(pv) else {
                return Some(format!("persistentvolume \"{pv}\" not found"));
            };
            if let Some(required) = volume.pointer("/spec/nodeAffinity/required")
                && !node_selector_matches(required, node)
            {
                return Some("node(s) had volume node affinity conflict".into());
            }
        }
    }
    let affinity = arr(pod, "/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution");
    if !affinity.is_empty() {
        // kube-scheduler counts an existing pod only when it matches every term.
        let matching: Vec<&Value> = snap.placed().filter(|p| affinity.iter().all(|t| term_matches(t, ns, p))).collect();
        if matching.is_empty() {
            let own = affinity.iter().all(|t| term_matches(t, ns, pod));
            if !own {
                return Some("node(s) didn't match pod affinity rules".into());
            }
        } else {
            let key_of = |t: &Value| s(t, "/topologyKey").unwrap_or_default().to_string();
            let ok = affinity.iter().all(|t| matching.iter().any(|p| snap.same_domain(p, node, &key_of(t))));
            if !ok {
                return Some("node(s) didn't match pod affinity rules".into());
            }
        }
    }
    for term in arr(pod, "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution") {
        let key = s(term, "/topologyKey").unwrap_or_default();
        let uid = s(pod, "/metadata/uid");
        if snap
            .placed()
            .any(|p| s(p, "/metadata/uid") != uid && term_matches(term, ns, p) && snap.same_domain(p, node, key))
        {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    None
}

/// The node for a pod, or kube-scheduler's message of why none fits.
pub fn choose(pod: &Value, snap: &Snapshot, seed: u64) -> Result<String, String> {
    let ns = s(pod, "/metadata/namespace").unwrap_or_default();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    for node in &snap.nodes {
        match filter(pod, node, snap) {
            Some(why) => *reasons.entry(why).or_default() += 1,
            None => feasible.push(node),
        }
    }
    let preferred = |path: &str, node: &Value| -> i64 {
        arr(pod, path)
            .iter()
            .map(|w| {
                let term = w.get("podAffinityTerm").unwrap_or(&Value::Null);
                let key = s(term, "/topologyKey").unwrap_or_default();
                let n = snap.placed().filter(|p| term_matches(term, ns, p) && snap.same_domain(p, node, key)).count();
                w["weight"].as_i64().unwrap_or(1) * n as i64
            })
            .sum()
    };
    let load = |node: &Value| snap.placed().filter(|p| node_name(p) == s(node, "/metadata/name")).count();
    let tiebreak = |node: &Value| {
        let mut h = DefaultHasher::new();
        (seed, s(pod, "/metadata/name"), s(node, "/metadata/name")).hash(&mut h);
        h.finish()
    };
    let best = feasible.into_iter().min_by_key(|n| {
        (
            preferred("/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution", n),
            -preferred("/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution", n),
            load(n),
            tiebreak(n),
        )
    });
    match best {
        Some(n) => Ok(s(n, "/metadata/name").unwrap_or_default().to_string()),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(why, n)| format!("{n} {why}")).collect();
            Err(format!(
                "0/{} nodes are available: {}. preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.",
                snap.nodes.len(),
                parts.join(", "),
                snap.nodes.len(),
                snap.nodes.len()
            ))
        }
    }
}

/// Whether a claim is ReadWriteOnce (attachable to one node at a time).
fn rwo(pvc: &Value) -> bool {
    let modes: Vec<&str> = {
        let status = arr(pvc, "/status/accessModes");
        let list = if status.is_empty() { arr(pvc, "/spec/accessModes") } else { status };
        list.iter().filter_map(Value::as_str).collect()
    };
    modes.contains(&"ReadWriteOnce") && !modes.contains(&"ReadWriteMany") && !modes.contains(&"ReadOnlyMany")
}

/// Why the kubelet cannot start a bound pod: a ReadWriteOnce volume in use on another node.
pub fn multi_attach(pod: &Value, snap: &Snapshot) -> Option<String> {
    let ns = s(pod, "/metadata/namespace").unwrap_or_default();
    let node = node_name(pod)?;
    for claim in pod_claims(pod) {
        let Some(pvc) = snap.claims.get(&(ns.to_string(), claim.clone())) else { continue };
        if !rwo(pvc) {
            continue;
        }
        let elsewhere = snap.pods.iter().find(|p| {
            s(p, "/metadata/namespace") == Some(ns)
                && s(p, "/status/phase") == Some("Running")
                && node_name(p).is_some_and(|n| n != node)
                && pod_claims(p).contains(&claim)
        });
        if let Some(other) = elsewhere {
            return Some(format!(
                "Multi-Attach error for volume of claim \"{claim}\": Volume is already used by pod {} on {}",
                s(other, "/metadata/name").unwrap_or_default(),
                node_name(other).unwrap_or_default()
            ));
        }
    }
    None
}

/// One binding the scheduler made.
#[derive(Clone, Debug)]
pub struct Binding {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub claims: Vec<String>,
}

/// The scheduler, provisioner and kubelet, driven against a server.
pub struct Cluster {
    server: FakeApiServer,
    client: Client,
    seed: u64,
    bindings: Arc<Mutex<Vec<Binding>>>,
    /// First-seen order of pods (scheduling queue order), by uid.
    queue: HashMap<String, u64>,
    next: u64,
}

impl Cluster {
    pub fn new(server: FakeApiServer, seed: u64) -> Self {
        let client = server.client();
        Cluster { server, client, seed, bindings: Arc::default(), queue: HashMap::new(), next: 0 }
    }

    /// Every binding made, in order (shared: it keeps filling while the stand-ins run).
    pub fn bindings(&self) -> Arc<Mutex<Vec<Binding>>> {
        self.bindings.clone()
    }

    /// Installs the nodes and the StorageClass.
    pub fn install(server: &FakeApiServer) {
        for n in nodes() {
            server.insert(n);
        }
        server.insert(storage_class());
    }

    /// Runs the stand-ins until the task is aborted: a pass on every change (and every 100 ms).
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        let mut rx = self.server.changes();
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.pass().await {
                    eprintln!("scheduler stand-in: {e:#}");
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        })
    }

    /// One scheduling and kubelet pass.
    pub async fn pass(&mut self) -> anyhow::Result<()> {
        let mut snap = Snapshot::read(&self.server);
        let mut pending: Vec<Value> = snap
            .pods
            .iter()
            .filter(|p| node_name(p).is_none() && !terminating(p) && !finished(p))
            .filter(|p| s(p, "/spec/schedulerName").is_none_or(|n| n == "default-scheduler"))
            .cloned()
            .collect();
        for p in &pending {
            let uid = s(p, "/metadata/uid").unwrap_or_default().to_string();
            if !self.queue.contains_key(&uid) {
                self.queue.insert(uid, self.next);
                self.next += 1;
            }
        }
        pending.sort_by_key(|p| self.queue.get(s(p, "/metadata/uid").unwrap_or_default()).copied().unwrap_or(u64::MAX));
        for pod in pending {
            match choose(&pod, &snap, self.seed) {
                Ok(node) => {
                    if self.bind(&pod, &node, &mut snap).await? {
                        let uid = s(&pod, "/metadata/uid").unwrap_or_default().to_string();
                        self.queue.remove(&uid);
                    }
                }
                Err(message) => self.unschedulable(&pod, &message).await?,
            }
        }
        // The kubelet.
        let waiting: Vec<Value> = snap
            .pods
            .iter()
            .filter(|p| node_name(p).is_some() && !terminating(p) && s(p, "/status/phase") == Some("Pending"))
            .cloned()
            .collect();
        for pod in waiting {
            if multi_attach(&pod, &snap).is_some() {
                continue;
            }
            let (ns, name) =
                (s(&pod, "/metadata/namespace").unwrap_or_default(), s(&pod, "/metadata/name").unwrap_or_default());
            let status = json!({"metadata": {"resourceVersion": s(&pod, "/metadata/resourceVersion")},
                "status": {"phase": "Running", "startTime": now()}});
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            if api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.is_ok()
                && let Some(p) = snap.pods.iter_mut().find(|p| s(p, "/metadata/uid") == s(&pod, "/metadata/uid"))
            {
                p["status"]["phase"] = "Running".into();
            }
        }
        Ok(())
    }

    /// Provisions the pod's unbound claims in the node's zone and binds the pod. False when the
    /// pod changed meanwhile (it is tried again on the next pass).
    async fn bind(&self, pod: &Value, node: &str, snap: &mut Snapshot) -> anyhow::Result<bool> {
        let ns = s(pod, "/metadata/namespace").unwrap_or_default().to_string();
        let name = s(pod, "/metadata/name").unwrap_or_default().to_string();
        for claim in pod_claims(pod) {
            let key = (ns.clone(), claim.clone());
            let Some(pvc) = snap.claims.get(&key).cloned() else { continue };
            if s(&pvc, "/spec/volumeName").is_some_and(|v| !v.is_empty()) {
                continue;
            }
            let pv_name = format!("pvc-{}", s(&pvc, "/metadata/uid").unwrap_or_default());
            let modes = pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"]));
            let size = pvc.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"));
            let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": "zonal.example.com"}},
                "spec": {"accessModes": modes, "capacity": {"storage": size},
                    "storageClassName": s(&pvc, "/spec/storageClassName").unwrap_or(STORAGE_CLASS),
                    "persistentVolumeReclaimPolicy": "Delete", "volumeMode": "Filesystem",
                    "csi": {"driver": "zonal.example.com", "volumeHandle": pv_name},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": claim,
                        "uid": s(&pvc, "/metadata/uid"), "resourceVersion": s(&pvc, "/metadata/resourceVersion")},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": ZONE, "operator": "In", "values": [zone_of(node)]}]}]}}}});
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let created = pvs.create(&PostParams::default(), &serde_json::from_value(pv)?).await?;
            let _ = pvs
                .patch_status(&pv_name, &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Bound"}})))
                .await;
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
            let spec = json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": node,
                    "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}},
                "spec": {"volumeName": pv_name}});
            let bound = pvcs.patch(&claim, &PatchParams::default(), &Patch::Merge(&spec)).await?;
            let status = json!({"status": {"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}}});
            let bound =
                pvcs.patch_status(&claim, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap_or(bound);
            snap.claims.insert(key, serde_json::to_value(bound)?);
            snap.volumes.insert(pv_name, serde_json::to_value(created)?);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let bind =
            json!({"metadata": {"resourceVersion": s(pod, "/metadata/resourceVersion")}, "spec": {"nodeName": node}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&bind)).await {
            Ok(bound) => {
                let binding = Binding {
                    namespace: ns.clone(),
                    pod: name.clone(),
                    node: node.to_string(),
                    claims: pod_claims(pod),
                };
                self.bindings.lock().unwrap_or_else(|e| e.into_inner()).push(binding);
                let scheduled = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True",
                    "lastTransitionTime": now()}]}});
                let bound =
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&scheduled)).await.unwrap_or(bound);
                let v = serde_json::to_value(bound)?;
                if let Some(p) = snap.pods.iter_mut().find(|p| s(p, "/metadata/uid") == s(&v, "/metadata/uid")) {
                    *p = v;
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn unschedulable(&self, pod: &Value, message: &str) -> anyhow::Result<()> {
        let has = arr(pod, "/status/conditions").iter().any(|c| {
            s(c, "/type") == Some("PodScheduled")
                && s(c, "/reason") == Some("Unschedulable")
                && s(c, "/message") == Some(message)
        });
        if has {
            return Ok(());
        }
        let (ns, name) =
            (s(pod, "/metadata/namespace").unwrap_or_default(), s(pod, "/metadata/name").unwrap_or_default());
        let status = json!({"metadata": {"resourceVersion": s(pod, "/metadata/resourceVersion")},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": now()}]}});
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second()).expect("time in range").to_string()
}
