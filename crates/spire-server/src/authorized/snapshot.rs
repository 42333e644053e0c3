//! Per-agent snapshots of the authorized entries, kept between syncs.
//!
//! An agent syncs every few seconds, and when nothing changed for it the answer is the same
//! list of entry revisions as last time. Walking the index for an agent with 10,000 entries
//! touches 10,000 scattered entries; a snapshot keeps the revisions side by side (the IDs in
//! one string), so an unchanged sync costs a copy of them. [`super::EntryIndex`] drops an
//! agent's snapshot whenever a change concerns that agent (the same tracing that sends sync
//! hints), under its write lock, so a snapshot is never older than the index it came from.
//! The cache holds at most a budget of (agent, entry) pairs and forgets the least recently
//! used snapshots beyond it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::datastore::RegistrationEntry;

/// Pairs the cache may hold whatever the index's size (about 70 bytes each with UUID entry IDs).
const MIN_BUDGET: usize = 100_000;

/// One agent's authorized entries at one moment, sorted by entry ID (the order upstream's
/// server sends revisions in).
#[derive(Debug)]
pub struct SyncSnapshot {
    entries: Vec<Arc<RegistrationEntry>>,
    /// Every entry ID, concatenated in `entries` order.
    ids: String,
    /// Where each ID ends in `ids`.
    ends: Vec<usize>,
    /// Each entry's (revision number, creation time).
    revisions: Vec<(i64, i64)>,
}

/// One entry's revision as a sync sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision<'a> {
    /// The entry ID.
    pub id: &'a str,
    /// Its revision number.
    pub revision_number: i64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

impl SyncSnapshot {
    /// Takes the entries of one walk of the index (each entry once).
    pub fn new(mut entries: Vec<Arc<RegistrationEntry>>) -> Self {
        entries.sort_unstable_by(|a, b| a.entry_id.cmp(&b.entry_id));
        let mut ids = String::with_capacity(entries.iter().map(|e| e.entry_id.len()).sum());
        let mut ends = Vec::with_capacity(entries.len());
        let mut revisions = Vec::with_capacity(entries.len());
        for entry in &entries {
            ids.push_str(&entry.entry_id);
            ends.push(ids.len());
            revisions.push((entry.revision_number, entry.created_at));
        }
        Self {
            entries,
            ids,
            ends,
            revisions,
        }
    }

    /// How many entries the agent is authorized for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the agent is authorized for no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, sorted by entry ID.
    pub fn entries(&self) -> &[Arc<RegistrationEntry>] {
        &self.entries
    }

    /// The revisions of entries `range`, in entry ID order.
    pub fn revisions(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Revision<'_>> + '_ {
        range.map(|i| Revision {
            id: self.id(i),
            revision_number: self.revisions[i].0,
            created_at: self.revisions[i].1,
        })
    }

    /// The entry with this ID, when the agent is authorized for it.
    pub fn find(&self, entry_id: &str) -> Option<&Arc<RegistrationEntry>> {
        let at = self
            .entries
            .binary_search_by(|e| e.entry_id.as_str().cmp(entry_id))
            .ok()?;
        self.entries.get(at)
    }

    fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.ids[start..self.ends[i]]
    }
}

/// The snapshots of the agents that synced lately.
#[derive(Debug, Default)]
pub(super) struct SnapshotCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_agent: HashMap<String, Cached>,
    /// (agent, entry) pairs held.
    pairs: usize,
    /// Bumped on every use, to find the least recently used.
    clock: u64,
}

#[derive(Debug)]
struct Cached {
    snapshot: Arc<SyncSnapshot>,
    last_used: u64,
}

impl SnapshotCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's snapshot, if it is still cached.
    pub(super) fn get(&self, agent_id: &str) -> Option<Arc<SyncSnapshot>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let cached = inner.by_agent.get_mut(agent_id)?;
        cached.last_used = now;
        Some(Arc::clone(&cached.snapshot))
    }

    /// Keeps the agent's snapshot, forgetting the least recently used ones when the cache
    /// would hold more than `max(MIN_BUDGET, 2 × index_entries)` pairs. The caller holds the
    /// index's read lock, so no change can have happened since the walk.
    pub(super) fn insert(&self, agent_id: &str, snapshot: Arc<SyncSnapshot>, index_entries: usize) {
        let budget = MIN_BUDGET.max(index_entries.saturating_mul(2));
        if snapshot.len() > budget {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.by_agent.remove(agent_id) {
            inner.pairs -= old.snapshot.len();
        }
        if inner.pairs + snapshot.len() > budget {
            inner.evict_until(budget - snapshot.len());
        }
        inner.clock += 1;
        inner.pairs += snapshot.len();
        let last_used = inner.clock;
        inner.by_agent.insert(
            agent_id.to_owned(),
            Cached {
                snapshot,
                last_used,
            },
        );
    }

    /// Whether no snapshot is held (index changes then need not trace their agents).
    pub(super) fn is_empty(&mut self) -> bool {
        self.inner
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .by_agent
            .is_empty()
    }

    /// Forgets the agent's snapshot (something it is authorized for changed).
    pub(super) fn invalidate(&mut self, agent_id: &str) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = inner.by_agent.remove(agent_id) {
            inner.pairs -= old.snapshot.len();
        }
    }

    /// How many agents have a snapshot.
    pub(super) fn agents(&self) -> usize {
        self.lock().by_agent.len()
    }
}

impl Inner {
    /// Forgets the least recently used snapshots until at most `pairs` are held.
    fn evict_until(&mut self, pairs: usize) {
        let mut by_age: Vec<(u64, String)> = self
            .by_agent
            .iter()
            .map(|(agent, cached)| (cached.last_used, agent.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, agent) in by_age {
            if self.pairs <= pairs {
                break;
            }
            if let Some(old) = self.by_agent.remove(&agent) {
                self.pairs -= old.snapshot.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorized::EntryIndex;
    use crate::datastore::AttestedNode;
    use spire_core::selector::Selector;

    fn entries(prefix: &str, count: usize) -> Vec<Arc<RegistrationEntry>> {
        (0..count)
            .rev()
            .map(|n| {
                Arc::new(RegistrationEntry {
                    entry_id: format!("{prefix}-{n:05}"),
                    revision_number: n as i64,
                    created_at: 1_700_000_000 + n as i64,
                    ..RegistrationEntry::default()
                })
            })
            .collect()
    }

    #[test]
    fn revisions_come_sorted_by_entry_id_and_entries_are_found_by_id() {
        let snapshot = SyncSnapshot::new(entries("e", 3));
        let got: Vec<Revision<'_>> = snapshot.revisions(0..3).collect();
        assert_eq!(
            got,
            vec![
                Revision {
                    id: "e-00000",
                    revision_number: 0,
                    created_at: 1_700_000_000
                },
                Revision {
                    id: "e-00001",
                    revision_number: 1,
                    created_at: 1_700_000_001
                },
                Revision {
                    id: "e-00002",
                    revision_number: 2,
                    created_at: 1_700_000_002
                },
            ]
        );
        assert_eq!(snapshot.revisions(2..3).count(), 1);
        assert_eq!(snapshot.find("e-00001").map(|e| e.revision_number), Some(1));
        assert!(snapshot.find("e-00009").is_none());
        assert!(SyncSnapshot::new(Vec::new()).find("e").is_none());
    }

    #[test]
    fn the_least_recently_used_snapshots_go_first_beyond_the_budget() {
        let mut cache = SnapshotCache::default();
        let half = MIN_BUDGET / 2;
        cache.insert("a", Arc::new(SyncSnapshot::new(entries("a", half))), 0);
        cache.insert("b", Arc::new(SyncSnapshot::new(entries("b", half))), 0);
        assert!(cache.get("a").is_some(), "a is now the most recently used");
        cache.insert("c", Arc::new(SyncSnapshot::new(entries("c", 10))), 0);
        assert!(cache.get("b").is_none(), "b was the least recently used");
        assert!(cache.get("a").is_some());
        assert!(cache.get("c").is_some());
        assert_eq!(cache.agents(), 2);
        // A larger index raises the budget.
        cache.insert(
            "d",
            Arc::new(SyncSnapshot::new(entries("d", half))),
            MIN_BUDGET,
        );
        assert_eq!(cache.agents(), 3);
        // A snapshot larger than the whole budget is not kept.
        cache.insert(
            "e",
            Arc::new(SyncSnapshot::new(entries("e", MIN_BUDGET + 1))),
            0,
        );
        assert!(cache.get("e").is_none());
        cache.invalidate("a");
        assert!(cache.get("a").is_none());
        assert_eq!(cache.agents(), 2);
        cache.invalidate("c");
        cache.invalidate("d");
        assert!(cache.is_empty());
        assert_eq!(cache.inner.get_mut().unwrap().pairs, 0);
    }

    /// A small deterministic generator (xorshift64), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        fn selectors(&mut self) -> Vec<Selector> {
            ["a", "b", "c"]
                .into_iter()
                .filter(|_| self.below(2) == 0)
                .map(|value| Selector {
                    kind: "k".to_owned(),
                    value: value.to_owned(),
                })
                .collect()
        }
    }

    /// Random entry and agent changes (parents that are agents, other entries, node
    /// aliases, cycles, agents not in the index yet): after each, every agent's sync
    /// snapshot must equal a fresh walk of the index, revisions included.
    #[test]
    fn snapshots_always_match_a_fresh_walk() {
        const AGENTS: [&str; 5] = [
            "spiffe://td/spire/agent/x/a0",
            "spiffe://td/spire/agent/x/a1",
            "spiffe://td/spire/agent/x/a2",
            "spiffe://td/spire/agent/x/a3",
            // Never attested: only entries parented to it directly reach it.
            "spiffe://td/spire/agent/x/a4",
        ];
        const WORKLOADS: [&str; 6] = [
            "spiffe://td/w0",
            "spiffe://td/w1",
            "spiffe://td/w2",
            "spiffe://td/w3",
            "spiffe://td/spire/agent/x/a1",
            "spiffe://td/w4",
        ];
        const SERVER: &str = "spiffe://td/spire/server";
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut index = EntryIndex::new();
        let mut revision = 0;
        for step in 0..4000 {
            match rng.below(10) {
                0..=4 => {
                    let parent = match rng.below(3) {
                        0 => rng.pick(&AGENTS),
                        1 => rng.pick(&WORKLOADS),
                        _ => SERVER,
                    };
                    revision += 1;
                    let entry = Arc::new(RegistrationEntry {
                        entry_id: format!("e{}", rng.below(24)),
                        parent_id: parent.to_owned(),
                        spiffe_id: rng.pick(&WORKLOADS).to_owned(),
                        selectors: rng.selectors(),
                        revision_number: revision,
                        ..RegistrationEntry::default()
                    });
                    // Both ways in: the load's and the event path's.
                    if rng.below(2) == 0 {
                        index.upsert_entry(entry);
                    } else {
                        index.replace_entry(&entry.entry_id.clone(), Some(entry));
                    }
                }
                5 => index.remove_entry(&format!("e{}", rng.below(24))),
                6 => {
                    index.replace_entry(&format!("e{}", rng.below(24)), None);
                }
                7 | 8 => index.upsert_agent(Arc::new(AttestedNode {
                    spiffe_id: rng.pick(&AGENTS[..4]).to_owned(),
                    selectors: rng.selectors(),
                    ..AttestedNode::default()
                })),
                _ => index.remove_agent(rng.pick(&AGENTS[..4])),
            }
            for agent in AGENTS {
                let mut walked: Vec<(String, i64)> = index
                    .authorized_entries(agent)
                    .iter()
                    .map(|e| (e.entry_id.clone(), e.revision_number))
                    .collect();
                walked.sort();
                let snapshot = index.sync_snapshot(agent);
                let kept: Vec<(String, i64)> = snapshot
                    .revisions(0..snapshot.len())
                    .map(|r| (r.id.to_owned(), r.revision_number))
                    .collect();
                assert_eq!(kept, walked, "step {step}, agent {agent}");
            }
        }
        assert_eq!(index.sync_snapshot_count(), AGENTS.len());
    }
}
