//! The real `spire-server` binary driven by its own CLI over the admin socket, as an operator
//! would: entries, join tokens, bundles, validation, and state surviving a restart.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;

use serde_json::Value;
use spire_e2e::{ServerProcess, binary};

fn first_entry(response: &Value) -> &Value {
    &response["results"][0]["entry"]
}

#[test]
fn entries_tokens_and_bundle_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), "");

    // Create an entry the way the getting-started guide does.
    let created = server.cli_json(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/myagent",
        "-spiffeID",
        "spiffe://example.org/myservice",
        "-selector",
        "unix:uid:1000",
        "-x509SVIDTTL",
        "600",
        "-hint",
        "web",
    ]);
    let entry = first_entry(&created);
    let entry_id = entry["id"].as_str().expect("entry id").to_owned();
    assert_eq!(entry["spiffe_id"]["path"], "/myservice");
    assert_eq!(entry["x509_svid_ttl"], 600);
    assert_eq!(entry["hint"], "web");

    // The pretty form names the entry.
    let shown = server.cli_ok(&["entry", "show", "-entryID", &entry_id]);
    assert!(shown.contains(&entry_id), "{shown}");
    assert!(shown.contains("spiffe://example.org/myservice"), "{shown}");
    assert!(shown.contains("unix:uid:1000"), "{shown}");

    // Bad input: a selector without a colon is refused and nothing is created.
    let bad = server.cli(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/myagent",
        "-spiffeID",
        "spiffe://example.org/other",
        "-selector",
        "unix",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("type:value"), "{stderr}");
    let count = server.cli_ok(&["entry", "count"]);
    assert!(count.contains('1'), "{count}");

    // A SPIFFE ID outside the trust domain is refused.
    let outside = server.cli(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/myagent",
        "-spiffeID",
        "spiffe://other.org/x",
        "-selector",
        "unix:uid:1",
    ]);
    assert_eq!(outside.status.code(), Some(1), "{outside:?}");

    // Join tokens.
    let token = server.cli_ok(&[
        "token",
        "generate",
        "-spiffeID",
        "spiffe://example.org/myagent",
    ]);
    assert!(token.starts_with("Token: "), "{token}");

    // The bundle holds the self-signed root.
    let bundle = server.cli_ok(&["bundle", "show"]);
    assert!(bundle.contains("-----BEGIN CERTIFICATE-----"), "{bundle}");

    // Restart: the entry and the bundle are still there.
    server.stop();
    let server = ServerProcess::start_with_config(
        dir.path(),
        &server.config_path.clone(),
        server.socket_path.clone(),
        server.port,
    );
    let shown = server.cli_json(&["entry", "show", "-entryID", &entry_id]);
    assert_eq!(shown["entries"][0]["id"], entry_id.as_str(), "{shown}");
    assert_eq!(server.cli_ok(&["bundle", "show"]), bundle);
}

#[test]
fn validate_reports_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.conf");
    std::fs::write(
        &good,
        r#"server {
    trust_domain = "example.org"
    data_dir = "./data"
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "./data/ds.sqlite3" } }
    KeyManager "memory" { plugin_data {} }
    NodeAttestor "join_token" { plugin_data {} }
}
"#,
    )
    .unwrap();
    let ok = Command::new(binary("spire-server"))
        .args(["validate", "-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");

    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("data_dir", "data_dri"),
    )
    .unwrap();
    let out = Command::new(binary("spire-server"))
        .args(["validate", "-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("data_dri"), "{text}");
}
