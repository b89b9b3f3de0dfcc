//! The add-on's view of the cluster: watch-fed caches shared by the controller and the webhook,
//! and the conversion of cached objects into the decision core's inputs.
//!
//! Both shells read the same caches and call [`Caches::plan`], so they see one decision per
//! namespace. The webhook's common case is a cache hit on the namespace's plan: no API call.

pub mod store;
pub mod watch;

use crate::config::Config;
use crate::core::{self, MissingClaims, NamespaceState, Plan};
use crate::engine::{self, Engine};
use crate::model::{ClaimInfo, Definition, ExistingPlaceholder, NodeInfo, PinnedPod, PodMounts, Run};
use crate::names;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use store::{NsStore, trim_meta};

/// The label selector of placeholders (StatefulSets and their pods).
pub fn placeholder_selector() -> String {
    format!(
        "{}={},{}={}",
        names::LABEL_APP_MANAGED_BY,
        names::APP_NAME,
        names::LABEL_APP_COMPONENT,
        names::COMPONENT_PLACEHOLDER
    )
}

/// The label selector of an engine's task pods.
pub fn task_pod_selector(engine: &dyn Engine) -> String {
    let sel = engine.pod_selector();
    std::iter::once(sel.label.to_string())
        .chain(sel.not_labels.iter().map(|l| format!("!{l}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The field selector of the Events that say a StatefulSet's pod was refused.
pub fn failed_create_selector() -> String {
    "involvedObject.kind=StatefulSet,reason=FailedCreate".to_string()
}

/// How long a placeholder's pod may stay unschedulable before nothing is pinned to it: long
/// enough for what resolves itself (its volumeClaimTemplate PVC not created yet, a volume
/// being provisioned), short enough that new pods are not sent after it for long.
pub const UNSCHEDULABLE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The engine's own placeholders: only who they serve (labels, owners).
pub fn trim_engine_placeholder(sts: &mut StatefulSet) {
    trim_meta(sts);
    sts.metadata.annotations = None;
    sts.spec = None;
    sts.status = None;
}

/// PersistentVolumes: only where they can be used and whose they are.
pub fn trim_volume(pv: &mut PersistentVolume) {
    trim_meta(pv);
    pv.metadata.labels = None;
    pv.metadata.annotations = None;
    pv.status = None;
    if let Some(spec) = pv.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PersistentVolumeSpec {
            node_affinity: spec.node_affinity.take(),
            claim_ref: spec.claim_ref.take(),
            local: spec.local.take(),
            host_path: spec.host_path.take(),
            ..Default::default()
        };
    }
}

/// FailedCreate Events: who and why.
pub fn trim_event(e: &mut Event) {
    trim_meta(e);
    e.metadata.labels = None;
    e.metadata.annotations = None;
    e.source = None;
    e.related = None;
    e.series = None;
}

/// Pods: only metadata, the node, the phase and conditions are read.
pub fn trim_pod(pod: &mut Pod) {
    trim_meta(pod);
    if let Some(spec) = pod.spec.as_mut() {
        let node = spec.node_name.take();
        let volumes = spec.volumes.take();
        *spec = Default::default();
        spec.node_name = node;
        spec.volumes = volumes;
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// Task pods that have not finished: only those are demand (I4), can be pending or unpinned,
/// or hold a volume on a node. A finished pod leaves the cache.
pub fn unfinished(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Nodes: labels, taints, cordon and conditions; not the image list.
pub fn trim_node(node: &mut Node) {
    trim_meta(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.node_info = None;
        status.allocatable = None;
        status.capacity = None;
    }
}

/// A run as cached: the neutral run its engine made of the object when it entered the cache
/// (converted once, not on every plan). Keyed `<engine>/<name>`, so two engines' runs of one
/// name never meet. No `ObjectMeta`: it would be a third of what a cached run costs.
#[derive(Debug, Clone)]
pub struct CachedRun {
    /// `<engine>/<name>`.
    pub key: String,
    pub run: Run,
}

/// A run definition as cached (Tekton's Pipeline, Argo's WorkflowTemplate).
#[derive(Debug, Clone)]
pub struct CachedDefinition {
    /// `<engine>/<name>`.
    pub key: String,
    pub namespace: String,
    pub definition: Definition,
}

impl store::Cached for CachedRun {
    fn cache_key(&self) -> (String, String) {
        (self.run.namespace.clone(), self.key.clone())
    }

    fn has_label(&self, _: &str) -> bool {
        false
    }
}

impl store::Cached for CachedDefinition {
    fn cache_key(&self) -> (String, String) {
        (self.namespace.clone(), self.key.clone())
    }

    fn has_label(&self, _: &str) -> bool {
        false
    }
}

/// The cache key of an engine's object.
pub fn engine_key(engine: &str, name: &str) -> String {
    format!("{engine}/{name}")
}

/// A run object as the runs cache keeps it: its engine's neutral run, converted once.
pub fn cache_run(e: &dyn Engine, o: &kube::api::DynamicObject) -> Result<CachedRun, engine::ParseError> {
    let key = engine_key(e.name(), o.metadata.name.as_deref().unwrap_or_default());
    Ok(CachedRun { key, run: e.run(&o.metadata, &o.data)? })
}

/// A definition object as the definitions cache keeps it.
pub fn cache_definition(e: &dyn Engine, o: &kube::api::DynamicObject) -> Result<CachedDefinition, engine::ParseError> {
    Ok(CachedDefinition { definition: e.definition(&o.metadata, &o.data)?, ..definition_key_of(e.name(), o) })
}

/// Only the cache key of a definition object (what a delete needs).
pub fn definition_key_of(engine: &str, o: &kube::api::DynamicObject) -> CachedDefinition {
    let namespace = o.metadata.namespace.clone().unwrap_or_default();
    CachedDefinition {
        key: definition_key(engine, &namespace, o.metadata.name.as_deref().unwrap_or_default()),
        namespace,
        definition: Default::default(),
    }
}

/// The cache key of a definition: `<engine>/<name>`; for a cluster-scoped one (namespace "")
/// a prefix of its own, so that a relist of the engine's namespaced definitions never touches
/// it.
pub fn definition_key(engine: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() { format!("{engine}:cluster/{name}") } else { engine_key(engine, name) }
}

/// Everything the add-on watches.
pub struct Caches {
    /// Runs of every engine, as neutral runs.
    pub runs: NsStore<CachedRun>,
    pub claims: NsStore<PersistentVolumeClaim>,
    pub placeholders: NsStore<StatefulSet>,
    pub placeholder_pods: NsStore<Pod>,
    pub task_pods: NsStore<Pod>,
    pub nodes: NsStore<Node>,
    pub leases: NsStore<Lease>,
    /// Namespaces labelled `affinity-assistant.dev/enabled: "false"` (only those are watched).
    pub opted_out: NsStore<Namespace>,
    /// Run definitions (Tekton's Pipelines), to resolve a run before its engine writes its spec.
    pub definitions: NsStore<CachedDefinition>,
    /// The engine's own placeholders (Tekton's affinity assistant StatefulSets).
    pub engine_placeholders: NsStore<StatefulSet>,
    /// FailedCreate Events of StatefulSets: a placeholder whose pod is refused.
    pub failed_creates: NsStore<Event>,
    /// PersistentVolumes (cluster-scoped): where a bound claim's volume can be used.
    pub volumes: NsStore<PersistentVolume>,
    /// PVCs seen deleted, by (namespace, name), and when: a run may still name them (Argo's
    /// `volumeClaimGC` deletes a Workflow's claims before its completed phase shows). Forgotten
    /// when a PVC of that name appears again, or after ten minutes.
    deleted_claims: Mutex<HashMap<(String, String), std::time::Instant>>,
    /// Bumped after every change any store takes: the webhook waits on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// The add-on's ConfigMap was listed (found or not): until then `enabled: false` and the
    /// configured mode are unknown, and nothing may be decided.
    config_synced: std::sync::atomic::AtomicBool,
    /// Tekton's flags are expected but not read yet (a run Tekton's own assistant serves must
    /// not get a placeholder meanwhile).
    assistant_flags_pending: std::sync::atomic::AtomicBool,
    config: RwLock<Arc<Config>>,
    config_version: std::sync::atomic::AtomicU64,
    /// Engines' own-assistant flags, by engine, once read (`Some(value)`; the inner `None`:
    /// the key is not set).
    assistant_flags: RwLock<HashMap<&'static str, Option<String>>>,
    plans: Mutex<HashMap<String, CachedPlan>>,
}

/// A namespace's plan: the version it was computed at, when it goes stale by time alone, the plan.
type CachedPlan = (u64, Option<Timestamp>, Arc<Plan>);

impl Default for Caches {
    fn default() -> Self {
        Caches {
            runs: NsStore::new(|_| {}),
            claims: NsStore::new(trim_meta),
            placeholders: NsStore::new(trim_meta),
            placeholder_pods: NsStore::new(trim_pod),
            task_pods: NsStore::with_filter(trim_pod, unfinished),
            nodes: NsStore::new(trim_node),
            leases: NsStore::new(trim_meta),
            opted_out: NsStore::new(trim_meta),
            definitions: NsStore::new(|_| {}),
            engine_placeholders: NsStore::new(trim_engine_placeholder),
            failed_creates: NsStore::new(trim_event),
            volumes: NsStore::new(trim_volume),
            deleted_claims: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
            config_synced: Default::default(),
            assistant_flags_pending: Default::default(),
            config: RwLock::new(Arc::new(Config::default())),
            config_version: Default::default(),
            assistant_flags: RwLock::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
        }
    }
}

impl Caches {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.config_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Records an engine's own-assistant flag: `Some(value)` once read (`value`: the key's
    /// value, if set), `None` when it could not be read (nothing stands down then).
    pub fn set_assistant_flag(&self, engine: &'static str, value: Option<Option<String>>) {
        let mut flags = self.assistant_flags.write().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(v) => flags.insert(engine, v),
            None => flags.remove(engine),
        };
        drop(flags);
        self.config_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// An engine's own-assistant flag: `None` until read, `Some(None)` when read and not set.
    pub fn assistant_flag(&self, engine: &str) -> Option<Option<String>> {
        self.assistant_flags.read().unwrap_or_else(|e| e.into_inner()).get(engine).cloned()
    }

    /// The cached run of an engine.
    pub fn run(&self, ns: &str, engine: &str, name: &str) -> Option<Arc<CachedRun>> {
        self.runs.get(ns, &engine_key(engine, name))
    }

    /// The cached definition of an engine.
    pub fn definition(&self, ns: &str, engine: &str, name: &str) -> Option<Arc<CachedDefinition>> {
        self.definitions.get(ns, &definition_key(engine, ns, name))
    }

    /// The definition a run names, in its namespace or cluster-wide.
    pub fn definition_of(&self, run: &Run) -> Option<Arc<CachedDefinition>> {
        let ns = if run.cluster_definition { "" } else { &run.namespace };
        self.definition(ns, run.engine, run.definition.as_deref()?)
    }

    /// Takes a PVC watch event into the claims store, remembering deletions.
    pub fn apply_claim(
        &self,
        scope: &store::Scope,
        event: kube::runtime::watcher::Event<PersistentVolumeClaim>,
    ) -> std::collections::BTreeSet<String> {
        use kube::runtime::watcher::Event;
        let key = |pvc: &PersistentVolumeClaim| {
            (pvc.metadata.namespace.clone().unwrap_or_default(), pvc.metadata.name.clone().unwrap_or_default())
        };
        {
            let mut deleted = self.deleted_claims.lock().unwrap_or_else(|e| e.into_inner());
            match &event {
                Event::Delete(pvc) => {
                    deleted.insert(key(pvc), std::time::Instant::now());
                }
                Event::Apply(pvc) | Event::InitApply(pvc) => {
                    deleted.remove(&key(pvc));
                }
                _ => {}
            }
            deleted.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(600));
        }
        self.claims.apply_scoped(scope, event)
    }

    /// The add-on's ConfigMap has been listed (present or not).
    pub fn set_config_synced(&self) {
        self.config_synced.store(true, std::sync::atomic::Ordering::Release);
        self.changed();
    }

    /// An engine's own-assistant flags will be read: not ready until they were (or could not be).
    pub fn expect_assistant_flags(&self) {
        self.assistant_flags_pending.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The first attempt to read them is over.
    pub fn set_assistant_flags_read(&self) {
        self.assistant_flags_pending.store(false, std::sync::atomic::Ordering::Release);
        self.changed();
    }

    /// Whether everything the decisions read has been listed once: every store (each of its
    /// watchers), the config and Tekton's flags. Nothing is decided or written before: a plan
    /// from half-listed caches sees placeholders without their runs and deletes them.
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.config_synced.load(Ordering::Acquire)
            && !self.assistant_flags_pending.load(Ordering::Acquire)
            && self.opted_out.is_ready()
            && self.runs.is_ready()
            && self.definitions.is_ready()
            && self.claims.is_ready()
            && self.volumes.is_ready()
            && self.placeholders.is_ready()
            && self.engine_placeholders.is_ready()
            && self.failed_creates.is_ready()
            && self.placeholder_pods.is_ready()
            && self.task_pods.is_ready()
            && self.nodes.is_ready()
    }

    /// Says that a store took a change (the watchers call it after every event).
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that wakes after the next change of any store.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A version that changes whenever anything a namespace's plan reads changes.
    fn version(&self, ns: &str) -> u64 {
        use std::sync::atomic::Ordering;
        [
            self.runs.ns_version(ns),
            self.claims.ns_version(ns),
            self.placeholders.ns_version(ns),
            self.placeholder_pods.ns_version(ns),
            self.task_pods.ns_version(ns),
            self.definitions.ns_version(ns),
            self.engine_placeholders.ns_version(ns),
            self.failed_creates.ns_version(ns),
            self.volumes.version(),
            self.nodes_of(ns),
            self.opted_out.version(),
            self.config_version.load(Ordering::Acquire),
        ]
        .iter()
        .fold(0u64, |acc, v| acc.wrapping_mul(1_000_003).wrapping_add(*v))
    }

    /// A fingerprint of what the plan reads of nodes: the labels and taints of the nodes the
    /// namespace's placeholders are on. Other nodes' updates (heartbeats, other namespaces'
    /// nodes) leave the namespace's cached plan alone.
    fn nodes_of(&self, ns: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for pod in self.placeholder_pods.in_namespace(ns) {
            let Some(name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            name.hash(&mut h);
            let Some(node) = self.nodes.get("", name) else { continue };
            node.metadata.labels.hash(&mut h);
            for t in node.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten() {
                (&t.key, &t.value, &t.effect).hash(&mut h);
            }
        }
        h.finish()
    }

    /// The core's inputs for a namespace, from the caches.
    pub fn inputs(&self, ns: &str) -> Inputs {
        self.inputs_at(ns, Timestamp::now())
    }

    /// [`Self::inputs`] as of `now` (placeholders unschedulable for longer than
    /// [`UNSCHEDULABLE_GRACE`] count as refused).
    pub fn inputs_at(&self, ns: &str, now: Timestamp) -> Inputs {
        self.inputs_with(ns, now, &Fetched::default())
    }

    /// [`Self::inputs_at`] plus objects read directly because the caches did not have them
    /// yet (the cached copy wins when both exist).
    pub fn inputs_with(&self, ns: &str, now: Timestamp, fetched: &Fetched) -> Inputs {
        let task_pods = self.task_pods.in_namespace(ns);
        // Runs an engine's own assistant serves: it made a placeholder for them, or pinned one
        // of their pods (it may show up after the add-on made its own).
        let mut engine_served: std::collections::HashSet<String> = Default::default();
        for sts in self.engine_placeholders.in_namespace(ns) {
            for e in engine::engines() {
                engine_served.extend(e.own_assistant().map(|a| a.serves(&sts)).unwrap_or_default());
            }
        }
        // Each task pod identified once: demand for its placeholder (I4) and what it mounts,
        // if pinned; the runs an engine's own assistant serves, if it pinned it.
        let (mut pinned, mut mounts) = (Vec::new(), Vec::new());
        for pod in &task_pods {
            let identity = engine::identify(&crate::views::pod_meta(pod));
            if let Some(p) = crate::views::pinned_of(pod, &identity) {
                mounts.extend(identity.mounts(crate::views::claim_volumes(pod)));
                pinned.push(p);
            }
            if identity.skip == Some(engine::EngineSkip::EngineAssistant)
                && let Some(r) = identity.run
            {
                engine_served.extend(r.uid);
                engine_served.insert(r.name);
            }
        }
        let mut cached: Vec<Run> = self.runs.in_namespace(ns).iter().map(|c| c.run.clone()).collect();
        for r in &fetched.runs {
            if !cached.iter().any(|c| c.engine == r.engine && c.name == r.name) {
                cached.push(r.clone());
            }
        }
        let runs = cached
            .into_iter()
            .map(|mut run| {
                if let Some(name) = run.definition.clone() {
                    let found = self.definition_of(&run).map(|d| d.definition.clone()).or_else(|| {
                        fetched
                            .definitions
                            .iter()
                            .find(|(e, d)| *e == run.engine && d.name == name)
                            .map(|(_, d)| d.clone())
                    });
                    if let (Some(d), Some(e)) = (found, engine::by_name(run.engine)) {
                        e.resolve(&mut run, &d);
                    }
                }
                if let Some(a) = engine::by_name(run.engine).and_then(|e| e.own_assistant())
                    && let Some(value) = self.assistant_flag(run.engine)
                {
                    run.engine_assistant = a.would_serve(value.as_deref(), &run);
                }
                if engine_served.contains(run.uid.as_str()) || engine_served.contains(run.name.as_str()) {
                    run.engine_assistant = true;
                }
                run
            })
            .collect();
        let mut pvcs = self.claims.in_namespace(ns);
        for pvc in &fetched.claims {
            if !pvcs.iter().any(|c| c.metadata.name == pvc.metadata.name) {
                pvcs.push(Arc::new(pvc.clone()));
            }
        }
        let gone: Vec<String> = self
            .deleted_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, name)| name.clone())
            .collect();
        let mut claims: BTreeMap<String, ClaimInfo> = pvcs
            .iter()
            .map(|pvc| {
                let mut info = claim_info(pvc);
                let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty());
                if let Some(pv) = volume.and_then(|v| self.volumes.get("", v)) {
                    info.volume_node_affinity =
                        pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()?.required.clone());
                }
                (pvc.metadata.name.clone().unwrap_or_default(), info)
            })
            .collect();
        for name in gone {
            claims.entry(name.clone()).or_insert(ClaimInfo { name, deleted: true, ..Default::default() });
        }
        let pods = self.placeholder_pods.in_namespace(ns);
        let failed = self.failed_creates.in_namespace(ns);
        let mut expires: Option<Timestamp> = None;
        let placeholders = self
            .placeholders
            .in_namespace(ns)
            .iter()
            .filter_map(|sts| {
                // Its pod, found once: its node, whether it exists, why it cannot run.
                let name = sts.metadata.name.as_deref().unwrap_or_default();
                let pod = placeholder_pod(name, &pods);
                let mut p = crate::views::placeholder_from_statefulset(sts, |_| {
                    let node = pod?.spec.as_ref()?.node_name.as_deref()?;
                    self.nodes.get("", node).map(|n| Arc::new(node_info(&n)))
                })?;
                p.pod_exists = pod.is_some();
                p.refused = match pod {
                    None => refused_create(sts, &failed),
                    Some(pod) => match unschedulable_since(pod) {
                        Some((since, why)) if now.duration_since(since) >= grace() => {
                            Some(format!("its pod cannot be scheduled: {why}"))
                        }
                        Some((since, _)) => {
                            let at = since.checked_add(grace()).unwrap_or(now);
                            expires = Some(expires.map_or(at, |e| e.min(at)));
                            None
                        }
                        None => None,
                    },
                };
                Some(p)
            })
            .collect();
        let opted_out = self.opted_out.get("", ns).is_some();
        Inputs { namespace: ns.to_string(), runs, claims, placeholders, pinned, mounts, opted_out, expires }
    }

    /// The plan of a namespace, recomputed only when something it reads has changed (or a
    /// time-based rule it applied has come due).
    pub fn plan(&self, ns: &str) -> Arc<Plan> {
        let version = self.version(ns);
        let now = Timestamp::now();
        if let Some((v, expires, plan)) = self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(ns)
            && *v == version
            && expires.is_none_or(|at| now < at)
        {
            return plan.clone();
        }
        let inputs = self.inputs_at(ns, now);
        let plan = Arc::new(inputs.plan(&self.config(), MissingClaims::Wait));
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string(), (version, inputs.expires, plan.clone()));
        plan
    }

    /// Whether a namespace has anything the add-on may act on.
    pub fn has_namespace(&self, ns: &str) -> bool {
        !self.runs.in_namespace(ns).is_empty()
            || !self.placeholders.in_namespace(ns).is_empty()
            || !self.task_pods.in_namespace(ns).is_empty()
    }

    /// Every namespace with something the add-on may act on.
    pub fn namespaces(&self) -> std::collections::BTreeSet<String> {
        let mut out = self.runs.namespaces();
        out.extend(self.placeholders.namespaces());
        out.extend(self.task_pods.namespaces());
        out
    }
}

/// Objects the webhook read directly because the caches did not have them yet.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub runs: Vec<Run>,
    /// By engine name.
    pub definitions: Vec<(&'static str, Definition)>,
    pub claims: Vec<PersistentVolumeClaim>,
}

impl Fetched {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.definitions.is_empty() && self.claims.is_empty()
    }
}

/// The core's inputs for one namespace.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub namespace: String,
    pub runs: Vec<Run>,
    pub claims: BTreeMap<String, ClaimInfo>,
    pub placeholders: Vec<ExistingPlaceholder>,
    pub pinned: Vec<PinnedPod>,
    /// What unfinished task pods mount (the webhook adds the pod it admits, where its run's
    /// claims come from its pods).
    pub mounts: Vec<PodMounts>,
    /// The namespace is labelled `affinity-assistant.dev/enabled: "false"`: planned as with
    /// `enabled: false` (no new placeholders; existing ones kept for the runs they serve).
    pub opted_out: bool,
    /// When a time-based rule these inputs applied changes its verdict (a placeholder pod's
    /// unschedulable grace running out): the plan is stale from then on.
    pub expires: Option<Timestamp>,
}

impl Inputs {
    pub fn plan(&self, config: &Config, missing: MissingClaims) -> Plan {
        let disabled;
        let config = if self.opted_out && config.enabled {
            disabled = Config { enabled: false, ..config.clone() };
            &disabled
        } else {
            config
        };
        core::plan(&NamespaceState {
            namespace: &self.namespace,
            config,
            runs: &self.runs,
            claims: &self.claims,
            placeholders: &self.placeholders,
            pinned_pods: &self.pinned,
            task_pods: &self.mounts,
            missing_claims: missing,
        })
    }
}

pub fn claim_info(pvc: &PersistentVolumeClaim) -> ClaimInfo {
    let status = pvc.status.as_ref();
    ClaimInfo {
        name: pvc.metadata.name.clone().unwrap_or_default(),
        spec_access_modes: pvc.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default(),
        status_access_modes: status.and_then(|s| s.access_modes.clone()).unwrap_or_default(),
        bound: status.and_then(|s| s.phase.as_deref()) == Some("Bound"),
        node_pinned: false,
        volume_node_affinity: None,
        deleted: false,
    }
}

pub fn node_info(node: &Node) -> NodeInfo {
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints: node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default(),
    }
}

/// The pod of a placeholder (its StatefulSet pod is `<name>-0`), if any: the live one, else
/// one still terminating (until it is gone the scheduler still counts it for the pinned pods'
/// affinity, and its quota is still used).
pub fn placeholder_pod<'p>(placeholder: &str, pods: &'p [Arc<Pod>]) -> Option<&'p Pod> {
    let mut of = pods.iter().filter(|p| {
        p.metadata.labels.as_ref().and_then(|l| l.get(names::LABEL_PLACEHOLDER)).map(String::as_str)
            == Some(placeholder)
    });
    let (live, terminating): (Vec<_>, Vec<_>) = of.by_ref().partition(|p| p.metadata.deletion_timestamp.is_none());
    live.into_iter().chain(terminating).next().map(|p| &**p)
}

fn grace() -> SignedDuration {
    SignedDuration::try_from(UNSCHEDULABLE_GRACE).unwrap_or(SignedDuration::from_secs(10))
}

/// Why the StatefulSet controller could not create this placeholder's pod, if it said so
/// (an Event about this very StatefulSet: same uid, or same name when the Event has no uid).
pub fn refused_create(sts: &StatefulSet, events: &[Arc<Event>]) -> Option<String> {
    let name = sts.metadata.name.as_deref()?;
    let uid = sts.metadata.uid.as_deref();
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .filter(|e| {
            let o = &e.involved_object;
            o.kind.as_deref() == Some("StatefulSet")
                && o.name.as_deref() == Some(name)
                && (o.uid.is_none() || o.uid.as_deref() == uid)
        })
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .map(|e| e.message.clone().unwrap_or_else(|| "FailedCreate".into()))
}

/// Since when, and why, a pod that is not bound has been unschedulable.
pub fn unschedulable_since(pod: &Pod) -> Option<(Timestamp, String)> {
    if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
        return None;
    }
    let c =
        pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })?;
    let since = c.last_transition_time.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    Some((since, c.message.clone().unwrap_or_else(|| "Unschedulable".into())))
}

/// Whether a controller holds a fresh leader lease (`now` in seconds since the epoch).
pub fn lease_fresh(lease: &Lease, now: i64) -> bool {
    let Some(spec) = lease.spec.as_ref() else { return false };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    let (Some(renew), Some(duration)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return false;
    };
    !holder.is_empty() && renew.0.as_second() + i64::from(duration) > now
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_run_is_the_run_less_foreign_annotations() {
        use crate::engine::tekton::{PipelineRun, Tekton};
        let fixture = |phase: &str| {
            json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
                "metadata": {"name": "r", "namespace": "ci", "uid": "u1", "creationTimestamp": "2026-11-23T00:00:00Z",
                    "labels": {"tekton.dev/pipeline": "build"}, "finalizers": ["chains.tekton.dev"],
                    "annotations": {names::ANNOTATION_MODE: "pipelineruns", "team": "a",
                        "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
                "spec": {"pipelineRef": {"name": "build"},
                    "workspaces": [{"name": "src", "persistentVolumeClaim": {"claimName": "c"}}]},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "x"},
                        {"type": "Succeeded", "status": phase, "reason": "Running"}],
                    "pipelineSpec": {"tasks": [{"name": "t", "workspaces": [{"name": "src"}]}]}}})
        };
        for phase in ["Unknown", "True", "False"] {
            let value = fixture(phase);
            let original: PipelineRun = serde_json::from_value(value.clone()).unwrap();
            let obj: kube::api::DynamicObject = serde_json::from_value(value).unwrap();
            let cached = Tekton.run(&obj.metadata, &obj.data).unwrap();
            let mut want = original.to_run().unwrap();
            want.annotations.retain(|k, _| k.starts_with(names::DOMAIN));
            assert_eq!(cached, want, "phase {phase}");
            assert_eq!(want.annotations.len(), 1, "the add-on's own annotation is kept");
        }
    }

    #[test]
    fn a_plan_is_recomputed_only_for_the_nodes_it_reads() {
        use kube::runtime::watcher::Event;
        let caches = Caches::default();
        let node = |name: &str, zone: &str, heartbeat: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"zone": zone}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}}))
            .unwrap()
        };
        caches.nodes.apply(Event::Apply(node("n1", "a", "2026-01-01T00:00:00Z")));
        caches.nodes.apply(Event::Apply(node("n2", "a", "2026-01-01T00:00:00Z")));
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "aa-x-0", "namespace": "ci",
            "labels": {names::LABEL_PLACEHOLDER: "aa-x"}}, "spec": {"containers": [], "nodeName": "n1"}}))
        .unwrap();
        caches.placeholder_pods.apply(Event::Apply(pod));
        let first = caches.plan("ci");
        // Another node's heartbeat, and this node's: nothing the plan reads.
        caches.nodes.apply(Event::Apply(node("n2", "b", "2026-01-01T00:01:00Z")));
        caches.nodes.apply(Event::Apply(node("n1", "a", "2026-01-01T00:01:00Z")));
        assert!(Arc::ptr_eq(&first, &caches.plan("ci")), "kept");
        // Its own node's labels change: recomputed.
        caches.nodes.apply(Event::Apply(node("n1", "b", "2026-01-01T00:02:00Z")));
        assert!(!Arc::ptr_eq(&first, &caches.plan("ci")), "recomputed");
    }

    #[test]
    fn finished_task_pods_leave_the_cache() {
        use kube::runtime::watcher::Event;
        let caches = Caches::default();
        let pod = |phase: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ci",
                "labels": {"tekton.dev/pipelineRun": "r"}}, "spec": {"containers": []}, "status": {"phase": phase}}))
            .unwrap()
        };
        caches.task_pods.apply(Event::Apply(pod("Running")));
        assert_eq!(caches.task_pods.len(), 1);
        caches.task_pods.apply(Event::Apply(pod("Succeeded")));
        assert_eq!(caches.task_pods.len(), 0);
        assert!(!caches.has_namespace("ci"));
    }
}
