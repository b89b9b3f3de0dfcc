//! External certificates: PEM files written by someone else (cert-manager, a mounted Secret),
//! hot-reloaded when their contents change.

use super::CertStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `--tls-cert-file` / `--tls-key-file`.
#[derive(Debug, Clone)]
pub struct ExternalFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are read (default 10 s). A mounted Secret is swapped atomically by
    /// the kubelet; a pair that does not fit (one file written, not yet the other) is retried.
    pub poll_interval: Duration,
}

impl ExternalFiles {
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> ExternalFiles {
        ExternalFiles { cert_file: cert_file.into(), key_file: key_file.into(), poll_interval: Duration::from_secs(10) }
    }

    /// Reads both files and loads them if they changed. `Ok(true)`: a new certificate is served.
    pub async fn load(&self, store: &CertStore) -> Result<bool, super::CertError> {
        let read = |p: &PathBuf| {
            let p = p.clone();
            async move {
                tokio::fs::read(&p)
                    .await
                    .map_err(|source| super::CertError::Read { path: p.display().to_string(), source })
            }
        };
        let cert = read(&self.cert_file).await?;
        let key = read(&self.key_file).await?;
        store.load_pem(&cert, &key)
    }

    /// Loads now, then every `poll_interval` until `shutdown`. Errors keep the certificate
    /// served so far (none at start: the server is not ready until a load succeeds).
    pub async fn run(self, store: Arc<CertStore>, shutdown: CancellationToken) {
        let mut last_error: Option<String> = None;
        loop {
            match self.load(&store).await {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(cert = %self.cert_file.display(), not_after = store.not_after().unwrap_or_default(),
                        "serving certificate loaded");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(cert = %self.cert_file.display(), key = %self.key_file.display(), error = %msg,
                            "could not load the serving certificate; keeping the current one");
                    }
                    store.count_error();
                    last_error = Some(msg);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }
}
