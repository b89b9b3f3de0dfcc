//! The webhook's [`Decider`] in production: the namespace's plan from the watch-fed caches,
//! the leader lease's freshness, and one direct GET when the caches miss a run or a claim.

use crate::cluster::{Caches, claim_info, lease_fresh};
use crate::core::claims::IgnoreReason;
use crate::core::{self, Decision, MissingClaims, Plan, SkipReason};
use crate::engine::tekton::PipelineRun;
use crate::pod::TaskPod;
use crate::webhook::Decider;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

pub struct CacheDecider {
    pub caches: Arc<Caches>,
    /// For the one direct GET on a cache miss; `None` never reads the API.
    pub client: Option<Client>,
    pub own_namespace: String,
    pub lease_name: String,
    pub lookup_timeout: Duration,
}

impl CacheDecider {
    /// A controller holds a fresh leader lease (so a planned placeholder will be created).
    pub fn controller_alive(&self) -> bool {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        self.caches.leases.get(&self.own_namespace, &self.lease_name).is_some_and(|l| lease_fresh(&l, now))
    }

    async fn get<K>(&self, api: Api<K>, name: &str) -> Option<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match tokio::time::timeout(self.lookup_timeout, api.get_opt(name)).await {
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

    /// The cache missed the pod's run or some of its claims: read them once and decide again.
    /// A new run's pod can beat both the run and its claims (a volumeClaimTemplate's PVC is
    /// created just before the pod) to the caches, so a fetched run's missing claims are
    /// fetched too.
    async fn decide_after_lookup(&self, pod: &TaskPod<'_>, plan: Arc<Plan>, first: Decision, alive: bool) -> Decision {
        let Some(client) = self.client.clone() else { return first };
        let ns: &str = &pod.metadata.namespace;
        let Some(run_ref) = crate::engine::engines().iter().find_map(|e| e.pod_run(&pod.metadata)) else {
            return first;
        };
        let mut inputs = None;
        let mut plan = plan;
        if first.skip_reason() == Some(SkipReason::RunNotFound) {
            if let Some(pr) = self.get(Api::<PipelineRun>::namespaced(client.clone(), ns), &run_ref.name).await
                && let Ok(run) = pr.to_run()
                && run_ref.uid.as_deref().is_none_or(|u| u == run.uid)
            {
                let mut with_run = self.caches.inputs(ns);
                with_run.runs.push(run);
                plan = Arc::new(with_run.plan(&self.caches.config(), MissingClaims::Wait));
                inputs = Some(with_run);
            } else {
                return first;
            }
        }
        // Claims the plan could not judge because their PVC was not in the cache.
        let missing: Vec<String> = plan
            .run(&run_ref.name, run_ref.uid.as_deref())
            .map(|r| {
                r.ignored
                    .iter()
                    .filter(|i| i.reason == IgnoreReason::Missing)
                    .filter_map(|i| i.claim.as_ref().map(|c| c.to_string()))
                    .filter(|c| pod.claims().contains(&c.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut fetched_claims = Vec::new();
        for claim in missing {
            if let Some(pvc) = self.get(Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns), &claim).await {
                fetched_claims.push((claim, claim_info(&pvc)));
            }
        }
        if !fetched_claims.is_empty() {
            let mut with_claims = inputs.unwrap_or_else(|| self.caches.inputs(ns));
            with_claims.claims.extend(fetched_claims);
            plan = Arc::new(with_claims.plan(&self.caches.config(), MissingClaims::Wait));
        } else if inputs.is_none() {
            return first;
        }
        core::decide(pod, &plan, alive)
    }
}

impl Decider for CacheDecider {
    async fn decide(&self, pod: &TaskPod<'_>) -> Decision {
        let alive = self.controller_alive();
        let plan = self.caches.plan(&pod.metadata.namespace);
        let first = core::decide(pod, &plan, alive);
        match first.skip_reason() {
            Some(SkipReason::RunNotFound | SkipReason::NoManagedClaim | SkipReason::NoPlaceholder) => {
                self.decide_after_lookup(pod, plan, first, alive).await
            }
            _ => first,
        }
    }

    fn ready(&self) -> bool {
        self.caches.ready()
    }
}
