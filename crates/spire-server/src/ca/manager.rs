//! Placeholder CA manager with the final signatures; the CA helper replaces the bodies.

use std::time::Duration;

use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use tokio::sync::watch;

use super::{AuthorityState, CaError, ServerIdentity, SignedJwtSvid, X509SvidRequest};

/// Signs SVIDs with the active authorities and rotates them.
pub struct CaManager {
    trust_domain: TrustDomain,
    identity: watch::Receiver<Option<ServerIdentity>>,
}

impl CaManager {
    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Signs a workload X509-SVID; returns leaf then intermediates (upstream chain included,
    /// root excluded).
    pub async fn sign_workload_x509_svid(
        &self,
        _request: X509SvidRequest,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Signs an agent X509-SVID (TTL default `agent_ttl`, else the default X509-SVID TTL).
    pub async fn sign_agent_x509_svid(
        &self,
        _public_key_der: &[u8],
        _agent_id: &SpiffeId,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Signs a downstream intermediate CA for a `downstream` entry's caller.
    pub async fn sign_downstream_x509_ca(
        &self,
        _public_key_der: &[u8],
        _ttl: Option<Duration>,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Signs a JWT-SVID with the active JWT key.
    pub async fn sign_jwt_svid(
        &self,
        _spiffe_id: &SpiffeId,
        _audience: &[String],
        _ttl: Option<Duration>,
    ) -> Result<SignedJwtSvid, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// The server's TLS identity, updated on every renewal.
    pub fn server_identity(&self) -> watch::Receiver<Option<ServerIdentity>> {
        self.identity.clone()
    }

    /// States of the X509 authorities: (active, prepared, old).
    pub async fn x509_authority_states(
        &self,
    ) -> (Option<AuthorityState>, Option<AuthorityState>, Option<AuthorityState>) {
        (None, None, None)
    }

    /// States of the JWT authorities: (active, prepared, old).
    pub async fn jwt_authority_states(
        &self,
    ) -> (Option<AuthorityState>, Option<AuthorityState>, Option<AuthorityState>) {
        (None, None, None)
    }

    /// Prepares the next X509 authority now.
    pub async fn prepare_x509_authority(&self) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Activates the prepared X509 authority with this ID.
    pub async fn activate_x509_authority(&self, _id: &str) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Taints the old X509 authority with this ID.
    pub async fn taint_x509_authority(&self, _id: &str) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Revokes the tainted old X509 authority with this ID.
    pub async fn revoke_x509_authority(&self, _id: &str) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Prepares the next JWT authority now.
    pub async fn prepare_jwt_authority(&self) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Activates the prepared JWT authority with this ID.
    pub async fn activate_jwt_authority(&self, _id: &str) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Taints the old JWT authority with this ID.
    pub async fn taint_jwt_authority(&self, _id: &str) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }

    /// Revokes the tainted old JWT authority with this ID.
    pub async fn revoke_jwt_authority(&self, _id: &str) -> Result<AuthorityState, CaError> {
        Err(CaError::NotReady("not implemented".into()))
    }
}
