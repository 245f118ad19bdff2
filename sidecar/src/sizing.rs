//! Connection limits derived from the container's memory limit, so that overload ends in a
//! refusal (`503 too_many_connections` on the socket, `max_connections` handshake failures on
//! the proxy) instead of an OOM kill that loses every connection and the audit window.
//!
//! The limit `L` is `KEYWARD_MEMORY_LIMIT` (bytes or a Kubernetes quantity such as `128Mi`;
//! `none` turns the derivation off) or else the cgroup's: v2 `memory.max`, v1
//! `memory.limit_in_bytes`, the smallest along the sidecar's cgroup path and its ancestors.
//! No limit (`max`, or above 2^60): the configured values stand. Otherwise (docs/operations.md):
//!
//! ```text
//! reserve  = 24 MiB + 40 KiB × secrets + L / 8     runtime, cached secrets, allocator slack
//! budget   = L - reserve             (at least 4 MiB)
//! socket   = min(socket.max_connections, budget_socket / 24 KiB)
//! proxy    = min(proxy.max_connections, budget_proxy / 96 KiB / listeners)   per listener
//! ```
//!
//! where a broker-only sidecar gives the whole budget to the socket, and a mesh sidecar half
//! to the socket and half to the proxy listeners. 40 KiB per secret: measured 28-30 KiB per
//! cached small KV secret (tests/sizing_memory.rs). 24 KiB per socket connection: measured 12 KiB
//! idle and 16.5 KiB with a request or a long poll in flight (docs/operations.md), plus the
//! kernel's socket memory charged to the same cgroup. 96 KiB per proxied connection: two TCP
//! sockets, rustls record buffers each way and the copy buffers. Both never go below
//! [`MIN_CONNECTIONS`].

use std::path::Path;

/// Bytes budgeted per socket API connection.
pub const SOCKET_CONN_BYTES: u64 = 24 * 1024;
/// Bytes budgeted per proxied (mTLS) connection.
pub const PROXY_CONN_BYTES: u64 = 96 * 1024;
/// Fixed part of the reserve.
pub const RESERVE_BASE: u64 = 24 * 1024 * 1024;
/// Reserve per configured secret (its cache entry, refresh task and buffers).
pub const SECRET_BYTES: u64 = 40 * 1024;
/// Least budget (a tiny limit still serves a few connections; the kernel decides the rest).
pub const MIN_BUDGET: u64 = 4 * 1024 * 1024;
/// Least connections a derived limit allows.
pub const MIN_CONNECTIONS: usize = 16;
/// Limits at or above this are "no limit" (cgroup v1 reports 2^63 rounded to a page).
const UNLIMITED: u64 = 1 << 60;

/// The limits in force and where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The memory limit used, when there is one.
    pub memory_limit: Option<u64>,
    /// Socket API connections at most.
    pub socket_max_connections: usize,
    /// Connections per proxy listener at most.
    pub proxy_max_connections: usize,
}

/// The limits for a memory limit of `limit` bytes (`None`: unlimited), the configured values,
/// the number of proxy listeners (0: broker-only) and of configured secrets.
pub fn derive(
    limit: Option<u64>,
    socket_configured: usize,
    proxy_configured: usize,
    proxy_listeners: usize,
    secrets: usize,
) -> Sizing {
    let Some(limit) = limit.filter(|l| *l < UNLIMITED) else {
        return Sizing {
            memory_limit: None,
            socket_max_connections: socket_configured,
            proxy_max_connections: proxy_configured,
        };
    };
    let reserve = RESERVE_BASE
        .saturating_add(SECRET_BYTES.saturating_mul(secrets as u64))
        .saturating_add(limit / 8);
    let budget = limit.saturating_sub(reserve).max(MIN_BUDGET);
    let (socket_budget, proxy_budget) = if proxy_listeners == 0 {
        (budget, 0)
    } else {
        (budget / 2, budget - budget / 2)
    };
    let cap = |bytes: u64, per: u64, configured: usize| {
        let n = usize::try_from(bytes / per).unwrap_or(usize::MAX);
        n.max(MIN_CONNECTIONS).min(configured)
    };
    let per_listener = proxy_budget / proxy_listeners.max(1) as u64;
    Sizing {
        memory_limit: Some(limit),
        socket_max_connections: cap(socket_budget, SOCKET_CONN_BYTES, socket_configured),
        proxy_max_connections: cap(per_listener, PROXY_CONN_BYTES, proxy_configured),
    }
}

/// Why `KEYWARD_MEMORY_LIMIT` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("KEYWARD_MEMORY_LIMIT {value:?}: expected bytes, a quantity such as 128Mi or 1G, or none")]
pub struct LimitError {
    value: String,
}

/// A Kubernetes memory quantity: plain bytes or with Ki/Mi/Gi/Ti or k/M/G/T.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// What `KEYWARD_MEMORY_LIMIT` says: `Ok(None)` unset, `Ok(Some(None))` "none" (derivation
/// off), `Ok(Some(Some(bytes)))`.
pub fn env_override(value: Option<&str>) -> Result<Option<Option<u64>>, LimitError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(v) => parse_quantity(v)
            .filter(|b| *b > 0)
            .map(|b| Some(Some(b)))
            .ok_or_else(|| LimitError {
                value: v.to_owned(),
            }),
    }
}

fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let t = text.trim();
    if t == "max" {
        return Some(u64::MAX);
    }
    t.parse().ok()
}

/// The memory limit of the cgroup named in `proc_self_cgroup` (the text of
/// `/proc/self/cgroup`) under the cgroup filesystem `root` (`/sys/fs/cgroup`): the smallest
/// limit along its path and its ancestors, v2 first, then v1. `None` when no limit is set or
/// nothing can be read.
pub fn cgroup_limit(root: &Path, proc_self_cgroup: &str) -> Option<u64> {
    let mut v2_path = None;
    let mut v1_path = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2_path = Some(path);
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1_path = Some(path);
        }
    }
    let smallest = |base: &Path, path: &str, file: &str| {
        // The path as the kernel names it, then its ancestors; inside a cgroup namespace the
        // path is `/` and the mount's root is the container's own cgroup.
        let mut best: Option<u64> = None;
        let mut p = Path::new(path.trim_start_matches('/')).to_path_buf();
        loop {
            if let Some(l) = read_limit(&base.join(&p).join(file)) {
                best = Some(best.map_or(l, |b| b.min(l)));
            }
            if !p.pop() {
                break;
            }
        }
        best
    };
    let v2 = v2_path.and_then(|p| smallest(root, p, "memory.max"));
    let v1 = v1_path.and_then(|p| smallest(&root.join("memory"), p, "memory.limit_in_bytes"));
    v2.or(v1).filter(|l| *l < UNLIMITED)
}

/// The memory limit in force: `KEYWARD_MEMORY_LIMIT`, else the cgroup's.
pub fn memory_limit() -> Result<Option<u64>, LimitError> {
    let env = std::env::var("KEYWARD_MEMORY_LIMIT").ok();
    if let Some(v) = env_override(env.as_deref())? {
        return Ok(v);
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Ok(cgroup_limit(Path::new("/sys/fs/cgroup"), &cgroup))
}

static IN_FORCE: std::sync::OnceLock<Sizing> = std::sync::OnceLock::new();

/// Derives the limits from the memory limit in force and lowers the two settings to them;
/// logs what it did. The sizing is kept for [`register`].
pub fn apply(
    socket_max_connections: &mut usize,
    proxy_max_connections: &mut usize,
    proxy_listeners: usize,
    secrets: usize,
) -> Result<Sizing, LimitError> {
    let limit = memory_limit()?;
    let s = derive(
        limit,
        *socket_max_connections,
        *proxy_max_connections,
        proxy_listeners,
        secrets,
    );
    if let Some(bytes) = s.memory_limit {
        if s.socket_max_connections < *socket_max_connections
            || s.proxy_max_connections < *proxy_max_connections
        {
            tracing::warn!(
                memory_limit_bytes = bytes,
                socket_max_connections = s.socket_max_connections,
                proxy_max_connections = s.proxy_max_connections,
                configured_socket = *socket_max_connections,
                configured_proxy = *proxy_max_connections,
                "Connection limits lowered to fit the memory limit (docs/operations.md#sizing); \
                 connections beyond them are refused"
            );
        } else {
            tracing::info!(
                memory_limit_bytes = bytes,
                socket_max_connections = s.socket_max_connections,
                proxy_max_connections = s.proxy_max_connections,
                "Connection limits fit the memory limit"
            );
        }
    }
    *socket_max_connections = s.socket_max_connections;
    *proxy_max_connections = s.proxy_max_connections;
    let _ = IN_FORCE.set(s);
    Ok(s)
}

/// `keyward_memory_limit_bytes` (0: none) and `keyward_max_connections{listener}` (`socket`,
/// `proxy`: per proxy listener), from the last [`apply`].
pub fn register(registry: &mut prometheus_client::registry::Registry) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let Some(s) = IN_FORCE.get() else { return };
    let limit: Gauge = Gauge::default();
    limit.set(
        s.memory_limit
            .map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
    );
    registry.register(
        "keyward_memory_limit_bytes",
        "Memory limit the connection limits are derived from (0: none)",
        limit,
    );
    let max: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (name, v) in [
        ("socket", s.socket_max_connections),
        ("proxy", s.proxy_max_connections),
    ] {
        max.get_or_create(&vec![("listener".to_owned(), name.to_owned())])
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    registry.register(
        "keyward_max_connections",
        "Connections served at once at most, per socket and per proxy listener",
        max,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn no_limit_keeps_the_configured_values() {
        for l in [None, Some(u64::MAX), Some(9_223_372_036_854_771_712)] {
            let s = derive(l, 10_000, 4096, 2, 0);
            assert_eq!(s.socket_max_connections, 10_000);
            assert_eq!(s.proxy_max_connections, 4096);
            assert_eq!(s.memory_limit, None);
        }
    }

    #[test]
    fn the_injected_128mi_limit_caps_10000_socket_connections_below_the_oom_point() {
        let s = derive(Some(128 * MI), 10_000, 10_000, 0, 0);
        // reserve 40 MiB, budget 88 MiB / 24 KiB.
        assert_eq!(s.socket_max_connections, 3754);
        // At the measured 16.5 KiB per busy connection plus ~16 MiB at rest, that many
        // connections need about 77 MiB: under the limit, with room for the rest.
        let need = 16 * MI + s.socket_max_connections as u64 * 16_896;
        assert!(need < 128 * MI - 24 * MI, "{need}");
        // A mesh sidecar shares the budget with its listeners.
        let m = derive(Some(128 * MI), 10_000, 10_000, 2, 0);
        assert_eq!(m.socket_max_connections, 1877);
        assert_eq!(m.proxy_max_connections, 234);
    }

    #[test]
    fn each_secret_takes_its_share_of_the_budget() {
        let none = derive(Some(128 * MI), 10_000, 10_000, 0, 0);
        let many = derive(Some(128 * MI), 10_000, 10_000, 0, 400);
        // 400 × 40 KiB = 15.6 MiB less budget: 666 fewer connections of 24 KiB.
        assert_eq!(
            none.socket_max_connections - many.socket_max_connections,
            666
        );
    }

    #[test]
    fn configured_values_below_the_derived_ones_stand() {
        let s = derive(Some(1024 * MI), 500, 100, 1, 0);
        assert_eq!(
            (s.socket_max_connections, s.proxy_max_connections),
            (500, 100)
        );
    }

    #[test]
    fn tiny_limits_still_serve_a_few_connections() {
        let s = derive(Some(8 * MI), 1024, 1024, 4, 100);
        assert!(s.socket_max_connections >= MIN_CONNECTIONS);
        assert!(s.proxy_max_connections >= MIN_CONNECTIONS);
    }

    #[test]
    fn derived_limits_grow_with_the_memory_limit() {
        let mut last = 0;
        for mib in [32, 64, 128, 256, 512, 1024] {
            let s = derive(Some(mib * MI), usize::MAX, usize::MAX, 0, 10);
            assert!(s.socket_max_connections > last, "{mib} MiB");
            last = s.socket_max_connections;
        }
    }

    #[test]
    fn quantities_and_the_override() {
        assert_eq!(parse_quantity("128Mi"), Some(128 * MI));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity("12 Mi"), None);
        assert_eq!(parse_quantity("Mi"), None);
        assert_eq!(parse_quantity("99999999999999Ti"), None);
        assert_eq!(env_override(None).expect("unset"), None);
        assert_eq!(env_override(Some("none")).expect("none"), Some(None));
        assert_eq!(
            env_override(Some("64Mi")).expect("64Mi"),
            Some(Some(64 * MI))
        );
        let err = env_override(Some("lots")).expect_err("lots").to_string();
        assert!(
            err.contains("KEYWARD_MEMORY_LIMIT") && err.contains("lots"),
            "{err}"
        );
        assert!(env_override(Some("0")).is_err());
    }

    /// A directory tree of files, removed on drop.
    struct Tree(std::path::PathBuf);
    impl Tree {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "keyward-sizing-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (p, text) in files {
            let f = d.join(p);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(f, text).expect("write");
        }
        Tree(d)
    }

    #[test]
    fn cgroup_v2_limit_is_the_smallest_along_the_path() {
        let d = tree(&[
            ("memory.max", "max\n"),
            ("kubepods/memory.max", "1073741824\n"),
            ("kubepods/pod1/memory.max", "268435456\n"),
            ("kubepods/pod1/c1/memory.max", "max\n"),
        ]);
        assert_eq!(
            cgroup_limit(d.path(), "0::/kubepods/pod1/c1\n"),
            Some(256 * MI)
        );
        // Inside a cgroup namespace: path `/`, the mount root is the container's cgroup.
        let ns = tree(&[("memory.max", "134217728\n")]);
        assert_eq!(cgroup_limit(ns.path(), "0::/\n"), Some(128 * MI));
        let none = tree(&[("memory.max", "max\n")]);
        assert_eq!(cgroup_limit(none.path(), "0::/\n"), None);
    }

    #[test]
    fn cgroup_v1_limit_is_read_when_there_is_no_v2_memory_controller() {
        let d = tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/kubepods/c1/memory.limit_in_bytes", "134217728\n"),
        ]);
        let text = "12:pids:/kubepods/c1\n4:memory:/kubepods/c1\n0::/kubepods/c1\n";
        assert_eq!(cgroup_limit(d.path(), text), Some(128 * MI));
        let unlimited = tree(&[("memory/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(cgroup_limit(unlimited.path(), "4:memory:/\n"), None);
        assert_eq!(cgroup_limit(d.path(), "garbage"), None);
    }
}
