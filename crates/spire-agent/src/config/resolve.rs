//! Validation of a parsed [`AgentConfig`] into typed values with upstream's defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use spire_core::keys::KeyType;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};

use super::plugins::{self, Plugins};
use super::{
    AgentConfig, AgentSection, ConfigError, DEFAULT_DATA_DIR, DEFAULT_JWT_SVID_CACHE_MAX_SIZE,
    DEFAULT_REBOOTSTRAP_DELAY, DEFAULT_SERVER_PORT, DEFAULT_SOCKET_PATH, DEFAULT_SYNC_INTERVAL,
    DEFAULT_X509_SVID_CACHE_MAX_SIZE, ExperimentalSection, MINIMUM_AVAILABILITY_TARGET,
    RateLimitSection, TelemetrySection,
};

pub use spire_core::config::sections::LogFormat;
use spire_core::config::sections::resolve_logging;

/// `trust_bundle_format`: how the bootstrap bundle is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustBundleFormat {
    /// PEM certificates (upstream's default).
    #[default]
    Pem,
    /// A SPIFFE bundle document (JWKS).
    Spiffe,
}

/// Where the agent gets the server CA bundle it trusts before its first sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapBundle {
    /// `trust_bundle_path`: read from a file.
    Path {
        /// The file.
        path: PathBuf,
        /// Its encoding.
        format: TrustBundleFormat,
    },
    /// `trust_bundle_url`: downloaded over HTTPS (or over `trust_bundle_unix_socket`).
    Url {
        /// The URL.
        url: String,
        /// The body's encoding.
        format: TrustBundleFormat,
        /// Send the request through this unix socket instead of TCP.
        unix_socket: Option<PathBuf>,
    },
    /// `trust_bundle_spiffe_workload_api`: the trust domain's X.509 bundle from another
    /// SPIFFE Workload API (the agent this one is nested under), fetched at bootstrap.
    WorkloadApi {
        /// The Workload API's unix socket.
        socket_path: PathBuf,
        /// The address as configured (`unix:///run/spire/agent.sock`), for messages.
        address: String,
    },
    /// `insecure_bootstrap = true`: trust the server's first answer (tests and development).
    Insecure,
}

impl BootstrapBundle {
    /// Reads and parses the bundle file of the `Path` form: the X.509 authorities, DER.
    /// Returns `None` for the other forms, which need the network or need nothing.
    pub fn read_file(&self, trust_domain: &TrustDomain) -> Option<Result<Vec<Vec<u8>>, String>> {
        let BootstrapBundle::Path { path, format } = self else {
            return None;
        };
        Some(read_bundle_file(path, *format, trust_domain))
    }
}

/// Parses a bootstrap bundle already read (from a file or a URL) into its X.509 authorities.
pub fn parse_bootstrap_bundle(
    bytes: &[u8],
    format: TrustBundleFormat,
    trust_domain: &TrustDomain,
) -> Result<Vec<Vec<u8>>, String> {
    let certs = match format {
        TrustBundleFormat::Pem => {
            spire_core::pem::decode_certificates(bytes).map_err(|e| e.to_string())?
        }
        TrustBundleFormat::Spiffe => {
            spire_core::bundle::Bundle::from_spiffe_document(trust_domain.clone(), bytes)
                .map_err(|e| format!("unable to parse SPIFFE trust bundle: {e}"))?
                .x509_authorities
        }
    };
    if certs.is_empty() {
        return Err("no certificates found in trust bundle".to_owned());
    }
    Ok(certs)
}

fn read_bundle_file(
    path: &Path,
    format: TrustBundleFormat,
    trust_domain: &TrustDomain,
) -> Result<Vec<Vec<u8>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("could not parse trust bundle: {}: {e}", path.display()))?;
    parse_bootstrap_bundle(&bytes, format, trust_domain)
        .map_err(|e| format!("could not parse trust bundle {}: {e}", path.display()))
}

/// `rebootstrap_mode`: what the agent does when the server no longer trusts its SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootstrapMode {
    /// Never re-bootstrap (upstream's default).
    #[default]
    Never,
    /// Re-bootstrap when the server's certificate no longer chains to the agent's bundle
    /// for `rebootstrap_delay`, if the node attestor and the server allow it; when they do
    /// not, warn and behave as `never`.
    Auto,
    /// As `auto`, but the agent refuses to start when rebootstrapping is not allowed.
    Always,
}

/// `sds { }` with upstream's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsSettings {
    /// Resource name of the caller's default X509-SVID (default `default`).
    pub default_svid_name: String,
    /// Resource name of the agent's own trust domain bundle (default `ROOTCA`).
    pub default_bundle_name: String,
    /// Resource name of all bundles including federated ones (default `ALL`).
    pub default_all_bundles_name: String,
    /// Omit the SPIFFE certificate validator extension.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsSettings {
    fn default() -> Self {
        Self {
            default_svid_name: "default".to_owned(),
            default_bundle_name: "ROOTCA".to_owned(),
            default_all_bundles_name: "ALL".to_owned(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// `experimental { }` with upstream's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentalSettings {
    /// Time between syncs with the server (default 5s).
    pub sync_interval: Duration,
    /// How long a JWT-SVID request waits for the server when an unexpired JWT-SVID is
    /// cached (5s to 30s, default 30s); on timeout the cached one is served.
    pub jwt_svid_cache_hit_timeout: Duration,
    /// Use `SyncAuthorizedEntries` (default true; the switch is deprecated upstream).
    pub use_sync_authorized_entries: bool,
    /// Require post-quantum key exchange on TLS.
    pub require_pq_kem: bool,
    /// Developer feature flags.
    pub feature_flags: Vec<String>,
}

/// `health_checks { }` with defaults: the listener's own settings type.
pub use spire_common::health::HealthConfig as HealthChecks;

/// A validated configuration: typed values, defaults filled in, plus warnings for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAgentConfig {
    /// `trust_domain`.
    pub trust_domain: TrustDomain,
    /// `server_address` (a DNS name or IP; brackets around IPv6 removed).
    pub server_address: String,
    /// `server_port`.
    pub server_port: u16,
    /// The Workload API socket.
    pub socket_path: PathBuf,
    /// The admin API socket, when enabled.
    pub admin_socket_path: Option<PathBuf>,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// The bootstrap bundle source.
    pub bootstrap_bundle: BootstrapBundle,
    /// The join token (from `join_token`, `-joinToken` or `join_token_file`), when given.
    pub join_token: Option<String>,
    /// Log level, lowercase (`info`, `debug`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log file (appended to), when set.
    pub log_file: Option<PathBuf>,
    /// Include source location in log lines.
    pub log_source_location: bool,
    /// Selector prefixes the "No identity issued" log may show (`log_selectors`).
    pub log_selectors: Vec<String>,
    /// Release bundles to callers that match no entry.
    pub allow_unauthenticated_verifiers: bool,
    /// Claims returned when validating JWT-SVIDs of other trust domains.
    pub allowed_foreign_jwt_claims: Vec<String>,
    /// Who may use the Delegated Identity API.
    pub authorized_delegates: Vec<SpiffeId>,
    /// Renew SVIDs early enough to ride out an outage this long, when set.
    pub availability_target: Option<Duration>,
    /// Bound on cached X509-SVIDs.
    pub x509_svid_cache_max_size: usize,
    /// Bound on cached JWT-SVIDs.
    pub jwt_svid_cache_max_size: usize,
    /// Key type of workload X509-SVIDs (ec-p256 unless set).
    pub workload_x509_svid_key_type: KeyType,
    /// `experimental.ratelimit`: Workload API / SDS calls per second per selector set
    /// (absent or 0: unlimited).
    pub ratelimit: RateLimitSection,
    /// Re-bootstrap behaviour.
    pub rebootstrap_mode: RebootstrapMode,
    /// Wait before re-bootstrapping (default 10m).
    pub rebootstrap_delay: Duration,
    /// `retry_bootstrap` (default true): retry obtaining the first agent SVID with backoff
    /// for up to a minute instead of stopping at the first failure.
    pub retry_bootstrap: bool,
    /// Envoy SDS names.
    pub sds: SdsSettings,
    /// `disable_sds_api`: no SDS on the public socket.
    pub disable_sds_api: bool,
    /// `disable_workload_api`: no Workload API on the public socket.
    pub disable_workload_api: bool,
    /// Experimental settings.
    pub experimental: ExperimentalSettings,
    /// The plugins to run.
    pub plugins: Plugins,
    /// Profiling (undocumented upstream).
    pub profiling_enabled: bool,
    /// Profiling port.
    pub profiling_port: u16,
    /// Profiling frequency.
    pub profiling_freq: i64,
    /// Profiles to collect.
    pub profiling_names: Vec<String>,
    /// Health check listener.
    pub health_checks: HealthChecks,
    /// Telemetry settings, as written (not served yet).
    pub telemetry: TelemetrySection,
    /// Things that work but deserve the operator's attention; log them at warn.
    pub warnings: Vec<String>,
}

impl ResolvedAgentConfig {
    /// `host:port` of the server, with IPv6 addresses bracketed.
    pub fn server_host_port(&self) -> String {
        if self.server_address.contains(':') {
            format!("[{}]:{}", self.server_address, self.server_port)
        } else {
            format!("{}:{}", self.server_address, self.server_port)
        }
    }
}

impl AgentConfig {
    /// Validates the configuration and fills in upstream's defaults.
    ///
    /// Errors name the key and what fixes it; conditions upstream only warns about come back
    /// in `warnings`. Reads `join_token_file` when one is set.
    pub fn resolve(&self) -> Result<ResolvedAgentConfig, ConfigError> {
        let file = self.source.as_str();
        let Some(a) = self.agent.as_ref() else {
            return Err(ConfigError::invalid(
                file,
                "agent",
                "agent section must be configured: add an agent { trust_domain = ... } block",
            ));
        };
        let plugins = plugins::from_value(file, self.plugins.as_ref())?;
        let mut warnings = Vec::new();

        let server_address = a
            .server_address
            .as_deref()
            .map(|s| s.trim().trim_matches(['[', ']']).to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    "agent.server_address",
                    "server_address must be configured: the DNS name or IP of the SPIRE \
                     server, e.g. server_address = \"127.0.0.1\", or pass -serverAddress",
                )
            })?;
        let server_port = a.server_port.unwrap_or(DEFAULT_SERVER_PORT);
        if server_port == 0 {
            return Err(ConfigError::invalid(
                file,
                "agent.server_port",
                "server_port must be configured: use a port from 1 to 65535 (default 8081)",
            ));
        }
        let trust_domain = resolve_trust_domain(file, a)?;
        let bootstrap_bundle = resolve_bootstrap(file, a)?;
        let join_token = resolve_join_token(file, a)?;

        let (log_level, log_format) = resolve_logging(
            file,
            "agent",
            a.log_level.as_deref(),
            a.log_format.as_deref(),
        )?;

        if a.experimental.named_pipe_name.is_some() && !cfg!(windows) {
            return Err(ConfigError::invalid(
                file,
                "agent.experimental.named_pipe_name",
                "named_pipe_name is not supported on this platform; use socket_path instead",
            ));
        }
        if a.profiling_enabled == Some(true) {
            return Err(ConfigError::invalid(
                file,
                "agent.profiling_enabled",
                "Go pprof profiling is not available in this agent; remove profiling_enabled \
                 (profiling_port, profiling_freq and profiling_names are only read when it is true)",
            ));
        }
        if a.experimental.admin_named_pipe_name.is_some() && !cfg!(windows) {
            return Err(ConfigError::invalid(
                file,
                "agent.experimental.admin_named_pipe_name",
                "admin_named_pipe_name is not supported on this platform; use \
                 admin_socket_path instead",
            ));
        }
        let socket_path = PathBuf::from(
            a.socket_path
                .clone()
                .unwrap_or_else(|| DEFAULT_SOCKET_PATH.to_owned()),
        );
        let disable_sds_api = a.disable_sds_api.unwrap_or(false);
        let disable_workload_api = a.disable_workload_api.unwrap_or(false);
        // With both APIs disabled there is no public socket to keep the admin socket apart
        // from, as upstream.
        let admin_socket_path = match &a.admin_socket_path {
            None => None,
            Some(admin) if disable_sds_api && disable_workload_api => Some(PathBuf::from(admin)),
            Some(admin) => Some(check_admin_socket(file, &socket_path, Path::new(admin))?),
        };

        let cache_size = |key: &str, value: Option<i64>, default: usize| match value {
            None | Some(0) => Ok(default),
            Some(n) => usize::try_from(n).map_err(|_| {
                ConfigError::invalid(
                    file,
                    format!("agent.{key}"),
                    format!("{key} should not be negative; use 0 for the default ({default})"),
                )
            }),
        };
        let x509_svid_cache_max_size = cache_size(
            "x509_svid_cache_max_size",
            a.x509_svid_cache_max_size,
            DEFAULT_X509_SVID_CACHE_MAX_SIZE,
        )?;
        let jwt_svid_cache_max_size = cache_size(
            "jwt_svid_cache_max_size",
            a.jwt_svid_cache_max_size,
            DEFAULT_JWT_SVID_CACHE_MAX_SIZE,
        )?;

        let workload_x509_svid_key_type = match a.workload_x509_svid_key_type.as_deref() {
            None => KeyType::EcP256,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "rsa-2048" => KeyType::Rsa2048,
                "ec-p256" => KeyType::EcP256,
                "ec-p384" => KeyType::EcP384,
                _ => {
                    return Err(ConfigError::invalid(
                        file,
                        "agent.workload_x509_svid_key_type",
                        format!(
                            "unknown key type {v:?}; use \"ec-p256\" (default), \"ec-p384\" or \
                             \"rsa-2048\""
                        ),
                    ));
                }
            },
        };

        let authorized_delegates = a
            .authorized_delegates
            .iter()
            .map(|id| {
                let parsed = SpiffeId::parse(id).map_err(|e| e.to_string());
                match parsed {
                    Ok(parsed) if parsed.is_member_of(&trust_domain) => Ok(parsed),
                    Ok(_) => Err(format!(
                        "{id:?} is not a member of trust domain {:?}",
                        trust_domain.name()
                    )),
                    Err(e) => Err(format!("could not parse {id:?}: {e}")),
                }
                .map_err(|message| {
                    ConfigError::invalid(
                        file,
                        "agent.authorized_delegates",
                        format!("error validating authorized delegate: {message}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let availability_target = match a.availability_target {
            None => None,
            Some(t) if t < MINIMUM_AVAILABILITY_TARGET => {
                return Err(ConfigError::invalid(
                    file,
                    "agent.availability_target",
                    "availability_target must be at least 24h0m0s",
                ));
            }
            Some(t) => Some(t),
        };

        let rebootstrap_mode = match a.rebootstrap_mode.as_deref() {
            None => RebootstrapMode::Never,
            Some(m) => match m.to_ascii_lowercase().as_str() {
                "never" => RebootstrapMode::Never,
                "auto" => RebootstrapMode::Auto,
                "always" => RebootstrapMode::Always,
                _ => {
                    return Err(ConfigError::invalid(
                        file,
                        "agent.rebootstrap_mode",
                        format!(
                            "unknown rebootstrap_mode {m:?}; use \"never\", \"auto\" or \"always\""
                        ),
                    ));
                }
            },
        };
        // Upstream's rules (cmd/spire-agent/cli/run): rebootstrapping needs a bootstrap
        // source to go back to, and brings its own retry schedule.
        if rebootstrap_mode != RebootstrapMode::Never && a.insecure_bootstrap == Some(true) {
            return Err(ConfigError::invalid(
                file,
                "agent.rebootstrap_mode",
                "insecure_bootstrap option can not be used with rebootstrapping; set \
                 trust_bundle_path, trust_bundle_url or trust_bundle_spiffe_workload_api \
                 instead, or rebootstrap_mode = \"never\"",
            ));
        }
        if rebootstrap_mode != RebootstrapMode::Never && a.retry_bootstrap.is_some() {
            return Err(ConfigError::invalid(
                file,
                "agent.retry_bootstrap",
                "you can not set retry_bootstrap when using reboostrap_mode; remove \
                 retry_bootstrap (or -retryBootstrap): rebootstrapping always retries",
            ));
        }
        if a.retry_bootstrap.is_some() {
            // Upstream v1.13.3 prints this whenever the key or the flag is set.
            warnings.push(
                "The 'retry_bootstrap' configuration is deprecated. It will be removed in \
                 SPIRE 1.14. Please test without the flag before upgrading."
                    .to_owned(),
            );
        }

        let sds_defaults = SdsSettings::default();
        let sds = SdsSettings {
            default_svid_name: a
                .sds
                .default_svid_name
                .clone()
                .unwrap_or(sds_defaults.default_svid_name),
            default_bundle_name: a
                .sds
                .default_bundle_name
                .clone()
                .unwrap_or(sds_defaults.default_bundle_name),
            default_all_bundles_name: a
                .sds
                .default_all_bundles_name
                .clone()
                .unwrap_or(sds_defaults.default_all_bundles_name),
            disable_spiffe_cert_validation: a.sds.disable_spiffe_cert_validation.unwrap_or(false),
        };
        if sds.default_all_bundles_name == sds.default_bundle_name {
            warnings.push(
                "The \"default_bundle_name\" and \"default_all_bundles_name\" configurables have \
                 the same value. \"default_all_bundles_name\" will be ignored. Please configure \
                 distinct values or use the defaults. This will be a configuration error in a \
                 future release."
                    .to_owned(),
            );
        }

        for (block, unknown) in [
            ("agent.sds", &a.sds.unknown),
            ("telemetry", &self.telemetry.unknown),
        ] {
            if !unknown.is_empty() {
                let keys: Vec<&str> = unknown.keys().map(String::as_str).collect();
                warnings.push(format!(
                    "Unknown configuration in {block} is ignored, as upstream ignores it: {}",
                    keys.join(",")
                ));
            }
        }
        let experimental = resolve_experimental(file, &a.experimental, &mut warnings)?;

        let h = &self.health_checks;
        let health_checks = HealthChecks {
            listener_enabled: h.listener_enabled.unwrap_or(false),
            bind_address: h
                .bind_address
                .clone()
                .unwrap_or_else(|| "localhost".to_owned()),
            bind_port: h.bind_port.unwrap_or(80),
            live_path: h.live_path.clone().unwrap_or_else(|| "/live".to_owned()),
            ready_path: h.ready_path.clone().unwrap_or_else(|| "/ready".to_owned()),
        };

        Ok(ResolvedAgentConfig {
            trust_domain,
            server_address,
            server_port,
            socket_path,
            admin_socket_path,
            data_dir: PathBuf::from(
                a.data_dir
                    .clone()
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned()),
            ),
            bootstrap_bundle,
            join_token,
            log_level,
            log_format,
            log_file: a.log_file.clone().map(PathBuf::from),
            log_source_location: a.log_source_location.unwrap_or(false),
            log_selectors: a.log_selectors.clone(),
            allow_unauthenticated_verifiers: a.allow_unauthenticated_verifiers.unwrap_or(false),
            allowed_foreign_jwt_claims: a.allowed_foreign_jwt_claims.clone(),
            authorized_delegates,
            availability_target,
            x509_svid_cache_max_size,
            jwt_svid_cache_max_size,
            workload_x509_svid_key_type,
            ratelimit: a.experimental.ratelimit,
            rebootstrap_mode,
            rebootstrap_delay: a.rebootstrap_delay.unwrap_or(DEFAULT_REBOOTSTRAP_DELAY),
            retry_bootstrap: a.retry_bootstrap.unwrap_or(true),
            sds,
            disable_sds_api,
            disable_workload_api,
            experimental,
            plugins,
            profiling_enabled: a.profiling_enabled.unwrap_or(false),
            profiling_port: a.profiling_port.unwrap_or(0),
            profiling_freq: a.profiling_freq.unwrap_or(0),
            profiling_names: a.profiling_names.clone(),
            health_checks,
            telemetry: self.telemetry.clone(),
            warnings,
        })
    }
}

fn resolve_trust_domain(file: &str, a: &AgentSection) -> Result<TrustDomain, ConfigError> {
    let Some(td) = a.trust_domain.as_deref() else {
        return Err(ConfigError::invalid(
            file,
            "agent.trust_domain",
            "trust_domain must be configured: set trust_domain = \"example.org\" in the agent \
             block, or pass -trustDomain",
        ));
    };
    TrustDomain::new(td).map_err(|e| {
        ConfigError::invalid(
            file,
            "agent.trust_domain",
            format!(
                "could not parse trust_domain {td:?}: {e}; write a name such as \"example.org\""
            ),
        )
    })
}

/// Upstream's rules: exactly one of insecure_bootstrap, trust_bundle_url,
/// trust_bundle_path and trust_bundle_spiffe_workload_api; URLs must be https (unless
/// fetched over a unix socket).
fn resolve_bootstrap(file: &str, a: &AgentSection) -> Result<BootstrapBundle, ConfigError> {
    let insecure = a.insecure_bootstrap.unwrap_or(false);
    let path = a.trust_bundle_path.as_deref();
    let url = a.trust_bundle_url.as_deref();
    let key = "agent.trust_bundle_path";
    if let Some(address) = a
        .trust_bundle_spiffe_workload_api
        .as_deref()
        .filter(|a| !a.is_empty())
    {
        return resolve_workload_api_bootstrap(file, a, insecure, address);
    }
    match (insecure, url, path) {
        (true, Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                "agent.insecure_bootstrap",
                "only one of insecure_bootstrap, trust_bundle_url, or trust_bundle_path can be \
                 specified, not the three options",
            ));
        }
        (true, Some(_), None) => {
            return Err(ConfigError::invalid(
                file,
                "agent.insecure_bootstrap",
                "only one of insecure_bootstrap or trust_bundle_url can be specified, not both",
            ));
        }
        (true, None, Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                "agent.insecure_bootstrap",
                "only one of insecure_bootstrap or trust_bundle_path can be specified, not both",
            ));
        }
        (false, None, None) => {
            return Err(ConfigError::invalid(
                file,
                key,
                "trust_bundle_path, trust_bundle_url, or trust_bundle_spiffe_workload_api must be \
                 configured unless insecure_bootstrap is set (or pass -trustBundle / \
                 -trustBundleUrl)",
            ));
        }
        (false, Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                key,
                "only one of trust_bundle_url or trust_bundle_path can be specified, not both",
            ));
        }
        _ => {}
    }
    let format = match a.trust_bundle_format.as_deref() {
        None | Some("pem") => TrustBundleFormat::Pem,
        Some("spiffe") => TrustBundleFormat::Spiffe,
        Some(other) => {
            return Err(ConfigError::invalid(
                file,
                "agent.trust_bundle_format",
                format!(
                    "invalid value {other:?} for trust_bundle_format, expected \"pem\" or \"spiffe\""
                ),
            ));
        }
    };
    let unix_socket = a.trust_bundle_unix_socket.as_deref().map(PathBuf::from);
    if unix_socket.is_some() && url.is_none() {
        return Err(ConfigError::invalid(
            file,
            "agent.trust_bundle_unix_socket",
            "trust_bundle_unix_socket requires trust_bundle_url: it names the socket the URL is \
             fetched through",
        ));
    }
    if insecure {
        return Ok(BootstrapBundle::Insecure);
    }
    if let Some(url) = url {
        // As upstream: over a unix socket the request is plain HTTP (the socket's
        // permissions protect it); over TCP it must be HTTPS.
        if unix_socket.is_some() {
            if !url.starts_with("http://") {
                return Err(ConfigError::invalid(
                    file,
                    "agent.trust_bundle_url",
                    "trust bundle URL must start with http:// when used with \
                     trust_bundle_unix_socket",
                ));
            }
        } else if !url.starts_with("https://") {
            return Err(ConfigError::invalid(
                file,
                "agent.trust_bundle_url",
                "trust bundle URL must start with https://",
            ));
        }
        return Ok(BootstrapBundle::Url {
            url: url.to_owned(),
            format,
            unix_socket,
        });
    }
    match path {
        Some(path) => Ok(BootstrapBundle::Path {
            path: PathBuf::from(path),
            format,
        }),
        None => Err(ConfigError::invalid(
            file,
            key,
            "trust_bundle_path, trust_bundle_url, or trust_bundle_spiffe_workload_api must be configured unless insecure_bootstrap \
             is set",
        )),
    }
}

/// `trust_bundle_spiffe_workload_api`, alone as upstream requires, as a unix socket address
/// (`unix:///path` or `unix:/path`).
fn resolve_workload_api_bootstrap(
    file: &str,
    a: &AgentSection,
    insecure: bool,
    address: &str,
) -> Result<BootstrapBundle, ConfigError> {
    let key = "agent.trust_bundle_spiffe_workload_api";
    let conflict = if insecure {
        Some(
            "only one of insecure_bootstrap or trust_bundle_spiffe_workload_api can be specified, not both",
        )
    } else if a.trust_bundle_url.is_some() {
        Some(
            "only one of trust_bundle_url or trust_bundle_spiffe_workload_api can be specified, not both",
        )
    } else if a.trust_bundle_path.is_some() {
        Some(
            "only one of trust_bundle_path or trust_bundle_spiffe_workload_api can be specified, not both",
        )
    } else if a.trust_bundle_unix_socket.is_some() {
        Some("trust_bundle_unix_socket can not be used with trust_bundle_spiffe_workload_api")
    } else {
        None
    };
    if let Some(message) = conflict {
        return Err(ConfigError::invalid(file, key, message));
    }
    let socket_path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| {
            ConfigError::invalid(
                file,
                key,
                format!(
                    "trust_bundle_spiffe_workload_api is not a valid SPIFFE Workload API endpoint \
                     address: {address:?}; write the agent socket as \"unix:///path/to/agent.sock\""
                ),
            )
        })?;
    Ok(BootstrapBundle::WorkloadApi {
        socket_path: PathBuf::from(socket_path),
        address: address.to_owned(),
    })
}

fn resolve_join_token(file: &str, a: &AgentSection) -> Result<Option<String>, ConfigError> {
    match (&a.join_token, &a.join_token_file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            file,
            "agent.join_token_file",
            "only one of join_token or join_token_file can be specified, not both",
        )),
        (Some(token), None) => Ok(Some(token.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(
                    file,
                    "agent.join_token_file",
                    format!("unable to read join token file {path:?}: {e}"),
                )
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(ConfigError::invalid(
                    file,
                    "agent.join_token_file",
                    format!("join token file {path:?} is empty"),
                ));
            }
            Ok(Some(token.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// The admin socket may not sit in the Workload API socket's folder (or below it): that
/// folder is world-accessible, the admin API is not (SECURITY.md).
fn check_admin_socket(
    file: &str,
    socket_path: &Path,
    admin: &Path,
) -> Result<PathBuf, ConfigError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let workload_dir = abs(socket_path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let admin_abs = abs(admin);
    if admin_abs.starts_with(&workload_dir) {
        return Err(ConfigError::invalid(
            file,
            "agent.admin_socket_path",
            format!(
                "admin socket cannot be in the same directory or a subdirectory as that \
                 containing the Workload API socket ({}); use e.g. \
                 /tmp/spire-agent/private/admin.sock",
                workload_dir.display()
            ),
        ));
    }
    Ok(admin.to_path_buf())
}

/// Upstream's default (and largest) `experimental.jwt_svid_cache_hit_timeout`: its RPC timeout.
pub(super) const DEFAULT_JWT_SVID_CACHE_HIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The smallest `experimental.jwt_svid_cache_hit_timeout` upstream accepts.
const MIN_JWT_SVID_CACHE_HIT_TIMEOUT: Duration = Duration::from_secs(5);

fn resolve_experimental(
    file: &str,
    e: &ExperimentalSection,
    warnings: &mut Vec<String>,
) -> Result<ExperimentalSettings, ConfigError> {
    if e != &ExperimentalSection::default() {
        warnings.push(
            "Experimental features have been enabled. Please see doc/upgrading.md for upgrade \
             and compatibility considerations for experimental features."
                .to_owned(),
        );
    }
    let sync_interval = e.sync_interval.unwrap_or(DEFAULT_SYNC_INTERVAL);
    if sync_interval.is_zero() {
        return Err(ConfigError::invalid(
            file,
            "agent.experimental.sync_interval",
            "sync_interval must be greater than zero; write a duration such as \"5s\"",
        ));
    }
    if let Some(broker) = &e.broker
        && !broker.is_null()
    {
        return Err(ConfigError::invalid(
            file,
            "agent.experimental.broker",
            "the SPIFFE Broker API (upstream v1.15.3) is not supported by this agent; remove the \
             block (workloads keep using the Workload API and the Delegated Identity API)",
        ));
    }
    if !e.unknown.is_empty() {
        let keys: Vec<&str> = e.unknown.keys().map(String::as_str).collect();
        warnings.push(format!(
            "Unknown configuration in agent.experimental is ignored, as upstream ignores it: {}",
            keys.join(",")
        ));
    }
    let jwt_svid_cache_hit_timeout = match e.jwt_svid_cache_hit_timeout {
        None => DEFAULT_JWT_SVID_CACHE_HIT_TIMEOUT,
        Some(t) if t < MIN_JWT_SVID_CACHE_HIT_TIMEOUT => {
            return Err(ConfigError::invalid(
                file,
                "agent.experimental.jwt_svid_cache_hit_timeout",
                format!(
                    "jwt_svid_cache_hit_timeout ({}) must be greater than 5s",
                    spire_core::duration::format(t)
                ),
            ));
        }
        Some(t) if t > DEFAULT_JWT_SVID_CACHE_HIT_TIMEOUT => {
            return Err(ConfigError::invalid(
                file,
                "agent.experimental.jwt_svid_cache_hit_timeout",
                format!(
                    "jwt_svid_cache_hit_timeout ({}) must be less than 30s",
                    spire_core::duration::format(t)
                ),
            ));
        }
        Some(t) => {
            warnings.push("The use of 'jwt_svid_cache_hit_timeout' is experimental".to_owned());
            t
        }
    };
    if e.use_sync_authorized_entries.is_some() {
        warnings.push(
            "The 'use_sync_authorized_entries' configuration is deprecated. The option to \
             disable it will be removed in SPIRE 1.13."
                .to_owned(),
        );
    }
    spire_core::config::feature_flags::check(
        file,
        "agent.experimental.feature_flags",
        "agent",
        &e.feature_flags,
        warnings,
    )?;
    Ok(ExperimentalSettings {
        sync_interval,
        jwt_svid_cache_hit_timeout,
        use_sync_authorized_entries: e.use_sync_authorized_entries.unwrap_or(true),
        require_pq_kem: e.require_pq_kem.unwrap_or(false),
        feature_flags: e.feature_flags.clone(),
    })
}
