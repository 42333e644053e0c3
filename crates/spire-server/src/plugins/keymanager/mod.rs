//! KeyManager plugins hold the CA and JWT signing keys under stable IDs
//! (`x509-CA-A`, `x509-CA-B`, `JWT-Signer-A`, `JWT-Signer-B`, as upstream names them).
//!
//! Built-ins, chosen by name in the `KeyManager "<name>" { }` block: [`memory`] (keys are
//! lost on restart, so every start mints a new CA), [`disk`] (keys persist in upstream's JSON
//! key file, so a restart keeps the same CA) and [`aws_kms`] (keys live in AWS KMS and sign
//! there). A `plugin_cmd` KeyManager runs as an [`external`] plugin.

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey};

pub mod aws_kms;
pub mod disk;
pub mod external;
pub mod memory;
pub mod metered;
pub mod signing_key;

pub use self::disk::{DiskKeyManager, DiskKeyManagerConfig};
pub use self::memory::MemoryKeyManager;
pub use self::signing_key::{RemoteKey, RemoteSigner, SigningKey};

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

/// Stores signing keys by ID. Memory and disk implementations keep the key material in
/// process ([`SigningKey::Local`], signed with directly); `aws_kms` and external plugins
/// hold it elsewhere ([`SigningKey::Remote`], signed through them).
#[async_trait]
pub trait KeyManager: Send + Sync + 'static {
    /// The plugin name, e.g. `disk`.
    fn name(&self) -> &'static str;
    /// Generates (replacing any existing) key under `id`.
    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError>;
    /// The key under `id`, if any.
    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError>;
    /// Every key held, with its ID (upstream's `GetPublicKeys`): the CA manager looks for
    /// its journal by them. By default the IDs of [`CA_KEY_IDS`] present, in that order;
    /// a plugin that can list its keys lists them itself.
    async fn get_keys(&self) -> Result<Vec<(String, SigningKey)>, KeyManagerError> {
        let mut keys = Vec::new();
        for id in CA_KEY_IDS {
            if let Some(key) = self.get_key(id).await? {
                keys.push((id.to_owned(), key));
            }
        }
        Ok(keys)
    }
}

/// The key IDs the CA manager uses, slot A first (`x509-CA-A`, `JWT-Signer-A`, then B).
pub const CA_KEY_IDS: [&str; 4] = ["x509-CA-A", "JWT-Signer-A", "x509-CA-B", "JWT-Signer-B"];

/// Generates a key off the async runtime: RSA-4096 generation takes seconds.
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
