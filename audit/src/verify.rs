//! Chain verification: names the first line that breaks the chain and why.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::{hash_prefix, GENESIS};

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The hash of the last record (GENESIS for an empty log).
    pub head: String,
}

/// The first problem found, with its 1-based line number.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read audit log: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {reason}")]
    Broken { line: u64, reason: String },
}

#[derive(Deserialize)]
struct Chain {
    seq: u64,
    prev: String,
    hash: String,
}

/// Verifies the log file at `path`.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let file = std::fs::File::open(path)?;
    verify_reader(std::io::BufReader::new(file))
}

/// Verifies a log read from `reader`.
pub fn verify_reader(reader: impl BufRead) -> Result<VerifyReport, VerifyError> {
    let mut prev = GENESIS.to_owned();
    let mut prev_seq: Option<u64> = None;
    let mut n = 0u64;
    for (i, line) in reader.split(b'\n').enumerate() {
        let lineno = i as u64 + 1;
        let broken = |reason: String| VerifyError::Broken {
            line: lineno,
            reason,
        };
        let bytes = line?;
        let text = std::str::from_utf8(&bytes).map_err(|_| broken("not UTF-8".into()))?;
        if text.is_empty() {
            return Err(broken("empty line".into()));
        }
        let chain: Chain =
            serde_json::from_str(text).map_err(|e| broken(format!("not an audit record: {e}")))?;
        let suffix = format!(",\"hash\":\"{}\"}}", chain.hash);
        let body = text
            .strip_suffix(&suffix)
            .ok_or_else(|| broken("\"hash\" is not the last field".into()))?;
        let computed = hash_prefix(&format!("{body}}}"));
        if computed != chain.hash {
            return Err(broken(
                "content does not match its hash (the line was edited)".into(),
            ));
        }
        if chain.prev != prev {
            return Err(broken(if lineno == 1 {
                "first record does not start the chain (lines removed before it)".into()
            } else {
                "prev does not match the hash of the line before (a line was removed, inserted or reordered)".into()
            }));
        }
        if let Some(p) = prev_seq {
            if chain.seq != p + 1 {
                return Err(broken(format!(
                    "sequence number {} follows {} (a line was removed or reordered)",
                    chain.seq, p
                )));
            }
        } else if chain.seq != 1 {
            return Err(broken(format!(
                "first record has sequence number {}, expected 1",
                chain.seq
            )));
        }
        prev_seq = Some(chain.seq);
        prev = chain.hash;
        n += 1;
    }
    Ok(VerifyReport {
        records: n,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditConfig, AuditLog, Decision, Record};

    fn sample(n: usize) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let log = AuditLog::open(AuditConfig {
            path: path.clone(),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })
        .expect("open");
        for i in 0..n {
            let mut r = Record::new("secret.read", Decision::Allow);
            r.secret = Some(format!("s{i}"));
            log.record(&r).expect("write");
        }
        std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn check(lines: &[String]) -> Result<VerifyReport, VerifyError> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        verify_reader(text.as_bytes())
    }

    fn broken_line(lines: &[String]) -> u64 {
        match check(lines) {
            Err(VerifyError::Broken { line, .. }) => line,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn intact_log_verifies() {
        let lines = sample(5);
        let r = check(&lines).expect("valid");
        assert_eq!(r.records, 5);
        assert_eq!(check(&[]).expect("empty").records, 0);
    }

    #[test]
    fn every_edit_is_found_at_its_line() {
        let lines = sample(5);
        for i in 0..5 {
            let mut l = lines.clone();
            l[i] = l[i].replace(&format!("\"s{i}\""), "\"sX\"");
            assert_eq!(broken_line(&l), i as u64 + 1, "edit of line {i}");
        }
    }

    #[test]
    fn every_deletion_is_found() {
        let lines = sample(5);
        for i in 0..4 {
            let mut l = lines.clone();
            l.remove(i);
            assert_eq!(broken_line(&l), i as u64 + 1, "deletion of line {i}");
        }
    }

    #[test]
    fn reordering_is_found() {
        let lines = sample(5);
        for i in 0..4 {
            let mut l = lines.clone();
            l.swap(i, i + 1);
            assert_eq!(broken_line(&l), i as u64 + 1, "swap at {i}");
        }
    }

    #[test]
    fn rehashing_an_edited_line_still_breaks_the_next_one() {
        let lines = sample(3);
        let mut l = lines.clone();
        // An attacker edits line 2 and recomputes its own hash: line 3's prev no longer matches.
        let edited = l[1].replace("\"s1\"", "\"sX\"");
        let (body, _) = edited.rsplit_once(",\"hash\":").expect("hash field");
        let h = hash_prefix(&format!("{body}}}"));
        l[1] = format!("{body},\"hash\":\"{h}\"}}");
        assert_eq!(broken_line(&l), 3);
    }

    /// A chain line built by hand: `{"seq":SEQ,"prev":PREV,"hash":H}` with H its true hash.
    fn forged(seq: u64, prev: &str) -> (String, String) {
        let object = format!("{{\"seq\":{seq},\"prev\":\"{prev}\"}}");
        let hash = hash_prefix(&object);
        let line = format!("{},\"hash\":\"{hash}\"}}", &object[..object.len() - 1]);
        (line, hash)
    }

    fn reason(lines: &[String]) -> (u64, String) {
        match check(lines) {
            Err(VerifyError::Broken { line, reason }) => (line, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn report_names_the_record_count_and_the_last_hash() {
        let (l1, _) = forged(1, GENESIS);
        let (l2, h2) = forged(2, &hash_of(&l1));
        let r = check(&[l1, l2]).expect("valid");
        assert_eq!(
            r,
            VerifyReport {
                records: 2,
                head: h2
            }
        );
        let empty = check(&[]).expect("empty");
        assert_eq!(
            empty.head, GENESIS,
            "an empty log's head is the genesis hash"
        );
    }

    fn hash_of(line: &str) -> String {
        let (_, h) = line.rsplit_once(",\"hash\":\"").expect("hash field");
        h.trim_end_matches("\"}").to_owned()
    }

    #[test]
    fn a_chain_with_a_skipped_sequence_number_is_broken_at_that_line() {
        // prev and hash are right, only seq jumps: a writer that lost a record's number.
        let (l1, h1) = forged(1, GENESIS);
        let (l2, _) = forged(3, &h1);
        let (line, why) = reason(&[l1.clone(), l2]);
        assert_eq!(line, 2);
        assert!(why.contains("sequence number 3 follows 1"), "{why}");
        // The next number is the only one accepted: neither a repeat nor one going back.
        for seq in [0, 1] {
            let (l2, _) = forged(seq, &h1);
            assert_eq!(reason(&[l1.clone(), l2]).0, 2, "seq {seq} after 1");
        }
    }

    #[test]
    fn a_chain_not_starting_at_sequence_one_is_broken_at_line_one() {
        for seq in [0, 2] {
            let (l1, _) = forged(seq, GENESIS);
            let (line, why) = reason(&[l1]);
            assert_eq!(line, 1);
            assert!(
                why.contains(&format!(
                    "first record has sequence number {seq}, expected 1"
                )),
                "{why}"
            );
        }
    }

    #[test]
    fn a_first_line_that_does_not_start_at_genesis_says_lines_were_removed_before_it() {
        let lines = sample(3);
        let (line, why) = reason(&lines[1..]);
        assert_eq!(line, 1);
        assert!(
            why.contains("first record does not start the chain"),
            "{why}"
        );
        let mut l = lines.clone();
        l.remove(1);
        let (line, why) = reason(&l);
        assert_eq!(line, 2);
        assert!(why.contains("prev does not match"), "{why}");
    }

    #[test]
    fn empty_non_utf8_and_misplaced_hash_lines_are_named() {
        let lines = sample(2);
        let mut l = lines.clone();
        l.insert(1, String::new());
        assert_eq!(reason(&l), (2, "empty line".to_owned()));

        let mut bytes = format!("{}\n", lines[0]).into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        match verify_reader(bytes.as_slice()) {
            Err(VerifyError::Broken { line: 2, reason }) => assert_eq!(reason, "not UTF-8"),
            other => panic!("{other:?}"),
        }

        // A valid hash field that is not the last one: the hash cannot cover the fields after it.
        let (l1, h1) = forged(1, GENESIS);
        let moved = format!("{{\"hash\":\"{h1}\",\"seq\":1,\"prev\":\"{GENESIS}\"}}");
        let (line, why) = reason(&[moved]);
        assert_eq!(line, 1);
        assert!(why.contains("\"hash\" is not the last field"), "{why}");
        assert!(check(&[l1]).is_ok());
    }

    #[test]
    fn garbage_is_named() {
        let mut l = sample(2);
        l.insert(1, "not json".into());
        match check(&l) {
            Err(VerifyError::Broken { line: 2, reason }) => {
                assert!(reason.contains("not an audit record"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
