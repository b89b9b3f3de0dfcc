//! An in-memory stand-in for the Kubernetes API server, plugged into [`kube::Client`] as a
//! tower service (no sockets, no TLS): `FakeApiServer::new().client()`.
//!
//! Requests arrive as the HTTP requests kube builds (`/api/v1/namespaces/{ns}/pods/{name}`,
//! `/apis/{group}/{version}/...`, `?watch=true&resourceVersion=..`, patch content types) and are
//! answered from a store of `serde_json::Value`s keyed by (group, version, resource, namespace,
//! name), so any kind works; the built-in table below only fixes the Kind, the scope and whether a
//! `/status` subresource exists for the kinds the add-on uses (core, apps, Tekton's `tekton.dev/v1`
//! PipelineRuns, TaskRuns, Pipelines and Tasks, Argo's `argoproj.io/v1alpha1` Workflows and
//! WorkflowTemplates: Argo's minimal CRDs have NO status subresource, so a Workflow's status is
//! written with its spec through the main resource and `/status` answers 404), and unknown
//! resources are learned from the objects written to them (or from [`FakeApiServer::register`]).
//! Every resource is served from the start, as if its CRD were installed, until
//! [`FakeApiServer::set_absent`] says otherwise.
//!
//! Modelled like a real server: one global resourceVersion bumped by every write (no-op writes
//! do not bump it); server-set `uid`, `creationTimestamp`, `generation` (1 on create, +1 when
//! `spec` changes; for a custom resource without a status subresource, such as a Workflow,
//! when anything outside `metadata` changes); get/list/watch/create/update/patch/delete/deletecollection; label selectors
//! (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`) and field selectors (`=`, `==`,
//! `!=` on any dotted path, e.g. `metadata.name`, `spec.nodeName`); watches from a resourceVersion
//! with a bounded history (410 `Expired` ERROR event when it is too old), synthetic ADDED events
//! for `resourceVersion` unset/"0", `sendInitialEvents` with the `k8s.io/initial-events-end`
//! bookmark, periodic BOOKMARKs, selectors applied to watch events (an object that stops
//! matching is sent as DELETED); optimistic concurrency (409 on a stale `resourceVersion` in a
//! PUT or in a patch body); `/status` subresources (writes to the main resource keep the stored
//! status, writes to `/status` change only the status; create drops the status); finalizers
//! (delete sets `deletionTimestamp`, the object goes when the last finalizer is removed);
//! delete preconditions (uid, resourceVersion); `dryRun=All`; asynchronous owner-reference GC
//! (background and foreground both delete dependents a moment later; orphan strips the owner
//! reference); `PartialObjectMetadata` answers for kube's metadata API; pod eviction (deletes).
//!
//! Opt-in, for tests that need a cluster's behaviour rather than a store's:
//! - ResourceQuota admission (always on, it only acts when a `resourcequotas` object exists):
//!   a pod create that would exceed a quota's `spec.hard.pods` (a count) is refused with 403
//!   `Forbidden` and kube-apiserver's message (`pods "x" is forbidden: exceeded quota: q,
//!   requested: pods=1, used: pods=N, limited: pods=N`); `status.hard` and `status.used.pods`
//!   (unfinished pods: phase not Succeeded/Failed) are kept current;
//! - [`FakeApiServer::run_statefulset_controller`]: kube-controller-manager's StatefulSet
//!   controller for one replica (pod `<name>-0` from the template, remade when gone, never while
//!   the StatefulSet is being deleted; a refused create is a `FailedCreate` Warning Event on
//!   the StatefulSet, retried with a backoff);
//! - [`FakeApiServer::set_pod_termination`]: graceful pod deletion (a bound, unfinished pod
//!   gets `deletionTimestamp` and goes that much later; `gracePeriodSeconds: 0`, an unbound or
//!   a finished pod goes at once);
//! - [`FakeApiServer::set_keep_uids`]: create keeps a given `metadata.uid` (trace replays);
//! - [`FakeApiServer::changes`]: a wake-up on every write, for stand-ins in the tests;
//! - [`FakeApiServer::set_absent`]: a CRD that is not installed (a cluster without Argo, or
//!   without Tekton): every request to the resource, watches and lists included, answers 404
//!   `NotFound` "the server could not find the requested resource" as for any unknown resource,
//!   and open watches on it end; installing it later (`false`) serves it again, with the
//!   objects it had (the store keeps them: a real CRD deletion would delete them).
//!
//! Not modelled: managedFields and conflicts between field managers (server-side apply is a
//! JSON merge of the applied object into the stored one, plus removal of the fields the same
//! manager applied last time and no longer applies; `force` is accepted and ignored; lists,
//! including `listType=map`/`set` lists such as containers, conditions or finalizers, are
//! replaced whole rather than merged by key); strategic-merge-patch list semantics (it is a JSON
//! merge patch here: lists are replaced, and `$patch`/`$retainKeys`/`$setElementOrder`
//! directives are rejected with 400); admission other than the pod-count quota (no
//! defaulting, no mutating or validating webhooks, no pod `qosClass`, no cpu/memory or object
//! count quotas but pods, no LimitRange, no PodSecurity, no priority classes); schema and field validation (`fieldValidation` is
//! ignored, any JSON is stored); RBAC enforcement (every request is allowed, but all are logged
//! for checking the rules); namespace existence and namespace deletion; graceful deletion of
//! anything but pods, and of pods unless asked for (then the grace period is one fixed
//! duration, whatever `gracePeriodSeconds` says); controllers other than the StatefulSet
//! stand-in (no scheduler, kubelet, PV binder: see `scheduler.rs`; the StatefulSet stand-in
//! knows one replica, no rolling updates, no `volumeClaimTemplates`, no status); pagination (`limit` is ignored, lists
//! come in one page without a `continue` token); reads at an older resourceVersion
//! (`resourceVersion`/`resourceVersionMatch` on get/list are ignored, the latest state is
//! served); conversion between API versions (core/v1 and events.k8s.io/v1 Events are separate
//! stores; `tekton.dev/v1beta1` is not `v1`); PodDisruptionBudgets for evictions; discovery
//! (`/api`, `/apis`, `/version` answer 404, so an absent CRD is seen only through the 404 of a
//! request to it); CustomResourceDefinition objects (creating one installs nothing, use
//! `set_absent`; their `Established` condition never comes); `blockOwnerDeletion` and the
//! foreground `foregroundDeletion` finalizer.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, Response, header};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of the service: whole JSON documents or a watch stream.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// (group, version, resource, Kind, namespaced, has a status subresource)
const BUILTIN: &[(&str, &str, &str, &str, bool, bool)] = &[
    ("", "v1", "pods", "Pod", true, true),
    ("", "v1", "nodes", "Node", false, true),
    ("", "v1", "namespaces", "Namespace", false, true),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true),
    ("", "v1", "persistentvolumes", "PersistentVolume", false, true),
    ("", "v1", "configmaps", "ConfigMap", true, false),
    ("", "v1", "secrets", "Secret", true, false),
    ("", "v1", "events", "Event", true, false),
    ("", "v1", "resourcequotas", "ResourceQuota", true, true),
    ("", "v1", "services", "Service", true, true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, false),
    ("apps", "v1", "statefulsets", "StatefulSet", true, true),
    ("apps", "v1", "deployments", "Deployment", true, true),
    ("apps", "v1", "replicasets", "ReplicaSet", true, true),
    ("apps", "v1", "daemonsets", "DaemonSet", true, true),
    ("batch", "v1", "jobs", "Job", true, true),
    ("events.k8s.io", "v1", "events", "Event", true, false),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    (
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        false,
    ),
    ("storage.k8s.io", "v1", "storageclasses", "StorageClass", false, false),
    ("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", false, false),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true),
    ("tekton.dev", "v1", "pipelineruns", "PipelineRun", true, true),
    ("tekton.dev", "v1", "taskruns", "TaskRun", true, true),
    ("tekton.dev", "v1", "pipelines", "Pipeline", true, false),
    ("tekton.dev", "v1", "tasks", "Task", true, false),
    // As the minimal CRDs Argo installs by default (fixtures/argo/crds/minimal-*.yaml):
    // `subresources: {}`, so spec and status are written in one update of the main resource.
    ("argoproj.io", "v1alpha1", "workflows", "Workflow", true, false),
    ("argoproj.io", "v1alpha1", "workflowtemplates", "WorkflowTemplate", true, false),
    ("argoproj.io", "v1alpha1", "clusterworkflowtemplates", "ClusterWorkflowTemplate", false, false),
];

/// What the server knows about one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }
    /// Matches `pods`, `Pod`, `pods.` + group (`pipelineruns.tekton.dev`) or `group/version/resource`
    /// (`v1/pods` for the core group).
    fn is_named(&self, s: &str) -> bool {
        s == "*"
            || s == self.resource
            || s.eq_ignore_ascii_case(&self.kind)
            || s == format!("{}.{}", self.resource, self.group)
            || s == format!("{}/{}", self.api_version(), self.resource)
    }
}

/// The RBAC verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A failure to inject in place of the next matching requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 409 `Conflict`, as for a stale resourceVersion.
    Conflict,
    /// 429 `TooManyRequests` with `Retry-After: 1` (API priority and fairness).
    TooManyRequests,
    /// 500 `InternalError`.
    Internal,
    /// The response stays pending for the duration, then is a 504 `Timeout` status. Use a long
    /// duration (even `Duration::MAX`) for a call that never completes within the test.
    Timeout(Duration),
    /// Not a failure: the request is served normally after the duration (a slow list, so that
    /// resources list in another order than they were asked for).
    Delay(Duration),
}

/// One request as the RBAC authorizer would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub verb: Verb,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl RequestRecord {
    /// The resource as written in an RBAC rule: `pods` or `pods/status`.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    group: String,
    version: String,
    resource: String,
    ns: String,
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

struct HistoryEntry {
    rv: u64,
    change: Change,
    key: Key,
    old: Option<Value>,
    new: Value,
}

struct FaultRule {
    resource: String,
    verb: Verb,
    remaining: usize,
    fault: Fault,
}

struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    fn about(mut self, info: &ResourceInfo, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": info.group, "kind": info.resource}));
        self
    }
    fn not_found(info: &ResourceInfo, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(info))).about(info, name)
    }
    fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }
    fn conflict(info: &ResourceInfo, name: &str, why: &str) -> Self {
        let msg = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", qualified(info));
        Self::new(409, "Conflict", msg).about(info, name)
    }
    fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    fn invalid(msg: impl Into<String>) -> Self {
        Self::new(422, "Invalid", msg)
    }
    fn status(&self) -> Value {
        let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

const STALE: &str = "the object has been modified; please apply your changes to the latest version and try again";

fn qualified(info: &ResourceInfo) -> String {
    if info.group.is_empty() { info.resource.clone() } else { format!("{}.{}", info.resource, info.group) }
}

struct State {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<HistoryEntry>,
    history_limit: usize,
    /// Every event with a resourceVersion above this one is still in `history`.
    floor: u64,
    learned: Vec<ResourceInfo>,
    faults: Vec<FaultRule>,
    log: Vec<RequestRecord>,
    /// The object each field manager applied last, for pruning on the next apply.
    applied: HashMap<(Key, String), Value>,
    /// Uids deleted with `propagationPolicy: Orphan`.
    orphaned: HashSet<String>,
    ticks: watch::Sender<(u64, u64)>,
    drop_epoch: u64,
    bookmark_interval: Duration,
    gc_delay: Duration,
    random: RandomState,
    seq: u64,
    /// Create keeps a `metadata.uid` the body carries (a replay of recorded objects).
    keep_uids: bool,
    /// Graceful pod deletion: a bound pod goes this long after its DELETE.
    pod_termination: Option<Duration>,
    /// The StatefulSet controller stand-in's per-StatefulSet retry state (uid -> backoff, next try).
    sts_backoff: HashMap<String, (Duration, Instant)>,
    /// Resources (group, plural) whose CRD is not installed: every request answers 404.
    absent: HashSet<(String, String)>,
    /// This state, for the timers it starts itself.
    me: Weak<Mutex<State>>,
}

/// The fake server. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

/// Fault injection, from [`FakeApiServer::faults`].
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    /// Fails the next `n` requests with `verb` (apply is `Patch`) on `resource` (plural, Kind,
    /// `plural.group`, `group/version/plural`, or `*` for any) with `fault`. Rules are consumed
    /// in the order they were added.
    pub fn fail_next(&self, resource: &str, verb: Verb, n: usize, fault: Fault) {
        let rule = FaultRule { resource: resource.to_string(), verb, remaining: n, fault };
        lock(&self.state).faults.push(rule);
    }
    /// Removes every pending fault.
    pub fn clear(&self) {
        lock(&self.state).faults.clear();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApiServer {
    pub fn new() -> Self {
        let state = State {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: 1000,
            floor: 0,
            learned: Vec::new(),
            faults: Vec::new(),
            log: Vec::new(),
            applied: HashMap::new(),
            orphaned: HashSet::new(),
            ticks: watch::Sender::new((0, 0)),
            drop_epoch: 0,
            bookmark_interval: Duration::from_secs(1),
            gc_delay: Duration::from_millis(20),
            random: RandomState::new(),
            seq: 0,
            keep_uids: false,
            pod_termination: None,
            sts_backoff: HashMap::new(),
            absent: HashSet::new(),
            me: Weak::new(),
        };
        let state = Arc::new_cyclic(|me| Mutex::new(State { me: me.clone(), ..state }));
        FakeApiServer { state }
    }

    /// A client talking to this server, with `default` as its default namespace. Needs a tokio
    /// runtime (kube spawns its request buffer).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    pub fn faults(&self) -> Faults {
        Faults { state: self.state.clone() }
    }

    /// Ends every open watch stream abruptly, as a dropped connection does (kube sees an
    /// unexpected EOF and re-watches from its last resourceVersion).
    pub fn drop_watches(&self) {
        let mut st = lock(&self.state);
        st.drop_epoch += 1;
        st.notify();
    }

    /// Every request served so far, oldest first (seeding through the handle is not logged).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state).log.clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state).log.clear();
    }

    /// The current (last written) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).rv
    }

    /// How many watch events are kept for resuming watches (default 1,000).
    pub fn set_history_limit(&self, n: usize) {
        let mut st = lock(&self.state);
        st.history_limit = n;
        st.trim_history();
    }

    /// How often watches that asked for bookmarks get one (default 1 s); for new watches.
    pub fn set_bookmark_interval(&self, d: Duration) {
        lock(&self.state).bookmark_interval = d;
    }

    /// How long after a delete the garbage collector runs (default 20 ms).
    pub fn set_gc_delay(&self, d: Duration) {
        lock(&self.state).gc_delay = d;
    }

    /// Lets create keep the `metadata.uid` a body carries instead of assigning one (a real
    /// server always assigns one). For replaying recorded objects whose names and labels derive
    /// from their uids (Tekton's PVC names, `tekton.dev/pipelineRunUID`, owner references).
    pub fn set_keep_uids(&self, keep: bool) {
        lock(&self.state).keep_uids = keep;
    }

    /// Graceful pod deletion: a DELETE of a pod bound to a node (not finished) sets
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` (the request's `gracePeriodSeconds`,
    /// else the pod's `terminationGracePeriodSeconds`, else 30) and the pod goes `after` later,
    /// as once its kubelet confirms; `gracePeriodSeconds: 0`, an unbound or a finished pod goes
    /// at once. Off (every pod goes at once) until called.
    pub fn set_pod_termination(&self, after: Duration) {
        lock(&self.state).pod_termination = Some(after);
    }

    /// Wakes on every write (the current resourceVersion), for stand-ins that react to changes.
    pub fn changes(&self) -> watch::Receiver<(u64, u64)> {
        lock(&self.state).ticks.subscribe()
    }

    /// Starts kube-controller-manager's StatefulSet controller, as far as one replica goes: for
    /// each StatefulSet with `replicas: 1` not being deleted, pod `<name>-0` is created from the
    /// template (labels, annotations, spec; a controller owner reference to the StatefulSet)
    /// whenever it does not exist, so also after it was deleted and is gone. A refused create
    /// (quota) is recorded as the real controller does it, a core/v1 Warning Event `FailedCreate`
    /// on the StatefulSet (`count` and `lastTimestamp` bumped on repeats), and retried with an
    /// exponential backoff (50 ms doubling up to 2 s). The pods are created inside the server:
    /// wrappers in front of it (an admission stand-in) do not see them, as the webhook's
    /// objectSelector does not select placeholders. Runs until the server is dropped.
    pub fn run_statefulset_controller(&self) {
        let weak = Arc::downgrade(&self.state);
        let mut rx = self.changes();
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(state) = weak.upgrade() else { return };
                    let mut st = lock(&state);
                    st.statefulset_pass()
                };
                let wait = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(wait) => {}
                }
            }
        });
    }

    /// Models a CustomResourceDefinition that is not installed (`absent: true`) or installed
    /// (`false`, the default for every resource). `resource` is `plural.group`
    /// (`workflows.argoproj.io`), or any name [`FakeApiServer::get`] takes; every version of it is
    /// meant. While absent, every request to it (get, list, watch, create, update, patch,
    /// delete, deletecollection, subresources) answers as kube-apiserver does for a resource it
    /// does not serve: 404 `NotFound`, "the server could not find the requested resource", with
    /// no details; open watches on it end (as when a CRD is deleted), and a new watch is that
    /// 404 too. Requests are still logged. Installing it again serves the objects it had before
    /// (none if it never had any): the store keeps them while absent, and so does the garbage
    /// collector (a real CRD deletion deletes them; a test that wants that deletes them first).
    /// Seeding through the handle ([`FakeApiServer::insert`], `get`, `list`) ignores it.
    pub fn set_absent(&self, resource: &str, absent: bool) {
        let mut st = lock(&self.state);
        let mut keys: Vec<(String, String)> =
            st.resolve_all(resource).into_iter().map(|i| (i.group, i.resource)).collect();
        if keys.is_empty() {
            let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
            keys.push((group.to_string(), plural.to_string()));
        }
        for key in keys {
            if absent {
                st.absent.insert(key);
            } else {
                st.absent.remove(&key);
            }
        }
        // Wakes the open watches, which end if their resource went.
        st.notify();
    }

    /// Declares a resource the built-in table lacks (otherwise it is learned from objects).
    pub fn register(&self, api_version: &str, resource: &str, kind: &str, namespaced: bool, status_subresource: bool) {
        let (group, version) = split_api_version(api_version);
        let info = ResourceInfo {
            group,
            version,
            resource: resource.into(),
            kind: kind.into(),
            namespaced,
            status_subresource,
        };
        let mut st = lock(&self.state);
        st.learned.retain(|i| !(i.group == info.group && i.version == info.version && i.resource == info.resource));
        st.learned.push(info);
    }

    /// Stores an object (anything serializable with `apiVersion`, `kind` and `metadata.name`),
    /// creating or replacing it without HTTP, faults, preconditions or status stripping; a given
    /// `uid`, `creationTimestamp`, `generation` or `deletionTimestamp` is kept. Namespaced kinds
    /// without `metadata.namespace` go to `default`. Watches see it. Returns the stored object.
    /// Like a real collector, the next garbage collection (after any delete) removes an inserted
    /// object whose `ownerReferences` all name uids that do not exist.
    pub fn insert(&self, obj: impl serde::Serialize) -> Value {
        let obj = serde_json::to_value(obj).expect("object serializes");
        let mut st = lock(&self.state);
        let info = st.info_of_object(&obj);
        let ns = if info.namespaced {
            str_at(&obj, "/metadata/namespace").unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let name = str_at(&obj, "/metadata/name").expect("insert: metadata.name is required").to_string();
        let key = key_of(&info, &ns, &name);
        st.seed(&info, key, obj)
    }

    /// The stored object; `ns` is "" for cluster-scoped resources. `resource` is a plural,
    /// a Kind, `plural.group` or `group/version/plural`; a name that fits several resources
    /// (`events`, `Event`: core/v1 and events.k8s.io/v1) looks in all of them, core first.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let st = lock(&self.state);
        st.resolve_all(resource).iter().find_map(|info| st.objects.get(&key_of(info, ns, name)).cloned())
    }

    /// The stored objects of a resource in a namespace ("" for all namespaces, or cluster-scoped),
    /// of every resource the name fits (see [`FakeApiServer::get`]).
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        let st = lock(&self.state);
        let infos = st.resolve_all(resource);
        st.objects
            .iter()
            .filter(|(k, _)| infos.iter().any(|i| same_resource(k, i)) && (ns.is_empty() || k.ns == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many objects [`FakeApiServer::list`] would return, without copying them (for
    /// polling loops that must not load the server they measure).
    pub fn count(&self, resource: &str, ns: &str) -> usize {
        let st = lock(&self.state);
        let infos = st.resolve_all(resource);
        st.objects.keys().filter(|k| infos.iter().any(|i| same_resource(k, i)) && (ns.is_empty() || k.ns == ns)).count()
    }

    /// The stored object deserialized as `K`.
    pub fn get_as<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let gvr = format!("{}/{}", K::api_version(&()), K::plural(&()));
        self.get(&gvr, ns, name).map(|v| serde_json::from_value(v).expect("stored object deserializes"))
    }

    /// Deletes like the API would (finalizers respected, garbage collection afterwards) and
    /// returns the object as deleted (or as marked for deletion); None when it does not exist.
    pub fn delete(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let result = {
            let mut st = lock(&self.state);
            let infos = st.resolve_all(resource);
            let info = infos.into_iter().find(|i| st.objects.contains_key(&key_of(i, ns, name)))?;
            st.delete_obj(&info, &key_of(&info, ns, name), &Value::Null).ok()
        };
        self.schedule_gc();
        result
    }

    fn schedule_gc(&self) {
        let weak = Arc::downgrade(&self.state);
        let delay = lock(&self.state).gc_delay;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(state) = weak.upgrade() {
                        lock(&state).collect_garbage();
                    }
                });
            }
            Err(_) => lock(&self.state).collect_garbage(),
        }
    }
}

fn split_api_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

fn key_of(info: &ResourceInfo, ns: &str, name: &str) -> Key {
    Key {
        group: info.group.clone(),
        version: info.version.clone(),
        resource: info.resource.clone(),
        ns: if info.namespaced { ns.to_string() } else { String::new() },
        name: name.to_string(),
    }
}

fn same_resource(k: &Key, info: &ResourceInfo) -> bool {
    k.group == info.group && k.version == info.version && k.resource == info.resource
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("metadata is an object")
}

fn guess_plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if let Some(stem) = k.strip_suffix('y').filter(|s| !s.ends_with(['a', 'e', 'o', 'u'])) {
        format!("{stem}ies")
    } else if k.ends_with('s') || k.ends_with("ch") || k.ends_with("sh") || k.ends_with('x') {
        format!("{k}es")
    } else {
        format!("{k}s")
    }
}

fn guess_kind(plural: &str) -> String {
    let singular = if let Some(stem) = plural.strip_suffix("ies") {
        format!("{stem}y")
    } else {
        plural.strip_suffix('s').unwrap_or(plural).to_string()
    };
    let mut chars = singular.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second()).expect("time in range").to_string()
}

impl State {
    fn notify(&self) {
        let (rv, epoch) = (self.rv, self.drop_epoch);
        self.ticks.send_replace((rv, epoch));
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            let e = self.history.pop_front().expect("history is not empty");
            self.floor = e.rv;
        }
    }

    fn random(&mut self) -> u64 {
        self.seq += 1;
        self.random.hash_one(self.seq)
    }

    fn uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    fn all_infos(&self) -> impl Iterator<Item = ResourceInfo> + '_ {
        let builtin = BUILTIN.iter().map(|&(g, v, r, k, n, s)| ResourceInfo {
            group: g.into(),
            version: v.into(),
            resource: r.into(),
            kind: k.into(),
            namespaced: n,
            status_subresource: s,
        });
        self.learned.iter().cloned().chain(builtin)
    }

    fn resolve_all(&self, name: &str) -> Vec<ResourceInfo> {
        let mut infos: Vec<ResourceInfo> = self.all_infos().filter(|i| i.is_named(name)).collect();
        infos.sort_by_key(|i| !i.group.is_empty());
        infos
    }

    fn info_for(&self, group: &str, version: &str, resource: &str) -> Option<ResourceInfo> {
        self.all_infos().find(|i| i.group == group && i.version == version && i.resource == resource)
    }

    /// The resource an object belongs to, learning it when unknown.
    fn info_of_object(&mut self, obj: &Value) -> ResourceInfo {
        let (group, version) = split_api_version(str_at(obj, "/apiVersion").expect("object has apiVersion"));
        let kind = str_at(obj, "/kind").expect("object has kind").to_string();
        if let Some(info) = self.all_infos().find(|i| i.group == group && i.version == version && i.kind == kind) {
            return info;
        }
        let info = ResourceInfo {
            group,
            version,
            resource: guess_plural(&kind),
            kind,
            namespaced: obj.pointer("/metadata/namespace").is_some(),
            status_subresource: false,
        };
        self.learned.push(info.clone());
        info
    }

    fn take_fault(&mut self, info: &ResourceInfo, verb: Verb) -> Option<Fault> {
        let i = self.faults.iter().position(|f| f.verb == verb && f.remaining > 0 && info.is_named(&f.resource))?;
        let rule = &mut self.faults[i];
        rule.remaining -= 1;
        let fault = rule.fault;
        if rule.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }

    /// Bumps the resourceVersion, stamps it on the object and records the change for watches.
    fn write(&mut self, change: Change, key: Key, mut new: Value, dry_run: bool) -> Value {
        let old = self.objects.get(&key).cloned();
        if dry_run {
            return new;
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), self.rv.to_string().into());
        if change == Change::Deleted {
            self.objects.remove(&key);
            self.applied.retain(|(k, _), _| *k != key);
        } else {
            self.objects.insert(key.clone(), new.clone());
        }
        let quota_ns = (key.group.is_empty() && matches!(key.resource.as_str(), "pods" | "resourcequotas"))
            .then(|| key.ns.clone());
        self.history.push_back(HistoryEntry { rv: self.rv, change, key, old, new: new.clone() });
        self.trim_history();
        if let Some(ns) = quota_ns {
            self.refresh_quotas(&ns);
        }
        self.notify();
        new
    }

    fn seed(&mut self, info: &ResourceInfo, key: Key, mut obj: Value) -> Value {
        let existing = self.objects.get(&key).cloned();
        obj["apiVersion"] = info.api_version().into();
        obj["kind"] = info.kind.clone().into();
        let uid = self.uid();
        let m = meta_mut(&mut obj);
        if info.namespaced {
            m.insert("namespace".into(), key.ns.clone().into());
        } else {
            m.remove("namespace");
        }
        let old_meta = existing.as_ref().map(|e| e["metadata"].clone()).unwrap_or(json!({}));
        let defaults = [
            ("uid", old_meta.get("uid").cloned().unwrap_or(uid.into())),
            ("creationTimestamp", old_meta.get("creationTimestamp").cloned().unwrap_or(now().into())),
            ("generation", old_meta.get("generation").cloned().unwrap_or(1.into())),
        ];
        for (field, value) in defaults {
            m.entry(field).or_insert(value);
        }
        let change = if existing.is_some() { Change::Modified } else { Change::Added };
        self.write(change, key, obj, false)
    }

    fn create_obj(&mut self, info: &ResourceInfo, ns: &str, mut obj: Value, dry_run: bool) -> Result<Value, ApiError> {
        let info = &match self.info_for(&info.group, &info.version, &info.resource) {
            Some(known) => known,
            None => {
                let kind = str_at(&obj, "/kind").map(String::from).unwrap_or(info.kind.clone());
                let learned = ResourceInfo { kind, namespaced: !ns.is_empty(), ..info.clone() };
                self.learned.push(learned.clone());
                learned
            }
        };
        check_type(info, &mut obj)?;
        if info.namespaced {
            match str_at(&obj, "/metadata/namespace") {
                Some(n) if n != ns => {
                    let msg = "the namespace of the provided object does not match the namespace sent on the request";
                    return Err(ApiError::bad_request(msg));
                }
                _ => {}
            }
        }
        let name = match (str_at(&obj, "/metadata/name"), str_at(&obj, "/metadata/generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                let prefix = prefix.to_string();
                loop {
                    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                    let mut r = self.random();
                    let suffix: String = (0..5)
                        .map(|_| {
                            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
                            r /= ALPHABET.len() as u64;
                            c
                        })
                        .collect();
                    let candidate = format!("{prefix}{suffix}");
                    if !self.objects.contains_key(&key_of(info, ns, &candidate)) {
                        break candidate;
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "{} is invalid: metadata.name: name or generateName is required",
                    info.kind
                )));
            }
        };
        let key = key_of(info, ns, &name);
        if self.objects.contains_key(&key) {
            let msg = format!("{} \"{name}\" already exists", qualified(info));
            return Err(ApiError::new(409, "AlreadyExists", msg).about(info, &name));
        }
        if info.group.is_empty() && info.resource == "pods" {
            self.admit_quota(ns, &name)?;
        }
        let given = str_at(&obj, "/metadata/uid").filter(|u| self.keep_uids && !u.is_empty()).map(String::from);
        let uid = given.unwrap_or_else(|| self.uid());
        let m = meta_mut(&mut obj);
        m.insert("name".into(), name.into());
        if info.namespaced {
            m.insert("namespace".into(), ns.into());
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), uid.into());
        m.insert("creationTimestamp".into(), now().into());
        m.insert("generation".into(), 1.into());
        for field in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"] {
            m.remove(field);
        }
        if info.status_subresource {
            match info.kind.as_str() {
                "Pod" => obj["status"] = json!({"phase": "Pending"}),
                "Namespace" => obj["status"] = json!({"phase": "Active"}),
                "Node" => {}
                _ => set_or_remove(&mut obj, "status", None),
            }
        }
        Ok(self.write(Change::Added, key, obj, dry_run))
    }

    /// Writes `cand` over the stored object: the shared tail of update, patch and apply.
    fn replace_obj(
        &mut self,
        info: &ResourceInfo,
        key: &Key,
        mut cand: Value,
        sub: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.objects.get(key).cloned().ok_or_else(|| ApiError::not_found(info, &key.name))?;
        check_type(info, &mut cand)?;
        if let Some(name) = str_at(&cand, "/metadata/name").filter(|n| *n != key.name) {
            let msg = format!("the name of the object ({name}) does not match the name on the URL ({})", key.name);
            return Err(ApiError::bad_request(msg));
        }
        let old_rv = str_at(&old, "/metadata/resourceVersion").unwrap_or_default();
        if str_at(&cand, "/metadata/resourceVersion").is_some_and(|rv| !rv.is_empty() && rv != old_rv) {
            return Err(ApiError::conflict(info, &key.name, STALE));
        }
        let mut new = match sub {
            Some("status") => {
                let mut new = old.clone();
                set_or_remove(&mut new, "status", cand.get("status").cloned());
                new
            }
            _ => {
                if info.status_subresource {
                    set_or_remove(&mut cand, "status", old.get("status").cloned());
                }
                cand
            }
        };
        let m = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        m.insert("resourceVersion".into(), old_rv.into());
        m.remove("managedFields");
        if generation_changes(info, &old, &new) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), (generation + 1).into());
        }
        if new == old {
            return Ok(old);
        }
        let finalizers_left =
            new.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let graceful = new.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) > 0;
        if new.pointer("/metadata/deletionTimestamp").is_some() && !finalizers_left && !graceful {
            return Ok(self.write(Change::Deleted, key.clone(), new, dry_run));
        }
        Ok(self.write(Change::Modified, key.clone(), new, dry_run))
    }

    fn delete_obj(&mut self, info: &ResourceInfo, key: &Key, opts: &Value) -> Result<Value, ApiError> {
        let dry_run = opts.get("dryRun").is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()));
        let old = self.objects.get(key).cloned().ok_or_else(|| ApiError::not_found(info, &key.name))?;
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let wanted = opts.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str);
            let actual = old["metadata"][field].as_str().unwrap_or_default();
            if let Some(wanted) = wanted.filter(|w| *w != actual) {
                let why =
                    format!("Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}");
                return Err(ApiError::conflict(info, &key.name, &why));
            }
        }
        if opts.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
            && let (Some(uid), false) = (str_at(&old, "/metadata/uid"), dry_run)
        {
            self.orphaned.insert(uid.to_string());
        }
        if let Some(marked) = self.delete_gracefully(key, &old, opts, dry_run) {
            return Ok(marked);
        }
        let has_finalizers =
            old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut new = old.clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), now().into());
            m.insert("deletionGracePeriodSeconds".into(), 0.into());
            return Ok(self.write(Change::Modified, key.clone(), new, dry_run));
        }
        Ok(self.write(Change::Deleted, key.clone(), old, dry_run))
    }

    /// Deletes every object whose owners (by uid) are all gone, strips owner references to objects
    /// deleted with the orphan policy and dangling references next to live owners, until nothing
    /// changes.
    fn collect_garbage(&mut self) {
        loop {
            let live: HashSet<String> =
                self.objects.values().filter_map(|o| str_at(o, "/metadata/uid").map(String::from)).collect();
            let mut changed = false;
            let keys: Vec<Key> = self.objects.keys().cloned().collect();
            for key in keys {
                let Some(obj) = self.objects.get(&key).cloned() else { continue };
                let Some(refs) = obj.pointer("/metadata/ownerReferences").and_then(Value::as_array) else { continue };
                if refs.is_empty() {
                    continue;
                }
                let uid_of = |r: &Value| r["uid"].as_str().unwrap_or_default().to_string();
                let owned: Vec<&Value> = refs.iter().filter(|r| !self.orphaned.contains(&uid_of(r))).collect();
                let alive: Vec<Value> =
                    owned.iter().filter(|r| live.contains(&uid_of(r))).map(|r| (*r).clone()).collect();
                let Some(info) = self.info_for(&key.group, &key.version, &key.resource) else { continue };
                if !owned.is_empty() && alive.is_empty() {
                    if obj.pointer("/metadata/deletionTimestamp").is_none() {
                        changed |= self.delete_obj(&info, &key, &json!({"propagationPolicy": "Background"})).is_ok();
                    }
                } else if alive.len() != refs.len() {
                    // Owners deleted with the orphan policy, and dangling owners next to live ones, are dropped.
                    let mut new = obj.clone();
                    set_or_remove(&mut new["metadata"], "ownerReferences", (!alive.is_empty()).then_some(alive.into()));
                    changed |= self.replace_obj(&info, &key, new, None, false).is_ok();
                }
            }
            if !changed {
                return;
            }
        }
    }
}

impl State {
    fn pod_finished(pod: &Value) -> bool {
        matches!(str_at(pod, "/status/phase"), Some("Succeeded" | "Failed"))
    }

    /// The pods a quota counts in a namespace: not finished (a terminating pod still counts).
    fn pods_used(&self, ns: &str) -> usize {
        self.objects
            .iter()
            .filter(|(k, o)| k.group.is_empty() && k.resource == "pods" && k.ns == ns && !Self::pod_finished(o))
            .count()
    }

    fn quotas(&self, ns: &str) -> Vec<(Key, Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.group.is_empty() && k.resource == "resourcequotas" && k.ns == ns)
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    /// ResourceQuota admission of a pod create: 403 when a quota's `spec.hard.pods` would be
    /// exceeded, with kube-apiserver's message.
    fn admit_quota(&self, ns: &str, pod_name: &str) -> Result<(), ApiError> {
        let used = self.pods_used(ns);
        for (key, quota) in self.quotas(ns) {
            let Some(hard) = quota.pointer("/spec/hard/pods").and_then(quantity) else { continue };
            if used as u64 + 1 > hard {
                let msg = format!(
                    "pods \"{pod_name}\" is forbidden: exceeded quota: {}, requested: pods=1, used: pods={used}, limited: pods={hard}",
                    key.name
                );
                let mut e = ApiError::new(403, "Forbidden", msg);
                e.details = Some(json!({"name": pod_name, "kind": "pods"}));
                return Err(e);
            }
        }
        Ok(())
    }

    /// The quota controller: `status.hard` and `status.used.pods` of the namespace's quotas.
    fn refresh_quotas(&mut self, ns: &str) {
        let used = self.pods_used(ns);
        for (key, quota) in self.quotas(ns) {
            let hard = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
            let status = json!({"hard": hard, "used": {"pods": used.to_string()}});
            if quota.get("status") != Some(&status) {
                let mut new = quota.clone();
                new["status"] = status;
                self.write(Change::Modified, key, new, false);
            }
        }
    }

    /// Graceful deletion of a pod, when it applies: marks it and starts the timer that removes it.
    fn delete_gracefully(&mut self, key: &Key, old: &Value, opts: &Value, dry_run: bool) -> Option<Value> {
        let after = self.pod_termination?;
        if !(key.group.is_empty() && key.resource == "pods") {
            return None;
        }
        let requested = opts.get("gracePeriodSeconds").and_then(Value::as_i64);
        let bound = str_at(old, "/spec/nodeName").is_some_and(|n| !n.is_empty());
        if requested == Some(0) || !bound || Self::pod_finished(old) {
            return None;
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Some(old.clone());
        }
        let grace = requested
            .or_else(|| old.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30);
        let mut new = old.clone();
        let at = k8s_openapi::jiff::Timestamp::now().as_second() + grace;
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), timestamp(at).into());
        m.insert("deletionGracePeriodSeconds".into(), grace.into());
        let written = self.write(Change::Modified, key.clone(), new, dry_run);
        if dry_run {
            return Some(written);
        }
        let (weak, key, uid) = (self.me.clone(), key.clone(), str_at(old, "/metadata/uid").map(String::from));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(after).await;
                let Some(state) = weak.upgrade() else { return };
                let mut st = lock(&state);
                let Some(pod) = st.objects.get(&key).cloned() else { return };
                if str_at(&pod, "/metadata/uid").map(String::from) != uid {
                    return;
                }
                let finalizers =
                    pod.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
                if finalizers {
                    let mut marked = pod;
                    meta_mut(&mut marked).insert("deletionGracePeriodSeconds".into(), 0.into());
                    st.write(Change::Modified, key, marked, false);
                } else {
                    st.write(Change::Deleted, key, pod, false);
                    st.collect_garbage();
                }
            });
        }
        Some(written)
    }

    /// One pass of the StatefulSet controller stand-in; returns when it wants to run again
    /// (a backoff), if not on the next change.
    fn statefulset_pass(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let sets: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, _)| k.group == "apps" && k.resource == "statefulsets")
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        let live: HashSet<String> =
            sets.iter().filter_map(|(_, s)| str_at(s, "/metadata/uid").map(String::from)).collect();
        self.sts_backoff.retain(|uid, _| live.contains(uid));
        let mut next: Option<Instant> = None;
        let pods = self.info_for("", "v1", "pods").expect("pods are built in");
        for (key, sts) in sets {
            let replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            if replicas != 1 || sts.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let uid = str_at(&sts, "/metadata/uid").unwrap_or_default().to_string();
            let pod_name = format!("{}-0", key.name);
            if self.objects.contains_key(&key_of(&pods, &key.ns, &pod_name)) {
                self.sts_backoff.remove(&uid);
                continue;
            }
            if let Some((_, at)) = self.sts_backoff.get(&uid)
                && *at > now
            {
                next = Some(next.map_or(*at, |n| n.min(*at)));
                continue;
            }
            let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("statefulset.kubernetes.io/pod-name".into(), pod_name.clone().into());
                l.insert("apps.kubernetes.io/pod-index".into(), "0".into());
            }
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": key.ns, "labels": labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": key.name,
                        "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            if let Some(a) = template.pointer("/metadata/annotations") {
                pod["metadata"]["annotations"] = a.clone();
            }
            pod["spec"]["hostname"] = pod_name.clone().into();
            match self.create_obj(&pods, &key.ns, pod, false) {
                Ok(_) => {
                    self.sts_backoff.remove(&uid);
                }
                Err(e) => {
                    let message =
                        format!("create Pod {pod_name} in StatefulSet {} failed error: {}", key.name, e.message);
                    self.record_event(&key, &sts, "Warning", "FailedCreate", &message, "statefulset-controller");
                    let backoff = self
                        .sts_backoff
                        .get(&uid)
                        .map_or(Duration::from_millis(50), |(b, _)| (*b * 2).min(Duration::from_secs(2)));
                    let at = now + backoff;
                    self.sts_backoff.insert(uid, (backoff, at));
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        next
    }

    /// A core/v1 Event about an object, aggregated as client-go's recorder does: the same
    /// object, reason and message bump `count` and `lastTimestamp` of the existing Event.
    fn record_event(&mut self, about: &Key, obj: &Value, kind: &str, reason: &str, message: &str, component: &str) {
        let Some(info) = self.info_for("", "v1", "events") else { return };
        let obj_info = self.info_for(&about.group, &about.version, &about.resource);
        let uid = str_at(obj, "/metadata/uid").unwrap_or_default().to_string();
        let stamp = now();
        let existing = self.objects.iter().find(|(k, e)| {
            same_resource(k, &info)
                && k.ns == about.ns
                && str_at(e, "/involvedObject/uid") == Some(uid.as_str())
                && str_at(e, "/reason") == Some(reason)
                && str_at(e, "/message") == Some(message)
        });
        if let Some((key, e)) = existing.map(|(k, e)| (k.clone(), e.clone())) {
            let mut e = e;
            e["count"] = (e["count"].as_i64().unwrap_or(1) + 1).into();
            e["lastTimestamp"] = stamp.into();
            self.write(Change::Modified, key, e, false);
            return;
        }
        let name = format!("{}.{:016x}", about.name, self.random());
        let involved = json!({"kind": obj_info.as_ref().map(|i| i.kind.clone()).unwrap_or_default(),
            "namespace": about.ns, "name": about.name, "uid": uid,
            "apiVersion": obj_info.as_ref().map(|i| i.api_version()).unwrap_or_default(),
            "resourceVersion": str_at(obj, "/metadata/resourceVersion").unwrap_or_default()});
        let event = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": about.ns, "uid": self.uid(), "creationTimestamp": stamp},
            "involvedObject": involved, "reason": reason, "message": message, "type": kind,
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": "",
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1});
        self.write(Change::Added, key_of(&info, &about.ns, &name), event, false);
    }
}

/// A count quantity (`"2"`, `2`); suffixes are not modelled.
/// Whether an update bumps `metadata.generation`: a change of `spec`; for a custom resource
/// without a status subresource (Argo's Workflows), a change of anything but `metadata`, as
/// apiextensions-apiserver counts it (so a Workflow's status writes bump it too).
fn generation_changes(info: &ResourceInfo, old: &Value, new: &Value) -> bool {
    let custom = info.group.contains('.') && !info.group.ends_with(".k8s.io");
    if custom && !info.status_subresource {
        let content = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
            }
            v
        };
        return content(old) != content(new);
    }
    new.get("spec") != old.get("spec")
}

fn quantity(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn timestamp(second: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(second).expect("time in range").to_string()
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match value {
            Some(v) => o.insert(field.into(), v),
            None => o.remove(field),
        };
    }
}

/// Fills in `apiVersion`/`kind` and rejects a body of another kind.
fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    let api_version = info.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", info.kind.as_str())] {
        match obj.get(field).and_then(Value::as_str) {
            Some(got) if got != want => {
                return Err(ApiError::bad_request(format!("{field} {got} does not match the expected {want}")));
            }
            Some(_) => {}
            None => obj[field] = want.into(),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Selectors

enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

#[derive(Default)]
struct Selector {
    labels: Vec<Requirement>,
    /// (dotted path, equal?, value)
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut sel = Selector::default();
        for part in split_top_level(query.get("labelSelector").map_or("", String::as_str)) {
            sel.labels.push(parse_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!("unable to parse requirement: invalid label selector: {part:?}"))
            })?);
        }
        for part in split_top_level(query.get("fieldSelector").map_or("", String::as_str)) {
            let (path, eq, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector: {part:?}")));
            };
            sel.fields.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(sel)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let int = |k: &str| label(k).and_then(|v| v.parse::<i64>().ok());
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Eq(k, v) => label(k) == Some(v),
            Requirement::Ne(k, v) => label(k) != Some(v),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::Gt(k, n) => int(k).is_some_and(|l| l > *n),
            Requirement::Lt(k, n) => int(k).is_some_and(|l| l < *n),
        });
        labels_ok
            && self.fields.iter().all(|(path, eq, want)| {
                let ptr = format!("/{}", path.replace('.', "/"));
                let got = match obj.pointer(&ptr) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                };
                (got == *want) == *eq
            })
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn parse_requirement(part: &str) -> Option<Requirement> {
    if let Some((head, rest)) = part.split_once('(') {
        let values: Vec<String> =
            rest.strip_suffix(')')?.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        let mut words = head.split_whitespace();
        let (key, op) = (words.next()?.to_string(), words.next()?);
        return match op {
            "in" => Some(Requirement::In(key, values)),
            "notin" => Some(Requirement::NotIn(key, values)),
            _ => None,
        };
    }
    let pair = |sep: &str| part.split_once(sep).map(|(k, v)| (k.trim().to_string(), v.trim().to_string()));
    if let Some((k, v)) = pair("!=") {
        Some(Requirement::Ne(k, v))
    } else if let Some((k, v)) = pair("==").or_else(|| pair("=")) {
        Some(Requirement::Eq(k, v))
    } else if let Some((k, v)) = pair(">") {
        Some(Requirement::Gt(k, v.parse().ok()?))
    } else if let Some((k, v)) = pair("<") {
        Some(Requirement::Lt(k, v.parse().ok()?))
    } else if let Some(k) = part.strip_prefix('!') {
        Some(Requirement::NotExists(k.trim().to_string()))
    } else {
        Some(Requirement::Exists(part.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Route {
    group: String,
    version: String,
    resource: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !matches!(tail, ["status" | "finalize"]) => {
            (Some(ns.to_string()), tail)
        }
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Route { group: group.into(), version: version.into(), resource: resource.into(), ns, name, sub })
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn full(body: Vec<u8>) -> ResponseBody {
    Full::new(Bytes::from(body))
        .map_err(|never: std::convert::Infallible| -> BoxError { match never {} })
        .boxed_unsync()
}

fn respond(code: u16, v: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(v).expect("JSON serializes")))
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let mut resp = respond(e.code, &e.status());
    if e.code == 429 {
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

fn fault_error(fault: Fault) -> ApiError {
    match fault {
        Fault::Conflict => ApiError::new(409, "Conflict", "injected fault: conflict"),
        Fault::TooManyRequests => {
            let mut e = ApiError::new(429, "TooManyRequests", "Too many requests, please try again later.");
            e.details = Some(json!({"retryAfterSeconds": 1}));
            e
        }
        Fault::Internal => ApiError::new(500, "InternalError", "Internal error occurred: injected fault"),
        Fault::Timeout(_) => ApiError::new(
            504,
            "Timeout",
            "Timeout: request did not complete within the allotted timeout (injected fault)",
        ),
        Fault::Delay(_) => ApiError::new(500, "InternalError", "a delay is not an error"),
    }
}

/// The object as `PartialObjectMetadata` when kube's metadata API asked for it.
fn shape(obj: Value, meta_only: bool) -> Value {
    if meta_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
    } else {
        obj
    }
}

impl tower::Service<Request<kube::client::Body>> for FakeApiServer {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.handle(req).await) })
    }
}

impl FakeApiServer {
    async fn handle(&self, req: Request<kube::client::Body>) -> Response<ResponseBody> {
        let (parts, body) = req.into_parts();
        let query = parse_query(parts.uri.query());
        let Some(route) = parse_path(parts.uri.path()) else { return error_response(&ApiError::no_route()) };
        let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let verb = match (&parts.method, route.name.is_some()) {
            (&Method::GET, true) => Verb::Get,
            (&Method::GET, false) if is_watch => Verb::Watch,
            (&Method::GET, false) => Verb::List,
            (&Method::POST, _) => Verb::Create,
            (&Method::PUT, true) => Verb::Update,
            (&Method::PATCH, true) => Verb::Patch,
            (&Method::DELETE, true) => Verb::Delete,
            (&Method::DELETE, false) => Verb::DeleteCollection,
            _ => {
                return error_response(&ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method",
                ));
            }
        };
        let (info, known, fault) = {
            let mut st = lock(&self.state);
            st.log.push(RequestRecord {
                verb,
                group: route.group.clone(),
                version: route.version.clone(),
                resource: route.resource.clone(),
                namespace: route.ns.clone(),
                name: route.name.clone(),
                subresource: route.sub.clone(),
            });
            if st.absent.contains(&(route.group.clone(), route.resource.clone())) {
                // No CRD, no route: before faults, scope and subresource checks, as the
                // request never reaches a handler.
                return error_response(&ApiError::no_route());
            }
            let found = st.info_for(&route.group, &route.version, &route.resource);
            let known = found.is_some();
            let info = found.unwrap_or_else(|| ResourceInfo {
                group: route.group.clone(),
                version: route.version.clone(),
                resource: route.resource.clone(),
                kind: guess_kind(&route.resource),
                namespaced: route.ns.is_some() || route.name.is_none(),
                status_subresource: false,
            });
            let fault = st.take_fault(&info, verb);
            (info, known, fault)
        };
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(fault) => {
                if let Fault::Timeout(d) = fault {
                    tokio::time::sleep(d).await;
                }
                return error_response(&fault_error(fault));
            }
            None => {}
        }
        let scope_ok = !known
            || match (info.namespaced, route.ns.is_some()) {
                (true, true) | (false, false) => true,
                (true, false) => matches!(verb, Verb::List | Verb::Watch | Verb::DeleteCollection),
                (false, true) => false,
            };
        let sub_ok = match route.sub.as_deref() {
            None => true,
            Some("status") => info.status_subresource && matches!(verb, Verb::Get | Verb::Update | Verb::Patch),
            Some("eviction") => info.resource == "pods" && verb == Verb::Create,
            Some(_) => false,
        };
        if !scope_ok || !sub_ok || (verb == Verb::Create && route.name.is_some() && route.sub.is_none()) {
            return error_response(&ApiError::no_route());
        }
        let accept = parts.headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let meta_only = accept.contains("as=PartialObjectMetadata");
        let content_type =
            parts.headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
        };
        let selector = match Selector::parse(&query) {
            Ok(s) => s,
            Err(e) => return error_response(&e),
        };
        if verb == Verb::Watch {
            return self.watch(info, route.ns, selector, &query, meta_only);
        }
        let req = Req { verb, info, route, query, content_type, body, selector };
        let result = self.dispatch(&req);
        if matches!(verb, Verb::Delete | Verb::DeleteCollection) || req.route.sub.as_deref() == Some("eviction") {
            self.schedule_gc();
        }
        match result {
            Ok((code, mut v)) if meta_only && v["items"].is_array() => {
                let items = v["items"].as_array_mut().expect("checked").drain(..).map(|o| shape(o, true)).collect();
                v["items"] = Value::Array(items);
                v["apiVersion"] = "meta.k8s.io/v1".into();
                v["kind"] = "PartialObjectMetadataList".into();
                respond(code, &v)
            }
            Ok((code, v)) => respond(code, &shape(v, meta_only)),
            Err(e) => error_response(&e),
        }
    }

    fn dispatch(&self, req: &Req) -> Result<(u16, Value), ApiError> {
        let info = &req.info;
        let ns = req.route.ns.as_deref().unwrap_or_default();
        let name = req.route.name.as_deref().unwrap_or_default();
        let key = key_of(info, ns, name);
        let dry_run = req.query.get("dryRun").is_some_and(|d| d == "All");
        let mut st = lock(&self.state);
        match req.verb {
            Verb::Get => st.objects.get(&key).cloned().map(|o| (200, o)).ok_or_else(|| ApiError::not_found(info, name)),
            Verb::List => {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, o)| same_resource(k, info) && (ns.is_empty() || k.ns == ns) && req.selector.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect();
                Ok((200, list_body(info, st.rv, items)))
            }
            Verb::Create if req.route.sub.as_deref() == Some("eviction") => {
                let opts = req.json()?.get("deleteOptions").cloned().unwrap_or(Value::Null);
                st.delete_obj(info, &key, &opts)?;
                Ok((
                    201,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            Verb::Create => st.create_obj(info, ns, req.json()?, dry_run).map(|o| (201, o)),
            Verb::Update => {
                st.replace_obj(info, &key, req.json()?, req.route.sub.as_deref(), dry_run).map(|o| (200, o))
            }
            Verb::Patch => self.patch(&mut st, req, &key, dry_run),
            Verb::Delete => st.delete_obj(info, &key, &req.json_or_null()?).map(|o| (200, o)),
            Verb::DeleteCollection => {
                let opts = req.json_or_null()?;
                let keys: Vec<Key> = st
                    .objects
                    .iter()
                    .filter(|(k, o)| same_resource(k, info) && (ns.is_empty() || k.ns == ns) && req.selector.matches(o))
                    .map(|(k, _)| k.clone())
                    .collect();
                let deleted = keys.iter().filter_map(|k| st.delete_obj(info, k, &opts).ok()).collect();
                Ok((200, list_body(info, st.rv, deleted)))
            }
            Verb::Watch => unreachable!("watches are served by FakeApiServer::watch"),
        }
    }

    fn patch(&self, st: &mut State, req: &Req, key: &Key, dry_run: bool) -> Result<(u16, Value), ApiError> {
        let info = &req.info;
        let sub = req.route.sub.as_deref();
        let existing = st.objects.get(key).cloned();
        let media = req.content_type.split(';').next().unwrap_or_default().trim();
        let patched = match media {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let patch = req.json()?;
                if media.starts_with("application/strategic") && has_directive(&patch) {
                    return Err(ApiError::bad_request("the fake apiserver does not model strategic-merge directives"));
                }
                let mut doc = existing.ok_or_else(|| ApiError::not_found(info, &key.name))?;
                json_patch::merge(&mut doc, &patch);
                doc
            }
            "application/json-patch+json" => {
                let patch: json_patch::Patch = serde_json::from_slice(&req.body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                let mut doc = existing.ok_or_else(|| ApiError::not_found(info, &key.name))?;
                json_patch::patch(&mut doc, &patch.0)
                    .map_err(|e| ApiError::invalid(format!("the JSON patch failed: {e}")))?;
                doc
            }
            "application/apply-patch+yaml" => {
                let manager = req.query.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
                    ApiError::invalid("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                })?;
                let applied: Value = serde_json::from_slice(&req.body)
                    .or_else(|_| serde_saphyr::from_slice(&req.body))
                    .map_err(|e| ApiError::bad_request(format!("invalid apply patch: {e}")))?;
                if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
                    return Err(ApiError::bad_request("apply patches need apiVersion and kind"));
                }
                let applied_key = (key.clone(), manager.clone());
                let Some(mut doc) = existing else {
                    if sub.is_some() {
                        return Err(ApiError::not_found(info, &key.name));
                    }
                    let mut obj = applied.clone();
                    meta_mut(&mut obj).insert("name".into(), key.name.clone().into());
                    let created = st.create_obj(info, &key.ns, obj, dry_run)?;
                    if !dry_run {
                        st.applied.insert(applied_key, applied);
                    }
                    return Ok((201, created));
                };
                if let Some(previous) = st.applied.get(&applied_key) {
                    prune(&mut doc, previous, &applied);
                }
                json_patch::merge(&mut doc, &applied);
                let result = st.replace_obj(info, key, doc, sub, dry_run)?;
                if !dry_run {
                    st.applied.insert(applied_key, applied);
                }
                return Ok((200, result));
            }
            other => {
                let msg = format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                );
                return Err(ApiError::new(415, "UnsupportedMediaType", msg));
            }
        };
        st.replace_obj(info, key, patched, sub, dry_run).map(|o| (200, o))
    }

    fn watch(
        &self,
        info: ResourceInfo,
        ns: Option<String>,
        selector: Selector,
        query: &HashMap<String, String>,
        meta_only: bool,
    ) -> Response<ResponseBody> {
        let flag = |k: &str| matches!(query.get(k).map(String::as_str), Some("true" | "1"));
        let rv = query.get("resourceVersion").cloned().unwrap_or_default();
        let start = if rv.is_empty() || rv == "0" {
            None
        } else {
            match rv.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return error_response(&ApiError::bad_request(format!("invalid resource version: {rv}"))),
            }
        };
        let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok());
        let st = lock(&self.state);
        let mut w = Watch {
            state: self.state.clone(),
            rx: st.ticks.subscribe(),
            epoch: st.drop_epoch,
            info,
            ns,
            selector,
            meta_only,
            cursor: st.rv,
            pending: VecDeque::new(),
            done: false,
            deadline: timeout.map(|t| Instant::now() + Duration::from_secs(t)),
            bookmarks: flag("allowWatchBookmarks").then_some(st.bookmark_interval),
            next_bookmark: Instant::now() + st.bookmark_interval,
        };
        match start {
            Some(from) => {
                w.cursor = from;
                w.collect(&st);
            }
            None => {
                let initial: Vec<Value> =
                    st.objects.iter().filter(|(k, o)| w.selects(k, o)).map(|(_, o)| o.clone()).collect();
                for obj in initial {
                    w.push("ADDED", obj);
                }
                if flag("sendInitialEvents") {
                    let mut bookmark = w.bookmark(st.rv);
                    bookmark["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                    w.push("BOOKMARK", bookmark);
                }
            }
        }
        drop(st);
        let stream = futures::stream::unfold(w, |mut w| async move { w.next().await.map(|item| (item, w)) });
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("valid response")
    }
}

struct Req {
    verb: Verb,
    info: ResourceInfo,
    route: Route,
    query: HashMap<String, String>,
    content_type: String,
    body: Bytes,
    selector: Selector,
}

impl Req {
    fn json(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
    }
    fn json_or_null(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() { Ok(Value::Null) } else { self.json() }
    }
}

fn list_body(info: &ResourceInfo, rv: u64, items: Vec<Value>) -> Value {
    json!({"apiVersion": info.api_version(), "kind": format!("{}List", info.kind),
        "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

fn has_directive(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k.starts_with('$') || has_directive(v)),
        Value::Array(a) => a.iter().any(has_directive),
        _ => false,
    }
}

/// Removes from `obj` the fields `previous` applied and `applied` no longer does.
fn prune(obj: &mut Value, previous: &Value, applied: &Value) {
    let (Some(o), Some(prev)) = (obj.as_object_mut(), previous.as_object()) else { return };
    for (k, pv) in prev {
        match applied.get(k) {
            None => {
                o.remove(k);
            }
            Some(av) if pv.is_object() && av.is_object() => {
                if let Some(child) = o.get_mut(k) {
                    prune(child, pv, av);
                }
            }
            Some(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watch streams

struct Watch {
    state: Arc<Mutex<State>>,
    rx: watch::Receiver<(u64, u64)>,
    epoch: u64,
    info: ResourceInfo,
    ns: Option<String>,
    selector: Selector,
    meta_only: bool,
    /// Every change up to this resourceVersion has been considered.
    cursor: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    deadline: Option<Instant>,
    bookmarks: Option<Duration>,
    next_bookmark: Instant,
}

impl Watch {
    fn selects(&self, k: &Key, obj: &Value) -> bool {
        same_resource(k, &self.info) && self.ns.as_ref().is_none_or(|ns| *ns == k.ns) && self.selector.matches(obj)
    }

    fn push(&mut self, kind: &str, obj: Value) {
        let obj = if kind == "ERROR" || kind == "BOOKMARK" { obj } else { shape(obj, self.meta_only) };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("JSON serializes");
        line.push(b'\n');
        self.pending.push_back(Bytes::from(line));
    }

    fn bookmark(&self, rv: u64) -> Value {
        json!({"apiVersion": self.info.api_version(), "kind": self.info.kind, "metadata": {"resourceVersion": rv.to_string()}})
    }

    /// Queues the events after the cursor, or a 410 when the history no longer reaches back.
    fn collect(&mut self, st: &State) {
        if self.cursor < st.floor {
            let msg = format!("too old resource version: {} ({})", self.cursor, st.floor + 1);
            self.push("ERROR", ApiError::new(410, "Expired", msg).status());
            self.done = true;
            return;
        }
        let mut events = Vec::new();
        // History is in resourceVersion order: start at the cursor instead of scanning it all
        // (every watch wakes on every write; a scan made a busy server quadratic).
        let from = st.history.partition_point(|e| e.rv <= self.cursor);
        for e in st.history.range(from..) {
            let same = same_resource(&e.key, &self.info) && self.ns.as_ref().is_none_or(|ns| *ns == e.key.ns);
            if !same {
                continue;
            }
            let was = e.old.as_ref().is_some_and(|o| self.selector.matches(o));
            let is = self.selector.matches(&e.new);
            let event = match (e.change, was, is) {
                (Change::Added, _, true) => Some(("ADDED", e.new.clone())),
                (Change::Modified, true, true) => Some(("MODIFIED", e.new.clone())),
                (Change::Modified, false, true) => Some(("ADDED", e.new.clone())),
                (Change::Modified, true, false) => {
                    let mut old = e.old.clone().expect("a modified object had an old state");
                    meta_mut(&mut old).insert("resourceVersion".into(), e.rv.to_string().into());
                    Some(("DELETED", old))
                }
                (Change::Deleted, true, _) => Some(("DELETED", e.new.clone())),
                _ => None,
            };
            events.extend(event);
        }
        for (kind, obj) in events {
            self.push(kind, obj);
        }
        self.cursor = self.cursor.max(st.rv);
    }

    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(Frame::data(line)));
            }
            if self.done {
                return None;
            }
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline.unwrap_or(far)) => return None,
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let epoch = self.rx.borrow_and_update().1;
                    let gone = lock(&self.state)
                        .absent
                        .contains(&(self.info.group.clone(), self.info.resource.clone()));
                    if gone {
                        // Its CRD was removed: the server closes the stream.
                        self.done = true;
                        return None;
                    }
                    if epoch != self.epoch {
                        self.done = true;
                        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "unexpected EOF during chunk");
                        return Some(Err(eof.into()));
                    }
                    let state = self.state.clone();
                    self.collect(&lock(&state));
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks.is_some() => {
                    let state = self.state.clone();
                    let st = lock(&state);
                    self.collect(&st);
                    if !self.done {
                        let bookmark = self.bookmark(self.cursor);
                        self.push("BOOKMARK", bookmark);
                    }
                    self.next_bookmark = Instant::now() + self.bookmarks.unwrap_or_default();
                }
            }
        }
    }
}
