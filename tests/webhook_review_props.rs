//! Property tests of the request-to-response function over arbitrary and mutated
//! AdmissionReview JSON: it never panics and always answers a well-formed AdmissionReview that
//! allows the pod; a patch, when there is one, applies to the object as sent.
//! Case counts are bounded (256 by default; `PROPTEST_CASES` overrides).

mod common;
mod webhook_support;

use affinity_assistant::webhook::review::{ReviewOptions, handle_review};
use affinity_assistant::webhook::{Admission, PlanDecider};
use base64::Engine as _;
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

fn decider() -> &'static PlanDecider {
    static D: OnceLock<PlanDecider> = OnceLock::new();
    D.get_or_init(|| {
        let r = run("build-1", &[("src", "source"), ("cache", "cache")], &[("build", &["src", "cache"])]);
        let w = World::new(vec![r], rwo(&["source", "cache"]));
        PlanDecider { plans: [(NS.to_string(), Arc::new(w.plan()))].into(), controller_alive: true }
    })
}

/// A valid review of a pinnable pod.
fn base_review() -> Value {
    let r = run("build-1", &[("src", "source"), ("cache", "cache")], &[("build", &["src", "cache"])]);
    let mut pod = pod_json(&r, "build", &["source", "cache"]);
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}});
    pod["spec"]["tolerations"] = json!([{"key": "ci", "operator": "Exists"}]);
    webhook_support::review("uid-base", &pod, "CREATE")
}

fn answer(body: &[u8]) -> Admission {
    futures::executor::block_on(handle_review(body, decider(), ReviewOptions::default()))
}

/// The answer is a well-formed, allowing v1 AdmissionReview; its patch applies to the object.
fn check(body: &[u8]) -> Result<Value, TestCaseError> {
    let admission = answer(body);
    let v: Value =
        serde_json::from_slice(&admission.body).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
    prop_assert_eq!(&v["apiVersion"], "admission.k8s.io/v1");
    prop_assert_eq!(&v["kind"], "AdmissionReview");
    let response = v["response"].as_object().ok_or_else(|| TestCaseError::fail("no response"))?;
    prop_assert_eq!(&response["allowed"], &json!(true));
    prop_assert!(response["uid"].is_string());
    for key in response.keys() {
        prop_assert!(["uid", "allowed", "patch", "patchType", "warnings"].contains(&key.as_str()), "{}", key);
    }
    if let Some(w) = response.get("warnings") {
        let w = w.as_array().ok_or_else(|| TestCaseError::fail("warnings not a list"))?;
        prop_assert!(
            !w.is_empty() && w.iter().all(|w| w.as_str().is_some_and(|s| s.len() <= 512 && !s.contains('\n')))
        );
    }
    if let Some(p) = response.get("patch") {
        prop_assert_eq!(&response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.as_str().unwrap_or("-"))
            .map_err(|e| TestCaseError::fail(format!("patch not base64: {e}")))?;
        let patch: json_patch::Patch =
            serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("not a JSON Patch: {e}")))?;
        // (Strings the webhook does not read are not checked for UTF-8, as serde_json skips them.)
        let sent: Value = serde_json::from_slice(body)
            .or_else(|_| serde_json::from_str(&String::from_utf8_lossy(body)))
            .map_err(|_| TestCaseError::fail("pinned a non-JSON body"))?;
        let mut object = sent["request"]["object"].clone();
        json_patch::patch(&mut object, &patch)
            .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
    } else {
        prop_assert!(response.get("patchType").is_none());
    }
    // The uid is echoed whenever the request carries a readable one.
    if let Ok(sent) = serde_json::from_slice::<Value>(body)
        && let Some(uid) = sent.pointer("/request/uid").and_then(Value::as_str)
    {
        prop_assert_eq!(response["uid"].as_str(), Some(uid));
    }
    Ok(v)
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["CREATE", "Pod", "pods", "", "v1", "admission.k8s.io/v1", "ci", "source"])
            .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z/.]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(c, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
}

fn mutate(mut v: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        match m {
            Mutation::Replace(i, new) => {
                let p = &ptrs[i % ptrs.len()];
                if p.is_empty() {
                    v = new.clone();
                } else if let Some(slot) = v.pointer_mut(p) {
                    *slot = new.clone();
                }
            }
            Mutation::Remove(i) => {
                let p = &ptrs[i % ptrs.len()];
                if let Some((parent, key)) = p.rsplit_once('/')
                    && let Some(parent) = v.pointer_mut(parent)
                {
                    let key = key.replace("~1", "/").replace("~0", "~");
                    match parent {
                        Value::Object(m) => {
                            m.remove(&key);
                        }
                        Value::Array(a) => {
                            if let Ok(i) = key.parse::<usize>()
                                && i < a.len()
                            {
                                a.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    v
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), arb_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_base_review_is_pinned() {
    let v = check(&serde_json::to_vec(&base_review()).unwrap()).unwrap();
    assert!(v["response"]["patch"].is_string(), "{v}");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&body)?;
    }

    #[test]
    fn arbitrary_json(v in arb_json()) {
        check(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn arbitrary_json_as_the_request_or_the_pod(v in arb_json(), at in prop::sample::select(vec![
        "/request", "/request/object", "/request/object/metadata", "/request/object/spec",
        "/request/object/spec/volumes", "/request/object/spec/affinity", "/request/object/metadata/labels",
        "/request/uid", "/request/kind", "/request/operation", "/request/namespace",
    ])) {
        let mut review = base_review();
        *review.pointer_mut(at).unwrap() = v;
        check(&serde_json::to_vec(&review).unwrap())?;
    }

    #[test]
    fn mutated_reviews(mutations in prop::collection::vec(arb_mutation(), 1..6)) {
        check(&serde_json::to_vec(&mutate(base_review(), &mutations)).unwrap())?;
    }

    #[test]
    fn byte_mutated_reviews(edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)) {
        let mut body = serde_json::to_vec(&base_review()).unwrap();
        for (at, byte, kind) in edits {
            let i = at % (body.len() + 1);
            match kind {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i, byte),
                _ => body.truncate(i.max(1)),
            }
        }
        check(&body)?;
    }
}
