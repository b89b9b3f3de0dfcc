//! Argo Workflows for the suite: its CRDs, whether a real workflow-controller runs, the
//! Workflows the Argo scenarios create, and the fake that plays Argo's part when none runs.
//!
//! The fake does what Argo's controller does (`workflow/controller/operator.go`,
//! `workflowpod.go`), in its order, so the add-on sees the same sequence of objects
//! (shapes: `tests/fixtures/argo/argo-pod-shape.yaml`, `argo-workflow-status-shape.yaml`):
//! - first reconcile: the PVCs of `volumeClaimTemplates` (`<workflow>-<template name>`,
//!   labelled `workflows.argoproj.io/workflow`, owned by the Workflow as controller), then the
//!   first step group's pods, and only THEN the Workflow's first write: `status.phase:
//!   Running`, `startedAt`, `persistentVolumeClaims`, `nodes`, the phase and completed labels,
//!   the pod-name-format annotation. So the first pods are admitted while the Workflow still
//!   has no status (phase `""`);
//! - pods: v2 names (`<workflow>-<template>-<fnv32a(node name)>`), labels
//!   `workflows.argoproj.io/workflow` and `completed: "false"` (never the Workflow's
//!   annotations: Argo does not copy them), annotations `node-name` and `node-id`, exactly one
//!   ownerReference (the Workflow, controller), Argo's emptyDirs, the init/wait/main containers,
//!   and the claims as volumes named after the template's volume;
//! - a claim named by a template input (`templates[].volumes[].persistentVolumeClaim.claimName:
//!   "{{inputs.parameters.<p>}}"`, the value passed by the step as an argument) stays that text
//!   in the Workflow; the pod gets the value, as Argo substitutes a template's inputs before it
//!   builds the pod (`substituteParamsInVolumes`);
//! - a step group runs once the one before finished: the fake waits for the group's pods to
//!   be bound (they must run somewhere to finish), marks them `Succeeded` and removes them
//!   (the fake's Workflows ask for `podGC: OnPodCompletion`, so that is Argo's own behaviour;
//!   a kubelet would otherwise report the pause container running again), then creates the
//!   next group's pods and records the nodes (after a pause, when the spec asks for one: how
//!   long Argo takes to notice the finished pods and reconcile);
//! - completion: the pods finish, then `volumeClaimGC` (`OnWorkflowSuccess` by default:
//!   only when Succeeded; `OnWorkflowCompletion`: always) deletes the PVCs and strips their
//!   `kubernetes.io/pvc-protection` finalizer, and only then the completed phase, `finishedAt`
//!   and `completed: "true"` are written;
//! - `argo retry`: the same Workflow (same uid) loses its completed label, goes back to phase
//!   `""` with its PVC list emptied; its failed pods are deleted and created again (same node,
//!   same name), the kept PVC is reused, then phase `Running` is written.
//!
//! Every write of the Workflow goes to the main resource: Argo's CRD has no status
//! subresource. The fake's Workflows and pods carry `workflows.argoproj.io/controller-instanceid`
//! (as with a controller configured with that instance id), so a real workflow-controller
//! without an instance id leaves them alone.

use crate::env::{Check, Env, TektonChoice, force_delete, wait_for};
use crate::tekton::Mode;
use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub const API_VERSION: &str = "argoproj.io/v1alpha1";
pub const KIND_WORKFLOW: &str = "Workflow";
/// On every task pod (and on Argo's PVCs): the Workflow's name.
pub const LABEL_WORKFLOW: &str = "workflows.argoproj.io/workflow";
pub const LABEL_COMPLETED: &str = "workflows.argoproj.io/completed";
pub const LABEL_PHASE: &str = "workflows.argoproj.io/phase";
/// On Argo's agent and artifact-GC pods, never on task pods.
pub const LABEL_COMPONENT: &str = "workflows.argoproj.io/component";
pub const LABEL_INSTANCE_ID: &str = "workflows.argoproj.io/controller-instanceid";
pub const ANNOTATION_NODE_NAME: &str = "workflows.argoproj.io/node-name";
pub const ANNOTATION_NODE_ID: &str = "workflows.argoproj.io/node-id";
const ANNOTATION_POD_NAME_FORMAT: &str = "workflows.argoproj.io/pod-name-format";
/// The fake's instance id: a workflow-controller without one ignores the fake's objects.
pub const FAKE_INSTANCE_ID: &str = "e2e-affinity-assistant-fake-argo";
pub const ARGO_NAMESPACE: &str = "argo";
const ARGO_CONTROLLER: &str = "workflow-controller";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The minimal CRDs Argo installs by default, under `tests/fixtures/argo/crds`.
pub const CRD_FILES: [&str; 2] = ["minimal-argoproj.io_workflows.yaml", "minimal-argoproj.io_workflowtemplates.yaml"];

pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/argo/crds")
}

pub fn read_crd(path: &Path) -> anyhow::Result<CustomResourceDefinition> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {} as a CustomResourceDefinition", path.display()))
}

pub fn workflows_resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: API_VERSION.into(),
        kind: KIND_WORKFLOW.into(),
        plural: "workflows".into(),
    }
}

fn workflows(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &workflows_resource())
}

/// Installs Argo's minimal CRDs when missing and waits until Workflows are served.
pub async fn ensure_crds(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in CRD_FILES {
        let crd = read_crd(&crd_dir().join(file))?;
        let name = crd.name_any();
        if crds.get_opt(&name).await.with_context(|| format!("reading CustomResourceDefinition {name}"))?.is_none() {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => eprintln!("installed CustomResourceDefinition {name} (no Argo CRDs were served)"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating CustomResourceDefinition {name}")),
            }
        }
    }
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &workflows_resource());
    wait_for("argoproj.io/v1alpha1 workflows to be served", timeout, || async {
        all.list(&ListParams::default().limit(1)).await?;
        Ok(Check::Done(()))
    })
    .await
}

/// Real when asked for, or (auto) when Argo's workflow-controller Deployment in `argo` has an
/// available replica.
pub async fn detect(client: &Client, choice: TektonChoice) -> anyhow::Result<Mode> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ARGO_NAMESPACE);
    let available = match deployments.get_opt(ARGO_CONTROLLER).await {
        Ok(d) => d.and_then(|d| d.status?.available_replicas).unwrap_or(0) > 0,
        Err(kube::Error::Api(s)) if s.code == 403 => false,
        Err(e) => return Err(e).context("looking for Argo's workflow-controller Deployment"),
    };
    Ok(match choice {
        TektonChoice::Real => Mode::Real,
        TektonChoice::Auto if available => Mode::Real,
        TektonChoice::Auto | TektonChoice::Fake => Mode::Fake,
    })
}

/// What every Argo scenario needs first: the CRDs (on a cluster), and a webhook entry that
/// sends Argo's task pods to the add-on. Fails naming what is missing.
pub async fn prepare(env: &Env) -> anyhow::Result<()> {
    if !env.offline {
        ensure_crds(&env.client, env.settings.timeout).await?;
    }
    let configs = Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing MutatingWebhookConfigurations")?;
    if !configs.iter().any(|c| crate::cluster::targets_pods_labelled(c, LABEL_WORKFLOW)) {
        bail!(
            "no MutatingWebhookConfiguration sends Argo task pods to a webhook (none has a pod CREATE rule whose \
             objectSelector names {LABEL_WORKFLOW}): the add-on's manifests have no Argo entry"
        );
    }
    Ok(())
}

/// Argo's executor writes WorkflowTaskResults as the pod's ServiceAccount: with a real
/// controller, the namespace's `default` ServiceAccount needs that (Argo's quick start grants
/// the same through its `executor` Role).
async fn grant_executor(env: &Env, ns: &str) -> anyhow::Result<()> {
    let role: Role = serde_json::from_value(json!({"metadata": {"name": "argo-executor"},
        "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]}))?;
    let binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "argo-executor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argo-executor"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}))?;
    for result in [
        Api::<Role>::namespaced(env.client.clone(), ns).create(&PostParams::default(), &role).await.map(|_| ()),
        Api::<RoleBinding>::namespaced(env.client.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("granting Argo's executor its rights in {ns}")),
        }
    }
    Ok(())
}

/// fnv32a, as Argo hashes node names into node ids and pod names.
pub fn fnv32a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Where a Workflow volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `spec.volumes[].persistentVolumeClaim.claimName`: an existing claim.
    Claim(String),
    /// `spec.volumeClaimTemplates[]` with this `metadata.name` (the volume's name too).
    Template,
    /// An existing claim named by a template input: each step template that mounts the volume
    /// declares it in `volumes` with `claimName: "{{inputs.parameters.<parameter>}}"` and takes
    /// `inputs.parameters: [{name: <parameter>}]`; the step passes `claim` as that argument.
    /// Only the pods name the claim. One parameter names one claim in a step.
    Parameter { parameter: String, claim: String },
}

impl Source {
    /// `{{inputs.parameters.<parameter>}}`, as the Workflow's template writes the claim.
    pub fn parameter_expression(parameter: &str) -> String {
        format!("{{{{inputs.parameters.{parameter}}}}}")
    }
}

/// One step: its own container template, mounting some of the Workflow's volumes; fanned out
/// over `items` (`withItems`) when there are any.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub mounts: Vec<String>,
    pub items: Vec<String>,
    /// A step that fails (real Argo: the first time only, so that a retry succeeds).
    pub fails: bool,
}

/// A Workflow as a test wants it: `entrypoint: main`, a `steps` template of step groups (each
/// group's steps run in parallel, the groups one after the other).
#[derive(Debug, Clone)]
pub struct WorkflowSpec {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    /// (volume name, source), in `spec.volumes` / `spec.volumeClaimTemplates` order.
    pub volumes: Vec<(String, Source)>,
    pub groups: Vec<Vec<Step>>,
    /// `spec.volumeClaimGC.strategy`; None: Argo's default, OnWorkflowSuccess.
    pub volume_claim_gc: Option<String>,
    /// How long real Argo's steps run; the first group's steps run 1 s (their pods must be
    /// done before the next group starts).
    pub step_seconds: u64,
    /// The fake: how long after a step group's pods finished (and were removed) the next
    /// group's pods are created. Real Argo takes what it takes.
    pub pause_between_groups: Duration,
}

impl WorkflowSpec {
    /// A Workflow in the add-on's default mode whatever the cluster's config says.
    pub fn new(name: &str) -> WorkflowSpec {
        WorkflowSpec {
            name: name.into(),
            annotations: [(affinity_assistant::names::ANNOTATION_MODE.to_string(), "workspaces".to_string())].into(),
            volumes: Vec::new(),
            groups: Vec::new(),
            volume_claim_gc: None,
            step_seconds: 60,
            pause_between_groups: Duration::ZERO,
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn claim(mut self, volume: &str, claim: &str) -> Self {
        self.volumes.push((volume.into(), Source::Claim(claim.into())));
        self
    }

    pub fn template(mut self, volume: &str) -> Self {
        self.volumes.push((volume.into(), Source::Template));
        self
    }

    /// The existing claim `claim`, mounted as `volume` through a template volume whose
    /// `claimName` is `{{inputs.parameters.<parameter>}}` (see [`Source::Parameter`]).
    pub fn claim_by_parameter(mut self, volume: &str, parameter: &str, claim: &str) -> Self {
        self.volumes.push((volume.into(), Source::Parameter { parameter: parameter.into(), claim: claim.into() }));
        self
    }

    /// A new step group of one step per `(name, mounts)`.
    pub fn group(mut self, steps: &[(&str, &[&str])]) -> Self {
        let steps = steps
            .iter()
            .map(|(n, m)| Step {
                name: n.to_string(),
                mounts: m.iter().map(|s| s.to_string()).collect(),
                items: Vec::new(),
                fails: false,
            })
            .collect();
        self.groups.push(steps);
        self
    }

    /// Fans the last step added out over `items`.
    pub fn with_items(mut self, items: &[&str]) -> Self {
        if let Some(step) = self.groups.last_mut().and_then(|g| g.last_mut()) {
            step.items = items.iter().map(|s| s.to_string()).collect();
        }
        self
    }

    /// Makes the named step fail.
    pub fn failing(mut self, step: &str) -> Self {
        for s in self.groups.iter_mut().flatten().filter(|s| s.name == step) {
            s.fails = true;
        }
        self
    }

    pub fn volume_claim_gc(mut self, strategy: &str) -> Self {
        self.volume_claim_gc = Some(strategy.into());
        self
    }

    pub fn step_seconds(mut self, seconds: u64) -> Self {
        self.step_seconds = seconds;
        self
    }

    /// The fake waits this long between one step group's pods finishing and the next
    /// group's pods being created.
    pub fn pause_between_groups(mut self, seconds: u64) -> Self {
        self.pause_between_groups = Duration::from_secs(seconds);
        self
    }

    /// The step's mounts that come from a template input: (volume, parameter, claim).
    fn parameter_mounts<'s>(&'s self, step: &'s Step) -> impl Iterator<Item = (&'s str, &'s str, &'s str)> + 's {
        self.volumes.iter().filter(|(v, _)| step.mounts.contains(v)).filter_map(|(v, s)| match s {
            Source::Parameter { parameter, claim } => Some((v.as_str(), parameter.as_str(), claim.as_str())),
            _ => None,
        })
    }

    /// Every pod-making node: (group index, step, node display name `step` or `step(i:item)`).
    pub fn nodes(&self) -> Vec<(usize, &Step, String)> {
        let mut out = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            for step in group {
                if step.items.is_empty() {
                    out.push((g, step, step.name.clone()));
                } else {
                    for (i, item) in step.items.iter().enumerate() {
                        out.push((g, step, format!("{}({i}:{item})", step.name)));
                    }
                }
            }
        }
        out
    }

    fn container(&self, step: &Step, group: usize, image: &str) -> Value {
        let seconds = if group == 0 && self.groups.len() > 1 { 1 } else { self.step_seconds };
        // Fails the first time: the marker lives on the step's first volume, so an
        // `argo retry` of the same Workflow succeeds.
        let script = match (step.fails, step.mounts.first()) {
            (true, Some(v)) => format!("test -f /mnt/{v}/.retried || {{ touch /mnt/{v}/.retried; exit 1; }}"),
            (true, None) => "exit 1".to_string(),
            (false, _) => format!("sleep {seconds}"),
        };
        let mounts: Vec<Value> =
            step.mounts.iter().map(|v| json!({"name": v, "mountPath": format!("/mnt/{v}")})).collect();
        json!({"image": image, "command": ["sh", "-c", script], "volumeMounts": mounts,
               "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}}})
    }

    /// The Workflow object the test creates.
    pub fn workflow_object(&self, mode: Mode, image: &str) -> Value {
        let mut steps_template = Vec::new();
        let mut templates = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            let mut parallel = Vec::new();
            for step in group {
                let mut s = json!({"name": step.name, "template": step.name});
                if !step.items.is_empty() {
                    s["withItems"] = json!(step.items);
                }
                let mut template = json!({"name": step.name, "container": self.container(step, g, image)});
                // A claim named by an input: the template declares the input and the volume
                // with the expression, the step passes the claim as the argument.
                let mut inputs: Vec<Value> = Vec::new();
                let mut arguments: Vec<Value> = Vec::new();
                let mut own_volumes: Vec<Value> = Vec::new();
                for (volume, parameter, claim) in self.parameter_mounts(step) {
                    if !inputs.iter().any(|p| p["name"] == parameter) {
                        inputs.push(json!({"name": parameter}));
                        arguments.push(json!({"name": parameter, "value": claim}));
                    }
                    own_volumes.push(json!({"name": volume,
                        "persistentVolumeClaim": {"claimName": Source::parameter_expression(parameter)}}));
                }
                if !inputs.is_empty() {
                    s["arguments"] = json!({"parameters": arguments});
                    template["inputs"] = json!({"parameters": inputs});
                    template["volumes"] = json!(own_volumes);
                }
                parallel.push(s);
                templates.push(template);
            }
            steps_template.push(Value::Array(parallel));
        }
        templates.insert(0, json!({"name": "main", "steps": steps_template}));
        let volumes: Vec<Value> = self
            .volumes
            .iter()
            .filter_map(|(v, s)| match s {
                Source::Claim(c) => Some(json!({"name": v, "persistentVolumeClaim": {"claimName": c}})),
                Source::Template | Source::Parameter { .. } => None,
            })
            .collect();
        let claim_templates: Vec<Value> = self
            .volumes
            .iter()
            .filter(|(_, s)| *s == Source::Template)
            .map(|(v, _)| {
                // storageClassName "": bound to the suite's static volume, no provisioner.
                json!({"metadata": {"name": v}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                    "resources": {"requests": {"storage": crate::storage::SIZE}}}})
            })
            .collect();
        let mut spec = json!({"entrypoint": "main", "templates": templates});
        if !volumes.is_empty() {
            spec["volumes"] = json!(volumes);
        }
        if !claim_templates.is_empty() {
            spec["volumeClaimTemplates"] = json!(claim_templates);
        }
        if let Some(strategy) = &self.volume_claim_gc {
            spec["volumeClaimGC"] = json!({"strategy": strategy});
        }
        let mut labels = json!({});
        if mode == Mode::Fake {
            labels[LABEL_INSTANCE_ID] = json!(FAKE_INSTANCE_ID);
            spec["podGC"] = json!({"strategy": "OnPodCompletion"});
        }
        json!({"apiVersion": API_VERSION, "kind": KIND_WORKFLOW,
            "metadata": {"name": self.name, "labels": labels, "annotations": self.annotations},
            "spec": spec})
    }
}

/// A Workflow the test created, with its claims.
#[derive(Debug)]
pub struct StartedWorkflow {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub spec: WorkflowSpec,
    /// Claim of each PVC volume, by volume name.
    pub claims: BTreeMap<String, String>,
    /// The fake's pods as they were bound, before it finished and removed them, by node.
    finished: Mutex<BTreeMap<String, Pod>>,
}

impl StartedWorkflow {
    pub fn claim(&self, volume: &str) -> anyhow::Result<String> {
        self.claims.get(volume).cloned().ok_or_else(|| anyhow!("{self} has no volume {volume}"))
    }

    /// The claims the pods of a node (or step) mount.
    pub fn node_claims(&self, node: &str) -> BTreeSet<String> {
        let step = node.split('(').next().unwrap_or(node);
        self.spec
            .groups
            .iter()
            .flatten()
            .filter(|s| s.name == step)
            .flat_map(|s| s.mounts.iter().filter_map(|m| self.claims.get(m).cloned()))
            .collect()
    }

    /// Argo's full node name of a node display name.
    pub fn node_name(&self, group: usize, display: &str) -> String {
        format!("{}[{group}].{display}", self.name)
    }

    fn remember(&self, node: &str, pod: Pod) {
        if let Ok(mut f) = self.finished.lock() {
            f.insert(node.to_string(), pod);
        }
    }
}

impl std::fmt::Display for StartedWorkflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workflow {}/{}", self.namespace, self.name)
    }
}

/// Creates the Workflow (and static volumes for its template claims); with the fake, also
/// plays Argo's part up to the last step group's pods existing.
pub async fn start_workflow(env: &Env, ns: &str, spec: WorkflowSpec) -> anyhow::Result<StartedWorkflow> {
    if env.argo == Mode::Real && !env.offline {
        grant_executor(env, ns).await?;
    }
    let obj: DynamicObject = serde_json::from_value(spec.workflow_object(env.argo, &env.settings.step_image))?;
    let created = workflows(&env.client, ns)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating Workflow {ns}/{}", spec.name))?;
    let uid = created.metadata.uid.clone().ok_or_else(|| anyhow!("Workflow {ns}/{} has no uid", spec.name))?;
    let mut claims = BTreeMap::new();
    for (volume, source) in &spec.volumes {
        let claim = match source {
            Source::Claim(c) | Source::Parameter { claim: c, .. } => c.clone(),
            Source::Template => {
                let claim = format!("{}-{volume}", spec.name);
                crate::storage::volume_for(env, ns, &claim, "ReadWriteOnce").await?;
                claim
            }
        };
        claims.insert(volume.clone(), claim);
    }
    let wf = StartedWorkflow {
        namespace: ns.to_string(),
        name: spec.name.clone(),
        uid,
        spec,
        claims,
        finished: Mutex::new(BTreeMap::new()),
    };
    if env.argo == Mode::Fake {
        play_argo(env, &wf).await.with_context(|| format!("playing Argo's part for {wf}"))?;
    }
    Ok(wf)
}

fn now() -> String {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}

fn owner(wf: &StartedWorkflow) -> Value {
    json!({"apiVersion": API_VERSION, "kind": KIND_WORKFLOW, "name": wf.name, "uid": wf.uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// One write of the Workflow, through the main resource (no status subresource).
async fn write_workflow(env: &Env, wf: &StartedWorkflow, patch: Value) -> anyhow::Result<()> {
    workflows(&env.client, &wf.namespace)
        .patch(&wf.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("updating {wf}"))?;
    Ok(())
}

/// The PVCs of the Workflow's volumeClaimTemplates, as createPVCs makes them (an existing one
/// owned by this Workflow is reused, as after `argo retry`).
async fn create_pvcs(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &wf.namespace);
    for (volume, source) in &wf.spec.volumes {
        if *source != Source::Template {
            continue;
        }
        let claim = wf.claim(volume)?;
        let pvc = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "labels": {LABEL_WORKFLOW: wf.name}, "ownerReferences": [owner(wf)]},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "resources": {"requests": {"storage": crate::storage::SIZE}}},
        });
        match pvcs.create(&PostParams::default(), &serde_json::from_value(pvc)?).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let kept = pvcs.get(&claim).await?;
                let ours = kept.owner_references().iter().any(|o| o.uid == wf.uid);
                if !ours {
                    bail!("PVC {}/{claim} already exists with a different owner reference", wf.namespace);
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating PVC {}/{claim}", wf.namespace)),
        }
    }
    Ok(())
}

/// `status.persistentVolumeClaims`: one entry per volumeClaimTemplate.
fn status_pvcs(wf: &StartedWorkflow) -> Value {
    let list: Vec<Value> = wf
        .spec
        .volumes
        .iter()
        .filter(|(_, s)| *s == Source::Template)
        .filter_map(|(v, _)| wf.claims.get(v).map(|c| json!({"name": v, "persistentVolumeClaim": {"claimName": c}})))
        .collect();
    json!(list)
}

/// The pod Argo builds for one node (argo-pod-shape.yaml).
pub fn task_pod(wf: &StartedWorkflow, group: usize, step: &Step, display: &str, image: &str) -> Value {
    let node_name = wf.node_name(group, display);
    let hash = fnv32a(&node_name);
    let node_id = format!("{}-{hash}", wf.name);
    let pod_name = format!("{}-{}-{hash}", wf.name, step.name);
    let mut volumes =
        vec![json!({"name": "var-run-argo", "emptyDir": {}}), json!({"name": "tmp-dir-argo", "emptyDir": {}})];
    // Workflow-level volumes, claim templates and the template's own volumes (a claim named by
    // an input with the step's argument filled in, as Argo builds the pod), only those a mount
    // refers to, in spec order.
    for (volume, _) in wf.spec.volumes.iter().filter(|(v, _)| step.mounts.contains(v)) {
        if let Some(claim) = wf.claims.get(volume) {
            volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}));
        }
    }
    let user_mounts: Vec<Value> =
        step.mounts.iter().map(|v| json!({"name": v, "mountPath": format!("/mnt/{v}")})).collect();
    let mut wait_mounts: Vec<Value> =
        step.mounts.iter().map(|v| json!({"name": v, "mountPath": format!("/mainctrfs/mnt/{v}")})).collect();
    wait_mounts.push(json!({"name": "tmp-dir-argo", "mountPath": "/tmp", "subPath": "0"}));
    wait_mounts.push(json!({"name": "var-run-argo", "mountPath": "/var/run/argo"}));
    let mut main_mounts = user_mounts;
    main_mounts.push(json!({"name": "var-run-argo", "mountPath": "/var/run/argo"}));
    let resources = json!({"requests": {"cpu": "1m", "memory": "8Mi"}});
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "labels": {LABEL_WORKFLOW: wf.name, LABEL_COMPLETED: "false", LABEL_INSTANCE_ID: FAKE_INSTANCE_ID},
            "annotations": {ANNOTATION_NODE_NAME: node_name, ANNOTATION_NODE_ID: node_id,
                            "kubectl.kubernetes.io/default-container": "main"},
            "ownerReferences": [owner(wf)],
        },
        "spec": {
            "restartPolicy": "Never",
            "volumes": volumes,
            "initContainers": [{"name": "init", "image": image, "resources": resources,
                "volumeMounts": [{"name": "var-run-argo", "mountPath": "/var/run/argo"}]}],
            "containers": [
                {"name": "wait", "image": image, "resources": resources, "volumeMounts": wait_mounts},
                {"name": "main", "image": image, "resources": resources, "volumeMounts": main_mounts},
            ],
        }
    })
}

fn pod_node(wf: &StartedWorkflow, group: usize, step: &Step, display: &str, phase: &str) -> (String, Value) {
    let name = wf.node_name(group, display);
    let id = format!("{}-{}", wf.name, fnv32a(&name));
    let node = json!({"id": id, "name": name, "displayName": display, "type": "Pod", "templateName": step.name,
        "boundaryID": wf.name, "phase": phase});
    (id, node)
}

/// Creates the pods of one step group; returns (node display name, pod name).
async fn create_group(
    env: &Env,
    wf: &StartedWorkflow,
    group: usize,
    only: Option<&BTreeSet<String>>,
) -> anyhow::Result<Vec<(String, String)>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &wf.namespace);
    let mut made = Vec::new();
    for (g, step, display) in wf.spec.nodes() {
        if g != group || only.is_some_and(|o| !o.contains(&display)) {
            continue;
        }
        let pod = task_pod(wf, g, step, &display, &env.settings.pod_image);
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await
            .with_context(|| format!("creating pod {}/{name} of {wf}", wf.namespace))?;
        made.push((display, name));
    }
    Ok(made)
}

/// The status nodes for every node created so far, with their phases.
fn nodes_status(wf: &StartedWorkflow, phases: &BTreeMap<String, String>) -> Value {
    let mut nodes = serde_json::Map::new();
    let mut children = Vec::new();
    for (g, step, display) in wf.spec.nodes() {
        if let Some(phase) = phases.get(&display) {
            let (id, node) = pod_node(wf, g, step, &display, phase);
            children.push(json!(id.clone()));
            nodes.insert(id, node);
        }
    }
    nodes.insert(
        wf.name.clone(),
        json!({"id": wf.name, "name": wf.name, "displayName": wf.name, "type": "Steps", "templateName": "main",
            "phase": "Running", "children": children}),
    );
    Value::Object(nodes)
}

/// Waits until the named pods are bound, remembers them, marks them finished and removes them
/// (podGC OnPodCompletion).
async fn finish_pods(env: &Env, wf: &StartedWorkflow, made: &[(String, String)], phase: &str) -> anyhow::Result<()> {
    let ns = &wf.namespace;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    for (display, name) in made {
        let bound = wait_for(
            format!("pod {ns}/{name} of {wf} to be bound (to run and finish)"),
            env.settings.timeout,
            || async {
                Ok(match pods.get_opt(name).await? {
                    Some(p) if crate::cluster::node_of(&p).is_some() => Check::Done(p),
                    Some(p) => Check::NotYet(crate::tekton::scheduling_message(&p)),
                    None => Check::NotYet("gone".into()),
                })
            },
        )
        .await?;
        wf.remember(display, bound.clone());
        let done = json!({"status": {"phase": phase}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&done))
            .await
            .with_context(|| format!("marking pod {ns}/{name} {phase}"))?;
        let labelled = json!({"metadata": {"labels": {LABEL_COMPLETED: "true"}}});
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&labelled)).await?;
        force_delete(&pods, &bound).await.with_context(|| format!("removing finished pod {ns}/{name}"))?;
    }
    Ok(())
}

/// Argo's reconciles up to every step group's pods existing (the last group's still running).
async fn play_argo(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<()> {
    // First reconcile, in memory: phase Running, the PVCs, the first group's pods; then the
    // first write of the Workflow.
    create_pvcs(env, wf).await?;
    let mut phases: BTreeMap<String, String> = BTreeMap::new();
    let mut made = create_group(env, wf, 0, None).await?;
    phases.extend(made.iter().map(|(d, _)| (d.clone(), "Pending".to_string())));
    let started = now();
    write_workflow(
        env,
        wf,
        json!({
            "metadata": {"labels": {LABEL_PHASE: "Running", LABEL_COMPLETED: "false"},
                         "annotations": {ANNOTATION_POD_NAME_FORMAT: "v2"}},
            "status": {"phase": "Running", "startedAt": started, "finishedAt": null, "progress": "0/1",
                "conditions": [{"type": "PodRunning", "status": "True"}],
                "persistentVolumeClaims": status_pvcs(wf), "nodes": nodes_status(wf, &phases)},
        }),
    )
    .await?;
    for group in 1..wf.spec.groups.len() {
        finish_pods(env, wf, &made, "Succeeded").await?;
        for (d, _) in &made {
            phases.insert(d.clone(), "Succeeded".into());
        }
        tokio::time::sleep(wf.spec.pause_between_groups).await;
        made = create_group(env, wf, group, None).await?;
        phases.extend(made.iter().map(|(d, _)| (d.clone(), "Pending".to_string())));
        write_workflow(env, wf, json!({"status": {"nodes": nodes_status(wf, &phases)}})).await?;
    }
    Ok(())
}

/// Waits until every node of the Workflow has a pod bound to a node; the fake's finished pods
/// are the ones it remembered.
pub async fn bound_pods(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<BTreeMap<String, Pod>> {
    bound_pods_except(env, wf, &BTreeSet::new()).await
}

/// As [`bound_pods`], ignoring the pods with these uids (the ones a retry replaces).
pub async fn bound_pods_except(
    env: &Env,
    wf: &StartedWorkflow,
    old: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Pod>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &wf.namespace);
    let lp = ListParams::default().labels(&format!("{LABEL_WORKFLOW}={}", wf.name));
    let extra = if env.argo == Mode::Real { 60 + 2 * wf.spec.groups.len() as u64 } else { 0 };
    wait_for(
        format!("the pods of {wf} to be bound to nodes"),
        env.settings.timeout + Duration::from_secs(extra),
        || async {
            let list = pods.list(&lp).await?;
            let remembered = wf.finished.lock().map(|f| f.clone()).unwrap_or_default();
            let mut bound = BTreeMap::new();
            let mut waiting = Vec::new();
            for (g, _, display) in wf.spec.nodes() {
                let node_name = wf.node_name(g, &display);
                let live = list
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| p.uid().is_none_or(|u| !old.contains(&u)))
                    .find(|p| p.annotations().get(ANNOTATION_NODE_NAME) == Some(&node_name));
                match live.or(remembered.get(&display)) {
                    Some(p) if crate::cluster::node_of(p).is_some() => {
                        bound.insert(display.clone(), p.clone());
                    }
                    Some(p) => waiting.push(format!(
                        "{display}: pod {} not bound ({})",
                        p.name_any(),
                        crate::tekton::scheduling_message(p)
                    )),
                    None => waiting.push(format!("{display}: no pod yet")),
                }
            }
            Ok(if waiting.is_empty() { Check::Done(bound) } else { Check::NotYet(waiting.join("; ")) })
        },
    )
    .await
}

/// The Workflow's `status.phase` as stored ("" before the first write).
pub async fn phase(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<String> {
    let obj = workflows(&env.client, &wf.namespace).get(&wf.name).await.with_context(|| format!("reading {wf}"))?;
    Ok(obj.data["status"]["phase"].as_str().unwrap_or_default().to_string())
}

/// Finishes the pods of the last group that still run: `Succeeded`, or `Failed` for failing
/// steps. Fake Argo only.
pub async fn finish_running_pods(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<()> {
    if env.argo != Mode::Fake {
        bail!("finish_running_pods plays Argo's part: only with the fake");
    }
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &wf.namespace);
    let lp = ListParams::default().labels(&format!("{LABEL_WORKFLOW}={}", wf.name));
    let live = pods.list(&lp).await?;
    for (g, step, display) in wf.spec.nodes() {
        let node_name = wf.node_name(g, &display);
        if let Some(p) = live.iter().find(|p| p.annotations().get(ANNOTATION_NODE_NAME) == Some(&node_name)) {
            let phase = if step.fails { "Failed" } else { "Succeeded" };
            finish_pods(env, wf, &[(display.clone(), p.name_any())], phase).await?;
        }
    }
    Ok(())
}

/// Whether volumeClaimGC deletes the claims when the Workflow ends with `phase`.
pub fn collects_claims(spec: &WorkflowSpec, phase: &str) -> bool {
    match spec.volume_claim_gc.as_deref() {
        Some("OnWorkflowCompletion") => true,
        _ => phase == "Succeeded",
    }
}

/// volumeClaimGC: deletes the PVCs of the claim templates and strips their protection
/// finalizer, so they vanish even while a pod mounts them. Fake Argo only.
pub async fn collect_claims(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &wf.namespace);
    for (volume, source) in &wf.spec.volumes {
        if *source != Source::Template {
            continue;
        }
        let claim = wf.claim(volume)?;
        match pvcs.delete(&claim, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e).with_context(|| format!("deleting PVC {}/{claim}", wf.namespace)),
        }
        if let Some(pvc) = pvcs.get_opt(&claim).await? {
            let left: Vec<String> = pvc.finalizers().iter().filter(|f| *f != PVC_PROTECTION).cloned().collect();
            let patch = json!({"metadata": {"finalizers": left}});
            pvcs.patch(&claim, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("removing {PVC_PROTECTION} from PVC {}/{claim}", wf.namespace))?;
        }
    }
    write_workflow(env, wf, json!({"status": {"persistentVolumeClaims": []}})).await
}

/// Writes the completed phase (`Succeeded`, `Failed`, `Error`), `finishedAt` and the completed
/// label, without touching pods or claims. Fake Argo only.
pub async fn mark_completed(env: &Env, wf: &StartedWorkflow, phase: &str) -> anyhow::Result<()> {
    if env.argo != Mode::Fake {
        bail!("mark_completed plays Argo's part: only with the fake");
    }
    write_workflow(
        env,
        wf,
        json!({"metadata": {"labels": {LABEL_PHASE: phase, LABEL_COMPLETED: "true"}},
               "status": {"phase": phase, "finishedAt": now(),
                          "conditions": [{"type": "PodRunning", "status": "False"}, {"type": "Completed", "status": "True"}]}}),
    )
    .await
}

/// Ends the Workflow as Argo does: with the fake, the running pods finish (failing steps
/// fail), volumeClaimGC runs, then the completed phase is written; with real Argo, waits for
/// it to complete. Returns the phase.
pub async fn end_workflow(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<String> {
    match env.argo {
        Mode::Fake => {
            finish_running_pods(env, wf).await?;
            let failed = wf.spec.groups.iter().flatten().any(|s| s.fails);
            let phase = if failed { "Failed" } else { "Succeeded" };
            if collects_claims(&wf.spec, phase) {
                collect_claims(env, wf).await?;
            }
            mark_completed(env, wf, phase).await?;
            Ok(phase.to_string())
        }
        Mode::Real => wait_completed(env, wf).await,
    }
}

/// Waits for real Argo to complete the Workflow.
pub async fn wait_completed(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<String> {
    let timeout = env.settings.timeout + Duration::from_secs(wf.spec.step_seconds + 60);
    wait_for(format!("Argo to complete {wf}"), timeout, || async {
        let p = phase(env, wf).await?;
        Ok(match p.as_str() {
            "Succeeded" | "Failed" | "Error" => Check::Done(p),
            other => Check::NotYet(format!("phase {other:?}")),
        })
    })
    .await
}

/// `argo retry`: the same Workflow (same uid) is reopened and its failed pods are created
/// again. The fake does what FormulateRetryWorkflow and the next reconcile do; with real Argo
/// the `argo` CLI does it (it must be on PATH).
pub async fn retry(env: &Env, wf: &StartedWorkflow) -> anyhow::Result<()> {
    if env.argo == Mode::Real {
        let mut cmd = std::process::Command::new("argo");
        cmd.args(["retry", "-n", &wf.namespace, &wf.name]).env("KUBECONFIG", &env.settings.kubeconfig);
        if let Some(context) = &env.settings.context {
            cmd.args(["--context", context]);
        }
        let out = cmd.output().context("running `argo retry` (E2E_ARGO=real needs the argo CLI on PATH)")?;
        if !out.status.success() {
            bail!("argo retry {wf}: {}", String::from_utf8_lossy(&out.stderr));
        }
        return Ok(());
    }
    // FormulateRetryWorkflow: one update (completed label gone, phase "", finishedAt and the
    // PVC list cleared, failed nodes dropped), and the failed pods deleted.
    let failed: BTreeSet<String> = wf.spec.nodes().into_iter().filter(|(_, s, _)| s.fails).map(|(_, _, d)| d).collect();
    let mut phases: BTreeMap<String, String> = BTreeMap::new();
    for (_, step, display) in wf.spec.nodes() {
        if !step.fails {
            phases.insert(display, "Succeeded".into());
        }
    }
    write_workflow(
        env,
        wf,
        json!({"metadata": {"labels": {LABEL_COMPLETED: null, LABEL_PHASE: "Running"}},
               "status": {"phase": "", "finishedAt": null, "persistentVolumeClaims": [], "nodes": nodes_status(wf, &phases),
                          "conditions": [{"type": "Completed", "status": "False"}]}}),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &wf.namespace);
    let lp = ListParams::default().labels(&format!("{LABEL_WORKFLOW}={}", wf.name));
    for p in pods.list(&lp).await? {
        let display =
            p.annotations().get(ANNOTATION_NODE_NAME).and_then(|n| n.split_once("].")).map(|(_, d)| d.to_string());
        if display.is_some_and(|d| failed.contains(&d)) {
            force_delete(&pods, &p).await?;
        }
    }
    if let Ok(mut f) = wf.finished.lock() {
        f.retain(|d, _| !failed.contains(d));
    }
    // The next reconcile: the kept PVC is reused, the failed nodes' pods are created again
    // (the last group's), then phase Running is written.
    create_pvcs(env, wf).await?;
    let last = wf.spec.groups.len().saturating_sub(1);
    let made = create_group(env, wf, last, Some(&failed)).await?;
    for (d, _) in &made {
        phases.insert(d.clone(), "Pending".into());
    }
    write_workflow(
        env,
        wf,
        json!({"metadata": {"labels": {LABEL_PHASE: "Running"}},
               "status": {"phase": "Running", "persistentVolumeClaims": status_pvcs(wf), "nodes": nodes_status(wf, &phases)}}),
    )
    .await
}

/// The fake on its own, without the add-on's help (it runs offline today, Argo support or
/// not): a Workflow's claim, pods, completion, volumeClaimGC and `argo retry` come out as
/// Argo makes them.
pub async fn fake_self_test(env: std::sync::Arc<Env>) -> anyhow::Result<()> {
    use anyhow::ensure;
    let ns = env.namespace("", &[]).await?;
    let spec = WorkflowSpec::new("ci")
        .template("work")
        .group(&[("clone", &["work"])])
        .group(&[("test", &["work"])])
        .with_items(&["a", "b"]);
    let wf = start_workflow(&env, &ns, spec).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    let pvc = pvcs.get("ci-work").await.context("Argo's PVC <workflow>-<template>")?;
    ensure!(pvc.labels().get(LABEL_WORKFLOW) == Some(&wf.name), "PVC label: {:?}", pvc.labels());
    let owners = pvc.owner_references();
    ensure!(owners.len() == 1 && owners[0].uid == wf.uid && owners[0].controller == Some(true), "{owners:?}");
    ensure!(phase(&env, &wf).await? == "Running");
    let pods = bound_pods(&env, &wf).await?;
    ensure!(pods.keys().cloned().collect::<Vec<_>>() == ["clone", "test(0:a)", "test(1:b)"], "{:?}", pods.keys());
    for pod in pods.values() {
        let owners = pod.owner_references();
        ensure!(owners.len() == 1 && owners[0].kind == KIND_WORKFLOW && owners[0].uid == wf.uid, "{owners:?}");
        ensure!(pod.annotations().contains_key(ANNOTATION_NODE_ID));
    }
    ensure!(end_workflow(&env, &wf).await? == "Succeeded");
    ensure!(pvcs.get_opt("ci-work").await?.is_none(), "volumeClaimGC OnWorkflowSuccess deletes the claim");

    let flaky = WorkflowSpec::new("flaky").template("data").group(&[("a", &["data"]), ("b", &["data"])]).failing("b");
    let wf = start_workflow(&env, &ns, flaky).await?;
    let before = bound_pods(&env, &wf).await?;
    ensure!(end_workflow(&env, &wf).await? == "Failed");
    ensure!(pvcs.get_opt("flaky-data").await?.is_some(), "a failed Workflow keeps its claim");
    retry(&env, &wf).await?;
    ensure!(phase(&env, &wf).await? == "Running");
    let old: BTreeSet<String> = before.get("b").and_then(|p| p.uid()).into_iter().collect();
    let after = bound_pods_except(&env, &wf, &old).await?;
    ensure!(after["b"].name_any() == before["b"].name_any(), "argo retry makes the same node's pod again");
    let obj = workflows(&env.client, &ns).get(&wf.name).await?;
    ensure!(obj.uid().as_deref() == Some(wf.uid.as_str()) && !obj.labels().contains_key(LABEL_COMPLETED));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkflowSpec {
        WorkflowSpec::new("ci-1")
            .template("work")
            .claim("cache", "go-cache")
            .group(&[("clone", &["work"])])
            .group(&[("test", &["work", "cache"]), ("notify", &[])])
    }

    #[test]
    fn node_ids_and_pod_names_follow_argo() {
        // argo-workflow-status-shape.yaml: the hashes are FNV-1a 32 of the node name.
        assert_eq!(fnv32a(""), 0x811c_9dc5);
        let s = WorkflowSpec::new("ci-example-7xk2p")
            .template("workdir")
            .group(&[("run-hello", &["workdir"])])
            .with_items(&["a", "b", "c"]);
        let nodes = s.nodes();
        assert_eq!(
            nodes.iter().map(|(_, _, d)| d.as_str()).collect::<Vec<_>>(),
            ["run-hello(0:a)", "run-hello(1:b)", "run-hello(2:c)"]
        );
        let wf = StartedWorkflow {
            namespace: "ci".into(),
            name: "ci-example-7xk2p".into(),
            uid: "u".into(),
            claims: [("workdir".to_string(), "ci-example-7xk2p-workdir".to_string())].into(),
            spec: s.clone(),
            finished: Mutex::new(BTreeMap::new()),
        };
        let pod = task_pod(&wf, 0, nodes[0].1, &nodes[0].2, "pause");
        let node_name = "ci-example-7xk2p[0].run-hello(0:a)";
        let hash = fnv32a(node_name);
        assert_eq!(pod["metadata"]["name"], format!("ci-example-7xk2p-run-hello-{hash}"));
        assert_eq!(pod["metadata"]["annotations"][ANNOTATION_NODE_NAME], node_name);
        assert_eq!(pod["metadata"]["annotations"][ANNOTATION_NODE_ID], format!("ci-example-7xk2p-{hash}"));
        assert_eq!(pod["metadata"]["labels"][LABEL_WORKFLOW], "ci-example-7xk2p");
        assert_eq!(pod["metadata"]["labels"][LABEL_COMPLETED], "false");
        assert!(pod["metadata"]["labels"].get(LABEL_COMPONENT).is_none());
        let owners = pod["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0]["kind"].as_str(), owners[0]["uid"].as_str(), owners[0]["controller"].as_bool()),
            (Some("Workflow"), Some("u"), Some(true))
        );
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes[0]["name"], "var-run-argo");
        assert_eq!(
            volumes[2],
            json!({"name": "workdir", "persistentVolumeClaim": {"claimName": "ci-example-7xk2p-workdir"}})
        );
        assert_eq!(pod["spec"]["containers"][1]["name"], "main");
        // The add-on reads it like any pod; the fake adds no affinity of its own.
        let typed: Pod = serde_json::from_value(pod).unwrap();
        assert!(typed.spec.unwrap().affinity.is_none());
    }

    #[test]
    fn workflow_object_has_argos_shape() {
        let s = spec()
            .annotate(affinity_assistant::names::ANNOTATION_ENABLED, "false")
            .volume_claim_gc("OnWorkflowCompletion");
        let fake = s.workflow_object(Mode::Fake, "busybox");
        assert_eq!(fake["apiVersion"], API_VERSION);
        assert_eq!(fake["metadata"]["annotations"][affinity_assistant::names::ANNOTATION_ENABLED], "false");
        assert_eq!(fake["metadata"]["labels"][LABEL_INSTANCE_ID], FAKE_INSTANCE_ID);
        assert_eq!(fake["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "work");
        assert_eq!(fake["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "go-cache");
        assert_eq!(fake["spec"]["volumeClaimGC"]["strategy"], "OnWorkflowCompletion");
        assert_eq!(fake["spec"]["templates"][0]["steps"][1][0]["template"], "test");
        assert_eq!(fake["spec"]["templates"][2]["container"]["volumeMounts"][1]["name"], "cache");
        let real = spec().workflow_object(Mode::Real, "busybox");
        assert!(real["metadata"]["labels"].get(LABEL_INSTANCE_ID).is_none(), "real Argo must manage it");
        assert!(real["spec"].get("podGC").is_none());
    }

    #[test]
    fn a_claim_named_by_an_input_parameter_is_filled_in_only_in_the_pod() {
        let s = WorkflowSpec::new("p")
            .claim_by_parameter("work", "pvc", "shared-pvc")
            .group(&[("a", &["work"]), ("b", &["work"])])
            .group(&[("report", &["work"])]);
        let obj = s.workflow_object(Mode::Fake, "busybox");
        assert!(obj["spec"].get("volumes").is_none() && obj["spec"].get("volumeClaimTemplates").is_none());
        assert_eq!(
            obj["spec"]["templates"][0]["steps"][0][1]["arguments"],
            json!({"parameters": [{"name": "pvc", "value": "shared-pvc"}]})
        );
        let a = &obj["spec"]["templates"][1];
        assert_eq!(a["inputs"], json!({"parameters": [{"name": "pvc"}]}));
        assert_eq!(
            a["volumes"],
            json!([{"name": "work", "persistentVolumeClaim": {"claimName": "{{inputs.parameters.pvc}}"}}])
        );
        assert_eq!(a["container"]["volumeMounts"][0]["name"], "work");
        // The add-on reads the Workflow as the API server stores it: no claim is named there.
        let mut stored = obj.clone();
        stored["metadata"]["namespace"] = json!("ns");
        stored["metadata"]["uid"] = json!("u");
        let dynamic: DynamicObject = serde_json::from_value(stored).unwrap();
        let run = {
            use affinity_assistant::engine::Engine;
            affinity_assistant::engine::argo::Argo.run(&dynamic.metadata, &dynamic.data).unwrap()
        };
        assert!(run.bindings.iter().all(|b| b.source.claim_name().is_none()), "{:?}", run.bindings);

        // The pods carry the value (Argo substitutes the inputs before it builds the pod).
        let wf = StartedWorkflow {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            claims: [("work".to_string(), "shared-pvc".to_string())].into(),
            spec: s.clone(),
            finished: Mutex::new(BTreeMap::new()),
        };
        for (g, step, display) in s.nodes() {
            let pod = task_pod(&wf, g, step, &display, "pause");
            let volumes = pod["spec"]["volumes"].as_array().unwrap();
            assert_eq!(volumes[2], json!({"name": "work", "persistentVolumeClaim": {"claimName": "shared-pvc"}}));
            assert_eq!(wf.node_claims(&display), BTreeSet::from(["shared-pvc".to_string()]));
        }
    }

    #[test]
    fn a_failing_step_fails_only_the_first_time() {
        let s = WorkflowSpec::new("r").template("data").group(&[("a", &["data"]), ("b", &["data"])]).failing("b");
        let obj = s.workflow_object(Mode::Real, "busybox");
        let script = obj["spec"]["templates"][2]["container"]["command"][2].as_str().unwrap().to_string();
        assert!(script.contains(".retried") && script.contains("exit 1"), "{script}");
        assert!(obj["spec"]["templates"][1]["container"]["command"][2].as_str().unwrap().starts_with("sleep"));
    }

    #[test]
    fn claims_are_collected_as_volume_claim_gc_says() {
        let default = WorkflowSpec::new("w");
        assert!(collects_claims(&default, "Succeeded"));
        assert!(!collects_claims(&default, "Failed"), "OnWorkflowSuccess keeps the claim for argo retry");
        let always = WorkflowSpec::new("w").volume_claim_gc("OnWorkflowCompletion");
        assert!(collects_claims(&always, "Failed") && collects_claims(&always, "Error"));
    }

    #[test]
    fn the_fixture_crds_have_no_status_subresource() {
        for file in CRD_FILES {
            let crd = read_crd(&crd_dir().join(file)).unwrap();
            assert_eq!(crd.spec.group, "argoproj.io", "{file}");
            assert_eq!(crd.spec.scope, "Namespaced", "{file}");
            let v = crd.spec.versions.iter().find(|v| v.name == "v1alpha1").expect("v1alpha1 served");
            assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_none(), "{file}");
        }
    }
}
