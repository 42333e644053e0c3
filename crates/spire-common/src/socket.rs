//! Binding the unix sockets both processes serve gRPC on (the server's admin socket, the
//! agent's Workload API and admin sockets) with the permissions each needs: who may connect
//! is decided by the socket file's mode and, for a folder we create, the folder's.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The Workload API socket: anyone may connect, attestation decides what they get.
const WORKLOAD_SOCKET_MODE: u32 = 0o777;
/// The folder created for the Workload API socket: anyone may reach the socket.
const WORKLOAD_DIR_MODE: u32 = 0o755;
/// An admin socket (server or agent): only the owner and its group may connect.
const ADMIN_SOCKET_MODE: u32 = 0o770;
/// The folder created for an admin socket: others may not even see the socket.
const ADMIN_DIR_MODE: u32 = 0o750;

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

/// Binds the Workload API socket: folders it creates 0755 and the socket 0777, so every
/// local user can connect and workload attestation decides what each gets, as upstream.
pub fn bind_workload(path: &Path) -> Result<UnixListener, SocketError> {
    bind(path, WORKLOAD_DIR_MODE, WORKLOAD_SOCKET_MODE)
}

/// Binds an admin socket (the server's, or the agent's admin API): folders it creates 0750
/// and the socket 0770, so only the owner and its group can connect, as upstream.
pub fn bind_admin(path: &Path) -> Result<UnixListener, SocketError> {
    bind(path, ADMIN_DIR_MODE, ADMIN_SOCKET_MODE)
}

/// Creates the socket's missing folders with exactly `dir_mode` (existing folders are the
/// operator's and keep their mode), removes a stale socket, binds, and gives the socket
/// `socket_mode`. Modes are set with chmod, so the 0027 umask does not narrow them.
fn bind(path: &Path, dir_mode: u32, socket_mode: u32) -> Result<UnixListener, SocketError> {
    if let Some(parent) = path.parent() {
        crate::fs::create_dir(parent, dir_mode).map_err(|source| SocketError::CreateDir {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
        .map_err(bind_error)?;
    Ok(listener)
}
