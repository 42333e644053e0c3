//! Host services end to end: a server NodeAttestor built on spire-plugin-sdk v1.4.4
//! (go-plugins/hostsvcattestor) brokers the server's AgentStore, IdentityProvider and Metrics
//! through go-plugin's broker and reports their answers in the agent's selectors. Upstream
//! v1.13.3's server loads the same binary and must report the same brokering and answers.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;

use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, interop_program, selector_strings,
    server_config,
};
use spire_e2e::{subdir as dir, test_plugin as plugin};

const TD: &str = "example.org";
const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

fn start_server(program: &Path, dir: &Path) -> ServerProcess {
    let block = format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            secret = \"s3cret\"\n        }}\n    }}\n",
        plugin("hostsvcattestor").display()
    );
    ServerProcess::start_program_on_free_port(program, dir, |port| {
        let socket = dir.join("api.sock");
        let data_dir = dir.join("data");
        let config_path = dir.join("server.conf");
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &connection_string,
            extra_server_keys: "",
        });
        assert!(config.contains(JOIN_TOKEN_BLOCK), "{config}");
        std::fs::write(&config_path, config.replace(JOIN_TOKEN_BLOCK, &block)).unwrap();
        (config_path, socket)
    })
}

/// Starts an agent attesting with challengeattestor-agent (a fresh data dir each time, so it
/// attests again) and returns the node selectors the server recorded, sorted.
fn attest_once(
    server: &ServerProcess,
    agent_program: &Path,
    case: &Path,
    name: &str,
) -> Vec<String> {
    let agent_dir = dir(case, name);
    let (config_path, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let block = format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            node = \"node-a\"\n            secret = \"s3cret\"\n        }}\n    }}\n",
        plugin("challengeattestor-agent").display()
    );
    std::fs::write(&config_path, text.replace(JOIN_TOKEN_BLOCK, &block)).unwrap();
    let mut agent = AgentProcess::start_program_with_config(
        agent_program,
        &agent_dir,
        &config_path,
        socket,
        None,
    );
    let agent_id = format!("spiffe://{TD}/spire/agent/challenge/node-a");
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id]);
    agent.stop();
    let mut selectors = selector_strings(&shown["selectors"]);
    selectors.sort();
    selectors
}

fn expected(agentstore: &str) -> Vec<String> {
    let mut want: Vec<String> = [
        "challenge:brokered:agentstore:true",
        "challenge:brokered:identityprovider:true",
        "challenge:brokered:metrics:true",
        &format!("challenge:agentstore:{agentstore}"),
        &format!("challenge:identity:spiffe://{TD}/spire/server"),
        &format!("challenge:bundle:{TD}:1"),
        "challenge:metrics:ok",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    want.sort();
    want
}

fn run_host(
    server_program: &Path,
    agent_program: &Path,
    case: &Path,
) -> (Vec<String>, Vec<String>) {
    let server = start_server(server_program, &dir(case, "server"));
    let first = attest_once(&server, agent_program, case, "agent1");
    let second = attest_once(&server, agent_program, case, "agent2");
    (first, second)
}

#[test]
fn a_plugin_calls_the_servers_host_services_as_under_upstreams_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = run_host(
        &binary("spire-server"),
        &binary("spire-agent"),
        &dir(tmp.path(), "ours"),
    );
    // First attestation: the agent is not attested yet; the second finds it.
    assert_eq!(first, expected("NotFound"));
    assert_eq!(second, expected("found"));

    let (up_first, up_second) = run_host(
        &interop_program("SPIRE_UPSTREAM_SERVER"),
        &interop_program("SPIRE_UPSTREAM_AGENT"),
        &dir(tmp.path(), "upstream"),
    );
    assert_eq!(up_first, first, "upstream's host answered otherwise");
    assert_eq!(up_second, second, "upstream's host answered otherwise");
}
