//! The broker against a real OpenBao: login with bound service-account tokens, KV reads over
//! the socket, token renewal and re-login, KV updates and long-polls, and Vault outages.

mod support;

use std::time::Duration;

use serde_json::json;
use support::broker::BrokerProc;
use support::jwt::Claims;
use support::{eventually, TestVault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRETS: &str = "secrets:\n  - {name: app, path: secret/data/app}\n";

#[tokio::test]
async fn reads_kv_secret_as_json_and_raw_for_the_bound_service_account() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put(
            "app",
            json!({"password": "canary-kv-4c1f", "user": "orders"}),
        )
        .await;
    let b = BrokerProc::start(&v.bao.addr(), &v.token("shop", "orders"), SECRETS, &[]);
    b.wait_ready().await;

    let a = b.get("/v1/secrets/app").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["name"], "app");
    assert_eq!(j["data"]["password"], "canary-kv-4c1f");
    assert_eq!(j["data"]["user"], "orders");
    assert_eq!(j["version"], 1);
    assert_eq!(j["lease_expires_at"], serde_json::Value::Null);
    assert_eq!(j["renewable"], false);

    let raw = b.get("/v1/secrets/app/password").await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, "canary-kv-4c1f");
    assert!(raw.head.to_lowercase().contains("text/plain"));

    let list = b.get("/v1/secrets").await;
    assert_eq!(list.status, 200);
    assert!(
        !list.body.contains("canary"),
        "the list shows no values: {}",
        list.body
    );
    assert_eq!(list.json()["secrets"][0]["version"], 1);

    // The audit trail names the pod, the caller and the secret, and never the value.
    let reads: Vec<_> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.read")
        .collect();
    assert_eq!(reads.len(), 2);
    let r = &reads[0];
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["secret"], "app");
    assert_eq!(r["path"], "secret/data/app");
    assert_eq!(r["version"], 1);
    assert_eq!(r["pod"]["namespace"], "shop");
    assert_eq!(r["pod"]["service_account"], "orders");
    assert_eq!(r["pod"]["pod_name"], "orders-pod-1");
    assert_eq!(r["caller"]["uid"], nix::unistd::getuid().as_raw());
    assert!(r["caller"]["pid"].as_u64().expect("pid") > 0);
    assert!(!r["caller"]["comm"].as_str().expect("comm").is_empty());
    let fetch = b
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "vault.fetch")
        .expect("fetch record");
    assert!(!fetch["vault_request_id"]
        .as_str()
        .expect("request id")
        .is_empty());
    let login = b
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "vault.login")
        .expect("login record");
    assert_eq!(login["accessor_hmac"].as_str().expect("hmac").len(), 64);
    assert!(!std::fs::read_to_string(&b.audit)
        .expect("audit")
        .contains("canary"));
}

#[tokio::test]
async fn refused_logins_leave_the_broker_unready_with_vault_reason() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "x"})).await;
    let other_ns = v.issuer.mint(&Claims::new("other", "orders"));
    let other_sa = v.issuer.mint(&Claims::new("shop", "frontend"));
    let wrong_aud = v.issuer.mint(&Claims {
        audience: "kubernetes".into(),
        ..Claims::new("shop", "orders")
    });
    let expired = v.issuer.mint(&Claims {
        expires_in: -3600,
        ..Claims::new("shop", "orders")
    });
    let cases = [
        (other_ns, "does not match any associated bound claim values"),
        (other_sa, "does not match any associated bound claim values"),
        (wrong_aud, "invalid audience"),
        (expired, "token is expired"),
    ];
    let brokers: Vec<_> = cases
        .iter()
        // The role defaults to the service account's name; pin it so every token meets the
        // same role's bound claims.
        .map(|(t, _)| BrokerProc::start(&v.bao.addr(), t, SECRETS, &[("KEYWARD_ROLE", "orders")]))
        .collect();
    for (b, (_, why)) in brokers.iter().zip(cases.iter()) {
        let a = eventually(Duration::from_secs(20), "a refusal reason", || async {
            if !b.socket.exists() {
                return None;
            }
            let a = b.get("/v1/health/ready").await;
            (a.status == 503 && a.body.contains(why)).then_some(a)
        })
        .await;
        assert!(a.body.contains("not logged in to Vault"), "{}", a.body);
        assert!(
            b.log().contains(why),
            "log names the reason {why:?}:\n{}",
            b.log()
        );
        let secret = b.get("/v1/secrets/app").await;
        assert_eq!(secret.status, 503, "{}", secret.body);
        assert!(b.audit_count("vault.login", "error") >= 1);
    }
}

#[tokio::test]
async fn renews_token_logs_in_again_at_max_ttl_and_rereads_token_file() {
    let v = TestVault::start("shop", "orders", "3s", "7s").await;
    v.bao.kv_put("app", json!({"password": "x"})).await;
    let b = BrokerProc::start(&v.bao.addr(), &v.token("shop", "orders"), SECRETS, &[]);
    b.wait_ready().await;
    eventually(Duration::from_secs(20), "a token renewal", || async {
        (b.audit_count("vault.renew", "ok") >= 1).then_some(())
    })
    .await;
    // The kubelet rotates the projected token: the next login uses the new file.
    let rotated = v.issuer.mint(&Claims {
        pod: "orders-pod-2".into(),
        ..Claims::new("shop", "orders")
    });
    b.set_token(&rotated);
    let relogin = eventually(
        Duration::from_secs(30),
        "a login with the rotated token",
        || async {
            b.audit_records()
                .into_iter()
                .find(|r| r["action"] == "vault.login" && r["pod"]["pod_name"] == "orders-pod-2")
        },
    )
    .await;
    assert_eq!(relogin["decision"], "ok");
    assert!(b.audit_count("vault.login", "ok") >= 2);
    let a = b.get("/v1/health/ready").await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn token_revoked_out_of_band_triggers_relogin() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "x"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!("{SECRETS}kv_refresh: 1s\n"),
        &[],
    );
    b.wait_ready().await;
    // Revoke every token issued by the jwt mount.
    v.bao
        .api("POST", "sys/leases/revoke-prefix/auth/jwt", Some(json!({})))
        .await;
    eventually(
        Duration::from_secs(20),
        "a second login after the 403",
        || async { (b.audit_count("vault.login", "ok") >= 2).then_some(()) },
    )
    .await;
    v.bao.kv_put("app", json!({"password": "y"})).await;
    eventually(
        Duration::from_secs(20),
        "version 2 fetched with the new token",
        || async {
            let a = b.get("/v1/secrets/app").await;
            (a.status == 200 && a.json()["version"] == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn kv_update_reaches_socket_and_wakes_long_poll() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "v1"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!("{SECRETS}kv_refresh: 1s\n"),
        &[],
    );
    b.wait_ready().await;
    // The long-poll is on the socket while the version is still 1: it can only be answered
    // with version 2, once the update below reaches the broker (an index ignored would answer
    // version 1 at once).
    let mut poll = tokio::net::UnixStream::connect(&b.socket)
        .await
        .expect("connect");
    poll.write_all(
        b"GET /v1/secrets/app?index=1&wait=60s HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("send the long-poll");
    v.bao.kv_put("app", json!({"password": "v2"})).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), poll.read_to_end(&mut buf))
        .await
        .expect("long-poll woke within 20s")
        .expect("read the answer");
    let a = support::broker::parse(&buf);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["version"],
        2,
        "the long-poll on index 1 answered before version 2 existed: {}",
        a.body
    );
    assert_eq!(a.json()["data"]["password"], "v2");
    // A long-poll on the current version returns at its timeout with the same version.
    let a = b.get("/v1/secrets/app?index=2&wait=200ms").await;
    assert_eq!(a.json()["version"], 2);
}

#[tokio::test]
async fn outage_serves_cached_kv_and_resumes_when_vault_returns() {
    let mut v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "before"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!("{SECRETS}kv_refresh: 1s\n"),
        &[],
    );
    b.wait_ready().await;
    v.bao.stop();
    // Refreshes fail while Vault is down...
    eventually(Duration::from_secs(20), "a failed fetch", || async {
        (b.audit_count("vault.fetch", "error") >= 1).then_some(())
    })
    .await;
    // ...and the cached KV value keeps being served.
    let a = b.get("/v1/secrets/app/password").await;
    assert_eq!((a.status, a.body.as_str()), (200, "before"));
    // A fresh server (dev storage is in memory) comes back with the same role and a new value.
    v.bao.restart();
    v.configure("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": "after"})).await;
    eventually(
        Duration::from_secs(40),
        "the new value after Vault returns",
        || async {
            let a = b.get("/v1/secrets/app/password").await;
            (a.status == 200 && a.body == "after").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn kubernetes_auth_method_uses_its_own_mount_and_reports_vault_reason() {
    // The kubernetes method always calls a TokenReview API; no API server runs here, so the
    // login must fail with Vault's reason from that mount (the same call shape as jwt).
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .api(
            "POST",
            "sys/auth/kubernetes",
            Some(json!({"type": "kubernetes"})),
        )
        .await;
    v.bao
        .api(
            "POST",
            "auth/kubernetes/config",
            Some(json!({
                "kubernetes_host": "https://127.0.0.1:1",
                "kubernetes_ca_cert": rcgen::generate_simple_self_signed(vec!["kubernetes".into()])
                    .expect("ca")
                    .cert
                    .pem(),
                "disable_local_ca_jwt": true,
            })),
        )
        .await;
    v.bao
        .api(
            "POST",
            "auth/kubernetes/role/orders",
            Some(json!({"bound_service_account_names": ["orders"], "bound_service_account_namespaces": ["shop"], "token_policies": ["app"]})),
        )
        .await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "secrets: []\n",
        &[("KEYWARD_AUTH_METHOD", "kubernetes")],
    );
    let a = eventually(
        Duration::from_secs(20),
        "the kubernetes login refusal",
        || async {
            if !b.socket.exists() {
                return None;
            }
            let a = b.get("/v1/health/ready").await;
            (a.status == 503 && a.body.contains("Vault answered")).then_some(a)
        },
    )
    .await;
    assert!(a.body.contains("not logged in to Vault"), "{}", a.body);
    let rec = b
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "vault.login")
        .expect("login record");
    assert_eq!(rec["decision"], "error");
    assert_eq!(rec["pod"]["service_account"], "orders");
}
