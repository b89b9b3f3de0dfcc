//! `affinity-assistant run`: flags to [`Settings`], logging, signals. The wiring itself is
//! [`affinity_assistant::runtime`].

use crate::{CertMode, LogFormat, RunArgs};
use affinity_assistant::runtime::{self, Settings, Tls};
use anyhow::{Context as _, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

fn settings(args: RunArgs) -> Result<Settings> {
    let identity = args.pod_name.clone().unwrap_or_else(|| format!("affinity-assistant-{}", std::process::id()));
    let mut s = Settings::new(identity);
    s.namespace = args.namespace;
    s.watch_namespaces = args.watch_namespaces;
    s.controller_only = args.controller_only;
    s.webhook_only = args.webhook_only;
    s.webhook_addr = SocketAddr::from(([0, 0, 0, 0], args.webhook_port));
    s.metrics_addr = SocketAddr::from(([0, 0, 0, 0], args.metrics_port));
    s.tls = match args.cert_mode {
        CertMode::SelfManaged => Tls::SelfManaged,
        CertMode::External => Tls::External {
            cert_file: args.tls_cert_file.context("--tls-cert-file is required with --cert-mode external")?,
            key_file: args.tls_key_file.context("--tls-key-file is required with --cert-mode external")?,
        },
    };
    s.tls_secret = args.tls_secret;
    s.service_name = args.service_name;
    // Local mode registers its own configuration: never take over an installed add-on's.
    let local = args.webhook_url.is_some();
    s.webhook_configuration = args.webhook_configuration.unwrap_or_else(|| {
        if local {
            format!("{}-local", affinity_assistant::manifests::NAME)
        } else {
            affinity_assistant::manifests::NAME.into()
        }
    });
    s.webhook_url = args.webhook_url;
    s.lease_name = args.lease_name;
    s.config_name = args.config_name;
    s.move_grace = Duration::from_secs(args.move_grace_seconds);
    s.concurrency = args.concurrency;
    s.tekton_namespace = Some(args.tekton_namespace).filter(|ns| !ns.is_empty());
    Ok(s)
}

pub async fn run(args: RunArgs) -> Result<()> {
    init_logging(args.log_format);
    // kube uses rustls with ring; make it the process default before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = settings(args)?;
    let client =
        kube::Client::try_default().await.context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
    let stop = CancellationToken::new();
    let running = runtime::start(client, settings, stop.clone()).await?;
    terminated().await;
    stop.cancel();
    running.wait().await;
    Ok(())
}
