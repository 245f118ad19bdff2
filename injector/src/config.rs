//! Cluster-wide defaults for injected sidecars: the injector's config file (a ConfigMap in the
//! Helm chart), `keyward injector --config FILE` and `keyward inject --config FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::quantity;

/// Why the injector config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("config field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// How the sidecar is added to pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarMode {
    /// An initContainer with `restartPolicy: Always` (Kubernetes ≥ 1.29): starts before the app
    /// containers, passes its startupProbe before they start, and stops after them, so Jobs finish.
    Native,
    /// A regular first container whose postStart hook waits for the broker (Kubernetes < 1.29).
    /// Jobs do not finish on their own in this mode.
    Legacy,
}

/// Vault login method: the sidecar config's own type, written into it as is.
pub use keyward_config::AuthMethod;

/// The injector's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectorConfig {
    /// Sidecar image, pinned by digest (`REPO@sha256:HEX`).
    pub image: String,
    /// Native sidecar (default) or legacy container.
    pub mode: SidecarMode,
    /// Where the sidecar finds Vault.
    pub vault: VaultConfig,
    /// How the sidecar logs in to Vault.
    pub auth: AuthConfig,
    /// The projected service-account token the sidecar logs in with.
    pub token: TokenConfig,
    /// SPIFFE identity settings, used when a pod declares inbound or outbound ports.
    pub identity: IdentityConfig,
    /// Sidecar resources; `keyward.io/*-request` and `*-limit` annotations override them.
    pub resources: Resources,
    /// User and group the sidecar runs as, and the pod fsGroup set when the pod has none.
    pub security: SecurityConfig,
    /// The socket emptyDir.
    pub socket: SocketConfig,
    /// Whether the sidecar also writes audit records to stdout.
    pub audit_stdout: bool,
    /// Vault checkpoints of every sidecar's audit chain (`audit.checkpoint` of the sidecar
    /// config: docs/audit.md, docs/vault-setup.md section 8). Absent (the default): none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_checkpoint: Option<keyward_config::CheckpointSettings>,
    /// Default sidecar log level; `keyward.io/log-level` overrides it.
    pub log_level: String,
    /// Default interval at which sidecars re-read unleased (KV) secrets, a duration such as
    /// `5m`; `keyward.io/kv-refresh` overrides it. The broker's own default (60s) when absent.
    pub kv_refresh: Option<String>,
    /// What the proxy does when an inbound app port is reachable from outside the pod (not only
    /// on 127.0.0.1): `warn` (default) or `refuse` to start. Written into the sidecar config.
    pub exposed_app_port: ExposedAppPort,
    /// The operator's ceilings on what a pod's annotations and spec may ask for.
    pub policy: PolicyConfig,
    /// The sidecar's Prometheus listener (every injected pod, broker-only ones included).
    pub metrics: MetricsConfig,
    /// The newest config contract version the sidecar image (`image`) reads (default: this
    /// injector's, [`keyward_config::CONTRACT_VERSION`]). A pod whose config needs a newer
    /// version is refused, naming both, instead of getting a sidecar that cannot start.
    pub sidecar_contract_version: u32,
}

/// `metrics`: the port every sidecar serves `/metrics` on (only that path) for Prometheus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Port, on all of the pod's addresses (default 15091, next to the loopback admin port
    /// 15090, away from the ports apps commonly use such as 9090).
    pub port: u16,
    /// Name of the port declared on the sidecar container (default `kw-metrics`, what the
    /// chart's PodMonitor selects: `monitoring.sidecarPortName`).
    pub port_name: String,
    /// Also add `prometheus.io/scrape`, `/port` and `/path` annotations to injected pods, for
    /// Prometheus set-ups that discover pods by annotation (default false).
    pub scrape_annotations: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            port: 15091,
            port_name: "kw-metrics".to_owned(),
            scrape_annotations: false,
        }
    }
}

/// `exposed_app_port`: what the sidecar's proxy does when an inbound app port also listens
/// beyond 127.0.0.1, where peers could reach the app without mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExposedAppPort {
    /// Log a warning and serve.
    Warn,
    /// Refuse to start.
    Refuse,
}

impl ExposedAppPort {
    /// The name as the sidecar config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Refuse => "refuse",
        }
    }
}

/// What pod authors may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Inject pods with `hostNetwork: true` or `hostPID: true` (default false: refused, since the
    /// sidecar's plaintext outbound ports and admin port would listen on the node, and the
    /// node's processes would share the pod's process view).
    pub allow_host_namespaces: bool,
    /// Shortest `keyward.io/kv-refresh` a pod may ask for (default `1s`), so that many replicas
    /// cannot hammer Vault.
    pub min_kv_refresh: String,
    /// Accept `keyward.io/inbound-allow-PORT` patterns that name no namespace
    /// (`spiffe://TD/*`, `spiffe://TD/ns/*`), which let every workload of the trust domain in
    /// (default false).
    pub allow_trust_domain_wide_patterns: bool,
    /// Let pods opt out with `keyward.io/inject: "false"` (default true). When false that
    /// annotation is refused (and the chart drops the label opt-out from the webhook's
    /// objectSelector).
    pub allow_opt_out: bool,
    /// Let a pod choose its Vault namespace with `keyward.io/vault-namespace` (default false:
    /// the annotation is refused and every sidecar uses `vault.namespace`).
    pub allow_pod_vault_namespace: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allow_host_namespaces: false,
            min_kv_refresh: "1s".to_owned(),
            allow_trust_domain_wide_patterns: false,
            allow_opt_out: true,
            allow_pod_vault_namespace: false,
        }
    }
}

impl PolicyConfig {
    /// `min_kv_refresh` as a duration (validated at load; the broker's floor if unreadable).
    pub fn min_kv_refresh(&self) -> std::time::Duration {
        crate::annotations::kv_refresh(&self.min_kv_refresh)
            .unwrap_or(std::time::Duration::from_secs(1))
    }
}

/// The sidecar image when the config names none: the release `release/image.json` pins (a test
/// fails when the two differ).
pub const DEFAULT_IMAGE: &str =
    "ghcr.io/keyward/keyward@sha256:fbbbaeb1683578389c158c36cbf390f3498a393e2ea93f90dff23789dfa3439a";

/// The lowest `sidecar_contract_version` accepted: every injected pod's config uses
/// per-container sockets and the metrics listener (contract version 2).
pub const MIN_SIDECAR_CONTRACT_VERSION: u32 = 2;

/// Vault address and CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// Vault's address as seen from pods, e.g. `https://vault.vault.svc:8200`.
    pub addr: String,
    /// A ConfigMap, present in every injected namespace (for example distributed by
    /// trust-manager), holding Vault's CA certificate; mounted into the sidecar only.
    pub ca_config_map: Option<CaConfigMap>,
    /// Accept a plain `http://` address (no TLS to Vault): only for a dev server. Required for
    /// an `http://` address, and written into the sidecar config, which refuses `http://`
    /// without it.
    pub allow_insecure_http: bool,
    /// Vault Enterprise / OpenBao namespace every sidecar logs in and reads in
    /// (`X-Vault-Namespace`); absent: the root namespace.
    pub namespace: Option<String>,
    /// The name Vault's certificate is verified against instead of the host of `addr`
    /// (sidecar config contract version 3).
    pub tls_server_name: Option<String>,
    /// A Secret, present in every injected namespace, holding the client certificate and key
    /// the sidecar presents to Vault (mutual TLS); mounted into the sidecar only (contract
    /// version 3).
    pub client_cert_secret: Option<ClientCertSecret>,
}

/// A Secret with a PEM client certificate (chain) and its key, e.g. a `kubernetes.io/tls` one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertSecret {
    /// Secret name.
    pub name: String,
    /// Key of the certificate chain, default `tls.crt`.
    #[serde(default = "default_cert_key")]
    pub cert_key: String,
    /// Key of the private key, default `tls.key`.
    #[serde(default = "default_key_key")]
    pub key_key: String,
}

fn default_cert_key() -> String {
    "tls.crt".to_owned()
}

fn default_key_key() -> String {
    "tls.key".to_owned()
}

/// A ConfigMap key holding a PEM CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfigMap {
    /// ConfigMap name.
    pub name: String,
    /// Key in the ConfigMap, default `ca.crt`.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// Vault auth method and mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `jwt` (default) or `kubernetes`.
    pub method: AuthMethod,
    /// The auth method's mount path, without `auth/`.
    pub mount: String,
}

/// The projected service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Audience Vault's role is bound to.
    pub audience: String,
    /// Token lifetime requested from the kubelet, at least 600.
    pub expiration_seconds: i64,
}

/// SPIFFE identity and the PKI that signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trust domain of `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`.
    pub trust_domain: String,
    /// Vault PKI mount that signs workload certificates.
    pub pki_mount: String,
    /// Role of that mount.
    pub pki_role: String,
}

/// Resource requests and limits, each a Kubernetes quantity keyed by `cpu` or `memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Requests (default cpu 10m, memory 24Mi).
    pub requests: BTreeMap<String, String>,
    /// Limits (default memory 128Mi, no CPU limit: see docs/annotations.md).
    pub limits: BTreeMap<String, String>,
}

/// Sidecar identity on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Non-zero uid of the sidecar.
    pub run_as_user: i64,
    /// Non-zero gid of the sidecar.
    pub run_as_group: i64,
    /// Pod fsGroup set when the pod has none, so the socket directory is group-shared.
    pub fs_group: i64,
}

/// The socket emptyDir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// sizeLimit of the Memory-backed emptyDir (it also holds the audit log).
    pub size_limit: String,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            mode: SidecarMode::Native,
            vault: VaultConfig::default(),
            auth: AuthConfig::default(),
            token: TokenConfig::default(),
            identity: IdentityConfig::default(),
            resources: Resources::default(),
            security: SecurityConfig::default(),
            socket: SocketConfig::default(),
            audit_stdout: true,
            audit_checkpoint: None,
            log_level: "info".to_owned(),
            kv_refresh: None,
            exposed_app_port: ExposedAppPort::Warn,
            policy: PolicyConfig::default(),
            metrics: MetricsConfig::default(),
            sidecar_contract_version: keyward_config::CONTRACT_VERSION,
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            addr: "https://vault.vault.svc:8200".to_owned(),
            ca_config_map: None,
            allow_insecure_http: false,
            namespace: None,
            tls_server_name: None,
            client_cert_secret: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            method: AuthMethod::Jwt,
            mount: "jwt".to_owned(),
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            audience: "vault".to_owned(),
            expiration_seconds: 3600,
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            pki_mount: "pki_int".to_owned(),
            pki_role: "spiffe".to_owned(),
        }
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            requests: BTreeMap::from([
                ("cpu".to_owned(), "10m".to_owned()),
                ("memory".to_owned(), "24Mi".to_owned()),
            ]),
            limits: BTreeMap::from([("memory".to_owned(), "128Mi".to_owned())]),
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            run_as_user: 65532,
            run_as_group: 65532,
            fs_group: 65532,
        }
    }
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            size_limit: "16Mi".to_owned(),
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl InjectorConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates config text; an empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str::<Option<Self>>(text)
                .map_err(|source| ConfigError::Parse {
                    path: "<text>".to_owned(),
                    source,
                })?
                .unwrap_or_default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (repo, digest) = self.image.split_once("@sha256:").ok_or_else(|| {
            invalid(
                "image",
                format!(
                    "must be pinned by digest (REPO@sha256:HEX), got '{}'",
                    self.image
                ),
            )
        })?;
        if repo.is_empty()
            || digest.len() != 64
            || !digest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid(
                "image",
                format!(
                    "must be REPO@sha256: and 64 lowercase hex digits, got '{}'",
                    self.image
                ),
            ));
        }
        if !(self.vault.addr.starts_with("https://") || self.vault.addr.starts_with("http://"))
            || self.vault.addr.len() <= "https://".len()
        {
            return Err(invalid(
                "vault.addr",
                format!(
                    "expected an http:// or https:// URL, got '{}'",
                    self.vault.addr
                ),
            ));
        }
        if self.vault.addr.starts_with("http://") && !self.vault.allow_insecure_http {
            return Err(invalid(
                "vault.allow_insecure_http",
                format!(
                    "vault.addr '{}' is plain http (tokens and secrets unencrypted): use https://, \
                     or set vault.allow_insecure_http: true for a dev server",
                    self.vault.addr
                ),
            ));
        }
        if let Some(ca) = &self.vault.ca_config_map {
            if !crate::annotations::is_dns_subdomain(&ca.name) {
                return Err(invalid(
                    "vault.ca_config_map.name",
                    format!("'{}' is not a ConfigMap name", ca.name),
                ));
            }
            if ca.key.is_empty() || ca.key.contains('/') {
                return Err(invalid(
                    "vault.ca_config_map.key",
                    format!("'{}' is not a ConfigMap key", ca.key),
                ));
            }
        }
        if let Some(ns) = &self.vault.namespace {
            if !keyward_config::valid_vault_namespace(ns) {
                return Err(invalid(
                    "vault.namespace",
                    format!("expected path segments of [A-Za-z0-9_.-] joined by '/', got '{ns}'"),
                ));
            }
        }
        if let Some(name) = &self.vault.tls_server_name {
            if !keyward_config::valid_server_name(name) {
                return Err(invalid(
                    "vault.tls_server_name",
                    format!("expected a DNS name or an IP address, got '{name}'"),
                ));
            }
        }
        if let Some(c) = &self.vault.client_cert_secret {
            if !crate::annotations::is_dns_subdomain(&c.name) {
                return Err(invalid(
                    "vault.client_cert_secret.name",
                    format!("'{}' is not a Secret name", c.name),
                ));
            }
            for (field, key) in [
                ("vault.client_cert_secret.cert_key", &c.cert_key),
                ("vault.client_cert_secret.key_key", &c.key_key),
            ] {
                if key.is_empty() || key.contains('/') || key == ".." {
                    return Err(invalid(field, format!("'{key}' is not a Secret key")));
                }
            }
            if c.cert_key == c.key_key {
                return Err(invalid(
                    "vault.client_cert_secret.key_key",
                    "must differ from cert_key",
                ));
            }
        }
        let tls_settings = [
            (
                "vault.tls_server_name",
                self.vault.tls_server_name.is_some(),
            ),
            (
                "vault.client_cert_secret",
                self.vault.client_cert_secret.is_some(),
            ),
        ];
        for (field, set) in tls_settings {
            if set && !self.vault.addr.starts_with("https://") {
                return Err(invalid(
                    field,
                    "only for an https:// vault.addr (there is no TLS to a plain http:// one)",
                ));
            }
            if set && self.sidecar_contract_version < 3 {
                return Err(invalid(
                    field,
                    format!(
                        "needs a sidecar that reads config contract version 3, and \
                         sidecar_contract_version is {}: upgrade the sidecar image and raise \
                         sidecar_contract_version, or leave {field} unset",
                        self.sidecar_contract_version
                    ),
                ));
            }
        }
        if self.auth.mount.is_empty() || self.auth.mount.starts_with('/') {
            return Err(invalid(
                "auth.mount",
                "expected the mount path without auth/, e.g. jwt",
            ));
        }
        if self.token.audience.is_empty() {
            return Err(invalid("token.audience", "must not be empty"));
        }
        if !(600..=(1 << 32)).contains(&self.token.expiration_seconds) {
            return Err(invalid(
                "token.expiration_seconds",
                format!(
                    "must be at least 600 (the kubelet's minimum), got {}",
                    self.token.expiration_seconds
                ),
            ));
        }
        keyward_identity::SpiffeId::parse(&format!("spiffe://{}", self.identity.trust_domain))
            .map_err(|e| invalid("identity.trust_domain", e.to_string()))?;
        if self.identity.pki_mount.is_empty() || self.identity.pki_role.is_empty() {
            return Err(invalid(
                "identity.pki_mount",
                "pki_mount and pki_role must not be empty",
            ));
        }
        for (field, map) in [
            ("resources.requests", &self.resources.requests),
            ("resources.limits", &self.resources.limits),
        ] {
            for (k, v) in map {
                if k != "cpu" && k != "memory" {
                    return Err(invalid(
                        field,
                        format!("only cpu and memory are supported, got '{k}'"),
                    ));
                }
                if quantity::parse(v).is_none_or(|q| q < 0.0) {
                    return Err(invalid(field, format!("{k}: '{v}' is not a quantity")));
                }
            }
        }
        for (field, id) in [
            ("security.run_as_user", self.security.run_as_user),
            ("security.run_as_group", self.security.run_as_group),
            ("security.fs_group", self.security.fs_group),
        ] {
            if !(1..=i64::from(u32::MAX)).contains(&id) {
                return Err(invalid(
                    field,
                    format!("must be a non-zero id (the sidecar never runs as root), got {id}"),
                ));
            }
        }
        if quantity::parse(&self.socket.size_limit).is_none_or(|q| q <= 0.0) {
            return Err(invalid(
                "socket.size_limit",
                format!("'{}' is not a positive quantity", self.socket.size_limit),
            ));
        }
        let min = crate::annotations::kv_refresh(&self.policy.min_kv_refresh)
            .map_err(|problem| invalid("policy.min_kv_refresh", problem))?;
        if let Some(d) = &self.kv_refresh {
            let d = crate::annotations::kv_refresh(d)
                .map_err(|problem| invalid("kv_refresh", problem))?;
            if d < min {
                return Err(invalid(
                    "kv_refresh",
                    format!(
                        "is below policy.min_kv_refresh ({})",
                        self.policy.min_kv_refresh
                    ),
                ));
            }
        }
        if crate::annotations::LogLevel::parse(&self.log_level).is_none() {
            return Err(invalid(
                "log_level",
                format!(
                    "expected trace, debug, info, warn or error, got '{}'",
                    self.log_level
                ),
            ));
        }
        if let Some(c) = &self.audit_checkpoint {
            c.validate()
                .map_err(|e| invalid("audit_checkpoint", e.to_string()))?;
        }
        let v = self.sidecar_contract_version;
        if !(1..=keyward_config::CONTRACT_VERSION).contains(&v) {
            return Err(invalid(
                "sidecar_contract_version",
                format!(
                    "this injector writes config contract versions 1 to {}, got {v}",
                    keyward_config::CONTRACT_VERSION
                ),
            ));
        }
        if v < MIN_SIDECAR_CONTRACT_VERSION {
            // Every pod this injector writes has per-container sockets (its app containers
            // mount only their own socket directory) and the metrics listener (the port it
            // declares and Prometheus scrapes): a version-1 sidecar has neither, so a
            // version-1 document would leave the apps without a socket. Refused here, once,
            // instead of on every pod.
            return Err(invalid(
                "sidecar_contract_version",
                format!(
                    "{v} is below {MIN_SIDECAR_CONTRACT_VERSION}: every pod this injector \
                     injects needs contract version {MIN_SIDECAR_CONTRACT_VERSION} (per-container \
                     sockets, the metrics listener), which a sidecar image reading only version \
                     1 cannot run; run the injector release that matches that sidecar image, or \
                     upgrade the sidecar image and set sidecar_contract_version to \
                     {MIN_SIDECAR_CONTRACT_VERSION} or more"
                ),
            ));
        }
        let m = &self.metrics;
        if m.port == 0 || m.port == crate::annotations::ADMIN_PORT {
            return Err(invalid(
                "metrics.port",
                format!(
                    "must be a port other than 0 and the admin port {}, got {}",
                    crate::annotations::ADMIN_PORT,
                    m.port
                ),
            ));
        }
        // A container port name: an IANA_SVC_NAME (1-15 of [a-z0-9-], a letter, no '--').
        let name = &m.port_name;
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || !name.bytes().any(|b| b.is_ascii_lowercase())
            || name.starts_with('-')
            || name.ends_with('-')
            || name.contains("--")
        {
            return Err(invalid(
                "metrics.port_name",
                format!("expected a port name (1-15 of a-z, 0-9, '-'), got '{name}'"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        InjectorConfig::default().validate().expect("defaults");
        assert_eq!(
            InjectorConfig::from_yaml("").expect("empty"),
            InjectorConfig::default()
        );
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let cfg = InjectorConfig::from_yaml(
            "vault: {addr: 'https://bao.example:8200'}\nmode: legacy\ntoken: {audience: bao}\n",
        )
        .expect("parse");
        assert_eq!(cfg.vault.addr, "https://bao.example:8200");
        assert_eq!(cfg.mode, SidecarMode::Legacy);
        assert_eq!(cfg.token.audience, "bao");
        assert_eq!(cfg.token.expiration_seconds, 3600);
    }

    #[test]
    fn rejects_bad_fields() {
        for (text, field) in [
            ("image: keyward:latest", "image"),
            (
                "token: {expiration_seconds: 60}",
                "token.expiration_seconds",
            ),
            ("security: {run_as_user: 0}", "security.run_as_user"),
            ("vault: {addr: vault:8200}", "vault.addr"),
            ("identity: {trust_domain: Bad}", "identity.trust_domain"),
            ("resources: {limits: {memory: lots}}", "resources.limits"),
            ("log_level: loud", "log_level"),
            ("kv_refresh: often", "kv_refresh"),
            ("kv_refresh: 100ms", "kv_refresh"),
            ("policy: {min_kv_refresh: often}", "policy.min_kv_refresh"),
            (
                "kv_refresh: 10s\npolicy: {min_kv_refresh: 1m}",
                "kv_refresh",
            ),
        ] {
            match InjectorConfig::from_yaml(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            InjectorConfig::from_yaml("vualt: {}"),
            Err(ConfigError::Parse { .. })
        ));
    }
}
