//! The `identity` and `proxy` sections of the sidecar's YAML document. The broker keeps them
//! raw; they are parsed and validated here before any port is bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyward_identity::{IdPattern, SpiffeId};
use serde::Deserialize;

/// A problem in the `identity` or `proxy` section, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {section}: {reason}")]
    Parse {
        section: &'static str,
        reason: String,
    },
    #[error("invalid config: {setting}: {reason}")]
    Invalid { setting: String, reason: String },
    #[error("invalid config: `{0}` section is missing")]
    Missing(&'static str),
}

fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        reason: reason.into(),
    }
}

/// Workload identity: where the pod's SPIFFE certificate comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trust domain of the SPIFFE IDs, e.g. `cluster.local`. The pod's ID is
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, with namespace and service account
    /// taken from the service-account token, never from configuration.
    pub trust_domain: String,
    /// Mount path of the Vault PKI secrets engine that signs workload certificates
    /// (default `pki_int`).
    #[serde(default = "default_pki_mount")]
    pub pki_mount: String,
    /// PKI role the CSR is signed with, `PKI_MOUNT/sign/ROLE` (default `spiffe`).
    #[serde(default = "default_pki_role")]
    pub pki_role: String,
    /// Requested certificate lifetime (default 24h). The certificate is renewed at about 2/3 of
    /// its actual lifetime, with jitter.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// PEM file of trust anchors used to verify peers instead of the CA chain Vault returns
    /// with each certificate.
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
    /// Uids that may read the certificate and its private key at `GET /v1/identity`
    /// (`keyward.io/identity-uids`). Default: nobody, since the key lets its holder present the
    /// pod's identity anywhere until the certificate expires.
    #[serde(default)]
    pub allow_uids: Vec<u32>,
}

impl IdentityConfig {
    /// The requested certificate lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(Duration::from_secs(24 * 3600))
    }
}

/// The mTLS proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Admin listener serving `/ready`, `/live` and `/metrics`; must be a loopback address
    /// (default `127.0.0.1:15090`).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// YAML file with the allow list of each inbound port, re-read within a second of a change.
    /// When set it replaces every inline `allow` (ports it does not list deny everyone).
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// Also accept and offer TLS 1.2 (default false: TLS 1.3 only).
    #[serde(default)]
    pub allow_tls12: bool,
    /// mTLS listeners in front of local app ports.
    #[serde(default)]
    pub inbound: Vec<InboundConfig>,
    /// Local plaintext listeners that originate mTLS to an upstream.
    #[serde(default)]
    pub outbound: Vec<OutboundConfig>,
    /// Longest time a TLS handshake may take (default 10s).
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection that moves no byte in either direction for this long is closed (default 1h).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most proxied connections open at once over all listeners (default 10000); further
    /// connections are closed right after accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On SIGTERM, how long open connections may take to finish before they are cut
    /// (default 20s).
    #[serde(default = "default_drain_grace", with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Worker threads of the runtime (default: one per CPU).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// What to do when a forwarded app port also listens on an address other than loopback,
    /// so peers can reach the app without mTLS: `warn` (default: log, metric, audit record,
    /// a note on `/ready`) or `refuse` (also fail readiness while it lasts).
    #[serde(default)]
    pub exposed_app_port: ExposedAppPort,
}

/// `proxy.exposed_app_port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExposedAppPort {
    /// Report an exposed app port, stay ready.
    #[default]
    Warn,
    /// Report it and fail readiness while it lasts.
    Refuse,
}

impl ExposedAppPort {
    pub fn as_str(self) -> &'static str {
        match self {
            ExposedAppPort::Warn => "warn",
            ExposedAppPort::Refuse => "refuse",
        }
    }
}

impl<'de> Deserialize<'de> for ExposedAppPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "warn" => Ok(ExposedAppPort::Warn),
            "refuse" => Ok(ExposedAppPort::Refuse),
            _ => Err(serde::de::Error::custom(format!(
                "proxy.exposed_app_port: expected warn or refuse, got {s:?}"
            ))),
        }
    }
}

/// One inbound listener: `listen` (mTLS) to `forward` (the app, plaintext).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Address the mTLS listener binds, e.g. `0.0.0.0:15443`.
    pub listen: SocketAddr,
    /// The app's plaintext address, e.g. `127.0.0.1:8080`.
    pub forward: String,
    /// SPIFFE IDs or patterns (`spiffe://td/ns/frontend/*`) allowed to connect; empty denies
    /// everyone. Ignored when `policy_file` is set.
    #[serde(default)]
    pub allow: Vec<IdPattern>,
    /// Send a PROXY protocol v2 header carrying the caller's address and SPIFFE ID to the app
    /// before any data (default false). See docs/proxy.md.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// One outbound listener: plaintext `listen` to mTLS `upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Local address the app connects to in plaintext, e.g. `127.0.0.1:15001`.
    pub listen: SocketAddr,
    /// The upstream's mTLS address, `HOST:PORT`.
    pub upstream: String,
    /// SPIFFE IDs the upstream's certificate may carry; any other server is refused.
    pub expect: Vec<SpiffeId>,
}

fn default_pki_mount() -> String {
    "pki_int".into()
}
fn default_pki_role() -> String {
    "spiffe".into()
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15090))
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_drain_grace() -> Duration {
    Duration::from_secs(20)
}

impl IdentityConfig {
    /// Parses and validates the raw `identity` section.
    pub fn from_value(value: Option<&serde_yaml_ng::Value>) -> Result<Self, ConfigError> {
        let value = value.ok_or(ConfigError::Missing("identity"))?;
        let c: Self = serde_yaml_ng::from_value(value.clone()).map_err(|e| ConfigError::Parse {
            section: "identity",
            reason: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        SpiffeId::parse(&format!("spiffe://{}", self.trust_domain)).map_err(|e| {
            invalid(
                "identity.trust_domain",
                format!("{e}: got {:?}", self.trust_domain),
            )
        })?;
        for (name, v) in [
            ("identity.pki_mount", &self.pki_mount),
            ("identity.pki_role", &self.pki_role),
        ] {
            if v.is_empty() || v.starts_with('/') || v.split('/').any(|s| s.is_empty() || s == "..")
            {
                return Err(invalid(name, format!("not a Vault path: {v:?}")));
            }
        }
        if self.pki_role.contains('/') {
            return Err(invalid("identity.pki_role", "a role name has no '/'"));
        }
        if self.ttl() < Duration::from_secs(10) {
            return Err(invalid("identity.ttl", "must be at least 10s"));
        }
        Ok(())
    }
}

/// The `identity` and `proxy` sections as the sidecar runs them: with an identity the sidecar
/// obtains an SVID and serves the proxy listeners; without one it runs broker-only (no
/// certificate, no listeners) and `proxy` may only carry the admin endpoint's settings.
pub fn load_sections(
    identity: Option<&serde_yaml_ng::Value>,
    proxy: Option<&serde_yaml_ng::Value>,
) -> Result<(Option<IdentityConfig>, ProxyConfig), ConfigError> {
    let identity = identity
        .map(|v| IdentityConfig::from_value(Some(v)))
        .transpose()?;
    let p = ProxyConfig::parse(proxy)?;
    match &identity {
        Some(id) => p.validate(&id.trust_domain)?,
        None => {
            if !p.inbound.is_empty() || !p.outbound.is_empty() || p.policy_file.is_some() {
                return Err(invalid(
                    "identity",
                    "missing: proxy listeners and policy_file need the workload identity \
                     (add an identity section, or remove proxy.inbound/outbound/policy_file \
                     to run broker-only)",
                ));
            }
            p.validate("")?;
        }
    }
    Ok((identity, p))
}

impl ProxyConfig {
    /// Parses the raw `proxy` section without validating it; an absent section gives the
    /// defaults (admin endpoint only).
    fn parse(value: Option<&serde_yaml_ng::Value>) -> Result<Self, ConfigError> {
        let value = value
            .cloned()
            .unwrap_or_else(|| serde_yaml_ng::Value::Mapping(Default::default()));
        serde_yaml_ng::from_value(value).map_err(|e| ConfigError::Parse {
            section: "proxy",
            reason: e.to_string(),
        })
    }

    /// Parses and validates the raw `proxy` section; `trust_domain` is the identity's.
    pub fn from_value(
        value: Option<&serde_yaml_ng::Value>,
        trust_domain: &str,
    ) -> Result<Self, ConfigError> {
        let value = value.ok_or(ConfigError::Missing("proxy"))?;
        let c: Self = serde_yaml_ng::from_value(value.clone()).map_err(|e| ConfigError::Parse {
            section: "proxy",
            reason: e.to_string(),
        })?;
        c.validate(trust_domain)?;
        Ok(c)
    }

    /// Checks what serde cannot.
    pub fn validate(&self, trust_domain: &str) -> Result<(), ConfigError> {
        if !self.admin.ip().is_loopback() {
            return Err(invalid(
                "proxy.admin",
                format!("must be a loopback address, got {}", self.admin),
            ));
        }
        let mut ports = HashSet::new();
        ports.insert(self.admin.port());
        for (i, l) in self.inbound.iter().enumerate() {
            let at = format!("proxy.inbound[{i}]");
            if l.listen.port() == 0 || !ports.insert(l.listen.port()) {
                return Err(invalid(
                    format!("{at}.listen"),
                    format!("port {} is 0 or used twice", l.listen.port()),
                ));
            }
            split_host_port(&l.forward).map_err(|r| invalid(format!("{at}.forward"), r))?;
            for p in &l.allow {
                if !pattern_in_domain(p, trust_domain) {
                    return Err(invalid(
                        format!("{at}.allow"),
                        format!("{p} is not in trust domain {trust_domain}"),
                    ));
                }
            }
        }
        for (i, o) in self.outbound.iter().enumerate() {
            let at = format!("proxy.outbound[{i}]");
            if o.listen.port() == 0 || !ports.insert(o.listen.port()) {
                return Err(invalid(
                    format!("{at}.listen"),
                    format!("port {} is 0 or used twice", o.listen.port()),
                ));
            }
            if !o.listen.ip().is_loopback() {
                return Err(invalid(
                    format!("{at}.listen"),
                    format!("plaintext listener must be on loopback, got {}", o.listen),
                ));
            }
            split_host_port(&o.upstream).map_err(|r| invalid(format!("{at}.upstream"), r))?;
            if o.expect.is_empty() {
                return Err(invalid(
                    format!("{at}.expect"),
                    "list at least one SPIFFE ID the upstream may present",
                ));
            }
            for id in &o.expect {
                if id.trust_domain() != trust_domain {
                    return Err(invalid(
                        format!("{at}.expect"),
                        format!("{id} is not in trust domain {trust_domain}"),
                    ));
                }
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("proxy.max_connections", "must be at least 1"));
        }
        if self.handshake_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(invalid(
                "proxy.handshake_timeout/idle_timeout",
                "must be greater than 0",
            ));
        }
        if self.worker_threads == Some(0) {
            return Err(invalid("proxy.worker_threads", "must be at least 1"));
        }
        Ok(())
    }
}

/// Whether a pattern can only match IDs of `trust_domain`.
pub(crate) fn pattern_in_domain(p: &IdPattern, trust_domain: &str) -> bool {
    let rest = p.as_str().strip_prefix("spiffe://").unwrap_or_default();
    let td = rest.split('/').next().unwrap_or_default();
    td == trust_domain
}

/// Splits `HOST:PORT` (IPv6 in brackets).
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("expected HOST:PORT with a port of 1-65535, got {s:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("expected HOST:PORT, got {s:?}"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(s).expect("yaml")
    }

    #[test]
    fn parses_the_injector_shape() {
        let id = IdentityConfig::from_value(Some(&yaml(
            "{trust_domain: cluster.local, pki_mount: pki_int, pki_role: spiffe, ttl: 24h, bundle_file: null}",
        )))
        .expect("identity");
        assert_eq!(id.ttl(), Duration::from_secs(86400));
        let p = ProxyConfig::from_value(
            Some(&yaml(
                r#"
admin: "127.0.0.1:15090"
policy_file: null
allow_tls12: false
inbound:
  - {listen: "0.0.0.0:15443", forward: "127.0.0.1:8080", allow: ["spiffe://cluster.local/ns/shop/sa/frontend"], proxy_protocol: false}
outbound:
  - {listen: "127.0.0.1:15001", upstream: "orders.shop.svc:15443", expect: ["spiffe://cluster.local/ns/shop/sa/orders"]}
"#,
            )),
            "cluster.local",
        )
        .expect("proxy");
        assert_eq!(p.inbound[0].listen.port(), 15443);
        assert_eq!(p.outbound[0].expect.len(), 1);
        assert_eq!(p.drain_grace, Duration::from_secs(20));
        assert_eq!(p.exposed_app_port, ExposedAppPort::Warn);
    }

    #[test]
    fn exposed_app_port_is_warn_or_refuse() {
        let p = ProxyConfig::from_value(Some(&yaml("{exposed_app_port: refuse}")), "td")
            .expect("refuse");
        assert_eq!(p.exposed_app_port, ExposedAppPort::Refuse);
        let p =
            ProxyConfig::from_value(Some(&yaml("{exposed_app_port: warn}")), "td").expect("warn");
        assert_eq!(p.exposed_app_port, ExposedAppPort::Warn);
        let err = ProxyConfig::from_value(Some(&yaml("{exposed_app_port: block}")), "td")
            .expect_err("unknown mode")
            .to_string();
        assert!(err.contains("exposed_app_port"), "{err}");
        assert!(err.contains("warn") && err.contains("refuse"), "{err}");
    }

    #[test]
    fn errors_name_the_setting() {
        for (doc, needle) in [
            ("{admin: '0.0.0.0:1'}", "proxy.admin"),
            ("{bogus: 1}", "unknown field `bogus`"),
            (
                "{inbound: [{listen: '0.0.0.0:1', forward: 'x', allow: []}]}",
                "proxy.inbound[0].forward",
            ),
            (
                "{inbound: [{listen: '0.0.0.0:1', forward: 'x:1', allow: ['spiffe://other/x']}]}",
                "proxy.inbound[0].allow",
            ),
            (
                "{inbound: [{listen: '0.0.0.0:1', forward: 'x:1', allow: ['spiffe://td/a/*/b']}]}",
                "'*'",
            ),
            (
                "{outbound: [{listen: '127.0.0.1:2', upstream: 'u:1', expect: []}]}",
                "proxy.outbound[0].expect",
            ),
            (
                "{outbound: [{listen: '0.0.0.0:2', upstream: 'u:1', expect: ['spiffe://td/x']}]}",
                "loopback",
            ),
            (
                "{inbound: [{listen: '0.0.0.0:3', forward: 'x:1'}], outbound: [{listen: '127.0.0.1:3', upstream: 'u:1', expect: ['spiffe://td/x']}]}",
                "used twice",
            ),
        ] {
            let err = ProxyConfig::from_value(Some(&yaml(doc)), "td")
                .expect_err(doc)
                .to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
        let err = IdentityConfig::from_value(Some(&yaml("{trust_domain: 'Bad TD'}")))
            .expect_err("bad td")
            .to_string();
        assert!(err.contains("identity.trust_domain"), "{err}");
        assert!(IdentityConfig::from_value(None).is_err());
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a.b:1"), Ok(("a.b", 1)));
        assert_eq!(split_host_port("[::1]:8"), Ok(("::1", 8)));
        assert!(split_host_port("a:0").is_err());
        assert!(split_host_port(":5").is_err());
    }
}
