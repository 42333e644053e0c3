//! Hinted syncs: when the server's hint names the entries that changed (our own
//! `spire_rs.agent.notify.v1` service), the agent fetches just those with FetchEntries,
//! mints what they need and tells the subscribers they concern, instead of listing every
//! authorized entry's revision. A hint that names nothing, a missed hint (a gap in the
//! sequence, a new stream), a bundle change, an entry that needs a federated bundle the
//! agent does not hold, or a failed fetch falls back to the full sync.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use super::Manager;
use crate::manager::ManagerError;
use crate::manager::cache::CachedEntry;
use crate::manager::server_api::SyncHint;

/// Most named changes kept waiting; more make the next sync a full one.
const MAX_PENDING_NAMED: usize = 2000;

/// Most entry IDs asked for in one FetchEntries call (the server's limit).
const FETCH_IDS_PER_CALL: usize = 1000;

/// Hinted changes not applied yet.
#[derive(Debug, Default)]
pub(super) struct PendingHint {
    /// Something changed that the named changes do not cover: sync everything.
    full: bool,
    changed: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// The sequence the next hint of the current stream must carry.
    next_sequence: Option<u64>,
}

/// What a hinted sync must do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HintedWork {
    /// A full sync already covered every hint.
    Nothing,
    /// Sync everything.
    Full,
    /// Fetch these entries and drop those.
    Named {
        changed: Vec<String>,
        removed: Vec<String>,
    },
}

impl PendingHint {
    /// Adds a hint of the current stream.
    pub(super) fn add(&mut self, hint: &SyncHint) {
        let in_order = hint.sequence != 0 && self.next_sequence == Some(hint.sequence);
        self.next_sequence = Some(hint.sequence.wrapping_add(1));
        if !in_order || hint.bundles {
            self.full = true;
        }
        if hint.entries {
            match &hint.itemized {
                Some(named) => {
                    for id in &named.removed {
                        self.changed.remove(id);
                        self.removed.insert(id.clone());
                    }
                    for id in &named.changed {
                        self.removed.remove(id);
                        self.changed.insert(id.clone());
                    }
                }
                None => self.full = true,
            }
        }
        if self.changed.len() + self.removed.len() > MAX_PENDING_NAMED {
            self.full = true;
        }
        if self.full {
            self.changed.clear();
            self.removed.clear();
        }
    }

    /// The hint stream ended: the next one starts over (and its first hint syncs all).
    pub(super) fn stream_ended(&mut self) {
        self.next_sequence = None;
    }

    /// A full sync starts: it covers every hint received so far.
    pub(super) fn covered(&mut self) {
        self.full = false;
        self.changed.clear();
        self.removed.clear();
    }

    /// Asks for a full sync (a hint from outside the stream).
    pub(super) fn want_full(&mut self) {
        self.full = true;
    }

    /// Takes what is pending.
    pub(super) fn take(&mut self) -> HintedWork {
        if self.full {
            self.covered();
            return HintedWork::Full;
        }
        if self.changed.is_empty() && self.removed.is_empty() {
            return HintedWork::Nothing;
        }
        HintedWork::Named {
            changed: std::mem::take(&mut self.changed).into_iter().collect(),
            removed: std::mem::take(&mut self.removed).into_iter().collect(),
        }
    }
}

impl Manager {
    /// Applies the pending hints: fetches only the named entries when it can, else syncs
    /// everything.
    pub(super) async fn sync_hinted(&self) -> Result<(), ManagerError> {
        let work = self.pending_hint().take();
        match work {
            HintedWork::Nothing => Ok(()),
            HintedWork::Full => self.sync_once().await,
            HintedWork::Named { changed, removed } => {
                match self.sync_named(&changed, &removed).await {
                    Ok(true) => Ok(()),
                    Ok(false) => self.sync_once().await,
                    Err(e) => {
                        tracing::debug!("fetching the hinted entries failed, syncing all: {e}");
                        self.sync_once().await
                    }
                }
            }
        }
    }

    /// Fetches `changed`, drops `removed` (and changed ones the server no longer gives
    /// this agent), mints what they need and tells their subscribers. `Ok(false)` when an
    /// entry federates with a trust domain whose bundle the agent does not hold: the
    /// caller syncs everything.
    async fn sync_named(
        &self,
        changed: &[String],
        removed: &[String],
    ) -> Result<bool, ManagerError> {
        let _guard = self.sync_lock.lock().await;
        let started = Instant::now();
        let mut raw = Vec::with_capacity(changed.len());
        for ids in changed.chunks(FETCH_IDS_PER_CALL) {
            raw.extend(self.api.fetch_entries(ids).await?);
        }
        let mut fetched = Vec::with_capacity(raw.len());
        let mut got = HashSet::with_capacity(raw.len());
        for raw in &raw {
            match CachedEntry::from_proto(raw) {
                Ok(entry) => {
                    got.insert(entry.id.clone());
                    fetched.push(entry);
                }
                Err(reason) => tracing::warn!("ignoring registration entry: {reason}"),
            }
        }
        let entries_fetched = fetched.len();
        let mut gone = removed.to_vec();
        gone.extend(changed.iter().filter(|id| !got.contains(*id)).cloned());
        let entries_elapsed = started.elapsed();

        let now = self.now();
        let (needed, entries_total) = {
            let mut state = self.state();
            state.apply_named_changes(&gone, fetched);
            if !state.federated_bundles_match() {
                return Ok(false);
            }
            let needed = state.plan_mints(
                self.options.x509_svid_cache_max_size,
                now,
                self.options.availability_target,
            );
            (needed, state.entries.len())
        };
        let svids_minted = needed.len();
        let result = if needed.is_empty() {
            Ok(())
        } else {
            self.mint(needed).await
        };
        self.state().notify_subscribers();
        result?;
        *self
            .last_sync_success
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(self.now());
        tracing::debug!(
            entries_fetched,
            entries_removed = gone.len(),
            entries_total,
            svids_minted,
            entries_ms = entries_elapsed.as_secs_f64() * 1000.0,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            "applied the server's named changes"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::server_api::NamedChanges;

    fn named(sequence: u64, changed: &[&str], removed: &[&str]) -> SyncHint {
        SyncHint {
            sequence,
            entries: true,
            bundles: false,
            itemized: Some(NamedChanges {
                changed: changed.iter().map(|s| (*s).to_owned()).collect(),
                removed: removed.iter().map(|s| (*s).to_owned()).collect(),
            }),
        }
    }

    fn first() -> SyncHint {
        SyncHint {
            sequence: 0,
            entries: true,
            bundles: true,
            itemized: None,
        }
    }

    #[test]
    fn named_hints_in_order_accumulate_and_the_last_change_wins() {
        let mut pending = PendingHint::default();
        pending.add(&first());
        assert_eq!(pending.take(), HintedWork::Full);
        assert_eq!(pending.take(), HintedWork::Nothing);
        pending.add(&named(1, &["a", "b"], &[]));
        pending.add(&named(2, &["c"], &["b"]));
        assert_eq!(
            pending.take(),
            HintedWork::Named {
                changed: vec!["a".to_owned(), "c".to_owned()],
                removed: vec!["b".to_owned()],
            }
        );
    }

    #[test]
    fn a_gap_a_new_stream_a_bundle_or_an_unnamed_change_syncs_everything() {
        let mut pending = PendingHint::default();
        pending.add(&first());
        pending.take();
        pending.add(&named(2, &["a"], &[]));
        assert_eq!(pending.take(), HintedWork::Full, "hint 1 was missed");

        pending.add(&named(3, &["a"], &[]));
        pending.stream_ended();
        pending.add(&named(4, &["b"], &[]));
        assert_eq!(pending.take(), HintedWork::Full, "a new stream");

        pending.add(&SyncHint {
            sequence: 5,
            entries: false,
            bundles: true,
            itemized: None,
        });
        assert_eq!(pending.take(), HintedWork::Full, "bundles changed");

        pending.add(&SyncHint {
            sequence: 6,
            entries: true,
            bundles: false,
            itemized: None,
        });
        assert_eq!(pending.take(), HintedWork::Full, "nothing named");

        let many: Vec<String> = (0..=MAX_PENDING_NAMED).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        pending.add(&named(7, &many, &[]));
        assert_eq!(pending.take(), HintedWork::Full, "too many named");
    }

    #[test]
    fn a_full_sync_covers_what_was_pending() {
        let mut pending = PendingHint::default();
        pending.add(&first());
        pending.add(&named(1, &["a"], &[]));
        pending.covered();
        assert_eq!(pending.take(), HintedWork::Nothing);
    }
}
