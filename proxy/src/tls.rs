//! rustls configuration: SPIFFE verifiers for both sides and the per-connection configs.
//!
//! Each connection gets its own small config (a few `Arc` clones) so its verifier can report
//! the authorizer's decision (`authz::decide`: the peer's SPIFFE ID, or the typed reason of a
//! refusal) back to the connection task, which then writes the audit record. A policy refusal
//! inside the verifier makes rustls send an `access_denied` alert before the connection is
//! closed. Session resumption is disabled on
//! both sides: a resumed session would skip the verifier, and with it the allow list.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::authz::{self, Allowed, Listener, Refusal};
use crate::identity::IdentityStore;
use crate::policy::Policy;
use crate::svid::{self, SvidError, Usage};

/// The crypto provider (ring) every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// TLS versions offered: 1.3 only, or 1.3 and 1.2.
pub fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if allow_tls12 {
        &BOTH
    } else {
        &TLS13
    }
}

/// What the verifier of one connection decided: the allowed peer, or why it was refused.
pub(crate) type Verdict = Arc<Mutex<Option<Result<Allowed, Refusal>>>>;

/// What a connection's verifier asks the authorizer with: the listener and the policy watch
/// (the generation in force at the time of the handshake).
#[derive(Clone)]
pub(crate) struct Authorize {
    pub listener: Arc<Listener>,
    pub policy: watch::Receiver<Arc<Policy>>,
}

fn record(verdict: &Verdict, r: Result<Allowed, Refusal>) {
    if let Ok(mut g) = verdict.lock() {
        *g = Some(r);
    }
}

/// Takes what a verifier recorded.
pub(crate) fn take_verdict(verdict: &Verdict) -> Option<Result<Allowed, Refusal>> {
    verdict.lock().ok().and_then(|mut g| g.take())
}

fn verify_peer(
    store: &IdentityStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
    authorize: &Authorize,
    verdict: &Verdict,
) -> Result<(), rustls::Error> {
    let verified = match store.bundle() {
        Some(bundle) => svid::verify_chain(
            &bundle,
            store.trust_domain(),
            end_entity,
            intermediates,
            now,
            usage,
            &provider().signature_verification_algorithms,
        ),
        None => Err(SvidError::Chain("no trust bundle yet".into())),
    };
    // A peer we could identify but must refuse is still reported with its ID.
    let decision = authz::decide(&authorize.listener, verified, &authorize.policy.borrow());
    let out = decision.as_ref().map(|_| ()).map_err(Refusal::to_rustls);
    record(verdict, decision);
    out
}

/// Verifies client SVIDs and applies the listener's allow list.
pub(crate) struct ClientVerifier {
    pub store: Arc<IdentityStore>,
    pub authorize: Authorize,
    pub verdict: Verdict,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientVerifier")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            &self.store,
            end_entity,
            intermediates,
            now,
            Usage::Client,
            &self.authorize,
            &self.verdict,
        )
        .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(rustls::crypto::verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(rustls::crypto::verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The handshake signature checks both verifiers share: the provider's algorithms, which are
/// the ones the proxy offers.
fn verify_signature(
    verify: fn(
        &[u8],
        &CertificateDer<'_>,
        &DigitallySignedStruct,
        &rustls::crypto::WebPkiSupportedAlgorithms,
    ) -> Result<HandshakeSignatureValid, rustls::Error>,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// Verifies server SVIDs and refuses any ID not in `expect`. The server name is not checked:
/// SVIDs carry no DNS names; the SPIFFE ID is the name.
pub(crate) struct ServerVerifier {
    pub store: Arc<IdentityStore>,
    pub authorize: Authorize,
    pub verdict: Verdict,
}

impl std::fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerVerifier")
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_peer(
            &self.store,
            end_entity,
            intermediates,
            now,
            Usage::Server,
            &self.authorize,
            &self.verdict,
        )
        .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(rustls::crypto::verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(rustls::crypto::verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server config for one inbound connection.
pub(crate) fn server_config(
    store: &Arc<IdentityStore>,
    allow_tls12: bool,
    authorize: Authorize,
    verdict: Verdict,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = ClientVerifier {
        store: store.clone(),
        authorize,
        verdict,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(allow_tls12))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(store.clone());
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client config for one outbound connection.
pub(crate) fn client_config(
    store: &Arc<IdentityStore>,
    allow_tls12: bool,
    authorize: Authorize,
    verdict: Verdict,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let verifier = ServerVerifier {
        store: store.clone(),
        authorize,
        verdict,
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(allow_tls12))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(store.clone());
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}
