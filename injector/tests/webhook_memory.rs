//! The webhook as a real process under hostile load: 200 concurrent maximum-size bodies keep its
//! peak RSS (VmHWM) within the chart's memory limit, with 503/413 answers and normal reviews
//! served afterwards; and an accept loop out of file descriptors backs off instead of spinning.
//!
//! The injector runs in a child process: this test binary re-executed with `KW_CHILD_DIR` set runs
//! `keyward injector` (the same `cli::run_injector`) in `child_injector_process`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const MIB: usize = 1024 * 1024;

/// Runs the injector when re-executed by [`Injector::start`]; a no-op in a normal test run.
#[test]
fn child_injector_process() {
    let Some(dir) = std::env::var_os("KW_CHILD_DIR").map(PathBuf::from) else {
        return;
    };
    let port: u16 = std::env::var("KW_CHILD_PORT")
        .expect("port")
        .parse()
        .expect("port");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .init();
    let args = keyward_injector::cli::InjectorArgs {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls_cert: dir.join("tls.crt"),
        tls_key: dir.join("tls.key"),
        config: None,
        metrics_listen: None,
        max_connections: 512,
        max_concurrent_reviews: 64,
        request_timeout_secs: 10,
        memory_budget_mib: 40,
        self_signed: Default::default(),
    };
    let _ = keyward_injector::cli::run_injector(args);
}

struct Injector {
    child: Child,
    addr: SocketAddr,
    root: CertificateDer<'static>,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Injector {
    /// Starts the injector child, with `RLIMIT_NOFILE` set to `nofile` when given, and waits for
    /// its "listening" log line.
    fn start(nofile: Option<u32>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).expect("write");
        std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem()).expect("write");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(["child_injector_process", "--exact", "--nocapture"])
            .env("KW_CHILD_DIR", dir.path())
            .env("KW_CHILD_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the injector");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            root: ck.cert.der().clone(),
            lines,
            _dir: dir,
        };
        me.wait_for_line("Injector webhook listening");
        me
    }

    /// Waits (up to a generous deadline) for a log line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with '{needle}': {e}"),
            }
        }
    }

    /// The peak resident set of the injector process, in bytes.
    fn peak_rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib * 1024
    }
}

fn connector(root: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

/// POSTs `body` to /mutate; the status, or the I/O error as text.
async fn post(addr: SocketAddr, tls: TlsConnector, body: Bytes) -> Result<(u16, Vec<u8>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

fn review(annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "4f1c",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "mallory"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "annotations": annotations}, "spec": spec},
        },
    })
}

fn app() -> Value {
    json!({"containers": [{"name": "app", "image": "a"}]})
}

/// A valid review of exactly `size` bytes: one big annotation value.
fn big_review(size: usize) -> Bytes {
    let empty = serde_json::to_vec(&review(json!({"pad.example/x": ""}), app())).expect("json");
    let pad = "x".repeat(size - empty.len());
    let body = serde_json::to_vec(&review(json!({"pad.example/x": pad}), app())).expect("json");
    assert_eq!(body.len(), size);
    Bytes::from(body)
}

/// A review of about `size` bytes made of tiny containers, the shape whose parse costs most.
fn dense_review(size: usize) -> Bytes {
    let one = r#"{"name":"c","image":"i"},"#;
    let n = size / one.len() - 20;
    let containers: Vec<Value> = (0..n).map(|_| json!({"name": "c", "image": "i"})).collect();
    let body =
        serde_json::to_vec(&review(json!({}), json!({"containers": containers}))).expect("json");
    assert!(body.len() <= size, "{}", body.len());
    Bytes::from(body)
}

/// The injector container's memory limit in the chart's values.
fn chart_memory_limit() -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/keyward/values.yaml");
    let text = std::fs::read_to_string(&path).expect("values.yaml");
    let v: Value = serde_yaml_ng::from_str(&text).expect("values.yaml");
    let limit = v["resources"]["limits"]["memory"]
        .as_str()
        .expect("resources.limits.memory");
    let mib: usize = limit
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected NMi, got {limit}"));
    mib * MIB
}

#[test]
fn concurrent_maximum_size_bodies_stay_within_the_memory_limit() {
    let limit = chart_memory_limit();
    let injector = Injector::start(None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let tls = connector(&injector.root);
    let max = keyward_injector::server::MAX_BODY;
    let big = big_review(max);
    let dense = dense_review(max);
    let results: Vec<Result<(u16, Vec<u8>), String>> = rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let body = if i % 10 == 0 {
                    dense.clone()
                } else {
                    big.clone()
                };
                tokio::spawn(post(injector.addr, tls.clone(), body))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let peak = injector.peak_rss();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in &results {
        let key = match r {
            Ok((status, _)) => status.to_string(),
            Err(e) => format!("error: {e}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    eprintln!(
        "peak RSS {} MiB (limit {} MiB); answers {counts:?}",
        peak / MIB,
        limit / MIB
    );
    for r in &results {
        match r {
            Ok((200 | 503, _)) => {}
            Ok((413, body)) => assert!(
                String::from_utf8_lossy(body).contains("JSON objects"),
                "413 only for the dense bodies: {}",
                String::from_utf8_lossy(body)
            ),
            other => panic!("unexpected answer {other:?}; all: {counts:?}"),
        }
    }
    assert!(counts.get("200").is_some_and(|n| *n > 0), "{counts:?}");
    assert!(counts.get("413").is_some_and(|n| *n > 0), "{counts:?}");
    assert!(
        peak < limit,
        "peak RSS {} MiB is above the chart's limit {} MiB",
        peak / MIB,
        limit / MIB
    );

    // A normal review is answered with a patch afterwards.
    let normal = Bytes::from(serde_json::to_vec(&review(json!(null), app())).expect("json"));
    let (status, body) = rt
        .block_on(post(injector.addr, tls, normal))
        .expect("normal review");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"]["patch"].is_string());
}

#[test]
fn accept_loop_backs_off_when_out_of_file_descriptors() {
    let mut injector = Injector::start(Some(40));
    // Hold more plain TCP connections than the injector has descriptors left; it keeps each
    // for the TLS handshake timeout, so accepting the rest fails with EMFILE.
    let held: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(injector.addr).expect("connect"))
        .collect();
    injector.wait_for_line("Accept failed");
    // A spinning loop logs thousands of lines in this window; backing off logs one.
    let window = Instant::now() + Duration::from_millis(1500);
    let mut more = 0;
    while let Some(left) = window.checked_duration_since(Instant::now()) {
        match injector.lines.recv_timeout(left) {
            Ok(line) if line.contains("Accept failed") => more += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(more <= 1, "{more} more 'Accept failed' lines in 1.5 s");
    drop(held);
    // Once descriptors are free again, reviews are served.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let normal = Bytes::from(serde_json::to_vec(&review(json!(null), app())).expect("json"));
    let (status, _) = rt
        .block_on(post(injector.addr, connector(&injector.root), normal))
        .expect("review after the flood");
    assert_eq!(status, 200);
}
