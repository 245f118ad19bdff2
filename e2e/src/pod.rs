//! One pod: its volumes, its containers started as a kubelet would, its stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::manifest::PodDef;
use crate::net::Host;
use crate::{jwt, sh_quote, Error, Result};

/// What every pod of a run shares.
pub struct PodEnv {
    /// Image name prefixes and the directory holding their entrypoint binary (first on PATH).
    pub images: Vec<Image>,
    /// The service-account token issuer (the API server's key).
    pub issuer: Arc<jwt::Issuer>,
    /// The `/etc/hosts` every container sees.
    pub hosts_file: PathBuf,
    /// Parent of the pods' directories (mode 0755 so non-root containers can traverse it).
    pub run_dir: PathBuf,
    /// ConfigMaps for configMap volumes: (namespace, name) → data.
    pub config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
}

/// What a projected `serviceAccountToken` source asks for: the TokenRequest the kubelet sends
/// (`POST .../serviceaccounts/SA/token` with the source's audience and expirationSeconds and a
/// Pod boundObjectRef).
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub namespace: String,
    pub service_account: String,
    /// None: the API server's own audiences.
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

/// A token and its lifetime as the issuer states it.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Where projected tokens come from (the node agent: the API server's TokenRequest).
pub type TokenFn = Arc<dyn Fn(TokenRequest) -> BoxFuture<Result<IssuedToken>> + Send + Sync>;

/// How a pod runs beyond its spec: what a node agent adds to the runner.
#[derive(Clone, Default)]
pub struct PodOptions {
    /// Projected service-account tokens from here instead of the run's issuer.
    pub tokens: Option<TokenFn>,
    /// `spec.nodeName` for the downward API (default `node`).
    pub node_name: Option<String>,
    /// `status.hostIP` for the downward API (default the pod's own address).
    pub host_ip: Option<Ipv4Addr>,
    /// When a projected token is rewritten, as a fraction of its lifetime (default 0.8, as the
    /// kubelet does).
    pub refresh_fraction: Option<f64>,
}

/// When a token issued at `issued_at` and expiring at `expires_at` is due for refresh: at
/// `fraction` of its lifetime (the kubelet: 0.8), measured from `now`. At least 100 ms.
pub fn refresh_delay(
    issued_at: SystemTime,
    expires_at: SystemTime,
    fraction: f64,
    now: SystemTime,
) -> Duration {
    let life = expires_at
        .duration_since(issued_at)
        .unwrap_or(Duration::ZERO);
    let due = issued_at + life.mul_f64(fraction.clamp(0.0, 1.0));
    due.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100))
}

/// A container's state, as a kubelet reports it in `containerStatuses`.
#[derive(Clone, Debug)]
pub struct ContainerState {
    pub name: String,
    /// An init container (native sidecar or run-to-completion).
    pub init: bool,
    /// A native sidecar (initContainer with restartPolicy Always).
    pub sidecar: bool,
    pub started_at: SystemTime,
    /// Started, and its startupProbe (if any) passed.
    pub started: bool,
    /// Exit code (128 + signal when killed) and when it exited.
    pub exit: Option<(i32, SystemTime)>,
}

/// A container image the runner can "pull": a binary standing in for its filesystem.
#[derive(Clone, Debug)]
pub struct Image {
    /// Images whose reference starts with this (`ghcr.io/keyward/keyward`).
    pub prefix: String,
    /// Directory with the entrypoint binary, put first on the container's PATH.
    pub bin_dir: PathBuf,
    /// The entrypoint's file name in `bin_dir` (`keyward`).
    pub entrypoint: String,
}

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Directories every container gets as private tmpfs (so mountPaths below them touch no host
/// path). `/keyward` (where the injector mounts the `keyward exec` binary and rendered files)
/// exists on no host: the runner creates it, empty, the first time a container mounts below it.
const PRIVATE_DIRS: &[&str] = &["/run", "/srv", "/keyward"];

#[derive(Clone, Debug)]
struct Mount {
    volume: String,
    path: String,
    read_only: bool,
    /// `subPath`: a directory of the volume mounted instead of its root, created (with the
    /// root's mode) when missing, as the kubelet does.
    sub_path: String,
}

#[derive(Clone, Debug)]
struct Probe {
    exec: Vec<String>,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
}

/// A container as the spec describes it, resolved against the pod.
#[derive(Clone, Debug)]
struct ContainerSpec {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: String,
    mounts: Vec<Mount>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    no_new_privs: bool,
    drop_all_caps: bool,
    read_only_root: bool,
    startup_probe: Option<Probe>,
}

/// A started container.
struct Running {
    spec: ContainerSpec,
    /// Native sidecar (initContainer with restartPolicy Always).
    sidecar: bool,
    /// Any init container (sidecar or run-to-completion).
    init: bool,
    child: Child,
    exited: Option<std::process::ExitStatus>,
    started_at: SystemTime,
    finished_at: Option<SystemTime>,
    /// Its startupProbe passed (or it has none).
    probe_passed: bool,
}

impl Running {
    /// The container's process group (the `unshare` that holds its namespaces, and everything
    /// in the container): SIGKILL goes here.
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The container's main process as the host sees it: pid 1 of the container's own PID
    /// namespace (the only child of the `unshare` that created it). SIGTERM goes here, as a
    /// container runtime sends it; like any PID 1 it gets only the signals it handles.
    fn init_pid(&self) -> Option<Pid> {
        let id = self.child.id();
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
            .map(Pid::from_raw)
    }
    fn poll(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                self.finished_at = Some(SystemTime::now());
                // The container is gone: so is everything it started.
                let _ = killpg(self.pid(), Signal::SIGKILL);
            }
        }
        self.exited
    }
}

/// A running pod.
pub struct Pod {
    pub def: PodDef,
    pub host: Host,
    /// The pod's directory: `volumes/NAME` and `logs/CONTAINER.log`.
    pub dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    containers: Vec<Running>,
    token_tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
    hosts_file: PathBuf,
    opts: PodOptions,
    /// Memory-backed emptyDirs mounted (tmpfs) in the runner's mount namespace.
    tmpfs: Vec<PathBuf>,
}

fn perr(pod: &PodDef, problem: impl Into<String>) -> Error {
    Error::Pod {
        pod: format!("{}/{}", pod.namespace, pod.name),
        problem: problem.into(),
    }
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("chmod {}", p.display())))
}

fn chgrp(p: &Path, gid: Option<u32>) -> Result<()> {
    if let Some(g) = gid {
        nix::unistd::chown(p, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| Error::io(format!("chown {}", p.display()))(e.into()))?;
    }
    Ok(())
}

/// Writes `content` to `dir/name` atomically (as the kubelet's atomic writer does).
fn write_atomic(dir: &Path, name: &str, content: &[u8], mode: u32, gid: Option<u32>) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).map_err(Error::io(format!("writing {}", tmp.display())))?;
    chmod(&tmp, mode)?;
    chgrp(&tmp, gid)?;
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst).map_err(Error::io(format!("renaming to {}", dst.display())))
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

impl Pod {
    /// Creates the pod's volumes and starts its containers: native sidecars first (each
    /// waiting for its startupProbe), then other init containers to completion, then the app
    /// containers.
    pub async fn start(def: PodDef, host: Host, env: &PodEnv) -> Result<Pod> {
        Self::start_with(def, host, env, PodOptions::default()).await
    }

    /// [`Pod::start`] with what a node agent adds (tokens from the API server, the node's
    /// name and address).
    pub async fn start_with(
        def: PodDef,
        host: Host,
        env: &PodEnv,
        opts: PodOptions,
    ) -> Result<Pod> {
        let dir = env.run_dir.join(format!("{}_{}", def.namespace, def.name));
        std::fs::create_dir_all(dir.join("logs")).map_err(Error::io("pod dir"))?;
        std::fs::create_dir_all(dir.join("volumes")).map_err(Error::io("pod dir"))?;
        chmod(&dir, 0o755)?;
        chmod(&dir.join("volumes"), 0o755)?;
        let grace = Duration::from_secs(
            def.spec["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        );
        let mut pod = Pod {
            def,
            host,
            dir,
            volumes: BTreeMap::new(),
            containers: Vec::new(),
            token_tasks: Vec::new(),
            grace,
            hosts_file: env.hosts_file.clone(),
            opts,
            tmpfs: Vec::new(),
        };
        pod.make_volumes(env).await?;
        let spec = pod.def.spec.clone();
        for c in spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let sidecar = c["restartPolicy"].as_str() == Some("Always");
            let cs = pod.container_spec(&c, env)?;
            let name = cs.name.clone();
            pod.spawn(cs, sidecar, true)?;
            pod.wait_started(&name).await?;
            if sidecar {
                pod.wait_startup(&name).await?;
                pod.running(&name)?.probe_passed = true;
            } else {
                pod.wait_exit(&name).await?;
            }
        }
        let mut apps = Vec::new();
        for c in spec["containers"].as_array().cloned().unwrap_or_default() {
            let cs = pod.container_spec(&c, env)?;
            apps.push(cs.name.clone());
            let probe = cs.startup_probe.is_some();
            pod.spawn(cs, false, false)?;
            pod.running(apps.last().map(String::as_str).unwrap_or_default())?
                .probe_passed = !probe;
        }
        for name in apps {
            pod.wait_started(&name).await?;
        }
        Ok(pod)
    }

    fn fs_group(&self) -> Option<u32> {
        as_u32(&self.def.spec["securityContext"]["fsGroup"])
    }

    async fn make_volumes(&mut self, env: &PodEnv) -> Result<()> {
        let fs_group = self.fs_group();
        let volumes = self.def.spec["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for v in volumes {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let path = self.dir.join("volumes").join(&name);
            std::fs::create_dir_all(&path).map_err(Error::io("volume dir"))?;
            if v["emptyDir"].is_object() {
                if v["emptyDir"]["medium"].as_str() == Some("Memory") {
                    self.mount_tmpfs(&name, &path, &v["emptyDir"]["sizeLimit"])?;
                }
                chgrp(&path, fs_group)?;
                chmod(&path, if fs_group.is_some() { 0o2777 } else { 0o777 })?;
            } else if v["projected"].is_object() {
                chmod(&path, 0o755)?;
                let mode = as_u32(&v["projected"]["defaultMode"]).unwrap_or(0o644);
                for src in v["projected"]["sources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if let Some(t) = src.get("serviceAccountToken") {
                        self.project_token(&path, t, mode, fs_group, env).await?;
                    } else if let Some(cm) = src.get("configMap") {
                        self.project_config_map(&path, cm, mode, fs_group, env)?;
                    } else if let Some(d) = src.get("downwardAPI") {
                        self.project_downward_api(&name, &path, d, mode, fs_group)?;
                    } else {
                        return Err(perr(
                            &self.def,
                            format!("volume {name}: projected source {src} is not supported by the runner"),
                        ));
                    }
                }
            } else if let Some(cm) = v.get("configMap") {
                chmod(&path, 0o755)?;
                let mode = as_u32(&cm["defaultMode"]).unwrap_or(0o644);
                self.project_config_map(&path, cm, mode, fs_group, env)?;
            } else if let Some(d) = v.get("downwardAPI") {
                chmod(&path, 0o755)?;
                let mode = as_u32(&d["defaultMode"]).unwrap_or(0o644);
                self.project_downward_api(&name, &path, d, mode, fs_group)?;
            } else {
                return Err(perr(
                    &self.def,
                    format!("volume {name}: only emptyDir, configMap, downwardAPI and projected (serviceAccountToken, configMap, downwardAPI) volumes are supported by the runner"),
                ));
            }
            self.volumes.insert(name, path);
        }
        Ok(())
    }

    fn project_config_map(
        &self,
        dir: &Path,
        cm: &Value,
        mode: u32,
        gid: Option<u32>,
        env: &PodEnv,
    ) -> Result<()> {
        let name = cm["name"].as_str().unwrap_or_default();
        let key = (self.def.namespace.clone(), name.to_owned());
        let Some(data) = env.config_maps.get(&key) else {
            if cm["optional"].as_bool() == Some(true) {
                return Ok(());
            }
            return Err(perr(
                &self.def,
                format!(
                    "configMap {name} not found in namespace {} (add it to the manifests)",
                    self.def.namespace
                ),
            ));
        };
        match cm["items"].as_array() {
            Some(items) => {
                for it in items {
                    let k = it["key"].as_str().unwrap_or_default();
                    let p = it["path"].as_str().unwrap_or(k);
                    let v = data.get(k).ok_or_else(|| {
                        perr(&self.def, format!("configMap {name} has no key {k}"))
                    })?;
                    let m = as_u32(&it["mode"]).unwrap_or(mode);
                    write_atomic(dir, p, v.as_bytes(), m, gid)?;
                }
            }
            None => {
                for (k, v) in data {
                    write_atomic(dir, k, v.as_bytes(), mode, gid)?;
                }
            }
        }
        Ok(())
    }

    /// A Memory emptyDir: a tmpfs of `sizeLimit` bytes (unlimited without one) mounted in the
    /// runner's mount namespace, unmounted when the pod is dropped.
    fn mount_tmpfs(&mut self, name: &str, path: &Path, size: &Value) -> Result<()> {
        let mut opts = "mode=0777,nosuid,nodev".to_owned();
        if let Some(q) = size.as_str() {
            let bytes = parse_quantity(q).ok_or_else(|| {
                perr(
                    &self.def,
                    format!("volume {name}: sizeLimit {q:?} is not a quantity"),
                )
            })?;
            opts += &format!(",size={bytes}");
        }
        crate::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "podrun-emptydir"])
                .arg(path),
        )
        .map_err(|e| perr(&self.def, format!("volume {name}: mounting tmpfs: {e}")))?;
        self.tmpfs.push(path.to_path_buf());
        Ok(())
    }

    /// A downwardAPI volume or projected source: `items[].fieldRef` files.
    fn project_downward_api(
        &self,
        volume: &str,
        dir: &Path,
        d: &Value,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<()> {
        for it in d["items"].as_array().cloned().unwrap_or_default() {
            let p = it["path"].as_str().unwrap_or_default();
            let field = it["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
            let v = self.field_ref(field).ok_or_else(|| {
                perr(
                    &self.def,
                    format!("volume {volume}: downwardAPI item {p}: only fieldRef to metadata.name/namespace/uid/labels['...'], spec.* and status.podIP/hostIP is supported by the runner"),
                )
            })?;
            if p.is_empty() || p.contains("..") || p.starts_with('/') {
                return Err(perr(
                    &self.def,
                    format!("volume {volume}: downwardAPI path {p:?} is not a relative path"),
                ));
            }
            let m = as_u32(&it["mode"]).unwrap_or(mode);
            write_atomic(dir, p, v.as_bytes(), m, gid)?;
        }
        Ok(())
    }

    /// Writes the projected token now and again at 80% of its lifetime (the refresh fraction
    /// of [`PodOptions`]). Tokens come from [`PodOptions::tokens`] (the API server's
    /// TokenRequest) or else the run's issuer.
    async fn project_token(
        &mut self,
        dir: &Path,
        t: &Value,
        mode: u32,
        gid: Option<u32>,
        env: &PodEnv,
    ) -> Result<()> {
        let req = TokenRequest {
            namespace: self.def.namespace.clone(),
            service_account: self.def.service_account.clone(),
            audience: t["audience"].as_str().map(str::to_owned),
            expiration_seconds: t["expirationSeconds"].as_i64().unwrap_or(3600),
            pod_name: self.def.name.clone(),
            pod_uid: self.def.uid.clone(),
        };
        let fetch: TokenFn = match &self.opts.tokens {
            Some(f) => f.clone(),
            None => {
                let issuer = env.issuer.clone();
                Arc::new(move |r: TokenRequest| {
                    let mut claims = jwt::Claims::new(&r.namespace, &r.service_account);
                    claims.pod = r.pod_name.clone();
                    claims.audience = r.audience.clone().unwrap_or_else(|| jwt::ISSUER.to_owned());
                    claims.expires_in = r.expiration_seconds;
                    let now = SystemTime::now();
                    let issued = IssuedToken {
                        token: issuer.mint(&claims),
                        issued_at: now,
                        expires_at: now
                            + Duration::from_secs(
                                u64::try_from(r.expiration_seconds.max(1)).unwrap_or(1),
                            ),
                    };
                    Box::pin(async move { Ok(issued) })
                })
            }
        };
        let file = t["path"].as_str().unwrap_or("token").to_owned();
        let first = fetch(req.clone()).await.map_err(|e| {
            perr(
                &self.def,
                format!("service-account token for {}: {e}", file),
            )
        })?;
        write_atomic(dir, &file, first.token.as_bytes(), mode, gid)?;
        let fraction = self.opts.refresh_fraction.unwrap_or(0.8);
        let dir = dir.to_path_buf();
        let pod = format!("{}/{}", self.def.namespace, self.def.name);
        self.token_tasks.push(tokio::spawn(async move {
            let mut current = first;
            loop {
                let wait = refresh_delay(
                    current.issued_at,
                    current.expires_at,
                    fraction,
                    SystemTime::now(),
                );
                tokio::time::sleep(wait).await;
                match fetch(req.clone()).await {
                    Ok(t) => {
                        if let Err(e) = write_atomic(&dir, &file, t.token.as_bytes(), mode, gid) {
                            eprintln!(
                                "podrun: pod {pod}: writing a refreshed service-account token: {e}"
                            );
                        }
                        current = t;
                    }
                    Err(e) => {
                        eprintln!("podrun: pod {pod}: refreshing a service-account token: {e}");
                        // Retry soon, well before the current one expires.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
        Ok(())
    }

    fn field_ref(&self, path: &str) -> Option<String> {
        let d = &self.def;
        Some(match path {
            "metadata.name" => d.name.clone(),
            "metadata.namespace" => d.namespace.clone(),
            "metadata.uid" => d.uid.clone(),
            "spec.serviceAccountName" => d.service_account.clone(),
            "spec.nodeName" => self
                .opts
                .node_name
                .clone()
                .unwrap_or_else(|| "node".to_owned()),
            "status.podIP" => self.host.ip.to_string(),
            "status.hostIP" => self.opts.host_ip.unwrap_or(self.host.ip).to_string(),
            _ => {
                let label = path.strip_prefix("metadata.labels['")?.strip_suffix("']")?;
                d.labels.get(label)?.clone()
            }
        })
    }

    fn container_spec(&self, c: &Value, env: &PodEnv) -> Result<ContainerSpec> {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let image_ref = c["image"].as_str().unwrap_or_default();
        let image = env.images.iter().find(|i| image_ref.starts_with(&i.prefix));
        let path = match image {
            Some(i) => format!("{}:{BASE_PATH}", i.bin_dir.display()),
            None => BASE_PATH.to_owned(),
        };
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("HOSTNAME".into(), self.def.name.clone()),
            ("HOME".into(), "/".into()),
        ];
        for e in c["env"].as_array().cloned().unwrap_or_default() {
            let k = e["name"].as_str().unwrap_or_default().to_owned();
            let v = if let Some(v) = e["value"].as_str() {
                expand(v, &vars)
            } else if let Some(p) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                self.field_ref(p).ok_or_else(|| {
                    perr(&self.def, format!("container {name}: env {k}: fieldPath {p} is not supported by the runner"))
                })?
            } else if e.get("valueFrom").is_some() {
                return Err(perr(
                    &self.def,
                    format!("container {name}: env {k}: only value and fieldRef are supported by the runner"),
                ));
            } else {
                String::new()
            };
            vars.retain(|(n, _)| *n != k);
            vars.push((k, v));
        }
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .map(|s| expand(s, &vars))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut argv = strs(&c["command"]);
        if argv.is_empty() {
            match image {
                Some(i) => argv.push(i.entrypoint.clone()),
                None => {
                    return Err(perr(
                        &self.def,
                        format!("container {name}: image {image_ref} has no entrypoint the runner knows; set command"),
                    ))
                }
            }
        }
        argv.extend(strs(&c["args"]));
        let mounts = c["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| Mount {
                volume: m["name"].as_str().unwrap_or_default().to_owned(),
                path: m["mountPath"].as_str().unwrap_or_default().to_owned(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                sub_path: m["subPath"].as_str().unwrap_or_default().to_owned(),
            })
            .collect::<Vec<_>>();
        for m in &mounts {
            if Path::new(&m.sub_path)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(perr(
                    &self.def,
                    format!(
                        "container {name}: subPath {:?} must be a relative path without '..'",
                        m.sub_path
                    ),
                ));
            }
            if !self.volumes.contains_key(&m.volume) {
                return Err(perr(
                    &self.def,
                    format!("container {name}: volumeMount {} names no volume", m.volume),
                ));
            }
        }
        let psc = &self.def.spec["securityContext"];
        let sc = &c["securityContext"];
        let uid = as_u32(&sc["runAsUser"])
            .or(as_u32(&psc["runAsUser"]))
            .unwrap_or(0);
        let gid = as_u32(&sc["runAsGroup"])
            .or(as_u32(&psc["runAsGroup"]))
            .unwrap_or(0);
        let mut groups: Vec<u32> = self.fs_group().into_iter().collect();
        for g in psc["supplementalGroups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            groups.extend(as_u32(&g));
        }
        let drop_all_caps = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
        let startup_probe = match c["startupProbe"]["exec"]["command"].as_array() {
            Some(cmd) => {
                let p = &c["startupProbe"];
                Some(Probe {
                    exec: cmd
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                    period: Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10).max(1)),
                    timeout: Duration::from_secs(p["timeoutSeconds"].as_u64().unwrap_or(1).max(1)),
                    failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
                })
            }
            None => None,
        };
        Ok(ContainerSpec {
            name,
            argv,
            env: vars,
            working_dir: c["workingDir"].as_str().unwrap_or("/").to_owned(),
            mounts,
            uid,
            gid,
            groups,
            no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            drop_all_caps,
            read_only_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
            startup_probe,
        })
    }

    /// `setpriv` arguments that give a process the container's credentials (empty for root
    /// with nothing to drop).
    fn creds(cs: &ContainerSpec) -> Vec<String> {
        if cs.uid == 0
            && cs.gid == 0
            && cs.groups.is_empty()
            && !cs.no_new_privs
            && !cs.drop_all_caps
        {
            return Vec::new();
        }
        let mut a = vec![
            "setpriv".to_owned(),
            format!("--reuid={}", cs.uid),
            format!("--regid={}", cs.gid),
        ];
        if cs.groups.is_empty() {
            a.push("--clear-groups".into());
        } else {
            let g: Vec<String> = cs.groups.iter().map(u32::to_string).collect();
            a.push(format!("--groups={}", g.join(",")));
        }
        if cs.no_new_privs {
            a.push("--no-new-privs".into());
        }
        if cs.drop_all_caps {
            a.push("--inh-caps=-all".into());
            a.push("--bounding-set=-all".into());
        }
        a.push("--".into());
        a
    }

    /// The shell script that sets up a container's private mount namespace and execs it.
    fn shim(&self, cs: &ContainerSpec) -> Result<String> {
        // The container's own PID namespace gets its own /proc (as a runtime mounts one).
        let mut s = String::from("set -e\nmount -t proc -o nosuid,nodev,noexec proc /proc\n");
        for d in PRIVATE_DIRS {
            if self.dir.starts_with(d) {
                return Err(perr(
                    &self.def,
                    format!("the runner's directory must not be under {d}"),
                ));
            }
            if !Path::new(d).exists() {
                if !cs.mounts.iter().any(|m| Path::new(&m.path).starts_with(d)) {
                    continue;
                }
                std::fs::create_dir_all(d).map_err(Error::io(format!(
                    "creating {d} on the host (the mountpoint of the container's private tmpfs)"
                )))?;
            }
            s += &format!("mount -t tmpfs -o mode=0755,size=64m podrun {d}\n");
        }
        for m in &cs.mounts {
            let src = &self.volumes[&m.volume];
            // /var/run is /run on the distributions we run on.
            let private = PRIVATE_DIRS.iter().any(|d| {
                Path::new(&m.path).starts_with(d)
                    || Path::new(&m.path).starts_with(format!("/var{d}"))
            });
            let q = sh_quote(&m.path);
            if private {
                s += &format!("mkdir -p {q}\n");
            } else {
                s += &format!(
                    "[ -e {q} ] || {{ echo 'podrun: mountPath {} is neither under {} nor present on this machine' >&2; exit 1; }}\n",
                    m.path.replace('\'', ""),
                    PRIVATE_DIRS.join(", ")
                );
            }
            let mut src = src.clone();
            for part in Path::new(&m.sub_path).components() {
                let root = sh_quote(&self.volumes[&m.volume].to_string_lossy());
                src.push(part);
                let d = sh_quote(&src.to_string_lossy());
                s += &format!("[ -d {d} ] || {{ mkdir {d} && chmod --reference={root} {d}; }}\n");
            }
            s += &format!("mount --bind {} {q}\n", sh_quote(&src.to_string_lossy()));
            if m.read_only {
                s += &format!("mount -o remount,bind,ro {q}\n");
            }
        }
        s += &format!(
            "mount --bind {} /etc/hosts\nmount -o remount,bind,ro /etc/hosts\n",
            sh_quote(&self.hosts_file.to_string_lossy())
        );
        s += &format!("hostname {}\n", sh_quote(&self.def.name));
        // The container's namespaces are in place: tell the runner (the kubelet's "started").
        s += &format!(
            ": > {}\n",
            sh_quote(&self.started_marker(&cs.name).to_string_lossy())
        );
        if cs.read_only_root {
            s += "mount -o remount,bind,ro /\n";
        }
        s += &format!("cd {}\n", sh_quote(&cs.working_dir));
        let creds: Vec<String> = Self::creds(cs).iter().map(|a| sh_quote(a)).collect();
        s += &format!("exec {} \"$@\"\n", creds.join(" "));
        Ok(s)
    }

    fn started_marker(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!(".{container}.started"))
    }

    /// Waits until a container's shim has set up its namespaces and is about to exec the
    /// container's command; before that, `exec` would enter the wrong mount namespace.
    async fn wait_started(&mut self, name: &str) -> Result<()> {
        let marker = self.started_marker(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !marker.exists() {
            if let Some(status) = self.running(name)?.poll() {
                return Err(perr(
                    &self.def,
                    format!(
                        "container {name} exited with {status} while starting:\n{}",
                        self.logs(name)
                    ),
                ));
            }
            if Instant::now() > deadline {
                return Err(perr(
                    &self.def,
                    format!("container {name} did not start within 30s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn spawn(&mut self, cs: ContainerSpec, sidecar: bool, init: bool) -> Result<()> {
        let mut argv = self.host.nsenter_args();
        argv.extend(
            [
                "unshare",
                "--mount",
                "--uts",
                // A PID namespace per container, as container runtimes do: the container's
                // processes see only each other, and a peer in another container of the pod
                // has pid 0 in SO_PEERCRED.
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ]
            .map(str::to_owned),
        );
        argv.push(self.shim(&cs)?);
        argv.push(format!("podrun-{}", cs.name));
        argv.extend(cs.argv.iter().cloned());
        let log_path = self.dir.join("logs").join(format!("{}.log", cs.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(Error::io("log"))?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(cs.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| perr(&self.def, format!("starting container {}: {e}", cs.name)))?;
        self.containers.push(Running {
            spec: cs,
            sidecar,
            init,
            child,
            exited: None,
            started_at: SystemTime::now(),
            finished_at: None,
            probe_passed: false,
        });
        Ok(())
    }

    fn running(&mut self, name: &str) -> Result<&mut Running> {
        let def = self.def.clone();
        self.containers
            .iter_mut()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| perr(&def, format!("no container {name}")))
    }

    async fn wait_startup(&mut self, name: &str) -> Result<()> {
        let probe = self.running(name)?.spec.startup_probe.clone();
        let Some(probe) = probe else {
            return Ok(());
        };
        let mut last = String::new();
        for _ in 0..probe.failure_threshold {
            if let Some(status) = self.running(name)?.poll() {
                return Err(perr(
                    &self.def,
                    format!(
                        "container {name} exited with {status} before its startupProbe passed:\n{}",
                        self.logs(name)
                    ),
                ));
            }
            let started = Instant::now();
            let argv: Vec<&str> = probe.exec.iter().map(String::as_str).collect();
            match tokio::time::timeout(probe.timeout, self.exec(name, &argv)).await {
                Ok(Ok(out)) if out.status.success() => return Ok(()),
                Ok(Ok(out)) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "probe timed out".into(),
            }
            if let Some(rest) = probe.period.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        Err(perr(
            &self.def,
            format!(
                "container {name}: startupProbe failed {} times, last: {last}\n{}",
                probe.failure_threshold,
                self.logs(name)
            ),
        ))
    }

    async fn wait_exit(&mut self, name: &str) -> Result<()> {
        loop {
            if let Some(status) = self.running(name)?.poll() {
                if status.success() {
                    return Ok(());
                }
                return Err(perr(
                    &self.def,
                    format!(
                        "init container {name} failed with {status}:\n{}",
                        self.logs(name)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `argv` inside a container (its network, mount, UTS and PID namespaces, credentials
    /// and environment), like `kubectl exec`.
    pub async fn exec(&self, container: &str, argv: &[&str]) -> Result<std::process::Output> {
        let c = self
            .containers
            .iter()
            .find(|c| c.spec.name == container)
            .ok_or_else(|| perr(&self.def, format!("no container {container}")))?;
        if c.exited.is_some() {
            return Err(perr(
                &self.def,
                format!("container {container} is not running"),
            ));
        }
        let target = c
            .init_pid()
            .ok_or_else(|| perr(&self.def, format!("container {container} has no process")))?;
        let mut full = vec![
            "nsenter".to_owned(),
            "-t".into(),
            target.to_string(),
            "-n".into(),
            "-m".into(),
            "-u".into(),
            "-p".into(),
            "--".into(),
        ];
        full.extend(Self::creds(&c.spec));
        full.extend(argv.iter().map(|s| (*s).to_owned()));
        tokio::process::Command::new(&full[0])
            .args(&full[1..])
            .env_clear()
            .envs(c.spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| perr(&self.def, format!("exec in {container}: {e}")))
    }

    /// What a container wrote to stdout and stderr.
    pub fn logs(&self, container: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{container}.log")))
            .unwrap_or_default()
    }

    /// The host directory of a volume.
    pub fn volume(&self, name: &str) -> Option<&Path> {
        self.volumes.get(name).map(PathBuf::as_path)
    }

    /// Whether a container's process is running.
    pub fn is_running(&mut self, container: &str) -> bool {
        self.running(container)
            .map(|c| c.poll().is_none())
            .unwrap_or(false)
    }

    /// The host pid of a container's main process (pid 1 in the container's PID namespace).
    pub fn pid(&self, container: &str) -> Option<u32> {
        self.containers
            .iter()
            .find(|c| c.spec.name == container)
            .and_then(Running::init_pid)
            .map(|p| p.as_raw() as u32)
    }

    /// Every container's state, init containers first, in start order.
    pub fn container_states(&mut self) -> Vec<ContainerState> {
        self.containers
            .iter_mut()
            .map(|c| {
                let exit = c.poll().map(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    let code = s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1);
                    (code, c.finished_at.unwrap_or_else(SystemTime::now))
                });
                ContainerState {
                    name: c.spec.name.clone(),
                    init: c.init,
                    sidecar: c.sidecar,
                    started_at: c.started_at,
                    started: c.probe_passed && exit.is_none(),
                    exit,
                }
            })
            .collect()
    }

    /// Whether every app container (not an init container) has exited.
    pub fn apps_exited(&mut self) -> bool {
        self.containers
            .iter_mut()
            .filter(|c| !c.init)
            .all(|c| c.poll().is_some())
    }

    /// Starts a container again in place, as a kubelet restarts one (same spec, volumes and
    /// network; its log appended): a running one is stopped first (SIGTERM to its main
    /// process, SIGKILL after `grace`), as after a failed liveness probe. Returns once it has
    /// started and its exec startupProbe (if any) passed.
    pub async fn restart(&mut self, name: &str, grace: Duration) -> Result<()> {
        let i = self
            .containers
            .iter()
            .position(|c| c.spec.name == name)
            .ok_or_else(|| perr(&self.def, format!("no container {name}")))?;
        if self.containers[i].poll().is_none() {
            self.terminate(&[i], Instant::now() + grace).await;
        }
        let old = self.containers.remove(i);
        let _ = std::fs::remove_file(self.started_marker(name));
        self.spawn(old.spec.clone(), old.sidecar, old.init)?;
        if let Some(new) = self.containers.pop() {
            self.containers.insert(i, new);
        }
        self.wait_started(name).await?;
        self.wait_startup(name).await?;
        self.running(name)?.probe_passed = true;
        Ok(())
    }

    /// Stops one container (SIGTERM to its main process, SIGKILL after `grace`), as a kubelet
    /// does after its liveness probe failed; [`Pod::restart`] starts it again.
    pub async fn stop_container(&mut self, name: &str, grace: Duration) -> Result<()> {
        let i = self
            .containers
            .iter()
            .position(|c| c.spec.name == name)
            .ok_or_else(|| perr(&self.def, format!("no container {name}")))?;
        self.terminate(&[i], Instant::now() + grace).await;
        Ok(())
    }

    /// Sets the grace period of the next [`Pod::stop`] (a deletion's own grace period).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// A Job's pod: waits up to `timeout` for every app container to exit by itself, then stops
    /// the native sidecars as the kubelet does once a pod's regular containers have completed
    /// (SIGTERM, last started first). Returns each container's exit status, apps first.
    pub async fn run_to_completion(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<(String, Option<std::process::ExitStatus>)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<String> = self
                .containers
                .iter_mut()
                .filter(|c| !c.init)
                .filter_map(|c| c.poll().is_none().then(|| c.spec.name.clone()))
                .collect();
            if running.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "pod {}/{}: containers {running:?} to complete",
                        self.def.namespace, self.def.name
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(self.stop().await)
    }

    /// Stops the pod as the kubelet does: SIGTERM to the app containers, then (once they are
    /// gone) to the native sidecars in reverse order; SIGKILL after the grace period. Returns
    /// each container's exit status.
    pub async fn stop(&mut self) -> Vec<(String, Option<std::process::ExitStatus>)> {
        let deadline = Instant::now() + self.grace;
        let apps: Vec<usize> = (0..self.containers.len())
            .filter(|&i| !self.containers[i].init)
            .collect();
        let sidecars: Vec<usize> = (0..self.containers.len())
            .rev()
            .filter(|&i| self.containers[i].sidecar)
            .collect();
        self.terminate(&apps, deadline).await;
        for &i in &sidecars {
            self.terminate(&[i], deadline).await;
        }
        for t in self.token_tasks.drain(..) {
            t.abort();
        }
        apps.iter()
            .chain(&sidecars)
            .map(|&i| {
                let c = &mut self.containers[i];
                (c.spec.name.clone(), c.poll())
            })
            .collect()
    }

    async fn terminate(&mut self, which: &[usize], deadline: Instant) {
        for &i in which {
            let c = &mut self.containers[i];
            if c.poll().is_none() {
                if let Some(init) = c.init_pid() {
                    let _ = kill(init, Signal::SIGTERM);
                }
            }
        }
        loop {
            let all_done = which.iter().all(|&i| self.containers[i].poll().is_some());
            if all_done {
                return;
            }
            if Instant::now() > deadline {
                for &i in which {
                    let c = &mut self.containers[i];
                    let _ = killpg(c.pid(), Signal::SIGKILL);
                    let _ = c.child.wait();
                    c.poll();
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for t in self.token_tasks.drain(..) {
            t.abort();
        }
        for c in &mut self.containers {
            if c.exited.is_none() {
                let _ = killpg(c.pid(), Signal::SIGKILL);
                let _ = c.child.wait();
            }
        }
        for m in self.tmpfs.drain(..).rev() {
            // The containers' copies went with their mount namespaces; this is the runner's.
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&m)
                .stdin(Stdio::null())
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Kubernetes quantity (`16Mi`, `1Gi`, `100M`, `512k`, `1000`) in bytes.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = (n * mult).ceil();
    (bytes.is_finite() && bytes > 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Expands `$(VAR)` references as the kubelet does (`$$` escapes a `$`).
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out += &rest[..i];
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let name = &inner[..j];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out += v,
                        None => out += &format!("$({name})"),
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

#[cfg(test)]
mod tests {
    use super::{expand, parse_quantity, refresh_delay};
    use std::time::{Duration, SystemTime};

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(parse_quantity("16Mi"), Some(16 << 20));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("100M"), Some(100_000_000));
        assert_eq!(parse_quantity("512k"), Some(512_000));
        assert_eq!(parse_quantity("1000"), Some(1000));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("16Mb"), None);
        assert_eq!(parse_quantity("-1"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn tokens_refresh_at_80_percent_of_their_lifetime_like_the_kubelet() {
        let iat = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let exp = iat + Duration::from_secs(600);
        // Checked right after issue: due 480 s later.
        assert_eq!(
            refresh_delay(iat, exp, 0.8, iat + Duration::from_secs(1)),
            Duration::from_secs(479)
        );
        // Already past due: at once (with a 100 ms floor against a hot loop).
        assert_eq!(
            refresh_delay(iat, exp, 0.8, iat + Duration::from_secs(500)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn expands_like_the_kubelet() {
        let vars = vec![("A".to_owned(), "x".to_owned())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    }
}
