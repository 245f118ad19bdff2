//! Any Vault logical read, with the lease its answer may carry (`database/creds/app`,
//! `aws/creds/role`, a KV v1 secret): the answer's `data` object is the value, the lease is
//! renewed through `sys/leases/renew` and revoked through `sys/leases/revoke`.

use std::sync::Arc;
use std::time::Duration;

use super::{Fetched, Lease, Renewal, Revocation, SecretSource, SourceError, SourceFuture, VAULT};
use crate::secret::{scrub_json, SecretString};
use crate::vault::{Vault, VaultResponse};

/// A logical read of `path`.
#[derive(Debug)]
pub struct VaultLeased {
    vault: Arc<Vault>,
    path: String,
}

impl VaultLeased {
    pub fn new(vault: Arc<Vault>, path: String) -> Self {
        Self { vault, path }
    }
}

impl SecretSource for VaultLeased {
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

    fn renew<'a>(
        &'a self,
        lease_id: &'a SecretString,
        increment: Duration,
    ) -> SourceFuture<'a, Result<Renewal, SourceError>> {
        Box::pin(renew(&self.vault, lease_id, increment))
    }

    fn revoke<'a>(
        &'a self,
        lease_id: &'a SecretString,
    ) -> SourceFuture<'a, Result<Revocation, SourceError>> {
        Box::pin(revoke(&self.vault, lease_id))
    }
}

/// The `data` object and lease of a logical answer; the answer's data is taken (and wiped).
pub(super) fn from_response(resp: &mut VaultResponse, path: &str) -> Result<Fetched, SourceError> {
    let lease = resp.lease_id.take().map(|id| Lease {
        id,
        renewable: resp.renewable,
        ttl: resp.lease_duration,
    });
    match std::mem::take(&mut resp.data) {
        serde_json::Value::Object(data) => {
            let mut fetched = Fetched::new(data).with_request_id(resp.request_id.clone());
            fetched.lease = lease;
            Ok(fetched)
        }
        mut other => {
            scrub_json(&mut other);
            Err(SourceError::Unusable {
                source_name: VAULT.name,
                detail: format!("{path} has no data"),
                request_id: Some(resp.request_id.clone()),
            })
        }
    }
}

/// Renews a lease; Vault's 400 or 404 means the lease is gone.
pub(super) async fn renew(
    vault: &Vault,
    lease_id: &SecretString,
    increment: Duration,
) -> Result<Renewal, SourceError> {
    match vault.renew_lease(lease_id, increment).await {
        Ok(resp) => Ok(Renewal {
            ttl: resp.lease_duration,
            request_id: resp.request_id.clone(),
        }),
        Err(e) if matches!(e.status(), Some(400 | 404)) => {
            Err(SourceError::LeaseGone(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn revoke(
    vault: &Vault,
    lease_id: &SecretString,
) -> Result<Revocation, SourceError> {
    let resp = vault.revoke_lease(lease_id).await?;
    Ok(Revocation {
        request_id: resp.request_id.clone(),
    })
}
