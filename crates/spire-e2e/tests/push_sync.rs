//! Push-based propagation with the real binaries: our server hints connected agents (our own
//! `spire_rs.agent.notify.v1` service) so an entry create reaches a watching workload well
//! before the next 5 s sync, a hint names the changed entries so the agent fetches only
//! those (and syncs everything when a hint names too many), a ban stops the agent at once,
//! and our agent on upstream's server (which has no such service) keeps polling and still
//! gets its entries.

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

/// An agent setting that leaves the hints as the only way a change can arrive during a test.
const HOUR_SYNC_INTERVAL: &str = "experimental { sync_interval = \"1h\" }";

/// What the agent logs when it applied a hint's named entries (not a full sync).
const NAMED_SYNC: &str = "applied the server's named changes";

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

/// The value of `name=` in a log line.
fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next().map(str::to_owned)
}

/// A numeric `name=` of a log line.
fn number(line: &str, name: &str) -> Option<usize> {
    field(line, name)?.parse().ok()
}

fn syncs(agent: &AgentProcess) -> Vec<Sync> {
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

/// The agent's log lines about syncs and hints, for failure messages.
fn sync_log(agent: &AgentProcess) -> String {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("sync") || l.contains("hint") || l.contains(NAMED_SYNC))
        .collect::<Vec<_>>()
        .join("\n")
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
    start_pair_with(dir, server, "")
}

fn start_pair_with(
    dir: &std::path::Path,
    server: ServerProcess,
    agent_keys: &str,
) -> (ServerProcess, AgentProcess, Workload) {
    let token = server.generate_join_token(AGENT_ALIAS);
    let agent = AgentProcess::start_with_agent_keys(dir, &server, Some(&token), agent_keys);
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

/// With a one-hour sync interval (so no sync can explain it), an entry create, update and
/// delete each reach a watching workload through a hint that names the entry: the agent
/// fetches that entry alone and never runs a full sync meanwhile.
#[test]
fn named_hints_carry_create_update_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let uid = current_uid();
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/first", uid, &[]);
    let (server, agent, workload) = start_pair_with(dir.path(), server, HOUR_SYNC_INTERVAL);
    let (stream, _) = workload.open_with(1, POLL_WAIT);
    eventually(
        "the agent follows the server's sync hints",
        POLL_WAIT,
        || agent.log().contains("following the server's sync hints"),
    );
    // The stream's first hint (sequence 0) asks for a full sync; let it settle.
    std::thread::sleep(Duration::from_secs(3));
    let full_syncs = syncs(&agent).len();
    let named = || agent.log().matches(NAMED_SYNC).count();

    let created = server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/pushed", uid, &[]);
    stream.update_where(POLL_WAIT, |svids| {
        svids
            .iter()
            .any(|s| s.spiffe_id == "spiffe://example.org/pushed")
    });
    assert!(
        named() >= 1,
        "the create came by a named hint:\n{}",
        agent.log()
    );

    let selector = format!("unix:uid:{uid}");
    server.cli_ok(&[
        "entry",
        "update",
        "-entryID",
        &created,
        "-parentID",
        AGENT_ALIAS,
        "-spiffeID",
        "spiffe://example.org/updated",
        "-selector",
        &selector,
    ]);
    stream.update_where(POLL_WAIT, |svids| {
        svids
            .iter()
            .any(|s| s.spiffe_id == "spiffe://example.org/updated")
            && svids
                .iter()
                .all(|s| s.spiffe_id != "spiffe://example.org/pushed")
    });

    server.cli_ok(&["entry", "delete", "-entryID", &created]);
    let left = stream.update_where(POLL_WAIT, |svids| {
        svids
            .iter()
            .all(|s| s.spiffe_id != "spiffe://example.org/updated")
    });
    assert_eq!(left.len(), 1, "only the first entry is left: {left:?}");
    assert!(
        named() >= 3,
        "every change came by a named hint:\n{}",
        agent.log()
    );
    assert_eq!(
        syncs(&agent).len(),
        full_syncs,
        "no full sync ran meanwhile:\n{}",
        agent.log()
    );
}

/// A hint cannot name more than a few hundred entries: a batch of 600 new entries makes
/// the agent fall back to a full (revision) sync, which still brings every entry, with a
/// one-hour sync interval.
#[test]
fn a_hint_naming_too_many_entries_falls_back_to_a_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let (server, agent, _workload) = start_pair_with(dir.path(), server, HOUR_SYNC_INTERVAL);
    eventually(
        "the agent follows the server's sync hints",
        POLL_WAIT,
        || agent.log().contains("following the server's sync hints"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let before = syncs(&agent).len();
    let entries: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"spiffe_id": "spiffe://example.org/many{i}", "parent_id": "{AGENT_ALIAS}",
                    "selectors": [{{"type": "unix", "value": "uid:{}"}}]}}"#,
                100_000 + i
            )
        })
        .collect();
    let data = dir.path().join("entries.json");
    std::fs::write(&data, format!(r#"{{"entries": [{}]}}"#, entries.join(","))).unwrap();
    server.cli_ok(&["entry", "create", "-data", data.to_str().unwrap()]);
    // The server applies new entries 500 at a time: the first hint names too many and
    // becomes a full sync, the rest may come named.
    let full = wait_for_sync(&agent, "a full sync fetches the batch", |s| s.fetched > 256);
    assert!(full.revision_based, "{full:?}");
    assert!(syncs(&agent).len() > before);
    let first_total = syncs(&agent).first().map_or(0, |s| s.total);
    let all_cached = || {
        agent.log().lines().any(|l| {
            (l.contains("synced with the server") || l.contains(NAMED_SYNC))
                && number(l, "entries_total") == Some(first_total + 600)
        })
    };
    let deadline = Instant::now() + POLL_WAIT;
    while !all_cached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        all_cached(),
        "all 600 entries are cached:\n{}",
        sync_log(&agent)
    );
}

/// `agent ban` ends the agent's hint stream with the banned denial, and the agent stops at
/// once instead of at its next sync (one hour away) or renewal; the workload's stream ends.
#[test]
fn a_banned_agent_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    server.create_uid_entry(AGENT_ALIAS, "spiffe://example.org/w", current_uid(), &[]);
    let (server, mut agent, workload) = start_pair_with(dir.path(), server, HOUR_SYNC_INTERVAL);
    let (stream, _) = workload.open_with(1, POLL_WAIT);
    eventually(
        "the agent follows the server's sync hints",
        POLL_WAIT,
        || agent.log().contains("following the server's sync hints"),
    );
    let agent_id = server.agent_ids().pop().expect("the agent is listed");
    let started = Instant::now();
    server.cli_ok(&["agent", "ban", "-spiffeID", &agent_id]);
    // Without the hint the agent would notice at its next sync (1 h) at the earliest.
    let status = agent.wait_exit(Duration::from_secs(10));
    println!("ban -> agent exit: {:?}", started.elapsed());
    assert!(!status.success(), "banned, the agent exited 0");
    assert!(
        agent.log().contains("banned"),
        "the agent says why it stopped:\n{}",
        agent.log()
    );
    eventually("the workload's stream ends", POLL_WAIT, || {
        !stream.is_open()
    });
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

/// Above one page (500) of authorized entries the server sends revisions first; after the
/// first sync, a new entry costs the agent one fetched entry and one minted SVID (through
/// the hint that names it), and a later revision sync fetches nothing.
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
    // Usually the hint naming the entry gets there first; when the periodic revision sync
    // (every 5 s) happens to run in between, it is that sync which fetches the one entry.
    // Either way it costs one fetched entry and one minted SVID.
    let found = || {
        agent.log().lines().any(|l| {
            (l.contains(NAMED_SYNC) && number(l, "entries_removed") == Some(0)
                || l.contains("synced with the server"))
                && number(l, "entries_fetched") == Some(1)
                && number(l, "entries_total") == Some(first.total + 1)
                && number(l, "svids_minted") == Some(1)
        })
    };
    let deadline = Instant::now() + POLL_WAIT;
    while !found() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        found(),
        "one entry is fetched and one SVID minted:\n{}",
        sync_log(&agent)
    );
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
