//! What a workload notices when things change around it, with both real binaries: a caller
//! of another uid is refused, `entry delete` and short TTLs reach an open FetchX509SVID
//! stream, and a server restart leaves the agent serving its cache and resyncing without
//! attesting again.
//!
//! The streams are read by a small gRPC client over the agent's unix socket (as a workload
//! would), so these tests see exactly what the wire carries.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use spire_e2e::workload::{Event, Svid, Workload};
use spire_e2e::{AgentProcess, ServerProcess, binary, current_uid};

/// The agent's alias in every test: entries name it as their parent.
const AGENT_ALIAS: &str = "spiffe://example.org/node";

/// How long an agent may take to notice a change on the server: one 5 s sync plus a wide
/// margin, since two cores run these tests alongside the rest of the workspace's.
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// A server and an attested agent on a temp dir; prints both logs if the test fails.
struct Cluster {
    agent: AgentProcess,
    server: ServerProcess,
    /// Last, so it is removed after both processes stopped.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Server, join token aliased to [`AGENT_ALIAS`], agent, and the agent healthy.
    fn start() -> Self {
        Self::start_with_agent_keys("")
    }

    /// Like [`start`](Self::start) with extra keys in the agent's `agent { }` block.
    fn start_with_agent_keys(extra_agent_keys: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), "");
        let token = server.generate_join_token(AGENT_ALIAS);
        let agent = AgentProcess::start_with_agent_keys(
            dir.path(),
            &server,
            Some(&token),
            extra_agent_keys,
        );
        agent.cli_eventually(&["healthcheck"], Duration::from_secs(30));
        Self { agent, server, dir }
    }

    /// An entry under the agent for `unix:uid:<uid>`, with extra `entry create` flags.
    fn entry_for_uid(&self, spiffe_id: &str, uid: u32, extra: &[&str]) -> String {
        self.server
            .create_uid_entry(AGENT_ALIAS, spiffe_id, uid, extra)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== server log ====\n{}\n==== agent log ====\n{}",
                self.server.log(),
                self.agent.log()
            );
        }
    }
}

fn ids(svids: &[Svid]) -> Vec<&str> {
    svids.iter().map(|s| s.spiffe_id.as_str()).collect()
}

/// `spire-agent api fetch x509 -socketPath <socket>` as `uid`/`gid` (or as ourselves), with
/// a 10 s `-timeout` instead of the default 1 s, which a loaded machine can miss.
fn fetch_x509_as(agent: &AgentProcess, user: Option<(u32, u32)>) -> Output {
    let mut command = Command::new(binary("spire-agent"));
    command
        .args(["api", "fetch", "x509", "-timeout", "10s", "-socketPath"])
        .arg(&agent.socket_path);
    if let Some((uid, gid)) = user {
        // std clears the supplementary groups when root drops to another uid.
        command.uid(uid).gid(gid);
    }
    command.output().unwrap()
}

fn assert_denied(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("rpc error: code = PermissionDenied desc = no identity issued"),
        "{stderr}"
    );
}

#[test]
fn an_entry_for_another_uid_gives_us_no_identity() {
    let cluster = Cluster::start();
    let uid = current_uid();
    cluster.entry_for_uid("spiffe://example.org/someone-else", uid + 1, &[]);
    // A witness entry for us: once we hold it, the agent has synced the other one too.
    let witness = cluster.entry_for_uid("spiffe://example.org/witness", uid, &[]);
    let ours = cluster
        .agent
        .cli_eventually(&["api", "fetch", "x509"], SYNC_WAIT);
    assert!(ours.contains("spiffe://example.org/witness"), "{ours}");
    assert!(!ours.contains("someone-else"), "{ours}");

    cluster
        .server
        .cli_ok(&["entry", "delete", "-entryID", &witness]);
    let start = Instant::now();
    let denied = loop {
        let out = fetch_x509_as(&cluster.agent, None);
        if !out.status.success() || start.elapsed() > SYNC_WAIT {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_denied(&denied);
}

#[test]
fn as_root_an_entry_for_root_is_denied_to_nobody() {
    if current_uid() != 0 {
        eprintln!("skipped: switching to uid 65534 needs root");
        return;
    }
    let cluster = Cluster::start();
    // nobody must be able to reach the socket, as on a real host where its folder is open.
    std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    cluster.entry_for_uid("spiffe://example.org/root-only", 0, &[]);
    let root = cluster
        .agent
        .cli_eventually(&["api", "fetch", "x509"], SYNC_WAIT);
    assert!(root.contains("spiffe://example.org/root-only"), "{root}");

    let nobody = fetch_x509_as(&cluster.agent, Some((65534, 65534)));
    assert_denied(&nobody);
    assert!(
        !String::from_utf8_lossy(&nobody.stdout).contains("root-only"),
        "{nobody:?}"
    );
}

#[test]
fn entry_delete_reaches_an_open_stream_and_the_last_one_ends_it() {
    let cluster = Cluster::start();
    let uid = current_uid();
    let a = cluster.entry_for_uid("spiffe://example.org/svc-a", uid, &[]);
    let _b = cluster.entry_for_uid("spiffe://example.org/svc-b", uid, &[]);
    let workload = Workload::new(&cluster.agent.socket_path);
    workload.open_with(2, SYNC_WAIT);

    let stream = workload.watch();
    let Event::Update(first) = stream.next(Duration::from_secs(10)) else {
        panic!("the stream did not start with the SVIDs");
    };
    let mut first_ids = ids(&first);
    first_ids.sort_unstable();
    assert_eq!(
        first_ids,
        ["spiffe://example.org/svc-a", "spiffe://example.org/svc-b"]
    );

    cluster.server.cli_ok(&["entry", "delete", "-entryID", &a]);
    let deleted_at = Instant::now();
    let after = stream.update_where(SYNC_WAIT, |svids| svids.len() != 2);
    assert_eq!(ids(&after), ["spiffe://example.org/svc-b"]);
    eprintln!(
        "deletion reached the stream after {:?}",
        deleted_at.elapsed()
    );

    // Deleting the last one ends the stream as upstream's handler does.
    let remaining =
        cluster
            .server
            .cli_json(&["entry", "show", "-spiffeID", "spiffe://example.org/svc-b"]);
    let b = remaining["entries"][0]["id"].as_str().unwrap().to_owned();
    cluster.server.cli_ok(&["entry", "delete", "-entryID", &b]);
    let deadline = Instant::now() + SYNC_WAIT;
    loop {
        match stream.next(deadline.saturating_duration_since(Instant::now())) {
            Event::Update(svids) => assert_eq!(ids(&svids), ["spiffe://example.org/svc-b"]),
            Event::Ended(code, message) => {
                assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
                assert_eq!(message, "no identity issued");
                break;
            }
        }
    }
    assert_denied(&fetch_x509_as(&cluster.agent, None));
}

#[test]
fn a_short_lived_svid_is_rotated_on_the_open_stream_before_it_expires() {
    let cluster = Cluster::start();
    cluster.entry_for_uid(
        "spiffe://example.org/short",
        current_uid(),
        &["-x509SVIDTTL", "20"],
    );
    let workload = Workload::new(&cluster.agent.socket_path);
    workload.open_with(1, SYNC_WAIT);

    let stream = workload.watch();
    let Event::Update(first) = stream.next(Duration::from_secs(10)) else {
        panic!("the stream did not start with the SVID");
    };
    let old = first[0].clone();
    let lifetime = old.not_after - old.not_before;
    assert!(
        lifetime <= time::Duration::seconds(40),
        "the entry's 20 s TTL was not applied: {old:?}"
    );

    // Rotation starts at half-life; the new SVID must arrive while the old one still works.
    let new = stream.rotation_of(&old);
    assert!(new.not_before > old.not_before, "{old:?} -> {new:?}");
}

#[test]
fn the_agent_serves_its_cache_while_the_server_is_down_and_resyncs_after() {
    let mut cluster = Cluster::start();
    let uid = current_uid();
    cluster.entry_for_uid("spiffe://example.org/before", uid, &[]);
    let workload = Workload::new(&cluster.agent.socket_path);
    let before = workload.open_with(1, SYNC_WAIT).1;
    let agents = cluster.server.agent_ids();
    assert_eq!(agents.len(), 1, "{agents:?}");
    let stream = workload.watch();
    assert!(matches!(
        stream.next(Duration::from_secs(10)),
        Event::Update(_)
    ));

    cluster.server.stop();
    // At least one sync fails (the agent syncs every 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.agent.log().contains("sync with the server failed") {
        assert!(
            Instant::now() < deadline,
            "the agent did not notice within 30 s that the server was gone"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let cached = workload.open_with(1, Duration::from_secs(10)).1;
    assert_eq!(cached, before, "the agent did not serve its cached SVID");

    cluster.server.start_again();
    cluster.entry_for_uid("spiffe://example.org/after", uid, &[]);
    // Backoff after failures is 5 s, 7.5 s, ...: allow for a couple of retries.
    let resynced = workload.open_with(2, Duration::from_secs(40)).1;
    let mut resynced_ids = ids(&resynced);
    resynced_ids.sort_unstable();
    assert_eq!(
        resynced_ids,
        ["spiffe://example.org/after", "spiffe://example.org/before"]
    );
    assert!(
        resynced.contains(&before[0]),
        "the cached SVID was replaced needlessly"
    );
    // The stream opened before the outage sees the new entry too.
    stream.update_where(SYNC_WAIT, |svids| svids.len() == 2);

    assert_eq!(
        cluster.server.agent_ids(),
        agents,
        "the agent attested again"
    );
}

#[test]
fn a_workload_whose_entry_is_beyond_the_svid_cache_bound_still_gets_its_svid() {
    // Room for one SVID: the agent mints "aaa" (first in ID order) on its own and must mint
    // "zzz" because a workload asks for it, as upstream's LRU cache does.
    let cluster = Cluster::start_with_agent_keys("x509_svid_cache_max_size = 1");
    let uid = current_uid();
    cluster.entry_for_uid(
        "spiffe://example.org/not-us",
        uid + 1,
        &["-entryID", "aaa-not-us"],
    );
    cluster.entry_for_uid("spiffe://example.org/us", uid, &["-entryID", "zzz-us"]);
    let fetched = cluster
        .agent
        .cli_eventually(&["api", "fetch", "x509"], SYNC_WAIT);
    assert!(fetched.contains("spiffe://example.org/us"), "{fetched}");
}
