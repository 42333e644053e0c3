//! What the manager needs from the SPIRE server, as a trait so the manager can be tested
//! without a server and the real client (in `client/`) can be plugged in by the agent's
//! wiring: `GetAuthorizedEntries`/`SyncAuthorizedEntries`, `BatchNewX509SVID`, `GetBundle`,
//! `GetFederatedBundle`, `NewJWTSVID` and `PostStatus`.

use std::time::Duration;

use async_trait::async_trait;
use spire_core::bundle::Bundle;
use spire_core::jwt::JwtAuthority;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::types;

use super::ManagerError;

/// The server calls the manager makes. Errors should be [`ManagerError::Unavailable`] when
/// the server could not be reached, so the sync loop backs off and keeps serving its cache.
#[async_trait]
pub trait ServerApi: Send + Sync + 'static {
    /// Every registration entry the server authorizes this agent to mint SVIDs for (entries
    /// parented to the agent or to its node aliases).
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError>;

    /// Signs one CSR per entry in a single `BatchNewX509SVID` call. The answer has one result
    /// per CSR, in the same order: the certificate chain (leaf first, DER) or why that one
    /// failed. The outer error means the whole call failed.
    async fn new_x509_svids(
        &self,
        csrs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError>;

    /// The bundle of the agent's own trust domain.
    async fn bundle(&self) -> Result<types::Bundle, ManagerError>;

    /// The bundle of a federated trust domain, `None` when the server has none for it.
    async fn federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::Bundle>, ManagerError>;

    /// A new JWT-SVID for an entry and audience (`NewJWTSVID`), as a compact token.
    async fn new_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, ManagerError>;

    /// Reports the agent's version to the server (`PostStatus`, SPIRE 1.15), which shows it
    /// in `agent list`/`show`.
    async fn post_status(&self, agent_version: &str) -> Result<(), ManagerError>;
}

/// Converts a bundle as the server API sends it into the form the agent serves. Tainted
/// authorities are kept (they still verify until removed); an unset refresh hint or
/// expiry (0) is `None`.
pub fn bundle_from_proto(bundle: &types::Bundle) -> Result<Bundle, ManagerError> {
    let trust_domain = TrustDomain::new(&bundle.trust_domain).map_err(|e| {
        ManagerError::Internal(format!(
            "server sent a bundle with trust domain {:?}: {e}",
            bundle.trust_domain
        ))
    })?;
    let mut out = Bundle::new(trust_domain);
    for authority in &bundle.x509_authorities {
        out.add_x509_authority(authority.asn1.clone())
            .map_err(|e| {
                ManagerError::Internal(format!(
                    "server sent a bad X.509 authority in the bundle of {}: {e}",
                    bundle.trust_domain
                ))
            })?;
    }
    for key in &bundle.jwt_authorities {
        out.add_jwt_authority(JwtAuthority {
            key_id: key.key_id.clone(),
            public_key_der: key.public_key.clone(),
            expires_at: (key.expires_at != 0).then_some(key.expires_at),
        })
        .map_err(|e| {
            ManagerError::Internal(format!(
                "server sent a bad JWT authority {:?} in the bundle of {}: {e}",
                key.key_id, bundle.trust_domain
            ))
        })?;
    }
    out.sequence_number = bundle.sequence_number;
    out.refresh_hint = u64::try_from(bundle.refresh_hint)
        .ok()
        .filter(|secs| *secs > 0)
        .map(Duration::from_secs);
    Ok(out)
}
