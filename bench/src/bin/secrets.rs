//! Secret reads side by side: the keyward broker's socket, OpenBao directly, and `bao agent`
//! (unix listener, cache, api_proxy) — requests/s and p50/p99 latency at 1 and 16 clients,
//! plus the broker's RSS. Run through `bench/secrets.sh`.
//!
//! Usage: secrets KEYWARD_BIN [SECONDS_PER_CASE]
//!        secrets KEYWARD_BIN soak [SECONDS]   (100 clients reading and long-polling; fd and
//!                                             RSS curve of the broker)

use keyward_testkit::{bao, jwt, tools};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

type Body = http_body_util::Empty<hyper::body::Bytes>;

const SECRETS: usize = 10;

#[derive(Clone)]
enum Target {
    Unix {
        path: PathBuf,
        uri: String,
        token: Option<String>,
    },
    Tcp {
        addr: String,
        uri: String,
        token: Option<String>,
    },
}

struct Stats {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

async fn client(target: Target, deadline: Instant) -> (Vec<u32>, u64) {
    use http_body_util::BodyExt;
    let (mut send, uri, token) = match &target {
        Target::Unix { path, uri, token } => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .expect("connect unix");
            let (send, conn) =
                hyper::client::conn::http1::handshake::<_, Body>(hyper_util::rt::TokioIo::new(s))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            (send, uri.clone(), token.clone())
        }
        Target::Tcp { addr, uri, token } => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect tcp");
            s.set_nodelay(true).expect("nodelay");
            let (send, conn) =
                hyper::client::conn::http1::handshake::<_, Body>(hyper_util::rt::TokioIo::new(s))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            (send, uri.clone(), token.clone())
        }
    };
    let mut lat = Vec::with_capacity(100_000);
    let mut errors = 0;
    while Instant::now() < deadline {
        let mut req = hyper::Request::get(&uri).header("host", "bench");
        if let Some(t) = &token {
            req = req.header("x-vault-token", t);
        }
        let req = req.body(Body::new()).expect("request");
        let t0 = Instant::now();
        match send.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                if ok {
                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    (lat, errors)
}

async fn run(target: &Target, clients: usize, secs: u64) -> Stats {
    // Warm-up.
    let _ = client(target.clone(), Instant::now() + Duration::from_millis(300)).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(target.clone(), deadline)))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    Stats {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

async fn wait_for_socket(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not create {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let keyward = PathBuf::from(args.next().expect("usage: secrets KEYWARD_BIN [SECONDS]"));
    let mode = args.next().unwrap_or_default();
    let soak_secs =
        (mode == "soak").then(|| args.next().and_then(|s| s.parse().ok()).unwrap_or(600u64));
    let secs: u64 = mode.parse().unwrap_or(5);
    let dir = tempfile::tempdir().expect("tmp");

    let vault = bao::Bao::start();
    let issuer = jwt::Issuer::new();
    issuer.configure(&vault).await;
    vault
        .policy(
            "bench",
            r#"path "secret/data/bench/*" { capabilities = ["read"] }"#,
        )
        .await;
    jwt::role(&vault, "bench", "bench", "bench", "1h", "24h", &["bench"]).await;
    for i in 0..SECRETS {
        vault
            .kv_put(
                &format!("bench/s{i}"),
                json!({"password": format!("bench-password-{i}"), "user": "bench"}),
            )
            .await;
    }
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        issuer.mint(&jwt::Claims::new("bench", "bench")),
    )
    .expect("token");

    // keyward broker
    let sock = dir.path().join("broker.sock");
    let cfg = dir.path().join("keyward.yaml");
    let mut yaml = format!(
        "vault: {{addr: \"{}\", allow_insecure_http: true}}\nauth: {{token_file: {}}}\nsocket: {{path: {}}}\naudit: {{file: {}}}\nsecrets:\n",
        vault.addr(),
        token_file.display(),
        sock.display(),
        dir.path().join("audit.log").display()
    );
    for i in 0..SECRETS {
        yaml.push_str(&format!(
            "  - {{name: s{i}, path: secret/data/bench/s{i}}}\n"
        ));
    }
    std::fs::write(&cfg, yaml).expect("config");
    let broker = Guard(
        Command::new(&keyward)
            .args(["broker", "--config"])
            .arg(&cfg)
            .env("KEYWARD_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start keyward"),
    );
    wait_for_socket(&sock, "keyward").await;
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(&keyward)
            .args(["probe", "--socket"])
            .arg(&sock)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(Instant::now() < ready, "broker not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broker_rss_start = rss_kib(broker.0.id());
    if let Some(total) = soak_secs {
        soak(&vault, &sock, broker.0.id(), total).await;
        return;
    }

    // bao agent with a unix listener, cache and api_proxy.
    let agent_sock = dir.path().join("agent.sock");
    let agent_cfg = dir.path().join("agent.hcl");
    std::fs::write(
        &agent_cfg,
        format!(
            r#"vault {{ address = "{}" }}
auto_auth {{
  method "jwt" {{
    mount_path = "auth/jwt"
    config = {{ path = "{}", role = "bench", remove_jwt_after_reading = false }}
  }}
}}
cache {{}}
api_proxy {{ use_auto_auth_token = true }}
listener "unix" {{
  address = "{}"
  tls_disable = true
}}
"#,
            vault.addr(),
            token_file.display(),
            agent_sock.display()
        ),
    )
    .expect("agent config");
    let agent = Guard(
        Command::new(tools::bao())
            .args(["agent", "-config"])
            .arg(&agent_cfg)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao agent"),
    );
    wait_for_socket(&agent_sock, "bao agent").await;

    // A workload token for the direct reads.
    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/auth/jwt/login", vault.addr()))
        .json(
            &json!({"role": "bench", "jwt": std::fs::read_to_string(&token_file).expect("token")}),
        )
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    let token = login["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_owned();

    let targets = [
        (
            "keyward broker (unix socket, cached)",
            Target::Unix {
                path: sock.clone(),
                uri: "/v1/secrets/s0".into(),
                token: None,
            },
        ),
        (
            "bao agent (unix socket, cache + api_proxy)",
            Target::Unix {
                path: agent_sock.clone(),
                uri: "/v1/secret/data/bench/s0".into(),
                token: None,
            },
        ),
        (
            "OpenBao directly (TCP)",
            Target::Tcp {
                addr: format!("127.0.0.1:{}", vault.port()),
                uri: "/v1/secret/data/bench/s0".into(),
                token: Some(token),
            },
        ),
    ];
    println!("| path | clients | requests/s | p50 µs | p99 µs | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for clients in [1usize, 16] {
        for (name, t) in &targets {
            let s = run(t, clients, secs).await;
            println!(
                "| {name} | {clients} | {:.0} | {:.0} | {:.0} | {} |",
                s.rps, s.p50_us, s.p99_us, s.errors
            );
            results.push((name.to_string(), clients, s));
        }
    }
    println!();
    for clients in [1usize, 16] {
        let get = |prefix: &str| {
            results
                .iter()
                .find(|(n, c, _)| n.starts_with(prefix) && *c == clients)
                .map(|(_, _, s)| s.rps)
                .unwrap_or(0.0)
        };
        println!(
            "ratio at {clients} client(s): broker/agent = {:.1}x, broker/direct = {:.1}x",
            get("keyward") / get("bao agent").max(1.0),
            get("keyward") / get("OpenBao").max(1.0)
        );
    }
    println!(
        "RSS: keyward broker {:.1} MiB after start with {SECRETS} secrets cached, {:.1} MiB after the load; bao agent {:.1} MiB",
        broker_rss_start as f64 / 1024.0,
        rss_kib(broker.0.id()) as f64 / 1024.0,
        rss_kib(agent.0.id()) as f64 / 1024.0
    );
}

/// 100 keep-alive clients for `total` seconds: half read, half long-poll for the next version,
/// while secret s0 gets a new version every second. Prints the broker's fd count and RSS at
/// every tenth of the run.
async fn soak(vault: &bao::Bao, sock: &Path, pid: u32, total: u64) {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(total);
    println!(
        "soak: 100 clients for {total} s; fds before: {}, RSS {:.1} MiB",
        fds(pid),
        rss_kib(pid) as f64 / 1024.0
    );
    let mut tasks = Vec::new();
    for i in 0..100 {
        let sock = sock.to_owned();
        let (ok, failed) = (ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let s = tokio::net::UnixStream::connect(&sock)
                .await
                .expect("connect");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Body>(hyper_util::rt::TokioIo::new(s))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let mut version = 0u64;
            while Instant::now() < deadline {
                let uri = if i % 2 == 0 {
                    "/v1/secrets/s0".to_owned()
                } else {
                    format!("/v1/secrets/s0?index={version}&wait=5s")
                };
                let req = hyper::Request::get(uri)
                    .header("host", "bench")
                    .body(Body::new())
                    .expect("request");
                match send.send_request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let body = resp
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        version = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["version"].as_u64())
                            .unwrap_or(version);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }));
    }
    println!("| elapsed s | requests | failed | fds | RSS MiB |");
    println!("|---:|---:|---:|---:|---:|");
    let step = Duration::from_secs((total / 10).max(1));
    let mut n = 0u64;
    let mut next_sample = start + step;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        n += 1;
        vault
            .kv_put(
                "bench/s0",
                json!({"password": format!("soak-{n}"), "user": "bench"}),
            )
            .await;
        if Instant::now() >= next_sample {
            next_sample += step;
            println!(
                "| {} | {} | {} | {} | {:.1} |",
                start.elapsed().as_secs(),
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                fds(pid),
                rss_kib(pid) as f64 / 1024.0
            );
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "soak done: {} requests, {} failed; fds after the clients closed: {}; RSS {:.1} MiB",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        fds(pid),
        rss_kib(pid) as f64 / 1024.0
    );
}
