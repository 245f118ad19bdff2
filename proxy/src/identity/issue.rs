//! Issuance: a new key and CSR, signed by the CA, checked and turned into an [`Svid`] ready for
//! rustls.

use std::sync::Arc;
use std::time::Duration;

use keyward_identity::SpiffeId;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use zeroize::Zeroizing;

use super::csr::{key_and_csr, KeyAndCsr};
use super::rotation::Lifetime;
use super::signer::CsrSigner;
use super::{unix_now, IdentityError};
use crate::svid::{self, TrustBundle, Usage};

/// A workload certificate with its key, ready for rustls.
pub struct Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key_pem: Zeroizing<String>,
    certified: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
    issued_at: i64,
    bundle: Arc<TrustBundle>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Svid {
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }
    /// The chain (leaf first), DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
    /// The chain (leaf first), PEM.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }
    /// The private key, PKCS#8 PEM. Only for `GET /v1/identity`.
    pub fn key_pem(&self) -> &Zeroizing<String> {
        &self.key_pem
    }
    pub fn bundle(&self) -> &Arc<TrustBundle> {
        &self.bundle
    }
    /// `notAfter`, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
    /// `notBefore`, Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }
    /// `notAfter` as RFC 3339.
    pub fn expires_at(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }

    /// When to start renewing: about 2/3 of the lifetime counted from issuance, ±5% jitter.
    pub fn renew_at(&self, jitter: f64) -> i64 {
        self.lifetime().renew_at(jitter)
    }

    /// The lifetime rotation counts from: `notBefore` or issuance, whichever is later, to
    /// `notAfter`.
    pub(crate) fn lifetime(&self) -> Lifetime {
        Lifetime {
            start: self.not_before.max(self.issued_at),
            not_after: self.not_after,
        }
    }

    /// The certificate and key rustls presents.
    pub(super) fn certified(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// An SVID from a certificate and key the caller already has (benchmarks, tests).
    pub fn from_parts(
        chain_pem: &str,
        key_pem: Zeroizing<String>,
        bundle: TrustBundle,
        trust_domain: &str,
    ) -> Result<Self, IdentityError> {
        let chain =
            svid::certs_from_pem(chain_pem).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .ok()
            .ok_or_else(|| IdentityError::Invalid("no private key in PEM".into()))?;
        Self::build(
            chain,
            chain_pem.to_owned(),
            key_pem,
            key_der,
            Arc::new(bundle),
            trust_domain,
            None,
        )
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        chain_pem: String,
        key_pem: Zeroizing<String>,
        key_der: PrivateKeyDer<'static>,
        bundle: Arc<TrustBundle>,
        trust_domain: &str,
        expected: Option<&SpiffeId>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Invalid("no certificate".into()))?;
        let id = svid::check_leaf(leaf, trust_domain, Usage::Server)
            .and_then(|id| svid::check_leaf(leaf, trust_domain, Usage::Client).map(|_| id))
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if let Some(want) = expected {
            if &id != want {
                return Err(IdentityError::Invalid(format!(
                    "certificate is for {id}, expected {want}"
                )));
            }
        }
        svid::verify_chain(
            &bundle,
            trust_domain,
            leaf,
            &chain[1..],
            UnixTime::now(),
            Usage::Server,
            &crate::tls::provider().signature_verification_algorithms,
        )
        .map_err(|e| IdentityError::Invalid(format!("own certificate does not verify: {e}")))?;
        let key = crate::tls::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| IdentityError::Invalid(format!("private key: {e}")))?;
        let certified = CertifiedKey::new(chain.clone(), key);
        certified
            .keys_match()
            .map_err(|e| IdentityError::Invalid(format!("key does not match certificate: {e}")))?;
        let not_before =
            svid::not_before(leaf).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let not_after = svid::not_after(leaf).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        Ok(Self {
            id,
            chain,
            chain_pem,
            key_pem,
            certified: Arc::new(certified),
            not_before,
            not_after,
            issued_at: unix_now(),
            bundle,
        })
    }
}

/// Obtains a new SVID for `id` from `signer`. The trust bundle is `bundle_override` when set,
/// else the self-signed roots of the returned CA chain (all of it when it has no root).
pub async fn issue(
    signer: &dyn CsrSigner,
    id: &SpiffeId,
    ttl: Duration,
    bundle_override: Option<&TrustBundle>,
) -> Result<(Svid, Option<String>), IdentityError> {
    let KeyAndCsr {
        key_der,
        key_pem,
        csr_pem: csr,
    } = key_and_csr(id)?;
    let signed = signer.sign(&csr, ttl).await?;
    let mut chain = svid::certs_from_pem(&signed.chain_pem)
        .map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let ca_chain = svid::certs_from_pem(&signed.ca_chain_pem)
        .map_err(|e| IdentityError::Invalid(format!("CA chain: {e}")))?;
    let mut chain_pem = signed.chain_pem.trim_end().to_owned();
    chain_pem.push('\n');
    // Send intermediates (not roots) the CA returned separately, so peers can build the path.
    for (der, pem) in ca_chain.iter().zip(pem_blocks(&signed.ca_chain_pem)) {
        if !svid::is_self_issued(der) && !chain.contains(der) {
            chain.push(der.clone());
            chain_pem.push_str(&pem);
        }
    }
    let bundle = match bundle_override {
        Some(b) => b.clone(),
        None => {
            let roots: Vec<String> = ca_chain
                .iter()
                .zip(pem_blocks(&signed.ca_chain_pem))
                .filter(|(der, _)| svid::is_self_issued(der))
                .map(|(_, pem)| pem)
                .collect();
            let pem = if roots.is_empty() {
                signed.ca_chain_pem.clone()
            } else {
                roots.concat()
            };
            TrustBundle::from_pem(&pem).map_err(|e| IdentityError::Bundle(e.to_string()))?
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let svid = Svid::build(
        chain,
        chain_pem,
        key_pem,
        key,
        Arc::new(bundle),
        id.trust_domain(),
        Some(id),
    )?;
    Ok((svid, signed.request_id))
}

/// Splits a PEM text into its blocks, each ending in a newline.
fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;
    use crate::identity::{IdentityStore, SignedCert};
    use keyward_testkit::testpki::TestCa;

    /// The test CA as this crate's `CsrSigner` (the testkit implements the trait of the
    /// `keyward_proxy` it depends on, another copy than the one under test here).
    struct Ca(TestCa);

    impl CsrSigner for Ca {
        fn sign<'a>(
            &'a self,
            csr: &'a str,
            ttl: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<SignedCert, IdentityError>> + Send + 'a>> {
            let r = signed(&self.0, csr, ttl);
            Box::pin(async move { r })
        }
    }

    fn signed(ca: &TestCa, csr: &str, ttl: Duration) -> Result<SignedCert, IdentityError> {
        ca.sign_csr(csr, ttl)
            .map_err(IdentityError::Sign)
            .map(|c| SignedCert {
                chain_pem: c,
                ca_chain_pem: ca.cert_pem.clone(),
                request_id: None,
            })
    }

    #[tokio::test]
    async fn issues_and_installs() {
        let ca = Ca(TestCa::new("td"));
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id");
        let (svid, _) = issue(&ca, &id, Duration::from_secs(30), None)
            .await
            .expect("issue");
        assert_eq!(svid.id(), &id);
        assert_eq!(svid.bundle().len(), 1);
        let life = svid.not_after() - svid.not_before();
        assert!((29..=32).contains(&life), "{life}");
        let at = svid.renew_at(0.0) - svid.not_before().max(svid.issued_at);
        assert!((18..=22).contains(&at), "{at}");
        assert!(!format!("{svid:?}").contains("PRIVATE"));
        let store = IdentityStore::new("td");
        let gen = store.subscribe();
        store.install(svid);
        assert!(gen.has_changed().expect("open"));
        assert!(store.current().is_some());
    }

    #[tokio::test]
    async fn refuses_a_certificate_for_another_id() {
        struct Liar(TestCa);
        impl CsrSigner for Liar {
            fn sign<'a>(
                &'a self,
                _csr: &'a str,
                ttl: Duration,
            ) -> Pin<Box<dyn Future<Output = Result<SignedCert, IdentityError>> + Send + 'a>>
            {
                let other = SpiffeId::parse("spiffe://td/ns/x/sa/y").expect("id");
                let csr = key_and_csr(&other).expect("csr").csr_pem;
                let r = signed(&self.0, &csr, ttl);
                Box::pin(async move { r })
            }
        }
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id");
        let err = issue(&Liar(TestCa::new("td")), &id, Duration::from_secs(60), None)
            .await
            .expect_err("wrong id");
        assert!(
            err.to_string().contains("expected spiffe://td/ns/a/sa/b"),
            "{err}"
        );
    }
}
