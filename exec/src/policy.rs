//! The wrapper's decisions as pure functions of their inputs (time included), so each is
//! tested without processes or clocks: the exit code for an app's end, what a new version of
//! a secret calls for, and when a restart may happen (the restart backoff).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::spec::OnChange;

/// How the app ended, as the wrapper's own exit code: the app's status, or 128 + the signal
/// number when a signal killed it (the shell convention, what Jobs and `kubectl` then show).
pub fn exit_code(ended: Ended) -> u8 {
    match ended {
        Ended::Exited(code) => (code & 0xff) as u8,
        Ended::Signaled(signo) => (128 + (signo & 0x7f)) as u8,
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// This signal (its number) killed it.
    Signaled(i32),
}

/// What a new version of one secret calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing: no action configured, or the app already runs with this version or a newer one.
    Ignore,
    /// Signal the app.
    Signal(Signal),
    /// Restart the app with the new values.
    Restart,
}

/// The reaction to `secret` reaching `version`, when the app was last given (started with, or
/// signalled for) `applied` of it.
pub fn react(action: OnChange, applied: u64, version: u64) -> Reaction {
    if version <= applied {
        return Reaction::Ignore;
    }
    match action {
        OnChange::None => Reaction::Ignore,
        OnChange::Signal(s) => Reaction::Signal(s),
        OnChange::Restart => Reaction::Restart,
    }
}

/// The versions that call for a restart: those of `seen` that are newer than what the running
/// app was started with (`applied`) for secrets whose action is restart. Empty: no restart
/// pending. Used after each restart so a change that came in while it ran is not lost.
pub fn pending_restarts(
    actions: &BTreeMap<String, OnChange>,
    applied: &BTreeMap<String, u64>,
    seen: &BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    seen.iter()
        .filter(|(name, v)| {
            actions.get(*name) == Some(&OnChange::Restart)
                && **v > applied.get(*name).copied().unwrap_or(0)
        })
        .map(|(n, v)| (n.clone(), *v))
        .collect()
}

/// The restart backoff: restarts that follow each other without a stable period between
/// them (the app was up less than `stable_after` when the next restart became due) are
/// spaced by `initial`, `2 * initial`, `4 * initial`... up to `max` between successive starts;
/// after a stable period the next restart is immediate again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The spacing after the first quick restart.
    pub initial: Duration,
    /// The largest spacing.
    pub max: Duration,
    /// How long the app must have been up for the run of quick restarts to end.
    pub stable_after: Duration,
}

/// The restart state the backoff needs: when the app was last started, and how many quick
/// restarts are in the current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartState {
    /// When the running app was started.
    pub last_start: Instant,
    /// Quick restarts in the current run (0 after a stable period).
    pub quick: u32,
}

impl Backoff {
    /// The spacing before quick restart number `n` (1-based): `initial * 2^(n-1)`, at most `max`.
    pub fn spacing(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// When a restart that became due at `now` may start the app again, and the state after it.
    pub fn schedule(&self, state: RestartState, now: Instant) -> (Instant, u32) {
        let up = now.saturating_duration_since(state.last_start);
        if up >= self.stable_after {
            return (now, 0);
        }
        let n = state.quick.saturating_add(1);
        let at = state.last_start + self.spacing(n);
        (at.max(now), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_status_or_128_plus_the_signal() {
        assert_eq!(exit_code(Ended::Exited(0)), 0);
        assert_eq!(exit_code(Ended::Exited(7)), 7);
        assert_eq!(exit_code(Ended::Exited(255)), 255);
        assert_eq!(exit_code(Ended::Signaled(15)), 143);
        assert_eq!(exit_code(Ended::Signaled(9)), 137);
        assert_eq!(exit_code(Ended::Signaled(2)), 130);
    }

    #[test]
    fn a_new_version_calls_for_the_configured_action_and_an_old_one_for_nothing() {
        let hup = OnChange::Signal(Signal::SIGHUP);
        assert_eq!(react(hup, 2, 3), Reaction::Signal(Signal::SIGHUP));
        assert_eq!(react(OnChange::Restart, 2, 5), Reaction::Restart);
        assert_eq!(react(OnChange::None, 2, 3), Reaction::Ignore);
        assert_eq!(react(OnChange::Restart, 3, 3), Reaction::Ignore);
        assert_eq!(react(hup, 4, 3), Reaction::Ignore);
    }

    #[test]
    fn a_change_seen_during_a_restart_is_still_pending_after_it() {
        let actions: BTreeMap<String, OnChange> = [
            ("db".to_string(), OnChange::Restart),
            ("cfg".to_string(), OnChange::Signal(Signal::SIGHUP)),
        ]
        .into();
        let applied: BTreeMap<String, u64> = [("db".into(), 3), ("cfg".into(), 1)].into();
        // The restart read db v3; v4 arrived while the old app was stopping.
        let seen: BTreeMap<String, u64> = [("db".into(), 4), ("cfg".into(), 2)].into();
        assert_eq!(
            pending_restarts(&actions, &applied, &seen),
            vec![("db".to_string(), 4)]
        );
        let seen: BTreeMap<String, u64> = [("db".into(), 3), ("cfg".into(), 2)].into();
        assert!(pending_restarts(&actions, &applied, &seen).is_empty());
    }

    fn policy() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            stable_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_spacing_doubles_up_to_the_cap() {
        let b = policy();
        let got: Vec<u64> = (0..8).map(|n| b.spacing(n).as_secs()).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 8, 8, 8]);
        assert_eq!(b.spacing(u32::MAX), b.max, "no overflow");
        let huge = Backoff {
            initial: Duration::from_secs(u64::MAX / 2),
            ..b
        };
        assert_eq!(huge.spacing(40), b.max, "no overflow");
    }

    #[test]
    fn quick_restarts_back_off_and_a_stable_period_resets_the_schedule() {
        let b = policy();
        let t0 = Instant::now();
        let s = |last: Duration, quick| RestartState {
            last_start: t0 + last,
            quick,
        };
        let secs = Duration::from_secs;
        // Up for a minute: restart at once, the run starts over.
        assert_eq!(b.schedule(s(secs(0), 3), t0 + secs(60)), (t0 + secs(60), 0));
        // Up 0.1 s: the first quick restart waits until 1 s after the last start.
        let (at, n) = b.schedule(s(secs(0), 0), t0 + Duration::from_millis(100));
        assert_eq!((at, n), (t0 + secs(1), 1));
        // The following quick restarts: 2 s, 4 s, 8 s, 8 s after each start.
        let mut start = at;
        let mut quick = n;
        let mut spacings = vec![];
        for _ in 0..4 {
            let (next, q) = b.schedule(
                RestartState {
                    last_start: start,
                    quick,
                },
                start + Duration::from_millis(10),
            );
            spacings.push((next - start).as_secs());
            start = next;
            quick = q;
        }
        assert_eq!(spacings, vec![2, 4, 8, 8]);
        // Due later than the spacing (but before stable): no extra wait.
        assert_eq!(b.schedule(s(secs(0), 1), t0 + secs(5)), (t0 + secs(5), 2));
        // Exactly stable_after: reset.
        assert_eq!(b.schedule(s(secs(0), 5), t0 + secs(30)), (t0 + secs(30), 0));
    }
}
