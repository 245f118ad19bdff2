//! What a sidecar's memory grows by per cached secret, against a real OpenBao: a broker with
//! one secret and one with 400 (small KV secrets: one 64-byte value each), RSS after both are
//! ready. docs/operations.md quotes the figure; the test fails when it exceeds the bound used
//! there, so the sizing guidance cannot silently go stale.

mod support;

use serde_json::json;
use support::broker::BrokerProc;
use support::{rss_kib, TestVault};

const SECRETS: usize = 400;
/// The per-secret reserve of the sizing formula (sidecar/src/sizing.rs, docs/operations.md).
const DOCUMENTED_KIB_PER_SECRET: f64 = (keyward_sidecar::sizing::SECRET_BYTES / 1024) as f64;

async fn rss_with(v: &TestVault, n: usize) -> u64 {
    let mut extra = String::from("secrets:\n");
    for i in 0..n {
        extra.push_str(&format!("  - {{name: s{i}, path: secret/data/s{i}}}\n"));
    }
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &extra,
        &[("KEYWARD_LOG", "warn")],
    );
    b.wait_ready().await;
    // Every secret is served (fetched and cached), not only announced.
    let last = b.get(&format!("/v1/secrets/s{}", n - 1)).await;
    assert_eq!(last.status, 200, "{}", last.body);
    rss_kib(b.pid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_cached_secret_stays_under_the_documented_figure() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    for i in 0..SECRETS {
        v.bao
            .kv_put(&format!("s{i}"), json!({"password": format!("{i:064}")}))
            .await;
    }
    let one = rss_with(&v, 1).await;
    let many = rss_with(&v, SECRETS).await;
    let per = (many.saturating_sub(one)) as f64 / (SECRETS - 1) as f64;
    eprintln!("RSS: 1 secret {one} KiB, {SECRETS} secrets {many} KiB: {per:.2} KiB per secret");
    assert!(
        per < DOCUMENTED_KIB_PER_SECRET,
        "{per:.2} KiB per secret, above the {DOCUMENTED_KIB_PER_SECRET} KiB the sizing formula reserves"
    );
}
