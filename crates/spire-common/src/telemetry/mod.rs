//! The `telemetry { }` block: metrics with upstream's names and labels, exported to
//! Prometheus (`Prometheus { host port }`: every path of that listener answers in the text
//! exposition format, as upstream's does).
//!
//! Names are upstream's (`names`), with the `MetricPrefix` (default `spire_server` /
//! `spire_agent`) in front; labels are the call's own (`status` for RPCs), then
//! `trust_domain` with `EnableTrustDomainLabel`, then `host` unless `EnableHostnameLabel =
//! false`. `AllowedPrefixes`/`BlockedPrefixes` match the longest prefix of the dotted key
//! (prefix included), `AllowedLabels`/`BlockedLabels` drop labels by name, as go-metrics'
//! filters do. Beyond upstream, latencies (`…_elapsed_time`, milliseconds) are Prometheus
//! histograms rather than summaries, so they aggregate across servers.
//!
//! The statsd, DogStatsD, M3 and InMem sinks are refused at start with the block named
//! (an accepted block that sends nothing would hide a monitoring gap).

pub mod names;
pub mod rpc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use spire_core::config::sections::TelemetrySection;
use tokio_util::sync::CancellationToken;

/// Histogram buckets of the `…_elapsed_time` latencies, in milliseconds.
const LATENCY_BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// How often the uptime gauge is set, as upstream.
const UPTIME_INTERVAL: Duration = Duration::from_secs(10);

/// Why the telemetry block cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A sink this build does not have.
    #[error(
        "telemetry.{0} is not supported by this SPIRE build: remove the block, or export through telemetry.Prometheus"
    )]
    UnsupportedSink(&'static str),
    /// A Prometheus block without a port.
    #[error("telemetry.Prometheus needs a port")]
    NoPrometheusPort,
    /// The Prometheus listener could not bind.
    #[error("unable to listen for Prometheus on {address}: {source}")]
    Bind {
        /// `host:port`.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exporter refused its settings.
    #[error("cannot set up the Prometheus exporter: {0}")]
    Exporter(String),
}

/// The Prometheus listener's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusListener {
    /// `host` (default `localhost`).
    pub host: String,
    /// `port`.
    pub port: u16,
}

/// The validated `telemetry` block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TelemetryConfig {
    /// `Prometheus { }`, when present.
    pub prometheus: Option<PrometheusListener>,
    /// The first key part of every metric (`MetricPrefix`, or the service name).
    pub prefix: String,
    /// The `trust_domain` label's value (sanitised), with `EnableTrustDomainLabel`.
    pub trust_domain_label: Option<String>,
    /// The `host` label's value, unless `EnableHostnameLabel = false`.
    pub host_label: Option<String>,
    /// `AllowedPrefixes`.
    pub allowed_prefixes: Vec<String>,
    /// `BlockedPrefixes`.
    pub blocked_prefixes: Vec<String>,
    /// `AllowedLabels`.
    pub allowed_labels: Vec<String>,
    /// `BlockedLabels`.
    pub blocked_labels: Vec<String>,
}

impl TelemetryConfig {
    /// Validates `section` for `service` (`spire_server` or `spire_agent`) of
    /// `trust_domain`; sinks this build lacks are refused by name.
    pub fn from_section(
        section: &TelemetrySection,
        service: &str,
        trust_domain: &str,
    ) -> Result<Self, TelemetryError> {
        if !section.statsd.is_empty() {
            return Err(TelemetryError::UnsupportedSink("Statsd"));
        }
        if !section.dog_statsd.is_empty() {
            return Err(TelemetryError::UnsupportedSink("DogStatsd"));
        }
        if !section.m3.is_empty() {
            return Err(TelemetryError::UnsupportedSink("M3"));
        }
        if section.in_mem.is_some() {
            return Err(TelemetryError::UnsupportedSink("InMem"));
        }
        let prometheus = match &section.prometheus {
            None => None,
            Some(p) if p.tls.is_some() => {
                return Err(TelemetryError::UnsupportedSink("Prometheus.tls"));
            }
            Some(p) => Some(PrometheusListener {
                host: p
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".to_owned()),
                port: p.port.ok_or(TelemetryError::NoPrometheusPort)?,
            }),
        };
        let prefix = section
            .metric_prefix
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| service.to_owned());
        Ok(Self {
            prometheus,
            prefix,
            trust_domain_label: section
                .enable_trust_domain_label
                .unwrap_or(false)
                .then(|| names::sanitize_label(trust_domain)),
            host_label: section.enable_hostname_label.unwrap_or(true).then(hostname),
            allowed_prefixes: section.allowed_prefixes.clone(),
            blocked_prefixes: section.blocked_prefixes.clone(),
            allowed_labels: section.allowed_labels.clone(),
            blocked_labels: section.blocked_labels.clone(),
        })
    }
}

/// The host's name as Go's `os.Hostname` reads it on Linux.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

struct Inner {
    config: TelemetryConfig,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

/// Where metrics go. Cloning shares the sinks; `Metrics::default()` records nothing (no
/// sink configured), so code can always emit.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Metrics")
            .field(&self.0.as_ref().map(|i| &i.config))
            .finish()
    }
}

/// The metadata every registration carries (the exporter ignores it).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// Metrics for `config`; records nothing when it has no sink.
    pub fn new(config: TelemetryConfig) -> Result<Self, TelemetryError> {
        if config.prometheus.is_none() {
            return Ok(Self::default());
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS_MS)
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?
            .build_recorder();
        let handle = recorder.handle();
        Ok(Self(Some(Arc::new(Inner {
            config,
            recorder,
            handle,
        }))))
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The registration key of `key` with `labels`, or `None` when the metric is filtered out.
    fn key(inner: &Inner, key: &[&str], labels: &[(&str, String)]) -> Option<Key> {
        let c = &inner.config;
        // Every RPC comes through here: the dotted name is only built when a prefix filter
        // needs it.
        if !(c.allowed_prefixes.is_empty() && c.blocked_prefixes.is_empty()) {
            let dotted = std::iter::once(c.prefix.as_str())
                .chain(key.iter().copied())
                .collect::<Vec<_>>()
                .join(".");
            if !allowed(&dotted, &c.allowed_prefixes, &c.blocked_prefixes) {
                return None;
            }
        }
        let mut all: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(names::sanitize_label(k), names::sanitize_label(v)))
            .collect();
        if let Some(td) = &c.trust_domain_label {
            all.push(Label::new("trust_domain", td.clone()));
        }
        if let Some(host) = &c.host_label {
            all.push(Label::new("host", host.clone()));
        }
        all.retain(|l| {
            !c.blocked_labels.iter().any(|b| b == l.key())
                && (c.allowed_labels.is_empty() || c.allowed_labels.iter().any(|a| a == l.key()))
        });
        Some(Key::from_parts(names::prometheus_name(&c.prefix, key), all))
    }

    /// Adds `value` to the counter `key`.
    pub fn incr_counter(&self, key: &[&str], labels: &[(&str, String)], value: u64) {
        if let Some(inner) = &self.0
            && let Some(k) = Self::key(inner, key, labels)
        {
            inner
                .recorder
                .register_counter(&k, &METADATA)
                .increment(value);
        }
    }

    /// Sets the gauge `key`.
    pub fn set_gauge(&self, key: &[&str], labels: &[(&str, String)], value: f64) {
        if let Some(inner) = &self.0
            && let Some(k) = Self::key(inner, key, labels)
        {
            inner.recorder.register_gauge(&k, &METADATA).set(value);
        }
    }

    /// Records `value` in the histogram `key`.
    pub fn add_sample(&self, key: &[&str], labels: &[(&str, String)], value: f64) {
        if let Some(inner) = &self.0
            && let Some(k) = Self::key(inner, key, labels)
        {
            inner
                .recorder
                .register_histogram(&k, &METADATA)
                .record(value);
        }
    }

    /// Records a finished call as upstream's call counters do: counter `key` +1 and the
    /// latency since `started` in `key` + `elapsed_time` (ms), both labelled with
    /// `status` (the gRPC code name, `OK` on success) and `labels`.
    pub fn record_call(
        &self,
        key: &[&str],
        labels: &[(&str, String)],
        status: &str,
        started: Instant,
    ) {
        if self.0.is_none() {
            return;
        }
        let mut all = labels.to_vec();
        all.push(("status", status.to_owned()));
        self.incr_counter(key, &all, 1);
        let mut elapsed_key = key.to_vec();
        elapsed_key.push("elapsed_time");
        self.add_sample(&elapsed_key, &all, started.elapsed().as_secs_f64() * 1000.0);
    }

    /// The Prometheus text exposition of everything recorded, when Prometheus is on.
    pub fn prometheus_text(&self) -> Option<String> {
        self.0.as_ref().map(|inner| inner.handle.render())
    }
}

/// go-metrics' prefix filter: the longest matching allowed or blocked prefix decides; no
/// match allows.
fn allowed(dotted: &str, allowed: &[String], blocked: &[String]) -> bool {
    let longest = |list: &[String]| {
        list.iter()
            .filter(|p| dotted.starts_with(p.as_str()))
            .map(String::len)
            .max()
    };
    match (longest(allowed), longest(blocked)) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

/// Serves the Prometheus text exposition on every path of `listener` until `cancel` fires.
pub async fn serve_prometheus(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new().fallback(move || {
        let metrics = metrics.clone();
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics.prometheus_text().unwrap_or_default(),
            )
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

/// Binds the Prometheus listener of `config`, if any (`localhost` and other names resolve).
pub async fn bind_prometheus(
    config: &TelemetryConfig,
) -> Result<Option<tokio::net::TcpListener>, TelemetryError> {
    let Some(p) = &config.prometheus else {
        return Ok(None);
    };
    if p.host != "localhost" {
        tracing::warn!(
            host = %p.host,
            "Agent or server is configured to accept remote network connections for Prometheus \
             scraping; ensure that the port is protected"
        );
    }
    let listener = tokio::net::TcpListener::bind((p.host.as_str(), p.port))
        .await
        .map_err(|source| TelemetryError::Bind {
            address: format!("{}:{}", p.host, p.port),
            source,
        })?;
    tracing::info!(host = %p.host, port = p.port, "Starting prometheus exporter");
    Ok(Some(listener))
}

/// Upstream's process gauges: `started` (1, labelled `version` and `trust_domain_id`) once,
/// and `uptime_in_ms` every 10 seconds, until `cancel` fires.
pub async fn report_process_gauges(
    metrics: Metrics,
    version: &'static str,
    trust_domain: String,
    cancel: CancellationToken,
) {
    if !metrics.enabled() {
        return;
    }
    metrics.set_gauge(
        &["started"],
        &[
            ("version", version.to_owned()),
            ("trust_domain_id", trust_domain),
        ],
        1.0,
    );
    let started = Instant::now();
    loop {
        metrics.set_gauge(
            &["uptime_in_ms"],
            &[],
            started.elapsed().as_secs_f64() * 1000.0,
        );
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(UPTIME_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TelemetryConfig {
        TelemetryConfig {
            prometheus: Some(PrometheusListener {
                host: "localhost".into(),
                port: 1,
            }),
            prefix: "spire_server".into(),
            trust_domain_label: Some("example_org".into()),
            host_label: Some("h1".into()),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn a_call_is_a_counter_and_a_latency_histogram_with_upstreams_labels() {
        let metrics = Metrics::new(config()).unwrap();
        let key = names::rpc_key("/spire.api.server.agent.v1.Agent/AttestAgent").unwrap();
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        metrics.record_call(&key, &[], "OK", Instant::now());
        let text = metrics.prometheus_text().unwrap();
        assert!(
            text.contains(
                "spire_server_rpc_agent_v1_agent_attest_agent{status=\"OK\",trust_domain=\"example_org\",host=\"h1\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("spire_server_rpc_agent_v1_agent_attest_agent_elapsed_time_bucket{"),
            "{text}"
        );
        assert!(!text.contains("_total"), "{text}");
    }

    #[test]
    fn filters_drop_metrics_by_prefix_and_labels_by_name() {
        let metrics = Metrics::new(TelemetryConfig {
            blocked_prefixes: vec!["spire_server.rpc".into()],
            allowed_prefixes: vec!["spire_server.rpc.entry".into()],
            blocked_labels: vec!["host".into()],
            ..config()
        })
        .unwrap();
        metrics.incr_counter(&["rpc", "agent", "x"], &[], 1);
        metrics.incr_counter(&["rpc", "entry", "y"], &[], 1);
        metrics.set_gauge(&["uptime_in_ms"], &[], 5.0);
        let text = metrics.prometheus_text().unwrap();
        assert!(!text.contains("spire_server_rpc_agent_x"), "{text}");
        assert!(
            text.contains("spire_server_rpc_entry_y{trust_domain=\"example_org\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spire_server_uptime_in_ms{trust_domain=\"example_org\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn sinks_this_build_lacks_are_refused_by_name() {
        let mut section = TelemetrySection::default();
        section.statsd.push(Default::default());
        let err =
            TelemetryConfig::from_section(&section, "spire_server", "example.org").unwrap_err();
        assert!(err.to_string().contains("telemetry.Statsd"), "{err}");
        let section = TelemetrySection {
            in_mem: Some(Default::default()),
            ..TelemetrySection::default()
        };
        let err =
            TelemetryConfig::from_section(&section, "spire_agent", "example.org").unwrap_err();
        assert!(err.to_string().contains("telemetry.InMem"), "{err}");
    }

    #[test]
    fn no_sink_records_nothing() {
        let metrics = Metrics::new(TelemetryConfig::default()).unwrap();
        assert!(!metrics.enabled());
        metrics.incr_counter(&["x"], &[], 1);
        assert_eq!(metrics.prometheus_text(), None);
    }
}
