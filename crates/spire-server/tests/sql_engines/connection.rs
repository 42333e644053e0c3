//! Upstream's connection strings for the test and bench databases: libpq `key=value` or URL
//! for PostgreSQL, go-sql-driver DSNs for MySQL, turned into sqlx options for the admin
//! connections that create and drop databases, and rewritten to name another database;
//! and the retry those drops need. Shared by `tests/sql_engines` and `benches/support`
//! (included with `#[path]`).

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// libpq `key=value` pairs (values optionally single-quoted) or a `postgres://` URL.
pub(crate) fn pg_options(connection_string: &str) -> PgConnectOptions {
    let s = connection_string.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return PgConnectOptions::from_str(s).expect("PostgreSQL URL");
    }
    let mut options = PgConnectOptions::new_without_pgpass().ssl_mode(PgSslMode::Prefer);
    for (key, value) in pg_pairs(s) {
        options = match key.as_str() {
            "host" => options.host(&value),
            "port" => options.port(value.parse().expect("PostgreSQL port")),
            "user" => options.username(&value),
            "password" => options.password(&value),
            "dbname" => options.database(&value),
            "sslmode" => options.ssl_mode(value.parse().expect("PostgreSQL sslmode")),
            _ => options,
        };
    }
    options
}

pub(crate) fn pg_pairs(s: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            return pairs;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| !c.is_whitespace()) {
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key.trim().to_owned(), value));
    }
}

/// go-sql-driver's DSN: `user:password@tcp(host:port)/dbname?params`.
pub(crate) fn mysql_options(dsn: &str) -> MySqlConnectOptions {
    let (prefix, db, _) = split_mysql_dsn(dsn);
    let (credentials, address) = prefix.rsplit_once('@').unwrap_or(("", prefix));
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let address = address
        .strip_prefix("tcp(")
        .and_then(|a| a.strip_suffix(')'))
        .unwrap_or("127.0.0.1:3306");
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "3306"));
    MySqlConnectOptions::new()
        .host(host)
        .port(port.parse().expect("MySQL port"))
        .username(user)
        .password(password)
        .database(db)
        .ssl_mode(MySqlSslMode::Preferred)
}

/// (everything before the database name, the database name, the parameters).
fn split_mysql_dsn(dsn: &str) -> (&str, &str, &str) {
    let (path, params) = dsn.split_once('?').unwrap_or((dsn, ""));
    let (prefix, db) = path.rsplit_once('/').unwrap_or((path, ""));
    (prefix, db, params)
}

/// A PostgreSQL connection string (either form) with its database replaced by `name`.
pub(crate) fn postgres_with_database(base: &str, name: &str) -> String {
    if base.contains("://") {
        let (before_query, query) = base.split_once('?').unwrap_or((base, ""));
        let scheme_end = before_query.find("://").map_or(0, |i| i + 3);
        let authority_end = before_query[scheme_end..]
            .find('/')
            .map_or(before_query.len(), |i| scheme_end + i);
        let out = format!("{}/{name}", &before_query[..authority_end]);
        return if query.is_empty() {
            out
        } else {
            format!("{out}?{query}")
        };
    }
    let mut parts: Vec<String> = pg_pairs(base)
        .into_iter()
        .filter(|(k, _)| k != "dbname")
        .map(|(k, v)| {
            if v.is_empty() || v.contains(char::is_whitespace) || v.contains('\'') {
                format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    parts.insert(0, format!("dbname={name}"));
    parts.join(" ")
}

/// A MySQL DSN with its database replaced by `name`.
pub(crate) fn mysql_with_database(base: &str, name: &str) -> String {
    let (prefix, _, params) = split_mysql_dsn(base);
    if params.is_empty() {
        format!("{prefix}/{name}")
    } else {
        format!("{prefix}/{name}?{params}")
    }
}

/// How many times [`with_retries`] tries.
pub(crate) const DROP_ATTEMPTS: u32 = 5;

/// The statements that drop database `name` if it is left over (ending its sessions on
/// PostgreSQL) and create it fresh, on PostgreSQL (`postgres`) or MySQL.
pub(crate) fn drop_and_create(postgres: bool, name: &str) -> (String, String) {
    if postgres {
        (
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
        )
    } else {
        (
            format!("DROP DATABASE IF EXISTS `{name}`"),
            format!("CREATE DATABASE `{name}`"),
        )
    }
}

/// Runs `attempt` (a `DROP DATABASE`) until it succeeds, up to [`DROP_ATTEMPTS`] times with a
/// growing pause (0.2 s, 0.4 s, ...) between tries: a drop can lose a race with the server's
/// own sessions on the database (an autovacuum worker, a connection still closing). Returns
/// the last error when every attempt failed.
pub(crate) async fn with_retries<F, Fut, E>(mut attempt: F) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= DROP_ATTEMPTS => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200) * tries).await,
        }
    }
}
