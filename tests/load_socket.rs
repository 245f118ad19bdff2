//! A shortened soak of the socket API against a real OpenBao: 100 clients reading (JSON and
//! raw key), long-polling and listing while the secret's version keeps moving. No request may
//! fail, no file descriptor may leak, memory must level off, and every answer served has its
//! own audit record: each access path reads a secret of its own name, so the records of one
//! path cannot make up for records missing on another.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::broker::{get, BrokerProc};
use support::{eventually, fds, rss_kib, TestVault};

/// Descriptors of `pid` that are not TCP sockets: the broker's only TCP connections are its
/// pooled HTTP connections to Vault, which the client pool keeps open for a while after the
/// load (their number is the pool's business, not a leak); every socket client, file and pipe
/// is counted.
fn fds_but_vault(pid: u32) -> usize {
    let mut tcp = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                tcp.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let total = fds(pid);
    let tcp_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the broker is running")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| tcp.contains(&t.display().to_string()))
        .count();
    total - tcp_fds
}

const CLIENTS: usize = 100;
const RUN: Duration = Duration::from_secs(8);

/// The access paths the clients take, each on a secret named for it (all the same KV secret).
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `GET /v1/secrets/plain`
    Plain,
    /// `GET /v1/secrets/raw/password`
    Raw,
    /// `GET /v1/secrets/polled?index=N&wait=2s`
    LongPoll,
    /// `GET /v1/secrets`
    List,
}

const PATHS: [Path; 4] = [Path::Plain, Path::Raw, Path::LongPoll, Path::List];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_reading_and_long_polling_lose_nothing_and_leak_nothing() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "v1"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: plain, path: secret/data/app}\n  - {name: raw, path: secret/data/app}\n  - {name: polled, path: secret/data/app}\nkv_refresh: 1s\n",
        &[("KEYWARD_LOG", "warn")],
    );
    b.wait_ready().await;
    let pid = b.pid();
    let fds_before = fds_but_vault(pid);
    // Answers served (200) per access path, in PATHS order.
    let ok: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let failed = Arc::new(AtomicU64::new(0));
    let woken = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let socket = b.socket.clone();
        let (ok, failed, woken) = (ok.clone(), failed.clone(), woken.clone());
        let path = PATHS[i % PATHS.len()];
        tasks.push(tokio::spawn(async move {
            // A long-poller waits for the version after the one it last saw (0: none yet).
            let mut seen = 0;
            while Instant::now() < deadline {
                let a = match path {
                    Path::Plain => get(&socket, "/v1/secrets/plain").await,
                    Path::Raw => get(&socket, "/v1/secrets/raw/password").await,
                    Path::List => get(&socket, "/v1/secrets").await,
                    Path::LongPoll => {
                        let a =
                            get(&socket, &format!("/v1/secrets/polled?index={seen}&wait=2s")).await;
                        if a.status == 200 {
                            let version = a.json()["version"].as_u64().expect("version");
                            if seen > 0 && version > seen {
                                woken.fetch_add(1, Ordering::Relaxed);
                            }
                            seen = version;
                        }
                        a
                    }
                };
                if a.status == 200 {
                    ok[path as usize].fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{path:?} request failed: {} {}", a.status, a.body);
                }
            }
        }));
    }
    // Meanwhile the secret moves to a new version every second; RSS is sampled as it runs.
    let mut samples = Vec::new();
    let mut n = 2;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        v.bao
            .kv_put("app", json!({"password": format!("v{n}")}))
            .await;
        n += 1;
        samples.push(rss_kib(pid));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let ok: Vec<u64> = ok.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let (failed, woken) = (
        failed.load(Ordering::Relaxed),
        woken.load(Ordering::Relaxed),
    );
    eprintln!(
        "ok={ok:?} (plain, raw, long-poll, list) failed={failed} woken={woken} rss_kib={samples:?}"
    );
    assert_eq!(failed, 0, "every request answered 200");
    let total: u64 = ok.iter().sum();
    assert!(
        total > CLIENTS as u64 * 10,
        "the clients were served ({total} requests)"
    );
    for (path, served) in PATHS.iter().zip(&ok) {
        assert!(*served > 0, "{path:?} requests were served");
    }
    assert!(woken > 0, "long-polls were woken by new versions");

    // Every client connection is gone again: no descriptor leaked (Vault's pooled TCP
    // connections aside).
    eventually(
        Duration::from_secs(10),
        "file descriptors back to the baseline",
        || async { (fds_but_vault(pid) <= fds_before).then_some(()) },
    )
    .await;
    // Memory levels off: the last sample is within 25 % (+2 MiB) of the mid-run one.
    let mid = samples[samples.len() / 2];
    let last = *samples.last().expect("samples");
    assert!(
        last <= mid + mid / 4 + 2048,
        "RSS still growing: {samples:?} KiB"
    );
    // The chain is intact, and each answer served has exactly one record of its own path.
    let out = std::process::Command::new(support::broker::KEYWARD)
        .args(["audit", "verify"])
        .arg(&b.audit)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = b.audit_records();
    let count = |action: &str, secret: Option<&str>, reason: Option<&str>| {
        records
            .iter()
            .filter(|r| {
                r["action"] == action
                    && r["decision"] == "allow"
                    && r["secret"].as_str() == secret
                    && r["reason"].as_str() == reason
            })
            .count() as u64
    };
    let recorded = [
        count("secret.read", Some("plain"), None),
        count("secret.read", Some("raw"), Some("key password")),
        count("secret.read", Some("polled"), None),
        count("secret.list", None, None),
    ];
    for ((path, served), recorded) in PATHS.iter().zip(&ok).zip(recorded) {
        assert_eq!(
            recorded, *served,
            "{path:?}: {recorded} allow records for {served} answers served"
        );
    }
    let denials: Vec<_> = records.iter().filter(|r| r["decision"] == "deny").collect();
    assert!(denials.is_empty(), "no request was denied: {denials:?}");
    support::assert_no_panic("the broker", &b.log());
}
