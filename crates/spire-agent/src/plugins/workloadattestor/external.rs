//! An external WorkloadAttestor (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.agent.workloadattestor.v1.WorkloadAttestor/Attest` with selector values,
//! typed with the plugin's name as upstream's host does.

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_core::selector::Selector;
use spire_proto::spire::plugin::agent::workloadattestor::v1 as pb;

use super::{AttestError, PeerProcess, WorkloadAttestor};

/// The gRPC service an agent WorkloadAttestor plugin implements.
pub const SERVICE: &str = "spire.plugin.agent.workloadattestor.v1.WorkloadAttestor";

/// A loaded external WorkloadAttestor.
pub struct ExternalWorkloadAttestor {
    name: &'static str,
    plugin: Arc<LoadedPlugin>,
}

impl ExternalWorkloadAttestor {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: the trait hands out a
    /// `&'static str`, and a process configures a handful of plugins at most.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin,
        }
    }
}

#[async_trait]
impl WorkloadAttestor for ExternalWorkloadAttestor {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        let mut client =
            pb::workload_attestor_client::WorkloadAttestorClient::new(self.plugin.channel());
        let response = match client.attest(pb::AttestRequest { pid: peer.pid }).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let message = self.plugin.call_failure(&status).await;
                return Err(AttestError::Internal(format!(
                    "workloadattestor({}): {message}",
                    self.name
                )));
            }
        };
        response
            .selector_values
            .into_iter()
            .map(|value| {
                Selector::new(self.name, value).map_err(|e| {
                    AttestError::Internal(format!("workloadattestor({}): {e}", self.name))
                })
            })
            .collect()
    }
}
