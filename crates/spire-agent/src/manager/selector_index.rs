//! The two selector indexes that keep the cache's work proportional to what matches instead
//! of to everything it holds:
//!
//! - [`EntryIndex`]: which entries may match a workload. An entry matches when all its
//!   selectors are among the workload's, so filing it under any *one* of its selectors is
//!   enough to find it from the workload's selectors; it is filed under the one whose bucket
//!   is smallest at the time, so a selector every entry shares (a namespace, a node) does
//!   not make every entry a candidate.
//! - [`SubscriberIndex`]: which subscribers an entry may match. A subscriber has to hold
//!   every selector of the entry, so each subscriber is filed under all of its selectors and
//!   the entry's least populated selector names the candidates.
//!
//! Both only narrow the search: callers still check the subset relation on each candidate.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use spire_core::selector::{Selector, SelectorSet};

/// Entry IDs, each filed under one of its selectors.
#[derive(Debug, Default)]
pub(super) struct EntryIndex {
    buckets: HashMap<Selector, HashSet<String>>,
    filed_under: HashMap<String, Selector>,
}

impl EntryIndex {
    /// Files `id` under the least populated of `selectors`, replacing where it was filed
    /// before. An entry without selectors matches no workload and is not filed.
    pub(super) fn insert(&mut self, id: &str, selectors: &SelectorSet) {
        self.remove(id);
        let Some(selector) = selectors
            .iter()
            .min_by_key(|s| self.buckets.get(*s).map_or(0, HashSet::len))
            .cloned()
        else {
            return;
        };
        self.buckets
            .entry(selector.clone())
            .or_default()
            .insert(id.to_owned());
        self.filed_under.insert(id.to_owned(), selector);
    }

    /// Forgets `id`; unknown IDs are ignored.
    pub(super) fn remove(&mut self, id: &str) {
        let Some(selector) = self.filed_under.remove(id) else {
            return;
        };
        if let Some(bucket) = self.buckets.get_mut(&selector) {
            bucket.remove(id);
            if bucket.is_empty() {
                self.buckets.remove(&selector);
            }
        }
    }

    /// Every entry that may match a workload with `selectors` (each once): those filed
    /// under one of them.
    pub(super) fn candidates<'a>(
        &'a self,
        selectors: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a String> + 'a {
        selectors
            .iter()
            .filter_map(|s| self.buckets.get(s))
            .flatten()
    }
}

/// Subscriber keys filed under every selector of the subscriber.
#[derive(Debug)]
pub(super) struct SubscriberIndex<K> {
    buckets: HashMap<Selector, HashSet<K>>,
}

impl<K> Default for SubscriberIndex<K> {
    fn default() -> Self {
        Self {
            buckets: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> SubscriberIndex<K> {
    /// Files `key` under each of `selectors`.
    pub(super) fn insert(&mut self, key: K, selectors: &SelectorSet) {
        for selector in selectors.iter() {
            self.buckets
                .entry(selector.clone())
                .or_default()
                .insert(key);
        }
    }

    /// Unfiles `key` from each of `selectors` (the ones it was inserted with).
    pub(super) fn remove(&mut self, key: K, selectors: &SelectorSet) {
        for selector in selectors.iter() {
            if let Some(bucket) = self.buckets.get_mut(selector) {
                bucket.remove(&key);
                if bucket.is_empty() {
                    self.buckets.remove(selector);
                }
            }
        }
    }

    /// Every subscriber that may hold all of `entry_selectors`: the smallest of their
    /// buckets (none for an entry without selectors, which matches nobody).
    pub(super) fn candidates(&self, entry_selectors: &SelectorSet) -> Vec<K> {
        let mut smallest: Option<&HashSet<K>> = None;
        for selector in entry_selectors.iter() {
            let Some(bucket) = self.buckets.get(selector) else {
                return Vec::new();
            };
            if smallest.is_none_or(|s| bucket.len() < s.len()) {
                smallest = Some(bucket);
            }
        }
        smallest
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(selectors: &[&str]) -> SelectorSet {
        selectors
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect()
    }

    #[test]
    fn an_entry_is_filed_under_its_rarest_selector() {
        let mut index = EntryIndex::default();
        for i in 0..10 {
            index.insert(&format!("ns{i}"), &set(&["k8s:ns:default"]));
        }
        index.insert("pod", &set(&["k8s:ns:default", "k8s:pod-name:web"]));
        let workload = set(&["k8s:pod-name:web", "k8s:sa:x"]);
        let found: Vec<&String> = index.candidates(&workload).collect();
        assert_eq!(
            found,
            ["pod"],
            "found without touching the namespace bucket"
        );

        let both = set(&["k8s:ns:default", "k8s:pod-name:web"]);
        assert_eq!(index.candidates(&both).count(), 11, "each entry once");
        index.remove("pod");
        assert_eq!(index.candidates(&both).count(), 10);
    }

    #[test]
    fn an_entry_without_selectors_is_never_a_candidate() {
        let mut index = EntryIndex::default();
        index.insert("empty", &SelectorSet::new());
        assert_eq!(index.candidates(&set(&["unix:uid:1"])).count(), 0);
    }

    #[test]
    fn subscribers_are_found_by_the_entrys_smallest_bucket() {
        let mut index = SubscriberIndex::default();
        index.insert(1_u64, &set(&["unix:uid:1", "unix:gid:0"]));
        index.insert(2, &set(&["unix:uid:2", "unix:gid:0"]));
        assert_eq!(index.candidates(&set(&["unix:uid:1", "unix:gid:0"])), [1]);
        assert!(index.candidates(&set(&["unix:uid:3"])).is_empty());
        assert!(index.candidates(&SelectorSet::new()).is_empty());
        let mut both = index.candidates(&set(&["unix:gid:0"]));
        both.sort_unstable();
        assert_eq!(both, [1, 2]);
        index.remove(1, &set(&["unix:uid:1", "unix:gid:0"]));
        assert_eq!(index.candidates(&set(&["unix:gid:0"])), [2]);
    }
}
