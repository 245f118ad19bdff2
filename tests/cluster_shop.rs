//! The shop on the real control plane (issue 14 §3): `kubectl apply -f examples/shop` into
//! namespaces labelled `keyward.io/inject=enabled` and `pod-security.kubernetes.io/enforce=
//! restricted`; the Deployments become pods through the controllers, kube-apiserver calls the
//! injector, PodSecurity admits the injected pods, the scheduler binds them and the node agent
//! runs them with TokenRequest tokens. OpenBao and PostgreSQL are the shop's own (e2e/src/shop.rs,
//! on a node host of their own), with OpenBao's jwt auth trusting the API server's signing key.
//! Checked as tests/e2e_shop.rs does: secrets delivered, frontend -> orders allowed over mTLS,
//! other/client -> orders denied (and audited), the Job completes, the audit logs verify.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyward_e2e::node::{Node, NodeConfig};
use keyward_e2e::shop::{Shop, Tools, KEYWARD_IMAGE, NODE_NAMES};
use keyward_test_cluster::{Cluster, Injector, ISSUER};
use serde_json::{json, Value};

const NODE: &str = "keyward-node";
/// Safety net for conditions on a loaded two-core machine; never slept for.
const WAIT: Duration = Duration::from_secs(150);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The one pod of `app=NAME` in `ns`.
fn pod_name(cluster: &Cluster, ns: &str, app: &str) -> String {
    let pods = blocking(|| cluster.get_json(&["-n", ns, "pods", "-l", &format!("app={app}")]))
        .unwrap_or_else(|e| panic!("pods of {app}: {e}"));
    pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no pod of {app}: {pods:#}"))
        .to_owned()
}

/// Polls `f` every 200 ms until it returns Some; panics naming `what` after `WAIT`.
async fn until<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn audit_records(node: &Node, ns: &str, pod: &str) -> Vec<Value> {
    let dir = node
        .volume(ns, pod, "keyward-socket")
        .unwrap_or_else(|| panic!("{ns}/{pod} has no keyward-socket volume"));
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_runs_from_kubectl_apply_on_the_real_control_plane() {
    let t0 = Instant::now();
    let keyward = PathBuf::from(env!("CARGO_BIN_EXE_keyward"));
    let tools =
        Tools::from_env(keyward.clone(), repo().join("examples")).unwrap_or_else(|e| panic!("{e}"));
    let shop = Shop::servers(tools, &|s| eprintln!("== {s}"))
        .await
        .unwrap_or_else(|e| panic!("the shop's OpenBao and PostgreSQL: {e}"));
    let cluster = blocking(Cluster::start).unwrap_or_else(|e| panic!("test cluster: {e}"));
    let t_cluster = t0.elapsed();

    // OpenBao's jwt auth verifies the API server's tokens (docs/vault-setup.md: the
    // service-account public key and the issuer; the shop's roles bind namespace and account).
    let sa_pub = cluster.sa_public_key_pem().expect("sa.pub");
    shop.bao
        .try_api(
            "POST",
            "auth/jwt/config",
            Some(json!({"jwt_validation_pubkeys": [sa_pub], "bound_issuer": ISSUER})),
        )
        .await
        .unwrap_or_else(|e| panic!("auth/jwt/config: {e}"));

    // The node: pods reach OpenBao and PostgreSQL by the names the examples use.
    let creds = blocking(|| cluster.node_credentials(NODE))
        .unwrap_or_else(|e| panic!("node credentials: {e}"));
    let mut cfg = NodeConfig::new(NODE, &creds.server, &creds.ca, &creds.cert, &creds.key);
    cfg.images = vec![(KEYWARD_IMAGE.to_owned(), keyward.clone())];
    cfg.node_names = NODE_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let node = Node::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("starting the node agent: {e}"));
    let bao_port: u16 = shop
        .bao
        .addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("OpenBao's port");
    let expose = |port: u16, to: u16| {
        keyward_e2e::net::Expose::start(&node.host, port, ([127, 0, 0, 1], to).into())
    };
    let _vault = expose(8200, bao_port).await.expect("expose OpenBao");
    let _pg = expose(5432, shop.pg_port).await.expect("expose PostgreSQL");

    // The injector with the examples' config, behind the chart's webhook.
    let injector =
        blocking(|| Injector::start(&keyward, &repo().join("examples/injector-config.yaml")))
            .unwrap_or_else(|e| panic!("keyward injector: {e}"));
    blocking(|| cluster.register_webhook(&injector, &[])).expect("the chart's webhook");

    // kubectl apply -f examples/shop.
    let shop_dir = repo().join("examples/shop");
    let applied =
        blocking(|| cluster.kubectl(&["apply", "-f", shop_dir.to_str().expect("utf-8 path")]))
            .unwrap_or_else(|e| panic!("kubectl apply -f examples/shop: {e}\n{}", injector.log()));
    eprintln!("{applied}");
    let wait = |args: &[&str]| {
        let mut a = vec!["wait", "--timeout=150s"];
        a.extend_from_slice(args);
        blocking(|| cluster.kubectl(&a))
    };
    let status =
        || blocking(|| cluster.kubectl(&["get", "pods", "-A", "-o", "wide"])).unwrap_or_default();
    for (ns, what) in [
        ("shop", "deployment/orders"),
        ("shop", "deployment/frontend"),
        ("shop", "deployment/reports"),
    ] {
        wait(&["-n", ns, "--for=condition=Available", what])
            .unwrap_or_else(|e| panic!("{what} Available: {e}\n{}", status()));
    }
    wait(&["-n", "other", "--for=condition=Ready", "pod/client"])
        .unwrap_or_else(|e| panic!("other/client Ready: {e}\n{}", status()));
    let t_up = t0.elapsed();
    let listed = status();
    eprintln!("{listed}");
    let orders = pod_name(&cluster, "shop", "orders");
    let frontend = pod_name(&cluster, "shop", "frontend");
    for (ns, pod) in [
        ("shop", orders.as_str()),
        ("shop", frontend.as_str()),
        ("other", "client"),
    ] {
        let p = blocking(|| cluster.get_json(&["-n", ns, "pod", pod])).expect("pod");
        assert_eq!(
            p["metadata"]["annotations"]["keyward.io/status"], "injected",
            "{p:#}"
        );
        assert_eq!(p["spec"]["nodeName"], NODE, "{p:#}");
    }

    // Secrets delivered: the frontend's KV banner, orders' dynamic PostgreSQL user (as the
    // app's uid 1000, the only one keyward.io/secret-db-uids allows).
    let socket_get = |ns: &'static str, pod: String, path: &'static str| {
        let node = &node;
        async move {
            let url = format!("http://keyward{path}");
            let script = "curl -sS --max-time 10 --unix-socket \"$KEYWARD_SOCKET\" \"$1\"";
            match node
                .exec(ns, &pod, "app", &["sh", "-c", script, "sh", &url])
                .await
            {
                Ok((0, out, _)) => Ok(out),
                Ok((code, out, err)) => Err(format!("curl exit {code}: {out}{err}")),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let config = until("the frontend's KV secret", || {
        socket_get("shop", frontend.clone(), "/v1/secrets/config")
    })
    .await;
    let config: Value = serde_json::from_str(&config).unwrap_or_else(|e| panic!("{e}: {config}"));
    assert_eq!(config["data"]["banner"], "Spring sale: v1", "{config}");
    let user = until("orders' database user", || {
        socket_get("shop", orders.clone(), "/v1/secrets/db/username")
    })
    .await;
    assert!(user.starts_with("v-"), "{user}");
    let t_secrets = t0.elapsed();

    // frontend -> orders over mTLS through both sidecars (orders.shop.svc resolves to the
    // orders pod from its EndpointSlice), orders reading PostgreSQL with its credential.
    let page = until("the frontend page to show orders", || {
        let node = &node;
        let frontend = frontend.clone();
        async move {
            let argv = ["curl", "-sS", "--max-time", "20", "http://127.0.0.1:8080/"];
            match node.exec("shop", &frontend, "app", &argv).await {
                Ok((0, out, _)) if out.contains("open orders") => Ok(out),
                Ok((code, out, err)) => Err(format!("{code}: {out}{err}")),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    assert!(
        page.contains("-> orders: 3 open orders (read from PostgreSQL as v-"),
        "{page}"
    );
    let allowed = audit_records(&node, "shop", &orders).into_iter().any(|r| {
        r["action"] == "conn.inbound"
            && r["decision"] == "allow"
            && r["peer"]["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/frontend"
    });
    assert!(allowed, "orders' audit records the frontend allowed");

    // other/client -> orders: refused by orders' inbound policy, and recorded.
    let (code, out, err) = node
        .exec(
            "other",
            "client",
            "app",
            &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:15001/"],
        )
        .await
        .expect("exec in other/client");
    assert!(
        code != 0 && !out.contains("open orders"),
        "other/client reached orders: {out}{err}"
    );
    until("orders' audit to record other/client denied", || {
        let recs = audit_records(&node, "shop", &orders);
        async move {
            recs.iter()
                .any(|r| {
                    r["action"] == "conn.inbound"
                        && r["decision"] == "deny"
                        && r["peer"]["spiffe_id"] == "spiffe://cluster.local/ns/other/sa/client"
                })
                .then_some(())
                .ok_or_else(|| format!("{} records, no deny", recs.len()))
        }
    })
    .await;

    // The Job completes (its sidecar stops after the app; the pod Succeeds).
    wait(&["-n", "shop", "--for=condition=complete", "job/nightly"])
        .unwrap_or_else(|e| panic!("job/nightly complete: {e}\n{}", status()));

    // The audit logs verify.
    for (ns, pod) in [("shop", orders.as_str()), ("shop", frontend.as_str())] {
        let log = node
            .volume(ns, pod, "keyward-socket")
            .expect("socket volume")
            .join("audit.log");
        let out = std::process::Command::new(&keyward)
            .args(["audit", "verify"])
            .arg(&log)
            .output()
            .expect("keyward audit verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.starts_with("OK"),
            "{ns}/{pod} audit: {text}"
        );
    }

    node.stop(Duration::from_secs(10)).await;
    eprintln!(
        "timing: cluster up {t_cluster:?}, shop running {t_up:?}, secrets read {t_secrets:?}, total {:?}",
        t0.elapsed()
    );
}
