//! `podrun`: runs the pods `keyward inject` writes, each in its own network namespace.
//!
//! `podrun shop` runs the examples/ shop scenario and narrates it (scripts/demo.sh);
//! `podrun run -f injected.yaml` starts the pods of any injected manifest and keeps them
//! running until Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use keyward_e2e::cluster::Cluster;
use keyward_e2e::manifest::Manifests;
use keyward_e2e::shop::{Shop, Tools, KEYWARD_IMAGE};
use serde_json::{json, Value};
use std::str::FromStr;

#[derive(Parser)]
#[command(name = "podrun", about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The shop demo: OpenBao, PostgreSQL, `keyward inject` on examples/shop, the pods.
    Shop {
        /// The keyward binary (stands in for the sidecar image).
        #[arg(long)]
        keyward: PathBuf,
        /// The repository's examples/ directory.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
    },
    /// Runs the pods of an injected manifest until interrupted.
    Run {
        /// The keyward binary (stands in for the sidecar image).
        #[arg(long)]
        keyward: PathBuf,
        /// Injected manifest (output of `keyward inject`).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Names that resolve to the node host in the pods' /etc/hosts.
        #[arg(long = "node-name")]
        node_names: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Shop { keyward, examples } => shop(keyward, examples).await,
        Cmd::Run {
            keyward,
            file,
            node_names,
        } => {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let manifests = Manifests::parse(&yaml)?;
            let mut cluster = Cluster::new(&[(KEYWARD_IMAGE.to_owned(), keyward)])?;
            let names: Vec<&str> = node_names.iter().map(String::as_str).collect();
            cluster.apply(&manifests, &names).await?;
            for p in cluster.pods() {
                println!(
                    "{}/{}\t{}\t{}",
                    p.def.namespace,
                    p.def.name,
                    p.host.ip,
                    p.dir.display()
                );
            }
            println!("running; Ctrl-C stops the pods");
            tokio::signal::ctrl_c().await?;
            cluster.stop_all().await;
            Ok(())
        }
    }
}

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn show(cmd: &str, out: &str) {
    println!("$ {cmd}");
    for l in out.trim_end().lines() {
        println!("  {l}");
    }
}

async fn shop(keyward: PathBuf, examples: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let tools = Tools::from_env(keyward, examples)?;
    let mut shop = Shop::up(tools, &|s| say(s)).await?;
    // Ctrl-C ends the scenario early but still cleans up.
    let result = tokio::select! {
        r = scenario(&mut shop) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if result.is_err() {
        shop.cluster.dump_logs();
    }
    say("stopping: app containers first, sidecars last; then OpenBao, PostgreSQL, namespaces");
    shop.down().await;
    let dir = shop.cluster.dir().to_path_buf();
    drop(shop);
    let namespaces = keyward_e2e::net::own_namespaces();
    if !namespaces.is_empty() || dir.exists() {
        bail!(
            "left behind: namespaces {namespaces:?}, directory {} exists: {}",
            dir.display(),
            dir.exists()
        );
    }
    println!(
        "done in {:.0}s: every pod stopped, OpenBao and PostgreSQL stopped, network namespaces and {} removed",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    result
}

fn records(shop: &Shop, ns: &str, pod: &str, action: &str) -> Vec<Value> {
    shop.audit_records(ns, pod)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["action"] == action)
        .collect()
}

fn brief(r: &Value) -> String {
    format!(
        "{} {} {} peer={} reason={}",
        r["time"].as_str().unwrap_or(""),
        r["action"].as_str().unwrap_or(""),
        r["decision"].as_str().unwrap_or(""),
        r["peer"]["spiffe_id"].as_str().unwrap_or("-"),
        r["reason"].as_str().unwrap_or("-"),
    )
}

async fn scenario(shop: &mut Shop) -> anyhow::Result<()> {
    for p in shop.cluster.pods() {
        println!("  pod {}/{} at {}", p.def.namespace, p.def.name, p.host.ip);
    }
    println!("  the orders sidecar, started from the injected spec (initContainer keyward, args, KEYWARD_CONFIG env):");
    println!("    {}", shop.sidecar_cmdline("shop", "orders")?);
    if let Some(pid) = shop.cluster.pod("shop", "orders")?.pid("keyward") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        for l in status.lines().filter(|l| {
            l.starts_with("Uid:")
                || l.starts_with("Groups:")
                || l.starts_with("NoNewPrivs:")
                || l.starts_with("CapEff:")
        }) {
            println!("    {l}");
        }
    }

    say("secrets delivered over each pod's socket");
    let (code, out) = shop
        .socket_get("shop", "frontend", "/v1/secrets/config")
        .await?;
    show("kubectl exec -n shop deploy/frontend -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/config", &out);
    if code != 0 {
        bail!("frontend could not read its secret");
    }
    let (code, out) = shop.socket_get("shop", "orders", "/v1/secrets").await?;
    show("kubectl exec -n shop deploy/orders -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets", &out);
    if code != 0 {
        bail!("orders could not list its secrets");
    }
    let (_, user) = shop
        .socket_get("shop", "orders", "/v1/secrets/db/username")
        .await?;
    show("kubectl exec -n shop deploy/orders -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/db/username", &user);
    let first_lease = Value::from_str(&out)
        .ok()
        .and_then(|v| {
            v["secrets"][0]["lease_expires_at"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();

    say("the plainest pods: reports only wants a secret, nightly is a Job (broker-only sidecars: no certificate, no proxy listener)");
    let (_, out) = shop
        .socket_get("shop", "reports", "/v1/secrets/smtp/host")
        .await?;
    show("kubectl exec -n shop deploy/reports -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/smtp/host", &out);
    let job = shop.cluster.pod_mut("shop", "nightly")?;
    let statuses = job.run_to_completion(Duration::from_secs(60)).await?;
    let log = job.logs("app");
    println!("$ kubectl logs -n shop job/nightly\n    {}", log.trim());
    for (name, status) in &statuses {
        println!(
            "    container {name}: {}",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "still running".into())
        );
    }
    if !statuses.iter().all(|(_, s)| s.is_some_and(|s| s.success())) {
        bail!("the nightly Job did not complete");
    }
    println!("    (the Job completed: the sidecar revoked its database lease and Vault token on SIGTERM)");

    say("a KV update in OpenBao (the frontend's app follows it with a long-poll, no restart)");
    let app_pid = shop.cluster.pod("shop", "frontend")?.pid("app");
    let v = shop
        .kv_put(
            "shop/frontend",
            json!({"banner": "Summer sale: v2", "api_key": "fk-demo-1"}),
        )
        .await?;
    println!("$ bao kv put secret/shop/frontend banner='Summer sale: v2' ...   -> version {v}");
    let kv_put_at = Instant::now();

    say("frontend -> orders over mTLS (frontend's outbound listener -> orders' inbound, allow list: frontend)");
    let out = shop.wait_frontend_page(Duration::from_secs(30)).await?;
    show(
        "kubectl exec -n shop deploy/frontend -- curl http://127.0.0.1:8080/",
        &out,
    );
    for r in records(shop, "shop", "orders", "conn.inbound")
        .iter()
        .take(1)
    {
        println!("  orders audit: {}", brief(r));
    }

    say("other/client -> orders: a valid identity, but not on orders' allow list");
    let (code, out) = shop.client_call().await?;
    show(
        "kubectl exec -n other client -- curl http://127.0.0.1:15001/",
        &format!("{out}(curl exit {code})"),
    );
    let deny = shop
        .wait_audit(
            "shop",
            "orders",
            Duration::from_secs(10),
            "the deny record",
            |r| r["action"] == "conn.inbound" && r["decision"] == "deny",
        )
        .await?;
    println!("  orders audit: {}", brief(&deny));

    say(&format!(
        "the dynamic database credential is renewed (lease TTL {})",
        keyward_e2e::shop::DB_TTL
    ));
    let renew = shop
        .wait_audit(
            "shop",
            "orders",
            Duration::from_secs(30),
            "a lease renewal",
            |r| r["action"] == "vault.lease_renew" && r["decision"] == "ok",
        )
        .await?;
    println!("  orders audit: {}", brief(&renew));
    let (_, out) = shop.socket_get("shop", "orders", "/v1/secrets").await?;
    let now_lease = Value::from_str(&out)
        .ok()
        .and_then(|v| {
            v["secrets"][0]["lease_expires_at"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    println!("  lease_expires_at: {first_lease} -> {now_lease} (same username, same password)");

    say("waiting for the KV update to reach the frontend app (its broker re-reads KV every 5s: keyward.io/kv-refresh)");
    keyward_e2e::eventually(
        Duration::from_secs(30),
        "the KV update in the frontend app",
        || {
            let seen = shop
                .cluster
                .pod("shop", "frontend")
                .map(|p| p.logs("app").contains("Summer sale: v2"))
                .unwrap_or(false);
            async move { seen.then_some(()) }
        },
    )
    .await?;
    println!(
        "  after {:.0}s; the frontend app's log (container pid {}, never restarted):",
        kv_put_at.elapsed().as_secs_f64(),
        app_pid.unwrap_or_default()
    );
    for l in shop.cluster.pod("shop", "frontend")?.logs("app").lines() {
        println!("    {l}");
    }
    let (_, out) = shop.frontend_page().await?;
    show(
        "kubectl exec -n shop deploy/frontend -- curl http://127.0.0.1:8080/",
        &out,
    );

    say("kubectl delete pod orders: SIGTERM, app first, then the sidecar revokes its leases");
    let roles = shop.vault_roles()?;
    println!("  PostgreSQL roles before: {roles:?}");
    let sock = shop.socket_dir("shop", "orders")?.join("broker.sock");
    for (c, st) in shop.stop_pod("shop", "orders").await? {
        println!(
            "  container {c}: {}",
            st.map(|s| s.to_string()).unwrap_or("still running".into())
        );
    }
    println!("  PostgreSQL roles after:  {:?}", shop.vault_roles()?);
    println!("  socket {} exists: {}", sock.display(), sock.exists());

    say("OpenBao stopped: cached secrets keep being served");
    shop.stop_bao();
    let (code, out) = shop
        .socket_get("shop", "frontend", "/v1/secrets/config/banner")
        .await?;
    show("kubectl exec -n shop deploy/frontend -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/config/banner", &format!("{out}  (curl exit {code})"));

    say("what the security team sees: keyward audit query (orders)");
    let (_, out) = shop.audit("shop", "orders", &["query"])?;
    println!("{out}");
    say("keyward audit query --decision deny (orders)");
    let (_, out) = shop.audit("shop", "orders", &["query", "--decision", "deny"])?;
    println!("{out}");
    say("keyward audit verify, every pod");
    for (ns, pod) in [
        ("shop", "orders"),
        ("shop", "frontend"),
        ("shop", "reports"),
        ("shop", "nightly"),
        ("other", "client"),
    ] {
        let (code, out) = shop.audit(ns, pod, &["verify"])?;
        println!("  {ns}/{pod}: {}", out.trim());
        if code != 0 {
            bail!("audit log of {ns}/{pod} does not verify");
        }
    }
    Ok(())
}
