//! The sidecar config contract: what the injector writes and the sidecar must accept.
//!
//! One set of types ([`SidecarConfig`] and its sections) for the whole document, serialized by
//! the injector into `KEYWARD_CONFIG` and deserialized by `keyward sidecar` (the broker reads
//! its sections, the proxy `identity` and `proxy`), with their defaults and their rules.
//! Validation is [`SidecarConfig::validate`], done once by the loader, and its error names the
//! setting. Each syntax rule exists once ([`valid_vault_path`], [`valid_secret_name`],
//! [`valid_secret_key`], [`pattern_in_domain`], [`split_host_port`]): the injector checks annotations against them and the sidecar checks its config against the same
//! functions, so a value one side admits can never be refused by the other
//! (`tests/injected_config.rs` holds the two to that over the whole annotation grammar).
//!
//! Not here: the environment overrides of single settings and the file/inline loading (the
//! broker's `config` module), and the injector's own config (`keyward_injector::config`).
//!
//! Versioning: [`SidecarConfig::version`] (absent: 1), up to [`CONTRACT_VERSION`]; see the
//! `sidecar` module.

mod certs;
mod error;
mod files;
mod rules;
mod sidecar;
mod validate;

#[cfg(test)]
mod tests;

pub use certs::{
    is_pki_issue_path, valid_dns_name, CertIssue, IdentityPart, CERT_KEYS, MAX_ALT_NAMES,
    MIN_CERT_TTL,
};
pub use error::ConfigError;
pub use files::{
    file_mode, template_env, template_ident, template_secrets, valid_file_name, FileSpec,
    DEFAULT_FILE_MODE, MAX_TEMPLATE_LEN,
};
pub use rules::{
    pattern_in_domain, split_host_port, valid_secret_key, valid_secret_name, valid_vault_path,
    MAX_SECRET_KEY_LEN, MAX_SECRET_NAME_LEN, MAX_VAULT_PATH_LEN, VAULT_PATH_RULE,
};
pub use sidecar::{valid_server_name, valid_vault_namespace};
pub use sidecar::{
    AuditSettings, AuthConfig, AuthMethod, CheckpointSettings, ContainerSocket, ExposedAppPort,
    IdentityConfig, InboundConfig, MetricsConfig, OutboundConfig, ProxyConfig, SecretSpec,
    SidecarConfig, SocketConfig, VaultConfig, CONTRACT_VERSION, DEFAULT_KV_REFRESH,
    DEFAULT_SVID_TTL, MIN_KV_REFRESH, MIN_SVID_TTL,
};
