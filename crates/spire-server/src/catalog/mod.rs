//! The plugin catalog: reads `plugins { Type "name" { plugin_data { .. } } }` and decides
//! which built-in plugins run, with their validated settings.
//!
//! The server needs exactly one DataStore, exactly one KeyManager, at least one NodeAttestor
//! and at most one UpstreamAuthority. Names are built-ins only (external plugins via
//! `plugin_cmd` are not supported); unknown names and unknown `plugin_data` keys are errors
//! naming the block. This module only chooses and validates; the server's start-up code
//! builds the plugin instances from the [`Catalog`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::{ConfigError, ServerConfig, de};

/// Plugin types upstream's server knows; the ones without built-ins here are refused by name.
const PLUGIN_TYPES: [&str; 7] = [
    "DataStore",
    "KeyManager",
    "NodeAttestor",
    "UpstreamAuthority",
    "Notifier",
    "BundlePublisher",
    "CredentialComposer",
];

/// The plugins the server runs, chosen and validated from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// `DataStore "sql"`.
    pub datastore: SqlDataStoreConfig,
    /// The one KeyManager.
    pub key_manager: KeyManagerChoice,
    /// The UpstreamAuthority, when one is configured.
    pub upstream_authority: Option<UpstreamAuthorityChoice>,
    /// Names of the enabled NodeAttestors, e.g. `join_token`.
    pub node_attestors: Vec<String>,
}

impl Catalog {
    /// Whether the `join_token` NodeAttestor is enabled.
    pub fn join_token_enabled(&self) -> bool {
        self.node_attestors.iter().any(|n| n == "join_token")
    }
}

/// `database_type` of the SQL DataStore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseType {
    /// SQLite 3; `connection_string` is a file path or `file:` URI.
    Sqlite3,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl DatabaseType {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite3 => "sqlite3",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

/// `DataStore "sql"` settings (see upstream's `doc/plugin_server_datastore_sql.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlDataStoreConfig {
    /// `database_type`.
    pub database_type: DatabaseType,
    /// `connection_string` (relative SQLite paths are relative to the working directory).
    pub connection_string: String,
    /// `ro_connection_string`: read-only replica (not used for sqlite3).
    pub ro_connection_string: Option<String>,
    /// `root_ca_path` (MySQL TLS).
    pub root_ca_path: Option<PathBuf>,
    /// `client_cert_path` (MySQL TLS).
    pub client_cert_path: Option<PathBuf>,
    /// `client_key_path` (MySQL TLS).
    pub client_key_path: Option<PathBuf>,
    /// `max_open_conns` (default 100).
    pub max_open_conns: u32,
    /// `max_idle_conns` (default 2).
    pub max_idle_conns: u32,
    /// `conn_max_lifetime`; `None` means unlimited.
    pub conn_max_lifetime: Option<Duration>,
    /// `disable_migration`: refuse to migrate an older schema.
    pub disable_migration: bool,
    /// `log_sql` (undocumented upstream): log every statement at debug.
    pub log_sql: bool,
}

/// Which KeyManager holds the server's CA and JWT signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerChoice {
    /// `KeyManager "memory"`: keys are lost on restart.
    Memory,
    /// `KeyManager "disk"`: keys persisted in upstream's JSON file format.
    Disk {
        /// `keys_path`.
        keys_path: PathBuf,
    },
}

/// Which UpstreamAuthority signs the server's intermediate CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuthorityChoice {
    /// `UpstreamAuthority "disk"`: a CA certificate and key read from files.
    Disk {
        /// `key_file_path`.
        key_file_path: PathBuf,
        /// `cert_file_path`.
        cert_file_path: PathBuf,
        /// `bundle_file_path`, when the upstream CA is not self-signed.
        bundle_file_path: Option<PathBuf>,
    },
}

/// One `Type "name" { }` declaration, before interpretation.
struct Declaration {
    kind: String,
    name: String,
    body: Value,
}

/// The keys every plugin block takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginBody {
    #[serde(default, deserialize_with = "de::opt_string")]
    plugin_cmd: Option<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    #[allow(
        dead_code,
        reason = "accepted for upstream compatibility; only with plugin_cmd"
    )]
    plugin_args: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    #[allow(
        dead_code,
        reason = "accepted for upstream compatibility; only with plugin_cmd"
    )]
    plugin_checksum: Option<String>,
    #[serde(default)]
    plugin_data: Option<Value>,
    #[serde(default, deserialize_with = "de::opt_string")]
    plugin_data_file: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoData {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlData {
    #[serde(default)]
    database_type: Option<Value>,
    #[serde(default, deserialize_with = "de::opt_string")]
    connection_string: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ro_connection_string: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    root_ca_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    client_cert_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    client_key_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    max_open_conns: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    max_idle_conns: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    conn_max_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    disable_migration: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    log_sql: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskKeyManagerData {
    #[serde(default, deserialize_with = "de::opt_string")]
    keys_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskUpstreamData {
    #[serde(default, deserialize_with = "de::opt_string")]
    key_file_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    cert_file_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    bundle_file_path: Option<String>,
}

/// Builds the catalog from a loaded configuration.
pub fn from_config(config: &ServerConfig) -> Result<Catalog, ConfigError> {
    let file = config.source.as_str();
    let Some(plugins) = config.plugins.as_ref() else {
        return Err(ConfigError::invalid(
            file,
            "plugins",
            "plugins section must be configured: add a plugins { } block with a DataStore, a \
             KeyManager and a NodeAttestor",
        ));
    };
    let mut declarations = Vec::new();
    collect_types(file, plugins, &mut declarations)?;

    let mut datastores = Vec::new();
    let mut key_managers = Vec::new();
    let mut upstream_authorities = Vec::new();
    let mut node_attestors: Vec<String> = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();

    for decl in declarations {
        let ident = (decl.kind.clone(), decl.name.clone());
        if seen.contains(&ident) {
            return Err(ConfigError::invalid(
                file,
                format!("plugins.{}", decl.kind),
                format!(
                    "plugin {} {:?} is configured more than once; keep one block",
                    decl.kind, decl.name
                ),
            ));
        }
        seen.push(ident);
        let label = format!("{} {:?}", decl.kind, decl.name);
        let body: PluginBody = parse_part(
            file,
            &decl.body,
            &label,
            &format!("plugins.{}.{}", decl.kind, decl.name),
        )?;
        if body.enabled == Some(false) {
            continue;
        }
        if let Some(cmd) = &body.plugin_cmd {
            return Err(ConfigError::invalid(
                file,
                format!("plugins.{}.{}.plugin_cmd", decl.kind, decl.name),
                format!(
                    "external plugins are not supported ({label} sets plugin_cmd = {cmd:?}); \
                     remove the block or use a built-in plugin"
                ),
            ));
        }
        let (data, data_source) = plugin_data(file, &decl, &body)?;
        let data_label = format!("the plugin_data of {label}");
        let data_path = format!("plugins.{}.{}.plugin_data", decl.kind, decl.name);
        let data_file = data_source.as_deref().unwrap_or(file);
        match (decl.kind.as_str(), decl.name.as_str()) {
            ("DataStore", "sql") => {
                let d: SqlData = parse_part(data_file, &data, &data_label, &data_path)?;
                datastores.push(sql_config(data_file, &data_path, d)?);
            }
            ("KeyManager", "memory") => {
                parse_part::<NoData>(data_file, &data, &data_label, &data_path)?;
                key_managers.push(KeyManagerChoice::Memory);
            }
            ("KeyManager", "disk") => {
                let d: DiskKeyManagerData = parse_part(data_file, &data, &data_label, &data_path)?;
                let keys_path = required(data_file, &data_path, "keys_path", d.keys_path)?;
                key_managers.push(KeyManagerChoice::Disk {
                    keys_path: PathBuf::from(keys_path),
                });
            }
            ("UpstreamAuthority", "disk") => {
                let d: DiskUpstreamData = parse_part(data_file, &data, &data_label, &data_path)?;
                upstream_authorities.push(UpstreamAuthorityChoice::Disk {
                    key_file_path: PathBuf::from(required(
                        data_file,
                        &data_path,
                        "key_file_path",
                        d.key_file_path,
                    )?),
                    cert_file_path: PathBuf::from(required(
                        data_file,
                        &data_path,
                        "cert_file_path",
                        d.cert_file_path,
                    )?),
                    bundle_file_path: d.bundle_file_path.map(PathBuf::from),
                });
            }
            ("NodeAttestor", "join_token") => {
                parse_part::<NoData>(data_file, &data, &data_label, &data_path)?;
                node_attestors.push(decl.name.clone());
            }
            (kind, name) => {
                return Err(ConfigError::invalid(
                    file,
                    format!("plugins.{kind}.{name}"),
                    format!(
                        "unknown or not yet supported built-in plugin {kind} {name:?}; {}",
                        supported_names(kind)
                    ),
                ));
            }
        }
    }

    let datastore = exactly_one(file, "DataStore", datastores, "DataStore \"sql\"")?;
    let key_manager = exactly_one(file, "KeyManager", key_managers, "KeyManager \"disk\"")?;
    if upstream_authorities.len() > 1 {
        return Err(ConfigError::invalid(
            file,
            "plugins.UpstreamAuthority",
            format!(
                "at most one UpstreamAuthority may be configured; found {}",
                upstream_authorities.len()
            ),
        ));
    }
    if node_attestors.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "plugins.NodeAttestor",
            "at least one NodeAttestor must be configured: add NodeAttestor \"join_token\" { \
             plugin_data {} }",
        ));
    }
    Ok(Catalog {
        datastore,
        key_manager,
        upstream_authority: upstream_authorities.pop(),
        node_attestors,
    })
}

fn supported_names(kind: &str) -> &'static str {
    match kind {
        "DataStore" => "the supported DataStore is \"sql\"",
        "KeyManager" => "supported KeyManagers are \"disk\" and \"memory\"",
        "NodeAttestor" => "the supported NodeAttestor is \"join_token\"",
        "UpstreamAuthority" => "the supported UpstreamAuthority is \"disk\"",
        _ => "no built-in plugins of this type are available yet; remove the block",
    }
}

fn exactly_one<T>(
    file: &str,
    kind: &str,
    mut found: Vec<T>,
    example: &str,
) -> Result<T, ConfigError> {
    match found.len() {
        1 => found
            .pop()
            .ok_or_else(|| ConfigError::invalid(file, kind, "internal error")),
        0 => Err(ConfigError::invalid(
            file,
            format!("plugins.{kind}"),
            format!("exactly one {kind} must be configured; found none: add a {example} block"),
        )),
        n => Err(ConfigError::invalid(
            file,
            format!("plugins.{kind}"),
            format!("exactly one {kind} must be configured; found {n}: keep one of them"),
        )),
    }
}

fn required(
    file: &str,
    path: &str,
    key: &str,
    value: Option<String>,
) -> Result<String, ConfigError> {
    value.ok_or_else(|| {
        ConfigError::invalid(file, format!("{path}.{key}"), format!("{key} is required"))
    })
}

fn sql_config(file: &str, path: &str, d: SqlData) -> Result<SqlDataStoreConfig, ConfigError> {
    let database_type = match d.database_type {
        None | Some(Value::Null) => {
            return Err(ConfigError::invalid(
                file,
                format!("{path}.database_type"),
                "database_type must be set: use \"sqlite3\", \"postgres\" or \"mysql\"",
            ));
        }
        Some(Value::String(s)) => match s.as_str() {
            "sqlite3" => DatabaseType::Sqlite3,
            "postgres" => DatabaseType::Postgres,
            "mysql" => DatabaseType::Mysql,
            other => {
                return Err(ConfigError::invalid(
                    file,
                    format!("{path}.database_type"),
                    format!(
                        "unsupported database_type {other:?}; use \"sqlite3\", \"postgres\" or \
                         \"mysql\""
                    ),
                ));
            }
        },
        Some(other) => {
            let name = block_name(&other).unwrap_or_else(|| other.to_string());
            return Err(ConfigError::invalid(
                file,
                format!("{path}.database_type"),
                format!(
                    "database_type {name:?} (cloud IAM authentication) is not supported yet; use \
                     \"sqlite3\", \"postgres\" or \"mysql\" with credentials in the connection \
                     string"
                ),
            ));
        }
    };
    let connection_string = d.connection_string.ok_or_else(|| {
        ConfigError::invalid(
            file,
            format!("{path}.connection_string"),
            "connection_string must be set",
        )
    })?;
    let count = |key: &str, v: Option<i64>, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) => u32::try_from(n).map_err(|_| {
                ConfigError::invalid(
                    file,
                    format!("{path}.{key}"),
                    format!("{n} is not a valid connection count; use 0 or more"),
                )
            }),
        }
    };
    Ok(SqlDataStoreConfig {
        database_type,
        connection_string,
        ro_connection_string: d.ro_connection_string,
        root_ca_path: d.root_ca_path.map(PathBuf::from),
        client_cert_path: d.client_cert_path.map(PathBuf::from),
        client_key_path: d.client_key_path.map(PathBuf::from),
        max_open_conns: count("max_open_conns", d.max_open_conns, 100)?,
        max_idle_conns: count("max_idle_conns", d.max_idle_conns, 2)?,
        conn_max_lifetime: d.conn_max_lifetime.filter(|l| !l.is_zero()),
        disable_migration: d.disable_migration.unwrap_or(false),
        log_sql: d.log_sql.unwrap_or(false),
    })
}

/// The single key of a block written as `{ name: {..} }` or `[{ name: {..} }]`.
fn block_name(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) if map.len() == 1 => map.keys().next().cloned(),
        Value::Array(items) if items.len() == 1 => items.first().and_then(block_name),
        _ => None,
    }
}

/// Reads `plugin_data` (a block, a string holding HCL/JSON, or absent) or `plugin_data_file`.
/// Returns the data and, for a data file, its name for error messages.
fn plugin_data(
    file: &str,
    decl: &Declaration,
    body: &PluginBody,
) -> Result<(Value, Option<String>), ConfigError> {
    let key = format!("plugins.{}.{}", decl.kind, decl.name);
    let data = body.plugin_data.clone().unwrap_or(Value::Null);
    if let Some(path) = &body.plugin_data_file {
        if !data.is_null() {
            return Err(ConfigError::invalid(
                file,
                key,
                "plugin_data and plugin_data_file are mutually exclusive; keep one",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(
                file,
                format!("{key}.plugin_data_file"),
                format!("could not read {path:?}: {e}"),
            )
        })?;
        let value = spire_core::config::parse_value(path, &text)?;
        return Ok((normalize_data(value), Some(path.clone())));
    }
    let data = match data {
        Value::String(text) => {
            spire_core::config::parse_value(&format!("{file} ({key}.plugin_data)"), &text)?
        }
        other => other,
    };
    Ok((normalize_data(data), None))
}

/// `plugin_data` may be absent, null, an object, or a one-element list (JSON forms).
fn normalize_data(value: Value) -> Value {
    match value {
        Value::Null => Value::Object(Map::new()),
        Value::Array(mut items) if items.len() == 1 => {
            normalize_data(items.pop().unwrap_or(Value::Null))
        }
        other => other,
    }
}

/// Deserializes part of the plugins block, rewriting error locations so they name the block
/// (`the plugin_data of KeyManager "disk"`) and the full key path.
fn parse_part<T: DeserializeOwned>(
    file: &str,
    value: &Value,
    label: &str,
    path: &str,
) -> Result<T, ConfigError> {
    use spire_core::config::ConfigError as Core;
    spire_core::config::from_value(file, value.clone()).map_err(|err| {
        let err = match err {
            Core::UnknownKey {
                file,
                key,
                expected,
                ..
            } => Core::UnknownKey {
                file,
                key,
                block: label.to_owned(),
                expected,
            },
            Core::Invalid {
                file,
                path: inner,
                message,
            } => Core::Invalid {
                file,
                path: if inner == "top level" {
                    path.to_owned()
                } else {
                    format!("{path}.{inner}")
                },
                message,
            },
            other => other,
        };
        ConfigError::Parse(err)
    })
}

/// Walks `plugins`: `{ Type: {..} }` or a list of such objects (JSON forms).
fn collect_types(
    file: &str,
    plugins: &Value,
    out: &mut Vec<Declaration>,
) -> Result<(), ConfigError> {
    match plugins {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| collect_types(file, item, out)),
        Value::Object(map) => {
            for (kind, named) in map {
                if !PLUGIN_TYPES.contains(&kind.as_str()) {
                    return Err(ConfigError::invalid(
                        file,
                        format!("plugins.{kind}"),
                        format!(
                            "unknown plugin type {kind:?}; plugin types are {}",
                            PLUGIN_TYPES.join(", ")
                        ),
                    ));
                }
                collect_names(file, kind, named, out)?;
            }
            Ok(())
        }
        _ => Err(ConfigError::invalid(
            file,
            "plugins",
            "plugins must be a block of Type \"name\" { } declarations",
        )),
    }
}

/// Walks one type: `{ name: body }`, `{ name: [body, ..] }` or a list of such objects.
fn collect_names(
    file: &str,
    kind: &str,
    named: &Value,
    out: &mut Vec<Declaration>,
) -> Result<(), ConfigError> {
    match named {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| collect_names(file, kind, item, out)),
        Value::Object(map) => {
            for (name, body) in map {
                match body {
                    Value::Array(bodies) => {
                        for b in bodies {
                            out.push(declaration(file, kind, name, b)?);
                        }
                    }
                    b => out.push(declaration(file, kind, name, b)?),
                }
            }
            Ok(())
        }
        _ => Err(ConfigError::invalid(
            file,
            format!("plugins.{kind}"),
            format!("write {kind} plugins as {kind} \"name\" {{ plugin_data {{ }} }}"),
        )),
    }
}

fn declaration(
    file: &str,
    kind: &str,
    name: &str,
    body: &Value,
) -> Result<Declaration, ConfigError> {
    let body = match body {
        Value::Null => Value::Object(Map::new()),
        Value::Object(_) => body.clone(),
        _ => {
            return Err(ConfigError::invalid(
                file,
                format!("plugins.{kind}.{name}"),
                format!(
                    "{kind} {name:?} must be a block: {kind} \"{name}\" {{ plugin_data {{ }} }}"
                ),
            ));
        }
    };
    Ok(Declaration {
        kind: kind.to_owned(),
        name: name.to_owned(),
        body,
    })
}
