//! The local socket API: HTTP/1.1 over a Unix domain socket. This module listens, accepts and
//! serves connections (each caller's peer credentials come from `SO_PEERCRED`); `routes`
//! maps requests to handlers, `responses` builds the JSON and the errors, and
//! `crate::access` decides who may read what and audits each decision before anything is
//! served (a request whose record cannot be written is refused).

mod responses;
mod routes;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyward_audit::Caller;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::SocketConfig;
use crate::{Inner, StartError};

pub(crate) use responses::ApiError;

/// Largest request head (request line + headers) accepted; hyper answers 431 beyond it.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body accepted (the API takes none); 413 beyond it.
pub const MAX_BODY_BYTES: u64 = 1024;

/// A bound socket and the app container it belongs to (empty: the shared `socket.path`).
pub struct Listener {
    listener: UnixListener,
    container: String,
}

/// Binds `socket.path` and one socket per entry of `socket.containers`, each with the
/// configured mode and group. A request's audit record names the container whose socket it
/// came in on.
pub fn bind_all(cfg: &SocketConfig) -> Result<Vec<Listener>, StartError> {
    let mut all = vec![Listener {
        listener: bind(cfg, &cfg.path)?,
        container: String::new(),
    }];
    for c in &cfg.containers {
        all.push(Listener {
            listener: bind(cfg, &c.path)?,
            container: c.name.clone(),
        });
    }
    Ok(all)
}

/// Creates the socket at `path` with the configured mode and group. The socket is bound and
/// set up under a temporary name in the same directory, under a restrictive umask, and renamed
/// to `path` only when it listens with its final mode and group: a client that sees the file
/// can connect, and the socket is never reachable with wider permissions than configured.
pub fn bind(cfg: &SocketConfig, path: &std::path::Path) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Socket {
        path: path.display().to_string(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(err)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {}
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )))
        }
        Err(_) => {}
    }
    // Short, so that a path that fits `sun_path` has a temporary name that fits too.
    let tmp = parent.join(".kwb");
    let _ = std::fs::remove_file(&tmp);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&tmp);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(err)?;
    let set_up = (|| {
        if let Some(gid) = cfg.group {
            nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(std::io::Error::from)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode_bits()))?;
        // Replaces a stale socket of an earlier run in one step.
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = set_up {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

/// The answer to a connection over `socket.max_connections`, written without reading the request.
fn too_many_connections() -> Vec<u8> {
    let body = r#"{"error":"too_many_connections","detail":"socket.max_connections are open; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves every listener until `shutdown`; then stops accepting and lets open requests finish.
/// `socket.max_connections` bounds the connections over all of them.
pub async fn serve_all(listeners: Vec<Listener>, inner: Arc<Inner>, shutdown: CancellationToken) {
    let limit = Arc::new(tokio::sync::Semaphore::new(
        inner.config.socket.max_connections,
    ));
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut accepting = tokio::task::JoinSet::new();
    for l in listeners {
        accepting.spawn(serve(
            l,
            inner.clone(),
            limit.clone(),
            graceful.clone(),
            shutdown.clone(),
        ));
    }
    while accepting.join_next().await.is_some() {}
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        return;
    };
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            warn!("Socket connections still open after 5s; closing");
        }
    }
}

/// Accepts on one listener until `shutdown`.
async fn serve(
    l: Listener,
    inner: Arc<Inner>,
    limit: Arc<tokio::sync::Semaphore>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    shutdown: CancellationToken,
) {
    let Listener {
        listener,
        container,
    } = l;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Socket accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            inner.metrics.socket_refused.inc();
            warn!(
                max_connections = inner.config.socket.max_connections,
                "Socket connection refused: too many open connections"
            );
            // Say why instead of a bare close. The socket's send buffer is empty, so this
            // small write completes at once or not at all; either way the stream is dropped.
            let _ = stream.try_write(&too_many_connections());
            continue;
        };
        let caller = match stream.peer_cred() {
            Ok(c) => {
                let pid = c.pid().unwrap_or(0);
                Caller::from_peer(pid, c.uid(), c.gid(), process_name(pid), &container)
            }
            Err(e) => {
                warn!(error = %e, "SO_PEERCRED failed; refusing connection");
                continue;
            }
        };
        let conn = graceful.watch(connection(stream, inner.clone(), caller, shutdown.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "Socket connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// One HTTP/1.1 connection from `caller` on any byte stream: the socket's limits (head size,
/// read timeout), routing, allow lists and auditing. `serve` runs one per accepted socket
/// connection; tests and the fuzz target run it over in-memory streams.
pub(crate) fn connection<IO>(
    io: IO,
    inner: Arc<Inner>,
    caller: Caller,
    shutdown: CancellationToken,
) -> hyper::server::conn::http1::Connection<
    TokioIo<IO>,
    impl hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Send,
>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let read_timeout = inner.config.socket.read_timeout;
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        let caller = caller.clone();
        let stop = shutdown.clone();
        async move { Ok::<_, Infallible>(routes::handle(req, &inner, &caller, &stop).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
}

/// `/proc/PID/comm`, or empty.
fn process_name(pid: i32) -> String {
    if pid <= 0 {
        return String::new();
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use super::*;

    fn cfg(mode: &str) -> SocketConfig {
        SocketConfig {
            mode: mode.into(),
            ..SocketConfig::default()
        }
    }

    #[tokio::test]
    async fn the_socket_appears_listening_with_its_mode_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.sock");
        // A stale socket of an earlier run, nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(std::os::unix::net::UnixStream::connect(&path).is_err());

        let listener = bind(&cfg("0640"), &path).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket at its path");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        std::os::unix::net::UnixStream::connect(&path).expect("listening at its path");
        let (_conn, _) = listener.accept().await.expect("accepted");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("broker.sock")]);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.sock");
        std::fs::write(&path, "keep me").expect("write");
        let e = bind(&cfg("0660"), &path).expect_err("refused");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "keep me");
        assert!(!dir.path().join(".kwb").exists());
    }
}
