//! External plugins (`plugin_cmd`) end to end, with real plugin binaries built on
//! spire-plugin-sdk v1.4.4 and its pluginmain (crates/spire-e2e/go-plugins, built by
//! scripts/plugin-deps.sh): a server+agent NodeAttestor pair with a challenge round and an
//! agent WorkloadAttestor. Our server and agent, then upstream v1.13.3's, load the SAME
//! binaries and must give the same agent ID, node selectors and workload SVID. (Refusals and
//! plugins dying or hanging: external_plugin_lifecycle.rs.)

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, assert_no_process_runs_from, binary, interop_program,
    logged_fields, selector_strings, server_config,
};
use spire_e2e::{subdir as dir, test_plugin as plugin, test_plugins_dir as plugins_dir};

const TD: &str = "example.org";
const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

fn server_block_in(plugins: &Path, extra: &str) -> String {
    format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n{extra}        plugin_data {{\n            secret = \"s3cret\"\n            group = \"blue\"\n        }}\n    }}\n",
        plugins.join("challengeattestor-server").display()
    )
}

fn agent_blocks(node_plugin: &str) -> String {
    agent_blocks_in(&plugins_dir(), node_plugin)
}

fn agent_blocks_in(plugins: &Path, node_plugin: &str) -> String {
    format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            node = \"node-a\"\n            secret = \"s3cret\"\n        }}\n    }}\n    WorkloadAttestor \"pidwa\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            label = \"e2e\"\n        }}\n    }}\n",
        plugins.join(node_plugin).display(),
        plugins.join("pidattestor").display()
    )
}

/// Writes the server config with join_token replaced by `attestors`.
fn write_server_config(dir: &Path, port: u16, attestors: &str) -> (PathBuf, PathBuf) {
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
    std::fs::write(&config_path, config.replace(JOIN_TOKEN_BLOCK, attestors)).unwrap();
    (config_path, socket)
}

fn start_server(program: &Path, dir: &Path, attestors: &str) -> ServerProcess {
    ServerProcess::start_program_on_free_port(program, dir, |port| {
        write_server_config(dir, port, attestors)
    })
}

/// Writes the agent config for a server on `port` with join_token replaced by `blocks`.
fn write_agent_config(dir: &Path, port: u16, blocks: &str) -> (PathBuf, PathBuf) {
    let (config_path, socket) = AgentProcess::write_config(dir, port, "");
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(text.contains(JOIN_TOKEN_BLOCK), "{text}");
    std::fs::write(&config_path, text.replace(JOIN_TOKEN_BLOCK, blocks)).unwrap();
    (config_path, socket)
}

/// What one host made of the plugins: the agent's ID and node selectors, the workload's
/// SVID ID, and the fields of the line the external WorkloadAttestor logged.
fn attest_with(
    server_program: &Path,
    agent_program: &Path,
    case: &Path,
    plugins: &Path,
) -> (
    String,
    Vec<String>,
    std::collections::BTreeMap<String, String>,
) {
    let server = start_server(
        server_program,
        &dir(case, "server"),
        &server_block_in(plugins, ""),
    );
    let agent_dir = dir(case, "agent");
    let (config, socket) = write_agent_config(
        &agent_dir,
        server.port,
        &agent_blocks_in(plugins, "challengeattestor-agent"),
    );
    let agent =
        AgentProcess::start_program_with_config(agent_program, &agent_dir, &config, socket, None);

    let agent_id = format!("spiffe://{TD}/spire/agent/challenge/node-a");
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id]);
    assert_eq!(shown["attestation_type"], "challenge", "{shown}");
    let mut selectors = selector_strings(&shown["selectors"]);
    selectors.sort();

    // The workload (our CLI fetching an SVID) is attested by the external WorkloadAttestor:
    // only its `pidwa:label:e2e` selector matches the entry.
    server.create_entry(&[
        "-parentID",
        &agent_id,
        "-spiffeID",
        &format!("spiffe://{TD}/workload/external"),
        "-selector",
        "pidwa:label:e2e",
    ]);
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(90));
    assert!(
        fetched.contains(&format!("spiffe://{TD}/workload/external")),
        "{fetched}\nagent log:\n{}",
        agent.log()
    );
    // The plugin's own log line (through the SDK's logger) reaches the agent's log, named.
    let logged = logged_fields(&agent.log(), "Attesting workload");
    (shown["id"].to_string(), selectors, logged)
}

#[test]
fn our_host_and_upstreams_attest_the_same_with_the_same_plugin_binaries() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    // Private names (hard links) of the plugins, so the check for leftover processes sees
    // only this test's.
    let links = tempfile::tempdir_in(plugins_dir()).unwrap();
    for name in [
        "challengeattestor-server",
        "challengeattestor-agent",
        "pidattestor",
    ] {
        std::fs::hard_link(plugin(name), links.path().join(name)).unwrap();
    }

    let ours = attest_with(
        &binary("spire-server"),
        &binary("spire-agent"),
        &dir(tmp.path(), "ours"),
        links.path(),
    );
    // Stopping our server and agent ended their plugin processes.
    assert_no_process_runs_from(links.path());
    let upstreams = attest_with(
        &upstream_server,
        &upstream_agent,
        &dir(tmp.path(), "upstream"),
        links.path(),
    );
    assert_eq!(
        ours.1,
        vec![
            "challenge:group:blue".to_owned(),
            "challenge:node:node-a".to_owned()
        ]
    );
    assert_eq!(ours.2["plugin_name"], "pidwa", "{:?}", ours.2);
    assert_eq!(ours.2["plugin_type"], "WorkloadAttestor", "{:?}", ours.2);
    assert_eq!(ours.2["label"], "e2e", "{:?}", ours.2);
    assert_eq!(ours, upstreams);
}

#[test]
fn sigusr1_reconfigures_a_plugin_from_its_data_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("challenge.hcl");
    std::fs::write(&data, "secret = \"s3cret\"\ngroup = \"blue\"\n").unwrap();
    let block = format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data_file = \"{}\"\n    }}\n",
        plugin("challengeattestor-server").display(),
        data.display()
    );
    let server = start_server(&binary("spire-server"), &dir(tmp.path(), "server"), &block);
    let group_of = |node: &str| -> Vec<String> {
        let agent_dir = dir(tmp.path(), node);
        let blocks = agent_blocks("challengeattestor-agent").replace("node-a", node);
        let (config, socket) = write_agent_config(&agent_dir, server.port, &blocks);
        let mut agent = AgentProcess::start_program_with_config(
            &binary("spire-agent"),
            &agent_dir,
            &config,
            socket,
            None,
        );
        let shown = server.cli_json(&[
            "agent",
            "show",
            "-spiffeID",
            &format!("spiffe://{TD}/spire/agent/challenge/{node}"),
        ]);
        agent.stop();
        selector_strings(&shown["selectors"])
            .into_iter()
            .filter(|s| s.starts_with("challenge:group:"))
            .collect()
    };
    assert_eq!(group_of("node-a"), ["challenge:group:blue"]);

    std::fs::write(&data, "secret = \"s3cret\"\ngroup = \"green\"\n").unwrap();
    spire_e2e::send_signal(server.pid().unwrap(), spire_e2e::Signal::USR1).unwrap();
    spire_e2e::eventually(
        "the server reconfigures the plugin",
        Duration::from_secs(30),
        || server.log().contains("Plugin reconfigured"),
    );
    assert_eq!(group_of("node-b"), ["challenge:group:green"]);
}

/// One event the test notifier wrote: (event, trust domain, X.509 authorities, whether the
/// first is the loaded CA, JWT authorities).
type Heard = (String, String, String, bool, String);

/// What the test notifier heard from a server (`program`) started with it: the bundle loaded
/// at start, then the bundle updated by `localauthority x509 prepare` and by
/// `localauthority jwt prepare`. Each event as (event, trust domain, X.509 authorities, whether
/// the first is the loaded CA, JWT authorities), repeats of one event folded; and the DER
/// (hex) of the loaded CA.
fn notified_with(program: &Path, case: &Path) -> (Vec<Heard>, String) {
    let events = case.join("events.txt");
    let block = format!(
        "{JOIN_TOKEN_BLOCK}    Notifier \"file\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            path = \"{}\"\n        }}\n    }}\n",
        plugin("filenotifier").display(),
        events.display()
    );
    let server = start_server(program, &dir(case, "server"), &block);
    let lines = || -> Vec<Vec<String>> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(str::to_owned).collect())
            .collect()
    };
    let heard = |what: &str, check: &dyn Fn(&[String]) -> bool| {
        spire_e2e::eventually(what, Duration::from_secs(60), || {
            lines().iter().any(|l| check(l))
        });
    };
    heard("the notifier hears of the loaded bundle", &|l| {
        l[0] == "loaded"
    });
    server.cli_ok(&["localauthority", "x509", "prepare"]);
    heard("the notifier hears of the prepared X.509 authority", &|l| {
        l[0] == "updated" && l[2] == "2"
    });
    server.cli_ok(&["localauthority", "jwt", "prepare"]);
    heard("the notifier hears of the prepared JWT authority", &|l| {
        l[0] == "updated" && l[4] == "2"
    });
    drop(server);
    let lines = lines();
    let loaded = lines[0][3].clone();
    let mut seen: Vec<Heard> = lines
        .iter()
        .map(|l| {
            (
                l[0].clone(),
                l[1].clone(),
                l[2].clone(),
                l[3] == loaded,
                l[4].clone(),
            )
        })
        .collect();
    seen.dedup();
    (seen, loaded)
}

#[test]
fn an_external_notifier_hears_of_the_loaded_and_updated_bundle_as_under_upstream() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let tmp = tempfile::tempdir().unwrap();
    let (ours, loaded) = notified_with(&binary("spire-server"), &dir(tmp.path(), "ours"));
    let (upstreams, _) = notified_with(&upstream_server, &dir(tmp.path(), "upstream"));
    let event = |e: &str, x509: &str, jwt: &str| {
        (
            e.to_owned(),
            TD.to_owned(),
            x509.to_owned(),
            true,
            jwt.to_owned(),
        )
    };
    assert_eq!(
        ours,
        vec![
            event("loaded", "1", "1"),
            event("updated", "2", "1"),
            event("updated", "2", "2"),
        ]
    );
    // The DER of the CA certificate (a SEQUENCE).
    assert!(loaded.starts_with("30"), "{loaded}");
    assert_eq!(ours, upstreams);
}
