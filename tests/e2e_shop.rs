//! End to end as a user would run it: `keyward inject` on examples/shop, the injected pods run
//! by the e2e pod runner (each in its own network namespace, the sidecar started only from the
//! injected spec), OpenBao and PostgreSQL on a node host. Asserts every step of the demo, plus
//! reads from the cache with OpenBao stopped, lease revocation on SIGTERM, and audit chains.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use keyward_e2e::net::NetMode;
use keyward_e2e::shop::{Shop, Tools};
use serde_json::{json, Value};

fn tools() -> Tools {
    Tools::from_env(
        PathBuf::from(env!("CARGO_BIN_EXE_keyward")),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn json_of(body: &str) -> anyhow::Result<Value> {
    serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_end_to_end() {
    let mut shop = Shop::up(tools(), &|s| eprintln!("== {s}"))
        .await
        .unwrap_or_else(|e| panic!("starting the shop: {e}"));
    let result = scenario(&mut shop).await;
    if let Err(e) = &result {
        shop.cluster.dump_logs();
        panic!("{e:#}");
    }
    shop.down().await;
    let dir = shop.cluster.dir().to_path_buf();
    drop(shop);
    assert!(!dir.exists(), "the run directory is removed");
    let left = keyward_e2e::net::own_namespaces();
    assert!(left.is_empty(), "network namespaces left behind: {left:?}");
}

async fn scenario(shop: &mut Shop) -> anyhow::Result<()> {
    plainest_pods(shop).await?;
    // The sidecar was started from the injected spec alone: the image's entrypoint with the
    // spec's args, as the spec's user, in the pod's own network namespace.
    let cmdline = shop.sidecar_cmdline("shop", "orders")?;
    ensure!(
        cmdline == "keyward sidecar",
        "sidecar command line: {cmdline}"
    );
    let pid = shop
        .cluster
        .pod("shop", "orders")?
        .pid("keyward")
        .context("sidecar pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65532")),
        "the sidecar runs as the spec's runAsUser 65532: {status}"
    );
    // The apps run as their pod's non-root uid 1000, with the injected fsGroup (65532) as a
    // supplementary group: that group is what opens the socket (mode 0660) to them.
    for (ns, pod) in [
        ("shop", "orders"),
        ("shop", "frontend"),
        ("other", "client"),
    ] {
        let app = shop.cluster.pod(ns, pod)?.pid("app").context("app pid")?;
        let status = std::fs::read_to_string(format!("/proc/{app}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        ensure!(
            field("Uid:") == ["1000"; 4] && field("Groups:").contains(&"65532"),
            "{ns}/{pod}'s app runs as uid 1000 with group 65532: {status}"
        );
    }
    if shop.cluster.mode() == NetMode::Namespaces {
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
        ensure!(ours != theirs, "the pod has its own network namespace");
        let ips: std::collections::BTreeSet<_> =
            shop.cluster.pods().iter().map(|p| p.host.ip).collect();
        let pods = shop.cluster.pods().len();
        ensure!(
            pods == 5 && ips.len() == pods,
            "each of the 5 pods has its own address: {ips:?}"
        );
    }

    // Secrets delivered.
    let (code, body) = shop
        .socket_get("shop", "frontend", "/v1/secrets/config")
        .await?;
    ensure!(code == 0, "frontend reads its KV secret: {body}");
    let v = json_of(&body)?;
    ensure!(
        v["data"]["banner"] == "Spring sale: v1" && v["version"] == 1,
        "{v}"
    );
    let (code, user) = shop
        .socket_get("shop", "orders", "/v1/secrets/db/username")
        .await?;
    ensure!(
        code == 0 && user.starts_with("v-"),
        "orders' db username: {user}"
    );
    let (code, body) = shop.socket_get("shop", "orders", "/v1/secrets").await?;
    ensure!(code == 0, "{body}");
    let first_expiry = json_of(&body)?["secrets"][0]["lease_expires_at"]
        .as_str()
        .context("a leased secret")?
        .to_owned();
    let (code, body) = shop
        .socket_get("other", "client", "/v1/secrets/token/token")
        .await?;
    ensure!(
        code == 0 && body == "client-demo-1",
        "client's secret: {body}"
    );
    ensure!(
        shop.vault_roles()? == vec![user.clone()],
        "PostgreSQL holds the orders credential's role"
    );

    // A KV update, to reach the frontend app without a restart (checked below: the frontend's
    // broker re-reads KV every 5s, from its keyward.io/kv-refresh annotation).
    let app_pid = shop.cluster.pod("shop", "frontend")?.pid("app");
    let version = shop
        .kv_put(
            "shop/frontend",
            json!({"banner": "Summer sale: v2", "api_key": "fk-demo-1"}),
        )
        .await?;
    ensure!(version == 2);

    // frontend -> orders over mTLS, through both sidecars, with the database password.
    let page = shop.wait_frontend_page(Duration::from_secs(30)).await?;
    ensure!(
        page.contains("-> orders: 3 open orders (read from PostgreSQL as v-"),
        "frontend reached orders, which read PostgreSQL with its dynamic credential: {page}"
    );
    shop.wait_audit(
        "shop",
        "orders",
        Duration::from_secs(10),
        "orders allowing the frontend",
        |r| {
            r["action"] == "conn.inbound"
                && r["decision"] == "allow"
                && r["peer"]["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/frontend"
        },
    )
    .await?;

    // other/client -> orders: refused, and recorded.
    let (code, out) = shop.client_call().await?;
    ensure!(
        code != 0 && !out.contains("open orders"),
        "other/client must not reach orders: {out}"
    );
    shop.wait_audit(
        "shop",
        "orders",
        Duration::from_secs(10),
        "orders denying other/client",
        |r| {
            r["action"] == "conn.inbound"
                && r["decision"] == "deny"
                && r["peer"]["spiffe_id"] == "spiffe://cluster.local/ns/other/sa/client"
        },
    )
    .await?;

    // The dynamic credential is renewed: same user, later expiry.
    shop.wait_audit(
        "shop",
        "orders",
        Duration::from_secs(30),
        "a lease renewal",
        |r| r["action"] == "vault.lease_renew" && r["decision"] == "ok",
    )
    .await?;
    let (_, body) = shop.socket_get("shop", "orders", "/v1/secrets").await?;
    let expiry = json_of(&body)?["secrets"][0]["lease_expires_at"]
        .as_str()
        .context("lease")?
        .to_owned();
    ensure!(expiry > first_expiry, "renewed: {first_expiry} -> {expiry}");
    let (_, again) = shop
        .socket_get("shop", "orders", "/v1/secrets/db/username")
        .await?;
    ensure!(again == user, "a renewal keeps the credential");

    // SIGTERM on orders: app first, sidecar last; its lease is revoked (the role is gone)
    // and its socket removed.
    let sock = shop.socket_dir("shop", "orders")?.join("broker.sock");
    ensure!(sock.exists());
    let stopped = shop.stop_pod("shop", "orders").await?;
    let names: Vec<&str> = stopped.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(names == ["app", "keyward"], "stop order: {names:?}");
    let sidecar_exit = stopped[1].1.context("sidecar exited")?;
    ensure!(sidecar_exit.success(), "sidecar exit: {sidecar_exit}");
    ensure!(
        shop.vault_roles()?.is_empty(),
        "the PostgreSQL role is dropped"
    );
    ensure!(!sock.exists(), "the socket is removed");
    let recs = shop.audit_records("shop", "orders")?;
    // keyward.io/secret-db-uids: "1000": every read of the credential came from the app's uid.
    let db_reads: Vec<&Value> = recs
        .iter()
        .filter(|r| r["action"] == "secret.read" && r["secret"] == "db")
        .collect();
    ensure!(
        !db_reads.is_empty()
            && db_reads
                .iter()
                .all(|r| r["caller"]["uid"] == 1000 && r["decision"] == "allow"),
        "db reads audited as uid 1000, allowed: {db_reads:?}"
    );
    // Each container has its own PID namespace, so the sidecar sees pid 0: the record names the
    // container (from the socket the read came in on) and holds no pid or process name.
    ensure!(
        db_reads.iter().all(|r| r["caller"]["container"] == "app"
            && r["caller"].get("pid").is_none()
            && r["caller"].get("comm").is_none()),
        "db reads name the app container, without a pid: {db_reads:?}"
    );
    ensure!(
        recs.iter()
            .any(|r| r["action"] == "vault.revoke" && r["decision"] == "ok"),
        "a vault.revoke record"
    );

    // The KV update reaches the running frontend app (its long-poll), no restart.
    keyward_e2e::eventually(
        Duration::from_secs(30),
        "the KV update in the frontend app",
        || {
            let seen = shop
                .cluster
                .pod("shop", "frontend")
                .map(|p| {
                    p.logs("app")
                        .contains("config version 2: banner=Summer sale: v2")
                })
                .unwrap_or(false);
            async move { seen.then_some(()) }
        },
    )
    .await?;
    ensure!(
        shop.cluster.pod("shop", "frontend")?.pid("app") == app_pid
            && shop.cluster.pod_mut("shop", "frontend")?.is_running("app"),
        "the frontend app was not restarted"
    );

    // OpenBao stops: cached secrets are still served.
    shop.stop_bao();
    for _ in 0..3 {
        let (code, banner) = shop
            .socket_get("shop", "frontend", "/v1/secrets/config/banner")
            .await?;
        ensure!(
            code == 0 && banner == "Summer sale: v2",
            "cached read with OpenBao down: {banner}"
        );
        let (code, token) = shop
            .socket_get("other", "client", "/v1/secrets/token/token")
            .await?;
        ensure!(code == 0 && token == "client-demo-1", "{token}");
    }

    // Every pod's audit log verifies (after the pods stop, with all their records).
    shop.cluster.stop_all().await;
    for (ns, pod) in [
        ("shop", "orders"),
        ("shop", "frontend"),
        ("shop", "reports"),
        ("shop", "nightly"),
        ("other", "client"),
    ] {
        let (code, out) = shop.audit(ns, pod, &["verify"])?;
        ensure!(
            code == 0 && out.starts_with("OK"),
            "{ns}/{pod} audit: {out}"
        );
        let socket = shop.socket_dir(ns, pod)?.join("broker.sock");
        ensure!(!socket.exists(), "{ns}/{pod} socket removed");
    }
    Ok(())
}

/// The plainest users: a Deployment that only wants a secret, and a Job. Neither declares a
/// mesh port, so each gets a broker-only sidecar (no certificate, no proxy listener) that must
/// start, serve, and, for the Job, exit after the app with its lease and token revoked.
async fn plainest_pods(shop: &mut Shop) -> anyhow::Result<()> {
    // reports: started (its app ran only after the sidecar's startupProbe passed), reads its
    // secret, and the sidecar's admin endpoint serves readiness and metrics.
    let (code, host) = shop
        .socket_get("shop", "reports", "/v1/secrets/smtp/host")
        .await?;
    ensure!(
        code == 0 && host == "smtp.shop.example",
        "reports secret: {host}"
    );
    let (code, ready, err) = shop
        .exec(
            "shop",
            "reports",
            "app",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:15090/ready",
            ],
        )
        .await?;
    ensure!(code == 0 && ready == "200", "reports /ready: {ready} {err}");
    let (code, metrics, err) = shop
        .exec(
            "shop",
            "reports",
            "app",
            &["curl", "-sS", "http://127.0.0.1:15090/metrics"],
        )
        .await?;
    ensure!(
        code == 0 && metrics.contains("keyward_audit_last_seq"),
        "reports /metrics: {metrics} {err}"
    );
    let (_, identity) = shop.socket_get("shop", "reports", "/v1/identity").await?;
    ensure!(
        identity.contains("no mesh ports"),
        "a broker-only sidecar has no identity: {identity}"
    );
    let recs = shop.audit_records("shop", "reports")?;
    ensure!(
        recs.iter().all(|r| r["action"] != "svid.issue"),
        "no certificate requested for reports"
    );

    // nightly: the Job's app reads its dynamic credential, queries, exits 0; the sidecar then
    // gets SIGTERM, exits 0, and revokes the lease (its PostgreSQL role is dropped).
    let pod = shop.cluster.pod_mut("shop", "nightly")?;
    let statuses = pod.run_to_completion(Duration::from_secs(60)).await?;
    let app_log = pod.logs("app");
    let names: Vec<&str> = statuses.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(names == ["app", "keyward"], "job containers: {names:?}");
    let app_exit = statuses[0].1.context("app exited")?;
    ensure!(app_exit.success(), "job app exit {app_exit}: {app_log}");
    ensure!(
        app_log.contains("nightly: counted 3 orders as v-"),
        "job app output: {app_log}"
    );
    let sidecar_exit = statuses[1].1.context("sidecar exited")?;
    ensure!(sidecar_exit.success(), "job sidecar exit: {sidecar_exit}");
    let roles = shop.vault_roles()?;
    ensure!(
        !roles.iter().any(|r| r.contains("nightly")),
        "the job's PostgreSQL role is dropped with its lease: {roles:?}"
    );
    let recs = shop.audit_records("shop", "nightly")?;
    for action in ["vault.revoke", "vault.revoke_token"] {
        ensure!(
            recs.iter()
                .any(|r| r["action"] == action && r["decision"] == "ok"),
            "the job's audit has {action} ok: {recs:?}"
        );
    }
    Ok(())
}
