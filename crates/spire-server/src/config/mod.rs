//! The `server.conf` model: every key upstream SPIRE's server accepts, read from HCL or JSON,
//! with command-line overrides and validation into typed values.
//!
//! Use: [`load_file`] (or [`load_str`]) -> [`ServerConfig::apply_overrides`] ->
//! [`ServerConfig::resolve`]. Loading checks syntax, key names and value types (an unknown key
//! is an error naming the file, block and key); resolving checks meaning (trust domain, TTLs,
//! key types, federation) and fills in upstream's defaults, returning warnings to log once
//! logging is up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub use spire_core::config::ConfigError;
pub(crate) use spire_core::config::de;
pub use spire_core::config::sections::{
    AddressSection, HealthChecksSection, InMemSection, M3Section, PrometheusSection,
    PrometheusTlsSection, TelemetrySection,
};
mod resolve;

pub use resolve::{
    BundleEndpoint, BundleEndpointProfile, CaSubject, ExperimentalSettings, FederatesWith,
    FederatesWithProfile, Federation, HealthChecks, LogFormat, RateLimit, ResolvedServerConfig,
};

/// The default `-config` path, relative to the working directory as upstream's.
pub const DEFAULT_CONFIG_PATH: &str = "conf/server/server.conf";
/// The default `bind_address`.
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
/// The default `bind_port`.
pub const DEFAULT_BIND_PORT: u16 = 8081;
/// The default `socket_path` (the admin API socket).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";
/// The default `ca_ttl`.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default `default_x509_svid_ttl`.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// The default `default_jwt_svid_ttl`.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);

/// A parsed `server.conf`, before defaults and validation.
///
/// Values are kept as written (absent keys are `None`) so that command-line overrides can be
/// applied and `resolve` can tell "unset" from "set to the default".
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The file (or other source) name, used in every error message.
    pub source: String,
    /// The `server { }` block; `None` when the file has none.
    pub server: Option<ServerSection>,
    /// The raw `plugins { }` block; the catalog interprets it.
    pub plugins: Option<Value>,
    /// The `telemetry { }` block (accepted and kept; not served yet).
    pub telemetry: TelemetrySection,
    /// The `health_checks { }` block.
    pub health_checks: HealthChecksSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default, deserialize_with = "de::opt_block")]
    server: Option<ServerSection>,
    #[serde(default)]
    plugins: Option<Value>,
    #[serde(default, deserialize_with = "de::block")]
    telemetry: TelemetrySection,
    #[serde(default, deserialize_with = "de::block")]
    health_checks: HealthChecksSection,
}

/// The `server { }` block, with every key upstream v1.14 accepts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `admin_ids`: SPIFFE IDs granted admin access.
    #[serde(default, deserialize_with = "de::string_list")]
    pub admin_ids: Vec<String>,
    /// `agent_ttl`: lifetime of agent SVIDs (default: `default_x509_svid_ttl`).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub agent_ttl: Option<Duration>,
    /// `audit_log_enabled`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub audit_log_enabled: Option<bool>,
    /// `bind_address` (default 0.0.0.0).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub bind_address: Option<String>,
    /// `bind_port` (default 8081); may be written as a string.
    #[serde(default, deserialize_with = "de::opt_port")]
    pub bind_port: Option<u16>,
    /// `ca_key_type` (default ec-p256).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub ca_key_type: Option<String>,
    /// `ca_subject { country organization common_name }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub ca_subject: Option<CaSubjectSection>,
    /// `ca_ttl` (default 24h).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub ca_ttl: Option<Duration>,
    /// `data_dir` (required).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub data_dir: Option<String>,
    /// `default_x509_svid_ttl` (default 1h).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub default_x509_svid_ttl: Option<Duration>,
    /// `default_jwt_svid_ttl` (default 5m).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub default_jwt_svid_ttl: Option<Duration>,
    /// `disable_jwt_svids`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub disable_jwt_svids: Option<bool>,
    /// `experimental { }`.
    #[serde(default, deserialize_with = "de::block")]
    pub experimental: ExperimentalSection,
    /// `federation { bundle_endpoint {} federates_with "td" {} }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub federation: Option<FederationSection>,
    /// `jwt_issuer`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub jwt_issuer: Option<String>,
    /// `jwt_key_type` (default: `ca_key_type`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub jwt_key_type: Option<String>,
    /// `log_file`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub log_file: Option<String>,
    /// `log_level` (default INFO).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub log_level: Option<String>,
    /// `log_format`: text or json (default text).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub log_format: Option<String>,
    /// `log_source_location`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub log_source_location: Option<bool>,
    /// `max_attested_node_info_staleness`.
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub max_attested_node_info_staleness: Option<Duration>,
    /// `prune_attested_nodes_expired_for`: prune nodes expired longer ago than this.
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub prune_attested_nodes_expired_for: Option<Duration>,
    /// `prune_tofu_nodes`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub prune_tofu_nodes: Option<bool>,
    /// `prune_attested_nodes_batch_size` (default 1000).
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub prune_attested_nodes_batch_size: Option<u32>,
    /// `proxy_protocol_trusted_cidrs`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub proxy_protocol_trusted_cidrs: Vec<String>,
    /// `ratelimit { attestation signing }`.
    #[serde(default, deserialize_with = "de::block")]
    pub ratelimit: RateLimitSection,
    /// `socket_path` (default /tmp/spire-server/private/api.sock).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub socket_path: Option<String>,
    /// `trust_domain` (required).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_domain: Option<String>,
    /// `use_legacy_downstream_x509_ca_ttl` (upstream v1.12 and older): read only to refuse it
    /// by name, as upstream v1.13+ refuses it as unknown.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub use_legacy_downstream_x509_ca_ttl: Option<bool>,
    /// `profiling_enabled` (undocumented upstream).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub profiling_enabled: Option<bool>,
    /// `profiling_port` (undocumented upstream).
    #[serde(default, deserialize_with = "de::opt_port")]
    pub profiling_port: Option<u16>,
    /// `profiling_freq` (undocumented upstream).
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub profiling_freq: Option<i64>,
    /// `profiling_names` (undocumented upstream).
    #[serde(default, deserialize_with = "de::string_list")]
    pub profiling_names: Vec<String>,
}

/// `ca_subject { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSubjectSection {
    /// `country`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub country: Vec<String>,
    /// `organization`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub organization: Vec<String>,
    /// `common_name`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub common_name: Option<String>,
}

/// `ratelimit { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// `attestation` (default true).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub attestation: Option<bool>,
    /// `signing` (default true).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub signing: Option<bool>,
}

/// `experimental { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ExperimentalSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `agent_spiffe_id_as_selector`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub agent_spiffe_id_as_selector: Option<bool>,
    /// `auth_opa_policy_engine { local { rego_path policy_data_path } }`, kept as written.
    #[serde(default)]
    pub auth_opa_policy_engine: Option<Value>,
    /// `cache_reload_interval` (default 5s).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub cache_reload_interval: Option<Duration>,
    /// `full_cache_reload_interval` (default 24h).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub full_cache_reload_interval: Option<Duration>,
    /// `events_based_cache`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub events_based_cache: Option<bool>,
    /// `prune_events_older_than` (default 12h).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub prune_events_older_than: Option<Duration>,
    /// `event_timeout` (default 15m).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub event_timeout: Option<Duration>,
    /// `sql_transaction_timeout` (deprecated name of `event_timeout`).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub sql_transaction_timeout: Option<Duration>,
    /// `require_pq_kem`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub require_pq_kem: Option<bool>,
    /// `wit_key_type`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub wit_key_type: Option<String>,
    /// `wit_issuer`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub wit_issuer: Option<String>,
    /// `feature_flags`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub feature_flags: Vec<String>,
    /// `named_pipe_name` (Windows only; an error elsewhere).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub named_pipe_name: Option<String>,
}

/// `federation { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FederationSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `bundle_endpoint { }`: this server's bundle endpoint.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub bundle_endpoint: Option<BundleEndpointSection>,
    /// `federates_with "<trust domain>" { }`, keyed by trust domain.
    #[serde(default, deserialize_with = "de::named_blocks")]
    pub federates_with: BTreeMap<String, FederatesWithSection>,
}

/// `bundle_endpoint { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointSection {
    /// `address`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub address: Option<String>,
    /// `port`.
    #[serde(default, deserialize_with = "de::opt_port")]
    pub port: Option<u16>,
    /// `refresh_hint` (default 5m).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub refresh_hint: Option<Duration>,
    /// `acme { }` directly in the endpoint (deprecated; use `profile "https_web"`).
    #[serde(default, deserialize_with = "de::opt_block")]
    pub acme: Option<AcmeSection>,
    /// `profile "https_web" { }` or `profile "https_spiffe" { }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub profile: Option<BundleEndpointProfileSection>,
}

/// `profile "<name>" { }` of the bundle endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BundleEndpointProfileSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `https_web { acme {} | serving_cert_file {} }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub https_web: Option<HttpsWebSection>,
    /// `https_spiffe { }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub https_spiffe: Option<EmptySection>,
}

/// A block that takes no keys (upstream ignores any written there).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EmptySection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// `https_web { }` of the bundle endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HttpsWebSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `acme { }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub acme: Option<AcmeSection>,
    /// `serving_cert_file { cert_file_path key_file_path file_sync_interval }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub serving_cert_file: Option<ServingCertFileSection>,
}

/// `acme { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// `directory_url` (default Let's Encrypt).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub directory_url: Option<String>,
    /// `domain_name` (required).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub domain_name: Option<String>,
    /// `email` (required).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub email: Option<String>,
    /// `tos_accepted`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub tos_accepted: Option<bool>,
}

/// `serving_cert_file { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ServingCertFileSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `cert_file_path`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub cert_file_path: Option<String>,
    /// `key_file_path`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub key_file_path: Option<String>,
    /// `file_sync_interval` (default 1h).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub file_sync_interval: Option<Duration>,
}

/// `federates_with "<trust domain>" { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FederatesWithSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `bundle_endpoint_url` (required, https).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub bundle_endpoint_url: Option<String>,
    /// `bundle_endpoint_profile "https_spiffe" { endpoint_spiffe_id }` or `"https_web" {}`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub bundle_endpoint_profile: Option<FederatesWithProfileSection>,
}

/// `bundle_endpoint_profile "<name>" { }` of a federation relationship.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FederatesWithProfileSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `https_spiffe { endpoint_spiffe_id }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub https_spiffe: Option<HttpsSpiffeSection>,
    /// `https_web { }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub https_web: Option<EmptySection>,
}

/// `https_spiffe { }` of a federation relationship.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HttpsSpiffeSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `endpoint_spiffe_id`: the SPIFFE ID the endpoint server must present.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub endpoint_spiffe_id: Option<String>,
}

/// Values from `spire-server run` flags that take precedence over the file.
///
/// Upstream's flags: `-bindAddress`, `-serverPort`, `-socketPath`, `-trustDomain`,
/// `-logLevel`, `-logFormat`, `-logFile`, `-logSourceLocation`, `-dataDir`, `-config`,
/// `-expandEnv`. A `None` (or `false` for the booleans) leaves the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `-bindAddress`.
    pub bind_address: Option<String>,
    /// `-serverPort`.
    pub bind_port: Option<u16>,
    /// `-socketPath`.
    pub socket_path: Option<String>,
    /// `-trustDomain`.
    pub trust_domain: Option<String>,
    /// `-logLevel`.
    pub log_level: Option<String>,
    /// `-logFormat`.
    pub log_format: Option<String>,
    /// `-logFile`.
    pub log_file: Option<String>,
    /// `-logSourceLocation` (only `true` overrides, as upstream merges non-zero values).
    pub log_source_location: bool,
    /// `-dataDir`.
    pub data_dir: Option<String>,
    /// `-config`: the file to load (default `conf/server/server.conf`); read by the caller.
    pub config_path: Option<PathBuf>,
    /// `-expandEnv`: substitute `$VAR` / `${VAR}` before parsing; read by the caller.
    pub expand_env: bool,
}

impl Overrides {
    /// The config file these flags select: `-config`, or upstream's default path.
    pub fn config_path(&self) -> PathBuf {
        self.config_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }
}

impl ServerConfig {
    /// Applies command-line flags over the file's values (flags win).
    pub fn apply_overrides(&mut self, o: &Overrides) {
        let server = self.server.get_or_insert_with(ServerSection::default);
        let set = |slot: &mut Option<String>, value: &Option<String>| {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                *slot = Some(v.clone());
            }
        };
        set(&mut server.bind_address, &o.bind_address);
        set(&mut server.socket_path, &o.socket_path);
        set(&mut server.trust_domain, &o.trust_domain);
        set(&mut server.log_level, &o.log_level);
        set(&mut server.log_format, &o.log_format);
        set(&mut server.log_file, &o.log_file);
        set(&mut server.data_dir, &o.data_dir);
        if let Some(port) = o.bind_port.filter(|p| *p != 0) {
            server.bind_port = Some(port);
        }
        if o.log_source_location {
            server.log_source_location = Some(true);
        }
    }
}

/// Keys upstream removed, with what to write instead.
const REMOVED_KEYS: &[(&str, &str)] = &[
    (
        "default_svid_ttl",
        "default_svid_ttl was removed; use default_x509_svid_ttl (and default_jwt_svid_ttl)",
    ),
    (
        "registration_uds_path",
        "registration_uds_path was removed; use socket_path",
    ),
    (
        "upstream_bundle",
        "upstream_bundle was removed; upstream CA certificates are always in the bundle",
    ),
    (
        "tls_config",
        "tls_config is not a SPIRE server key (upstream releases refuse it too): the TCP \
         listener always uses TLS 1.2 or newer with rustls' safe defaults; remove the block",
    ),
    (
        "omit_x509svid_uid",
        "omit_x509svid_uid was removed; SVIDs never carry the unique identifier",
    ),
];

fn explain_removed(err: spire_core::config::ConfigError) -> spire_core::config::ConfigError {
    if let spire_core::config::ConfigError::UnknownKey {
        file,
        key,
        block,
        expected,
    } = err
    {
        let expected = REMOVED_KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(expected, |(_, hint)| (*hint).to_owned());
        return spire_core::config::ConfigError::UnknownKey {
            file,
            key,
            block,
            expected,
        };
    }
    err
}

/// Parses configuration text (HCL, or JSON when `source` ends in `.json` or the text starts
/// with `{`). With `expand_env`, `$VAR` and `${VAR}` are replaced from the process
/// environment first, as upstream's `-expandEnv` does.
pub fn load_str(
    source_name: &str,
    text: &str,
    expand_env: bool,
) -> Result<ServerConfig, ConfigError> {
    load_str_with_env(source_name, text, expand_env, |name| {
        std::env::var(name).ok()
    })
}

/// Like [`load_str`] with a given environment lookup, so callers and tests need not touch the
/// process environment.
pub fn load_str_with_env(
    source_name: &str,
    text: &str,
    expand_env: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ServerConfig, ConfigError> {
    let doc: FileDoc =
        spire_core::config::load(source_name, text, expand_env, lookup).map_err(explain_removed)?;
    Ok(ServerConfig {
        source: source_name.to_owned(),
        server: doc.server,
        plugins: doc.plugins,
        telemetry: doc.telemetry,
        health_checks: doc.health_checks,
    })
}

/// Reads and parses a configuration file; see [`load_str`]. Errors name the file.
pub fn load_file(path: &Path, expand_env: bool) -> Result<ServerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    load_str(&path.display().to_string(), &text, expand_env)
}
