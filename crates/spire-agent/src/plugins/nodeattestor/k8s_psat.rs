//! The `k8s_psat` node attestor (agent side): presents the pod's projected service account
//! token, `{"cluster":"<cluster>","token":"<token>"}`, read from `token_path` again for every
//! attestation, so re-attestation uses the kubelet's latest token. Keys are upstream's
//! (`doc/plugin_agent_nodeattestor_k8s_psat.md`).

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = "k8s_psat";

/// Where the projected token is mounted unless `token_path` says otherwise.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// `plugin_data` of `NodeAttestor "k8s_psat"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatConfig {
    /// `cluster`: the name the server's `clusters` block knows this cluster by.
    pub cluster: String,
    /// `token_path`: the projected service account token file.
    pub token_path: PathBuf,
}

/// Presents the projected service account token.
#[derive(Debug, Clone)]
pub struct K8sPsatAttestor {
    config: K8sPsatConfig,
}

impl K8sPsatAttestor {
    /// An attestor with validated settings.
    pub fn new(config: K8sPsatConfig) -> Self {
        Self { config }
    }
}

/// The payload, in upstream's field order.
#[derive(Serialize)]
struct Payload<'a> {
    cluster: &'a str,
    token: &'a str,
}

#[async_trait]
impl NodeAttestor for K8sPsatAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let path = &self.config.token_path;
        let unable = |reason: String| {
            PluginError::new(
                NAME,
                format!("unable to load token from {}: {reason}", path.display()),
            )
        };
        // As upstream, the file is sent as it is (no trimming).
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| unable(e.to_string()))?;
        if token.is_empty() {
            return Err(unable(format!("{:?} is empty", path.display().to_string())));
        }
        serde_json::to_vec(&Payload {
            cluster: &self.config.cluster,
            token: &token,
        })
        .map_err(|e| PluginError::new(NAME, format!("unable to marshal PSAT token data: {e}")))
    }

    async fn challenge_response(&self, _challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::new(NAME, "server issued unexpected challenge"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_file_is_read_for_every_attestation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let attestor = K8sPsatAttestor::new(K8sPsatConfig {
            cluster: "prod".into(),
            token_path: path.clone(),
        });
        let err = attestor.attestation_data().await.unwrap_err().to_string();
        assert!(
            err.starts_with("nodeattestor(k8s_psat): unable to load token from ")
                && err.contains("token"),
            "{err}"
        );
        std::fs::write(&path, "").unwrap();
        let err = attestor.attestation_data().await.unwrap_err().to_string();
        assert!(err.ends_with("is empty"), "{err}");
        std::fs::write(&path, "first.jwt\n").unwrap();
        assert_eq!(
            attestor.attestation_data().await.unwrap(),
            br#"{"cluster":"prod","token":"first.jwt\n"}"#
        );
        std::fs::write(&path, "second.jwt").unwrap();
        assert_eq!(
            attestor.attestation_data().await.unwrap(),
            br#"{"cluster":"prod","token":"second.jwt"}"#
        );
        assert!(attestor.challenge_response(b"x").await.is_err());
    }
}
