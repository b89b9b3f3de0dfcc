//! The controller: keeps exactly the placeholders the decision core plans, heals and moves
//! them, and says what goes wrong (Events on the PipelineRuns, metrics, logs).
//!
//! # The reconcile key is the namespace
//!
//! Placeholders are shared: one can serve several runs of a namespace, and one run's claims
//! decide whether another run gets a new placeholder or shares one (I1). The core therefore
//! plans a whole namespace at once ([`crate::core::plan`]), and the controller reconciles per
//! namespace too: every watched change (a run, a PVC, a placeholder or its pod, a pinned pod)
//! triggers its namespace; a config or leadership change triggers all of them. Keying by run
//! would let two runs' reconciles race to create the same placeholder, and keying by
//! placeholder cannot see a placeholder that does not exist yet.
//!
//! kube-runtime's [`applier`](kube::runtime::controller::applier) does the queueing
//! (deduplication, debounce, bounded concurrency, no concurrent reconcile of one namespace,
//! requeue); its primary objects are synthetic `Namespace` objects made from the trigger keys
//! (the real Namespace watch only caches opted-out namespaces). The debounce is short: a run,
//! its claims and its placeholder's own events arrive within a few milliseconds, and a longer
//! one would add straight to the time a new run waits for its placeholder.
//!
//! Only the leader reconciles ([`kube_lease_manager`]); every write first checks that it still
//! is, so losing the lease stops the writes at once.

pub mod error;
pub mod metrics;
mod reconcile;

/// The field manager of every write the add-on makes.
pub use reconcile::FIELD_MANAGER;

pub use error::Error;
pub use metrics::ControllerMetrics;

use crate::cluster::Caches;
use crate::cluster::watch::Trigger;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::runtime::controller::{self, Action, ReconcileReason, ReconcileRequest, applier};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Timings of the lifecycle rules (SPEC "Lifecycle").
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node must be cordoned or drain-tainted before its placeholders move; also
    /// the least time between two moves of one placeholder.
    pub grace_period: Duration,
    /// How long a node must be NotReady before its placeholders' pods are force-deleted.
    pub not_ready_after: Duration,
    /// How long a pinned pod may be Pending before a Warning says why.
    pub pending_after: Duration,
    /// Namespaces reconciled at once.
    pub concurrency: u16,
    /// Periodic re-check (time-based rules need it even when nothing changes).
    pub resync: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace_period: Duration::from_secs(60),
            not_ready_after: Duration::from_secs(300),
            pending_after: Duration::from_secs(120),
            concurrency: 4,
            resync: Duration::from_secs(60),
        }
    }
}

/// What the controller remembers between reconciles (lost on restart; every rule that uses
/// it is safe to restart from nothing).
#[derive(Default)]
pub(crate) struct Memory {
    /// Events already recorded: (object uid, reason, message).
    reported: HashSet<(String, String, String)>,
    /// When a node was first seen cordoned or drain-tainted.
    draining_since: HashMap<String, Instant>,
    /// When a placeholder was last moved.
    moved_at: HashMap<String, Instant>,
    /// Per-namespace contributions to gauges: placeholders by mode, pinned pending pods.
    gauges: HashMap<String, (HashMap<String, i64>, i64)>,
    /// Whether a priority class exists, and when that was checked.
    priority_classes: HashMap<String, (bool, Instant)>,
}

/// Event recorders sharded by namespace. kube-runtime's recorder scans its whole cache of
/// recent Events on every publish; with one recorder, creating thousands of placeholders made
/// each Event cost O(all recent Events) inside the reconcile. An Event's series (the patch of a
/// repeated Event) stays within its namespace, so it stays within its shard.
pub struct Recorders(Vec<Recorder>);

impl Recorders {
    const SHARDS: usize = 32;

    pub fn new(client: &Client, reporter: &Reporter) -> Recorders {
        Recorders((0..Self::SHARDS).map(|_| Recorder::new(client.clone(), reporter.clone())).collect())
    }

    pub fn for_namespace(&self, namespace: &str) -> &Recorder {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        namespace.hash(&mut h);
        &self.0[(h.finish() % Self::SHARDS as u64) as usize]
    }
}

pub struct Context {
    pub client: Client,
    pub caches: Arc<Caches>,
    pub recorders: Recorders,
    pub metrics: ControllerMetrics,
    pub leader: watch::Receiver<bool>,
    pub options: Options,
    memory: Mutex<Memory>,
    backoff: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        caches: Arc<Caches>,
        metrics: ControllerMetrics,
        leader: watch::Receiver<bool>,
        options: Options,
        instance: Option<String>,
    ) -> Arc<Context> {
        let reporter = Reporter { controller: "affinity-assistant".into(), instance };
        Arc::new(Context {
            recorders: Recorders::new(&client, &reporter),
            client,
            caches,
            metrics,
            leader,
            options,
            memory: Mutex::new(Memory::default()),
            backoff: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops what was kept for a namespace that has nothing left (back-off, gauge share).
    fn forget_namespace(&self, namespace: &str) {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner()).remove(namespace);
        let mut memory = self.memory();
        if memory.gauges.remove(namespace).is_some() {
            reconcile::publish_gauges(self, &memory);
        }
    }

    /// Drops timestamps no rule reads any more: moves older than the grace period, drains of
    /// nodes that are gone or no longer draining (those are re-noted when seen again).
    fn prune(&self, grace: Duration) {
        let mut memory = self.memory();
        memory.moved_at.retain(|_, at| at.elapsed() < grace);
        let nodes = &self.caches.nodes;
        memory.draining_since.retain(|n, _| nodes.get("", n).is_some());
    }

    /// Stops publishing gauges (a follower's would be stale).
    fn clear_gauges(&self) {
        let mut memory = self.memory();
        memory.gauges.clear();
        reconcile::publish_gauges(self, &memory);
    }

    /// How many entries the controller's memory holds, by kind (for tests and bounds checks).
    pub fn memory_sizes(&self) -> Vec<(&'static str, usize)> {
        let memory = self.memory();
        vec![
            ("backoff", self.backoff.lock().unwrap_or_else(|e| e.into_inner()).len()),
            ("gauges", memory.gauges.len()),
            ("moved_at", memory.moved_at.len()),
            ("draining_since", memory.draining_since.len()),
            ("reported", memory.reported.len()),
        ]
    }
}

/// Reports invalid feature-flags values: a Warning Event on the ConfigMap (once per message),
/// a metric and a log line. The last good value of each key stays in force.
pub fn config_reporter(recorder: Recorder, metrics: ControllerMetrics) -> crate::cluster::watch::ConfigReporter {
    let reported: Arc<Mutex<HashSet<String>>> = Arc::default();
    Arc::new(move |cm: &k8s_openapi::api::core::v1::ConfigMap, report: &crate::config::ConfigReport| {
        for key in &report.unknown_keys {
            warn!(key = %key, "feature-flags: unknown key ignored");
        }
        for e in &report.errors {
            warn!(key = %e.key, value = %e.value, error = %e, "feature-flags: invalid value, keeping the last good one");
            let message = e.to_string();
            if !reported.lock().unwrap_or_else(|p| p.into_inner()).insert(message.clone()) {
                continue;
            }
            metrics.config_errors.inc();
            let target = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                name: cm.metadata.name.clone(),
                namespace: cm.metadata.namespace.clone(),
                uid: cm.metadata.uid.clone(),
                ..Default::default()
            };
            let recorder = recorder.clone();
            let ev = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "InvalidConfig".into(),
                note: Some(format!("{message}; the last good value is kept")),
                action: "Configure".into(),
                secondary: None,
            };
            tokio::spawn(async move {
                if let Err(e) = recorder.publish(&ev, &target).await {
                    warn!(error = %e, "could not record an Event");
                }
            });
        }
    })
}

fn namespace_object(name: &str) -> Namespace {
    Namespace { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, ..Default::default() }
}

/// How long a namespace's triggers are gathered before its reconcile starts.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// The delay after `failures` consecutive failed reconciles of a namespace: 2 s doubling,
/// at most 5 minutes (no hot loops, and a namespace that recovers is retried soon).
fn backoff_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(1, 9)).min(Duration::from_secs(300))
}

/// Exponential back-off per namespace; a success resets it.
fn error_policy(ns: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = ns.metadata.name.clone().unwrap_or_default();
    ControllerMetrics::count(&ctx.metrics.reconcile_errors, error.metric_label());
    let mut backoff = ctx.backoff.lock().unwrap_or_else(|e| e.into_inner());
    let n = backoff.entry(name.clone()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff_delay(*n);
    warn!(namespace = %name, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` resolves. `triggers` come from the cache watchers;
/// leadership changes trigger every namespace.
pub async fn run(
    ctx: Arc<Context>,
    mut triggers: mpsc::UnboundedReceiver<Trigger>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut writer: Writer<Namespace> = Writer::default();
    let store = writer.as_reader();
    // The applier waits for its store's first list; this store is filled from triggers, so
    // it is complete from the start.
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (queue_tx, queue_rx) =
        mpsc::unbounded_channel::<Result<ReconcileRequest<Namespace>, std::convert::Infallible>>();
    let mut leader = ctx.leader.clone();
    let caches = ctx.caches.clone();
    let gauge_ctx = ctx.clone();

    // Turns triggers into reconcile requests, creating the synthetic Namespace objects.
    let feeder = tokio::spawn(async move {
        let mut known: HashSet<String> = HashSet::new();
        let mut enqueue = |ns: String, writer: &mut Writer<Namespace>| {
            if known.insert(ns.clone()) {
                writer.apply_watcher_event(&watcher::Event::Apply(namespace_object(&ns)));
            }
            let request = ReconcileRequest { obj_ref: ObjectRef::new(&ns), reason: ReconcileReason::Unknown };
            queue_tx.send(Ok(request)).is_ok()
        };
        loop {
            tokio::select! {
                t = triggers.recv() => match t {
                    Some(Trigger::Namespace(ns)) => { if !enqueue(ns, &mut writer) { return; } }
                    Some(Trigger::All) => for ns in caches.namespaces() { if !enqueue(ns, &mut writer) { return; } },
                    None => return,
                },
                changed = leader.changed() => {
                    if changed.is_err() { return; }
                    let is_leader = *leader.borrow();
                    info!(leader = is_leader, "leadership changed");
                    if !is_leader {
                        gauge_ctx.clear_gauges();
                    }
                    if is_leader {
                        for ns in caches.namespaces() { if !enqueue(ns, &mut writer) { return; } }
                    }
                }
            }
        }
    });

    let config = controller::Config::default().concurrency(ctx.options.concurrency).debounce(DEBOUNCE);
    let queue = futures::stream::poll_fn({
        let mut rx = queue_rx;
        move |cx| rx.poll_recv(cx)
    });
    let reconciler = |ns: Arc<Namespace>, ctx: Arc<Context>| Box::pin(reconcile::reconcile(ns, ctx));
    let mut results = applier(reconciler, error_policy, ctx.clone(), store, queue, config).take_until(shutdown).boxed();
    while let Some(result) = results.next().await {
        if let Err(e) = result {
            // Reconcile errors are handled by error_policy; these are queue-level problems.
            warn!(error = %e, "controller queue error");
        }
    }
    feeder.abort();
    info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let delays: Vec<Duration> = (1..=40u32).map(backoff_delay).collect();
        assert_eq!(delays[0], Duration::from_secs(2));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(300));
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
    }
}
