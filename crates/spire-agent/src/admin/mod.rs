//! The agent's admin API on `admin_socket_path`: `spire.agent.debug.v1.Debug` (what
//! `spire-agent debug getinfo` shows), `spire.api.agent.logger.v1.Logger` (`spire-agent logger
//! get|set|reset`) and `spire.api.agent.delegatedidentity.v1.DelegatedIdentity`, as upstream's
//! `pkg/agent/api` serves them.
//!
//! The socket is 0770, as upstream's: only the agent's user and group may connect. Who may use
//! the Delegated Identity API is still decided per call: the caller is attested with the
//! workload attestors (from the socket's peer credentials) and one of its entries must carry a
//! SPIFFE ID from `authorized_delegates`. Like upstream, the admin socket does not serve
//! `grpc.health.v1` (`spire-agent healthcheck` asks the Workload API socket) and needs no
//! `workload.spiffe.io` header.

mod debug;
mod delegated;
mod explain;
mod logger;
mod stream;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use spire_common::logging::LogLevelHandle;
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::spire::agent::debug::v1::debug_server::DebugServer;
use spire_proto::spire::api::agent::delegatedidentity::v1::delegated_identity_server::DelegatedIdentityServer;
use spire_proto::spire::api::agent::logger::v1::logger_server::LoggerServer;
use spire_proto::spire_rs::agent::explain::v1::explain_server::ExplainServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::client::AgentIdentity;
use crate::manager::Manager;
use crate::plugins::workloadattestor::WorkloadAttestor;
use crate::workload::SocketError;
use crate::workload::listener::incoming;

pub use debug::DebugService;
pub use delegated::DelegatedIdentityService;
pub use explain::ExplainService;
pub use logger::LoggerService;

/// Agent settings the admin API answers with.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// The agent's trust domain: the agent SVID is verified against its bundle for GetInfo.
    pub trust_domain: TrustDomain,
    /// `authorized_delegates`: SPIFFE IDs whose workloads may use the Delegated Identity API.
    pub authorized_delegates: Vec<SpiffeId>,
    /// The running logger, changed by SetLogLevel and ResetLogLevel; its configured level is
    /// the launch level.
    pub log_level: LogLevelHandle,
    /// When the agent started, for GetInfo's uptime.
    pub started_at: Instant,
    /// Where upstream's per-RPC metrics go.
    pub metrics: spire_common::telemetry::Metrics,
}

/// Why the admin API could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The socket could not be set up.
    #[error("admin API: {0}; check agent.admin_socket_path")]
    Socket(#[from] SocketError),
    /// The gRPC server stopped with an error.
    #[error("admin API server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves the admin API on `socket_path` until `cancel` fires: creates the folder (0755, as
/// upstream) if needed, replaces a stale socket, restricts the socket to 0770, and answers
/// Debug, Logger and DelegatedIdentity. `agent_svid` follows the agent's own SVID (the
/// rotation's `updates` channel); open streams end when `cancel` fires.
pub async fn serve(
    options: AdminOptions,
    manager: Arc<Manager>,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    agent_svid: watch::Receiver<AgentIdentity>,
    socket_path: PathBuf,
    cancel: CancellationToken,
) -> Result<(), AdminError> {
    serve_with_reloader(
        options,
        manager,
        attestors,
        agent_svid,
        socket_path,
        cancel,
        None,
    )
    .await
}

/// Like [`serve`], adding spire-rs's own admin services: `Explain` (`spire-agent api
/// explain`) and, with `reloader`, `Config` (`spire-agent config reload`).
pub async fn serve_with_reloader(
    options: AdminOptions,
    manager: Arc<Manager>,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    agent_svid: watch::Receiver<AgentIdentity>,
    socket_path: PathBuf,
    cancel: CancellationToken,
    reloader: Option<Arc<crate::reload::Reloader>>,
) -> Result<(), AdminError> {
    // Only the agent's user and group, as upstream's `createListener`.
    let listener = spire_common::socket::bind_admin(&socket_path)?;
    tracing::info!(path = %socket_path.display(), "Starting Admin APIs");
    let debug = DebugService::new(
        Arc::clone(&manager),
        agent_svid,
        options.trust_domain.clone(),
        options.started_at,
    );
    let logger = LoggerService::new(options.log_level.clone());
    let explain = ExplainService::new(Arc::clone(&manager), attestors.clone());
    let delegated = DelegatedIdentityService::new(
        manager,
        attestors,
        options.authorized_delegates,
        cancel.clone(),
    );
    let result = tonic::transport::Server::builder()
        .layer(
            spire_common::telemetry::rpc::RpcMetricsLayer::new(options.metrics.clone())
                .with_connections(),
        )
        .layer(spire_common::grpc_status::MessageSizeStatusLayer)
        .add_service(DebugServer::new(debug))
        .add_service(LoggerServer::new(logger))
        .add_service(DelegatedIdentityServer::new(delegated))
        .add_service(ExplainServer::new(explain))
        .add_optional_service(reloader.map(spire_common::reload::config_service))
        .serve_with_incoming_shutdown(incoming(listener), cancel.cancelled_owned())
        .await;
    tracing::info!("Admin APIs have stopped");
    if let Err(e) = std::fs::remove_file(&socket_path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %socket_path.display(), error = %e, "Could not remove admin socket");
    }
    result.map_err(AdminError::Serve)
}

/// The effective uid and gid of `pid` from `/proc/<pid>/status`, for attesting a pid that a
/// delegate names (there are no socket credentials for it).
fn process_ids(pid: i32) -> Option<(u32, u32)> {
    let status = crate::plugins::workloadattestor::read_proc_file(std::path::Path::new(&format!(
        "/proc/{pid}/status"
    )))
    .ok()?;
    let effective = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

/// The message gRPC callers see for a selector list upstream's `SelectorsFromProto` refuses.
const BAD_SELECTORS: &str = "could not parse provided selectors";

/// Parses request selectors as upstream does: type and value required, no `:` in the type.
fn selectors_from_proto(
    selectors: &[spire_proto::spire::api::types::Selector],
) -> Result<Vec<Selector>, Status> {
    selectors
        .iter()
        .map(|s| {
            if s.r#type.contains(':') {
                return Err(Status::invalid_argument(BAD_SELECTORS));
            }
            Selector::new(s.r#type.clone(), s.value.clone()).map_err(|e| {
                tracing::error!(error = %e, "Invalid argument; could not parse provided selectors");
                Status::invalid_argument(BAD_SELECTORS)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_ids() {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let (uid, _) = process_ids(pid).unwrap_or((u32::MAX, u32::MAX));
        let meta = std::fs::metadata(format!("/proc/{pid}")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        assert_eq!(Some(uid), meta.ok());
    }

    #[test]
    fn selectors_need_type_and_value_and_no_colon_in_the_type() {
        use spire_proto::spire::api::types::Selector as Proto;
        let sel = |t: &str, v: &str| Proto {
            r#type: t.to_owned(),
            value: v.to_owned(),
        };
        assert!(selectors_from_proto(&[sel("unix", "uid:1000")]).is_ok());
        for bad in [sel("", "x"), sel("unix", ""), sel("k8s:ns", "x")] {
            let err = selectors_from_proto(&[bad]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert_eq!(err.message(), BAD_SELECTORS);
        }
    }
}
