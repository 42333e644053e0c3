//! The agent's unix-socket listeners (the Workload API and the admin API): binding a socket
//! with the permissions each needs, and tagging every accepted connection with its caller's
//! pid/uid/gid (SO_PEERCRED) and process start time, taken when the connection is accepted.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::plugins::workloadattestor::PeerProcess;

/// Why a socket could not be set up; the caller adds which socket and which setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The socket's folder could not be created.
    #[error("unable to create socket directory {path}: {source}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file left at the socket path could not be removed.
    #[error("unable to remove stale socket {path}: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Binding the socket or setting its permissions failed.
    #[error("unable to listen on socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
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

/// Creates the socket's folder (0755, as upstream) if needed, removes a stale socket, binds,
/// and sets the socket's `mode`: 0777 for the Workload API, 0770 for the admin API.
pub(crate) fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| SocketError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            });
        }
    }
    let bind_error = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(listener)
}

/// The accepted connections, each tagged with its caller; connections whose peer
/// credentials cannot be read are dropped (there would be nobody to attest).
pub(crate) fn incoming(
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
                tracing::warn!(error = %e, "Dropping connection: unable to read peer credentials");
                return None;
            }
        };
        let Some(pid) = cred.pid().filter(|pid| *pid > 0) else {
            tracing::warn!("Dropping connection: the kernel did not report the caller's pid");
            return None;
        };
        let process = PeerProcess {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let start_time = super::peer::process_start_time(pid).ok();
        Some(Ok(CallerStream {
            inner: stream,
            caller: Caller {
                process,
                start_time,
            },
        }))
    })
}
