//! Load generator for the webhook over HTTPS on loopback (run by `hack/webhook-load.sh`;
//! reports, does not gate).
//!
//! Starts two servers, each in a child process of this binary so its resident memory is its
//! own: the real webhook (`WebhookServer` over a `PlanDecider` with a ~50-run namespace, every
//! admission pinned) and a floor: the same TLS and HTTP stack whose handler only parses the
//! AdmissionReview and serialises an answer. Against each, from this process, with keep-alive
//! connections and the realistic task pod of `tests/data/admission-review-pod.json`:
//! - throughput: closed loop, `CONNS` connections, for `SECS` seconds;
//! - latency at a fixed rate (default 2,000/s): open loop, each request measured from the
//!   moment it was due (no coordinated omission), p50/p99/p99.9;
//! - resident memory of the server after 100,000 admissions (topped up to that count).
//!
//! Knobs (environment): `WEBHOOK_LOAD_SECS` (5), `WEBHOOK_LOAD_CONNS` (16), `WEBHOOK_LOAD_RATE`
//! (2000), `WEBHOOK_LOAD_TOTAL` (100000), `WEBHOOK_LOAD_SERVER_THREADS` (2),
//! `WEBHOOK_LOAD_CLIENT_THREADS` (2).

#[path = "../tests/webhook_support/mod.rs"]
mod webhook_support;

use affinity_assistant::config::Config;
use affinity_assistant::core::{MissingClaims, NamespaceState, Plan, plan};
use affinity_assistant::engine::tekton::PipelineRun;
use affinity_assistant::model::{ClaimInfo, ExistingPlaceholder, NodeInfo, OwnerRun, Run};
use affinity_assistant::webhook::certs::{self, CertStore, TlsSource};
use affinity_assistant::webhook::{PlanDecider, WebhookMetrics, WebhookOptions, WebhookServer};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use webhook_support::Client;

const REVIEW: &[u8] = include_bytes!("../tests/data/admission-review-pod.json");
const NAMESPACE: &str = "ci";
const BUILD_1_UID: &str = "0d8f1a2b-0000-4000-8000-000000000001";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runtime(threads: u64) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1) as usize)
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// Servers (child processes)
// ---------------------------------------------------------------------------------------------

fn rwo(name: &str) -> (String, ClaimInfo) {
    let modes = vec!["ReadWriteOnce".to_string()];
    let info = ClaimInfo {
        name: name.into(),
        spec_access_modes: modes.clone(),
        status_access_modes: modes,
        bound: true,
        node_pinned: false,
        volume_node_affinity: None,
        deleted: false,
    };
    (name.to_string(), info)
}

fn tekton_run(name: &str, uid: &str, claims: [&str; 2]) -> Run {
    PipelineRun::from_value(&json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid, "creationTimestamp": "2024-05-01T09:30:00Z"},
        "spec": {"pipelineRef": {"name": "build"}, "workspaces": [
            {"name": "source", "persistentVolumeClaim": {"claimName": claims[0]}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": claims[1]}},
            {"name": "git-credentials", "secret": {"secretName": "git-credentials"}}]},
        "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            "pipelineSpec": {"tasks": [
                {"name": "fetch", "workspaces": [{"name": "output", "workspace": "source"}]},
                {"name": "unit-tests", "workspaces": [{"name": "source"}, {"name": "cache"}]},
                {"name": "lint", "workspaces": [{"name": "source"}]}]}}
    }))
    .expect("run parses")
    .to_run()
    .expect("a run")
}

/// ~50 active runs in `ci`, `build-1` (the review's pod's run) among them, placeholders
/// created and bound to a worker node.
fn namespace_plan() -> Plan {
    let mut runs = vec![tekton_run("build-1", BUILD_1_UID, ["source-pvc", "cache-pvc"])];
    let mut claims: BTreeMap<String, ClaimInfo> = [rwo("source-pvc"), rwo("cache-pvc")].into();
    for i in 0..49 {
        let (src, cache) = (format!("app-{i}-src"), format!("app-{i}-cache"));
        claims.extend([rwo(&src), rwo(&cache)]);
        runs.push(tekton_run(&format!("app-{i}"), &format!("9a7c0000-0000-4000-8000-{i:012}"), [&src, &cache]));
    }
    let config = Config::default();
    let state = |placeholders| NamespaceState {
        namespace: NAMESPACE,
        config: &config,
        runs: &runs,
        claims: &claims,
        placeholders,
        pinned_pods: &[],
        task_pods: &[],
        missing_claims: MissingClaims::Wait,
    };
    let first = plan(&state(&[]));
    let node = NodeInfo {
        name: "ci-pool-a-7f9c2".into(),
        labels: [
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/hostname", "ci-pool-a-7f9c2"),
            ("node.kubernetes.io/instance-type", "n2-standard-8"),
            ("topology.kubernetes.io/zone", "europe-west1-b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        taints: vec![k8s_openapi::api::core::v1::Taint {
            key: "ci.example.com/dedicated".into(),
            value: Some("tekton".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }],
    };
    let existing: Vec<ExistingPlaceholder> = first
        .placeholders
        .iter()
        .map(|p| ExistingPlaceholder {
            name: p.name.clone(),
            claims: p.claims.clone(),
            owners: p.owners.iter().map(|o| OwnerRun { name: o.name.clone(), uid: o.uid.clone() }).collect(),
            mode: Some(p.mode),
            run_modes: p.run_modes.clone(),
            node_selector: p.node_selector.clone(),
            node: Some(std::sync::Arc::new(node.clone())),
            pod_exists: true,
            refused: None,
        })
        .collect();
    plan(&state(&existing))
}

/// Child: serves `kind` (`real` or `floor`), prints `READY <port>` and the CA PEM (one line,
/// `\n` escaped), then serves until its standard input closes.
fn serve_child(kind: &str) {
    let (ca, cert, key) = webhook_support::test_certs();
    let store = CertStore::new();
    store.load_pem(cert.as_bytes(), key.as_bytes()).expect("certificate");
    let rt = runtime(env("WEBHOOK_LOAD_SERVER_THREADS", 2));
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (port, task) = if kind == "floor" {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            (port, tokio::spawn(floor(listener, store)))
        } else {
            let decider = PlanDecider {
                plans: [(NAMESPACE.to_string(), Arc::new(namespace_plan()))].into(),
                controller_alive: true,
            };
            let mut options = WebhookOptions::new(TlsSource::Store(store));
            options.addr = addr;
            let server = WebhookServer::bind(options, Arc::new(decider), WebhookMetrics::default()).await.unwrap();
            let port = server.local_addr().port();
            let s = shutdown.clone();
            (port, tokio::spawn(async move { server.run(s).await.unwrap() }))
        };
        println!("READY {port} {}", ca.replace('\n', "\\n"));
        std::io::stdout().flush().unwrap();
        // Until the parent closes our standard input.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .unwrap();
        shutdown.cancel();
        task.abort();
    });
}

/// The floor: TLS (the same rustls config), HTTP/1.1 keep-alive (the same hyper), and a
/// handler that only parses the AdmissionReview and serialises an answer with its uid.
async fn floor(listener: tokio::net::TcpListener, store: Arc<CertStore>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(certs::server_config(store));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let uid = review.pointer("/request/uid").cloned().unwrap_or(json!(""));
                let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": uid, "allowed": true}});
                let mut r = hyper::Response::new(Full::new(Bytes::from(serde_json::to_vec(&out).unwrap())));
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Load (this process)
// ---------------------------------------------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
    ca: String,
}

impl Server {
    fn start(kind: &str) -> Server {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["serve", kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("READY line");
        let mut parts = line.trim_end().splitn(3, ' ');
        assert_eq!(parts.next(), Some("READY"), "{line}");
        let port: u16 = parts.next().and_then(|p| p.parse().ok()).expect("port");
        let ca = parts.next().expect("CA").replace("\\n", "\n");
        Server { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), ca }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The review with a distinct uid per request (the API server's shape and field order).
fn body(i: u64) -> Vec<u8> {
    let text = std::str::from_utf8(REVIEW).unwrap();
    text.replacen("705ab4f5-6393-11e8-b7cc-42010a800002", &format!("705ab4f5-6393-11e8-b7cc-{i:012}"), 1).into_bytes()
}

async fn connect(server: &Server) -> Client {
    Client::connect(server.addr, webhook_support::client_config(&server.ca)).await.expect("connect")
}

/// Closed loop: `conns` connections, each sending the next request when the previous answer
/// arrives, for `secs` seconds (or until `count` requests in all). Returns requests done.
async fn closed_loop(server: &Server, conns: u64, secs: f64, count: u64, check: bool) -> (u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..64).map(body).collect());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut c = connect(server).await;
        let (done, bodies) = (done.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = done.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() >= deadline {
                    done.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                let r = c.post("/mutate/pods", &bodies[(n % 64) as usize]).await.expect("answer");
                assert_eq!(r.status, 200);
                if check && n < 64 {
                    let v = r.json();
                    assert_eq!(v["response"]["allowed"], true);
                    assert!(v["response"]["patch"].is_string(), "not pinned: {v}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (done.load(Ordering::Relaxed), start.elapsed())
}

/// Open loop at `rate`/s over `conns` connections for `secs`: latency from when each request
/// was due. A pacer thread (std sleeps: finer than tokio's millisecond timer) hands each due
/// request to a connection; a request that waits for a busy connection counts its wait.
/// Returns sorted latencies (µs).
async fn open_loop(server: &Server, conns: u64, rate: f64, secs: f64) -> Vec<u64> {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..64).map(body).collect());
    let total = (rate * secs) as u64;
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut client = connect(server).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u64)>();
        senders.push(tx);
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some((due, i)) = rx.recv().await {
                let r = client.post("/mutate/pods", &bodies[(i % 64) as usize]).await.expect("answer");
                assert_eq!(r.status, 200);
                lat.push(due.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let pacer = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now() + Duration::from_millis(20);
        for i in 0..total {
            let due = start + interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = senders[(i % conns) as usize].send((due, i));
        }
    });
    tokio::task::spawn_blocking(move || pacer.join().unwrap()).await.unwrap();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Figures {
    throughput: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    admissions: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn measure(kind: &str, rt: &tokio::runtime::Runtime) -> Figures {
    let server = Server::start(kind);
    let secs = env("WEBHOOK_LOAD_SECS", 5) as f64;
    let conns = env("WEBHOOK_LOAD_CONNS", 16);
    let rate = env("WEBHOOK_LOAD_RATE", 2000) as f64;
    let total = env("WEBHOOK_LOAD_TOTAL", 100_000);
    let figures = rt.block_on(async {
        let mut admissions = 0;
        let (n, _) = closed_loop(&server, conns, 1.0, 2_000, kind == "real").await; // warm-up
        admissions += n;
        let (n, took) = closed_loop(&server, conns, secs, u64::MAX, false).await;
        admissions += n;
        let throughput = n as f64 / took.as_secs_f64();
        let lat = open_loop(&server, conns, rate, secs).await;
        admissions += lat.len() as u64;
        if admissions < total {
            let (n, _) = closed_loop(&server, conns, 600.0, total - admissions, false).await;
            admissions += n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss_kib, hwm_kib) = server.memory();
        Figures {
            throughput,
            p50: pct(&lat, 0.50),
            p99: pct(&lat, 0.99),
            p999: pct(&lat, 0.999),
            admissions,
            rss_kib,
            hwm_kib,
        }
    });
    server.stop();
    figures
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("serve") {
        serve_child(args.get(1).map(String::as_str).unwrap_or("real"));
        return;
    }
    let rt = runtime(env("WEBHOOK_LOAD_CLIENT_THREADS", 2));
    let rate = env("WEBHOOK_LOAD_RATE", 2000);
    println!(
        "webhook load: HTTPS on loopback, keep-alive, {} connections, review {} bytes, {} s per phase, {} cores",
        env("WEBHOOK_LOAD_CONNS", 16),
        REVIEW.len(),
        env("WEBHOOK_LOAD_SECS", 5),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let real = measure("real", &rt);
    let floor = measure("floor", &rt);
    println!();
    println!(
        "{:<34} {:>14} {:>12} {:>12} {:>12} {:>11} {:>10}",
        "server",
        "admissions/s",
        format!("p50@{rate}/s"),
        format!("p99@{rate}/s"),
        "p99.9",
        "admissions",
        "RSS"
    );
    for (name, f) in [("affinity-assistant webhook", &real), ("floor (TLS + parse + reserialise)", &floor)] {
        println!(
            "{:<34} {:>14.0} {:>9.3} ms {:>9.3} ms {:>9.3} ms {:>11} {:>6.1} MiB",
            name,
            f.throughput,
            f.p50,
            f.p99,
            f.p999,
            f.admissions,
            f.rss_kib as f64 / 1024.0
        );
    }
    println!();
    let ratio = real.p99 / floor.p99;
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "throughput            {:>9.0}/s    aim 10,000/s    {}",
        real.throughput,
        verdict(real.throughput >= 10_000.0)
    );
    println!("p50 at {rate}/s        {:>9.3} ms   aim < 0.5 ms    {}", real.p50, verdict(real.p50 < 0.5));
    println!("p99 at {rate}/s        {:>9.3} ms   aim < 2 ms      {}", real.p99, verdict(real.p99 < 2.0));
    println!("p99 / floor p99       {:>9.2}x     aim < 1.5x      {}", ratio, verdict(ratio < 1.5));
    println!(
        "RSS after {} admissions {:>6.1} MiB  aim < 40 MiB    {}  (peak {:.1} MiB)",
        real.admissions,
        real.rss_kib as f64 / 1024.0,
        verdict((real.rss_kib as f64 / 1024.0) < 40.0),
        real.hwm_kib as f64 / 1024.0
    );
}
