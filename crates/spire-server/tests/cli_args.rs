//! Runs the built `spire-server` binary for what needs no server: help, flag errors,
//! validation messages, and a missing admin socket.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::{Command, Output};

fn spire_server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spire-server"))
        .args(args)
        .output()
        .expect("the spire-server binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_prints_go_style_usage_and_exits_zero() {
    let out = spire_server(&["entry", "create", "-h"]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.starts_with("Usage of entry create:\n"), "{err}");
    for flag in [
        "  -parentID string\n",
        "  -spiffeID string\n",
        "  -selector value\n",
        "  -x509SVIDTTL int\n",
        "  -jwtSVIDTTL int\n",
        "  -node\n",
        "  -storeSVID\n",
        "  -socketPath string\n",
    ] {
        assert!(err.contains(flag), "missing {flag:?} in\n{err}");
    }
    // -help (Go's other spelling) works too.
    let out = spire_server(&["agent", "purge", "-help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("  -expiredFor duration\n"));
}

#[test]
fn missing_required_flags_are_named() {
    let out = spire_server(&["agent", "show"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "Error: a SPIFFE ID is required\n");

    let out = spire_server(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/w",
        "-selector",
        "unix:uid:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "Error: a parent ID is required if the node flag is not set\n"
    );

    let out = spire_server(&["logger", "set"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "Error: a value (-level) must be set\n");
}

#[test]
fn bad_selector_is_rejected() {
    let out = spire_server(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/agent",
        "-spiffeID",
        "spiffe://example.org/w",
        "-selector",
        "unix-uid-1000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "Error: selector \"unix-uid-1000\" must be formatted as type:value\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_socket_names_the_path_and_suggests_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let socket = socket.to_str().unwrap();
    for args in [
        vec!["entry", "show", "-socketPath", socket],
        vec!["bundle", "show", "-socketPath", socket],
        vec!["agent", "list", "-socketPath", socket],
        vec!["token", "generate", "-socketPath", socket],
    ] {
        let out = spire_server(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "Error: connection error: dial unix {socket}: connect: "
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("-socketPath"), "{err}");
    }
}

#[test]
fn healthcheck_reports_an_unhealthy_server() {
    let out = spire_server(&["healthcheck", "-socketPath", "/nonexistent/api.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "Server is unhealthy: unable to determine health\n"
    );
}

#[test]
fn unknown_flags_and_commands_fail() {
    let out = spire_server(&["entry", "show", "-nosuchflag"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.contains("Usage of entry show:"), "{err}");

    let out = spire_server(&["nosuchcommand"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bool_flags_take_go_forms() {
    // -downstream=false is accepted (validation then stops at the missing selector).
    let out = spire_server(&[
        "entry",
        "create",
        "-downstream=false",
        "-admin",
        "-spiffeID",
        "spiffe://td/w",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "Error: at least one selector is required\n"
    );
}
