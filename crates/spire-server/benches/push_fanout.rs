//! What one entry change costs the server while many agents hold a sync-hint stream: a push
//! must cost O(agents the change concerns), not O(agents connected).
//!
//! An in-process server (SQLite by default; `SPIRE_BENCH_DATABASE` as for `server_api`) runs
//! alone on a thread of its own and serves the entry API and our `AgentNotify` service over
//! loopback h2c. 1,000 simulated agents (attested nodes in the datastore, each with the node
//! selector `bench:all`) each hold a WatchSyncHints stream, 100 streams per connection, as
//! 1,000 real agents would. An admin then creates an entry and deletes it again, 20 times per
//! row:
//!
//! 1. an entry parented to one agent, with all 1,000 agents connected;
//! 2. the same with only that agent connected;
//! 3. a node-alias entry every agent matches, with all 1,000 connected.
//!
//! Per row: how many agents were told, the server thread's CPU time per change (the
//! BatchCreateEntry call, the index refresh, tracing the agents concerned, and encoding and
//! sending their hints; SQLite's own worker thread is not included), and the time from the
//! call to the last hint arriving.
//!
//! Run with `cargo bench -p spire-server --bench push_fanout` (about 30 s after the build);
//! `SPIRE_BENCH_QUICK=1` runs 100 agents.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spire_core::selector::Selector;
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_proto::spire::api::server::entry::v1::entry_server::EntryServer;
use spire_proto::spire::api::types;
use spire_proto::spire_rs::agent::notify::v1 as notifypb;
use spire_proto::spire_rs::agent::notify::v1::agent_notify_server::AgentNotifyServer;
use spire_server::api::entry::EntryApi;
use spire_server::api::notify::NotifyApi;
use spire_server::api::{ApiContext, Caller};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::Channel;

mod support;
use support::Engine;
use support::server::{
    ServerThread, add_agent, admin_caller, agent_caller, agent_id, loopback_incoming,
    on_own_thread, server, wire_id,
};
use support::stats::summary;

/// The metadata key that names the simulated agent a request comes from (the bench's
/// stand-in for the agent's mTLS SVID).
const AGENT_HEADER: &str = "x-bench-agent";
/// Hint streams per connection (HTTP/2 streams on one TCP connection).
const STREAMS_PER_CONNECTION: usize = 100;
/// Changes per row.
const ROUNDS: usize = 20;
/// How long to keep collecting hints after the last expected one, so hints sent to agents
/// the change does not concern would be seen (and their cost counted).
const SETTLE: Duration = Duration::from_millis(100);
/// How long a hint may take before the bench gives up.
const HINT_TIMEOUT: Duration = Duration::from_secs(30);

fn agents() -> usize {
    if std::env::var_os("SPIRE_BENCH_QUICK").is_some() {
        100
    } else {
        1_000
    }
}

fn all_selector() -> Selector {
    Selector {
        kind: "bench".into(),
        value: "all".into(),
    }
}

/// Serves the entry and notify services; a request carrying [`AGENT_HEADER`] comes from
/// that agent, any other from a local admin.
async fn serve(ctx: Arc<ApiContext>) -> SocketAddr {
    let (addr, incoming) = loopback_incoming().await;
    let inject = |mut request: Request<()>| {
        let caller: Caller = match request.metadata().get(AGENT_HEADER) {
            Some(value) => {
                let id = SpiffeId::parse(value.to_str().unwrap()).unwrap();
                agent_caller(&id)
            }
            None => admin_caller(),
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    };
    let notify = AgentNotifyServer::with_interceptor(NotifyApi::new(ctx.clone()), inject);
    let entry = EntryServer::with_interceptor(EntryApi::new(ctx), inject);
    tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(2 * STREAMS_PER_CONNECTION as u32))
            .add_service(notify)
            .add_service(entry)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A hint one simulated agent received.
struct Hint {
    agent: usize,
    at: Instant,
    sequence: u64,
}

/// Opens agent `n`'s hint stream and forwards every hint it gets.
fn watch(channel: Channel, n: usize, hints: mpsc::UnboundedSender<Hint>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = notifypb::agent_notify_client::AgentNotifyClient::new(channel);
        let mut request = Request::new(notifypb::WatchSyncHintsRequest {});
        request.metadata_mut().insert(
            AGENT_HEADER,
            agent_id(&format!("push-{n}")).to_string().parse().unwrap(),
        );
        let mut stream = client
            .watch_sync_hints(request)
            .await
            .expect("WatchSyncHints")
            .into_inner();
        while let Some(hint) = stream.message().await.expect("hint stream") {
            let hint = Hint {
                agent: n,
                at: Instant::now(),
                sequence: hint.sequence,
            };
            if hints.send(hint).is_err() {
                return;
            }
        }
    })
}

/// Receives hints until every agent in `wanted` got one; returns when the last arrived.
async fn wait_for(
    hints: &mut mpsc::UnboundedReceiver<Hint>,
    wanted: &HashSet<usize>,
    told: &mut HashSet<usize>,
) -> Instant {
    let mut pending = wanted.clone();
    let mut last = Instant::now();
    while !pending.is_empty() {
        let hint = tokio::time::timeout(HINT_TIMEOUT, hints.recv())
            .await
            .expect("a hint did not arrive")
            .expect("hint channel closed");
        assert!(hint.sequence > 0, "a stream restarted");
        pending.remove(&hint.agent);
        told.insert(hint.agent);
        last = hint.at;
    }
    last
}

/// Collects whatever hints arrive within [`SETTLE`].
async fn settle(hints: &mut mpsc::UnboundedReceiver<Hint>, told: &mut HashSet<usize>) {
    let until = tokio::time::Instant::now() + SETTLE;
    while let Ok(Some(hint)) = tokio::time::timeout_at(until, hints.recv()).await {
        told.insert(hint.agent);
    }
}

/// One row's change: an entry for one agent, or a node alias for every agent.
#[derive(Clone, Copy)]
enum Change {
    ForAgent(usize),
    NodeAlias,
}

impl Change {
    fn entry(self, round: usize) -> types::Entry {
        let (parent, selector) = match self {
            Change::ForAgent(n) => (
                format!("/spire/agent/join_token/push-{n}"),
                types::Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{round}"),
                },
            ),
            Change::NodeAlias => (
                "/spire/server".to_owned(),
                types::Selector {
                    r#type: "bench".into(),
                    value: "all".into(),
                },
            ),
        };
        types::Entry {
            spiffe_id: wire_id(&format!("/push/{round}")),
            parent_id: wire_id(&parent),
            selectors: vec![selector],
            ..types::Entry::default()
        }
    }
}

struct Row {
    change: &'static str,
    connected: usize,
    told: Vec<usize>,
    cpu: Vec<Duration>,
    latency: Vec<Duration>,
}

async fn run_row(
    entries: &mut entrypb::entry_client::EntryClient<Channel>,
    hints: &mut mpsc::UnboundedReceiver<Hint>,
    server_thread: &ServerThread,
    change: Change,
    connected: &[usize],
) -> (Vec<usize>, Vec<Duration>, Vec<Duration>) {
    let wanted: HashSet<usize> = match change {
        Change::ForAgent(n) => [n].into(),
        Change::NodeAlias => connected.iter().copied().collect(),
    };
    let (mut told_counts, mut cpus, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut told = HashSet::new();
        let (cpu, started) = (server_thread.cpu(), Instant::now());
        let created = entries
            .batch_create_entry(entrypb::BatchCreateEntryRequest {
                entries: vec![change.entry(round)],
                output_mask: None,
            })
            .await
            .expect("BatchCreateEntry")
            .into_inner();
        let result = &created.results[0];
        assert_eq!(
            result.status.as_ref().map(|s| s.code),
            Some(0),
            "{result:?}"
        );
        let last = wait_for(hints, &wanted, &mut told).await;
        settle(hints, &mut told).await;
        cpus.push(server_thread.cpu() - cpu);
        latencies.push(last - started);
        told_counts.push(told.len());

        let id = result.entry.as_ref().expect("created entry").id.clone();
        entries
            .batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids: vec![id] })
            .await
            .expect("BatchDeleteEntry");
        wait_for(hints, &wanted, &mut HashSet::new()).await;
        settle(hints, &mut HashSet::new()).await;
    }
    (told_counts, cpus, latencies)
}

async fn bench() -> Vec<Row> {
    let count = agents();
    eprintln!("push_fanout: {count} agents");
    let server = server("push").await;
    for n in 0..count {
        let id = agent_id(&format!("push-{n}"));
        add_agent(&server, &id).await;
        server
            .ctx
            .datastore
            .set_node_selectors(id.as_str(), &[all_selector()])
            .await
            .expect("node selectors");
    }
    server.ctx.index.reload().await.expect("index reload");

    let ctx = server.ctx.clone();
    let (addr, server_thread) = on_own_thread("push-server", move || serve(ctx));
    let endpoint = format!("http://{addr}");
    let mut channels = Vec::new();
    for _ in 0..count.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(
            Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let (tx, mut hints) = mpsc::unbounded_channel();
    let mut streams: Vec<JoinHandle<()>> = (0..count)
        .map(|n| watch(channels[n / STREAMS_PER_CONNECTION].clone(), n, tx.clone()))
        .collect();
    // Every stream's first hint (sequence 0) says it is open.
    for _ in 0..count {
        let hint = tokio::time::timeout(HINT_TIMEOUT, hints.recv())
            .await
            .expect("a stream did not open")
            .expect("hint channel closed");
        assert_eq!(hint.sequence, 0);
    }
    assert_eq!(server.ctx.index.hints().connected(), count);
    let mut entries = entrypb::entry_client::EntryClient::new(channels[0].clone());
    let everyone: Vec<usize> = (0..count).collect();
    let one = count / 2;

    let mut rows = Vec::new();
    eprintln!("push_fanout: an entry for one agent, {count} connected");
    let (told, cpu, latency) = run_row(
        &mut entries,
        &mut hints,
        &server_thread,
        Change::ForAgent(one),
        &everyone,
    )
    .await;
    rows.push(Row {
        change: "an entry for one agent",
        connected: count,
        told,
        cpu,
        latency,
    });
    eprintln!("push_fanout: a node alias for every agent, {count} connected");
    let (told, cpu, latency) = run_row(
        &mut entries,
        &mut hints,
        &server_thread,
        Change::NodeAlias,
        &everyone,
    )
    .await;
    rows.push(Row {
        change: "a node alias every agent matches",
        connected: count,
        told,
        cpu,
        latency,
    });

    eprintln!("push_fanout: an entry for one agent, 1 connected");
    for (n, stream) in streams.iter_mut().enumerate() {
        if n != one {
            stream.abort();
        }
    }
    let deadline = Instant::now() + HINT_TIMEOUT;
    while server.ctx.index.hints().connected() > 1 {
        assert!(Instant::now() < deadline, "the server kept closed streams");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (told, cpu, latency) = run_row(
        &mut entries,
        &mut hints,
        &server_thread,
        Change::ForAgent(one),
        &[one],
    )
    .await;
    rows.push(Row {
        change: "an entry for one agent",
        connected: 1,
        told,
        cpu,
        latency,
    });
    server.db.remove().await;
    rows
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = runtime.block_on(bench());
    println!("Datastore: {}.", Engine::from_env().label());
    println!();
    println!(
        "| change ({ROUNDS} rounds each) | agents connected | agents told (min–max) | \
         server CPU per change, ms (median / p99) | call → last hint, ms (median / p99) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let (cpu, cpu99, _) = summary(row.cpu);
        let (latency, latency99, _) = summary(row.latency);
        let min = row.told.iter().min().copied().unwrap_or(0);
        let max = row.told.iter().max().copied().unwrap_or(0);
        println!(
            "| {} | {} | {min}–{max} | {cpu:.2} / {cpu99:.2} | {latency:.1} / {latency99:.1} |",
            row.change, row.connected
        );
    }
}
