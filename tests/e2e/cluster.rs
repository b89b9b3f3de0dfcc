//! What the tests observe: the add-on being there, nodes, placeholders, pins and Events.

use crate::env::{Check, Env, Settings, wait_for};
use crate::tekton::{Mode, scheduling_message};
use affinity_assistant::names;
use anyhow::{Context as _, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, PodAffinityTerm};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Selects every placeholder (StatefulSets and their pods).
pub fn placeholder_selector() -> String {
    format!(
        "{}={},{}={}",
        names::LABEL_APP_NAME,
        names::APP_NAME,
        names::LABEL_APP_COMPONENT,
        names::COMPONENT_PLACEHOLDER
    )
}

/// Fails early, and says what to do, when the add-on cannot be doing its job: no controller
/// holding the leader Lease (the webhook pins nothing then), no webhook configuration for
/// task pods, the add-on switched off, or (real Tekton) Tekton's own assistant on.
pub async fn preflight(client: &Client, settings: &Settings, tekton: Mode) -> anyhow::Result<()> {
    if tekton == Mode::Real {
        crate::tekton::check_coschedule(client).await?;
    }
    let ns = &settings.addon_namespace;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let lease_name = &settings.addon_lease;
    // A freshly started add-on takes a few seconds to win the election.
    wait_for(
        format!(
            "the add-on's leader Lease {ns}/{lease_name} to be held (is the add-on installed and running? \
             hack/e2e.sh with E2E_LOCAL_ADDON=1 runs one on this machine)"
        ),
        settings.timeout.min(Duration::from_secs(30)),
        || async {
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            Ok(match leases.get_opt(lease_name).await? {
                Some(l) if affinity_assistant::cluster::lease_fresh(&l, now) => Check::Done(()),
                Some(l) => Check::NotYet(format!("stale: {:?}", l.spec)),
                None => Check::NotYet("no such Lease".into()),
            })
        },
    )
    .await?;
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing MutatingWebhookConfigurations")?;
    if !configs.iter().any(targets_task_pods) {
        bail!(
            "no MutatingWebhookConfiguration sends Tekton task pods to a webhook (none has a pod CREATE rule whose \
             objectSelector names {}): the add-on's webhook is not registered",
            affinity_assistant::engine::tekton::LABEL_PIPELINE_RUN
        );
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let flags = cms.get_opt("feature-flags").await.with_context(|| format!("reading {ns}/feature-flags"))?;
    let enabled = flags.and_then(|c| c.data).and_then(|d| d.get(affinity_assistant::config::KEY_ENABLED).cloned());
    if enabled.as_deref().map(str::trim) == Some("false") {
        bail!("the add-on is switched off ({ns}/feature-flags enabled=false): the suite needs it on");
    }
    Ok(())
}

/// Whether a webhook configuration has a webhook for pod CREATE that selects Tekton task pods.
pub fn targets_task_pods(config: &MutatingWebhookConfiguration) -> bool {
    targets_pods_labelled(config, affinity_assistant::engine::tekton::LABEL_PIPELINE_RUN)
}

/// Whether a webhook configuration has a webhook for pod CREATE whose objectSelector names
/// the label `key` (an engine's task pod label).
pub fn targets_pods_labelled(config: &MutatingWebhookConfiguration, key: &str) -> bool {
    config.webhooks.iter().flatten().any(|w| {
        let pods = w.rules.iter().flatten().any(|r| {
            r.resources.iter().flatten().any(|res| res == "pods" || res == "*")
                && r.operations.iter().flatten().any(|op| op == "CREATE" || op == "*")
        });
        pods && w.object_selector.as_ref().is_some_and(|s| selector_mentions(s, key))
    })
}

fn selector_mentions(s: &LabelSelector, key: &str) -> bool {
    s.match_labels.as_ref().is_some_and(|m| m.contains_key(key))
        || s.match_expressions.iter().flatten().any(|e| e.key == key)
}

/// Whether the scheduler may put one of the suite's pods (no tolerations) on the node.
pub fn is_schedulable(node: &Node) -> bool {
    let spec = node.spec.as_ref();
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let repels = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute"));
    !cordoned && !repels
}

pub async fn schedulable_nodes(client: &Client) -> anyhow::Result<Vec<String>> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.context("listing nodes")?;
    Ok(nodes.iter().filter(|n| is_schedulable(n)).map(|n| n.name_any()).collect())
}

pub fn is_placeholder(sts: &StatefulSet) -> bool {
    let labels = sts.labels();
    labels.get(names::LABEL_APP_NAME).map(String::as_str) == Some(names::APP_NAME)
        && labels.get(names::LABEL_APP_COMPONENT).map(String::as_str) == Some(names::COMPONENT_PLACEHOLDER)
}

/// The claims a placeholder mounts.
pub fn placeholder_claims(sts: &StatefulSet) -> BTreeSet<String> {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .map(|v| v.iter().filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone())).collect())
        .unwrap_or_default()
}

pub async fn placeholders(client: &Client, ns: &str) -> anyhow::Result<Vec<StatefulSet>> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&placeholder_selector()))
        .await
        .with_context(|| format!("listing placeholders in {ns}"))?;
    Ok(list.items.into_iter().filter(is_placeholder).collect())
}

/// `name [claims]`, for messages.
pub fn describe(placeholders: &[StatefulSet]) -> String {
    if placeholders.is_empty() {
        return "no placeholder".into();
    }
    placeholders.iter().map(|p| format!("{} {:?}", p.name_any(), placeholder_claims(p))).collect::<Vec<_>>().join(", ")
}

/// Waits for the placeholder that holds `claim`.
pub async fn placeholder_holding(env: &Env, ns: &str, claim: &str) -> anyhow::Result<StatefulSet> {
    wait_for(format!("a placeholder in {ns} holding claim {claim}"), env.settings.timeout, || async {
        let all = placeholders(&env.client, ns).await?;
        Ok(match all.iter().find(|p| placeholder_claims(p).contains(claim)) {
            Some(p) => Check::Done(p.clone()),
            None => Check::NotYet(format!("{}; {}", describe(&all), warnings(&env.client, ns).await)),
        })
    })
    .await
}

/// Waits for the live (not terminating) pod of placeholder `ns/name` to be bound to a node.
pub async fn placeholder_pod(env: &Env, ns: &str, name: &str, timeout: Duration) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{}={name}", names::LABEL_PLACEHOLDER));
    wait_for(format!("the pod of placeholder {ns}/{name} to be bound to a node"), timeout, || async {
        let list = pods.list(&lp).await?;
        let live = list.iter().find(|p| p.metadata.deletion_timestamp.is_none());
        Ok(match live {
            Some(p) if node_of(p).is_some() => Check::Done(p.clone()),
            Some(p) => Check::NotYet(format!("pod {} not bound ({})", p.name_any(), scheduling_message(p))),
            None => Check::NotYet(format!(
                "no live pod ({} terminating); {}",
                list.items.len(),
                warnings(&env.client, ns).await
            )),
        })
    })
    .await
}

/// One version of a placeholder StatefulSet, as a watch delivered it.
#[derive(Debug, Clone)]
pub struct PlaceholderVersion {
    pub name: String,
    pub uid: String,
    pub claims: BTreeSet<String>,
    /// Deleted, or on its way out (a deletionTimestamp).
    pub deleting: bool,
}

/// Every version of every placeholder of a namespace from the moment [`PlaceholderHistory::start`]
/// returns: what polling could miss (a placeholder deleted and made again between two looks).
/// The watch stops when this is dropped.
pub struct PlaceholderHistory {
    versions: std::sync::Arc<std::sync::Mutex<Vec<PlaceholderVersion>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PlaceholderHistory {
    /// Starts watching the placeholders of `ns`; returns once the watch is established.
    pub async fn start(env: &Env, ns: &str) -> anyhow::Result<PlaceholderHistory> {
        use futures::StreamExt;
        use kube::runtime::watcher::{self, Event as Change};
        let api: Api<StatefulSet> = Api::namespaced(env.client.clone(), ns);
        let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready, listed) = tokio::sync::oneshot::channel::<()>();
        let record = versions.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready);
            let stream = watcher::watcher(api, watcher::Config::default().labels(&placeholder_selector()));
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let (sts, deleted) = match event {
                    Ok(Change::Apply(s) | Change::InitApply(s)) => (s, false),
                    Ok(Change::Delete(s)) => (s, true),
                    Ok(Change::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                    // The watcher lists and watches again by itself.
                    Ok(Change::Init) | Err(_) => continue,
                };
                if !is_placeholder(&sts) {
                    continue;
                }
                let version = PlaceholderVersion {
                    name: sts.name_any(),
                    uid: sts.uid().unwrap_or_default(),
                    claims: placeholder_claims(&sts),
                    deleting: deleted || sts.metadata.deletion_timestamp.is_some(),
                };
                if let Ok(mut v) = record.lock() {
                    v.push(version);
                }
            }
        });
        let history = PlaceholderHistory { versions, task };
        match tokio::time::timeout(env.settings.timeout, listed).await {
            Ok(Ok(())) => Ok(history),
            _ => bail!("watching the placeholders of {ns}: no initial list within {}s", env.settings.timeout.as_secs()),
        }
    }

    /// Every version seen so far, in order.
    pub fn versions(&self) -> Vec<PlaceholderVersion> {
        self.versions.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for PlaceholderHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The pod's required pod-affinity terms.
pub fn required_terms(pod: &Pod) -> Vec<PodAffinityTerm> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
        .unwrap_or_default()
}

/// I2 on one pinned pod: the pin label and annotations, and exactly ONE required term,
/// `kubernetes.io/hostname`, selecting exactly the placeholder by its id label, in the pod's
/// own namespace; the claims it records include every claim the pod mounts. The suite's
/// pods carry no affinity of their own, so the one term is the added one.
pub fn check_pinned(pod: &Pod, placeholder: &str, mounted: &BTreeSet<String>) -> Result<(), String> {
    let name = format!("pod {}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    if pod.labels().get(names::LABEL_PINNED).map(String::as_str) != Some("true") {
        return Err(format!("{name} lacks the label {}=true", names::LABEL_PINNED));
    }
    let pinned_to = pod.annotations().get(names::ANNOTATION_PINNED_TO);
    if pinned_to.map(String::as_str) != Some(placeholder) {
        return Err(format!("{name}: {} is {pinned_to:?}, expected {placeholder}", names::ANNOTATION_PINNED_TO));
    }
    let recorded: BTreeSet<String> = pod
        .annotations()
        .get(names::ANNOTATION_CLAIMS)
        .map(|c| c.split(',').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    if !mounted.is_subset(&recorded) {
        return Err(format!("{name}: {} records {recorded:?}, not all of {mounted:?}", names::ANNOTATION_CLAIMS));
    }
    let terms = required_terms(pod);
    let [term] = terms.as_slice() else {
        return Err(format!("{name} has {} required pod-affinity terms, expected exactly one: {terms:?}", terms.len()));
    };
    if term.topology_key != names::TOPOLOGY_HOSTNAME {
        return Err(format!("{name}: topologyKey {}, expected {}", term.topology_key, names::TOPOLOGY_HOSTNAME));
    }
    let expected: BTreeMap<String, String> = [(names::LABEL_PLACEHOLDER.to_string(), placeholder.to_string())].into();
    let selector = term.label_selector.as_ref();
    let exact = selector.is_some_and(|s| {
        s.match_labels.as_ref() == Some(&expected) && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    if !exact {
        return Err(format!("{name}: term selects {selector:?}, expected exactly {expected:?}"));
    }
    if term.namespace_selector.is_some() || term.namespaces.as_ref().is_some_and(|n| !n.is_empty()) {
        return Err(format!("{name}: the term reaches beyond the pod's namespace: {term:?}"));
    }
    Ok(())
}

/// A pod the add-on must have left alone: no pin label or annotation, no pod affinity.
pub fn check_untouched(pod: &Pod) -> Result<(), String> {
    let name = format!("pod {}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    if pod.labels().contains_key(names::LABEL_PINNED) {
        return Err(format!("{name} carries the label {}", names::LABEL_PINNED));
    }
    if let Some(p) = pod.annotations().get(names::ANNOTATION_PINNED_TO) {
        return Err(format!("{name} is pinned to {p}"));
    }
    let terms = required_terms(pod);
    if !terms.is_empty() {
        return Err(format!("{name} got required pod-affinity terms: {terms:?}"));
    }
    Ok(())
}

/// The namespace's Events through `events.k8s.io/v1`, the API the add-on's recorder writes;
/// an API server serves the `core/v1` ones (the StatefulSet controller's) through it too.
pub async fn events(client: &Client, ns: &str) -> anyhow::Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api.list(&ListParams::default()).await.with_context(|| format!("listing Events in {ns}"))?.items)
}

/// Whether an Event is about the named object.
pub fn regards(e: &Event, name: &str) -> bool {
    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
}

/// `Warning reason on kind/name: note` lines, for failure messages; never fails.
pub async fn warnings(client: &Client, ns: &str) -> String {
    match events(client, ns).await {
        Err(e) => format!("(could not list Events: {e:#})"),
        Ok(list) => {
            let lines: Vec<String> = list
                .iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .map(|e| {
                    format!(
                        "Warning {} on {}/{}: {}",
                        e.reason.as_deref().unwrap_or(""),
                        e.regarding.as_ref().and_then(|r| r.kind.as_deref()).unwrap_or(""),
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()).unwrap_or(""),
                        e.note.as_deref().unwrap_or("")
                    )
                })
                .collect();
            if lines.is_empty() { "no Warning Events".into() } else { format!("Events: {}", lines.join(" | ")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn pinned(terms: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {"name": "p", "namespace": "ns",
                "labels": {names::LABEL_PINNED: "true"},
                "annotations": {names::ANNOTATION_PINNED_TO: "aa-x-1", names::ANNOTATION_CLAIMS: "a,b"}},
            "spec": {"containers": [], "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}
        }))
    }

    fn term(name: &str) -> serde_json::Value {
        json!({"labelSelector": {"matchLabels": {names::LABEL_PLACEHOLDER: name}}, "topologyKey": names::TOPOLOGY_HOSTNAME})
    }

    fn claims(c: &[&str]) -> BTreeSet<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_correct_pin_passes() {
        assert_eq!(check_pinned(&pinned(json!([term("aa-x-1")])), "aa-x-1", &claims(&["a"])), Ok(()));
    }

    #[test]
    fn wrong_pins_are_named() {
        let two = check_pinned(&pinned(json!([term("aa-x-1"), term("aa-y-2")])), "aa-x-1", &claims(&["a"]));
        assert!(two.unwrap_err().contains("2 required pod-affinity terms"));
        let other = check_pinned(&pinned(json!([term("aa-y-2")])), "aa-x-1", &claims(&["a"]));
        assert!(other.unwrap_err().contains("term selects"));
        let missing = check_pinned(&pinned(json!([term("aa-x-1")])), "aa-x-1", &claims(&["c"]));
        assert!(missing.unwrap_err().contains("not all of"));
        let zone = json!([{"labelSelector": {"matchLabels": {names::LABEL_PLACEHOLDER: "aa-x-1"}},
            "topologyKey": "topology.kubernetes.io/zone"}]);
        assert!(check_pinned(&pinned(zone), "aa-x-1", &claims(&[])).unwrap_err().contains("topologyKey"));
        let wide = json!([{"labelSelector": {"matchLabels": {names::LABEL_PLACEHOLDER: "aa-x-1"}},
            "topologyKey": names::TOPOLOGY_HOSTNAME, "namespaceSelector": {}}]);
        assert!(check_pinned(&pinned(wide), "aa-x-1", &claims(&[])).unwrap_err().contains("beyond"));
        let bare = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert!(check_pinned(&bare, "aa-x-1", &claims(&[])).unwrap_err().contains("lacks the label"));
    }

    #[test]
    fn untouched_means_no_trace_of_the_add_on() {
        let bare = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(check_untouched(&bare), Ok(()));
        assert!(check_untouched(&pinned(json!([term("aa-x-1")]))).is_err());
    }

    #[test]
    fn schedulable_nodes_exclude_cordons_and_repelling_taints() {
        let node = |spec: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": spec})).unwrap()
        };
        assert!(is_schedulable(&node(json!({}))));
        assert!(!is_schedulable(&node(json!({"unschedulable": true}))));
        assert!(!is_schedulable(&node(
            json!({"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]})
        )));
        assert!(is_schedulable(&node(json!({"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}))));
    }

    #[test]
    fn placeholders_are_recognised_by_their_labels_and_claims_read_from_volumes() {
        let labels: BTreeMap<String, String> =
            names::placeholder_labels("aa-a-1").into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "aa-a-1", "labels": labels},
            "spec": {"selector": {}, "serviceName": "", "template": {"spec": {"containers": [], "volumes": [
                {"name": "claim-0", "persistentVolumeClaim": {"claimName": "a"}},
                {"name": "claim-1", "persistentVolumeClaim": {"claimName": "b"}}]}}}
        }))
        .unwrap();
        assert!(is_placeholder(&sts));
        assert_eq!(placeholder_claims(&sts), claims(&["a", "b"]));
        assert!(placeholder_selector().contains("app.kubernetes.io/component=placeholder"));
        let mut tekton_own = sts.clone();
        tekton_own
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(names::LABEL_APP_COMPONENT.into(), "affinity-assistant".into());
        assert!(!is_placeholder(&tekton_own));
    }

    #[test]
    fn webhook_configurations_are_found_by_their_object_selector() {
        let mwc = |selector: serde_json::Value| -> MutatingWebhookConfiguration {
            serde_json::from_value(json!({"metadata": {"name": "x"}, "webhooks": [{
                "name": "pods.affinity-assistant.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"url": "https://h:8443/mutate/pods"},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "objectSelector": selector}]}))
            .unwrap()
        };
        assert!(targets_task_pods(&mwc(
            json!({"matchExpressions": [{"key": "tekton.dev/pipelineRun", "operator": "Exists"}]})
        )));
        assert!(!targets_task_pods(&mwc(json!({"matchLabels": {"app": "x"}}))));
    }
}
