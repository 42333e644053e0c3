//! The `agent.conf` model: every key upstream SPIRE's agent accepts, read from HCL or JSON,
//! with `spire-agent run` flag overrides and validation into typed values.
//!
//! Use: [`load_file`] (or [`load_str`]) -> [`AgentConfig::apply_overrides`] ->
//! [`AgentConfig::resolve`]. Loading checks syntax, key names and value types (an unknown key
//! is an error naming the file, block and key); resolving checks meaning (trust domain, the
//! bootstrap bundle choice, socket placement, plugins) and fills in upstream's defaults,
//! returning warnings to log once logging is up.

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
pub mod plugins;
mod resolve;

pub use plugins::{
    KeyManagerChoice, NodeAttestorChoice, Plugins, UnixAttestorConfig, WorkloadAttestorChoice,
};
pub use resolve::{
    BootstrapBundle, ExperimentalSettings, HealthChecks, LogFormat, RebootstrapMode,
    ResolvedAgentConfig, SdsSettings, TrustBundleFormat, parse_bootstrap_bundle,
};

/// The default `-config` path, relative to the working directory as upstream's.
pub const DEFAULT_CONFIG_PATH: &str = "conf/agent/agent.conf";
/// The default `socket_path` (the Workload API socket).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-agent/public/api.sock";
/// The default `server_port`.
pub const DEFAULT_SERVER_PORT: u16 = 8081;
/// The default `data_dir`: the working directory.
pub const DEFAULT_DATA_DIR: &str = ".";
/// The default `x509_svid_cache_max_size` (upstream's manager default).
pub const DEFAULT_X509_SVID_CACHE_MAX_SIZE: usize = 1000;
/// The default `jwt_svid_cache_max_size` (upstream's manager default).
pub const DEFAULT_JWT_SVID_CACHE_MAX_SIZE: usize = 1000;
/// The default `experimental.sync_interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// The smallest `availability_target` upstream accepts.
pub const MINIMUM_AVAILABILITY_TARGET: Duration = Duration::from_secs(24 * 3600);
/// The default `rebootstrap_delay`.
pub const DEFAULT_REBOOTSTRAP_DELAY: Duration = Duration::from_secs(10 * 60);

/// A parsed `agent.conf`, before defaults and validation.
///
/// Values are kept as written (absent keys are `None`) so that command-line overrides can be
/// applied and `resolve` can tell "unset" from "set to the default".
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The file (or other source) name, used in every error message.
    pub source: String,
    /// The `agent { }` block; `None` when the file has none.
    pub agent: Option<AgentSection>,
    /// The raw `plugins { }` block; [`plugins::from_value`] interprets it.
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
    agent: Option<AgentSection>,
    #[serde(default)]
    plugins: Option<Value>,
    #[serde(default, deserialize_with = "de::block")]
    telemetry: TelemetrySection,
    #[serde(default, deserialize_with = "de::block")]
    health_checks: HealthChecksSection,
}

/// The `agent { }` block, with every key upstream v1.14 accepts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// `admin_socket_path`: the admin API socket (disabled when unset).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub admin_socket_path: Option<String>,
    /// `allow_unauthenticated_verifiers`: release trust bundles to unregistered clients.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub allow_unauthenticated_verifiers: Option<bool>,
    /// `allowed_foreign_jwt_claims`: claims returned when validating foreign JWT-SVIDs.
    #[serde(default, deserialize_with = "de::string_list")]
    pub allowed_foreign_jwt_claims: Vec<String>,
    /// `authorized_delegates`: SPIFFE IDs allowed to use the Delegated Identity API.
    #[serde(default, deserialize_with = "de::string_list")]
    pub authorized_delegates: Vec<String>,
    /// `availability_target`: renew SVIDs early enough to survive this long an outage.
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub availability_target: Option<Duration>,
    /// `data_dir` (default `.`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub data_dir: Option<String>,
    /// `disable_sds_api`: do not serve Envoy SDS on the public socket (upstream v1.15.3).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub disable_sds_api: Option<bool>,
    /// `disable_workload_api`: do not serve the SPIFFE Workload API on the public socket
    /// (upstream v1.15.3). With both disabled no public socket is opened.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub disable_workload_api: Option<bool>,
    /// `experimental { }`.
    #[serde(default, deserialize_with = "de::block")]
    pub experimental: ExperimentalSection,
    /// `insecure_bootstrap`: connect to the server without authenticating it the first time.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub insecure_bootstrap: Option<bool>,
    /// `join_token`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub join_token: Option<String>,
    /// `join_token_file`: a file holding the join token.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub join_token_file: Option<String>,
    /// `jwt_svid_cache_max_size` (default 1000).
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub jwt_svid_cache_max_size: Option<i64>,
    /// `log_file`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub log_file: Option<String>,
    /// `log_format`: text or json (default text).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub log_format: Option<String>,
    /// `log_level` (default INFO).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub log_level: Option<String>,
    /// `log_source_location`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub log_source_location: Option<bool>,
    /// `log_selectors` (upstream v1.15.2): selector prefixes (`k8s:ns`) that the Workload
    /// API's "No identity issued" error may log; none by default, for privacy.
    #[serde(default, deserialize_with = "de::string_list")]
    pub log_selectors: Vec<String>,
    /// `profiling_enabled` (undocumented upstream).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub profiling_enabled: Option<bool>,
    /// `profiling_freq`.
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub profiling_freq: Option<i64>,
    /// `profiling_names`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub profiling_names: Vec<String>,
    /// `profiling_port`.
    #[serde(default, deserialize_with = "de::opt_port")]
    pub profiling_port: Option<u16>,
    /// `rebootstrap_mode`: never, auto or always (default never).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub rebootstrap_mode: Option<String>,
    /// `rebootstrap_delay` (default 10m).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub rebootstrap_delay: Option<Duration>,
    /// `retry_bootstrap` (default true; upstream v1.13.3 warns that it is deprecated).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub retry_bootstrap: Option<bool>,
    /// `sds { }`.
    #[serde(default, deserialize_with = "de::block")]
    pub sds: SdsSection,
    /// `server_address` (required).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub server_address: Option<String>,
    /// `server_port` (default 8081); may be written as a string.
    #[serde(default, deserialize_with = "de::opt_port")]
    pub server_port: Option<u16>,
    /// `socket_path` (default /tmp/spire-agent/public/api.sock).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub socket_path: Option<String>,
    /// `trust_bundle_format`: pem or spiffe (default pem).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_bundle_format: Option<String>,
    /// `trust_bundle_path`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_bundle_path: Option<String>,
    /// `trust_bundle_unix_socket`: fetch `trust_bundle_url` through this unix socket.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_bundle_unix_socket: Option<String>,
    /// `trust_bundle_spiffe_workload_api`: the Workload API (`unix:///path`) to fetch the
    /// bootstrap bundle from (an agent nested under another agent).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_bundle_spiffe_workload_api: Option<String>,
    /// `trust_bundle_url` (https).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_bundle_url: Option<String>,
    /// `trust_domain` (required).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub trust_domain: Option<String>,
    /// `workload_x509_svid_key_type` (default ec-p256).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub workload_x509_svid_key_type: Option<String>,
    /// `x509_svid_cache_max_size` (default 1000).
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub x509_svid_cache_max_size: Option<i64>,
}

/// `sds { }`: Envoy SDS resource names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SdsSection {
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `default_svid_name` (default `default`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub default_svid_name: Option<String>,
    /// `default_bundle_name` (default `ROOTCA`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub default_bundle_name: Option<String>,
    /// `default_all_bundles_name` (default `ALL`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub default_all_bundles_name: Option<String>,
    /// `disable_spiffe_cert_validation`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub disable_spiffe_cert_validation: Option<bool>,
}

/// `experimental.ratelimit { }` (upstream v1.15.2): the most calls per second for each
/// Workload API / SDS method, per attested selector set; absent or 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// `fetch_x509_svid`.
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub fetch_x509_svid: Option<u32>,
    /// `fetch_jwt_svid`.
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub fetch_jwt_svid: Option<u32>,
    /// `fetch_x509_bundles`.
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub fetch_x509_bundles: Option<u32>,
    /// `fetch_jwt_bundles`.
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub fetch_jwt_bundles: Option<u32>,
    /// `stream_secrets` (Envoy SDS).
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub stream_secrets: Option<u32>,
    /// `fetch_secrets` (Envoy SDS).
    #[serde(default, deserialize_with = "de::opt_u32")]
    pub fetch_secrets: Option<u32>,
}

/// `experimental { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ExperimentalSection {
    /// `ratelimit { }`: Workload API / SDS limits per selector set (checked strictly, as
    /// upstream checks it).
    #[serde(default, deserialize_with = "de::block")]
    pub ratelimit: RateLimitSection,
    /// `broker { }` (upstream v1.15.3's SPIFFE Broker API), kept as written to be refused by
    /// name.
    #[serde(default)]
    pub broker: Option<Value>,
    /// Keys upstream does not know here. Upstream never checks this block, so they load
    /// there; they are kept to be named in a warning rather than refused.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
    /// `sync_interval` (default 5s).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub sync_interval: Option<Duration>,
    /// `jwt_svid_cache_hit_timeout`.
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub jwt_svid_cache_hit_timeout: Option<Duration>,
    /// `named_pipe_name` (Windows only; an error elsewhere).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub named_pipe_name: Option<String>,
    /// `admin_named_pipe_name` (Windows only; an error elsewhere).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub admin_named_pipe_name: Option<String>,
    /// `use_sync_authorized_entries` (deprecated; default true).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub use_sync_authorized_entries: Option<bool>,
    /// `require_pq_kem`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub require_pq_kem: Option<bool>,
    /// `feature_flags`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub feature_flags: Vec<String>,
}

/// Values from `spire-agent run` flags that take precedence over the file.
///
/// Upstream's flags: `-config`, `-dataDir`, `-joinToken`, `-logFile`, `-logFormat`,
/// `-logLevel`, `-logSourceLocation`, `-serverAddress`, `-serverPort`, `-socketPath`,
/// `-trustDomain`, `-trustBundle`, `-trustBundleUrl`, `-trustBundleFormat`,
/// `-allowUnauthenticatedVerifiers`, `-insecureBootstrap`, `-retryBootstrap`, `-expandEnv`,
/// `-disableSDSAPI`, `-disableWorkloadAPI`.
/// A `None` (or `false` for the booleans) leaves the file's value, as upstream merges only
/// non-zero flag values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `-config`: the file to load (default `conf/agent/agent.conf`); read by the caller.
    pub config_path: Option<PathBuf>,
    /// `-expandEnv`: substitute `$VAR` / `${VAR}` before parsing; read by the caller.
    pub expand_env: bool,
    /// `-dataDir`.
    pub data_dir: Option<String>,
    /// `-joinToken`.
    pub join_token: Option<String>,
    /// `-joinTokenFile`.
    pub join_token_file: Option<String>,
    /// `-logFile`.
    pub log_file: Option<String>,
    /// `-logFormat`.
    pub log_format: Option<String>,
    /// `-logLevel`.
    pub log_level: Option<String>,
    /// `-logSourceLocation`.
    pub log_source_location: bool,
    /// `-serverAddress`.
    pub server_address: Option<String>,
    /// `-serverPort`.
    pub server_port: Option<u16>,
    /// `-socketPath`.
    pub socket_path: Option<String>,
    /// `-trustDomain`.
    pub trust_domain: Option<String>,
    /// `-trustBundle`: path of the bootstrap bundle.
    pub trust_bundle_path: Option<String>,
    /// `-trustBundleUrl`.
    pub trust_bundle_url: Option<String>,
    /// `-trustBundleFormat`.
    pub trust_bundle_format: Option<String>,
    /// `-allowUnauthenticatedVerifiers`.
    pub allow_unauthenticated_verifiers: bool,
    /// `-insecureBootstrap`.
    pub insecure_bootstrap: bool,
    /// `-retryBootstrap`, when given (as upstream, only a flag that was set counts).
    pub retry_bootstrap: Option<bool>,
    /// `-disableSDSAPI`.
    pub disable_sds_api: bool,
    /// `-disableWorkloadAPI`.
    pub disable_workload_api: bool,
    /// `-rebootstrapMode`.
    pub rebootstrap_mode: Option<String>,
    /// `-rebootstrapDelay`, as written (a Go duration).
    pub rebootstrap_delay: Option<Duration>,
}

impl Overrides {
    /// The config file these flags select: `-config`, or upstream's default path.
    pub fn config_path(&self) -> PathBuf {
        self.config_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }
}

impl AgentConfig {
    /// Applies command-line flags over the file's values (flags win).
    pub fn apply_overrides(&mut self, o: &Overrides) {
        let agent = self.agent.get_or_insert_with(AgentSection::default);
        let set = |slot: &mut Option<String>, value: &Option<String>| {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                *slot = Some(v.clone());
            }
        };
        set(&mut agent.data_dir, &o.data_dir);
        set(&mut agent.join_token, &o.join_token);
        set(&mut agent.join_token_file, &o.join_token_file);
        set(&mut agent.log_file, &o.log_file);
        set(&mut agent.log_format, &o.log_format);
        set(&mut agent.log_level, &o.log_level);
        set(&mut agent.server_address, &o.server_address);
        set(&mut agent.socket_path, &o.socket_path);
        set(&mut agent.trust_domain, &o.trust_domain);
        set(&mut agent.trust_bundle_path, &o.trust_bundle_path);
        set(&mut agent.trust_bundle_url, &o.trust_bundle_url);
        set(&mut agent.trust_bundle_format, &o.trust_bundle_format);
        set(&mut agent.rebootstrap_mode, &o.rebootstrap_mode);
        if let Some(delay) = o.rebootstrap_delay.filter(|d| !d.is_zero()) {
            agent.rebootstrap_delay = Some(delay);
        }
        if let Some(port) = o.server_port.filter(|p| *p != 0) {
            agent.server_port = Some(port);
        }
        let flag = |slot: &mut Option<bool>, value: bool| {
            if value {
                *slot = Some(true);
            }
        };
        flag(&mut agent.log_source_location, o.log_source_location);
        flag(
            &mut agent.allow_unauthenticated_verifiers,
            o.allow_unauthenticated_verifiers,
        );
        flag(&mut agent.insecure_bootstrap, o.insecure_bootstrap);
        if let Some(retry) = o.retry_bootstrap {
            agent.retry_bootstrap = Some(retry);
        }
        flag(&mut agent.disable_sds_api, o.disable_sds_api);
        flag(&mut agent.disable_workload_api, o.disable_workload_api);
    }
}

/// Keys that are not where upstream reads them, with where they belong.
const MOVED_KEYS: &[(&str, &str)] = &[(
    "ratelimit",
    "ratelimit is not an agent key; upstream v1.15.2 reads Workload API limits from \
     experimental { ratelimit { fetch_x509_svid = N ... } }",
)];

fn explain_moved(err: ConfigError) -> ConfigError {
    if let ConfigError::UnknownKey {
        file,
        key,
        block,
        expected,
    } = err
    {
        let expected = MOVED_KEYS
            .iter()
            .find(|(k, _)| *k == key && block == "the \"agent\" block")
            .map_or(expected, |(_, hint)| (*hint).to_owned());
        return ConfigError::UnknownKey {
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
) -> Result<AgentConfig, ConfigError> {
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
) -> Result<AgentConfig, ConfigError> {
    let doc: FileDoc =
        spire_core::config::load(source_name, text, expand_env, lookup).map_err(explain_moved)?;
    Ok(AgentConfig {
        source: source_name.to_owned(),
        agent: doc.agent,
        plugins: doc.plugins,
        telemetry: doc.telemetry,
        health_checks: doc.health_checks,
    })
}

/// Reads and parses a configuration file; see [`load_str`]. Errors name the file.
pub fn load_file(path: &Path, expand_env: bool) -> Result<AgentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    load_str(&path.display().to_string(), &text, expand_env)
}

/// Loads the file the flags name, applies the flags and validates: what `run` and
/// `validate` both do before anything starts.
pub fn load_and_resolve(o: &Overrides) -> Result<ResolvedAgentConfig, ConfigError> {
    let mut config = load_file(&o.config_path(), o.expand_env)?;
    config.apply_overrides(o);
    config.resolve()
}
