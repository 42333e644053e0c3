//! The life of an external plugin (`plugin_cmd`) through the real binaries, with plugins built
//! on spire-plugin-sdk v1.4.4 (crates/spire-e2e/go-plugins, built by scripts/plugin-deps.sh):
//!
//! - start-up refuses a wrong checksum, a binary that is not a plugin, a plugin of the wrong
//!   type, one that exits during Configure, one that never completes the handshake and one that
//!   never answers Configure, each with an error naming the plugin, and no plugin process
//!   outlives the refused server or agent;
//! - a WorkloadAttestor that dies at run time is logged with go-plugin's line ("plugin process
//!   exited", its path, pid and exit status) as upstream v1.13.3's agent logs it, and the
//!   Workload API call fails at once naming the plugin instead of hanging; a server
//!   NodeAttestor dying in `Attest` fails that attestation with the plugin's name and exit;
//! - SIGUSR1 makes the agent reconfigure a `plugin_data_file` plugin from its file.
//!
//! Each test runs its plugins through hard links in a private folder, so the check for
//! leftover processes sees only its own.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spire_e2e::{
    AgentProcess, ServerProcess, assert_no_process_runs_from, binary, interop_program,
    logged_fields, run_to_failure, write_server_config_with_plugins,
};
use spire_e2e::{subdir as dir, test_plugin as plugin, test_plugins_dir as plugins_dir};

const TD: &str = "example.org";
const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";
const UNIX_BLOCK: &str = "    WorkloadAttestor \"unix\" {\n        plugin_data {}\n    }\n";

/// A folder (removed when dropped) of hard links to the test plugins `names`.
fn private_plugins(names: &[&str]) -> tempfile::TempDir {
    let links = tempfile::tempdir_in(plugins_dir()).unwrap();
    for name in names {
        std::fs::hard_link(plugin(name), links.path().join(name)).unwrap();
    }
    links
}

/// Runs our server with `block` (a NodeAttestor replacing join_token) until it fails; returns
/// its output and how long it took.
fn server_refusal(case: &Path, block: &str) -> (String, Duration) {
    let (config, _) = write_server_config_with_plugins(case, spire_e2e::free_port(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(JOIN_TOKEN_BLOCK, block)).unwrap();
    let mut command = Command::new(binary("spire-server"));
    command.args(["run", "-config"]).arg(&config);
    let started = Instant::now();
    let out = run_to_failure(
        command,
        &case.join("server.log"),
        Duration::from_secs(180),
        "the server started (or hung) with a plugin it must refuse",
    );
    (out, started.elapsed())
}

fn node_attestor(name: &str, cmd: &Path, extra: &str) -> String {
    format!(
        "    NodeAttestor \"{name}\" {{\n        plugin_cmd = \"{}\"\n{extra}        plugin_data {{\n            secret = \"s3cret\"\n        }}\n    }}\n",
        cmd.display()
    )
}

#[test]
fn a_wrong_checksum_stops_the_server_naming_the_plugin_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["challengeattestor-server"]);
    let block = node_attestor(
        "challenge",
        &links.path().join("challengeattestor-server"),
        &format!("        plugin_checksum = \"{}\"\n", "ab".repeat(32)),
    );
    let (out, _) = server_refusal(tmp.path(), &block);
    assert!(out.contains("NodeAttestor \"challenge\""), "{out}");
    assert!(out.contains("checksums did not match"), "{out}");
    assert_no_process_runs_from(links.path());
}

#[test]
fn a_binary_that_is_not_a_plugin_stops_the_server_and_is_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["notplugin"]);
    let block = node_attestor("odd", &links.path().join("notplugin"), "");
    let (out, _) = server_refusal(tmp.path(), &block);
    assert!(out.contains("NodeAttestor \"odd\""), "{out}");
    assert!(out.contains("not a SPIRE plugin"), "{out}");
    assert_no_process_runs_from(links.path());
}

#[test]
fn a_plugin_that_exits_during_configure_stops_the_server_with_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["failconfigure"]);
    let block = node_attestor("crashy", &links.path().join("failconfigure"), "");
    let (out, _) = server_refusal(tmp.path(), &block);
    assert!(out.contains("NodeAttestor \"crashy\""), "{out}");
    assert!(out.contains("failed to configure plugin"), "{out}");
    assert!(out.contains("exit status 3"), "{out}");
    assert_no_process_runs_from(links.path());
}

#[test]
fn a_plugin_that_never_completes_the_handshake_stops_the_server_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["hangplugin"]);
    let block = node_attestor("silent", &links.path().join("hangplugin"), "");
    let (out, took) = server_refusal(tmp.path(), &block);
    assert!(out.contains("NodeAttestor \"silent\""), "{out}");
    assert!(
        out.contains("timed out after 60s waiting for the plugin handshake"),
        "{out}"
    );
    assert!(took < Duration::from_secs(150), "took {took:?}");
    assert_no_process_runs_from(links.path());
}

#[test]
fn a_plugin_that_never_answers_configure_stops_the_server_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["hangconfigure"]);
    let block = node_attestor("stuck", &links.path().join("hangconfigure"), "");
    let (out, took) = server_refusal(tmp.path(), &block);
    assert!(out.contains("NodeAttestor \"stuck\""), "{out}");
    assert!(
        out.contains("timed out after 60s waiting for the plugin to answer Configure"),
        "{out}"
    );
    assert!(took >= Duration::from_secs(60), "took {took:?}");
    assert!(took < Duration::from_secs(150), "took {took:?}");
    assert_no_process_runs_from(links.path());
}

#[test]
fn a_plugin_of_the_wrong_type_stops_the_agent_naming_the_plugin_and_is_ended() {
    let tmp = tempfile::tempdir().unwrap();
    // The server's NodeAttestor binary configured as the agent's: it completes the handshake
    // and Init, then is refused for the service it lacks.
    let links = private_plugins(&["challengeattestor-server"]);
    let (config, _) = AgentProcess::write_config(tmp.path(), spire_e2e::free_port(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    let block = format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            node = \"n\"\n        }}\n    }}\n",
        links.path().join("challengeattestor-server").display()
    );
    std::fs::write(&config, text.replace(JOIN_TOKEN_BLOCK, &block)).unwrap();
    let mut command = Command::new(binary("spire-agent"));
    command.args(["run", "-config"]).arg(&config);
    let out = run_to_failure(
        command,
        &tmp.path().join("agent.log"),
        Duration::from_secs(60),
        "the agent started with a server plugin as its NodeAttestor",
    );
    assert!(out.contains("NodeAttestor \"challenge\""), "{out}");
    assert!(
        out.contains("does not implement spire.plugin.agent.nodeattestor.v1.NodeAttestor"),
        "{out}"
    );
    assert_no_process_runs_from(links.path());
}

/// An agent (`agent_program`) attested with a join token to a server (`server_program`), its
/// only WorkloadAttestor the external `pidwa` configured by `data` (the inside of a
/// `plugin_data` block, or a `plugin_data_file = ...` line when `data_file` is set).
fn agent_with_pidwa(
    server_program: &Path,
    agent_program: &Path,
    case: &Path,
    pidattestor: &Path,
    plugin_data: &str,
) -> (ServerProcess, AgentProcess, String) {
    let server = ServerProcess::start_program(server_program, &dir(case, "server"), "");
    let agent_id = format!("spiffe://{TD}/node/pidwa");
    let token = server.generate_join_token(&agent_id);
    let agent_dir = dir(case, "agent");
    let (config, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(UNIX_BLOCK), "{text}");
    let block = format!(
        "    WorkloadAttestor \"pidwa\" {{\n        plugin_cmd = \"{}\"\n{plugin_data}    }}\n",
        pidattestor.display()
    );
    std::fs::write(&config, text.replace(UNIX_BLOCK, &block)).unwrap();
    let agent = AgentProcess::start_program_with_config(
        agent_program,
        &agent_dir,
        &config,
        socket,
        Some(&token),
    );
    (server, agent, agent_id)
}

/// `spire-agent api fetch x509` with a generous client timeout, so a host that hangs shows as
/// slow rather than as a quick client-side failure; returns (succeeded, output, time taken).
fn fetch_x509(agent: &AgentProcess) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = agent.cli(&["api", "fetch", "x509", "-timeout", "60s"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, started.elapsed())
}

/// What a host logged when its WorkloadAttestor plugin died: the fields of the "plugin process
/// exited" line (the pid checked and left out) and the whole agent log.
fn die_under(
    server_program: &Path,
    agent_program: &Path,
    case: &Path,
    links: &Path,
) -> (std::collections::BTreeMap<String, String>, String) {
    let die_file = case.join("die");
    let data = format!(
        "        plugin_data {{\n            label = \"mortal\"\n            die_file = \"{}\"\n        }}\n",
        die_file.display()
    );
    let pidattestor = links.join("pidattestor");
    let (server, agent, agent_id) =
        agent_with_pidwa(server_program, agent_program, case, &pidattestor, &data);
    server.create_entry(&[
        "-parentID",
        &agent_id,
        "-spiffeID",
        &format!("spiffe://{TD}/workload/mortal"),
        "-selector",
        "pidwa:label:mortal",
    ]);
    // The plugin works: a workload gets its SVID.
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(90));
    assert!(fetched.contains("workload/mortal"), "{fetched}");
    let pid: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x == pidattestor))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pid.len(), 1, "one pidattestor process: {pid:?}");

    // The plugin dies in the next Attest: the call fails, quickly, and so does the next one.
    std::fs::write(&die_file, "").unwrap();
    for attempt in ["the call that kills the plugin", "a call after its death"] {
        let (ok, out, took) = fetch_x509(&agent);
        assert!(!ok, "{attempt} succeeded: {out}");
        assert!(
            took < Duration::from_secs(30),
            "{attempt} took {took:?}: {out}"
        );
    }
    spire_e2e::eventually(
        "the host logs the plugin's exit",
        Duration::from_secs(30),
        || agent.log().contains("msg=\"plugin process exited\""),
    );
    let log = agent.log();
    let mut fields = logged_fields(&log, "plugin process exited");
    assert_eq!(fields.remove("id").as_ref(), Some(&pid[0]), "{fields:?}");
    drop(agent);
    drop(server);
    (fields, log)
}

#[test]
fn a_plugin_that_dies_at_run_time_is_logged_as_upstream_and_calls_fail_at_once() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["pidattestor"]);
    let (ours, our_log) = die_under(
        &binary("spire-server"),
        &binary("spire-agent"),
        &dir(tmp.path(), "ours"),
        links.path(),
    );
    assert_no_process_runs_from(links.path());
    let (upstreams, _) = die_under(
        &upstream_server,
        &upstream_agent,
        &dir(tmp.path(), "upstream"),
        links.path(),
    );
    assert_eq!(ours["level"], "error", "{ours:?}");
    assert_eq!(ours["error"], "exit status 3", "{ours:?}");
    assert_eq!(
        PathBuf::from(&ours["plugin"]),
        links.path().join("pidattestor")
    );
    assert_eq!(ours["plugin_name"], "pidwa", "{ours:?}");
    assert_eq!(ours, upstreams);
    // Our agent says which plugin failed the workload's attestation, and why.
    let failure = our_log
        .lines()
        .find(|l| l.contains("Failed to collect all selectors for PID"))
        .unwrap_or_else(|| panic!("no attestation failure logged:\n{our_log}"));
    assert!(failure.contains("workloadattestor(pidwa)"), "{failure}");
    assert!(
        failure.contains("plugin exited (exit status 3)"),
        "{failure}"
    );
}

#[test]
fn sigusr1_makes_the_agent_reconfigure_a_plugin_from_its_data_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pidwa.hcl");
    std::fs::write(&data, "label = \"before\"\n").unwrap();
    let (server, agent, agent_id) = agent_with_pidwa(
        &binary("spire-server"),
        &binary("spire-agent"),
        tmp.path(),
        &plugin("pidattestor"),
        &format!("        plugin_data_file = \"{}\"\n", data.display()),
    );
    for label in ["before", "after"] {
        server.create_entry(&[
            "-parentID",
            &agent_id,
            "-spiffeID",
            &format!("spiffe://{TD}/workload/{label}"),
            "-selector",
            &format!("pidwa:label:{label}"),
        ]);
    }
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(90));
    assert!(fetched.contains("workload/before"), "{fetched}");
    assert!(!fetched.contains("workload/after"), "{fetched}");

    // Unchanged data: nothing is sent.
    let pid = agent.pid().unwrap();
    spire_e2e::send_signal(pid, spire_e2e::Signal::USR1).unwrap();
    spire_e2e::eventually(
        "the agent sees the file unchanged",
        Duration::from_secs(30),
        || {
            agent
                .log()
                .contains("Plugin not reconfigured since the config is unchanged")
        },
    );
    std::fs::write(&data, "label = \"after\"\n").unwrap();
    spire_e2e::send_signal(pid, spire_e2e::Signal::USR1).unwrap();
    spire_e2e::eventually(
        "the agent reconfigures the plugin",
        Duration::from_secs(30),
        || agent.log().contains("Plugin reconfigured"),
    );
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(60));
    assert!(fetched.contains("workload/after"), "{fetched}");
    assert!(!fetched.contains("workload/before"), "{fetched}");
}

/// An agent config for a server on `port` attesting as `node` with challengeattestor-agent.
fn challenge_agent_config(case: &Path, port: u16, agent_plugin: &Path, node: &str) -> PathBuf {
    let (config, _) = AgentProcess::write_config(case, port, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let block = format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            node = \"{node}\"\n            secret = \"s3cret\"\n        }}\n    }}\n",
        agent_plugin.display()
    );
    std::fs::write(&config, text.replace(JOIN_TOKEN_BLOCK, &block)).unwrap();
    config
}

#[test]
fn a_server_node_attestor_that_dies_fails_the_attestation_naming_the_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let links = private_plugins(&["challengeattestor-server", "challengeattestor-agent"]);
    let die_file = tmp.path().join("die");
    let block = format!(
        "    NodeAttestor \"challenge\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            secret = \"s3cret\"\n            die_file = \"{}\"\n        }}\n    }}\n",
        links.path().join("challengeattestor-server").display(),
        die_file.display()
    );
    let server_dir = dir(tmp.path(), "server");
    let server = ServerProcess::start_on_free_port(&server_dir, |port| {
        write_server_config_with_plugins(&server_dir, port, &block)
    });
    let agent_plugin = links.path().join("challengeattestor-agent");

    // The plugin works: a first agent attests.
    let first_dir = dir(tmp.path(), "first");
    let config = challenge_agent_config(&first_dir, server.port, &agent_plugin, "node-a");
    let mut first = AgentProcess::start_program_with_config(
        &binary("spire-agent"),
        &first_dir,
        &config,
        first_dir.join("agent.sock"),
        None,
    );
    server.cli_json(&[
        "agent",
        "show",
        "-spiffeID",
        &format!("spiffe://{TD}/spire/agent/challenge/node-a"),
    ]);
    first.stop();

    // It dies in the next attestation: the server logs the exit, and the agent is refused
    // with the plugin's name and exit status rather than left waiting.
    std::fs::write(&die_file, "").unwrap();
    let second_dir = dir(tmp.path(), "second");
    let config = challenge_agent_config(&second_dir, server.port, &agent_plugin, "node-b");
    let log_path = second_dir.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut second = Command::new(binary("spire-agent"))
        .args(["run", "-config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    spire_e2e::eventually(
        "the server logs the plugin's exit",
        Duration::from_secs(60),
        || server.log().contains("msg=\"plugin process exited\""),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("nodeattestor(challenge): plugin exited (exit status 3)")
    {
        assert!(
            Instant::now() < deadline,
            "the agent was not told why its attestation failed:\n{}\nserver:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // SIGTERM, so the agent ends its own plugin (a SIGKILLed host cannot).
    spire_e2e::send_signal(second.id(), spire_e2e::Signal::TERM).unwrap();
    let _ = second.wait();
    let fields = logged_fields(&server.log(), "plugin process exited");
    assert_eq!(fields["error"], "exit status 3", "{fields:?}");
    assert_eq!(fields["plugin_name"], "challenge", "{fields:?}");
    drop(server);
    assert_no_process_runs_from(links.path());
}
