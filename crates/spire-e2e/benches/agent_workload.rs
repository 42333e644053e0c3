//! Workload API benchmarks against the real binaries (release build): a `spire-server` and a
//! `spire-agent` on a temp dir, measured from outside as a workload sees them.
//!
//! - FetchX509SVID time to first response (connect, attest, first message) with 1, 16 and
//!   256 concurrent clients, each call on a new connection as a starting workload makes it;
//! - agent RSS with 1k and 10k cached X509-SVIDs;
//! - time from `spire-server entry create` returning to a watching workload holding the SVID.
//!
//! Run with `scripts/bench.sh` or `cargo build --release --bins && cargo bench -p spire-e2e
//! --bench agent_workload`. Prints markdown tables. `SPIRE_BENCH_QUICK=1` shortens it.

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
use spire_e2e::{AgentProcess, ServerProcess};
use spire_proto::workload::X509svidRequest;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

const TRUST_DOMAIN: &str = "example.org";
const AGENT_ALIAS: &str = "spiffe://example.org/bench-agent";

fn quick() -> bool {
    std::env::var_os("SPIRE_BENCH_QUICK").is_some()
}

fn current_uid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Opens a new connection to the Workload API socket.
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

fn x509_request() -> tonic::Request<X509svidRequest> {
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// One workload start: connect, open FetchX509SVID, wait for the first response.
async fn fetch_once(socket: &Path) -> (Duration, usize) {
    let start = Instant::now();
    let mut client = SpiffeWorkloadApiClient::new(connect(socket).await);
    let mut stream = client
        .fetch_x509svid(x509_request())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    (start.elapsed(), first.svids.len())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Runs `clients` concurrent workloads, each fetching in a loop for `duration`.
async fn fetch_load(socket: &Path, clients: usize, duration: Duration) -> (Vec<Duration>, f64) {
    let socket = Arc::new(socket.to_path_buf());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let socket = socket.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let (latency, svids) = fetch_once(&socket).await;
                assert_eq!(svids, 1, "the workload matches exactly one entry");
                latencies.push(latency);
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (all, rate)
}

/// Resident set size of the process whose command line mentions `needle`, in MiB.
fn rss_mib_of(needle: &str) -> f64 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("spire-agent") && cmdline.contains(needle) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            {
                return kib / 1024.0;
            }
        }
    }
    panic!("no spire-agent process running with {needle}");
}

/// Registers `count` entries under the agent, `selector(i)` each, in batches through
/// `entry create -data`.
fn create_entries(
    server: &ServerProcess,
    dir: &Path,
    range: std::ops::Range<usize>,
    selector: impl Fn(usize) -> String,
) {
    let batch = 1000;
    for first in range.clone().step_by(batch) {
        let entries: Vec<serde_json::Value> = (first..range.end.min(first + batch))
            .map(|i| {
                let (kind, value) = selector(i)
                    .split_once(':')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .unwrap();
                serde_json::json!({
                    "spiffe_id": format!("spiffe://{TRUST_DOMAIN}/cached/{i}"),
                    "parent_id": AGENT_ALIAS,
                    "selectors": [{"type": kind, "value": value}],
                })
            })
            .collect();
        let file = dir.join("entries.json");
        std::fs::write(&file, serde_json::json!({ "entries": entries }).to_string()).unwrap();
        server.cli_ok(&["entry", "create", "-data", file.to_str().unwrap()]);
    }
}

/// Waits until the agent's RSS has not grown for `settle` (the SVIDs are minted in the
/// syncs after the entries appear), then returns it.
fn settled_rss(needle: &str, settle: Duration, limit: Duration) -> f64 {
    let start = Instant::now();
    let mut last = rss_mib_of(needle);
    let mut stable_since = Instant::now();
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_mib_of(needle);
        if now > last + 0.25 {
            stable_since = Instant::now();
        }
        last = now;
        if stable_since.elapsed() >= settle {
            break;
        }
    }
    last
}

fn agent_config(dir: &Path, server: &ServerProcess, cache_size: usize) -> (PathBuf, PathBuf) {
    let socket = dir.join("agent.sock");
    let data = dir.join("agent-data");
    let config = format!(
        r#"agent {{
    data_dir = "{data}"
    log_level = "INFO"
    trust_domain = "{TRUST_DOMAIN}"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    insecure_bootstrap = true
    x509_svid_cache_max_size = {cache_size}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "memory" {{ plugin_data {{}} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
        data = data.display(),
        port = server.port,
        socket = socket.display(),
    );
    let path = dir.join("agent.conf");
    std::fs::write(&path, config).unwrap();
    (path, socket)
}

fn start_agent(dir: &Path, server: &ServerProcess, cache_size: usize) -> AgentProcess {
    let token = server.cli_ok(&["token", "generate", "-spiffeID", AGENT_ALIAS]);
    let token = token.trim().strip_prefix("Token: ").unwrap().to_owned();
    let (config, socket) = agent_config(dir, server, cache_size);
    let agent = AgentProcess::start_with_config(dir, &config, socket, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(30));
    agent
}

fn fetch_table(runtime: &tokio::runtime::Runtime, socket: &Path) {
    let duration = if quick() {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(8)
    };
    println!("### FetchX509SVID, time to first response (new connection per call)");
    println!();
    println!("| concurrent clients | calls | calls/s | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for clients in [1, 16, 256] {
        // Warm up connections and the attestor's caches.
        runtime.block_on(fetch_load(socket, clients, Duration::from_millis(500)));
        let (latencies, rate) = runtime.block_on(fetch_load(socket, clients, duration));
        println!(
            "| {clients} | {} | {rate:.0} | {} | {} | {} |",
            latencies.len(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap()),
        );
    }
    println!();
}

fn rss_table(dir: &Path, server: &ServerProcess, agent: &AgentProcess, uid: u32, existing: usize) {
    let needle = agent.config_path.to_str().unwrap().to_owned();
    let sizes: &[usize] = if quick() {
        &[100, 1000]
    } else {
        &[1000, 10_000]
    };
    println!("### Agent memory with cached X509-SVIDs");
    println!();
    println!("| cached SVIDs | agent RSS MiB |");
    println!("|---:|---:|");
    let rss = settled_rss(&needle, Duration::from_secs(6), Duration::from_secs(30));
    println!("| {existing} | {rss:.1} |");
    let mut created = 0;
    for &size in sizes {
        // Each entry gets a selector no process has, so only the cache holds its SVID.
        create_entries(server, dir, created..size, |i| {
            format!("unix:uid:{}", uid + 100_000 + i as u32)
        });
        created = size;
        let rss = settled_rss(&needle, Duration::from_secs(12), Duration::from_secs(180));
        println!("| {} | {rss:.1} |", existing + size);
    }
    println!();
}

/// `entry create` for a second identity of a workload that holds a FetchX509SVID stream,
/// until the stream delivers it.
fn create_to_svid_table(
    runtime: &tokio::runtime::Runtime,
    server: &ServerProcess,
    socket: &Path,
    uid: u32,
) -> usize {
    let rounds = if quick() { 2 } else { 6 };
    let mut times = Vec::new();
    for round in 0..rounds {
        let id = format!("spiffe://{TRUST_DOMAIN}/late/{round}");
        let elapsed = runtime.block_on(async {
            let mut client = SpiffeWorkloadApiClient::new(connect(socket).await);
            let mut stream = client
                .fetch_x509svid(x509_request())
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap();
            let start = Instant::now();
            server.cli_ok(&[
                "entry",
                "create",
                "-parentID",
                AGENT_ALIAS,
                "-spiffeID",
                &id,
                "-selector",
                &format!("unix:uid:{uid}"),
                "-selector",
                &format!("unix:gid:{}", current_gid()),
            ]);
            loop {
                let update = tokio::time::timeout(Duration::from_secs(60), stream.message())
                    .await
                    .expect("no update within 60 s")
                    .unwrap()
                    .unwrap();
                if update.svids.iter().any(|s| s.spiffe_id == id) {
                    break start.elapsed();
                }
            }
        });
        times.push(elapsed);
    }
    times.sort();
    println!("### Entry create to SVID on a watching workload (default 5 s sync interval)");
    println!();
    println!("| rounds | min ms | p50 ms | max ms |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {rounds} | {} | {} | {} |",
        ms(times[0]),
        ms(percentile(&times, 0.5)),
        ms(*times.last().unwrap())
    );
    println!();
    rounds
}

fn current_gid() -> u32 {
    let out = std::process::Command::new("id").arg("-g").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing and must
    // not start processes.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let uid = current_uid();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = start_agent(&agent_dir, &server, 20_000);
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        AGENT_ALIAS,
        "-spiffeID",
        "spiffe://example.org/bench/workload",
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(30));

    fetch_table(&runtime, &agent.socket_path);
    let late = create_to_svid_table(&runtime, &server, &agent.socket_path, uid);
    rss_table(dir.path(), &server, &agent, uid, 1 + late);
}
