//! The optional HTTP health listener (`health_checks { listener_enabled = true ... }`):
//! `GET <live_path>` and `GET <ready_path>` answer 200 when healthy and 500 otherwise, for
//! Kubernetes probes and load balancers that cannot speak gRPC.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::api::ApiContext;
use crate::api::health::{check_live, check_ready};

/// The `health_checks` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecksConfig {
    /// `listener_enabled`: serve the HTTP listener at all.
    pub listener_enabled: bool,
    /// `bind_address`, default `localhost`.
    pub bind_address: String,
    /// `bind_port`, default 80.
    pub bind_port: u16,
    /// `live_path`, default `/live`.
    pub live_path: String,
    /// `ready_path`, default `/ready`.
    pub ready_path: String,
}

impl Default for HealthChecksConfig {
    /// Upstream's defaults, with the listener off.
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

/// Why the health listener could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthHttpError {
    /// The address could not be bound.
    #[error("unable to listen for health checks on {address}: {source}")]
    Bind {
        /// `bind_address:bind_port`.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path is not usable as a route (it must start with `/`).
    #[error("health check path {0:?} must start with '/'")]
    BadPath(String),
    /// `live_path` and `ready_path` are the same.
    #[error("health check live_path and ready_path are both {0:?}; they must differ")]
    SamePath(String),
    /// Serving failed.
    #[error("health check listener failed: {0}")]
    Serve(std::io::Error),
}

/// Serves the health endpoints until `cancel` fires; returns at once when the listener is
/// not enabled.
pub async fn serve_health(
    config: HealthChecksConfig,
    ctx: Arc<ApiContext>,
    cancel: CancellationToken,
) -> Result<(), HealthHttpError> {
    if !config.listener_enabled {
        return Ok(());
    }
    let listener = bind(&config).await?;
    serve_on(listener, config, ctx, cancel).await
}

/// Binds `bind_address:bind_port` (a host name such as `localhost` is resolved).
pub async fn bind(config: &HealthChecksConfig) -> Result<tokio::net::TcpListener, HealthHttpError> {
    tokio::net::TcpListener::bind((config.bind_address.as_str(), config.bind_port))
        .await
        .map_err(|source| HealthHttpError::Bind {
            address: format!("{}:{}", config.bind_address, config.bind_port),
            source,
        })
}

/// Serves the health endpoints on an already bound listener until `cancel` fires.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: HealthChecksConfig,
    ctx: Arc<ApiContext>,
    cancel: CancellationToken,
) -> Result<(), HealthHttpError> {
    for path in [&config.live_path, &config.ready_path] {
        if !path.starts_with('/') {
            return Err(HealthHttpError::BadPath(path.clone()));
        }
    }
    if config.live_path == config.ready_path {
        return Err(HealthHttpError::SamePath(config.live_path));
    }
    let router = Router::new()
        .route(&config.live_path, get(live))
        .route(&config.ready_path, get(ready))
        .with_state(ctx);
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(HealthHttpError::Serve)
}

async fn live(State(ctx): State<Arc<ApiContext>>) -> (StatusCode, String) {
    match check_live(&ctx).await {
        Ok(()) => (StatusCode::OK, "live\n".to_owned()),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not live: {e}\n"),
        ),
    }
}

async fn ready(State(ctx): State<Arc<ApiContext>>) -> (StatusCode, String) {
    match check_ready(&ctx).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not ready: {e}\n"),
        ),
    }
}
