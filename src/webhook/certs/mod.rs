//! The webhook's serving certificate.
//!
//! Two modes (SPEC issue "The mutating admission webhook", 4):
//! - [`SelfManaged`] (default): a long-lived CA and a shorter-lived serving certificate
//!   generated with rcgen, kept in a Secret in the add-on's namespace so every replica serves the
//!   same chain. Only the leader writes the Secret and the `caBundle` of the
//!   `MutatingWebhookConfiguration`; every replica reads the Secret and hot-reloads.
//! - [`ExternalFiles`]: PEM files written by someone else (cert-manager), hot-reloaded when they
//!   change; no `caBundle` management.
//!
//! Either way the server reads the certificate through a [`CertStore`], which rustls asks on
//! every handshake: a swap takes effect for the next handshake, connections in flight keep theirs.
//!
//! The Kubernetes I/O is a thin layer ([`CertApi`], [`KubeCertApi`]) over pure functions
//! ([`generate`]): what to do is decided without I/O, and tested without an API server.

mod der;
mod external;
pub mod generate;
mod self_managed;

pub use der::{CertInfo, cert_info};
pub use external::ExternalFiles;
pub use generate::{Bundle, Needed, Policy};
pub use self_managed::{
    CaBundleUpdate, CertApi, CertLoop, DEFAULT_SECRET_NAME, DEFAULT_SERVICE_NAME, DEFAULT_WEBHOOK_CONFIG_NAME,
    KubeCertApi, SelfManaged, Step, StoredSecret, Written, service_sans, url_host,
};

use super::metrics::WebhookMetrics;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};

/// A certificate problem. None of them fails an admission: the server keeps the certificate it
/// has (or is not ready while it has none).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("the private key does not fit the certificate, or is unsupported: {0}")]
    Key(String),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The ring crypto provider (the one kube uses), as every TLS config here is built with it.
pub fn provider() -> Arc<CryptoProvider> {
    // Also the process default, for code that builds configs without naming a provider;
    // an error means some provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the server presents, swapped atomically on renewal or file change.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Loaded>>,
    metrics: Option<WebhookMetrics>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The PEM it was loaded from, so an unchanged reload is a no-op.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    not_after: i64,
}

impl CertStore {
    pub fn new() -> Arc<CertStore> {
        Arc::new(CertStore::default())
    }

    /// A store that reports loads and expiry to `metrics`.
    pub fn with_metrics(metrics: WebhookMetrics) -> Arc<CertStore> {
        Arc::new(CertStore { current: RwLock::default(), metrics: Some(metrics) })
    }

    /// Loads a PEM certificate chain (leaf first) and its private key. Returns whether the
    /// served certificate changed (`false` when the same PEM is loaded again). On error the
    /// previous certificate stays.
    pub fn load_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, CertError> {
        if let Some(l) = self.read().as_ref()
            && l.cert_pem == cert_pem
            && l.key_pem == key_pem
        {
            return Ok(false);
        }
        let (key, not_after) = certified_key(cert_pem, key_pem)?;
        let loaded = Loaded { key: Arc::new(key), cert_pem: cert_pem.to_vec(), key_pem: key_pem.to_vec(), not_after };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        if let Some(m) = &self.metrics {
            m.cert_loads.inc();
            m.cert_not_after.set(not_after);
        }
        Ok(true)
    }

    /// Whether a certificate is loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.read().is_some()
    }

    /// The served chain, DER, leaf first.
    pub fn chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.read().as_ref().map(|l| l.key.cert.clone())
    }

    /// Unix time the served certificate expires.
    pub fn not_after(&self) -> Option<i64> {
        self.read().as_ref().map(|l| l.not_after)
    }

    pub(crate) fn count_error(&self) {
        if let Some(m) = &self.metrics {
            m.cert_errors.inc();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Loaded>> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.read().as_ref().map(|l| l.key.clone())
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<(CertifiedKey, i64), CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let info = cert_info(leaf).ok_or_else(|| CertError::Invalid("unreadable certificate".into()))?;
    let not_after = info.not_after;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Pem(format!("private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| CertError::Key(e.to_string()))?;
    Ok((certified, not_after))
}

/// The rustls server configuration over a store: TLS 1.2 and 1.3, HTTP/1.1 (ALPN), no client
/// certificates.
pub fn server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Where the serving certificate comes from.
pub enum TlsSource {
    /// Generated and kept in a Secret (the default).
    SelfManaged(Box<SelfManaged>),
    /// PEM files written by someone else (`--tls-cert-file`, `--tls-key-file`).
    External(ExternalFiles),
    /// A store the caller fills (tests, benchmarks, embedding).
    Store(Arc<CertStore>),
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSource::SelfManaged(s) => f.debug_tuple("SelfManaged").field(&s.secret_name).finish(),
            TlsSource::External(e) => f.debug_tuple("External").field(&e.cert_file).finish(),
            TlsSource::Store(_) => f.write_str("Store"),
        }
    }
}
