//! SQL datastore connection strings (libpq `key=value` and URLs, go-sql-driver DSNs, SQLite
//! paths and `file:` URIs): parsing never panics and never connects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spire_server::datastore::sql::{SqlConfig, SqlDataStore, SqlOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let database_type = ["sqlite3", "postgres", "mysql"][usize::from(selector % 3)];
    // A second string after a NUL is the read replica's.
    let (primary, replica) = match text.split_once('\0') {
        Some((primary, replica)) => (primary, Some(replica.to_owned())),
        None => (text, None),
    };
    let config = SqlConfig {
        database_type: database_type.to_owned(),
        connection_string: primary.to_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    let options = SqlOptions {
        ro_connection_string: replica,
        ..SqlOptions::default()
    };
    let _ = SqlDataStore::check_connection_strings(&config, &options);
    let plugin_data = serde_json::json!({
        "database_type": database_type,
        "connection_string": primary,
        "conn_max_lifetime": primary,
    });
    let _ = SqlConfig::from_plugin_data(&plugin_data);
    let _ = SqlOptions::from_plugin_data(&plugin_data);
});
