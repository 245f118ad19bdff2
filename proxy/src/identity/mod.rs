//! The workload's SPIFFE identity: an ECDSA P-256 key generated in process, a CSR with exactly
//! one URI SAN and an empty subject, signed by a [`CsrSigner`] (Vault PKI in production), and
//! rotated at about 2/3 of the certificate's lifetime.
//!
//! [`IdentityStore`] is the rustls certificate resolver of every listener and upstream. Rotation
//! swaps the `Arc` it hands out: handshakes already done keep their keys, new handshakes get the
//! new certificate, and no connection is touched.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_audit::{AuditLog, Decision, Record};
use keyward_identity::SpiffeId;
use rand::Rng;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use crate::svid::{self, BundleCell, TrustBundle, Usage};

/// Retry delays after a failed issuance: 1 s doubling to 30 s, each wait drawn uniformly from
/// [d/2, d] (equal jitter, as the broker's backoff) so sidecars that failed together do not
/// retry in lockstep against Vault.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The first delay before doubling.
    pub const BASE: Duration = Duration::from_secs(1);
    /// The longest delay.
    pub const CAP: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// Starts over from [`Backoff::BASE`] (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next wait: d/2 + uniform [0, d/2], where d = BASE·2^attempt capped at CAP.
    pub fn next_delay(&mut self) -> Duration {
        let d = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a certificate could not be obtained. `Sign` comes from the CA (Vault), the others from us
/// or from what the CA returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot generate key or CSR: {0}")]
    Csr(String),
    #[error("CA refused to sign the CSR: {0}")]
    Sign(String),
    #[error("CA returned an unusable certificate: {0}")]
    Invalid(String),
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("audit log: {0}")]
    Audit(String),
}

/// What the CA returned.
#[derive(Clone)]
pub struct SignedCert {
    /// The leaf first, then any intermediates, PEM.
    pub chain_pem: String,
    /// The issuing CA chain (intermediates and root), PEM.
    pub ca_chain_pem: String,
    /// The CA's request id, for the audit log.
    pub request_id: Option<String>,
}

/// Signs a CSR for the requested lifetime.
pub trait CsrSigner: Send + Sync {
    /// Signs `csr_pem`; the error names where it failed.
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<SignedCert, IdentityError>> + Send + 'a>>;

    /// The path named in audit records, e.g. `pki_int/sign/spiffe`.
    fn audit_path(&self) -> String {
        String::new()
    }
}

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
        let start = self.not_before.max(self.issued_at);
        let life = (self.not_after - start).max(0) as f64;
        start + (life * (2.0 / 3.0 + jitter.clamp(-0.05, 0.05))) as i64
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

/// A fresh private key (PKCS#8, zeroized on drop) and the CSR for it.
pub struct KeyAndCsr {
    pub key_der: Zeroizing<Vec<u8>>,
    pub key_pem: Zeroizing<String>,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Generates a P-256 key and a CSR for `id`: exactly one URI SAN, empty subject.
pub fn key_and_csr(id: &SpiffeId) -> Result<KeyAndCsr, IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = id
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| IdentityError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let der = Zeroizing::new(key.serialize_der());
    let pem = Zeroizing::new(key.serialize_pem());
    Ok(KeyAndCsr {
        key_der: der,
        key_pem: pem,
        csr_pem: csr,
    })
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The current SVID, shared by every TLS config. Resolves our certificate for rustls and holds
/// the trust bundle peers are verified against.
#[derive(Debug)]
pub struct IdentityStore {
    trust_domain: String,
    current: RwLock<Option<Arc<Svid>>>,
    bundle: BundleCell,
    generation: watch::Sender<u64>,
}

impl IdentityStore {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            current: RwLock::new(None),
            bundle: BundleCell::default(),
            generation: watch::channel(0).0,
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The current SVID, if one was issued.
    pub fn current(&self) -> Option<Arc<Svid>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// The trust bundle peers are verified against.
    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.get()
    }

    /// Installs a new SVID (and its bundle) for new handshakes.
    pub fn install(&self, svid: Svid) {
        self.bundle.set((*svid.bundle).clone());
        if let Ok(mut g) = self.current.write() {
            *g = Some(Arc::new(svid));
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes every time a new SVID is installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

impl rustls::server::ResolvesServerCert for IdentityStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|s| s.certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for IdentityStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current().map(|s| s.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Issues SVIDs for `id` and keeps them fresh.
pub struct Rotator {
    pub store: Arc<IdentityStore>,
    pub signer: Arc<dyn CsrSigner>,
    pub id: SpiffeId,
    pub ttl: Duration,
    pub bundle_override: Option<TrustBundle>,
    pub audit: Arc<AuditLog>,
    pub metrics: Metrics,
}

impl Rotator {
    /// Issues one SVID, records it in the audit log, and installs it.
    pub async fn issue_once(&self) -> Result<(), IdentityError> {
        let path = self.signer.audit_path();
        match issue(
            self.signer.as_ref(),
            &self.id,
            self.ttl,
            self.bundle_override.as_ref(),
        )
        .await
        {
            Ok((svid, request_id)) => {
                let mut r = Record::new("svid.issue", Decision::Ok).reason(format!(
                    "{} expires {}",
                    svid.id(),
                    svid.expires_at()
                ));
                r.path = (!path.is_empty()).then_some(path);
                r.vault_request_id = request_id;
                self.audit
                    .record(&r)
                    .map_err(|e| IdentityError::Audit(e.to_string()))?;
                info!(spiffe_id = %svid.id(), expires_at = %svid.expires_at(), "Workload certificate issued");
                self.metrics.svid_expiry.set(svid.not_after());
                self.metrics.svid_renewals.inc();
                self.store.install(svid);
                Ok(())
            }
            Err(e) => {
                self.metrics.svid_errors.inc();
                let mut r = Record::new("svid.issue", Decision::Error).reason(e.to_string());
                r.path = (!path.is_empty()).then_some(path);
                if let Err(ae) = self.audit.record(&r) {
                    warn!(error = %ae, "Cannot write audit record");
                }
                Err(e)
            }
        }
    }

    /// Renews at about 2/3 of each certificate's lifetime until cancelled; on failure retries
    /// with [`Backoff`] (1 s doubling to 30 s, jittered) while the current certificate is still
    /// valid.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let wait = match self.store.current() {
                Some(svid) => {
                    let jitter = rand::thread_rng().gen_range(-0.05..0.05);
                    let at = svid.renew_at(jitter);
                    Duration::from_secs(at.saturating_sub(unix_now()).max(0) as u64)
                }
                None => Duration::ZERO,
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            loop {
                match self.issue_once().await {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "Cannot renew workload certificate");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki::TestCa;

    #[test]
    fn backoff_is_jittered_within_half_to_full_and_capped() {
        for _ in 0..200 {
            let mut b = Backoff::new();
            for attempt in 0..10u32 {
                let d = Duration::from_secs(1 << attempt).min(Duration::from_secs(30));
                let wait = b.next_delay();
                assert!(
                    wait >= d / 2 && wait <= d,
                    "attempt {attempt}: {wait:?} outside [{:?}, {d:?}]",
                    d / 2
                );
            }
            b.reset();
            let first = b.next_delay();
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        }
        // Jittered: 50 first waits are not all the same.
        let waits: std::collections::HashSet<_> =
            (0..50).map(|_| Backoff::new().next_delay()).collect();
        assert!(waits.len() > 1, "no jitter: {waits:?}");
    }

    #[test]
    fn csr_has_one_uri_san_and_empty_subject() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id");
        let csr = key_and_csr(&id).expect("csr").csr_pem;
        let params = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("parse");
        assert_eq!(params.params.subject_alt_names.len(), 1);
        assert!(matches!(
            &params.params.subject_alt_names[0],
            rcgen::SanType::URI(u) if u.as_str() == "spiffe://td/ns/a/sa/b"
        ));
        assert_eq!(params.params.distinguished_name.iter().count(), 0);
    }

    #[tokio::test]
    async fn issues_and_installs() {
        let ca = TestCa::new("td");
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
                let r = self.0.sign_csr(&csr, ttl).map(|c| SignedCert {
                    chain_pem: c,
                    ca_chain_pem: self.0.cert_pem.clone(),
                    request_id: None,
                });
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
