//! Verification's fast path (`audit/src/written.rs`: a line in the writer's form is checked and
//! hashed in place) must never change what the verifier concludes: whatever it accepts must
//! be exactly what parsing the line and canonicalising it (the general way, here through the
//! crate's public `extract_record` and `record_hash`) concludes. `scripts/mutants.sh
//! audit-written` at b15825d left mutants alive that made the fast path accept lines it must
//! not (`literal` taking any four bytes for `true`); those that only make it decline a line
//! are equivalent (the line then goes the general way, to the same result: only slower), see
//! docs/testing.md.
//!
//! The oracle: each line carries a hash taken over its own text as the fast path would take it
//! (the line up to `,"hash"`, then `}`). That hash is right exactly when the line's body is
//! the canonical text; so a line that is not canonical, or not JSON at all, read in place by a
//! fast path that accepts too much, verifies as intact where it must not.

use keyward_audit::{ChainVerifier, GENESIS};
use sha2::{Digest, Sha256};

/// `body` (a JSON object's text, without `hash`) as a record line whose `hash` is taken over
/// the body's own bytes.
fn self_hashed(body: &str) -> String {
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    format!(
        "{},\"hash\":\"{hash}\"}}",
        body.strip_suffix('}').unwrap_or(body)
    )
}

/// What the general way concludes about `line`: no record (`None`), or whether its content
/// matches its hash.
fn general(line: &str) -> Option<bool> {
    let m = keyward_audit::extract_record(line)?;
    Some(m["hash"].as_str() == Some(keyward_audit::record_hash(&m).as_str()))
}

/// What `ChainVerifier` concludes about `line` alone: no record, or whether it is intact.
fn verifier(line: &str) -> Option<bool> {
    let mut v = ChainVerifier::new();
    v.window = true;
    let s = v.source("in.log");
    v.line(s, 1, line);
    let skipped = v.skipped;
    let reports = v.finish();
    if reports.is_empty() {
        assert_eq!(skipped, 1, "{line}");
        return None;
    }
    assert_eq!(reports.len(), 1, "{line}");
    Some(
        !reports[0]
            .findings
            .iter()
            .any(|f| f.what.contains("does not match its hash")),
    )
}

/// Checks `line` both ways: the pipeline verifier agrees with the general way, and the local
/// log's check (`verify_reader`) accepts it only if it is the writer's line for its content.
fn check(line: &str) {
    assert_eq!(verifier(line), general(line), "{line}");
    if keyward_audit::verify_reader(std::io::Cursor::new(format!("{line}\n"))).is_ok() {
        let m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("accepted, not JSON ({e}): {line}"));
        let hash = keyward_audit::record_hash(&m);
        let body = keyward_audit::canonical_without_hash(&m);
        assert_eq!(
            line,
            format!(
                "{},\"hash\":\"{hash}\"}}",
                body.strip_suffix('}').expect("object")
            ),
            "the local log accepted a line that is not the writer's"
        );
    }
}

/// A canonical body holding every kind of value the fast path reads: literals in members and
/// arrays, nested arrays and objects, integers at the edges of the exact range, strings with
/// every escape JCS writes, and the chain members.
fn body() -> String {
    let v = serde_json::json!({
        "a": [],
        "b": {},
        "c": [true, false, null, {"d": [1, -2, 23]}, [[]]],
        "chain": "aaaa",
        "e": "x\u{1}\u{1f}\u{8}\t\n\u{c}\r\"\\/\u{7f}é😀",
        "f": 0,
        "g": -9_007_199_254_740_991i64,
        "h": 9_007_199_254_740_991u64,
        "pod": {"namespace": "shop", "pod_name": "app"},
        "prev": GENESIS,
        "prev_chain": {"chain": "zz", "hash": "ab", "seq": 3},
        "seq": 1,
        "t": true,
        "u": null,
        "v": false,
        "w": [1, 23, true, false, null],
    });
    keyward_audit::canonical(&v)
}

/// The writer's form itself, with literals, arrays and nesting: intact both ways.
#[test]
fn a_canonical_body_with_literals_arrays_and_nesting_verifies_as_intact() {
    let line = self_hashed(&body());
    assert_eq!(general(&line), Some(true), "{line}");
    check(&line);
    // A literal as the first one read, four bytes after a `,` (`literal`'s `+=` → `-=` stepped
    // back onto that `,` and read the array again for ever).
    for w in ["[1,23,true]", "[1,23,null]", "[1,2,false]"] {
        let line = self_hashed(&format!(
            r#"{{"chain":"aaaa","prev":"{GENESIS}","seq":1,"w":{w}}}"#
        ));
        assert_eq!(general(&line), Some(true), "{line}");
        check(&line);
    }
}

/// Every one-byte change of the body (a byte replaced by a JSON-significant character or a
/// letter, a byte taken out, a byte put in), self-hashed: the verifier concludes what the
/// general way concludes, so the fast path never accepts a line that is not JSON (`tXue` for
/// `true`: `literal`'s `==` → `!=` survived) or not canonical, and never misreads one.
#[test]
fn every_one_byte_change_of_a_canonical_body_is_judged_as_the_general_way_judges_it() {
    // The whole body, and bodies holding one kind of value each (a mutant that makes the fast
    // path decline one kind while accepting a wrong form of another is seen only where the
    // line holds nothing else).
    let chain = format!(r#""chain":"aaaa","prev":"{GENESIS}","seq":1"#);
    let bases = [
        body(),
        format!(r#"{{{chain},"t":true}}"#),
        format!(r#"{{{chain},"w":[null,false]}}"#),
        format!(r#"{{{chain},"x":-12}}"#),
        format!(r#"{{{chain},"x":[[],{{"y":[0]}}]}}"#),
        format!("{{{chain},\"x\":\"\\u001f\\n\"}}"),
    ];
    for base in bases {
        one_byte_changes(base.into_bytes());
    }
}

fn one_byte_changes(base: Vec<u8>) {
    let marks = [
        b' ', b'"', b'\\', b',', b':', b'{', b'}', b'[', b']', b'0', b'1', b'9', b'-', b'+', b'.',
        b'e', b'E', b'u', b't', b'r', b'f', b'n', b'l', b'x', b'A', 0x7f, b'\n', 0x01,
    ];
    let mut variants = Vec::new();
    for at in 1..base.len() - 1 {
        let mut cut = base.clone();
        cut.remove(at);
        variants.push(cut);
        for &c in &marks {
            let mut b = base.clone();
            b[at] = c;
            variants.push(b);
            let mut b = base.clone();
            b.insert(at, c);
            variants.push(b);
        }
    }
    let (mut records, mut intact) = (0, 0);
    for v in variants {
        let Ok(text) = String::from_utf8(v) else {
            continue;
        };
        let line = self_hashed(&text);
        check(&line);
        match general(&line) {
            Some(true) => intact += 1,
            Some(false) => records += 1,
            None => {}
        }
    }
    // Both kinds were seen: changes that keep the text canonical (a letter in a string) and
    // changes that keep it JSON but not canonical (whitespace, escapes, number forms).
    assert!(intact > 0 && records > 0, "{intact} intact, {records} not");
}

/// Literals misspelled, cut short or run on, in a member and in an array (each the line's
/// only literal, so that nothing else sends the line the general way): no record.
#[test]
fn a_misspelled_literal_is_no_record_whatever_its_hash() {
    for (literal, wrong) in [
        ("true", "tXue"),
        ("true", "trux"),
        ("true", "True"),
        ("true", "tru"),
        ("true", "truee"),
        ("null", "nul!"),
        ("null", "nil0"),
        ("false", "falsy"),
        ("false", "fals"),
    ] {
        for base in [
            format!(r#"{{"chain":"aaaa","prev":"{GENESIS}","seq":1,"t":{literal}}}"#),
            format!(r#"{{"chain":"aaaa","prev":"{GENESIS}","seq":1,"w":[1,{literal}]}}"#),
        ] {
            let right = self_hashed(&base);
            assert_eq!(general(&right), Some(true), "{right}");
            check(&right);
            let line = self_hashed(&base.replacen(literal, wrong, 1));
            assert_eq!(general(&line), None, "{line}");
            check(&line);
        }
    }
}

/// Objects and arrays nested far deeper than the fast path reads in place (64) are no record
/// (serde_json refuses more than 128 levels), and reading them never exhausts the stack: at
/// b15825d `depth + 1` → `- 1`, `* 1` in `Scan::value` survived, which let the fast path recurse
/// without bound.
#[test]
fn a_line_nested_a_hundred_thousand_deep_is_no_record_and_does_not_overflow_the_stack() {
    let n = 100_000;
    for (open, close) in [(r#"{"a":"#, "}"), ("[", "]")] {
        let body = format!(
            r#"{{"chain":"aaaa","prev":"{GENESIS}","seq":1,"x":{}0{}}}"#,
            open.repeat(n),
            close.repeat(n)
        );
        let line = self_hashed(&body);
        assert_eq!(general(&line), None);
        check(&line);
    }
    // At 64 levels, the record is read (in place) and intact; at 65, the general way reads it.
    for depth in [63, 64, 65, 100] {
        let body = format!(
            r#"{{"chain":"aaaa","prev":"{GENESIS}","seq":1,"x":{}0{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let line = self_hashed(&body);
        assert_eq!(general(&line), Some(true), "{depth}");
        check(&line);
    }
}

/// A chain id, `prev` or `hash` with escapes is read as its decoded text, whichever escape it
/// starts or ends with (at b15825d `s - 1` → `s + 1` in `written::text` survived: a chain named
/// `"abc` was reported as `abc`, since the slice from the escaped quote parses as a string).
#[test]
fn chain_ids_with_escapes_are_read_as_their_text() {
    for chain in [
        "\"abc", "a\"b", "ab\"", "\\", "\\\\x", "x\u{1}", "\u{1f}y", "\"", "é\n",
    ] {
        let v = serde_json::json!({"chain": chain, "prev": GENESIS, "seq": 1});
        let line = self_hashed(&keyward_audit::canonical(&v));
        check(&line);
        let mut verifier = ChainVerifier::new();
        let s = verifier.source("in.log");
        verifier.line(s, 1, &line);
        let reports = verifier.finish();
        assert_eq!(reports.len(), 1, "{line}");
        assert_eq!(reports[0].chain, chain, "{line}");
        assert!(
            reports[0].findings.is_empty(),
            "{line}: {:?}",
            reports[0].findings
        );
    }
}
