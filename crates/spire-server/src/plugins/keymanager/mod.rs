//! KeyManager plugins hold the CA and JWT signing keys under stable IDs
//! (`x509-CA-A`, `x509-CA-B`, `JWT-Signer-A`, `JWT-Signer-B`, as upstream names them).

use std::sync::Arc;

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey};

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
/// process, so the CA signs with [`PrivateKey`] directly.
#[async_trait]
pub trait KeyManager: Send + Sync + 'static {
    /// The plugin name, e.g. `disk`.
    fn name(&self) -> &'static str;
    /// Generates (replacing any existing) key under `id`.
    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<Arc<PrivateKey>, KeyManagerError>;
    /// The key under `id`, if any.
    async fn get_key(&self, id: &str) -> Result<Option<Arc<PrivateKey>>, KeyManagerError>;
}
