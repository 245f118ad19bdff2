//! The rules of the segmented local log (`SegmentedFile`) that cargo-mutants found unpinned
//! (docs/testing.md, "The audit crate after its rewrite", `audit-segments` at 1d8050b): which
//! files beside the log are its closed segments, where a reopened log finds the line its chain
//! continues from, and exactly when the active segment is closed.

use std::path::{Path, PathBuf};

use keyward_audit::{RecordSink, SegmentedFile};

fn names(segments: &[(u64, PathBuf)]) -> Vec<(u64, String)> {
    segments
        .iter()
        .map(|(n, p)| {
            let name = p.file_name().expect("a file name").to_string_lossy();
            (*n, name.into_owned())
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read")
}

/// Only `NAME.` followed by exactly six digits is a closed segment: `audit.log.1` (a logrotate
/// leftover, an operator's copy) or seven digits beside the log are not, so rotation neither
/// numbers after them nor removes them (`number.len() == 6 && all digits` → `||` survived).
#[test]
fn only_six_digit_suffixes_are_closed_segments_and_rotation_leaves_other_files_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    for other in [
        "audit.log.1",
        "audit.log.0000009",
        "audit.log.12345",
        "audit.log.00000a",
        "audit.log.bak",
    ] {
        std::fs::write(dir.path().join(other), "not a segment\n").expect("write");
    }
    std::fs::write(dir.path().join("audit.log.000002"), "{\"seq\":1}\n").expect("write");
    assert_eq!(
        names(&SegmentedFile::closed_segments(&path).expect("list")),
        [(2, "audit.log.000002".to_owned())]
    );

    // Two segments in all: every rotation keeps only the newest closed one.
    let mut log = SegmentedFile::open(&path, false, 10, 2).expect("open");
    for i in 0..4 {
        log.append(format!("line {i:03}\n").as_bytes())
            .expect("append");
    }
    assert_eq!(
        names(&SegmentedFile::closed_segments(&path).expect("list")),
        [(5, "audit.log.000005".to_owned())],
        "numbered after 000002, not after audit.log.1 or audit.log.0000009"
    );
    for other in [
        "audit.log.1",
        "audit.log.0000009",
        "audit.log.12345",
        "audit.log.00000a",
        "audit.log.bak",
    ] {
        assert_eq!(read(&dir.path().join(other)), "not a segment\n", "{other}");
    }
    assert_eq!(read(&path), "line 003\n");
}

/// A log reopened with its active segment empty (a rotation stopped after its rename, a
/// restart just after one) continues from the last line of the newest closed segment, so the
/// new chain links to the old one (`!` deleted in `if !self.rotates` survived: the reopened
/// log found no last line and its new chain named no `prev_chain`).
#[test]
fn a_log_reopened_with_an_empty_active_segment_continues_from_the_newest_closed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    std::fs::write(
        dir.path().join("audit.log.000001"),
        "{\"seq\":1}\n{\"seq\":2}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("audit.log.000002"),
        "{\"seq\":3}\n{\"seq\":4}\n\n",
    )
    .expect("write");
    let mut log = SegmentedFile::open(&path, false, 1024, 4).expect("open");
    assert_eq!(read(&path), "", "the active segment is empty");
    assert_eq!(
        log.last_line().expect("last line").as_deref(),
        Some("{\"seq\":4}")
    );
    log.append(b"{\"seq\":5}\n").expect("append");
    assert_eq!(
        log.last_line().expect("last line").as_deref(),
        Some("{\"seq\":5}")
    );

    // The same through the writer: records after a stopped rotation continue the chain.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let config = || keyward_audit::AuditConfig {
        path: path.clone(),
        stdout: false,
        hmac_key: None,
        fsync: false,
    };
    let log = keyward_audit::AuditLog::open(config()).expect("open");
    for _ in 0..3 {
        log.record(&keyward_audit::Record::new(
            "secret.read",
            keyward_audit::Decision::Allow,
        ))
        .expect("record");
    }
    let (seq, head) = log.head().expect("head");
    let chain = log.chain_id().to_owned();
    drop(log);
    std::fs::rename(&path, dir.path().join("audit.log.000001")).expect("rename");
    let log = keyward_audit::AuditLog::open(config()).expect("reopen");
    log.record(&keyward_audit::Record::new(
        "secret.read",
        keyward_audit::Decision::Allow,
    ))
    .expect("record");
    drop(log);
    let next: serde_json::Value = serde_json::from_str(read(&path).trim()).expect("json");
    assert_eq!(next["seq"], 1, "a new chain: {next}");
    assert_eq!(
        next["prev_chain"],
        serde_json::json!({"chain": chain, "seq": seq, "hash": head}),
        "linked to the last record of the closed segment"
    );
}

/// A segment takes lines until it holds exactly `segment_bytes` (`>` → `>=`, and `+` → `*`,
/// survived), and a line longer than a segment goes into an empty active segment without a
/// rotation that would close an empty file (`active.len > 0` → `>=` survived), then sits alone
/// in its segment.
#[test]
fn a_segment_fills_to_exactly_its_size_and_a_line_larger_than_a_segment_sits_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let mut log = SegmentedFile::open(&path, false, 20, 4).expect("open");
    log.append(b"123456789\n").expect("append");
    log.append(b"abcdefghi\n").expect("append");
    assert!(
        SegmentedFile::closed_segments(&path)
            .expect("list")
            .is_empty(),
        "20 bytes in a 20-byte segment: no rotation yet"
    );
    assert_eq!(read(&path), "123456789\nabcdefghi\n");
    log.append(b"x\n").expect("append");
    assert_eq!(
        names(&SegmentedFile::closed_segments(&path).expect("list")),
        [(1, "audit.log.000001".to_owned())]
    );
    assert_eq!(
        read(&dir.path().join("audit.log.000001")),
        "123456789\nabcdefghi\n"
    );
    assert_eq!(read(&path), "x\n");

    // A line larger than a segment, into an empty log: written, nothing closed.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let big = format!("{}\n", "b".repeat(40));
    let mut log = SegmentedFile::open(&path, false, 20, 4).expect("open");
    log.append(big.as_bytes()).expect("append");
    assert!(
        SegmentedFile::closed_segments(&path)
            .expect("list")
            .is_empty(),
        "nothing closed"
    );
    assert_eq!(read(&path), big);
    log.append(b"after\n").expect("append");
    assert_eq!(
        names(&SegmentedFile::closed_segments(&path).expect("list")),
        [(1, "audit.log.000001".to_owned())]
    );
    assert_eq!(read(&dir.path().join("audit.log.000001")), big, "alone");
    assert_eq!(read(&path), "after\n");
}
