//! The key handle a KeyManager hands out: key material in this process (memory, disk), which
//! signs inline with no round trip, or a key held elsewhere (AWS KMS, an external plugin),
//! which signs a digest through its KeyManager over the network.
//!
//! The CA signs many X509-SVIDs with the active key, so the in-process case stays a plain
//! [`PrivateKey`] and never goes through the async remote path. A remote signature counts
//! in upstream's `server_key_manager_sign_data` call counter.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey, PublicKey, SignatureScheme};

use super::KeyManagerError;

/// How long one remote signature may take before the CA gives up (upstream's plugin RPC
/// timeout), so a hung KMS or plugin gives an error instead of a stuck signing path.
pub const REMOTE_SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// Signs with keys held outside this process, by key ID.
#[async_trait]
pub trait RemoteSigner: Send + Sync + 'static {
    /// Signs `message` with the key under `key_id` using `scheme` (the signer sends the
    /// message or its `scheme.hash` digest, whichever its service takes); ECDSA signatures
    /// are ASN.1 DER. Returns the signature and the fingerprint of the key that made it, so
    /// a key replaced under the same ID is noticed.
    async fn sign(
        &self,
        key_id: &str,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<(Vec<u8>, String), KeyManagerError>;
}

/// A key held outside this process: its ID, public key and fingerprint, and who signs.
#[derive(Clone)]
pub struct RemoteKey {
    id: String,
    public: PublicKey,
    fingerprint: String,
    signer: Arc<dyn RemoteSigner>,
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKey")
            .field("id", &self.id)
            .field("key_type", &self.public.key_type())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl RemoteKey {
    /// A handle on the key `id` whose public key is `public`; `fingerprint` is what the
    /// signer reports with every signature of this key (may be empty when it reports none).
    pub fn new(
        id: impl Into<String>,
        public: PublicKey,
        fingerprint: impl Into<String>,
        signer: Arc<dyn RemoteSigner>,
    ) -> Self {
        Self {
            id: id.into(),
            public,
            fingerprint: fingerprint.into(),
            signer,
        }
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Has the remote key sign `message`, within [`REMOTE_SIGN_TIMEOUT`].
    pub async fn sign(
        &self,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<Vec<u8>, KeyManagerError> {
        let started = std::time::Instant::now();
        let signed = tokio::time::timeout(
            REMOTE_SIGN_TIMEOUT,
            self.signer.sign(&self.id, message, scheme),
        )
        .await
        .map_err(|_| {
            KeyManagerError::Key(format!(
                "signing with key {:?} timed out after {REMOTE_SIGN_TIMEOUT:?}",
                self.id
            ))
        })
        .and_then(|signed| signed);
        // Upstream's `server_key_manager_sign_data` call counter around the plugin call.
        spire_common::telemetry::server::key_manager_call("sign_data", signed.is_ok(), started);
        let (signature, fingerprint) = signed?;
        if signature.is_empty() {
            return Err(KeyManagerError::Key(format!(
                "key manager returned an empty signature for key {:?}",
                self.id
            )));
        }
        if fingerprint != self.fingerprint {
            return Err(KeyManagerError::Key(format!(
                "fingerprint {:?} on key {:?} does not match {fingerprint:?}",
                self.fingerprint, self.id
            )));
        }
        Ok(signature)
    }
}

/// A key from the KeyManager.
#[derive(Clone, Debug)]
pub enum SigningKey {
    /// Key material in this process: signs inline.
    Local(Arc<PrivateKey>),
    /// A key held elsewhere: signs through its KeyManager.
    Remote(RemoteKey),
}

impl From<Arc<PrivateKey>> for SigningKey {
    fn from(key: Arc<PrivateKey>) -> Self {
        Self::Local(key)
    }
}

impl SigningKey {
    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        match self {
            Self::Local(key) => key.public_key_der(),
            Self::Remote(key) => key.public.spki_der().to_vec(),
        }
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Local(key) => key.key_type(),
            Self::Remote(key) => key.public.key_type(),
        }
    }

    /// The key in process, if it is one.
    pub fn local(&self) -> Option<&Arc<PrivateKey>> {
        match self {
            Self::Local(key) => Some(key),
            Self::Remote(_) => None,
        }
    }
}
