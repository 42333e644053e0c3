//! An external KeyManager (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.keymanager.v1.KeyManager`. Keys stay in the plugin; the CA signs
//! through `SignData` with the digest and its hash (or PSS options), and checks that the
//! fingerprint the plugin reports is the one of the key it was handed, as upstream's host.
//!
//! Every call is bounded (upstream's 30 s plugin RPC timeout), so a plugin that hangs or dies
//! gives the signing path an error instead of a stuck request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_core::keys::{HashAlgorithm, KeyType, PublicKey, SignatureScheme};
use spire_proto::spire::plugin::server::keymanager::v1 as pb;

use super::{KeyManager, KeyManagerError, RemoteKey, RemoteSigner, SigningKey};

/// The gRPC service a server KeyManager plugin implements.
pub const SERVICE: &str = "spire.plugin.server.keymanager.v1.KeyManager";

/// Upstream's timeout of one KeyManager plugin call.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A loaded external KeyManager.
pub struct ExternalKeyManager {
    name: &'static str,
    plugin: Arc<Plugin>,
}

/// The plugin behind the manager and its keys' signer.
struct Plugin(Arc<LoadedPlugin>);

impl std::fmt::Debug for ExternalKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalKeyManager")
            .field("name", &self.name)
            .finish()
    }
}

impl ExternalKeyManager {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: the trait returns a
    /// `&'static str`, and a server has one KeyManager.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin: Arc::new(Plugin(plugin)),
        }
    }

    fn key(&self, id: &str, public: Option<pb::PublicKey>) -> Result<SigningKey, KeyManagerError> {
        let fail = |m: String| self.plugin.error(m);
        let public = public.ok_or_else(|| fail(format!("plugin response empty for key {id:?}")))?;
        if public.id != id {
            return Err(fail(format!(
                "plugin response has unexpected key id {:?} for key {id:?}",
                public.id
            )));
        }
        if public.pkix_data.is_empty() {
            return Err(fail(format!(
                "plugin response missing public key PKIX data for key {id:?}"
            )));
        }
        let key = PublicKey::from_spki_der(&public.pkix_data).map_err(|e| {
            fail(format!(
                "unable to parse public key PKIX data for key {id:?}: {e}"
            ))
        })?;
        Ok(SigningKey::Remote(RemoteKey::new(
            id,
            key,
            public.fingerprint,
            Arc::clone(&self.plugin) as Arc<dyn RemoteSigner>,
        )))
    }
}

impl Plugin {
    fn client(&self) -> pb::key_manager_client::KeyManagerClient<tonic::transport::Channel> {
        pb::key_manager_client::KeyManagerClient::new(self.0.channel())
    }

    fn error(&self, message: impl std::fmt::Display) -> KeyManagerError {
        KeyManagerError::Key(format!("keymanager({}): {message}", self.0.name()))
    }

    /// A failed call; when the plugin process is gone, says so with its exit status.
    fn call_error(&self, what: &str, status: &tonic::Status) -> KeyManagerError {
        match self.0.exit_status() {
            Some(exit) => self.error(format!(
                "{what}: plugin exited ({exit}): {}",
                status.message()
            )),
            None => self.error(format!("{what}: {}", status.message())),
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, KeyManagerError> {
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.call_error(what, &status)),
            Err(_) => Err(self.error(format!("{what}: timed out after {RPC_TIMEOUT:?}"))),
        }
    }
}

fn key_type(t: KeyType) -> pb::KeyType {
    match t {
        KeyType::EcP256 => pb::KeyType::EcP256,
        KeyType::EcP384 => pb::KeyType::EcP384,
        KeyType::Rsa2048 => pb::KeyType::Rsa2048,
        KeyType::Rsa4096 => pb::KeyType::Rsa4096,
    }
}

fn hash_algorithm(h: HashAlgorithm) -> pb::HashAlgorithm {
    match h {
        HashAlgorithm::Sha256 => pb::HashAlgorithm::Sha256,
        HashAlgorithm::Sha384 => pb::HashAlgorithm::Sha384,
        HashAlgorithm::Sha512 => pb::HashAlgorithm::Sha512,
    }
}

/// The SignerOpts of a scheme: the hash, or PSS options with the salt as long as the hash
/// (Go's `rsa.PSSSaltLengthEqualsHash`, -1).
fn signer_opts(scheme: SignatureScheme) -> pb::sign_data_request::SignerOpts {
    let hash = hash_algorithm(scheme.hash) as i32;
    if scheme.pss {
        pb::sign_data_request::SignerOpts::PssOptions(pb::sign_data_request::PssOptions {
            salt_length: -1,
            hash_algorithm: hash,
        })
    } else {
        pb::sign_data_request::SignerOpts::HashAlgorithm(hash)
    }
}

#[async_trait]
impl RemoteSigner for Plugin {
    async fn sign(
        &self,
        key_id: &str,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<(Vec<u8>, String), KeyManagerError> {
        // The plugin protocol carries the digest, as Go's crypto.Signer takes it.
        let request = pb::SignDataRequest {
            key_id: key_id.to_owned(),
            data: scheme.hash.digest(message),
            signer_opts: Some(signer_opts(scheme)),
        };
        let mut client = self.client();
        let response = self
            .bounded("failed to sign", client.sign_data(request))
            .await?;
        Ok((response.signature, response.key_fingerprint))
    }
}

#[async_trait]
impl KeyManager for ExternalKeyManager {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type_: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
        let request = pb::GenerateKeyRequest {
            key_id: id.to_owned(),
            key_type: key_type(key_type_) as i32,
        };
        let mut client = self.plugin.client();
        let response = self
            .plugin
            .bounded("failed to generate key", client.generate_key(request))
            .await?;
        self.key(id, response.public_key)
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        let request = pb::GetPublicKeyRequest {
            key_id: id.to_owned(),
        };
        let mut client = self.plugin.client();
        let call = client.get_public_key(request);
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(response)) => match response.into_inner().public_key {
                None => Ok(None),
                Some(public) => self.key(id, Some(public)).map(Some),
            },
            // Upstream's built-ins answer NotFound for a key they do not have.
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            Ok(Err(status)) => Err(self.plugin.call_error("failed to get public key", &status)),
            Err(_) => Err(self.plugin.error(format!(
                "failed to get public key: timed out after {RPC_TIMEOUT:?}"
            ))),
        }
    }
}
