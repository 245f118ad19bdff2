//! The stdout stream of three pods as a log pipeline delivers it (re-serialised: keys
//! reordered, whitespace, `\u` escapes; wrapped in Fluent Bit / Vector / CRI envelopes;
//! interleaved) verifies; deleting, editing, reordering or truncating one record is reported
//! naming the chain and the sequence number.

use std::path::Path;
use std::process::ExitCode;

use keyward_audit::cli::{run, AuditArgs, AuditCommand};
use keyward_audit::{
    AuditConfig, AuditLog, Caller, ChainReport, ChainVerifier, Decision, PodIdentity, Record,
};
use serde_json::Value;

struct Pod {
    name: &'static str,
    dir: tempfile::TempDir,
}

fn open(pod: &Pod) -> AuditLog {
    let log = AuditLog::open(AuditConfig {
        path: pod.dir.path().join("audit.log"),
        stdout: false,
        hmac_key: None,
        fsync: false,
    })
    .expect("open");
    log.set_pod(PodIdentity {
        namespace: "shop".into(),
        service_account: pod.name.into(),
        pod_name: format!("{}-7c9f", pod.name),
        pod_uid: format!("uid-{}", pod.name),
    });
    log
}

fn read(secret: &str, comm: &str) -> Record {
    let mut r = Record::new("secret.read", Decision::Allow);
    r.secret = Some(secret.into());
    r.caller = Some(Caller {
        pid: 0,
        uid: 1000,
        gid: 1000,
        comm: comm.into(),
        ..Caller::default()
    });
    r.reason = Some("café / naïve \u{1}".into());
    r
}

/// Three pods' records; the third restarts once (two chains, the second linked to the first).
/// Returns each pod's lines in the order written.
fn three_pods() -> Vec<Vec<String>> {
    let pods: Vec<Pod> = ["orders", "payments", "shipping"]
        .into_iter()
        .map(|name| Pod {
            name,
            dir: tempfile::tempdir().expect("tempdir"),
        })
        .collect();
    for (i, pod) in pods.iter().enumerate() {
        let log = open(pod);
        for n in 0..(8 + i) {
            log.record(&read(&format!("s{n}"), "app/\"x\""))
                .expect("write");
        }
        if pod.name == "shipping" {
            drop(log);
            let log = open(pod);
            for n in 0..4 {
                log.record(&read(&format!("t{n}"), "app")).expect("write");
            }
        }
    }
    pods.iter()
        .map(|p| {
            std::fs::read_to_string(p.dir.path().join("audit.log"))
                .expect("read")
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// JSON text of `v` as another serialiser writes it: members in reverse order, spaces, every
/// non-ASCII character and `/` escaped, control characters in upper-case hex.
fn reserialise(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let members: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| format!("{} : {}", escape(k), reserialise(v)))
                .collect();
            format!("{{ {} }}", members.join(" ,  "))
        }
        Value::Array(a) => format!(
            "[ {} ]",
            a.iter().map(reserialise).collect::<Vec<_>>().join(", ")
        ),
        Value::String(s) => escape(s),
        other => other.to_string(),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One pipeline line for a record line: re-serialised, then wrapped in the envelope style
/// chosen by `style`.
fn deliver(line: &str, pod: &str, style: usize) -> String {
    let v: Value = serde_json::from_str(line).expect("record");
    let text = reserialise(&v);
    let quoted = serde_json::to_string(&format!("{text}\n")).expect("string");
    match style % 4 {
        // Fluent Bit tail + kubernetes filter.
        0 => format!(
            r#"{{"kubernetes":{{"namespace_name":"shop","pod_name":"{pod}","container_name":"keyward"}},"stream":"stdout","log":{quoted}}}"#
        ),
        // Vector's kubernetes_logs source.
        1 => format!(
            r#"{{"message":{quoted},"kubernetes":{{"pod_namespace":"shop","pod_name":"{pod}"}},"timestamp":"2026-01-01T00:00:00Z"}}"#
        ),
        // The node's CRI log file.
        2 => format!("2026-01-01T00:00:00.000000001Z stdout F {text}"),
        // The record as it was, through a pipeline that parsed it into an object.
        _ => format!(r#"{{"pod":"{pod}","record":{text}}}"#),
    }
}

/// The three pods' streams re-serialised, wrapped, interleaved line by line, with the
/// pipeline's own noise between them.
fn stream(pods: &[Vec<String>]) -> Vec<String> {
    let mut out = Vec::new();
    let longest = pods.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for (p, lines) in pods.iter().enumerate() {
            if let Some(l) = lines.get(i) {
                out.push(deliver(l, &format!("pod{p}"), i + p));
            }
        }
        if i % 3 == 0 {
            out.push(r#"{"level":"info","msg":"Fetched secret","secret":"db"}"#.into());
        }
    }
    out
}

fn verify(lines: &[String]) -> Vec<ChainReport> {
    let mut v = ChainVerifier::new();
    let s = v.source("export.jsonl");
    v.read(s, lines.join("\n").as_bytes()).expect("read");
    v.finish()
}

fn chain_of(line: &str) -> (String, u64) {
    let v: Value = serde_json::from_str(line).expect("json");
    (
        v["chain"].as_str().expect("chain").to_owned(),
        v["seq"].as_u64().expect("seq"),
    )
}

/// The findings, as `(chain, seq, text)`.
fn findings(reports: &[ChainReport]) -> Vec<(String, u64, String)> {
    reports
        .iter()
        .flat_map(|r| {
            r.findings
                .iter()
                .map(|f| (r.chain.clone(), f.seq, f.what.clone()))
        })
        .collect()
}

#[test]
fn three_pods_stream_reserialised_wrapped_and_interleaved_verifies() {
    let pods = three_pods();
    let lines = stream(&pods);
    let reports = verify(&lines);
    assert_eq!(reports.len(), 4, "three pods, one restarted: {reports:?}");
    assert!(findings(&reports).is_empty(), "{:?}", findings(&reports));
    let total: u64 = reports.iter().map(|r| r.records).sum();
    assert_eq!(total as usize, pods.iter().map(Vec::len).sum::<usize>());
    assert!(
        reports.iter().all(|r| r.pod.starts_with("shop/")),
        "{reports:?}"
    );

    // The same export through the command, as a file and with a copy of it (a pipeline
    // delivering twice): exit 0.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, lines.join("\n") + "\n").expect("write");
    std::fs::write(&b, lines[..lines.len() / 2].join("\n") + "\n").expect("write");
    assert_eq!(verify_cli(&[&a, &b], &[]), ExitCode::SUCCESS);
}

fn verify_cli(files: &[&Path], expect: &[String]) -> ExitCode {
    run(AuditArgs {
        command: AuditCommand::Verify {
            files: files.iter().map(|f| f.to_path_buf()).collect(),
            min_records: None,
            expect: expect.to_vec(),
            window: false,
            any_order: false,
            checkpoints: Default::default(),
        },
    })
}

#[test]
fn deleting_editing_reordering_or_truncating_one_record_is_named_by_chain_and_seq() {
    let pods = three_pods();
    // Tamper with pod 1's 4th record (seq 4), as written, then deliver.
    let (chain, seq) = chain_of(&pods[1][3]);
    assert_eq!(seq, 4);

    // Deleted.
    let mut p = pods.clone();
    p[1].remove(3);
    let f = findings(&verify(&stream(&p)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), (chain.as_str(), 4));
    assert!(f[0].2.contains("seq 4 missing"), "{f:?}");

    // Edited (the secret's name), hash left as it was.
    let mut p = pods.clone();
    p[1][3] = p[1][3].replace("\"s3\"", "\"sX\"");
    let f = findings(&verify(&stream(&p)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), (chain.as_str(), 4));
    assert!(f[0].2.contains("does not match its hash"), "{f:?}");

    // Edited and re-hashed by someone without the next record's cooperation.
    let mut p = pods.clone();
    let mut m: serde_json::Map<String, Value> = serde_json::from_str(&p[1][3]).expect("json");
    m.insert("secret".into(), "sX".into());
    let h = keyward_audit::record_hash(&m);
    m.insert("hash".into(), h.into());
    p[1][3] = Value::Object(m).to_string();
    let f = findings(&verify(&stream(&p)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), (chain.as_str(), 5));
    assert!(
        f[0].2.contains("prev does not match the hash of seq 4"),
        "{f:?}"
    );

    // Reordered: records 4 and 5 swapped in the stream.
    let mut p = pods.clone();
    p[1].swap(3, 4);
    let f = findings(&verify(&stream(&p)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), (chain.as_str(), 4));
    assert!(f[0].2.contains("reordered"), "{f:?}");

    // Truncated: the last record of the chain that the restarted pod's new chain follows.
    let (first, last) = chain_of(&pods[2][9]);
    let (next, one) = chain_of(&pods[2][10]);
    assert_eq!((last, one), (10, 1));
    assert_ne!(first, next);
    let mut p = pods.clone();
    p[2].remove(9);
    let f = findings(&verify(&stream(&p)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), (first.as_str(), 10));
    assert!(f[0].2.contains("cut off at the end"), "{f:?}");

    // Truncated at the newest chain's end: found against the count kept outside the pod.
    let (newest, n) = chain_of(pods[0].last().expect("last"));
    let mut p = pods.clone();
    p[0].pop();
    let mut v = ChainVerifier::new();
    v.expect(newest.clone(), n);
    let s = v.source("export");
    v.read(s, stream(&p).join("\n").as_bytes()).expect("read");
    let f = findings(&v.finish());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), (newest.as_str(), n));

    // The command exits non-zero on each.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cut.jsonl");
    std::fs::write(&file, stream(&p).join("\n")).expect("write");
    assert_eq!(
        verify_cli(&[&file], &[]),
        ExitCode::SUCCESS,
        "alone, a cut end is invisible"
    );
    assert_eq!(
        verify_cli(&[&file], &[format!("{newest}={n}")]),
        ExitCode::FAILURE
    );
}
