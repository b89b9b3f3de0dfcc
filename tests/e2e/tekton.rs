//! Tekton for the suite: its CRDs, whether a real controller runs, the PipelineRuns the tests
//! create, and the fake that plays Tekton's part when no controller runs.
//!
//! The fake does what Tekton's reconciler does before and while a run's tasks execute, in the
//! same order, so the add-on sees the same sequence of objects: the run's labels and merged
//! annotations, PVCs for `volumeClaimTemplate` workspaces (owned by the run), the run's status
//! (`startTime`, `Succeeded=Unknown/Running`, the resolved `pipelineSpec`), one TaskRun per
//! task (owned by the run) and its pod (owned by the TaskRun, with Tekton's labels,
//! annotations and `ws-xxxxx` PVC volumes), then `childReferences`. Shapes follow
//! `tests/fixtures/tekton/tekton-task-pod-shape.yaml` and `tekton-pipelinerun-status-shapes.yaml`.

use crate::env::{Check, Env, TektonChoice, wait_for};
use affinity_assistant::engine::tekton::{
    self as aa_tekton, LABEL_PIPELINE_RUN, LABEL_PIPELINE_RUN_UID, LABEL_PIPELINE_TASK, template_claim_name,
};
use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `spec.managedBy` of the fake's runs and TaskRuns: a Tekton controller that honours the
/// field leaves them alone, so the fake also works beside an installed Tekton.
pub const MANAGED_BY_FAKE: &str = "e2e.affinity-assistant.dev/fake-tekton";
pub const TEKTON_NAMESPACE: &str = "tekton-pipelines";
const TEKTON_CONTROLLER: &str = "tekton-pipelines-controller";
const LABEL_PIPELINE: &str = "tekton.dev/pipeline";
const LABEL_TASK_RUN: &str = "tekton.dev/taskRun";
const LABEL_TASK_RUN_UID: &str = "tekton.dev/taskRunUID";
const LABEL_MEMBER_OF: &str = "tekton.dev/memberOf";
const ANNOTATION_RELEASE: &str = "pipeline.tekton.dev/release";
/// The non-root user of the steps (and of the fake pods): what PodSecurity `restricted` needs.
const STEP_UID: i64 = 65532;
/// The files under `crds/`, in the order they are applied.
pub const CRD_FILES: [&str; 3] = ["300-pipeline.yaml", "300-pipelinerun.yaml", "300-taskrun.yaml"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The suite plays Tekton's part.
    Fake,
    /// A Tekton controller runs the PipelineRuns.
    Real,
}

pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekton/crds")
}

/// One of the real Tekton CRDs, ready to create on a cluster without Tekton: its conversion
/// webhook is dropped, because the Service it names (`tekton-pipelines-webhook`) does not
/// exist there and every read of a non-storage version would fail. The suite uses only `v1`,
/// the storage version, which needs no conversion.
pub fn read_crd(path: &Path) -> anyhow::Result<CustomResourceDefinition> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
        .with_context(|| format!("parsing {} as a CustomResourceDefinition", path.display()))?;
    crd.spec.conversion = None;
    Ok(crd)
}

/// Installs the Tekton CRDs that are missing and waits until they are served.
pub async fn ensure_crds(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in CRD_FILES {
        let crd = read_crd(&crd_dir().join(file))?;
        let name = crd.name_any();
        if crds.get_opt(&name).await.with_context(|| format!("reading CustomResourceDefinition {name}"))?.is_none() {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => eprintln!("installed CustomResourceDefinition {name} (no Tekton CRDs were served)"),
                // Another test process got there first.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating CustomResourceDefinition {name}")),
            }
        }
        names.push(name);
    }
    for name in &names {
        wait_for(format!("CustomResourceDefinition {name} to be Established"), timeout, || async {
            let crd = crds.get(name).await?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            Ok(if established { Check::Done(()) } else { Check::NotYet("not Established".into()) })
        })
        .await?;
    }
    // Established comes a moment before the endpoints answer.
    let runs: Api<DynamicObject> = Api::all_with(client.clone(), &resource(Kind::PipelineRun));
    wait_for("tekton.dev/v1 pipelineruns to be served", timeout, || async {
        runs.list(&ListParams::default().limit(1)).await?;
        Ok(Check::Done(()))
    })
    .await
}

/// Real when asked for, or (auto) when Tekton's controller Deployment has an available replica.
pub async fn detect(client: &Client, choice: TektonChoice) -> anyhow::Result<Mode> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), TEKTON_NAMESPACE);
    let available = match deployments.get_opt(TEKTON_CONTROLLER).await {
        Ok(d) => d.and_then(|d| d.status?.available_replicas).unwrap_or(0) > 0,
        // No permission to read it is not "no Tekton": only an explicit choice can say.
        Err(kube::Error::Api(s)) if s.code == 403 => false,
        Err(e) => return Err(e).context("looking for Tekton's controller Deployment"),
    };
    Ok(match choice {
        TektonChoice::Real => Mode::Real,
        TektonChoice::Auto if available => Mode::Real,
        TektonChoice::Auto => Mode::Fake,
        TektonChoice::Fake => {
            if available {
                eprintln!(
                    "E2E_TEKTON=fake with Tekton running: the fake's runs carry spec.managedBy={MANAGED_BY_FAKE}; \
                     a Tekton too old to honour it will also reconcile them"
                );
            }
            Mode::Fake
        }
    })
}

/// With real Tekton, its own affinity assistant must be off or the add-on stands down.
pub async fn check_coschedule(client: &Client) -> anyhow::Result<()> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), TEKTON_NAMESPACE);
    let cm = cms.get_opt("feature-flags").await.context("reading Tekton's feature-flags")?;
    let value = cm.as_ref().and_then(|c| c.data.as_ref()).and_then(|d| d.get(aa_tekton::COSCHEDULE_KEY)).cloned();
    if aa_tekton::coschedule_enabled(value.as_deref()) {
        bail!(
            "Tekton's own affinity assistant is on ({TEKTON_NAMESPACE}/feature-flags coschedule={}); the add-on stands \
             down for such runs. Set coschedule: disabled (see docs/e2e.md)",
            value.as_deref().unwrap_or("<unset, default workspaces>")
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Pipeline,
    PipelineRun,
    TaskRun,
}

pub fn resource(kind: Kind) -> ApiResource {
    let (kind, plural) = match kind {
        Kind::Pipeline => ("Pipeline", "pipelines"),
        Kind::PipelineRun => ("PipelineRun", "pipelineruns"),
        Kind::TaskRun => ("TaskRun", "taskruns"),
    };
    ApiResource {
        group: "tekton.dev".into(),
        version: "v1".into(),
        api_version: aa_tekton::API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn api(client: &Client, ns: &str, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource(kind))
}

/// `kmeta.ChildName` for names that fit: Tekton hashes longer ones, which the suite's short
/// names never need, so a long one is a test bug.
pub fn child_name(parent: &str, suffix: &str) -> anyhow::Result<String> {
    let name = format!("{parent}{suffix}");
    if name.len() > 63 {
        bail!("{name} is longer than 63 characters: Tekton would hash it; use shorter run and task names");
    }
    Ok(name)
}

/// The volume name Tekton gives a PVC workspace in a task pod: `ws-` and the first five hex
/// digits of fnv32a(task workspace name).
pub fn workspace_volume_name(task_workspace: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in task_workspace.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("ws-{}", &format!("{h:08x}")[..5])
}

/// Where a workspace's volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An existing PVC (`persistentVolumeClaim.claimName`).
    Claim(String),
    /// A `volumeClaimTemplate` with this `metadata.name`: Tekton creates the PVC per run.
    Template(String),
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub name: String,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    /// (task-side workspace name, pipeline workspace it binds).
    pub workspaces: Vec<(String, String)>,
}

/// A PipelineRun as a test wants it; the same object goes to the fake and to real Tekton.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    /// Referenced Pipeline (`pipelineRef`) and that Pipeline's annotations, instead of an
    /// inline `pipelineSpec`.
    pub pipeline: Option<(String, BTreeMap<String, String>)>,
    pub workspaces: Vec<Workspace>,
    pub tasks: Vec<Task>,
    /// How long real Tekton's steps run (the fake's pods never finish on their own).
    pub step_seconds: u64,
}

impl RunSpec {
    /// A run in the add-on's default mode whatever the cluster's config says, so that what a
    /// test expects does not depend on it.
    pub fn new(name: &str) -> RunSpec {
        RunSpec {
            name: name.to_string(),
            annotations: [(affinity_assistant::names::ANNOTATION_MODE.to_string(), "workspaces".to_string())].into(),
            pipeline: None,
            workspaces: Vec::new(),
            tasks: Vec::new(),
            step_seconds: 60,
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> RunSpec {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn claim(mut self, workspace: &str, claim: &str) -> RunSpec {
        self.workspaces.push(Workspace { name: workspace.into(), source: Source::Claim(claim.into()) });
        self
    }

    pub fn template(mut self, workspace: &str, prefix: &str) -> RunSpec {
        self.workspaces.push(Workspace { name: workspace.into(), source: Source::Template(prefix.into()) });
        self
    }

    /// A task binding `(task-side name, pipeline workspace)` pairs. Tasks have no `runAfter`:
    /// they all run in parallel, which is the case the add-on exists for.
    pub fn task(mut self, name: &str, workspaces: &[(&str, &str)]) -> RunSpec {
        let workspaces = workspaces.iter().map(|(t, p)| (t.to_string(), p.to_string())).collect();
        self.tasks.push(Task { name: name.into(), workspaces });
        self
    }

    pub fn via_pipeline(mut self, name: &str, annotations: &[(&str, &str)]) -> RunSpec {
        let a = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.pipeline = Some((name.into(), a));
        self
    }

    pub fn step_seconds(mut self, seconds: u64) -> RunSpec {
        self.step_seconds = seconds;
        self
    }

    /// The Pipeline spec: the inline `pipelineSpec`, the referenced Pipeline's `spec`, and
    /// what Tekton stores in `status.pipelineSpec`.
    pub fn pipeline_spec(&self, step_image: &str) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                let bindings: Vec<Value> =
                    t.workspaces.iter().map(|(tw, pw)| json!({"name": tw, "workspace": pw})).collect();
                let declared: Vec<Value> = t.workspaces.iter().map(|(tw, _)| json!({"name": tw})).collect();
                json!({
                    "name": t.name,
                    "workspaces": bindings,
                    "taskSpec": {
                        "workspaces": declared,
                        "steps": [{
                            "name": "main",
                            "image": step_image,
                            "command": ["sleep", self.step_seconds.to_string()],
                            "securityContext": restricted_container(),
                        }]
                    }
                })
            })
            .collect();
        let workspaces: Vec<Value> = self.workspaces.iter().map(|w| json!({"name": w.name})).collect();
        json!({"workspaces": workspaces, "tasks": tasks})
    }

    /// The PipelineRun object the test creates.
    pub fn run_object(&self, mode: Mode, step_image: &str) -> Value {
        let workspaces: Vec<Value> = self
            .workspaces
            .iter()
            .map(|w| match &w.source {
                Source::Claim(c) => json!({"name": w.name, "persistentVolumeClaim": {"claimName": c}}),
                Source::Template(prefix) => json!({"name": w.name, "volumeClaimTemplate": {
                    "metadata": {"name": prefix},
                    // storageClassName "": the claim binds to the suite's static volume, no
                    // provisioner (and no default StorageClass) involved.
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                             "resources": {"requests": {"storage": crate::storage::SIZE}}}
                }}),
            })
            .collect();
        let mut spec = json!({
            "workspaces": workspaces,
            "taskRunTemplate": {"podTemplate": {"securityContext": restricted_pod()}},
        });
        match &self.pipeline {
            Some((name, _)) => spec["pipelineRef"] = json!({"name": name}),
            None => spec["pipelineSpec"] = self.pipeline_spec(step_image),
        }
        if mode == Mode::Fake {
            spec["managedBy"] = json!(MANAGED_BY_FAKE);
        }
        json!({
            "apiVersion": aa_tekton::API_VERSION,
            "kind": aa_tekton::KIND_PIPELINE_RUN,
            "metadata": {"name": self.name, "annotations": self.annotations},
            "spec": spec,
        })
    }

    /// The referenced Pipeline, if the run uses `pipelineRef`.
    pub fn pipeline_object(&self, step_image: &str) -> Option<Value> {
        let (name, annotations) = self.pipeline.as_ref()?;
        Some(json!({
            "apiVersion": aa_tekton::API_VERSION,
            "kind": aa_tekton::KIND_PIPELINE,
            "metadata": {"name": name, "annotations": annotations},
            "spec": self.pipeline_spec(step_image),
        }))
    }

    /// The run's annotations after Tekton merged its Pipeline's into them (the run's win).
    pub fn merged_annotations(&self) -> BTreeMap<String, String> {
        let mut out = self.pipeline.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
        out.extend(self.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

/// What PodSecurity `restricted` asks of a container.
fn restricted_container() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "runAsUser": STEP_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn restricted_pod() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": STEP_UID, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// A run the test created, with the claims its workspaces resolved to.
#[derive(Debug, Clone)]
pub struct StartedRun {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub spec: RunSpec,
    /// Claim of each PVC-backed workspace, by pipeline workspace name.
    pub claims: BTreeMap<String, String>,
}

impl StartedRun {
    pub fn claim(&self, workspace: &str) -> anyhow::Result<String> {
        self.claims.get(workspace).cloned().ok_or_else(|| anyhow!("run {self} has no workspace {workspace}"))
    }

    /// The claims a task mounts.
    pub fn task_claims(&self, task: &str) -> BTreeSet<String> {
        self.spec
            .tasks
            .iter()
            .filter(|t| t.name == task)
            .flat_map(|t| t.workspaces.iter().filter_map(|(_, pw)| self.claims.get(pw).cloned()))
            .collect()
    }
}

impl std::fmt::Display for StartedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PipelineRun {}/{}", self.namespace, self.name)
    }
}

/// Creates the run (and its Pipeline, and static volumes for its template claims); with the
/// fake, also plays Tekton's part up to every task pod being created.
pub async fn start_run(env: &Env, ns: &str, spec: RunSpec) -> anyhow::Result<StartedRun> {
    let image = &env.settings.step_image;
    if let Some(pipeline) = spec.pipeline_object(image) {
        let obj: DynamicObject = serde_json::from_value(pipeline)?;
        api(&env.client, ns, Kind::Pipeline)
            .create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating Pipeline {ns}/{}", obj.name_any()))?;
    }
    let obj: DynamicObject = serde_json::from_value(spec.run_object(env.tekton, image))?;
    let created = api(&env.client, ns, Kind::PipelineRun)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating PipelineRun {ns}/{}", spec.name))?;
    let uid = created.metadata.uid.clone().ok_or_else(|| anyhow!("PipelineRun {ns}/{} has no uid", spec.name))?;
    let mut claims = BTreeMap::new();
    for w in &spec.workspaces {
        let claim = match &w.source {
            Source::Claim(c) => c.clone(),
            Source::Template(prefix) => {
                let claim = template_claim_name(Some(prefix), &w.name, &uid);
                // Tekton (or the fake, below) creates the claim; its volume waits for it.
                crate::storage::volume_for(env, ns, &claim, "ReadWriteOnce").await?;
                claim
            }
        };
        claims.insert(w.name.clone(), claim);
    }
    let run = StartedRun { namespace: ns.to_string(), name: spec.name.clone(), uid, spec, claims };
    if env.tekton == Mode::Fake {
        play_tekton(env, &run).await.with_context(|| format!("playing Tekton's part for {run}"))?;
    }
    Ok(run)
}

fn now() -> String {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}

fn owner(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": aa_tekton::API_VERSION, "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// What Tekton's PipelineRun reconciler does, in its order, up to every task pod existing.
async fn play_tekton(env: &Env, run: &StartedRun) -> anyhow::Result<()> {
    let ns = &run.namespace;
    let runs = api(&env.client, ns, Kind::PipelineRun);
    // 1. Resolve the spec; label the run and merge the Pipeline's annotations into it.
    let (pipeline_label, pipeline_spec) = match &run.spec.pipeline {
        Some((name, _)) => {
            let p = api(&env.client, ns, Kind::Pipeline)
                .get(name)
                .await
                .with_context(|| format!("reading Pipeline {ns}/{name}"))?;
            (name.clone(), p.data.get("spec").cloned().unwrap_or(Value::Null))
        }
        None => (run.name.clone(), run.spec.pipeline_spec(&env.settings.step_image)),
    };
    let annotations = run.spec.merged_annotations();
    let meta = json!({"metadata": {"labels": {LABEL_PIPELINE: pipeline_label}, "annotations": annotations}});
    runs.patch(&run.name, &PatchParams::default(), &Patch::Merge(&meta)).await.context("labelling the run")?;
    // 2. The PVCs of volumeClaimTemplate workspaces, owned by the run.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    for w in &run.spec.workspaces {
        if let Source::Template(prefix) = &w.source {
            let claim = run.claim(&w.name)?;
            let pvc = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "ownerReferences": [owner(aa_tekton::KIND_PIPELINE_RUN, &run.name, &run.uid)]},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                         "resources": {"requests": {"storage": crate::storage::SIZE}}},
            });
            pvcs.create(&PostParams::default(), &serde_json::from_value(pvc)?)
                .await
                .with_context(|| format!("creating PVC {ns}/{claim} for template {prefix}"))?;
        }
    }
    // 3. Started: the resolved spec goes into the status before any TaskRun exists.
    let started = now();
    let status = json!({"status": {
        "startTime": started,
        "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running", "lastTransitionTime": started}],
        "pipelineSpec": pipeline_spec,
    }});
    runs.patch_status(&run.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("setting the run's status")?;
    // 4. A TaskRun per task, then its pod.
    let task_runs = api(&env.client, ns, Kind::TaskRun);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let mut children = Vec::new();
    for task in &run.spec.tasks {
        let tr_name = child_name(&run.name, &format!("-{}", task.name))?;
        let labels = json!({
            LABEL_PIPELINE: pipeline_label, LABEL_PIPELINE_RUN: run.name, LABEL_PIPELINE_RUN_UID: run.uid,
            LABEL_PIPELINE_TASK: task.name, LABEL_MEMBER_OF: "tasks",
        });
        let bindings: Vec<Value> = task
            .workspaces
            .iter()
            .map(|(tw, pw)| run.claims.get(pw).map(|c| json!({"name": tw, "persistentVolumeClaim": {"claimName": c}})))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow!("task {} binds a workspace the run does not have", task.name))?;
        let task_spec = pipeline_spec["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == task.name.as_str()))
            .map(|t| t["taskSpec"].clone())
            .unwrap_or(Value::Null);
        let tr = json!({
            "apiVersion": aa_tekton::API_VERSION, "kind": "TaskRun",
            "metadata": {"name": tr_name, "labels": labels, "annotations": annotations,
                         "ownerReferences": [owner(aa_tekton::KIND_PIPELINE_RUN, &run.name, &run.uid)]},
            "spec": {"taskSpec": task_spec, "workspaces": bindings, "serviceAccountName": "default",
                     "managedBy": MANAGED_BY_FAKE},
        });
        let tr = task_runs
            .create(&PostParams::default(), &serde_json::from_value(tr)?)
            .await
            .with_context(|| format!("creating TaskRun {ns}/{tr_name}"))?;
        let tr_uid = tr.metadata.uid.clone().unwrap_or_default();
        let claims: Vec<(String, String)> =
            task.workspaces.iter().filter_map(|(tw, pw)| run.claims.get(pw).map(|c| (tw.clone(), c.clone()))).collect();
        let pod = task_pod(&PodInputs {
            run: &run.name,
            run_uid: &run.uid,
            pipeline: &pipeline_label,
            task: &task.name,
            task_run: &tr_name,
            task_run_uid: &tr_uid,
            annotations: &annotations,
            workspaces: &claims,
            image: &env.settings.pod_image,
        })?;
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await
            .with_context(|| format!("creating task pod {ns}/{pod_name}"))?;
        let tr_status = json!({"status": {"podName": pod_name, "startTime": now(),
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]}});
        task_runs.patch_status(&tr_name, &PatchParams::default(), &Patch::Merge(&tr_status)).await?;
        children.push(json!({"apiVersion": aa_tekton::API_VERSION, "kind": "TaskRun", "name": tr_name,
                             "pipelineTaskName": task.name}));
    }
    let status = json!({"status": {"childReferences": children}});
    runs.patch_status(&run.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("recording children")?;
    Ok(())
}

/// What a task pod is made from.
pub struct PodInputs<'a> {
    pub run: &'a str,
    pub run_uid: &'a str,
    pub pipeline: &'a str,
    pub task: &'a str,
    pub task_run: &'a str,
    pub task_run_uid: &'a str,
    /// The TaskRun's annotations (the run's, merged).
    pub annotations: &'a BTreeMap<String, String>,
    /// (task-side workspace name, claim) of the task's PVC workspaces.
    pub workspaces: &'a [(String, String)],
    pub image: &'a str,
}

/// A task pod as Tekton makes it: see `tekton-task-pod-shape.yaml`. One `ws-xxxxx` volume per
/// distinct claim (the first workspace bound to a claim names it), Tekton's internal
/// emptyDirs, the step container. The image never has to start: the suite waits only for
/// the pod to be bound to a node.
pub fn task_pod(i: &PodInputs<'_>) -> anyhow::Result<Value> {
    let name = child_name(i.task_run, "-pod")?;
    let mut volumes: Vec<Value> = Vec::new();
    let mut volume_of_claim: BTreeMap<&str, String> = BTreeMap::new();
    let mut mounts: Vec<Value> = Vec::new();
    for (tw, claim) in i.workspaces {
        let volume = volume_of_claim
            .entry(claim.as_str())
            .or_insert_with(|| {
                let v = workspace_volume_name(tw);
                volumes.push(json!({"name": v, "persistentVolumeClaim": {"claimName": claim}}));
                v
            })
            .clone();
        mounts.push(json!({"name": volume, "mountPath": format!("/workspace/{tw}")}));
    }
    for internal in
        ["tekton-internal-workspace", "tekton-internal-home", "tekton-internal-results", "tekton-internal-steps"]
    {
        volumes.push(json!({"name": internal, "emptyDir": {}}));
    }
    let mut annotations = i.annotations.clone();
    annotations.insert(ANNOTATION_RELEASE.into(), "e2e-fake".into());
    Ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                LABEL_PIPELINE: i.pipeline, LABEL_PIPELINE_RUN: i.run, LABEL_PIPELINE_RUN_UID: i.run_uid,
                LABEL_PIPELINE_TASK: i.task, LABEL_MEMBER_OF: "tasks", LABEL_TASK_RUN: i.task_run,
                LABEL_TASK_RUN_UID: i.task_run_uid, "app.kubernetes.io/managed-by": "tekton-pipelines",
            },
            "annotations": annotations,
            "ownerReferences": [owner("TaskRun", i.task_run, i.task_run_uid)],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "default",
            "securityContext": restricted_pod(),
            "containers": [{
                "name": "step-main",
                "image": i.image,
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}},
                "securityContext": restricted_container(),
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }
    }))
}

/// Waits until every task of the run has a pod bound to a node (`spec.nodeName`: the
/// scheduler's decision, which is all the suite needs; pods never have to start).
pub async fn bound_task_pods(env: &Env, run: &StartedRun) -> anyhow::Result<BTreeMap<String, Pod>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &run.namespace);
    let lp = ListParams::default().labels(&format!("{LABEL_PIPELINE_RUN}={}", run.name));
    // Real Tekton first pulls images and starts TaskRuns: give it the step's time as well.
    let timeout = env.settings.timeout + Duration::from_secs(if env.tekton == Mode::Real { 60 } else { 0 });
    wait_for(format!("the task pods of {run} to be bound to nodes"), timeout, || async {
        let list = pods.list(&lp).await?;
        let mut bound = BTreeMap::new();
        let mut waiting = Vec::new();
        for task in &run.spec.tasks {
            let pod = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .find(|p| p.labels().get(LABEL_PIPELINE_TASK) == Some(&task.name));
            match pod {
                None => waiting.push(format!("{}: no pod yet", task.name)),
                Some(p) => match p.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                    Some(_) => {
                        bound.insert(task.name.clone(), p.clone());
                    }
                    None => waiting.push(format!(
                        "{}: pod {} not bound ({})",
                        task.name,
                        p.name_any(),
                        scheduling_message(p)
                    )),
                },
            }
        }
        Ok(if waiting.is_empty() { Check::Done(bound) } else { Check::NotYet(waiting.join("; ")) })
    })
    .await
}

/// The scheduler's word on an unbound pod, for failure messages.
pub fn scheduling_message(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|c| format!("PodScheduled={}: {}", c.status, c.message.clone().unwrap_or_default()))
        .unwrap_or_else(|| "not considered by the scheduler yet".into())
}

/// Marks the run done (`Succeeded=True`, `completionTime`) without touching its pods: what a
/// cancelled or timed-out run looks like while its pods still terminate. Fake Tekton only.
pub async fn mark_run_done(env: &Env, run: &StartedRun) -> anyhow::Result<()> {
    if env.tekton != Mode::Fake {
        bail!("mark_run_done plays Tekton's part: only with the fake");
    }
    let t = now();
    let status = json!({"status": {"completionTime": t,
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "lastTransitionTime": t}]}});
    api(&env.client, &run.namespace, Kind::PipelineRun)
        .patch_status(&run.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("marking {run} done"))?;
    Ok(())
}

/// Finishes the run's task pods and TaskRuns. Fake Tekton only.
///
/// Each pod is marked `Succeeded` through the status subresource (what a kubelet reports,
/// and all a control plane without kubelets can show), then deleted: where a kubelet does
/// run the pod, it owns the pod's status and would report its still-running container again.
pub async fn finish_task_pods(env: &Env, run: &StartedRun) -> anyhow::Result<()> {
    if env.tekton != Mode::Fake {
        bail!("finish_task_pods plays Tekton's part: only with the fake");
    }
    let ns = &run.namespace;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{LABEL_PIPELINE_RUN}={}", run.name));
    let done = json!({"status": {"phase": "Succeeded"}});
    for pod in pods.list(&lp).await.with_context(|| format!("listing the pods of {run}"))? {
        let name = pod.name_any();
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&done))
            .await
            .with_context(|| format!("marking pod {ns}/{name} Succeeded"))?;
        crate::env::force_delete(&pods, &pod).await.with_context(|| format!("deleting finished pod {ns}/{name}"))?;
    }
    let task_runs = api(&env.client, ns, Kind::TaskRun);
    let t = now();
    let status = json!({"status": {"completionTime": t,
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "lastTransitionTime": t}]}});
    for task in &run.spec.tasks {
        let name = child_name(&run.name, &format!("-{}", task.name))?;
        task_runs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("marking TaskRun {ns}/{name} done"))?;
    }
    Ok(())
}

/// Ends the run the way Tekton does: with the fake, pods and TaskRuns finish, then the run;
/// with real Tekton, waits for the steps to finish and Tekton to mark the run done.
pub async fn end_run(env: &Env, run: &StartedRun) -> anyhow::Result<()> {
    match env.tekton {
        Mode::Fake => {
            finish_task_pods(env, run).await?;
            mark_run_done(env, run).await
        }
        Mode::Real => {
            let runs = api(&env.client, &run.namespace, Kind::PipelineRun);
            let timeout = env.settings.timeout + Duration::from_secs(run.spec.step_seconds);
            wait_for(format!("Tekton to finish {run}"), timeout, || async {
                let obj = runs.get(&run.name).await?;
                let cond = succeeded_condition(&obj.data);
                Ok(match cond.as_deref() {
                    Some("True") => Check::Done(()),
                    Some("False") => Check::Done(()),
                    other => Check::NotYet(format!("Succeeded={}", other.unwrap_or("<none>"))),
                })
            })
            .await
        }
    }
}

/// The status of a run's `Succeeded` condition.
pub fn succeeded_condition(data: &Value) -> Option<String> {
    data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Succeeded")
        .and_then(|c| c["status"].as_str())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_follow_tekton() {
        // tekton-task-pod-shape.yaml: task workspace "source" -> ws-1bcf2.
        assert_eq!(workspace_volume_name("source"), "ws-1bcf2");
        assert_eq!(workspace_volume_name("").len(), 8);
    }

    #[test]
    fn template_claims_follow_tekton() {
        // tekton-task-pod-shape.yaml: binding "source" of run uid 0d8f...0001 -> pvc-abd8db64c5.
        assert_eq!(template_claim_name(None, "source", "0d8f1a2b-0000-4000-8000-000000000001"), "pvc-abd8db64c5");
    }

    #[test]
    fn child_names_refuse_what_tekton_would_hash() {
        assert_eq!(child_name("run", "-build").unwrap(), "run-build");
        assert!(child_name(&"r".repeat(60), "-build").is_err());
    }

    #[test]
    fn the_fixture_crds_parse_and_lose_their_conversion_webhook() {
        for file in CRD_FILES {
            let crd = read_crd(&crd_dir().join(file)).unwrap();
            assert_eq!(crd.spec.group, "tekton.dev", "{file}");
            assert!(crd.spec.conversion.is_none(), "{file}");
            let v1 = crd.spec.versions.iter().find(|v| v.name == "v1").expect("v1 served");
            assert!(v1.served && v1.storage, "{file}: the suite uses v1, the storage version");
            assert!(v1.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{file}: status subresource");
        }
    }

    fn spec() -> RunSpec {
        RunSpec::new("build")
            .annotate("team", "a")
            .template("source", "src")
            .claim("cache", "build-cache")
            .task("fetch", &[("output", "source")])
            .task("compile", &[("src", "source"), ("cache", "cache"), ("again", "source")])
            .task("notify", &[])
    }

    #[test]
    fn run_object_has_the_shapes_the_crd_and_the_add_on_read() {
        let run = spec().run_object(Mode::Fake, "img");
        assert_eq!(run["metadata"]["annotations"][affinity_assistant::names::ANNOTATION_MODE], "workspaces");
        assert_eq!(run["spec"]["managedBy"], MANAGED_BY_FAKE);
        assert_eq!(run["spec"]["workspaces"][0]["volumeClaimTemplate"]["metadata"]["name"], "src");
        assert_eq!(run["spec"]["workspaces"][0]["volumeClaimTemplate"]["spec"]["storageClassName"], "");
        assert_eq!(run["spec"]["workspaces"][1]["persistentVolumeClaim"]["claimName"], "build-cache");
        let tasks = run["spec"]["pipelineSpec"]["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[1]["workspaces"][1], json!({"name": "cache", "workspace": "cache"}));
        assert_eq!(tasks[1]["taskSpec"]["steps"][0]["securityContext"]["runAsNonRoot"], true);
        // The same object parses with the add-on's own Tekton adapter.
        let parsed = aa_tekton::PipelineRun::from_value(&run).unwrap();
        assert_eq!(parsed.spec.workspaces.len(), 2);
        let real = spec().run_object(Mode::Real, "img");
        assert!(real["spec"].get("managedBy").is_none(), "real Tekton must manage its runs");
    }

    #[test]
    fn pipeline_annotations_merge_under_the_runs() {
        let s = RunSpec::new("r")
            .annotate("a", "run")
            .via_pipeline("p", &[("a", "pipeline"), (affinity_assistant::names::ANNOTATION_ENABLED, "false")]);
        let merged = s.merged_annotations();
        assert_eq!(merged["a"], "run");
        assert_eq!(merged[affinity_assistant::names::ANNOTATION_ENABLED], "false");
        let run = s.run_object(Mode::Fake, "img");
        assert_eq!(run["spec"]["pipelineRef"]["name"], "p");
        assert!(run["spec"].get("pipelineSpec").is_none());
        assert_eq!(s.pipeline_object("img").unwrap()["metadata"]["annotations"]["a"], "pipeline");
    }

    #[test]
    fn task_pod_has_tektons_shape() {
        let annotations: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let workspaces = vec![
            ("source".to_string(), "src-0123456789".to_string()),
            ("cache".to_string(), "build-cache".to_string()),
            ("again".to_string(), "src-0123456789".to_string()),
        ];
        let pod = task_pod(&PodInputs {
            run: "build",
            run_uid: "uid-1",
            pipeline: "build",
            task: "compile",
            task_run: "build-compile",
            task_run_uid: "uid-2",
            annotations: &annotations,
            workspaces: &workspaces,
            image: "pause",
        })
        .unwrap();
        assert_eq!(pod["metadata"]["name"], "build-compile-pod");
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels[LABEL_PIPELINE_RUN], "build");
        assert_eq!(labels[LABEL_PIPELINE_RUN_UID], "uid-1");
        assert_eq!(labels[LABEL_PIPELINE_TASK], "compile");
        assert_eq!(labels[LABEL_TASK_RUN], "build-compile");
        assert_eq!(labels[LABEL_MEMBER_OF], "tasks");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "tekton-pipelines");
        assert_eq!(pod["metadata"]["annotations"]["team"], "a");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "TaskRun");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let claims: Vec<(&str, &str)> = volumes
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?, v["persistentVolumeClaim"]["claimName"].as_str()?)))
            .collect();
        // One volume per claim, named after the first workspace bound to it.
        assert_eq!(
            claims,
            vec![("ws-1bcf2", "src-0123456789"), (workspace_volume_name("cache").as_str(), "build-cache")]
        );
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"].as_array().unwrap().len(), 3);
        // The add-on reads it like any Tekton pod.
        let typed: Pod = serde_json::from_value(pod).unwrap();
        assert!(typed.spec.unwrap().affinity.is_none(), "the fake adds no affinity of its own");
    }

    #[test]
    fn started_run_knows_each_tasks_claims() {
        let s = spec();
        let run = StartedRun {
            namespace: "ns".into(),
            name: "build".into(),
            uid: "u".into(),
            claims: [("source".to_string(), "src-x".to_string()), ("cache".to_string(), "build-cache".to_string())]
                .into(),
            spec: s,
        };
        assert_eq!(run.task_claims("compile"), ["build-cache".to_string(), "src-x".to_string()].into());
        assert!(run.task_claims("notify").is_empty());
        assert!(run.claim("nope").unwrap_err().to_string().contains("PipelineRun ns/build"));
    }

    #[test]
    fn done_is_read_from_the_succeeded_condition() {
        let d = json!({"status": {"conditions": [{"type": "Other", "status": "True"}, {"type": "Succeeded", "status": "False"}]}});
        assert_eq!(succeeded_condition(&d).as_deref(), Some("False"));
        assert_eq!(succeeded_condition(&json!({})), None);
    }
}
