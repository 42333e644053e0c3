//! WorkloadAttestor plugins turn the calling process (its pid) into selectors.

pub mod containerinfo;
pub mod docker;
pub mod external;
pub mod k8s;
pub mod unix;

use async_trait::async_trait;
use spire_core::selector::Selector;

/// Why a workload could not be attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The process is gone or was replaced while attesting (gRPC PermissionDenied/Unavailable).
    #[error("{0}")]
    ProcessGone(String),
    /// Anything else (gRPC Internal).
    #[error("{0}")]
    Internal(String),
}

/// The caller as the Workload API socket reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProcess {
    /// Process ID from SO_PEERCRED.
    pub pid: i32,
    /// Effective user ID from SO_PEERCRED.
    pub uid: u32,
    /// Effective group ID from SO_PEERCRED.
    pub gid: u32,
}

/// Produces selectors for a process.
#[async_trait]
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// The plugin name, which is also the selector type (`unix`).
    fn name(&self) -> &'static str;
    /// Selectors of the calling process.
    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError>;
}
