//! The webhook over a real TLS loopback socket with rcgen-minted certificates: status codes for
//! each kind of request, metrics, and certificate reload.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyward_injector::config::InjectorConfig;
use keyward_injector::server::{self, ServerOptions, TlsReloader, Webhook};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

struct Minted {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn mint() -> Minted {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen");
    Minted {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

/// Writes the pair the way a Secret volume update does: new files renamed into place.
fn install(dir: &Path, m: &Minted) {
    for (name, text) in [("tls.crt", &m.cert_pem), ("tls.key", &m.key_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    app: Arc<Webhook>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

async fn start(dir: &Path) -> Running {
    let tls = Arc::new(TlsReloader::new(dir.join("tls.crt"), dir.join("tls.key")).expect("tls"));
    let opts = ServerOptions {
        request_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let app = Arc::new(Webhook::new(InjectorConfig::default(), opts));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, tls, app.clone(), async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
        app,
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    root: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(std::io::Error::other)?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

async fn request(
    addr: std::net::SocketAddr,
    root: &CertificateDer<'static>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let tls = connect(addr, root).await.expect("TLS connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

fn fixture() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/minimal.review.json"))
        .expect("fixture")
}

#[tokio::test]
async fn webhook_answers_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = mint();
    install(dir.path(), &m);
    let srv = start(dir.path()).await;
    let addr = srv.addr;

    let (status, body) = request(addr, &m.der, "GET", "/healthz", vec![]).await;
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));

    let (status, body) = request(addr, &m.der, "POST", "/mutate", fixture()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["uid"], "uid-minimal");
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    // Not a Pod: allowed unchanged.
    let mut other: Value = serde_json::from_slice(&fixture()).expect("json");
    other["request"]["kind"] = serde_json::json!({"group": "", "version": "v1", "kind": "Service"});
    other["request"]["object"] =
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
    let (status, body) = request(
        addr,
        &m.der,
        "POST",
        "/mutate",
        serde_json::to_vec(&other).expect("json"),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());

    // Malformed JSON and unknown apiVersion: 400 with a clear message.
    let (status, body) = request(
        addr,
        &m.der,
        "POST",
        "/mutate",
        b"{\"apiVersion\":".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).starts_with("request body is not valid JSON"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let old = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec();
    let (status, body) = request(addr, &m.der, "POST", "/mutate", old).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body)
        .contains("unsupported AdmissionReview apiVersion 'admission.k8s.io/v1beta1'"));

    // Bodies over 3 MiB: 413, whether announced by Content-Length or streamed chunked.
    let (status, _) = request(
        addr,
        &m.der,
        "POST",
        "/mutate",
        vec![b' '; server::MAX_BODY + 1],
    )
    .await;
    assert_eq!(status, 413);
    let mut tls = connect(addr, &m.der).await.expect("connect");
    tls.write_all(
        b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .expect("write");
    let chunk = vec![b' '; 1 << 20];
    let mut status_line = Vec::new();
    for _ in 0..4 {
        let head = format!("{:x}\r\n", chunk.len());
        if tls.write_all(head.as_bytes()).await.is_err()
            || tls.write_all(&chunk).await.is_err()
            || tls.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut buf = [0u8; 64];
    if let Ok(n) = tls.read(&mut buf).await {
        status_line.extend_from_slice(&buf[..n]);
    }
    assert!(
        status_line.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&status_line)
    );

    let (status, _) = request(addr, &m.der, "GET", "/mutate", vec![]).await;
    assert_eq!(status, 405);
    let (status, _) = request(addr, &m.der, "GET", "/nope", vec![]).await;
    assert_eq!(status, 404);

    let (status, body) = request(addr, &m.der, "GET", "/metrics", vec![]).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("keyward_injector_reviews_total{outcome=\"injected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("keyward_injector_reviews_total{outcome=\"ignored\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("keyward_injector_reviews_total{outcome=\"bad_request\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("keyward_injector_review_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        srv.app
            .metrics()
            .encode()
            .contains("keyward_injector_review_duration_seconds_count 6"),
        "{text}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn certificate_is_reloaded_when_the_files_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = mint();
    install(dir.path(), &first);
    let srv = start(dir.path()).await;
    let (status, _) = request(srv.addr, &first.der, "GET", "/healthz", vec![]).await;
    assert_eq!(status, 200);

    let second = mint();
    install(dir.path(), &second);
    // The next connection is served with the new certificate; poll with a deadline in case the
    // file system's timestamps are coarse.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if connect(srv.addr, &second.der).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served within 10 s"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        connect(srv.addr, &first.der).await.is_err(),
        "old certificate still served"
    );
    let (status, _) = request(srv.addr, &second.der, "GET", "/healthz", vec![]).await;
    assert_eq!(status, 200);

    // A broken pair is ignored: the server keeps the last good certificate.
    std::fs::write(dir.path().join("tls.key"), "not a key").expect("write");
    let (status, _) = request(srv.addr, &second.der, "GET", "/healthz", vec![]).await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[test]
fn unusable_credentials_are_refused_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = TlsReloader::new(
        dir.path().join("missing.crt"),
        dir.path().join("missing.key"),
    )
    .expect_err("missing");
    assert!(err.to_string().starts_with("reading "), "{err}");
    std::fs::write(dir.path().join("tls.crt"), "junk").expect("write");
    std::fs::write(dir.path().join("tls.key"), "junk").expect("write");
    let err =
        TlsReloader::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).expect_err("junk");
    assert!(
        err.to_string().ends_with("holds no PEM certificate"),
        "{err}"
    );
    let a = mint();
    let b = mint();
    std::fs::write(dir.path().join("tls.crt"), &a.cert_pem).expect("write");
    std::fs::write(dir.path().join("tls.key"), &b.key_pem).expect("write");
    let err = TlsReloader::new(dir.path().join("tls.crt"), dir.path().join("tls.key"))
        .expect_err("mismatch");
    assert!(err.to_string().contains("cannot be used"), "{err}");
}
