//! Self-managed certificates: a CA and a serving certificate kept in a Secret; the leader
//! writes the Secret and the webhook configuration's `caBundle`, every replica reloads.

use super::generate::{self, Bundle, Policy};
use super::{CertError, CertStore};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Default name of the Secret holding the CA and serving certificate.
pub const DEFAULT_SECRET_NAME: &str = "affinity-assistant-webhook-cert";
/// Default name of the `MutatingWebhookConfiguration` whose `caBundle` the leader keeps.
pub const DEFAULT_WEBHOOK_CONFIG_NAME: &str = "affinity-assistant";
/// Default name of the webhook's Service.
pub const DEFAULT_SERVICE_NAME: &str = "affinity-assistant-webhook";

/// The DNS names the API server may use for the webhook's Service.
pub fn service_sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The host of a `https://host[:port][/path]` URL (brackets of an IPv6 literal removed).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host =
        if let Some(v6) = authority.strip_prefix('[') { v6.split_once(']')?.0 } else { authority.split(':').next()? };
    (!host.is_empty()).then(|| host.to_string())
}

/// The Secret as read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSecret {
    pub data: BTreeMap<String, Vec<u8>>,
    /// For optimistic concurrency on replace.
    pub resource_version: Option<String>,
}

/// The result of a write that may lose a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Someone else wrote first (409): read again.
    Conflict,
}

/// What became of a `caBundle` update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaBundleUpdate {
    Unchanged,
    Updated,
    /// The webhook configuration does not exist (not installed yet, or `run` outside a cluster).
    Missing,
    Conflict,
}

/// The Kubernetes I/O of the self-managed mode: one Secret and one webhook configuration.
pub trait CertApi: Send + Sync + 'static {
    fn get_secret(&self) -> impl Future<Output = Result<Option<StoredSecret>, CertError>> + Send;
    fn create_secret(&self, data: BTreeMap<String, Vec<u8>>)
    -> impl Future<Output = Result<Written, CertError>> + Send;
    fn replace_secret(
        &self,
        data: BTreeMap<String, Vec<u8>>,
        resource_version: Option<String>,
    ) -> impl Future<Output = Result<Written, CertError>> + Send;
    /// Sets `clientConfig.caBundle` of every webhook in the configuration (writes only if one differs).
    fn set_ca_bundle(&self, bundle: &[u8]) -> impl Future<Output = Result<CaBundleUpdate, CertError>> + Send;
}

/// [`CertApi`] over a `kube::Client`.
#[derive(Clone)]
pub struct KubeCertApi {
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    namespace: String,
    secret_name: String,
    config_name: String,
}

impl KubeCertApi {
    pub fn new(client: kube::Client, namespace: &str, secret_name: &str, config_name: &str) -> KubeCertApi {
        KubeCertApi {
            secrets: Api::namespaced(client.clone(), namespace),
            configs: Api::all(client),
            namespace: namespace.to_string(),
            secret_name: secret_name.to_string(),
            config_name: config_name.to_string(),
        }
    }

    fn secret(&self, data: BTreeMap<String, Vec<u8>>, resource_version: Option<String>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        (crate::names::LABEL_APP_NAME.to_string(), crate::names::APP_NAME.to_string()),
                        (crate::names::LABEL_APP_COMPONENT.to_string(), "webhook-certificate".to_string()),
                        (crate::names::LABEL_APP_MANAGED_BY.to_string(), crate::names::APP_NAME.to_string()),
                    ]
                    .into(),
                ),
                resource_version,
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            ..Default::default()
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl CertApi for KubeCertApi {
    async fn get_secret(&self) -> Result<Option<StoredSecret>, CertError> {
        Ok(self.secrets.get_opt(&self.secret_name).await?.map(|s| StoredSecret {
            data: s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
            resource_version: s.metadata.resource_version,
        }))
    }

    async fn create_secret(&self, data: BTreeMap<String, Vec<u8>>) -> Result<Written, CertError> {
        match self.secrets.create(&PostParams::default(), &self.secret(data, None)).await {
            Ok(_) => Ok(Written::Done),
            Err(e) if is_conflict(&e) => Ok(Written::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    async fn replace_secret(
        &self,
        data: BTreeMap<String, Vec<u8>>,
        resource_version: Option<String>,
    ) -> Result<Written, CertError> {
        let secret = self.secret(data, resource_version);
        match self.secrets.replace(&self.secret_name, &PostParams::default(), &secret).await {
            Ok(_) => Ok(Written::Done),
            Err(e) if is_conflict(&e) => Ok(Written::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_ca_bundle(&self, bundle: &[u8]) -> Result<CaBundleUpdate, CertError> {
        let Some(mut config) = self.configs.get_opt(&self.config_name).await? else {
            return Ok(CaBundleUpdate::Missing);
        };
        let mut changed = false;
        for webhook in config.webhooks.iter_mut().flatten() {
            if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle) {
                webhook.client_config.ca_bundle = Some(ByteString(bundle.to_vec()));
                changed = true;
            }
        }
        if !changed {
            return Ok(CaBundleUpdate::Unchanged);
        }
        match self.configs.replace(&self.config_name, &PostParams::default(), &config).await {
            Ok(_) => Ok(CaBundleUpdate::Updated),
            Err(e) if is_conflict(&e) => Ok(CaBundleUpdate::Conflict),
            Err(e) => Err(e.into()),
        }
    }
}

/// Self-managed certificates (the default mode).
pub struct SelfManaged {
    pub client: kube::Client,
    /// The add-on's namespace (the Secret's and the Service's).
    pub namespace: String,
    /// `--cert-secret-name`.
    pub secret_name: String,
    /// `--webhook-config-name`.
    pub webhook_config_name: String,
    /// `--webhook-service-name`.
    pub service_name: String,
    /// More names for the serving certificate: the host of `--webhook-url` in local mode.
    pub extra_sans: Vec<String>,
    /// Whether this replica leads; only the leader writes.
    pub leader: watch::Receiver<bool>,
    pub policy: Policy,
    /// How often the Secret is read (and, by the leader, checked and the `caBundle` kept).
    pub check_interval: Duration,
}

impl SelfManaged {
    /// Defaults: Secret `affinity-assistant-webhook-cert`, configuration `affinity-assistant`,
    /// Service `affinity-assistant-webhook`, CA 10 years, serving certificate 90 days renewed
    /// 30 days before expiry, checked every 30 s.
    pub fn new(client: kube::Client, namespace: &str, leader: watch::Receiver<bool>) -> SelfManaged {
        SelfManaged {
            client,
            namespace: namespace.to_string(),
            secret_name: DEFAULT_SECRET_NAME.to_string(),
            webhook_config_name: DEFAULT_WEBHOOK_CONFIG_NAME.to_string(),
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            extra_sans: Vec::new(),
            leader,
            policy: Policy::default(),
            check_interval: Duration::from_secs(30),
        }
    }

    /// The serving certificate's names: the Service's DNS names, then the extra ones.
    pub fn sans(&self) -> Vec<String> {
        let mut sans = service_sans(&self.service_name, &self.namespace);
        for s in &self.extra_sans {
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        sans
    }

    /// The loop over the cluster's API.
    pub fn into_loop(self) -> CertLoop<KubeCertApi> {
        let sans = self.sans();
        CertLoop {
            api: KubeCertApi::new(self.client, &self.namespace, &self.secret_name, &self.webhook_config_name),
            sans,
            policy: self.policy,
            check_interval: self.check_interval,
            leader: self.leader,
        }
    }
}

/// The self-managed loop over any [`CertApi`].
pub struct CertLoop<A> {
    pub api: A,
    pub sans: Vec<String>,
    pub policy: Policy,
    pub check_interval: Duration,
    pub leader: watch::Receiver<bool>,
}

/// What one [`CertLoop::step`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Why the leader wrote a new bundle.
    pub renewed: Option<String>,
    /// Whether the served certificate changed.
    pub reloaded: bool,
    /// The leader lost a race writing; check again soon.
    pub conflict: bool,
}

impl<A: CertApi> CertLoop<A> {
    /// One pass: read the Secret; as leader, renew what needs it and keep the `caBundle`; load
    /// the serving certificate into `store`.
    pub async fn step(&self, store: &CertStore, now: SystemTime) -> Result<Step, CertError> {
        let leader = *self.leader.borrow();
        let stored = self.api.get_secret().await?;
        let bundle = stored.as_ref().map(|s| Bundle::from_data(&s.data));
        let mut step = Step::default();
        let current = if leader {
            let needed = generate::assess(bundle.as_ref(), &self.sans, now, &self.policy);
            match needed.why() {
                None => bundle,
                Some(why) => {
                    tracing::info!(reason = %why, action = ?needed, "renewing the webhook certificate");
                    let new = generate::renew(bundle.as_ref(), &needed, &self.sans, now, &self.policy)?;
                    if needed.changes_trust() && self.publish_ca(&new.ca_cert).await? == CaBundleUpdate::Conflict {
                        // Trust a new CA before any replica serves a certificate it signed.
                        step.conflict = true;
                        return Ok(step);
                    }
                    let written = match &stored {
                        None => self.api.create_secret(new.to_data()).await?,
                        Some(s) => self.api.replace_secret(new.to_data(), s.resource_version.clone()).await?,
                    };
                    if written == Written::Conflict {
                        tracing::info!("the certificate Secret changed meanwhile; reading it again");
                        step.conflict = true;
                        return Ok(step);
                    }
                    step.renewed = Some(why.to_string());
                    Some(new)
                }
            }
        } else {
            bundle
        };
        let Some(current) = current else {
            tracing::info!("no webhook certificate Secret yet; waiting for the leader to create it");
            return Ok(step);
        };
        if leader {
            self.publish_ca(&current.ca_cert).await?;
        }
        step.reloaded = store.load_pem(current.tls_cert.as_bytes(), current.tls_key.as_bytes())?;
        if step.reloaded {
            tracing::info!(not_after = store.not_after().unwrap_or_default(), "serving certificate loaded");
        }
        Ok(step)
    }

    async fn publish_ca(&self, ca: &str) -> Result<CaBundleUpdate, CertError> {
        let update = self.api.set_ca_bundle(ca.as_bytes()).await?;
        match update {
            CaBundleUpdate::Updated => tracing::info!("caBundle of the webhook configuration updated"),
            CaBundleUpdate::Missing => {
                tracing::warn!("the MutatingWebhookConfiguration does not exist; its caBundle is not managed")
            }
            CaBundleUpdate::Conflict => tracing::info!("the webhook configuration changed meanwhile; retrying later"),
            CaBundleUpdate::Unchanged => {}
        }
        Ok(update)
    }

    /// Steps every `check_interval` (at once when leadership changes) until `shutdown`.
    pub async fn run(mut self, store: Arc<CertStore>, shutdown: CancellationToken) {
        let mut leader_open = true;
        loop {
            let delay = match self.step(&store, SystemTime::now()).await {
                Ok(s) if s.conflict => Duration::from_millis(500).min(self.check_interval),
                Ok(_) => self.check_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate check failed; retrying");
                    store.count_error();
                    Duration::from_secs(5).min(self.check_interval)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                changed = self.leader.changed(), if leader_open => {
                    if changed.is_err() {
                        leader_open = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("https://10.0.0.5:8443/mutate/pods").as_deref(), Some("10.0.0.5"));
        assert_eq!(url_host("https://host.docker.internal:8443").as_deref(), Some("host.docker.internal"));
        assert_eq!(url_host("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(url_host("localhost").as_deref(), Some("localhost"));
        assert_eq!(url_host("https://"), None);
    }
}
