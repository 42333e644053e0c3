//! The SPIFFE Workload API on the agent's unix socket.
//!
//! Anyone on the machine may connect (the socket is 0777, as upstream): who the caller is comes
//! from the socket's peer credentials and the workload attestors, never from the request. Each
//! accepted connection is tagged with the caller's pid/uid/gid (SO_PEERCRED) and the start time
//! of that process, so a pid recycled while attesting is refused instead of being mistaken for
//! the caller.

mod handler;
mod peer;
mod stream;

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use spire_core::spiffe_id::TrustDomain;
use spire_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::manager::WorkloadIdentities;
use crate::plugins::workloadattestor::{PeerProcess, WorkloadAttestor};

pub use handler::WorkloadApiService;
pub use stream::UpdateStream;

/// The metadata key every Workload API request must carry with the value `true`; it keeps
/// browsers and other confused deputies (SSRF) from reaching the API.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Why the Workload API could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// The socket's folder could not be created.
    #[error("unable to create Workload API socket directory {path}: {source}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file left at the socket path could not be removed.
    #[error("unable to remove stale Workload API socket {path}: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Binding the socket or opening its permissions failed.
    #[error("unable to listen on Workload API socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
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
}

/// The caller of one connection, as the kernel reported it when the connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// pid/uid/gid from SO_PEERCRED.
    pub process: PeerProcess,
    /// The process start time (clock ticks since boot, `/proc/<pid>/stat` field 22) read when
    /// the connection was accepted; `None` when the process was already gone.
    pub start_time: Option<u64>,
}

/// A unix connection tagged with its [`Caller`], which tonic copies into every request's
/// extensions.
#[derive(Debug)]
pub struct CallerStream {
    inner: UnixStream,
    caller: Caller,
}

impl Connected for CallerStream {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.caller
    }
}

impl AsyncRead for CallerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CallerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
/// five `SpiffeWorkloadAPI` RPCs. Open streams end when `cancel` fires.
pub async fn serve_with_options(
    identities: Arc<dyn WorkloadIdentities>,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    options: WorkloadApiOptions,
    socket_path: PathBuf,
    cancel: CancellationToken,
) -> Result<(), WorkloadApiError> {
    let listener = bind(&socket_path)?;
    tracing::info!(path = %socket_path.display(), "Starting Workload API");
    let service = WorkloadApiService::new(identities, attestors, options, cancel.clone());
    // `spire-agent healthcheck` asks grpc.health.v1 on this socket, as upstream's does.
    let (_health_reporter, health_service) = tonic_health::server::health_reporter();
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(SpiffeWorkloadApiServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener), cancel.cancelled_owned())
        .await;
    if let Err(e) = std::fs::remove_file(&socket_path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %socket_path.display(), error = %e, "Could not remove Workload API socket");
    }
    result.map_err(WorkloadApiError::Serve)
}

/// Creates the socket's folder (0755) if needed, removes a stale socket, binds and makes the
/// socket world-writable (attestation, not file permissions, decides who gets what).
fn bind(path: &Path) -> Result<UnixListener, WorkloadApiError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| WorkloadApiError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(WorkloadApiError::RemoveStale {
                path: path.to_owned(),
                source,
            });
        }
    }
    let bind_error = |source| WorkloadApiError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(bind_error)?;
    Ok(listener)
}

/// The accepted connections, each tagged with its caller; connections whose peer
/// credentials cannot be read are dropped (there would be nobody to attest).
fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<CallerStream>> + Send + 'static {
    tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(|accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "Dropping Workload API connection: unable to read peer credentials");
                return None;
            }
        };
        let Some(pid) = cred.pid().filter(|pid| *pid > 0) else {
            tracing::warn!("Dropping Workload API connection: the kernel did not report the caller's pid");
            return None;
        };
        let process = PeerProcess {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let start_time = peer::process_start_time(pid).ok();
        Some(Ok(CallerStream {
            inner: stream,
            caller: Caller {
                process,
                start_time,
            },
        }))
    })
}
