//! The `telemetry { }` block: metrics with upstream's names and labels, sent to every
//! configured sink (a fan-out, as upstream's one go-metrics instance per sink):
//!
//! * `Prometheus { host port }`: every path of that listener answers in the text exposition
//!   format, as upstream's does;
//! * `Statsd = [{ address }]` and `DogStatsd = [{ address }]`: UDP lines in go-metrics' and
//!   datadog-go's formats ([`udp`]);
//! * `InMem { }`: aggregated in memory and written to the log on SIGUSR1 ([`inmem`]).
//!
//! Names are upstream's (`names`), with the `MetricPrefix` (default `spire_server` /
//! `spire_agent`) in front; labels are the call's own (`status` for RPCs), then
//! `trust_domain` with `EnableTrustDomainLabel`, then `host` unless `EnableHostnameLabel =
//! false`. `AllowedPrefixes`/`BlockedPrefixes` match the longest prefix of the dotted key
//! (prefix included), `AllowedLabels`/`BlockedLabels` drop labels by name, as go-metrics'
//! filters do; they apply to every metric and every sink. Beyond upstream, latencies
//! (`…_elapsed_time`, milliseconds) are Prometheus histograms rather than summaries, so they
//! aggregate across servers.
//!
//! `M3` is refused at start with the block named: no M3 collector runs here to test it
//! against, and an accepted block that sends nothing would hide a monitoring gap. So is
//! `Prometheus.tls` (upstream v1.15 only).
//!
//! Code away from the gRPC layers emits through [`global`], which the process sets once at
//! start ([`install_global`]); with no sink it is a no-op that allocates nothing.
//!
//! Every clone of a [`Metrics`] shares one sink set, which a configuration reload swaps
//! ([`live::LiveTelemetry`]): the gRPC layers, the global handle and the Prometheus listener
//! all follow the new `telemetry` block at once (beyond upstream, which reads it only at start).

pub mod agent;
pub mod inmem;
pub mod live;
pub mod names;
pub mod process;
mod prometheus;
pub mod rpc;
pub mod server;
pub mod udp;

pub use prometheus::{bind_prometheus, serve_prometheus};

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use spire_core::config::sections::TelemetrySection;
use tokio_util::sync::CancellationToken;

use udp::{Flavor, UdpSink, UdpTarget};

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
        "telemetry.{0} is not supported by this SPIRE build: remove the block, or export through telemetry.Prometheus, Statsd or DogStatsd"
    )]
    UnsupportedSink(&'static str),
    /// A key upstream v1.13.3 does not know either.
    #[error(
        "telemetry.{section}.{key}: unknown configuration key (upstream removed it); remove it"
    )]
    UnknownKey {
        /// The sink block.
        section: &'static str,
        /// The key.
        key: &'static str,
    },
    /// `Prometheus { tls { } }` (upstream v1.15): the endpoint serves plain HTTP only.
    #[error(
        "telemetry.Prometheus.tls: serving /metrics over TLS (upstream v1.15) is not supported by \
         this SPIRE build; remove the tls block to serve plain HTTP (bind host to localhost or \
         put a TLS proxy in front)"
    )]
    PrometheusTls,
    /// A Prometheus block without a port.
    #[error("telemetry.Prometheus needs a port")]
    NoPrometheusPort,
    /// A statsd or DogStatsD address that cannot be used.
    #[error("telemetry.{sink}: {reason}")]
    SinkAddress {
        /// `Statsd` or `DogStatsd`.
        sink: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The Prometheus listener could not bind.
    #[error("unable to listen for Prometheus on {address}: {source}")]
    Bind {
        /// `host:port`.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exporter refused its settings.
    #[error("cannot set up the telemetry exporter: {0}")]
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
    /// `Statsd = [{ address }]`.
    pub statsd: Vec<UdpTarget>,
    /// `DogStatsd = [{ address }]`.
    pub dogstatsd: Vec<UdpTarget>,
    /// `InMem { }` is present.
    pub in_mem: bool,
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
        if !section.m3.is_empty() {
            return Err(TelemetryError::UnsupportedSink("M3"));
        }
        if section.in_mem.as_ref().is_some_and(|m| m.enabled.is_some()) {
            return Err(TelemetryError::UnknownKey {
                section: "InMem",
                key: "enabled",
            });
        }
        let statsd = section
            .statsd
            .iter()
            .map(|s| udp::statsd_target(s.address.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let dogstatsd = section
            .dog_statsd
            .iter()
            .map(|s| udp::dogstatsd_target(s.address.as_deref(), |k| std::env::var(k).ok()))
            .collect::<Result<Vec<_>, _>>()?;
        let prometheus = match &section.prometheus {
            None => None,
            Some(p) if p.tls.is_some() => {
                return Err(TelemetryError::PrometheusTls);
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
            statsd,
            dogstatsd,
            in_mem: section.in_mem.is_some(),
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

    /// Whether `other` names and labels metrics as this does (the sinks aside).
    fn same_naming(&self, other: &Self) -> bool {
        self.prefix == other.prefix
            && self.trust_domain_label == other.trust_domain_label
            && self.host_label == other.host_label
            && self.allowed_prefixes == other.allowed_prefixes
            && self.blocked_prefixes == other.blocked_prefixes
            && self.allowed_labels == other.allowed_labels
            && self.blocked_labels == other.blocked_labels
    }

    /// Whether any sink is configured.
    pub fn has_sink(&self) -> bool {
        self.prometheus.is_some()
            || !self.statsd.is_empty()
            || !self.dogstatsd.is_empty()
            || self.in_mem
    }
}

/// The host's name as Go's `os.Hostname` reads it on Linux.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// What a metric is, as go-metrics distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Adds to a running total.
    Counter,
    /// Replaces the last value.
    Gauge,
    /// A gauge whose value needs float64 precision in statsd lines (Unix times; upstream's
    /// `SetPrecisionGauge`).
    PrecisionGauge,
    /// One observation (latencies in milliseconds, sizes).
    Sample,
}

struct PrometheusSink {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

struct Inner {
    config: TelemetryConfig,
    prometheus: Option<Arc<PrometheusSink>>,
    udp: Vec<UdpSink>,
    inmem: Option<Arc<inmem::InMemSink>>,
}

/// Where metrics go. Cloning shares the sinks, and a reload's new sinks
/// ([`live::LiveTelemetry`]); `Metrics::default()` records nothing (no sink configured), so
/// code can always emit.
#[derive(Clone, Default)]
pub struct Metrics(Arc<RwLock<Option<Arc<Inner>>>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Metrics")
            .field(&self.current().map(|i| i.config.clone()))
            .finish()
    }
}

/// The metadata every registration carries (the exporter ignores it).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The process's metrics for code that has no handle passed to it.
static GLOBAL: RwLock<Option<Metrics>> = RwLock::new(None);

/// What [`global`] returns before [`install_global`]: records nothing, and is never swapped.
static DISABLED: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);

/// Makes `metrics` what [`global`] returns (set once at start; a reload swaps the sinks
/// behind it).
pub fn install_global(metrics: Metrics) {
    if let Ok(mut global) = GLOBAL.write() {
        *global = Some(metrics);
    }
}

/// The process's metrics (a no-op until [`install_global`]).
pub fn global() -> Metrics {
    GLOBAL
        .read()
        .ok()
        .and_then(|m| m.clone())
        .unwrap_or_else(|| DISABLED.clone())
}

impl Inner {
    /// The sinks of `config`, or `None` when it has none. The Prometheus registry and the
    /// InMem aggregates of `previous` are kept when they stay on with the same naming (so a
    /// reload that only adds a statsd address does not reset the Prometheus counters).
    fn build(
        config: TelemetryConfig,
        previous: Option<&Inner>,
    ) -> Result<Option<Arc<Self>>, TelemetryError> {
        if !config.has_sink() {
            return Ok(None);
        }
        let same_naming = previous.filter(|p| p.config.same_naming(&config));
        let prometheus = match config.prometheus {
            None => None,
            Some(_) => match same_naming.and_then(|p| p.prometheus.clone()) {
                Some(kept) => Some(kept),
                None => {
                    let recorder = PrometheusBuilder::new()
                        .set_buckets(&LATENCY_BUCKETS_MS)
                        .map_err(|e| TelemetryError::Exporter(e.to_string()))?
                        .build_recorder();
                    let handle = recorder.handle();
                    Some(Arc::new(PrometheusSink { recorder, handle }))
                }
            },
        };
        let mut udp = Vec::new();
        for target in &config.statsd {
            udp.push(UdpSink::start(Flavor::Statsd, target.clone())?);
        }
        let global_tags: Vec<String> = std::env::var("DD_ENTITY_ID")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| format!("dd.internal.entity_id:{v}"))
            .into_iter()
            .collect();
        for target in &config.dogstatsd {
            udp.push(UdpSink::start(
                Flavor::DogStatsd {
                    global_tags: global_tags.clone(),
                },
                target.clone(),
            )?);
        }
        let inmem = config.in_mem.then(|| {
            same_naming
                .and_then(|p| p.inmem.clone())
                .unwrap_or_default()
        });
        Ok(Some(Arc::new(Inner {
            config,
            prometheus,
            udp,
            inmem,
        })))
    }
}

impl Metrics {
    /// Metrics for `config`; records nothing when it has no sink.
    pub fn new(config: TelemetryConfig) -> Result<Self, TelemetryError> {
        Ok(Self(Arc::new(RwLock::new(Inner::build(config, None)?))))
    }

    /// The sinks in effect now.
    fn current(&self) -> Option<Arc<Inner>> {
        self.0.read().ok().and_then(|i| i.clone())
    }

    /// Swaps in `inner` for every clone of this handle.
    fn replace(&self, inner: Option<Arc<Inner>>) {
        if let Ok(mut current) = self.0.write() {
            *current = inner;
        }
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.current().is_some()
    }

    /// The labels of `key` after the filters, or `None` when the metric is filtered out.
    fn labels(inner: &Inner, key: &[&str], labels: &[(&str, String)]) -> Option<Vec<Label>> {
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
        Some(all)
    }

    /// Sends one metric to every sink.
    pub fn emit(&self, kind: Kind, key: &[&str], labels: &[(&str, String)], value: f64) {
        let Some(inner) = self.current() else {
            return;
        };
        let Some(labels) = Self::labels(&inner, key, labels) else {
            return;
        };
        let prefix = inner.config.prefix.as_str();
        for sink in &inner.udp {
            sink.emit(kind, prefix, key, &labels, value);
        }
        if let Some(sink) = &inner.inmem {
            sink.emit(kind, prefix, key, &labels, value);
        }
        if let Some(p) = &inner.prometheus {
            let k = Key::from_parts(names::prometheus_name(prefix, key), labels);
            match kind {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "counters are whole and non-negative; go-metrics drops negative ones"
                )]
                Kind::Counter => p
                    .recorder
                    .register_counter(&k, &METADATA)
                    .increment(value.max(0.0) as u64),
                Kind::Gauge | Kind::PrecisionGauge => {
                    p.recorder.register_gauge(&k, &METADATA).set(value);
                }
                Kind::Sample => p.recorder.register_histogram(&k, &METADATA).record(value),
            }
        }
    }

    /// Adds `value` to the counter `key`.
    #[allow(clippy::cast_precision_loss, reason = "counter increments are small")]
    pub fn incr_counter(&self, key: &[&str], labels: &[(&str, String)], value: u64) {
        self.emit(Kind::Counter, key, labels, value as f64);
    }

    /// Sets the gauge `key`.
    pub fn set_gauge(&self, key: &[&str], labels: &[(&str, String)], value: f64) {
        self.emit(Kind::Gauge, key, labels, value);
    }

    /// Records `value` in the histogram `key`.
    pub fn add_sample(&self, key: &[&str], labels: &[(&str, String)], value: f64) {
        self.emit(Kind::Sample, key, labels, value);
    }

    /// Records the milliseconds since `started` in `key` + `elapsed_time` (upstream's
    /// `Latency`).
    pub fn measure_since(&self, key: &[&str], labels: &[(&str, String)], started: Instant) {
        if !self.enabled() {
            return;
        }
        let mut elapsed_key = key.to_vec();
        elapsed_key.push("elapsed_time");
        self.add_sample(
            &elapsed_key,
            labels,
            started.elapsed().as_secs_f64() * 1000.0,
        );
    }

    /// Sets the gauge `key` to `at` as Unix seconds (absolute expiry gauges).
    pub fn set_time_gauge(&self, key: &[&str], labels: &[(&str, String)], at: SystemTime) {
        if !self.enabled() {
            return;
        }
        let secs = match at.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        self.emit(Kind::PrecisionGauge, key, labels, secs.trunc());
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
        if !self.enabled() {
            return;
        }
        let mut all = labels.to_vec();
        all.push(("status", status.to_owned()));
        self.incr_counter(key, &all, 1);
        self.measure_since(key, &all, started);
    }

    /// [`Metrics::record_call`] for an internal operation: status `OK` when `ok`, else
    /// `Unknown` (what upstream's `status.Code` gives for a non-gRPC error).
    pub fn record_outcome(
        &self,
        key: &[&str],
        labels: &[(&str, String)],
        ok: bool,
        started: Instant,
    ) {
        self.record_call(key, labels, if ok { "OK" } else { "Unknown" }, started);
    }

    /// The Prometheus text exposition of everything recorded, when Prometheus is on.
    /// (The scrape handler adds the `process_*` series, [`process::exposition`].)
    pub fn prometheus_text(&self) -> Option<String> {
        self.current()
            .and_then(|inner| inner.prometheus.as_ref().map(|p| p.handle.render()))
    }

    /// The lines an InMem dump (SIGUSR1) writes now, when `InMem` is on.
    pub fn inmem_dump(&self) -> Option<Vec<String>> {
        self.current()
            .and_then(|inner| inner.inmem.as_ref().map(|m| m.dump()))
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

/// Upstream's process gauges: `started` (1, labelled `version` and `trust_domain_id`) once,
/// and `uptime_in_ms` every 10 seconds, until `cancel` fires. This task also writes the InMem
/// data to the log on SIGUSR1 while `InMem` is on (it may be turned on by a reload).
pub async fn report_process_gauges(
    metrics: Metrics,
    version: &'static str,
    trust_domain: String,
    cancel: CancellationToken,
) {
    let signals = inmem::dump_on_sigusr1(metrics.clone(), cancel.clone());
    let gauges = async {
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
    };
    tokio::join!(signals, gauges);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Metrics with only a Prometheus sink, no host or trust domain label, for tests that
    /// compare exposition lines.
    pub(crate) fn prometheus_metrics(prefix: &str) -> Metrics {
        Metrics::new(TelemetryConfig {
            prometheus: Some(PrometheusListener {
                host: "localhost".into(),
                port: 1,
            }),
            prefix: prefix.into(),
            ..TelemetryConfig::default()
        })
        .unwrap()
    }

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
        section.m3.push(Default::default());
        let err =
            TelemetryConfig::from_section(&section, "spire_server", "example.org").unwrap_err();
        assert!(err.to_string().contains("telemetry.M3"), "{err}");
        // `InMem { enabled }` is an unknown key since upstream v1.9.
        let section = TelemetrySection {
            in_mem: Some(spire_core::config::sections::InMemSection {
                enabled: Some(true),
            }),
            ..TelemetrySection::default()
        };
        let err =
            TelemetryConfig::from_section(&section, "spire_agent", "example.org").unwrap_err();
        assert!(err.to_string().contains("telemetry.InMem.enabled"), "{err}");
        let section = TelemetrySection {
            in_mem: Some(Default::default()),
            ..TelemetrySection::default()
        };
        let config = TelemetryConfig::from_section(&section, "spire_agent", "example.org").unwrap();
        assert!(config.in_mem && config.has_sink());
        let mut section = TelemetrySection::default();
        section.statsd.push(Default::default());
        let err =
            TelemetryConfig::from_section(&section, "spire_server", "example.org").unwrap_err();
        assert!(err.to_string().contains("telemetry.Statsd"), "{err}");
    }

    #[test]
    fn prometheus_tls_is_refused_naming_the_tls_block() {
        let section = TelemetrySection {
            prometheus: Some(spire_core::config::sections::PrometheusSection {
                port: Some(9988),
                tls: Some(Default::default()),
                ..Default::default()
            }),
            ..TelemetrySection::default()
        };
        let err = TelemetryConfig::from_section(&section, "spire_server", "example.org")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("telemetry.Prometheus.tls: "), "{err}");
        assert!(err.contains("remove the tls block"), "{err}");
        assert!(
            !err.contains("export through telemetry.Prometheus"),
            "{err}"
        );
    }

    #[test]
    fn metric_prefix_and_allowed_labels_shape_the_prometheus_text() {
        let section = TelemetrySection {
            prometheus: Some(spire_core::config::sections::PrometheusSection {
                port: Some(9988),
                ..Default::default()
            }),
            metric_prefix: Some("acme".into()),
            allowed_labels: vec!["status".into()],
            ..TelemetrySection::default()
        };
        let config =
            TelemetryConfig::from_section(&section, "spire_server", "example.org").unwrap();
        let metrics = Metrics::new(config).unwrap();
        metrics.incr_counter(
            &["rpc", "entry", "y"],
            &[("status", "OK".to_owned()), ("method", "m".to_owned())],
            1,
        );
        let text = metrics.prometheus_text().unwrap();
        // The prefix replaces spire_server; only the allowed label is kept.
        assert!(text.contains("acme_rpc_entry_y{status=\"OK\"} 1"), "{text}");
        assert!(!text.contains("spire_server_"), "{text}");
        assert!(!text.contains("method="), "{text}");
    }

    #[test]
    fn every_sink_gets_the_same_metrics_after_the_filters() {
        let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let address = collector.local_addr().unwrap().to_string();
        let metrics = Metrics::new(TelemetryConfig {
            statsd: vec![UdpTarget::Udp(address)],
            in_mem: true,
            blocked_prefixes: vec!["spire_server.datastore".into()],
            blocked_labels: vec!["trust_domain".into()],
            ..config()
        })
        .unwrap();
        metrics.incr_counter(&["datastore", "bundle", "fetch"], &[], 1);
        metrics.incr_counter(&["ca_manager", "x509_ca_activate"], &[], 1);
        let text = metrics.prometheus_text().unwrap();
        assert!(
            text.contains("spire_server_ca_manager_x509_ca_activate{host=\"h1\"} 1"),
            "{text}"
        );
        assert!(!text.contains("datastore"), "{text}");
        let mut buf = [0u8; 2048];
        let n = collector.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "spire_server.ca_manager.x509_ca_activate.h1:1.000000|c\n"
        );
        assert!(metrics.inmem_dump().is_some());
    }

    #[test]
    fn time_gauges_are_unix_seconds() {
        let metrics = Metrics::new(config()).unwrap();
        metrics.set_time_gauge(
            &["agent_svid", "expiration"],
            &[],
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
        );
        let text = metrics.prometheus_text().unwrap();
        assert!(
            text.contains("spire_server_agent_svid_expiration{trust_domain=\"example_org\",host=\"h1\"} 1700000000"),
            "{text}"
        );
    }

    #[test]
    fn no_sink_records_nothing() {
        let metrics = Metrics::new(TelemetryConfig::default()).unwrap();
        assert!(!metrics.enabled());
        metrics.incr_counter(&["x"], &[], 1);
        assert_eq!(metrics.prometheus_text(), None);
    }
}
