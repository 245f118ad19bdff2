//! Faults while the sidecar runs against a real OpenBao: Vault slow, resetting or answering
//! 5xx (through a fault-injecting relay), PostgreSQL down when a lease renews, the
//! service-account token replaced by a bad one, and the audit log's disk filling up. For each:
//! no panic (no event of keyward's panic hook in the log), a log line and a metric, the right readiness, nothing served unaudited, and
//! recovery once the fault clears.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::broker::get;
use support::disk::SmallDisk;
use support::jwt::Claims;
use support::pg::Postgres;
use support::pki::{Pki, Sidecar, SidecarSpec};
use support::relay::{Fault, Relay};
use support::{eventually, TestVault};

const CANARY: &str = "canary-fault-5b7d";

/// A sidecar with no listeners (broker + identity), ready.
async fn sidecar(v: &TestVault, vault_addr: &str, extra: &str, env: &[(&str, &str)]) -> Sidecar {
    let mut s = Sidecar::start_with_env(
        vault_addr,
        SidecarSpec {
            extra,
            ..SidecarSpec::new("shop", "orders", v.token("shop", "orders"))
        },
        env,
    );
    s.wait_ready().await;
    s
}

fn count(s: &Sidecar, action: &str, decision: &str) -> usize {
    s.audit_records()
        .iter()
        .filter(|r| r["action"] == action && r["decision"] == decision)
        .count()
}

async fn ready_status(s: &Sidecar) -> u16 {
    s.admin_get("/ready").await.map(|(st, _)| st).unwrap_or(0)
}

/// Every 200 the test saw for a secret has its `allow` record: nothing was served unaudited.
fn assert_all_reads_audited(s: &Sidecar, served: usize) {
    let allowed = count(s, "secret.read", "allow");
    assert_eq!(allowed, served, "allow records vs values served");
}

#[tokio::test]
async fn vault_slow_resetting_or_5xx_keeps_cache_served_and_recovers() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    v.bao.kv_put("app", json!({"password": CANARY})).await;
    let upstream: SocketAddr = ([127, 0, 0, 1], v.bao.port()).into();
    let relay = Relay::start(upstream).await;
    let s = sidecar(
        &v,
        &relay.url(),
        "secrets:\n  - {name: app, path: secret/data/app}\nkv_refresh: 1s\n",
        &[],
    )
    .await;
    let served = std::cell::Cell::new(0);
    for (fault, needle) in [
        (Fault::BadGateway, "Vault answered 502"),
        (Fault::Reset, "Vault unreachable"),
        (Fault::Delay(Duration::from_secs(8)), "timed out"),
    ] {
        let errors = s.metric("keyward_secret_fetch_errors_total").await;
        let fetched = count(&s, "vault.fetch", "ok");
        relay.set(fault);
        eventually(Duration::from_secs(30), "a counted fetch error", || async {
            (s.metric("keyward_secret_fetch_errors_total").await > errors).then_some(())
        })
        .await;
        assert!(
            s.log().contains(needle),
            "{fault:?}: log names {needle:?}\n{}",
            s.log()
        );
        // The cached value is still served, audited, and the sidecar stays ready.
        let a = get(&s.socket, "/v1/secrets/app/password").await;
        assert_eq!((a.status, a.body.as_str()), (200, CANARY), "{fault:?}");
        served.set(served.get() + 1);
        assert_eq!(ready_status(&s).await, 200, "{fault:?}");
        relay.set(Fault::Pass);
        eventually(
            Duration::from_secs(30),
            "a successful fetch after the fault",
            || async { (count(&s, "vault.fetch", "ok") > fetched).then_some(()) },
        )
        .await;
    }
    v.bao.kv_put("app", json!({"password": "v2"})).await;
    eventually(
        Duration::from_secs(20),
        "version 2 after recovery",
        || async {
            let a = get(&s.socket, "/v1/secrets/app/password").await;
            if a.status == 200 {
                served.set(served.get() + 1);
            }
            (a.status == 200 && a.body == "v2").then_some(())
        },
    )
    .await;
    assert_all_reads_audited(&s, served.get());
    support::assert_no_panic("the sidecar", &s.log());
    assert!(!s.log().contains(CANARY));
    // Nor in the metrics, which name secrets and outcomes only.
    let (_, metrics) = s.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics.contains("keyward_secret_fetches_total{secret=\"app\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(CANARY));
}

#[tokio::test]
async fn postgres_down_at_renewal_serves_until_expiry_then_recovers() {
    let mut pg = Postgres::start();
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    pg.configure_vault(&v.bao, "6s", "1h").await;
    let s = sidecar(
        &v,
        &v.bao.addr(),
        "secrets:\n  - {name: db, path: database/creds/app}\n",
        &[],
    )
    .await;
    let user = get(&s.socket, "/v1/secrets/db/username").await;
    assert_eq!(user.status, 200);
    let served = std::cell::Cell::new(1);
    pg.stop();
    eventually(
        Duration::from_secs(20),
        "a failed lease renewal",
        || async {
            (s.metric("keyward_lease_renewals_total{result=\"error\"}")
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert!(s.log().contains("Lease renewal failed"), "{}", s.log());
    // After the lease ends with PostgreSQL still down: 503 with the reason, not ready.
    let a = eventually(
        Duration::from_secs(30),
        "503 once the lease ended",
        || async {
            let a = get(&s.socket, "/v1/secrets/db").await;
            if a.status == 200 {
                served.set(served.get() + 1);
            }
            (a.status == 503).then_some(a)
        },
    )
    .await;
    assert!(a.body.contains("expired"), "{}", a.body);
    assert_eq!(ready_status(&s).await, 503);
    pg.start_again();
    let b = eventually(
        Duration::from_secs(40),
        "a new credential once PostgreSQL is back",
        || async {
            let a = get(&s.socket, "/v1/secrets/db/username").await;
            (a.status == 200).then_some(a)
        },
    )
    .await;
    served.set(served.get() + 1);
    assert_ne!(b.body, user.body, "a new credential, not the expired one");
    assert_eq!(ready_status(&s).await, 200);
    assert_all_reads_audited(&s, served.get());
    support::assert_no_panic("the sidecar", &s.log());
}

#[tokio::test]
async fn bad_service_account_tokens_fail_login_clearly_and_recover() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    v.bao.kv_put("app", json!({"password": CANARY})).await;
    let s = sidecar(
        &v,
        &v.bao.addr(),
        "secrets:\n  - {name: app, path: secret/data/app}\nkv_refresh: 1s\n",
        &[],
    )
    .await;
    let token_file = s.dir.path().join("token");
    let good = v.token("shop", "orders");
    let cases = [
        ("not-a-jwt".to_owned(), "not a JWT"),
        (
            v.issuer.mint(&Claims {
                expires_in: -3600,
                ..Claims::new("shop", "orders")
            }),
            "expired",
        ),
        (
            // Issued by a clock two hours ahead: not valid yet, and far outside the leeway.
            v.issuer.mint(&Claims {
                clock_skew: 7200,
                ..Claims::new("shop", "orders")
            }),
            "Vault answered",
        ),
    ];
    let mut served = 0;
    for (token, needle) in cases {
        let failures = s
            .metric("keyward_vault_logins_total{result=\"error\"}")
            .await;
        std::fs::write(&token_file, &token).expect("replace token");
        // Revoke the sidecar's Vault token so it must log in again with the file's token.
        v.bao
            .api("POST", "sys/leases/revoke-prefix/auth/jwt", Some(json!({})))
            .await;
        // The next KV refresh (every second) gets 403 and triggers the login.
        let body = eventually(
            Duration::from_secs(30),
            "unready with the login error",
            || async {
                let (admin_status, _) = s.admin_get("/ready").await?;
                let broker = get(&s.socket, "/v1/health/ready").await;
                (admin_status == 503 && broker.status == 503 && broker.body.contains(needle))
                    .then_some(broker.body)
            },
        )
        .await;
        assert!(body.contains("not logged in to Vault"), "{body}");
        assert!(
            s.metric("keyward_vault_logins_total{result=\"error\"}")
                .await
                > failures
        );
        assert!(s.log().contains(needle), "log names {needle:?}");
        // Cached secrets are still served meanwhile (and audited).
        let a = get(&s.socket, "/v1/secrets/app/password").await;
        assert_eq!((a.status, a.body.as_str()), (200, CANARY));
        served += 1;
        // The kubelet writes a good token again: the sidecar recovers.
        std::fs::write(&token_file, &good).expect("restore token");
        s_wait_ready(&s).await;
    }
    assert_all_reads_audited(&s, served);
    support::assert_no_panic("the sidecar", &s.log());
    assert!(
        !s.log().contains(good.trim()),
        "the token never reaches the log"
    );
}

async fn s_wait_ready(s: &Sidecar) {
    eventually(Duration::from_secs(30), "ready again", || async {
        (ready_status(s).await == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn full_audit_disk_refuses_to_serve_then_recovers_with_an_intact_chain() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    v.bao.kv_put("app", json!({"password": CANARY})).await;
    let disk = SmallDisk::mount("256k");
    let audit = disk.dir.path().join("audit.log");
    let audit_env = audit.display().to_string();
    let s = sidecar(
        &v,
        &v.bao.addr(),
        "secrets:\n  - {name: app, path: secret/data/app}\n",
        &[("KEYWARD_AUDIT_FILE", &audit_env)],
    )
    .await;
    let a = get(&s.socket, "/v1/secrets/app/password").await;
    assert_eq!((a.status, a.body.as_str()), (200, CANARY));

    disk.fill();
    // The audit file's last page may still take a record or two: those reads are served (and
    // recorded); then the disk is really full.
    let mut served = 1;
    for _ in 0..20 {
        let a = get(&s.socket, "/v1/secrets/app/password").await;
        if a.status != 200 {
            break;
        }
        served += 1;
    }
    for _ in 0..3 {
        let a = get(&s.socket, "/v1/secrets/app/password").await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.json()["error"], "audit_unavailable");
        assert!(!a.body.contains(CANARY));
    }
    assert!(s.metric("keyward_audit_write_failures_total").await >= 3.0);
    // Refused writes do not count: the last sequence number is the file's last record.
    let in_file = std::fs::read_to_string(&audit)
        .expect("audit")
        .lines()
        .count();
    assert_eq!(s.metric("keyward_audit_last_seq").await, in_file as f64);
    assert!(s.log().contains("Audit write failed"), "{}", s.log());

    disk.free();
    let a = get(&s.socket, "/v1/secrets/app/password").await;
    assert_eq!((a.status, a.body.as_str()), (200, CANARY));
    served += 1;
    // No partial line was left behind: the chain verifies.
    let out = std::process::Command::new(support::broker::KEYWARD)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reads = std::fs::read_to_string(&audit)
        .expect("audit")
        .lines()
        .filter(|l| {
            l.contains("\"action\":\"secret.read\"") && l.contains("\"decision\":\"allow\"")
        })
        .count();
    assert_eq!(reads, served, "exactly the values served are recorded");
    support::assert_no_panic("the sidecar", &s.log());
}

#[tokio::test]
async fn openbao_sealed_unsealed_and_restarted_with_persistent_storage() {
    let bao = support::bao::Bao::start_persistent().await;
    let mut v = TestVault::with_bao(bao, "shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    v.bao.kv_put("app", json!({"password": CANARY})).await;
    let s = sidecar(
        &v,
        &v.bao.addr(),
        "secrets:\n  - {name: app, path: secret/data/app}\nkv_refresh: 1s\n",
        &[],
    )
    .await;
    let served = std::cell::Cell::new(0);
    let read_until = |want: &'static str, what: &'static str| {
        let s = &s;
        let served = &served;
        async move {
            eventually(Duration::from_secs(40), what, || async {
                let a = get(&s.socket, "/v1/secrets/app/password").await;
                if a.status == 200 {
                    served.set(served.get() + 1);
                }
                (a.status == 200 && a.body == want).then_some(())
            })
            .await
        }
    };

    // Sealed: refreshes fail with Vault's 503, the cache keeps serving, the sidecar stays ready.
    let errors = s.metric("keyward_secret_fetch_errors_total").await;
    v.bao.seal();
    eventually(
        Duration::from_secs(20),
        "a fetch error while sealed",
        || async { (s.metric("keyward_secret_fetch_errors_total").await > errors).then_some(()) },
    )
    .await;
    assert!(s.log().contains("Vault answered 503"), "{}", s.log());
    read_until(CANARY, "the cached value while sealed").await;
    assert_eq!(ready_status(&s).await, 200);

    // Unsealed: the same token still works (the storage kept it); new versions arrive.
    v.bao.unseal();
    v.bao
        .kv_put("app", json!({"password": "after-unseal"}))
        .await;
    read_until("after-unseal", "the value written after unsealing").await;

    // Restarted (and unsealed again): service resumes.
    v.bao.restart();
    v.bao
        .kv_put("app", json!({"password": "after-restart"}))
        .await;
    read_until("after-restart", "the value written after the restart").await;
    assert_eq!(ready_status(&s).await, 200);
    assert_all_reads_audited(&s, served.get());
    support::assert_no_panic("the sidecar", &s.log());
}

#[tokio::test]
async fn pki_role_deleted_keeps_the_current_certificate_and_recovers() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    let me = format!("[{}]", nix::unistd::getuid().as_raw());
    let mut s = Sidecar::start(
        &v.bao.addr(),
        SidecarSpec {
            ttl: "30s",
            identity_uids: &me,
            ..SidecarSpec::new("shop", "orders", v.token("shop", "orders"))
        },
    );
    s.wait_ready().await;
    v.bao.api("DELETE", "pki_int/roles/spiffe", None).await;
    // Renewal is due at about 20 s: it is refused, logged, counted and audited...
    eventually(Duration::from_secs(40), "a refused renewal", || async {
        (s.metric("keyward_svid_errors_total").await >= 1.0).then_some(())
    })
    .await;
    assert!(
        s.log().contains("Cannot renew workload certificate"),
        "{}",
        s.log()
    );
    assert!(count(&s, "svid.issue", "error") >= 1);
    // ...while the current certificate, still valid, keeps the sidecar ready.
    assert_eq!(ready_status(&s).await, 200);
    let id = get(&s.socket, "/v1/identity").await;
    assert_eq!(id.status, 200, "{}", id.body);
    // The role comes back: the next retry issues a new certificate.
    let issued = count(&s, "svid.issue", "ok");
    Pki::create_role(&v.bao).await;
    eventually(
        Duration::from_secs(30),
        "a certificate issued after the role returned",
        || async { (count(&s, "svid.issue", "ok") > issued).then_some(()) },
    )
    .await;
    assert_eq!(ready_status(&s).await, 200);
    support::assert_no_panic("the sidecar", &s.log());
}
