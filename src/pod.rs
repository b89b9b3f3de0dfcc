//! A trimmed view of a Pod: what the pod decision reads, nothing else.
//!
//! Deserialising only these fields keeps the webhook's hot path small; unknown fields are
//! ignored, a field of the wrong type is an error that names it.

use crate::engine::nullable;
use k8s_openapi::api::core::v1::{Affinity, NodeSelector, PodAffinityTerm, Toleration};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub generate_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
}

impl PodMeta {
    /// The name, or `generateName` followed by `*` while the API server has not named it yet
    /// (admission of a CREATE sees pods that way).
    pub fn display_name(&self) -> String {
        if self.name.is_empty() { format!("{}*", self.generate_name) } else { self.name.clone() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPod {
    #[serde(default)]
    pub metadata: PodMeta,
    #[serde(default)]
    pub spec: PodSpecView,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default, deserialize_with = "nullable")]
    pub volumes: Vec<VolumeView>,
    #[serde(default, deserialize_with = "nullable")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub affinity: Option<Affinity>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub persistent_volume_claim: Option<ClaimVolume>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimVolume {
    #[serde(default, deserialize_with = "nullable")]
    pub claim_name: String,
}

impl TaskPod {
    /// Reads a pod from JSON bytes (the webhook's way: [`crate::engine::from_json_slice`]).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<TaskPod> {
        crate::engine::from_json_slice(bytes)
    }

    /// Reads a pod from JSON, naming the offending field on error.
    pub fn from_value(value: &serde_json::Value) -> Result<TaskPod, crate::engine::ParseError> {
        crate::engine::from_value("Pod", value)
    }

    /// Claim names the pod mounts, each once, in volume order.
    pub fn claims(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for v in &self.spec.volumes {
            if let Some(c) = v.persistent_volume_claim.as_ref().filter(|c| !c.claim_name.is_empty())
                && !out.contains(&c.claim_name.as_str())
            {
                out.push(&c.claim_name);
            }
        }
        out
    }

    pub fn required_pod_affinity(&self) -> &[PodAffinityTerm] {
        self.spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or(&[])
    }

    pub fn required_node_affinity(&self) -> Option<&NodeSelector> {
        self.spec
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()
    }
}
