//! The broker's configuration: a YAML document (file, or inline in `KEYWARD_CONFIG`), with each
//! scalar setting overridable from the environment. Everything is validated before anything
//! binds a socket or talks to Vault.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        reason: reason.into(),
    }
}

/// The whole sidecar configuration. The broker reads `vault`, `auth`, `secrets`, `socket`,
/// `audit`; `identity` and `proxy` are kept raw here and parsed by the proxy crate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where Vault/OpenBao is.
    pub vault: VaultConfig,
    /// How to log in.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The secrets to fetch and serve.
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// How often KV secrets are re-read so new versions reach the app (default 60s).
    #[serde(default = "default_kv_refresh", with = "humantime_serde")]
    pub kv_refresh: Duration,
    /// Revoke leases and the Vault token on SIGTERM (default true).
    #[serde(default = "default_true")]
    pub revoke_on_shutdown: bool,
    /// The local socket API.
    #[serde(default)]
    pub socket: SocketConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Workload identity settings, read by the proxy (`keyward sidecar`).
    #[serde(default)]
    pub identity: Option<serde_yaml_ng::Value>,
    /// mTLS proxy settings, read by the proxy (`keyward sidecar`).
    #[serde(default)]
    pub proxy: Option<serde_yaml_ng::Value>,
}

/// Where Vault is and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`.
    pub addr: String,
    /// PEM file with the CA that signed Vault's certificate (in addition to the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Timeout of one Vault request (default 10s).
    #[serde(default = "default_vault_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Accept a plain `http://` address: secrets and tokens then cross the network unencrypted.
    /// Only for a dev server on loopback (default false: `http://` is refused at start-up).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Largest Vault response body accepted, in bytes (default 1 MiB, 4 KiB to 64 MiB).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

/// Which auth method logs in with the service-account token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Jwt,
    Kubernetes,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Kubernetes => "kubernetes",
        }
    }
}

/// Login settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `jwt` (default) or `kubernetes`.
    #[serde(default = "default_method")]
    pub method: AuthMethod,
    /// Mount path of the auth method (default: the method's name).
    #[serde(default)]
    pub mount: Option<String>,
    /// Vault role (default: the service-account name from the token).
    #[serde(default)]
    pub role: Option<String>,
    /// The projected service-account token, re-read at every login.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Longest wait between retries after an error (default 30s).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Name on the socket API: `[A-Za-z0-9_.-]`, at most 128 bytes.
    pub name: String,
    /// The Vault API path: `secret/data/db` for KV v2, `database/creds/app` for a lease.
    pub path: String,
    /// Serve only this key of the secret's data.
    #[serde(default)]
    pub key: Option<String>,
    /// The broker is ready only once this secret is fetched (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Only these uids may read the secret (default: anyone who can open the socket).
    #[serde(default)]
    pub allow_uids: Option<Vec<u32>>,
}

/// The local socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Socket path (default `/run/keyward/broker.sock`).
    #[serde(default = "default_socket")]
    pub path: PathBuf,
    /// Group id given to the socket, so app containers in that group can connect.
    #[serde(default)]
    pub group: Option<u32>,
    /// Socket file mode, octal string (default "0660").
    #[serde(default = "default_mode")]
    pub mode: String,
    /// How long a client may take to send its request headers (default 5s).
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest long-poll `wait` accepted (default 5m).
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Most connections served at once (default 1024).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            path: default_socket(),
            group: None,
            mode: default_mode(),
            read_timeout: default_read_timeout(),
            max_wait: default_max_wait(),
            max_connections: default_max_connections(),
        }
    }
}

impl SocketConfig {
    /// The file mode as a number (validated by [`Config::validate`]).
    pub fn mode_bits(&self) -> u32 {
        u32::from_str_radix(self.mode.trim_start_matches("0o"), 8).unwrap_or(0o660)
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Log file (default `/run/keyward/audit.log`), appended with mode 0600.
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
    /// Also write each record to stdout for log collectors.
    #[serde(default)]
    pub stdout: bool,
    /// File holding the HMAC key for lease ids and accessors (default: random per process).
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// fsync after every record (default false).
    #[serde(default)]
    pub fsync: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            file: default_audit_file(),
            stdout: false,
            hmac_key_file: None,
            fsync: false,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_kv_refresh() -> Duration {
    Duration::from_secs(60)
}
fn default_vault_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_response_bytes() -> usize {
    1 << 20
}
fn default_method() -> AuthMethod {
    AuthMethod::Jwt
}
fn default_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/keyward/token")
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/keyward/broker.sock")
}
fn default_mode() -> String {
    "0660".into()
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(300)
}
fn default_max_connections() -> usize {
    1024
}
fn default_audit_file() -> PathBuf {
    PathBuf::from("/run/keyward/audit.log")
}

/// Where settings come from besides the document: the environment in production, a map in
/// tests (so tests never mutate the process environment).
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

/// Environment variables that override single settings, and what they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("KEYWARD_VAULT_ADDR", "vault.addr"),
    ("KEYWARD_VAULT_CACERT", "vault.ca_file"),
    ("KEYWARD_VAULT_NAMESPACE", "vault.namespace"),
    ("KEYWARD_AUTH_METHOD", "auth.method"),
    ("KEYWARD_AUTH_MOUNT", "auth.mount"),
    ("KEYWARD_ROLE", "auth.role"),
    ("KEYWARD_TOKEN_FILE", "auth.token_file"),
    ("KEYWARD_SOCKET", "socket.path"),
    ("KEYWARD_SOCKET_GROUP", "socket.group"),
    ("KEYWARD_AUDIT_FILE", "audit.file"),
    ("KEYWARD_AUDIT_STDOUT", "audit.stdout"),
    ("KEYWARD_KV_REFRESH", "kv_refresh"),
    ("KEYWARD_REVOKE_ON_SHUTDOWN", "revoke_on_shutdown"),
];

impl Config {
    /// Loads the document from `file`, else from `KEYWARD_CONFIG_FILE`, else from the inline
    /// `KEYWARD_CONFIG`, applies the environment overrides, and validates.
    pub fn load(file: Option<&std::path::Path>, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = match file
            .map(PathBuf::from)
            .or_else(|| env.get("KEYWARD_CONFIG_FILE").map(PathBuf::from))
        {
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::Read { path, source })?,
            None => env.get("KEYWARD_CONFIG").unwrap_or_default(),
        };
        Self::from_yaml(&text, env)
    }

    /// Parses a document (which may be empty when the environment gives `KEYWARD_VAULT_ADDR`),
    /// applies the environment overrides, and validates.
    pub fn from_yaml(text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut doc: serde_yaml_ng::Value = if text.trim().is_empty() {
            serde_yaml_ng::Value::Mapping(Default::default())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        for (var, setting) in ENV_OVERRIDES {
            if let Some(value) = env.get(var) {
                set_path(&mut doc, setting, &value).map_err(|r| invalid(*var, r))?;
            }
        }
        if let Some(secrets) = env.get("KEYWARD_SECRETS") {
            let list = parse_secret_list(&secrets).map_err(|r| invalid("KEYWARD_SECRETS", r))?;
            set_value(&mut doc, "secrets", list);
        }
        let config: Config =
            serde_yaml_ng::from_value(doc).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: names, paths, modes, duplicates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.vault.addr.trim();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(invalid(
                "vault.addr",
                format!("expected http://HOST:PORT or https://HOST:PORT, got {addr:?}"),
            ));
        }
        if let Some(role) = &self.auth.role {
            if role.is_empty() || role.contains('/') {
                return Err(invalid("auth.role", format!("not a role name: {role:?}")));
            }
        }
        if self.auth.mount().is_empty() || self.auth.mount().contains("..") {
            return Err(invalid("auth.mount", "not a mount path"));
        }
        let mut names = HashSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            let at = format!("secrets[{i}]");
            if !valid_name(&s.name) {
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
                    format!(
                        "expected {}, got {:?}",
                        keyward_config::VAULT_PATH_RULE,
                        s.path
                    ),
                ));
            }
            if let Some(k) = &s.key {
                if !keyward_config::valid_secret_key(k) {
                    return Err(invalid(
                        format!("{at}.key"),
                        format!(
                            "expected 1-256 printable ASCII bytes without space or '#', got {k:?}"
                        ),
                    ));
                }
            }
        }
        let mode = self.socket.mode.trim_start_matches("0o");
        match u32::from_str_radix(mode, 8) {
            Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => {}
            _ => {
                return Err(invalid(
                    "socket.mode",
                    format!(
                        "expected an octal mode with owner rw such as \"0660\", got {:?}",
                        self.socket.mode
                    ),
                ))
            }
        }
        if self.kv_refresh < Duration::from_secs(1) {
            return Err(invalid("kv_refresh", "must be at least 1s"));
        }
        Ok(())
    }

    /// The secret declared under `name`.
    pub fn secret(&self, name: &str) -> Option<&SecretSpec> {
        self.secrets.iter().find(|s| s.name == name)
    }
}

pub use keyward_config::{valid_secret_name as valid_name, valid_vault_path};

/// `name=path[#key][;name=path[#key]]...` from `KEYWARD_SECRETS`.
fn parse_secret_list(s: &str) -> Result<serde_yaml_ng::Value, String> {
    let mut out = Vec::new();
    for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, rest) = item
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=PATH[#KEY], got {item:?}"))?;
        let (path, key) = match rest.split_once('#') {
            Some((p, k)) => (p, Some(k)),
            None => (rest, None),
        };
        let mut m = serde_yaml_ng::Mapping::new();
        m.insert("name".into(), name.trim().into());
        m.insert("path".into(), path.trim().into());
        if let Some(k) = key {
            m.insert("key".into(), k.trim().into());
        }
        out.push(serde_yaml_ng::Value::Mapping(m));
    }
    Ok(serde_yaml_ng::Value::Sequence(out))
}

fn set_value(doc: &mut serde_yaml_ng::Value, key: &str, value: serde_yaml_ng::Value) {
    if let serde_yaml_ng::Value::Mapping(m) = doc {
        m.insert(key.into(), value);
    }
}

/// Sets `a.b` in the document to a scalar parsed as YAML (so `true`, `60s`, `1000` work).
fn set_path(doc: &mut serde_yaml_ng::Value, path: &str, raw: &str) -> Result<(), String> {
    let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(raw) {
        Ok(v @ (serde_yaml_ng::Value::Bool(_) | serde_yaml_ng::Value::Number(_))) => v,
        _ => serde_yaml_ng::Value::String(raw.to_owned()),
    };
    let mut cur = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let serde_yaml_ng::Value::Mapping(m) = cur else {
            return Err(format!("{} is not a mapping", parts[..i].join(".")));
        };
        if i + 1 == parts.len() {
            m.insert((*part).into(), value);
            return Ok(());
        }
        cur = m
            .entry((*part).into())
            .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const DOC: &str = r#"
vault: {addr: "http://127.0.0.1:8200"}
auth: {role: orders, token_file: /tmp/token}
secrets:
  - {name: db, path: database/creds/app, key: password}
  - {name: api, path: secret/data/api, required: false, allow_uids: [1000]}
"#;

    #[test]
    fn parses_document_with_defaults() {
        let c = Config::from_yaml(DOC, &env(&[])).expect("valid");
        assert_eq!(c.auth.method, AuthMethod::Jwt);
        assert_eq!(c.auth.mount(), "jwt");
        assert_eq!(c.secrets.len(), 2);
        assert!(c.secrets[0].required);
        assert!(!c.secrets[1].required);
        assert_eq!(c.secrets[1].allow_uids.as_deref(), Some(&[1000][..]));
        assert_eq!(c.socket.path, PathBuf::from("/run/keyward/broker.sock"));
        assert_eq!(c.socket.mode_bits(), 0o660);
        assert_eq!(c.kv_refresh, Duration::from_secs(60));
        assert!(c.revoke_on_shutdown);
    }

    #[test]
    fn environment_overrides_settings() {
        let c = Config::from_yaml(
            DOC,
            &env(&[
                ("KEYWARD_VAULT_ADDR", "https://vault:8200"),
                ("KEYWARD_AUTH_METHOD", "kubernetes"),
                ("KEYWARD_SOCKET", "/tmp/s.sock"),
                ("KEYWARD_AUDIT_STDOUT", "true"),
                ("KEYWARD_KV_REFRESH", "5s"),
                ("KEYWARD_SECRETS", "a=secret/data/a#pw; b=secret/data/b"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.vault.addr, "https://vault:8200");
        assert_eq!(c.auth.method, AuthMethod::Kubernetes);
        assert_eq!(c.auth.mount(), "kubernetes");
        assert_eq!(c.socket.path, PathBuf::from("/tmp/s.sock"));
        assert!(c.audit.stdout);
        assert_eq!(c.kv_refresh, Duration::from_secs(5));
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.secrets[0].key.as_deref(), Some("pw"));
    }

    #[test]
    fn config_from_environment_only() {
        let c =
            Config::from_yaml("", &env(&[("KEYWARD_VAULT_ADDR", "http://v:1")])).expect("valid");
        assert!(c.secrets.is_empty());
    }

    #[test]
    fn errors_name_the_setting() {
        for (doc, needle) in [
            ("vault: {addr: vault:8200}", "vault.addr"),
            (
                "vault: {addr: 'http://v'}\nsecrets: [{name: 'a/b', path: x}]",
                "secrets[0].name",
            ),
            (
                "vault: {addr: 'http://v'}\nsecrets: [{name: a, path: '../x'}]",
                "secrets[0].path",
            ),
            (
                "vault: {addr: 'http://v'}\nsecrets: [{name: a, path: secret/x}, {name: a, path: secret/y}]",
                "duplicate",
            ),
            (
                "vault: {addr: 'http://v'}\nsocket: {mode: '999'}",
                "socket.mode",
            ),
            (
                "vault: {addr: 'http://v'}\nbogus: 1",
                "unknown field `bogus`",
            ),
            (
                "vault: {addr: 'http://v'}\nauth: {method: ldap}",
                "unknown variant `ldap`",
            ),
            ("{}", "missing field `vault`"),
        ] {
            let err = Config::from_yaml(doc, &env(&[]))
                .expect_err(doc)
                .to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }
}
