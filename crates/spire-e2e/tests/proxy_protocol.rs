//! `proxy_protocol_trusted_cidrs` in the real `spire-server`: the listener says it accepts
//! PROXY headers from the configured networks, and an agent connecting directly (no
//! header, from a trusted address) attests and syncs as before. The header handling itself
//! (v1, v2, untrusted sources) is tested against the listener in
//! `crates/spire-server/tests/audit_log.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::time::Duration;

use spire_e2e::{AgentProcess, ServerProcess};

#[test]
fn a_server_with_trusted_cidrs_serves_agents_that_send_no_header() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        tmp.path(),
        "proxy_protocol_trusted_cidrs = [\"127.0.0.0/8\", \"::1/128\"]",
    );
    let token = server.generate_join_token("spiffe://example.org/node");
    let agent = AgentProcess::start(tmp.path(), &server, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("PROXY protocol enabled on TCP listener"))
        .unwrap_or_else(|| panic!("no PROXY protocol line in:\n{log}"));
    assert!(line.contains("127.0.0.0/8,::1/128"), "{line}");
    assert_eq!(server.agent_ids().len(), 1);
}

#[test]
fn a_bad_cidr_stops_the_server_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.conf");
    std::fs::write(
        &config,
        r#"
server {
    trust_domain = "example.org"
    data_dir = "./data"
    proxy_protocol_trusted_cidrs = ["10.0.0.1"]
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "./data/ds.sqlite3" } }
    KeyManager "memory" { plugin_data {} }
    NodeAttestor "join_token" { plugin_data {} }
}
"#,
    )
    .unwrap();
    let out = std::process::Command::new(spire_e2e::binary("spire-server"))
        .args(["validate", "-config"])
        .arg(&config)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("server.proxy_protocol_trusted_cidrs")
            && shown.contains("invalid proxy_protocol_trusted_cidrs value \"10.0.0.1\""),
        "{shown}"
    );
}
