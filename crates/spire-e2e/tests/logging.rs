//! Logs as an operator's pipeline sees them, from the real binaries: `log_format = "json"`
//! lines carry logrus's keys (`time`, `level`, `msg`), text lines start with
//! `time="…" level=… msg=…`, `log_source_location` adds `file` and `func`, and after
//! logrotate moves `log_file` away, SIGUSR2 makes the process continue in a new file at the
//! configured path.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::time::Duration;

use spire_e2e::{AgentProcess, ServerProcess, Signal, eventually, send_signal};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn json_log_file_has_logrus_keys_and_is_reopened_on_sigusr2() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("spire-server.log");
    let server = ServerProcess::start(
        dir.path(),
        &format!(
            "log_format = \"json\"\n    log_file = \"{}\"\n    audit_log_enabled = true\n    disable_jwt_svids = true",
            log_file.display()
        ),
    );
    let written = read(&log_file);
    assert!(!written.is_empty(), "nothing in {}", log_file.display());
    for line in written.lines() {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        for key in ["time", "level", "msg"] {
            assert!(entry[key].is_string(), "no {key} in {line}");
        }
        let level = entry["level"].as_str().unwrap();
        assert!(
            ["error", "warning", "info", "debug", "trace"].contains(&level),
            "{level} is not a logrus level: {line}"
        );
        // RFC 3339 as Go writes it: date, 'T', and a zone.
        let time = entry["time"].as_str().unwrap();
        assert!(
            time.len() >= 20 && &time[10..11] == "T",
            "time {time} is not RFC 3339"
        );
    }

    // Lines say which part wrote them, as upstream's `subsystem_name`, and where the APIs
    // listen; CA times are RFC 3339 as Go marshals them.
    let entries: Vec<serde_json::Value> = written
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let find = |msg: &str| {
        entries
            .iter()
            .find(|e| e["msg"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} line in:\n{written}"))
    };
    assert_eq!(find("X509 CA prepared")["subsystem_name"], "ca_manager");
    let expiration = find("X509 CA activated")["expiration"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        expiration.ends_with('Z') && &expiration[10..11] == "T",
        "expiration {expiration} is not RFC 3339"
    );
    let starting: Vec<_> = entries
        .iter()
        .filter(|e| e["msg"] == "Starting Server APIs")
        .collect();
    assert_eq!(starting.len(), 2, "{written}");
    assert!(starting.iter().all(|e| e["subsystem_name"] == "endpoints"));
    assert!(starting.iter().any(|e| e["network"] == "tcp"));
    assert!(starting.iter().any(|e| e["network"] == "unix"));

    let rotated = dir.path().join("spire-server.log.1");
    std::fs::rename(&log_file, &rotated).unwrap();
    send_signal(server.pid().unwrap(), Signal::USR2).unwrap();
    eventually(
        "a new log file after SIGUSR2",
        Duration::from_secs(30),
        || read(&log_file).contains("Log file reopened"),
    );
    // The process keeps logging into the new file: a CLI call makes a line.
    server.cli_ok(&["bundle", "show"]);
    server.cli_ok(&["entry", "count"]);
    assert!(!read(&rotated).contains("Log file reopened"));
    let entries: Vec<serde_json::Value> = read(&log_file)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    // audit_log_enabled = true from the file: the CLI's calls have upstream's entries.
    let audited = |method: &str| {
        entries
            .iter()
            .find(|e| e["type"] == "audit" && e["method"] == method)
            .unwrap_or_else(|| panic!("no audit entry for {method} in {entries:#?}"))
            .clone()
    };
    let audit = audited("GetBundle");
    assert_eq!(audit["msg"], "API accessed");
    assert_eq!(audit["service"], "bundle.v1.Bundle");
    assert_eq!(audit["status"], "success");
    assert_eq!(audit["authorized_as"], "nobody");
    assert!(audit["caller_uid"].is_u64(), "{audit}");
    let audit = audited("CountEntries");
    assert_eq!(audit["service"], "entry.v1.Entry");
    assert_eq!(audit["authorized_as"], "local");
    // disable_jwt_svids = true from the file: no JWT-SVID is minted, with upstream's words.
    let minted = server.cli(&[
        "jwt",
        "mint",
        "-spiffeID",
        "spiffe://example.org/w",
        "-audience",
        "a",
    ]);
    let stderr = String::from_utf8_lossy(&minted.stderr).into_owned()
        + &String::from_utf8_lossy(&minted.stdout);
    assert!(!minted.status.success(), "{stderr}");
    assert!(stderr.contains("JWT functionality is disabled"), "{stderr}");
    // The server still serves after the signal (SIGUSR2 must not stop it).
    assert!(server.cli(&["healthcheck"]).status.success());
}

#[test]
fn text_lines_start_like_logrus_and_carry_the_source_location() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_join_token("spiffe://example.org/logging-agent");
    let agent_log = dir.path().join("agent-file.log");
    let agent = AgentProcess::start_with_agent_keys(
        dir.path(),
        &server,
        Some(&token),
        &format!(
            "log_format = \"text\"\n    log_source_location = true\n    log_file = \"{}\"",
            agent_log.display()
        ),
    );
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let text = read(&agent_log);
    assert!(!text.is_empty(), "nothing in {}", agent_log.display());
    for line in text.lines() {
        assert!(
            line.starts_with("time=\""),
            "not a logrus text line: {line}"
        );
        assert!(line.contains(" level="), "no level: {line}");
        assert!(line.contains(" msg="), "no msg: {line}");
        assert!(
            line.contains(" file=") && line.contains(" func="),
            "no source location: {line}"
        );
    }
    assert!(text.contains("level=info"), "{text}");
    assert!(!text.contains("level=INFO"), "{text}");
    // The server's default format is logrus's default text: whole-second times.
    let server_log = server.log();
    let first = server_log
        .lines()
        .find(|l| l.starts_with("time=\""))
        .unwrap_or_else(|| panic!("no logrus line in:\n{server_log}"));
    let time = first
        .strip_prefix("time=\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    assert!(
        !time.contains('.'),
        "default format has no fraction: {time}"
    );

    // The agent reopens its log_file on SIGUSR2 too (logrotate's postrotate).
    let rotated = dir.path().join("agent-file.log.1");
    std::fs::rename(&agent_log, &rotated).unwrap();
    send_signal(agent.pid().unwrap(), Signal::USR2).unwrap();
    eventually(
        "a new agent log file after SIGUSR2",
        Duration::from_secs(30),
        || read(&agent_log).contains("Log file reopened"),
    );
    assert!(!read(&rotated).contains("Log file reopened"));
    assert!(agent.cli(&["healthcheck"]).status.success());
}
