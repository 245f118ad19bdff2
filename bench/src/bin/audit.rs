//! `keyward audit verify` and a filtered `keyward audit query` over a large multi-pod export,
//! against `jq` doing the same filter on the same file. Run through `bench/audit.sh`.
//!
//! The export is written once by the audit log's own writer (`AuditLog`, the code the sidecar
//! runs) into a cache file and reused: PODS pods, each started twice (two chains, the second
//! linked to the first), their lines interleaved in blocks as a log pipeline's export would
//! interleave them. Records: app reads (allowed and denied), Vault fetches and inbound
//! connections.
//!
//! Usage: audit KEYWARD_BIN [--records N] [--chains C] [--runs R] [--cache DIR]
//!        audit --generate-only [--records N] [--chains C] [--cache DIR]   (only the export)
//!
//! Reports wall time, the CPU time of the child (user + system, from the `cutime`/`cstime` of
//! `/proc/self/stat`), records per second and records per CPU-second, the ratios, and the load
//! average before and after the runs (the machine may be shared).

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use keyward_audit::{
    AuditConfig, AuditLog, Caller, Decision, Peer, PodIdentity, Record, Retention,
};

struct Opts {
    keyward: PathBuf,
    records: u64,
    chains: u64,
    runs: usize,
    cache: PathBuf,
}

fn opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let keyward = PathBuf::from(args.next().unwrap_or_else(|| {
        eprintln!("usage: audit KEYWARD_BIN [--records N] [--chains C] [--runs R] [--cache DIR]");
        std::process::exit(2)
    }));
    let cache = std::env::var_os("KEYWARD_CACHE").map_or_else(
        || PathBuf::from("target/bench-audit"),
        |c| PathBuf::from(c).join("bench-audit"),
    );
    let mut o = Opts {
        keyward,
        records: 2_000_000,
        chains: 50,
        runs: 3,
        cache,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{flag} {value}"))
        };
        match flag.as_str() {
            "--records" => o.records = num(),
            "--chains" => o.chains = num().max(2) & !1,
            "--runs" => o.runs = num().max(1) as usize,
            "--cache" => o.cache = PathBuf::from(&value),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn record(pod: u64, i: u64) -> Record {
    let caller = |uid: u32, comm: &str| Caller {
        pid: 0,
        uid,
        gid: uid,
        comm: comm.into(),
        ..Caller::default()
    };
    let secret = format!("s{}", i % 20);
    match i % 100 {
        0..=89 => {
            let mut r = Record::new("secret.read", Decision::Allow);
            r.secret = Some(secret);
            r.caller = Some(caller(1000 + (i % 3) as u32, "app"));
            r
        }
        90..=94 => {
            let mut r = Record::new("secret.read", Decision::Deny).reason(format!(
                "uid {} is not in the secret's allow list",
                2000 + pod
            ));
            r.secret = Some(secret);
            r.caller = Some(caller(2000 + pod as u32, "curl"));
            r
        }
        95..=97 => {
            let mut r = Record::new("vault.fetch", Decision::Ok);
            r.path = Some(format!("secret/data/pod{pod}/{secret}"));
            r.secret = Some(secret);
            r.version = Some(1 + i / 1000);
            r.vault_request_id = Some(format!("{:08x}-{pod:04x}-{i:012x}", i * 7919));
            r
        }
        _ => {
            let mut r = Record::new("conn.inbound", Decision::Allow);
            r.peer = Some(Peer {
                spiffe_id: Some(format!("spiffe://cluster.local/ns/shop/sa/client{}", i % 7)),
                addr: format!("10.0.{}.{}:4{:04}", pod % 250, i % 250, i % 10000),
            });
            r.port = Some(8443);
            r
        }
    }
}

/// Writes the export with the audit log's writer: `chains / 2` pods, each started twice.
fn generate(o: &Opts, file: &Path) {
    let t0 = Instant::now();
    let pods = o.chains / 2;
    let per_chain = o.records / o.chains;
    let work = tempfile::tempdir_in(&o.cache).expect("work dir");
    let mut pod_files = Vec::new();
    for pod in 0..pods {
        let dir = work.path().join(format!("pod{pod}"));
        for _start in 0..2 {
            let log = AuditLog::open_with(
                AuditConfig {
                    path: dir.join("audit.log"),
                    stdout: false,
                    hmac_key: None,
                    fsync: false,
                },
                Retention {
                    max_bytes: Some(1 << 40),
                    segments: 1,
                    ..Retention::default()
                },
            )
            .expect("open the pod's log");
            log.set_pod(PodIdentity {
                namespace: if pod % 2 == 0 { "shop" } else { "billing" }.into(),
                service_account: format!("app{pod}"),
                pod_name: format!("app{pod}-7c9f{pod:03}"),
                pod_uid: format!("3f1c{pod:04}-8e2a-4b9c-9d0e-{pod:012}"),
            });
            for i in 0..per_chain {
                log.record(&record(pod, i)).expect("write");
            }
        }
        pod_files.push(dir.join("audit.log"));
        eprint!("\rgenerated {}/{pods} pods", pod + 1);
    }
    eprintln!();
    // Interleave the pods' lines in blocks of 64, as an export of a pipeline interleaves them.
    let mut readers: Vec<_> = pod_files
        .iter()
        .map(|p| std::io::BufReader::new(std::fs::File::open(p).expect("pod log")).lines())
        .collect();
    let tmp = file.with_extension("tmp");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).expect("create export"));
    let mut open = readers.len();
    while open > 0 {
        open = 0;
        for r in &mut readers {
            let mut any = false;
            for line in r.by_ref().take(64) {
                writeln!(out, "{}", line.expect("read pod log")).expect("write export");
                any = true;
            }
            open += usize::from(any);
        }
    }
    out.flush().expect("flush export");
    drop(out);
    std::fs::rename(&tmp, file).expect("rename export");
    eprintln!(
        "wrote {} ({} MB) in {:.1} s",
        file.display(),
        std::fs::metadata(file).map_or(0, |m| m.len()) / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
}

/// CPU seconds (user + system) of the waited-for children of this process so far.
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    // Fields after the comm start at field 3 (state); cutime and cstime are fields 16 and 17.
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[13].parse::<f64>().expect("cutime") + f[14].parse::<f64>().expect("cstime");
    ticks / 100.0
}

struct Run {
    wall: f64,
    cpu: f64,
    out_lines: u64,
}

/// Runs `cmd` with its stdout into `out`; it must exit 0.
fn timed(mut cmd: Command, out: &Path) -> Run {
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let status = cmd
        .stdout(std::fs::File::create(out).expect("output file"))
        .stderr(Stdio::inherit())
        .status()
        .expect("run");
    let wall = t0.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?}: {status}");
    let cpu = children_cpu() - cpu0;
    let out_lines = std::io::BufReader::new(std::fs::File::open(out).expect("output"))
        .split(b'\n')
        .count() as u64;
    Run {
        wall,
        cpu,
        out_lines,
    }
}

/// The load average (1, 5 and 15 minutes) from `/proc/loadavg`: how much else the machine was
/// doing, for the record of a run.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |e| format!("unknown ({e})"),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    std::fs::create_dir_all(&o.cache).expect("cache dir");
    let file = o
        .cache
        .join(format!("audit-{}-{}.jsonl", o.records, o.chains));
    if !file.exists() {
        generate(&o, &file);
    }
    if o.keyward.as_os_str() == "--generate-only" {
        return;
    }
    let records = std::io::BufReader::new(std::fs::File::open(&file).expect("export"))
        .split(b'\n')
        .count() as u64;
    let bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
    println!(
        "export: {} ({records} records, {} chains, {:.0} MB)",
        file.display(),
        o.chains,
        bytes as f64 / 1e6
    );
    let filter = [
        "--namespace",
        "shop",
        "--secret",
        "s12",
        "--decision",
        "deny",
    ];
    let jq_filter =
        r#"select(.pod.namespace == "shop" and .secret == "s12" and .decision == "deny")"#;
    let load_before = load_average();
    let outs = tempfile::tempdir_in(&o.cache).expect("outputs");
    let mut cases: Vec<(&str, Vec<Run>)> = vec![
        ("keyward audit verify", vec![]),
        ("keyward audit query --json (filtered)", vec![]),
        ("jq -c (same filter)", vec![]),
    ];
    for round in 0..o.runs {
        let mut verify = Command::new(&o.keyward);
        verify.args(["audit", "verify"]).arg(&file);
        cases[0]
            .1
            .push(timed(verify, &outs.path().join("verify.out")));
        let mut query = Command::new(&o.keyward);
        query
            .args(["audit", "query"])
            .arg(&file)
            .args(filter)
            .arg("--json");
        cases[1]
            .1
            .push(timed(query, &outs.path().join("query.out")));
        let mut jq = Command::new("jq");
        jq.args(["-c", jq_filter]).arg(&file);
        cases[2].1.push(timed(jq, &outs.path().join("jq.out")));
        let (q, j) = (&cases[1].1[round], &cases[2].1[round]);
        assert_eq!(
            q.out_lines, j.out_lines,
            "query and jq select the same records"
        );
        if round == 0 {
            let same = std::fs::read(outs.path().join("query.out")).expect("query out")
                == std::fs::read(outs.path().join("jq.out")).expect("jq out");
            println!(
                "filter selects {} records; query's and jq's output {}",
                q.out_lines,
                if same {
                    "are byte-identical"
                } else {
                    "differ in serialisation only"
                }
            );
        }
        eprintln!(
            "round {round}: verify {:.2} s, query {:.2} s, jq {:.2} s",
            cases[0].1[round].wall, q.wall, j.wall
        );
    }
    println!();
    println!(
        "| command | wall s (median of {}) | CPU s | records/s | records per CPU-s |",
        o.runs
    );
    println!("|---|---:|---:|---:|---:|");
    let mut med = Vec::new();
    for (name, runs) in &cases {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        println!(
            "| {name} | {wall:.2} | {cpu:.2} | {:.0} | {:.0} |",
            records as f64 / wall,
            records as f64 / cpu.max(0.01)
        );
        med.push((wall, cpu));
    }
    println!();
    println!(
        "query / jq: {:.1}x by wall time, {:.1}x by CPU time (target >= 5x)",
        med[2].0 / med[1].0,
        med[2].1 / med[1].1.max(0.01)
    );
    println!(
        "verify: {:.0} records per CPU-second (target >= 200,000 per core; verify is single-threaded)",
        records as f64 / med[0].1.max(0.01)
    );
    println!(
        "load average (1, 5, 15 min): {load_before} before the runs, {} after",
        load_average()
    );
}
