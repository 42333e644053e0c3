//! The admin unix socket: created with upstream's permissions (folder 0750, socket 0770, so
//! only the server's user and group can reach the admin APIs) and served as
//! [`Peer::Local`](crate::api::Peer::Local) connections.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};

use super::PeerIo;
use crate::api::Peer;

/// Why the admin socket could not be set up.
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
    /// Binding or restricting the socket failed.
    #[error("unable to listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Creates the socket's folder (0750) if needed, removes a stale socket, binds, and
/// restricts the socket to 0770 as upstream does.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770)).map_err(bind_error)?;
    Ok(listener)
}

/// The accepted connections of `listener`, each tagged as a local caller.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<PeerIo<UnixStream>>> + Send + 'static {
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|stream| stream.map(|stream| PeerIo::new(stream, Peer::Local)))
}
