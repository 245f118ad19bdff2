//! A `keyward sidecar` in a real memory cgroup (64 MiB, created by the test: needs root and a
//! writable cgroup filesystem, v1 or v2) with `socket.max_connections: 20000` and 4,500 clients
//! each holding a long poll: it derives its socket limit from the cgroup (sidecar/src/sizing.rs),
//! serves that many, refuses the rest with `too_many_connections`, exports the limits as
//! metrics and is never OOM-killed. Without the derivation (`KEYWARD_MEMORY_LIMIT=none`) the
//! same load needs more memory than the cgroup has.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: u64 = 64 * 1024 * 1024;
const CLIENTS: usize = 4500;

/// A memory cgroup with a limit, removed on drop.
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn new(name: &str, limit: u64) -> Cgroup {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/memory")
        };
        let dir = base.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "creating cgroup {} ({e}): this test runs the sidecar under a real memory \
                 limit and needs root with a writable cgroup filesystem",
                dir.display()
            )
        });
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(file), limit.to_string()).expect("set the memory limit");
        if v2 {
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        } else {
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        }
        Cgroup { dir, v2 }
    }

    /// OOM kills in this cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

struct Sidecar {
    child: Child,
    socket: PathBuf,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A broker-only sidecar in `cg` (Vault unreachable: long polls wait), socket limit 20000.
fn start(cg: &Cgroup, memory_limit_env: Option<&str>) -> Sidecar {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("token"), "not.a.jwt").expect("token");
    let admin = free_port();
    std::fs::write(
        p("config.yaml"),
        format!(
            "vault: {{addr: \"http://127.0.0.1:1\", allow_insecure_http: true, timeout: 1s}}\n\
             auth: {{token_file: {}, max_backoff: 30s}}\n\
             audit: {{file: {}}}\n\
             socket: {{path: {}, max_connections: 20000, mode: \"0666\"}}\n\
             secrets: [{{name: db, path: secret/data/db}}]\n\
             proxy: {{admin: \"127.0.0.1:{admin}\"}}\n",
            p("token").display(),
            p("audit.log").display(),
            p("broker.sock").display(),
        ),
    )
    .expect("config");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$2\" && exec \"$0\" sidecar --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_keyward"))
        .arg(p("config.yaml"))
        .arg(cg.dir.join("cgroup.procs"))
        .env_remove("KEYWARD_MEMORY_LIMIT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p("log")).expect("log"));
    if let Some(v) = memory_limit_env {
        cmd.env("KEYWARD_MEMORY_LIMIT", v);
    }
    let child = cmd.spawn().expect("start keyward sidecar");
    let sc = Sidecar {
        child,
        socket: p("broker.sock"),
        admin,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics(admin).is_none() || !sc.socket.exists() {
        assert!(Instant::now() < deadline, "sidecar not serving");
        std::thread::sleep(Duration::from_millis(20));
    }
    sc
}

fn metrics(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// Opens `n` connections, each sending a long poll; returns (held open, refused with
/// too_many_connections, closed otherwise).
fn long_polls(socket: &Path, n: usize) -> (Vec<UnixStream>, usize, usize) {
    let mut open = Vec::new();
    for _ in 0..n {
        let Ok(mut s) = UnixStream::connect(socket) else {
            break;
        };
        let _ =
            s.write_all(b"GET /v1/secrets/db?index=999999&wait=300s HTTP/1.1\r\nHost: x\r\n\r\n");
        open.push(s);
    }
    // Connections are accepted in order and a refused one has its answer written at accept,
    // while an accepted long poll answers nothing for 300 s. Beyond the limit, the last one is
    // refused: once its answer is in, every earlier one has been accepted or refused.
    let (mut held, mut refused, mut closed) = (Vec::new(), 0, 0);
    if let Some(l) = open.pop() {
        open.insert(0, l);
    }
    for (i, mut s) in open.into_iter().enumerate() {
        if i == 0 {
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
        } else {
            s.set_nonblocking(true).expect("nonblocking");
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(k) => {
                let text = String::from_utf8_lossy(&buf[..k]);
                assert!(text.contains("too_many_connections"), "{text}");
                refused += 1;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                held.push(s)
            }
            Err(_) => closed += 1,
        }
    }
    (held, refused, closed)
}

fn gauge(metrics: &str, line_start: &str) -> Option<i64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn sidecar_in_a_64mi_cgroup_refuses_connections_beyond_its_derived_limit_instead_of_dying() {
    let cg = Cgroup::new(&format!("keyward-sizing-{}", std::process::id()), LIMIT);
    let mut sc = start(&cg, None);
    let m = metrics(sc.admin).expect("metrics");
    assert_eq!(
        gauge(&m, "keyward_memory_limit_bytes "),
        Some(LIMIT as i64),
        "{m}"
    );
    let derived = keyward_sidecar::sizing::derive(Some(LIMIT), 20000, 1024, 0, 1);
    assert_eq!(
        gauge(&m, "keyward_max_connections{listener=\"socket\"} "),
        Some(derived.socket_max_connections as i64),
        "{m}"
    );
    let (held, refused, closed) = long_polls(&sc.socket, CLIENTS);
    assert_eq!(closed, 0, "connections closed without an answer");
    assert_eq!(held.len(), derived.socket_max_connections);
    assert_eq!(refused, CLIENTS - derived.socket_max_connections);
    assert!(
        sc.child.try_wait().expect("wait").is_none(),
        "the sidecar exited"
    );
    assert_eq!(cg.oom_kills(), 0);
    // Still serving: /metrics answers with every long poll held.
    assert!(metrics(sc.admin).is_some());
    drop(held);
}

#[test]
fn without_the_derived_limit_the_same_load_outgrows_the_cgroup() {
    // The control: KEYWARD_MEMORY_LIMIT=none keeps max_connections at 20000, and 4,500 long
    // polls at the measured ~16.5 KiB each need more than 64 MiB: the kernel kills the sidecar.
    let cg = Cgroup::new(&format!("keyward-sizing-ctl-{}", std::process::id()), LIMIT);
    let mut sc = start(&cg, Some("none"));
    let (held, _, _) = long_polls(&sc.socket, CLIENTS);
    let deadline = Instant::now() + Duration::from_secs(30);
    let died = loop {
        if sc.child.try_wait().expect("wait").is_some() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        died && cg.oom_kills() > 0,
        "4,500 long polls fit in 64 MiB without the derived limit (held {}): \
         raise CLIENTS so the control shows the OOM kill",
        held.len()
    );
}
