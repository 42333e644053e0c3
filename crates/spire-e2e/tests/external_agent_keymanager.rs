//! An external agent KeyManager (`plugin_cmd`) end to end, with a real plugin built on
//! spire-plugin-sdk v1.4.4 and its pluginmain (crates/spire-e2e/go-plugins/agentkeymanager,
//! built by scripts/plugin-deps.sh; it keeps keys in `key_dir` and logs every call).
//!
//! Our agent attests with a join token: its SVID key is generated in the plugin under
//! upstream's ID `agent-svid-A`, the CSR and every TLS handshake with the server are signed
//! through `SignData`, the SVID certifies the plugin's key, the renewal (short `agent_ttl`)
//! moves to `agent-svid-B`, and a workload gets an X509-SVID. A restarted agent finds its key
//! in the restarted plugin and does not attest again. After the plugin is killed (SIGKILL),
//! renewal and new handshakes fail with errors naming the plugin, nothing hangs, and the agent
//! stops promptly. Upstream v1.13.3's agent makes the same KeyManager calls on the same binary.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use spire_e2e::test_plugin as plugin;
use spire_e2e::{
    AgentProcess, ServerProcess, binary, current_uid, eventually, interop_program, subdir,
};

const TD: &str = "example.org";
/// Short agent SVIDs, so the agent renews (at half-life) within the test.
const SERVER_KEYS: &str = r#"agent_ttl = "20s""#;
/// The KeyManager's configured name, which errors must carry.
const PLUGIN_NAME: &str = "plugkm";

/// Writes the agent config with the disk KeyManager replaced by the plugin at `plugin_cmd`,
/// logging its calls to `<dir>/calls.log` and keeping keys in `<dir>/keys`.
fn write_agent_config(dir: &Path, server_port: u16, plugin_cmd: &Path) -> (PathBuf, PathBuf) {
    let keys = subdir(dir, "keys");
    let (config_path, socket) = AgentProcess::write_config(dir, server_port, "");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let disk = format!(
        "    KeyManager \"disk\" {{\n        plugin_data {{\n            directory = \"{}\"\n        }}\n    }}\n",
        dir.join("agent-data").display()
    );
    assert!(text.contains(&disk), "{text}");
    let external = format!(
        "    KeyManager \"{PLUGIN_NAME}\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            call_log = \"{}\"\n            key_dir = \"{}\"\n        }}\n    }}\n",
        plugin_cmd.display(),
        dir.join("calls.log").display(),
        keys.display()
    );
    std::fs::write(&config_path, text.replace(&disk, &external)).unwrap();
    (config_path, socket)
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The public key (SPKI DER) of the agent SVID stored in `data_dir`, in upstream's layout.
fn stored_svid_public_key(dir: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(dir.join("agent-data/agent-data.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(value["svid"][0].as_str()?)
        .ok()?;
    let leaf = spire_core::pem::decode_certificates(&pem)
        .ok()?
        .into_iter()
        .next()?;
    spire_core::x509::certificate_public_key(&leaf).ok()
}

/// The public key (SPKI DER) the plugin holds under `id`, from its key file.
fn plugin_public_key(dir: &Path, id: &str) -> Option<Vec<u8>> {
    let der = std::fs::read(dir.join("keys").join(format!("{id}.der"))).ok()?;
    Some(
        spire_core::keys::PrivateKey::from_der(&der)
            .unwrap()
            .public_key_der(),
    )
}

fn plugin_pids(exe: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// A private copy of the plugin, so this test's plugin processes are told apart.
fn plugin_copy(dir: &Path) -> PathBuf {
    let path = dir.join("agentkeymanager");
    std::fs::copy(plugin("agentkeymanager"), &path).unwrap();
    path
}

/// Runs `program` as agent with the plugin until it renewed its SVID once; returns the
/// KeyManager calls (GetPublicKey(s) and GenerateKey lines, and the kinds of SignData
/// lines) in order of first appearance.
fn calls_until_renewed(program: &Path, case: &Path) -> Vec<String> {
    let server = ServerProcess::start(&subdir(case, "server"), SERVER_KEYS);
    let agent_dir = subdir(case, "agent");
    let plugin_cmd = plugin_copy(case);
    let (config, socket) = write_agent_config(&agent_dir, server.port, &plugin_cmd);
    let token = server.generate_join_token(&format!("spiffe://{TD}/node"));
    let agent =
        AgentProcess::start_program_with_config(program, &agent_dir, &config, socket, Some(&token));
    eventually(
        "the agent renews its SVID",
        Duration::from_secs(120),
        || {
            calls(&agent_dir)
                .iter()
                .any(|l| l == "SignData agent-svid-B SHA-256 false")
        },
    );
    drop(agent);
    let mut seen: Vec<String> = Vec::new();
    for line in calls(&agent_dir) {
        if !seen.contains(&line) {
            seen.push(line);
        }
    }
    seen
}

#[test]
fn the_agent_svid_key_lives_in_an_external_key_manager_and_a_dead_plugin_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&subdir(tmp.path(), "server"), SERVER_KEYS);
    let agent_dir = subdir(tmp.path(), "agent");
    let plugin_cmd = plugin_copy(tmp.path());
    let (config, socket) = write_agent_config(&agent_dir, server.port, &plugin_cmd);
    let agent_id = format!("spiffe://{TD}/node");
    let token = server.generate_join_token(&agent_id);
    let mut agent =
        AgentProcess::start_with_config(&agent_dir, &config, socket.clone(), Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(90));

    // Attested with a key the plugin generated under upstream's ID, signed there.
    let log = calls(&agent_dir);
    assert!(
        log.iter().any(|l| l == "GenerateKey agent-svid-A EC_P256"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l == "SignData agent-svid-A SHA-256 false"),
        "{log:?}"
    );
    assert_eq!(
        stored_svid_public_key(&agent_dir),
        plugin_public_key(&agent_dir, "agent-svid-A"),
        "the agent SVID does not certify the plugin's key"
    );

    // A workload gets an X509-SVID over the connection the plugin's key authenticates.
    let workload_id = format!("spiffe://{TD}/workload");
    server.create_uid_entry(&agent_id, &workload_id, current_uid(), &[]);
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(60));
    assert!(fetched.contains(&workload_id), "{fetched}");

    // Renewal at half of the 20 s lifetime: a new key in the other slot, the stored SVID
    // certifies it, and later handshakes sign with it.
    eventually(
        "the renewed SVID certifies the plugin's agent-svid-B key",
        Duration::from_secs(90),
        || {
            let b = plugin_public_key(&agent_dir, "agent-svid-B");
            b.is_some() && stored_svid_public_key(&agent_dir) == b
        },
    );
    let log = calls(&agent_dir);
    assert!(
        log.iter().any(|l| l == "GenerateKey agent-svid-B EC_P256"),
        "{log:?}"
    );

    // A restart: a new plugin process loads its keys, the agent finds its SVID's key there
    // and does not attest again (the join token is spent).
    agent.stop();
    assert!(
        plugin_pids(&plugin_cmd).is_empty(),
        "the plugin outlived the agent"
    );
    let mut agent = AgentProcess::start_with_config(&agent_dir, &config, socket, None);
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(90));
    assert!(
        agent
            .log()
            .contains("using the agent SVID stored in data_dir"),
        "{}",
        agent.log()
    );
    assert!(calls(&agent_dir).iter().any(|l| l == "GetPublicKeys"));

    // The plugin dies: the next renewal fails naming it, and so does the next handshake
    // (forced by restarting the server), promptly.
    let pids = plugin_pids(&plugin_cmd);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let named = format!("keymanager({PLUGIN_NAME})");
    eventually(
        "the renewal fails with an error naming the plugin",
        Duration::from_secs(90),
        || {
            agent
                .log()
                .lines()
                .any(|l| l.contains(&named) && l.contains("failed to generate key"))
        },
    );
    server.stop();
    server.start_again();
    eventually(
        "a new handshake fails with an error naming the plugin",
        Duration::from_secs(90),
        || {
            agent
                .log()
                .lines()
                .any(|l| l.contains(&named) && l.contains("failed to sign"))
        },
    );
    let started = Instant::now();
    let out = agent.cli(&["healthcheck"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the agent hung: healthcheck took {:?}: {out:?}",
        started.elapsed()
    );
    let started = Instant::now();
    agent.stop();
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the agent took {:?} to stop",
        started.elapsed()
    );
    assert!(plugin_pids(&plugin_cmd).is_empty());
}

#[test]
fn upstreams_agent_makes_the_same_key_manager_calls_on_the_same_plugin_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = calls_until_renewed(&binary("spire-agent"), &tmp.path().join("ours"));
    let upstream = calls_until_renewed(
        &interop_program("SPIRE_UPSTREAM_AGENT"),
        &tmp.path().join("upstream"),
    );
    let generated = |calls: &[String]| -> Vec<String> {
        calls
            .iter()
            .filter(|l| l.starts_with("GenerateKey") || l.starts_with("SignData"))
            .cloned()
            .collect()
    };
    assert_eq!(
        generated(&ours),
        generated(&upstream),
        "ours: {ours:?}\nupstream: {upstream:?}"
    );
    assert_eq!(
        generated(&ours),
        [
            "GenerateKey agent-svid-A EC_P256",
            "SignData agent-svid-A SHA-256 false",
            "GenerateKey agent-svid-B EC_P256",
            "SignData agent-svid-B SHA-256 false",
        ]
    );
}
