//! `health_checks { }`: the liveness and readiness probes upstream serves on their own port
//! (`healthchecks_handler.go`). Ready means a poll succeeded within the threshold; live means
//! the same, or no poll has succeeded yet and the threshold has not passed since start.

use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;

use crate::config::HealthChecksConfig;
use crate::handler::text_error;
use crate::source::KeySource;

/// The threshold is at least this long.
const THRESHOLD_MIN: Duration = Duration::from_secs(3 * 60);
/// Polls missed before the threshold applies.
const THRESHOLD_MULTIPLIER: u32 = 5;

/// Upstream's `jwkThreshold`: the poll interval, raised to three minutes when five polls
/// would take less than that.
pub fn threshold(poll_interval: Duration) -> Duration {
    if poll_interval.saturating_mul(THRESHOLD_MULTIPLIER) < THRESHOLD_MIN {
        THRESHOLD_MIN
    } else {
        poll_interval
    }
}

/// Answers the probes.
#[derive(Debug, Clone)]
pub struct HealthHandler {
    config: HealthChecksConfig,
    source: KeySource,
    threshold: Duration,
    started: Instant,
}

impl HealthHandler {
    /// Probes on `source`, whose polls are `threshold` apart at most when healthy.
    pub fn new(config: HealthChecksConfig, source: KeySource, threshold: Duration) -> Self {
        Self {
            config,
            source,
            threshold,
            started: Instant::now(),
        }
    }

    /// The answer to `request`: 200 or 500 with an empty body, 405 for other methods, 404
    /// for other paths.
    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let ready = path == self.config.ready_path;
        let live = path == self.config.live_path;
        if !ready && !live {
            return text_error(StatusCode::NOT_FOUND, "404 page not found");
        }
        if request.method() != Method::GET {
            return text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let healthy = if ready {
            self.is_ready()
        } else {
            self.is_live()
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        if !healthy {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    }

    fn is_ready(&self) -> bool {
        self.source
            .last_successful_poll()
            .is_some_and(|at| at.elapsed() < self.threshold)
    }

    fn is_live(&self) -> bool {
        match self.source.last_successful_poll() {
            None => self.started.elapsed() < self.threshold,
            Some(at) => at.elapsed() < self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    fn config() -> HealthChecksConfig {
        HealthChecksConfig {
            bind_port: 8008,
            ready_path: "/ready".to_owned(),
            live_path: "/live".to_owned(),
        }
    }

    #[test]
    fn the_threshold_is_upstreams() {
        assert_eq!(threshold(Duration::from_secs(10)), THRESHOLD_MIN);
        assert_eq!(threshold(Duration::from_secs(35)), THRESHOLD_MIN);
        // Upstream compares five intervals with the minimum but then uses one interval.
        assert_eq!(threshold(Duration::from_secs(40)), Duration::from_secs(40));
    }

    #[test]
    fn ready_after_a_poll_live_from_the_start() {
        let source = KeySource::new();
        let health = HealthHandler::new(config(), source.clone(), THRESHOLD_MIN);
        assert_eq!(health.handle(&get("/ready")).status(), 500);
        assert_eq!(health.handle(&get("/live")).status(), 200);
        source.update(Vec::new());
        assert_eq!(health.handle(&get("/ready")).status(), 200);
        assert_eq!(health.handle(&get("/other")).status(), 404);
        let post = Request::builder()
            .method("POST")
            .uri("/ready")
            .body(())
            .unwrap();
        assert_eq!(health.handle(&post).status(), 405);
    }

    #[test]
    fn not_live_once_the_threshold_passed_without_a_poll() {
        let source = KeySource::new();
        let health = HealthHandler::new(config(), source, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(health.handle(&get("/live")).status(), 500);
    }
}
