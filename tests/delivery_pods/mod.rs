//! Injected pods run the way a cluster runs them, for the delivery tests (`delivery_psql.rs`,
//! `delivery_env_pod.rs`): a manifest goes through `keyward inject` (the webhook's mutation)
//! with `examples/injector-config.yaml`, and the e2e pod runner executes the injected spec as
//! is — each pod in its own network namespace, each container in its own PID namespace, the
//! native sidecar first, `keyward-install`, then the apps. OpenBao is the tests' harness on
//! 127.0.0.1, reachable from the pods as `vault.vault.svc:8200` on the node host (an
//! `Expose` listener), with jwt auth trusting the runner's service-account token issuer.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keyward_e2e::cluster::Cluster;
use keyward_e2e::manifest::Manifests;
use keyward_e2e::net::Expose;
use keyward_e2e::pod::Pod;
use keyward_e2e::shop::{KEYWARD_IMAGE, NODE_NAMES};
use keyward_testkit::bao::Bao;
use serde_json::Value;

pub const KEYWARD: &str = env!("CARGO_BIN_EXE_keyward");

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// `keyward inject --config examples/injector-config.yaml -f -` over `yaml`: (exit code,
/// stdout, stderr).
pub fn inject_output(yaml: &str) -> (i32, String, String) {
    let mut child = Command::new(KEYWARD)
        .args(["inject", "--config"])
        .arg(examples().join("injector-config.yaml"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyward inject");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write keyward inject's stdin");
    let out = child.wait_with_output().expect("keyward inject");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `keyward inject` over `yaml`, which must be admitted.
pub fn inject(yaml: &str) -> String {
    let (code, out, err) = inject_output(yaml);
    assert_eq!(code, 0, "keyward inject refused the manifest: {err}");
    out
}

/// OpenBao, the node host and the pods.
pub struct Pods {
    pub bao: Bao,
    exposed: Vec<Expose>,
    // Last: its drop stops the pods and removes the namespaces.
    pub cluster: Cluster,
}

impl Pods {
    /// Starts OpenBao, the network and the node host; OpenBao is `vault.vault.svc:8200` for the
    /// pods, with jwt auth trusting the runner's issuer.
    pub async fn start() -> Pods {
        let bao = tokio::task::block_in_place(Bao::start);
        let cluster = Cluster::new(&[(KEYWARD_IMAGE.to_owned(), PathBuf::from(KEYWARD))])
            .unwrap_or_else(|e| panic!("creating the pods' network: {e}"));
        let mut pods = Pods {
            bao,
            exposed: Vec::new(),
            cluster,
        };
        pods.expose(8200, pods.bao.port()).await;
        pods.cluster.issuer.configure(&pods.bao).await;
        pods
    }

    /// Makes `127.0.0.1:local_port` reachable from the pods at the node host's `port`
    /// (`postgres.db.svc:5432`, ...).
    pub async fn expose(&mut self, port: u16, local_port: u16) {
        let target = SocketAddr::from(([127, 0, 0, 1], local_port));
        let e = Expose::start(&self.cluster.node, port, target)
            .await
            .unwrap_or_else(|e| panic!("exposing 127.0.0.1:{local_port} to the pods: {e}"));
        self.exposed.push(e);
    }

    /// A jwt role named after the service account `ns/sa` (the sidecar's default role) with a
    /// policy of `hcl` plus lease renewal and revocation.
    pub async fn role(&self, ns: &str, sa: &str, hcl: &str) {
        let policy = format!(
            "{hcl}\npath \"sys/leases/renew\" {{ capabilities = [\"update\"] }}\npath \"sys/leases/revoke\" {{ capabilities = [\"update\"] }}\n"
        );
        self.bao.policy(sa, &policy).await;
        keyward_testkit::jwt::role(&self.bao, sa, ns, sa, "10m", "1h", &[sa]).await;
    }

    /// Runs the pods of an injected stream (each started as a kubelet would: sidecar, its
    /// startupProbe, init containers to completion, apps).
    pub async fn run(&mut self, injected: &str) {
        let manifests = Manifests::parse(injected)
            .unwrap_or_else(|e| panic!("the injected stream: {e}\n{injected}"));
        if let Err(e) = self.cluster.apply(&manifests, NODE_NAMES).await {
            self.cluster.dump_logs();
            panic!("running the injected pods: {e}");
        }
    }

    pub fn pod(&self, ns: &str, name: &str) -> &Pod {
        self.cluster.pod(ns, name).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pod_mut(&mut self, ns: &str, name: &str) -> &mut Pod {
        self.cluster
            .pod_mut(ns, name)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every record of a pod's audit log (the sidecar writes it in the socket volume).
    pub fn audit(&self, ns: &str, name: &str) -> Vec<Value> {
        let dir = self
            .pod(ns, name)
            .volume("keyward-socket")
            .unwrap_or_else(|| panic!("pod {ns}/{name} has no keyward-socket volume"));
        keyward_testkit::audit_window(&dir.join("audit.log"))
    }

    /// The sidecar's and each container's logs, for a failure message.
    pub fn logs(&self, ns: &str, name: &str, containers: &[&str]) -> String {
        let p = self.pod(ns, name);
        ["keyward", "keyward-install"]
            .iter()
            .chain(containers)
            .map(|c| format!("--- {ns}/{name} {c} ---\n{}", p.logs(c)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
