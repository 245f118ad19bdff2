//! Tests added for the mutants `scripts/mutants.sh audit-claims` found alive (docs/testing.md,
//! "Mutation testing"): each names the behaviour a surviving mutant broke without a test failing.

use std::path::Path;

use keyward_audit::{AuditConfig, AuditLog, Decision, Record, Retention};
use keyward_testkit::disk::SmallDisk;

fn config(path: &Path) -> AuditConfig {
    AuditConfig {
        path: path.to_owned(),
        stdout: false,
        hmac_key: None,
        fsync: false,
    }
}

/// `open_with` creates the log's directory before it measures the volume (`!` deleted in its
/// parent filter: the volume of a directory not created yet cannot be read, and the budget
/// fell back to 64 MiB on a 1 MiB volume).
#[test]
fn the_budget_is_taken_from_the_volume_even_when_the_logs_directory_does_not_exist_yet() {
    let disk = SmallDisk::mount("1m");
    let path = disk.dir.path().join("not/yet/there/audit.log");
    let log = AuditLog::open(config(&path)).expect("open");
    assert_eq!(log.budget(), 512 * 1024, "half of the 1 MiB volume");
    let log = AuditLog::open_with(
        config(&disk.dir.path().join("also/new/audit.log")),
        Retention {
            volume_percent: 25,
            ..Retention::default()
        },
    )
    .expect("open");
    assert_eq!(log.budget(), 256 * 1024);
    log.record(&Record::new("secret.read", Decision::Allow))
        .expect("record");
}

/// The records of the log's active file, parsed.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record"))
        .collect()
}

/// `head` is what a Vault checkpoint anchors: the seq and hash of this chain's last record
/// (`Ok((0, ""))` survived: nothing compared it with the file).
#[test]
fn head_is_the_seq_and_hash_of_the_last_record_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(config(&path)).expect("open");
    assert_eq!(
        log.head().expect("head"),
        (0, keyward_audit::GENESIS.to_owned()),
        "before the first record"
    );
    for _ in 0..3 {
        log.record(&Record::new("secret.read", Decision::Allow))
            .expect("record");
    }
    let written = lines(&path);
    let last = written.last().expect("three records");
    assert_eq!(
        log.head().expect("head"),
        (3, last["hash"].as_str().expect("hash").to_owned())
    );
}

/// Hand-made records in the writer's form (canonical body, `hash` last), chained.
struct Chain {
    id: String,
    lines: Vec<String>,
    head: String,
}

/// The line the writer writes for `body` (a record without `hash`).
fn line(body: serde_json::Map<String, serde_json::Value>) -> (String, String) {
    let hash = keyward_audit::record_hash(&body);
    let text = keyward_audit::canonical(&serde_json::Value::Object(body));
    let line = format!(
        "{},\"hash\":\"{hash}\"}}",
        text.strip_suffix('}').expect("an object")
    );
    (line, hash)
}

/// A chain `id` of `n` records; its first names `prev_chain` when given.
fn chain(id: &str, n: u64, prev_chain: Option<serde_json::Value>) -> Chain {
    let mut prev = keyward_audit::GENESIS.to_owned();
    let mut lines = Vec::new();
    for seq in 1..=n {
        let mut body = serde_json::Map::new();
        body.insert("action".into(), "secret.read".into());
        body.insert("chain".into(), id.into());
        body.insert("decision".into(), "allow".into());
        body.insert("prev".into(), prev.clone().into());
        body.insert("seq".into(), seq.into());
        if seq == 1 {
            if let Some(l) = &prev_chain {
                body.insert("prev_chain".into(), l.clone());
            }
        }
        let (text, hash) = line(body);
        lines.push(text);
        prev = hash;
    }
    Chain {
        id: id.to_owned(),
        lines,
        head: prev,
    }
}

fn verify_lines(lines: &[&Chain]) -> Result<keyward_audit::VerifyReport, String> {
    let text: String = lines
        .iter()
        .flat_map(|c| c.lines.iter())
        .map(|l| format!("{l}\n"))
        .collect();
    keyward_audit::verify_reader(std::io::Cursor::new(text)).map_err(|e| e.to_string())
}

/// A new chain must name the chain before it by id, last seq *and* hash (`&&` → `||` before
/// the hash survived: a link with the right hash and a wrong seq or chain was accepted).
#[test]
fn a_chain_link_naming_the_right_hash_but_another_seq_or_chain_is_refused() {
    let a = chain("aaaa", 2, None);
    let good = chain(
        "bbbb",
        2,
        Some(serde_json::json!({"chain": a.id, "seq": 2, "hash": a.head})),
    );
    let report = verify_lines(&[&a, &good]).expect("a correct link verifies");
    assert_eq!(report.records, 4);
    assert_eq!(report.head, good.head);

    let wrong_seq = chain(
        "bbbb",
        2,
        Some(serde_json::json!({"chain": a.id, "seq": 7, "hash": a.head})),
    );
    let err = verify_lines(&[&a, &wrong_seq]).expect_err("a link to seq 7 of a 2-record chain");
    assert!(err.starts_with("line 3: "), "{err}");
    assert!(err.contains("ended at seq 7"), "{err}");

    let wrong_chain = chain(
        "bbbb",
        2,
        Some(serde_json::json!({"chain": "cccc", "seq": 2, "hash": a.head})),
    );
    let err = verify_lines(&[&a, &wrong_chain]).expect_err("a link naming another chain");
    assert!(err.starts_with("line 3: "), "{err}");

    let wrong_hash = chain(
        "bbbb",
        2,
        Some(serde_json::json!({"chain": a.id, "seq": 2, "hash": keyward_audit::GENESIS})),
    );
    verify_lines(&[&a, &wrong_hash]).expect_err("a link naming another hash");
}

/// Inputs are numbered in the order they are registered, and findings name them (`len() - 1`
/// → `+ 1` or `/ 1`, and `source_name` → `""`, survived: nothing read the numbers or names).
#[test]
fn each_input_is_numbered_in_order_and_findings_name_it() {
    let mut v = keyward_audit::ChainVerifier::new();
    assert_eq!(v.source("first.log"), 0);
    assert_eq!(v.source("second.log"), 1);
    assert_eq!(v.source("third.log"), 2);
    assert_eq!(v.source_name(0), "first.log");
    assert_eq!(v.source_name(1), "second.log");
    assert_eq!(v.source_name(2), "third.log");
    assert_eq!(v.source_name(3), "?", "an input never registered");
    // seq 2 removed: the gap names the two lines around it, in the input they came from.
    let c = chain("aaaa", 3, None);
    v.line(1, 1, &c.lines[0]);
    v.line(1, 2, &c.lines[2]);
    let reports = v.finish();
    let what = &reports[0].findings[0].what;
    assert!(
        what.contains("between second.log line 1 and second.log line 2"),
        "{what}"
    );
}

/// `read` numbers lines from 1 (`+ 1` → `* 1` survived), and lines that hold no record (text,
/// or JSON without the chain members) are counted as skipped, blank ones not (`!` deleted and
/// `+=` → `*=` survived: nothing read `skipped`).
#[test]
fn read_numbers_lines_from_one_and_counts_only_non_blank_lines_without_a_record() {
    let c = chain("aaaa", 3, None);
    let text = format!(
        "another program's log line\n\n\n{}\n   \n{{\"msg\":\"JSON, not a record\"}}\n{}\n",
        c.lines[0], c.lines[2]
    );
    let mut v = keyward_audit::ChainVerifier::new();
    let s = v.source("app.log");
    v.read(s, std::io::Cursor::new(text)).expect("read");
    assert_eq!(
        v.skipped, 2,
        "a text line and a JSON line are not records; the three blank lines are not counted"
    );
    let reports = v.finish();
    let what = &reports[0].findings[0].what;
    assert!(
        what.contains("between app.log line 4 and app.log line 7"),
        "{what}"
    );
}

/// `lines` of one chain as one input, through the verifier.
fn verify_one_input(lines: &[&str]) -> keyward_audit::ChainReport {
    let mut v = keyward_audit::ChainVerifier::new();
    let s = v.source("in.log");
    for (i, l) in lines.iter().enumerate() {
        v.line(s, i as u64 + 1, l);
    }
    let mut reports = v.finish();
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

/// A record delivered twice is a duplicate, not a finding, even twice in a row in one input
/// (`<` → `<=` in the reorder check survived); two *different* records under one seq are a
/// finding naming both (the guard `k.seq == e.seq` → `false`, and `&&` → `||` before the hash
/// comparison, survived).
#[test]
fn a_repeated_record_is_a_duplicate_and_two_different_records_at_one_seq_a_finding() {
    let c = chain("aaaa", 3, None);
    let repeated = verify_one_input(&[&c.lines[0], &c.lines[1], &c.lines[1], &c.lines[2]]);
    assert_eq!(repeated.duplicates, 1);
    assert_eq!(repeated.records, 3);
    assert!(repeated.findings.is_empty(), "{:?}", repeated.findings);

    // Another record at seq 2, with a hash of its own that is right for its content.
    let mut other: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&c.lines[1]).expect("json");
    other.remove("hash");
    other.insert("decision".into(), "deny".into());
    let (other, _) = line(other);
    let two = verify_one_input(&[&c.lines[0], &c.lines[1], &other, &c.lines[2]]);
    assert_eq!(two.duplicates, 0);
    let whats: Vec<&str> = two.findings.iter().map(|f| f.what.as_str()).collect();
    assert!(
        two.findings
            .iter()
            .any(|f| f.seq == 2
                && f.what == "two different records (in.log line 2 and in.log line 3)"),
        "{whats:?}"
    );
}

/// The hash member of a line.
fn hash_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    v["hash"].as_str().expect("hash").to_owned()
}

/// Chains `a` then `b` as one input, through the verifier: the report of `a`.
fn report_of_first(a: &Chain, b: &Chain) -> keyward_audit::ChainReport {
    let mut v = keyward_audit::ChainVerifier::new();
    let s = v.source("in.log");
    for (i, l) in a.lines.iter().chain(b.lines.iter()).enumerate() {
        v.line(s, i as u64 + 1, l);
    }
    v.finish()
        .into_iter()
        .find(|r| r.chain == a.id)
        .expect("chain a")
}

/// Where the next chain says this one ended is checked against this one: records missing
/// before it (`last_seq + 1` → `- 1`/`* 1` in the range survived), a different hash there
/// (guard `e.hash != link.hash` → `false` survived) and records after it (guard
/// `last_seq > link.seq` → `false`, `>` → `<`, `link.seq + 1` → `- 1`/`* 1` survived) are
/// findings on this chain, at the seq they concern.
#[test]
fn the_next_chains_link_must_match_this_chains_record_and_be_its_last() {
    let a = chain("aaaa", 3, None);
    let ok = chain(
        "bbbb",
        1,
        Some(serde_json::json!({"chain": a.id, "seq": 3, "hash": a.head})),
    );
    assert!(report_of_first(&a, &ok).findings.is_empty());

    let other_hash = chain(
        "bbbb",
        1,
        Some(serde_json::json!({"chain": a.id, "seq": 3, "hash": keyward_audit::GENESIS})),
    );
    let r = report_of_first(&a, &other_hash);
    assert!(
        r.findings.iter().any(|f| {
            f.seq == 3
            && f.what
                == "hash differs from the head chain bbbb recorded for it (the record was replaced)"
        }),
        "{:?}",
        r.findings
    );

    let ended_later = chain(
        "bbbb",
        1,
        Some(serde_json::json!({"chain": a.id, "seq": 5, "hash": keyward_audit::GENESIS})),
    );
    let r = report_of_first(&a, &ended_later);
    assert!(
        r.findings.iter().any(|f| f.seq == 4
            && f.what == "seq 4-5 missing (cut off at the end: chain bbbb began after seq 5)"),
        "{:?}",
        r.findings
    );

    let ended_earlier = chain(
        "bbbb",
        1,
        Some(serde_json::json!({"chain": a.id, "seq": 2, "hash": hash_of(&a.lines[1])})),
    );
    let r = report_of_first(&a, &ended_earlier);
    assert!(
        r.findings.iter().any(|f| f.seq == 3
            && f.what == "records after seq 2, where chain bbbb says this chain ended"),
        "{:?}",
        r.findings
    );
}

/// A chain that must reach a seq (`--expect CHAIN=SEQ`) and ends before it: the finding names
/// the range cut off (`last_seq + 1` → `- 1`/`* 1` in the range survived).
#[test]
fn an_expected_seq_beyond_the_last_record_names_the_range_cut_off() {
    let a = chain("aaaa", 3, None);
    let mut v = keyward_audit::ChainVerifier::new();
    let s = v.source("in.log");
    for (i, l) in a.lines.iter().enumerate() {
        v.line(s, i as u64 + 1, l);
    }
    v.expect("aaaa", 5);
    let r = v.finish().remove(0);
    let whats: Vec<(u64, &str)> = r
        .findings
        .iter()
        .map(|f| (f.seq, f.what.as_str()))
        .collect();
    assert_eq!(
        whats,
        [(
            4,
            "seq 4-5 missing (cut off at the end: the chain ends at record 3, and 5 were \
             written: the last 2 were cut off)"
        )]
    );
}

/// Records holding integers at and beyond 2^53, as the writer writes them, verify as intact.
/// (The writer's JCS crate prints such an integer as ECMAScript prints the double nearest it,
/// 2^53 + 1 as 9007199254740992, and that text reads back the same whoever writes it; the
/// bound's mutants are caught by `integers_beyond_two_to_the_53_are_hashed_as_rfc_8785_rounds_them`.)
#[test]
fn a_record_with_numbers_beyond_two_to_the_53_verifies_as_intact() {
    for n in [
        serde_json::json!(1u64 << 60),
        serde_json::json!(-(1i64 << 60)),
        // The first integers a double cannot hold.
        serde_json::json!((1u64 << 53) + 1),
        serde_json::json!(-(1i64 << 53) - 1),
    ] {
        let mut body = serde_json::Map::new();
        body.insert("action".into(), "secret.read".into());
        body.insert("chain".into(), "aaaa".into());
        body.insert("prev".into(), keyward_audit::GENESIS.into());
        body.insert("seq".into(), 1.into());
        body.insert("version".into(), n.clone());
        let (text, _) = line(body);
        let r = verify_one_input(&[&text]);
        assert!(r.findings.is_empty(), "{n}: {:?}", r.findings);
        assert_eq!(r.records, 1);
    }
}

/// The comparison of `lines` (of chain `aaaa`) with checkpoints at `(seq, head)`.
fn compare_with(
    lines: &[&String],
    checkpoints: &[(u64, String)],
    window: bool,
) -> keyward_audit::checkpoints::ChainVerdict {
    use keyward_audit::checkpoints::{compare, Checkpoint, PodCheckpoints, Seen};
    let mut seen = Seen::default();
    for l in lines {
        seen.line(l);
    }
    let pod = PodCheckpoints {
        path: "keyward/shop/app".into(),
        checkpoints: checkpoints
            .iter()
            .enumerate()
            .map(|(i, (seq, head))| Checkpoint {
                version: i as u64 + 1,
                created: "t".into(),
                chain: "aaaa".into(),
                seq: *seq,
                head: head.clone(),
                time: "t".into(),
            })
            .collect(),
        ..PodCheckpoints::default()
    };
    let pods = std::collections::BTreeMap::from([(("shop".into(), "app".into()), pod)]);
    let mut verdicts = compare(&seen, &pods, window);
    assert_eq!(verdicts.len(), 1);
    verdicts.remove(0)
}

/// A record a checkpoint anchors and the input lacks is a finding, unless the input is a
/// window that begins after it (then a note); a checkpoint at the last record read anchors the
/// chain up to it (the guard `window && cp.seq < c.first_seq` → `true`/`false`, its `&&` → `||`
/// and `<` → `==`/`>`, and `cp.seq > c.last_seq` → `>=`, survived: nothing in this crate
/// called `compare` with a record removed in the middle, a window, or a checkpoint at the end).
#[test]
fn a_checkpointed_record_missing_from_the_input_is_a_finding_unless_before_a_window() {
    let c = chain("aaaa", 5, None);
    let h = |i: usize| hash_of(&c.lines[i]);
    let all: Vec<&String> = c.lines.iter().collect();
    let without_3: Vec<&String> = [0, 1, 3, 4].iter().map(|&i| &c.lines[i]).collect();
    let from_3: Vec<&String> = c.lines[2..].iter().collect();

    for window in [false, true] {
        let v = compare_with(&without_3, &[(3, h(2))], window);
        assert_eq!(
            v.findings,
            ["seq 3: missing from the input, anchored by checkpoint version 1 (t) (removed)"],
            "window {window}"
        );
    }
    let v = compare_with(&from_3, &[(1, h(0))], true);
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert!(
        v.notes.iter().any(|n| n.starts_with(
            "seq 1: checkpoint version 1 (t) is before the first record read (seq 3)"
        )),
        "{:?}",
        v.notes
    );
    let v = compare_with(&from_3, &[(1, h(0))], false);
    assert_eq!(v.findings.len(), 1, "{:?}", v.notes);

    let v = compare_with(&all, &[(5, h(4))], false);
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!(
        v.notes,
        ["anchored up to its last record, seq 5 (checkpoint version 1, t)"]
    );
}

/// A chain `id` of `n` records, each naming `pod` (its `pod` member).
fn chain_of_pod(id: &str, n: u64, pod: serde_json::Value) -> Vec<String> {
    let mut prev = keyward_audit::GENESIS.to_owned();
    let mut lines = Vec::new();
    for seq in 1..=n {
        let mut body = serde_json::Map::new();
        body.insert("action".into(), "secret.read".into());
        body.insert("chain".into(), id.into());
        body.insert("decision".into(), "allow".into());
        body.insert("pod".into(), pod.clone());
        body.insert("prev".into(), prev.clone().into());
        body.insert("seq".into(), seq.into());
        let (text, hash) = line(body);
        lines.push(text);
        prev = hash;
    }
    lines
}

/// `Seen::read_into` feeds each line both to the verifier and to the comparison, numbered from
/// 1 (`read_into` → `Ok(())` survived, and so did its line numbers: nothing read what it
/// collected).
#[test]
fn read_into_feeds_the_verifier_and_the_comparison_with_lines_numbered_from_one() {
    use keyward_audit::checkpoints::Seen;
    let lines = chain_of_pod(
        "aaaa",
        4,
        serde_json::json!({"namespace": "shop", "pod_name": "app"}),
    );
    let text = format!(
        "{}\nanother program's line\n{}\n\n{}\n",
        lines[0], lines[1], lines[3]
    );
    let mut seen = Seen::default();
    let mut v = keyward_audit::ChainVerifier::new();
    let s = v.source("app.log");
    seen.read_into(&mut v, s, &mut std::io::Cursor::new(text))
        .expect("read");
    let c = &seen.chains["aaaa"];
    assert_eq!((c.namespace.as_str(), c.pod_name.as_str()), ("shop", "app"));
    assert_eq!((c.first_seq, c.last_seq), (1, 4));
    assert_eq!(v.skipped, 1);
    let reports = v.finish();
    assert_eq!(reports[0].records, 3);
    let what = &reports[0].findings[0].what;
    assert!(
        what.contains("between app.log line 3 and app.log line 5"),
        "{what}"
    );
}

/// Findings name a head by its first 16 hex digits, the checkpoint's and the record's
/// (`short` → `""` and → `"xyzzy"` survived: no test read the messages' heads).
#[test]
fn findings_name_heads_by_their_first_sixteen_hex_digits() {
    let c = chain("aaaa", 3, None);
    let two: Vec<&String> = c.lines[..2].iter().collect();
    let head = "0123456789abcdef".repeat(4);
    let v = compare_with(&two, &[(3, head.clone())], false);
    assert_eq!(
        v.findings,
        [
            "seq 3-3 missing: checkpoint version 1 (t) anchors seq 3 (head 0123456789abcdef) \
          beyond the last record read (records removed: truncated)"
        ]
    );
    let all: Vec<&String> = c.lines.iter().collect();
    let v = compare_with(&all, &[(2, head)], false);
    let record = hash_of(&c.lines[1]);
    assert_eq!(
        v.findings,
        [format!(
            "seq 2: hash {} differs from checkpoint version 1 (t), head 0123456789abcdef (the \
             record was rewritten, or records before it removed or reordered, even if the \
             chain verifies)",
            &record[..16]
        )]
    );
}

/// A chain whose records lack the namespace *or* the pod name names no pod, so its
/// checkpoints cannot be read: the note says so, and does not claim Vault has none
/// (`||` → `&&` survived).
#[test]
fn a_chain_whose_records_lack_the_namespace_or_the_pod_name_names_no_pod() {
    use keyward_audit::checkpoints::{compare, Seen};
    let no_pod = "no pod named by its records: checkpoints not read; seq 1-2 not anchored";
    let no_checkpoint = "no checkpoint in Vault for this chain: seq 1-2 not anchored";
    for (pod, note) in [
        (serde_json::json!({"namespace": "shop"}), no_pod),
        (serde_json::json!({"pod_name": "app"}), no_pod),
        (serde_json::json!({}), no_pod),
        (
            serde_json::json!({"namespace": "shop", "pod_name": "app"}),
            no_checkpoint,
        ),
    ] {
        let mut seen = Seen::default();
        for l in chain_of_pod("aaaa", 2, pod.clone()) {
            seen.line(&l);
        }
        let v = compare(&seen, &std::collections::BTreeMap::new(), false);
        assert_eq!(v.len(), 1);
        assert!(v[0].findings.is_empty(), "{pod}: {:?}", v[0].findings);
        assert_eq!(v[0].notes, [note], "{pod}");
    }
}

/// When several checkpoints anchor the same furthest seq, the chain is anchored from the first
/// of them (the earliest Vault held it), while `last` is the newest version
/// (`a.seq < cp.seq` → `<=` survived: nothing checkpointed one seq twice).
#[test]
fn a_seq_checkpointed_twice_is_anchored_from_its_first_checkpoint() {
    let c = chain("aaaa", 4, None);
    let all: Vec<&String> = c.lines.iter().collect();
    let h = |i: usize| hash_of(&c.lines[i]);
    let v = compare_with(&all, &[(2, h(1)), (3, h(2)), (3, h(2)), (1, h(0))], false);
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!(
        v.anchored.as_ref().map(|a| (a.seq, a.version)),
        Some((3, 2))
    );
    assert_eq!(v.last.as_ref().map(|a| (a.seq, a.version)), Some((3, 3)));
    assert_eq!(
        v.notes,
        ["anchored up to seq 3 (checkpoint version 2, t); seq 4-4 after it are not anchored"]
    );
}

/// "No checkpoint agrees" is stated only when nothing else was found: with a finding it would
/// be noise (guard → `true` survived), and without one it is the only word that the chain is
/// not anchored (guard → `false` survived).
#[test]
fn no_checkpoint_agrees_is_noted_only_when_there_is_no_finding() {
    let c = chain("aaaa", 3, None);
    let all: Vec<&String> = c.lines.iter().collect();
    let from_2: Vec<&String> = c.lines[1..].iter().collect();
    // Checkpoints at seq 0 (before any record) and before a window: nothing compared.
    let v = compare_with(
        &from_2,
        &[(0, "00".repeat(32)), (1, hash_of(&c.lines[0]))],
        true,
    );
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!(
        v.notes,
        [
            "seq 1: checkpoint version 2 (t) is before the first record read (seq 2): not \
             compared",
            "no checkpoint agrees: seq 2-3 not anchored",
        ]
    );
    // A checkpoint that disagrees: a finding, and no note.
    let v = compare_with(&all, &[(2, "00".repeat(32))], false);
    assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
    assert!(v.anchored.is_none());
    assert_eq!(v.notes, Vec::<String>::new());
}

/// Findings and notes about a pod's checkpoint path go to the chains of that pod and no
/// other, the chains read and the chains only Vault knows (`v.pod == name` → `!=` survived:
/// one pod in every test).
#[test]
fn a_pods_path_findings_go_to_that_pods_chains_only() {
    use keyward_audit::checkpoints::{compare, Checkpoint, PodCheckpoints, Seen};
    let pod = |ns: &str, name: &str| serde_json::json!({"namespace": ns, "pod_name": name});
    let mut seen = Seen::default();
    for l in chain_of_pod("aaaa", 2, pod("shop", "app"))
        .iter()
        .chain(&chain_of_pod("bbbb", 2, pod("bank", "vault-user")))
    {
        seen.line(l);
    }
    let path = |ns: &str, name: &str, removed: Option<&str>| PodCheckpoints {
        path: format!("keyward/{ns}/{name}"),
        checkpoints: removed
            .map(|chain| Checkpoint {
                version: 2,
                created: "t".into(),
                chain: chain.into(),
                seq: 7,
                head: "ab".repeat(32),
                time: "t".into(),
            })
            .into_iter()
            .collect(),
        findings: vec![format!("{ns}/{name}: version 1 was destroyed")],
        notes: vec![format!("{ns}/{name}: old versions not kept")],
    };
    let pods = std::collections::BTreeMap::from([
        (
            ("bank".into(), "vault-user".into()),
            path("bank", "vault-user", None),
        ),
        (
            ("shop".into(), "app".into()),
            path("shop", "app", Some("cccc")),
        ),
    ]);
    let verdicts = compare(&seen, &pods, false);
    let by_chain = |id: &str| {
        verdicts
            .iter()
            .find(|v| v.chain == id)
            .unwrap_or_else(|| panic!("chain {id}: {verdicts:?}"))
    };
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    for (id, ns, name) in [
        ("aaaa", "shop", "app"),
        ("bbbb", "bank", "vault-user"),
        ("cccc", "shop", "app"),
    ] {
        let v = by_chain(id);
        assert_eq!(v.pod, format!("{ns}/{name}"));
        let theirs = format!("{ns}/{name}: version 1 was destroyed");
        assert_eq!(
            v.findings
                .iter()
                .filter(|f| f.ends_with("was destroyed"))
                .collect::<Vec<_>>(),
            [&theirs],
            "{id}"
        );
        let note = format!("{ns}/{name}: old versions not kept");
        assert_eq!(
            v.notes
                .iter()
                .filter(|n| n.ends_with("not kept"))
                .collect::<Vec<_>>(),
            [&note],
            "{id}"
        );
    }
    assert!(
        by_chain("cccc").findings[0].contains("chain removed"),
        "{verdicts:?}"
    );
}

/// A checkpoint at seq 0 (written before the chain had a record) is no chain's last
/// checkpoint: `last`, what the log must reach, names only checkpoints of a record, and is
/// none when there is no other (`c.seq > 0` → `>=` in its filter survived at b15825d: every
/// test's chain had a checkpoint of a record as well, which outranks seq 0).
#[test]
fn a_checkpoint_at_seq_zero_is_not_the_last_checkpoint_a_log_must_reach() {
    let c = chain("aaaa", 2, None);
    let all: Vec<&String> = c.lines.iter().collect();
    let genesis = keyward_audit::GENESIS.to_owned();
    let v = compare_with(&all, &[(0, genesis.clone())], false);
    assert!(v.last.is_none(), "{:?}", v.last);
    assert!(v.anchored.is_none(), "{:?}", v.anchored);
    assert_eq!(v.notes, ["no checkpoint agrees: seq 1-2 not anchored"]);
    // Beside a checkpoint of a record, seq 0 is never the last either.
    let v = compare_with(&all, &[(1, hash_of(&c.lines[0])), (0, genesis)], false);
    assert_eq!(v.last.as_ref().map(|l| (l.seq, l.version)), Some((1, 1)));
}

/// Arguments for `verdicts` with a Vault that refuses connections: any pod whose checkpoints
/// are read is an error naming it, so the error says which pods were read.
fn unreachable_vault(pods: &[&str]) -> keyward_audit::checkpoints::CheckpointArgs {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    keyward_audit::checkpoints::CheckpointArgs {
        checkpoints: true,
        vault_addr: Some(format!("http://127.0.0.1:{port}")),
        vault_token: Some("reviewer-token".into()),
        allow_insecure_http: true,
        checkpoint_pod: pods.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

/// `verdicts` reads the checkpoints of exactly the pods the records name with both their
/// namespace and name, and of each `--checkpoint-pod` of the form NAMESPACE/POD_NAME; any
/// other `--checkpoint-pod` is refused before Vault is asked (at b15825d its filter's `&&` →
/// `||` and the `--checkpoint-pod` guard → `true`, `false`, each `&&` → `||` and each `!`
/// deleted, survived: only the OpenBao tests in `tests/` called it).
#[test]
fn checkpoints_are_read_for_pods_named_in_full_and_a_malformed_checkpoint_pod_is_refused() {
    use keyward_audit::checkpoints::{verdicts, Seen};
    let seen_of = |pod: serde_json::Value| {
        let mut seen = Seen::default();
        for l in chain_of_pod("aaaa", 2, pod) {
            seen.line(&l);
        }
        seen
    };
    // Records naming no pod in full: nothing to read, the chain is stated unanchored.
    for pod in [
        serde_json::json!({"namespace": "shop"}),
        serde_json::json!({"pod_name": "app"}),
    ] {
        let v = verdicts(&unreachable_vault(&[]), &seen_of(pod.clone()), false)
            .unwrap_or_else(|e| panic!("{pod}: read Vault: {e}"));
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].notes,
            ["no pod named by its records: checkpoints not read; seq 1-2 not anchored"],
            "{pod}"
        );
    }
    // Records naming the pod: its checkpoints are read (here: Vault cannot be reached).
    let named = seen_of(serde_json::json!({"namespace": "shop", "pod_name": "app"}));
    let e = verdicts(&unreachable_vault(&[]), &named, false).expect_err("Vault read");
    assert!(e.starts_with("checkpoints of shop/app: "), "{e}");

    let nothing = Seen::default();
    let e = verdicts(&unreachable_vault(&["shop/app"]), &nothing, false).expect_err("read");
    assert!(e.starts_with("checkpoints of shop/app: "), "{e}");
    for bad in ["shop", "/app", "shop/", "/", "shop/app/x", ""] {
        let e =
            verdicts(&unreachable_vault(&["shop/app", bad]), &nothing, false).expect_err("refused");
        assert_eq!(
            e,
            format!("--checkpoint-pod: expected NAMESPACE/POD_NAME, got {bad:?}")
        );
    }
}

/// The hash covers numbers as RFC 8785 writes them, as ECMAScript prints a double: a line
/// holding an integer beyond 2^53 as its exact digits (as a pipeline that keeps 64-bit
/// integers writes it) has the hash of the rounded text the writer's JCS crate gives
/// (9007199254740993 is hashed as 9007199254740992, 2^60 as 1152921504606847000). The verifier
/// must hash it so whichever way it reads the line: at b15825d the bound of `verify.rs`'s
/// `jcs_simple` (`MAX_SAFE` `- 1` → `+ 1`, the guards → `true`, `<=` → `>`) survived, because
/// `a_record_with_numbers_beyond_two_to_the_53_verifies_as_intact` feeds only the rounded
/// text, which reads back the same either way.
#[test]
fn integers_beyond_two_to_the_53_are_hashed_as_rfc_8785_rounds_them() {
    for (exact, rounded) in [
        ("9007199254740993", "9007199254740992"),
        ("-9007199254740993", "-9007199254740992"),
        ("1152921504606846976", "1152921504606847000"),
        ("-1152921504606846976", "-1152921504606847000"),
    ] {
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!(
            r#"{{"action":"secret.read","chain":"aaaa","prev":"{}","seq":1,"version":{exact}}}"#,
            keyward_audit::GENESIS
        ))
        .expect("json");
        let (written, hash) = line(body);
        assert!(
            written.contains(&format!("\"version\":{rounded},")),
            "the writer's text: {written}"
        );
        // The same record with the number's exact digits in the line.
        let exact_line = written.replacen(rounded, exact, 1);
        assert_ne!(exact_line, written);
        for l in [&written, &exact_line] {
            let r = verify_one_input(&[l]);
            assert!(r.findings.is_empty(), "{l}: {:?}", r.findings);
            assert_eq!((r.records, r.head.as_str()), (1, hash.as_str()), "{l}");
        }
        // And a line whose hash is taken over the exact digits does not verify.
        let mut digest = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(
            &mut digest,
            &exact_line.as_bytes()[..exact_line.rfind(",\"hash\"").expect("hash")],
        );
        sha2::Digest::update(&mut digest, b"}");
        let forged = exact_line.replacen(&hash, &hex::encode(sha2::Digest::finalize(digest)), 1);
        let r = verify_one_input(&[&forged]);
        assert_eq!(r.findings.len(), 1, "{forged}: {:?}", r.findings);
    }
    // A record with no integer a double holds exactly, `seq` included (read as a window: a
    // chain starting there), is hashed the same way (`<=` → `>` in the bound survived, since
    // every other record's small `seq` sends it to the JCS crate).
    let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!(
        r#"{{"chain":"aaaa","prev":"{}","seq":9007199254740993}}"#,
        keyward_audit::GENESIS
    ))
    .expect("json");
    let (written, hash) = line(body);
    let exact_line = written.replacen("9007199254740992", "9007199254740993", 1);
    for l in [&written, &exact_line] {
        let mut v = keyward_audit::ChainVerifier::new();
        v.window = true;
        let s = v.source("in.log");
        v.line(s, 1, l);
        let r = v.finish().remove(0);
        assert!(r.findings.is_empty(), "{l}: {:?}", r.findings);
        assert_eq!(r.head, hash, "{l}");
    }
}
