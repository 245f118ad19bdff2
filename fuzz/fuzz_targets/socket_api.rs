//! The broker's socket API, whole: a real `keyward_broker::Broker` (routing, query and name
//! parsing, uid allow lists, auditing, hyper's HTTP/1 parsing with the socket's head limit and
//! read timeout) serving each input on a fresh in-memory connection
//! (`Broker::serve_connection` over `tokio::io::duplex`), with a Vault that is not there. The
//! broker never panics, answers only with well-formed HTTP/1.x status lines, never with a 5xx
//! other than 503 (not ready) and never 200 for a secret (none was ever fetched), and still
//! answers its readiness probe afterwards. `SO_PEERCRED` and the socket file are covered by
//! `tests/broker_socket.rs`.
//!
//! The runtime's clock is paused: when the broker is only waiting (for a body longer than the
//! input, a long-poll, a read timeout), time jumps ahead at once instead of being slept through.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use keyward_audit::Caller;
use keyward_broker::config::Config;
use keyward_broker::Broker;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Server {
    broker: Broker,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        // Port 9 (discard) on loopback: nothing listens, and nothing here logs in anyway.
        let yaml = format!(
            r#"
vault: {{addr: "http://127.0.0.1:9", timeout: 1s, allow_insecure_http: true}}
auth: {{role: fuzz, token_file: {token}}}
revoke_on_shutdown: false
secrets:
  - {{name: db, path: database/creds/app, key: password}}
  - {{name: api, path: secret/data/shop/api, required: false, allow_uids: [4242]}}
  - {{name: cfg, path: secret/data/shop/cfg, required: false}}
socket: {{path: {socket}, read_timeout: 2s, max_wait: 20ms}}
audit: {{file: /dev/null}}
"#,
            token = dir.path().join("token").display(),
            socket = dir.path().join("unused.sock").display(),
        );
        let config = Config::from_yaml(&yaml, &std::collections::BTreeMap::new()).expect("config");
        let broker = Broker::new(config).expect("broker");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        Server {
            broker,
            rt,
            _dir: dir,
        }
    })
}

/// Ends every input: blank lines close an unfinished header block (a server skips blank lines
/// before a request), then a last request asks the broker to close the connection.
const CLOSE: &[u8] =
    b"\r\n\r\nGET /v1/health/ready HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n";

/// Writes `data` on a new connection and reads whatever comes back until the broker closes, or
/// it has nothing more to say for 200 ms of (paused, so instant) time: an input that declares a
/// body longer than what follows it. Half-closing instead would not do: hyper then drops the
/// connection without answering.
fn exchange(server: &Server, uid: u32, data: &[u8]) -> Vec<u8> {
    server.rt.block_on(async {
        let (client, io) = tokio::io::duplex(64 * 1024);
        let broker = server.broker.clone();
        let caller = Caller {
            pid: 4242,
            uid,
            gid: uid,
            comm: "fuzz".into(),
        };
        let conn = tokio::spawn(async move {
            let _ = broker
                .serve_connection(io, caller, CancellationToken::new())
                .await;
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // Writes and reads interleave: an answer can be larger than the pipe's buffer.
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            for chunk in [data, CLOSE] {
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
            }
        };
        let read = async {
            loop {
                match tokio::time::timeout(Duration::from_millis(200), rd.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        };
        tokio::join!(write, read);
        conn.abort();
        let _ = conn.await.map_err(|e| assert!(!e.is_panic(), "the connection panicked"));
        out
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    // The first byte picks the caller: in `api`'s allow list or not.
    let uid = if data.first().is_some_and(|b| b & 1 == 1) { 4242 } else { 1000 };
    let resp = exchange(server, uid, data);
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
    let probe = exchange(server, 1000, b"");
    assert!(
        probe.starts_with(b"HTTP/1.1 503"),
        "readiness after the input: {:?}",
        String::from_utf8_lossy(&probe)
    );
});
