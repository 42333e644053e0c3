//! The SQL datastore (upstream plugin `DataStore "sql"`), storing state in upstream SPIRE's own
//! schema so operators can move a database between upstream servers and ours.
//!
//! SQLite (`database_type = "sqlite3"`) is supported now. All SQL lives in this module's files,
//! uses `?` placeholders and portable forms; what differs per database is in [`dialect`], so
//! PostgreSQL and MySQL can be added without touching callers.
//!
//! Writes go through one connection, each call in one `BEGIN IMMEDIATE` transaction (SQLite
//! has a single writer anyway; queueing in-process avoids busy retries), reads through a pool
//! of connections that never wait for writers thanks to WAL.

mod bundles;
mod dialect;
mod entries;
mod misc;
mod nodes;
mod proto;
mod query;
pub mod schema;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use spire_core::selector::Selector;
use spire_proto::spire::api::types;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{
    AttestedNode, AttestedNodeMask, BundleMask, CaJournal, ChangeEvent, DataStore, DataStoreError,
    DeleteBundleMode, EntryMask, JoinToken, ListEntriesRequest, ListNodesRequest, Pagination,
    RegistrationEntry, Result,
};
use dialect::db_err;

/// The `plugin_data` of `DataStore "sql"`, reduced to what this implementation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlConfig {
    /// `sqlite3` (supported); `postgres` and `mysql` are recognized but not yet implemented.
    pub database_type: String,
    /// For SQLite: a file path (relative to the working directory) or a `file:` URI.
    pub connection_string: String,
    /// Upper bound on open connections (upstream default 100).
    pub max_open_conns: Option<u32>,
    /// Never migrate the schema (we never do; kept so configs keep their meaning).
    pub disable_migration: bool,
}

/// Every `plugin_data` key upstream documents for the sql datastore.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginData {
    database_type: Option<String>,
    connection_string: Option<String>,
    ro_connection_string: Option<String>,
    root_ca_path: Option<String>,
    client_cert_path: Option<String>,
    client_key_path: Option<String>,
    max_open_conns: Option<i64>,
    max_idle_conns: Option<i64>,
    conn_max_lifetime: Option<String>,
    disable_migration: Option<bool>,
}

impl SqlConfig {
    /// Reads upstream's `plugin_data` block (as JSON), refusing unknown keys and missing
    /// required ones with the key's name, as upstream does.
    ///
    /// `ro_connection_string` does not apply to SQLite (upstream ignores it too);
    /// `max_idle_conns` and `conn_max_lifetime` are accepted for compatibility.
    pub fn from_plugin_data(value: &serde_json::Value) -> Result<Self> {
        let data: PluginData = serde_json::from_value(value.clone()).map_err(|e| {
            DataStoreError::InvalidArgument(format!("DataStore \"sql\" plugin_data: {e}"))
        })?;
        let database_type = data.database_type.unwrap_or_default();
        if database_type.is_empty() {
            return Err(DataStoreError::InvalidArgument(
                "DataStore \"sql\": database_type must be set (sqlite3, postgres or mysql)".into(),
            ));
        }
        let connection_string = data.connection_string.unwrap_or_default();
        if connection_string.is_empty() {
            return Err(DataStoreError::InvalidArgument(
                "DataStore \"sql\": connection_string must be set".into(),
            ));
        }
        let max_open_conns = match data.max_open_conns {
            None => None,
            Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            // Go's database/sql treats 0 or less as "unlimited".
            Some(_) => None,
        };
        if let Some(lifetime) = &data.conn_max_lifetime {
            spire_core::duration::parse(lifetime).map_err(|e| {
                DataStoreError::InvalidArgument(format!(
                    "DataStore \"sql\": conn_max_lifetime {lifetime:?}: {e}"
                ))
            })?;
        }
        let _ = (
            data.ro_connection_string,
            data.root_ca_path,
            data.client_cert_path,
            data.client_key_path,
            data.max_idle_conns,
        );
        Ok(Self {
            database_type,
            connection_string,
            max_open_conns,
            disable_migration: data.disable_migration.unwrap_or(false),
        })
    }
}

/// The SQL datastore.
#[derive(Debug, Clone)]
pub struct SqlDataStore {
    /// One connection: every write transaction queues here.
    write: SqlitePool,
    /// Readers; the same pool as `write` for in-memory databases.
    read: SqlitePool,
    /// Whether `open` created the schema (false: an existing database was opened).
    created: bool,
}

/// How the SQLite connection string was understood.
#[derive(Debug)]
struct SqliteTarget {
    path: PathBuf,
    in_memory: bool,
    read_only: bool,
    busy_timeout: Duration,
}

fn parse_sqlite_connection_string(input: &str) -> Result<SqliteTarget> {
    let rest = input
        .strip_prefix("file://")
        .or_else(|| input.strip_prefix("file:"))
        .unwrap_or(input);
    let (path, params) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut target = SqliteTarget {
        path: PathBuf::from(path),
        in_memory: path == ":memory:",
        read_only: false,
        busy_timeout: Duration::from_secs(10),
    };
    for pair in params.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("mode", "memory") => target.in_memory = true,
            ("mode", "ro") => target.read_only = true,
            ("mode", "rw" | "rwc") | ("cache", _) => {}
            ("_busy_timeout" | "_timeout", ms) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    DataStoreError::InvalidArgument(format!(
                        "connection_string: {key}={ms:?} is not a number of milliseconds"
                    ))
                })?;
                target.busy_timeout = Duration::from_millis(ms);
            }
            // go-sqlite3 options (_foreign_keys, _journal_mode, _loc, ...): we always run with
            // foreign keys on and WAL, as upstream forces too.
            (k, _) if k.starts_with('_') => {}
            (k, v) => {
                tracing::warn!(
                    key = k,
                    value = v,
                    "ignoring unknown SQLite connection_string parameter"
                );
            }
        }
    }
    if target.path.as_os_str().is_empty() {
        return Err(DataStoreError::InvalidArgument(format!(
            "connection_string {input:?} names no database file"
        )));
    }
    Ok(target)
}

impl SqlDataStore {
    /// Opens (creating when missing) the database and checks or creates upstream's schema.
    pub async fn open(config: &SqlConfig) -> Result<Self> {
        match config.database_type.as_str() {
            "sqlite3" => Self::open_sqlite(config).await,
            other => Err(DataStoreError::InvalidArgument(format!(
                "DataStore \"sql\": database_type {other:?} is not supported yet; only \"sqlite3\" \
                 is supported for now"
            ))),
        }
    }

    async fn open_sqlite(config: &SqlConfig) -> Result<Self> {
        let target = parse_sqlite_connection_string(&config.connection_string)?;
        if !target.in_memory
            && let Some(parent) = target.path.parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                DataStoreError::Internal(format!(
                    "cannot create the database directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let mut options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(db_err("preparing SQLite options"))?
            .filename(&target.path)
            .foreign_keys(true)
            .busy_timeout(target.busy_timeout)
            .statement_cache_capacity(256);
        if target.in_memory {
            options = options.in_memory(true).shared_cache(true);
        } else {
            options = options
                .in_memory(false)
                .shared_cache(false)
                .create_if_missing(!target.read_only)
                .read_only(target.read_only)
                .journal_mode(SqliteJournalMode::Wal)
                // With WAL, NORMAL keeps the database consistent on crash and avoids an fsync
                // per transaction (it may lose the last commits on power loss).
                .synchronous(SqliteSynchronous::Normal);
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .idle_timeout(None)
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                DataStoreError::Internal(format!(
                    "cannot open SQLite database {}: {e}",
                    target.path.display()
                ))
            })?;
        let created = {
            let mut conn = write
                .acquire()
                .await
                .map_err(db_err("opening the database"))?;
            let state = schema::prepare(&mut conn).await?;
            if config.disable_migration {
                tracing::debug!("disable_migration is set; this server never migrates anyway");
            }
            matches!(state, schema::SchemaState::Created)
        };
        let read = if target.in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.max_open_conns.unwrap_or(100).max(1))
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(60))
                .idle_timeout(Some(Duration::from_secs(30)))
                .connect_lazy_with(options)
        };
        Ok(Self {
            write,
            read,
            created,
        })
    }

    /// Whether `open` found an empty database and created upstream's schema in it.
    pub fn created_schema(&self) -> bool {
        self.created
    }

    /// Closes every connection; later calls fail. Lets a caller (or test) reopen the file.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err("starting a write transaction"))
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>> {
        self.read
            .begin()
            .await
            .map_err(db_err("starting a read transaction"))
    }

    /// Creates many entries with create-or-return semantics (as BatchCreateEntry uses) in
    /// one transaction. Returns one result per input, in order, with `true` when an equal
    /// entry already existed.
    ///
    /// A bad entry (invalid, unknown federated bundle, taken entry ID) fails alone: those
    /// checks run before anything of it is written. A database failure fails the whole batch
    /// and nothing of it is kept.
    pub async fn create_or_return_registration_entries_batch(
        &self,
        batch: Vec<RegistrationEntry>,
    ) -> Vec<Result<(RegistrationEntry, bool)>> {
        let n = batch.len();
        match self.create_batch(batch).await {
            Ok(results) => results,
            Err(e) => (0..n)
                .map(|_| {
                    Err(DataStoreError::Internal(format!(
                        "batch of {n} entries not stored: {e}"
                    )))
                })
                .collect(),
        }
    }

    async fn create_batch(
        &self,
        batch: Vec<RegistrationEntry>,
    ) -> Result<Vec<Result<(RegistrationEntry, bool)>>> {
        let normalized: Vec<Result<RegistrationEntry>> =
            batch.into_iter().map(entries::normalize).collect();
        let pairs: BTreeSet<(String, String)> = normalized
            .iter()
            .flatten()
            .map(|e| (e.spiffe_id.clone(), e.parent_id.clone()))
            .collect();

        let mut tx = self.begin_write().await?;
        let conn: &mut SqliteConnection = &mut tx;
        // Entries that an input may turn out to equal: existing ones, then the batch's own.
        let mut similar: HashMap<(String, String), Vec<RegistrationEntry>> = HashMap::new();
        for e in entries::similar_candidates(conn, &pairs).await? {
            similar
                .entry((e.spiffe_id.clone(), e.parent_id.clone()))
                .or_default()
                .push(e);
        }
        let mut cache = HashMap::new();
        let mut children = entries::ChildRows::default();
        let mut results = Vec::with_capacity(normalized.len());
        let mut events = Vec::new();
        for entry in normalized {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let key = (entry.spiffe_id.clone(), entry.parent_id.clone());
            let wanted: BTreeSet<&Selector> = entry.selectors.iter().collect();
            if let Some(existing) = similar.get(&key).and_then(|list| {
                list.iter()
                    .find(|e| e.selectors.iter().collect::<BTreeSet<_>>() == wanted)
            }) {
                results.push(Ok((existing.clone(), true)));
                continue;
            }
            let bundle_rows =
                match entries::bundle_ids(conn, &entry.federates_with, &mut cache).await {
                    Ok(rows) => rows,
                    Err(e @ DataStoreError::Internal(_)) => return Err(e),
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
            match entries::insert_entry_row(conn, entry, &bundle_rows, &mut children).await {
                Ok(created) => {
                    events.push(created.entry_id.clone());
                    similar.entry(key).or_default().push(created.clone());
                    results.push(Ok((created, false)));
                }
                Err(e @ DataStoreError::Internal(_)) => return Err(e),
                Err(e) => results.push(Err(e)),
            }
            if children.len() >= 1_000 {
                children.flush(conn).await?;
            }
        }
        children.flush(conn).await?;
        entries::insert_events(conn, &events).await?;
        tx.commit()
            .await
            .map_err(db_err("committing a batch of entries"))?;
        Ok(results)
    }
}

/// Returns an equal existing entry, or inserts `entry` (without its event).
async fn create_or_return_one(
    conn: &mut SqliteConnection,
    entry: RegistrationEntry,
    cache: &mut HashMap<String, i64>,
) -> Result<(RegistrationEntry, bool)> {
    let entry = entries::normalize(entry)?;
    if let Some(existing) = entries::find_similar(conn, &entry).await? {
        return Ok((existing, true));
    }
    let bundle_rows = entries::bundle_ids(conn, &entry.federates_with, cache).await?;
    let created = entries::insert_normalized(conn, entry, &bundle_rows).await?;
    Ok((created, false))
}

async fn create_or_return(
    conn: &mut SqliteConnection,
    entry: RegistrationEntry,
) -> Result<(RegistrationEntry, bool)> {
    let (entry, existed) = create_or_return_one(conn, entry, &mut HashMap::new()).await?;
    if !existed {
        entries::insert_event(conn, &entry.entry_id).await?;
    }
    Ok((entry, existed))
}

/// Runs `$body` with `$conn` bound to a write transaction, committing when it succeeds.
macro_rules! write_tx {
    ($self:ident, |$conn:ident| $body:expr) => {{
        let mut tx = $self.begin_write().await?;
        let $conn: &mut SqliteConnection = &mut tx;
        let out = $body;
        tx.commit().await.map_err(db_err("committing"))?;
        Ok(out)
    }};
}

/// Runs `$body` with `$conn` bound to a read transaction (one consistent snapshot).
macro_rules! read_tx {
    ($self:ident, |$conn:ident| $body:expr) => {{
        let mut tx = $self.begin_read().await?;
        let $conn: &mut SqliteConnection = &mut tx;
        let out = $body;
        tx.commit().await.map_err(db_err("finishing a read"))?;
        Ok(out)
    }};
}

#[async_trait]
impl DataStore for SqlDataStore {
    async fn create_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        write_tx!(self, |c| bundles::create(c, &bundle).await?)
    }

    async fn update_bundle(
        &self,
        bundle: types::Bundle,
        mask: BundleMask,
    ) -> Result<types::Bundle> {
        write_tx!(self, |c| bundles::update(c, &bundle, mask).await?)
    }

    async fn set_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        write_tx!(self, |c| bundles::set(c, &bundle).await?)
    }

    async fn append_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        write_tx!(self, |c| bundles::append(c, &bundle).await?)
    }

    async fn delete_bundle(&self, trust_domain: &str, mode: DeleteBundleMode) -> Result<()> {
        write_tx!(self, |c| bundles::delete(c, trust_domain, mode).await?)
    }

    async fn fetch_bundle(&self, trust_domain: &str) -> Result<Option<types::Bundle>> {
        read_tx!(self, |c| bundles::fetch_row(c, trust_domain)
            .await?
            .map(|(_, b)| proto::stored_to_bundle(b)))
    }

    async fn list_bundles(
        &self,
        pagination: Option<Pagination>,
    ) -> Result<(Vec<types::Bundle>, String)> {
        read_tx!(self, |c| bundles::list(c, pagination.as_ref()).await?)
    }

    async fn count_bundles(&self) -> Result<u64> {
        read_tx!(self, |c| bundles::count(c).await?)
    }

    async fn prune_bundle(&self, trust_domain: &str, expires_before: i64) -> Result<bool> {
        write_tx!(self, |c| bundles::prune(c, trust_domain, expires_before)
            .await?)
    }

    async fn taint_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()> {
        write_tx!(self, |c| bundles::taint_x509(
            c,
            trust_domain,
            subject_key_id
        )
        .await?)
    }

    async fn revoke_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()> {
        write_tx!(self, |c| bundles::revoke_x509(
            c,
            trust_domain,
            subject_key_id
        )
        .await?)
    }

    async fn taint_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>> {
        write_tx!(self, |c| bundles::taint_jwt(c, trust_domain, key_id)
            .await?)
    }

    async fn revoke_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>> {
        write_tx!(self, |c| bundles::revoke_jwt(c, trust_domain, key_id)
            .await?)
    }

    async fn create_registration_entry(
        &self,
        entry: RegistrationEntry,
    ) -> Result<RegistrationEntry> {
        write_tx!(self, |c| entries::create(c, entry).await?)
    }

    async fn create_or_return_registration_entry(
        &self,
        entry: RegistrationEntry,
    ) -> Result<(RegistrationEntry, bool)> {
        write_tx!(self, |c| create_or_return(c, entry).await?)
    }

    async fn create_or_return_registration_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Vec<Result<(RegistrationEntry, bool)>> {
        self.create_or_return_registration_entries_batch(entries)
            .await
    }

    async fn fetch_registration_entry(&self, entry_id: &str) -> Result<Option<RegistrationEntry>> {
        read_tx!(self, |c| entries::fetch_row(c, entry_id)
            .await?
            .map(|(_, e)| e))
    }

    async fn fetch_registration_entries(
        &self,
        entry_ids: &[String],
    ) -> Result<Vec<RegistrationEntry>> {
        read_tx!(self, |c| entries::fetch_many(c, entry_ids).await?)
    }

    async fn list_registration_entries(
        &self,
        request: &ListEntriesRequest,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        read_tx!(self, |c| entries::list(c, request).await?)
    }

    async fn count_registration_entries(&self, request: &ListEntriesRequest) -> Result<u64> {
        read_tx!(self, |c| entries::count(c, request).await?)
    }

    async fn update_registration_entry(
        &self,
        entry: RegistrationEntry,
        mask: EntryMask,
    ) -> Result<RegistrationEntry> {
        write_tx!(self, |c| entries::update(c, entry, mask).await?)
    }

    async fn delete_registration_entry(&self, entry_id: &str) -> Result<RegistrationEntry> {
        write_tx!(self, |c| entries::delete(c, entry_id).await?)
    }

    async fn prune_registration_entries(&self, expires_before: i64) -> Result<()> {
        write_tx!(self, |c| entries::prune(c, expires_before).await?)
    }

    async fn list_registration_entry_events(&self, after: u64) -> Result<Vec<ChangeEvent>> {
        read_tx!(self, |c| entries::list_events(
            c,
            "registered_entries_events",
            "entry_id",
            after
        )
        .await?)
    }

    async fn prune_registration_entry_events(&self, older_than: i64) -> Result<()> {
        write_tx!(self, |c| entries::prune_events(
            c,
            "registered_entries_events",
            older_than
        )
        .await?)
    }

    async fn create_attested_node(&self, node: AttestedNode) -> Result<AttestedNode> {
        write_tx!(self, |c| nodes::create(c, node).await?)
    }

    async fn fetch_attested_node(&self, spiffe_id: &str) -> Result<Option<AttestedNode>> {
        read_tx!(self, |c| nodes::fetch(c, spiffe_id).await?)
    }

    async fn list_attested_nodes(
        &self,
        request: &ListNodesRequest,
    ) -> Result<(Vec<AttestedNode>, String)> {
        read_tx!(self, |c| nodes::list(c, request).await?)
    }

    async fn count_attested_nodes(&self, request: &ListNodesRequest) -> Result<u64> {
        read_tx!(self, |c| nodes::count(c, request).await?)
    }

    async fn update_attested_node(
        &self,
        node: AttestedNode,
        mask: AttestedNodeMask,
    ) -> Result<AttestedNode> {
        write_tx!(self, |c| nodes::update(c, node, mask).await?)
    }

    async fn delete_attested_node(&self, spiffe_id: &str) -> Result<AttestedNode> {
        write_tx!(self, |c| nodes::delete(c, spiffe_id).await?)
    }

    async fn set_node_selectors(&self, spiffe_id: &str, selectors: &[Selector]) -> Result<()> {
        write_tx!(self, |c| nodes::set_selectors(c, spiffe_id, selectors)
            .await?)
    }

    async fn get_node_selectors(&self, spiffe_id: &str) -> Result<Vec<Selector>> {
        read_tx!(self, |c| nodes::get_selectors(c, spiffe_id).await?)
    }

    async fn list_attested_node_events(&self, after: u64) -> Result<Vec<ChangeEvent>> {
        read_tx!(self, |c| entries::list_events(
            c,
            "attested_node_entries_events",
            "spiffe_id",
            after
        )
        .await?)
    }

    async fn prune_attested_node_events(&self, older_than: i64) -> Result<()> {
        write_tx!(self, |c| entries::prune_events(
            c,
            "attested_node_entries_events",
            older_than
        )
        .await?)
    }

    async fn create_join_token(&self, token: JoinToken) -> Result<()> {
        write_tx!(self, |c| misc::create_token(c, &token).await?)
    }

    async fn fetch_join_token(&self, token: &str) -> Result<Option<JoinToken>> {
        read_tx!(self, |c| misc::fetch_token(c, token).await?)
    }

    async fn take_join_token(&self, token: &str) -> Result<Option<JoinToken>> {
        write_tx!(self, |c| misc::take_token(c, token).await?)
    }

    async fn prune_join_tokens(&self, expires_before: i64) -> Result<()> {
        write_tx!(self, |c| misc::prune_tokens(c, expires_before).await?)
    }

    async fn set_ca_journal(&self, journal: CaJournal) -> Result<CaJournal> {
        write_tx!(self, |c| misc::set_journal(c, journal).await?)
    }

    async fn fetch_ca_journal(&self, id: u32) -> Result<Option<CaJournal>> {
        read_tx!(self, |c| misc::fetch_journal(c, id).await?)
    }

    async fn find_ca_journal(&self, active_x509_authority_id: &str) -> Result<Option<CaJournal>> {
        read_tx!(self, |c| misc::find_journal(c, active_x509_authority_id)
            .await?)
    }

    async fn list_ca_journals(&self) -> Result<Vec<CaJournal>> {
        read_tx!(self, |c| misc::list_journals(c).await?)
    }

    async fn create_federation_relationship(
        &self,
        relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        write_tx!(self, |c| bundles::create_relationship(c, relationship)
            .await?)
    }

    async fn fetch_federation_relationship(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::FederationRelationship>> {
        read_tx!(self, |c| bundles::fetch_relationship(c, trust_domain)
            .await?)
    }

    async fn list_federation_relationships(
        &self,
        pagination: Option<Pagination>,
    ) -> Result<(Vec<types::FederationRelationship>, String)> {
        read_tx!(self, |c| bundles::list_relationships(
            c,
            pagination.as_ref()
        )
        .await?)
    }

    async fn update_federation_relationship(
        &self,
        relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        write_tx!(self, |c| bundles::update_relationship(c, relationship)
            .await?)
    }

    async fn delete_federation_relationship(&self, trust_domain: &str) -> Result<()> {
        write_tx!(self, |c| bundles::delete_relationship(c, trust_domain)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_connection_strings_like_upstream() {
        let t = parse_sqlite_connection_string("./.data/datastore.sqlite3").unwrap();
        assert_eq!(t.path, PathBuf::from("./.data/datastore.sqlite3"));
        assert!(!t.in_memory);
        let t = parse_sqlite_connection_string("file:memdb?mode=memory&cache=shared").unwrap();
        assert_eq!(t.path, PathBuf::from("memdb"));
        assert!(t.in_memory);
        let t = parse_sqlite_connection_string("file:///var/lib/spire/ds.db?_busy_timeout=500")
            .unwrap();
        assert_eq!(t.path, PathBuf::from("/var/lib/spire/ds.db"));
        assert_eq!(t.busy_timeout, Duration::from_millis(500));
        assert!(parse_sqlite_connection_string("file:?mode=memory").is_err());
    }

    #[test]
    fn plugin_data_keys_are_checked() {
        let cfg = SqlConfig::from_plugin_data(&serde_json::json!({
            "database_type": "sqlite3",
            "connection_string": "x.db",
            "max_open_conns": 10,
            "conn_max_lifetime": "1h",
            "disable_migration": true,
        }))
        .unwrap();
        assert_eq!(cfg.max_open_conns, Some(10));
        assert!(cfg.disable_migration);
        let err = SqlConfig::from_plugin_data(&serde_json::json!({
            "database_type": "sqlite3",
            "connection_string": "x.db",
            "conection_string": "typo",
        }))
        .unwrap_err();
        assert!(err.to_string().contains("conection_string"), "{err}");
        let err = SqlConfig::from_plugin_data(&serde_json::json!({"database_type": "sqlite3"}))
            .unwrap_err();
        assert!(err.to_string().contains("connection_string"), "{err}");
    }
}
