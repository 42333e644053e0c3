//! The server's `aws_kms` KeyManager through the real `spire-server` binary, against moto
//! (AWS's API emulator) on loopback: upstream's configuration block loads unchanged, the CA
//! and JWT keys are created in KMS under upstream's aliases and every signature is a
//! `kms:Sign` call, an agent attests and its SVID chains to the bundle, and a restart finds
//! the same keys through their aliases (the bundle is unchanged, no key is created again).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};

use spire_e2e::aws::{Moto, with_env};
use spire_e2e::pki::pem_certificates;
use spire_e2e::{AgentProcess, ServerProcess, binary, write_server_config_with_plugins};

fn dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_server_keeps_its_ca_and_jwt_keys_in_kms_and_finds_them_again_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let server_dir = dir(tmp.path(), "server");
    let id_file = server_dir.join("kms_server_id");
    // Upstream's block (doc/plugin_server_keymanager_aws_kms.md); credentials and the
    // endpoint come from the environment, as operators give them.
    let key_manager = format!(
        "    KeyManager \"aws_kms\" {{\n        plugin_data {{\n            region = \"us-east-1\"\n            key_identifier_file = \"{}\"\n        }}\n    }}\n",
        id_file.display()
    );
    let program = with_env(&server_dir, &binary("spire-server"), &moto.env());
    moto.start_recording();
    let mut server = ServerProcess::start_program_on_free_port(&program, &server_dir, |port| {
        let (config, socket) = write_server_config_with_plugins(&server_dir, port, "");
        // The one KeyManager is aws_kms instead of the default disk one.
        let text = std::fs::read_to_string(&config).unwrap();
        let start = text.find("    KeyManager \"disk\"").unwrap();
        let end = start + text[start..].find("\n    }\n").unwrap() + "\n    }\n".len();
        let text = format!("{}{key_manager}{}", &text[..start], &text[end..]);
        std::fs::write(&config, text).unwrap();
        (config, socket)
    });
    let server_id = std::fs::read_to_string(&id_file).unwrap();
    uuid_like(&server_id);

    // The keys were created in KMS and the CA signs through kms:Sign.
    let calls = moto.recorded_calls();
    let created: Vec<_> = calls
        .iter()
        .filter(|c| c.service == "kms" && c.operation == "CreateKey")
        .collect();
    assert!(created.len() >= 2, "X509 CA and JWT signer keys: {calls:?}");
    let aliases: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == "CreateAlias")
        .map(|c| c.body.clone())
        .collect();
    for key in ["x509-CA-A", "JWT-Signer-A"] {
        let alias = format!("alias/SPIRE_SERVER/example_org/{server_id}/{key}");
        assert!(
            aliases.iter().any(|b| b.contains(&alias)),
            "no CreateAlias of {alias}: {aliases:?}"
        );
    }
    assert!(
        calls.iter().any(|c| c.operation == "Sign"),
        "the self-signed CA was not signed by KMS: {calls:?}"
    );
    let bundle = pem_certificates(&server.cli_ok(&["bundle", "show"]));
    assert_eq!(bundle.len(), 1, "one CA in the bundle");

    // An agent attests: its SVID is signed by the KMS-held CA key.
    let token = server.generate_join_token("spiffe://example.org/node");
    let mut agent = AgentProcess::start(&dir(tmp.path(), "agent"), &server, Some(&token));
    assert_eq!(server.agent_ids().len(), 1);
    agent.stop();

    // A restart finds the keys through their aliases: same bundle, no new key.
    moto.start_recording();
    server.start_again();
    let calls = moto.recorded_calls();
    assert!(
        !calls.iter().any(|c| c.operation == "CreateKey"),
        "a restarted server created keys again: {calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.operation == "ListAliases"),
        "{calls:?}"
    );
    assert_eq!(
        pem_certificates(&server.cli_ok(&["bundle", "show"])),
        bundle
    );
    let log = server.log();
    assert!(
        !log.contains("level=error"),
        "the server logged errors:\n{log}"
    );
}

fn uuid_like(text: &str) {
    let parts: Vec<_> = text.trim().split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "not a UUID: {text:?}");
}
