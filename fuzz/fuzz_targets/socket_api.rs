//! The broker's socket API, whole, with real secrets and real denials: a real
//! `keyward_broker::Broker` (routing, query and name parsing, uid allow lists, auditing to a real
//! file, hyper's HTTP/1 parsing with the socket's head limit and read timeout) whose secrets come
//! from an in-memory `SecretSource` (fetched by the broker's own refresh loops,
//! `Broker::run_without_socket`), serving each input on a fresh in-memory connection
//! (`Broker::serve_connection` over `tokio::io::duplex`) for a caller uid picked by the input.
//!
//! Each secret's values are unique canaries. The oracle, after every input:
//! - a canary in the answer was served to a uid the secret allows, and the audit log got an
//!   `allow` `secret.read` record of that secret for that uid;
//! - a canary of a key the config does not serve (`key:`), or of a secret nobody may read,
//!   never appears;
//! - every `allow` `secret.read` record is for a uid the secret allows;
//! - every 403 in the answer has a `deny` record of that uid;
//! - answers are HTTP/1.x with a status < 500 or 503, and the broker still answers its
//!   readiness probe (503: Vault is not there, so the broker never logs in).
//!
//! The runtime's clock is paused: when the broker is only waiting (for a body longer than the
//! input, a long-poll, a read timeout), time jumps ahead at once instead of being slept through.
//! `SO_PEERCRED` and the socket file are covered by `tests/broker_socket.rs`.
#![no_main]

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_audit::Caller;
use keyward_broker::config::Config;
use keyward_broker::source::{
    Fetched, Renewal, Revocation, SecretSource, SourceError, SourceFuture, SourceKind,
};
use keyward_broker::{Broker, SecretString};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A source that always has `data` (no lease, as a KV secret), counting its fetches.
struct MemorySource {
    data: serde_json::Map<String, serde_json::Value>,
    fetches: tokio::sync::watch::Sender<u64>,
}

const MEMORY: SourceKind = SourceKind {
    name: "memory",
    fetch_action: "memory.fetch",
    renew_action: "memory.lease_renew",
    revoke_action: "memory.revoke",
};

impl SecretSource for MemorySource {
    fn kind(&self) -> SourceKind {
        MEMORY
    }

    fn fetch(&self) -> SourceFuture<'_, Result<Fetched, SourceError>> {
        self.fetches.send_modify(|n| *n += 1);
        let n = *self.fetches.borrow();
        let f = Fetched::new(self.data.clone())
            .with_version(1)
            .with_request_id(format!("memory-{n}"));
        Box::pin(std::future::ready(Ok(f)))
    }

    fn renew<'a>(
        &'a self,
        _lease_id: &'a SecretString,
        _increment: Duration,
    ) -> SourceFuture<'a, Result<Renewal, SourceError>> {
        Box::pin(std::future::ready(Err(SourceError::LeaseGone(
            "memory source grants no lease".into(),
        ))))
    }

    fn revoke<'a>(
        &'a self,
        _lease_id: &'a SecretString,
    ) -> SourceFuture<'a, Result<Revocation, SourceError>> {
        Box::pin(std::future::ready(Ok(Revocation::default())))
    }
}

/// One declared secret: its name, allow list, the canaries it serves and the ones it never does.
struct Declared {
    name: &'static str,
    allow_uids: Option<&'static [u32]>,
    /// key → canary; the broker serves these to allowed uids.
    served: &'static [(&'static str, &'static str)],
    /// key → canary held by the source but never served (the config's `key:` excludes it).
    hidden: &'static [(&'static str, &'static str)],
    /// The config's `key:`.
    key: Option<&'static str>,
}

impl Declared {
    fn allows(&self, uid: u32) -> bool {
        self.allow_uids.is_none_or(|u| u.contains(&uid))
    }
}

/// The callers the input picks from: root, two listed uids, one listed nowhere.
const UIDS: [u32; 4] = [0, 7, 1000, 4242];

const SECRETS: &[Declared] = &[
    Declared {
        name: "open",
        allow_uids: None,
        served: &[("value", "kwcanary-open-5c1e")],
        hidden: &[],
        key: None,
    },
    Declared {
        name: "api",
        allow_uids: Some(&[4242]),
        served: &[
            ("token", "kwcanary-api-9b07"),
            ("user", "kwcanary-apiuser-33d8"),
        ],
        hidden: &[],
        key: None,
    },
    Declared {
        name: "ops",
        allow_uids: Some(&[7, 4242]),
        served: &[("password", "kwcanary-ops-e41a")],
        hidden: &[("other", "kwcanary-opsother-70f2")],
        key: Some("password"),
    },
    Declared {
        name: "sealed",
        allow_uids: Some(&[]),
        served: &[("v", "kwcanary-sealed-2a6b")],
        hidden: &[],
        key: None,
    },
];

struct Server {
    broker: Broker,
    rt: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    audit_path: std::path::PathBuf,
    /// How much of the audit file the oracle has read.
    audit_offset: u64,
    _dir: tempfile::TempDir,
}

/// A new broker is started once its audit file passes this size (the disk is not endless).
const AUDIT_ROTATE_BYTES: u64 = 32 << 20;

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit_path = dir.path().join("audit.log");
        let mut secrets = String::new();
        for s in SECRETS {
            secrets.push_str(&format!(
                "  - {{name: {}, path: secret/data/fuzz/{}, required: false",
                s.name, s.name
            ));
            if let Some(k) = s.key {
                secrets.push_str(&format!(", key: {k}"));
            }
            if let Some(u) = s.allow_uids {
                secrets.push_str(&format!(", allow_uids: {u:?}"));
            }
            secrets.push_str("}\n");
        }
        // Port 9 (discard) on loopback: nothing listens; the token file does not exist, so the
        // broker never even tries.
        let yaml = format!(
            r#"
vault: {{addr: "http://127.0.0.1:9", timeout: 1s, allow_insecure_http: true}}
auth: {{role: fuzz, token_file: {token}}}
revoke_on_shutdown: false
secrets:
{secrets}socket: {{path: {socket}, read_timeout: 2s, max_wait: 20ms}}
audit: {{file: {audit}}}
"#,
            token = dir.path().join("token").display(),
            socket = dir.path().join("unused.sock").display(),
            audit = audit_path.display(),
        );
        let config = Config::from_yaml(&yaml, &BTreeMap::new()).expect("config");
        let mut sources: BTreeMap<String, Arc<dyn SecretSource>> = BTreeMap::new();
        let mut fetched = Vec::new();
        for s in SECRETS {
            let data = s
                .served
                .iter()
                .chain(s.hidden)
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect();
            let (tx, rx) = tokio::sync::watch::channel(0);
            fetched.push(rx);
            sources.insert(
                s.name.to_owned(),
                Arc::new(MemorySource { data, fetches: tx }),
            );
        }
        let broker = Broker::with_sources(config, sources).expect("broker");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let shutdown = CancellationToken::new();
        {
            let broker = broker.clone();
            let shutdown = shutdown.clone();
            rt.spawn(async move { broker.run_without_socket(shutdown).await });
        }
        // Every source fetched once: then its value is in the broker's cache.
        rt.block_on(async {
            for mut rx in fetched {
                tokio::time::timeout(Duration::from_secs(600), rx.wait_for(|n| *n > 0))
                    .await
                    .expect("the broker fetches every secret")
                    .expect("source alive");
            }
        });
        let mut server = Server {
            broker,
            rt,
            shutdown,
            audit_path,
            audit_offset: 0,
            _dir: dir,
        };
        // The harness works: each readable secret is served to an allowed uid (the value is
        // stored right after the fetch, in the same task; a few rounds let it get there).
        for s in SECRETS.iter().filter(|s| s.allows(4242)) {
            let req = format!("GET /v1/secrets/{} HTTP/1.1\r\nHost: k\r\n\r\n", s.name);
            let ok = (0..100).any(|_| {
                let resp = exchange(&server, 4242, req.as_bytes());
                server.new_records();
                resp.starts_with(b"HTTP/1.1 200")
            });
            assert!(ok, "secret {} is never served to an allowed uid", s.name);
        }
        server
    }

    /// The audit records written since the last call.
    fn new_records(&mut self) -> Vec<serde_json::Value> {
        let mut f = std::fs::File::open(&self.audit_path).expect("audit file");
        f.seek(SeekFrom::Start(self.audit_offset)).expect("seek");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("audit file is UTF-8");
        // Only whole lines: a record is written with one write, before the answer.
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        self.audit_offset += end as u64;
        text[..end]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn server() -> std::sync::MutexGuard<'static, Option<Server>> {
    static SERVER: Mutex<Option<Server>> = Mutex::new(None);
    let mut guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if guard
        .as_ref()
        .is_none_or(|s| s.audit_offset > AUDIT_ROTATE_BYTES)
    {
        *guard = None;
        *guard = Some(Server::start());
    }
    guard
}

/// Ends every input: blank lines close an unfinished header block (a server skips blank lines
/// before a request), then a last request asks the broker to close the connection.
const CLOSE: &[u8] =
    b"\r\n\r\nGET /v1/health/ready HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n";

/// Writes `data` on a new connection and reads whatever comes back until the broker closes, or
/// it has nothing more to say for 200 ms of (paused, so instant) time: an input that declares a
/// body longer than what follows it. Half-closing instead would not do: hyper then drops the
/// connection without answering.
fn exchange(server: &Server, uid: u32, data: &[u8]) -> Vec<u8> {
    server.rt.block_on(async {
        let (client, io) = tokio::io::duplex(64 * 1024);
        let broker = server.broker.clone();
        let caller = Caller::from_peer(4242, uid, uid, "fuzz".into(), "app");
        let conn = tokio::spawn(async move {
            let _ = broker
                .serve_connection(io, caller, CancellationToken::new())
                .await;
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // Writes and reads interleave: an answer can be larger than the pipe's buffer.
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            for chunk in [data, CLOSE] {
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
            }
        };
        let read = async {
            loop {
                match tokio::time::timeout(Duration::from_millis(200), rd.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        };
        tokio::join!(write, read);
        conn.abort();
        let _ = conn
            .await
            .map_err(|e| assert!(!e.is_panic(), "the connection panicked"));
        out
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn is(rec: &serde_json::Value, action: &str, decision: &str) -> bool {
    rec["action"] == action && rec["decision"] == decision
}

fn rec_uid(rec: &serde_json::Value) -> Option<u64> {
    rec["caller"]["uid"].as_u64()
}

/// Checks one answer to `uid` against the audit records written meanwhile.
fn check(uid: u32, resp: &[u8], records: &[serde_json::Value]) {
    let show = || String::from_utf8_lossy(resp).into_owned();
    if !resp.is_empty() {
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        assert!(
            resp.starts_with(b"HTTP/1.1 ") || resp.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x response: {:?}",
            show()
        );
        let code: u16 = std::str::from_utf8(&resp[9..resp.len().min(12)])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(
            (100..600).contains(&code) && (code < 500 || code == 503),
            "status {code}: {:?}",
            show()
        );
    }
    for s in SECRETS {
        for (key, canary) in s.hidden {
            assert!(
                find(resp, canary.as_bytes()).is_none(),
                "key {key} of secret {} is not served by the config, yet was: {:?}",
                s.name,
                show()
            );
        }
        let leaked = s
            .served
            .iter()
            .find(|(_, c)| find(resp, c.as_bytes()).is_some());
        if let Some((key, _)) = leaked {
            assert!(
                s.allows(uid),
                "key {key} of secret {} served to uid {uid}, not in its allow list {:?}: {:?}",
                s.name,
                s.allow_uids,
                show()
            );
            assert!(
                records.iter().any(|r| is(r, "secret.read", "allow")
                    && r["secret"] == s.name
                    && rec_uid(r) == Some(uid.into())),
                "key {key} of secret {} served to uid {uid} without an allow record; records: {records:?}",
                s.name
            );
        }
    }
    for r in records {
        if is(r, "secret.read", "allow") {
            let name = r["secret"].as_str().unwrap_or_default();
            let s = SECRETS
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("an allowed read of an undeclared secret: {r}"));
            assert_eq!(
                rec_uid(r),
                Some(uid.into()),
                "allow record of another caller: {r}"
            );
            assert!(s.allows(uid), "read of {name} allowed to uid {uid}: {r}");
        }
    }
    // A status line can only start after CRLF (or at the very start): neither JSON bodies nor
    // the error messages' quoted input hold a raw CRLF, and no canary does.
    let forbidden = count(resp, b" 403 Forbidden\r\n");
    let denials = records
        .iter()
        .filter(|r| r["decision"] == "deny" && rec_uid(r) == Some(uid.into()))
        .count();
    assert!(
        forbidden <= denials,
        "{forbidden} answers 403 to uid {uid} but {denials} deny records: {records:?}: {:?}",
        show()
    );
}

fuzz_target!(|data: &[u8]| {
    let mut guard = server();
    let server = guard.as_mut().expect("server");
    // The first byte picks the caller.
    let uid = UIDS[usize::from(data.first().copied().unwrap_or(0) & 3)];
    // The input never carries a canary itself (an error message quoting it would look like a
    // leak): any canary in an answer came from the broker's cache.
    let mut data = data.to_vec();
    for canary in SECRETS.iter().flat_map(|s| s.served.iter().chain(s.hidden)) {
        while let Some(i) = find(&data, canary.1.as_bytes()) {
            data[i] ^= 0x20;
        }
    }
    let resp = exchange(server, uid, &data);
    let records = server.new_records();
    check(uid, &resp, &records);
    let probe = exchange(server, 1000, b"");
    let records = server.new_records();
    check(1000, &probe, &records);
    assert!(
        probe.starts_with(b"HTTP/1.1 503"),
        "readiness after the input: {:?}",
        String::from_utf8_lossy(&probe)
    );
});
