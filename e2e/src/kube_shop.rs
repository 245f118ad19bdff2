//! The shop on the test cluster (docs/cluster.md): a real control plane
//! (`keyward_test_cluster`), the node agent ([`crate::node`]), `keyward injector` behind the
//! chart's webhook, and `kubectl apply -f examples/shop` into namespaces labelled
//! `keyward.io/inject=enabled` and `pod-security.kubernetes.io/enforce=restricted`. OpenBao
//! and PostgreSQL are the shop's own ([`Shop::servers`]), OpenBao's jwt auth trusting the API
//! server's service-account key. Shared by `tests/cluster_shop.rs` and `kubeshop` (the
//! cluster mode of scripts/demo.sh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyward_test_cluster::{Cluster, Injector, ISSUER};
use serde_json::{json, Value};

use crate::net::Expose;
use crate::node::{Node, NodeConfig};
use crate::shop::{Shop, Tools, KEYWARD_IMAGE, NODE_NAMES};
use crate::{Error, Result};

/// The node's name.
pub const NODE: &str = "keyward-node";
/// Safety net for conditions on a loaded machine; never slept for.
const WAIT: Duration = Duration::from_secs(150);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn cerr(what: &str) -> impl FnOnce(keyward_test_cluster::Error) -> Error + '_ {
    move |e| Error::Setup(format!("{what}: {e}"))
}

/// The running shop on the test cluster. Field order is drop order: the pods' node first,
/// the control plane, then OpenBao and PostgreSQL.
pub struct KubeShop {
    pub node: Node,
    _exposes: Vec<Expose>,
    pub injector: Injector,
    pub cluster: Cluster,
    pub shop: Shop,
    /// How long the control plane took to start.
    pub cluster_start: Duration,
}

impl KubeShop {
    /// Starts everything and applies `examples/shop`; returns once the Deployments are
    /// Available and other/client is Ready. `say` narrates.
    pub async fn up(tools: Tools, say: &dyn Fn(&str)) -> Result<KubeShop> {
        let keyward = tools.keyward.clone();
        let examples = tools.examples.clone();
        let shop = Shop::servers(tools, say).await?;
        say("the control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler on 127.0.0.1 (scripts/cluster.sh)");
        let t = Instant::now();
        let cluster = blocking(Cluster::start).map_err(cerr("starting the test cluster"))?;
        let cluster_start = t.elapsed();
        // docs/vault-setup.md: the service-account public key and the issuer.
        let sa_pub = cluster
            .sa_public_key_pem()
            .map_err(cerr("the service-account key"))?;
        shop.bao
            .try_api(
                "POST",
                "auth/jwt/config",
                Some(json!({"jwt_validation_pubkeys": [sa_pub], "bound_issuer": ISSUER})),
            )
            .await?;
        say("OpenBao's jwt auth now verifies the API server's service-account tokens");

        let creds =
            blocking(|| cluster.node_credentials(NODE)).map_err(cerr("node credentials"))?;
        let mut cfg = NodeConfig::new(NODE, &creds.server, &creds.ca, &creds.cert, &creds.key);
        cfg.images = vec![(KEYWARD_IMAGE.to_owned(), keyward.clone())];
        cfg.node_names = NODE_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let node = Node::start(cfg).await?;
        let bao_port: u16 = shop
            .bao
            .addr()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::Setup(format!("OpenBao's address {}", shop.bao.addr())))?;
        let mut exposes = Vec::new();
        for (port, to) in [(8200, bao_port), (5432, shop.pg_port)] {
            exposes.push(Expose::start(&node.host, port, ([127, 0, 0, 1], to).into()).await?);
        }
        say(&format!(
            "node {NODE} registered (the node agent: a network namespace per pod, a PID namespace per container, TokenRequest tokens)"
        ));
        let injector =
            blocking(|| Injector::start(&keyward, &examples.join("injector-config.yaml")))
                .map_err(cerr("keyward injector"))?;
        blocking(|| cluster.register_webhook(&injector, &[]))
            .map_err(cerr("the chart's webhook"))?;
        say("keyward injector behind the chart's MutatingWebhookConfiguration");

        let dir = examples.join("shop");
        say(&format!("kubectl apply -f {}", dir.display()));
        let applied = blocking(|| cluster.kubectl(&["apply", "-f", &dir.to_string_lossy()]))
            .map_err(|e| Error::Setup(format!("kubectl apply: {e}\n{}", injector.log())))?;
        for l in applied.lines() {
            println!("    {l}");
        }
        let ks = KubeShop {
            node,
            _exposes: exposes,
            injector,
            cluster,
            shop,
            cluster_start,
        };
        for (ns, what, cond) in [
            ("shop", "deployment/orders", "Available"),
            ("shop", "deployment/frontend", "Available"),
            ("shop", "deployment/reports", "Available"),
            ("other", "pod/client", "Ready"),
        ] {
            ks.wait(&["-n", ns, &format!("--for=condition={cond}"), what])?;
        }
        Ok(ks)
    }

    /// `kubectl wait --timeout=150s ARGS`; the error shows the pods.
    pub fn wait(&self, args: &[&str]) -> Result<()> {
        let mut a = vec!["wait", "--timeout=150s"];
        a.extend_from_slice(args);
        blocking(|| self.cluster.kubectl(&a))
            .map(drop)
            .map_err(|e| {
                Error::Setup(format!(
                    "{e}\n{}",
                    self.kubectl(&["get", "pods", "-A", "-o", "wide"])
                        .unwrap_or_default()
                ))
            })
    }

    /// kubectl against the cluster: its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        blocking(|| self.cluster.kubectl(args)).map_err(cerr("kubectl"))
    }

    /// The one pod of `app=APP` in `ns`.
    pub fn pod_name(&self, ns: &str, app: &str) -> Result<String> {
        let pods = blocking(|| {
            self.cluster
                .get_json(&["-n", ns, "pods", "-l", &format!("app={app}")])
        })
        .map_err(cerr("listing pods"))?;
        pods["items"][0]["metadata"]["name"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Setup(format!("no pod of app={app} in {ns}")))
    }

    /// The stored pod.
    pub fn pod(&self, ns: &str, name: &str) -> Result<Value> {
        blocking(|| self.cluster.get_json(&["-n", ns, "pod", name])).map_err(cerr("get pod"))
    }

    /// GET on the pod's keyward socket from its `app` container (as the app's uid and
    /// groups): the body, or Err with curl's exit code and output.
    pub async fn socket_get(&self, ns: &str, pod: &str, path: &str) -> Result<String> {
        let url = format!("http://keyward{path}");
        let script = "curl -sS --max-time 10 --unix-socket \"$KEYWARD_SOCKET\" \"$1\"";
        match self
            .node
            .exec(ns, pod, "app", &["sh", "-c", script, "sh", &url])
            .await?
        {
            (0, out, _) => Ok(out),
            (code, out, err) => Err(Error::Setup(format!(
                "{ns}/{pod}: curl {url}: exit {code}: {out}{err}"
            ))),
        }
    }

    /// `curl ADDR` in a pod's app container: (exit code, output).
    pub async fn curl(&self, ns: &str, pod: &str, url: &str) -> Result<(i32, String)> {
        let (code, out, err) = self
            .node
            .exec(ns, pod, "app", &["curl", "-sS", "--max-time", "20", url])
            .await?;
        Ok((code, format!("{out}{err}")))
    }

    /// Polls `f` (every 200 ms) until it is Ok; the last error after 150 s.
    pub async fn until<T, F: std::future::Future<Output = Result<T>>>(
        what: &str,
        mut f: impl FnMut() -> F,
    ) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Setup(format!(
                        "timed out after {WAIT:?} waiting for {what}; last: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The frontend page once it shows orders (frontend -> orders over mTLS).
    pub async fn frontend_page(&self) -> Result<String> {
        let frontend = self.pod_name("shop", "frontend")?;
        Self::until("the frontend page to show orders", || async {
            match self
                .curl("shop", &frontend, "http://127.0.0.1:8080/")
                .await?
            {
                (0, page) if page.contains("open orders") => Ok(page),
                (code, page) => Err(Error::Setup(format!("curl exit {code}: {page}"))),
            }
        })
        .await
    }

    /// Host path of a pod's audit log (in its keyward-socket volume).
    pub fn audit_log(&self, ns: &str, pod: &str) -> Result<PathBuf> {
        self.node
            .volume(ns, pod, "keyward-socket")
            .map(|d| d.join("audit.log"))
            .ok_or_else(|| Error::Setup(format!("{ns}/{pod} has no keyward-socket volume")))
    }

    /// A pod's audit records.
    pub fn audit_records(&self, ns: &str, pod: &str) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(self.audit_log(ns, pod)?).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Waits for an audit record of `pod` matching `pred`.
    pub async fn wait_audit(
        &self,
        ns: &str,
        pod: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        Self::until(what, || async {
            self.audit_records(ns, pod)?
                .into_iter()
                .find(|r| pred(r))
                .ok_or_else(|| Error::Setup(format!("no such record in {ns}/{pod}'s audit log")))
        })
        .await
    }

    /// `keyward audit ARGS... LOG` on a pod's audit log: (success, output).
    pub fn audit(&self, ns: &str, pod: &str, args: &[&str]) -> Result<(bool, String)> {
        let out = std::process::Command::new(&self.shop.tools.keyward)
            .arg("audit")
            .args(args)
            .arg(self.audit_log(ns, pod)?)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(Error::io("running keyward audit"))?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// Stops the pods (SIGTERM, `grace`), then everything else.
    pub async fn down(self, grace: Duration) {
        let KubeShop {
            node,
            _exposes,
            injector,
            cluster,
            shop,
            ..
        } = self;
        node.stop(grace).await;
        drop(_exposes);
        drop(injector);
        blocking(move || drop(cluster));
        drop(shop);
    }
}
