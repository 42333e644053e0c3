//! High availability with the real binaries: two `spire-server`s of one trust domain on one
//! PostgreSQL (and MariaDB) database, an agent that reaches them through one address (a
//! loopback forwarder), and a workload holding its FetchX509SVID stream open.
//!
//! Each server has its own CA and both roots end up in the one bundle; an entry created
//! through one server reaches the agent connected to the other; when the agent's server
//! stops, the agent carries on through the other one (sync, SVID minting and renewal) with
//! no error on the workload's stream and without attesting again.
//!
//! A rolling migration puts upstream's server (v1.13.3, from `scripts/interop-deps.sh`) in
//! A's place: it creates the schema, our B joins it, agents of both kinds get SVIDs that
//! verify across the CAs, and A's agent moves to B when A leaves.
//!
//! An engine whose variable (`SPIRE_TEST_POSTGRES`, `SPIRE_TEST_MYSQL`) is not set is
//! skipped with a printed line; `scripts/test-databases.sh` starts local servers.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use spire_e2e::workload::Workload;
use spire_e2e::{
    AgentProcess, ServerProcess, SharedDatabase, Signal, TcpForwarder, binary, current_uid,
    interop_program, send_signal,
};

/// The agent's alias: entries name it as their parent.
const AGENT_ALIAS: &str = "spiffe://example.org/node";

/// Short agent and workload SVID lifetimes, so renewal and re-minting (at half-life) happen
/// through the second server within the test; the cache reload stays at its 5 s default.
const SERVER_KEYS: &str = r#"agent_ttl = "20s"
    default_x509_svid_ttl = "30s""#;

/// One cache reload (5 s) plus one agent sync (5 s) plus a wide margin: two cores run this
/// test alongside the rest of the workspace's.
const SYNC_WAIT: Duration = Duration::from_secs(40);

/// Two servers on one database, a forwarder in front of them, and an agent behind it; prints
/// every log when the test fails (or when `SPIRE_E2E_PRINT_LOGS` is set).
struct HaCluster {
    agent: AgentProcess,
    forwarder: TcpForwarder,
    a: ServerProcess,
    b: ServerProcess,
    /// After the servers, so it is dropped once they stopped.
    _db: SharedDatabase,
    dir: tempfile::TempDir,
}

impl HaCluster {
    /// Servers A and B on `db` with `server_keys` in `server { }`, the forwarder routing to
    /// A, and an agent attested through A (join token aliased to [`AGENT_ALIAS`]).
    fn start(db: SharedDatabase, server_keys: &str) -> Self {
        Self::start_with_a_as(&binary("spire-server"), db, server_keys)
    }

    /// Like [`start`](Self::start) with server A running `a_program` (upstream's, for a
    /// rolling migration), started first so that it creates the database's schema.
    fn start_with_a_as(a_program: &Path, db: SharedDatabase, server_keys: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (dir_a, dir_b, dir_agent) = (
            dir.path().join("server-a"),
            dir.path().join("server-b"),
            dir.path().join("agent"),
        );
        for d in [&dir_a, &dir_b, &dir_agent] {
            std::fs::create_dir_all(d).unwrap();
        }
        let started = Instant::now();
        let a = ServerProcess::start_program_with_datastore(
            a_program,
            &dir_a,
            db.database_type,
            &db.connection_string,
            server_keys,
        );
        let b = ServerProcess::start_with_datastore(
            &dir_b,
            db.database_type,
            &db.connection_string,
            server_keys,
        );
        println!(
            "{}: both servers healthy after {:?}",
            db.database_type,
            started.elapsed()
        );
        let forwarder = TcpForwarder::start(a.port);
        let token = a.generate_join_token(AGENT_ALIAS);
        let agent = AgentProcess::start_at_port(&dir_agent, forwarder.port, Some(&token), "");
        agent.cli_eventually(&["healthcheck"], Duration::from_secs(30));
        Self {
            agent,
            forwarder,
            a,
            b,
            _db: db,
            dir,
        }
    }

    /// The cluster's temp dir, for more agents and files.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many X.509 roots and JWT keys the trust domain's bundle holds as `server`
    /// serves it.
    fn bundle_authorities(server: &ServerProcess) -> (usize, usize) {
        let bundle = server.cli_json(&["bundle", "show"]);
        let count = |key: &str| bundle[key].as_array().map(Vec::len).unwrap_or_default();
        (count("x509_authorities"), count("jwt_authorities"))
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SPIRE_E2E_PRINT_LOGS").is_some() {
            eprintln!(
                "==== server A log ====\n{}\n==== server B log ====\n{}\n==== agent log ====\n{}",
                self.a.log(),
                self.b.log(),
                self.agent.log()
            );
        }
    }
}

fn entry_args(spiffe_id: &str, selector: &str) -> Vec<String> {
    [
        "-parentID",
        AGENT_ALIAS,
        "-spiffeID",
        spiffe_id,
        "-selector",
        selector,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn create_entry(server: &ServerProcess, spiffe_id: &str, selector: &str) -> String {
    let args = entry_args(spiffe_id, selector);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.create_entry(&args)
}

/// The whole scenario on one engine.
fn failover_keeps_the_agent_and_its_workload_served(database_type: &str) {
    let name = format!("spire_ha_{}_{database_type}", std::process::id());
    let Some(db) = SharedDatabase::create(database_type, &name) else {
        return;
    };
    let mut cluster = HaCluster::start(db, SERVER_KEYS);
    let uid_selector = format!("unix:uid:{}", current_uid());

    // Both CAs are in the one bundle, whichever server is asked.
    assert_eq!(
        HaCluster::bundle_authorities(&cluster.a),
        (2, 2),
        "A's bundle"
    );
    assert_eq!(
        HaCluster::bundle_authorities(&cluster.b),
        (2, 2),
        "B's bundle"
    );
    let agents_before = cluster.b.agents();
    assert_eq!(agents_before.len(), 1, "{agents_before:?}");
    let agent_id = agents_before[0].spiffe_id.clone();

    // An entry created through B reaches the agent, which talks to A.
    let created = Instant::now();
    create_entry(&cluster.b, "spiffe://example.org/ha/one", &uid_selector);
    let workload = Workload::new(&cluster.agent.socket_path);
    let (stream, first) = workload.open_with(1, SYNC_WAIT);
    println!(
        "{database_type}: entry created through B served by the agent on A after {:?}",
        created.elapsed()
    );
    assert_eq!(first[0].spiffe_id, "spiffe://example.org/ha/one");
    assert!(
        cluster.forwarder.accepted() > 0,
        "the agent reaches the servers through the forwarder"
    );

    // A goes away; the forwarder now sends new connections to B.
    cluster.forwarder.set_upstream(cluster.b.port);
    cluster.a.stop();
    let stopped = Instant::now();
    // The agent SVID issued through A, the last one A could have renewed.
    let serial_at_stop = cluster.b.agents()[0].serial.clone();

    // A new entry (through B) arrives on the same open stream, without an error on it.
    create_entry(&cluster.b, "spiffe://example.org/ha/two", &uid_selector);
    let both = stream.update_where(SYNC_WAIT * 2, |svids| svids.len() == 2);
    println!(
        "{database_type}: after A stopped, a new entry reached the workload through B in {:?}",
        stopped.elapsed()
    );
    assert!(
        both.iter()
            .any(|s| s.spiffe_id == "spiffe://example.org/ha/two"),
        "{both:?}"
    );

    // The first SVID (30 s, re-minted at half-life) is re-minted through B, on the same
    // stream.
    let one_serial = first[0].serial.clone();
    stream.update_where(Duration::from_secs(40), |svids| {
        svids
            .iter()
            .any(|s| s.spiffe_id == "spiffe://example.org/ha/one" && s.serial != one_serial)
    });
    println!(
        "{database_type}: workload SVID re-minted through B {:?} after A stopped",
        stopped.elapsed()
    );

    // The agent renewed its own SVID through B (20 s, renewed at half-life) and is still the
    // one agent attested at the start.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let agents = cluster.b.agents();
        assert_eq!(agents.len(), 1, "one agent, no re-attestation: {agents:?}");
        assert_eq!(agents[0].spiffe_id, agent_id, "the same agent");
        if agents[0].serial != serial_at_stop && !agents[0].serial.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not renew through B: serial still {serial_at_stop}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{database_type}: agent SVID renewed through B {:?} after A stopped",
        stopped.elapsed()
    );

    // And after that renewal the agent still syncs through B (its new SVID is accepted).
    create_entry(&cluster.b, "spiffe://example.org/ha/three", &uid_selector);
    stream.update_where(SYNC_WAIT * 2, |svids| svids.len() == 3);
    assert!(stream.is_open(), "the workload's stream stays open");
    let agents = cluster.b.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].spiffe_id, agent_id);
    let log = cluster.agent.log();
    assert!(
        !log.contains("agent needs to re-attest")
            && log.matches("node attestation succeeded").count() == 1,
        "the agent attested once and never again"
    );
}

/// `spire-agent api fetch x509 -write <dir>`: the workload's first SVID and its bundle as
/// PEM files (`svid.0.pem`, `bundle.0.pem`) in `dir`.
fn write_svid(agent: &AgentProcess, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    agent.cli_eventually(
        &["api", "fetch", "x509", "-write", &dir.display().to_string()],
        SYNC_WAIT,
    );
}

/// `openssl verify`: the SVID in `svid_dir` chains to a root of the bundle in `bundle_dir`.
fn svid_verifies_against(svid_dir: &Path, bundle_dir: &Path) -> Result<(), String> {
    let svid = svid_dir.join("svid.0.pem");
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(bundle_dir.join("bundle.0.pem"))
        .arg("-untrusted")
        .arg(&svid)
        .arg(&svid)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (Debian package openssl): {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The issuer of the SVID in `svid_dir`, as openssl prints it.
fn svid_issuer(svid_dir: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-in"])
        .arg(svid_dir.join("svid.0.pem"))
        .output()
        .unwrap_or_else(|e| panic!("run openssl: {e}"));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A rolling migration: upstream's server A (v1.13.3, which creates the schema) and our B on
/// one database. Each has its own CA in the one bundle; our agent attested through A and
/// upstream's agent attested through B get SVIDs from different CAs that each verify against
/// the other's bundle; an entry created through either server reaches the agent on the other;
/// when A stops for good, its agent moves to B with no error on its workload's stream and
/// without attesting again.
fn rolling_migration_from_upstream_to_ours(database_type: &str) {
    let name = format!("spire_ha_rolling_{}_{database_type}", std::process::id());
    let Some(db) = SharedDatabase::create(database_type, &name) else {
        return;
    };
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let mut cluster = HaCluster::start_with_a_as(&upstream_server, db, SERVER_KEYS);
    let uid_selector = format!("unix:uid:{}", current_uid());
    assert!(
        cluster.a.log().contains("level=info"),
        "A is not upstream's server:\n{}",
        cluster.a.log()
    );
    // Upstream's server caches the bundle for a second, so B's CA may show a moment late.
    let deadline = Instant::now() + Duration::from_secs(10);
    while HaCluster::bundle_authorities(&cluster.a) != (2, 2) {
        assert!(
            Instant::now() < deadline,
            "A's bundle: {:?}",
            HaCluster::bundle_authorities(&cluster.a)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        HaCluster::bundle_authorities(&cluster.b),
        (2, 2),
        "B's bundle"
    );

    // Upstream's agent on our server B.
    let node_b = "spiffe://example.org/node-b";
    let token_b = cluster.b.generate_join_token(node_b);
    let dir_b = cluster.dir().join("agent-b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let agent_b = AgentProcess::start_program_at_port(
        &upstream_agent,
        &dir_b,
        cluster.b.port,
        Some(&token_b),
        "",
    );

    // An entry created through upstream's A reaches the agent on our B, and one created
    // through B reaches the agent on A.
    cluster.a.create_entry(&[
        "-parentID",
        node_b,
        "-spiffeID",
        "spiffe://example.org/rolling/on-b",
        "-selector",
        &uid_selector,
    ]);
    create_entry(
        &cluster.b,
        "spiffe://example.org/rolling/on-a",
        &uid_selector,
    );
    let workload_a = Workload::new(&cluster.agent.socket_path);
    let (stream, first) = workload_a.open_with(1, SYNC_WAIT);
    assert_eq!(first[0].spiffe_id, "spiffe://example.org/rolling/on-a");
    let (_, on_b) = Workload::new(&agent_b.socket_path).open_with(1, SYNC_WAIT);
    assert_eq!(on_b[0].spiffe_id, "spiffe://example.org/rolling/on-b");

    // Minted by different CAs, each verifies against the bundle the other agent holds.
    let (svids_a, svids_b) = (cluster.dir().join("svids-a"), cluster.dir().join("svids-b"));
    write_svid(&cluster.agent, &svids_a);
    write_svid(&agent_b, &svids_b);
    assert_ne!(
        svid_issuer(&svids_a),
        svid_issuer(&svids_b),
        "one CA signed both"
    );
    // The agents refresh their bundle on sync; both roots are there from the start.
    svid_verifies_against(&svids_a, &svids_b)
        .unwrap_or_else(|e| panic!("A's SVID, B's bundle: {e}"));
    svid_verifies_against(&svids_b, &svids_a)
        .unwrap_or_else(|e| panic!("B's SVID, A's bundle: {e}"));

    // Upstream's A leaves for good; its agent carries on through our B.
    let mut agents_before = cluster.b.agent_ids();
    agents_before.sort();
    cluster.forwarder.set_upstream(cluster.b.port);
    cluster.a.stop();
    create_entry(
        &cluster.b,
        "spiffe://example.org/rolling/after-a",
        &uid_selector,
    );
    stream.update_where(SYNC_WAIT * 2, |svids| svids.len() == 2);
    assert!(stream.is_open(), "the workload's stream stays open");
    let mut agents_after = cluster.b.agent_ids();
    agents_after.sort();
    assert_eq!(agents_after, agents_before, "no agent attested again");
}

/// A server that hangs (SIGSTOP: its connections stay open and silent) instead of going
/// away: the agent's calls on the open connection time out (30 s, as upstream's), the
/// connection is dropped and the next dial reaches B; the workload's stream carries on.
fn a_hung_server_is_left_behind(database_type: &str) {
    let name = format!("spire_ha_hang_{}_{database_type}", std::process::id());
    let Some(db) = SharedDatabase::create(database_type, &name) else {
        return;
    };
    let mut cluster = HaCluster::start(db, "");
    let uid_selector = format!("unix:uid:{}", current_uid());
    create_entry(&cluster.b, "spiffe://example.org/ha/one", &uid_selector);
    let workload = Workload::new(&cluster.agent.socket_path);
    let (stream, _) = workload.open_with(1, SYNC_WAIT);

    let pid = cluster.a.pid().unwrap();
    cluster.forwarder.set_upstream(cluster.b.port);
    // Dropped before the cluster, on success or panic alike, so A can always stop cleanly.
    let frozen = Frozen::stop(pid);
    let hung = Instant::now();

    create_entry(&cluster.b, "spiffe://example.org/ha/two", &uid_selector);
    // The call on the hung connection times out after 30 s before B is dialled.
    stream.update_where(Duration::from_secs(120), |svids| svids.len() == 2);
    drop(frozen);
    cluster.a.stop();
    println!(
        "{database_type}: with A hung, a new entry reached the workload through B in {:?}",
        hung.elapsed()
    );
    let agents = cluster.b.agents();
    assert_eq!(agents.len(), 1, "one agent, no re-attestation: {agents:?}");
}

/// A process frozen with SIGSTOP until this is dropped (then SIGCONT), so a failing test
/// never leaves a stopped server behind.
struct Frozen(u32);

impl Frozen {
    fn stop(pid: u32) -> Self {
        send_signal(pid, Signal::STOP).unwrap_or_else(|e| panic!("kill -STOP {pid}: {e}"));
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = send_signal(self.0, Signal::CONT) {
            eprintln!("kill -CONT {}: {e}", self.0);
        }
    }
}

#[test]
fn postgres_a_hung_server_is_left_behind() {
    a_hung_server_is_left_behind("postgres");
}

#[test]
fn postgres_failover_keeps_the_agent_and_its_workload_served() {
    failover_keeps_the_agent_and_its_workload_served("postgres");
}

#[test]
fn postgres_rolling_migration_from_upstream_to_ours() {
    rolling_migration_from_upstream_to_ours("postgres");
}

#[test]
fn mysql_failover_keeps_the_agent_and_its_workload_served() {
    failover_keeps_the_agent_and_its_workload_served("mysql");
}

#[test]
fn mysql_rolling_migration_from_upstream_to_ours() {
    rolling_migration_from_upstream_to_ours("mysql");
}
