//! How long to wait before retrying a failed issuance.

use std::time::Duration;

use rand::Rng;

/// Retry delays after a failed issuance: 1 s doubling to 30 s, each wait drawn uniformly from
/// [d/2, d] (equal jitter, as the broker's backoff) so sidecars that failed together do not
/// retry in lockstep against Vault.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The first delay before doubling.
    pub const BASE: Duration = Duration::from_secs(1);
    /// The longest delay.
    pub const CAP: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// Starts over from [`Backoff::BASE`] (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next wait: d/2 + uniform [0, d/2], where d = BASE·2^attempt capped at CAP.
    pub fn next_delay(&mut self) -> Duration {
        let d = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_within_half_to_full_and_capped() {
        for _ in 0..200 {
            let mut b = Backoff::new();
            for attempt in 0..10u32 {
                let d = Duration::from_secs(1 << attempt).min(Duration::from_secs(30));
                let wait = b.next_delay();
                assert!(
                    wait >= d / 2 && wait <= d,
                    "attempt {attempt}: {wait:?} outside [{:?}, {d:?}]",
                    d / 2
                );
            }
            b.reset();
            let first = b.next_delay();
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        }
        // Jittered: 50 first waits are not all the same.
        let waits: std::collections::HashSet<_> =
            (0..50).map(|_| Backoff::new().next_delay()).collect();
        assert!(waits.len() > 1, "no jitter: {waits:?}");
    }
}
