//! The `gcp_iit` node attestor (agent side): fetches the instance identity token for the
//! audience `spire-gcp-node-attestor` (full format) from the GCP metadata server and sends it
//! as the payload, as it is. Keys and defaults are upstream's
//! (`doc/plugin_agent_nodeattestor_gcp_iit.md`): `identity_token_host`
//! (`metadata.google.internal`, a `host[:port]` reached over plain HTTP) and
//! `service_account` (`default`).

use async_trait::async_trait;
use serde::Deserialize;
use spire_common::cloud_http::{CloudHttpClient, url_encode};
use spire_core::config::de;

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = "gcp_iit";

/// The metadata server's host unless `identity_token_host` says otherwise.
pub const DEFAULT_IDENTITY_TOKEN_HOST: &str = "metadata.google.internal";

/// The service account whose token is fetched unless `service_account` says otherwise.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The audience the server expects (upstream's constant).
pub const TOKEN_AUDIENCE: &str = "spire-gcp-node-attestor";

/// `plugin_data` as written in `agent.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    identity_token_host: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    service_account: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpIitConfig {
    /// `identity_token_host`: the metadata server, `host[:port]`.
    pub identity_token_host: String,
    /// `service_account`: whose identity token to fetch.
    pub service_account: String,
}

impl GcpIitConfig {
    /// Applies upstream's defaults to the parsed `plugin_data`.
    pub fn from_data(data: Data) -> Self {
        Self {
            identity_token_host: data
                .identity_token_host
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_IDENTITY_TOKEN_HOST.to_owned()),
            service_account: data
                .service_account
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        }
    }

    /// The identity token URL, as upstream builds it.
    pub fn identity_token_url(&self) -> String {
        format!(
            "http://{}/computeMetadata/v1/instance/service-accounts/{}/identity?audience={}&format=full",
            self.identity_token_host,
            self.service_account,
            url_encode(TOKEN_AUDIENCE)
        )
    }
}

/// Presents the instance identity token.
#[derive(Debug, Clone)]
pub struct GcpIitAttestor {
    config: GcpIitConfig,
    http: CloudHttpClient,
}

impl GcpIitAttestor {
    /// An attestor with validated settings.
    pub fn new(config: GcpIitConfig) -> Self {
        Self {
            config,
            http: CloudHttpClient::new(),
        }
    }
}

#[async_trait]
impl NodeAttestor for GcpIitAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        let unable = |e: String| {
            PluginError::new(
                NAME,
                format!("unable to retrieve valid identity token: {e}"),
            )
        };
        let response = self
            .http
            .get(
                &self.config.identity_token_url(),
                &[("Metadata-Flavor", "Google")],
            )
            .await
            .map_err(unable)?;
        let token = response.ok_body().map_err(unable)?;
        if token.is_empty() {
            return Err(unable("the metadata server sent an empty token".into()));
        }
        Ok(token)
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
        let config = GcpIitConfig::from_data(Data {
            identity_token_host: None,
            service_account: None,
        });
        assert_eq!(
            config.identity_token_url(),
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity?audience=spire-gcp-node-attestor&format=full"
        );
        let config = GcpIitConfig::from_data(Data {
            identity_token_host: Some("127.0.0.1:8080".into()),
            service_account: Some("sa@p.iam.gserviceaccount.com".into()),
        });
        assert!(
            config
                .identity_token_url()
                .starts_with("http://127.0.0.1:8080/computeMetadata/v1/instance/service-accounts/sa@p.iam.gserviceaccount.com/identity?")
        );
    }
}
