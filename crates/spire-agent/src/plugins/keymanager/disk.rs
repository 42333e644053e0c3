//! The `disk` KeyManager: keys persist in `<directory>/keys.json`, so a restarted agent
//! finds the key of its stored SVID and does not attest again (join tokens are single-use).
//!
//! The file is upstream's (see [`spire_common::disk_keys`], shared with the server's
//! plugin): a file written by upstream's agent loads here and the other way round.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use spire_common::disk_keys::{DiskKeys, DiskKeysError};
use spire_core::keys::KeyType;

use super::{AgentKey, KeyManager, KeyManagerError, check_key_id, generate_blocking};

/// The key file's name inside `directory`, as upstream names it.
pub const KEYS_FILE_NAME: &str = "keys.json";

/// The `plugin_data` of `KeyManager "disk"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskKeyManagerConfig {
    /// The folder holding `keys.json`, e.g. `/opt/spire/data/agent`.
    pub directory: PathBuf,
}

/// Keeps keys in memory and mirrors every change to the key file.
#[derive(Debug)]
pub struct DiskKeyManager {
    keys: DiskKeys,
}

impl From<DiskKeysError> for KeyManagerError {
    fn from(e: DiskKeysError) -> Self {
        match e {
            DiskKeysError::Io(message) => Self::Io(message),
            DiskKeysError::Key(message) => Self::Key(message),
        }
    }
}

impl DiskKeyManager {
    /// Builds the plugin from its configuration; see [`DiskKeyManager::open`].
    pub fn from_config(config: &DiskKeyManagerConfig) -> Result<Self, KeyManagerError> {
        Self::open(&config.directory)
    }

    /// Loads the keys in `<directory>/keys.json`; a missing file means no keys yet. The
    /// folder is created (mode 0700) when missing.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, KeyManagerError> {
        let directory = directory.as_ref();
        if directory.as_os_str().is_empty() {
            return Err(KeyManagerError::Io(
                "keymanager(disk): directory must be configured".into(),
            ));
        }
        spire_common::fs::create_dir(directory, 0o700).map_err(|e| {
            KeyManagerError::Io(format!(
                "keymanager(disk): cannot create directory {}: {e}",
                directory.display()
            ))
        })?;
        Ok(Self {
            keys: DiskKeys::open(directory.join(KEYS_FILE_NAME))?,
        })
    }

    /// The key file this manager writes.
    pub fn keys_path(&self) -> &Path {
        self.keys.path()
    }
}

#[async_trait]
impl KeyManager for DiskKeyManager {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<AgentKey, KeyManagerError> {
        check_key_id(id)?;
        let key = Arc::new(generate_blocking(key_type).await?);
        self.keys.insert(id, Arc::clone(&key)).await?;
        Ok(AgentKey::Local(key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<AgentKey>, KeyManagerError> {
        Ok(self.keys.get(id).await.map(AgentKey::Local))
    }

    async fn get_keys(&self) -> Result<Vec<(String, AgentKey)>, KeyManagerError> {
        Ok(self
            .keys
            .all()
            .await
            .into_iter()
            .map(|(id, key)| (id, AgentKey::Local(key)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[tokio::test]
    async fn keys_survive_a_reload_in_upstreams_layout() {
        let dir = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::open(dir.path()).unwrap();
        let key = km
            .generate_key("agent-svid-A", KeyType::EcP256)
            .await
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(
            text.starts_with("{\n\t\"keys\": {\n\t\t\"agent-svid-A\": \""),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let encoded = value["keys"]["agent-svid-A"].as_str().unwrap();
        assert_eq!(
            STANDARD.decode(encoded).unwrap(),
            key.local().unwrap().pkcs8_der()
        );

        let reloaded = DiskKeyManager::open(dir.path()).unwrap();
        let got = reloaded.get_key("agent-svid-A").await.unwrap().unwrap();
        assert_eq!(got.public_key_der(), key.public_key_der());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::open(dir.path()).unwrap();
        km.generate_key("agent-svid-B", KeyType::EcP256)
            .await
            .unwrap();
        let mode = std::fs::metadata(km.keys_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.json"), b"not json").unwrap();
        let err = DiskKeyManager::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("keys.json"), "{err}");
    }
}
