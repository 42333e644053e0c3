//! Push-based propagation with the real binaries: our server hints connected agents (our own
//! `spire_rs.agent.notify.v1` service) so an entry create reaches a watching workload well
//! before the next 5 s sync, a ban stops the agent at once, and our agent on upstream's
//! server (which has no such service) keeps polling and still gets its entries.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use spire_e2e::workload::Workload;
use spire_e2e::{AgentProcess, ServerProcess, current_uid, eventually, interop_program};

/// The agent's alias: entries name it as their parent.
const AGENT_ALIAS: &str = "spiffe://example.org/node";

/// Generous bound for anything that waits on a poll (the default 5 s sync interval) on two
/// busy cores.
const POLL_WAIT: Duration = Duration::from_secs(30);

fn start_pair(
    dir: &std::path::Path,
    server: ServerProcess,
) -> (ServerProcess, AgentProcess, Workload) {
    let token = server.generate_join_token(AGENT_ALIAS);
    let agent = AgentProcess::start(dir, &server, Some(&token));
    agent.cli_eventually(&["healthcheck"], POLL_WAIT);
    let workload = Workload::new(&agent.socket_path);
    (server, agent, workload)
}

/// With the sync interval at its default (5 s), every new entry reaches an open
/// FetchX509SVID stream in well under a second: the server's hint starts the agent's sync.
#[test]
fn an_entry_create_reaches_a_watching_workload_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let (server, agent, workload) = start_pair(dir.path(), server);
    let uid = current_uid();
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/first", uid, &[]);
    let (stream, _) = workload.open_with(1, POLL_WAIT);
    eventually(
        "the agent follows the server's sync hints",
        POLL_WAIT,
        || agent.log().contains("following the server's sync hints"),
    );

    let mut latencies = Vec::new();
    for i in 0..5 {
        let id = format!("spiffe://example.org/pushed{i}");
        let started = Instant::now();
        server.create_uid_entry(AGENT_ALIAS, &id, uid, &[]);
        stream.update_where(POLL_WAIT, |svids| svids.iter().any(|s| s.spiffe_id == id));
        latencies.push(started.elapsed());
    }
    println!("entry create (CLI included) -> workload update: {latencies:?}");
    let mut sorted = latencies.clone();
    sorted.sort();
    assert!(
        sorted[2] < Duration::from_secs(2),
        "median create -> workload latency {:?} is not push-fast: {latencies:?}\n{}",
        sorted[2],
        agent.log()
    );
    assert!(
        sorted[4] < Duration::from_secs(4),
        "slowest create -> workload latency {:?} is a poll, not a push: {latencies:?}",
        sorted[4]
    );
}

/// `agent ban` ends the agent's hint stream with the banned denial, and the agent stops at
/// once instead of at its next sync or renewal.
#[test]
fn a_banned_agent_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let (server, mut agent, _workload) = start_pair(dir.path(), server);
    eventually(
        "the agent follows the server's sync hints",
        POLL_WAIT,
        || agent.log().contains("following the server's sync hints"),
    );
    let agent_id = server.agent_ids().pop().expect("the agent is listed");
    let started = Instant::now();
    server.cli_ok(&["agent", "ban", "-spiffeID", &agent_id]);
    // Without the hint the agent would notice at its next sync (5 s) at the earliest.
    let status = agent.wait_exit(Duration::from_secs(4));
    println!("ban -> agent exit: {:?}", started.elapsed());
    assert!(!status.success(), "banned, the agent exited 0");
    assert!(
        agent.log().contains("banned"),
        "the agent says why it stopped:\n{}",
        agent.log()
    );
}

/// Upstream's server has no hint service: our agent notes it, keeps syncing every
/// sync_interval, and a new entry still reaches the workload.
#[test]
fn our_agent_polls_an_upstream_server() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_program(&interop_program("SPIRE_UPSTREAM_SERVER"), dir.path(), "");
    let (server, agent, workload) = start_pair(dir.path(), server);
    let uid = current_uid();
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/first", uid, &[]);
    let (stream, _) = workload.open_with(1, POLL_WAIT);
    eventually("the agent notes there are no hints", POLL_WAIT, || {
        agent.log().contains("the server offers no sync hints")
    });
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/polled", uid, &[]);
    let svids = stream.update_where(POLL_WAIT, |svids| {
        svids
            .iter()
            .any(|s| s.spiffe_id == "spiffe://example.org/polled")
    });
    assert_eq!(svids.len(), 2);
}
