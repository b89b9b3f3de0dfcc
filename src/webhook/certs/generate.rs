//! Pure certificate logic of the self-managed mode: what the stored bundle needs ([`assess`]),
//! and making what it needs ([`renew`]). No I/O; time is a parameter.
//!
//! The bundle (the Secret's data):
//! - `ca.crt`: the CA certificates clients trust, current issuer first, then a next CA waiting
//!   to take over and previous CAs that have not expired; this is what the `caBundle` of the
//!   webhook configuration holds;
//! - `ca.key`: the current CA's private key (PKCS#8 PEM);
//! - `ca-next.key`: the next CA's key while a CA rotation is under way (else absent);
//! - `tls.crt`, `tls.key`: the serving certificate (SANs: the Service DNS names, plus the host of
//!   `--webhook-url` in local mode) and its key.
//!
//! A CA is rotated in two steps, so no API server ever meets a serving certificate it cannot
//! verify: first the next CA is added to the trust bundle (published before anything is signed
//! with it); once it has been published for [`Policy::ca_propagation`], it becomes the issuer
//! and a new serving certificate is signed with it. The serving certificate itself is renewed
//! under the same CA, which needs no change of trust at all.
//!
//! The CA's subject is derived from its public key, so an issuer can be rebuilt from `ca.key`
//! alone (rcgen cannot read certificates without its `x509-parser` feature).

use super::{CertError, cert_info};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const KEY_CA_CERT: &str = "ca.crt";
pub const KEY_CA_KEY: &str = "ca.key";
pub const KEY_NEXT_CA_KEY: &str = "ca-next.key";
pub const KEY_TLS_CERT: &str = "tls.crt";
pub const KEY_TLS_KEY: &str = "tls.key";

const DAY: Duration = Duration::from_secs(86_400);

/// Lifetimes and renewal margins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a new CA (default 10 years).
    pub ca_validity: Duration,
    /// A CA with less than this left is replaced (default 1 year).
    pub ca_renew_before: Duration,
    /// Lifetime of a new serving certificate (default 90 days).
    pub serving_validity: Duration,
    /// A serving certificate with less than this left is replaced (default 30 days: renewed at
    /// two thirds of its life, "well before expiry").
    pub serving_renew_before: Duration,
    /// `notBefore` is set this far in the past, for clocks that lag (default 1 hour).
    pub backdate: Duration,
    /// How long a next CA is published in the trust bundle before it signs anything (default
    /// 10 minutes: API servers pick up a changed `caBundle` within seconds).
    pub ca_propagation: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ca_validity: DAY * 3650,
            ca_renew_before: DAY * 365,
            serving_validity: DAY * 90,
            serving_renew_before: DAY * 30,
            backdate: Duration::from_secs(3600),
            ca_propagation: Duration::from_secs(600),
        }
    }
}

/// The PEM contents of the Secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    /// Empty unless a CA rotation is under way.
    pub next_ca_key: String,
    pub tls_cert: String,
    pub tls_key: String,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_cert", &self.ca_cert)
            .field("tls_cert", &self.tls_cert)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Reads the Secret's data; missing keys read as empty.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Bundle {
        let get = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        Bundle {
            ca_cert: get(KEY_CA_CERT),
            ca_key: get(KEY_CA_KEY),
            next_ca_key: get(KEY_NEXT_CA_KEY),
            tls_cert: get(KEY_TLS_CERT),
            tls_key: get(KEY_TLS_KEY),
        }
    }

    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (KEY_CA_CERT, &self.ca_cert),
            (KEY_CA_KEY, &self.ca_key),
            (KEY_NEXT_CA_KEY, &self.next_ca_key),
            (KEY_TLS_CERT, &self.tls_cert),
            (KEY_TLS_KEY, &self.tls_key),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
    }

    /// The CA certificates, DER, current first (unreadable PEM sections skipped).
    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.ca_cert.as_bytes()).filter_map(Result::ok).collect()
    }
}

/// What a stored bundle needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    /// Nothing until `until` (Unix seconds), when a margin is reached.
    Nothing { until: i64 },
    /// A new serving certificate from the current CA.
    Serving(String),
    /// The CA nears its end: add a next CA to the trust bundle (it signs nothing yet).
    NextCa(String),
    /// The next CA has been trusted long enough: make it the issuer, with a new serving
    /// certificate.
    PromoteCa(String),
    /// Start over: a new CA and serving certificate at once (no usable CA; still-valid old CAs
    /// stay trusted).
    All(String),
}

impl Needed {
    /// Whether the trust bundle (`caBundle`) changes.
    pub fn changes_trust(&self) -> bool {
        matches!(self, Needed::NextCa(_) | Needed::PromoteCa(_) | Needed::All(_))
    }

    pub fn why(&self) -> Option<&str> {
        match self {
            Needed::Nothing { .. } => None,
            Needed::Serving(w) | Needed::NextCa(w) | Needed::PromoteCa(w) | Needed::All(w) => Some(w),
        }
    }
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The certificate in `certs` whose public key is `key`'s.
fn cert_of<'a>(certs: &'a [CertificateDer<'static>], key: &KeyPair) -> Option<&'a CertificateDer<'static>> {
    let spki = key.subject_public_key_info();
    certs.iter().find(|c| cert_info(c).is_some_and(|i| i.spki == spki.as_slice()))
}

/// What `bundle` (none: no Secret yet) needs at `now` to serve `sans`.
pub fn assess(bundle: Option<&Bundle>, sans: &[String], now: SystemTime, policy: &Policy) -> Needed {
    let Some(bundle) = bundle else { return Needed::All("no certificate Secret yet".into()) };
    let now = unix(now);
    let cas = bundle.ca_certs();
    let Some(ca) = cas.first() else { return Needed::All("the Secret holds no CA certificate".into()) };
    let Some(ca_info) = cert_info(ca) else { return Needed::All("the CA certificate is unreadable".into()) };
    let ca_key = match KeyPair::from_pem(&bundle.ca_key) {
        Ok(k) => k,
        Err(e) => return Needed::All(format!("the CA key is unreadable: {e}")),
    };
    if ca_key.subject_public_key_info() != ca_info.spki {
        return Needed::All("the CA key does not belong to the CA certificate".into());
    }
    if now >= ca_info.not_after {
        return Needed::All("the CA has expired".into());
    }
    let ca_renew_at = ca_info.not_after.saturating_sub(secs(policy.ca_renew_before));
    let mut until = ca_renew_at;
    if now >= ca_renew_at {
        let next =
            KeyPair::from_pem(&bundle.next_ca_key).ok().and_then(|k| cert_of(&cas, &k).and_then(|c| cert_info(c)));
        match next {
            None => return Needed::NextCa(format!("the CA expires at {} (Unix time)", ca_info.not_after)),
            Some(next) => {
                let trusted_since = next.not_before.saturating_add(secs(policy.backdate));
                let promote_at = trusted_since.saturating_add(secs(policy.ca_propagation));
                if now >= promote_at {
                    return Needed::PromoteCa(format!(
                        "the next CA has been trusted since {trusted_since} (Unix time); the current one expires at {}",
                        ca_info.not_after
                    ));
                }
                until = promote_at;
            }
        }
    }
    let serving = match CertificateDer::from_pem_slice(bundle.tls_cert.as_bytes()) {
        Ok(c) => c,
        Err(_) => return Needed::Serving("no readable serving certificate".into()),
    };
    let Some(info) = cert_info(&serving) else {
        return Needed::Serving("the serving certificate is unreadable".into());
    };
    match KeyPair::from_pem(&bundle.tls_key) {
        Ok(k) if k.subject_public_key_info() == info.spki => {}
        _ => return Needed::Serving("the serving key is unreadable or does not fit the certificate".into()),
    }
    let renew_at = info.not_after.saturating_sub(secs(policy.serving_renew_before));
    if now >= renew_at {
        return Needed::Serving(format!("the serving certificate expires at {} (Unix time)", info.not_after));
    }
    if let Err(e) = verify(&serving, ca, sans, now) {
        return Needed::Serving(format!("the serving certificate does not validate for the service names: {e}"));
    }
    Needed::Nothing { until: renew_at.min(until) }
}

/// Checks that `serving` chains to `ca` and is valid at `now` for every name in `sans`, as a TLS
/// client (the API server) would.
pub fn verify(serving: &CertificateDer<'_>, ca: &CertificateDer<'_>, sans: &[String], now: i64) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone().into_owned()).map_err(|e| format!("CA: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
        .build()
        .map_err(|e| e.to_string())?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    for san in sans {
        let name = ServerName::try_from(san.as_str()).map_err(|e| format!("{san}: {e}"))?;
        verifier.verify_server_cert(serving, &[], &name, &[], at).map_err(|e| format!("{san}: {e}"))?;
    }
    Ok(())
}

/// A new bundle for `needed`. Expired CAs leave the trust bundle; `Needed::Nothing` returns
/// the bundle unchanged.
pub fn renew(
    old: Option<&Bundle>,
    needed: &Needed,
    sans: &[String],
    now: SystemTime,
    policy: &Policy,
) -> Result<Bundle, CertError> {
    let now_unix = unix(now);
    let valid = |c: &CertificateDer<'_>| cert_info(c).is_some_and(|i| i.not_after > now_unix);
    match (needed, old) {
        (Needed::Nothing { .. }, Some(old)) => Ok(old.clone()),
        (Needed::Serving(_), Some(old)) => {
            let ca_key = KeyPair::from_pem(&old.ca_key)?;
            let (tls_cert, tls_key) = issue_serving(&ca_key, sans, now, policy)?;
            Ok(Bundle { tls_cert, tls_key, ..old.clone() })
        }
        (Needed::NextCa(_), Some(old)) => {
            let (next_cert, next_key) = generate_ca(now, policy)?;
            let mut trust: String = old.ca_certs().iter().filter(|c| valid(c)).map(|c| pem("CERTIFICATE", c)).collect();
            trust.push_str(&next_cert);
            Ok(Bundle { ca_cert: trust, next_ca_key: next_key, ..old.clone() })
        }
        (Needed::PromoteCa(_), Some(old)) => {
            let next_key = KeyPair::from_pem(&old.next_ca_key)?;
            let cas = old.ca_certs();
            let next =
                cert_of(&cas, &next_key).ok_or_else(|| CertError::Invalid("the next CA is not trusted".into()))?;
            let mut trust = pem("CERTIFICATE", next);
            for c in cas.iter().filter(|c| *c != next && valid(c)) {
                trust.push_str(&pem("CERTIFICATE", c));
            }
            let (tls_cert, tls_key) = issue_serving(&next_key, sans, now, policy)?;
            Ok(Bundle {
                ca_cert: trust,
                ca_key: old.next_ca_key.clone(),
                next_ca_key: String::new(),
                tls_cert,
                tls_key,
            })
        }
        _ => {
            let (ca_cert, ca_key) = generate_ca(now, policy)?;
            let ca_key_pair = KeyPair::from_pem(&ca_key)?;
            let (tls_cert, tls_key) = issue_serving(&ca_key_pair, sans, now, policy)?;
            // Previous CAs still valid stay trusted: replicas serve the old chain until they reload.
            let mut trust = ca_cert;
            for old_ca in old.map(Bundle::ca_certs).unwrap_or_default().iter().filter(|c| valid(c)).take(2) {
                trust.push_str(&pem("CERTIFICATE", old_ca));
            }
            Ok(Bundle { ca_cert: trust, ca_key, next_ca_key: String::new(), tls_cert, tls_key })
        }
    }
}

/// Sets `notBefore` (backdated) and `notAfter` (whole seconds, clamped to year 9999).
fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration, policy: &Policy) {
    const MAX: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let from = now.saturating_sub(policy.backdate.as_secs()).min(MAX);
    let to = now.saturating_add(validity.as_secs()).min(MAX);
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(from);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(to);
}

fn ca_name(key: &KeyPair) -> DistinguishedName {
    let digest = Sha256::digest(key.subject_public_key_info());
    let id: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "affinity-assistant");
    dn.push(DnType::CommonName, format!("affinity-assistant-webhook-ca-{id}"));
    dn
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(key);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// A new CA: `(certificate PEM, key PEM)`.
pub fn generate_ca(now: SystemTime, policy: &Policy) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(&key);
    set_validity(&mut params, now, policy.ca_validity, policy);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new serving certificate for `sans`, signed by the CA whose key is `ca_key`:
/// `(certificate PEM, key PEM)`.
pub fn issue_serving(
    ca_key: &KeyPair,
    sans: &[String],
    now: SystemTime,
    policy: &Policy,
) -> Result<(String, String), CertError> {
    if sans.is_empty() {
        return Err(CertError::Invalid("no names for the serving certificate".into()));
    }
    let issuer = Issuer::new(ca_params(ca_key), ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, sans[0].clone());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, now, policy.serving_validity, policy);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn pem(tag: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}
