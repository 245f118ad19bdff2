//! `tls.mode: injector` on a real kube-apiserver (scripts/cluster.sh): the chart's
//! ServiceAccount, Role, ClusterRole and bindings are applied as rendered, and `keyward
//! injector` runs with a TokenRequest token of that ServiceAccount. It creates the TLS Secret,
//! sets its webhook's caBundle, and the API server then calls it (a pod in a labelled namespace
//! is injected). A second replica reuses the same Secret (same certificate, caBundle unchanged),
//! and the ServiceAccount can read no other Secret. No node agent runs (docs/cluster.md).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_test_cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
const NS: &str = "keyward-system";
const NAME: &str = "kw-keyward-injector";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The chart's default render (tls.mode injector) as JSON objects, via kubectl.
fn chart_objects(cluster: &Cluster) -> Vec<Value> {
    let helm = std::env::var_os("KEYWARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| keyward_test_cluster::cache_dir().join("helm-2.2.2/helm/helm"));
    assert!(
        helm.is_file(),
        "helm not found at {}: install it with `scripts/deps.sh k8s`",
        helm.display()
    );
    let out = Command::new(&helm)
        .args(["template", "kw"])
        .arg(repo().join("charts/keyward"))
        .args(["--namespace", NS])
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    let json = cluster
        .kubectl_stdin(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(&rendered),
        )
        .expect("kubectl create --dry-run=client");
    serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl printed JSON objects"))
        .collect()
}

struct Injector {
    child: Child,
    dir: tempfile::TempDir,
}

impl Injector {
    fn start(cluster: &Cluster, token: &Path, port: u16) -> Injector {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("injector.log");
        let child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("injector")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!(
                "--tls-cert={}",
                dir.path().join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key={}",
                dir.path().join("tls.key").display()
            ))
            .arg(format!("--self-signed-secret={NAME}-tls"))
            .arg(format!("--self-signed-namespace={NS}"))
            .arg(format!("--self-signed-service={NAME}"))
            .arg(format!("--self-signed-webhook={NAME}"))
            .arg("--self-signed-san=127.0.0.1")
            .arg(format!("--kube-api={}", cluster.server))
            .arg("--kube-token-file")
            .arg(token)
            .arg("--kube-ca-file")
            .arg(&cluster.ca)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .spawn()
            .expect("spawn keyward injector");
        let mut inj = Injector { child, dir };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if let Ok(Some(status)) = inj.child.try_wait() {
                panic!("keyward injector exited ({status}):\n{}", inj.log());
            }
            assert!(
                Instant::now() < deadline,
                "injector not listening:\n{}",
                inj.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        inj
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("injector.log")).unwrap_or_default()
    }

    fn cert(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tls.crt")).expect("tls.crt written")
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    let first = Injector::start(&cluster, &token_file, port);
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
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    keyward.io/inject: enabled\n",
        )
        .expect("namespace");
    cluster
        .wait_for("default ServiceAccount in shop", WAIT, || {
            cluster
                .kubectl(&["-n", "shop", "get", "serviceaccount", "default"])
                .ok()
        })
        .expect("service account");
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
    let second = Injector::start(&cluster, &token_file, free_port());
    assert_eq!(second.cert(), first.cert());
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
    let helm = std::env::var_os("KEYWARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| keyward_test_cluster::cache_dir().join("helm-2.2.2/helm/helm"));
    Command::new(helm)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HELM_CACHE_HOME", scratch.join("cache"))
        .env("HELM_CONFIG_HOME", scratch.join("config"))
        .env("HELM_DATA_HOME", scratch.join("data"))
        .args(args)
        .output()
        .expect("run helm")
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
