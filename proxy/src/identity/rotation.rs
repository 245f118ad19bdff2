//! Rotation: when to renew (a pure function of the current certificate's lifetime and `now`), and
//! the [`Rotator`] task that issues, audits and installs.

use std::sync::Arc;
use std::time::Duration;

use keyward_audit::{AuditLog, Decision, Record};
use keyward_identity::SpiffeId;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::issue::issue;
use super::signer::CsrSigner;
use super::store::IdentityStore;
use super::{unix_now, IdentityError};
use crate::metrics::Metrics;
use crate::svid::TrustBundle;

/// The part of a certificate's life rotation counts, in Unix seconds: from `start` (`notBefore`
/// or issuance, whichever is later) to `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub start: i64,
    pub not_after: i64,
}

impl Lifetime {
    /// When to start renewing: about 2/3 of the lifetime, `jitter` (clamped to ±5%) moving it.
    pub fn renew_at(&self, jitter: f64) -> i64 {
        let life = (self.not_after - self.start).max(0) as f64;
        self.start + (life * (2.0 / 3.0 + jitter.clamp(-0.05, 0.05))) as i64
    }
}

/// How long to wait at `now` before renewing: until the current certificate's renewal time, or
/// not at all without a certificate or once that time has come.
pub(crate) fn renewal_delay(current: Option<Lifetime>, now: i64, jitter: f64) -> Duration {
    match current {
        Some(l) => Duration::from_secs(l.renew_at(jitter).saturating_sub(now).max(0) as u64),
        None => Duration::ZERO,
    }
}

/// Issues SVIDs for `id` and keeps them fresh.
pub struct Rotator {
    pub store: Arc<IdentityStore>,
    pub signer: Arc<dyn CsrSigner>,
    pub id: SpiffeId,
    pub ttl: Duration,
    pub bundle_override: Option<TrustBundle>,
    pub audit: Arc<AuditLog>,
    pub metrics: Metrics,
}

impl Rotator {
    /// Issues one SVID, records it in the audit log, and installs it.
    pub async fn issue_once(&self) -> Result<(), IdentityError> {
        let path = self.signer.audit_path();
        match issue(
            self.signer.as_ref(),
            &self.id,
            self.ttl,
            self.bundle_override.as_ref(),
        )
        .await
        {
            Ok((svid, request_id)) => {
                let mut r = Record::new("svid.issue", Decision::Ok).reason(format!(
                    "{} expires {}",
                    svid.id(),
                    svid.expires_at()
                ));
                r.path = (!path.is_empty()).then_some(path);
                r.vault_request_id = request_id;
                self.audit
                    .record(&r)
                    .map_err(|e| IdentityError::Audit(e.to_string()))?;
                info!(spiffe_id = %svid.id(), expires_at = %svid.expires_at(), "Workload certificate issued");
                self.metrics.svid_expiry.set(svid.not_after());
                self.metrics.svid_renewals.inc();
                self.store.install(svid);
                Ok(())
            }
            Err(e) => {
                self.metrics.svid_errors.inc();
                let mut r = Record::new("svid.issue", Decision::Error).reason(e.to_string());
                r.path = (!path.is_empty()).then_some(path);
                if let Err(ae) = self.audit.record(&r) {
                    warn!(error = %ae, "Cannot write audit record");
                }
                Err(e)
            }
        }
    }

    /// Renews at about 2/3 of each certificate's lifetime until cancelled; on failure retries
    /// with [`Backoff`] (1 s doubling to 30 s, jittered) while the current certificate is still
    /// valid.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let jitter = rand::thread_rng().gen_range(-0.05..0.05);
            let current = self.store.current().map(|svid| svid.lifetime());
            let wait = renewal_delay(current, unix_now(), jitter);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            loop {
                match self.issue_once().await {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "Cannot renew workload certificate");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Lifetime = Lifetime {
        start: 1_000,
        not_after: 4_000,
    };

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        assert_eq!(LIFE.renew_at(0.0), 3_000);
        assert_eq!(
            renewal_delay(Some(LIFE), 1_000, 0.0),
            Duration::from_secs(2_000)
        );
        assert_eq!(
            renewal_delay(Some(LIFE), 2_999, 0.0),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn jitter_moves_the_renewal_by_at_most_five_percent() {
        // 3,000 s of life: 2/3 ± 5% is 2,000 ± 150 s after the start (± 1 s of rounding).
        let near = |got: i64, want: i64| (got - want).abs() <= 1;
        assert!(near(LIFE.renew_at(0.05), 3_150));
        assert!(near(LIFE.renew_at(-0.05), 2_850));
        assert!(near(LIFE.renew_at(0.5), 3_150), "clamped");
        assert!(near(LIFE.renew_at(-0.5), 2_850), "clamped");
    }

    #[test]
    fn renews_at_once_without_a_certificate_or_when_due() {
        assert_eq!(renewal_delay(None, 1_000, 0.0), Duration::ZERO);
        assert_eq!(renewal_delay(Some(LIFE), 3_000, 0.0), Duration::ZERO);
        assert_eq!(renewal_delay(Some(LIFE), 9_000, 0.0), Duration::ZERO);
    }
}
