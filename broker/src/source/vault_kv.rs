//! KV version 2 (`MOUNT/data/PATH`): the answer is `{data: {...}, metadata: {version, ...}}`;
//! the value is the inner `data` and its version is KV's own. KV v2 grants no lease: the
//! lifecycle re-reads it every `kv_refresh`.

use std::sync::Arc;
use std::time::Duration;

use super::vault_leased;
use super::{Fetched, Renewal, Revocation, SecretSource, SourceError, SourceFuture, VAULT};
use crate::secret::{scrub_json, SecretString};
use crate::vault::{Vault, VaultResponse};

/// Whether `path` reads a KV v2 secret: a `data` segment after the mount.
pub(super) fn is_kv_v2_read(path: &str) -> bool {
    path.trim_matches('/')
        .split('/')
        .skip(1)
        .any(|s| s == "data")
}

/// A KV v2 read of `path`.
#[derive(Debug)]
pub struct VaultKv {
    vault: Arc<Vault>,
    path: String,
}

impl VaultKv {
    pub fn new(vault: Arc<Vault>, path: String) -> Self {
        Self { vault, path }
    }
}

impl SecretSource for VaultKv {
    fn kind(&self) -> super::SourceKind {
        VAULT
    }

    fn ready(&self) -> SourceFuture<'_, ()> {
        Box::pin(self.vault.wait_logged_in())
    }

    fn fetch(&self) -> SourceFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async move {
            let mut resp = self.vault.read(&self.path).await?;
            from_response(&mut resp, &self.path)
        })
    }

    // KV v2 grants no lease; these serve a path under a `data` segment that is not KV v2 and
    // answered with one (see `from_response`).
    fn renew<'a>(
        &'a self,
        lease_id: &'a SecretString,
        increment: Duration,
    ) -> SourceFuture<'a, Result<Renewal, SourceError>> {
        Box::pin(vault_leased::renew(&self.vault, lease_id, increment))
    }

    fn revoke<'a>(
        &'a self,
        lease_id: &'a SecretString,
    ) -> SourceFuture<'a, Result<Revocation, SourceError>> {
        Box::pin(vault_leased::revoke(&self.vault, lease_id))
    }
}

/// The inner `data` and KV version of a KV v2 answer. An answer without KV's shape (a KV v1
/// mount with a `data/` key) is served as a plain logical read.
pub(super) fn from_response(resp: &mut VaultResponse, path: &str) -> Result<Fetched, SourceError> {
    let kv_shaped = resp.data.as_object().is_some_and(|o| {
        o.contains_key("data") && o.get("metadata").is_some_and(|m| m.is_object())
    });
    if !kv_shaped {
        return vault_leased::from_response(resp, path);
    }
    let mut outer = std::mem::take(&mut resp.data);
    let version = outer
        .pointer("/metadata/version")
        .and_then(serde_json::Value::as_u64);
    let inner = outer
        .as_object_mut()
        .and_then(|o| o.remove("data"))
        .unwrap_or_default();
    scrub_json(&mut outer);
    let mut fetched = match inner {
        serde_json::Value::Object(data) => Fetched::new(data),
        mut other => {
            scrub_json(&mut other);
            return Err(SourceError::Unusable {
                source_name: VAULT.name,
                detail: format!(
                    "{path} version {} is deleted or destroyed",
                    version.unwrap_or(0)
                ),
                request_id: Some(resp.request_id.clone()),
            });
        }
    };
    fetched.version = version;
    fetched.request_id = resp.request_id.clone();
    fetched.lease = resp.lease_id.take().map(|id| super::Lease {
        id,
        renewable: resp.renewable,
        ttl: resp.lease_duration,
    });
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::is_kv_v2_read;

    #[test]
    fn kv_v2_reads_are_told_by_their_data_segment() {
        for kv in ["secret/data/app", "team/kv/data/a/b", "/secret/data/x"] {
            assert!(is_kv_v2_read(kv), "{kv}");
        }
        for other in [
            "database/creds/app",
            "data/creds/x",
            "kv/app",
            "aws/creds/data-role",
        ] {
            assert!(!is_kv_v2_read(other), "{other}");
        }
    }
}
