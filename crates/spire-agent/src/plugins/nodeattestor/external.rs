//! An external NodeAttestor (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.agent.nodeattestor.v1.NodeAttestor/AidAttestation`. One stream serves one
//! attestation: its first message is the payload, each server challenge is sent down it and
//! answered on it, as upstream's host drives it.

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_proto::spire::plugin::agent::nodeattestor::v1 as pb;
use tokio::sync::{Mutex, mpsc};
use tonic::Streaming;

use super::{NodeAttestor, PluginError};

/// The gRPC service an agent NodeAttestor plugin implements.
pub const SERVICE: &str = "spire.plugin.agent.nodeattestor.v1.NodeAttestor";

/// The open `AidAttestation` stream of the attestation in progress.
struct Round {
    challenges: mpsc::Sender<pb::Challenge>,
    answers: Streaming<pb::PayloadOrChallengeResponse>,
}

/// A loaded external agent NodeAttestor.
pub struct ExternalNodeAttestor {
    name: &'static str,
    plugin: Arc<LoadedPlugin>,
    round: Mutex<Option<Round>>,
}

impl std::fmt::Debug for ExternalNodeAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalNodeAttestor")
            .field("name", &self.name)
            .finish()
    }
}

impl ExternalNodeAttestor {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: plugin errors carry a
    /// `&'static str`, and a process configures a handful of plugins at most.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin,
            round: Mutex::new(None),
        }
    }

    fn error(&self, message: impl Into<String>) -> PluginError {
        PluginError::new(self.name, message)
    }

    /// The plugin's failed call, saying when its process has died.
    async fn failed(&self, status: tonic::Status) -> PluginError {
        self.error(self.plugin.call_failure(&status).await)
    }
}

#[async_trait]
impl NodeAttestor for ExternalNodeAttestor {
    fn name(&self) -> &str {
        self.name
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let mut round = self.round.lock().await;
        // A new attestation ends the previous stream.
        *round = None;
        let (challenges, rx) = mpsc::channel(1);
        let mut client = pb::node_attestor_client::NodeAttestorClient::new(self.plugin.channel());
        let mut answers = match client
            .aid_attestation(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(answers) => answers.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        let first = match answers.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return Err(self.error("plugin closed stream unexpectedly")),
            Err(status) => return Err(self.failed(status).await),
        };
        let Some(pb::payload_or_challenge_response::Data::Payload(payload)) = first.data else {
            return Err(self.error("plugin response missing payload"));
        };
        if payload.is_empty() {
            return Err(self.error("plugin response has empty payload"));
        }
        *round = Some(Round {
            challenges,
            answers,
        });
        Ok(payload)
    }

    async fn challenge_response(&self, challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        let mut guard = self.round.lock().await;
        let Some(round) = guard.as_mut() else {
            return Err(self.error("received a challenge outside of an attestation"));
        };
        round
            .challenges
            .send(pb::Challenge {
                challenge: challenge.to_vec(),
            })
            .await
            .map_err(|_| self.error("plugin closed stream unexpectedly"))?;
        let answer = match round.answers.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(self.error("plugin closed stream unexpectedly")),
            Err(status) => return Err(self.failed(status).await),
        };
        match answer.data {
            Some(pb::payload_or_challenge_response::Data::ChallengeResponse(r)) => Ok(r),
            _ => Err(self.error("plugin response missing challenge response")),
        }
    }
}
