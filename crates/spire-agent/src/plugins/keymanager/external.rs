//! An external KeyManager (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.agent.keymanager.v1.KeyManager`. The agent SVID key stays in the plugin: the
//! agent's CSRs and its TLS handshakes with the server are signed through `SignData`
//! ([`spire_common::plugin_host::keymanager`], shared with the server's external KeyManager).

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_common::plugin_host::keymanager::{AGENT_SERVICE, KeyManagerPlugin, PluginKeyError};
use spire_core::keys::KeyType;

use super::{AgentKey, KeyManager, KeyManagerError};

/// The gRPC service an agent KeyManager plugin implements.
pub const SERVICE: &str = AGENT_SERVICE;

/// A loaded external KeyManager.
#[derive(Debug)]
pub struct ExternalKeyManager {
    name: &'static str,
    plugin: KeyManagerPlugin,
}

impl ExternalKeyManager {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: the trait returns a
    /// `&'static str`, and an agent has one KeyManager.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin: KeyManagerPlugin::new(plugin, AGENT_SERVICE),
        }
    }
}

fn key_error(e: PluginKeyError) -> KeyManagerError {
    KeyManagerError::Key(e.to_string())
}

#[async_trait]
impl KeyManager for ExternalKeyManager {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<AgentKey, KeyManagerError> {
        self.plugin
            .generate_key(id, key_type)
            .await
            .map(AgentKey::Plugin)
            .map_err(key_error)
    }

    async fn get_key(&self, id: &str) -> Result<Option<AgentKey>, KeyManagerError> {
        Ok(self
            .plugin
            .get_public_key(id)
            .await
            .map_err(key_error)?
            .map(AgentKey::Plugin))
    }

    async fn get_keys(&self) -> Result<Vec<(String, AgentKey)>, KeyManagerError> {
        let mut keys: Vec<(String, AgentKey)> = self
            .plugin
            .get_public_keys()
            .await
            .map_err(key_error)?
            .into_iter()
            .map(|key| (key.id().to_owned(), AgentKey::Plugin(key)))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }
}
