//! Client commands as operators of several servers and agents on one host use them: the
//! socket chosen by `-instance` and the `SPIRE_*_SOCKET(_TEMPLATE)` variables, the agent's
//! `-joinTokenFile`, and `api fetch jwt -format` (the old name of `-output`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use spire_e2e::{AgentProcess, ServerProcess, binary};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn instance_and_socket_variables_choose_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let parent = server.socket_path.parent().unwrap();
    let stem = server.socket_path.file_stem().unwrap().to_str().unwrap();
    let template = format!("{}/%i.sock", parent.display());
    assert_eq!(
        std::path::Path::new(&template.replace("%i", stem)),
        server.socket_path
    );
    let spire_server = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(binary("spire-server"));
        command
            .args(args)
            .env_remove("SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE")
            .env_remove("SPIRE_SERVER_PRIVATE_SOCKET");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };

    let by_instance = spire_server(
        &["bundle", "count", "-instance", stem],
        &[("SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE", &template)],
    );
    assert!(by_instance.status.success(), "{}", text(&by_instance));
    let socket = server.socket_path.to_str().unwrap();
    let by_variable = spire_server(&["healthcheck"], &[("SPIRE_SERVER_PRIVATE_SOCKET", socket)]);
    assert!(by_variable.status.success(), "{}", text(&by_variable));
    // -socketPath wins over both.
    let by_flag = spire_server(
        &[
            "bundle",
            "count",
            "-socketPath",
            socket,
            "-instance",
            "other",
        ],
        &[("SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE", &template)],
    );
    assert!(by_flag.status.success(), "{}", text(&by_flag));

    let no_template = spire_server(&["bundle", "count", "-instance", stem], &[]);
    assert!(!no_template.status.success());
    assert!(
        text(&no_template).contains(
            "you must define SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE to use the instance flag"
        ),
        "{}",
        text(&no_template)
    );
    let no_placeholder = spire_server(
        &["bundle", "count", "-instance", stem],
        &[("SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE", socket)],
    );
    assert!(
        text(&no_placeholder).contains("failed to find %i in SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE"),
        "{}",
        text(&no_placeholder)
    );

    // The agent: attested with -joinTokenFile, its Workload API found by -instance.
    let token = server.generate_join_token("spiffe://example.org/instance-agent");
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, &token).unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (config, socket_path) = AgentProcess::write_config(&agent_dir, server.port, "");
    let log = std::fs::File::create(agent_dir.join("agent.log")).unwrap();
    let mut child = Command::new(binary("spire-agent"))
        .args(["run", "-config"])
        .arg(&config)
        .arg("-joinTokenFile")
        .arg(&token_file)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent_template = format!("{}/%i.sock", socket_path.parent().unwrap().display());
    let agent_stem = socket_path
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let spire_agent = |args: &[&str]| {
        Command::new(binary("spire-agent"))
            .args(args)
            .env("SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE", &agent_template)
            .env_remove("SPIRE_AGENT_PUBLIC_SOCKET")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = spire_agent(&["healthcheck", "-instance", &agent_stem]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent never healthy: {}\n{}",
            text(&out),
            std::fs::read_to_string(agent_dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let agents = server.agent_ids();
    assert!(
        agents.iter().any(|a| a.contains("spire/agent/join_token/")),
        "{agents:?}"
    );

    let uid = spire_e2e::current_uid();
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/instance-agent",
        "-spiffeID",
        "spiffe://example.org/instance-workload",
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let fetched = loop {
        let out = spire_agent(&[
            "api",
            "fetch",
            "jwt",
            "-audience",
            "x",
            "-format",
            "json",
            "-instance",
            &agent_stem,
        ]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "no JWT-SVID: {}", text(&out));
        std::thread::sleep(Duration::from_millis(250));
    };
    let parsed: serde_json::Value = serde_json::from_str(fetched.trim())
        .unwrap_or_else(|e| panic!("-format json did not print JSON ({e}): {fetched}"));
    assert!(parsed[0]["svids"][0]["svid"].is_string(), "{parsed}");

    let missing = Command::new(binary("spire-agent"))
        .args(["healthcheck", "-instance", "a"])
        .env_remove("SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE")
        .output()
        .unwrap();
    assert!(
        text(&missing).contains(
            "SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE environment variable must be defined when using the instance flag"
        ),
        "{}",
        text(&missing)
    );
    let _ = child.kill();
    let _ = child.wait();
}
