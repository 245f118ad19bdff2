//! The audit log's retention settings in the sidecar config reach the log: a broker whose
//! config bounds the log (`audit.max_bytes`, `audit.segments`) keeps every segment together
//! under that bound while it serves many more bytes of records, and the newest window still
//! links record to record. In memory (in-memory source, duplex connections): no Vault.

mod support;

use std::time::Duration;

use serde_json::json;
use support::memory::MemorySource;
use support::{fixture_with_audit, get};
use tokio_util::sync::CancellationToken;

/// Bytes of all of the log's segments (`audit.log`, `audit.log.NNNNNN`).
fn log_bytes(f: &support::Fixture) -> u64 {
    let dir = f.audit.parent().expect("log dir");
    let name = f
        .audit
        .file_name()
        .expect("log name")
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir(dir)
        .expect("read log dir")
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.metadata().expect("stat segment").len())
        .sum()
}

#[tokio::test]
async fn the_configured_byte_bound_holds_every_segment_while_reads_write_many_times_it() {
    const BOUND: u64 = 64 * 1024;
    let app = MemorySource::new(json!({"password": "s3cret"}));
    let f = fixture_with_audit(
        &["{name: app, path: memory/app}"],
        &[("app", app.dyn_source())],
        &format!("max_bytes: {BOUND}, segments: 2, summary_interval: 1m"),
    );
    let stop = CancellationToken::new();
    let broker = f.broker.clone();
    let s = stop.clone();
    let task = tokio::spawn(async move { broker.run_without_socket(s).await });

    let first = get(&f.broker, 1000, "/v1/secrets/app?index=0&wait=20s").await;
    assert_eq!(first.status, 200, "{first:?}");
    let mut written = 0u64;
    let mut reads = 0u32;
    // Each read is its own record: keep reading until the records served add up to four
    // times the bound, checking the bound after every read.
    while written < 4 * BOUND {
        let before = std::fs::metadata(&f.audit).map(|m| m.len()).unwrap_or(0);
        let a = get(&f.broker, 1000, "/v1/secrets/app/password").await;
        assert_eq!((a.status, a.body.as_str()), (200, "s3cret"));
        reads += 1;
        let after = std::fs::metadata(&f.audit).map(|m| m.len()).unwrap_or(0);
        written += after.saturating_sub(before).max(1);
        let total = log_bytes(&f);
        assert!(
            total <= BOUND,
            "after {reads} reads the log's segments hold {total} bytes, over audit.max_bytes {BOUND}"
        );
    }
    let segments = std::fs::read_dir(f.audit.parent().expect("dir"))
        .expect("read dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("audit.log"))
        })
        .count();
    assert!(
        segments <= 2,
        "audit.segments is 2, found {segments} segment files"
    );

    // The newest window is one chain: each record's prev is the hash of the one before.
    let text = std::fs::read_to_string(&f.audit).expect("read the active segment");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("record is JSON"))
        .collect();
    assert!(lines.len() > 10, "the active segment holds records");
    for pair in lines.windows(2) {
        assert_eq!(
            pair[1]["prev"], pair[0]["hash"],
            "records link within the window"
        );
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the broker stops")
        .expect("no panic");
}
