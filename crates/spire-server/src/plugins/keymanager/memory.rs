//! The `memory` KeyManager: keys live only in this process, so a restart mints a new CA.
//! Useful for tests and throwaway deployments; upstream's `memory` plugin behaves the same.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey};

use super::{KeyManager, KeyManagerError, SigningKey, check_key_id, generate_blocking};

/// Keeps keys in a map; nothing is written anywhere.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: RwLock<HashMap<String, Arc<PrivateKey>>>,
}

impl MemoryKeyManager {
    /// An empty key manager. It takes no `plugin_data`.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KeyManager for MemoryKeyManager {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
        check_key_id(id)?;
        let key = Arc::new(generate_blocking(key_type).await?);
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), Arc::clone(&key));
        Ok(SigningKey::Local(key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        Ok(self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .map(SigningKey::Local))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[tokio::test]
    async fn generate_replaces_and_get_returns_the_same_key() {
        let km = MemoryKeyManager::new();
        assert!(km.get_key("x509-CA-A").await.unwrap().is_none());
        let first = km.generate_key("x509-CA-A", KeyType::EcP256).await.unwrap();
        let got = km.get_key("x509-CA-A").await.unwrap().unwrap();
        assert_eq!(first.public_key_der(), got.public_key_der());
        let second = km.generate_key("x509-CA-A", KeyType::EcP384).await.unwrap();
        assert_ne!(first.public_key_der(), second.public_key_der());
        let got = km.get_key("x509-CA-A").await.unwrap().unwrap();
        assert_eq!(got.key_type(), KeyType::EcP384);
        assert!(got.local().is_some(), "memory keys sign in process");
        assert!(km.generate_key("", KeyType::EcP256).await.is_err());
    }
}
