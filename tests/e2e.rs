//! End-to-end suite: the add-on against a real kube-apiserver, kube-controller-manager and
//! kube-scheduler, asserting on real scheduling decisions (`spec.nodeName`).
//!
//! # What it needs
//!
//! - A cluster reachable through the kubeconfig file at `E2E_KUBECONFIG` (context
//!   `E2E_CONTEXT`, default the current one), with admin rights: the suite creates namespaces,
//!   PersistentVolumes and, when missing, the Tekton CRDs; it cordons a node.
//! - The add-on running, either installed in the cluster or outside it with
//!   `affinity-assistant run --webhook-url https://HOST:PORT/mutate/pods` (`hack/e2e.sh` with
//!   `E2E_LOCAL_ADDON=1` does that). Every test first checks that a controller holds the
//!   add-on's leader Lease and that a webhook configuration sends task pods to it.
//! - Tekton, real or not. With a Tekton controller (`E2E_TEKTON=real`, or detected) the suite
//!   creates PipelineRuns and lets Tekton make TaskRuns and pods; Tekton's `coschedule` must be
//!   `disabled`. Without one the suite applies the real Tekton CRDs from
//!   `tests/fixtures/tekton/crds` and plays Tekton's part exactly (see `e2e/tekton.rs`).
//! - Argo Workflows, real or not, for the `argo_*` tests: with Argo's controller (`E2E_ARGO=real`,
//!   or detected) the suite creates Workflows and Argo makes PVCs and pods; without one it applies
//!   Argo's minimal CRDs from `tests/fixtures/argo/crds` and plays Argo's part (`e2e/argo.rs`).
//! - No volume provisioner: every claim is bound to a static `hostPath` PersistentVolume.
//! - No kubelet. The suite never waits for a pod to run, only for the scheduler to bind it;
//!   where a kubelet would finish a graceful deletion, a stand-in does (`e2e/env.rs`). So it
//!   also passes on a control plane whose nodes run no kubelet (e.g. nodes simulated by kwok).
//!
//! # How to run
//!
//! ```sh
//! E2E_KUBECONFIG=~/.kube/config hack/e2e.sh                      # add-on installed
//! E2E_KUBECONFIG=~/.kube/config E2E_LOCAL_ADDON=1 hack/e2e.sh    # add-on run from this tree
//! ```
//!
//! or directly `E2E_KUBECONFIG=... cargo test --test e2e -- --ignored --test-threads=1`.
//! Plain `cargo test` compiles the suite, runs its unit tests and reports the cluster tests as
//! ignored; `cluster_connection_or_skip` says why. It also runs the same scenario bodies
//! offline (`e2e/offline.rs`): against the in-memory API server of `tests/support`, with the
//! add-on's real controller and webhook logic, which checks the suite's own logic but not
//! scheduling. `docs/e2e.md` lists every setting, the kind
//! recipe with real Tekton, and what each test proves.
//!
//! # Hygiene
//!
//! Each test works in namespaces of its own (`aa-e2e-<test>-<random>`, labelled
//! `e2e.affinity-assistant.dev/suite=true`) and deletes them, its PersistentVolumes and its
//! cordons when it ends, passed or failed. An interrupted run leaves labelled leftovers that
//! `hack/e2e.sh cleanup` removes. Tests that cordon nodes or count placeholders per node take
//! the cluster exclusively, so any `--test-threads` is safe.

// The crate root of a test target looks for modules beside it; these live in tests/e2e/.
#[path = "support/admission.rs"]
mod admission;
#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "e2e/argo.rs"]
mod argo;
#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/env.rs"]
mod env;
#[path = "e2e/offline.rs"]
mod offline;
#[path = "e2e/storage.rs"]
mod storage;
#[path = "e2e/tekton.rs"]
mod tekton;
#[path = "support/world.rs"]
mod world;

use affinity_assistant::names;
use anyhow::{Context as _, anyhow, bail, ensure};
use argo::{StartedWorkflow, WorkflowSpec};
use cluster::{check_pinned, check_untouched, node_of, placeholder_claims};
use env::{Access, Check, Env, Settings, holds_for, scenario, wait_for};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use storage::Backing;
use tekton::{Mode, RunSpec, StartedRun};

const RWO: &str = "ReadWriteOnce";
const RWX: &str = "ReadWriteMany";

/// Runs on every `cargo test`: without `E2E_KUBECONFIG` it explains how to run the suite and
/// passes; with it, it checks the cluster answers.
#[tokio::test]
async fn cluster_connection_or_skip() {
    let settings = match Settings::from_env() {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "e2e: SKIPPED: E2E_KUBECONFIG is not set. The end-to-end tests are #[ignore]d and need a cluster \
                 with the add-on: E2E_KUBECONFIG=~/.kube/config hack/e2e.sh (see docs/e2e.md)"
            );
            return;
        }
        Err(e) => panic!("e2e: bad setting: {e}"),
    };
    let client = env::client(&settings).await.unwrap_or_else(|e| panic!("e2e: {e:#}"));
    let version = client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("e2e: cannot reach the API server of {}: {e}", settings.kubeconfig.display()));
    let nodes = cluster::schedulable_nodes(&client).await.unwrap_or_else(|e| panic!("e2e: {e:#}"));
    eprintln!(
        "e2e: connected to Kubernetes {} through {}; schedulable nodes: {nodes:?}",
        version.git_version,
        settings.kubeconfig.display()
    );
}

/// Installs the Tekton and Argo CRDs when missing (and, for `E2E_LOCAL_ADDON=1`, the add-on's
/// namespace): `hack/e2e.sh` runs this before it starts a local add-on, so the add-on finds
/// the CRDs it watches.
#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn prepare_cluster() {
    let settings = Settings::required().unwrap_or_else(|e| panic!("{e:#}"));
    let client = env::client(&settings).await.unwrap_or_else(|e| panic!("{e:#}"));
    tekton::ensure_crds(&client, settings.timeout).await.unwrap_or_else(|e| panic!("installing Tekton's CRDs: {e:#}"));
    if settings.local_addon {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(settings.addon_namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => eprintln!("created namespace {} for the local add-on", settings.addon_namespace),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {}: {e}", settings.addon_namespace),
        }
    }
    let mode = tekton::detect(&client, settings.tekton).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Tekton: {mode:?}");
    // Argo's minimal CRDs too, so a local add-on finds them at start (it must also notice
    // them when they come later, which the suite does not check).
    argo::ensure_crds(&client, settings.timeout).await.unwrap_or_else(|e| panic!("installing Argo's CRDs: {e:#}"));
    let mode = argo::detect(&client, settings.argo).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Argo Workflows: {mode:?}");
}

/// Removes what interrupted runs left: the suite's namespaces and volumes, and its cordons.
/// Only with `E2E_CLEANUP=1` (`hack/e2e.sh cleanup` sets it): a plain `--ignored` run must not
/// delete the namespaces of a suite running at the same time.
#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh cleanup"]
async fn cleanup_leftovers() {
    if std::env::var("E2E_CLEANUP").as_deref() != Ok("1") {
        eprintln!("cleanup_leftovers: not run without E2E_CLEANUP=1 (use hack/e2e.sh cleanup)");
        return;
    }
    let settings = Settings::required().unwrap_or_else(|e| panic!("{e:#}"));
    let client = env::client(&settings).await.unwrap_or_else(|e| panic!("{e:#}"));
    let suite = ListParams::default().labels(&format!("{}=true", env::SUITE_LABEL));
    let namespaces: Vec<String> = Api::<Namespace>::all(client.clone())
        .list(&suite)
        .await
        .unwrap_or_else(|e| panic!("listing the suite's namespaces: {e}"))
        .iter()
        .map(|n| n.name_any())
        .collect();
    eprintln!("deleting namespaces {namespaces:?}");
    env::delete_namespaces(&client, &namespaces, settings.timeout * 2).await.unwrap_or_else(|e| panic!("{e:#}"));
    env::delete_volumes(&client, &suite, settings.timeout).await.unwrap_or_else(|e| panic!("{e:#}"));
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    for node in nodes.iter().filter(|n| n.annotations().contains_key(env::CORDON_ANNOTATION)) {
        eprintln!("uncordoning {}", node.name_any());
        env::uncordon(&client, &node.name_any()).await.unwrap_or_else(|e| panic!("{e:#}"));
    }
}

// The cluster tests: each one runs a scenario body below against `E2E_KUBECONFIG`. The same
// bodies also run without a cluster in `offline.rs`, against the in-memory API server.

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn parallel_tasks_sharing_a_claim_land_on_the_placeholders_node() {
    scenario("shared-claim", Access::Shared, shared_claim).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn independent_runs_placeholders_spread_over_nodes() {
    scenario("spread", Access::Exclusive, spread).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn opted_out_and_rwx_runs_are_left_alone() {
    scenario("left-alone", Access::Shared, left_alone).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn placeholder_goes_when_the_run_ends() {
    scenario("run-ends", Access::Shared, run_ends).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn cordoned_nodes_placeholder_moves() {
    scenario("cordon", Access::Exclusive, cordon).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn restricted_namespace_admits_the_placeholder() {
    scenario("restricted", Access::Shared, restricted).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn deleted_placeholder_is_recreated() {
    scenario("recreate", Access::Shared, recreate).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn argo_parallel_pods_sharing_a_claim_land_on_the_placeholders_node() {
    scenario("argo-shared-claim", Access::Shared, argo_shared_claim).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn argo_opted_out_workflow_is_left_alone() {
    scenario("argo-left-alone", Access::Shared, argo_left_alone).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn argo_placeholder_goes_when_the_workflow_completes() {
    scenario("argo-completes", Access::Shared, argo_completes).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn argo_placeholder_goes_when_volume_claim_gc_deletes_the_claim() {
    scenario("argo-claim-gc", Access::Shared, argo_claim_gc).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn argo_retried_workflow_gets_its_placeholder_back() {
    scenario("argo-retry", Access::Shared, argo_retry).await;
}

#[tokio::test]
#[ignore = "needs a cluster: E2E_KUBECONFIG=... hack/e2e.sh"]
async fn argo_claim_named_by_an_input_parameter() {
    scenario("argo-param-claim", Access::Shared, argo_parameter_claim).await;
}

/// The one pod of a task, or an error naming the run.
fn task_pod<'a>(run: &StartedRun, pods: &'a BTreeMap<String, Pod>, task: &str) -> anyhow::Result<&'a Pod> {
    pods.get(task).ok_or_else(|| anyhow!("{run}: no pod for task {task}"))
}

/// I2 and the scheduler's answer to it: the task's pod is pinned to `placeholder` and bound to
/// the node of the placeholder's pod.
fn assert_follows(run: &StartedRun, pods: &BTreeMap<String, Pod>, task: &str, placeholder: &Pod) -> anyhow::Result<()> {
    let name = placeholder.labels().get(names::LABEL_PLACEHOLDER).cloned().unwrap_or_default();
    let pod = task_pod(run, pods, task)?;
    check_pinned(pod, &name, &run.task_claims(task)).map_err(|e| anyhow!("{run}, task {task}: {e}"))?;
    ensure!(
        node_of(pod) == node_of(placeholder),
        "{run}: task {task}'s pod {} is on node {:?}, its placeholder's pod {} on {:?}",
        pod.name_any(),
        node_of(pod),
        placeholder.name_any(),
        node_of(placeholder)
    );
    Ok(())
}

/// SPEC "Task pods" and I1/I2: parallel tasks that share a ReadWriteOnce claim (a
/// volumeClaimTemplate, so Tekton's PVC name rule is exercised) are pinned to the one
/// placeholder holding it, and the scheduler puts them on its node; a task without a claim is
/// left alone.
async fn shared_claim(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("", &[]).await?;
    let spec = RunSpec::new("build")
        .template("source", "src")
        .task("fetch", &[("output", "source")])
        .task("test", &[("src", "source")])
        .task("notify", &[]);
    let run = tekton::start_run(&env, &ns, spec).await?;
    let claim = run.claim("source")?;
    let sts = cluster::placeholder_holding(&env, &ns, &claim).await?;
    let name = sts.name_any();
    ensure!(
        placeholder_claims(&sts) == BTreeSet::from([claim.clone()]),
        "placeholder {ns}/{name} of {run} holds {:?}, expected only {claim}",
        placeholder_claims(&sts)
    );
    let holder = cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let pods = tekton::bound_task_pods(&env, &run).await?;
    for task in ["fetch", "test"] {
        assert_follows(&run, &pods, task, &holder)?;
    }
    check_untouched(task_pod(&run, &pods, "notify")?)
        .map_err(|e| anyhow!("{run}, task notify (mounts no claim): {e}"))?;
    let all = cluster::placeholders(&env.client, &ns).await?;
    ensure!(all.len() == 1, "{ns}: expected one placeholder, found {}", cluster::describe(&all));
    Ok(())
}

/// SPEC "Placeholder": placeholders repel each other (preferred anti-affinity by default,
/// across namespaces), so two independent runs' placeholders spread over two nodes when there
/// are two, and each run's task follows its own placeholder.
async fn spread(env: Arc<Env>) -> anyhow::Result<()> {
    let mut seen: Vec<(String, Pod, StatefulSet)> = Vec::new();
    for part in ["a", "b"] {
        let ns = env.namespace(part, &[]).await?;
        storage::claim(&env, &ns, "data", RWO).await?;
        let spec = RunSpec::new("build").claim("data", "data").task("work", &[("data", "data")]);
        let run = tekton::start_run(&env, &ns, spec).await?;
        let sts = cluster::placeholder_holding(&env, &ns, "data").await?;
        // One at a time: the second placeholder is scored with the first already bound.
        let holder = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
        let pods = tekton::bound_task_pods(&env, &run).await?;
        assert_follows(&run, &pods, "work", &holder)?;
        seen.push((format!("{ns}/{}", sts.name_any()), holder, sts));
    }
    let repels = seen[0]
        .2
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .is_some();
    if !repels {
        eprintln!(
            "spread: SKIPPED the spread check: placeholders carry no anti-affinity (placeholder-anti-affinity: none)"
        );
        return Ok(());
    }
    let nodes = cluster::schedulable_nodes(&env.client).await?;
    if nodes.len() < 2 {
        eprintln!("spread: SKIPPED the spread check: {} schedulable node(s) {nodes:?}; it needs two", nodes.len());
        return Ok(());
    }
    let (a, b) = (node_of(&seen[0].1), node_of(&seen[1].1));
    if a == b {
        // Say what else the anti-affinity was weighing: every placeholder pod in the cluster.
        let all: Api<Pod> = Api::all(env.client.clone());
        let others = all.list(&ListParams::default().labels(&cluster::placeholder_selector())).await?;
        let where_: Vec<String> = others
            .iter()
            .map(|p| format!("{}/{} on {:?}", p.namespace().unwrap_or_default(), p.name_any(), node_of(p)))
            .collect();
        bail!(
            "placeholders {} and {} are both on node {a:?} although {} nodes are schedulable; placeholder pods in \
             the cluster: {where_:?}",
            seen[0].0,
            seen[1].0,
            nodes.len()
        );
    }
    Ok(())
}

/// SPEC I6 and "Which claims are managed": a run opted out by its own annotation, one opted
/// out by its Pipeline's (merged into the run by Tekton), and a run on a ReadWriteMany claim
/// get no placeholder, and their pods are not touched. A managed run in the same namespace,
/// created last, shows the add-on is at work there.
async fn left_alone(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("", &[]).await?;
    for (claim, mode) in [("off-data", RWO), ("piped-data", RWO), ("shared-data", RWX), ("ctl-data", RWO)] {
        storage::claim(&env, &ns, claim, mode).await?;
    }
    let work = |name: &str, claim: &str| RunSpec::new(name).claim("data", claim).task("work", &[("data", "data")]);
    let specs = [
        work("off", "off-data").annotate(names::ANNOTATION_ENABLED, "false"),
        work("piped", "piped-data").via_pipeline("opted-out", &[(names::ANNOTATION_ENABLED, "false")]),
        work("rwx", "shared-data"),
    ];
    let mut runs = Vec::new();
    for spec in specs {
        runs.push(tekton::start_run(&env, &ns, spec).await?);
    }
    let control = tekton::start_run(&env, &ns, work("control", "ctl-data")).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "ctl-data").await?;
    let holder = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
    assert_follows(&control, &tekton::bound_task_pods(&env, &control).await?, "work", &holder)?;
    let expected = BTreeSet::from(["ctl-data".to_string()]);
    holds_for(format!("only the control run's placeholder in {ns}"), Duration::from_secs(5), || async {
        let all = cluster::placeholders(&env.client, &ns).await?;
        let held: BTreeSet<String> = all.iter().flat_map(placeholder_claims).collect();
        Ok(if all.len() == 1 && held == expected { Ok(()) } else { Err(cluster::describe(&all)) })
    })
    .await?;
    for run in &runs {
        for pod in tekton::bound_task_pods(&env, run).await?.values() {
            check_untouched(pod).map_err(|e| anyhow!("{run}: {e}"))?;
        }
    }
    Ok(())
}

/// SPEC "Lifecycle" and I4: a placeholder goes once no active run and no unfinished pinned
/// pod needs it. With the fake, the run is marked done first while its pods still run: the
/// placeholder must stay (they are demand); then the pods finish and it must go.
async fn run_ends(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("", &[]).await?;
    storage::claim(&env, &ns, "data", RWO).await?;
    let spec = RunSpec::new("build")
        .claim("data", "data")
        .task("a", &[("data", "data")])
        .task("b", &[("data", "data")])
        .step_seconds(20);
    let run = tekton::start_run(&env, &ns, spec).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "data").await?;
    let (name, uid) = (sts.name_any(), sts.uid().unwrap_or_default());
    let holder = cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let pods = tekton::bound_task_pods(&env, &run).await?;
    for task in ["a", "b"] {
        assert_follows(&run, &pods, task, &holder)?;
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &ns);
    if env.tekton == Mode::Fake {
        tekton::mark_run_done(&env, &run).await?;
        let what = format!("placeholder {ns}/{name} to stay while the pinned pods of the done {run} have not finished");
        holds_for(what, Duration::from_secs(5), || async {
            Ok(match statefulsets.get_opt(&name).await? {
                Some(s) if s.uid().as_deref() == Some(uid.as_str()) => Ok(()),
                Some(_) => Err("it was replaced".to_string()),
                None => Err("it was deleted".to_string()),
            })
        })
        .await?;
    }
    tekton::end_run(&env, &run).await?;
    wait_for(format!("placeholder {ns}/{name} to be deleted after {run} ended"), env.settings.timeout, || async {
        Ok(match statefulsets.get_opt(&name).await? {
            None => Check::Done(()),
            // Deleted with its pods in the foreground: on its way out.
            Some(s) if s.metadata.deletion_timestamp.is_some() => Check::Done(()),
            Some(_) => Check::NotYet("still there".into()),
        })
    })
    .await
}

/// SPEC "Lifecycle": when a placeholder's node is cordoned for longer than the grace period,
/// the add-on deletes the placeholder's pod and the StatefulSet (the same one: I3) recreates
/// it on another node; an Event on the run says so. Except when its volume can only be used
/// on that node: then it stays, and a Warning Event on the run says why. Needs two
/// schedulable nodes; `E2E_MOVE_TIMEOUT` bounds each of the two waits.
async fn cordon(env: Arc<Env>) -> anyhow::Result<()> {
    let nodes = cluster::schedulable_nodes(&env.client).await?;
    if nodes.len() < 2 {
        eprintln!("cordon: SKIPPED: {} schedulable node(s) {nodes:?}; moving needs two", nodes.len());
        return Ok(());
    }
    let ns = env.namespace("", &[]).await?;
    storage::claim_backed(&env, &ns, "local-data", RWO, Backing::NodeLocal).await?;
    storage::claim_backed(&env, &ns, "net-data", RWO, Backing::Network).await?;
    // With real Tekton the runs must outlast both waits.
    let seconds = (env.settings.move_timeout * 2 + env.settings.timeout * 2).as_secs();
    let work = |name: &str, claim: &str| {
        RunSpec::new(name).claim("data", claim).task("work", &[("data", "data")]).step_seconds(seconds)
    };
    let timeout = env.settings.move_timeout;
    let grace = format!("E2E_MOVE_TIMEOUT={}s; the add-on first waits its --move-grace-seconds", timeout.as_secs());

    // 1. A node-local volume: its placeholder stays, with a Warning.
    let local = tekton::start_run(&env, &ns, work("local", "local-data")).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "local-data").await?;
    let before = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
    let node = node_of(&before).unwrap_or_default().to_string();
    env.cordon(&node).await?;
    wait_for(format!("a PlaceholderNotMoved Event on {local} ({grace})"), timeout, || async {
        let events = cluster::events(&env.client, &ns).await?;
        let found = events
            .iter()
            .any(|e| e.reason.as_deref() == Some("PlaceholderNotMoved") && cluster::regards(e, &local.name));
        Ok(if found { Check::Done(()) } else { Check::NotYet(cluster::warnings(&env.client, &ns).await) })
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let now = pods.get_opt(&before.name_any()).await?;
    ensure!(
        now.as_ref().is_some_and(|p| p.uid() == before.uid() && p.metadata.deletion_timestamp.is_none()),
        "placeholder pod {ns}/{} holds a node-local volume on cordoned node {node}, yet it was deleted",
        before.name_any()
    );
    env.uncordon(&node).await?;

    // 2. A volume any node can use: its placeholder moves.
    let net = tekton::start_run(&env, &ns, work("net", "net-data")).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "net-data").await?;
    let (name, sts_uid) = (sts.name_any(), sts.uid().unwrap_or_default());
    let before = cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let node = node_of(&before).unwrap_or_default().to_string();
    let old_uid = before.uid().unwrap_or_default();
    env.cordon(&node).await?;
    let lp = ListParams::default().labels(&format!("{}={name}", names::LABEL_PLACEHOLDER));
    let what = format!("placeholder {ns}/{name} of {net} to move off cordoned node {node} ({grace})");
    let moved = wait_for(what, timeout, || async {
        let list = pods.list(&lp).await?;
        let new = list.iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.uid().as_deref() != Some(old_uid.as_str())
                && node_of(p).is_some_and(|n| n != node)
        });
        Ok(match new {
            Some(p) => Check::Done(p.clone()),
            None => Check::NotYet(
                list.iter()
                    .map(|p| {
                        let gone = if p.metadata.deletion_timestamp.is_some() { " (terminating)" } else { "" };
                        format!("{} uid {} on {:?}{gone}", p.name_any(), p.uid().unwrap_or_default(), node_of(p))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        })
    })
    .await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &ns);
    let now = statefulsets.get(&name).await.with_context(|| format!("reading placeholder {ns}/{name}"))?;
    ensure!(now.uid().as_deref() == Some(sts_uid.as_str()), "placeholder {ns}/{name} was replaced, not moved");
    eprintln!("cordon: {ns}/{name} moved from {node} to {:?}", node_of(&moved));
    wait_for(format!("a PlaceholderMoved Event on {net}"), env.settings.timeout, || async {
        let events = cluster::events(&env.client, &ns).await?;
        let found =
            events.iter().any(|e| e.reason.as_deref() == Some("PlaceholderMoved") && cluster::regards(e, &net.name));
        Ok(if found { Check::Done(()) } else { Check::NotYet(cluster::warnings(&env.client, &ns).await) })
    })
    .await
}

/// SPEC "Placeholder": its pod passes PodSecurity `restricted` (non-root, no privilege
/// escalation, capabilities dropped, RuntimeDefault seccomp): in an enforcing namespace the
/// StatefulSet controller creates it, and the pinned task pods join it.
async fn restricted(env: Arc<Env>) -> anyhow::Result<()> {
    let labels = [
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/enforce-version", "latest"),
    ];
    let ns = env.namespace("", &labels).await?;
    storage::claim(&env, &ns, "data", RWO).await?;
    let spec = RunSpec::new("build").claim("data", "data").task("work", &[("data", "data")]);
    let run = tekton::start_run(&env, &ns, spec).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "data").await?;
    let name = sts.name_any();
    // Times out naming the FailedCreate Event if PodSecurity rejects the pod.
    let holder = cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let rejected: Vec<String> = cluster::events(&env.client, &ns)
        .await?
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate") && cluster::regards(e, &name))
        .map(|e| e.note.clone().unwrap_or_default())
        .collect();
    ensure!(rejected.is_empty(), "placeholder {ns}/{name}: FailedCreate: {rejected:?}");
    assert_follows(&run, &tekton::bound_task_pods(&env, &run).await?, "work", &holder)
}

/// SPEC "Lifecycle": a placeholder deleted by hand while its run is active is recreated, with
/// the same name and claims.
async fn recreate(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("", &[]).await?;
    storage::claim(&env, &ns, "data", RWO).await?;
    let spec = RunSpec::new("build").claim("data", "data").task("work", &[("data", "data")]).step_seconds(300);
    let run = tekton::start_run(&env, &ns, spec).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "data").await?;
    let (name, old_uid) = (sts.name_any(), sts.uid().unwrap_or_default());
    cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &ns);
    statefulsets
        .delete(&name, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting placeholder {ns}/{name}"))?;
    let again = wait_for(format!("placeholder {ns}/{name} of {run} to be recreated"), env.settings.timeout, || async {
        Ok(match statefulsets.get_opt(&name).await? {
            Some(s) if s.uid().as_deref() != Some(old_uid.as_str()) => Check::Done(s),
            Some(_) => Check::NotYet("the deleted one is still there".into()),
            None => Check::NotYet("gone, not recreated yet".into()),
        })
    })
    .await?;
    ensure!(
        placeholder_claims(&again) == placeholder_claims(&sts),
        "recreated placeholder {ns}/{name} holds {:?}, the deleted one held {:?}",
        placeholder_claims(&again),
        placeholder_claims(&sts)
    );
    cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    Ok(())
}

// The Argo Workflows scenarios: the same promises for Workflows (SPEC "Argo Workflows runs").

/// I2 for one Argo node's pod: pinned to `placeholder` and bound to its pod's node.
fn argo_follows(
    wf: &StartedWorkflow,
    pods: &BTreeMap<String, Pod>,
    node: &str,
    placeholder: &Pod,
) -> anyhow::Result<()> {
    let name = placeholder.labels().get(names::LABEL_PLACEHOLDER).cloned().unwrap_or_default();
    let pod = pods.get(node).ok_or_else(|| anyhow!("{wf}: no pod for node {node}"))?;
    check_pinned(pod, &name, &wf.node_claims(node)).map_err(|e| anyhow!("{wf}, node {node}: {e}"))?;
    ensure!(
        node_of(pod) == node_of(placeholder),
        "{wf}: node {node}'s pod {} is on node {:?}, its placeholder's pod {} on {:?}",
        pod.name_any(),
        node_of(pod),
        placeholder.name_any(),
        node_of(placeholder)
    );
    Ok(())
}

/// Waits until no placeholder holds `claim` any more (deleted, or on its way out).
async fn no_placeholder_holding(env: &Env, ns: &str, claim: &str, why: &str) -> anyhow::Result<()> {
    wait_for(format!("the placeholder in {ns} holding {claim} to be deleted ({why})"), env.settings.timeout, || async {
        let all = cluster::placeholders(&env.client, ns).await?;
        let live: Vec<StatefulSet> = all
            .into_iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none() && placeholder_claims(s).contains(claim))
            .collect();
        Ok(if live.is_empty() { Check::Done(()) } else { Check::NotYet(cluster::describe(&live)) })
    })
    .await
}

/// SPEC "Argo Workflows runs", I1/I2: a clone step, then a step group fanned out `withItems`
/// into three parallel pods, all on one volumeClaimTemplate claim (Argo's
/// `<workflow>-<template>` name rule): one placeholder holds exactly that claim, every pod that
/// mounts it, the clone pod included (created before the Workflow had any status), carries
/// exactly one added term selecting it and is bound to its node; a pod of the group that
/// mounts no claim is untouched.
async fn argo_shared_claim(env: Arc<Env>) -> anyhow::Result<()> {
    argo::prepare(&env).await?;
    let ns = env.namespace("", &[]).await?;
    let spec = WorkflowSpec::new("ci")
        .template("work")
        .group(&[("clone", &["work"])])
        .group(&[("notify", &[]), ("test", &["work"])])
        .with_items(&["debian", "alpine", "ubuntu"]);
    let wf = argo::start_workflow(&env, &ns, spec).await?;
    let claim = wf.claim("work")?;
    ensure!(claim == "ci-work", "{wf}: claim {claim}, Argo names it <workflow>-<template>");
    let sts = cluster::placeholder_holding(&env, &ns, &claim).await?;
    ensure!(
        placeholder_claims(&sts) == BTreeSet::from([claim.clone()]),
        "placeholder {ns}/{} of {wf} holds {:?}, expected only {claim}",
        sts.name_any(),
        placeholder_claims(&sts)
    );
    let holder = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
    let pods = argo::bound_pods(&env, &wf).await?;
    ensure!(pods.len() == 5, "{wf}: expected 5 pods (clone, notify, 3 tests), got {:?}", pods.keys());
    for node in pods.keys() {
        if wf.node_claims(node).is_empty() {
            check_untouched(&pods[node]).map_err(|e| anyhow!("{wf}, node {node} (mounts no claim): {e}"))?;
        } else {
            argo_follows(&wf, &pods, node, &holder)?;
        }
    }
    let all = cluster::placeholders(&env.client, &ns).await?;
    ensure!(all.len() == 1, "{ns}: expected one placeholder, found {}", cluster::describe(&all));
    Ok(())
}

/// SPEC "Argo Workflows runs" and I6: a Workflow opted out by its annotation (which Argo does
/// not copy to its pods: the add-on must read the Workflow) gets no placeholder, and its pods
/// (two parallel steps on its own claim template and on an existing claim) are not touched.
/// A managed Workflow in the same namespace, created last, shows the add-on at work there.
async fn argo_left_alone(env: Arc<Env>) -> anyhow::Result<()> {
    argo::prepare(&env).await?;
    let ns = env.namespace("", &[]).await?;
    for claim in ["off-data", "ctl-data"] {
        storage::claim(&env, &ns, claim, RWO).await?;
    }
    let off = WorkflowSpec::new("off")
        .annotate(names::ANNOTATION_ENABLED, "false")
        .template("work")
        .claim("data", "off-data")
        .group(&[("a", &["work", "data"]), ("b", &["work", "data"])]);
    let off = argo::start_workflow(&env, &ns, off).await?;
    let control = WorkflowSpec::new("control").claim("data", "ctl-data").group(&[("work", &["data"])]);
    let control = argo::start_workflow(&env, &ns, control).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "ctl-data").await?;
    let holder = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
    argo_follows(&control, &argo::bound_pods(&env, &control).await?, "work", &holder)?;
    let expected = BTreeSet::from(["ctl-data".to_string()]);
    holds_for(format!("only the control Workflow's placeholder in {ns}"), Duration::from_secs(5), || async {
        let all = cluster::placeholders(&env.client, &ns).await?;
        let held: BTreeSet<String> = all.iter().flat_map(placeholder_claims).collect();
        Ok(if all.len() == 1 && held == expected { Ok(()) } else { Err(cluster::describe(&all)) })
    })
    .await?;
    for (node, pod) in argo::bound_pods(&env, &off).await? {
        check_untouched(&pod).map_err(|e| anyhow!("{off} (opted out), node {node}: {e}"))?;
    }
    Ok(())
}

/// SPEC "Argo Workflows runs" (done: Succeeded, Failed, Error) and I4, on an existing claim
/// (no volumeClaimGC involved). With the fake, the Workflow is first marked Failed while its
/// pinned pods still run (what `argo stop` leaves for a moment): the placeholder must stay;
/// once they finish it must go. With real Argo: once Argo completes the Workflow.
async fn argo_completes(env: Arc<Env>) -> anyhow::Result<()> {
    argo::prepare(&env).await?;
    let ns = env.namespace("", &[]).await?;
    storage::claim(&env, &ns, "data", RWO).await?;
    let spec =
        WorkflowSpec::new("build").claim("data", "data").group(&[("a", &["data"]), ("b", &["data"])]).step_seconds(20);
    let wf = argo::start_workflow(&env, &ns, spec).await?;
    let sts = cluster::placeholder_holding(&env, &ns, "data").await?;
    let (name, uid) = (sts.name_any(), sts.uid().unwrap_or_default());
    let holder = cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let pods = argo::bound_pods(&env, &wf).await?;
    for node in ["a", "b"] {
        argo_follows(&wf, &pods, node, &holder)?;
    }
    if env.argo == tekton::Mode::Fake {
        argo::mark_completed(&env, &wf, "Failed").await?;
        let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &ns);
        let what = format!("placeholder {ns}/{name} to stay while the pinned pods of the completed {wf} run");
        holds_for(what, Duration::from_secs(5), || async {
            Ok(match statefulsets.get_opt(&name).await? {
                Some(s) if s.uid().as_deref() == Some(uid.as_str()) && s.metadata.deletion_timestamp.is_none() => {
                    Ok(())
                }
                Some(_) => Err("it was replaced or is being deleted".to_string()),
                None => Err("it was deleted".to_string()),
            })
        })
        .await?;
        argo::finish_running_pods(&env, &wf).await?;
    } else {
        argo::wait_completed(&env, &wf).await?;
    }
    no_placeholder_holding(&env, &ns, "data", &format!("{wf} completed")).await
}

/// SPEC "Argo Workflows runs": Argo's volumeClaimGC deletes a Workflow's claim (and strips its
/// protection finalizer) BEFORE the completed phase is written; the claim going ends its
/// placeholder. With the fake, the Workflow is still Running (its pods finished) when the
/// claim goes, and the placeholder must go then; the phase comes after.
async fn argo_claim_gc(env: Arc<Env>) -> anyhow::Result<()> {
    argo::prepare(&env).await?;
    let ns = env.namespace("", &[]).await?;
    let spec =
        WorkflowSpec::new("build").template("work").group(&[("a", &["work"]), ("b", &["work"])]).step_seconds(10);
    let wf = argo::start_workflow(&env, &ns, spec).await?;
    let claim = wf.claim("work")?;
    let sts = cluster::placeholder_holding(&env, &ns, &claim).await?;
    let holder = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
    let pods = argo::bound_pods(&env, &wf).await?;
    for node in ["a", "b"] {
        argo_follows(&wf, &pods, node, &holder)?;
    }
    if env.argo == tekton::Mode::Fake {
        argo::finish_running_pods(&env, &wf).await?;
        argo::collect_claims(&env, &wf).await?;
        no_placeholder_holding(&env, &ns, &claim, &format!("volumeClaimGC of {wf} deleted it")).await?;
        let phase = argo::phase(&env, &wf).await?;
        ensure!(phase == "Running", "{wf}: phase {phase:?}; the claim alone must have ended the placeholder");
        argo::mark_completed(&env, &wf, "Succeeded").await?;
    } else {
        let phase = argo::wait_completed(&env, &wf).await?;
        ensure!(phase == "Succeeded", "{wf} ended {phase}: volumeClaimGC (OnWorkflowSuccess) needs Succeeded");
        no_placeholder_holding(&env, &ns, &claim, &format!("{wf} succeeded and its claim was collected")).await?;
    }
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    wait_for(format!("claim {ns}/{claim} to be gone"), env.settings.timeout, || async {
        Ok(match pvcs.get_opt(&claim).await? {
            None => Check::Done(()),
            Some(p) => Check::NotYet(format!("still there, finalizers {:?}", p.finalizers())),
        })
    })
    .await
}

/// SPEC "Argo Workflows runs": `argo retry` reopens a failed Workflow (same uid, same kept
/// claim: volumeClaimGC OnWorkflowSuccess keeps it on failure) and creates its failed pods
/// again. The placeholder that went when the Workflow failed comes back, and the new pod is
/// pinned to it and bound to its node. Real Argo needs the `argo` CLI for the retry.
async fn argo_retry(env: Arc<Env>) -> anyhow::Result<()> {
    argo::prepare(&env).await?;
    let ns = env.namespace("", &[]).await?;
    let spec = WorkflowSpec::new("flaky")
        .template("data")
        .group(&[("a", &["data"]), ("b", &["data"])])
        .failing("b")
        .step_seconds(5);
    let wf = argo::start_workflow(&env, &ns, spec).await?;
    let claim = wf.claim("data")?;
    let sts = cluster::placeholder_holding(&env, &ns, &claim).await?;
    let old_sts = sts.uid().unwrap_or_default();
    let holder = cluster::placeholder_pod(&env, &ns, &sts.name_any(), env.settings.timeout).await?;
    let pods = argo::bound_pods(&env, &wf).await?;
    for node in ["a", "b"] {
        argo_follows(&wf, &pods, node, &holder)?;
    }
    let phase = argo::end_workflow(&env, &wf).await?;
    ensure!(phase == "Failed", "{wf} ended {phase}, expected Failed (step b fails the first time)");
    no_placeholder_holding(&env, &ns, &claim, &format!("{wf} failed")).await?;
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    ensure!(pvcs.get_opt(&claim).await?.is_some(), "{wf} failed: its claim {claim} must be kept for argo retry");

    let old: BTreeSet<String> = pods.get("b").and_then(|p| p.uid()).into_iter().collect();
    argo::retry(&env, &wf).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &ns);
    let again =
        wait_for(format!("a placeholder holding {claim} again after retrying {wf}"), env.settings.timeout, || async {
            let all = cluster::placeholders(&env.client, &ns).await?;
            let new = all.iter().find(|s| {
                s.metadata.deletion_timestamp.is_none()
                    && s.uid().as_deref() != Some(old_sts.as_str())
                    && placeholder_claims(s).contains(&claim)
            });
            Ok(match new {
                Some(s) => Check::Done(s.clone()),
                None => {
                    Check::NotYet(format!("{}; {}", cluster::describe(&all), cluster::warnings(&env.client, &ns).await))
                }
            })
        })
        .await?;
    let _ = statefulsets;
    let holder = cluster::placeholder_pod(&env, &ns, &again.name_any(), env.settings.timeout).await?;
    let pods = argo::bound_pods_except(&env, &wf, &old).await?;
    argo_follows(&wf, &pods, "b", &holder)?;
    let now = Api::<kube::api::DynamicObject>::namespaced_with(env.client.clone(), &ns, &argo::workflows_resource())
        .get(&wf.name)
        .await?;
    ensure!(now.uid().as_deref() == Some(wf.uid.as_str()), "{wf}: argo retry keeps the same Workflow (uid)");
    Ok(())
}

/// SPEC "Argo Workflows runs", I1/I2/I4: a claim the Workflow names only through a template
/// input (`claimName: "{{inputs.parameters.pvc}}"`, the value passed by each step), so that
/// only the pods Argo builds name it. Three parallel steps mount the existing claim that way,
/// then a fourth, in a second step group, mounts it again. One placeholder holds exactly that
/// claim; every pod carries the pin and exactly one added term selecting it, and is bound to
/// its node. The placeholder is never deleted or replaced while the Workflow runs, not even
/// between the two groups when no pod mounts the claim (the fake pauses 3 s there); it goes
/// once the Workflow completes. Offline, where the webhook's wait metrics are readable, no
/// admission ran out of its budget waiting (the first pods name a placeholder nobody can
/// create before they exist).
async fn argo_parameter_claim(env: Arc<Env>) -> anyhow::Result<()> {
    argo::prepare(&env).await?;
    let ns = env.namespace("", &[]).await?;
    let claim = "shared-pvc";
    storage::claim(&env, &ns, claim, RWO).await?;
    let history = cluster::PlaceholderHistory::start(&env, &ns).await?;
    let spec = WorkflowSpec::new("ci")
        .claim_by_parameter("work", "pvc", claim)
        .group(&[("a", &["work"]), ("b", &["work"]), ("c", &["work"])])
        .group(&[("report", &["work"])])
        .pause_between_groups(3)
        .step_seconds(20);
    let wf = argo::start_workflow(&env, &ns, spec).await?;

    // The Workflow names the claim only as the steps' argument; the pods name it.
    let stored = Api::<kube::api::DynamicObject>::namespaced_with(env.client.clone(), &ns, &argo::workflows_resource())
        .get(&wf.name)
        .await?;
    let template_claims: Vec<&str> = stored.data["spec"]["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["volumes"].as_array().into_iter().flatten())
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect();
    ensure!(
        template_claims.len() == 4 && template_claims.iter().all(|c| *c == "{{inputs.parameters.pvc}}"),
        "{wf}: its templates' volumes name {template_claims:?}, expected {{{{inputs.parameters.pvc}}}} in each of 4"
    );
    ensure!(stored.data["spec"].get("volumes").is_none(), "{wf}: no workflow volume may name {claim}");

    let sts = cluster::placeholder_holding(&env, &ns, claim).await?;
    let (name, uid) = (sts.name_any(), sts.uid().unwrap_or_default());
    ensure!(
        placeholder_claims(&sts) == BTreeSet::from([claim.to_string()]),
        "placeholder {ns}/{name} of {wf} holds {:?}, expected only {claim}",
        placeholder_claims(&sts)
    );
    let holder = cluster::placeholder_pod(&env, &ns, &name, env.settings.timeout).await?;
    let pods = argo::bound_pods(&env, &wf).await?;
    ensure!(
        pods.keys().map(String::as_str).collect::<Vec<_>>() == ["a", "b", "c", "report"],
        "{wf}: expected the pods of a, b, c and report, got {:?}",
        pods.keys()
    );
    for (node, pod) in &pods {
        let mounted: BTreeSet<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
            .collect();
        ensure!(
            mounted == BTreeSet::from([claim.to_string()]),
            "{wf}: node {node}'s pod {} mounts {mounted:?}: Argo fills in the parameter, so it must mount {claim}",
            pod.name_any()
        );
        argo_follows(&wf, &pods, node, &holder)?;
    }
    // The second group came after the first had finished, and its pod went to the same
    // placeholder: the same one all along, never deleted or made again.
    let versions = history.versions();
    let held = BTreeSet::from([claim.to_string()]);
    let uids: BTreeSet<&str> = versions.iter().map(|v| v.uid.as_str()).collect();
    ensure!(
        uids == BTreeSet::from([uid.as_str()]) && versions.iter().all(|v| v.name == name && v.claims == held),
        "{ns}: expected placeholder {name} (uid {uid}) and no other while {wf} ran, saw {versions:?}"
    );
    if let Some(gone) = versions.iter().find(|v| v.deleting) {
        bail!("{ns}: placeholder {} was deleted while {wf} ran (between its step groups?): {gone:?}", gone.name);
    }
    match &env.admission_waits {
        Some(waits) => {
            let ran_out: u64 = ["placeholder-pod", "pipeline-spec"].iter().map(|w| waits.count(w, "budget")).sum();
            ensure!(
                ran_out == 0,
                "{wf}: {ran_out} admission(s) waited until the webhook's budget ran out \
                 (affinity_assistant_admission_wait_seconds result=\"budget\"); placeholder-pod waits decided: {}",
                waits.count("placeholder-pod", "decided")
            );
        }
        None => {
            eprintln!("{}: SKIPPED the admission-wait check: the webhook's metrics are only read offline", env.scenario)
        }
    }

    let phase = argo::end_workflow(&env, &wf).await?;
    ensure!(phase == "Succeeded", "{wf} ended {phase}");
    no_placeholder_holding(&env, &ns, claim, &format!("{wf} completed")).await?;
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    ensure!(pvcs.get_opt(claim).await?.is_some(), "{wf}: the existing claim {claim} is not Argo's to collect");
    Ok(())
}
