//! Starts the watchers that feed [`super::Caches`], and turns their events into reconcile
//! triggers: the namespaces whose objects changed.

use super::Caches;
use super::store::Scope;
use crate::engine::{self, Engine};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Config as WatcherConfig, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// A reconcile trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Namespace(String),
    /// Something every namespace reads changed (config, leadership).
    All,
}

/// Where to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Namespaces to watch for runs, claims, placeholders and pods; empty: all.
    pub namespaces: Vec<String>,
    /// The add-on's own namespace (config, lease).
    pub own_namespace: String,
    /// The add-on's config map.
    pub config_name: String,
    /// The leader lease (for the webhook's freshness check).
    pub lease_name: String,
    /// Where Tekton's `feature-flags` are read (`None`: never).
    pub tekton_namespace: Option<String>,
}

/// Called with each config update: the errors of the ConfigMap's data (last good values kept).
pub type ConfigReporter = Arc<dyn Fn(&ConfigMap, &crate::config::ConfigReport) + Send + Sync>;

/// One watch per watched namespace (or one for all), each with the scope its relists replace.
fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<(Scope, Api<K>)>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![(Scope::all(), Api::all(client.clone()))]
    } else {
        namespaces.iter().map(|ns| (Scope::namespace(ns), Api::namespaced(client.clone(), ns))).collect()
    }
}

/// [`apis`] for an engine's custom resource.
fn dynamic_apis(client: &Client, namespaces: &[String], kind: engine::Kind) -> Vec<(Scope, Api<DynamicObject>)> {
    let ar = kind.api_resource();
    if namespaces.is_empty() {
        vec![(Scope::all(), Api::all_with(client.clone(), &ar))]
    } else {
        namespaces.iter().map(|ns| (Scope::namespace(ns), Api::namespaced_with(client.clone(), ns, &ar))).collect()
    }
}

/// A watcher event of an engine's object as the cache keeps it (converted once, here). An
/// object its engine cannot read is dropped from the cache, with a warning.
fn convert<T>(
    event: watcher::Event<DynamicObject>,
    what: &'static str,
    to: impl Fn(&DynamicObject) -> Result<T, engine::ParseError>,
    key: impl Fn(&DynamicObject) -> T,
) -> watcher::Event<T> {
    let read = |o: DynamicObject| match to(&o) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(kind = what, namespace = o.metadata.namespace.as_deref().unwrap_or(""),
                name = o.metadata.name.as_deref().unwrap_or(""), error = %e, "cannot read it; left out of the cache");
            None
        }
    };
    match event {
        watcher::Event::Apply(o) => {
            let gone = key(&o);
            read(o).map(watcher::Event::Apply).unwrap_or(watcher::Event::Delete(gone))
        }
        watcher::Event::InitApply(o) => {
            let gone = key(&o);
            // An unreadable object is simply not part of the fresh list.
            read(o).map(watcher::Event::InitApply).unwrap_or(watcher::Event::Delete(gone))
        }
        watcher::Event::Delete(o) => watcher::Event::Delete(key(&o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Drives one watcher into a store, sending the namespaces each event touched, and every
/// namespace when this list completed the caches (nothing was decided before).
fn feed<K>(
    api: Api<K>,
    config: WatcherConfig,
    store: impl Fn(watcher::Event<K>) -> std::collections::BTreeSet<String> + Send + 'static,
    caches: Arc<Caches>,
    tx: mpsc::UnboundedSender<Trigger>,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let listed = matches!(event, watcher::Event::InitDone);
                    let was_ready = caches.ready();
                    for ns in store(event) {
                        if tx.send(Trigger::Namespace(ns)).is_err() {
                            return;
                        }
                    }
                    if listed && !was_ready && caches.ready() {
                        info!(watch = what, "caches synced: deciding from now on");
                        let _ = tx.send(Trigger::All);
                    }
                }
                // The resource does not exist (an engine whose CRD is not installed): nothing
                // of it to list, so the caches need not wait for it; the backoff keeps
                // trying, and picks it up once it is installed.
                Err(e) if not_installed(&e) => {
                    debug!(watch = what, "not installed; looking again later");
                    let was_ready = caches.ready();
                    store(watcher::Event::Init);
                    store(watcher::Event::InitDone);
                    if !was_ready && caches.ready() {
                        let _ = tx.send(Trigger::All);
                    }
                }
                // The backoff retries; a person should still see why.
                Err(e) => warn!(watch = what, error = %e, "watch failed; retrying with backoff"),
            }
        }
    })
}

/// A watch error that says the resource is not served (its CRD is not installed).
fn not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// The names of the cluster-scoped objects a watcher event carries (their triggers are
/// derived from the names, not from a namespace).
fn names_in<K: Resource>(event: &watcher::Event<K>) -> std::collections::BTreeSet<String> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            o.meta().name.clone().into_iter().collect()
        }
        _ => Default::default(),
    }
}

/// Starts every watcher; returns the trigger stream and the tasks.
pub fn start(
    client: Client,
    caches: Arc<Caches>,
    options: &WatchOptions,
    report_config: ConfigReporter,
) -> (mpsc::UnboundedReceiver<Trigger>, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    let ns = &options.namespaces;
    let placeholders = WatcherConfig::default().labels(&super::placeholder_selector());
    let failed_creates = WatcherConfig::default().fields(&super::failed_create_selector());

    macro_rules! watch_into {
        ($kind:ty, $store:ident, $cfg:expr, $what:expr) => {
            let watches = apis::<$kind>(&client, ns);
            caches.$store.expect_watchers(watches.len());
            for (scope, api) in watches {
                let c = caches.clone();
                let store = move |e| {
                    let touched = c.$store.apply_scoped(&scope, e);
                    c.changed();
                    touched
                };
                tasks.push(feed(api, $cfg.clone(), store, caches.clone(), tx.clone(), $what));
            }
        };
    }
    let watches = apis::<PersistentVolumeClaim>(&client, ns);
    caches.claims.expect_watchers(watches.len());
    for (scope, api) in watches {
        let c = caches.clone();
        let store = move |e| {
            let touched = c.apply_claim(&scope, e);
            c.changed();
            touched
        };
        tasks.push(feed(api, WatcherConfig::default(), store, caches.clone(), tx.clone(), "persistentvolumeclaims"));
    }
    watch_into!(StatefulSet, placeholders, placeholders, "statefulsets");
    watch_into!(Event, failed_creates, failed_creates, "FailedCreate events");
    watch_into!(Pod, placeholder_pods, placeholders, "placeholder pods");

    // Each engine: its runs and definitions (converted once, as they enter the cache), its task
    // pods, its own assistant's placeholders. Several engines share each store: a relist of
    // one replaces only that engine's objects.
    let (mut runs, mut definitions, mut pods, mut own) = (0, 0, 0, 0);
    for &e in engine::engines() {
        let name = e.name();
        let prefix = format!("{name}/");
        for (scope, api) in dynamic_apis(&client, ns, e.run_kind()) {
            let (c, scope) = (caches.clone(), scope.with_prefix(&prefix));
            let store = move |ev| {
                let ev = convert(ev, "run", |o| super::cache_run(e, o), |o| key_only(name, o));
                let touched = c.runs.apply_scoped(&scope, ev);
                c.changed();
                touched
            };
            tasks.push(feed(api, WatcherConfig::default(), store, caches.clone(), tx.clone(), "runs"));
            runs += 1;
        }
        // Its definitions: namespaced ones where runs are watched, cluster-scoped ones (kept
        // under namespace "", with a key prefix of their own) with one cluster-wide watch.
        let mut definition_apis: Vec<(Scope, Api<DynamicObject>)> = Vec::new();
        if let Some(kind) = e.definition_kind() {
            definition_apis.extend(
                dynamic_apis(&client, ns, kind).into_iter().map(|(scope, api)| (scope.with_prefix(&prefix), api)),
            );
        }
        if let Some(kind) = e.cluster_definition_kind() {
            let scope = Scope::namespace("").with_prefix(super::definition_key(name, "", ""));
            definition_apis.push((scope, Api::all_with(client.clone(), &kind.api_resource())));
        }
        for (scope, api) in definition_apis {
            let c = caches.clone();
            let store = move |ev| {
                let ev =
                    convert(ev, "definition", |o| super::cache_definition(e, o), |o| super::definition_key_of(name, o));
                let touched = c.definitions.apply_scoped(&scope, ev);
                c.changed();
                touched
            };
            tasks.push(feed(api, WatcherConfig::default(), store, caches.clone(), tx.clone(), "definitions"));
            definitions += 1;
        }
        let selector = WatcherConfig::default().labels(&super::task_pod_selector(e));
        for (scope, api) in apis::<Pod>(&client, ns) {
            let (c, scope) = (caches.clone(), scope.with_label(e.pod_selector().label));
            let store = move |ev| {
                let touched = c.task_pods.apply_scoped(&scope, ev);
                c.changed();
                touched
            };
            tasks.push(feed(api, selector.clone(), store, caches.clone(), tx.clone(), "task pods"));
            pods += 1;
        }
        if let Some(a) = e.own_assistant() {
            let selector = WatcherConfig::default().labels(&a.placeholder_selector());
            for (scope, api) in apis::<StatefulSet>(&client, ns) {
                let c = caches.clone();
                let store = move |ev| {
                    let touched = c.engine_placeholders.apply_scoped(&scope, ev);
                    c.changed();
                    touched
                };
                tasks.push(feed(api, selector.clone(), store, caches.clone(), tx.clone(), "engine placeholders"));
                own += 1;
            }
        }
    }
    caches.runs.expect_watchers(runs);
    caches.definitions.expect_watchers(definitions);
    caches.task_pods.expect_watchers(pods);
    caches.engine_placeholders.expect_watchers(own);

    // PersistentVolumes: a change concerns the namespace of the claim it is bound to.
    let c = caches.clone();
    tasks.push(feed(
        Api::<PersistentVolume>::all(client.clone()),
        WatcherConfig::default(),
        move |e| {
            let claimed: std::collections::BTreeSet<String> = match &e {
                watcher::Event::Apply(pv) | watcher::Event::Delete(pv) | watcher::Event::InitApply(pv) => {
                    pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()?.namespace.clone()).into_iter().collect()
                }
                _ => Default::default(),
            };
            c.volumes.apply(e);
            c.changed();
            claimed
        },
        caches.clone(),
        tx.clone(),
        "persistentvolumes",
    ));

    // Nodes: a change concerns the namespaces with a placeholder bound to that node.
    let c = caches.clone();
    tasks.push(feed(
        Api::<Node>::all(client.clone()),
        WatcherConfig::default(),
        move |e| {
            let nodes = names_in(&e);
            c.nodes.apply(e);
            c.changed();
            c.placeholder_pods
                .all()
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| nodes.contains(n)))
                .filter_map(|p| p.metadata.namespace.clone())
                .collect()
        },
        caches.clone(),
        tx.clone(),
        "nodes",
    ));

    // Opted-out namespaces: only those carry the label, so only those are cached. A change
    // concerns the namespace itself.
    let c = caches.clone();
    tasks.push(feed(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        WatcherConfig::default().labels(&format!("{}=false", crate::names::LABEL_NAMESPACE_ENABLED)),
        move |e| {
            let names = names_in(&e);
            c.opted_out.apply(e);
            c.changed();
            names
        },
        caches.clone(),
        tx.clone(),
        "namespaces",
    ));

    let c = caches.clone();
    tasks.push(feed(
        Api::<Lease>::namespaced(client.clone(), &options.own_namespace),
        WatcherConfig::default().fields(&format!("metadata.name={}", options.lease_name)),
        move |e| {
            c.leases.apply(e);
            c.changed();
            Default::default()
        },
        caches.clone(),
        tx.clone(),
        "lease",
    ));

    // The config: every namespace reads it.
    let c = caches.clone();
    let config_tx = tx.clone();
    let config_api = Api::<ConfigMap>::namespaced(client.clone(), &options.own_namespace);
    let config_watch = WatcherConfig::default().fields(&format!("metadata.name={}", options.config_name));
    tasks.push(tokio::spawn(async move {
        let mut stream = watcher(config_api, config_watch).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    let data: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
                    let (next, report) = c.config().update(&data);
                    report_config(&cm, &report);
                    if next != *c.config() {
                        info!(config = ?next, "configuration changed");
                        c.set_config(next);
                        let _ = config_tx.send(Trigger::All);
                    }
                }
                // Listed: the values read so far (or the defaults, with no ConfigMap) hold.
                Ok(watcher::Event::InitDone) => {
                    let was_ready = c.ready();
                    c.set_config_synced();
                    if !was_ready && c.ready() {
                        info!("caches synced: deciding from now on");
                        let _ = config_tx.send(Trigger::All);
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "watching the feature-flags ConfigMap failed; retrying"),
            }
        }
    }));
    if let Some(tekton) = &options.tekton_namespace
        && let Some(e) = engine::by_name("tekton")
    {
        tasks.extend(watch_assistant_flags(client.clone(), e, tekton, caches.clone(), Some(tx.clone())));
    }
    (rx, tasks)
}

/// Reads the flag that switches an engine's own affinity assistant on (Tekton's `coschedule`
/// in its `feature-flags`), now and then. The add-on may lack the (optional) right to read the
/// engine's namespace: then the flag stays unknown and nothing stands down for it.
pub fn watch_assistant_flags(
    client: Client,
    engine: &'static dyn Engine,
    namespace: &str,
    caches: Arc<Caches>,
    tx: Option<mpsc::UnboundedSender<Trigger>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let assistant = engine.own_assistant()?;
    let (config_map, key) = assistant.flag();
    let api = Api::<ConfigMap>::namespaced(client, namespace);
    caches.expect_assistant_flags();
    Some(tokio::spawn(async move {
        let mut warned = false;
        loop {
            let value = match api.get_opt(config_map).await {
                Ok(Some(cm)) => Some(cm.data.and_then(|d| d.get(key).cloned())),
                Ok(None) => None,
                Err(e) => {
                    debug!(engine = engine.name(), error = %e, "cannot read the engine's flags");
                    None
                }
            };
            let assistant = engine.own_assistant();
            let on = value.as_ref().is_some_and(|v| assistant.is_some_and(|a| a.enabled(v.as_deref())));
            if on && !warned {
                warn!(
                    engine = engine.name(),
                    flag = key,
                    value = value.clone().flatten().unwrap_or_else(|| "(default)".into()),
                    "the engine's own affinity assistant is on: affinity-assistant stands down for the runs it serves; \
                     switch it off (Tekton: coschedule: disabled in its feature-flags)"
                );
                warned = true;
            }
            let was_ready = caches.ready();
            let changed = caches.assistant_flag(engine.name()) != value;
            if changed {
                caches.set_assistant_flag(engine.name(), value);
            }
            caches.set_assistant_flags_read();
            if (changed || (!was_ready && caches.ready()))
                && let Some(tx) = &tx
            {
                let _ = tx.send(Trigger::All);
            }
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    }))
}

/// Only the key of a run (for deletes).
fn key_only(engine: &'static str, o: &DynamicObject) -> super::CachedRun {
    let run = crate::model::Run {
        engine,
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: Default::default(),
        uid: Default::default(),
        api_version: Default::default(),
        kind: Default::default(),
        created: None,
        annotations: Default::default(),
        phase: crate::model::RunPhase::Done,
        bindings: Vec::new(),
        tasks: Vec::new(),
        scheduling: Default::default(),
        engine_assistant: false,
        definition: None,
        task_overrides: Vec::new(),
        claims_from_pods: false,
        cluster_definition: false,
    };
    super::CachedRun { key: super::engine_key(engine, o.metadata.name.as_deref().unwrap_or_default()), run }
}
