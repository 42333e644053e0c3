//! Drop-in, proven against the real thing: upstream SPIRE v1.13.3's agent attests to our
//! server, and our agent to upstream's server, each with a join token and the unix workload
//! attestor, with the same config files. Our CLI drives upstream's server throughout.
//!
//! Each pairing lives through what an operator's agent lives through:
//!
//! 1. it attests; a workload gets its X509-SVID, a JWT-SVID that validates, and bundles;
//! 2. the workload's short-lived SVID rotates on its open stream before it expires, and the
//!    agent renews its own SVID (the server lists the new serial);
//! 3. the server restarts: the agent carries on, and an entry created after the restart
//!    reaches the open stream; the agent restarts: it carries on from its `data_dir`; neither
//!    attests again;
//! 4. `agent evict`: the agent (a join token cannot re-attest) removes its SVID and stops, so
//!    its next start must attest, with a new token;
//! 5. `agent ban`: the agent stops, and the server lists it as banned.
//!
//! And the state each leaves on disk is the other's: a server `data_dir` written by upstream
//! (SQLite datastore, disk keys, CA journal) opens under ours with the same entries, agents,
//! CA and JWT key, and what ours wrote opens under upstream's; the agent's `data_dir` swaps
//! the same way, in place, without attesting again.
//!
//! The upstream binaries come from `scripts/interop-deps.sh` (the test command runs it), which
//! names them in `SPIRE_UPSTREAM_SERVER` and `SPIRE_UPSTREAM_AGENT`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spire_e2e::workload::Workload;
use spire_e2e::{
    AgentProcess, ServerProcess, binary, current_uid, interop_program, program_of, run_to_failure,
};

/// How long a workload may wait for its SVID: attestation plus a sync or two.
const SVID_WAIT: Duration = Duration::from_secs(60);

/// The agents' alias: workload entries name it as their parent.
const NODE: &str = "spiffe://example.org/node";

/// A 30 s agent SVID, renewed at half-life within the test.
const SERVER_KEYS: &str = r#"agent_ttl = "30s""#;

/// The workload SVID's lifetime in seconds: rotated at half-life within the test.
const WORKLOAD_TTL: &str = "30";

/// One server and the agent binary that talks to it, in one temp dir; prints the logs if
/// the test fails.
struct Pairing {
    server: ServerProcess,
    agent_program: PathBuf,
    agent_dir: PathBuf,
    agent_config: PathBuf,
    agent_socket: PathBuf,
    /// Last, so it is removed after both processes stopped.
    _dir: tempfile::TempDir,
}

impl Pairing {
    /// `server_program` (ours or upstream's) with our `server.conf` template, and an agent
    /// config for `agent_program` from our `agent.conf` template.
    fn start(server_program: &Path, agent_program: &Path, server_keys: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        std::fs::create_dir(&server_dir).unwrap();
        let server = ServerProcess::start_program(server_program, &server_dir, server_keys);

        let agent_dir = dir.path().join("agent");
        std::fs::create_dir(&agent_dir).unwrap();
        let (agent_config, agent_socket) = AgentProcess::write_config(&agent_dir, server.port, "");
        Self {
            server,
            agent_program: agent_program.to_path_buf(),
            agent_dir,
            agent_config,
            agent_socket,
            _dir: dir,
        }
    }

    fn start_agent(&self, join_token: Option<&str>) -> AgentProcess {
        self.start_agent_as(&self.agent_program, join_token)
    }

    /// The agent with another binary on the same config and `data_dir`.
    fn start_agent_as(&self, program: &Path, join_token: Option<&str>) -> AgentProcess {
        AgentProcess::start_program_with_config(
            program,
            &self.agent_dir,
            &self.agent_config,
            self.agent_socket.clone(),
            join_token,
        )
    }

    /// Runs the agent without a join token, expecting it to refuse to start because it holds
    /// no SVID to carry on with; returns what it printed.
    fn agent_cannot_start_without_a_token(&self) -> String {
        let mut command = Command::new(&self.agent_program);
        // A failure ends the agent at once instead of retrying for a minute.
        command
            .args(["run", "-config"])
            .arg(&self.agent_config)
            .arg("-retryBootstrap=false");
        run_to_failure(
            command,
            &self.agent_dir.join("refused-start.log"),
            Duration::from_secs(60),
            "the agent kept running without an SVID or a token",
        )
    }

    fn create_workload_entry(&self, spiffe_id: &str) {
        self.server.create_uid_entry(
            NODE,
            spiffe_id,
            current_uid(),
            &["-x509SVIDTTL", WORKLOAD_TTL],
        );
    }
}

impl Drop for Pairing {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== server log ====\n{}\n==== agent log ====\n{}",
                self.server.log(),
                std::fs::read_to_string(self.agent_dir.join("agent.log")).unwrap_or_default()
            );
        }
    }
}

/// Checks, through our CLI on the agent's socket, that the workload gets its X509-SVID, a
/// JWT-SVID that validates, and the bundle.
fn workload_gets_its_identities(agent: &AgentProcess) {
    let x509 = agent.cli_eventually(&["api", "fetch", "x509"], SVID_WAIT);
    assert!(x509.contains("spiffe://example.org/workload"), "{x509}");
    let jwt = agent.cli_eventually(
        &[
            "api",
            "fetch",
            "jwt",
            "-audience",
            "db",
            "-spiffeID",
            "spiffe://example.org/workload",
        ],
        SVID_WAIT,
    );
    let token = jwt
        .lines()
        .map(str::trim)
        .find(|l| l.split('.').count() == 3 && !l.contains(' '))
        .unwrap_or_else(|| panic!("no JWT-SVID in: {jwt}"));
    let valid = agent.cli_eventually(
        &["api", "validate", "jwt", "-audience", "db", "-svid", token],
        SVID_WAIT,
    );
    assert!(valid.contains("spiffe://example.org/workload"), "{valid}");
}

/// Waits until `wanted` holds, polling every 500 ms; fails saying `what` after `timeout`.
fn eventually(what: &str, timeout: Duration, mut wanted: impl FnMut() -> bool) {
    let start = Instant::now();
    while !wanted() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The whole life of an agent against one server, as the module documentation lists it.
fn agent_lifecycle(pairing: &mut Pairing) {
    // 1. Attestation and identities.
    let token = pairing.server.generate_join_token(NODE);
    let mut agent = pairing.start_agent(Some(&token));
    pairing.create_workload_entry("spiffe://example.org/workload");
    workload_gets_its_identities(&agent);
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let listed = pairing.server.agents();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].spiffe_id, agent_id);
    assert!(!listed[0].banned, "{listed:?}");
    let first_serial = listed[0].serial.clone();
    assert!(!first_serial.is_empty(), "{listed:?}");

    // 2. Rotation on an open stream, and the agent SVID's renewal.
    let workload = Workload::new(&pairing.agent_socket);
    let (stream, first) = workload.open_with(1, SVID_WAIT);
    let svid = &first[0];
    assert!(
        svid.not_after - svid.not_before <= time::Duration::seconds(60),
        "the entry's {WORKLOAD_TTL} s TTL was not applied: {svid:?}"
    );
    stream.rotation_of(svid);
    eventually("the agent SVID renewed", Duration::from_secs(60), || {
        pairing
            .server
            .agents()
            .first()
            .is_some_and(|a| a.spiffe_id == agent_id && a.serial != first_serial)
    });

    // 3. Restarts keep the agent without attesting again.
    pairing.server.start_again();
    pairing.create_workload_entry("spiffe://example.org/after-server-restart");
    stream.update_where(SVID_WAIT, |svids| svids.len() == 2);
    assert_eq!(
        pairing.server.agent_ids(),
        std::slice::from_ref(&agent_id),
        "the agent attested again"
    );

    agent.stop();
    let mut agent = pairing.start_agent(None);
    workload.open_with(2, SVID_WAIT);
    assert_eq!(
        pairing.server.agent_ids(),
        std::slice::from_ref(&agent_id),
        "the agent attested again"
    );

    // 4. Evicted, a join-token agent cannot re-attest: it forgets its SVID and stops.
    pairing
        .server
        .cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
    let status = agent.wait_exit(SVID_WAIT);
    assert!(
        !status.success(),
        "evicted, the agent exited 0:\n{}",
        agent.log()
    );
    assert!(
        pairing.server.agent_ids().is_empty(),
        "{:?}",
        pairing.server.agents()
    );
    pairing.agent_cannot_start_without_a_token();
    let second = pairing.server.generate_join_token(NODE);
    let mut agent = pairing.start_agent(Some(&second));
    workload_gets_its_identities(&agent);
    let second_id = format!("spiffe://example.org/spire/agent/join_token/{second}");
    assert_eq!(pairing.server.agent_ids(), std::slice::from_ref(&second_id));

    // 5. Banned, it stops too, and stays listed as banned.
    pairing
        .server
        .cli_ok(&["agent", "ban", "-spiffeID", &second_id]);
    let status = agent.wait_exit(SVID_WAIT);
    assert!(
        !status.success(),
        "banned, the agent exited 0:\n{}",
        agent.log()
    );
    let listed = pairing.server.agents();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].spiffe_id.as_str(), listed[0].banned),
        (second_id.as_str(), true)
    );
    pairing.agent_cannot_start_without_a_token();
}

#[test]
fn upstream_agent_lives_its_life_on_our_server() {
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let mut pairing = Pairing::start(&binary("spire-server"), &upstream_agent, SERVER_KEYS);
    agent_lifecycle(&mut pairing);
    // Upstream logs with logrus (`level=info msg=...`); ours does not.
    let log = std::fs::read_to_string(pairing.agent_dir.join("agent.log")).unwrap_or_default();
    assert!(log.contains("level=info"), "not upstream's agent:\n{log}");
}

#[test]
fn our_agent_lives_its_life_on_upstream_server() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let mut pairing = Pairing::start(&upstream_server, &binary("spire-agent"), SERVER_KEYS);
    assert!(
        pairing.server.log().contains("level=info"),
        "not upstream's server:\n{}",
        pairing.server.log()
    );
    agent_lifecycle(&mut pairing);
}

/// What an operator checks after swapping a server binary: the same entries, agents, bundle
/// (CA roots and JWT keys) and active authorities, as our CLI prints them.
#[derive(Debug, PartialEq)]
struct ServerState {
    entries: serde_json::Value,
    agent_ids: Vec<String>,
    bundle: serde_json::Value,
    x509_active: serde_json::Value,
    jwt_active: serde_json::Value,
}

impl ServerState {
    fn read(pairing: &Pairing) -> Self {
        let server = &pairing.server;
        let bundle = server.cli_json(&["bundle", "show"]);
        let x509 = server.cli_json(&["localauthority", "x509", "show"]);
        let jwt = server.cli_json(&["localauthority", "jwt", "show"]);
        Self {
            entries: server.cli_json(&["entry", "show"])["entries"].clone(),
            agent_ids: pairing.server.agent_ids(),
            bundle: serde_json::json!({
                "x509_authorities": bundle["x509_authorities"],
                "jwt_authorities": bundle["jwt_authorities"],
            }),
            x509_active: x509["active"].clone(),
            jwt_active: jwt["active"].clone(),
        }
    }
}

/// The process `pid` runs `program`.
fn assert_runs(pid: Option<u32>, program: &Path) {
    assert_eq!(program_of(pid), program.canonicalize().unwrap());
}

/// Waits until the agent serves the workload an SVID for `spiffe_id`.
fn agent_serves(agent: &AgentProcess, spiffe_id: &str) {
    let start = Instant::now();
    loop {
        let out = agent.cli(&["api", "fetch", "x509", "-timeout", "10s"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.contains(spiffe_id) {
            return;
        }
        assert!(
            start.elapsed() < SVID_WAIT,
            "the agent did not serve {spiffe_id} within {SVID_WAIT:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn state_written_by_upstream_opens_in_ours_and_ours_in_upstreams() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let (our_server, our_agent) = (binary("spire-server"), binary("spire-agent"));
    let mut pairing = Pairing::start(&upstream_server, &upstream_agent, "");
    let token = pairing.server.generate_join_token(NODE);
    let mut agent = pairing.start_agent(Some(&token));
    pairing.create_workload_entry("spiffe://example.org/workload");
    workload_gets_its_identities(&agent);
    let written_by_upstream = ServerState::read(&pairing);
    assert_eq!(written_by_upstream.agent_ids.len(), 1);

    // Upstream's data_dir (SQLite datastore, disk keys, CA journal) under our server: the
    // same state, the same CA and JWT key, and the agent upstream attested carries on.
    pairing.server.start_again_as(&our_server);
    assert_runs(pairing.server.pid(), &our_server);
    assert_eq!(ServerState::read(&pairing), written_by_upstream);
    pairing.create_workload_entry("spiffe://example.org/after-server-swap");
    agent_serves(&agent, "spiffe://example.org/after-server-swap");

    // Upstream's agent data_dir under our agent, in place, without a token: no attestation.
    agent.stop();
    let mut agent = pairing.start_agent_as(&our_agent, None);
    assert_runs(agent.pid(), &our_agent);
    agent_serves(&agent, "spiffe://example.org/after-server-swap");
    assert_eq!(pairing.server.agent_ids(), written_by_upstream.agent_ids);

    // And back: what ours wrote opens in upstream's server and agent, including an entry
    // with a SPIRE 1.15 attribute in the column ours added (upstream 1.13 ignores it).
    pairing.server.create_uid_entry(
        NODE,
        "spiffe://example.org/written-by-ours",
        current_uid(),
        &["-x509SVIDTTL", WORKLOAD_TTL, "-jwtSVIDIncludeJTI"],
    );
    agent_serves(&agent, "spiffe://example.org/written-by-ours");
    let mut written_by_ours = ServerState::read(&pairing);
    let with_attributes = written_by_ours
        .entries
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter_map(|e| e.as_object_mut()?.remove("additional_attributes"))
        .count();
    assert_eq!(with_attributes, 1, "{:?}", written_by_ours.entries);
    pairing.server.start_again_as(&upstream_server);
    assert_runs(pairing.server.pid(), &upstream_server);
    assert_eq!(ServerState::read(&pairing), written_by_ours);
    assert_eq!(
        written_by_ours.bundle, written_by_upstream.bundle,
        "a new CA was made"
    );
    agent.stop();
    let agent = pairing.start_agent_as(&upstream_agent, None);
    assert_runs(agent.pid(), &upstream_agent);
    pairing.create_workload_entry("spiffe://example.org/back-on-upstream");
    agent_serves(&agent, "spiffe://example.org/back-on-upstream");
    assert_eq!(pairing.server.agent_ids(), written_by_upstream.agent_ids);
}
