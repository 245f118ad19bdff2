//! The set-up the cluster tests share: a `keyward injector` process on loopback (with a serving
//! certificate from a CA of its own, or with arguments the test chooses), the chart rendered by
//! `helm template` (all of it, or its MutatingWebhookConfiguration pointed at a URL), `helm`
//! against the cluster, and namespaces labelled as the injector and PodSecurity expect.
//! Additive: nothing here changes how the cluster starts.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::{cache_dir, Cluster, Error, Result};

/// The webhook's name in the chart.
pub const WEBHOOK: &str = "inject.keyward.io";
/// The labels of a namespace whose pods the chart's webhook injects, enforcing PodSecurity
/// `restricted` as the docs recommend.
pub const INJECT_LABELS: [(&str, &str); 2] = [
    ("keyward.io/inject", "enabled"),
    ("pod-security.kubernetes.io/enforce", "restricted"),
];
/// How long a namespace's default ServiceAccount may take to appear (a safety net).
const SA_WAIT: Duration = Duration::from_secs(120);

/// This checkout (the workspace root).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Helm: `$KEYWARD_HELM`, else the one `scripts/deps.sh k8s` unpacks; missing, an error
/// naming the install command.
pub fn helm() -> Result<PathBuf> {
    let helm = std::env::var_os("KEYWARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("helm-2.2.2/helm/helm"));
    if helm.is_file() {
        Ok(helm)
    } else {
        Err(Error::Missing {
            what: "helm".into(),
            path: helm,
        })
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "picking a free port".into(),
            source,
        })
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A pod that PodSecurity's `restricted` level admits: service account `orders`, one `app`
/// container of an image no node maps (so it is only admitted and stored unless a test runs
/// it), with `annotations` and `labels` (quoted values).
pub fn restricted_pod(
    namespace: &str,
    name: &str,
    annotations: &[(&str, &str)],
    labels: &[(&str, &str)],
) -> String {
    let block = |title: &str, kv: &[(&str, &str)]| {
        if kv.is_empty() {
            return String::new();
        }
        let mut s = format!("\n  {title}:");
        for (k, v) in kv {
            s.push_str(&format!("\n    {k}: \"{v}\""));
        }
        s
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}{ann}{lab}
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
"#,
        ann = block("annotations", annotations),
        lab = block("labels", labels),
    )
}

/// `keyward injector` on 127.0.0.1, its stdout and stderr in `dir()/injector.log`. Dropping it
/// kills it.
#[derive(Debug)]
pub struct Injector {
    child: Child,
    pub addr: SocketAddr,
    /// The CA that signed its serving certificate (PEM); empty when the test chose the
    /// certificate arguments itself ([`Injector::spawn`]).
    pub ca_pem: String,
    dir: tempfile::TempDir,
}

impl Injector {
    /// `keyward injector --config CONFIG` with a serving certificate (SANs `localhost` and
    /// 127.0.0.1) from a CA of its own.
    pub fn start(keyward: &Path, config: &Path) -> Result<Injector> {
        let dir = tempfile::tempdir().map_err(io("tempdir"))?;
        let cert_err = |e: rcgen::Error| Error::Io {
            what: "making the injector's test certificate".into(),
            source: std::io::Error::other(e.to_string()),
        };
        let ca_key = rcgen::KeyPair::generate().map_err(cert_err)?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyward-injector-test-ca");
        let ca = ca_params.self_signed(&ca_key).map_err(cert_err)?;
        let key = rcgen::KeyPair::generate().map_err(cert_err)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(cert_err)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(cert_err)?;
        let (crt, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&crt, cert.pem()).map_err(io("writing tls.crt"))?;
        std::fs::write(&key_path, key.serialize_pem()).map_err(io("writing tls.key"))?;
        let args: Vec<OsString> = vec![
            "--config".into(),
            config.into(),
            "--tls-cert".into(),
            crt.into(),
            "--tls-key".into(),
            key_path.into(),
        ];
        let mut inj = Self::spawn(keyward, free_port()?, dir, &args)?;
        inj.ca_pem = ca.pem();
        Ok(inj)
    }

    /// `keyward injector` as the chart runs it in `tls.mode: injector`, outside a pod: it
    /// provisions Secret `NAME-tls` in `namespace` and the caBundle of webhook `name` itself,
    /// talking to `cluster`'s API server with the service-account token in `token` (its
    /// certificate also names 127.0.0.1, where it listens on `port`).
    pub fn start_self_provisioning(
        keyward: &Path,
        cluster: &Cluster,
        token: &Path,
        port: u16,
        namespace: &str,
        name: &str,
    ) -> Result<Injector> {
        let dir = tempfile::tempdir().map_err(io("tempdir"))?;
        let arg = |k: &str, v: &dyn std::fmt::Display| OsString::from(format!("--{k}={v}"));
        let args = [
            arg("tls-cert", &dir.path().join("tls.crt").display()),
            arg("tls-key", &dir.path().join("tls.key").display()),
            arg("self-signed-secret", &format!("{name}-tls")),
            arg("self-signed-namespace", &namespace),
            arg("self-signed-service", &name),
            arg("self-signed-webhook", &name),
            arg("self-signed-san", &"127.0.0.1"),
            arg("kube-api", &cluster.server),
            arg("kube-token-file", &token.display()),
            arg("kube-ca-file", &cluster.ca.display()),
        ];
        Self::spawn(keyward, port, dir, &args)
    }

    /// The serving certificate it uses (PEM), as written in its directory.
    pub fn cert_pem(&self) -> Result<String> {
        std::fs::read_to_string(self.dir.path().join("tls.crt")).map_err(io("reading tls.crt"))
    }

    /// `keyward injector --listen 127.0.0.1:PORT ARGS` with its log in `dir`; returns once
    /// it accepts connections (an error with its log if it exits first).
    pub fn spawn(
        keyward: &Path,
        port: u16,
        dir: tempfile::TempDir,
        args: &[OsString],
    ) -> Result<Injector> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.path().join("injector.log");
        let out = std::fs::File::create(&log).map_err(io("creating the injector log"))?;
        let err = out.try_clone().map_err(io("injector log"))?;
        let child = Command::new(keyward)
            .arg("injector")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: format!("{} injector", keyward.display()),
                source,
            })?;
        let mut inj = Injector {
            child,
            addr,
            ca_pem: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            let failed = |why: String| Error::Io {
                what: format!("keyward injector on {addr}"),
                source: std::io::Error::other(why),
            };
            if let Ok(Some(status)) = inj.child.try_wait() {
                return Err(failed(format!("exited ({status}):\n{}", inj.log())));
            }
            if Instant::now() > deadline {
                return Err(failed(format!("not listening after 90 s:\n{}", inj.log())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(inj)
    }

    /// `https://127.0.0.1:PORT/mutate`.
    pub fn url(&self) -> String {
        format!("https://{}/mutate", self.addr)
    }

    /// Its directory (log, and whatever files the test put there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("injector.log")).unwrap_or_default()
    }

    /// Kills it (idempotent).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// Runs helm against this cluster with its own cache/config/data under `scratch`.
    pub fn helm(&self, scratch: &Path, args: &[&str]) -> Result<Output> {
        Command::new(helm()?)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", scratch.join("cache"))
            .env("HELM_CONFIG_HOME", scratch.join("config"))
            .env("HELM_DATA_HOME", scratch.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                cmd: format!("helm {}", args.join(" ")),
                source,
            })
    }

    /// `helm template RELEASE charts/keyward --namespace NS ARGS` as JSON objects (kubectl
    /// turns the YAML stream into JSON without sending it anywhere).
    pub fn chart_objects(
        &self,
        release: &str,
        namespace: &str,
        args: &[&str],
    ) -> Result<Vec<Value>> {
        let out = Command::new(helm()?)
            .args(["template", release])
            .arg(repo().join("charts/keyward"))
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                cmd: "helm template".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Io {
                what: "helm template charts/keyward".into(),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        let rendered = String::from_utf8_lossy(&out.stdout);
        let args = ["create", "--dry-run=client", "-o", "json", "-f", "-"];
        let json = self.kubectl_stdin(&args, Some(&rendered))?;
        serde_json::Deserializer::from_str(&json)
            .into_iter::<Value>()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Json {
                args: args.join(" "),
                problem: e.to_string(),
            })
    }

    /// The chart's MutatingWebhookConfiguration as `helm template ... --set SETS` renders it,
    /// only its clientConfig pointed at `url` with `ca_pem` as the caBundle (a process on
    /// loopback rather than the chart's Service).
    pub fn chart_webhook(&self, sets: &[&str], url: &str, ca_pem: &str) -> Result<Value> {
        let mut args = vec!["--show-only", "templates/webhook.yaml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let mut mwc = self
            .chart_objects("keyward", "keyward-system", &args)?
            .into_iter()
            .find(|o| o["kind"] == "MutatingWebhookConfiguration")
            .ok_or_else(|| Error::Json {
                args: "helm template --show-only templates/webhook.yaml".into(),
                problem: "no MutatingWebhookConfiguration in the chart".into(),
            })?;
        mwc["webhooks"][0]["clientConfig"] = json!({
            "url": url,
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        });
        Ok(mwc)
    }

    /// Applies the chart's webhook pointed at `injector` ([`Cluster::chart_webhook`]).
    pub fn register_webhook(&self, injector: &Injector, sets: &[&str]) -> Result<Value> {
        let mwc = self.chart_webhook(sets, &injector.url(), &injector.ca_pem)?;
        self.apply(&mwc.to_string())?;
        Ok(mwc)
    }

    /// Creates namespace `name` with `labels` (e.g. [`INJECT_LABELS`]) and waits for its
    /// default ServiceAccount, without which the ServiceAccount admission plugin refuses pods.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let mut l = String::new();
        for (k, v) in labels {
            l.push_str(&format!("\n    {k}: \"{v}\""));
        }
        let labels = if l.is_empty() {
            String::new()
        } else {
            format!("\n  labels:{l}")
        };
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n"
        ))?;
        self.wait_for_service_account(name, "default", SA_WAIT)
    }

    /// Creates service account `name` in `namespace`.
    pub fn service_account(&self, namespace: &str, name: &str) -> Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        ))
        .map(drop)
    }

    /// A namespace enforcing PodSecurity `restricted`, labelled `keyward.io/inject=enabled`
    /// when `inject`, with `service_accounts` in it; returns once pods can be created there.
    pub fn workload_namespace(
        &self,
        name: &str,
        inject: bool,
        service_accounts: &[&str],
    ) -> Result<()> {
        let labels = if inject {
            &INJECT_LABELS[..]
        } else {
            &INJECT_LABELS[1..]
        };
        self.namespace(name, labels)?;
        for sa in service_accounts {
            self.service_account(name, sa)?;
        }
        Ok(())
    }

    /// `kubectl wait --for=condition=Ready pod/NAME` (`timeout` is the safety net); the error
    /// carries the pod's status.
    pub fn wait_pod_ready(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let t = format!("--timeout={}s", timeout.as_secs().max(1));
        let pod = format!("pod/{name}");
        let args = ["-n", namespace, "wait", "--for=condition=Ready", &pod, &t];
        self.kubectl(&args).map(drop).map_err(|e| {
            let status = self
                .get_json(&["-n", namespace, "pod", name])
                .map(|p| format!("{:#}", p["status"]))
                .unwrap_or_default();
            Error::Io {
                what: format!("pod {namespace}/{name} Ready"),
                source: std::io::Error::other(format!("{e}\n{status}")),
            }
        })
    }
}
