//! One namespace's reconcile: carry out the core's plan and surface what goes wrong.

use super::{Context, ControllerMetrics, Error};
use crate::config::Config;
use crate::core::{MissingClaims, Plan, PlannedPlaceholder, RunStatus};
use crate::model::Name;
use crate::names;
use crate::views::VolumeView;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Taints that mean "this node is going away".
pub const DRAIN_TAINTS: [&str; 3] =
    ["ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted", "node.kubernetes.io/out-of-service"];

pub const FIELD_MANAGER: &str = "affinity-assistant";

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ns.name_any();
    if !ctx.is_leader() {
        return Ok(Action::await_change());
    }
    // Nothing is decided from caches that have not all listed: every namespace is triggered
    // once they have.
    if !ctx.caches.ready() {
        debug!(namespace = %namespace, "caches not synced yet; not reconciling");
        return Ok(Action::await_change());
    }
    if !ctx.caches.has_namespace(&namespace) {
        // Gone (or never had anything of ours): forget what was kept for it.
        ctx.forget_namespace(&namespace);
        return Ok(Action::await_change());
    }
    ctx.prune(ctx.options.grace_period);
    let started = Instant::now();
    let assistant_on = crate::engine::engines().iter().any(|e| {
        e.own_assistant().is_some_and(|a| ctx.caches.assistant_flag(e.name()).is_some_and(|v| a.enabled(v.as_deref())))
    });
    ctx.metrics.tekton_coschedule_on.set(i64::from(assistant_on));
    let config = effective_config(&ctx).await;
    let inputs = ctx.caches.inputs(&namespace);
    let plan = inputs.plan(&config, MissingClaims::Wait);
    let result = carry_out(&ctx, &namespace, &config, &plan).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result?;
    ctx.backoff.lock().unwrap_or_else(|e| e.into_inner()).remove(&namespace);
    // A time-based rule (a placeholder's unschedulable grace) comes due before the resync:
    // look again then, so that the run hears of it within seconds.
    let due = inputs.expires.map(|at| {
        let left = at.duration_since(k8s_openapi::jiff::Timestamp::now());
        Duration::try_from(left).unwrap_or_default() + Duration::from_millis(50)
    });
    Ok(Action::requeue(due.map_or(ctx.options.resync, |d| d.min(ctx.options.resync))))
}

/// The config with a missing priority class left out (and a Warning said once).
async fn effective_config(ctx: &Context) -> Config {
    let mut config = (*ctx.caches.config()).clone();
    let Some(pc) = config.placeholder_priority_class.clone() else { return config };
    let cached = ctx
        .memory()
        .priority_classes
        .get(&pc)
        .filter(|(_, at)| at.elapsed() < Duration::from_secs(60))
        .map(|(ok, _)| *ok);
    let exists = match cached {
        Some(ok) => ok,
        None => {
            let ok = match Api::<PriorityClass>::all(ctx.client.clone()).get_opt(&pc).await {
                Ok(found) => found.is_some(),
                // Unknown (no right to read, API trouble): use it; the placeholder's
                // FailedCreate will say so if it really is missing.
                Err(e) => {
                    debug!(error = %e, priority_class = %pc, "cannot check the priority class");
                    true
                }
            };
            ctx.memory().priority_classes.insert(pc.clone(), (ok, Instant::now()));
            ok
        }
    };
    if !exists {
        warn!(priority_class = %pc, "placeholder-priority-class does not exist; not used");
        config.placeholder_priority_class = None;
    }
    config
}

/// The run an Event is about, as its engine names its kind.
fn run_ref(namespace: &str, api_version: &str, kind: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: Some(uid.into()),
        ..Default::default()
    }
}

/// Records an Event once per (object, reason, message) for the life of this process.
async fn event(ctx: &Context, target: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
    let key = (target.uid.clone().unwrap_or_default(), reason.to_string(), note.clone());
    {
        let mut memory = ctx.memory();
        if memory.reported.len() > 50_000 {
            memory.reported.clear();
        }
        if !memory.reported.insert(key) {
            return;
        }
    }
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 997;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    let recorder = ctx.recorders.for_namespace(target.namespace.as_deref().unwrap_or_default());
    if let Err(e) = recorder.publish(&ev, target).await {
        warn!(error = %e, reason, "could not record an Event");
    }
}

/// Events about a placeholder go to every run it serves.
async fn event_on_owners(
    ctx: &Context,
    namespace: &str,
    p: &PlannedPlaceholder,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    for o in &p.owners {
        event(ctx, &run_ref(namespace, &o.api_version, &o.kind, &o.name, &o.uid), type_, reason, action, note.clone())
            .await;
    }
}

async fn carry_out(ctx: &Context, namespace: &str, config: &Config, plan: &Plan) -> Result<(), Error> {
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);

    // 1. Create what is missing.
    for p in &plan.placeholders {
        let Some(sts) = p.statefulset(namespace, config) else { continue };
        if !ctx.is_leader() {
            return Ok(());
        }
        match sts_api
            .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &sts)
            .await
        {
            Ok(_) => {
                ControllerMetrics::count(&ctx.metrics.placeholder_writes, "created");
                let claims = p.claims.iter().cloned().collect::<Vec<_>>().join(", ");
                let runs = p.owners.iter().map(|o| o.name.clone()).collect::<Vec<_>>().join(", ");
                info!(namespace, placeholder = %p.name, claims = %claims, runs = %runs, mode = %p.mode, "placeholder created");
                let note = format!("created placeholder {} holding claims [{claims}] ({} mode)", p.name, p.mode);
                event_on_owners(ctx, namespace, p, EventType::Normal, "PlaceholderCreated", "Create", note).await;
            }
            // Created meanwhile (a previous reconcile, or a watch that lags): the watch brings it.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(namespace, placeholder = %p.name, "placeholder already exists")
            }
            // Quota, LimitRange, admission, a missing priority class: no retry will fix it by
            // itself, so say so on the runs and go on with the rest of the plan.
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 422) => {
                ControllerMetrics::count(&ctx.metrics.placeholder_writes, "create-failed");
                warn!(namespace, placeholder = %p.name, error = %s.message, "placeholder cannot be created");
                let note = format!("placeholder {} cannot be created: {}", p.name, s.message);
                event_on_owners(ctx, namespace, p, EventType::Warning, "PlaceholderFailedCreate", "Create", note).await;
            }
            Err(source) => return Err(Error::Create { name: p.name.to_string(), source }),
        }
    }

    // 2. Keep owner references and the runs annotations current on existing placeholders.
    for p in plan.placeholders.iter().filter(|p| p.create.is_none()) {
        let Some(current) = ctx.caches.placeholders.get(namespace, &p.name) else { continue };
        let want_owners: Vec<_> = p.owners.iter().map(|o| o.reference()).collect();
        let have_owners = current.metadata.owner_references.clone().unwrap_or_default();
        let want_runs = p.owners.iter().map(|o| o.name.clone()).collect::<Vec<_>>().join(",");
        let want_modes = crate::core::placeholder::run_modes_annotation(&p.run_modes);
        let ann = current.metadata.annotations.clone().unwrap_or_default();
        let same_owners = {
            let a: BTreeSet<_> = have_owners.iter().map(|o| o.uid.clone()).collect();
            let b: BTreeSet<_> = want_owners.iter().map(|o| o.uid.clone()).collect();
            a == b
        };
        if same_owners
            && ann.get(names::ANNOTATION_RUNS) == Some(&want_runs)
            && ann.get(names::ANNOTATION_RUN_MODES) == Some(&want_modes)
        {
            continue;
        }
        if !ctx.is_leader() {
            return Ok(());
        }
        // A merge patch replaces the whole list: exactly the owners the plan says.
        let patch = json!({
            "metadata": {
                "ownerReferences": if want_owners.is_empty() { serde_json::Value::Null } else { json!(want_owners) },
                "annotations": { names::ANNOTATION_RUNS: want_runs, names::ANNOTATION_RUN_MODES: want_modes },
            }
        });
        match sts_api
            .patch(
                &p.name,
                &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                ControllerMetrics::count(&ctx.metrics.placeholder_writes, "owners-updated");
                debug!(namespace, placeholder = %p.name, runs = %want_runs, "owners updated");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::Update { name: p.name.to_string(), source }),
        }
    }

    // 3. Delete what nothing needs any more (only our own, only the one we saw).
    for name in &plan.delete {
        let Some(current) = ctx.caches.placeholders.get(namespace, name) else { continue };
        if !ctx.is_leader() {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: current.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match sts_api.delete(name, &dp).await {
            Ok(_) => {
                ControllerMetrics::count(&ctx.metrics.placeholder_writes, "deleted");
                info!(namespace, placeholder = %name, "placeholder deleted: no active run and no unfinished pinned pod needs it");
            }
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
            Err(source) => return Err(Error::Delete { name: name.to_string(), source }),
        }
    }

    // 4. Warnings the plan has for runs: conflicts, invalid annotations, isolation fallbacks.
    for rp in &plan.runs {
        let target = run_ref(namespace, &rp.api_version, &rp.kind, &rp.name, &rp.uid);
        for w in &rp.warnings {
            let reason =
                if plan.conflicts.iter().any(|c| &c.message == w) { "GroupingConflict" } else { "PlacementWarning" };
            if reason == "GroupingConflict"
                && !ctx.memory().reported.contains(&(rp.uid.to_string(), reason.into(), w.clone()))
            {
                ctx.metrics.conflicts.inc();
            }
            warn!(namespace, run = %rp.name, warning = %w, "run placement warning");
            event(ctx, &target, EventType::Warning, reason, "Plan", w.clone()).await;
        }
        if let RunStatus::InvalidAnnotation(m) = &rp.status {
            event(ctx, &target, EventType::Warning, "InvalidAnnotation", "Plan", m.clone()).await;
        }
    }
    for w in &plan.warnings {
        warn!(namespace, warning = %w, "namespace placement warning");
    }

    // 5. Placeholders that cannot run: nothing is pinned to them meanwhile (the webhook reads
    // the same plan); the runs they serve hear why.
    for p in plan.placeholders.iter().filter(|p| p.create.is_none()) {
        let Some(why) = &p.refused else { continue };
        let (reason, metric) = if p.pod_exists {
            ("PlaceholderUnschedulable", "unschedulable")
        } else {
            ("PlaceholderFailedCreate", "failed-create")
        };
        let key = (p.name.to_string(), format!("refused:{metric}"), String::new());
        if ctx.memory().reported.insert(key) {
            ControllerMetrics::count(&ctx.metrics.refusals, metric);
        }
        warn!(namespace, placeholder = %p.name, reason = %why, "placeholder cannot run; nothing is pinned to it");
        let note = format!(
            "placeholder {} cannot run: {why}; new task pods of its runs are not pinned to it until it can \
             (they may then wait for a volume attached elsewhere)",
            p.name
        );
        event_on_owners(ctx, namespace, p, EventType::Warning, reason, "Schedule", note).await;
    }
    // Runs left to the engine's own assistant after the add-on served them.
    for rp in plan.runs.iter().filter(|r| r.status == RunStatus::StoodDown) {
        let was_ours = ctx
            .caches
            .placeholders
            .in_namespace(namespace)
            .iter()
            .any(|sts| sts.metadata.owner_references.iter().flatten().any(|o| o.uid == rp.uid.as_str()));
        if was_ours {
            let key = (rp.uid.to_string(), "StoodDown".to_string(), String::new());
            if ctx.memory().reported.insert(key) {
                ctx.metrics.stand_downs.inc();
                info!(namespace, run = %rp.name, "the engine's own affinity assistant serves this run: standing down");
                let note = format!(
                    "Tekton's own affinity assistant serves run {}: affinity-assistant stands down (its placeholder goes \
                     once no pod pinned to it needs it; new pods are left to Tekton). Set coschedule: disabled in \
                     Tekton's feature-flags to use affinity-assistant",
                    rp.name
                );
                event(
                    ctx,
                    &run_ref(namespace, &rp.api_version, &rp.kind, &rp.name, &rp.uid),
                    EventType::Normal,
                    "StoodDown",
                    "Plan",
                    note,
                )
                .await;
            }
        }
    }

    // 6. Placeholders on nodes that are going away.
    let pods: Vec<Arc<Pod>> = ctx.caches.placeholder_pods.in_namespace(namespace);
    for p in plan.placeholders.iter().filter(|p| p.create.is_none()) {
        let Some(pod) =
            pods.iter().find(|pod| pod.labels().get(names::LABEL_PLACEHOLDER).is_some_and(|id| *id == p.name))
        else {
            continue;
        };
        check_placeholder_pod(ctx, namespace, p, pod).await?;
    }

    // 7. Pinned pods Pending too long; managed task pods that were not pinned.
    surface_task_pods(ctx, namespace, plan, &pods).await;

    // Gauges: this namespace's contribution.
    let mut by_mode: std::collections::HashMap<String, i64> = Default::default();
    for p in &plan.placeholders {
        *by_mode.entry(p.mode.to_string()).or_default() += 1;
    }
    update_gauges(ctx, namespace, Some(by_mode), None);
    Ok(())
}

fn update_gauges(
    ctx: &Context,
    namespace: &str,
    modes: Option<std::collections::HashMap<String, i64>>,
    pending: Option<i64>,
) {
    let mut memory = ctx.memory();
    let entry = memory.gauges.entry(namespace.to_string()).or_default();
    if let Some(m) = modes {
        entry.0 = m;
    }
    if let Some(p) = pending {
        entry.1 = p;
    }
    // A namespace with nothing to count keeps no entry: namespaces come and go.
    if entry.0.values().all(|n| *n == 0) && entry.1 == 0 {
        memory.gauges.remove(namespace);
    }
    publish_gauges(ctx, &memory);
}

/// Sets the gauges from every namespace's contribution.
pub(super) fn publish_gauges(ctx: &Context, memory: &super::Memory) {
    let mut totals: std::collections::HashMap<String, i64> = Default::default();
    let mut pending_total = 0;
    for (modes, pending) in memory.gauges.values() {
        for (m, n) in modes {
            *totals.entry(m.clone()).or_default() += n;
        }
        pending_total += pending;
    }
    for mode in crate::config::Mode::ALL {
        let n = totals.get(mode.as_str()).copied().unwrap_or(0);
        ctx.metrics.placeholders.get_or_create(&super::metrics::ModeLabels { mode: mode.to_string() }).set(n);
    }
    ctx.metrics.pinned_pending.set(pending_total);
}

/// Why a node is going away, and since when (None: it is not).
fn draining(node: &Node, first_seen: Option<Instant>) -> Option<(String, Duration)> {
    let spec = node.spec.as_ref()?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let tainted = spec.taints.iter().flatten().find(|t| DRAIN_TAINTS.contains(&t.key.as_str()));
    if let Some(t) = tainted {
        let age = t
            .time_added
            .as_ref()
            .map(|at| Duration::from_secs(now.as_second().saturating_sub(at.0.as_second()).max(0) as u64))
            .or(first_seen.map(|s| s.elapsed()))
            .unwrap_or_default();
        return Some((format!("taint {}", t.key), age));
    }
    if spec.unschedulable == Some(true) {
        return Some(("cordoned".into(), first_seen.map(|s| s.elapsed()).unwrap_or_default()));
    }
    None
}

/// How long a node has been NotReady (None: it is Ready or unknown).
fn not_ready_for(node: &Node) -> Option<Duration> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?.0.as_second();
    Some(Duration::from_secs(now.as_second().saturating_sub(since).max(0) as u64))
}

/// Whether any claim's volume can only ever be mounted on its current node.
async fn node_pinned_claim(ctx: &Context, namespace: &str, claims: &BTreeSet<Name>) -> Result<Option<Name>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for claim in claims {
        let volume = match ctx.caches.claims.get(namespace, claim) {
            Some(c) => c.spec.as_ref().and_then(|s| s.volume_name.clone()),
            None => pvcs
                .get_opt(claim)
                .await
                .map_err(|source| Error::Read { what: format!("PVC {namespace}/{claim}"), source })?
                .and_then(|c| c.spec.and_then(|s| s.volume_name)),
        };
        let Some(volume) = volume.filter(|v| !v.is_empty()) else { continue };
        let Some(pv) =
            pvs.get_opt(&volume).await.map_err(|source| Error::Read { what: format!("PV {volume}"), source })?
        else {
            continue;
        };
        let view = serde_json::to_value(&pv).ok().and_then(|v| VolumeView::from_value(&v).ok());
        if view.is_some_and(|v| v.pinned_to_one_node()) {
            return Ok(Some(claim.clone()));
        }
    }
    Ok(None)
}

async fn check_placeholder_pod(ctx: &Context, namespace: &str, p: &PlannedPlaceholder, pod: &Pod) -> Result<(), Error> {
    let pod_name = pod.name_any();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    // Not scheduled yet: step 5 says so once it has lasted past the grace (a placeholder
    // briefly unschedulable while its volume is created is normal).
    let Some(node_name) = node_name else { return Ok(()) };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let Some(node) = ctx.caches.nodes.get("", &node_name) else { return Ok(()) };
    let grace = ctx.options.grace_period;
    let first_seen = {
        let mut memory = ctx.memory();
        let is_draining = draining(&node, None).is_some();
        if is_draining {
            Some(*memory.draining_since.entry(node_name.clone()).or_insert_with(Instant::now))
        } else {
            memory.draining_since.remove(&node_name);
            None
        }
    };
    let not_ready = not_ready_for(&node).filter(|d| *d >= ctx.options.not_ready_after);
    let drain = draining(&node, first_seen).filter(|(_, age)| *age >= grace);
    let (why, force) = match (not_ready, drain) {
        (Some(d), _) => (format!("node {node_name} NotReady for {}s", d.as_secs()), true),
        (None, Some((why, _))) => (format!("node {node_name} {why}"), false),
        (None, None) => return Ok(()),
    };
    if ctx.memory().moved_at.get(p.name.as_str()).is_some_and(|at| at.elapsed() < grace) {
        return Ok(());
    }
    // Pinned pods still running there hold the volume on that node: a placeholder moved away
    // could not attach it, and every new pinned pod would follow it into the wait. Move once
    // they are done (a NotReady node's pods are not running: no wait then).
    if !force {
        let busy = unfinished_pinned_on(ctx, namespace, &p.name, &node_name);
        if !busy.is_empty() {
            let note = format!(
                "placeholder {} stays on node {node_name} ({why}) until the {} pinned pod(s) running there finish \
                 ({}): they hold its volume on that node",
                p.name,
                busy.len(),
                busy.join(", ")
            );
            debug!(namespace, placeholder = %p.name, node = %node_name, pods = busy.len(), "move waits for pinned pods");
            event_on_owners(ctx, namespace, p, EventType::Normal, "PlaceholderMoveWaiting", "Move", note).await;
            return Ok(());
        }
    }
    let held: BTreeSet<Name> = p.claims.iter().chain(&p.riders).cloned().collect();
    if let Some(claim) = node_pinned_claim(ctx, namespace, &held).await? {
        let note = format!(
            "placeholder {} stays on node {node_name} ({why}): the volume of claim {claim} can only be used on that node",
            p.name
        );
        event_on_owners(ctx, namespace, p, EventType::Warning, "PlaceholderNotMoved", "Move", note).await;
        return Ok(());
    }
    if !ctx.is_leader() {
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let dp = DeleteParams {
        grace_period_seconds: force.then_some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match pods.delete(&pod_name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(source) => return Err(Error::Move { name: p.name.to_string(), source }),
    }
    ctx.memory().moved_at.insert(p.name.to_string(), Instant::now());
    ControllerMetrics::count(&ctx.metrics.moves, if force { "not-ready" } else { "drain" });
    info!(namespace, placeholder = %p.name, node = %node_name, reason = %why, force, "placeholder moved");
    let note = format!("moved placeholder {} off {why}", p.name);
    event_on_owners(ctx, namespace, p, EventType::Normal, "PlaceholderMoved", "Move", note).await;
    Ok(())
}

/// Unfinished pods pinned to `placeholder` and bound to `node`, by name.
fn unfinished_pinned_on(ctx: &Context, namespace: &str, placeholder: &str, node: &str) -> Vec<String> {
    let mut out: Vec<String> = ctx
        .caches
        .task_pods
        .in_namespace(namespace)
        .iter()
        .filter(|t| t.annotations().get(names::ANNOTATION_PINNED_TO).is_some_and(|p| p == placeholder))
        .filter(|t| t.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|t| !matches!(t.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .map(|t| t.name_any())
        .collect();
    out.sort();
    out
}

async fn surface_task_pods(ctx: &Context, namespace: &str, plan: &Plan, placeholder_pods: &[Arc<Pod>]) {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let mut pending = 0;
    for pod in ctx.caches.task_pods.in_namespace(namespace) {
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if matches!(phase.as_str(), "Succeeded" | "Failed") || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = pod.labels();
        let meta = crate::pod::PodMeta {
            labels: crate::pod::borrowed_map(labels),
            annotations: crate::pod::borrowed_map(pod.annotations()),
            ..Default::default()
        };
        // The engine's own placeholder pods and the pods its assistant pinned are not ours.
        if crate::engine::engines().iter().any(|e| e.pod_skip(&meta).is_some()) {
            continue;
        }
        let Some(run_ref_) = crate::engine::engines().iter().find_map(|e| e.pod_run(&meta)) else {
            continue;
        };
        let Some(rp) = plan.run(&run_ref_.name, run_ref_.uid.as_deref()) else { continue };
        let target = run_ref(namespace, &rp.api_version, &rp.kind, &rp.name, &rp.uid);
        let pinned_to = pod.annotations().get(names::ANNOTATION_PINNED_TO).cloned();
        let age = pod.metadata.creation_timestamp.as_ref().map(|t| now - t.0.as_second()).unwrap_or(0);
        match pinned_to {
            Some(placeholder) => {
                let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                if phase == "Pending" && !scheduled && age >= ctx.options.pending_after.as_secs() as i64 {
                    pending += 1;
                    let where_ = match placeholder_pods
                        .iter()
                        .find(|p| p.labels().get(names::LABEL_PLACEHOLDER) == Some(&placeholder))
                    {
                        None => "does not exist yet".to_string(),
                        Some(pp) => match pp.spec.as_ref().and_then(|s| s.node_name.clone()) {
                            Some(node) => format!("runs on node {node}"),
                            None => {
                                let msg = pp
                                    .status
                                    .as_ref()
                                    .and_then(|s| s.conditions.as_ref())
                                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                                    .and_then(|c| c.message.clone())
                                    .unwrap_or_else(|| "not scheduled yet".into());
                                format!("is Pending: {msg}")
                            }
                        },
                    };
                    let note = format!(
                        "pod {} is pinned to placeholder {placeholder} and has been Pending for {age}s; the placeholder {where_}",
                        pod.name_any()
                    );
                    warn!(namespace, run = %rp.name, pod = %pod.name_any(), placeholder = %placeholder, "pinned pod pending");
                    event(ctx, &target, EventType::Warning, "PinnedPodPending", "Pin", note).await;
                }
            }
            None if rp.status == RunStatus::Managed => {
                let claims: Vec<String> = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .map(|v| {
                        v.iter()
                            .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let managed: Vec<&String> = claims.iter().filter(|c| rp.claims.iter().any(|m| m.name == **c)).collect();
                if managed.is_empty() && !rp.mode.per_run() {
                    continue;
                }
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let first = ctx.memory().reported.insert((uid, "PodNotPinned".into(), String::new()));
                if first {
                    ctx.metrics.unpinned_managed.inc();
                    let claims = managed.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
                    let note = format!(
                        "task pod {} mounts managed claims [{claims}] but was not pinned (created before the run was \
                         managed, or the webhook left it alone: see the AdmissionReview warnings and \
                         affinity_assistant_admissions metrics); it may wait for a volume attached elsewhere",
                        pod.name_any()
                    );
                    warn!(namespace, run = %rp.name, pod = %pod.name_any(), "managed task pod not pinned");
                    event(ctx, &target, EventType::Warning, "TaskPodNotPinned", "Pin", note).await;
                }
            }
            None => {}
        }
    }
    update_gauges(ctx, namespace, None, Some(pending));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ago(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second() - secs).unwrap())
    }

    #[test]
    fn drain_taints_and_cordon() {
        let mut node = Node { spec: Some(NodeSpec::default()), ..Default::default() };
        assert!(draining(&node, None).is_none());
        node.spec.as_mut().unwrap().unschedulable = Some(true);
        let (why, _) = draining(&node, None).unwrap();
        assert_eq!(why, "cordoned");
        node.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "karpenter.sh/disrupted".into(),
            effect: "NoSchedule".into(),
            time_added: Some(ago(90)),
            value: None,
        }]);
        let (why, age) = draining(&node, None).unwrap();
        assert!(why.contains("karpenter.sh/disrupted"));
        assert!(age >= Duration::from_secs(89));
        node.spec.as_mut().unwrap().taints =
            Some(vec![Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Default::default() }]);
        node.spec.as_mut().unwrap().unschedulable = None;
        assert!(draining(&node, None).is_none(), "other taints are not a drain");
    }

    #[test]
    fn not_ready_duration() {
        let cond = |status: &str, secs| NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            last_transition_time: Some(ago(secs)),
            ..Default::default()
        };
        let node = |c| Node {
            status: Some(NodeStatus { conditions: Some(vec![c]), ..Default::default() }),
            ..Default::default()
        };
        assert!(not_ready_for(&node(cond("True", 1000))).is_none());
        assert!(not_ready_for(&node(cond("Unknown", 400))).unwrap() >= Duration::from_secs(399));
        assert!(not_ready_for(&node(cond("False", 10))).unwrap() < Duration::from_secs(60));
    }
}
