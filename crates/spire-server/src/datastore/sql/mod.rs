//! The SQL datastore (upstream plugin `DataStore "sql"`), storing state in upstream SPIRE's own
//! schema so operators can move a database between upstream servers and ours.
//!
//! One implementation for SQLite (`sqlite3`), PostgreSQL (`postgres`) and MySQL/MariaDB
//! (`mysql`), through sqlx's `Any` driver. All SQL lives in this module's files, uses `?`
//! placeholders and portable forms; what differs per engine is in [`dialect`] (placeholders,
//! time columns, errors), [`schema`] (one table definition, DDL per engine) and [`connect`]
//! (upstream's connection string formats).
//!
//! Transactions behave the same everywhere: every call is one transaction; reads see one
//! consistent snapshot; read-modify-write calls lock the rows they change first (SQLite: one
//! writer connection with `BEGIN IMMEDIATE`; PostgreSQL/MySQL: a pool of writers, `SELECT ...
//! FOR UPDATE`), and create-or-return entry calls serialize on the `migrations` row so two
//! servers never create the same entry twice.

mod bundles;
mod connect;
mod dialect;
mod entries;
mod misc;
mod nodes;
mod proto;
mod query;
pub mod schema;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use spire_core::selector::Selector;
use spire_proto::spire::api::types;
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, ConnectOptions, Connection, Executor, Transaction};

use super::{
    AttestedNode, AttestedNodeMask, BundleMask, CaJournal, ChangeEvent, DataStore, DataStoreError,
    DeleteBundleMode, EntryMask, JoinToken, ListEntriesRequest, ListNodesRequest, Pagination,
    RefreshedBundleWrite, RegistrationEntry, Result,
};
use connect::{Target, TlsFiles};
use dialect::{Db, Dialect, db_err};

/// The `plugin_data` of `DataStore "sql"` that every engine needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlConfig {
    /// `sqlite3`, `postgres` or `mysql`.
    pub database_type: String,
    /// SQLite: a file path (relative to the working directory) or a `file:` URI. PostgreSQL:
    /// lib/pq `key=value` pairs or a `postgres://` URL. MySQL: a go-sql-driver DSN
    /// (`user:pass@tcp(host:port)/db?parseTime=true`).
    pub connection_string: String,
    /// Upper bound on open connections (upstream default 100).
    pub max_open_conns: Option<u32>,
    /// Never create or migrate the schema: an empty database is refused.
    pub disable_migration: bool,
}

/// The `plugin_data` keys that only matter for PostgreSQL and MySQL, kept apart from
/// [`SqlConfig`] so existing callers that build a `SqlConfig` keep compiling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlOptions {
    /// `ro_connection_string`: a read replica for read-only calls (not for SQLite).
    pub ro_connection_string: Option<String>,
    /// `root_ca_path` (MySQL TLS): CA bundle the server certificate must chain to.
    pub root_ca_path: Option<PathBuf>,
    /// `client_cert_path` (MySQL TLS client certificate).
    pub client_cert_path: Option<PathBuf>,
    /// `client_key_path` (MySQL TLS client key).
    pub client_key_path: Option<PathBuf>,
    /// `max_idle_conns`: accepted for compatibility; idle connections close after 30 s
    /// as upstream's fixed `ConnMaxIdleTime`, sqlx keeps no separate idle cap.
    pub max_idle_conns: Option<u32>,
    /// `conn_max_lifetime`: connections older than this are closed and replaced.
    pub conn_max_lifetime: Option<Duration>,
    /// Not an upstream key: how long a call waits for a connection (for PostgreSQL/MySQL,
    /// also while the database is unreachable) before it fails; default 15 s.
    pub acquire_timeout: Option<Duration>,
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

fn read_plugin_data(value: &serde_json::Value) -> Result<PluginData> {
    serde_json::from_value(value.clone())
        .map_err(|e| DataStoreError::InvalidArgument(format!("DataStore \"sql\" plugin_data: {e}")))
}

impl SqlConfig {
    /// Reads upstream's `plugin_data` block (as JSON), refusing unknown keys and missing
    /// required ones with the key's name, as upstream does. The PostgreSQL/MySQL-only keys
    /// are read by [`SqlOptions::from_plugin_data`].
    pub fn from_plugin_data(value: &serde_json::Value) -> Result<Self> {
        let data = read_plugin_data(value)?;
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
            parse_lifetime(lifetime)?;
        }
        Ok(Self {
            database_type,
            connection_string,
            max_open_conns,
            disable_migration: data.disable_migration.unwrap_or(false),
        })
    }
}

fn parse_lifetime(value: &str) -> Result<Duration> {
    let d = spire_core::duration::parse(value).map_err(|e| {
        DataStoreError::InvalidArgument(format!(
            "DataStore \"sql\": conn_max_lifetime {value:?}: {e}"
        ))
    })?;
    Ok(d)
}

impl SqlOptions {
    /// Reads the PostgreSQL/MySQL keys of upstream's `plugin_data` block (as JSON), with
    /// the same checks as [`SqlConfig::from_plugin_data`].
    pub fn from_plugin_data(value: &serde_json::Value) -> Result<Self> {
        let data = read_plugin_data(value)?;
        let lifetime = match &data.conn_max_lifetime {
            Some(v) => Some(parse_lifetime(v)?).filter(|d| !d.is_zero()),
            None => None,
        };
        Ok(Self {
            ro_connection_string: data.ro_connection_string.filter(|s| !s.is_empty()),
            root_ca_path: data
                .root_ca_path
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            client_cert_path: data
                .client_cert_path
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            client_key_path: data
                .client_key_path
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            max_idle_conns: data
                .max_idle_conns
                .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
            conn_max_lifetime: lifetime,
            acquire_timeout: None,
        })
    }
}

/// The SQL datastore.
#[derive(Debug, Clone)]
pub struct SqlDataStore {
    /// Writers (SQLite: one connection, every write transaction queues here).
    write: AnyPool,
    /// Readers: the `ro_connection_string` replica, else the same database (SQLite: a pool
    /// of its own that never waits for the writer thanks to WAL; in-memory: `write`).
    read: AnyPool,
    /// The engine, for rewriting queries.
    dialect: Dialect,
    /// Whether `open` created the schema (false: an existing database was opened).
    created: bool,
}

/// How long a call waits for a connection before failing as unavailable, by default.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);
/// Upstream's fixed `ConnMaxIdleTime`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn any_options(target: &Target, key: &str) -> Result<AnyConnectOptions> {
    let options: AnyConnectOptions = target
        .url
        .parse()
        .map_err(|e| DataStoreError::InvalidArgument(format!("DataStore \"sql\": {key}: {e}")))?;
    // Statements are logged by our own spans; sqlx's per-statement INFO lines would flood.
    Ok(options
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// Builds a pool whose new connections first run `init` (engine session settings).
fn pool_options(init: Vec<String>) -> AnyPoolOptions {
    AnyPoolOptions::new().after_connect(move |conn, _meta| {
        let init = init.clone();
        Box::pin(async move {
            for statement in init {
                conn.execute(sqlx::AssertSqlSafe(statement)).await?;
            }
            Ok(())
        })
    })
}

impl SqlDataStore {
    /// Opens the database and checks or creates upstream's schema. The PostgreSQL/MySQL-only
    /// keys take their defaults; see [`SqlDataStore::open_with_options`].
    pub async fn open(config: &SqlConfig) -> Result<Self> {
        Self::open_with_options(config, &SqlOptions::default()).await
    }

    /// Opens the database with every `plugin_data` option and checks or creates upstream's
    /// schema. A database that cannot be reached, refuses the credentials, or holds another
    /// schema version fails here with the cause named.
    pub async fn open_with_options(config: &SqlConfig, options: &SqlOptions) -> Result<Self> {
        sqlx::any::install_default_drivers();
        match config.database_type.as_str() {
            "sqlite3" => Self::open_sqlite(config).await,
            "postgres" | "mysql" => Self::open_server(config, options).await,
            other => Err(DataStoreError::InvalidArgument(format!(
                "DataStore \"sql\": database_type {other:?} is not supported; use \"sqlite3\", \
                 \"postgres\" or \"mysql\""
            ))),
        }
    }

    /// Parses `connection_string` (and `ro_connection_string`) as [`open_with_options`]
    /// would, without connecting: what `spire-server validate` checks, so a typo is reported
    /// before the server is started.
    ///
    /// [`open_with_options`]: Self::open_with_options
    pub fn check_connection_strings(config: &SqlConfig, options: &SqlOptions) -> Result<()> {
        sqlx::any::install_default_drivers();
        let dialect = match config.database_type.as_str() {
            "sqlite3" => {
                let target = connect::parse_sqlite(&config.connection_string)?;
                let url = Target {
                    url: connect::sqlite_url(&target)?,
                    init: Vec::new(),
                    connect_timeout: None,
                };
                return any_options(&url, "connection_string").map(drop);
            }
            "postgres" => Dialect::Postgres,
            "mysql" => Dialect::Mysql,
            other => {
                return Err(DataStoreError::InvalidArgument(format!(
                    "DataStore \"sql\": database_type {other:?} is not supported; use \
                     \"sqlite3\", \"postgres\" or \"mysql\""
                )));
            }
        };
        let strings = std::iter::once(("connection_string", &config.connection_string)).chain(
            options
                .ro_connection_string
                .iter()
                .map(|s| ("ro_connection_string", s)),
        );
        for (key, connection_string) in strings {
            let target = Self::server_target(dialect, connection_string, key, options)?;
            any_options(&target, key)?;
        }
        Ok(())
    }

    async fn open_sqlite(config: &SqlConfig) -> Result<Self> {
        let target = connect::parse_sqlite(&config.connection_string)?;
        if !target.in_memory
            && let Some(parent) = target.path.parent().filter(|p| !p.as_os_str().is_empty())
        {
            spire_common::fs::create_dir(parent, spire_common::fs::DATA_DIR_MODE).map_err(|e| {
                DataStoreError::Internal(format!(
                    "cannot create the database directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        if !target.in_memory && !target.read_only {
            protect_sqlite_files(&target.path)?;
        }
        let url = Target {
            url: connect::sqlite_url(&target)?,
            init: Vec::new(),
            connect_timeout: None,
        };
        let options = any_options(&url, "connection_string")?;
        let mut init = vec![
            "PRAGMA foreign_keys = ON".to_owned(),
            format!("PRAGMA busy_timeout = {}", target.busy_timeout.as_millis()),
        ];
        if !target.in_memory && !target.read_only {
            // With WAL, NORMAL keeps the database consistent on crash and avoids an fsync
            // per transaction (it may lose the last commits on power loss).
            init.push("PRAGMA journal_mode = WAL".to_owned());
            init.push("PRAGMA synchronous = NORMAL".to_owned());
        }
        let write = pool_options(init.clone())
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .idle_timeout(None)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                DataStoreError::Internal(format!(
                    "cannot open SQLite database {}: {e}",
                    target.path.display()
                ))
            })?;
        let created = {
            let mut tx = write
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db_err("opening the database"))?;
            let state = schema::prepare(
                &mut Db::new(&mut tx, Dialect::Sqlite),
                config.disable_migration,
            )
            .await?;
            tx.commit().await.map_err(db_err("creating the schema"))?;
            matches!(state, schema::SchemaState::Created)
        };
        let read = if target.in_memory {
            write.clone()
        } else {
            pool_options(init)
                .max_connections(config.max_open_conns.unwrap_or(100).max(1))
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(60))
                .idle_timeout(Some(IDLE_TIMEOUT))
                .test_before_acquire(false)
                .connect_lazy_with(options)
        };
        Ok(Self {
            write,
            read,
            dialect: Dialect::Sqlite,
            created,
        })
    }

    fn server_target(
        dialect: Dialect,
        connection_string: &str,
        key: &str,
        options: &SqlOptions,
    ) -> Result<Target> {
        match dialect {
            Dialect::Postgres => {
                if options.root_ca_path.is_some()
                    || options.client_cert_path.is_some()
                    || options.client_key_path.is_some()
                {
                    tracing::warn!(
                        "root_ca_path, client_cert_path and client_key_path apply to MySQL only \
                         (as upstream); for PostgreSQL set sslrootcert, sslcert and sslkey in \
                         connection_string"
                    );
                }
                if !connection_string.contains('=') && !connection_string.contains("://") {
                    return Err(DataStoreError::InvalidArgument(format!(
                        "DataStore \"sql\": {key} for database_type \"postgres\" must be \
                         key=value pairs (dbname=spire user=spire host=db sslmode=require) or \
                         a postgres:// URL; a file path is a connection string for \
                         database_type \"sqlite3\""
                    )));
                }
                connect::postgres_target(connection_string, key)
            }
            Dialect::Mysql => {
                let tls = TlsFiles {
                    root_ca: options.root_ca_path.clone(),
                    client_cert: options.client_cert_path.clone(),
                    client_key: options.client_key_path.clone(),
                };
                connect::mysql_target(connection_string, key, &tls)
            }
            Dialect::Sqlite => Err(DataStoreError::InvalidArgument(
                "SQLite has no server connection".into(),
            )),
        }
    }

    /// Connects once with the real error in hand (a pool would only say it timed out).
    async fn first_connection(
        dialect: Dialect,
        target: &Target,
        key: &str,
    ) -> Result<sqlx::AnyConnection> {
        let options = any_options(target, key)?;
        let wait = target.connect_timeout.unwrap_or(Duration::from_secs(30));
        let mut conn = match tokio::time::timeout(wait, options.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(DataStoreError::Internal(format!(
                    "cannot connect to the {} database of {key}: {e}",
                    dialect.name()
                )));
            }
            Err(_) => {
                return Err(DataStoreError::Internal(format!(
                    "cannot connect to the {} database of {key}: no answer within {}s",
                    dialect.name(),
                    wait.as_secs()
                )));
            }
        };
        for statement in &target.init {
            conn.execute(sqlx::AssertSqlSafe(statement.clone()))
                .await
                .map_err(|e| {
                    DataStoreError::InvalidArgument(format!(
                        "DataStore \"sql\": {key}: the server refused a session parameter \
                         ({statement}): {e}"
                    ))
                })?;
        }
        Ok(conn)
    }

    fn server_pool(
        target: &Target,
        key: &str,
        config: &SqlConfig,
        options: &SqlOptions,
    ) -> Result<AnyPool> {
        Ok(pool_options(target.init.clone())
            .max_connections(config.max_open_conns.unwrap_or(100).max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout.unwrap_or(ACQUIRE_TIMEOUT))
            .idle_timeout(Some(IDLE_TIMEOUT))
            .max_lifetime(options.conn_max_lifetime)
            .connect_lazy_with(any_options(target, key)?))
    }

    async fn open_server(config: &SqlConfig, options: &SqlOptions) -> Result<Self> {
        let dialect = if config.database_type == "postgres" {
            Dialect::Postgres
        } else {
            Dialect::Mysql
        };
        let target = Self::server_target(
            dialect,
            &config.connection_string,
            "connection_string",
            options,
        )?;
        let ro_target = match &options.ro_connection_string {
            Some(ro) => Some(Self::server_target(
                dialect,
                ro,
                "ro_connection_string",
                options,
            )?),
            None => None,
        };
        let mut conn = Self::first_connection(dialect, &target, "connection_string").await?;
        let state = {
            let mut tx = conn.begin().await.map_err(db_err("opening the database"))?;
            let state =
                schema::prepare(&mut Db::new(&mut tx, dialect), config.disable_migration).await?;
            tx.commit().await.map_err(db_err("creating the schema"))?;
            state
        };
        let _ = conn.close().await;
        let write = Self::server_pool(&target, "connection_string", config, options)?;
        let read = match &ro_target {
            Some(ro) => {
                // Fail now on a replica that cannot be reached, not on the first read.
                let conn = Self::first_connection(dialect, ro, "ro_connection_string").await?;
                let _ = conn.close().await;
                Self::server_pool(ro, "ro_connection_string", config, options)?
            }
            None => write.clone(),
        };
        Ok(Self {
            write,
            read,
            dialect,
            created: matches!(state, schema::SchemaState::Created),
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

    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        let tx = match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres | Dialect::Mysql => self.write.begin().await,
        };
        tx.map_err(db_err("starting a write transaction"))
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Any>> {
        let tx = match self.dialect {
            // One snapshot for every statement of the call, and never a lock.
            Dialect::Postgres => {
                self.read
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
            Dialect::Mysql => {
                self.read
                    .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await
            }
            Dialect::Sqlite => self.read.begin().await,
        };
        tx.map_err(db_err("starting a read transaction"))
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
            // An unreachable database stays Unavailable (gRPC Unavailable: clients retry).
            Err(DataStoreError::Unavailable(why)) => (0..n)
                .map(|_| {
                    Err(DataStoreError::Unavailable(format!(
                        "batch of {n} entries not stored: {why}"
                    )))
                })
                .collect(),
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
        let mut db = Db::new(&mut tx, self.dialect);
        let conn = &mut db;
        lock_entry_creation(conn).await?;
        // Entries that an input may turn out to equal: existing ones, then the batch's own.
        let mut similar: HashMap<(String, String), Vec<RegistrationEntry>> = HashMap::new();
        for e in entries::similar_candidates(conn, &pairs).await? {
            similar
                .entry((e.spiffe_id.clone(), e.parent_id.clone()))
                .or_default()
                .push(e);
        }
        let mut cache = HashMap::new();
        let mut state = BatchState {
            results: Vec::with_capacity(normalized.len()),
            pending: Vec::new(),
            similar,
            children: entries::ChildRows::default(),
            events: Vec::new(),
        };
        let mut batch_ids: HashSet<String> = HashSet::new();
        for entry in normalized {
            let index = state.results.len();
            state.results.push(None);
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    state.results[index] = Some(Err(e));
                    continue;
                }
            };
            let wanted: BTreeSet<&Selector> = entry.selectors.iter().collect();
            let same = |e: &RegistrationEntry| {
                e.spiffe_id == entry.spiffe_id
                    && e.parent_id == entry.parent_id
                    && e.selectors.iter().collect::<BTreeSet<_>>() == wanted
            };
            // An equal entry still waiting to be written settles first, so the answer
            // names a stored entry.
            if state.pending.iter().any(|(_, e, _)| same(e)) {
                state.flush(conn).await?;
            }
            let key = (entry.spiffe_id.clone(), entry.parent_id.clone());
            if let Some(existing) = state
                .similar
                .get(&key)
                .and_then(|list| list.iter().find(|e| same(e)))
            {
                state.results[index] = Some(Ok((existing.clone(), true)));
                continue;
            }
            if !batch_ids.insert(entry.entry_id.clone()) {
                state.results[index] = Some(Err(DataStoreError::AlreadyExists(format!(
                    "registration entry {:?}",
                    entry.entry_id
                ))));
                continue;
            }
            let bundle_rows =
                match entries::bundle_ids(conn, &entry.federates_with, &mut cache).await {
                    Ok(rows) => rows,
                    // Bad input fails this entry alone; a database failure fails the batch.
                    Err(e) if is_input_error(&e) => {
                        state.results[index] = Some(Err(e));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            state.pending.push((index, entry, bundle_rows));
            if state.pending.len() >= 100 {
                state.flush(conn).await?;
            }
        }
        state.flush(conn).await?;
        state.children.flush(conn).await?;
        entries::insert_events(conn, &state.events).await?;
        let results = state
            .results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(DataStoreError::Internal(
                        "an entry of the batch was left unanswered".into(),
                    ))
                })
            })
            .collect();
        tx.commit()
            .await
            .map_err(db_err("committing a batch of entries"))?;
        Ok(results)
    }
}

/// Whether an error is about the request rather than the database.
fn is_input_error(err: &DataStoreError) -> bool {
    matches!(
        err,
        DataStoreError::NotFound(_)
            | DataStoreError::AlreadyExists(_)
            | DataStoreError::InvalidArgument(_)
    )
}

/// A batch create in progress: answers so far, entries waiting for their rows to be written
/// together, and what they need once written.
struct BatchState {
    /// One answer per input, filled in as each is settled.
    results: Vec<Option<Result<(RegistrationEntry, bool)>>>,
    /// (input index, entry, federated bundle row IDs) of entries not yet written.
    pending: Vec<(usize, RegistrationEntry, Vec<i64>)>,
    /// Stored entries an input may equal, by (SPIFFE ID, parent ID).
    similar: HashMap<(String, String), Vec<RegistrationEntry>>,
    /// Child rows of written entries, flushed in bulk.
    children: entries::ChildRows,
    /// Entry IDs to record change events for.
    events: Vec<String>,
}

impl BatchState {
    /// Writes the pending entries' rows and settles their answers.
    async fn flush(&mut self, conn: &mut Db<'_>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let t = dialect::now();
        let pending = std::mem::take(&mut self.pending);
        // PostgreSQL writes children and events in the entries' statement.
        let written_whole = if conn.dialect() == Dialect::Postgres {
            let list: Vec<(&RegistrationEntry, &[i64])> =
                pending.iter().map(|(_, e, b)| (e, b.as_slice())).collect();
            entries::insert_entries_with_children(conn, &list, t).await?
        } else {
            None
        };
        let whole = written_whole.is_some();
        let row_ids = match written_whole {
            Some(row_ids) => row_ids,
            None => {
                let list: Vec<RegistrationEntry> =
                    pending.iter().map(|(_, e, _)| e.clone()).collect();
                entries::insert_entry_rows(conn, &list, t).await?
            }
        };
        for ((index, mut entry, bundle_rows), row_id) in pending.into_iter().zip(row_ids) {
            let answer = match row_id {
                Some(row_id) => {
                    if !whole {
                        self.children
                            .add(row_id, &entry, &bundle_rows, EntryMask::ALL);
                        self.events.push(entry.entry_id.clone());
                    }
                    entry.revision_number = 0;
                    entry.created_at = dialect::rounded_unix(t);
                    self.similar
                        .entry((entry.spiffe_id.clone(), entry.parent_id.clone()))
                        .or_default()
                        .push(entry.clone());
                    Ok((entry, false))
                }
                None => Err(DataStoreError::AlreadyExists(format!(
                    "registration entry {:?}",
                    entry.entry_id
                ))),
            };
            if let Some(slot) = self.results.get_mut(index) {
                *slot = Some(answer);
            }
        }
        if self.children.len() >= 1_000 {
            self.children.flush(conn).await?;
        }
        Ok(())
    }
}

/// Serializes create-or-return entry calls across servers sharing a database, so two of
/// them never both find "no equal entry" and create it twice. SQLite's write transactions
/// are exclusive already.
async fn lock_entry_creation(conn: &mut Db<'_>) -> Result<()> {
    if conn.dialect() == Dialect::Sqlite {
        return Ok(());
    }
    conn.fetch_optional(
        "SELECT id FROM migrations ORDER BY id LIMIT 1 FOR UPDATE",
        &[],
    )
    .await
    .map_err(db_err("locking entry creation"))?;
    Ok(())
}

/// Returns an equal existing entry, or inserts `entry` (without its event).
async fn create_or_return_one(
    conn: &mut Db<'_>,
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
    conn: &mut Db<'_>,
    entry: RegistrationEntry,
) -> Result<(RegistrationEntry, bool)> {
    lock_entry_creation(conn).await?;
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
        let out = {
            let mut db = Db::new(&mut tx, $self.dialect);
            let $conn = &mut db;
            $body
        };
        tx.commit().await.map_err(db_err("committing"))?;
        Ok(out)
    }};
}

/// Runs `$body` with `$conn` bound to a read transaction (one consistent snapshot).
macro_rules! read_tx {
    ($self:ident, |$conn:ident| $body:expr) => {{
        let mut tx = $self.begin_read().await?;
        let out = {
            let mut db = Db::new(&mut tx, $self.dialect);
            let $conn = &mut db;
            $body
        };
        tx.commit().await.map_err(db_err("finishing a read"))?;
        Ok(out)
    }};
}

/// Runs `$body` with `$conn` bound to a plain read connection, without a transaction: only
/// for a body of one statement, which sees one snapshot on its own (saves the BEGIN and
/// COMMIT round trips on PostgreSQL and MySQL).
macro_rules! read_one {
    ($self:ident, |$conn:ident| $body:expr) => {{
        let mut conn = $self
            .read
            .acquire()
            .await
            .map_err(db_err("getting a read connection"))?;
        let mut db = Db::new(&mut conn, $self.dialect);
        let $conn = &mut db;
        Ok($body)
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

    async fn set_refreshed_bundle(&self, bundle: types::Bundle) -> Result<RefreshedBundleWrite> {
        write_tx!(self, |c| bundles::set_refreshed(c, &bundle).await?)
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
        read_one!(self, |c| entries::list_events(
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
        read_one!(self, |c| entries::list_events(
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

/// Creates the SQLite database file 0640 before SQLite first opens it, and narrows an
/// existing one and its `-wal`, `-shm` and `-journal` files to 0640, so no other local user
/// can read the entries or a pending join token out of them (and attest a rogue agent with
/// it). SQLite gives the files it creates next to the database the database's own mode.
fn protect_sqlite_files(path: &std::path::Path) -> Result<()> {
    let io_error = |path: &std::path::Path, e: std::io::Error| {
        DataStoreError::Internal(format!(
            "cannot restrict the permissions of {}: {e}",
            path.display()
        ))
    };
    let mode = spire_common::fs::DATABASE_FILE_MODE;
    spire_common::fs::create_private_file(path, mode).map_err(|e| io_error(path, e))?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let companion = std::path::PathBuf::from(companion);
        spire_common::fs::tighten(&companion, mode).map_err(|e| io_error(&companion, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn server_only_keys_are_read_too() {
        let data = serde_json::json!({
            "database_type": "mysql",
            "connection_string": "u:p@tcp(db:3306)/spire",
            "ro_connection_string": "u:p@tcp(replica:3306)/spire",
            "root_ca_path": "/etc/ca.pem",
            "client_cert_path": "/etc/c.pem",
            "client_key_path": "/etc/k.pem",
            "max_idle_conns": 5,
            "conn_max_lifetime": "90s",
        });
        let options = SqlOptions::from_plugin_data(&data).unwrap();
        assert_eq!(
            options.ro_connection_string.as_deref(),
            Some("u:p@tcp(replica:3306)/spire")
        );
        assert_eq!(options.root_ca_path, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(options.client_key_path, Some(PathBuf::from("/etc/k.pem")));
        assert_eq!(options.max_idle_conns, Some(5));
        assert_eq!(options.conn_max_lifetime, Some(Duration::from_secs(90)));
        let err = SqlOptions::from_plugin_data(&serde_json::json!({
            "database_type": "mysql",
            "connection_string": "x",
            "conn_max_lifetime": "forever",
        }))
        .unwrap_err();
        assert!(err.to_string().contains("conn_max_lifetime"), "{err}");
    }

    #[tokio::test]
    async fn disable_migration_refuses_to_create_the_schema() {
        let config = SqlConfig {
            database_type: "sqlite3".into(),
            connection_string: "file:disable_migration_unit?mode=memory&cache=shared".into(),
            max_open_conns: None,
            disable_migration: true,
        };
        let err = SqlDataStore::open(&config).await.unwrap_err().to_string();
        assert!(err.contains("disable_migration"), "{err}");
    }

    #[tokio::test]
    async fn a_postgres_path_is_refused_with_a_hint() {
        let config = SqlConfig {
            database_type: "postgres".into(),
            connection_string: "/var/lib/spire/datastore.sqlite3".into(),
            max_open_conns: None,
            disable_migration: false,
        };
        let err = SqlDataStore::open(&config).await.unwrap_err();
        assert!(matches!(err, DataStoreError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("sqlite3"), "{err}");
    }

    /// A connection string of `env` with its database replaced by `db`, in the same format.
    fn with_db(dialect: Dialect, base: &str, db: &str) -> String {
        match dialect {
            Dialect::Postgres if base.contains("://") => {
                let (path, query) = base.split_once('?').unwrap_or((base, ""));
                let (prefix, _) = path.rsplit_once('/').unwrap();
                format!("{prefix}/{db}?{query}")
            }
            Dialect::Postgres => format!("{base} dbname={db}"),
            _ => {
                let (path, query) = base.split_once('?').unwrap_or((base, ""));
                let (prefix, _) = path.rsplit_once('/').unwrap();
                format!("{prefix}/{db}?{query}")
            }
        }
    }

    /// Runs one statement on the database a connection string names.
    async fn admin(
        dialect: Dialect,
        connection_string: &str,
        sql: &str,
    ) -> std::result::Result<(), String> {
        let target = SqlDataStore::server_target(
            dialect,
            connection_string,
            "connection_string",
            &SqlOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        let mut conn = SqlDataStore::first_connection(dialect, &target, "connection_string")
            .await
            .map_err(|e| e.to_string())?;
        let result = conn
            .execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .map(|_| ())
            .map_err(|e| format!("{sql}: {e}"));
        let _ = conn.close().await;
        result
    }

    /// `DROP DATABASE IF EXISTS` (with FORCE on PostgreSQL, which ends the sessions still on
    /// it), tried up to five times with a growing pause: a drop can lose a race with the
    /// server's own sessions on the database (an autovacuum worker, a connection closing).
    async fn drop_database(
        dialect: Dialect,
        base: &str,
        quoted: &str,
    ) -> std::result::Result<(), String> {
        let sql = match dialect {
            Dialect::Postgres => format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
            _ => format!("DROP DATABASE IF EXISTS {quoted}"),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match admin(dialect, base, &sql).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 5 => return Err(format!("failed {tries} times, last: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200) * tries).await,
            }
        }
    }

    /// A fresh database `quoted` on the server `base` names (a leftover is dropped first).
    async fn create_database(dialect: Dialect, base: &str, quoted: &str) {
        drop_database(dialect, base, quoted)
            .await
            .unwrap_or_else(|e| panic!("dropping a leftover {quoted}: {e}"));
        admin(dialect, base, &format!("CREATE DATABASE {quoted}"))
            .await
            .unwrap_or_else(|e| panic!("creating {quoted}: {e}"));
    }

    /// Drops the test's database once its assertions passed: a failure is reported, not
    /// fatal.
    async fn remove_database(dialect: Dialect, base: &str, quoted: &str) {
        if let Err(e) = drop_database(dialect, base, quoted).await {
            eprintln!("warning: dropping {quoted}: {e}; it is left on the server");
        }
    }

    /// The host and port of the database server a connection string names.
    fn server_address(dialect: Dialect, connection_string: &str) -> (String, u16) {
        let target = SqlDataStore::server_target(
            dialect,
            connection_string,
            "connection_string",
            &SqlOptions::default(),
        )
        .unwrap();
        let uri: http::Uri = target.url.parse().unwrap();
        let host = uri.host().unwrap_or("127.0.0.1");
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let default_port = match dialect {
            Dialect::Mysql => 3306,
            _ => 5432,
        };
        (host, uri.port_u16().unwrap_or(default_port))
    }

    async fn plan_cache_mode(pool: &AnyPool) -> String {
        sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// On the servers the integration harness names (SPIRE_TEST_POSTGRES, SPIRE_TEST_MYSQL):
    /// both PostgreSQL formats, a read pool of its own, the schema created and found again,
    /// a wrong password and a closed port refused at open with the cause named.
    #[tokio::test]
    async fn server_engines_open_with_upstream_connection_strings() {
        sqlx::any::install_default_drivers();
        for (dialect, var) in [
            (Dialect::Postgres, "SPIRE_TEST_POSTGRES"),
            (Dialect::Mysql, "SPIRE_TEST_MYSQL"),
        ] {
            let Ok(base) = std::env::var(var) else {
                println!("skipped {}: {var} is not set", dialect.name());
                continue;
            };
            let name = format!("spire_unit_{}", std::process::id());
            let quoted = match dialect {
                Dialect::Mysql => format!("`{name}`"),
                _ => format!("\"{name}\""),
            };
            create_database(dialect, &base, &quoted).await;
            let connection_string = with_db(dialect, &base, &name);
            let ro = match dialect {
                // The other PostgreSQL format for the read pool.
                Dialect::Postgres => {
                    let url = connect::postgres_target(&connection_string, "x")
                        .unwrap()
                        .url;
                    Some(url)
                }
                _ => Some(connection_string.clone()),
            };
            let config = SqlConfig {
                database_type: dialect.name().into(),
                connection_string: connection_string.clone(),
                max_open_conns: Some(4),
                disable_migration: false,
            };
            let options = SqlOptions {
                ro_connection_string: ro,
                conn_max_lifetime: Some(Duration::from_secs(60)),
                ..SqlOptions::default()
            };
            let ds = SqlDataStore::open_with_options(&config, &options)
                .await
                .unwrap();
            assert!(ds.created_schema());
            if dialect == Dialect::Postgres {
                // Every statement is planned with its parameters on both pools, unless the
                // connection string chooses otherwise.
                for pool in [&ds.write, &ds.read] {
                    assert_eq!(plan_cache_mode(pool).await, "force_custom_plan");
                }
                let own = SqlDataStore::open(&SqlConfig {
                    connection_string: format!("{connection_string} plan_cache_mode=auto"),
                    ..config.clone()
                })
                .await
                .unwrap();
                assert_eq!(plan_cache_mode(&own.write).await, "auto");
                own.close().await;
            }
            ds.create_join_token(JoinToken {
                token: "t".into(),
                expiry: 42,
            })
            .await
            .unwrap();
            assert_eq!(ds.fetch_join_token("t").await.unwrap().unwrap().expiry, 42);
            ds.close().await;
            let ds = SqlDataStore::open_with_options(&config, &options)
                .await
                .unwrap();
            assert!(!ds.created_schema());
            ds.close().await;

            let wrong = match dialect {
                Dialect::Postgres => format!("{connection_string} password=wrong"),
                _ => connection_string.replacen(':', ":wrong", 1),
            };
            let err = SqlDataStore::open(&SqlConfig {
                connection_string: wrong,
                ..config.clone()
            })
            .await
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("cannot connect") && err.contains(dialect.name()),
                "{err}"
            );
            println!("{}: wrong password: {err}", dialect.name());
            let closed = match dialect {
                Dialect::Postgres => format!("{connection_string} host=127.0.0.1 port=1"),
                _ => format!("{}@tcp(127.0.0.1:1)/{name}", "spire"),
            };
            let err = SqlDataStore::open(&SqlConfig {
                connection_string: closed,
                ..config.clone()
            })
            .await
            .unwrap_err()
            .to_string();
            assert!(err.contains("cannot connect"), "{err}");
            println!("{}: closed port: {err}", dialect.name());
            remove_database(dialect, &base, &quoted).await;
        }
    }

    /// A loopback TCP forwarder that can be cut (every connection closed, new ones accepted
    /// and closed at once) and restored, standing in for a database that goes away. It keeps
    /// its port all along, so nothing else can take it while the database is away.
    struct Forwarder {
        port: u16,
        open: std::sync::Arc<std::sync::atomic::AtomicBool>,
        cuts: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
        accept: tokio::task::JoinHandle<()>,
    }

    impl Forwarder {
        async fn start(target: (String, u16)) -> Self {
            use std::sync::Arc;
            use std::sync::atomic::{AtomicBool, Ordering};

            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            let open = Arc::new(AtomicBool::new(true));
            let cuts = Arc::new(tokio::sync::watch::channel(0_u64).0);
            let (accept_open, accept_cuts) = (Arc::clone(&open), Arc::clone(&cuts));
            let accept = tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    // Subscribed before the check: a cut after the check still ends this relay.
                    let mut cut = accept_cuts.subscribe();
                    if !accept_open.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = cut.changed() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            });
            Self {
                port,
                open,
                cuts,
                accept,
            }
        }

        fn cut(&self) {
            self.open.store(false, std::sync::atomic::Ordering::SeqCst);
            self.cuts.send_modify(|n| *n += 1);
        }

        fn restore(&self) {
            self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Drop for Forwarder {
        fn drop(&mut self) {
            self.accept.abort();
            self.cut();
        }
    }

    /// A database that goes away makes calls fail as unavailable within the acquire timeout,
    /// and the store recovers by itself, data intact, once it is back.
    #[tokio::test]
    async fn a_database_that_goes_away_fails_calls_then_recovers() {
        sqlx::any::install_default_drivers();
        for (dialect, var) in [
            (Dialect::Postgres, "SPIRE_TEST_POSTGRES"),
            (Dialect::Mysql, "SPIRE_TEST_MYSQL"),
        ] {
            let Ok(base) = std::env::var(var) else {
                println!("skipped {}: {var} is not set", dialect.name());
                continue;
            };
            let name = format!("spire_unit_gone_{}", std::process::id());
            let quoted = match dialect {
                Dialect::Mysql => format!("`{name}`"),
                _ => format!("\"{name}\""),
            };
            create_database(dialect, &base, &quoted).await;
            let direct = with_db(dialect, &base, &name);
            let forwarder = Forwarder::start(server_address(dialect, &base)).await;
            let via = match dialect {
                Dialect::Postgres => format!("{direct} host=127.0.0.1 port={}", forwarder.port),
                _ => {
                    let (_, rest) = direct.split_once('@').unwrap();
                    let (_, db) = rest.split_once(')').unwrap();
                    let (userinfo, _) = direct.split_once('@').unwrap();
                    format!("{userinfo}@tcp(127.0.0.1:{}){db}", forwarder.port)
                }
            };
            let config = SqlConfig {
                database_type: dialect.name().into(),
                connection_string: via,
                max_open_conns: Some(2),
                disable_migration: false,
            };
            let options = SqlOptions {
                acquire_timeout: Some(Duration::from_secs(2)),
                ..SqlOptions::default()
            };
            let ds = SqlDataStore::open_with_options(&config, &options)
                .await
                .unwrap();
            ds.create_join_token(JoinToken {
                token: "kept".into(),
                expiry: 7,
            })
            .await
            .unwrap();

            forwarder.cut();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let err = ds.fetch_join_token("kept").await.unwrap_err().to_string();
            assert!(err.contains("unavailable"), "{}: {err}", dialect.name());
            let err = ds
                .create_join_token(JoinToken {
                    token: "lost".into(),
                    expiry: 7,
                })
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("unavailable"), "{}: {err}", dialect.name());
            // BatchCreateEntry's path keeps the kind, so the API answers Unavailable.
            let results = ds
                .create_or_return_registration_entries_batch(vec![RegistrationEntry {
                    spiffe_id: "spiffe://example.org/gone".into(),
                    parent_id: "spiffe://example.org/agent".into(),
                    selectors: vec![Selector {
                        kind: "unix".into(),
                        value: "uid:1".into(),
                    }],
                    ..RegistrationEntry::default()
                }])
                .await;
            assert!(
                matches!(results.as_slice(), [Err(DataStoreError::Unavailable(_))]),
                "{}: {results:?}",
                dialect.name()
            );

            forwarder.restore();
            assert_eq!(
                ds.fetch_join_token("kept").await.unwrap().unwrap().expiry,
                7,
                "{}",
                dialect.name()
            );
            ds.create_join_token(JoinToken {
                token: "after".into(),
                expiry: 8,
            })
            .await
            .unwrap();
            ds.close().await;
            drop(forwarder);
            remove_database(dialect, &base, &quoted).await;
        }
    }
}
