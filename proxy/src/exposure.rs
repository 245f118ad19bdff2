//! The app's own port, reachable without mTLS.
//!
//! keyward shares the pod's network namespace with the app. An app that listens on `0.0.0.0`
//! (the default of most frameworks) can be reached on the pod IP directly, past mTLS, the allow
//! list and the audit log. The sidecar reads the namespace's TCP listeners from
//! `/proc/thread-self/net/tcp` and `tcp6` at start and every [`CHECK_INTERVAL`], and reports every
//! forwarded app port (the port of an inbound `forward`) that has a listener on an address other
//! than loopback: a warning in the log, `keyward_proxy_app_port_exposed{port} 1`, an
//! `app.exposed` audit record, and a line on `/ready`. With `proxy.exposed_app_port: refuse`,
//! `/ready` also fails while it lasts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_audit::{AuditLog, Decision, Record};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{split_host_port, ExposedAppPort, ProxyConfig};
use crate::metrics::Metrics;

/// How often the listeners are checked after the first check at start.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Where the listeners of the calling thread's network namespace are listed.
pub const PROC_NET: &str = "/proc/thread-self/net";

/// The kernel's code for a socket in the LISTEN state.
const TCP_LISTEN: &str = "0A";

/// The local addresses of the LISTEN sockets in the text of `/proc/net/tcp` or
/// `/proc/net/tcp6`. Lines that cannot be parsed are skipped.
///
/// Addresses are printed as the hex of the 32-bit words of the address as the kernel holds them
/// (network byte order read as native integers); ports as plain hex.
pub fn parse_listeners(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _slot = fields.next()?;
            let local = fields.next()?;
            let _remote = fields.next()?;
            let state = fields.next()?;
            if state != TCP_LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::new(parse_addr(addr)?, port))
        })
        .collect()
}

fn parse_addr(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Whether only the pod itself can reach a listener on `ip`: 127.0.0.0/8, `::1`, or an
/// IPv4-mapped 127.0.0.0/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The listeners on `ports` reachable from outside the pod, by port.
pub fn exposed(listeners: &[SocketAddr], ports: &BTreeSet<u16>) -> BTreeMap<u16, Vec<SocketAddr>> {
    let mut out: BTreeMap<u16, Vec<SocketAddr>> = BTreeMap::new();
    for l in listeners {
        if ports.contains(&l.port()) && !is_loopback(l.ip()) {
            let v = out.entry(l.port()).or_default();
            if !v.contains(l) {
                v.push(*l);
            }
        }
    }
    out
}

/// The TCP listeners of the network namespace `net_dir` lists (`tcp` and `tcp6`; a missing
/// `tcp6` means IPv6 is off).
pub fn read_listeners(net_dir: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let read = |name: &str| {
        let path = net_dir.join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let mut all = parse_listeners(&read("tcp")?);
    match read("tcp6") {
        Ok(text) => all.extend(parse_listeners(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

fn describe(port: u16, addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!(
        "app port {port} is reachable from outside the pod without mTLS (listening on {}): \
         bind the app to 127.0.0.1 (docs/proxy.md)",
        list.join(", ")
    )
}

/// Watches the forwarded app ports of one sidecar. Cheap to clone.
#[derive(Clone)]
pub struct Exposure {
    inner: Arc<Inner>,
}

struct Inner {
    ports: BTreeSet<u16>,
    mode: ExposedAppPort,
    net_dir: PathBuf,
    audit: Arc<AuditLog>,
    metrics: Metrics,
    /// Exposed ports with their listeners, as of the last check.
    state: Mutex<BTreeMap<u16, Vec<SocketAddr>>>,
    /// Whether the last check failed to read the listeners (logged once per run of failures).
    failing: Mutex<bool>,
}

impl Exposure {
    /// Watches the ports of `cfg`'s inbound `forward` addresses in this process's namespace.
    pub fn new(cfg: &ProxyConfig, audit: Arc<AuditLog>, metrics: Metrics) -> Self {
        let ports = cfg
            .inbound
            .iter()
            .filter_map(|l| split_host_port(&l.forward).ok().map(|(_, p)| p))
            .collect();
        Self::with(ports, cfg.exposed_app_port, PROC_NET.into(), audit, metrics)
    }

    /// Watches `ports` in the namespace `net_dir` lists.
    pub fn with(
        ports: BTreeSet<u16>,
        mode: ExposedAppPort,
        net_dir: PathBuf,
        audit: Arc<AuditLog>,
        metrics: Metrics,
    ) -> Self {
        for p in &ports {
            metrics.app_port_exposed(*p).set(0);
        }
        Self {
            inner: Arc::new(Inner {
                ports,
                mode,
                net_dir,
                audit,
                metrics,
                state: Mutex::new(BTreeMap::new()),
                failing: Mutex::new(false),
            }),
        }
    }

    /// Reads the listeners once and reports what changed since the last check. Blocking (reads
    /// `/proc`); returns the exposed ports.
    pub fn check(&self) -> std::io::Result<BTreeMap<u16, Vec<SocketAddr>>> {
        let i = &self.inner;
        if i.ports.is_empty() {
            return Ok(BTreeMap::new());
        }
        let listeners = match read_listeners(&i.net_dir) {
            Ok(l) => {
                if let Ok(mut f) = i.failing.lock() {
                    *f = false;
                }
                l
            }
            Err(e) => {
                if let Ok(mut f) = i.failing.lock() {
                    if !*f {
                        warn!(error = %e, "Cannot read the pod's TCP listeners; exposed app ports are not checked");
                    }
                    *f = true;
                }
                return Err(e);
            }
        };
        let now = exposed(&listeners, &i.ports);
        let Ok(mut state) = i.state.lock() else {
            return Ok(now);
        };
        for (port, addrs) in &now {
            if state.get(port) == Some(addrs) {
                continue;
            }
            let reason = describe(*port, addrs);
            warn!(port, mode = i.mode.as_str(), "{reason}");
            i.metrics.app_port_exposed(*port).set(1);
            let decision = match i.mode {
                ExposedAppPort::Refuse => Decision::Deny,
                ExposedAppPort::Warn => Decision::Error,
            };
            self.audit(
                decision,
                *port,
                format!("{reason}; proxy.exposed_app_port: {}", i.mode.as_str()),
            );
        }
        for port in state.keys() {
            if !now.contains_key(port) {
                info!(port, "App port no longer reachable from outside the pod");
                i.metrics.app_port_exposed(*port).set(0);
                self.audit(
                    Decision::Ok,
                    *port,
                    format!("app port {port} listens on loopback only again"),
                );
            }
        }
        *state = now.clone();
        Ok(now)
    }

    fn audit(&self, decision: Decision, port: u16, reason: String) {
        let mut r = Record::new("app.exposed", decision).reason(reason);
        r.port = Some(port);
        if let Err(e) = self.inner.audit.record(&r) {
            warn!(error = %e, "Cannot write audit record");
        }
    }

    /// One line per exposed app port, as of the last check.
    pub fn notes(&self) -> Vec<String> {
        self.inner
            .state
            .lock()
            .map(|s| s.iter().map(|(p, a)| describe(*p, a)).collect())
            .unwrap_or_default()
    }

    /// Not ready while an app port is exposed and the mode is `refuse`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.inner.mode != ExposedAppPort::Refuse {
            return Ok(());
        }
        let notes = self.notes();
        if notes.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} (proxy.exposed_app_port: refuse)",
                notes.join("; ")
            ))
        }
    }

    /// Checks at once, then every [`CHECK_INTERVAL`] until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        if self.inner.ports.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            // Errors are logged by `check`.
            let _ = tokio::task::spawn_blocking(move || me.check()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/tcp of an x86-64 (little-endian) host.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 21341 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 21342 1 0000000000000000 100 0 0 10 0
   2: 0500C80A:3C23 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21343 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 21344 1 0000000000000000 20 4 30 10 -1
   4: 0500C80A:1F92 0200C80A:D2F1 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   5: 0200007F:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 21345 1 0000000000000000 100 0 0 10 0
";

    /// /proc/net/tcp6 of the same host: `::`, `::1`, `::ffff:127.0.0.1`, `::ffff:0.0.0.0`,
    /// `fd00::5`, and an established socket.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F94 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:1F95 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F96 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 100 0 0 10 0
   3: 0000000000000000FFFF000000000000:1F97 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4 1 0 100 0 0 10 0
   4: 000000FD000000000000000005000000:1F98 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5 1 0 100 0 0 10 0
   5: 00000000000000000000000001000000:1F94 00000000000000000000000001000000:D2F2 01 00000000:00000000 00:00000000 00000000  1000        0 6 1 0 20 4 30 10 -1
";

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv4_listeners_only() {
        assert_eq!(
            parse_listeners(TCP),
            vec![
                sa("0.0.0.0:8080"),
                sa("127.0.0.1:8081"),
                sa("10.200.0.5:15395"),
                sa("127.0.0.2:8083"),
            ],
            "LISTEN (0A) only: ESTABLISHED (01) and TIME_WAIT (06) are skipped"
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv6_and_v4_mapped_listeners() {
        assert_eq!(
            parse_listeners(TCP6),
            vec![
                sa("[::]:8084"),
                sa("[::1]:8085"),
                sa("[::ffff:127.0.0.1]:8086"),
                sa("[::ffff:0.0.0.0]:8087"),
                sa("[fd00::5]:8088"),
            ]
        );
    }

    #[test]
    fn garbage_is_skipped_not_a_panic() {
        for text in [
            "",
            "garbage",
            "0: 0100007F 00000000:0000 0A",
            "0: 0100007G:1F90 00000000:0000 0A",
            "0: 0100007F:XYZ 00000000:0000 0A",
            "0: 0100007F:1F90000 00000000:0000 0A",
            "0: 01007F:1F90 00000000:0000 0A",
            "0: é100007F:1F90 00000000:0000 0A",
            "0: 0000000000000000FFFF00000100007:1F96 0:0 0A",
        ] {
            assert!(parse_listeners(text).is_empty(), "{text:?}");
        }
    }

    #[test]
    fn loopback_addresses() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
            "10.200.0.5",
            "fd00::5",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn only_forwarded_ports_on_non_loopback_addresses_are_exposed() {
        let mut all = parse_listeners(TCP);
        all.extend(parse_listeners(TCP6));
        let ports: BTreeSet<u16> = (8080..=8088).collect();
        let got = exposed(&all, &ports);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            vec![8080, 8084, 8087, 8088],
            "wildcard v4, wildcard v6, v4-mapped wildcard, pod address; not 127/8, ::1, mapped 127/8"
        );
        // 15395 listens on the pod address but is not a forwarded port.
        assert!(!got.contains_key(&15395));
        assert!(exposed(&all, &BTreeSet::from([8081, 8085, 8086])).is_empty());
    }
}
