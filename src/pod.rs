//! A trimmed view of a Pod: what the pod decision reads, nothing else.
//!
//! Deserialising only these fields keeps the webhook's hot path small; unknown fields are
//! ignored, a field of the wrong type is an error that names it. Strings borrow from the
//! document when they can (no escapes in them): a task pod carries a few dozen labels,
//! annotations and volume names, and copying each was a good part of reading the pod.

use crate::engine::nullable;
use k8s_openapi::api::core::v1::{Affinity, NodeSelector, PodAffinityTerm, Toleration};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Labels or annotations, borrowed from the document where possible.
pub type StrMap<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta<'a> {
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub generate_name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub namespace: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "nullable_str_map")]
    pub labels: StrMap<'a>,
    #[serde(default, borrow, deserialize_with = "nullable_str_map")]
    pub annotations: StrMap<'a>,
    /// Who made the pod (an Argo task pod's run is its Workflow owner).
    #[serde(default, borrow, deserialize_with = "nullable_owners")]
    pub owner_references: Vec<PodOwner<'a>>,
}

/// One owner reference of a pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodOwner<'a> {
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub api_version: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub uid: Cow<'a, str>,
    #[serde(default)]
    pub controller: Option<bool>,
}

fn nullable_owners<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<PodOwner<'a>>, D::Error> {
    Ok(Option::<Vec<PodOwner<'a>>>::deserialize(d)?.unwrap_or_default())
}

impl PodMeta<'_> {
    /// The name, or `generateName` followed by `*` while the API server has not named it yet
    /// (admission of a CREATE sees pods that way).
    pub fn display_name(&self) -> String {
        if self.name.is_empty() { format!("{}*", self.generate_name) } else { self.name.to_string() }
    }

    pub fn into_owned(self) -> PodMeta<'static> {
        PodMeta {
            name: Cow::Owned(self.name.into_owned()),
            generate_name: Cow::Owned(self.generate_name.into_owned()),
            namespace: Cow::Owned(self.namespace.into_owned()),
            labels: owned_map(self.labels),
            annotations: owned_map(self.annotations),
            owner_references: self
                .owner_references
                .into_iter()
                .map(|o| PodOwner {
                    api_version: Cow::Owned(o.api_version.into_owned()),
                    kind: Cow::Owned(o.kind.into_owned()),
                    name: Cow::Owned(o.name.into_owned()),
                    uid: Cow::Owned(o.uid.into_owned()),
                    controller: o.controller,
                })
                .collect(),
        }
    }
}

/// Borrows the entries of an owned map, for code that holds labels as `String`s.
pub fn borrowed_map(map: &BTreeMap<String, String>) -> StrMap<'_> {
    map.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect()
}

fn owned_map(map: StrMap<'_>) -> StrMap<'static> {
    map.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned()))).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPod<'a> {
    #[serde(default, borrow)]
    pub metadata: PodMeta<'a>,
    #[serde(default, borrow)]
    pub spec: PodSpecView<'a>,
    /// Which engine's pod it is (not part of the document: the engines say, once it is read).
    #[serde(skip)]
    pub identity: Identity,
}

/// What the engines say about a pod: whose task pod it is, and whether to leave it alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The engine's name and title ("tekton", "Tekton"); empty when no engine claims the pod.
    pub engine: &'static str,
    pub title: &'static str,
    pub run: Option<crate::engine::RunRef>,
    pub skip: Option<crate::engine::EngineSkip>,
}

impl Identity {
    /// What a pod of this identity mounts, from its PVC volumes as (claim, volume name): `None`
    /// for a pod of no run, or one that mounts no claim.
    pub fn mounts<'v>(&self, volumes: impl Iterator<Item = (&'v str, &'v str)>) -> Option<crate::model::PodMounts> {
        let run = self.run.as_ref()?;
        let mut claims: Vec<crate::model::PodClaim> = volumes
            .map(|(claim, volume)| crate::model::PodClaim { claim: claim.into(), volume: volume.into() })
            .collect();
        if claims.is_empty() {
            return None;
        }
        claims.sort();
        claims.dedup_by(|a, b| a.claim == b.claim);
        Some(crate::model::PodMounts {
            engine: self.engine,
            run_name: run.name.as_str().into(),
            run_uid: run.uid.as_deref().map(Into::into),
            claims,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView<'a> {
    #[serde(default, borrow, deserialize_with = "nullable_volumes")]
    pub volumes: Vec<VolumeView<'a>>,
    #[serde(default, deserialize_with = "nullable")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub affinity: Option<Affinity>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView<'a> {
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub persistent_volume_claim: Option<ClaimVolume<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimVolume<'a> {
    #[serde(default, borrow, deserialize_with = "nullable_str")]
    pub claim_name: Cow<'a, str>,
}

impl<'a> TaskPod<'a> {
    /// Reads a pod from JSON bytes (the webhook's way: [`crate::engine::from_json_slice`]).
    pub fn from_json(bytes: &'a [u8]) -> serde_json::Result<TaskPod<'a>> {
        crate::engine::from_json_slice(bytes).map(TaskPod::identified)
    }

    /// Reads a pod from JSON, naming the offending field on error. Off the hot path: the pod
    /// owns its strings.
    pub fn from_value(value: &serde_json::Value) -> Result<TaskPod<'static>, crate::engine::ParseError> {
        crate::engine::from_value::<TaskPod<'_>>("Pod", value).map(TaskPod::into_owned).map(TaskPod::identified)
    }

    /// The pod with its [`Identity`] filled from the engines registry.
    pub fn identified(mut self) -> TaskPod<'a> {
        self.identity = crate::engine::identify(&self.metadata);
        self
    }

    /// The same pod, owning its strings (to keep it past the document it was read from).
    pub fn into_owned(self) -> TaskPod<'static> {
        TaskPod {
            metadata: self.metadata.into_owned(),
            spec: PodSpecView {
                volumes: self
                    .spec
                    .volumes
                    .into_iter()
                    .map(|v| VolumeView {
                        name: Cow::Owned(v.name.into_owned()),
                        persistent_volume_claim: v
                            .persistent_volume_claim
                            .map(|c| ClaimVolume { claim_name: Cow::Owned(c.claim_name.into_owned()) }),
                    })
                    .collect(),
                node_selector: self.spec.node_selector,
                tolerations: self.spec.tolerations,
                affinity: self.spec.affinity,
            },
            identity: self.identity,
        }
    }

    /// What the pod mounts, as the plan reads it of a run's pods ([`Identity::mounts`]).
    pub fn mounts(&self) -> Option<crate::model::PodMounts> {
        let volumes = self.spec.volumes.iter().filter_map(|v| {
            let claim = v.persistent_volume_claim.as_ref().filter(|c| !c.claim_name.is_empty())?;
            Some((claim.claim_name.as_ref(), v.name.as_ref()))
        });
        self.identity.mounts(volumes)
    }

    /// Claim names the pod mounts, each once, in volume order.
    pub fn claims(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for v in &self.spec.volumes {
            if let Some(c) = v.persistent_volume_claim.as_ref().filter(|c| !c.claim_name.is_empty())
                && !out.contains(&c.claim_name.as_ref())
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

/// A string that borrows from the document unless it had to be unescaped.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// [`nullable`] for a borrowed string.
fn nullable_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Cow<'a, str>, D::Error> {
    Ok(Option::<CowStr<'a>>::deserialize(d)?.map(|s| s.0).unwrap_or_default())
}

/// [`nullable`] for a map of borrowed strings.
fn nullable_str_map<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<StrMap<'a>, D::Error> {
    struct Entries<'a>(StrMap<'a>);
    impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
                type Value = Entries<'a>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                    let mut out = StrMap::new();
                    while let Some((k, v)) = m.next_entry::<CowStr<'a>, CowStr<'a>>()? {
                        out.insert(k.0, v.0);
                    }
                    Ok(Entries(out))
                }
            }
            d.deserialize_map(Visitor(std::marker::PhantomData))
        }
    }
    Ok(Option::<Entries<'a>>::deserialize(d)?.map(|e| e.0).unwrap_or_default())
}

/// [`nullable`] for the volumes.
fn nullable_volumes<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<VolumeView<'a>>, D::Error> {
    Ok(Option::<Vec<VolumeView<'a>>>::deserialize(d)?.unwrap_or_default())
}
