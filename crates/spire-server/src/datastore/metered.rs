//! A datastore that counts every operation as upstream's datastore wrapper does
//! (`datastore_<object>_<op>` call counters with `…_elapsed_time`, status `OK` or
//! `Unknown`), around any [`DataStore`]. With no telemetry sink each call costs one check.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use spire_common::telemetry::server::datastore_call;
use spire_core::selector::Selector;
use spire_proto::spire::api::types;

use super::{
    AttestedNode, AttestedNodeMask, BundleMask, CaJournal, ChangeEvent, DataStore,
    DeleteBundleMode, EntryMask, JoinToken, ListEntriesRequest, ListNodesRequest, Pagination,
    RefreshedBundleWrite, RegistrationEntry, Result,
};

/// Times `$call` and records it under `datastore` + `$key`.
macro_rules! metered {
    ([$($k:literal),+], $call:expr) => {{
        let started = Instant::now();
        let result = $call;
        datastore_call(&[$($k),+], result.is_ok(), started);
        result
    }};
}

/// [`DataStore`] with per-operation metrics.
pub struct MeteredDataStore(Arc<dyn DataStore>);

impl MeteredDataStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn DataStore>) -> Self {
        Self(inner)
    }
}

#[async_trait]
impl DataStore for MeteredDataStore {
    async fn create_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        metered!(["bundle", "create"], self.0.create_bundle(bundle).await)
    }
    async fn update_bundle(
        &self,
        bundle: types::Bundle,
        mask: BundleMask,
    ) -> Result<types::Bundle> {
        metered!(
            ["bundle", "update"],
            self.0.update_bundle(bundle, mask).await
        )
    }
    async fn set_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        metered!(["bundle", "set"], self.0.set_bundle(bundle).await)
    }
    async fn set_refreshed_bundle(&self, bundle: types::Bundle) -> Result<RefreshedBundleWrite> {
        metered!(["bundle", "set"], self.0.set_refreshed_bundle(bundle).await)
    }
    async fn append_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        metered!(["bundle", "append"], self.0.append_bundle(bundle).await)
    }
    async fn delete_bundle(&self, trust_domain: &str, mode: DeleteBundleMode) -> Result<()> {
        metered!(
            ["bundle", "delete"],
            self.0.delete_bundle(trust_domain, mode).await
        )
    }
    async fn fetch_bundle(&self, trust_domain: &str) -> Result<Option<types::Bundle>> {
        metered!(["bundle", "fetch"], self.0.fetch_bundle(trust_domain).await)
    }
    async fn list_bundles(
        &self,
        pagination: Option<Pagination>,
    ) -> Result<(Vec<types::Bundle>, String)> {
        metered!(["bundle", "list"], self.0.list_bundles(pagination).await)
    }
    async fn count_bundles(&self) -> Result<u64> {
        metered!(["bundle", "count"], self.0.count_bundles().await)
    }
    async fn prune_bundle(&self, trust_domain: &str, expires_before: i64) -> Result<bool> {
        metered!(
            ["bundle", "prune"],
            self.0.prune_bundle(trust_domain, expires_before).await
        )
    }
    async fn taint_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()> {
        metered!(
            ["bundle", "x509", "taint"],
            self.0.taint_x509_ca(trust_domain, subject_key_id).await
        )
    }
    async fn revoke_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()> {
        metered!(
            ["bundle", "x509", "revoke"],
            self.0.revoke_x509_ca(trust_domain, subject_key_id).await
        )
    }
    async fn taint_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>> {
        metered!(
            ["bundle", "jwt", "taint"],
            self.0.taint_jwt_key(trust_domain, key_id).await
        )
    }
    async fn revoke_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>> {
        metered!(
            ["bundle", "jwt", "revoke"],
            self.0.revoke_jwt_key(trust_domain, key_id).await
        )
    }

    async fn create_registration_entry(
        &self,
        entry: RegistrationEntry,
    ) -> Result<RegistrationEntry> {
        metered!(
            ["registration_entry", "create"],
            self.0.create_registration_entry(entry).await
        )
    }
    async fn create_or_return_registration_entry(
        &self,
        entry: RegistrationEntry,
    ) -> Result<(RegistrationEntry, bool)> {
        metered!(
            ["registration_entry", "create"],
            self.0.create_or_return_registration_entry(entry).await
        )
    }
    async fn create_or_return_registration_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Vec<Result<(RegistrationEntry, bool)>> {
        let started = Instant::now();
        let results = self.0.create_or_return_registration_entries(entries).await;
        for result in &results {
            datastore_call(&["registration_entry", "create"], result.is_ok(), started);
        }
        results
    }
    async fn fetch_registration_entry(&self, entry_id: &str) -> Result<Option<RegistrationEntry>> {
        metered!(
            ["registration_entry", "fetch"],
            self.0.fetch_registration_entry(entry_id).await
        )
    }
    async fn fetch_registration_entries(
        &self,
        entry_ids: &[String],
    ) -> Result<Vec<RegistrationEntry>> {
        metered!(
            ["registration_entry", "fetch"],
            self.0.fetch_registration_entries(entry_ids).await
        )
    }
    async fn list_registration_entries(
        &self,
        request: &ListEntriesRequest,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        metered!(
            ["registration_entry", "list"],
            self.0.list_registration_entries(request).await
        )
    }
    async fn count_registration_entries(&self, request: &ListEntriesRequest) -> Result<u64> {
        metered!(
            ["registration_entry", "count"],
            self.0.count_registration_entries(request).await
        )
    }
    async fn update_registration_entry(
        &self,
        entry: RegistrationEntry,
        mask: EntryMask,
    ) -> Result<RegistrationEntry> {
        metered!(
            ["registration_entry", "update"],
            self.0.update_registration_entry(entry, mask).await
        )
    }
    async fn delete_registration_entry(&self, entry_id: &str) -> Result<RegistrationEntry> {
        metered!(
            ["registration_entry", "delete"],
            self.0.delete_registration_entry(entry_id).await
        )
    }
    async fn prune_registration_entries(&self, expires_before: i64) -> Result<()> {
        metered!(
            ["registration_entry", "prune"],
            self.0.prune_registration_entries(expires_before).await
        )
    }
    async fn list_registration_entry_events(&self, after: u64) -> Result<Vec<ChangeEvent>> {
        metered!(
            ["registration_entry_event", "list"],
            self.0.list_registration_entry_events(after).await
        )
    }
    async fn prune_registration_entry_events(&self, older_than: i64) -> Result<()> {
        metered!(
            ["registration_entry_event", "prune"],
            self.0.prune_registration_entry_events(older_than).await
        )
    }

    async fn create_attested_node(&self, node: AttestedNode) -> Result<AttestedNode> {
        metered!(["node", "create"], self.0.create_attested_node(node).await)
    }
    async fn fetch_attested_node(&self, spiffe_id: &str) -> Result<Option<AttestedNode>> {
        metered!(
            ["node", "fetch"],
            self.0.fetch_attested_node(spiffe_id).await
        )
    }
    async fn list_attested_nodes(
        &self,
        request: &ListNodesRequest,
    ) -> Result<(Vec<AttestedNode>, String)> {
        metered!(["node", "list"], self.0.list_attested_nodes(request).await)
    }
    async fn count_attested_nodes(&self, request: &ListNodesRequest) -> Result<u64> {
        metered!(
            ["node", "count"],
            self.0.count_attested_nodes(request).await
        )
    }
    async fn update_attested_node(
        &self,
        node: AttestedNode,
        mask: AttestedNodeMask,
    ) -> Result<AttestedNode> {
        metered!(
            ["node", "update"],
            self.0.update_attested_node(node, mask).await
        )
    }
    async fn delete_attested_node(&self, spiffe_id: &str) -> Result<AttestedNode> {
        metered!(
            ["node", "delete"],
            self.0.delete_attested_node(spiffe_id).await
        )
    }
    async fn set_node_selectors(&self, spiffe_id: &str, selectors: &[Selector]) -> Result<()> {
        metered!(
            ["node", "selectors", "set"],
            self.0.set_node_selectors(spiffe_id, selectors).await
        )
    }
    async fn get_node_selectors(&self, spiffe_id: &str) -> Result<Vec<Selector>> {
        metered!(
            ["node", "selectors", "fetch"],
            self.0.get_node_selectors(spiffe_id).await
        )
    }
    async fn list_attested_node_events(&self, after: u64) -> Result<Vec<ChangeEvent>> {
        metered!(
            ["node_event", "list"],
            self.0.list_attested_node_events(after).await
        )
    }
    async fn prune_attested_node_events(&self, older_than: i64) -> Result<()> {
        metered!(
            ["node_event", "prune"],
            self.0.prune_attested_node_events(older_than).await
        )
    }

    async fn create_join_token(&self, token: JoinToken) -> Result<()> {
        metered!(
            ["join_token", "create"],
            self.0.create_join_token(token).await
        )
    }
    async fn fetch_join_token(&self, token: &str) -> Result<Option<JoinToken>> {
        metered!(
            ["join_token", "fetch"],
            self.0.fetch_join_token(token).await
        )
    }
    async fn take_join_token(&self, token: &str) -> Result<Option<JoinToken>> {
        metered!(
            ["join_token", "delete"],
            self.0.take_join_token(token).await
        )
    }
    async fn prune_join_tokens(&self, expires_before: i64) -> Result<()> {
        metered!(
            ["join_token", "prune"],
            self.0.prune_join_tokens(expires_before).await
        )
    }

    async fn set_ca_journal(&self, journal: CaJournal) -> Result<CaJournal> {
        metered!(["ca_journal", "set"], self.0.set_ca_journal(journal).await)
    }
    async fn fetch_ca_journal(&self, id: u32) -> Result<Option<CaJournal>> {
        metered!(["ca_journal", "fetch"], self.0.fetch_ca_journal(id).await)
    }
    async fn find_ca_journal(&self, active_x509_authority_id: &str) -> Result<Option<CaJournal>> {
        metered!(
            ["ca_journal", "fetch"],
            self.0.find_ca_journal(active_x509_authority_id).await
        )
    }
    async fn list_ca_journals(&self) -> Result<Vec<CaJournal>> {
        metered!(["ca_journal", "list"], self.0.list_ca_journals().await)
    }

    async fn create_federation_relationship(
        &self,
        relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        metered!(
            ["federation_relationship", "create"],
            self.0.create_federation_relationship(relationship).await
        )
    }
    async fn fetch_federation_relationship(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::FederationRelationship>> {
        metered!(
            ["federation_relationship", "fetch"],
            self.0.fetch_federation_relationship(trust_domain).await
        )
    }
    async fn list_federation_relationships(
        &self,
        pagination: Option<Pagination>,
    ) -> Result<(Vec<types::FederationRelationship>, String)> {
        metered!(
            ["federation_relationship", "list"],
            self.0.list_federation_relationships(pagination).await
        )
    }
    async fn update_federation_relationship(
        &self,
        relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        metered!(
            ["federation_relationship", "update"],
            self.0.update_federation_relationship(relationship).await
        )
    }
    async fn delete_federation_relationship(&self, trust_domain: &str) -> Result<()> {
        metered!(
            ["federation_relationship", "delete"],
            self.0.delete_federation_relationship(trust_domain).await
        )
    }
}
