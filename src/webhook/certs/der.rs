//! An X.509 certificate's validity and public key, read with x509-parser: `None` on anything
//! it cannot read.

use x509_parser::prelude::{FromDer, X509Certificate};

/// The fields of a certificate the webhook checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo<'a> {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The DER of the SubjectPublicKeyInfo.
    pub spki: &'a [u8],
}

/// Reads validity and public key from a DER certificate.
pub fn cert_info(der: &[u8]) -> Option<CertInfo<'_>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let tbs = cert.tbs_certificate;
    Some(CertInfo {
        not_before: tbs.validity.not_before.timestamp(),
        not_after: tbs.validity.not_after.timestamp(),
        spki: tbs.subject_pki.raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A self-signed certificate valid between the two Unix times.
    fn cert(not_before: u64, not_after: u64) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_before);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after);
        (params.self_signed(&key).unwrap().der().to_vec(), rcgen::PublicKeyData::subject_public_key_info(&key))
    }

    #[test]
    fn validity_and_public_key() {
        // UTCTime up to 2049, GeneralizedTime from 2050 on.
        for (nb, na) in [(0, 2_524_607_999), (951_868_800, 2_524_608_000), (1_800_000_000, 253_402_300_799)] {
            let (der, spki) = cert(nb, na);
            let info = cert_info(&der).unwrap();
            assert_eq!((info.not_before, info.not_after), (nb as i64, na as i64));
            assert_eq!(info.spki, spki.as_slice());
        }
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(cert_info(&[]), None);
        assert_eq!(cert_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(cert_info(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        for n in 0..64u8 {
            let v: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = cert_info(&v);
        }
        let (der, _) = cert(0, 1);
        assert_eq!(cert_info(&der[..der.len() - 1]), None);
    }
}
