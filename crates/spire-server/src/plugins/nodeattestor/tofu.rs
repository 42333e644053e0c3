//! Trust on first use, for attestors whose agents cannot re-attest (`gcp_iit`, `azure_msi`):
//! a cloud identity document names the node, not the moment, so once an agent ID exists a
//! second attestation with a document for it (a replayed token) is refused, as upstream's
//! `nodeattestorbase.AssessTOFU`. The operator evicts the agent to let the node attest again.

use spire_core::spiffe_id::SpiffeId;
use tonic::{Code, Status};

use super::plugin_error;
use crate::datastore::DataStore;

/// Refuses with PermissionDenied when `agent_id` has attested before.
pub async fn assess(
    plugin: &str,
    datastore: &dyn DataStore,
    agent_id: &SpiffeId,
) -> Result<(), Status> {
    let existing = datastore
        .fetch_attested_node(agent_id.as_str())
        .await
        .map_err(|e| {
            plugin_error(
                plugin,
                Code::Internal,
                format!("unable to look up agent {agent_id}: {e}"),
            )
        })?;
    if existing.is_some() {
        tracing::error!(
            spiffe_id = %agent_id,
            "Attestation data has already been used to attest an agent"
        );
        return Err(plugin_error(
            plugin,
            Code::PermissionDenied,
            "attestation data has already been used to attest an agent",
        ));
    }
    Ok(())
}
