//! The running `telemetry` block of a process, which a configuration reload changes in place
//! (beyond upstream, which sets its sinks up once at start).
//!
//! A reload is two steps so that a bad block changes nothing: [`LiveTelemetry::prepare`]
//! does everything that can fail (binding a new Prometheus port, starting new statsd
//! senders) without touching what runs; [`LiveTelemetry::commit`] then swaps the sinks
//! behind every [`Metrics`] clone and moves the Prometheus listener. Dropping a
//! [`PreparedTelemetry`] instead releases what it bound.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{Inner, Metrics, PrometheusListener, TelemetryConfig, TelemetryError};

/// The Prometheus listener being served, and how to stop it.
struct Serving {
    listener: PrometheusListener,
    stop: CancellationToken,
}

/// The telemetry of a running process: its shared [`Metrics`] and its Prometheus listener.
pub struct LiveTelemetry {
    metrics: Metrics,
    config: Mutex<TelemetryConfig>,
    serving: Mutex<Option<Serving>>,
    /// The process's shutdown: every listener stops with it.
    cancel: CancellationToken,
}

impl std::fmt::Debug for LiveTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTelemetry")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// A validated new `telemetry` block, ready to take effect with [`LiveTelemetry::commit`].
pub struct PreparedTelemetry {
    config: TelemetryConfig,
    inner: Option<Arc<Inner>>,
    /// The new Prometheus listener, when the address changed (or Prometheus was turned on).
    listener: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for PreparedTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedTelemetry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PreparedTelemetry {
    /// The new block, as [`TelemetryConfig::summary`] shows it.
    pub fn summary(&self) -> String {
        self.config.summary()
    }
}

impl LiveTelemetry {
    /// Sets up `config`'s sinks, makes them the process's [`super::global`] metrics and
    /// serves Prometheus (if configured) until `cancel` fires. Fails when a sink cannot start
    /// or the Prometheus port cannot be bound.
    pub async fn start(
        config: TelemetryConfig,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, TelemetryError> {
        let metrics = Metrics::new(config.clone())?;
        super::install_global(metrics.clone());
        let listener = super::bind_prometheus(&config).await?;
        let live = Arc::new(Self {
            metrics,
            config: Mutex::new(config.clone()),
            serving: Mutex::new(None),
            cancel,
        });
        if let (Some(listener), Some(address)) = (listener, config.prometheus) {
            live.serve(listener, address);
        }
        Ok(live)
    }

    /// The process's metrics; every clone follows reloads.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The block in effect now.
    pub fn config(&self) -> TelemetryConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Starts `new`'s sinks and binds its Prometheus listener when the address changes;
    /// nothing running changes. `None` when `new` is the running block.
    pub async fn prepare(
        &self,
        new: TelemetryConfig,
    ) -> Result<Option<PreparedTelemetry>, TelemetryError> {
        let old = self.config();
        if old == new {
            return Ok(None);
        }
        let listener = if new.prometheus != old.prometheus {
            super::bind_prometheus(&new).await?
        } else {
            None
        };
        let inner = Inner::build(new.clone(), self.metrics.current().as_deref())?;
        Ok(Some(PreparedTelemetry {
            config: new,
            inner,
            listener,
        }))
    }

    /// Puts `prepared` in effect: every metric from now on goes to its sinks, and the
    /// Prometheus listener moves (the old one stops accepting).
    pub fn commit(&self, prepared: PreparedTelemetry) {
        let PreparedTelemetry {
            config,
            inner,
            listener,
        } = prepared;
        self.metrics.replace(inner);
        let moved = self
            .serving
            .lock()
            .map(|s| s.as_ref().map(|s| &s.listener) != config.prometheus.as_ref())
            .unwrap_or(true);
        if moved {
            if let Ok(mut serving) = self.serving.lock()
                && let Some(old) = serving.take()
            {
                tracing::info!(host = %old.listener.host, port = old.listener.port, "Stopping prometheus exporter");
                old.stop.cancel();
            }
            if let (Some(listener), Some(address)) = (listener, config.prometheus.clone()) {
                self.serve(listener, address);
            }
        }
        if let Ok(mut current) = self.config.lock() {
            *current = config;
        }
    }

    /// Serves `listener` until the process stops or a reload moves it.
    fn serve(&self, listener: tokio::net::TcpListener, address: PrometheusListener) {
        let stop = self.cancel.child_token();
        let metrics = self.metrics.clone();
        let task_stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = super::serve_prometheus(listener, metrics, task_stop).await {
                tracing::error!(error = %e, "Prometheus listener stopped");
            }
        });
        if let Ok(mut serving) = self.serving.lock() {
            *serving = Some(Serving {
                listener: address,
                stop,
            });
        }
    }
}

impl TelemetryConfig {
    /// One line naming the sinks and naming settings, for the reload report.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.prometheus {
            parts.push(format!("Prometheus={}:{}", p.host, p.port));
        }
        let list = |targets: &[super::udp::UdpTarget]| {
            targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.statsd.is_empty() {
            parts.push(format!("Statsd={}", list(&self.statsd)));
        }
        if !self.dogstatsd.is_empty() {
            parts.push(format!("DogStatsd={}", list(&self.dogstatsd)));
        }
        if self.in_mem {
            parts.push("InMem".to_owned());
        }
        if parts.is_empty() {
            parts.push("no sinks".to_owned());
        }
        parts.push(format!("MetricPrefix={}", self.prefix));
        for (name, list) in [
            ("AllowedPrefixes", &self.allowed_prefixes),
            ("BlockedPrefixes", &self.blocked_prefixes),
            ("AllowedLabels", &self.allowed_labels),
            ("BlockedLabels", &self.blocked_labels),
        ] {
            if !list.is_empty() {
                parts.push(format!("{name}={}", list.join(",")));
            }
        }
        if self.trust_domain_label.is_some() {
            parts.push("EnableTrustDomainLabel".to_owned());
        }
        if self.host_label.is_none() {
            parts.push("EnableHostnameLabel=false".to_owned());
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::udp::UdpTarget;
    use std::time::Duration;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn prometheus(port: u16) -> TelemetryConfig {
        TelemetryConfig {
            prometheus: Some(PrometheusListener {
                host: "127.0.0.1".into(),
                port,
            }),
            prefix: "spire_server".into(),
            ..TelemetryConfig::default()
        }
    }

    async fn scrape(port: u16) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok(body)
    }

    #[tokio::test]
    async fn a_reload_moves_prometheus_and_adds_statsd_for_every_clone() {
        let cancel = CancellationToken::new();
        let (old_port, new_port) = (free_port(), free_port());
        let live = LiveTelemetry::start(prometheus(old_port), cancel.clone())
            .await
            .unwrap();
        let handle = live.metrics();
        handle.incr_counter(&["before"], &[], 1);
        assert!(
            scrape(old_port)
                .await
                .unwrap()
                .contains("spire_server_before 1")
        );

        let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut new = prometheus(new_port);
        new.statsd = vec![UdpTarget::Udp(collector.local_addr().unwrap().to_string())];
        let prepared = live.prepare(new.clone()).await.unwrap().unwrap();
        // Prepared but not committed: the old listener still serves, nothing goes to statsd.
        assert!(scrape(old_port).await.is_ok());
        live.commit(prepared);
        handle.incr_counter(&["after"], &[], 1);
        let mut buf = [0u8; 2048];
        let n = collector.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .starts_with("spire_server.after"),
            "{:?}",
            &buf[..n]
        );
        // Same naming: the Prometheus registry is kept across the move.
        let text = scrape(new_port).await.unwrap();
        assert!(text.contains("spire_server_before 1"), "{text}");
        assert!(text.contains("spire_server_after 1"), "{text}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while scrape(old_port).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "old port still serves"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(live.config(), new);
        assert!(live.prepare(new).await.unwrap().is_none());
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_port_that_cannot_be_bound_changes_nothing() {
        let cancel = CancellationToken::new();
        let port = free_port();
        let live = LiveTelemetry::start(prometheus(port), cancel.clone())
            .await
            .unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut new = prometheus(taken.local_addr().unwrap().port());
        new.in_mem = true;
        let err = live.prepare(new).await.unwrap_err();
        assert!(
            err.to_string().contains("unable to listen for Prometheus"),
            "{err}"
        );
        assert_eq!(live.config(), prometheus(port));
        assert!(live.metrics().inmem_dump().is_none());
        live.metrics().incr_counter(&["still"], &[], 1);
        assert!(scrape(port).await.unwrap().contains("spire_server_still 1"));
        cancel.cancel();
    }

    #[tokio::test]
    async fn sinks_can_be_turned_off_and_on() {
        let cancel = CancellationToken::new();
        let live = LiveTelemetry::start(TelemetryConfig::default(), cancel.clone())
            .await
            .unwrap();
        let handle = live.metrics();
        assert!(!handle.enabled());
        let on = TelemetryConfig {
            in_mem: true,
            prefix: "spire_agent".into(),
            ..TelemetryConfig::default()
        };
        let prepared = live.prepare(on).await.unwrap().unwrap();
        live.commit(prepared);
        assert!(handle.enabled() && handle.inmem_dump().is_some());
        let prepared = live
            .prepare(TelemetryConfig::default())
            .await
            .unwrap()
            .unwrap();
        live.commit(prepared);
        assert!(!handle.enabled());
        cancel.cancel();
    }
}
