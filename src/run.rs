//! `affinity-assistant run`: wires the caches, the controller, the webhook and the
//! metrics/health server together, and shuts them down cleanly on SIGTERM.

use crate::{CertMode, LogFormat, RunArgs};
use affinity_assistant::cluster::Caches;
use affinity_assistant::cluster::watch::{self, WatchOptions};
use affinity_assistant::controller::{self, Context, ControllerMetrics, Options};
use affinity_assistant::decider::CacheDecider;
use affinity_assistant::health::{self, Readiness};
use affinity_assistant::webhook::certs::{CertStore, ExternalFiles, SelfManaged, TlsSource};
use affinity_assistant::webhook::metrics::WebhookMetrics;
use affinity_assistant::webhook::server::{WebhookOptions, WebhookServer};
use anyhow::{Context as _, Result};
use kube_lease_manager::LeaseManagerBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn run(args: RunArgs) -> Result<()> {
    init_logging(args.log_format);
    // kube uses rustls with ring; make it the process default before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client =
        kube::Client::try_default().await.context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
    let identity = args.pod_name.clone().unwrap_or_else(|| format!("affinity-assistant-{}", std::process::id()));
    info!(namespace = %args.namespace, identity = %identity, version = env!("CARGO_PKG_VERSION"), "starting");

    let stop = CancellationToken::new();
    let caches = Arc::new(Caches::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let webhook_metrics = WebhookMetrics::register(&mut registry);
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter { controller: "affinity-assistant".into(), instance: Some(identity.clone()) },
    );

    let watch_options = WatchOptions {
        namespaces: args.watch_namespaces.clone(),
        own_namespace: args.namespace.clone(),
        config_name: args.config_name.clone(),
        lease_name: args.lease_name.clone(),
    };
    let reporter = controller::config_reporter(recorder, controller_metrics.clone());
    let (triggers, mut tasks) = watch::start(client.clone(), caches.clone(), &watch_options, reporter);
    tasks.push(watch::watch_tekton_flags(client.clone(), caches.clone(), None));

    // Leader election: only the controller competes; a webhook-only replica never writes.
    let (leader_rx, lease_task) = if args.webhook_only {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        (rx, None)
    } else {
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.namespace)
            .with_identity(&identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .context("setting up leader election")?;
        let (rx, task) = manager.watch().await;
        (rx, Some(task))
    };

    let mut readiness = Readiness::new().with("caches", {
        let c = caches.clone();
        move || c.ready()
    });

    let controller_task = if args.webhook_only {
        // The watchers stop when nobody listens to their triggers: keep listening.
        let mut triggers = triggers;
        tasks.push(tokio::spawn(async move { while triggers.recv().await.is_some() {} }));
        None
    } else {
        let options = Options {
            grace_period: Duration::from_secs(args.move_grace_seconds),
            concurrency: args.concurrency,
            ..Options::default()
        };
        let ctx = Context::new(
            client.clone(),
            caches.clone(),
            controller_metrics,
            leader_rx.clone(),
            options,
            Some(identity),
        );
        let stopped = stop.clone().cancelled_owned();
        Some(tokio::spawn(controller::run(ctx, triggers, stopped)))
    };

    let webhook_task = if args.controller_only {
        // The leader writes the self-managed Secret and caBundle; in a split deployment the
        // leader is a controller-only replica, so it runs the certificate loop without serving.
        if args.cert_mode == CertMode::SelfManaged {
            let mut sm = SelfManaged::new(client.clone(), &args.namespace, leader_rx.clone());
            sm.secret_name = args.tls_secret.clone();
            sm.service_name = args.service_name.clone();
            sm.webhook_config_name = args.webhook_configuration.clone();
            let stop = stop.clone();
            Some(tokio::spawn(sm.into_loop().run(CertStore::new(), stop)))
        } else {
            None
        }
    } else {
        let tls = match args.cert_mode {
            CertMode::External => TlsSource::External(ExternalFiles::new(
                args.tls_cert_file.clone().context("--tls-cert-file is required with --cert-mode external")?,
                args.tls_key_file.clone().context("--tls-key-file is required with --cert-mode external")?,
            )),
            CertMode::SelfManaged => {
                let mut sm = SelfManaged::new(client.clone(), &args.namespace, leader_rx.clone());
                sm.secret_name = args.tls_secret.clone();
                sm.service_name = args.service_name.clone();
                sm.webhook_config_name = args.webhook_configuration.clone();
                TlsSource::SelfManaged(Box::new(sm))
            }
        };
        let mut options = WebhookOptions::new(tls);
        options.addr = SocketAddr::from(([0, 0, 0, 0], args.webhook_port));
        let decider = Arc::new(CacheDecider {
            caches: caches.clone(),
            client: Some(client.clone()),
            own_namespace: args.namespace.clone(),
            lease_name: args.lease_name.clone(),
            lookup_timeout: Duration::from_millis(500),
        });
        let server = WebhookServer::bind(options, decider, webhook_metrics).await.context("starting the webhook")?;
        readiness = readiness.with("webhook", server.readiness());
        info!(addr = %server.local_addr(), "webhook listening");
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = server.run(stop).await {
                error!(error = %e, "webhook stopped");
            }
        }))
    };

    let health_addr = SocketAddr::from(([0, 0, 0, 0], args.metrics_port));
    let health_task = {
        let registry = Arc::new(registry);
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = health::serve(health_addr, registry, readiness, stop).await {
                error!(error = %e, "metrics and health server stopped");
            }
        })
    };

    terminated().await;
    info!("shutting down");
    stop.cancel();
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
    // Dropping the last receiver makes the lease manager release the lease, so another
    // replica takes over at once instead of after the lease expires.
    drop(leader_rx);
    if let Some(t) = lease_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    info!("stopped");
    Ok(())
}
