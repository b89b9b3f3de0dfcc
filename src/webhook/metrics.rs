//! Webhook metrics: admission latency, admissions by outcome, cache sizes, certificate state.

use super::Decider;
use crate::core::SkipReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What became of one admission request. `labels()` are the metric labels: keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A JSONPatch pinned the pod.
    Pinned,
    /// The core left the pod as it is.
    Skipped(SkipReason),
    /// Not ours to look at (not a Pod CREATE): allowed, unchanged, no warning.
    Ignored(&'static str),
    /// Something went wrong on our side or in the input: allowed, unchanged, with a warning.
    Error(&'static str),
}

/// Reasons of [`Outcome::Ignored`].
pub mod ignored {
    /// The request is not about a Pod (another kind, or a subresource).
    pub const NOT_POD: &str = "not-pod";
    /// The operation is not CREATE.
    pub const NOT_CREATE: &str = "not-create";
}

/// Reasons of [`Outcome::Error`].
pub mod error {
    /// The body is not JSON.
    pub const INVALID_JSON: &str = "invalid-json";
    /// The body is JSON but not an `admission.k8s.io/v1` AdmissionReview with a request.
    pub const INVALID_REVIEW: &str = "invalid-review";
    /// The pod in the request could not be read.
    pub const INVALID_POD: &str = "invalid-pod";
    /// The body is larger than the configured bound.
    pub const BODY_TOO_LARGE: &str = "body-too-large";
    /// The body could not be read (client error or timeout).
    pub const BODY_UNREADABLE: &str = "body-unreadable";
    /// The caches have not synced yet.
    pub const NOT_READY: &str = "caches-not-ready";
    /// The decision took longer than the configured bound.
    pub const DECIDE_TIMEOUT: &str = "decide-timeout";
    /// The decision panicked (a bug): caught, the pod is left alone.
    pub const INTERNAL: &str = "internal-error";
}

impl Outcome {
    /// `(outcome, reason)` label values.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Pinned => ("pinned", ""),
            Outcome::Skipped(r) => ("skipped", r.as_str()),
            Outcome::Ignored(r) => ("ignored", r),
            Outcome::Error(r) => ("error", r),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.labels() {
            (o, "") => f.write_str(o),
            (o, r) => write!(f, "{o} ({r})"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: &'static str,
}

/// Latency buckets (seconds): admissions take tens of microseconds; the API server's own
/// timeout is seconds.
const LATENCY_BUCKETS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The webhook's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    latency: Histogram,
    admissions: Family<OutcomeLabels, Counter>,
    in_flight: Gauge,
    /// Unix time the served certificate expires (0 while none is loaded).
    pub(crate) cert_not_after: Gauge,
    /// Times a new serving certificate was loaded.
    pub(crate) cert_loads: Counter,
    /// Failed certificate loads, generations or API writes.
    pub(crate) cert_errors: Counter,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            latency: Histogram::new(LATENCY_BUCKETS),
            admissions: Family::default(),
            in_flight: Gauge::default(),
            cert_not_after: Gauge::default(),
            cert_loads: Counter::default(),
            cert_errors: Counter::default(),
        }
    }
}

impl WebhookMetrics {
    /// Metrics registered into `registry` (names prefixed with the registry's prefix, if any):
    /// `affinity_assistant_admission_duration_seconds` (histogram),
    /// `affinity_assistant_admissions_total{outcome, reason}`,
    /// `affinity_assistant_admissions_in_flight`,
    /// `affinity_assistant_webhook_certificate_expiry_timestamp_seconds`,
    /// `affinity_assistant_webhook_certificate_loads_total`,
    /// `affinity_assistant_webhook_certificate_errors_total`.
    pub fn register(registry: &mut Registry) -> WebhookMetrics {
        let m = WebhookMetrics::default();
        registry.register(
            "affinity_assistant_admission_duration_seconds",
            "Time to answer one AdmissionReview, body read to response built",
            m.latency.clone(),
        );
        registry.register(
            "affinity_assistant_admissions",
            "Admission requests by outcome (pinned, skipped, ignored, error) and reason",
            m.admissions.clone(),
        );
        registry.register(
            "affinity_assistant_admissions_in_flight",
            "Admission requests being answered",
            m.in_flight.clone(),
        );
        registry.register(
            "affinity_assistant_webhook_certificate_expiry_timestamp_seconds",
            "Unix time the served certificate expires (0: none loaded)",
            m.cert_not_after.clone(),
        );
        registry.register(
            "affinity_assistant_webhook_certificate_loads",
            "Serving certificates loaded (first load and every renewal or file change)",
            m.cert_loads.clone(),
        );
        registry.register(
            "affinity_assistant_webhook_certificate_errors",
            "Failures to load, generate or publish the serving certificate",
            m.cert_errors.clone(),
        );
        m
    }

    /// Registers `affinity_assistant_cache_objects{kind}`, read from
    /// [`Decider::cache_sizes`] on each scrape.
    pub fn register_cache_sizes<D: Decider>(registry: &mut Registry, decider: Arc<D>) {
        registry.register_collector(Box::new(CacheSizes(decider)));
    }

    pub(crate) fn observe(&self, outcome: Outcome, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        let (outcome, reason) = outcome.labels();
        self.admissions.get_or_create(&OutcomeLabels { outcome, reason }).inc();
    }

    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Admissions counted so far with this outcome (for tests and the load generator).
    pub fn admissions(&self, outcome: Outcome) -> u64 {
        let (outcome, reason) = outcome.labels();
        self.admissions.get_or_create(&OutcomeLabels { outcome, reason }).get()
    }
}

/// Decrements the in-flight gauge when dropped.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct CacheSizes<D>(Arc<D>);

impl<D> fmt::Debug for CacheSizes<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheSizes")
    }
}

impl<D: Decider> Collector for CacheSizes<D> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let family: Family<CacheLabels, Gauge> = Family::default();
        for (kind, n) in self.0.cache_sizes() {
            family.get_or_create(&CacheLabels { kind }).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let metric = encoder.encode_descriptor(
            "affinity_assistant_cache_objects",
            "Objects in the webhook's watch-fed caches, by kind",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    waiting_for: &'static str,
    result: &'static str,
}

/// Waits inside decisions (a run's first pods before its spec is known, a placeholder whose
/// pod does not exist yet): how many, how long, and whether the budget ran out.
#[derive(Debug, Clone)]
pub struct WaitMetrics {
    waits: Family<WaitLabels, Histogram, fn() -> Histogram>,
    /// The same counts, readable without encoding the histogram.
    counts: Family<WaitLabels, Counter>,
}

impl WaitMetrics {
    /// Registers `affinity_assistant_admission_wait_seconds{waiting_for, result}` (histogram;
    /// `waiting_for`: `pipeline-spec` | `placeholder-pod`, `result`: `decided` | `budget`).
    pub fn register(registry: &mut Registry) -> WaitMetrics {
        let m = WaitMetrics {
            waits: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            counts: Family::default(),
        };
        registry.register(
            "affinity_assistant_admission_wait_seconds",
            "Time a decision waited for a run's pipeline spec or a placeholder's pod, and whether it ran out of budget",
            m.waits.clone(),
        );
        m
    }

    pub(crate) fn observe(&self, waiting_for: &'static str, result: &'static str, elapsed: Duration) {
        let labels = WaitLabels { waiting_for, result };
        self.waits.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.counts.get_or_create(&labels).inc();
    }

    /// Waits counted so far (for tests and benchmarks).
    pub fn count(&self, waiting_for: &'static str, result: &'static str) -> u64 {
        self.counts.get_or_create(&WaitLabels { waiting_for, result }).get()
    }
}
