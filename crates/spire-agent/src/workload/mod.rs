//! The SPIFFE Workload API on the agent's unix socket.
//!
//! Anyone on the machine may connect (the socket is 0777, as upstream): who the caller is comes
//! from the socket's peer credentials and the workload attestors, never from the request. Each
//! accepted connection is tagged with the caller's pid/uid/gid (SO_PEERCRED) and the start time
//! of that process, so a pid recycled while attesting is refused instead of being mistaken for
//! the caller.

mod handler;
pub(crate) mod listener;
pub(crate) mod peer;
pub mod ratelimit;
mod stream;

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use spire_core::spiffe_id::TrustDomain;
use spire_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio_util::sync::CancellationToken;

use crate::config::SdsSettings;
use crate::manager::WorkloadIdentities;
use crate::plugins::workloadattestor::WorkloadAttestor;
use crate::sds::{SdsService, SecretDiscoveryServiceServer as SdsServiceServer};

pub use handler::WorkloadApiService;
pub(crate) use handler::{attest_caller, attest_process};
use listener::incoming;
pub use listener::{Caller, CallerStream, SocketError};
pub use stream::UpdateStream;

/// The metadata key every Workload API request must carry with the value `true`; it keeps
/// browsers and other confused deputies (SSRF) from reaching the API.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Why the Workload API could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// The socket could not be set up.
    #[error("Workload API: {0}; check agent.socket_path")]
    Socket(#[from] SocketError),
    /// The gRPC server stopped with an error.
    #[error("Workload API server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Agent settings that change how the Workload API answers (upstream's
/// `allow_unauthenticated_verifiers`, `allowed_foreign_jwt_claims` and the trust domain).
#[derive(Debug, Clone, Default)]
pub struct WorkloadApiOptions {
    /// The agent's trust domain: JWT-SVIDs from other trust domains only have `sub`, `aud`,
    /// `exp` and the `allowed_foreign_jwt_claims` returned by ValidateJWTSVID. `None` returns
    /// every claim.
    pub trust_domain: Option<TrustDomain>,
    /// Extra claims of foreign JWT-SVIDs that ValidateJWTSVID returns.
    pub allowed_foreign_jwt_claims: BTreeSet<String>,
    /// Lets callers without any identity fetch bundles (FetchX509Bundles, FetchJWTBundles).
    pub allow_unauthenticated_verifiers: bool,
    /// Where upstream's per-RPC metrics go.
    pub metrics: spire_common::telemetry::Metrics,
    /// The `sds { }` names Envoy SDS answers with.
    pub sds: SdsSettings,
    /// `disable_sds_api`: no Envoy SDS on the socket.
    pub disable_sds_api: bool,
    /// `disable_workload_api`: no `SpiffeWorkloadAPI` on the socket (SDS and health only).
    pub disable_workload_api: bool,
    /// `log_selectors`: selector prefixes the "No identity issued" log may show.
    pub log_selectors: Vec<String>,
    /// `experimental.ratelimit`: per selector set limits on Workload API and SDS calls
    /// (the default limits nothing).
    pub rate_limiter: Arc<ratelimit::WorkloadRateLimiter>,
}

/// Serves the Workload API on `socket_path` with default [`WorkloadApiOptions`] until
/// `cancel` fires.
pub async fn serve(
    identities: Arc<dyn WorkloadIdentities>,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    socket_path: PathBuf,
    cancel: CancellationToken,
) -> Result<(), WorkloadApiError> {
    serve_with_options(
        identities,
        attestors,
        WorkloadApiOptions::default(),
        socket_path,
        cancel,
    )
    .await
}

/// Serves the Workload API on `socket_path` until `cancel` fires: creates the folder (0755)
/// if needed, replaces a stale socket, opens the socket to everyone (0777) and answers the
/// five `SpiffeWorkloadAPI` RPCs and Envoy SDS v3 (each unless disabled in `options`). Open
/// streams end when `cancel` fires.
pub async fn serve_with_options(
    identities: Arc<dyn WorkloadIdentities>,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    options: WorkloadApiOptions,
    socket_path: PathBuf,
    cancel: CancellationToken,
) -> Result<(), WorkloadApiError> {
    // Anyone may connect: attestation, not file permissions, decides who gets what.
    let listener = spire_common::socket::bind_workload(&socket_path)?;
    let apis = match (options.disable_workload_api, options.disable_sds_api) {
        (false, false) => "Workload and SDS APIs",
        (false, true) => "Workload API",
        _ => "SDS API",
    };
    tracing::info!(path = %socket_path.display(), apis, "Starting Workload and SDS APIs");
    let rpc_metrics = spire_common::telemetry::rpc::RpcMetricsLayer::new(options.metrics.clone())
        .with_connections();
    let attestors: Arc<[Arc<dyn WorkloadAttestor>]> = attestors.into();
    let sds = (!options.disable_sds_api).then(|| {
        SdsServiceServer::new(SdsService::new(
            Arc::clone(&identities),
            Arc::clone(&attestors),
            options.sds.clone(),
            Arc::clone(&options.rate_limiter),
            cancel.clone(),
        ))
    });
    let workload = (!options.disable_workload_api).then(|| {
        SpiffeWorkloadApiServer::new(WorkloadApiService::new(
            identities,
            attestors.to_vec(),
            options,
            cancel.clone(),
        ))
    });
    // `spire-agent healthcheck` asks grpc.health.v1 on this socket, as upstream's does.
    let (_health_reporter, health_service) = tonic_health::server::health_reporter();
    let result = tonic::transport::Server::builder()
        .layer(rpc_metrics)
        .layer(spire_common::grpc_status::MessageSizeStatusLayer)
        .add_service(health_service)
        .add_optional_service(workload)
        .add_optional_service(sds)
        .serve_with_incoming_shutdown(incoming(listener), cancel.cancelled_owned())
        .await;
    if let Err(e) = std::fs::remove_file(&socket_path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %socket_path.display(), error = %e, "Could not remove Workload API socket");
    }
    result.map_err(WorkloadApiError::Serve)
}
