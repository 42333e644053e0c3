//! The `InMem { }` sink as upstream v1.13.3 has it: metrics aggregated in memory per
//! 1-second interval for one hour, and written to the log on SIGUSR1 (one info entry per
//! line, `subsystem_name=telemetry`), in go-metrics' `InmemSignal` format:
//!
//! ```text
//! [2026-12-07 04:10:05 +0000 UTC][C] 'spire_server.rpc.agent.v1.agent.attest_agent.OK.h1': Count: 1 Sum: 1.000 LastUpdated: …
//! ```
//!
//! It is off unless the block is present (the default since upstream v1.5). Differences:
//! times are printed in UTC, `LastUpdated` has no Go monotonic-clock suffix (`m=+…`), and
//! the lines of an interval are sorted by name (Go's map order is random).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Label;

use super::Kind;

/// go-metrics' interval and retention as upstream configures them.
const INTERVAL: Duration = Duration::from_secs(1);
const RETENTION: Duration = Duration::from_secs(3600);

/// go-metrics' `AggregateSample`.
#[derive(Debug, Clone)]
struct Aggregate {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
    last_updated: SystemTime,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: 0.0,
            max: 0.0,
            last_updated: UNIX_EPOCH,
        }
    }
}

impl Aggregate {
    fn ingest(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.sum_sq += v * v;
        if v < self.min || self.count == 1 {
            self.min = v;
        }
        if v > self.max || self.count == 1 {
            self.max = v;
        }
        self.last_updated = SystemTime::now();
    }

    #[allow(clippy::cast_precision_loss, reason = "sample counts")]
    fn stddev(&self) -> f64 {
        let n = self.count as f64;
        if n < 2.0 {
            return 0.0;
        }
        let num = n * self.sum_sq - self.sum * self.sum;
        let div = n * (n - 1.0);
        if num <= 0.0 { 0.0 } else { (num / div).sqrt() }
    }

    #[allow(clippy::cast_precision_loss, reason = "sample counts")]
    fn render(&self) -> String {
        if self.count == 0 {
            return "Count: 0".to_owned();
        }
        let updated = go_time(self.last_updated);
        let stddev = self.stddev();
        if stddev == 0.0 {
            format!(
                "Count: {} Sum: {:.3} LastUpdated: {updated}",
                self.count, self.sum
            )
        } else {
            format!(
                "Count: {} Min: {:.3} Mean: {:.3} Max: {:.3} Stddev: {:.3} Sum: {:.3} LastUpdated: {updated}",
                self.count,
                self.min,
                self.sum / self.count as f64,
                self.max,
                stddev,
                self.sum
            )
        }
    }
}

/// One interval's data, keyed by the printed name (key and label values).
#[derive(Debug)]
struct Interval {
    start: SystemTime,
    gauges: BTreeMap<String, f64>,
    counters: BTreeMap<String, Aggregate>,
    samples: BTreeMap<String, Aggregate>,
}

/// The in-memory sink.
#[derive(Debug, Default)]
pub(crate) struct InMemSink {
    intervals: Mutex<VecDeque<Interval>>,
}

impl InMemSink {
    /// Adds one metric to the current interval.
    pub(crate) fn emit(
        &self,
        kind: Kind,
        prefix: &str,
        key: &[&str],
        labels: &[Label],
        value: f64,
    ) {
        let mut name = String::with_capacity(64);
        for (i, part) in std::iter::once(prefix)
            .chain(key.iter().copied())
            .enumerate()
        {
            if i > 0 {
                name.push('.');
            }
            name.push_str(part);
        }
        for l in labels {
            name.push('.');
            name.push_str(l.value());
        }
        let name: String = name
            .chars()
            .map(|c| if c == ' ' || c == ':' { '_' } else { c })
            .collect();
        let now = SystemTime::now();
        let Ok(mut intervals) = self.intervals.lock() else {
            return;
        };
        let current = current_interval(&mut intervals, now);
        match kind {
            Kind::Gauge | Kind::PrecisionGauge => {
                current.gauges.insert(name, value);
            }
            Kind::Counter => current.counters.entry(name).or_default().ingest(value),
            Kind::Sample => current.samples.entry(name).or_default().ingest(value),
        }
    }

    /// The lines SIGUSR1 writes: every interval but the one still being filled.
    pub(crate) fn dump(&self) -> Vec<String> {
        let Ok(intervals) = self.intervals.lock() else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        let done = intervals.len().saturating_sub(1);
        for intv in intervals.iter().take(done) {
            let at = go_time(intv.start);
            for (name, value) in &intv.gauges {
                lines.push(format!("[{at}][G] '{name}': {value:.3}"));
            }
            for (name, agg) in &intv.counters {
                lines.push(format!("[{at}][C] '{name}': {}", agg.render()));
            }
            for (name, agg) in &intv.samples {
                lines.push(format!("[{at}][S] '{name}': {}", agg.render()));
            }
        }
        lines
    }
}

/// The interval `now` falls in, created (and old ones dropped) as needed.
fn current_interval(intervals: &mut VecDeque<Interval>, now: SystemTime) -> &mut Interval {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    if intervals.back().is_none_or(|i| i.start != start) {
        intervals.push_back(Interval {
            start,
            gauges: BTreeMap::new(),
            counters: BTreeMap::new(),
            samples: BTreeMap::new(),
        });
        let keep = (RETENTION.as_secs() / INTERVAL.as_secs()) as usize;
        while intervals.len() > keep {
            intervals.pop_front();
        }
    }
    // Just pushed when empty.
    let last = intervals.len() - 1;
    &mut intervals[last]
}

/// Go's `time.Time.String()` in UTC without the monotonic part:
/// `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn go_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp(
        i64::try_from(since.as_secs()).unwrap_or_default(),
    ) else {
        return String::new();
    };
    let mut out = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let nanos = since.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// Writes the InMem data to the log on every SIGUSR1 until `cancel` fires.
pub(crate) async fn dump_on_sigusr1(
    metrics: super::Metrics,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut signals = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::user_defined1(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, subsystem_name = "telemetry", "cannot watch SIGUSR1; disabling telemetry signaling");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            got = signals.recv() => {
                if got.is_none() {
                    return;
                }
                for line in metrics.inmem_dump().unwrap_or_default() {
                    tracing::info!(subsystem_name = "telemetry", "{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_has_go_metrics_lines_for_finished_intervals_only() {
        let sink = InMemSink::default();
        let labels = [Label::new("status", "OK"), Label::new("host", "h1")];
        sink.emit(Kind::Counter, "spire_server", &["rpc", "x"], &labels, 1.0);
        sink.emit(
            Kind::Sample,
            "spire_server",
            &["rpc", "x", "elapsed_time"],
            &labels,
            2.0,
        );
        sink.emit(
            Kind::Sample,
            "spire_server",
            &["rpc", "x", "elapsed_time"],
            &labels,
            4.0,
        );
        sink.emit(Kind::Gauge, "spire_server", &["uptime_in_ms"], &[], 10.0);
        std::thread::sleep(Duration::from_millis(2100));
        // Still in the current interval: never printed.
        sink.emit(Kind::Gauge, "spire_server", &["uptime_in_ms"], &[], 20.0);
        let lines = sink.dump();
        let has = |kind: &str, rest: &str| {
            lines
                .iter()
                .any(|l| l.starts_with("[20") && l.contains(&format!(" +0000 UTC][{kind}] {rest}")))
        };
        assert!(has("G", "'spire_server.uptime_in_ms': 10.000"), "{lines:?}");
        assert!(
            has(
                "C",
                "'spire_server.rpc.x.OK.h1': Count: 1 Sum: 1.000 LastUpdated: 20"
            ),
            "{lines:?}"
        );
        assert!(
            has(
                "S",
                "'spire_server.rpc.x.elapsed_time.OK.h1': Count: 2 Min: 2.000 Mean: 3.000 Max: 4.000 Stddev: 1.414 Sum: 6.000 LastUpdated: 20"
            ) || has(
                "S",
                "'spire_server.rpc.x.elapsed_time.OK.h1': Count: 1 Sum: 2.000"
            ),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("20.000")), "{lines:?}");
    }

    #[test]
    fn go_time_prints_like_go() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(go_time(t), "2023-11-14 22:13:20 +0000 UTC");
        let t = t + Duration::from_millis(250);
        assert_eq!(go_time(t), "2023-11-14 22:13:20.25 +0000 UTC");
    }
}
