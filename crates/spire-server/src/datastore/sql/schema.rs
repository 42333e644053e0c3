//! Upstream SPIRE's SQL schema, version 23 (SPIRE 1.8 through 1.14), written the way upstream's
//! gorm v1 creates it on SQLite, so a database can be shared with (or handed back to) upstream
//! SPIRE servers. Facts from upstream `pkg/server/datastore/sqlstore/models.go` and
//! `migration.go`; the statements match the dump upstream's migration test keeps for v23.

use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::dialect::{Arg, bind_all, db_err, now};
use crate::datastore::{DataStoreError, Result};

/// The schema version upstream SPIRE 1.8 through 1.14 writes into `migrations.version`.
pub const SCHEMA_VERSION: i64 = 23;

/// The code version we record in `migrations.code_version` when we create a database.
pub const CODE_VERSION: &str = "1.14.0";

/// Every table of schema 23 with its columns, as gorm creates them on SQLite.
pub(crate) const TABLES: &[(&str, &str)] = &[
    (
        "federated_registration_entries",
        r#"CREATE TABLE "federated_registration_entries" ("bundle_id" integer,"registered_entry_id" integer, PRIMARY KEY ("bundle_id","registered_entry_id"))"#,
    ),
    (
        "bundles",
        r#"CREATE TABLE "bundles" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"trust_domain" varchar(255) NOT NULL,"data" blob )"#,
    ),
    (
        "attested_node_entries",
        r#"CREATE TABLE "attested_node_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255),"data_type" varchar(255),"serial_number" varchar(255),"expires_at" datetime,"new_serial_number" varchar(255),"new_expires_at" datetime,"can_reattest" bool )"#,
    ),
    (
        "attested_node_entries_events",
        r#"CREATE TABLE "attested_node_entries_events" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255) )"#,
    ),
    (
        "node_resolver_map_entries",
        r#"CREATE TABLE "node_resolver_map_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255),"type" varchar(255),"value" varchar(255) )"#,
    ),
    (
        "registered_entries",
        r#"CREATE TABLE "registered_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"entry_id" varchar(255),"spiffe_id" varchar(255),"parent_id" varchar(255),"ttl" integer,"admin" bool,"downstream" bool,"expiry" bigint,"revision_number" bigint,"store_svid" bool,"hint" varchar(255),"jwt_svid_ttl" integer )"#,
    ),
    (
        "registered_entries_events",
        r#"CREATE TABLE "registered_entries_events" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"entry_id" varchar(255) )"#,
    ),
    (
        "join_tokens",
        r#"CREATE TABLE "join_tokens" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"token" varchar(255),"expiry" bigint )"#,
    ),
    (
        "selectors",
        r#"CREATE TABLE "selectors" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"registered_entry_id" integer,"type" varchar(255),"value" varchar(255) )"#,
    ),
    (
        "migrations",
        r#"CREATE TABLE "migrations" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"version" integer,"code_version" varchar(255) )"#,
    ),
    (
        "dns_names",
        r#"CREATE TABLE "dns_names" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"registered_entry_id" integer,"value" varchar(255) )"#,
    ),
    (
        "federated_trust_domains",
        r#"CREATE TABLE "federated_trust_domains" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"trust_domain" varchar(255) NOT NULL,"bundle_endpoint_url" varchar(255),"bundle_endpoint_profile" varchar(255),"endpoint_spiffe_id" varchar(255),"implicit" bool )"#,
    ),
    (
        "ca_journals",
        r#"CREATE TABLE "ca_journals" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"data" blob,"active_x509_authority_id" varchar(255),"active_jwt_authority_id" varchar(255) )"#,
    ),
];

/// Every index of schema 23, with gorm's names.
pub(crate) const INDEXES: &[&str] = &[
    r#"CREATE UNIQUE INDEX uix_bundles_trust_domain ON "bundles"(trust_domain)"#,
    r#"CREATE INDEX idx_attested_node_entries_expires_at ON "attested_node_entries"(expires_at)"#,
    r#"CREATE UNIQUE INDEX uix_attested_node_entries_spiffe_id ON "attested_node_entries"(spiffe_id)"#,
    r#"CREATE UNIQUE INDEX idx_node_resolver_map ON "node_resolver_map_entries"(spiffe_id, "type", "value")"#,
    r#"CREATE INDEX idx_registered_entries_spiffe_id ON "registered_entries"(spiffe_id)"#,
    r#"CREATE INDEX idx_registered_entries_parent_id ON "registered_entries"(parent_id)"#,
    r#"CREATE INDEX idx_registered_entries_expiry ON "registered_entries"("expiry")"#,
    r#"CREATE INDEX idx_registered_entries_hint ON "registered_entries"("hint")"#,
    r#"CREATE UNIQUE INDEX uix_registered_entries_entry_id ON "registered_entries"(entry_id)"#,
    r#"CREATE UNIQUE INDEX uix_join_tokens_token ON "join_tokens"("token")"#,
    r#"CREATE INDEX idx_selectors_type_value ON "selectors"("type", "value")"#,
    r#"CREATE UNIQUE INDEX idx_selector_entry ON "selectors"(registered_entry_id, "type", "value")"#,
    r#"CREATE UNIQUE INDEX idx_dns_entry ON "dns_names"(registered_entry_id, "value")"#,
    r#"CREATE UNIQUE INDEX uix_federated_trust_domains_trust_domain ON "federated_trust_domains"(trust_domain)"#,
    r#"CREATE INDEX idx_ca_journals_active_x509_authority_id ON "ca_journals"(active_x509_authority_id)"#,
    r#"CREATE INDEX idx_ca_journals_active_jwt_authority_id ON "ca_journals"(active_jwt_authority_id)"#,
    r#"CREATE INDEX idx_federated_registration_entries_registered_entry_id ON "federated_registration_entries"(registered_entry_id)"#,
];

/// What [`prepare`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SchemaState {
    /// The database was empty; the schema and the migrations row were created.
    Created,
    /// The database already had schema 23; nothing was changed.
    Current {
        /// `migrations.code_version` as stored.
        code_version: String,
    },
}

async fn table_exists(conn: &mut SqliteConnection, name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err("checking the schema"))?;
    let n: i64 = row.try_get(0).map_err(db_err("checking the schema"))?;
    Ok(n > 0)
}

/// Creates the schema in an empty database, or checks that an existing one is schema 23.
///
/// Older schemas are refused: upstream itself only migrates from the previous minor release's
/// schema, and 23 has been current since SPIRE 1.8, so an older database must first be
/// upgraded by the upstream release that understands it. Newer schemas are refused because
/// we cannot know what they changed.
pub(crate) async fn prepare(conn: &mut SqliteConnection) -> Result<SchemaState> {
    if !table_exists(conn, "migrations").await? {
        create(conn).await?;
        return Ok(SchemaState::Created);
    }
    let row = sqlx::query("SELECT version, code_version FROM migrations ORDER BY id LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err("reading the schema version"))?;
    let Some(row) = row else {
        return Err(DataStoreError::Internal(
            "the database has a migrations table without a version row; it was not created by \
             SPIRE, or its creation was interrupted: restore it from a backup or point \
             connection_string at an empty database"
                .into(),
        ));
    };
    let version: Option<i64> = row
        .try_get(0)
        .map_err(db_err("reading the schema version"))?;
    let code_version: Option<String> = row
        .try_get(1)
        .map_err(db_err("reading the schema version"))?;
    let version = version.unwrap_or(0);
    let code_version = code_version.unwrap_or_default();
    let written_by = if code_version.is_empty() {
        String::from("an unknown SPIRE version")
    } else {
        format!("SPIRE {code_version}")
    };
    if version == SCHEMA_VERSION {
        // Every table of the current schema must be there, or queries fail later in
        // confusing ways.
        for (table, _) in TABLES {
            if !table_exists(conn, table).await? {
                return Err(DataStoreError::Internal(format!(
                    "the database claims schema version {SCHEMA_VERSION} but has no table \
                     {table:?}; it is damaged: restore it from a backup"
                )));
            }
        }
        return Ok(SchemaState::Current { code_version });
    }
    if version > SCHEMA_VERSION {
        return Err(DataStoreError::Internal(format!(
            "the database has schema version {version} (written by {written_by}), newer than \
             version {SCHEMA_VERSION} that this server supports; run the SPIRE release that \
             wrote it, or upgrade this server"
        )));
    }
    Err(DataStoreError::Internal(format!(
        "the database has schema version {version} (written by {written_by}); this server \
         supports only version {SCHEMA_VERSION} (SPIRE 1.8 and later): upgrade the database by \
         running upstream SPIRE 1.8 (or a later 1.x) on it once, then start this server"
    )))
}

async fn create(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(db_err("creating the schema"))?;
    for (_, ddl) in TABLES {
        sqlx::query(*ddl)
            .execute(&mut *tx)
            .await
            .map_err(db_err("creating the schema"))?;
    }
    for ddl in INDEXES {
        sqlx::query(*ddl)
            .execute(&mut *tx)
            .await
            .map_err(db_err("creating the schema"))?;
    }
    let t = now();
    bind_all(
        sqlx::query(
            "INSERT INTO migrations (created_at, updated_at, version, code_version) \
             VALUES (?, ?, ?, ?)",
        ),
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Int(SCHEMA_VERSION),
            Arg::Text(CODE_VERSION.into()),
        ],
    )
    .execute(&mut *tx)
    .await
    .map_err(db_err("recording the schema version"))?;
    tx.commit().await.map_err(db_err("creating the schema"))?;
    Ok(())
}
