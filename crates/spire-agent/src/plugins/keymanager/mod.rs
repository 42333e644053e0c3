//! KeyManager plugins hold the agent's private keys under stable IDs.
//!
//! Upstream keeps the agent SVID key under `agent-svid-A` or `agent-svid-B`, alternating on
//! every renewal so the previous key stays usable until the new SVID is in place. Two
//! built-ins, chosen by name in the `KeyManager "<name>" { }` block: [`memory`] (keys are
//! lost on restart, so every start re-attests) and [`disk`] (keys persist in upstream's
//! `keys.json` inside `directory`, so a restart reuses the stored agent SVID). A `plugin_cmd`
//! KeyManager runs as an [`external`] plugin holding the key itself.

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey};

pub mod disk;
pub mod external;
pub mod key;
pub mod memory;
pub mod metered;

pub use self::disk::{DiskKeyManager, DiskKeyManagerConfig};
pub use self::key::AgentKey;
pub use self::memory::MemoryKeyManager;

/// The first of the two agent SVID key slots (upstream's ID).
pub const AGENT_SVID_KEY_A: &str = "agent-svid-A";
/// The second of the two agent SVID key slots (upstream's ID).
pub const AGENT_SVID_KEY_B: &str = "agent-svid-B";

/// The key type upstream uses for the agent SVID.
pub const AGENT_SVID_KEY_TYPE: KeyType = KeyType::EcP256;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyManagerError {
    /// Reading or writing the key file failed; names the path.
    #[error("{0}")]
    Io(String),
    /// Key generation or decoding failed.
    #[error("{0}")]
    Key(String),
}

/// Stores the agent's private keys by ID. The built-ins keep key material in process
/// ([`AgentKey::Local`]); an external plugin keeps it and signs for the agent
/// ([`AgentKey::Plugin`]).
#[async_trait]
pub trait KeyManager: Send + Sync + std::fmt::Debug + 'static {
    /// The plugin name, e.g. `disk`.
    fn name(&self) -> &'static str;
    /// Generates a key under `id`, replacing any existing one.
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<AgentKey, KeyManagerError>;
    /// The key under `id`, if any.
    async fn get_key(&self, id: &str) -> Result<Option<AgentKey>, KeyManagerError>;
    /// Every key, sorted by ID; the agent finds its SVID's key among them at start.
    async fn get_keys(&self) -> Result<Vec<(String, AgentKey)>, KeyManagerError>;
}

/// The slot the next agent SVID key goes to: `agent-svid-B` when the current key is in
/// `agent-svid-A`, `agent-svid-A` otherwise (upstream's alternation).
pub fn next_agent_svid_key_id(current: Option<&str>) -> &'static str {
    if current == Some(AGENT_SVID_KEY_A) {
        AGENT_SVID_KEY_B
    } else {
        AGENT_SVID_KEY_A
    }
}

/// Finds the agent SVID key whose public key the certificate `leaf_der` certifies, so a
/// restarted agent pairs its stored SVID with the right key slot. `None` when no key
/// matches (the SVID cannot be used and the agent must attest again).
pub async fn find_agent_svid_key(
    key_manager: &dyn KeyManager,
    leaf_der: &[u8],
) -> Result<Option<(String, AgentKey)>, KeyManagerError> {
    let Ok(public) = spire_core::x509::certificate_public_key(leaf_der) else {
        return Ok(None);
    };
    Ok(key_manager
        .get_keys()
        .await?
        .into_iter()
        .filter(|(id, _)| id == AGENT_SVID_KEY_A || id == AGENT_SVID_KEY_B)
        .find(|(_, key)| key.public_key_der() == public))
}

/// Generates a key off the async runtime: RSA generation can take seconds.
async fn generate_blocking(key_type: KeyType) -> Result<PrivateKey, KeyManagerError> {
    tokio::task::spawn_blocking(move || PrivateKey::generate(key_type))
        .await
        .map_err(|e| KeyManagerError::Key(format!("key generation task failed: {e}")))?
        .map_err(|e| KeyManagerError::Key(e.to_string()))
}

/// Rejects the empty key ID upstream's key managers also refuse.
fn check_key_id(id: &str) -> Result<(), KeyManagerError> {
    if id.is_empty() {
        return Err(KeyManagerError::Key("key id is required".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_alternate_as_upstream() {
        assert_eq!(next_agent_svid_key_id(None), AGENT_SVID_KEY_A);
        assert_eq!(
            next_agent_svid_key_id(Some(AGENT_SVID_KEY_A)),
            AGENT_SVID_KEY_B
        );
        assert_eq!(
            next_agent_svid_key_id(Some(AGENT_SVID_KEY_B)),
            AGENT_SVID_KEY_A
        );
    }
}
