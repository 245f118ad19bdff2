//! Proxy benchmark: client → outbound → inbound → server on loopback, through keyward's proxy,
//! through two Envoys with the same certificates and worker threads, and direct.
//!
//! `proxy run --envoy PATH [--workers 1] [--secs 10] [--open 1000] [--only direct,keyward,envoy]`
//! prints a Markdown table (`--secs 0` skips the timed phases: only the bulk upload and the
//! open connections, e.g. to profile the bulk path). The keyward
//! proxies run as child processes of this binary (`proxy node ...`), each the keyward-proxy
//! library serving one listener with rcgen-minted SVIDs (no Vault: the broker is not in the
//! measured process).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_audit::{AuditConfig, AuditLog};
use keyward_identity::{IdPattern, SpiffeId};
use keyward_proxy::config::{InboundConfig, OutboundConfig};
use keyward_proxy::identity::{IdentityStore, Svid};
use keyward_proxy::metrics::Metrics;
use keyward_proxy::policy::Policy;
use keyward_proxy::server::{Limits, Proxy};
use keyward_proxy::svid::TrustBundle;
use keyward_testkit::testpki::{Leaf, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

const TD: &str = "cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("node") => node(&args[1..]),
        Some("run") => run(&args[1..]),
        _ => {
            eprintln!("usage: proxy run --envoy PATH [--workers N] [--secs S] [--open N] [--only LIST] | proxy node ...");
            std::process::exit(2);
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `node inbound|outbound LISTEN TARGET DIR WORKERS`: one keyward proxy listener.
fn node(args: &[String]) -> Result<(), Error> {
    let [role, listen, target, dir, workers] = args else {
        return Err("node ROLE LISTEN TARGET DIR WORKERS".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let dir = std::path::PathBuf::from(dir);
    let rd = |n: &str| std::fs::read_to_string(dir.join(n));
    let (chain, key) = if role == "inbound" {
        (rd("server.pem")?, rd("server.key")?)
    } else {
        (rd("client.pem")?, rd("client.key")?)
    };
    let bundle = TrustBundle::from_pem(&rd("ca.pem")?)?;
    let svid = Svid::from_parts(&chain, Zeroizing::new(key), bundle, TD)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.parse()?)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = Arc::new(IdentityStore::new(TD));
        store.install(svid);
        let audit = Arc::new(AuditLog::open(AuditConfig {
            path: dir.join(format!("audit-{role}.log")),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })?);
        let policy = Policy::from_ports([(listen.port(), vec![IdPattern::parse(CLIENT_ID)?])]);
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
        let proxy = Proxy::new(
            Limits {
                allow_tls12: false,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(3600),
                max_connections: 100_000,
            },
            store,
            rx,
            audit,
            Metrics::default(),
        );
        let l = TcpListener::bind(listen).await?;
        if role == "inbound" {
            proxy.inbound(
                l,
                InboundConfig {
                    listen,
                    forward: target.clone(),
                    allow: vec![],
                    proxy_protocol: false,
                },
            )?;
        } else {
            proxy.outbound(
                l,
                OutboundConfig {
                    listen,
                    upstream: target.clone(),
                    expect: vec![SpiffeId::parse(SERVER_ID)?],
                },
            )?;
        }
        std::future::pending::<()>().await;
        Ok::<(), Error>(())
    })
}

/// A child process (in its own process group), killed with its group when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &std::path::Path) -> Result<Self, Error> {
        let f = std::fs::File::create(log)?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        Ok(Self {
            child,
            name: name.into(),
        })
    }

    /// The process, or for a bash wrapper its single child.
    fn pid(&self) -> u32 {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|kids| kids.split_whitespace().next()?.parse().ok())
            .unwrap_or(pid)
    }

    /// CPU time (user + system) the process has used, in seconds.
    fn cpu_secs(&self) -> f64 {
        let pid = self.pid();
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and stime are 14 and 15.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
                Some(ticks / 100.0)
            })
            .unwrap_or(f64::NAN)
    }

    /// RSS of the process (or, for a bash wrapper, of its single child) in MiB.
    fn rss_mib(&self) -> f64 {
        let pid = self.pid();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_listening(addr: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("{addr} not listening").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The backend: answers every request with RESPONSE; a request starting with `BULK` makes it
/// read to EOF and answer the byte count.
async fn backend() -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pending = 0usize;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf.starts_with(b"BULK") {
                        let mut total = n as u64;
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => total += n as u64,
                            }
                        }
                        let _ = s.write_all(format!("{total}").as_bytes()).await;
                        let _ = s.shutdown().await;
                        return;
                    }
                    // Count complete requests (they end in an empty line).
                    pending += buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                    while pending > 0 {
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                        pending -= 1;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn request(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), Error> {
    s.write_all(REQUEST).await?;
    s.read_exact(&mut buf[..RESPONSE.len()]).await?;
    Ok(())
}

struct Results {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    bulk_mbs: f64,
    /// CPU seconds both proxies spent per GiB of the bulk upload.
    bulk_cpu: f64,
    conns_per_s: f64,
}

/// Measures a proxy pair listening on `pin` (inbound) and `pout` (the entry) once both listen:
/// load, RSS of both idle, then RSS with `conns` connections open and after they close.
async fn measure_pair(
    pin: u16,
    pout: u16,
    procs: [&Proc; 2],
    secs: u64,
    conns: usize,
) -> Result<(Results, f64, (f64, f64)), Error> {
    let entry: SocketAddr = format!("127.0.0.1:{pout}").parse()?;
    wait_listening(format!("127.0.0.1:{pin}").parse()?).await?;
    wait_listening(entry).await?;
    // Let start-up allocations settle before the idle reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = procs.iter().map(|p| p.rss_mib()).sum();
    let r = measure(entry, secs, &procs).await?;
    let open = rss_with_open(entry, conns, &procs).await?;
    Ok((r, idle, open))
}

async fn measure(entry: SocketAddr, secs: u64, procs: &[&Proc]) -> Result<Results, Error> {
    let (rps, p50_us, p99_us) = if secs == 0 {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        keep_alive(entry, secs).await?
    };
    let (bulk_mbs, bulk_cpu) = bulk(entry, procs).await?;
    let conns_per_s = if secs == 0 {
        f64::NAN
    } else {
        new_conns(entry, secs).await?
    };
    Ok(Results {
        rps,
        p50_us,
        p99_us,
        bulk_mbs,
        bulk_cpu,
        conns_per_s,
    })
}

/// HTTP/1.1 keep-alive over 64 connections: (requests/s, p50 µs, p99 µs).
async fn keep_alive(entry: SocketAddr, secs: u64) -> Result<(f64, f64, f64), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let stop = stop.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(entry).await?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 256];
            request(&mut s, &mut buf).await?; // warm-up: handshake done
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                request(&mut s, &mut buf).await?;
                lat.push(t.elapsed().as_micros() as u32);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Error>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rps = (count.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    Ok((rps, pct(0.50), pct(0.99)))
}

/// One connection, 1 GiB one way, acknowledged by the backend's byte count: (MB/s, CPU seconds
/// of `procs` per GiB).
async fn bulk(entry: SocketAddr, procs: &[&Proc]) -> Result<(f64, f64), Error> {
    let total: u64 = 1 << 30;
    let mut s = TcpStream::connect(entry).await?;
    let chunk = vec![0x5a_u8; 256 * 1024];
    let cpu = || procs.iter().map(|p| p.cpu_secs()).sum::<f64>();
    let cpu0 = cpu();
    let t = Instant::now();
    s.write_all(b"BULK").await?;
    let mut sent = 4u64;
    while sent < total {
        s.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    s.shutdown().await?;
    let mut ack = String::new();
    s.read_to_string(&mut ack).await?;
    let bulk_mbs = sent as f64 / t.elapsed().as_secs_f64() / 1e6;
    let bulk_cpu = if procs.is_empty() {
        f64::NAN
    } else {
        (cpu() - cpu0) * (1u64 << 30) as f64 / sent as f64
    };
    if ack.trim() != sent.to_string() {
        return Err(format!("bulk: backend got {ack}, sent {sent}").into());
    }
    Ok((bulk_mbs, bulk_cpu))
}

/// New connections per second: 16 concurrent loops of connect, one request, close.
async fn new_conns(entry: SocketAddr, secs: u64) -> Result<f64, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let stop = stop.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let mut s = TcpStream::connect(entry).await?;
                s.set_nodelay(true)?;
                request(&mut s, &mut buf).await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let conns_per_s = count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(conns_per_s)
}

/// RSS (MiB) of the proxies with `n` connections open through the chain (each has carried
/// one request), and one second after they were all closed.
async fn rss_with_open(entry: SocketAddr, n: usize, procs: &[&Proc]) -> Result<(f64, f64), Error> {
    let mut open = Vec::with_capacity(n);
    let mut buf = [0u8; 256];
    for _ in 0..n {
        let mut s = TcpStream::connect(entry).await?;
        request(&mut s, &mut buf).await?;
        open.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = procs.iter().map(|p| p.rss_mib()).sum();
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procs.iter().map(|p| p.rss_mib()).sum();
    Ok((rss, after))
}

fn envoy_config(admin: u16, listener: String, cluster: String) -> String {
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n\
         static_resources:\n  listeners:\n{listener}  clusters:\n{cluster}"
    )
}

fn tls_common(dir: &std::path::Path, who: &str, expect: &str, i: &str) -> String {
    format!(
        "{i}common_tls_context:\n\
         {i}  tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}\n\
         {i}  tls_certificates:\n\
         {i}  - certificate_chain: {{filename: \"{d}/{who}.pem\"}}\n\
         {i}    private_key: {{filename: \"{d}/{who}.key\"}}\n\
         {i}  validation_context:\n\
         {i}    trusted_ca: {{filename: \"{d}/ca.pem\"}}\n\
         {i}    match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{expect}\"}}}}]\n",
        d = dir.display()
    )
}

fn envoy_listener(port: u16, tls: Option<String>) -> String {
    let ts = tls
        .map(|t| {
            format!(
                "    - transport_socket:\n\
                 \x20       name: envoy.transport_sockets.tls\n\
                 \x20       typed_config:\n\
                 \x20         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n\
                 \x20         require_client_certificate: true\n{t}\
                 \x20     filters:\n"
            )
        })
        .unwrap_or_else(|| "    - filters:\n".into());
    format!(
        "  - name: l\n\
         \x20   address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n\
         \x20   filter_chains:\n{ts}\
         \x20     - name: envoy.filters.network.tcp_proxy\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n\
         \x20         stat_prefix: l\n\
         \x20         cluster: c\n"
    )
}

fn envoy_cluster(port: u16, tls: Option<String>) -> String {
    let mut s = format!(
        "  - name: c\n\
         \x20   type: STATIC\n\
         \x20   connect_timeout: 5s\n\
         \x20   circuit_breakers: {{thresholds: [{{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}}]}}\n\
         \x20   load_assignment:\n\
         \x20     cluster_name: c\n\
         \x20     endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n"
    );
    if let Some(t) = tls {
        s.push_str(&format!(
            "    transport_socket:\n\
             \x20     name: envoy.transport_sockets.tls\n\
             \x20     typed_config:\n\
             \x20       \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{t}"
        ));
    }
    s
}

fn run(args: &[String]) -> Result<(), Error> {
    let envoy = flag(args, "--envoy").ok_or("--envoy PATH (scripts/deps.sh envoy)")?;
    let workers: usize = flag(args, "--workers")
        .unwrap_or_else(|| "1".into())
        .parse()?;
    let secs: u64 = flag(args, "--secs")
        .unwrap_or_else(|| "10".into())
        .parse()?;
    let conns: usize = flag(args, "--open")
        .unwrap_or_else(|| "1000".into())
        .parse()?;
    let only = flag(args, "--only").unwrap_or_else(|| "direct,keyward,envoy".into());
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca = TestCa::new("bench");
    let client = ca.leaf(Leaf::new(CLIENT_ID).lifetime(Duration::from_secs(86400)));
    let server = ca.leaf(Leaf::new(SERVER_ID).lifetime(Duration::from_secs(86400)));
    std::fs::write(d.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(d.join("client.pem"), &client.chain_pem)?;
    std::fs::write(d.join("client.key"), client.key_pem.as_bytes())?;
    std::fs::write(d.join("server.pem"), &server.chain_pem)?;
    std::fs::write(d.join("server.key"), server.key_pem.as_bytes())?;

    // The load generator and backend get their own threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let backend = backend().await?;
        let mut rows = Vec::new();

        // Direct.
        if only.contains("direct") {
        let r = measure(backend, secs, &[]).await?;
        rows.push(("direct", r, f64::NAN, (f64::NAN, f64::NAN)));
        }

        // keyward: outbound → inbound.
        if only.contains("keyward") {
            let me = std::env::current_exe()?;
            let (pin, pout) = (free_port()?, free_port()?);
            let inb = Proc::spawn(
                "keyward-in",
                Command::new(&me).args([
                    "node",
                    "inbound",
                    &format!("127.0.0.1:{pin}"),
                    &backend.to_string(),
                    &d.display().to_string(),
                    &workers.to_string(),
                ]),
                &d.join("kw-in.log"),
            )?;
            let out = Proc::spawn(
                "keyward-out",
                Command::new(&me).args([
                    "node",
                    "outbound",
                    &format!("127.0.0.1:{pout}"),
                    &format!("127.0.0.1:{pin}"),
                    &d.display().to_string(),
                    &workers.to_string(),
                ]),
                &d.join("kw-out.log"),
            )?;
            let (r, idle, open) = measure_pair(pin, pout, [&inb, &out], secs, conns).await?;
            rows.push(("keyward", r, idle, open));
        }

        // Envoy: outbound Envoy → inbound Envoy.
        if only.contains("envoy") {
            let (pin, pout, ain, aout) = (free_port()?, free_port()?, free_port()?, free_port()?);
            let cin = envoy_config(
                ain,
                envoy_listener(pin, Some(tls_common(d, "server", CLIENT_ID, "          "))),
                envoy_cluster(backend.port(), None),
            );
            let cout = envoy_config(
                aout,
                envoy_listener(pout, None),
                envoy_cluster(pin, Some(tls_common(d, "client", SERVER_ID, "        "))),
            );
            std::fs::write(d.join("envoy-in.yaml"), cin)?;
            std::fs::write(d.join("envoy-out.yaml"), cout)?;
            let base = std::process::id() % 10_000 * 10;
            let spawn = |name: &str, cfg: &str, id: u32| {
                let script = format!(
                    "'{envoy}' -c '{}' --base-id {id} --concurrency {workers} --log-level error; :",
                    d.join(cfg).display()
                );
                Proc::spawn(name, Command::new("bash").args(["-c", &script]), &d.join(format!("{name}.log")))
            };
            let inb = spawn("envoy-in", "envoy-in.yaml", base + 1)?;
            let out = spawn("envoy-out", "envoy-out.yaml", base + 2)?;
            let (r, idle, open) = measure_pair(pin, pout, [&inb, &out], secs, conns).await?;
            rows.push(("envoy", r, idle, open));
        }

        println!("workers per proxy: {workers}, {secs}s per load phase, {conns} open connections\n");
        println!("| path | req/s (64 conns) | p50 µs | p99 µs | bulk MB/s | bulk CPU s/GiB (both proxies) | new mTLS conns/s | RSS idle MiB (both proxies) | RSS {conns} conns MiB | RSS after close MiB |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (name, r, idle, (open, after)) in &rows {
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
                r.rps, r.p50_us, r.p99_us, r.bulk_mbs, r.bulk_cpu, r.conns_per_s, idle, open, after
            );
        }
        if let Some(k) = rows.iter().find(|r| r.0 == "keyward") {
            let (open, idle) = (k.3 .0, k.2);
            println!(
                "\nkeyward per open connection per proxy: {:.1} KiB",
                (open - idle) * 1024.0 / (2.0 * conns as f64)
            );
        }
        if let (Some(k), Some(e)) = (rows.iter().find(|r| r.0 == "keyward"), rows.iter().find(|r| r.0 == "envoy")) {
            println!(
                "\nkeyward / envoy: req/s {:.2}x, bulk {:.2}x, bulk CPU per GiB {:.2}x, new conns {:.2}x, p99 {:.2}x, RSS idle {:.2}x, RSS open {:.2}x",
                k.1.rps / e.1.rps,
                k.1.bulk_mbs / e.1.bulk_mbs,
                k.1.bulk_cpu / e.1.bulk_cpu,
                k.1.conns_per_s / e.1.conns_per_s,
                k.1.p99_us / e.1.p99_us,
                k.2 / e.2,
                k.3 .0 / e.3 .0
            );
        }
        Ok::<(), Error>(())
    })
}
