//! The tamper-evident audit log: one JSON line per decision, each carrying the SHA-256 of the
//! previous line and its own, so that editing, deleting or reordering a line is detected by
//! [`verify`].
//!
//! A record's hash covers the exact bytes of its line up to (not including) the `hash` field,
//! which is always last: `{...,"prev":"<hex>","hash":"<hex>"}`. Verification therefore works on
//! the text as written and never depends on re-serialising JSON the same way.
//!
//! Writing fails closed: [`AuditLog::record`] returns an error when the line cannot be written,
//! and callers must then refuse the access the record was about.

pub mod cli;
mod sink;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use sink::{AuditSink, FileSink, RecordSink, StdoutSink};
pub use verify::{verify, verify_reader, VerifyError, VerifyReport};

/// The `prev` of the first record in a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors from opening or writing the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write audit log {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log writer is poisoned by an earlier panic")]
    Poisoned,
}

/// Who the sidecar acts for, from the service-account token's claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub service_account: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
}

/// The local process that made a request, from `SO_PEERCRED` and `/proc/PID/comm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
}

/// The remote end of a proxied connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    pub addr: String,
}

/// The outcome a record states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// An access was granted.
    Allow,
    /// An access was refused.
    Deny,
    /// An operation against Vault succeeded.
    Ok,
    /// An operation against Vault failed.
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Ok => "ok",
            Decision::Error => "error",
        }
    }
}

/// What a caller asks to be recorded. Time, sequence number, pod identity and the hash chain
/// are added by [`AuditLog::record`]. Never put a secret value here: lease ids and token
/// accessors go through [`AuditLog::hmac`] first.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_hmac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accessor_hmac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_request_id: Option<String>,
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record {
    /// A record with only an action and a decision; set the other fields as needed.
    pub fn new(action: &'static str, decision: Decision) -> Self {
        Self {
            action,
            caller: None,
            peer: None,
            port: None,
            secret: None,
            path: None,
            version: None,
            lease_hmac: None,
            accessor_hmac: None,
            vault_request_id: None,
            decision,
            reason: None,
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// The line as written: the fields every record carries, then the caller's record, then the
/// chain. Field order is fixed by this struct and `hash` is appended by hand last.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a PodIdentity>,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
}

/// Where the log goes and how lease ids are keyed.
pub struct AuditConfig {
    /// The log file, opened for append with mode 0600.
    pub path: PathBuf,
    /// Also write every line to stdout, for log collectors.
    pub stdout: bool,
    /// Key for HMAC-SHA256 of lease ids and token accessors. Keep it stable across restarts
    /// to correlate records; a random key is used when none is given.
    pub hmac_key: Option<Zeroizing<Vec<u8>>>,
    /// fsync after every record (durable against a node crash, at the cost of latency).
    pub fsync: bool,
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("path", &self.path)
            .field("stdout", &self.stdout)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .field("fsync", &self.fsync)
            .finish()
    }
}

struct State {
    /// The log of record.
    record: Box<dyn RecordSink>,
    /// Copies of every recorded line (stdout, ...), best effort.
    copies: Vec<Box<dyn AuditSink>>,
    seq: u64,
    prev: String,
    pod: Option<PodIdentity>,
}

/// An open, hash-chained audit log. Shared by every task of the sidecar (`Arc<AuditLog>`).
pub struct AuditLog {
    path: PathBuf,
    hmac_key: Zeroizing<Vec<u8>>,
    state: Mutex<State>,
    /// `seq` of the last record in the file, readable without the lock (for metrics).
    last_seq: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log and continues the chain of any records in it.
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        let open_err = |source| AuditError::Open {
            path: config.path.clone(),
            source,
        };
        let mut record = FileSink::open(&config.path, config.fsync).map_err(open_err)?;
        let (seq, prev) = match record.last_line().map_err(open_err)? {
            Some(line) => chain_tail(&line),
            None => (0, GENESIS.to_owned()),
        };
        let mut copies: Vec<Box<dyn AuditSink>> = Vec::new();
        if config.stdout {
            copies.push(Box::new(StdoutSink));
        }
        let hmac_key = config.hmac_key.unwrap_or_else(|| {
            let mut k = Zeroizing::new(vec![0u8; 32]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
            k
        });
        Ok(Self {
            path: config.path,
            hmac_key,
            state: Mutex::new(State {
                record: Box::new(record),
                copies,
                seq,
                prev,
                pod: None,
            }),
            last_seq: AtomicU64::new(seq),
        })
    }

    /// The sequence number of the last record in the file (0 when empty). Exported as the
    /// metric `keyward_audit_last_seq`: a collector's history of it is what shows a log whose
    /// last lines were cut off (`keyward audit verify --min-records`).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the pod identity carried by every later record.
    pub fn set_pod(&self, pod: PodIdentity) {
        if let Ok(mut s) = self.state.lock() {
            s.pod = Some(pod);
        }
    }

    /// HMAC-SHA256 (hex) of a sensitive identifier such as a lease id or token accessor.
    pub fn hmac(&self, value: &str) -> String {
        hmac_hex(&self.hmac_key, value)
    }

    /// Appends one record. On error nothing is counted as recorded: the caller must not perform
    /// (or must not reveal the result of) the access the record is about.
    pub fn record(&self, record: &Record) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let seq = state.seq + 1;
        let time = now_rfc3339();
        let line = Line {
            time,
            seq,
            pod: state.pod.as_ref(),
            record,
            prev: &state.prev,
        };
        // Serialising a struct of strings and integers cannot fail.
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        let hash = hash_prefix(&text);
        text.pop(); // the closing brace
        text.push_str(",\"hash\":\"");
        text.push_str(&hash);
        text.push_str("\"}\n");
        let write_err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        state.record.append(text.as_bytes()).map_err(write_err)?;
        state.seq = seq;
        self.last_seq.store(seq, Ordering::Relaxed);
        state.prev = hash;
        // The copies are for collectors; the log of record is the record of truth.
        for copy in &mut state.copies {
            let _ = copy.write_line(text.as_bytes());
        }
        Ok(())
    }
}

/// SHA-256 (hex) over a line's text before its `hash` field: the serialised object without the
/// closing brace, followed by `}`.
fn hash_prefix(object_without_hash: &str) -> String {
    hex::encode(Sha256::digest(object_without_hash.as_bytes()))
}

/// HMAC-SHA256 of `value` under `key`, hex encoded.
pub fn hmac_hex(key: &[u8], value: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The current time as RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

/// The sequence number and hash to continue from after `line`. A line that cannot be read
/// continues from its raw SHA-256, so that `verify` reports the damage at that line.
fn chain_tail(line: &str) -> (u64, String) {
    #[derive(Deserialize)]
    struct Tail {
        seq: u64,
        hash: String,
    }
    match serde_json::from_str::<Tail>(line) {
        Ok(t) => (t.seq, t.hash),
        Err(_) => (0, hex::encode(Sha256::digest(line.as_bytes()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> AuditLog {
        AuditLog::open(AuditConfig {
            path: path.to_owned(),
            stdout: false,
            hmac_key: Some(Zeroizing::new(b"k".to_vec())),
            fsync: false,
        })
        .expect("open")
    }

    fn read(secret: &str) -> Record {
        let mut r = Record::new("secret.read", Decision::Allow);
        r.secret = Some(secret.into());
        r.caller = Some(Caller {
            pid: 7,
            uid: 1000,
            gid: 1000,
            comm: "app".into(),
        });
        r
    }

    #[test]
    fn chain_verifies_and_continues_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        {
            let log = open(&path);
            log.set_pod(PodIdentity {
                namespace: "shop".into(),
                service_account: "orders".into(),
                ..Default::default()
            });
            assert_eq!(log.last_seq(), 0);
            log.record(&read("db")).expect("write");
            log.record(&read("api")).expect("write");
            assert_eq!(log.last_seq(), 2);
        }
        let log = open(&path);
        assert_eq!(
            log.last_seq(),
            2,
            "reopening continues from the file's last record"
        );
        log.record(&read("db")).expect("write");
        assert_eq!(log.last_seq(), 3);
        let report = verify(&path).expect("verify");
        assert_eq!(report.records, 3);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(r#""pod":{"namespace":"shop","service_account":"orders"}"#));
        assert!(lines[2].contains(r#""seq":3"#));
        assert!(lines.iter().all(|l| l.ends_with("\"}")));
    }

    #[test]
    fn file_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        open(&path);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn write_error_is_reported_not_swallowed() {
        let log = AuditLog::open(AuditConfig {
            path: "/dev/full".into(),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })
        .expect("open /dev/full");
        let err = log.record(&read("db")).expect_err("ENOSPC");
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }

    #[test]
    fn decisions_are_named_as_the_log_writes_them() {
        for d in [
            Decision::Allow,
            Decision::Deny,
            Decision::Ok,
            Decision::Error,
        ] {
            let json = serde_json::to_string(&d).expect("serialize");
            assert_eq!(json, format!("\"{}\"", d.as_str()));
        }
        assert_eq!(Decision::Deny.as_str(), "deny");
    }

    #[test]
    fn records_carry_the_current_utc_time_in_microseconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = open(&path);
        let before = time::OffsetDateTime::now_utc();
        log.record(&read("db").reason("because")).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
        let t = v["time"].as_str().expect("time");
        // 2026-01-02T03:04:05.123456Z
        assert_eq!(t.len(), 27, "{t}");
        assert!(t.ends_with('Z'), "{t}");
        let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        let age = parsed - before;
        assert!(
            age >= -time::Duration::seconds(1) && age < time::Duration::minutes(5),
            "{t}"
        );
        assert_eq!(v["reason"], "because");
        assert_eq!(v["decision"], "allow");
    }

    #[test]
    fn the_logs_hmac_uses_its_configured_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(&dir.path().join("audit.log"));
        assert_eq!(log.hmac("lease-1"), hmac_hex(b"k", "lease-1"));
        // Without a configured key each log draws its own.
        let random = |name: &str| {
            AuditLog::open(AuditConfig {
                path: dir.path().join(name),
                stdout: false,
                hmac_key: None,
                fsync: false,
            })
            .expect("open")
        };
        let (a, b) = (random("a.log"), random("b.log"));
        assert_eq!(a.hmac("lease-1").len(), 64);
        assert_ne!(a.hmac("lease-1"), b.hmac("lease-1"));
    }

    #[test]
    fn debug_output_names_the_path_and_never_the_hmac_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let config = AuditConfig {
            path: path.clone(),
            stdout: false,
            hmac_key: Some(Zeroizing::new(b"hunter2-key".to_vec())),
            fsync: false,
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("audit.log"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let log = AuditLog::open(config).expect("open");
        assert_eq!(log.path(), path);
        let shown = format!("{log:?}");
        assert!(shown.starts_with("AuditLog"), "{shown}");
        assert!(shown.contains("audit.log"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    /// Run in a child process by `every_record_is_copied_to_stdout` (libtest does not capture
    /// writes to the real stdout).
    #[test]
    fn child_writes_records_with_a_stdout_copy() {
        let Some(dir) = std::env::var_os("KEYWARD_AUDIT_STDOUT_CHILD") else {
            return;
        };
        let log = AuditLog::open(AuditConfig {
            path: Path::new(&dir).join("audit.log"),
            stdout: true,
            hmac_key: None,
            fsync: false,
        })
        .expect("open");
        log.record(&read("copied-to-stdout")).expect("write");
    }

    #[test]
    fn every_record_is_copied_to_stdout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "tests::child_writes_records_with_a_stdout_copy",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KEYWARD_AUDIT_STDOUT_CHILD", dir.path())
            .output()
            .expect("run child");
        assert!(out.status.success(), "{out:?}");
        let file = std::fs::read_to_string(dir.path().join("audit.log")).expect("log");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(file.lines().count(), 1, "{file}");
        assert!(
            stdout.contains(&file),
            "the stdout copy is the logged line:\n{stdout}"
        );
    }

    #[test]
    fn hmac_is_keyed_and_hides_the_value() {
        let a = hmac_hex(b"k1", "lease-123");
        assert_eq!(a.len(), 64);
        assert_ne!(a, hmac_hex(b"k2", "lease-123"));
        assert!(!a.contains("lease-123"));
    }
}
