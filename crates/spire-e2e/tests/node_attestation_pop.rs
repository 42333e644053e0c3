//! `x509pop` and `sshpop` node attestation end to end: certificates made by `openssl` and
//! host certificates by `ssh-keygen -s`, our spire-agent against our spire-server, upstream
//! v1.13.3's agent against ours and ours against upstream's server (wire compatibility both
//! ways), and refusals (expired certificate, certificate of another CA) with
//! PermissionDenied naming the reason.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spire_e2e::pop::{KeyAlg, OpensslCa, SshCa, openssl_serial, openssl_sha1_fingerprint};
use spire_e2e::subdir as dir;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, interop_program, run_to_failure,
    selector_strings, server_config,
};

const TD: &str = "example.org";

/// How our agent words a PermissionDenied answer to its attestation.
const DENIED: &str = "the SPIRE server denied the agent: nodeattestor(";

const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

/// Starts `program` (a spire-server) with the test config plus `attestors` (HCL blocks).
fn start_server(program: &Path, dir: &Path, attestors: &str) -> ServerProcess {
    let socket = dir.join("api.sock");
    let data_dir = dir.join("data");
    let config_path = dir.join("server.conf");
    ServerProcess::start_program_on_free_port(program, dir, |port| {
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
        let config = config.replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{attestors}"));
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        (config_path.clone(), socket.clone())
    })
}

/// Writes the agent config for `server` with `attestor` (an HCL block) instead of join_token.
fn agent_config(dir: &Path, server: &ServerProcess, attestor: &str) -> (PathBuf, PathBuf) {
    let (config_path, socket) = AgentProcess::write_config(dir, server.port, "");
    let text = std::fs::read_to_string(&config_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains(JOIN_TOKEN_BLOCK), "{text}");
    std::fs::write(&config_path, text.replace(JOIN_TOKEN_BLOCK, attestor))
        .unwrap_or_else(|e| panic!("{e}"));
    (config_path, socket)
}

fn start_agent(program: &Path, dir: &Path, server: &ServerProcess, attestor: &str) -> AgentProcess {
    let (config, socket) = agent_config(dir, server, attestor);
    AgentProcess::start_program_with_config(program, dir, &config, socket, None)
}

/// Runs `program` (a spire-agent) that must fail to attest, and returns its output.
fn agent_refused(program: &Path, dir: &Path, server: &ServerProcess, attestor: &str) -> String {
    let (config, _) = agent_config(dir, server, attestor);
    let mut command = Command::new(program);
    // A refusal ends the agent at once instead of retrying for a minute (retry_bootstrap).
    command
        .args(["run", "-config"])
        .arg(&config)
        .arg("-retryBootstrap=false");
    run_to_failure(
        command,
        &dir.join("agent.log"),
        Duration::from_secs(90),
        "the agent kept running although its attestation should be refused",
    )
}

fn x509pop_agent_block(node_cert: &Path, node_key: &Path, intermediates: Option<&Path>) -> String {
    let intermediates = intermediates
        .map(|p| format!("intermediates_path = \"{}\"", p.display()))
        .unwrap_or_default();
    format!(
        "    NodeAttestor \"x509pop\" {{\n        plugin_data {{\n            private_key_path = \"{}\"\n            certificate_path = \"{}\"\n            {intermediates}\n        }}\n    }}\n",
        node_key.display(),
        node_cert.display()
    )
}

fn x509pop_server_block(ca_bundle: &Path) -> String {
    format!(
        "    NodeAttestor \"x509pop\" {{\n        plugin_data {{\n            ca_bundle_path = \"{}\"\n        }}\n    }}\n",
        ca_bundle.display()
    )
}

fn sshpop_agent_block(key: &Path, cert: &Path) -> String {
    format!(
        "    NodeAttestor \"sshpop\" {{\n        plugin_data {{\n            host_key_path = \"{}\"\n            host_cert_path = \"{}\"\n        }}\n    }}\n",
        key.display(),
        cert.display()
    )
}

fn sshpop_server_block(ca_line: &str, extra: &str) -> String {
    format!(
        "    NodeAttestor \"sshpop\" {{\n        plugin_data {{\n            cert_authorities = [\"{ca_line}\"]\n            {extra}\n        }}\n    }}\n"
    )
}

/// Upstream's sshpop fingerprint of a `-cert.pub` file, computed with `openssl`:
/// unpadded URL-safe base64 of the SHA-256 of the certificate's wire form.
fn ssh_cert_fingerprint(cert: &Path) -> String {
    use base64::Engine as _;
    let text = std::fs::read_to_string(cert).unwrap_or_else(|e| panic!("{e}"));
    let blob = text.split_whitespace().nth(1).unwrap_or_default();
    let wire = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .unwrap_or_else(|e| panic!("{e}"));
    let wire_path = cert.with_extension("wire");
    std::fs::write(&wire_path, wire).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .arg(&wire_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install openssl"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out.stdout)
}

#[test]
fn x509pop_agent_attests_with_its_certificate_chain_and_gets_upstreams_id_and_selectors() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = dir(tmp.path(), "pki");
    let root = OpensslCa::root(&pki, "root-ca");
    let intermediate = root.intermediate("intermediate-ca");
    let node = intermediate.node(
        "node-1",
        KeyAlg::P256,
        &["x509pop://example.org/datacenter/dc-1"],
    );

    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        &x509pop_server_block(&root.cert),
    );
    let agent_dir = dir(tmp.path(), "agent");
    let _agent = start_agent(
        &binary("spire-agent"),
        &agent_dir,
        &server,
        &x509pop_agent_block(&node.cert, &node.key, Some(&intermediate.cert)),
    );

    let agent_id = format!(
        "spiffe://{TD}/spire/agent/x509pop/{}",
        openssl_sha1_fingerprint(&node.cert)
    );
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id]);
    assert_eq!(shown["attestation_type"], "x509pop", "{shown}");
    assert_eq!(shown["can_reattest"], true, "{shown}");
    let mut selectors = selector_strings(&shown["selectors"]);
    selectors.sort();
    let mut expected = vec![
        "x509pop:subject:cn:node-1".to_owned(),
        format!(
            "x509pop:ca:fingerprint:{}",
            openssl_sha1_fingerprint(&intermediate.cert)
        ),
        format!(
            "x509pop:ca:fingerprint:{}",
            openssl_sha1_fingerprint(&root.cert)
        ),
        format!("x509pop:serialnumber:{}", openssl_serial(&node.cert)),
        "x509pop:san:datacenter:dc-1".to_owned(),
    ];
    expected.sort();
    assert_eq!(selectors, expected);
}

#[test]
fn x509pop_is_wire_compatible_with_upstream_agent_and_server_for_rsa_and_ecdsa() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    let pki = dir(tmp.path(), "pki");
    let root = OpensslCa::root(&pki, "root-ca");
    let block = x509pop_server_block(&root.cert);

    for (server_program, agent_program, who) in [
        (
            binary("spire-server"),
            upstream_agent.clone(),
            "upstream-agent-our-server",
        ),
        (
            upstream_server.clone(),
            binary("spire-agent"),
            "our-agent-upstream-server",
        ),
    ] {
        let case = dir(tmp.path(), who);
        let server = start_server(&server_program, &dir(&case, "server"), &block);
        for (alg, name) in [
            (KeyAlg::Rsa, "rsa"),
            (KeyAlg::P256, "p256"),
            (KeyAlg::P384, "p384"),
        ] {
            let node = root.node(&format!("{who}-{name}"), alg, &[]);
            let mut agent = start_agent(
                &agent_program,
                &dir(&case, &format!("agent-{name}")),
                &server,
                &x509pop_agent_block(&node.cert, &node.key, None),
            );
            let agent_id = format!(
                "spiffe://{TD}/spire/agent/x509pop/{}",
                openssl_sha1_fingerprint(&node.cert)
            );
            let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id]);
            let selectors = selector_strings(&shown["selectors"]);
            assert!(
                selectors.contains(&format!("x509pop:subject:cn:{who}-{name}")),
                "{who} {name}: {selectors:?}"
            );
            assert!(
                selectors.contains(&format!(
                    "x509pop:ca:fingerprint:{}",
                    openssl_sha1_fingerprint(&root.cert)
                )),
                "{who} {name}: {selectors:?}"
            );
            agent.stop();
        }
    }
}

#[test]
fn x509pop_refuses_an_expired_certificate_and_one_of_another_ca_with_permission_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = dir(tmp.path(), "pki");
    let root = OpensslCa::root(&pki, "root-ca");
    let other = OpensslCa::root(&pki, "other-ca");
    let expired = root.node_with_dates(
        "expired-node",
        KeyAlg::P256,
        &[],
        Some(("20200101000000Z", "20200102000000Z")),
    );
    let foreign = other.node("foreign-node", KeyAlg::P256, &[]);
    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        &x509pop_server_block(&root.cert),
    );

    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "expired"),
        &server,
        &x509pop_agent_block(&expired.cert, &expired.key, None),
    );
    assert!(log.contains(DENIED), "{log}");
    assert!(log.contains("certificate has expired"), "{log}");

    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "foreign"),
        &server,
        &x509pop_agent_block(&foreign.cert, &foreign.key, None),
    );
    assert!(log.contains(DENIED), "{log}");
    assert!(
        log.contains("certificate signed by unknown authority"),
        "{log}"
    );
    assert!(server.agent_ids().is_empty(), "{:?}", server.agent_ids());
    assert!(
        server.cli(&["healthcheck"]).status.success(),
        "the server must survive bad certificates"
    );
}

#[test]
fn sshpop_agent_attests_with_its_host_certificate_and_templates_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = dir(tmp.path(), "ssh");
    let ca = SshCa::new(&keys, "host-ca");
    let host = ca.host("host-1", "ed25519", "node-1.example.com", "-5m:+1h");

    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        &sshpop_server_block(&ca.public_line, ""),
    );
    let mut agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent"),
        &server,
        &sshpop_agent_block(&host.key, &host.cert),
    );
    let agent_id = format!(
        "spiffe://{TD}/spire/agent/sshpop/{}",
        ssh_cert_fingerprint(&host.cert)
    );
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id]);
    assert_eq!(shown["attestation_type"], "sshpop", "{shown}");
    assert_eq!(shown["can_reattest"], true, "{shown}");
    agent.stop();

    // canonical_domain and agent_path_template, as upstream's example.
    let server2 = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server2"),
        &sshpop_server_block(
            &ca.public_line,
            "canonical_domain = \"example.com\"\n            agent_path_template = \"/static/{{ .Hostname }}\"",
        ),
    );
    let _agent2 = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent2"),
        &server2,
        &sshpop_agent_block(&host.key, &host.cert),
    );
    assert_eq!(
        server2.agent_ids(),
        vec![format!("spiffe://{TD}/spire/agent/static/node-1")]
    );
}

#[test]
fn sshpop_is_wire_compatible_with_upstream_agent_and_server() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    let keys = dir(tmp.path(), "ssh");
    let ca = SshCa::new(&keys, "host-ca");
    let block = sshpop_server_block(&ca.public_line, "");

    for (server_program, agent_program, who) in [
        (
            binary("spire-server"),
            upstream_agent.clone(),
            "upstream-agent-our-server",
        ),
        (
            upstream_server.clone(),
            binary("spire-agent"),
            "our-agent-upstream-server",
        ),
    ] {
        let case = dir(tmp.path(), who);
        let server = start_server(&server_program, &dir(&case, "server"), &block);
        // Go's signer uses the legacy ssh-rsa (SHA-1) signature for RSA host keys.
        for key_type in ["ed25519", "rsa", "ecdsa"] {
            let host = ca.host(
                &format!("{who}-{key_type}"),
                key_type,
                "node.example.com",
                "-5m:+1h",
            );
            let mut agent = start_agent(
                &agent_program,
                &dir(&case, &format!("agent-{key_type}")),
                &server,
                &sshpop_agent_block(&host.key, &host.cert),
            );
            let agent_id = format!(
                "spiffe://{TD}/spire/agent/sshpop/{}",
                ssh_cert_fingerprint(&host.cert)
            );
            assert!(
                server.agent_ids().contains(&agent_id),
                "{who} {key_type}: {:?} lacks {agent_id}",
                server.agent_ids()
            );
            agent.stop();
        }
    }
}

#[test]
fn sshpop_refuses_an_expired_certificate_and_one_of_another_ca_with_permission_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = dir(tmp.path(), "ssh");
    let ca = SshCa::new(&keys, "host-ca");
    let other = SshCa::new(&keys, "other-ca");
    let expired = ca.host(
        "expired",
        "ed25519",
        "node.example.com",
        "20200101:20200102",
    );
    let foreign = other.host("foreign", "ed25519", "node.example.com", "-5m:+1h");
    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        &sshpop_server_block(&ca.public_line, ""),
    );

    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "expired"),
        &server,
        &sshpop_agent_block(&expired.key, &expired.cert),
    );
    assert!(log.contains(DENIED), "{log}");
    assert!(log.contains("ssh: cert has expired"), "{log}");

    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "foreign"),
        &server,
        &sshpop_agent_block(&foreign.key, &foreign.cert),
    );
    assert!(log.contains(DENIED), "{log}");
    assert!(log.contains("ssh: no authorities for hostname"), "{log}");
    assert!(server.agent_ids().is_empty(), "{:?}", server.agent_ids());
    assert!(
        server.cli(&["healthcheck"]).status.success(),
        "the server must survive bad certificates"
    );
}

#[test]
fn x509pop_spiffe_mode_exchanges_an_svid_of_the_server_for_an_agent_id() {
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        "    NodeAttestor \"x509pop\" {\n        plugin_data {\n            mode = \"spiffe\"\n        }\n    }\n",
    );
    for (program, name) in [
        (binary("spire-agent"), "ours"),
        (upstream_agent, "upstream"),
    ] {
        let minted = dir(tmp.path(), &format!("minted-{name}"));
        server.cli_ok(&[
            "x509",
            "mint",
            "-spiffeID",
            &format!("spiffe://{TD}/spire-exchange/host-{name}"),
            "-write",
            &minted.display().to_string(),
        ]);
        let mut agent = start_agent(
            &program,
            &dir(tmp.path(), &format!("agent-{name}")),
            &server,
            &x509pop_agent_block(&minted.join("svid.pem"), &minted.join("key.pem"), None),
        );
        let agent_id = format!("spiffe://{TD}/spire/agent/x509pop/host-{name}");
        assert!(
            server.agent_ids().contains(&agent_id),
            "{name}: {:?} lacks {agent_id}",
            server.agent_ids()
        );
        agent.stop();
    }

    // An SVID outside the prefix is refused.
    let minted = dir(tmp.path(), "minted-other");
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        &format!("spiffe://{TD}/workload/web"),
        "-write",
        &minted.display().to_string(),
    ]);
    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-other"),
        &server,
        &x509pop_agent_block(&minted.join("svid.pem"), &minted.join("key.pem"), None),
    );
    assert!(log.contains(DENIED), "{log}");
    assert!(log.contains("x509 cert doesnt match SVID prefix"), "{log}");
}

#[test]
fn evicted_x509pop_and_sshpop_agents_re_attest_and_keep_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = dir(tmp.path(), "pki");
    let root = OpensslCa::root(&pki, "root-ca");
    let node = root.node("node-1", KeyAlg::P256, &[]);
    let ssh = dir(tmp.path(), "ssh");
    let ca = SshCa::new(&ssh, "host-ca");
    let host = ca.host("host-1", "ed25519", "node.example.com", "-5m:+1h");
    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        &format!(
            "{}{}",
            x509pop_server_block(&root.cert),
            sshpop_server_block(&ca.public_line, "")
        ),
    );
    for (block, agent_id, name) in [
        (
            x509pop_agent_block(&node.cert, &node.key, None),
            format!(
                "spiffe://{TD}/spire/agent/x509pop/{}",
                openssl_sha1_fingerprint(&node.cert)
            ),
            "x509pop",
        ),
        (
            sshpop_agent_block(&host.key, &host.cert),
            format!(
                "spiffe://{TD}/spire/agent/sshpop/{}",
                ssh_cert_fingerprint(&host.cert)
            ),
            "sshpop",
        ),
    ] {
        let mut agent = start_agent(
            &binary("spire-agent"),
            &dir(tmp.path(), name),
            &server,
            &block,
        );
        let serial_of = |id: &str| {
            server
                .agents()
                .into_iter()
                .find(|a| a.spiffe_id == id)
                .map(|a| a.serial)
        };
        let first = serial_of(&agent_id).unwrap_or_else(|| panic!("{name}: {:?}", server.agents()));
        server.cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
        spire_e2e::eventually(
            &format!("{name} agent re-attested after eviction"),
            Duration::from_secs(90),
            || {
                serial_of(&agent_id).is_some_and(|s| s != first)
                    && agent.log().contains("agent re-attested")
            },
        );
        let health = agent.cli(&["healthcheck"]);
        assert!(
            health.status.success(),
            "{name}: the agent must keep serving: {}\n{}",
            String::from_utf8_lossy(&health.stderr),
            agent.log()
        );
        agent.stop();
    }
}

/// Upstream's own configurations (its node-attestation integration suite and the sshpop
/// documentation's examples), paths moved to a temporary folder, pass `validate` with our
/// binaries as with upstream's.
#[test]
fn upstreams_x509pop_and_sshpop_configs_load_unchanged() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    let opt = tmp.path().display().to_string();
    let pki = dir(tmp.path(), "conf");
    let root = OpensslCa::root(&pki, "agent-ca");
    let node = root.node("agent", KeyAlg::P256, &[]);
    std::fs::copy(&root.cert, pki.join("agent-cacert.pem")).unwrap();
    std::fs::copy(&node.cert, pki.join("agent.crt.pem")).unwrap();
    std::fs::copy(&node.key, pki.join("agent.key.pem")).unwrap();
    std::fs::copy(&root.cert, pki.join("bootstrap.crt")).unwrap();
    let ssh = dir(tmp.path(), "ssh");
    let ca = SshCa::new(&ssh, "dummy_ssh_cert_authority");
    let host = ca.host("dummy_agent_ssh_key", "ed25519", "foo-host", "-5m:+1h");
    std::fs::copy(
        ssh.join("dummy_ssh_cert_authority.pub"),
        pki.join("dummy_ssh_cert_authority.pub"),
    )
    .unwrap();

    let server_conf = format!(
        r#"server {{
	bind_address = "0.0.0.0"
	bind_port = "8081"
	trust_domain = "domain.test"
	data_dir = "{opt}/data/server"
	log_level = "DEBUG"
	ca_ttl = "1h"
	default_x509_svid_ttl = "10m"
}}

plugins {{
	DataStore "sql" {{
		plugin_data {{
			database_type = "sqlite3"
			connection_string = "{opt}/data/server/datastore.sqlite3"
		}}
	}}
	NodeAttestor "x509pop" {{
		plugin_data {{
			ca_bundle_path = "{opt}/conf/agent-cacert.pem"
		}}
	}}
    NodeAttestor "sshpop" {{
        plugin_data {{
            cert_authorities = ["{ca_line}"]
            cert_authorities_path = "{opt}/conf/dummy_ssh_cert_authority.pub"
            # canonical_domain = "example.com"
            # agent_path_template = "static/{{{{ index .ValidPrincipals 0 }}}}"
        }}
    }}
	KeyManager "memory" {{
		plugin_data = {{}}
	}}
}}
"#,
        ca_line = ca.public_line
    );
    let agent_conf = |attestor: &str| {
        format!(
            r#"agent {{
    data_dir = "{opt}/data/agent"
    log_level = "DEBUG"
    server_address = "spire-server"
    server_port = "8081"
    trust_bundle_path = "{opt}/conf/bootstrap.crt"
    trust_domain = "domain.test"
}}

plugins {{
{attestor}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{opt}/data/agent"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
        }}
    }}
}}
"#
        )
    };
    let x509pop_agent = format!(
        r#"    NodeAttestor "x509pop" {{
        plugin_data {{
            private_key_path = "{opt}/conf/agent.key.pem"
            certificate_path = "{opt}/conf/agent.crt.pem"
        }}
    }}"#
    );
    let sshpop_agent = format!(
        r#"    NodeAttestor "sshpop" {{
        plugin_data {{
            host_cert_path = "{}"
            host_key_path = "{}"
        }}
    }}"#,
        host.cert.display(),
        host.key.display()
    );
    let server_path = tmp.path().join("server.conf");
    std::fs::write(&server_path, server_conf).unwrap();
    let mut agent_paths = Vec::new();
    for (name, block) in [("x509pop", &x509pop_agent), ("sshpop", &sshpop_agent)] {
        let path = tmp.path().join(format!("agent-{name}.conf"));
        std::fs::write(&path, agent_conf(block)).unwrap();
        agent_paths.push(path);
    }
    let validate = |program: &Path, config: &Path| {
        let out = Command::new(program)
            .args(["validate", "-config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} validate {}: {}{}",
            program.display(),
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for program in [binary("spire-server"), upstream_server] {
        validate(&program, &server_path);
    }
    for program in [binary("spire-agent"), upstream_agent] {
        for path in &agent_paths {
            validate(&program, path);
        }
    }
}

/// One server with upstream's multi-CA and file-based forms: x509pop with `ca_bundle_paths`
/// (an agent of each CA attests, one of a third CA is refused) and `agent_path_template =
/// "/cn/{{ .Subject.CommonName }}"` giving the agent IDs, and sshpop configured with
/// `cert_authorities_path` only. Then x509pop's spiffe mode with an explicit `spiffe_prefix`
/// (the key upstream's code reads; upstream's doc calls it `svid_prefix`, which we also take).
#[test]
fn x509pop_ca_bundle_paths_and_template_sshpop_cert_authorities_path_and_spiffe_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = dir(tmp.path(), "pki");
    let ca_a = OpensslCa::root(&pki, "ca-a");
    let ca_b = OpensslCa::root(&pki, "ca-b");
    let ca_c = OpensslCa::root(&pki, "ca-c");
    let node_a = ca_a.node("node-a", KeyAlg::P256, &[]);
    let node_b = ca_b.node("node-b", KeyAlg::P256, &[]);
    let node_c = ca_c.node("node-c", KeyAlg::P256, &[]);
    let keys = dir(tmp.path(), "ssh");
    let ssh_ca = SshCa::new(&keys, "host-ca");
    let host = ssh_ca.host("host-1", "ed25519", "node-1.example.com", "-5m:+1h");
    let authorities = keys.join("cert_authorities");
    std::fs::write(&authorities, format!("{}\n", ssh_ca.public_line)).unwrap();

    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server"),
        &format!(
            "    NodeAttestor \"x509pop\" {{\n        plugin_data {{\n            \
             ca_bundle_paths = [\"{}\", \"{}\"]\n            \
             agent_path_template = \"/cn/{{{{ .Subject.CommonName }}}}\"\n        }}\n    }}\n\
             \x20   NodeAttestor \"sshpop\" {{\n        plugin_data {{\n            \
             cert_authorities_path = \"{}\"\n        }}\n    }}\n",
            ca_a.cert.display(),
            ca_b.cert.display(),
            authorities.display()
        ),
    );
    let mut agents = Vec::new();
    for (name, node) in [("a", &node_a), ("b", &node_b)] {
        agents.push(start_agent(
            &binary("spire-agent"),
            &dir(tmp.path(), &format!("agent-{name}")),
            &server,
            &x509pop_agent_block(&node.cert, &node.key, None),
        ));
    }
    agents.push(start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-ssh"),
        &server,
        &sshpop_agent_block(&host.key, &host.cert),
    ));
    let mut ids = server.agent_ids();
    ids.sort();
    let mut expected = vec![
        format!("spiffe://{TD}/spire/agent/cn/node-a"),
        format!("spiffe://{TD}/spire/agent/cn/node-b"),
        format!(
            "spiffe://{TD}/spire/agent/sshpop/{}",
            ssh_cert_fingerprint(&host.cert)
        ),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    let shown = server.cli_json(&[
        "agent",
        "show",
        "-spiffeID",
        &format!("spiffe://{TD}/spire/agent/cn/node-b"),
    ]);
    assert!(
        selector_strings(&shown["selectors"]).contains(&format!(
            "x509pop:ca:fingerprint:{}",
            openssl_sha1_fingerprint(&ca_b.cert)
        )),
        "{shown}"
    );
    // A node of a CA in neither bundle file is refused.
    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-c"),
        &server,
        &x509pop_agent_block(&node_c.cert, &node_c.key, None),
    );
    assert!(log.contains(DENIED), "{log}");
    for mut agent in agents {
        agent.stop();
    }
    drop(server);

    // spiffe mode with an explicit prefix: the trimmed path makes the agent ID, an SVID
    // under the default prefix no longer qualifies.
    let server = start_server(
        &binary("spire-server"),
        &dir(tmp.path(), "server-spiffe"),
        "    NodeAttestor \"x509pop\" {\n        plugin_data {\n            mode = \"spiffe\"\n            spiffe_prefix = \"/hosts/\"\n        }\n    }\n",
    );
    let mint = |name: &str, id: &str| {
        let minted = dir(tmp.path(), name);
        server.cli_ok(&[
            "x509",
            "mint",
            "-spiffeID",
            id,
            "-write",
            &minted.display().to_string(),
        ]);
        x509pop_agent_block(&minted.join("svid.pem"), &minted.join("key.pem"), None)
    };
    let block = mint("minted-host", &format!("spiffe://{TD}/hosts/rack-1"));
    let _agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-spiffe"),
        &server,
        &block,
    );
    assert_eq!(
        server.agent_ids(),
        vec![format!("spiffe://{TD}/spire/agent/x509pop/rack-1")]
    );
    let block = mint(
        "minted-default",
        &format!("spiffe://{TD}/spire-exchange/rack-2"),
    );
    let log = agent_refused(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-default-prefix"),
        &server,
        &block,
    );
    assert!(log.contains("x509 cert doesnt match SVID prefix"), "{log}");
}
