//! An external KeyManager (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.keymanager.v1.KeyManager`. Keys stay in the plugin; the CA signs
//! through `SignData` with the digest and its hash (or PSS options), and checks that the
//! fingerprint the plugin reports is the one of the key it was handed, as upstream's host.
//!
//! The gRPC client (bounded calls, upstream's checks of the plugin's answers, errors naming
//! the plugin) is shared with the agent's external KeyManager:
//! [`spire_common::plugin_host::keymanager`].

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_common::plugin_host::keymanager::{
    KeyManagerPlugin, PluginKey, PluginKeyError, SERVER_SERVICE,
};
use spire_core::keys::{KeyType, SignatureScheme};

use super::{KeyManager, KeyManagerError, RemoteKey, RemoteSigner, SigningKey};

/// The gRPC service a server KeyManager plugin implements.
pub const SERVICE: &str = SERVER_SERVICE;

/// A loaded external KeyManager.
pub struct ExternalKeyManager {
    name: &'static str,
    plugin: KeyManagerPlugin,
}

/// The plugin as the signer of its keys.
struct Signer(KeyManagerPlugin);

impl std::fmt::Debug for ExternalKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalKeyManager")
            .field("name", &self.name)
            .finish()
    }
}

fn key_error(e: PluginKeyError) -> KeyManagerError {
    KeyManagerError::Key(e.to_string())
}

impl ExternalKeyManager {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: the trait returns a
    /// `&'static str`, and a server has one KeyManager.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin: KeyManagerPlugin::new(plugin, SERVER_SERVICE),
        }
    }

    fn key(&self, key: &PluginKey) -> SigningKey {
        SigningKey::Remote(RemoteKey::new(
            key.id(),
            key.public_key().clone(),
            key.fingerprint(),
            Arc::new(Signer(self.plugin.clone())) as Arc<dyn RemoteSigner>,
        ))
    }
}

#[async_trait]
impl RemoteSigner for Signer {
    async fn sign(
        &self,
        key_id: &str,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<(Vec<u8>, String), KeyManagerError> {
        self.0
            .sign_data(key_id, message, scheme)
            .await
            .map_err(key_error)
    }
}

#[async_trait]
impl KeyManager for ExternalKeyManager {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
        let key = self
            .plugin
            .generate_key(id, key_type)
            .await
            .map_err(key_error)?;
        Ok(self.key(&key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        Ok(self
            .plugin
            .get_public_key(id)
            .await
            .map_err(key_error)?
            .map(|key| self.key(&key)))
    }

    async fn get_keys(&self) -> Result<Vec<(String, SigningKey)>, KeyManagerError> {
        Ok(self
            .plugin
            .get_public_keys()
            .await
            .map_err(key_error)?
            .iter()
            .map(|key| (key.id().to_owned(), self.key(key)))
            .collect())
    }
}
