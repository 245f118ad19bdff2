//! The rules of the sidecar config that serde cannot check, in one place: the broker's
//! sections, the workload identity, the proxy, and what broker-only mode allows.

use std::collections::HashSet;

use keyward_identity::SpiffeId;

use crate::rules::{pattern_in_domain, split_host_port, valid_secret_key, valid_secret_name};
use crate::sidecar::{IdentityConfig, ProxyConfig, SidecarConfig, MIN_KV_REFRESH, MIN_SVID_TTL};
use crate::{valid_vault_path, ConfigError, VAULT_PATH_RULE};

/// Smallest `audit.max_bytes` accepted: room for a few segments of records.
const MIN_AUDIT_BYTES: u64 = 64 * 1024;

fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(setting, reason)
}

/// `socket.mode` as a number: octal, optionally `0o`-prefixed, at most `0777`, owner rw.
pub(crate) fn socket_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777 && m & 0o600 == 0o600)
}

impl SidecarConfig {
    /// Checks every rule serde cannot (names, paths, modes, duplicates, trust domains, ports,
    /// what broker-only mode allows), in document order: the broker's sections, then
    /// `identity`, then `proxy`. The error names the first setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_broker()?;
        self.validate_files()?;
        self.validate_certs()?;
        if let Some(identity) = &self.identity {
            identity.validate()?;
        }
        let proxy = self.proxy_or_default();
        if let Some(m) = &self.metrics {
            let taken = std::iter::once(proxy.admin)
                .chain(proxy.inbound.iter().map(|i| i.listen))
                .chain(proxy.outbound.iter().map(|o| o.listen))
                .any(|a| a.port() == m.listen.port());
            if taken {
                return Err(invalid(
                    "metrics.listen",
                    format!(
                        "port {} is already the admin endpoint's or a proxy listener's",
                        m.listen.port()
                    ),
                ));
            }
        }
        match &self.identity {
            Some(id) => proxy.validate(&id.trust_domain),
            None => {
                if !proxy.inbound.is_empty()
                    || !proxy.outbound.is_empty()
                    || proxy.policy_file.is_some()
                {
                    return Err(invalid(
                        "identity",
                        "missing: proxy listeners and policy_file need the workload identity \
                         (add an identity section, or remove proxy.inbound/outbound/policy_file \
                         to run broker-only)",
                    ));
                }
                proxy.validate("")
            }
        }
    }

    fn validate_broker(&self) -> Result<(), ConfigError> {
        let addr = self.vault.addr.trim();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(invalid(
                "vault.addr",
                format!("expected http://HOST:PORT or https://HOST:PORT, got {addr:?}"),
            ));
        }
        self.vault.validate()?;
        if let Some(role) = &self.auth.role {
            if role.is_empty() || role.contains('/') {
                return Err(invalid("auth.role", format!("not a role name: {role:?}")));
            }
        }
        if self.auth.mount().is_empty() || self.auth.mount().contains("..") {
            return Err(invalid("auth.mount", "not a mount path"));
        }
        if let Some(c) = &self.audit.checkpoint {
            c.validate()?;
        }
        if let Some(b) = self.audit.max_bytes {
            if b < MIN_AUDIT_BYTES {
                return Err(invalid(
                    "audit.max_bytes",
                    format!("at least {MIN_AUDIT_BYTES} bytes, got {b}"),
                ));
            }
        }
        if let Some(p) = self.audit.volume_percent {
            if !(1..=100).contains(&p) {
                return Err(invalid(
                    "audit.volume_percent",
                    format!("expected 1 to 100, got {p}"),
                ));
            }
        }
        if let Some(n) = self.audit.segments {
            if !(1..=64).contains(&n) {
                return Err(invalid(
                    "audit.segments",
                    format!("expected 1 to 64, got {n}"),
                ));
            }
        }
        if let Some(i) = self.audit.summary_interval {
            if i < std::time::Duration::from_secs(1) {
                return Err(invalid(
                    "audit.summary_interval",
                    format!("at least 1s, got {i:?}"),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            let at = format!("secrets[{i}]");
            if !valid_secret_name(&s.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "expected 1-128 characters of [A-Za-z0-9_.-], got {:?}",
                        s.name
                    ),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("duplicate secret name {:?}", s.name),
                ));
            }
            if !valid_vault_path(&s.path) {
                return Err(invalid(
                    format!("{at}.path"),
                    format!("expected {VAULT_PATH_RULE}, got {:?}", s.path),
                ));
            }
            if let Some(k) = &s.key {
                if !valid_secret_key(k) {
                    return Err(invalid(
                        format!("{at}.key"),
                        format!(
                            "expected 1-256 printable ASCII bytes without space or '#', got {k:?}"
                        ),
                    ));
                }
            }
        }
        if socket_mode(&self.socket.mode).is_none() {
            return Err(invalid(
                "socket.mode",
                format!(
                    "expected an octal mode with owner rw such as \"0660\", got {:?}",
                    self.socket.mode
                ),
            ));
        }
        if self.kv_refresh() < MIN_KV_REFRESH {
            return Err(invalid("kv_refresh", "must be at least 1s"));
        }
        self.validate_container_sockets()
    }

    /// `socket.containers`: container names are DNS labels (as the pod spec's), each named
    /// once; paths are absolute, each used once, and none is `socket.path`.
    fn validate_container_sockets(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut paths = HashSet::from([self.socket.path.as_path()]);
        for (i, c) in self.socket.containers.iter().enumerate() {
            let at = format!("socket.containers[{i}]");
            let label = !c.name.is_empty()
                && c.name.len() <= 63
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !c.name.starts_with('-')
                && !c.name.ends_with('-');
            if !label {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("expected a container name (a DNS label), got {:?}", c.name),
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("duplicate container {:?}", c.name),
                ));
            }
            if !c.path.is_absolute() {
                return Err(invalid(
                    format!("{at}.path"),
                    format!("expected an absolute path, got {:?}", c.path),
                ));
            }
            if !paths.insert(c.path.as_path()) {
                return Err(invalid(
                    format!("{at}.path"),
                    format!(
                        "{:?} is already socket.path or another container's socket",
                        c.path
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl IdentityConfig {
    /// Checks the `identity` section: a trust domain, Vault PKI mount and role, a lifetime of
    /// at least 10s.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if self.ttl() < MIN_SVID_TTL {
            return Err(invalid("identity.ttl", "must be at least 10s"));
        }
        Ok(())
    }
}

impl ProxyConfig {
    /// Checks the `proxy` section; `trust_domain` is the identity's (empty in broker-only
    /// mode, where there are no listeners to check against it).
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
