//! `NodeAttestor "x509pop"` and `"sshpop"` in agent.conf: upstream's keys, defaults and
//! required settings (`doc/plugin_agent_nodeattestor_{x509pop,sshpop}.md`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::PathBuf;

use spire_agent::config::{self, NodeAttestorChoice};

fn with_attestor(block: &str) -> String {
    format!(
        "agent {{\n    trust_domain = \"example.org\"\n    server_address = \"127.0.0.1\"\n    \
         insecure_bootstrap = true\n}}\nplugins {{\n{block}\n    KeyManager \"memory\" {{ plugin_data {{}} }}\n    \
         WorkloadAttestor \"unix\" {{ plugin_data {{}} }}\n}}\n"
    )
}

fn resolve(block: &str) -> Result<NodeAttestorChoice, String> {
    config::load_str("agent.conf", &with_attestor(block), false)
        .and_then(|c| c.resolve())
        .map(|c| c.plugins.node_attestor)
        .map_err(|e| e.to_string())
}

#[test]
fn x509pop_takes_upstreams_keys_and_requires_the_key_and_certificate() {
    let choice = resolve(
        r#"NodeAttestor "x509pop" { plugin_data {
            private_key_path = "/opt/spire/conf/agent/agent.key.pem"
            certificate_path = "/opt/spire/conf/agent/agent.crt.pem"
            intermediates_path = "/opt/spire/conf/agent/chain.pem"
        } }"#,
    )
    .unwrap();
    match choice {
        NodeAttestorChoice::X509Pop(c) => {
            assert_eq!(
                c.private_key_path,
                PathBuf::from("/opt/spire/conf/agent/agent.key.pem")
            );
            assert_eq!(
                c.certificate_path,
                PathBuf::from("/opt/spire/conf/agent/agent.crt.pem")
            );
            assert_eq!(
                c.intermediates_path,
                Some(PathBuf::from("/opt/spire/conf/agent/chain.pem"))
            );
        }
        other => panic!("{other:?}"),
    }
    let err = resolve(r#"NodeAttestor "x509pop" { plugin_data { certificate_path = "c.pem" } }"#)
        .unwrap_err();
    assert!(err.contains("private_key_path is required"), "{err}");
    let err = resolve(r#"NodeAttestor "x509pop" { plugin_data { private_key_path = "k.pem" } }"#)
        .unwrap_err();
    assert!(err.contains("certificate_path is required"), "{err}");
    let err = resolve(
        r#"NodeAttestor "x509pop" { plugin_data { private_key_path = "k.pem"
        certificate_path = "c.pem"
        ca_bundle_path = "x" } }"#,
    )
    .unwrap_err();
    assert!(err.contains("unknown key \"ca_bundle_path\""), "{err}");
}

#[test]
fn sshpop_defaults_to_the_hosts_rsa_key_and_certificate() {
    match resolve(r#"NodeAttestor "sshpop" { plugin_data {} }"#).unwrap() {
        NodeAttestorChoice::SshPop(c) => {
            assert_eq!(c.host_key_path, PathBuf::from("/etc/ssh/ssh_host_rsa_key"));
            assert_eq!(
                c.host_cert_path,
                PathBuf::from("/etc/ssh/ssh_host_rsa_key-cert.pub")
            );
        }
        other => panic!("{other:?}"),
    }
    match resolve(
        r#"NodeAttestor "sshpop" { plugin_data {
            host_cert_path = "./conf/agent/dummy_agent_ssh_key-cert.pub"
            host_key_path = "./conf/agent/dummy_agent_ssh_key"
        } }"#,
    )
    .unwrap()
    {
        NodeAttestorChoice::SshPop(c) => {
            assert_eq!(
                c.host_key_path,
                PathBuf::from("./conf/agent/dummy_agent_ssh_key")
            );
        }
        other => panic!("{other:?}"),
    }
}
