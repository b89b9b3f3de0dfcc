//! Starts the watchers that feed [`super::Caches`], and turns their events into reconcile
//! triggers: the namespaces whose objects changed.

use super::Caches;
use super::store::Scope;
use crate::engine::tekton::{Pipeline, PipelineRun};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
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
        vec![(Scope::All, Api::all(client.clone()))]
    } else {
        namespaces.iter().map(|ns| (Scope::Namespace(ns.clone()), Api::namespaced(client.clone(), ns))).collect()
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
                // The backoff retries; a person should still see why.
                Err(e) => warn!(watch = what, error = %e, "watch failed; retrying with backoff"),
            }
        }
    })
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
    let task_pods = WatcherConfig::default().labels(&super::task_pod_selector());
    let engine_placeholders = WatcherConfig::default().labels(&super::engine_placeholder_selector());
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
    watch_into!(PipelineRun, runs, WatcherConfig::default(), "pipelineruns");
    watch_into!(Pipeline, pipelines, WatcherConfig::default(), "pipelines");
    watch_into!(PersistentVolumeClaim, claims, WatcherConfig::default(), "persistentvolumeclaims");
    watch_into!(StatefulSet, placeholders, placeholders, "statefulsets");
    watch_into!(StatefulSet, engine_placeholders, engine_placeholders, "engine placeholders");
    watch_into!(Event, failed_creates, failed_creates, "FailedCreate events");
    watch_into!(Pod, placeholder_pods, placeholders, "placeholder pods");
    watch_into!(Pod, task_pods, task_pods, "task pods");

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
    if let Some(tekton) = &options.tekton_namespace {
        tasks.push(watch_tekton_flags(client.clone(), tekton, caches.clone(), Some(tx.clone())));
    }
    (rx, tasks)
}

/// Reads Tekton's `coschedule` flag now and then. The add-on may lack the (optional) right to
/// read Tekton's namespace: then the flag stays unknown and nothing stands down.
pub fn watch_tekton_flags(
    client: Client,
    tekton_namespace: &str,
    caches: Arc<Caches>,
    tx: Option<mpsc::UnboundedSender<Trigger>>,
) -> tokio::task::JoinHandle<()> {
    let api = Api::<ConfigMap>::namespaced(client, tekton_namespace);
    caches.expect_tekton_flags();
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            let value = match api.get_opt("feature-flags").await {
                Ok(Some(cm)) => Some(cm.data.and_then(|d| d.get(crate::engine::tekton::COSCHEDULE_KEY).cloned())),
                Ok(None) => None,
                Err(e) => {
                    debug!(error = %e, "cannot read Tekton's feature-flags");
                    None
                }
            };
            let on = value.as_ref().is_some_and(|v| crate::engine::tekton::coschedule_enabled(v.as_deref()));
            if on && !warned {
                warn!(
                    coschedule = value.clone().flatten().unwrap_or_else(|| "workspaces (default)".into()),
                    "Tekton's own affinity assistant is on: affinity-assistant stands down for the runs it serves; \
                     set coschedule: disabled in Tekton's feature-flags"
                );
                warned = true;
            }
            let was_ready = caches.ready();
            let changed = caches.tekton_coschedule() != value;
            if changed {
                caches.set_tekton_coschedule(value);
            }
            caches.set_tekton_flags_read();
            if (changed || (!was_ready && caches.ready()))
                && let Some(tx) = &tx
            {
                let _ = tx.send(Trigger::All);
            }
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    })
}
