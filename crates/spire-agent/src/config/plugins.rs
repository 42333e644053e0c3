//! The agent's `plugins { Type "name" { plugin_data { .. } } }` block: which built-in plugins
//! run, with their validated settings.
//!
//! The agent needs exactly one KeyManager, exactly one NodeAttestor and at least one
//! WorkloadAttestor, as upstream's catalog requires. A block with `plugin_cmd` names an
//! external plugin (any of the four types), loaded at start-up; other
//! names are built-ins, and unknown names and unknown `plugin_data` keys are errors naming
//! the block.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use spire_core::config::plugins::{ExternalPlugin, enabled_plugins, exactly_one};

use super::{ConfigError, de};
use crate::plugins::nodeattestor::aws_iid::{self, AwsIidConfig};
use crate::plugins::nodeattestor::k8s_psat::{self, K8sPsatConfig};
use crate::plugins::nodeattestor::sshpop::{self, SshPopConfig};
use crate::plugins::nodeattestor::x509pop::{self, X509PopConfig};
use crate::plugins::workloadattestor::docker::DockerAttestorConfig;
use crate::plugins::workloadattestor::k8s::{
    self as k8s, K8sAttestorConfig, KubeletCredentials, KubeletEndpoint,
};

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
    /// The external (`plugin_cmd`) SVIDStores, in the order written.
    pub svid_stores: Vec<ExternalPlugin>,
    /// The built-in `aws_secretsmanager` SVIDStore, when configured.
    pub aws_secretsmanager:
        Option<crate::plugins::svidstore::aws_secretsmanager::AwsSecretsManagerConfig>,
}

impl Plugins {
    /// The unix WorkloadAttestor's settings, when it is enabled.
    pub fn unix_attestor(&self) -> Option<&UnixAttestorConfig> {
        self.workload_attestors.iter().find_map(|w| match w {
            WorkloadAttestorChoice::Unix(c) => Some(c),
            WorkloadAttestorChoice::K8s(_)
            | WorkloadAttestorChoice::Docker(_)
            | WorkloadAttestorChoice::External(_) => None,
        })
    }
}

/// How the agent proves its identity to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestorChoice {
    /// `NodeAttestor "join_token"`: the token from `join_token` / `-joinToken`.
    JoinToken,
    /// `NodeAttestor "k8s_psat"`: the pod's projected service account token.
    K8sPsat(K8sPsatConfig),
    /// `NodeAttestor "x509pop"`: an X.509 certificate and proof of its key.
    X509Pop(X509PopConfig),
    /// `NodeAttestor "sshpop"`: an SSH host certificate and proof of the host key.
    SshPop(SshPopConfig),
    /// `NodeAttestor "gcp_iit"`: the GCE instance identity token.
    GcpIit(crate::plugins::nodeattestor::gcp_iit::GcpIitConfig),
    /// `NodeAttestor "azure_msi"`: an Azure managed identity token.
    AzureMsi(crate::plugins::nodeattestor::azure_msi::AzureMsiConfig),
    /// `NodeAttestor "azure_imds"`: an Azure IMDS attested document for the server's nonce.
    AzureImds(crate::plugins::nodeattestor::azure_imds::AzureImdsConfig),
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol.
    External(ExternalPlugin),
    /// `NodeAttestor "aws_iid"`: the EC2 instance identity document.
    AwsIid(AwsIidConfig),
}

impl NodeAttestorChoice {
    /// The plugin name, as the attestation type and in the agent's SPIFFE ID.
    pub fn name(&self) -> &str {
        match self {
            Self::External(plugin) => &plugin.name,
            Self::JoinToken => crate::plugins::nodeattestor::join_token::NAME,
            Self::K8sPsat(_) => k8s_psat::NAME,
            Self::X509Pop(_) => x509pop::NAME,
            Self::SshPop(_) => sshpop::NAME,
            Self::GcpIit(_) => crate::plugins::nodeattestor::gcp_iit::NAME,
            Self::AzureMsi(_) => crate::plugins::nodeattestor::azure_msi::NAME,
            Self::AzureImds(_) => crate::plugins::nodeattestor::azure_imds::NAME,
            Self::AwsIid(_) => aws_iid::NAME,
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
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol; it holds the key.
    External(ExternalPlugin),
}

/// A workload attestor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadAttestorChoice {
    /// `WorkloadAttestor "unix"`.
    Unix(UnixAttestorConfig),
    /// `WorkloadAttestor "k8s"`.
    K8s(K8sAttestorConfig),
    /// `WorkloadAttestor "docker"`.
    Docker(DockerAttestorConfig),
    /// A `plugin_cmd` plugin speaking upstream's plugin protocol.
    External(ExternalPlugin),
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

/// `NodeAttestor "aws_iid"` keys, upstream's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsIidData {
    #[serde(default, deserialize_with = "de::opt_string")]
    ec2_metadata_endpoint: Option<String>,
}

/// `NodeAttestor "x509pop"` keys, upstream's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct X509PopData {
    #[serde(default, deserialize_with = "de::opt_string")]
    private_key_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    certificate_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    intermediates_path: Option<String>,
}

/// `NodeAttestor "sshpop"` keys, upstream's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshPopData {
    #[serde(default, deserialize_with = "de::opt_string")]
    host_key_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    host_cert_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sPsatData {
    #[serde(default, deserialize_with = "de::opt_string")]
    cluster: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    token_path: Option<String>,
}

/// `WorkloadAttestor "k8s"` keys, upstream's (`plugin_agent_workloadattestor_k8s.md`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sData {
    #[serde(default, deserialize_with = "de::opt_i64")]
    kubelet_read_only_port: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    kubelet_secure_port: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    max_poll_attempts: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    poll_retry_interval: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    reload_interval: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "de::opt_string")]
    kubelet_ca_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    skip_kubelet_verification: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_string")]
    token_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    certificate_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    private_key_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    use_anonymous_authentication: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_string")]
    node_name_env: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    node_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    disable_container_selectors: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    use_new_container_locator: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    verbose_container_locator_logs: Option<bool>,
}

/// Resolves `WorkloadAttestor "k8s"` (in `file` at `path`), reading the node name from the
/// environment as upstream: `node_name`, else the variable `node_name_env` names (default
/// `MY_NODE_NAME`).
fn k8s_config(file: &str, path: &str, d: K8sData) -> Result<K8sAttestorConfig, ConfigError> {
    let invalid =
        |key: &str, message: String| ConfigError::invalid(file, format!("{path}.{key}"), message);
    let port = |key: &str, value: Option<i64>| -> Result<u16, ConfigError> {
        match value {
            None => Ok(0),
            Some(v) if v <= 0 => Ok(0),
            Some(v) => u16::try_from(v)
                .map_err(|_| invalid(key, format!("{key} {v} is not a port (1-65535)"))),
        }
    };
    let read_only = port("kubelet_read_only_port", d.kubelet_read_only_port)?;
    let secure = port("kubelet_secure_port", d.kubelet_secure_port)?;
    if read_only > 0 && secure > 0 {
        return Err(invalid(
            "kubelet_read_only_port",
            "cannot use both the read-only and secure port: set one of kubelet_read_only_port \
             and kubelet_secure_port"
                .to_owned(),
        ));
    }
    let credentials = if read_only > 0 || d.use_anonymous_authentication.unwrap_or(false) {
        KubeletCredentials::Anonymous
    } else {
        match (d.certificate_path, d.private_key_path) {
            (Some(certificate_path), Some(private_key_path)) => KubeletCredentials::Certificate {
                certificate_path: certificate_path.into(),
                private_key_path: private_key_path.into(),
            },
            (Some(_), None) => {
                return Err(invalid(
                    "private_key_path",
                    "the private key path is required with the certificate path".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "certificate_path",
                    "the certificate path is required with the private key path".to_owned(),
                ));
            }
            (None, None) => KubeletCredentials::Token {
                token_path: d
                    .token_path
                    .unwrap_or_else(|| k8s::DEFAULT_TOKEN_PATH.to_owned())
                    .into(),
            },
        }
    };
    let endpoint = if read_only > 0 {
        KubeletEndpoint::ReadOnly { port: read_only }
    } else {
        KubeletEndpoint::Secure {
            port: if secure > 0 {
                secure
            } else {
                k8s::DEFAULT_SECURE_PORT
            },
            skip_verification: d.skip_kubelet_verification.unwrap_or(false),
            ca_path: d
                .kubelet_ca_path
                .unwrap_or_else(|| k8s::DEFAULT_CA_PATH.to_owned())
                .into(),
            credentials,
        }
    };
    let node_name = match d.node_name.filter(|n| !n.is_empty()) {
        Some(name) => Some(name),
        None => {
            let var = d
                .node_name_env
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| k8s::DEFAULT_NODE_NAME_ENV.to_owned());
            std::env::var(var).ok().filter(|n| !n.is_empty())
        }
    };
    let positive = |d: Option<std::time::Duration>, default: u64| {
        d.filter(|d| !d.is_zero())
            .unwrap_or(std::time::Duration::from_millis(default))
    };
    Ok(K8sAttestorConfig {
        endpoint,
        node_name,
        max_poll_attempts: d
            .max_poll_attempts
            .filter(|n| *n > 0)
            .map_or(60, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        poll_retry_interval: positive(d.poll_retry_interval, 500),
        reload_interval: positive(d.reload_interval, 60_000),
        disable_container_selectors: d.disable_container_selectors.unwrap_or(false),
        verbose_container_locator_logs: d.verbose_container_locator_logs.unwrap_or(false),
        use_new_container_locator: d.use_new_container_locator.unwrap_or(true),
        proc_root: PathBuf::from("/proc"),
    })
}

/// `WorkloadAttestor "docker"` keys, upstream's (`plugin_agent_workloadattestor_docker.md`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerData {
    #[serde(default, deserialize_with = "de::opt_string")]
    docker_socket_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    docker_version: Option<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    container_id_cgroup_matchers: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    use_new_container_locator: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    verbose_container_locator_logs: Option<bool>,
    #[serde(default, deserialize_with = "de::block")]
    experimental: DockerExperimental,
}

/// `experimental { sigstore { ... } }` of the docker attestor: known, and refused.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerExperimental {
    #[serde(default)]
    sigstore: Option<serde::de::IgnoredAny>,
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
    let mut svid_stores = Vec::new();
    let mut aws_secretsmanager = None;

    for decl in declarations {
        if let Some(external) = decl.external.clone() {
            match decl.kind.as_str() {
                "NodeAttestor" => node_attestors.push(NodeAttestorChoice::External(external)),
                "WorkloadAttestor" => {
                    workload_attestors.push(WorkloadAttestorChoice::External(external));
                }
                "SVIDStore" => svid_stores.push(external),
                "KeyManager" => key_managers.push(KeyManagerChoice::External(external)),
                kind => {
                    return Err(ConfigError::invalid(
                        file,
                        format!("plugins.{kind}.{}.plugin_cmd", decl.name),
                        format!("unknown plugin type {kind}"),
                    ));
                }
            }
            continue;
        }
        match (decl.kind.as_str(), decl.name.as_str()) {
            ("NodeAttestor", "join_token") => {
                decl.parse_data::<NoData>()?;
                node_attestors.push(NodeAttestorChoice::JoinToken);
            }
            ("NodeAttestor", "gcp_iit") => {
                use crate::plugins::nodeattestor::gcp_iit;
                let d: gcp_iit::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::GcpIit(
                    gcp_iit::GcpIitConfig::from_data(d),
                ));
            }
            ("NodeAttestor", "azure_msi") => {
                use crate::plugins::nodeattestor::azure_msi;
                let d: azure_msi::Data = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::AzureMsi(
                    azure_msi::AzureMsiConfig::from_data(d),
                ));
            }
            ("NodeAttestor", "azure_imds") => {
                use crate::plugins::nodeattestor::azure_imds;
                let d: azure_imds::Data = decl.parse_data()?;
                let config = azure_imds::AzureImdsConfig::from_data(d).map_err(|e| {
                    ConfigError::invalid(
                        decl.data_file(),
                        format!("{}.tenant_domain", decl.data_path()),
                        format!("{e}: set tenant_domain to the tenant domain the server's azure_imds tenants know"),
                    )
                })?;
                node_attestors.push(NodeAttestorChoice::AzureImds(config));
            }
            ("NodeAttestor", "k8s_psat") => {
                let d: K8sPsatData = decl.parse_data()?;
                let Some(cluster) = d.cluster.filter(|c| !c.is_empty()) else {
                    return Err(ConfigError::invalid(
                        decl.data_file(),
                        format!("{}.cluster", decl.data_path()),
                        "missing required cluster block: set cluster to the name the server's \
                         k8s_psat clusters block knows this cluster by",
                    ));
                };
                node_attestors.push(NodeAttestorChoice::K8sPsat(K8sPsatConfig {
                    cluster,
                    token_path: d
                        .token_path
                        .unwrap_or_else(|| k8s_psat::DEFAULT_TOKEN_PATH.to_owned())
                        .into(),
                }));
            }
            ("NodeAttestor", aws_iid::NAME) => {
                let d: AwsIidData = decl.parse_data()?;
                node_attestors.push(NodeAttestorChoice::AwsIid(AwsIidConfig {
                    ec2_metadata_endpoint: d.ec2_metadata_endpoint.unwrap_or_default(),
                }));
            }
            ("NodeAttestor", x509pop::NAME) => {
                let d: X509PopData = decl.parse_data()?;
                let required = |key: &str, value: Option<String>| {
                    value.filter(|v| !v.is_empty()).ok_or_else(|| {
                        ConfigError::invalid(
                            decl.data_file(),
                            format!("{}.{key}", decl.data_path()),
                            format!(
                                "{key} is required: the PEM file of the node's {}",
                                if key == "private_key_path" {
                                    "private key"
                                } else {
                                    "certificate"
                                }
                            ),
                        )
                    })
                };
                let private_key_path = required("private_key_path", d.private_key_path)?;
                let certificate_path = required("certificate_path", d.certificate_path)?;
                node_attestors.push(NodeAttestorChoice::X509Pop(X509PopConfig {
                    private_key_path: private_key_path.into(),
                    certificate_path: certificate_path.into(),
                    intermediates_path: d
                        .intermediates_path
                        .filter(|p| !p.trim().is_empty())
                        .map(PathBuf::from),
                }));
            }
            ("NodeAttestor", sshpop::NAME) => {
                let d: SshPopData = decl.parse_data()?;
                let or_default = |v: Option<String>, default: &str| {
                    PathBuf::from(
                        v.filter(|p| !p.is_empty())
                            .unwrap_or_else(|| default.to_owned()),
                    )
                };
                node_attestors.push(NodeAttestorChoice::SshPop(SshPopConfig {
                    host_key_path: or_default(
                        d.host_key_path,
                        spire_core::sshpop::DEFAULT_HOST_KEY_PATH,
                    ),
                    host_cert_path: or_default(
                        d.host_cert_path,
                        spire_core::sshpop::DEFAULT_HOST_CERT_PATH,
                    ),
                }));
            }
            ("WorkloadAttestor", "k8s") => {
                let d: K8sData = decl.parse_data()?;
                workload_attestors.push(WorkloadAttestorChoice::K8s(k8s_config(
                    decl.data_file(),
                    &decl.data_path(),
                    d,
                )?));
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
            ("WorkloadAttestor", "docker") => {
                let d: DockerData = decl.parse_data()?;
                if d.experimental.sigstore.is_some() {
                    return Err(ConfigError::invalid(
                        decl.data_file(),
                        format!("{}.experimental.sigstore", decl.data_path()),
                        "image signature verification with Sigstore is not built into \
                         spire-rs; remove the experimental.sigstore block",
                    ));
                }
                let config = DockerAttestorConfig::resolve(
                    d.docker_socket_path,
                    d.docker_version,
                    d.container_id_cgroup_matchers,
                    d.use_new_container_locator,
                    d.verbose_container_locator_logs.unwrap_or(false),
                )
                .map_err(|(key, message)| {
                    ConfigError::invalid(
                        decl.data_file(),
                        format!("{}.{key}", decl.data_path()),
                        message,
                    )
                })?;
                workload_attestors.push(WorkloadAttestorChoice::Docker(config));
            }
            ("SVIDStore", crate::plugins::svidstore::aws_secretsmanager::NAME) => {
                let d: crate::plugins::svidstore::aws_secretsmanager::AwsSecretsManagerConfig =
                    decl.parse_data()?;
                if d.region.is_empty() {
                    return Err(ConfigError::invalid(
                        decl.data_file(),
                        format!("{}.region", decl.data_path()),
                        "region is required: set region = \"<aws region>\"",
                    ));
                }
                aws_secretsmanager = Some(d);
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
        svid_stores,
        aws_secretsmanager,
    })
}

fn supported_names(kind: &str) -> &'static str {
    match kind {
        "KeyManager" => "supported KeyManagers are \"disk\" and \"memory\"",
        "NodeAttestor" => {
            "supported NodeAttestors are \"join_token\", \"k8s_psat\", \"x509pop\", \"sshpop\", \"gcp_iit\", \"azure_msi\", \"azure_imds\" and \"aws_iid\""
        }
        "WorkloadAttestor" => "supported WorkloadAttestors are \"unix\", \"k8s\" and \"docker\"",
        "SVIDStore" => {
            "the built-in SVIDStore is \"aws_secretsmanager\"; \"gcp_secretmanager\" is not \
             available in this build; run an external SVIDStore with plugin_cmd"
        }
        _ => "no built-in plugins of this type are available yet; remove the block",
    }
}
