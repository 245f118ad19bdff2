//! The `files` section: secret files the sidecar renders into a container's in-memory volume
//! (issue 13 §1, docs/delivery.md "Files").
//!
//! A file is either one key of one declared secret (`secret`, `key`) or a minijinja template
//! (`template`) over declared secrets. Templates name a secret as `secrets.NAME`, with each `-`
//! of NAME written `_` (`secrets.db_main.data.password` for the secret `db-main`): an attribute
//! lookup, so the secrets a template uses are known before it runs
//! ([`template_secrets`]) and must all be declared. What a template sees of each secret:
//! `data` (the secret's data map, or only `data.KEY` for a secret declared with `#KEY`),
//! `version` (a number) and `lease_expires` (RFC 3339, or none for a secret without a lease).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{valid_secret_key, ConfigError, SidecarConfig};

/// Largest template accepted, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 64 * 1024;
/// Mode of a rendered file unless the pod says otherwise.
pub const DEFAULT_FILE_MODE: &str = "0440";

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The file's name in the pod's annotations (`keyward.io/file-NAME`), used in audit records
    /// and errors.
    pub name: String,
    /// The container the file is for (the only one whose volume holds it).
    pub container: String,
    /// The directory the sidecar writes into: its own mount of that container's volume.
    pub dir: PathBuf,
    /// The file's name inside `dir`: one plain path component, no `/`, not `.` or `..`.
    pub path: String,
    /// Octal mode of the file (default `0440`): no write bits, and at least owner read.
    #[serde(
        default = "default_file_mode",
        skip_serializing_if = "is_default_file_mode"
    )]
    pub mode: String,
    /// Content: one key of this declared secret (exclusive with `template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The key of `secret` whose value is the content; without it the secret must have exactly
    /// one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Content: a minijinja template over declared secrets (exclusive with `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Content: a part of the workload's SVID (exclusive with `secret` and `template`; needs
    /// the `identity` section; contract version 3, see `keyward_config::IdentityPart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::IdentityPart>,
}

fn default_file_mode() -> String {
    DEFAULT_FILE_MODE.into()
}
fn is_default_file_mode(m: &String) -> bool {
    m == DEFAULT_FILE_MODE
}

impl FileSpec {
    /// The mode as a number (checked by [`SidecarConfig::validate`]).
    pub fn mode_bits(&self) -> u32 {
        file_mode(&self.mode).unwrap_or(0o440)
    }

    /// The declared secrets this file reads, in order: `secret`, or the ones its template names
    /// (none for a file of the workload's SVID).
    pub fn secrets(&self, declared: &[crate::SecretSpec]) -> Vec<String> {
        if let Some(s) = &self.secret {
            return vec![s.clone()];
        }
        let used = self
            .template
            .as_deref()
            .and_then(|t| template_secrets(t).ok())
            .unwrap_or_default();
        declared
            .iter()
            .filter(|s| used.contains(&template_ident(&s.name)))
            .map(|s| s.name.clone())
            .collect()
    }
}

/// A rendered file's mode: octal, at most `0777`, owner read, no write bit for anyone (the
/// sidecar replaces the file; nothing else writes it).
pub fn file_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777 && m & 0o400 != 0 && m & 0o222 == 0)
}

/// Whether `name` is a plain file name: 1-255 bytes of `[A-Za-z0-9._-]`, not `.` or `..`. No
/// `/` (nothing outside or below its directory), no NUL.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How a template names the secret `name`: `-` written `_`.
pub fn template_ident(name: &str) -> String {
    name.replace('-', "_")
}

/// The environment templates are parsed and rendered in: strict about undefined values (a
/// missing key is an error, never an empty string), no auto-escaping.
pub fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// The secrets a template names (`secrets.IDENT`, as [`template_ident`] writes them); an error
/// naming what is wrong when it does not parse, is too long, uses a variable other than
/// `secrets`, or looks secrets up other than by a plain attribute (`secrets[x]`).
pub fn template_secrets(template: &str) -> Result<BTreeSet<String>, String> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(format!(
            "the template is {} bytes, more than {MAX_TEMPLATE_LEN}",
            template.len()
        ));
    }
    let env = template_env();
    let t = env
        .template_from_str(template)
        .map_err(|e| format!("the template does not parse: {e}"))?;
    let mut used = BTreeSet::new();
    for var in t.undeclared_variables(true) {
        let mut parts = var.splitn(3, '.');
        match (parts.next(), parts.next()) {
            (Some("secrets"), Some(ident)) => {
                used.insert(ident.to_owned());
            }
            (Some("secrets"), None) => {
                return Err(
                    "the template looks secrets up by a computed name; write secrets.NAME (with '_' for '-')"
                        .into(),
                )
            }
            (Some(other), _) => {
                return Err(format!(
                    "the template uses {other:?}; its only variable is secrets (secrets.NAME.data.KEY, .version, .lease_expires)"
                ))
            }
            _ => {}
        }
    }
    Ok(used)
}

impl SidecarConfig {
    /// Checks the `files` section (called by [`SidecarConfig::validate`]).
    pub(crate) fn validate_files(&self) -> Result<(), ConfigError> {
        fn invalid(s: impl Into<String>, r: impl Into<String>) -> ConfigError {
            ConfigError::invalid(s, r)
        }
        let mut seen = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let at = format!("files[{i}]");
            if !valid_file_name(&f.path) {
                return Err(invalid(
                    format!("{at}.path"),
                    format!(
                        "expected a plain file name (1-255 bytes of [A-Za-z0-9._-], not . or .., no '/'), got {:?}",
                        f.path
                    ),
                ));
            }
            if !f.dir.is_absolute()
                || f.dir
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid(
                    format!("{at}.dir"),
                    format!(
                        "expected an absolute directory without '..', got {:?}",
                        f.dir
                    ),
                ));
            }
            if !seen.insert((f.dir.clone(), f.path.clone())) {
                return Err(invalid(
                    format!("{at}.path"),
                    format!("{:?} is declared twice in {}", f.path, f.dir.display()),
                ));
            }
            if file_mode(&f.mode).is_none() {
                return Err(invalid(
                    format!("{at}.mode"),
                    format!(
                        "expected an octal mode with owner read and no write bit such as \"0440\", got {:?}",
                        f.mode
                    ),
                ));
            }
            if f.identity.is_some() {
                self.validate_identity_file(f, &at)?;
                continue;
            }
            match (&f.secret, &f.template) {
                (Some(s), None) => {
                    if self.secret(s).is_none() {
                        return Err(invalid(
                            format!("{at}.secret"),
                            format!("{s:?} is not a declared secret"),
                        ));
                    }
                    if let Some(k) = &f.key {
                        if !valid_secret_key(k) {
                            return Err(invalid(
                                format!("{at}.key"),
                                format!("not a secret key: {k:?}"),
                            ));
                        }
                    }
                }
                (None, Some(t)) => {
                    if f.key.is_some() {
                        return Err(invalid(format!("{at}.key"), "only with secret"));
                    }
                    let used =
                        template_secrets(t).map_err(|r| invalid(format!("{at}.template"), r))?;
                    for ident in used {
                        let matching = self
                            .secrets
                            .iter()
                            .filter(|s| template_ident(&s.name) == ident)
                            .count();
                        if matching != 1 {
                            return Err(invalid(
                                format!("{at}.template"),
                                if matching == 0 {
                                    format!("secrets.{ident} is not a declared secret")
                                } else {
                                    format!("secrets.{ident} names {matching} declared secrets")
                                },
                            ));
                        }
                    }
                }
                _ => {
                    return Err(invalid(
                        at,
                        "set exactly one of secret, template and identity",
                    ))
                }
            }
        }
        Ok(())
    }
}
