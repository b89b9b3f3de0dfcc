//! The add-on's webhook in front of the in-memory API server, as a real API server calls it:
//! on every Pod CREATE the wrapper reads the MutatingWebhookConfigurations stored in the server
//! (whatever `src/manifests.rs` produced and the harness installed) and, for each webhook entry
//! whose rules cover pod CREATE and whose namespaceSelector (on the namespace's labels plus
//! `kubernetes.io/metadata.name`, which a real API server sets) and objectSelector (on the
//! pod's labels) select the pod, calls the webhook's real review code (`handle_review` with the
//! given decider) and applies the JSONPatch of the response before the next entry and before
//! the pod is stored; entries are called in order, as kube-apiserver does (no reinvocation).
//! No configuration installed: no webhook is called. The reviews are recorded (warnings
//! included) for the tests to count.
#![allow(dead_code)]

use super::apiserver::{FakeApiServer, ResponseBody};
use affinity_assistant::decider::CacheDecider;
use affinity_assistant::webhook::review::{ReviewOptions, handle_review};
use base64::Engine as _;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::Poll;

/// What the webhook answered for one pod.
#[derive(Clone, Debug)]
pub struct Review {
    pub namespace: String,
    pub pod: String,
    /// The JSONPatch applied, if any.
    pub patched: bool,
    pub warnings: Vec<String>,
}

/// The in-memory API server with the webhook in front of pod creation.
#[derive(Clone)]
pub struct Admitting {
    pub server: FakeApiServer,
    pub decider: Arc<CacheDecider>,
    reviews: Arc<Mutex<Vec<Review>>>,
}

impl Admitting {
    pub fn new(server: FakeApiServer, decider: Arc<CacheDecider>) -> Self {
        Admitting { server, decider, reviews: Arc::default() }
    }

    /// A client whose pod creates go through the webhook.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// Every review so far, in order.
    pub fn reviews(&self) -> Vec<Review> {
        self.reviews.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many AdmissionReview warnings the webhook gave.
    pub fn warnings(&self) -> usize {
        self.reviews().iter().map(|r| r.warnings.len()).sum()
    }
}

impl tower::Service<Request<kube::client::Body>> for Admitting {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let req = this.admit(req).await;
            let mut server = this.server.clone();
            tower::Service::call(&mut server, req).await
        })
    }
}

/// The namespace of a pod create request (`POST /api/v1/namespaces/{ns}/pods`).
pub fn pod_create_namespace(method: &Method, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, tail) = rest.split_once('/')?;
    (method == Method::POST && tail == "pods").then(|| ns.to_string())
}

/// Stores the add-on's MutatingWebhookConfiguration as `src/manifests.rs` makes it (the
/// `--webhook-url` form, same entries as the release), so the wrapper calls the webhook for
/// exactly the pods the shipped configuration selects, whatever engines it covers.
pub fn install_webhook_configuration(server: &FakeApiServer, own_namespace: &str) -> Value {
    use affinity_assistant::manifests;
    let client_config = manifests::url_client_config("https://in-memory.invalid/mutate/pods", None);
    let config = manifests::webhook_configuration(manifests::NAME, client_config, own_namespace, &[]);
    server.insert(serde_json::to_value(&config).expect("the configuration serializes"))
}

/// Whether a `LabelSelector` (JSON, as stored) selects these labels: `matchLabels` and
/// `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`), all of them. An absent or
/// empty selector selects everything; an unknown operator nothing.
pub fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return true;
    }
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let exact = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k).is_some_and(|l| Some(l) == v.as_str()));
    let expressions = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => label(key).is_some_and(|l| values.contains(&l)),
            "NotIn" => label(key).is_none_or(|l| !values.contains(&l)),
            "Exists" => label(key).is_some(),
            "DoesNotExist" => label(key).is_none(),
            _ => false,
        }
    });
    exact && expressions
}

/// Whether a webhook entry has a rule for CREATE of core/v1 pods.
fn covers_pod_create(webhook: &Value) -> bool {
    let has = |v: &Value, want: &str| v.as_array().into_iter().flatten().any(|x| x == want || x == "*");
    webhook["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| has(&r["operations"], "CREATE") && has(&r["resources"], "pods") && has(&r["apiGroups"], ""))
}

/// The names of the webhook entries, over every stored MutatingWebhookConfiguration (in name
/// order, then entry order), that a real API server would call for creating `pod` in a
/// namespace with `namespace_labels`.
pub fn selected(configurations: &[Value], namespace: &str, namespace_labels: &Value, pod: &Value) -> Vec<String> {
    let mut ns_labels = namespace_labels.as_object().cloned().unwrap_or_default();
    ns_labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
    let ns_labels = Value::Object(ns_labels);
    let pod_labels = pod["metadata"]["labels"].clone();
    configurations
        .iter()
        .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
        .filter(covers_pod_create)
        .filter(|w| label_selector_matches(&w["namespaceSelector"], &ns_labels))
        .filter(|w| label_selector_matches(&w["objectSelector"], &pod_labels))
        .map(|w| w["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

impl Admitting {
    async fn admit(&self, req: Request<kube::client::Body>) -> Request<kube::client::Body> {
        let Some(ns) = pod_create_namespace(req.method(), req.uri().path()) else { return req };
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
        let out = self.mutate(&ns, &bytes).await.unwrap_or(bytes);
        Request::from_parts(parts, kube::client::Body::from(out))
    }

    /// The pod after the webhooks, or `None` when no webhook is called or none changes it.
    async fn mutate(&self, ns: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut pod: Value = serde_json::from_slice(bytes).ok()?;
        let mut configurations = self.server.list("mutatingwebhookconfigurations", "");
        configurations.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
        let ns_labels = self.server.get("namespaces", "", ns).map(|n| n["metadata"]["labels"].clone());
        let ns_labels = ns_labels.unwrap_or(Value::Null);
        let mut changed = false;
        // Each entry in turn, matched against the pod as the entries before it left it (as
        // kube-apiserver does).
        for configuration in &configurations {
            for webhook in configuration["webhooks"].as_array().into_iter().flatten() {
                let one = [json!({"webhooks": [webhook]})];
                if !selected(&one, ns, &ns_labels, &pod).is_empty() {
                    changed |= self.review(ns, &mut pod).await;
                }
            }
        }
        if changed { serde_json::to_vec(&pod).ok() } else { None }
    }

    /// One webhook call: the review, its warnings recorded, its patch applied to `pod`.
    async fn review(&self, ns: &str, pod: &mut Value) -> bool {
        let review = json!({
            "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "offline", "operation": "CREATE", "namespace": ns, "name": pod["metadata"]["name"],
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "object": pod,
            }
        });
        let Ok(body) = serde_json::to_vec(&review) else { return false };
        let admission = handle_review(&body, &*self.decider, ReviewOptions::default()).await;
        let Ok(response) = serde_json::from_slice::<Value>(&admission.body) else { return false };
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let warnings: Vec<String> = response["response"]["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w.as_str().map(String::from).unwrap_or_else(|| w.to_string()))
            .collect();
        for w in &warnings {
            eprintln!("webhook warning for {ns}/{name}: {w}");
        }
        let patch = response["response"]["patch"]
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .and_then(|p| serde_json::from_slice::<json_patch::Patch>(&p).ok());
        let patched = patch.as_ref().is_some_and(|p| {
            let mut next = pod.clone();
            let ok = json_patch::patch(&mut next, &p.0).is_ok();
            if ok {
                *pod = next;
            }
            ok
        });
        let record = Review { namespace: ns.to_string(), pod: name, patched, warnings };
        self.reviews.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        patched
    }
}
