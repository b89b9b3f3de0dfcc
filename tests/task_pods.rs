//! SPEC "Task pods" and invariants I2, I5, I6: what the webhook's decision does to a pod.

mod common;

use affinity_assistant::core::{SkipReason, decide, pin::is_pin_term};
use affinity_assistant::model::NodeInfo;
use affinity_assistant::names;
use affinity_assistant::pod::TaskPod;
use common::*;
use k8s_openapi::api::core::v1::Taint;
use serde_json::{Value, json};

fn simple() -> (World, affinity_assistant::model::Run) {
    let r = run("r", &[("src", "source"), ("cache", "cache")], &[("build", &["src", "cache"]), ("lint", &["src"])]);
    (World::new(vec![r.clone()], rwo(&["source", "cache"])), r)
}

fn decide_json(v: &Value, w: &World) -> affinity_assistant::core::Decision {
    decide(&TaskPod::from_value(v).unwrap(), &w.plan(), true)
}

#[test]
fn pinned_pod_gets_one_hostname_term_selecting_its_placeholder_by_id() {
    let (w, r) = simple();
    let plan = w.plan();
    let pin = expect_pin(decide(&pod(&r, "build", &["source", "cache"]), &plan, true));
    let required = pin
        .affinity
        .pod_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    assert_eq!(required.len(), 1);
    let term = &required[0];
    assert_eq!(term.topology_key, names::TOPOLOGY_HOSTNAME);
    let labels = term.label_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[names::LABEL_PLACEHOLDER], pin.placeholder);
    let holder = plan.placeholder(&pin.placeholder).unwrap();
    assert!(["source", "cache"].iter().all(|c| holder.claims.contains(*c)), "I2: holds every claim the pod mounts");
}

#[test]
fn patch_adds_term_label_and_annotations_and_nothing_else() {
    let (w, r) = simple();
    let original = pod_json(&r, "build", &["source", "cache"]);
    let pin = expect_pin(decide_json(&original, &w));
    let patched = apply_patch(&original, &pin);
    assert_eq!(patched["metadata"]["labels"][names::LABEL_PINNED], "true");
    assert_eq!(patched["metadata"]["annotations"][names::ANNOTATION_PINNED_TO], json!(pin.placeholder));
    assert_eq!(patched["metadata"]["annotations"][names::ANNOTATION_CLAIMS], "cache,source");
    assert!(
        patched["metadata"]["labels"].get(names::LABEL_PLACEHOLDER).is_none(),
        "a task pod never carries the id label"
    );
    assert_eq!(patched["spec"]["affinity"], serde_json::to_value(&pin.affinity).unwrap());
    // Everything else is untouched.
    let mut without = patched.clone();
    without["spec"].as_object_mut().unwrap().remove("affinity");
    without["metadata"]["labels"].as_object_mut().unwrap().remove(names::LABEL_PINNED);
    let ann = without["metadata"]["annotations"].as_object_mut().unwrap();
    ann.remove(names::ANNOTATION_PINNED_TO);
    ann.remove(names::ANNOTATION_CLAIMS);
    assert_eq!(without, original);
    for op in &pin.patch.0 {
        let path = serde_json::to_value(op).unwrap()["path"].as_str().unwrap().to_string();
        assert!(
            path.starts_with("/spec/affinity")
                || path.starts_with("/metadata/labels")
                || path.starts_with("/metadata/annotations"),
            "{path}"
        );
    }
}

#[test]
fn existing_affinity_is_kept() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["spec"]["affinity"] = json!({
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}},
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}]},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": "noisy"}}, "topologyKey": "kubernetes.io/hostname"}]}
    });
    let pin = expect_pin(decide_json(&v, &w));
    let patched = apply_patch(&v, &pin);
    let aff = &patched["spec"]["affinity"];
    assert_eq!(aff["nodeAffinity"], v["spec"]["affinity"]["nodeAffinity"]);
    assert_eq!(aff["podAntiAffinity"], v["spec"]["affinity"]["podAntiAffinity"]);
    assert_eq!(
        aff["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
        v["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    );
    assert_eq!(aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().unwrap().len(), 1);
}

#[test]
fn applying_the_patch_twice_changes_nothing() {
    let (w, r) = simple();
    for affinity in [
        None,
        Some(json!({})),
        Some(json!({"podAffinity": {}})),
        Some(json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}})),
    ] {
        let mut v = pod_json(&r, "build", &["source"]);
        if let Some(a) = affinity.clone() {
            v["spec"]["affinity"] = a;
        }
        let pin = expect_pin(decide_json(&v, &w));
        let once = apply_patch(&v, &pin);
        let twice = apply_patch(&once, &pin);
        assert_eq!(once, twice, "{affinity:?}");
        // And a reinvocation decides there is nothing to add.
        let again = expect_skip(decide_json(&once, &w));
        assert_eq!(again.reason, SkipReason::AlreadyPinned);
    }
}

#[test]
fn pods_without_labels_or_annotations_get_whole_maps() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"].as_object_mut().unwrap().remove("annotations");
    let pin = expect_pin(decide_json(&v, &w));
    let patched = apply_patch(&v, &pin);
    assert_eq!(patched["metadata"]["annotations"][names::ANNOTATION_PINNED_TO], json!(pin.placeholder));
}

// --- Skips ------------------------------------------------------------------------------------

fn skip_reason(v: &Value, w: &World) -> SkipReason {
    expect_skip(decide_json(v, w)).reason
}

#[test]
fn placeholder_pods_are_skipped() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"]["labels"][names::LABEL_PLACEHOLDER] = json!("aa-x");
    assert_eq!(skip_reason(&v, &w), SkipReason::Placeholder);
}

#[test]
fn tekton_placeholder_pods_and_tekton_pinned_pods_are_skipped() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"]["labels"]["app.kubernetes.io/component"] = json!("affinity-assistant");
    assert_eq!(skip_reason(&v, &w), SkipReason::EnginePlaceholder);
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"]["annotations"]["pipeline.tekton.dev/affinity-assistant"] = json!("affinity-assistant-835c6588ed");
    assert_eq!(skip_reason(&v, &w), SkipReason::EngineAssistant);
}

#[test]
fn pods_outside_pipeline_runs_are_skipped() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"]["labels"] = json!({"app": "web"});
    assert_eq!(skip_reason(&v, &w), SkipReason::NotTaskPod);
}

#[test]
fn opted_out_pods_are_skipped() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"]["annotations"][names::ANNOTATION_ENABLED] = json!("false");
    assert_eq!(skip_reason(&v, &w), SkipReason::OptedOut);
}

#[test]
fn run_opted_out_through_its_pipeline_annotation() {
    // render and Tekton merge the Pipeline's annotations into the run, and Tekton copies them
    // to the pods: both the plan and the pod say "opted out".
    use affinity_assistant::engine::tekton::{Pipeline, PipelineRun};
    let pr = PipelineRun::from_value(&json!({"metadata": {"name": "r", "namespace": NS, "uid": "u"},
        "spec": {"pipelineRef": {"name": "p"}, "workspaces": [{"name": "w", "persistentVolumeClaim": {"claimName": "c"}}]}}))
    .unwrap();
    let p =
        Pipeline::from_value(&json!({"metadata": {"name": "p", "annotations": {names::ANNOTATION_ENABLED: "false"}},
        "spec": {"tasks": [{"name": "t", "workspaces": [{"name": "w"}]}]}}))
        .unwrap();
    let mut r = pr.to_run().unwrap();
    affinity_assistant::engine::Engine::resolve(
        &affinity_assistant::engine::tekton::Tekton,
        &mut r,
        &p.to_definition(),
    );
    let w = World::new(vec![r.clone()], rwo(&["c"]));
    assert!(w.plan().placeholders.is_empty());
    assert_eq!(skip_reason(&pod_json(&r, "t", &["c"]), &w), SkipReason::OptedOut);
}

#[test]
fn unknown_run_is_skipped_with_a_warning() {
    let (w, _) = simple();
    let stranger = run("stranger", &[("w", "source")], &[("t", &["w"])]);
    let s = expect_skip(decide(&pod(&stranger, "t", &["source"]), &w.plan(), true));
    assert_eq!(s.reason, SkipReason::RunNotFound);
    assert!(s.reason.warns());
    assert!(s.message.contains("stranger"));
}

#[test]
fn own_required_pod_affinity_is_never_pinned() {
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}});
    let s = expect_skip(decide_json(&v, &w));
    assert_eq!(s.reason, SkipReason::OwnPodAffinity);
    assert!(s.reason.warns() && s.message.contains("podAffinity"));
}

fn bound_world(node: NodeInfo) -> (World, affinity_assistant::model::Run) {
    let (mut w, r) = simple();
    let plan = w.plan();
    w.apply(&plan, Some(&node));
    (w, r)
}

#[test]
fn node_selector_excluding_the_placeholders_node_is_never_pinned() {
    let node = NodeInfo { name: "n1".into(), labels: [("zone".to_string(), "a".to_string())].into(), taints: vec![] };
    let (w, r) = bound_world(node);
    let mut v = pod_json(&r, "build", &["source"]);
    v["spec"]["nodeSelector"] = json!({"zone": "b"});
    let s = expect_skip(decide_json(&v, &w));
    assert_eq!(s.reason, SkipReason::NodeExcluded);
    assert!(s.message.contains("zone=b") && s.message.contains("n1"), "{}", s.message);
    v["spec"]["nodeSelector"] = json!({"zone": "a"});
    expect_pin(decide_json(&v, &w));
}

#[test]
fn node_affinity_excluding_the_placeholders_node_is_never_pinned() {
    let node = NodeInfo {
        name: "n1".into(),
        labels: [("kubernetes.io/arch".to_string(), "arm64".to_string())].into(),
        taints: vec![],
    };
    let (w, r) = bound_world(node);
    let mut v = pod_json(&r, "build", &["source"]);
    v["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}});
    assert_eq!(skip_reason(&v, &w), SkipReason::NodeExcluded);
}

#[test]
fn untolerated_taint_on_the_placeholders_node_is_never_pinned() {
    let taint =
        Taint { key: "dedicated".into(), value: Some("ci".into()), effect: "NoSchedule".into(), time_added: None };
    let node = NodeInfo { name: "n1".into(), labels: Default::default(), taints: vec![taint] };
    let (w, r) = bound_world(node);
    let mut v = pod_json(&r, "build", &["source"]);
    assert_eq!(skip_reason(&v, &w), SkipReason::NodeExcluded);
    v["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}]);
    expect_pin(decide_json(&v, &w));
}

#[test]
fn node_selector_conflicting_with_an_unbound_placeholder_is_never_pinned() {
    let mut v = run_json("r", &[("w", "c")], &[("t", &["w"])]);
    v["spec"]["taskRunTemplate"] = json!({"podTemplate": {"nodeSelector": {"pool": "ci"}}});
    let r = to_run(&v);
    let w = World::new(vec![r.clone()], rwo(&["c"]));
    let mut p = pod_json(&r, "t", &["c"]);
    p["spec"]["nodeSelector"] = json!({"pool": "gpu"});
    assert_eq!(skip_reason(&p, &w), SkipReason::NodeExcluded);
}

#[test]
fn no_controller_means_no_pin() {
    let (w, r) = simple();
    let s = expect_skip(decide(&pod(&r, "build", &["source"]), &w.plan(), false));
    assert_eq!(s.reason, SkipReason::NoController);
    assert!(s.reason.warns());
}

#[test]
fn unmanaged_claims_do_not_block_a_pin() {
    let r = run("r", &[("src", "source"), ("shared", "rwx")], &[("build", &["src", "shared"])]);
    let mut w = World::new(vec![r.clone()], rwo(&["source"]));
    w.claims.insert("rwx".into(), pvc("rwx", &["ReadWriteMany"]));
    let pin = expect_pin(decide(&pod(&r, "build", &["source", "rwx"]), &w.plan(), true));
    assert_eq!(pin.claims, vec!["source".to_string()]);
}

#[test]
fn rwx_only_pods_are_left_alone() {
    let r = run("r", &[("shared", "rwx")], &[("build", &["shared"])]);
    let mut w = World::new(vec![r.clone()], Default::default());
    w.claims.insert("rwx".into(), pvc("rwx", &["ReadWriteMany"]));
    assert!(w.plan().placeholders.is_empty());
    assert_eq!(expect_skip(decide(&pod(&r, "build", &["rwx"]), &w.plan(), true)).reason, SkipReason::NoManagedClaim);
}

#[test]
fn pods_are_matched_to_runs_by_uid() {
    // Two runs with the same name (one deleted and recreated): the uid label decides.
    let (w, r) = simple();
    let mut v = pod_json(&r, "build", &["source"]);
    v["metadata"]["labels"]["tekton.dev/pipelineRunUID"] = json!("another-uid");
    assert_eq!(skip_reason(&v, &w), SkipReason::RunNotFound);
}

#[test]
fn our_own_term_is_recognised() {
    let (w, r) = simple();
    let pin = expect_pin(decide(&pod(&r, "build", &["source"]), &w.plan(), true));
    assert!(is_pin_term(&pin.term));
}

/// A later webhook's change on top of our pin, and the reinvocation's answer applied.
fn reinvoke(w: &World, pinned: &Value, change: impl FnOnce(&mut Value)) -> (affinity_assistant::core::Skip, Value) {
    let mut later = pinned.clone();
    change(&mut later);
    let s = expect_skip(decide_json(&later, w));
    let mut out = later.clone();
    if let Some(undo) = &s.undo {
        json_patch::patch(&mut out, undo).expect("the undo patch applies");
    }
    (s, out)
}

#[test]
fn a_reinvocation_after_another_webhook_added_a_required_term_takes_the_pin_back() {
    let (w, r) = simple();
    let v = pod_json(&r, "build", &["source", "cache"]);
    let pinned = apply_patch(&v, &expect_pin(decide_json(&v, &w)));
    let theirs = json!({"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"});
    let (s, out) = reinvoke(&w, &pinned, |p| {
        p["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array_mut()
            .unwrap()
            .push(theirs.clone())
    });
    assert_eq!(s.reason, SkipReason::PinWithdrawn);
    assert!(s.reason.warns() && s.message.contains("another admission webhook"), "{}", s.message);
    // What is left: their term only, none of our label or annotations (I2: never two terms with ours).
    let required = out["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].clone();
    assert_eq!(required, json!([theirs]));
    assert!(out["metadata"]["labels"].get(names::LABEL_PINNED).is_none());
    assert!(out["metadata"]["annotations"].get(names::ANNOTATION_PINNED_TO).is_none());
    assert!(out["metadata"]["annotations"].get(names::ANNOTATION_CLAIMS).is_none());
    // A third call has nothing of ours to look at: it leaves the pod as it is.
    let third = expect_skip(decide_json(&out, &w));
    assert!(third.undo.is_none());
    assert_eq!(third.reason, SkipReason::OwnPodAffinity);
}

#[test]
fn a_reinvocation_after_a_node_selector_that_excludes_the_placeholder_takes_the_pin_back() {
    let (mut w, r) = simple();
    let node = affinity_assistant::model::NodeInfo {
        name: "n1".into(),
        labels: [("pool".to_string(), "ci".to_string())].into(),
        taints: vec![],
    };
    let plan = w.plan();
    w.apply(&plan, Some(&node));
    let v = pod_json(&r, "build", &["source", "cache"]);
    let pinned = apply_patch(&v, &expect_pin(decide_json(&v, &w)));
    // A webhook that adds a selector the placeholder's node satisfies: the pin stays.
    let (s, _) = reinvoke(&w, &pinned, |p| p["spec"]["nodeSelector"] = json!({"pool": "ci"}));
    assert_eq!((s.reason, s.undo.is_none()), (SkipReason::AlreadyPinned, true));
    // One it does not satisfy: taken back, the pod can go where its selector says.
    let (s, out) = reinvoke(&w, &pinned, |p| p["spec"]["nodeSelector"] = json!({"pool": "gpu"}));
    assert_eq!(s.reason, SkipReason::PinWithdrawn);
    assert!(s.message.contains("aa-"), "names the placeholder: {}", s.message);
    assert_eq!(out["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], json!([]));
    assert_eq!(out["spec"]["nodeSelector"], json!({"pool": "gpu"}));
}

#[test]
fn an_argo_workflows_pods_are_pinned_like_a_pipelineruns() {
    let wf = to_argo_run(&workflow_json(
        "ci-1",
        &[("work", "workdir"), ("cache", "go-cache")],
        &[("clone", &["work"]), ("test", &["work", "cache"])],
    ));
    let w = World::new(vec![wf.clone()], rwo(&["workdir", "go-cache"]));
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1);
    for (task, claims) in [("clone", &["workdir"][..]), ("test", &["workdir", "go-cache"][..])] {
        let pin = expect_pin(decide(&pod(&wf, task, claims), &plan, true));
        assert_eq!(pin.placeholder, plan.placeholders[0].name.as_str());
    }
    // Argo's agent pod of the same Workflow is never touched.
    let mut agent = pod_json(&wf, "agent", &[]);
    agent["metadata"]["labels"]["workflows.argoproj.io/component"] = json!("agent");
    assert_eq!(expect_skip(decide_json(&agent, &w)).reason, SkipReason::NotTaskPod);
    // A Workflow opted out by annotation: its pods (which do not carry it) are left alone.
    let mut v = workflow_json("ci-2", &[("work", "workdir-2")], &[("clone", &["work"])]);
    v["metadata"]["annotations"][names::ANNOTATION_ENABLED] = json!("false");
    let out = to_argo_run(&v);
    let w = World::new(vec![out.clone()], rwo(&["workdir-2"]));
    assert_eq!(expect_skip(decide_json(&pod_json(&out, "clone", &["workdir-2"]), &w)).reason, SkipReason::OptedOut);
}
