//! UpstreamAuthority plugins sign the server's intermediate CA so the trust domain chains to
//! an existing PKI; their roots form the trust bundle.

use async_trait::async_trait;

pub mod disk;

pub use self::disk::{DiskUpstreamAuthority, DiskUpstreamAuthorityConfig};

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
}

/// What an upstream authority returns for a CA CSR.
#[derive(Debug, Clone)]
pub struct MintedX509Ca {
    /// The new intermediate first, then any upstream intermediates (DER).
    pub x509_ca_chain: Vec<Vec<u8>>,
    /// The upstream roots that go in the trust bundle (DER).
    pub upstream_x509_roots: Vec<Vec<u8>>,
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
}
