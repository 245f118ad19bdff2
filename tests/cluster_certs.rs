//! `tls.mode: injector` on a real kube-apiserver (scripts/cluster.sh): the chart's
//! ServiceAccount, Role, ClusterRole and bindings are applied as rendered, and `keyward
//! injector` runs with a TokenRequest token of that ServiceAccount. It creates the TLS Secret,
//! sets its webhook's caBundle, and the API server then calls it (a pod in a labelled namespace
//! is injected). A second replica reuses the same Secret (same certificate, caBundle unchanged),
//! and the ServiceAccount can read no other Secret. No node agent runs (docs/cluster.md).

use std::path::Path;

use keyward_test_cluster::{Cluster, Injector, INJECT_LABELS};
use serde_json::Value;

const NS: &str = "keyward-system";
const NAME: &str = "kw-keyward-injector";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    keyward_test_cluster::free_port().expect("free port")
}

/// The chart's default render (tls.mode injector) as JSON objects, via kubectl.
fn chart_objects(cluster: &Cluster) -> Vec<Value> {
    cluster
        .chart_objects("kw", NS, &[])
        .unwrap_or_else(|e| panic!("the chart: {e}"))
}

/// `keyward injector` provisioning its own certificate (tls.mode injector) with `token`.
fn start_injector(cluster: &Cluster, token: &Path, port: u16) -> Injector {
    let keyward = Path::new(env!("CARGO_BIN_EXE_keyward"));
    Injector::start_self_provisioning(keyward, cluster, token, port, NS, NAME)
        .unwrap_or_else(|e| panic!("starting keyward injector: {e}"))
}

fn cert(injector: &Injector) -> String {
    injector.cert_pem().expect("tls.crt written")
}

fn ca_bundle(cluster: &Cluster) -> String {
    let mwc = cluster
        .get_json(&["mutatingwebhookconfiguration", NAME])
        .expect("get webhook");
    mwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn injector_provisions_one_stable_certificate_with_the_charts_rbac() {
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    cluster
        .kubectl(&["create", "namespace", NS])
        .expect("namespace");
    let port = free_port();
    let mut objects = chart_objects(&cluster);
    for o in objects.iter_mut() {
        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "MutatingWebhookConfiguration" {
            // No Service endpoints without nodes: the API server dials the process directly.
            // No caBundle: the injector sets it.
            o["webhooks"][0]["clientConfig"] =
                serde_json::json!({"url": format!("https://127.0.0.1:{port}/mutate")});
        }
        if [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        ]
        .contains(&kind.as_str())
        {
            cluster.apply(&o.to_string()).expect("apply chart object");
        }
    }
    assert_eq!(ca_bundle(&cluster), "", "the chart sets no caBundle");
    let token = cluster
        .kubectl(&["-n", NS, "create", "token", NAME, "--duration=3600s"])
        .expect("TokenRequest for the injector's ServiceAccount");
    let scratch = tempfile::tempdir().expect("tempdir");
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, token.trim()).expect("token");

    let first = start_injector(&cluster, &token_file, port);
    let secret = cluster
        .get_json(&["-n", NS, "secret", &format!("{NAME}-tls")])
        .unwrap_or_else(|e| panic!("{e}\n{}", first.log()));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let bundle = ca_bundle(&cluster);
    assert_eq!(
        bundle,
        secret["data"]["ca.crt"].as_str().expect("ca.crt"),
        "caBundle is the Secret's CA"
    );

    // The API server trusts the certificate: a pod in a labelled namespace is injected.
    cluster
        .namespace("shop", &INJECT_LABELS[..1])
        .expect("namespace");
    cluster
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: shop\n  annotations:\n    keyward.io/secret-db: secret/data/db#password\nspec:\n  containers:\n    - name: app\n      image: example.invalid/app:1\n",
        )
        .unwrap_or_else(|e| panic!("pod refused: {e}\n{}", first.log()));
    let pod = cluster
        .get_json(&["-n", "shop", "pod", "app"])
        .expect("pod");
    assert_eq!(
        pod["metadata"]["annotations"]["keyward.io/status"], "injected",
        "{pod}"
    );

    // A second replica (or a restart) reuses the Secret: same certificate, same caBundle.
    let second = start_injector(&cluster, &token_file, free_port());
    assert_eq!(cert(&second), cert(&first));
    assert_eq!(ca_bundle(&cluster), bundle);

    // The Role names one Secret: the injector's ServiceAccount reads no other.
    let who = format!("--as=system:serviceaccount:{NS}:{NAME}");
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.push(&who);
        cluster
            .kubectl_output(&a, None)
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("kubectl auth can-i")
    };
    assert_eq!(can(&["get", "secret/other", "-n", NS]), "no");
    assert_eq!(can(&["list", "secrets", "-n", NS]), "no");
    assert_eq!(
        can(&["get", &format!("secret/{NAME}-tls"), "-n", NS]),
        "yes"
    );
    assert_eq!(can(&["patch", "mutatingwebhookconfiguration/other"]), "no");
}

fn helm_on(cluster: &Cluster, scratch: &Path, args: &[&str]) -> std::process::Output {
    cluster
        .helm(scratch, args)
        .unwrap_or_else(|e| panic!("helm: {e}"))
}

#[test]
fn chart_installs_and_upgrades_on_a_real_api_server_and_its_guards_use_the_servers_capabilities() {
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    let scratch = tempfile::tempdir().expect("tempdir");
    let chart = repo().join("charts/keyward");
    let chart = chart.to_str().expect("utf-8 path");
    let text = |o: &std::process::Output| {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // Server-side validation of every object the default values render, then a real install.
    let install = ["install", "kw", chart, "-n", NS, "--create-namespace"];
    let dry = helm_on(
        &cluster,
        scratch.path(),
        &[&install[..], &["--dry-run=server"]].concat(),
    );
    assert!(dry.status.success(), "dry-run=server:\n{}", text(&dry));
    let out = helm_on(&cluster, scratch.path(), &install);
    assert!(out.status.success(), "helm install:\n{}", text(&out));
    let dep = cluster
        .get_json(&["-n", NS, "deployment", NAME])
        .expect("deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(
        dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let pdb = cluster
        .get_json(&["-n", NS, "poddisruptionbudget", NAME])
        .expect("pdb");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    cluster
        .get_json(&["-n", NS, "role", NAME])
        .expect("role installed");
    // An upgrade with the same values changes no object's generation (nothing random).
    let generation = dep["metadata"]["generation"].clone();
    let out = helm_on(
        &cluster,
        scratch.path(),
        &["upgrade", "kw", chart, "-n", NS],
    );
    assert!(out.status.success(), "helm upgrade:\n{}", text(&out));
    let dep = cluster
        .get_json(&["-n", NS, "deployment", NAME])
        .expect("deployment");
    assert_eq!(
        dep["metadata"]["generation"], generation,
        "upgrade changed the Deployment"
    );
    // This API server has no Prometheus Operator: the monitoring objects are refused by name.
    let out = helm_on(
        &cluster,
        scratch.path(),
        &[
            "upgrade",
            "kw",
            chart,
            "-n",
            NS,
            "--set",
            "monitoring.podMonitor.enabled=true",
        ],
    );
    assert!(!out.status.success(), "PodMonitor without its CRD accepted");
    assert!(text(&out).contains("PodMonitor CRD"), "{}", text(&out));
}
