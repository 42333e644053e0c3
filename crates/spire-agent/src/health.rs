//! The agent's subsystem of the `health_checks` listener (`spire_common::health`), as
//! upstream's `Agent.CheckHealth`: the agent is ready when its Workload API answers a
//! `FetchX509Bundles` call on its own socket and its agent SVID has not expired; it is live
//! unless the Workload API, once started, stops answering. Details use upstream's
//! `make_new_x509_err` key: `{"agent":{}}` when healthy.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use spire_common::health::{HealthCheck, HealthState};
use spire_proto::workload as wl;
use tokio::sync::watch;

use crate::client::AgentIdentity;

/// Upstream's `make_new_x509_err` text when the Workload API does not answer.
const WORKLOAD_API_UNAVAILABLE: &str = "workload api is unavailable";

/// How long the Workload API has to answer one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the running agent.
pub struct AgentHealth {
    socket_path: PathBuf,
    identity: watch::Receiver<AgentIdentity>,
}

impl AgentHealth {
    /// Checks the Workload API at `socket_path` and the SVID `identity` holds.
    pub fn new(socket_path: PathBuf, identity: watch::Receiver<AgentIdentity>) -> Self {
        Self {
            socket_path,
            identity,
        }
    }

    /// Why the Workload API does not serve, when it does not. Only an unreachable API
    /// counts, as upstream's check: any answer, even "no identity issued", means it serves.
    async fn workload_api_error(&self) -> Option<String> {
        let call = async {
            let mut client = crate::cli::client::workload_client(&self.socket_path)
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = match client.fetch_x509_bundles(wl::X509BundlesRequest {}).await {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    return Err(status.message().to_owned());
                }
                Err(_) => return Ok(()),
            };
            match stream.message().await {
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    Err(status.message().to_owned())
                }
                _ => Ok(()),
            }
        };
        // The details carry upstream's exact words (probes and dashboards match them); the
        // reason goes to the log.
        let reason = match tokio::time::timeout(CHECK_TIMEOUT, call).await {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        };
        tracing::warn!(reason = %reason, "Workload API health check failed");
        Some(WORKLOAD_API_UNAVAILABLE.to_owned())
    }

    /// Why the agent SVID is unusable, when it is.
    fn svid_error(&self) -> Option<String> {
        let identity = self.identity.borrow();
        let Some(leaf) = identity.chain.first() else {
            return Some("the agent has no SVID".to_owned());
        };
        match spire_core::x509::certificate_not_after(leaf) {
            Ok(not_after) if not_after > time::OffsetDateTime::now_utc() => None,
            Ok(not_after) => Some(format!("the agent SVID expired at {not_after}")),
            Err(e) => Some(format!("the agent SVID cannot be read: {e}")),
        }
    }
}

#[async_trait]
impl HealthCheck for AgentHealth {
    fn name(&self) -> &str {
        "agent"
    }

    async fn check(&self) -> HealthState {
        let started = self.socket_path.exists();
        let api_error = if started {
            self.workload_api_error().await
        } else {
            Some("workload api is unavailable: not listening yet".to_owned())
        };
        let error = api_error.clone().or_else(|| self.svid_error());
        let details = |error: Option<&String>| match error {
            Some(e) => serde_json::json!({ "make_new_x509_err": e }),
            None => serde_json::json!({}),
        };
        HealthState {
            // While starting, the agent counts as live (a probe must not restart it then).
            live: !started || api_error.is_none(),
            ready: error.is_none(),
            live_details: details(if started { api_error.as_ref() } else { None }),
            ready_details: details(error.as_ref()),
        }
    }
}
