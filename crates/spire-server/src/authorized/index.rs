//! The pure in-memory index (no I/O): entries by ID, by parent ID and, for node-alias
//! entries, by selector; agents by SPIFFE ID. [`super::AuthorizedIndex`] wraps it in a lock
//! and keeps it fresh from the datastore.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use spire_core::selector::Selector;

use super::snapshot::{SnapshotCache, SyncSnapshot};
use crate::datastore::{AttestedNode, RegistrationEntry};

/// A set on the hot path of an agent's sync (one insert per parenting entry).
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// The path of the server's own SPIFFE ID; entries parented by it are node aliases.
const SERVER_ID_PATH: &str = "/spire/server";

/// An entry keyed by its entry ID, so the maps below share the entry's own ID string rather
/// than holding copies (at 100k entries, copies cost ~10 MiB).
#[derive(Debug, Clone)]
struct ById(Arc<RegistrationEntry>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.entry_id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.entry_id == other.0.entry_id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so lookups by `&str` find it (the `Borrow` contract).
        self.0.entry_id.as_str().hash(state);
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.entry_id.cmp(&other.0.entry_id)
    }
}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A node-alias entry with its selectors deduplicated, ready for subset checks.
#[derive(Debug)]
struct Alias {
    entry: Arc<RegistrationEntry>,
    selectors: Vec<Selector>,
}

/// The agents an entry change concerns (see [`EntryIndex::replace_entry`]).
#[derive(Debug, Default)]
pub struct ChangeScope {
    /// Agents whose authorized entries included the entry before the change.
    pub before: HashSet<String>,
    /// Agents whose authorized entries include it after.
    pub after: HashSet<String>,
    /// Whether either version can change which *other* entries an agent is authorized for
    /// (a node alias, an entry that parents others): a sync hint cannot itemize that.
    pub unnamed: bool,
}

/// Every entry and agent, indexed so one agent's authorized entries are found without
/// scanning: children by parent ID, node aliases by each of their selectors.
///
/// It is public so benchmarks and tools can build one directly from records; the server
/// uses it through [`super::AuthorizedIndex`], which keeps it fresh.
#[derive(Debug, Default)]
pub struct EntryIndex {
    /// Every entry (node aliases included) by entry ID.
    entries: HashSet<ById>,
    /// Non-alias entries by parent ID, sorted by entry ID (so answers are stable). Looked up
    /// once per entry of every sync, so with a fast (still randomly seeded) hasher.
    children: HashMap<String, BTreeSet<ById>, foldhash::fast::RandomState>,
    /// Node-alias entries by entry ID.
    aliases: HashMap<String, Alias>,
    /// Entry IDs of node-alias entries that carry a selector.
    aliases_by_selector: HashMap<Selector, HashSet<String>>,
    /// Agents by SPIFFE ID, with their node selectors.
    agents: HashMap<String, Arc<AttestedNode>>,
    /// Agent IDs by each of their node selectors, to find the agents a node-alias entry
    /// applies to without scanning every agent.
    agents_by_selector: HashMap<Selector, HashSet<String>>,
    /// Every entry by a hash of its SPIFFE ID (a hash keeps this small; lookups compare the
    /// IDs), to walk from an entry up to the agents it is authorized to.
    by_spiffe_id: HashMap<u64, Vec<Arc<RegistrationEntry>>>,
    /// Hashes SPIFFE IDs for `by_spiffe_id`.
    hasher: RandomState,
    /// How many (node alias, selector) pairs `aliases_by_selector` holds.
    alias_selector_pairs: usize,
    /// The agents' last sync answers; every change drops those of the agents it concerns.
    snapshots: SnapshotCache,
}

impl EntryIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index from a full listing of entries and agents (agents with selectors).
    pub fn from_records(
        entries: impl IntoIterator<Item = RegistrationEntry>,
        agents: impl IntoIterator<Item = AttestedNode>,
    ) -> Self {
        let mut index = Self::new();
        for entry in entries {
            index.upsert_entry(Arc::new(entry));
        }
        for agent in agents {
            index.upsert_agent(Arc::new(agent));
        }
        index
    }

    /// Number of entries (node aliases included).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Number of agents.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Number of entries that are not node aliases (upstream's entries-by-parent-ID cache).
    pub fn child_entry_count(&self) -> usize {
        self.entries.len() - self.aliases.len()
    }

    /// Number of node-alias entries (upstream's node-aliases-by-entry-ID cache).
    pub fn node_alias_count(&self) -> usize {
        self.aliases.len()
    }

    /// Number of (node alias, distinct selector) pairs (upstream's node-aliases-by-selector
    /// cache).
    pub fn node_alias_selector_count(&self) -> usize {
        self.alias_selector_pairs
    }

    /// The entry with this ID.
    pub fn entry(&self, entry_id: &str) -> Option<Arc<RegistrationEntry>> {
        self.entries.get(entry_id).map(|e| Arc::clone(&e.0))
    }

    /// The entry with this ID when the agent is authorized for it (see
    /// [`Self::authorized_entries`]): costs the entry's ancestors, not the agent's entries.
    pub fn authorized_entry(
        &self,
        agent_id: &str,
        entry_id: &str,
    ) -> Option<Arc<RegistrationEntry>> {
        let entry = self.entry(entry_id)?;
        if is_node_alias(&entry.parent_id) {
            return None;
        }
        let mut concerned = HashSet::new();
        self.agents_concerned_by(&entry, &mut concerned);
        concerned.contains(agent_id).then_some(entry)
    }

    /// Whether a change to this entry can change which *other* entries an agent is
    /// authorized for: a node alias, or an entry whose SPIFFE ID parents other entries.
    /// Such changes cannot be itemized in a sync hint.
    pub fn changes_other_entries(&self, entry: &RegistrationEntry) -> bool {
        is_node_alias(&entry.parent_id) || self.children.contains_key(entry.spiffe_id.as_str())
    }

    /// The agent with this SPIFFE ID.
    pub fn agent(&self, agent_id: &str) -> Option<Arc<AttestedNode>> {
        self.agents.get(agent_id).cloned()
    }

    /// Adds an entry or replaces the one with the same entry ID (its parent may have changed).
    /// See [`Self::replace_entry`] for a change whose concerned agents are wanted too.
    pub fn upsert_entry(&mut self, entry: Arc<RegistrationEntry>) {
        self.remove_entry(&entry.entry_id);
        self.insert_entry(Arc::clone(&entry));
        self.forget_snapshots_concerned_by(&entry);
    }

    fn insert_entry(&mut self, entry: Arc<RegistrationEntry>) {
        self.entries.insert(ById(Arc::clone(&entry)));
        self.by_spiffe_id
            .entry(self.hasher.hash_one(entry.spiffe_id.as_str()))
            .or_default()
            .push(Arc::clone(&entry));
        if is_node_alias(&entry.parent_id) {
            let mut selectors = entry.selectors.clone();
            selectors.sort();
            selectors.dedup();
            self.alias_selector_pairs += selectors.len();
            for selector in &selectors {
                self.aliases_by_selector
                    .entry(selector.clone())
                    .or_default()
                    .insert(entry.entry_id.clone());
            }
            self.aliases
                .insert(entry.entry_id.clone(), Alias { entry, selectors });
        } else {
            self.children
                .entry(entry.parent_id.clone())
                .or_default()
                .insert(ById(entry));
        }
    }

    /// Removes an entry; unknown IDs are ignored.
    pub fn remove_entry(&mut self, entry_id: &str) {
        if let Some(old) = self.entry(entry_id) {
            self.forget_snapshots_concerned_by(&old);
        }
        self.detach_entry(entry_id);
    }

    /// Replaces the entry with this ID by `entry` (`None` deletes it) and drops the snapshots
    /// of the agents concerned by either version. Returns those agents, for the sync hints
    /// of an event: each version is traced once, for both uses.
    pub fn replace_entry(
        &mut self,
        entry_id: &str,
        entry: Option<Arc<RegistrationEntry>>,
    ) -> ChangeScope {
        let mut scope = ChangeScope::default();
        if let Some(old) = self.entry(entry_id) {
            self.agents_concerned_by(&old, &mut scope.before);
            scope.unnamed |= self.changes_other_entries(&old);
            self.detach_entry(entry_id);
        }
        if let Some(entry) = entry {
            self.insert_entry(Arc::clone(&entry));
            self.agents_concerned_by(&entry, &mut scope.after);
            scope.unnamed |= self.changes_other_entries(&entry);
        }
        for agent_id in scope.before.union(&scope.after) {
            self.snapshots.invalidate(agent_id);
        }
        scope
    }

    /// Takes an entry out of every map, without touching snapshots.
    fn detach_entry(&mut self, entry_id: &str) {
        let Some(ById(old)) = self.entries.take(entry_id) else {
            return;
        };
        let key = self.hasher.hash_one(old.spiffe_id.as_str());
        if let Some(same_id) = self.by_spiffe_id.get_mut(&key) {
            same_id.retain(|e| e.entry_id != entry_id);
            if same_id.is_empty() {
                self.by_spiffe_id.remove(&key);
            }
        }
        if let Some(alias) = self.aliases.remove(entry_id) {
            self.alias_selector_pairs -= alias.selectors.len();
            for selector in &alias.selectors {
                if let Some(ids) = self.aliases_by_selector.get_mut(selector) {
                    ids.remove(entry_id);
                    if ids.is_empty() {
                        self.aliases_by_selector.remove(selector);
                    }
                }
            }
        } else if let Some(siblings) = self.children.get_mut(&old.parent_id) {
            siblings.remove(entry_id);
            if siblings.is_empty() {
                self.children.remove(&old.parent_id);
            }
        }
    }

    /// Adds an agent or replaces the one with the same SPIFFE ID (selectors included).
    pub fn upsert_agent(&mut self, agent: Arc<AttestedNode>) {
        self.remove_agent(&agent.spiffe_id);
        for selector in &agent.selectors {
            self.agents_by_selector
                .entry(selector.clone())
                .or_default()
                .insert(agent.spiffe_id.clone());
        }
        self.agents.insert(agent.spiffe_id.clone(), agent);
    }

    /// Removes an agent; unknown IDs are ignored.
    pub fn remove_agent(&mut self, agent_id: &str) {
        // Its node selectors decide which node aliases apply to it (also when it is
        // attested again: `upsert_agent` comes through here).
        self.snapshots.invalidate(agent_id);
        let Some(old) = self.agents.remove(agent_id) else {
            return;
        };
        for selector in &old.selectors {
            if let Some(ids) = self.agents_by_selector.get_mut(selector) {
                ids.remove(agent_id);
                if ids.is_empty() {
                    self.agents_by_selector.remove(selector);
                }
            }
        }
    }

    /// Adds to `out` the SPIFFE IDs of the agents whose authorized entries include `entry`
    /// or, for a node-alias entry, hang below it: its parent, its parent's parents up to
    /// the agents (through node aliases to the agents whose selectors they match). Costs
    /// the ancestors and the agents found, not the size of the index. IDs that turn out
    /// not to be agents (a parent that is an entry only) may be included; callers only
    /// look them up.
    pub fn agents_concerned_by(&self, entry: &RegistrationEntry, out: &mut HashSet<String>) {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut pending: Vec<&RegistrationEntry> = vec![entry];
        while let Some(entry) = pending.pop() {
            if is_node_alias(&entry.parent_id) {
                self.agents_matching_alias(entry, out);
                continue;
            }
            let parent = entry.parent_id.as_str();
            if !seen.insert(parent) {
                continue;
            }
            out.insert(parent.to_owned());
            if let Some(same_id) = self.by_spiffe_id.get(&self.hasher.hash_one(parent)) {
                pending.extend(
                    same_id
                        .iter()
                        .filter(|e| e.spiffe_id == parent)
                        .map(AsRef::as_ref),
                );
            }
        }
    }

    /// The agents a node-alias entry applies to: those of its trust domain whose node
    /// selectors include all of the alias's.
    fn agents_matching_alias(&self, alias: &RegistrationEntry, out: &mut HashSet<String>) {
        let mut smallest: Option<&HashSet<String>> = None;
        for selector in &alias.selectors {
            let Some(ids) = self.agents_by_selector.get(selector) else {
                return;
            };
            if smallest.is_none_or(|s| ids.len() < s.len()) {
                smallest = Some(ids);
            }
        }
        for agent_id in smallest.into_iter().flatten() {
            let Some(agent) = self.agents.get(agent_id) else {
                continue;
            };
            if server_id_for(agent_id).as_deref() == Some(alias.parent_id.as_str())
                && alias.selectors.iter().all(|s| agent.selectors.contains(s))
            {
                out.insert(agent_id.clone());
            }
        }
    }

    /// Entries the agent may obtain: those parented by the agent; the descendants of every
    /// node-alias entry (parented by `spiffe://<agent's td>/spire/server`) whose selectors are
    /// all among the agent's node selectors; and recursively every entry parented by the
    /// SPIFFE ID of an entry already included. Each entry appears once; cycles end.
    ///
    /// As upstream's cache does, the alias entries themselves are not returned, and an agent
    /// not (yet) in the index still gets the entries parented directly by it: callers
    /// authenticate the agent (see [`Self::agent`]) before asking.
    pub fn authorized_entries(&self, agent_id: &str) -> Vec<Arc<RegistrationEntry>> {
        let mut found = Vec::new();
        let mut seen: FastSet<&str> = FastSet::default();
        let mut pending: Vec<&str> = Vec::new();
        seen.insert(agent_id);
        pending.push(agent_id);
        if let Some(agent) = self.agents.get(agent_id) {
            for alias in self.aliases_of(agent_id, &agent.selectors) {
                let alias_id = alias.spiffe_id.as_str();
                if seen.insert(alias_id) {
                    pending.push(alias_id);
                }
            }
        }
        while let Some(parent_id) = pending.pop() {
            let Some(children) = self.children.get(parent_id) else {
                continue;
            };
            found.reserve(children.len());
            for ById(child) in children {
                found.push(Arc::clone(child));
                // Most entries parent nothing: one lookup each, and only parents are kept.
                let child_id = child.spiffe_id.as_str();
                if self.children.contains_key(child_id) && seen.insert(child_id) {
                    pending.push(child_id);
                }
            }
        }
        found
    }

    /// The agent's authorized entries (as [`Self::authorized_entries`]) for a sync: the
    /// snapshot kept from its last sync when nothing it is authorized for changed since,
    /// otherwise a fresh walk, kept for next time. Readers call this under the index's read
    /// lock and changes need the write lock, so a snapshot is never kept across a change.
    pub fn sync_snapshot(&self, agent_id: &str) -> Arc<SyncSnapshot> {
        if let Some(snapshot) = self.snapshots.get(agent_id) {
            return snapshot;
        }
        let snapshot = Arc::new(SyncSnapshot::new(self.authorized_entries(agent_id)));
        self.snapshots
            .insert(agent_id, Arc::clone(&snapshot), self.entries.len());
        snapshot
    }

    /// How many agents have a sync snapshot kept.
    pub fn sync_snapshot_count(&self) -> usize {
        self.snapshots.agents()
    }

    /// Drops the snapshots of the agents whose authorized entries include `entry` (it is
    /// about to change or just did). Costs nothing while no snapshot is kept, as during a
    /// full load.
    fn forget_snapshots_concerned_by(&mut self, entry: &RegistrationEntry) {
        if self.snapshots.is_empty() {
            return;
        }
        let mut concerned = HashSet::new();
        self.agents_concerned_by(entry, &mut concerned);
        for agent_id in &concerned {
            self.snapshots.invalidate(agent_id);
        }
    }

    /// The node-alias entries of the agent's trust domain whose selectors are a non-empty
    /// subset of `agent_selectors`.
    fn aliases_of(&self, agent_id: &str, agent_selectors: &[Selector]) -> Vec<&RegistrationEntry> {
        let Some(server_id) = server_id_for(agent_id) else {
            return Vec::new();
        };
        let have: HashSet<&Selector> = agent_selectors.iter().collect();
        let mut checked: HashSet<&str> = HashSet::new();
        let mut matched = Vec::new();
        for selector in &have {
            let Some(ids) = self.aliases_by_selector.get(*selector) else {
                continue;
            };
            for id in ids {
                if !checked.insert(id.as_str()) {
                    continue;
                }
                let Some(alias) = self.aliases.get(id) else {
                    continue;
                };
                if alias.entry.parent_id == server_id
                    && alias.selectors.iter().all(|s| have.contains(s))
                {
                    matched.push(alias.entry.as_ref());
                }
            }
        }
        matched
    }
}

/// Whether `parent_id` is some trust domain's server ID, `spiffe://<td>/spire/server`.
fn is_node_alias(parent_id: &str) -> bool {
    parent_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.find('/').map(|slash| &rest[slash..]))
        .is_some_and(|path| path == SERVER_ID_PATH)
}

/// The server ID of the agent's trust domain; `None` when the agent ID is not a SPIFFE ID.
fn server_id_for(agent_id: &str) -> Option<String> {
    let rest = agent_id.strip_prefix("spiffe://")?;
    let trust_domain = rest.split('/').next().filter(|td| !td.is_empty())?;
    Some(format!("spiffe://{trust_domain}{SERVER_ID_PATH}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "spiffe://example.org/spire/agent/join_token/abc";
    const SERVER: &str = "spiffe://example.org/spire/server";

    fn sel(kind: &str, value: &str) -> Selector {
        Selector {
            kind: kind.to_owned(),
            value: value.to_owned(),
        }
    }

    fn entry(id: &str, parent: &str, spiffe: &str, selectors: Vec<Selector>) -> RegistrationEntry {
        RegistrationEntry {
            entry_id: id.to_owned(),
            parent_id: parent.to_owned(),
            spiffe_id: spiffe.to_owned(),
            selectors,
            ..RegistrationEntry::default()
        }
    }

    fn agent(id: &str, selectors: Vec<Selector>) -> AttestedNode {
        AttestedNode {
            spiffe_id: id.to_owned(),
            cert_serial_number: "1".to_owned(),
            selectors,
            ..AttestedNode::default()
        }
    }

    fn ids(found: &[Arc<RegistrationEntry>]) -> Vec<String> {
        let mut ids: Vec<String> = found.iter().map(|e| e.entry_id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn recognizes_server_ids() {
        assert!(is_node_alias(SERVER));
        assert!(is_node_alias("spiffe://other.org/spire/server"));
        assert!(!is_node_alias("spiffe://example.org/spire/server/x"));
        assert!(!is_node_alias("spiffe://example.org"));
        assert!(!is_node_alias("example.org/spire/server"));
        assert_eq!(server_id_for(AGENT).as_deref(), Some(SERVER));
        assert_eq!(
            server_id_for("spiffe://td").as_deref(),
            Some("spiffe://td/spire/server")
        );
        assert_eq!(server_id_for("not-an-id"), None);
    }

    #[test]
    fn alias_in_another_trust_domain_does_not_apply() {
        let index = EntryIndex::from_records(
            [
                entry(
                    "alias",
                    "spiffe://other.org/spire/server",
                    "spiffe://other.org/a",
                    vec![sel("k", "v")],
                ),
                entry(
                    "w",
                    "spiffe://other.org/a",
                    "spiffe://other.org/w",
                    vec![sel("unix", "uid:0")],
                ),
            ],
            [agent(AGENT, vec![sel("k", "v")])],
        );
        assert!(index.authorized_entries(AGENT).is_empty());
    }

    #[test]
    fn replacing_an_entry_moves_it_between_parents_and_alias_sets() {
        let mut index = EntryIndex::from_records(
            [entry(
                "e",
                AGENT,
                "spiffe://example.org/w",
                vec![sel("k", "v")],
            )],
            [agent(AGENT, vec![sel("k", "v")])],
        );
        assert_eq!(ids(&index.authorized_entries(AGENT)), ["e"]);

        // Turned into an alias: no longer a child of the agent, and nothing hangs below it.
        index.upsert_entry(Arc::new(entry(
            "e",
            SERVER,
            "spiffe://example.org/w",
            vec![sel("k", "v")],
        )));
        assert!(index.authorized_entries(AGENT).is_empty());
        assert_eq!(index.entry_count(), 1);

        index.remove_entry("e");
        assert_eq!(index.entry_count(), 0);
        assert!(index.aliases_by_selector.is_empty());
        assert!(index.children.is_empty());
    }

    /// The sizes behind upstream's event-cache gauges follow every change.
    #[test]
    fn sizes_count_children_aliases_and_alias_selector_pairs() {
        let mut index = EntryIndex::from_records(
            [
                entry("w1", AGENT, "spiffe://example.org/w1", vec![sel("k", "v")]),
                entry("w2", AGENT, "spiffe://example.org/w2", vec![sel("k", "v")]),
                entry(
                    "alias",
                    SERVER,
                    "spiffe://example.org/a",
                    vec![sel("k", "v"), sel("k", "v"), sel("k", "w")],
                ),
            ],
            [agent(AGENT, vec![sel("k", "v")])],
        );
        let sizes = |i: &EntryIndex| {
            (
                i.child_entry_count(),
                i.node_alias_count(),
                i.node_alias_selector_count(),
            )
        };
        // Duplicate selectors of one alias count once, as in upstream's btree.
        assert_eq!(sizes(&index), (2, 1, 2));
        // A child turned into an alias with one selector.
        index.upsert_entry(Arc::new(entry(
            "w2",
            SERVER,
            "spiffe://example.org/w2",
            vec![sel("k", "x")],
        )));
        assert_eq!(sizes(&index), (1, 2, 3));
        index.remove_entry("alias");
        assert_eq!(sizes(&index), (1, 1, 1));
        index.remove_entry("w2");
        index.remove_entry("w1");
        assert_eq!(sizes(&index), (0, 0, 0));
    }

    #[test]
    fn duplicate_alias_selectors_still_match() {
        let index = EntryIndex::from_records(
            [
                entry(
                    "alias",
                    SERVER,
                    "spiffe://example.org/a",
                    vec![sel("k", "v"), sel("k", "v")],
                ),
                entry(
                    "w",
                    "spiffe://example.org/a",
                    "spiffe://example.org/w",
                    vec![sel("u", "1")],
                ),
            ],
            [agent(AGENT, vec![sel("k", "v")])],
        );
        assert_eq!(ids(&index.authorized_entries(AGENT)), ["w"]);
    }

    #[test]
    fn alias_without_selectors_matches_no_agent() {
        let index = EntryIndex::from_records(
            [
                entry("alias", SERVER, "spiffe://example.org/a", vec![]),
                entry(
                    "w",
                    "spiffe://example.org/a",
                    "spiffe://example.org/w",
                    vec![sel("u", "1")],
                ),
            ],
            [agent(AGENT, vec![sel("k", "v")])],
        );
        assert!(index.authorized_entries(AGENT).is_empty());
    }

    /// A change is traced to the agents it concerns: the parent agent, through nested
    /// parents, and through node aliases to the agents whose selectors they match.
    #[test]
    fn changes_are_traced_to_the_agents_they_concern() {
        const OTHER: &str = "spiffe://example.org/spire/agent/join_token/other";
        let index = EntryIndex::from_records(
            [
                entry(
                    "alias",
                    SERVER,
                    "spiffe://example.org/a",
                    vec![sel("k", "v")],
                ),
                entry(
                    "under-alias",
                    "spiffe://example.org/a",
                    "spiffe://example.org/w",
                    vec![sel("u", "1")],
                ),
                entry(
                    "direct",
                    AGENT,
                    "spiffe://example.org/d",
                    vec![sel("u", "2")],
                ),
                entry(
                    "nested",
                    "spiffe://example.org/d",
                    "spiffe://example.org/n",
                    vec![sel("u", "3")],
                ),
            ],
            [
                agent(AGENT, vec![sel("k", "v"), sel("x", "y")]),
                agent(OTHER, vec![sel("x", "y")]),
            ],
        );
        let concerned = |id: &str| {
            let mut out = HashSet::new();
            index.agents_concerned_by(&index.entry(id).unwrap(), &mut out);
            let mut out: Vec<String> = out
                .into_iter()
                .filter(|id| index.agent(id).is_some())
                .collect();
            out.sort();
            out
        };
        assert_eq!(concerned("direct"), [AGENT]);
        assert_eq!(concerned("nested"), [AGENT]);
        assert_eq!(concerned("under-alias"), [AGENT]);
        assert_eq!(concerned("alias"), [AGENT]);
        let mut out = HashSet::new();
        index.agents_concerned_by(
            &entry("new", OTHER, "spiffe://example.org/o", vec![sel("u", "4")]),
            &mut out,
        );
        assert!(out.contains(OTHER) && !out.contains(AGENT));
    }

    #[test]
    fn self_parented_entry_is_returned_once() {
        let index = EntryIndex::from_records(
            [entry("loop", AGENT, AGENT, vec![sel("u", "1")])],
            [agent(AGENT, vec![])],
        );
        assert_eq!(ids(&index.authorized_entries(AGENT)), ["loop"]);
    }
}
