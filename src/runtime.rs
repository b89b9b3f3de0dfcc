//! `affinity-assistant run`: wires the caches, the controller, the webhook and the
//! metrics/health server together over one [`kube::Client`], and shuts them down cleanly.
//!
//! It lives in the library, not the binary, so that tests run exactly this wiring against the
//! in-memory API server (the RBAC test compares every call it makes with the install's rules).
//! The binary adds only flag parsing, logging and signals.

use crate::cluster::Caches;
use crate::cluster::watch::{self, WatchOptions};
use crate::controller::{self, Context, ControllerMetrics, Options};
use crate::decider::CacheDecider;
use crate::health::{HealthServer, Readiness};
use crate::manifests;
use crate::webhook::certs::{CertStore, ExternalFiles, SelfManaged, TlsSource, url_host};
use crate::webhook::metrics::WebhookMetrics;
use crate::webhook::server::{WebhookOptions, WebhookServer};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube_lease_manager::LeaseManagerBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Tls {
    SelfManaged,
    External { cert_file: PathBuf, key_file: PathBuf },
}

/// What `affinity-assistant run` was asked to do.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The add-on's namespace: config, Secret, Lease.
    pub namespace: String,
    /// This replica's leader-election identity and Event reporter instance.
    pub identity: String,
    pub watch_namespaces: Vec<String>,
    pub controller_only: bool,
    pub webhook_only: bool,
    pub webhook_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: Tls,
    pub tls_secret: String,
    pub service_name: String,
    /// The webhook configuration whose `caBundle` the leader keeps current.
    pub webhook_configuration: String,
    /// Local mode: register a webhook configuration calling this URL (and remove it on exit).
    pub webhook_url: Option<String>,
    pub lease_name: String,
    pub config_name: String,
    pub move_grace: Duration,
    pub concurrency: u16,
    /// Where Tekton's feature-flags are read (`None`: never).
    pub tekton_namespace: Option<String>,
    /// Leader lease duration and renewal grace, in seconds.
    pub lease_seconds: (u64, u64),
}

impl Settings {
    /// The defaults of `affinity-assistant run`.
    pub fn new(identity: impl Into<String>) -> Settings {
        Settings {
            namespace: manifests::DEFAULT_NAMESPACE.to_string(),
            identity: identity.into(),
            watch_namespaces: Vec::new(),
            controller_only: false,
            webhook_only: false,
            webhook_addr: SocketAddr::from(([0, 0, 0, 0], manifests::WEBHOOK_PORT as u16)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], manifests::METRICS_PORT as u16)),
            tls: Tls::SelfManaged,
            tls_secret: manifests::TLS_SECRET.to_string(),
            service_name: manifests::WEBHOOK_SERVICE.to_string(),
            webhook_configuration: manifests::NAME.to_string(),
            webhook_url: None,
            lease_name: manifests::LEASE.to_string(),
            config_name: manifests::CONFIG_MAP.to_string(),
            move_grace: Duration::from_secs(60),
            concurrency: 4,
            tekton_namespace: Some(manifests::DEFAULT_TEKTON_NAMESPACE.to_string()),
            lease_seconds: (15, 5),
        }
    }
}

/// The add-on could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--controller-only and --webhook-only exclude each other")]
    BothOnly,
    #[error("--webhook-url needs the self-managed certificate mode (it registers its own CA)")]
    UrlNeedsSelfManaged,
    #[error("--webhook-url {0:?}: expected https://HOST[:PORT]/PATH")]
    BadUrl(String),
    #[error("setting up leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("starting the webhook: {0}")]
    Webhook(#[from] crate::webhook::server::WebhookError),
    #[error("starting the metrics and health server: {0}")]
    Health(#[from] crate::health::HealthError),
    #[error("registering the webhook configuration {name}: {source}")]
    Register { name: String, source: kube::Error },
}

/// A started add-on.
pub struct Running {
    /// The webhook's bound address (`None` with `--controller-only`).
    pub webhook_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops everything (as on SIGTERM) and waits until it is down.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Waits until `stop` was cancelled by someone else and everything is down.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn self_managed(client: &kube::Client, s: &Settings, leader: tokio::sync::watch::Receiver<bool>) -> SelfManaged {
    let mut sm = SelfManaged::new(client.clone(), &s.namespace, leader);
    sm.secret_name = s.tls_secret.clone();
    sm.service_name = s.service_name.clone();
    sm.webhook_config_name = s.webhook_configuration.clone();
    sm.extra_sans = s.webhook_url.as_deref().and_then(url_host).into_iter().collect();
    sm
}

/// Local mode: the configuration calling `url`, applied with the add-on's field manager so a
/// re-run takes it over; the leader's certificate loop fills its `caBundle`.
async fn register(client: &kube::Client, s: &Settings, url: &str) -> Result<(), StartError> {
    // Outside a cluster install nothing created the add-on's namespace (its Secret and Lease
    // go there); it is left in place on exit so the next local run reuses the CA.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(&s.namespace).await.ok().flatten().is_none() {
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(s.namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => info!(namespace = %s.namespace, "created the add-on's namespace"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => return Err(StartError::Register { name: format!("namespace {}", s.namespace), source }),
        }
    }
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = manifests::webhook_configuration(
        &s.webhook_configuration,
        manifests::url_client_config(url, None),
        &s.namespace,
        &s.watch_namespaces,
    );
    let params = PatchParams::apply(controller::FIELD_MANAGER).force();
    api.patch(&s.webhook_configuration, &params, &Patch::Apply(&config))
        .await
        .map_err(|source| StartError::Register { name: s.webhook_configuration.clone(), source })?;
    info!(name = %s.webhook_configuration, url, "registered the webhook configuration (removed on exit)");
    Ok(())
}

async fn unregister(client: &kube::Client, name: &str) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => info!(name, "removed the webhook configuration"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => warn!(name, error = %e, "could not remove the webhook configuration; delete it by hand"),
    }
}

/// Starts the add-on; it runs until `stop` is cancelled.
pub async fn start(client: kube::Client, s: Settings, stop: CancellationToken) -> Result<Running, StartError> {
    if s.controller_only && s.webhook_only {
        return Err(StartError::BothOnly);
    }
    if let Some(url) = &s.webhook_url {
        if !matches!(s.tls, Tls::SelfManaged) {
            return Err(StartError::UrlNeedsSelfManaged);
        }
        if !url.starts_with("https://") || url_host(url).is_none() {
            return Err(StartError::BadUrl(url.clone()));
        }
    }
    info!(namespace = %s.namespace, identity = %s.identity, version = env!("CARGO_PKG_VERSION"), "starting");
    let caches = Arc::new(Caches::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let webhook_metrics = WebhookMetrics::register(&mut registry);
    let wait_metrics = crate::webhook::metrics::WaitMetrics::register(&mut registry);
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter { controller: "affinity-assistant".into(), instance: Some(s.identity.clone()) },
    );

    let watch_options = WatchOptions {
        namespaces: s.watch_namespaces.clone(),
        own_namespace: s.namespace.clone(),
        config_name: s.config_name.clone(),
        lease_name: s.lease_name.clone(),
        tekton_namespace: s.tekton_namespace.clone(),
    };
    let reporter = controller::config_reporter(recorder, controller_metrics.clone());
    let (triggers, mut tasks) = watch::start(client.clone(), caches.clone(), &watch_options, reporter);

    // Leader election: only the controller competes; a webhook-only replica never writes.
    let (leader_rx, lease_task) = if s.webhook_only {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        (rx, None)
    } else {
        let manager = LeaseManagerBuilder::new(client.clone(), &s.lease_name)
            .with_namespace(&s.namespace)
            .with_identity(&s.identity)
            .with_duration(s.lease_seconds.0)
            .with_grace(s.lease_seconds.1)
            .build()
            .await?;
        let (rx, task) = manager.watch().await;
        (rx, Some(task))
    };

    if let Some(url) = &s.webhook_url {
        register(&client, &s, url).await?;
    }

    let mut readiness = Readiness::new().with("caches", {
        let c = caches.clone();
        move || c.ready()
    });

    let controller_task = if s.webhook_only {
        // The watchers stop when nobody listens to their triggers: keep listening.
        let mut triggers = triggers;
        tasks.push(tokio::spawn(async move { while triggers.recv().await.is_some() {} }));
        None
    } else {
        let options = Options { grace_period: s.move_grace, concurrency: s.concurrency, ..Options::default() };
        let ctx = Context::new(
            client.clone(),
            caches.clone(),
            controller_metrics,
            leader_rx.clone(),
            options,
            Some(s.identity.clone()),
        );
        Some(tokio::spawn(controller::run(ctx, triggers, stop.clone().cancelled_owned())))
    };

    let (webhook_task, webhook_addr) = if s.controller_only {
        // The leader writes the self-managed Secret and caBundle; in a split deployment the
        // leader is a controller-only replica, so it runs the certificate loop without serving.
        let task = matches!(s.tls, Tls::SelfManaged).then(|| {
            tokio::spawn(self_managed(&client, &s, leader_rx.clone()).into_loop().run(CertStore::new(), stop.clone()))
        });
        (task, None)
    } else {
        let tls = match &s.tls {
            Tls::External { cert_file, key_file } => TlsSource::External(ExternalFiles::new(cert_file, key_file)),
            Tls::SelfManaged => TlsSource::SelfManaged(Box::new(self_managed(&client, &s, leader_rx.clone()))),
        };
        let mut options = WebhookOptions::new(tls);
        options.addr = s.webhook_addr;
        let mut decider = CacheDecider::new(caches.clone(), Some(client.clone()), &s.namespace, &s.lease_name);
        decider.metrics = Some(wait_metrics);
        let decider = Arc::new(decider);
        let server = WebhookServer::bind(options, decider, webhook_metrics).await?;
        readiness = readiness.with("webhook", server.readiness());
        let addr = server.local_addr();
        let stop = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run(stop).await {
                error!(error = %e, "webhook stopped");
            }
        });
        (Some(task), Some(addr))
    };

    let health = HealthServer::bind(s.metrics_addr, Arc::new(registry), readiness).await?;
    let metrics_addr = health.local_addr();
    let health_task = tokio::spawn(health.run(stop.clone()));

    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        stopped.cancelled().await;
        info!("shutting down");
        if let Some(t) = webhook_task {
            let _ = t.await;
        }
        if let Some(t) = controller_task {
            let _ = t.await;
        }
        let _ = health_task.await;
        for t in tasks {
            t.abort();
        }
        if s.webhook_url.is_some() {
            unregister(&client, &s.webhook_configuration).await;
        }
        // Dropping the last receiver makes the lease manager release the lease, so another
        // replica takes over at once instead of after the lease expires.
        drop(leader_rx);
        if let Some(t) = lease_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        info!("stopped");
    });
    Ok(Running { webhook_addr, metrics_addr, stop, task })
}
