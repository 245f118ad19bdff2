//! keyward installed the way a platform team installs it (issue 14 §3): `helm install
//! charts/keyward` with its default values on the real kube-apiserver; the chart's Deployment
//! runs on the node agent (the image `ghcr.io/keyward/keyward` maps to the `keyward` binary of
//! this checkout: the agent's stand-in for a container runtime); the injector provisions its
//! certificate and the webhook's caBundle itself (`tls.mode: injector`, with its projected
//! TokenRequest token and `kubernetes.default.svc`); and the API server calls it through the
//! chart's MutatingWebhookConfiguration by its Service: endpoint routing to the pod's address,
//! carried into the node's network by the node agent's egress tunnel (docs/cluster.md).
//!
//! No `keyward injector` process runs on loopback here: a pod in a labelled namespace is
//! injected only if the chart-installed pods serve the webhook.

use std::time::{Duration, Instant};

use keyward_e2e::node::{Node, NodeConfig};
use keyward_test_cluster::{Cluster, WEBHOOK};
use serde_json::Value;

const NODE: &str = "keyward-node";
const NS: &str = "keyward-system";
const NAME: &str = "kw-keyward-injector";
/// Safety net for conditions on a loaded two-core machine; never slept for.
const WAIT: Duration = Duration::from_secs(150);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A pod PodSecurity `restricted` admits; pinned to a node that does not exist, so it is only
/// admitted and stored (what this test checks), never run.
fn pod(name: &str, annotation: &str) -> String {
    keyward_test_cluster::restricted_pod(
        "kw-chart",
        name,
        &[(annotation, "secret/data/shop/db")],
        &[],
    )
    .replacen(
        "spec:\n",
        "spec:\n  nodeSelector: {keyward.io/test-node: none}\n",
        1,
    )
}

fn has_sidecar(pod: &Value) -> bool {
    pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "keyward"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installed_injector_runs_on_the_node_and_the_api_server_calls_it_by_its_service() {
    let t0 = Instant::now();
    let cluster = blocking(Cluster::start).unwrap_or_else(|e| panic!("test cluster: {e}"));
    let t_cluster = t0.elapsed();
    let creds = blocking(|| cluster.node_credentials(NODE))
        .unwrap_or_else(|e| panic!("node credentials: {e}"));
    let mut cfg = NodeConfig::new(NODE, &creds.server, &creds.ca, &creds.cert, &creds.key);
    cfg.images = vec![(
        "ghcr.io/keyward/keyward".to_owned(),
        env!("CARGO_BIN_EXE_keyward").into(),
    )];
    cfg.egress_socket = Some(cluster.egress_socket());
    // Where the chart's Deployment mounts its volumes (the image's directories).
    cfg.image_dirs = vec!["/etc/keyward/tls".into(), "/etc/keyward/config".into()];
    let node = Node::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("starting the node agent: {e}"));

    // helm install with the chart's defaults (tls.mode injector, two replicas).
    let scratch = tempfile::tempdir().expect("tempdir");
    let chart = keyward_test_cluster::repo().join("charts/keyward");
    let chart = chart.to_str().expect("utf-8 path");
    let out = blocking(|| {
        cluster.helm(
            scratch.path(),
            &["install", "kw", chart, "-n", NS, "--create-namespace"],
        )
    })
    .unwrap_or_else(|e| panic!("helm: {e}"));
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mwc = blocking(|| cluster.get_json(&["mutatingwebhookconfiguration", NAME]))
        .expect("the chart's webhook");
    let client = &mwc["webhooks"][0]["clientConfig"];
    assert_eq!(mwc["webhooks"][0]["name"], WEBHOOK, "{mwc:#}");
    assert!(client["url"].is_null(), "by Service, not URL: {client:#}");
    assert_eq!(client["service"]["name"], NAME, "{client:#}");
    assert_eq!(client["service"]["namespace"], NS, "{client:#}");

    // The Deployment's pods run on the node (kubectl rollout status watches the Deployment).
    let rollout = blocking(|| {
        cluster.kubectl(&[
            "-n",
            NS,
            "rollout",
            "status",
            &format!("deployment/{NAME}"),
            "--timeout=150s",
        ])
    });
    let pods = blocking(|| cluster.get_json(&["-n", NS, "pods"])).expect("pods");
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let logs = |items: &[Value]| {
        items
            .iter()
            .map(|p| {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                format!("--- {name}:\n{}", node.logs(NS, name, "injector"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Err(e) = rollout {
        panic!(
            "the chart's Deployment did not roll out: {e}\n{:#}\n{}",
            pods["items"],
            logs(&items)
        );
    }
    let t_rollout = t0.elapsed();
    assert_eq!(items.len(), 2, "two replicas: {pods:#}");
    for p in &items {
        assert_eq!(p["spec"]["nodeName"], NODE, "{p:#}");
        assert_eq!(p["status"]["phase"], "Running", "{p:#}");
    }

    // The injector provisioned its Secret and set the webhook's caBundle to its CA, talking to
    // the API server from inside its pod with its projected token.
    let secret = blocking(|| {
        cluster.wait_for("the caBundle set by the injector", WAIT, || {
            let mwc = cluster
                .get_json(&["mutatingwebhookconfiguration", NAME])
                .ok()?;
            let bundle = mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
            let secret = cluster
                .get_json(&["-n", NS, "secret", &format!("{NAME}-tls")])
                .ok()?;
            (secret["data"]["ca.crt"].as_str() == Some(bundle)).then_some(secret)
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&items)));
    assert_eq!(secret["type"], "kubernetes.io/tls");

    // A labelled namespace: the API server calls the webhook by its Service. Polled with a
    // server-side dry-run until the endpoints and the caBundle have reached the API server.
    blocking(|| cluster.workload_namespace("kw-chart", true, &["orders"]))
        .expect("labelled namespace");
    let manifest = pod("orders", "keyward.io/secret-db");
    let dry_run = || {
        cluster
            .kubectl_stdin(
                &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&manifest),
            )
            .map_err(|e| e.to_string())
            .and_then(|o| serde_json::from_str::<Value>(&o).map_err(|e| e.to_string()))
    };
    blocking(|| {
        cluster.wait_for("the chart's injector serving the API server", WAIT, || {
            dry_run().ok().filter(has_sidecar)
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}\nkube-apiserver:\n{}",
            dry_run().err(),
            logs(&items),
            cluster.log_tail("kube-apiserver", 20)
        )
    });
    let t_served = t0.elapsed();
    blocking(|| cluster.apply(&manifest)).unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    let stored = blocking(|| cluster.get_json(&["-n", "kw-chart", "pod", "orders"])).expect("pod");
    assert_eq!(
        stored["metadata"]["annotations"]["keyward.io/status"], "injected",
        "{stored:#}"
    );
    assert!(has_sidecar(&stored), "{stored:#}");

    // A bad annotation is refused with the injector's message, and the refusal is in the log
    // of a chart-installed pod: the API server reached the pods, nothing else.
    let err = blocking(|| cluster.apply(&pod("typo", "keyward.io/secrets-db")))
        .expect_err("a misspelt keyward.io annotation is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            r#"admission webhook "{WEBHOOK}" denied the request: keyward: "#
        )) && msg.contains("keyward.io/secrets-db"),
        "{msg}"
    );
    let all = logs(&items);
    assert!(
        all.contains("Pod denied") && all.contains("keyward.io/secrets-db"),
        "no injector pod logged the refusal:\n{all}"
    );
    for p in &items {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let log = node.logs(NS, name, "injector");
        assert!(!log.contains("panicked"), "{name}:\n{log}");
    }

    node.stop(Duration::from_secs(5)).await;
    eprintln!(
        "timing: cluster up {t_cluster:?}, rolled out {t_rollout:?}, webhook served {t_served:?}, total {:?}",
        t0.elapsed()
    );
}
