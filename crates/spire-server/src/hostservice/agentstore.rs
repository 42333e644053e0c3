//! The `AgentStore` host service (`spire.hostservice.server.agentstore.v1`): lets a plugin
//! (typically a NodeAttestor refusing re-attestation) ask whether an agent is attested.

use std::sync::Arc;

use spire_proto::spire::hostservice::server::agentstore::v1::agent_store_server::{
    AgentStore as AgentStoreService, AgentStoreServer,
};
use spire_proto::spire::hostservice::server::agentstore::v1::{
    AgentInfo, GetAgentInfoRequest, GetAgentInfoResponse,
};
use tonic::{Request, Response, Status};

use crate::datastore::DataStore;

/// Answers `GetAgentInfo` from the datastore's attested nodes.
#[derive(Clone)]
pub struct AgentStore {
    datastore: Arc<dyn DataStore>,
}

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStore").finish_non_exhaustive()
    }
}

impl AgentStore {
    /// The service over `datastore`.
    pub fn new(datastore: Arc<dyn DataStore>) -> Self {
        Self { datastore }
    }

    /// The gRPC server.
    pub fn server(self) -> AgentStoreServer<Self> {
        AgentStoreServer::new(self)
    }
}

#[tonic::async_trait]
impl AgentStoreService for AgentStore {
    /// `NotFound` "no such agent" for an agent never attested (or deleted), as upstream.
    async fn get_agent_info(
        &self,
        request: Request<GetAgentInfoRequest>,
    ) -> Result<Response<GetAgentInfoResponse>, Status> {
        let agent_id = request.into_inner().agent_id;
        let node = self
            .datastore
            .fetch_attested_node(&agent_id)
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        if node.is_none() {
            return Err(Status::not_found("no such agent"));
        }
        Ok(Response::new(GetAgentInfoResponse {
            info: Some(AgentInfo { agent_id }),
        }))
    }
}
