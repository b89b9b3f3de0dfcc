//! Trimmed views of the Kubernetes objects the shells feed the core with: PVCs, PVs, Nodes,
//! placeholder StatefulSets and pinned pods. Unknown fields are ignored; a field of the wrong
//! type is an error naming it. Each view turns into the core's engine-neutral input type.

use crate::config::Mode;
use crate::core::placeholder::parse_run_modes;
use crate::engine::{ParseError, from_value, nullable};
use crate::model::{ClaimInfo, ExistingPlaceholder, Name, NodeInfo, OwnerRun, PinnedPod};
use crate::names;
use k8s_openapi::api::core::v1::{NodeSelector, Taint};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub owner_references: Vec<OwnerRefView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRefView {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: String,
}

// --- PersistentVolumeClaim ----------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: ClaimSpecView,
    #[serde(default)]
    pub status: ClaimStatusView,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpecView {
    #[serde(default, deserialize_with = "nullable")]
    pub access_modes: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub volume_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimStatusView {
    #[serde(default, deserialize_with = "nullable")]
    pub access_modes: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub phase: String,
}

impl ClaimView {
    pub fn from_value(v: &serde_json::Value) -> Result<ClaimView, ParseError> {
        from_value("PersistentVolumeClaim", v)
    }

    /// `node_pinned` comes from the bound PV, when the caller has it.
    pub fn info(&self, volume: Option<&VolumeView>) -> ClaimInfo {
        ClaimInfo {
            name: self.metadata.name.clone(),
            spec_access_modes: self.spec.access_modes.clone(),
            status_access_modes: self.status.access_modes.clone(),
            bound: self.status.phase == "Bound",
            node_pinned: volume.is_some_and(VolumeView::pinned_to_one_node),
            volume_node_affinity: volume.and_then(|v| v.spec.node_affinity.as_ref()?.required.clone()),
            deleted: false,
        }
    }
}

// --- PersistentVolume ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: VolumeSpecView,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpecView {
    #[serde(default)]
    pub node_affinity: Option<VolumeNodeAffinityView>,
    #[serde(default)]
    pub local: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub host_path: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeNodeAffinityView {
    #[serde(default)]
    pub required: Option<NodeSelector>,
}

impl VolumeView {
    pub fn from_value(v: &serde_json::Value) -> Result<VolumeView, ParseError> {
        from_value("PersistentVolume", v)
    }

    /// A volume that only one node can ever mount (local PVs, or node affinity on the hostname):
    /// moving its placeholder elsewhere would strand every task pod.
    pub fn pinned_to_one_node(&self) -> bool {
        let on_hostname = self.spec.node_affinity.as_ref().and_then(|a| a.required.as_ref()).is_some_and(|sel| {
            sel.node_selector_terms.iter().all(|t| {
                t.match_expressions.iter().flatten().any(|e| e.key == names::TOPOLOGY_HOSTNAME)
                    || t.match_fields.iter().flatten().any(|f| f.key == "metadata.name")
            }) && !sel.node_selector_terms.is_empty()
        });
        on_hostname || self.spec.local.is_some() || self.spec.host_path.is_some()
    }
}

// --- Node -----------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: NodeSpecView,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpecView {
    #[serde(default, deserialize_with = "nullable")]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub unschedulable: Option<bool>,
}

impl NodeView {
    pub fn from_value(v: &serde_json::Value) -> Result<NodeView, ParseError> {
        from_value("Node", v)
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.metadata.name.clone(),
            labels: self.metadata.labels.clone(),
            taints: self.spec.taints.clone(),
        }
    }
}

// --- Placeholder StatefulSet and its pod ----------------------------------------------------------

/// A StatefulSet read from JSON as the core's existing placeholder: `Ok(None)` when it is not
/// one of ours (never act on anything else). The caches hold typed objects and call
/// [`placeholder_from_statefulset`] directly; this is the same reading.
pub fn placeholder_from_value(
    v: &serde_json::Value,
    node: impl FnOnce(&str) -> Option<std::sync::Arc<NodeInfo>>,
) -> Result<Option<ExistingPlaceholder>, ParseError> {
    let sts: k8s_openapi::api::apps::v1::StatefulSet = from_value("StatefulSet", v)?;
    Ok(placeholder_from_statefulset(&sts, node))
}

/// A pinned pod as the controller sees it: `None` for pods that are not pinned by us or that
/// have finished (they no longer need their placeholder).
pub fn pinned_pod(v: &serde_json::Value) -> Result<Option<PinnedPod>, ParseError> {
    let pod: k8s_openapi::api::core::v1::Pod = from_value("Pod", v)?;
    Ok(pinned_from_pod(&pod))
}

/// [`pinned_pod`] for a typed Pod (the caches hold those): no JSON round trip.
pub fn pinned_from_pod(pod: &k8s_openapi::api::core::v1::Pod) -> Option<PinnedPod> {
    pinned_of(pod, &crate::engine::identify(&pod_meta(pod)))
}

/// [`pinned_from_pod`] for a pod the engines have already identified.
pub fn pinned_of(pod: &k8s_openapi::api::core::v1::Pod, identity: &crate::pod::Identity) -> Option<PinnedPod> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let m = &pod.metadata;
    let labels = m.labels.as_ref().unwrap_or(&EMPTY);
    let annotations = m.annotations.as_ref().unwrap_or(&EMPTY);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    let placeholder = annotations.get(names::ANNOTATION_PINNED_TO)?;
    if labels.get(names::LABEL_PINNED).map(String::as_str) != Some("true") || matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    let claims: BTreeSet<String> = annotations
        .get(names::ANNOTATION_CLAIMS)
        .map(|c| c.split(',').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let run_uid = identity.run.as_ref().and_then(|r| r.uid.clone());
    let name = m.name.clone().unwrap_or_else(|| format!("{}*", m.generate_name.as_deref().unwrap_or("")));
    let mounted = claim_volumes(pod).map(|(claim, _)| claim.to_string()).collect();
    Some(PinnedPod { name, run_uid, placeholder: placeholder.clone(), claims, mounted })
}

/// A typed pod's PVC volumes: (claim, volume name).
pub fn claim_volumes(pod: &k8s_openapi::api::core::v1::Pod) -> impl Iterator<Item = (&str, &str)> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| {
        let claim = v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()).filter(|c| !c.is_empty())?;
        Some((claim, v.name.as_str()))
    })
}

/// What the engines read of a typed pod (labels, annotations, owners), borrowed.
pub fn pod_meta(pod: &k8s_openapi::api::core::v1::Pod) -> crate::pod::PodMeta<'_> {
    use std::borrow::Cow;
    let m = &pod.metadata;
    crate::pod::PodMeta {
        labels: m.labels.as_ref().map(crate::pod::borrowed_map).unwrap_or_default(),
        annotations: m.annotations.as_ref().map(crate::pod::borrowed_map).unwrap_or_default(),
        owner_references: m
            .owner_references
            .iter()
            .flatten()
            .map(|o| crate::pod::PodOwner {
                api_version: Cow::Borrowed(&o.api_version),
                kind: Cow::Borrowed(&o.kind),
                name: Cow::Borrowed(&o.name),
                uid: Cow::Borrowed(&o.uid),
                controller: o.controller,
            })
            .collect(),
        ..Default::default()
    }
}

/// The PVCs a cached task pod mounts, and its run: only for a pinned, unfinished pod (`None`
/// for the rest, and for a pod that mounts no claim). A pod the webhook left alone must not
/// call for a placeholder that would take its volume elsewhere.
pub fn mounts_from_pod(pod: &k8s_openapi::api::core::v1::Pod) -> Option<crate::model::PodMounts> {
    let identity = crate::engine::identify(&pod_meta(pod));
    pinned_of(pod, &identity)?;
    identity.mounts(claim_volumes(pod))
}

/// A typed StatefulSet as the core's existing placeholder (the caches hold those): `None` when
/// it is not one of ours.
pub fn placeholder_from_statefulset(
    sts: &k8s_openapi::api::apps::v1::StatefulSet,
    node: impl FnOnce(&str) -> Option<std::sync::Arc<NodeInfo>>,
) -> Option<ExistingPlaceholder> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let m = &sts.metadata;
    let labels = m.labels.as_ref().unwrap_or(&EMPTY);
    if !is_placeholder(labels) {
        return None;
    }
    let name: Name = m.name.as_deref().unwrap_or_default().into();
    let pod = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let claims = pod
        .and_then(|p| p.volumes.as_ref())
        .map(|v| {
            v.iter().filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.as_str().into())).collect()
        })
        .unwrap_or_default();
    let ann = m.annotations.as_ref().unwrap_or(&EMPTY);
    Some(ExistingPlaceholder {
        claims,
        owners: m
            .owner_references
            .iter()
            .flatten()
            .map(|o| OwnerRun { name: o.name.as_str().into(), uid: o.uid.as_str().into() })
            .collect(),
        mode: ann.get(names::ANNOTATION_MODE).and_then(|m| m.parse::<Mode>().ok()),
        run_modes: ann.get(names::ANNOTATION_RUN_MODES).map(|v| parse_run_modes(v)).unwrap_or_default(),
        node_selector: pod.and_then(|p| p.node_selector.clone()).unwrap_or_default(),
        node: node(&name),
        name,
        pod_exists: false,
        refused: None,
    })
}

/// The labels every placeholder carries (never act on anything else).
fn is_placeholder(l: &BTreeMap<String, String>) -> bool {
    l.get(names::LABEL_APP_MANAGED_BY).map(String::as_str) == Some(names::APP_NAME)
        && l.get(names::LABEL_APP_COMPONENT).map(String::as_str) == Some(names::COMPONENT_PLACEHOLDER)
        && l.contains_key(names::LABEL_PLACEHOLDER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::placeholder::{Owner, PlaceholderParts, statefulset};
    use crate::model::Scheduling;
    use serde_json::json;

    #[test]
    fn a_generated_placeholder_reads_back_as_the_same_existing_placeholder() {
        let claims: BTreeSet<Name> = ["a".into(), "b".into()].into();
        let owners = vec![Owner {
            api_version: "tekton.dev/v1".into(),
            kind: "PipelineRun".into(),
            name: "r".into(),
            uid: "u".into(),
        }];
        let modes: BTreeMap<Name, Mode> = [("u".into(), Mode::PipelineRuns)].into();
        let config = Config::default();
        let sts = statefulset(&PlaceholderParts {
            namespace: "ns",
            name: "aa-a-0123456789",
            claims: &claims,
            mode: Mode::PipelineRuns,
            owners: &owners,
            run_modes: &modes,
            scheduling: &Scheduling::default(),
            anti_affinity: crate::config::AntiAffinity::Preferred,
            follows: None,
            config: &config,
        });
        let e = placeholder_from_value(&serde_json::to_value(&sts).unwrap(), |_| None).unwrap().expect("ours");
        assert_eq!(e.name, "aa-a-0123456789");
        assert_eq!(e.claims, claims);
        assert_eq!(e.owners, vec![OwnerRun { name: "r".into(), uid: "u".into() }]);
        assert_eq!(e.mode, Some(Mode::PipelineRuns));
        assert_eq!(e.run_modes, modes);
    }

    #[test]
    fn foreign_statefulsets_are_not_ours() {
        let tekton = json!({"metadata": {"name": "affinity-assistant-1", "labels": {
            "app.kubernetes.io/component": "affinity-assistant", "app.kubernetes.io/managed-by": "tekton-pipelines"}}});
        assert!(placeholder_from_value(&tekton, |_| None).unwrap().is_none());
    }

    #[test]
    fn claims_and_volumes() {
        let pvc = ClaimView::from_value(&json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"]},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}}))
        .unwrap();
        let local = VolumeView::from_value(&json!({"spec": {"local": {"path": "/mnt"}, "nodeAffinity": {"required": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}))
        .unwrap();
        let zonal = VolumeView::from_value(&json!({"spec": {"nodeAffinity": {"required": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}]}}}}))
        .unwrap();
        assert!(pvc.info(Some(&local)).node_pinned);
        assert!(!pvc.info(Some(&zonal)).node_pinned);
        let info = pvc.info(None);
        assert!(info.bound && !info.node_pinned);
        assert!(
            ClaimView::from_value(&json!({"spec": {"accessModes": "ReadWriteOnce"}}))
                .unwrap_err()
                .to_string()
                .contains("spec.accessModes")
        );
    }

    #[test]
    fn pinned_pods_are_read_from_their_annotations_until_they_finish() {
        let mut pod = json!({"metadata": {"name": "p", "labels": {"affinity-assistant.dev/pinned": "true",
            "tekton.dev/pipelineRun": "r", "tekton.dev/pipelineRunUID": "u"},
            "annotations": {"affinity-assistant.dev/pinned-to": "aa-x", "affinity-assistant.dev/claims": "a,b"}},
            "status": {"phase": "Running"}});
        let p = pinned_pod(&pod).unwrap().unwrap();
        assert_eq!(p.placeholder, "aa-x");
        assert_eq!(p.claims, ["a".to_string(), "b".to_string()].into());
        assert_eq!(p.run_uid.as_deref(), Some("u"));
        pod["status"]["phase"] = json!("Succeeded");
        assert!(pinned_pod(&pod).unwrap().is_none());
        assert!(pinned_pod(&json!({"metadata": {"name": "q"}})).unwrap().is_none());
    }

    #[test]
    fn nodes() {
        let n = NodeView::from_value(&json!({"metadata": {"name": "n1", "labels": {"a": "b"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]}}))
        .unwrap();
        assert_eq!(n.info().taints.len(), 1);
        assert_eq!(n.spec.unschedulable, Some(true));
    }
}
