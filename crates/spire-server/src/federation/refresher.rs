//! The federated bundle refresher (upstream's `bundle/client` manager): one updater per
//! federation relationship, from `federates_with` in the config file and from the datastore
//! (the file wins for a trust domain both name), each fetching the foreign bundle from its
//! endpoint, storing it when it changed and polling again at a quarter of its refresh hint.
//!
//! Several servers on one database each run their updaters; the write compares and replaces
//! in one locked transaction ([`DataStore::set_refreshed_bundle`]): only a bundle that differs
//! and is not older (by `spiffe_sequence`) than the stored one is written, so a slow server
//! cannot put back a bundle another server already replaced.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spire_core::TrustDomain;
use spire_core::bundle::Bundle;
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::types::federation_relationship::BundleEndpointProfile;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{self, EndpointAuth};
use crate::api::convert::{bundle_from_document, bundle_to_document};
use crate::config::{FederatesWith, FederatesWithProfile};
use crate::datastore::{DataStore, RefreshedBundleWrite};

/// How often relationships are reloaded from the datastore (upstream's 10 s), besides the
/// reload the trustdomain API triggers on every change.
pub const CONFIG_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// SPIRE never polls more often than this (upstream's `MinimumRefreshHint`).
pub const MINIMUM_REFRESH_HINT: Duration = Duration::from_secs(60);

/// Polling interval for a bundle without a refresh hint (upstream's 5 minutes).
const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Polls per refresh hint, so one failed poll does not leave a stale bundle for a whole hint.
const ATTEMPTS_PER_REFRESH_HINT: u32 = 4;

/// Consecutive failures double the wait up to this many times.
const MAX_BACKOFF_DOUBLINGS: u32 = 3;

/// Where a relationship's bundle comes from and how its endpoint is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// The bundle endpoint URL (https).
    pub url: String,
    /// `https_web` (None) or `https_spiffe` with the endpoint's SPIFFE ID.
    pub endpoint_spiffe_id: Option<SpiffeId>,
}

impl Relationship {
    fn profile_name(&self) -> &'static str {
        if self.endpoint_spiffe_id.is_some() {
            "https_spiffe"
        } else {
            "https_web"
        }
    }
}

impl From<&FederatesWith> for Relationship {
    fn from(fw: &FederatesWith) -> Self {
        Self {
            url: fw.bundle_endpoint_url.clone(),
            endpoint_spiffe_id: match &fw.profile {
                FederatesWithProfile::HttpsWeb => None,
                FederatesWithProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                    Some(endpoint_spiffe_id.clone())
                }
            },
        }
    }
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Reading or writing the datastore failed.
    #[error("{0}")]
    DataStore(String),
    /// The endpoint could not be reached or answered something unusable.
    #[error("{url}: {source}")]
    Fetch {
        /// The endpoint URL.
        url: String,
        /// What went wrong.
        source: client::FetchError,
    },
    /// `https_spiffe` needs the endpoint trust domain's bundle, and there is none.
    #[error(
        "can't perform SPIFFE Authentication: local copy of bundle not found for {0:?}; set it \
         with `spire-server bundle set` or the relationship's trust domain bundle"
    )]
    NoLocalBundle(String),
}

/// What one refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// The endpoint's bundle differed and was stored.
    Stored,
    /// The endpoint served the bundle already stored.
    Unchanged,
    /// The endpoint served a bundle older than the stored one (another server stored a
    /// newer one first); nothing was written.
    Stale,
}

struct Updater {
    relationship: Arc<Mutex<Relationship>>,
    /// Serializes polls and `RefreshBundle` calls of one trust domain.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the poller after a `RefreshBundle`, so its schedule follows the bundle just
    /// fetched instead of a backoff from before.
    reschedule: Arc<Notify>,
    cancel: CancellationToken,
}

/// Keeps one updater per federation relationship running.
pub struct BundleRefresher {
    datastore: Arc<dyn DataStore>,
    own_trust_domain: TrustDomain,
    /// `federates_with` of the config file; a configuration reload replaces it.
    from_file: Mutex<BTreeMap<TrustDomain, Relationship>>,
    updaters: Mutex<HashMap<TrustDomain, Updater>>,
    reload: Notify,
    cancel: CancellationToken,
}

impl std::fmt::Debug for BundleRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleRefresher")
            .field("from_file", &*self.lock_from_file())
            .finish_non_exhaustive()
    }
}

impl BundleRefresher {
    /// A refresher for the relationships of the config file plus those in `datastore`; its
    /// updaters stop when `cancel` fires.
    pub fn new(
        datastore: Arc<dyn DataStore>,
        own_trust_domain: TrustDomain,
        from_file: &BTreeMap<TrustDomain, FederatesWith>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            datastore,
            own_trust_domain,
            from_file: Mutex::new(
                from_file
                    .iter()
                    .map(|(td, fw)| (td.clone(), Relationship::from(fw)))
                    .collect(),
            ),
            updaters: Mutex::new(HashMap::new()),
            reload: Notify::new(),
            cancel,
        })
    }

    /// Reloads the relationships every [`CONFIG_RELOAD_INTERVAL`] or when triggered, starting
    /// and stopping updaters, until the refresher's cancel token fires.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.reload_relationships().await {
                tracing::error!(error = %e, "Failed to reload federation relationships");
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = self.reload.notified() => {}
                () = tokio::time::sleep(CONFIG_RELOAD_INTERVAL) => {}
            }
        }
        for (_, updater) in self.lock_updaters().drain() {
            updater.cancel.cancel();
        }
    }

    /// Replaces the relationships of the config file (a configuration reload changed
    /// `federates_with`) and reloads: updaters of removed ones stop, new ones start.
    pub fn set_from_file(&self, from_file: &BTreeMap<TrustDomain, FederatesWith>) {
        *self.lock_from_file() = from_file
            .iter()
            .map(|(td, fw)| (td.clone(), Relationship::from(fw)))
            .collect();
        self.trigger_reload();
    }

    fn lock_from_file(&self) -> std::sync::MutexGuard<'_, BTreeMap<TrustDomain, Relationship>> {
        self.from_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a reload now (a relationship was created, updated or deleted).
    pub fn trigger_reload(&self) {
        self.reload.notify_one();
    }

    /// `RefreshBundle`: reloads the relationships, then refreshes `trust_domain` now. `None`
    /// when no relationship names it.
    pub async fn refresh_bundle_for(
        &self,
        trust_domain: &TrustDomain,
    ) -> Option<Result<Refreshed, RefreshError>> {
        if let Err(e) = self.reload_relationships().await {
            tracing::error!(error = %e, "Failed to reload federation relationships");
        }
        let (relationship, lock, reschedule) = {
            let updaters = self.lock_updaters();
            let updater = updaters.get(trust_domain)?;
            (
                updater.relationship.clone(),
                updater.lock.clone(),
                updater.reschedule.clone(),
            )
        };
        let result = {
            let _guard = lock.lock().await;
            let relationship = lock_relationship(&relationship).clone();
            update_bundle(self.datastore.as_ref(), trust_domain, &relationship).await
        };
        if result.is_ok() {
            reschedule.notify_one();
        }
        Some(result.map(|(refreshed, _)| refreshed))
    }

    fn lock_updaters(&self) -> std::sync::MutexGuard<'_, HashMap<TrustDomain, Updater>> {
        self.updaters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn relationships(&self) -> Result<BTreeMap<TrustDomain, Relationship>, RefreshError> {
        let (stored, _) = self
            .datastore
            .list_federation_relationships(None)
            .await
            .map_err(|e| RefreshError::DataStore(e.to_string()))?;
        let mut all = BTreeMap::new();
        for relationship in stored {
            let Ok(td) = TrustDomain::new(&relationship.trust_domain) else {
                tracing::warn!(
                    trust_domain = relationship.trust_domain,
                    "Ignoring federation relationship with an invalid trust domain"
                );
                continue;
            };
            let endpoint_spiffe_id = match &relationship.bundle_endpoint_profile {
                Some(BundleEndpointProfile::HttpsWeb(_)) => None,
                Some(BundleEndpointProfile::HttpsSpiffe(p)) => {
                    match SpiffeId::parse(&p.endpoint_spiffe_id) {
                        Ok(id) => Some(id),
                        Err(e) => {
                            tracing::warn!(
                                trust_domain = td.name(),
                                error = %e,
                                "Ignoring federation relationship with an invalid endpoint SPIFFE ID"
                            );
                            continue;
                        }
                    }
                }
                None => {
                    tracing::warn!(
                        trust_domain = td.name(),
                        "Ignoring federation relationship with unknown profile type"
                    );
                    continue;
                }
            };
            all.insert(
                td,
                Relationship {
                    url: relationship.bundle_endpoint_url,
                    endpoint_spiffe_id,
                },
            );
        }
        all.extend(self.lock_from_file().clone());
        all.remove(&self.own_trust_domain);
        Ok(all)
    }

    async fn reload_relationships(&self) -> Result<(), RefreshError> {
        let mut wanted = self.relationships().await?;
        let mut updaters = self.lock_updaters();
        updaters.retain(|td, updater| match wanted.remove(td) {
            Some(relationship) => {
                let mut current = lock_relationship(&updater.relationship);
                if *current != relationship {
                    tracing::info!(
                        trust_domain = td.name(),
                        bundle_endpoint_url = relationship.url,
                        bundle_endpoint_profile = relationship.profile_name(),
                        "Updated configuration for managed trust domain"
                    );
                    *current = relationship;
                }
                true
            }
            None => {
                tracing::info!(trust_domain = td.name(), "Trust domain no longer managed");
                updater.cancel.cancel();
                false
            }
        });
        for (td, relationship) in wanted {
            tracing::info!(
                trust_domain = td.name(),
                bundle_endpoint_url = relationship.url,
                bundle_endpoint_profile = relationship.profile_name(),
                "Trust domain is now managed"
            );
            let updater = Updater {
                relationship: Arc::new(Mutex::new(relationship)),
                lock: Arc::new(tokio::sync::Mutex::new(())),
                reschedule: Arc::new(Notify::new()),
                cancel: self.cancel.child_token(),
            };
            tokio::spawn(poll(
                self.datastore.clone(),
                td.clone(),
                updater.relationship.clone(),
                updater.lock.clone(),
                updater.reschedule.clone(),
                updater.cancel.clone(),
            ));
            updaters.insert(td, updater);
        }
        Ok(())
    }
}

fn lock_relationship(
    relationship: &Mutex<Relationship>,
) -> std::sync::MutexGuard<'_, Relationship> {
    relationship.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One updater: refresh, wait, repeat until cancelled.
async fn poll(
    datastore: Arc<dyn DataStore>,
    trust_domain: TrustDomain,
    relationship: Arc<Mutex<Relationship>>,
    lock: Arc<tokio::sync::Mutex<()>>,
    reschedule: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let current = lock_relationship(&relationship).clone();
        let next = {
            let _guard = lock.lock().await;
            match update_bundle(datastore.as_ref(), &trust_domain, &current).await {
                Ok((refreshed, bundle)) => {
                    failures = 0;
                    match refreshed {
                        Refreshed::Stored => tracing::info!(
                            trust_domain = trust_domain.name(),
                            sequence_number = bundle.as_ref().map_or(0, |b| b.sequence_number),
                            "Bundle refreshed"
                        ),
                        Refreshed::Unchanged => {
                            tracing::debug!(trust_domain = trust_domain.name(), "Bundle unchanged")
                        }
                        Refreshed::Stale => tracing::info!(
                            trust_domain = trust_domain.name(),
                            "Endpoint served an older bundle than the stored one; kept the stored one"
                        ),
                    }
                    bundle.as_ref().map_or(MINIMUM_REFRESH_HINT, next_refresh)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::error!(
                        trust_domain = trust_domain.name(),
                        bundle_endpoint_url = current.url,
                        error = %e,
                        "Error updating bundle"
                    );
                    let base = match local_bundle(datastore.as_ref(), &trust_domain).await {
                        Ok(Some(bundle)) => next_refresh(&bundle),
                        _ => MINIMUM_REFRESH_HINT,
                    };
                    base * 2u32.pow(failures.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS))
                }
            }
        };
        tracing::debug!(
            trust_domain = trust_domain.name(),
            next_refresh_secs = next.as_secs(),
            "Scheduling next bundle refresh"
        );
        tokio::select! {
            () = cancel.cancelled() => {
                tracing::info!(trust_domain = trust_domain.name(), "No longer polling for updates");
                return;
            }
            () = tokio::time::sleep(next) => {}
            () = reschedule.notified() => {}
        }
    }
}

async fn local_bundle(
    datastore: &dyn DataStore,
    trust_domain: &TrustDomain,
) -> Result<Option<Bundle>, RefreshError> {
    let Some(stored) = datastore
        .fetch_bundle(trust_domain.name())
        .await
        .map_err(|e| {
            RefreshError::DataStore(format!("failed to fetch local federated bundle: {e}"))
        })?
    else {
        return Ok(None);
    };
    bundle_to_document(&stored).map(Some).map_err(|e| {
        RefreshError::DataStore(format!(
            "the stored bundle of {:?} is unusable: {e}",
            trust_domain.name()
        ))
    })
}

/// Fetches the endpoint's bundle and stores it when it is new; returns what happened and the
/// bundle now in force (the stored one when the fetch changed nothing).
pub async fn update_bundle(
    datastore: &dyn DataStore,
    trust_domain: &TrustDomain,
    relationship: &Relationship,
) -> Result<(Refreshed, Option<Bundle>), RefreshError> {
    let started = std::time::Instant::now();
    let result = fetch_and_store_bundle(datastore, trust_domain, relationship).await;
    spire_common::telemetry::server::federated_bundle_fetched(
        trust_domain.name(),
        result.is_ok(),
        matches!(result, Ok((Refreshed::Stored, _))),
        started,
    );
    result
}

async fn fetch_and_store_bundle(
    datastore: &dyn DataStore,
    trust_domain: &TrustDomain,
    relationship: &Relationship,
) -> Result<(Refreshed, Option<Bundle>), RefreshError> {
    let auth = match &relationship.endpoint_spiffe_id {
        None => EndpointAuth::Web,
        Some(endpoint_id) => {
            let endpoint_td = endpoint_id.trust_domain();
            let roots = local_bundle(datastore, &endpoint_td)
                .await?
                .filter(|b| !b.x509_authorities.is_empty())
                .ok_or_else(|| RefreshError::NoLocalBundle(endpoint_td.name().to_owned()))?
                .x509_authorities;
            EndpointAuth::Spiffe {
                endpoint_id: endpoint_id.clone(),
                roots,
            }
        }
    };
    let fetched = client::fetch_bundle(&relationship.url, trust_domain, &auth)
        .await
        .map_err(|source| RefreshError::Fetch {
            url: relationship.url.clone(),
            source,
        })?;
    let written = datastore
        .set_refreshed_bundle(bundle_from_document(fetched.clone()))
        .await
        .map_err(|e| {
            RefreshError::DataStore(format!("failed to store fetched federated bundle: {e}"))
        })?;
    Ok(match written {
        RefreshedBundleWrite::Stored => (Refreshed::Stored, Some(fetched)),
        RefreshedBundleWrite::Unchanged => (Refreshed::Unchanged, Some(fetched)),
        RefreshedBundleWrite::Stale => (
            Refreshed::Stale,
            local_bundle(datastore, trust_domain).await?,
        ),
    })
}

/// When to poll again after `bundle` (upstream's rule): a quarter of its refresh hint, or
/// without one a quarter of a tenth of its shortest CA lifetime, never less often than
/// [`MINIMUM_REFRESH_HINT`] allows.
pub fn next_refresh(bundle: &Bundle) -> Duration {
    let hint = match bundle.refresh_hint.filter(|h| !h.is_zero()) {
        Some(hint) => hint,
        None => {
            let shortest = bundle
                .x509_authorities
                .iter()
                .filter_map(|der| spire_core::x509::certificate_validity(der).ok())
                .map(|v| v.not_after - v.not_before)
                .min();
            match shortest {
                Some(lifetime) => {
                    Duration::try_from(lifetime / 10).unwrap_or(DEFAULT_REFRESH_INTERVAL)
                }
                None => DEFAULT_REFRESH_INTERVAL,
            }
        }
    };
    hint.max(MINIMUM_REFRESH_HINT) / ATTEMPTS_PER_REFRESH_HINT
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn bundle(hint: Option<u64>) -> Bundle {
        let mut b = Bundle::new(TrustDomain::new("b.test").unwrap());
        b.refresh_hint = hint.map(Duration::from_secs);
        b
    }

    #[test]
    fn polls_four_times_per_refresh_hint_but_not_below_the_minimum() {
        assert_eq!(next_refresh(&bundle(Some(300))), Duration::from_secs(75));
        assert_eq!(next_refresh(&bundle(Some(10))), Duration::from_secs(15));
        assert_eq!(next_refresh(&bundle(None)), Duration::from_secs(75));
    }
}
