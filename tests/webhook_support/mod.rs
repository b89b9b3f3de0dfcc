//! Shared by the webhook tests and the load generator: a minimal HTTP/1.1 client over TLS that
//! trusts only the CA it is given, certificates, AdmissionReview builders, a running server.
#![allow(dead_code)]

use affinity_assistant::webhook::certs::{self, CertStore, Policy, TlsSource, generate};
use affinity_assistant::webhook::{Decider, WebhookMetrics, WebhookOptions, WebhookServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "affinity-assistant-webhook";
pub const NAMESPACE: &str = "affinity-assistant";

/// The name the client asks for (SNI) and verifies.
pub fn server_name() -> String {
    format!("{SERVICE}.{NAMESPACE}.svc")
}

/// A CA and a serving certificate for the Service names: `(ca PEM, cert PEM, key PEM)`.
pub fn test_certs() -> (String, String, String) {
    let now = SystemTime::now();
    let policy = Policy::default();
    let (ca, ca_key) = generate::generate_ca(now, &policy).expect("CA");
    let ca_key = rcgen::KeyPair::from_pem(&ca_key).expect("CA key");
    let sans = certs::service_sans(SERVICE, NAMESPACE);
    let (cert, key) = generate::issue_serving(&ca_key, &sans, now, &policy).expect("serving certificate");
    (ca, cert, key)
}

pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP/1.1 keep-alive client on one TLS connection.
pub struct Client {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name()).map_err(io::Error::other)?;
        let stream = TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Client { stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// The leaf certificate the server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.stream.get_ref().1.peer_certificates().expect("peer certificates")[0].to_vec()
    }

    pub async fn post(&mut self, path: &str, body: &[u8]) -> io::Result<HttpResponse> {
        self.send(path, body).await?;
        self.read_response().await
    }

    pub async fn send(&mut self, path: &str, body: &[u8]) -> io::Result<()> {
        let head = format!(
            "POST {path}?timeout=10s HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n",
            server_name(),
            body.len()
        );
        let mut req = Vec::with_capacity(head.len() + body.len());
        req.extend_from_slice(head.as_bytes());
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        self.stream.flush().await
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn get(&mut self, path: &str) -> io::Result<HttpResponse> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server_name());
        self.write_raw(head.as_bytes()).await?;
        self.read_response().await
    }

    pub async fn read_response(&mut self) -> io::Result<HttpResponse> {
        read_response(&mut self.stream, &mut self.buf).await
    }
}

/// Reads one response with a Content-Length body from `stream`, keeping extra bytes in `buf`.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<HttpResponse> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| io::Error::other("no content-length"))?;
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Ok(HttpResponse { status, headers, body })
}

/// An AdmissionReview as the API server sends it for `operation` on `pod` (the pod's
/// `metadata.namespace` removed, as on a real CREATE; the request carries the namespace).
pub fn review(uid: &str, pod: &Value, operation: &str) -> Value {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("ci").to_string();
    let mut object = pod.clone();
    if let Some(m) = object["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    let (object, old) = match operation {
        "DELETE" => (Value::Null, object),
        "UPDATE" => (object.clone(), object),
        _ => (object, Value::Null),
    };
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].clone(),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller",
                "uid": "3f6a9d1c-8e2b-4b7a-a5c4-1d9e0f2b6a77",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:tekton-pipelines", "system:authenticated"]
            },
            "object": object,
            "oldObject": old,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A review serialised in the API server's field order (`kind`, `apiVersion`, `request` with
/// `uid` first), which the uid scan of unreadable bodies relies on.
pub fn to_bytes(review: &Value) -> Vec<u8> {
    fn ordered(v: &Value, first: &[&str], out: &mut Vec<u8>, nested: &dyn Fn(&str, &Value, &mut Vec<u8>)) {
        let Some(map) = v.as_object() else {
            out.extend_from_slice(&serde_json::to_vec(v).unwrap());
            return;
        };
        out.push(b'{');
        let keys = first
            .iter()
            .map(|k| k.to_string())
            .filter(|k| map.contains_key(k))
            .chain(map.keys().filter(|k| !first.contains(&k.as_str())).cloned());
        for (i, k) in keys.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&serde_json::to_vec(&k).unwrap());
            out.push(b':');
            nested(&k, &map[&k], out);
        }
        out.push(b'}');
    }
    let mut out = Vec::with_capacity(8 * 1024);
    ordered(review, &["kind", "apiVersion", "request"], &mut out, &|k, v, out| {
        if k == "request" {
            ordered(v, &["uid"], out, &|_, v, out| out.extend_from_slice(&serde_json::to_vec(v).unwrap()));
        } else {
            out.extend_from_slice(&serde_json::to_vec(v).unwrap());
        }
    });
    out
}

/// A webhook server on loopback serving `cert`/`key`.
pub struct Running {
    pub addr: SocketAddr,
    pub ca: String,
    pub store: Arc<CertStore>,
    pub metrics: WebhookMetrics,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), affinity_assistant::webhook::WebhookError>>,
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Running {
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, self.client_config()).await.expect("TLS connection")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("server task").expect("server result");
    }
}

/// Starts a server with a fresh certificate; `tune` adjusts the options.
pub async fn start<D: Decider>(decider: D, tune: impl FnOnce(&mut WebhookOptions)) -> Running {
    let (ca, cert, key) = test_certs();
    let store = CertStore::new();
    store.load_pem(cert.as_bytes(), key.as_bytes()).expect("load certificate");
    let mut options = WebhookOptions::new(TlsSource::Store(store.clone()));
    options.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    tune(&mut options);
    let metrics = WebhookMetrics::default();
    let server = WebhookServer::bind(options, Arc::new(decider), metrics.clone()).await.expect("bind");
    let addr = server.local_addr();
    let ready = Box::new(server.readiness());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Running { addr, ca, store, metrics, shutdown, task, ready }
}
