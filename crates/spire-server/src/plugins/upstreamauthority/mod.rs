//! UpstreamAuthority plugins sign the server's intermediate CA so the trust domain chains to
//! an existing PKI; their roots form the trust bundle. The `spire` plugin (nested SPIRE) also
//! publishes the server's JWT keys upstream and follows the upstream bundle, taints included.

use async_trait::async_trait;
use spire_proto::spire::api::types;

pub mod aws_pca;
pub mod awssecret;
pub mod disk;
pub mod ejbca;
pub mod external;
pub mod spire;

pub use self::disk::{DiskUpstreamAuthority, DiskUpstreamAuthorityConfig};
pub use self::spire::{SpireUpstreamAuthority, SpireUpstreamAuthorityConfig};

/// Why the upstream authority could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamAuthorityError {
    /// Configuration or file problem; names the file or key.
    #[error("{0}")]
    Config(String),
    /// The CSR or the signing failed.
    #[error("{0}")]
    Sign(String),
    /// The upstream server could not be reached or refused a call.
    #[error("{0}")]
    Upstream(String),
}

/// What an upstream authority returns for a CA CSR.
#[derive(Debug, Clone)]
pub struct MintedX509Ca {
    /// The new intermediate first, then any upstream intermediates (DER).
    pub x509_ca_chain: Vec<Vec<u8>>,
    /// The upstream roots that go in the trust bundle, with their tainted flag (a `spire`
    /// upstream reports the roots its operator tainted).
    pub upstream_x509_roots: Vec<types::X509Certificate>,
}

/// The upstream trust bundle as an upstream authority last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamBundle {
    /// The X.509 roots, with their tainted flag.
    pub x509_authorities: Vec<types::X509Certificate>,
    /// The JWT keys of the upstream trust domain (ours included once published).
    pub jwt_authorities: Vec<types::JwtKey>,
}

/// Signs the server's intermediate CA.
#[async_trait]
pub trait UpstreamAuthority: Send + Sync + 'static {
    /// The plugin name, e.g. `disk`.
    fn name(&self) -> &'static str;

    /// Signs an intermediate for the public key in `csr_der` with the preferred TTL.
    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: std::time::Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError>;

    /// Publishes one of our JWT keys upstream and returns the upstream's JWT keys, or
    /// `None` when this plugin does not publish JWT keys (upstream's Unimplemented): the key
    /// then only goes into the local bundle.
    async fn publish_jwt_key(
        &self,
        _key: types::JwtKey,
    ) -> Result<Option<Vec<types::JwtKey>>, UpstreamAuthorityError> {
        Ok(None)
    }

    /// The upstream bundle now, or `None` when this plugin does not follow one (upstream's
    /// Unimplemented SubscribeToLocalBundle). The CA manager polls this to pick up new and
    /// tainted upstream roots.
    async fn upstream_bundle(&self) -> Result<Option<UpstreamBundle>, UpstreamAuthorityError> {
        Ok(None)
    }
}
