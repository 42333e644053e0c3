//! The `azure_msi` node attestor (agent side): fetches a managed identity (MSI) access token
//! for `resource_id` from the Azure Instance Metadata Service and sends
//! `{"token":"<token>"}`. Keys and defaults are upstream's
//! (`doc/plugin_agent_nodeattestor_azure_msi.md`); `imds_endpoint` is ours: upstream always
//! asks `http://169.254.169.254`, which stays the default.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spire_common::cloud_http::{CloudHttpClient, url_encode};
use spire_core::config::de;

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = "azure_msi";

/// The token's audience unless `resource_id` says otherwise: Azure Resource Manager.
pub const DEFAULT_RESOURCE_ID: &str = "https://management.azure.com/";

/// The Instance Metadata Service unless `imds_endpoint` says otherwise.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// `plugin_data` as written in `agent.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    resource_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    imds_endpoint: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureMsiConfig {
    /// `resource_id`: the audience of the token (the server's tenant `resource_id`).
    pub resource_id: String,
    /// `imds_endpoint`: the Instance Metadata Service's base URL.
    pub imds_endpoint: String,
}

impl AzureMsiConfig {
    /// Applies the defaults to the parsed `plugin_data`.
    pub fn from_data(data: Data) -> Self {
        Self {
            resource_id: data
                .resource_id
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_RESOURCE_ID.to_owned()),
            imds_endpoint: data
                .imds_endpoint
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
        }
    }

    /// The token URL, as upstream builds it.
    pub fn token_url(&self) -> String {
        format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
            self.imds_endpoint.trim_end_matches('/'),
            url_encode(&self.resource_id)
        )
    }
}

/// Presents the MSI token.
#[derive(Debug, Clone)]
pub struct AzureMsiAttestor {
    config: AzureMsiConfig,
    http: CloudHttpClient,
}

impl AzureMsiAttestor {
    /// An attestor with validated settings.
    pub fn new(config: AzureMsiConfig) -> Self {
        Self {
            config,
            http: CloudHttpClient::new(),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: String,
}

#[derive(Serialize)]
struct Payload<'a> {
    token: &'a str,
}

#[async_trait]
impl NodeAttestor for AzureMsiAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let unable = |e: String| PluginError::new(NAME, format!("unable to fetch token: {e}"));
        let response = self
            .http
            .get(&self.config.token_url(), &[("Metadata", "true")])
            .await
            .map_err(unable)?;
        let body = response.ok_body().map_err(unable)?;
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unable(format!("unable to decode response: {e}")))?;
        if token.access_token.is_empty() {
            return Err(unable("response missing access token".into()));
        }
        serde_json::to_vec(&Payload {
            token: &token.access_token,
        })
        .map_err(|e| PluginError::new(NAME, format!("failed to marshal payload: {e}")))
    }

    async fn challenge_response(&self, _challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::new(NAME, "server issued unexpected challenge"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_url_are_upstreams() {
        let config = AzureMsiConfig::from_data(Data {
            resource_id: None,
            imds_endpoint: None,
        });
        assert_eq!(
            config.token_url(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
        );
    }
}
