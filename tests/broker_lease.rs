//! A real renewable lease: OpenBao's database engine issuing PostgreSQL roles.

mod support;

use std::time::Duration;

use support::broker::BrokerProc;
use support::pg::Postgres;
use support::{eventually, TestVault};

const DB: &str = "secrets:\n  - {name: db, path: database/creds/app}\n";

#[tokio::test]
async fn lease_is_renewed_refetched_after_max_ttl_and_revoked_on_sigterm() {
    let pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "4s", "9s").await;
    let mut b = BrokerProc::start(&v.bao.addr(), &v.token("shop", "orders"), DB, &[]);
    b.wait_ready().await;

    let first = b.get("/v1/secrets/db").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let j = first.json();
    assert_eq!(j["renewable"], true);
    assert!(j["lease_expires_at"].is_string());
    let user1 = j["data"]["username"].as_str().expect("username").to_owned();
    assert!(!j["data"]["password"].as_str().expect("password").is_empty());
    assert_eq!(pg.vault_roles(), vec![user1.clone()]);

    // Renewed before the 4 s lease ends...
    eventually(Duration::from_secs(15), "a lease renewal", || async {
        (b.audit_count("vault.lease_renew", "ok") >= 1).then_some(())
    })
    .await;
    let lease_hmac = b
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "vault.lease_renew")
        .expect("renew record")["lease_hmac"]
        .as_str()
        .expect("hmac")
        .to_owned();
    assert_eq!(lease_hmac.len(), 64);
    assert!(
        !std::fs::read_to_string(&b.audit)
            .expect("audit")
            .contains("database/creds/app/"),
        "raw lease ids (database/creds/app/...) never reach the audit log"
    );

    // ...and re-fetched as a new credential when max_ttl nears.
    let second = eventually(
        Duration::from_secs(20),
        "a new credential after max_ttl",
        || async {
            let a = b.get("/v1/secrets/db").await;
            (a.status == 200 && a.json()["version"] == 2).then_some(a)
        },
    )
    .await;
    let user2 = second.json()["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    assert_ne!(user1, user2);
    assert!(pg.vault_roles().contains(&user2));

    // What the broker holds in Vault before SIGTERM: its login token and its leases.
    let tokens = support::live_tokens(&v.bao, "auth/jwt/login").await;
    assert!(
        !tokens.is_empty(),
        "the broker's login token is alive in Vault before SIGTERM"
    );
    let leases = support::live_leases(&v.bao, "database/creds/app/").await;
    assert!(
        !leases.is_empty(),
        "the broker holds a lease before SIGTERM"
    );

    // SIGTERM revokes every lease still held: the PostgreSQL roles are dropped.
    let status = b.terminate();
    assert!(status.success(), "broker exit: {status}\n{}", b.log());
    // The broker has exited: its token no longer works in Vault (revoked, not left to expire),
    // and Vault holds none of its leases.
    for accessor in &tokens {
        assert!(
            !support::token_alive(&v.bao, accessor).await,
            "the broker's Vault token is still valid after SIGTERM\n{}",
            b.log()
        );
    }
    assert_eq!(
        support::live_leases(&v.bao, "database/creds/app/").await,
        Vec::<String>::new(),
        "leases left in Vault after SIGTERM"
    );
    assert_eq!(
        b.audit_count("vault.revoke_token", "ok"),
        1,
        "one audited token revocation"
    );
    let roles = pg.vault_roles();
    assert!(
        !roles.contains(&user2) && !roles.contains(&user1),
        "roles left after SIGTERM: {roles:?}\n{}",
        b.log()
    );
    assert!(b.audit_count("vault.revoke", "ok") >= 1);
    assert!(!b.socket.exists(), "socket removed on exit");
    let out = std::process::Command::new(support::broker::KEYWARD)
        .args(["audit", "verify"])
        .arg(&b.audit)
        .output()
        .expect("audit verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn cached_lease_is_served_during_outage_until_it_expires() {
    let pg = Postgres::start();
    let mut v = TestVault::start("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "5s", "1h").await;
    let b = BrokerProc::start(&v.bao.addr(), &v.token("shop", "orders"), DB, &[]);
    b.wait_ready().await;
    let user = b.get("/v1/secrets/db/username").await;
    assert_eq!(user.status, 200);
    v.bao.stop();
    // Still served from the cache while the lease lasts.
    let a = b.get("/v1/secrets/db/username").await;
    assert_eq!((a.status, a.body.as_str()), (200, user.body.as_str()));
    // After the lease ends: 503 with the reason, and not ready.
    let a = eventually(
        Duration::from_secs(20),
        "503 after the lease expired",
        || async {
            let a = b.get("/v1/secrets/db").await;
            (a.status == 503).then_some(a)
        },
    )
    .await;
    assert!(a.body.contains("expired"), "{}", a.body);
    assert_eq!(a.json()["error"], "unavailable");
    let r = b.get("/v1/health/ready").await;
    assert_eq!(r.status, 503);
    // Vault returns (fresh dev server, same port): service resumes with a new credential.
    v.bao.restart();
    v.configure("shop", "orders", "1h", "2h").await;
    pg.configure_vault(&v.bao, "5s", "1h").await;
    eventually(Duration::from_secs(40), "service resumed", || async {
        let a = b.get("/v1/secrets/db").await;
        (a.status == 200).then_some(())
    })
    .await;
}
