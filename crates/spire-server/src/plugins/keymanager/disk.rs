//! The `disk` KeyManager: keys persist in one JSON file so a restarted server keeps its CA.
//!
//! The file is upstream's (see [`spire_common::disk_keys`], shared with the agent's plugin):
//! a file written by upstream SPIRE loads here and the other way round.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use spire_common::disk_keys::{DiskKeys, DiskKeysError};
use spire_core::keys::KeyType;

use super::{KeyManager, KeyManagerError, SigningKey, check_key_id, generate_blocking};

/// The `plugin_data` of `KeyManager "disk"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskKeyManagerConfig {
    /// Where the key file lives, e.g. `/opt/spire/data/server/keys.json`.
    pub keys_path: PathBuf,
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
        Self::open(&config.keys_path)
    }

    /// Loads the keys in `keys_path`; a missing file means no keys yet (it is created on the
    /// first key generation).
    pub fn open(keys_path: impl AsRef<Path>) -> Result<Self, KeyManagerError> {
        let path = keys_path.as_ref().to_path_buf();
        if path.as_os_str().is_empty() {
            return Err(KeyManagerError::Io(
                "keymanager(disk): keys_path is required".into(),
            ));
        }
        Ok(Self {
            keys: DiskKeys::open(path)?,
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

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
        check_key_id(id)?;
        let key = Arc::new(generate_blocking(key_type).await?);
        self.keys.insert(id, Arc::clone(&key)).await?;
        Ok(SigningKey::Local(key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        Ok(self.keys.get(id).await.map(SigningKey::Local))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use spire_core::keys::PrivateKey;

    #[tokio::test]
    async fn keys_survive_reopen_and_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let km = DiskKeyManager::open(&path).unwrap();
        assert!(km.get_key("x509-CA-A").await.unwrap().is_none());
        let a = km.generate_key("x509-CA-A", KeyType::EcP256).await.unwrap();
        let j = km
            .generate_key("JWT-Signer-A", KeyType::EcP384)
            .await
            .unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.path().join("keys.json.tmp").exists());

        let reopened = DiskKeyManager::open(&path).unwrap();
        let a2 = reopened.get_key("x509-CA-A").await.unwrap().unwrap();
        let j2 = reopened.get_key("JWT-Signer-A").await.unwrap().unwrap();
        assert_eq!(a.public_key_der(), a2.public_key_der());
        assert_eq!(j.public_key_der(), j2.public_key_der());
        assert_eq!(j2.key_type(), KeyType::EcP384);
    }

    #[tokio::test]
    async fn file_has_upstream_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let km = DiskKeyManager::open(&path).unwrap();
        let key = km
            .generate_key("JWT-Signer-B", KeyType::EcP256)
            .await
            .unwrap();
        km.generate_key("JWT-Signer-A", KeyType::EcP256)
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\n\t\"keys\": {\n\t\t\"JWT-Signer-A\": \""),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let encoded = value["keys"]["JWT-Signer-B"].as_str().unwrap();
        assert_eq!(
            STANDARD.decode(encoded).unwrap(),
            key.local().unwrap().pkcs8_der()
        );
    }

    #[tokio::test]
    async fn reads_a_file_written_by_upstream() {
        // The layout Go's json.MarshalIndent writes for map[string][]byte.
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let text = format!(
            "{{\n\t\"keys\": {{\n\t\t\"x509-CA-B\": \"{}\"\n\t}}\n}}",
            STANDARD.encode(key.pkcs8_der())
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, text).unwrap();
        let km = DiskKeyManager::open(&path).unwrap();
        let got = km.get_key("x509-CA-B").await.unwrap().unwrap();
        assert_eq!(got.public_key_der(), key.public_key_der());
    }

    #[test]
    fn bad_files_name_the_path_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, "not json").unwrap();
        let err = DiskKeyManager::open(&path).unwrap_err().to_string();
        assert!(err.contains("keys.json"), "{err}");

        std::fs::write(&path, r#"{"keys": {"x509-CA-A": "AAAA"}}"#).unwrap();
        let err = DiskKeyManager::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("x509-CA-A") && err.contains("keys.json"),
            "{err}"
        );
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let ok: DiskKeyManagerConfig =
            serde_json::from_str(r#"{"keys_path": "/tmp/keys.json"}"#).unwrap();
        assert_eq!(ok.keys_path, PathBuf::from("/tmp/keys.json"));
        let err = serde_json::from_str::<DiskKeyManagerConfig>(
            r#"{"keys_path": "/tmp/keys.json", "directory": "/tmp"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("directory"), "{err}");
    }
}
