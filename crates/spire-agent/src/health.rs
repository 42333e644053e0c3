//! The agent's subsystem of the `health_checks` listener (`spire_common::health`), as
//! upstream's `Agent.CheckHealth`: the agent is ready when its Workload API answers a
//! `FetchX509Bundles` call on its own socket and its agent SVID has not expired; it is live
//! unless the Workload API, once started, stops answering. Details use upstream's
//! `make_new_x509_err` key: `{"agent":{}}` when healthy.
//!
//! With both public APIs disabled (`disable_workload_api` and `disable_sds_api`) there is no
//! socket to call: as upstream, the agent is then live and, once started, ready, with no
//! details (`{"agent":null}`); only an expired agent SVID (our addition) makes it unready.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The public socket; `None` when neither the Workload API nor SDS is served.
    socket_path: Option<PathBuf>,
    identity: watch::Receiver<AgentIdentity>,
    /// Whether the Workload API has listened once (upstream's `started`): until then a
    /// failing check leaves the agent live, so a probe does not restart a starting agent.
    started: AtomicBool,
}

impl AgentHealth {
    /// Checks the Workload API at `socket_path` (`None`: both public APIs are disabled) and
    /// the SVID `identity` holds.
    pub fn new(socket_path: Option<PathBuf>, identity: watch::Receiver<AgentIdentity>) -> Self {
        Self {
            socket_path,
            identity,
            started: AtomicBool::new(false),
        }
    }

    /// Why the Workload API at `socket_path` does not serve, when it does not. Only an
    /// unreachable API counts, as upstream's check: any answer, even "no identity issued",
    /// means it serves.
    async fn workload_api_error(socket_path: &std::path::Path) -> Option<String> {
        let call = async {
            let mut client = crate::cli::client::workload_client(socket_path)
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

/// Upstream's details object: `make_new_x509_err` when there is an error, else `{}`.
fn details(error: Option<&String>) -> serde_json::Value {
    match error {
        Some(e) => serde_json::json!({ "make_new_x509_err": e }),
        None => serde_json::json!({}),
    }
}

#[async_trait]
impl HealthCheck for AgentHealth {
    fn name(&self) -> &str {
        "agent"
    }

    async fn check(&self) -> HealthState {
        let Some(socket_path) = &self.socket_path else {
            // Upstream (no bind address): Ready = started, Live = true, nil details. This
            // check exists only once the agent has attested and started its tasks.
            let error = self.svid_error();
            return HealthState {
                live: true,
                ready: error.is_none(),
                live_details: serde_json::Value::Null,
                ready_details: error.map_or(serde_json::Value::Null, |e| details(Some(&e))),
            };
        };
        if socket_path.exists() {
            self.started.store(true, Ordering::Relaxed);
        }
        let started = self.started.load(Ordering::Relaxed);
        let api_error = Self::workload_api_error(socket_path).await;
        let error = api_error.clone().or_else(|| self.svid_error());
        HealthState {
            live: !started || api_error.is_none(),
            ready: error.is_none(),
            live_details: details(if started { api_error.as_ref() } else { None }),
            ready_details: details(error.as_ref()),
        }
    }
}
