//! The `azure_imds` node attestor (agent side, upstream v1.15.3): sends a placeholder
//! payload, receives the server's nonce, fetches the Instance Metadata Service's attested
//! document for it and the instance metadata (for the scale set name), and answers
//! `{"document":{"encoding":…,"signature":…},"metadata":{"agentDomain":<tenant_domain>,
//! "vmssName":<name or null>}}`. Keys are upstream's
//! (`doc/plugin_agent_nodeattestor_azure_imds.md`); `imds_endpoint` is ours: upstream always
//! asks `http://169.254.169.254`, which stays the default.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spire_common::cloud_http::{CloudHttpClient, url_encode};
use spire_core::config::de;

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = "azure_imds";

/// The Instance Metadata Service unless `imds_endpoint` says otherwise.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// The API version upstream asks IMDS for.
const IMDS_API_VERSION: &str = "2025-04-07";

/// What the first message carries: upstream's placeholder, only there to get the nonce.
const INITIAL_PAYLOAD: &[u8] = b"non_empty_payload";

/// `plugin_data` as written in `agent.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    tenant_domain: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    imds_endpoint: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureImdsConfig {
    /// `tenant_domain`: which of the server's tenants this VM belongs to.
    pub tenant_domain: String,
    /// `imds_endpoint`: the Instance Metadata Service's base URL.
    pub imds_endpoint: String,
}

impl AzureImdsConfig {
    /// Validates the parsed `plugin_data`; `tenant_domain` is required.
    pub fn from_data(data: Data) -> Result<Self, String> {
        let tenant_domain = data
            .tenant_domain
            .filter(|d| !d.is_empty())
            .ok_or("tenant_domain is required")?;
        Ok(Self {
            tenant_domain,
            imds_endpoint: data
                .imds_endpoint
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
        })
    }

    fn base(&self) -> &str {
        self.imds_endpoint.trim_end_matches('/')
    }

    /// The attested document URL for `nonce`, as upstream builds it.
    pub fn document_url(&self, nonce: &str) -> String {
        format!(
            "{}/metadata/attested/document?api-version={IMDS_API_VERSION}&nonce={}",
            self.base(),
            url_encode(nonce)
        )
    }

    /// The instance metadata URL.
    pub fn instance_url(&self) -> String {
        format!(
            "{}/metadata/instance?api-version={IMDS_API_VERSION}&format=json",
            self.base()
        )
    }
}

/// Presents the attested document.
#[derive(Debug, Clone)]
pub struct AzureImdsAttestor {
    config: AzureImdsConfig,
    http: CloudHttpClient,
}

impl AzureImdsAttestor {
    /// An attestor with validated settings.
    pub fn new(config: AzureImdsConfig) -> Self {
        Self {
            config,
            http: CloudHttpClient::new(),
        }
    }
}

#[derive(Deserialize, Serialize, Default)]
struct AttestedDocument {
    #[serde(default)]
    encoding: String,
    #[serde(default)]
    signature: String,
}

#[derive(Deserialize, Default)]
struct InstanceMetadata {
    #[serde(default)]
    compute: Compute,
}

#[derive(Deserialize, Default)]
struct Compute {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "subscriptionId")]
    subscription_id: String,
    #[serde(default, rename = "resourceGroupName")]
    resource_group_name: String,
    #[serde(default, rename = "vmScaleSetName")]
    vm_scale_set_name: String,
}

#[derive(Serialize)]
struct Payload<'a> {
    document: &'a AttestedDocument,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    #[serde(rename = "agentDomain")]
    agent_domain: &'a str,
    #[serde(rename = "vmssName")]
    vmss_name: Option<&'a str>,
}

#[async_trait]
impl NodeAttestor for AzureImdsAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        Ok(INITIAL_PAYLOAD.to_vec())
    }

    async fn challenge_response(&self, challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        let nonce = String::from_utf8_lossy(challenge);
        let doc_error =
            |e: String| PluginError::new(NAME, format!("unable to fetch attested document: {e}"));
        let body = self
            .http
            .get(&self.config.document_url(&nonce), &[("Metadata", "true")])
            .await
            .map_err(doc_error)?
            .ok_body()
            .map_err(doc_error)?;
        let doc: AttestedDocument = serde_json::from_slice(&body)
            .map_err(|e| doc_error(format!("unable to decode response: {e}")))?;
        if doc.encoding.is_empty() {
            return Err(doc_error("response missing encoding".into()));
        }
        if doc.signature.is_empty() {
            return Err(doc_error("response missing signature".into()));
        }
        let md_error =
            |e: String| PluginError::new(NAME, format!("unable to fetch compute metadata: {e}"));
        let body = self
            .http
            .get(&self.config.instance_url(), &[("Metadata", "true")])
            .await
            .map_err(md_error)?
            .ok_body()
            .map_err(md_error)?;
        let metadata: InstanceMetadata = serde_json::from_slice(&body)
            .map_err(|e| md_error(format!("unable to decode response: {e}")))?;
        let compute = &metadata.compute;
        if compute.name.is_empty() {
            return Err(md_error("response missing instance name".into()));
        }
        if compute.subscription_id.is_empty() {
            return Err(md_error("response missing instance subscription id".into()));
        }
        if compute.resource_group_name.is_empty() {
            return Err(md_error(
                "response missing instance resource group name".into(),
            ));
        }
        serde_json::to_vec(&Payload {
            document: &doc,
            metadata: Metadata {
                agent_domain: &self.config.tenant_domain,
                vmss_name: Some(compute.vm_scale_set_name.as_str()).filter(|n| !n.is_empty()),
            },
        })
        .map_err(|e| PluginError::new(NAME, format!("failed to marshal payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_upstreams_and_tenant_domain_is_required() {
        let config = AzureImdsConfig::from_data(Data {
            tenant_domain: Some("example.com".into()),
            imds_endpoint: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.document_url("abc123"),
            "http://169.254.169.254/metadata/attested/document?api-version=2025-04-07&nonce=abc123"
        );
        assert_eq!(
            config.instance_url(),
            "http://169.254.169.254/metadata/instance?api-version=2025-04-07&format=json"
        );
        let err = AzureImdsConfig::from_data(Data {
            tenant_domain: None,
            imds_endpoint: None,
        })
        .unwrap_err();
        assert_eq!(err, "tenant_domain is required");
    }
}
