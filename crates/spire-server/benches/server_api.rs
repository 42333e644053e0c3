//! Server API throughput and latency on a real in-process server: SQL datastore (SQLite in a
//! temp dir by default, or a fresh PostgreSQL or MySQL/MariaDB database, see
//! `support/mod.rs` and `SPIRE_BENCH_DATABASE`), in-memory key manager, real CA manager and
//! authorized-entry index, and the gRPC service implementations called directly (and over a
//! loopback gRPC server where noted).
//!
//! Run with `cargo bench -p spire-server --bench server_api` (or `scripts/bench.sh`); prints
//! markdown tables to stdout and progress to stderr. On another engine:
//! `SPIRE_BENCH_DATABASE=postgres SPIRE_TEST_POSTGRES='dbname=spire ...' cargo bench ...`.
//! `SPIRE_BENCH_ONLY=create` runs scenario 3 alone, `SPIRE_BENCH_ONLY=sync` scenario 2 alone
//! (without the real binary's memory).
//! Scenarios:
//!
//! 1. `svid.v1.BatchNewX509SVID`: SVIDs/s from 2 concurrent callers, batches of 100 CSRs,
//!    against this machine's ECDSA P-256 ceiling measured with `openssl speed`.
//! 2. `entry.v1.GetAuthorizedEntries` / `SyncAuthorizedEntries` latency for agents with 1k,
//!    10k and 100k authorized entries.
//! 3. `entry.v1.BatchCreateEntry` entries/s, batches of 50, 1 and 2 callers.
//! 4. With the 111k entries of scenario 2 in the datastore: the authorized index's full
//!    reload, and the resident memory of the real `spire-server` binary (release build,
//!    `SPIRE_BENCH_SERVER_BIN` or `target/release/spire-server`) once it has loaded them.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_proto::spire::api::server::entry::v1::entry_server::{Entry, EntryServer};
use spire_proto::spire::api::server::svid::v1 as svidpb;
use spire_proto::spire::api::server::svid::v1::svid_server::{Svid, SvidServer};
use spire_proto::spire::api::types;
use spire_server::api::entry::EntryApi;
use spire_server::api::svid::SvidApi;
use spire_server::api::{ApiContext, Caller};
use spire_server::datastore::RegistrationEntry;
use tonic::Request;

mod support;
use support::server::{
    Server, ServerThread, TD, add_agent, admin_caller, agent_caller, agent_id, loopback_incoming,
    on_own_thread, req, server, wire_id,
};
use support::stats::{ms, summary};
use support::{BenchDb, Engine};

/// Concurrent callers; the bench machine has 2 cores.
const CALLERS: usize = 2;
/// CSRs per BatchNewX509SVID call (an agent sends all its due SVIDs in one call).
const SVID_BATCH: usize = 100;
/// How long each SVID scenario runs after its warm-up.
const SVID_RUN: Duration = Duration::from_secs(6);
/// Set to run every scenario at a tenth of its size (a smoke run, e.g. in a debug build).
const QUICK_ENV: &str = "SPIRE_BENCH_QUICK";
/// Set to `create` to run only scenario 3 (BatchCreateEntry), e.g. to compare builds.
const ONLY_ENV: &str = "SPIRE_BENCH_ONLY";
/// Upstream's CLI sends `entry create -data` files in batches of this many.
const ENTRY_BATCH: usize = 50;
/// Batches per caller in the BatchCreateEntry scenarios.
const ENTRY_BATCHES_PER_CALLER: usize = 60;
/// Entries written per datastore transaction when populating the sync scenario.
const POPULATE_CHUNK: usize = 1000;
/// Authorized-entry counts of the sync scenario, one agent each.
const SYNC_SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Full index reloads timed once the sync scenario's entries are in the datastore.
const RELOADS: usize = 3;
/// Overrides the `spire-server` binary whose memory is measured.
const SERVER_BIN_ENV: &str = "SPIRE_BENCH_SERVER_BIN";
/// How long the real server may take to load the datastore and open its admin socket.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether this is a smoke run (`SPIRE_BENCH_QUICK` set).
fn quick() -> bool {
    std::env::var_os(QUICK_ENV).is_some()
}

/// `full` normally, a tenth of it (at least 1) in a smoke run.
fn scaled(full: usize) -> usize {
    if quick() { (full / 10).max(1) } else { full }
}

/// Whether only the BatchCreateEntry scenario runs (`SPIRE_BENCH_ONLY=create`).
fn only_create() -> bool {
    std::env::var(ONLY_ENV).is_ok_and(|v| v == "create")
}

/// Whether only the authorized-entries scenario runs (`SPIRE_BENCH_ONLY=sync`).
fn only_sync() -> bool {
    std::env::var(ONLY_ENV).is_ok_and(|v| v == "sync")
}

fn svid_run() -> Duration {
    if quick() { SVID_RUN / 6 } else { SVID_RUN }
}

// ---------------------------------------------------------------------------------------
// Server context
// ---------------------------------------------------------------------------------------

/// A workload entry as `spire-server entry create` would send it.
fn wire_entry(parent: &SpiffeId, tag: &str, n: usize) -> types::Entry {
    types::Entry {
        spiffe_id: wire_id(&format!("/workload/{tag}/{n}")),
        parent_id: wire_id(parent.path()),
        selectors: vec![
            types::Selector {
                r#type: "k8s".into(),
                value: "ns:default".into(),
            },
            types::Selector {
                r#type: "k8s".into(),
                value: format!("sa:{tag}-{n}"),
            },
        ],
        dns_names: vec![format!("{tag}-{n}.default.svc")],
        ..types::Entry::default()
    }
}

/// The same entry as a datastore record, for bulk population.
fn record(parent: &SpiffeId, tag: &str, n: usize) -> RegistrationEntry {
    RegistrationEntry {
        spiffe_id: format!("spiffe://{TD}/workload/{tag}/{n}"),
        parent_id: parent.to_string(),
        selectors: vec![
            Selector {
                kind: "k8s".into(),
                value: "ns:default".into(),
            },
            Selector {
                kind: "k8s".into(),
                value: format!("sa:{tag}-{n}"),
            },
        ],
        dns_names: vec![format!("{tag}-{n}.default.svc")],
        ..RegistrationEntry::default()
    }
}

/// Creates entries through the API as an admin and returns their IDs; panics on any
/// per-entry failure, since a bench over failed creates measures nothing.
async fn create_entries(entry_api: &EntryApi, entries: Vec<types::Entry>) -> Vec<String> {
    let results = entry_api
        .batch_create_entry(req(
            admin_caller(),
            entrypb::BatchCreateEntryRequest {
                entries,
                output_mask: None,
            },
        ))
        .await
        .expect("BatchCreateEntry")
        .into_inner()
        .results;
    results
        .into_iter()
        .map(|r| {
            let code = r.status.as_ref().map_or(-1, |s| s.code);
            assert_eq!(code, 0, "entry not created: {:?}", r.status);
            r.entry.expect("created entry").id
        })
        .collect()
}

/// Serves the SVID and entry services on a loopback port, every request carrying `caller`
/// as the auth layer would leave it (no TLS: this measures the gRPC path, not the handshake).
async fn serve(ctx: Arc<ApiContext>, caller: Caller) -> SocketAddr {
    let (addr, incoming) = loopback_incoming().await;
    let inject = move |mut request: Request<()>| {
        request.extensions_mut().insert(caller.clone());
        Ok(request)
    };
    let svid = SvidServer::with_interceptor(SvidApi::new(ctx.clone()), inject.clone());
    let entry = EntryServer::with_interceptor(EntryApi::new(ctx), inject);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svid)
            .add_service(entry)
            .serve_with_incoming(incoming),
    );
    addr
}

/// [`serve`] on a thread of its own, named `sync-server` (see [`on_own_thread`]).
fn serve_on_own_thread(ctx: Arc<ApiContext>, caller: Caller) -> (SocketAddr, ServerThread) {
    on_own_thread("sync-server", move || serve(ctx, caller))
}

// ---------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// 1. BatchNewX509SVID
// ---------------------------------------------------------------------------------------

/// ECDSA P-256 sign/s and verify/s of one core, from `openssl speed`.
fn openssl_ecdsa_p256() -> Option<(f64, f64)> {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", "5", "ecdsap256"])
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.contains("nistp256"))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    match numbers.as_slice() {
        [.., sign, verify] => Some((*sign, *verify)),
        _ => None,
    }
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Per caller: the agent's entry IDs and one pre-made CSR per entry.
struct SvidCaller {
    agent: SpiffeId,
    params: Vec<svidpb::NewX509svidParams>,
}

async fn svid_setup(server: &Server) -> Vec<SvidCaller> {
    let entry_api = EntryApi::new(server.ctx.clone());
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let agent = agent_id(&format!("svid-agent-{c}"));
        add_agent(server, &agent).await;
        let entries = (0..SVID_BATCH)
            .map(|n| wire_entry(&agent, &format!("svid{c}"), n))
            .collect();
        let ids = create_entries(&entry_api, entries).await;
        let params = ids
            .into_iter()
            .map(|entry_id| {
                let key = PrivateKey::generate(KeyType::EcP256).unwrap();
                svidpb::NewX509svidParams {
                    entry_id,
                    csr: spire_core::x509::csr_der(&key).unwrap(),
                }
            })
            .collect();
        callers.push(SvidCaller { agent, params });
    }
    server.ctx.index.refresh().await.expect("index refresh");
    callers
}

fn check_svids(response: &svidpb::BatchNewX509svidResponse) -> usize {
    for result in &response.results {
        let code = result.status.as_ref().map_or(-1, |s| s.code);
        assert_eq!(code, 0, "SVID not signed: {:?}", result.status);
    }
    response.results.len()
}

/// Runs `call` in a loop on every caller concurrently for `SVID_RUN` (after a short
/// warm-up); returns SVIDs/s over all callers.
async fn svids_per_second<F, Fut>(callers: &[SvidCaller], call: F) -> f64
where
    F: Fn(usize, SpiffeId, Vec<svidpb::NewX509svidParams>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let warm_up = Instant::now() + Duration::from_millis(500);
    let deadline = warm_up + svid_run();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, caller) in callers.iter().enumerate() {
        let call = call.clone();
        let agent = caller.agent.clone();
        let params = caller.params.clone();
        tasks.spawn(async move {
            while Instant::now() < warm_up {
                call(i, agent.clone(), params.clone()).await;
            }
            let started = Instant::now();
            let mut signed = 0;
            while Instant::now() < deadline {
                signed += call(i, agent.clone(), params.clone()).await;
            }
            (signed, started.elapsed())
        });
    }
    let mut rate = 0.0;
    while let Some(done) = tasks.join_next().await {
        let (signed, elapsed) = done.expect("caller task");
        rate += signed as f64 / elapsed.as_secs_f64();
    }
    rate
}

async fn bench_svid() -> Vec<(String, f64)> {
    eprintln!("svid: setting up");
    let server = server("svid").await;
    let callers = svid_setup(&server).await;
    let mut rows = Vec::new();

    eprintln!("svid: in-process handler");
    let api = Arc::new(SvidApi::new(server.ctx.clone()));
    let in_process = svids_per_second(&callers, move |_, agent, params| {
        let api = api.clone();
        async move {
            let response = api
                .batch_new_x509svid(req(
                    agent_caller(&agent),
                    svidpb::BatchNewX509svidRequest { params },
                ))
                .await
                .expect("BatchNewX509SVID")
                .into_inner();
            check_svids(&response)
        }
    })
    .await;
    rows.push(("handler, in-process".to_owned(), in_process));

    eprintln!("svid: loopback gRPC");
    let mut clients = Vec::new();
    for caller in &callers {
        let addr = serve(server.ctx.clone(), agent_caller(&caller.agent)).await;
        let client = svidpb::svid_client::SvidClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        clients.push(client);
    }
    let clients = Arc::new(clients);
    let grpc = svids_per_second(&callers, move |i, _, params| {
        let mut client = clients[i].clone();
        async move {
            let response = client
                .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params })
                .await
                .expect("BatchNewX509SVID over gRPC")
                .into_inner();
            check_svids(&response)
        }
    })
    .await;
    rows.push(("loopback gRPC (h2c, no TLS)".to_owned(), grpc));
    server.db.remove().await;
    rows
}

// ---------------------------------------------------------------------------------------
// 2. Authorized entries
// ---------------------------------------------------------------------------------------

struct SyncRow {
    entries: usize,
    runs: usize,
    unary: (f64, f64, f64),
    /// The index walk alone (`AuthorizedIndex::authorized_entries`).
    lookup: (f64, f64, f64),
    /// The index walk plus converting every entry to its wire form.
    convert: (f64, f64, f64),
    revisions: (f64, f64, f64),
    full: (f64, f64, f64),
    /// The server thread's CPU time for the revisions-only exchange.
    revisions_cpu: (f64, f64, f64),
    /// The server thread's CPU time for the fresh agent's exchange.
    full_cpu: (f64, f64, f64),
}

/// Reads response pages until `more = false`; returns (revisions, entries) received.
async fn read_pages(
    responses: &mut tonic::Streaming<entrypb::SyncAuthorizedEntriesResponse>,
) -> (Vec<entrypb::EntryRevision>, usize) {
    let mut revisions = Vec::new();
    let mut entries = 0;
    loop {
        let page = responses
            .message()
            .await
            .expect("sync page")
            .expect("stream ended early");
        revisions.extend(page.entry_revisions);
        entries += page.entries.len();
        if !page.more {
            return (revisions, entries);
        }
    }
}

/// One SyncAuthorizedEntries exchange over gRPC. An up-to-date agent reads the revisions
/// and stops; a fresh one then asks for every entry. Returns how many entries it ended with.
async fn sync_once(
    client: &mut entrypb::entry_client::EntryClient<tonic::transport::Channel>,
    fetch_all: bool,
) -> usize {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(entrypb::SyncAuthorizedEntriesRequest::default())
        .await
        .unwrap();
    let mut responses = client
        .sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("SyncAuthorizedEntries")
        .into_inner();
    let (revisions, entries) = read_pages(&mut responses).await;
    if entries > 0 || !fetch_all {
        // Small sets come whole in the first response.
        return entries.max(revisions.len());
    }
    tx.send(entrypb::SyncAuthorizedEntriesRequest {
        output_mask: None,
        ids: revisions.into_iter().map(|r| r.id).collect(),
    })
    .await
    .unwrap();
    let (_, entries) = read_pages(&mut responses).await;
    entries
}

/// What the sync scenario measured, besides its rows.
struct SyncResult {
    rows: Vec<SyncRow>,
    /// Entries in the datastore.
    total: usize,
    /// Entries/s of the datastore's batch insert while populating.
    populate_rate: f64,
    /// Full index reload times (ms), in run order.
    reloads: Vec<f64>,
    /// The real binary on the same datastore, when it could be run.
    process: Option<ProcessMemory>,
}

async fn bench_sync() -> SyncResult {
    eprintln!("sync: populating the datastore");
    let server = server("sync").await;
    let sizes: Vec<usize> = SYNC_SIZES.iter().map(|&s| scaled(s)).collect();
    let total: usize = sizes.iter().sum();
    let started = Instant::now();
    for &size in &sizes {
        let agent = agent_id(&format!("sync-{size}"));
        add_agent(&server, &agent).await;
        let tag = format!("sync{size}");
        let mut n = 0;
        while n < size {
            let chunk = (n..(n + POPULATE_CHUNK).min(size))
                .map(|i| record(&agent, &tag, i))
                .collect();
            for result in server
                .ctx
                .datastore
                .create_or_return_registration_entries(chunk)
                .await
            {
                result.expect("populate entry");
            }
            n += POPULATE_CHUNK;
        }
    }
    let populate_rate = total as f64 / started.elapsed().as_secs_f64();

    eprintln!("sync: loading the index ({total} entries), {RELOADS} times");
    // A full reload is what `AuthorizedIndex::load` does at server start.
    let mut reloads = Vec::with_capacity(RELOADS);
    for _ in 0..RELOADS {
        let started = Instant::now();
        server.ctx.index.reload().await.expect("index reload");
        reloads.push(ms(started.elapsed()));
    }
    assert_eq!(
        server.ctx.index.entry_count(),
        total,
        "index misses entries"
    );

    let entry_api = EntryApi::new(server.ctx.clone());
    let mut rows = Vec::new();
    for &size in &sizes {
        eprintln!("sync: {size} entries");
        let agent = agent_id(&format!("sync-{size}"));
        let runs = match size {
            s if s <= 1_000 => 50,
            s if s <= 10_000 => 20,
            _ => 7,
        };

        let mut unary = Vec::with_capacity(runs);
        for _ in 0..=runs {
            let started = Instant::now();
            let response = entry_api
                .get_authorized_entries(req(
                    agent_caller(&agent),
                    entrypb::GetAuthorizedEntriesRequest { output_mask: None },
                ))
                .await
                .expect("GetAuthorizedEntries")
                .into_inner();
            unary.push(started.elapsed());
            assert_eq!(response.entries.len(), size, "wrong authorized entries");
        }
        unary.remove(0); // warm-up

        // Where the unary time goes: the index walk, then the walk plus the wire conversion.
        let mut lookup = Vec::with_capacity(runs);
        let mut convert = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let found = std::hint::black_box(server.ctx.index.authorized_entries(agent.as_str()));
            lookup.push(started.elapsed());
            assert_eq!(found.len(), size, "wrong index answer");
            drop(found);
            let started = Instant::now();
            let wire: Vec<types::Entry> = server
                .ctx
                .index
                .authorized_entries(agent.as_str())
                .iter()
                .map(|e| spire_server::api::convert::entry_to_proto(e).expect("convert"))
                .collect();
            std::hint::black_box(&wire);
            convert.push(started.elapsed());
        }

        let (addr, server_thread) = serve_on_own_thread(server.ctx.clone(), agent_caller(&agent));
        let mut client = entrypb::entry_client::EntryClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20);
        let mut revisions = Vec::with_capacity(runs);
        let mut full = Vec::with_capacity(runs);
        let mut revisions_cpu = Vec::with_capacity(runs);
        let mut full_cpu = Vec::with_capacity(runs);
        for run in 0..=runs {
            let (started, cpu) = (Instant::now(), server_thread.cpu());
            let got = sync_once(&mut client, false).await;
            let (elapsed, used) = (started.elapsed(), server_thread.cpu() - cpu);
            assert_eq!(got, size, "wrong revision count");
            if run > 0 {
                revisions.push(elapsed);
                revisions_cpu.push(used);
            }
            let (started, cpu) = (Instant::now(), server_thread.cpu());
            let got = sync_once(&mut client, true).await;
            let (elapsed, used) = (started.elapsed(), server_thread.cpu() - cpu);
            assert_eq!(got, size, "wrong synced entry count");
            if run > 0 {
                full.push(elapsed);
                full_cpu.push(used);
            }
        }
        rows.push(SyncRow {
            entries: size,
            runs,
            unary: summary(unary),
            lookup: summary(lookup),
            convert: summary(convert),
            revisions: summary(revisions),
            full: summary(full),
            revisions_cpu: summary(revisions_cpu),
            full_cpu: summary(full_cpu),
        });
    }
    let process = if only_sync() {
        None
    } else {
        eprintln!("sync: real spire-server on the same datastore");
        server_process_memory(&server.db).await
    };
    server.db.remove().await;
    SyncResult {
        rows,
        total,
        populate_rate,
        reloads,
        process,
    }
}

/// The real server's memory once it has loaded the datastore.
struct ProcessMemory {
    /// Spawn until the admin socket accepts (the index is loaded before the listeners open).
    start: Duration,
    /// `VmRSS` of `/proc/<pid>/status`, KiB, 2 s after the socket opened.
    rss_kib: u64,
    /// `VmHWM` (peak RSS), KiB, at the same moment.
    hwm_kib: u64,
}

fn server_binary() -> std::path::PathBuf {
    let path = std::env::var_os(SERVER_BIN_ENV).map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/release/spire-server")
        },
        std::path::PathBuf::from,
    );
    std::fs::canonicalize(&path).unwrap_or(path)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn hcl_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Starts the release `spire-server` on `db` (memory key manager, loopback port), waits until
/// its admin socket accepts, reads its memory and stops it. `None` (with the reason on
/// stderr) when the binary is missing or does not come up.
async fn server_process_memory(db: &BenchDb) -> Option<ProcessMemory> {
    let binary = server_binary();
    if !binary.is_file() {
        eprintln!(
            "sync: {} not found (cargo build --release --bins, or set {SERVER_BIN_ENV}); \
             no process memory measured",
            binary.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let socket = dir.path().join("api.sock");
    let config = format!(
        "server {{\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  \
         socket_path = {}\n  trust_domain = \"{TD}\"\n  data_dir = {}\n  \
         log_level = \"INFO\"\n}}\nplugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      \
         database_type = \"{}\"\n      connection_string = {}\n    }}\n  }}\n  \
         KeyManager \"memory\" {{\n    plugin_data {{}}\n  }}\n  \
         NodeAttestor \"join_token\" {{\n    plugin_data {{}}\n  }}\n}}\n",
        hcl_string(&socket.display().to_string()),
        hcl_string(&dir.path().join("data").display().to_string()),
        db.engine.database_type(),
        hcl_string(&db.connection_string),
    );
    let config_path = dir.path().join("server.conf");
    std::fs::write(&config_path, config).expect("write server.conf");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("server log");
    let started = Instant::now();
    let mut child = std::process::Command::new(&binary)
        .arg("run")
        .arg("-config")
        .arg(&config_path)
        .stdout(log.try_clone().expect("server log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let pid = child.id();
    let start = loop {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break Some(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "sync: spire-server exited ({status}) before it opened its socket:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            break None;
        }
        if started.elapsed() > SERVER_START_TIMEOUT {
            eprintln!("sync: spire-server did not open its socket in {SERVER_START_TIMEOUT:?}");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let memory = match start {
        Some(start) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            status_kib(pid, "VmRSS:")
                .zip(status_kib(pid, "VmHWM:"))
                .map(|(rss_kib, hwm_kib)| ProcessMemory {
                    start,
                    rss_kib,
                    hwm_kib,
                })
        }
        None => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    memory
}

// ---------------------------------------------------------------------------------------
// 3. BatchCreateEntry
// ---------------------------------------------------------------------------------------

/// Entries/s for `callers` concurrent admins each sending `ENTRY_BATCHES_PER_CALLER` (scaled)
/// batches of `ENTRY_BATCH` new entries; also returns per-call median and p99.
async fn entries_per_second(server: &Server, callers: usize, tag: &str) -> (f64, f64, f64) {
    let batches = scaled(ENTRY_BATCHES_PER_CALLER);
    let parent = agent_id(&format!("create-{tag}"));
    add_agent(server, &parent).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..callers {
        let api = EntryApi::new(server.ctx.clone());
        let parent = parent.clone();
        let tag = format!("{tag}{c}");
        tasks.spawn(async move {
            let mut calls = Vec::with_capacity(batches);
            for b in 0..batches {
                let entries = (0..ENTRY_BATCH)
                    .map(|n| wire_entry(&parent, &tag, b * ENTRY_BATCH + n))
                    .collect();
                let call = Instant::now();
                create_entries(&api, entries).await;
                calls.push(call.elapsed());
            }
            calls
        });
    }
    let mut calls = Vec::new();
    while let Some(done) = tasks.join_next().await {
        calls.extend(done.expect("caller task"));
    }
    let rate = (callers * batches * ENTRY_BATCH) as f64 / started.elapsed().as_secs_f64();
    let (median, p99, _) = summary(calls);
    (rate, median, p99)
}

async fn bench_create() -> Vec<(usize, (f64, f64, f64))> {
    eprintln!("create: sequential");
    let server = server("create").await;
    let sequential = entries_per_second(&server, 1, "seq").await;
    eprintln!("create: {CALLERS} concurrent callers");
    let concurrent = entries_per_second(&server, CALLERS, "par").await;
    server.db.remove().await;
    vec![(1, sequential), (CALLERS, concurrent)]
}

// ---------------------------------------------------------------------------------------

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    let cores = nproc();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if only_create() {
        let create_rows = runtime.block_on(bench_create());
        print_create(&create_rows);
        return;
    }
    if only_sync() {
        let sync = runtime.block_on(bench_sync());
        print_sync(&sync);
        return;
    }
    eprintln!("openssl speed -seconds 5 ecdsap256 (about 10 s)");
    let ceiling = openssl_ecdsa_p256();
    let svid_rows = runtime.block_on(bench_svid());
    let create_rows = runtime.block_on(bench_create());
    let sync = runtime.block_on(bench_sync());
    let engine = Engine::from_env();
    if quick() {
        println!("**Smoke run ({QUICK_ENV} set): sizes are a tenth of the real ones.**");
        println!();
    }
    println!(
        "Datastore: {} (`database_type = \"{}\"`, default pool settings).",
        engine.label(),
        engine.database_type()
    );
    println!();

    println!("### 1. BatchNewX509SVID ({CALLERS} concurrent callers, {SVID_BATCH} CSRs per call)");
    println!();
    match ceiling {
        Some((sign, verify)) => {
            let per_core = 1.0 / (1.0 / sign + 1.0 / verify);
            let machine = per_core * cores as f64;
            println!(
                "Ceiling: openssl ECDSA P-256 {sign:.0} sign/s, {verify:.0} verify/s per core; \
                 one SVID = one verify (CSR) + one sign = {per_core:.0}/s per core x {cores} cores \
                 = {machine:.0} SVIDs/s."
            );
            println!();
            println!("| path | SVIDs/s | % of ceiling | target >= 70% |");
            println!("|---|---:|---:|---|");
            for (path, rate) in &svid_rows {
                let ratio = rate / machine * 100.0;
                println!(
                    "| {path} | {rate:.0} | {ratio:.1}% | {} |",
                    met(ratio >= 70.0)
                );
            }
        }
        None => {
            println!("Ceiling: `openssl speed` not available; no ratio computed.");
            println!();
            println!("| path | SVIDs/s |");
            println!("|---|---:|");
            for (path, rate) in &svid_rows {
                println!("| {path} | {rate:.0} |");
            }
        }
    }

    print_sync(&sync);
    print_create(&create_rows);
    println!();
    println!(
        "### 4. {} entries in {}: full index reload and the real server's memory",
        sync.total,
        engine.label()
    );
    println!();
    let mut sorted = sync.reloads.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "| full index reload, median of {RELOADS} (ms) | spire-server start until admin socket (ms) | VmRSS (MiB) | VmHWM (MiB) |"
    );
    println!("|---:|---:|---:|---:|");
    let reload_median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    match &sync.process {
        Some(p) => println!(
            "| {reload_median:.0} | {:.0} | {:.0} | {:.0} |",
            ms(p.start),
            p.rss_kib as f64 / 1024.0,
            p.hwm_kib as f64 / 1024.0
        ),
        None => println!("| {reload_median:.0} | - | - | - |"),
    }
    println!();
    println!(
        "Memory of `{}` (`/proc/<pid>/status`, 2 s after its admin socket opened).",
        server_binary().display()
    );
}

/// Prints the authorized-entries tables (scenario 2).
fn print_sync(sync: &SyncResult) {
    println!();
    println!("### 2. Authorized entries for one agent (ms; median / p99 / max)");
    println!();
    let reloads: Vec<String> = sync.reloads.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "Datastore holds {} entries over {} agents; index full load {} ms ({RELOADS} runs); \
         populating via the datastore's batch insert ({POPULATE_CHUNK}/transaction) ran at \
         {:.0} entries/s.",
        sync.total,
        sync.rows.len(),
        reloads.join(" / "),
        sync.populate_rate,
    );
    println!();
    println!(
        "| entries | runs | GetAuthorizedEntries (in-process) | Sync, revisions only (gRPC) | \
         Sync, fresh agent: revisions + all entries (gRPC) | target: 100k < 500 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    for row in &sync.rows {
        let fmt =
            |(median, p99, max): (f64, f64, f64)| format!("{median:.1} / {p99:.1} / {max:.1}");
        let target = if row.entries == 100_000 {
            met(row.full.1 < 500.0 && row.unary.1 < 500.0)
        } else {
            "-"
        };
        println!(
            "| {} | {} | {} | {} | {} | {target} |",
            row.entries,
            row.runs,
            fmt(row.unary),
            fmt(row.revisions),
            fmt(row.full),
        );
    }

    println!();
    println!(
        "The server's share of each SyncAuthorizedEntries exchange: CPU time of the thread \
         the gRPC server runs alone on (handler, index walk, encoding, HTTP/2), ms, \
         median / p99 / max:"
    );
    println!();
    println!(
        "| entries | revisions only | target: 10k < 1 ms | fresh agent | target: 100k < 500 ms |"
    );
    println!("|---:|---:|---|---:|---|");
    for row in &sync.rows {
        let fmt =
            |(median, p99, max): (f64, f64, f64)| format!("{median:.2} / {p99:.2} / {max:.2}");
        let steady = if row.entries == 10_000 {
            met(row.revisions_cpu.0 < 1.0)
        } else {
            "-"
        };
        let fresh = if row.entries == 100_000 {
            met(row.full_cpu.0 < 500.0)
        } else {
            "-"
        };
        println!(
            "| {} | {} | {steady} | {} | {fresh} |",
            row.entries,
            fmt(row.revisions_cpu),
            fmt(row.full_cpu),
        );
    }

    println!();
    println!("Where the in-process GetAuthorizedEntries time goes (median ms):");
    println!();
    println!("| entries | index walk | index walk + entry_to_proto | whole handler |");
    println!("|---:|---:|---:|---:|");
    for row in &sync.rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            row.entries, row.lookup.0, row.convert.0, row.unary.0
        );
    }
}

/// Prints the BatchCreateEntry table (scenario 3).
fn print_create(create_rows: &[(usize, (f64, f64, f64))]) {
    let engine = Engine::from_env();
    println!();
    println!(
        "### 3. BatchCreateEntry into {} ({ENTRY_BATCH} entries per call, \
         {} calls per caller)",
        engine.label(),
        scaled(ENTRY_BATCHES_PER_CALLER)
    );
    println!();
    println!("| callers | entries/s | call median (ms) | call p99 (ms) | target >= 5000/s |");
    println!("|---:|---:|---:|---:|---|");
    for (callers, (rate, median, p99)) in create_rows {
        println!(
            "| {callers} | {rate:.0} | {median:.1} | {p99:.1} | {} |",
            met(*rate >= 5000.0)
        );
    }
}
