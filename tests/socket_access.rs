//! Who may see what on the socket, through the real `keyward sidecar` against a real OpenBao:
//! the SVID's private key only for the uids the pod declares (`identity.allow_uids`), denials
//! audited; `GET /v1/secrets` shows a caller only the secrets its uid may read; and a pod with
//! no mesh ports gets a broker-only sidecar that still serves readiness and metrics.

mod support;

use serde_json::json;
use support::broker::get;
use support::pki::{Pki, Sidecar, SidecarSpec};
use support::TestVault;

fn me() -> u32 {
    nix::unistd::getuid().as_raw()
}

fn records(s: &Sidecar, action: &str, decision: &str) -> Vec<serde_json::Value> {
    s.audit_records()
        .into_iter()
        .filter(|r| r["action"] == action && r["decision"] == decision)
        .collect()
}

#[tokio::test]
async fn the_svid_key_is_served_only_to_the_declared_uids_and_denials_are_audited() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    Pki::setup(&v.bao).await;
    let mine = format!("[{}]", me());
    let other = format!("[{}]", me() + 4242);
    for (uids, allowed) in [
        (mine.as_str(), true),
        (other.as_str(), false),
        ("[]", false),
    ] {
        let mut s = Sidecar::start(
            &v.bao.addr(),
            SidecarSpec {
                identity_uids: uids,
                ..SidecarSpec::new("shop", "orders", v.token("shop", "orders"))
            },
        );
        s.wait_ready().await;
        let id = get(&s.socket, "/v1/identity").await;
        if allowed {
            assert_eq!(id.status, 200, "allow_uids {uids}: {}", id.body);
            let body = id.json();
            assert!(
                body["private_key_pem"]
                    .as_str()
                    .is_some_and(|k| k.contains("PRIVATE KEY")),
                "the key is served to a declared uid"
            );
            assert_eq!(records(&s, "identity.read", "allow").len(), 1);
            assert!(records(&s, "identity.read", "deny").is_empty());
        } else {
            assert_eq!(id.status, 403, "allow_uids {uids}: {}", id.body);
            assert!(
                !id.body.contains("PRIVATE KEY") && !id.body.contains("CERTIFICATE"),
                "a refused caller gets neither key nor certificate: {}",
                id.body
            );
            assert!(
                id.body.contains("identity-uids"),
                "the refusal names the setting: {}",
                id.body
            );
            let denied = records(&s, "identity.read", "deny");
            assert_eq!(denied.len(), 1, "one audited denial: {denied:?}");
            assert_eq!(denied[0]["caller"]["uid"], me());
            assert!(records(&s, "identity.read", "allow").is_empty());
        }
        s.terminate().await;
    }
}

#[tokio::test]
async fn the_secret_list_shows_a_caller_only_what_its_uid_may_read() {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put("app", json!({"user": "u", "password": "p"}))
        .await;
    let secrets = format!(
        "secrets:\n  - {{name: open, path: secret/data/app}}\n  - {{name: mine, path: secret/data/app, allow_uids: [{me}]}}\n  - {{name: locked, path: secret/data/locked-away, allow_uids: [{other}], required: false}}\n",
        me = me(),
        other = me() + 4242,
    );
    let mut s = Sidecar::start(
        &v.bao.addr(),
        SidecarSpec {
            broker_only: true,
            extra: &secrets,
            ..SidecarSpec::new("shop", "orders", v.token("shop", "orders"))
        },
    );
    s.wait_ready().await;
    let list = get(&s.socket, "/v1/secrets").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let names: Vec<String> = list.json()["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["mine", "open"], "{}", list.body);
    assert!(
        !list.body.contains("locked") && !list.body.contains("locked-away"),
        "neither the name, the path nor the Vault error of another uid's secret: {}",
        list.body
    );
    s.terminate().await;
}

#[tokio::test]
async fn a_sidecar_without_mesh_ports_runs_broker_only_and_serves_readiness_and_metrics() {
    // No PKI engine at all in this Vault: a broker-only sidecar never asks for a certificate.
    let v = TestVault::start("batch", "report", "1h", "2h").await;
    v.bao
        .kv_put("app", json!({"password": "s3cret-batch"}))
        .await;
    let mut s = Sidecar::start(
        &v.bao.addr(),
        SidecarSpec {
            broker_only: true,
            extra: "secrets:\n  - {name: db, path: secret/data/app}\n",
            ..SidecarSpec::new("batch", "report", v.token("batch", "report"))
        },
    );
    s.wait_ready().await;
    let (status, body) = s.admin_get("/ready").await.expect("admin endpoint answers");
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = s.admin_get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("keyward_audit_last_seq"), "{metrics}");
    let value = get(&s.socket, "/v1/secrets/db/password").await;
    assert_eq!(value.status, 200, "{}", value.body);
    assert_eq!(value.body, "s3cret-batch");
    let id = get(&s.socket, "/v1/identity").await;
    assert_eq!(id.status, 404, "{}", id.body);
    assert!(id.body.contains("no mesh ports"), "{}", id.body);
    assert!(
        s.audit_records()
            .iter()
            .all(|r| r["action"] != "svid.issue"),
        "no certificate is requested"
    );
    assert!(s.log().contains("broker only"), "{}", s.log());
    let status = s.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
