//! The `aws_iid` node attestor (agent side): reads the instance identity document, its
//! legacy `signature` and its `rsa2048` PKCS#7 signature from the EC2 instance metadata
//! service (IMDSv2 token first, IMDSv1 fallback) and sends them as upstream's agent does,
//! `{"document":..,"signature":..,"rsa2048":..}`. `ec2_metadata_endpoint` overrides the
//! service's address (upstream's key; `AWS_EC2_METADATA_SERVICE_ENDPOINT` also works).

use async_trait::async_trait;
use spire_common::aws::Imds;
use spire_common::aws::iid::{IidAttestationData, PLUGIN_NAME};

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = PLUGIN_NAME;

/// `plugin_data` of `NodeAttestor "aws_iid"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsIidConfig {
    /// `ec2_metadata_endpoint`; empty: the environment or the link-local default.
    pub ec2_metadata_endpoint: String,
}

/// Presents the instance identity document.
#[derive(Debug, Clone)]
pub struct AwsIidAttestor {
    imds: Imds,
}

impl AwsIidAttestor {
    /// An attestor with validated settings.
    pub fn new(config: &AwsIidConfig) -> Self {
        Self {
            imds: Imds::new(&config.ec2_metadata_endpoint),
        }
    }
}

#[async_trait]
impl NodeAttestor for AwsIidAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let fetch = |path: &'static str| async move {
            self.imds
                .get(&format!("dynamic/instance-identity/{path}"))
                .await
                .map_err(|e| PluginError::new(NAME, e.to_string()))
        };
        let data = IidAttestationData {
            document: fetch("document").await?,
            signature: fetch("signature").await?,
            signature_rsa2048: fetch("rsa2048").await?,
        };
        serde_json::to_vec(&data)
            .map_err(|e| PluginError::new(NAME, format!("unable to marshal attestation data: {e}")))
    }

    async fn challenge_response(&self, _challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::new(NAME, "server issued unexpected challenge"))
    }
}
