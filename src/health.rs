//! The plain-HTTP side port: `/metrics` (Prometheus/OpenMetrics text), `/healthz` (the process
//! serves) and `/readyz` (every readiness check passes). Shared by the webhook and the
//! controller.

use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// Named readiness checks; `/readyz` is 200 when all pass, else 503 naming those that fail.
#[derive(Default)]
pub struct Readiness {
    checks: Vec<(String, Check)>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.checks.iter().map(|(n, _)| n)).finish()
    }
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Adds a check, e.g. `.with("webhook", server.readiness())`.
    pub fn with(mut self, name: impl Into<String>, check: impl Fn() -> bool + Send + Sync + 'static) -> Readiness {
        self.checks.push((name.into(), Box::new(check)));
        self
    }

    /// The names of the failing checks (empty: ready).
    pub fn failing(&self) -> Vec<&str> {
        self.checks.iter().filter(|(_, c)| !c()).map(|(n, _)| n.as_str()).collect()
    }

    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, c)| c())
    }
}

/// The side server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A bound, not yet running, health/metrics server.
pub struct HealthServer {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<HealthState>,
}

struct HealthState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl HealthServer {
    /// Binds `addr` (`--metrics-port`, default `0.0.0.0:8080`).
    pub async fn bind(addr: SocketAddr, registry: Arc<Registry>, readiness: Readiness) -> Result<Self, HealthError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| HealthError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| HealthError::Bind { addr, source })?;
        Ok(HealthServer { listener, addr, state: Arc::new(HealthState { registry, readiness }) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`, then lets requests in flight finish (at most 5 s).
    pub async fn run(self, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        tracing::info!(addr = %self.addr, "metrics and health listening (HTTP)");
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let state = self.state.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&req, &state)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(120))
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(self.listener);
        connections.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    }
}

/// Binds and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), HealthError> {
    HealthServer::bind(addr, registry, readiness).await?.run(shutdown).await;
    Ok(())
}

fn route(req: &Request<Incoming>, state: &HealthState) -> Response<http_body_util::Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into(), "text/plain; charset=utf-8");
    }
    match req.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), "text/plain; charset=utf-8"),
        "/readyz" => {
            let failing = state.readiness.failing();
            if failing.is_empty() {
                text(StatusCode::OK, "ok\n".into(), "text/plain; charset=utf-8")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", failing.join(", ")),
                    "text/plain; charset=utf-8",
                )
            }
        }
        "/metrics" => {
            let mut out = String::with_capacity(8 * 1024);
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => text(StatusCode::OK, out, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n".into(), "text/plain"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain; charset=utf-8"),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<http_body_util::Full<Bytes>> {
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
