//! The admin-socket connection every client command uses.

use std::path::Path;

pub(crate) use spire_common::cli::client::{code_name_i32, format_status};
use tonic::transport::Channel;

use super::CliError;

/// Dials the admin socket once (so a missing socket is reported with its path) and returns
/// a channel that reconnects through the same socket.
pub(crate) async fn connect(socket_path: &Path) -> Result<Channel, CliError> {
    spire_common::cli::client::connect(socket_path, "spire-server", "admin").await
}
