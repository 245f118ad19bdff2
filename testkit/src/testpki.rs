//! Certificates minted in process with rcgen, for tests: a CA that signs good SVIDs and
//! deliberately broken ones, and a `CsrSigner` that stands in for Vault PKI.
//!
//! Used by the proxy's unit and integration tests and the workspace's integration tests. Test
//! keys are plain `String`/`Vec<u8>`: nothing here is a secret. The proxy's own unit tests see
//! a second copy of `keyward_proxy` (the one this crate depends on), so the proxy's types are
//! only in [`TestCa::bundle`] and the `CsrSigner` impl; everything else is rcgen and rustls.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use keyward_proxy::identity::{CsrSigner, IdentityError, SignedCert};
use keyward_proxy::svid::TrustBundle;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;

/// A self-signed ECDSA P-256 CA.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as PEM.
    pub cert_pem: String,
}

/// A minted leaf: chain (leaf, then nothing: the CA is the anchor) and key.
pub struct Minted {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's chain as PEM.
    pub chain_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
}

/// What to put in a leaf; defaults make a valid SVID.
#[derive(Debug, Clone)]
pub struct Leaf {
    uris: Vec<String>,
    dns: Vec<String>,
    ca: bool,
    expired: bool,
    key_usage: Vec<KeyUsagePurpose>,
    eku: Vec<ExtendedKeyUsagePurpose>,
    lifetime: Duration,
}

impl Leaf {
    /// A valid SVID for `id`, valid for an hour.
    pub fn new(id: &str) -> Self {
        Self {
            uris: vec![id.to_owned()],
            dns: Vec::new(),
            ca: false,
            expired: false,
            key_usage: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
                KeyUsagePurpose::KeyAgreement,
            ],
            eku: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            lifetime: Duration::from_secs(3600),
        }
    }
    /// Adds a second URI SAN.
    pub fn extra_uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }
    /// Adds a DNS name SAN (a server certificate: `Leaf::new(..).no_uri().dns("vault.test")`).
    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }
    /// Removes the URI SAN.
    pub fn no_uri(mut self) -> Self {
        self.uris.clear();
        self
    }
    /// Marks the leaf `cA=true`.
    pub fn ca(mut self) -> Self {
        self.ca = true;
        self
    }
    /// Validity ended an hour ago.
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }
    /// No keyUsage extension.
    pub fn no_key_usage(mut self) -> Self {
        self.key_usage.clear();
        self
    }
    /// keyUsage with keyCertSign.
    pub fn cert_sign_usage(mut self) -> Self {
        self.key_usage.push(KeyUsagePurpose::KeyCertSign);
        self
    }
    /// EKU serverAuth only.
    pub fn server_only_eku(mut self) -> Self {
        self.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self
    }
    /// Validity of `d` from now.
    pub fn lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }
}

impl TestCa {
    /// A new CA named after `name`.
    pub fn new(name: &str) -> Self {
        // Generating a P-256 key and self-signing cannot fail with these fixed parameters.
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, format!("keyward test CA {name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_pem = cert.pem();
        Self {
            cert,
            key,
            cert_pem,
        }
    }

    /// The CA as a trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.cert_pem).expect("CA PEM")
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Mints a leaf.
    pub fn leaf(&self, leaf: Leaf) -> Minted {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = leaf
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().expect("IA5 URI")))
            .chain(
                leaf.dns
                    .iter()
                    .map(|d| SanType::DnsName(d.as_str().try_into().expect("IA5 DNS name"))),
            )
            .collect();
        params.is_ca = if leaf.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = leaf.key_usage.clone();
        params.extended_key_usages = leaf.eku.clone();
        let now = time::OffsetDateTime::now_utc();
        if leaf.expired {
            params.not_before = now - time::Duration::hours(2);
            params.not_after = now - time::Duration::hours(1);
        } else {
            params.not_before = now - time::Duration::minutes(1);
            params.not_after = now + leaf.lifetime;
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Minted {
            chain: vec![cert.der().clone()],
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// Signs a CSR the way the Vault PKI role of RECIPES.md does: the CSR's SANs, an empty
    /// subject, digitalSignature, serverAuth+clientAuth, the requested lifetime.
    /// Fails with the reason as text (the `CsrSigner` impl makes it an `IdentityError::Sign`).
    pub fn sign_csr(&self, csr_pem: &str, ttl: Duration) -> Result<String, String> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| format!("CSR: {e}"))?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::seconds(1);
        csr.params.not_after = now + ttl;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(|e| e.to_string())?;
        Ok(cert.pem())
    }
}

impl CsrSigner for TestCa {
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<SignedCert, IdentityError>> + Send + 'a>> {
        Box::pin(async move {
            let cert = self.sign_csr(csr_pem, ttl).map_err(IdentityError::Sign)?;
            Ok(SignedCert {
                chain_pem: cert,
                ca_chain_pem: self.cert_pem.clone(),
                request_id: None,
            })
        })
    }
}
