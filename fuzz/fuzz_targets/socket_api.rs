//! The broker's socket API, whole: one real broker (`Broker::run`, hyper over its Unix socket,
//! `SO_PEERCRED`, routing, query and name parsing, uid allow lists, auditing) started once per
//! process, with a Vault that is not there. Each input is written raw to a new connection.
//! The broker never panics, answers only with well-formed HTTP/1.x status lines, never with a
//! 5xx other than 503 (not ready) and never 200 for a secret (none was ever fetched), and still
//! answers its readiness probe afterwards.
//!
//! (The in-memory route, `server::handle` over `tokio::io::duplex`, needs an `Arc<Inner>`,
//! which only `Broker` holds; see fuzz/README.md.)
#![no_main]

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keyward_broker::config::Config;
use keyward_broker::Broker;
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{send, MsgFlags};
use tokio_util::sync::CancellationToken;

struct Server {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("broker.sock");
        // Port 9 (discard) on loopback: nothing listens, so every login fails fast.
        let yaml = format!(
            r#"
vault: {{addr: "http://127.0.0.1:9", timeout: 1s}}
auth: {{role: fuzz, token_file: {token}, max_backoff: 60s}}
revoke_on_shutdown: false
secrets:
  - {{name: db, path: database/creds/app, key: password}}
  - {{name: api, path: secret/data/shop/api, required: false, allow_uids: [4242]}}
  - {{name: cfg, path: secret/data/shop/cfg, required: false}}
socket: {{path: {socket}, read_timeout: 2s, max_wait: 20ms, max_connections: 64}}
audit: {{file: /dev/null}}
"#,
            token = dir.path().join("token").display(),
            socket = socket.display(),
        );
        let config = Config::from_yaml(&yaml, &std::collections::BTreeMap::new()).expect("config");
        let broker = Broker::new(config).expect("broker");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // Never cancelled: the broker runs for the life of the process.
                let shutdown = CancellationToken::new();
                broker.run(shutdown).await.expect("broker runs");
            });
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { socket, _dir: dir }
    })
}

/// Ends every input: blank lines close an unfinished header block (a server skips blank lines
/// before a request), then a last request asks the broker to close the connection.
const CLOSE: &[u8] =
    b"\r\n\r\nGET /v1/health/ready HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n";

/// Writes `data` (without SIGPIPE: libFuzzer's `main` does not ignore it as Rust's does) and
/// reads whatever comes back until the broker closes, or nothing came for 200 ms (an input
/// that declares a body longer than what follows it). Half-closing the write side instead
/// would not do: hyper then drops the connection without answering.
fn exchange(socket: &PathBuf, data: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    for chunk in [data, CLOSE] {
        let mut sent = 0;
        while sent < chunk.len() {
            match send(s.as_raw_fd(), &chunk[sent..], MsgFlags::MSG_NOSIGNAL) {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n,
            }
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    let resp = exchange(&server.socket, data);
    if !resp.is_empty() {
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        assert!(
            resp.starts_with(b"HTTP/1.1 ") || resp.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x response: {:?}",
            String::from_utf8_lossy(&resp)
        );
        let code: u16 = std::str::from_utf8(&resp[9..resp.len().min(12)])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(
            (100..600).contains(&code) && (code < 500 || code == 503),
            "status {code}: {:?}",
            String::from_utf8_lossy(&resp)
        );
        let head = &resp[..find(&resp, b"\r\n\r\n").unwrap_or(resp.len())];
        assert!(
            find(head, b"cache-control: no-store").is_none(),
            "a secret was served: {:?}",
            String::from_utf8_lossy(&resp)
        );
    }
    let probe = exchange(&server.socket, b"");
    assert!(
        probe.starts_with(b"HTTP/1.1 503"),
        "readiness after the input: {:?}",
        String::from_utf8_lossy(&probe)
    );
});
