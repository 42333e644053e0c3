//! Connections to the agent's unix sockets: the Workload API, with the
//! `workload.spiffe.io: true` header on every call, and the admin API.

use std::path::Path;

use std::future::Future;
use std::time::Duration;

pub(crate) use spire_common::cli::client::format_status;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::CliError;

/// Adds the security header the Workload API requires on every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkloadHeader;

impl tonic::service::Interceptor for WorkloadHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("workload.spiffe.io", MetadataValue::from_static("true"));
        Ok(request)
    }
}

/// A Workload API client that sends the security header.
pub(crate) type WorkloadClient =
    SpiffeWorkloadApiClient<InterceptedService<Channel, WorkloadHeader>>;

/// Connects to the Workload API socket.
pub(crate) async fn workload_client(socket_path: &Path) -> Result<WorkloadClient, CliError> {
    let channel = connect(socket_path, "Workload API").await?;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel,
        WorkloadHeader,
    ))
}

/// Runs `call` under `-timeout` (none when zero); running out reads like grpc-go's
/// deadline error.
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    if timeout.is_zero() {
        return call.await;
    }
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "context deadline exceeded",
            ))
        })
}

/// Dials `socket_path` once (so a missing socket is reported with its path) and returns a
/// channel that reconnects through the same socket. `what` names the socket in errors.
pub(crate) async fn connect(socket_path: &Path, what: &'static str) -> Result<Channel, CliError> {
    spire_common::cli::client::connect(socket_path, "spire-agent", what).await
}
