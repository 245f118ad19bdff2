//! The broker's Vault client: TLS trust comes from keyward's config alone (never from
//! `VAULT_*`, `SSL_CERT_*` or proxy variables of the environment), every Vault answer is
//! bounded in size, and a plain-http Vault address needs an explicit setting.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::broker::{BrokerProc, KEYWARD};
use support::tap::{self_signed_tls, Tap};
use support::{eventually, rss_kib, TestVault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRETS: &str = "secrets:\n  - {name: app, path: secret/data/app}\n";
const WAIT: Duration = Duration::from_secs(30);

fn bao_socket(v: &TestVault) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], v.bao.port()))
}

/// Waits for the first `vault.login` record and returns it.
async fn first_login(b: &BrokerProc) -> serde_json::Value {
    eventually(WAIT, "a vault.login audit record", || async {
        b.audit_records()
            .into_iter()
            .find(|r| r["action"] == "vault.login")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_vault_certificate_is_refused_whatever_the_environment_says() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "tls-canary"})).await;
    // A real OpenBao behind a TLS front with a self-signed certificate nothing trusts.
    let (tls, cert_pem) = self_signed_tls();
    let front = Tap::start(bao_socket(&v), Some(tls)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("vault-ca.pem");
    std::fs::write(&cert, &cert_pem).expect("cert");
    let cert = cert.display().to_string();
    let certs_dir = dir.path().display().to_string();
    let token = v.token("shop", "orders");

    // Trusted through keyward's own setting, the same front works: the certificate is the
    // only reason the others fail.
    let trusted = BrokerProc::start(
        &front.https_url(),
        &token,
        SECRETS,
        &[("KEYWARD_VAULT_CACERT", cert.as_str())],
    );
    trusted.wait_ready().await;
    assert_eq!(
        trusted.get("/v1/secrets/app/password").await.body,
        "tls-canary"
    );
    let relayed = front.bytes_to_server();
    assert!(relayed > 0);

    // Every variable other Vault clients, TLS libraries or HTTP clients take trust or routing
    // from: none of them may make keyward trust the certificate.
    let variants: Vec<Vec<(&str, &str)>> = vec![
        vec![("VAULT_SKIP_VERIFY", "false")],
        vec![("VAULT_SKIP_VERIFY", "true")],
        vec![
            ("VAULT_SKIP_VERIFY", "1"),
            ("VAULT_TLS_SERVER_NAME", "localhost"),
        ],
        vec![
            ("VAULT_CACERT", cert.as_str()),
            ("VAULT_CAPATH", certs_dir.as_str()),
        ],
        vec![
            ("SSL_CERT_FILE", cert.as_str()),
            ("SSL_CERT_DIR", certs_dir.as_str()),
            ("REQUESTS_CA_BUNDLE", cert.as_str()),
            ("CURL_CA_BUNDLE", cert.as_str()),
        ],
        // A proxy from the environment would route around the check (and would fail
        // differently: connection refused, not a certificate error).
        vec![
            ("HTTPS_PROXY", "http://127.0.0.1:1"),
            ("ALL_PROXY", "http://127.0.0.1:1"),
        ],
    ];
    let brokers: Vec<_> = variants
        .iter()
        .map(|env| {
            (
                env,
                BrokerProc::start(&front.https_url(), &token, SECRETS, env),
            )
        })
        .collect();
    for (env, b) in &brokers {
        let login = first_login(b).await;
        assert_eq!(login["decision"], "error", "{env:?}: {login}");
        let reason = login["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("certificate") && reason.contains("UnknownIssuer"),
            "{env:?}: the login error names the certificate problem: {reason}"
        );
        let ready = b.get("/v1/health/ready").await;
        assert_eq!(ready.status, 503, "{env:?}");
        assert!(
            ready.body.contains("certificate"),
            "{env:?}: {}",
            ready.body
        );
        // Nothing was read: no login, so no fetch ever reached Vault.
        let app = b.get("/v1/secrets/app").await;
        assert_ne!(app.status, 200, "{env:?}: {}", app.body);
        assert!(!app.body.contains("tls-canary"));
        assert_eq!(b.audit_count("vault.login", "ok"), 0, "{env:?}");
        assert_eq!(b.audit_count("vault.fetch", "ok"), 0, "{env:?}");
    }
    // Not one byte (the service-account token included) went past the TLS handshake.
    assert_eq!(front.bytes_to_server(), relayed);
    assert!(front.handshake_failures() >= variants.len() as u64);
}

/// Runs `keyward` to its exit and returns (success, stderr); a process still running after
/// 20 s (it accepted the config and is serving) is killed and reported as such.
async fn run_to_exit(mut cmd: Command) -> (bool, String) {
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().expect("stderr"));
    let mut child = cmd.spawn().expect("run keyward");
    let status = eventually(Duration::from_secs(20), "keyward to exit", || {
        let status = child.try_wait().expect("wait");
        async move { status }
    })
    .await;
    let _ = child.kill();
    (
        status.success(),
        std::fs::read_to_string(err.path()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_vault_is_refused_unless_allowed_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "x.y.z").expect("token");
    let write = |name: &str, vault: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "vault: {vault}\nauth: {{token_file: {}}}\nsocket: {{path: {}}}\naudit: {{file: {}}}\n",
                token.display(),
                dir.path().join(format!("{name}.sock")).display(),
                dir.path().join(format!("{name}.audit")).display(),
            ),
        )
        .expect("config");
        path
    };
    let refused = write("refused.yaml", "{addr: \"http://127.0.0.1:1\"}");
    for cmd in ["broker", "sidecar"] {
        let mut c = Command::new(KEYWARD);
        c.args([cmd, "--config"]).arg(&refused);
        let (ok, err) = run_to_exit(c).await;
        assert!(!ok, "{cmd}: {err}");
        assert!(
            err.contains("vault.allow_insecure_http") && err.contains("http://127.0.0.1:1"),
            "{cmd}: the error names the setting: {err}"
        );
    }
    // An environment override of the address is refused the same way.
    let https = write("https.yaml", "{addr: \"https://127.0.0.1:1\"}");
    let mut c = Command::new(KEYWARD);
    c.args(["broker", "--config"])
        .arg(&https)
        .env("KEYWARD_VAULT_ADDR", "http://127.0.0.1:1");
    let (ok, err) = run_to_exit(c).await;
    assert!(!ok, "{err}");
    assert!(err.contains("vault.allow_insecure_http"), "{err}");

    // With the setting the broker starts, and says at start-up that it is insecure.
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "x"})).await;
    let b = BrokerProc::start(&v.bao.addr(), &v.token("shop", "orders"), SECRETS, &[]);
    b.wait_ready().await;
    assert!(
        b.log().contains("vault.allow_insecure_http is set"),
        "{}",
        b.log()
    );
}

/// A stand-in for Vault that real OpenBao cannot play: a plain HTTP/1.1 server on loopback
/// that logs anyone in and answers secret reads with oversized, over-announced or endless
/// bodies. It counts the bytes it managed to send.
struct OversizedVault {
    addr: SocketAddr,
    sent: Arc<BTreeMap<&'static str, AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

const HUGE_BODY: usize = 8 << 20;

impl OversizedVault {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent: Arc<BTreeMap<&'static str, AtomicU64>> = Arc::new(
            ["huge-body", "huge-length", "forever", "ok", "login"]
                .into_iter()
                .map(|k| (k, AtomicU64::new(0)))
                .collect(),
        );
        let counters = sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(Self::answer(conn, counters.clone()));
            }
        });
        Self { addr, sent, task }
    }

    fn sent(&self, what: &str) -> u64 {
        self.sent[what].load(Ordering::SeqCst)
    }

    async fn answer(mut conn: tokio::net::TcpStream, sent: Arc<BTreeMap<&'static str, AtomicU64>>) {
        // One request per connection (every answer says Connection: close).
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut body = vec![0u8; support::http::content_length(&head)];
        if conn.read_exact(&mut body).await.is_err() {
            return;
        }
        let which = path.rsplit('/').next().unwrap_or("");
        let count = |n: usize| {
            if let Some(c) = sent.get(which) {
                c.fetch_add(n as u64, Ordering::SeqCst);
            }
        };
        let json_answer = |body: String| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        match which {
            "login" => {
                let a = json_answer(
                    json!({"request_id": "r", "auth": {"client_token": "s.stand-in-token",
                        "accessor": "stand-in", "lease_duration": 3600, "renewable": true}})
                    .to_string(),
                );
                count(a.len());
                let _ = conn.write_all(a.as_bytes()).await;
            }
            "ok" => {
                let a = json_answer(
                    json!({"request_id": "r", "data": {"data": {"v": "small"},
                        "metadata": {"version": 1}}})
                    .to_string(),
                );
                count(a.len());
                let _ = conn.write_all(a.as_bytes()).await;
            }
            "huge-body" => {
                // Valid JSON of 8 MiB, delimited by the connection's end (no length announced).
                let mut a = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"data\":{\"v\":\"".to_vec();
                a.extend(std::iter::repeat_n(b'x', HUGE_BODY));
                a.extend_from_slice(b"\"}}");
                for chunk in a.chunks(64 << 10) {
                    if conn.write_all(chunk).await.is_err() {
                        break;
                    }
                    count(chunk.len());
                }
            }
            "huge-length" => {
                let a = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1099511627776\r\nConnection: close\r\n\r\n{\"data\":";
                count(a.len());
                if conn.write_all(a.as_bytes()).await.is_ok() {
                    // Holds the connection until the client gives up on it.
                    let _ = conn.read(&mut [0u8; 1]).await;
                }
            }
            "forever" => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"data\":{\"v\":\"";
                if conn.write_all(head).await.is_err() {
                    return;
                }
                let chunk = vec![b'y'; 64 << 10];
                while conn.write_all(&chunk).await.is_ok() {
                    count(chunk.len());
                }
            }
            _ => {
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            }
        }
    }
}

impl Drop for OversizedVault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_vault_answers_are_refused_naming_the_limit_and_the_broker_keeps_serving() {
    let vault = OversizedVault::start().await;
    let issuer = support::jwt::Issuer::new();
    let token = issuer.mint(&support::jwt::Claims::new("shop", "orders"));
    let secrets = "secrets:\n  \
         - {name: huge-body, path: secret/data/huge-body, required: false}\n  \
         - {name: huge-length, path: secret/data/huge-length, required: false}\n  \
         - {name: forever, path: secret/data/forever, required: false}\n  \
         - {name: ok, path: secret/data/ok}\n";
    let b = BrokerProc::start(&format!("http://{}", vault.addr), &token, secrets, &[]);
    b.wait_ready().await;
    let baseline = rss_kib(b.pid());
    // Three refusals of each (the broker retries with backoff, so memory is tested again
    // and again).
    for name in ["huge-body", "huge-length", "forever"] {
        let errors = eventually(
            WAIT,
            &format!("three refused fetches of {name}"),
            || async {
                let errors: Vec<_> = b
                    .audit_records()
                    .into_iter()
                    .filter(|r| {
                        r["action"] == "vault.fetch"
                            && r["decision"] == "error"
                            && r["secret"] == name
                    })
                    .collect();
                (errors.len() >= 3).then_some(errors)
            },
        )
        .await;
        for e in &errors {
            let reason = e["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("vault.max_response_bytes") && reason.contains("1048576 bytes"),
                "{name}: the error names the limit: {reason}"
            );
        }
        let a = b.get(&format!("/v1/secrets/{name}")).await;
        assert_eq!(a.status, 503, "{name}: {}", a.body);
        assert!(a.body.contains("vault.max_response_bytes"), "{}", a.body);
        assert_eq!(
            b.audit_count("vault.fetch", "ok"),
            1,
            "only `ok` was ever fetched"
        );
    }
    // The announced terabyte was refused from its header: the stand-in's few bytes were all.
    assert!(vault.sent("huge-length") < 64 << 10);
    // The endless body was cut off: per attempt, the limit plus what the sockets buffer.
    let attempts = b
        .audit_records()
        .iter()
        .filter(|r| r["action"] == "vault.fetch" && r["secret"] == "forever")
        .count() as u64;
    assert!(
        vault.sent("forever") < ((attempts + 1) * 16) << 20,
        "{} bytes sent in {attempts} attempts",
        vault.sent("forever")
    );
    // Memory stayed bounded: a few MiB over the baseline at most, nowhere near the 8 MiB
    // bodies (let alone the endless one).
    let rss = rss_kib(b.pid());
    assert!(
        rss < baseline + 24 * 1024,
        "RSS grew from {baseline} KiB to {rss} KiB"
    );
    // And the broker kept serving.
    assert_eq!(b.get("/v1/health/ready").await.status, 200);
    assert_eq!(b.get("/v1/secrets").await.status, 200);
    let ok = b.get("/v1/secrets/ok/v").await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "small"));
    let log = b.log();
    support::assert_no_panic("broker", &log);
}
