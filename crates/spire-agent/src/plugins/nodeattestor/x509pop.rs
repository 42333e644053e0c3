//! The `x509pop` node attestor (agent side): presents the node's X.509 certificate chain,
//! `{"certificates":[..]}`, and proves possession of its private key by signing the server's
//! challenge (RSA-PSS or ECDSA, as upstream). The files are read again for every attestation,
//! so a renewed certificate is used when the agent re-attests. Keys are upstream's
//! (`doc/plugin_agent_nodeattestor_x509pop.md`).

use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use spire_core::x509pop::{self as pop, AttestationData, Challenge, SigningKey};

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = pop::PLUGIN_NAME;

/// `plugin_data` of `NodeAttestor "x509pop"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509PopConfig {
    /// `private_key_path`: PEM PKCS#1, SEC1 or PKCS#8 key of the certificate.
    pub private_key_path: PathBuf,
    /// `certificate_path`: PEM certificate, optionally followed by intermediates.
    pub certificate_path: PathBuf,
    /// `intermediates_path`: more PEM intermediates, appended after those.
    pub intermediates_path: Option<PathBuf>,
}

/// Presents the certificate and answers the proof-of-possession challenge.
#[derive(Debug)]
pub struct X509PopAttestor {
    config: X509PopConfig,
    /// The key loaded with the last attestation data, for the challenge that follows.
    key: Mutex<Option<SigningKey>>,
}

impl X509PopAttestor {
    /// An attestor with validated settings.
    pub fn new(config: X509PopConfig) -> Self {
        Self {
            config,
            key: Mutex::new(None),
        }
    }

    /// Reads the chain and key (upstream's `loadConfigData`).
    pub fn load(&self) -> Result<(Vec<u8>, SigningKey), PluginError> {
        let err = |m: String| PluginError::new(NAME, m);
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| err(format!("unable to load keypair: {}: {e}", path.display())))
        };
        let cert_pem = read(&self.config.certificate_path)?;
        let key_pem = read(&self.config.private_key_path)?;
        let mut certificates = spire_core::pem::decode_certificates(&cert_pem)
            .map_err(|e| err(format!("unable to load keypair: {e}")))?;
        let Some(leaf) = certificates.first() else {
            return Err(err(format!(
                "unable to load keypair: no certificate PEM block in {}",
                self.config.certificate_path.display()
            )));
        };
        let key = SigningKey::from_pem(&key_pem, leaf)
            .map_err(|e| err(format!("unable to load keypair: {e}")))?;
        if let Some(path) = self
            .config
            .intermediates_path
            .as_ref()
            .filter(|p| !p.as_os_str().to_string_lossy().trim().is_empty())
        {
            let text = std::fs::read(path).map_err(|e| {
                err(format!(
                    "unable to load intermediate certificates: {}: {e}",
                    path.display()
                ))
            })?;
            let more = spire_core::pem::decode_certificates(&text)
                .map_err(|e| err(format!("unable to load intermediate certificates: {e}")))?;
            certificates.extend(more);
        }
        let payload = serde_json::to_vec(&AttestationData { certificates })
            .map_err(|e| err(format!("unable to marshal attestation data: {e}")))?;
        Ok((payload, key))
    }
}

#[async_trait]
impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let (payload, key) = self.load()?;
        if let Ok(mut slot) = self.key.lock() {
            *slot = Some(key);
        }
        Ok(payload)
    }

    async fn challenge_response(&self, challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        let err = |m: String| PluginError::new(NAME, m);
        let challenge: Challenge = serde_json::from_slice(challenge)
            .map_err(|e| err(format!("unable to unmarshal challenge: {e}")))?;
        let response = {
            let slot = self
                .key
                .lock()
                .map_err(|_| err("key store poisoned".into()))?;
            let Some(key) = slot.as_ref() else {
                return Err(err("challenge received before attestation data".into()));
            };
            key.respond(&challenge)
                .map_err(|e| err(format!("failed to calculate challenge response: {e}")))?
        };
        serde_json::to_vec(&response)
            .map_err(|e| err(format!("unable to marshal challenge response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use spire_core::keys::{KeyType, PrivateKey};
    use spire_core::spiffe_id::TrustDomain;
    use spire_core::x509::{CaTemplate, Validity, self_signed_ca};
    use spire_core::x509pop::{NonceChallenge, Response};

    use super::*;

    fn write_cert(
        dir: &std::path::Path,
        name: &str,
        key_type: KeyType,
    ) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = PrivateKey::generate(key_type).unwrap();
        let validity =
            Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(1));
        let der = self_signed_ca(
            &key,
            &CaTemplate::new(TrustDomain::new("example.org").unwrap(), validity),
        )
        .unwrap();
        let cert = dir.join(format!("{name}.crt.pem"));
        let key_path = dir.join(format!("{name}.key.pem"));
        std::fs::write(
            &cert,
            spire_core::pem::encode_certificates([der.as_slice()]),
        )
        .unwrap();
        std::fs::write(&key_path, key.to_pem().as_bytes()).unwrap();
        (cert, key_path, der)
    }

    #[tokio::test]
    async fn presents_the_chain_and_answers_with_the_certificates_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, leaf) = write_cert(dir.path(), "node", KeyType::EcP256);
        let (intermediate, _, intermediate_der) = write_cert(dir.path(), "ca", KeyType::EcP256);
        let attestor = X509PopAttestor::new(X509PopConfig {
            private_key_path: key,
            certificate_path: cert,
            intermediates_path: Some(intermediate),
        });
        assert!(
            attestor.challenge_response(b"{}").await.is_err(),
            "no challenge before the data"
        );
        let data: AttestationData =
            serde_json::from_slice(&attestor.attestation_data().await.unwrap()).unwrap();
        assert_eq!(data.certificates, vec![leaf.clone(), intermediate_der]);

        let challenge = Challenge {
            rsa_signature: None,
            ecdsa_signature: Some(NonceChallenge { nonce: vec![7; 32] }),
        };
        let answer = attestor
            .challenge_response(&serde_json::to_vec(&challenge).unwrap())
            .await
            .unwrap();
        let response: Response = serde_json::from_slice(&answer).unwrap();
        pop::verify_response(&leaf, &challenge, &response).unwrap();

        // An RSA challenge for an EC key, and garbage, are refused.
        let rsa = Challenge {
            rsa_signature: Some(NonceChallenge { nonce: vec![7; 32] }),
            ecdsa_signature: None,
        };
        let err = attestor
            .challenge_response(&serde_json::to_vec(&rsa).unwrap())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("expecting ECDSA challenge"),
            "{err}"
        );
        assert!(attestor.challenge_response(b"nope").await.is_err());
    }

    #[tokio::test]
    async fn a_key_of_another_certificate_or_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = write_cert(dir.path(), "node", KeyType::Rsa2048);
        let (_, other_key, _) = write_cert(dir.path(), "other", KeyType::Rsa2048);
        let attestor = X509PopAttestor::new(X509PopConfig {
            private_key_path: other_key,
            certificate_path: cert.clone(),
            intermediates_path: None,
        });
        let err = attestor.attestation_data().await.unwrap_err().to_string();
        assert_eq!(
            err,
            "nodeattestor(x509pop): unable to load keypair: private key does not match public key"
        );
        let attestor = X509PopAttestor::new(X509PopConfig {
            private_key_path: dir.path().join("missing.pem"),
            certificate_path: cert,
            intermediates_path: None,
        });
        let err = attestor.attestation_data().await.unwrap_err().to_string();
        assert!(
            err.contains("unable to load keypair") && err.contains("missing.pem"),
            "{err}"
        );
    }
}
