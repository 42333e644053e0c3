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

/// One entry's revision, as SyncAuthorizedEntries lists it before sending whole entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRevision {
    /// The entry ID.
    pub id: String,
    /// Its revision number.
    pub revision: i64,
    /// When it was created (Unix seconds; 0 from servers that do not send it): a deleted
    /// and recreated entry can have the same ID and revision.
    pub created_at: i64,
}

/// What one sync learned of the authorized entries.
#[derive(Debug, Clone)]
pub enum SyncedEntries {
    /// Every authorized entry, whole (GetAuthorizedEntries, or a SyncAuthorizedEntries
    /// answer small enough to be sent whole).
    Full(Vec<types::Entry>),
    /// The revision of every authorized entry, plus the whole entries of those the agent
    /// asked for (it did not have them at that revision). Entries not listed were removed.
    Revisions {
        /// Every authorized entry's revision.
        revisions: Vec<EntryRevision>,
        /// The entries asked for.
        entries: Vec<types::Entry>,
    },
}

/// Given a page of revisions, the IDs of the entries the agent must fetch whole (not
/// cached, or cached at another revision).
pub type StaleEntries<'a> = &'a (dyn Fn(&[EntryRevision]) -> Vec<String> + Send + Sync);

/// One "your authorized view changed" hint from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncHint {
    /// Counts the hints of one stream from 0; a gap means one was missed.
    pub sequence: u64,
    /// The authorized entries may have changed.
    pub entries: bool,
    /// The bundles may have changed.
    pub bundles: bool,
    /// When the server could name every entry change since its previous hint: those.
    /// `None` with `entries` set means "sync everything".
    pub itemized: Option<NamedChanges>,
}

/// Entry changes a hint names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedChanges {
    /// Entries created or updated (the agent fetches them with
    /// [`ServerApi::fetch_entries`]).
    pub changed: Vec<String>,
    /// Entries the agent is no longer authorized for.
    pub removed: Vec<String>,
}

/// A stream of "your authorized view changed, sync now" hints from the server.
pub type SyncHints =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SyncHint, ManagerError>> + Send>>;

/// Whether the server offers push hints ([`ServerApi::watch_sync_hints`]).
#[non_exhaustive]
pub enum HintsOffer {
    /// The server streams hints.
    Offered(SyncHints),
    /// The server does not have the service (upstream servers): poll only.
    NotOffered,
}

impl std::fmt::Debug for HintsOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Offered(_) => f.write_str("Offered"),
            Self::NotOffered => f.write_str("NotOffered"),
        }
    }
}

/// The server calls the manager makes. Errors should be [`ManagerError::Unavailable`] when
/// the server could not be reached, so the sync loop backs off and keeps serving its cache.
#[async_trait]
pub trait ServerApi: Send + Sync + 'static {
    /// Every registration entry the server authorizes this agent to mint SVIDs for (entries
    /// parented to the agent or to its node aliases).
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError>;

    /// The authorized entries through SyncAuthorizedEntries: revisions first, then only the
    /// entries `stale` names, as upstream's agent syncs. A server without the RPC is asked
    /// with GetAuthorizedEntries instead. The default is the latter.
    async fn sync_authorized_entries(
        &self,
        stale: StaleEntries<'_>,
    ) -> Result<SyncedEntries, ManagerError> {
        let _ = stale;
        Ok(SyncedEntries::Full(self.authorized_entries().await?))
    }

    /// Subscribes to the server's sync hints (our own `spire_rs.agent.notify.v1` service).
    /// The first item arrives once the subscription is live. The default offers none.
    async fn watch_sync_hints(&self) -> Result<HintsOffer, ManagerError> {
        Ok(HintsOffer::NotOffered)
    }

    /// Of these entry IDs, the entries the agent is authorized for now (our own
    /// FetchEntries, offered by servers that offer sync hints). The default has none to
    /// offer; the manager then syncs everything.
    async fn fetch_entries(&self, ids: &[String]) -> Result<Vec<types::Entry>, ManagerError> {
        let _ = ids;
        Err(ManagerError::Internal(
            "the server offers no FetchEntries".to_owned(),
        ))
    }

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
