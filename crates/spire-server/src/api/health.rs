//! `grpc.health.v1` (served by tonic-health; the policy keeps it to the admin socket) and
//! the readiness checks the HTTP health listener shares with it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use super::ApiContext;

/// How often the gRPC health status is re-evaluated.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The `grpc.health.v1.Health` service type the router mounts.
pub type GrpcHealthServer = HealthServer<HealthService>;

/// Why the server is not healthy, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unhealthy {
    /// The datastore did not answer a trivial query.
    #[error("datastore is not answering: {0}")]
    Datastore(String),
    /// The CA manager has not produced the server's TLS identity yet.
    #[error("CA has no server identity yet")]
    NoIdentity,
}

/// Live: the datastore answers (the process can do useful work).
pub async fn check_live(ctx: &ApiContext) -> Result<(), Unhealthy> {
    ctx.datastore
        .count_bundles()
        .await
        .map(|_| ())
        .map_err(|e| Unhealthy::Datastore(e.to_string()))
}

/// Ready: live, and the CA has an identity to serve TLS with.
pub async fn check_ready(ctx: &ApiContext) -> Result<(), Unhealthy> {
    check_live(ctx).await?;
    if ctx.ca.server_identity().borrow().is_none() {
        return Err(Unhealthy::NoIdentity);
    }
    Ok(())
}

/// A health service and the reporter that updates it.
pub fn grpc_health() -> (HealthReporter, GrpcHealthServer) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    (reporter, service)
}

/// Sets the overall (`""`) status from [`check_ready`] now and every [`HEALTH_INTERVAL`]
/// until `cancel` fires.
pub async fn report_until_cancelled(
    reporter: HealthReporter,
    ctx: Arc<ApiContext>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {
                let status = match check_ready(&ctx).await {
                    Ok(()) => ServingStatus::Serving,
                    Err(e) => {
                        tracing::debug!(reason = %e, "server is not ready");
                        ServingStatus::NotServing
                    }
                };
                reporter.set_service_status("", status).await;
            }
        }
    }
}
