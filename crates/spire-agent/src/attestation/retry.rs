//! `retry_bootstrap`: how long and how often the agent tries again when it cannot obtain its
//! first agent SVID (the server is not up yet, the trust bundle URL does not answer), as
//! upstream v1.13.3's agent does: an exponential backoff starting at 5 s, ×1.5 per attempt,
//! ±10 % jitter, each wait at most 2 min, and giving up once the next wait would end more
//! than 1 min after the first attempt (24 h when `rebootstrap_mode` is not `never`).
//! A PermissionDenied answer is never retried.

use std::time::Duration;

/// The first wait after a failed bootstrap (upstream's `bootstrapBackoffInterval`).
pub const BOOTSTRAP_BACKOFF_INTERVAL: Duration = Duration::from_secs(5);
/// How long the agent keeps trying to bootstrap (upstream's `bootstrapBackoffMaxElapsedTime`).
pub const BOOTSTRAP_BACKOFF_MAX_ELAPSED: Duration = Duration::from_secs(60);
/// How long the agent keeps trying when rebootstrapping is on
/// (upstream's `rebootstrapBackoffMaxElapsedTime`).
pub const REBOOTSTRAP_BACKOFF_MAX_ELAPSED: Duration = Duration::from_secs(24 * 60 * 60);

/// Growth of each wait over the previous one (cenkalti/backoff's default multiplier).
const MULTIPLIER: f64 = 1.5;
/// Spread of each wait around its nominal value.
const JITTER: f64 = 0.10;
/// The longest single wait, as a multiple of the first one (upstream's `_maxIntervalMultiple`).
const MAX_INTERVAL_MULTIPLE: u32 = 24;

/// An exponential backoff with a deadline, the shape of upstream's `backoff.NewBackoff`
/// (cenkalti/backoff's `ExponentialBackOff`): the caller passes the time elapsed since the
/// first attempt and a random number, so the schedule is testable without sleeping.
#[derive(Debug, Clone)]
pub struct BootstrapBackoff {
    current: Duration,
    max_interval: Duration,
    max_elapsed: Duration,
}

impl BootstrapBackoff {
    /// The backoff of the bootstrap loop; `rebootstrap` (a `rebootstrap_mode` other than
    /// `never`) keeps the agent trying for 24 h instead of 1 min.
    pub fn new(rebootstrap: bool) -> Self {
        Self::with(
            BOOTSTRAP_BACKOFF_INTERVAL,
            if rebootstrap {
                REBOOTSTRAP_BACKOFF_MAX_ELAPSED
            } else {
                BOOTSTRAP_BACKOFF_MAX_ELAPSED
            },
        )
    }

    /// A backoff starting at `interval` that gives up after `max_elapsed`.
    pub fn with(interval: Duration, max_elapsed: Duration) -> Self {
        Self {
            current: interval,
            max_interval: interval * MAX_INTERVAL_MULTIPLE,
            max_elapsed,
        }
    }

    /// The wait before the next attempt, or `None` when that wait would end past the
    /// deadline (the agent then gives up with the last error). `elapsed` is the time since
    /// the backoff was made; `unit` a random number in [0, 1).
    pub fn next(&mut self, elapsed: Duration, unit: f64) -> Option<Duration> {
        let nominal = self.current.as_secs_f64();
        let delta = JITTER * nominal;
        let low = nominal - delta;
        let high = nominal + delta;
        let wait = Duration::from_secs_f64(low + unit.clamp(0.0, 1.0) * (high - low));
        self.current = if nominal * MULTIPLIER >= self.max_interval.as_secs_f64() {
            self.max_interval
        } else {
            Duration::from_secs_f64(nominal * MULTIPLIER)
        };
        (elapsed + wait <= self.max_elapsed).then_some(wait)
    }
}

/// A random number in [0, 1) for the jitter (0.5, no jitter, if the system RNG fails).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the schedule without jitter, attempts taking no time: the waits until it stops.
    fn schedule(mut backoff: BootstrapBackoff) -> Vec<Duration> {
        let mut elapsed = Duration::ZERO;
        let mut waits = Vec::new();
        while let Some(wait) = backoff.next(elapsed, 0.5) {
            elapsed += wait;
            waits.push(wait);
            assert!(waits.len() < 10_000, "the backoff never stops");
        }
        waits
    }

    #[test]
    fn without_rebootstrap_the_agent_tries_for_a_minute() {
        let waits = schedule(BootstrapBackoff::new(false));
        let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![5.0, 7.5, 11.25, 16.875]);
        let total: Duration = waits.iter().sum();
        assert!(total <= BOOTSTRAP_BACKOFF_MAX_ELAPSED);
    }

    #[test]
    fn with_rebootstrap_the_agent_tries_for_a_day_with_waits_of_at_most_two_minutes() {
        let waits = schedule(BootstrapBackoff::new(true));
        let total: Duration = waits.iter().sum();
        assert!(total <= REBOOTSTRAP_BACKOFF_MAX_ELAPSED);
        assert!(total > REBOOTSTRAP_BACKOFF_MAX_ELAPSED - Duration::from_secs(120));
        assert_eq!(waits.iter().max(), Some(&Duration::from_secs(120)));
        assert_eq!(waits.last(), Some(&Duration::from_secs(120)));
    }

    #[test]
    fn each_wait_is_spread_by_ten_percent() {
        let low = BootstrapBackoff::new(false).next(Duration::ZERO, 0.0);
        let high = BootstrapBackoff::new(false).next(Duration::ZERO, 1.0);
        assert_eq!(low, Some(Duration::from_millis(4500)));
        assert_eq!(high, Some(Duration::from_millis(5500)));
    }

    #[test]
    fn time_spent_in_attempts_counts_toward_the_deadline() {
        let mut backoff = BootstrapBackoff::new(false);
        assert_eq!(
            backoff.next(Duration::from_secs(56), 0.5),
            None,
            "a wait ending past 1 min after the start stops the retries"
        );
    }
}
