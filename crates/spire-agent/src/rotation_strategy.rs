//! When an X509-SVID (the agent's own or a workload's) is renewed: at half of its lifetime,
//! or, with `availability_target` set, earlier if needed: once its remaining lifetime
//! reaches the target, so an outage of the server or agent that long is ridden out on the
//! SVIDs in hand.
//!
//! Upstream's `rotationutil`: the target applies only when the SVID's lifetime leaves a
//! grace period (lifetime minus target) longer than 12 hours; otherwise the half-life rule
//! stands. Upstream adds random jitter (±10% of the half-life, up to +10 minutes on the
//! target) to spread renewals; here the moment is exact, which only makes renewals of SVIDs
//! issued together fall together.

use std::time::Duration;

/// The shortest grace period (SVID lifetime minus `availability_target`) for which the
/// target is honoured, as upstream.
pub const GRACE_PERIOD_THRESHOLD: Duration = Duration::from_secs(12 * 3600);

/// Whether `availability_target` cannot be honoured for an SVID of `lifetime_secs`, so the
/// half-life rule applies instead (upstream logs a warning then).
pub fn falls_back_to_half_life(lifetime_secs: i64, availability_target: Option<Duration>) -> bool {
    let Some(target) = availability_target else {
        return false;
    };
    let target = i64::try_from(target.as_secs()).unwrap_or(i64::MAX);
    let threshold = i64::try_from(GRACE_PERIOD_THRESHOLD.as_secs()).unwrap_or(i64::MAX);
    lifetime_secs.saturating_sub(target) <= threshold
}

/// The Unix second at which an SVID valid from `not_before` to `not_after` should be
/// renewed: the earlier of its half-life and the moment only `availability_target` is left.
pub fn renewal_due(not_before: i64, not_after: i64, availability_target: Option<Duration>) -> i64 {
    let lifetime = not_after.saturating_sub(not_before);
    let half_life = not_before.saturating_add(lifetime / 2);
    match availability_target {
        Some(target) if !falls_back_to_half_life(lifetime, availability_target) => {
            let target = i64::try_from(target.as_secs()).unwrap_or(i64::MAX);
            half_life.min(not_after.saturating_sub(target))
        }
        _ => half_life,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    #[test]
    fn without_a_target_renewal_is_at_half_life() {
        assert_eq!(renewal_due(0, 100, None), 50);
    }

    #[test]
    fn a_target_renews_when_that_much_lifetime_is_left() {
        // 96h SVID, 48h target: grace 48h > 12h; 48h left is the half-life too.
        let target = Some(Duration::from_secs(48 * 3600));
        assert_eq!(renewal_due(0, 96 * HOUR, target), 48 * HOUR);
        // 72h SVID, 48h target: grace 24h > 12h, renew with 48h left (at 24h), before the
        // half-life (36h).
        assert_eq!(renewal_due(0, 72 * HOUR, target), 24 * HOUR);
        assert!(!falls_back_to_half_life(72 * HOUR, target));
        // A target below half the lifetime changes nothing: the half-life comes first.
        let short = Some(Duration::from_secs(24 * 3600));
        assert_eq!(renewal_due(0, 72 * HOUR, short), 36 * HOUR);
    }

    #[test]
    fn a_target_the_lifetime_cannot_carry_falls_back_to_half_life() {
        // 1h SVIDs (the default TTL) leave no 12h grace period for a 24h target.
        let target = Some(Duration::from_secs(24 * 3600));
        assert!(falls_back_to_half_life(HOUR, target));
        assert_eq!(renewal_due(0, HOUR, target), HOUR / 2);
        // Exactly 12h of grace is not enough either, as upstream (`<=`).
        assert!(falls_back_to_half_life(36 * HOUR, target));
        assert_eq!(renewal_due(0, 36 * HOUR, target), 18 * HOUR);
    }
}
