//! Configured behaviours that had no test of their own (docs/configuration.md, docs/audit.md):
//! `revoke_on_shutdown: false` leaves the lease and the token valid in Vault after SIGTERM,
//! `audit.hmac_key_file` keys the `lease_hmac`/`accessor_hmac` of every broker that names it,
//! and `audit.fsync: true` keeps a complete log that verifies. Each runs the real `keyward
//! broker` against a real OpenBao (and PostgreSQL for a renewable lease).

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::broker::BrokerProc;
use support::pg::Postgres;
use support::TestVault;

const DB: &str = "secrets:\n  - {name: db, path: database/creds/app}\n";

fn records(audit: &Path) -> Vec<Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
        .collect()
}

#[track_caller]
fn assert_verifies(audit: &Path) {
    let out = std::process::Command::new(support::broker::KEYWARD)
        .args(["audit", "verify"])
        .arg(audit)
        .output()
        .expect("keyward audit verify");
    assert!(
        out.status.success(),
        "keyward audit verify {}: {}{}",
        audit.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn revoke_on_shutdown_false_leaves_lease_and_token_valid_in_vault_after_sigterm() {
    let pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "1h", "2h").await;
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!("{DB}revoke_on_shutdown: false\n"),
        &[],
    );
    b.wait_ready().await;
    let a = b.get("/v1/secrets/db/username").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let user = a.body.clone();

    let tokens = support::live_tokens(&v.bao, "auth/jwt/login").await;
    assert_eq!(tokens.len(), 1, "the broker's one login token: {tokens:?}");
    let leases = support::live_leases(&v.bao, "database/creds/app/").await;
    assert_eq!(leases.len(), 1, "the broker's one lease: {leases:?}");

    let status = b.terminate();
    assert!(status.success(), "broker exit: {status}\n{}", b.log());

    // The token still works: found by its accessor, as root...
    assert!(
        support::token_alive(&v.bao, &tokens[0]).await,
        "revoke_on_shutdown: false, yet the broker's token was revoked on SIGTERM\n{}",
        b.log()
    );
    // ...and the lease is still held by Vault, its PostgreSQL role still there.
    assert_eq!(
        support::live_leases(&v.bao, "database/creds/app/").await,
        leases,
        "revoke_on_shutdown: false, yet the lease was revoked on SIGTERM\n{}",
        b.log()
    );
    let (status, lease) = v
        .bao
        .api_status(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": leases[0] })),
        )
        .await;
    assert_eq!(status, 200, "lease lookup: {lease}");
    assert!(
        lease["data"]["ttl"].as_i64().is_some_and(|t| t > 0),
        "the lease still has time left: {lease}"
    );
    assert!(
        pg.vault_roles().contains(&user),
        "the PostgreSQL role {user} was dropped"
    );
    // Nothing revoked, so nothing audited as revoked.
    assert_eq!(b.audit_count("vault.revoke", "ok"), 0);
    assert_eq!(b.audit_count("vault.revoke_token", "ok"), 0);
    assert_verifies(&b.audit);
    support::assert_no_panic("the broker", &b.log());
}

/// Runs one broker with `audit.hmac_key_file: key` writing to `audit`, fetches the lease,
/// and returns (lease id, token accessor) as Vault holds them (read as root) before the
/// broker is stopped (its shutdown revokes both, so the next broker's are its own).
async fn one_broker(v: &TestVault, audit: &Path, key: &Path) -> (String, String) {
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "{DB}audit: {{file: {}, hmac_key_file: {}}}\n",
            audit.display(),
            key.display()
        ),
        &[],
    );
    b.wait_ready().await;
    let a = b.get("/v1/secrets/db").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let tokens = support::live_tokens(&v.bao, "auth/jwt/login").await;
    assert_eq!(tokens.len(), 1, "one login token: {tokens:?}");
    let leases = support::live_leases(&v.bao, "database/creds/app/").await;
    assert_eq!(leases.len(), 1, "one lease: {leases:?}");
    let status = b.terminate();
    assert!(status.success(), "broker exit: {status}\n{}", b.log());
    support::assert_no_panic("the broker", &b.log());
    (leases[0].clone(), tokens[0].clone())
}

/// The (lease_hmac, accessor_hmac) values a log holds, each checked to be the only one.
fn hmacs(audit: &Path) -> (String, String) {
    let recs = records(audit);
    let one = |field: &str| {
        let mut seen: Vec<String> = recs
            .iter()
            .filter_map(|r| r[field].as_str().map(str::to_owned))
            .collect();
        seen.dedup();
        assert_eq!(
            seen.len(),
            1,
            "one {field} value expected in {}: {recs:#?}",
            audit.display()
        );
        seen.remove(0)
    };
    (one("lease_hmac"), one("accessor_hmac"))
}

#[tokio::test]
async fn hmac_key_file_keys_lease_and_accessor_hmacs_in_every_broker_and_raw_ids_never_logged() {
    let pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "1h", "2h").await;
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, b"claims-behaviours-shared-hmac-key").expect("key");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, b"a-different-key").expect("key");

    // Two brokers with the same key file, one with another key.
    let mut runs = Vec::new();
    for (name, k) in [("a", &key), ("b", &key), ("c", &other_key)] {
        let audit = dir.path().join(format!("audit-{name}.log"));
        let (lease, accessor) = one_broker(&v, &audit, k).await;
        let (lease_hmac, accessor_hmac) = hmacs(&audit);
        let text = std::fs::read_to_string(&audit).expect("audit");
        assert!(
            !text.contains(&lease) && !text.contains("database/creds/app/"),
            "the raw lease id reached the audit log {}",
            audit.display()
        );
        assert!(
            !text.contains(&accessor),
            "the raw token accessor reached the audit log {}",
            audit.display()
        );
        assert_verifies(&audit);
        runs.push((lease, accessor, lease_hmac, accessor_hmac, k.clone()));
    }
    let shared = std::fs::read(&key).expect("key");
    let other = std::fs::read(&other_key).expect("key");
    // Each broker's HMACs are HMAC-SHA256 under the key file's key: the same identifier gives
    // the same value in any broker naming that file (a random per-process key would not).
    for (lease, accessor, lease_hmac, accessor_hmac, k) in &runs {
        let k = std::fs::read(k).expect("key");
        assert_eq!(*lease_hmac, keyward_audit::hmac_hex(&k, lease));
        assert_eq!(*accessor_hmac, keyward_audit::hmac_hex(&k, accessor));
    }
    let (a, b, c) = (&runs[0], &runs[1], &runs[2]);
    // Brokers a and b (same key) agree on each other's identifiers; c's key gives others.
    for (lease, accessor) in [(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1)] {
        assert_ne!(
            keyward_audit::hmac_hex(&shared, lease),
            keyward_audit::hmac_hex(&other, lease),
            "a different key gives a different lease_hmac"
        );
        assert_ne!(
            keyward_audit::hmac_hex(&shared, accessor),
            keyward_audit::hmac_hex(&other, accessor)
        );
    }
    assert_ne!(c.2, keyward_audit::hmac_hex(&shared, &c.0));
    assert_ne!(c.3, keyward_audit::hmac_hex(&shared, &c.1));
}

#[tokio::test]
async fn audit_fsync_true_writes_a_complete_log_that_verifies() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put("app", json!({"password": "fsync-canary"}))
        .await;
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.log");
    let mut b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "secrets:\n  - {{name: app, path: secret/data/app}}\naudit: {{file: {}, fsync: true}}\n",
            audit.display()
        ),
        &[],
    );
    b.wait_ready().await;
    const READS: usize = 25;
    for _ in 0..READS {
        let a = b.get("/v1/secrets/app/password").await;
        assert_eq!((a.status, a.body.as_str()), (200, "fsync-canary"));
    }
    // Every served read is in the file by the time its answer arrived.
    let reads = |recs: &[Value]| {
        recs.iter()
            .filter(|r| r["action"] == "secret.read" && r["decision"] == "allow")
            .count()
    };
    assert_eq!(reads(&records(&audit)), READS);
    let status = b.terminate();
    assert!(status.success(), "broker exit: {status}\n{}", b.log());
    let recs = records(&audit);
    assert_eq!(reads(&recs), READS);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "sequence without a gap: {r}");
    }
    assert!(recs.iter().any(|r| r["action"] == "vault.login"));
    assert!(!std::fs::read_to_string(&audit)
        .expect("audit")
        .contains("fsync-canary"));
    assert_verifies(&audit);
    support::assert_no_panic("the broker", &b.log());
}
