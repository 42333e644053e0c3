//! Config blocks that `server.conf` and `agent.conf` share, with the same keys upstream's
//! common packages give both binaries: `telemetry { }` and `health_checks { }`.

use serde::Deserialize;

use super::{ConfigError, de};

/// Log levels upstream (logrus) accepts, case-insensitively.
const LOG_LEVELS: [&str; 8] = [
    "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace",
];

/// `log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// No `log_format`: upstream's default text lines, times to the second.
    #[default]
    Default,
    /// `text`: text lines with nanosecond times.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The config spelling: empty (the default), `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "",
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// `log_level` (lower-cased, default `info`) and `log_format` (default: upstream's default text) of the `block`
/// (`server` or `agent`) in `file`, refused with the key's name when upstream would refuse them.
pub fn resolve_logging(
    file: &str,
    block: &str,
    log_level: Option<&str>,
    log_format: Option<&str>,
) -> Result<(String, LogFormat), ConfigError> {
    let level = log_level.unwrap_or("info").to_ascii_lowercase();
    if !LOG_LEVELS.contains(&level.as_str()) {
        return Err(ConfigError::invalid(
            file,
            format!("{block}.log_level"),
            format!(
                "unknown log level {:?}; use DEBUG, INFO, WARN or ERROR",
                log_level.unwrap_or_default()
            ),
        ));
    }
    let format = match log_format.unwrap_or_default().to_ascii_lowercase().as_str() {
        "" => LogFormat::Default,
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                file,
                format!("{block}.log_format"),
                format!("unknown logger format: {other:?}; use \"text\" or \"json\""),
            ));
        }
    };
    Ok((level, format))
}

/// `telemetry { }`: the sinks and labels of upstream's block; `spire_common::telemetry` acts on it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TelemetrySection {
    /// Keys upstream does not know directly in `telemetry { }`. Upstream never checks this
    /// block (only its sinks), so they load there; kept to be named in a warning.
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
    /// `Prometheus { host port tls {} }`.
    #[serde(rename = "Prometheus", default, deserialize_with = "de::opt_block")]
    pub prometheus: Option<PrometheusSection>,
    /// `DogStatsd = [{ address }]`.
    #[serde(rename = "DogStatsd", default, deserialize_with = "de::block_list")]
    pub dog_statsd: Vec<AddressSection>,
    /// `Statsd = [{ address }]`.
    #[serde(rename = "Statsd", default, deserialize_with = "de::block_list")]
    pub statsd: Vec<AddressSection>,
    /// `M3 = [{ address env }]`.
    #[serde(rename = "M3", default, deserialize_with = "de::block_list")]
    pub m3: Vec<M3Section>,
    /// `InMem { }`.
    #[serde(rename = "InMem", default, deserialize_with = "de::opt_block")]
    pub in_mem: Option<InMemSection>,
    /// `MetricPrefix`.
    #[serde(rename = "MetricPrefix", default, deserialize_with = "de::opt_string")]
    pub metric_prefix: Option<String>,
    /// `EnableTrustDomainLabel`.
    #[serde(
        rename = "EnableTrustDomainLabel",
        default,
        deserialize_with = "de::opt_bool"
    )]
    pub enable_trust_domain_label: Option<bool>,
    /// `EnableHostnameLabel`.
    #[serde(
        rename = "EnableHostnameLabel",
        default,
        deserialize_with = "de::opt_bool"
    )]
    pub enable_hostname_label: Option<bool>,
    /// `AllowedPrefixes`.
    #[serde(
        rename = "AllowedPrefixes",
        default,
        deserialize_with = "de::string_list"
    )]
    pub allowed_prefixes: Vec<String>,
    /// `BlockedPrefixes`.
    #[serde(
        rename = "BlockedPrefixes",
        default,
        deserialize_with = "de::string_list"
    )]
    pub blocked_prefixes: Vec<String>,
    /// `AllowedLabels`.
    #[serde(
        rename = "AllowedLabels",
        default,
        deserialize_with = "de::string_list"
    )]
    pub allowed_labels: Vec<String>,
    /// `BlockedLabels`.
    #[serde(
        rename = "BlockedLabels",
        default,
        deserialize_with = "de::string_list"
    )]
    pub blocked_labels: Vec<String>,
}

/// `Prometheus { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSection {
    /// `host`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub host: Option<String>,
    /// `port`.
    #[serde(default, deserialize_with = "de::opt_port")]
    pub port: Option<u16>,
    /// `tls { }`.
    #[serde(default, deserialize_with = "de::opt_block")]
    pub tls: Option<PrometheusTlsSection>,
}

/// `Prometheus { tls { } }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusTlsSection {
    /// `cert_file`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub cert_file: Option<String>,
    /// `key_file`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub key_file: Option<String>,
    /// `client_ca_file` (upstream's telemetry doc writes `ca_file`; both are accepted).
    #[serde(default, alias = "ca_file", deserialize_with = "de::opt_string")]
    pub client_ca_file: Option<String>,
    /// `use_spire_svid`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub use_spire_svid: Option<bool>,
    /// `authorized_spiffe_ids`.
    #[serde(default, deserialize_with = "de::string_list")]
    pub authorized_spiffe_ids: Vec<String>,
}

/// `{ address }` of DogStatsd and Statsd.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSection {
    /// `address`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub address: Option<String>,
}

/// `{ address env }` of M3.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct M3Section {
    /// `address`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub address: Option<String>,
    /// `env`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub env: Option<String>,
}

/// `InMem { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InMemSection {
    /// `enabled` (accepted from older configs).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enabled: Option<bool>,
}

/// `health_checks { }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksSection {
    /// `listener_enabled`.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub listener_enabled: Option<bool>,
    /// `bind_address` (default localhost).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub bind_address: Option<String>,
    /// `bind_port` (default 80); upstream writes it as a string.
    #[serde(default, deserialize_with = "de::opt_port")]
    pub bind_port: Option<u16>,
    /// `live_path` (default /live).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub live_path: Option<String>,
    /// `ready_path` (default /ready).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub ready_path: Option<String>,
}
