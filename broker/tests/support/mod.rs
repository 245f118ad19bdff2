//! Shared by the broker's in-memory tests: a broker whose secrets come from in-memory sources,
//! HTTP exchanges over `tokio::io::duplex` through `Broker::serve_connection`, and the audit
//! log as JSON. No Vault, no socket.
#![allow(dead_code)]

pub mod memory;

pub use keyward_testkit::http::Answer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyward_audit::Caller;
use keyward_broker::config::Config;
use keyward_broker::source::SecretSource;
use keyward_broker::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub broker: Broker,
    pub audit: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

/// A broker declaring `secrets` (YAML flow items), each served by the source given under its
/// name. Vault's address is a closed port: nothing there is ever reached.
pub fn fixture(secrets: &[&str], sources: &[(&str, Arc<dyn SecretSource>)]) -> Fixture {
    fixture_with_audit(secrets, sources, "")
}

/// As [`fixture`], with more settings of the `audit` section (YAML flow entries, e.g.
/// `"max_bytes: 65536, segments: 2"`).
pub fn fixture_with_audit(
    secrets: &[&str],
    sources: &[(&str, Arc<dyn SecretSource>)],
    audit_settings: &str,
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let yaml = format!(
        "vault: {{addr: \"http://127.0.0.1:9\", allow_insecure_http: true}}\n\
         auth: {{role: r, token_file: {token}}}\n\
         secrets:\n{secrets}\n\
         kv_refresh: 1s\n\
         socket: {{path: {sock}, read_timeout: 5s, max_wait: 30s}}\n\
         audit: {{file: {audit}{more}}}\n",
        token = dir.path().join("token").display(),
        secrets = secrets
            .iter()
            .map(|s| format!("  - {s}"))
            .collect::<Vec<_>>()
            .join("\n"),
        sock = dir.path().join("unused.sock").display(),
        audit = audit.display(),
        more = if audit_settings.is_empty() {
            String::new()
        } else {
            format!(", {audit_settings}")
        },
    );
    let config = Config::from_yaml(&yaml, &BTreeMap::<String, String>::new()).expect("config");
    let sources = sources
        .iter()
        .map(|(name, s)| ((*name).to_owned(), s.clone()))
        .collect();
    Fixture {
        broker: Broker::with_sources(config, sources).expect("broker"),
        audit,
        _dir: dir,
    }
}

pub fn caller(uid: u32) -> Caller {
    Caller::from_peer(4242, uid, uid, "app".into(), "")
}

/// `GET path` on a fresh in-memory connection from `uid`; the whole answer.
pub async fn get(broker: &Broker, uid: u32, path: &str) -> Answer {
    get_as(broker, caller(uid), path).await
}

/// `GET path` on a fresh in-memory connection from `caller`; the whole answer.
pub async fn get_as(broker: &Broker, caller: Caller, path: &str) -> Answer {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let b = broker.clone();
    let conn = tokio::spawn(async move {
        let _ = b
            .serve_connection(server, caller, CancellationToken::new())
            .await;
    });
    let request = format!("GET {path} HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n");
    client.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out))
        .await
        .expect("the broker answers and closes")
        .expect("read");
    conn.await.expect("the connection task does not panic");
    keyward_testkit::http::parse(&out)
}

pub fn audit_lines(f: &Fixture) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&f.audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// The records of `action`.
pub fn records(f: &Fixture, action: &str) -> Vec<serde_json::Value> {
    audit_lines(f)
        .into_iter()
        .filter(|r| r["action"] == action)
        .collect()
}

/// Waits (at most `deadline`) for an audit record of `action` matching `cond`. The log is a
/// file with no change notification, so it is re-read every 20 ms; the deadline is a safety
/// net only.
pub async fn audited(
    f: &Fixture,
    action: &str,
    deadline: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let wait = async {
        loop {
            if let Some(r) = records(f, action).into_iter().find(&cond) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {action} record within {deadline:?}: {:#?}",
                audit_lines(f)
            )
        })
}

/// Parses an RFC 3339 time of the API.
pub fn rfc3339(s: &str) -> std::time::SystemTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .into()
}
