//! Agent-side NodeAttestor plugins: each produces the attestation data for its type and
//! answers the server's challenges; `attestation::attest` drives the `AttestAgent` stream.
//! One file per implementation, chosen by name in `config/plugins.rs`.

use async_trait::async_trait;

pub mod aws_iid;
pub mod azure_imds;
pub mod azure_msi;
pub mod external;
pub mod gcp_iit;
pub mod join_token;
pub mod k8s_psat;
pub mod sshpop;
pub mod x509pop;

/// Why a plugin could not produce attestation data or a challenge response, worded for the
/// operator (the file or setting to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nodeattestor({plugin}): {message}")]
pub struct PluginError {
    /// The plugin's name.
    pub plugin: &'static str,
    /// What went wrong.
    pub message: String,
}

impl PluginError {
    /// An error of `plugin` (`nodeattestor(<plugin>): <message>`, as upstream's host words
    /// plugin errors).
    pub fn new(plugin: &'static str, message: impl Into<String>) -> Self {
        Self {
            plugin,
            message: message.into(),
        }
    }
}

/// A node attestor: how this node proves its identity to the server.
#[async_trait]
pub trait NodeAttestor: Send + Sync + std::fmt::Debug {
    /// The plugin name: the attestation data type and the agent ID's attestor segment.
    fn name(&self) -> &str;

    /// The attestation payload, made anew for every attestation (a rotated token file is
    /// read again for a re-attestation).
    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError>;

    /// The response to a server challenge; attestors that expect none refuse it.
    async fn challenge_response(&self, challenge: &[u8]) -> Result<Vec<u8>, PluginError>;
}
