use thiserror::Error;

/// Why a reconcile failed; each maps to a metric label.
#[derive(Debug, Error)]
pub enum Error {
    #[error("creating placeholder {name}: {source}")]
    Create { name: String, source: kube::Error },
    #[error("updating placeholder {name}: {source}")]
    Update { name: String, source: kube::Error },
    #[error("deleting placeholder {name}: {source}")]
    Delete { name: String, source: kube::Error },
    #[error("moving placeholder {name}: {source}")]
    Move { name: String, source: kube::Error },
    #[error("reading {what}: {source}")]
    Read { what: String, source: kube::Error },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Create { .. } => "create",
            Error::Update { .. } => "update",
            Error::Delete { .. } => "delete",
            Error::Move { .. } => "move",
            Error::Read { .. } => "read",
        }
    }
}
