//! Drop-in, proven against the real thing: upstream SPIRE v1.13.3's agent attests to our
//! server, and our agent to upstream's server, each with a join token and the unix workload
//! attestor, with the same config files. Workloads get X509-SVIDs and JWT-SVIDs, and a
//! restarted agent carries on from its `data_dir` without attesting again. Our CLI drives
//! upstream's server throughout (token, entries, agents, healthcheck).
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
use std::time::Duration;

use spire_e2e::{
    AgentPaths, AgentProcess, ServerPaths, ServerProcess, agent_config, current_uid, server_config,
};

/// How long a workload may wait for its SVID: attestation plus a sync or two.
const SVID_WAIT: Duration = Duration::from_secs(60);

/// The upstream binary named by `var`, or a loud failure saying how to get it.
fn upstream(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run scripts/interop-deps.sh and source target/interop-deps.env \
             (the test command does both)"
        )
    });
    assert!(path.is_file(), "{var}={} does not exist", path.display());
    path
}

fn write_agent_config(dir: &Path, server_port: u16) -> (PathBuf, PathBuf) {
    let socket = dir.join("agent.sock");
    let data_dir = dir.join("agent-data");
    let config = agent_config(&AgentPaths {
        server_port,
        socket: &socket,
        data_dir: &data_dir,
        keys_dir: &data_dir,
        extra_agent_keys: "",
    });
    let path = dir.join("agent.conf");
    std::fs::write(&path, config).unwrap();
    (path, socket)
}

/// Registers a workload for our uid under the agent's alias and checks, through our CLI on
/// the agent's socket, that it gets its X509-SVID and a JWT-SVID that validates.
fn workload_gets_its_identities(server: &ServerProcess, agent: &AgentProcess) {
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/node",
        "-spiffeID",
        "spiffe://example.org/workload",
        "-selector",
        &format!("unix:uid:{}", current_uid()),
    ]);
    let x509 = agent.cli_eventually(&["api", "fetch", "x509"], SVID_WAIT);
    assert!(x509.contains("spiffe://example.org/workload"), "{x509}");
    let jwt = agent.cli_eventually(&["api", "fetch", "jwt", "-audience", "db"], SVID_WAIT);
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

/// The agent's SPIFFE ID as the server lists it, and how many agents there are.
fn attested_agents(server: &ServerProcess) -> Vec<String> {
    let listed = server.cli_json(&["agent", "list"]);
    listed["agents"]
        .as_array()
        .map(|agents| {
            agents
                .iter()
                .map(|a| {
                    format!(
                        "spiffe://{}{}",
                        a["id"]["trust_domain"].as_str().unwrap_or_default(),
                        a["id"]["path"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn upstream_agent_attests_to_our_server_and_serves_workloads() {
    let upstream_agent = upstream("SPIRE_UPSTREAM_AGENT");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_join_token("spiffe://example.org/node");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    let (config, socket) = write_agent_config(&agent_dir, server.port);
    let mut agent = AgentProcess::start_program_with_config(
        &upstream_agent,
        &agent_dir,
        &config,
        socket.clone(),
        Some(&token),
    );
    workload_gets_its_identities(&server, &agent);
    // Upstream logs with logrus (`level=info msg=...`); ours does not.
    assert!(
        agent.log().contains("level=info"),
        "not upstream's agent:\n{}",
        agent.log()
    );
    let agents = attested_agents(&server);
    assert_eq!(
        agents,
        [format!(
            "spiffe://example.org/spire/agent/join_token/{token}"
        )]
    );

    // Restarted without a token (it was used up), it carries on from its data_dir.
    agent.stop();
    let agent =
        AgentProcess::start_program_with_config(&upstream_agent, &agent_dir, &config, socket, None);
    let x509 = agent.cli_eventually(&["api", "fetch", "x509"], SVID_WAIT);
    assert!(x509.contains("spiffe://example.org/workload"), "{x509}");
    assert_eq!(attested_agents(&server), agents, "the agent attested again");
}

#[test]
fn our_agent_attests_to_upstream_server_driven_by_our_cli() {
    let upstream_server = upstream("SPIRE_UPSTREAM_SERVER");
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir).unwrap();
    let socket = server_dir.join("api.sock");
    let data_dir = server_dir.join("data");
    let config_path = server_dir.join("server.conf");
    // The same server.conf our server runs with.
    let server = ServerProcess::start_program_on_free_port(&upstream_server, &server_dir, |port| {
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &data_dir.join("datastore.sqlite3").display().to_string(),
            extra_server_keys: "",
        });
        std::fs::write(&config_path, config).unwrap();
        (config_path.clone(), socket.clone())
    });
    assert!(
        server.log().contains("level=info"),
        "not upstream's server:\n{}",
        server.log()
    );
    let token = server.generate_join_token("spiffe://example.org/node");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    let mut agent = AgentProcess::start(&agent_dir, &server, Some(&token));
    workload_gets_its_identities(&server, &agent);
    let agents = attested_agents(&server);
    assert_eq!(
        agents,
        [format!(
            "spiffe://example.org/spire/agent/join_token/{token}"
        )]
    );

    agent.stop();
    let config = agent.config_path.clone();
    let agent =
        AgentProcess::start_with_config(&agent_dir, &config, agent.socket_path.clone(), None);
    let x509 = agent.cli_eventually(&["api", "fetch", "x509"], SVID_WAIT);
    assert!(x509.contains("spiffe://example.org/workload"), "{x509}");
    assert_eq!(attested_agents(&server), agents, "the agent attested again");
}
