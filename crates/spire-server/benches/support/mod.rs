//! The SQL engine a benchmark runs on, chosen with `SPIRE_BENCH_DATABASE`:
//!
//! - `sqlite3` (the default): a file in a temp dir;
//! - `postgres`: a fresh database on the server `SPIRE_TEST_POSTGRES` names (libpq
//!   `key=value` pairs or a `postgres://` URL);
//! - `mysql`: a fresh database on the server `SPIRE_TEST_MYSQL` names (go-sql-driver DSN).
//!
//! `scripts/test-databases.sh` starts both servers and writes the two variables to
//! `target/test-databases.env`. Each [`BenchDb`] is a database of its own
//! (`spire_bench_<pid>_<label>`), created empty and dropped by [`BenchDb::remove`], so a run
//! never measures rows a previous run left behind.

#[path = "../../tests/sql_engines/connection.rs"]
mod connection;
pub(crate) mod server;
pub(crate) mod stats;

/// The allocator the `spire-server` binary uses, so every benchmark built on this support
/// measures the server as shipped.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use spire_server::datastore::sql::SqlConfig;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Executor};

/// Selects the engine; unset means `sqlite3`.
pub(crate) const DATABASE_ENV: &str = "SPIRE_BENCH_DATABASE";

/// One SQL engine the datastore supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// `sqlite3`.
    Sqlite,
    /// `postgres`.
    Postgres,
    /// `mysql` (MySQL or MariaDB).
    Mysql,
}

impl Engine {
    /// The engine `SPIRE_BENCH_DATABASE` names; panics with the accepted values otherwise,
    /// since a bench on the wrong engine would record misleading numbers.
    pub(crate) fn from_env() -> Engine {
        let value = std::env::var(DATABASE_ENV).unwrap_or_default();
        match value.trim() {
            "" | "sqlite3" | "sqlite" => Engine::Sqlite,
            "postgres" | "postgresql" => Engine::Postgres,
            "mysql" | "mariadb" => Engine::Mysql,
            other => panic!("{DATABASE_ENV}={other:?}: expected sqlite3, postgres or mysql"),
        }
    }

    /// upstream's `database_type`.
    pub(crate) fn database_type(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite3",
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    /// A name for table titles.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Engine::Sqlite => "SQLite",
            Engine::Postgres => "PostgreSQL",
            Engine::Mysql => "MySQL/MariaDB",
        }
    }

    fn server_env(self) -> Option<&'static str> {
        match self {
            Engine::Sqlite => None,
            Engine::Postgres => Some("SPIRE_TEST_POSTGRES"),
            Engine::Mysql => Some("SPIRE_TEST_MYSQL"),
        }
    }
}

/// A fresh, empty database for one scenario.
pub(crate) struct BenchDb {
    /// The engine it lives on.
    pub(crate) engine: Engine,
    /// The `connection_string` that opens it.
    pub(crate) connection_string: String,
    name: String,
    /// The configured server's connection string, to drop the database again.
    base: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// Creates the database `spire_bench_<pid>_<label>` (dropping a leftover of that name).
    pub(crate) async fn create(engine: Engine, label: &str) -> BenchDb {
        let Some(var) = engine.server_env() else {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("datastore.sqlite3");
            return BenchDb {
                engine,
                connection_string: path.display().to_string(),
                name: path.display().to_string(),
                base: None,
                _dir: Some(dir),
            };
        };
        let base = match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => panic!(
                "{DATABASE_ENV}={} needs {var}: run scripts/test-databases.sh and source \
                 target/test-databases.env",
                engine.database_type()
            ),
        };
        let name = format!("spire_bench_{}_{label}", std::process::id());
        let (drop, create) = connection::drop_and_create(engine == Engine::Postgres, &name);
        let created = async {
            connection::with_retries(|| admin(engine, &base, &drop)).await?;
            admin(engine, &base, &create).await
        };
        if let Err(e) = created.await {
            panic!("creating bench database {name}: {e}");
        }
        BenchDb {
            engine,
            connection_string: with_database(engine, &base, &name),
            name,
            base: Some(base),
            _dir: None,
        }
    }

    /// The datastore configuration a server with default settings would use.
    pub(crate) fn config(&self) -> SqlConfig {
        SqlConfig {
            database_type: self.engine.database_type().into(),
            connection_string: self.connection_string.clone(),
            max_open_conns: None,
            disable_migration: false,
        }
    }

    /// Drops the database (the SQLite file goes with its temp dir). A drop that keeps failing
    /// is reported, not fatal: the measurements are taken.
    pub(crate) async fn remove(self) {
        let Some(base) = &self.base else { return };
        let sql = match self.engine {
            Engine::Postgres => format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS `{}`", self.name),
        };
        if let Err(e) = connection::with_retries(|| admin(self.engine, base, &sql)).await {
            eprintln!(
                "warning: dropping bench database {} failed {} times, last: {e}; it is left on \
                 the server",
                self.name,
                connection::DROP_ATTEMPTS
            );
        }
    }
}

/// Runs one statement on a connection of its own to the database `connection_string` names.
async fn admin(engine: Engine, connection_string: &str, sql: &str) -> Result<(), String> {
    let statement = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()));
    match engine {
        Engine::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(connection::pg_options(connection_string).disable_statement_logging())
                .await
                .map_err(|e| format!("connecting to PostgreSQL {connection_string}: {e}"))?;
            let result = pool.execute(statement).await.map(|_| ());
            pool.close().await;
            result.map_err(|e| format!("{sql}: {e}"))
        }
        Engine::Mysql => {
            let pool = MySqlPoolOptions::new()
                .max_connections(1)
                .connect_with(
                    connection::mysql_options(connection_string).disable_statement_logging(),
                )
                .await
                .map_err(|e| format!("connecting to MySQL {connection_string}: {e}"))?;
            let result = pool.execute(statement).await.map(|_| ());
            pool.close().await;
            result.map_err(|e| format!("{sql}: {e}"))
        }
        Engine::Sqlite => Ok(()),
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
