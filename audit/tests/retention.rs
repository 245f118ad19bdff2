//! The local log on the pod: size-bounded segments whose chain verifies across them, a write
//! failure that flips the health flag and recovers by itself, routine records summarised.

use std::path::Path;
use std::time::Duration;

use keyward_audit::{
    AuditConfig, AuditLog, ChainVerifier, Decision, PodIdentity, Record, Retention, SegmentedFile,
};
use keyward_testkit::disk::SmallDisk;
use serde_json::Value;

fn config(path: &Path) -> AuditConfig {
    AuditConfig {
        path: path.to_owned(),
        stdout: false,
        hmac_key: None,
        fsync: false,
    }
}

fn read(i: usize) -> Record {
    let mut r = Record::new("secret.read", Decision::Allow);
    r.secret = Some(format!("secret-{i}"));
    r.reason = Some("x".repeat(i % 200));
    r
}

fn total_bytes(path: &Path) -> u64 {
    SegmentedFile::files(path)
        .expect("segments")
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn records(path: &Path) -> Vec<Value> {
    SegmentedFile::files(path)
        .expect("segments")
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("json"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Verifies every segment of the log as `keyward audit verify --window` does.
fn verify_window(path: &Path) -> Vec<keyward_audit::ChainReport> {
    let mut v = ChainVerifier::new();
    v.window = true;
    for f in SegmentedFile::files(path).expect("segments") {
        let s = v.source(f.display().to_string());
        v.read(
            s,
            std::io::BufReader::new(std::fs::File::open(&f).expect("open")),
        )
        .expect("read");
    }
    v.finish()
}

#[test]
fn rotation_keeps_the_log_under_its_budget_and_the_chain_verifies_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let budget = 64 * 1024;
    let retention = Retention {
        max_bytes: Some(budget),
        segments: 4,
        ..Retention::default()
    };
    let log = AuditLog::open_with(config(&path), retention.clone()).expect("open");
    assert_eq!(log.budget(), budget);
    let mut written = 0u64;
    for i in 0..3000 {
        log.record(&read(i)).expect("write");
        written += 1;
        assert!(
            total_bytes(&path) <= budget,
            "after record {i}: {} bytes on disk, budget {budget}",
            total_bytes(&path)
        );
    }
    let closed = SegmentedFile::closed_segments(&path).expect("closed");
    assert_eq!(closed.len(), 3, "the active segment and 3 closed ones");
    assert!(closed[0].0 > 1, "older segments were removed: {closed:?}");
    let kept = records(&path);
    assert!((kept.len() as u64) < written, "the window is bounded");
    let seqs: Vec<u64> = kept
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(*seqs.last().expect("last"), written);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "oldest segment first, no gap across segment boundaries"
    );
    let reports = verify_window(&path);
    assert_eq!(reports.len(), 1);
    assert!(reports[0].findings.is_empty(), "{:?}", reports[0].findings);
    assert_eq!(reports[0].last_seq, written);
    // Without --window the rotated-away start is reported, naming the chain's missing range.
    let mut v = ChainVerifier::new();
    for f in SegmentedFile::files(&path).expect("segments") {
        let s = v.source(f.display().to_string());
        v.read(
            s,
            std::io::BufReader::new(std::fs::File::open(&f).expect("open")),
        )
        .expect("read");
    }
    let r = v.finish();
    assert_eq!(r[0].findings.len(), 1, "{:?}", r[0].findings);
    assert!(
        r[0].findings[0].what.starts_with("seq 1-"),
        "{:?}",
        r[0].findings
    );

    // A restart continues in the same segments with a new chain linked to the last record.
    drop(log);
    let log = AuditLog::open_with(config(&path), retention).expect("reopen");
    for i in 0..500 {
        log.record(&read(i)).expect("write");
        assert!(total_bytes(&path) <= budget);
    }
    let reports = verify_window(&path);
    assert!(reports.iter().all(|r| r.findings.is_empty()), "{reports:?}");
    assert!(reports.iter().any(|r| r.chain == log.chain_id()));
}

#[test]
fn the_default_budget_is_half_the_volume_the_log_is_on() {
    let disk = SmallDisk::mount("1m");
    let path = disk.dir.path().join("audit.log");
    let log = AuditLog::open(config(&path)).expect("open");
    assert_eq!(log.budget(), 512 * 1024);
    let retention = Retention {
        volume_percent: 25,
        ..Retention::default()
    };
    assert_eq!(retention.budget_for(&path), 256 * 1024);
    // Writing many times the volume never fills it.
    for i in 0..6000 {
        log.record(&read(i)).expect("the volume never fills");
    }
    assert!(total_bytes(&path) <= 512 * 1024);
    assert!(log.last_seq() == 6000);
}

#[test]
fn a_write_failure_flips_the_health_flag_and_writing_resumes_by_itself() {
    let disk = SmallDisk::mount("256k");
    let path = disk.dir.path().join("audit.log");
    let log = AuditLog::open_with(
        config(&path),
        Retention {
            max_bytes: Some(64 * 1024),
            ..Retention::default()
        },
    )
    .expect("open");
    log.set_pod(PodIdentity {
        namespace: "shop".into(),
        service_account: "orders".into(),
        ..Default::default()
    });
    log.record(&read(1)).expect("write");
    assert_eq!(log.health(), Ok(()));
    assert!(log.writable());

    // Something else on the volume fills it.
    disk.fill();
    let mut refused = 0;
    for i in 0..200 {
        if log.record(&read(i)).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "a full volume refuses records");
    assert!(!log.writable());
    assert!(log.write_failures() >= refused);
    let why = log.health().expect_err("unhealthy while failing");
    assert!(why.contains("cannot be written since"), "{why}");
    assert!(why.contains("No space left"), "{why}");
    let err = log.record(&read(0)).expect_err("still refused");
    assert!(err.to_string().contains("records refused"), "{err}");

    // Space returns: the readiness check alone brings the log back (retried at most once a
    // second), and the outage is itself recorded. The first check comes only after the second
    // since the last refused write has passed, so the retry it makes is the one the throttle
    // allows once its second is over (a throttle that retried only within that second, never
    // after it, would leave the log failing for good: a cargo-mutants survivor, `>=` -> `<`).
    disk.free();
    std::thread::sleep(Duration::from_millis(1100));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.health().is_err() {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log.writable());
    log.record(&read(2)).expect("writing resumed");
    let all = records(&path);
    let resumed: Vec<&Value> = all
        .iter()
        .filter(|r| r["action"] == "audit.resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{all:?}");
    let reason = resumed[0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("records could not be written from"),
        "{reason}"
    );
    // It counts every refused record, not only the first.
    let counted: u64 = reason
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count first: {reason}"));
    assert!(
        counted >= refused && refused > 1,
        "{counted} counted, {refused} refused: {reason}"
    );
    let reports = verify_window(&path);
    assert!(
        reports.iter().all(|r| r.findings.is_empty()),
        "no partial record was left: {reports:?}"
    );
}

fn renewal() -> Record {
    let mut r = Record::new("vault.lease_renew", Decision::Ok);
    r.secret = Some("db".into());
    r.lease_hmac = Some("ab12".into());
    r.vault_request_id = Some("req".into());
    r
}

#[test]
fn routine_records_are_written_once_per_interval_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = AuditLog::open_with(
        config(&path),
        Retention {
            summary_interval: Duration::from_secs(3600),
            ..Retention::default()
        },
    )
    .expect("open");
    for _ in 0..50 {
        log.routine(&renewal()).expect("routine");
    }
    // Every app read is still its own record; a read of the same secret is another action, so
    // it does not end the renewals' count (only the same action and secret do).
    for i in 0..3 {
        log.record(&read(i)).expect("read");
    }
    let mut db_read = read(0);
    db_read.secret = Some("db".into());
    log.record(&db_read).expect("read of db");
    let all = records(&path);
    assert_eq!(
        all.len(),
        5,
        "one renewal in full, four reads, no summary yet: {all:?}"
    );
    assert_eq!(all[0]["action"], "vault.lease_renew");
    assert!(all[0].get("summary").is_none());

    // A renewal error on the same lease is a change: the count goes out first.
    let err = Record::new("vault.lease_renew", Decision::Error).reason("lease not found");
    let mut err = err;
    err.secret = Some("db".into());
    log.record(&err).expect("error record");
    let all = records(&path);
    assert_eq!(all.len(), 7);
    assert_eq!(all[5]["summary"]["count"], 49, "{:?}", all[5]);
    assert_eq!(all[5]["lease_hmac"], "ab12");
    assert!(all[5].get("vault_request_id").is_none());
    assert_eq!(all[6]["decision"], "error");
    // ... and the next routine one is in full again, its repeats flushed at shutdown.
    log.routine(&renewal()).expect("routine");
    log.routine(&renewal()).expect("routine");
    drop(log);
    let all = records(&path);
    assert_eq!(all.len(), 9, "{all:?}");
    assert!(all[7].get("summary").is_none());
    assert_eq!(all[8]["summary"]["count"], 1);
    // A summary spans the first counted record to the last: both times are there, in order,
    // and one counted record is its own span.
    for s in [&all[5]["summary"], &all[8]["summary"]] {
        let (from, to) = (
            s["from"].as_str().expect("from"),
            s["to"].as_str().expect("to"),
        );
        assert!(!from.is_empty() && !to.is_empty(), "{s}");
        assert!(from <= to, "{s}");
    }
    assert_eq!(all[8]["summary"]["from"], all[8]["summary"]["to"]);
    assert!(verify_window(&path).iter().all(|r| r.findings.is_empty()));
}

#[test]
fn routine_records_after_the_interval_are_written_in_full_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = AuditLog::open_with(
        config(&path),
        Retention {
            summary_interval: Duration::ZERO,
            ..Retention::default()
        },
    )
    .expect("open");
    for _ in 0..3 {
        log.routine(&renewal()).expect("routine");
    }
    assert_eq!(
        records(&path).len(),
        3,
        "each interval begins with a full record"
    );
}
