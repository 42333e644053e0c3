//! The `memory` KeyManager: keys live only in process memory, so a restarted agent has no
//! key for its stored SVID and attests again.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey};
use tokio::sync::Mutex;

use super::{AgentKey, KeyManager, KeyManagerError, check_key_id, generate_blocking};

/// Keys in a map, gone on restart.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: Mutex<BTreeMap<String, Arc<PrivateKey>>>,
}

impl MemoryKeyManager {
    /// An empty key manager; `memory` takes no configuration.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KeyManager for MemoryKeyManager {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<AgentKey, KeyManagerError> {
        check_key_id(id)?;
        let key = Arc::new(generate_blocking(key_type).await?);
        self.keys.lock().await.insert(id.to_owned(), key.clone());
        Ok(AgentKey::Local(key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<AgentKey>, KeyManagerError> {
        Ok(self.keys.lock().await.get(id).cloned().map(AgentKey::Local))
    }

    async fn get_keys(&self) -> Result<Vec<(String, AgentKey)>, KeyManagerError> {
        Ok(self
            .keys
            .lock()
            .await
            .iter()
            .map(|(id, key)| (id.clone(), AgentKey::Local(key.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[tokio::test]
    async fn generated_keys_are_returned_by_id() {
        let km = MemoryKeyManager::new();
        assert!(km.get_key("agent-svid-A").await.unwrap().is_none());
        let key = km
            .generate_key("agent-svid-A", KeyType::EcP256)
            .await
            .unwrap();
        let got = km.get_key("agent-svid-A").await.unwrap().unwrap();
        assert_eq!(got.public_key_der(), key.public_key_der());
        assert_eq!(km.get_keys().await.unwrap().len(), 1);
        assert!(km.generate_key("", KeyType::EcP256).await.is_err());
    }
}
