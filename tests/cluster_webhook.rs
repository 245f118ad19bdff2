//! The injector behind a real kube-apiserver (scripts/cluster.sh, built by
//! `scripts/deps.sh cluster`): the chart's MutatingWebhookConfiguration, pointed by URL at a
//! `keyward injector` process on loopback, mutates pods that `kubectl apply` creates; pods
//! outside labelled namespaces are untouched; a bad annotation and a missing injector refuse
//! the pod. And the API server's TokenRequest tokens carry the claims the broker reads.
//! No node agent runs: pods are stored, never run (docs/cluster.md).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use keyward_test_cluster::Cluster;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start_cluster() -> Cluster {
    Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
}

/// A free port on 127.0.0.1, from below the ephemeral range (as tests/support does).
fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let p = rand::thread_rng().gen_range(20000..32000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// `keyward injector` on 127.0.0.1 with a serving certificate from its own CA.
struct Injector {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Injector {
    fn start() -> Injector {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyward-injector-test-ca");
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("serving key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("serving params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &ca, &ca_key).expect("serving cert");
        let (crt_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&crt_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.path().join("injector.log");
        let child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("injector")
            .arg("--config")
            .arg(repo().join("examples/injector-config.yaml"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--tls-cert")
            .arg(&crt_path)
            .arg("--tls-key")
            .arg(&key_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::from(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            ))
            .spawn()
            .expect("spawn keyward injector");
        let mut inj = Injector {
            child,
            addr,
            ca_pem: ca.pem(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if let Ok(Some(status)) = inj.child.try_wait() {
                panic!("keyward injector exited ({status}):\n{}", inj.log());
            }
            assert!(
                Instant::now() < deadline,
                "keyward injector not listening on {addr} after {WAIT:?}:\n{}",
                inj.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        inj
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The chart's MutatingWebhookConfiguration (helm template), its clientConfig pointed at `url`.
fn chart_webhook(cluster: &Cluster, url: &str, ca_pem: &str) -> Value {
    let helm = std::env::var_os("KEYWARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| keyward_test_cluster::cache_dir().join("helm-2.2.2/helm/helm"));
    assert!(
        helm.is_file(),
        "helm not found at {}: install it with `scripts/deps.sh cluster`",
        helm.display()
    );
    let out = Command::new(&helm)
        .args(["template", "keyward"])
        .arg(repo().join("charts/keyward"))
        .args([
            "--namespace",
            "keyward-system",
            "--show-only",
            "templates/webhook.yaml",
        ])
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    // kubectl turns the YAML stream into JSON objects without sending it anywhere.
    let json = cluster
        .kubectl_stdin(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(&rendered),
        )
        .expect("kubectl create --dry-run=client");
    let mut mwc = serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl printed JSON objects"))
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap_or_else(|| panic!("no MutatingWebhookConfiguration in the chart:\n{rendered}"));
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Fail");
    mwc["webhooks"][0]["clientConfig"] = json!({
        "url": url,
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
    });
    mwc
}

fn namespace(name: &str, inject: bool) -> String {
    let label = if inject {
        "\n    keyward.io/inject: enabled"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
         pod-security.kubernetes.io/enforce: restricted{label}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: orders\n  namespace: {name}\n"
    )
}

/// A pod that PodSecurity's `restricted` level admits; `annotations` are YAML lines.
fn pod(ns: &str, name: &str, annotations: &[(&str, &str)]) -> String {
    let mut ann = String::new();
    for (k, v) in annotations {
        ann.push_str(&format!("\n    {k}: \"{v}\""));
    }
    let ann = if ann.is_empty() {
        String::new()
    } else {
        format!("\n  annotations:{ann}")
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}{ann}
spec:
  serviceAccountName: orders
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {{type: RuntimeDefault}}
  containers:
    - name: app
      image: example.invalid/shop/orders:1
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {{drop: [ALL]}}
"#
    )
}

/// The controllers have created the namespace's default service account, without which the
/// ServiceAccount admission plugin refuses pods.
fn wait_for_service_accounts(cluster: &Cluster, ns: &str) {
    cluster
        .wait_for(&format!("the default ServiceAccount in {ns}"), WAIT, || {
            cluster
                .kubectl(&["-n", ns, "get", "serviceaccount", "default"])
                .ok()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tail("kube-controller-manager", 30)));
}

fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

#[test]
fn real_api_server_sends_pods_to_the_injector_and_keeps_its_patch() {
    let cluster = start_cluster();
    let mut injector = Injector::start();
    let url = format!("https://{}/mutate", injector.addr);
    let mwc = chart_webhook(&cluster, &url, &injector.ca_pem);
    cluster
        .apply(&mwc.to_string())
        .expect("apply the MutatingWebhookConfiguration");
    cluster
        .apply(&namespace("kw-shop", true))
        .expect("labelled namespace");
    cluster
        .apply(&namespace("kw-plain", false))
        .expect("unlabelled namespace");
    wait_for_service_accounts(&cluster, "kw-shop");
    wait_for_service_accounts(&cluster, "kw-plain");

    // A pod in the labelled namespace: stored with the sidecar and its volumes.
    cluster
        .apply(&pod(
            "kw-shop",
            "orders",
            &[("keyward.io/secret-db", "secret/data/shop/db")],
        ))
        .unwrap_or_else(|e| panic!("apply the pod: {e}\ninjector log:\n{}", injector.log()));
    let stored = cluster
        .get_json(&["-n", "kw-shop", "pod", "orders"])
        .expect("get pod");
    assert_eq!(
        stored["metadata"]["annotations"]["keyward.io/status"], "injected",
        "{stored:#}"
    );
    let sidecar = stored["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "keyward"))
        .unwrap_or_else(|| panic!("no keyward sidecar in the stored pod: {stored:#}"));
    assert_eq!(sidecar["restartPolicy"], "Always", "{sidecar:#}");
    assert!(
        sidecar["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("ghcr.io/keyward/keyward@sha256:")),
        "{sidecar:#}"
    );
    let token = volume(&stored, "keyward-token")
        .unwrap_or_else(|| panic!("no keyward-token volume: {stored:#}"));
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], "vault", "{token:#}");
    assert_eq!(sat["expirationSeconds"], 600, "{token:#}");
    let socket = volume(&stored, "keyward-socket")
        .unwrap_or_else(|| panic!("no keyward-socket volume: {stored:#}"));
    assert_eq!(socket["emptyDir"]["medium"], "Memory", "{socket:#}");
    let app = &stored["spec"]["containers"][0];
    assert!(
        app["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "keyward-socket")),
        "the app container mounts the socket: {app:#}"
    );

    // The same pod in an unlabelled namespace: stored as written.
    cluster
        .apply(&pod(
            "kw-plain",
            "orders",
            &[("keyward.io/secret-db", "secret/data/shop/db")],
        ))
        .expect("apply the pod in the unlabelled namespace");
    let plain = cluster
        .get_json(&["-n", "kw-plain", "pod", "orders"])
        .expect("get pod");
    assert!(plain["spec"]["initContainers"].is_null(), "{plain:#}");
    assert!(volume(&plain, "keyward-token").is_none(), "{plain:#}");
    assert!(volume(&plain, "keyward-socket").is_none(), "{plain:#}");
    assert!(
        plain["metadata"]["annotations"]["keyward.io/status"].is_null(),
        "{plain:#}"
    );

    // A misspelt annotation: kubectl apply is refused with the injector's message.
    let err = cluster
        .apply(&pod(
            "kw-shop",
            "typo",
            &[("keyward.io/secrets-db", "secret/data/shop/db")],
        ))
        .expect_err("a pod with an unknown keyward.io annotation is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(r#"admission webhook "inject.keyward.io" denied the request"#)
            && msg.contains("keyward: ")
            && msg.contains("keyward.io/secrets-db"),
        "{msg}"
    );
    assert!(
        cluster
            .kubectl(&["-n", "kw-shop", "get", "pod", "typo"])
            .is_err(),
        "the refused pod was not stored"
    );

    // No injector and failurePolicy Fail: the pod is refused, saying the webhook failed.
    injector.stop();
    let err = cluster
        .apply(&pod("kw-shop", "unserved", &[]))
        .expect_err("with the injector down, pods in labelled namespaces are refused");
    let msg = err.to_string();
    assert!(
        msg.contains(r#"failed calling webhook "inject.keyward.io""#),
        "{msg}"
    );
    assert!(
        msg.contains(&url),
        "the message names the webhook URL: {msg}"
    );
    // Unlabelled namespaces do not depend on the injector.
    cluster
        .apply(&pod("kw-plain", "unserved", &[]))
        .expect("unlabelled namespaces still admit pods");
}

#[test]
fn token_request_tokens_carry_the_claims_the_broker_reads() {
    let cluster = start_cluster();
    cluster
        .apply(&namespace("kw-tokens", false))
        .expect("namespace");
    wait_for_service_accounts(&cluster, "kw-tokens");
    cluster
        .apply(&pod("kw-tokens", "orders-1", &[]))
        .expect("apply the pod");
    let stored = cluster
        .get_json(&["-n", "kw-tokens", "pod", "orders-1"])
        .expect("get pod");
    let pod_uid = stored["metadata"]["uid"].as_str().expect("pod uid");

    // Bound to the pod, as the kubelet asks for the projected token volume.
    let jwt = cluster
        .kubectl(&[
            "-n",
            "kw-tokens",
            "create",
            "token",
            "orders",
            "--audience",
            "vault",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "orders-1",
            "--bound-object-uid",
            pod_uid,
        ])
        .expect("kubectl create token");
    let info = keyward_broker::claims::decode(jwt.trim()).expect("the broker parses the token");
    assert_eq!(info.pod.namespace, "kw-tokens");
    assert_eq!(info.pod.service_account, "orders");
    assert_eq!(info.pod.pod_name, "orders-1");
    assert_eq!(info.pod.pod_uid, pod_uid);
    assert!(info.expires_at.is_some());

    // Signed by the cluster's service-account key, for the Vault audience and the issuer.
    let key = std::fs::read(cluster.dir().join("pki/sa.pub")).expect("sa.pub");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["vault"]);
    validation.set_issuer(&["https://kubernetes.default.svc.cluster.local"]);
    let verified = jsonwebtoken::decode::<Value>(
        jwt.trim(),
        &jsonwebtoken::DecodingKey::from_rsa_pem(&key).expect("RSA public key"),
        &validation,
    )
    .expect("the token verifies with the cluster's service-account key");
    let claims = verified.claims;
    assert_eq!(claims["sub"], "system:serviceaccount:kw-tokens:orders");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "orders-1");

    // An unbound token (no pod): the broker still reads the service account.
    let jwt = cluster
        .kubectl(&[
            "-n",
            "kw-tokens",
            "create",
            "token",
            "orders",
            "--audience",
            "vault",
        ])
        .expect("kubectl create token");
    let info = keyward_broker::claims::decode(jwt.trim()).expect("the broker parses the token");
    assert_eq!(
        (
            info.pod.namespace.as_str(),
            info.pod.service_account.as_str()
        ),
        ("kw-tokens", "orders")
    );
    assert_eq!(info.pod.pod_name, "");
}
