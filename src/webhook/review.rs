//! The request-to-response function: `admission.k8s.io/v1` AdmissionReview bytes in, an
//! AdmissionReview response out. It never fails and never panics: whatever comes in, the answer
//! is `allowed: true`, with a JSONPatch only when the core pins the pod, and a `warnings` entry
//! where a person should know why a pod was left alone.
//!
//! Light serde structs rather than `kube::core::admission`: only the fields the webhook reads are
//! deserialised (the pod straight into the trimmed [`TaskPod`]), in one pass on the hot path.

use super::Decider;
use super::metrics::{Outcome, error, ignored};
use crate::core::{Decision, Pin, Skip};
use crate::pod::TaskPod;
use base64::Engine as _;
use futures::FutureExt as _;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// `apiVersion` of the reviews the webhook reads and writes.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of the reviews the webhook reads and writes.
pub const KIND: &str = "AdmissionReview";
/// Prefix of every warning the webhook returns.
pub const WARNING_PREFIX: &str = "affinity-assistant: ";
/// Longest warning returned (bytes); the API server may cut warnings longer than 256 characters.
const MAX_WARNING: usize = 512;

/// The answer to one AdmissionReview.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// The response AdmissionReview, JSON.
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

/// Bounds of [`handle_review`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReviewOptions {
    /// Longest a decision may take; past it the pod is left alone with a warning. `None`: no
    /// bound (and no timer, so the function runs on any executor).
    pub decide_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<O> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<RequestIn<O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<O> {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    resource: Option<GroupVersionResource>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default = "Option::default")]
    object: Option<O>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct GroupVersionResource {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    resource: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// Answers one AdmissionReview. Never fails, never panics (a panicking decider is caught).
pub async fn handle_review<D: Decider>(body: &[u8], decider: &D, options: ReviewOptions) -> Admission {
    match crate::engine::from_json_slice::<ReviewIn<TaskPod>>(body) {
        Ok(review) => handle_parsed(review, decider, options).await,
        Err(_) => handle_unreadable(body),
    }
}

/// The answer to a review whose body was larger than `limit` bytes and was not read; `prefix`
/// is what was read of it, searched for the request uid so the API server can match the answer.
pub fn too_large(prefix: &[u8], limit: usize) -> Admission {
    let uid = scan_uid(prefix).unwrap_or_default();
    tracing::warn!(uid = %uid, limit, "AdmissionReview body too large; pod not pinned");
    respond(
        &uid,
        None,
        Some(format!("the admission request is larger than {limit} bytes; the pod was not pinned")),
        Outcome::Error(error::BODY_TOO_LARGE),
    )
}

/// The answer to a review whose body could not be read at all (client gone, timeout).
pub fn unreadable(prefix: &[u8], why: &str) -> Admission {
    let uid = scan_uid(prefix).unwrap_or_default();
    respond(
        &uid,
        None,
        Some(format!("the admission request could not be read ({why}); the pod was not pinned")),
        Outcome::Error(error::BODY_UNREADABLE),
    )
}

async fn handle_parsed<D: Decider>(review: ReviewIn<TaskPod<'_>>, decider: &D, options: ReviewOptions) -> Admission {
    if let Some(answer) = check_envelope(&review) {
        return answer;
    }
    let Some(request) = review.request else {
        // check_envelope answers a review without request.
        return respond("", None, None, Outcome::Error(error::INVALID_REVIEW));
    };
    let uid = request.uid.unwrap_or_default();
    let Some(mut pod) = request.object else {
        return respond(
            &uid,
            None,
            Some("the Pod CREATE request carries no object; the pod was not pinned".into()),
            Outcome::Error(error::INVALID_POD),
        );
    };
    if pod.metadata.namespace.is_empty() {
        pod.metadata.namespace = request.namespace.unwrap_or_default().into();
    }
    let pod = pod.identified();
    let dry_run = request.dry_run.unwrap_or(false);
    if !decider.ready() {
        tracing::warn!(namespace = %pod.metadata.namespace, pod = %pod.metadata.display_name(),
            "caches not synced yet; pod not pinned");
        return respond(
            &uid,
            None,
            Some(format!(
                "affinity-assistant is starting (caches not synced); pod {}/{} was not pinned and may wait for a \
                 volume attached elsewhere",
                pod.metadata.namespace,
                pod.metadata.display_name()
            )),
            Outcome::Error(error::NOT_READY),
        );
    }
    let decision = AssertUnwindSafe(decider.decide(&pod)).catch_unwind();
    let decision = match options.decide_timeout {
        Some(t) => match tokio::time::timeout(t, decision).await {
            Ok(d) => d,
            Err(_) => {
                tracing::warn!(namespace = %pod.metadata.namespace, pod = %pod.metadata.display_name(),
                    timeout = ?t, "decision timed out; pod not pinned");
                return respond(
                    &uid,
                    None,
                    Some(format!(
                        "no decision within {} ms; pod {}/{} was not pinned",
                        t.as_millis(),
                        pod.metadata.namespace,
                        pod.metadata.display_name()
                    )),
                    Outcome::Error(error::DECIDE_TIMEOUT),
                );
            }
        },
        None => decision.await,
    };
    match decision {
        Ok(Decision::Pin(pin)) => pinned(&uid, &pod, &pin, dry_run),
        Ok(Decision::Skip(skip)) => skipped(&uid, &pod, skip, dry_run),
        Err(panic) => {
            let what = panic_message(&panic);
            tracing::error!(namespace = %pod.metadata.namespace, pod = %pod.metadata.display_name(),
                panic = %what, "decision panicked; pod not pinned");
            respond(
                &uid,
                None,
                Some(format!(
                    "internal error deciding pod {}/{}; it was not pinned",
                    pod.metadata.namespace,
                    pod.metadata.display_name()
                )),
                Outcome::Error(error::INTERNAL),
            )
        }
    }
}

/// Checks everything but the pod: an answer when the request is not a v1 Pod CREATE review.
fn check_envelope<O>(review: &ReviewIn<O>) -> Option<Admission> {
    let uid = review.request.as_ref().and_then(|r| r.uid.as_deref()).unwrap_or("");
    if review.api_version.as_deref() != Some(API_VERSION) || review.kind.as_deref() != Some(KIND) {
        let got = format!(
            "{}/{}",
            review.api_version.as_deref().unwrap_or("<no apiVersion>"),
            review.kind.as_deref().unwrap_or("<no kind>")
        );
        tracing::warn!(uid, got = %got, "not an {API_VERSION} {KIND}; allowed unchanged");
        return Some(respond(
            uid,
            None,
            Some(format!("expected an {API_VERSION} {KIND}, got {got}; the pod was not pinned")),
            Outcome::Error(error::INVALID_REVIEW),
        ));
    }
    let Some(request) = &review.request else {
        tracing::warn!("AdmissionReview without request; allowed unchanged");
        return Some(respond(
            "",
            None,
            Some("the AdmissionReview carries no request; nothing was changed".into()),
            Outcome::Error(error::INVALID_REVIEW),
        ));
    };
    let kind_ok = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.as_deref().unwrap_or("").is_empty() && k.kind.as_deref() == Some("Pod"));
    let resource_ok = request
        .resource
        .as_ref()
        .is_none_or(|r| r.group.as_deref().unwrap_or("").is_empty() && r.resource.as_deref() == Some("pods"));
    if !kind_ok || !resource_ok || request.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        tracing::debug!(uid, "not a Pod; allowed unchanged");
        return Some(respond(uid, None, None, Outcome::Ignored(ignored::NOT_POD)));
    }
    if request.operation.as_deref() != Some("CREATE") {
        tracing::debug!(uid, operation = request.operation.as_deref().unwrap_or(""), "not a CREATE; allowed unchanged");
        return Some(respond(uid, None, None, Outcome::Ignored(ignored::NOT_CREATE)));
    }
    None
}

/// The slow path: the body did not read as a review with a pod. Says precisely why.
fn handle_unreadable(body: &[u8]) -> Admission {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let uid = scan_uid(body).unwrap_or_default();
            tracing::warn!(uid = %uid, error = %e, "AdmissionReview is not JSON; allowed unchanged");
            return respond(
                &uid,
                None,
                Some(format!("the admission request is not valid JSON ({e}); the pod was not pinned")),
                Outcome::Error(error::INVALID_JSON),
            );
        }
    };
    let uid = value.pointer("/request/uid").and_then(|u| u.as_str()).unwrap_or("").to_string();
    // The envelope alone (the pod skipped): a non-CREATE or non-Pod request is not ours even
    // when its object is odd.
    match serde_path_to_error::deserialize::<_, ReviewIn<IgnoredAny>>(&value) {
        Ok(envelope) => {
            if let Some(answer) = check_envelope(&envelope) {
                return answer;
            }
        }
        Err(e) => {
            tracing::warn!(uid = %uid, error = %e, "malformed AdmissionReview; allowed unchanged");
            return respond(
                &uid,
                None,
                Some(format!("malformed AdmissionReview at {}: {}; the pod was not pinned", e.path(), e.inner())),
                Outcome::Error(error::INVALID_REVIEW),
            );
        }
    }
    let message = match value.pointer("/request/object") {
        Some(object) => match TaskPod::from_value(object) {
            Err(e) => e.to_string(),
            // Cannot happen (the typed pass failed on something): say so rather than guess.
            Ok(_) => "unreadable request".to_string(),
        },
        None => "no object".to_string(),
    };
    tracing::warn!(uid = %uid, error = %message, "unreadable pod in AdmissionReview; allowed unchanged");
    respond(
        &uid,
        None,
        Some(format!("could not read the pod ({message}); it was not pinned")),
        Outcome::Error(error::INVALID_POD),
    )
}

fn pinned(uid: &str, pod: &TaskPod<'_>, pin: &Pin, dry_run: bool) -> Admission {
    let patch = match pin.patch_json() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "could not serialise the JSONPatch; pod not pinned");
            return respond(
                uid,
                None,
                Some("internal error serialising the pin; the pod was not pinned".into()),
                Outcome::Error(error::INTERNAL),
            );
        }
    };
    tracing::info!(
        namespace = %pod.metadata.namespace,
        pod = %pod.metadata.display_name(),
        run = %pin.run,
        claims = %pin.claims.join(","),
        placeholder = %pin.placeholder,
        dry_run,
        "pinned task pod to its placeholder"
    );
    let patch = base64::engine::general_purpose::STANDARD.encode(patch);
    respond(uid, Some(patch), None, Outcome::Pinned)
}

fn skipped(uid: &str, pod: &TaskPod<'_>, skip: Skip, dry_run: bool) -> Admission {
    let warning = if skip.reason.warns() {
        tracing::warn!(
            namespace = %pod.metadata.namespace,
            pod = %pod.metadata.display_name(),
            run = pod.metadata.labels.get("tekton.dev/pipelineRun").map(|r| r.as_ref()).unwrap_or(""),
            claims = %pod.claims().join(","),
            reason = skip.reason.as_str(),
            dry_run,
            "{}", skip.message
        );
        Some(skip.message)
    } else {
        tracing::debug!(
            namespace = %pod.metadata.namespace,
            pod = %pod.metadata.display_name(),
            reason = skip.reason.as_str(),
            "{}", skip.message
        );
        None
    };
    // A reinvocation that takes back an earlier pin: the patch removes it.
    let undo = skip.undo.as_ref().and_then(|p| serde_json::to_vec(p).ok());
    let patch = undo.map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    respond(uid, patch, warning, Outcome::Skipped(skip.reason))
}

fn respond(uid: &str, patch: Option<String>, warning: Option<String>, outcome: Outcome) -> Admission {
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: warning.map(|w| vec![bounded_warning(&w)]).unwrap_or_default(),
        },
    };
    // Serialising these plain structs cannot fail; keep a literal answer for the impossible case.
    let body = serde_json::to_vec(&out).unwrap_or_else(|_| {
        format!(r#"{{"apiVersion":"{API_VERSION}","kind":"{KIND}","response":{{"uid":"","allowed":true}}}}"#)
            .into_bytes()
    });
    Admission { body, outcome }
}

/// The warning as returned: prefixed, on one line, at most [`MAX_WARNING`] bytes.
fn bounded_warning(message: &str) -> String {
    let mut w = String::with_capacity(WARNING_PREFIX.len() + message.len().min(MAX_WARNING));
    w.push_str(WARNING_PREFIX);
    for c in message.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if w.len() + c.len_utf8() > MAX_WARNING {
            break;
        }
        w.push(c);
    }
    w
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Best effort: the request uid in (a prefix of) a review that could not be parsed. The API
/// server writes `"request":{"uid":"..."` first thing in the request; a `uid` anywhere else
/// (say, the pod's) is not taken.
pub fn scan_uid(body: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&body[..e.valid_up_to()]).ok()?,
    };
    let rest = &text[text.find("\"request\"")? + "\"request\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"uid\"")?.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let uid = &rest[..rest.find('"')?];
    // A Kubernetes uid: short, no escapes or control characters.
    (uid.len() <= 128 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')).then(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_uid_finds_the_request_uid() {
        let body = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request" : { "uid" : "705ab4f5-6393", "kind": garbage"#;
        assert_eq!(scan_uid(body).as_deref(), Some("705ab4f5-6393"));
        assert_eq!(scan_uid(br#"{"uid":"x"}"#), None);
        assert_eq!(scan_uid(br#"{"request":{"uid":"a\"b"}}"#), None);
        assert_eq!(scan_uid(br#"{"request":{"object":{"uid":"pod-uid"}}}"#), None);
        assert_eq!(scan_uid(b"\xff\xfe"), None);
    }

    #[test]
    fn warnings_are_bounded_and_on_one_line() {
        let w = bounded_warning(&"é\n".repeat(1000));
        assert!(w.len() <= MAX_WARNING);
        assert!(w.starts_with(WARNING_PREFIX));
        assert!(!w.contains('\n'));
    }
}
