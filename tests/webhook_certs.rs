//! The webhook's certificates (issue "The mutating admission webhook", 4): the pure renewal
//! logic over a certificate's life, the self-managed loop against the in-memory API server
//! through real kube calls (leader writes the Secret and the caBundle, followers only read),
//! renewal without a failed handshake, and external files hot-reloaded.

mod common;
mod support;
mod webhook_support;

use affinity_assistant::webhook::certs::generate::{self, Bundle, Needed, Policy};
use affinity_assistant::webhook::certs::{
    CertLoop, CertStore, ExternalFiles, KubeCertApi, TlsSource, cert_info, service_sans, url_host,
};
use affinity_assistant::webhook::{PlanDecider, WebhookMetrics, WebhookOptions, WebhookServer};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::apiserver::{FakeApiServer, Verb};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webhook_support::{Client, NAMESPACE, SERVICE, client_config};

const DAY: Duration = Duration::from_secs(86_400);
const SECRET: &str = "affinity-assistant-webhook-cert";
const CONFIG: &str = "affinity-assistant";

fn sans() -> Vec<String> {
    service_sans(SERVICE, NAMESPACE)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn leaf_info(b: &Bundle) -> (i64, i64) {
    let der = CertificateDer::from_pem_slice(b.tls_cert.as_bytes()).unwrap();
    let i = cert_info(&der).unwrap();
    (i.not_before, i.not_after)
}

#[test]
fn names_for_the_serving_certificate() {
    assert_eq!(
        service_sans("wh", "aa"),
        vec!["wh.aa.svc", "wh.aa.svc.cluster.local", "wh.aa", "wh"].into_iter().map(String::from).collect::<Vec<_>>()
    );
    assert_eq!(url_host("https://192.168.1.20:8443/mutate/pods").as_deref(), Some("192.168.1.20"));
}

#[test]
fn a_bundle_over_its_life_is_renewed_well_before_expiry() {
    let policy = Policy::default();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut sans = sans();
    sans.push("192.168.1.20".into());
    assert!(matches!(generate::assess(None, &sans, t0, &policy), Needed::All(_)));
    let b = generate::renew(None, &Needed::All("new".into()), &sans, t0, &policy).unwrap();
    assert_eq!(leaf_info(&b), (unix(t0) - 3600, unix(t0 + 90 * DAY)), "90 days, backdated an hour");
    let ca = cert_info(&b.ca_certs()[0]).unwrap().not_after;
    assert_eq!(ca, unix(t0 + 3650 * DAY));
    // The serving certificate validates for every name, the IP included, against ca.crt.
    let leaf = CertificateDer::from_pem_slice(b.tls_cert.as_bytes()).unwrap();
    generate::verify(&leaf, &b.ca_certs()[0], &sans, unix(t0)).unwrap();

    assert_eq!(generate::assess(Some(&b), &sans, t0, &policy), Needed::Nothing { until: unix(t0 + 60 * DAY) });
    assert!(matches!(generate::assess(Some(&b), &sans, t0 + 59 * DAY, &policy), Needed::Nothing { .. }));
    // Renewed with 30 of its 90 days left, under the same CA.
    let at = t0 + 60 * DAY;
    let needed = generate::assess(Some(&b), &sans, at, &policy);
    assert!(matches!(needed, Needed::Serving(_)), "{needed:?}");
    assert!(!needed.changes_trust());
    let b2 = generate::renew(Some(&b), &needed, &sans, at, &policy).unwrap();
    assert_eq!(b2.ca_cert, b.ca_cert);
    assert_eq!(b2.ca_key, b.ca_key);
    assert_ne!(b2.tls_cert, b.tls_cert);
    assert_eq!(leaf_info(&b2).1, unix(at + 90 * DAY));
    assert!(matches!(generate::assess(Some(&b2), &sans, at, &policy), Needed::Nothing { .. }));

    // Other names (another namespace, a new --webhook-url host): a new serving certificate.
    assert!(matches!(generate::assess(Some(&b2), &service_sans("other", "ns"), at, &policy), Needed::Serving(_)));
}

#[test]
fn the_ca_is_rotated_in_two_steps_trusting_the_next_one_first() {
    let policy = Policy::default();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let b = generate::renew(None, &Needed::All("new".into()), &sans(), t0, &policy).unwrap();
    let old_ca = b.ca_certs()[0].clone();
    // A year before the CA ends: the next CA joins the trust bundle, nothing else changes.
    let at = t0 + 3300 * DAY;
    // (The serving certificate would have been renewed many times by then; keep it current.)
    let b = generate::renew(Some(&b), &Needed::Serving("keep".into()), &sans(), at, &policy).unwrap();
    let needed = generate::assess(Some(&b), &sans(), at, &policy);
    assert!(matches!(needed, Needed::NextCa(_)), "{needed:?}");
    let b2 = generate::renew(Some(&b), &needed, &sans(), at, &policy).unwrap();
    assert_eq!(b2.ca_certs().len(), 2);
    assert_eq!(b2.ca_certs()[0], old_ca, "the current issuer stays first");
    assert_eq!((&b2.tls_cert, &b2.ca_key), (&b.tls_cert, &b.ca_key), "nothing is signed by the next CA yet");
    assert!(!b2.next_ca_key.is_empty());
    // Not promoted before it has been published for the propagation time.
    assert!(matches!(
        generate::assess(Some(&b2), &sans(), at + Duration::from_secs(60), &policy),
        Needed::Nothing { .. }
    ));
    let later = at + policy.ca_propagation + Duration::from_secs(1);
    let needed = generate::assess(Some(&b2), &sans(), later, &policy);
    assert!(matches!(needed, Needed::PromoteCa(_)), "{needed:?}");
    let b3 = generate::renew(Some(&b2), &needed, &sans(), later, &policy).unwrap();
    assert_eq!(b3.ca_certs().len(), 2, "the old CA stays trusted until it expires");
    assert_eq!(b3.ca_certs()[1], old_ca);
    assert_eq!(b3.ca_key, b2.next_ca_key);
    assert!(b3.next_ca_key.is_empty());
    let leaf = CertificateDer::from_pem_slice(b3.tls_cert.as_bytes()).unwrap();
    generate::verify(&leaf, &b3.ca_certs()[0], &sans(), unix(later)).unwrap();
    assert!(matches!(generate::assess(Some(&b3), &sans(), later, &policy), Needed::Nothing { .. }));
    // Once the old CA has expired, the next write drops it.
    let end = t0 + 3651 * DAY;
    let b4 = generate::renew(Some(&b3), &Needed::Serving("x".into()), &sans(), end, &policy).unwrap();
    assert_eq!(b4.ca_certs().len(), 2, "a serving renewal leaves the trust bundle alone");
    let b5 = generate::renew(Some(&b4), &Needed::NextCa("x".into()), &sans(), end, &policy).unwrap();
    assert_eq!(b5.ca_certs().len(), 2, "expired CA dropped, next one added");
    assert!(!b5.ca_certs().contains(&old_ca));
}

#[test]
fn broken_bundles_start_over() {
    let policy = Policy::default();
    let now = SystemTime::now();
    let b = generate::renew(None, &Needed::All("new".into()), &sans(), now, &policy).unwrap();
    let other = generate::renew(None, &Needed::All("new".into()), &sans(), now, &policy).unwrap();
    for (what, broken) in [
        ("empty", Bundle::default()),
        (
            "garbage CA",
            Bundle { ca_cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(), ..b.clone() },
        ),
        ("CA key of another CA", Bundle { ca_key: other.ca_key.clone(), ..b.clone() }),
        ("CA key unreadable", Bundle { ca_key: "nope".into(), ..b.clone() }),
    ] {
        let needed = generate::assess(Some(&broken), &sans(), now, &policy);
        assert!(matches!(needed, Needed::All(_)), "{what}: {needed:?}");
        let fixed = generate::renew(Some(&broken), &needed, &sans(), now, &policy).unwrap();
        assert!(matches!(generate::assess(Some(&fixed), &sans(), now, &policy), Needed::Nothing { .. }), "{what}");
    }
    for (what, broken) in [
        ("no serving certificate", Bundle { tls_cert: String::new(), ..b.clone() }),
        ("serving key of another certificate", Bundle { tls_key: other.tls_key.clone(), ..b.clone() }),
        (
            "serving certificate of another CA",
            Bundle { tls_cert: other.tls_cert.clone(), tls_key: other.tls_key.clone(), ..b.clone() },
        ),
    ] {
        assert!(matches!(generate::assess(Some(&broken), &sans(), now, &policy), Needed::Serving(_)), "{what}");
    }
    // Unreadable data never panics.
    let data = [("ca.crt".to_string(), vec![0xff, 0x00]), ("tls.key".to_string(), b"\x30\x82".to_vec())].into();
    assert!(matches!(generate::assess(Some(&Bundle::from_data(&data)), &sans(), now, &policy), Needed::All(_)));
}

fn webhook_config() -> serde_json::Value {
    let hook = |name: &str| {
        json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": SERVICE, "namespace": NAMESPACE, "path": "/mutate/pods", "port": 443}}})
    };
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIG}, "webhooks": [hook("pods.affinity-assistant.dev"), hook("other.affinity-assistant.dev")]})
}

fn cert_loop(api: &FakeApiServer, leader: bool, policy: Policy) -> (CertLoop<KubeCertApi>, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(leader);
    let l = CertLoop {
        api: KubeCertApi::new(api.client(), NAMESPACE, SECRET, CONFIG),
        sans: sans(),
        policy,
        check_interval: Duration::from_millis(100),
        leader: rx,
    };
    (l, tx)
}

fn published_bundles(api: &FakeApiServer) -> Vec<Vec<u8>> {
    let config: MutatingWebhookConfiguration = api.get_as("", CONFIG).expect("webhook configuration");
    config
        .webhooks
        .unwrap()
        .iter()
        .map(|w| w.client_config.ca_bundle.clone().map(|b| b.0).unwrap_or_default())
        .collect()
}

fn writes(api: &FakeApiServer) -> usize {
    api.requests().iter().filter(|r| !matches!(r.verb, Verb::Get | Verb::List | Verb::Watch)).count()
}

#[tokio::test]
async fn the_leader_writes_the_secret_and_ca_bundle_and_followers_only_read() {
    let api = FakeApiServer::new();
    api.insert(webhook_config());
    let (leader, _l) = cert_loop(&api, true, Policy::default());
    let (follower, _f) = cert_loop(&api, false, Policy::default());
    let (leader_store, follower_store) = (CertStore::new(), CertStore::new());
    let now = SystemTime::now();

    // Before the leader: a follower finds nothing, writes nothing, serves nothing.
    let step = follower.step(&follower_store, now).await.unwrap();
    assert!(!step.reloaded && !follower_store.is_loaded());
    assert_eq!(writes(&api), 0);

    let step = leader.step(&leader_store, now).await.unwrap();
    assert!(step.renewed.is_some() && step.reloaded);
    let secret: Secret = api.get_as(NAMESPACE, SECRET).expect("Secret created");
    let data = secret.data.unwrap();
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(data.contains_key(key), "{key}");
    }
    assert!(!data.contains_key("ca-next.key"));
    let ca = data["ca.crt"].0.clone();
    assert_eq!(published_bundles(&api), vec![ca.clone(), ca.clone()], "every webhook gets the caBundle");

    // The follower serves the very same chain, and writes nothing.
    api.clear_requests();
    let step = follower.step(&follower_store, now).await.unwrap();
    assert!(step.reloaded && step.renewed.is_none());
    assert_eq!(follower_store.chain(), leader_store.chain());
    assert_eq!(writes(&api), 0);

    // Nothing to do: nobody writes, nothing reloads.
    let step = leader.step(&leader_store, now).await.unwrap();
    assert_eq!((step.renewed, step.reloaded), (None, false));
    assert_eq!(writes(&api), 0);

    // Someone resets the caBundle (a re-applied manifest): the leader puts it back.
    api.insert(webhook_config());
    leader.step(&leader_store, now).await.unwrap();
    assert_eq!(published_bundles(&api), vec![ca.clone(), ca]);
}

#[tokio::test]
async fn a_leader_that_loses_a_race_reads_again() {
    use support::apiserver::Fault;
    let api = FakeApiServer::new();
    api.insert(webhook_config());
    let (mut a, _a) = cert_loop(&api, true, Policy::default());
    let store = CertStore::new();
    let now = SystemTime::now();
    // Another replica created the Secret between our read and our create (409).
    api.faults().fail_next("secrets", Verb::Create, 1, Fault::Conflict);
    let step = a.step(&store, now).await.unwrap();
    assert!(step.conflict && step.renewed.is_none() && !store.is_loaded());
    let step = a.step(&store, now).await.unwrap();
    assert!(!step.conflict && step.renewed.is_some() && store.is_loaded());
    let chain = store.chain();
    // Our replace meets a newer resourceVersion: nothing is loaded from the lost write.
    a.policy.serving_renew_before = 91 * DAY;
    api.faults().fail_next("secrets", Verb::Update, 1, Fault::Conflict);
    let step = a.step(&store, now).await.unwrap();
    assert!(step.conflict && !step.reloaded);
    assert_eq!(store.chain(), chain);
    // An API error is an error of the step (retried by the loop), never a panic.
    api.faults().fail_next("secrets", Verb::Get, 1, Fault::Internal);
    assert!(a.step(&store, now).await.is_err());
    assert_eq!(store.chain(), chain, "the served certificate stays");
}

/// Handshakes (and admits one pod) against `addrs` until stopped, each time trusting only the
/// caBundle published at that moment; counts successes and failures.
fn hammer(
    api: FakeApiServer,
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for addr in &addrs {
                let bundle = published_bundles(&api).remove(0);
                let config = client_config(std::str::from_utf8(&bundle).unwrap());
                let good = match Client::connect(*addr, config).await {
                    Ok(mut c) => c.get("/nope").await.map(|r| r.status == 404).unwrap_or(false),
                    Err(_) => false,
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
            tokio::task::yield_now().await;
        }
    })
}

async fn server_with(store: Arc<CertStore>, shutdown: &CancellationToken) -> SocketAddr {
    let mut options = WebhookOptions::new(TlsSource::Store(store));
    options.addr = "127.0.0.1:0".parse().unwrap();
    let server =
        WebhookServer::bind(options, Arc::new(PlanDecider::default()), WebhookMetrics::default()).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run(shutdown.clone()));
    addr
}

#[tokio::test]
async fn renewal_changes_the_served_certificate_without_a_failed_handshake() {
    let api = FakeApiServer::new();
    api.insert(webhook_config());
    let (mut leader, _l) = cert_loop(&api, true, Policy::default());
    let (follower, _f) = cert_loop(&api, false, Policy::default());
    let (leader_store, follower_store) = (CertStore::new(), CertStore::new());
    leader.step(&leader_store, SystemTime::now()).await.unwrap();
    follower.step(&follower_store, SystemTime::now()).await.unwrap();
    let shutdown = CancellationToken::new();
    let addrs =
        vec![server_with(leader_store.clone(), &shutdown).await, server_with(follower_store.clone(), &shutdown).await];
    let first_leaf = leader_store.chain().unwrap()[0].clone();
    let mut kept = Client::connect(addrs[1], client_config(std::str::from_utf8(&published_bundles(&api)[0]).unwrap()))
        .await
        .unwrap();

    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let task = hammer(api.clone(), addrs.clone(), stop.clone(), ok.clone(), failed.clone());
    let settle = || tokio::time::sleep(Duration::from_millis(150));
    settle().await;

    // The serving certificate reaches its renewal margin (real time: a margin longer than its
    // life), is renewed by the leader and picked up by the follower.
    leader.policy.serving_renew_before = 91 * DAY;
    let step = leader.step(&leader_store, SystemTime::now()).await.unwrap();
    assert!(step.renewed.is_some() && step.reloaded, "{step:?}");
    settle().await;
    assert!(follower.step(&follower_store, SystemTime::now()).await.unwrap().reloaded);
    leader.policy.serving_renew_before = Policy::default().serving_renew_before;
    settle().await;
    let second_leaf = leader_store.chain().unwrap()[0].clone();
    assert_ne!(second_leaf, first_leaf);
    assert_eq!(follower_store.chain().unwrap()[0], second_leaf);

    // Then the CA: the next one is trusted first, then takes over.
    leader.policy.ca_renew_before = 3651 * DAY;
    leader.policy.ca_propagation = Duration::ZERO;
    let step = leader.step(&leader_store, SystemTime::now()).await.unwrap();
    assert!(step.renewed.is_some() && !step.reloaded, "adding the next CA changes no served certificate");
    assert_eq!(Bundle::from_data(&support::world::secret_data(&api, NAMESPACE, SECRET)).ca_certs().len(), 2);
    settle().await;
    let step = leader.step(&leader_store, SystemTime::now()).await.unwrap();
    assert!(step.reloaded, "promoted: {step:?}");
    leader.policy = Policy::default();
    settle().await;
    assert!(follower.step(&follower_store, SystemTime::now()).await.unwrap().reloaded);
    settle().await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();

    let third_leaf = follower_store.chain().unwrap()[0].clone();
    assert_ne!(third_leaf, second_leaf);
    let published = published_bundles(&api).remove(0);
    let roots: Vec<_> = CertificateDer::pem_slice_iter(&published).map(Result::unwrap).collect();
    generate::verify(&third_leaf, &roots[0], &sans(), unix(SystemTime::now())).expect("validates against the caBundle");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no failed handshake ({} good)", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 10);
    // A connection opened before the renewals still works.
    assert_eq!(kept.get("/nope").await.unwrap().status, 404);
    shutdown.cancel();
}

#[tokio::test]
async fn the_running_loop_follows_leadership_and_renews() {
    let api = FakeApiServer::new();
    api.insert(webhook_config());
    let (l, tx) =
        cert_loop(&api, false, Policy { serving_validity: 2 * DAY, serving_renew_before: DAY, ..Policy::default() });
    let store = CertStore::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(l.run(store.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!store.is_loaded(), "a follower alone serves nothing");
    assert!(api.get("secrets", NAMESPACE, SECRET).is_none());
    tx.send(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !store.is_loaded() {
        assert!(std::time::Instant::now() < deadline, "the new leader creates and loads a certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let not_after = store.not_after().unwrap();
    assert!((not_after - unix(SystemTime::now() + 2 * DAY)).abs() < 5);
    shutdown.cancel();
    task.await.unwrap();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("aa-webhook-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn external_files_are_hot_reloaded_and_a_bad_pair_keeps_the_old_one() {
    let dir = temp_dir("external");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (ca1, cert1, key1) = webhook_support::test_certs();
    std::fs::write(&cert, &cert1).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let mut files = ExternalFiles::new(&cert, &key);
    files.poll_interval = Duration::from_millis(50);
    let mut options = WebhookOptions::new(TlsSource::External(files));
    options.addr = "127.0.0.1:0".parse().unwrap();
    let server =
        WebhookServer::bind(options, Arc::new(PlanDecider::default()), WebhookMetrics::default()).await.unwrap();
    let (addr, store, ready) = (server.local_addr(), server.cert_store(), server.readiness());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !store.is_loaded() {
        assert!(std::time::Instant::now() < deadline, "loaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready());
    let mut c = Client::connect(addr, client_config(&ca1)).await.unwrap();
    assert_eq!(c.get("/x").await.unwrap().status, 404);

    // A half-written pair (new certificate, old key): refused, the old one stays.
    let (ca2, cert2, key2) = webhook_support::test_certs();
    std::fs::write(&cert, &cert2).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(Client::connect(addr, client_config(&ca1)).await.is_ok(), "still the first certificate");
    std::fs::write(&key, &key2).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if Client::connect(addr, client_config(&ca2)).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new pair is served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.get("/x").await.unwrap().status, 404, "connections in flight keep going");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn missing_external_files_leave_the_server_not_ready() {
    let dir = temp_dir("missing");
    let mut files = ExternalFiles::new(dir.join("no.crt"), dir.join("no.key"));
    files.poll_interval = Duration::from_millis(50);
    let store = CertStore::new();
    assert!(files.load(&store).await.is_err());
    assert!(!store.is_loaded());
    let _ = std::fs::remove_dir_all(&dir);
}
