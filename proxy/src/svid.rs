//! X.509-SVID verification: the certificate chain against the trust bundle, then the SPIFFE
//! rules on the leaf (exactly one URI SAN holding a valid SPIFFE ID of our trust domain, not a
//! CA, `digitalSignature` without `keyCertSign`/`cRLSign`, an EKU that allows the use).

use std::sync::{Arc, RwLock};

use keyward_identity::{IdError, SpiffeId};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a peer's certificate is not a valid SVID of our trust domain. `code()` is the metric
/// label; `Display` goes into the audit log's `reason` (through `authz::Refusal`, which also
/// holds the refusals of a valid SVID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate cannot be parsed: {0}")]
    Malformed(String),
    #[error("SVID must have exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidId(IdError),
    #[error("SPIFFE ID {id} is not in trust domain {expected}")]
    TrustDomain { id: String, expected: String },
    #[error("leaf certificate is a CA (basicConstraints cA=true)")]
    LeafIsCa,
    #[error("leaf certificate has no keyUsage extension")]
    NoKeyUsage,
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf keyUsage has keyCertSign or cRLSign")]
    SigningUsage,
    #[error("leaf extendedKeyUsage does not allow {0}")]
    ExtendedKeyUsage(&'static str),
    #[error("certificate is not signed by a trusted CA (unknown CA)")]
    UnknownCa,
    #[error("certificate has expired")]
    Expired,
    #[error("certificate is not valid yet")]
    NotYetValid,
    #[error("certificate chain is invalid: {0}")]
    Chain(String),
}

impl SvidError {
    /// A short, bounded label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SvidError::Malformed(_) => "malformed",
            SvidError::UriSanCount(_) => "uri_san_count",
            SvidError::InvalidId(_) => "invalid_spiffe_id",
            SvidError::TrustDomain { .. } => "trust_domain",
            SvidError::LeafIsCa => "leaf_is_ca",
            SvidError::NoKeyUsage | SvidError::NoDigitalSignature | SvidError::SigningUsage => {
                "key_usage"
            }
            SvidError::ExtendedKeyUsage(_) => "extended_key_usage",
            SvidError::UnknownCa => "unknown_ca",
            SvidError::Expired => "expired",
            SvidError::NotYetValid => "not_yet_valid",
            SvidError::Chain(_) => "bad_chain",
        }
    }

    /// The TLS alert-carrying rustls error for this failure.
    pub fn to_rustls(&self) -> rustls::Error {
        use rustls::CertificateError as C;
        rustls::Error::InvalidCertificate(match self {
            SvidError::UnknownCa => C::UnknownIssuer,
            SvidError::Expired => C::Expired,
            SvidError::NotYetValid => C::NotValidYet,
            SvidError::Malformed(_) => C::BadEncoding,
            other => C::Other(rustls::OtherError(Arc::new(other.clone()))),
        })
    }
}

/// Which side of the connection the certificate authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A client certificate (inbound).
    Client,
    /// A server certificate (outbound).
    Server,
}

/// The set of trust anchors peers' chains must lead to.
#[derive(Clone)]
pub struct TrustBundle {
    anchors: Vec<TrustAnchor<'static>>,
    pem: String,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl TrustBundle {
    /// Reads every certificate of a PEM text as a trust anchor.
    pub fn from_pem(pem: &str) -> Result<Self, SvidError> {
        let ders = certs_from_pem(pem)?;
        Self::from_ders(&ders, pem.to_owned())
    }

    fn from_ders(ders: &[CertificateDer<'static>], pem: String) -> Result<Self, SvidError> {
        if ders.is_empty() {
            return Err(SvidError::Malformed(
                "trust bundle holds no certificate".into(),
            ));
        }
        let mut anchors = Vec::with_capacity(ders.len());
        for der in ders {
            let a = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| SvidError::Malformed(format!("trust anchor: {e}")))?;
            anchors.push(a.to_owned());
        }
        Ok(Self { anchors, pem })
    }

    /// The bundle as PEM, as given to apps.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// How many anchors it holds.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether it holds none (never true for a constructed bundle).
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// The current trust bundle, replaced when Vault returns a new CA chain.
#[derive(Debug, Default)]
pub(crate) struct BundleCell(RwLock<Option<Arc<TrustBundle>>>);

impl BundleCell {
    pub fn get(&self) -> Option<Arc<TrustBundle>> {
        self.0.read().ok().and_then(|g| g.clone())
    }
    pub fn set(&self, bundle: TrustBundle) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(Arc::new(bundle));
        }
    }
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SvidError::Malformed(format!("PEM: {e}")))
}

/// Verifies a presented chain (leaf first) against `bundle`, then the SVID rules, and returns
/// the peer's SPIFFE ID.
pub fn verify_chain(
    bundle: &TrustBundle,
    trust_domain: &str,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, SvidError> {
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let eku = match usage {
        Usage::Client => webpki::KeyUsage::client_auth(),
        Usage::Server => webpki::KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        algs.all,
        &bundle.anchors,
        intermediates,
        now,
        eku,
        None,
        None,
    )
    .map_err(map_webpki)?;
    check_leaf(end_entity, trust_domain, usage)
}

fn map_webpki(e: webpki::Error) -> SvidError {
    use webpki::Error as W;
    match e {
        // A CA with a trusted CA's name but another key fails the signature check: to the peer
        // this is the same as an unknown CA.
        W::UnknownIssuer | W::InvalidSignatureForPublicKey => SvidError::UnknownCa,
        W::CertExpired { .. } => SvidError::Expired,
        W::CertNotValidYet { .. } => SvidError::NotYetValid,
        W::CaUsedAsEndEntity => SvidError::LeafIsCa,
        W::RequiredEkuNotFoundContext(_) => SvidError::ExtendedKeyUsage("this use"),
        other => SvidError::Chain(format!("{other:?}")),
    }
}

/// Applies the X.509-SVID rules to a leaf certificate (no chain or time check) and returns its
/// SPIFFE ID.
pub fn check_leaf(
    der: &CertificateDer<'_>,
    trust_domain: &str,
    usage: Usage,
) -> Result<SpiffeId, SvidError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let bad = |e: x509_parser::error::X509Error| SvidError::Malformed(e.to_string());

    let uris: Vec<&str> = match cert.subject_alternative_name().map_err(bad)? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    let id = SpiffeId::parse(uris[0]).map_err(SvidError::InvalidId)?;
    if id.trust_domain() != trust_domain {
        return Err(SvidError::TrustDomain {
            id: id.to_string(),
            expected: trust_domain.to_owned(),
        });
    }
    if let Some(bc) = cert.basic_constraints().map_err(bad)? {
        if bc.value.ca {
            return Err(SvidError::LeafIsCa);
        }
    }
    let ku = cert
        .key_usage()
        .map_err(bad)?
        .ok_or(SvidError::NoKeyUsage)?;
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::SigningUsage);
    }
    if let Some(eku) = cert.extended_key_usage().map_err(bad)? {
        let e = eku.value;
        let ok = e.any
            || match usage {
                Usage::Client => e.client_auth,
                Usage::Server => e.server_auth,
            };
        if !ok {
            return Err(SvidError::ExtendedKeyUsage(match usage {
                Usage::Client => "clientAuth",
                Usage::Server => "serverAuth",
            }));
        }
    }
    Ok(id)
}

/// The `notAfter` of a certificate, as Unix seconds.
pub fn not_after(der: &CertificateDer<'_>) -> Result<i64, SvidError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The `notBefore` of a certificate, as Unix seconds.
pub fn not_before(der: &CertificateDer<'_>) -> Result<i64, SvidError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    Ok(cert.validity().not_before.timestamp())
}

/// Whether a certificate is self-signed (subject equals issuer).
pub fn is_self_issued(der: &CertificateDer<'_>) -> bool {
    x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
        .unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use keyward_testkit::testpki::{Leaf, TestCa};

    fn algs() -> WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }

    fn verify(
        ca: &TestCa,
        chain: &[CertificateDer<'static>],
        usage: Usage,
    ) -> Result<SpiffeId, SvidError> {
        verify_chain(
            &TrustBundle::from_pem(&ca.cert_pem).expect("CA PEM"),
            "td",
            &chain[0],
            &chain[1..],
            UnixTime::now(),
            usage,
            &algs(),
        )
    }

    #[test]
    fn accepts_a_good_svid_both_ways() {
        let ca = TestCa::new("td");
        let leaf = ca.leaf(Leaf::new("spiffe://td/ns/a/sa/b"));
        assert_eq!(
            verify(&ca, &leaf.chain, Usage::Client)
                .expect("valid")
                .as_str(),
            "spiffe://td/ns/a/sa/b"
        );
        assert!(verify(&ca, &leaf.chain, Usage::Server).is_ok());
    }

    #[test]
    fn rejects_each_broken_rule() {
        let ca = TestCa::new("td");
        let other_ca = TestCa::new("td");
        let cases: Vec<(Leaf, SvidError)> = vec![
            (
                Leaf::new("spiffe://td/a").extra_uri("spiffe://td/b"),
                SvidError::UriSanCount(2),
            ),
            (
                Leaf::new("spiffe://td/a").no_uri(),
                SvidError::UriSanCount(0),
            ),
            (Leaf::new("spiffe://td/a").ca(), SvidError::LeafIsCa),
            (
                Leaf::new("spiffe://other/ns/a/sa/b"),
                SvidError::TrustDomain {
                    id: "spiffe://other/ns/a/sa/b".into(),
                    expected: "td".into(),
                },
            ),
            (Leaf::new("spiffe://td/a").expired(), SvidError::Expired),
            (
                Leaf::new("spiffe://td/a").no_key_usage(),
                SvidError::NoKeyUsage,
            ),
            (
                Leaf::new("spiffe://td/a").cert_sign_usage(),
                SvidError::SigningUsage,
            ),
            (
                Leaf::new("spiffe://td/a").server_only_eku(),
                SvidError::ExtendedKeyUsage("this use"),
            ),
            (
                Leaf::new("spiffe://td/a/../b"),
                SvidError::InvalidId(IdError::DotSegment),
            ),
        ];
        for (leaf, want) in cases {
            let what = format!("{leaf:?}");
            let l = ca.leaf(leaf);
            assert_eq!(verify(&ca, &l.chain, Usage::Client), Err(want), "{what}");
        }
        let stranger = other_ca.leaf(Leaf::new("spiffe://td/a"));
        assert_eq!(
            verify(&ca, &stranger.chain, Usage::Client),
            Err(SvidError::UnknownCa)
        );
    }

    #[test]
    fn check_leaf_alone_catches_ca_leaf_and_bad_eku() {
        let ca = TestCa::new("td");
        let l = ca.leaf(Leaf::new("spiffe://td/a").ca());
        assert_eq!(
            check_leaf(&l.chain[0], "td", Usage::Client),
            Err(SvidError::LeafIsCa)
        );
        let l = ca.leaf(Leaf::new("spiffe://td/a").server_only_eku());
        assert_eq!(
            check_leaf(&l.chain[0], "td", Usage::Client),
            Err(SvidError::ExtendedKeyUsage("clientAuth"))
        );
        assert!(check_leaf(&l.chain[0], "td", Usage::Server).is_ok());
        assert!(matches!(
            check_leaf(&CertificateDer::from(vec![1, 2, 3]), "td", Usage::Client),
            Err(SvidError::Malformed(_))
        ));
    }

    #[test]
    fn bundle_from_pem() {
        let ca = TestCa::new("td");
        let b = TrustBundle::from_pem(&ca.cert_pem).expect("bundle");
        assert_eq!(b.len(), 1);
        assert!(TrustBundle::from_pem("").is_err());
        assert!(is_self_issued(&ca.cert_der()));
    }
}
