//! Engine adapters: the one place that knows a pipeline engine's object shapes.
//!
//! An adapter turns the engine's run objects into [`crate::model::Run`] and says which pods are
//! its task pods. Tekton is the only engine today; Argo Workflows will be one more file here
//! implementing [`Engine`].

pub mod tekton;

use crate::pod::PodMeta;

/// The run a task pod belongs to, as its labels say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub name: String,
    /// Absent on pods made by hand or by old engine versions.
    pub uid: Option<String>,
}

/// Why an engine says a pod is not the add-on's to pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineSkip {
    /// The engine's own placeholder pod.
    EnginePlaceholder,
    /// The engine's own affinity assistant already pinned this pod.
    EngineAssistant,
}

/// What the core needs from a pipeline engine about pods. Run parsing is per engine (its
/// objects differ); the result is always a [`crate::model::Run`].
pub trait Engine: Send + Sync {
    /// Short name, used in logs and metrics labels.
    fn name(&self) -> &'static str;
    /// The label that marks this engine's task pods (the webhook's object selector key).
    fn pod_run_label(&self) -> &'static str;
    /// The run a pod belongs to, or `None` when it is not one of this engine's task pods.
    fn pod_run(&self, pod: &PodMeta) -> Option<RunRef>;
    /// The pipeline task a task pod runs, for logs and `render`.
    fn pod_task<'a>(&self, pod: &'a PodMeta) -> Option<&'a str>;
    /// A pod the engine's own affinity machinery owns.
    fn pod_skip(&self, pod: &PodMeta) -> Option<EngineSkip>;
}

/// Every engine the add-on knows, in the order a pod is offered to them.
pub fn engines() -> &'static [&'static dyn Engine] {
    &[&tekton::Tekton]
}

/// A document that could not be read as the type it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field with the wrong type: `path` names it (`spec.workspaces[0].name`).
    #[error("{kind}: field {path}: {message}")]
    Field { kind: String, path: String, message: String },
    /// A required field is missing or empty.
    #[error("{kind}: {message}")]
    Invalid { kind: String, message: String },
}

/// Deserialises `value` into `T`, naming the offending field on error.
pub fn from_value<'a, T: serde::Deserialize<'a>>(kind: &str, value: &'a serde_json::Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| ParseError::Field {
        kind: kind.to_string(),
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// `serde_json::from_slice`, checking UTF-8 once for the whole document: reading from bytes,
/// serde_json checks every string it keeps (keys included) one by one, which costs more than
/// one pass over the document. Bytes that are not UTF-8 go to `from_slice` itself, so the
/// result and the errors are the same.
pub fn from_json_slice<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Serde helper: a `null` collection or string reads as its default (API servers and humans
/// both write `field: null`).
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::from_json_slice;
    use crate::pod::TaskPod;

    #[test]
    fn from_json_slice_reads_as_from_slice_does() {
        let docs: [&[u8]; 4] = [
            br#"{"metadata": {"name": "p\u00e9", "labels": {"a\/b": "\"c\""}}, "spec": {"x": "\n"}}"#,
            // Not UTF-8 inside a field nobody reads: from_slice never looks at it.
            b"{\"metadata\": {\"name\": \"p\"}, \"spec\": {\"x\": \"\xff\"}}",
            // Not UTF-8 where it is read: the same error either way.
            b"{\"metadata\": {\"name\": \"\xff\"}}",
            br#"{"metadata": {"name": 1}}"#,
        ];
        for doc in docs {
            let fast = from_json_slice::<TaskPod>(doc).map_err(|e| e.to_string());
            let slow = serde_json::from_slice::<TaskPod>(doc).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(doc));
        }
    }
}
