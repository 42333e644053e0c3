//! The authorized-entry index against an in-memory fake datastore: what an agent is allowed
//! to obtain, and how changes (events, skipped event IDs, reloads) become visible.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use spire_core::selector::Selector;
use spire_proto::spire::api::types;
use spire_server::authorized::{AuthorizedIndex, IndexOptions};
use spire_server::datastore::{
    AttestedNode, AttestedNodeMask, BundleMask, CaJournal, ChangeEvent, DataStore, DataStoreError,
    DeleteBundleMode, EntryMask, JoinToken, ListEntriesRequest, ListNodesRequest, Pagination,
    RegistrationEntry, Result,
};
use tokio_util::sync::CancellationToken;

const TD: &str = "spiffe://example.org";
const SERVER: &str = "spiffe://example.org/spire/server";
const AGENT: &str = "spiffe://example.org/spire/agent/x509pop/node1";
const OTHER_AGENT: &str = "spiffe://example.org/spire/agent/x509pop/node2";

// ---------------------------------------------------------------------------------------
// Fake datastore: entries, agents, node selectors and both event streams in memory.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct State {
    entries: BTreeMap<String, RegistrationEntry>,
    nodes: BTreeMap<String, AttestedNode>,
    node_selectors: HashMap<String, Vec<Selector>>,
    entry_events: Vec<ChangeEvent>,
    node_events: Vec<ChangeEvent>,
    next_entry_event: u64,
    next_node_event: u64,
    next_entry_id: u64,
}

impl State {
    fn entry_event(&mut self, id: &str) {
        self.next_entry_event += 1;
        let event_id = self.next_entry_event;
        self.entry_events.push(ChangeEvent {
            event_id,
            id: id.to_owned(),
        });
    }

    fn node_event(&mut self, id: &str) {
        self.next_node_event += 1;
        let event_id = self.next_node_event;
        self.node_events.push(ChangeEvent {
            event_id,
            id: id.to_owned(),
        });
    }

    fn node_with_selectors(&self, node: &AttestedNode) -> AttestedNode {
        let mut node = node.clone();
        node.selectors = self
            .node_selectors
            .get(&node.spiffe_id)
            .cloned()
            .unwrap_or_default();
        node
    }
}

#[derive(Default)]
struct FakeStore {
    state: Mutex<State>,
    /// When set, fetching entries fails as a broken database connection would.
    fail_fetches: AtomicBool,
    /// How many times the entry events were listed.
    entry_event_listings: std::sync::atomic::AtomicUsize,
}

impl FakeStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Allocates an entry event ID as a transaction would, without committing it.
    fn reserve_entry_event(&self) -> u64 {
        let mut state = self.state();
        state.next_entry_event += 1;
        state.next_entry_event
    }

    /// Commits a transaction that had reserved `event_id`: the entry and its event appear.
    fn commit_reserved_entry(&self, event_id: u64, entry: RegistrationEntry) {
        let mut state = self.state();
        let id = entry.entry_id.clone();
        state.entries.insert(id.clone(), entry);
        state.entry_events.push(ChangeEvent { event_id, id });
        state.entry_events.sort_by_key(|event| event.event_id);
    }

    /// Changes an entry without writing an event (a lost event).
    fn put_entry_without_event(&self, entry: RegistrationEntry) {
        self.state().entries.insert(entry.entry_id.clone(), entry);
    }
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(DataStoreError::Internal(format!(
        "the fake datastore does not implement {what}"
    )))
}

#[async_trait]
impl DataStore for FakeStore {
    async fn create_bundle(&self, _bundle: types::Bundle) -> Result<types::Bundle> {
        unsupported("create_bundle")
    }
    async fn update_bundle(
        &self,
        _bundle: types::Bundle,
        _mask: BundleMask,
    ) -> Result<types::Bundle> {
        unsupported("update_bundle")
    }
    async fn set_refreshed_bundle(
        &self,
        _bundle: types::Bundle,
    ) -> Result<spire_server::datastore::RefreshedBundleWrite> {
        unsupported("set_refreshed_bundle")
    }
    async fn set_bundle(&self, _bundle: types::Bundle) -> Result<types::Bundle> {
        unsupported("set_bundle")
    }
    async fn append_bundle(&self, _bundle: types::Bundle) -> Result<types::Bundle> {
        unsupported("append_bundle")
    }
    async fn delete_bundle(&self, _trust_domain: &str, _mode: DeleteBundleMode) -> Result<()> {
        unsupported("delete_bundle")
    }
    async fn fetch_bundle(&self, _trust_domain: &str) -> Result<Option<types::Bundle>> {
        unsupported("fetch_bundle")
    }
    async fn list_bundles(
        &self,
        _pagination: Option<Pagination>,
    ) -> Result<(Vec<types::Bundle>, String)> {
        unsupported("list_bundles")
    }
    async fn count_bundles(&self) -> Result<u64> {
        unsupported("count_bundles")
    }
    async fn prune_bundle(&self, _trust_domain: &str, _expires_before: i64) -> Result<bool> {
        unsupported("prune_bundle")
    }
    async fn taint_x509_ca(&self, _trust_domain: &str, _subject_key_id: &str) -> Result<()> {
        unsupported("taint_x509_ca")
    }
    async fn revoke_x509_ca(&self, _trust_domain: &str, _subject_key_id: &str) -> Result<()> {
        unsupported("revoke_x509_ca")
    }
    async fn taint_jwt_key(&self, _trust_domain: &str, _key_id: &str) -> Result<Vec<u8>> {
        unsupported("taint_jwt_key")
    }
    async fn revoke_jwt_key(&self, _trust_domain: &str, _key_id: &str) -> Result<Vec<u8>> {
        unsupported("revoke_jwt_key")
    }

    async fn create_registration_entry(
        &self,
        mut entry: RegistrationEntry,
    ) -> Result<RegistrationEntry> {
        let mut state = self.state();
        if entry.entry_id.is_empty() {
            state.next_entry_id += 1;
            entry.entry_id = format!("entry-{}", state.next_entry_id);
        }
        if state.entries.contains_key(&entry.entry_id) {
            return Err(DataStoreError::AlreadyExists(entry.entry_id));
        }
        state.entries.insert(entry.entry_id.clone(), entry.clone());
        state.entry_event(&entry.entry_id);
        Ok(entry)
    }
    async fn create_or_return_registration_entry(
        &self,
        _entry: RegistrationEntry,
    ) -> Result<(RegistrationEntry, bool)> {
        unsupported("create_or_return_registration_entry")
    }
    async fn fetch_registration_entry(&self, entry_id: &str) -> Result<Option<RegistrationEntry>> {
        Ok(self.state().entries.get(entry_id).cloned())
    }
    async fn fetch_registration_entries(
        &self,
        entry_ids: &[String],
    ) -> Result<Vec<RegistrationEntry>> {
        if self.fail_fetches.load(Ordering::SeqCst) {
            return Err(DataStoreError::Internal("connection refused".to_owned()));
        }
        let state = self.state();
        Ok(entry_ids
            .iter()
            .filter_map(|id| state.entries.get(id).cloned())
            .collect())
    }
    async fn list_registration_entries(
        &self,
        _request: &ListEntriesRequest,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        Ok((
            self.state().entries.values().cloned().collect(),
            String::new(),
        ))
    }
    async fn count_registration_entries(&self, _request: &ListEntriesRequest) -> Result<u64> {
        unsupported("count_registration_entries")
    }
    async fn update_registration_entry(
        &self,
        entry: RegistrationEntry,
        _mask: EntryMask,
    ) -> Result<RegistrationEntry> {
        let mut state = self.state();
        if !state.entries.contains_key(&entry.entry_id) {
            return Err(DataStoreError::NotFound(entry.entry_id));
        }
        state.entries.insert(entry.entry_id.clone(), entry.clone());
        state.entry_event(&entry.entry_id);
        Ok(entry)
    }
    async fn delete_registration_entry(&self, entry_id: &str) -> Result<RegistrationEntry> {
        let mut state = self.state();
        let entry = state
            .entries
            .remove(entry_id)
            .ok_or_else(|| DataStoreError::NotFound(entry_id.to_owned()))?;
        state.entry_event(entry_id);
        Ok(entry)
    }
    async fn prune_registration_entries(&self, _expires_before: i64) -> Result<()> {
        unsupported("prune_registration_entries")
    }
    async fn list_registration_entry_events(&self, after: u64) -> Result<Vec<ChangeEvent>> {
        self.entry_event_listings.fetch_add(1, Ordering::SeqCst);
        // A database round trip: lets other callers queue up behind this refresh.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(self
            .state()
            .entry_events
            .iter()
            .filter(|event| event.event_id > after)
            .cloned()
            .collect())
    }
    async fn prune_registration_entry_events(&self, _older_than: i64) -> Result<()> {
        unsupported("prune_registration_entry_events")
    }

    async fn create_attested_node(&self, node: AttestedNode) -> Result<AttestedNode> {
        let mut state = self.state();
        if state.nodes.contains_key(&node.spiffe_id) {
            return Err(DataStoreError::AlreadyExists(node.spiffe_id));
        }
        state.nodes.insert(node.spiffe_id.clone(), node.clone());
        state.node_event(&node.spiffe_id);
        Ok(node)
    }
    async fn fetch_attested_node(&self, spiffe_id: &str) -> Result<Option<AttestedNode>> {
        let state = self.state();
        Ok(state
            .nodes
            .get(spiffe_id)
            .map(|node| state.node_with_selectors(node)))
    }
    async fn list_attested_nodes(
        &self,
        request: &ListNodesRequest,
    ) -> Result<(Vec<AttestedNode>, String)> {
        let state = self.state();
        let nodes = state
            .nodes
            .values()
            .map(|node| {
                if request.fetch_selectors {
                    state.node_with_selectors(node)
                } else {
                    node.clone()
                }
            })
            .collect();
        Ok((nodes, String::new()))
    }
    async fn count_attested_nodes(&self, _request: &ListNodesRequest) -> Result<u64> {
        unsupported("count_attested_nodes")
    }
    async fn update_attested_node(
        &self,
        node: AttestedNode,
        _mask: AttestedNodeMask,
    ) -> Result<AttestedNode> {
        let mut state = self.state();
        if !state.nodes.contains_key(&node.spiffe_id) {
            return Err(DataStoreError::NotFound(node.spiffe_id));
        }
        state.nodes.insert(node.spiffe_id.clone(), node.clone());
        state.node_event(&node.spiffe_id);
        Ok(node)
    }
    async fn delete_attested_node(&self, spiffe_id: &str) -> Result<AttestedNode> {
        let mut state = self.state();
        let node = state
            .nodes
            .remove(spiffe_id)
            .ok_or_else(|| DataStoreError::NotFound(spiffe_id.to_owned()))?;
        state.node_selectors.remove(spiffe_id);
        state.node_event(spiffe_id);
        Ok(node)
    }
    async fn set_node_selectors(&self, spiffe_id: &str, selectors: &[Selector]) -> Result<()> {
        let mut state = self.state();
        state
            .node_selectors
            .insert(spiffe_id.to_owned(), selectors.to_vec());
        state.node_event(spiffe_id);
        Ok(())
    }
    async fn get_node_selectors(&self, spiffe_id: &str) -> Result<Vec<Selector>> {
        Ok(self
            .state()
            .node_selectors
            .get(spiffe_id)
            .cloned()
            .unwrap_or_default())
    }
    async fn list_attested_node_events(&self, after: u64) -> Result<Vec<ChangeEvent>> {
        Ok(self
            .state()
            .node_events
            .iter()
            .filter(|event| event.event_id > after)
            .cloned()
            .collect())
    }
    async fn prune_attested_node_events(&self, _older_than: i64) -> Result<()> {
        unsupported("prune_attested_node_events")
    }

    async fn create_join_token(&self, _token: JoinToken) -> Result<()> {
        unsupported("create_join_token")
    }
    async fn fetch_join_token(&self, _token: &str) -> Result<Option<JoinToken>> {
        unsupported("fetch_join_token")
    }
    async fn take_join_token(&self, _token: &str) -> Result<Option<JoinToken>> {
        unsupported("take_join_token")
    }
    async fn prune_join_tokens(&self, _expires_before: i64) -> Result<()> {
        unsupported("prune_join_tokens")
    }

    async fn set_ca_journal(&self, _journal: CaJournal) -> Result<CaJournal> {
        unsupported("set_ca_journal")
    }
    async fn fetch_ca_journal(&self, _id: u32) -> Result<Option<CaJournal>> {
        unsupported("fetch_ca_journal")
    }
    async fn find_ca_journal(&self, _active_x509_authority_id: &str) -> Result<Option<CaJournal>> {
        unsupported("find_ca_journal")
    }
    async fn list_ca_journals(&self) -> Result<Vec<CaJournal>> {
        unsupported("list_ca_journals")
    }

    async fn create_federation_relationship(
        &self,
        _relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        unsupported("create_federation_relationship")
    }
    async fn fetch_federation_relationship(
        &self,
        _trust_domain: &str,
    ) -> Result<Option<types::FederationRelationship>> {
        unsupported("fetch_federation_relationship")
    }
    async fn list_federation_relationships(
        &self,
        _pagination: Option<Pagination>,
    ) -> Result<(Vec<types::FederationRelationship>, String)> {
        unsupported("list_federation_relationships")
    }
    async fn update_federation_relationship(
        &self,
        _relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        unsupported("update_federation_relationship")
    }
    async fn delete_federation_relationship(&self, _trust_domain: &str) -> Result<()> {
        unsupported("delete_federation_relationship")
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn sel(kind: &str, value: &str) -> Selector {
    Selector {
        kind: kind.to_owned(),
        value: value.to_owned(),
    }
}

fn id(path: &str) -> String {
    format!("{TD}{path}")
}

fn entry(
    entry_id: &str,
    parent_id: &str,
    spiffe_id: &str,
    selectors: &[Selector],
) -> RegistrationEntry {
    RegistrationEntry {
        entry_id: entry_id.to_owned(),
        parent_id: parent_id.to_owned(),
        spiffe_id: spiffe_id.to_owned(),
        selectors: selectors.to_vec(),
        ..RegistrationEntry::default()
    }
}

fn workload(entry_id: &str, parent_id: &str, spiffe_id: &str) -> RegistrationEntry {
    entry(entry_id, parent_id, spiffe_id, &[sel("unix", "uid:1000")])
}

fn node(spiffe_id: &str) -> AttestedNode {
    AttestedNode {
        spiffe_id: spiffe_id.to_owned(),
        attestation_data_type: "x509pop".to_owned(),
        cert_serial_number: "1".to_owned(),
        cert_not_after: 4_000_000_000,
        ..AttestedNode::default()
    }
}

/// A store holding the two agents, AGENT with node selectors `selectors`.
async fn store_with_agents(selectors: &[Selector]) -> Arc<FakeStore> {
    let store = Arc::new(FakeStore::default());
    store.create_attested_node(node(AGENT)).await.unwrap();
    store.set_node_selectors(AGENT, selectors).await.unwrap();
    store.create_attested_node(node(OTHER_AGENT)).await.unwrap();
    store
}

async fn create(store: &FakeStore, entries: impl IntoIterator<Item = RegistrationEntry>) {
    for e in entries {
        store.create_registration_entry(e).await.unwrap();
    }
}

async fn load(store: &Arc<FakeStore>) -> Arc<AuthorizedIndex> {
    AuthorizedIndex::load(Arc::clone(store) as Arc<dyn DataStore>)
        .await
        .unwrap()
}

/// Sorted entry IDs the agent gets; fails on duplicates, and when the snapshot a sync would
/// send (kept from this helper's previous call while nothing concerning the agent changed)
/// differs from the index, revisions included.
fn authorized(index: &AuthorizedIndex, agent_id: &str) -> Vec<String> {
    let found = index.authorized_entries(agent_id);
    let mut walked: Vec<(String, i64)> = found
        .iter()
        .map(|e| (e.entry_id.clone(), e.revision_number))
        .collect();
    walked.sort();
    let snapshot = index.sync_snapshot(agent_id);
    let kept: Vec<(String, i64)> = snapshot
        .revisions(0..snapshot.len())
        .map(|r| (r.id.to_owned(), r.revision_number))
        .collect();
    assert_eq!(kept, walked, "the sync snapshot differs from the index");
    let mut ids: Vec<String> = walked.into_iter().map(|(id, _)| id).collect();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "an entry was returned twice: {ids:?}");
    ids
}

// ---------------------------------------------------------------------------------------
// What an agent gets
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn agent_gets_entries_parented_by_it_and_no_one_elses() {
    let store = store_with_agents(&[]).await;
    create(
        &store,
        [
            workload("mine-1", AGENT, &id("/web")),
            workload("mine-2", AGENT, &id("/db")),
            workload("theirs", OTHER_AGENT, &id("/cache")),
        ],
    )
    .await;
    let index = load(&store).await;

    assert_eq!(authorized(&index, AGENT), ["mine-1", "mine-2"]);
    assert_eq!(authorized(&index, OTHER_AGENT), ["theirs"]);
    assert!(authorized(&index, &id("/spire/agent/x509pop/unknown")).is_empty());
    assert_eq!(index.entry("mine-1").unwrap().spiffe_id, id("/web"));
    assert_eq!(
        index.agent(AGENT).unwrap().selectors,
        Vec::<Selector>::new()
    );
    assert!(index.agent(&id("/spire/agent/x509pop/unknown")).is_none());
}

#[tokio::test]
async fn node_alias_applies_only_when_its_selectors_are_a_subset_of_the_agents() {
    let store =
        store_with_agents(&[sel("x509pop", "ca:abc"), sel("x509pop", "subject:cn:node1")]).await;
    create(
        &store,
        [
            // Subset of AGENT's selectors: applies.
            entry(
                "alias-ca",
                SERVER,
                &id("/cluster/ca"),
                &[sel("x509pop", "ca:abc")],
            ),
            workload("via-ca", &id("/cluster/ca"), &id("/ca-workload")),
            // Equal set: applies.
            entry(
                "alias-both",
                SERVER,
                &id("/cluster/both"),
                &[sel("x509pop", "subject:cn:node1"), sel("x509pop", "ca:abc")],
            ),
            workload("via-both", &id("/cluster/both"), &id("/both-workload")),
            // Needs a selector AGENT lacks: does not apply.
            entry(
                "alias-more",
                SERVER,
                &id("/cluster/more"),
                &[sel("x509pop", "ca:abc"), sel("x509pop", "ca:other")],
            ),
            workload("via-more", &id("/cluster/more"), &id("/more-workload")),
        ],
    )
    .await;
    let index = load(&store).await;

    // The alias entries themselves are not handed out (as upstream), only what hangs below.
    assert_eq!(authorized(&index, AGENT), ["via-both", "via-ca"]);
    // OTHER_AGENT has no node selectors, so no alias applies to it.
    assert!(authorized(&index, OTHER_AGENT).is_empty());
    // The alias entry itself is still known by ID.
    assert_eq!(index.entry("alias-ca").unwrap().parent_id, SERVER);
}

#[tokio::test]
async fn descendants_are_included_recursively() {
    let store = store_with_agents(&[sel("k8s_psat", "cluster:prod")]).await;
    create(
        &store,
        [
            workload("a", AGENT, &id("/a")),
            workload("b", &id("/a"), &id("/b")),
            workload("c", &id("/b"), &id("/c")),
            entry(
                "alias",
                SERVER,
                &id("/prod"),
                &[sel("k8s_psat", "cluster:prod")],
            ),
            workload("d", &id("/prod"), &id("/d")),
            workload("e", &id("/d"), &id("/e")),
            // Two entries with the same SPIFFE ID: children of that ID are listed once.
            workload("e-twin", &id("/d"), &id("/e")),
            workload("f", &id("/e"), &id("/f")),
            workload("unrelated", &id("/nowhere"), &id("/g")),
        ],
    )
    .await;
    let index = load(&store).await;

    assert_eq!(
        authorized(&index, AGENT),
        ["a", "b", "c", "d", "e", "e-twin", "f"]
    );
}

#[tokio::test]
async fn cycles_end_and_return_each_entry_once() {
    let store = store_with_agents(&[sel("k", "v")]).await;
    create(
        &store,
        [
            workload("x", AGENT, &id("/x")),
            workload("y", &id("/x"), &id("/y")),
            workload("back-to-x", &id("/y"), &id("/x")),
            workload("back-to-agent", &id("/y"), AGENT),
            workload("self", &id("/z"), &id("/z")),
            entry("alias", SERVER, &id("/z"), &[sel("k", "v")]),
        ],
    )
    .await;
    let index = load(&store).await;

    assert_eq!(
        authorized(&index, AGENT),
        ["back-to-agent", "back-to-x", "self", "x", "y"]
    );
}

// ---------------------------------------------------------------------------------------
// Staying fresh
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn entry_create_update_delete_are_visible_after_refresh() {
    let store = store_with_agents(&[]).await;
    create(&store, [workload("a", AGENT, &id("/a"))]).await;
    let index = load(&store).await;
    assert_eq!(authorized(&index, AGENT), ["a"]);

    create(&store, [workload("b", AGENT, &id("/b"))]).await;
    let mut moved = workload("a", OTHER_AGENT, &id("/a"));
    moved.revision_number = 1;
    store
        .update_registration_entry(moved, EntryMask::ALL)
        .await
        .unwrap();
    // Not polled yet: readers still see the previous state.
    assert_eq!(authorized(&index, AGENT), ["a"]);

    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["b"]);
    assert_eq!(authorized(&index, OTHER_AGENT), ["a"]);
    assert_eq!(index.entry("a").unwrap().revision_number, 1);

    store.delete_registration_entry("b").await.unwrap();
    index.refresh().await.unwrap();
    assert!(authorized(&index, AGENT).is_empty());
    assert!(index.entry("b").is_none());
}

#[tokio::test]
async fn many_changes_in_one_refresh_all_land() {
    let store = store_with_agents(&[]).await;
    let index = load(&store).await;
    create(
        &store,
        (0..1_234).map(|n| workload(&format!("bulk-{n:05}"), AGENT, &id(&format!("/w/{n}")))),
    )
    .await;
    index.refresh().await.unwrap();
    assert_eq!(index.authorized_entries(AGENT).len(), 1_234);
    assert_eq!(index.entry_count(), 1_234);
}

/// Concurrent writers that each refresh before answering (BatchCreateEntry) all see their
/// own entry afterwards, and share refreshes instead of each listing the events in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_each_see_their_write_and_share_the_listing() {
    let store = store_with_agents(&[]).await;
    let index = load(&store).await;
    let before = store.entry_event_listings.load(Ordering::SeqCst);
    let mut writers = tokio::task::JoinSet::new();
    for n in 0..32 {
        let (store, index) = (Arc::clone(&store), Arc::clone(&index));
        writers.spawn(async move {
            let entry_id = format!("concurrent-{n:02}");
            create(
                &store,
                [workload(&entry_id, AGENT, &id(&format!("/c/{n}")))],
            )
            .await;
            index.refresh().await.unwrap();
            assert!(
                index.entry(&entry_id).is_some(),
                "{entry_id} not visible after its refresh"
            );
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    assert_eq!(index.authorized_entries(AGENT).len(), 32);
    let listings = store.entry_event_listings.load(Ordering::SeqCst) - before;
    assert!(
        listings < 32,
        "{listings} event listings for 32 refreshes: none was shared"
    );
}

#[tokio::test]
async fn agent_selector_changes_move_it_in_and_out_of_aliases() {
    let store = store_with_agents(&[sel("k", "blue")]).await;
    create(
        &store,
        [
            entry("alias-blue", SERVER, &id("/blue"), &[sel("k", "blue")]),
            workload("blue-w", &id("/blue"), &id("/bw")),
            entry("alias-green", SERVER, &id("/green"), &[sel("k", "green")]),
            workload("green-w", &id("/green"), &id("/gw")),
        ],
    )
    .await;
    let index = load(&store).await;
    assert_eq!(authorized(&index, AGENT), ["blue-w"]);

    store
        .set_node_selectors(AGENT, &[sel("k", "green")])
        .await
        .unwrap();
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["green-w"]);
    assert_eq!(index.agent(AGENT).unwrap().selectors, [sel("k", "green")]);

    // A newly attested agent with matching selectors gets the alias's entries.
    let newcomer = id("/spire/agent/x509pop/node3");
    store.create_attested_node(node(&newcomer)).await.unwrap();
    store
        .set_node_selectors(&newcomer, &[sel("k", "blue")])
        .await
        .unwrap();
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, &newcomer), ["blue-w"]);
}

#[tokio::test]
async fn deleted_agent_is_gone_and_gets_no_alias_entries() {
    let store = store_with_agents(&[sel("k", "v")]).await;
    create(
        &store,
        [
            entry("alias", SERVER, &id("/group"), &[sel("k", "v")]),
            workload("w", &id("/group"), &id("/w")),
        ],
    )
    .await;
    let index = load(&store).await;
    assert_eq!(authorized(&index, AGENT), ["w"]);
    assert!(index.agent(AGENT).is_some());

    store.delete_attested_node(AGENT).await.unwrap();
    index.refresh().await.unwrap();
    assert!(index.agent(AGENT).is_none());
    assert!(authorized(&index, AGENT).is_empty());
}

#[tokio::test]
async fn banning_an_agent_is_visible_after_refresh() {
    let store = store_with_agents(&[]).await;
    let index = load(&store).await;
    assert!(!index.agent(AGENT).unwrap().is_banned());

    let mut banned = node(AGENT);
    banned.cert_serial_number.clear();
    store
        .update_attested_node(banned, AttestedNodeMask::ALL)
        .await
        .unwrap();
    index.refresh().await.unwrap();
    assert!(index.agent(AGENT).unwrap().is_banned());
}

#[tokio::test]
async fn skipped_event_ids_are_picked_up_when_their_transaction_commits() {
    let store = store_with_agents(&[]).await;
    create(&store, [workload("first", AGENT, &id("/first"))]).await;
    let index = load(&store).await;

    // A slow transaction allocates the next event ID; a faster one commits after it.
    let slow = store.reserve_entry_event();
    create(&store, [workload("fast", AGENT, &id("/fast"))]).await;
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["fast", "first"]);

    // The slow one commits later with its lower event ID; a plain "after last ID" poll would
    // never see it.
    store.commit_reserved_entry(slow, workload("slow", AGENT, &id("/slow")));
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["fast", "first", "slow"]);

    // Once seen it is not re-applied: a later change to it arrives through its own event.
    store.delete_registration_entry("slow").await.unwrap();
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["fast", "first"]);
}

#[tokio::test]
async fn skipped_event_id_present_at_load_is_picked_up_later() {
    let store = store_with_agents(&[]).await;
    create(&store, [workload("first", AGENT, &id("/first"))]).await;
    let slow = store.reserve_entry_event();
    create(&store, [workload("fast", AGENT, &id("/fast"))]).await;
    let index = load(&store).await;
    assert_eq!(authorized(&index, AGENT), ["fast", "first"]);

    store.commit_reserved_entry(slow, workload("slow", AGENT, &id("/slow")));
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["fast", "first", "slow"]);
}

#[tokio::test]
async fn full_reload_heals_a_change_whose_event_was_lost() {
    let store = store_with_agents(&[]).await;
    create(&store, [workload("a", AGENT, &id("/a"))]).await;
    let index = load(&store).await;

    store.put_entry_without_event(workload("ghost", AGENT, &id("/ghost")));
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["a"]);

    index.reload().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["a", "ghost"]);

    // Events keep working after a reload.
    create(&store, [workload("b", AGENT, &id("/b"))]).await;
    index.refresh().await.unwrap();
    assert_eq!(authorized(&index, AGENT), ["a", "b", "ghost"]);
}

#[tokio::test]
async fn run_polls_until_cancelled_and_reloads_periodically() {
    let store = store_with_agents(&[]).await;
    let index = AuthorizedIndex::load_with(
        Arc::clone(&store) as Arc<dyn DataStore>,
        IndexOptions {
            full_reload_interval: Duration::from_millis(200),
            missed_event_timeout: Duration::from_secs(60),
            ..IndexOptions::default()
        },
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&index).run(Duration::from_millis(20), cancel.clone()));

    create(&store, [workload("polled", AGENT, &id("/polled"))]).await;
    store.put_entry_without_event(workload("healed", AGENT, &id("/healed")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while authorized(&index, AGENT) != ["healed", "polled"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "run() never applied the changes: {:?}",
            authorized(&index, AGENT)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run() stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn failed_refresh_keeps_the_last_good_state_and_retries_the_same_events() {
    let store = store_with_agents(&[]).await;
    create(&store, [workload("a", AGENT, &id("/a"))]).await;
    let index = load(&store).await;

    store.delete_registration_entry("a").await.unwrap();
    store.fail_fetches.store(true, Ordering::SeqCst);
    assert!(index.refresh().await.is_err());
    assert_eq!(authorized(&index, AGENT), ["a"]);

    store.fail_fetches.store(false, Ordering::SeqCst);
    index.refresh().await.unwrap();
    assert!(authorized(&index, AGENT).is_empty());
}

/// The index options a `server.conf` with these `experimental` lines selects.
fn options_from_config(experimental: &str) -> IndexOptions {
    let text = format!(
        r#"
server {{
    trust_domain = "example.org"
    data_dir = "./.data"
    experimental {{
{experimental}
    }}
}}
plugins {{
    DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "x" }} }}
    KeyManager "memory" {{ plugin_data {{}} }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#
    );
    let config = spire_server::config::load_str("server.conf", &text, false).unwrap();
    config.resolve().unwrap().index_options()
}

/// Runs an index with `options`, polling every 20 ms, until an entry created with an event
/// shows; returns what the agent sees then, with an entry written without an event (a
/// change whose event was lost) in the datastore since before.
async fn seen_after_one_event(options: IndexOptions) -> Vec<String> {
    let store = store_with_agents(&[]).await;
    let index = AuthorizedIndex::load_with(Arc::clone(&store) as Arc<dyn DataStore>, options)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&index).run(Duration::from_millis(20), cancel.clone()));
    store.put_entry_without_event(workload("lost", AGENT, &id("/lost")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    create(&store, [workload("evented", AGENT, &id("/evented"))]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !authorized(&index, AGENT).contains(&"evented".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the evented entry never showed: {:?}",
            authorized(&index, AGENT)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A few more polls: a full reload would have picked the lost entry up by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = authorized(&index, AGENT);
    cancel.cancel();
    task.await.unwrap();
    seen
}

#[tokio::test]
async fn events_based_cache_false_rebuilds_from_the_datastore_every_cache_reload_interval() {
    // Upstream's default, written out: the whole cache is rebuilt every cache_reload_interval,
    // so even a change without an event shows within one interval.
    let options =
        options_from_config("events_based_cache = false\n cache_reload_interval = \"20ms\"");
    assert_eq!(options.full_reload_interval, Duration::from_millis(20));
    assert_eq!(options.missed_event_timeout, Duration::from_secs(15 * 60));
    assert_eq!(seen_after_one_event(options).await, ["evented", "lost"]);
}

#[tokio::test]
async fn events_based_cache_true_follows_events_and_rebuilds_every_full_cache_reload_interval() {
    let options = options_from_config(
        "events_based_cache = true\n cache_reload_interval = \"20ms\"\n event_timeout = \"2m\"",
    );
    assert_eq!(options.full_reload_interval, Duration::from_secs(24 * 3600));
    assert_eq!(options.missed_event_timeout, Duration::from_secs(120));
    assert_eq!(seen_after_one_event(options).await, ["evented"]);

    let options =
        options_from_config("events_based_cache = true\n full_cache_reload_interval = \"20ms\"");
    assert_eq!(options.full_reload_interval, Duration::from_millis(20));
}

#[tokio::test]
async fn events_based_cache_unset_follows_events() {
    // Our default differs from upstream's: without the key the cache follows the change
    // events, so a large registry is not read back from the datastore every 5 seconds.
    let options = options_from_config("cache_reload_interval = \"20ms\"");
    assert_eq!(options.full_reload_interval, Duration::from_secs(24 * 3600));
    assert_eq!(seen_after_one_event(options).await, ["evented"]);
}
