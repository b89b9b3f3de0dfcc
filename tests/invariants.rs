//! Invariants I1-I6 (SPEC "Invariants"), over hand-picked and generated namespaces.

mod common;

use affinity_assistant::config::Mode;
use affinity_assistant::core::{Decision, Plan, SkipReason, decide, pin::is_pin_term};
use affinity_assistant::model::{ClaimSource, ExistingPlaceholder, Name, PinnedPod, Run, RunPhase};
use affinity_assistant::names;
use affinity_assistant::pod::TaskPod;
use common::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

// --- Generators ---------------------------------------------------------------------------------

const CLAIMS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];

#[derive(Debug, Clone)]
struct RunSpec {
    bindings: Vec<usize>,
    tasks: Vec<Vec<usize>>,
    mode: Option<Mode>,
    active: bool,
    /// An Argo Workflow rather than a Tekton PipelineRun: every invariant holds for both.
    argo: bool,
    /// Argo: bit `j` set makes volume `w{j}` name its claim by an input parameter (the claim
    /// is then only known from the pods that mount it).
    params: u8,
}

fn run_spec() -> impl Strategy<Value = RunSpec> {
    (
        proptest::collection::vec(0..CLAIMS.len(), 0..4),
        proptest::collection::vec(proptest::collection::vec(0..4usize, 0..3), 0..4),
        prop_oneof![
            Just(None),
            Just(Some(Mode::Workspaces)),
            Just(Some(Mode::PipelineRuns)),
            Just(Some(Mode::IsolatePipelineRun))
        ],
        prop_oneof![4 => Just(true), 1 => Just(false)],
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(|(bindings, tasks, mode, active, argo, params)| RunSpec {
            bindings,
            tasks,
            mode,
            active,
            argo,
            params,
        })
}

fn build_run(i: usize, spec: &RunSpec) -> Run {
    let ws: Vec<String> = (0..spec.bindings.len()).map(|j| format!("w{j}")).collect();
    let bindings: Vec<(&str, &str)> =
        spec.bindings.iter().enumerate().map(|(j, &c)| (ws[j].as_str(), CLAIMS[c])).collect();
    let task_ws: Vec<Vec<&str>> =
        spec.tasks.iter().map(|t| t.iter().filter(|&&k| k < ws.len()).map(|&k| ws[k].as_str()).collect()).collect();
    let names: Vec<String> = (0..task_ws.len()).map(|t| format!("t{t}")).collect();
    let tasks: Vec<(&str, &[&str])> = names.iter().zip(&task_ws).map(|(n, w)| (n.as_str(), w.as_slice())).collect();
    let name = format!("run-{i}");
    let mut v = if spec.argo { workflow_json(&name, &bindings, &tasks) } else { run_json(&name, &bindings, &tasks) };
    if spec.argo {
        for j in (0..bindings.len()).filter(|j| spec.params & (1 << j) != 0) {
            v["spec"]["volumes"][j]["persistentVolumeClaim"]["claimName"] = json!("{{inputs.parameters.pvc}}");
        }
    }
    v["metadata"]["creationTimestamp"] = json!(format!("2026-01-01T00:{:02}:00Z", i % 60));
    if let Some(m) = spec.mode {
        v["metadata"]["annotations"][names::ANNOTATION_MODE] = json!(m.as_str());
    }
    let mut r = if spec.argo { to_argo_run(&v) } else { to_run(&v) };
    if !spec.active {
        r.phase = RunPhase::Done;
    }
    r
}

fn claims_for(modes: &[u8]) -> BTreeMap<String, affinity_assistant::model::ClaimInfo> {
    CLAIMS
        .iter()
        .zip(modes)
        .map(|(c, m)| {
            let modes: &[&str] = match m % 5 {
                0..=2 => &["ReadWriteOnce"],
                3 => &["ReadWriteMany"],
                _ => &["ReadWriteOncePod"],
            };
            (c.to_string(), pvc(c, modes))
        })
        .collect()
}

/// A namespace reached the way a controller reaches it: an earlier set of runs was planned
/// and applied, then more runs arrived.
fn world() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec(run_spec(), 0..5),
        proptest::collection::vec(run_spec(), 0..5),
        proptest::collection::vec(any::<u8>(), CLAIMS.len()),
        any::<bool>(),
    )
        .prop_map(|(first, later, modes, disable_later)| {
            let claims = claims_for(&modes);
            let first_runs: Vec<Run> = first.iter().enumerate().map(|(i, s)| build_run(i, s)).collect();
            let mut w = World::new(first_runs, claims);
            let plan = w.plan();
            w.apply(&plan, None);
            let n = w.runs.len();
            w.runs.extend(later.iter().enumerate().map(|(i, s)| build_run(n + i, s)));
            w.config.enabled = !disable_later;
            w
        })
}

fn check_i1(plan: &Plan) -> Result<(), TestCaseError> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &plan.placeholders {
        for c in &p.claims {
            if let Some(other) = seen.insert(c, &p.name) {
                return Err(TestCaseError::fail(format!("I1: claim {c} in {other} and {}", p.name)));
            }
        }
    }
    Ok(())
}

/// A placeholder as the order-independence test compares it: name, claims, owner uids, new.
type PlaceholderSummary = (Name, BTreeSet<Name>, Vec<Name>, bool);

/// What a plan says, independent of the order its inputs came in.
fn summary(plan: &Plan) -> (Vec<PlaceholderSummary>, Vec<Name>) {
    (
        plan.placeholders
            .iter()
            .map(|p| {
                (p.name.clone(), p.claims.clone(), p.owners.iter().map(|o| o.uid.clone()).collect(), p.create.is_some())
            })
            .collect(),
        plan.delete.clone(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// I1, and I3: existing placeholders are kept exactly as they are, never re-made.
    #[test]
    fn i1_one_holder_per_claim_and_i3_existing_untouched(w in world()) {
        let plan = w.plan();
        check_i1(&plan)?;
        for e in &w.placeholders {
            if let Some(p) = plan.placeholder(&e.name) {
                prop_assert!(p.create.is_none(), "I3: {} would be re-created", e.name);
                prop_assert_eq!(&p.claims, &e.claims, "I3: claim set of {} changed", &e.name);
            } else {
                prop_assert!(plan.delete.contains(&e.name));
            }
        }
        // I6: only placeholders are ever deleted.
        let existing: BTreeSet<&str> = w.placeholders.iter().map(|p| p.name.as_str()).collect();
        prop_assert!(plan.delete.iter().all(|d| existing.contains(d.as_str())));
        // Carrying the plan out and planning again is stable (a restart changes nothing).
        let mut after = w.clone();
        after.apply(&plan, None);
        let again = after.plan();
        check_i1(&again)?;
        prop_assert!(again.placeholders.iter().all(|p| p.create.is_none()), "converged plan creates nothing");
        prop_assert!(again.delete.is_empty());
    }

    /// Grouping does not depend on the order runs, claims and placeholders are listed in.
    #[test]
    fn grouping_does_not_depend_on_input_order(w in world(), seed in any::<u64>()) {
        let mut shuffled = w.clone();
        let mut rng = seed;
        let mut next = move |n: usize| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as usize % n.max(1) };
        for i in (1..shuffled.runs.len()).rev() { let j = next(i + 1); shuffled.runs.swap(i, j); }
        for i in (1..shuffled.placeholders.len()).rev() { let j = next(i + 1); shuffled.placeholders.swap(i, j); }
        prop_assert_eq!(summary(&w.plan()), summary(&shuffled.plan()));
    }

    /// I2: a pinned pod has exactly one added term, hostname, selecting one placeholder by id,
    /// which holds every managed claim the pod mounts; every pre-existing term is kept.
    #[test]
    fn i2_one_term_per_pod_and_existing_terms_kept(w in world(), pre in proptest::collection::vec(0..3u8, 0..4)) {
        let plan = w.plan();
        for r in &w.runs {
            let claims = affinity_assistant::core::claims::task_claims(r);
            for (task, mounted) in claims {
                let mounted: Vec<&str> = mounted.iter().map(String::as_str).collect();
                let mut v = pod_json(r, task, &mounted);
                let mut pre_affinity = json!({});
                for (k, kind) in pre.iter().enumerate() {
                    let term = json!({"labelSelector": {"matchLabels": {"k": format!("v{k}")}}, "topologyKey": "kubernetes.io/hostname"});
                    match kind {
                        0 => pre_affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!([term]),
                        1 => pre_affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = json!([{"weight": 1, "podAffinityTerm": term}]),
                        _ => pre_affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = json!([{"weight": 1, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}]),
                    }
                }
                if !pre.is_empty() { v["spec"]["affinity"] = pre_affinity.clone(); }
                let pod = TaskPod::from_value(&v).unwrap();
                if let Decision::Pin(pin) = decide(&pod, &plan, true) {
                    let patched = apply_patch(&v, &pin);
                    let required = patched["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().unwrap().clone();
                    prop_assert_eq!(required.len(), 1);
                    let term: k8s_openapi::api::core::v1::PodAffinityTerm = serde_json::from_value(required[0].clone()).unwrap();
                    prop_assert!(is_pin_term(&term));
                    prop_assert_eq!(&term.topology_key, names::TOPOLOGY_HOSTNAME);
                    let holder = plan.placeholder(&pin.placeholder).expect("pinned to a planned placeholder");
                    let rp = plan.run(&r.name, Some(&r.uid)).unwrap();
                    for c in &mounted {
                        if rp.claims.iter().any(|m| m.name == *c) {
                            // I2: it holds the claim, or the claim rides with it (held by nobody else).
                            let rides = holder.riders.contains(*c)
                                && plan.placeholders.iter().all(|p| !p.claims.contains(*c));
                            prop_assert!(holder.claims.contains(*c) || rides, "I2: {} neither holds nor carries {}", &holder.name, c);
                            prop_assert!(!holder.claims.contains(*c) || !holder.riders.contains(*c));
                        }
                    }
                    if !pre.is_empty() {
                        for key in ["podAntiAffinity", "nodeAffinity"] {
                            prop_assert_eq!(&patched["spec"]["affinity"][key], &pre_affinity[key]);
                        }
                        prop_assert_eq!(&patched["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
                            &pre_affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]);
                    }
                    // I4 precondition: the pod's placeholder is one the plan keeps or creates.
                    prop_assert!(!plan.delete.iter().any(|d| *d == pin.placeholder));
                }
            }
        }
    }

    /// Claims first seen on a pod (an Argo claim named when the pod is built): pods admitted one
    /// after another, each decided as the webhook does (planned again with the pod when it names
    /// claims the plan has not judged). A pod reaches the caches at once, or only after later
    /// pods were admitted (Argo creates a step group's pods back to back), and the controller
    /// sometimes carries out its plan between two. Every pin keeps I1 and I2 in the plan it was
    /// made with; once all pinned pods are in the caches, the controller's plan keeps I1 and
    /// keeps or creates every placeholder a pod was pinned to (I4), and a pod admitted again
    /// goes to the same one.
    #[test]
    fn claims_first_seen_on_pods_keep_i1_i2_and_i4(
        w in world(),
        pods in proptest::collection::vec(
            (0..10usize, proptest::collection::btree_set(0..CLAIMS.len(), 1..3), any::<bool>(), any::<bool>(), any::<bool>()), 0..8),
    ) {
        use affinity_assistant::core::pin::unplanned_claims;
        let mut w = w;
        let argo: Vec<Run> = w.runs.iter().filter(|r| r.engine == "argo").cloned().collect();
        prop_assume!(!argo.is_empty());
        let mut pinned: Vec<(TaskPod<'static>, String)> = Vec::new();
        let mut in_flight: Vec<(affinity_assistant::model::PodMounts, PinnedPod)> = Vec::new();
        for (k, (r, picks, from_template, seen, apply)) in pods.iter().enumerate() {
            let run = &argo[r % argo.len()];
            // A pod as Argo builds it for one of the run's templates: its volumes named after the
            // template's, a parameter volume filled with a picked claim. Or, admitted only once
            // the pod before it is in the caches, any claims under any volume names (what a
            // podSpecPatch can do; racing such pods is a documented limitation).
            let task = run.tasks.get(*r % run.tasks.len().max(1)).filter(|_| *from_template);
            let volumes: Vec<(String, &str)> = match task {
                Some(task) => {
                    let mut picked = picks.iter().cycle();
                    run.bindings
                        .iter()
                        .filter(|b| task.workspaces.as_ref().is_none_or(|ws| ws.iter().any(|w| *w == b.workspace)))
                        .filter_map(|b| match &b.source {
                            ClaimSource::Claim(c) => Some((b.workspace.to_string(), CLAIMS.iter().copied().find(|x| *x == c.as_str())?)),
                            ClaimSource::NamedByPod { volume, .. } => Some((volume.to_string(), CLAIMS[*picked.next()?])),
                            _ => None,
                        })
                        .collect()
                }
                None => picks.iter().map(|&c| (format!("w{}", c % 4), CLAIMS[c])).collect(),
            };
            let mut volumes = volumes;
            volumes.sort_by(|a, b| a.1.cmp(b.1));
            volumes.dedup_by(|a, b| a.1 == b.1);
            if volumes.is_empty() {
                continue;
            }
            let seen = *seen || task.is_none();
            if task.is_none() {
                for (m, p) in in_flight.drain(..) {
                    w.mounts.push(m);
                    w.pinned.push(p);
                }
            }
            let mounted: Vec<&str> = volumes.iter().map(|(_, c)| *c).collect();
            let mut v = pod_json(run, &format!("p{k}"), &mounted);
            for (i, (volume, _)) in volumes.iter().enumerate() {
                v["spec"]["volumes"][i + 1]["name"] = json!(volume);
            }
            let pod = TaskPod::from_value(&v).unwrap();
            let cached = w.plan();
            let plan = if unplanned_claims(&pod, &cached).is_empty() {
                cached
            } else {
                let mut with = w.clone();
                with.mounts.push(pod.mounts().unwrap());
                with.plan()
            };
            check_i1(&plan)?;
            if let Decision::Pin(pin) = decide(&pod, &plan, true) {
                let holder = plan.placeholder(&pin.placeholder).expect("pinned to a planned placeholder");
                let rp = plan.run(&run.name, Some(&run.uid)).unwrap();
                for c in &mounted {
                    if rp.claims.iter().any(|m| m.name == *c) {
                        prop_assert!(holder.claims.contains(*c) || holder.riders.contains(*c), "I2: {} neither holds nor carries {}", &holder.name, c);
                    }
                }
                // Only a pinned pod names claims to the controller (its caches read them of pinned pods).
                let record = PinnedPod {
                    name: format!("p{k}"),
                    run_uid: Some(run.uid.to_string()),
                    placeholder: pin.placeholder.clone(),
                    claims: holder.claims.iter().map(|c| c.to_string()).collect(),
                    mounted: mounted.iter().map(|c| c.to_string()).collect(),
                };
                in_flight.push((pod.mounts().unwrap(), record));
                pinned.push((pod, pin.placeholder.clone()));
            }
            if seen {
                for (m, p) in in_flight.drain(..) {
                    w.mounts.push(m);
                    w.pinned.push(p);
                }
            }
            if *apply {
                let plan = w.plan();
                check_i1(&plan)?;
                w.apply(&plan, None);
            }
        }
        for (m, p) in in_flight.drain(..) {
            w.mounts.push(m);
            w.pinned.push(p);
        }
        let plan = w.plan();
        check_i1(&plan)?;
        for (_, placeholder) in &pinned {
            prop_assert!(plan.placeholder(placeholder).is_some() && !plan.delete.iter().any(|d| d == placeholder),
                "I4: nothing would make {} again: {:?}", placeholder, plan.warnings);
        }
        w.apply(&plan, None);
        let plan = w.plan();
        for (pod, placeholder) in &pinned {
            if let Decision::Pin(pin) = decide(pod, &plan, true) {
                prop_assert_eq!(&pin.placeholder, placeholder, "a pod admitted again goes elsewhere");
            }
        }
    }

    /// I6: pods of no pipeline run are never mutated, whatever their labels.
    #[test]
    fn i6_other_pods_are_never_mutated(labels in proptest::collection::btree_map("[a-z./-]{1,20}", "[a-z0-9]{0,10}", 0..5), w in world()) {
        prop_assume!(!labels.contains_key("tekton.dev/pipelineRun"));
        let v = json!({"metadata": {"name": "web", "namespace": NS, "labels": labels},
            "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c0"}}]}});
        let d = decide(&TaskPod::from_value(&v).unwrap(), &w.plan(), true);
        prop_assert!(matches!(d, Decision::Skip(_)));
    }
}

// --- I4: pinned pods are demand ---------------------------------------------------------------------

fn pinned(name: &str, run: Option<&str>, placeholder: &str, claims: &[&str]) -> PinnedPod {
    PinnedPod {
        name: name.into(),
        run_uid: run.map(uid),
        placeholder: placeholder.into(),
        claims: set(claims),
        mounted: set(claims),
    }
}

#[test]
fn i4_placeholder_kept_while_a_pinned_pod_runs_after_its_run_was_deleted() {
    let mut w = World::new(vec![run("r", &[("w", "c")], &[("t", &["w"])])], rwo(&["c"]));
    let first = w.plan();
    w.apply(&first, None);
    let name = first.placeholders[0].name.clone();
    w.runs.clear();
    w.pinned = vec![pinned("r-t-pod", Some("r"), &name, &["c"])];
    let plan = w.plan();
    assert!(plan.delete.is_empty());
    assert_eq!(plan.placeholders[0].pinned_pods, vec!["r-t-pod".to_string()]);
    w.pinned.clear();
    assert_eq!(w.plan().delete, vec![name], "removed once the pod finished");
}

#[test]
fn i4_a_deleted_placeholder_is_recreated_from_the_pods_annotation_whatever_the_config() {
    let mut w = World::new(vec![], rwo(&["c", "d"]));
    w.config.enabled = false;
    w.config.mode = Mode::PipelineRuns;
    w.pinned = vec![pinned("p", None, "aa-c-0123456789", &["c", "d"])];
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1);
    let p = &plan.placeholders[0];
    assert_eq!(p.name, "aa-c-0123456789");
    assert_eq!(p.claims, name_set(&["c", "d"]));
    assert!(p.create.is_some());
    check_i1(&plan).unwrap();
}

#[test]
fn i4_recreation_never_breaks_i1() {
    let mut w = World::new(vec![run("r", &[("w", "c")], &[("t", &["w"])])], rwo(&["c"]));
    let first = w.plan();
    w.apply(&first, None);
    w.pinned = vec![pinned("old", None, "aa-gone-0123456789", &["c"])];
    let plan = w.plan();
    check_i1(&plan).unwrap();
    assert!(plan.warnings.iter().any(|m| m.contains("aa-gone-0123456789") && m.contains("old")), "{:?}", plan.warnings);
    // The pod's placeholder is made again without the claim, next to the one that holds it:
    // the pod still runs where its volume is (I4, I5), nothing mounts `c` twice (I1).
    let holder = first.placeholders[0].name.clone();
    let again = plan.placeholder("aa-gone-0123456789").expect("made again");
    assert!(again.claims.is_empty());
    let sts = again.statefulset(NS, &w.config).expect("to create");
    let affinity = sts.spec.unwrap().template.spec.unwrap().affinity.unwrap();
    let required = affinity.pod_affinity.unwrap().required_during_scheduling_ignored_during_execution.unwrap();
    assert_eq!(required, vec![affinity_assistant::core::pin::pin_term(&holder)]);
    assert!(affinity.pod_anti_affinity.is_none(), "it must be able to share the node");
}

#[test]
fn i4_a_placeholder_whose_claims_two_others_took_is_not_made_again() {
    let r = run("r", &[("w", "c"), ("v", "d")], &[("t", &["w"]), ("u", &["v"])]);
    let mut w = World::new(vec![r], rwo(&["c", "d"]));
    let first = w.plan();
    w.apply(&first, None);
    assert_eq!(first.placeholders.len(), 2);
    w.pinned = vec![pinned("old", None, "aa-gone-0123456789", &["c", "d"])];
    let plan = w.plan();
    check_i1(&plan).unwrap();
    assert!(plan.placeholder("aa-gone-0123456789").is_none());
    assert!(
        plan.warnings.iter().any(|m| m.contains("aa-gone-0123456789") && m.contains(" and ")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn i4_pinned_pods_come_before_new_runs() {
    // A pod was pinned to a placeholder (say, by a webhook that saw run b first); the
    // controller honours that before planning runs, so the pod is never stranded.
    let a = run("a", &[("w", "c")], &[("t", &["w"])]);
    let b = run("b", &[("w", "c")], &[("t", &["w"])]);
    let mut w = World::new(vec![a, b.clone()], rwo(&["c"]));
    let expected = w.plan().placeholders[0].name.clone();
    w.pinned = vec![pinned("b-t-pod", Some("b"), &expected, &["c"])];
    let plan = w.plan();
    assert_eq!(plan.placeholders.len(), 1);
    assert_eq!(plan.placeholders[0].name, expected);
    assert_eq!(plan.placeholders[0].owners.len(), 2);
}

// --- I1 when someone else broke it ----------------------------------------------------------------

#[test]
fn i1_a_claim_already_held_twice_is_reported_and_pods_go_to_one_holder() {
    let r = run("r", &[("w", "c")], &[("t", &["w"])]);
    let mut w = World::new(vec![r.clone()], rwo(&["c"]));
    for name in ["aa-one", "aa-two"] {
        w.placeholders.push(ExistingPlaceholder { name: name.into(), claims: name_set(&["c"]), ..Default::default() });
    }
    let plan = w.plan();
    assert!(plan.warnings.iter().any(|m| m.contains("aa-one") && m.contains("aa-two")));
    let pin = expect_pin(decide(&pod(&r, "t", &["c"]), &plan, true));
    assert_eq!(pin.placeholder, "aa-one");
    assert_eq!(plan.delete, vec!["aa-two".to_string()], "the extra holder goes once nothing needs it");
}

// --- I5 summary: each never-pinned case warns ---------------------------------------------------------

#[test]
fn i5_every_never_pin_case_warns() {
    for r in [
        SkipReason::OwnPodAffinity,
        SkipReason::NodeExcluded,
        SkipReason::ClaimsSplit,
        SkipReason::NoController,
        SkipReason::RunNotFound,
    ] {
        assert!(r.warns(), "{r:?}");
    }
    for r in [SkipReason::NotTaskPod, SkipReason::OptedOut, SkipReason::AlreadyPinned, SkipReason::Placeholder] {
        assert!(!r.warns(), "{r:?}");
    }
}
