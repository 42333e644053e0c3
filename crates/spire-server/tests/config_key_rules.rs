//! Keys of `server { }` that upstream reads only under another key, or that this server
//! refuses: each with upstream's rule and the exact message an operator gets.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;

use spire_server::config::{self, ConfigError, ResolvedServerConfig};

const MINIMAL: &str = r#"
server {
    trust_domain = "example.org"
    data_dir = "./.data"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }
    }
    KeyManager "memory" { plugin_data {} }
    NodeAttestor "join_token" { plugin_data {} }
}
"#;

/// Resolves MINIMAL with `lines` added to the `server` block.
fn resolve_with(lines: &str) -> Result<ResolvedServerConfig, ConfigError> {
    let text = MINIMAL.replacen("server {", &format!("server {{\n{lines}"), 1);
    config::load_str("server.conf", &text, false)?.resolve()
}

#[test]
fn profiling_port_freq_and_names_count_only_with_profiling_enabled_which_is_refused() {
    let profiling = "    profiling_port = 6060\n    profiling_freq = 10\n    \
                     profiling_names = [\"cpu\", \"heap\"]\n";
    // Upstream starts its pprof listener and writers only when profiling_enabled is true;
    // this server has none, so the key that would start them is refused, naming the others.
    let err = resolve_with(&format!("    profiling_enabled = true\n{profiling}"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "server.conf: server.profiling_enabled: Go pprof profiling is not available in this \
         server; remove profiling_enabled (profiling_port, profiling_freq and profiling_names \
         are only read when it is true)"
    );
    // Without it they load and start nothing, as upstream's.
    for lines in [
        profiling.to_owned(),
        format!("    profiling_enabled = false\n{profiling}"),
    ] {
        let r = resolve_with(&lines).unwrap();
        assert!(!r.profiling_enabled);
        assert_eq!(
            (
                r.profiling_port,
                r.profiling_freq,
                r.profiling_names.clone()
            ),
            (6060, 10, vec!["cpu".to_owned(), "heap".to_owned()])
        );
    }
}

#[test]
fn wit_key_type_and_wit_issuer_are_refused_because_there_are_no_wit_svids() {
    for (key, line) in [
        ("wit_key_type", "wit_key_type = \"ec-p256\""),
        ("wit_issuer", "wit_issuer = \"https://oidc.example.org\""),
    ] {
        let err = resolve_with(&format!("    experimental {{ {line} }}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "server.conf: server.experimental.{key}: WIT-SVIDs are not supported by this \
                 server; remove the key"
            )
        );
    }
}

#[test]
fn validate_refuses_a_prometheus_tls_block_by_name() {
    // Upstream v1.15 serves /metrics over TLS with this block; this server serves plain HTTP
    // only, so `validate` (and `run`) refuse the block rather than serve without the TLS
    // the operator asked for.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(
        &path,
        format!(
            "{MINIMAL}telemetry {{\n Prometheus {{\n port = 9988\n tls {{\n \
             cert_file = \"c.pem\"\n key_file = \"k.pem\"\n }}\n }}\n}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spire-server"))
        .args(["validate", "-config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "SPIRE server configuration file is invalid: the telemetry block cannot be used: \
         telemetry.Prometheus.tls: serving /metrics over TLS (upstream v1.15) is not supported \
         by this SPIRE build; remove the tls block to serve plain HTTP (bind host to localhost \
         or put a TLS proxy in front)\n"
    );
    // Without the tls block the same file is valid.
    std::fs::write(
        &path,
        format!("{MINIMAL}telemetry {{\n Prometheus {{\n port = 9988\n }}\n}}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spire-server"))
        .args(["validate", "-config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SPIRE server configuration file is valid.\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
