//! `keyward audit verify|query` as an operator runs them: the exit code of `verify
//! --min-records` and what each `query` filter lets through.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyward_audit::cli::{query, run, AuditArgs, AuditCommand, Filter};
use keyward_audit::{AuditConfig, AuditLog, Decision, Record};

/// A log of `n` records written by the real writer.
fn log_of(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("audit.log");
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
    path
}

fn verify(file: &Path, min_records: Option<u64>) -> ExitCode {
    run(AuditArgs {
        command: AuditCommand::Verify {
            files: vec![file.to_owned()],
            min_records,
            expect: Vec::new(),
            window: false,
            any_order: false,
            checkpoints: Default::default(),
        },
    })
}

#[test]
fn verify_fails_when_fewer_records_remain_than_min_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = log_of(dir.path(), 3);
    assert_eq!(verify(&file, None), ExitCode::SUCCESS);
    assert_eq!(
        verify(&file, Some(2)),
        ExitCode::SUCCESS,
        "more than the minimum"
    );
    assert_eq!(
        verify(&file, Some(3)),
        ExitCode::SUCCESS,
        "exactly the minimum"
    );
    assert_eq!(
        verify(&file, Some(4)),
        ExitCode::FAILURE,
        "the last record was cut off"
    );
}

#[test]
fn verify_fails_on_a_broken_chain_and_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = log_of(dir.path(), 3);
    let text = std::fs::read_to_string(&file).expect("read");
    let second = text.lines().nth(1).expect("line 2").to_owned();
    std::fs::write(&file, text.replace(&format!("{second}\n"), "")).expect("write");
    assert_eq!(verify(&file, None), ExitCode::FAILURE);
    assert_eq!(
        verify(&dir.path().join("missing.log"), None),
        ExitCode::FAILURE
    );
}

/// Records with every field a filter looks at, in a file of hand-written lines.
fn records(dir: &Path) -> PathBuf {
    let file = dir.join("q.log");
    let lines = [
        r#"{"time":"2026-01-01T00:00:00.000000Z","seq":1,"action":"secret.read","secret":"db","caller":{"pid":1,"uid":1000,"gid":1000},"decision":"allow"}"#,
        r#"{"time":"2026-01-02T00:00:00.000000Z","seq":2,"action":"secret.read","secret":"api","caller":{"pid":2,"uid":1001,"gid":1001},"decision":"deny"}"#,
        r#"{"time":"2026-01-03T00:00:00.000000Z","seq":3,"action":"vault.login","decision":"ok"}"#,
        "not json: skipped",
    ];
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    file
}

/// The `seq` of each record the filter lets through, from `--json` output.
fn matching(file: &Path, filter: Filter) -> Vec<u64> {
    let mut out = Vec::new();
    let n = query(file, &filter, true, &mut out).expect("query");
    let seqs: Vec<u64> = String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["seq"].as_u64().expect("seq")
        })
        .collect();
    assert_eq!(n, seqs.len(), "the count returned is the count printed");
    seqs
}

#[test]
fn each_query_filter_lets_through_only_the_records_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = records(dir.path());
    let f = Filter::default;
    assert_eq!(matching(&file, f()), [1, 2, 3]);
    let secret = Filter {
        secret: Some("db".into()),
        ..f()
    };
    assert_eq!(matching(&file, secret), [1]);
    let decision = Filter {
        decision: Some("deny".into()),
        ..f()
    };
    assert_eq!(matching(&file, decision), [2]);
    let action = Filter {
        action: Some("vault.login".into()),
        ..f()
    };
    assert_eq!(matching(&file, action), [3]);
    let uid = Filter {
        uid: Some(1001),
        ..f()
    };
    assert_eq!(
        matching(&file, uid),
        [2],
        "a record without a caller has no uid"
    );
    let both = Filter {
        secret: Some("db".into()),
        decision: Some("deny".into()),
        ..f()
    };
    assert_eq!(
        matching(&file, both),
        Vec::<u64>::new(),
        "filters combine with AND"
    );
}

#[test]
fn query_since_includes_records_at_that_instant_and_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = records(dir.path());
    let since = |t: &str| Filter {
        since: Some(t.into()),
        ..Filter::default()
    };
    assert_eq!(matching(&file, since("2026-01-02T00:00:00Z")), [2, 3]);
    assert_eq!(
        matching(&file, since("2025-12-31T23:00:00-01:00")),
        [1, 2, 3]
    );
    assert_eq!(
        matching(&file, since("2026-01-04T00:00:00Z")),
        Vec::<u64>::new()
    );
    assert_eq!(
        matching(&file, since("yesterday")),
        Vec::<u64>::new(),
        "an unreadable --since matches nothing"
    );
}

#[test]
fn query_table_has_a_header_and_a_row_per_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = records(dir.path());
    let mut out = Vec::new();
    let filter = Filter {
        uid: Some(1000),
        ..Filter::default()
    };
    assert_eq!(query(&file, &filter, false, &mut out).expect("query"), 1);
    let out = String::from_utf8(out).expect("utf8");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("TIME"), "{out}");
    assert!(lines[1].contains("uid=1000 pid=1"), "{out}");
}

/// Records of two pods, one wrapped in a pipeline envelope, as `query` reads an export.
#[test]
fn query_filters_across_pods_chains_and_envelopes() {
    use keyward_audit::cli::Query;
    let rec = |seq: u64, ns: &str, pod: &str, chain: &str, t: &str, container: Option<&str>| {
        let mut v = serde_json::json!({
            "time": t, "seq": seq, "chain": chain, "action": "secret.read", "decision": "allow",
            "secret": "db", "prev": "00", "hash": "ff",
            "pod": {"namespace": ns, "service_account": "sa", "pod_name": pod, "pod_uid": format!("uid-{pod}")},
            "caller": {"pid": 0, "uid": 1000, "gid": 1000},
        });
        if let Some(c) = container {
            v["caller"]["container"] = c.into();
        }
        v
    };
    let a = rec(
        1,
        "shop",
        "orders-1",
        "c1",
        "2026-01-01T00:00:00Z",
        Some("app"),
    );
    let b = rec(2, "shop", "orders-1", "c1", "2026-01-02T00:00:00Z", None);
    let c = rec(
        1,
        "bank",
        "ledger-1",
        "c2",
        "2026-01-03T00:00:00Z",
        Some("worker"),
    );
    let input = format!(
        "{a}\n{}\n{}\n",
        serde_json::json!({"log": format!("{b}\n"), "kubernetes": {"pod_name": "orders-1"}}),
        serde_json::json!({"message": c.to_string()})
    );
    let seqs = |filter: Filter| {
        let mut q = Query::new(&filter, true);
        let mut out = Vec::new();
        q.read(input.as_bytes(), &mut out).expect("query");
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                format!("{}:{}", v["chain"].as_str().expect("chain"), v["seq"])
            })
            .collect::<Vec<_>>()
    };
    let f = Filter::default;
    assert_eq!(seqs(f()), ["c1:1", "c1:2", "c2:1"]);
    let ns = Filter {
        namespace: Some("bank".into()),
        ..f()
    };
    assert_eq!(seqs(ns), ["c2:1"]);
    let pod = Filter {
        pod: Some("orders-1".into()),
        ..f()
    };
    assert_eq!(seqs(pod), ["c1:1", "c1:2"]);
    let pod_uid = Filter {
        pod: Some("uid-ledger-1".into()),
        ..f()
    };
    assert_eq!(seqs(pod_uid), ["c2:1"]);
    let container = Filter {
        container: Some("app".into()),
        ..f()
    };
    assert_eq!(seqs(container), ["c1:1"]);
    let chain = Filter {
        chain: Some("c2".into()),
        ..f()
    };
    assert_eq!(seqs(chain), ["c2:1"]);
    let range = Filter {
        since: Some("2026-01-02T00:00:00Z".into()),
        until: Some("2026-01-03T00:00:00Z".into()),
        ..f()
    };
    assert_eq!(seqs(range), ["c1:2"], "since inclusive, until exclusive");
}
