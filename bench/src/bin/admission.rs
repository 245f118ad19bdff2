//! Admission benchmark: AdmissionReviews of a typical pod sent at a fixed rate to a running
//! `keyward injector`, reporting the achieved reviews/s and latency percentiles.
//!
//! With `--keyward BIN` the driver mints a certificate, starts `BIN injector` on a free loopback
//! port and stops it at the end; with `--addr HOST:PORT --ca FILE` it targets a webhook that is
//! already running. Load is open-loop: request k is due at `start + k / rate`, and its latency
//! is measured from that due time, so a stalled server shows up in the percentiles instead of
//! silently lowering the offered rate.
//!
//! ```text
//! cargo build --release --bin keyward --bin admission -p keyward -p keyward-bench
//! target/release/admission --keyward target/release/keyward --rate 1000 --seconds 20
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

struct Args {
    keyward: Option<PathBuf>,
    addr: Option<SocketAddr>,
    ca: Option<PathBuf>,
    rate: u64,
    seconds: u64,
    warmup: u64,
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        keyward: None,
        addr: None,
        ca: None,
        rate: 1000,
        seconds: 20,
        warmup: 2,
        connections: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--keyward" => a.keyward = Some(PathBuf::from(value()?)),
            "--addr" => a.addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--ca" => a.ca = Some(PathBuf::from(value()?)),
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--connections" => {
                a.connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "-h" | "--help" => {
                return Err("usage: admission (--keyward BIN | --addr HOST:PORT --ca FILE) [--rate N] [--seconds N] [--warmup N] [--connections N]".to_owned())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.keyward.is_none() && (a.addr.is_none() || a.ca.is_none()) {
        return Err("give --keyward BIN, or --addr and --ca".to_owned());
    }
    if a.rate == 0 || a.connections == 0 {
        return Err("--rate and --connections must be positive".to_owned());
    }
    Ok(a)
}

/// A typical pod: two containers, volumes, two secrets and one inbound mTLS port.
fn typical_review(i: u64) -> Vec<u8> {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{i}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "f3b1", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "generateName": "orders-6b7c9d5f4-",
                    "namespace": "shop",
                    "labels": {"app": "orders", "pod-template-hash": "6b7c9d5f4", "app.kubernetes.io/version": "1.4.2"},
                    "annotations": {
                        "keyward.io/role": "shop-orders",
                        "keyward.io/secret-db": "database/creds/orders#password",
                        "keyward.io/secret-db-uids": "10001",
                        "keyward.io/secret-stripe": "secret/data/shop/stripe#api_key",
                        "keyward.io/inbound": "15443:8080",
                        "keyward.io/inbound-allow-15443": "spiffe://cluster.local/ns/shop/sa/frontend,spiffe://cluster.local/ns/edge/*",
                        "prometheus.io/scrape": "true"
                    },
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-6b7c9d5f4", "uid": "5c0e", "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "serviceAccountName": "orders",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {"name": "app", "image": "registry.example/orders:1.4.2", "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                         "env": [{"name": "PORT", "value": "8080"}, {"name": "LOG_LEVEL", "value": "info"}],
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                        {"name": "log-shipper", "image": "registry.example/vector:0.40", "args": ["--config", "/etc/vector/vector.yaml"],
                         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
                    "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30
                }
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    serde_json::to_vec(&review).unwrap_or_default()
}

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &PathBuf) -> Result<(Server, SocketAddr, CertificateDer<'static>), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem())
        .map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(bin)
        .arg("injector")
        .arg(format!("--listen={addr}"))
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("KEYWARD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    Ok((Server { child, _dir: dir }, addr, ck.cert.der().clone()))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<Sender, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Sender, body: Bytes) -> Result<bool, String> {
    let req = http::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status() == 200;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(ok && memchr_allowed(&body))
}

fn memchr_allowed(body: &[u8]) -> bool {
    body.windows(14).any(|w| w == b"\"allowed\":true")
}

async fn wait_ready(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match connect(addr, root).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("webhook not up: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(args: Args) -> Result<(), String> {
    let (_server, addr, root) = match (&args.keyward, args.addr, &args.ca) {
        (Some(bin), _, _) => {
            let (s, a, r) = start_server(bin)?;
            (Some(s), a, r)
        }
        (None, Some(addr), Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let der = CertificateDer::pem_slice_iter(&pem)
                .next()
                .ok_or("no certificate in --ca")?
                .map_err(|e| e.to_string())?;
            (None, addr, der)
        }
        _ => return Err("give --keyward BIN, or --addr and --ca".to_owned()),
    };
    wait_ready(addr, &root).await?;
    let bodies: Arc<Vec<Bytes>> =
        Arc::new((0..64).map(|i| Bytes::from(typical_review(i))).collect());
    let size = bodies[0].len();
    let n = args.connections;
    let interval = Duration::from_nanos(1_000_000_000 / args.rate);
    let total = args.rate * (args.warmup + args.seconds);
    let warm = args.rate * args.warmup;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for c in 0..n {
        let mut sender = connect(addr, &root).await?;
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0u64;
            let mut k = c as u64;
            let mut prev_done = start;
            while k < total {
                let due = start + interval * (k as u32);
                tokio::time::sleep_until(due.into()).await;
                // Latency counts from the due time when this connection was still busy with
                // the previous request (the server fell behind), else from the actual send:
                // tokio's timer wakes up to 1 ms late, which is the driver's delay, not the
                // server's.
                let from = if prev_done > due { due } else { Instant::now() };
                let body = bodies[(k % bodies.len() as u64) as usize].clone();
                let ok = matches!(send(&mut sender, body).await, Ok(true));
                prev_done = Instant::now();
                let took = prev_done - from;
                if k >= warm {
                    if ok {
                        lat.push(took);
                    } else {
                        failures += 1;
                    }
                }
                k += n as u64;
            }
            (lat, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (lat, f) = t.await.map_err(|e| e.to_string())?;
        all.extend(lat);
        failures += f;
    }
    let measured = start + interval * (warm as u32);
    let elapsed = measured.elapsed().as_secs_f64();
    all.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "offered {} reviews/s for {} s over {} connections, review body {} bytes",
        args.rate, args.seconds, n, size
    );
    println!(
        "completed {} reviews ({} failed) in {:.2} s: {:.0} reviews/s",
        all.len(),
        failures,
        elapsed,
        all.len() as f64 / elapsed
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.90)),
        ms(percentile(&all, 0.99)),
        ms(percentile(&all, 0.999)),
        ms(all.last().copied().unwrap_or_default())
    );
    if failures > 0 {
        return Err(format!("{failures} reviews failed"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("admission: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("admission: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("admission: {e}");
            ExitCode::FAILURE
        }
    }
}
