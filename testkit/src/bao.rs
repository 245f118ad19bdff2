//! The OpenBao harness: a real OpenBao server on a free port, killed when dropped
//! ([`Bao::start`], [`Bao::start_persistent`]), or an admin client for a server started
//! elsewhere ([`Bao::connect`], e.g. the pod runner's). Both speak the HTTP API with the root
//! token: [`Bao::call`]/[`Bao::try_api`] return errors, [`Bao::api`]/[`Bao::api_status`] panic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A root token of its own for each dev server, so that a request can only succeed at this
/// server.
fn new_root_token() -> String {
    format!("root-{:016x}", rand::random::<u64>())
}

/// Why a call to OpenBao's API failed.
#[derive(Debug, thiserror::Error)]
pub enum BaoError {
    #[error("bad HTTP method {0}")]
    Method(String),
    #[error("OpenBao {method} {path}: {source}")]
    Request {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("OpenBao {method} {path} answered {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: Value,
    },
}

pub struct Bao {
    /// The server this harness started; `None` for [`Bao::connect`].
    server: Option<Server>,
    /// The address of a server started elsewhere ([`Bao::connect`]).
    remote_addr: String,
    /// The root token.
    token: String,
}

/// A server process this harness runs.
struct Server {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Persistent storage (a real server that survives restarts and can be sealed), not dev mode.
    persistent: bool,
    unseal_key: Option<String>,
    /// Listeners a dev server serves besides its own (HCL, given the dev listener's port).
    extra_listeners: Option<ExtraListeners>,
}

/// Gives the HCL of a dev server's extra listeners from its dev listener's port.
pub type ExtraListeners = Box<dyn Fn(u16) -> String + Send + Sync>;

impl Bao {
    /// An admin client for the server at `addr` (e.g. `http://127.0.0.1:8200`), with `token`.
    /// Nothing is started or stopped; the methods that run the server (`cli`, `seal`,
    /// `restart`, ...) panic.
    pub fn connect(addr: &str, token: &str) -> Bao {
        Bao {
            server: None,
            remote_addr: addr.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    fn server(&self) -> &Server {
        self.server
            .as_ref()
            .expect("an OpenBao server this harness started (Bao::start), not Bao::connect")
    }

    fn server_mut(&mut self) -> &mut Server {
        self.server
            .as_mut()
            .expect("an OpenBao server this harness started (Bao::start), not Bao::connect")
    }

    /// Starts a dev server (in-memory storage, KV v2 at secret/) and waits until it answers.
    pub fn start() -> Bao {
        let mut bao = Bao::new_server(false, new_root_token());
        bao.spawn_on_a_free_port();
        bao
    }

    /// Starts a dev server that also serves the listeners `extra` gives as HCL (TLS ones, for
    /// example), and waits until it answers on its plain dev listener ([`Bao::addr`], used by
    /// the admin calls). `extra` gets the dev listener's port P; ports P+2 and P+3 were free
    /// when P was chosen ([`Bao::extra_port`]): use those.
    pub fn start_with_listeners(extra: ExtraListeners) -> Bao {
        let mut bao = Bao::new_server(false, new_root_token());
        let server = bao.server_mut();
        server.port = crate::free_ports(4);
        server.extra_listeners = Some(extra);
        bao.spawn_on_a_free_port();
        bao
    }

    /// Port P+2+`i` of [`Bao::start_with_listeners`] (`i` is 0 or 1).
    pub fn extra_port(&self, i: u16) -> u16 {
        self.server().port + 2 + i
    }

    /// Starts a server with persistent (raft) storage, initialises it with one unseal key, unseals it and
    /// mounts KV v2 at secret/ (as dev mode does).
    pub async fn start_persistent() -> Bao {
        let mut bao = Bao::new_server(true, String::new());
        bao.spawn_on_a_free_port();
        let init: Value = serde_json::from_str(&bao.cli(&[
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold=1",
            "-format=json",
        ]))
        .expect("init JSON");
        bao.token = init["root_token"].as_str().expect("root token").to_owned();
        bao.server_mut().unseal_key = Some(
            init["unseal_keys_b64"][0]
                .as_str()
                .expect("unseal key")
                .to_owned(),
        );
        bao.unseal();
        bao.kv2("", "secret").await;
        bao
    }

    fn new_server(persistent: bool, token: String) -> Bao {
        Bao {
            server: Some(Server {
                child: None,
                port: crate::free_port_pair(),
                bin: crate::tools::bao(),
                dir: tempfile::tempdir().expect("tempdir"),
                persistent,
                unseal_key: None,
                extra_listeners: None,
            }),
            remote_addr: String::new(),
            token,
        }
    }

    pub fn seal(&self) {
        self.cli(&["operator", "seal"]);
    }

    /// Unseals and waits until this node is the active one (raft elects itself).
    pub fn unseal(&self) {
        let key = self
            .server()
            .unseal_key
            .clone()
            .expect("a persistent server");
        self.cli(&["operator", "unseal", &key]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, out, _) = self.cli_status(&["status", "-format=json"]);
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            if v["sealed"] == false && (v["ha_enabled"] == false || v["is_self"] == true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao not active after unseal: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server; when its port was taken meanwhile (it exits unable to bind), on
    /// another port.
    fn spawn_on_a_free_port(&mut self) {
        for _ in 0..5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(log) if log.contains("address already in use") => {
                    let server = self.server_mut();
                    server.port = if server.extra_listeners.is_some() {
                        crate::free_ports(4)
                    } else {
                        crate::free_port_pair()
                    };
                }
                Err(log) => panic!("OpenBao exited: {log}"),
            }
        }
        panic!("OpenBao found no free port in 5 tries: {}", self.log());
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("OpenBao exited: {log}");
        }
    }

    /// Starts the server and waits until it answers; `Err(log)` when it exited instead.
    fn try_spawn(&mut self) -> Result<(), String> {
        let token = self.token.clone();
        let server = self.server_mut();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(server.dir.path().join("bao.log"))
            .expect("bao log");
        let args: Vec<String> = if server.persistent {
            // OpenBao 2.7 has no "file" storage: a single-node raft cluster persists the same way.
            let config = server.dir.path().join("bao.hcl");
            let data = server.dir.path().join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::write(
                &config,
                format!(
                    "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"node1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cport}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cport}\"\n",
                    data = data.display(),
                    port = server.port,
                    cport = server.port + 1,
                ),
            )
            .expect("bao config");
            vec![
                "server".into(),
                "-config".into(),
                config.display().to_string(),
            ]
        } else {
            let mut args = vec![
                "server".into(),
                "-dev".into(),
                format!("-dev-root-token-id={token}"),
                format!("-dev-listen-address=127.0.0.1:{}", server.port),
            ];
            if let Some(extra) = &server.extra_listeners {
                let path = server.dir.path().join("listeners.hcl");
                std::fs::write(&path, extra(server.port)).expect("listeners config");
                args.push(format!("-config={}", path.display()));
            }
            args
        };
        let child = Command::new(&server.bin)
            .args(&args)
            .env("HOME", server.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start OpenBao");
        let pid = child.id();
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let server = self.server_mut();
            if let Some(c) = server.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    server.child = None;
                    return Err(format!("exit {status}: {}", self.log()));
                }
            }
            // Our own process must hold the port (another test's server could answer there),
            // and `bao status` exits 0 when unsealed, 2 when sealed: either means it answers.
            // A dev server is ready only once its root token and its KV mount at secret/ exist
            // (it answers `status` a moment earlier).
            let server = self.server();
            let answers = listens_on(pid, server.port) && matches!(self.status_code(), Some(0 | 2));
            if answers && (server.persistent || self.cli_status(&["read", "sys/mounts/secret"]).0) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log (what it printed); empty for [`Bao::connect`].
    pub fn log(&self) -> String {
        match &self.server {
            Some(s) => std::fs::read_to_string(s.dir.path().join("bao.log")).unwrap_or_default(),
            None => String::new(),
        }
    }

    pub fn addr(&self) -> String {
        match &self.server {
            Some(s) => format!("http://127.0.0.1:{}", s.port),
            None => self.remote_addr.clone(),
        }
    }

    pub fn port(&self) -> u16 {
        self.server().port
    }

    /// The root token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Kills the server (its in-memory state is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.server_mut().child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port: a fresh dev server (configuration must be
    /// applied again), or the same persistent storage, unsealed.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if self.server().persistent {
            self.unseal();
        }
    }

    fn status_code(&self) -> Option<i32> {
        let server = self.server();
        Command::new(&server.bin)
            .arg("status")
            .env("BAO_ADDR", self.addr())
            .env("HOME", server.dir.path())
            .stdin(Stdio::null())
            .output()
            .ok()?
            .status
            .code()
    }

    fn cli_status(&self, args: &[&str]) -> (bool, String, String) {
        let server = self.server();
        let out = Command::new(&server.bin)
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", &self.token)
            .env("HOME", server.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run bao");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the `bao` CLI as root; panics with its stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli_status(args);
        assert!(ok, "bao {args:?} failed: {err}{out}");
        out
    }

    /// Calls `/v1/PATH` as root: (status, JSON body or null). Fails only when there is no
    /// answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), BaoError> {
        let m: reqwest::Method = method
            .parse()
            .map_err(|_| BaoError::Method(method.to_owned()))?;
        let client = reqwest::Client::new();
        let url = format!("{}/v1/{}", self.addr(), path);
        let mut req = client.request(m, &url).header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| BaoError::Request {
            method: method.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Calls `/v1/PATH` as root and fails unless the answer is 2xx.
    pub async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BaoError> {
        let (status, v) = self.call(method, path, body).await?;
        if status >= 300 {
            return Err(BaoError::Status {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                body: v,
            });
        }
        Ok(v)
    }

    /// Calls the HTTP API as root; panics unless the answer is 2xx.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.api_status(method, path, body).await;
        assert!(status < 300, "{method} {path} answered {status}: {v}");
        v
    }

    /// Calls the HTTP API as root: (status, JSON body or null); panics when there is no answer.
    pub async fn api_status(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        match self.call(method, path, body).await {
            Ok(answer) => answer,
            Err(e) => panic!("OpenBao request: {e}"),
        }
    }

    /// Writes a KV v2 secret under secret/; returns its new version.
    pub async fn kv_put(&self, name: &str, data: Value) -> u64 {
        let v = self
            .api(
                "POST",
                &format!("secret/data/{name}"),
                Some(serde_json::json!({"data": data})),
            )
            .await;
        v["data"]["version"].as_u64().expect("version")
    }

    /// Mounts a KV version 2 engine at `mount` (in the namespace `ns`: "" or "team/") and waits
    /// until it serves. A new KV v2 mount first upgrades its storage and meanwhile answers every
    /// request 400 "Upgrading from non-versioned to versioned data"; a write in that moment
    /// fails, so the mount is ready once its config reads 200.
    pub async fn kv2(&self, ns: &str, mount: &str) {
        self.api(
            "POST",
            &format!("{ns}sys/mounts/{mount}"),
            Some(serde_json::json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, body) = self
                .api_status("GET", &format!("{ns}{mount}/config"), None)
                .await;
            if status == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "KV v2 mount {ns}{mount} not serving after 30 s: {status} {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Creates a policy.
    pub async fn policy(&self, name: &str, hcl: &str) {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({"policy": hcl})),
        )
        .await;
    }

    /// A PKI engine at `mount` with its own EC root CA named `ca_name`, and the role `role` with
    /// `role_params` (allowed domains, TTLs...; EC P-256 keys unless they say otherwise).
    /// Returns the policy lines that let a workload issue from the role and revoke.
    pub async fn pki_engine(
        &self,
        mount: &str,
        ca_name: &str,
        role: &str,
        role_params: Value,
    ) -> String {
        use serde_json::json;
        self.api(
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}})),
        )
        .await;
        self.api(
            "POST",
            &format!("{mount}/root/generate/internal"),
            Some(
                json!({"common_name": ca_name, "key_type": "ec", "key_bits": 256, "ttl": "87600h"}),
            ),
        )
        .await;
        let mut params = json!({"key_type": "ec", "key_bits": 256});
        if let (Some(p), Some(extra)) = (params.as_object_mut(), role_params.as_object()) {
            p.extend(extra.clone());
        }
        self.api("POST", &format!("{mount}/roles/{role}"), Some(params))
            .await;
        format!(
            "path \"{mount}/issue/{role}\" {{ capabilities = [\"create\", \"update\"] }}\npath \"{mount}/revoke\" {{ capabilities = [\"update\"] }}\n"
        )
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.stop();
        }
    }
}

/// Whether process `pid` itself holds a listening TCP socket on 127.0.0.1:`port` (not some
/// other process that happens to answer there).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // Columns: sl local_address rem_address st ... uid timeout inode; 0100007F:PORT, state 0A.
    let wanted = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == wanted && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
            })
        })
        .unwrap_or(false)
}
