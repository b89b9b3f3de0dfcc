//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone)]
pub struct ControllerMetrics {
    pub placeholders: Family<ModeLabels, Gauge>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub placeholder_writes: Family<ReasonLabels, Counter>,
    pub moves: Family<ReasonLabels, Counter>,
    pub pinned_pending: Gauge,
    pub unpinned_managed: Counter,
    pub conflicts: Counter,
    pub config_errors: Counter,
    pub tekton_coschedule_on: Gauge,
    pub refusals: Family<ReasonLabels, Counter>,
    pub stand_downs: Counter,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ControllerMetrics {
            placeholders: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            reconcile_errors: Family::default(),
            placeholder_writes: Family::default(),
            moves: Family::default(),
            pinned_pending: Gauge::default(),
            unpinned_managed: Counter::default(),
            conflicts: Counter::default(),
            config_errors: Counter::default(),
            tekton_coschedule_on: Gauge::default(),
            refusals: Family::default(),
            stand_downs: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("affinity_assistant");
        r.register("placeholders", "Placeholders the controller keeps, by mode", m.placeholders.clone());
        r.register("reconcile_duration_seconds", "Time to reconcile one namespace", m.reconcile_duration.clone());
        r.register("reconcile_errors", "Failed reconciles, by reason", m.reconcile_errors.clone());
        r.register(
            "placeholder_writes",
            "Placeholder creates, updates, deletes and failures",
            m.placeholder_writes.clone(),
        );
        r.register("placeholder_moves", "Placeholder pods moved off a node, by reason", m.moves.clone());
        r.register("pinned_pending_pods", "Pinned pods Pending longer than the threshold", m.pinned_pending.clone());
        r.register(
            "unpinned_managed_pods",
            "Task pods of managed runs mounting managed claims that were not pinned",
            m.unpinned_managed.clone(),
        );
        r.register(
            "grouping_conflicts",
            "Runs whose claims are held by more than one placeholder",
            m.conflicts.clone(),
        );
        r.register(
            "config_errors",
            "Invalid feature-flags values (the last good value is kept)",
            m.config_errors.clone(),
        );
        r.register(
            "tekton_coschedule_enabled",
            "1 when Tekton's own affinity assistant is on",
            m.tekton_coschedule_on.clone(),
        );
        r.register(
            "placeholder_refusals",
            "Placeholders found unable to run, by reason (failed-create: the StatefulSet controller's pod create \
             was refused; unschedulable: past the grace); nothing is pinned to them meanwhile",
            m.refusals.clone(),
        );
        r.register(
            "engine_stand_downs",
            "Runs the add-on left to the engine's own affinity assistant after it showed up",
            m.stand_downs.clone(),
        );
        m
    }

    pub fn count(family: &Family<ReasonLabels, Counter>, reason: &str) {
        family.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }
}
