//! A real Envoy (from `scripts/deps.sh envoy`) on free ports, torn down when dropped, and the
//! YAML pieces of an mTLS interop configuration.
//!
//! Envoy sets a parent-death signal, so it is started through `bash -c 'envoy ...; :'` in its
//! own process group (bash outlives any test thread); dropping the guard kills the group.
//! Every instance gets its own `--base-id`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);

pub struct Envoy {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub admin_port: u16,
}

/// Certificate files for one side of a TLS context.
pub struct TlsFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Writes chain, key and CA PEM into `dir` under `name`.
    pub fn write(dir: &Path, name: &str, chain: &str, key: &str, ca: &str) -> TlsFiles {
        let f = |ext: &str, body: &str| {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::write(&p, body).expect("write TLS file");
            p
        };
        TlsFiles {
            chain: f("chain.pem", chain),
            key: f("key.pem", key),
            ca: f("ca.pem", ca),
        }
    }

    fn common(&self, expect_san: &str, indent: &str) -> String {
        self.common_with(expect_san, indent, true)
    }

    /// With `tls13` false there are no `tls_params`: Envoy's defaults (TLS 1.2 at most for
    /// an upstream).
    fn common_with(&self, expect_san: &str, indent: &str, tls13: bool) -> String {
        let params = if tls13 {
            format!("{indent}  tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}\n")
        } else {
            String::new()
        };
        format!(
            "{i}common_tls_context:\n\
             {params}\
             {i}  tls_certificates:\n\
             {i}  - certificate_chain: {{filename: \"{chain}\"}}\n\
             {i}    private_key: {{filename: \"{key}\"}}\n\
             {i}  validation_context:\n\
             {i}    trusted_ca: {{filename: \"{ca}\"}}\n\
             {i}    match_typed_subject_alt_names:\n\
             {i}    - san_type: URI\n\
             {i}      matcher: {{exact: \"{expect_san}\"}}\n",
            i = indent,
            chain = self.chain.display(),
            key = self.key.display(),
            ca = self.ca.display(),
        )
    }
}

/// A plaintext TCP listener forwarding to `cluster`.
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> String {
    format!(
        "  - name: {name}\n\
         \x20   address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n\
         \x20   filter_chains:\n\
         \x20   - filters:\n\
         \x20     - name: envoy.filters.network.tcp_proxy\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n\
         \x20         stat_prefix: {name}\n\
         \x20         cluster: {cluster}\n"
    )
}

/// An mTLS listener (client certificate required, SAN `expect_client`) forwarding to `cluster`.
pub fn mtls_listener(
    name: &str,
    port: u16,
    cluster: &str,
    tls: &TlsFiles,
    expect_client: &str,
) -> String {
    format!(
        "  - name: {name}\n\
         \x20   address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n\
         \x20   filter_chains:\n\
         \x20   - transport_socket:\n\
         \x20       name: envoy.transport_sockets.tls\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n\
         \x20         require_client_certificate: true\n\
         {common}\
         \x20     filters:\n\
         \x20     - name: envoy.filters.network.tcp_proxy\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n\
         \x20         stat_prefix: {name}\n\
         \x20         cluster: {cluster}\n",
        common = tls.common(expect_client, "          "),
    )
}

/// A cluster of one 127.0.0.1 endpoint, plaintext or (with `tls`) mTLS expecting `expect_server`.
pub fn cluster(name: &str, port: u16, tls: Option<(&TlsFiles, &str)>) -> String {
    cluster_with(name, port, tls, true)
}

/// As [`cluster`], with Envoy's default TLS versions (no `tls_params`: TLS 1.2 at most).
pub fn cluster_envoy_default_tls(name: &str, port: u16, tls: &TlsFiles, expect: &str) -> String {
    cluster_with(name, port, Some((tls, expect)), false)
}

fn cluster_with(name: &str, port: u16, tls: Option<(&TlsFiles, &str)>, tls13: bool) -> String {
    let mut s = format!(
        "  - name: {name}\n\
         \x20   type: STATIC\n\
         \x20   connect_timeout: 2s\n\
         \x20   load_assignment:\n\
         \x20     cluster_name: {name}\n\
         \x20     endpoints:\n\
         \x20     - lb_endpoints:\n\
         \x20       - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
    );
    if let Some((tls, expect)) = tls {
        s.push_str(&format!(
            "    transport_socket:\n\
             \x20     name: envoy.transport_sockets.tls\n\
             \x20     typed_config:\n\
             \x20       \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n\
             {common}",
            common = tls.common_with(expect, "        ", tls13),
        ));
    }
    s
}

impl Envoy {
    /// Starts Envoy with these listeners and clusters and waits until its admin says ready.
    pub fn start(listeners: &[String], clusters: &[String]) -> Envoy {
        let bin = crate::tools::envoy();
        let dir = tempfile::Builder::new()
            .prefix("keyward-envoy")
            .tempdir()
            .expect("tempdir");
        let admin_port = crate::free_port();
        let config = format!(
            "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}\n\
             static_resources:\n  listeners:\n{}  clusters:\n{}",
            listeners.concat(),
            clusters.concat()
        );
        let cfg_path = dir.path().join("envoy.yaml");
        std::fs::write(&cfg_path, &config).expect("envoy config");
        // Unique per instance on this machine: process id and a counter.
        let base_id = (std::process::id() % 10_000) * 100
            + NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed) % 100;
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log");
        let script = format!(
            "'{}' -c '{}' --base-id {base_id} --concurrency 1 --log-level warn; :",
            bin.display(),
            cfg_path.display()
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let mut e = Envoy {
            child: Some(child),
            dir,
            admin_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if e.admin("/ready").is_some_and(|b| b.contains("LIVE")) {
                return e;
            }
            if let Some(c) = e.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("envoy exited with {status}:\n{}\n{config}", e.log());
                }
            }
            assert!(Instant::now() < deadline, "envoy not ready:\n{}", e.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// GETs an admin path with a blocking client; the body, or None if not reachable.
    pub fn admin(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split("\r\n\r\n").nth(1).map(str::to_owned)
    }

    /// The value of one counter from `/stats`. Panics when Envoy's admin does not answer or
    /// has no such counter (Envoy lists every counter, zeros included), so that a check for 0
    /// cannot pass on a dead Envoy or a misspelt name.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.admin("/stats").unwrap_or_else(|| {
            panic!("stat {name}: Envoy's admin does not answer\n{}", self.log())
        });
        let values: Vec<u64> = stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| *k == name)
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .collect();
        assert!(!values.is_empty(), "stat {name}: no such counter in /stats");
        values.iter().sum()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.log());
        }
    }
}
