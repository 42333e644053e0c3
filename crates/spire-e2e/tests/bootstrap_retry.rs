//! `retry_bootstrap` and `rebootstrap_mode` end to end with our real binaries, as upstream
//! v1.13.3's agent behaves:
//! - an agent started while its server is down keeps retrying (default `retry_bootstrap`)
//!   and attests once the server is up; with `-retryBootstrap=false` it exits at once;
//! - `rebootstrap_mode = "always"`: the server is replaced by one with a new CA, the
//!   agent's bundle file is updated, and after `rebootstrap_delay` the agent attests again
//!   from that file and serves workloads SVIDs of the new CA;
//! - `always` with a node attestor that cannot re-attest (join_token) stops the agent with
//!   upstream's message; `auto` warns and keeps running.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spire_e2e::pop::{KeyAlg, OpensslCa, openssl_sha1_fingerprint};
use spire_e2e::subdir as dir;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, current_uid, eventually, free_port,
    run_to_failure, server_config,
};

const TD: &str = "example.org";

const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

/// Upstream's message when rebootstrapping cannot work with the attestor.
const NOT_ALLOWED: &str = "you have requested rebootstrap support but the NodeAttestor plugin \
                           or the spire server configuration is not allowing it";

/// Writes a server config in `dir` on `port` with `attestors` (HCL blocks) beside join_token.
fn write_server(dir: &Path, port: u16, attestors: &str) -> (PathBuf, PathBuf) {
    let socket = dir.join("api.sock");
    let data_dir = dir.join("data");
    let config_path = dir.join("server.conf");
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
    let config = config.replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{attestors}"));
    std::fs::write(&config_path, config).unwrap();
    (config_path, socket)
}

/// Writes the agent config in `dir` for a server on `port`, bootstrapping from
/// `bundle` (a PEM file) when given, else insecurely; `attestor` replaces join_token.
fn write_agent(
    dir: &Path,
    port: u16,
    bundle: Option<&Path>,
    attestor: Option<&str>,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let (config_path, socket) = AgentProcess::write_config(dir, port, extra);
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    if let Some(bundle) = bundle {
        text = text.replace(
            "insecure_bootstrap = true",
            &format!("trust_bundle_path = \"{}\"", bundle.display()),
        );
    }
    if let Some(attestor) = attestor {
        text = text.replace(JOIN_TOKEN_BLOCK, attestor);
    }
    std::fs::write(&config_path, text).unwrap();
    (config_path, socket)
}

/// Starts `spire-agent run -config <config> <args>` logging to `dir/agent.log`, without
/// waiting for anything.
fn spawn_agent(dir: &Path, config: &Path, args: &[&str]) -> (Child, PathBuf) {
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(binary("spire-agent"))
        .args(["run", "-config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, log_path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Stops a child the test started (SIGTERM, then kill).
fn stop(mut child: Child) {
    let _ = spire_e2e::send_signal(child.id(), spire_e2e::Signal::TERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_agent_started_before_its_server_retries_and_attests_once_the_server_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let server_dir = dir(tmp.path(), "server");
    let port = free_port();
    let (server_config_path, server_socket) = write_server(&server_dir, port, "");
    // A token is made while the server runs, then the server goes away.
    let mut server =
        ServerProcess::start_with_config(&server_dir, &server_config_path, server_socket, port);
    let token = server.generate_join_token("spiffe://example.org/node");
    server.stop();

    // Without retry_bootstrap, the agent gives up at the first failure.
    let quick_dir = dir(tmp.path(), "quick");
    let (quick_config, _) = write_agent(&quick_dir, port, None, None, "");
    let mut command = Command::new(binary("spire-agent"));
    command.args(["run", "-config"]).arg(&quick_config).args([
        "-joinToken",
        &token,
        "-retryBootstrap=false",
    ]);
    let started = Instant::now();
    let log = run_to_failure(
        command,
        &quick_dir.join("agent.log"),
        Duration::from_secs(30),
        "with -retryBootstrap=false the agent kept running without its server",
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !log.contains("Failed to retrieve attestation result"),
        "{log}"
    );

    // With the default, it retries with backoff, saying when it tries again...
    let agent_dir = dir(tmp.path(), "agent");
    let (agent_config, socket) = write_agent(&agent_dir, port, None, None, "");
    let metrics_port = free_port();
    let mut text = std::fs::read_to_string(&agent_config).unwrap();
    text.push_str(&format!(
        "\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {metrics_port}\n  }}\n}}\n"
    ));
    std::fs::write(&agent_config, text).unwrap();
    let (mut agent, log_path) = spawn_agent(&agent_dir, &agent_config, &["-joinToken", &token]);
    eventually("the agent logs a retry", Duration::from_secs(30), || {
        read(&log_path).contains("Failed to retrieve attestation result")
    });
    let log = read(&log_path);
    assert!(log.contains("retry_interval"), "{log}");
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent stopped:\n{log}"
    );
    assert!(
        !socket.exists(),
        "no Workload API before the agent has an SVID"
    );
    // Upstream's gauges say a bootstrap is under way and count its bundle reads.
    let metrics = scrape(metrics_port);
    assert_eq!(
        gauge(&metrics, "spire_agent_bootstraped", ""),
        Some(0.0),
        "{metrics}"
    );
    let attempts = gauge(
        &metrics,
        "spire_agent_bootstrap_attempts",
        "mode=\"bootstrap\"",
    );
    assert!(attempts.is_some_and(|a| a >= 1.0), "{metrics}");
    let started = gauge(
        &metrics,
        "spire_agent_bootstrap_seconds",
        "mode=\"bootstrap\"",
    );
    assert!(started.is_some_and(|s| s > 1.7e9), "{metrics}");

    // ...and attests once the server is back.
    server.start_again();
    eventually(
        "the agent attests and serves the Workload API",
        Duration::from_secs(60),
        || socket.exists(),
    );
    eventually(
        "the server lists the agent",
        Duration::from_secs(30),
        || {
            server
                .agent_ids()
                .iter()
                .any(|id| id.contains("join_token"))
        },
    );
    assert!(agent.try_wait().unwrap().is_none(), "{}", read(&log_path));
    let metrics = scrape(metrics_port);
    assert_eq!(
        gauge(&metrics, "spire_agent_bootstraped", ""),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        gauge(
            &metrics,
            "spire_agent_bootstrap_attempts",
            "mode=\"rebootstrap\""
        ),
        Some(0.0),
        "{metrics}"
    );
    stop(agent);
}

/// `GET /metrics` from the Prometheus listener on `port`.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The value of the series `name` whose labels contain `label` (any labels when empty).
fn gauge(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find(|line| line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// `bundle show` of `server` into `path`.
fn save_bundle(server: &ServerProcess, path: &Path) {
    std::fs::write(path, server.cli_ok(&["bundle", "show"])).unwrap();
}

/// Whether the first certificate of `svid` (PEM) chains to `bundle` (PEM), per openssl.
fn chains_to(svid: &Path, bundle: &Path) -> bool {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(bundle)
        .arg(svid)
        .output()
        .expect("openssl must be installed (apt-get install openssl)")
        .status
        .success()
}

/// The server is reinstalled with a new CA under an agent (`program`) in
/// `rebootstrap_mode = "always"`: after `rebootstrap_delay` the agent attests again from its
/// (updated) bundle file and serves SVIDs of the new CA. Upstream's agent exits to do so
/// and is started again here, as its supervisor would; ours carries on in process.
fn rebootstrap_after_the_server_ca_changes(program: &Path, exits_to_rebootstrap: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = dir(tmp.path(), "pki");
    let root = OpensslCa::root(&pki, "root-ca");
    let node = root.node("node-1", KeyAlg::P256, &[]);
    let server_block = format!(
        "    NodeAttestor \"x509pop\" {{\n        plugin_data {{\n            ca_bundle_path = \"{}\"\n        }}\n    }}\n",
        root.cert.display()
    );
    let agent_block = format!(
        "    NodeAttestor \"x509pop\" {{\n        plugin_data {{\n            private_key_path = \"{}\"\n            certificate_path = \"{}\"\n        }}\n    }}\n",
        node.key.display(),
        node.cert.display()
    );
    let agent_id = format!(
        "spiffe://{TD}/spire/agent/x509pop/{}",
        openssl_sha1_fingerprint(&node.cert)
    );
    let workload_id = "spiffe://example.org/workload";

    let port = free_port();
    let first_dir = dir(tmp.path(), "server-1");
    let (config, socket) = write_server(&first_dir, port, &server_block);
    let mut first = ServerProcess::start_with_config(&first_dir, &config, socket, port);
    first.create_uid_entry(&agent_id, workload_id, current_uid(), &[]);
    let bundle_path = tmp.path().join("bundle.pem");
    save_bundle(&first, &bundle_path);
    let first_bundle = tmp.path().join("bundle-1.pem");
    save_bundle(&first, &first_bundle);

    let agent_dir = dir(tmp.path(), "agent");
    let (agent_config, agent_socket) = write_agent(
        &agent_dir,
        port,
        Some(&bundle_path),
        Some(&agent_block),
        "rebootstrap_mode = \"always\"\n    rebootstrap_delay = \"3s\"\n    experimental { sync_interval = \"1s\" }",
    );
    let mut agent = AgentProcess::start_program_with_config(
        program,
        &agent_dir,
        &agent_config,
        agent_socket.clone(),
        None,
    );
    let fetched = dir(tmp.path(), "fetched-1");
    let fetched_arg = fetched.display().to_string();
    agent.cli_eventually(
        &["api", "fetch", "x509", "-write", &fetched_arg],
        Duration::from_secs(60),
    );
    assert!(chains_to(&fetched.join("svid.0.pem"), &first_bundle));

    // The server is reinstalled: same trust domain and port, a new CA.
    first.stop();
    let second_dir = dir(tmp.path(), "server-2");
    let (config, socket) = write_server(&second_dir, port, &server_block);
    let second = ServerProcess::start_with_config(&second_dir, &config, socket, port);
    second.create_uid_entry(&agent_id, workload_id, current_uid(), &[]);
    let second_bundle = tmp.path().join("bundle-2.pem");
    save_bundle(&second, &second_bundle);
    assert!(!chains_to(&fetched.join("svid.0.pem"), &second_bundle));
    save_bundle(&second, &bundle_path);

    // After rebootstrap_delay the agent forgets its trust, attests again from the file and
    // serves an SVID of the new CA.
    if exits_to_rebootstrap {
        let status = agent.wait_exit(Duration::from_secs(120));
        assert!(!status.success(), "{}", agent.log());
        assert!(
            agent
                .log()
                .contains("Trust Bandle and Server dont agree.... rebootstrapping"),
            "{}",
            agent.log()
        );
        agent = AgentProcess::start_program_with_config(
            program,
            &agent_dir,
            &agent_config,
            agent_socket.clone(),
            None,
        );
    }
    let fetched = dir(tmp.path(), "fetched-2");
    let fetched_arg = fetched.display().to_string();
    eventually(
        "a workload SVID of the new CA",
        Duration::from_secs(120),
        || {
            let out = agent.cli(&["api", "fetch", "x509", "-write", &fetched_arg]);
            out.status.success() && chains_to(&fetched.join("svid.0.pem"), &second_bundle)
        },
    );
    let log = agent.log();
    assert!(
        log.contains("Trust Bandle and Server dont agree.... rebootstrapping"),
        "{log}"
    );
    assert!(
        second.agent_ids().contains(&agent_id),
        "{:?}",
        second.agent_ids()
    );
}

#[test]
fn rebootstrap_always_attests_again_from_the_bundle_file_after_the_server_ca_changes() {
    rebootstrap_after_the_server_ca_changes(&binary("spire-agent"), false);
}

#[test]
fn upstream_agent_rebootstraps_against_our_server_after_its_ca_changes() {
    // Our server tells upstream's agent that x509pop agents may re-attest (`reattestable`),
    // which its `always` mode requires.
    rebootstrap_after_the_server_ca_changes(
        &spire_e2e::interop_program("SPIRE_UPSTREAM_AGENT"),
        true,
    );
}

#[test]
fn rebootstrap_always_with_join_token_fails_at_start_and_auto_warns_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir(tmp.path(), "server"), "");
    let bundle = tmp.path().join("bundle.pem");
    save_bundle(&server, &bundle);

    let always_dir = dir(tmp.path(), "always");
    let (config, _) = write_agent(
        &always_dir,
        server.port,
        Some(&bundle),
        None,
        "rebootstrap_mode = \"always\"",
    );
    let token = server.generate_join_token("spiffe://example.org/node-always");
    let mut command = Command::new(binary("spire-agent"));
    command
        .args(["run", "-config"])
        .arg(&config)
        .args(["-joinToken", &token]);
    let log = run_to_failure(
        command,
        &always_dir.join("agent.log"),
        Duration::from_secs(60),
        "rebootstrap_mode always with join_token kept running",
    );
    assert!(log.contains(NOT_ALLOWED), "{log}");

    let auto_dir = dir(tmp.path(), "auto");
    let (config, socket) = write_agent(
        &auto_dir,
        server.port,
        Some(&bundle),
        None,
        "rebootstrap_mode = \"auto\"",
    );
    let token = server.generate_join_token("spiffe://example.org/node-auto");
    let agent = AgentProcess::start_with_config(&auto_dir, &config, socket, Some(&token));
    let log = agent.log();
    assert!(log.contains(&format!("{NOT_ALLOWED}. Disabling")), "{log}");
}
