//! What is wrong with a sidecar config, naming the setting to fix.

/// A problem in the sidecar config. Every variant names the setting (`secrets[0].path`,
/// `proxy.inbound[1].listen`) unless the whole document is at fault (not YAML, a missing
/// top-level section). Values quoted in the reason are settings, never secrets: the document
/// holds none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document does not have the contract's shape (syntax, an unknown field, a wrong type).
    #[error("invalid config: {}{reason}", at.as_deref().map(|a| format!("{a}: ")).unwrap_or_default())]
    Parse {
        /// Where in the document, e.g. `proxy.inbound[0].listen`; `None` for the whole document.
        at: Option<String>,
        /// What serde or the YAML parser said.
        reason: String,
    },
    /// The document parses but breaks a rule serde cannot check.
    #[error("invalid config: {setting}: {reason}")]
    Invalid {
        /// The setting, e.g. `secrets[1].name`.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// A broken rule of `setting`.
    pub fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    /// A document that cannot be read as a sidecar config at all.
    pub fn parse(reason: impl Into<String>) -> Self {
        Self::Parse {
            at: None,
            reason: reason.into(),
        }
    }

    /// The setting at fault, when the error names one.
    pub fn setting(&self) -> Option<&str> {
        match self {
            Self::Parse { at, .. } => at.as_deref(),
            Self::Invalid { setting, .. } => Some(setting),
        }
    }
}
