//! Envoy SDS on the agent, ours against upstream v1.13.3's, both attested to one upstream
//! server (the server is not measured) and measured from outside as Envoys see them:
//!
//! - StreamSecrets streams per second: a new connection, a stream asking for `default` and
//!   `ROOTCA`, its first response, close; 1 and 16 clients at once;
//! - memory per open stream: the agent's resident memory (VmRSS) before and after 1,000
//!   streams are open (20 per connection, each with its first response), divided by 1,000.
//!
//! Run with `cargo build --release -p spire-agent -p spire-server && . target/interop-deps.env &&
//! cargo bench -p spire-e2e --bench agent_sds` (our `spire-server` CLI checks the server's
//! health). `SPIRE_BENCH_QUICK=1` shortens the runs.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a benchmark: failing loudly is its whole job"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use spire_e2e::{AgentProcess, ServerProcess, binary, current_uid, interop_program};
use spire_proto::sds::discovery::{DiscoveryRequest, DiscoveryResponse};
use spire_proto::sds::secret::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const ALIAS: &str = "spiffe://example.org/bench-agent";
const WORKLOAD: &str = "spiffe://example.org/envoy";
const STREAMS: usize = 1000;
const PER_CONNECTION: usize = 20;

fn quick() -> bool {
    std::env::var_os("SPIRE_BENCH_QUICK").is_some()
}

async fn connect(socket: &Path) -> Channel {
    let socket: PathBuf = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap()
}

fn first_request() -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: vec!["default".to_owned(), "ROOTCA".to_owned()],
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// An open stream: the sender and the channel keep it open; the responses come on `rx`.
struct Open {
    _tx: mpsc::Sender<DiscoveryRequest>,
    _channel: Channel,
    rx: tonic::Streaming<DiscoveryResponse>,
}

async fn open(channel: Channel) -> (Open, DiscoveryResponse) {
    let (tx, requests) = mpsc::channel(4);
    tx.send(first_request()).await.unwrap();
    let mut rx = SecretDiscoveryServiceClient::new(channel.clone())
        .stream_secrets(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let first = rx.message().await.unwrap().unwrap();
    assert_eq!(first.resources.len(), 2, "default and ROOTCA");
    (
        Open {
            _tx: tx,
            _channel: channel,
            rx,
        },
        first,
    )
}

/// `clients` Envoys opening a stream on a new connection, taking the first answer and
/// closing, for `duration`; streams/s.
async fn stream_rate(socket: &Path, clients: usize, duration: Duration) -> f64 {
    let socket = Arc::new(socket.to_path_buf());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let socket = Arc::clone(&socket);
        tasks.spawn(async move {
            let mut n = 0_usize;
            while started.elapsed() < duration {
                let (stream, _) = open(connect(&socket).await).await;
                drop(stream);
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn start_agent(dir: &Path, server: &ServerProcess, program: &Path) -> AgentProcess {
    std::fs::create_dir_all(dir).unwrap();
    let token = server.generate_join_token(ALIAS);
    let (config, socket) = AgentProcess::write_config(dir, server.port, "");
    // The benchmark measures the agent, not its debug logging.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("log_level = \"DEBUG\"", "log_level = \"WARN\"");
    std::fs::write(&config, text).unwrap();
    let agent =
        AgentProcess::start_program_with_config(program, dir, &config, socket, Some(&token));
    agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(60));
    agent
}

fn measure(runtime: &tokio::runtime::Runtime, name: &str, agent: &AgentProcess) {
    let duration = Duration::from_secs(if quick() { 2 } else { 5 });
    let socket = agent.socket_path.clone();
    for clients in [1, 16] {
        runtime.block_on(stream_rate(&socket, clients, Duration::from_millis(300)));
        let rate = runtime.block_on(stream_rate(&socket, clients, duration));
        println!("| {name} | streams/s, {clients} client(s) | {rate:.0} |");
    }

    let pid = agent.pid().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);
    let mut opened = runtime.block_on(async {
        let mut streams = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS / PER_CONNECTION {
            let channel = connect(&socket).await;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..PER_CONNECTION {
                tasks.spawn(open(channel.clone()));
            }
            while let Some(opened) = tasks.join_next().await {
                streams.push(opened.unwrap().0);
            }
        }
        streams
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    let open_now = runtime.block_on(async {
        let mut n = 0;
        for stream in &mut opened {
            // Nothing is due on an open stream: a quick timeout means it is still open.
            if tokio::time::timeout(Duration::from_millis(1), stream.rx.message())
                .await
                .is_err()
            {
                n += 1;
            }
        }
        n
    });
    assert_eq!(
        open_now, STREAMS,
        "every stream is still open when memory is read"
    );
    let per_stream = (after.saturating_sub(before)) as f64 / STREAMS as f64;
    println!(
        "| {name} | RSS before / with {STREAMS} open streams (MiB) | {:.1} / {:.1} |",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!("| {name} | memory per open stream (KiB) | {per_stream:.1} |");

    drop(opened);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server =
        ServerProcess::start_program(&interop_program("SPIRE_UPSTREAM_SERVER"), &server_dir, "");
    server.create_uid_entry(ALIAS, WORKLOAD, current_uid(), &[]);

    println!("| agent | measure | value |");
    println!("|---|---|---|");
    for (name, program) in [
        ("spire-rs", binary("spire-agent")),
        ("upstream v1.13.3", interop_program("SPIRE_UPSTREAM_AGENT")),
    ] {
        let mut agent = start_agent(&dir.path().join(name.replace(' ', "-")), &server, &program);
        measure(&runtime, name, &agent);
        agent.stop();
    }
}
