//! An external server KeyManager (`plugin_cmd`) end to end, with a real plugin built on
//! spire-plugin-sdk v1.4.4 and its pluginmain (crates/spire-e2e/go-plugins/memkeymanager,
//! built by scripts/plugin-deps.sh): our server mints its CA and JWT key in the plugin and
//! signs through `SignData`, an agent attests and gets an SVID whose chain verifies, minted
//! SVIDs verify against the bundle, and upstream v1.13.3's server does the same with the same
//! binary. A plugin that dies at run time makes signing fail with an error, not hang.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use spire_e2e::test_plugin as plugin;
use spire_e2e::{AgentProcess, ServerPaths, ServerProcess, binary, interop_program, server_config};

const TD: &str = "example.org";

/// Starts `program` with the disk KeyManager replaced by the external one at `plugin_cmd`,
/// logging signatures to `sign_log`.
fn start_server(program: &Path, dir: &Path, plugin_cmd: &Path, sign_log: &Path) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    ServerProcess::start_program_on_free_port(program, dir, |port| {
        let socket = dir.join("api.sock");
        let data_dir = dir.join("data");
        let keys = data_dir.join("keys.json");
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &keys,
            database_type: "sqlite3",
            connection_string: &connection_string,
            extra_server_keys: "",
        });
        let disk = format!(
            "    KeyManager \"disk\" {{\n        plugin_data {{\n            keys_path = \"{}\"\n        }}\n    }}\n",
            keys.display()
        );
        assert!(config.contains(&disk), "{config}");
        let external = format!(
            "    KeyManager \"mem\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            sign_log = \"{}\"\n        }}\n    }}\n",
            plugin_cmd.display(),
            sign_log.display()
        );
        let config_path = dir.join("server.conf");
        std::fs::write(&config_path, config.replace(&disk, &external)).unwrap();
        (config_path, socket)
    })
}

/// Mints an X509-SVID through the server CLI and verifies it against the roots it returns.
fn mint_and_verify(server: &ServerProcess, id: &str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let minted = server.cli_json(&["x509", "mint", "-spiffeID", id]);
    let minted = &minted[0];
    let chain: Vec<Vec<u8>> = minted["x509_svid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| b64.decode(c.as_str().unwrap()).unwrap())
        .collect();
    let roots: Vec<Vec<u8>> = minted["root_cas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| b64.decode(c.as_str().unwrap()).unwrap())
        .collect();
    let verified =
        spire_core::x509::verify_x509_svid(&chain, &roots, time::OffsetDateTime::now_utc())
            .unwrap();
    assert_eq!(verified.as_str(), id);
}

fn plugin_pids(exe: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn the_server_ca_signs_through_an_external_key_manager_and_a_dead_plugin_gives_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A private copy, so this test's plugin process is told apart from other tests'.
    let plugin_cmd = tmp.path().join("memkeymanager");
    std::fs::copy(plugin("memkeymanager"), &plugin_cmd).unwrap();
    let sign_log = tmp.path().join("signs.log");
    let server = start_server(
        &binary("spire-server"),
        &tmp.path().join("server"),
        &plugin_cmd,
        &sign_log,
    );

    // The CA certificate was self-signed by the plugin's key, and so was the JWT key's use.
    let log = std::fs::read_to_string(&sign_log).unwrap();
    assert!(log.lines().any(|l| l == "x509-CA-A SHA-256 false"), "{log}");

    // An agent attests (its SVID is signed through the plugin and verified on its side).
    let token = server.generate_join_token(&format!("spiffe://{TD}/node"));
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = AgentProcess::start(&agent_dir, &server, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(90));
    mint_and_verify(&server, &format!("spiffe://{TD}/minted"));
    let jwt = server.cli_json(&[
        "jwt",
        "mint",
        "-spiffeID",
        &format!("spiffe://{TD}/jwt"),
        "-audience",
        "aud",
    ]);
    assert!(jwt.to_string().contains("ey"), "{jwt}");
    let log = std::fs::read_to_string(&sign_log).unwrap();
    assert!(
        log.lines().any(|l| l == "JWT-Signer-A SHA-256 false"),
        "{log}"
    );
    assert!(
        log.lines().filter(|l| l.starts_with("x509-CA-A")).count() >= 3,
        "{log}"
    );

    // The plugin dies: signing fails promptly with an error naming the key manager.
    let pids = plugin_pids(&plugin_cmd);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let out = server.cli(&["x509", "mint", "-spiffeID", &format!("spiffe://{TD}/after")]);
    assert!(
        !out.status.success(),
        "minting succeeded without its key manager"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keymanager(mem)"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "signing hung for {:?}",
        started.elapsed()
    );
    drop(agent);
}

#[test]
fn upstreams_server_signs_through_the_same_plugin_binary() {
    let upstream = interop_program("SPIRE_UPSTREAM_SERVER");
    let tmp = tempfile::tempdir().unwrap();
    let sign_log = tmp.path().join("signs.log");
    let server = start_server(
        &upstream,
        &tmp.path().join("server"),
        &plugin("memkeymanager"),
        &sign_log,
    );
    mint_and_verify(&server, &format!("spiffe://{TD}/minted"));
    let log = std::fs::read_to_string(&sign_log).unwrap();
    assert!(log.lines().any(|l| l == "x509-CA-A SHA-256 false"), "{log}");
}
