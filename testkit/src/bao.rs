//! A real OpenBao dev server on a free port, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A root token of its own for each dev server, so that a request can only succeed at this
/// server.
fn new_root_token() -> String {
    format!("root-{:016x}", rand::random::<u64>())
}

pub struct Bao {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The root token.
    token: String,
    /// Persistent storage (a real server that survives restarts and can be sealed), not dev mode.
    persistent: bool,
    unseal_key: Option<String>,
}

impl Bao {
    /// Starts a dev server (in-memory storage, KV v2 at secret/) and waits until it answers.
    pub fn start() -> Bao {
        let port = super::free_port_pair();
        let mut bao = Bao {
            child: None,
            port,
            bin: super::tools::bao(),
            dir: tempfile::tempdir().expect("tempdir"),
            token: new_root_token(),
            persistent: false,
            unseal_key: None,
        };
        bao.spawn_on_a_free_port();
        bao
    }

    /// Starts a server with persistent (raft) storage, initialises it with one unseal key, unseals it and
    /// mounts KV v2 at secret/ (as dev mode does).
    pub async fn start_persistent() -> Bao {
        let port = super::free_port_pair();
        let mut bao = Bao {
            child: None,
            port,
            bin: super::tools::bao(),
            dir: tempfile::tempdir().expect("tempdir"),
            token: String::new(),
            persistent: true,
            unseal_key: None,
        };
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
        bao.unseal_key = Some(
            init["unseal_keys_b64"][0]
                .as_str()
                .expect("unseal key")
                .to_owned(),
        );
        bao.unseal();
        bao.api(
            "POST",
            "sys/mounts/secret",
            Some(serde_json::json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        bao
    }

    pub fn seal(&self) {
        self.cli(&["operator", "seal"]);
    }

    /// Unseals and waits until this node is the active one (raft elects itself).
    pub fn unseal(&self) {
        let key = self.unseal_key.clone().expect("a persistent server");
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
                    self.port = super::free_port_pair();
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bao.log"))
            .expect("bao log");
        let args: Vec<String> = if self.persistent {
            // OpenBao 2.7 has no "file" storage: a single-node raft cluster persists the same way.
            let config = self.dir.path().join("bao.hcl");
            let data = self.dir.path().join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::write(
                &config,
                format!(
                    "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"node1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cport}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cport}\"\n",
                    data = data.display(),
                    port = self.port,
                    cport = self.port + 1,
                ),
            )
            .expect("bao config");
            vec![
                "server".into(),
                "-config".into(),
                config.display().to_string(),
            ]
        } else {
            vec![
                "server".into(),
                "-dev".into(),
                format!("-dev-root-token-id={}", self.token),
                format!("-dev-listen-address=127.0.0.1:{}", self.port),
            ]
        };
        let child = Command::new(&self.bin)
            .args(&args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start OpenBao");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("exit {status}: {}", self.log()));
                }
            }
            // Our own process must hold the port (another test's server could answer there),
            // and `bao status` exits 0 when unsealed, 2 when sealed: either means it answers.
            // A dev server is ready only once its root token and its KV mount at secret/ exist
            // (it answers `status` a moment earlier).
            let answers = listens_on(pid, self.port) && matches!(self.status_code(), Some(0 | 2));
            if answers && (self.persistent || self.cli_status(&["read", "sys/mounts/secret"]).0) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (its in-memory state is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port: a fresh dev server (configuration must be
    /// applied again), or the same persistent storage, unsealed.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if self.persistent {
            self.unseal();
        }
    }

    fn status_code(&self) -> Option<i32> {
        Command::new(&self.bin)
            .arg("status")
            .env("BAO_ADDR", self.addr())
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .ok()?
            .status
            .code()
    }

    fn cli_status(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", &self.token)
            .env("HOME", self.dir.path())
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

    /// Calls the HTTP API as root.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.api_status(method, path, body).await;
        assert!(status < 300, "{method} {path} answered {status}: {v}");
        v
    }

    pub async fn api_status(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let url = format!("{}/v1/{}", self.addr(), path);
        let mut req = client
            .request(method.parse().expect("method"), &url)
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("OpenBao request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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

    /// Creates a policy.
    pub async fn policy(&self, name: &str, hcl: &str) {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({"policy": hcl})),
        )
        .await;
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
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
