//! Admission through the real kube-apiserver (issue 14 §3), the behaviours
//! tests/cluster_webhook.rs and tests/cluster_node.rs do not cover:
//!
//! - pods that must stay unchanged (an unlabelled namespace, the `keyward.io/inject: "false"`
//!   annotation, the `keyward.io/inject=false` label) are stored byte for byte as the API server
//!   stores them with no webhook registered (a server-side dry-run taken before);
//! - a bad annotation value is refused by `kubectl apply` (non-zero exit) with the injector's own
//!   message, and nothing is created;
//! - `kubectl apply --dry-run=server` returns the injected pod and creates nothing (the chart's
//!   webhook declares `sideEffects: None`, so the API server calls it for dry-runs);
//! - the injector stopped: the chart's default `failurePolicy: Fail` refuses pods naming the
//!   webhook (label opt-outs still pass: the webhook is not even called), the chart rendered with
//!   `webhook.failurePolicy=Ignore` admits them unmutated;
//! - deleting an injected pod run by the node agent revokes its dynamic PostgreSQL lease (the
//!   role disappears from pg_roles) and its Vault token.
//!
//! Each test starts its own control plane (docs/cluster.md).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keyward_e2e::node::{Node, NodeConfig};
use keyward_test_cluster::{restricted_pod as pod, Cluster, Injector, ISSUER, WEBHOOK};
use serde_json::{json, Value};

/// Safety net for conditions on a loaded two-core machine; never slept for.
const WAIT: Duration = Duration::from_secs(120);
const NODE: &str = "keyward-node";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start_cluster() -> Cluster {
    Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
}

fn start_injector() -> Injector {
    Injector::start(
        Path::new(env!("CARGO_BIN_EXE_keyward")),
        &repo().join("examples/injector-config.yaml"),
    )
    .unwrap_or_else(|e| panic!("starting keyward injector: {e}"))
}

fn chart_webhook(cluster: &Cluster, sets: &[&str], injector: &Injector) -> Value {
    let mwc = cluster
        .chart_webhook(sets, &injector.url(), &injector.ca_pem)
        .unwrap_or_else(|e| panic!("the chart's webhook: {e}"));
    assert_eq!(mwc["webhooks"][0]["name"], WEBHOOK, "{mwc:#}");
    mwc
}

fn kubectl_out(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    cluster
        .kubectl_output(args, stdin)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kubectl apply --dry-run=server -o json` of a manifest: the object as the API server would
/// store it (admission included), or kubectl's output when refused.
fn dry_run(cluster: &Cluster, manifest: &str) -> Result<Value, String> {
    let out = kubectl_out(
        cluster,
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(manifest),
    );
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("kubectl printed JSON"))
    } else {
        Err(stderr(&out))
    }
}

/// What admission decides about a pod: its labels, annotations and spec, with the random
/// suffix of the ServiceAccount plugin's `kube-api-access-XXXXX` volume blanked (it differs
/// between any two requests, webhook or not).
fn admitted(pod: &Value) -> String {
    fn blank(v: &mut Value) {
        match v {
            Value::String(s) if s.starts_with("kube-api-access-") => {
                *s = "kube-api-access-?".to_owned()
            }
            Value::Array(a) => a.iter_mut().for_each(blank),
            Value::Object(o) => o.values_mut().for_each(blank),
            _ => {}
        }
    }
    let mut v = json!({
        "labels": pod["metadata"]["labels"],
        "annotations": pod["metadata"]["annotations"],
        "spec": pod["spec"],
    });
    blank(&mut v);
    serde_json::to_string_pretty(&v).expect("JSON")
}

fn has_sidecar(pod: &Value) -> bool {
    pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "keyward"))
}

fn get_pod(cluster: &Cluster, ns: &str, name: &str) -> Value {
    cluster
        .get_json(&["-n", ns, "pod", name])
        .unwrap_or_else(|e| panic!("get pod {ns}/{name}: {e}"))
}

#[track_caller]
fn assert_no_pod(cluster: &Cluster, ns: &str, name: &str) {
    let err = cluster
        .kubectl(&["-n", ns, "get", "pod", name])
        .expect_err("the pod was not created");
    assert!(err.to_string().contains("NotFound"), "{err}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn unchanged_pods_refusals_dry_run_and_failure_policies_through_the_api_server() {
    let t0 = Instant::now();
    let cluster = start_cluster();
    let t_cluster = t0.elapsed();
    let mut injector = start_injector();
    cluster
        .workload_namespace("kw-in", true, &["orders"])
        .expect("labelled namespace");
    cluster
        .workload_namespace("kw-plain", false, &["orders"])
        .expect("unlabelled namespace");

    // The pods that must stay unchanged, as the API server admits them with no webhook at all.
    let secret = ("keyward.io/secret-db", "secret/data/shop/db");
    let plain = pod("kw-plain", "plain", &[secret], &[]);
    // Opted out by annotation: the webhook is called, the injector leaves the pod alone and
    // checks no other keyward.io annotation (docs/annotations.md), not even a misspelt one.
    let opt_annotation = pod(
        "kw-in",
        "opt-annotation",
        &[
            ("keyward.io/inject", "false"),
            secret,
            ("keyward.io/secrets-typo", "x"),
        ],
        &[],
    );
    // Opted out by label: the chart's objectSelector keeps the webhook from being called.
    let opt_label = |name: &str| pod("kw-in", name, &[secret], &[("keyward.io/inject", "false")]);
    let unserved = pod("kw-in", "unserved", &[secret], &[]);
    let baseline = |manifest: &str| {
        admitted(&dry_run(&cluster, manifest).unwrap_or_else(|e| panic!("dry-run: {e}")))
    };
    let base_plain = baseline(&plain);
    let base_opt_annotation = baseline(&opt_annotation);
    let base_opt_label = baseline(&opt_label("opt-label"));
    let base_opt_label_2 = baseline(&opt_label("opt-label-2"));
    let base_unserved = baseline(&unserved);

    // The chart's webhook as rendered by default: failurePolicy Fail, sideEffects None.
    let mwc = chart_webhook(&cluster, &[], &injector);
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Fail", "{mwc:#}");
    assert_eq!(mwc["webhooks"][0]["sideEffects"], "None", "{mwc:#}");
    cluster
        .apply(&mwc.to_string())
        .expect("apply the MutatingWebhookConfiguration");

    // 3. kubectl apply --dry-run=server: the API server calls the webhook for a dry-run (the
    // chart's `sideEffects: None`; admissionregistration/v1 accepts only None and
    // NoneOnDryRun, so a webhook with side effects cannot even be registered), the injected
    // pod comes back, nothing is stored. Polled until the API server has loaded the new webhook
    // configuration.
    let dry_manifest = pod("kw-in", "dry", &[secret], &[]);
    let dry = cluster
        .wait_for("a server-side dry-run injected", WAIT, || {
            dry_run(&cluster, &dry_manifest).ok().filter(has_sidecar)
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}\ninjector log:\n{}",
                dry_run(&cluster, &dry_manifest),
                injector.log()
            )
        });
    assert_eq!(
        dry["metadata"]["annotations"]["keyward.io/status"], "injected",
        "{dry:#}"
    );
    assert!(
        dry["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["name"] == "keyward-token")),
        "{dry:#}"
    );
    assert_no_pod(&cluster, "kw-in", "dry");
    let events = cluster
        .get_json(&["-n", "kw-in", "events"])
        .expect("events");
    assert!(
        !events["items"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["involvedObject"]["name"] == "dry")),
        "a dry-run recorded events: {events:#}"
    );

    // 1. Unlabelled namespace, annotation opt-out, label opt-out: stored exactly as without the
    // webhook.
    for (manifest, ns, name, base) in [
        (&plain, "kw-plain", "plain", &base_plain),
        (
            &opt_annotation,
            "kw-in",
            "opt-annotation",
            &base_opt_annotation,
        ),
        (
            &opt_label("opt-label"),
            "kw-in",
            "opt-label",
            &base_opt_label,
        ),
    ] {
        cluster
            .apply(manifest)
            .unwrap_or_else(|e| panic!("apply {ns}/{name}: {e}\n{}", injector.log()));
        let stored = admitted(&get_pod(&cluster, ns, name));
        assert_eq!(
            &stored, base,
            "{ns}/{name} changed by admission with the webhook registered"
        );
    }
    // ...while the webhook is live: the same pod without the opt-out is injected.
    cluster
        .apply(&pod("kw-in", "injected", &[secret], &[]))
        .expect("apply kw-in/injected");
    assert!(has_sidecar(&get_pod(&cluster, "kw-in", "injected")));

    // 2. A bad annotation value: kubectl apply exits non-zero with the injector's message
    // (the same text `keyward inject` prints offline), and nothing is created.
    let bad = pod(
        "kw-in",
        "bad",
        &[secret, ("keyward.io/kv-refresh", "forever")],
        &[],
    );
    let out = kubectl_out(&cluster, &["apply", "-f", "-"], Some(&bad));
    let msg = stderr(&out);
    assert!(!out.status.success(), "kubectl apply accepted it: {msg}");
    assert!(
        msg.contains(&format!(
            r#"admission webhook "{WEBHOOK}" denied the request: keyward: "#
        )) && msg.contains("keyward.io/kv-refresh"),
        "{msg}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.yaml"), &bad).expect("write");
    let offline = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["inject", "--config"])
        .arg(repo().join("examples/injector-config.yaml"))
        .arg("-f")
        .arg(dir.path().join("bad.yaml"))
        .output()
        .expect("keyward inject");
    assert!(!offline.status.success());
    let offline = stderr(&offline);
    let reason = msg
        .split_once("keyward: ")
        .map(|(_, r)| r.trim())
        .unwrap_or_default();
    assert!(
        !reason.is_empty() && offline.contains(reason),
        "the API server relays the injector's own message\napi server: {msg}\noffline: {offline}"
    );
    assert_no_pod(&cluster, "kw-in", "bad");

    // 4a. The injector stopped, failurePolicy Fail (the chart's default): refused, the API
    // server's message naming the webhook; nothing created.
    injector.stop();
    let out = kubectl_out(&cluster, &["apply", "-f", "-"], Some(&unserved));
    let msg = stderr(&out);
    assert!(
        !out.status.success(),
        "failurePolicy Fail, injector stopped, yet the pod was admitted"
    );
    assert!(
        msg.contains(&format!(r#"failed calling webhook "{WEBHOOK}""#))
            && msg.contains(&injector.url()),
        "{msg}"
    );
    assert_no_pod(&cluster, "kw-in", "unserved");
    // A label opt-out never reaches the webhook, so the stopped injector does not matter.
    cluster
        .apply(&opt_label("opt-label-2"))
        .expect("a label opt-out is admitted with the injector stopped");
    assert_eq!(
        admitted(&get_pod(&cluster, "kw-in", "opt-label-2")),
        base_opt_label_2
    );

    // 4b. The chart rendered with webhook.failurePolicy=Ignore: admitted, unmutated.
    let mwc = chart_webhook(&cluster, &["webhook.failurePolicy=Ignore"], &injector);
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Ignore", "{mwc:#}");
    cluster
        .apply(&mwc.to_string())
        .expect("apply the MutatingWebhookConfiguration (Ignore)");
    // The API server picks the change up asynchronously: wait until a dry-run passes.
    cluster
        .wait_for("the Ignore policy in force", WAIT, || {
            dry_run(&cluster, &unserved).ok()
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", dry_run(&cluster, &unserved)));
    cluster
        .apply(&unserved)
        .expect("failurePolicy Ignore admits the pod");
    let stored = get_pod(&cluster, "kw-in", "unserved");
    assert!(!has_sidecar(&stored), "{stored:#}");
    assert_eq!(admitted(&stored), base_unserved, "admitted unmutated");

    let t_checks = t0.elapsed();
    drop(cluster);
    eprintln!(
        "timing: cluster up {t_cluster:?}, checks done {t_checks:?}, total with stop {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Deleting a pod revokes its leases: a dynamic PostgreSQL credential (OpenBao's database
// engine, real PostgreSQL) read by an injected pod on the node agent.

fn kubectl_async(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    tokio::task::block_in_place(|| cluster.kubectl(args).map_err(|e| e.to_string()))
}

async fn start_node(cluster: &Cluster, keyward: &Path) -> Node {
    let creds = tokio::task::block_in_place(|| cluster.node_credentials(NODE))
        .unwrap_or_else(|e| panic!("node credentials: {e}"));
    let mut cfg = NodeConfig::new(NODE, &creds.server, &creds.ca, &creds.cert, &creds.key);
    cfg.images = vec![("ghcr.io/keyward/keyward".to_owned(), keyward.to_owned())];
    cfg.node_names = vec!["vault.vault.svc".to_owned()];
    let node = Node::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("starting the node agent: {e}"));
    kubectl_async(
        cluster,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{NODE}"),
            "--timeout=60s",
        ],
    )
    .unwrap_or_else(|e| panic!("the Node is Ready: {e}"));
    node
}

/// jwt auth with the API server's JWKS (docs/vault-setup.md), a role for kw-db/orders whose
/// policy reads the database credential and manages its own leases.
async fn configure_bao(bao: &support::bao::Bao, cluster: &Cluster) {
    tokio::task::block_in_place(|| cluster.allow_anonymous_issuer_discovery())
        .expect("bind system:service-account-issuer-discovery to system:unauthenticated");
    let ca = cluster.ca_pem().expect("CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    support::eventually(WAIT, "the JWKS readable anonymously", || {
        let req = client.get(cluster.jwks_url()).send();
        async move { req.await.ok().filter(|r| r.status() == 200).map(drop) }
    })
    .await;
    bao.api("POST", "sys/auth/jwt", Some(json!({"type": "jwt"})))
        .await;
    bao.api(
        "POST",
        "auth/jwt/config",
        Some(json!({"jwks_url": cluster.jwks_url(), "jwks_ca_pem": ca, "bound_issuer": ISSUER})),
    )
    .await;
    bao.policy(
        "orders-db",
        r#"path "database/creds/app" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }"#,
    )
    .await;
    support::jwt::role(
        bao,
        "orders",
        "kw-db",
        "orders",
        "15m",
        "1h",
        &["orders-db"],
    )
    .await;
}

const DB_POD: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: orders, namespace: kw-db}
---
apiVersion: v1
kind: Pod
metadata:
  name: orders
  namespace: kw-db
  annotations:
    keyward.io/secret-db: database/creds/app
spec:
  serviceAccountName: orders
  terminationGracePeriodSeconds: 10
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: app
      image: example.invalid/shop/orders:1
      command:
        - sh
        - -c
        - |
          trap 'exit 0' TERM
          get() { curl -sf --unix-socket "$KEYWARD_SOCKET" "http://keyward/v1/secrets/db/$1"; }
          until u=$(get username) && p=$(get password); do sleep 0.5; done
          echo "username=$u password-length=${#p}"
          while :; do sleep 0.2; done
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_injected_pod_revokes_its_database_lease_and_token() {
    let t0 = Instant::now();
    let bao = support::bao::Bao::start();
    let pg = support::pg::Postgres::start();
    pg.configure_vault(&bao, "1h", "2h").await;
    let cluster = start_cluster();
    let t_cluster = t0.elapsed();
    let keyward = PathBuf::from(env!("CARGO_BIN_EXE_keyward"));
    let node = start_node(&cluster, &keyward).await;
    // Pods reach OpenBao as vault.vault.svc:8200 (examples/injector-config.yaml); OpenBao
    // reaches PostgreSQL on loopback.
    let _vault =
        keyward_e2e::net::Expose::start(&node.host, 8200, ([127, 0, 0, 1], bao.port()).into())
            .await
            .unwrap_or_else(|e| panic!("exposing OpenBao to the pods: {e}"));
    configure_bao(&bao, &cluster).await;
    let injector = tokio::task::block_in_place(start_injector);
    let mwc = tokio::task::block_in_place(|| chart_webhook(&cluster, &[], &injector));
    tokio::task::block_in_place(|| {
        cluster.apply(&mwc.to_string())?;
        cluster.workload_namespace("kw-db", true, &[])?;
        cluster.apply(DB_POD)
    })
    .unwrap_or_else(|e| panic!("kubectl apply: {e}\ninjector log:\n{}", injector.log()));
    let stored = tokio::task::block_in_place(|| get_pod(&cluster, "kw-db", "orders"));
    assert!(has_sidecar(&stored), "{stored:#}");

    // The app reads the credential the sidecar leased; the role exists in PostgreSQL.
    let line = support::eventually(WAIT, "the app to print its database user", || {
        let log = node.logs("kw-db", "orders", "app");
        async move {
            log.lines()
                .find(|l| l.starts_with("username="))
                .map(str::to_owned)
        }
    })
    .await;
    let t_read = t0.elapsed();
    let (user, len) = line
        .strip_prefix("username=")
        .and_then(|r| r.split_once(" password-length="))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(user.starts_with("v-"), "{line}");
    assert!(len.parse::<usize>().is_ok_and(|n| n >= 8), "{line}");
    let user = user.to_owned();
    assert_eq!(pg.vault_roles(), vec![user.clone()]);
    let leases = support::live_leases(&bao, "database/creds/app/").await;
    assert_eq!(leases.len(), 1, "the sidecar's one lease: {leases:?}");
    let tokens = support::live_tokens(&bao, "auth/jwt/login").await;
    assert_eq!(tokens.len(), 1, "the sidecar's one login: {tokens:?}");
    let pids = node.pids("kw-db", "orders");
    assert_eq!(pids.len(), 2, "{pids:?}");

    // kubectl delete pod: the agent sends SIGTERM to the app, then to the sidecar, which
    // revokes its lease and its token before it exits.
    let del = Instant::now();
    kubectl_async(
        &cluster,
        &["-n", "kw-db", "delete", "pod", "orders", "--timeout=60s"],
    )
    .expect("kubectl delete pod orders");
    let deleted_in = del.elapsed();
    let sidecar_log = node.logs("kw-db", "orders", "keyward");
    let revoked = support::eventually(Duration::from_secs(30), "the lease revoked", || {
        let bao = &bao;
        let lease = leases[0].clone();
        async move {
            let (status, body) = bao
                .api_status("PUT", "sys/leases/lookup", Some(json!({"lease_id": lease})))
                .await;
            (status != 200).then_some((status, body))
        }
    })
    .await;
    assert_eq!(
        revoked.0, 400,
        "lease lookup after the deletion: {revoked:?}"
    );
    assert!(
        support::live_leases(&bao, "database/creds/app/")
            .await
            .is_empty(),
        "\n{sidecar_log}"
    );
    assert!(
        !pg.vault_roles().contains(&user),
        "the PostgreSQL role {user} survived the pod's deletion\n{sidecar_log}"
    );
    assert!(
        !support::token_alive(&bao, &tokens[0]).await,
        "the sidecar's Vault token survived the pod's deletion\n{sidecar_log}"
    );
    let t_revoked = del.elapsed();
    for (name, pid) in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))),
            "container {name} (pid {pid}) still runs"
        );
    }
    support::assert_no_panic("keyward sidecar", &sidecar_log);
    node.stop(Duration::from_secs(5)).await;
    eprintln!(
        "timing: cluster up {t_cluster:?}, secret read {t_read:?}, kubectl delete {deleted_in:?}, revoked (checked) {t_revoked:?} after it, total {:?}",
        t0.elapsed()
    );
}
