//! A key manager that counts its calls as upstream's wrapper does
//! (`server_key_manager_generate_key`, `server_key_manager_get_public_key`,
//! `server_key_manager_get_public_keys`), around any
//! [`KeyManager`]. Signatures by a remote key count in `server_key_manager_sign_data`
//! where they happen ([`super::RemoteKey::sign`]); in-process keys sign with no call.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use spire_common::telemetry::server::key_manager_call;
use spire_core::keys::KeyType;

use super::{KeyManager, KeyManagerError, SigningKey};

/// [`KeyManager`] with call metrics.
pub struct MeteredKeyManager(Arc<dyn KeyManager>);

impl MeteredKeyManager {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn KeyManager>) -> Self {
        Self(inner)
    }
}

#[async_trait]
impl KeyManager for MeteredKeyManager {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
        let started = Instant::now();
        let result = self.0.generate_key(id, key_type).await;
        key_manager_call("generate_key", result.is_ok(), started);
        result
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        let started = Instant::now();
        let result = self.0.get_key(id).await;
        key_manager_call("get_public_key", result.is_ok(), started);
        result
    }

    async fn get_keys(&self) -> Result<Vec<(String, SigningKey)>, KeyManagerError> {
        let started = Instant::now();
        let result = self.0.get_keys().await;
        key_manager_call("get_public_keys", result.is_ok(), started);
        result
    }
}
