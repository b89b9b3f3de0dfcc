//! `affinity-assistant render`: the decision core run offline over YAML files.
//!
//! It plays Tekton's part where its input lacks it: it resolves `pipelineRef` against the
//! Pipelines given (as if Tekton had set `status.pipelineSpec` and merged the Pipeline's
//! annotations), gives runs that only have `generateName` a marked stand-in name and uid, and
//! assumes ReadWriteOnce for claims whose PVC is not among the inputs. It cannot see the
//! cluster, so it applies config values as given.

use crate::config::Config;
use crate::core::claims::{AccessSource, task_claims};
use crate::core::{self, Decision, MissingClaims, NamespaceState, Plan};
use crate::engine::Engine;
use crate::engine::ParseError;
use crate::model::RunPhase;
use crate::model::{ClaimInfo, Run};
use crate::pod::TaskPod;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One input file.
pub struct Source {
    /// The name errors use (a path, or `-` for standard input).
    pub name: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{file}: document {doc}: {message}")]
    Document { file: String, doc: usize, message: String },
    #[error("{file}: document {doc} ({what}): {source}")]
    Parse { file: String, doc: usize, what: String, source: Box<ParseError> },
    #[error("{file}: invalid feature-flags: {}", .errors.join("; "))]
    Config { file: String, errors: Vec<String> },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Table,
}

/// What one pipeline task's pod (or an input pod) would get.
#[derive(Debug, Clone)]
pub struct PodOutcome {
    pub run: String,
    pub task: String,
    /// Claims the pod would mount.
    pub claims: Vec<String>,
    pub decision: Decision,
}

/// What `render` found, per namespace.
#[derive(Debug, Clone)]
pub struct NamespaceReport {
    pub plan: Plan,
    pub tasks: Vec<PodOutcome>,
    /// Pods given as inputs.
    pub pods: Vec<PodOutcome>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub namespaces: Vec<NamespaceReport>,
    /// Things the reader should know: stand-ins, assumptions, skipped documents.
    pub notes: Vec<String>,
    /// The config the decisions were made with.
    pub config: Config,
}

struct Doc {
    file: String,
    index: usize,
    value: Value,
}

impl Doc {
    fn field(&self, path: &[&str]) -> Option<&str> {
        path.iter().try_fold(&self.value, |v, k| v.get(k)).and_then(Value::as_str)
    }

    fn what(&self) -> String {
        let kind = self.field(&["kind"]).unwrap_or("?");
        match self.field(&["metadata", "name"]).or(self.field(&["metadata", "generateName"])) {
            Some(n) => format!("{kind} {n}"),
            None => kind.to_string(),
        }
    }

    fn parse_err(&self, source: ParseError) -> RenderError {
        RenderError::Parse { file: self.file.clone(), doc: self.index, what: self.what(), source: Box::new(source) }
    }
}

/// Splits multi-document YAML (JSON is YAML too); `v1` Lists are flattened.
fn documents(src: &Source) -> Result<Vec<Doc>, RenderError> {
    let mut out = Vec::new();
    // Null (empty) documents are skipped and not counted.
    for (i, value) in serde_saphyr::read::<_, Value>(&mut src.text.as_bytes()).enumerate() {
        let index = i + 1;
        let err = |message: String| RenderError::Document { file: src.name.clone(), doc: index, message };
        let value = value.map_err(|e| err(format!("not valid YAML: {e}")))?;
        if !value.is_object() || value.get("kind").and_then(Value::as_str).is_none() {
            return Err(err("not a Kubernetes object (expected a mapping with apiVersion and kind)".into()));
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            out.extend(items.into_iter().map(|value| Doc { file: src.name.clone(), index, value }));
        } else {
            out.push(Doc { file: src.name.clone(), index, value });
        }
    }
    Ok(out)
}

struct Inputs {
    /// Runs of every engine, with where they came from.
    runs: Vec<(&'static dyn Engine, DynamicObject, String)>,
    definitions: Vec<(&'static dyn Engine, DynamicObject)>,
    pvcs: Vec<(String, ClaimInfo)>,
    pods: Vec<TaskPod<'static>>,
    config: Option<(String, BTreeMap<String, String>)>,
    /// An engine's own feature flags (Tekton's `feature-flags`), by engine.
    engine_flags: Vec<(&'static dyn Engine, BTreeMap<String, String>)>,
}

fn configmap_data(doc: &Doc) -> Result<BTreeMap<String, String>, RenderError> {
    #[derive(Deserialize, Default)]
    struct Cm {
        #[serde(default, deserialize_with = "crate::engine::nullable")]
        data: BTreeMap<String, String>,
    }
    crate::engine::from_value::<Cm>("ConfigMap", &doc.value).map(|c| c.data).map_err(|e| doc.parse_err(e))
}

/// The engine whose own flags a `feature-flags` ConfigMap holds (its assistant's key is set,
/// or it lives in Tekton's namespace), if any; else it is the add-on's config.
fn engine_flags_of(data: &BTreeMap<String, String>, doc: &Doc) -> Option<&'static dyn Engine> {
    crate::engine::engines().iter().copied().find(|e| {
        e.own_assistant().is_some_and(|a| {
            data.contains_key(a.flag().1)
                || (e.name() == "tekton" && doc.field(&["metadata", "namespace"]) == Some("tekton-pipelines"))
        })
    })
}

/// The engine whose run or definition kind a document is (`true`: a run).
fn engine_of(api: &str, kind: &str) -> Option<(&'static dyn Engine, bool)> {
    crate::engine::engines().iter().copied().find_map(|e| {
        let run = e.run_kind();
        if run.api_version() == api && run.kind == kind {
            return Some((e, true));
        }
        [e.definition_kind(), e.cluster_definition_kind()]
            .into_iter()
            .flatten()
            .any(|def| def.api_version() == api && def.kind == kind)
            .then_some((e, false))
    })
}

/// An engine's kind in another version than the one it reads (`tekton.dev/v1beta1`).
fn other_version(api: &str, kind: &str) -> Option<String> {
    let group = api.split('/').next()?;
    crate::engine::engines().iter().find_map(|e| {
        [Some(e.run_kind()), e.definition_kind(), e.cluster_definition_kind()]
            .into_iter()
            .flatten()
            .find(|k| k.group == group && k.kind == kind)
            .map(|k| k.api_version())
    })
}

fn read_inputs(sources: &[Source], config: Option<&Source>, notes: &mut Vec<String>) -> Result<Inputs, RenderError> {
    let mut inputs =
        Inputs { runs: vec![], definitions: vec![], pvcs: vec![], pods: vec![], config: None, engine_flags: vec![] };
    for src in sources {
        let mut skipped = Vec::new();
        for doc in documents(src)? {
            let api = doc.field(&["apiVersion"]).unwrap_or("");
            let kind = doc.field(&["kind"]).unwrap_or("");
            let ns = doc.field(&["metadata", "namespace"]).unwrap_or("default").to_string();
            if let Some((engine, is_run)) = engine_of(api, kind) {
                let obj: DynamicObject = crate::engine::from_value(kind, &doc.value).map_err(|e| doc.parse_err(e))?;
                if is_run {
                    inputs.runs.push((engine, obj, format!("{}, document {}", doc.file, doc.index)));
                } else {
                    inputs.definitions.push((engine, obj));
                }
                continue;
            }
            if let Some(read) = other_version(api, kind) {
                notes.push(format!(
                    "{}, document {}: {} skipped: only {read} is read",
                    doc.file,
                    doc.index,
                    doc.what()
                ));
                continue;
            }
            match (api, kind) {
                ("v1", "PersistentVolumeClaim") => {
                    let pvc: PersistentVolumeClaim =
                        crate::engine::from_value("PersistentVolumeClaim", &doc.value).map_err(|e| doc.parse_err(e))?;
                    let info = crate::cluster::claim_info(&pvc);
                    if info.name.is_empty() {
                        return Err(doc.parse_err(ParseError::Invalid {
                            kind: "PersistentVolumeClaim".into(),
                            message: "metadata.name is empty".into(),
                        }));
                    }
                    inputs.pvcs.push((ns, info));
                }
                ("v1", "Pod") => inputs.pods.push(TaskPod::from_value(&doc.value).map_err(|e| doc.parse_err(e))?),
                ("v1", "ConfigMap") if doc.field(&["metadata", "name"]) == Some("feature-flags") => {
                    let data = configmap_data(&doc)?;
                    match engine_flags_of(&data, &doc) {
                        Some(e) => inputs.engine_flags.push((e, data)),
                        None => inputs.config = Some((doc.file.clone(), data)),
                    }
                }
                _ => skipped.push(doc.what()),
            }
        }
        if !skipped.is_empty() {
            notes.push(format!("{}: skipped (kinds render does not read): {}", src.name, skipped.join(", ")));
        }
    }
    if let Some(src) = config {
        let docs = documents(src)?;
        let [doc] = docs.as_slice() else {
            return Err(RenderError::Document {
                file: src.name.clone(),
                doc: docs.len(),
                message: "--config expects exactly one ConfigMap (the add-on's feature-flags)".into(),
            });
        };
        if doc.field(&["kind"]) != Some("ConfigMap") {
            return Err(RenderError::Document {
                file: src.name.clone(),
                doc: doc.index,
                message: format!("--config expects a ConfigMap, found {}", doc.what()),
            });
        }
        let data = configmap_data(doc)?;
        match engine_flags_of(&data, doc) {
            Some(e) => inputs.engine_flags.push((e, data)),
            None => inputs.config = Some((src.name.clone(), data)),
        }
    }
    Ok(inputs)
}

/// Reads the sources and decides what the add-on would do.
pub fn render(sources: &[Source], config: Option<&Source>) -> Result<Report, RenderError> {
    let mut notes = Vec::new();
    let inputs = read_inputs(sources, config, &mut notes)?;
    let config = match &inputs.config {
        None => Config::default(),
        Some((file, data)) => match Config::from_data(data) {
            Ok((c, unknown)) => {
                if !unknown.is_empty() {
                    notes.push(format!("{file}: unknown feature-flags keys ignored: {}", unknown.join(", ")));
                }
                c
            }
            Err(errors) => {
                return Err(RenderError::Config {
                    file: file.clone(),
                    errors: errors.iter().map(|e| e.to_string()).collect(),
                });
            }
        },
    };
    // An engine's own assistant switched on: it serves the runs it would, the add-on stands down.
    let mut assistants = Vec::new();
    for (engine, flags) in &inputs.engine_flags {
        let Some(a) = engine.own_assistant() else { continue };
        let (_, key) = a.flag();
        let value = flags.get(key).map(String::as_str);
        if a.enabled(value) {
            notes.push(format!(
                "{}'s own affinity assistant is on ({key}: {}): affinity-assistant stands down for the runs it \
                 serves; set {key}: \"disabled\" in its feature-flags",
                engine.title(),
                value.unwrap_or("workspaces (default)")
            ));
        }
        assistants.push((engine.name(), a, value));
    }

    let mut runs: Vec<Run> = Vec::new();
    for (i, (engine, obj, origin)) in inputs.runs.iter().enumerate() {
        let mut obj = obj.clone();
        let meta = &mut obj.metadata;
        if meta.namespace.as_deref().unwrap_or("").is_empty() {
            meta.namespace = Some("default".into());
        }
        let generate_name = meta.generate_name.clone().unwrap_or_default();
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        if name(meta).is_empty() && !generate_name.is_empty() {
            meta.name = Some(format!("{}-stand-in", generate_name.trim_end_matches('-')));
            notes.push(format!(
                "{origin}: run {} is a stand-in name (it only has generateName); {}'s names differ",
                name(meta),
                engine.title()
            ));
        }
        let stand_in_uid = meta.uid.as_deref().unwrap_or("").is_empty();
        if stand_in_uid {
            meta.uid = Some(format!("00000000-0000-0000-0000-{:012}", i + 1));
        }
        let what = format!("{} {}", engine.run_kind().kind, name(&obj.metadata));
        let mut run = engine.run(&obj.metadata, &obj.data).map_err(|source| RenderError::Parse {
            file: origin.clone(),
            doc: 0,
            what: what.clone(),
            source: Box::new(source),
        })?;
        // The run's own annotations, not only the add-on's: its pods carry them.
        run.annotations = obj.metadata.annotations.clone().unwrap_or_default();
        if stand_in_uid && run.bindings.iter().any(|b| matches!(b.source, crate::model::ClaimSource::Template { .. })) {
            notes.push(format!(
                "{origin}: run {} has no uid; stand-in uid {} used, so its volumeClaimTemplate PVC names differ in a cluster",
                run.name, run.uid
            ));
        }
        let awaiting = run.phase == RunPhase::AwaitingSpec;
        match run.definition.clone() {
            Some(def_name) => {
                let def_kind =
                    if run.cluster_definition { engine.cluster_definition_kind() } else { engine.definition_kind() };
                let def_kind = def_kind.map(|k| k.kind).unwrap_or("definition");
                let found = inputs.definitions.iter().find(|(e, d)| {
                    e.name() == engine.name()
                        && d.types.as_ref().is_none_or(|t| t.kind == def_kind)
                        && d.metadata.name.as_deref() == Some(def_name.as_str())
                        && d.metadata.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == run.namespace)
                });
                match found {
                    Some((_, d)) => {
                        let def = engine.definition(&d.metadata, &d.data).map_err(|source| RenderError::Parse {
                            file: origin.clone(),
                            doc: 0,
                            what: format!("{def_kind} {def_name}"),
                            source: Box::new(source),
                        })?;
                        engine.resolve(&mut run, &def);
                    }
                    None if awaiting => notes.push(format!(
                        "{origin}: run {} refers to {def_kind} {def_name}, which is not among the inputs",
                        run.name
                    )),
                    None => {}
                }
            }
            None if awaiting => notes.push(format!(
                "{origin}: run {}'s spec is resolved by {} itself (a resolver); render cannot fetch it",
                run.name,
                engine.title()
            )),
            None => {}
        }
        if let Some((_, a, value)) = assistants.iter().find(|(n, ..)| *n == engine.name()) {
            run.engine_assistant = a.would_serve(*value, &run);
        }
        runs.push(run);
    }
    if runs.is_empty() {
        let kinds: Vec<String> = crate::engine::engines()
            .iter()
            .map(|e| format!("{} {}", e.run_kind().api_version(), e.run_kind().kind))
            .collect();
        notes.push(format!("no run ({}) among the inputs: nothing to place", kinds.join(", ")));
    }

    let mut namespaces: Vec<String> = runs.iter().map(|r| r.namespace.clone()).collect();
    namespaces.extend(inputs.pods.iter().map(|p| pod_namespace(p).to_string()));
    namespaces.sort();
    namespaces.dedup();

    let mut reports = Vec::new();
    for ns in &namespaces {
        let ns_runs: Vec<Run> = runs.iter().filter(|r| &r.namespace == ns).cloned().collect();
        let claims: BTreeMap<String, ClaimInfo> =
            inputs.pvcs.iter().filter(|(n, _)| n == ns).map(|(_, c)| (c.name.clone(), c.clone())).collect();
        // Pods given as inputs are their runs' pods: what they mount counts as it would in a
        // cluster (a claim only a pod names).
        let mounts: Vec<crate::model::PodMounts> =
            inputs.pods.iter().filter(|p| pod_namespace(p) == ns).filter_map(|p| p.mounts()).collect();
        for run in ns_runs.iter().filter(|r| r.claims_from_pods) {
            for b in &run.bindings {
                let crate::model::ClaimSource::NamedByPod { expr, .. } = &b.source else { continue };
                if !mounts.iter().any(|m| m.is_of(run)) {
                    notes.push(format!(
                        "run {ns}/{}: volume {} names its claim only when the pod is built ({expr}); render cannot \
                         tell which claim that is unless the run's pods are among the inputs (in a cluster the \
                         webhook reads it from the pod)",
                        run.name, b.workspace
                    ));
                }
            }
        }
        let plan = core::plan(&NamespaceState {
            namespace: ns,
            config: &config,
            runs: &ns_runs,
            claims: &claims,
            placeholders: &[],
            pinned_pods: &[],
            task_pods: &mounts,
            missing_claims: MissingClaims::AssumeReadWriteOnce,
        });
        for rp in &plan.runs {
            for c in rp.claims.iter().filter(|c| c.access == AccessSource::Assumed) {
                notes.push(format!(
                    "claim {ns}/{} (run {}) is not among the inputs: assumed ReadWriteOnce",
                    c.name, rp.name
                ));
            }
        }
        let tasks = ns_runs
            .iter()
            .flat_map(|run| {
                let plan = &plan;
                let pods_given = mounts.iter().any(|m| m.is_of(run));
                task_claims(run).into_iter().zip(&run.tasks).filter_map(move |((task, claims), usage)| {
                    let claims: Vec<String> = claims.into_iter().collect();
                    let pod = task_pod(run, task, usage.finally, &claims, usage.scheduling.as_deref())?;
                    let decision = match named_by_pod(run, usage.workspaces.as_deref()) {
                        // The run's own pods are among the inputs: they say what this task mounts.
                        Some(_) if pods_given => return None,
                        Some(expr) => core::Decision::Skip(core::Skip {
                            reason: core::SkipReason::NoManagedClaim,
                            message: format!(
                                "its claim is named only when the pod is built ({expr}): the webhook reads it \
                                 from the pod's volumes"
                            ),
                            undo: None,
                        }),
                        None => core::decide(&pod, plan, true),
                    };
                    Some(PodOutcome { run: run.name.to_string(), task: task.to_string(), claims, decision })
                })
            })
            .collect();
        let pods = inputs
            .pods
            .iter()
            .filter(|p| pod_namespace(p) == ns)
            .map(|pod| PodOutcome {
                run: pod.identity.run.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                task: pod.metadata.display_name(),
                claims: pod.claims().into_iter().map(String::from).collect(),
                decision: core::decide(pod, &plan, true),
            })
            .collect();
        reports.push(NamespaceReport { plan, tasks, pods });
    }
    Ok(Report { namespaces: reports, notes, config })
}

/// The claim expression of a volume a task mounts whose claim is named only when the pod is
/// built (every volume of the run when its usage cannot be read).
fn named_by_pod<'r>(run: &'r Run, workspaces: Option<&[String]>) -> Option<&'r crate::model::Name> {
    run.bindings.iter().find_map(|b| match &b.source {
        crate::model::ClaimSource::NamedByPod { expr, .. }
            if workspaces.is_none_or(|ws| ws.iter().any(|w| *w == b.workspace)) =>
        {
            Some(expr)
        }
        _ => None,
    })
}

fn pod_namespace<'p>(pod: &'p TaskPod<'_>) -> &'p str {
    if pod.metadata.namespace.is_empty() { "default" } else { &pod.metadata.namespace }
}

/// The pod the run's engine would create for a pipeline task: the engine's labels, the run's
/// annotations, a PVC volume per claim, and the run's pod template overlaid with the task's.
fn task_pod<'r>(
    run: &'r Run,
    task: &str,
    finally: bool,
    claims: &[String],
    over: Option<&crate::model::Scheduling>,
) -> Option<TaskPod<'r>> {
    let engine = crate::engine::by_name(run.engine)?;
    let scheduling = over.map(|o| run.scheduling.overlaid(o)).unwrap_or_else(|| run.scheduling.clone());
    let mut pod = engine.sample_pod(run, task, finally, claims);
    pod.spec.node_selector = scheduling.node_selector;
    pod.spec.tolerations = scheduling.tolerations;
    pod.spec.affinity = scheduling.affinity;
    Some(pod)
}

impl Report {
    /// The StatefulSets of the placeholders to create.
    pub fn placeholders(&self) -> Vec<k8s_openapi::api::apps::v1::StatefulSet> {
        self.namespaces
            .iter()
            .flat_map(|n| n.plan.placeholders.iter().filter_map(|p| p.statefulset(&n.plan.namespace, &self.config)))
            .collect()
    }

    pub fn format(&self, format: Format) -> String {
        match format {
            Format::Yaml => self.to_yaml(),
            Format::Json => self.to_json(),
            Format::Table => self.to_table(),
        }
    }

    /// Apply-able StatefulSets; everything else as YAML comments.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for line in self.summary_lines() {
            let _ = writeln!(out, "# {line}");
        }
        for sts in self.placeholders() {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&sts).unwrap_or_default());
        }
        out
    }

    /// A `v1` List of the StatefulSets (notes go to standard error in the CLI).
    pub fn to_json(&self) -> String {
        let list = serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": self.placeholders(),
        });
        serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
    }

    /// Runs, placeholders and what each task's pod gets, and notes.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for ns in &self.namespaces {
            for rp in &ns.plan.runs {
                lines.push(format!(
                    "run {}/{} ({} mode): {}",
                    ns.plan.namespace,
                    rp.name,
                    rp.mode,
                    rp.status.describe()
                ));
                for w in &rp.warnings {
                    lines.push(format!("  warning: {w}"));
                }
                for t in ns.tasks.iter().filter(|t| t.run == rp.name) {
                    lines.push(format!("  task {}: {}", t.task, outcome(&t.decision)));
                }
            }
            for p in &ns.pods {
                lines.push(format!("pod {}/{}: {}", ns.plan.namespace, p.task, outcome(&p.decision)));
            }
            for w in &ns.plan.warnings {
                lines.push(format!("warning: {w}"));
            }
        }
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut placeholders = vec![row(["NAMESPACE", "PLACEHOLDER", "MODE", "CLAIMS", "RUNS"])];
        let mut runs = vec![row(["NAMESPACE", "RUN", "MODE", "STATUS", "CLAIMS"])];
        let mut tasks = vec![row(["NAMESPACE", "RUN", "TASK", "CLAIMS", "POD GETS"])];
        for ns in &self.namespaces {
            let n = ns.plan.namespace.as_str();
            for p in &ns.plan.placeholders {
                let owners: Vec<&str> = p.owners.iter().map(|o| o.name.as_str()).collect();
                placeholders.push(row([n, &p.name, p.mode.as_str(), &csv(p.claims.iter()), &csv(owners.iter())]));
            }
            for rp in &ns.plan.runs {
                let claims: Vec<String> = rp
                    .claims
                    .iter()
                    .map(|c| match c.access {
                        AccessSource::Assumed => format!("{} (assumed RWO)", c.name),
                        _ => c.name.to_string(),
                    })
                    .collect();
                runs.push(row([n, &rp.name, rp.mode.as_str(), &rp.status.describe(), &csv(claims.iter())]));
            }
            for t in ns.tasks.iter().chain(&ns.pods) {
                tasks.push(row([n, &t.run, &t.task, &csv(t.claims.iter()), &outcome(&t.decision)]));
            }
        }
        for (title, rows) in [("Placeholders", placeholders), ("Runs", runs), ("Task pods", tasks)] {
            let _ = writeln!(out, "{title}:");
            if rows.len() == 1 {
                out.push_str("  (none)\n\n");
                continue;
            }
            out.push_str(&columns(&rows));
            out.push('\n');
        }
        let warnings: Vec<String> = self
            .namespaces
            .iter()
            .flat_map(|ns| {
                ns.plan.runs.iter().flat_map(|r| r.warnings.iter().cloned()).chain(ns.plan.warnings.iter().cloned())
            })
            .collect();
        for (title, items) in [("Warnings", &warnings), ("Notes", &self.notes)] {
            if !items.is_empty() {
                let _ = writeln!(out, "{title}:");
                for n in items {
                    let _ = writeln!(out, "  - {n}");
                }
            }
        }
        out
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn csv<T: AsRef<str>>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() { "-".into() } else { v.join(",") }
}

fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    out
}

/// One line for people: what a pod gets.
pub fn outcome(d: &Decision) -> String {
    match d {
        Decision::Pin(p) => format!("pinned to {}", p.placeholder),
        Decision::Skip(s) => format!("not pinned ({}): {}", s.reason.as_str(), s.message),
    }
}
