//! The shop on the real control plane (issue 14 §3): `kubectl apply -f examples/shop` into
//! namespaces labelled `keyward.io/inject=enabled` and `pod-security.kubernetes.io/enforce=
//! restricted`; the Deployments become pods through the controllers, kube-apiserver calls the
//! injector, PodSecurity admits the injected pods, the scheduler binds them and the node agent
//! runs them with TokenRequest tokens (keyward_e2e::kube_shop, shared with scripts/demo.sh).
//! OpenBao and PostgreSQL are the shop's own, OpenBao's jwt auth trusting the API server's key.
//! Checked as tests/e2e_shop.rs does: secrets delivered, frontend -> orders allowed over mTLS,
//! other/client -> orders denied (and audited), the Job completes, the audit logs verify.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyward_e2e::kube_shop::{KubeShop, NODE};
use keyward_e2e::shop::Tools;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_runs_from_kubectl_apply_on_the_real_control_plane() {
    let t0 = Instant::now();
    let tools = Tools::from_env(
        PathBuf::from(env!("CARGO_BIN_EXE_keyward")),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ks = KubeShop::up(tools, &|s| eprintln!("== {s}"))
        .await
        .unwrap_or_else(|e| panic!("the shop on the test cluster: {e}"));
    let t_up = t0.elapsed();
    eprintln!(
        "{}",
        ks.kubectl(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default()
    );
    let orders = ks.pod_name("shop", "orders").expect("orders pod");
    let frontend = ks.pod_name("shop", "frontend").expect("frontend pod");
    for (ns, pod) in [
        ("shop", orders.as_str()),
        ("shop", frontend.as_str()),
        ("other", "client"),
    ] {
        let p = ks.pod(ns, pod).expect("pod");
        assert_eq!(
            p["metadata"]["annotations"]["keyward.io/status"], "injected",
            "{p:#}"
        );
        assert_eq!(p["spec"]["nodeName"], NODE, "{p:#}");
    }

    // Secrets delivered: the frontend's KV banner, orders' dynamic PostgreSQL user (read as
    // the app's uid 1000, the only one keyward.io/secret-db-uids allows).
    let config = KubeShop::until("the frontend's KV secret", || {
        ks.socket_get("shop", &frontend, "/v1/secrets/config")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let config: Value = serde_json::from_str(&config).unwrap_or_else(|e| panic!("{e}: {config}"));
    assert_eq!(config["data"]["banner"], "Spring sale: v1", "{config}");
    let user = KubeShop::until("orders' database user", || {
        ks.socket_get("shop", &orders, "/v1/secrets/db/username")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(user.starts_with("v-"), "{user}");

    // frontend -> orders over mTLS through both sidecars (orders.shop.svc resolves to the
    // orders pod from its EndpointSlice), orders reading PostgreSQL with its credential.
    let page = ks.frontend_page().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        page.contains("-> orders: 3 open orders (read from PostgreSQL as v-"),
        "{page}"
    );
    ks.wait_audit("shop", &orders, "orders allowing the frontend", |r| {
        r["action"] == "conn.inbound"
            && r["decision"] == "allow"
            && r["peer"]["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/frontend"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // other/client -> orders: refused by orders' inbound policy, and recorded.
    let (code, out) = ks
        .curl("other", "client", "http://127.0.0.1:15001/")
        .await
        .expect("exec in other/client");
    assert!(
        code != 0 && !out.contains("open orders"),
        "other/client reached orders: {out}"
    );
    ks.wait_audit("shop", &orders, "orders denying other/client", |r| {
        r["action"] == "conn.inbound"
            && r["decision"] == "deny"
            && r["peer"]["spiffe_id"] == "spiffe://cluster.local/ns/other/sa/client"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // A KV update reaches the running frontend app (its long-poll) without a restart.
    let app_pid = ks.node.pids("shop", &frontend);
    ks.shop
        .kv_put(
            "shop/frontend",
            serde_json::json!({"banner": "Summer sale: v2", "api_key": "fk-demo-2"}),
        )
        .await
        .expect("KV update");
    KubeShop::until("the KV update in the frontend app", || {
        let log = ks.node.logs("shop", &frontend, "app");
        async move {
            if log.contains("config version 2: banner=Summer sale: v2") {
                Ok(())
            } else {
                Err(keyward_e2e::Error::Setup(log))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ks.node.pids("shop", &frontend), app_pid, "no restart");
    let p = ks.pod("shop", &frontend).expect("frontend pod");
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "{p:#}"
    );

    // The dynamic credential is renewed (10 s leases) and, once the Deployment is scaled to
    // zero (the pod deleted through the API server), revoked: its PostgreSQL role is gone.
    ks.wait_audit("shop", &orders, "a lease renewal", |r| {
        r["action"] == "vault.lease_renew" && r["decision"] == "ok"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let roles = ks.shop.vault_roles().expect("pg roles");
    assert!(roles.contains(&user), "{user} in {roles:?}");

    // The Job completes (its sidecar stops after the app; the pod Succeeds).
    ks.wait(&["-n", "shop", "--for=condition=complete", "job/nightly"])
        .unwrap_or_else(|e| panic!("job/nightly complete: {e}"));

    // The audit logs verify.
    for pod in [&orders, &frontend] {
        let (ok, out) = ks.audit("shop", pod, &["verify"]).expect("keyward audit");
        assert!(ok && out.starts_with("OK"), "shop/{pod} audit: {out}");
    }
    let (ok, out) = ks
        .audit("other", "client", &["verify"])
        .expect("keyward audit");
    assert!(ok && out.starts_with("OK"), "other/client audit: {out}");

    ks.kubectl(&["-n", "shop", "scale", "deployment/orders", "--replicas=0"])
        .expect("scale orders to 0");
    ks.wait(&["-n", "shop", "--for=delete", &format!("pod/{orders}")])
        .unwrap_or_else(|e| panic!("orders deleted: {e}"));
    KubeShop::until("the orders role revoked", || {
        let roles = ks.shop.vault_roles();
        let user = user.clone();
        async move {
            match roles {
                Ok(r) if !r.contains(&user) => Ok(()),
                Ok(r) => Err(keyward_e2e::Error::Setup(format!("{r:?}"))),
                Err(e) => Err(e),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let t_checks = t0.elapsed();
    ks.down(Duration::from_secs(10)).await;
    eprintln!(
        "timing: shop running {t_up:?}, checked {t_checks:?}, total {:?}",
        t0.elapsed()
    );
}
