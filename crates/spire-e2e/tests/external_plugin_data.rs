//! How `plugin_data` reaches an external plugin: upstream re-prints the `plugin_data { }`
//! block as HCL text, and plugins decode it with hashicorp/hcl v1's `hcl.Decode`. The test
//! plugin (go-plugins/hcldatanotifier) decodes what it receives into a struct with nested
//! blocks, labeled blocks, maps and lists, and into a generic map, and writes both; our
//! server and upstream v1.13.3's must give it data that decodes the same.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::time::Duration;

use spire_e2e::test_plugin as plugin;
use spire_e2e::{ServerPaths, ServerProcess, binary, eventually, interop_program, server_config};

const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

/// The plugin_data written in server.conf, with nested and labeled blocks, maps and lists.
fn plugin_data(output: &Path) -> String {
    format!(
        r#"        plugin_data {{
            output = "{}"
            enabled = true
            count = 3
            labels = ["a", "b c", "quote\"d"]
            env = {{
                HOME = "/root"
                "with.dot" = "x"
            }}
            clusters "blue" {{
                service_account_allow_list = ["ns:sa"]
                audience = ["spire-server"]
                use_token_review_api_validation = true
            }}
            clusters "green" {{
                service_account_allow_list = ["ns2:sa2", "ns3:sa3"]
            }}
            server "alpha" {{
                port = 8081
                tags = ["x"]
            }}
            server "beta" {{
                port = 8082
            }}
            nested {{
                depth = 2
                inner {{
                    name = "first"
                    ratio = 0.5
                }}
                inner {{
                    name = "second"
                    ratio = 1.25
                }}
            }}
        }}
"#,
        output.display()
    )
}

/// Starts `program` with the test Notifier and returns what the plugin wrote.
fn decoded_by(program: &Path, case: &Path) -> serde_json::Value {
    std::fs::create_dir_all(case).unwrap();
    let output = case.join("decoded.json");
    let block = format!(
        "{JOIN_TOKEN_BLOCK}    Notifier \"hcldata\" {{\n        plugin_cmd = \"{}\"\n{}    }}\n",
        plugin("hcldatanotifier").display(),
        plugin_data(&output)
    );
    let server = ServerProcess::start_program_on_free_port(program, case, |port| {
        let socket = case.join("api.sock");
        let data_dir = case.join("data");
        let config_path = case.join("server.conf");
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
        std::fs::write(&config_path, config.replace(JOIN_TOKEN_BLOCK, &block)).unwrap();
        (config_path, socket)
    });
    eventually("the plugin wrote its data", Duration::from_secs(60), || {
        output.exists()
    });
    drop(server);
    let mut seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    // The output path differs between the two runs by construction.
    for part in ["decoded", "generic"] {
        assert!(seen[part]["output"].is_string(), "{seen}");
        seen[part]["output"] = serde_json::Value::Null;
    }
    seen
}

#[test]
fn a_plugin_decodes_its_hcl_plugin_data_as_under_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = decoded_by(
        &interop_program("SPIRE_UPSTREAM_SERVER"),
        &tmp.path().join("upstream"),
    );
    let ours = decoded_by(&binary("spire-server"), &tmp.path().join("ours"));
    assert_eq!(upstream["decode_error"], "", "{upstream}");
    assert_eq!(ours["decode_error"], "", "{ours}");
    assert_eq!(
        ours["decoded"], upstream["decoded"],
        "ours:\n{}\nupstream's:\n{}",
        ours["text"], upstream["text"]
    );
    assert_eq!(ours["generic"], upstream["generic"]);
    // HCL text, not JSON, as upstream sends it.
    assert!(
        !ours["text"].as_str().unwrap().trim_start().starts_with('{'),
        "{}",
        ours["text"]
    );
}
