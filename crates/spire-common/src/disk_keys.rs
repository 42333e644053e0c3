//! The keys of `KeyManager "disk"`, server's and agent's alike: kept in memory and mirrored
//! to upstream's key file, so a restarted server keeps its CA and a restarted agent the key
//! of its SVID.
//!
//! The file is upstream's: `{"keys": {"<key id>": "<base64 PKCS#8 DER>", ...}}`, keys
//! sorted by ID, indented with tabs (`json.MarshalIndent(data, "", "\t")`), written
//! atomically (temporary file, fsync, rename) with mode 0600. A file written by upstream
//! loads here and the other way round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use spire_core::keys::PrivateKey;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::fs::atomic_write_private;

/// Why the key file could not be used; each plugin maps it onto its own error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKeysError {
    /// The file could not be read or written.
    Io(String),
    /// The file, or a key in it, is not usable.
    Key(String),
}

/// The file layout, as upstream's `entriesData`.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// Key ID to base64 (standard, padded) PKCS#8 DER, as Go encodes `[]byte`.
    keys: BTreeMap<String, String>,
}

type Keys = BTreeMap<String, Arc<PrivateKey>>;

/// The keys by ID and the file they are mirrored to.
#[derive(Debug)]
pub struct DiskKeys {
    path: PathBuf,
    keys: Mutex<Keys>,
}

impl DiskKeys {
    /// Loads the keys in `path`; a missing file means no keys yet (it is created with the
    /// first key).
    pub fn open(path: PathBuf) -> Result<Self, DiskKeysError> {
        let keys = load(&path)?;
        Ok(Self {
            path,
            keys: Mutex::new(keys),
        })
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `key` under `id` (replacing one with that ID) and returns once the file holds
    /// it: a key that would be lost on restart is never handed out (a CA signing with it, or
    /// an agent SVID that a single-use join token could not attest again).
    pub async fn insert(&self, id: &str, key: Arc<PrivateKey>) -> Result<(), DiskKeysError> {
        let mut keys = self.keys.lock().await;
        let mut next = keys.clone();
        next.insert(id.to_owned(), key);
        let path = self.path.clone();
        let next = tokio::task::spawn_blocking(move || save(&path, &next).map(|()| next))
            .await
            .map_err(|e| {
                DiskKeysError::Io(format!("keymanager(disk): write task failed: {e}"))
            })??;
        *keys = next;
        Ok(())
    }

    /// The key with this ID.
    pub async fn get(&self, id: &str) -> Option<Arc<PrivateKey>> {
        self.keys.lock().await.get(id).cloned()
    }

    /// Every key, by ID.
    pub async fn all(&self) -> Vec<(String, Arc<PrivateKey>)> {
        self.keys
            .lock()
            .await
            .iter()
            .map(|(id, key)| (id.clone(), Arc::clone(key)))
            .collect()
    }
}

fn load(path: &Path) -> Result<Keys, DiskKeysError> {
    let text = match std::fs::read(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Keys::new()),
        Err(e) => {
            return Err(DiskKeysError::Io(format!(
                "keymanager(disk): cannot read key file {}: {e}",
                path.display()
            )));
        }
    };
    let file: KeyFile = serde_json::from_slice(&text).map_err(|e| {
        DiskKeysError::Key(format!(
            "keymanager(disk): key file {} is not valid keys JSON: {e}",
            path.display()
        ))
    })?;
    let mut keys = Keys::new();
    for (id, encoded) in file.keys {
        let bad = |reason: String| {
            DiskKeysError::Key(format!(
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

/// Writes the key file as upstream does, atomically and readable by the owner only.
fn save(path: &Path, keys: &Keys) -> Result<(), DiskKeysError> {
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
        .map_err(|e| DiskKeysError::Io(format!("keymanager(disk): cannot encode keys: {e}")))?;
    drop(file);
    atomic_write_private(path, &json).map_err(|e| {
        DiskKeysError::Io(format!(
            "keymanager(disk): cannot write key file {}: {e}",
            path.display()
        ))
    })
}
