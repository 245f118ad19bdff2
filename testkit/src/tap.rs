//! A wiretap in front of a real server: a loopback TCP relay that passes bytes through
//! unchanged and keeps a copy of what the server sent and a count of what the client sent.
//! Optionally it terminates TLS with a certificate of its own (a self-signed one the client
//! has no reason to trust), relaying the plaintext to the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Tap {
    pub addr: SocketAddr,
    /// Bytes clients got through to the server (after TLS, if terminated).
    to_server: Arc<AtomicU64>,
    /// Everything the server answered, across connections.
    from_server: Arc<Mutex<Vec<u8>>>,
    /// TLS handshakes that failed (the client refused the certificate, or spoke plaintext).
    handshake_failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    /// Relays loopback connections to `upstream`; with `tls`, terminates TLS first.
    pub async fn start(upstream: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = listener.local_addr().expect("addr");
        let to_server = Arc::new(AtomicU64::new(0));
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let handshake_failures = Arc::new(AtomicU64::new(0));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let (up, down, failures) = (
            to_server.clone(),
            from_server.clone(),
            handshake_failures.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (up, down, failures) = (up.clone(), down.clone(), failures.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => match a.accept(client).await {
                            Ok(tls) => relay(tls, upstream, up, down).await,
                            Err(_) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                        None => relay(client, upstream, up, down).await,
                    }
                });
            }
        });
        Tap {
            addr,
            to_server,
            from_server,
            handshake_failures,
            task,
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn bytes_to_server(&self) -> u64 {
        self.to_server.load(Ordering::SeqCst)
    }

    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::SeqCst)
    }

    /// What the server sent so far, as text.
    pub fn server_text(&self) -> String {
        String::from_utf8_lossy(&self.from_server.lock().expect("tap buffer")).into_owned()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay<S>(client: S, upstream: SocketAddr, up: Arc<AtomicU64>, down: Arc<Mutex<Vec<u8>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = server.into_split();
    let c2s = async {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            up.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = sw.shutdown().await;
    };
    let s2c = async {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = sr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            down.lock()
                .expect("tap buffer")
                .extend_from_slice(&buf[..n]);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(c2s, s2c);
}

/// A server config for a fresh self-signed certificate for 127.0.0.1 and localhost; returns
/// it with the certificate's PEM (for a client that should trust it).
pub fn self_signed_tls() -> (Arc<rustls::ServerConfig>, String) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .expect("server config");
    (Arc::new(config), cert.pem())
}
