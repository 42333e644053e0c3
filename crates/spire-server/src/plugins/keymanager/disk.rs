//! The `disk` KeyManager: keys persist in one JSON file so a restarted server keeps its CA.
//!
//! The file is upstream's: `{"keys": {"<key id>": "<base64 PKCS#8 DER>", ...}}`, indented
//! with tabs, keys sorted by ID, written atomically (temporary file, fsync, rename) with
//! mode 0600. A file written by upstream SPIRE loads here and the other way round.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use spire_common::fs::atomic_write_private;
use spire_core::keys::{KeyType, PrivateKey};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

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
    path: PathBuf,
    keys: Mutex<HashMap<String, Arc<PrivateKey>>>,
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

fn load_keys(path: &Path) -> Result<HashMap<String, Arc<PrivateKey>>, KeyManagerError> {
    let text = match std::fs::read(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
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
    let mut keys = HashMap::with_capacity(file.keys.len());
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
fn write_keys(path: &Path, keys: &HashMap<String, Arc<PrivateKey>>) -> Result<(), KeyManagerError> {
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

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
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
        // Only a key that reached the disk is used: the CA must not sign with a key that
        // would be lost on restart.
        *keys = next;
        Ok(SigningKey::Local(key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        Ok(self
            .keys
            .lock()
            .await
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
