//! The install: `deploy/release.yaml` is current and every object in it is a valid Kubernetes
//! object; the RBAC rules grant exactly the calls the add-on makes (the real `run` wiring
//! against the in-memory API server, compared with its request log); local mode registers
//! and removes its webhook configuration; a placeholder written by an earlier release is
//! adopted, not replaced (labels and annotations are a stable API).

mod support;
mod webhook_support;

use affinity_assistant::manifests::{self, CertMode, Grant, Options, Scope};
use affinity_assistant::names;
use affinity_assistant::runtime::{self, Settings};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use support::apiserver::{FakeApiServer, Fault, RequestRecord, Verb};
use support::world::*;
use tokio_util::sync::CancellationToken;

const NS: &str = "ci";
const WAIT: Duration = Duration::from_secs(15);

fn release_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/release.yaml")
}

#[test]
fn deploy_release_yaml_is_the_output_of_manifests() {
    let committed = std::fs::read_to_string(release_path()).expect("deploy/release.yaml");
    let generated = manifests::to_yaml(&manifests::objects(&Options::default()).unwrap()).unwrap();
    assert!(
        committed == generated,
        "deploy/release.yaml is stale: regenerate it with `cargo run -- manifests > deploy/release.yaml`"
    );
    let kustomization = std::fs::read_to_string(release_path().with_file_name("kustomization.yaml")).unwrap();
    let k: Value = serde_saphyr::from_str(&kustomization).unwrap();
    assert_eq!(k["resources"], json!(["release.yaml"]));
}

/// Parses `v` as `K` and back: equal only if every field is one `K` knows, spelt right.
fn round_trips<K: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<(), String> {
    let typed: K = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back == *v { Ok(()) } else { Err(format!("fields lost in a round trip:\n{v:#}\nvs\n{back:#}")) }
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

#[test]
fn every_object_parses_as_its_kubernetes_type() {
    let release = std::fs::read_to_string(release_path()).unwrap();
    let variants = [
        documents(&release),
        manifests::objects(&Options { cert_mode: CertMode::CertManager, ..Options::default() }).unwrap(),
        manifests::objects(&Options { watch_namespaces: vec!["ci".into(), "cd".into()], ..Options::default() })
            .unwrap(),
    ];
    for objects in variants {
        for o in &objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            let result = match kind {
                "Namespace" => round_trips::<Namespace>(o),
                "ServiceAccount" => round_trips::<ServiceAccount>(o),
                "ClusterRole" => round_trips::<ClusterRole>(o),
                "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(o),
                "Role" => round_trips::<Role>(o),
                "RoleBinding" => round_trips::<RoleBinding>(o),
                "ConfigMap" => round_trips::<ConfigMap>(o),
                "Service" => round_trips::<Service>(o),
                "Deployment" => round_trips::<Deployment>(o),
                "PodDisruptionBudget" => round_trips::<PodDisruptionBudget>(o),
                "MutatingWebhookConfiguration" => round_trips::<MutatingWebhookConfiguration>(o),
                // cert-manager's kinds are not in k8s-openapi: check what its CRDs require.
                "Issuer" => (o["apiVersion"] == "cert-manager.io/v1" && o["spec"]["selfSigned"].is_object())
                    .then_some(())
                    .ok_or_else(|| "bad Issuer".to_string()),
                "Certificate" => (o["apiVersion"] == "cert-manager.io/v1"
                    && o["spec"]["secretName"] == manifests::TLS_SECRET
                    && o["spec"]["issuerRef"]["name"].is_string()
                    && o["spec"]["dnsNames"].as_array().is_some_and(|d| !d.is_empty()))
                .then_some(())
                .ok_or_else(|| "bad Certificate".to_string()),
                other => Err(format!("unexpected kind {other}")),
            };
            if let Err(e) = result {
                panic!("{kind} {}: {e}", o["metadata"]["name"]);
            }
        }
    }
}

#[test]
fn the_release_is_what_the_issue_asks_for() {
    let objects = documents(&std::fs::read_to_string(release_path()).unwrap());
    let find = |kind: &str| objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let deployment: Deployment = serde_json::from_value(find("Deployment").clone()).unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert!(pod.affinity.unwrap().pod_anti_affinity.is_some(), "replicas spread over nodes");
    let c = &pod.containers[0];
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    let resources = c.resources.clone().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
    // PodSecurity restricted: non-root, no privilege escalation, all capabilities dropped, seccomp.
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert_eq!(c.image.as_deref(), Some(manifests::default_image().as_str()));

    let config: MutatingWebhookConfiguration =
        serde_json::from_value(find("MutatingWebhookConfiguration").clone()).unwrap();
    let w = &config.webhooks.unwrap()[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(w.side_effects, "None");
    assert_eq!(w.timeout_seconds, Some(affinity_assistant::manifests::WEBHOOK_TIMEOUT_SECONDS));
    assert!(
        affinity_assistant::webhook::server::DECIDE_DEADLINE.as_secs_f64() + 1.0
            <= f64::from(affinity_assistant::manifests::WEBHOOK_TIMEOUT_SECONDS),
        "the server answers at least a second before the API server gives up"
    );
    assert_eq!(w.admission_review_versions, vec!["v1"]);
    let rule = &w.rules.as_ref().unwrap()[0];
    assert_eq!(rule.operations, Some(vec!["CREATE".to_string()]));
    assert_eq!(rule.resources, Some(vec!["pods".to_string()]));
    let objsel = serde_json::to_value(&w.object_selector).unwrap().to_string();
    assert!(objsel.contains("tekton.dev/pipelineRun") && objsel.contains(names::LABEL_PLACEHOLDER), "{objsel}");
    let nssel = serde_json::to_value(&w.namespace_selector).unwrap().to_string();
    for must in ["kube-system", OWN, names::LABEL_NAMESPACE_ENABLED] {
        assert!(nssel.contains(must), "namespaceSelector lacks {must}: {nssel}");
    }
    assert!(w.client_config.ca_bundle.is_none(), "the add-on fills the caBundle; a committed one would be stale");

    let cm: ConfigMap = serde_json::from_value(find("ConfigMap").clone()).unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data.keys().map(String::as_str).collect::<BTreeSet<_>>(), affinity_assistant::config::KEYS.into());
    assert!(objects.iter().any(|o| o["kind"] == "PodDisruptionBudget"));
    let ns = find("Namespace");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
}

/// The rules of an install, flattened: (scope, grant).
fn grants(options: &Options) -> Vec<(Scope, Grant)> {
    manifests::rules(options).into_iter().flat_map(|(s, gs)| gs.into_iter().map(move |g| (s.clone(), g))).collect()
}

/// Whether `grant` in `scope` authorizes `r`, as the RBAC authorizer decides.
fn authorizes(scope: &Scope, grant: &Grant, r: &RequestRecord) -> bool {
    let in_scope = match scope {
        Scope::Cluster => true,
        Scope::Namespace(ns) => r.namespace.as_deref() == Some(ns.as_str()),
    };
    // resourceNames cannot restrict list, watch or create: the authorizer sees no name there.
    let named = grant.names.is_empty()
        || (!matches!(r.verb, Verb::List | Verb::Watch | Verb::Create)
            && r.name.as_ref().is_some_and(|n| grant.names.contains(n)));
    in_scope
        && grant.group == r.group
        && grant.resource == r.rbac_resource()
        && grant.verbs.contains(&r.verb.as_str())
        && named
}

fn settings(identity: &str) -> Settings {
    init_tracing();
    let mut s = Settings::new(identity);
    s.namespace = OWN.into();
    s.webhook_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.move_grace = Duration::from_millis(0);
    s
}

/// The placeholder of claim `src` alone.
fn src_placeholder() -> String {
    affinity_assistant::names::placeholder_name(affinity_assistant::names::NameSeed::Claims(
        &["src".to_string()].into_iter().collect(),
    ))
}

/// An HTTPS client of the running webhook, trusting the CA in the add-on's Secret.
async fn webhook_client(server: &FakeApiServer, running: &runtime::Running) -> webhook_support::Client {
    let ca = secret_data(server, OWN, manifests::TLS_SECRET).remove("ca.crt").expect("a CA in the Secret");
    let config = webhook_support::client_config(std::str::from_utf8(&ca).unwrap());
    webhook_support::Client::connect(running.webhook_addr.unwrap(), config).await.expect("TLS")
}

fn run_pod(run: &str, run_uid: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{run}-build-pod"), "namespace": NS,
        "labels": {"tekton.dev/pipelineRun": run, "tekton.dev/pipelineRunUID": run_uid,
            "tekton.dev/pipelineTask": "build", "tekton.dev/taskRun": format!("{run}-build"),
            "app.kubernetes.io/managed-by": "tekton-pipelines"}},
        "spec": {"containers": [{"name": "step-build", "image": "busybox"}],
            "volumes": [{"name": "ws-abcde", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// The test's own writes go around the API (unlogged), so the request log holds only the
/// add-on's calls. A run as Tekton leaves it once started.
fn put_run(server: &FakeApiServer, name: &str, claim: &str) -> String {
    let uid = format!("uid-{name}");
    server.insert(json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": NS, "uid": uid},
        "spec": {"pipelineRef": {"name": "p"}, "workspaces": [{"name": "w0", "persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            "pipelineSpec": {"tasks": [{"name": "build", "taskRef": {"name": "t"}, "workspaces": [{"name": "w0"}]}]}}}));
    uid
}

fn put_pvc(server: &FakeApiServer, name: &str, volume: Option<&str>) {
    server.insert(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}}));
}

/// Changes a stored object around the API.
fn edit(server: &FakeApiServer, resource: &str, ns: &str, name: &str, change: impl FnOnce(&mut Value)) {
    let mut obj = server.get(resource, ns, name).unwrap_or_else(|| panic!("no {resource} {ns}/{name}"));
    change(&mut obj);
    server.insert(obj);
}

/// Drives the whole add-on (controller, webhook, certificates, leader election, config, Tekton
/// flags) through every path that calls the API; returns the request log.
async fn exercise(watch_namespaces: Vec<String>, stale_secret: bool) -> Vec<RequestRecord> {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "pipelines"}, "value": 1000}));
    server.insert(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "feature-flags", "namespace": OWN},
        "data": {"placeholder-priority-class": "pipelines", "mode": "sometimes"}}),
    );
    server.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "feature-flags", "namespace": "tekton-pipelines"}, "data": {"coschedule": "disabled"}}));
    let installed = manifests::objects(&Options { watch_namespaces: watch_namespaces.clone(), ..Options::default() })
        .unwrap()
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    server.insert(installed);
    if stale_secret {
        // An earlier install's Secret that no longer holds a usable bundle: it is replaced.
        server.insert(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": manifests::TLS_SECRET, "namespace": OWN}, "data": {"tls.crt": "bm90IGEgY2VydA=="}}));
    }
    server.insert(node("n1", false));
    server.insert(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-src"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "nfs": {"server": "nfs.example.com", "path": "/src"}}}));
    put_pvc(&server, "src", Some("pv-src"));

    let mut s = settings("rbac-test");
    s.watch_namespaces = watch_namespaces;
    let stop = CancellationToken::new();
    let running = runtime::start(client.clone(), s, stop.clone()).await.expect("add-on starts");

    // Placeholders created and shared (owner references patched).
    put_run(&server, "r1", "src");
    eventually("placeholder", WAIT, || placeholders(&server, NS).len() == 1).await;
    put_run(&server, "r2", "src");
    eventually("second owner", WAIT, || {
        placeholders(&server, NS).first().and_then(|p| p["metadata"]["ownerReferences"].as_array().map(Vec::len))
            == Some(2)
    })
    .await;
    // The certificate is in place: the webhook answers.
    eventually("webhook certificate", WAIT, || {
        server.get("secrets", OWN, manifests::TLS_SECRET).is_some_and(|s| s["data"]["ca.crt"].is_string())
    })
    .await;

    // A pod of a run the caches have not seen, before Tekton wrote its spec, with a claim and a
    // Pipeline they have not seen either: the webhook GETs all three (and pins the pod).
    for resource in ["pipelineruns", "persistentvolumeclaims", "pipelines"] {
        server.faults().fail_next(resource, Verb::List, 100_000, Fault::Internal);
        server.faults().fail_next(resource, Verb::Watch, 100_000, Fault::Internal);
    }
    server.drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let uid3 = put_run(&server, "r3", "cache");
    edit(&server, "pipelineruns", NS, "r3", |r| r["status"] = Value::Null);
    server
        .insert(json!({"apiVersion": "tekton.dev/v1", "kind": "Pipeline", "metadata": {"name": "p", "namespace": NS},
        "spec": {"tasks": [{"name": "build", "taskRef": {"name": "t"}, "workspaces": [{"name": "w0"}]}]}}));
    put_pvc(&server, "cache", None);
    let mut https = webhook_client(&server, &running).await;
    let review = webhook_support::review("u1", &run_pod("r3", &uid3, "cache"), "CREATE");
    let answer = https.post("/mutate/pods", &webhook_support::to_bytes(&review)).await.unwrap().json();
    assert!(answer["response"]["patch"].is_string(), "pinned after reading the run and claim: {answer}");
    // The same for an Argo Workflow that runs a WorkflowTemplate, neither of them cached.
    for resource in ["workflows", "workflowtemplates", "clusterworkflowtemplates"] {
        server.faults().fail_next(resource, Verb::List, 100_000, Fault::Internal);
        server.faults().fail_next(resource, Verb::Watch, 100_000, Fault::Internal);
    }
    server.drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
        "metadata": {"name": "ci", "namespace": NS},
        "spec": {"templates": [{"name": "build", "container": {"image": "go", "volumeMounts": [{"name": "w", "mountPath": "/w"}]}}]}}));
    server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "wf", "namespace": NS, "uid": "uid-wf"},
        "spec": {"workflowTemplateRef": {"name": "ci"}, "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "cache"}}]}}));
    let argo_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wf-build-1", "namespace": NS,
        "labels": {"workflows.argoproj.io/workflow": "wf"},
        "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "wf", "uid": "uid-wf", "controller": true}]},
        "spec": {"containers": [{"name": "main", "image": "go"}],
            "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "cache"}}]}});
    let review = webhook_support::review("u2", &argo_pod, "CREATE");
    let answer = https.post("/mutate/pods", &webhook_support::to_bytes(&review)).await.unwrap().json();
    assert!(answer["response"]["patch"].is_string(), "pinned after reading the Workflow and its template: {answer}");
    // And one that runs a ClusterWorkflowTemplate.
    server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "ClusterWorkflowTemplate",
        "metadata": {"name": "ci-lib"},
        "spec": {"templates": [{"name": "build", "container": {"image": "go", "volumeMounts": [{"name": "w", "mountPath": "/w"}]}}]}}));
    server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "wf2", "namespace": NS, "uid": "uid-wf2"},
        "spec": {"workflowTemplateRef": {"name": "ci-lib", "clusterScope": true},
            "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "cache"}}]}}));
    let mut argo_pod = argo_pod;
    argo_pod["metadata"]["name"] = json!("wf2-build-1");
    argo_pod["metadata"]["labels"]["workflows.argoproj.io/workflow"] = json!("wf2");
    argo_pod["metadata"]["ownerReferences"][0]["name"] = json!("wf2");
    argo_pod["metadata"]["ownerReferences"][0]["uid"] = json!("uid-wf2");
    let review = webhook_support::review("u3", &argo_pod, "CREATE");
    let answer = https.post("/mutate/pods", &webhook_support::to_bytes(&review)).await.unwrap().json();
    assert!(
        answer["response"]["patch"].is_string(),
        "pinned after reading the Workflow and its cluster template: {answer}"
    );
    server.faults().clear();

    // A cordoned node: the placeholder moves (its volume is checked first).
    let name = src_placeholder();
    server.insert(placeholder_pod(NS, &name, "n1"));
    edit(&server, "nodes", "", "n1", |n| n["spec"]["unschedulable"] = json!(true));
    let pod_name = format!("{name}-0");
    eventually("placeholder moved", WAIT, || server.get("pods", NS, &pod_name).is_none()).await;

    // Runs end: the placeholder goes.
    for r in ["r1", "r2", "r3"] {
        edit(&server, "pipelineruns", NS, r, |run| {
            run["status"]["conditions"] = json!([{"type": "Succeeded", "status": "True", "reason": "Succeeded"}])
        });
    }
    for wf in ["wf", "wf2"] {
        edit(&server, "workflows", NS, wf, |wf| wf["status"] = json!({"phase": "Succeeded"}));
    }
    eventually("placeholders deleted", WAIT, || placeholders(&server, NS).is_empty()).await;
    // The lease was taken (kube-lease-manager patches it when it acquires and renews).
    eventually("lease patched", WAIT, || {
        server.requests().iter().any(|r| r.resource == "leases" && r.verb == Verb::Patch)
    })
    .await;

    // kube-runtime's recorder patches an Event it already created when the same event repeats
    // (the controller avoids repeats itself, but may repeat after forgetting what it said):
    // publish one twice exactly as the controller does.
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter { controller: "affinity-assistant".into(), instance: Some("test".into()) },
    );
    let cm: ConfigMap = serde_json::from_value(server.get("configmaps", OWN, "feature-flags").unwrap()).unwrap();
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "InvalidConfig".into(),
        note: Some("repeated".into()),
        action: "Configure".into(),
        secondary: None,
    };
    let on_run = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("tekton.dev/v1".into()),
        kind: Some("PipelineRun".into()),
        name: Some("r1".into()),
        namespace: Some(NS.into()),
        uid: Some("uid-r1".into()),
        ..Default::default()
    };
    for reference in [kube::Resource::object_ref(&cm, &()), on_run] {
        for _ in 0..2 {
            recorder.publish(&ev, &reference).await.unwrap();
        }
    }

    running.shutdown().await;
    server.requests()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_the_calls_the_add_on_makes() {
    let cluster_wide = exercise(vec![], false).await;
    let namespaced = exercise(vec![NS.to_string()], true).await;

    for (watch, log) in [(vec![], &cluster_wide), (vec![NS.to_string()], &namespaced)] {
        let rules = grants(&Options { watch_namespaces: watch.clone(), ..Options::default() });
        let denied: BTreeSet<String> = log
            .iter()
            .filter(|r| !rules.iter().any(|(s, g)| authorizes(s, g, r)))
            .map(|r| {
                format!("{} {}/{} in {:?} name {:?}", r.verb.as_str(), r.group, r.rbac_resource(), r.namespace, r.name)
            })
            .collect();
        assert!(denied.is_empty(), "calls the install (watch {watch:?}) does not allow:\n{denied:#?}");
    }
    // Every verb granted is used by some call (in either run), in the scope it is granted for.
    let both: Vec<&RequestRecord> = cluster_wide.iter().chain(&namespaced).collect();
    for watch in [vec![], vec![NS.to_string()]] {
        for (scope, g) in grants(&Options { watch_namespaces: watch.clone(), ..Options::default() }) {
            for verb in g.verbs {
                let one = Grant { verbs: std::slice::from_ref(verb), ..g.clone() };
                assert!(
                    both.iter().any(|r| authorizes(&scope, &one, r)),
                    "granted but never used (watch {watch:?}): {verb} {}/{} in {scope:?}",
                    g.group,
                    g.resource
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_registers_its_webhook_configuration_and_removes_it_on_exit() {
    let server = FakeApiServer::new();
    let client = server.client();
    let mut s = settings("local");
    s.webhook_url = Some("https://192.168.49.1:8443/mutate/pods".into());
    s.webhook_configuration = "affinity-assistant-local".into();
    let stop = CancellationToken::new();
    let running = runtime::start(client.clone(), s, stop.clone()).await.expect("starts");
    assert!(server.get("namespaces", "", OWN).is_some(), "the add-on's namespace is created for its Secret");
    eventually("caBundle filled", WAIT, || {
        server.get("mutatingwebhookconfigurations", "", "affinity-assistant-local").is_some_and(|c| {
            c["webhooks"][0]["clientConfig"]["url"] == "https://192.168.49.1:8443/mutate/pods"
                && c["webhooks"][0]["clientConfig"]["caBundle"].is_string()
        })
    })
    .await;
    // The serving certificate names the URL's host, so the API server can verify it.
    let data = secret_data(&server, OWN, manifests::TLS_SECRET);
    let der = |key: &str| -> rustls::pki_types::CertificateDer<'static> {
        rustls::pki_types::pem::PemObject::from_pem_slice(&data[key]).expect("a PEM certificate")
    };
    let now = affinity_assistant::webhook::certs::generate::unix(std::time::SystemTime::now());
    affinity_assistant::webhook::certs::generate::verify(
        &der("tls.crt"),
        &der("ca.crt"),
        &["192.168.49.1".into()],
        now,
    )
    .expect("certificate valid for the URL's host");
    running.shutdown().await;
    assert!(server.get("mutatingwebhookconfigurations", "", "affinity-assistant-local").is_none(), "removed on exit");
}

#[tokio::test]
async fn local_mode_rejects_a_url_that_is_not_https() {
    let server = FakeApiServer::new();
    let mut s = settings("local");
    s.webhook_url = Some("http://localhost:8443/mutate/pods".into());
    let err = runtime::start(server.client(), s, CancellationToken::new()).await.err().expect("refused");
    assert!(err.to_string().contains("https://"), "{err}");
}

/// A placeholder exactly as release 0.1.0 wrote it (labels, annotations, owner references).
/// Keys are a stable API: a newer release adopts it instead of creating a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_adopts_the_placeholders_an_earlier_release_created() {
    let server = FakeApiServer::new();
    let client = server.client();
    create_pvc(&client, NS, "src", "ReadWriteOnce").await;
    let uid = create_run(&client, NS, "r1", &["src"], json!({})).await;
    let name = src_placeholder();
    let earlier: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/placeholder-v0.1.0.yaml"),
        )
        .unwrap()
        .replace("RUN_UID", &uid)
        .replace("PLACEHOLDER_NAME", &name),
    )
    .unwrap();
    server.insert(earlier);
    let stop = CancellationToken::new();
    let running = runtime::start(client.clone(), settings("upgraded"), stop.clone()).await.unwrap();
    let pod = webhook_support::review("u1", &run_pod("r1", &uid, "src"), "CREATE");
    eventually("caches and certificate", WAIT, || server.get("secrets", OWN, manifests::TLS_SECRET).is_some()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "statefulsets" && matches!(r.verb, Verb::Create | Verb::Delete))
        .collect();
    assert!(writes.is_empty(), "the earlier placeholder was replaced: {writes:?}");
    assert_eq!(placeholders(&server, NS).len(), 1);
    // And the webhook pins to it.
    eventually("webhook serving", WAIT, || server.get("leases", OWN, manifests::LEASE).is_some()).await;
    let mut https = webhook_client(&server, &running).await;
    let answer = https.post("/mutate/pods", &webhook_support::to_bytes(&pod)).await.unwrap().json();
    let patch = answer["response"]["patch"].as_str().expect("a patch: the pod is pinned");
    use base64::Engine as _;
    let patch = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap();
    assert!(patch.contains(&name), "pinned to the earlier placeholder: {patch}");
    running.shutdown().await;
}

/// The Deployment's arguments are flags the binary knows (clap rejects an unknown flag before it
/// reaches a trailing `--help`), in every install variant.
#[test]
fn the_deployment_args_are_accepted_by_the_binary() {
    let variants = [
        Options::default(),
        Options { cert_mode: CertMode::CertManager, ..Options::default() },
        Options { watch_namespaces: vec!["ci".into()], tekton_namespace: None, ..Options::default() },
    ];
    for o in variants {
        let objects = manifests::objects(&o).unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let args: Vec<String> =
            serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_affinity-assistant"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // And the manifests command itself, with options, prints parseable YAML; bad options fail.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_affinity-assistant"))
        .args([
            "manifests",
            "--cert-mode",
            "cert-manager",
            "--watch-namespace",
            "ci",
            "--feature-flag",
            "mode=pipelineruns",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(documents(&String::from_utf8(out.stdout).unwrap()).iter().any(|o| o["kind"] == "Certificate"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_affinity-assistant"))
        .args(["manifests", "--feature-flag", "mode=sometimes"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mode"), "{}", String::from_utf8_lossy(&bad.stderr));
}
