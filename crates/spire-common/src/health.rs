//! The `health_checks { }` HTTP listener, as upstream's `pkg/common/health`: the subsystems
//! are checked every second until all are live and ready, then every minute (and every
//! second again while one fails, so a recovery shows quickly), and `live_path` and
//! `ready_path` answer from the last checks: 200 when every subsystem passed, 500 otherwise,
//! with a JSON body keyed by subsystem name, sorted (`{"agent":{}}`, or `{"agent":null}`
//! before the first check). Kubernetes probes call these paths.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a subsystem is checked until it is live and ready.
const STARTUP_INTERVAL: Duration = Duration::from_secs(1);
/// How often it is checked once it has been live and ready.
const STEADY_INTERVAL: Duration = Duration::from_secs(60);

/// The `health_checks` block, with upstream's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `listener_enabled`: serve the HTTP listener at all (default false).
    pub listener_enabled: bool,
    /// `bind_address` (default `localhost`).
    pub bind_address: String,
    /// `bind_port` (default 80).
    pub bind_port: u16,
    /// `live_path` (default `/live`).
    pub live_path: String,
    /// `ready_path` (default `/ready`).
    pub ready_path: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listener_enabled: false,
            bind_address: "localhost".to_owned(),
            bind_port: 80,
            live_path: "/live".to_owned(),
            ready_path: "/ready".to_owned(),
        }
    }
}

/// One check's outcome for a subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthState {
    /// Whether the subsystem is alive (a probe failing this restarts the process).
    pub live: bool,
    /// Whether the subsystem serves (a probe failing this takes it out of service).
    pub ready: bool,
    /// The body's value for `live_path` (an object; upstream's `LiveDetails`).
    pub live_details: serde_json::Value,
    /// The body's value for `ready_path` (upstream's `ReadyDetails`).
    pub ready_details: serde_json::Value,
}

/// A subsystem the listener reports on.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// The key of the JSON bodies (`agent`, `server`).
    fn name(&self) -> &str;

    /// Checks the subsystem now.
    async fn check(&self) -> HealthState;
}

/// Why the listener could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The address could not be bound.
    #[error("unable to listen for health checks on {address}: {source}")]
    Bind {
        /// `bind_address:bind_port`.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path is not usable as a route.
    #[error("health_checks: {key} {path:?} must start with '/'")]
    BadPath {
        /// `live_path` or `ready_path`.
        key: &'static str,
        /// The value given.
        path: String,
    },
    /// `live_path` and `ready_path` are the same.
    #[error("health_checks: live_path and ready_path are both {0:?}; they must differ")]
    SamePath(String),
    /// Serving failed.
    #[error("health check listener failed: {0}")]
    Serve(std::io::Error),
}

/// The last outcome of every subsystem, by name (`None` until its first check has run).
pub type Subsystems = BTreeMap<String, Option<HealthState>>;

/// Checks every one of `checks` until `cancel` fires, publishing the outcomes on the returned
/// receiver after each round.
pub fn spawn_checks(
    checks: Vec<Arc<dyn HealthCheck>>,
    cancel: CancellationToken,
) -> (watch::Receiver<Subsystems>, tokio::task::JoinHandle<()>) {
    let initial = checks.iter().map(|c| (c.name().to_owned(), None)).collect();
    let (tx, rx) = watch::channel(initial);
    let task = tokio::spawn(async move {
        let mut was_healthy: BTreeMap<String, bool> = BTreeMap::new();
        loop {
            let mut round = Subsystems::new();
            for check in &checks {
                let state = check.check().await;
                let healthy = state.live && state.ready;
                let before = was_healthy.insert(check.name().to_owned(), healthy);
                if healthy && before == Some(false) {
                    tracing::info!(check = check.name(), "Health check recovered");
                } else if !healthy && before != Some(false) {
                    tracing::warn!(
                        check = check.name(),
                        live = state.live,
                        ready = state.ready,
                        details = %state.ready_details,
                        "Health check failed"
                    );
                }
                round.insert(check.name().to_owned(), Some(state));
            }
            let healthy = round
                .values()
                .all(|s| s.as_ref().is_some_and(|s| s.live && s.ready));
            tx.send_replace(round);
            let wait = if healthy {
                STEADY_INTERVAL
            } else {
                STARTUP_INTERVAL
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
    (rx, task)
}

/// Binds `bind_address:bind_port` (a name such as `localhost` is resolved), checking the
/// paths first so a bad config fails before anything listens.
pub async fn bind(config: &HealthConfig) -> Result<tokio::net::TcpListener, HealthError> {
    for (key, path) in [
        ("live_path", &config.live_path),
        ("ready_path", &config.ready_path),
    ] {
        if !path.starts_with('/') {
            return Err(HealthError::BadPath {
                key,
                path: path.clone(),
            });
        }
    }
    if config.live_path == config.ready_path {
        return Err(HealthError::SamePath(config.live_path.clone()));
    }
    let host = config
        .bind_address
        .trim_start_matches('[')
        .trim_end_matches(']');
    tokio::net::TcpListener::bind((host, config.bind_port))
        .await
        .map_err(|source| HealthError::Bind {
            address: format!("{}:{}", config.bind_address, config.bind_port),
            source,
        })
}

#[derive(Clone)]
struct Shared {
    state: watch::Receiver<Subsystems>,
}

/// Serves `live_path` and `ready_path` on `listener` from `state` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &HealthConfig,
    state: watch::Receiver<Subsystems>,
    cancel: CancellationToken,
) -> Result<(), HealthError> {
    let shared = Shared { state };
    // Paths are compared whole, as Go's ServeMux does: a configured path is never read as a
    // route pattern (`/{x}` or `/*x` would be).
    let paths = (config.live_path.clone(), config.ready_path.clone());
    let router = Router::new()
        .fallback(move |State(shared): State<Shared>, uri: axum::http::Uri| {
            let (live_path, ready_path) = paths.clone();
            async move {
                if uri.path() == live_path {
                    respond(&shared, |s| (s.live, s.live_details.clone()))
                } else if uri.path() == ready_path {
                    respond(&shared, |s| (s.ready, s.ready_details.clone()))
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }
        })
        .with_state(shared);
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(HealthError::Serve)
}

/// The response for one path: 200 when every subsystem passed, else 500, and
/// `{"<name>": details, ...}` with a trailing newline, as Go's `json.Encoder` writes it.
fn respond(
    shared: &Shared,
    pick: impl Fn(&HealthState) -> (bool, serde_json::Value),
) -> axum::response::Response {
    let mut ok = true;
    let mut body = serde_json::Map::new();
    for (name, state) in shared.state.borrow().iter() {
        let (passed, details) = state
            .as_ref()
            .map_or((false, serde_json::Value::Null), &pick);
        ok &= passed;
        body.insert(name.clone(), details);
    }
    let mut text = serde_json::Value::Object(body).to_string();
    text.push('\n');
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flaky(AtomicBool);

    #[async_trait]
    impl HealthCheck for Flaky {
        fn name(&self) -> &str {
            "agent"
        }
        async fn check(&self) -> HealthState {
            let ok = self.0.load(Ordering::SeqCst);
            let details = if ok {
                serde_json::json!({})
            } else {
                serde_json::json!({"make_new_x509_err": "workload api is unavailable"})
            };
            HealthState {
                live: true,
                ready: ok,
                live_details: serde_json::json!({}),
                ready_details: details,
            }
        }
    }

    async fn get(port: u16, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        if code != 404 {
            assert!(
                out.to_lowercase()
                    .contains("content-type: application/json"),
                "{out}"
            );
        }
        (code, body)
    }

    #[tokio::test]
    async fn paths_answer_from_the_last_check_with_upstreams_bodies() {
        let config = HealthConfig {
            listener_enabled: true,
            bind_address: "127.0.0.1".into(),
            bind_port: 0,
            ..HealthConfig::default()
        };
        let listener = bind(&config).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = Arc::new(Flaky(AtomicBool::new(false)));
        let cancel = CancellationToken::new();
        let (tx, rx) = watch::channel(Subsystems::from([("agent".to_owned(), None)]));
        let server = tokio::spawn({
            let config = config.clone();
            let cancel = cancel.clone();
            async move { serve(listener, &config, rx, cancel).await }
        });
        assert_eq!(
            get(port, "/ready").await,
            (500, "{\"agent\":null}\n".to_owned())
        );

        tx.send_replace(Subsystems::from([(
            "agent".to_owned(),
            Some(check.check().await),
        )]));
        assert_eq!(
            get(port, "/live").await,
            (200, "{\"agent\":{}}\n".to_owned())
        );
        assert_eq!(
            get(port, "/ready").await,
            (
                500,
                "{\"agent\":{\"make_new_x509_err\":\"workload api is unavailable\"}}\n".to_owned()
            )
        );
        check.0.store(true, Ordering::SeqCst);
        tx.send_replace(Subsystems::from([(
            "agent".to_owned(),
            Some(check.check().await),
        )]));
        assert_eq!(
            get(port, "/ready").await,
            (200, "{\"agent\":{}}\n".to_owned())
        );
        assert_eq!(get(port, "/other").await.0, 404);
        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn every_subsystem_must_pass_and_the_body_lists_them_sorted() {
        let config = HealthConfig {
            listener_enabled: true,
            bind_address: "127.0.0.1".into(),
            bind_port: 0,
            ..HealthConfig::default()
        };
        let listener = bind(&config).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let healthy = HealthState {
            live: true,
            ready: true,
            live_details: serde_json::json!({}),
            ready_details: serde_json::json!({}),
        };
        let failing = HealthState {
            live: false,
            ready: false,
            live_details: serde_json::json!({"list_bundle_err": "database is locked"}),
            ready_details: serde_json::json!({"list_bundle_err": "database is locked"}),
        };
        let (tx, rx) = watch::channel(Subsystems::from([
            ("server".to_owned(), Some(healthy.clone())),
            ("catalog.datastore".to_owned(), Some(failing)),
        ]));
        let cancel = CancellationToken::new();
        let server = tokio::spawn({
            let config = config.clone();
            let cancel = cancel.clone();
            async move { serve(listener, &config, rx, cancel).await }
        });
        assert_eq!(
            get(port, "/ready").await,
            (
                500,
                "{\"catalog.datastore\":{\"list_bundle_err\":\"database is locked\"},\"server\":{}}\n"
                    .to_owned()
            )
        );
        tx.send_modify(|s| {
            s.insert("catalog.datastore".to_owned(), Some(healthy));
        });
        assert_eq!(
            get(port, "/live").await,
            (200, "{\"catalog.datastore\":{},\"server\":{}}\n".to_owned())
        );
        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    /// Configured paths are matched literally, never as route patterns.
    #[tokio::test]
    async fn paths_are_literal() {
        let config = HealthConfig {
            listener_enabled: true,
            bind_address: "127.0.0.1".into(),
            bind_port: 0,
            live_path: "/{live}".into(),
            ready_path: "/*ready".into(),
        };
        let listener = bind(&config).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        let (_tx, rx) = watch::channel(Subsystems::from([(
            "agent".to_owned(),
            Some(HealthState {
                live: true,
                ready: true,
                live_details: serde_json::json!({}),
                ready_details: serde_json::json!({}),
            }),
        )]));
        let server = tokio::spawn({
            let cancel = cancel.clone();
            async move { serve(listener, &config, rx, cancel).await }
        });
        assert_eq!(get(port, "/{live}").await.0, 200);
        assert_eq!(get(port, "/*ready").await.0, 200);
        assert_eq!(get(port, "/x").await.0, 404);
        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_check_loop_publishes_each_outcome() {
        let check: Arc<dyn HealthCheck> = Arc::new(Flaky(AtomicBool::new(true)));
        let cancel = CancellationToken::new();
        let (mut rx, task) = spawn_checks(vec![check], cancel.clone());
        rx.wait_for(|s| s["agent"].is_some()).await.unwrap();
        assert!(rx.borrow()["agent"].as_ref().unwrap().ready);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bad_paths_are_refused_before_binding() {
        let config = HealthConfig {
            live_path: "live".into(),
            ..HealthConfig::default()
        };
        assert!(matches!(
            bind(&config).await,
            Err(HealthError::BadPath { .. })
        ));
        let config = HealthConfig {
            ready_path: "/live".into(),
            ..HealthConfig::default()
        };
        assert!(matches!(bind(&config).await, Err(HealthError::SamePath(_))));
    }
}
