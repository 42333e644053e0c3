//! The agent's `data_dir` state, in upstream's file format so an agent node can swap
//! upstream `spire-agent` for ours (and back) without attesting again.
//!
//! Upstream (v1.9+) keeps one file, `<data_dir>/agent-data.json`:
//! `{"svid":[<PEM>...],"bundle":[<PEM>...],"reattestable":false}` where each element is a
//! Go `[]byte` holding one PEM `CERTIFICATE` block, so it appears base64-encoded in the
//! JSON; an empty list is written as `null`. The file is replaced atomically with mode
//! 0600. The agent SVID's private key is not here: it lives in the KeyManager.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use spire_common::fs::atomic_write_private;

/// The file's name inside `data_dir`, as upstream names it.
pub const AGENT_DATA_FILE: &str = "agent-data.json";

/// Why the agent data could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The file or folder could not be read or written; names the path.
    #[error("agent data {path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file exists but is not upstream's agent data JSON.
    #[error("agent data {path} is corrupt ({reason}); remove it to attest again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the data directory holds: the agent SVID (leaf first) with its re-attestation flag
/// and the trust bundle's X.509 roots, each certificate as DER.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentData {
    /// The agent X509-SVID chain, leaf first; empty when none is stored.
    pub svid: Vec<Vec<u8>>,
    /// The trust bundle's X.509 authorities; empty when none is stored.
    pub bundle: Vec<Vec<u8>>,
    /// Whether the SVID came from an attestor that can attest again (upstream's flag).
    pub reattestable: bool,
}

/// The JSON layout, as upstream's `storageJSON`.
#[derive(Serialize, Deserialize, Default)]
struct DataJson {
    #[serde(default)]
    svid: Option<Vec<String>>,
    #[serde(default)]
    bundle: Option<Vec<String>>,
    #[serde(default)]
    reattestable: bool,
}

/// The agent's `data_dir` store; loads once and writes the whole file on every change.
#[derive(Debug)]
pub struct AgentStorage {
    dir: PathBuf,
    data: Mutex<AgentData>,
}

impl AgentStorage {
    /// Opens the store in `dir`, creating the folder (0750, as upstream) when missing and
    /// reading `agent-data.json` when present.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        spire_common::fs::create_dir(&dir, spire_common::fs::DATA_DIR_MODE).map_err(|e| {
            StorageError::Io {
                path: dir.clone(),
                reason: format!("cannot create the data directory: {e}"),
            }
        })?;
        let data = load(&dir.join(AGENT_DATA_FILE))?;
        Ok(Self {
            dir,
            data: Mutex::new(data),
        })
    }

    /// The path of `agent-data.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(AGENT_DATA_FILE)
    }

    /// Everything stored.
    pub fn load(&self) -> AgentData {
        self.lock().clone()
    }

    /// The stored agent SVID chain and its re-attestation flag, if any.
    pub fn load_svid(&self) -> Option<(Vec<Vec<u8>>, bool)> {
        let data = self.lock();
        (!data.svid.is_empty()).then(|| (data.svid.clone(), data.reattestable))
    }

    /// The stored trust bundle roots, if any.
    pub fn load_bundle(&self) -> Option<Vec<Vec<u8>>> {
        let data = self.lock();
        (!data.bundle.is_empty()).then(|| data.bundle.clone())
    }

    /// Stores a new agent SVID chain (after attestation or renewal).
    pub fn store_svid(&self, chain: &[Vec<u8>], reattestable: bool) -> Result<(), StorageError> {
        self.update(|data| {
            data.svid = chain.to_vec();
            data.reattestable = reattestable;
        })
    }

    /// Forgets the agent SVID, so the next start attests again.
    pub fn delete_svid(&self) -> Result<(), StorageError> {
        self.update(|data| {
            data.svid.clear();
            data.reattestable = false;
        })
    }

    /// Stores the trust bundle's X.509 roots (after every bundle change).
    pub fn store_bundle(&self, roots: &[Vec<u8>]) -> Result<(), StorageError> {
        self.update(|data| data.bundle = roots.to_vec())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AgentData> {
        // A panic while holding the lock cannot leave `AgentData` half-updated: updates
        // are applied to a copy and swapped in.
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut AgentData)) -> Result<(), StorageError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        change(&mut next);
        let path = self.path();
        let json = encode(&next).map_err(|reason| StorageError::Io {
            path: path.clone(),
            reason,
        })?;
        atomic_write_private(&path, &json).map_err(|e| StorageError::Io {
            path: path.clone(),
            reason: format!("cannot write: {e}"),
        })?;
        *guard = next;
        Ok(())
    }
}

fn load(path: &Path) -> Result<AgentData, StorageError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentData::default()),
        Err(e) => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                reason: format!("cannot read: {e}"),
            });
        }
    };
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let json: DataJson =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("not agent data JSON: {e}")))?;
    let decode = |field: &str, items: Option<Vec<String>>| -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out = Vec::new();
        for (i, item) in items.unwrap_or_default().iter().enumerate() {
            let pem = STANDARD
                .decode(item.as_bytes())
                .map_err(|e| corrupt(format!("{field}[{i}] is not base64: {e}")))?;
            let mut ders = spire_core::pem::decode_certificates(&pem)
                .map_err(|e| corrupt(format!("{field}[{i}] is not a PEM certificate: {e}")))?;
            // Upstream's pemutil.ParseCertificate reads exactly one block.
            if ders.len() != 1 {
                return Err(corrupt(format!(
                    "{field}[{i}] holds {} certificates, expected 1",
                    ders.len()
                )));
            }
            let der = ders.remove(0);
            x509_parser::parse_x509_certificate(&der)
                .map_err(|e| corrupt(format!("{field}[{i}] is not a certificate: {e}")))?;
            out.push(der);
        }
        Ok(out)
    };
    Ok(AgentData {
        svid: decode("svid", json.svid)?,
        bundle: decode("bundle", json.bundle)?,
        reattestable: json.reattestable,
    })
}

/// Encodes as Go's `json.Marshal(storageJSON{...})`: compact, fields in upstream's order,
/// empty lists as `null`.
fn encode(data: &AgentData) -> Result<Vec<u8>, String> {
    let list = |ders: &[Vec<u8>]| {
        (!ders.is_empty()).then(|| {
            ders.iter()
                .map(|der| {
                    STANDARD.encode(spire_core::pem::encode(spire_core::pem::CERTIFICATE, der))
                })
                .collect()
        })
    };
    serde_json::to_vec(&DataJson {
        svid: list(&data.svid),
        bundle: list(&data.bundle),
        reattestable: data.reattestable,
    })
    .map_err(|e| format!("cannot encode: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn cert() -> Vec<u8> {
        let key =
            spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
        spire_core::x509::self_signed_ca(
            &key,
            &spire_core::x509::CaTemplate::new(
                spire_core::spiffe_id::TrustDomain::new("example.org").unwrap(),
                spire_core::x509::Validity::from_now(
                    time::OffsetDateTime::now_utc(),
                    time::Duration::hours(1),
                ),
            ),
        )
        .unwrap()
    }

    #[test]
    fn an_empty_store_writes_nulls_like_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AgentStorage::open(dir.path()).unwrap();
        assert_eq!(storage.load(), AgentData::default());
        storage.delete_svid().unwrap();
        let text = std::fs::read_to_string(storage.path()).unwrap();
        assert_eq!(text, r#"{"svid":null,"bundle":null,"reattestable":false}"#);
    }

    #[test]
    fn reads_a_file_in_upstreams_layout() {
        let dir = tempfile::tempdir().unwrap();
        let der = cert();
        let pem = spire_core::pem::encode("CERTIFICATE", &der);
        let text = format!(
            r#"{{"svid":["{}"],"bundle":["{}"],"reattestable":true}}"#,
            STANDARD.encode(&pem),
            STANDARD.encode(&pem)
        );
        std::fs::write(dir.path().join(AGENT_DATA_FILE), text).unwrap();
        let storage = AgentStorage::open(dir.path()).unwrap();
        assert_eq!(storage.load_svid(), Some((vec![der.clone()], true)));
        assert_eq!(storage.load_bundle(), Some(vec![der]));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(AGENT_DATA_FILE), r#"{"svid":["%%%"]}"#).unwrap();
        let err = AgentStorage::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("agent-data.json"), "{err}");
        assert!(err.contains("svid[0]"), "{err}");
    }
}
