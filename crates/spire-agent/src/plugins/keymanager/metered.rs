//! A key manager that counts its calls as upstream's wrapper does
//! (`agent_key_manager_generate_key`, `agent_key_manager_get_key`,
//! `agent_key_manager_get_keys`), around any [`KeyManager`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use spire_common::telemetry::agent::key_manager_call;
use spire_core::keys::KeyType;

use super::{AgentKey, KeyManager, KeyManagerError};

/// [`KeyManager`] with call metrics.
#[derive(Debug)]
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

    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<AgentKey, KeyManagerError> {
        let started = Instant::now();
        let result = self.0.generate_key(id, key_type).await;
        key_manager_call("generate_key", result.is_ok(), started);
        result
    }

    async fn get_key(&self, id: &str) -> Result<Option<AgentKey>, KeyManagerError> {
        let started = Instant::now();
        let result = self.0.get_key(id).await;
        key_manager_call("get_key", result.is_ok(), started);
        result
    }

    async fn get_keys(&self) -> Result<Vec<(String, AgentKey)>, KeyManagerError> {
        let started = Instant::now();
        let result = self.0.get_keys().await;
        key_manager_call("get_keys", result.is_ok(), started);
        result
    }
}
