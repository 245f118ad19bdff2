//! A real OpenBao dev server on a free port, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ROOT_TOKEN: &str = "root";

pub struct Bao {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
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
        };
        bao.spawn();
        bao
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bao.log"))
            .expect("bao log");
        let child = Command::new(&self.bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{}", self.port),
            ])
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start OpenBao");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli_status(&["status"]).0 {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("OpenBao exited with {status}: {}", self.log());
                }
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

    /// Starts a fresh dev server on the same port (configuration must be applied again).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn cli_status(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", ROOT_TOKEN)
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
            .header("X-Vault-Token", ROOT_TOKEN);
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
