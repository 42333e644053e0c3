//! The agent's `plugins { Type "name" { plugin_data { .. } } }` block: which built-in plugins
//! run, with their validated settings.
//!
//! The agent needs exactly one KeyManager, exactly one NodeAttestor and at least one
//! WorkloadAttestor, as upstream's catalog requires. Names are built-ins only (external
//! plugins via `plugin_cmd` are not supported); unknown names and unknown `plugin_data` keys
//! are errors naming the block.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use spire_core::config::plugins::{enabled_plugins, exactly_one};

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
    let declarations = enabled_plugins(file, plugins, &PLUGIN_TYPES, &|path| {
        std::fs::read_to_string(path)
    })?;

    let mut node_attestors = Vec::new();
    let mut key_managers = Vec::new();
    let mut workload_attestors = Vec::new();

    for decl in declarations {
        match (decl.kind.as_str(), decl.name.as_str()) {
            ("NodeAttestor", "join_token") => {
                decl.parse_data::<NoData>()?;
                node_attestors.push(NodeAttestorChoice::JoinToken);
            }
            ("KeyManager", "memory") => {
                decl.parse_data::<NoData>()?;
                key_managers.push(KeyManagerChoice::Memory);
            }
            ("KeyManager", "disk") => {
                let d: DiskKeyManagerData = decl.parse_data()?;
                let Some(directory) = d.directory else {
                    return Err(ConfigError::invalid(
                        decl.data_file(),
                        format!("{}.directory", decl.data_path()),
                        "directory must be configured: the folder the agent's key is kept in, \
                         e.g. directory = \"./.data\"",
                    ));
                };
                key_managers.push(KeyManagerChoice::Disk {
                    directory: PathBuf::from(directory),
                });
            }
            ("WorkloadAttestor", "unix") => {
                let d: UnixData = decl.parse_data()?;
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
