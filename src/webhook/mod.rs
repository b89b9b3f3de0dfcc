//! The mutating admission webhook: HTTPS server, AdmissionReview handling, certificates.
//!
//! The webhook never decides anything itself: a [`Decider`] (backed by the watch-fed caches in
//! production, by a fixed plan in tests) calls the decision core.
//!
//! - [`review`]: the request-to-response function (`AdmissionReview` bytes in, bytes out; never
//!   fails, never panics).
//! - [`server`]: the HTTPS server (`POST /mutate/pods`), size and time bounds, graceful shutdown.
//! - [`certs`]: the serving certificate: self-managed (CA + serving certificate in a Secret,
//!   `caBundle` of the `MutatingWebhookConfiguration`) or external files; hot reload.
//! - [`metrics`]: admission latency, outcomes, cache sizes.
//!
//! Wiring it into `run` (the flags are suggestions: `--webhook-port` 8443, `--metrics-port`
//! 8080, `--tls-cert-file`/`--tls-key-file` for external certificates, else self-managed with
//! `--cert-secret-name`, `--webhook-config-name`, `--webhook-service-name`, `--webhook-url`):
//!
//! ```ignore
//! let mut registry = Registry::default();
//! let metrics = WebhookMetrics::register(&mut registry);
//! WebhookMetrics::register_cache_sizes(&mut registry, decider.clone());
//! let tls = match (cert_file, key_file) {
//!     (Some(c), Some(k)) => TlsSource::External(ExternalFiles::new(c, k)),
//!     _ => {
//!         let mut s = SelfManaged::new(client.clone(), &namespace, leader_rx.clone());
//!         s.extra_sans.extend(webhook_url.as_deref().and_then(certs::url_host));
//!         TlsSource::SelfManaged(Box::new(s))
//!     }
//! };
//! let mut options = WebhookOptions::new(tls);
//! options.addr = ([0, 0, 0, 0], webhook_port).into();
//! let server = WebhookServer::bind(options, decider, metrics).await?;
//! let readiness = Readiness::new().with("webhook", server.readiness());
//! let health = HealthServer::bind(([0, 0, 0, 0], metrics_port).into(), Arc::new(registry), readiness).await?;
//! tokio::spawn(health.run(shutdown.clone()));
//! server.run(shutdown).await?; // returns Ok after SIGTERM cancelled `shutdown`
//! ```

pub mod certs;
pub mod metrics;
pub mod review;
pub mod server;

pub use metrics::{Outcome, WebhookMetrics};
pub use review::{Admission, handle_review};
pub use server::{WebhookError, WebhookOptions, WebhookServer, serve};

use crate::core::{Decision, Plan, Skip, SkipReason};
use crate::pod::TaskPod;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// What the webhook asks for each pod.
pub trait Decider: Send + Sync + 'static {
    /// What the pod gets. Never fails: every problem is a [`Decision::Skip`] with a reason.
    /// `pod.metadata.namespace` is set (from the AdmissionReview request when the object lacks it).
    fn decide(&self, pod: &TaskPod) -> impl Future<Output = Decision> + Send;
    /// Whether the caches behind it have synced (readiness).
    fn ready(&self) -> bool;
    /// Sizes of the caches behind it, `(kind, objects)`, for the `affinity_assistant_cache_objects`
    /// gauge (read on each scrape). None by default.
    fn cache_sizes(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A decider over fixed plans: for tests, benchmarks and `render`-like tools.
#[derive(Debug, Clone, Default)]
pub struct PlanDecider {
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// Whether a controller holds a fresh leader lease.
    pub controller_alive: bool,
}

impl Decider for PlanDecider {
    async fn decide(&self, pod: &TaskPod<'_>) -> Decision {
        match self.plans.get(pod.metadata.namespace.as_ref()) {
            Some(plan) => crate::core::decide(pod, plan, self.controller_alive),
            None => {
                let empty = Plan {
                    namespace: pod.metadata.namespace.to_string(),
                    runs: vec![],
                    placeholders: vec![],
                    delete: vec![],
                    conflicts: vec![],
                    warnings: vec![],
                };
                match crate::core::decide(pod, &empty, self.controller_alive) {
                    // Keep the core's verdict for pods that are not ours to pin anyway.
                    Decision::Skip(s) => Decision::Skip(s),
                    Decision::Pin(_) => Decision::Skip(Skip {
                        reason: SkipReason::RunNotFound,
                        message: format!("namespace {} has no plan", pod.metadata.namespace),
                        undo: None,
                    }),
                }
            }
        }
    }

    fn ready(&self) -> bool {
        true
    }

    fn cache_sizes(&self) -> Vec<(&'static str, u64)> {
        vec![("plans", self.plans.len() as u64)]
    }
}
