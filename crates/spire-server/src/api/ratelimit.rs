//! Per-IP rate limits for attestation and signing, as upstream's `ratelimit` block.
//!
//! Each limit is a token bucket per client IP whose rate and burst are upstream's numbers
//! (`pkg/server/api/limits`): a caller over the rate is delayed until its tokens are there,
//! not rejected, so a well-behaved agent fleet that bursts at start-up still gets served.
//! Only a request for more events than the burst can ever hold is refused
//! (ResourceExhausted). Callers over the admin socket have no IP and are never limited.
//! Buckets of IPs that stopped calling are dropped after a minute, as upstream does, so a
//! scan from many addresses cannot grow the maps forever.
//!
//! Every call of an RPC whose limit is on counts in upstream's `rateLimit_<service>_<method>`
//! call counter ([`RateLimiters::limit_call`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::Caller;

/// AttestAgent calls per second per IP (upstream `AttestLimitPerIP`).
pub const ATTEST_LIMIT_PER_IP: u32 = 1;
/// Signed SVIDs (CSRs, JWT-SVIDs, downstream CAs) per second per IP (`SignLimitPerIP`).
pub const SIGN_LIMIT_PER_IP: u32 = 500;
/// PublishJWTAuthority calls per second per IP (`PushJWTKeyLimitPerIP`).
pub const PUSH_JWT_KEY_LIMIT_PER_IP: u32 = 500;
/// PostStatus calls per second per IP (`PostStatusLimitPerIP`).
pub const POST_STATUS_LIMIT_PER_IP: u32 = 10;

/// How long an IP's bucket survives without use before it is garbage-collected.
const GC_INTERVAL: Duration = Duration::from_secs(60);

/// Which limit a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitKind {
    /// AttestAgent: 1 per second per IP.
    Attestation,
    /// BatchNewX509SVID (per CSR), NewJWTSVID, RenewAgent: 500 per second per IP.
    Signing,
    /// NewDownstreamX509CA: counts against the signing bucket, as upstream's shared CSR
    /// limiter does.
    DownstreamCa,
    /// PublishJWTAuthority: 500 per second per IP, always on (upstream has no switch for it).
    PublishJwtKey,
    /// PostStatus: 10 per second per IP, always on, as upstream's.
    PostStatus,
}

/// The limiters shared by every connection.
#[derive(Debug)]
pub struct RateLimiters {
    attestation: PerIpLimiter,
    signing: PerIpLimiter,
    /// `ratelimit.attestation`; a configuration reload may flip it.
    attestation_on: AtomicBool,
    /// `ratelimit.signing`; a configuration reload may flip it.
    signing_on: AtomicBool,
    publish_jwt_key: PerIpLimiter,
    post_status: PerIpLimiter,
}

impl Default for RateLimiters {
    /// Both limits on, as upstream's defaults (`ratelimit { attestation = true, signing = true }`).
    fn default() -> Self {
        Self::new(true, true)
    }
}

impl RateLimiters {
    /// Limiters with the `ratelimit` block's switches: `attestation` and `signing` turn the
    /// corresponding per-IP limits on.
    pub fn new(attestation: bool, signing: bool) -> Self {
        Self {
            attestation: PerIpLimiter::new(ATTEST_LIMIT_PER_IP),
            signing: PerIpLimiter::new(SIGN_LIMIT_PER_IP),
            attestation_on: AtomicBool::new(attestation),
            signing_on: AtomicBool::new(signing),
            publish_jwt_key: PerIpLimiter::new(PUSH_JWT_KEY_LIMIT_PER_IP),
            post_status: PerIpLimiter::new(POST_STATUS_LIMIT_PER_IP),
        }
    }

    /// Waits until `count` events of `kind` are allowed for the caller's IP; local callers
    /// are never limited. ResourceExhausted only when the burst cannot be satisfied.
    pub async fn limit(
        &self,
        caller: &Caller,
        kind: LimitKind,
        count: u32,
    ) -> Result<(), tonic::Status> {
        if caller.local {
            return Ok(());
        }
        let Some(addr) = caller.addr else {
            return Ok(());
        };
        let limiter = match kind {
            LimitKind::Attestation => self
                .attestation_on
                .load(Ordering::Relaxed)
                .then_some(&self.attestation),
            LimitKind::Signing | LimitKind::DownstreamCa => self
                .signing_on
                .load(Ordering::Relaxed)
                .then_some(&self.signing),
            LimitKind::PublishJwtKey => Some(&self.publish_jwt_key),
            LimitKind::PostStatus => Some(&self.post_status),
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        let wait = limiter.reserve(addr.ip(), count)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// [`RateLimiters::limit`] for the RPC `rpc` (its gRPC path), counted as upstream's
    /// `rateLimit_<service>_<method>` call counter (status `OK` or the refusal's code, the
    /// wait included in its latency) whenever the limit is on, whoever calls.
    pub async fn limit_call(
        &self,
        rpc: &str,
        caller: &Caller,
        kind: LimitKind,
        count: u32,
    ) -> Result<(), tonic::Status> {
        if !self.active(kind) {
            return self.limit(caller, kind, count).await;
        }
        let started = std::time::Instant::now();
        let result = self.limit(caller, kind, count).await;
        spire_common::telemetry::server::rate_limited(
            rpc,
            result.as_ref().err().map(tonic::Status::code),
            started,
        );
        result
    }

    /// Whether calls of `kind` go through a limiter now (upstream counts those only, not
    /// the ones whose limit the configuration turned off).
    pub fn active(&self, kind: LimitKind) -> bool {
        match kind {
            LimitKind::Attestation => self.attestation_on.load(Ordering::Relaxed),
            LimitKind::Signing | LimitKind::DownstreamCa => self.signing_on.load(Ordering::Relaxed),
            LimitKind::PublishJwtKey | LimitKind::PostStatus => true,
        }
    }

    /// Turns the attestation and signing limits on or off for calls from now on (a
    /// configuration reload changed the `ratelimit` block).
    pub fn set_enabled(&self, attestation: bool, signing: bool) {
        self.attestation_on.store(attestation, Ordering::Relaxed);
        self.signing_on.store(signing, Ordering::Relaxed);
    }

    /// Whether the attestation and signing limits are on.
    pub fn enabled(&self) -> (bool, bool) {
        (
            self.attestation_on.load(Ordering::Relaxed),
            self.signing_on.load(Ordering::Relaxed),
        )
    }

    /// How many IPs currently have a bucket, over all limits (for tests and debugging).
    pub fn tracked_ips(&self) -> usize {
        [&self.attestation, &self.signing]
            .into_iter()
            .chain([&self.publish_jwt_key, &self.post_status])
            .map(PerIpLimiter::tracked)
            .sum()
    }
}

/// A token bucket: `tokens` may go negative, which records callers already waiting.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug, Default)]
struct Generations {
    /// Buckets used since the last collection.
    current: HashMap<IpAddr, Bucket>,
    /// Buckets used in the generation before; dropped at the next collection.
    previous: HashMap<IpAddr, Bucket>,
    last_gc: Option<Instant>,
}

/// One limit (rate = burst = `limit` events per second) with one bucket per IP.
#[derive(Debug)]
struct PerIpLimiter {
    limit: u32,
    buckets: Mutex<Generations>,
}

impl PerIpLimiter {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            buckets: Mutex::new(Generations::default()),
        }
    }

    fn tracked(&self) -> usize {
        let generations = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        generations.current.len() + generations.previous.len()
    }

    /// Takes `count` tokens for `ip` and says how long the caller must wait for them.
    fn reserve(&self, ip: IpAddr, count: u32) -> Result<Duration, tonic::Status> {
        self.reserve_at(ip, count, Instant::now())
    }

    /// [`Self::reserve`] at a given time, so tests need no clock.
    fn reserve_at(&self, ip: IpAddr, count: u32, now: Instant) -> Result<Duration, tonic::Status> {
        if count > self.limit {
            return Err(tonic::Status::resource_exhausted(format!(
                "rate ({count}) exceeds burst size ({})",
                self.limit
            )));
        }
        let rate = f64::from(self.limit);
        let burst = f64::from(self.limit);
        let mut generations = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let last_gc = *generations.last_gc.get_or_insert(now);
        let existing = match generations.current.get(&ip) {
            Some(bucket) => Some(*bucket),
            None => generations.previous.remove(&ip),
        };
        if existing.is_none() && now.duration_since(last_gc) >= GC_INTERVAL {
            generations.previous = std::mem::take(&mut generations.current);
            generations.last_gc = Some(now);
        }
        let mut bucket = existing.unwrap_or(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst) - f64::from(count);
        bucket.updated = now;
        generations.current.insert(ip, bucket);
        if bucket.tokens >= 0.0 {
            Ok(Duration::ZERO)
        } else {
            Ok(Duration::from_secs_f64(-bucket.tokens / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn remote(ip: &str) -> Caller {
        Caller {
            addr: Some(SocketAddr::new(ip.parse().unwrap(), 4000)),
            ..Caller::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn about(actual: Duration, expected: Duration) -> bool {
        actual.abs_diff(expected) < ms(5)
    }

    #[tokio::test]
    async fn a_second_attestation_from_the_same_ip_waits_about_a_second() {
        let limiters = RateLimiters::default();
        let caller = remote("10.0.0.1");
        let start = Instant::now();
        limiters
            .limit(&caller, LimitKind::Attestation, 1)
            .await
            .unwrap();
        // Real time on a loaded machine: generous upper bounds, while a delay (1 s) or its
        // absence still shows.
        assert!(start.elapsed() < ms(800), "the first call is not delayed");
        limiters
            .limit(&caller, LimitKind::Attestation, 1)
            .await
            .unwrap();
        let elapsed = start.elapsed();
        assert!(
            elapsed >= ms(950) && elapsed < ms(5000),
            "the second attestation is delayed by about 1 s, was {elapsed:?}"
        );
    }

    #[test]
    fn each_further_attestation_waits_one_more_second() {
        let limiter = PerIpLimiter::new(ATTEST_LIMIT_PER_IP);
        let now = Instant::now();
        let waits: Vec<Duration> = (0..3)
            .map(|_| limiter.reserve_at(ip("10.0.0.1"), 1, now).unwrap())
            .collect();
        assert!(about(waits[0], Duration::ZERO));
        assert!(about(waits[1], ms(1000)));
        assert!(about(waits[2], ms(2000)));
        // Another IP has its own bucket.
        assert!(about(
            limiter.reserve_at(ip("10.0.0.2"), 1, now).unwrap(),
            Duration::ZERO
        ));
        // Tokens come back with time.
        let later = now + ms(10_000);
        assert!(about(
            limiter.reserve_at(ip("10.0.0.1"), 1, later).unwrap(),
            Duration::ZERO
        ));
    }

    #[test]
    fn signing_allows_a_burst_of_500_then_delays() {
        let limiter = PerIpLimiter::new(SIGN_LIMIT_PER_IP);
        let now = Instant::now();
        assert!(about(
            limiter.reserve_at(ip("10.0.0.1"), 500, now).unwrap(),
            Duration::ZERO
        ));
        assert!(about(
            limiter.reserve_at(ip("10.0.0.1"), 250, now).unwrap(),
            ms(500)
        ));
    }

    #[tokio::test]
    async fn more_than_the_burst_is_resource_exhausted() {
        let limiters = RateLimiters::default();
        let err = limiters
            .limit(&remote("10.0.0.1"), LimitKind::Signing, 501)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(err.message(), "rate (501) exceeds burst size (500)");
    }

    #[tokio::test]
    async fn local_callers_are_never_limited() {
        let limiters = RateLimiters::default();
        let local = Caller {
            local: true,
            ..Caller::default()
        };
        let start = Instant::now();
        for _ in 0..10 {
            limiters
                .limit(&local, LimitKind::Attestation, 1)
                .await
                .unwrap();
        }
        limiters
            .limit(&Caller::default(), LimitKind::Attestation, 1)
            .await
            .unwrap();
        limiters
            .limit(&Caller::default(), LimitKind::Attestation, 1)
            .await
            .unwrap();
        // Were these callers limited, the second attestation would wait 1 s.
        assert!(start.elapsed() < ms(800), "{:?}", start.elapsed());
        assert_eq!(limiters.tracked_ips(), 0);
    }

    #[tokio::test]
    async fn disabled_limits_do_not_delay() {
        let limiters = RateLimiters::new(false, false);
        let caller = remote("10.0.0.1");
        let start = Instant::now();
        for _ in 0..5 {
            limiters
                .limit(&caller, LimitKind::Attestation, 1)
                .await
                .unwrap();
        }
        limiters
            .limit(&caller, LimitKind::Signing, 10_000)
            .await
            .unwrap();
        limiters
            .limit(&caller, LimitKind::DownstreamCa, 10_000)
            .await
            .unwrap();
        // Were the limits on, the five attestations would wait 4 s.
        assert!(start.elapsed() < ms(800), "{:?}", start.elapsed());
    }

    #[test]
    fn idle_ips_are_garbage_collected() {
        let limiter = PerIpLimiter::new(ATTEST_LIMIT_PER_IP);
        let now = Instant::now();
        limiter.reserve_at(ip("10.0.0.1"), 1, now).unwrap();
        assert_eq!(limiter.tracked(), 1);
        limiter
            .reserve_at(ip("10.0.0.2"), 1, now + GC_INTERVAL)
            .unwrap();
        assert_eq!(limiter.tracked(), 2, "10.0.0.1 moves to the old generation");
        limiter
            .reserve_at(ip("10.0.0.3"), 1, now + GC_INTERVAL * 2)
            .unwrap();
        assert_eq!(limiter.tracked(), 2, "10.0.0.1 is gone, 10.0.0.2 is old");
    }
}
