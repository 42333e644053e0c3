//! `experimental.ratelimit` (upstream v1.15.2): a token bucket per Workload API / SDS method
//! and per attested selector set, so one misbehaving workload (or every replica sharing its
//! selectors) cannot flood the agent and, through it, the server.
//!
//! As upstream: a limit of N allows N calls per second with a burst of N; every caller with
//! the same selector set shares one bucket, and callers with no selectors share the
//! `<unattested>` bucket. A refused call fails with `Unavailable: rate limit exceeded for
//! <method>` and counts `workload_api_rate_limit_exceeded{method}`. Streams are limited when
//! they open. The agent's own calls (its health check) are never limited. A configuration
//! reload may change the limits while the agent runs ([`WorkloadRateLimiter::set_limits`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Instant;

use spire_core::selector::Selector;
use tonic::Status;

use crate::config::RateLimitSection;

/// Upstream's full method names, which label the metric and the error.
pub const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
/// `FetchJWTSVID`.
pub const FETCH_JWT_SVID: &str = "/SpiffeWorkloadAPI/FetchJWTSVID";
/// `FetchX509Bundles`.
pub const FETCH_X509_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchX509Bundles";
/// `FetchJWTBundles`.
pub const FETCH_JWT_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchJWTBundles";
/// Envoy SDS `StreamSecrets`.
pub const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
/// Envoy SDS `FetchSecrets`.
pub const FETCH_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets";

/// Buckets kept before idle (full) ones are dropped, bounding memory under selector churn.
const MAX_BUCKETS: usize = 4096;

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The limits of every method, and the buckets of every selector set seen.
#[derive(Debug, Default)]
pub struct WorkloadRateLimiter {
    limits: RwLock<HashMap<&'static str, u32>>,
    buckets: Mutex<HashMap<(&'static str, String), Bucket>>,
}

impl WorkloadRateLimiter {
    /// Limits from `experimental.ratelimit`; methods without a limit (or 0) are never limited.
    pub fn new(config: &RateLimitSection) -> Self {
        let limiter = Self::default();
        limiter.set_limits(config);
        limiter
    }

    /// Replaces every limit (a configuration reload); buckets start full again.
    pub fn set_limits(&self, config: &RateLimitSection) {
        let limits = [
            (FETCH_X509_SVID, config.fetch_x509_svid),
            (FETCH_JWT_SVID, config.fetch_jwt_svid),
            (FETCH_X509_BUNDLES, config.fetch_x509_bundles),
            (FETCH_JWT_BUNDLES, config.fetch_jwt_bundles),
            (STREAM_SECRETS, config.stream_secrets),
            (FETCH_SECRETS, config.fetch_secrets),
        ]
        .into_iter()
        .filter_map(|(method, limit)| limit.filter(|l| *l > 0).map(|l| (method, l)))
        .collect::<HashMap<_, _>>();
        for (method, limit) in &limits {
            tracing::info!(method, limit, "Workload API/SDS rate limiting enabled");
        }
        *self.limits.write().unwrap_or_else(PoisonError::into_inner) = limits;
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Takes a token for a call of `method` by a caller with `selectors`, or refuses the
    /// call. `caller_pid` exempts the agent's own process.
    pub fn check(
        &self,
        method: &'static str,
        selectors: &[Selector],
        caller_pid: Option<i32>,
    ) -> Result<(), Status> {
        let limit = self
            .limits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(method)
            .copied();
        let Some(limit) = limit else {
            return Ok(());
        };
        let own_pid = i32::try_from(std::process::id()).ok();
        if caller_pid.is_some() && caller_pid == own_pid {
            return Ok(());
        }
        let now = Instant::now();
        let rate = f64::from(limit);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| refilled(b, rate, now) < rate);
        }
        let bucket = buckets
            .entry((method, selector_set_key(selectors)))
            .or_insert(Bucket {
                tokens: rate,
                refilled: now,
            });
        bucket.tokens = refilled(bucket, rate, now);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        drop(buckets);
        spire_common::telemetry::global().incr_counter(
            &["workload_api", "rate_limit_exceeded"],
            &[("method", method.to_owned())],
            1,
        );
        Err(Status::unavailable(format!(
            "rate limit exceeded for {method}"
        )))
    }
}

/// The bucket's tokens after refilling at `rate` per second up to `rate`.
fn refilled(bucket: &Bucket, rate: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(rate)
}

/// One key per selector set, whatever the order the attestors reported it in.
fn selector_set_key(selectors: &[Selector]) -> String {
    if selectors.is_empty() {
        return "<unattested>".to_owned();
    }
    let mut parts: Vec<String> = selectors
        .iter()
        .map(|s| format!("{}\0{}\0", s.kind, s.value))
        .collect();
    parts.sort();
    parts.dedup();
    parts.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(t: &str, v: &str) -> Selector {
        Selector {
            kind: t.to_owned(),
            value: v.to_owned(),
        }
    }

    fn limiter(fetch_x509_svid: u32) -> WorkloadRateLimiter {
        WorkloadRateLimiter::new(&RateLimitSection {
            fetch_x509_svid: Some(fetch_x509_svid),
            ..RateLimitSection::default()
        })
    }

    #[test]
    fn a_selector_set_gets_its_burst_then_is_refused() {
        let l = limiter(2);
        let a = [sel("unix", "uid:1"), sel("unix", "gid:1")];
        assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_ok());
        assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_ok());
        let err = l.check(FETCH_X509_SVID, &a, Some(1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(
            err.message(),
            "rate limit exceeded for /SpiffeWorkloadAPI/FetchX509SVID"
        );
        // The same set in another order shares the bucket; another set has its own.
        let reordered = [sel("unix", "gid:1"), sel("unix", "uid:1")];
        assert!(l.check(FETCH_X509_SVID, &reordered, Some(2)).is_err());
        assert!(
            l.check(FETCH_X509_SVID, &[sel("unix", "uid:2")], Some(3))
                .is_ok()
        );
        // Unattested callers share one bucket.
        assert!(l.check(FETCH_X509_SVID, &[], Some(4)).is_ok());
        assert!(l.check(FETCH_X509_SVID, &[], Some(5)).is_ok());
        assert!(l.check(FETCH_X509_SVID, &[], Some(6)).is_err());
    }

    #[test]
    fn unlimited_methods_and_the_agent_itself_pass() {
        let l = limiter(1);
        let a = [sel("unix", "uid:1")];
        for _ in 0..10 {
            assert!(l.check(FETCH_JWT_SVID, &a, Some(1)).is_ok());
        }
        let own = i32::try_from(std::process::id()).ok();
        for _ in 0..10 {
            assert!(l.check(FETCH_X509_SVID, &a, own).is_ok());
        }
    }

    #[test]
    fn new_limits_apply_to_the_next_call() {
        let l = limiter(1);
        let a = [sel("unix", "uid:1")];
        assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_ok());
        assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_err());
        l.set_limits(&RateLimitSection::default());
        for _ in 0..10 {
            assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_ok());
        }
    }

    #[test]
    fn each_key_limits_its_own_method_and_only_it() {
        let methods = [
            FETCH_X509_SVID,
            FETCH_JWT_SVID,
            FETCH_X509_BUNDLES,
            FETCH_JWT_BUNDLES,
            STREAM_SECRETS,
            FETCH_SECRETS,
        ];
        let one = Some(1);
        let sections = [
            RateLimitSection {
                fetch_x509_svid: one,
                ..RateLimitSection::default()
            },
            RateLimitSection {
                fetch_jwt_svid: one,
                ..RateLimitSection::default()
            },
            RateLimitSection {
                fetch_x509_bundles: one,
                ..RateLimitSection::default()
            },
            RateLimitSection {
                fetch_jwt_bundles: one,
                ..RateLimitSection::default()
            },
            RateLimitSection {
                stream_secrets: one,
                ..RateLimitSection::default()
            },
            RateLimitSection {
                fetch_secrets: one,
                ..RateLimitSection::default()
            },
        ];
        let a = [sel("unix", "uid:1")];
        for (limited, section) in methods.iter().zip(&sections) {
            let l = WorkloadRateLimiter::new(section);
            assert!(l.check(limited, &a, Some(1)).is_ok(), "{limited}");
            let err = l.check(limited, &a, Some(1)).unwrap_err();
            assert_eq!(err.message(), format!("rate limit exceeded for {limited}"));
            for other in methods.iter().filter(|m| *m != limited) {
                for _ in 0..3 {
                    assert!(
                        l.check(other, &a, Some(1)).is_ok(),
                        "{limited} limited {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let l = limiter(50);
        let a = [sel("unix", "uid:1")];
        for _ in 0..50 {
            assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_ok());
        }
        assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_err());
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(l.check(FETCH_X509_SVID, &a, Some(1)).is_ok());
    }
}
