//! Proxy behaviours that had no test of their own (issue 16 §5), each through a real
//! `keyward sidecar` against a real OpenBao (PKI, kubernetes-style JWT login, and PostgreSQL for
//! a lease):
//! - `proxy_protocol: true` on an inbound listener: the app receives a PROXY v2 header carrying
//!   the caller's address (the one the audit record names) and SPIFFE ID; a listener without it
//!   sends none;
//! - a peer certificate whose notBefore is in the future is refused and audited as not yet valid;
//! - a policy change while certificates rotate applies to new connections, and rotation goes on;
//! - TLS session resumption is disabled: the inbound listener issues no ticket and no session id
//!   (TLS 1.3 and TLS 1.2), every connection is a full handshake through the verifier, and the
//!   outbound side never resumes with a server that issues tickets;
//! - with JSON logs at trace level, no secret value, Vault token or accessor, lease id, database
//!   password or SVID private key appears in stdout, stderr, the audit log or the metrics.
//!
//! How each test was shown to fail when its behaviour breaks: docs/testing.md.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};
use support::pki::{echo_app, raw_mtls, Pki, Sidecar, SidecarSpec};
use support::{eventually, TestVault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const REPORTS: &str = "spiffe://cluster.local/ns/shop/sa/reports";
const WAIT: Duration = Duration::from_secs(30);

/// Writes `data`, half-closes, reads everything back.
async fn roundtrip<S>(s: S, data: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(data).await?;
    w.shutdown().await?;
    let mut back = Vec::new();
    r.read_to_end(&mut back).await?;
    Ok(back)
}

/// The audit records of `s` after the first `after`, once one satisfies `f`.
async fn wait_record(s: &Sidecar, after: usize, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, what, || {
        let found = s.audit_records().into_iter().skip(after).find(|r| f(r));
        async move { found }
    })
    .await
}

/// An app that reads each connection to its end and hands over all it received (then closes).
async fn recording_app() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_on_an_inbound_listener_tells_the_app_the_callers_address_and_id() {
    let (vault, pki) = support::pki::shop_vault().await;
    let (app, mut received) = recording_app().await;
    let with_pp = support::pki::loopback_addr();
    let without_pp = support::pki::loopback_addr();
    let mut orders = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            inbound: format!(
                "[{{listen: \"{with_pp}\", forward: \"{app}\", allow: [\"{FRONTEND}\"], proxy_protocol: true}}, \
                  {{listen: \"{without_pp}\", forward: \"{app}\", allow: [\"{FRONTEND}\"]}}]"
            ),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    orders.wait_ready().await;
    let (chain, key) = pki.issue(&vault.bao, FRONTEND, "1h").await;

    // With the header: the app learns the caller's address, the listener's and the SPIFFE ID.
    let before = orders.audit_records().len();
    let tls = raw_mtls(with_pp, Some((&chain, &key)))
        .await
        .expect("handshake");
    let client = tls.get_ref().0.local_addr().expect("client address");
    roundtrip(tls, b"payload after the header")
        .await
        .expect("roundtrip");
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the app got the connection")
        .expect("app alive");
    let (header, len) = keyward_proxy::proxy_protocol::decode(&got)
        .unwrap_or_else(|| panic!("no PROXY v2 header at the start of {got:?}"));
    assert_eq!(header.src, client, "the header's source is the caller");
    assert_eq!(
        header.dst, with_pp,
        "the header's destination is the listener"
    );
    assert_eq!(header.spiffe_id.as_deref(), Some(FRONTEND));
    assert_eq!(header.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(
        &got[len..],
        b"payload after the header",
        "the bytes after it"
    );
    // The audit record of the connection names the same peer address as the header.
    let r = wait_record(&orders, before, "inbound allow", |r| {
        r["action"] == "conn.inbound" && r["decision"] == "allow"
    })
    .await;
    assert_eq!(r["peer"]["addr"], header.src.to_string(), "{r}");
    assert_eq!(r["peer"]["spiffe_id"], FRONTEND, "{r}");
    assert_eq!(r["port"], with_pp.port(), "{r}");

    // Without `proxy_protocol`, the app gets the caller's bytes only.
    let tls = raw_mtls(without_pp, Some((&chain, &key)))
        .await
        .expect("handshake");
    roundtrip(tls, b"plain payload").await.expect("roundtrip");
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the app got the connection")
        .expect("app alive");
    assert_eq!(got, b"plain payload", "no header without proxy_protocol");
    support::assert_no_panic("the sidecar", &orders.log());
}

/// A CA (rcgen, P-256) that signs SVIDs with any validity window: (CA PEM, signer).
struct WindowCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl WindowCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            "keyward test CA (validity windows)",
        );
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(1);
        let cert = p.self_signed(&key).expect("self-sign");
        WindowCa { cert, key }
    }

    /// An otherwise valid SVID for `id`, valid from `from` to `to` (offsets from now): (chain
    /// PEM, key PEM).
    fn leaf(&self, id: &str, from: time::Duration, to: time::Duration) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("IA5 URI"))];
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + from;
        p.not_after = now + to;
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_certificate_not_yet_valid_is_refused_and_audited_as_not_yet_valid() {
    let (vault, pki) = support::pki::shop_vault().await;
    let app = echo_app().await;
    let ca = WindowCa::new();
    let inbound = support::pki::loopback_addr();
    let mut orders = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            bundle: Some(format!("{}\n{}", pki.root_pem, ca.cert.pem())),
            inbound: format!(
                "[{{listen: \"{inbound}\", forward: \"{app}\", allow: [\"{FRONTEND}\"]}}]"
            ),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    orders.wait_ready().await;
    let h = time::Duration::hours;

    // The CA is trusted and the ID allowed: a leaf of it valid now gets through.
    let (chain, key) = ca.leaf(FRONTEND, -h(1), h(4));
    let tls = raw_mtls(inbound, Some((&chain, &key)))
        .await
        .expect("handshake");
    assert_eq!(roundtrip(tls, b"hi").await.expect("echo"), b"hibye");

    // The same, valid from an hour from now: refused before any byte reaches the app.
    let (chain, key) = ca.leaf(FRONTEND, h(1), h(3));
    let before = orders.audit_records().len();
    let outcome = match raw_mtls(inbound, Some((&chain, &key))).await {
        Ok(s) => roundtrip(s, b"hello").await,
        Err(e) => Err(e),
    };
    let err = outcome.expect_err("a certificate not yet valid was accepted");
    // In TLS 1.3 the client finishes first and writes; the server checks the client's
    // certificate, sends its alert and closes. The client reads that alert, unless its write
    // raced the close (a broken pipe or reset, no alert left to read): then the audit record
    // and the metric below still name the reason. Any other alert fails.
    let text = format!("{err:?}");
    let alert = text.contains("CertificateExpired") || text.contains("NotValidYet");
    let raced = ["BrokenPipe", "ConnectionReset"]
        .iter()
        .any(|k| text.contains(k));
    assert!(
        alert || raced,
        "the alert says the certificate's validity is the problem: {err:?}"
    );
    let r = wait_record(&orders, before, "the refusal's record", |r| {
        r["action"] == "conn.inbound"
    })
    .await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["reason"], "certificate is not valid yet", "{r}");
    let counted = format!(
        "keyward_proxy_handshake_failures_total{{direction=\"inbound\",port=\"{}\",reason=\"not_yet_valid\"}}",
        inbound.port()
    );
    assert_eq!(
        orders.metric(&counted).await,
        1.0,
        "counted as not_yet_valid"
    );
    support::assert_no_panic("the sidecar", &orders.log());
}

/// How many certificates the sidecar has issued itself.
fn issued(s: &Sidecar) -> usize {
    s.audit_records()
        .iter()
        .filter(|r| r["action"] == "svid.issue" && r["decision"] == "ok")
        .count()
}

fn policy(port: u16, allow: &[&str]) -> String {
    let list: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "inbound:\n  - port: {port}\n    allow: [{}]\n",
        list.join(", ")
    )
}

/// Connects as `cert` and returns the serial-bearing DER of the server's certificate and the
/// stream, or the error.
async fn connect_as(
    addr: SocketAddr,
    cert: &(String, String),
) -> std::io::Result<(Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>)> {
    let tls = raw_mtls(addr, Some((&cert.0, &cert.1))).await?;
    let server = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("the server presented a certificate");
    Ok((server, tls))
}

/// Whether `tls` echoes a ping (false: refused or closed).
async fn pings(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    let mut back = [0u8; 4];
    tls.write_all(b"ping").await.is_ok()
        && tokio::time::timeout(WAIT, tls.read_exact(&mut back))
            .await
            .is_ok_and(|r| r.is_ok())
        && &back == b"ping"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_during_certificate_rotation_applies_to_new_connections_and_rotation_goes_on(
) {
    let (vault, pki) = support::pki::shop_vault().await;
    let app = echo_app().await;
    let inbound = support::pki::loopback_addr();
    // 30 s certificates: renewed at about 2/3 of their life, so every ~20 s.
    let mut orders = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            ttl: "30s",
            policy: Some(policy(inbound.port(), &[FRONTEND])),
            inbound: format!("[{{listen: \"{inbound}\", forward: \"{app}\"}}]"),
            ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
        },
    );
    orders.wait_ready().await;
    let frontend = pki.issue(&vault.bao, FRONTEND, "1h").await;
    let reports = pki.issue(&vault.bao, REPORTS, "1h").await;

    // A frontend connection open all along: allowed by every generation, it must survive both
    // the rotations and the policy changes.
    let (mut served_by, mut kept) = connect_as(inbound, &frontend).await.expect("frontend");
    assert!(pings(&mut kept).await, "frontend allowed at start");
    let (_, refused) = connect_as(inbound, &reports).await.expect("handshake");
    assert!(
        roundtrip(refused, b"x").await.is_err(),
        "reports is not allowed by the first policy"
    );

    let mut reports_conn = None;
    for (round, allow) in [(1, vec![FRONTEND, REPORTS]), (2, vec![FRONTEND])] {
        // The moment a new certificate is issued, the policy file changes.
        let n = issued(&orders);
        eventually(Duration::from_secs(90), "the next rotation", || async {
            (issued(&orders) > n).then_some(())
        })
        .await;
        let reloads = orders.metric("keyward_proxy_policy_reloads_total").await;
        orders.set_policy(&policy(inbound.port(), &allow));
        eventually(WAIT, "the policy reloaded", || async {
            (orders.metric("keyward_proxy_policy_reloads_total").await > reloads).then_some(())
        })
        .await;

        // New connections are decided by the new policy, and served with the new certificate.
        let before = orders.audit_records().len();
        if round == 1 {
            let (_, mut conn) = connect_as(inbound, &reports).await.expect("handshake");
            assert!(pings(&mut conn).await, "round {round}: reports now allowed");
            reports_conn = Some(conn);
        } else {
            if let Ok((_, mut conn)) = connect_as(inbound, &reports).await {
                assert!(
                    !pings(&mut conn).await,
                    "round {round}: reports removed, still served"
                );
            }
            let r = wait_record(&orders, before, "reports denied", |r| {
                r["decision"] == "deny" && r["peer"]["spiffe_id"] == REPORTS
            })
            .await;
            assert!(
                r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("not allowed"),
                "{r}"
            );
            // Its connection of round 1 is closed by the change.
            eventually(WAIT, "reports' open connection revoked", || async {
                (orders
                    .metric("keyward_proxy_connections_revoked_total")
                    .await
                    >= 1.0)
                    .then_some(())
            })
            .await;
            let mut open = reports_conn.take().expect("reports' connection of round 1");
            assert!(
                !pings(&mut open).await,
                "reports' open connection survived its removal"
            );
        }
        let (now_serving, mut fresh) = eventually(WAIT, "the new certificate served", || {
            let frontend = &frontend;
            let served_by = &served_by;
            async move {
                let (c, s) = connect_as(inbound, frontend).await.ok()?;
                (&c != served_by).then_some((c, s))
            }
        })
        .await;
        assert!(
            pings(&mut fresh).await,
            "round {round}: frontend still allowed"
        );
        served_by = now_serving;
        assert!(
            pings(&mut kept).await,
            "round {round}: the long-lived connection was dropped"
        );
    }
    // Rotation went on: the first certificate and at least two renewals, no issuance error.
    assert!(issued(&orders) >= 3, "{} issued", issued(&orders));
    assert_eq!(orders.metric("keyward_svid_errors_total").await, 0.0);
    assert_eq!(
        orders
            .metric("keyward_proxy_connections_revoked_total")
            .await,
        1.0,
        "exactly reports' connection was revoked"
    );
    support::assert_no_panic("the sidecar", &orders.log());
}

/// A client-side session store that counts what servers hand out for resumption.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<rustls::client::ClientSessionMemoryCache>,
    tls13_tickets: AtomicUsize,
    tls12_sessions: AtomicUsize,
}

impl CountingStore {
    fn new() -> Self {
        CountingStore {
            inner: Arc::new(rustls::client::ClientSessionMemoryCache::new(64)),
            tls13_tickets: AtomicUsize::new(0),
            tls12_sessions: AtomicUsize::new(0),
        }
    }
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, n: ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(n, g)
    }
    fn kx_hint(&self, n: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(n)
    }
    fn set_tls12_session(
        &self,
        n: ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.tls12_sessions.fetch_add(1, Ordering::SeqCst);
        self.inner.set_tls12_session(n, v)
    }
    fn tls12_session(&self, n: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(n)
    }
    fn remove_tls12_session(&self, n: &ServerName<'static>) {
        self.inner.remove_tls12_session(n)
    }
    fn insert_tls13_ticket(
        &self,
        n: ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tls13_tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(n, v)
    }
    fn take_tls13_ticket(
        &self,
        n: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(n)
    }
}

/// Accepts any server certificate (the client side of the resumption probe checks handshakes,
/// not identities).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &keyward_proxy::tls::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &keyward_proxy::tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        keyward_proxy::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pem_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM")
}

fn pem_chain(pem: &str) -> Vec<CertificateDer<'static>> {
    keyward_proxy::svid::certs_from_pem(pem).expect("chain PEM")
}

/// An mTLS upstream (ORDERS' certificate) that issues session tickets and session ids and
/// resumes whoever offers one; it records each handshake's kind and echoes.
async fn resuming_upstream(
    chain: &str,
    key: &str,
) -> (SocketAddr, Arc<Mutex<Vec<rustls::HandshakeKind>>>) {
    let mut cfg = rustls::ServerConfig::builder_with_provider(keyward_proxy::tls::provider())
        .with_protocol_versions(keyward_proxy::tls::versions(true))
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(pem_chain(chain), pem_key(key))
        .expect("server cert");
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
    cfg.send_tls13_tickets = 4;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let seen = kinds.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(k) = tls.get_ref().1.handshake_kind() {
                    seen.lock().expect("kinds").push(k);
                }
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_session_resumption_is_never_offered_inbound_nor_used_outbound() {
    let (vault, pki) = support::pki::shop_vault().await;
    let app = echo_app().await;
    let inbound = support::pki::loopback_addr();
    let outbound = support::pki::loopback_addr();
    let (orders_chain, orders_key) = pki.issue(&vault.bao, ORDERS, "1h").await;
    let (upstream, upstream_kinds) = resuming_upstream(&orders_chain, &orders_key).await;
    // TLS 1.2 allowed too, so that session ids (TLS 1.2's resumption) are covered as well.
    let mut sidecar = Sidecar::start(
        &vault.bao.addr(),
        SidecarSpec {
            inbound: format!(
                "[{{listen: \"{inbound}\", forward: \"{app}\", allow: [\"{FRONTEND}\"]}}]"
            ),
            outbound: format!(
                "[{{listen: \"{outbound}\", upstream: \"{upstream}\", expect: [\"{ORDERS}\"]}}]"
            ),
            extra: "  allow_tls12: true\n",
            ..SidecarSpec::new("shop", "frontend", vault.token("shop", "frontend"))
        },
    );
    sidecar.wait_ready().await;
    let (chain, key) = pki.issue(&vault.bao, FRONTEND, "1h").await;

    // Inbound: a client that keeps whatever the server offers for resumption, one store shared
    // by its connections, as a resuming client would.
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let store = Arc::new(CountingStore::new());
        let mut cfg = rustls::ClientConfig::builder_with_provider(keyward_proxy::tls::provider())
            .with_protocol_versions(&[version])
            .expect("version")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_client_auth_cert(pem_chain(&chain), pem_key(&key))
            .expect("client cert");
        cfg.resumption = rustls::client::Resumption::store(store.clone());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let before = sidecar.audit_records().len();
        for n in 0..3 {
            let tcp = TcpStream::connect(inbound).await.expect("connect");
            let tls = connector
                .connect(ServerName::try_from("orders").expect("name"), tcp)
                .await
                .expect("handshake");
            assert_eq!(
                tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "{version:?} connection {n} was not a full handshake"
            );
            // Reading the echo also reads any ticket the server sent after the handshake.
            assert_eq!(roundtrip(tls, b"again").await.expect("echo"), b"againbye");
        }
        assert_eq!(
            (
                store.tls13_tickets.load(Ordering::SeqCst),
                store.tls12_sessions.load(Ordering::SeqCst)
            ),
            (0, 0),
            "{version:?}: the inbound listener handed out (TLS 1.3 tickets, TLS 1.2 sessions)"
        );
        // Each connection went through the verifier: one allow record each.
        let allowed = eventually(WAIT, "three allow records", || {
            let recs = sidecar.audit_records();
            async move {
                let n = recs
                    .iter()
                    .skip(before)
                    .filter(|r| r["action"] == "conn.inbound" && r["decision"] == "allow")
                    .count();
                (n >= 3).then_some(n)
            }
        })
        .await;
        assert_eq!(allowed, 3, "{version:?}");
    }

    // Outbound: an upstream that would resume sees only full handshakes.
    for n in 0..3 {
        let s = TcpStream::connect(outbound)
            .await
            .expect("connect outbound");
        assert_eq!(
            roundtrip(s, b"out").await.expect("echo"),
            b"out",
            "connection {n}"
        );
    }
    let kinds = upstream_kinds.lock().expect("kinds").clone();
    assert_eq!(
        kinds,
        vec![rustls::HandshakeKind::Full; 3],
        "the outbound proxy resumed a session"
    );
    support::assert_no_panic("the sidecar", &sidecar.log());
}

/// The value of `"key":"…"` in what Vault sent.
fn json_string_after(text: &str, key: &str) -> String {
    let needle = format!("\"{key}\":\"");
    let start = text
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in what Vault sent"))
        + needle.len();
    text[start..]
        .split('"')
        .next()
        .expect("string value")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_trace_never_show_a_secret_token_lease_or_svid_key() {
    let pg = support::pg::Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    let pki = Pki::setup(&v.bao).await;
    pg.configure_vault(&v.bao, "1h", "2h").await;
    let canary = format!("kwcanary-{:032x}", rand::random::<u128>());
    v.bao.kv_put("app", json!({ "password": canary })).await;
    // OpenBao behind a wiretap that shows the test the token it issued.
    let tap =
        support::tap::Tap::start(SocketAddr::from(([127, 0, 0, 1], v.bao.port())), None).await;
    let app = echo_app().await;
    let inbound = support::pki::loopback_addr();
    let me = nix::unistd::geteuid().as_raw();
    let uids = format!("[{me}]");
    let mut s = Sidecar::start_with_env(
        &tap.http_url(),
        SidecarSpec {
            identity_uids: &uids,
            inbound: format!("[{{listen: \"{inbound}\", forward: \"{app}\", allow: [\"{FRONTEND}\"]}}]"),
            extra: "secrets:\n  - {name: app, path: secret/data/app}\n  - {name: db, path: database/creds/app}\n",
            ..SidecarSpec::new("shop", "orders", v.token("shop", "orders"))
        },
        &[
            ("KEYWARD_LOG_FORMAT", "json"),
            ("KEYWARD_LOG", "trace"),
            ("KEYWARD_AUDIT_STDOUT", "true"),
        ],
    );
    s.wait_ready().await;

    // Every path that handles a secret: reads (JSON, raw key, list), the identity with its key,
    // an allowed and a refused mTLS connection.
    let get = |p: &'static str| support::broker::get(&s.socket, p);
    let kv = get("/v1/secrets/app/password").await;
    assert_eq!(kv.body, canary, "the canary was served");
    let db = get("/v1/secrets/db/password").await;
    assert_eq!(db.status, 200, "{}", db.body);
    let db_password = db.body.clone();
    assert!(
        db_password.len() >= 8,
        "a database password: {db_password:?}"
    );
    assert!(get("/v1/secrets/db").await.status == 200);
    assert!(get("/v1/secrets/app").await.status == 200);
    assert!(get("/v1/secrets").await.status == 200);
    let id = get("/v1/identity").await;
    assert_eq!(id.status, 200, "{}", id.body);
    let key_pem = id.json()["private_key_pem"]
        .as_str()
        .expect("SVID key")
        .to_owned();
    let (chain, key) = pki.issue(&v.bao, FRONTEND, "1h").await;
    let tls = raw_mtls(inbound, Some((&chain, &key)))
        .await
        .expect("handshake");
    assert_eq!(roundtrip(tls, b"hi").await.expect("echo"), b"hibye");
    let (chain, key) = pki.issue(&v.bao, REPORTS, "1h").await;
    if let Ok(tls) = raw_mtls(inbound, Some((&chain, &key))).await {
        assert!(
            roundtrip(tls, b"hi").await.is_err(),
            "reports is not allowed"
        );
    }
    eventually(WAIT, "the refusal audited", || {
        let n = s
            .audit_records()
            .iter()
            .filter(|r| r["action"] == "conn.inbound" && r["decision"] == "deny")
            .count();
        async move { (n > 0).then_some(()) }
    })
    .await;

    // What must never show: the secret values, the Vault token and its accessor, the lease id,
    // the SVID's private key (its base64 body and each of its lines).
    let sent = tap.server_text();
    let token = json_string_after(&sent, "client_token");
    let accessor = json_string_after(&sent, "accessor");
    let leases = support::live_leases(&v.bao, "database/creds/app/").await;
    assert_eq!(leases.len(), 1, "the sidecar's one lease: {leases:?}");
    let key_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!key_lines.is_empty(), "a PEM key body");
    let key_body: String = key_lines.concat();
    let mut needles: Vec<(&str, String)> = vec![
        ("the KV canary", canary.clone()),
        ("the database password", db_password),
        ("the Vault token", token),
        ("the token accessor", accessor),
        ("the lease id", leases[0].clone()),
        ("the SVID key", key_body),
    ];
    needles.extend(
        key_lines
            .iter()
            .map(|l| ("a line of the SVID key", (*l).to_owned())),
    );

    let stderr = s.log();
    let stdout = std::fs::read_to_string(s.dir.path().join("stdout.log")).expect("sidecar stdout");
    let audit = std::fs::read_to_string(&s.audit).expect("audit log");
    let (status, metrics) = s.admin_get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let (_, ready) = s.admin_get("/ready").await.expect("ready");

    // The switch took effect: every log line is a JSON object, trace events included.
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"),
        "trace events are logged"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" && l.to_string().contains("keyward_proxy")),
        "the proxy's debug events are logged"
    );
    assert!(
        stdout.contains("\"action\":\"secret.read\""),
        "the audit records are copied to stdout"
    );
    for (where_, text) in [
        ("stderr (JSON log)", &stderr),
        ("stdout", &stdout),
        ("the audit log", &audit),
        ("/metrics", &metrics),
        ("/ready", &ready),
    ] {
        for (what, needle) in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{what} appears in {where_}"
            );
        }
    }
    support::assert_no_panic("the sidecar", &stderr);
}
