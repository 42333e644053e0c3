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
use std::time::Duration;

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

/// `GET /metrics` from the Prometheus listener on `port` (empty while it does not answer).
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`: Prometheus gives label order no meaning, and
/// upstream's client sorts them while ours keeps the plugin's labels first.
fn labels_sorted(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

/// The series (name and labels, without the value) an agent (`agent_program`) exports for
/// what the external WorkloadAttestor `pidattestor` counted through the agent's Metrics host
/// service while a workload fetched its SVID.
fn agent_plugin_metrics(server_program: &Path, agent_program: &Path, case: &Path) -> Vec<String> {
    const UNIX_BLOCK: &str = "    WorkloadAttestor \"unix\" {\n        plugin_data {}\n    }\n";
    let server = ServerProcess::start_program(server_program, &dir(case, "server"), "");
    let agent_id = format!("spiffe://{TD}/node/metered");
    let token = server.generate_join_token(&agent_id);
    let agent_dir = dir(case, "agent");
    let (config, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(UNIX_BLOCK), "{text}");
    let port = spire_e2e::free_port();
    let block = format!(
        "    WorkloadAttestor \"pidwa\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            label = \"metered\"\n        }}\n    }}\n",
        plugin("pidattestor").display()
    );
    let text = format!(
        "{}\ntelemetry {{\n    Prometheus {{\n        host = \"127.0.0.1\"\n        port = {port}\n    }}\n}}\n",
        text.replace(UNIX_BLOCK, &block)
    );
    std::fs::write(&config, text).unwrap();
    let agent = AgentProcess::start_program_with_config(
        agent_program,
        &agent_dir,
        &config,
        socket,
        Some(&token),
    );
    server.create_entry(&[
        "-parentID",
        &agent_id,
        "-spiffeID",
        &format!("spiffe://{TD}/workload/metered"),
        "-selector",
        "pidwa:label:metered",
    ]);
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(90));
    assert!(fetched.contains("workload/metered"), "{fetched}");
    let series = || -> Vec<String> {
        let mut found: Vec<String> = scrape(port)
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("pidwa_attest"))
            .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| labels_sorted(series)))
            .collect();
        found.sort();
        found
    };
    spire_e2e::eventually(
        "the agent exports the plugin's counter",
        Duration::from_secs(60),
        || !series().is_empty(),
    );
    series()
}

#[test]
fn an_agent_plugin_counts_through_the_agents_metrics_as_under_upstreams_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = agent_plugin_metrics(
        &binary("spire-server"),
        &binary("spire-agent"),
        &dir(tmp.path(), "ours"),
    );
    assert!(
        ours.iter().any(|s| s.contains("label=\"metered\"")),
        "{ours:?}"
    );
    let upstreams = agent_plugin_metrics(
        &interop_program("SPIRE_UPSTREAM_SERVER"),
        &interop_program("SPIRE_UPSTREAM_AGENT"),
        &dir(tmp.path(), "upstream"),
    );
    assert_eq!(ours, upstreams);
}
