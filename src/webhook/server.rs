//! The HTTPS server: `POST /mutate/pods` over TLS (rustls), HTTP/1.1 with keep-alive.
//!
//! Bounded everywhere a client could hold it: TLS handshake time, header and body read time,
//! body size, decision time, connections. Each connection runs in its own task, so a slow
//! client only ever holds itself. On shutdown it stops accepting, lets requests in flight
//! finish (up to a grace period), and returns.
//!
//! Plain hyper, like the health server: a framework's serve loop (axum's) handshakes TLS in
//! its accept loop, has no header timeout, connection cap or bounded drain, and its body
//! limits answer 413 where the API server needs an AdmissionReview; one route needs no router.

use super::Decider;
use super::certs::{self, CertStore, TlsSource};
use super::metrics::WebhookMetrics;
use super::review::{self, Admission, ReviewOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The path the webhook configuration points at.
pub const MUTATE_PATH: &str = "/mutate/pods";

/// The webhook could not start (it never fails a request).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("certificate: {0}")]
    Cert(#[from] certs::CertError),
}

/// The longest a review's decision may take before the pod is answered unpinned, with a
/// warning and the `decide-timeout` metric: the decider's own budget
/// ([`crate::decider::DEFAULT_BUDGET`]) plus room for its last plan, and well inside the webhook
/// configuration's `timeoutSeconds` ([`crate::manifests::WEBHOOK_TIMEOUT_SECONDS`]).
pub const DECIDE_DEADLINE: Duration = Duration::from_millis(3500);

const _: () = assert!(crate::decider::DEFAULT_BUDGET.as_millis() + 500 <= DECIDE_DEADLINE.as_millis());
const _: () = assert!(DECIDE_DEADLINE.as_millis() + 1000 <= crate::manifests::WEBHOOK_TIMEOUT_SECONDS as u128 * 1000);

/// How the server runs. [`WebhookOptions::new`] gives the defaults.
#[derive(Debug)]
pub struct WebhookOptions {
    /// `--webhook-port` (default `0.0.0.0:8443`).
    pub addr: SocketAddr,
    pub tls: TlsSource,
    /// Largest request body read (default 3 MiB, the API server's own request limit); a larger
    /// request is answered `allowed` with a warning.
    pub max_body_bytes: usize,
    /// Longest a client may take to send a request's body (default 10 s; the API server's
    /// longest webhook timeout is 30 s).
    pub request_timeout: Duration,
    /// Longest a kept-alive connection may sit idle, and a request's headers may take, before
    /// the connection is closed (default 120 s: longer than the API server's own 90 s idle
    /// timeout, so it is always the client that closes an idle connection, never a race
    /// between its reuse and our close).
    pub idle_timeout: Duration,
    /// Longest a TLS handshake may take (default 10 s).
    pub handshake_timeout: Duration,
    /// Longest a decision may take before the pod is let through unpinned (default 5 s).
    pub decide_timeout: Duration,
    /// How long requests in flight may take to finish on shutdown (default 20 s).
    pub shutdown_grace: Duration,
    /// Connections served at once; more are closed on accept (default 4096).
    pub max_connections: usize,
}

impl WebhookOptions {
    pub fn new(tls: TlsSource) -> WebhookOptions {
        WebhookOptions {
            addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tls,
            max_body_bytes: 3 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            decide_timeout: DECIDE_DEADLINE,
            shutdown_grace: Duration::from_secs(20),
            max_connections: 4096,
        }
    }
}

struct State<D> {
    decider: Arc<D>,
    metrics: WebhookMetrics,
    max_body_bytes: usize,
    request_timeout: Duration,
    idle_timeout: Duration,
    review: ReviewOptions,
}

/// A bound, not yet running, webhook server.
pub struct WebhookServer<D: Decider> {
    listener: TcpListener,
    addr: SocketAddr,
    store: Arc<CertStore>,
    tls: Option<TlsSource>,
    state: Arc<State<D>>,
    handshake_timeout: Duration,
    shutdown_grace: Duration,
    max_connections: usize,
}

impl<D: Decider> WebhookServer<D> {
    /// Binds the port. Certificates are loaded by [`WebhookServer::run`] (self-managed and
    /// external modes) or are already in the store (`TlsSource::Store`).
    pub async fn bind(
        options: WebhookOptions,
        decider: Arc<D>,
        metrics: WebhookMetrics,
    ) -> Result<WebhookServer<D>, WebhookError> {
        let listener = TcpListener::bind(options.addr)
            .await
            .map_err(|source| WebhookError::Bind { addr: options.addr, source })?;
        let addr = listener.local_addr().map_err(|source| WebhookError::Bind { addr: options.addr, source })?;
        let (store, tls) = match options.tls {
            TlsSource::Store(store) => (store, None),
            other => (CertStore::with_metrics(metrics.clone()), Some(other)),
        };
        Ok(WebhookServer {
            listener,
            addr,
            store,
            tls,
            state: Arc::new(State {
                decider,
                metrics,
                max_body_bytes: options.max_body_bytes,
                request_timeout: options.request_timeout,
                idle_timeout: options.idle_timeout,
                review: ReviewOptions { decide_timeout: Some(options.decide_timeout) },
            }),
            handshake_timeout: options.handshake_timeout,
            shutdown_grace: options.shutdown_grace,
            max_connections: options.max_connections.max(1),
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate the server presents.
    pub fn cert_store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// Readiness for `/readyz`: a certificate is loaded and the decider's caches have synced.
    pub fn readiness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let store = self.store.clone();
        let decider = self.state.decider.clone();
        move || store.is_loaded() && decider.ready()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets requests in flight
    /// finish (up to the grace period) and returns `Ok`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebhookError> {
        let cert_shutdown = CancellationToken::new();
        let cert_task = match self.tls {
            Some(TlsSource::SelfManaged(s)) => {
                Some(tokio::spawn(s.into_loop().run(self.store.clone(), cert_shutdown.clone())))
            }
            Some(TlsSource::External(files)) => {
                Some(tokio::spawn(files.run(self.store.clone(), cert_shutdown.clone())))
            }
            Some(TlsSource::Store(_)) | None => None,
        };
        let acceptor = TlsAcceptor::from(certs::server_config(self.store.clone()));
        let connections = TaskTracker::new();
        tracing::info!(addr = %self.addr, "webhook listening (HTTPS)");
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if connections.len() >= self.max_connections {
                tracing::warn!(%peer, limit = self.max_connections, "too many connections; closing a new one");
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            connections.spawn(connection(
                tcp,
                acceptor.clone(),
                self.state.clone(),
                self.handshake_timeout,
                shutdown.clone(),
            ));
        }
        drop(self.listener);
        connections.close();
        tracing::info!(in_flight = connections.len(), "webhook shutting down: finishing requests in flight");
        if tokio::time::timeout(self.shutdown_grace, connections.wait()).await.is_err() {
            tracing::warn!(left = connections.len(), "shutdown grace period over; dropping connections");
        }
        cert_shutdown.cancel();
        if let Some(t) = cert_task {
            let _ = t.await;
        }
        tracing::info!("webhook stopped");
        Ok(())
    }
}

/// Binds and serves until `shutdown` (see [`WebhookServer`]; use it directly to learn the
/// bound address or readiness before serving).
pub async fn serve<D: Decider>(
    options: WebhookOptions,
    decider: Arc<D>,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    WebhookServer::bind(options, decider, metrics).await?.run(shutdown).await
}

async fn connection<D: Decider>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<State<D>>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
    };
    let idle_timeout = state.idle_timeout;
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn route<D: Decider>(req: Request<Incoming>, state: &State<D>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, MUTATE_PATH) => admit(req, state).await,
        (_, MUTATE_PATH) => plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn admit<D: Decider>(req: Request<Incoming>, state: &State<D>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let _in_flight = state.metrics.in_flight();
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let admission = match read_body(req.into_body(), declared, state.max_body_bytes, state.request_timeout).await {
        Body::Complete(body) => review::handle_review(&body, &*state.decider, state.review).await,
        Body::TooLarge(prefix) => review::too_large(&prefix, state.max_body_bytes),
        Body::Failed(prefix, why) => {
            tracing::debug!(why, "admission request body unreadable");
            review::unreadable(&prefix, why)
        }
    };
    state.metrics.observe(admission.outcome, start.elapsed());
    json(admission)
}

fn json(admission: Admission) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(admission.body)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

enum Body {
    Complete(Vec<u8>),
    /// Over the bound: what was read of the start (for the uid).
    TooLarge(Vec<u8>),
    Failed(Vec<u8>, &'static str),
}

/// Bytes of the start of an oversized body kept to find the request uid.
const PREFIX: usize = 4096;

/// Reads the body within `limit` bytes and `timeout`. An oversized body is drained (up to four
/// times the limit, within the timeout) so the client reads the answer rather than a reset.
async fn read_body(mut body: Incoming, declared: Option<u64>, limit: usize, timeout: Duration) -> Body {
    let deadline = tokio::time::Instant::now() + timeout;
    let too_large = declared.is_some_and(|n| n > limit as u64);
    let capacity = declared.map_or(16 * 1024, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buf: Vec<u8> = Vec::with_capacity(if too_large { PREFIX } else { capacity });
    let mut over = too_large;
    let mut seen: usize = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return if over { Body::TooLarge(buf) } else { Body::Failed(buf, "timed out") },
            Ok(None) => break,
            Ok(Some(Err(_))) => return if over { Body::TooLarge(buf) } else { Body::Failed(buf, "connection error") },
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if !over && seen > limit {
            over = true;
            buf.truncate(PREFIX);
        }
        if over {
            let room = PREFIX.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..room.min(data.len())]);
            if seen > limit.saturating_mul(4) {
                break;
            }
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if over { Body::TooLarge(buf) } else { Body::Complete(buf) }
}
