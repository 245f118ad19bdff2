//! The sidecar as the injector writes it (issue 15 §1): its `KEYWARD_CONFIG` and environment
//! taken from a real injected pod, run as `keyward sidecar` against a real OpenBao (only the
//! addresses and paths moved to the test's own). It serves `/metrics` on its metrics port and
//! nothing else there (readiness stays on the loopback admin endpoint), `/metrics` holds no
//! secret value and no token, and every line it logs is JSON carrying the pod's identity.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use keyward_broker::config::{ProxyConfig, SidecarConfig};
use keyward_injector::config::InjectorConfig;
use keyward_injector::review::{review, ReviewOutcome};
use serde_json::{json, Value};
use support::broker::get;
use support::{eventually, free_port, TestVault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CANARY: &str = "canary-metrics-5b1e-s3cr3t";

/// The injected sidecar container of a pod in `shop` with one secret and no mesh ports
/// (broker-only: the pods that had no metrics port at all before), through the webhook.
fn injected_sidecar() -> Value {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-7d4f", "namespace": "shop",
            "annotations": {"keyward.io/secret-db": "secret/data/app"}},
        "spec": {"serviceAccountName": "orders",
            "containers": [{"name": "app", "image": "app:1"}]},
    });
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "c0ffee",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": pod,
        },
    }))
    .expect("json");
    let reviewed = review(&body, &InjectorConfig::default()).expect("answered");
    assert_eq!(reviewed.outcome, ReviewOutcome::Injected);
    let answer: Value = serde_json::from_slice(&reviewed.body).expect("JSON");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("JSON patch");
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    patched["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .find(|c| c["name"] == "keyward")
        .cloned()
        .expect("the sidecar")
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[tokio::test]
async fn an_injected_sidecar_serves_only_metrics_on_its_metrics_port_without_secrets_and_logs_json_with_the_pod(
) {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("app", json!({"password": CANARY})).await;
    let token = v.token("shop", "orders");
    let sidecar = injected_sidecar();
    let ports = sidecar["ports"]
        .as_array()
        .expect("the sidecar declares ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "kw-metrics" && p["containerPort"] == 15091),
        "the metrics port, named as the chart's PodMonitor selects it: {ports:?}"
    );

    // The injected environment, with the downward API values a kubelet would fill in.
    let downward = BTreeMap::from([
        ("metadata.name", "orders-7d4f"),
        ("metadata.namespace", "shop"),
        ("metadata.uid", "0b5e3c9a-uid"),
        ("spec.serviceAccountName", "orders"),
    ]);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in sidecar["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name").to_owned();
        let value = match e["value"].as_str() {
            Some(v) => v.to_owned(),
            None => {
                let path = e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .expect("fieldRef");
                downward[path].to_owned()
            }
        };
        env.insert(name, value);
    }
    assert_eq!(
        env["KEYWARD_LOG_FORMAT"], "json",
        "the injector asks for JSON logs"
    );

    // Only what must move to run outside a pod: addresses and paths.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("token"), &token).expect("token");
    let mut config = SidecarConfig::from_yaml(&env["KEYWARD_CONFIG"]).expect("the injected config");
    let metrics_port = free_port();
    let admin_port = free_port();
    config.vault.addr = v.bao.addr();
    config.vault.allow_insecure_http = true;
    config.auth.token_file = p("token");
    config.socket.path = p("broker.sock");
    config.socket.group = None;
    for c in &mut config.socket.containers {
        c.path = p(&format!("c/{}/broker.sock", c.name));
    }
    config.audit.file = p("audit.log");
    let metrics = config
        .metrics
        .as_mut()
        .expect("the injector writes metrics.listen");
    assert_eq!(metrics.listen.to_string(), "0.0.0.0:15091");
    metrics.listen = format!("127.0.0.1:{metrics_port}").parse().expect("addr");
    config.proxy = Some(ProxyConfig {
        admin: format!("127.0.0.1:{admin_port}").parse().expect("addr"),
        ..Default::default()
    });
    env.insert("KEYWARD_CONFIG".into(), config.to_yaml().expect("yaml"));
    env.insert(
        "KEYWARD_SOCKET".into(),
        p("broker.sock").display().to_string(),
    );

    let stderr = std::fs::File::create(p("stderr.log")).expect("stderr");
    let mut child = Command::new(support::keyward_bin())
        .arg("sidecar")
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start keyward sidecar");

    let app_socket = p("c/app/broker.sock");
    eventually(Duration::from_secs(30), "the app's socket", || {
        let there = app_socket.exists();
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the sidecar exited: {}",
            std::fs::read_to_string(p("stderr.log")).unwrap_or_default()
        );
        async move { there.then_some(()) }
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the secret on the app's socket",
        || async {
            let a = get(&app_socket, "/v1/secrets/db/password").await;
            (a.status == 200).then_some(())
        },
    )
    .await;
    let Some((status, body)) = http_get(metrics_port, "/metrics").await else {
        panic!(
            "the metrics port does not answer: {}",
            std::fs::read_to_string(p("stderr.log")).unwrap_or_default()
        );
    };
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("keyward_audit_last_seq"), "{body}");
    assert!(!body.contains(CANARY), "no secret value in /metrics");
    assert!(!body.contains(&token), "no token in /metrics");
    assert!(!body.contains(v.bao.token()), "no Vault token in /metrics");
    for other in ["/ready", "/live", "/"] {
        let (status, _) = http_get(metrics_port, other).await.expect("answer");
        assert_eq!(status, 404, "{other} is not served on the metrics port");
    }
    let (status, ready) = http_get(admin_port, "/ready")
        .await
        .expect("the admin endpoint");
    assert_eq!(
        status, 200,
        "readiness stays on the loopback admin endpoint: {ready}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(p("stderr.log")).expect("log");
    assert!(log.lines().count() >= 3, "{log}");
    assert!(!log.contains(CANARY) && !log.contains(&token));
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(
            v["pod"],
            json!({"namespace": "shop", "name": "orders-7d4f", "uid": "0b5e3c9a-uid"}),
            "{line}"
        );
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// The value of the sample `name{secret="SECRET"}` (or `name` without labels) in `metrics`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<i64> {
    let prefix = format!("{name}{labels} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_end_of_each_secret_and_socket_refusals_at_the_limit_are_in_metrics() {
    use support::pg::Postgres;
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    let mut pg = Postgres::start();
    pg.configure_vault(&v.bao, "6s", "1h").await;
    v.bao.kv_put("app", json!({"password": "kv"})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("token"), v.token("shop", "orders")).expect("token");
    let admin = free_port();
    std::fs::write(
        p("config.yaml"),
        format!(
            "vault: {{addr: \"{}\", allow_insecure_http: true, timeout: 2s}}\n\
             auth: {{token_file: {}, max_backoff: 1s}}\n\
             secrets:\n  - {{name: db, path: database/creds/app}}\n  - {{name: kv, path: secret/data/app}}\n\
             audit: {{file: {}}}\n\
             socket: {{path: {}, max_connections: 2}}\n\
             proxy: {{admin: \"127.0.0.1:{admin}\"}}\n",
            v.bao.addr(),
            p("token").display(),
            p("audit.log").display(),
            p("broker.sock").display(),
        ),
    )
    .expect("config");
    let stderr = std::fs::File::create(p("stderr.log")).expect("stderr");
    let mut child = Command::new(support::keyward_bin())
        .args(["sidecar", "--config"])
        .arg(p("config.yaml"))
        .env("KEYWARD_MEMORY_LIMIT", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start keyward sidecar");
    let log = || std::fs::read_to_string(p("stderr.log")).unwrap_or_default();
    let metrics = || async move {
        http_get(admin, "/metrics")
            .await
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    };
    let socket = p("broker.sock");
    eventually(Duration::from_secs(30), "the db secret served", || {
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "exited: {}",
            log()
        );
        let socket = socket.clone();
        async move {
            if !socket.exists() {
                return None;
            }
            (get(&socket, "/v1/secrets/db/username").await.status == 200).then_some(())
        }
    })
    .await;

    // The lease end, per leased secret; none for a KV secret.
    let body = metrics().await.expect("/metrics");
    let name = "keyward_secret_lease_expiry_timestamp_seconds";
    let ends = sample(&body, name, "{secret=\"db\"}").expect("the db lease's end");
    let now = unix_now();
    assert!(
        ends > now && ends <= now + 8,
        "a 6 s lease ends within 6 s: {ends} vs now {now}\n{body}"
    );
    assert!(sample(&body, name, "{secret=\"kv\"}").is_none(), "{body}");

    // At socket.max_connections (2, no memory derivation), a third client is refused and
    // counted; the two held stay served.
    let refused = "keyward_socket_connections_refused_total";
    assert_eq!(sample(&body, refused, ""), Some(0), "{body}");
    let held = [
        tokio::net::UnixStream::connect(&socket).await.expect("1"),
        tokio::net::UnixStream::connect(&socket).await.expect("2"),
    ];
    eventually(Duration::from_secs(10), "a refusal counted", || async {
        let mut third = tokio::net::UnixStream::connect(&socket).await.ok()?;
        let mut answer = String::new();
        third.read_to_string(&mut answer).await.ok()?;
        assert!(answer.contains("too_many_connections"), "{answer}");
        let body = metrics().await?;
        (sample(&body, refused, "")? >= 1).then_some(())
    })
    .await;
    drop(held);

    // Postgres gone: renewals and re-fetches fail, the lease runs out, and the gauge is left
    // behind time(): the alert's condition (keyward_secret_lease_expiry_timestamp_seconds <
    // time()) holds while the app is refused.
    pg.stop();
    let past = eventually(
        Duration::from_secs(40),
        "the lease past its end",
        || async {
            let body = metrics().await?;
            let ends = sample(&body, name, "{secret=\"db\"}")?;
            (ends < unix_now()).then_some(ends)
        },
    )
    .await;
    assert!(
        past > now,
        "the gauge followed the renewals: {past} vs {now}"
    );
    let a = get(&socket, "/v1/secrets/db/username").await;
    assert_eq!(a.status, 503, "{}", a.body);
    let _ = child.kill();
    let _ = child.wait();
}
