//! The loops that keep the broker logged in and its secrets fresh. Every wait is either a
//! deadline derived from a TTL (at about 2/3 of it, with jitter) or an exponential backoff
//! with jitter after an error: never a busy loop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyward_audit::{Decision, Record};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::{seal_fields, Cached, Entry, Lease};
use crate::metrics::BrokerMetrics;
use crate::secret::{scrub_json, ZeroBuf};
use crate::vault::VaultError;
use crate::Inner;

/// Exponential backoff with jitter: 250 ms doubling up to `cap`, each wait drawn from
/// [d/2, d].
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Self { attempt: 0, cap }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = Duration::from_millis(250).saturating_mul(1 << self.attempt.min(16));
        let d = base.min(self.cap).max(Duration::from_millis(10));
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

/// About 2/3 of `d`, with ±10 % jitter so a fleet does not renew in lockstep.
pub fn two_thirds(d: Duration) -> Duration {
    let base = d.mul_f64(2.0 / 3.0);
    base.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
        .max(Duration::from_millis(100))
}

/// Sleeps unless shut down first; returns false on shutdown.
async fn sleep_or(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Logs in, renews the token at about 2/3 of its TTL, and logs in again when renewal fails,
/// the max TTL nears, or Vault answers 403.
pub async fn auth_loop(ctx: Arc<Inner>, shutdown: CancellationToken) {
    let vault = &ctx.vault;
    let mut backoff = Backoff::new(ctx.config.auth.max_backoff);
    'login: loop {
        let login = match vault.login().await {
            Ok(l) => l,
            Err(e) => {
                if let Some(pod) = vault.pod_identity() {
                    ctx.audit.set_pod(pod);
                }
                let reason = e.to_string();
                warn!(error = %reason, "Vault login failed");
                ctx.metrics
                    .logins
                    .get_or_create(&BrokerMetrics::result("error"))
                    .inc();
                ctx.metrics.logged_in.set(0);
                ctx.set_login_error(Some(reason.clone()));
                let _ = ctx
                    .audit
                    .record(&Record::new("vault.login", Decision::Error).reason(reason));
                if !sleep_or(&shutdown, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        ctx.audit.set_pod(login.pod.clone());
        ctx.set_login_error(None);
        ctx.metrics
            .logins
            .get_or_create(&BrokerMetrics::result("ok"))
            .inc();
        ctx.metrics.logged_in.set(1);
        info!(
            namespace = %login.pod.namespace,
            service_account = %login.pod.service_account,
            ttl_s = login.ttl.as_secs(),
            "Logged in to Vault"
        );
        let mut rec = Record::new("vault.login", Decision::Ok);
        rec.accessor_hmac = Some(ctx.audit.hmac(&login.accessor));
        let _ = ctx.audit.record(&rec);
        let initial_ttl = login.ttl;

        loop {
            let Some(token) = vault.token() else {
                continue 'login;
            };
            let remaining = token
                .expires_at()
                .saturating_duration_since(std::time::Instant::now());
            let wait = two_thirds(remaining);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = vault.refusal_of(&token.accessor) => {
                    info!("Vault refused the token; logging in again");
                    vault.forget_token();
                    ctx.metrics.logged_in.set(0);
                    // A 403 storm must not become a login storm.
                    if !sleep_or(&shutdown, backoff.next_delay()).await { return; }
                    continue 'login;
                }
                _ = shutdown.cancelled() => return,
            }
            // Near the max TTL Vault grants less than asked: a new login is due.
            if !token.renewable || token.ttl < initial_ttl / 2 {
                debug!("Token not renewable or near its max TTL; logging in again");
                continue 'login;
            }
            match vault.renew_self().await {
                Ok(ttl) => {
                    ctx.metrics
                        .token_renewals
                        .get_or_create(&BrokerMetrics::result("ok"))
                        .inc();
                    debug!(ttl_s = ttl.as_secs(), "Renewed Vault token");
                    let mut rec = Record::new("vault.renew", Decision::Ok);
                    rec.accessor_hmac = Some(ctx.audit.hmac(&token.accessor));
                    let _ = ctx.audit.record(&rec);
                }
                Err(e) => {
                    ctx.metrics
                        .token_renewals
                        .get_or_create(&BrokerMetrics::result("error"))
                        .inc();
                    warn!(error = %e, "Vault token renewal failed; logging in again");
                    let mut rec = Record::new("vault.renew", Decision::Error).reason(e.to_string());
                    rec.accessor_hmac = Some(ctx.audit.hmac(&token.accessor));
                    let _ = ctx.audit.record(&rec);
                    continue 'login;
                }
            }
        }
    }
}

/// Fetches one secret and keeps it fresh until shutdown.
pub async fn secret_loop(ctx: Arc<Inner>, entry: Arc<Entry>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(ctx.config.auth.max_backoff);
    loop {
        tokio::select! {
            _ = ctx.vault.wait_logged_in() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = fetch(&ctx, &entry).await {
            let reason = e.to_string();
            warn!(secret = %entry.spec.name, error = %reason, "Secret fetch failed");
            entry.set_error(reason);
            ctx.metrics
                .fetch_errors
                .get_or_create(&BrokerMetrics::secret(&entry.spec.name))
                .inc();
            if !sleep_or(&shutdown, backoff.next_delay()).await {
                return;
            }
            continue;
        }
        backoff.reset();
        if !keep_fresh(&ctx, &entry, &shutdown).await {
            return;
        }
    }
}

/// Waits, renewing the lease if there is one; returns when a re-fetch is due (true) or on
/// shutdown (false).
async fn keep_fresh(ctx: &Inner, entry: &Entry, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(ctx.config.auth.max_backoff);
    let mut near_max_ttl = false;
    loop {
        let Some(value) = entry.value() else {
            return true;
        };
        let Some(lease) = value.lease else {
            // KV and other unleased secrets: re-read on the interval.
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            return sleep_or(shutdown, ctx.config.kv_refresh.mul_f64(jitter)).await;
        };
        let remaining = lease
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if !sleep_or(shutdown, two_thirds(remaining)).await {
            return false;
        }
        if !lease.renewable || near_max_ttl {
            return true;
        }
        match ctx.vault.renew_lease(&lease.id, lease.duration).await {
            Ok(resp) => {
                backoff.reset();
                let granted = resp.lease_duration;
                entry.renewed(&lease.id, SystemTime::now() + granted);
                ctx.metrics
                    .lease_renewals
                    .get_or_create(&BrokerMetrics::result("ok"))
                    .inc();
                // Vault caps renewals at max_ttl: a shorter grant means a new lease is due.
                near_max_ttl = granted < lease.duration;
                info!(secret = %entry.spec.name, ttl_s = granted.as_secs(), near_max_ttl, "Renewed lease");
                let mut rec = Record::new("vault.lease_renew", Decision::Ok);
                rec.secret = Some(entry.spec.name.clone());
                rec.path = Some(entry.spec.path.clone());
                rec.version = Some(value.version);
                rec.lease_hmac = Some(ctx.audit.hmac(lease.id.expose()));
                rec.vault_request_id = Some(resp.request_id.clone());
                let _ = ctx.audit.record(&rec);
            }
            Err(e) => {
                ctx.metrics
                    .lease_renewals
                    .get_or_create(&BrokerMetrics::result("error"))
                    .inc();
                warn!(secret = %entry.spec.name, error = %e, "Lease renewal failed");
                let mut rec =
                    Record::new("vault.lease_renew", Decision::Error).reason(e.to_string());
                rec.secret = Some(entry.spec.name.clone());
                rec.lease_hmac = Some(ctx.audit.hmac(lease.id.expose()));
                let _ = ctx.audit.record(&rec);
                if matches!(e.status(), Some(400 | 404)) {
                    // The lease is gone (revoked or expired): fetch a new one.
                    return true;
                }
                if lease.expires_at <= SystemTime::now() {
                    return true;
                }
                if !sleep_or(shutdown, backoff.next_delay()).await {
                    return false;
                }
            }
        }
    }
}

/// Reads the secret from Vault, seals it into the cache and records the fetch.
async fn fetch(ctx: &Inner, entry: &Entry) -> Result<(), VaultError> {
    let spec = &entry.spec;
    let result = ctx.vault.read(&spec.path).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let mut rec = Record::new("vault.fetch", Decision::Error).reason(e.to_string());
            rec.secret = Some(spec.name.clone());
            rec.path = Some(spec.path.clone());
            let _ = ctx.audit.record(&rec);
            return Err(e);
        }
    };
    let previous = entry.value();
    let outcome = (|| {
        let obj = resp
            .data
            .as_object()
            .ok_or_else(|| VaultError::Decode(format!("{} has no data", spec.path)))?;
        // KV v2 answers {data: {...}, metadata: {version, ...}}.
        let (fields, kv_version) = match (obj.get("data"), obj.get("metadata")) {
            (Some(inner), Some(meta)) if meta.is_object() => {
                let inner = inner.as_object().ok_or_else(|| {
                    VaultError::Decode(format!(
                        "{} version {} is deleted or destroyed",
                        spec.path,
                        meta.get("version").and_then(|v| v.as_u64()).unwrap_or(0)
                    ))
                })?;
                (inner, meta.get("version").and_then(|v| v.as_u64()))
            }
            _ => (obj, None),
        };
        let sealed = seal_fields(&ctx.sealer, spec, fields).map_err(VaultError::Decode)?;
        let digest = {
            let text = ZeroBuf::json(fields);
            keyward_audit::hmac_hex(&ctx.digest_key, &String::from_utf8_lossy(text.as_slice()))
        };
        Ok::<_, VaultError>((sealed, kv_version, digest))
    })();
    scrub_json(&mut resp.data);
    let (fields, kv_version, digest) = match outcome {
        Ok(x) => x,
        Err(e) => {
            let mut rec = Record::new("vault.fetch", Decision::Error).reason(e.to_string());
            rec.secret = Some(spec.name.clone());
            rec.path = Some(spec.path.clone());
            rec.vault_request_id = Some(resp.request_id.clone());
            let _ = ctx.audit.record(&rec);
            return Err(e);
        }
    };
    let prev_version = previous.as_ref().map(|p| p.version).unwrap_or(0);
    let version = match kv_version {
        Some(v) => v,
        None => {
            // Unversioned secrets: a new lease or new content is a new version.
            let changed = resp.lease_id.is_some() || ctx.digest_changed(&spec.name, &digest);
            if changed || prev_version == 0 {
                prev_version + 1
            } else {
                prev_version
            }
        }
    };
    ctx.remember_digest(&spec.name, digest);
    let now = SystemTime::now();
    let lease = resp.lease_id.take().map(|id| Lease {
        id,
        renewable: resp.renewable,
        expires_at: now + resp.lease_duration,
        duration: resp.lease_duration,
    });
    let mut rec = Record::new("vault.fetch", Decision::Ok);
    rec.secret = Some(spec.name.clone());
    rec.path = Some(spec.path.clone());
    rec.version = Some(version);
    rec.lease_hmac = lease.as_ref().map(|l| ctx.audit.hmac(l.id.expose()));
    rec.vault_request_id = Some(resp.request_id.clone());
    let _ = ctx.audit.record(&rec);
    info!(
        secret = %spec.name,
        version,
        lease_s = lease.as_ref().map(|l| l.duration.as_secs()),
        "Fetched secret"
    );
    ctx.metrics
        .fetches
        .get_or_create(&BrokerMetrics::secret(&spec.name))
        .inc();
    entry.store(Cached {
        fields,
        version,
        lease,
        fetched_at: now,
        vault_request_id: std::mem::take(&mut resp.request_id),
    });
    Ok(())
}

/// Revokes every lease still held, then the token (on shutdown).
pub async fn revoke_all(ctx: &Inner) {
    for entry in ctx.entries.values() {
        for lease in entry.leases() {
            let result = ctx.vault.revoke_lease(&lease.id).await;
            let decision = if result.is_ok() {
                Decision::Ok
            } else {
                Decision::Error
            };
            let mut rec = Record::new("vault.revoke", decision);
            rec.secret = Some(entry.spec.name.clone());
            rec.path = Some(entry.spec.path.clone());
            rec.lease_hmac = Some(ctx.audit.hmac(lease.id.expose()));
            match result {
                Ok(r) => {
                    info!(secret = %entry.spec.name, "Revoked lease");
                    rec.vault_request_id = Some(r.request_id.clone());
                }
                Err(e) => {
                    warn!(secret = %entry.spec.name, error = %e, "Lease revocation failed");
                    rec.reason = Some(e.to_string());
                }
            }
            let _ = ctx.audit.record(&rec);
        }
        entry.clear_leases();
    }
    if let Some(token) = ctx.vault.token() {
        let result = ctx.vault.revoke_self().await;
        let mut rec = Record::new(
            "vault.revoke_token",
            if result.is_ok() {
                Decision::Ok
            } else {
                Decision::Error
            },
        );
        rec.accessor_hmac = Some(ctx.audit.hmac(&token.accessor));
        if let Err(e) = result {
            rec.reason = Some(e.to_string());
        }
        let _ = ctx.audit.record(&rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(4));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last > Duration::ZERO, "never a busy loop");
        }
        assert!(last <= Duration::from_secs(4) && last >= Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250));
    }

    #[test]
    fn renewal_point_is_about_two_thirds() {
        for _ in 0..100 {
            let d = two_thirds(Duration::from_secs(90));
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
        assert!(two_thirds(Duration::ZERO) >= Duration::from_millis(100));
    }
}
