//! The socket API's request handling over in-memory streams (`Broker::serve_connection` on
//! `tokio::io::duplex`), the cheap tier below the real-socket tests in `tests/broker_socket.rs`:
//! no Vault (its address is a closed port, so nothing is ever fetched), no socket, a real audit
//! log in a temp dir. Each case checks the status, the JSON error, and what the audit log says.

use std::collections::BTreeMap;
use std::time::Duration;

use keyward_audit::Caller;
use keyward_broker::config::Config;
use keyward_broker::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Fixture {
    broker: Broker,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let yaml = format!(
        "vault: {{addr: \"http://127.0.0.1:9\", allow_insecure_http: true}}\n\
         auth: {{role: r, token_file: {token}}}\n\
         secrets:\n  - {{name: db, path: database/creds/app}}\n  - {{name: api, path: secret/data/api, required: false, allow_uids: [1000]}}\n\
         socket: {{path: {sock}, read_timeout: 1s, max_wait: 50ms}}\n\
         audit: {{file: {audit}}}\n",
        token = dir.path().join("token").display(),
        sock = dir.path().join("unused.sock").display(),
        audit = audit.display(),
    );
    let config = Config::from_yaml(&yaml, &BTreeMap::<String, String>::new()).expect("config");
    Fixture {
        broker: Broker::new(config).expect("broker"),
        audit,
        _dir: dir,
    }
}

fn caller(uid: u32) -> Caller {
    Caller::from_peer(4242, uid, uid, "app".into(), "")
}

/// Writes `request` on a fresh in-memory connection from `uid` and reads the whole answer.
async fn exchange(f: &Fixture, uid: u32, request: &[u8]) -> (u16, String) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let broker = f.broker.clone();
    let conn = tokio::spawn(async move {
        let _ = broker
            .serve_connection(server, caller(uid), CancellationToken::new())
            .await;
    });
    client.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
        .await
        .expect("the broker answers and closes")
        .expect("read");
    conn.await.expect("the connection task does not panic");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n").into_bytes()
}

fn audit_lines(f: &Fixture) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&f.audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[tokio::test]
async fn each_bad_request_gets_its_status_and_error_code() {
    let f = fixture();
    let cases: &[(&[u8], u16, &str)] = &[
        (&get("/v1/secrets/nope"), 404, "\"error\":\"unknown_secret\""),
        (&get("/v1/secrets/%2e%2e"), 400, "\"error\":\"bad_request\""),
        (&get("/v1/secrets/db?bogus=1"), 400, "unknown query parameter"),
        (&get("/v1/secrets/db?wait=forever"), 400, "\"error\":\"bad_request\""),
        (&get("/etc/passwd"), 404, "\"error\":\"not_found\""),
        (
            b"DELETE /v1/secrets/db HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
            405,
            "\"error\":\"method_not_allowed\"",
        ),
        (
            b"GET /v1/secrets/db HTTP/1.1\r\nHost: k\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
            413,
            "\"error\":\"too_large\"",
        ),
        (b"\x00\x01 garbage\r\n\r\n", 400, ""),
    ];
    for (request, status, needle) in cases {
        let (got, text) = exchange(&f, 1000, request).await;
        assert_eq!(got, *status, "{}: {text}", String::from_utf8_lossy(request));
        assert!(text.contains(needle), "{text}");
    }
    let huge = format!(
        "GET /v1/secrets/db HTTP/1.1\r\nHost: k\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    assert_eq!(exchange(&f, 1000, huge.as_bytes()).await.0, 431);
}

#[tokio::test]
async fn unfetched_and_denied_reads_are_refused_and_audited_with_the_caller() {
    let f = fixture();
    // Never fetched (Vault is unreachable): 503, audited as a deny for this caller, with why.
    let (status, text) = exchange(&f, 1000, &get("/v1/secrets/db")).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"error\":\"unavailable\""), "{text}");
    // uid 2000 is not in api's allow_uids: 403 before anything else.
    let (status, text) = exchange(&f, 2000, &get("/v1/secrets/api")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("\"error\":\"denied\""), "{text}");
    // An unknown name is audited too.
    assert_eq!(exchange(&f, 1000, &get("/v1/secrets/nope")).await.0, 404);

    let reads: Vec<_> = audit_lines(&f)
        .into_iter()
        .filter(|r| r["action"] == "secret.read")
        .collect();
    let summary: Vec<(String, u64, String)> = reads
        .iter()
        .map(|r| {
            (
                r["secret"].as_str().unwrap_or_default().to_owned(),
                r["caller"]["uid"].as_u64().unwrap_or_default(),
                r["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("db".into(), 1000, "deny".into()),
            ("api".into(), 2000, "deny".into()),
            ("nope".into(), 1000, "deny".into()),
        ],
        "{reads:#?}"
    );
    assert!(
        reads[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not fetched")),
        "{reads:#?}"
    );
    assert!(reads
        .iter()
        .all(|r| r["caller"]["pid"] == 4242 && r["caller"]["comm"] == "app"));
}

#[tokio::test]
async fn keep_alive_requests_on_one_connection_are_each_answered() {
    let f = fixture();
    let pipelined = b"GET /v1/secrets HTTP/1.1\r\nHost: k\r\n\r\n\
GET /v1/secrets/nope HTTP/1.1\r\nHost: k\r\n\r\n\
GET /v1/health/ready HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n";
    let (_, text) = exchange(&f, 1000, pipelined).await;
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "503"], "{text}");
}
