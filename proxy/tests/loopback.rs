//! The proxy over real sockets on 127.0.0.1 with rcgen-minted certificates: no Vault.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyward_audit::{AuditConfig, AuditLog};
use keyward_identity::{IdPattern, SpiffeId};
use keyward_proxy::config::{InboundConfig, OutboundConfig};
use keyward_proxy::identity::{IdentityStore, Rotator};
use keyward_proxy::metrics::Metrics;
use keyward_proxy::policy::Policy;
use keyward_proxy::server::{Limits, Proxy};
use keyward_proxy::tls;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::testpki::{Leaf, Minted, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TD: &str = "td";
const SERVER: &str = "spiffe://td/ns/shop/sa/orders";
const CLIENT: &str = "spiffe://td/ns/shop/sa/frontend";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("id")
}

struct Env {
    ca: Arc<TestCa>,
    dir: tempfile::TempDir,
    audit: Arc<AuditLog>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Arc::new(
            AuditLog::open(AuditConfig {
                path: dir.path().join("audit.log"),
                stdout: false,
                hmac_key: None,
                fsync: false,
            })
            .expect("audit"),
        );
        Self {
            ca: Arc::new(TestCa::new(TD)),
            dir,
            audit,
        }
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    /// Polls the audit log until a record matches.
    async fn wait_audit(&self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.audit_lines().into_iter().find(|r| f(r)) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching audit record in {:#?}",
                self.audit_lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn store(&self, spiffe_id: &str) -> Arc<IdentityStore> {
        let store = Arc::new(IdentityStore::new(TD));
        let rot = self.rotator(&store, spiffe_id, Duration::from_secs(3600));
        rot.issue_once().await.expect("issue");
        store
    }

    fn rotator(&self, store: &Arc<IdentityStore>, spiffe_id: &str, ttl: Duration) -> Rotator {
        Rotator {
            store: store.clone(),
            signer: self.ca.clone(),
            id: id(spiffe_id),
            ttl,
            bundle_override: None,
            audit: self.audit.clone(),
            metrics: Metrics::default(),
        }
    }
}

fn limits() -> Limits {
    Limits {
        allow_tls12: false,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_connections: 100,
    }
}

/// An echo server that also reports what it read, and writes "bye" after the client's EOF.
async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

struct Inbound {
    addr: SocketAddr,
    proxy: Proxy,
    policy: watch::Sender<Arc<Policy>>,
    metrics: Metrics,
}

async fn start_inbound(env: &Env, allow: &[&str], forward: SocketAddr, pp: bool) -> Inbound {
    let store = env.store(SERVER).await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let policy = Policy::from_ports([(
        addr.port(),
        allow
            .iter()
            .map(|a| IdPattern::parse(a).expect("pattern"))
            .collect(),
    )]);
    let (tx, rx) = watch::channel(Arc::new(policy));
    let metrics = Metrics::default();
    let proxy = Proxy::new(limits(), store, rx, env.audit.clone(), metrics.clone());
    proxy
        .inbound(
            l,
            InboundConfig {
                listen: addr,
                forward: forward.to_string(),
                allow: vec![],
                proxy_protocol: pp,
            },
        )
        .expect("inbound");
    Inbound {
        addr,
        proxy,
        policy: tx,
        metrics,
    }
}

/// A raw mTLS client presenting `cert` (or nothing) and accepting any server.
async fn raw_client(
    addr: SocketAddr,
    cert: Option<&Minted>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::versions(false))
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let cfg = match cert {
        Some(m) => builder
            .with_client_auth_cert(
                m.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(m.key_der.to_vec())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("orders").expect("name"), tcp)
        .await
}

#[derive(Debug)]
struct AnyServer;
impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &tls::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends `data`, half-closes, and reads everything back.
async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    s: S,
    data: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await?;
    writer.await.expect("join")?;
    Ok(back)
}

#[tokio::test]
async fn allowed_peer_gets_byte_exact_echo_with_half_close() {
    let env = Env::new();
    let app = echo_app().await;
    let inb = start_inbound(&env, &[CLIENT], app, false).await;
    let client = env.ca.leaf(Leaf::new(CLIENT));
    let s = raw_client(inb.addr, Some(&client)).await.expect("connect");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let back = roundtrip(s, data.clone()).await.expect("roundtrip");
    assert_eq!(back.len(), data.len() + 3);
    assert_eq!(&back[..data.len()], &data[..]);
    assert_eq!(&back[data.len()..], b"bye");
    let r = env
        .wait_audit(|r| r["action"] == "conn.inbound" && r["decision"] == "allow")
        .await;
    assert_eq!(r["peer"]["spiffe_id"], CLIENT);
    assert_eq!(r["port"], inb.addr.port());
    assert_eq!(inb.proxy.drain(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn bad_peers_are_denied_with_reason() {
    let env = Env::new();
    let app = echo_app().await;
    let inb = start_inbound(&env, &["spiffe://td/ns/shop/*"], app, false).await;
    let stranger_ca = TestCa::new(TD);
    let cases: Vec<(Option<Minted>, &str)> = vec![
        (
            Some(env.ca.leaf(Leaf::new("spiffe://td/ns/other/sa/x"))),
            "not allowed",
        ),
        (
            Some(
                env.ca
                    .leaf(Leaf::new(CLIENT).extra_uri("spiffe://td/ns/shop/sa/b")),
            ),
            "exactly one URI SAN",
        ),
        (Some(env.ca.leaf(Leaf::new(CLIENT).ca())), "is a CA"),
        (
            Some(
                env.ca
                    .leaf(Leaf::new("spiffe://other.td/ns/shop/sa/frontend")),
            ),
            "not in trust domain",
        ),
        (Some(env.ca.leaf(Leaf::new(CLIENT).expired())), "expired"),
        (Some(stranger_ca.leaf(Leaf::new(CLIENT))), "unknown CA"),
        (None, "no client certificate"),
    ];
    for (cert, reason) in cases {
        let before = env.audit_lines().len();
        // TLS 1.3: the client finishes first; the refusal arrives as an alert on read.
        let outcome = match raw_client(inb.addr, cert.as_ref()).await {
            Err(e) => Err(e),
            Ok(s) => roundtrip(s, b"hello".to_vec()).await,
        };
        assert!(outcome.is_err(), "{reason}: got {outcome:?}");
        let r = env
            .wait_audit(|r| {
                r["seq"].as_u64().unwrap_or(0) as usize > before && r["action"] == "conn.inbound"
            })
            .await;
        assert_eq!(r["decision"], "deny", "{reason}");
        let got = r["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "want {reason:?}, got {got:?}");
    }
    // The policy denial carries the peer's ID, and the client got access_denied.
    let denied = env.ca.leaf(Leaf::new("spiffe://td/ns/other/sa/x"));
    let s = raw_client(inb.addr, Some(&denied))
        .await
        .expect("handshake");
    let err = roundtrip(s, b"x".to_vec()).await.expect_err("denied");
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let r = env
        .wait_audit(|r| r["peer"]["spiffe_id"] == "spiffe://td/ns/other/sa/x")
        .await;
    assert_eq!(r["decision"], "deny");

    // Plain TCP.
    let before = env.audit_lines().len();
    let mut tcp = TcpStream::connect(inb.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    let r = env
        .wait_audit(|r| r["seq"].as_u64().unwrap_or(0) as usize > before)
        .await;
    assert_eq!(r["decision"], "deny");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a TLS"),
        "{r}"
    );
    assert!(
        inb.metrics
            .authz
            .get_or_create(&keyward_proxy::metrics::AuthzLabels {
                direction: "inbound",
                port: inb.addr.port(),
                decision: "deny"
            })
            .get()
            >= 2
    );
}

#[tokio::test]
async fn outbound_to_inbound_and_expected_ids() {
    let env = Env::new();
    let app = echo_app().await;
    let inb = start_inbound(&env, &[CLIENT], app, false).await;

    let client_store = env.store(CLIENT).await;
    let (_tx, rx) = watch::channel(Arc::new(Policy::default()));
    let out = Proxy::new(
        limits(),
        client_store,
        rx,
        env.audit.clone(),
        Metrics::default(),
    );
    let good = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let good_addr = good.local_addr().expect("addr");
    out.outbound(
        good,
        OutboundConfig {
            listen: good_addr,
            upstream: inb.addr.to_string(),
            expect: vec![id(SERVER)],
        },
    )
    .expect("outbound");
    let wrong = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let wrong_addr = wrong.local_addr().expect("addr");
    out.outbound(
        wrong,
        OutboundConfig {
            listen: wrong_addr,
            upstream: inb.addr.to_string(),
            expect: vec![id("spiffe://td/ns/shop/sa/payments")],
        },
    )
    .expect("outbound");

    let s = TcpStream::connect(good_addr).await.expect("connect");
    let back = roundtrip(s, b"ping".to_vec()).await.expect("roundtrip");
    assert_eq!(back, b"pingbye");
    let r = env
        .wait_audit(|r| r["action"] == "conn.outbound" && r["decision"] == "allow")
        .await;
    assert_eq!(r["peer"]["spiffe_id"], SERVER);

    let s = TcpStream::connect(wrong_addr).await.expect("connect");
    let back = roundtrip(s, b"ping".to_vec()).await.unwrap_or_default();
    assert!(back.is_empty(), "{back:?}");
    let r = env
        .wait_audit(|r| r["action"] == "conn.outbound" && r["decision"] == "deny")
        .await;
    assert_eq!(r["peer"]["spiffe_id"], SERVER);
    assert!(r["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("not one of the expected"));
}

#[tokio::test]
async fn proxy_protocol_tells_the_app_who_called() {
    let env = Env::new();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = l.local_addr().expect("addr");
    let inb = start_inbound(&env, &[CLIENT], app, true).await;
    let client = env.ca.leaf(Leaf::new(CLIENT));
    let mut s = raw_client(inb.addr, Some(&client)).await.expect("connect");
    s.write_all(b"hi").await.expect("write");
    let (mut conn, _) = l.accept().await.expect("accept");
    let mut buf = Vec::new();
    let header = loop {
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).await.expect("read");
        assert!(n > 0, "EOF before header");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((h, used)) = keyward_proxy::proxy_protocol::decode(&buf) {
            if buf.len() >= used + 2 {
                assert_eq!(&buf[used..used + 2], b"hi");
                break h;
            }
        }
    };
    assert_eq!(header.spiffe_id.as_deref(), Some(CLIENT));
    assert_eq!(header.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(header.dst, inb.addr);
}

#[tokio::test]
async fn policy_revoke_closes_open_connection_within_a_second() {
    let env = Env::new();
    let app = echo_app().await;
    let inb = start_inbound(&env, &[CLIENT, "spiffe://td/ns/ops/*"], app, false).await;
    let client = env.ca.leaf(Leaf::new(CLIENT));
    let ops = env.ca.leaf(Leaf::new("spiffe://td/ns/ops/sa/admin"));
    let mut s = raw_client(inb.addr, Some(&client)).await.expect("connect");
    let mut keep = raw_client(inb.addr, Some(&ops)).await.expect("connect");
    for c in [&mut s, &mut keep] {
        c.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.expect("echo");
    }
    let start = tokio::time::Instant::now();
    inb.policy.send_replace(Arc::new(Policy::from_ports([(
        inb.addr.port(),
        vec![IdPattern::parse("spiffe://td/ns/ops/*").expect("pattern")],
    )])));
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b))
        .await
        .expect("closed within 1s");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
    // The still-allowed peer is untouched.
    keep.write_all(b"y").await.expect("write");
    keep.read_exact(&mut b[..1]).await.expect("still open");
    env.wait_audit(|r| {
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no longer allowed")
    })
    .await;
    assert_eq!(inb.metrics.connections_revoked.get(), 1);
}

#[tokio::test]
async fn rotation_keeps_connections_and_new_handshakes_use_the_new_cert() {
    let env = Env::new();
    let app = echo_app().await;
    let store = Arc::new(IdentityStore::new(TD));
    let rot = env.rotator(&store, SERVER, Duration::from_secs(3600));
    rot.issue_once().await.expect("issue");
    let first = store.current().expect("svid");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (_tx, rx) = watch::channel(Arc::new(Policy::from_ports([(
        addr.port(),
        vec![IdPattern::parse(CLIENT).expect("p")],
    )])));
    let proxy = Proxy::new(
        limits(),
        store.clone(),
        rx,
        env.audit.clone(),
        Metrics::default(),
    );
    proxy
        .inbound(
            l,
            InboundConfig {
                listen: addr,
                forward: app.to_string(),
                allow: vec![],
                proxy_protocol: false,
            },
        )
        .expect("inbound");
    let client = env.ca.leaf(Leaf::new(CLIENT));
    let mut old = raw_client(addr, Some(&client)).await.expect("connect");
    assert_eq!(
        old.get_ref().1.peer_certificates().expect("certs")[0],
        first.chain()[0]
    );
    rot.issue_once().await.expect("rotate");
    let second = store.current().expect("svid");
    assert_ne!(first.chain()[0], second.chain()[0]);
    let new = raw_client(addr, Some(&client)).await.expect("connect");
    assert_eq!(
        new.get_ref().1.peer_certificates().expect("certs")[0],
        second.chain()[0]
    );
    old.write_all(b"still here").await.expect("write");
    let mut b = [0u8; 10];
    old.read_exact(&mut b)
        .await
        .expect("old connection continues");
    assert_eq!(&b, b"still here");
    let issued = env
        .audit_lines()
        .into_iter()
        .filter(|r| r["action"] == "svid.issue" && r["decision"] == "ok")
        .count();
    assert_eq!(issued, 2);
}

#[tokio::test]
async fn drain_waits_for_open_connections_then_refuses_new_ones() {
    let env = Env::new();
    let app = echo_app().await;
    let inb = start_inbound(&env, &[CLIENT], app, false).await;
    let client = env.ca.leaf(Leaf::new(CLIENT));
    let mut s = raw_client(inb.addr, Some(&client)).await.expect("connect");
    s.write_all(b"a").await.expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("echo");
    let proxy = inb.proxy.clone();
    let drain = tokio::spawn(async move { proxy.drain(Duration::from_secs(10)).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(inb.addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open connection still works during the drain, then ends normally.
    s.write_all(b"b").await.expect("write");
    s.read_exact(&mut b).await.expect("echo while draining");
    s.shutdown().await.expect("close");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert_eq!(drain.await.expect("join"), 0);

    // A connection that does not finish is cut at the end of the grace period.
    let env = Env::new();
    let inb = start_inbound(&env, &[CLIENT], echo_app().await, false).await;
    let mut s = raw_client(inb.addr, Some(&client_of(&env)))
        .await
        .expect("connect");
    s.write_all(b"a").await.expect("write");
    s.read_exact(&mut b).await.expect("echo");
    assert_eq!(inb.proxy.drain(Duration::from_millis(200)).await, 1);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

fn client_of(env: &Env) -> Minted {
    env.ca.leaf(Leaf::new(CLIENT))
}

/// An app that counts the connections it accepted and the bytes it read.
async fn counting_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let b = bytes.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    b.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, bytes)
}

#[tokio::test]
async fn policy_revoke_while_the_app_connect_is_pending_closes_the_connection() {
    let env = Env::new();
    let (app, app_bytes) = counting_app().await;
    let inb = start_inbound(&env, &[CLIENT], app, false).await;
    // Hold every app connect until the test says so, and say when one is waiting.
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    inb.proxy.set_connect_hook(Arc::new(move || {
        let _ = entered_tx.send(());
        let r = r.clone();
        Box::pin(async move { r.notified().await })
    }));

    let client = env.ca.leaf(Leaf::new(CLIENT));
    let mut s = raw_client(inb.addr, Some(&client)).await.expect("connect");
    s.write_all(b"secret request").await.expect("write");
    tokio::time::timeout(Duration::from_secs(10), entered.recv())
        .await
        .expect("the connection reaches the app connect")
        .expect("hook alive");
    env.wait_audit(|r| r["action"] == "conn.inbound" && r["decision"] == "allow")
        .await;

    // The policy changes while the connect is pending; then the connect may go on.
    inb.policy.send_replace(Arc::new(Policy::from_ports([(
        inb.addr.port(),
        vec![IdPattern::parse("spiffe://td/ns/ops/*").expect("pattern")],
    )])));
    release.notify_one();

    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("connection closed after the revoke");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let deny = env
        .wait_audit(|r| r["action"] == "conn.inbound" && r["decision"] == "deny")
        .await;
    assert_eq!(deny["peer"]["spiffe_id"], CLIENT);
    assert!(
        deny["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("policy changed"),
        "{deny}"
    );
    assert_eq!(inb.metrics.connections_revoked.get(), 1);
    assert_eq!(
        app_bytes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no byte reached the app"
    );
}
