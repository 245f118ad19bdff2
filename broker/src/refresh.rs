//! The loops that keep the broker logged in and its secrets fresh: they run the decisions of
//! [`crate::lifecycle`] against each secret's [`crate::source::SecretSource`]. Every wait is either a
//! deadline derived from a TTL (at about 2/3 of it, with jitter) or an exponential backoff
//! with jitter after an error: never a busy loop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyward_audit::{Decision, Record};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::{seal_fields, Cached, Entry, Lease};
use crate::lifecycle::{self, Action, AfterFailure};
use crate::metrics::BrokerMetrics;
use crate::secret::ZeroBuf;
use crate::source::SourceError;
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
    lifecycle::two_thirds(d, jitter())
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
                // Recorded before /ready names the reason, so that whoever sees the reason
                // there finds the record too.
                let _ = ctx
                    .audit
                    .record(&Record::new("vault.login", Decision::Error).reason(reason.clone()));
                ctx.set_login_error(Some(reason));
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
                    // Routine: summarised per interval (keyward_audit::AuditLog::routine).
                    let _ = ctx.audit.routine(&rec);
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

/// Fetches one secret from its source and keeps it fresh until shutdown.
pub async fn secret_loop(ctx: Arc<Inner>, entry: Arc<Entry>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(ctx.config.auth.max_backoff);
    loop {
        tokio::select! {
            _ = entry.source.ready() => {}
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

/// The ±10 % jitter of every planned wait.
fn jitter() -> f64 {
    rand::thread_rng().gen_range(0.9..1.1)
}

/// Waits, renewing the lease if there is one, as [`lifecycle::plan`] says; returns when a
/// re-read or re-fetch is due (true) or on shutdown (false).
async fn keep_fresh(ctx: &Inner, entry: &Entry, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(ctx.config.auth.max_backoff);
    let mut near_max_ttl = false;
    loop {
        let Some(value) = entry.value() else {
            return true;
        };
        let now = SystemTime::now();
        let plan = lifecycle::plan(
            value.lease.as_ref(),
            near_max_ttl,
            now,
            ctx.config.kv_refresh(),
            jitter(),
        );
        if !sleep_or(shutdown, plan.wait(now)).await {
            return false;
        }
        let (Action::Renew, Some(lease)) = (plan.action, value.lease) else {
            return true;
        };
        let kind = entry.source.kind();
        match entry.source.renew(&lease.id, lease.duration).await {
            Ok(renewal) => {
                backoff.reset();
                let granted = renewal.ttl;
                let (expires_at, capped) =
                    lifecycle::after_renewal(lease.duration, granted, SystemTime::now());
                entry.renewed(&lease.id, expires_at);
                ctx.metrics
                    .lease_renewals
                    .get_or_create(&BrokerMetrics::result("ok"))
                    .inc();
                near_max_ttl = capped;
                info!(secret = %entry.spec.name, ttl_s = granted.as_secs(), near_max_ttl, "Renewed lease");
                let mut rec = Record::new(kind.renew_action, Decision::Ok);
                rec.secret = Some(entry.spec.name.clone());
                rec.path = Some(entry.spec.path.clone());
                rec.version = Some(value.version);
                rec.lease_hmac = Some(ctx.audit.hmac(lease.id.expose()));
                rec.vault_request_id = Some(renewal.request_id);
                let _ = ctx.audit.routine(&rec);
            }
            Err(e) => {
                ctx.metrics
                    .lease_renewals
                    .get_or_create(&BrokerMetrics::result("error"))
                    .inc();
                warn!(secret = %entry.spec.name, error = %e, "Lease renewal failed");
                let mut rec = Record::new(kind.renew_action, Decision::Error).reason(e.to_string());
                rec.secret = Some(entry.spec.name.clone());
                rec.lease_hmac = Some(ctx.audit.hmac(lease.id.expose()));
                let _ = ctx.audit.record(&rec);
                match lifecycle::after_renewal_failure(
                    e.lease_gone(),
                    lease.expires_at,
                    SystemTime::now(),
                ) {
                    AfterFailure::Refetch => return true,
                    AfterFailure::Retry => {
                        if !sleep_or(shutdown, backoff.next_delay()).await {
                            return false;
                        }
                    }
                }
            }
        }
    }
}

/// Reads the secret from its source, seals it into the cache and records the fetch.
async fn fetch(ctx: &Inner, entry: &Entry) -> Result<(), SourceError> {
    let spec = &entry.spec;
    let kind = entry.source.kind();
    let record_error = |e: &SourceError| {
        let mut rec = Record::new(kind.fetch_action, Decision::Error).reason(e.to_string());
        rec.secret = Some(spec.name.clone());
        rec.path = Some(spec.path.clone());
        rec.vault_request_id = e.request_id().map(str::to_owned);
        let _ = ctx.audit.record(&rec);
    };
    let mut got = match entry.source.fetch().await {
        Ok(f) => f,
        Err(e) => {
            record_error(&e);
            return Err(e);
        }
    };
    let previous = entry.value();
    let fields = match seal_fields(&ctx.sealer, spec, got.data()) {
        Ok(f) => f,
        Err(detail) => {
            let e = SourceError::Unusable {
                source_name: kind.name,
                detail,
                request_id: Some(got.request_id.clone()),
            };
            record_error(&e);
            return Err(e);
        }
    };
    let digest = {
        let text = ZeroBuf::json(got.data());
        keyward_audit::hmac_hex(&ctx.digest_key, &String::from_utf8_lossy(text.as_slice()))
    };
    let version = lifecycle::next_version(
        previous.as_ref().map(|p| p.version),
        got.version,
        got.lease.is_some(),
        ctx.digest_changed(&spec.name, &digest),
    );
    ctx.remember_digest(&spec.name, digest);
    let now = SystemTime::now();
    let lease = got.lease.take().map(|l| Lease {
        id: l.id,
        renewable: l.renewable,
        expires_at: now + l.ttl,
        duration: l.ttl,
    });
    let request_id = std::mem::take(&mut got.request_id);
    drop(got);
    let mut rec = Record::new(kind.fetch_action, Decision::Ok);
    rec.secret = Some(spec.name.clone());
    rec.path = Some(spec.path.clone());
    rec.version = Some(version);
    rec.lease_hmac = lease.as_ref().map(|l| ctx.audit.hmac(l.id.expose()));
    rec.vault_request_id = Some(request_id);
    // A re-read that returns the version already held changes nothing: routine.
    let _ = if previous.as_ref().is_some_and(|p| p.version == version) {
        ctx.audit.routine(&rec)
    } else {
        ctx.audit.record(&rec)
    };
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
    });
    Ok(())
}

/// Revokes every lease still held through its source, then the Vault token (on shutdown).
pub async fn revoke_all(ctx: &Inner) {
    for entry in ctx.entries.values() {
        let kind = entry.source.kind();
        for lease in lifecycle::to_revoke(true, entry.leases(), SystemTime::now()) {
            let result = entry.source.revoke(&lease.id).await;
            let decision = if result.is_ok() {
                Decision::Ok
            } else {
                Decision::Error
            };
            let mut rec = Record::new(kind.revoke_action, decision);
            rec.secret = Some(entry.spec.name.clone());
            rec.path = Some(entry.spec.path.clone());
            rec.lease_hmac = Some(ctx.audit.hmac(lease.id.expose()));
            match result {
                Ok(r) => {
                    info!(secret = %entry.spec.name, "Revoked lease");
                    rec.vault_request_id = Some(r.request_id);
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
    // The last checkpoint (the lease revocations above included) while the token still works.
    crate::checkpoint::at_shutdown(ctx).await;
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
