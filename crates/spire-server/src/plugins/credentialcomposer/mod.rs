//! CredentialComposer plugins change what goes into the credentials the server signs, as
//! upstream's `credtemplate` applies them: each configured composer in turn gets the
//! attributes the server built (CA subject; SVID subject and DNS names; JWT-SVID claims) and
//! returns them changed. A composer answering Unimplemented for one kind of credential
//! leaves it as it was.
//!
//! With no composer configured nothing here runs: the CA manager checks
//! [`CredentialComposers::is_empty`] before building any attributes, so signing costs the
//! same as without this feature.

use std::sync::Arc;

use async_trait::async_trait;
use spire_core::SpiffeId;
use spire_core::x509::Subject;

pub mod external;
pub mod uniqueid;

/// JWT-SVID claims as a JSON object (`sub`, `aud`, `exp`, `iat`, `iss` and any added).
pub type JwtClaims = serde_json::Map<String, serde_json::Value>;

/// Why a composer failed; signing fails with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credentialcomposer({name}): {message}")]
pub struct ComposerError {
    /// The plugin's name.
    pub name: String,
    /// What failed.
    pub message: String,
}

/// What a composer may change in the server's X509 CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509CaAttributes {
    /// The CA's subject.
    pub subject: Subject,
}

/// What a composer may change in an X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509SvidAttributes {
    /// The subject.
    pub subject: Subject,
    /// The DNS SANs.
    pub dns_sans: Vec<String>,
}

/// A server CredentialComposer. Every method defaults to "no change".
#[async_trait]
pub trait CredentialComposer: Send + Sync + std::fmt::Debug {
    /// The plugin's name in the config, for errors.
    fn name(&self) -> &str;

    /// The server's X509 CA (self-signed, or the CSR sent upstream).
    async fn compose_server_x509_ca(
        &self,
        attributes: X509CaAttributes,
    ) -> Result<X509CaAttributes, ComposerError> {
        Ok(attributes)
    }

    /// The server's own X509-SVID.
    async fn compose_server_x509_svid(
        &self,
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        Ok(attributes)
    }

    /// An agent's X509-SVID.
    async fn compose_agent_x509_svid(
        &self,
        _id: &SpiffeId,
        _public_key_der: &[u8],
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        Ok(attributes)
    }

    /// A workload's X509-SVID.
    async fn compose_workload_x509_svid(
        &self,
        _id: &SpiffeId,
        _public_key_der: &[u8],
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        Ok(attributes)
    }

    /// A workload's JWT-SVID claims.
    async fn compose_workload_jwt_svid(
        &self,
        _id: &SpiffeId,
        claims: JwtClaims,
    ) -> Result<JwtClaims, ComposerError> {
        Ok(claims)
    }
}

/// The configured composers, applied in configuration order.
#[derive(Debug, Clone, Default)]
pub struct CredentialComposers {
    composers: Vec<Arc<dyn CredentialComposer>>,
}

impl CredentialComposers {
    /// Builds the composers the catalog chose, starting external ones with the server's
    /// trust domain; also returns the external plugins (for SIGUSR1 reconfiguration).
    pub async fn from_catalog(
        choices: &[crate::catalog::CredentialComposerChoice],
        trust_domain: &spire_core::TrustDomain,
        host_services: &spire_common::plugin_host::HostServices,
    ) -> Result<(Self, Vec<Arc<spire_common::plugin_host::LoadedPlugin>>), ComposerError> {
        use crate::catalog::CredentialComposerChoice;
        let mut composers: Vec<Arc<dyn CredentialComposer>> = Vec::new();
        let mut loaded_plugins = Vec::new();
        for choice in choices {
            match choice {
                CredentialComposerChoice::UniqueId => composers.push(Arc::new(uniqueid::UniqueId)),
                CredentialComposerChoice::External(plugin) => {
                    let loaded = spire_common::plugin_host::LoadedPlugin::load(
                        plugin,
                        external::SERVICE,
                        trust_domain.name(),
                        host_services,
                    )
                    .await
                    .map_err(|e| ComposerError {
                        name: plugin.name.clone(),
                        message: e.to_string(),
                    })?;
                    let loaded = Arc::new(loaded);
                    loaded_plugins.push(loaded.clone());
                    composers.push(Arc::new(external::ExternalCredentialComposer::new(loaded)));
                }
            }
        }
        Ok((Self { composers }, loaded_plugins))
    }

    /// These composers, in order.
    pub fn new(composers: Vec<Arc<dyn CredentialComposer>>) -> Self {
        Self { composers }
    }

    /// Whether none is configured: callers then skip composing entirely.
    pub fn is_empty(&self) -> bool {
        self.composers.is_empty()
    }

    /// Runs every composer on the server's X509 CA attributes.
    pub async fn server_x509_ca(
        &self,
        mut attributes: X509CaAttributes,
    ) -> Result<X509CaAttributes, ComposerError> {
        for composer in &self.composers {
            attributes = composer.compose_server_x509_ca(attributes).await?;
        }
        Ok(attributes)
    }

    /// Runs every composer on the server's X509-SVID attributes.
    pub async fn server_x509_svid(
        &self,
        mut attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        for composer in &self.composers {
            attributes = composer.compose_server_x509_svid(attributes).await?;
        }
        Ok(attributes)
    }

    /// Runs every composer on an agent's X509-SVID attributes.
    pub async fn agent_x509_svid(
        &self,
        id: &SpiffeId,
        public_key_der: &[u8],
        mut attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        for composer in &self.composers {
            attributes = composer
                .compose_agent_x509_svid(id, public_key_der, attributes)
                .await?;
        }
        Ok(attributes)
    }

    /// Runs every composer on a workload's X509-SVID attributes.
    pub async fn workload_x509_svid(
        &self,
        id: &SpiffeId,
        public_key_der: &[u8],
        mut attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        for composer in &self.composers {
            attributes = composer
                .compose_workload_x509_svid(id, public_key_der, attributes)
                .await?;
        }
        Ok(attributes)
    }

    /// Runs every composer on a workload's JWT-SVID claims.
    pub async fn workload_jwt_svid(
        &self,
        id: &SpiffeId,
        mut claims: JwtClaims,
    ) -> Result<JwtClaims, ComposerError> {
        for composer in &self.composers {
            claims = composer.compose_workload_jwt_svid(id, claims).await?;
        }
        Ok(claims)
    }
}
