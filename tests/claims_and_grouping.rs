//! SPEC "Which claims are managed" and "Grouping": one test per rule.

mod common;

use affinity_assistant::config::{AntiAffinity, Mode};
use affinity_assistant::core::RunStatus;
use affinity_assistant::core::claims::{AccessSource, IgnoreReason};
use affinity_assistant::engine::tekton::template_claim_name;
use affinity_assistant::model::{Name, RunPhase};
use affinity_assistant::names;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;

fn placeholder_claims(plan: &affinity_assistant::core::Plan) -> Vec<Vec<String>> {
    plan.placeholders.iter().map(|p| p.claims.iter().map(|c| c.to_string()).collect()).collect()
}

// --- Which runs are active ---------------------------------------------------------------

#[test]
fn done_pending_and_unresolved_runs_get_no_placeholder() {
    let mut done_true = run_json("t", &[("w", "a")], &[("x", &["w"])]);
    done_true["status"]["conditions"][0]["status"] = json!("True");
    let mut done_false = run_json("f", &[("w", "b")], &[("x", &["w"])]);
    done_false["status"]["conditions"][0]["status"] = json!("False");
    let mut pending = run_json("p", &[("w", "c")], &[("x", &["w"])]);
    pending["spec"]["status"] = json!("PipelineRunPending");
    let mut unresolved = run_json("u", &[("w", "d")], &[("x", &["w"])]);
    unresolved["status"].as_object_mut().unwrap().remove("pipelineSpec");
    let w = World::new(
        vec![to_run(&done_true), to_run(&done_false), to_run(&pending), to_run(&unresolved)],
        rwo(&["a", "b", "c", "d"]),
    );
    let plan = w.plan();
    assert!(plan.placeholders.is_empty(), "{:?}", plan.placeholders);
    let statuses: Vec<_> = plan.runs.iter().map(|r| (r.name.as_str(), r.status.clone())).collect();
    assert!(statuses.contains(&("t", RunStatus::NotActive(RunPhase::Done))));
    assert!(statuses.contains(&("f", RunStatus::NotActive(RunPhase::Done))));
    assert!(statuses.contains(&("p", RunStatus::NotActive(RunPhase::Pending))));
    assert!(statuses.contains(&("u", RunStatus::NotActive(RunPhase::AwaitingSpec))));
}

#[test]
fn inline_pipeline_spec_runs_are_active_without_status() {
    let mut v = run_json("r", &[("w", "a")], &[("x", &["w"])]);
    let spec = v["status"]["pipelineSpec"].take();
    v["spec"]["pipelineSpec"] = spec;
    v["spec"].as_object_mut().unwrap().remove("pipelineRef");
    v.as_object_mut().unwrap().remove("status");
    let plan = World::new(vec![to_run(&v)], rwo(&["a"])).plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["a".to_string()]]);
}

#[test]
fn opted_out_runs_get_nothing() {
    let mut v = run_json("r", &[("w", "a")], &[("x", &["w"])]);
    v["metadata"]["annotations"][names::ANNOTATION_ENABLED] = json!("false");
    let plan = World::new(vec![to_run(&v)], rwo(&["a"])).plan();
    assert!(plan.placeholders.is_empty());
    assert_eq!(plan.runs[0].status, RunStatus::OptedOut);
}

#[test]
fn unreadable_opt_out_value_means_hands_off() {
    let mut v = run_json("r", &[("w", "a")], &[("x", &["w"])]);
    v["metadata"]["annotations"][names::ANNOTATION_ENABLED] = json!("nope");
    let plan = World::new(vec![to_run(&v)], rwo(&["a"])).plan();
    assert!(plan.placeholders.is_empty());
    assert!(matches!(&plan.runs[0].status, RunStatus::InvalidAnnotation(m) if m.contains("nope")));
}

// --- Which claims ---------------------------------------------------------------------------

#[test]
fn claim_sources_map_to_claims() {
    let r = run("r", &[("a", "existing"), ("b", "vct:data"), ("c", "emptyDir")], &[("x", &["a", "b", "c"])]);
    let vct = template_claim_name(Some("data"), "b", &uid("r"));
    let plan = World::new(vec![r], rwo(&["existing"])).plan();
    let rp = &plan.runs[0];
    let managed: Vec<_> = rp.claims.iter().map(|c| (c.name.to_string(), c.access)).collect();
    assert_eq!(managed, vec![("existing".to_string(), AccessSource::Claim), (vct.clone(), AccessSource::Template)]);
    assert_eq!(rp.ignored.len(), 1);
    assert_eq!(rp.ignored[0].reason, IgnoreReason::NotAClaim);
    assert_eq!(
        placeholder_claims(&plan),
        vec![{
            let mut v = vec!["existing".to_string(), vct];
            v.sort();
            v
        }]
    );
}

#[test]
fn access_modes_decide_what_is_managed() {
    let cases: &[(&[&str], bool)] = &[
        (&["ReadWriteOnce"], true),
        (&["ReadWriteMany"], false),
        (&["ReadOnlyMany"], false),
        (&["ReadWriteOnce", "ReadOnlyMany"], false),
        (&["ReadWriteOncePod"], false),
        (&[], false),
    ];
    for (modes, managed) in cases {
        let r = run("r", &[("w", "c")], &[("x", &["w"])]);
        let mut w = World::new(vec![r], Default::default());
        w.claims.insert("c".into(), pvc("c", modes));
        let plan = w.plan();
        assert_eq!(!plan.placeholders.is_empty(), *managed, "{modes:?}");
        assert_eq!(plan.runs[0].claims.is_empty(), !managed, "{modes:?}");
    }
}

#[test]
fn bound_status_modes_win_over_spec() {
    let r = run("r", &[("w", "c")], &[("x", &["w"])]);
    let mut w = World::new(vec![r], Default::default());
    let mut c = pvc("c", &["ReadWriteOnce"]);
    c.bound = true;
    c.status_access_modes = vec!["ReadWriteMany".into()];
    w.claims.insert("c".into(), c.clone());
    assert!(w.plan().placeholders.is_empty(), "status RWX wins when bound");
    c.bound = false;
    w.claims.insert("c".into(), c);
    assert_eq!(w.plan().placeholders.len(), 1, "spec is read while unbound");
}

#[test]
fn template_modes_apply_until_the_pvc_exists() {
    let mut v = run_json("r", &[("w", "vct:data")], &[("x", &["w"])]);
    v["spec"]["workspaces"][0]["volumeClaimTemplate"]["spec"]["accessModes"] = json!(["ReadWriteMany"]);
    let r = to_run(&v);
    let claim = template_claim_name(Some("data"), "w", &r.uid);
    let mut w = World::new(vec![r], Default::default());
    assert!(w.plan().placeholders.is_empty(), "template says RWX");
    w.claims.insert(claim.clone(), pvc(&claim, &["ReadWriteOnce"]));
    assert_eq!(w.plan().placeholders.len(), 1, "the PVC, once seen, wins");
}

#[test]
fn missing_claims_wait_in_the_cluster() {
    let plan = World::new(vec![run("r", &[("w", "c")], &[("x", &["w"])])], Default::default()).plan();
    assert!(plan.placeholders.is_empty());
    assert_eq!(plan.runs[0].ignored[0].reason, IgnoreReason::Missing);
}

#[test]
fn two_workspaces_bound_to_one_claim_make_one_placeholder() {
    // Tekton's own assistant makes one placeholder per workspace here, both mounting the claim.
    let r = run("r", &[("a", "c"), ("b", "c")], &[("x", &["a"]), ("y", &["b"])]);
    let plan = World::new(vec![r.clone()], rwo(&["c"])).plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["c".to_string()]]);
    assert_eq!(plan.runs[0].claims[0].workspaces, vec!["a".to_string(), "b".to_string()]);
    let x = expect_pin(affinity_assistant::core::decide(&pod(&r, "x", &["c"]), &plan, true));
    let y = expect_pin(affinity_assistant::core::decide(&pod(&r, "y", &["c"]), &plan, true));
    assert_eq!(x.placeholder, y.placeholder);
}

// --- Grouping: workspaces mode --------------------------------------------------------------

#[test]
fn workspaces_mode_groups_claims_one_task_binds_together() {
    // Tekton rejects a run whose task binds two claims; here they share one placeholder.
    let r = run(
        "r",
        &[("a", "ca"), ("b", "cb"), ("c", "cc"), ("d", "cd")],
        &[("t1", &["a", "b"]), ("t2", &["b", "c"]), ("t3", &["d"]), ("t4", &[])],
    );
    let plan = World::new(vec![r], rwo(&["ca", "cb", "cc", "cd"])).plan();
    assert_eq!(
        placeholder_claims(&plan),
        vec![vec!["ca".to_string(), "cb".to_string(), "cc".to_string()], vec!["cd".to_string()]]
    );
}

#[test]
fn claims_no_task_uses_get_no_placeholder() {
    let r = run("r", &[("a", "ca"), ("b", "cb")], &[("t", &["a"])]);
    let plan = World::new(vec![r], rwo(&["ca", "cb"])).plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["ca".to_string()]]);
}

#[test]
fn finally_tasks_count() {
    let mut v = run_json("r", &[("a", "ca"), ("b", "cb")], &[("t", &["a"])]);
    v["status"]["pipelineSpec"]["finally"] =
        json!([{"name": "cleanup", "workspaces": [{"name": "x", "workspace": "a"}, {"name": "y", "workspace": "b"}]}]);
    let plan = World::new(vec![to_run(&v)], rwo(&["ca", "cb"])).plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["ca".to_string(), "cb".to_string()]]);
}

#[test]
fn unreadable_usage_counts_as_every_claim() {
    let mut v = run_json("r", &[("a", "ca"), ("b", "cb")], &[("t", &["a"])]);
    v["status"]["pipelineSpec"]["tasks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "propagated", "taskSpec": {"steps": [{"script": "ls $(workspaces.b.path)"}]}}));
    let plan = World::new(vec![to_run(&v)], rwo(&["ca", "cb"])).plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["ca".to_string(), "cb".to_string()]]);
}

// --- Grouping: per-run modes ------------------------------------------------------------------

fn with_mode(
    name: &str,
    mode: &str,
    bindings: &[(&str, &str)],
    tasks: &[(&str, &[&str])],
) -> affinity_assistant::model::Run {
    let mut v = run_json(name, bindings, tasks);
    v["metadata"]["annotations"][names::ANNOTATION_MODE] = json!(mode);
    to_run(&v)
}

#[test]
fn pipelineruns_mode_holds_every_claim_and_pins_every_pod() {
    let r = with_mode("r", "pipelineruns", &[("a", "ca"), ("b", "cb")], &[("t1", &["a"]), ("t2", &["b"]), ("t3", &[])]);
    let plan = World::new(vec![r.clone()], rwo(&["ca", "cb"])).plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["ca".to_string(), "cb".to_string()]]);
    let home = plan.runs[0].home.clone().expect("a home placeholder");
    for (task, claims) in [("t1", vec!["ca"]), ("t2", vec!["cb"]), ("t3", vec![])] {
        let pin = expect_pin(affinity_assistant::core::decide(&pod(&r, task, &claims), &plan, true));
        assert_eq!(pin.placeholder, home, "{task}");
    }
}

#[test]
fn pipelineruns_mode_without_claims_still_colocates() {
    let r = with_mode("r", "pipelineruns", &[("a", "emptyDir")], &[("t1", &["a"]), ("t2", &[])]);
    let plan = World::new(vec![r.clone()], Default::default()).plan();
    assert_eq!(plan.placeholders.len(), 1);
    assert!(plan.placeholders[0].claims.is_empty());
    expect_pin(affinity_assistant::core::decide(&pod(&r, "t2", &[]), &plan, true));
}

#[test]
fn workspaces_mode_skips_pods_without_managed_claims() {
    let r = run("r", &[("a", "ca")], &[("t1", &["a"]), ("t2", &[])]);
    let plan = World::new(vec![r.clone()], rwo(&["ca"])).plan();
    let s = expect_skip(affinity_assistant::core::decide(&pod(&r, "t2", &[]), &plan, true));
    assert_eq!(s.reason, affinity_assistant::core::SkipReason::NoManagedClaim);
    assert!(!s.reason.warns());
}

#[test]
fn isolate_mode_uses_required_anti_affinity() {
    let r = with_mode("r", "isolate-pipelinerun", &[("a", "ca")], &[("t", &["a"])]);
    let plan = World::new(vec![r], rwo(&["ca"])).plan();
    let sts = plan.placeholders[0].statefulset(NS, &Default::default()).unwrap();
    let anti = sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    assert_eq!(anti.required_during_scheduling_ignored_during_execution.as_ref().map(Vec::len), Some(1));
    assert!(anti.preferred_during_scheduling_ignored_during_execution.is_none());
    assert_eq!(plan.placeholders[0].mode, Mode::IsolatePipelineRun);
}

#[test]
fn isolate_mode_falls_back_to_preferred_when_runs_share_a_claim() {
    let a = with_mode("a", "isolate-pipelinerun", &[("w", "shared")], &[("t", &["w"])]);
    let b = with_mode("b", "isolate-pipelinerun", &[("w", "shared")], &[("t", &["w"])]);
    let plan = World::new(vec![a, b], rwo(&["shared"])).plan();
    assert_eq!(plan.placeholders.len(), 1);
    let sts = plan.placeholders[0].statefulset(NS, &Default::default()).unwrap();
    let anti = sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    assert!(anti.required_during_scheduling_ignored_during_execution.is_none());
    assert_eq!(anti.preferred_during_scheduling_ignored_during_execution.as_ref().unwrap()[0].weight, 100);
    assert!(
        plan.runs[1].warnings.iter().any(|w| w.contains("isolate-pipelinerun") && w.contains("a")),
        "{:?}",
        plan.runs[1].warnings
    );
}

#[test]
fn configured_anti_affinity_applies_to_new_placeholders() {
    for (setting, required, preferred) in [
        (AntiAffinity::Preferred, false, true),
        (AntiAffinity::Required, true, false),
        (AntiAffinity::None, false, false),
    ] {
        let mut w = World::new(vec![run("r", &[("w", "c")], &[("t", &["w"])])], rwo(&["c"]));
        w.config.placeholder_anti_affinity = setting;
        let plan = w.plan();
        let spec = plan.placeholders[0].statefulset(NS, &w.config).unwrap().spec.unwrap().template.spec.unwrap();
        let anti = spec.affinity.and_then(|a| a.pod_anti_affinity);
        assert_eq!(
            anti.as_ref().and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).is_some(),
            required
        );
        assert_eq!(
            anti.as_ref().and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()).is_some(),
            preferred
        );
    }
}

#[test]
fn invalid_mode_annotation_falls_back_with_a_warning() {
    let r = with_mode("r", "sideways", &[("w", "c")], &[("t", &["w"])]);
    let plan = World::new(vec![r], rwo(&["c"])).plan();
    assert_eq!(plan.runs[0].mode, Mode::Workspaces);
    assert!(plan.runs[0].warnings[0].contains("sideways"));
}

// --- Grouping: across runs ----------------------------------------------------------------------

#[test]
fn concurrent_runs_on_one_claim_share_one_placeholder_with_two_owners() {
    let a = run("a", &[("w", "shared")], &[("t", &["w"])]);
    let b = run("b", &[("w", "shared")], &[("t", &["w"])]);
    let plan = World::new(vec![a, b], rwo(&["shared"])).plan();
    assert_eq!(plan.placeholders.len(), 1);
    let owners: Vec<_> = plan.placeholders[0].owners.iter().map(|o| o.uid.as_str()).collect();
    assert_eq!(owners, vec!["uid-a", "uid-b"]);
}

#[test]
fn a_held_claim_keeps_its_holder() {
    let mut w = World::new(
        vec![run("a", &[("w", "shared"), ("x", "other")], &[("t", &["w", "x"])])],
        rwo(&["shared", "other", "mine"]),
    );
    let first = w.plan();
    w.apply(&first, None);
    // b needs "shared" alone: it uses a's placeholder, which also holds "other".
    w.runs.push(run("b", &[("w", "shared")], &[("t", &["w"])]));
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1);
    assert!(plan.placeholders[0].create.is_none(), "existing placeholder kept as is");
    assert_eq!(plan.runs[1].holders["shared"], first.placeholders[0].name);
}

#[test]
fn a_run_needing_two_holders_gets_a_conflict_and_its_pods_stay_unpinned() {
    let mut w = World::new(
        vec![run("a", &[("w", "ca")], &[("t", &["w"])]), run("b", &[("w", "cb")], &[("t", &["w"])])],
        rwo(&["ca", "cb"]),
    );
    let first = w.plan();
    w.apply(&first, None);
    let c = run("c", &[("x", "ca"), ("y", "cb")], &[("both", &["x", "y"]), ("only-a", &["x"])]);
    w.runs.push(c.clone());
    let plan = w.plan();
    assert_eq!(plan.conflicts.len(), 1);
    let msg = &plan.conflicts[0].message;
    for name in plan.conflicts[0].placeholders.iter().map(|p| p.as_str()).chain(["a", "b", "c", "ca", "cb"]) {
        assert!(msg.contains(name), "{msg} should name {name}");
    }
    assert_eq!(plan.placeholders.len(), 2, "no third placeholder, no claim held twice");
    let s = expect_skip(affinity_assistant::core::decide(&pod(&c, "both", &["ca", "cb"]), &plan, true));
    assert_eq!(s.reason, affinity_assistant::core::SkipReason::ClaimsSplit);
    assert!(s.reason.warns());
    expect_pin(affinity_assistant::core::decide(&pod(&c, "only-a", &["ca"]), &plan, true));
}

#[test]
fn new_claims_beside_a_held_one_ride_with_its_placeholder() {
    // The shared-cache layout: a long-lived cache PVC held for one run, and a run that binds
    // the cache and its own new claim together.
    let mut w = World::new(vec![run("a", &[("w", "ca")], &[("t", &["w"])])], rwo(&["ca", "cn"]));
    let first = w.plan();
    w.apply(&first, None);
    let holder = first.placeholders[0].name.clone();
    let b = run("b", &[("x", "ca"), ("y", "cn")], &[("clone", &["y"]), ("build", &["x", "y"])]);
    w.runs.push(b.clone());
    let plan = w.plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["ca".to_string()]], "no placeholder is made for the rider");
    assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
    let p = &plan.placeholders[0];
    assert!(p.create.is_none(), "the holder is not changed (I3)");
    assert_eq!(p.riders, name_set(&["cn"]));
    let owners: Vec<&str> = p.owners.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(owners, vec!["a", "b"], "the holder gains the run as an owner");
    let rb = plan.run("b", Some(&uid("b"))).unwrap();
    assert_eq!(rb.riders.get("cn"), Some(&holder));
    // Every pod of b that mounts a claim of the group goes to the holder: the new volume is
    // provisioned and attached on the holder's node.
    for (task, claims) in [("clone", &["cn"][..]), ("build", &["ca", "cn"][..])] {
        let pin = expect_pin(affinity_assistant::core::decide(&pod(&b, task, claims), &plan, true));
        assert_eq!(pin.placeholder, holder.as_str(), "{task}");
    }
    // The holder stays for the rider's run after the run it was made for ends.
    w.apply(&plan, None);
    w.runs.retain(|r| r.name != "a");
    let later = w.plan();
    assert!(later.delete.is_empty(), "{:?}", later.delete);
    assert_eq!(later.placeholders[0].riders, name_set(&["cn"]));
    // And goes when the rider's run ends too.
    w.runs.clear();
    assert_eq!(w.plan().delete, vec![holder]);
}

#[test]
fn runs_started_together_around_a_shared_cache_share_one_placeholder() {
    let ci0 =
        run("ci-0", &[("cache", "go-cache"), ("src", "src-0")], &[("clone", &["src"]), ("build", &["src", "cache"])]);
    let ci1 =
        run("ci-1", &[("cache", "go-cache"), ("src", "src-1")], &[("clone", &["src"]), ("build", &["src", "cache"])]);
    let w = World::new(vec![ci0.clone(), ci1.clone()], rwo(&["go-cache", "src-0", "src-1"]));
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1, "{:?}", placeholder_claims(&plan));
    assert!(plan.conflicts.is_empty());
    let name = plan.placeholders[0].name.clone();
    for r in [&ci0, &ci1] {
        let src = if r.name == "ci-0" { "src-0" } else { "src-1" };
        for (task, claims) in [("clone", vec![src]), ("build", vec![src, "go-cache"])] {
            let pin = expect_pin(affinity_assistant::core::decide(&pod(r, task, &claims), &plan, true));
            assert_eq!(pin.placeholder, name.as_str());
        }
    }
}

/// A PersistentVolume's node affinity to one zone.
fn in_zone(zone: &str) -> k8s_openapi::api::core::v1::NodeSelector {
    use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
    NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "topology.kubernetes.io/zone".into(),
                operator: "In".into(),
                values: Some(vec![zone.into()]),
            }]),
            match_fields: None,
        }],
    }
}

fn node_in_zone(name: &str, zone: &str) -> affinity_assistant::model::NodeInfo {
    affinity_assistant::model::NodeInfo {
        name: name.into(),
        labels: [("topology.kubernetes.io/zone".to_string(), zone.to_string())].into(),
        taints: vec![],
    }
}

#[test]
fn a_rider_whose_volume_cannot_be_used_on_the_holders_node_is_not_pinned() {
    let mut claims = rwo(&["cache", "src"]);
    claims.get_mut("src").unwrap().bound = true;
    claims.get_mut("src").unwrap().volume_node_affinity = Some(in_zone("zone-a"));
    let mut w = World::new(vec![run("a", &[("w", "cache")], &[("t", &["w"])])], claims);
    let first = w.plan();
    let node = node_in_zone("node-b", "zone-b");
    w.apply(&first, Some(&node));
    let b = run("b", &[("c", "cache"), ("s", "src")], &[("build", &["c", "s"])]);
    w.runs.push(b.clone());
    let plan = w.plan();
    let rb = plan.run("b", Some(&uid("b"))).unwrap();
    assert!(rb.riders.is_empty());
    assert!(rb.unpinnable.contains_key("src"));
    assert!(rb.warnings.iter().any(|m| m.contains("src") && m.contains("node-b")), "{:?}", rb.warnings);
    let s = expect_skip(affinity_assistant::core::decide(&pod(&b, "build", &["cache", "src"]), &plan, true));
    assert_eq!(s.reason, affinity_assistant::core::SkipReason::VolumeExcluded);
    assert!(s.reason.warns());
    // In its own zone it rides.
    w.claims.get_mut("src").unwrap().volume_node_affinity = Some(in_zone("zone-b"));
    let plan = w.plan();
    expect_pin(affinity_assistant::core::decide(&pod(&b, "build", &["cache", "src"]), &plan, true));
}

#[test]
fn nothing_is_pinned_to_a_placeholder_that_cannot_run() {
    let r = run("a", &[("w", "ca")], &[("t", &["w"])]);
    let mut w = World::new(vec![r.clone()], rwo(&["ca"]));
    let first = w.plan();
    w.apply(&first, None);
    let ready = expect_pin(affinity_assistant::core::decide(&pod(&r, "t", &["ca"]), &w.plan(), true));
    assert!(!ready.placeholder_ready, "its pod does not exist yet");
    w.placeholders[0].pod_exists = true;
    assert!(expect_pin(affinity_assistant::core::decide(&pod(&r, "t", &["ca"]), &w.plan(), true)).placeholder_ready);
    w.placeholders[0].pod_exists = false;
    w.placeholders[0].refused = Some("exceeded quota: pods".into());
    let plan = w.plan();
    assert!(plan.delete.is_empty(), "a refused placeholder is kept: it may recover");
    let s = expect_skip(affinity_assistant::core::decide(&pod(&r, "t", &["ca"]), &plan, true));
    assert_eq!(s.reason, affinity_assistant::core::SkipReason::PlaceholderRefused);
    assert!(s.message.contains("exceeded quota"), "{}", s.message);
    assert!(s.reason.warns());
}

#[test]
fn mode_is_fixed_when_the_run_is_first_seen() {
    let mut w =
        World::new(vec![run("r", &[("a", "ca"), ("b", "cb")], &[("t1", &["a"]), ("t2", &["b"])])], rwo(&["ca", "cb"]));
    w.config.mode = Mode::PipelineRuns;
    let first = w.plan();
    assert_eq!(first.placeholders.len(), 1);
    w.apply(&first, None);
    w.config.mode = Mode::Workspaces;
    let plan = w.plan();
    assert_eq!(plan.runs[0].mode, Mode::PipelineRuns, "the mode it started with");
    assert_eq!(plan.placeholders.len(), 1);
    assert!(plan.delete.is_empty());
}

#[test]
fn disabled_stops_new_placeholders_but_keeps_owned_ones() {
    let owner = run("owner", &[("w", "ca")], &[("t", &["w"])]);
    let mut w = World::new(vec![owner.clone()], rwo(&["ca", "cb"]));
    let first = w.plan();
    w.apply(&first, None);
    w.config.enabled = false;
    let newcomer = run("new", &[("w", "cb")], &[("t", &["w"])]);
    let sharer = run("sharer", &[("w", "ca")], &[("t", &["w"])]);
    w.runs.push(newcomer.clone());
    w.runs.push(sharer.clone());
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1, "no new placeholder");
    assert!(plan.delete.is_empty(), "the owned one stays");
    assert_eq!(plan.placeholders[0].owners.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), vec!["owner"]);
    expect_pin(affinity_assistant::core::decide(&pod(&owner, "t", &["ca"]), &plan, true));
    let s = expect_skip(affinity_assistant::core::decide(&pod(&newcomer, "t", &["cb"]), &plan, true));
    assert_eq!(s.reason, affinity_assistant::core::SkipReason::RunNotManaged);
    // Another run on the owner's claim is not pinned either while disabled.
    expect_skip(affinity_assistant::core::decide(&pod(&sharer, "t", &["ca"]), &plan, true));
}

#[test]
fn placeholders_of_ended_runs_are_deleted() {
    let mut w = World::new(vec![run("r", &[("w", "c")], &[("t", &["w"])])], rwo(&["c"]));
    let first = w.plan();
    w.apply(&first, None);
    w.runs[0].phase = RunPhase::Done;
    let plan = w.plan();
    assert!(plan.placeholders.is_empty());
    assert_eq!(plan.delete, vec![first.placeholders[0].name.clone()]);
}

#[test]
fn a_shared_placeholder_stays_until_the_last_run_ends() {
    let mut w = World::new(
        vec![run("a", &[("w", "c")], &[("t", &["w"])]), run("b", &[("w", "c")], &[("t", &["w"])])],
        rwo(&["c"]),
    );
    let first = w.plan();
    w.apply(&first, None);
    w.runs[0].phase = RunPhase::Done;
    let plan = w.plan();
    assert!(plan.delete.is_empty());
    assert_eq!(
        plan.placeholders[0].owners,
        vec![affinity_assistant::core::placeholder::Owner {
            api_version: "tekton.dev/v1".into(),
            kind: "PipelineRun".into(),
            name: "b".into(),
            uid: "uid-b".into()
        }]
    );
    w.apply(&plan, None);
    w.runs.remove(1);
    assert_eq!(w.plan().delete.len(), 1);
}

#[test]
fn a_run_keeps_its_own_mode_when_sharing_a_placeholder_made_in_another_mode() {
    // Found by the I1 property test: a workspaces-mode run that shares a placeholder created
    // by a pipelineruns-mode run must not take that run's mode when planned again.
    let a = with_mode("a", "pipelineruns", &[("w", "shared")], &[("t", &["w"])]);
    let b = run("b", &[("x", "own"), ("y", "shared")], &[("t", &["y"])]);
    let mut w = World::new(vec![a, b], rwo(&["shared", "own"]));
    let first = w.plan();
    assert_eq!(first.runs[1].mode, Mode::Workspaces);
    w.apply(&first, None);
    let again = w.plan();
    assert_eq!(again.runs[1].mode, Mode::Workspaces);
    assert!(again.placeholders.iter().all(|p| p.create.is_none()));
    let recorded = &again.placeholders[0].run_modes;
    assert_eq!(recorded.get("uid-a"), Some(&Mode::PipelineRuns));
    assert_eq!(recorded.get("uid-b"), Some(&Mode::Workspaces));
}

// --- Claims named when the pod is built (Argo `{{inputs.parameters.x}}`) -------------------------

/// A Workflow whose `use` template mounts a claim named by its input parameter, and a
/// `build` template that mounts the workflow volume `cache` (claim `go-cache`) with it.
fn parameter_workflow(name: &str) -> affinity_assistant::model::Run {
    to_argo_run(&json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS, "uid": uid(name), "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"entrypoint": "main",
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "go-cache"}}],
            "templates": [
                {"name": "main", "steps": [[{"name": "a", "template": "use"}, {"name": "b", "template": "use"}]]},
                {"name": "use", "inputs": {"parameters": [{"name": "pvc"}]},
                    "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}}],
                    "container": {"image": "busybox", "volumeMounts": [{"name": "work", "mountPath": "/work"}]}},
                {"name": "build", "inputs": {"parameters": [{"name": "pvc"}]},
                    "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}}],
                    "container": {"image": "go", "volumeMounts": [{"name": "work", "mountPath": "/work"},
                        {"name": "cache", "mountPath": "/cache"}]}}]},
        "status": {"phase": "Running"}
    }))
}

/// A pod of `run` as Argo builds it: each claim under its template volume's name.
fn argo_pod(
    run: &affinity_assistant::model::Run,
    task: &str,
    volumes: &[(&str, &str)],
) -> affinity_assistant::pod::TaskPod<'static> {
    let claims: Vec<&str> = volumes.iter().map(|(_, c)| *c).collect();
    let mut v = argo_pod_json(run, task, &claims);
    for (i, (volume, _)) in volumes.iter().enumerate() {
        v["spec"]["volumes"][i + 1]["name"] = json!(volume);
    }
    affinity_assistant::pod::TaskPod::from_value(&v).unwrap()
}

/// What the webhook does: the plan, made again with the pod when it names claims the plan
/// has not judged.
fn admit(w: &World, p: &affinity_assistant::pod::TaskPod) -> affinity_assistant::core::Decision {
    use affinity_assistant::core::{decide, pin::unplanned_claims};
    let plan = w.plan();
    if unplanned_claims(p, &plan).is_empty() {
        return decide(p, &plan, true);
    }
    let mut with = w.clone();
    with.mounts.push(p.mounts().expect("a pod of a run"));
    decide(p, &with.plan(), true)
}

#[test]
fn a_claim_named_by_an_input_parameter_is_judged_by_the_pod_that_mounts_it() {
    let run = parameter_workflow("wf");
    let mut w = World::new(vec![run.clone()], rwo(&["shared", "go-cache"]));
    let plan = w.plan();
    let ignored = &plan.runs[0].ignored;
    assert!(
        ignored
            .iter()
            .any(|i| i.reason == IgnoreReason::NamedByPod && i.claim.as_deref() == Some("{{inputs.parameters.pvc}}")),
        "{ignored:?}"
    );
    // Only the workflow volume the `build` template mounts is known before any pod.
    assert_eq!(placeholder_claims(&plan), vec![vec!["go-cache".to_string()]]);

    // The first of two parallel pods: nothing is known of `shared` but the pod itself. (Its
    // volume is one the spec does not name, as a podSpecPatch adds: the claim groups with what
    // the pod mounts, nothing else; `argo_pod` below names volumes as Argo does.)
    let a = pod(&run, "a", &["shared"]);
    let first = expect_pin(admit(&w, &a));
    // The second comes before the first reaches the caches: the same placeholder.
    let b = pod(&run, "b", &["shared"]);
    assert_eq!(expect_pin(admit(&w, &b)).placeholder, first.placeholder);
    assert_eq!(first.claims, vec!["shared".to_string()]);

    // Once the pods are seen, the controller's plan makes that placeholder, owned by the run.
    w.mounts = vec![a.mounts().unwrap(), b.mounts().unwrap()];
    let plan = w.plan();
    let p = plan.placeholder(&first.placeholder).expect("planned from the pods");
    assert_eq!((p.claims.clone(), p.create.is_some()), (name_set(&["shared"]), true));
    assert_eq!(p.owners.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), vec!["wf"]);
    assert_eq!(expect_pin(admit(&w, &pod(&run, "c", &["shared"]))).placeholder, first.placeholder);
}

#[test]
fn a_claim_first_seen_on_a_pod_stays_the_runs_until_the_run_is_done() {
    let run = parameter_workflow("wf");
    let mut w = World::new(vec![run.clone()], rwo(&["shared"]));
    w.mounts = vec![pod(&run, "a", &["shared"]).mounts().unwrap()];
    let plan = w.plan();
    w.apply(&plan, None);
    // The pods finished and left the caches: the placeholder the run owns still holds it, so
    // the next step's pods go to the same node, and nothing is deleted or remade between.
    w.mounts.clear();
    let plan = w.plan();
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
    let held = plan.runs[0].holders.get("shared").cloned().expect("still the run's claim");
    assert_eq!(expect_pin(admit(&w, &pod(&run, "next", &["shared"]))).placeholder, held.to_string());

    let mut done = run.clone();
    done.phase = RunPhase::Done;
    w.runs = vec![done];
    assert_eq!(w.plan().delete, vec![held], "its run is done: it goes");
}

#[test]
fn a_claim_first_seen_on_a_pod_rides_with_the_placeholder_of_the_claims_it_is_mounted_with() {
    let run = parameter_workflow("wf");
    let mut w = World::new(vec![run.clone()], rwo(&["shared", "go-cache"]));
    let plan = w.plan();
    w.apply(&plan, None);
    let cache_holder = plan.placeholders[0].name.to_string();
    let build = pod(&run, "build", &["shared", "go-cache"]);
    assert_eq!(expect_pin(admit(&w, &build)).placeholder, cache_holder);
    w.mounts = vec![build.mounts().unwrap()];
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1, "{:?}", plan.placeholders);
    assert_eq!(plan.runs[0].riders.get("shared").map(|n| n.to_string()), Some(cache_holder));
}

#[test]
fn a_pod_groups_the_claims_it_mounts_together() {
    let run = parameter_workflow("wf");
    let w = World::new(vec![run.clone()], rwo(&["shared", "go-cache"]));
    // The `build` template mounts its parameter claim with the workflow's cache.
    let pin = expect_pin(admit(&w, &pod(&run, "build", &["shared", "go-cache"])));
    assert_eq!(pin.claims, vec!["go-cache".to_string(), "shared".to_string()]);
    let mut with = w.clone();
    with.mounts = vec![pod(&run, "build", &["shared", "go-cache"]).mounts().unwrap()];
    // The spec's placeholder first (the controller makes it before any pod), and the claim the
    // pod names with it rides with it.
    let plan = with.plan();
    assert_eq!(placeholder_claims(&plan), vec![vec!["go-cache".to_string()]]);
    assert_eq!(plan.placeholders[0].riders, name_set(&["shared"]));
    assert_eq!(pin.placeholder, plan.placeholders[0].name.to_string());
}

#[test]
fn pods_of_one_template_with_different_claims_get_a_placeholder_each() {
    // `withItems` over claim names: each pod mounts its own claim, nothing shares a node.
    let run = parameter_workflow("wf");
    let mut w = World::new(vec![run.clone()], rwo(&["pvc-1", "pvc-2"]));
    let one = expect_pin(admit(&w, &pod(&run, "a", &["pvc-1"])));
    let two = expect_pin(admit(&w, &pod(&run, "b", &["pvc-2"])));
    assert_ne!(one.placeholder, two.placeholder);
    w.mounts = vec![pod(&run, "a", &["pvc-1"]).mounts().unwrap(), pod(&run, "b", &["pvc-2"]).mounts().unwrap()];
    assert_eq!(placeholder_claims(&w.plan()), vec![vec!["pvc-1".to_string()], vec!["pvc-2".to_string()]]);
}

#[test]
fn a_claim_first_seen_on_a_pod_keeps_its_holder_across_runs() {
    // I1: another run's placeholder already holds `shared`.
    let other = run("holder", &[("w", "shared")], &[("t", &["w"])]);
    let wf = parameter_workflow("wf");
    let mut w = World::new(vec![other, wf.clone()], rwo(&["shared"]));
    let plan = w.plan();
    w.apply(&plan, None);
    let holder = plan.placeholders[0].name.clone();
    assert_eq!(expect_pin(admit(&w, &pod(&wf, "a", &["shared"]))).placeholder, holder.to_string());
    w.mounts = vec![pod(&wf, "a", &["shared"]).mounts().unwrap()];
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1, "no second holder: {:?}", plan.placeholders);
    let owners: BTreeSet<&str> = plan.placeholders[0].owners.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(owners, BTreeSet::from(["holder", "wf"]));
}

#[test]
fn claims_first_seen_on_a_pod_follow_the_same_access_rules() {
    let run = parameter_workflow("wf");
    let mut claims = rwo(&[]);
    claims.insert("shared-rwx".into(), pvc("shared-rwx", &["ReadWriteMany"]));
    let w = World::new(vec![run.clone()], claims);
    let skip = expect_skip(admit(&w, &pod(&run, "a", &["shared-rwx"])));
    assert_eq!(skip.reason, affinity_assistant::core::SkipReason::NoManagedClaim, "{skip:?}");
    // Not seen at all: not managed until its PVC is (the webhook reads it directly).
    let skip = expect_skip(admit(&w, &pod(&run, "a", &["unseen"])));
    assert_eq!(skip.reason, affinity_assistant::core::SkipReason::NoManagedClaim, "{skip:?}");
}

#[test]
fn a_tekton_pod_mounting_a_claim_outside_its_workspaces_is_not_adopted() {
    // SPEC: a PipelineRun's claims are its workspace bindings; a Task's own volume is not one.
    let r = run("r", &[("w", "a")], &[("t", &["w"])]);
    let mut w = World::new(vec![r.clone()], rwo(&["a", "task-volume"]));
    let p = pod(&r, "t", &["task-volume"]);
    assert!(affinity_assistant::core::pin::unplanned_claims(&p, &w.plan()).is_empty());
    w.mounts = vec![p.mounts().unwrap()];
    assert_eq!(placeholder_claims(&w.plan()), vec![vec!["a".to_string()]]);
    assert_eq!(expect_skip(admit(&w, &p)).reason, affinity_assistant::core::SkipReason::NoManagedClaim);
}

#[test]
fn a_claim_a_pinned_pod_mounts_goes_with_its_placeholder_whichever_run_asks_first() {
    // A younger Workflow's pod (pipelineruns mode: its own placeholder, holding nothing) mounts
    // `shared`, which rides there; then an older Workflow's pod mounts `shared` too. Runs are
    // planned oldest first, but the volume is where the pinned pod runs: it must go there.
    let old = parameter_workflow("old");
    let mut young = parameter_workflow("young");
    young.created = Some("2026-01-02T00:00:00Z".into());
    young.annotations.insert(names::ANNOTATION_MODE.into(), "pipelineruns".into());
    let mut w = World::new(vec![old.clone(), young.clone()], rwo(&["shared", "go-cache"]));
    let plan = w.plan();
    w.apply(&plan, None);
    let home = plan.run("young", None).unwrap().home.clone().expect("young's own placeholder");
    let p = pod(&young, "a", &["shared"]);
    let pin = expect_pin(admit(&w, &p));
    assert_eq!(pin.placeholder, home.to_string());
    w.mounts.push(p.mounts().unwrap());
    w.pinned.push(affinity_assistant::model::PinnedPod {
        name: "young-a".into(),
        run_uid: Some(young.uid.to_string()),
        placeholder: pin.placeholder.clone(),
        claims: BTreeSet::new(),
        mounted: set(&["shared"]),
    });
    let pin = expect_pin(admit(&w, &pod(&old, "b", &["shared"])));
    assert_eq!(pin.placeholder, home.to_string(), "the older run's pod follows the volume");
    assert_eq!(expect_pin(admit(&w, &p)).placeholder, home.to_string());
}

#[test]
fn a_shared_volume_a_pinned_pod_mounts_rides_with_nothing() {
    let r = run("r", &[("w", "a")], &[("t", &["w"])]);
    let mut claims = rwo(&["a"]);
    claims.insert("rwx".into(), pvc("rwx", &["ReadWriteMany"]));
    let mut w = World::new(vec![r], claims);
    let plan = w.plan();
    w.apply(&plan, None);
    w.pinned.push(affinity_assistant::model::PinnedPod {
        name: "r-t".into(),
        run_uid: Some(uid("r")),
        placeholder: plan.placeholders[0].name.to_string(),
        claims: set(&["a"]),
        mounted: set(&["a", "rwx"]),
    });
    let plan = w.plan();
    assert!(plan.placeholders[0].riders.is_empty(), "{:?}", plan.placeholders[0].riders);
}

/// The pinned-pod record the controller's caches hold for a pod the webhook pinned.
fn pinned_record(
    run: &affinity_assistant::model::Run,
    pod_name: &str,
    placeholder: &str,
    held: &[&str],
    mounted: &[&str],
) -> affinity_assistant::model::PinnedPod {
    affinity_assistant::model::PinnedPod {
        name: pod_name.into(),
        run_uid: Some(run.uid.to_string()),
        placeholder: placeholder.into(),
        claims: set(held),
        mounted: set(mounted),
    }
}

#[test]
fn parallel_pods_of_one_workflow_agree_on_the_holder_of_a_claim_only_pods_name() {
    // Argo creates the `use` and `build` pods back to back: each is admitted before the other
    // is in the caches. `build` mounts the parameter's claim with the cache, so whatever claim
    // fills the `work` volume goes with the cache's placeholder, for both pods, in either order.
    for build_first in [true, false] {
        let wf = parameter_workflow("wf");
        let mut w = World::new(vec![wf.clone()], rwo(&["shared", "go-cache"]));
        let plan = w.plan();
        w.apply(&plan, None);
        let cache_holder = plan.placeholders[0].name.to_string();
        let build = argo_pod(&wf, "b", &[("work", "shared"), ("cache", "go-cache")]);
        let use_ = argo_pod(&wf, "a", &[("work", "shared")]);
        let (first, second) = if build_first { (&build, &use_) } else { (&use_, &build) };
        let one = expect_pin(admit(&w, first));
        let two = expect_pin(admit(&w, second));
        assert_eq!((&one.placeholder, &two.placeholder), (&cache_holder, &cache_holder), "build first: {build_first}");
        // The controller, with both pinned pods: nothing else to make, nothing split.
        w.mounts = vec![build.mounts().unwrap(), use_.mounts().unwrap()];
        w.pinned = vec![
            pinned_record(&wf, "b", &cache_holder, &["go-cache"], &["go-cache", "shared"]),
            pinned_record(&wf, "a", &cache_holder, &["go-cache"], &["shared"]),
        ];
        let plan = w.plan();
        assert_eq!(plan.placeholders.len(), 1, "{:?}", plan.placeholders);
        assert!(plan.warnings.is_empty() && plan.runs[0].warnings.is_empty(), "{plan:?}");
    }
}

#[test]
fn a_pod_the_webhook_left_alone_calls_for_no_placeholder() {
    // SPEC: a pod-level annotation opts that pod out. A placeholder made for the volume only it
    // names could take the volume to another node while the pod waits for it.
    let wf = parameter_workflow("wf");
    let mut w = World::new(vec![wf.clone()], rwo(&["shared", "go-cache"]));
    let mut v = argo_pod_json(&wf, "a", &["shared"]);
    v["metadata"]["annotations"][names::ANNOTATION_ENABLED] = json!("false");
    let p = affinity_assistant::pod::TaskPod::from_value(&v).unwrap();
    assert_eq!(expect_skip(admit(&w, &p)).reason, affinity_assistant::core::SkipReason::OptedOut);
    let cached: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).unwrap();
    w.mounts = affinity_assistant::views::mounts_from_pod(&cached).into_iter().collect();
    assert!(w.mounts.is_empty(), "only pinned pods name claims");
    assert_eq!(placeholder_claims(&w.plan()), vec![vec!["go-cache".to_string()]]);
}

#[test]
fn a_gone_placeholder_is_made_again_whichever_pinned_pod_comes_first() {
    // P is pinned to aa-…(a) and also mounts `c`; Q is pinned to a placeholder holding `c`
    // that was deleted. Q's placeholder comes back (I4) in either name order.
    for (kept, gone) in [("aa-a", "aa-z"), ("aa-z", "aa-a")] {
        let r = run("r", &[("w", "a")], &[("t", &["w"])]);
        let other = run("other", &[], &[]);
        let mut w = World::new(vec![r.clone()], rwo(&["a", "c"]));
        w.placeholders.push(affinity_assistant::model::ExistingPlaceholder {
            name: kept.into(),
            claims: name_set(&["a"]),
            owners: vec![affinity_assistant::model::OwnerRun { name: "r".into(), uid: uid("r").into() }],
            pod_exists: true,
            ..Default::default()
        });
        w.pinned =
            vec![pinned_record(&r, "p", kept, &["a"], &["a", "c"]), pinned_record(&other, "q", gone, &["c"], &["c"])];
        let plan = w.plan();
        let made = plan.placeholder(gone).unwrap_or_else(|| panic!("{gone} not made again: {:?}", plan.warnings));
        assert_eq!(made.claims, name_set(&["c"]));
        assert!(plan.placeholder(kept).unwrap().riders.is_empty(), "`c` has its holder");
    }
}

#[test]
fn a_claim_a_pinned_pod_mounts_is_not_carried_where_its_volume_cannot_be_used() {
    let mut w = World::new(vec![run("a", &[("w", "cache")], &[("t", &["w"])])], rwo(&["cache", "src"]));
    let first = w.plan();
    let node = node_in_zone("node-b", "zone-b");
    w.apply(&first, Some(&node));
    let holder = first.placeholders[0].name.to_string();
    let b = run("b", &[("c", "cache"), ("s", "src")], &[("build", &["c", "s"]), ("test", &["c", "s"])]);
    w.runs.push(b.clone());
    // `src` rides while unbound, and the first pod is pinned; then its volume binds in zone-a.
    assert_eq!(expect_pin(admit(&w, &pod(&b, "build", &["cache", "src"]))).placeholder, holder);
    w.pinned.push(pinned_record(&b, "b-build", &holder, &["cache"], &["cache", "src"]));
    let src = w.claims.get_mut("src").unwrap();
    src.bound = true;
    src.volume_node_affinity = Some(in_zone("zone-a"));
    let plan = w.plan();
    assert!(plan.run("b", None).unwrap().unpinnable.contains_key("src"), "{:?}", plan.run("b", None));
    let skip = expect_skip(affinity_assistant::core::decide(&pod(&b, "test", &["cache", "src"]), &plan, true));
    assert_eq!(skip.reason, affinity_assistant::core::SkipReason::VolumeExcluded);
}

/// A `pipelineruns`-mode Workflow whose claims are all named by its pods.
fn per_run_parameter_workflow(name: &str) -> affinity_assistant::model::Run {
    let mut run = parameter_workflow(name);
    run.created = Some("2026-01-02T00:00:00Z".into());
    run.annotations.insert(names::ANNOTATION_MODE.into(), "pipelineruns".into());
    run.bindings.retain(|b| b.source.claim().is_none());
    run
}

#[test]
fn a_per_run_workflow_whose_pods_name_its_claims_rides_with_the_holder_of_a_claim_held_elsewhere() {
    let holder_run = run("holder", &[("w", "shared")], &[("t", &["w"])]);
    let wf = per_run_parameter_workflow("wf");
    let mut w = World::new(vec![holder_run, wf.clone()], rwo(&["shared", "scratch"]));
    let plan = w.plan();
    w.apply(&plan, None);
    let shared_holder = plan.run("holder", None).unwrap().holders["shared"].to_string();
    // No claimless placeholder before its pods name claims: it could sit where their volumes
    // cannot be used.
    assert_eq!(plan.run("wf", None).unwrap().home, None);
    assert_eq!(plan.placeholders.len(), 1);
    // A pod mounts the held claim and a new one: both go to the holder, not split.
    let p = pod(&wf, "b", &["shared", "scratch"]);
    assert_eq!(expect_pin(admit(&w, &p)).placeholder, shared_holder);
    w.mounts.push(p.mounts().unwrap());
    let plan = w.plan();
    let rp = plan.run("wf", None).unwrap();
    assert!(rp.warnings.is_empty(), "{:?}", rp.warnings);
    assert_eq!(rp.home.as_ref().map(|h| h.to_string()), Some(shared_holder), "the run's one placeholder");
    assert_eq!(rp.riders.keys().map(|c| c.as_str()).collect::<Vec<_>>(), vec!["scratch"]);
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
}

#[test]
fn first_wave_pods_naming_different_claims_go_to_the_placeholder_the_spec_makes() {
    // A Workflow's volumeClaimTemplate `workdir` and, per fanned-out step, a claim named by an
    // input parameter under the `data` volume. Argo creates the first pods before the
    // controller has made the workdir's placeholder, back to back: each is decided without the
    // other. Both go to the placeholder the spec alone calls for, named after `workdir`.
    let wf = to_argo_run(&json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "wf", "namespace": NS, "uid": uid("wf"), "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"entrypoint": "main",
            "volumeClaimTemplates": [{"metadata": {"name": "workdir"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            "templates": [
                {"name": "main", "steps": [[{"name": "t", "template": "use", "withItems": ["x", "y"]}]]},
                {"name": "use", "inputs": {"parameters": [{"name": "pvc"}]},
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}}],
                    "container": {"image": "busybox", "volumeMounts": [{"name": "workdir", "mountPath": "/w"},
                        {"name": "data", "mountPath": "/d"}]}}]}
    }));
    let mut w = World::new(vec![wf.clone()], rwo(&["wf-workdir", "data-x", "data-y"]));
    let spec_placeholder = w.plan().placeholders[0].name.to_string();
    let x = argo_pod(&wf, "t-x", &[("workdir", "wf-workdir"), ("data", "data-x")]);
    let y = argo_pod(&wf, "t-y", &[("workdir", "wf-workdir"), ("data", "data-y")]);
    let (px, py) = (expect_pin(admit(&w, &x)), expect_pin(admit(&w, &y)));
    assert_eq!(
        (px.placeholder.as_str(), py.placeholder.as_str()),
        (spec_placeholder.as_str(), spec_placeholder.as_str())
    );
    // The controller, with both pinned (x's annotation recorded what x's plan would have held).
    w.mounts = vec![x.mounts().unwrap(), y.mounts().unwrap()];
    w.pinned = vec![
        pinned_record(&wf, "t-x", &px.placeholder, &["data-x", "wf-workdir"], &["data-x", "wf-workdir"]),
        pinned_record(&wf, "t-y", &py.placeholder, &["data-y", "wf-workdir"], &["data-y", "wf-workdir"]),
    ];
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1, "{:?}", plan.placeholders);
    let p = &plan.placeholders[0];
    assert_eq!(p.name.as_str(), spec_placeholder);
    let carried: BTreeSet<Name> = p.claims.iter().chain(&p.riders).cloned().collect();
    assert_eq!(carried, name_set(&["data-x", "data-y", "wf-workdir"]));
    assert!(plan.warnings.is_empty() && plan.runs[0].warnings.is_empty(), "{:?}", plan);
}

#[test]
fn pods_of_a_template_from_another_workflow_template_are_pinned_by_what_they_mount() {
    // Steps with `templateRef` run a template of another WorkflowTemplate: nothing in this
    // Workflow's own templates mounts its volumeClaimTemplate, so only its pods say so.
    let wf = to_argo_run(&json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "wf", "namespace": NS, "uid": uid("wf"), "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"entrypoint": "main",
            "volumeClaimTemplates": [{"metadata": {"name": "workdir"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            "templates": [{"name": "main", "steps": [[
                {"name": "a", "templateRef": {"name": "ci-lib", "template": "test"}},
                {"name": "b", "templateRef": {"name": "ci-lib", "template": "test"}}]]}]}
    }));
    let mut w = World::new(vec![wf.clone()], rwo(&["wf-workdir"]));
    assert!(w.plan().placeholders.is_empty(), "no template of its own mounts the claim");
    let a = argo_pod(&wf, "a", &[("workdir", "wf-workdir")]);
    let b = argo_pod(&wf, "b", &[("workdir", "wf-workdir")]);
    let (pa, pb) = (expect_pin(admit(&w, &a)), expect_pin(admit(&w, &b)));
    assert_eq!(pa.placeholder, pb.placeholder);
    w.mounts = vec![a.mounts().unwrap()];
    w.pinned = vec![pinned_record(&wf, "a", &pa.placeholder, &["wf-workdir"], &["wf-workdir"])];
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1);
    assert_eq!(plan.placeholders[0].name.as_str(), pa.placeholder);
    w.apply(&plan, None);
    // The pods finished: the Workflow keeps the placeholder it owns for its next steps.
    w.mounts.clear();
    w.pinned.clear();
    let plan = w.plan();
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
    assert_eq!(expect_pin(admit(&w, &argo_pod(&wf, "c", &[("workdir", "wf-workdir")]))).placeholder, pa.placeholder);
}
