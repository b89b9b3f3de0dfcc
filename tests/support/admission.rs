//! The add-on's webhook in front of the in-memory API server, as a real API server calls it:
//! every Pod CREATE whose labels match the webhook configuration's objectSelector (the
//! `tekton.dev/pipelineRun` label exists, the placeholder id label does not) goes through the
//! webhook's real review code (`handle_review` with the given decider) before it is stored,
//! and the JSONPatch of the AdmissionReview response is applied. The reviews are recorded
//! (warnings included) for the tests to count.
#![allow(dead_code)]

use super::apiserver::{FakeApiServer, ResponseBody};
use affinity_assistant::decider::CacheDecider;
use affinity_assistant::names;
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

/// Whether the webhook configuration's objectSelector selects a pod with these labels.
pub fn selected(pod: &Value) -> bool {
    let labels = &pod["metadata"]["labels"];
    labels.get(affinity_assistant::engine::tekton::LABEL_PIPELINE_RUN).is_some()
        && labels.get(names::LABEL_PLACEHOLDER).is_none()
}

impl Admitting {
    async fn admit(&self, req: Request<kube::client::Body>) -> Request<kube::client::Body> {
        let Some(ns) = pod_create_namespace(req.method(), req.uri().path()) else { return req };
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
        let out = self.mutate(&ns, &bytes).await.unwrap_or(bytes);
        Request::from_parts(parts, kube::client::Body::from(out))
    }

    /// The pod after the webhook, or `None` when the webhook is not called or changes nothing.
    async fn mutate(&self, ns: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut pod: Value = serde_json::from_slice(bytes).ok()?;
        if !selected(&pod) {
            return None;
        }
        let review = json!({
            "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "offline", "operation": "CREATE", "namespace": ns, "name": pod["metadata"]["name"],
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "object": pod,
            }
        });
        let admission =
            handle_review(&serde_json::to_vec(&review).ok()?, &*self.decider, ReviewOptions::default()).await;
        let response: Value = serde_json::from_slice(&admission.body).ok()?;
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
        let patched = patch.as_ref().is_some_and(|p| json_patch::patch(&mut pod, &p.0).is_ok());
        let record = Review { namespace: ns.to_string(), pod: name, patched, warnings };
        self.reviews.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        if patched { serde_json::to_vec(&pod).ok() } else { None }
    }
}
