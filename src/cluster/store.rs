//! A reflector store indexed by namespace.
//!
//! kube-runtime's `Store` keeps one flat map; the add-on decides per namespace, so it reads a
//! namespace's objects on every reconcile and every admission. This store keeps them grouped,
//! trims each object before keeping it (the caches must stay small), and says which namespaces
//! an event touched, which is what triggers the controller.

use kube::Resource;
use kube::runtime::watcher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

type Objects<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

/// Objects of one kind, by namespace then name (cluster-scoped kinds use namespace "").
pub struct NsStore<K> {
    inner: RwLock<Inner<K>>,
    ready: AtomicBool,
    /// Bumped on every change: lets readers cache what they derive from the store.
    version: AtomicU64,
    trim: fn(&mut K),
}

struct Inner<K> {
    objects: Objects<K>,
    /// Objects of a re-list in progress (`Init` .. `InitDone`), swapped in at `InitDone`.
    relist: Option<Objects<K>>,
    count: usize,
    /// Per-namespace change counters (entries stay after a namespace empties: tiny, and a
    /// reader's cached derivation must see the emptying as a change).
    ns_versions: HashMap<String, u64>,
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

impl<K: Resource> NsStore<K> {
    pub fn new(trim: fn(&mut K)) -> Self {
        NsStore {
            inner: RwLock::new(Inner { objects: HashMap::new(), relist: None, count: 0, ns_versions: HashMap::new() }),
            ready: AtomicBool::new(false),
            version: AtomicU64::new(0),
            trim,
        }
    }

    /// Applies a watcher event; returns the namespaces whose objects changed.
    pub fn apply(&self, event: watcher::Event<K>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(mut obj) => {
                (self.trim)(&mut obj);
                let (ns, name) = key(&obj);
                let old = inner.objects.entry(ns.clone()).or_default().insert(name, Arc::new(obj));
                if old.is_none() {
                    inner.count += 1;
                }
                touched.insert(ns);
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = key(&obj);
                let inner = &mut *inner;
                if let Some(objs) = inner.objects.get_mut(&ns) {
                    if objs.remove(&name).is_some() {
                        inner.count -= 1;
                    }
                    if objs.is_empty() {
                        inner.objects.remove(&ns);
                    }
                }
                touched.insert(ns);
            }
            watcher::Event::Init => inner.relist = Some(HashMap::new()),
            watcher::Event::InitApply(mut obj) => {
                (self.trim)(&mut obj);
                let (ns, name) = key(&obj);
                inner.relist.get_or_insert_with(HashMap::new).entry(ns).or_default().insert(name, Arc::new(obj));
            }
            watcher::Event::InitDone => {
                let fresh = inner.relist.take().unwrap_or_default();
                touched.extend(inner.objects.keys().cloned());
                touched.extend(fresh.keys().cloned());
                inner.count = fresh.values().map(BTreeMap::len).sum();
                inner.objects = fresh;
                self.ready.store(true, Ordering::Release);
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
}
