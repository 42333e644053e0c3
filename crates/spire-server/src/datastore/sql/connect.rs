//! Connection strings as upstream SPIRE's Go drivers read them (go-sqlite3 file names and
//! URIs, lib/pq `key=value` lists and URLs, go-sql-driver/mysql DSNs), turned into the URLs
//! sqlx's `Any` driver connects with. Errors name the `plugin_data` key and what is wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::datastore::{DataStoreError, Result};

/// Where a store connects, as sqlx understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The sqlx connection URL (contains the password: never log it).
    pub(crate) url: String,
    /// Statements every new connection runs first (MySQL session variables from the DSN).
    pub(crate) init: Vec<String>,
    /// How long the first connection may take (`connect_timeout`); `None` for the default.
    pub(crate) connect_timeout: Option<Duration>,
}

/// The MySQL TLS files of `plugin_data` (`root_ca_path`, `client_cert_path`,
/// `client_key_path`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// `root_ca_path`.
    pub(crate) root_ca: Option<PathBuf>,
    /// `client_cert_path`.
    pub(crate) client_cert: Option<PathBuf>,
    /// `client_key_path`.
    pub(crate) client_key: Option<PathBuf>,
}

/// An error naming the key; the input itself is left out as it may hold a password.
fn invalid(key: &str, _input: &str, why: impl std::fmt::Display) -> DataStoreError {
    DataStoreError::InvalidArgument(format!("DataStore \"sql\": {key}: {why}"))
}

/// Percent-encodes everything but URL-unreserved characters.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as space when `plus` is set), as Go's URL unescaping does.
fn unescape(s: &str, plus: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn path_param(path: &Path) -> String {
    enc(&path.to_string_lossy())
}

// ---------------------------------------------------------------- SQLite

/// How a SQLite connection string was understood.
#[derive(Debug)]
pub(crate) struct SqliteTarget {
    /// The database file (or the shared in-memory database's name).
    pub(crate) path: PathBuf,
    /// `mode=memory`.
    pub(crate) in_memory: bool,
    /// `mode=ro`.
    pub(crate) read_only: bool,
    /// `_busy_timeout` / `_timeout`.
    pub(crate) busy_timeout: Duration,
}

/// Reads a go-sqlite3 connection string: a path or a `file:` URI with its parameters.
pub(crate) fn parse_sqlite(input: &str) -> Result<SqliteTarget> {
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
                    invalid(
                        "connection_string",
                        input,
                        format!("{key}={ms:?} is not a number of milliseconds"),
                    )
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
        return Err(invalid(
            "connection_string",
            input,
            format!("{input:?} names no database file"),
        ));
    }
    Ok(target)
}

/// The sqlx URL of a SQLite target (`path` made absolute first, so the URL cannot be read
/// as having a host).
pub(crate) fn sqlite_url(target: &SqliteTarget) -> Result<String> {
    if target.in_memory {
        let name = target.path.to_string_lossy();
        return Ok(format!("sqlite://{}?mode=memory&cache=shared", enc(&name)));
    }
    let path = std::path::absolute(&target.path).map_err(|e| {
        DataStoreError::InvalidArgument(format!(
            "DataStore \"sql\": connection_string: cannot resolve {}: {e}",
            target.path.display()
        ))
    })?;
    let encoded: String = path
        .to_string_lossy()
        .split('/')
        .map(enc)
        .collect::<Vec<_>>()
        .join("/");
    let mode = if target.read_only { "ro" } else { "rwc" };
    Ok(format!("sqlite://{encoded}?mode={mode}"))
}

// ---------------------------------------------------------------- PostgreSQL

/// lib/pq's `key=value` list: whitespace-separated pairs, values optionally in single quotes,
/// backslash escapes.
fn parse_pq_pairs(input: &str, key_name: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(
                key_name,
                input,
                format!("{key:?} has no \"=value\" (expected key=value pairs separated by spaces)"),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(invalid(key_name, input, "ends after a backslash"));
                        }
                    },
                    Some(c) => value.push(c),
                    None => {
                        return Err(invalid(
                            key_name,
                            input,
                            format!("the quoted value of {key:?} is not closed with '"),
                        ));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => return Err(invalid(key_name, input, "ends after a backslash")),
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

const PG_SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The lib/pq keywords a misspelling is checked against.
const PQ_KEYWORDS: &[&str] = &[
    "user",
    "password",
    "host",
    "port",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslinline",
    "sslsni",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "krbsrvname",
    "krbspn",
];

/// The lib/pq keyword `key` is one edit (insertion, deletion, substitution or swap of
/// neighbours) away from, if any. lib/pq sends unknown keys to the server as run-time
/// parameters, and no PostgreSQL run-time parameter is that close to a keyword, so such a
/// key is a typo.
fn pq_keyword_near(key: &str) -> Option<&'static str> {
    PQ_KEYWORDS
        .iter()
        .copied()
        .find(|k| *k != key && edit_distance(key.as_bytes(), k.as_bytes()) <= 1)
}

/// Optimal string alignment distance (Levenshtein plus swaps of neighbours).
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 {
                j
            } else if j == 0 {
                i
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

/// A PostgreSQL connection string (lib/pq `key=value` list or `postgres://` URL) as a sqlx
/// URL. Like lib/pq, `sslmode` defaults to `require`; unknown keys become server run-time
/// parameters (so a misspelt one is reported by the server when connecting), except keys
/// one typo away from a lib/pq keyword, which are refused here with the keyword meant.
pub(crate) fn postgres_target(input: &str, key_name: &str) -> Result<Target> {
    let trimmed = input.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let (_, query) = trimmed.split_once('?').unwrap_or((trimmed, ""));
        let mut url = trimmed.to_owned();
        let mut connect_timeout = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "sslmode" && !PG_SSL_MODES.contains(&v) {
                return Err(invalid(
                    key_name,
                    input,
                    format!("sslmode={v:?} is not one of {}", PG_SSL_MODES.join(", ")),
                ));
            }
            if k == "connect_timeout" {
                connect_timeout = Some(parse_seconds(v, key_name, input)?);
            }
        }
        if !query.split('&').any(|p| p.starts_with("sslmode=")) {
            url.push(if query.is_empty() && !url.contains('?') {
                '?'
            } else {
                '&'
            });
            url.push_str("sslmode=require");
        }
        return Ok(Target {
            init: pg_session_init(&url),
            url,
            connect_timeout,
        });
    }

    let mut user = None;
    let mut password = None;
    let mut host = None;
    let mut port = None;
    let mut dbname = None;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut ssl_mode = None;
    let mut app_name = None;
    let mut fallback_app_name = None;
    let mut connect_timeout = None;
    for (key, value) in parse_pq_pairs(trimmed, key_name)? {
        match key.as_str() {
            "user" => user = Some(value),
            "password" => password = Some(value),
            "host" => {
                if value.contains(',') {
                    return Err(invalid(
                        key_name,
                        input,
                        "several hosts in host= are not supported; name one host",
                    ));
                }
                host = Some(value);
            }
            "port" => {
                value.parse::<u16>().map_err(|_| {
                    invalid(
                        key_name,
                        input,
                        format!("port={value:?} is not a port number"),
                    )
                })?;
                port = Some(value);
            }
            "dbname" => dbname = Some(value),
            "sslmode" => {
                if !PG_SSL_MODES.contains(&value.as_str()) {
                    return Err(invalid(
                        key_name,
                        input,
                        format!(
                            "sslmode={value:?} is not one of {}",
                            PG_SSL_MODES.join(", ")
                        ),
                    ));
                }
                ssl_mode = Some(value);
            }
            "sslrootcert" | "sslcert" | "sslkey" => params.push((key, enc(&value))),
            "application_name" => app_name = Some(value),
            "fallback_application_name" => fallback_app_name = Some(value),
            "connect_timeout" => connect_timeout = Some(parse_seconds(&value, key_name, input)?),
            "sslinline" if value == "true" => {
                return Err(invalid(
                    key_name,
                    input,
                    "sslinline=true is not supported; give sslrootcert, sslcert and sslkey as \
                     file paths",
                ));
            }
            "sslinline"
            | "sslsni"
            | "krbsrvname"
            | "krbspn"
            | "binary_parameters"
            | "disable_prepared_binary_result" => {}
            _ => {
                if !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                {
                    return Err(invalid(
                        key_name,
                        input,
                        format!("{key:?} is not a connection parameter name"),
                    ));
                }
                // A misspelt `user` or `password` would otherwise surface as an
                // authentication failure for another user, naming nothing of the typo.
                if let Some(meant) = pq_keyword_near(&key) {
                    return Err(invalid(
                        key_name,
                        input,
                        format!("{key:?} is not a connection parameter (did you mean {meant:?}?)"),
                    ));
                }
                params.push((format!("options[{key}]"), enc(&value)));
            }
        }
    }
    let mut url = String::from("postgres://");
    if let Some(user) = &user {
        url.push_str(&enc(user));
        if let Some(password) = &password {
            url.push(':');
            url.push_str(&enc(password));
        }
        url.push('@');
    }
    let host = host.unwrap_or_else(|| "localhost".to_owned());
    if host.starts_with('/') {
        url.push_str("localhost");
        params.push(("host".into(), enc(&host)));
    } else if host.contains(':') {
        url.push_str(&format!("[{host}]"));
    } else {
        url.push_str(&enc(&host));
    }
    if let Some(port) = &port {
        url.push(':');
        url.push_str(port);
    }
    url.push('/');
    if let Some(db) = &dbname {
        url.push_str(&enc(db));
    }
    params.push((
        "sslmode".into(),
        ssl_mode.unwrap_or_else(|| "require".into()),
    ));
    if let Some(name) = app_name.or(fallback_app_name) {
        params.push(("application_name".into(), enc(&name)));
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    url.push('?');
    url.push_str(&query.join("&"));
    Ok(Target {
        init: pg_session_init(&url),
        url,
        connect_timeout,
    })
}

/// Plans every execution of a prepared statement with its own parameters (PostgreSQL 12 and
/// later; older servers skip it), unless the connection string sets `plan_cache_mode`.
///
/// Statements stay prepared once per connection, but PostgreSQL's default would switch each
/// one to a generic plan after five executions and keep it until the table is next analyzed.
/// A plan chosen while a table was small (a fresh database during a bulk load) then scans
/// the whole table for every entry lookup by ID list, under the entry-creation lock: with
/// 9,000 entries that was 12-17 ms per BatchCreateEntry, and it grows with the table until
/// autovacuum's next ANALYZE.
fn pg_session_init(url: &str) -> Vec<String> {
    if url.contains("plan_cache_mode") {
        return Vec::new();
    }
    vec![
        "SELECT set_config('plan_cache_mode', 'force_custom_plan', false) \
         WHERE current_setting('server_version_num')::int >= 120000"
            .to_owned(),
    ]
}

fn parse_seconds(value: &str, key_name: &str, input: &str) -> Result<Duration> {
    let secs: u64 = value.parse().map_err(|_| {
        invalid(
            key_name,
            input,
            format!("connect_timeout={value:?} is not a number of seconds"),
        )
    })?;
    Ok(Duration::from_secs(secs))
}

// ---------------------------------------------------------------- MySQL

/// go-sql-driver parameters that tune the Go client itself: accepted, nothing to do here.
const MYSQL_CLIENT_PARAMS: &[&str] = &[
    "parseTime",
    "allowAllFiles",
    "allowCleartextPasswords",
    "allowFallbackToPlaintext",
    "allowNativePasswords",
    "allowOldPasswords",
    "checkConnLiveness",
    "clientFoundRows",
    "columnsWithAlias",
    "connectionAttributes",
    "interpolateParams",
    "maxAllowedPacket",
    "multiStatements",
    "readTimeout",
    "rejectReadOnly",
    "serverPubKey",
    "writeTimeout",
];

/// A go-sql-driver/mysql DSN (`user:pass@tcp(host:port)/db?params`, or `unix(/path)`) as a
/// sqlx URL. TLS follows `tls=` and the `root_ca_path` / `client_*_path` options as upstream
/// does; unknown parameters are session variables, set on every new connection as
/// go-sql-driver does (so a misspelt one is reported by the server).
pub(crate) fn mysql_target(input: &str, key_name: &str, tls: &TlsFiles) -> Result<Target> {
    let Some(slash) = input.rfind('/') else {
        return Err(invalid(
            key_name,
            input,
            "missing the slash before the database name (expected \
             user:password@tcp(host:port)/dbname?parseTime=true)",
        ));
    };
    let (left, right) = (&input[..slash], &input[slash + 1..]);
    let (user, password, net_addr) = match left.rfind('@') {
        Some(at) => {
            let userinfo = &left[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            (user, password, &left[at + 1..])
        }
        None => ("", None, left),
    };
    let (net, addr) = match net_addr.find('(') {
        Some(open) => {
            let Some(addr) = net_addr[open + 1..].strip_suffix(')') else {
                return Err(invalid(
                    key_name,
                    input,
                    "the address after the protocol is not closed with ')'",
                ));
            };
            (&net_addr[..open], addr)
        }
        None => (net_addr, ""),
    };
    let (dbname, query) = right.split_once('?').unwrap_or((right, ""));
    let dbname = unescape(dbname, false)
        .ok_or_else(|| invalid(key_name, input, "the database name has a bad % escape"))?;

    let mut params: Vec<(String, String)> = Vec::new();
    let mut host = String::from("127.0.0.1");
    let mut port = String::from("3306");
    match net {
        "" | "tcp" | "tcp6" => {
            if !addr.is_empty() {
                let (h, p) = if let Some(rest) = addr.strip_prefix('[') {
                    match rest.split_once(']') {
                        Some((h, tail)) => (h, tail.strip_prefix(':')),
                        None => (addr, None),
                    }
                } else if addr.matches(':').count() == 1 {
                    addr.split_once(':')
                        .map_or((addr, None), |(h, p)| (h, Some(p)))
                } else {
                    (addr, None)
                };
                host = h.to_owned();
                if let Some(p) = p {
                    p.parse::<u16>().map_err(|_| {
                        invalid(key_name, input, format!("port {p:?} is not a port number"))
                    })?;
                    port = p.to_owned();
                }
            }
        }
        "unix" => {
            let socket = if addr.is_empty() {
                "/tmp/mysql.sock"
            } else {
                addr
            };
            params.push(("socket".into(), enc(socket)));
            host = "localhost".into();
        }
        other => {
            return Err(invalid(
                key_name,
                input,
                format!("protocol {other:?} is not supported; use tcp(host:port) or unix(/path)"),
            ));
        }
    }

    let mut init = Vec::new();
    let mut tls_mode: Option<&str> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = unescape(v, true)
            .ok_or_else(|| invalid(key_name, input, format!("{k}: bad % escape")))?;
        match k {
            "tls" => {
                tls_mode = Some(match value.as_str() {
                    "true" => "VERIFY_IDENTITY",
                    "skip-verify" => "REQUIRED",
                    "preferred" => "PREFERRED",
                    "false" => "DISABLED",
                    // A registered config name: upstream registers one when root_ca_path is set.
                    _ if tls.root_ca.is_some() => "VERIFY_IDENTITY",
                    other => {
                        return Err(invalid(
                            key_name,
                            input,
                            format!(
                                "tls={other:?} is not true, false, skip-verify or preferred \
                                 (for a custom CA set root_ca_path)"
                            ),
                        ));
                    }
                });
            }
            "charset" => {
                let first = value.split(',').next().unwrap_or_default();
                params.push(("charset".into(), enc(first)));
            }
            "collation" => params.push(("collation".into(), enc(&value))),
            "loc" => {
                if value != "UTC" {
                    tracing::warn!(
                        loc = %value,
                        "connection_string loc is not UTC; this server stores and reads times in \
                         UTC (go-sql-driver's default)"
                    );
                }
            }
            "timeout" => {}
            k if MYSQL_CLIENT_PARAMS.contains(&k) => {}
            k => {
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(invalid(
                        key_name,
                        input,
                        format!("{k:?} is not a parameter or session variable name"),
                    ));
                }
                init.push(format!("SET {k}={value}"));
            }
        }
    }
    let tls_mode = match (tls_mode, &tls.root_ca) {
        (Some(mode), _) => mode,
        // upstream turns TLS on with verification when a root CA is configured.
        (None, Some(_)) => "VERIFY_IDENTITY",
        (None, None) => "DISABLED",
    };
    params.push(("ssl-mode".into(), tls_mode.into()));
    if let Some(ca) = &tls.root_ca {
        params.push(("ssl-ca".into(), path_param(ca)));
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            params.push(("ssl-cert".into(), path_param(cert)));
            params.push(("ssl-key".into(), path_param(key)));
        }
        (None, None) => {}
        _ => {
            return Err(DataStoreError::InvalidArgument(
                "DataStore \"sql\": client_cert_path and client_key_path must be set together"
                    .into(),
            ));
        }
    }

    // Every cached statement is a server-side prepared statement, and MySQL caps them for
    // the whole server (max_prepared_stmt_count, default 16382): with 100 connections per
    // SPIRE server and several servers, sqlx's default cache of 100 per connection could
    // exhaust it.
    params.push(("statement-cache-capacity".into(), "24".into()));
    let mut url = String::from("mysql://");
    if !user.is_empty() {
        url.push_str(&enc(user));
        if let Some(password) = password {
            url.push(':');
            url.push_str(&enc(password));
        }
        url.push('@');
    }
    if host.contains(':') {
        url.push_str(&format!("[{host}]"));
    } else {
        url.push_str(&host);
    }
    url.push(':');
    url.push_str(&port);
    url.push('/');
    url.push_str(&enc(&dbname));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    url.push('?');
    url.push_str(&query.join("&"));
    Ok(Target {
        url,
        init,
        connect_timeout: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_connection_strings_like_upstream() {
        let t = parse_sqlite("./.data/datastore.sqlite3").unwrap();
        assert_eq!(t.path, PathBuf::from("./.data/datastore.sqlite3"));
        assert!(!t.in_memory);
        let t = parse_sqlite("file:memdb?mode=memory&cache=shared").unwrap();
        assert_eq!(t.path, PathBuf::from("memdb"));
        assert!(t.in_memory);
        assert_eq!(
            sqlite_url(&t).unwrap(),
            "sqlite://memdb?mode=memory&cache=shared"
        );
        let t = parse_sqlite("file:///var/lib/spire/ds.db?_busy_timeout=500").unwrap();
        assert_eq!(t.path, PathBuf::from("/var/lib/spire/ds.db"));
        assert_eq!(t.busy_timeout, Duration::from_millis(500));
        assert_eq!(
            sqlite_url(&t).unwrap(),
            "sqlite:///var/lib/spire/ds.db?mode=rwc"
        );
        let t = parse_sqlite("/tmp/a b?.db").unwrap();
        assert_eq!(sqlite_url(&t).unwrap(), "sqlite:///tmp/a%20b?mode=rwc");
        assert!(parse_sqlite("file:?mode=memory").is_err());
    }

    #[test]
    fn postgres_key_value_strings_become_urls() {
        let t = postgres_target(
            "dbname=spire user=spire password=spire host=127.0.0.1 port=5432 sslmode=disable",
            "connection_string",
        )
        .unwrap();
        assert_eq!(
            t.url,
            "postgres://spire:spire@127.0.0.1:5432/spire?sslmode=disable"
        );
        // lib/pq defaults: sslmode=require, host localhost; quoted values with escapes;
        // unknown keys become run-time parameters; sockets go to the host parameter.
        let t = postgres_target(
            "user=a password='p w\\'d' dbname=d search_path=s host=/run/postgresql \
             connect_timeout=5",
            "connection_string",
        )
        .unwrap();
        assert_eq!(
            t.url,
            "postgres://a:p%20w%27d@localhost/d?options[search_path]=s&host=%2Frun%2Fpostgresql\
             &sslmode=require"
        );
        assert_eq!(t.connect_timeout, Some(Duration::from_secs(5)));
        let err = postgres_target("dbname=x sslmode=sometimes", "ro_connection_string")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ro_connection_string") && err.contains("sslmode"),
            "{err}"
        );
        let err = postgres_target("dbname", "connection_string")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dbname"), "{err}");
    }

    #[test]
    fn misspelt_postgres_keywords_are_named() {
        for (typo, meant) in [
            ("usr", "user"),
            ("pasword", "password"),
            ("hots", "host"),
            ("dbnme", "dbname"),
            ("sslmdoe", "sslmode"),
        ] {
            let err = postgres_target(
                &format!("dbname=spire {typo}=x host=127.0.0.1"),
                "connection_string",
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("connection_string")
                    && err.contains(&format!("{typo:?}"))
                    && err.contains(&format!("did you mean {meant:?}")),
                "{typo}: {err}"
            );
        }
        // Real run-time parameters still pass through to the server.
        for key in [
            "search_path",
            "role",
            "timezone",
            "statement_timeout",
            "lock_timeout",
        ] {
            let t = postgres_target(&format!("dbname=d {key}=x"), "connection_string").unwrap();
            assert!(
                t.url.contains(&format!("options[{key}]=x")),
                "{key}: {}",
                t.url
            );
        }
    }

    #[test]
    fn postgres_sessions_plan_with_parameters_unless_told_otherwise() {
        for input in ["dbname=d", "postgres://u@db/spire"] {
            let t = postgres_target(input, "connection_string").unwrap();
            assert_eq!(t.init.len(), 1, "{input}");
            assert!(t.init[0].contains("'plan_cache_mode', 'force_custom_plan'"));
        }
        for input in [
            "dbname=d plan_cache_mode=auto",
            "postgres://u@db/spire?options=-c%20plan_cache_mode%3Dauto",
        ] {
            let t = postgres_target(input, "connection_string").unwrap();
            assert!(t.init.is_empty(), "{input}");
        }
    }

    #[test]
    fn postgres_urls_pass_through_with_lib_pq_defaults() {
        let t = postgres_target("postgresql://u:p@db:5433/spire", "connection_string").unwrap();
        assert_eq!(t.url, "postgresql://u:p@db:5433/spire?sslmode=require");
        let t =
            postgres_target("postgres://u@db/spire?sslmode=disable", "connection_string").unwrap();
        assert_eq!(t.url, "postgres://u@db/spire?sslmode=disable");
    }

    #[test]
    fn mysql_dsns_become_urls() {
        let none = TlsFiles::default();
        let t = mysql_target(
            "spire:spire@tcp(127.0.0.1:3306)/spire?parseTime=true",
            "connection_string",
            &none,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "mysql://spire:spire@127.0.0.1:3306/spire?ssl-mode=DISABLED&statement-cache-capacity=24"
        );
        assert!(t.init.is_empty());
        // Passwords may hold '@' and ':'; sockets; session variables; tls=true verifies.
        let t = mysql_target(
            "u:p@ss:w@unix(/run/mysqld/mysqld.sock)/db?tls=true&sql_mode=%27ANSI%27",
            "connection_string",
            &none,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "mysql://u:p%40ss%3Aw@localhost:3306/db?socket=%2Frun%2Fmysqld%2Fmysqld.sock\
             &ssl-mode=VERIFY_IDENTITY&statement-cache-capacity=24"
        );
        assert_eq!(t.init, ["SET sql_mode='ANSI'"]);
        let t = mysql_target("root@tcp(db)/spire", "connection_string", &none).unwrap();
        assert_eq!(
            t.url,
            "mysql://root@db:3306/spire?ssl-mode=DISABLED&statement-cache-capacity=24"
        );
        let tls = TlsFiles {
            root_ca: Some("/etc/ca.pem".into()),
            client_cert: Some("/etc/c.pem".into()),
            client_key: Some("/etc/k.pem".into()),
        };
        let t = mysql_target("u:p@tcp(db:3306)/spire", "connection_string", &tls).unwrap();
        assert_eq!(
            t.url,
            "mysql://u:p@db:3306/spire?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fetc%2Fca.pem\
             &ssl-cert=%2Fetc%2Fc.pem&ssl-key=%2Fetc%2Fk.pem&statement-cache-capacity=24"
        );
    }

    #[test]
    fn bad_mysql_dsns_name_the_problem() {
        let none = TlsFiles::default();
        let err = |dsn: &str| {
            mysql_target(dsn, "connection_string", &none)
                .unwrap_err()
                .to_string()
        };
        assert!(err("spire:spire@tcp(127.0.0.1:3306)").contains("slash"));
        assert!(err("u@tcp(db:3306/spire").contains("')'"));
        assert!(err("u@udp(db)/spire").contains("udp"));
        assert!(err("u@tcp(db:x)/spire").contains("port"));
        assert!(err("u@tcp(db)/spire?tls=maybe").contains("tls"));
        assert!(err("u@tcp(db)/spire?bad-key=1").contains("bad-key"));
    }
}
