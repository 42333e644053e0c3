//! Sync hints for connected agents: when the index applies a change, the agents it concerns
//! are told to sync now (our own `spire_rs.agent.notify.v1` service streams them), instead
//! of finding out at their next sync interval.
//!
//! One `watch` channel per connected agent (shared by all its streams) carries counters; a
//! change bumps the counters of the agents it concerns only, and several changes before the
//! agent reads them coalesce into one hint. Each entry change is also logged per agent (the
//! last [`RECENT_CHANGES`]), so a hint can name the entries that changed and the agent fetch
//! only those; a stream that fell further behind, or a change that cannot be named (a
//! reload, a node alias), sends a hint without names and the agent syncs everything. A
//! banned or deleted agent is told so, which ends its streams with the denial it would get
//! on any other call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Why an agent's hint streams end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentGone {
    /// The agent was banned.
    Banned,
    /// The agent's attestation was deleted.
    Deleted,
}

/// How many itemized entry changes are kept per agent; a stream further behind than this
/// sends a hint without names (the agent then syncs everything).
pub const RECENT_CHANGES: usize = 1024;

/// One change to an agent's authorized entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryChange {
    /// The agent is authorized for this entry, now at this revision.
    Changed {
        /// The entry ID.
        id: String,
        /// Its revision number.
        revision: i64,
    },
    /// The agent is no longer authorized for this entry (deleted or moved away).
    Removed(String),
    /// Something changed that cannot be named per entry (a reload, a node alias, new node
    /// selectors): the agent must sync everything.
    Unknown,
}

/// What an agent's hint streams watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSignal {
    /// Bumped once per change to entries it is authorized for.
    pub entries: u64,
    /// Bumped when the bundles may have changed.
    pub bundles: u64,
    /// Set when the agent may no longer call the server.
    pub gone: Option<AgentGone>,
    /// The last changes, oldest first, each with the `entries` count it set.
    pub recent: VecDeque<(u64, EntryChange)>,
}

impl AgentSignal {
    fn push(&mut self, change: EntryChange) {
        self.entries = self.entries.wrapping_add(1);
        if self.recent.len() >= RECENT_CHANGES {
            self.recent.pop_front();
        }
        self.recent.push_back((self.entries, change));
    }

    /// The entry changes after count `seen` up to now, last change of each entry winning,
    /// or `None` when they cannot all be named (some were dropped, or one is unknown).
    pub fn changes_since(&self, seen: u64) -> Option<Vec<EntryChange>> {
        let wanted = self.entries.wrapping_sub(seen);
        let wanted = usize::try_from(wanted).ok()?;
        if wanted > self.recent.len() {
            return None;
        }
        let mut out: Vec<EntryChange> = Vec::with_capacity(wanted);
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(wanted);
        for (_, change) in self.recent.iter().skip(self.recent.len() - wanted) {
            let id = match change {
                EntryChange::Changed { id, .. } | EntryChange::Removed(id) => id.as_str(),
                EntryChange::Unknown => return None,
            };
            match at.get(id) {
                Some(&i) => out[i] = change.clone(),
                None => {
                    at.insert(id, out.len());
                    out.push(change.clone());
                }
            }
        }
        Some(out)
    }
}

/// The connected agents' hint channels.
#[derive(Debug, Default)]
pub struct SyncHints {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    agents: HashMap<String, watch::Sender<AgentSignal>>,
    /// Set at server shutdown: every stream ends and no new one starts.
    closed: bool,
}

impl SyncHints {
    /// No agent connected.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of the agent's signals (its current value already seen), or `None` once
    /// the server is shutting down.
    pub fn subscribe(&self, agent_id: &str) -> Option<watch::Receiver<AgentSignal>> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        inner.agents.retain(|_, tx| tx.receiver_count() > 0);
        let tx = inner
            .agents
            .entry(agent_id.to_owned())
            .or_insert_with(|| watch::Sender::new(AgentSignal::default()));
        if tx.borrow().gone.is_some() {
            // Attested again (or unbanned and attested) under the same ID since: a fresh
            // channel, so the new stream does not inherit the old denial.
            *tx = watch::Sender::new(AgentSignal::default());
        }
        let mut rx = tx.subscribe();
        rx.mark_unchanged();
        Some(rx)
    }

    /// How many agents have a hint stream open.
    pub fn connected(&self) -> usize {
        self.lock()
            .agents
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    /// Tells these agents their entries may have changed in ways that cannot be named
    /// (they will sync everything); IDs without a stream (other agents, upstream agents,
    /// or IDs that are not agents) cost one lookup each.
    pub fn entries_changed<'a>(&self, agent_ids: impl IntoIterator<Item = &'a String>) {
        self.entry_changes(agent_ids.into_iter().map(|id| (id, EntryChange::Unknown)));
    }

    /// Tells each agent of one change to its authorized entries; agents without a stream
    /// cost one lookup each.
    pub fn entry_changes<'a>(&self, changes: impl IntoIterator<Item = (&'a String, EntryChange)>) {
        let inner = self.lock();
        if inner.agents.is_empty() {
            return;
        }
        for (id, change) in changes {
            if let Some(tx) = inner.agents.get(id) {
                tx.send_modify(|s| s.push(change));
            }
        }
    }

    /// Tells every connected agent its entries may have changed (after a full reload).
    pub fn all_entries_changed(&self) {
        for tx in self.lock().agents.values() {
            tx.send_modify(|s| s.push(EntryChange::Unknown));
        }
    }

    /// Tells every connected agent the bundles changed: every agent serves its trust
    /// domain's bundle.
    pub fn bundles_changed(&self) {
        for tx in self.lock().agents.values() {
            tx.send_modify(|s| s.bundles = s.bundles.wrapping_add(1));
        }
    }

    /// Ends the agent's streams with the denial its next call would get.
    pub fn agent_gone(&self, agent_id: &str, why: AgentGone) {
        if let Some(tx) = self.lock().agents.get(agent_id) {
            tx.send_modify(|s| s.gone = Some(why));
        }
    }

    /// Ends every stream (server shutdown, so graceful shutdown does not wait for them).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.agents.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_concerned_agents_are_signalled() {
        let hints = SyncHints::new();
        let a = hints.subscribe("spiffe://td/a").unwrap();
        let b = hints.subscribe("spiffe://td/b").unwrap();
        hints.entries_changed([&"spiffe://td/a".to_owned(), &"spiffe://td/x".to_owned()]);
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        assert_eq!(a.borrow().entries, 1);
        hints.bundles_changed();
        assert!(b.has_changed().unwrap());
        assert_eq!(hints.connected(), 2);
    }

    #[test]
    fn changes_are_named_until_they_cannot_be() {
        let hints = SyncHints::new();
        let a = hints.subscribe("spiffe://td/a").unwrap();
        let agent = "spiffe://td/a".to_owned();
        let changed = |id: &str, revision| EntryChange::Changed {
            id: id.to_owned(),
            revision,
        };
        hints.entry_changes([(&agent, changed("e1", 0)), (&agent, changed("e2", 0))]);
        hints.entry_changes([(&agent, changed("e1", 1))]);
        hints.entry_changes([(&agent, EntryChange::Removed("e2".to_owned()))]);
        let now = a.borrow().clone();
        assert_eq!(now.entries, 4);
        assert_eq!(
            now.changes_since(0),
            Some(vec![
                changed("e1", 1),
                EntryChange::Removed("e2".to_owned())
            ])
        );
        assert_eq!(
            now.changes_since(3),
            Some(vec![EntryChange::Removed("e2".to_owned())])
        );
        assert_eq!(now.changes_since(4), Some(vec![]));
        // A change that cannot be named spoils every range that includes it.
        hints.entries_changed([&agent]);
        let now = a.borrow().clone();
        assert_eq!(now.changes_since(0), None);
        assert_eq!(now.changes_since(5), Some(vec![]));
        // A stream further behind than the log cannot be told what it missed.
        for i in 0..RECENT_CHANGES {
            hints.entry_changes([(&agent, changed(&format!("x{i}"), 0))]);
        }
        let now = a.borrow().clone();
        assert_eq!(now.changes_since(4), None);
        assert_eq!(now.changes_since(5).map(|c| c.len()), Some(RECENT_CHANGES));
    }

    #[test]
    fn a_gone_agent_is_told_and_close_ends_every_stream() {
        let hints = SyncHints::new();
        let mut a = hints.subscribe("spiffe://td/a").unwrap();
        hints.agent_gone("spiffe://td/a", AgentGone::Banned);
        assert_eq!(a.borrow_and_update().gone, Some(AgentGone::Banned));
        // Attested again under the same ID: the new stream starts clean.
        let again = hints.subscribe("spiffe://td/a").unwrap();
        assert_eq!(again.borrow().gone, None);
        hints.close();
        assert!(again.has_changed().is_err(), "the sender is gone");
        assert!(hints.subscribe("spiffe://td/a").is_none());
    }

    #[test]
    fn dropped_streams_are_forgotten() {
        let hints = SyncHints::new();
        drop(hints.subscribe("spiffe://td/a"));
        let _b = hints.subscribe("spiffe://td/b");
        assert_eq!(hints.connected(), 1);
        assert_eq!(hints.lock().agents.len(), 1);
    }
}
