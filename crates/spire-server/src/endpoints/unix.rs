//! The admin unix socket: created with upstream's permissions (folder 0750, socket 0770, so
//! only the server's user and group can reach the admin APIs) and served as
//! [`Peer::Local`](crate::api::Peer::Local) connections.

use std::io;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};

use super::PeerIo;
use crate::api::{LocalProcess, Peer};

pub use spire_common::socket::SocketError;

/// The accepted connections of `listener`, each tagged as a local caller.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<PeerIo<UnixStream>>> + Send + 'static {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|stream| {
        stream.map(|stream| {
            let process = local_process(&stream);
            PeerIo::new(stream, Peer::Local { process })
        })
    })
}

/// The connecting process's credentials (`SO_PEERCRED`), for the audit log.
fn local_process(stream: &UnixStream) -> Option<LocalProcess> {
    let cred = stream.peer_cred().ok()?;
    Some(LocalProcess {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}
