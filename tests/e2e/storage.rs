//! Static volumes: the suite needs no provisioner and no StorageClass.
//!
//! Every claim gets a PersistentVolume of its own, pre-bound to it (`claimRef` on the volume;
//! `volumeName` too on the claims the suite creates), `storageClassName: ""` on both so no
//! default StorageClass interferes. No volume has node affinity: the scheduler may put its
//! pods on any node, which is what lets the tests observe where the add-on's pinning (and
//! nothing else) puts them. The PV controller of kube-controller-manager completes the
//! binding; the scheduler waits for that.

use crate::env::{Env, NAMESPACE_LABEL, SUITE_LABEL};
use anyhow::Context as _;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Size of every claim and volume: nothing is ever written.
pub const SIZE: &str = "1Gi";

/// The volume of claim `ns/claim`: unique in the cluster, at most 253 characters.
pub fn volume_name(ns: &str, claim: &str) -> String {
    format!("{ns}-{claim}")
}

/// What a volume is made of, which decides whether the add-on may move its placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// `hostPath`: mountable on any node with a kubelet (kind), so real Tekton's tasks run.
    /// Its data lives on one node, so the add-on never moves a placeholder that holds it.
    NodeLocal,
    /// An NFS export that nothing serves: what a network volume looks like to the scheduler
    /// and the add-on (nothing ties it to a node, so its placeholder may move). It never
    /// mounts, which the suite never needs: it waits only for pods to be bound.
    Network,
}

pub fn volume_object(ns: &str, claim: &str, access_mode: &str, backing: Backing) -> Value {
    let name = volume_name(ns, claim);
    let source = match backing {
        Backing::NodeLocal => {
            json!({"hostPath": {"path": format!("/tmp/affinity-assistant-e2e/{name}"), "type": "DirectoryOrCreate"}})
        }
        // Loopback: a kubelet that tries to mount it fails at once instead of hanging.
        Backing::Network => json!({"nfs": {"server": "127.0.0.1", "path": format!("/affinity-assistant-e2e/{name}")}}),
    };
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {SUITE_LABEL: "true", NAMESPACE_LABEL: ns}},
        "spec": {
            "capacity": {"storage": SIZE},
            "accessModes": [access_mode],
            "storageClassName": "",
            // Retain: nothing may try to recycle a hostPath; the suite deletes the volume.
            "persistentVolumeReclaimPolicy": "Retain",
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": claim},
        }
    });
    if let (Some(spec), Some(source)) = (pv["spec"].as_object_mut(), source.as_object()) {
        spec.extend(source.clone());
    }
    pv
}

pub fn claim_object(ns: &str, claim: &str, access_mode: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {
            "accessModes": [access_mode],
            "storageClassName": "",
            "volumeName": volume_name(ns, claim),
            "resources": {"requests": {"storage": SIZE}},
        }
    })
}

/// A node-local volume reserved for a claim someone else creates (Tekton, for a
/// volumeClaimTemplate).
pub async fn volume_for(env: &Env, ns: &str, claim: &str, access_mode: &str) -> anyhow::Result<()> {
    create_volume(env, ns, claim, access_mode, Backing::NodeLocal).await
}

async fn create_volume(env: &Env, ns: &str, claim: &str, access_mode: &str, backing: Backing) -> anyhow::Result<()> {
    let pv: PersistentVolume = serde_json::from_value(volume_object(ns, claim, access_mode, backing))?;
    Api::<PersistentVolume>::all(env.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .with_context(|| format!("creating PersistentVolume {} for claim {ns}/{claim}", volume_name(ns, claim)))?;
    Ok(())
}

/// A claim and its node-local volume, bound to each other: a user's PVC
/// (`persistentVolumeClaim.claimName`).
pub async fn claim(env: &Env, ns: &str, claim: &str, access_mode: &str) -> anyhow::Result<()> {
    claim_backed(env, ns, claim, access_mode, Backing::NodeLocal).await
}

pub async fn claim_backed(env: &Env, ns: &str, claim: &str, access_mode: &str, backing: Backing) -> anyhow::Result<()> {
    create_volume(env, ns, claim, access_mode, backing).await?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(claim_object(ns, claim, access_mode))?;
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .with_context(|| format!("creating PVC {ns}/{claim}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_and_claim_point_at_each_other() {
        let pv: PersistentVolume =
            serde_json::from_value(volume_object("ns-1", "data", "ReadWriteMany", Backing::NodeLocal)).unwrap();
        let pvc: PersistentVolumeClaim = serde_json::from_value(claim_object("ns-1", "data", "ReadWriteMany")).unwrap();
        let spec = pv.spec.unwrap();
        let cref = spec.claim_ref.unwrap();
        assert_eq!((cref.namespace.as_deref(), cref.name.as_deref()), (Some("ns-1"), Some("data")));
        let pvc_spec = pvc.spec.unwrap();
        assert_eq!(pvc_spec.volume_name.as_deref(), pv.metadata.name.as_deref());
        assert_eq!(spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(pvc_spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(spec.access_modes, pvc_spec.access_modes);
        assert!(spec.node_affinity.is_none(), "any node must be able to use it");
        assert_eq!(pv.metadata.labels.unwrap()[NAMESPACE_LABEL], "ns-1");
        assert!(spec.host_path.is_some() && spec.nfs.is_none());
    }

    /// The add-on's own reading of the two backings: it may move a placeholder off a cordoned
    /// node only for the network one.
    #[test]
    fn only_network_volumes_let_the_add_on_move_a_placeholder() {
        use affinity_assistant::views::VolumeView;
        let pinned =
            |b| VolumeView::from_value(&volume_object("ns", "c", "ReadWriteOnce", b)).unwrap().pinned_to_one_node();
        assert!(pinned(Backing::NodeLocal));
        assert!(!pinned(Backing::Network));
        let pv: PersistentVolume =
            serde_json::from_value(volume_object("ns", "c", "ReadWriteOnce", Backing::Network)).unwrap();
        let spec = pv.spec.unwrap();
        assert!(spec.nfs.is_some() && spec.host_path.is_none() && spec.claim_ref.is_some());
    }
}
