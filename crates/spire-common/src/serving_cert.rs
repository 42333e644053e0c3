//! A TLS serving certificate read from PEM files (`serving_cert_file`), used by the federation
//! bundle endpoint's `https_web` profile and by the OIDC Discovery Provider. The chain and key
//! are read again when either file's modification time changes (checked every
//! `file_sync_interval`, as upstream's disk certificate manager does). A file that fails to
//! load keeps the previous certificate in service and is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// The certificate in service and the files it came from.
pub struct ServingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

impl std::fmt::Debug for ServingCert {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Loads the pair; an unreadable or mismatched pair is an error naming the files.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let loaded = load_pair(cert_file, key_file)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(loaded),
        }))
    }

    /// Re-reads the files every `interval` when they changed, until `cancel` fires.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        tracing::info!(
            interval_secs = interval.as_secs(),
            "Started watching certificate files"
        );
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.sync();
        }
    }

    /// Reloads the pair if either file's modification time changed.
    pub fn sync(&self) {
        let modified = (mtime(&self.cert_file), mtime(&self.key_file));
        if modified.0.is_none() || modified.1.is_none() {
            tracing::error!(
                cert_file = %self.cert_file.display(),
                key_file = %self.key_file.display(),
                "Failed to get file info; check that the certificate and key files still exist"
            );
            return;
        }
        if self.lock_read().modified == modified {
            return;
        }
        tracing::info!("File change detected, reloading certificate and key...");
        match load_pair(&self.cert_file, &self.key_file) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
                tracing::info!("Loaded provided certificate with success");
            }
            Err(e) => tracing::error!(error = %e, "Failed to load certificate"),
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lock_read().key.clone())
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Loaded, String> {
    let modified = (mtime(cert_file), mtime(key_file));
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read cert_file_path {}: {e}", cert_file.display()))?;
    let chain: Vec<CertificateDer<'static>> = spire_core::pem::decode_certificates(&cert_pem)
        .map_err(|e| format!("cert_file_path {}: {e}", cert_file.display()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if chain.is_empty() {
        return Err(format!(
            "cert_file_path {} holds no CERTIFICATE block",
            cert_file.display()
        ));
    }
    let key_pem = std::fs::read(key_file)
        .map_err(|e| format!("cannot read key_file_path {}: {e}", key_file.display()))?;
    let key = private_key(&key_pem)
        .ok_or_else(|| format!("key_file_path {} holds no private key", key_file.display()))?;
    let provider = crate::tls::provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "the key in {} does not fit the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        modified,
    })
}

/// The first private key block of a PEM file: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1.
fn private_key(pem_bytes: &[u8]) -> Option<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    PrivateKeyDer::from_pem_slice(pem_bytes).ok()
}
