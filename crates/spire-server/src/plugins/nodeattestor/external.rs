//! An external server NodeAttestor (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.nodeattestor.v1.NodeAttestor/Attest`. The agent's payload opens the
//! stream; each challenge the plugin sends goes to the agent and its answer back to the plugin
//! until the plugin returns the agent's attributes, as upstream's host drives it.

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::plugin::server::nodeattestor::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::{Attested, Challenger, NodeAttestor, plugin_error};

/// The gRPC service a server NodeAttestor plugin implements.
pub const SERVICE: &str = "spire.plugin.server.nodeattestor.v1.NodeAttestor";

/// A loaded external server NodeAttestor.
pub struct ExternalNodeAttestor {
    plugin: Arc<LoadedPlugin>,
}

impl ExternalNodeAttestor {
    /// Wraps a plugin loaded with [`SERVICE`].
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self { plugin }
    }

    fn error(&self, code: Code, message: impl std::fmt::Display) -> Status {
        plugin_error(self.plugin.name(), code, message)
    }

    /// A plugin's own status keeps its code and gets the `nodeattestor(<name>): ` prefix;
    /// a plugin whose process died says so.
    async fn wrap(&self, status: Status) -> Status {
        self.error(status.code(), self.plugin.call_failure(&status).await)
    }
}

#[async_trait]
impl NodeAttestor for ExternalNodeAttestor {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    async fn attest(
        &self,
        payload: &[u8],
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        if payload.is_empty() {
            return Err(Status::invalid_argument("payload cannot be empty"));
        }
        let (requests, rx) = mpsc::channel(1);
        let send = |request| {
            let requests = requests.clone();
            async move {
                requests
                    .send(pb::AttestRequest {
                        request: Some(request),
                    })
                    .await
                    .map_err(|_| ())
            }
        };
        send(pb::attest_request::Request::Payload(payload.to_vec()))
            .await
            .map_err(|()| self.error(Code::Internal, "plugin closed stream unexpectedly"))?;
        let mut client = pb::node_attestor_client::NodeAttestorClient::new(self.plugin.channel());
        let mut responses = match client
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(responses) => responses.into_inner(),
            Err(status) => return Err(self.wrap(status).await),
        };
        let attributes = loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Err(self.error(Code::Internal, "plugin closed stream unexpectedly"));
                }
                Err(status) => return Err(self.wrap(status).await),
            };
            match response.response {
                Some(pb::attest_response::Response::AgentAttributes(attributes)) => {
                    break attributes;
                }
                Some(pb::attest_response::Response::Challenge(challenge)) => {
                    let answer = challenger.challenge(challenge).await?;
                    send(pb::attest_request::Request::ChallengeResponse(answer))
                        .await
                        .map_err(|()| {
                            self.error(Code::Internal, "plugin closed stream unexpectedly")
                        })?;
                }
                None => {
                    return Err(self.error(
                        Code::Internal,
                        "plugin response missing challenge or agent attributes",
                    ));
                }
            }
        };
        if attributes.spiffe_id.is_empty() {
            return Err(self.error(Code::Internal, "plugin response missing agent ID"));
        }
        let agent_id = SpiffeId::parse(&attributes.spiffe_id).map_err(|e| {
            self.error(
                Code::Internal,
                format!(
                    "plugin returned an invalid agent ID {:?}: {e}",
                    attributes.spiffe_id
                ),
            )
        })?;
        Ok(Attested {
            agent_id,
            selector_values: attributes.selector_values,
            can_reattest: attributes.can_reattest,
        })
    }
}
