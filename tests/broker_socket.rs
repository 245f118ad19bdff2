//! The socket API's edges against a real OpenBao: bad input, uid allow lists, canary values,
//! fail-closed auditing, `keyward probe`, and `keyward audit verify|query` on real logs.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::broker::{raw, BrokerProc, KEYWARD};
use support::{eventually, TestVault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CANARY: &str = "canary-9d2e71-do-not-log";

async fn vault_with_app() -> TestVault {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put("app", json!({"password": CANARY, "user": "orders"}))
        .await;
    v
}

#[tokio::test]
async fn bad_input_gets_its_status_and_others_keep_being_served() {
    let v = vault_with_app().await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\nsocket: {read_timeout: 1s}\n",
        &[],
    );
    b.wait_ready().await;

    let cases: &[(&str, u16, &str)] = &[
        ("/v1/secrets/nope", 404, "unknown_secret"),
        (
            "/v1/secrets/..%2f..%2fetc%2fpasswd",
            400,
            "invalid secret name",
        ),
        ("/v1/secrets/%2e%2e", 400, "invalid secret name"),
        ("/v1/secrets/../../etc/passwd", 404, "no route"),
        ("/v1/secrets/app/../app", 404, "no route"),
        ("/v1/secrets/app/nokey", 404, "has no key"),
        ("/v1/secrets/app?index=abc", 400, "index"),
        ("/v1/secrets/app?bogus=1", 400, "unknown query parameter"),
        ("/etc/passwd", 404, "under /v1/"),
    ];
    for (path, status, needle) in cases {
        let a = b.get(path).await;
        assert_eq!(a.status, *status, "{path}: {}", a.body);
        assert!(a.body.contains(needle), "{path}: {}", a.body);
        let j = a.json();
        assert!(
            j["error"].is_string() && j["detail"].is_string(),
            "{path}: {}",
            a.body
        );
        assert!(!a.body.contains(CANARY));
    }
    let post = raw(&b.socket, b"POST /v1/secrets/app HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(post.status, 405);
    let big_body = raw(&b.socket, b"GET /v1/secrets/app HTTP/1.1\r\nHost: k\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n").await;
    assert_eq!(big_body.status, 413, "{}", big_body.body);
    let huge_header = format!(
        "GET /v1/secrets/app HTTP/1.1\r\nHost: k\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let a = raw(&b.socket, huge_header.as_bytes()).await;
    assert_eq!(a.status, 431, "oversized headers");
    let a = raw(&b.socket, b"\x00\x01\x02 garbage\r\n\r\n").await;
    assert_eq!(a.status, 400);

    // A slow client that never finishes its headers is cut off after the read timeout,
    // while everyone else is served meanwhile.
    let mut slow = tokio::net::UnixStream::connect(&b.socket)
        .await
        .expect("connect");
    slow.write_all(b"GET /v1/secrets/app HTTP/1.1\r\nHost: k\r\n")
        .await
        .expect("write");
    let ok = b.get("/v1/secrets/app/user").await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "orders"));
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slow client still connected after 10s");
    assert!(!String::from_utf8_lossy(&buf).contains(CANARY));
    let ok = b.get("/v1/secrets/app/user").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn connections_over_the_limit_get_a_503_saying_so_and_the_rest_are_served() {
    let v = vault_with_app().await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\nsocket: {max_connections: 2, read_timeout: 60s}\n",
        &[],
    );
    b.wait_ready().await;
    // Two kept-alive connections take both slots. Each has been answered 200, so each holds a
    // slot; the slot of wait_ready's connection may be released a moment after its answer, so
    // a connection refused meanwhile is tried again.
    let first = holding_a_slot(&b.socket).await;
    let second = holding_a_slot(&b.socket).await;
    let over = raw(
        &b.socket,
        b"GET /v1/secrets/app/user HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(over.status, 503, "{}", over.body);
    assert_eq!(
        over.json()["error"],
        "too_many_connections",
        "{}",
        over.body
    );
    assert!(
        b.log().contains("too many open connections"),
        "logged: {}",
        b.log()
    );
    // A slot frees when a client leaves; the broker serves again.
    drop(first);
    eventually(Duration::from_secs(10), "a slot to free up", || async {
        let a = b.get("/v1/secrets/app/user").await;
        (a.status == 200 && a.body == "orders").then_some(())
    })
    .await;
    drop(second);
}

/// A connection that has been answered 200 to a kept-alive request, and so holds one of the
/// socket's connection slots until it is dropped.
async fn holding_a_slot(socket: &std::path::Path) -> tokio::net::UnixStream {
    eventually(Duration::from_secs(10), "a connection slot", || async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"GET /v1/health/ready HTTP/1.1\r\nHost: k\r\n\r\n")
            .await
            .ok()?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                // Closed: refused over the limit (a 503 and a close), not kept alive.
                return None;
            }
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            if body.len() >= support::http::content_length(head) {
                return head.starts_with("HTTP/1.1 200").then_some(s);
            }
        }
    })
    .await
}

#[tokio::test]
async fn uid_allow_list_denies_other_callers_and_audits_it() {
    let v = vault_with_app().await;
    let me = nix::unistd::getuid().as_raw();
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - {{name: mine, path: secret/data/app, key: user, allow_uids: [{me}]}}\n  - {{name: theirs, path: secret/data/app, allow_uids: [4242]}}\n"
        ),
        &[],
    );
    b.wait_ready().await;
    let a = b.get("/v1/secrets/mine").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["data"],
        json!({"user": "orders"}),
        "key selection serves one key"
    );
    let a = b.get("/v1/secrets/theirs").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"], "denied");
    assert!(!a.body.contains(CANARY));
    let a = b.get("/v1/secrets/theirs/password").await;
    assert_eq!(a.status, 403);
    let denied: Vec<_> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["decision"] == "deny" && r["secret"] == "theirs")
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["caller"]["uid"], me);
    assert!(denied[0]["reason"]
        .as_str()
        .expect("reason")
        .contains("allow list"));
}

#[tokio::test]
async fn canary_never_appears_in_logs_audit_or_errors() {
    let v = vault_with_app().await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\n  - {name: locked, path: secret/data/app, allow_uids: [4242]}\n  - {name: badkey, path: secret/data/app, key: nope, required: false}\n",
        &[("KEYWARD_LOG", "trace"), ("KEYWARD_AUDIT_STDOUT", "true")],
    );
    b.wait_ready().await;
    let mut bodies = String::new();
    for path in [
        "/v1/secrets/app",
        "/v1/secrets/app/password",
        "/v1/secrets/app?index=0&wait=1s",
        "/v1/secrets/locked",
        "/v1/secrets/badkey",
        "/v1/secrets/app/missing",
        "/v1/secrets",
        "/v1/health/ready",
    ] {
        let a = b.get(path).await;
        if a.status != 200 || path == "/v1/secrets" || path.contains("ready") {
            bodies.push_str(&a.body);
        }
    }
    // The broker really served the canary (so the checks below are meaningful).
    assert!(b.get("/v1/secrets/app/password").await.body == CANARY);
    let log = b.log();
    assert!(log.contains("TRACE"), "trace logging was on");
    assert!(!log.contains(CANARY), "canary in the trace log");
    assert!(!b.stdout().contains(CANARY), "canary on stdout");
    assert!(
        b.stdout().contains("\"action\":\"secret.read\""),
        "audit copied to stdout"
    );
    assert!(!std::fs::read_to_string(&b.audit)
        .expect("audit")
        .contains(CANARY));
    assert!(
        !bodies.contains(CANARY),
        "canary in an error body: {bodies}"
    );
    let environ = std::fs::read(format!("/proc/{}/environ", b.pid())).expect("environ");
    assert!(!String::from_utf8_lossy(&environ).contains(CANARY));
    // The token is a secret too.
    let jwt = std::fs::read_to_string(&b.token_file).expect("token");
    assert!(!log.contains(jwt.trim()));
}

#[tokio::test]
async fn unwritable_audit_log_refuses_to_serve() {
    let v = vault_with_app().await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\naudit: {file: /dev/full}\n",
        &[],
    );
    // Logged in and fetched, but not ready: /ready names the audit log that cannot be written.
    eventually(
        Duration::from_secs(30),
        "/ready naming the audit log",
        || async {
            if !b.socket.exists() {
                return None;
            }
            let r = b.get("/v1/health/ready").await;
            (r.status == 503 && r.body.contains("audit log /dev/full cannot be written"))
                .then_some(())
        },
    )
    .await;
    for path in ["/v1/secrets/app", "/v1/secrets/app/password"] {
        let a = b.get(path).await;
        assert_eq!(a.status, 503, "{path}: {}", a.body);
        assert_eq!(a.json()["error"], "audit_unavailable");
        assert!(a.json()["detail"]
            .as_str()
            .expect("detail")
            .contains("/dev/full"));
        assert!(!a.body.contains(CANARY));
    }
}

#[tokio::test]
async fn socket_and_audit_file_modes() {
    let v = vault_with_app().await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets: []\n",
        &[],
    );
    b.wait_ready().await;
    let mode = std::fs::metadata(&b.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let mode = std::fs::metadata(&b.audit)
        .expect("audit")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn probe_reports_readiness() {
    let v = vault_with_app().await;
    // Not ready: this service account has no role.
    let bad = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "nobody"),
        "secrets: []\n",
        &[],
    );
    eventually(Duration::from_secs(20), "socket", || async {
        bad.socket.exists().then_some(())
    })
    .await;
    let out = Command::new(KEYWARD)
        .args(["probe", "--socket"])
        .arg(&bad.socket)
        .output()
        .expect("probe");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in to Vault"));
    // --wait keeps trying until its deadline, then reports the last reason.
    let started = std::time::Instant::now();
    let waited = Command::new(KEYWARD)
        .args(["probe", "--wait", "1s", "--socket"])
        .arg(&bad.socket)
        .output()
        .expect("probe");
    assert!(!waited.status.success());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&waited.stderr).contains("not logged in to Vault"));
    let missing = Command::new(KEYWARD)
        .args(["probe", "--socket", "/nonexistent/x.sock"])
        .output()
        .expect("probe");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot connect"));

    let good = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\n",
        &[],
    );
    // Started before the broker is up: --wait blocks until it is ready.
    let out = Command::new(KEYWARD)
        .args(["probe", "--wait", "30s"])
        .env("KEYWARD_SOCKET", &good.socket)
        .output()
        .expect("probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(KEYWARD)
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn audit_cli_verifies_queries_and_finds_tampering() {
    let v = vault_with_app().await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\n  - {name: locked, path: secret/data/app, allow_uids: [4242]}\n",
        &[],
    );
    b.wait_ready().await;
    for _ in 0..3 {
        assert_eq!(b.get("/v1/secrets/app").await.status, 200);
    }
    assert_eq!(b.get("/v1/secrets/locked").await.status, 403);
    let (ok, out) = verify(&b.audit);
    assert!(ok, "{out}");
    assert!(out.starts_with("OK"), "{out}");

    let q = Command::new(KEYWARD)
        .args(["audit", "query"])
        .arg(&b.audit)
        .args(["--secret", "app", "--decision", "allow", "--json"])
        .output()
        .expect("query");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|r| r["action"] == "secret.read")
            .count(),
        3
    );
    let q = Command::new(KEYWARD)
        .args(["audit", "query"])
        .arg(&b.audit)
        .args([
            "--decision",
            "deny",
            "--uid",
            &nix::unistd::getuid().as_raw().to_string(),
        ])
        .output()
        .expect("query");
    let table = String::from_utf8_lossy(&q.stdout);
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 2, "header + one denial:\n{table}");
    assert!(table.contains("locked") && table.contains("allow list"));
    let bad_since = Command::new(KEYWARD)
        .args(["audit", "query"])
        .arg(&b.audit)
        .args(["--since", "yesterday"])
        .output()
        .expect("query");
    assert!(!bad_since.status.success());

    let text = std::fs::read_to_string(&b.audit).expect("audit");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 5);

    // Its last lines cut off, the chain still verifies on its own; with the record count a
    // collector saw (the keyward_audit_last_seq metric), verify finds the cut.
    let all = lines.len().to_string();
    let verify_min = |path: &std::path::Path| {
        let out = Command::new(KEYWARD)
            .args(["audit", "verify", "--min-records", &all])
            .arg(path)
            .output()
            .expect("verify");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(verify_min(&b.audit).0, "the whole log passes");
    let cut = tempfile::NamedTempFile::new().expect("tmp");
    let kept: String = lines[..lines.len() - 2]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(cut.path(), kept).expect("write");
    assert!(verify(cut.path()).0, "the chain alone cannot tell");
    let (ok, err) = verify_min(cut.path());
    assert!(
        !ok && err.contains(&format!("ends at record {}", lines.len() - 2))
            && err.contains("the last 2 were cut off"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, ls: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, ls.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
        p
    };
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    for i in 0..owned.len() - 1 {
        let mut edited = owned.clone();
        edited[i] = edited[i].replacen("\"decision\":\"", "\"decision\":\"x", 1);
        let (ok, out) = verify(&write("edit", &edited));
        assert!(
            !ok && out.contains(&format!("line {}", i + 1)),
            "edit {i}: {out}"
        );

        let mut deleted = owned.clone();
        deleted.remove(i);
        let (ok, out) = verify(&write("delete", &deleted));
        assert!(
            !ok && out.contains(&format!("line {}", i + 1)),
            "delete {i}: {out}"
        );

        let mut swapped = owned.clone();
        swapped.swap(i, i + 1);
        let (ok, out) = verify(&write("swap", &swapped));
        assert!(
            !ok && out.contains(&format!("line {}", i + 1)),
            "swap {i}: {out}"
        );
    }
}

#[tokio::test]
async fn broker_process_is_not_dumpable() {
    // With PR_SET_DUMPABLE 0 the kernel makes /proc/PID/* owned by root, so a broker running
    // as `nobody` shows root-owned proc files (a dumpable one shows its own uid).
    let v = vault_with_app().await;
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("nobody user");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.path().join("keyward");
    std::fs::copy(KEYWARD, &bin).expect("copy binary");
    let token = dir.path().join("token");
    std::fs::write(&token, v.token("shop", "orders")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let sock = dir.path().join("run/broker.sock");
    let cfg = format!(
        "vault: {{addr: \"{}\", allow_insecure_http: true}}\nauth: {{token_file: {}}}\nsocket: {{path: {}}}\naudit: {{file: {}}}\nsecrets: []\n",
        v.bao.addr(),
        token.display(),
        sock.display(),
        dir.path().join("run/audit.log").display()
    );
    /// Killed and reaped when the test ends, passing or not: no broker outlives it.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(
        Command::new("setpriv")
            .arg(format!("--reuid={}", nobody.uid))
            .arg(format!("--regid={}", nobody.gid))
            .args(["--clear-groups", "--"])
            .arg(&bin)
            .arg("broker")
            .env("KEYWARD_CONFIG", cfg)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("setpriv"),
    );
    eventually(Duration::from_secs(20), "the socket", || async {
        sock.exists().then_some(())
    })
    .await;
    // setpriv execs keyward in the same process.
    let pid = child.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid_line.contains(&nobody.uid.as_raw().to_string()),
        "{uid_line}"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .expect("stat")
        .uid();
    assert_eq!(
        owner, 0,
        "non-dumpable: /proc/PID files owned by root, not uid {}",
        nobody.uid
    );
    // And the broker, running as nobody, still works.
    eventually(
        Duration::from_secs(30),
        "the broker running as nobody ready",
        || async {
            (support::broker::get(&sock, "/v1/health/ready").await.status == 200).then_some(())
        },
    )
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "broker exit after SIGTERM: {status}");
}
