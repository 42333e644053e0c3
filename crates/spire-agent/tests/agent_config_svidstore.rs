//! The `SVIDStore` plugin type in agent.conf: external stores (`plugin_cmd`) are accepted with
//! their HCL data; the built-in `aws_secretsmanager` needs a region; `gcp_secretmanager` is
//! refused by name with the way out.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

use spire_agent::config;
use spire_core::config::plugins::PluginData;

fn conf(svid_store: &str) -> String {
    format!(
        "agent {{\n trust_domain = \"example.org\"\n server_address = \"127.0.0.1\"\n \
         insecure_bootstrap = true\n}}\nplugins {{\n NodeAttestor \"join_token\" {{}}\n \
         KeyManager \"memory\" {{}}\n WorkloadAttestor \"unix\" {{}}\n{svid_store}\n}}"
    )
}

#[test]
fn an_external_svidstore_is_accepted_with_its_data_as_hcl() {
    let text = conf(
        "SVIDStore \"files\" {\n plugin_cmd = \"/opt/store\"\n plugin_data { directory = \"/x\" }\n}",
    );
    let resolved = config::load_str("agent.conf", &text, false)
        .and_then(|c| c.resolve())
        .unwrap();
    let [store] = resolved.plugins.svid_stores.as_slice() else {
        panic!("{:?}", resolved.plugins.svid_stores);
    };
    assert_eq!(store.name, "files");
    assert_eq!(store.cmd, std::path::Path::new("/opt/store"));
    assert_eq!(store.data, PluginData::Fixed("directory = \"/x\"".into()));
}

#[test]
fn gcp_secretmanager_is_refused_by_name_and_aws_secretsmanager_needs_a_region() {
    let text = conf("SVIDStore \"gcp_secretmanager\" { plugin_data {} }");
    let err = config::load_str("agent.conf", &text, false)
        .and_then(|c| c.resolve())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugins.SVIDStore.gcp_secretmanager"), "{err}");
    assert!(
        err.contains("not available in this build")
            && err.contains("external SVIDStore with plugin_cmd"),
        "{err}"
    );

    let text = conf("SVIDStore \"aws_secretsmanager\" { plugin_data {} }");
    let err = config::load_str("agent.conf", &text, false)
        .and_then(|c| c.resolve())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("region is required"), "{err}");

    let text = conf("SVIDStore \"aws_secretsmanager\" { plugin_data { region = \"us-east-1\" } }");
    let resolved = config::load_str("agent.conf", &text, false)
        .and_then(|c| c.resolve())
        .unwrap();
    assert_eq!(
        resolved.plugins.aws_secretsmanager.unwrap().region,
        "us-east-1"
    );
}
