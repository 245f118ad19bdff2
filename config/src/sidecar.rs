//! The sidecar config document: one set of types the injector serializes and the sidecar
//! (broker and proxy) deserializes.
//!
//! Serialization writes what the injector has always written and nothing more: a field the
//! injector sets is always written (`required`, `audit.stdout`, `proxy.admin`), an optional one
//! only when present, and a setting the injector never sets only when it differs from its
//! default. So the document of an injected pod is byte for byte what it was before these types
//! existed (the injector's golden tests hold it to that), and any document deserializes,
//! re-serializes and deserializes again to an equal value.
//!
//! Versioning: `version` is the first field of [`SidecarConfig`]. A document without one is
//! version 1 (what injectors wrote before versions existed, and all an older sidecar reads: it
//! knows no `version` key, so version 1 is written without it). A document is written with the
//! lowest version that can hold it ([`SidecarConfig::required_version`]); a sidecar reads every
//! version up to [`CONTRACT_VERSION`] and refuses a newer one naming both, before anything
//! else in the document is looked at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyward_identity::{IdPattern, SpiffeId};
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The whole sidecar config: `KEYWARD_CONFIG` of an injected sidecar, or the file given to
/// `keyward sidecar --config` / `keyward broker --config`.
///
/// The broker reads `vault`, `auth`, `secrets`, `socket`, `audit`, `kv_refresh` and
/// `revoke_on_shutdown`; the proxy reads `identity` and `proxy`. Without an `identity` section
/// the sidecar runs broker-only (no certificate, no proxy listener; `proxy` may then carry only
/// the admin endpoint's settings). Check a value with [`SidecarConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// The contract version the document is written in (absent: 1). Set it with
    /// [`SidecarConfig::with_required_version`] before writing.
    #[serde(default = "version_1", skip_serializing_if = "is_version_1")]
    pub version: u32,
    /// Where Vault/OpenBao is.
    pub vault: VaultConfig,
    /// How to log in.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The secrets to fetch and serve.
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// The local socket API.
    #[serde(default)]
    pub socket: SocketConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditSettings,
    /// How often KV secrets are re-read so new versions reach the app; `None` is the default
    /// ([`DEFAULT_KV_REFRESH`], see [`SidecarConfig::kv_refresh`]). Kept apart from the default
    /// so a document that names it (`keyward.io/kv-refresh: 1m`) still names it when written.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub kv_refresh: Option<Duration>,
    /// Revoke leases and the Vault token on SIGTERM (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub revoke_on_shutdown: bool,
    /// Workload identity, read by the proxy. `None`: broker-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// The mTLS proxy and the admin endpoint. `None`: the defaults ([`ProxyConfig::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Files rendered from secrets into containers' in-memory volumes (written only when
    /// there are some).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::FileSpec>,
    /// The Prometheus listener reachable from the pod network, serving only `/metrics`
    /// (`/ready` and the rest stay on the loopback admin endpoint). `None`: not served (the
    /// admin endpoint still has `/metrics`). The injector always writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// `metrics`: where the sidecar serves `/metrics` for Prometheus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `0.0.0.0:15091` (the injector's `metrics.port`).
    pub listen: SocketAddr,
}

/// The newest contract version this build reads and writes. Version 2 added
/// `socket.containers`, `metrics`, `files` and `audit.checkpoint` (and `version` itself);
/// version 3 `vault.tls_server_name`, `vault.client_cert_file` and `vault.client_key_file`;
/// certificates (`secrets[].issue`), `secrets[].allow_containers` and files of the SVID
/// (`files[].identity`) are version 3 too.
pub const CONTRACT_VERSION: u32 = 3;

fn version_1() -> u32 {
    1
}
fn is_version_1(v: &u32) -> bool {
    *v == 1
}

/// Default of [`SidecarConfig::kv_refresh`].
pub const DEFAULT_KV_REFRESH: Duration = Duration::from_secs(60);
/// Shortest `kv_refresh` accepted.
pub const MIN_KV_REFRESH: Duration = Duration::from_secs(1);
/// Default of [`IdentityConfig::ttl`].
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest `identity.ttl` accepted.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(10);

impl SidecarConfig {
    /// A config with this Vault address and every other setting at its default.
    pub fn new(vault_addr: impl Into<String>) -> Self {
        Self {
            version: 1,
            vault: VaultConfig::new(vault_addr),
            auth: AuthConfig::default(),
            secrets: Vec::new(),
            socket: SocketConfig::default(),
            audit: AuditSettings::default(),
            kv_refresh: None,
            revoke_on_shutdown: true,
            identity: None,
            proxy: None,
            files: Vec::new(),
            metrics: None,
        }
    }

    /// Reads a parsed YAML document (no validation: see [`SidecarConfig::validate`]). A parse
    /// error names where in the document it is (`proxy.inbound[0].listen`).
    pub fn from_yaml_value(doc: serde_yaml_ng::Value) -> Result<Self, ConfigError> {
        // The version first: a newer document's new keys would otherwise be reported as
        // unknown fields, hiding the reason.
        if let Some(v) = doc.get("version") {
            match v.as_u64() {
                Some(n) if n > u64::from(CONTRACT_VERSION) => {
                    return Err(ConfigError::invalid(
                        "version",
                        format!(
                            "the document is contract version {n}, and this sidecar reads versions \
                             1 to {CONTRACT_VERSION}: it was written by a newer injector; run a \
                             sidecar image that supports version {n}, or set the injector's \
                             sidecar_contract_version to {CONTRACT_VERSION}"
                        ),
                    ))
                }
                Some(n) if n >= 1 => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "version",
                        format!(
                            "expected a contract version from 1 to {CONTRACT_VERSION}, got {v:?}"
                        ),
                    ))
                }
            }
        }
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let at = e.path().to_string();
            ConfigError::Parse {
                at: (at != ".").then_some(at),
                reason: e.into_inner().to_string(),
            }
        })
    }

    /// Reads a YAML document (no validation: see [`SidecarConfig::validate`]).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::parse(e.to_string()))?;
        Self::from_yaml_value(doc)
    }

    /// The document as the injector writes it into `KEYWARD_CONFIG`.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml_ng::to_string(self).map_err(|e| ConfigError::parse(e.to_string()))
    }

    /// The lowest contract version that holds this document: 3 when it uses
    /// `vault.tls_server_name` or a client certificate, 2 when it uses `socket.containers`,
    /// `metrics`, `files`, `audit.checkpoint` or the audit log's
    /// retention settings, else 1.
    pub fn required_version(&self) -> u32 {
        if self.vault.uses_version_3() || self.has_certs() {
            3
        } else if !self.socket.containers.is_empty()
            || self.metrics.is_some()
            || !self.files.is_empty()
            || self.audit.checkpoint.is_some()
            || self.audit.has_retention()
        {
            2
        } else {
            1
        }
    }

    /// This document with `version` set to [`SidecarConfig::required_version`], as the
    /// injector writes it (so a document an older sidecar can read carries no version).
    pub fn with_required_version(mut self) -> Self {
        self.version = self.required_version();
        self
    }

    /// How often KV secrets are re-read.
    pub fn kv_refresh(&self) -> Duration {
        self.kv_refresh.unwrap_or(DEFAULT_KV_REFRESH)
    }

    /// The secret declared under `name`.
    pub fn secret(&self, name: &str) -> Option<&SecretSpec> {
        self.secrets.iter().find(|s| s.name == name)
    }

    /// The `proxy` section as the sidecar runs it: the defaults when it is absent.
    pub fn proxy_or_default(&self) -> ProxyConfig {
        self.proxy.clone().unwrap_or_default()
    }
}

/// Where Vault is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`.
    pub addr: String,
    /// PEM bundle of the CAs Vault's certificate must chain to: a pinned set. When set, the
    /// built-in public roots are not used (every certificate in the file is a trust anchor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace` on every request, the login
    /// included): path segments of `[A-Za-z0-9_.-]` joined by `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name Vault's certificate is verified against, instead of the address's host (a DNS
    /// name or an IP address): for an address by IP or by a Service name the certificate does
    /// not carry. A DNS name is also sent as the TLS SNI and the HTTP `Host` (the connection
    /// still goes to the address's host and port), as Vault's `VAULT_TLS_SERVER_NAME`.
    /// Contract version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// PEM certificate chain presented to Vault (mutual TLS, e.g. a listener with
    /// `tls_require_and_verify_client_cert` or the cert auth method); needs `client_key_file`.
    /// Contract version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`. Contract version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Timeout of one Vault request (default 10s).
    #[serde(
        default = "default_vault_timeout",
        with = "humantime_serde",
        skip_serializing_if = "is_default_vault_timeout"
    )]
    pub timeout: Duration,
    /// Accept a plain `http://` address: secrets and tokens then cross the network unencrypted.
    /// Only for a dev server on loopback (default false: `http://` is refused at start-up).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_insecure_http: bool,
    /// Largest Vault response body accepted, in bytes (default 1 MiB, 4 KiB to 64 MiB).
    #[serde(
        default = "default_max_response_bytes",
        skip_serializing_if = "is_default_max_response_bytes"
    )]
    pub max_response_bytes: usize,
}

impl VaultConfig {
    /// This address, every other setting at its default.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ca_file: None,
            namespace: None,
            tls_server_name: None,
            client_cert_file: None,
            client_key_file: None,
            timeout: default_vault_timeout(),
            allow_insecure_http: false,
            max_response_bytes: default_max_response_bytes(),
        }
    }

    /// Whether a setting of contract version 3 is used (`tls_server_name`, the client
    /// certificate).
    pub fn uses_version_3(&self) -> bool {
        self.tls_server_name.is_some()
            || self.client_cert_file.is_some()
            || self.client_key_file.is_some()
    }

    /// The rules of the TLS and namespace settings serde cannot check; the error names the
    /// setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(ns) = &self.namespace {
            if !valid_vault_namespace(ns) {
                return Err(ConfigError::invalid(
                    "vault.namespace",
                    format!(
                        "expected path segments of [A-Za-z0-9_.-] joined by '/' (at most 256 \
                         bytes, no '.' or '..' segment), got {ns:?}"
                    ),
                ));
            }
        }
        if let Some(name) = &self.tls_server_name {
            if !valid_server_name(name) {
                return Err(ConfigError::invalid(
                    "vault.tls_server_name",
                    format!("expected a DNS name or an IP address, got {name:?}"),
                ));
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "vault.client_key_file",
                    "missing: vault.client_cert_file needs the key of its certificate",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "vault.client_cert_file",
                    "missing: vault.client_key_file is set without the certificate it belongs to",
                ))
            }
            _ => {}
        }
        let https = self
            .addr
            .trim()
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        if !https {
            for (set, name) in [
                (self.tls_server_name.is_some(), "vault.tls_server_name"),
                (self.client_cert_file.is_some(), "vault.client_cert_file"),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        name,
                        "only for an https:// vault.addr (there is no TLS to a plain http:// one)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A Vault/OpenBao namespace path: segments of `[A-Za-z0-9_.-]` joined by `/` (a trailing `/`
/// allowed, as Vault writes them), not `.` or `..`, at most 256 bytes.
pub fn valid_vault_namespace(ns: &str) -> bool {
    let ns = ns.strip_suffix('/').unwrap_or(ns);
    !ns.is_empty()
        && ns.len() <= 256
        && ns.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        })
}

/// A DNS name (labels of `[A-Za-z0-9-]`, not starting or ending with `-`, at most 63 bytes
/// each, 253 in all; no wildcard) or an IP address.
pub fn valid_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All-numeric dotted names are IP addresses or nothing.
        && !n.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// Which auth method logs in with the service-account token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `auth/<mount>/login` with the projected token as a JWT, checked against the issuer's keys.
    Jwt,
    /// `auth/<mount>/login` of the kubernetes method, which asks the API server (TokenReview).
    Kubernetes,
}

impl AuthMethod {
    /// The name as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Kubernetes => "kubernetes",
        }
    }
}

/// Login settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `jwt` (default) or `kubernetes`.
    #[serde(default = "default_method")]
    pub method: AuthMethod,
    /// Mount path of the auth method (default: the method's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Vault role (default: the service-account name from the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The projected service-account token, re-read at every login.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Longest wait between retries after an error (default 30s).
    #[serde(
        default = "default_max_backoff",
        with = "humantime_serde",
        skip_serializing_if = "is_default_max_backoff"
    )]
    pub max_backoff: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            method: default_method(),
            mount: None,
            role: None,
            token_file: default_token_file(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl AuthConfig {
    /// The mount path to log in at.
    pub fn mount(&self) -> &str {
        self.mount
            .as_deref()
            .unwrap_or_else(|| self.method.as_str())
    }
}

/// One secret the app may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Name on the socket API: `[A-Za-z0-9_.-]`, at most 128 bytes.
    pub name: String,
    /// The Vault API path: `secret/data/db` for KV v2, `database/creds/app` for a lease.
    pub path: String,
    /// Serve only this key of the secret's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The broker is ready only once this secret is fetched (default true; always written).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Only these uids may read the secret (default: anyone who can open the socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_uids: Option<Vec<u32>>,
    /// Only requests on the sockets of these app containers (`socket.containers`) may read
    /// the secret (default: any socket). The injector sets it on a certificate: only its
    /// `-container` reads it. Contract version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_containers: Option<Vec<String>>,
    /// A certificate issued by Vault's PKI engine at `path` (`MOUNT/issue/ROLE`) for these
    /// names, instead of a read (contract version 3; see `keyward_config::CertIssue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<crate::CertIssue>,
}

/// The local socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Socket path (default `/run/keyward/broker.sock`).
    #[serde(default = "default_socket")]
    pub path: PathBuf,
    /// Group id given to the socket, so app containers in that group can connect (the
    /// injector writes the pod's fsGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Socket file mode, octal string (default "0660").
    #[serde(default = "default_mode", skip_serializing_if = "is_default_mode")]
    pub mode: String,
    /// How long a client may take to send its request headers (default 5s).
    #[serde(
        default = "default_read_timeout",
        with = "humantime_serde",
        skip_serializing_if = "is_default_read_timeout"
    )]
    pub read_timeout: Duration,
    /// Longest long-poll `wait` accepted (default 5m).
    #[serde(
        default = "default_max_wait",
        with = "humantime_serde",
        skip_serializing_if = "is_default_max_wait"
    )]
    pub max_wait: Duration,
    /// Most connections served at once (default 1024), over all of the sidecar's sockets.
    #[serde(
        default = "default_socket_max_connections",
        skip_serializing_if = "is_default_socket_max_connections"
    )]
    pub max_connections: usize,
    /// One socket per app container (the injector writes one for each container it selects,
    /// mounted into that container alone): the broker listens on each, and every audit record
    /// of a request names the container whose socket it came in on. Empty (older injected
    /// pods, hand-written configs): only `path`, and records name no container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerSocket>,
}

/// The socket of one app container (`socket.containers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSocket {
    /// The container's name, as the pod spec has it (a DNS label): what audit records name.
    pub name: String,
    /// Where the sidecar creates this container's socket.
    pub path: PathBuf,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            path: default_socket(),
            group: None,
            mode: default_mode(),
            read_timeout: default_read_timeout(),
            max_wait: default_max_wait(),
            max_connections: default_socket_max_connections(),
            containers: Vec::new(),
        }
    }
}

impl SocketConfig {
    /// The file mode as a number (checked by [`SidecarConfig::validate`]).
    pub fn mode_bits(&self) -> u32 {
        crate::validate::socket_mode(&self.mode).unwrap_or(0o660)
    }
}

/// The audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Log file (default `/run/keyward/audit.log`), appended with mode 0600.
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
    /// Also write each record to stdout for log collectors (always written).
    #[serde(default)]
    pub stdout: bool,
    /// File holding the HMAC key for lease ids and accessors (default: random per process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key_file: Option<PathBuf>,
    /// fsync after every record (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub fsync: bool,
    /// Checkpoints of the chain's head written to Vault (`None`, the default: none; written
    /// only when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSettings>,
    /// Bytes all the log's segments may hold together (default: `volume_percent` of the
    /// filesystem the log is on, at most 64 MiB). Set it when the log's volume is disk-backed:
    /// there the filesystem is the node's disk, not the volume's `sizeLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Share of the log's filesystem used when `max_bytes` is not set (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_percent: Option<u8>,
    /// Segments kept, the active one included (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// Routine records (renewals, same-version re-reads) are written in full once per
    /// interval and otherwise counted (default 10m).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub summary_interval: Option<Duration>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            file: default_audit_file(),
            stdout: false,
            hmac_key_file: None,
            fsync: false,
            checkpoint: None,
            max_bytes: None,
            volume_percent: None,
            segments: None,
            summary_interval: None,
        }
    }
}

impl AuditSettings {
    /// Whether any of the log's retention settings (contract version 2) is set.
    pub fn has_retention(&self) -> bool {
        self.max_bytes.is_some()
            || self.volume_percent.is_some()
            || self.segments.is_some()
            || self.summary_interval.is_some()
    }
}

/// Checkpoints of the audit chain in Vault: `{chain, seq, head, time, pod}` written to the KV v2
/// path `MOUNT/data/PREFIX/NAMESPACE/POD_NAME` every `every_records` records or `every`,
/// whichever comes first, and at shutdown; the path's version history keeps each one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// Write checkpoints (default true once the section is present).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The KV v2 mount (default `keyward-audit`).
    #[serde(default = "default_checkpoint_mount")]
    pub mount: String,
    /// The path under the mount before `NAMESPACE/POD_NAME` (default `checkpoints`).
    #[serde(default = "default_checkpoint_prefix")]
    pub prefix: String,
    /// A checkpoint at least every this many records (default 1000).
    #[serde(default = "default_checkpoint_records")]
    pub every_records: u64,
    /// A checkpoint at least this often while records are written (default 1m).
    #[serde(default = "default_checkpoint_every", with = "humantime_serde")]
    pub every: Duration,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            mount: default_checkpoint_mount(),
            prefix: default_checkpoint_prefix(),
            every_records: default_checkpoint_records(),
            every: default_checkpoint_every(),
        }
    }
}

impl CheckpointSettings {
    /// Checks the mount and prefix are Vault path segments and the schedule is positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let path_ok = |p: &str| {
            !p.is_empty()
                && p.split('/').all(|s| {
                    !s.is_empty()
                        && s != "."
                        && s != ".."
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                })
        };
        for (name, value) in [("mount", &self.mount), ("prefix", &self.prefix)] {
            if !path_ok(value) {
                return Err(ConfigError::invalid(
                    format!("audit.checkpoint.{name}"),
                    format!(
                        "expected path segments of [A-Za-z0-9_.-] joined by '/', got {value:?}"
                    ),
                ));
            }
        }
        if self.every_records == 0 {
            return Err(ConfigError::invalid(
                "audit.checkpoint.every_records",
                "must be at least 1",
            ));
        }
        if self.every < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "audit.checkpoint.every",
                format!("must be at least 1s, got {:?}", self.every),
            ));
        }
        Ok(())
    }
}

fn default_checkpoint_mount() -> String {
    "keyward-audit".into()
}

fn default_checkpoint_prefix() -> String {
    "checkpoints".into()
}

fn default_checkpoint_records() -> u64 {
    1000
}

fn default_checkpoint_every() -> Duration {
    Duration::from_secs(60)
}

/// Workload identity: where the pod's SPIFFE certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trust domain of the SPIFFE IDs, e.g. `cluster.local`. The pod's ID is
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, with namespace and service account
    /// taken from the service-account token, never from configuration.
    pub trust_domain: String,
    /// Mount path of the Vault PKI secrets engine that signs workload certificates
    /// (default `pki_int`; always written).
    #[serde(default = "default_pki_mount")]
    pub pki_mount: String,
    /// PKI role the CSR is signed with, `PKI_MOUNT/sign/ROLE` (default `spiffe`; always written).
    #[serde(default = "default_pki_role")]
    pub pki_role: String,
    /// Requested certificate lifetime (default 24h, see [`IdentityConfig::ttl`]). The
    /// certificate is renewed at about 2/3 of its actual lifetime, with jitter.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// PEM file of trust anchors used to verify peers instead of the CA chain Vault returns
    /// with each certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_file: Option<PathBuf>,
    /// Uids that may read the certificate and its private key at `GET /v1/identity`
    /// (`keyward.io/identity-uids`). Default: nobody, since the key lets its holder present the
    /// pod's identity anywhere until the certificate expires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_uids: Vec<u32>,
}

impl IdentityConfig {
    /// This trust domain, every other setting at its default.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            pki_mount: default_pki_mount(),
            pki_role: default_pki_role(),
            ttl: None,
            bundle_file: None,
            allow_uids: Vec::new(),
        }
    }

    /// The requested certificate lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(DEFAULT_SVID_TTL)
    }
}

/// The mTLS proxy and the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Admin listener serving `/ready`, `/live` and `/metrics`; must be a loopback address
    /// (default `127.0.0.1:15090`; always written).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// What to do when a forwarded app port also listens on an address other than loopback,
    /// so peers can reach the app without mTLS: `warn` (default: log, metric, audit record,
    /// a note on `/ready`) or `refuse` (also fail readiness while it lasts). Always written.
    #[serde(default)]
    pub exposed_app_port: ExposedAppPort,
    /// YAML file with the allow list of each inbound port, re-read within a second of a change.
    /// When set it replaces every inline `allow` (ports it does not list deny everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    /// Also accept and offer TLS 1.2 (default false: TLS 1.3 only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_tls12: bool,
    /// mTLS listeners in front of local app ports (always written).
    #[serde(default)]
    pub inbound: Vec<InboundConfig>,
    /// Local plaintext listeners that originate mTLS to an upstream (always written).
    #[serde(default)]
    pub outbound: Vec<OutboundConfig>,
    /// Longest time a TLS handshake may take (default 10s).
    #[serde(
        default = "default_handshake_timeout",
        with = "humantime_serde",
        skip_serializing_if = "is_default_handshake_timeout"
    )]
    pub handshake_timeout: Duration,
    /// A connection that moves no byte in either direction for this long is closed (default 1h).
    #[serde(
        default = "default_idle_timeout",
        with = "humantime_serde",
        skip_serializing_if = "is_default_idle_timeout"
    )]
    pub idle_timeout: Duration,
    /// Most proxied connections open at once over all listeners (default 10000); further
    /// connections are closed right after accept.
    #[serde(
        default = "default_proxy_max_connections",
        skip_serializing_if = "is_default_proxy_max_connections"
    )]
    pub max_connections: usize,
    /// On SIGTERM, how long open connections may take to finish before they are cut
    /// (default 20s).
    #[serde(
        default = "default_drain_grace",
        with = "humantime_serde",
        skip_serializing_if = "is_default_drain_grace"
    )]
    pub drain_grace: Duration,
    /// Worker threads of the runtime (default: one per CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            admin: default_admin(),
            exposed_app_port: ExposedAppPort::default(),
            policy_file: None,
            allow_tls12: false,
            inbound: Vec::new(),
            outbound: Vec::new(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_proxy_max_connections(),
            drain_grace: default_drain_grace(),
            worker_threads: None,
        }
    }
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
    /// The name as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExposedAppPort::Warn => "warn",
            ExposedAppPort::Refuse => "refuse",
        }
    }
}

impl Serialize for ExposedAppPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExposedAppPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "warn" => Ok(ExposedAppPort::Warn),
            "refuse" => Ok(ExposedAppPort::Refuse),
            _ => Err(serde::de::Error::custom(format!(
                "expected warn or refuse, got {s:?}"
            ))),
        }
    }
}

/// One inbound listener: `listen` (mTLS) to `forward` (the app, plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Address the mTLS listener binds, e.g. `0.0.0.0:15443`.
    pub listen: SocketAddr,
    /// The app's plaintext address, e.g. `127.0.0.1:8080`.
    pub forward: String,
    /// SPIFFE IDs or patterns (`spiffe://td/ns/frontend/*`) allowed to connect; empty denies
    /// everyone. Ignored when `policy_file` is set. Always written.
    #[serde(default)]
    pub allow: Vec<IdPattern>,
    /// Send a PROXY protocol v2 header carrying the caller's address and SPIFFE ID to the app
    /// before any data (default false). See docs/proxy.md.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_protocol: bool,
}

/// One outbound listener: plaintext `listen` to mTLS `upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Local address the app connects to in plaintext, e.g. `127.0.0.1:15001`.
    pub listen: SocketAddr,
    /// The upstream's mTLS address, `HOST:PORT`.
    pub upstream: String,
    /// SPIFFE IDs the upstream's certificate may carry; any other server is refused.
    pub expect: Vec<SpiffeId>,
}

// ---- defaults, and "is it the default" for the settings the injector never writes ---------

fn default_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

macro_rules! default_fns {
    ($($default:ident, $is_default:ident: $ty:ty = $value:expr;)*) => {$(
        fn $default() -> $ty {
            $value
        }
        fn $is_default(v: &$ty) -> bool {
            *v == $default()
        }
    )*};
}

default_fns! {
    default_vault_timeout, is_default_vault_timeout: Duration = Duration::from_secs(10);
    default_max_response_bytes, is_default_max_response_bytes: usize = 1 << 20;
    default_max_backoff, is_default_max_backoff: Duration = Duration::from_secs(30);
    default_mode, is_default_mode: String = "0660".into();
    default_read_timeout, is_default_read_timeout: Duration = Duration::from_secs(5);
    default_max_wait, is_default_max_wait: Duration = Duration::from_secs(300);
    default_socket_max_connections, is_default_socket_max_connections: usize = 1024;
    default_handshake_timeout, is_default_handshake_timeout: Duration = Duration::from_secs(10);
    default_idle_timeout, is_default_idle_timeout: Duration = Duration::from_secs(3600);
    default_proxy_max_connections, is_default_proxy_max_connections: usize = 10_000;
    default_drain_grace, is_default_drain_grace: Duration = Duration::from_secs(20);
}

fn default_method() -> AuthMethod {
    AuthMethod::Jwt
}
fn default_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/keyward/token")
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/keyward/broker.sock")
}
fn default_audit_file() -> PathBuf {
    PathBuf::from("/run/keyward/audit.log")
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
