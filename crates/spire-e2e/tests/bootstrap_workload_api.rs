//! An agent nested under another agent bootstraps its trust in the server from that agent's
//! Workload API (`trust_bundle_spiffe_workload_api`, upstream v1.15), with no bundle file
//! and no insecure bootstrap; a Workload API that gives it no bundle stops it with upstream's
//! message.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;
use std::time::Duration;

use spire_e2e::{AgentProcess, ServerProcess, binary, run_to_failure};

/// The agent config `write_config` makes, bootstrapping from `workload_api` instead of
/// insecurely.
fn nested_config(
    dir: &std::path::Path,
    server: &ServerProcess,
    workload_api: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (config, socket) = AgentProcess::write_config(dir, server.port, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "insecure_bootstrap = true",
        &format!("trust_bundle_spiffe_workload_api = \"{workload_api}\""),
    );
    std::fs::write(&config, text).unwrap();
    (config, socket)
}

#[test]
fn a_nested_agent_takes_the_bundle_from_its_parents_workload_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let parent_dir = dir.path().join("parent");
    std::fs::create_dir_all(&parent_dir).unwrap();
    let token = server.generate_join_token("spiffe://example.org/parent-agent");
    let parent = AgentProcess::start(&parent_dir, &server, Some(&token));
    parent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let address = format!("unix://{}", parent.socket_path.display());

    // Without an identity from the parent, no bundle: the nested agent stops and says why.
    let lonely_dir = dir.path().join("lonely");
    std::fs::create_dir_all(&lonely_dir).unwrap();
    let (config, _) = nested_config(&lonely_dir, &server, &address);
    let token = server.generate_join_token("spiffe://example.org/lonely-agent");
    let mut command = Command::new(binary("spire-agent"));
    command
        .args(["run", "-config"])
        .arg(&config)
        .args(["-joinToken", &token])
        // A failure ends the agent at once instead of retrying for a minute.
        .arg("-retryBootstrap=false");
    let log = run_to_failure(
        command,
        &lonely_dir.join("agent.log"),
        Duration::from_secs(90),
        "the agent ran without a bundle",
    );
    assert!(
        log.contains(&format!(
            "unable to fetch trust bundle from SPIFFE Workload API {address}"
        )),
        "{log}"
    );

    // With an entry for this uid under the parent, the nested agent gets the bundle there,
    // verifies the server with it, and attests.
    let uid = spire_e2e::current_uid();
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/parent-agent",
        "-spiffeID",
        "spiffe://example.org/nested-agent-process",
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    parent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(60));
    let nested_dir = dir.path().join("nested");
    std::fs::create_dir_all(&nested_dir).unwrap();
    let (config, socket) = nested_config(&nested_dir, &server, &address);
    let token = server.generate_join_token("spiffe://example.org/nested-agent");
    let nested = AgentProcess::start_with_config(&nested_dir, &config, socket, Some(&token));
    nested.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let agents = server.agent_ids();
    assert_eq!(agents.len(), 2, "{agents:?}");

    // A config that also names a bundle file is refused as upstream refuses it.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "trust_bundle_spiffe_workload_api",
        "trust_bundle_path = \"/nonexistent.pem\"\n    trust_bundle_spiffe_workload_api",
    );
    let both = nested_dir.join("both.conf");
    std::fs::write(&both, text).unwrap();
    let out = Command::new(binary("spire-agent"))
        .args(["validate", "-config"])
        .arg(&both)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "only one of trust_bundle_path or trust_bundle_spiffe_workload_api can be specified, not both"
        ),
        "{out:?}"
    );
}
