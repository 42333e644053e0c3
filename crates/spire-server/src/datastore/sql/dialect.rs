//! What differs between SQL databases, kept in one place so PostgreSQL and MySQL can be added
//! beside SQLite: how times are stored and compared, how arguments are bound, how errors are
//! classified. Every query elsewhere uses `?` placeholders and portable SQL.

use sqlx::sqlite::Sqlite;
use time::OffsetDateTime;

use crate::datastore::DataStoreError;

/// A query as built by this module, ready to execute.
pub(crate) type Query<'a> = sqlx::query::Query<'a, Sqlite, <Sqlite as sqlx::Database>::Arguments>;

/// One bound argument of a dynamically built query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
    /// A boolean (stored as 0/1 by SQLite, as gorm's driver does).
    Bool(bool),
    /// Binary data.
    Blob(Vec<u8>),
    /// A point in time, stored in the column format upstream's driver writes.
    Time(OffsetDateTime),
    /// SQL NULL (for nullable datetime columns).
    NullTime,
}

/// Binds `args` in order onto `query`.
pub(crate) fn bind_all<'a>(mut query: Query<'a>, args: &[Arg]) -> Query<'a> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.clone()),
            Arg::Bool(v) => query.bind(*v),
            Arg::Blob(v) => query.bind(v.clone()),
            Arg::Time(t) => query.bind(go_time(*t)),
            Arg::NullTime => query.bind(Option::<String>::None),
        };
    }
    query
}

/// SQL expression giving the Unix seconds of a datetime column.
///
/// Upstream's SQLite driver (mattn/go-sqlite3) stores `time.Time` as text such as
/// `2023-08-29 13:15:25.103258-03:00`, which SQLite's date functions understand, time zone
/// included; comparing the converted seconds is correct across zones where comparing text is
/// not.
pub(crate) fn epoch(column: &str) -> String {
    format!("CAST(strftime('%s', {column}) AS INTEGER)")
}

/// Formats a time the way go-sqlite3 does (`2006-01-02 15:04:05.999999999-07:00`), in UTC.
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

/// The current time, for `created_at` / `updated_at`.
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
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

/// Maps a database error to the datastore's error, naming what was being done.
pub(crate) fn db_err(what: &str) -> impl FnOnce(sqlx::Error) -> DataStoreError + '_ {
    move |e| DataStoreError::Internal(format!("{what}: {e}"))
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
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(0), "");
        assert_eq!(placeholders(3), "?, ?, ?");
    }
}
