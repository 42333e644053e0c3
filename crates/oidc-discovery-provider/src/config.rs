//! The provider's configuration file, upstream's `oidc-discovery-provider.conf` in HCL or
//! JSON, with upstream's keys, defaults and validation messages (its
//! `support/oidc-discovery-provider/config.go`). Unknown keys are errors naming the key, where
//! upstream's decoder would ignore them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spire_core::config::{ConfigError, de};
use spire_core::spiffe_id::TrustDomain;

/// `log_level` when unset.
const DEFAULT_LOG_LEVEL: &str = "info";
/// `poll_interval` of every source when unset or not positive.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// `serving_cert_file.file_sync_interval` when unset or not positive.
const DEFAULT_FILE_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// `acme.cache_dir` when the key is absent (an empty value disables the cache).
const DEFAULT_CACHE_DIR: &str = "./.acme-cache";
/// `health_checks.bind_port` when unset or not positive.
const DEFAULT_HEALTH_CHECKS_BIND_PORT: u16 = 8008;
/// `health_checks.ready_path` when unset.
const DEFAULT_READY_PATH: &str = "/ready";
/// `health_checks.live_path` when unset.
const DEFAULT_LIVE_PATH: &str = "/live";
/// `serving_cert_file.addr` when unset.
const DEFAULT_ADDR: &str = ":443";

/// The file as written: every key upstream knows, nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, deserialize_with = "de::opt_string")]
    log_format: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    log_level: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    log_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    log_requests: Option<bool>,
    #[serde(default, deserialize_with = "de::string_list")]
    domains: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    set_key_use: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    allow_insecure_scheme: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_string")]
    insecure_addr: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    listen_socket_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_block")]
    acme: Option<RawAcme>,
    #[serde(default, deserialize_with = "de::opt_block")]
    serving_cert_file: Option<RawServingCertFile>,
    #[serde(default, deserialize_with = "de::opt_block")]
    server_api: Option<RawServerApi>,
    #[serde(default, deserialize_with = "de::opt_block")]
    workload_api: Option<RawWorkloadApi>,
    #[serde(default, deserialize_with = "de::opt_block")]
    file: Option<RawFile>,
    #[serde(default, deserialize_with = "de::opt_block")]
    health_checks: Option<RawHealthChecks>,
    #[serde(default, deserialize_with = "de::block")]
    experimental: RawExperimental,
    #[serde(default, deserialize_with = "de::opt_string")]
    jwt_issuer: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    jwks_uri: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    server_path_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    #[serde(default, deserialize_with = "de::opt_string")]
    directory_url: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    email: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    tos_accepted: Option<bool>,
    /// Kept apart from absent: `cache_dir = ""` turns the cache off.
    #[serde(default)]
    cache_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServingCertFile {
    #[serde(default, deserialize_with = "de::opt_string")]
    cert_file_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    key_file_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    addr: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    file_sync_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerApi {
    #[serde(default, deserialize_with = "de::opt_string")]
    address: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    poll_interval: Option<String>,
    #[serde(default, deserialize_with = "de::block")]
    experimental: RawPipeExperimental,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    #[serde(default, deserialize_with = "de::opt_string")]
    socket_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    trust_domain: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    poll_interval: Option<String>,
    #[serde(default, deserialize_with = "de::block")]
    experimental: RawPipeExperimental,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, deserialize_with = "de::opt_string")]
    path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthChecks {
    #[serde(default, deserialize_with = "de::opt_i64")]
    bind_port: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    live_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ready_path: Option<String>,
}

/// `experimental { listen_named_pipe_name }`: Windows named pipes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperimental {
    #[serde(default, deserialize_with = "de::opt_string")]
    listen_named_pipe_name: Option<String>,
}

/// `server_api|workload_api { experimental { named_pipe_name } }`: Windows named pipes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeExperimental {
    #[serde(default, deserialize_with = "de::opt_string")]
    named_pipe_name: Option<String>,
}

/// A configuration that passed upstream's checks, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `log_level`, default `info`.
    pub log_level: String,
    /// `log_format`: `text` (default) or `json`.
    pub log_format: String,
    /// `log_path`: append logs to this file instead of standard output.
    pub log_path: Option<PathBuf>,
    /// `log_requests`: log every request at debug level.
    pub log_requests: bool,
    /// `domains`, deduplicated in order: the Host names the discovery document is served for.
    pub domains: Vec<String>,
    /// `set_key_use`: give every JWKS key `"use": "sig"`.
    pub set_key_use: bool,
    /// `allow_insecure_scheme`: render `http://` URLs for plain-HTTP requests.
    pub allow_insecure_scheme: bool,
    /// Where and how requests are served.
    pub listener: ListenerConfig,
    /// Where the JWT authorities come from.
    pub source: SourceConfig,
    /// `health_checks { }`, when present.
    pub health_checks: Option<HealthChecksConfig>,
    /// `jwt_issuer`: the issuer the document names instead of one derived from the Host.
    pub jwt_issuer: Option<String>,
    /// `jwks_uri`: the absolute URI of the keys the document names.
    pub jwks_uri: Option<String>,
    /// `server_path_prefix`: the path both documents are served under; `/` when unset.
    pub server_path_prefix: String,
    /// Keys that only mean something on Windows, given on this system: warned about at start.
    pub windows_only_keys: Vec<&'static str>,
}

/// How requests reach the provider.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerConfig {
    /// `insecure_addr`: plain HTTP on this TCP address.
    Insecure(String),
    /// `listen_socket_path`: plain HTTP on this unix socket (behind a proxy).
    UnixSocket(PathBuf),
    /// `serving_cert_file { }`: HTTPS with a certificate from disk.
    ServingCert(ServingCertConfig),
    /// `acme { }`: HTTPS with certificates from an ACME server.
    Acme(AcmeConfig),
}

/// `serving_cert_file { }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingCertConfig {
    /// `cert_file_path`: the PEM certificate chain.
    pub cert_file_path: PathBuf,
    /// `key_file_path`: the PEM private key.
    pub key_file_path: PathBuf,
    /// `addr`, default `:443`.
    pub addr: SocketAddr,
    /// `file_sync_interval`, default one minute.
    pub file_sync_interval: Duration,
}

/// `acme { }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// `directory_url`; empty means Let's Encrypt.
    pub directory_url: String,
    /// `email`: the ACME account's contact.
    pub email: String,
    /// `tos_accepted`: always true once validated.
    pub tos_accepted: bool,
    /// `cache_dir`, default `./.acme-cache`; `None` when set to the empty string.
    pub cache_dir: Option<PathBuf>,
}

/// Where the JWT authorities come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// `server_api { }`: bundle.v1.GetBundle on the server's admin socket.
    ServerApi {
        /// The unix socket of `address` (`unix:` or `unix://` removed).
        socket_path: PathBuf,
        /// `poll_interval`.
        poll_interval: Duration,
    },
    /// `workload_api { }`: FetchJWTBundles on an agent's Workload API.
    WorkloadApi {
        /// `socket_path`, made absolute.
        socket_path: PathBuf,
        /// `trust_domain`: whose bundle to serve.
        trust_domain: TrustDomain,
        /// `poll_interval`.
        poll_interval: Duration,
    },
    /// `file { }`: a SPIFFE bundle document on disk.
    File {
        /// `path`.
        path: PathBuf,
        /// `poll_interval`.
        poll_interval: Duration,
    },
}

impl SourceConfig {
    /// How often the source is polled.
    pub fn poll_interval(&self) -> Duration {
        match self {
            Self::ServerApi { poll_interval, .. }
            | Self::WorkloadApi { poll_interval, .. }
            | Self::File { poll_interval, .. } => *poll_interval,
        }
    }
}

/// `health_checks { }` with defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecksConfig {
    /// `bind_port`, default 8008, on every interface.
    pub bind_port: u16,
    /// `ready_path`, default `/ready`.
    pub ready_path: String,
    /// `live_path`, default `/live`.
    pub live_path: String,
}

/// Reads and validates the configuration file at `path`; with `expand_env`, `$VAR` and
/// `${VAR}` are replaced first, as `-expandEnv` asks.
pub fn load(path: &Path, expand_env: bool) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    parse(&path.display().to_string(), &text, expand_env)
}

/// Parses and validates configuration `text` (`file` names it in errors).
pub fn parse(file: &str, text: &str, expand_env: bool) -> Result<Config, ConfigError> {
    let raw: RawConfig =
        spire_core::config::load(file, text, expand_env, |name| std::env::var(name).ok())?;
    validate(file, raw)
}

fn validate(file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::invalid(file, key, message);
    let log_level = raw
        .log_level
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
    if spire_common::logging::canonical_level(&log_level).is_none() {
        return Err(invalid(
            "log_level",
            format!("not a valid logrus Level: {log_level:?}; use debug, info, warn or error"),
        ));
    }
    let log_format = raw.log_format.unwrap_or_default();
    if !matches!(
        log_format.to_ascii_lowercase().as_str(),
        "" | "text" | "json"
    ) {
        return Err(invalid(
            "log_format",
            format!("unknown log format {log_format:?}; use \"text\" or \"json\""),
        ));
    }

    if raw.domains.is_empty() {
        return Err(invalid(
            "domains",
            "at least one domain must be configured".to_owned(),
        ));
    }
    let mut domains: Vec<String> = Vec::with_capacity(raw.domains.len());
    for domain in raw.domains {
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }

    let acme = match raw.acme {
        None => None,
        Some(acme) => {
            if raw.insecure_addr.is_some() {
                return Err(invalid(
                    "acme",
                    "insecure_addr and the acme section are mutually exclusive".to_owned(),
                ));
            }
            if !acme.tos_accepted.unwrap_or(false) {
                return Err(invalid(
                    "acme.tos_accepted",
                    "tos_accepted must be set to true in the acme configuration section".to_owned(),
                ));
            }
            let Some(email) = acme.email else {
                return Err(invalid(
                    "acme.email",
                    "email must be configured in the acme configuration section".to_owned(),
                ));
            };
            let cache_dir = match acme.cache_dir {
                None => Some(PathBuf::from(DEFAULT_CACHE_DIR)),
                Some(dir) if dir.is_empty() => None,
                Some(dir) => Some(PathBuf::from(dir)),
            };
            Some(AcmeConfig {
                directory_url: acme.directory_url.unwrap_or_default(),
                email,
                tos_accepted: true,
                cache_dir,
            })
        }
    };

    let serving_cert = match raw.serving_cert_file {
        None => None,
        Some(section) => {
            let Some(cert_file_path) = section.cert_file_path else {
                return Err(invalid(
                    "serving_cert_file.cert_file_path",
                    "cert_file_path must be configured in the serving_cert_file configuration \
                     section"
                        .to_owned(),
                ));
            };
            let Some(key_file_path) = section.key_file_path else {
                return Err(invalid(
                    "serving_cert_file.key_file_path",
                    "key_file_path must be configured in the serving_cert_file configuration \
                     section"
                        .to_owned(),
                ));
            };
            let raw_addr = section.addr.unwrap_or_else(|| DEFAULT_ADDR.to_owned());
            let addr = resolve_tcp_addr(&raw_addr).map_err(|e| {
                invalid(
                    "serving_cert_file.addr",
                    format!("invalid addr in the serving_cert_file configuration section: {e}"),
                )
            })?;
            let file_sync_interval = duration_field(
                section.file_sync_interval.as_deref(),
                DEFAULT_FILE_SYNC_INTERVAL,
            )
            .map_err(|e| {
                invalid(
                    "serving_cert_file.file_sync_interval",
                    format!(
                        "invalid file_sync_interval in the serving_cert_file configuration \
                         section: {e}"
                    ),
                )
            })?;
            Some(ServingCertConfig {
                cert_file_path: PathBuf::from(cert_file_path),
                key_file_path: PathBuf::from(key_file_path),
                addr,
                file_sync_interval,
            })
        }
    };

    let mut windows_only_keys = Vec::new();
    if raw.experimental.listen_named_pipe_name.is_some() {
        windows_only_keys.push("experimental.listen_named_pipe_name");
    }

    let mut sources = Vec::new();
    if let Some(section) = &raw.server_api {
        let poll_interval = duration_field(section.poll_interval.as_deref(), DEFAULT_POLL_INTERVAL)
            .map_err(|e| {
                invalid(
                    "server_api.poll_interval",
                    format!("invalid poll_interval in the server_api configuration section: {e}"),
                )
            })?;
        if section.experimental.named_pipe_name.is_some() {
            windows_only_keys.push("server_api.experimental.named_pipe_name");
        }
        sources.push(("server_api", poll_interval));
    }
    if let Some(section) = &raw.workload_api {
        if section.trust_domain.is_none() {
            return Err(invalid(
                "workload_api.trust_domain",
                "trust_domain must be configured in the workload_api configuration section"
                    .to_owned(),
            ));
        }
        let poll_interval = duration_field(section.poll_interval.as_deref(), DEFAULT_POLL_INTERVAL)
            .map_err(|e| {
                invalid(
                    "workload_api.poll_interval",
                    format!("invalid poll_interval in the workload_api configuration section: {e}"),
                )
            })?;
        if section.experimental.named_pipe_name.is_some() {
            windows_only_keys.push("workload_api.experimental.named_pipe_name");
        }
        sources.push(("workload_api", poll_interval));
    }
    if let Some(section) = &raw.file {
        let poll_interval = duration_field(section.poll_interval.as_deref(), DEFAULT_POLL_INTERVAL)
            .map_err(|e| {
                invalid(
                    "file.poll_interval",
                    format!("invalid poll_interval in the file configuration section: {e}"),
                )
            })?;
        sources.push(("file", poll_interval));
    }

    let health_checks = raw.health_checks.map(|h| HealthChecksConfig {
        bind_port: h
            .bind_port
            .filter(|p| *p > 0)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_HEALTH_CHECKS_BIND_PORT),
        ready_path: h
            .ready_path
            .unwrap_or_else(|| DEFAULT_READY_PATH.to_owned()),
        live_path: h.live_path.unwrap_or_else(|| DEFAULT_LIVE_PATH.to_owned()),
    });

    // Upstream's validateOS (POSIX).
    let insecure_addr = raw.insecure_addr.clone();
    let listen_socket_path = raw.listen_socket_path.clone();
    let exclusive = |message: &str| Err(invalid("top level", message.to_owned()));
    match (
        acme.is_some(),
        serving_cert.is_some(),
        insecure_addr.is_some(),
        listen_socket_path.is_some(),
    ) {
        (false, false, false, false) => {
            return exclusive(
                "either acme, serving_cert_file, insecure_addr or listen_socket_path must be \
                 configured",
            );
        }
        (true, true, _, _) => {
            return exclusive("acme and serving_cert_file are mutually exclusive");
        }
        (true, _, _, true) => {
            return exclusive("listen_socket_path and the acme section are mutually exclusive");
        }
        (_, true, true, _) => {
            return exclusive("serving_cert_file and insecure_addr are mutually exclusive");
        }
        (_, true, _, true) => {
            return exclusive("serving_cert_file and listen_socket_path are mutually exclusive");
        }
        (_, _, true, true) => {
            return exclusive("insecure_addr and listen_socket_path are mutually exclusive");
        }
        _ => {}
    }
    if let Some(section) = &raw.server_api {
        let Some(address) = &section.address else {
            return Err(invalid(
                "server_api.address",
                "address must be configured in the server_api configuration section".to_owned(),
            ));
        };
        if !address.starts_with("unix:") {
            return Err(invalid(
                "server_api.address",
                "address must use the unix name system in the server_api configuration section"
                    .to_owned(),
            ));
        }
    }
    if let Some(section) = &raw.workload_api
        && section.socket_path.is_none()
    {
        return Err(invalid(
            "workload_api.socket_path",
            "socket_path must be configured in the workload_api configuration section".to_owned(),
        ));
    }

    let source = match sources.as_slice() {
        [] => {
            return Err(invalid(
                "top level",
                "exactly one of the server_api, workload_api, or file sections must be configured"
                    .to_owned(),
            ));
        }
        [(which, poll_interval)] => source_config(
            file,
            which,
            *poll_interval,
            (&raw.server_api, &raw.workload_api, &raw.file),
        )?,
        _ => {
            return Err(invalid(
                "top level",
                "the server_api, workload_api, and file sections are mutually exclusive".to_owned(),
            ));
        }
    };

    if let Some(issuer) = &raw.jwt_issuer {
        match url_parts(issuer) {
            (None, _) => {
                return Err(invalid(
                    "jwt_issuer",
                    "the jwt_issuer url must contain a scheme".to_owned(),
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "jwt_issuer",
                    "the jwt_issuer url must contain a host".to_owned(),
                ));
            }
            _ => {}
        }
    }
    if let Some(jwks_uri) = &raw.jwks_uri
        && !matches!(url_parts(jwks_uri), (Some(_), Some(_)))
    {
        return Err(invalid(
            "jwks_uri",
            "the jwks_uri setting could not be parsed: it must be an absolute URL with a scheme \
             and a host"
                .to_owned(),
        ));
    }

    let listener = match (insecure_addr, listen_socket_path, serving_cert, acme) {
        (Some(addr), _, _, _) => ListenerConfig::Insecure(addr),
        (None, Some(path), _, _) => ListenerConfig::UnixSocket(PathBuf::from(path)),
        (None, None, Some(cert), _) => ListenerConfig::ServingCert(cert),
        (None, None, None, Some(acme)) => ListenerConfig::Acme(acme),
        (None, None, None, None) => {
            return exclusive(
                "either acme, serving_cert_file, insecure_addr or listen_socket_path must be \
                 configured",
            );
        }
    };

    Ok(Config {
        log_level,
        log_format,
        log_path: raw.log_path.map(PathBuf::from),
        log_requests: raw.log_requests.unwrap_or(false),
        domains,
        set_key_use: raw.set_key_use.unwrap_or(false),
        allow_insecure_scheme: raw.allow_insecure_scheme.unwrap_or(false),
        listener,
        source,
        health_checks,
        jwt_issuer: raw.jwt_issuer,
        jwks_uri: raw.jwks_uri,
        server_path_prefix: raw.server_path_prefix.unwrap_or_else(|| "/".to_owned()),
        windows_only_keys,
    })
}

/// The one source section's settings, already checked for presence.
fn source_config(
    file: &str,
    which: &str,
    poll_interval: Duration,
    sections: (
        &Option<RawServerApi>,
        &Option<RawWorkloadApi>,
        &Option<RawFile>,
    ),
) -> Result<SourceConfig, ConfigError> {
    match (which, sections.0, sections.1, sections.2) {
        ("server_api", Some(section), _, _) => {
            let address = section.address.as_deref().unwrap_or_default();
            Ok(SourceConfig::ServerApi {
                socket_path: unix_target_path(address),
                poll_interval,
            })
        }
        ("workload_api", _, Some(section), _) => {
            let name = section.trust_domain.as_deref().unwrap_or_default();
            let trust_domain = TrustDomain::new(name).map_err(|e| {
                ConfigError::invalid(
                    file,
                    "workload_api.trust_domain",
                    format!("{name:?} is not a valid trust domain: {e}"),
                )
            })?;
            let socket = PathBuf::from(section.socket_path.as_deref().unwrap_or_default());
            let socket_path = std::path::absolute(&socket).unwrap_or(socket);
            Ok(SourceConfig::WorkloadApi {
                socket_path,
                trust_domain,
                poll_interval,
            })
        }
        ("file", _, _, Some(section)) => Ok(SourceConfig::File {
            path: PathBuf::from(section.path.as_deref().unwrap_or_default()),
            poll_interval,
        }),
        _ => Err(ConfigError::invalid(
            file,
            "top level",
            "exactly one of the server_api, workload_api, or file sections must be configured",
        )),
    }
}

/// The socket path of a gRPC `unix:` target: `unix:///abs/path`, `unix:/abs/path` or
/// `unix:relative/path`.
fn unix_target_path(address: &str) -> PathBuf {
    let path = match address.strip_prefix("unix://") {
        Some(rest) => rest,
        None => address.strip_prefix("unix:").unwrap_or(address),
    };
    PathBuf::from(path)
}

/// Go's `parseDurationField`: unset, zero or negative means `default`.
fn duration_field(raw: Option<&str>, default: Duration) -> Result<Duration, String> {
    let Some(text) = raw else {
        return Ok(default);
    };
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        spire_core::duration::parse(trimmed.trim_start_matches('-')).map_err(|e| e.to_string())?;
        return Ok(default);
    }
    let duration = spire_core::duration::parse(trimmed).map_err(|e| e.to_string())?;
    Ok(if duration.is_zero() {
        default
    } else {
        duration
    })
}

/// Go's `net.ResolveTCPAddr("tcp", raw)` for literal addresses: `host:port` where an empty
/// host means every interface.
pub fn resolve_tcp_addr(raw: &str) -> Result<SocketAddr, String> {
    let (host, port) = raw
        .rsplit_once(':')
        .ok_or_else(|| format!("address {raw}: missing port in address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("address {raw}: unknown port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "" => std::net::IpAddr::from([0u8, 0, 0, 0]),
        "localhost" => std::net::IpAddr::from([127u8, 0, 0, 1]),
        other => other
            .parse()
            .map_err(|_| format!("address {raw}: host must be an IP address or localhost"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// The scheme and host of a URL as Go's `url.Parse` finds them (either may be missing).
fn url_parts(url: &str) -> (Option<&str>, Option<&str>) {
    let scheme_end = url.find(':');
    let scheme = scheme_end.map(|i| &url[..i]).filter(|s| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(scheme) = scheme else {
        return (None, None);
    };
    let rest = &url[scheme.len() + 1..];
    let host = rest.strip_prefix("//").map(|authority| {
        let end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
        let authority = &authority[..end];
        authority.rsplit_once('@').map_or(authority, |(_, h)| h)
    });
    (Some(scheme), host.filter(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests;
