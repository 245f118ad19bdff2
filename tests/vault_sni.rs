//! The TLS SNI the broker sends to Vault, read from the ClientHello bytes on the wire: with
//! `vault.tls_server_name` set it is that name (Vault's own `VAULT_TLS_SERVER_NAME` semantics),
//! whether `vault.addr` is an IP address or another name, and the HTTP `Host` header is that
//! name with the address's port; without it an IP address sends no SNI at all. Vault is a real
//! OpenBao behind a TLS front (this file's `Front`) that records each connection's bytes as
//! they arrive and, after the handshake, the plaintext requests.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use keyward_testkit::testpki::{Leaf, TestCa};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use support::broker::BrokerProc;
use support::tap::self_signed_tls;
use support::{eventually, jwt, TestVault};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const SECRETS: &str = "secrets:\n  - {name: app, path: secret/data/app}\n";
const WAIT: Duration = Duration::from_secs(30);
const VAULT_NAME: &str = "vault.test";

/// What one connection's client sent: the raw bytes (the ClientHello first) and, after the
/// handshake, the plaintext.
#[derive(Clone, Default)]
struct Conn {
    raw: Arc<Mutex<Vec<u8>>>,
    plain: Arc<Mutex<Vec<u8>>>,
}

/// A stream that keeps a copy of what is read from it (the first 64 KiB).
struct Recording<S> {
    inner: S,
    copy: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let mut copy = self.copy.lock().expect("copy");
        let room = (64usize << 10).saturating_sub(copy.len());
        let new = &buf.filled()[before..];
        copy.extend_from_slice(&new[..new.len().min(room)]);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Terminates TLS on loopback with `tls` and relays the plaintext to `upstream`, recording
/// every connection.
struct Front {
    port: u16,
    conns: Arc<Mutex<Vec<Conn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    async fn start(upstream: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let port = listener.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let all = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let conn = Conn::default();
                all.lock().expect("conns").push(conn.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let raw = Recording {
                        inner: client,
                        copy: conn.raw,
                    };
                    let Ok(tls) = acceptor.accept(raw).await else {
                        return;
                    };
                    let mut plain = Recording {
                        inner: tls,
                        copy: conn.plain,
                    };
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut server).await;
                });
            }
        });
        Front { port, conns, task }
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.lock().expect("conns").clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server certificate for `vault.test` only, from `ca`.
fn vault_test_tls(ca: &TestCa) -> Arc<rustls::ServerConfig> {
    let leaf = ca.leaf(Leaf::new("spiffe://unused/x").no_uri().dns(VAULT_NAME));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(leaf.chain, key)
    .expect("server config");
    Arc::new(config)
}

/// The SNI host name of the ClientHello at the start of `raw`: `Ok(None)` when it has no
/// server_name extension (RFC 8446 4.1.2, RFC 6066 3).
fn client_hello_sni(raw: &[u8]) -> Result<Option<String>, String> {
    // The handshake messages of the leading handshake records, joined.
    let mut hs = Vec::new();
    let mut rest = raw;
    while rest.len() >= 5 && rest[0] == 22 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let body = rest.get(5..5 + len).ok_or("truncated record")?;
        hs.extend_from_slice(body);
        rest = &rest[5 + len..];
    }
    let mut r = Reader(&hs);
    if r.take(1)? != [1] {
        return Err("not a ClientHello".into());
    }
    let mut hello = Reader(r.vec(3)?);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vec(1)?; // legacy_session_id
    hello.vec(2)?; // cipher_suites
    hello.vec(1)?; // legacy_compression_methods
    let mut exts = Reader(hello.vec(2)?);
    while !exts.0.is_empty() {
        let ty = exts.len(2)?;
        let mut data = Reader(exts.vec(2)?);
        if ty != 0 {
            continue;
        }
        let mut list = Reader(data.vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.take(1)?[0];
            let name = list.vec(2)?;
            if name_type == 0 {
                return String::from_utf8(name.to_vec())
                    .map(Some)
                    .map_err(|e| e.to_string());
            }
        }
        return Err("server_name extension without a host_name".into());
    }
    Ok(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated: wanted {n}, have {}", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    /// A vector with a big-endian length of `bytes` bytes in front.
    fn vec(&mut self, bytes: usize) -> Result<&'a [u8], String> {
        let n = self.len(bytes)?;
        self.take(n)
    }
    /// A big-endian length of `bytes` bytes.
    fn len(&mut self, bytes: usize) -> Result<usize, String> {
        Ok(self
            .take(bytes)?
            .iter()
            .fold(0, |acc, b| (acc << 8) | usize::from(*b)))
    }
}

/// The `Host` header of the first request of a connection's plaintext.
fn host_header(plain: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(plain);
    let head = text.split("\r\n\r\n").next()?;
    head.lines()
        .find_map(|l| {
            l.strip_prefix("host: ")
                .or_else(|| l.strip_prefix("Host: "))
        })
        .map(str::to_owned)
}

/// `b` logs in and serves the secret.
async fn serves(b: &BrokerProc, what: &str) {
    b.wait_ready().await;
    let app = b.get("/v1/secrets/app/password").await;
    assert_eq!(app.status, 200, "{what}: {}", app.body);
    assert_eq!(app.body, "sni-canary", "{what}");
}

/// Every connection `front` got since the first `skip` ones: its ClientHello's SNI and the
/// `Host` of its first request.
fn seen(front: &Front, skip: usize) -> Vec<(Option<String>, Option<String>)> {
    let conns = front.conns();
    assert!(conns.len() > skip, "the broker connected");
    conns[skip..]
        .iter()
        .map(|c| {
            let raw = c.raw.lock().expect("raw").clone();
            let sni = client_hello_sni(&raw).unwrap_or_else(|e| panic!("ClientHello: {e}"));
            (sni, host_header(&c.plain.lock().expect("plain")))
        })
        .collect()
}

async fn vault() -> TestVault {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "sni-canary"})).await;
    v
}

fn bao_socket(v: &TestVault) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], v.bao.port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_server_name_the_sni_and_host_are_that_name_for_an_ip_or_another_name() {
    let v = vault().await;
    let ca = TestCa::new("vault");
    let front = Front::start(bao_socket(&v), vault_test_tls(&ca)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("vault-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).expect("CA");
    let ca_file = ca_file.display().to_string();
    let token = v.token("shop", "orders");
    let env = [
        ("KEYWARD_VAULT_CACERT", ca_file.as_str()),
        ("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME),
    ];
    let port = front.port;

    let by_ip = BrokerProc::start(&format!("https://127.0.0.1:{port}"), &token, SECRETS, &env);
    serves(&by_ip, "vault.addr by IP").await;
    let first = seen(&front, 0);
    for (sni, host) in &first {
        assert_eq!(sni.as_deref(), Some(VAULT_NAME), "SNI, addr by IP");
        if let Some(host) = host {
            assert_eq!(host, &format!("{VAULT_NAME}:{port}"), "Host, addr by IP");
        }
    }
    assert!(
        first.iter().any(|(_, h)| h.is_some()),
        "a request was seen: {first:?}"
    );
    drop(by_ip);

    // By another name (resolved at connect time to the front on loopback).
    let before = front.conns().len();
    let by_name = BrokerProc::start(&format!("https://localhost:{port}"), &token, SECRETS, &env);
    serves(&by_name, "vault.addr by name").await;
    let second = seen(&front, before);
    for (sni, host) in &second {
        assert_eq!(sni.as_deref(), Some(VAULT_NAME), "SNI, addr by name");
        if let Some(host) = host {
            assert_eq!(host, &format!("{VAULT_NAME}:{port}"), "Host, addr by name");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_server_name_an_ip_address_sends_no_sni() {
    let v = vault().await;
    // A certificate for 127.0.0.1 (and localhost): the address itself is the name checked.
    let (tls, cert_pem) = self_signed_tls();
    let front = Front::start(bao_socket(&v), tls).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("vault-ca.pem");
    std::fs::write(&ca_file, &cert_pem).expect("CA");
    let ca_file = ca_file.display().to_string();
    let port = front.port;
    let b = BrokerProc::start(
        &format!("https://127.0.0.1:{port}"),
        &v.token("shop", "orders"),
        SECRETS,
        &[("KEYWARD_VAULT_CACERT", ca_file.as_str())],
    );
    serves(&b, "vault.addr by IP, no tls_server_name").await;
    let all = seen(&front, 0);
    for (sni, host) in &all {
        assert_eq!(sni, &None, "no SNI for an IP address");
        if let Some(host) = host {
            assert_eq!(host, &format!("127.0.0.1:{port}"), "Host");
        }
    }
    assert!(all.iter().any(|(_, h)| h.is_some()), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_does_not_resolve_is_named_in_the_login_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("vault");
    let ca_file = dir.path().join("vault-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).expect("CA");
    let ca_file = ca_file.display().to_string();
    let token = jwt::Issuer::new().mint(&jwt::Claims::new("shop", "orders"));
    let b = BrokerProc::start(
        "https://no-such-host.invalid:8200",
        &token,
        SECRETS,
        &[
            ("KEYWARD_VAULT_CACERT", ca_file.as_str()),
            ("KEYWARD_VAULT_TLS_SERVER_NAME", VAULT_NAME),
        ],
    );
    let login = eventually(WAIT, "a vault.login audit record", || async {
        b.audit_records()
            .into_iter()
            .find(|r| r["action"] == "vault.login")
    })
    .await;
    assert_eq!(login["decision"], "error", "{login}");
    let reason = login["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("vault.addr") && reason.contains("no-such-host.invalid"),
        "the error names the configured address: {reason}"
    );
}

#[test]
fn the_client_hello_parser_reads_a_real_client_hello() {
    // A ClientHello rustls writes for "vault.test", and one for an IP address.
    fn hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        c.write_tls(&mut out).expect("ClientHello");
        out
    }
    assert_eq!(
        client_hello_sni(&hello(VAULT_NAME)),
        Ok(Some(VAULT_NAME.to_owned()))
    );
    assert_eq!(client_hello_sni(&hello("127.0.0.1")), Ok(None));
    assert!(client_hello_sni(b"GET / HTTP/1.1\r\n").is_err());
}
