//! `helm upgrade` from the chart of the previous release (the commit `release/previous.json`
//! records: the pin before the one `release/image.json` holds, kept by `scripts/release.sh --pin`;
//! `git archive`d into a temporary directory) to this checkout's chart, on a real kube-apiserver
//! (scripts/cluster.sh; no node agent, so the injector runs as a local `keyward injector` with
//! a TokenRequest token of the chart's ServiceAccount, as in tests/cluster_certs.rs).
//!
//! Checked: the upgrade applies on the real API server (no immutable field or schema error);
//! the certificate the previous release's injector provisioned is kept (the Secret is not
//! recreated, the caBundle Helm does not own is left as the injector set it, and an injector
//! started on the upgraded RBAC serves the same certificate); the rollout cannot leave the
//! webhook without a replica (maxUnavailable 0, the PDB); a pod injected before the upgrade is
//! untouched; and the upgraded webhook configuration, called by the API server, injects a new
//! pod. Tools from `scripts/deps.sh cluster`; a missing one fails.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward_test_cluster::{Cluster, Injector, INJECT_LABELS};
use serde_json::{json, Value};

const NS: &str = "keyward-system";
const NAME: &str = "kw-keyward-injector";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The chart of the previous release (`release/previous.json`), extracted under `dir`. The
/// current pin (`release/image.json`) is usually this checkout's chart already: upgrading from it
/// would prove little.
fn released_chart(dir: &Path) -> (String, PathBuf) {
    let release: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("release/previous.json"))
            .expect("release/previous.json"),
    )
    .expect("release/previous.json is JSON");
    let rev = release["revision"].as_str().expect("revision").to_owned();
    let archive = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["archive", "--format=tar", &rev, "charts/keyward"])
        .output()
        .expect("git archive");
    assert!(
        archive.status.success(),
        "git archive {rev}: {}",
        text(&archive)
    );
    let tar = dir.join("chart.tar");
    std::fs::write(&tar, &archive.stdout).expect("tar");
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar: {}", text(&out));
    (rev, dir.join("charts/keyward"))
}

fn start_injector(cluster: &Cluster, token: &Path, port: u16) -> Injector {
    let dir = tempfile::tempdir().expect("tempdir");
    let arg = |k: &str, v: &dyn std::fmt::Display| OsString::from(format!("--{k}={v}"));
    let args = [
        arg("tls-cert", &dir.path().join("tls.crt").display()),
        arg("tls-key", &dir.path().join("tls.key").display()),
        arg("self-signed-secret", &format!("{NAME}-tls")),
        arg("self-signed-namespace", &NS),
        arg("self-signed-service", &NAME),
        arg("self-signed-webhook", &NAME),
        arg("self-signed-san", &"127.0.0.1"),
        arg("kube-api", &cluster.server),
        arg("kube-token-file", &token.display()),
        arg("kube-ca-file", &cluster.ca.display()),
    ];
    Injector::spawn(Path::new(env!("CARGO_BIN_EXE_keyward")), port, dir, &args)
        .unwrap_or_else(|e| panic!("starting keyward injector: {e}"))
}

fn cert(injector: &Injector) -> String {
    std::fs::read_to_string(injector.dir().join("tls.crt")).expect("tls.crt written")
}

fn webhook(cluster: &Cluster) -> Value {
    cluster
        .get_json(&["mutatingwebhookconfiguration", NAME])
        .expect("get webhook")
}

fn token_file(cluster: &Cluster, dir: &Path, name: &str) -> PathBuf {
    let token = cluster
        .kubectl(&["-n", NS, "create", "token", NAME, "--duration=3600s"])
        .expect("TokenRequest for the injector's ServiceAccount");
    let p = dir.join(name);
    std::fs::write(&p, token.trim()).expect("token");
    p
}

/// Points the webhook at `url` (no Service endpoints without nodes), runs `f`, and puts the
/// chart's `clientConfig` (its Service, with the caBundle the injector set) back.
fn via_url<T>(cluster: &Cluster, url: &str, f: impl FnOnce() -> T) -> T {
    let saved = webhook(cluster)["webhooks"][0]["clientConfig"].clone();
    let patch = |cc: &Value| {
        let p = json!([{"op": "replace", "path": "/webhooks/0/clientConfig", "value": cc}]);
        cluster
            .kubectl(&[
                "patch",
                "mutatingwebhookconfiguration",
                NAME,
                "--type=json",
                "-p",
                &p.to_string(),
            ])
            .expect("patch webhook clientConfig");
    };
    let mut direct = json!({"url": url});
    direct["caBundle"] = saved["caBundle"].clone();
    patch(&direct);
    let out = f();
    patch(&saved);
    out
}

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations:\n    \
         keyward.io/secret-db: secret/data/db#password\nspec:\n  containers:\n    - name: app\n      \
         image: example.invalid/app:1\n"
    )
}

#[test]
fn helm_upgrade_from_the_released_chart_keeps_the_webhook_certificate_and_injected_pods() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (rev, old_chart) = released_chart(scratch.path());
    let new_chart = repo().join("charts/keyward");
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    let helm = |args: &[&str]| {
        cluster
            .helm(scratch.path(), args)
            .unwrap_or_else(|e| panic!("helm: {e}"))
    };

    // The previous release, installed as a platform team did.
    let old = old_chart.to_str().expect("utf-8");
    let out = helm(&["install", "kw", old, "-n", NS, "--create-namespace"]);
    assert!(
        out.status.success(),
        "helm install of {rev}'s chart:\n{}",
        text(&out)
    );
    assert_eq!(
        webhook(&cluster)["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
        None,
        "tls.mode injector: the chart sets no caBundle"
    );
    // Its injector provisions the certificate and the caBundle.
    let port = keyward_test_cluster::free_port().expect("port");
    let first = start_injector(&cluster, &token_file(&cluster, scratch.path(), "t1"), port);
    let secret = cluster
        .get_json(&["-n", NS, "secret", &format!("{NAME}-tls")])
        .unwrap_or_else(|e| panic!("{e}\n{}", first.log()));
    let bundle = webhook(&cluster)["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle set by the injector")
        .to_owned();
    // A pod injected under the previous release.
    cluster
        .namespace("shop", &INJECT_LABELS[..1])
        .expect("namespace");
    via_url(
        &cluster,
        &format!("https://127.0.0.1:{port}/mutate"),
        || {
            cluster
                .apply(&pod("before"))
                .unwrap_or_else(|e| panic!("pod refused: {e}\n{}", first.log()))
        },
    );
    let before = cluster
        .get_json(&["-n", "shop", "pod", "before"])
        .expect("pod");
    assert_eq!(
        before["metadata"]["annotations"]["keyward.io/status"],
        "injected"
    );

    // The upgrade to this checkout's chart, on the real API server.
    let new = new_chart.to_str().expect("utf-8");
    let out = helm(&["upgrade", "kw", new, "-n", NS]);
    assert!(
        out.status.success(),
        "helm upgrade {rev} -> this chart:\n{}",
        text(&out)
    );
    let history = helm(&["history", "kw", "-n", NS, "-o", "json"]);
    let history: Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // No downtime by construction: one new replica at a time, none taken away first, and a
    // PDB keeping one through drains.
    let dep = cluster
        .get_json(&["-n", NS, "deployment", NAME])
        .expect("deployment");
    let rolling = &dep["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxUnavailable"], 0, "{rolling}");
    assert_eq!(rolling["maxSurge"], 1, "{rolling}");
    assert!(dep["spec"]["replicas"].as_i64() >= Some(2));
    let pdb = cluster
        .get_json(&["-n", NS, "poddisruptionbudget", NAME])
        .expect("pdb");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // The certificate stays: the Secret is the same object with the same data, and the caBundle
    // Helm does not own is as the injector left it.
    let after = cluster
        .get_json(&["-n", NS, "secret", &format!("{NAME}-tls")])
        .expect("the TLS Secret survives the upgrade");
    assert_eq!(after["metadata"]["uid"], secret["metadata"]["uid"]);
    assert_eq!(after["data"], secret["data"]);
    assert_eq!(
        webhook(&cluster)["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
        Some(bundle.as_str()),
        "the upgrade left the caBundle alone"
    );
    // The pod injected before is untouched.
    let kept = cluster
        .get_json(&["-n", "shop", "pod", "before"])
        .expect("pod");
    assert_eq!(kept["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(kept["spec"], before["spec"]);

    // A replica of the upgraded release (the upgraded RBAC, a new token) serves the same
    // certificate, and the API server calls the upgraded webhook: a new pod is injected.
    let first_cert = cert(&first);
    drop(first);
    let port = keyward_test_cluster::free_port().expect("port");
    let second = start_injector(&cluster, &token_file(&cluster, scratch.path(), "t2"), port);
    assert_eq!(cert(&second), first_cert, "the same serving certificate");
    via_url(
        &cluster,
        &format!("https://127.0.0.1:{port}/mutate"),
        || {
            cluster
                .apply(&pod("after"))
                .unwrap_or_else(|e| panic!("pod refused: {e}\n{}", second.log()))
        },
    );
    let new_pod = cluster
        .get_json(&["-n", "shop", "pod", "after"])
        .expect("pod");
    assert_eq!(
        new_pod["metadata"]["annotations"]["keyward.io/status"],
        "injected"
    );
    assert_eq!(
        webhook(&cluster)["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
        Some(bundle.as_str())
    );
}
