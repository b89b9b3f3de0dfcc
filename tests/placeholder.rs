//! SPEC "Placeholder": the StatefulSet a new placeholder gets.

mod common;

use affinity_assistant::names;
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::json;

fn one_placeholder(w: &World) -> StatefulSet {
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1);
    plan.placeholders[0].statefulset(NS, &w.config).expect("a new placeholder")
}

fn world_with_pod_template() -> World {
    let mut v = run_json("r", &[("a", "ca"), ("b", "cb")], &[("t", &["a", "b"])]);
    v["spec"]["taskRunTemplate"] = json!({"podTemplate": {
        "nodeSelector": {"pool": "ci", "zone": "a"},
        "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "imagePullSecrets": [{"name": "regcred"}],
        "priorityClassName": "ci-high"
    }});
    let mut w = World::new(vec![to_run(&v)], rwo(&["ca", "cb"]));
    w.config.placeholder_node_selector =
        [("pool".to_string(), "placeholders".to_string()), ("disk".to_string(), "ssd".to_string())].into();
    w.config.placeholder_tolerations =
        affinity_assistant::config::parse_tolerations("- key: spot\n  operator: Exists").unwrap();
    w
}

#[test]
fn statefulset_shape() {
    let w = World::new(vec![run("r", &[("a", "ca"), ("b", "cb")], &[("t", &["a", "b"])])], rwo(&["ca", "cb"]));
    let sts = one_placeholder(&w);
    let name = sts.metadata.name.clone().unwrap();
    assert!(name.len() <= names::MAX_PLACEHOLDER_NAME && names::is_dns1123_label(&name));
    assert_eq!(sts.metadata.namespace.as_deref(), Some(NS));
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.update_strategy.as_ref().unwrap().type_.as_deref(), Some("OnDelete"));
    assert_eq!(spec.selector.match_labels, Some([(names::LABEL_PLACEHOLDER.to_string(), name.clone())].into()));
    assert!(spec.selector.match_expressions.is_none());
    let pod = spec.template.spec.as_ref().unwrap();
    let claims: Vec<_> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.persistent_volume_claim.as_ref().unwrap().claim_name.clone())
        .collect();
    assert_eq!(claims, vec!["ca", "cb"]);
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(affinity_assistant::config::DEFAULT_IMAGE));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests, res.limits, "requests = limits: QoS Guaranteed");
    assert_eq!(res.requests.as_ref().unwrap().len(), 2);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let meta = spec.template.metadata.as_ref().unwrap();
    let ann = meta.annotations.as_ref().unwrap();
    for (k, v) in names::PLACEHOLDER_POD_ANNOTATIONS {
        assert_eq!(ann.get(k).map(String::as_str), Some(v), "{k}");
    }
}

#[test]
fn restricted_pod_security() {
    let w = World::new(vec![run("r", &[("a", "ca")], &[("t", &["a"])])], rwo(&["ca"]));
    let sts = one_placeholder(&w);
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert!(psc.fs_group.is_none(), "fsGroup would chown the user's data");
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert!(sc.privileged.is_none_or(|p| !p));
    assert!(sc.run_as_user.is_some_and(|u| u != 0));
}

#[test]
fn labels_are_ours_and_never_the_engines() {
    let w = World::new(vec![run("r", &[("a", "ca")], &[("t", &["a"])])], rwo(&["ca"]));
    let sts = one_placeholder(&w);
    let name = sts.metadata.name.clone().unwrap();
    let template_labels = sts.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for labels in [sts.metadata.labels.clone().unwrap(), template_labels] {
        assert_eq!(labels[names::LABEL_APP_NAME], "affinity-assistant");
        assert_eq!(labels[names::LABEL_APP_COMPONENT], "placeholder");
        assert_eq!(labels[names::LABEL_APP_MANAGED_BY], "affinity-assistant");
        assert_eq!(labels[names::LABEL_PLACEHOLDER], name);
        assert!(labels.keys().all(|k| !k.starts_with("tekton.dev/")), "{labels:?}");
        assert_ne!(labels[names::LABEL_APP_COMPONENT], "affinity-assistant");
    }
    let ann = sts.metadata.annotations.unwrap();
    assert_eq!(ann[names::ANNOTATION_RUNS], "r");
    assert_eq!(ann[names::ANNOTATION_CLAIMS], "ca");
    assert_eq!(ann[names::ANNOTATION_MODE], "workspaces");
}

#[test]
fn owner_references_by_uid_not_controller_not_blocking() {
    let w = World::new(
        vec![run("a", &[("w", "c")], &[("t", &["w"])]), run("b", &[("w", "c")], &[("t", &["w"])])],
        rwo(&["c"]),
    );
    let sts = one_placeholder(&w);
    let refs = sts.metadata.owner_references.unwrap();
    assert_eq!(refs.len(), 2);
    for (r, name) in refs.iter().zip(["a", "b"]) {
        assert_eq!(r.api_version, "tekton.dev/v1");
        assert_eq!(r.kind, "PipelineRun");
        assert_eq!(r.name, name);
        assert_eq!(r.uid, uid(name));
        assert_eq!(r.controller, Some(false));
        assert_eq!(r.block_owner_deletion, Some(false));
    }
}

#[test]
fn the_creating_runs_scheduling_is_merged_with_config() {
    let w = world_with_pod_template();
    let pod = one_placeholder(&w).spec.unwrap().template.spec.unwrap();
    let sel = pod.node_selector.unwrap();
    assert_eq!(sel["pool"], "ci", "the run's key wins: its task pods carry it");
    assert_eq!(sel["zone"], "a");
    assert_eq!(sel["disk"], "ssd", "configured keys are added");
    let tolerations: Vec<_> = pod.tolerations.unwrap().into_iter().map(|t| t.key.unwrap()).collect();
    assert_eq!(tolerations, vec!["ci", "spot"]);
    let req = pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    assert_eq!(req.node_selector_terms[0].match_expressions.as_ref().unwrap()[0].key, "kubernetes.io/arch");
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(pod.priority_class_name.as_deref(), Some("ci-high"));
}

#[test]
fn configured_priority_class_and_resources_win() {
    let mut w = world_with_pod_template();
    w.config.placeholder_priority_class = Some("placeholders".into());
    w.config.placeholder_cpu = "50m".into();
    w.config.placeholder_memory = "64Mi".into();
    w.config.placeholder_image = "example.com/pause:2".into();
    let pod = one_placeholder(&w).spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.priority_class_name.as_deref(), Some("placeholders"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("example.com/pause:2"));
    let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(req["cpu"].0, "50m");
    assert_eq!(req["memory"].0, "64Mi");
}

#[test]
fn preferred_anti_affinity_by_default_weight_100_hostname_all_namespaces() {
    let w = World::new(vec![run("r", &[("a", "ca")], &[("t", &["a"])])], rwo(&["ca"]));
    let pod = one_placeholder(&w).spec.unwrap().template.spec.unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let pref = anti.preferred_during_scheduling_ignored_during_execution.unwrap();
    assert_eq!(pref.len(), 1);
    assert_eq!(pref[0].weight, 100);
    assert_eq!(pref[0].pod_affinity_term.topology_key, names::TOPOLOGY_HOSTNAME);
    assert_eq!(pref[0].pod_affinity_term.namespace_selector, Some(Default::default()));
    let sel = pref[0].pod_affinity_term.label_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(sel[names::LABEL_APP_COMPONENT], "placeholder");
}

#[test]
fn placeholder_statefulset_round_trips_as_kubernetes_json() {
    let w = world_with_pod_template();
    let sts = one_placeholder(&w);
    let v = serde_json::to_value(&sts).unwrap();
    assert_eq!(v["apiVersion"], "apps/v1");
    assert_eq!(v["kind"], "StatefulSet");
    let back: StatefulSet = serde_json::from_value(v).unwrap();
    assert_eq!(back, sts);
}
