//! Test databases on every SQL engine the datastore supports, shared by the datastore tests.
//!
//! SQLite always runs (a file in a temp dir). PostgreSQL and MySQL/MariaDB run when
//! `SPIRE_TEST_POSTGRES` / `SPIRE_TEST_MYSQL` hold a connection string in upstream's format
//! (`scripts/test-databases.sh` starts both servers and prints the variables); otherwise the
//! test prints that it skipped the engine. Each test gets a database of its own
//! (`spire_t_<pid>_<test>_<hash of the test name>`), created fresh through the configured one
//! and dropped when the test passes (a failed test leaves it for inspection; a drop that keeps
//! failing is reported on standard error, never failing a test that passed), so tests run in
//! parallel without sharing rows, and two `cargo test` runs on one server do not collide.

#![allow(dead_code, reason = "each test file uses part of the harness")]

mod connection;

use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Executor, Row};

/// One SQL engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
    Mysql,
}

impl Engine {
    /// The `database_type` upstream's configuration uses for this engine.
    pub(crate) fn database_type(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite3",
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    /// The variable holding the connection string of the server to test on.
    pub(crate) fn env_var(self) -> Option<&'static str> {
        match self {
            Engine::Sqlite => None,
            Engine::Postgres => Some("SPIRE_TEST_POSTGRES"),
            Engine::Mysql => Some("SPIRE_TEST_MYSQL"),
        }
    }
}

/// A fresh, empty database for one test.
pub(crate) struct TestDb {
    pub(crate) engine: Engine,
    /// The `connection_string` that opens this test's database.
    pub(crate) connection_string: String,
    /// The database's name (for SQLite: the file path).
    pub(crate) name: String,
    /// For PostgreSQL/MySQL: the configured connection string, to drop the database later.
    base: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// A connection pool straight to a test database, bypassing the store.
pub(crate) enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Mysql(MySqlPool),
}

impl TestDb {
    /// Creates the test's database, or returns `None` after printing why the engine is
    /// skipped when its variable is not set.
    pub(crate) async fn create(engine: Engine, test: &str) -> Option<TestDb> {
        let Some(var) = engine.env_var() else {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data/datastore.sqlite3");
            return Some(TestDb {
                engine,
                connection_string: path.display().to_string(),
                name: path.display().to_string(),
                base: None,
                _dir: Some(dir),
            });
        };
        let base = match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => {
                println!(
                    "skipped {test} on {}: {var} is not set (run scripts/test-databases.sh)",
                    engine.database_type()
                );
                return None;
            }
        };
        let name = database_name(test);
        let (drop, create) = connection::drop_and_create(engine == Engine::Postgres, &name);
        let created = async {
            connection::with_retries(|| admin_statement(engine, &base, &drop)).await?;
            admin_statement(engine, &base, &create).await
        };
        if let Err(e) = created.await {
            panic!("creating test database {name}: {e}");
        }
        Some(TestDb {
            engine,
            connection_string: with_database(engine, &base, &name),
            name,
            base: Some(base),
            _dir: None,
        })
    }

    /// Runs `sql` on the configured (not the test's) database of a PostgreSQL/MySQL server,
    /// e.g. to stop connections to the test's database.
    pub(crate) async fn admin(&self, sql: &str) -> Result<(), String> {
        let base = self
            .base
            .as_deref()
            .ok_or_else(|| "SQLite has no server to run admin statements on".to_owned())?;
        admin_statement(self.engine, base, sql).await
    }

    /// The store's configuration, read through upstream's `plugin_data` keys.
    pub(crate) fn config(&self) -> SqlConfig {
        let mut data = serde_json::json!({
            "database_type": self.engine.database_type(),
            "connection_string": self.connection_string,
        });
        if self.engine != Engine::Sqlite {
            // Parallel tests on one server stay well under its connection limit.
            data["max_open_conns"] = 10.into();
        }
        SqlConfig::from_plugin_data(&data).unwrap()
    }

    /// Opens the store on this database.
    pub(crate) async fn open(&self) -> SqlDataStore {
        match SqlDataStore::open(&self.config()).await {
            Ok(ds) => ds,
            Err(e) => panic!(
                "opening the {} store on {}: {e}",
                self.engine.database_type(),
                self.name
            ),
        }
    }

    /// A pool straight to this database.
    pub(crate) async fn raw(&self) -> Raw {
        match self.engine {
            Engine::Sqlite => {
                let options = SqliteConnectOptions::new()
                    .filename(&self.connection_string)
                    .create_if_missing(true);
                if let Some(parent) = std::path::Path::new(&self.connection_string).parent() {
                    std::fs::create_dir_all(parent).unwrap();
                }
                Raw::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(options)
                        .await
                        .unwrap(),
                )
            }
            _ => admin_pool(self.engine, &self.connection_string).await,
        }
    }

    /// Drops the database (after the test passed). A drop that keeps failing is reported,
    /// not fatal: the test's assertions have passed.
    pub(crate) async fn remove(self) {
        let Some(base) = &self.base else { return };
        let sql = match self.engine {
            Engine::Postgres => format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS `{}`", self.name),
        };
        if let Err(e) = connection::with_retries(|| admin_statement(self.engine, base, &sql)).await
        {
            eprintln!(
                "warning: dropping test database {} failed {} times, last: {e}; it is left on \
                 the server",
                self.name,
                connection::DROP_ATTEMPTS
            );
        }
    }
}

/// `spire_t_<pid>_<test>_<hash>`: the test's name cut to 30 characters (PostgreSQL and MySQL
/// allow 63 and 64 in all) and a hash of the whole name, so two long names that share their
/// first 30 characters still get databases of their own.
fn database_name(test: &str) -> String {
    // FNV-1a: short, and the same in every build.
    let hash = test.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    let mut short: String = test.chars().take(30).collect();
    short.make_ascii_lowercase();
    format!("spire_t_{}_{short}_{hash:08x}", std::process::id())
}

/// Runs `sql` on a connection of its own to the database `connection_string` names.
async fn admin_statement(engine: Engine, connection_string: &str, sql: &str) -> Result<(), String> {
    let admin = try_admin_pool(engine, connection_string).await?;
    let result = admin.try_execute_script(sql).await;
    admin.close().await;
    result
}

impl Raw {
    /// Runs statements separated by line-ending semicolons, one at a time (`--` comment lines
    /// are skipped); panics at the first that fails.
    pub(crate) async fn execute_script(&self, script: &str) {
        if let Err(e) = self.try_execute_script(script).await {
            panic!("{e}");
        }
    }

    /// Like [`execute_script`](Self::execute_script), returning the first failure instead.
    pub(crate) async fn try_execute_script(&self, script: &str) -> Result<(), String> {
        let text: String = script
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in text.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            let statement = statement.trim_end_matches(';').to_owned();
            let result = match self {
                Raw::Sqlite(p) => p
                    .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())))
                    .await
                    .map(|_| ()),
                Raw::Postgres(p) => p
                    .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())))
                    .await
                    .map(|_| ()),
                Raw::Mysql(p) => p
                    .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())))
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = result {
                return Err(format!("{statement}: {e}"));
            }
        }
        Ok(())
    }

    /// Runs a query whose columns are all text (cast them in the SQL) or NULL (shown as
    /// `NULL`), and returns its rows.
    pub(crate) async fn texts(&self, sql: &str) -> Vec<Vec<String>> {
        fn cells<R: Row>(row: &R) -> Vec<String>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            (0..row.len())
                .map(|i| {
                    row.try_get::<Option<String>, _>(i)
                        .unwrap_or_else(|e| panic!("column {i} is not text: {e}"))
                        .unwrap_or_else(|| "NULL".to_owned())
                })
                .collect()
        }
        let query = sqlx::AssertSqlSafe(sql.to_owned());
        let result = match self {
            Raw::Sqlite(p) => sqlx::query(query)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(cells).collect()),
            Raw::Postgres(p) => sqlx::query(query)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(cells).collect()),
            Raw::Mysql(p) => sqlx::query(query)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(cells).collect()),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The only cell of a one-row, one-column query.
    pub(crate) async fn text(&self, sql: &str) -> String {
        let rows = self.texts(sql).await;
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].clone()
    }

    pub(crate) async fn close(self) {
        match self {
            Raw::Sqlite(p) => p.close().await,
            Raw::Postgres(p) => p.close().await,
            Raw::Mysql(p) => p.close().await,
        }
    }
}

/// A one-connection pool on the database a connection string names.
async fn admin_pool(engine: Engine, connection_string: &str) -> Raw {
    try_admin_pool(engine, connection_string)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`admin_pool`], returning a failure to connect instead.
async fn try_admin_pool(engine: Engine, connection_string: &str) -> Result<Raw, String> {
    match engine {
        Engine::Postgres => PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connection::pg_options(connection_string))
            .await
            .map(Raw::Postgres)
            .map_err(|e| format!("connecting to PostgreSQL {connection_string}: {e}")),
        Engine::Mysql => MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(connection::mysql_options(connection_string))
            .await
            .map(Raw::Mysql)
            .map_err(|e| format!("connecting to MySQL {connection_string}: {e}")),
        Engine::Sqlite => unreachable!("SQLite needs no admin connection"),
    }
}

/// `base` with its database replaced by `name`, in the same format.
fn with_database(engine: Engine, base: &str, name: &str) -> String {
    match engine {
        Engine::Postgres => connection::postgres_with_database(base, name),
        Engine::Mysql => connection::mysql_with_database(base, name),
        Engine::Sqlite => name.to_owned(),
    }
}

/// Generates, for each named `async fn name(db: &TestDb)`, the tests `sqlite::name`,
/// `postgres::name` and `mysql::name`, each on a fresh database of its own.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        on_every_engine!(@engine sqlite, Sqlite, $($name),*);
        on_every_engine!(@engine postgres, Postgres, $($name),*);
        on_every_engine!(@engine mysql, Mysql, $($name),*);
    };
    (@engine $module:ident, $engine:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::sql_engines::TestDb::create(
                        crate::sql_engines::Engine::$engine,
                        stringify!($name),
                    )
                    .await
                    else {
                        return;
                    };
                    super::$name(&db).await;
                    db.remove().await;
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_test_names_sharing_a_prefix_get_databases_of_their_own() {
        let a = database_name("entry_lifecycle_with_revisions_and_events_one");
        let b = database_name("entry_lifecycle_with_revisions_and_events_two");
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a} is too long for PostgreSQL");
        assert_eq!(
            a,
            database_name("entry_lifecycle_with_revisions_and_events_one")
        );
    }

    #[test]
    fn per_test_connection_strings_keep_the_format() {
        assert_eq!(
            with_database(
                Engine::Postgres,
                "dbname=spire user=spire password=spire host=127.0.0.1 port=5432 sslmode=disable",
                "spire_t_1_x"
            ),
            "dbname=spire_t_1_x user=spire password=spire host=127.0.0.1 port=5432 sslmode=disable"
        );
        assert_eq!(
            with_database(
                Engine::Postgres,
                "postgres://spire:spire@127.0.0.1:5432/spire?sslmode=disable",
                "t"
            ),
            "postgres://spire:spire@127.0.0.1:5432/t?sslmode=disable"
        );
        assert_eq!(
            with_database(
                Engine::Mysql,
                "spire:spire@tcp(127.0.0.1:3306)/spire?parseTime=true",
                "t"
            ),
            "spire:spire@tcp(127.0.0.1:3306)/t?parseTime=true"
        );
        assert_eq!(
            connection::pg_pairs("password='a b\\'c' host=h"),
            vec![
                ("password".to_owned(), "a b'c".to_owned()),
                ("host".to_owned(), "h".to_owned())
            ]
        );
    }
}
