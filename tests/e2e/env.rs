//! Settings from the environment, the client, per-test namespaces, cleanup and bounded waits.
//!
//! Every test runs inside [`scenario`]: it takes the cluster lock, builds an [`Env`], runs the
//! body, then cleans up whether the body returned, failed or panicked, and only then reports.

use anyhow::{Context as _, anyhow, bail};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::task::JoinHandle;

/// On every namespace the suite creates, and on its PersistentVolumes: what
/// `hack/e2e.sh cleanup` deletes after an interrupted run.
pub const SUITE_LABEL: &str = "e2e.affinity-assistant.dev/suite";
/// On the suite's PersistentVolumes: the namespace they were made for.
pub const NAMESPACE_LABEL: &str = "e2e.affinity-assistant.dev/namespace";
/// On a node the suite cordoned: the cordon is ours to lift, even after an interrupted run.
pub const CORDON_ANNOTATION: &str = "e2e.affinity-assistant.dev/cordoned";

pub const SKIP_HINT: &str = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh";

/// Which Tekton (or Argo Workflows) the suite talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TektonChoice {
    /// Real when a Tekton controller Deployment is available, else fake.
    Auto,
    /// The suite plays Tekton's part.
    Fake,
    /// A Tekton controller creates TaskRuns and pods.
    Real,
}

/// Everything the suite reads from the environment, parsed once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    pub tekton: TektonChoice,
    /// Which Argo Workflows the Argo scenarios talk to (`E2E_ARGO`, the same three choices).
    pub argo: TektonChoice,
    /// Bound on every ordinary wait (scheduling, placeholders appearing or going).
    pub timeout: Duration,
    /// Bound on a cordoned node's placeholder moving (the add-on's grace period is inside it).
    pub move_timeout: Duration,
    pub addon_namespace: String,
    pub addon_lease: String,
    /// The image of the fake task pods (never needs to start).
    pub pod_image: String,
    /// The image of the steps when real Tekton runs the tasks (needs `sleep`).
    pub step_image: String,
    pub keep_on_failure: bool,
    /// Set by `hack/e2e.sh` when it runs the add-on on this machine.
    pub local_addon: bool,
}

impl Settings {
    pub fn from_env() -> Result<Option<Settings>, String> {
        Settings::from_lookup(|k| std::env::var(k).ok())
    }

    /// `Ok(None)` when `E2E_KUBECONFIG` is unset or empty: no cluster to test against.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let Some(kubeconfig) = get("E2E_KUBECONFIG") else { return Ok(None) };
        let tekton = match get("E2E_TEKTON").as_deref() {
            None | Some("auto") => TektonChoice::Auto,
            Some("fake") => TektonChoice::Fake,
            Some("real") => TektonChoice::Real,
            Some(other) => return Err(format!("E2E_TEKTON={other}: expected auto, fake or real")),
        };
        let argo = match get("E2E_ARGO").as_deref() {
            None | Some("auto") => TektonChoice::Auto,
            Some("fake") => TektonChoice::Fake,
            Some("real") => TektonChoice::Real,
            Some(other) => return Err(format!("E2E_ARGO={other}: expected auto, fake or real")),
        };
        let duration = |key: &str, default: u64| match get(key) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => parse_duration(&v).map_err(|e| format!("{key}={v}: {e}")),
        };
        let flag = |key: &str| matches!(get(key).as_deref(), Some("1" | "true" | "yes"));
        Ok(Some(Settings {
            kubeconfig: PathBuf::from(kubeconfig),
            context: get("E2E_CONTEXT"),
            tekton,
            argo,
            timeout: duration("E2E_TIMEOUT", 90)?,
            move_timeout: duration("E2E_MOVE_TIMEOUT", 180)?,
            addon_namespace: get("E2E_ADDON_NAMESPACE").unwrap_or_else(|| "affinity-assistant".into()),
            addon_lease: get("E2E_ADDON_LEASE").unwrap_or_else(|| "affinity-assistant-leader".into()),
            pod_image: get("E2E_POD_IMAGE").unwrap_or_else(|| affinity_assistant::config::DEFAULT_IMAGE.into()),
            step_image: get("E2E_STEP_IMAGE").unwrap_or_else(|| "busybox:1.36".into()),
            keep_on_failure: flag("E2E_KEEP_ON_FAILURE"),
            local_addon: flag("E2E_LOCAL_ADDON"),
        }))
    }

    /// The settings of an ignored test: it was asked for explicitly, so a missing kubeconfig
    /// is an error, not a skip.
    pub fn required() -> anyhow::Result<Settings> {
        match Settings::from_env() {
            Ok(Some(s)) => Ok(s),
            Ok(None) => bail!("E2E_KUBECONFIG is not set: this test {SKIP_HINT}"),
            Err(e) => bail!("bad e2e setting: {e}"),
        }
    }
}

/// `90`, `90s`, `3m`: whole seconds or minutes.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let (digits, scale) = if let Some(d) = v.strip_suffix('m') {
        (d, 60)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1)
    } else {
        (v, 1)
    };
    let n: u64 = digits.trim().parse().map_err(|_| "expected seconds (90, 90s) or minutes (3m)".to_string())?;
    if n == 0 {
        return Err("must be more than zero".into());
    }
    Ok(Duration::from_secs(n * scale))
}

/// A client for the kubeconfig in the settings. Each test builds its own: a client keeps
/// background tasks on the runtime that built it, and every `#[tokio::test]` has its own.
pub async fn client(settings: &Settings) -> anyhow::Result<Client> {
    let path = &settings.kubeconfig;
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let options = KubeConfigOptions { context: settings.context.clone(), ..Default::default() };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building the client")
}

/// Eight hex digits that differ between tests, processes and runs.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let parts =
        [nanos.to_string(), std::process::id().to_string(), COUNTER.fetch_add(1, Ordering::Relaxed).to_string()];
    affinity_assistant::names::short_hash(parts.iter().map(String::as_str), 8)
}

/// `aa-e2e-<what>-<suffix>`: a DNS label that says which test made it.
pub fn namespace_name(what: &str, suffix: &str) -> String {
    let room = 63 - "aa-e2e-".len() - 1 - suffix.len();
    let what = affinity_assistant::names::sanitize_label(what, room);
    format!("aa-e2e-{what}-{suffix}")
}

/// Tests that change what every other test sees (cordons, counting placeholders per node)
/// take the cluster exclusively; the rest share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Shared,
    Exclusive,
}

static CLUSTER: RwLock<()> = RwLock::const_new(());

enum ClusterGuard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

async fn lock(access: Access) -> ClusterGuard {
    match access {
        Access::Shared => ClusterGuard::Shared(CLUSTER.read().await),
        Access::Exclusive => ClusterGuard::Exclusive(CLUSTER.write().await),
    }
}

/// One test's view of the cluster and what it must undo.
pub struct Env {
    pub client: Client,
    pub settings: Settings,
    pub tekton: crate::tekton::Mode,
    /// Who plays Argo's part: a real workflow-controller, or the suite (`e2e/argo.rs`).
    pub argo: crate::tekton::Mode,
    /// Against the in-memory API server (`offline.rs`): no CRDs to install, no RBAC for Argo's
    /// executor.
    pub offline: bool,
    /// The webhook's wait metrics (`affinity_assistant_admission_wait_seconds`), where the
    /// suite can read them: offline, where the webhook runs in this process. `None` against a
    /// cluster.
    pub admission_waits: Option<affinity_assistant::webhook::metrics::WaitMetrics>,
    pub scenario: String,
    suffix: String,
    namespaces: Arc<Mutex<Vec<String>>>,
    cordoned: Mutex<Vec<String>>,
    stand_in: Mutex<Option<JoinHandle<()>>>,
}

/// Runs one scenario against the cluster of `E2E_KUBECONFIG`: lock, set up, then [`drive`].
pub async fn scenario<F, Fut>(name: &str, access: Access, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = Settings::required().unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let _guard = lock(access).await;
    let env = match Env::start(name, settings).await {
        Ok(env) => Arc::new(env),
        Err(e) => panic!("{name}: setting up: {e:#}"),
    };
    drive(name, env, body).await;
}

/// Runs a scenario's body, then cleans up whether it returned, failed or panicked, and only
/// then reports. With `E2E_KEEP_ON_FAILURE=1` a failed test keeps its namespaces for
/// inspection (cordons are lifted regardless: they affect every workload in the cluster).
pub async fn drive<F, Fut>(name: &str, env: Arc<Env>, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let outcome = AssertUnwindSafe(body(env.clone())).catch_unwind().await;
    let passed = matches!(outcome, Ok(Ok(())));
    let cleanup = if !passed && env.settings.keep_on_failure {
        let lifted = env.uncordon_all().await;
        eprintln!("{name}: E2E_KEEP_ON_FAILURE=1: kept namespaces {:?}", env.namespaces());
        lifted
    } else {
        env.cleanup().await
    };
    match outcome {
        Ok(Ok(())) => {
            if let Err(e) = cleanup {
                panic!("{name}: passed, but cleaning up failed: {e:#}\n(hack/e2e.sh cleanup removes leftovers)");
            }
        }
        Ok(Err(e)) => {
            if let Err(c) = cleanup {
                eprintln!("{name}: cleaning up also failed: {c:#}");
            }
            panic!("{name}: {e:#}");
        }
        Err(panic) => {
            if let Err(c) = cleanup {
                eprintln!("{name}: cleaning up also failed: {c:#}");
            }
            std::panic::resume_unwind(panic);
        }
    }
}

impl Env {
    async fn start(scenario: &str, settings: Settings) -> anyhow::Result<Env> {
        let client = client(&settings).await?;
        crate::tekton::ensure_crds(&client, settings.timeout).await?;
        let tekton = crate::tekton::detect(&client, settings.tekton).await?;
        let argo = crate::argo::detect(&client, settings.argo).await?;
        crate::cluster::preflight(&client, &settings, tekton).await?;
        let namespaces = Arc::new(Mutex::new(Vec::new()));
        let stand_in = tokio::spawn(kubelet_stand_in(client.clone(), namespaces.clone()));
        eprintln!("{scenario}: Tekton {tekton:?}, Argo {argo:?}");
        Ok(Env {
            client,
            settings,
            tekton,
            argo,
            offline: false,
            admission_waits: None,
            scenario: scenario.to_string(),
            suffix: unique_suffix(),
            namespaces,
            cordoned: Mutex::new(Vec::new()),
            stand_in: Mutex::new(Some(stand_in)),
        })
    }

    /// An Env on a client the caller built, for the suite's self-test against the in-memory
    /// API server: no CRDs to install, no preflight, no kubelet stand-in (that server deletes
    /// pods at once).
    pub fn offline(scenario: &str, client: Client, settings: Settings, tekton: crate::tekton::Mode) -> Env {
        Env {
            client,
            settings,
            tekton,
            argo: tekton,
            offline: true,
            admission_waits: None,
            scenario: scenario.to_string(),
            suffix: unique_suffix(),
            namespaces: Arc::new(Mutex::new(Vec::new())),
            cordoned: Mutex::new(Vec::new()),
            stand_in: Mutex::new(None),
        }
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// A fresh namespace `aa-e2e-<scenario>[-<part>]-<suffix>` with the suite label and
    /// `labels`, once its `default` ServiceAccount exists (pods are rejected before that).
    pub async fn namespace(&self, part: &str, labels: &[(&str, &str)]) -> anyhow::Result<String> {
        let what = if part.is_empty() { self.scenario.clone() } else { format!("{}-{part}", self.scenario) };
        let name = namespace_name(&what, &self.suffix);
        // Registered before it exists, so a failure half-way still deletes it.
        if let Ok(mut n) = self.namespaces.lock() {
            n.push(name.clone());
        }
        let mut all: BTreeMap<String, String> = [(SUITE_LABEL.to_string(), "true".to_string())].into();
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), labels: Some(all), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        wait_for(format!("ServiceAccount {name}/default"), self.settings.timeout, || async {
            Ok(match sas.get_opt("default").await? {
                Some(_) => Check::Done(()),
                None => Check::NotYet("not created yet (kube-controller-manager makes it)".into()),
            })
        })
        .await?;
        Ok(name)
    }

    /// Cordons `node`, recording it first so cleanup lifts the cordon even if this fails
    /// half-way; the annotation lets `hack/e2e.sh cleanup` lift it after an interrupted run.
    pub async fn cordon(&self, node: &str) -> anyhow::Result<()> {
        if let Ok(mut c) = self.cordoned.lock() {
            c.push(node.to_string());
        }
        let patch = serde_json::json!({
            "metadata": {"annotations": {CORDON_ANNOTATION: "true"}},
            "spec": {"unschedulable": true}
        });
        Api::<Node>::all(self.client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("cordoning node {node}"))?;
        Ok(())
    }

    /// Lifts a cordon this test set, now rather than at cleanup.
    pub async fn uncordon(&self, node: &str) -> anyhow::Result<()> {
        uncordon(&self.client, node).await?;
        if let Ok(mut c) = self.cordoned.lock() {
            c.retain(|n| n != node);
        }
        Ok(())
    }

    async fn uncordon_all(&self) -> anyhow::Result<()> {
        let nodes = self.cordoned.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        let mut errors = Vec::new();
        for node in nodes {
            if let Err(e) = uncordon(&self.client, &node).await {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(anyhow!(errors.join("; "))) }
    }

    /// Deletes the test's namespaces and PersistentVolumes and lifts its cordons.
    async fn cleanup(&self) -> anyhow::Result<()> {
        if let Some(h) = self.stand_in.lock().ok().and_then(|mut h| h.take()) {
            h.abort();
        }
        let mut errors = Vec::new();
        if let Err(e) = self.uncordon_all().await {
            errors.push(format!("{e:#}"));
        }
        let namespaces = self.namespaces();
        if let Err(e) = delete_namespaces(&self.client, &namespaces, self.settings.timeout * 2).await {
            errors.push(format!("{e:#}"));
        }
        let selector = namespaces.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        if !selector.is_empty() {
            let lp = ListParams::default().labels(&format!("{NAMESPACE_LABEL} in ({selector})"));
            if let Err(e) = delete_volumes(&self.client, &lp, self.settings.timeout).await {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(anyhow!(errors.join("; "))) }
    }
}

/// Lifts a cordon the suite set, and only that: a node someone else cordoned keeps it.
pub async fn uncordon(client: &Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(n) = nodes.get_opt(node).await.with_context(|| format!("reading node {node}"))? else {
        return Ok(());
    };
    if !n.annotations().contains_key(CORDON_ANNOTATION) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {"annotations": {CORDON_ANNOTATION: null}},
        "spec": {"unschedulable": null}
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("uncordoning node {node}"))?;
    Ok(())
}

/// Deletes namespaces and waits until they are gone. Pods are force-deleted: on a control
/// plane without kubelets nothing would ever finish their graceful deletion, and the
/// namespace would stay Terminating forever.
pub async fn delete_namespaces(client: &Client, names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in names {
        match namespaces.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
        }
    }
    wait_for(format!("namespaces {names:?} to be deleted"), timeout, || async {
        let mut left = Vec::new();
        for name in names {
            if namespaces.get_opt(name).await?.is_none() {
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(client.clone(), name);
            for pod in pods.list(&ListParams::default()).await? {
                let _ = force_delete(&pods, &pod).await;
            }
            left.push(name.clone());
        }
        Ok(if left.is_empty() { Check::Done(()) } else { Check::NotYet(format!("still there: {left:?}")) })
    })
    .await
}

/// Deletes the PersistentVolumes `lp` selects and waits until they are gone (their
/// protection finalizer goes once their claim is deleted with its namespace).
pub async fn delete_volumes(client: &Client, lp: &ListParams, timeout: Duration) -> anyhow::Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pv in pvs.list(lp).await.context("listing the suite's PersistentVolumes")? {
        match pvs.delete(&pv.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting PersistentVolume {}", pv.name_any())),
        }
    }
    wait_for("the suite's PersistentVolumes to be deleted", timeout, || async {
        let left: Vec<String> = pvs.list(lp).await?.iter().map(|p| p.name_any()).collect();
        Ok(if left.is_empty() { Check::Done(()) } else { Check::NotYet(format!("still there: {left:?}")) })
    })
    .await
}

/// Deletes a pod now (grace period 0), guarded by its uid so a replacement of the same name
/// (a StatefulSet's) is never hit.
pub async fn force_delete(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let dp = DeleteParams::default()
        .grace_period(0)
        .preconditions(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None });
    match pods.delete(&pod.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long past its deletion deadline a pod may linger before the stand-in finishes it.
const STAND_IN_SLACK_SECONDS: i64 = 10;

/// Whether a pod's graceful deletion is overdue: its deadline (`deletionTimestamp`, which is
/// the request time plus the grace period) passed `STAND_IN_SLACK_SECONDS` ago.
pub fn deletion_overdue(pod: &Pod, now_seconds: i64) -> bool {
    let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    pod.metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|t| bound && now_seconds - t.0.as_second() > STAND_IN_SLACK_SECONDS)
}

/// Plays the kubelet's part in graceful deletion: a bound pod whose deletion deadline has
/// passed is removed, as a kubelet would once its containers stopped. On clusters with
/// kubelets they got there first and this finds nothing; without kubelets, a placeholder the
/// add-on moves (or a StatefulSet it deletes) would otherwise keep its pod forever.
async fn kubelet_stand_in(client: Client, namespaces: Arc<Mutex<Vec<String>>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let current = namespaces.lock().map(|n| n.clone()).unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        for ns in current {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let Ok(list) = pods.list(&ListParams::default()).await else { continue };
            for pod in list.iter().filter(|p| deletion_overdue(p, now)) {
                eprintln!("kubelet stand-in: removing {ns}/{} (deletion overdue)", pod.name_any());
                let _ = force_delete(&pods, pod).await;
            }
        }
    }
}

/// What a probe saw: done with a value, or not yet, with what it saw instead (for the
/// timeout message).
pub enum Check<T> {
    Done(T),
    NotYet(String),
}

const POLL: Duration = Duration::from_millis(500);

/// Polls `probe` every 500 ms until it is done, for at most `timeout`. API errors are
/// retried (the API server may be briefly unavailable); the timeout error names what was
/// awaited and the last thing seen.
pub async fn wait_for<T, F, Fut>(what: impl Display, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Check::Done(v)) => return Ok(v),
            Ok(Check::NotYet(seen)) => seen,
            Err(e) => format!("error: {e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {}s waiting for {what}; last seen: {last}", timeout.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `probe` keeps holding for `duration` (polled every 500 ms): the negative
/// half of a test, e.g. "the placeholder stays while a pinned pod runs".
pub async fn holds_for<F, Fut>(what: impl Display, duration: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<(), String>>>,
{
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        if let Err(broken) = probe().await? {
            bail!("expected {what} for {}s, but: {broken}", duration.as_secs());
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn no_kubeconfig_means_no_cluster() {
        assert!(settings(&[]).unwrap().is_none());
        assert!(settings(&[("E2E_KUBECONFIG", "  ")]).unwrap().is_none());
    }

    #[test]
    fn defaults_and_overrides() {
        let s = settings(&[("E2E_KUBECONFIG", "/k")]).unwrap().unwrap();
        assert_eq!(s.tekton, TektonChoice::Auto);
        assert_eq!(s.argo, TektonChoice::Auto);
        assert_eq!(s.timeout, Duration::from_secs(90));
        assert_eq!(s.move_timeout, Duration::from_secs(180));
        assert_eq!(s.addon_namespace, "affinity-assistant");
        assert_eq!(s.pod_image, affinity_assistant::config::DEFAULT_IMAGE);
        assert!(!s.keep_on_failure && !s.local_addon);
        let s = settings(&[
            ("E2E_KUBECONFIG", "/k"),
            ("E2E_TEKTON", "real"),
            ("E2E_ARGO", "fake"),
            ("E2E_MOVE_TIMEOUT", "5m"),
            ("E2E_TIMEOUT", "30s"),
            ("E2E_KEEP_ON_FAILURE", "1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.tekton, TektonChoice::Real);
        assert_eq!(s.argo, TektonChoice::Fake);
        assert_eq!(s.move_timeout, Duration::from_secs(300));
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert!(s.keep_on_failure);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = settings(&[("E2E_KUBECONFIG", "/k"), ("E2E_TEKTON", "maybe")]).unwrap_err();
        assert!(e.contains("E2E_TEKTON=maybe"), "{e}");
        let e = settings(&[("E2E_KUBECONFIG", "/k"), ("E2E_ARGO", "yes")]).unwrap_err();
        assert!(e.contains("E2E_ARGO=yes"), "{e}");
        let e = settings(&[("E2E_KUBECONFIG", "/k"), ("E2E_MOVE_TIMEOUT", "soon")]).unwrap_err();
        assert!(e.contains("E2E_MOVE_TIMEOUT=soon"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn namespace_names_are_unique_dns_labels() {
        let (a, b) = (unique_suffix(), unique_suffix());
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
        let name = namespace_name("Shared_Claim", &a);
        assert!(affinity_assistant::names::is_dns1123_label(&name), "{name}");
        assert!(name.starts_with("aa-e2e-shared-claim-"), "{name}");
        let long = namespace_name(&"x".repeat(100), &a);
        assert!(long.len() <= 63 && affinity_assistant::names::is_dns1123_label(&long), "{long}");
    }

    #[test]
    fn only_bound_pods_past_their_deadline_are_overdue() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut pod = Pod::default();
        assert!(!deletion_overdue(&pod, 1000));
        pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap()));
        assert!(!deletion_overdue(&pod, 2000), "unbound pods are deleted at once by the API server");
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec { node_name: Some("n".into()), ..Default::default() });
        assert!(!deletion_overdue(&pod, 1005));
        assert!(deletion_overdue(&pod, 1011));
    }
}
