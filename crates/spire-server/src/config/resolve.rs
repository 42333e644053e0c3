//! Validation of a parsed [`ServerConfig`] into typed values with upstream's defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use spire_core::keys::KeyType;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};

use super::{
    BundleEndpointSection, ConfigError, DEFAULT_BIND_ADDRESS, DEFAULT_BIND_PORT, DEFAULT_CA_TTL,
    DEFAULT_JWT_SVID_TTL, DEFAULT_SOCKET_PATH, DEFAULT_X509_SVID_TTL, ExperimentalSection,
    FederatesWithSection, FederationSection, ServerConfig, ServerSection, TelemetrySection,
};

/// Upstream's CA rotation constants: an SVID TTL is guaranteed only up to `ca_ttl / 6`,
/// and never beyond 7 days.
const ACTIVATION_THRESHOLD_DIVISOR: u32 = 6;
const ACTIVATION_THRESHOLD_CAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bundle endpoint refresh hints below this are not honoured by upstream.
const MINIMUM_REFRESH_HINT: Duration = Duration::from_secs(60);
const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
pub use spire_core::config::sections::LogFormat;
use spire_core::config::sections::resolve_logging;

/// The CA certificate subject, with upstream's default (`C=US, O=SPIFFE`) when unset or empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    /// Country values.
    pub country: Vec<String>,
    /// Organization values.
    pub organization: Vec<String>,
    /// Common name; empty for none.
    pub common_name: String,
}

impl Default for CaSubject {
    fn default() -> Self {
        Self {
            country: vec!["US".to_owned()],
            organization: vec!["SPIFFE".to_owned()],
            common_name: String::new(),
        }
    }
}

/// `ratelimit { }` with defaults (both on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Limit node attestation to 1/s per IP.
    pub attestation: bool,
    /// Limit X509/JWT signing to 500/s per IP.
    pub signing: bool,
}

/// `federation { }`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federation {
    /// This server's bundle endpoint, when configured.
    pub bundle_endpoint: Option<BundleEndpoint>,
    /// Relationships configured in the file, keyed by trust domain.
    pub federates_with: BTreeMap<TrustDomain, FederatesWith>,
}

/// The bundle endpoint this server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpoint {
    /// Listen address (default 0.0.0.0).
    pub address: String,
    /// Listen port.
    pub port: u16,
    /// `refresh_hint` advertised in served bundles (default 5m).
    pub refresh_hint: Duration,
    /// How the endpoint authenticates itself.
    pub profile: BundleEndpointProfile,
}

/// Bundle endpoint profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleEndpointProfile {
    /// `https_spiffe`: serve with the server's own X509-SVID (upstream's default).
    HttpsSpiffe,
    /// `https_web` with a certificate obtained over ACME.
    HttpsWebAcme {
        /// ACME directory URL.
        directory_url: String,
        /// Domain to get a certificate for.
        domain_name: String,
        /// Contact email.
        email: String,
        /// Terms of service accepted.
        tos_accepted: bool,
        /// Where ACME state is kept (`<data_dir>/bundle-acme`).
        cache_dir: PathBuf,
    },
    /// `https_web` with a certificate and key read from disk.
    HttpsWebServingCert {
        /// Certificate chain file.
        cert_file_path: PathBuf,
        /// Private key file.
        key_file_path: PathBuf,
        /// How often the files are re-read (default 1h).
        file_sync_interval: Duration,
    },
}

/// A `federates_with` relationship from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatesWith {
    /// `bundle_endpoint_url` (https).
    pub bundle_endpoint_url: String,
    /// How to authenticate the endpoint.
    pub profile: FederatesWithProfile,
}

/// Bundle endpoint profile of a federated trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederatesWithProfile {
    /// Web PKI.
    HttpsWeb,
    /// SPIFFE authentication: the endpoint must present this ID.
    HttpsSpiffe {
        /// Expected endpoint SPIFFE ID.
        endpoint_spiffe_id: SpiffeId,
    },
}

/// `experimental { }` with upstream's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentalSettings {
    /// Time between entry cache reloads (default 5s).
    pub cache_reload_interval: Duration,
    /// Time between full entry cache rebuilds (default 24h).
    pub full_cache_reload_interval: Duration,
    /// Events-based entry cache: on unless `events_based_cache = false` is written.
    pub events_based_cache: bool,
    /// Events older than this are pruned (default 12h).
    pub prune_events_older_than: Duration,
    /// How long to wait for a skipped event (default 15m).
    pub event_timeout: Duration,
    /// Require post-quantum key exchange on TLS.
    pub require_pq_kem: bool,
    /// Add the agent SPIFFE ID as a node selector.
    pub agent_spiffe_id_as_selector: bool,
    /// Developer feature flags.
    pub feature_flags: Vec<String>,
    /// Key type for WIT-SVIDs, when set.
    pub wit_key_type: Option<KeyType>,
    /// Issuer for WIT-SVIDs, when set.
    pub wit_issuer: Option<String>,
    /// OPA policy engine configuration, as written.
    pub auth_opa_policy_engine: Option<Value>,
}

/// `health_checks { }` with defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    /// Serve the HTTP health endpoint.
    pub listener_enabled: bool,
    /// Listen address (default localhost).
    pub bind_address: String,
    /// Listen port (default 80).
    pub bind_port: u16,
    /// Liveness path (default /live).
    pub live_path: String,
    /// Readiness path (default /ready).
    pub ready_path: String,
}

/// A validated configuration: typed values, defaults filled in, plus warnings for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedServerConfig {
    /// `trust_domain`.
    pub trust_domain: TrustDomain,
    /// `bind_address` as written (an IP or a DNS name; brackets around IPv6 removed).
    pub bind_address: String,
    /// `bind_port`.
    pub bind_port: u16,
    /// Admin API socket.
    pub socket_path: PathBuf,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// Log level, lowercase (`info`, `debug`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log file (appended to), when set.
    pub log_file: Option<PathBuf>,
    /// Include source location in log lines.
    pub log_source_location: bool,
    /// X509 CA key type.
    pub ca_key_type: KeyType,
    /// JWT signing key type (default: `ca_key_type`).
    pub jwt_key_type: KeyType,
    /// CA lifetime.
    pub ca_ttl: Duration,
    /// CA subject.
    pub ca_subject: CaSubject,
    /// Default X509-SVID lifetime.
    pub default_x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub default_jwt_svid_ttl: Duration,
    /// Agent SVID lifetime; `None` means `default_x509_svid_ttl`.
    pub agent_ttl: Option<Duration>,
    /// JWT issuer claim, when set.
    pub jwt_issuer: Option<String>,
    /// JWT-SVIDs disabled.
    pub disable_jwt_svids: bool,
    /// Admin SPIFFE IDs (any trust domain, as upstream allows federated admins).
    pub admin_ids: Vec<SpiffeId>,
    /// Audit logging.
    pub audit_log_enabled: bool,
    /// Rate limits.
    pub rate_limit: RateLimit,
    /// Federation settings from the file.
    pub federation: Federation,
    /// Experimental settings.
    pub experimental: ExperimentalSettings,
    /// How long cached attested-node information may be trusted (default 0).
    pub max_attested_node_info_staleness: Duration,
    /// Prune attested nodes expired longer ago than this, when set.
    pub prune_attested_nodes_expired_for: Option<Duration>,
    /// Include trust-on-first-use nodes when pruning.
    pub prune_tofu_nodes: bool,
    /// Nodes pruned per cycle (default 1000).
    pub prune_attested_nodes_batch_size: u32,
    /// Sources whose PROXY protocol v1/v2 headers name the caller on the TCP listener.
    pub proxy_protocol_trusted_cidrs: Vec<crate::endpoints::proxy_protocol::Cidr>,
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

impl ResolvedServerConfig {
    /// `host:port` for the TCP listener, with IPv6 addresses bracketed.
    pub fn bind_host_port(&self) -> String {
        if self.bind_address.contains(':') {
            format!("[{}]:{}", self.bind_address, self.bind_port)
        } else {
            format!("{}:{}", self.bind_address, self.bind_port)
        }
    }
}

/// The longest SVID TTL a CA TTL guarantees (upstream's `MaxSVIDTTLForCATTL`).
pub(crate) fn max_svid_ttl_for_ca_ttl(ca_ttl: Duration) -> Duration {
    (ca_ttl / ACTIVATION_THRESHOLD_DIVISOR).min(ACTIVATION_THRESHOLD_CAP)
}

/// Upstream's `printDuration`: whole seconds, without trailing zero units (`4h`, `1h30m`).
fn print_duration(d: Duration) -> String {
    let mut s = spire_core::duration::format(Duration::from_secs(d.as_secs()));
    if let Some(rest) = s.strip_suffix("m0s") {
        s = format!("{rest}m");
    }
    if let Some(rest) = s.strip_suffix("h0m") {
        s = format!("{rest}h");
    }
    s
}

fn ttl_warning(name: &str, ttl: Duration, ca_ttl: Duration) -> Option<String> {
    if ttl <= max_svid_ttl_for_ca_ttl(ca_ttl) {
        return None;
    }
    let max_for_ca = print_duration(max_svid_ttl_for_ca_ttl(ca_ttl));
    let message = if ttl < ACTIVATION_THRESHOLD_CAP {
        format!(
            "{name} is too high for the configured ca_ttl value. SVIDs with shorter lifetimes \
             may be issued. Please set {name} to {max_for_ca} or less, or the ca_ttl to {} or \
             more, to guarantee the full {name} lifetime when CA rotations are scheduled.",
            print_duration(ttl * ACTIVATION_THRESHOLD_DIVISOR)
        )
    } else if ca_ttl < ACTIVATION_THRESHOLD_CAP * ACTIVATION_THRESHOLD_DIVISOR {
        format!(
            "{name} is too high and the ca_ttl is too low. SVIDs with shorter lifetimes may be \
             issued. Please set {name} to {} or less, and the ca_ttl to {} or more, to \
             guarantee the full {name} lifetime when CA rotations are scheduled.",
            print_duration(ACTIVATION_THRESHOLD_CAP),
            print_duration(ACTIVATION_THRESHOLD_CAP * ACTIVATION_THRESHOLD_DIVISOR)
        )
    } else {
        format!(
            "{name} is too high. SVIDs with shorter lifetimes may be issued. Please set {name} \
             to {max_for_ca} or less to guarantee the full {name} lifetime when CA rotations \
             are scheduled."
        )
    };
    Some(message)
}

impl ResolvedServerConfig {
    /// How the authorized-entry index stays fresh, from `experimental` and
    /// `max_attested_node_info_staleness`.
    ///
    /// With `events_based_cache = false` upstream rebuilds its entry cache from the datastore
    /// every `cache_reload_interval`; so does this index then (a full reload on every poll).
    /// With `true`, and when the key is not set (upstream's default is `false`; ours is the
    /// events-based cache, which costs the datastore far less at scale), the index follows
    /// the change events and reloads everything only every `full_cache_reload_interval`, as
    /// upstream's events-based cache. Skipped events are awaited for `event_timeout`.
    pub fn index_options(&self) -> crate::authorized::IndexOptions {
        let e = &self.experimental;
        crate::authorized::IndexOptions {
            full_reload_interval: if e.events_based_cache {
                e.full_cache_reload_interval
            } else {
                e.cache_reload_interval
            },
            missed_event_timeout: e.event_timeout,
            max_attested_node_info_staleness: self.max_attested_node_info_staleness,
        }
    }
}

/// Names the keys written in blocks upstream never checks (`experimental`, `federation`,
/// `federates_with` and the endpoint profiles, `telemetry` itself): upstream loads such a
/// file and ignores them, so this server loads it too, and says which keys do nothing.
fn warn_ignored_keys(s: &ServerSection, telemetry: &TelemetrySection, warnings: &mut Vec<String>) {
    let mut note = |block: &str, unknown: &BTreeMap<String, Value>| {
        if !unknown.is_empty() {
            let keys: Vec<&str> = unknown.keys().map(String::as_str).collect();
            warnings.push(format!(
                "Unknown configuration in {block} is ignored, as upstream ignores it: {}",
                keys.join(",")
            ));
        }
    };
    note("server.experimental", &s.experimental.unknown);
    note("telemetry", &telemetry.unknown);
    let Some(f) = &s.federation else { return };
    note("server.federation", &f.unknown);
    if let Some(profile) = f.bundle_endpoint.as_ref().and_then(|b| b.profile.as_ref()) {
        note(
            "server.federation.bundle_endpoint.profile",
            &profile.unknown,
        );
        if let Some(web) = &profile.https_web {
            note(
                "server.federation.bundle_endpoint.profile.https_web",
                &web.unknown,
            );
            if let Some(files) = &web.serving_cert_file {
                note(
                    "server.federation.bundle_endpoint.profile.https_web.serving_cert_file",
                    &files.unknown,
                );
            }
        }
        if let Some(spiffe) = &profile.https_spiffe {
            note(
                "server.federation.bundle_endpoint.profile.https_spiffe",
                &spiffe.unknown,
            );
        }
    }
    for (td, fw) in &f.federates_with {
        let block = format!("server.federation.federates_with {td:?}");
        note(&block, &fw.unknown);
        if let Some(p) = &fw.bundle_endpoint_profile {
            note(&format!("{block}.bundle_endpoint_profile"), &p.unknown);
            if let Some(spiffe) = &p.https_spiffe {
                note(
                    &format!("{block}.bundle_endpoint_profile.https_spiffe"),
                    &spiffe.unknown,
                );
            }
            if let Some(web) = &p.https_web {
                note(
                    &format!("{block}.bundle_endpoint_profile.https_web"),
                    &web.unknown,
                );
            }
        }
    }
}

/// Keys upstream acts on that this server does not implement: refused at start, naming the
/// key and why, instead of being accepted and ignored.
fn refuse_unsupported(file: &str, s: &ServerSection) -> Result<(), ConfigError> {
    let refuse = |key: &str, why: &str| Err(ConfigError::invalid(file, key, why.to_owned()));
    if s.profiling_enabled == Some(true) {
        return refuse(
            "server.profiling_enabled",
            "Go pprof profiling is not available in this server; remove profiling_enabled \
             (profiling_port, profiling_freq and profiling_names are only read when it is true)",
        );
    }
    let e = &s.experimental;
    if e.auth_opa_policy_engine.is_some() {
        return refuse(
            "server.experimental.auth_opa_policy_engine",
            "custom OPA authorization policies are not supported; this server enforces \
             upstream's default policy. Remove the block rather than run with a policy that \
             would be ignored",
        );
    }
    if e.agent_spiffe_id_as_selector == Some(true) {
        return refuse(
            "server.experimental.agent_spiffe_id_as_selector",
            "adding the agent's SPIFFE ID as a node selector is not supported yet; remove the \
             key and register entries under the agent's ID as parent instead",
        );
    }
    if e.wit_key_type.is_some() || e.wit_issuer.is_some() {
        let key = if e.wit_key_type.is_some() {
            "server.experimental.wit_key_type"
        } else {
            "server.experimental.wit_issuer"
        };
        return refuse(
            key,
            "WIT-SVIDs are not supported by this server; remove the key",
        );
    }
    Ok(())
}

/// Parses a key type name case-insensitively, as upstream does.
fn key_type(file: &str, key: &str, value: &str) -> Result<KeyType, ConfigError> {
    value.to_ascii_lowercase().parse().map_err(|_| {
        ConfigError::invalid(
            file,
            key,
            format!(
                "key type {value:?} is unknown; must be one of [rsa-2048, rsa-4096, ec-p256, ec-p384]"
            ),
        )
    })
}

fn nonzero(file: &str, key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(
            file,
            key,
            "must be greater than zero; write a duration such as \"1h\" or remove the key for the default",
        ));
    }
    Ok(value)
}

impl ServerConfig {
    /// Validates the configuration and fills in upstream's defaults.
    ///
    /// Errors name the key and what fixes it. Conditions upstream only warns about (TTLs the
    /// CA lifetime cannot guarantee, deprecated keys, experimental features) come back in
    /// `warnings`.
    pub fn resolve(&self) -> Result<ResolvedServerConfig, ConfigError> {
        let file = self.source.as_str();
        let Some(s) = self.server.as_ref() else {
            return Err(ConfigError::invalid(
                file,
                "server",
                "server section must be configured: add a server { trust_domain = ... } block",
            ));
        };
        if self.plugins.is_none() {
            return Err(ConfigError::invalid(
                file,
                "plugins",
                "plugins section must be configured: add a plugins { } block with a DataStore, \
                 a KeyManager and a NodeAttestor",
            ));
        }
        let mut warnings = Vec::new();
        warn_ignored_keys(s, &self.telemetry, &mut warnings);

        let trust_domain = resolve_trust_domain(file, s)?;
        let bind_address = s
            .bind_address
            .clone()
            .unwrap_or_else(|| DEFAULT_BIND_ADDRESS.to_owned())
            .trim_matches(['[', ']'])
            .to_owned();
        if bind_address.trim().is_empty() {
            return Err(ConfigError::invalid(
                file,
                "server.bind_address",
                "bind_address must be configured: write an IP address such as \"0.0.0.0\"",
            ));
        }
        let bind_port = s.bind_port.unwrap_or(DEFAULT_BIND_PORT);
        if bind_port == 0 {
            return Err(ConfigError::invalid(
                file,
                "server.bind_port",
                "bind_port must be configured: use a port from 1 to 65535 (default 8081)",
            ));
        }
        let Some(data_dir) = s.data_dir.clone() else {
            return Err(ConfigError::invalid(
                file,
                "server.data_dir",
                "data_dir must be configured: set it to a directory the server may write, \
                 e.g. data_dir = \"./.data\", or pass -dataDir",
            ));
        };
        if s.experimental.named_pipe_name.is_some() && !cfg!(windows) {
            return Err(ConfigError::invalid(
                file,
                "server.experimental.named_pipe_name",
                "named_pipe_name is not supported on this platform; use socket_path instead",
            ));
        }
        let socket_path = PathBuf::from(
            s.socket_path
                .clone()
                .unwrap_or_else(|| DEFAULT_SOCKET_PATH.to_owned()),
        );

        let (log_level, log_format) = resolve_logging(
            file,
            "server",
            s.log_level.as_deref(),
            s.log_format.as_deref(),
        )?;

        let ca_key_type = match &s.ca_key_type {
            Some(v) => key_type(file, "server.ca_key_type", v)?,
            None => KeyType::EcP256,
        };
        let jwt_key_type = match &s.jwt_key_type {
            Some(v) => key_type(file, "server.jwt_key_type", v)?,
            None => ca_key_type,
        };

        let ca_ttl = nonzero(file, "server.ca_ttl", s.ca_ttl.unwrap_or(DEFAULT_CA_TTL))?;
        let default_x509_svid_ttl = nonzero(
            file,
            "server.default_x509_svid_ttl",
            s.default_x509_svid_ttl.unwrap_or(DEFAULT_X509_SVID_TTL),
        )?;
        let default_jwt_svid_ttl = nonzero(
            file,
            "server.default_jwt_svid_ttl",
            s.default_jwt_svid_ttl.unwrap_or(DEFAULT_JWT_SVID_TTL),
        )?;
        let agent_ttl = s.agent_ttl.filter(|d| !d.is_zero());
        for (name, ttl) in [
            ("default_x509_svid_ttl", default_x509_svid_ttl),
            ("default_jwt_svid_ttl", default_jwt_svid_ttl),
        ] {
            warnings.extend(ttl_warning(name, ttl, ca_ttl));
        }

        let ca_subject = match &s.ca_subject {
            None => CaSubject::default(),
            Some(sub) => {
                let common_name = sub.common_name.clone().unwrap_or_default();
                if sub.country.is_empty() && sub.organization.is_empty() && common_name.is_empty() {
                    warnings.push(
                        "ca_subject configurable is set but empty; the default will be used"
                            .to_owned(),
                    );
                    CaSubject::default()
                } else {
                    CaSubject {
                        country: sub.country.clone(),
                        organization: sub.organization.clone(),
                        common_name,
                    }
                }
            }
        };

        let admin_ids = s
            .admin_ids
            .iter()
            .map(|id| {
                SpiffeId::parse(id).map_err(|e| {
                    ConfigError::invalid(
                        file,
                        "server.admin_ids",
                        format!(
                            "could not parse admin ID {id:?}: {e}; write a SPIFFE ID such as \
                             \"spiffe://example.org/admin\""
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        if s.use_legacy_downstream_x509_ca_ttl.is_some() {
            // Upstream v1.13+ has no such key and fails with "unknown configuration
            // detected"; named here so the operator knows what replaced it.
            return Err(ConfigError::invalid(
                file,
                "server.use_legacy_downstream_x509_ca_ttl",
                "unknown configuration detected: upstream SPIRE removed this key in v1.13 \
                 (deprecated since v1.11); a downstream X509 CA's lifetime follows the TTL the \
                 downstream server asks for, never the registration entry's. Remove the key",
            ));
        }

        let federation = match &s.federation {
            None => Federation::default(),
            Some(f) => resolve_federation(file, f, &data_dir, &mut warnings)?,
        };
        refuse_unsupported(file, s)?;
        let experimental = resolve_experimental(file, &s.experimental, &mut warnings)?;

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

        Ok(ResolvedServerConfig {
            trust_domain,
            bind_address,
            bind_port,
            socket_path,
            data_dir: PathBuf::from(data_dir),
            log_level,
            log_format,
            log_file: s.log_file.clone().map(PathBuf::from),
            log_source_location: s.log_source_location.unwrap_or(false),
            ca_key_type,
            jwt_key_type,
            ca_ttl,
            ca_subject,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_ttl,
            jwt_issuer: s.jwt_issuer.clone(),
            disable_jwt_svids: s.disable_jwt_svids.unwrap_or(false),
            admin_ids,
            audit_log_enabled: s.audit_log_enabled.unwrap_or(false),
            rate_limit: RateLimit {
                attestation: s.ratelimit.attestation.unwrap_or(true),
                signing: s.ratelimit.signing.unwrap_or(true),
            },
            federation,
            experimental,
            max_attested_node_info_staleness: s
                .max_attested_node_info_staleness
                .unwrap_or(Duration::ZERO),
            prune_attested_nodes_expired_for: s
                .prune_attested_nodes_expired_for
                .filter(|d| !d.is_zero()),
            prune_tofu_nodes: s.prune_tofu_nodes.unwrap_or(false),
            prune_attested_nodes_batch_size: s.prune_attested_nodes_batch_size.unwrap_or(1000),
            proxy_protocol_trusted_cidrs: s
                .proxy_protocol_trusted_cidrs
                .iter()
                .map(|cidr| {
                    cidr.parse().map_err(|e| {
                        ConfigError::invalid(
                            file,
                            "server.proxy_protocol_trusted_cidrs",
                            format!(
                                "invalid proxy_protocol_trusted_cidrs value {cidr:?}: {e}; \
                                 write networks such as \"10.0.0.0/8\""
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            profiling_enabled: s.profiling_enabled.unwrap_or(false),
            profiling_port: s.profiling_port.unwrap_or(0),
            profiling_freq: s.profiling_freq.unwrap_or(0),
            profiling_names: s.profiling_names.clone(),
            health_checks,
            telemetry: self.telemetry.clone(),
            warnings,
        })
    }
}

fn resolve_trust_domain(file: &str, s: &ServerSection) -> Result<TrustDomain, ConfigError> {
    let Some(td) = s.trust_domain.as_deref() else {
        return Err(ConfigError::invalid(
            file,
            "server.trust_domain",
            "trust_domain must be configured: set trust_domain = \"example.org\" in the server \
             block, or pass -trustDomain",
        ));
    };
    TrustDomain::new(td).map_err(|e| {
        ConfigError::invalid(
            file,
            "server.trust_domain",
            format!(
                "could not parse trust_domain {td:?}: {e}; write a name such as \"example.org\""
            ),
        )
    })
}

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
    if e.event_timeout.is_some() && e.sql_transaction_timeout.is_some() {
        return Err(ConfigError::invalid(
            file,
            "server.experimental.sql_transaction_timeout",
            "both experimental sql_transaction_timeout and event_timeout set, only set event_timeout",
        ));
    }
    if e.sql_transaction_timeout.is_some() {
        warnings.push(
            "experimental.sql_transaction_timeout is deprecated, use experimental.event_timeout \
             instead"
                .to_owned(),
        );
    }
    spire_core::config::feature_flags::check(
        file,
        "server.experimental.feature_flags",
        "server",
        &e.feature_flags,
        warnings,
    )?;
    let wit_key_type = e
        .wit_key_type
        .as_deref()
        .map(|v| key_type(file, "server.experimental.wit_key_type", v))
        .transpose()?;
    Ok(ExperimentalSettings {
        cache_reload_interval: e.cache_reload_interval.unwrap_or(Duration::from_secs(5)),
        full_cache_reload_interval: e
            .full_cache_reload_interval
            .unwrap_or(Duration::from_secs(24 * 3600)),
        events_based_cache: e.events_based_cache.unwrap_or(true),
        prune_events_older_than: e
            .prune_events_older_than
            .unwrap_or(Duration::from_secs(12 * 3600)),
        event_timeout: e
            .event_timeout
            .or(e.sql_transaction_timeout)
            .unwrap_or(Duration::from_secs(15 * 60)),
        require_pq_kem: e.require_pq_kem.unwrap_or(false),
        agent_spiffe_id_as_selector: e.agent_spiffe_id_as_selector.unwrap_or(false),
        feature_flags: e.feature_flags.clone(),
        wit_key_type,
        wit_issuer: e.wit_issuer.clone(),
        auth_opa_policy_engine: e.auth_opa_policy_engine.clone(),
    })
}

fn resolve_federation(
    file: &str,
    f: &FederationSection,
    data_dir: &str,
    warnings: &mut Vec<String>,
) -> Result<Federation, ConfigError> {
    let bundle_endpoint = f
        .bundle_endpoint
        .as_ref()
        .map(|be| resolve_bundle_endpoint(file, be, data_dir, warnings))
        .transpose()?;
    let mut federates_with = BTreeMap::new();
    for (name, fw) in &f.federates_with {
        let key = format!("server.federation.federates_with[{name:?}]");
        let td = TrustDomain::new(name).map_err(|e| {
            ConfigError::invalid(
                file,
                &key,
                format!("{name:?} is not a valid trust domain: {e}"),
            )
        })?;
        federates_with.insert(td, resolve_federates_with(file, &key, fw)?);
    }
    Ok(Federation {
        bundle_endpoint,
        federates_with,
    })
}

fn resolve_bundle_endpoint(
    file: &str,
    be: &BundleEndpointSection,
    data_dir: &str,
    warnings: &mut Vec<String>,
) -> Result<BundleEndpoint, ConfigError> {
    const KEY: &str = "server.federation.bundle_endpoint";
    let refresh_hint = be.refresh_hint.unwrap_or(DEFAULT_REFRESH_HINT);
    if refresh_hint >= Duration::from_secs(24 * 3600) {
        warnings.push(
            "Bundle endpoint refresh hint set to a high value. To cover the case of unscheduled \
             trust bundle updates, it's recommended to have a smaller value, e.g. 5m"
                .to_owned(),
        );
    }
    if refresh_hint < MINIMUM_REFRESH_HINT {
        warnings.push(
            "Bundle endpoint refresh hint set too low. SPIRE will not refresh more often than 1 minute"
                .to_owned(),
        );
    }
    // Upstream requires `email` only in the deprecated top-level form; an ACME account
    // without a contact is valid in the https_web profile.
    let acme_profile = |acme: &super::AcmeSection, key: &str, email_required: bool| {
        let domain_name = acme.domain_name.clone().ok_or_else(|| {
            ConfigError::invalid(
                file,
                format!("{key}.domain_name"),
                "domain_name must be configured",
            )
        })?;
        let email = match acme.email.clone() {
            Some(email) => email,
            None if !email_required => String::new(),
            None => {
                return Err(ConfigError::invalid(
                    file,
                    format!("{key}.email"),
                    "email must be configured",
                ));
            }
        };
        Ok::<_, ConfigError>(BundleEndpointProfile::HttpsWebAcme {
            directory_url: acme
                .directory_url
                .clone()
                .unwrap_or_else(|| crate::federation::acme::LETS_ENCRYPT_DIRECTORY_URL.to_owned()),
            domain_name,
            email,
            tos_accepted: acme.tos_accepted.unwrap_or(false),
            cache_dir: PathBuf::from(data_dir).join("bundle-acme"),
        })
    };
    let profile = match (&be.acme, &be.profile) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                KEY,
                "either bundle endpoint 'acme' or 'profile' can be set, but not both",
            ));
        }
        (Some(acme), None) => {
            warnings.push(
                "ACME configuration within the bundle_endpoint is deprecated. Please use ACME \
                 configuration as part of the https_web profile instead."
                    .to_owned(),
            );
            acme_profile(acme, &format!("{KEY}.acme"), true)?
        }
        (None, None) => {
            warnings.push(
                "Bundle endpoint is configured but has no profile set, using https_spiffe as \
                 default; please configure a profile explicitly. This will be fatal in a future \
                 release."
                    .to_owned(),
            );
            BundleEndpointProfile::HttpsSpiffe
        }
        (None, Some(p)) => match (&p.https_web, &p.https_spiffe) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    file,
                    format!("{KEY}.profile"),
                    "exactly one bundle endpoint profile is expected",
                ));
            }
            (None, Some(_)) => BundleEndpointProfile::HttpsSpiffe,
            (Some(web), None) => match (&web.acme, &web.serving_cert_file) {
                (Some(acme), None) => {
                    acme_profile(acme, &format!("{KEY}.profile.https_web.acme"), false)?
                }
                (None, Some(scf)) => {
                    let key = format!("{KEY}.profile.https_web.serving_cert_file");
                    let cert = scf.cert_file_path.clone().ok_or_else(|| {
                        ConfigError::invalid(file, &key, "cert_file_path must be configured")
                    })?;
                    let key_path = scf.key_file_path.clone().ok_or_else(|| {
                        ConfigError::invalid(file, &key, "key_file_path must be configured")
                    })?;
                    BundleEndpointProfile::HttpsWebServingCert {
                        cert_file_path: PathBuf::from(cert),
                        key_file_path: PathBuf::from(key_path),
                        file_sync_interval: scf
                            .file_sync_interval
                            .filter(|d| !d.is_zero())
                            .unwrap_or(Duration::from_secs(3600)),
                    }
                }
                _ => {
                    return Err(ConfigError::invalid(
                        file,
                        format!("{KEY}.profile.https_web"),
                        "malformed https_web profile configuration: 'acme' or \
                         'serving_cert_file' is required (not both)",
                    ));
                }
            },
            (None, None) => {
                return Err(ConfigError::invalid(
                    file,
                    format!("{KEY}.profile"),
                    "unknown bundle endpoint profile configured; current supported profiles \
                     are \"https_spiffe\" and \"https_web\"",
                ));
            }
        },
    };
    Ok(BundleEndpoint {
        address: be.address.clone().unwrap_or_else(|| "0.0.0.0".to_owned()),
        port: be.port.unwrap_or(0),
        refresh_hint,
        profile,
    })
}

fn resolve_federates_with(
    file: &str,
    key: &str,
    fw: &FederatesWithSection,
) -> Result<FederatesWith, ConfigError> {
    let Some(url) = fw.bundle_endpoint_url.clone() else {
        return Err(ConfigError::invalid(
            file,
            format!("{key}.bundle_endpoint_url"),
            "bundle_endpoint_url must be configured",
        ));
    };
    if !url.to_ascii_lowercase().starts_with("https://") {
        return Err(ConfigError::invalid(
            file,
            format!("{key}.bundle_endpoint_url"),
            format!("bundle_endpoint_url must use the HTTPS protocol; URL found: {url:?}"),
        ));
    }
    let profile_key = format!("{key}.bundle_endpoint_profile");
    let profile = match &fw.bundle_endpoint_profile {
        None => {
            return Err(ConfigError::invalid(
                file,
                &profile_key,
                "missing bundle endpoint configuration: add bundle_endpoint_profile \
                 \"https_spiffe\" { endpoint_spiffe_id = ... } or bundle_endpoint_profile \
                 \"https_web\" {}",
            ));
        }
        Some(p) => match (&p.https_spiffe, &p.https_web) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    file,
                    &profile_key,
                    "exactly one bundle endpoint profile is expected",
                ));
            }
            (None, Some(_)) => FederatesWithProfile::HttpsWeb,
            (Some(sp), None) => {
                let id = sp.endpoint_spiffe_id.as_deref().unwrap_or_default();
                let endpoint_spiffe_id = SpiffeId::parse(id).map_err(|e| {
                    ConfigError::invalid(
                        file,
                        format!("{profile_key}.https_spiffe.endpoint_spiffe_id"),
                        format!("could not get endpoint SPIFFE ID from {id:?}: {e}"),
                    )
                })?;
                FederatesWithProfile::HttpsSpiffe { endpoint_spiffe_id }
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    file,
                    &profile_key,
                    "no bundle endpoint profile defined; current supported profiles are \
                     \"https_spiffe\" and \"https_web\"",
                ));
            }
        },
    };
    Ok(FederatesWith {
        bundle_endpoint_url: url,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules_match_upstream() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(max_svid_ttl_for_ca_ttl(day), Duration::from_secs(4 * 3600));
        assert_eq!(max_svid_ttl_for_ca_ttl(day * 365), ACTIVATION_THRESHOLD_CAP);
        assert!(ttl_warning("default_x509_svid_ttl", Duration::from_secs(3600), day).is_none());
        let w = ttl_warning("default_x509_svid_ttl", Duration::from_secs(5 * 3600), day).unwrap();
        assert!(w.contains("set default_x509_svid_ttl to 4h or less"), "{w}");
        assert!(w.contains("ca_ttl to 30h or more"), "{w}");
    }

    #[test]
    fn durations_print_like_upstream() {
        assert_eq!(print_duration(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(print_duration(Duration::from_secs(90 * 60)), "1h30m");
        assert_eq!(print_duration(Duration::from_secs(50)), "50s");
        assert_eq!(print_duration(Duration::from_secs(600)), "10m");
    }
}
