//! Test support for keyward's tests: real OpenBao, PostgreSQL and Envoy servers started on
//! free ports and torn down by guards, the test PKI (`testpki`: certificates minted in process),
//! service-account tokens minted by a test issuer (`jwt`), clients for the broker's Unix socket,
//! `keyward broker`/`keyward sidecar` processes, and process helpers (descriptors, memory,
//! panics).
//!
//! Used by the workspace's integration tests (`tests/`, through the `tests/support` shim), by
//! the crates' own tests as a dev-dependency, and by the test crates `e2e` and `bench`. Never a
//! dependency of a product crate: `cargo tree -e normal` of any of them shows no
//! `keyward-testkit`.

pub mod bao;
pub mod broker;
pub mod disk;
pub mod envoy;
pub mod http;
pub mod jwt;
pub mod pg;
pub mod pki;
pub mod procmem;
pub mod relay;
pub mod tap;
pub mod testpki;
pub mod tools;

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 whose successor is free too (OpenBao binds PORT+1).
pub fn free_port_pair() -> u16 {
    free_ports(2)
}

/// Ports for test servers come from below the kernel's ephemeral range (32768-60999 here), so
/// the many outgoing connections of concurrently running tests never take one between this
/// check and the server's bind (asking the kernel for port 0 hands out ports from that very
/// range). Picks are random, so concurrent test processes seldom pick the same; a server that
/// then fails to bind is detected by its starter (`bao::Bao` checks that its own process holds
/// the listening socket).
const TEST_PORTS: std::ops::Range<u16> = 20000..32000;

/// `n` consecutive free ports on 127.0.0.1; returns the first.
pub(crate) fn free_ports(n: u16) -> u16 {
    use rand::Rng;
    loop {
        let base = rand::thread_rng().gen_range(TEST_PORTS.start..TEST_PORTS.end - n);
        let all_free =
            (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
}

/// Every record an audit log still holds, oldest first: its closed segments
/// (`audit.log.NNNNNN`, by number) and then the active file (`audit.log`). The log rotates
/// under load, so reading only the active file would miss records. A missing log reads as no
/// records; a line that is not JSON panics naming it.
pub fn audit_window(path: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<(u64, std::path::PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let prefix = format!("{}.", name.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = file.strip_prefix(&prefix) {
                    if n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()) {
                        files.push((n.parse().unwrap_or(0), e.path()));
                    }
                }
            }
        }
    }
    files.sort();
    files.push((u64::MAX, path.to_owned()));
    files
        .iter()
        .flat_map(|(_, f)| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("bad audit line in {}: {l}: {e}", f.display()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Open file descriptors of a process. Panics when the process is gone (or `pid` is 0, what
/// the harnesses report for a process no longer running): a dead process has no descriptors,
/// and a leak check must not pass because of that.
pub fn fds(pid: u32) -> usize {
    assert!(
        pid != 0,
        "fds: no process (pid 0): it was never started or has exited"
    );
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("fds: cannot read /proc/{pid}/fd (process gone?): {e}"))
        .count()
}

/// Resident memory of a process, in KiB. Panics when the process is gone or reports no
/// `VmRSS` (a zombie), instead of reading as 0 KiB.
pub fn rss_kib(pid: u32) -> u64 {
    assert!(
        pid != 0,
        "rss_kib: no process (pid 0): it was never started or has exited"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("rss_kib: cannot read /proc/{pid}/status (process gone?): {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("rss_kib: process {pid} reports no VmRSS (exited?):\n{status}"))
}

/// Asserts that a keyward process logged no panic. keyward's panic hook (keyward-telemetry)
/// never prints the default hook's `panicked at`; it logs an error event with target
/// `keyward::panic` and the text [`keyward_telemetry::PANIC_EVENT`]: that is what is looked for
/// (and the default hook's word too, for a panic before the hook is installed).
#[track_caller]
pub fn assert_no_panic(who: &str, log: &str) {
    let hits: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(keyward_telemetry::PANIC_EVENT)
                || l.contains(keyward_telemetry::PANIC_TARGET)
                || l.contains("panicked")
        })
        .collect();
    assert!(
        hits.is_empty(),
        "{who} panicked ({} panic events):\n{}",
        hits.len(),
        hits.join("\n")
    );
}

/// Accessors of the tokens alive in `bao` that were issued by a login at `login_path` (e.g.
/// `auth/jwt/login`), read with the root token: the tokens a broker holds.
pub async fn live_tokens(bao: &bao::Bao, login_path: &str) -> Vec<String> {
    let (status, list) = bao.api_status("LIST", "auth/token/accessors", None).await;
    assert_eq!(status, 200, "LIST auth/token/accessors: {list}");
    let mut out = Vec::new();
    for accessor in list["data"]["keys"].as_array().expect("accessor keys") {
        let accessor = accessor.as_str().expect("accessor");
        let (status, t) = bao
            .api_status(
                "POST",
                "auth/token/lookup-accessor",
                Some(serde_json::json!({ "accessor": accessor })),
            )
            .await;
        // A token revoked between the LIST and the lookup is gone: not alive.
        if status == 200 && t["data"]["path"].as_str() == Some(login_path) {
            out.push(accessor.to_owned());
        }
    }
    out
}

/// Whether the token with this accessor still exists in `bao` (looked up as root).
pub async fn token_alive(bao: &bao::Bao, accessor: &str) -> bool {
    let (status, body) = bao
        .api_status(
            "POST",
            "auth/token/lookup-accessor",
            Some(serde_json::json!({ "accessor": accessor })),
        )
        .await;
    match status {
        200 => true,
        // OpenBao answers 400 "invalid accessor" for a revoked token.
        400 => false,
        other => panic!("lookup-accessor answered {other}: {body}"),
    }
}

/// The lease ids under `prefix` (e.g. `database/creds/app/`) that `bao` still holds.
pub async fn live_leases(bao: &bao::Bao, prefix: &str) -> Vec<String> {
    let (status, list) = bao
        .api_status("LIST", &format!("sys/leases/lookup/{prefix}"), None)
        .await;
    match status {
        200 => list["data"]["keys"]
            .as_array()
            .expect("lease keys")
            .iter()
            .map(|k| format!("{prefix}{}", k.as_str().expect("lease id")))
            .collect(),
        404 => Vec::new(),
        other => panic!("LIST sys/leases/lookup/{prefix} answered {other}: {list}"),
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The policy the test workloads get: read their secrets, manage their own leases, and have
/// their SVID signed.
pub const APP_POLICY: &str = r#"
path "secret/data/*" { capabilities = ["read"] }
path "database/creds/app" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "pki_int/sign/spiffe" { capabilities = ["create", "update"] }
path "pki_int/cert/ca_chain" { capabilities = ["read"] }
"#;

/// A real OpenBao with jwt auth trusting a test issuer, policy `app`, and a role named after
/// the service account, bound to `ns`/`sa`.
pub struct TestVault {
    pub bao: bao::Bao,
    pub issuer: jwt::Issuer,
}

impl TestVault {
    pub async fn start(ns: &str, sa: &str, ttl: &str, max_ttl: &str) -> TestVault {
        Self::with_bao(bao::Bao::start(), ns, sa, ttl, max_ttl).await
    }

    /// The same setup on a server started by the caller (e.g. [`bao::Bao::start_persistent`]).
    pub async fn with_bao(
        bao: bao::Bao,
        ns: &str,
        sa: &str,
        ttl: &str,
        max_ttl: &str,
    ) -> TestVault {
        let issuer = jwt::Issuer::new();
        let v = TestVault { bao, issuer };
        v.configure(ns, sa, ttl, max_ttl).await;
        v
    }

    /// (Re)applies auth and policy, e.g. after a dev-server restart.
    pub async fn configure(&self, ns: &str, sa: &str, ttl: &str, max_ttl: &str) {
        self.issuer.configure(&self.bao).await;
        self.bao.policy("app", APP_POLICY).await;
        jwt::role(&self.bao, sa, ns, sa, ttl, max_ttl, &["app"]).await;
    }

    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.issuer.mint(&jwt::Claims::new(ns, sa))
    }

    /// [`TestVault::start`] for `shop`/`orders` with the `pki_web` engine (its own root CA,
    /// "Shop Web CA") and the role `web`, which issues certificates of 1 h for names under
    /// `shop.svc`, `svc.cluster.local` and the bare name `web`; the workload's policy may issue
    /// from it and revoke. The certificates for the app's own TLS (docs/delivery.md).
    pub async fn with_web_pki() -> TestVault {
        let v = Self::start("shop", "orders", "1h", "2h").await;
        let issue = v
            .bao
            .pki_engine(
                "pki_web",
                "Shop Web CA",
                "web",
                serde_json::json!({
                    "allowed_domains": ["shop.svc", "svc.cluster.local", "web"],
                    "allow_subdomains": true,
                    "allow_bare_domains": true,
                    "ttl": "1h",
                    "max_ttl": "1h",
                }),
            )
            .await;
        v.bao.policy("app", &format!("{APP_POLICY}\n{issue}")).await;
        v
    }
}

/// The `keyward` binary cargo built for the running integration test: `CARGO_BIN_EXE_keyward`
/// (cargo and nextest set it when they run an integration test of the root package), else the
/// binary next to the test's `deps/` directory. Panics naming the build command when there is
/// none.
pub fn keyward_bin() -> PathBuf {
    for var in ["CARGO_BIN_EXE_keyward", "NEXTEST_BIN_EXE_keyward"] {
        if let Some(p) = std::env::var_os(var) {
            return PathBuf::from(p);
        }
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/NAME-HASH -> target/<profile>/keyward
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("keyward"))
        .filter(|b| b.is_file());
    bin.unwrap_or_else(|| {
        panic!(
            "the keyward binary was not found (CARGO_BIN_EXE_keyward unset, none next to {}); \
             build it with `cargo build -p keyward --bin keyward`",
            exe.display()
        )
    })
}
