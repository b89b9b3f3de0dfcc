//! Tests of the in-memory API server (`tests/support/apiserver.rs`) through real kube calls.
mod support;

use std::fmt::Debug;
use std::future::ready;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::{Expression, Selector};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::{FakeApiServer, Fault, RequestRecord, Verb};

const NS: &str = "ci";

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    }))
    .unwrap()
}

fn sts(name: &str) -> StatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    }))
    .unwrap()
}

fn code<T: Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: ResourceExt>(items: impl IntoIterator<Item = K>) -> Vec<String> {
    let mut names: Vec<String> = items.into_iter().map(|o| o.name_any()).collect();
    names.sort();
    names
}

/// Polls `check` every 5 ms for up to 2 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next<S: futures::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(2), s.next()).await.expect("stream item in time").expect("stream goes on")
}

#[tokio::test]
async fn create_get_list_with_selectors() {
    let server = FakeApiServer::new();
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    let a = pods.create(&pp, &pod("a", json!({"app": "x", "tier": "1"}))).await.unwrap();
    assert_eq!(a.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(a.metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.metadata.uid.as_ref().is_some_and(|u| u.len() == 36));
    assert!(a.metadata.creation_timestamp.is_some());
    assert_eq!(a.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Pending"));
    pods.create(&pp, &pod("b", json!({"app": "y", "tier": "3"}))).await.unwrap();
    pods.create(&pp, &pod("c", json!({}))).await.unwrap();
    let mut d = pod("d", json!({"app": "x"}));
    d.metadata.namespace = None;
    Api::<Pod>::namespaced(server.client(), "other").create(&pp, &d).await.unwrap();
    assert_eq!(code(Api::<Pod>::namespaced(server.client(), "other").create(&pp, &pod("e", json!({}))).await), 400);

    assert_eq!(pods.get("a").await.unwrap().metadata.uid, a.metadata.uid);
    assert_eq!(code(pods.get("zz").await), 404);
    assert_eq!(code(pods.create(&pp, &pod("a", json!({}))).await), 409);

    let cases = [
        ("app=x", vec!["a"]),
        ("app==x", vec!["a"]),
        ("app!=x", vec!["b", "c"]),
        ("app in (x,y)", vec!["a", "b"]),
        ("app notin (x)", vec!["b", "c"]),
        ("app", vec!["a", "b"]),
        ("!app", vec!["c"]),
        ("app,tier=3", vec!["b"]),
        ("tier>2", vec!["b"]),
    ];
    for (selector, want) in cases {
        let got = names(pods.list(&ListParams::default().labels(selector)).await.unwrap());
        assert_eq!(got, want, "labelSelector {selector}");
    }
    let sel = Selector::from_iter([
        Expression::In("app".into(), ["x".into(), "y".into()].into()),
        Expression::DoesNotExist("zz".into()),
    ]);
    assert_eq!(names(pods.list(&ListParams::default().labels_from(&sel)).await.unwrap()), ["a", "b"]);
    assert_eq!(names(pods.list(&ListParams::default().fields("metadata.name=b")).await.unwrap()), ["b"]);
    assert_eq!(names(pods.list(&ListParams::default().fields("metadata.name!=b")).await.unwrap()), ["a", "c"]);

    let all: Api<Pod> = Api::all(server.client());
    let list = all.list(&ListParams::default().labels("app=x")).await.unwrap();
    assert_eq!(names(list.items), ["a", "d"]);
    let other = all.list(&ListParams::default().fields("metadata.namespace=other")).await.unwrap();
    assert_eq!(names(other.items), ["d"]);
    assert_eq!(other.metadata.resource_version, Some(server.resource_version().to_string()));
    // The handle sees the same state.
    assert_eq!(server.list("pods", NS).len(), 3);
    assert_eq!(server.list("Pod", "").len(), 4);
    assert_eq!(server.get_as::<Pod>("other", "d").unwrap().labels()["app"], "x");
}

#[tokio::test]
async fn generate_name_and_cluster_scoped_kinds() {
    let server = FakeApiServer::new();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "cache-"}, "data": {"k": "v"}})).unwrap();
    let first = cms.create(&PostParams::default(), &cm).await.unwrap();
    let second = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(first.name_any().starts_with("cache-") && first.name_any().len() == "cache-".len() + 5);
    assert_ne!(first.name_any(), second.name_any());
    assert_eq!(code(cms.create(&PostParams::default(), &ConfigMap::default()).await), 422);

    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"zone": "a"}},
        "status": {"allocatable": {"cpu": "4"}}}))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let got = nodes.get("n1").await.unwrap();
    assert_eq!(got.metadata.namespace, None);
    assert!(got.status.is_some(), "node status survives create");
    assert_eq!(names(nodes.list(&ListParams::default().labels("zone=a")).await.unwrap()), ["n1"]);
    server.insert(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1"},
        "spec": {"capacity": {"storage": "1Gi"}}, "status": {"phase": "Bound"}}));
    let pv = Api::<PersistentVolume>::all(client.clone()).get("pv1").await.unwrap();
    assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    // Kinds without a table entry are learned from the objects written to them.
    let widgets = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &widgets);
    api.create(&PostParams::default(), &DynamicObject::new("w", &widgets).data(json!({"spec": {"size": 1}})))
        .await
        .unwrap();
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);
    assert!(server.get("widgets.example.com", NS, "w").is_some());

    // Both Event APIs and the webhook configuration are served.
    for (api_version, plural) in [("v1", "events"), ("events.k8s.io/v1", "events")] {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, "Event"), plural);
        let events: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        events.create(&PostParams::default(), &DynamicObject::new("e1", &ar)).await.unwrap();
        assert_eq!(events.list(&ListParams::default()).await.unwrap().items.len(), 1);
    }
    assert_eq!(server.list("events", NS).len(), 2, "a bare name spans both Event APIs");
    assert_eq!(server.list("events.events.k8s.io", NS).len(), 1);
    let mwc = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"),
        "mutatingwebhookconfigurations",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &mwc);
    api.create(&PostParams::default(), &DynamicObject::new("aa", &mwc).data(json!({"webhooks": []}))).await.unwrap();
    assert!(server.get("MutatingWebhookConfiguration", "", "aa").is_some());
}

#[tokio::test]
async fn updates_conflicts_generation_and_status() {
    let server = FakeApiServer::new();
    let api: Api<StatefulSet> = Api::namespaced(server.client(), NS);
    let mut created = sts("s");
    created.status = Some(serde_json::from_value(json!({"replicas": 5})).unwrap());
    let created = api.create(&PostParams::default(), &created).await.unwrap();
    assert!(created.status.is_none(), "create drops the status of kinds with a status subresource");

    let mut changed = created.clone();
    changed.spec.as_mut().unwrap().replicas = Some(2);
    changed.status = Some(serde_json::from_value(json!({"replicas": 9})).unwrap());
    let updated = api.replace("s", &PostParams::default(), &changed).await.unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    assert!(updated.status.is_none(), "status changes through the main resource are ignored");
    assert_eq!(code(api.replace("s", &PostParams::default(), &changed).await), 409, "stale resourceVersion");
    let mut missing = changed.clone();
    missing.metadata.name = Some("nope".into());
    missing.metadata.resource_version = None;
    assert_eq!(code(api.replace("nope", &PostParams::default(), &missing).await), 404);

    let pp = PatchParams::default();
    let labelled = api.patch("s", &pp, &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}}))).await.unwrap();
    assert_eq!(labelled.metadata.generation, Some(2), "metadata changes leave the generation");
    let again = api.patch("s", &pp, &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}}))).await.unwrap();
    assert_eq!(again.metadata.resource_version, labelled.metadata.resource_version, "no-op writes keep the version");
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"l": "2"}}});
    assert_eq!(code(api.patch("s", &pp, &Patch::Merge(stale)).await), 409);

    let status =
        api.patch_status("s", &pp, &Patch::Merge(json!({"status": {"replicas": 1}, "spec": {"replicas": 7}}))).await;
    let status = status.unwrap();
    assert_eq!(status.status.as_ref().map(|s| s.replicas), Some(1));
    assert_eq!(status.spec.as_ref().unwrap().replicas, Some(2), "status writes change only the status");
    assert_eq!(status.metadata.generation, Some(2));
    let mut replaced = status.clone();
    replaced.status.as_mut().unwrap().replicas = 3;
    let replaced = api.replace_status("s", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(replaced.status.map(|s| s.replicas), Some(3));
    assert_eq!(api.get_status("s").await.unwrap().metadata.resource_version, replaced.metadata.resource_version);
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), NS);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let pp = PatchParams::default();

    let merged = api.patch("c", &pp, &Patch::Merge(json!({"data": {"a": null, "c": "3"}}))).await.unwrap();
    assert_eq!(merged.data.unwrap().into_keys().collect::<Vec<_>>(), ["b", "c"]);
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "add", "path": "/data/d", "value": "4"}
    ]))
    .unwrap();
    let patched = api.patch("c", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.data.unwrap()["d"], "4");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "x"}])).unwrap();
    assert_eq!(code(api.patch("c", &pp, &Patch::Json::<()>(failing)).await), 422);
    let strategic = api.patch("c", &pp, &Patch::Strategic(json!({"data": {"e": "5"}}))).await.unwrap();
    assert_eq!(strategic.data.unwrap()["e"], "5");
    let directive = Patch::Strategic(json!({"data": {"$patch": "replace"}}));
    assert_eq!(code(api.patch("c", &pp, &directive).await), 400);
    assert_eq!(code(api.patch("nope", &pp, &Patch::Merge(json!({}))).await), 404);

    // Server-side apply creates, merges, and prunes what the same manager stopped applying.
    let ssa = PatchParams::apply("affinity-assistant").force();
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "labels": {"x": "1"}},
        "data": {"p": "1", "q": "2"}});
    let first = api.patch("s", &ssa, &Patch::Apply(&applied)).await.unwrap();
    assert_eq!(first.metadata.generation, Some(1));
    api.patch("s", &pp, &Patch::Merge(json!({"data": {"other": "kept"}}))).await.unwrap();
    let reapplied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"p": "9"}});
    let second = api.patch("s", &ssa, &Patch::Apply(&reapplied)).await.unwrap();
    let data = second.data.unwrap();
    assert_eq!(
        (data.get("p").map(String::as_str), data.get("q"), data.get("other").map(String::as_str)),
        (Some("9"), None, Some("kept"))
    );
    assert!(second.metadata.labels.is_none(), "labels the manager no longer applies are removed");
    assert_eq!(second.metadata.uid, first.metadata.uid);
    assert_eq!(
        code(api.patch("s", &PatchParams::default(), &Patch::Apply(&reapplied)).await),
        422,
        "apply needs a fieldManager"
    );
}

#[tokio::test]
async fn delete_preconditions_and_finalizers() {
    let server = FakeApiServer::new();
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    let a = pods.create(&PostParams::default(), &pod("a", json!({}))).await.unwrap();
    let wrong_uid = DeleteParams::default()
        .preconditions(kube::api::Preconditions { uid: Some("other".into()), resource_version: None });
    assert_eq!(code(pods.delete("a", &wrong_uid).await), 409);
    let right_uid = DeleteParams::background()
        .preconditions(kube::api::Preconditions { uid: a.metadata.uid.clone(), resource_version: None });
    let deleted = pods.delete("a", &right_uid).await.unwrap().left().expect("the deleted object");
    assert_eq!(deleted.name_any(), "a");
    assert_eq!(code(pods.get("a").await), 404);
    assert_eq!(code(pods.delete("a", &DeleteParams::default()).await), 404);

    let mut guarded = pod("g", json!({}));
    guarded.metadata.finalizers = Some(vec!["example.com/guard".into()]);
    pods.create(&PostParams::default(), &guarded).await.unwrap();
    let marked = pods.delete("g", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(pods.get("g").await.is_ok(), "a finalizer holds the object");
    pods.patch("g", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(code(pods.get("g").await), 404, "removing the last finalizer deletes");

    for name in ["x", "y", "z"] {
        pods.create(&PostParams::default(), &pod(name, json!({"app": if name == "z" { "keep" } else { "drop" }})))
            .await
            .unwrap();
    }
    let gone =
        pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=drop")).await.unwrap();
    assert_eq!(names(gone.left().unwrap().items), ["x", "y"]);
    assert_eq!(names(pods.list(&ListParams::default()).await.unwrap()), ["z"]);
}

#[tokio::test]
async fn dynamic_pipelinerun_and_lease() {
    let server = FakeApiServer::new();
    let client = server.client();
    let gvk = GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "pipelineruns");
    let runs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let mut run =
        DynamicObject::new("run-1", &ar).data(json!({"spec": {"pipelineRef": {"name": "p"}}, "status": {"x": 1}}));
    run.metadata.labels = Some([("tekton.dev/pipeline".to_string(), "p".to_string())].into());
    let created = runs.create(&PostParams::default(), &run).await.unwrap();
    assert!(created.data.get("status").is_none());
    let pp = PatchParams::default();
    let cond = json!({"status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}]}});
    runs.patch_status("run-1", &pp, &Patch::Merge(&cond)).await.unwrap();
    let listed = runs.list(&ListParams::default().labels("tekton.dev/pipeline=p")).await.unwrap();
    assert_eq!(listed.items[0].data["status"]["conditions"][0]["type"], "Succeeded");
    assert_eq!(listed.items[0].types.as_ref().unwrap().kind, "PipelineRun");
    assert_eq!(server.get("pipelineruns", NS, "run-1").unwrap()["status"], cond["status"]);

    let leases: Api<Lease> = Api::namespaced(client, NS);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}))
    .unwrap();
    let mut held = leases.create(&PostParams::default(), &lease).await.unwrap();
    held.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let taken = leases.replace("leader", &PostParams::default(), &held).await.unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
    assert_eq!(code(leases.replace("leader", &PostParams::default(), &held).await), 409);
}

#[tokio::test]
async fn kube_event_recorder() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = FakeApiServer::new();
    let client = server.client();
    let created = Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod("a", json!({}))).await;
    let reference = created.unwrap().object_ref(&());
    let recorder = Recorder::new(client, Reporter { controller: "affinity-assistant".into(), instance: None });
    let event = Event {
        type_: EventType::Normal,
        reason: "Pinned".into(),
        note: Some("pinned to n1".into()),
        action: "Pin".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events = server.list("events", NS);
    assert_eq!(events.len(), 1, "a repeat is a series on the same object");
    assert_eq!((events[0]["note"].as_str(), events[0]["series"]["count"].as_i64()), (Some("pinned to n1"), Some(2)));
    let verbs: Vec<(Verb, String)> = server.requests().iter().skip(1).map(|r| (r.verb, r.group.clone())).collect();
    assert_eq!(verbs, [(Verb::Create, "events.k8s.io".into()), (Verb::Patch, "events.k8s.io".into())]);
}

#[tokio::test]
async fn metadata_api() {
    let server = FakeApiServer::new();
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    pods.create(&PostParams::default(), &pod("a", json!({"app": "x"}))).await.unwrap();
    let meta = pods.get_metadata("a").await.unwrap();
    assert_eq!(meta.labels()["app"], "x");
    let list = pods.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(names(list.items), ["a"]);
}

#[tokio::test]
async fn raw_watch_semantics() {
    let server = FakeApiServer::new();
    server.set_bookmark_interval(Duration::from_millis(20));
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    pods.create(&PostParams::default(), &pod("a", json!({"app": "x"}))).await.unwrap();
    let rv = server.resource_version().to_string();

    // From "0": synthetic ADDED for what exists, then changes, then bookmarks.
    let mut all = pods.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut all).await.unwrap(), WatchEvent::Added(p) if p.name_any() == "a"));
    let mut selected =
        pods.watch(&WatchParams::default().labels("app=x").disable_bookmarks(), &rv).await.unwrap().boxed();
    pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})))
        .await
        .unwrap();
    assert!(matches!(next(&mut all).await.unwrap(), WatchEvent::Modified(p) if p.labels()["app"] == "y"));
    match next(&mut selected).await.unwrap() {
        WatchEvent::Deleted(p) => {
            assert_eq!(p.labels()["app"], "x", "the object as it last matched");
            assert_eq!(p.metadata.resource_version, Some(server.resource_version().to_string()));
        }
        other => panic!("expected DELETED for an object that stopped matching, got {other:?}"),
    }
    assert!(matches!(next(&mut all).await.unwrap(), WatchEvent::Bookmark(_)));

    // Too old for the history: an ERROR event with 410 Expired.
    server.set_history_limit(1);
    pods.create(&PostParams::default(), &pod("b", json!({}))).await.unwrap();
    let mut stale = pods.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match next(&mut stale).await.unwrap() {
        WatchEvent::Error(status) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410, got {other:?}"),
    }
    assert!(stale.next().await.is_none());

    // Streaming lists: initial ADDED events, then the initial-events-end bookmark.
    let wp = WatchParams::streaming_lists();
    let mut initial = pods.watch(&wp, "0").await.unwrap().boxed();
    let mut added = Vec::new();
    loop {
        match next(&mut initial).await.unwrap() {
            WatchEvent::Added(p) => added.push(p.name_any()),
            WatchEvent::Bookmark(b) => {
                assert!(b.metadata.annotations.contains_key("k8s.io/initial-events-end"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, ["a", "b"]);

    // timeoutSeconds ends the stream.
    let mut short =
        pods.watch(&WatchParams::default().timeout(1), &server.resource_version().to_string()).await.unwrap().boxed();
    let start = std::time::Instant::now();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(3), short.next()).await.unwrap() {
        assert!(matches!(event, Ok(WatchEvent::Bookmark(_))));
    }
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn watcher_events_and_recovery() {
    let server = FakeApiServer::new();
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    server.insert(pod("seed", json!({})));
    let mut w = watcher(pods.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Init));
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::InitApply(p) if p.name_any() == "seed"));
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::InitDone));

    pods.create(&PostParams::default(), &pod("a", json!({}))).await.unwrap();
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Apply(p) if p.name_any() == "a"));
    pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}}))).await.unwrap();
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Apply(p) if p.labels().contains_key("l")));
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Delete(p) if p.name_any() == "a"));

    // A dropped connection: kube re-watches from its last resourceVersion, without a re-list.
    server.drop_watches();
    server.insert(pod("b", json!({})));
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Apply(p) if p.name_any() == "b"));
    let count = |verb| server.requests().iter().filter(|r| r.verb == verb).count();
    assert_eq!((count(Verb::List), count(Verb::Watch)), (1, 2));

    // The watcher falls out of the history while it is not reading: 410, then a re-list.
    server.set_history_limit(3);
    for i in 0..5 {
        server.insert(pod(&format!("burst-{i}"), json!({})));
    }
    match next(&mut w).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410, got {other:?}"),
    }
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Init));
    let mut relisted = Vec::new();
    loop {
        match next(&mut w).await.unwrap() {
            watcher::Event::InitApply(p) => relisted.push(p.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(relisted.len(), 7, "{relisted:?}");
    assert_eq!(count(Verb::List), 2);
}

#[tokio::test]
async fn reflector_store_converges() {
    let server = FakeApiServer::new();
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    server.insert(pod("seed", json!({"app": "x"})));
    server.insert(pod("unlabelled", json!({})));
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels("app=x").streaming_lists();
    let stream = reflector(writer, watcher(pods.clone(), config)).applied_objects();
    tokio::spawn(stream.for_each(|_| ready(())));
    tokio::time::timeout(Duration::from_secs(2), reader.wait_until_ready()).await.unwrap().unwrap();

    for i in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), json!({"app": "x"}))).await.unwrap();
    }
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    pods.patch("p2", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "no"}}})))
        .await
        .unwrap();
    server.drop_watches();
    server.delete("pods", NS, "p3");
    let expected = || {
        names(
            server
                .list("pods", NS)
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["app"] == "x")
                .map(|p| serde_json::from_value::<Pod>(p).unwrap()),
        )
    };
    eventually("the store to match the server", || names(reader.state().iter().map(|p| (**p).clone())) == expected())
        .await;
    assert_eq!(expected(), ["p0", "p4", "seed"]);
}

#[tokio::test]
async fn owner_reference_garbage_collection() {
    let server = FakeApiServer::new();
    let client = server.client();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let owner = sets.create(&PostParams::default(), &sts("owner")).await.unwrap();
    let kept = sets.create(&PostParams::default(), &sts("kept")).await.unwrap();
    let child = |name: &str, owners: &[&StatefulSet]| {
        let mut p = pod(name, json!({}));
        p.metadata.owner_references = Some(owners.iter().map(|o| o.controller_owner_ref(&()).unwrap()).collect());
        p
    };
    let child_pod = pods.create(&PostParams::default(), &child("child", &[&owner])).await.unwrap();
    pods.create(&PostParams::default(), &child("shared", &[&owner, &kept])).await.unwrap();
    let mut grandchild: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "grandchild"}})).unwrap();
    grandchild.metadata.owner_references = Some(vec![child_pod.controller_owner_ref(&()).unwrap()]);
    cms.create(&PostParams::default(), &grandchild).await.unwrap();

    let mut events = pods
        .watch(&WatchParams::default().disable_bookmarks(), &server.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    sets.delete("owner", &DeleteParams::background()).await.unwrap();
    assert!(server.get("pods", NS, "child").is_some(), "garbage collection is not synchronous with the delete");
    assert!(matches!(next(&mut events).await.unwrap(), WatchEvent::Deleted(p) if p.name_any() == "child"));
    eventually("the grandchild to go", || server.get("configmaps", NS, "grandchild").is_none()).await;
    assert!(server.get("pods", NS, "shared").is_some(), "an object with a live owner stays");

    // Orphan: the dependents stay, without the owner reference.
    let orphaned = child("orphan", &[&kept]);
    pods.create(&PostParams::default(), &orphaned).await.unwrap();
    sets.delete("kept", &DeleteParams::orphan()).await.unwrap();
    eventually("the owner references to go", || {
        ["orphan", "shared"]
            .iter()
            .all(|n| server.get("pods", NS, n).is_some_and(|p| p["metadata"].get("ownerReferences").is_none()))
    })
    .await;
}

#[tokio::test]
async fn injected_faults() {
    let server = FakeApiServer::new();
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    pods.create(&PostParams::default(), &pod("a", json!({}))).await.unwrap();
    let faults = server.faults();

    faults.fail_next("pods", Verb::Get, 2, Fault::Conflict);
    assert_eq!(code(pods.get("a").await), 409);
    assert!(pods.list(&ListParams::default()).await.is_ok(), "other verbs are unaffected");
    assert_eq!(code(pods.get("a").await), 409);
    assert!(pods.get("a").await.is_ok(), "the fault stops after n calls");

    faults.fail_next("Pod", Verb::Create, 1, Fault::TooManyRequests);
    match pods.create(&PostParams::default(), &pod("b", json!({}))).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests")),
        other => panic!("{other:?}"),
    }
    faults.fail_next("*", Verb::Patch, 1, Fault::Internal);
    assert_eq!(code(pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({}))).await), 500);
    faults.fail_next("pods", Verb::Watch, 1, Fault::Internal);
    assert_eq!(code(pods.watch(&WatchParams::default(), "0").await.map(|_| ())), 500);

    faults.fail_next("pods", Verb::Get, 1, Fault::Timeout(Duration::from_secs(3600)));
    assert!(tokio::time::timeout(Duration::from_millis(50), pods.get("a")).await.is_err(), "the call hangs");
    faults.fail_next("pods", Verb::Get, 1, Fault::Timeout(Duration::from_millis(10)));
    assert_eq!(code(pods.get("a").await), 504);
    assert!(pods.get("a").await.is_ok());
    faults.fail_next("configmaps", Verb::List, 5, Fault::Internal);
    faults.clear();
    assert!(Api::<ConfigMap>::namespaced(server.client(), NS).list(&ListParams::default()).await.is_ok());
}

#[tokio::test]
async fn request_log() {
    let server = FakeApiServer::new();
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &pod("a", json!({}))).await.unwrap();
    pods.get("a").await.unwrap();
    Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    pods.patch_status("a", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}})))
        .await
        .unwrap();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let _ = lease_api.get("missing").await;
    let _watch = Api::<Node>::all(client).watch(&WatchParams::default(), "0").await.unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();

    let rec =
        |verb, group: &str, resource: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| RequestRecord {
            verb,
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        };
    let expected = [
        rec(Verb::Create, "", "pods", Some(NS), None, None),
        rec(Verb::Get, "", "pods", Some(NS), Some("a"), None),
        rec(Verb::List, "", "pods", None, None, None),
        rec(Verb::Patch, "", "pods", Some(NS), Some("a"), Some("status")),
        rec(Verb::Get, "coordination.k8s.io", "leases", Some(NS), Some("missing"), None),
        rec(Verb::Watch, "", "nodes", None, None, None),
        rec(Verb::Delete, "", "pods", Some(NS), Some("a"), None),
    ];
    assert_eq!(server.requests(), expected);
    assert_eq!(server.requests()[3].rbac_resource(), "pods/status");
    assert_eq!(Pod::plural(&()), "pods");
    server.clear_requests();
    assert!(server.requests().is_empty());
}

fn quota(name: &str, pods: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name, "namespace": NS},
        "spec": {"hard": {"pods": pods}}})
}

#[tokio::test]
async fn resource_quotas_refuse_pods_beyond_the_count_and_track_usage() {
    let server = FakeApiServer::new();
    let client = server.client();
    let quotas: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ResourceQuota"), "resourcequotas"),
    );
    quotas.create(&PostParams::default(), &serde_json::from_value(quota("pods", "2")).unwrap()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &pod("a", json!({}))).await.unwrap();
    pods.create(&PostParams::default(), &pod("b", json!({}))).await.unwrap();
    let used = |server: &FakeApiServer| server.get("resourcequotas", NS, "pods").unwrap()["status"].clone();
    assert_eq!(used(&server), json!({"hard": {"pods": "2"}, "used": {"pods": "2"}}));
    let refused = pods.create(&PostParams::default(), &pod("c", json!({}))).await;
    match refused {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                "pods \"c\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(server.get("pods", NS, "c").is_none());
    // A finished pod no longer counts.
    let done = json!({"status": {"phase": "Succeeded"}});
    pods.patch_status("a", &PatchParams::default(), &Patch::Merge(&done)).await.unwrap();
    assert_eq!(used(&server)["used"]["pods"], "1");
    pods.create(&PostParams::default(), &pod("c", json!({}))).await.unwrap();
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    assert_eq!(used(&server)["used"]["pods"], "1");
    // Other namespaces are not counted.
    let other: Api<Pod> = Api::namespaced(client, "elsewhere");
    let mut p = pod("x", json!({}));
    p.metadata.namespace = Some("elsewhere".into());
    other.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(used(&server)["used"]["pods"], "1");
}

#[tokio::test]
async fn the_statefulset_controller_makes_and_remakes_pod_zero() {
    let server = FakeApiServer::new();
    server.run_statefulset_controller();
    let client = server.client();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let mut s = sts("ph");
    s.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().annotations =
        Some([("a".to_string(), "b".to_string())].into());
    s.spec.as_mut().unwrap().template.spec.as_mut().unwrap().volumes =
        Some(vec![serde_json::from_value(json!({"name": "w", "persistentVolumeClaim": {"claimName": "c"}})).unwrap()]);
    let created = sets.create(&PostParams::default(), &s).await.unwrap();
    eventually("pod ph-0", || server.get("pods", NS, "ph-0").is_some()).await;
    let p = server.get("pods", NS, "ph-0").unwrap();
    assert_eq!(p["metadata"]["labels"]["app"], "ph");
    assert_eq!(p["metadata"]["annotations"]["a"], "b");
    assert_eq!(p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "c");
    let owner = &p["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str(), owner["controller"].as_bool()),
        (Some("StatefulSet"), created.metadata.uid.as_deref(), Some(true))
    );
    // Deleted: made again, with a new uid.
    let first_uid = p["metadata"]["uid"].clone();
    server.delete("pods", NS, "ph-0");
    eventually("pod ph-0 again", || server.get("pods", NS, "ph-0").is_some_and(|p| p["metadata"]["uid"] != first_uid))
        .await;
    // Other replica counts are left alone.
    let mut two = sts("two");
    two.spec.as_mut().unwrap().replicas = Some(2);
    sets.create(&PostParams::default(), &two).await.unwrap();
    // The StatefulSet deleted: its pod goes with it (garbage collection) and is not remade.
    sets.delete("ph", &DeleteParams::default()).await.unwrap();
    eventually("pod ph-0 collected", || server.get("pods", NS, "ph-0").is_none()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.get("pods", NS, "ph-0").is_none());
    assert!(server.get("pods", NS, "two-0").is_none());
}

#[tokio::test]
async fn a_refused_statefulset_pod_is_an_event_like_kube_controller_managers() {
    let server = FakeApiServer::new();
    server.insert(quota("pods", "1"));
    server.insert(pod("user", json!({})));
    server.run_statefulset_controller();
    let client = server.client();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let created = sets.create(&PostParams::default(), &sts("ph")).await.unwrap();
    let failed =
        |server: &FakeApiServer| server.list("v1/events", NS).into_iter().find(|e| e["reason"] == "FailedCreate");
    eventually("a FailedCreate event", || failed(&server).is_some()).await;
    let e = failed(&server).unwrap();
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["source"]["component"], "statefulset-controller");
    assert_eq!(
        e["involvedObject"],
        json!({"kind": "StatefulSet", "namespace": NS, "name": "ph", "uid": created.metadata.uid,
            "apiVersion": "apps/v1", "resourceVersion": created.metadata.resource_version})
    );
    assert_eq!(
        e["message"],
        "create Pod ph-0 in StatefulSet ph failed error: pods \"ph-0\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=1, limited: pods=1"
    );
    // Retried with a backoff: the same Event counts up.
    eventually("a repeat", || failed(&server).is_some_and(|e| e["count"].as_i64() >= Some(2))).await;
    assert_eq!(server.list("v1/events", NS).len(), 1);
    // Room made: the pod comes.
    server.delete("pods", NS, "user");
    eventually("pod ph-0", || server.get("pods", NS, "ph-0").is_some()).await;
}

#[tokio::test]
async fn graceful_pod_deletion_keeps_a_bound_pod_for_its_grace_period() {
    let server = FakeApiServer::new();
    server.set_pod_termination(Duration::from_millis(200));
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    let mut bound = pod("bound", json!({}));
    bound.spec.as_mut().unwrap().node_name = Some("n1".into());
    pods.create(&PostParams::default(), &bound).await.unwrap();
    pods.create(&PostParams::default(), &pod("unbound", json!({}))).await.unwrap();
    pods.delete("bound", &DeleteParams::default()).await.unwrap();
    let marked = server.get("pods", NS, "bound").expect("still there while terminating");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    // Writes to a terminating pod do not end it early.
    let status = json!({"status": {"phase": "Running"}});
    pods.patch_status("bound", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert!(server.get("pods", NS, "bound").is_some());
    // An unbound pod goes at once.
    pods.delete("unbound", &DeleteParams::default()).await.unwrap();
    assert!(server.get("pods", NS, "unbound").is_none());
    eventually("the terminating pod to go", || server.get("pods", NS, "bound").is_none()).await;
    // gracePeriodSeconds=0 goes at once.
    pods.create(&PostParams::default(), &bound).await.unwrap();
    pods.delete("bound", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    assert!(server.get("pods", NS, "bound").is_none());
    // A finished pod too.
    pods.create(&PostParams::default(), &bound).await.unwrap();
    let done = json!({"status": {"phase": "Succeeded"}});
    pods.patch_status("bound", &PatchParams::default(), &Patch::Merge(&done)).await.unwrap();
    pods.delete("bound", &DeleteParams::default()).await.unwrap();
    assert!(server.get("pods", NS, "bound").is_none());
}

#[tokio::test]
async fn uids_given_on_create_are_kept_only_when_asked() {
    let server = FakeApiServer::new();
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    let mut p = pod("a", json!({}));
    p.metadata.uid = Some("recorded-uid".into());
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_ne!(created.metadata.uid.as_deref(), Some("recorded-uid"));
    server.set_keep_uids(true);
    p.metadata.name = Some("b".into());
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(created.metadata.uid.as_deref(), Some("recorded-uid"));
}

fn argo_api(server: &FakeApiServer, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", kind);
    Api::namespaced_with(server.client(), NS, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// The API error of a request, whole (code, reason, message).
fn api_error<T: Debug>(r: Result<T, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// As Argo's minimal CRDs define them: namespaced, no status subresource. A create keeps the
/// status it is given, the controller's single update writes spec and status together and
/// bumps the generation (apiextensions counts every non-metadata change when there is no status
/// subresource), and `/status` is not a route.
#[tokio::test]
async fn argo_workflows_and_templates_are_built_in_without_a_status_subresource() {
    let server = FakeApiServer::new();
    let workflows = argo_api(&server, "Workflow", "workflows");
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"), "workflows");
    let wf = DynamicObject::new("ci-1", &ar)
        .data(json!({"spec": {"entrypoint": "main", "templates": []}, "status": {"phase": ""}}));
    let created = workflows.create(&PostParams::default(), &wf).await.unwrap();
    assert_eq!(created.data["status"]["phase"], "", "no status subresource: create keeps the status");
    assert_eq!(created.metadata.generation, Some(1));
    let pp = PatchParams::default();
    let running = json!({"metadata": {"labels": {"workflows.argoproj.io/phase": "Running"}},
        "status": {"phase": "Running"}});
    let updated = workflows.patch("ci-1", &pp, &Patch::Merge(&running)).await.unwrap();
    assert_eq!(updated.data["status"]["phase"], "Running");
    assert_eq!(updated.metadata.generation, Some(2), "a status change bumps the generation of such a resource");
    let relabelled = json!({"metadata": {"labels": {"workflows.argoproj.io/completed": "false"}}});
    let same = workflows.patch("ci-1", &pp, &Patch::Merge(&relabelled)).await.unwrap();
    assert_eq!(same.metadata.generation, Some(2), "metadata alone does not");
    assert_eq!(code(workflows.patch_status("ci-1", &pp, &Patch::Merge(&running)).await), 404);
    assert_eq!(code(workflows.get_status("ci-1").await), 404);
    assert_eq!(server.get("workflows.argoproj.io", NS, "ci-1").unwrap()["kind"], "Workflow");
    assert_eq!(server.get("argoproj.io/v1alpha1/workflows", NS, "ci-1").unwrap()["status"]["phase"], "Running");

    let templates = argo_api(&server, "WorkflowTemplate", "workflowtemplates");
    let tar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTemplate"),
        "workflowtemplates",
    );
    let wft = DynamicObject::new("ci", &tar).data(json!({"spec": {"entrypoint": "main"}}));
    templates.create(&PostParams::default(), &wft).await.unwrap();
    assert_eq!(names(templates.list(&ListParams::default()).await.unwrap()), ["ci"]);
    assert_eq!(server.get("WorkflowTemplate", NS, "ci").unwrap()["apiVersion"], "argoproj.io/v1alpha1");
    // Namespaced: no cluster-scoped route for a name.
    let everywhere: Api<DynamicObject> = Api::all_with(server.client(), &tar);
    assert_eq!(code(everywhere.get("ci").await), 404);
    assert_eq!(everywhere.list(&ListParams::default()).await.unwrap().items.len(), 1);
}

/// A CRD that is not installed: every request answers kube-apiserver's 404 for an unknown
/// resource (no details naming an object), open watches end, kube's watcher fails its initial
/// list; the other resources are untouched. Installed again, it serves what it had.
#[tokio::test]
async fn an_absent_crd_answers_not_found_to_everything_until_installed() {
    let server = FakeApiServer::new();
    let workflows = argo_api(&server, "Workflow", "workflows");
    let templates = argo_api(&server, "WorkflowTemplate", "workflowtemplates");
    let seeded = server.insert(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "kept", "namespace": NS}, "spec": {}, "status": {"phase": "Running"}}));
    let mut open = workflows.watch(&WatchParams::default().disable_bookmarks(), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut open).await.unwrap(), WatchEvent::Added(w) if w.name_any() == "kept"));

    server.set_absent("workflows.argoproj.io", true);
    let ended = tokio::time::timeout(Duration::from_secs(2), open.next()).await.expect("the open watch ends");
    assert!(ended.is_none(), "the stream closes when its CRD goes: {ended:?}");

    let unknown = (404, "NotFound".to_string(), "the server could not find the requested resource".to_string());
    assert_eq!(api_error(workflows.get("kept").await), unknown);
    assert_eq!(api_error(workflows.list(&ListParams::default()).await), unknown);
    assert_eq!(api_error(workflows.watch(&WatchParams::default(), "0").await.map(|_| ())), unknown);
    let everywhere: Api<DynamicObject> = Api::all_with(
        server.client(),
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"), "workflows"),
    );
    assert_eq!(api_error(everywhere.list(&ListParams::default()).await), unknown);
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"), "workflows");
    let new = DynamicObject::new("new", &ar).data(json!({"spec": {}}));
    assert_eq!(api_error(workflows.create(&PostParams::default(), &new).await), unknown);
    let pp = PatchParams::default();
    assert_eq!(api_error(workflows.patch("kept", &pp, &Patch::Merge(json!({"spec": {"x": 1}}))).await), unknown);
    assert_eq!(api_error(workflows.delete("kept", &DeleteParams::default()).await), unknown);
    let all = DeleteParams::default();
    assert_eq!(api_error(workflows.delete_collection(&all, &ListParams::default()).await), unknown);
    // A faulted request still answers the 404: there is no handler to fail.
    server.faults().fail_next("workflows", Verb::Get, 1, Fault::Internal);
    assert_eq!(api_error(workflows.get("kept").await), unknown);
    server.faults().clear();
    // kube's watcher, as the add-on's caches use it: the initial list fails with the 404.
    let mut w = watcher(workflows.clone(), watcher::Config::default()).boxed();
    loop {
        match next(&mut w).await {
            Ok(watcher::Event::Init) => continue,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) => break assert_eq!(s.code, 404),
            other => panic!("expected the initial list to fail with 404, got {other:?}"),
        }
    }
    // Requests are still logged (RBAC checks), other resources still served.
    let logged = server.requests().iter().filter(|r| r.resource == "workflows" && r.verb == Verb::Get).count();
    assert!(logged >= 2);
    assert!(templates.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert_eq!(server.get("workflows", NS, "kept").unwrap()["metadata"]["uid"], seeded["metadata"]["uid"]);

    // Installed again: the same objects, with the same uids; watches work again.
    server.set_absent("workflows.argoproj.io", false);
    let kept = workflows.get("kept").await.unwrap();
    assert_eq!(kept.metadata.uid.as_deref(), seeded["metadata"]["uid"].as_str());
    let mut again = workflows.watch(&WatchParams::default().disable_bookmarks(), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut again).await.unwrap(), WatchEvent::Added(w) if w.name_any() == "kept"));
    workflows.create(&PostParams::default(), &new).await.unwrap();
    assert!(matches!(next(&mut again).await.unwrap(), WatchEvent::Added(w) if w.name_any() == "new"));

    // Absent from the start, then installed: none.
    server.set_absent("WorkflowTemplate", true);
    assert_eq!(code(templates.list(&ListParams::default()).await), 404);
    server.set_absent("workflowtemplates.argoproj.io", false);
    assert!(templates.list(&ListParams::default()).await.unwrap().items.is_empty());
}
