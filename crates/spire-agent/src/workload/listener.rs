//! The agent's unix-socket listeners (the Workload API and the admin API): binding a socket
//! with the permissions each needs, and tagging every accepted connection with its caller's
//! pid/uid/gid (SO_PEERCRED) and a handle on that process (see [`Liveness`]), taken when the
//! connection is accepted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use super::peer::Liveness;
use crate::plugins::workloadattestor::PeerProcess;

pub use spire_common::socket::SocketError;

/// The caller of one connection, as the kernel reported it when the connection was accepted.
#[derive(Debug, Clone)]
pub struct Caller {
    /// pid/uid/gid from SO_PEERCRED.
    pub process: PeerProcess,
    /// Tells after attestation whether the pid still names this process.
    pub liveness: Liveness,
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
        self.caller.clone()
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
        Some(Ok(CallerStream {
            inner: stream,
            caller: Caller {
                process,
                liveness: Liveness::track(pid),
            },
        }))
    })
}
