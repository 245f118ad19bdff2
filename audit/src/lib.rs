//! The tamper-evident audit log: one JSON line per decision, each carrying the SHA-256 of the
//! previous record and its own, so that editing, deleting or reordering a record is detected by
//! [`verify`] and by `keyward audit verify`.
//!
//! A record's hash covers its canonical form (RFC 8785 JSON Canonicalization, [`canonical`]) with
//! the `hash` member left out, so the chain survives log pipelines that re-serialise JSON. Each
//! line is written as that canonical text with `"hash"` appended last.
//!
//! Every record names its chain (a random id drawn at each start; `pod.pod_uid` once the pod is
//! known) and its sequence number in the chain. A new start begins a new chain; its first record
//! carries the previous chain's last head (`prev_chain`) when the local log still holds it.
//!
//! The local log is a set of size-bounded segments ([`SegmentedFile`], [`Retention`]). Writing
//! fails closed: [`AuditLog::record`] returns an error when the line cannot be written, and
//! callers must then refuse the access the record was about. [`AuditLog::health`] says so for
//! readiness, and writing resumes by itself once it works again.
//!
//! Routine work that changes nothing ([`AuditLog::routine`]: a KV re-read returning the same
//! version, a renewal) is recorded in full once per interval and otherwise counted; the count
//! goes out as one record with a `summary` member.

mod canon;
pub mod checkpoints;
pub mod cli;
mod envelope;
pub mod report;
mod sink;
mod verify;
mod written;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use canon::{canonical, canonical_without_hash, record_hash};
pub use envelope::extract_record;
pub use sink::{AuditSink, FileSink, RecordSink, SegmentedFile, StdoutSink};
pub use verify::{
    verify, verify_reader, ChainReport, ChainVerifier, Finding, VerifyError, VerifyReport,
};

/// The `prev` of the first record in a chain.
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
    #[error(
        "audit log {path} cannot be written since {since} ({refused} records refused): {error}"
    )]
    Failing {
        path: PathBuf,
        since: String,
        refused: u64,
        error: String,
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

/// The local process that made a request: uid and gid from `SO_PEERCRED`, the container from
/// the socket it connected to (each injected app container has its own), and, only when the
/// kernel shows it (same PID namespace), the pid and `/proc/PID/comm`.
///
/// `uid`, `gid` and `container` are what identify a caller. `pid` and `comm` are best effort and
/// caller-controlled (a process names itself; a pid is only meaningful in the sidecar's PID
/// namespace, and 0 from any other): they are written only when the pid is visible, together
/// with `process_info` saying so ([`Caller::PROCESS_INFO`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    #[serde(default, skip_serializing_if = "is_zero_pid")]
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    /// The app container whose socket the request came in on; empty on the pod's shared socket
    /// (`socket.path`: the sidecar's own, or a config that lists no containers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// [`Caller::PROCESS_INFO`] when `pid` and `comm` are written, else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub process_info: String,
}

fn is_zero_pid(pid: &i32) -> bool {
    *pid == 0
}

impl Caller {
    /// What `process_info` says of `pid` and `comm`.
    pub const PROCESS_INFO: &'static str = "best-effort, caller-controlled";

    /// A caller as the socket sees it: `pid` 0 (not visible from the sidecar's PID namespace)
    /// drops `comm` and writes neither.
    pub fn from_peer(pid: i32, uid: u32, gid: u32, comm: String, container: &str) -> Self {
        let visible = pid > 0;
        Self {
            pid: if visible { pid } else { 0 },
            uid,
            gid,
            comm: if visible { comm } else { String::new() },
            container: container.to_owned(),
            process_info: if visible {
                Self::PROCESS_INFO.to_owned()
            } else {
                String::new()
            },
        }
    }
}

/// The remote end of a proxied connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    pub addr: String,
}

/// The outcome a record states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Repeats of a routine record, counted instead of written one by one: `count` more times
/// between `from` and `to` (RFC 3339), the same action on the same secret, version and lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub from: String,
    pub to: String,
}

/// What a caller asks to be recorded. Time, sequence number, chain, pod identity and the hash
/// chain are added by [`AuditLog::record`]. Never put a secret value here: lease ids and token
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
    /// Set by the log on the record that stands for counted repeats ([`AuditLog::routine`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
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
            summary: None,
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Where the previous chain ended: carried by the first record of the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain: String,
    pub seq: u64,
    pub hash: String,
}

/// The record as hashed and written: the fields every record carries and the caller's record.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    seq: u64,
    chain: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a PodIdentity>,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_chain: Option<&'a ChainLink>,
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

/// The default cap of a budget derived from the volume (a disk-backed volume is large).
pub const DEFAULT_MAX_BUDGET: u64 = 64 << 20;

/// How much of the volume the local log may take, in how many segments, and how often routine
/// records are summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// The bytes all segments together may hold. `None`: `volume_percent` of the filesystem
    /// the log is on (an emptyDir with a `sizeLimit` is a filesystem of that size), at most
    /// [`DEFAULT_MAX_BUDGET`].
    pub max_bytes: Option<u64>,
    /// The share of the log's filesystem taken when `max_bytes` is not set (default 50).
    pub volume_percent: u8,
    /// Segments kept, the active one included (default 4): each holds `budget / segments`.
    pub segments: u32,
    /// Routine records ([`AuditLog::routine`]) are written in full once per key per interval
    /// and otherwise counted (default 10 minutes).
    pub summary_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: None,
            volume_percent: 50,
            segments: 4,
            summary_interval: Duration::from_secs(600),
        }
    }
}

impl Retention {
    /// The byte budget for a log at `path` (whose directory exists).
    pub fn budget_for(&self, path: &Path) -> u64 {
        if let Some(b) = self.max_bytes {
            return b;
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match nix::sys::statvfs::statvfs(dir) {
            Ok(fs) => {
                let total = fs.blocks().saturating_mul(fs.fragment_size());
                let share = u64::try_from(
                    u128::from(total) * u128::from(self.volume_percent.min(100)) / 100,
                )
                .unwrap_or(u64::MAX);
                if share == 0 {
                    DEFAULT_MAX_BUDGET
                } else {
                    share.min(DEFAULT_MAX_BUDGET)
                }
            }
            Err(_) => DEFAULT_MAX_BUDGET,
        }
    }
}

/// Repeats of one routine record counted in the current interval.
struct Pending {
    sample: Record,
    count: u64,
    from: String,
    to: String,
}

/// What makes routine records the same: everything but time, request id and reason.
#[derive(Clone, PartialEq, Eq, Hash)]
struct RoutineKey {
    action: &'static str,
    decision: Decision,
    secret: Option<String>,
    path: Option<String>,
    version: Option<u64>,
    lease_hmac: Option<String>,
    accessor_hmac: Option<String>,
}

impl RoutineKey {
    fn of(r: &Record) -> Self {
        Self {
            action: r.action,
            decision: r.decision,
            secret: r.secret.clone(),
            path: r.path.clone(),
            version: r.version,
            lease_hmac: r.lease_hmac.clone(),
            accessor_hmac: r.accessor_hmac.clone(),
        }
    }
}

/// Since when, and why, the log cannot be written.
struct Failing {
    since: String,
    error: String,
    refused: u64,
    last_try: Instant,
}

struct State {
    /// The log of record.
    record: Box<dyn RecordSink>,
    /// Copies of every recorded line (stdout, ...), best effort.
    copies: Vec<Box<dyn AuditSink>>,
    seq: u64,
    prev: String,
    pod: Option<PodIdentity>,
    /// The previous chain's end, written into this chain's first record.
    prev_chain: Option<ChainLink>,
    failing: Option<Failing>,
    routine: HashMap<RoutineKey, Pending>,
    interval_start: Instant,
}

/// An open, hash-chained audit log. Shared by every task of the sidecar (`Arc<AuditLog>`).
pub struct AuditLog {
    path: PathBuf,
    chain: String,
    budget: u64,
    summary_interval: Duration,
    hmac_key: Zeroizing<Vec<u8>>,
    state: Mutex<State>,
    /// `seq` of the last record written, readable without the lock (for metrics).
    last_seq: AtomicU64,
    writable: AtomicBool,
    write_failures: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log with the default [`Retention`] and begins a new
    /// chain linked to the last record already in it.
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        Self::open_with(config, Retention::default())
    }

    /// As [`AuditLog::open`], with the given retention.
    pub fn open_with(config: AuditConfig, retention: Retention) -> Result<Self, AuditError> {
        let open_err = |source| AuditError::Open {
            path: config.path.clone(),
            source,
        };
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let budget = retention.budget_for(&config.path);
        let segments = retention.segments.max(1);
        let mut record = SegmentedFile::open(
            &config.path,
            config.fsync,
            budget / u64::from(segments),
            segments,
        )
        .map_err(open_err)?;
        let prev_chain = record
            .last_line()
            .map_err(open_err)?
            .map(|line| chain_tail(&line));
        let mut copies: Vec<Box<dyn AuditSink>> = Vec::new();
        if config.stdout {
            copies.push(Box::new(StdoutSink));
        }
        let hmac_key = config.hmac_key.unwrap_or_else(|| {
            let mut k = Zeroizing::new(vec![0u8; 32]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
            k
        });
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Ok(Self {
            path: config.path,
            chain: hex::encode(id),
            budget,
            summary_interval: retention.summary_interval,
            hmac_key,
            state: Mutex::new(State {
                record: Box::new(record),
                copies,
                seq: 0,
                prev: GENESIS.to_owned(),
                pod: None,
                prev_chain,
                failing: None,
                routine: HashMap::new(),
                interval_start: Instant::now(),
            }),
            last_seq: AtomicU64::new(0),
            writable: AtomicBool::new(true),
            write_failures: AtomicU64::new(0),
        })
    }

    /// The sequence number of the last record of this chain (0 before the first). Exported as
    /// the metric `keyward_audit_last_seq`: a collector's history of it is what shows a log
    /// whose last records were cut off (`keyward audit verify --expect CHAIN=SEQ`).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// This chain's id (random per start).
    pub fn chain_id(&self) -> &str {
        &self.chain
    }

    /// The `seq` and hash of the last record of this chain (`(0, GENESIS)` before the first),
    /// from memory, not from the file: what a Vault checkpoint anchors.
    pub fn head(&self) -> Result<(u64, String), AuditError> {
        let s = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        Ok((s.seq, s.prev.clone()))
    }

    /// The bytes the local log's segments may hold together.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The log file's path (the active segment).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False while records cannot be written (see [`AuditLog::health`]).
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Records that could not be written since the log was opened.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
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

    /// `Ok` when records can be written; otherwise since when and why (for `/ready`). While the
    /// log is failing, this retries (at most once a second), so the log recovers by itself
    /// even when nothing else is recorded.
    pub fn health(&self) -> Result<(), String> {
        if self.writable() {
            return Ok(());
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| AuditError::Poisoned.to_string())?;
        let due = state
            .failing
            .as_ref()
            .is_some_and(|f| f.last_try.elapsed() >= Duration::from_secs(1));
        if due {
            let _ = self.resume_locked(&mut state);
        }
        match self.failing_error(&state) {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// Appends one record. On error nothing is counted as recorded: the caller must not perform
    /// (or must not reveal the result of) the access the record is about.
    pub fn record(&self, record: &Record) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        self.resume_locked(&mut state)?;
        self.summaries_due_locked(&mut state, Some(record));
        self.write_checked(&mut state, record)
    }

    /// Records routine work that changes nothing (a re-read returning the same version, a
    /// renewal): the first of its kind in each summary interval is written in full, later ones
    /// are counted and written as one record with `summary` when the interval ends (at the
    /// first record after it), when a record of the same action and secret that is not routine
    /// comes (an error, a new version), or at [`AuditLog::flush_summaries`].
    pub fn routine(&self, record: &Record) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        self.resume_locked(&mut state)?;
        self.summaries_due_locked(&mut state, None);
        let key = RoutineKey::of(record);
        if let Some(p) = state.routine.get_mut(&key) {
            let now = now_rfc3339();
            if p.count == 0 {
                p.from.clone_from(&now);
            }
            p.count += 1;
            p.to = now;
            return Ok(());
        }
        self.write_checked(&mut state, record)?;
        let mut sample = record.clone();
        sample.vault_request_id = None;
        sample.reason = None;
        state.routine.insert(
            key,
            Pending {
                sample,
                count: 0,
                from: String::new(),
                to: String::new(),
            },
        );
        Ok(())
    }

    /// Writes the counts of routine records not yet written (at shutdown).
    pub fn flush_summaries(&self) {
        if let Ok(mut state) = self.state.lock() {
            self.write_summaries_locked(&mut state, |_| true);
        }
    }

    /// Writes the summaries due: all of them when the interval is over, else those of the same
    /// action and secret as `incoming` (so that the counts come before what changed).
    fn summaries_due_locked(&self, state: &mut State, incoming: Option<&Record>) {
        if state.routine.is_empty() {
            state.interval_start = Instant::now();
            return;
        }
        if state.interval_start.elapsed() >= self.summary_interval {
            self.write_summaries_locked(state, |_| true);
            state.interval_start = Instant::now();
        } else if let Some(r) = incoming {
            self.write_summaries_locked(state, |k| k.action == r.action && k.secret == r.secret);
        }
    }

    /// Writes the summary of each pending key that `which` selects, and forgets those keys (so
    /// the next routine record of the kind is written in full). A summary that cannot be
    /// written is kept for later.
    fn write_summaries_locked(&self, state: &mut State, which: impl Fn(&RoutineKey) -> bool) {
        let mut keys: Vec<RoutineKey> =
            state.routine.keys().filter(|k| which(k)).cloned().collect();
        // A stable order: by action, then secret.
        keys.sort_by(|a, b| (a.action, &a.secret).cmp(&(b.action, &b.secret)));
        for key in keys {
            let Some(p) = state.routine.get(&key) else {
                continue;
            };
            if p.count > 0 {
                let mut rec = p.sample.clone();
                rec.summary = Some(Summary {
                    count: p.count,
                    from: p.from.clone(),
                    to: p.to.clone(),
                });
                if self.write_checked(state, &rec).is_err() {
                    continue;
                }
            }
            state.routine.remove(&key);
        }
    }

    fn failing_error(&self, state: &State) -> Option<AuditError> {
        state.failing.as_ref().map(|f| AuditError::Failing {
            path: self.path.clone(),
            since: f.since.clone(),
            refused: f.refused,
            error: f.error.clone(),
        })
    }

    /// While failing: writes the record of the outage (`audit.resumed`, how many records were
    /// refused since when and why) and, once that works, clears the failure.
    fn resume_locked(&self, state: &mut State) -> Result<(), AuditError> {
        let Some(f) = &state.failing else {
            return Ok(());
        };
        let rec = Record::new("audit.resumed", Decision::Ok).reason(format!(
            "{} records could not be written from {} to {}: {}",
            f.refused,
            f.since,
            now_rfc3339(),
            f.error
        ));
        match self.write_locked(state, &rec) {
            Ok(()) => {
                if let Some(f) = state.failing.take() {
                    tracing::info!(
                        path = %self.path.display(),
                        since = %f.since,
                        refused = f.refused,
                        "Audit log writable again; serving resumes"
                    );
                }
                self.writable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.note_failure(state, &e);
                Err(self.failing_error(state).unwrap_or(e))
            }
        }
    }

    fn write_checked(&self, state: &mut State, record: &Record) -> Result<(), AuditError> {
        self.write_locked(state, record)
            .inspect_err(|e| self.note_failure(state, e))
    }

    /// Counts a failed write, and on the first of a run flags the log unwritable and says why.
    fn note_failure(&self, state: &mut State, e: &AuditError) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        self.writable.store(false, Ordering::Relaxed);
        match &mut state.failing {
            Some(f) => {
                f.refused += 1;
                f.last_try = Instant::now();
            }
            None => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "Audit log cannot be written; refusing what needs a record until it can"
                );
                state.failing = Some(Failing {
                    since: now_rfc3339(),
                    error: match e {
                        AuditError::Write { source, .. } => source.to_string(),
                        other => other.to_string(),
                    },
                    refused: 1,
                    last_try: Instant::now(),
                });
            }
        }
    }

    fn write_locked(&self, state: &mut State, record: &Record) -> Result<(), AuditError> {
        let seq = state.seq + 1;
        let line = Line {
            time: now_rfc3339(),
            seq,
            chain: &self.chain,
            pod: state.pod.as_ref(),
            record,
            prev: &state.prev,
            prev_chain: if seq == 1 {
                state.prev_chain.as_ref()
            } else {
                None
            },
        };
        // A struct of strings and integers always converts.
        let value = serde_json::to_value(&line).unwrap_or_default();
        let body = canonical(&value);
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        let mut text = canon::line_of(&body, &hash);
        text.push('\n');
        state
            .record
            .append(text.as_bytes())
            .map_err(|source| AuditError::Write {
                path: self.path.clone(),
                source,
            })?;
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

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.flush_summaries();
    }
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

/// Where the chain of `line` ended. A line that cannot be read is linked by its raw SHA-256.
fn chain_tail(line: &str) -> ChainLink {
    #[derive(Deserialize)]
    struct Tail {
        #[serde(default)]
        chain: String,
        seq: u64,
        hash: String,
    }
    match serde_json::from_str::<Tail>(line) {
        Ok(t) => ChainLink {
            chain: t.chain,
            seq: t.seq,
            hash: t.hash,
        },
        Err(_) => ChainLink {
            chain: String::new(),
            seq: 0,
            hash: hex::encode(Sha256::digest(line.as_bytes())),
        },
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
        r.caller = Some(Caller::from_peer(7, 1000, 1000, "app".into(), "web"));
        r
    }

    #[test]
    fn a_caller_whose_pid_is_not_visible_is_recorded_by_container_and_uid_only() {
        let hidden = Caller::from_peer(0, 1000, 1000, "forged".into(), "web");
        let json = serde_json::to_value(&hidden).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"uid": 1000, "gid": 1000, "container": "web"})
        );
        let seen = Caller::from_peer(42, 1000, 1000, "app".into(), "");
        let json = serde_json::to_value(&seen).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"pid": 42, "uid": 1000, "gid": 1000, "comm": "app",
                "process_info": Caller::PROCESS_INFO})
        );
        let old: Caller =
            serde_json::from_str(r#"{"pid":0,"uid":1,"gid":1}"#).expect("older records read");
        assert_eq!(old, Caller::from_peer(0, 1, 1, String::new(), ""));
    }

    #[test]
    fn a_reopen_begins_a_new_chain_linked_to_the_last_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let first_chain = {
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
            log.chain_id().to_owned()
        };
        let log = open(&path);
        assert_eq!(log.last_seq(), 0, "a new start is a new chain");
        assert_ne!(log.chain_id(), first_chain);
        log.record(&read("db")).expect("write");
        assert_eq!(log.last_seq(), 1);
        let report = verify(&path).expect("verify");
        assert_eq!(report.records, 3);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(r#""pod":{"namespace":"shop","service_account":"orders"}"#));
        assert!(lines[2].contains(r#""seq":1"#));
        assert!(lines[2].contains(&format!(
            r#""prev_chain":{{"chain":"{first_chain}","hash":"#
        )));
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
