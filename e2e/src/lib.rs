//! Runs the pods that `keyward inject` writes the way a kubelet would — containers from the
//! spec, volumes, a projected service-account token, the native sidecar first, SIGTERM in
//! order — each pod in its own network namespace. Test and demo support, not product code.
//!
//! Each container is a process started through `nsenter` (the pod's network namespace) and
//! `unshare --mount` (a private mount namespace with tmpfs over `/run`, `/tmp` and `/srv`, the
//! pod's volumes bind-mounted at their `mountPath`s and the pod's `/etc/hosts`), then `setpriv`
//! with the container's uid, gid and the pod's fsGroup. Nothing on the host is mounted over.

pub mod cluster;
pub mod kube_shop;
pub mod manifest;
pub mod net;
pub mod node;
pub mod pod;
pub mod shop;

/// The OpenBao harness (here an admin client: `bao::Bao::connect`) and the ES256
/// service-account token issuer, shared with the integration tests (`keyward-testkit`).
pub use keyward_testkit::{bao, jwt};

use std::time::{Duration, Instant};

/// Why the runner could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("pod {pod}: {problem}")]
    Pod { pod: String, problem: String },
    #[error("running {cmd}: {problem}")]
    Command { cmd: String, problem: String },
    #[error("{0}")]
    Setup(String),
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl From<bao::BaoError> for Error {
    fn from(e: bao::BaoError) -> Error {
        Error::Setup(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Polls `f` every 100 ms until it returns `Some`, or fails naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command to completion; fails with its output when it exits non-zero.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<String> {
    let name = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            cmd: name.clone(),
            problem: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: name,
            problem: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Quotes `s` for a POSIX shell.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
