//! Secret sources: where one declared secret's value comes from, and how its lease is renewed
//! and revoked. The lifecycle (`crate::lifecycle`, driven by `crate::refresh`) decides *when*;
//! a source only does what it is asked, once.
//!
//! A new kind of secret is a new file here implementing [`SecretSource`], plus one arm in
//! [`for_spec`]: the lifecycle, the socket API and the injector do not change.

mod vault_kv;
mod vault_leased;
mod vault_pki;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SecretSpec;
use crate::secret::{scrub_json, SecretString};
use crate::vault::{Vault, VaultError};

pub use vault_kv::VaultKv;
pub use vault_leased::VaultLeased;
pub use vault_pki::VaultPki;

/// A boxed future returned by a source's calls (the trait is used as `dyn SecretSource`).
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a source is called in audit records and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceKind {
    /// In error messages: "Vault answer could not be read".
    pub name: &'static str,
    /// Audit action of a fetch (`vault.fetch`).
    pub fetch_action: &'static str,
    /// Audit action of a lease renewal (`vault.lease_renew`).
    pub renew_action: &'static str,
    /// Audit action of a lease revocation (`vault.revoke`).
    pub revoke_action: &'static str,
}

/// The kind of both Vault sources: their audit actions are the ones `docs/audit.md` lists.
pub const VAULT: SourceKind = SourceKind {
    name: "Vault",
    fetch_action: "vault.fetch",
    renew_action: "vault.lease_renew",
    revoke_action: "vault.revoke",
};

/// One declared secret's backend: fetch its value, renew or revoke a lease it granted.
pub trait SecretSource: Send + Sync + 'static {
    /// Names for audit records and messages.
    fn kind(&self) -> SourceKind;

    /// Resolves once the source can be asked (the Vault sources: once logged in).
    fn ready(&self) -> SourceFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Reads the current value.
    fn fetch(&self) -> SourceFuture<'_, Result<Fetched, SourceError>>;

    /// Renews a lease this source granted, asking for `increment`; returns what was granted.
    fn renew<'a>(
        &'a self,
        lease_id: &'a SecretString,
        increment: Duration,
    ) -> SourceFuture<'a, Result<Renewal, SourceError>>;

    /// Revokes a lease this source granted.
    fn revoke<'a>(
        &'a self,
        lease_id: &'a SecretString,
    ) -> SourceFuture<'a, Result<Revocation, SourceError>>;
}

/// A lease as granted by a source.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: SecretString,
    pub renewable: bool,
    pub ttl: Duration,
}

/// A value as a source returned it. Every string in `data` is wiped when it is dropped.
pub struct Fetched {
    data: serde_json::Map<String, serde_json::Value>,
    /// The source's own version (KV v2 metadata), or `None` for the broker to count changes.
    pub version: Option<u64>,
    pub lease: Option<Lease>,
    /// The source's id for the call (Vault's `request_id`), for the audit record.
    pub request_id: String,
}

impl Fetched {
    /// A value of `data`'s keys; `data` is taken (and wiped with this value when dropped).
    pub fn new(data: serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            data,
            version: None,
            lease: None,
            request_id: String::new(),
        }
    }

    pub fn with_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = request_id.into();
        self
    }

    /// The secret's keys and values.
    pub fn data(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.data
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        self.data.values_mut().for_each(scrub_json);
    }
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("data", &"<redacted>")
            .field("version", &self.version)
            .field("lease", &self.lease)
            .field("request_id", &self.request_id)
            .finish()
    }
}

/// The outcome of a renewal.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The TTL granted, counted from when the answer came.
    pub ttl: Duration,
    pub request_id: String,
}

/// The outcome of a revocation.
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    pub request_id: String,
}

/// Why a source call failed. The text is what the audit record and `last_error` show, so it
/// never holds a secret value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// Calling Vault failed: unreachable, or it answered with an error.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The source answered, but not with a usable value (no data, a deleted version, a
    /// declared key missing).
    #[error("{source_name} answer could not be read: {detail}")]
    Unusable {
        source_name: &'static str,
        detail: String,
        request_id: Option<String>,
    },
    /// The lease is unknown to the source (revoked or expired): a new one must be fetched.
    #[error("{0}")]
    LeaseGone(String),
    /// Any other failure of a source.
    #[error("{0}")]
    Failed(String),
}

impl SourceError {
    /// Whether the lease is gone, so renewing it again is pointless.
    pub fn lease_gone(&self) -> bool {
        matches!(self, SourceError::LeaseGone(_))
    }

    /// The source's id of the failed call, when it answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            SourceError::Unusable { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// What the Vault source serving a read of `path` makes of Vault's answer (the fetch of
/// [`VaultKv`] or [`VaultLeased`], the one [`for_spec`] picks); for the fuzz seam.
pub(crate) fn from_vault_answer(
    resp: &mut crate::vault::VaultResponse,
    path: &str,
) -> Result<Fetched, SourceError> {
    if vault_kv::is_kv_v2_read(path) {
        vault_kv::from_response(resp, path)
    } else {
        vault_leased::from_response(resp, path)
    }
}

/// The source that serves `spec`: the one place where a kind of secret is registered.
///
/// A secret with an `issue` block is a certificate issued by Vault's PKI engine. A KV v2 read
/// path always has a `data` segment after the mount (`secret/data/app`); every
/// other path is a logical read whose answer may carry a lease (`database/creds/app`).
pub(crate) fn for_spec(spec: &SecretSpec, vault: &Arc<Vault>) -> Arc<dyn SecretSource> {
    if let Some(issue) = &spec.issue {
        Arc::new(VaultPki::new(
            vault.clone(),
            spec.path.clone(),
            issue.clone(),
        ))
    } else if vault_kv::is_kv_v2_read(&spec.path) {
        Arc::new(VaultKv::new(vault.clone(), spec.path.clone()))
    } else {
        Arc::new(VaultLeased::new(vault.clone(), spec.path.clone()))
    }
}
