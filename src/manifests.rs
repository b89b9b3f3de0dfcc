//! `affinity-assistant manifests`: the install YAML, built from typed objects.
//!
//! Like `linkerd install`, the release is code, not a template: every object is a k8s-openapi
//! type filled in here, so a field name cannot be misspelt and the RBAC rules sit next to the
//! code that needs them. `deploy/release.yaml` is this module's output with default options
//! (a test fails when it is stale).
//!
//! RBAC is least privilege: [`rules`] lists, per resource, only the verbs the add-on calls
//! (a test compares them with the request log of the in-memory API server). With
//! `--watch-namespace`, the rights on runs, claims, StatefulSets, pods and Events become Roles
//! in those namespaces; Secrets, Leases and ConfigMaps are only ever granted in the add-on's
//! own namespace.

use crate::config::{Config, ConfigError};
use crate::names;
use crate::webhook::server::MUTATE_PATH;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The image repository releases are published to; `--image` or kustomize's `images:` override it.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/affinity-assistant/affinity-assistant";
/// The add-on's namespace unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "affinity-assistant";
/// Where Tekton keeps its `feature-flags` ConfigMap.
pub const DEFAULT_TEKTON_NAMESPACE: &str = "tekton-pipelines";
/// Name of the Deployment, ServiceAccount, RBAC objects and webhook configuration.
pub const NAME: &str = "affinity-assistant";
pub const WEBHOOK_SERVICE: &str = "affinity-assistant-webhook";
pub const METRICS_SERVICE: &str = "affinity-assistant-metrics";
pub const TLS_SECRET: &str = "affinity-assistant-webhook-tls";
pub const LEASE: &str = "affinity-assistant-leader";
pub const CONFIG_MAP: &str = "feature-flags";
/// The webhook configuration's `timeoutSeconds`. The server answers every review well inside it
/// (`webhook::server::DECIDE_DEADLINE`, which covers the decider's waits and reads): an API
/// server that times out admits the pod unpinned with no warning and no metric.
pub const WEBHOOK_TIMEOUT_SECONDS: i32 = 5;
/// The webhook's name inside the configuration (must be a qualified name).
pub const WEBHOOK_NAME: &str = "pods.affinity-assistant.dev";
pub const WEBHOOK_PORT: i32 = 8443;
pub const METRICS_PORT: i32 = 8080;
/// Set on every object the install creates, so `kubectl get -l` finds them all.
const PART_OF: &str = "app.kubernetes.io/part-of";

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertMode {
    /// The add-on generates its CA, keeps it in a Secret and the `caBundle` current.
    SelfManaged,
    /// cert-manager issues the certificate (self-signed Issuer) and injects the `caBundle`.
    CertManager,
}

/// The options of `affinity-assistant manifests`.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    pub image: String,
    pub replicas: i32,
    pub cert_mode: CertMode,
    /// Empty: every namespace.
    pub watch_namespaces: Vec<String>,
    /// `feature-flags` values that replace the defaults.
    pub feature_flags: BTreeMap<String, String>,
    /// Grant reading Tekton's `feature-flags` there; `None` grants nothing.
    pub tekton_namespace: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: DEFAULT_NAMESPACE.to_string(),
            image: default_image(),
            replicas: 2,
            cert_mode: CertMode::SelfManaged,
            watch_namespaces: Vec::new(),
            feature_flags: BTreeMap::new(),
            tekton_namespace: Some(DEFAULT_TEKTON_NAMESPACE.to_string()),
        }
    }
}

/// `ghcr.io/affinity-assistant/affinity-assistant:v<crate version>`.
pub fn default_image() -> String {
    format!("{IMAGE_REPOSITORY}:v{}", env!("CARGO_PKG_VERSION"))
}

/// Bad options: said before anything is printed.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("--namespace {0:?} is not a valid namespace name (a DNS-1123 label)")]
    Namespace(String),
    #[error("--watch-namespace {0:?} is not a valid namespace name (a DNS-1123 label)")]
    WatchNamespace(String),
    #[error("--tekton-namespace {0:?} is not a valid namespace name (a DNS-1123 label)")]
    TektonNamespace(String),
    #[error("--replicas must be at least 1, got {0}")]
    Replicas(i32),
    #[error("--image must not be empty or contain spaces, got {0:?}")]
    Image(String),
    #[error("--feature-flag {0}")]
    FeatureFlag(ConfigError),
    #[error("--feature-flag {0:?}: unknown key; the keys are {keys}", keys = crate::config::KEYS.join(", "))]
    UnknownFeatureFlag(String),
}

/// Parses `KEY=VALUE`.
pub fn parse_feature_flag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

impl Options {
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !names::is_dns1123_label(&self.namespace) {
            return Err(OptionsError::Namespace(self.namespace.clone()));
        }
        if let Some(ns) = self.watch_namespaces.iter().find(|ns| !names::is_dns1123_label(ns)) {
            return Err(OptionsError::WatchNamespace(ns.clone()));
        }
        if let Some(ns) = self.tekton_namespace.as_ref().filter(|ns| !names::is_dns1123_label(ns)) {
            return Err(OptionsError::TektonNamespace(ns.clone()));
        }
        if self.replicas < 1 {
            return Err(OptionsError::Replicas(self.replicas));
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(OptionsError::Image(self.image.clone()));
        }
        if let Some(k) = self.feature_flags.keys().find(|k| !crate::config::KEYS.contains(&k.as_str())) {
            return Err(OptionsError::UnknownFeatureFlag(k.clone()));
        }
        if let Err(mut errors) = Config::from_data(&self.feature_flags) {
            return Err(OptionsError::FeatureFlag(errors.remove(0)));
        }
        Ok(())
    }
}

/// One RBAC grant: API group, resource, verbs, optionally restricted to names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub names: Vec<String>,
}

fn grant(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Grant {
    Grant { group, resource, verbs, names: Vec::new() }
}

/// Where a set of grants applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespace(String),
}

/// Every right the add-on needs, by where it needs it. Each verb is here because some call
/// in the code makes it (see the comments); nothing is granted "just in case".
pub fn rules(options: &Options) -> Vec<(Scope, Vec<Grant>)> {
    let mut workloads = vec![
        // Watched into the caches; the webhook GETs a claim its cache has not seen yet.
        grant("", "persistentvolumeclaims", &["get", "list", "watch"]),
        // FailedCreate Events of StatefulSets: a placeholder whose pod is refused (quota,
        // LimitRange, admission) gets nothing pinned to it.
        grant("", "events", &["list", "watch"]),
        // Placeholders: created, owner references patched, deleted when no run needs them.
        grant("apps", "statefulsets", &["list", "watch", "create", "patch", "delete"]),
        // Placeholder pods and pinned task pods are watched; a placeholder pod on a NotReady
        // node is force-deleted so that its StatefulSet recreates it elsewhere.
        grant("", "pods", &["list", "watch", "delete"]),
        // Warnings on runs; kube-runtime's recorder patches a repeated Event's series.
        grant("events.k8s.io", "events", &["create", "patch"]),
    ];
    // Each engine's runs and definitions (its file says why).
    for e in crate::engine::engines() {
        workloads.extend(e.rbac().into_iter().map(|(group, resource, verbs)| grant(group, resource, verbs)));
    }
    let mut cluster = vec![
        grant("", "nodes", &["list", "watch"]),
        // Only namespaces labelled affinity-assistant.dev/enabled=false: no placeholders there.
        grant("", "namespaces", &["list", "watch"]),
        // Where a bound claim's volume can be used (a claim riding with another's placeholder),
        // and before moving a placeholder: is its claim's volume pinned to the node?
        grant("", "persistentvolumes", &["get", "list", "watch"]),
        // Before creating a placeholder with a configured priority class: does it exist?
        grant("scheduling.k8s.io", "priorityclasses", &["get"]),
    ];
    for e in crate::engine::engines() {
        cluster.extend(e.cluster_rbac().into_iter().map(|(group, resource, verbs)| grant(group, resource, verbs)));
    }
    let mut own = vec![
        grant("", "configmaps", &["list", "watch"]),
        grant("coordination.k8s.io", "leases", &["get", "list", "watch", "create", "patch"]),
        // The config's warnings are Events on the ConfigMap.
        grant("events.k8s.io", "events", &["create", "patch"]),
    ];
    if options.cert_mode == CertMode::SelfManaged {
        // The CA and serving certificate live in one Secret; the leader creates and renews it.
        own.push(grant("", "secrets", &["get", "create", "update"]));
        // resourceNames works for get and update: only our own configuration's caBundle.
        cluster.push(Grant {
            names: vec![NAME.to_string()],
            ..grant("admissionregistration.k8s.io", "mutatingwebhookconfigurations", &["get", "update"])
        });
    }
    let mut out = Vec::new();
    if options.watch_namespaces.is_empty() {
        cluster.extend(workloads);
        out.push((Scope::Cluster, cluster));
    } else {
        out.push((Scope::Cluster, cluster));
        for ns in &options.watch_namespaces {
            out.push((Scope::Namespace(ns.clone()), workloads.clone()));
        }
    }
    if let Some((_, grants)) = out.iter_mut().find(|(s, _)| *s == Scope::Namespace(options.namespace.clone())) {
        for g in own {
            if !grants.contains(&g) {
                grants.push(g);
            }
        }
    } else {
        out.push((Scope::Namespace(options.namespace.clone()), own));
    }
    if options.tekton_namespace.is_some() {
        // Optional: read Tekton's coschedule flag to warn and stand down. A cluster rule limited
        // to that name, not a Role in Tekton's namespace: the release must apply on a cluster
        // where that namespace does not exist (no Tekton, or not yet).
        let read = Grant { names: vec![CONFIG_MAP.to_string()], ..grant("", "configmaps", &["get"]) };
        if let Some((_, grants)) = out.iter_mut().find(|(s, _)| *s == Scope::Cluster) {
            grants.push(read);
        }
    }
    out
}

fn policy_rules(grants: &[Grant]) -> Vec<PolicyRule> {
    grants
        .iter()
        .map(|g| PolicyRule {
            api_groups: Some(vec![g.group.to_string()]),
            resources: Some(vec![g.resource.to_string()]),
            verbs: g.verbs.iter().map(|v| v.to_string()).collect(),
            resource_names: (!g.names.is_empty()).then(|| g.names.clone()),
            ..Default::default()
        })
        .collect()
}

fn labels(component: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (names::LABEL_APP_NAME.to_string(), names::APP_NAME.to_string()),
        (PART_OF.to_string(), names::APP_NAME.to_string()),
    ]);
    if let Some(c) = component {
        l.insert(names::LABEL_APP_COMPONENT.to_string(), c.to_string());
    }
    l
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels(None)),
        ..Default::default()
    }
}

fn string_map<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The controller pods' own labels: what the Services, PDB and anti-affinity select.
fn pod_selector() -> BTreeMap<String, String> {
    string_map([(names::LABEL_APP_NAME, names::APP_NAME), (names::LABEL_APP_COMPONENT, "controller")])
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_string(),
        operator: operator.to_string(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

/// The webhook entry of an engine: its name (Tekton's keeps the name earlier releases gave
/// the only entry, so an upgrade replaces it rather than adding a second).
pub fn webhook_name(engine: &dyn crate::engine::Engine) -> String {
    if engine.name() == "tekton" { WEBHOOK_NAME.to_string() } else { format!("{}.{WEBHOOK_NAME}", engine.name()) }
}

/// The webhook entries (one per engine: object selectors are ANDed, so one entry cannot
/// select two engines' pods), shared by the release and the local (`--webhook-url`) mode.
pub fn mutating_webhooks(
    client_config: WebhookClientConfig,
    own_namespace: &str,
    watch: &[String],
) -> Vec<MutatingWebhook> {
    crate::engine::engines().iter().map(|e| mutating_webhook(*e, client_config.clone(), own_namespace, watch)).collect()
}

/// The webhook entry of one engine.
pub fn mutating_webhook(
    engine: &dyn crate::engine::Engine,
    client_config: WebhookClientConfig,
    own_namespace: &str,
    watch: &[String],
) -> MutatingWebhook {
    let mut ns = vec![
        requirement("kubernetes.io/metadata.name", "NotIn", &["kube-system", own_namespace]),
        requirement(names::LABEL_NAMESPACE_ENABLED, "NotIn", &["false"]),
    ];
    if !watch.is_empty() {
        let watched: Vec<&str> = watch.iter().map(String::as_str).collect();
        ns.push(requirement("kubernetes.io/metadata.name", "In", &watched));
    }
    MutatingWebhook {
        name: webhook_name(engine),
        admission_review_versions: vec!["v1".to_string()],
        client_config,
        failure_policy: Some("Ignore".to_string()),
        match_policy: Some("Equivalent".to_string()),
        reinvocation_policy: Some("IfNeeded".to_string()),
        side_effects: "None".to_string(),
        timeout_seconds: Some(WEBHOOK_TIMEOUT_SECONDS),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_string()]),
            operations: Some(vec!["CREATE".to_string()]),
            resources: Some(vec!["pods".to_string()]),
            scope: Some("Namespaced".to_string()),
        }]),
        // Only the engine's task pods reach the webhook; placeholders never do.
        object_selector: Some(LabelSelector {
            match_expressions: Some({
                let sel = engine.pod_selector();
                let mut exprs = vec![requirement(sel.label, "Exists", &[])];
                exprs.extend(sel.not_labels.iter().map(|l| requirement(l, "DoesNotExist", &[])));
                exprs.push(requirement(names::LABEL_PLACEHOLDER, "DoesNotExist", &[]));
                exprs
            }),
            ..Default::default()
        }),
        namespace_selector: Some(LabelSelector { match_expressions: Some(ns), ..Default::default() }),
        ..Default::default()
    }
}

/// A webhook configuration named `name` calling `client_config`.
pub fn webhook_configuration(
    name: &str,
    client_config: WebhookClientConfig,
    own_namespace: &str,
    watch: &[String],
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: meta(name, None),
        webhooks: Some(mutating_webhooks(client_config, own_namespace, watch)),
    }
}

/// The client config of a webhook reached at a URL, trusting `ca_bundle`.
pub fn url_client_config(url: &str, ca_bundle: Option<Vec<u8>>) -> WebhookClientConfig {
    WebhookClientConfig { url: Some(url.to_string()), ca_bundle: ca_bundle.map(ByteString), service: None }
}

fn deployment(o: &Options) -> Deployment {
    let ns = o.namespace.as_str();
    let mut args = vec!["run".to_string(), "--log-format=json".to_string()];
    for w in &o.watch_namespaces {
        args.push(format!("--watch-namespace={w}"));
    }
    match &o.tekton_namespace {
        Some(t) => args.push(format!("--tekton-namespace={t}")),
        None => args.push("--tekton-namespace=".to_string()),
    }
    let mut volumes = None;
    let mut mounts = None;
    match o.cert_mode {
        CertMode::SelfManaged => args.push("--cert-mode=self-managed".to_string()),
        CertMode::CertManager => {
            args.extend([
                "--cert-mode=external".to_string(),
                "--tls-cert-file=/etc/affinity-assistant/tls/tls.crt".to_string(),
                "--tls-key-file=/etc/affinity-assistant/tls/tls.key".to_string(),
            ]);
            volumes = Some(vec![Volume {
                name: "tls".to_string(),
                secret: Some(SecretVolumeSource { secret_name: Some(TLS_SECRET.to_string()), ..Default::default() }),
                ..Default::default()
            }]);
            mounts = Some(vec![VolumeMount {
                name: "tls".to_string(),
                mount_path: "/etc/affinity-assistant/tls".to_string(),
                read_only: Some(true),
                ..Default::default()
            }]);
        }
    }
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_string(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    let selector = pod_selector();
    let mut pod_labels = labels(Some("controller"));
    pod_labels.extend(selector.clone());
    let container = Container {
        name: "affinity-assistant".to_string(),
        image: Some(o.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_NAME", "metadata.name"),
            EnvVar { name: "RUST_LOG".to_string(), value: Some("info".to_string()), ..Default::default() },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("webhook".to_string()),
                container_port: WEBHOOK_PORT,
                protocol: Some("TCP".to_string()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".to_string()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_string()),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        // Filling the caches of a large cluster can take a while; do not restart meanwhile.
        startup_probe: Some(probe("/healthz", 2, 30)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "64Mi")),
            limits: Some(quantities("1", "256Mi")),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: mounts,
        ..Default::default()
    };
    Deployment {
        metadata: ObjectMeta { labels: Some(labels(Some("controller"))), ..meta(NAME, Some(ns)) },
        spec: Some(DeploymentSpec {
            replicas: Some(o.replicas),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            // Never fewer ready webhooks than asked for during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(string_map([
                        ("prometheus.io/scrape", "true"),
                        ("prometheus.io/port", "8080"),
                        ("prometheus.io/path", "/metrics"),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.to_string()),
                    // Replicas on different nodes, but never unschedulable on a one-node cluster.
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                                weight: 100,
                                pod_affinity_term: PodAffinityTerm {
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(selector),
                                        ..Default::default()
                                    }),
                                    topology_key: names::TOPOLOGY_HOSTNAME.to_string(),
                                    ..Default::default()
                                },
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    // Long enough to finish in-flight admissions and release the lease.
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container],
                    volumes,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(name: &str, ns: &str, port: i32, target: &str, annotations: Option<BTreeMap<String, String>>) -> Service {
    Service {
        metadata: ObjectMeta { annotations, ..meta(name, Some(ns)) },
        spec: Some(ServiceSpec {
            selector: Some(pod_selector()),
            ports: Some(vec![ServicePort {
                name: Some(target.to_string()),
                port,
                target_port: Some(IntOrString::String(target.to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// cert-manager's `Issuer` (cert-manager.io/v1), only the fields used.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Issuer {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: IssuerSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IssuerSpec {
    self_signed: BTreeMap<String, String>,
}

/// cert-manager's `Certificate` (cert-manager.io/v1), only the fields used.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Certificate {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: CertificateSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    dns_names: Vec<String>,
    duration: String,
    renew_before: String,
    issuer_ref: IssuerRef,
}

#[derive(Serialize)]
struct IssuerRef {
    name: String,
    kind: String,
}

fn value(obj: impl Serialize) -> Value {
    // Serializing k8s-openapi types and plain structs to JSON cannot fail.
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// Every object of the install, in apply order.
pub fn objects(o: &Options) -> Result<Vec<Value>, OptionsError> {
    o.validate()?;
    let ns = o.namespace.as_str();
    let mut out = Vec::new();
    out.push(value(Namespace {
        metadata: ObjectMeta {
            labels: Some({
                let mut l = labels(None);
                l.extend(string_map([
                    ("pod-security.kubernetes.io/enforce", "restricted"),
                    ("pod-security.kubernetes.io/enforce-version", "latest"),
                ]));
                l
            }),
            ..meta(ns, None)
        },
        ..Default::default()
    }));
    out.push(value(ServiceAccount { metadata: meta(NAME, Some(ns)), ..Default::default() }));
    let subject = Subject {
        kind: "ServiceAccount".to_string(),
        name: NAME.to_string(),
        namespace: Some(ns.to_string()),
        ..Default::default()
    };
    for (scope, grants) in rules(o) {
        match scope {
            Scope::Cluster => {
                out.push(value(ClusterRole {
                    metadata: meta(NAME, None),
                    rules: Some(policy_rules(&grants)),
                    ..Default::default()
                }));
                out.push(value(ClusterRoleBinding {
                    metadata: meta(NAME, None),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".to_string(),
                        kind: "ClusterRole".to_string(),
                        name: NAME.to_string(),
                    },
                    subjects: Some(vec![subject.clone()]),
                }));
            }
            Scope::Namespace(role_ns) => {
                out.push(value(Role { metadata: meta(NAME, Some(&role_ns)), rules: Some(policy_rules(&grants)) }));
                out.push(value(RoleBinding {
                    metadata: meta(NAME, Some(&role_ns)),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".to_string(),
                        kind: "Role".to_string(),
                        name: NAME.to_string(),
                    },
                    subjects: Some(vec![subject.clone()]),
                }));
            }
        }
    }
    let mut data = Config::default_data();
    data.extend(o.feature_flags.clone());
    out.push(value(ConfigMap { metadata: meta(CONFIG_MAP, Some(ns)), data: Some(data), ..Default::default() }));
    out.push(value(service(WEBHOOK_SERVICE, ns, 443, "webhook", None)));
    out.push(value(service(
        METRICS_SERVICE,
        ns,
        METRICS_PORT,
        "metrics",
        Some(string_map([("prometheus.io/scrape", "true"), ("prometheus.io/port", "8080")])),
    )));
    if o.cert_mode == CertMode::CertManager {
        out.push(value(Issuer {
            api_version: "cert-manager.io/v1",
            kind: "Issuer",
            metadata: meta(NAME, Some(ns)),
            spec: IssuerSpec { self_signed: BTreeMap::new() },
        }));
        out.push(value(Certificate {
            api_version: "cert-manager.io/v1",
            kind: "Certificate",
            metadata: meta(WEBHOOK_SERVICE, Some(ns)),
            spec: CertificateSpec {
                secret_name: TLS_SECRET.to_string(),
                dns_names: crate::webhook::certs::service_sans(WEBHOOK_SERVICE, ns),
                duration: "2160h".to_string(),
                renew_before: "720h".to_string(),
                issuer_ref: IssuerRef { name: NAME.to_string(), kind: "Issuer".to_string() },
            },
        }));
    }
    out.push(value(deployment(o)));
    out.push(value(PodDisruptionBudget {
        metadata: meta(NAME, Some(ns)),
        spec: Some(PodDisruptionBudgetSpec {
            // A drain takes replicas one at a time; a one-replica install can still be drained.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(pod_selector()), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let client_config = WebhookClientConfig {
        service: Some(ServiceReference {
            name: WEBHOOK_SERVICE.to_string(),
            namespace: ns.to_string(),
            path: Some(MUTATE_PATH.to_string()),
            port: Some(443),
        }),
        ..Default::default()
    };
    let mut config = webhook_configuration(NAME, client_config, ns, &o.watch_namespaces);
    if o.cert_mode == CertMode::CertManager {
        config.metadata.annotations =
            Some(string_map([("cert-manager.io/inject-ca-from", &format!("{ns}/{WEBHOOK_SERVICE}"))]));
    }
    out.push(value(config));
    Ok(out)
}

/// The header of the committed release.
pub const HEADER: &str = "# affinity-assistant install manifests.\n\
# Generated by `affinity-assistant manifests`; do not edit (CI fails when this file is stale).\n\
# Regenerate: cargo run -- manifests > deploy/release.yaml\n";

/// The objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::from(HEADER);
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(o)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects.iter().map(|o| o["kind"].as_str().unwrap_or("?").to_string()).collect()
    }

    #[test]
    fn default_install_has_every_object_in_apply_order() {
        let objects = objects(&Options::default()).expect("default options are valid");
        assert_eq!(
            kinds(&objects),
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "Service",
                "Service",
                "Deployment",
                "PodDisruptionBudget",
                "MutatingWebhookConfiguration"
            ]
        );
    }

    #[test]
    fn watch_namespaces_turn_workload_rights_into_roles() {
        let o = Options { watch_namespaces: vec!["ci".into(), "cd".into()], ..Options::default() };
        let rules = rules(&o);
        let cluster = &rules.iter().find(|(s, _)| *s == Scope::Cluster).unwrap().1;
        assert!(cluster.iter().all(|g| !matches!(g.resource, "statefulsets" | "pods" | "pipelineruns")));
        for ns in ["ci", "cd"] {
            let grants = &rules.iter().find(|(s, _)| *s == Scope::Namespace(ns.into())).unwrap().1;
            assert!(grants.iter().any(|g| g.resource == "statefulsets"));
            assert!(grants.iter().all(|g| g.resource != "secrets"));
        }
        let objects = objects(&o).unwrap();
        let webhook = objects.last().unwrap();
        let exprs = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"];
        assert!(exprs.as_array().unwrap().iter().any(|e| e["operator"] == "In" && e["values"][0] == "ci"));
        let args = objects.iter().find(|o| o["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]
            ["containers"][0]["args"]
            .clone();
        assert!(args.as_array().unwrap().contains(&Value::from("--watch-namespace=ci")));
    }

    #[test]
    fn secrets_and_leases_are_only_granted_in_the_own_namespace() {
        for o in [Options::default(), Options { watch_namespaces: vec!["ci".into()], ..Options::default() }] {
            for (scope, grants) in rules(&o) {
                for g in grants.iter().filter(|g| matches!(g.resource, "secrets" | "leases" | "configmaps")) {
                    match &scope {
                        Scope::Namespace(ns) if *ns == o.namespace => {}
                        // Tekton's feature-flags, by name only, read-only.
                        Scope::Cluster => {
                            assert_eq!(
                                (g.resource, g.verbs, g.names.clone()),
                                ("configmaps", &["get"][..], vec![CONFIG_MAP.to_string()])
                            )
                        }
                        other => panic!("{} granted in {other:?}", g.resource),
                    }
                }
            }
        }
    }

    #[test]
    fn cert_manager_mode_has_issuer_certificate_injection_and_no_secret_rights() {
        let o = Options { cert_mode: CertMode::CertManager, ..Options::default() };
        let objects = objects(&o).unwrap();
        let kinds = kinds(&objects);
        assert!(kinds.contains(&"Issuer".to_string()) && kinds.contains(&"Certificate".to_string()));
        let webhook = objects.last().unwrap();
        assert_eq!(
            webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "affinity-assistant/affinity-assistant-webhook"
        );
        assert!(
            rules(&o)
                .iter()
                .flat_map(|(_, g)| g)
                .all(|g| g.resource != "secrets" && g.resource != "mutatingwebhookconfigurations")
        );
    }

    #[test]
    fn bad_options_are_clear_errors() {
        let bad = |o: Options| objects(&o).unwrap_err().to_string();
        assert!(bad(Options { namespace: "Not_A_Namespace".into(), ..Options::default() }).contains("--namespace"));
        assert!(bad(Options { replicas: 0, ..Options::default() }).contains("--replicas"));
        let flags = |k: &str, v: &str| Options {
            feature_flags: BTreeMap::from([(k.to_string(), v.to_string())]),
            ..Options::default()
        };
        let e = bad(flags("mode", "sometimes"));
        assert!(e.contains("\"mode\"") && e.contains("workspaces"), "{e}");
        assert!(bad(flags("mdoe", "workspaces")).contains("unknown key"));
        assert_eq!(parse_feature_flag("enabled=false"), Ok(("enabled".into(), "false".into())));
        assert!(parse_feature_flag("enabled").is_err());
    }

    #[test]
    fn feature_flags_replace_defaults_in_the_config_map() {
        let o = Options {
            feature_flags: BTreeMap::from([("mode".to_string(), "pipelineruns".to_string())]),
            ..Options::default()
        };
        let objects = objects(&o).unwrap();
        let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        assert_eq!(cm["data"]["mode"], "pipelineruns");
        assert_eq!(cm["data"]["enabled"], "true");
    }
}
