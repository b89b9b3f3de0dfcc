//! A reflector store indexed by namespace.
//!
//! kube-runtime's `Store` keeps one flat map; the add-on decides per namespace, so it reads a
//! namespace's objects on every reconcile and every admission. This store keeps them grouped,
//! trims each object before keeping it (the caches must stay small), and says which namespaces
//! an event touched, which is what triggers the controller.
//!
//! # Several watchers, one store
//!
//! With `--watch-namespace a --watch-namespace b` one store is fed by one watcher per
//! namespace, and each watcher relists on its own (at start, and after a 410 Expired). A relist
//! is scoped to its watcher's namespace ([`Scope`]): its `InitDone` replaces that namespace's
//! objects only, never another watcher's. The store is ready once every watcher it expects has
//! listed once. (kube-runtime's reflector `Writer` keeps one flat map and one relist buffer per
//! writer: one writer per namespace would need merging on every read, which is what this
//! store's grouping avoids.)

use kube::Resource;
use kube::runtime::watcher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

type Objects<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

/// What one watcher of a store sees: every namespace or one, and, where several engines'
/// objects share a store, only the names with its prefix (`tekton/`) or the objects with its
/// label (an engine's task pods).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Scope {
    pub namespace: Option<String>,
    pub prefix: String,
    pub label: Option<String>,
}

impl Scope {
    /// Every namespace, every name.
    pub fn all() -> Scope {
        Scope::default()
    }

    pub fn namespace(ns: &str) -> Scope {
        Scope { namespace: Some(ns.to_string()), ..Default::default() }
    }

    pub fn with_prefix(self, prefix: impl Into<String>) -> Scope {
        Scope { prefix: prefix.into(), ..self }
    }

    pub fn with_label(self, label: impl Into<String>) -> Scope {
        Scope { label: Some(label.into()), ..self }
    }

    fn covers<K: Cached>(&self, name: &str, obj: &K) -> bool {
        name.starts_with(&self.prefix) && self.label.as_ref().is_none_or(|l| obj.has_label(l))
    }

    fn covers_namespace(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
    }
}

/// Objects of one kind, by namespace then name (cluster-scoped kinds use namespace "").
pub struct NsStore<K> {
    inner: RwLock<Inner<K>>,
    ready: AtomicBool,
    /// Bumped on every change: lets readers cache what they derive from the store.
    version: AtomicU64,
    trim: fn(&mut K),
    /// Objects no decision reads (e.g. finished task pods) are not kept: an update that makes
    /// an object fail this drops it.
    keep: fn(&K) -> bool,
}

struct Inner<K> {
    objects: Objects<K>,
    /// Per watcher scope: objects of a re-list in progress (`Init` .. `InitDone`), swapped in
    /// for that scope at `InitDone`.
    relists: HashMap<Scope, Objects<K>>,
    /// Scopes whose first list completed, and how many must before the store is ready.
    listed: HashSet<Scope>,
    expected: usize,
    count: usize,
    /// Per-namespace change counters (entries stay after a namespace empties: tiny, and a
    /// reader's cached derivation must see the emptying as a change).
    ns_versions: HashMap<String, u64>,
}

/// What a store needs of what it keeps: where it goes, and its labels (for scoped relists).
/// Kubernetes objects have it from their metadata; the neutral runs the caches hold, which
/// carry no `ObjectMeta` (it would be most of their size), say it themselves.
pub trait Cached {
    fn cache_key(&self) -> (String, String);
    fn has_label(&self, key: &str) -> bool;
}

impl<K: Resource> Cached for K {
    fn cache_key(&self) -> (String, String) {
        key(self)
    }

    fn has_label(&self, key: &str) -> bool {
        self.meta().labels.as_ref().is_some_and(|ls| ls.contains_key(key))
    }
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// Drops what no decision reads and what can be large: managed fields and the
/// last-applied-configuration annotation.
pub fn trim_meta<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn keep_all<K>(_: &K) -> bool {
    true
}

impl<K: Cached> NsStore<K> {
    pub fn new(trim: fn(&mut K)) -> Self {
        Self::with_filter(trim, keep_all)
    }

    /// A store that keeps only the objects `keep` accepts (after trimming).
    pub fn with_filter(trim: fn(&mut K), keep: fn(&K) -> bool) -> Self {
        NsStore {
            inner: RwLock::new(Inner {
                objects: HashMap::new(),
                relists: HashMap::new(),
                listed: HashSet::new(),
                expected: 1,
                count: 0,
                ns_versions: HashMap::new(),
            }),
            ready: AtomicBool::new(false),
            version: AtomicU64::new(0),
            trim,
            keep,
        }
    }

    /// How many watchers (scopes) feed this store: it is ready once each has listed.
    pub fn expect_watchers(&self, n: usize) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.expected = n.max(1);
        let ready = inner.listed.len() >= inner.expected;
        self.ready.store(ready, Ordering::Release);
    }

    /// Applies an event of a watcher that sees every namespace.
    pub fn apply(&self, event: watcher::Event<K>) -> BTreeSet<String> {
        self.apply_scoped(&Scope::all(), event)
    }

    /// Applies a watcher event from a watcher of `scope`; returns the namespaces whose
    /// objects changed.
    pub fn apply_scoped(&self, scope: &Scope, event: watcher::Event<K>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        match event {
            watcher::Event::Apply(mut obj) => {
                (self.trim)(&mut obj);
                let (ns, name) = obj.cache_key();
                if (self.keep)(&obj) {
                    let old = inner.objects.entry(ns.clone()).or_default().insert(name, Arc::new(obj));
                    if old.is_none() {
                        inner.count += 1;
                    }
                } else {
                    Self::remove(inner, &ns, &name);
                }
                touched.insert(ns);
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = obj.cache_key();
                Self::remove(inner, &ns, &name);
                touched.insert(ns);
            }
            watcher::Event::Init => {
                inner.relists.insert(scope.clone(), HashMap::new());
            }
            watcher::Event::InitApply(mut obj) => {
                (self.trim)(&mut obj);
                if (self.keep)(&obj) {
                    let (ns, name) = obj.cache_key();
                    let relist = inner.relists.entry(scope.clone()).or_default();
                    relist.entry(ns).or_default().insert(name, Arc::new(obj));
                }
            }
            watcher::Event::InitDone => {
                let fresh = inner.relists.remove(scope).unwrap_or_default();
                // Only what this watcher sees is replaced.
                let covered: Vec<String> =
                    inner.objects.keys().filter(|ns| scope.covers_namespace(ns)).cloned().collect();
                for ns in covered {
                    let Some(objs) = inner.objects.get_mut(&ns) else { continue };
                    let before = objs.len();
                    objs.retain(|name, obj| !scope.covers(name, &**obj));
                    let removed = before - objs.len();
                    if objs.is_empty() {
                        inner.objects.remove(&ns);
                    }
                    inner.count -= removed;
                    if removed > 0 {
                        touched.insert(ns);
                    }
                }
                for (ns, objs) in fresh {
                    let into = inner.objects.entry(ns.clone()).or_default();
                    for (name, obj) in objs {
                        if into.insert(name, obj).is_none() {
                            inner.count += 1;
                        }
                    }
                    touched.insert(ns);
                }
                inner.listed.insert(scope.clone());
                if inner.listed.len() >= inner.expected {
                    self.ready.store(true, Ordering::Release);
                }
            }
        }
        if !touched.is_empty() {
            let v = self.version.fetch_add(1, Ordering::AcqRel) + 1;
            for ns in &touched {
                inner.ns_versions.insert(ns.clone(), v);
            }
        }
        touched
    }

    fn remove(inner: &mut Inner<K>, ns: &str, name: &str) {
        if let Some(objs) = inner.objects.get_mut(ns) {
            if objs.remove(name).is_some() {
                inner.count -= 1;
            }
            if objs.is_empty() {
                inner.objects.remove(ns);
            }
        }
    }

    /// Objects of a namespace, in name order.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.objects.get(ns).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.objects.get(ns)?.get(name).cloned()
    }

    /// Every object (for cluster-scoped kinds and cluster-wide scans).
    pub fn all(&self) -> Vec<Arc<K>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.objects.values().flat_map(|m| m.values().cloned()).collect()
    }

    pub fn namespaces(&self) -> BTreeSet<String> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.objects.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first list has completed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Changes whenever an object of the namespace changes.
    pub fn ns_version(&self, ns: &str) -> u64 {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).ns_versions.get(ns).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                annotations: Some(
                    [("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{...}".to_string())].into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn indexes_by_namespace_trims_and_reports_touched_namespaces() {
        let s: NsStore<ConfigMap> = NsStore::new(trim_meta);
        assert!(!s.is_ready());
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(cm("a", "x")));
        s.apply(watcher::Event::InitApply(cm("b", "y")));
        let touched = s.apply(watcher::Event::InitDone);
        assert!(s.is_ready());
        assert_eq!(touched, ["a".to_string(), "b".to_string()].into());
        assert_eq!(s.len(), 2);
        let x = s.get("a", "x").unwrap();
        assert!(x.metadata.managed_fields.is_none());
        assert!(x.metadata.annotations.as_ref().unwrap().is_empty());
        assert_eq!(s.apply(watcher::Event::Apply(cm("a", "z"))), ["a".to_string()].into());
        assert_eq!(s.in_namespace("a").len(), 2);
        s.apply(watcher::Event::Delete(cm("b", "y")));
        assert!(s.in_namespace("b").is_empty());
        assert_eq!(s.namespaces(), ["a".to_string()].into());
        // A re-list replaces everything and touches old and new namespaces.
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(cm("c", "w")));
        let v = s.version();
        let touched = s.apply(watcher::Event::InitDone);
        assert_eq!(touched, ["a".to_string(), "c".to_string()].into());
        assert_eq!(s.len(), 1);
        assert!(s.version() > v);
        assert!(s.ns_version("a") > 0 && s.ns_version("a") == s.ns_version("c"));
        assert_eq!(s.ns_version("never"), 0);
    }

    #[test]
    fn a_relist_replaces_only_what_its_watcher_sees() {
        let s: NsStore<ConfigMap> = NsStore::new(trim_meta);
        s.expect_watchers(3);
        let scopes: Vec<Scope> = ["a", "b", "c"].iter().map(|n| Scope::namespace(n)).collect();
        for (i, scope) in scopes.iter().enumerate() {
            let ns = ["a", "b", "c"][i];
            s.apply_scoped(scope, watcher::Event::Init);
            s.apply_scoped(scope, watcher::Event::InitApply(cm(ns, "x")));
            s.apply_scoped(scope, watcher::Event::InitApply(cm(ns, "y")));
            assert!(!s.is_ready(), "not ready before every watcher listed");
            s.apply_scoped(scope, watcher::Event::InitDone);
        }
        assert!(s.is_ready());
        assert_eq!(s.len(), 6);
        // b's watch expires (410) and relists while a's and c's go on: interleaved.
        s.apply_scoped(&scopes[1], watcher::Event::Init);
        s.apply_scoped(&scopes[0], watcher::Event::Apply(cm("a", "z")));
        s.apply_scoped(&scopes[1], watcher::Event::InitApply(cm("b", "x")));
        let touched = s.apply_scoped(&scopes[1], watcher::Event::InitDone);
        assert_eq!(touched, ["b".to_string()].into(), "only b is touched");
        assert_eq!(s.in_namespace("a").len(), 3, "a keeps its objects");
        assert_eq!(s.in_namespace("b").len(), 1, "b is what b's relist said");
        assert_eq!(s.in_namespace("c").len(), 2, "c keeps its objects");
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn a_relist_replaces_only_its_engines_objects() {
        let s: NsStore<ConfigMap> = NsStore::new(trim_meta);
        s.expect_watchers(2);
        let (tekton, argo) = (Scope::all().with_prefix("tekton/"), Scope::all().with_prefix("argo/"));
        for (scope, name) in [(&tekton, "tekton/r"), (&argo, "argo/r")] {
            s.apply_scoped(scope, watcher::Event::Init);
            s.apply_scoped(scope, watcher::Event::InitApply(cm("a", name)));
            s.apply_scoped(scope, watcher::Event::InitDone);
        }
        assert_eq!(s.len(), 2);
        // Argo's CRD is gone (or its watch expired): its relist is empty.
        s.apply_scoped(&argo, watcher::Event::Init);
        s.apply_scoped(&argo, watcher::Event::InitDone);
        assert_eq!(
            s.in_namespace("a").iter().map(|c| c.metadata.name.clone().unwrap()).collect::<Vec<_>>(),
            vec!["tekton/r".to_string()]
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn objects_the_filter_rejects_are_not_kept() {
        let s: NsStore<ConfigMap> = NsStore::with_filter(trim_meta, |c| c.data.is_none());
        s.apply(watcher::Event::Apply(cm("a", "x")));
        assert_eq!(s.len(), 1);
        let mut finished = cm("a", "x");
        finished.data = Some(Default::default());
        assert_eq!(s.apply(watcher::Event::Apply(finished.clone())), ["a".to_string()].into());
        assert_eq!(s.len(), 0, "an update that fails the filter drops it");
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(finished));
        s.apply(watcher::Event::InitDone);
        assert!(s.is_empty());
    }
}
