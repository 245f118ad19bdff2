//! When a secret is renewed, re-read, re-fetched or revoked: pure decisions over its lease and
//! the time `now`, which every function takes as input (as does the jitter, drawn by the
//! caller), so each rule is tested with explicit times. `crate::refresh` runs them against
//! the secret's source.
//!
//! - An unleased value (KV) is re-read every `kv_refresh` (±10 %).
//! - A leased value is renewed at about 2/3 of its remaining time (±10 %, at least 100 ms);
//!   the renewed lease ends `granted` after the answer came.
//! - A lease that cannot be renewed, or whose renewal was granted less than asked (the source
//!   caps it at its max TTL), is replaced by a new fetch at that point instead.
//! - A failed renewal re-fetches when the lease is gone or over, and otherwise retries.
//! - On shutdown every lease still running (the current one and any it replaced) is revoked.

use std::time::{Duration, SystemTime};

/// Shortest wait before a renewal or re-fetch: never a busy loop.
pub const MIN_WAIT: Duration = Duration::from_millis(100);

/// A lease as the broker holds it.
pub trait HeldLease {
    fn renewable(&self) -> bool;
    fn expires_at(&self) -> SystemTime;
}

/// About 2/3 of `d`, scaled by `jitter` (the caller draws it from 0.9..1.1), at least
/// [`MIN_WAIT`].
pub fn two_thirds(d: Duration, jitter: f64) -> Duration {
    d.mul_f64(2.0 / 3.0).mul_f64(jitter).max(MIN_WAIT)
}

/// What to do next with a held value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the unleased value again (a new version may exist).
    Reread,
    /// Renew the lease.
    Renew,
    /// Fetch a new value with a new lease.
    Refetch,
}

/// The next action and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    pub at: SystemTime,
}

impl Plan {
    /// How long from `now` until the plan is due (zero if already due).
    pub fn wait(&self, now: SystemTime) -> Duration {
        self.at.duration_since(now).unwrap_or_default()
    }
}

/// What to do with a value holding `lease` (or none), as of `now`. `near_max_ttl` is the
/// outcome of the last renewal ([`after_renewal`]).
pub fn plan(
    lease: Option<&impl HeldLease>,
    near_max_ttl: bool,
    now: SystemTime,
    kv_refresh: Duration,
    jitter: f64,
) -> Plan {
    let Some(lease) = lease else {
        return Plan {
            action: Action::Reread,
            at: now + kv_refresh.mul_f64(jitter),
        };
    };
    let remaining = lease.expires_at().duration_since(now).unwrap_or_default();
    let action = if !lease.renewable() || near_max_ttl {
        Action::Refetch
    } else {
        Action::Renew
    };
    Plan {
        action,
        at: now + two_thirds(remaining, jitter),
    }
}

/// A renewal answered at `now` granting `granted` of the `asked` increment: when the lease
/// now ends, and whether the source capped it (max TTL near: the next step is a re-fetch).
pub fn after_renewal(asked: Duration, granted: Duration, now: SystemTime) -> (SystemTime, bool) {
    (now + granted, granted < asked)
}

/// What follows a failed renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The lease is gone or over: fetch a new one now.
    Refetch,
    /// The lease still runs: back off and try again.
    Retry,
}

/// A renewal of a lease ending at `expires_at` failed at `now`; `lease_gone` when the source
/// said it no longer knows the lease.
pub fn after_renewal_failure(
    lease_gone: bool,
    expires_at: SystemTime,
    now: SystemTime,
) -> AfterFailure {
    if lease_gone || !still_running(expires_at, now) {
        AfterFailure::Refetch
    } else {
        AfterFailure::Retry
    }
}

/// Whether a lease ending at `expires_at` still runs at `now` (its value is servable, and it
/// is revoked at shutdown).
pub fn still_running(expires_at: SystemTime, now: SystemTime) -> bool {
    expires_at > now
}

/// The version of a new fetch: the source's own if it has one; otherwise the previous one,
/// moved on by a new lease, new content, or the first fetch.
pub fn next_version(
    previous: Option<u64>,
    from_source: Option<u64>,
    new_lease: bool,
    content_changed: bool,
) -> u64 {
    let previous = previous.unwrap_or(0);
    match from_source {
        Some(v) => v,
        None if new_lease || content_changed || previous == 0 => previous + 1,
        None => previous,
    }
}

/// The leases to revoke at shutdown: those still running, if revocation is configured.
pub fn to_revoke<L: HeldLease>(
    revoke_on_shutdown: bool,
    held: impl IntoIterator<Item = L>,
    now: SystemTime,
) -> Vec<L> {
    if !revoke_on_shutdown {
        return Vec::new();
    }
    held.into_iter()
        .filter(|l| still_running(l.expires_at(), now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct L {
        renewable: bool,
        expires_at: SystemTime,
    }

    impl HeldLease for L {
        fn renewable(&self) -> bool {
            self.renewable
        }
        fn expires_at(&self) -> SystemTime {
            self.expires_at
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn lease(renewable: bool, ends: u64) -> L {
        L {
            renewable,
            expires_at: t(ends),
        }
    }

    const KV: Duration = Duration::from_secs(60);

    #[test]
    fn unleased_values_are_reread_every_kv_refresh_with_jitter() {
        let p = plan(None::<&L>, false, t(100), KV, 1.0);
        assert_eq!(
            p,
            Plan {
                action: Action::Reread,
                at: t(160)
            }
        );
        assert_eq!(plan(None::<&L>, false, t(100), KV, 0.9).at, t(154));
        assert_eq!(
            plan(None::<&L>, false, t(100), KV, 1.1).wait(t(100)),
            Duration::from_secs(66)
        );
    }

    #[test]
    fn a_renewable_lease_is_renewed_at_two_thirds_of_what_remains() {
        // 90 s left at t=10: renew 60 s later.
        let p = plan(Some(&lease(true, 100)), false, t(10), KV, 1.0);
        assert_eq!(
            p,
            Plan {
                action: Action::Renew,
                at: t(70)
            }
        );
        // The same lease seen later: 2/3 of what is left then.
        assert_eq!(
            plan(Some(&lease(true, 100)), false, t(70), KV, 1.0).at,
            t(90)
        );
        // Jitter moves it by at most 10 %.
        assert_eq!(
            plan(Some(&lease(true, 100)), false, t(10), KV, 0.9).at,
            t(64)
        );
        assert_eq!(
            plan(Some(&lease(true, 100)), false, t(10), KV, 1.1).at,
            t(76)
        );
    }

    #[test]
    fn an_expired_lease_is_acted_on_after_the_minimum_wait_not_in_a_busy_loop() {
        let p = plan(Some(&lease(true, 100)), false, t(200), KV, 1.0);
        assert_eq!(p.action, Action::Renew);
        assert_eq!(p.wait(t(200)), MIN_WAIT);
    }

    #[test]
    fn an_unrenewable_or_capped_lease_is_refetched_instead_of_renewed() {
        let p = plan(Some(&lease(false, 100)), false, t(10), KV, 1.0);
        assert_eq!(
            p,
            Plan {
                action: Action::Refetch,
                at: t(70)
            }
        );
        let p = plan(Some(&lease(true, 100)), true, t(10), KV, 1.0);
        assert_eq!(
            p,
            Plan {
                action: Action::Refetch,
                at: t(70)
            }
        );
    }

    #[test]
    fn a_renewal_runs_from_when_it_was_answered_and_notices_the_max_ttl_cap() {
        let asked = Duration::from_secs(3600);
        assert_eq!(after_renewal(asked, asked, t(500)), (t(4100), false));
        assert_eq!(
            after_renewal(asked, Duration::from_secs(600), t(500)),
            (t(1100), true)
        );
    }

    #[test]
    fn a_failed_renewal_refetches_only_when_the_lease_is_gone_or_over() {
        assert_eq!(
            after_renewal_failure(false, t(100), t(50)),
            AfterFailure::Retry
        );
        assert_eq!(
            after_renewal_failure(true, t(100), t(50)),
            AfterFailure::Refetch
        );
        assert_eq!(
            after_renewal_failure(false, t(100), t(100)),
            AfterFailure::Refetch
        );
        assert_eq!(
            after_renewal_failure(false, t(100), t(150)),
            AfterFailure::Refetch
        );
    }

    #[test]
    fn versions_come_from_the_source_or_count_changes() {
        // KV: the source's version, whatever came before.
        assert_eq!(next_version(Some(7), Some(3), false, true), 3);
        // First fetch: 1.
        assert_eq!(next_version(None, None, false, false), 1);
        // Same content, no lease: the same version (no long-poll wakes).
        assert_eq!(next_version(Some(4), None, false, false), 4);
        // New content or a new lease: the next one.
        assert_eq!(next_version(Some(4), None, false, true), 5);
        assert_eq!(next_version(Some(4), None, true, false), 5);
    }

    #[test]
    fn shutdown_revokes_every_running_lease_unless_configured_not_to() {
        let held = [lease(true, 100), lease(false, 50), lease(true, 300)];
        assert_eq!(
            to_revoke(true, held.clone(), t(100)),
            vec![lease(true, 300)],
            "a lease that ended is not revoked"
        );
        assert_eq!(to_revoke(true, held.clone(), t(10)).len(), 3);
        assert!(to_revoke(false, held, t(10)).is_empty());
    }
}
