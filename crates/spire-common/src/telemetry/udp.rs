//! The `Statsd = [{ address }]` and `DogStatsd = [{ address }]` sinks: one line per metric
//! over UDP, in the formats upstream's libraries write (go-metrics' statsd sink, datadog-go
//! v3 behind go-metrics' DogStatsd sink), so existing statsd/Datadog pipelines keep their
//! series.
//!
//! * statsd: `<prefix>.<key…>.<label values…>:<value %f>|c|g|ms`, each line ending in `\n`;
//!   label names are dropped and their values become extra name parts (go-metrics'
//!   `flattenKeyLabels`).
//! * DogStatsD: `<prefix>.<key…>:<value>|c|g|ms|#name:value,…`; counters are integers,
//!   gauges print the shortest exact float, samples six decimals; lines of one packet are
//!   separated by `\n`.
//!
//! Emitting only queues a line (a bounded queue of 4096, new lines dropped when it is full):
//! a thread per sink batches lines into packets (1400 bytes for statsd, 1432 for DogStatsD)
//! and flushes every 100 ms, so a slow or absent collector never slows a call down. A
//! failed send waits 5 seconds before trying again, as go-metrics does.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use metrics::Label;

use super::{Kind, TelemetryError};

/// How many lines may wait for the sender thread.
const QUEUE: usize = 4096;
/// How often a partly filled packet is sent.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long to wait after a failed connect or send.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// go-metrics' statsd packet limit.
const STATSD_MAX_PACKET: usize = 1400;
/// datadog-go's UDP payload limit.
const DOGSTATSD_MAX_PACKET: usize = 1432;
/// DogStatsD's default port when only `DD_AGENT_HOST` is set.
const DOGSTATSD_DEFAULT_PORT: &str = "8125";

/// Which line format a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// go-metrics' statsd.
    Statsd,
    /// DogStatsD with tags; `global_tags` come first on every line.
    DogStatsd {
        /// `dd.internal.entity_id:<DD_ENTITY_ID>` when that variable is set.
        global_tags: Vec<String>,
    },
}

/// Where a sink's packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpTarget {
    /// `host:port` over UDP (resolved when the sender connects).
    Udp(String),
    /// `unix:///path` (DogStatsD only): a Unix datagram socket.
    Unix(PathBuf),
}

impl std::fmt::Display for UdpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Udp(a) => f.write_str(a),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// The target of `Statsd { address }`: a `host:port`.
pub(crate) fn statsd_target(address: Option<&str>) -> Result<UdpTarget, TelemetryError> {
    let address = address.unwrap_or_default().trim();
    if address.is_empty() {
        return Err(TelemetryError::SinkAddress {
            sink: "Statsd",
            reason: "address is empty; set it to the statsd collector's host:port".into(),
        });
    }
    check_host_port("Statsd", address)?;
    Ok(UdpTarget::Udp(address.to_owned()))
}

/// The target of `DogStatsd { address }` as datadog-go picks it: the address, else
/// `DD_AGENT_HOST` (with `DD_DOGSTATSD_PORT`, default 8125); `unix://` means a Unix socket.
pub(crate) fn dogstatsd_target(
    address: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<UdpTarget, TelemetryError> {
    let mut address = address.unwrap_or_default().trim().to_owned();
    if address.is_empty() {
        let host = env("DD_AGENT_HOST")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| TelemetryError::SinkAddress {
                sink: "DogStatsd",
                reason: "address is empty and DD_AGENT_HOST is not set; set address to the \
                         DogStatsD agent's host:port"
                    .into(),
            })?;
        let port = env("DD_DOGSTATSD_PORT")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DOGSTATSD_DEFAULT_PORT.to_owned());
        address = format!("{host}:{port}");
    }
    if let Some(path) = address.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(TelemetryError::SinkAddress {
                sink: "DogStatsd",
                reason: "unix:// needs a socket path".into(),
            });
        }
        return Ok(UdpTarget::Unix(PathBuf::from(path)));
    }
    check_host_port("DogStatsd", &address)?;
    Ok(UdpTarget::Udp(address))
}

fn check_host_port(sink: &'static str, address: &str) -> Result<(), TelemetryError> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(TelemetryError::SinkAddress {
            sink,
            reason: format!("address {address:?} is not host:port"),
        })
    }
}

/// One statsd or DogStatsD sink: formats lines and hands them to its sender thread.
pub(crate) struct UdpSink {
    flavor: Flavor,
    queue: SyncSender<String>,
}

impl std::fmt::Debug for UdpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSink")
            .field("flavor", &self.flavor)
            .finish_non_exhaustive()
    }
}

impl UdpSink {
    /// Starts the sender thread for `target`; it ends once the sink is dropped and the last
    /// lines are sent.
    pub(crate) fn start(flavor: Flavor, target: UdpTarget) -> Result<Self, TelemetryError> {
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        let max_packet = match flavor {
            Flavor::Statsd => STATSD_MAX_PACKET,
            Flavor::DogStatsd { .. } => DOGSTATSD_MAX_PACKET,
        };
        let separator = match flavor {
            Flavor::Statsd => "",
            Flavor::DogStatsd { .. } => "\n",
        };
        std::thread::Builder::new()
            .name("telemetry-udp".into())
            .spawn(move || {
                Sender {
                    target,
                    socket: None,
                    retry_at: None,
                    packet: String::with_capacity(max_packet),
                    max_packet,
                    separator,
                }
                .run(lines);
            })
            .map_err(|e| TelemetryError::Exporter(format!("cannot start the sink thread: {e}")))?;
        Ok(Self { flavor, queue })
    }

    /// Queues the line for one metric; drops it when the queue is full.
    pub(crate) fn emit(
        &self,
        kind: Kind,
        prefix: &str,
        key: &[&str],
        labels: &[Label],
        value: f64,
    ) {
        let line = match &self.flavor {
            Flavor::Statsd => statsd_line(kind, prefix, key, labels, value),
            Flavor::DogStatsd { global_tags } => {
                dogstatsd_line(kind, prefix, key, labels, global_tags, value)
            }
        };
        match self.queue.try_send(line) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// `:` and space become `_` in names and tags, as both libraries do.
fn push_clean(out: &mut String, part: &str) {
    out.extend(part.chars().map(|c| match c {
        ':' | ' ' => '_',
        c => c,
    }));
}

fn dotted(prefix: &str, key: &[&str], extra: impl Iterator<Item = impl AsRef<str>>) -> String {
    let mut name = String::with_capacity(64);
    push_clean(&mut name, prefix);
    for part in key.iter().map(|p| *p as &str) {
        name.push('.');
        push_clean(&mut name, part);
    }
    for part in extra {
        name.push('.');
        push_clean(&mut name, part.as_ref());
    }
    name
}

/// A go-metrics statsd line (with its `\n`); values are float32 printed with `%f`.
pub(crate) fn statsd_line(
    kind: Kind,
    prefix: &str,
    key: &[&str],
    labels: &[Label],
    value: f64,
) -> String {
    let mut line = dotted(prefix, key, labels.iter().map(Label::value));
    let symbol = match kind {
        Kind::Counter => "c",
        Kind::Gauge | Kind::PrecisionGauge => "g",
        Kind::Sample => "ms",
    };
    if kind == Kind::PrecisionGauge {
        line.push_str(&format!(":{value:.6}|{symbol}\n"));
    } else {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "go-metrics carries float32 values"
        )]
        let value = value as f32;
        line.push_str(&format!(":{value:.6}|{symbol}\n"));
    }
    line
}

/// A datadog-go line (without separator).
pub(crate) fn dogstatsd_line(
    kind: Kind,
    prefix: &str,
    key: &[&str],
    labels: &[Label],
    global_tags: &[String],
    value: f64,
) -> String {
    let mut line = dotted(prefix, key, std::iter::empty::<&str>());
    #[allow(
        clippy::cast_possible_truncation,
        reason = "go-metrics carries float32 values"
    )]
    let value = if kind == Kind::PrecisionGauge {
        value
    } else {
        f64::from(value as f32)
    };
    match kind {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "datadog-go sends counts as int64"
        )]
        Kind::Counter => line.push_str(&format!(":{}|c", value as i64)),
        Kind::Gauge | Kind::PrecisionGauge => line.push_str(&format!(":{value}|g")),
        Kind::Sample => line.push_str(&format!(":{value:.6}|ms")),
    }
    let mut first = true;
    let mut tag = |line: &mut String| {
        line.push_str(if first { "|#" } else { "," });
        first = false;
    };
    for t in global_tags {
        tag(&mut line);
        line.push_str(t);
    }
    for l in labels {
        tag(&mut line);
        push_clean(&mut line, l.key());
        if !l.value().is_empty() {
            line.push(':');
            push_clean(&mut line, l.value());
        }
    }
    line
}

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl Socket {
    fn connect(target: &UdpTarget) -> std::io::Result<Self> {
        match target {
            UdpTarget::Udp(address) => {
                let peer = address.to_socket_addrs()?.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                })?;
                let local: SocketAddr = if peer.is_ipv6() {
                    "[::]:0".parse().map_err(std::io::Error::other)?
                } else {
                    "0.0.0.0:0".parse().map_err(std::io::Error::other)?
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(peer)?;
                Ok(Self::Udp(socket))
            }
            UdpTarget::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                Ok(Self::Unix(socket))
            }
        }
    }

    fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Udp(s) => s.send(packet),
            Self::Unix(s) => s.send(packet),
        }
    }
}

/// The sender thread's state.
struct Sender {
    target: UdpTarget,
    socket: Option<Socket>,
    retry_at: Option<Instant>,
    packet: String,
    max_packet: usize,
    separator: &'static str,
}

impl Sender {
    fn run(mut self, lines: mpsc::Receiver<String>) {
        let mut last_flush = Instant::now();
        loop {
            let wait = FLUSH_INTERVAL.saturating_sub(last_flush.elapsed());
            match lines.recv_timeout(wait) {
                Ok(line) => self.push(&line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush();
                last_flush = Instant::now();
            }
        }
    }

    /// Adds `line` to the packet, sending the packet first when the line would not fit.
    fn push(&mut self, line: &str) {
        if !self.connected() {
            return;
        }
        let extra = if self.packet.is_empty() {
            0
        } else {
            self.separator.len()
        };
        if self.packet.len() + extra + line.len() > self.max_packet {
            self.flush();
        }
        if !self.packet.is_empty() {
            self.packet.push_str(self.separator);
        }
        self.packet.push_str(line);
    }

    /// Whether there is a socket, connecting when the retry delay has passed.
    fn connected(&mut self) -> bool {
        if self.socket.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match Socket::connect(&self.target) {
            Ok(socket) => {
                self.socket = Some(socket);
                self.retry_at = None;
                true
            }
            Err(e) => {
                tracing::error!(address = %self.target, error = %e, subsystem_name = "telemetry", "Error connecting to the metrics collector; retrying in 5s");
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                false
            }
        }
    }

    fn flush(&mut self) {
        if self.packet.is_empty() {
            return;
        }
        if let Some(socket) = &self.socket
            && let Err(e) = socket.send(self.packet.as_bytes())
        {
            tracing::error!(address = %self.target, error = %e, subsystem_name = "telemetry", "Error writing to the metrics collector; retrying in 5s");
            self.socket = None;
            self.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
        self.packet.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<Label> {
        vec![Label::new("status", "OK"), Label::new("host", "h1")]
    }

    const KEY: [&str; 6] = [
        "rpc",
        "agent",
        "v1",
        "agent",
        "attest_agent",
        "elapsed_time",
    ];

    #[test]
    fn statsd_lines_append_label_values_to_the_name_like_go_metrics() {
        assert_eq!(
            statsd_line(Kind::Counter, "spire_server", &KEY[..5], &labels(), 1.0),
            "spire_server.rpc.agent.v1.agent.attest_agent.OK.h1:1.000000|c\n"
        );
        assert_eq!(
            statsd_line(Kind::Sample, "spire_server", &KEY, &labels(), 12.5),
            "spire_server.rpc.agent.v1.agent.attest_agent.elapsed_time.OK.h1:12.500000|ms\n"
        );
        assert_eq!(
            statsd_line(Kind::Gauge, "spire_agent", &["uptime_in_ms"], &[], 0.1),
            "spire_agent.uptime_in_ms:0.100000|g\n"
        );
        assert_eq!(
            statsd_line(
                Kind::Gauge,
                "x",
                &["a"],
                &[Label::new("host", "my host:1")],
                3.0
            ),
            "x.a.my_host_1:3.000000|g\n"
        );
    }

    #[test]
    fn dogstatsd_lines_carry_tags_like_datadog_go() {
        assert_eq!(
            dogstatsd_line(
                Kind::Counter,
                "spire_server",
                &KEY[..5],
                &labels(),
                &[],
                1.0
            ),
            "spire_server.rpc.agent.v1.agent.attest_agent:1|c|#status:OK,host:h1"
        );
        assert_eq!(
            dogstatsd_line(Kind::Sample, "spire_server", &KEY, &labels(), &[], 12.5),
            "spire_server.rpc.agent.v1.agent.attest_agent.elapsed_time:12.500000|ms|#status:OK,host:h1"
        );
        assert_eq!(
            dogstatsd_line(
                Kind::Gauge,
                "spire_agent",
                &["started"],
                &[Label::new("version", "")],
                &["dd.internal.entity_id:abc".into()],
                1.0
            ),
            "spire_agent.started:1|g|#dd.internal.entity_id:abc,version"
        );
        assert_eq!(
            dogstatsd_line(Kind::Gauge, "p", &["g"], &[], &[], 0.1),
            "p.g:0.10000000149011612|g"
        );
        // Unix times keep every second (float32 would round to 128 s).
        assert_eq!(
            dogstatsd_line(Kind::PrecisionGauge, "p", &["t"], &[], &[], 1_796_600_001.0),
            "p.t:1796600001|g"
        );
        assert_eq!(
            statsd_line(Kind::PrecisionGauge, "p", &["t"], &[], 1_796_600_001.0),
            "p.t:1796600001.000000|g\n"
        );
    }

    #[test]
    fn addresses_are_checked_at_start() {
        assert!(statsd_target(None).is_err());
        assert!(statsd_target(Some("localhost")).is_err());
        assert_eq!(
            statsd_target(Some("127.0.0.1:8125")).unwrap(),
            UdpTarget::Udp("127.0.0.1:8125".into())
        );
        let no_env = |_: &str| None;
        let err = dogstatsd_target(None, no_env).unwrap_err();
        assert!(err.to_string().contains("DD_AGENT_HOST"), "{err}");
        let env = |k: &str| (k == "DD_AGENT_HOST").then(|| "dd".to_owned());
        assert_eq!(
            dogstatsd_target(Some(""), env).unwrap(),
            UdpTarget::Udp("dd:8125".into())
        );
        assert_eq!(
            dogstatsd_target(Some("unix:///run/dsd.sock"), no_env).unwrap(),
            UdpTarget::Unix("/run/dsd.sock".into())
        );
    }

    #[test]
    fn lines_reach_a_udp_collector_batched_into_packets() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let address = collector.local_addr().unwrap().to_string();
        let sink = UdpSink::start(Flavor::Statsd, UdpTarget::Udp(address)).unwrap();
        sink.emit(Kind::Counter, "p", &["a"], &[], 1.0);
        sink.emit(Kind::Gauge, "p", &["b"], &[], 2.0);
        let mut received = String::new();
        let mut buf = [0u8; 2048];
        while !received.contains("p.b:2.000000|g\n") {
            let n = collector.recv(&mut buf).unwrap();
            assert!(n <= STATSD_MAX_PACKET);
            received.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert_eq!(received, "p.a:1.000000|c\np.b:2.000000|g\n");
    }

    #[test]
    fn a_burst_is_split_into_packets_under_the_limit() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let address = collector.local_addr().unwrap().to_string();
        let sink = UdpSink::start(
            Flavor::DogStatsd {
                global_tags: Vec::new(),
            },
            UdpTarget::Udp(address),
        )
        .unwrap();
        for i in 0..100 {
            sink.emit(
                Kind::Counter,
                "spire_agent",
                &["burst", &i.to_string()],
                &[],
                1.0,
            );
        }
        let mut lines = 0;
        let mut buf = [0u8; 4096];
        while lines < 100 {
            let n = collector.recv(&mut buf).unwrap();
            assert!(n <= DOGSTATSD_MAX_PACKET, "{n}");
            let packet = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(!packet.ends_with('\n'), "{packet:?}");
            lines += packet.split('\n').count();
        }
        assert_eq!(lines, 100);
    }

    #[test]
    fn dogstatsd_reaches_a_unix_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dsd.sock");
        let collector = UnixDatagram::bind(&path).unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sink = UdpSink::start(
            Flavor::DogStatsd {
                global_tags: Vec::new(),
            },
            UdpTarget::Unix(path),
        )
        .unwrap();
        sink.emit(Kind::Gauge, "p", &["g"], &[Label::new("host", "h")], 2.0);
        let mut buf = [0u8; 2048];
        let n = collector.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "p.g:2|g|#host:h");
    }
}
