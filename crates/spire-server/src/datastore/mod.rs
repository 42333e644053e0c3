//! The server's persistent state behind one trait, so SQLite, PostgreSQL and MySQL (and test
//! fakes) are interchangeable without touching callers.
//!
//! The records mirror upstream SPIRE's `common` protobuf messages and SQL tables
//! (`pkg/server/datastore/sqlstore/models.go`), so a database written by upstream opens here.
//! Times are Unix seconds, as upstream stores them in its protobuf blobs and columns.

use async_trait::async_trait;
use spire_core::selector::{Selector, SelectorMatch};
use spire_proto::spire::api::types;

pub mod metered;
pub mod sql;

/// Everything that can go wrong in the datastore; the API layer maps each variant to the
/// gRPC status upstream uses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataStoreError {
    /// The record does not exist (gRPC NotFound).
    #[error("{0} not found")]
    NotFound(String),
    /// A record with the same key already exists (gRPC AlreadyExists).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request itself is malformed (gRPC InvalidArgument).
    #[error("{0}")]
    InvalidArgument(String),
    /// The stored data cannot be decoded or the database failed (gRPC Internal).
    #[error("datastore error: {0}")]
    Internal(String),
    /// The database cannot be reached (gRPC Unavailable: callers retry, and the store
    /// recovers by itself when the database is back).
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
}

/// Shorthand for datastore results.
pub type Result<T> = std::result::Result<T, DataStoreError>;

/// A page request. `token` is opaque to callers; an empty token starts at the beginning and
/// an empty next token means there is no more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pagination {
    /// Where to continue; empty for the first page.
    pub token: String,
    /// How many records at most; 0 means no paging (everything).
    pub page_size: u32,
}

/// A registration entry (upstream `common.RegistrationEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// UUID assigned at creation (or given by the caller).
    pub entry_id: String,
    /// The SPIFFE ID issued to matching workloads, `spiffe://td/path`.
    pub spiffe_id: String,
    /// The SPIFFE ID of the agent (or node-alias entry) allowed to obtain it.
    pub parent_id: String,
    /// Selectors a workload (or node) must have.
    pub selectors: Vec<Selector>,
    /// X509-SVID TTL in seconds; 0 means the server default.
    pub x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds; 0 means the server default.
    pub jwt_svid_ttl: i32,
    /// Trust domain IDs (`spiffe://td`) whose bundles the workload also receives.
    pub federates_with: Vec<String>,
    /// Whether SVIDs for this entry are admins of the server APIs.
    pub admin: bool,
    /// Whether SVIDs for this entry may mint downstream CAs.
    pub downstream: bool,
    /// Unix seconds after which the entry is pruned; 0 means never.
    pub entry_expiry: i64,
    /// DNS SANs of issued X509-SVIDs.
    pub dns_names: Vec<String>,
    /// Incremented on every update.
    pub revision_number: i64,
    /// Whether the SVID is stored by an SVIDStore plugin rather than served.
    pub store_svid: bool,
    /// Opaque hint for workloads choosing among several SVIDs.
    pub hint: String,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// Optional tunables of the agent's behaviour for this entry (upstream's
    /// `AdditionalAttributes`, stored from datastore schema 25 on); `None` when unset.
    pub additional_attributes: Option<EntryAttributes>,
}

/// Upstream's `RegistrationEntry.AdditionalAttributes`: tunables stored as one protobuf blob
/// in `registered_entries.additional_attributes`, so new ones need no schema change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryAttributes {
    /// The agent mints this entry's X509-SVID only when a workload asks for it.
    pub disable_x509_svid_prefetch: bool,
    /// Every JWT-SVID of this entry carries a unique `jti` claim, so agents never cache it.
    pub jwt_svid_include_jti: bool,
}

impl EntryAttributes {
    /// Whether any attribute is set; an all-false value is stored as empty bytes, which
    /// upstream (and we) read back as no attributes at all.
    pub fn any(self) -> bool {
        self.disable_x509_svid_prefetch || self.jwt_svid_include_jti
    }
}

/// An attested agent (upstream `common.AttestedNode`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// The node attestor that attested it, e.g. `join_token`.
    pub attestation_data_type: String,
    /// Serial number (decimal) of the agent's current SVID; empty when banned.
    pub cert_serial_number: String,
    /// Unix seconds at which the current SVID expires.
    pub cert_not_after: i64,
    /// Serial of an SVID issued by RenewAgent but not yet used; empty when none.
    pub new_cert_serial_number: String,
    /// Unix seconds at which that new SVID expires.
    pub new_cert_not_after: i64,
    /// Node selectors; filled only when asked for (`fetch_selectors`).
    pub selectors: Vec<Selector>,
    /// Whether the agent may re-attest instead of renewing.
    pub can_reattest: bool,
    /// The version the agent reported with PostStatus (at most 255 bytes); empty when it
    /// never did (agents before SPIRE 1.15).
    pub agent_version: String,
}

impl AttestedNode {
    /// Upstream marks a banned agent by clearing both serial numbers.
    pub fn is_banned(&self) -> bool {
        self.cert_serial_number.is_empty() && self.new_cert_serial_number.is_empty()
    }
}

/// Which fields an update touches; `None` everywhere (the default) means every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestedNodeMask {
    /// `cert_serial_number`.
    pub cert_serial_number: bool,
    /// `cert_not_after`.
    pub cert_not_after: bool,
    /// `new_cert_serial_number`.
    pub new_cert_serial_number: bool,
    /// `new_cert_not_after`.
    pub new_cert_not_after: bool,
    /// `can_reattest`.
    pub can_reattest: bool,
    /// `agent_version`.
    pub agent_version: bool,
}

impl AttestedNodeMask {
    /// No field: a base for masks that name only the fields they touch.
    pub const NONE: Self = Self {
        cert_serial_number: false,
        cert_not_after: false,
        new_cert_serial_number: false,
        new_cert_not_after: false,
        can_reattest: false,
        agent_version: false,
    };

    /// Every field.
    pub const ALL: Self = Self {
        cert_serial_number: true,
        cert_not_after: true,
        new_cert_serial_number: true,
        new_cert_not_after: true,
        can_reattest: true,
        agent_version: true,
    };
}

/// Which entry fields an update touches (upstream `common.RegistrationEntryMask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "one flag per RegistrationEntry field of the same name"
)]
pub struct EntryMask {
    pub spiffe_id: bool,
    pub parent_id: bool,
    pub selectors: bool,
    pub x509_svid_ttl: bool,
    pub jwt_svid_ttl: bool,
    pub federates_with: bool,
    pub admin: bool,
    pub downstream: bool,
    pub entry_expiry: bool,
    pub dns_names: bool,
    pub store_svid: bool,
    pub hint: bool,
    pub additional_attributes: bool,
}

impl EntryMask {
    /// Every field.
    pub const ALL: Self = Self {
        spiffe_id: true,
        parent_id: true,
        selectors: true,
        x509_svid_ttl: true,
        jwt_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        entry_expiry: true,
        dns_names: true,
        store_svid: true,
        hint: true,
        additional_attributes: true,
    };
}

/// Filters of ListRegistrationEntries / CountRegistrationEntries; every set filter must hold.
#[derive(Debug, Clone, Default)]
pub struct ListEntriesRequest {
    /// Only entries with this parent ID.
    pub by_parent_id: Option<String>,
    /// Only entries with this SPIFFE ID.
    pub by_spiffe_id: Option<String>,
    /// Only entries whose selectors relate to these as the match mode says.
    pub by_selectors: Option<(Vec<Selector>, SelectorMatch)>,
    /// Only entries whose federates_with (trust domain IDs) relate to these as the mode says.
    pub by_federates_with: Option<(Vec<String>, SelectorMatch)>,
    /// Only entries with this hint.
    pub by_hint: Option<String>,
    /// `Some(true)`: only downstream entries; `Some(false)` or `None`: no filter, as upstream.
    pub by_downstream: Option<bool>,
    /// Paging; `None` returns everything.
    pub pagination: Option<Pagination>,
}

/// Filters of ListAttestedNodes / CountAttestedNodes.
#[derive(Debug, Clone, Default)]
pub struct ListNodesRequest {
    /// Only agents attested by this attestor.
    pub by_attestation_type: Option<String>,
    /// Only banned (true) or unbanned (false) agents.
    pub by_banned: Option<bool>,
    /// Only agents whose SVID expires before this Unix second.
    pub by_expires_before: Option<i64>,
    /// Only agents whose node selectors relate to these as the mode says.
    pub by_selectors: Option<(Vec<Selector>, SelectorMatch)>,
    /// Only agents that can (true) or cannot (false) re-attest.
    pub by_can_reattest: Option<bool>,
    /// Fill `AttestedNode::selectors` in the results.
    pub fetch_selectors: bool,
    /// Paging; `None` returns everything.
    pub pagination: Option<Pagination>,
}

/// A join token row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The secret token value.
    pub token: String,
    /// Unix seconds after which it is no longer accepted.
    pub expiry: i64,
}

/// A change event: the ID of an entry or agent that was created, updated or deleted.
/// Events are numbered in insertion order, so a reader asks for those after the last it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Monotonic event number.
    pub event_id: u64,
    /// The entry ID or agent SPIFFE ID that changed.
    pub id: String,
}

/// One row of `ca_journals`: the serialized CA journal plus the IDs used to find it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaJournal {
    /// Row ID; 0 when not yet stored.
    pub id: u32,
    /// The serialized journal (upstream's `journal.Journal` protobuf).
    pub data: Vec<u8>,
    /// Authority ID (SKID, hex) of the active X509 CA.
    pub active_x509_authority_id: String,
    /// Authority ID (key ID) of the active JWT key.
    pub active_jwt_authority_id: String,
}

/// How DeleteBundle treats entries that federate with the bundle's trust domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteBundleMode {
    /// Fail when any entry federates with it.
    #[default]
    Restrict,
    /// Delete those entries too.
    Delete,
    /// Remove the trust domain from those entries.
    Dissociate,
}

/// Which parts of a bundle UpdateBundle replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleMask {
    /// Replace the X.509 authorities.
    pub x509_authorities: bool,
    /// Replace the JWT authorities.
    pub jwt_authorities: bool,
    /// Replace the refresh hint.
    pub refresh_hint: bool,
    /// Replace the sequence number.
    pub sequence_number: bool,
}

impl BundleMask {
    /// Every field.
    pub const ALL: Self = Self {
        x509_authorities: true,
        jwt_authorities: true,
        refresh_hint: true,
        sequence_number: true,
    };
}

/// What [`DataStore::set_refreshed_bundle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshedBundleWrite {
    /// The bundle differed and was stored (or there was none).
    Stored,
    /// The stored bundle has the same authorities, sequence number and refresh hint.
    Unchanged,
    /// The stored bundle has a higher sequence number and every X.509 authority of the
    /// offered one: the offered bundle is an older version, and was not written. (A trust
    /// domain rebuilt from scratch restarts its sequence with new authorities, and is
    /// stored.)
    Stale,
}

/// The persistent state of a SPIRE server.
///
/// Bundles use the wire type `spire.api.types.Bundle`, which carries exactly the fields of
/// upstream's stored `common.Bundle` (authorities with their tainted flags, refresh hint,
/// sequence number); `trust_domain` is the bare name (`example.org`).
#[async_trait]
pub trait DataStore: Send + Sync + 'static {
    // ---- bundles ----
    /// Stores a new bundle; AlreadyExists if one exists for the trust domain.
    async fn create_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle>;
    /// Replaces the masked fields of an existing bundle; NotFound if absent.
    async fn update_bundle(&self, bundle: types::Bundle, mask: BundleMask)
    -> Result<types::Bundle>;
    /// Creates or replaces a bundle.
    async fn set_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle>;
    /// Stores a bundle fetched from a federated trust domain's endpoint, in one locked
    /// transaction, unless the stored one is the same or newer: what the federation
    /// refresher writes, so that servers sharing the database never put back an older
    /// bundle (see [`RefreshedBundleWrite`]).
    async fn set_refreshed_bundle(&self, bundle: types::Bundle) -> Result<RefreshedBundleWrite>;
    /// Adds authorities not yet present (creating the bundle if needed), bumping the sequence
    /// number when anything changed; returns the stored result.
    async fn append_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle>;
    /// Deletes a bundle; see [`DeleteBundleMode`].
    async fn delete_bundle(&self, trust_domain: &str, mode: DeleteBundleMode) -> Result<()>;
    /// Fetches one bundle by trust domain name.
    async fn fetch_bundle(&self, trust_domain: &str) -> Result<Option<types::Bundle>>;
    /// Lists bundles in creation (row ID) order, as upstream pages them; returns the page and
    /// the next token.
    async fn list_bundles(
        &self,
        pagination: Option<Pagination>,
    ) -> Result<(Vec<types::Bundle>, String)>;
    /// Counts bundles.
    async fn count_bundles(&self) -> Result<u64>;
    /// Removes X.509 and JWT authorities that expired before `expires_before`, never the last
    /// X.509 authority; returns whether anything changed.
    async fn prune_bundle(&self, trust_domain: &str, expires_before: i64) -> Result<bool>;
    /// Marks the X.509 authority with this subject key ID (hex) tainted.
    async fn taint_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()>;
    /// Removes the (tainted) X.509 authority with this subject key ID (hex).
    async fn revoke_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()>;
    /// Marks the JWT authority with this key ID tainted; returns its public key.
    async fn taint_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>>;
    /// Removes the (tainted) JWT authority with this key ID; returns its public key.
    async fn revoke_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>>;

    // ---- registration entries ----
    /// Stores a new entry, assigning an ID when empty; returns it as stored.
    async fn create_registration_entry(
        &self,
        entry: RegistrationEntry,
    ) -> Result<RegistrationEntry>;
    /// Like create, but when an entry with the same spiffe_id, parent_id and selectors exists
    /// returns that one and `true`.
    async fn create_or_return_registration_entry(
        &self,
        entry: RegistrationEntry,
    ) -> Result<(RegistrationEntry, bool)>;
    /// Create-or-return for many entries at once (BatchCreateEntry): one result per input, in
    /// order. The default calls [`DataStore::create_or_return_registration_entry`] per entry;
    /// the SQL store overrides it with one transaction for the whole batch.
    async fn create_or_return_registration_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Vec<Result<(RegistrationEntry, bool)>> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            out.push(self.create_or_return_registration_entry(entry).await);
        }
        out
    }
    /// Fetches one entry.
    async fn fetch_registration_entry(&self, entry_id: &str) -> Result<Option<RegistrationEntry>>;
    /// Fetches several entries at once (missing ones are left out).
    async fn fetch_registration_entries(
        &self,
        entry_ids: &[String],
    ) -> Result<Vec<RegistrationEntry>>;
    /// Lists entries ordered by their internal row ID; returns the page and the next token.
    async fn list_registration_entries(
        &self,
        request: &ListEntriesRequest,
    ) -> Result<(Vec<RegistrationEntry>, String)>;
    /// Counts entries matching the filters (pagination ignored).
    async fn count_registration_entries(&self, request: &ListEntriesRequest) -> Result<u64>;
    /// Updates the masked fields, bumping the revision; NotFound if absent.
    async fn update_registration_entry(
        &self,
        entry: RegistrationEntry,
        mask: EntryMask,
    ) -> Result<RegistrationEntry>;
    /// Deletes an entry and returns it; NotFound if absent.
    async fn delete_registration_entry(&self, entry_id: &str) -> Result<RegistrationEntry>;
    /// Deletes entries whose expiry is before `expires_before`.
    async fn prune_registration_entries(&self, expires_before: i64) -> Result<()>;
    /// Entry change events with an ID greater than `after` (0 for all), oldest first.
    async fn list_registration_entry_events(&self, after: u64) -> Result<Vec<ChangeEvent>>;
    /// Deletes entry events older than `older_than` Unix seconds.
    async fn prune_registration_entry_events(&self, older_than: i64) -> Result<()>;

    // ---- attested nodes ----
    /// Stores a new agent; AlreadyExists if its SPIFFE ID is taken.
    async fn create_attested_node(&self, node: AttestedNode) -> Result<AttestedNode>;
    /// Fetches one agent, with its selectors.
    async fn fetch_attested_node(&self, spiffe_id: &str) -> Result<Option<AttestedNode>>;
    /// Lists agents ordered by row ID; returns the page and the next token.
    async fn list_attested_nodes(
        &self,
        request: &ListNodesRequest,
    ) -> Result<(Vec<AttestedNode>, String)>;
    /// Counts agents matching the filters.
    async fn count_attested_nodes(&self, request: &ListNodesRequest) -> Result<u64>;
    /// Updates the masked fields; NotFound if absent.
    async fn update_attested_node(
        &self,
        node: AttestedNode,
        mask: AttestedNodeMask,
    ) -> Result<AttestedNode>;
    /// Deletes an agent (and its node selectors) and returns it; NotFound if absent.
    async fn delete_attested_node(&self, spiffe_id: &str) -> Result<AttestedNode>;
    /// Replaces the node selectors of an agent (the agent row need not exist).
    async fn set_node_selectors(&self, spiffe_id: &str, selectors: &[Selector]) -> Result<()>;
    /// The node selectors of an agent.
    async fn get_node_selectors(&self, spiffe_id: &str) -> Result<Vec<Selector>>;
    /// Agent change events with an ID greater than `after` (0 for all), oldest first.
    async fn list_attested_node_events(&self, after: u64) -> Result<Vec<ChangeEvent>>;
    /// Deletes agent events older than `older_than` Unix seconds.
    async fn prune_attested_node_events(&self, older_than: i64) -> Result<()>;

    // ---- join tokens ----
    /// Stores a join token; AlreadyExists if the value is taken.
    async fn create_join_token(&self, token: JoinToken) -> Result<()>;
    /// Fetches a join token without consuming it.
    async fn fetch_join_token(&self, token: &str) -> Result<Option<JoinToken>>;
    /// Deletes a join token and returns it; exactly one concurrent caller gets `Some`.
    async fn take_join_token(&self, token: &str) -> Result<Option<JoinToken>>;
    /// Deletes tokens that expired before `expires_before`.
    async fn prune_join_tokens(&self, expires_before: i64) -> Result<()>;

    // ---- CA journals ----
    /// Inserts (id 0) or updates a journal row; returns it with its ID.
    async fn set_ca_journal(&self, journal: CaJournal) -> Result<CaJournal>;
    /// Fetches a journal row by ID.
    async fn fetch_ca_journal(&self, id: u32) -> Result<Option<CaJournal>>;
    /// Finds the journal whose active X509 authority ID is this one.
    async fn find_ca_journal(&self, active_x509_authority_id: &str) -> Result<Option<CaJournal>>;
    /// Every journal row.
    async fn list_ca_journals(&self) -> Result<Vec<CaJournal>>;

    // ---- federation relationships ----
    /// Stores a relationship (and its bundle, when given); AlreadyExists if present.
    async fn create_federation_relationship(
        &self,
        relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship>;
    /// Fetches one relationship by trust domain name.
    async fn fetch_federation_relationship(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::FederationRelationship>>;
    /// Lists relationships in creation (row ID) order, as upstream pages them.
    async fn list_federation_relationships(
        &self,
        pagination: Option<Pagination>,
    ) -> Result<(Vec<types::FederationRelationship>, String)>;
    /// Replaces a relationship; NotFound if absent.
    async fn update_federation_relationship(
        &self,
        relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship>;
    /// Deletes a relationship; NotFound if absent.
    async fn delete_federation_relationship(&self, trust_domain: &str) -> Result<()>;
}
