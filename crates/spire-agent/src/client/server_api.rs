//! The manager's [`ServerApi`] over the real server connection: GetAuthorizedEntries,
//! BatchNewX509SVID, GetBundle, GetFederatedBundle, NewJWTSVID and PostStatus with the agent's SVID.

use async_trait::async_trait;
use spire_proto::spire::api::server::agent::v1 as agent_pb;
use spire_proto::spire::api::server::bundle::v1 as bundle_pb;
use spire_proto::spire::api::server::entry::v1 as entry_pb;
use spire_proto::spire::api::server::svid::v1 as svid_pb;
use spire_proto::spire::api::types;
use tonic::Code;

use super::ServerClient;
use crate::manager::ManagerError;
use crate::manager::server_api::ServerApi;

/// A failed call: the sync loop backs off on Unavailable and keeps serving its cache. A
/// denial of the agent itself is also recorded on the client, where the agent SVID's owner
/// reacts to it (re-attestation or shutdown).
fn call_failed(client: &ServerClient, rpc: &str, status: &tonic::Status) -> ManagerError {
    client.note_status(status);
    let message = format!("{rpc} failed: {}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument => ManagerError::InvalidArgument(message),
        _ => ManagerError::Unavailable(message),
    }
}

#[async_trait]
impl ServerApi for ServerClient {
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError> {
        let response = self
            .entry_client()
            .get_authorized_entries(entry_pb::GetAuthorizedEntriesRequest { output_mask: None })
            .await
            .map_err(|s| call_failed(self, "GetAuthorizedEntries", &s))?;
        Ok(response.into_inner().entries)
    }

    async fn new_x509_svids(
        &self,
        csrs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError> {
        let expected = csrs.len();
        let params = csrs
            .into_iter()
            .map(|(entry_id, csr)| svid_pb::NewX509svidParams { entry_id, csr })
            .collect();
        let response = self
            .svid_client()
            .batch_new_x509svid(svid_pb::BatchNewX509svidRequest { params })
            .await
            .map_err(|s| call_failed(self, "BatchNewX509SVID", &s))?
            .into_inner();
        if response.results.len() != expected {
            return Err(ManagerError::Internal(format!(
                "BatchNewX509SVID answered {} results for {expected} CSRs",
                response.results.len()
            )));
        }
        Ok(response
            .results
            .into_iter()
            .map(|result| {
                let status = result.status.unwrap_or_default();
                match result.svid {
                    Some(svid) if status.code == 0 => Ok(svid.cert_chain),
                    _ => Err(ManagerError::Unavailable(format!(
                        "server refused to sign: code {}: {}",
                        status.code, status.message
                    ))),
                }
            })
            .collect())
    }

    async fn bundle(&self) -> Result<types::Bundle, ManagerError> {
        let response = self
            .bundle_client()
            .get_bundle(bundle_pb::GetBundleRequest { output_mask: None })
            .await
            .map_err(|s| call_failed(self, "GetBundle", &s))?;
        Ok(response.into_inner())
    }

    async fn federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::Bundle>, ManagerError> {
        let response = self
            .bundle_client()
            .get_federated_bundle(bundle_pb::GetFederatedBundleRequest {
                trust_domain: trust_domain.to_owned(),
                output_mask: None,
            })
            .await;
        match response {
            Ok(bundle) => Ok(Some(bundle.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(call_failed(self, "GetFederatedBundle", &status)),
        }
    }

    async fn new_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, ManagerError> {
        let response = self
            .svid_client()
            .new_jwtsvid(svid_pb::NewJwtsvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(|s| call_failed(self, "NewJWTSVID", &s))?
            .into_inner();
        response
            .svid
            .map(|svid| svid.token)
            .ok_or_else(|| ManagerError::Internal("NewJWTSVID answered no token".to_owned()))
    }

    async fn post_status(&self, agent_version: &str) -> Result<(), ManagerError> {
        self.agent_client()
            .post_status(agent_pb::PostStatusRequest {
                agent_version: agent_version.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| call_failed(self, "PostStatus", &s))?;
        Ok(())
    }
}
