//! The `join_token` node attestor: agent ID `spiffe://<td>/spire/agent/join_token/<token>`,
//! no plugin_data, single-use tokens taken from the datastore. As upstream's server handles
//! join tokens itself, its refusals carry no `nodeattestor(join_token): ` prefix.

use std::sync::Arc;

use async_trait::async_trait;
use spire_core::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
use tonic::{Code, Status};

use super::{Attested, Challenger, NodeAttestor};
use crate::datastore::DataStore;

/// The attestor's name in configs and in attestation requests.
pub const NAME: &str = "join_token";

/// The SPIFFE ID an agent attested with `token` receives.
pub fn agent_id(trust_domain: &TrustDomain, token: &str) -> Result<SpiffeId, SpiffeIdError> {
    trust_domain.id_with_path(&format!("/spire/agent/{NAME}/{token}"))
}

/// Attests agents with join tokens from the datastore.
pub struct JoinTokenAttestor {
    datastore: Arc<dyn DataStore>,
    trust_domain: TrustDomain,
}

impl JoinTokenAttestor {
    /// An attestor consuming the tokens of `datastore` for agents of `trust_domain`.
    pub fn new(datastore: Arc<dyn DataStore>, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
        }
    }
}

#[async_trait]
impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &str {
        NAME
    }

    /// Consumes the token and returns the agent ID it attests. The token is deleted whether
    /// or not it has expired, so it can never be used twice; join token agents never
    /// re-attest and have no node selectors.
    async fn attest(
        &self,
        payload: &[u8],
        _challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        const NOT_FOUND: &str =
            "failed to attest: join token does not exist or has already been used";
        let Ok(token) = std::str::from_utf8(payload) else {
            return Err(Status::new(Code::InvalidArgument, NOT_FOUND));
        };
        let taken =
            self.datastore.take_join_token(token).await.map_err(|e| {
                Status::new(Code::Internal, format!("failed to fetch join token: {e}"))
            })?;
        let Some(taken) = taken else {
            return Err(Status::new(Code::InvalidArgument, NOT_FOUND));
        };
        if taken.expiry < time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err(Status::new(Code::InvalidArgument, "join token expired"));
        }
        let agent_id = agent_id(&self.trust_domain, token).map_err(|e| {
            Status::new(
                Code::Internal,
                format!("failed to create join token ID: {e}"),
            )
        })?;
        Ok(Attested {
            agent_id,
            selector_values: Vec::new(),
            can_reattest: false,
        })
    }
}
