//! rustls configuration: SPIFFE verifiers for both sides and the per-connection configs.
//!
//! Each connection gets its own small config (a few `Arc` clones) so its verifier can report
//! the peer's SPIFFE ID and the exact reason of a refusal back to the connection task, which
//! then writes the audit record. A policy refusal inside the verifier makes rustls send an
//! `access_denied` alert before the connection is closed. Session resumption is disabled on
//! both sides: a resumed session would skip the verifier, and with it the allow list.

use std::sync::{Arc, Mutex, OnceLock};

use keyward_identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::IdentityStore;
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

/// What the verifier of one connection decided: the peer's ID, or why it was refused.
pub type Verdict = Arc<Mutex<Option<Result<SpiffeId, SvidError>>>>;

/// Decides whether a verified peer ID may connect.
pub type Authorize = Arc<dyn Fn(&SpiffeId) -> Result<(), SvidError> + Send + Sync>;

fn record(verdict: &Verdict, r: Result<SpiffeId, SvidError>) {
    if let Ok(mut g) = verdict.lock() {
        *g = Some(r);
    }
}

/// Takes what a verifier recorded.
pub fn take_verdict(verdict: &Verdict) -> Option<Result<SpiffeId, SvidError>> {
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
    let result = match store.bundle() {
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
    let result = result.and_then(|id| match authorize(&id) {
        Ok(()) => Ok(id),
        Err(e) => Err(e),
    });
    let out = result.as_ref().map(|_| ()).map_err(SvidError::to_rustls);
    record(verdict, result);
    out
}

/// Verifies client SVIDs and applies the listener's allow list.
pub struct ClientVerifier {
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
pub struct ServerVerifier {
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
pub fn server_config(
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
pub fn client_config(
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

/// Our side of a handshake, for reasons that name the peer's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Inbound: we are the TLS server, the peer the client.
    Server,
    /// Outbound: we are the TLS client.
    Client,
}

/// The TLS versions this side offers or accepts, as said in reasons.
fn versions_said(allow_tls12: bool) -> &'static str {
    if allow_tls12 {
        "TLS 1.3 and TLS 1.2 (proxy.allow_tls12: true)"
    } else {
        "TLS 1.3 only (proxy.allow_tls12: false)"
    }
}

/// The reason of a handshake that failed on the protocol version: the versions on both sides
/// and the setting to change on either.
fn version_mismatch(side: Side, allow_tls12: bool, peer_offered: &str) -> String {
    match side {
        Side::Server => {
            let fix = if allow_tls12 {
                "let the client offer TLS 1.3 or TLS 1.2".to_owned()
            } else {
                "let the client offer TLS 1.3 (Envoy: \
                 tls_params: {tls_maximum_protocol_version: TLSv1_3} in the cluster's \
                 UpstreamTlsContext; Envoy's default maximum as a client is TLS 1.2), or set \
                 proxy.allow_tls12: true on keyward to accept TLS 1.2"
                    .to_owned()
            };
            format!(
                "TLS version mismatch: the client offered {peer_offered}, this listener accepts \
                 {}: {fix}",
                versions_said(allow_tls12)
            )
        }
        Side::Client => {
            let fix = if allow_tls12 {
                "let the server accept TLS 1.3 or TLS 1.2".to_owned()
            } else {
                "let the server accept TLS 1.3 (Envoy: \
                 tls_params: {tls_maximum_protocol_version: TLSv1_3} in the listener's \
                 DownstreamTlsContext), or set proxy.allow_tls12: true on keyward to also offer \
                 TLS 1.2"
                    .to_owned()
            };
            format!(
                "TLS version mismatch: the server accepts none of the versions offered, {}: \
                 {fix}",
                versions_said(allow_tls12)
            )
        }
    }
}

/// Classifies a failed handshake for metrics and the audit log: (label, reason). `side` and
/// `allow_tls12` let a version mismatch name the versions and the settings to change.
pub fn classify(err: &std::io::Error, side: Side, allow_tls12: bool) -> (&'static str, String) {
    use rustls::AlertDescription as A;
    use rustls::Error as E;
    use rustls::PeerIncompatible as P;
    if let Some(e) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        return match e {
            E::NoCertificatesPresented => {
                ("no_certificate", "no client certificate presented".into())
            }
            E::InvalidMessage(_) => ("not_tls", format!("not a TLS handshake: {e}")),
            // No supported_versions extension: a ClientHello of TLS 1.2 at most.
            E::PeerIncompatible(P::SupportedVersionsExtensionRequired) => (
                "tls_version",
                version_mismatch(
                    side,
                    allow_tls12,
                    "TLS 1.2 at most (no TLS 1.3 in its hello)",
                ),
            ),
            E::PeerIncompatible(P::Tls12NotOfferedOrEnabled) => (
                "tls_version",
                version_mismatch(
                    side,
                    allow_tls12,
                    if allow_tls12 {
                        "neither TLS 1.3 nor TLS 1.2"
                    } else {
                        "no TLS 1.3"
                    },
                ),
            ),
            E::PeerIncompatible(P::Tls12NotOffered) => (
                "tls_version",
                version_mismatch(side, allow_tls12, "only versions older than TLS 1.2"),
            ),
            E::PeerIncompatible(_) => ("incompatible", format!("peer incompatible: {e}")),
            E::AlertReceived(A::ProtocolVersion) if side == Side::Client => {
                ("tls_version", version_mismatch(side, allow_tls12, ""))
            }
            E::AlertReceived(a) => ("alert_received", format!("peer sent alert {a:?}")),
            E::InvalidCertificate(_) => ("bad_certificate", e.to_string()),
            _ => ("tls_error", e.to_string()),
        };
    }
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            ("eof", "connection closed during the handshake".into())
        }
        std::io::ErrorKind::InvalidData => ("not_tls", format!("not a TLS handshake: {err}")),
        _ => ("io_error", err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn a_tls12_client_against_tls13_only_names_versions_and_both_settings() {
        let err = io(rustls::PeerIncompatible::SupportedVersionsExtensionRequired.into());
        let (code, reason) = classify(&err, Side::Server, false);
        assert_eq!(code, "tls_version");
        for needle in [
            "TLS 1.2 at most",
            "TLS 1.3 only",
            "proxy.allow_tls12: true",
            "tls_maximum_protocol_version: TLSv1_3",
        ] {
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
        }
    }

    #[test]
    fn a_tls12_server_refusing_our_tls13_names_versions_and_both_settings() {
        let err = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion,
        ));
        let (code, reason) = classify(&err, Side::Client, false);
        assert_eq!(code, "tls_version");
        for needle in [
            "TLS 1.3 only",
            "proxy.allow_tls12: true",
            "tls_maximum_protocol_version: TLSv1_3",
            "DownstreamTlsContext",
        ] {
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
        }
        // From a client, the same alert is just an alert.
        assert_eq!(classify(&err, Side::Server, false).0, "alert_received");
    }
}
