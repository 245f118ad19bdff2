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

    let t_checks = t0.elapsed();
    ks.down(Duration::from_secs(10)).await;
    eprintln!(
        "timing: shop running {t_up:?}, checked {t_checks:?}, total {:?}",
        t0.elapsed()
    );
}
