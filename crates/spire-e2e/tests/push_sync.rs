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

/// One "synced with the server" line of the agent log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sync {
    revision_based: bool,
    fetched: usize,
    total: usize,
    minted: usize,
}

fn syncs(agent: &AgentProcess) -> Vec<Sync> {
    let field = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split_whitespace().next().map(str::to_owned)
    };
    agent
        .log()
        .lines()
        .filter(|l| l.contains("synced with the server"))
        .filter_map(|l| {
            Some(Sync {
                revision_based: field(l, "revision_based")? == "true",
                fetched: field(l, "entries_fetched")?.parse().ok()?,
                total: field(l, "entries_total")?.parse().ok()?,
                minted: field(l, "svids_minted")?.parse().ok()?,
            })
        })
        .collect()
}

/// Waits for a sync `wanted` accepts; fails with every sync seen.
fn wait_for_sync(agent: &AgentProcess, what: &str, wanted: impl Fn(&Sync) -> bool) -> Sync {
    let deadline = Instant::now() + POLL_WAIT;
    while Instant::now() < deadline {
        if let Some(found) = syncs(agent).into_iter().find(|s| wanted(s)) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no sync where {what} within {POLL_WAIT:?}; syncs: {:#?}\n{}",
        syncs(agent),
        agent.log()
    );
}

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

/// Above one page (500) of authorized entries the server sends revisions first: after the
/// first sync, a new entry costs the agent one fetched entry and one minted SVID, not all.
#[test]
fn a_revision_sync_fetches_and_mints_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let entries: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"spiffe_id": "spiffe://example.org/bulk{i}", "parent_id": "{AGENT_ALIAS}",
                    "selectors": [{{"type": "unix", "value": "uid:{}"}}]}}"#,
                100_000 + i
            )
        })
        .collect();
    let data = dir.path().join("entries.json");
    std::fs::write(&data, format!(r#"{{"entries": [{}]}}"#, entries.join(","))).unwrap();
    server.cli_ok(&["entry", "create", "-data", data.to_str().unwrap()]);
    let (server, agent, _workload) = start_pair(dir.path(), server);
    let first = wait_for_sync(&agent, "all 600 entries arrive and get SVIDs", |s| {
        s.revision_based && s.fetched >= 600 && s.total == s.fetched && s.minted == s.total
    });
    server.create_uid_entry(
        AGENT_ALIAS,
        "spiffe://example.org/one-more",
        current_uid(),
        &[],
    );
    wait_for_sync(&agent, "one entry is fetched and one SVID minted", |s| {
        *s == Sync {
            revision_based: true,
            fetched: 1,
            total: first.total + 1,
            minted: 1,
        }
    });
    wait_for_sync(&agent, "nothing changed and nothing is fetched", |s| {
        s.revision_based && s.fetched == 0 && s.minted == 0 && s.total == first.total + 1
    });
}

/// `use_sync_authorized_entries = false` keeps upstream's older path: every sync fetches
/// every entry with GetAuthorizedEntries (and still mints only what changed).
#[test]
fn use_sync_authorized_entries_false_fetches_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_join_token(AGENT_ALIAS);
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/a", current_uid(), &[]);
    let agent = AgentProcess::start_with_agent_keys(
        dir.path(),
        &server,
        Some(&token),
        "experimental { use_sync_authorized_entries = false }",
    );
    let first = wait_for_sync(&agent, "every entry is fetched", |s| {
        !s.revision_based && s.fetched >= 1 && s.fetched == s.total
    });
    wait_for_sync(&agent, "a later sync fetches every entry again", |s| {
        !s.revision_based && s.fetched == first.total && s.minted == 0
    });
}
