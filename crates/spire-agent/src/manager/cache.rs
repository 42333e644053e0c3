//! The manager's in-memory cache: the authorized entries, the X509-SVIDs minted for them
//! (bounded like upstream's LRU cache), the bundles, and the subscribers' views.
//!
//! Everything here is synchronous and I/O free; the sync loop in `sync.rs` fills it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use spire_core::bundle::Bundle;
use spire_core::keys::PrivateKey;
use spire_core::selector::{Selector, SelectorMatch, SelectorSet};
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::types;
use tokio::sync::watch;

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
    /// `additional_attributes.disable_x509_svid_prefetch`: mint its X509-SVID only while a
    /// workload subscribes to it.
    pub(super) disable_x509_svid_prefetch: bool,
    /// `additional_attributes.jwt_svid_include_jti`: every JWT-SVID is unique, never cached.
    pub(super) jwt_svid_include_jti: bool,
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
            disable_x509_svid_prefetch: entry
                .additional_attributes
                .is_some_and(|a| a.disable_x509_svid_prefetch),
            jwt_svid_include_jti: entry
                .additional_attributes
                .is_some_and(|a| a.jwt_svid_include_jti),
        })
    }

    /// Whether a workload with `selectors` gets this entry: the entry's selectors must be a
    /// non-empty subset of the workload's.
    pub(super) fn matches(&self, selectors: &SelectorSet) -> bool {
        !self.selectors.is_empty() && self.selectors.matches(selectors, SelectorMatch::Subset)
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
    /// Past half of its lifetime (or expired), or under a tainted authority: time to mint a
    /// new one.
    pub(super) fn needs_rotation(&self, now: i64) -> bool {
        let lifetime = self.not_after.saturating_sub(self.not_before);
        self.tainted || now >= self.not_before.saturating_add(lifetime / 2)
    }
}

/// One open subscription.
pub(super) struct Subscriber {
    pub(super) selectors: SelectorSet,
    pub(super) tx: watch::Sender<Arc<WorkloadUpdate>>,
}

/// An entry the next batch must mint an SVID for.
#[derive(Debug, Clone)]
pub(super) struct MintRequest {
    pub(super) entry_id: String,
    pub(super) spiffe_id: SpiffeId,
    pub(super) revision: i64,
}

/// The whole cache, behind the manager's mutex.
pub(super) struct State {
    pub(super) entries: BTreeMap<String, CachedEntry>,
    pub(super) svids: HashMap<String, CachedSvid>,
    pub(super) bundle: Arc<Bundle>,
    pub(super) federated: BTreeMap<String, Arc<Bundle>>,
    pub(super) subscribers: Vec<Subscriber>,
    /// Monotonic counter for LRU stamps; bumped on every sync and subscription.
    pub(super) tick: u64,
}

impl State {
    pub(super) fn new(bundle: Bundle) -> Self {
        Self {
            entries: BTreeMap::new(),
            svids: HashMap::new(),
            bundle: Arc::new(bundle),
            federated: BTreeMap::new(),
            subscribers: Vec::new(),
            tick: 0,
        }
    }

    /// Forgets subscriptions whose receivers were all dropped.
    pub(super) fn drop_closed_subscribers(&mut self) {
        self.subscribers.retain(|s| !s.tx.is_closed());
    }

    /// IDs of the entries some live subscriber matches.
    pub(super) fn subscribed_entries(&self) -> BTreeSet<String> {
        self.entries
            .values()
            .filter(|e| self.subscribers.iter().any(|s| e.matches(&s.selectors)))
            .map(|e| e.id.clone())
            .collect()
    }

    /// Which entries hold an SVID after this sync: every entry a subscriber uses (the limit
    /// is soft for them, as upstream's), then the most recently used others, then entries
    /// without an SVID yet in ID order (except those with `disable_x509_svid_prefetch`,
    /// which wait for a subscriber), until `max_size` is reached.
    pub(super) fn entries_to_keep(&self, max_size: usize) -> BTreeSet<String> {
        let mut keep = self.subscribed_entries();
        let mut cached: Vec<(&String, u64)> = self
            .svids
            .iter()
            .filter(|(id, _)| self.entries.contains_key(*id) && !keep.contains(*id))
            .map(|(id, svid)| (id, svid.last_used))
            .collect();
        cached.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let uncached = self
            .entries
            .values()
            .filter(|e| !e.disable_x509_svid_prefetch)
            .map(|e| &e.id)
            .filter(|id| !self.svids.contains_key(*id) && !keep.contains(*id));
        let candidates: Vec<String> = cached
            .into_iter()
            .map(|(id, _)| id.clone())
            .chain(uncached.cloned())
            .collect();
        for id in candidates {
            if keep.len() >= max_size {
                break;
            }
            keep.insert(id);
        }
        keep
    }

    /// Replaces the entries, drops the SVIDs of deleted or evicted entries, stamps the
    /// subscribed ones as used, and says which kept entries need a new SVID (none yet, past
    /// half-life, or minted for an older revision).
    pub(super) fn apply_entries(
        &mut self,
        entries: BTreeMap<String, CachedEntry>,
        max_size: usize,
        now: i64,
    ) -> Vec<MintRequest> {
        self.drop_closed_subscribers();
        self.tick = self.tick.saturating_add(1);
        self.entries = entries;
        let keep = self.entries_to_keep(max_size);
        self.svids.retain(|id, _| keep.contains(id));
        let tick = self.tick;
        for id in self.subscribed_entries() {
            if let Some(svid) = self.svids.get_mut(&id) {
                svid.last_used = tick;
            }
        }
        keep.iter()
            .filter_map(|id| self.entries.get(id))
            .filter(|entry| {
                self.svids
                    .get(&entry.id)
                    .is_none_or(|svid| svid.revision != entry.revision || svid.needs_rotation(now))
            })
            .map(|entry| MintRequest {
                entry_id: entry.id.clone(),
                spiffe_id: entry.spiffe_id.clone(),
                revision: entry.revision,
            })
            .collect()
    }

    /// What a workload with `selectors` sees now, and whether some matching entry has no
    /// SVID yet. Marks the SVIDs it returns as used.
    pub(super) fn view(&mut self, selectors: &SelectorSet) -> (WorkloadUpdate, bool) {
        let tick = self.tick;
        let mut identities = Vec::new();
        let mut federated = BTreeMap::new();
        let mut missing = false;
        for entry in self.entries.values().filter(|e| e.matches(selectors)) {
            let Some(svid) = self.svids.get_mut(&entry.id) else {
                missing = true;
                continue;
            };
            svid.last_used = tick;
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
        // `entries` is a BTreeMap, so identities are already in entry ID order, as upstream
        // sorts them (the first is the workload's default SVID).
        let update = WorkloadUpdate {
            identities,
            bundle: Arc::clone(&self.bundle),
            federated_bundles: federated,
        };
        (update, missing)
    }

    /// Pushes a new value to every subscriber whose view changed.
    pub(super) fn notify_subscribers(&mut self) {
        self.drop_closed_subscribers();
        let selectors: Vec<SelectorSet> = self
            .subscribers
            .iter()
            .map(|s| s.selectors.clone())
            .collect();
        let views: Vec<WorkloadUpdate> = selectors.iter().map(|s| self.view(s).0).collect();
        for (subscriber, view) in self.subscribers.iter().zip(views) {
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
            disable_x509_svid_prefetch: false,
            jwt_svid_include_jti: false,
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
        assert!(!s.needs_rotation(49));
        assert!(s.needs_rotation(50));
        assert!(s.needs_rotation(1000));
    }

    #[test]
    fn keep_prefers_subscribed_then_recently_used_then_new() {
        let mut st = state();
        for id in ["a", "b", "c", "d"] {
            st.entries
                .insert(id.to_owned(), entry(id, &[&format!("t:v:{id}")]));
        }
        st.svids.insert("a".to_owned(), svid(1));
        st.svids.insert("b".to_owned(), svid(5));
        let (tx, _rx) = watch::channel(Arc::new(st.view(&set(&[])).0));
        st.subscribers.push(Subscriber {
            selectors: set(&["t:v:d"]),
            tx,
        });
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

        let (tx, _rx) = watch::channel(Arc::new(st.view(&set(&[])).0));
        st.subscribers.push(Subscriber {
            selectors: set(&["t:v:lazy"]),
            tx,
        });
        let needed: Vec<String> = st
            .apply_entries(entries.clone(), 10, 10)
            .into_iter()
            .map(|r| r.entry_id)
            .collect();
        assert_eq!(needed, ["eager", "lazy"]);
        st.svids.insert("lazy".to_owned(), svid(0));
        st.subscribers.clear();
        assert!(st.entries_to_keep(10).contains("lazy"), "kept once minted");
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
        st.subscribers.push(Subscriber {
            selectors: set(&["t:v:a"]),
            tx,
        });
        drop(rx);
        st.notify_subscribers();
        assert!(st.subscribers.is_empty());
    }
}
