//! Upstream SPIRE's SQL schema, version 23 (SPIRE 1.8 through 1.14), written the way upstream's
//! gorm v1 creates it on SQLite, PostgreSQL and MySQL (one table definition, one type mapping
//! per engine), so a database can be shared with (or handed back to) upstream SPIRE servers.
//! Facts from upstream `pkg/server/datastore/sqlstore/models.go`, `migration.go` and gorm v1's
//! dialects; the SQLite statements match the dump upstream's migration test keeps for v23.
//!
//! Schemas 24 and 25 (SPIRE 1.14.7 and 1.15) only add one column each
//! ([`LATER_COLUMNS`]). We add those columns to a version-23 database without raising its
//! version, so upstream 1.8 to 1.14 (which refuse any newer version) still open it, and
//! 1.15's migration (gorm's AutoMigrate, which skips existing columns) still runs on it.

use sqlx::Row;

use super::dialect::{Arg, Db, Dialect, db_err, now};
use crate::datastore::{DataStoreError, Result};

/// The schema version upstream SPIRE 1.8 through 1.14 writes into `migrations.version`; the
/// one we write when we create a database.
pub const SCHEMA_VERSION: i64 = 23;

/// The newest schema version we open: 25, SPIRE 1.15's.
pub const LATEST_SCHEMA_VERSION: i64 = 25;

/// Columns of schemas 24 and 25, as gorm v1's AutoMigrate adds them: `(table, column,
/// type, the upstream release that added it)`. Every database we open has them.
pub(crate) const LATER_COLUMNS: &[(&str, &str, ColumnType, &str)] = &[
    (
        "attested_node_entries",
        "agent_version",
        ColumnType::Text,
        "1.14.7 (schema 24)",
    ),
    (
        "registered_entries",
        "additional_attributes",
        ColumnType::LongBlob,
        "1.15 (schema 25)",
    ),
];

/// The code version we record in `migrations.code_version` when we create a database.
pub const CODE_VERSION: &str = "1.14.0";

/// The type of a column, as gorm v1 derives it from upstream's Go model field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    /// `ID uint` with `primary_key`: an auto-incremented key.
    Id,
    /// `time.Time` / `*time.Time`.
    Time,
    /// `string` (gorm's default size 255; `text` on PostgreSQL).
    Text,
    /// `string` tagged `not null`.
    TextNotNull,
    /// `int` / `int32`.
    Int,
    /// `uint` foreign keys (`registered_entry_id`, `bundle_id`).
    Uint,
    /// `int64`.
    BigInt,
    /// `bool`.
    Bool,
    /// `[]byte`.
    Blob,
    /// `[]byte` tagged `size:65535` (gorm: `longblob` on MySQL, as 65535 is past varbinary's
    /// limit; the same as `Blob` elsewhere).
    LongBlob,
}

impl ColumnType {
    /// The column type gorm v1's dialect for `d` writes.
    fn sql(self, d: Dialect) -> &'static str {
        use ColumnType as C;
        match (self, d) {
            (C::Id, Dialect::Sqlite) => "integer primary key autoincrement",
            (C::Id, Dialect::Postgres) => "serial",
            (C::Id, Dialect::Mysql) => "int unsigned AUTO_INCREMENT",
            (C::Time, Dialect::Sqlite) => "datetime",
            (C::Time, Dialect::Postgres) => "timestamp with time zone",
            (C::Time, Dialect::Mysql) => "DATETIME NULL",
            // gorm's PostgreSQL dialect uses text for strings without a size tag.
            (C::Text, Dialect::Postgres) => "text",
            (C::TextNotNull, Dialect::Postgres) => "text NOT NULL",
            (C::Text, Dialect::Sqlite | Dialect::Mysql) => "varchar(255)",
            (C::TextNotNull, Dialect::Sqlite | Dialect::Mysql) => "varchar(255) NOT NULL",
            (C::Int, Dialect::Sqlite | Dialect::Postgres) => "integer",
            (C::Int, Dialect::Mysql) => "int",
            (C::Uint, Dialect::Sqlite | Dialect::Postgres) => "integer",
            (C::Uint, Dialect::Mysql) => "int unsigned",
            (C::BigInt, _) => "bigint",
            (C::Bool, Dialect::Sqlite) => "bool",
            (C::Bool, Dialect::Postgres | Dialect::Mysql) => "boolean",
            (C::Blob | C::LongBlob, Dialect::Sqlite) => "blob",
            (C::Blob | C::LongBlob, Dialect::Postgres) => "bytea",
            (C::Blob | C::LongBlob, Dialect::Mysql) => "longblob",
        }
    }
}

/// One table of the schema: its columns, and the composite key of a join table.
#[derive(Debug)]
pub(crate) struct Table {
    /// The table name.
    pub(crate) name: &'static str,
    /// Columns in gorm's order.
    pub(crate) columns: &'static [(&'static str, ColumnType)],
    /// For many-to-many join tables: the key columns (no `id`).
    pub(crate) join_key: Option<&'static [&'static str]>,
}

use ColumnType::{BigInt, Blob, Bool, Id, Int, Text, TextNotNull, Time, Uint};

/// The columns every gorm `Model` starts with.
macro_rules! model {
    ($($rest:tt)*) => {
        &[("id", Id), ("created_at", Time), ("updated_at", Time), $($rest)*]
    };
}

/// Every table of schema 23, in the order upstream's migration creates them. The one
/// definition every engine's DDL is generated from.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "federated_registration_entries",
        columns: &[("bundle_id", Uint), ("registered_entry_id", Uint)],
        join_key: Some(&["bundle_id", "registered_entry_id"]),
    },
    Table {
        name: "bundles",
        columns: model![("trust_domain", TextNotNull), ("data", Blob)],
        join_key: None,
    },
    Table {
        name: "attested_node_entries",
        columns: model![
            ("spiffe_id", Text),
            ("data_type", Text),
            ("serial_number", Text),
            ("expires_at", Time),
            ("new_serial_number", Text),
            ("new_expires_at", Time),
            ("can_reattest", Bool),
        ],
        join_key: None,
    },
    Table {
        name: "attested_node_entries_events",
        columns: model![("spiffe_id", Text)],
        join_key: None,
    },
    Table {
        name: "node_resolver_map_entries",
        columns: model![("spiffe_id", Text), ("type", Text), ("value", Text)],
        join_key: None,
    },
    Table {
        name: "registered_entries",
        columns: model![
            ("entry_id", Text),
            ("spiffe_id", Text),
            ("parent_id", Text),
            ("ttl", Int),
            ("admin", Bool),
            ("downstream", Bool),
            ("expiry", BigInt),
            ("revision_number", BigInt),
            ("store_svid", Bool),
            ("hint", Text),
            ("jwt_svid_ttl", Int),
        ],
        join_key: None,
    },
    Table {
        name: "registered_entries_events",
        columns: model![("entry_id", Text)],
        join_key: None,
    },
    Table {
        name: "join_tokens",
        columns: model![("token", Text), ("expiry", BigInt)],
        join_key: None,
    },
    Table {
        name: "selectors",
        columns: model![
            ("registered_entry_id", Uint),
            ("type", Text),
            ("value", Text)
        ],
        join_key: None,
    },
    Table {
        name: "migrations",
        columns: model![("version", Int), ("code_version", Text)],
        join_key: None,
    },
    Table {
        name: "dns_names",
        columns: model![("registered_entry_id", Uint), ("value", Text)],
        join_key: None,
    },
    Table {
        name: "federated_trust_domains",
        columns: model![
            ("trust_domain", TextNotNull),
            ("bundle_endpoint_url", Text),
            ("bundle_endpoint_profile", Text),
            ("endpoint_spiffe_id", Text),
            ("implicit", Bool),
        ],
        join_key: None,
    },
    Table {
        name: "ca_journals",
        columns: model![
            ("data", Blob),
            ("active_x509_authority_id", Text),
            ("active_jwt_authority_id", Text),
        ],
        join_key: None,
    },
];

/// Every index of schema 23, with gorm's names, written with `"` quotes (MySQL gets
/// backquotes).
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

fn quote(d: Dialect, name: &str) -> String {
    match d {
        Dialect::Mysql => format!("`{name}`"),
        Dialect::Sqlite | Dialect::Postgres => format!("\"{name}\""),
    }
}

/// The table options upstream's migration gives gorm on MySQL.
const MYSQL_TABLE_OPTIONS: &str = " ENGINE=InnoDB  ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8";

/// The `CREATE TABLE` statement gorm v1 writes for `table` on `d`.
pub(crate) fn create_table_sql(table: &Table, d: Dialect) -> String {
    let options = if d == Dialect::Mysql {
        MYSQL_TABLE_OPTIONS
    } else {
        ""
    };
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|(name, ty)| format!("{} {}", quote(d, name), ty.sql(d)))
        .collect();
    let columns = columns.join(",");
    let name = quote(d, table.name);
    if let Some(key) = table.join_key {
        let key: Vec<String> = key.iter().map(|k| quote(d, k)).collect();
        return format!(
            "CREATE TABLE {name} ({columns}, PRIMARY KEY ({})){options}",
            key.join(",")
        );
    }
    // SQLite declares the key inline; the others get gorm's trailing PRIMARY KEY clause.
    let key = if d == Dialect::Sqlite {
        String::new()
    } else {
        format!(", PRIMARY KEY ({})", quote(d, "id"))
    };
    format!("CREATE TABLE {name} ({columns} {key}){options}")
}

/// An index statement of [`INDEXES`] for `d`.
pub(crate) fn create_index_sql(ddl: &str, d: Dialect) -> String {
    match d {
        Dialect::Mysql => ddl.replace('"', "`"),
        Dialect::Sqlite | Dialect::Postgres => ddl.to_owned(),
    }
}

/// What [`prepare`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SchemaState {
    /// The database was empty; the schema and the migrations row were created.
    Created,
    /// The database already had schema 23, 24 or 25 (any missing [`LATER_COLUMNS`] were
    /// added).
    Current {
        /// `migrations.code_version` as stored.
        code_version: String,
    },
}

async fn table_exists(db: &mut Db<'_>, name: &str) -> Result<bool> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = ?"
        }
        Dialect::Mysql => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?"
        }
    };
    let row = db
        .fetch_one(sql, &[Arg::Text(name.to_owned())])
        .await
        .map_err(db_err("checking the schema"))?;
    let n: i64 = row.try_get(0).map_err(db_err("checking the schema"))?;
    Ok(n > 0)
}

async fn column_exists(db: &mut Db<'_>, table: &str, column: &str) -> Result<bool> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?",
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?"
        }
        Dialect::Mysql => {
            "SELECT COUNT(*) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?"
        }
    };
    let row = db
        .fetch_one(
            sql,
            &[Arg::Text(table.to_owned()), Arg::Text(column.to_owned())],
        )
        .await
        .map_err(db_err("checking the schema"))?;
    let n: i64 = row.try_get(0).map_err(db_err("checking the schema"))?;
    Ok(n > 0)
}

/// The statement gorm v1's AutoMigrate writes to add a column.
pub(crate) fn add_column_sql(table: &str, column: &str, ty: ColumnType, d: Dialect) -> String {
    format!(
        "ALTER TABLE {} ADD {} {}",
        quote(d, table),
        quote(d, column),
        ty.sql(d)
    )
}

/// Adds every missing [`LATER_COLUMNS`] column; with `disable_migration`, names them and
/// refuses instead, as upstream refuses a schema it would have to migrate.
async fn add_later_columns(db: &mut Db<'_>, disable_migration: bool) -> Result<()> {
    let d = db.dialect();
    for &(table, column, ty, release) in LATER_COLUMNS {
        if column_exists(db, table, column).await? {
            continue;
        }
        let ddl = add_column_sql(table, column, ty, d);
        if disable_migration {
            return Err(DataStoreError::Internal(format!(
                "the database has no column {table}.{column} (added by SPIRE {release}) and \
                 disable_migration is set, so this server will not add it: start it once \
                 without disable_migration, or run `{ddl}`"
            )));
        }
        if let Err(e) = db.execute(&ddl, &[]).await {
            // Another server starting on the same database may have added it meanwhile.
            if column_exists(db, table, column).await.unwrap_or(false) {
                continue;
            }
            return Err(db_err("adding a column of a later schema")(e));
        }
        tracing::info!("added column {table}.{column} of SPIRE {release}'s schema");
    }
    Ok(())
}

/// Creates the schema in an empty database, or checks that an existing one is schema 23, 24
/// or 25, adding the [`LATER_COLUMNS`] it lacks.
///
/// Older schemas are refused: upstream itself only migrates from the previous minor release's
/// schema, and 23 has been current since SPIRE 1.8, so an older database must first be
/// upgraded by the upstream release that understands it. Newer schemas are refused because
/// we cannot know what they changed. With `disable_migration` an empty database is refused
/// too, as upstream does: the operator asked that this server never change the schema.
pub(crate) async fn prepare(db: &mut Db<'_>, disable_migration: bool) -> Result<SchemaState> {
    if !table_exists(db, "migrations").await? {
        if disable_migration {
            return Err(DataStoreError::Internal(format!(
                "the {} database has no SPIRE schema and disable_migration is set, so this \
                 server will not create it: unset disable_migration once (or let a server \
                 without it create the schema), or point connection_string at a SPIRE database",
                db.dialect().name()
            )));
        }
        create(db).await?;
        add_later_columns(db, false).await?;
        return Ok(SchemaState::Created);
    }
    let row = db
        .fetch_optional(
            "SELECT version, code_version FROM migrations ORDER BY id LIMIT 1",
            &[],
        )
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
    if (SCHEMA_VERSION..=LATEST_SCHEMA_VERSION).contains(&version) {
        // Every table of the current schema must be there, or queries fail later in
        // confusing ways.
        for table in TABLES {
            if !table_exists(db, table.name).await? {
                return Err(DataStoreError::Internal(format!(
                    "the database claims schema version {version} but has no table {:?}; it \
                     is damaged: restore it from a backup",
                    table.name
                )));
            }
        }
        add_later_columns(db, disable_migration).await?;
        return Ok(SchemaState::Current { code_version });
    }
    if version > LATEST_SCHEMA_VERSION {
        return Err(DataStoreError::Internal(format!(
            "the database has schema version {version} (written by {written_by}), newer than \
             version {LATEST_SCHEMA_VERSION} that this server supports; run the SPIRE release \
             that wrote it, or upgrade this server"
        )));
    }
    let disabled = if disable_migration {
        " (disable_migration is set: this server would not migrate it anyway)"
    } else {
        ""
    };
    Err(DataStoreError::Internal(format!(
        "the database has schema version {version} (written by {written_by}); this server \
         supports versions {SCHEMA_VERSION} to {LATEST_SCHEMA_VERSION} (SPIRE 1.8 to \
         1.15){disabled}: upgrade the database by running upstream SPIRE 1.8 (or a later 1.x) \
         on it once, then start this server"
    )))
}

/// Creates every table and index and records the schema version, in the caller's
/// transaction (PostgreSQL and SQLite roll DDL back on failure; MySQL commits each DDL
/// statement by itself).
async fn create(db: &mut Db<'_>) -> Result<()> {
    let d = db.dialect();
    for table in TABLES {
        db.execute(&create_table_sql(table, d), &[])
            .await
            .map_err(db_err("creating the schema"))?;
    }
    for ddl in INDEXES {
        db.execute(&create_index_sql(ddl, d), &[])
            .await
            .map_err(db_err("creating the schema"))?;
    }
    let t = now();
    db.execute(
        "INSERT INTO migrations (created_at, updated_at, version, code_version) \
         VALUES (?, ?, ?, ?)",
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Int(SCHEMA_VERSION),
            Arg::Text(CODE_VERSION.into()),
        ],
    )
    .await
    .map_err(db_err("recording the schema version"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements gorm v1 writes on SQLite, as upstream's v23 dump keeps them: a
    /// database we create must be byte-for-byte what upstream would create.
    const UPSTREAM_SQLITE: &[&str] = &[
        r#"CREATE TABLE "federated_registration_entries" ("bundle_id" integer,"registered_entry_id" integer, PRIMARY KEY ("bundle_id","registered_entry_id"))"#,
        r#"CREATE TABLE "bundles" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"trust_domain" varchar(255) NOT NULL,"data" blob )"#,
        r#"CREATE TABLE "attested_node_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255),"data_type" varchar(255),"serial_number" varchar(255),"expires_at" datetime,"new_serial_number" varchar(255),"new_expires_at" datetime,"can_reattest" bool )"#,
        r#"CREATE TABLE "attested_node_entries_events" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255) )"#,
        r#"CREATE TABLE "node_resolver_map_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255),"type" varchar(255),"value" varchar(255) )"#,
        r#"CREATE TABLE "registered_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"entry_id" varchar(255),"spiffe_id" varchar(255),"parent_id" varchar(255),"ttl" integer,"admin" bool,"downstream" bool,"expiry" bigint,"revision_number" bigint,"store_svid" bool,"hint" varchar(255),"jwt_svid_ttl" integer )"#,
        r#"CREATE TABLE "registered_entries_events" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"entry_id" varchar(255) )"#,
        r#"CREATE TABLE "join_tokens" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"token" varchar(255),"expiry" bigint )"#,
        r#"CREATE TABLE "selectors" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"registered_entry_id" integer,"type" varchar(255),"value" varchar(255) )"#,
        r#"CREATE TABLE "migrations" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"version" integer,"code_version" varchar(255) )"#,
        r#"CREATE TABLE "dns_names" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"registered_entry_id" integer,"value" varchar(255) )"#,
        r#"CREATE TABLE "federated_trust_domains" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"trust_domain" varchar(255) NOT NULL,"bundle_endpoint_url" varchar(255),"bundle_endpoint_profile" varchar(255),"endpoint_spiffe_id" varchar(255),"implicit" bool )"#,
        r#"CREATE TABLE "ca_journals" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"data" blob,"active_x509_authority_id" varchar(255),"active_jwt_authority_id" varchar(255) )"#,
    ];

    #[test]
    fn sqlite_ddl_is_upstreams() {
        let ours: Vec<String> = TABLES
            .iter()
            .map(|t| create_table_sql(t, Dialect::Sqlite))
            .collect();
        assert_eq!(ours, UPSTREAM_SQLITE);
    }

    #[test]
    fn postgres_and_mysql_ddl_use_gorms_types() {
        let bundles = TABLES.iter().find(|t| t.name == "bundles").unwrap();
        assert_eq!(
            create_table_sql(bundles, Dialect::Postgres),
            r#"CREATE TABLE "bundles" ("id" serial,"created_at" timestamp with time zone,"updated_at" timestamp with time zone,"trust_domain" text NOT NULL,"data" bytea , PRIMARY KEY ("id"))"#
        );
        assert_eq!(
            create_table_sql(bundles, Dialect::Mysql),
            "CREATE TABLE `bundles` (`id` int unsigned AUTO_INCREMENT,`created_at` DATETIME NULL,\
             `updated_at` DATETIME NULL,`trust_domain` varchar(255) NOT NULL,`data` longblob , \
             PRIMARY KEY (`id`)) ENGINE=InnoDB  ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8"
        );
        let join = &TABLES[0];
        assert_eq!(
            create_table_sql(join, Dialect::Mysql),
            "CREATE TABLE `federated_registration_entries` (`bundle_id` int unsigned,\
             `registered_entry_id` int unsigned, PRIMARY KEY (`bundle_id`,`registered_entry_id`)) \
             ENGINE=InnoDB  ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8"
        );
        assert_eq!(
            create_index_sql(INDEXES[3], Dialect::Mysql),
            "CREATE UNIQUE INDEX idx_node_resolver_map ON `node_resolver_map_entries`(spiffe_id, \
             `type`, `value`)"
        );
    }

    /// The columns of schemas 24 and 25 get the types gorm's AutoMigrate gives upstream's
    /// `AgentVersion string` and `AdditionalAttributes []byte` (`size:65535`).
    #[test]
    fn later_columns_use_gorms_types() {
        let ddl = |d| {
            LATER_COLUMNS
                .iter()
                .map(|&(t, c, ty, _)| add_column_sql(t, c, ty, d))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ddl(Dialect::Sqlite),
            [
                r#"ALTER TABLE "attested_node_entries" ADD "agent_version" varchar(255)"#,
                r#"ALTER TABLE "registered_entries" ADD "additional_attributes" blob"#,
            ]
        );
        assert_eq!(
            ddl(Dialect::Postgres),
            [
                r#"ALTER TABLE "attested_node_entries" ADD "agent_version" text"#,
                r#"ALTER TABLE "registered_entries" ADD "additional_attributes" bytea"#,
            ]
        );
        assert_eq!(
            ddl(Dialect::Mysql),
            [
                "ALTER TABLE `attested_node_entries` ADD `agent_version` varchar(255)",
                "ALTER TABLE `registered_entries` ADD `additional_attributes` longblob",
            ]
        );
    }

    /// Our DDL for PostgreSQL and MySQL is the one upstream creates, as kept in the
    /// integration tests' fixtures (one statement per line).
    #[test]
    fn postgres_and_mysql_ddl_match_upstream_fixtures() {
        let fixtures = [
            (
                Dialect::Postgres,
                include_str!("../../../tests/fixtures/upstream_schema_postgres.sql"),
            ),
            (
                Dialect::Mysql,
                include_str!("../../../tests/fixtures/upstream_schema_mysql.sql"),
            ),
        ];
        for (d, fixture) in fixtures {
            let statements: Vec<&str> = fixture
                .lines()
                .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
                .map(|l| l.trim_end_matches(';'))
                .collect();
            let ours: Vec<String> = TABLES
                .iter()
                .map(|t| create_table_sql(t, d))
                .chain(INDEXES.iter().map(|i| create_index_sql(i, d)))
                .collect();
            for statement in &ours {
                assert!(
                    statements.contains(&statement.as_str()),
                    "{d:?}: {statement}"
                );
            }
            assert_eq!(ours.len(), statements.len(), "{d:?}");
        }
    }
}
