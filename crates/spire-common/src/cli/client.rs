//! Dialling a process's unix socket for a client command, and grpc-go's rendering of a
//! status (`rpc error: code = NotFound desc = ...`), which upstream's CLIs print.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use super::CliError;

/// Dials `socket_path` once (so a missing socket is reported with its path) and returns a
/// channel that reconnects through the same socket. `program` and `what` name the process and
/// its socket in the error (`spire-agent`, `admin`).
pub async fn connect(
    socket_path: &Path,
    program: &'static str,
    what: &'static str,
) -> Result<Channel, CliError> {
    UnixStream::connect(socket_path)
        .await
        .map_err(|source| CliError::Connect {
            path: socket_path.to_path_buf(),
            program,
            what,
            source,
        })?;
    let path: PathBuf = socket_path.to_path_buf();
    // The URI is never used for routing: the connector always dials the socket.
    let endpoint = Endpoint::from_static("http://localhost");
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

/// Go's name for a status code number carried in a batch result.
pub fn code_name_i32(code: i32) -> &'static str {
    code_name(tonic::Code::from_i32(code))
}

/// `rpc error: code = <Code> desc = <message>`, as grpc-go prints a status.
pub fn format_status(status: &tonic::Status) -> String {
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
        assert_eq!(code_name_i32(1), "Canceled");
        assert_eq!(code_name_i32(6), "AlreadyExists");
    }

    #[tokio::test]
    async fn missing_socket_is_reported_with_its_path_and_owner() {
        let err = connect(
            Path::new("/nonexistent/dir/api.sock"),
            "spire-agent",
            "admin",
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.starts_with("connection error: dial unix /nonexistent/dir/api.sock: connect: "),
            "{err}"
        );
        assert!(
            err.ends_with("(is spire-agent running? point -socketPath at its admin socket)"),
            "{err}"
        );
    }
}
