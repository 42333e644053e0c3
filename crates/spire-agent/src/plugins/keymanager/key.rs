//! The agent SVID key as the rest of the agent uses it: key material in this process (the
//! `memory` and `disk` KeyManagers), or a key held by an external KeyManager plugin, which
//! signs the agent's CSRs and TLS handshakes itself.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use spire_common::plugin_host::keymanager::PluginKey;
use spire_core::keys::PrivateKey;

use super::KeyManagerError;

/// A key from the agent's KeyManager.
#[derive(Clone, Debug)]
pub enum AgentKey {
    /// Key material in this process.
    Local(Arc<PrivateKey>),
    /// A key in a KeyManager plugin: signs through it.
    Plugin(PluginKey),
}

impl From<Arc<PrivateKey>> for AgentKey {
    fn from(key: Arc<PrivateKey>) -> Self {
        Self::Local(key)
    }
}

impl AgentKey {
    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        match self {
            Self::Local(key) => key.public_key_der(),
            Self::Plugin(key) => key.public_key().spki_der().to_vec(),
        }
    }

    /// The key material, when it is in this process.
    pub fn local(&self) -> Option<&Arc<PrivateKey>> {
        match self {
            Self::Local(key) => Some(key),
            Self::Plugin(_) => None,
        }
    }

    /// A CSR for this key with an empty subject, what the server mints agent SVIDs from.
    pub async fn csr_der(&self) -> Result<Vec<u8>, KeyManagerError> {
        let fail = |e: spire_core::x509::X509Error| KeyManagerError::Key(e.to_string());
        match self {
            Self::Local(key) => spire_core::x509::csr_der(key).map_err(fail),
            Self::Plugin(key) => {
                let unsigned = spire_core::x509::csr_unsigned(key.public_key()).map_err(fail)?;
                let scheme = key.public_key().key_type().x509_scheme();
                let signature = key
                    .sign(unsigned.tbs(), scheme)
                    .await
                    .map_err(|e| KeyManagerError::Key(e.to_string()))?;
                Ok(unsigned.assemble(&signature))
            }
        }
    }

    /// The key as rustls signs TLS handshakes with it.
    pub fn tls_signing_key(&self) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
        match self {
            Self::Local(key) => spire_common::tls::provider()
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    key.pkcs8_der().to_vec(),
                )))
                .map_err(|e| e.to_string()),
            Self::Plugin(key) => Ok(key.tls_signing_key()),
        }
    }
}
