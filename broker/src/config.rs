//! The broker's side of the sidecar config: loading it (a file, or inline in
//! `KEYWARD_CONFIG`) with each scalar setting overridable from the environment. The document's
//! types, defaults and rules are the contract in `keyward_config`, re-exported here; a
//! [`Config`] is one that passed [`SidecarConfig::validate`], before anything binds a socket or
//! talks to Vault.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

pub use keyward_config::{
    valid_secret_name as valid_name, valid_vault_path, AuditSettings, AuthConfig, AuthMethod,
    IdentityConfig, ProxyConfig, SecretSpec, SidecarConfig, SocketConfig, VaultConfig,
};

/// A configuration problem, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The document, or an environment override, breaks the contract.
    #[error(transparent)]
    Invalid(#[from] keyward_config::ConfigError),
}

fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    keyward_config::ConfigError::invalid(setting, reason).into()
}

/// The whole sidecar configuration, validated: the broker reads `vault`, `auth`, `secrets`,
/// `socket`, `audit`, `kv_refresh` and `revoke_on_shutdown`, the proxy `identity` and `proxy`
/// (through `keyward sidecar`). Its fields are the contract's ([`SidecarConfig`], by `Deref`);
/// the only ways to one are [`Config::load`], [`Config::from_yaml`] and [`Config::new`], which
/// all validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Config(SidecarConfig);

impl Deref for Config {
    type Target = SidecarConfig;

    fn deref(&self) -> &SidecarConfig {
        &self.0
    }
}

/// For runtime adjustments after validation (the sidecar fits connection limits to its memory
/// limit); whoever changes a setting keeps it within the contract's rules.
impl DerefMut for Config {
    fn deref_mut(&mut self) -> &mut SidecarConfig {
        &mut self.0
    }
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
    ("KEYWARD_VAULT_TLS_SERVER_NAME", "vault.tls_server_name"),
    ("KEYWARD_VAULT_CLIENT_CERT", "vault.client_cert_file"),
    ("KEYWARD_VAULT_CLIENT_KEY", "vault.client_key_file"),
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
    /// Validates a contract value built in code.
    pub fn new(config: SidecarConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self(config))
    }

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
            serde_yaml_ng::from_str(text)
                .map_err(|e| keyward_config::ConfigError::parse(e.to_string()))?
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
        Self::new(SidecarConfig::from_yaml_value(doc)?)
    }

    /// The validated contract value.
    pub fn contract(&self) -> &SidecarConfig {
        &self.0
    }
}

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
    use std::time::Duration;

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
        assert_eq!(c.kv_refresh(), Duration::from_secs(60));
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
        assert_eq!(c.kv_refresh(), Duration::from_secs(5));
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
