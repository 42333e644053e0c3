//! Connections to the agent's unix sockets (the Workload API, with the
//! `workload.spiffe.io: true` header on every call, and the admin API), and upstream's
//! rendering of gRPC errors (`rpc error: code = NotFound desc = ...`).

use std::path::{Path, PathBuf};

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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
    UnixStream::connect(socket_path)
        .await
        .map_err(|source| CliError::Connect {
            path: socket_path.to_path_buf(),
            what,
            source,
        })?;
    let path: PathBuf = socket_path.to_path_buf();
    // The URI is never used for routing: the connector always dials the socket.
    let endpoint = Endpoint::from_static("http://spire-agent.local");
    let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            let stream = UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    }));
    Ok(channel)
}

/// Go's name for a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// `rpc error: code = <Code> desc = <message>`, as grpc-go prints a status.
pub(crate) fn format_status(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {} desc = {}",
        code_name(status.code()),
        status.message()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_grpc_go() {
        assert_eq!(
            format_status(&tonic::Status::not_found("agent not found")),
            "rpc error: code = NotFound desc = agent not found"
        );
    }

    #[tokio::test]
    async fn missing_socket_is_reported_with_its_path() {
        let err = connect(Path::new("/nonexistent/dir/api.sock"), "Workload API")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("connection error: dial unix /nonexistent/dir/api.sock: connect: "),
            "{text}"
        );
        assert!(text.contains("-socketPath"), "{text}");
    }
}
