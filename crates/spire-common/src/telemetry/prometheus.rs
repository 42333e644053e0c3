//! The `Prometheus { host port }` listener: every path answers with the text exposition of
//! what was recorded, then the `process_*` series, as upstream's handler (mounted at the
//! root, serving the default registry with its process collector) does.

use axum::Router;
use axum::http::header;
use tokio_util::sync::CancellationToken;

use super::{Metrics, TelemetryConfig, TelemetryError};

/// Serves the Prometheus text exposition on every path of `listener` until `cancel` fires.
pub async fn serve_prometheus(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new().fallback(move || {
        let metrics = metrics.clone();
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics
                    .prometheus_text()
                    .map(|text| text + &super::process::exposition())
                    .unwrap_or_default(),
            )
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

/// Binds the Prometheus listener of `config`, if any (`localhost` and other names resolve).
pub async fn bind_prometheus(
    config: &TelemetryConfig,
) -> Result<Option<tokio::net::TcpListener>, TelemetryError> {
    let Some(p) = &config.prometheus else {
        return Ok(None);
    };
    if p.host != "localhost" {
        tracing::warn!(
            host = %p.host,
            "Agent or server is configured to accept remote network connections for Prometheus \
             scraping; ensure that the port is protected"
        );
    }
    let listener = tokio::net::TcpListener::bind((p.host.as_str(), p.port))
        .await
        .map_err(|source| TelemetryError::Bind {
            address: format!("{}:{}", p.host, p.port),
            source,
        })?;
    tracing::info!(host = %p.host, port = p.port, "Starting prometheus exporter");
    Ok(Some(listener))
}
