//! The `disk` KeyManager: keys persist in `<directory>/keys.json`, so a restarted agent
//! finds the key of its stored SVID and does not attest again (join tokens are single-use).
//!
//! The file is upstream's: `{"keys": {"<key id>": "<base64 PKCS#8 DER>", ...}}`, indented
//! with tabs, written atomically with mode 0600. A file written by upstream's agent loads
//! here and the other way round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use spire_core::keys::{KeyType, PrivateKey};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::{AgentKey, KeyManager, KeyManagerError, check_key_id, generate_blocking};
use spire_common::fs::atomic_write_private;

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
    path: PathBuf,
    keys: Mutex<BTreeMap<String, Arc<PrivateKey>>>,
}

/// The file layout, as upstream's `entriesData`.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// Key ID to base64 (standard, padded) PKCS#8 DER, as Go encodes `[]byte`.
    keys: BTreeMap<String, String>,
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
        let path = directory.join(KEYS_FILE_NAME);
        let keys = load_keys(&path)?;
        Ok(Self {
            path,
            keys: Mutex::new(keys),
        })
    }

    /// The key file this manager writes.
    pub fn keys_path(&self) -> &Path {
        &self.path
    }
}

fn load_keys(path: &Path) -> Result<BTreeMap<String, Arc<PrivateKey>>, KeyManagerError> {
    let text = match std::fs::read(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(KeyManagerError::Io(format!(
                "keymanager(disk): cannot read key file {}: {e}",
                path.display()
            )));
        }
    };
    let file: KeyFile = serde_json::from_slice(&text).map_err(|e| {
        KeyManagerError::Key(format!(
            "keymanager(disk): key file {} is not valid keys JSON: {e}",
            path.display()
        ))
    })?;
    let mut keys = BTreeMap::new();
    for (id, encoded) in file.keys {
        let bad = |reason: String| {
            KeyManagerError::Key(format!(
                "keymanager(disk): key {id:?} in {} is unusable: {reason}",
                path.display()
            ))
        };
        let der = Zeroizing::new(
            STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| bad(format!("not base64: {e}")))?,
        );
        let key = PrivateKey::from_der(&der).map_err(|e| bad(e.to_string()))?;
        keys.insert(id, Arc::new(key));
    }
    Ok(keys)
}

/// Writes the key file as upstream does (`json.MarshalIndent(data, "", "\t")`), atomically
/// and readable by the owner only.
fn write_keys(
    path: &Path,
    keys: &BTreeMap<String, Arc<PrivateKey>>,
) -> Result<(), KeyManagerError> {
    let file = KeyFile {
        keys: keys
            .iter()
            .map(|(id, key)| (id.clone(), STANDARD.encode(key.pkcs8_der())))
            .collect(),
    };
    let mut json = Zeroizing::new(Vec::new());
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut *json, formatter);
    file.serialize(&mut serializer)
        .map_err(|e| KeyManagerError::Io(format!("keymanager(disk): cannot encode keys: {e}")))?;
    drop(file);
    atomic_write_private(path, &json).map_err(|e| {
        KeyManagerError::Io(format!(
            "keymanager(disk): cannot write key file {}: {e}",
            path.display()
        ))
    })
}

#[async_trait]
impl KeyManager for DiskKeyManager {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<AgentKey, KeyManagerError> {
        check_key_id(id)?;
        let key = Arc::new(generate_blocking(key_type).await?);
        let mut keys = self.keys.lock().await;
        let mut next = keys.clone();
        next.insert(id.to_owned(), Arc::clone(&key));
        let path = self.path.clone();
        let next = tokio::task::spawn_blocking(move || write_keys(&path, &next).map(|()| next))
            .await
            .map_err(|e| {
                KeyManagerError::Io(format!("keymanager(disk): write task failed: {e}"))
            })??;
        // Only a key that reached the disk is used: an SVID for a key lost on restart
        // would force a re-attestation a join token cannot do.
        *keys = next;
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
