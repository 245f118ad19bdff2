//! Certificates for the proxy benchmark, minted in process with rcgen: a CA and SVIDs (one URI
//! SAN, digitalSignature, serverAuth + clientAuth) that keyward's proxy and Envoy both accept.
//! The benchmark's own copy: the proxy's test PKI is test support, not part of its API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A self-signed ECDSA P-256 CA.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as PEM.
    pub cert_pem: String,
}

/// A minted leaf.
pub struct Minted {
    /// The leaf as PEM (the CA is the anchor: no intermediates).
    pub chain_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// Time since the Unix epoch (rcgen's validity fields are offsets from it here).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl TestCa {
    /// A new CA named after `name`, valid from an hour ago for 30 days.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("keyward bench CA {name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch() - Duration::from_secs(3600);
        params.not_after = epoch + since_epoch() + Duration::from_secs(30 * 86400);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self {
            cert,
            key,
            cert_pem,
        })
    }

    /// An SVID for `id`, valid from a minute ago for `lifetime`.
    pub fn leaf(&self, id: &str, lifetime: Duration) -> Result<Minted, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch() - Duration::from_secs(60);
        params.not_after = epoch + since_epoch() + lifetime;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Minted {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
