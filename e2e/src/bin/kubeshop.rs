//! `kubeshop`: the shop demo on the test cluster (scripts/demo.sh's default): a real
//! control plane, the node agent, `kubectl apply -f examples/shop`, then what a user sees:
//! `kubectl get pods`, the secrets, the mTLS decisions and the audit trail
//! (keyward_e2e::kube_shop; docs/cluster.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use keyward_e2e::kube_shop::KubeShop;
use keyward_e2e::shop::Tools;
use serde_json::Value;

#[derive(Parser)]
#[command(name = "kubeshop", about)]
struct Cli {
    /// The keyward binary (stands in for the keyward image).
    #[arg(long)]
    keyward: PathBuf,
    /// The repository's examples/ directory.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
}

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn show(cmd: &str, out: &str) {
    println!("$ {cmd}");
    for l in out.trim_end().lines() {
        println!("    {l}");
    }
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let tools = Tools::from_env(cli.keyward, cli.examples)?;
    let ks = KubeShop::up(tools, &say).await?;
    let result = tokio::select! {
        r = scenario(&ks) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    say("stopping: the pods (apps first, sidecars last), the control plane, OpenBao, PostgreSQL");
    let cluster_start = ks.cluster_start;
    ks.down(Duration::from_secs(10)).await;
    let left = keyward_e2e::net::own_namespaces();
    if !left.is_empty() {
        bail!("network namespaces left behind: {left:?}");
    }
    println!(
        "done in {:.0}s (the control plane started in {:.0}s); nothing left running",
        started.elapsed().as_secs_f64(),
        cluster_start.as_secs_f64()
    );
    result
}

async fn scenario(ks: &KubeShop) -> anyhow::Result<()> {
    say("what kubectl shows");
    show(
        "kubectl get pods -A -o wide",
        &ks.kubectl(&["get", "pods", "-A", "-o", "wide"])?,
    );
    let orders = ks.pod_name("shop", "orders")?;
    let frontend = ks.pod_name("shop", "frontend")?;
    let reports = ks.pod_name("shop", "reports")?;
    let stored = ks.pod("shop", &orders)?;
    println!(
        "  pod shop/{orders}: keyward.io/status={}, native sidecar {} (image {}), admitted by PodSecurity restricted",
        stored["metadata"]["annotations"]["keyward.io/status"],
        stored["spec"]["initContainers"][0]["name"],
        stored["spec"]["initContainers"][0]["image"].as_str().unwrap_or("")
    );

    say("secrets delivered over each pod's socket (projected TokenRequest token -> OpenBao jwt login)");
    let config = KubeShop::until("the frontend's secret", || {
        ks.socket_get("shop", &frontend, "/v1/secrets/config")
    })
    .await?;
    show("kubectl exec -n shop deploy/frontend -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/config", &config);
    let user = KubeShop::until("orders' database user", || {
        ks.socket_get("shop", &orders, "/v1/secrets/db/username")
    })
    .await?;
    show("kubectl exec -n shop deploy/orders -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/db/username", &user);
    let host = KubeShop::until("reports' SMTP host", || {
        ks.socket_get("shop", &reports, "/v1/secrets/smtp/host")
    })
    .await?;
    show("kubectl exec -n shop deploy/reports -- curl --unix-socket $KEYWARD_SOCKET http://keyward/v1/secrets/smtp/host", &host);
    ks.wait(&["-n", "shop", "--for=condition=complete", "job/nightly"])
        .context("job/nightly")?;
    show(
        "kubectl get job -n shop nightly",
        &ks.kubectl(&["get", "job", "-n", "shop", "nightly"])?,
    );

    say("mTLS: frontend -> orders allowed, other/client -> orders denied");
    let page = ks.frontend_page().await?;
    show(
        "kubectl exec -n shop deploy/frontend -- curl http://127.0.0.1:8080/",
        &page,
    );
    let (code, out) = ks
        .curl("other", "client", "http://127.0.0.1:15001/")
        .await?;
    show(
        "kubectl exec -n other client -- curl http://127.0.0.1:15001/",
        &format!("{out}(exit {code})"),
    );
    if code == 0 && out.contains("open orders") {
        bail!("other/client reached orders");
    }
    let deny = ks
        .wait_audit("shop", &orders, "orders denying other/client", |r| {
            r["action"] == "conn.inbound" && r["decision"] == "deny"
        })
        .await?;
    let allow = ks
        .wait_audit("shop", &orders, "orders allowing the frontend", |r| {
            r["action"] == "conn.inbound" && r["decision"] == "allow"
        })
        .await?;
    println!(
        "  orders' decisions:\n    {}\n    {}",
        brief(&allow),
        brief(&deny)
    );

    say("the audit trail");
    let (_, out) = ks.audit("shop", &orders, &["query", "--decision", "deny"])?;
    show(
        &format!("keyward audit query --decision deny <shop/{orders} audit.log>"),
        &out,
    );
    for (ns, pod) in [
        ("shop", orders.as_str()),
        ("shop", frontend.as_str()),
        ("other", "client"),
    ] {
        let (ok, out) = ks.audit(ns, pod, &["verify"])?;
        show(
            &format!("keyward audit verify <{ns}/{pod} audit.log>"),
            &out,
        );
        if !ok {
            bail!("{ns}/{pod}'s audit log does not verify");
        }
    }
    Ok(())
}
