//! How the agent scales with the number of entries it holds, against the real binaries
//! (release build), measured from outside as a workload and an operator see them:
//!
//! - FetchX509SVID and FetchJWTSVID calls/s (new connection per call) with 1 entry on the
//!   agent, then on two agents side by side, one with 1 entry and one with 100,001 (the
//!   others for uids no process has), measured in turn so the host's noise falls on both:
//!   the selector index keeps them close. Each row also gives the agent's CPU per call;
//! - `entry create` → SVID on a watching workload, p50/p99, at the default 5 s sync
//!   interval: the server's sync hint starts the agent's sync at once;
//! - a fresh agent's first sync at 10,000 and 100,000 entries (the agent logs how long the
//!   entries took, server time plus transfer, and the whole sync with minting), and the
//!   steady-state sync with nothing changed.
//!
//! Run with `cargo build --release --bins && cargo bench -p spire-e2e --bench agent_scale`
//! (or `scripts/bench.sh`). `SPIRE_BENCH_QUICK=1` divides the sizes by ten.
//! `SPIRE_BENCH_PROGRAMS=upstream` runs upstream v1.13.3's server and agent instead (from
//! `. target/interop-deps.env`), without the fresh-agent table (it reads our agent's log).
//! `SPIRE_BENCH_FETCH_ONLY=1` stops after the 1-entry Workload API rows (to interleave
//! ours and upstream's on a busy host); `SPIRE_BENCH_NO_FRESH=1` skips the fresh agents.

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
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use spire_proto::workload::{JwtsvidRequest, X509svidRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

const TRUST_DOMAIN: &str = "example.org";
const AGENT_ALIAS: &str = "spiffe://example.org/bench-agent";
/// The agent that keeps one entry while the other gets 100,000.
const ONE_ENTRY_ALIAS: &str = "spiffe://example.org/bench-agent-one";

/// Whether upstream's binaries are measured instead of ours.
fn upstream() -> bool {
    std::env::var("SPIRE_BENCH_PROGRAMS").is_ok_and(|v| v == "upstream")
}

fn program(name: &str) -> PathBuf {
    match (upstream(), name) {
        (true, "spire-server") => interop_program("SPIRE_UPSTREAM_SERVER"),
        (true, _) => interop_program("SPIRE_UPSTREAM_AGENT"),
        (false, _) => binary(name),
    }
}

/// Whether only the 1-entry Workload API rows are measured.
fn fetch_only() -> bool {
    std::env::var_os("SPIRE_BENCH_FETCH_ONLY").is_some()
}

/// Whether the fresh-agent rows are skipped.
fn no_fresh() -> bool {
    upstream() || std::env::var_os("SPIRE_BENCH_NO_FRESH").is_some()
}

fn quick() -> bool {
    std::env::var_os("SPIRE_BENCH_QUICK").is_some()
}

/// Divides `n` by ten in quick mode.
fn size(n: usize) -> usize {
    if quick() { n / 10 } else { n }
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

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    X509,
    Jwt,
}

/// One call on a new connection; returns how many SVIDs it got.
async fn call_once(socket: &Path, call: Call) -> usize {
    let mut client = SpiffeWorkloadApiClient::new(connect(socket).await);
    match call {
        Call::X509 => {
            let mut stream = client
                .fetch_x509svid(request(X509svidRequest {}))
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap().svids.len()
        }
        Call::Jwt => {
            let response = client
                .fetch_jwtsvid(request(JwtsvidRequest {
                    audience: vec!["bench".to_owned()],
                    spiffe_id: String::new(),
                }))
                .await
                .unwrap();
            response.into_inner().svids.len()
        }
    }
}

/// `clients` concurrent workloads calling in a loop for `duration`; the calls made and the
/// time they took.
async fn load(socket: &Path, call: Call, clients: usize, duration: Duration) -> (usize, Duration) {
    let socket = Arc::new(socket.to_path_buf());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let socket = socket.clone();
        tasks.spawn(async move {
            let mut calls = 0_usize;
            while started.elapsed() < duration {
                assert_eq!(call_once(&socket, call).await, 1, "one entry matches");
                calls += 1;
            }
            calls
        });
    }
    let mut total = 0;
    while let Some(calls) = tasks.join_next().await {
        total += calls.unwrap();
    }
    (total, started.elapsed())
}

/// CPU time (user and system, of all its threads, exited ones included) `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // In USER_HZ, which Linux fixes at 100 on x86_64 and aarch64 whatever the kernel's HZ.
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Registers entries `range` under the agent alias, each for a uid no process has, through
/// `entry create -data` 1000 at a time.
fn create_entries(server: &ServerProcess, dir: &Path, range: std::ops::Range<usize>) {
    for first in range.clone().step_by(1000) {
        let entries: Vec<serde_json::Value> = (first..range.end.min(first + 1000))
            .map(|i| {
                serde_json::json!({
                    "spiffe_id": format!("spiffe://{TRUST_DOMAIN}/other/{i}"),
                    "parent_id": AGENT_ALIAS,
                    "selectors": [{"type": "unix", "value": format!("uid:{}", 1_000_000 + i)}],
                })
            })
            .collect();
        let file = dir.join("entries.json");
        std::fs::write(&file, serde_json::json!({ "entries": entries }).to_string()).unwrap();
        server.cli_ok(&["entry", "create", "-data", file.to_str().unwrap()]);
    }
}

/// One "synced with the server" line of an agent log (log_level DEBUG).
#[derive(Debug, Clone, Copy)]
struct SyncLine {
    fetched: usize,
    total: usize,
    entries_ms: f64,
    total_ms: f64,
}

/// The agent's own time (ms) for each named hint it applied: fetching the named entries,
/// and the whole hinted sync with minting (log_level DEBUG).
fn named_sync_ms(agent: &AgentProcess) -> Vec<(f64, f64)> {
    let field = |line: &str, name: &str| -> Option<f64> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split_whitespace().next()?.parse().ok()
    };
    agent
        .log()
        .lines()
        .filter(|l| l.contains("applied the server's named changes"))
        .filter_map(|l| Some((field(l, "entries_ms")?, field(l, "total_ms")?)))
        .collect()
}

/// Median agent time of the named hints applied after the first `skip`, as a table row.
fn named_sync_row(agent: &AgentProcess, skip: usize, entries: usize) -> String {
    let mut fetch: Vec<f64> = Vec::new();
    let mut total: Vec<f64> = Vec::new();
    for (f, t) in named_sync_ms(agent).into_iter().skip(skip) {
        fetch.push(f);
        total.push(t);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    format!(
        "| {entries} | {} | {:.1} | {:.1} |",
        fetch.len(),
        median(&mut fetch),
        median(&mut total)
    )
}

fn sync_lines(agent: &AgentProcess) -> Vec<SyncLine> {
    let field = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split_whitespace().next().map(str::to_owned)
    };
    agent
        .log()
        .lines()
        .filter(|l| l.contains("synced with the server"))
        .filter_map(|l| {
            Some(SyncLine {
                fetched: field(l, "entries_fetched")?.parse().ok()?,
                total: field(l, "entries_total")?.parse().ok()?,
                entries_ms: field(l, "entries_ms")?.parse().ok()?,
                total_ms: field(l, "total_ms")?.parse().ok()?,
            })
        })
        .collect()
}

fn wait_sync(
    agent: &AgentProcess,
    limit: Duration,
    wanted: impl Fn(&SyncLine) -> bool,
) -> SyncLine {
    let start = Instant::now();
    loop {
        if let Some(line) = sync_lines(agent).into_iter().find(|l| wanted(l)) {
            return line;
        }
        assert!(start.elapsed() < limit, "no awaited sync:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_config(dir: &Path, server: &ServerProcess) -> (PathBuf, PathBuf) {
    let socket = dir.join("agent.sock");
    let data = dir.join("agent-data");
    let config = format!(
        r#"agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    trust_domain = "{TRUST_DOMAIN}"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    insecure_bootstrap = true
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

fn start_agent(dir: &Path, server: &ServerProcess, alias: &str) -> AgentProcess {
    std::fs::create_dir_all(dir).unwrap();
    let token = server.generate_join_token(alias);
    let (config, socket) = agent_config(dir, server);
    AgentProcess::start_program_with_config(
        &program("spire-agent"),
        dir,
        &config,
        socket,
        Some(&token),
    )
}

/// One measured row: calls/s of `clients` workloads on `agent`, with the CPU time the agent
/// and the server spent per call meanwhile (the server's is work the calls did not ask for:
/// the agents' syncs, the server's own timers).
struct Row {
    rate: f64,
    agent_us: f64,
    server_us: f64,
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    server: &ServerProcess,
    agent: &AgentProcess,
    call: Call,
    clients: usize,
) -> Row {
    let duration = Duration::from_secs(if quick() { 2 } else { 5 });
    let (agent_pid, server_pid) = (agent.pid().unwrap(), server.pid().unwrap());
    let socket = &agent.socket_path;
    runtime.block_on(load(socket, call, clients, Duration::from_millis(300)));
    let cpu = (cpu_time(agent_pid), cpu_time(server_pid));
    let (calls, took) = runtime.block_on(load(socket, call, clients, duration));
    let per_call =
        |pid: u32, before: Duration| (cpu_time(pid) - before).as_secs_f64() * 1e6 / calls as f64;
    Row {
        rate: calls as f64 / took.as_secs_f64(),
        agent_us: per_call(agent_pid, cpu.0),
        server_us: per_call(server_pid, cpu.1),
    }
}

const CALLS: [(Call, &str); 2] = [(Call::X509, "FetchX509SVID"), (Call::Jwt, "FetchJWTSVID")];
const CLIENTS: [usize; 3] = [1, 16, 64];

/// Calls/s rows of one agent.
fn fetch_rows(
    runtime: &tokio::runtime::Runtime,
    server: &ServerProcess,
    agent: &AgentProcess,
    entries: usize,
) {
    for (call, name) in CALLS {
        for clients in CLIENTS {
            let row = measure(runtime, server, agent, call, clients);
            println!(
                "| {name} | {entries} | {clients} | {:.0} | {:.0} | {:.1} |",
                row.rate, row.agent_us, row.server_us
            );
        }
    }
}

/// The same rows on an agent with one entry and on one with many, measured in turn (one,
/// many, one, many) so that what else the host does falls on both alike.
fn paired_rows(
    runtime: &tokio::runtime::Runtime,
    server: &ServerProcess,
    one: &AgentProcess,
    many: &AgentProcess,
) {
    let both = |rows: &[Row], f: fn(&Row) -> f64, digits: usize| {
        rows.iter()
            .map(|r| format!("{:.*}", digits, f(r)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (call, name) in CALLS {
        for clients in CLIENTS {
            let (mut ones, mut manys) = (Vec::new(), Vec::new());
            for _ in 0..2 {
                ones.push(measure(runtime, server, one, call, clients));
                manys.push(measure(runtime, server, many, call, clients));
            }
            let total = |rows: &[Row]| rows.iter().map(|r| r.rate).sum::<f64>();
            println!(
                "| {name} | {clients} | {} | {} | {:+.0}% | {} | {} |",
                both(&ones, |r| r.rate, 0),
                both(&manys, |r| r.rate, 0),
                (total(&manys) / total(&ones) - 1.0) * 100.0,
                both(&ones, |r| r.agent_us, 0),
                both(&manys, |r| r.agent_us, 0),
            );
        }
    }
}

/// One round: a workload holds a stream; an entry for it is created and later deleted (so
/// the load rows keep seeing one SVID); returns create → update.
fn watch_latency(
    runtime: &tokio::runtime::Runtime,
    server: &ServerProcess,
    socket: &Path,
    parent: &str,
    uid: u32,
    id: &str,
) -> Duration {
    runtime.block_on(async {
        let mut client = SpiffeWorkloadApiClient::new(connect(socket).await);
        let mut stream = client
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        let start = Instant::now();
        let created = server.cli_json(&[
            "entry",
            "create",
            "-parentID",
            parent,
            "-spiffeID",
            id,
            "-selector",
            &format!("unix:uid:{uid}"),
        ]);
        let elapsed = loop {
            let update = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("no update within 60 s")
                .unwrap()
                .unwrap();
            if update.svids.iter().any(|s| s.spiffe_id == id) {
                break start.elapsed();
            }
        };
        let entry_id = created["results"][0]["entry"]["id"].as_str().unwrap();
        server.cli_ok(&["entry", "delete", "-entryID", entry_id]);
        loop {
            let update = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("no update within 60 s")
                .unwrap()
                .unwrap();
            if update.svids.len() == 1 {
                break;
            }
        }
        elapsed
    })
}

/// A fresh agent's first sync with `entries` authorized entries, as a table row.
fn fresh_agent_row(server: &ServerProcess, dir: &Path, entries: usize) -> String {
    let started = Instant::now();
    let mut agent = start_agent(dir, server, AGENT_ALIAS);
    let first = wait_sync(&agent, Duration::from_secs(600), |l| l.total >= entries);
    let wall = started.elapsed();
    let steady = wait_sync(&agent, Duration::from_secs(60), |l| {
        l.fetched == 0 && l.total == first.total
    });
    agent.stop();
    format!(
        "| {} | {:.1} | {:.1} | {} | {:.2} |",
        first.total,
        first.entries_ms,
        first.total_ms,
        ms(wall),
        steady.entries_ms
    )
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
    let server = ServerProcess::start_program(
        &program("spire-server"),
        dir.path(),
        "ratelimit { signing = false }",
    );
    println!(
        "Programs: {}",
        if upstream() {
            "upstream v1.13.3"
        } else {
            "ours"
        }
    );
    println!();
    let uid = current_uid();
    let agent = start_agent(&dir.path().join("agent"), &server, AGENT_ALIAS);
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(30));
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/bench/workload", uid, &[]);
    agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(30));

    let small = size(10_000);
    let large = size(100_000);

    println!("### Workload API with 1 entry on the agent (new connection per call)");
    println!();
    println!(
        "| call | entries | concurrent clients | calls/s | agent CPU µs/call | server CPU µs/call |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    fetch_rows(&runtime, &server, &agent, 1);
    if fetch_only() {
        return;
    }
    let latency_small = (0..if quick() { 5 } else { 20 })
        .map(|round| {
            let id = format!("spiffe://{TRUST_DOMAIN}/late/one/{round}");
            watch_latency(&runtime, &server, &agent.socket_path, AGENT_ALIAS, uid, &id)
        })
        .collect::<Vec<_>>();

    let named_small = (!upstream()).then(|| named_sync_row(&agent, 0, 1));
    let named_before_large = named_sync_ms(&agent).len();
    create_entries(&server, dir.path(), 0..small);
    let fresh_small = if no_fresh() {
        String::new()
    } else {
        fresh_agent_row(&server, &dir.path().join("fresh-small"), small + 1)
    };
    create_entries(&server, dir.path(), small..large);
    if upstream() {
        // Upstream's agent does not log its syncs this way: give it a few sync intervals.
        std::thread::sleep(Duration::from_secs(30));
    } else {
        wait_sync(&agent, Duration::from_secs(900), |l| l.total > large);
    }
    let one = start_agent(&dir.path().join("agent-one"), &server, ONE_ENTRY_ALIAS);
    one.cli_eventually(&["healthcheck"], Duration::from_secs(30));
    server.create_uid_entry(ONE_ENTRY_ALIAS, "spiffe://example.org/bench/one", uid, &[]);
    one.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(30));
    println!();
    println!(
        "### Workload API: an agent with 1 entry and one with {} entries, measured in turn \
         (one, many, one, many)",
        large + 1
    );
    println!();
    println!(
        "| call | concurrent clients | calls/s, 1 entry | calls/s, {} entries | difference | \
         agent CPU µs/call, 1 entry | agent CPU µs/call, {} entries |",
        large + 1,
        large + 1
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    paired_rows(&runtime, &server, &one, &agent);
    println!();

    let named_before_rounds = named_sync_ms(&agent).len().max(named_before_large);
    let latency_large = (0..if quick() { 5 } else { 20 })
        .map(|round| {
            let id = format!("spiffe://{TRUST_DOMAIN}/late/many/{round}");
            watch_latency(&runtime, &server, &agent.socket_path, AGENT_ALIAS, uid, &id)
        })
        .collect::<Vec<_>>();
    let named_large = (!upstream()).then(|| named_sync_row(&agent, named_before_rounds, large + 1));
    println!(
        "### Entry create → SVID on a watching workload (CLI included, default 5 s sync interval)"
    );
    println!();
    println!("| entries on the agent | rounds | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|");
    for (entries, mut times) in [(1, latency_small), (large + 1, latency_large)] {
        times.sort();
        println!(
            "| {entries} | {} | {} | {} | {} |",
            times.len(),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap())
        );
    }
    println!();
    if let (Some(small), Some(large)) = (named_small, named_large) {
        println!("### The agent's time per named hint (create and delete rounds above), medians");
        println!();
        println!("| entries on the agent | named hints | FetchEntries ms | whole hinted sync ms |");
        println!("|---:|---:|---:|---:|");
        println!("{small}");
        println!("{large}");
        println!();
    }

    if no_fresh() {
        return;
    }
    let fresh_large = fresh_agent_row(&server, &dir.path().join("fresh-large"), large + 1);
    println!("### A fresh agent's first sync, and a sync with nothing changed");
    println!();
    println!(
        "| entries | entries fetched in ms | first sync ms (with up to 1000 SVIDs minted) | start → synced ms | unchanged sync, entries ms |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!("{fresh_small}");
    println!("{fresh_large}");
    println!();
}
