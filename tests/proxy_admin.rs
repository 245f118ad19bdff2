//! The sidecar's admin listener out of file descriptors: it backs off and logs once instead of
//! spinning on EMFILE, and serves again once descriptors are free.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

/// Waits (generous deadline) for a line containing `needle`; returns the lines read meanwhile.
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(e) => panic!("no log line with {needle:?} ({e}):\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn admin_accept_backs_off_on_emfile_and_logs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("token"), "not.a.jwt").expect("token");
    let admin = support::free_port();
    // Broker-only (no identity): the admin endpoint serves without Vault.
    std::fs::write(
        p("config.yaml"),
        format!(
            "vault: {{addr: \"http://127.0.0.1:1\", allow_insecure_http: true, timeout: 1s}}\n\
             auth: {{token_file: {}, max_backoff: 30s}}\n\
             audit: {{file: {}}}\n\
             socket: {{path: {}}}\n\
             proxy: {{admin: \"127.0.0.1:{admin}\"}}\n",
            p("token").display(),
            p("audit.log").display(),
            p("broker.sock").display(),
        ),
    )
    .expect("config");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" sidecar --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_keyward"))
        .arg(p("config.yaml"))
        .env("KEYWARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyward sidecar");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let get_live = || -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_live().is_some_and(|r| r.contains("200 OK")) {
        assert!(Instant::now() < deadline, "admin endpoint not serving");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Idle connections the admin keeps open until the sidecar runs out of descriptors; the
    // kernel completes the rest, which then wait in the accept queue.
    let held: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", admin)).expect("connect"))
        .collect();
    let mut seen = Vec::new();
    wait_for(&lines, "Admin accept failed", &mut seen);
    drop(held);
    wait_for(&lines, "Admin accept works again", &mut seen);
    let failures = seen
        .iter()
        .filter(|l| l.contains("Admin accept failed"))
        .count();
    assert_eq!(
        failures,
        1,
        "one warning per run of failures:\n{}",
        seen.join("\n")
    );
    assert!(
        get_live().is_some_and(|r| r.contains("200 OK")),
        "serving again"
    );
    let _ = child.kill();
    let _ = child.wait();
}
