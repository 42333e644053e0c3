//! The `sshpop` node attestor (agent side): presents the node's OpenSSH host certificate and
//! signs the server's challenge with the host key, as upstream
//! (`doc/plugin_agent_nodeattestor_sshpop.md`). The files are read again for every
//! attestation, so a renewed host certificate is used when the agent re-attests.

use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use spire_core::sshpop::{self as pop, Client};

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = pop::PLUGIN_NAME;

/// `plugin_data` of `NodeAttestor "sshpop"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPopConfig {
    /// `host_key_path` (default `/etc/ssh/ssh_host_rsa_key`).
    pub host_key_path: PathBuf,
    /// `host_cert_path` (default `/etc/ssh/ssh_host_rsa_key-cert.pub`).
    pub host_cert_path: PathBuf,
}

/// Presents the host certificate and answers the challenge with the host key.
#[derive(Debug)]
pub struct SshPopAttestor {
    config: SshPopConfig,
    client: Mutex<Option<Client>>,
}

impl SshPopAttestor {
    /// An attestor with validated settings.
    pub fn new(config: SshPopConfig) -> Self {
        Self {
            config,
            client: Mutex::new(None),
        }
    }

    /// Reads the host key and certificate.
    pub fn load(&self) -> Result<Client, PluginError> {
        let err = |m: String| PluginError::new(NAME, m);
        let key = std::fs::read(&self.config.host_key_path).map_err(|e| {
            err(format!(
                "failed to read host key file: {}: {e}",
                self.config.host_key_path.display()
            ))
        })?;
        let cert = std::fs::read(&self.config.host_cert_path).map_err(|e| {
            err(format!(
                "failed to read host cert file: {}: {e}",
                self.config.host_cert_path.display()
            ))
        })?;
        Client::new(&key, &cert)
            .map_err(|e| err(format!("failed to get cert and signer from pem: {e}")))
    }
}

#[async_trait]
impl NodeAttestor for SshPopAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let client = self.load()?;
        let payload = client
            .attestation_data()
            .map_err(|e| PluginError::new(NAME, e.to_string()))?;
        if let Ok(mut slot) = self.client.lock() {
            *slot = Some(client);
        }
        Ok(payload)
    }

    async fn challenge_response(&self, challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        let err = |m: String| PluginError::new(NAME, m);
        let slot = self
            .client
            .lock()
            .map_err(|_| err("client store poisoned".into()))?;
        let Some(client) = slot.as_ref() else {
            return Err(err(
                "client must provide attestation data to respond to challenge".into(),
            ));
        };
        client.respond(challenge).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's sshpop fixtures, kept in spire-core.
    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../spire-core/src/testdata/sshpop")
            .join(name)
    }

    #[tokio::test]
    async fn presents_the_host_certificate_and_signs_challenges() {
        let attestor = SshPopAttestor::new(SshPopConfig {
            host_key_path: fixture("dummy_agent_ssh_key"),
            host_cert_path: fixture("dummy_agent_ssh_key-cert.pub"),
        });
        assert!(attestor.challenge_response(b"{}").await.is_err());
        let data: serde_json::Value =
            serde_json::from_slice(&attestor.attestation_data().await.unwrap()).unwrap();
        assert!(data["Certificate"].is_string(), "{data}");
        let answer = attestor
            .challenge_response(br#"{"Nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#)
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["Signature"]["Format"], "ssh-ed25519", "{answer}");
        let err = attestor
            .challenge_response(br#"{"Nonce":"AAAA"}"#)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid challenge nonce"), "{err}");
    }

    #[tokio::test]
    async fn missing_or_swapped_files_are_errors() {
        let attestor = SshPopAttestor::new(SshPopConfig {
            host_key_path: PathBuf::from("/nonexistent/ssh_host_rsa_key"),
            host_cert_path: fixture("dummy_agent_ssh_key-cert.pub"),
        });
        let err = attestor.attestation_data().await.unwrap_err().to_string();
        assert!(err.contains("failed to read host key file"), "{err}");
        let swapped = SshPopAttestor::new(SshPopConfig {
            host_key_path: fixture("dummy_agent_ssh_key-cert.pub"),
            host_cert_path: fixture("dummy_agent_ssh_key"),
        });
        assert!(swapped.attestation_data().await.is_err());
    }
}
