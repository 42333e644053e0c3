//! The manager: the sync loop with the server, the cache of entries, SVIDs and bundles, and
//! the subscriptions the Workload API serves from.
//!
//! [`WorkloadIdentities`] is what the Workload API asks of it, so the API can be tested with
//! a fake manager.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use spire_core::bundle::Bundle;
use spire_core::keys::PrivateKey;
use spire_core::selector::Selector;
use spire_core::spiffe_id::SpiffeId;
use tokio::sync::watch;

mod cache;
mod jwt_cache;
mod selector_index;
pub mod server_api;
pub mod sync;

pub use server_api::{
    EntryRevision, HintsOffer, NamedChanges, StaleEntries, SyncHint, SyncHints, SyncedEntries,
};
pub use server_api::{ServerApi, bundle_from_proto};
pub use sync::{CacheStats, Clock, Manager, ManagerOptions, SyncReport, chain_is_under};

/// Why the manager could not answer; the Workload API maps these to gRPC codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No entry matches the caller (PermissionDenied, "no identity issued").
    #[error("no identity issued")]
    NoIdentity,
    /// The server could not be reached or refused (Unavailable).
    #[error("{0}")]
    Unavailable(String),
    /// Bad request, e.g. an empty audience (InvalidArgument).
    #[error("{0}")]
    InvalidArgument(String),
    /// Anything else (Internal).
    #[error("{0}")]
    Internal(String),
}

/// One X509-SVID a workload may receive.
#[derive(Clone)]
pub struct X509Identity {
    /// The registration entry it was minted for.
    pub entry_id: String,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The entry's hint.
    pub hint: String,
    /// Leaf first, then intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// The SVID's private key.
    pub key: Arc<PrivateKey>,
    /// Trust domain names whose bundles the workload also receives.
    pub federates_with: Vec<String>,
}

/// Everything a workload with a given selector set may see, pushed again on every change.
#[derive(Clone)]
pub struct WorkloadUpdate {
    /// The X509-SVIDs of every matching entry (empty when none match).
    pub identities: Vec<X509Identity>,
    /// The agent's own trust domain bundle.
    pub bundle: Arc<Bundle>,
    /// Federated bundles by trust domain name (only those some matching entry federates with).
    pub federated_bundles: BTreeMap<String, Arc<Bundle>>,
}

/// An entry registered with `store_svid` and what the SVIDStore service puts for it.
#[derive(Clone)]
pub struct StoreRecord {
    /// The registration entry.
    pub entry_id: String,
    /// The entry's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The entry's selectors as (type, value): the type names the store, the values are its
    /// metadata.
    pub selectors: Vec<(String, String)>,
    /// The SVID minted for the entry's current revision; `None` until it is.
    pub svid: Option<StoredSvid>,
    /// The agent's trust domain bundle.
    pub bundle: Arc<Bundle>,
    /// The bundles of the trust domains the entry federates with (those the agent has), by
    /// trust domain name.
    pub federated_bundles: BTreeMap<String, Arc<Bundle>>,
}

/// The X509-SVID of a [`StoreRecord`].
#[derive(Clone)]
pub struct StoredSvid {
    /// Leaf first, then intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// Its private key.
    pub key: Arc<PrivateKey>,
    /// The leaf's expiry, Unix seconds.
    pub not_after: i64,
}

/// A minted JWT-SVID.
#[derive(Debug, Clone)]
pub struct JwtIdentity {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The compact token.
    pub token: String,
    /// The entry's hint.
    pub hint: String,
}

/// What the Workload API needs from the manager.
#[async_trait]
pub trait WorkloadIdentities: Send + Sync + 'static {
    /// A subscription for a workload with these selectors: the current state now and a new
    /// value whenever its identities or bundles change.
    fn subscribe(&self, selectors: Vec<Selector>) -> watch::Receiver<Arc<WorkloadUpdate>>;
    /// Like [`subscribe`](Self::subscribe), but returns only once every entry matching
    /// `selectors` has its X509-SVID, as upstream's cache blocks new subscribers: the first
    /// message a workload receives is then complete instead of empty (PermissionDenied) or
    /// partial. The wait lasts as long as the caller's request does.
    async fn subscribe_when_ready(
        &self,
        selectors: Vec<Selector>,
    ) -> watch::Receiver<Arc<WorkloadUpdate>> {
        self.subscribe(selectors)
    }
    /// JWT-SVIDs for the entries matching `selectors` (only `spiffe_id` when given), minted by
    /// the server or taken from the cache while past less than half their lifetime.
    async fn fetch_jwt_svids(
        &self,
        selectors: &[Selector],
        spiffe_id: Option<&SpiffeId>,
        audience: &[String],
    ) -> Result<Vec<JwtIdentity>, ManagerError>;
    /// The current bundles (own and federated) by trust domain name, for ValidateJWTSVID and
    /// FetchJWTBundles.
    fn bundles(&self) -> watch::Receiver<Arc<BTreeMap<String, Arc<Bundle>>>>;
}
