//! The [`Manager`]: syncs with the server every `sync_interval` (with jittered backoff on
//! failure, or at once on a server hint), mints every missing or half-expired X509-SVID in
//! batches of up to 500 per sync, and serves
//! subscriptions and JWT-SVIDs from its cache.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spire_common::telemetry::agent as telemetry;
use spire_core::bundle::Bundle;
use spire_core::jwt::parse_jwt_svid_insecure;
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::{Selector, SelectorSet};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{X509Svid, certificate_public_key, certificate_validity, csr_der};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::cache::{CachedEntry, CachedSvid, MintRequest, State, same_view};
use super::jwt_cache::{CachedJwt, JwtCache};
use super::server_api::{EntryRevision, HintsOffer, ServerApi, SyncedEntries, bundle_from_proto};
use super::{JwtIdentity, ManagerError, WorkloadIdentities, WorkloadUpdate};

mod hinted;

/// The time source; tests inject one to move past an SVID's half-life.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// How often an extra sync may run for a subscriber waiting on a missing SVID (upstream's
/// SVID sync interval).
const MIN_TRIGGERED_SYNC_SPACING: Duration = Duration::from_millis(500);

/// The most CSRs one BatchNewX509SVID call carries: a server's signing rate limit (500 per
/// second per agent address, upstream's burst) refuses larger batches outright, and waits
/// on smaller ones.
const MAX_CSRS_PER_BATCH: usize = 500;

/// How long a sync hint from the server waits for more before the sync starts, so a burst
/// of changes (a batch of entries) costs one sync.
const HINT_DEBOUNCE: Duration = Duration::from_millis(20);

/// How long the agent waits before asking again a server that does not offer sync hints
/// (it may be replaced by one that does, as when upstream's server is swapped for ours).
const HINTS_RETRY_WHEN_NOT_OFFERED: Duration = Duration::from_secs(300);

/// Longest wait before re-subscribing to sync hints after the stream failed.
const HINTS_RETRY_MAX: Duration = Duration::from_secs(30);

/// The version this agent reports with PostStatus: ours, marked so an operator can tell it
/// from an upstream agent's in `agent list`.
pub const AGENT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-spire-rs");

/// Upstream's default for both SVID cache bounds.
const DEFAULT_CACHE_MAX_SIZE: usize = 1000;

/// Tuning of the manager; [`ManagerOptions::default`] has upstream's defaults.
#[derive(Clone)]
pub struct ManagerOptions {
    /// Time between syncs while the server answers (upstream: 5 s).
    pub sync_interval: Duration,
    /// Soft bound on cached X509-SVIDs (`x509_svid_cache_max_size`, default 1000); entries a
    /// workload subscribes to are always kept. 0 means the default, as upstream.
    pub x509_svid_cache_max_size: usize,
    /// Bound on cached JWT-SVIDs (`jwt_svid_cache_max_size`, default 1000). 0 means the
    /// default, as upstream.
    pub jwt_svid_cache_max_size: usize,
    /// Key type of the workload SVIDs' private keys (`workload_x509_svid_key_type`).
    pub svid_key_type: KeyType,
    /// Current time, for half-life checks.
    pub clock: Clock,
    /// First retry delay after a failed sync; grows ×1.5 per failure (default 5 s).
    pub retry_base: Duration,
    /// Longest retry delay (default 4 min).
    pub retry_max: Duration,
    /// `experimental.use_sync_authorized_entries` (default true): sync with
    /// SyncAuthorizedEntries revisions; false forces GetAuthorizedEntries.
    pub use_sync_authorized_entries: bool,
    /// Subscribe to the server's sync hints when it offers them (default true).
    pub follow_sync_hints: bool,
    /// `availability_target`: renew workload X509-SVIDs once only this much lifetime is
    /// left, when that comes before the half-life.
    pub availability_target: Option<Duration>,
    /// `experimental.jwt_svid_cache_hit_timeout` (default 30 s): how long a JWT-SVID request
    /// waits for the server when an unexpired JWT-SVID is cached; then the cached one is
    /// served.
    pub jwt_svid_cache_hit_timeout: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_secs(5),
            x509_svid_cache_max_size: DEFAULT_CACHE_MAX_SIZE,
            jwt_svid_cache_max_size: DEFAULT_CACHE_MAX_SIZE,
            svid_key_type: KeyType::EcP256,
            clock: Arc::new(OffsetDateTime::now_utc),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(240),
            use_sync_authorized_entries: true,
            follow_sync_hints: true,
            availability_target: None,
            jwt_svid_cache_hit_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for ManagerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerOptions")
            .field("sync_interval", &self.sync_interval)
            .field("x509_svid_cache_max_size", &self.x509_svid_cache_max_size)
            .field("jwt_svid_cache_max_size", &self.jwt_svid_cache_max_size)
            .field("svid_key_type", &self.svid_key_type)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field(
                "use_sync_authorized_entries",
                &self.use_sync_authorized_entries,
            )
            .field("follow_sync_hints", &self.follow_sync_hints)
            .field("availability_target", &self.availability_target)
            .field(
                "jwt_svid_cache_hit_timeout",
                &self.jwt_svid_cache_hit_timeout,
            )
            .finish_non_exhaustive()
    }
}

/// Cache sizes, for `debug getinfo` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Authorized entries known from the last sync.
    pub entries: usize,
    /// X509-SVIDs held for workloads.
    pub x509_svids: usize,
    /// X509-SVIDs held for `store_svid` entries (upstream's SVIDStore cache).
    pub svidstore_x509_svids: usize,
    /// JWT-SVIDs held.
    pub jwt_svids: usize,
    /// When the last sync succeeded (Unix seconds), for `debug getinfo`'s `lastSyncSuccess`.
    pub last_sync_success: Option<i64>,
}

/// What the last successful sync did, for `debug` output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether SyncAuthorizedEntries revisions were used (false: every entry was fetched).
    pub revision_based: bool,
    /// Entries received whole.
    pub entries_fetched: usize,
    /// Entries authorized after the sync.
    pub entries_total: usize,
    /// X509-SVIDs minted.
    pub svids_minted: usize,
    /// How long getting the entries took (server time plus transfer).
    pub entries_elapsed: Duration,
}

/// The agent's cache of entries, SVIDs and bundles, kept in sync with the server.
pub struct Manager {
    api: Arc<dyn ServerApi>,
    trust_domain: TrustDomain,
    options: ManagerOptions,
    state: Mutex<State>,
    jwt: Mutex<JwtCache>,
    /// Serialises syncs (the loop and explicit `sync_once` calls).
    sync_lock: tokio::sync::Mutex<()>,
    /// Raised when a subscriber waits for an SVID that is not minted yet.
    sync_now: Notify,
    /// Raised when the server hints that this agent's view changed.
    hinted: Notify,
    /// What the hints received since the last sync ask for.
    pending_hint: Mutex<hinted::PendingHint>,
    /// What the last successful sync did.
    last_sync: Mutex<Option<SyncReport>>,
    bundles_tx: watch::Sender<Arc<BTreeMap<String, Arc<Bundle>>>>,
    /// Unix seconds of the last successful sync.
    last_sync_success: Mutex<Option<i64>>,
    /// Unix seconds and error of the sync loop's last attempt, for `api explain`.
    last_attempt: Mutex<Option<(i64, Option<String>)>>,
    /// The X.509 authorities the server's bundle marks tainted, for the agent SVID rotation.
    tainted_roots: watch::Sender<Vec<Vec<u8>>>,
    /// `experimental.sync_interval`, which a configuration reload may change.
    sync_interval: watch::Sender<Duration>,
}

impl Manager {
    /// A manager serving `initial_bundle` (from bootstrap or the last attestation) until the
    /// first sync. Nothing talks to the server until [`Manager::sync_once`] or
    /// [`Manager::run`].
    pub fn new(
        api: Arc<dyn ServerApi>,
        trust_domain: TrustDomain,
        initial_bundle: Bundle,
        mut options: ManagerOptions,
    ) -> Arc<Self> {
        for size in [
            &mut options.x509_svid_cache_max_size,
            &mut options.jwt_svid_cache_max_size,
        ] {
            if *size == 0 {
                *size = DEFAULT_CACHE_MAX_SIZE;
            }
        }
        let jwt = JwtCache::new(options.jwt_svid_cache_max_size);
        let state = State::new(initial_bundle);
        let (bundles_tx, _) = watch::channel(Arc::new(state.all_bundles()));
        let sync_interval = watch::Sender::new(options.sync_interval);
        Arc::new(Self {
            api,
            trust_domain,
            options,
            state: Mutex::new(state),
            jwt: Mutex::new(jwt),
            sync_lock: tokio::sync::Mutex::new(()),
            sync_now: Notify::new(),
            hinted: Notify::new(),
            pending_hint: Mutex::new(hinted::PendingHint::default()),
            last_sync: Mutex::new(None),
            bundles_tx,
            last_sync_success: Mutex::new(None),
            last_attempt: Mutex::new(None),
            tainted_roots: watch::Sender::new(Vec::new()),
            sync_interval,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the cache half-updated in a way that
        // matters more than stopping to serve: keep going with what is there.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn jwt_cache(&self) -> MutexGuard<'_, JwtCache> {
        self.jwt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> i64 {
        (self.options.clock)().unix_timestamp()
    }

    /// Sizes of the caches.
    pub fn cache_stats(&self) -> CacheStats {
        let (entries, x509_svids, svidstore_x509_svids) = {
            let state = self.state();
            let stored = state
                .svids
                .keys()
                .filter(|id| state.entries.get(*id).is_some_and(|e| e.store_svid))
                .count();
            (
                state.entries.len(),
                state.svids.len().saturating_sub(stored),
                stored,
            )
        };
        CacheStats {
            entries,
            x509_svids,
            svidstore_x509_svids,
            jwt_svids: self.jwt_cache().len(),
            last_sync_success: *self
                .last_sync_success
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// When the sync loop last tried to sync (Unix seconds) and why it failed (`None`: it
    /// succeeded); `None` before the first attempt.
    pub fn last_sync_attempt(&self) -> Option<(i64, Option<String>)> {
        self.last_attempt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every cached entry: ID, SPIFFE ID and selectors, for `api explain`.
    pub fn entry_selectors(&self) -> Vec<(String, SpiffeId, SelectorSet)> {
        self.state()
            .entries
            .values()
            .map(|e| (e.id.clone(), e.spiffe_id.clone(), e.selectors.clone()))
            .collect()
    }

    /// The entries registered with `store_svid`, with their current SVID (once minted) and
    /// the bundles a store receives, for the SVIDStore service.
    pub fn svids_to_store(&self) -> Vec<super::StoreRecord> {
        let state = self.state();
        state
            .entries
            .values()
            .filter(|e| e.store_svid)
            .map(|e| super::StoreRecord {
                entry_id: e.id.clone(),
                spiffe_id: e.spiffe_id.clone(),
                selectors: e
                    .selectors
                    .iter()
                    .map(|s| (s.kind.clone(), s.value.clone()))
                    .collect(),
                svid: state
                    .svids
                    .get(&e.id)
                    .filter(|svid| svid.revision == e.revision)
                    .map(|svid| super::StoredSvid {
                        chain: svid.chain.clone(),
                        key: Arc::clone(&svid.key),
                        not_after: svid.not_after,
                    }),
                bundle: Arc::clone(&state.bundle),
                federated_bundles: e
                    .federates_with
                    .iter()
                    .filter_map(|td| state.federated.get(td).map(|b| (td.clone(), Arc::clone(b))))
                    .collect(),
            })
            .collect()
    }

    /// The X.509 authorities the last sync saw tainted; the agent SVID rotation renews an
    /// SVID signed under one of them at once.
    pub fn tainted_roots(&self) -> watch::Receiver<Vec<Vec<u8>>> {
        self.tainted_roots.subscribe()
    }

    /// The agent's own trust domain bundle as currently cached.
    pub fn bundle(&self) -> Arc<Bundle> {
        Arc::clone(&self.state().bundle)
    }

    /// What the last successful sync did; `None` before the first.
    pub fn last_sync(&self) -> Option<SyncReport> {
        *self
            .last_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a full sync now (after a short debounce), as a server hint that names no
    /// entries does.
    pub fn hint_sync(&self) {
        self.pending_hint().want_full();
        self.hinted.notify_one();
    }

    fn pending_hint(&self) -> MutexGuard<'_, hinted::PendingHint> {
        self.pending_hint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One sync: fetch entries (only the changed ones when the server has
    /// SyncAuthorizedEntries) and bundles, drop what was deleted, mint every needed
    /// X509-SVID in one batch, and tell the subscribers whose view changed. On error the
    /// cache keeps what it had (SVIDs minted in this sync before the error are kept).
    pub async fn sync_once(&self) -> Result<(), ManagerError> {
        let _guard = self.sync_lock.lock().await;
        // Everything hinted so far is fetched below.
        self.pending_hint().covered();
        let started = Instant::now();
        let fetched = if self.options.use_sync_authorized_entries {
            let stale = |page: &[EntryRevision]| self.state().stale_ids(page);
            self.api.sync_authorized_entries(&stale).await
        } else {
            self.api.authorized_entries().await.map(SyncedEntries::Full)
        };
        telemetry::sync_entries_fetched(fetched.is_ok(), started);
        let synced = fetched?;
        let entries_elapsed = started.elapsed();
        let raw_bundle = self.api.bundle().await?;
        let tainted_roots: Vec<Vec<u8>> = raw_bundle
            .x509_authorities
            .iter()
            .filter(|a| a.tainted)
            .map(|a| a.asn1.clone())
            .collect();
        let tainted_jwt_keys: Vec<String> = raw_bundle
            .jwt_authorities
            .iter()
            .filter(|k| k.tainted)
            .map(|k| k.key_id.clone())
            .collect();
        let bundle = bundle_from_proto(&raw_bundle)?;
        let taint_started = Instant::now();
        let dropped = self.jwt_cache().remove_signed_by(&tainted_jwt_keys);
        if dropped > 0 {
            telemetry::tainted_svids_processed(true, dropped, taint_started);
            tracing::info!(
                count = dropped,
                "JWT-SVIDs signed by a tainted authority were dropped from the cache"
            );
        }
        if bundle.trust_domain != self.trust_domain {
            return Err(ManagerError::Internal(format!(
                "server sent the bundle of {} but the agent is in trust domain {}",
                bundle.trust_domain, self.trust_domain
            )));
        }

        let parse = |raw: Vec<spire_proto::spire::api::types::Entry>| {
            let mut entries = BTreeMap::new();
            for raw in &raw {
                match CachedEntry::from_proto(raw) {
                    Ok(entry) => {
                        entries.insert(entry.id.clone(), entry);
                    }
                    Err(reason) => tracing::warn!("ignoring registration entry: {reason}"),
                }
            }
            entries
        };
        let (revision_based, entries_fetched, wanted) = {
            match synced {
                SyncedEntries::Full(raw) => {
                    let fetched = raw.len();
                    let entries = parse(raw);
                    let mut state = self.state();
                    state.replace_entries(entries);
                    (false, fetched, state.federated_trust_domains())
                }
                SyncedEntries::Revisions { revisions, entries } => {
                    let fetched = entries.len();
                    let entries = parse(entries).into_values().collect();
                    let mut state = self.state();
                    state.apply_revisions(&revisions, entries);
                    (true, fetched, state.federated_trust_domains())
                }
            }
        };
        let federated = self.fetch_federated_bundles(wanted).await;

        let now = self.now();
        let (needed, entries_total) = {
            let mut state = self.state();
            state.set_bundles(bundle, federated);
            let taint_started = Instant::now();
            let marked = mark_tainted(&mut state, &tainted_roots);
            if marked > 0 {
                telemetry::tainted_svids_processed(false, marked, taint_started);
            }
            self.tainted_roots.send_if_modified(|current| {
                if *current == tainted_roots {
                    false
                } else {
                    current.clone_from(&tainted_roots);
                    true
                }
            });
            let needed = state.plan_mints(
                self.options.x509_svid_cache_max_size,
                now,
                self.options.availability_target,
            );
            let all = state.all_bundles();
            telemetry::sync_stats(all.len(), state.entries.len());
            telemetry::entry_changes(&std::mem::take(&mut state.changes));
            telemetry::expiring_svids(state.last_plan.expiring);
            telemetry::outdated_svids(state.last_plan.outdated);
            self.bundles_tx.send_if_modified(|current| {
                if **current == all {
                    false
                } else {
                    *current = Arc::new(all);
                    true
                }
            });
            (needed, state.entries.len())
        };

        let svids_minted = needed.len();
        let result = if needed.is_empty() {
            Ok(())
        } else {
            let minting = Instant::now();
            let minted = self.mint(needed).await;
            telemetry::sync_svids_fetched(minted.is_ok(), minting);
            minted
        };
        self.state().notify_subscribers();
        if telemetry::enabled() {
            let stats = self.cache_stats();
            telemetry::cache_sizes(stats.entries, stats.x509_svids);
        }
        if result.is_ok() {
            *self
                .last_sync_success
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(self.now());
            tracing::debug!(
                revision_based,
                entries_fetched,
                entries_total,
                svids_minted,
                entries_ms = entries_elapsed.as_secs_f64() * 1000.0,
                total_ms = started.elapsed().as_secs_f64() * 1000.0,
                "synced with the server"
            );
            *self
                .last_sync
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SyncReport {
                revision_based,
                entries_fetched,
                entries_total,
                svids_minted,
                entries_elapsed,
            });
        }
        result
    }

    /// Federated bundles for every trust domain in `wanted` (those some entry federates
    /// with); a bundle that cannot be fetched now keeps its cached version.
    async fn fetch_federated_bundles(
        &self,
        wanted: BTreeSet<String>,
    ) -> BTreeMap<String, Arc<Bundle>> {
        let previous = self.state().federated.clone();
        let mut federated = BTreeMap::new();
        for td in wanted
            .iter()
            .map(String::as_str)
            .filter(|td| *td != self.trust_domain.name())
        {
            let fetched = match self.api.federated_bundle(td).await {
                Ok(Some(proto)) => bundle_from_proto(&proto).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match fetched {
                Ok(Some(bundle)) if bundle.trust_domain.name() == td => {
                    federated.insert(td.to_owned(), Arc::new(bundle));
                }
                Ok(Some(bundle)) => tracing::warn!(
                    "server answered the federated bundle of {td} with one for {}; ignoring it",
                    bundle.trust_domain
                ),
                Ok(None) => {
                    tracing::debug!("server has no federated bundle for {td}");
                }
                Err(e) => {
                    tracing::warn!("could not fetch the federated bundle of {td}: {e}");
                    if let Some(old) = previous.get(td) {
                        federated.insert(td.to_owned(), Arc::clone(old));
                    }
                }
            }
        }
        federated
    }

    /// Mints `needed` in batches of at most [`MAX_CSRS_PER_BATCH`], one after the other.
    async fn mint(&self, mut needed: Vec<MintRequest>) -> Result<(), ManagerError> {
        while !needed.is_empty() {
            let rest = needed.split_off(needed.len().min(MAX_CSRS_PER_BATCH));
            self.mint_batch(needed).await?;
            needed = rest;
        }
        Ok(())
    }

    /// Generates keys and CSRs for `needed`, sends them in one batch and stores the results.
    async fn mint_batch(&self, needed: Vec<MintRequest>) -> Result<(), ManagerError> {
        let key_type = self.options.svid_key_type;
        let count = needed.len();
        let prepared = tokio::task::spawn_blocking(move || {
            needed
                .into_iter()
                .map(|request| {
                    let key = PrivateKey::generate(key_type).map_err(|e| {
                        ManagerError::Internal(format!("could not generate an SVID key: {e}"))
                    })?;
                    let csr = csr_der(&key).map_err(|e| {
                        ManagerError::Internal(format!("could not build a CSR: {e}"))
                    })?;
                    Ok((request, key, csr))
                })
                .collect::<Result<Vec<_>, ManagerError>>()
        })
        .await
        .map_err(|e| ManagerError::Internal(format!("key generation task failed: {e}")))??;

        let csrs = prepared
            .iter()
            .map(|(request, _, csr)| (request.entry_id.clone(), csr.clone()))
            .collect();
        let results = self.api.new_x509_svids(csrs).await?;
        if results.len() != count {
            return Err(ManagerError::Internal(format!(
                "server answered {} of {count} X509-SVID requests",
                results.len()
            )));
        }

        let mut state = self.state();
        let tick = state.tick;
        for ((request, key, _), result) in prepared.into_iter().zip(results) {
            let chain = match result {
                Ok(chain) => chain,
                Err(e) => {
                    tracing::warn!(
                        "server did not sign the SVID of entry {}: {e}",
                        request.entry_id
                    );
                    continue;
                }
            };
            match check_svid(&request.spiffe_id, &key, chain) {
                Ok((chain, not_before, not_after)) => {
                    let still_current = state
                        .entries
                        .get(&request.entry_id)
                        .is_some_and(|e| e.revision == request.revision);
                    if still_current {
                        state.store_svid(
                            &request.entry_id,
                            CachedSvid {
                                chain,
                                key: Arc::new(key),
                                not_before,
                                not_after,
                                revision: request.revision,
                                last_used: tick,
                                tainted: false,
                            },
                        );
                    }
                }
                Err(reason) => tracing::warn!(
                    "server returned an unusable SVID for entry {}: {reason}",
                    request.entry_id
                ),
            }
        }
        Ok(())
    }

    /// Changes the time between syncs (a configuration reload of
    /// `experimental.sync_interval`); a sync loop waiting on the old interval starts over
    /// with the new one at once.
    pub fn set_sync_interval(&self, interval: Duration) {
        self.sync_interval.send_replace(interval);
    }

    /// The current time between syncs.
    pub fn sync_interval(&self) -> Duration {
        *self.sync_interval.borrow()
    }

    /// Syncs every `sync_interval` until `cancel`; after a failure waits with jittered
    /// exponential backoff instead, serving the cached SVIDs meanwhile. A subscriber waiting
    /// for a not-yet-minted SVID starts a sync early.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        self.post_status().await;
        let hints = self
            .options
            .follow_sync_hints
            .then(|| tokio::spawn(Arc::clone(&self).follow_hints(cancel.clone())));
        self.sync_loop(&cancel).await;
        if let Some(hints) = hints {
            hints.abort();
        }
    }

    async fn sync_loop(&self, cancel: &CancellationToken) {
        let mut failures: u32 = 0;
        let mut interval_changed = self.sync_interval.subscribe();
        let mut hinted = false;
        loop {
            let started = Instant::now();
            let result = if std::mem::take(&mut hinted) {
                self.sync_hinted().await
            } else {
                self.sync_once().await
            };
            *self
                .last_attempt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((self.now(), result.as_ref().err().map(ToString::to_string)));
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!("sync with the server failed (attempt {failures}): {e}");
                }
            }
            if failures == 0 {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(self.sync_interval()) => {}
                    Ok(()) = interval_changed.changed() => {}
                    () = self.sync_now.notified() => {
                        let wait = (started + MIN_TRIGGERED_SYNC_SPACING)
                            .saturating_duration_since(Instant::now());
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    () = self.hinted.notified() => {
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(HINT_DEBOUNCE) => {}
                        }
                        hinted = true;
                    }
                }
            } else {
                let delay = backoff_delay(
                    self.options.retry_base,
                    self.options.retry_max,
                    failures,
                    random_unit(),
                );
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// Follows the server's sync hints until `cancel`: every hint starts a sync (see
    /// [`Manager::hint_sync`]). A server without the service (upstream's) is asked again
    /// only every few minutes, the sync interval meanwhile being the only trigger; a
    /// stream that fails is opened again with a growing delay.
    async fn follow_hints(self: Arc<Self>, cancel: CancellationToken) {
        use tokio_stream::StreamExt as _;

        let mut failures: u32 = 0;
        loop {
            let offer = tokio::select! {
                () = cancel.cancelled() => return,
                offer = self.api.watch_sync_hints() => offer,
            };
            let delay = match offer {
                Ok(HintsOffer::Offered(mut hints)) => {
                    tracing::debug!("following the server's sync hints");
                    loop {
                        let hint = tokio::select! {
                            () = cancel.cancelled() => return,
                            hint = hints.next() => hint,
                        };
                        if !matches!(hint, Some(Ok(_))) {
                            self.pending_hint().stream_ended();
                        }
                        match hint {
                            Some(Ok(hint)) => {
                                failures = 0;
                                self.pending_hint().add(&hint);
                                self.hinted.notify_one();
                            }
                            Some(Err(e)) => {
                                tracing::debug!("the server's sync hints stopped: {e}");
                                break;
                            }
                            None => {
                                tracing::debug!("the server closed its sync hints");
                                break;
                            }
                        }
                    }
                    failures = failures.saturating_add(1);
                    backoff_delay(
                        Duration::from_millis(500),
                        HINTS_RETRY_MAX,
                        failures,
                        random_unit(),
                    )
                }
                Ok(HintsOffer::NotOffered) => {
                    tracing::info!(
                        sync_interval = ?self.sync_interval(),
                        "the server offers no sync hints; changes arrive at the next sync"
                    );
                    HINTS_RETRY_WHEN_NOT_OFFERED
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!("subscribing to the server's sync hints failed: {e}");
                    backoff_delay(
                        Duration::from_millis(500),
                        HINTS_RETRY_MAX,
                        failures,
                        random_unit(),
                    )
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Tells the server this agent's version, as upstream's manager does before its first
    /// sync; a server that does not take it (before SPIRE 1.15) is logged, not fatal.
    pub async fn post_status(&self) {
        if let Err(e) = self.api.post_status(AGENT_VERSION).await {
            tracing::warn!(
                agent_version = AGENT_VERSION,
                "Failed to post agent status: {e}"
            );
        }
    }

    fn matching_entries(
        &self,
        selectors: &SelectorSet,
        spiffe_id: Option<&SpiffeId>,
    ) -> Vec<CachedEntry> {
        self.state()
            .matching(selectors)
            .filter(|e| spiffe_id.is_none_or(|id| *id == e.spiffe_id))
            .cloned()
            .collect()
    }

    /// A JWT-SVID for the entry: the cached one while fresh, else a new one (the cached one
    /// if the server cannot be reached and it has not expired). Entries with
    /// `jwt_svid_include_jti` bypass the cache both ways: every token is new and unique.
    async fn jwt_for_entry(
        &self,
        entry: &CachedEntry,
        audience: &[String],
    ) -> Result<String, ManagerError> {
        let now = self.now();
        let cached = if entry.jwt_svid_include_jti {
            None
        } else {
            self.jwt_cache()
                .get(entry.spiffe_id.as_str(), audience)
                .cloned()
        };
        if let Some(cached) = cached.as_ref().filter(|c| c.fresh(now)) {
            return Ok(cached.token.clone());
        }
        // With an unexpired JWT-SVID in hand, the server gets only the cache-hit timeout
        // before the cached one is served (upstream's RPCTimeoutWithCacheHit).
        let has_cache_hit = cached.as_ref().is_some_and(|c| c.unexpired(now));
        let minted = if has_cache_hit {
            tokio::time::timeout(
                self.options.jwt_svid_cache_hit_timeout,
                self.api.new_jwt_svid(&entry.id, audience),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ManagerError::Unavailable(format!(
                    "the server did not answer within jwt_svid_cache_hit_timeout ({})",
                    spire_core::duration::format(self.options.jwt_svid_cache_hit_timeout)
                )))
            })
        } else {
            self.api.new_jwt_svid(&entry.id, audience).await
        };
        let token = match minted {
            Ok(token) => token,
            Err(e) => {
                return match cached.filter(|c| c.unexpired(now)) {
                    Some(cached) => {
                        tracing::warn!(
                            "could not renew the JWT-SVID of {}, serving the cached one: {e}",
                            entry.spiffe_id
                        );
                        Ok(cached.token)
                    }
                    None => Err(e),
                };
            }
        };
        let parsed = parse_jwt_svid_insecure(&token).map_err(|e| {
            ManagerError::Internal(format!("server returned an unreadable JWT-SVID: {e}"))
        })?;
        if parsed.spiffe_id != entry.spiffe_id {
            return Err(ManagerError::Internal(format!(
                "server returned a JWT-SVID for {} instead of {}",
                parsed.spiffe_id, entry.spiffe_id
            )));
        }
        if entry.jwt_svid_include_jti {
            return Ok(token);
        }
        let issued_at = parsed
            .claims
            .get("iat")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(now);
        self.jwt_cache().insert(
            entry.spiffe_id.as_str(),
            audience,
            CachedJwt {
                token: token.clone(),
                issued_at,
                expires_at: parsed.expiry,
            },
            now,
        );
        Ok(token)
    }
}

/// Checks that a minted chain is for the entry's SPIFFE ID and our key; returns it with
/// the leaf's validity in Unix seconds.
fn check_svid(
    spiffe_id: &SpiffeId,
    key: &PrivateKey,
    chain: Vec<Vec<u8>>,
) -> Result<(Vec<Vec<u8>>, i64, i64), String> {
    let svid = X509Svid::parse(chain).map_err(|e| e.to_string())?;
    if svid.spiffe_id() != spiffe_id {
        return Err(format!(
            "it names {} instead of {spiffe_id}",
            svid.spiffe_id()
        ));
    }
    let public_key = certificate_public_key(svid.leaf_der()).map_err(|e| e.to_string())?;
    if public_key != key.public_key_der() {
        return Err("its public key is not the one in the CSR".to_owned());
    }
    let validity = certificate_validity(svid.leaf_der()).map_err(|e| e.to_string())?;
    Ok((
        svid.chain().to_vec(),
        validity.not_before.unix_timestamp(),
        validity.not_after.unix_timestamp(),
    ))
}

/// Delay before retry number `failures` (1 = first): `base × 1.5^(failures-1)`, spread by
/// ±20 % with `unit` (a random number in [0, 1)), never more than `max`.
pub fn backoff_delay(base: Duration, max: Duration, failures: u32, unit: f64) -> Duration {
    let exponent = i32::try_from(failures.saturating_sub(1))
        .unwrap_or(i32::MAX)
        .min(64);
    let raw = base.as_secs_f64() * 1.5_f64.powi(exponent);
    let jittered = raw.min(max.as_secs_f64()) * (0.8 + 0.4 * unit.clamp(0.0, 1.0));
    Duration::from_secs_f64(jittered.min(max.as_secs_f64()).max(0.0))
}

/// A random number in [0, 1) from the system RNG (0.5 if it fails: no jitter, still safe).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[async_trait]
impl WorkloadIdentities for Manager {
    /// The current view now, and a new value after every sync that changes it. Identities
    /// list only SVIDs already minted: when a matching entry has none yet, an early sync is
    /// started and the receiver changes once it is minted (one server round trip).
    fn subscribe(&self, selectors: Vec<Selector>) -> watch::Receiver<Arc<WorkloadUpdate>> {
        let selectors: SelectorSet = selectors.into_iter().collect();
        let (rx, missing) = {
            let mut state = self.state();
            state.drop_closed_subscribers();
            let (update, missing) = state.view(&selectors);
            let (tx, rx) = watch::channel(Arc::new(update));
            state.add_subscriber(selectors, tx);
            (rx, missing)
        };
        if missing {
            self.sync_now.notify_one();
        }
        rx
    }

    /// Subscribes, then waits (starting an early sync every half second, upstream's SVID
    /// sync interval) until every matching entry has its SVID: the subscription itself
    /// makes the sync mint them, even past `x509_svid_cache_max_size`.
    async fn subscribe_when_ready(
        &self,
        selectors: Vec<Selector>,
    ) -> watch::Receiver<Arc<WorkloadUpdate>> {
        let set: SelectorSet = selectors.iter().cloned().collect();
        let mut rx = self.subscribe(selectors);
        loop {
            // Ready when nothing is missing and the subscription already holds that view
            // (a sync stores SVIDs a moment before it tells subscribers).
            let current = Arc::clone(&rx.borrow_and_update());
            let ready = {
                let (view, missing) = self.state().view(&set);
                !missing && same_view(&current, &view)
            };
            if ready {
                break;
            }
            self.sync_now.notify_one();
            if let Ok(Err(_)) = tokio::time::timeout(MIN_TRIGGERED_SYNC_SPACING, rx.changed()).await
            {
                // The manager dropped the subscription; the stream reports it.
                break;
            }
        }
        rx
    }

    async fn fetch_jwt_svids(
        &self,
        selectors: &[Selector],
        spiffe_id: Option<&SpiffeId>,
        audience: &[String],
    ) -> Result<Vec<JwtIdentity>, ManagerError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(ManagerError::InvalidArgument(
                "audience must be specified".to_owned(),
            ));
        }
        let selectors: SelectorSet = selectors.iter().cloned().collect();
        let entries = self.matching_entries(&selectors, spiffe_id);
        if entries.is_empty() {
            return Err(ManagerError::NoIdentity);
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in &entries {
            let token = self.jwt_for_entry(entry, audience).await?;
            out.push(JwtIdentity {
                spiffe_id: entry.spiffe_id.clone(),
                token,
                hint: entry.hint.clone(),
            });
        }
        Ok(out)
    }

    fn bundles(&self) -> watch::Receiver<Arc<BTreeMap<String, Arc<Bundle>>>> {
        self.bundles_tx.subscribe()
    }
}

/// Marks the cached SVIDs signed under one of `tainted_roots` for minting again (upstream's
/// `TaintX509SVIDs`), and tells the rotation of the agent's own SVID about the roots.
/// Returns how many were newly marked.
fn mark_tainted(state: &mut State, tainted_roots: &[Vec<u8>]) -> usize {
    if tainted_roots.is_empty() {
        return 0;
    }
    let mut marked = 0usize;
    for svid in state.svids.values_mut() {
        if !svid.tainted && chain_is_under(&svid.chain, tainted_roots) {
            svid.tainted = true;
            marked = marked.saturating_add(1);
        }
    }
    if marked > 0 {
        tracing::info!(
            count = marked,
            "X.509-SVIDs signed by a tainted authority will be rotated"
        );
    }
    marked
}

/// Whether some certificate of `chain` is one of `roots` or is signed by one of them.
pub fn chain_is_under(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> bool {
    use x509_parser::prelude::FromDer;
    let parsed_roots: Vec<_> = roots
        .iter()
        .filter_map(|r| x509_parser::certificate::X509Certificate::from_der(r).ok())
        .map(|(_, c)| c)
        .collect();
    chain.iter().any(|der| {
        roots.iter().any(|r| r == der)
            || x509_parser::certificate::X509Certificate::from_der(der).is_ok_and(|(_, cert)| {
                parsed_roots.iter().any(|root| {
                    cert.issuer().as_raw() == root.subject().as_raw()
                        && cert.verify_signature(Some(root.public_key())).is_ok()
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spire_core::x509::{
        CaTemplate, Issuer, SvidTemplate, Validity, self_signed_ca, x509_svid_from_csr,
    };
    use spire_proto::spire::api::types;

    /// A server with fixed entries (`<id>` for selector `t:v:<id>`) and a real CA.
    struct FakeServer {
        /// The signing key and CA; replaced by [`FakeServer::rotate_and_taint`].
        ca: std::sync::Mutex<(PrivateKey, Vec<u8>)>,
        /// Roots still in the bundle but marked tainted.
        tainted: std::sync::Mutex<Vec<Vec<u8>>>,
        entries: Vec<types::Entry>,
    }

    fn new_ca() -> (PrivateKey, Vec<u8>) {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let template = CaTemplate::new(
            TrustDomain::new("example.org").unwrap(),
            Validity::from_now(OffsetDateTime::now_utc(), time::Duration::days(1)),
        );
        let ca = self_signed_ca(&key, &template).unwrap();
        (key, ca)
    }

    impl FakeServer {
        /// Signs with a new CA from now on and marks the old one tainted in the bundle, as
        /// a server does after `localauthority x509 activate` and `taint`.
        fn rotate_and_taint(&self) -> Vec<u8> {
            let (key, ca) = new_ca();
            let old = std::mem::replace(&mut *self.ca.lock().unwrap(), (key, ca));
            self.tainted.lock().unwrap().push(old.1.clone());
            old.1
        }

        fn new(ids: &[&str]) -> Self {
            let entries = ids
                .iter()
                .map(|id| types::Entry {
                    id: (*id).to_owned(),
                    spiffe_id: Some(types::Spiffeid {
                        trust_domain: "example.org".to_owned(),
                        path: format!("/{id}"),
                    }),
                    selectors: vec![types::Selector {
                        r#type: "t".to_owned(),
                        value: format!("v:{id}"),
                    }],
                    ..Default::default()
                })
                .collect();
            Self {
                ca: std::sync::Mutex::new(new_ca()),
                tainted: std::sync::Mutex::default(),
                entries,
            }
        }
    }

    #[async_trait]
    impl ServerApi for FakeServer {
        async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError> {
            Ok(self.entries.clone())
        }

        async fn new_x509_svids(
            &self,
            csrs: Vec<(String, Vec<u8>)>,
        ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError> {
            let ca = self.ca.lock().unwrap();
            let issuer = Issuer::new(&ca.1, &ca.0).unwrap();
            Ok(csrs
                .iter()
                .map(|(id, csr)| {
                    let spiffe_id = SpiffeId::parse(&format!("spiffe://example.org/{id}")).unwrap();
                    let template = SvidTemplate::new(
                        spiffe_id,
                        Validity::from_now(OffsetDateTime::now_utc(), time::Duration::hours(1)),
                    );
                    Ok(vec![x509_svid_from_csr(&issuer, csr, &template).unwrap()])
                })
                .collect())
        }

        async fn bundle(&self) -> Result<types::Bundle, ManagerError> {
            let mut x509_authorities: Vec<types::X509Certificate> = self
                .tainted
                .lock()
                .unwrap()
                .iter()
                .map(|asn1| types::X509Certificate {
                    asn1: asn1.clone(),
                    tainted: true,
                })
                .collect();
            x509_authorities.push(types::X509Certificate {
                asn1: self.ca.lock().unwrap().1.clone(),
                tainted: false,
            });
            Ok(types::Bundle {
                trust_domain: "example.org".to_owned(),
                x509_authorities,
                ..Default::default()
            })
        }

        async fn federated_bundle(&self, _: &str) -> Result<Option<types::Bundle>, ManagerError> {
            Ok(None)
        }

        async fn new_jwt_svid(&self, _: &str, _: &[String]) -> Result<String, ManagerError> {
            Err(ManagerError::Unavailable("no JWTs here".to_owned()))
        }

        async fn post_status(&self, _: &str) -> Result<(), ManagerError> {
            Ok(())
        }
    }

    fn selectors(id: &str) -> Vec<Selector> {
        vec![Selector::parse(&format!("t:v:{id}")).unwrap()]
    }

    /// Room for one SVID: "aaa" is minted on its own, "zzz" only because a workload waits
    /// for it; the waiting subscriber's first view holds it (upstream blocks new subscribers
    /// the same way), where a plain subscription starts empty.
    #[tokio::test]
    async fn a_new_subscriber_waits_for_svids_beyond_the_cache_bound() {
        let manager = Manager::new(
            Arc::new(FakeServer::new(&["aaa", "zzz"])),
            TrustDomain::new("example.org").unwrap(),
            Bundle::new(TrustDomain::new("example.org").unwrap()),
            ManagerOptions {
                x509_svid_cache_max_size: 1,
                ..ManagerOptions::default()
            },
        );
        manager.sync_once().await.unwrap();
        assert_eq!(manager.cache_stats().x509_svids, 1);
        assert!(
            manager
                .subscribe(selectors("zzz"))
                .borrow()
                .identities
                .is_empty()
        );

        let cancel = CancellationToken::new();
        let sync_loop = tokio::spawn(Arc::clone(&manager).run(cancel.clone()));
        let rx = tokio::time::timeout(
            Duration::from_secs(10),
            manager.subscribe_when_ready(selectors("zzz")),
        )
        .await
        .expect("the subscriber's SVID is minted by an early sync");
        let ids: Vec<String> = rx
            .borrow()
            .identities
            .iter()
            .map(|i| i.spiffe_id.to_string())
            .collect();
        assert_eq!(ids, ["spiffe://example.org/zzz"]);

        // Nothing is missing: a second subscriber gets its view at once.
        let again = tokio::time::timeout(
            Duration::from_secs(2),
            manager.subscribe_when_ready(selectors("zzz")),
        )
        .await
        .expect("no wait when every SVID is there");
        assert_eq!(again.borrow().identities.len(), 1);
        cancel.cancel();
        sync_loop.await.unwrap();
    }

    /// A server that tainted the authority an SVID chains to: the next sync mints the SVID
    /// again under the new authority, the subscriber keeps the old one until then (no empty
    /// view), and the agent SVID rotation hears of the tainted root.
    #[tokio::test]
    async fn svids_under_a_tainted_authority_are_minted_again() {
        let server = Arc::new(FakeServer::new(&["aaa"]));
        let manager = Manager::new(
            Arc::clone(&server) as Arc<dyn ServerApi>,
            TrustDomain::new("example.org").unwrap(),
            Bundle::new(TrustDomain::new("example.org").unwrap()),
            ManagerOptions::default(),
        );
        manager.sync_once().await.unwrap();
        let rx = manager.subscribe(selectors("aaa"));
        let first = rx.borrow().identities[0].chain.clone();
        let tainted_rx = manager.tainted_roots();
        assert!(tainted_rx.borrow().is_empty());

        let old_root = server.rotate_and_taint();
        assert!(chain_is_under(&first, std::slice::from_ref(&old_root)));
        manager.sync_once().await.unwrap();
        let view = rx.borrow().clone();
        assert_eq!(view.identities.len(), 1, "never an empty view");
        let second = view.identities[0].chain.clone();
        assert_ne!(first, second, "minted again");
        assert!(!chain_is_under(&second, std::slice::from_ref(&old_root)));
        assert_eq!(*tainted_rx.borrow(), vec![old_root]);

        // Minted once: a further sync leaves the new SVID alone.
        manager.sync_once().await.unwrap();
        assert_eq!(rx.borrow().identities[0].chain, second);
    }

    #[test]
    fn backoff_grows_by_half_and_is_capped() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(240);
        assert_eq!(backoff_delay(base, max, 1, 0.5), Duration::from_secs(5));
        assert_eq!(
            backoff_delay(base, max, 2, 0.5),
            Duration::from_secs_f64(7.5)
        );
        assert_eq!(backoff_delay(base, max, 40, 0.99), max);
        let low = backoff_delay(base, max, 1, 0.0);
        let high = backoff_delay(base, max, 1, 0.999);
        assert!(low >= Duration::from_secs(4) && high < Duration::from_secs(6));
    }
}
