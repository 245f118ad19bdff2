//! Runs the real `keyward` binary as a broker process and talks to its Unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::http::{parse, Answer};

pub struct BrokerProc {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub audit: PathBuf,
    pub token_file: PathBuf,
    pub config: PathBuf,
}

impl BrokerProc {
    /// Starts `keyward broker` with a config naming `vault_addr`, a token file holding
    /// `token`, a socket and audit log in a temporary directory, plus `extra` YAML
    /// (secrets, intervals...). `env` adds environment variables.
    pub fn start(vault_addr: &str, token: &str, extra: &str, env: &[(&str, &str)]) -> BrokerProc {
        let dir = tempfile::Builder::new()
            .prefix("keyward-broker")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("broker.sock");
        let audit = dir.path().join("audit.log");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("token");
        let config = dir.path().join("config.yaml");
        let audit_line = if extra.contains("audit:") {
            String::new()
        } else {
            format!("audit: {{file: {}}}\n", audit.display())
        };
        std::fs::write(
            &config,
            format!(
                "vault: {{addr: \"{vault_addr}\", timeout: 2s, allow_insecure_http: {insecure}}}\nauth: {{token_file: {}, max_backoff: 2s}}\n{audit_line}{extra}\n",
                token_file.display(),
                insecure = vault_addr.starts_with("http://"),
            ),
        )
        .expect("config");
        let mut b = BrokerProc {
            child: None,
            dir,
            socket,
            audit,
            token_file,
            config,
        };
        b.spawn(env);
        b
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let out = std::fs::File::create(self.dir.path().join("stdout.log")).expect("stdout");
        let err = std::fs::File::create(self.dir.path().join("stderr.log")).expect("stderr");
        let mut cmd = Command::new(crate::keyward_bin());
        cmd.args(["broker", "--config"])
            .arg(&self.config)
            .env("KEYWARD_LOG", "debug")
            .env("KEYWARD_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start keyward broker"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the broker logged (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The audit records written so far.
    /// Every record the audit log still holds, its rotated segments included.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        crate::audit_window(&self.audit)
    }

    /// Audit records with this action and decision.
    pub fn audit_count(&self, action: &str, decision: &str) -> usize {
        self.audit_records()
            .iter()
            .filter(|r| r["action"] == action && r["decision"] == decision)
            .count()
    }

    /// Replaces the token file atomically, as the kubelet does.
    pub fn set_token(&self, token: &str) {
        let tmp = self.dir.path().join("token.new");
        std::fs::write(&tmp, token).expect("write token");
        std::fs::rename(&tmp, &self.token_file).expect("rename token");
    }

    pub async fn get(&self, path: &str) -> Answer {
        get(&self.socket, path).await
    }

    /// Waits until `/v1/health/ready` answers 200. The socket file appears when the broker binds
    /// it, a moment before it listens: a refused connection then means not ready yet.
    pub async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listening =
                self.socket.exists() && tokio::net::UnixStream::connect(&self.socket).await.is_ok();
            if listening {
                let a = self.get("/v1/health/ready").await;
                if a.status == 200 {
                    return;
                }
                if std::time::Instant::now() > deadline {
                    panic!(
                        "broker not ready: {} {}\nlog:\n{}",
                        a.status,
                        a.body,
                        self.log()
                    );
                }
            } else if std::time::Instant::now() > deadline {
                panic!(
                    "broker socket never accepted a connection ({})\nlog:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        child.wait().expect("wait")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 GET over the Unix socket (Connection: close).
pub async fn get(socket: &Path, path: &str) -> Answer {
    raw(
        socket,
        format!("GET {path} HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// Sends raw bytes and reads the whole answer.
pub async fn raw(socket: &Path, request: &[u8]) -> Answer {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    // The server may answer and close before reading everything (431, 413): keep what it sent.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if !buf.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("read from {}: {e}", socket.display()),
        }
    }
    parse(&buf)
}
