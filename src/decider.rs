//! The webhook's [`Decider`] in production: the namespace's plan from the watch-fed caches,
//! the leader lease's freshness, direct reads when the caches miss something, and bounded waits
//! where only time tells.
//!
//! # Why it may wait, and how long
//!
//! Real Tekton creates a run's first pods before it writes the run's `status.pipelineSpec`
//! (up to 0.85 s before, in the recorded traces), and a volumeClaimTemplate's PVC just before
//! the pod. So the first wave of a run often reaches the webhook before the caches can plan it:
//! - the run or a claim is not cached yet: one direct read of each;
//! - a `pipelineRef` by name: the Pipeline is resolved from the cache, or read directly;
//! - a `pipelineRef` with a resolver (git, bundles, hub, cluster): what it runs exists only inside
//!   Tekton until the status is written, so the webhook waits for the status, up to its budget;
//! - the pod's placeholder has no pod yet: it waits for that pod (or for the StatefulSet
//!   controller's refusal), so that the task pod cannot take the last slot of a quota the
//!   placeholder needs and then wait forever for it. Past the budget it pins all the same.
//!   Except where the pod is the first to name its claims (an Argo claim named by an input
//!   parameter): the controller can only learn of that placeholder from the pod, so the pod is
//!   pinned at once and the placeholder follows it (I4).
//!
//! Every wait ends as soon as a cache changes in a way that decides the pod, and all of it stays
//! within [`CacheDecider::budget`], which the webhook configuration's `timeoutSeconds` covers
//! with a margin (`manifests::WEBHOOK_TIMEOUT_SECONDS`): the API server never gives up first.

use crate::cluster::{Caches, Fetched, lease_fresh};
use crate::core::claims::IgnoreReason;
use crate::core::{self, Decision, MissingClaims, Plan, RunStatus, Skip, SkipReason};

use crate::model::{Run, RunPhase};
use crate::pod::TaskPod;
use crate::webhook::Decider;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::DynamicObject;
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// The default of [`CacheDecider::budget`]: the longest a decision takes, waits and direct
/// reads included.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(2500);

pub struct CacheDecider {
    pub caches: Arc<Caches>,
    /// For direct reads on a cache miss; `None` never reads the API.
    pub client: Option<Client>,
    pub own_namespace: String,
    pub lease_name: String,
    /// The longest one direct read may take.
    pub lookup_timeout: Duration,
    /// The longest a whole decision may take, waits and reads included.
    pub budget: Duration,
    /// Counts and times the waits.
    pub metrics: Option<crate::webhook::metrics::WaitMetrics>,
}

/// What a decision is still waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The run's pipeline spec (a resolver, or a Pipeline not seen yet).
    Spec,
    /// The pod of the placeholder the pod is pinned to.
    PlaceholderPod,
}

impl Waiting {
    fn as_str(self) -> &'static str {
        match self {
            Waiting::Spec => "pipeline-spec",
            Waiting::PlaceholderPod => "placeholder-pod",
        }
    }
}

/// What has been read directly already (each thing at most once per decision).
#[derive(Default)]
struct Reads {
    fetched: Fetched,
    tried: BTreeSet<(&'static str, String)>,
}

impl CacheDecider {
    /// A decider over `caches` with the default bounds.
    pub fn new(caches: Arc<Caches>, client: Option<Client>, own_namespace: &str, lease_name: &str) -> CacheDecider {
        CacheDecider {
            caches,
            client,
            own_namespace: own_namespace.into(),
            lease_name: lease_name.into(),
            lookup_timeout: Duration::from_millis(1000),
            budget: DEFAULT_BUDGET,
            metrics: None,
        }
    }

    /// A controller holds a fresh leader lease (so a planned placeholder will be created).
    pub fn controller_alive(&self) -> bool {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        self.caches.leases.get(&self.own_namespace, &self.lease_name).is_some_and(|l| lease_fresh(&l, now))
    }

    async fn get<K>(&self, api: Api<K>, name: &str, deadline: Instant) -> Option<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let until = deadline.min(Instant::now() + self.lookup_timeout);
        match tokio::time::timeout_at(until, api.get_opt(name)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                debug!(error = %e, name, "direct lookup failed");
                None
            }
            Err(_) => {
                debug!(name, "direct lookup timed out");
                None
            }
        }
    }

    /// The plan for the pod, and whether the pod is the first to name the claims of the
    /// placeholder it would go to (`Some(plan without it)`: the controller learns of that
    /// placeholder only once the pod exists, so there is nothing to wait for).
    fn plan(&self, ns: &str, pod: &TaskPod<'_>, reads: &Reads) -> (Arc<Plan>, Option<Arc<Plan>>) {
        let inputs = || self.caches.inputs_with(ns, k8s_openapi::jiff::Timestamp::now(), &reads.fetched);
        let (plan, read) = if reads.fetched.is_empty() {
            (self.caches.plan(ns), None)
        } else {
            let read = inputs();
            (Arc::new(read.plan(&self.caches.config(), MissingClaims::Wait)), Some(read))
        };
        // A claim its run's spec does not name (Argo fills it in when it builds the pod): the
        // plan is made again with this pod among its run's pods. Rare, so not cached.
        if core::pin::unplanned_claims(pod, &plan).is_empty() {
            return (plan, None);
        }
        let Some(mounts) = pod.mounts() else { return (plan, None) };
        let mut with = read.unwrap_or_else(inputs);
        with.mounts.push(mounts);
        (Arc::new(with.plan(&self.caches.config(), MissingClaims::Wait)), Some(plan))
    }

    /// The pod's run, from the cache or what was read.
    fn run_of(&self, ns: &str, engine: &str, name: &str, reads: &Reads) -> Option<Run> {
        self.caches
            .run(ns, engine, name)
            .map(|c| c.run.clone())
            .or_else(|| reads.fetched.runs.iter().find(|r| r.engine == engine && r.name == name).cloned())
    }

    /// Reads what the caches are missing for this decision, once each. `true` when something
    /// new was read (decide again).
    async fn read_missing(
        &self,
        pod: &TaskPod<'_>,
        plan: &Plan,
        d: &Decision,
        reads: &mut Reads,
        deadline: Instant,
    ) -> bool {
        let Some(client) = self.client.clone() else { return false };
        let ns: &str = &pod.metadata.namespace;
        let (Some(run_ref), Some(engine)) = (&pod.identity.run, crate::engine::by_name(pod.identity.engine)) else {
            return false;
        };
        let mut read = false;
        if d.skip_reason() == Some(SkipReason::RunNotFound) {
            if reads.tried.insert(("run", run_ref.name.clone())) {
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &engine.run_kind().api_resource());
                if let Some(obj) = self.get(api, &run_ref.name, deadline).await
                    && run_ref.uid.as_deref().is_none_or(|u| Some(u) == obj.metadata.uid.as_deref())
                    && let Ok(run) = engine.run(&obj.metadata, &obj.data)
                {
                    reads.fetched.runs.push(run);
                    read = true;
                }
            }
            return read;
        }
        let Some(rp) = plan.run(&run_ref.name, run_ref.uid.as_deref()) else { return false };
        let kind = |run: &Run| {
            if run.cluster_definition { engine.cluster_definition_kind() } else { engine.definition_kind() }
        };
        if rp.status == RunStatus::NotActive(RunPhase::AwaitingSpec)
            && let Some(run) = self.run_of(ns, engine.name(), &run_ref.name, reads)
            && let (Some(name), Some(kind)) = (run.definition.as_ref(), kind(&run))
            && reads.tried.insert(("definition", name.to_string()))
            && let Some(obj) = self
                .get(
                    if run.cluster_definition {
                        Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource())
                    } else {
                        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &kind.api_resource())
                    },
                    name,
                    deadline,
                )
                .await
            && let Ok(def) = engine.definition(&obj.metadata, &obj.data)
        {
            reads.fetched.definitions.push((engine.name(), def));
            read = true;
        }
        // Claims the plan could not judge because their PVC was not in the cache.
        let mounted = pod.claims();
        let missing: Vec<String> = rp
            .ignored
            .iter()
            .filter(|i| i.reason == IgnoreReason::Missing)
            .filter_map(|i| i.claim.as_ref().map(|c| c.to_string()))
            .filter(|c| mounted.contains(&c.as_str()))
            .collect();
        for claim in missing {
            if reads.tried.insert(("claim", claim.clone()))
                && let Some(pvc) =
                    self.get(Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns), &claim, deadline).await
            {
                reads.fetched.claims.push(pvc);
                read = true;
            }
        }
        read
    }

    /// What the decision still waits for, if anything. `without`: the plan without the pod,
    /// when the pod is the first to name some of its claims.
    fn waiting(&self, pod: &TaskPod<'_>, plan: &Plan, without: Option<&Plan>, d: &Decision) -> Option<Waiting> {
        match d {
            // A placeholder only this pod calls for: nobody creates it before the pod exists.
            Decision::Pin(pin) if without.is_some_and(|w| w.placeholder(&pin.placeholder).is_none()) => None,
            Decision::Pin(pin) if !pin.placeholder_ready => Some(Waiting::PlaceholderPod),
            Decision::Pin(_) => None,
            Decision::Skip(s) if s.reason == SkipReason::RunNotManaged => {
                let run_ref = pod.identity.run.as_ref()?;
                let rp = plan.run(&run_ref.name, run_ref.uid.as_deref())?;
                (rp.status == RunStatus::NotActive(RunPhase::AwaitingSpec)).then_some(Waiting::Spec)
            }
            Decision::Skip(_) => None,
        }
    }

    /// The answer when the budget ran out while waiting.
    fn past_budget(&self, pod: &TaskPod<'_>, d: Decision, waiting: Waiting) -> Decision {
        match (waiting, d) {
            // The controller is alive and the placeholder is planned: its pod is late, not
            // refused (a refusal would have been seen). Pinning beats leaving it unpinned.
            (Waiting::PlaceholderPod, d) => d,
            (Waiting::Spec, _) => Decision::Skip(Skip {
                reason: SkipReason::Budget,
                message: format!(
                    "pod {}/{}: its run's pipeline was not resolved within {} ms ({} had not written the \
                     resolved spec); not pinned",
                    pod.metadata.namespace,
                    pod.metadata.display_name(),
                    self.budget.as_millis(),
                    pod.identity.title
                ),
                undo: None,
            }),
        }
    }
}

impl Decider for CacheDecider {
    async fn decide(&self, pod: &TaskPod<'_>) -> Decision {
        let started = Instant::now();
        let deadline = started + self.budget;
        let ns: &str = &pod.metadata.namespace;
        let mut changes = self.caches.subscribe();
        let mut reads = Reads::default();
        let mut waited: Option<Waiting> = None;
        loop {
            changes.borrow_and_update();
            let alive = self.controller_alive();
            let (plan, without) = self.plan(ns, pod, &reads);
            let d = core::decide(pod, &plan, alive);
            let lookup = matches!(
                d.skip_reason(),
                Some(
                    SkipReason::RunNotFound
                        | SkipReason::RunNotManaged
                        | SkipReason::NoManagedClaim
                        | SkipReason::NoPlaceholder
                )
            );
            if lookup && self.read_missing(pod, &plan, &d, &mut reads, deadline).await {
                continue;
            }
            let Some(waiting) = self.waiting(pod, &plan, without.as_deref(), &d) else {
                if let (Some(w), Some(m)) = (waited, &self.metrics) {
                    m.observe(w.as_str(), "decided", started.elapsed());
                }
                return d;
            };
            waited = Some(waiting);
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                if let Some(m) = &self.metrics {
                    m.observe(waiting.as_str(), "budget", started.elapsed());
                }
                debug!(namespace = ns, pod = %pod.metadata.display_name(), waiting = waiting.as_str(),
                    "webhook budget ran out while waiting");
                return self.past_budget(pod, d, waiting);
            }
        }
    }

    fn ready(&self) -> bool {
        self.caches.ready()
    }
}
