//! A node agent for the test cluster (keyward_test_cluster / scripts/cluster.sh): it does what
//! a kubelet does, enough for pods created through the real kube-apiserver to run. Test
//! support, not product code.
//!
//! - Registers a Node (capacity, allocatable, a Ready condition, addresses) and renews its
//!   Lease in `kube-node-lease` every 10 s, so the node lifecycle controller never taints it.
//! - Lists and watches the pods bound to it (`fieldSelector=spec.nodeName=NAME`) and runs each
//!   with the pod runner ([`crate::pod`]): a network namespace per pod, a PID namespace per
//!   container, native sidecars first with the apps gated on their startupProbe, Memory
//!   emptyDirs as tmpfs of their sizeLimit, projected volumes. The pod spec as the API server
//!   stores it is the only source of how each container runs; images map to local binaries
//!   (the stand-in for a container runtime, as podrun does).
//! - Projected service-account tokens come from the TokenRequest API with the source's
//!   audience and expirationSeconds and a Pod boundObjectRef (name and uid), rewritten at 80%
//!   of their lifetime as the kubelet does.
//! - Writes pod status back (phase, PodScheduled/PodReadyToStartContainers/Initialized/
//!   ContainersReady/Ready, initContainerStatuses and containerStatuses with states and exit
//!   codes, podIP, hostIP), so `kubectl get pods`, `kubectl wait` and Jobs work.
//! - On deletion (deletionTimestamp set) stops the containers (SIGTERM, the deletion's grace
//!   period, SIGKILL), then deletes the pod object with grace 0 and a uid precondition, as the
//!   kubelet does, and removes the pod's network namespace.
//! - Service names: **the node agent's own stand-in for kube-proxy and cluster DNS** (no
//!   iptables, no DNS server). It watches EndpointSlices and writes every ready endpoint's
//!   address as `SERVICE.NAMESPACE.svc` and `SERVICE.NAMESPACE.svc.cluster.local` into the
//!   `/etc/hosts` every container sees. Pods therefore reach a Service's pods directly on their
//!   target port: the Service's `port` must equal its `targetPort`, and cluster IPs route
//!   nowhere.
//!
//! It talks to the API server over HTTPS with the node's client certificate
//! (`system:node:NAME`, so the Node authorizer and NodeRestriction apply as to a kubelet), plus
//! `system:node-proxier` for EndpointSlices (`Cluster::node_credentials`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::manifest::PodDef;
use crate::net::{Expose, Host, NetMode, Network};
use crate::pod::{
    ContainerState, Image, IssuedToken, Pod, PodEnv, PodOptions, TokenFn, TokenRequest,
};
use crate::{jwt, Error, Result};

/// The name pods reach the API server by (`KUBERNETES_SERVICE_HOST`): one the API server's
/// certificate carries, resolving to the node host.
pub const API_NAME: &str = "kubernetes.default.svc";

/// How the agent reaches the API server and what it runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Node's name (the client certificate must be `system:node:NAME`).
    pub name: String,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// PEM files: the cluster CA, the node's client certificate and key.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Image reference prefixes and the binary standing in for each image's entrypoint.
    pub images: Vec<(String, PathBuf)>,
    /// Names that resolve to the node host in every pod (servers the test runs there, as
    /// `vault.vault.svc` in the shop).
    pub node_names: Vec<String>,
    /// When projected tokens are refreshed, as a fraction of their lifetime (the kubelet's 0.8).
    pub token_refresh_fraction: f64,
    /// The API server's egress socket for cluster traffic (`Cluster::egress_socket`): the agent
    /// serves HTTP CONNECT there into the node's network, as konnectivity does for a real
    /// control plane, so the API server reaches pod IPs (webhooks behind Services).
    pub egress_socket: Option<PathBuf>,
    /// Directories the mapped images hold that pods mount volumes on (`/etc/keyward/tls` in
    /// the chart's Deployment): the pod runner shares the host's root, so the agent creates
    /// each missing one on the host as an empty mountpoint (left in place, as the runner leaves
    /// `/keyward`), the stand-in for the image's root filesystem.
    pub image_dirs: Vec<PathBuf>,
    /// The delay before restarting a container that exited again: the first restart is at
    /// once, then this doubles up to the second value (the kubelet's 10 s and 5 min).
    pub restart_backoff: (Duration, Duration),
}

impl NodeConfig {
    pub fn new(name: &str, server: &str, ca: &Path, cert: &Path, key: &Path) -> NodeConfig {
        NodeConfig {
            name: name.to_owned(),
            server: server.to_owned(),
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            images: Vec::new(),
            node_names: Vec::new(),
            token_refresh_fraction: 0.8,
            egress_socket: None,
            image_dirs: Vec::new(),
            restart_backoff: (Duration::from_secs(10), Duration::from_secs(300)),
        }
    }
}

/// A small client for the API server's REST interface with the node's certificate.
#[derive(Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(server: &str, ca: &Path, cert: &Path, key: &Path) -> Result<Api> {
        let read =
            |p: &Path| std::fs::read(p).map_err(Error::io(format!("reading {}", p.display())));
        let ca = reqwest::Certificate::from_pem(&read(ca)?)
            .map_err(|e| Error::Setup(format!("the cluster CA: {e}")))?;
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| Error::Setup(format!("the node's client certificate: {e}")))?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(id)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Setup(format!("HTTP client: {e}")))?;
        Ok(Api {
            base: server.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// `METHOD PATH` with a JSON body (`content_type` for patches); (status, body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Setup(format!("API server {method} {path}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Like [`Api::call`], failing unless the answer is 2xx (the error carries the API
    /// server's message).
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, v) = self.call(method.clone(), path, content_type, body).await?;
        if !(200..300).contains(&status) {
            return Err(Error::Setup(format!(
                "API server {method} {path}: {status}: {}",
                v["message"].as_str().unwrap_or("(no message)")
            )));
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.ok(reqwest::Method::GET, path, "", None).await
    }

    async fn merge_patch(&self, path: &str, body: &Value) -> Result<Value> {
        self.ok(
            reqwest::Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(body),
        )
        .await
    }

    /// TokenRequest for a projected token: audience, expiry, bound to the pod (name and uid).
    pub async fn request_token(&self, r: &TokenRequest) -> Result<IssuedToken> {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": r.audience.iter().collect::<Vec<_>>(),
                "expirationSeconds": r.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": r.pod_name, "uid": r.pod_uid},
            },
        });
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            r.namespace, r.service_account
        );
        let v = self
            .ok(
                reqwest::Method::POST,
                &path,
                "application/json",
                Some(&body),
            )
            .await?;
        let token = v["status"]["token"]
            .as_str()
            .ok_or_else(|| Error::Setup(format!("POST {path}: no status.token in the answer")))?
            .to_owned();
        let (iat, exp) = token_times(&token)
            .ok_or_else(|| Error::Setup(format!("POST {path}: the token has no iat/exp")))?;
        Ok(IssuedToken {
            token,
            issued_at: UNIX_EPOCH + Duration::from_secs(iat),
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }

    /// Lists `path?query` and then watches it from the list's resourceVersion, calling
    /// `on(Event)` for each change; relists when the watch expires (410) or fails. Runs until
    /// the task is aborted.
    async fn list_watch(&self, path: &str, query: &str, mut on: impl FnMut(Event)) {
        let sep = if query.is_empty() { "" } else { "&" };
        loop {
            let list = match self.get(&format!("{path}?{query}")).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("node agent: listing {path}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut rv = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            on(Event::Synced(
                list["items"].as_array().cloned().unwrap_or_default(),
            ));
            'watch: loop {
                let url = format!(
                    "{}{path}?{query}{sep}watch=1&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion={rv}",
                    self.base
                );
                let mut resp = match self.client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => {
                        eprintln!("node agent: watching {path}: {}", r.status());
                        break 'watch;
                    }
                    Err(e) => {
                        eprintln!("node agent: watching {path}: {e}");
                        break 'watch;
                    }
                };
                let mut buf: Vec<u8> = Vec::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            buf.extend_from_slice(&chunk);
                            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=i).collect();
                                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                                    continue;
                                };
                                let obj = ev["object"].clone();
                                match ev["type"].as_str().unwrap_or_default() {
                                    "ERROR" => break 'watch,
                                    t => {
                                        if let Some(v) = obj["metadata"]["resourceVersion"].as_str()
                                        {
                                            rv = v.to_owned();
                                        }
                                        match t {
                                            "ADDED" | "MODIFIED" => on(Event::Changed(obj)),
                                            "DELETED" => on(Event::Deleted(obj)),
                                            _ => {}
                                        }
                                    }
                                }
                            }
                        }
                        // The server ended the watch (timeoutSeconds): watch on from rv.
                        Ok(None) => continue 'watch,
                        Err(_) => break 'watch,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

enum Event {
    /// A full list: every object that exists now.
    Synced(Vec<Value>),
    Changed(Value),
    Deleted(Value),
}

/// `iat` and `exp` of a JWT (read, not verified: the API server just issued it to us).
fn token_times(token: &str) -> Option<(u64, u64)> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let header = jsonwebtoken::decode_header(token).ok()?;
    v.algorithms = vec![header.alg];
    let data =
        jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_secret(&[]), &v)
            .ok()?;
    Some((data.claims["iat"].as_u64()?, data.claims["exp"].as_u64()?))
}

/// RFC 3339 in UTC, as the API server writes times (`2026-12-02T01:42:22Z`); `micros` adds
/// microseconds (a Lease's MicroTime).
pub fn rfc3339(t: SystemTime, micros: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if micros {
        format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
            d.subsec_micros()
        )
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// What the agent knows about a pod it runs.
struct PodHandle {
    namespace: String,
    name: String,
    /// Deletion requested: the grace period to stop with.
    delete: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
    /// Host pids of the containers' main processes, once started.
    pids: Arc<Mutex<Vec<(String, u32)>>>,
    dir: PathBuf,
}

/// The `/etc/hosts` every container sees: the node names, each pod's own name, and the
/// Services' ready endpoints (the agent's kube-proxy/DNS stand-in).
#[derive(Default)]
struct HostsTable {
    node_ip: Option<Ipv4Addr>,
    node_names: Vec<String>,
    /// pod uid → (address, pod name).
    pods: BTreeMap<String, (Ipv4Addr, String)>,
    /// EndpointSlice namespace/name → (Service namespace, Service name, ready addresses).
    slices: BTreeMap<String, (String, String, Vec<String>)>,
}

impl HostsTable {
    fn render(&self) -> String {
        let mut lines = vec![
            "127.0.0.1\tlocalhost".to_owned(),
            "::1\tlocalhost ip6-localhost ip6-loopback".to_owned(),
        ];
        if let Some(ip) = self.node_ip {
            lines.push(format!("{ip}\tnode {}", self.node_names.join(" ")));
        }
        for (ip, name) in self.pods.values() {
            lines.push(format!("{ip}\t{name}"));
        }
        let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (ns, svc, addrs) in self.slices.values() {
            for a in addrs {
                services.entry(a.clone()).or_default().extend([
                    format!("{svc}.{ns}.svc"),
                    format!("{svc}.{ns}.svc.cluster.local"),
                ]);
            }
        }
        for (ip, names) in services {
            lines.push(format!("{ip}\t{}", names.join(" ")));
        }
        lines.join("\n") + "\n"
    }
}

struct Shared {
    config: NodeConfig,
    api: Api,
    node_host: Host,
    net: Mutex<Option<Network>>,
    pods: Mutex<BTreeMap<String, PodHandle>>,
    /// Uids of pods this agent ran and finished: never started again (a late watch event).
    done: Mutex<std::collections::BTreeSet<String>>,
    hosts: Mutex<HostsTable>,
    hosts_file: PathBuf,
    run_dir: PathBuf,
    images: Vec<Image>,
    issuer: Arc<jwt::Issuer>,
    /// The variables a kubelet gives every container for the API server
    /// (`KUBERNETES_SERVICE_HOST`, ...); empty when the API server is not on loopback.
    service_env: Vec<(String, String)>,
}

impl Shared {
    fn write_hosts(&self) {
        let text = self.hosts.lock().map(|h| h.render()).unwrap_or_default();
        // In place: every container bind-mounts this inode.
        if let Err(e) = std::fs::write(&self.hosts_file, text) {
            eprintln!("node agent: writing {}: {e}", self.hosts_file.display());
        }
    }
}

/// A running node agent. [`Node::stop`] stops every pod and the agent; dropping it does the
/// same without waiting for graceful termination.
pub struct Node {
    pub name: String,
    /// The node's own network namespace: its address is the Node's InternalIP and every pod's
    /// hostIP; `node_names` resolve to it.
    pub host: Host,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// The API server as pods reach it (`kubernetes.default.svc:443` on the node host).
    _api_expose: Option<Expose>,
    dir: Option<tempfile::TempDir>,
}

impl Node {
    /// Creates the network, registers the Node and starts watching pods bound to it.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let api = Api::new(&config.server, &config.ca, &config.cert, &config.key)?;
        let dir = tempfile::Builder::new()
            .prefix("keyward-node.")
            .tempdir()
            .map_err(Error::io("creating the node directory"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod node directory"))?;
        let images = stage_images(dir.path(), &config.images)?;
        for d in &config.image_dirs {
            if !d.is_absolute() {
                return Err(Error::Setup(format!(
                    "image directory {} is not an absolute path",
                    d.display()
                )));
            }
            std::fs::create_dir_all(d).map_err(Error::io(format!(
                "creating the image directory {} on the host (a mountpoint)",
                d.display()
            )))?;
        }
        let mut net = Network::create()?;
        if net.mode != NetMode::Namespaces {
            return Err(Error::Setup(
                "the node agent needs network namespaces (root and `ip`, see scripts/deps.sh core)"
                    .into(),
            ));
        }
        let node_host = net.add_host("node")?;
        let hosts_file = dir.path().join("hosts");
        // The API server for pods (the kubelet's KUBERNETES_SERVICE_* variables): the agent's
        // stand-in for the `kubernetes` Service is a listener on the node host's port 443
        // forwarding to the API server on loopback, under the name its certificate carries.
        let api_addr = config
            .server
            .strip_prefix("https://")
            .and_then(|a| a.trim_end_matches('/').parse::<std::net::SocketAddr>().ok())
            .filter(|a| a.ip().is_loopback());
        let (api_expose, service_env, mut node_names) = match api_addr {
            Some(a) => (
                Some(Expose::start(&node_host, 443, a).await?),
                vec![
                    ("KUBERNETES_SERVICE_HOST".to_owned(), API_NAME.to_owned()),
                    ("KUBERNETES_SERVICE_PORT".to_owned(), "443".to_owned()),
                    ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), "443".to_owned()),
                ],
                vec![
                    "kubernetes".to_owned(),
                    "kubernetes.default".to_owned(),
                    API_NAME.to_owned(),
                    format!("{API_NAME}.cluster.local"),
                ],
            ),
            None => (None, Vec::new(), Vec::new()),
        };
        node_names.extend(config.node_names.iter().cloned());
        let shared = Arc::new(Shared {
            api: api.clone(),
            node_host: node_host.clone(),
            net: Mutex::new(Some(net)),
            pods: Mutex::new(BTreeMap::new()),
            done: Mutex::new(std::collections::BTreeSet::new()),
            hosts: Mutex::new(HostsTable {
                node_ip: Some(node_host.ip),
                node_names,
                ..HostsTable::default()
            }),
            hosts_file: hosts_file.clone(),
            run_dir: dir.path().to_path_buf(),
            images,
            issuer: Arc::new(jwt::Issuer::new()),
            service_env,
            config: config.clone(),
        });
        shared.write_hosts();
        std::fs::set_permissions(&hosts_file, std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io("chmod hosts file"))?;

        register(&api, &config.name, node_host.ip).await?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(heartbeat(
            api.clone(),
            config.name.clone(),
            node_host.ip,
        )));
        {
            let s = shared.clone();
            let api = api.clone();
            let q = format!("fieldSelector=spec.nodeName%3D{}", config.name);
            tasks.push(tokio::spawn(async move {
                api.list_watch("/api/v1/pods", &q, |ev| on_pod_event(&s, ev))
                    .await;
            }));
        }
        {
            let s = shared.clone();
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                api.list_watch("/apis/discovery.k8s.io/v1/endpointslices", "", |ev| {
                    on_slice_event(&s, ev)
                })
                .await;
            }));
        }
        if let Some(path) = &config.egress_socket {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path).map_err(Error::io(format!(
                "binding the egress socket {}",
                path.display()
            )))?;
            tasks.push(tokio::spawn(serve_egress(listener, shared.clone())));
        }
        Ok(Node {
            name: config.name.clone(),
            host: node_host,
            shared,
            tasks,
            _api_expose: api_expose,
            dir: Some(dir),
        })
    }

    /// The API client (the node's credentials).
    pub fn api(&self) -> &Api {
        &self.shared.api
    }

    fn pod_dir(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        let pods = self.shared.pods.lock().ok()?;
        pods.values()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.dir.clone())
    }

    /// What a container of a running pod wrote to stdout and stderr (empty if unknown).
    pub fn logs(&self, namespace: &str, pod: &str, container: &str) -> String {
        self.pod_dir(namespace, pod)
            .and_then(|d| {
                std::fs::read_to_string(d.join("logs").join(format!("{container}.log"))).ok()
            })
            .unwrap_or_default()
    }

    /// The host directory of a running pod's volume.
    pub fn volume(&self, namespace: &str, pod: &str, volume: &str) -> Option<PathBuf> {
        self.pod_dir(namespace, pod)
            .map(|d| d.join("volumes").join(volume))
    }

    /// Host pids of a running pod's containers' main processes (name, pid), once started.
    pub fn pids(&self, namespace: &str, pod: &str) -> Vec<(String, u32)> {
        let Ok(pods) = self.shared.pods.lock() else {
            return Vec::new();
        };
        pods.values()
            .find(|p| p.namespace == namespace && p.name == pod)
            .and_then(|p| p.pids.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }

    /// The agent's stand-in for `kubectl exec` (it serves no kubelet API): runs `argv` in a
    /// running container's mount, UTS, network and PID namespaces with its main process's
    /// environment, uid, gid and groups (read from /proc). (exit code, stdout, stderr).
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: &[&str],
    ) -> Result<(i32, String, String)> {
        let pid = self
            .pids(namespace, pod)
            .into_iter()
            .find(|(n, _)| n == container)
            .map(|p| p.1)
            .ok_or_else(|| {
                Error::Setup(format!(
                    "no running container {container} in pod {namespace}/{pod} on this node"
                ))
            })?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(Error::io(format!("reading /proc/{pid}/status")))?;
        let field = |name: &str| -> Vec<String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let (uid, gid) = (field("Uid:"), field("Gid:"));
        let (Some(uid), Some(gid)) = (uid.first(), gid.first()) else {
            return Err(Error::Setup(format!("/proc/{pid}/status has no Uid/Gid")));
        };
        let groups = field("Groups:").join(",");
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .map_err(Error::io(format!("reading /proc/{pid}/environ")))?;
        let env: Vec<(String, String)> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect();
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg(format!("--target={pid}"))
            .args(["--mount", "--uts", "--net", "--pid", "--wd=/", "--"])
            .arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            cmd.arg(format!("--groups={groups}"));
        }
        let out = cmd
            .arg("--")
            .args(argv)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(Error::io("running nsenter"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The `/etc/hosts` the pods see now.
    pub fn hosts_file(&self) -> String {
        std::fs::read_to_string(&self.shared.hosts_file).unwrap_or_default()
    }

    /// Stops the agent: every pod is stopped (SIGTERM, then SIGKILL after at most `grace`),
    /// the watches end, the namespaces and directories are removed. The Node object stays (as
    /// a kubelet that stops leaves it).
    pub async fn stop(mut self, grace: Duration) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let handles: Vec<PodHandle> = self
            .shared
            .pods
            .lock()
            .map(|mut p| std::mem::take(&mut *p).into_values().collect())
            .unwrap_or_default();
        for h in &handles {
            let _ = h.delete.send(Some(grace));
        }
        for h in handles {
            // The pod task stops its containers, then (the object is still there) deletes it.
            let _ = tokio::time::timeout(grace + Duration::from_secs(30), h.task).await;
        }
        self.cleanup();
    }

    fn cleanup(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Ok(mut pods) = self.shared.pods.lock() {
            for (_, h) in std::mem::take(&mut *pods) {
                h.task.abort();
            }
        }
        // Deleting the namespaces kills whatever still runs in them.
        if let Ok(mut net) = self.shared.net.lock() {
            net.take();
        }
        self.dir.take();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Copies each image's binary into the node directory ("pulling" it).
fn stage_images(dir: &Path, images: &[(String, PathBuf)]) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for (i, (prefix, bin)) in images.iter().enumerate() {
        let entrypoint = bin
            .file_name()
            .ok_or_else(|| {
                Error::Setup(format!("image binary {} has no file name", bin.display()))
            })?
            .to_string_lossy()
            .into_owned();
        let bin_dir = dir.join("images").join(i.to_string());
        std::fs::create_dir_all(&bin_dir).map_err(Error::io("image dir"))?;
        let dst = bin_dir.join(&entrypoint);
        if std::fs::hard_link(bin, &dst).is_err() {
            std::fs::copy(bin, &dst).map_err(Error::io(format!("copying {}", bin.display())))?;
        }
        for d in [dir.join("images"), bin_dir.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                .map_err(Error::io("chmod image dir"))?;
        }
        out.push(Image {
            prefix: prefix.clone(),
            bin_dir,
            entrypoint,
        });
    }
    Ok(out)
}

fn node_status(ip: Ipv4Addr, name: &str) -> Value {
    let now = rfc3339(SystemTime::now(), false);
    let cond = |t: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let capacity =
        json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "50Gi"});
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "keyward node agent"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "keyward node agent"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "keyward node agent"),
            cond("Ready", "True", "KubeletReady", "keyward node agent is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                      {"type": "Hostname", "address": name}],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "keyward test node", "containerRuntimeVersion": "podrun://0",
            "kubeletVersion": "keyward-node-agent", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }})
}

/// Registers the Node (or takes over an existing one of that name) and marks it Ready.
async fn register(api: &Api, name: &str, ip: Ipv4Addr) -> Result<()> {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        }},
        "spec": {},
    });
    let (status, v) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/nodes",
            "application/json",
            Some(&node),
        )
        .await?;
    if !(200..300).contains(&status) && status != 409 {
        return Err(Error::Setup(format!(
            "registering Node {name}: {status}: {}",
            v["message"].as_str().unwrap_or("(no message)")
        )));
    }
    api.merge_patch(
        &format!("/api/v1/nodes/{name}/status"),
        &node_status(ip, name),
    )
    .await?;
    renew_lease(api, name).await
}

/// Creates or renews the node's Lease in kube-node-lease (40 s, as the kubelet).
async fn renew_lease(api: &Api, name: &str) -> Result<()> {
    let now = rfc3339(SystemTime::now(), true);
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}");
    let patch =
        json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
    let (status, _) = api
        .call(
            reqwest::Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(&patch),
        )
        .await?;
    if status == 404 {
        let node = api.get(&format!("/api/v1/nodes/{name}")).await?;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"],
            }]},
            "spec": patch["spec"],
        });
        api.ok(
            reqwest::Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            "application/json",
            Some(&lease),
        )
        .await?;
    } else if !(200..300).contains(&status) {
        return Err(Error::Setup(format!("renewing Lease {name}: {status}")));
    }
    Ok(())
}

/// Every 10 s: the Lease, and the Ready condition's heartbeat.
async fn heartbeat(api: Api, name: String, ip: Ipv4Addr) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = renew_lease(&api, &name).await {
            eprintln!("node agent: {e}");
        }
        if let Err(e) = api
            .merge_patch(
                &format!("/api/v1/nodes/{name}/status"),
                &node_status(ip, &name),
            )
            .await
        {
            eprintln!("node agent: node status: {e}");
        }
    }
}

fn meta_str(o: &Value, field: &str) -> String {
    o["metadata"][field].as_str().unwrap_or_default().to_owned()
}

/// The grace period a deletion asks for: the deletion's own, else the spec's (30 s default).
fn deletion_grace(pod: &Value) -> Duration {
    Duration::from_secs(
        pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .or(pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30),
    )
}

fn on_pod_event(s: &Arc<Shared>, ev: Event) {
    match ev {
        Event::Synced(items) => {
            let present: Vec<String> = items.iter().map(|p| meta_str(p, "uid")).collect();
            // Pods deleted while the watch was down.
            let gone: Vec<String> = s
                .pods
                .lock()
                .map(|p| p.keys().filter(|u| !present.contains(u)).cloned().collect())
                .unwrap_or_default();
            for uid in gone {
                if let Some(h) = s
                    .pods
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&uid).map(|h| h.delete.clone()))
                {
                    let _ = h.send(Some(Duration::ZERO));
                }
            }
            for p in items {
                pod_changed(s, p);
            }
        }
        Event::Changed(p) => pod_changed(s, p),
        Event::Deleted(p) => {
            let uid = meta_str(&p, "uid");
            if let Some(h) = s
                .pods
                .lock()
                .ok()
                .and_then(|m| m.get(&uid).map(|h| h.delete.clone()))
            {
                let _ = h.send(Some(deletion_grace(&p)));
            }
        }
    }
}

fn pod_changed(s: &Arc<Shared>, pod: Value) {
    let uid = meta_str(&pod, "uid");
    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
    let known = s
        .pods
        .lock()
        .ok()
        .and_then(|m| m.get(&uid).map(|h| h.delete.clone()));
    match known {
        Some(delete) => {
            if deleting && delete.borrow().is_none() {
                let _ = delete.send(Some(deletion_grace(&pod)));
            }
        }
        None => {
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if deleting {
                // Not ours to run (any more): let the deletion complete.
                let api = s.api.clone();
                tokio::spawn(async move { delete_pod(&api, &pod).await });
                return;
            }
            let finished_here = s.done.lock().is_ok_and(|d| d.contains(&uid));
            if phase == "Succeeded" || phase == "Failed" || finished_here {
                return;
            }
            let (tx, rx) = watch::channel(None);
            let pids = Arc::new(Mutex::new(Vec::new()));
            let namespace = meta_str(&pod, "namespace");
            let name = meta_str(&pod, "name");
            let dir = s.run_dir.join(format!("{namespace}_{name}"));
            let task = tokio::spawn(run_pod(s.clone(), pod, rx, pids.clone()));
            if let Ok(mut m) = s.pods.lock() {
                m.insert(
                    uid,
                    PodHandle {
                        namespace,
                        name,
                        delete: tx,
                        task,
                        pids,
                        dir,
                    },
                );
            }
        }
    }
}

/// An EndpointSlice's Service (namespace, name) and the addresses of its ready endpoints (an
/// unknown readiness counts as ready, as the API documents for consumers).
fn slice_entry(o: &Value) -> (String, String, Vec<String>) {
    let svc = o["metadata"]["labels"]["kubernetes.io/service-name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let addrs: Vec<String> = o["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
                .filter_map(|e| e["addresses"].as_array())
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (meta_str(o, "namespace"), svc, addrs)
}

fn on_slice_event(s: &Arc<Shared>, ev: Event) {
    let key = |o: &Value| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name"));
    let entry = slice_entry;
    if let Ok(mut h) = s.hosts.lock() {
        match ev {
            Event::Synced(items) => {
                h.slices = items
                    .iter()
                    .filter(|o| o["addressType"] == "IPv4")
                    .map(|o| (key(o), entry(o)))
                    .filter(|(_, (_, svc, _))| !svc.is_empty())
                    .collect();
            }
            Event::Changed(o) if o["addressType"] == "IPv4" => {
                let e = entry(&o);
                if !e.1.is_empty() {
                    h.slices.insert(key(&o), e);
                }
            }
            Event::Deleted(o) => {
                h.slices.remove(&key(&o));
            }
            Event::Changed(_) => {}
        }
    }
    s.write_hosts();
}

/// Deletes the pod object with grace 0 and a uid precondition (the kubelet's last step).
async fn delete_pod(api: &Api, pod: &Value) {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        meta_str(pod, "namespace"),
        meta_str(pod, "name")
    );
    let body = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                      "preconditions": {"uid": meta_str(pod, "uid")}});
    match api
        .call(
            reqwest::Method::DELETE,
            &path,
            "application/json",
            Some(&body),
        )
        .await
    {
        Ok((s, _)) if (200..300).contains(&s) || s == 404 || s == 409 => {}
        Ok((s, v)) => eprintln!(
            "node agent: DELETE {path}: {s}: {}",
            v["message"].as_str().unwrap_or_default()
        ),
        Err(e) => eprintln!("node agent: {e}"),
    }
}

/// A pod's status as the agent reports it.
struct StatusWriter {
    api: Api,
    path: String,
    spec: Value,
    pod_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    start_time: String,
    /// condition type → (status, lastTransitionTime).
    conditions: BTreeMap<&'static str, (bool, String)>,
    last: Value,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

impl StatusWriter {
    fn condition(&mut self, t: &'static str, v: bool) -> Value {
        let now = rfc3339(SystemTime::now(), false);
        let e = self.conditions.entry(t).or_insert((v, now.clone()));
        if e.0 != v {
            *e = (v, now);
        }
        json!({"type": t, "status": if e.0 { "True" } else { "False" }, "lastProbeTime": null,
               "lastTransitionTime": e.1})
    }

    /// Builds the status from the containers' states and writes it when it changed.
    async fn write(
        &mut self,
        phase: Phase,
        initialized: bool,
        states: &[ContainerState],
        trackers: &[lifecycle::Tracker],
        message: Option<&str>,
    ) {
        let spec = self.spec.clone();
        let statuses = |list: &Value, init: bool| -> Vec<Value> {
            list.as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or_default();
                    let st = states.iter().find(|s| s.name == name && s.init == init);
                    let t = trackers.iter().find(|t| t.name == name);
                    container_status(c, st, init, initialized, t)
                })
                .collect()
        };
        let init_statuses = statuses(&spec["initContainers"], true);
        let app_statuses = statuses(&spec["containers"], false);
        let containers_ready = phase == Phase::Running
            && app_statuses.iter().all(|c| c["ready"] == true)
            && init_statuses
                .iter()
                .zip(
                    spec["initContainers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                )
                .filter(|(_, c)| c["restartPolicy"] == "Always")
                .all(|(s, _)| s["ready"] == true);
        let conditions = vec![
            self.condition("PodReadyToStartContainers", true),
            self.condition("Initialized", initialized),
            self.condition("Ready", containers_ready),
            self.condition("ContainersReady", containers_ready),
            self.condition("PodScheduled", true),
        ];
        let mut status = json!({
            "phase": phase.as_str(),
            "conditions": conditions,
            "podIP": self.pod_ip.to_string(),
            "podIPs": [{"ip": self.pod_ip.to_string()}],
            "hostIP": self.host_ip.to_string(),
            "hostIPs": [{"ip": self.host_ip.to_string()}],
            "startTime": self.start_time,
            "containerStatuses": app_statuses,
            "qosClass": "BestEffort",
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = Value::Array(init_statuses);
        }
        if let Some(m) = message {
            status["message"] = json!(m);
            status["reason"] = json!("NodeAgentError");
        }
        if status == self.last {
            return;
        }
        // qosClass is set by the API server at creation and immutable: never patch it.
        let mut patch = status.clone();
        if let Some(o) = patch.as_object_mut() {
            o.remove("qosClass");
        }
        match self
            .api
            .merge_patch(&self.path, &json!({"status": patch}))
            .await
        {
            Ok(_) => self.last = status,
            Err(e) => eprintln!("node agent: pod status: {e}"),
        }
    }
}

fn container_status(
    c: &Value,
    st: Option<&ContainerState>,
    init: bool,
    initialized: bool,
    tracker: Option<&lifecycle::Tracker>,
) -> Value {
    let name = c["name"].as_str().unwrap_or_default();
    let image = c["image"].as_str().unwrap_or_default();
    let sidecar = c["restartPolicy"] == "Always";
    let (state, ready, started) = match st {
        None => {
            let reason = if init || initialized {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            (json!({"waiting": {"reason": reason}}), false, false)
        }
        Some(s) => match s.exit {
            None => {
                // Started once its startupProbe passed; ready once its readinessProbe passes
                // too (without one: once started).
                let (started, ready) = tracker.map_or((s.started, s.started), |t| t.view(s));
                (
                    json!({"running": {"startedAt": rfc3339(s.started_at, false)}}),
                    ready,
                    started,
                )
            }
            Some((code, finished)) => (
                json!({"terminated": {
                    "exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" },
                    "startedAt": rfc3339(s.started_at, false),
                    "finishedAt": rfc3339(finished, false),
                    "containerID": format!("podrun://{name}"),
                }}),
                // A completed run-to-completion init container counts as ready.
                init && !sidecar && code == 0,
                false,
            ),
        },
    };
    let mut v = json!({
        "name": name,
        "image": image,
        "imageID": format!("podrun://{image}"),
        "ready": ready,
        "restartCount": tracker.map_or(0, |t| t.restarts),
        "started": started,
        "state": state,
    });
    if let Some(last) = tracker.and_then(|t| t.last_state.clone()) {
        v["lastState"] = last;
    }
    if st.is_some() {
        v["containerID"] = json!(format!("podrun://{name}"));
    }
    v
}

fn pod_def(pod: &Value) -> PodDef {
    let labels = pod["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    PodDef {
        namespace: meta_str(pod, "namespace"),
        name: meta_str(pod, "name"),
        uid: meta_str(pod, "uid"),
        labels,
        service_account: pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        spec: pod["spec"].clone(),
    }
}

/// The ConfigMaps the pod's volumes name, from the API server (the Node authorizer lets a node
/// read those of pods bound to it). A missing one is left out (the runner then refuses the
/// pod unless it is optional).
async fn config_maps(
    api: &Api,
    def: &PodDef,
) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let mut names = Vec::new();
    for v in def.spec["volumes"].as_array().cloned().unwrap_or_default() {
        if let Some(n) = v["configMap"]["name"].as_str() {
            names.push(n.to_owned());
        }
        for src in v["projected"]["sources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(n) = src["configMap"]["name"].as_str() {
                names.push(n.to_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    for n in names {
        let path = format!("/api/v1/namespaces/{}/configmaps/{n}", def.namespace);
        if let Ok(cm) = api.get(&path).await {
            let data = cm["data"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            out.insert((def.namespace.clone(), n), data);
        }
    }
    out
}

/// One pod's life on this node: sandbox, containers, status, deletion.
async fn run_pod(
    s: Arc<Shared>,
    pod: Value,
    mut delete: watch::Receiver<Option<Duration>>,
    pids: Arc<Mutex<Vec<(String, u32)>>>,
) {
    let def = with_service_env(pod_def(&pod), &s.service_env);
    let uid = def.uid.clone();
    let host_name = format!("{}/{}", def.namespace, def.name);
    let host = match s
        .net
        .lock()
        .ok()
        .and_then(|mut n| n.as_mut().map(|n| n.add_host(&host_name)))
    {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            eprintln!("node agent: pod {host_name}: network: {e}");
            return;
        }
        None => return,
    };
    if let Ok(mut h) = s.hosts.lock() {
        h.pods.insert(uid.clone(), (host.ip, def.name.clone()));
    }
    s.write_hosts();
    let mut status = StatusWriter {
        api: s.api.clone(),
        path: format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            def.namespace, def.name
        ),
        spec: def.spec.clone(),
        pod_ip: host.ip,
        host_ip: s.node_host.ip,
        start_time: rfc3339(SystemTime::now(), false),
        conditions: BTreeMap::new(),
        last: Value::Null,
    };
    status.write(Phase::Pending, false, &[], &[], None).await;

    let env = PodEnv {
        images: s.images.clone(),
        issuer: s.issuer.clone(),
        hosts_file: s.hosts_file.clone(),
        run_dir: s.run_dir.clone(),
        config_maps: config_maps(&s.api, &def).await,
    };
    let opts = PodOptions {
        tokens: Some(token_fn(s.api.clone())),
        node_name: Some(s.config.name.clone()),
        host_ip: Some(s.node_host.ip),
        refresh_fraction: Some(s.config.token_refresh_fraction),
    };
    let policy = def.spec["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_owned();
    let restart_always = policy == "Always";
    let spec_grace = Duration::from_secs(
        def.spec["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    );
    let trackers = lifecycle::trackers(&def.spec);
    let started = match &trackers {
        Err(e) => Some(Err(Error::Setup(format!("pod {host_name}: {e}")))),
        Ok(_) => tokio::select! {
            r = Pod::start_with(def.clone(), host.clone(), &env, opts) => Some(r),
            _ = delete.wait_for(Option::is_some) => None,
        },
    };
    let mut trackers = trackers.unwrap_or_default();
    let mut running = match started {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("node agent: pod {host_name}: {e}");
            status
                .write(Phase::Failed, false, &[], &[], Some(&e.to_string()))
                .await;
            None
        }
        // Deleted while starting: dropping the start stopped what it had started.
        None => None,
    };
    let update_pids = |p: &mut Pod| {
        let states = p.container_states();
        if let Ok(mut v) = pids.lock() {
            *v = states
                .iter()
                .filter_map(|c| Some((c.name.clone(), p.pid(&c.name)?)))
                .collect();
        }
    };
    if let Some(p) = running.as_mut() {
        update_pids(p);
    }
    let round = lifecycle::Round {
        node: &s.node_host,
        pod_ip: host.ip,
        policy: &policy,
        grace: spec_grace,
        backoff: s.config.restart_backoff,
        label: &host_name,
    };
    // Running: probes, restarts by the restartPolicy, and status changes, until the apps
    // complete (restartPolicy Never/OnFailure) or the pod is deleted.
    let mut finished = false;
    while let Some(p) = running.as_mut() {
        if delete.borrow().is_some() {
            break;
        }
        if !finished && lifecycle::tick(&mut trackers, p, &round).await {
            update_pids(p);
        }
        let states = p.container_states();
        if !finished
            && !restart_always
            && p.apps_exited()
            && !lifecycle::app_restart_pending(&trackers)
        {
            // As the kubelet does once a pod's regular containers completed: stop the
            // sidecars, then report the pod's terminal phase.
            p.set_grace(spec_grace);
            let _ = p.stop().await;
            let states = p.container_states();
            let ok = states
                .iter()
                .filter(|c| !c.init)
                .all(|c| c.exit.is_some_and(|(code, _)| code == 0));
            let phase = if ok { Phase::Succeeded } else { Phase::Failed };
            status.write(phase, true, &states, &trackers, None).await;
            finished = true;
        }
        if !finished {
            status
                .write(Phase::Running, true, &states, &trackers, None)
                .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = delete.changed() => {}
        }
    }
    // Deleted: stop with the deletion's grace period, report, delete the object.
    let _ = delete.wait_for(Option::is_some).await;
    let grace = (*delete.borrow()).unwrap_or(Duration::ZERO);
    if let Some(mut p) = running.take() {
        if !finished {
            p.set_grace(grace);
            let _ = p.stop().await;
            let states = p.container_states();
            let ok = states
                .iter()
                .filter(|c| !c.init)
                .all(|c| c.exit.is_some_and(|(code, _)| code == 0));
            let phase = if restart_always || !ok {
                Phase::Failed
            } else {
                Phase::Succeeded
            };
            status.write(phase, true, &states, &trackers, None).await;
        }
        drop(p);
    }
    delete_pod(&s.api, &pod).await;
    if let Ok(mut h) = s.hosts.lock() {
        h.pods.remove(&uid);
    }
    s.write_hosts();
    if let Ok(mut n) = s.net.lock() {
        if let Some(n) = n.as_mut() {
            n.remove_host(&host_name);
        }
    }
    if let Ok(mut d) = s.done.lock() {
        d.insert(uid.clone());
    }
    if let Ok(mut m) = s.pods.lock() {
        m.remove(&uid);
    }
}

/// The agent's stand-in for konnectivity: the API server's egress socket for cluster traffic
/// (HTTP CONNECT, `--egress-selector-config-file` in scripts/cluster.sh). Each tunnel is dialled
/// from the node host's network namespace, and only to the address of a pod on this node.
async fn serve_egress(listener: tokio::net::UnixListener, s: Arc<Shared>) {
    while let Ok((conn, _)) = listener.accept().await {
        let s = s.clone();
        tokio::spawn(async move {
            if let Err(e) = egress_tunnel(conn, &s).await {
                eprintln!("node agent: egress: {e}");
            }
        });
    }
}

/// `CONNECT IP:PORT HTTP/1.1`: the target of a tunnel request, if it is one.
fn connect_target(head: &str) -> Option<std::net::SocketAddr> {
    let mut words = head.lines().next()?.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(target), Some(v)) if v.starts_with("HTTP/1.") => target.parse().ok(),
        _ => None,
    }
}

async fn egress_tunnel(mut conn: tokio::net::UnixStream, s: &Shared) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(Error::Setup("a CONNECT request head over 8 KiB".into()));
        }
        let n = conn
            .read(&mut byte)
            .await
            .map_err(Error::io("reading a CONNECT request"))?;
        if n == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let reply = |status: &str| format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
    let Some(target) = connect_target(&head) else {
        let _ = conn
            .write_all(reply("405 Method Not Allowed").as_bytes())
            .await;
        return Err(Error::Setup(format!(
            "not a CONNECT to IP:PORT: {:?}",
            head.lines().next().unwrap_or_default()
        )));
    };
    let is_pod = s.hosts.lock().is_ok_and(|h| {
        h.pods
            .values()
            .any(|(ip, _)| std::net::IpAddr::V4(*ip) == target.ip())
    });
    if !is_pod {
        let _ = conn.write_all(reply("403 Forbidden").as_bytes()).await;
        return Err(Error::Setup(format!(
            "CONNECT {target}: no pod of this node has that address"
        )));
    }
    let mut out = match s.node_host.connect(target).await {
        Ok(o) => o,
        Err(e) => {
            let _ = conn.write_all(reply("502 Bad Gateway").as_bytes()).await;
            return Err(e);
        }
    };
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .map_err(Error::io("answering CONNECT"))?;
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut out).await;
    Ok(())
}

/// The pod as a kubelet runs it: the service variables first in every container's env (the
/// pod's own entries, later, override them), as the kubelet adds them at run time.
fn with_service_env(mut def: PodDef, service_env: &[(String, String)]) -> PodDef {
    if service_env.is_empty() {
        return def;
    }
    for list in ["initContainers", "containers"] {
        if let Some(cs) = def.spec[list].as_array_mut() {
            for c in cs {
                let mut env: Vec<Value> = service_env
                    .iter()
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect();
                env.extend(c["env"].as_array().cloned().unwrap_or_default());
                c["env"] = Value::Array(env);
            }
        }
    }
    def
}

fn token_fn(api: Api) -> TokenFn {
    Arc::new(move |r: TokenRequest| {
        let api = api.clone();
        Box::pin(async move { api.request_token(&r).await })
    })
}

/// Probes and restarts: the kubelet's prober and restart manager for the pods the agent runs.
/// httpGet probes are sent from the node's network namespace to the pod's address (curl, no
/// certificate check, as the kubelet does not check one), tcpSocket probes connect from there,
/// exec probes run in the container. An exec startupProbe is the pod runner's (it gates the
/// next container's start); any other startupProbe is run here before readiness and liveness.
mod lifecycle {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::rfc3339;
    use crate::net::Host;
    use crate::pod::{ContainerState, Pod};

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) enum Action {
        Http {
            https: bool,
            path: String,
            port: u16,
            headers: Vec<(String, String)>,
        },
        Tcp {
            port: u16,
        },
        Exec(Vec<String>),
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) struct ProbeSpec {
        pub action: Action,
        pub initial_delay: Duration,
        pub period: Duration,
        pub timeout: Duration,
        pub success_threshold: u32,
        pub failure_threshold: u32,
    }

    /// A probe's port: a number, or the name of one of the container's ports.
    fn port(c: &Value, v: &Value) -> Result<u16, String> {
        if let Some(n) = v.as_u64() {
            return u16::try_from(n).map_err(|_| format!("port {n} is out of range"));
        }
        let name = v.as_str().ok_or("the probe names no port")?;
        if let Ok(n) = name.parse::<u16>() {
            return Ok(n);
        }
        c["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("no containerPort named {name:?}"))
    }

    /// `kind` (`readinessProbe`, ...) of container `c`, with the API's defaults.
    pub(super) fn probe_spec(c: &Value, kind: &str) -> Result<Option<ProbeSpec>, String> {
        let p = &c[kind];
        if p.is_null() {
            return Ok(None);
        }
        let secs = |k: &str, default: u64, min: u64| {
            Duration::from_secs(p[k].as_u64().unwrap_or(default).max(min))
        };
        let count = |k: &str, default: u64| p[k].as_u64().unwrap_or(default).clamp(1, 1000) as u32;
        let action = if let Some(cmd) = p["exec"]["command"].as_array() {
            Action::Exec(
                cmd.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
            )
        } else if p["httpGet"].is_object() {
            let h = &p["httpGet"];
            Action::Http {
                https: h["scheme"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("https")),
                path: h["path"].as_str().unwrap_or("/").to_owned(),
                port: port(c, &h["port"])?,
                headers: h["httpHeaders"]
                    .as_array()
                    .map(|hs| {
                        hs.iter()
                            .filter_map(|x| {
                                Some((
                                    x["name"].as_str()?.to_owned(),
                                    x["value"].as_str()?.to_owned(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        } else if p["tcpSocket"].is_object() {
            Action::Tcp {
                port: port(c, &p["tcpSocket"]["port"])?,
            }
        } else {
            return Err(format!(
                "{kind}: only exec, httpGet and tcpSocket probes are run by the node agent"
            ));
        };
        Ok(Some(ProbeSpec {
            action,
            initial_delay: secs("initialDelaySeconds", 0, 0),
            period: secs("periodSeconds", 10, 1),
            timeout: secs("timeoutSeconds", 1, 1),
            success_threshold: count("successThreshold", 1),
            failure_threshold: count("failureThreshold", 3),
        }))
    }

    /// Runs one probe; Err carries why it failed.
    async fn run(
        action: &Action,
        timeout: Duration,
        pod: &Pod,
        container: &str,
        node: &Host,
        pod_ip: Ipv4Addr,
    ) -> Result<(), String> {
        match action {
            Action::Exec(argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                match tokio::time::timeout(timeout, pod.exec(container, &argv)).await {
                    Ok(Ok(o)) if o.status.success() => Ok(()),
                    Ok(Ok(o)) => Err(format!(
                        "{}: {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("timed out after {timeout:?}")),
                }
            }
            Action::Tcp { port } => {
                match tokio::time::timeout(timeout, node.connect((pod_ip, *port).into())).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("timed out after {timeout:?}")),
                }
            }
            Action::Http {
                https,
                path,
                port,
                headers,
            } => {
                let scheme = if *https { "https" } else { "http" };
                let url = format!("{scheme}://{pod_ip}:{port}{path}");
                let mut argv = node.nsenter_args();
                argv.extend(
                    [
                        "curl",
                        "-sS",
                        "-k",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-A",
                        "kube-probe/1.37",
                    ]
                    .map(str::to_owned),
                );
                argv.push("--max-time".into());
                argv.push(format!("{:.1}", timeout.as_secs_f64()));
                for (k, v) in headers {
                    argv.push("-H".into());
                    argv.push(format!("{k}: {v}"));
                }
                argv.push(url.clone());
                let out = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| format!("running curl for {url}: {e}"))?;
                let code: u16 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                // The kubelet's rule: 200 <= code < 400 is a success.
                if (200..400).contains(&code) {
                    Ok(())
                } else if code == 0 {
                    Err(format!(
                        "GET {url}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                } else {
                    Err(format!("GET {url}: HTTP {code}"))
                }
            }
        }
    }

    #[derive(Default, Debug)]
    struct State {
        successes: u32,
        failures: u32,
        next: Option<Instant>,
        last_error: String,
    }

    impl State {
        /// Whether the probe is due now (its initial delay from `since`, then every period).
        fn due(&mut self, spec: &ProbeSpec, since: Instant, now: Instant) -> bool {
            let next = *self.next.get_or_insert(since + spec.initial_delay);
            if now < next {
                return false;
            }
            self.next = Some(now + spec.period);
            true
        }

        /// Counts a result; Some(verdict) once a threshold is reached.
        fn record(&mut self, spec: &ProbeSpec, r: Result<(), String>) -> Option<bool> {
            match r {
                Ok(()) => {
                    self.failures = 0;
                    self.successes = self.successes.saturating_add(1);
                    (self.successes >= spec.success_threshold).then_some(true)
                }
                Err(e) => {
                    self.successes = 0;
                    self.failures = self.failures.saturating_add(1);
                    self.last_error = e;
                    (self.failures >= spec.failure_threshold).then_some(false)
                }
            }
        }
    }

    /// The delay before a container's next restart: none for the first, then `initial`
    /// doubling up to `max` (the kubelet's CrashLoopBackOff: 10 s to 5 min).
    pub(super) fn backoff(restarts: u32, initial: Duration, max: Duration) -> Duration {
        if restarts == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(restarts.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        initial.saturating_mul(factor).min(max)
    }

    /// What the agent tracks of one restartable container (an app or a native sidecar).
    #[derive(Debug)]
    pub(super) struct Tracker {
        pub name: String,
        sidecar: bool,
        /// A startupProbe the agent runs (not exec: those are the runner's).
        startup: Option<ProbeSpec>,
        readiness: Option<ProbeSpec>,
        liveness: Option<ProbeSpec>,
        st_startup: State,
        st_ready: State,
        st_live: State,
        /// Its startupProbe (the agent's) passed, or it has none.
        pub started: bool,
        pub ready: bool,
        pub restarts: u32,
        /// `lastState` for the status: the run before the current one.
        pub last_state: Option<Value>,
        since: Instant,
        /// When the exited container starts again.
        pub restart_at: Option<Instant>,
    }

    /// The trackers of a pod's apps and native sidecars; an unsupported probe is an error
    /// naming it.
    pub(super) fn trackers(spec: &Value) -> Result<Vec<Tracker>, String> {
        let mut out = Vec::new();
        for (list, init) in [("initContainers", true), ("containers", false)] {
            for c in spec[list].as_array().cloned().unwrap_or_default() {
                let sidecar = init && c["restartPolicy"] == "Always";
                if init && !sidecar {
                    continue;
                }
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                let named = |e: String| format!("container {name}: {e}");
                let startup = probe_spec(&c, "startupProbe")
                    .map_err(named)?
                    .filter(|p| !matches!(p.action, Action::Exec(_)));
                out.push(Tracker {
                    sidecar,
                    started: startup.is_none(),
                    startup,
                    readiness: probe_spec(&c, "readinessProbe").map_err(named)?,
                    liveness: probe_spec(&c, "livenessProbe").map_err(named)?,
                    st_startup: State::default(),
                    st_ready: State::default(),
                    st_live: State::default(),
                    ready: false,
                    restarts: 0,
                    last_state: None,
                    since: Instant::now(),
                    restart_at: None,
                    name,
                });
            }
        }
        Ok(out)
    }

    impl Tracker {
        /// Ready for the status: started, and its readiness probe passing (or none).
        pub fn view(&self, s: &ContainerState) -> (bool, bool) {
            let started = s.started && self.started;
            (started, started && self.ready)
        }

        fn restarted(&mut self) {
            self.restarts = self.restarts.saturating_add(1);
            self.started = self.startup.is_none();
            self.ready = false;
            self.st_startup = State::default();
            self.st_ready = State::default();
            self.st_live = State::default();
            self.since = Instant::now();
            self.restart_at = None;
        }
    }

    /// What one round needs of the pod.
    pub(super) struct Round<'a> {
        pub node: &'a Host,
        pub pod_ip: Ipv4Addr,
        /// The pod's restartPolicy.
        pub policy: &'a str,
        pub grace: Duration,
        pub backoff: (Duration, Duration),
        pub label: &'a str,
    }

    /// One round: the probes due now, then the restarts due now. Returns whether a container
    /// was restarted (its pid changed).
    pub(super) async fn tick(trackers: &mut [Tracker], pod: &mut Pod, r: &Round<'_>) -> bool {
        let mut restarted = false;
        let states = pod.container_states();
        for t in trackers.iter_mut() {
            let Some(st) = states.iter().find(|s| s.name == t.name) else {
                continue;
            };
            let now = Instant::now();
            if let Some((code, finished)) = st.exit {
                t.ready = false;
                let restart = t.sidecar
                    || match r.policy {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                if !restart {
                    continue;
                }
                let at = match t.restart_at {
                    Some(at) => at,
                    None => {
                        t.last_state = Some(json!({"terminated": {
                            "exitCode": code,
                            "reason": if code == 0 { "Completed" } else { "Error" },
                            "startedAt": rfc3339(st.started_at, false),
                            "finishedAt": rfc3339(finished, false),
                            "containerID": format!("podrun://{}", t.name),
                        }}));
                        let at = now + backoff(t.restarts, r.backoff.0, r.backoff.1);
                        t.restart_at = Some(at);
                        at
                    }
                };
                if now >= at {
                    match pod.restart(&t.name, r.grace).await {
                        Ok(()) => {
                            eprintln!(
                                "node agent: pod {}: container {} restarted ({} restarts)",
                                r.label,
                                t.name,
                                t.restarts + 1
                            );
                            t.restarted();
                            restarted = true;
                        }
                        Err(e) => {
                            eprintln!("node agent: pod {}: restarting {}: {e}", r.label, t.name);
                            t.restarts = t.restarts.saturating_add(1);
                            t.restart_at = None;
                        }
                    }
                }
                continue;
            }
            if !st.started {
                continue;
            }
            if !t.started {
                let Some(spec) = t.startup.clone() else {
                    continue;
                };
                if !t.st_startup.due(&spec, t.since, now) {
                    continue;
                }
                let res = run(&spec.action, spec.timeout, pod, &t.name, r.node, r.pod_ip).await;
                match t.st_startup.record(&spec, res) {
                    Some(true) => t.started = true,
                    Some(false) => {
                        eprintln!(
                            "node agent: pod {}: container {} failed its startupProbe: {}; killing it",
                            r.label, t.name, t.st_startup.last_error
                        );
                        let _ = pod.stop_container(&t.name, r.grace).await;
                        continue;
                    }
                    None => continue,
                }
            }
            match t.readiness.clone() {
                None => t.ready = true,
                Some(spec) => {
                    if t.st_ready.due(&spec, t.since, now) {
                        let res =
                            run(&spec.action, spec.timeout, pod, &t.name, r.node, r.pod_ip).await;
                        if let Some(v) = t.st_ready.record(&spec, res) {
                            t.ready = v;
                        }
                    }
                }
            }
            if let Some(spec) = t.liveness.clone() {
                if t.st_live.due(&spec, t.since, now) {
                    let res = run(&spec.action, spec.timeout, pod, &t.name, r.node, r.pod_ip).await;
                    if t.st_live.record(&spec, res) == Some(false) {
                        eprintln!(
                            "node agent: pod {}: container {} failed its livenessProbe {} times ({}); killing it",
                            r.label, t.name, spec.failure_threshold, t.st_live.last_error
                        );
                        t.ready = false;
                        let _ = pod.stop_container(&t.name, r.grace).await;
                    }
                }
            }
        }
        restarted
    }

    /// Whether an app container will start again (its restart is scheduled).
    pub(super) fn app_restart_pending(trackers: &[Tracker]) -> bool {
        trackers
            .iter()
            .any(|t| !t.sidecar && t.restart_at.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::{connect_target, rfc3339, slice_entry, with_service_env, HostsTable};
    use crate::manifest::PodDef;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn probes_take_the_api_defaults_and_resolve_named_ports() {
        use super::lifecycle::{probe_spec, Action};
        let c = json!({"name": "injector", "ports": [{"name": "webhook", "containerPort": 8443}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "webhook", "scheme": "HTTPS",
                                           "httpHeaders": [{"name": "X-A", "value": "b"}]}},
            "livenessProbe": {"tcpSocket": {"port": 9090}, "periodSeconds": 2, "failureThreshold": 1,
                              "initialDelaySeconds": 4, "timeoutSeconds": 3, "successThreshold": 1},
            "startupProbe": {"grpc": {"port": 1}},
            "badPort": {"tcpSocket": {"port": "metrics"}}});
        let r = probe_spec(&c, "readinessProbe")
            .expect("valid")
            .expect("present");
        assert_eq!(
            r.action,
            Action::Http {
                https: true,
                path: "/healthz".into(),
                port: 8443,
                headers: vec![("X-A".into(), "b".into())]
            }
        );
        assert_eq!(
            (
                r.period,
                r.timeout,
                r.initial_delay,
                r.success_threshold,
                r.failure_threshold
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(1),
                Duration::ZERO,
                1,
                3
            )
        );
        let l = probe_spec(&c, "livenessProbe")
            .expect("valid")
            .expect("present");
        assert_eq!(l.action, Action::Tcp { port: 9090 });
        assert_eq!(
            (l.period, l.timeout, l.initial_delay, l.failure_threshold),
            (
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4),
                1
            )
        );
        assert!(probe_spec(&c, "none").expect("absent is fine").is_none());
        let e = probe_spec(&c, "startupProbe").expect_err("grpc is not run");
        assert!(e.contains("startupProbe") && e.contains("httpGet"), "{e}");
        let e = probe_spec(&c, "badPort").expect_err("unknown port name");
        assert!(e.contains("metrics"), "{e}");
    }

    #[test]
    fn restarts_back_off_like_the_kubelet() {
        use super::lifecycle::backoff;
        let (i, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (0..8).map(|n| backoff(n, i, m).as_secs()).collect();
        assert_eq!(got, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX, i, m), m);
    }

    #[test]
    fn egress_tunnels_only_connect_requests_to_an_address() {
        assert_eq!(
            connect_target("CONNECT 10.200.0.5:8443 HTTP/1.1\r\nHost: 10.200.0.5:8443\r\n\r\n"),
            Some(([10, 200, 0, 5], 8443).into())
        );
        assert_eq!(connect_target("GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            connect_target("CONNECT example.com:443 HTTP/1.1\r\n\r\n"),
            None
        );
        assert_eq!(connect_target("CONNECT 10.200.0.5:8443\r\n\r\n"), None);
    }

    #[test]
    fn the_pods_own_env_overrides_the_service_variables() {
        let def = PodDef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            labels: Default::default(),
            service_account: "default".into(),
            spec: json!({"initContainers": [{"name": "s"}],
                         "containers": [{"name": "a", "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "1"}]}]}),
        };
        let env = vec![
            (
                "KUBERNETES_SERVICE_HOST".to_owned(),
                "kubernetes.default.svc".to_owned(),
            ),
            ("KUBERNETES_SERVICE_PORT".to_owned(), "443".to_owned()),
        ];
        let def = with_service_env(def, &env);
        assert_eq!(
            def.spec["initContainers"][0]["env"][0]["value"],
            "kubernetes.default.svc"
        );
        let app = def.spec["containers"][0]["env"].as_array().expect("env");
        assert_eq!(app.len(), 3);
        // Later entries win in the runner, as in a kubelet: the pod's own value comes last.
        assert_eq!(
            app[2],
            json!({"name": "KUBERNETES_SERVICE_PORT", "value": "1"})
        );
    }

    #[test]
    fn services_resolve_to_their_ready_endpoints_only() {
        let slice = serde_json::json!({
            "metadata": {"name": "orders-x1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "orders"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.200.0.3"], "conditions": {"ready": true}},
                {"addresses": ["10.200.0.4"], "conditions": {"ready": false}},
                {"addresses": ["10.200.0.5"], "conditions": {}},
            ],
        });
        let e = slice_entry(&slice);
        assert_eq!(
            e,
            (
                "shop".to_owned(),
                "orders".to_owned(),
                vec!["10.200.0.3".to_owned(), "10.200.0.5".to_owned()]
            )
        );
        let mut t = HostsTable {
            node_ip: Some([10, 200, 0, 2].into()),
            node_names: vec!["vault.vault.svc".to_owned()],
            ..HostsTable::default()
        };
        t.slices.insert("shop/orders-x1".to_owned(), e);
        t.pods.insert(
            "uid-1".to_owned(),
            ([10, 200, 0, 3].into(), "orders-abc".to_owned()),
        );
        let hosts = t.render();
        assert!(
            hosts.contains("10.200.0.2\tnode vault.vault.svc\n"),
            "{hosts}"
        );
        assert!(hosts.contains("10.200.0.3\torders-abc\n"), "{hosts}");
        assert!(
            hosts.contains("10.200.0.3\torders.shop.svc orders.shop.svc.cluster.local\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("10.200.0.4"), "{hosts}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_175_742) + Duration::from_micros(12);
        assert_eq!(rfc3339(t, false), "2026-12-02T01:42:22Z");
        assert_eq!(rfc3339(t, true), "2026-12-02T01:42:22.000012Z");
        assert_eq!(rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap, false), "2000-02-29T00:00:00Z");
    }
}
