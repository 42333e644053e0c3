//! The `KeyManager` plugin type in agent.conf: an external one (`plugin_cmd`) is accepted with
//! its data, and the agent still needs exactly one KeyManager.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

use spire_agent::config::{self, KeyManagerChoice};
use spire_core::config::plugins::PluginData;

fn conf(key_managers: &str) -> String {
    format!(
        "agent {{\n trust_domain = \"example.org\"\n server_address = \"127.0.0.1\"\n \
         insecure_bootstrap = true\n}}\nplugins {{\n NodeAttestor \"join_token\" {{}}\n \
         {key_managers}\n WorkloadAttestor \"unix\" {{}}\n}}"
    )
}

#[test]
fn an_external_key_manager_is_accepted_with_its_data() {
    let text =
        conf("KeyManager \"hsm\" {\n plugin_cmd = \"/opt/km\"\n plugin_data { slot = \"1\" }\n}");
    let resolved = config::load_str("agent.conf", &text, false)
        .and_then(|c| c.resolve())
        .unwrap();
    let KeyManagerChoice::External(plugin) = &resolved.plugins.key_manager else {
        panic!("{:?}", resolved.plugins.key_manager);
    };
    assert_eq!(plugin.name, "hsm");
    assert_eq!(plugin.cmd, std::path::Path::new("/opt/km"));
    assert_eq!(plugin.data, PluginData::Fixed("slot = \"1\"".into()));
}

#[test]
fn an_external_key_manager_beside_a_built_in_one_is_refused() {
    let text =
        conf("KeyManager \"hsm\" {\n plugin_cmd = \"/opt/km\"\n}\n KeyManager \"memory\" {}");
    let err = config::load_str("agent.conf", &text, false)
        .and_then(|c| c.resolve())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("KeyManager"), "{err}");
}
