//! What differs between SQLite, PostgreSQL and MySQL, kept in one place: how placeholders are
//! written, how times are stored and compared, how booleans are read back, how errors are
//! classified. Every query elsewhere uses `?` placeholders and portable SQL and runs through
//! [`Db`], which rewrites it for the engine at hand.

use std::borrow::Cow;

use sqlx::AnyConnection;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{Any, Row};
use time::OffsetDateTime;

use crate::datastore::DataStoreError;

/// The SQL engine behind a store; chosen by `database_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `sqlite3`.
    Sqlite,
    /// `postgres`.
    Postgres,
    /// `mysql` (MySQL or MariaDB).
    Mysql,
}

impl Dialect {
    /// The `database_type` spelling, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite3",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }

    /// Rewrites a query written with `?` placeholders for this engine. PostgreSQL numbers its
    /// placeholders (`$1`) and needs times bound as text cast to `timestamptz`; the others
    /// take the query as it is. `args` are the query's arguments in placeholder order.
    pub(crate) fn rewrite<'s>(self, sql: &'s str, args: &[Arg]) -> Cow<'s, str> {
        if self != Self::Postgres {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 4 * args.len());
        let mut n = 0usize;
        let mut in_string = false;
        for ch in sql.chars() {
            match ch {
                '\'' => {
                    in_string = !in_string;
                    out.push(ch);
                }
                '?' if !in_string => {
                    let is_time = matches!(args.get(n), Some(Arg::Time(_) | Arg::NullTime));
                    n += 1;
                    if is_time {
                        out.push_str(&format!("CAST(${n} AS TIMESTAMPTZ)"));
                    } else {
                        out.push_str(&format!("${n}"));
                    }
                }
                _ => out.push(ch),
            }
        }
        Cow::Owned(out)
    }

    /// SQL expression giving the Unix seconds (a 64-bit integer) of a datetime column.
    ///
    /// Upstream's SQLite driver stores times as text such as
    /// `2023-08-29 13:15:25.103258-03:00`, which SQLite's date functions understand, zone
    /// included. PostgreSQL stores `timestamp with time zone`; MySQL `DATETIME` read in the
    /// session's UTC zone (go-sql-driver writes UTC by default, as we do).
    pub(crate) fn epoch(self, column: &str) -> String {
        match self {
            Self::Sqlite => format!("CAST(strftime('%s', {column}) AS INTEGER)"),
            Self::Postgres => format!("CAST(FLOOR(EXTRACT(EPOCH FROM {column})) AS BIGINT)"),
            Self::Mysql => format!("CAST(UNIX_TIMESTAMP({column}) AS SIGNED)"),
        }
    }

    /// SQL expression giving a datetime column's Unix seconds rounded to the nearest second
    /// (halves up), as upstream reports an entry's `created_at` (`t.Round(time.Second)`), so
    /// both servers print the same number for the same row.
    ///
    /// For SQLite's text the fraction is dropped before `strftime` (which would round it to
    /// milliseconds first) and its first digit decides, so the answer is exact.
    pub(crate) fn rounded_epoch(self, column: &str) -> String {
        match self {
            Self::Sqlite => format!(
                "(CAST(strftime('%s', substr({column}, 1, 19) || \
                 ltrim(substr({column}, 20), '.0123456789')) AS INTEGER) + \
                 (substr({column}, 20, 1) = '.' AND substr({column}, 21, 1) >= '5'))"
            ),
            Self::Postgres => format!("CAST(ROUND(EXTRACT(EPOCH FROM {column})) AS BIGINT)"),
            Self::Mysql => format!("CAST(ROUND(UNIX_TIMESTAMP({column})) AS SIGNED)"),
        }
    }

    /// SQL expression reading a boolean column as an integer (0 or 1), the one form every
    /// engine returns through sqlx's `Any` driver (it cannot return SQLite `bool` or MySQL
    /// `tinyint(1)` columns as they are). Read it back with [`get_bool`].
    pub(crate) fn bool_col(self, column: &str) -> String {
        match self {
            Self::Sqlite | Self::Postgres => format!("CAST({column} AS INTEGER)"),
            Self::Mysql => format!("CAST({column} AS SIGNED)"),
        }
    }

    /// ` FOR UPDATE` where the engine has row locks (SQLite's write transactions are
    /// exclusive already).
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres | Self::Mysql => " FOR UPDATE",
        }
    }

    /// Formats a time as text the engine stores in its datetime column type, in UTC.
    pub(crate) fn format_time(self, t: OffsetDateTime) -> String {
        match self {
            Self::Sqlite | Self::Postgres => go_time(t),
            // DATETIME without fractional seconds: MySQL rounds the fraction upstream's driver
            // sends (MariaDB truncates it); we store the rounded second, the one
            // `rounded_unix` reports.
            Self::Mysql => {
                let t = OffsetDateTime::from_unix_timestamp(rounded_unix(t))
                    .unwrap_or(t)
                    .to_offset(time::UtcOffset::UTC);
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            }
        }
    }
}

/// A query as built by this module, ready to execute.
pub(crate) type Query<'a> = sqlx::query::Query<'a, Any, AnyArguments>;

/// One bound argument of a query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
    /// A boolean (stored as 0/1 by SQLite and MySQL, as gorm's drivers do).
    Bool(bool),
    /// Binary data.
    Blob(Vec<u8>),
    /// A point in time, stored in the column format upstream's driver writes.
    Time(OffsetDateTime),
    /// SQL NULL (for nullable datetime columns).
    NullTime,
    /// SQL NULL of a binary column (bound as bytes, so PostgreSQL accepts it for `bytea`).
    NullBlob,
}

/// Binds `args` in order onto `query`, times formatted for `dialect`.
pub(crate) fn bind_all<'a>(mut query: Query<'a>, args: &[Arg], dialect: Dialect) -> Query<'a> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.clone()),
            Arg::Bool(v) => query.bind(*v),
            Arg::Blob(v) => query.bind(v.clone()),
            Arg::Time(t) => query.bind(dialect.format_time(*t)),
            Arg::NullTime => query.bind(Option::<String>::None),
            Arg::NullBlob => query.bind(Option::<Vec<u8>>::None),
        };
    }
    query
}

/// A connection inside a transaction, with the dialect its queries are rewritten for. Every
/// statement of the datastore runs through one of these methods.
pub(crate) struct Db<'c> {
    conn: &'c mut AnyConnection,
    dialect: Dialect,
}

impl<'c> Db<'c> {
    /// Wraps a connection (normally a transaction's).
    pub(crate) fn new(conn: &'c mut AnyConnection, dialect: Dialect) -> Self {
        Self { conn, dialect }
    }

    /// The engine's dialect.
    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn query(&self, sql: &str, args: &[Arg]) -> Query<'static> {
        let sql = self.dialect.rewrite(sql, args).into_owned();
        bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), args, self.dialect)
    }

    /// Runs a statement.
    pub(crate) async fn execute(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<AnyQueryResult, sqlx::Error> {
        self.query(sql, args).execute(&mut *self.conn).await
    }

    /// Runs a query returning rows.
    pub(crate) async fn fetch_all(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        self.query(sql, args).fetch_all(&mut *self.conn).await
    }

    /// Runs a query returning at most one row.
    pub(crate) async fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Option<AnyRow>, sqlx::Error> {
        self.query(sql, args).fetch_optional(&mut *self.conn).await
    }

    /// Runs a query returning exactly one row.
    pub(crate) async fn fetch_one(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<AnyRow, sqlx::Error> {
        self.query(sql, args).fetch_one(&mut *self.conn).await
    }

    /// Runs an `INSERT` of one row into a table with an `id` key and returns the new ID:
    /// `RETURNING id` on SQLite and PostgreSQL, the connection's last insert ID on MySQL.
    pub(crate) async fn insert(&mut self, sql: &str, args: &[Arg]) -> Result<i64, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                let row = self.fetch_one(&format!("{sql} RETURNING id"), args).await?;
                row.try_get::<i64, _>(0)
            }
            Dialect::Mysql => {
                let result = self.execute(sql, args).await?;
                result.last_insert_id().ok_or_else(|| {
                    sqlx::Error::Protocol("MySQL returned no insert ID for a new row".into())
                })
            }
        }
    }
}

/// Reads a column selected with [`Dialect::bool_col`].
pub(crate) fn get_bool(row: &AnyRow, index: usize) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(index)?.unwrap_or_default() != 0)
}

/// Formats a time the way go-sqlite3 does (`2006-01-02 15:04:05.999999999-07:00`), in UTC;
/// PostgreSQL reads the same text as a `timestamptz`.
pub(crate) fn go_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut out = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str("+00:00");
    out
}

/// `t` in Unix seconds rounded to the nearest second (halves up), as
/// [`Dialect::rounded_epoch`] reads it back.
pub(crate) fn rounded_unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp() + i64::from(t.nanosecond() >= 500_000_000)
}

/// The current time, for `created_at` / `updated_at`, in whole microseconds: PostgreSQL
/// keeps no finer, so a time rounded here ([`rounded_unix`]) and the same time read back
/// ([`Dialect::rounded_epoch`]) agree on every engine.
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// Unix seconds as a time; out-of-range values are refused.
pub(crate) fn unix_time(secs: i64) -> Result<OffsetDateTime, DataStoreError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| {
        DataStoreError::InvalidArgument(format!("time {secs} (Unix seconds) is out of range"))
    })
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Whether a database error means the database could not be reached (as opposed to a
/// statement that failed): the caller may retry once the database is back.
pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // PostgreSQL class 08 (connection exception), 57P01..57P03 (shutdown, cannot
            // connect now); MySQL/MariaDB 1053 (server shutdown), 2006/2013 (gone away).
            let code = db.code().unwrap_or_default();
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "1053" | "2006" | "2013"
                )
        }
        _ => false,
    }
}

/// Maps a database error to the datastore's error, naming what was being done. A database
/// that cannot be reached says so first, so operators see the cause rather than a query.
pub(crate) fn db_err(what: &str) -> impl FnOnce(sqlx::Error) -> DataStoreError + '_ {
    move |e| {
        if is_unavailable(&e) {
            DataStoreError::Unavailable(format!("database unavailable while {what}: {e}"))
        } else {
            DataStoreError::Internal(format!("{what}: {e}"))
        }
    }
}

/// `?, ?, ?` with `n` placeholders.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_like_go_sqlite3() {
        let t = OffsetDateTime::from_unix_timestamp(1_693_325_725).unwrap();
        assert_eq!(go_time(t), "2023-08-29 16:15:25+00:00");
        let t = t + time::Duration::microseconds(103_258);
        assert_eq!(go_time(t), "2023-08-29 16:15:25.103258+00:00");
        assert_eq!(Dialect::Mysql.format_time(t), "2023-08-29 16:15:25");
        let later = t + time::Duration::milliseconds(500);
        assert_eq!(Dialect::Mysql.format_time(later), "2023-08-29 16:15:26");
        assert_eq!(
            Dialect::Postgres.format_time(t),
            "2023-08-29 16:15:25.103258+00:00"
        );
    }

    #[tokio::test]
    async fn created_at_is_rounded_to_the_nearest_second_as_upstream_does() {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let base = 1_796_414_882; // 2026-12-04 20:08:02 UTC
        for (stored, want) in [
            ("2026-12-04 20:08:02+00:00", base),
            ("2026-12-04 20:08:02.46415435+00:00", base),
            ("2026-12-04 20:08:02.4999999999+00:00", base),
            ("2026-12-04 20:08:02.5+00:00", base + 1),
            ("2026-12-04 20:08:02.562473212+00:00", base + 1),
            ("2026-12-04 21:08:02.7+01:00", base + 1),
            ("2026-12-04 19:08:02.2-01:00", base),
        ] {
            let sql = format!("SELECT {}", Dialect::Sqlite.rounded_epoch("?"));
            let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.replace('?', "?1")))
                .bind(stored)
                .fetch_one(&mut db)
                .await
                .unwrap();
            assert_eq!(got, want, "{stored}");
        }
        let t = OffsetDateTime::from_unix_timestamp(base).unwrap();
        assert_eq!(rounded_unix(t + time::Duration::milliseconds(499)), base);
        assert_eq!(
            rounded_unix(t + time::Duration::milliseconds(500)),
            base + 1
        );
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(0), "");
        assert_eq!(placeholders(3), "?, ?, ?");
    }

    #[test]
    fn postgres_placeholders_are_numbered_and_times_cast() {
        let args = [
            Arg::Time(now()),
            Arg::Text("x".into()),
            Arg::NullTime,
            Arg::Int(1),
        ];
        let sql = "INSERT INTO t (a, b, c) VALUES (?, ?, ?) -- '?' stays\n AND d = ?";
        assert_eq!(
            Dialect::Postgres.rewrite("UPDATE t SET a = ?, b = ?, c = ? WHERE id = ?", &args),
            "UPDATE t SET a = CAST($1 AS TIMESTAMPTZ), b = $2, c = CAST($3 AS TIMESTAMPTZ) \
             WHERE id = $4"
        );
        let rewritten = Dialect::Postgres.rewrite(sql, &args);
        assert!(rewritten.contains("'?' stays"), "{rewritten}");
        assert!(rewritten.ends_with("d = $4"), "{rewritten}");
        assert_eq!(Dialect::Mysql.rewrite(sql, &args), sql);
        assert_eq!(Dialect::Sqlite.rewrite(sql, &args), sql);
    }

    #[test]
    fn unreachable_databases_are_told_apart_from_failed_statements() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_unavailable(&io));
        assert!(db_err("listing")(io).to_string().contains("unavailable"));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    }
}
