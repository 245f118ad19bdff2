//! The proxy's decisions in one place: whether a connection may go on, and if not, why.
//!
//! One authorizer for both directions. Given the listener (which carries its direction: the
//! policy's allow list of an inbound port, or an outbound listener's expected server IDs), the
//! peer's verified SPIFFE ID or why its certificate failed verification, and the policy
//! generation in force, [`decide`] returns [`Allowed`] or a typed [`Refusal`]; [`recheck`] does
//! the same for an open connection when a new generation is published. Handshakes that fail
//! before any certificate is seen are named by [`Refusal::from_handshake_error`].
//!
//! Everything here is pure: the TLS verifiers (`tls.rs`) and the listeners (`server.rs`) call
//! it, and write what it returns to the metrics ([`Refusal::code`], [`Refusal::counted`]) and
//! the audit log (the `Display` text and [`Refusal::peer_id`]).

use std::sync::Arc;

use keyward_identity::{IdPattern, SpiffeId};

use crate::policy::Policy;
use crate::svid::SvidError;

/// Which way a connection goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// mTLS from a peer to the app: the proxy is the TLS server.
    Inbound,
    /// From the app to an mTLS upstream: the proxy is the TLS client.
    Outbound,
}

impl Direction {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// The audit record's action.
    pub fn action(self) -> &'static str {
        match self {
            Direction::Inbound => "conn.inbound",
            Direction::Outbound => "conn.outbound",
        }
    }
}

/// A listener, as far as authorization goes: its port and who may be on the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listener {
    /// Peers are allowed by the policy's allow list of `port` (none listed: nobody).
    Inbound { port: u16 },
    /// The upstream server must present one of `expect`.
    Outbound { port: u16, expect: Vec<SpiffeId> },
}

impl Listener {
    pub fn direction(&self) -> Direction {
        match self {
            Listener::Inbound { .. } => Direction::Inbound,
            Listener::Outbound { .. } => Direction::Outbound,
        }
    }

    /// The local port (the metric and audit `port`).
    pub fn port(&self) -> u16 {
        match self {
            Listener::Inbound { port } | Listener::Outbound { port, .. } => *port,
        }
    }
}

/// What let a peer through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The inbound allow-list entry that matched.
    Pattern(IdPattern),
    /// The server's ID is one the outbound listener expects.
    Expected,
}

/// A peer let through: its ID and the rule. `Display` is the audit reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowed {
    pub id: SpiffeId,
    pub rule: Rule,
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule {
            Rule::Pattern(p) => write!(f, "allowed by {p}"),
            Rule::Expected => write!(f, "server is {}, as expected", self.id),
        }
    }
}

/// Why a connection was refused. `Display` is the audit log's `reason`, [`Refusal::code`] the
/// metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The listener already serves `max_connections`.
    #[error("connection limit reached")]
    MaxConnections,
    /// The handshake did not finish within `handshake_timeout`.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The peer closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    Eof,
    /// The peer did not speak TLS (plain HTTP, for example).
    #[error("not a TLS handshake: {0}")]
    NotTls(String),
    /// No TLS version both sides accept; the reason names both sides and the settings.
    #[error("{}", version_mismatch(*.direction, *.allow_tls12, .peer_offered))]
    TlsVersion {
        direction: Direction,
        allow_tls12: bool,
        /// What the peer offered, as said in the reason ("" when it is not known).
        peer_offered: &'static str,
    },
    /// The peer supports nothing else we need (ciphers, groups, extensions).
    #[error("peer incompatible: {0}")]
    Incompatible(String),
    /// The peer ended the handshake with an alert.
    #[error("peer sent alert {0:?}")]
    AlertReceived(rustls::AlertDescription),
    /// rustls refused a certificate outside the verifier (a bad handshake signature).
    #[error("{0}")]
    BadCertificate(String),
    /// Any other TLS error.
    #[error("{0}")]
    TlsError(String),
    /// A socket error during the handshake.
    #[error("{0}")]
    Io(String),
    /// An inbound peer presented no certificate.
    #[error("no client certificate presented")]
    NoClientCert,
    /// The chain does not lead to the trust bundle, or is out of its validity.
    #[error(transparent)]
    UntrustedChain(SvidError),
    /// The certificate breaks an X.509-SVID rule (URI SANs, CA flag, key usages, encoding).
    #[error(transparent)]
    NotASvid(SvidError),
    /// A valid SVID of another trust domain.
    #[error("SPIFFE ID {id} is not in trust domain {expected}")]
    WrongTrustDomain { id: String, expected: String },
    /// The inbound port's allow list does not allow the peer.
    #[error("SPIFFE ID {id} is not allowed by the policy of this port")]
    NotAllowed { id: SpiffeId, port: u16 },
    /// The upstream server is not one the outbound listener expects.
    #[error("server SPIFFE ID {id} is not one of the expected IDs")]
    UnexpectedServer {
        id: SpiffeId,
        expected: Vec<SpiffeId>,
    },
    /// An open connection's peer is no longer allowed by a new policy generation.
    #[error("policy changed: peer no longer allowed, connection closed")]
    PolicyChanged { id: SpiffeId, port: u16 },
}

/// How a refusal is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// `keyward_proxy_authz_total{decision="deny"}`: a peer we identified and refused.
    Denied,
    /// `keyward_proxy_handshake_failures_total{reason}`: no identified peer.
    HandshakeFailure(&'static str),
}

impl From<SvidError> for Refusal {
    fn from(e: SvidError) -> Self {
        match e {
            SvidError::UnknownCa
            | SvidError::Expired
            | SvidError::NotYetValid
            | SvidError::Chain(_) => Refusal::UntrustedChain(e),
            SvidError::TrustDomain { id, expected } => Refusal::WrongTrustDomain { id, expected },
            other => Refusal::NotASvid(other),
        }
    }
}

impl Refusal {
    /// A short, bounded label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::Timeout => "timeout",
            Refusal::Eof => "eof",
            Refusal::NotTls(_) => "not_tls",
            Refusal::TlsVersion { .. } => "tls_version",
            Refusal::Incompatible(_) => "incompatible",
            Refusal::AlertReceived(_) => "alert_received",
            Refusal::BadCertificate(_) => "bad_certificate",
            Refusal::TlsError(_) => "tls_error",
            Refusal::Io(_) => "io_error",
            Refusal::NoClientCert => "no_certificate",
            Refusal::UntrustedChain(e) | Refusal::NotASvid(e) => e.code(),
            Refusal::WrongTrustDomain { .. } => "trust_domain",
            Refusal::NotAllowed { .. } => "denied",
            Refusal::UnexpectedServer { .. } => "unexpected_server",
            Refusal::PolicyChanged { .. } => "policy_changed",
        }
    }

    /// Which metric counts it: an authorization denial, or a failed handshake by [`code`].
    ///
    /// [`code`]: Refusal::code
    pub fn counted(&self) -> Counted {
        match self {
            Refusal::NotAllowed { .. }
            | Refusal::UnexpectedServer { .. }
            | Refusal::PolicyChanged { .. } => Counted::Denied,
            other => Counted::HandshakeFailure(other.code()),
        }
    }

    /// The peer's SPIFFE ID, when it is known (for the audit record).
    pub fn peer_id(&self) -> Option<String> {
        match self {
            Refusal::WrongTrustDomain { id, .. } => Some(id.clone()),
            Refusal::NotAllowed { id, .. }
            | Refusal::UnexpectedServer { id, .. }
            | Refusal::PolicyChanged { id, .. } => Some(id.to_string()),
            _ => None,
        }
    }

    /// The error a verifier returns to rustls, which picks the alert: `access_denied` for a
    /// policy refusal, the certificate's fault otherwise.
    pub fn to_rustls(&self) -> rustls::Error {
        match self {
            Refusal::NotAllowed { .. }
            | Refusal::UnexpectedServer { .. }
            | Refusal::PolicyChanged { .. } => rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ),
            Refusal::UntrustedChain(e) | Refusal::NotASvid(e) => e.to_rustls(),
            Refusal::WrongTrustDomain { id, expected } => SvidError::TrustDomain {
                id: id.clone(),
                expected: expected.clone(),
            }
            .to_rustls(),
            other => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(other.clone())),
            )),
        }
    }

    /// Names a failed handshake from its error. `direction` and `allow_tls12` let a version
    /// mismatch name the versions and the settings to change on either side.
    pub fn from_handshake_error(
        err: &std::io::Error,
        direction: Direction,
        allow_tls12: bool,
    ) -> Self {
        use rustls::AlertDescription as A;
        use rustls::Error as E;
        use rustls::PeerIncompatible as P;
        let version = |peer_offered| Refusal::TlsVersion {
            direction,
            allow_tls12,
            peer_offered,
        };
        if let Some(e) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) {
            return match e {
                E::NoCertificatesPresented => Refusal::NoClientCert,
                E::InvalidMessage(_) => Refusal::NotTls(e.to_string()),
                // No supported_versions extension: a ClientHello of TLS 1.2 at most.
                E::PeerIncompatible(P::SupportedVersionsExtensionRequired) => {
                    version("TLS 1.2 at most (no TLS 1.3 in its hello)")
                }
                E::PeerIncompatible(P::Tls12NotOfferedOrEnabled) => version(if allow_tls12 {
                    "neither TLS 1.3 nor TLS 1.2"
                } else {
                    "no TLS 1.3"
                }),
                E::PeerIncompatible(P::Tls12NotOffered) => {
                    version("only versions older than TLS 1.2")
                }
                E::PeerIncompatible(_) => Refusal::Incompatible(e.to_string()),
                E::AlertReceived(A::ProtocolVersion) if direction == Direction::Outbound => {
                    version("")
                }
                E::AlertReceived(a) => Refusal::AlertReceived(*a),
                E::InvalidCertificate(_) => Refusal::BadCertificate(e.to_string()),
                _ => Refusal::TlsError(e.to_string()),
            };
        }
        match err.kind() {
            std::io::ErrorKind::UnexpectedEof => Refusal::Eof,
            std::io::ErrorKind::InvalidData => Refusal::NotTls(err.to_string()),
            _ => Refusal::Io(err.to_string()),
        }
    }
}

/// Decides a connection at its handshake. `peer` is the peer's verified SPIFFE ID, or why its
/// certificate failed verification; `policy` is the generation in force.
pub(crate) fn decide(
    listener: &Listener,
    peer: Result<SpiffeId, SvidError>,
    policy: &Policy,
) -> Result<Allowed, Refusal> {
    let id = peer?;
    match listener {
        Listener::Inbound { port } => match policy.allows(*port, &id) {
            Some(pattern) => Ok(Allowed {
                rule: Rule::Pattern(pattern.clone()),
                id,
            }),
            None => Err(Refusal::NotAllowed { id, port: *port }),
        },
        Listener::Outbound { expect, .. } => {
            if expect.contains(&id) {
                Ok(Allowed {
                    id,
                    rule: Rule::Expected,
                })
            } else {
                Err(Refusal::UnexpectedServer {
                    id,
                    expected: expect.clone(),
                })
            }
        }
    }
}

/// Decides again for an open connection of `id` when a new policy generation is published.
/// Outbound connections are not affected: the policy holds inbound allow lists only, and an
/// outbound listener's expected IDs are fixed configuration.
pub(crate) fn recheck(listener: &Listener, id: &SpiffeId, policy: &Policy) -> Result<(), Refusal> {
    match listener {
        Listener::Inbound { port } if policy.allows(*port, id).is_none() => {
            Err(Refusal::PolicyChanged {
                id: id.clone(),
                port: *port,
            })
        }
        _ => Ok(()),
    }
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
fn version_mismatch(direction: Direction, allow_tls12: bool, peer_offered: &str) -> String {
    match direction {
        Direction::Inbound => {
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
        Direction::Outbound => {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 15443;
    const CLIENT: &str = "spiffe://td/ns/shop/sa/frontend";
    const OTHER: &str = "spiffe://td/ns/other/sa/x";
    const SERVER: &str = "spiffe://td/ns/shop/sa/orders";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("id")
    }

    fn policy(allow: &[&str]) -> Policy {
        Policy::from_ports([(
            PORT,
            allow
                .iter()
                .map(|a| IdPattern::parse(a).expect("pattern"))
                .collect(),
        )])
    }

    fn inbound() -> Listener {
        Listener::Inbound { port: PORT }
    }

    fn outbound() -> Listener {
        Listener::Outbound {
            port: 15001,
            expect: vec![id(SERVER)],
        }
    }

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    /// Asserts what a refusal writes: metric label, audit reason, audit peer ID, which counter.
    #[track_caller]
    fn says(r: &Refusal, code: &str, reason: &str, peer: Option<&str>, counted: Counted) {
        assert_eq!(r.code(), code, "{r:?}");
        assert_eq!(r.to_string(), reason, "{r:?}");
        assert_eq!(r.peer_id().as_deref(), peer, "{r:?}");
        assert_eq!(r.counted(), counted, "{r:?}");
    }

    fn failed(code: &'static str) -> Counted {
        Counted::HandshakeFailure(code)
    }

    #[test]
    fn an_allowed_inbound_peer_names_the_matching_rule() {
        let p = policy(&["spiffe://td/ns/ops/*", "spiffe://td/ns/shop/*"]);
        let ok = decide(&inbound(), Ok(id(CLIENT)), &p).expect("allowed");
        assert_eq!(ok.id, id(CLIENT));
        assert_eq!(ok.to_string(), "allowed by spiffe://td/ns/shop/*");
    }

    #[test]
    fn an_inbound_peer_not_in_the_allow_list_is_not_allowed() {
        let p = policy(&["spiffe://td/ns/shop/*"]);
        let r = decide(&inbound(), Ok(id(OTHER)), &p).expect_err("refused");
        assert_eq!(
            r,
            Refusal::NotAllowed {
                id: id(OTHER),
                port: PORT
            }
        );
        says(
            &r,
            "denied",
            "SPIFFE ID spiffe://td/ns/other/sa/x is not allowed by the policy of this port",
            Some(OTHER),
            Counted::Denied,
        );
        // A port the policy does not list allows nobody.
        let other_port = Listener::Inbound { port: 1 };
        assert!(matches!(
            decide(&other_port, Ok(id(CLIENT)), &p),
            Err(Refusal::NotAllowed { port: 1, .. })
        ));
    }

    #[test]
    fn an_expected_server_is_allowed_outbound() {
        let ok = decide(&outbound(), Ok(id(SERVER)), &Policy::default()).expect("allowed");
        assert_eq!(ok.rule, Rule::Expected);
        assert_eq!(
            ok.to_string(),
            "server is spiffe://td/ns/shop/sa/orders, as expected"
        );
    }

    #[test]
    fn an_unexpected_server_is_refused_whatever_the_policy() {
        // The inbound policy plays no part outbound.
        let p = policy(&["spiffe://td/*"]);
        let r = decide(&outbound(), Ok(id(CLIENT)), &p).expect_err("refused");
        assert_eq!(
            r,
            Refusal::UnexpectedServer {
                id: id(CLIENT),
                expected: vec![id(SERVER)]
            }
        );
        says(
            &r,
            "unexpected_server",
            "server SPIFFE ID spiffe://td/ns/shop/sa/frontend is not one of the expected IDs",
            Some(CLIENT),
            Counted::Denied,
        );
    }

    #[test]
    fn a_new_generation_that_drops_the_peer_is_policy_changed() {
        assert_eq!(recheck(&inbound(), &id(CLIENT), &policy(&[CLIENT])), Ok(()));
        let r = recheck(&inbound(), &id(CLIENT), &policy(&["spiffe://td/ns/ops/*"]))
            .expect_err("revoked");
        says(
            &r,
            "policy_changed",
            "policy changed: peer no longer allowed, connection closed",
            Some(CLIENT),
            Counted::Denied,
        );
        // Outbound connections do not depend on the inbound policy.
        assert_eq!(
            recheck(&outbound(), &id(SERVER), &Policy::default()),
            Ok(())
        );
    }

    #[test]
    fn policy_refusals_map_to_access_denied() {
        let denied = rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        );
        for r in [
            Refusal::NotAllowed {
                id: id(CLIENT),
                port: PORT,
            },
            Refusal::UnexpectedServer {
                id: id(CLIENT),
                expected: vec![],
            },
            Refusal::PolicyChanged {
                id: id(CLIENT),
                port: PORT,
            },
        ] {
            assert_eq!(r.to_rustls(), denied, "{r:?}");
        }
    }

    #[test]
    fn not_allowed_maps_to_access_denied() {
        let e = Refusal::NotAllowed {
            id: id(CLIENT),
            port: PORT,
        }
        .to_rustls();
        assert!(matches!(
            e,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            )
        ));
    }

    #[test]
    fn a_chain_that_does_not_lead_to_the_bundle_is_untrusted() {
        use rustls::CertificateError as C;
        let cases = [
            (
                SvidError::UnknownCa,
                "unknown_ca",
                "certificate is not signed by a trusted CA (unknown CA)",
                Some(C::UnknownIssuer),
            ),
            (
                SvidError::Expired,
                "expired",
                "certificate has expired",
                Some(C::Expired),
            ),
            (
                SvidError::NotYetValid,
                "not_yet_valid",
                "certificate is not valid yet",
                Some(C::NotValidYet),
            ),
            (
                SvidError::Chain("no trust bundle yet".into()),
                "bad_chain",
                "certificate chain is invalid: no trust bundle yet",
                None,
            ),
        ];
        for (e, code, reason, alert) in cases {
            let r = decide(&inbound(), Err(e.clone()), &policy(&["spiffe://td/*"]))
                .expect_err("refused");
            assert_eq!(r, Refusal::UntrustedChain(e));
            says(&r, code, reason, None, failed(code));
            if let Some(c) = alert {
                assert_eq!(r.to_rustls(), rustls::Error::InvalidCertificate(c));
            }
        }
    }

    #[test]
    fn a_certificate_that_breaks_an_svid_rule_is_not_a_svid() {
        let cases = [
            (
                SvidError::Malformed("bad DER".into()),
                "malformed",
                "certificate cannot be parsed: bad DER",
            ),
            (
                SvidError::UriSanCount(2),
                "uri_san_count",
                "SVID must have exactly one URI SAN, found 2",
            ),
            (
                SvidError::InvalidId(keyward_identity::IdError::DotSegment),
                "invalid_spiffe_id",
                "URI SAN is not a valid SPIFFE ID: ",
            ),
            (
                SvidError::LeafIsCa,
                "leaf_is_ca",
                "leaf certificate is a CA (basicConstraints cA=true)",
            ),
            (
                SvidError::NoKeyUsage,
                "key_usage",
                "leaf certificate has no keyUsage extension",
            ),
            (
                SvidError::NoDigitalSignature,
                "key_usage",
                "leaf keyUsage lacks digitalSignature",
            ),
            (
                SvidError::SigningUsage,
                "key_usage",
                "leaf keyUsage has keyCertSign or cRLSign",
            ),
            (
                SvidError::ExtendedKeyUsage("clientAuth"),
                "extended_key_usage",
                "leaf extendedKeyUsage does not allow clientAuth",
            ),
        ];
        for (e, code, reason) in cases {
            let r = decide(&outbound(), Err(e.clone()), &Policy::default()).expect_err("refused");
            assert_eq!(r, Refusal::NotASvid(e.clone()));
            assert_eq!(r.code(), code);
            assert!(r.to_string().starts_with(reason), "{r}");
            assert_eq!(r.to_string(), e.to_string());
            assert_eq!(r.peer_id(), None);
            assert_eq!(r.counted(), failed(code));
            // rustls' `OtherError` never compares equal: compare what it says.
            assert_eq!(
                format!("{:?}", r.to_rustls()),
                format!("{:?}", e.to_rustls())
            );
        }
    }

    #[test]
    fn an_svid_of_another_trust_domain_names_the_peer() {
        let e = SvidError::TrustDomain {
            id: "spiffe://other.td/ns/shop/sa/frontend".into(),
            expected: "td".into(),
        };
        let r = decide(&inbound(), Err(e.clone()), &Policy::default()).expect_err("refused");
        says(
            &r,
            "trust_domain",
            "SPIFFE ID spiffe://other.td/ns/shop/sa/frontend is not in trust domain td",
            Some("spiffe://other.td/ns/shop/sa/frontend"),
            failed("trust_domain"),
        );
        assert_eq!(
            format!("{:?}", r.to_rustls()),
            format!("{:?}", e.to_rustls())
        );
    }

    #[test]
    fn handshake_failures_before_any_certificate() {
        let dir = Direction::Inbound;
        let r =
            Refusal::from_handshake_error(&io(rustls::Error::NoCertificatesPresented), dir, false);
        says(
            &r,
            "no_certificate",
            "no client certificate presented",
            None,
            failed("no_certificate"),
        );
        assert_eq!(r, Refusal::NoClientCert);

        let r = Refusal::from_handshake_error(
            &io(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            )),
            dir,
            false,
        );
        assert_eq!(r.code(), "not_tls");
        assert!(r.to_string().starts_with("not a TLS handshake: "), "{r}");
        let plain =
            std::io::Error::new(std::io::ErrorKind::InvalidData, "received corrupt message");
        let r = Refusal::from_handshake_error(&plain, dir, false);
        says(
            &r,
            "not_tls",
            "not a TLS handshake: received corrupt message",
            None,
            failed("not_tls"),
        );

        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        says(
            &Refusal::from_handshake_error(&eof, dir, false),
            "eof",
            "connection closed during the handshake",
            None,
            failed("eof"),
        );
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        says(
            &Refusal::from_handshake_error(&reset, dir, false),
            "io_error",
            "reset by peer",
            None,
            failed("io_error"),
        );

        let r = Refusal::from_handshake_error(
            &io(rustls::PeerIncompatible::NoCipherSuitesInCommon.into()),
            dir,
            false,
        );
        assert_eq!(r.code(), "incompatible");
        assert!(r.to_string().starts_with("peer incompatible: "), "{r}");

        let r = Refusal::from_handshake_error(
            &io(rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure,
            )),
            dir,
            false,
        );
        says(
            &r,
            "alert_received",
            "peer sent alert HandshakeFailure",
            None,
            failed("alert_received"),
        );

        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        let r = Refusal::from_handshake_error(&io(bad.clone()), dir, false);
        says(
            &r,
            "bad_certificate",
            &bad.to_string(),
            None,
            failed("bad_certificate"),
        );

        let other = rustls::Error::DecryptError;
        let r = Refusal::from_handshake_error(&io(other.clone()), dir, false);
        says(
            &r,
            "tls_error",
            &other.to_string(),
            None,
            failed("tls_error"),
        );

        says(
            &Refusal::Timeout,
            "timeout",
            "TLS handshake timed out",
            None,
            failed("timeout"),
        );
        assert_eq!(Refusal::MaxConnections.code(), "max_connections");
        assert_eq!(Refusal::MaxConnections.counted(), failed("max_connections"));
    }

    #[test]
    fn a_tls12_client_against_tls13_only_names_versions_and_both_settings() {
        let err = io(rustls::PeerIncompatible::SupportedVersionsExtensionRequired.into());
        let r = Refusal::from_handshake_error(&err, Direction::Inbound, false);
        let (code, reason) = (r.code(), r.to_string());
        assert_eq!(code, "tls_version");
        for needle in [
            "TLS 1.2 at most",
            "TLS 1.3 only",
            "proxy.allow_tls12: true",
            "tls_maximum_protocol_version: TLSv1_3",
        ] {
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
        }
        assert_eq!(
            reason,
            "TLS version mismatch: the client offered TLS 1.2 at most (no TLS 1.3 in its hello), \
             this listener accepts TLS 1.3 only (proxy.allow_tls12: false): let the client offer \
             TLS 1.3 (Envoy: tls_params: {tls_maximum_protocol_version: TLSv1_3} in the \
             cluster's UpstreamTlsContext; Envoy's default maximum as a client is TLS 1.2), or \
             set proxy.allow_tls12: true on keyward to accept TLS 1.2"
        );
        assert_eq!(r.counted(), failed("tls_version"));
    }

    #[test]
    fn a_tls12_server_refusing_our_tls13_names_versions_and_both_settings() {
        let err = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion,
        ));
        let r = Refusal::from_handshake_error(&err, Direction::Outbound, false);
        let (code, reason) = (r.code(), r.to_string());
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
        assert_eq!(
            Refusal::from_handshake_error(&err, Direction::Inbound, false).code(),
            "alert_received"
        );
    }

    #[test]
    fn version_reasons_follow_allow_tls12() {
        let offered = |e: rustls::PeerIncompatible, tls12| {
            Refusal::from_handshake_error(&io(e.into()), Direction::Inbound, tls12).to_string()
        };
        let r = offered(rustls::PeerIncompatible::Tls12NotOfferedOrEnabled, true);
        assert!(
            r.contains("the client offered neither TLS 1.3 nor TLS 1.2"),
            "{r}"
        );
        assert!(
            r.contains("TLS 1.3 and TLS 1.2 (proxy.allow_tls12: true)"),
            "{r}"
        );
        assert!(
            r.ends_with("let the client offer TLS 1.3 or TLS 1.2"),
            "{r}"
        );
        let r = offered(rustls::PeerIncompatible::Tls12NotOfferedOrEnabled, false);
        assert!(r.contains("the client offered no TLS 1.3,"), "{r}");
        let r = offered(rustls::PeerIncompatible::Tls12NotOffered, true);
        assert!(r.contains("only versions older than TLS 1.2"), "{r}");
        let r = Refusal::from_handshake_error(
            &io(rustls::Error::AlertReceived(
                rustls::AlertDescription::ProtocolVersion,
            )),
            Direction::Outbound,
            true,
        )
        .to_string();
        assert!(
            r.ends_with("let the server accept TLS 1.3 or TLS 1.2"),
            "{r}"
        );
    }
}
