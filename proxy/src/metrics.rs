//! The proxy's Prometheus metrics, registered next to the broker's in one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `direction` is `inbound` or `outbound`; `port` the local listen port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: &'static str,
    pub port: u16,
}

/// Authorization decisions by port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub direction: &'static str,
    pub port: u16,
    pub decision: &'static str,
}

/// Handshake failures by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: &'static str,
    pub port: u16,
    pub reason: &'static str,
}

/// Bytes by port and flow: `flow` is `rx` (from the remote peer) or `tx` (to it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: &'static str,
    pub port: u16,
    pub flow: &'static str,
}

/// A forwarded app port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: u16,
}

/// Every metric the proxy exports. Cheap to clone (all handles are shared).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub connections_open: Family<ConnLabels, Gauge>,
    pub connections_total: Family<ConnLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    pub handshake_failures: Family<FailureLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub svid_expiry: Gauge,
    pub svid_renewals: Counter,
    pub svid_errors: Counter,
    pub policy_reloads: Counter,
    pub policy_errors: Counter,
    pub connections_revoked: Counter,
    pub app_port_exposed: Family<PortLabels, Gauge>,
}

impl Metrics {
    /// Registers every metric under `keyward_proxy_*` / `keyward_svid_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("keyward");
        r.register(
            "proxy_connections_open",
            "Proxied connections currently open",
            self.connections_open.clone(),
        );
        r.register(
            "proxy_connections",
            "Connections accepted by the proxy",
            self.connections_total.clone(),
        );
        r.register(
            "proxy_authz",
            "Authorization decisions by port",
            self.authz.clone(),
        );
        r.register(
            "proxy_handshake_failures",
            "Failed TLS handshakes by reason",
            self.handshake_failures.clone(),
        );
        r.register(
            "proxy_bytes",
            "Bytes proxied, rx from and tx to the remote peer",
            self.bytes.clone(),
        );
        r.register(
            "svid_expiry_timestamp_seconds",
            "notAfter of the current workload certificate (Unix seconds)",
            self.svid_expiry.clone(),
        );
        r.register(
            "svid_renewals",
            "Workload certificates issued",
            self.svid_renewals.clone(),
        );
        r.register(
            "svid_errors",
            "Failed workload certificate issuances",
            self.svid_errors.clone(),
        );
        r.register(
            "proxy_policy_reloads",
            "Policy file reloads that took effect",
            self.policy_reloads.clone(),
        );
        r.register(
            "proxy_policy_errors",
            "Policy file reloads rejected as invalid (the previous policy stays)",
            self.policy_errors.clone(),
        );
        r.register(
            "proxy_connections_revoked",
            "Established connections closed because the policy no longer allows them",
            self.connections_revoked.clone(),
        );
        r.register(
            "proxy_app_port_exposed",
            "1 while a forwarded app port also listens on an address other than loopback (reachable without mTLS)",
            self.app_port_exposed.clone(),
        );
    }

    /// The exposure gauge of one forwarded app port.
    pub fn app_port_exposed(&self, port: u16) -> Gauge {
        self.app_port_exposed
            .get_or_create(&PortLabels { port })
            .clone()
    }

    /// The bytes counters of one connection: (rx, tx).
    pub fn bytes_of(&self, direction: &'static str, port: u16) -> (Counter, Counter) {
        let rx = self
            .bytes
            .get_or_create(&BytesLabels {
                direction,
                port,
                flow: "rx",
            })
            .clone();
        let tx = self
            .bytes
            .get_or_create(&BytesLabels {
                direction,
                port,
                flow: "tx",
            })
            .clone();
        (rx, tx)
    }

    pub fn authz(&self, direction: &'static str, port: u16, allow: bool) {
        self.authz
            .get_or_create(&AuthzLabels {
                direction,
                port,
                decision: if allow { "allow" } else { "deny" },
            })
            .inc();
    }

    pub fn handshake_failure(&self, direction: &'static str, port: u16, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&FailureLabels {
                direction,
                port,
                reason,
            })
            .inc();
    }
}
