//! The `join_token` node attestor: agent ID `spiffe://<td>/spire/agent/join_token/<token>`,
//! no plugin_data, single-use tokens consumed from the datastore by the agent API.

use spire_core::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The attestor's name in configs and in attestation requests.
pub const NAME: &str = "join_token";

/// The SPIFFE ID an agent attested with `token` receives.
pub fn agent_id(trust_domain: &TrustDomain, token: &str) -> Result<SpiffeId, SpiffeIdError> {
    trust_domain.id_with_path(&format!("/spire/agent/{NAME}/{token}"))
}
