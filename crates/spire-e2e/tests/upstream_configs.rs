//! Upstream's own example configurations, unchanged, through the real `spire-server validate`
//! and `spire-agent validate`: the quickstart files and the Helm chart's default server
//! ConfigMap load; the "full" files, which enable every plugin as a reference, are refused
//! only where upstream's own server and agent cannot run them either (two UpstreamAuthorities,
//! an empty `k8s_psat` cluster), and load once that is resolved.
//!
//! The files in `tests/data/upstream_conf` are byte-for-byte copies of upstream SPIRE's
//! `conf/` at v1.13.3 and v1.15.3 (`server.conf`, `agent.conf` and the dummy CA files are the
//! same in both), and `helm-spire-server.json` is the `server.conf` of the
//! spiffe/helm-charts-hardened `spire-server` ConfigMap with the chart's default values
//! (chart at SPIRE 1.15.3, commit 8a28a1b9), rendered by hand from `templates/configmap.yaml`
//! and `values.yaml` (release `spire` in namespace `spire-server`), since no `helm` binary is
//! available here.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spire_e2e::binary;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/upstream_conf")
        .join(name)
}

/// A working directory laid out like an upstream checkout (`conf/agent/dummy_root_ca.crt`,
/// `conf/server/dummy_upstream_ca.*`), which the example files name relative to it.
fn upstream_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (sub, file) in [
        ("conf/agent", "dummy_root_ca.crt"),
        ("conf/server", "dummy_upstream_ca.crt"),
        ("conf/server", "dummy_upstream_ca.key"),
    ] {
        let target = dir.path().join(sub);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::copy(data(file), target.join(file)).unwrap();
    }
    dir
}

fn validate(program: &str, config: &Path, cwd: &Path) -> Output {
    Command::new(binary(program))
        .args(["validate", "-config"])
        .arg(config)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; run `cargo build --bins` first"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_valid(program: &str, config: &Path, cwd: &Path) {
    let output = validate(program, config, cwd);
    assert!(
        output.status.success(),
        "{} is refused by {program} validate:\n{}",
        config.display(),
        text(&output)
    );
}

fn assert_refused_naming(program: &str, config: &Path, cwd: &Path, needle: &str) {
    let output = validate(program, config, cwd);
    let shown = text(&output);
    assert!(
        !output.status.success(),
        "{} unexpectedly valid:\n{shown}",
        config.display()
    );
    assert!(shown.contains(needle), "{needle:?} not in:\n{shown}");
}

/// Removes the `<kind> "<name>" { ... }` plugin block (balanced braces) from HCL `text`.
fn without_plugin(text: &str, kind: &str, name: &str) -> String {
    let header = format!("{kind} \"{name}\" {{");
    let start = text
        .lines()
        .scan(0usize, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| line.trim_start().starts_with(&header))
        .map(|(at, _)| at)
        .unwrap_or_else(|| panic!("no {header} block"));
    let mut depth = 0i32;
    let mut end = start;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = start + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn quickstart_configs_validate_unchanged() {
    let checkout = upstream_checkout();
    assert_valid("spire-server", &data("server.conf"), checkout.path());
    assert_valid("spire-agent", &data("agent.conf"), checkout.path());
}

#[test]
fn full_server_configs_load_with_either_of_their_two_upstream_authorities() {
    // server_full.conf enables every server plugin as a reference, two UpstreamAuthorities
    // ("disk" and "ejbca") among them, which upstream's own server cannot run either (its
    // catalog takes at most one; its `validate` does not load the catalog). Every plugin
    // block loads: the file minus either UpstreamAuthority is valid.
    let checkout = upstream_checkout();
    for version in ["v1.13.3", "v1.15.3"] {
        let file = data(&format!("{version}-server_full.conf"));
        assert_refused_naming(
            "spire-server",
            &file,
            checkout.path(),
            "at most one UpstreamAuthority may be configured; found 2",
        );
        let text = std::fs::read_to_string(&file).unwrap();
        for left_out in ["ejbca", "disk"] {
            let trimmed = checkout
                .path()
                .join(format!("{version}-server_full-no-{left_out}.conf"));
            std::fs::write(
                &trimmed,
                without_plugin(&text, "UpstreamAuthority", left_out),
            )
            .unwrap();
            assert_valid("spire-server", &trimmed, checkout.path());
        }
    }
}

/// The top-level `plugins { ... }` block of HCL `text` (balanced braces).
fn plugins_block(text: &str) -> (usize, usize) {
    let start = text
        .find("\nplugins {")
        .map(|at| at + 1)
        .unwrap_or_else(|| panic!("no plugins block"));
    let mut depth = 0i32;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return (start, start + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced plugins block");
}

#[test]
fn full_agent_configs_name_the_first_unconfigured_plugin_and_their_agent_keys_load() {
    // agent_full.conf enables every plugin with empty plugin_data, as a reference: upstream's
    // own agent cannot run it either (k8s_psat needs `cluster`, one NodeAttestor at most).
    let checkout = upstream_checkout();
    let quickstart = std::fs::read_to_string(data("agent.conf")).unwrap();
    let (qs, qe) = plugins_block(&quickstart);
    for version in ["v1.13.3", "v1.15.3"] {
        let file = data(&format!("{version}-agent_full.conf"));
        assert_refused_naming(
            "spire-agent",
            &file,
            checkout.path(),
            "plugins.NodeAttestor.k8s_psat.plugin_data.cluster",
        );
        // Every key of its agent { }, telemetry { } and health_checks { } blocks loads: the
        // same file with the quickstart's plugins is valid.
        let text = std::fs::read_to_string(&file).unwrap();
        let (start, end) = plugins_block(&text);
        let ours = format!("{}{}{}", &text[..start], &quickstart[qs..qe], &text[end..]);
        let trimmed = checkout
            .path()
            .join(format!("{version}-agent_full-quickstart-plugins.conf"));
        std::fs::write(&trimmed, ours).unwrap();
        assert_valid("spire-agent", &trimmed, checkout.path());
    }
}

#[test]
fn helm_chart_default_server_config_loads_with_its_k8s_configmap_bundle_publisher() {
    let checkout = upstream_checkout();
    let file = data("helm-spire-server.json");
    // The chart enables `BundlePublisher "k8s_configmap"` by default (a list of maps keyed
    // by cluster ID, as the chart renders HCL maps to JSON).
    assert_valid("spire-server", &file, checkout.path());
    // Its keys are checked: a bad format is refused naming the cluster's key.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    json["plugins"]["BundlePublisher"]["k8s_configmap"]["plugin_data"]["clusters"][0]["chart-internal"]
        ["format"] = "der".into();
    let bad = checkout.path().join("helm-bad-format.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    assert_refused_naming(
        "spire-server",
        &bad,
        checkout.path(),
        "plugins.BundlePublisher.k8s_configmap.plugin_data.clusters.chart-internal.format",
    );
    assert_refused_naming(
        "spire-server",
        &bad,
        checkout.path(),
        "unknown bundle format: \"der\"",
    );
}
