//! The plugin catalog: reads `plugins { Type "name" { plugin_data { .. } } }` and decides
//! which built-in plugins run, with their validated settings.
//!
//! The server needs exactly one DataStore, exactly one KeyManager, at least one NodeAttestor
//! and at most one UpstreamAuthority; Notifiers, BundlePublishers and CredentialComposers are
//! optional. A block with `plugin_cmd` names an external plugin (NodeAttestor, KeyManager,
//! Notifier, UpstreamAuthority, BundlePublisher, CredentialComposer), loaded when the server starts; other names are
//! built-ins, and unknown names and unknown `plugin_data` keys are errors naming the block. This module only chooses and validates; the server's start-up code
//! builds the plugin instances from the [`Catalog`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use spire_core::config::plugins::{ExternalPlugin, enabled_plugins, exactly_one};

use crate::config::{ConfigError, ServerConfig, de};
use crate::plugins::nodeattestor::aws_iid::{self, AwsIidConfig};
use crate::plugins::nodeattestor::k8s_psat::{self, K8sPsatConfig};
use crate::plugins::nodeattestor::sshpop::{self, SshPopConfig};
use crate::plugins::nodeattestor::x509pop::{self, X509PopConfig};
use crate::plugins::notifier::k8sbundle::{self, K8sBundleConfig};
use crate::plugins::upstreamauthority::aws_pca::{self, AwsPcaConfig};
use crate::plugins::upstreamauthority::awssecret::{self, AwsSecretConfig};
use crate::plugins::upstreamauthority::ejbca::{self, EjbcaConfig};
use crate::plugins::upstreamauthority::spire::{self as spire_ua, SpireUpstreamAuthorityConfig};

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
    /// The enabled NodeAttestors, in configuration order.
    pub node_attestors: Vec<NodeAttestorChoice>,
    /// The enabled Notifiers, in configuration order (none is fine).
    pub notifiers: Vec<NotifierChoice>,
    /// The enabled BundlePublishers, in configuration order (none is fine).
    pub bundle_publishers: Vec<BundlePublisherChoice>,
    /// The enabled CredentialComposers, applied in the order the plugins block gives them
    /// (by name within the type); none is fine.
    pub credential_composers: Vec<CredentialComposerChoice>,
}

/// A server BundlePublisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundlePublisherChoice {
    /// `BundlePublisher "k8s_configmap"`: the bundle under a key of Kubernetes ConfigMaps.
    K8sConfigMap(crate::plugins::bundlepublisher::k8s_configmap::K8sConfigMapConfig),
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol, loaded at start-up.
    External(ExternalPlugin),
}

/// A server CredentialComposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialComposerChoice {
    /// `CredentialComposer "uniqueid"`: x500UniqueIdentifier on workload X509-SVIDs.
    UniqueId,
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol, loaded at start-up.
    External(ExternalPlugin),
}

/// Upstream's built-in BundlePublishers, which are not ported: refused by name.
const UNPORTED_BUNDLE_PUBLISHERS: [&str; 3] = [
    "aws_s3",
    "gcp_cloudstorage",
    "aws_rolesanywhere_trustanchor",
];

/// A server Notifier and its validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifierChoice {
    /// `Notifier "k8sbundle"`: the bundle into a ConfigMap, webhooks and APIServices.
    K8sBundle(K8sBundleConfig),
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol, loaded at start-up.
    External(ExternalPlugin),
}

/// A server NodeAttestor and its validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestorChoice {
    /// `NodeAttestor "join_token"` (no plugin_data).
    JoinToken,
    /// `NodeAttestor "k8s_psat"`.
    K8sPsat(K8sPsatConfig),
    /// `NodeAttestor "x509pop"`.
    X509Pop(X509PopConfig),
    /// `NodeAttestor "sshpop"`.
    SshPop(SshPopConfig),
    /// `NodeAttestor "gcp_iit"`.
    GcpIit(crate::plugins::nodeattestor::gcp_iit::GcpIitConfig),
    /// `NodeAttestor "azure_msi"`.
    AzureMsi(crate::plugins::nodeattestor::azure_msi::AzureMsiConfig),
    /// `NodeAttestor "azure_imds"`.
    AzureImds(crate::plugins::nodeattestor::azure_imds::AzureImdsConfig),
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol, loaded at start-up.
    External(ExternalPlugin),
    /// `NodeAttestor "aws_iid"`.
    AwsIid(AwsIidConfig),
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
    /// `KeyManager "aws_kms"`: keys in AWS KMS, signing through `kms:Sign`.
    AwsKms(crate::plugins::keymanager::aws_kms::AwsKmsConfig),
    /// A `plugin_cmd` plugin speaking upstream's KeyManager v1 protocol, loaded at start-up.
    External(ExternalPlugin),
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
    /// `UpstreamAuthority "spire"`: another SPIRE server (nested SPIRE).
    Spire(SpireUpstreamAuthorityConfig),
    /// `UpstreamAuthority "awssecret"`: a CA from AWS Secrets Manager.
    AwsSecret(AwsSecretConfig),
    /// `UpstreamAuthority "aws_pca"`: AWS Certificate Manager Private CA.
    AwsPca(AwsPcaConfig),
    /// `UpstreamAuthority "ejbca"`: a Keyfactor EJBCA CA through its REST API.
    Ejbca(EjbcaConfig),
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol, loaded at start-up.
    External(ExternalPlugin),
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
    let declarations = enabled_plugins(file, plugins, &PLUGIN_TYPES, &|path| {
        std::fs::read_to_string(path)
    })?;

    let mut datastores = Vec::new();
    let mut key_managers = Vec::new();
    let mut upstream_authorities = Vec::new();
    let mut node_attestors: Vec<NodeAttestorChoice> = Vec::new();
    let mut notifiers: Vec<NotifierChoice> = Vec::new();
    let mut bundle_publishers: Vec<BundlePublisherChoice> = Vec::new();
    let mut credential_composers: Vec<CredentialComposerChoice> = Vec::new();

    for decl in declarations {
        if let Some(external) = decl.external.clone() {
            match decl.kind.as_str() {
                "Notifier" => notifiers.push(NotifierChoice::External(external)),
                "KeyManager" => key_managers.push(KeyManagerChoice::External(external)),
                "NodeAttestor" => node_attestors.push(NodeAttestorChoice::External(external)),
                "UpstreamAuthority" => {
                    upstream_authorities.push(UpstreamAuthorityChoice::External(external));
                }
                "BundlePublisher" => {
                    bundle_publishers.push(BundlePublisherChoice::External(external));
                }
                "CredentialComposer" => {
                    credential_composers.push(CredentialComposerChoice::External(external));
                }
                _ => {
                    return Err(ConfigError::invalid(
                        file,
                        format!("plugins.{}.{}.plugin_cmd", decl.kind, decl.name),
                        format!(
                            "external {} plugins are not supported yet (external NodeAttestor, \
                             KeyManager, Notifier, UpstreamAuthority, BundlePublisher and \
                             CredentialComposer plugins are); use a built-in {}",
                            decl.kind, decl.kind
                        ),
                    ));
                }
            }
            continue;
        }
        let data_file = decl.data_file();
        let data_path = decl.data_path();
        match (decl.kind.as_str(), decl.name.as_str()) {
            ("DataStore", "sql") => {
                let d: SqlData = decl.parse_data()?;
                datastores.push(sql_config(data_file, &data_path, d)?);
            }
            ("KeyManager", "memory") => {
                decl.parse_data::<NoData>()?;
                key_managers.push(KeyManagerChoice::Memory);
            }
            ("KeyManager", "disk") => {
                let d: DiskKeyManagerData = decl.parse_data()?;
                let keys_path = required(data_file, &data_path, "keys_path", d.keys_path)?;
                key_managers.push(KeyManagerChoice::Disk {
                    keys_path: PathBuf::from(keys_path),
                });
            }
            ("KeyManager", crate::plugins::keymanager::aws_kms::NAME) => {
                use crate::plugins::keymanager::aws_kms::{AwsKmsConfig, Data};
                let d: Data = decl.parse_data()?;
                key_managers.push(KeyManagerChoice::AwsKms(AwsKmsConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("UpstreamAuthority", "disk") => {
                let d: DiskUpstreamData = decl.parse_data()?;
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
            ("UpstreamAuthority", spire_ua::NAME) => {
                let d: spire_ua::Data = decl.parse_data()?;
                upstream_authorities.push(UpstreamAuthorityChoice::Spire(
                    SpireUpstreamAuthorityConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("UpstreamAuthority", awssecret::NAME) => {
                let d: awssecret::Data = decl.parse_data()?;
                upstream_authorities.push(UpstreamAuthorityChoice::AwsSecret(
                    AwsSecretConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("UpstreamAuthority", aws_pca::NAME) => {
                let d: aws_pca::Data = decl.parse_data()?;
                upstream_authorities.push(UpstreamAuthorityChoice::AwsPca(
                    AwsPcaConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("UpstreamAuthority", ejbca::NAME) => {
                let d: ejbca::Data = decl.parse_data()?;
                upstream_authorities.push(UpstreamAuthorityChoice::Ejbca(EjbcaConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("NodeAttestor", "join_token") => {
                decl.parse_data::<NoData>()?;
                node_attestors.push(NodeAttestorChoice::JoinToken);
            }
            ("NodeAttestor", "k8s_psat") => {
                let d: k8s_psat::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::K8sPsat(K8sPsatConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("NodeAttestor", x509pop::NAME) => {
                let d: x509pop::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::X509Pop(X509PopConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("NodeAttestor", sshpop::NAME) => {
                let d: sshpop::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::SshPop(SshPopConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("NodeAttestor", "gcp_iit") => {
                use crate::plugins::nodeattestor::gcp_iit;
                let d: gcp_iit::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::GcpIit(
                    gcp_iit::GcpIitConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("NodeAttestor", "azure_msi") => {
                use crate::plugins::nodeattestor::azure_msi;
                let d: azure_msi::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::AzureMsi(
                    azure_msi::AzureMsiConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("NodeAttestor", "azure_imds") => {
                use crate::plugins::nodeattestor::azure_imds;
                let d: azure_imds::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::AzureImds(
                    azure_imds::AzureImdsConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("NodeAttestor", aws_iid::NAME) => {
                let d: aws_iid::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::AwsIid(AwsIidConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("Notifier", k8sbundle::NAME) => {
                let d: k8sbundle::Data = decl.parse_data()?;
                notifiers.push(NotifierChoice::K8sBundle(K8sBundleConfig::from_data(
                    data_file, &data_path, d,
                )?));
            }
            ("CredentialComposer", crate::plugins::credentialcomposer::uniqueid::NAME) => {
                decl.parse_data::<NoData>()?;
                credential_composers.push(CredentialComposerChoice::UniqueId);
            }
            ("BundlePublisher", crate::plugins::bundlepublisher::k8s_configmap::NAME) => {
                use crate::plugins::bundlepublisher::k8s_configmap::{Data, K8sConfigMapConfig};
                let d: Data = decl.parse_data()?;
                bundle_publishers.push(BundlePublisherChoice::K8sConfigMap(
                    K8sConfigMapConfig::from_data(data_file, &data_path, d)?,
                ));
            }
            ("BundlePublisher", name) if UNPORTED_BUNDLE_PUBLISHERS.contains(&name) => {
                return Err(ConfigError::invalid(
                    file,
                    format!("plugins.BundlePublisher.{name}"),
                    format!(
                        "the built-in BundlePublisher {name:?} is not available in this \
                         implementation; {}",
                        supported_names("BundlePublisher")
                    ),
                ));
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
        notifiers,
        bundle_publishers,
        credential_composers,
    })
}

fn supported_names(kind: &str) -> &'static str {
    match kind {
        "DataStore" => "the supported DataStore is \"sql\"",
        "KeyManager" => {
            "supported KeyManagers are \"disk\", \"memory\" and \"aws_kms\" (or any with \
             plugin_cmd)"
        }
        "NodeAttestor" => {
            "supported NodeAttestors are \"join_token\", \"k8s_psat\", \"x509pop\", \"sshpop\", \"gcp_iit\", \"azure_msi\", \"azure_imds\" and \"aws_iid\""
        }
        "UpstreamAuthority" => {
            "supported UpstreamAuthorities are \"disk\", \"spire\", \"awssecret\", \"aws_pca\" and \"ejbca\""
        }
        "Notifier" => "the supported Notifier is \"k8sbundle\"",
        "BundlePublisher" => {
            "the supported built-in BundlePublisher is \"k8s_configmap\"; run others with \
             plugin_cmd (upstream's plugin binaries work)"
        }
        "CredentialComposer" => {
            "the supported built-in CredentialComposer is \"uniqueid\"; run others with \
             plugin_cmd (upstream's plugin binaries work)"
        }
        _ => "no built-in plugins of this type are available yet; remove the block",
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
