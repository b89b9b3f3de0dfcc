//! The placeholder StatefulSet: one replica of a pause container that mounts the claims, so
//! the volumes' zone and node constraints apply to it first and every pinned pod follows it.

use crate::config::{AntiAffinity, Config, Mode};
use crate::model::{Name, Scheduling};
use crate::names;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, NodeAffinity, PersistentVolumeClaimVolumeSource, PodAffinity, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecurityContext, Toleration, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use std::collections::{BTreeMap, BTreeSet};

/// The placeholder container's user: non-root whatever the image says (the pause image's
/// own user is 65535 too).
pub const PLACEHOLDER_UID: i64 = 65535;
pub const CONTAINER_NAME: &str = "placeholder";

/// A run that uses a placeholder, for its owner references.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub api_version: Name,
    pub kind: Name,
    pub name: Name,
    pub uid: Name,
}

impl Owner {
    /// By UID, not controller, never blocking the run's deletion: the run must stay
    /// deletable whatever happens to the placeholder.
    pub fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.to_string(),
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            uid: self.uid.to_string(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        }
    }
}

/// Everything a new placeholder is made from.
pub struct PlaceholderParts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub claims: &'a BTreeSet<Name>,
    pub mode: Mode,
    pub owners: &'a [Owner],
    /// The mode of each owner, by uid.
    pub run_modes: &'a BTreeMap<Name, Mode>,
    /// The scheduling of the run that creates it.
    pub scheduling: &'a Scheduling,
    pub anti_affinity: AntiAffinity,
    /// Another placeholder it must run next to (required pod affinity; no anti-affinity then):
    /// it is made again for pods pinned to it after that one took some of its claims.
    pub follows: Option<&'a str>,
    pub config: &'a Config,
}

/// The node selector a placeholder gets: the configured one, with the creating run's own
/// keys winning (its task pods carry those; a placeholder elsewhere would strand them).
pub fn merged_node_selector(config: &Config, run: &Scheduling) -> BTreeMap<String, String> {
    let mut out = config.placeholder_node_selector.clone();
    out.extend(run.node_selector.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn merged_tolerations(config: &Config, run: &Scheduling) -> Vec<Toleration> {
    let mut out = run.tolerations.clone();
    for t in &config.placeholder_tolerations {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

/// The term that makes placeholders repel each other, across namespaces.
fn anti_affinity_term() -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(
                [
                    (names::LABEL_APP_NAME.to_string(), names::APP_NAME.to_string()),
                    (names::LABEL_APP_COMPONENT.to_string(), names::COMPONENT_PLACEHOLDER.to_string()),
                ]
                .into(),
            ),
            match_expressions: None,
        }),
        namespace_selector: Some(LabelSelector::default()),
        topology_key: names::TOPOLOGY_HOSTNAME.to_string(),
        ..Default::default()
    }
}

fn affinity(parts: &PlaceholderParts<'_>) -> Option<Affinity> {
    let node_affinity = parts.scheduling.required_node_affinity().map(|req| NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(req.clone()),
        preferred_during_scheduling_ignored_during_execution: None,
    });
    if let Some(leader) = parts.follows {
        return Some(Affinity {
            node_affinity,
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![super::pin::pin_term(leader)]),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            pod_anti_affinity: None,
        });
    }
    let pod_anti_affinity = match parts.anti_affinity {
        AntiAffinity::None => None,
        AntiAffinity::Required => Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![anti_affinity_term()]),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        AntiAffinity::Preferred => Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: None,
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: anti_affinity_term(),
            }]),
        }),
    };
    (node_affinity.is_some() || pod_anti_affinity.is_some()).then_some(Affinity {
        node_affinity,
        pod_affinity: None,
        pod_anti_affinity,
    })
}

fn string_map<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `uid=mode,uid=mode`: the value of [`names::ANNOTATION_RUN_MODES`].
pub fn run_modes_annotation(modes: &BTreeMap<Name, Mode>) -> String {
    modes.iter().map(|(uid, m)| format!("{uid}={m}")).collect::<Vec<_>>().join(",")
}

/// Reads [`names::ANNOTATION_RUN_MODES`]; entries it cannot read are dropped.
pub fn parse_run_modes(value: &str) -> BTreeMap<Name, Mode> {
    value
        .split(',')
        .filter_map(|pair| {
            let (uid, mode) = pair.trim().split_once('=')?;
            Some((uid.into(), mode.parse().ok()?))
        })
        .collect()
}

/// The complete StatefulSet of a new placeholder.
pub fn statefulset(parts: &PlaceholderParts<'_>) -> StatefulSet {
    let labels = string_map(names::placeholder_labels(parts.name));
    let claims_csv = parts.claims.iter().map(Name::as_str).collect::<Vec<_>>().join(",");
    let runs_csv = parts.owners.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(",");
    let volumes: Vec<Volume> = parts
        .claims
        .iter()
        .enumerate()
        .map(|(i, claim)| Volume {
            name: format!("claim-{i}"),
            // Never readOnly here: some CSI drivers attach the volume read-only for the whole
            // node when the first pod asks for it, which would lock the tasks out.
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_string(),
                read_only: None,
            }),
            ..Default::default()
        })
        .collect();
    let mounts: Vec<VolumeMount> = (0..volumes.len())
        .map(|i| VolumeMount {
            name: format!("claim-{i}"),
            mount_path: format!("/claims/{i}"),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    let resources: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(parts.config.placeholder_cpu.clone())),
        ("memory".to_string(), Quantity(parts.config.placeholder_memory.clone())),
    ]
    .into();
    let priority_class_name =
        parts.config.placeholder_priority_class.clone().or_else(|| parts.scheduling.priority_class_name.clone());
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(parts.name.to_string()),
            namespace: Some(parts.namespace.to_string()),
            labels: Some(labels.clone()),
            annotations: Some(string_map([
                (names::ANNOTATION_MODE, parts.mode.as_str().to_string()),
                (names::ANNOTATION_CLAIMS, claims_csv),
                (names::ANNOTATION_RUNS, runs_csv),
                (names::ANNOTATION_RUN_MODES, run_modes_annotation(parts.run_modes)),
            ])),
            owner_references: (!parts.owners.is_empty()).then(|| parts.owners.iter().map(Owner::reference).collect()),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some([(names::LABEL_PLACEHOLDER.to_string(), parts.name.to_string())].into()),
                match_expressions: None,
            },
            // Never roll the pod on a template change: it would move the volume (I3).
            update_strategy: Some(StatefulSetUpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(string_map(
                        names::PLACEHOLDER_POD_ANNOTATIONS.iter().map(|(k, v)| (*k, v.to_string())),
                    )),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: CONTAINER_NAME.into(),
                        image: Some(parts.config.placeholder_image.clone()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        resources: Some(ResourceRequirements {
                            requests: Some(resources.clone()),
                            limits: Some(resources),
                            ..Default::default()
                        }),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
                            read_only_root_filesystem: Some(true),
                            run_as_non_root: Some(true),
                            run_as_user: Some(PLACEHOLDER_UID),
                            run_as_group: Some(PLACEHOLDER_UID),
                            ..Default::default()
                        }),
                        volume_mounts: (!mounts.is_empty()).then_some(mounts),
                        ..Default::default()
                    }],
                    // No fsGroup: it would chown the user's data on every mount.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(PLACEHOLDER_UID),
                        run_as_group: Some(PLACEHOLDER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(5),
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    node_selector: Some(merged_node_selector(parts.config, parts.scheduling)).filter(|m| !m.is_empty()),
                    tolerations: Some(merged_tolerations(parts.config, parts.scheduling)).filter(|t| !t.is_empty()),
                    affinity: affinity(parts),
                    image_pull_secrets: Some(parts.scheduling.image_pull_secrets.clone()).filter(|s| !s.is_empty()),
                    priority_class_name,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}
