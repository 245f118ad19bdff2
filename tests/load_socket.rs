//! A shortened soak of the socket API against a real OpenBao: 100 clients reading and
//! long-polling while the secret's version keeps moving. No request may fail, no file
//! descriptor may leak, and memory must level off. (The long run is `bench/secrets.sh soak`.)

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::broker::{get, BrokerProc};
use support::{eventually, fds, rss_kib, TestVault};

const CLIENTS: usize = 100;
const RUN: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_reading_and_long_polling_lose_nothing_and_leak_nothing() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "v1"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets:\n  - {name: app, path: secret/data/app}\nkv_refresh: 1s\n",
        &[("KEYWARD_LOG", "warn")],
    );
    b.wait_ready().await;
    let pid = b.pid();
    let fds_before = fds(pid);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let woken = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let socket = b.socket.clone();
        let (ok, failed, woken) = (ok.clone(), failed.clone(), woken.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                // Half the clients read; the other half long-poll for the next version.
                let a = if i % 2 == 0 {
                    get(&socket, "/v1/secrets/app").await
                } else {
                    let cur = get(&socket, "/v1/secrets/app").await;
                    let version = cur.json()["version"].as_u64().unwrap_or(0);
                    let a = get(&socket, &format!("/v1/secrets/app?index={version}&wait=2s")).await;
                    if a.status == 200 && a.json()["version"].as_u64().unwrap_or(0) > version {
                        woken.fetch_add(1, Ordering::Relaxed);
                    }
                    a
                };
                if a.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("request failed: {} {}", a.status, a.body);
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
    let (ok, failed, woken) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        woken.load(Ordering::Relaxed),
    );
    eprintln!("ok={ok} failed={failed} woken={woken} rss_kib={samples:?}");
    assert_eq!(failed, 0, "every request answered 200");
    assert!(
        ok > CLIENTS as u64 * 10,
        "the clients were served ({ok} requests)"
    );
    assert!(woken > 0, "long-polls were woken by new versions");

    // Every connection is gone again: no descriptor leaked.
    eventually(
        Duration::from_secs(10),
        "file descriptors back to the baseline",
        || async { (fds(pid) <= fds_before).then_some(()) },
    )
    .await;
    // Memory levels off: the last sample is within 25 % (+2 MiB) of the mid-run one.
    let mid = samples[samples.len() / 2];
    let last = *samples.last().expect("samples");
    assert!(
        last <= mid + mid / 4 + 2048,
        "RSS still growing: {samples:?} KiB"
    );
    // Each served read is in the audit log, and the chain is intact.
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
    let reads = b.audit_count("secret.read", "allow") as u64;
    assert!(
        reads >= ok,
        "{reads} allow records for {ok} served requests"
    );
}
