//! The manager's in-memory cache: the authorized entries, the X509-SVIDs minted for them
//! (bounded like upstream's LRU cache), the bundles, and the subscribers' views.
//!
//! Everything here is synchronous and I/O free; the sync loop in `sync.rs` fills it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use spire_core::bundle::Bundle;
use spire_core::keys::PrivateKey;
use spire_core::selector::{Selector, SelectorMatch, SelectorSet};
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::types;
use tokio::sync::watch;

use spire_common::telemetry::agent::EntryChanges;

use super::selector_index::{EntryIndex, SubscriberIndex};
use super::server_api::EntryRevision;
use super::{WorkloadUpdate, X509Identity};

/// A registration entry as the agent keeps it: parsed once, when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CachedEntry {
    pub(super) id: String,
    pub(super) spiffe_id: SpiffeId,
    pub(super) selectors: SelectorSet,
    pub(super) federates_with: Vec<String>,
    pub(super) hint: String,
    pub(super) revision: i64,
    /// Unix seconds; tells a recreated entry with the same ID and revision apart.
    pub(super) created_at: i64,
    /// `additional_attributes.disable_x509_svid_prefetch`: mint its X509-SVID only while a
    /// workload subscribes to it.
    pub(super) disable_x509_svid_prefetch: bool,
    /// `additional_attributes.jwt_svid_include_jti`: every JWT-SVID is unique, never cached.
    pub(super) jwt_svid_include_jti: bool,
    /// `store_svid`: the SVID goes to the SVIDStore its selectors name, never to a workload;
    /// it is always minted and kept.
    pub(super) store_svid: bool,
}

impl CachedEntry {
    /// Parses an entry from the server; the error says which field is unusable.
    pub(super) fn from_proto(entry: &types::Entry) -> Result<Self, String> {
        if entry.id.is_empty() {
            return Err("entry has no ID".to_owned());
        }
        let id = entry
            .spiffe_id
            .as_ref()
            .ok_or_else(|| format!("entry {} has no SPIFFE ID", entry.id))?;
        let spiffe_id = SpiffeId::parse(&format!("spiffe://{}{}", id.trust_domain, id.path))
            .map_err(|e| format!("entry {} has an invalid SPIFFE ID: {e}", entry.id))?;
        let selectors = entry
            .selectors
            .iter()
            .map(|s| Selector::new(s.r#type.clone(), s.value.clone()))
            .collect::<Result<SelectorSet, _>>()
            .map_err(|e| format!("entry {} has an invalid selector: {e}", entry.id))?;
        Ok(Self {
            id: entry.id.clone(),
            spiffe_id,
            selectors,
            federates_with: entry.federates_with.clone(),
            hint: entry.hint.clone(),
            revision: entry.revision_number,
            created_at: entry.created_at,
            disable_x509_svid_prefetch: entry
                .additional_attributes
                .is_some_and(|a| a.disable_x509_svid_prefetch),
            jwt_svid_include_jti: entry
                .additional_attributes
                .is_some_and(|a| a.jwt_svid_include_jti),
            store_svid: entry.store_svid,
        })
    }

    /// Whether a workload with `selectors` gets this entry: the entry's selectors must be a
    /// non-empty subset of the workload's. Entries whose SVID is stored (`store_svid`) are
    /// never given to workloads, as upstream keeps them out of the workload cache.
    pub(super) fn matches(&self, selectors: &SelectorSet) -> bool {
        !self.store_svid
            && !self.selectors.is_empty()
            && self.selectors.matches(selectors, SelectorMatch::Subset)
    }
}

/// Counts a cached entry replaced by a different one from the server, as upstream's sync
/// stats and LRU cache count it: `stale` when its revision or creation differs, `updated`
/// (workload entries only) when its selectors or federated trust domains changed.
fn count_replaced(changes: &mut EntryChanges, old: &CachedEntry, new: &CachedEntry) {
    if old.revision != new.revision || old.created_at != new.created_at {
        changes.stale += 1;
    }
    fn federation(e: &CachedEntry) -> BTreeSet<&String> {
        e.federates_with.iter().collect()
    }
    if !new.store_svid && (old.selectors != new.selectors || federation(old) != federation(new)) {
        changes.updated += 1;
    }
}

/// An X509-SVID minted for an entry.
#[derive(Clone)]
pub(super) struct CachedSvid {
    pub(super) chain: Vec<Vec<u8>>,
    pub(super) key: Arc<PrivateKey>,
    /// Unix seconds.
    pub(super) not_before: i64,
    /// Unix seconds.
    pub(super) not_after: i64,
    /// The entry revision it was minted for; a new revision means a new SVID.
    pub(super) revision: i64,
    /// LRU stamp: the cache tick at which a subscriber last used it.
    pub(super) last_used: u64,
    /// Signed under an X.509 authority the server marked tainted: minted again on the next
    /// sync, while the workload keeps this one until the new one arrives.
    pub(super) tainted: bool,
}

impl CachedSvid {
    /// Past half of its lifetime (or only `availability_target` left, when that comes
    /// first), expired, or under a tainted authority: time to mint a new one.
    pub(super) fn needs_rotation(&self, now: i64, availability_target: Option<Duration>) -> bool {
        self.tainted
            || now
                >= crate::rotation_strategy::renewal_due(
                    self.not_before,
                    self.not_after,
                    availability_target,
                )
    }
}

/// One open subscription.
pub(super) struct Subscriber {
    pub(super) selectors: SelectorSet,
    pub(super) tx: watch::Sender<Arc<WorkloadUpdate>>,
    /// IDs of the entries it matched when its view was last computed.
    matched: BTreeSet<String>,
}

/// An entry the next batch must mint an SVID for.
#[derive(Debug, Clone)]
pub(super) struct MintRequest {
    pub(super) entry_id: String,
    pub(super) spiffe_id: SpiffeId,
    pub(super) revision: i64,
}

/// The whole cache, behind the manager's mutex.
///
/// Entries are indexed by selector and subscribers by their selectors, so a workload's view
/// costs the entries that may match it, and a change recomputes only the subscribers it may
/// concern (marked dirty until [`State::notify_subscribers`]).
pub(super) struct State {
    pub(super) entries: BTreeMap<String, CachedEntry>,
    entry_index: EntryIndex,
    /// How many cached entries federate with each trust domain.
    federates_with: BTreeMap<String, usize>,
    pub(super) svids: HashMap<String, CachedSvid>,
    pub(super) bundle: Arc<Bundle>,
    pub(super) federated: BTreeMap<String, Arc<Bundle>>,
    subscribers: HashMap<u64, Subscriber>,
    subscriber_index: SubscriberIndex<u64>,
    next_subscriber: u64,
    /// Subscribers whose view may have changed since they were last told.
    dirty: HashSet<u64>,
    /// Every subscriber's view may have changed (bundles).
    all_dirty: bool,
    /// Monotonic counter for LRU stamps; bumped on every sync and subscription.
    pub(super) tick: u64,
    /// How many workload views were computed, for tests and benchmarks of the index.
    pub(super) views_computed: u64,
    /// How the entries changed since the last sync's metrics took them.
    pub(super) changes: EntryChanges,
    /// Why the last [`State::plan_mints`] wanted cached SVIDs replaced.
    pub(super) last_plan: MintReasons,
}

/// Why cached X509-SVIDs are minted again, counted as upstream's cache manager does
/// (`cache_manager_expiring_svids`, `cache_manager_outdated_svids`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MintReasons {
    /// Past half-life, expired or under a tainted authority.
    pub(super) expiring: usize,
    /// Minted for an older revision of the entry.
    pub(super) outdated: usize,
}

impl State {
    pub(super) fn new(bundle: Bundle) -> Self {
        Self {
            entries: BTreeMap::new(),
            entry_index: EntryIndex::default(),
            federates_with: BTreeMap::new(),
            svids: HashMap::new(),
            bundle: Arc::new(bundle),
            federated: BTreeMap::new(),
            subscribers: HashMap::new(),
            subscriber_index: SubscriberIndex::default(),
            next_subscriber: 0,
            dirty: HashSet::new(),
            all_dirty: false,
            tick: 0,
            views_computed: 0,
            changes: EntryChanges::default(),
            last_plan: MintReasons::default(),
        }
    }

    /// Number of open subscriptions.
    #[cfg(test)]
    pub(super) fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Registers a subscription; its first value must already be in `tx`.
    pub(super) fn add_subscriber(
        &mut self,
        selectors: SelectorSet,
        tx: watch::Sender<Arc<WorkloadUpdate>>,
    ) {
        let key = self.next_subscriber;
        self.next_subscriber = self.next_subscriber.wrapping_add(1);
        let matched = self.matching(&selectors).map(|e| e.id.clone()).collect();
        self.subscriber_index.insert(key, &selectors);
        self.subscribers.insert(
            key,
            Subscriber {
                selectors,
                tx,
                matched,
            },
        );
    }

    /// Forgets subscriptions whose receivers were all dropped.
    pub(super) fn drop_closed_subscribers(&mut self) {
        let closed: Vec<u64> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(key, _)| *key)
            .collect();
        for key in closed {
            if let Some(subscriber) = self.subscribers.remove(&key) {
                self.subscriber_index.remove(key, &subscriber.selectors);
            }
            self.dirty.remove(&key);
        }
    }

    /// The entries a workload with `selectors` gets, found through the selector index.
    pub(super) fn matching<'a>(
        &'a self,
        selectors: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a CachedEntry> + 'a {
        let mut found: Vec<&CachedEntry> = self
            .entry_index
            .candidates(selectors)
            .filter_map(|id| self.entries.get(id))
            .filter(|e| e.matches(selectors))
            .collect();
        // Entry ID order, as upstream sorts identities (the first is the default SVID).
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        found.into_iter()
    }

    /// Marks the subscribers `entry` matches as needing a new view.
    fn mark_entry(&mut self, entry_selectors: &SelectorSet) {
        for key in self.subscriber_index.candidates(entry_selectors) {
            let Some(subscriber) = self.subscribers.get(&key) else {
                continue;
            };
            if !entry_selectors.is_empty() && entry_selectors.is_subset_of(&subscriber.selectors) {
                self.dirty.insert(key);
            }
        }
    }

    fn mark_entry_id(&mut self, id: &str) {
        if let Some(selectors) = self.entries.get(id).map(|e| e.selectors.clone()) {
            self.mark_entry(&selectors);
        }
    }

    /// Adds or replaces an entry; subscribers of its old and new selectors are marked.
    pub(super) fn upsert_entry(&mut self, entry: CachedEntry) {
        match self.entries.get(&entry.id) {
            Some(old) if *old == entry => return,
            Some(old) => count_replaced(&mut self.changes, old, &entry),
            None => {
                self.changes.missing += 1;
                if !entry.store_svid {
                    self.changes.added += 1;
                }
            }
        }
        self.mark_entry_id(&entry.id);
        self.mark_entry(&entry.selectors);
        self.entry_index.insert(&entry.id, &entry.selectors);
        self.count_federation(&entry, true);
        if let Some(old) = self.entries.insert(entry.id.clone(), entry) {
            self.count_federation(&old, false);
        }
    }

    /// Removes an entry and its SVID; its subscribers are marked.
    pub(super) fn remove_entry(&mut self, id: &str) {
        self.mark_entry_id(id);
        self.entry_index.remove(id);
        if let Some(old) = self.entries.remove(id) {
            self.changes.dropped += 1;
            if !old.store_svid {
                self.changes.removed += 1;
            }
            self.count_federation(&old, false);
        }
        self.svids.remove(id);
    }

    /// Makes the cached entries exactly `entries`, touching only what differs.
    pub(super) fn replace_entries(&mut self, mut entries: BTreeMap<String, CachedEntry>) {
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|id| !entries.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove_entry(&id);
        }
        while let Some((_, entry)) = entries.pop_first() {
            self.upsert_entry(entry);
        }
    }

    /// Applies the entries a server hint named: `removed` ones are dropped, `fetched` ones
    /// replace the cached ones; every other entry stays as it is.
    pub(super) fn apply_named_changes(&mut self, removed: &[String], fetched: Vec<CachedEntry>) {
        for id in removed {
            if self.entries.contains_key(id) {
                self.remove_entry(id);
            }
        }
        for entry in fetched {
            self.upsert_entry(entry);
        }
    }

    /// Whether a federated bundle is held for every trust domain some entry federates
    /// with (and none other), so a hinted sync need not fetch federated bundles.
    pub(super) fn federated_bundles_match(&self) -> bool {
        self.federates_with.len() == self.federated.len()
            && self
                .federates_with
                .keys()
                .all(|td| self.federated.contains_key(td))
    }

    /// Of a page of revisions, the IDs whose entry is not cached or cached at another
    /// revision (or, when the server sends creation times, another creation).
    pub(super) fn stale_ids(&self, page: &[EntryRevision]) -> Vec<String> {
        page.iter()
            .filter(|r| {
                self.entries.get(&r.id).is_none_or(|cached| {
                    cached.revision != r.revision
                        || (r.created_at != 0 && cached.created_at != r.created_at)
                })
            })
            .map(|r| r.id.clone())
            .collect()
    }

    /// Applies a revision-based sync: entries not in `revisions` are removed, `fetched`
    /// ones replace the cached ones. Returns how many entries changed.
    pub(super) fn apply_revisions(
        &mut self,
        revisions: &[EntryRevision],
        fetched: Vec<CachedEntry>,
    ) -> usize {
        // Usually nothing was removed: count the listed entries that are cached before
        // building a set of them.
        let cached_and_listed = revisions
            .iter()
            .filter(|r| self.entries.contains_key(&r.id))
            .count();
        let gone: Vec<String> = if cached_and_listed == self.entries.len() {
            Vec::new()
        } else {
            let listed: HashSet<&str> = revisions.iter().map(|r| r.id.as_str()).collect();
            self.entries
                .keys()
                .filter(|id| !listed.contains(id.as_str()))
                .cloned()
                .collect()
        };
        let changed = gone.len() + fetched.len();
        for id in gone {
            self.remove_entry(&id);
        }
        for entry in fetched {
            self.upsert_entry(entry);
        }
        changed
    }

    /// Trust domains some cached entry federates with.
    pub(super) fn federated_trust_domains(&self) -> BTreeSet<String> {
        self.federates_with.keys().cloned().collect()
    }

    fn count_federation(&mut self, entry: &CachedEntry, add: bool) {
        for td in &entry.federates_with {
            if add {
                *self.federates_with.entry(td.clone()).or_default() += 1;
            } else if let Some(count) = self.federates_with.get_mut(td) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.federates_with.remove(td);
                }
            }
        }
    }

    /// Stores a freshly minted SVID; the entry's subscribers are marked.
    pub(super) fn store_svid(&mut self, entry_id: &str, svid: CachedSvid) {
        self.svids.insert(entry_id.to_owned(), svid);
        self.mark_entry_id(entry_id);
    }

    /// Replaces the bundles; every subscriber is marked when they changed.
    pub(super) fn set_bundles(&mut self, bundle: Bundle, federated: BTreeMap<String, Arc<Bundle>>) {
        if *self.bundle != bundle {
            self.bundle = Arc::new(bundle);
            self.all_dirty = true;
        }
        if self.federated != federated {
            self.federated = federated;
            self.all_dirty = true;
        }
    }

    /// Recomputes the matched sets of the marked subscribers (entries changed under them).
    fn refresh_matched(&mut self) {
        let keys: Vec<u64> = if self.all_dirty {
            self.subscribers.keys().copied().collect()
        } else {
            self.dirty.iter().copied().collect()
        };
        for key in keys {
            let Some(selectors) = self.subscribers.get(&key).map(|s| s.selectors.clone()) else {
                continue;
            };
            let matched = self.matching(&selectors).map(|e| e.id.clone()).collect();
            if let Some(subscriber) = self.subscribers.get_mut(&key) {
                subscriber.matched = matched;
            }
        }
    }

    /// IDs of the entries some live subscriber matches.
    pub(super) fn subscribed_entries(&self) -> BTreeSet<String> {
        self.subscribers
            .values()
            .filter(|s| !s.tx.is_closed())
            .flat_map(|s| s.matched.iter().cloned())
            .collect()
    }

    /// Which entries hold an SVID after this sync: every entry a subscriber uses (the limit
    /// is soft for them, as upstream's), then the most recently used others, then entries
    /// without an SVID yet in ID order (except those with `disable_x509_svid_prefetch`,
    /// which wait for a subscriber), until `max_size` is reached.
    /// Entries with `store_svid` are always kept, like subscribed ones: the agent stores them.
    pub(super) fn entries_to_keep(&self, max_size: usize) -> BTreeSet<String> {
        let mut keep = self.subscribed_entries();
        keep.extend(
            self.entries
                .values()
                .filter(|e| e.store_svid)
                .map(|e| e.id.clone()),
        );
        let mut cached: Vec<(&String, u64)> = self
            .svids
            .iter()
            .filter(|(id, _)| self.entries.contains_key(*id) && !keep.contains(*id))
            .map(|(id, svid)| (id, svid.last_used))
            .collect();
        cached.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (id, _) in cached {
            if keep.len() >= max_size {
                return keep;
            }
            keep.insert(id.clone());
        }
        for entry in self.entries.values() {
            if keep.len() >= max_size {
                break;
            }
            if !entry.disable_x509_svid_prefetch
                && !self.svids.contains_key(&entry.id)
                && !keep.contains(&entry.id)
            {
                keep.insert(entry.id.clone());
            }
        }
        keep
    }

    /// Replaces the entries (see [`State::replace_entries`]) and plans the mints
    /// ([`State::plan_mints`]).
    #[cfg(test)]
    pub(super) fn apply_entries(
        &mut self,
        entries: BTreeMap<String, CachedEntry>,
        max_size: usize,
        now: i64,
    ) -> Vec<MintRequest> {
        self.replace_entries(entries);
        self.plan_mints(max_size, now, None)
    }

    /// After the entries changed: drops the SVIDs of evicted entries, stamps the subscribed
    /// ones as used, and says which kept entries need a new SVID (none yet, past half-life,
    /// or minted for an older revision).
    pub(super) fn plan_mints(
        &mut self,
        max_size: usize,
        now: i64,
        availability_target: Option<Duration>,
    ) -> Vec<MintRequest> {
        self.drop_closed_subscribers();
        self.refresh_matched();
        self.tick = self.tick.saturating_add(1);
        let keep = self.entries_to_keep(max_size);
        let evicted: Vec<String> = self
            .svids
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in &evicted {
            self.svids.remove(id);
            self.mark_entry_id(id);
        }
        let tick = self.tick;
        for id in self.subscribed_entries() {
            if let Some(svid) = self.svids.get_mut(&id) {
                svid.last_used = tick;
            }
        }
        let mut reasons = MintReasons::default();
        let needed = keep
            .iter()
            .filter_map(|id| self.entries.get(id))
            .filter(|entry| match self.svids.get(&entry.id) {
                None => true,
                Some(svid) if svid.needs_rotation(now, availability_target) => {
                    reasons.expiring += 1;
                    true
                }
                Some(svid) if svid.revision != entry.revision => {
                    reasons.outdated += 1;
                    true
                }
                Some(_) => false,
            })
            .map(|entry| MintRequest {
                entry_id: entry.id.clone(),
                spiffe_id: entry.spiffe_id.clone(),
                revision: entry.revision,
            })
            .collect();
        self.last_plan = reasons;
        needed
    }

    /// What a workload with `selectors` sees now, and whether some matching entry has no
    /// SVID yet. Marks the SVIDs it returns as used.
    pub(super) fn view(&mut self, selectors: &SelectorSet) -> (WorkloadUpdate, bool) {
        self.views_computed = self.views_computed.wrapping_add(1);
        let tick = self.tick;
        let mut identities = Vec::new();
        let mut federated = BTreeMap::new();
        let mut missing = false;
        let matching: Vec<&CachedEntry> = self.matching(selectors).collect();
        let mut used = Vec::with_capacity(matching.len());
        for entry in matching {
            let Some(svid) = self.svids.get(&entry.id) else {
                missing = true;
                continue;
            };
            used.push(entry.id.clone());
            for td in &entry.federates_with {
                if let Some(bundle) = self.federated.get(td) {
                    federated.insert(td.clone(), Arc::clone(bundle));
                }
            }
            identities.push(X509Identity {
                entry_id: entry.id.clone(),
                spiffe_id: entry.spiffe_id.clone(),
                hint: entry.hint.clone(),
                chain: svid.chain.clone(),
                key: Arc::clone(&svid.key),
                federates_with: entry.federates_with.clone(),
            });
        }
        for id in used {
            if let Some(svid) = self.svids.get_mut(&id) {
                svid.last_used = tick;
            }
        }
        let update = WorkloadUpdate {
            identities,
            bundle: Arc::clone(&self.bundle),
            federated_bundles: federated,
        };
        (update, missing)
    }

    /// Pushes a new value to every marked subscriber whose view changed; the others are not
    /// even recomputed.
    pub(super) fn notify_subscribers(&mut self) {
        self.drop_closed_subscribers();
        self.refresh_matched();
        let keys: Vec<u64> = if self.all_dirty {
            self.subscribers.keys().copied().collect()
        } else {
            self.dirty.iter().copied().collect()
        };
        self.all_dirty = false;
        self.dirty.clear();
        for key in keys {
            let Some(selectors) = self.subscribers.get(&key).map(|s| s.selectors.clone()) else {
                continue;
            };
            let view = self.view(&selectors).0;
            if let Some(subscriber) = self.subscribers.get(&key) {
                subscriber.tx.send_if_modified(|current| {
                    if same_view(current, &view) {
                        false
                    } else {
                        *current = Arc::new(view);
                        true
                    }
                });
            }
        }
    }

    /// Own bundle plus every federated bundle, by trust domain name.
    pub(super) fn all_bundles(&self) -> BTreeMap<String, Arc<Bundle>> {
        let mut all = self.federated.clone();
        all.insert(
            self.bundle.trust_domain.name().to_owned(),
            Arc::clone(&self.bundle),
        );
        all
    }
}

/// Whether two updates would look the same to a workload.
pub(super) fn same_view(a: &WorkloadUpdate, b: &WorkloadUpdate) -> bool {
    a.bundle == b.bundle
        && a.federated_bundles == b.federated_bundles
        && a.identities.len() == b.identities.len()
        && a.identities.iter().zip(&b.identities).all(|(x, y)| {
            x.entry_id == y.entry_id
                && x.spiffe_id == y.spiffe_id
                && x.hint == y.hint
                && x.chain == y.chain
                && x.federates_with == y.federates_with
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spire_core::keys::KeyType;
    use spire_core::spiffe_id::TrustDomain;

    fn entry(id: &str, selectors: &[&str]) -> CachedEntry {
        CachedEntry {
            id: id.to_owned(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{id}")).unwrap(),
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            federates_with: Vec::new(),
            hint: String::new(),
            revision: 0,
            created_at: 0,
            disable_x509_svid_prefetch: false,
            jwt_svid_include_jti: false,
            store_svid: false,
        }
    }

    fn svid(last_used: u64) -> CachedSvid {
        CachedSvid {
            chain: vec![vec![1]],
            key: Arc::new(PrivateKey::generate(KeyType::EcP256).unwrap()),
            not_before: 0,
            not_after: 100,
            revision: 0,
            last_used,
            tainted: false,
        }
    }

    fn state() -> State {
        State::new(Bundle::new(TrustDomain::new("example.org").unwrap()))
    }

    fn set(selectors: &[&str]) -> SelectorSet {
        selectors
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect()
    }

    #[test]
    fn entry_matches_only_as_a_non_empty_subset() {
        let e = entry("a", &["unix:uid:1", "unix:gid:2"]);
        assert!(e.matches(&set(&["unix:uid:1", "unix:gid:2", "unix:user:x"])));
        assert!(!e.matches(&set(&["unix:uid:1"])));
        assert!(!entry("b", &[]).matches(&set(&["unix:uid:1"])));
    }

    #[test]
    fn rotation_is_due_at_half_life() {
        let s = svid(0);
        assert!(!s.needs_rotation(49, None));
        assert!(s.needs_rotation(50, None));
        assert!(s.needs_rotation(1000, None));
    }

    #[test]
    fn keep_prefers_subscribed_then_recently_used_then_new() {
        let mut st = state();
        for id in ["a", "b", "c", "d"] {
            st.upsert_entry(entry(id, &[&format!("t:v:{id}")]));
        }
        st.svids.insert("a".to_owned(), svid(1));
        st.svids.insert("b".to_owned(), svid(5));
        let (tx, _rx) = watch::channel(Arc::new(st.view(&set(&[])).0));
        st.add_subscriber(set(&["t:v:d"]), tx);
        let keep = st.entries_to_keep(2);
        assert_eq!(keep, ["b", "d"].iter().map(|s| (*s).to_owned()).collect());
        // The limit is soft for subscribed entries.
        let keep = st.entries_to_keep(0);
        assert_eq!(keep, ["d"].iter().map(|s| (*s).to_owned()).collect());
    }

    /// An entry with `disable_x509_svid_prefetch` gets no SVID until a workload subscribes
    /// to it, and then keeps the one it got while it stays among the recently used.
    #[test]
    fn prefetch_disabled_entries_wait_for_a_subscriber() {
        let mut st = state();
        let mut lazy = entry("lazy", &["t:v:lazy"]);
        lazy.disable_x509_svid_prefetch = true;
        let mut entries = BTreeMap::new();
        entries.insert("eager".to_owned(), entry("eager", &["t:v:eager"]));
        entries.insert("lazy".to_owned(), lazy);
        let needed: Vec<String> = st
            .apply_entries(entries.clone(), 10, 10)
            .into_iter()
            .map(|r| r.entry_id)
            .collect();
        assert_eq!(needed, ["eager"]);

        let (tx, rx) = watch::channel(Arc::new(st.view(&set(&[])).0));
        st.add_subscriber(set(&["t:v:lazy"]), tx);
        let needed: Vec<String> = st
            .apply_entries(entries.clone(), 10, 10)
            .into_iter()
            .map(|r| r.entry_id)
            .collect();
        assert_eq!(needed, ["eager", "lazy"]);
        st.svids.insert("lazy".to_owned(), svid(0));
        drop(rx);
        st.drop_closed_subscribers();
        assert!(st.entries_to_keep(10).contains("lazy"), "kept once minted");
    }

    /// What upstream's sync stats and LRU counters would count, sync by sync.
    #[test]
    fn entry_changes_are_counted_as_upstreams_sync_and_lru_cache_count_them() {
        let mut st = state();
        let mut stored = entry("stored", &["disk:name:x"]);
        stored.store_svid = true;
        let entries = |list: Vec<CachedEntry>| {
            list.into_iter()
                .map(|e| (e.id.clone(), e))
                .collect::<BTreeMap<_, _>>()
        };
        st.replace_entries(entries(vec![
            entry("a", &["t:v:a"]),
            entry("b", &["t:v:b"]),
            stored.clone(),
        ]));
        let first = std::mem::take(&mut st.changes);
        assert_eq!(
            first,
            EntryChanges {
                missing: 3,
                added: 2,
                ..EntryChanges::default()
            },
            "the SVIDStore entry is missing but not in the workload (LRU) cache"
        );

        // Nothing changed: nothing counted.
        st.replace_entries(entries(vec![
            entry("a", &["t:v:a"]),
            entry("b", &["t:v:b"]),
            stored.clone(),
        ]));
        assert_eq!(std::mem::take(&mut st.changes), EntryChanges::default());

        // `a` at a new revision with the same selectors is stale, not updated; `b` gets new
        // selectors at a new revision (stale and updated); `stored` is dropped but was never
        // in the workload cache; `c` is new.
        let mut a = entry("a", &["t:v:a"]);
        a.revision = 1;
        let mut b = entry("b", &["t:v:b", "t:v:x"]);
        b.revision = 1;
        st.replace_entries(entries(vec![a, b, entry("c", &["t:v:c"])]));
        assert_eq!(
            std::mem::take(&mut st.changes),
            EntryChanges {
                missing: 1,
                stale: 2,
                dropped: 1,
                added: 1,
                updated: 1,
                removed: 0,
            }
        );

        // A federation change is an update; a removal of a workload entry counts twice.
        let mut c = entry("c", &["t:v:c"]);
        c.federates_with = vec!["spiffe://other.org".to_owned()];
        st.apply_revisions(
            &[EntryRevision {
                id: "c".to_owned(),
                revision: 0,
                created_at: 0,
            }],
            vec![c],
        );
        assert_eq!(
            std::mem::take(&mut st.changes),
            EntryChanges {
                dropped: 2,
                removed: 2,
                updated: 1,
                ..EntryChanges::default()
            }
        );
    }

    /// Upstream's `cache_manager_expiring_svids` and `cache_manager_outdated_svids`: cached
    /// SVIDs due for rotation, and those minted for an older revision; a new entry is
    /// neither.
    #[test]
    fn mints_are_told_apart_as_expiring_or_outdated() {
        let mut st = state();
        let mut entries = BTreeMap::new();
        for id in ["fresh", "old", "changed", "new"] {
            entries.insert(id.to_owned(), entry(id, &[&format!("t:v:{id}")]));
        }
        let mut changed = entry("changed", &["t:v:changed"]);
        changed.revision = 3;
        entries.insert("changed".to_owned(), changed);
        st.svids.insert("fresh".to_owned(), svid(0));
        st.svids.insert("old".to_owned(), svid(0));
        st.svids.insert("changed".to_owned(), svid(0));
        // At 10 only the revision changed; at 60 `fresh` and `old` are past half-life, and
        // `changed` is counted once, as expiring (upstream checks expiry first).
        assert_eq!(st.apply_entries(entries.clone(), 10, 10).len(), 2);
        assert_eq!(
            st.last_plan,
            MintReasons {
                expiring: 0,
                outdated: 1
            }
        );
        assert_eq!(st.apply_entries(entries, 10, 60).len(), 4);
        assert_eq!(
            st.last_plan,
            MintReasons {
                expiring: 3,
                outdated: 0
            }
        );
    }

    #[test]
    fn revision_change_requires_a_new_svid() {
        let mut st = state();
        st.svids.insert("a".to_owned(), svid(0));
        let mut entries = BTreeMap::new();
        let mut e = entry("a", &["t:v:a"]);
        entries.insert("a".to_owned(), e.clone());
        assert!(st.apply_entries(entries.clone(), 10, 10).is_empty());
        e.revision = 1;
        entries.insert("a".to_owned(), e);
        let needed = st.apply_entries(entries, 10, 10);
        assert_eq!(needed.len(), 1);
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let mut st = state();
        let (tx, rx) = watch::channel(Arc::new(st.view(&set(&[])).0));
        st.add_subscriber(set(&["t:v:a"]), tx);
        drop(rx);
        st.notify_subscribers();
        assert_eq!(st.subscriber_count(), 0);
    }

    fn subscribe(st: &mut State, selectors: &[&str]) -> watch::Receiver<Arc<WorkloadUpdate>> {
        let selectors = set(selectors);
        let (tx, rx) = watch::channel(Arc::new(st.view(&selectors).0));
        st.add_subscriber(selectors, tx);
        rx
    }

    /// A workload's view is built from the entries filed under its selectors: with 10,000
    /// other entries on the agent, its view holds exactly its own, in entry ID order.
    #[test]
    fn a_view_is_found_through_the_selector_index() {
        let mut st = state();
        for i in 0..10_000 {
            st.upsert_entry(entry(&format!("other{i:05}"), &[&format!("unix:uid:{i}")]));
        }
        st.upsert_entry(entry("mine-b", &["unix:uid:me"]));
        st.upsert_entry(entry("mine-a", &["unix:uid:me", "unix:gid:0"]));
        st.upsert_entry(entry("not-mine", &["unix:uid:me", "unix:gid:1"]));
        let workload = set(&["unix:uid:me", "unix:gid:0", "unix:user:x"]);
        let ids: Vec<&str> = st.matching(&workload).map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["mine-a", "mine-b"]);
        // The candidates are the entries filed under the workload's selectors, not all.
        assert!(st.entry_index.candidates(&workload).count() <= 3);
    }

    /// An entry whose SVID goes to an SVIDStore is never given to a workload, even one with
    /// its selectors, and its SVID is minted beyond the cache bound and without subscribers.
    #[test]
    fn store_svid_entries_are_minted_but_never_matched() {
        let mut st = state();
        let mut stored = entry("stored", &["unix:uid:1"]);
        stored.store_svid = true;
        st.upsert_entry(stored);
        st.upsert_entry(entry("plain", &["unix:uid:1"]));
        let workload = set(&["unix:uid:1"]);
        let ids: Vec<&str> = st.matching(&workload).map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["plain"]);
        let minted: Vec<String> = st
            .plan_mints(0, 0, None)
            .into_iter()
            .map(|m| m.entry_id)
            .collect();
        assert_eq!(minted, ["stored"]);
    }

    /// A change to one workload's entry recomputes and notifies only the subscribers it
    /// matches; a bundle change concerns everyone.
    #[test]
    fn only_affected_subscribers_are_recomputed_and_notified() {
        let mut st = state();
        st.upsert_entry(entry("a", &["unix:uid:1"]));
        st.upsert_entry(entry("b", &["unix:uid:2"]));
        st.svids.insert("a".to_owned(), svid(0));
        st.svids.insert("b".to_owned(), svid(0));
        let mut rx_a = subscribe(&mut st, &["unix:uid:1", "unix:gid:0"]);
        let mut rx_b = subscribe(&mut st, &["unix:uid:2", "unix:gid:0"]);
        st.notify_subscribers();
        rx_a.mark_unchanged();
        rx_b.mark_unchanged();

        let before = st.views_computed;
        let mut changed = entry("a", &["unix:uid:1"]);
        changed.hint = "new".to_owned();
        st.upsert_entry(changed);
        st.notify_subscribers();
        assert_eq!(
            st.views_computed - before,
            1,
            "only a's subscriber recomputed"
        );
        assert!(rx_a.has_changed().unwrap());
        assert!(!rx_b.has_changed().unwrap());
        assert_eq!(rx_a.borrow_and_update().identities[0].hint, "new");

        // A new entry for both (gid:0) reaches both; an unrelated entry reaches nobody.
        st.upsert_entry(entry("c", &["unix:uid:9"]));
        let before = st.views_computed;
        st.notify_subscribers();
        assert_eq!(st.views_computed, before);
        st.upsert_entry(entry("shared", &["unix:gid:0"]));
        st.store_svid("shared", svid(0));
        st.notify_subscribers();
        assert!(rx_a.has_changed().unwrap() && rx_b.has_changed().unwrap());
        rx_a.mark_unchanged();
        rx_b.mark_unchanged();

        // Removing b's entry reaches b only.
        st.remove_entry("b");
        let before = st.views_computed;
        st.notify_subscribers();
        assert_eq!(st.views_computed - before, 1);
        assert!(!rx_a.has_changed().unwrap());
        assert!(rx_b.has_changed().unwrap());
        let ids: Vec<String> = rx_b
            .borrow()
            .identities
            .iter()
            .map(|i| i.entry_id.clone())
            .collect();
        assert_eq!(ids, ["shared"]);

        // A new bundle reaches every subscriber.
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.sequence_number = 7;
        st.set_bundles(bundle, BTreeMap::new());
        let before = st.views_computed;
        st.notify_subscribers();
        assert_eq!(st.views_computed - before, 2);
    }
}
