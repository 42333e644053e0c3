//! The agent's `plugins { Type "name" { plugin_data { .. } } }` block: which built-in plugins
//! run, with their validated settings.
//!
//! The agent needs exactly one KeyManager, exactly one NodeAttestor and at least one
//! WorkloadAttestor, as upstream's catalog requires. Names are built-ins only (external
//! plugins via `plugin_cmd` are not supported); unknown names and unknown `plugin_data` keys
//! are errors naming the block.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{ConfigError, de};

/// Plugin types upstream's agent knows; the ones without built-ins here are refused by name.
const PLUGIN_TYPES: [&str; 4] = [
    "KeyManager",
    "NodeAttestor",
    "WorkloadAttestor",
    "SVIDStore",
];

/// The plugins the agent runs, chosen and validated from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugins {
    /// The one NodeAttestor.
    pub node_attestor: NodeAttestorChoice,
    /// The one KeyManager (holds the agent's own key and SVID).
    pub key_manager: KeyManagerChoice,
    /// The WorkloadAttestors, in the order written.
    pub workload_attestors: Vec<WorkloadAttestorChoice>,
}

impl Plugins {
    /// The unix WorkloadAttestor's settings, when it is enabled.
    pub fn unix_attestor(&self) -> Option<&UnixAttestorConfig> {
        self.workload_attestors.first().map(|w| match w {
            WorkloadAttestorChoice::Unix(c) => c,
        })
    }
}

/// How the agent proves its identity to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAttestorChoice {
    /// `NodeAttestor "join_token"`: the token from `join_token` / `-joinToken`.
    JoinToken,
}

impl NodeAttestorChoice {
    /// The plugin name, as the attestation type and in the agent's SPIFFE ID.
    pub fn name(self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
        }
    }
}

/// Where the agent keeps its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerChoice {
    /// `KeyManager "memory"`: lost on restart, so the agent re-attests.
    Memory,
    /// `KeyManager "disk"`: persisted in upstream's file format.
    Disk {
        /// `directory`: where the key file is written.
        directory: PathBuf,
    },
}

/// A workload attestor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadAttestorChoice {
    /// `WorkloadAttestor "unix"`.
    Unix(UnixAttestorConfig),
}

/// `WorkloadAttestor "unix"` settings (upstream's `plugin_agent_workloadattestor_unix.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixAttestorConfig {
    /// `discover_workload_path`: add `unix:path` (and `unix:sha256`) selectors.
    pub discover_workload_path: bool,
    /// `workload_size_limit`: largest binary to hash for `unix:sha256`; 0 means no limit, a
    /// negative value means never hash.
    pub workload_size_limit: i64,
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
struct DiskKeyManagerData {
    #[serde(default, deserialize_with = "de::opt_string")]
    directory: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnixData {
    #[serde(default, deserialize_with = "de::opt_bool")]
    discover_workload_path: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    workload_size_limit: Option<i64>,
}

/// Interprets the raw `plugins` block of `file`.
pub fn from_value(file: &str, plugins: Option<&Value>) -> Result<Plugins, ConfigError> {
    let Some(plugins) = plugins else {
        return Err(ConfigError::invalid(
            file,
            "plugins",
            "plugins section must be configured: add a plugins { } block with a NodeAttestor, \
             a KeyManager and a WorkloadAttestor",
        ));
    };
    let mut declarations = Vec::new();
    collect_types(file, plugins, &mut declarations)?;

    let mut node_attestors = Vec::new();
    let mut key_managers = Vec::new();
    let mut workload_attestors = Vec::new();
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
            ("NodeAttestor", "join_token") => {
                parse_part::<NoData>(data_file, &data, &data_label, &data_path)?;
                node_attestors.push(NodeAttestorChoice::JoinToken);
            }
            ("KeyManager", "memory") => {
                parse_part::<NoData>(data_file, &data, &data_label, &data_path)?;
                key_managers.push(KeyManagerChoice::Memory);
            }
            ("KeyManager", "disk") => {
                let d: DiskKeyManagerData = parse_part(data_file, &data, &data_label, &data_path)?;
                let Some(directory) = d.directory else {
                    return Err(ConfigError::invalid(
                        data_file,
                        format!("{data_path}.directory"),
                        "directory must be configured: the folder the agent's key is kept in, \
                         e.g. directory = \"./.data\"",
                    ));
                };
                key_managers.push(KeyManagerChoice::Disk {
                    directory: PathBuf::from(directory),
                });
            }
            ("WorkloadAttestor", "unix") => {
                let d: UnixData = parse_part(data_file, &data, &data_label, &data_path)?;
                workload_attestors.push(WorkloadAttestorChoice::Unix(UnixAttestorConfig {
                    discover_workload_path: d.discover_workload_path.unwrap_or(false),
                    workload_size_limit: d.workload_size_limit.unwrap_or(0),
                }));
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

    let node_attestor = exactly_one(
        file,
        "NodeAttestor",
        node_attestors,
        "NodeAttestor \"join_token\"",
    )?;
    let key_manager = exactly_one(file, "KeyManager", key_managers, "KeyManager \"disk\"")?;
    if workload_attestors.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "plugins.WorkloadAttestor",
            "at least one WorkloadAttestor must be configured: add WorkloadAttestor \"unix\" { \
             plugin_data {} }",
        ));
    }
    Ok(Plugins {
        node_attestor,
        key_manager,
        workload_attestors,
    })
}

fn supported_names(kind: &str) -> &'static str {
    match kind {
        "KeyManager" => "supported KeyManagers are \"disk\" and \"memory\"",
        "NodeAttestor" => "the supported NodeAttestor is \"join_token\"",
        "WorkloadAttestor" => "the supported WorkloadAttestor is \"unix\"",
        _ => "no built-in plugins of this type are available yet; remove the block",
    }
}

fn exactly_one<T>(
    file: &str,
    kind: &str,
    mut found: Vec<T>,
    example: &str,
) -> Result<T, ConfigError> {
    if found.len() > 1 {
        return Err(ConfigError::invalid(
            file,
            format!("plugins.{kind}"),
            format!(
                "exactly one {kind} must be configured; found {}: keep one of them",
                found.len()
            ),
        ));
    }
    found.pop().ok_or_else(|| {
        ConfigError::invalid(
            file,
            format!("plugins.{kind}"),
            format!("exactly one {kind} must be configured; found none: add a {example} block"),
        )
    })
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
                            "unknown plugin type {kind:?}; agent plugin types are {}",
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
