//! The authorized-entry index: every entry and agent in memory, kept fresh from the
//! datastore's change events, answering "which entries may this agent obtain" without SQL.
//!
//! [`AuthorizedIndex::load`] lists everything once; [`AuthorizedIndex::run`] then polls the
//! entry and agent event streams every `cache_reload_interval` and re-fetches only what
//! changed (a record that is gone was deleted). Event IDs that are skipped (a transaction not
//! yet committed) are re-checked on later polls, and a periodic full reload heals anything
//! the events missed. API handlers call [`AuthorizedIndex::refresh`] after a write so the
//! writer's next read sees it.
//!
//! Readers take a read lock on the in-memory [`EntryIndex`]; the refresher builds new records
//! outside the lock and holds the write lock only to swap them in.
//!
//! Every applied change is also traced to the agents it concerns, whose [`SyncHints`]
//! channels tell them to sync now (see `api::notify`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use spire_common::telemetry::server::IndexGauges;
use tokio_util::sync::CancellationToken;

use crate::datastore::{
    AttestedNode, DataStore, DataStoreError, ListEntriesRequest, ListNodesRequest, Pagination,
    RegistrationEntry,
};

mod cursor;
mod hints;
mod index;
mod snapshot;

use cursor::EventCursor;
pub use hints::{AgentGone, AgentSignal, EntryChange, RECENT_CHANGES, SyncHints};
pub use index::{ChangeScope, EntryIndex};
pub use snapshot::{Revision, SyncSnapshot};

/// A read-only snapshot answer for one agent.
pub type AuthorizedEntries = Vec<Arc<RegistrationEntry>>;

/// Upstream's default `experimental.cache_reload_interval`.
pub const DEFAULT_CACHE_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest poll period [`AuthorizedIndex::run`] accepts; shorter ones are raised to it.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many changed entries are fetched (and swapped in under one write lock) at a time.
const FETCH_CHUNK: usize = 500;

/// How the index stays fresh beyond the poll interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// How often [`AuthorizedIndex::run`] reloads everything, so a change whose event was
    /// lost (pruned before it was read, or timed out) is picked up within this bound.
    pub full_reload_interval: Duration,
    /// How long a skipped event ID is looked for before its transaction is assumed rolled
    /// back (upstream's `experimental.event_timeout`).
    pub missed_event_timeout: Duration,
    /// `max_attested_node_info_staleness`: how long an agent's serial read from the
    /// datastore may authorize its calls without reading it again (0, the default: every
    /// agent call reads the datastore).
    pub max_attested_node_info_staleness: Duration,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            full_reload_interval: Duration::from_secs(10 * 60),
            missed_event_timeout: Duration::from_secs(10 * 60),
            max_attested_node_info_staleness: Duration::ZERO,
        }
    }
}

/// Where the refresher stands in both event streams; guarded by an async mutex so polls,
/// full reloads and API-triggered refreshes never interleave.
#[derive(Debug)]
struct SyncState {
    entries: EventCursor,
    agents: EventCursor,
    loaded_at: Instant,
    /// The event-cache gauges as last emitted (upstream emits them on change).
    last_gauges: IndexGauges,
    /// The last [`AuthorizedIndex::refresh`] ticket whose writes the index has applied.
    refreshed_through: u64,
}

/// The in-memory index, kept fresh from the datastore.
pub struct AuthorizedIndex {
    datastore: Arc<dyn DataStore>,
    options: IndexOptions,
    index: RwLock<EntryIndex>,
    sync: tokio::sync::Mutex<SyncState>,
    /// Tickets handed to [`Self::refresh`] callers, in order.
    refresh_tickets: AtomicU64,
    hints: Arc<SyncHints>,
    /// Agent serials the authorizer read from the datastore, and when
    /// (`max_attested_node_info_staleness`).
    node_serials: std::sync::Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for AuthorizedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.read();
        f.debug_struct("AuthorizedIndex")
            .field("entries", &index.entry_count())
            .field("agents", &index.agent_count())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AuthorizedIndex {
    /// Lists every entry and agent (with selectors) and the current event positions, with the
    /// default [`IndexOptions`]. Call once at server start, then spawn [`Self::run`].
    pub async fn load(datastore: Arc<dyn DataStore>) -> Result<Arc<Self>, DataStoreError> {
        Self::load_with(datastore, IndexOptions::default()).await
    }

    /// Like [`Self::load`] with explicit freshness options.
    pub async fn load_with(
        datastore: Arc<dyn DataStore>,
        options: IndexOptions,
    ) -> Result<Arc<Self>, DataStoreError> {
        let (index, state) = full_load(datastore.as_ref(), None).await?;
        Ok(Arc::new(Self {
            datastore,
            options,
            index: RwLock::new(index),
            sync: tokio::sync::Mutex::new(state),
            refresh_tickets: AtomicU64::new(0),
            hints: Arc::new(SyncHints::new()),
            node_serials: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Whether `serial` is agent `agent_id`'s current SVID serial as read from the datastore
    /// less than `max_attested_node_info_staleness` ago; always false when that is 0.
    pub fn agent_serial_is_fresh(&self, agent_id: &str, serial: &str) -> bool {
        let staleness = self.options.max_attested_node_info_staleness;
        if staleness.is_zero() {
            return false;
        }
        let serials = self
            .node_serials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        serials
            .get(agent_id)
            .is_some_and(|(current, read_at)| current == serial && read_at.elapsed() < staleness)
    }

    /// Records agent `agent_id`'s current serial as just read from the datastore (an empty
    /// serial, a banned agent, is forgotten), for [`Self::agent_serial_is_fresh`].
    pub fn remember_agent_serial(&self, agent_id: &str, serial: &str) {
        if self.options.max_attested_node_info_staleness.is_zero() {
            return;
        }
        let mut serials = self
            .node_serials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if serial.is_empty() {
            serials.remove(agent_id);
        } else {
            serials.insert(agent_id.to_owned(), (serial.to_owned(), Instant::now()));
        }
    }

    /// Entries the agent may obtain: those parented by the agent, by node-alias entries whose
    /// selectors the agent's node selectors satisfy, and recursively their descendants.
    /// See [`EntryIndex::authorized_entries`] for the exact rules.
    pub fn authorized_entries(&self, agent_id: &str) -> AuthorizedEntries {
        self.read().authorized_entries(agent_id)
    }

    /// Like [`Self::authorized_entries`] for an agent the caller already authenticated
    /// against the datastore. An agent this index does not know yet was attested through
    /// another server on the same database moments ago: pending events are applied first,
    /// so its node-alias entries are not missing from its first sync here.
    pub async fn authorized_entries_of_attested(&self, agent_id: &str) -> AuthorizedEntries {
        if self.agent(agent_id).is_none()
            && let Err(err) = self.refresh().await
        {
            tracing::warn!(agent = agent_id, error = %err, "refreshing the authorized-entry index for an agent it does not know yet failed");
        }
        self.authorized_entries(agent_id)
    }

    /// The agent's authorized entries for a sync (see [`EntryIndex::sync_snapshot`]), for an
    /// agent the caller already authenticated, as [`Self::authorized_entries_of_attested`].
    pub async fn sync_snapshot_of_attested(&self, agent_id: &str) -> Arc<SyncSnapshot> {
        if self.agent(agent_id).is_none()
            && let Err(err) = self.refresh().await
        {
            tracing::warn!(agent = agent_id, error = %err, "refreshing the authorized-entry index for an agent it does not know yet failed");
        }
        self.sync_snapshot(agent_id)
    }

    /// The agent's authorized entries for a sync, kept between syncs while nothing it is
    /// authorized for changes (see [`EntryIndex::sync_snapshot`]).
    pub fn sync_snapshot(&self, agent_id: &str) -> Arc<SyncSnapshot> {
        self.read().sync_snapshot(agent_id)
    }

    /// The entry with this ID when the agent is authorized for it now, costing the entry's
    /// ancestors (for FetchEntries, which follows an itemized sync hint).
    pub fn authorized_entry(
        &self,
        agent_id: &str,
        entry_id: &str,
    ) -> Option<Arc<RegistrationEntry>> {
        self.read().authorized_entry(agent_id, entry_id)
    }

    /// Of `entry_ids`, the entries the agent (authenticated against the datastore) is
    /// authorized for, costing the named entries' ancestors rather than every entry of the
    /// agent (an agent with 100k entries asking to sign one SVID). An agent this index
    /// does not know yet is handled as in [`Self::authorized_entries_of_attested`].
    pub async fn authorized_entries_among(
        &self,
        agent_id: &str,
        entry_ids: &[&str],
    ) -> Vec<Arc<RegistrationEntry>> {
        if self.agent(agent_id).is_none()
            && let Err(err) = self.refresh().await
        {
            tracing::warn!(agent = agent_id, error = %err, "refreshing the authorized-entry index for an agent it does not know yet failed");
        }
        let index = self.read();
        entry_ids
            .iter()
            .filter_map(|id| index.authorized_entry(agent_id, id))
            .collect()
    }

    /// The cached agent record (serials, ban state, selectors) used to authorize agent calls.
    pub fn agent(&self, agent_id: &str) -> Option<Arc<AttestedNode>> {
        self.read().agent(agent_id)
    }

    /// The cached entry with this ID (node-alias entries included).
    pub fn entry(&self, entry_id: &str) -> Option<Arc<RegistrationEntry>> {
        self.read().entry(entry_id)
    }

    /// The connected agents' sync hint channels, signalled as changes are applied.
    pub fn hints(&self) -> &Arc<SyncHints> {
        &self.hints
    }

    /// How many entries the index holds, for debug and metrics output.
    pub fn entry_count(&self) -> usize {
        self.read().entry_count()
    }

    /// How many agents the index holds, for debug and metrics output.
    pub fn agent_count(&self) -> usize {
        self.read().agent_count()
    }

    /// Applies pending datastore events now, so a write is visible to the next read.
    ///
    /// Callers that wait for the same refresh share it: a caller's writes committed before
    /// it took its ticket, so a refresh that began after that ticket was handed out has
    /// applied them, and the caller returns without asking the datastore again (concurrent
    /// BatchCreateEntry calls do one event listing between them, not one each in turn).
    pub async fn refresh(&self) -> Result<(), DataStoreError> {
        let ticket = self.refresh_tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.sync.lock().await;
        if state.refreshed_through >= ticket {
            return Ok(());
        }
        let covers = self.refresh_tickets.load(Ordering::SeqCst);
        self.apply_events(&mut state).await?;
        state.refreshed_through = covers;
        Ok(())
    }

    /// Reloads every entry and agent now, replacing the index in one swap.
    pub async fn reload(&self) -> Result<(), DataStoreError> {
        let mut state = self.sync.lock().await;
        self.full_reload(&mut state).await
    }

    /// Polls the event streams every `interval` (upstream `experimental.cache_reload_interval`,
    /// default [`DEFAULT_CACHE_RELOAD_INTERVAL`]) and reloads everything every
    /// [`IndexOptions::full_reload_interval`], until `cancel` fires. Failures are logged and
    /// retried on the next tick; readers keep the last good state meanwhile.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let period = interval.max(MIN_POLL_INTERVAL);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                result = self.tick() => {
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "authorized-entry index refresh failed; retrying next interval");
                    }
                }
            }
        }
    }

    /// One run-loop step: a full reload when due, otherwise an event poll.
    async fn tick(&self) -> Result<(), DataStoreError> {
        let mut state = self.sync.lock().await;
        let started = std::time::Instant::now();
        let reload_due = state.loaded_at.elapsed() >= self.options.full_reload_interval
            || state.entries.needs_reload()
            || state.agents.needs_reload();
        let result = if reload_due {
            self.full_reload(&mut state).await
        } else {
            self.apply_events(&mut state).await
        };
        // Upstream's entries-by-entry-ID cache holds no node aliases (they have their own).
        let (entries, agents) = {
            let index = self.read();
            (index.child_entry_count(), index.agent_count())
        };
        spire_common::telemetry::server::entry_cache_reloaded(
            result.is_ok(),
            started,
            entries,
            agents,
        );
        self.emit_gauges(&mut state);
        result
    }

    /// Upstream's event-cache gauges, those that changed since last emitted.
    fn emit_gauges(&self, state: &mut SyncState) {
        if !spire_common::telemetry::global().enabled() {
            return;
        }
        let now = {
            let index = self.read();
            IndexGauges {
                entries_by_parent_id: index.child_entry_count(),
                node_aliases_by_entry_id: index.node_alias_count(),
                node_aliases_by_selector: index.node_alias_selector_count(),
                skipped_entry_event_ids: state.entries.missed_count(),
                skipped_node_event_ids: state.agents.missed_count(),
            }
        };
        spire_common::telemetry::server::index_gauges(&state.last_gauges, &now);
        state.last_gauges = now;
    }

    async fn full_reload(&self, state: &mut SyncState) -> Result<(), DataStoreError> {
        let (index, next) = full_load(self.datastore.as_ref(), Some(state)).await?;
        let old = std::mem::replace(&mut *self.write(), index);
        // Freeing every old record takes a while at scale: do it after the lock is released.
        drop(old);
        *state = next;
        // What changed is not traced through a reload (it heals missed events); a hint
        // costs every connected agent one revision-only sync.
        self.hints.all_entries_changed();
        Ok(())
    }

    /// Applies entry and agent events after the cursors. Cursors advance only once every
    /// changed record was fetched, so a failure replays the same events next time (applying
    /// a re-fetched record twice is harmless).
    async fn apply_events(&self, state: &mut SyncState) -> Result<(), DataStoreError> {
        let timeout = self.options.missed_event_timeout;
        let ds = self.datastore.as_ref();

        let now = Instant::now();
        let mut entries = state.entries.clone();
        entries.expire(now, timeout);
        let events = ds
            .list_registration_entry_events(entries.query_after())
            .await?;
        let changed = entries.observe(&events, now);
        for ids in changed.chunks(FETCH_CHUNK) {
            let fetched = ds.fetch_registration_entries(ids).await?;
            self.apply_entries(ids, fetched);
        }
        state.entries = entries;

        let now = Instant::now();
        let mut agents = state.agents.clone();
        agents.expire(now, timeout);
        let events = ds.list_attested_node_events(agents.query_after()).await?;
        let changed = agents.observe(&events, now);
        for agent_id in &changed {
            let fetched = ds.fetch_attested_node(agent_id).await?;
            let before = self.agent(agent_id);
            {
                let mut index = self.write();
                match &fetched {
                    Some(agent) => index.upsert_agent(Arc::new(agent.clone())),
                    None => index.remove_agent(agent_id),
                }
            }
            match fetched {
                None if before.is_some() => self.hints.agent_gone(agent_id, AgentGone::Deleted),
                Some(agent) if agent.is_banned() => {
                    self.hints.agent_gone(agent_id, AgentGone::Banned);
                }
                Some(agent) if before.is_none_or(|b| b.selectors != agent.selectors) => {
                    // New node selectors can change which node aliases apply.
                    self.hints.entries_changed([agent_id]);
                }
                _ => {}
            }
        }
        state.agents = agents;
        Ok(())
    }

    /// Replaces the entries with these IDs by their fetched versions; IDs not fetched were
    /// deleted.
    fn apply_entries(&self, ids: &[String], fetched: Vec<RegistrationEntry>) {
        let mut by_id: HashMap<String, Arc<RegistrationEntry>> = fetched
            .into_iter()
            .map(|entry| (entry.entry_id.clone(), Arc::new(entry)))
            .collect();
        // Per agent concerned, what changed for it: the entry at its new revision, the
        // entry gone from its view, or (a node alias, an entry that parents others) an
        // unnamed change.
        let mut changes: Vec<(String, EntryChange)> = Vec::new();
        {
            let mut index = self.write();
            for id in ids {
                let entry = by_id.remove(id);
                let revision = entry.as_ref().map_or(0, |e| e.revision_number);
                let ChangeScope {
                    before,
                    after,
                    unnamed,
                } = index.replace_entry(id, entry);
                if unnamed {
                    changes.extend(
                        before
                            .union(&after)
                            .map(|agent| (agent.clone(), EntryChange::Unknown)),
                    );
                    continue;
                }
                changes.extend(
                    before
                        .difference(&after)
                        .map(|agent| (agent.clone(), EntryChange::Removed(id.clone()))),
                );
                changes.extend(after.into_iter().map(|agent| {
                    let change = EntryChange::Changed {
                        id: id.clone(),
                        revision,
                    };
                    (agent, change)
                }));
            }
        }
        self.hints.entry_changes(
            changes
                .iter()
                .map(|(agent, change)| (agent, change.clone())),
        );
    }

    fn read(&self) -> RwLockReadGuard<'_, EntryIndex> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, EntryIndex> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lists the event positions first, then every record, and builds a fresh index off the
/// async workers. A change committed in between has an event past the positions read, so
/// the next poll applies it again.
async fn full_load(
    ds: &dyn DataStore,
    previous: Option<&SyncState>,
) -> Result<(EntryIndex, SyncState), DataStoreError> {
    let started = Instant::now();
    let entry_events = ds.list_registration_entry_events(0).await?;
    let agent_events = ds.list_attested_node_events(0).await?;
    let state = SyncState {
        entries: EventCursor::from_listing(&entry_events, started, previous.map(|p| &p.entries)),
        agents: EventCursor::from_listing(&agent_events, started, previous.map(|p| &p.agents)),
        loaded_at: started,
        last_gauges: previous.map(|p| p.last_gauges).unwrap_or_default(),
        refreshed_through: previous.map_or(0, |p| p.refreshed_through),
    };
    drop((entry_events, agent_events));

    // Page by page, each page indexed before the next is read: the rows and wire-format
    // records of one page are all that is transient, so the allocator reuses the same memory
    // page after page. Listing everything at once kept ~40% more resident memory after a
    // restart than the running server needs (freed, but fragmented and never returned).
    let mut index = EntryIndex::new();
    let mut pagination = first_page();
    loop {
        let request = ListEntriesRequest {
            pagination: Some(pagination),
            ..ListEntriesRequest::default()
        };
        let (entries, token) = ds.list_registration_entries(&request).await?;
        index = index_page(index, move |index| {
            entries
                .into_iter()
                .for_each(|e| index.upsert_entry(Arc::new(e)));
        })
        .await?;
        let Some(next) = next_page(token) else { break };
        pagination = next;
    }
    let mut pagination = first_page();
    loop {
        let request = ListNodesRequest {
            fetch_selectors: true,
            pagination: Some(pagination),
            ..ListNodesRequest::default()
        };
        let (agents, token) = ds.list_attested_nodes(&request).await?;
        index = index_page(index, move |index| {
            agents
                .into_iter()
                .for_each(|a| index.upsert_agent(Arc::new(a)));
        })
        .await?;
        let Some(next) = next_page(token) else { break };
        pagination = next;
    }
    tracing::info!(
        entries = index.entry_count(),
        agents = index.agent_count(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "loaded authorized-entry index"
    );
    Ok((index, state))
}

/// Records per datastore page of a full load: large enough that paging costs nothing
/// measurable, small enough that one page's transient rows stay a few MiB.
const FULL_LOAD_PAGE_SIZE: u32 = 2_000;

fn first_page() -> Pagination {
    Pagination {
        token: String::new(),
        page_size: FULL_LOAD_PAGE_SIZE,
    }
}

/// The next page after `token`, or `None` when the listing is complete (empty token).
fn next_page(token: String) -> Option<Pagination> {
    (!token.is_empty()).then_some(Pagination {
        token,
        page_size: FULL_LOAD_PAGE_SIZE,
    })
}

/// Runs `add` on the index off the async runtime (a page of upserts is CPU work).
async fn index_page(
    mut index: EntryIndex,
    add: impl FnOnce(&mut EntryIndex) + Send + 'static,
) -> Result<EntryIndex, DataStoreError> {
    tokio::task::spawn_blocking(move || {
        add(&mut index);
        index
    })
    .await
    .map_err(|err| {
        DataStoreError::Internal(format!("building the authorized-entry index failed: {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::AttestedNode;
    use spire_core::selector::Selector;

    /// With 1,000 connected agents, an entry under one of them signals that agent only:
    /// the change is traced through the index, not broadcast.
    #[test]
    fn an_entry_change_signals_only_the_agents_it_concerns() {
        let agent_id = |i: usize| format!("spiffe://example.org/spire/agent/x/{i}");
        let index = EntryIndex::from_records(
            [],
            (0..1000).map(|i| AttestedNode {
                spiffe_id: agent_id(i),
                cert_serial_number: "1".to_owned(),
                selectors: vec![Selector {
                    kind: "k".to_owned(),
                    value: format!("v{i}"),
                }],
                ..AttestedNode::default()
            }),
        );
        let hints = SyncHints::new();
        let receivers: Vec<_> = (0..1000)
            .map(|i| hints.subscribe(&agent_id(i)).unwrap())
            .collect();
        let entry = RegistrationEntry {
            entry_id: "e".to_owned(),
            parent_id: agent_id(7),
            spiffe_id: "spiffe://example.org/w".to_owned(),
            ..RegistrationEntry::default()
        };
        let mut concerned = std::collections::HashSet::new();
        index.agents_concerned_by(&entry, &mut concerned);
        hints.entries_changed(&concerned);
        let signalled: Vec<usize> = receivers
            .iter()
            .enumerate()
            .filter(|(_, rx)| rx.has_changed().unwrap())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(signalled, [7]);
    }
}
