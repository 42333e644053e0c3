//! Agent SVIDStore end to end with a real spire-plugin-sdk v1.4.4 plugin
//! (go-plugins/filesvidstore, which writes each received SVID to `<directory>/<name>.json`):
//! an entry created with `-storeSVID` and selectors `files:name:web` is put into the store
//! named `files` with metadata `name:web`, put again when its SVID is renewed, and deleted
//! when the entry is deleted. Upstream v1.13.3's agent does the same with the same binary.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::time::Duration;

use spire_e2e::test_plugin as plugin;
use spire_e2e::{AgentProcess, ServerProcess, binary, eventually, interop_program};

const TD: &str = "example.org";

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// What the store saw for one agent program: the first stored SVID, and the names deleted.
fn store_with(agent_program: &Path, case: &Path) -> (serde_json::Value, String) {
    let (server_dir, agent_dir, store_dir) =
        (case.join("server"), case.join("agent"), case.join("store"));
    for d in [&server_dir, &agent_dir, &store_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let server = ServerProcess::start(&server_dir, "");
    let (config_path, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let block = format!(
        "    SVIDStore \"files\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            directory = \"{}\"\n        }}\n    }}\n    WorkloadAttestor \"unix\" {{",
        plugin("filesvidstore").display(),
        store_dir.display()
    );
    assert!(text.contains("    WorkloadAttestor \"unix\" {"), "{text}");
    std::fs::write(
        &config_path,
        text.replacen("    WorkloadAttestor \"unix\" {", &block, 1),
    )
    .unwrap();
    let agent_id = format!("spiffe://{TD}/node-store");
    let token = server.generate_join_token(&agent_id);
    let agent = AgentProcess::start_program_with_config(
        agent_program,
        &agent_dir,
        &config_path,
        socket,
        Some(&token),
    );

    let entry_id = server.create_entry(&[
        "-parentID",
        &agent_id,
        "-spiffeID",
        &format!("spiffe://{TD}/stored/web"),
        "-selector",
        "files:name:web",
        "-storeSVID",
        "-x509SVIDTTL",
        "40",
    ]);
    let stored_path = store_dir.join("web.json");
    eventually("the SVID is stored", Duration::from_secs(90), || {
        stored_path.exists()
    });
    let first = read_json(&stored_path).unwrap();

    // Renewed at half of its 40 s lifetime and stored again.
    let serial = first["leaf_serial"].clone();
    eventually(
        "the renewed SVID is stored again",
        Duration::from_secs(90),
        || read_json(&stored_path).is_some_and(|now| now["leaf_serial"] != serial),
    );

    server.cli_ok(&["entry", "delete", "-entryID", &entry_id]);
    // The plugin removes the file, then logs the deletion: wait for both.
    let deleted_log = store_dir.join("deleted.log");
    eventually(
        "the stored SVID is deleted with its entry",
        Duration::from_secs(90),
        || !stored_path.exists() && deleted_log.exists(),
    );
    let deleted = std::fs::read_to_string(store_dir.join("deleted.log")).unwrap();
    drop(agent);
    (first, deleted)
}

#[test]
fn an_entry_with_store_svid_is_stored_renewed_and_deleted_as_upstreams_agent_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, deleted) = store_with(&binary("spire-agent"), &tmp.path().join("ours"));
    assert_eq!(ours["spiffe_id"], format!("spiffe://{TD}/stored/web"));
    assert_eq!(ours["leaf_uri"], ours["spiffe_id"]);
    assert_eq!(ours["metadata"], serde_json::json!(["name:web"]));
    assert_eq!(ours["chain_length"], 1);
    assert_eq!(ours["bundle_length"], 1);
    assert_eq!(ours["expires_at"], ours["leaf_not_after"]);
    assert_eq!(ours["federated_bundles"], serde_json::json!({}));
    assert_eq!(deleted, "web\n");

    let (upstream, up_deleted) = store_with(
        &interop_program("SPIRE_UPSTREAM_AGENT"),
        &tmp.path().join("upstream"),
    );
    for key in [
        "spiffe_id",
        "leaf_uri",
        "metadata",
        "chain_length",
        "bundle_length",
        "key_type",
        "federated_bundles",
    ] {
        assert_eq!(
            ours[key], upstream[key],
            "{key} differs from upstream's agent"
        );
    }
    assert_eq!(up_deleted, deleted);
}
