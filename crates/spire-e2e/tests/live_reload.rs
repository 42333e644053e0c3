//! Live configuration reload and "why no identity" (spire-rs, beyond upstream), on the real
//! binaries: `config reload` and SIGHUP on server and agent (a changed log level and TTL
//! default take effect, a key needing a restart is refused by name and changes nothing, a
//! bad file changes nothing, Workload API streams survive a reload under load), and
//! `spire-agent api explain` / `spire-server entry explain`.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rustix::process::Signal;
use spire_e2e::workload::Workload;
use spire_e2e::{AgentProcess, ServerProcess, binary, current_uid, eventually, send_signal};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Helpers (test-only code: panics report failures).
#[cfg(test)]
mod support {
    use super::*;

    /// Runs `program args -socketPath socket` and returns its output.
    pub(crate) fn run(program: &str, socket: &Path, args: &[&str]) -> Output {
        Command::new(binary(program))
            .args(args)
            .arg("-socketPath")
            .arg(socket)
            .output()
            .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
    }

    pub(crate) fn stdout(out: &Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn json_ok(program: &str, socket: &Path, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-output", "json"]);
        let out = run(program, socket, &all);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{program} {args:?}: not JSON ({e}): {}", stdout(&out)))
    }

    pub(crate) fn keys(list: &serde_json::Value) -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["key"].as_str().map(str::to_owned))
            .collect()
    }

    /// Rewrites the config file at `path`, replacing `from` with `to`.
    pub(crate) fn edit(path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read config: {e}"));
        assert!(text.contains(from), "{from:?} not in {text}");
        std::fs::write(path, text.replacen(from, to, 1))
            .unwrap_or_else(|e| panic!("write config: {e}"));
    }

    /// The lifetime in seconds of a JWT-SVID minted without `-ttl`.
    pub(crate) fn jwt_ttl(server: &ServerProcess) -> i64 {
        let token = server.cli_ok(&[
            "jwt",
            "mint",
            "-spiffeID",
            "spiffe://example.org/reload",
            "-audience",
            "db",
        ]);
        let payload = token
            .trim()
            .split('.')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_else(|e| panic!("JWT payload not base64 ({e}): {token}"));
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap_or_default();
        claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default()
    }

    /// The lifetime in seconds of an X509-SVID minted without `-ttl`, less the backdating of
    /// its `notBefore` (up to a minute).
    pub(crate) fn x509_ttl(server: &ServerProcess) -> i64 {
        let minted = server.cli_json(&["x509", "mint", "-spiffeID", "spiffe://example.org/reload"]);
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(minted[0]["x509_svid"][0].as_str().unwrap_or_default())
            .unwrap_or_default();
        let validity = spire_core::x509::certificate_validity(&leaf)
            .unwrap_or_else(|e| panic!("minted SVID unreadable: {e}"));
        let lifetime = (validity.not_after - validity.not_before).whole_seconds();
        lifetime - lifetime % 60
    }

    pub(crate) fn log_level(program: &str, socket: &Path) -> String {
        json_ok(program, socket, &["logger", "get"])["current_level"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A server, and an agent with an admin socket, for the agent tests.
    pub(crate) fn server_and_agent(
        dir: &Path,
    ) -> (ServerProcess, AgentProcess, std::path::PathBuf, String) {
        let server = ServerProcess::start(&dir.join("server"), "");
        let token = server.generate_join_token("");
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
        let admin = dir.join("admin.sock");
        let agent_dir = dir.join("agent");
        std::fs::create_dir_all(&agent_dir).unwrap_or_else(|e| panic!("{e}"));
        let (config, socket) = AgentProcess::write_config(
            &agent_dir,
            server.port,
            &format!("admin_socket_path = \"{}\"", admin.display()),
        );
        let agent = AgentProcess::start_with_config(&agent_dir, &config, socket, Some(&token));
        (server, agent, admin, agent_id)
    }
}

use support::*;

#[test]
fn server_reload_applies_live_keys_refuses_restart_keys_and_survives_bad_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = ServerProcess::start(
        dir.path(),
        "default_x509_svid_ttl = \"1h\"\n    default_jwt_svid_ttl = \"5m\"",
    );
    let socket = server.socket_path.clone();
    let config = server.config_path.clone();
    assert_eq!(jwt_ttl(&server), 300);
    assert_eq!(x509_ttl(&server), 3600);
    assert_eq!(log_level("spire-server", &socket), "DEBUG");

    // Nothing changed: nothing applied, nothing refused.
    let same = json_ok("spire-server", &socket, &["config", "reload"]);
    assert_eq!(keys(&same["applied"]), Vec::<String>::new(), "{same}");
    assert_eq!(
        keys(&same["restart_needed"]),
        Vec::<String>::new(),
        "{same}"
    );

    // Live keys: log level and TTL defaults, in effect for the next SVID.
    edit(&config, "log_level = \"DEBUG\"", "log_level = \"WARN\"");
    edit(
        &config,
        "default_jwt_svid_ttl = \"5m\"",
        "default_jwt_svid_ttl = \"10m\"",
    );
    edit(
        &config,
        "default_x509_svid_ttl = \"1h\"",
        "default_x509_svid_ttl = \"2h\"",
    );
    let applied = json_ok("spire-server", &socket, &["config", "reload"]);
    assert_eq!(
        keys(&applied["applied"]),
        vec![
            "server.log_level",
            "server.default_x509_svid_ttl",
            "server.default_jwt_svid_ttl"
        ],
        "{applied}"
    );
    assert_eq!(
        keys(&applied["restart_needed"]),
        Vec::<String>::new(),
        "{applied}"
    );
    assert_eq!(log_level("spire-server", &socket), "WARN");
    assert_eq!(jwt_ttl(&server), 600);
    assert_eq!(x509_ttl(&server), 7200);
    // `logger reset` returns to the reloaded level, not the launch one.
    server.cli_ok(&["logger", "set", "-level", "debug"]);
    server.cli_ok(&["logger", "reset"]);
    assert_eq!(log_level("spire-server", &socket), "WARN");

    // A key needing a restart is refused by name; the live key beside it still applies, the
    // running value of the refused one is kept.
    edit(
        &config,
        "default_jwt_svid_ttl = \"10m\"",
        "default_jwt_svid_ttl = \"15m\"\n    ca_ttl = \"48h\"",
    );
    let plain = run("spire-server", &socket, &["config", "reload"]);
    assert!(plain.status.success(), "{plain:?}");
    let text = stdout(&plain);
    assert!(
        text.contains("server.default_jwt_svid_ttl: 10m -> 15m"),
        "{text}"
    );
    assert!(text.contains("Needs a restart"), "{text}");
    assert!(text.contains("server.ca_ttl"), "{text}");
    assert_eq!(jwt_ttl(&server), 900);
    let again = json_ok("spire-server", &socket, &["config", "reload"]);
    assert_eq!(keys(&again["applied"]), Vec::<String>::new(), "{again}");
    assert_eq!(
        keys(&again["restart_needed"]),
        vec!["server.ca_ttl"],
        "{again}"
    );
    let state = server.cli_json(&["localauthority", "x509", "show"]);
    let expires = &state["active"]["expires_at"];
    let expires = expires
        .as_i64()
        .or_else(|| expires.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no active expiry: {state}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        expires > now && expires - now <= 24 * 3600 + 60,
        "the CA kept its 24h TTL: {state}"
    );

    // A bad file changes nothing.
    let good = std::fs::read_to_string(&config).unwrap_or_default();
    std::fs::write(
        &config,
        good.replace(
            "log_level = \"WARN\"",
            "log_level = \"ERROR\"\n    bogus_key = 1",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bad = run("spire-server", &socket, &["config", "reload"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("nothing changed") && err.contains("bogus_key"),
        "{err}"
    );
    assert_eq!(log_level("spire-server", &socket), "WARN");
    std::fs::write(
        &config,
        good.replace("log_level = \"WARN\"", "log_level = \"ERROR\"\n  server {"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let broken = run("spire-server", &socket, &["config", "reload"]);
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    assert_eq!(log_level("spire-server", &socket), "WARN");
    assert_eq!(jwt_ttl(&server), 900);

    // SIGHUP reloads the same way.
    std::fs::write(
        &config,
        good.replace("log_level = \"WARN\"", "log_level = \"ERROR\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    send_signal(server.pid().unwrap_or_default(), Signal::HUP)
        .unwrap_or_else(|e| panic!("kill -HUP: {e}"));
    eventually("SIGHUP applies log_level ERROR", TIMEOUT, || {
        log_level("spire-server", &socket) == "ERROR"
    });
    server.cli_ok(&["healthcheck"]);
    // The server is alive and the log says what changed and what was refused.
    let log = server.log();
    assert!(
        log.contains("Configuration reload failed; the running configuration is kept"),
        "{log}"
    );
}

#[test]
fn agent_reload_keeps_workload_api_streams_under_load() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::create_dir_all(dir.path().join("server")).unwrap_or_else(|e| panic!("{e}"));
    let (server, agent, admin, agent_id) = server_and_agent(dir.path());
    server.create_uid_entry(
        &agent_id,
        "spiffe://example.org/workload",
        current_uid(),
        &[],
    );

    // A stream held open, and a loop of fetches, across the reloads.
    let workload = Workload::new(&agent.socket_path);
    let (stream, _) = workload.open_with(1, TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (stop, fetches) = (stop.clone(), fetches.clone());
        let socket = agent.socket_path.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = run("spire-agent", &socket, &["api", "fetch", "x509", "-silent"]);
                if out.status.success() {
                    fetches.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            failures
        })
    };
    eventually("fetches succeed", TIMEOUT, || {
        fetches.load(Ordering::Relaxed) >= 2
    });

    let config = agent.config_path.clone();
    assert_eq!(log_level("spire-agent", &admin), "DEBUG");
    edit(&config, "log_level = \"DEBUG\"", "log_level = \"WARN\"");
    let applied = json_ok("spire-agent", &admin, &["config", "reload"]);
    assert_eq!(
        keys(&applied["applied"]),
        vec!["agent.log_level"],
        "{applied}"
    );
    assert_eq!(log_level("spire-agent", &admin), "WARN");

    // A key needing a restart is named and keeps its running value.
    edit(
        &config,
        "log_level = \"WARN\"",
        "log_level = \"WARN\"\n    sds {\n        default_svid_name = \"other\"\n    }",
    );
    let refused = json_ok("spire-agent", &admin, &["config", "reload"]);
    assert_eq!(keys(&refused["applied"]), Vec::<String>::new(), "{refused}");
    assert_eq!(
        keys(&refused["restart_needed"]),
        vec!["agent.sds.default_svid_name"],
        "{refused}"
    );

    // A bad file changes nothing.
    let good = std::fs::read_to_string(&config).unwrap_or_default();
    std::fs::write(
        &config,
        good.replace("log_level = \"WARN\"", "log_level = \"LOUD\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bad = run("spire-agent", &admin, &["config", "reload"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nothing changed"),
        "{bad:?}"
    );
    assert_eq!(log_level("spire-agent", &admin), "WARN");

    // SIGHUP.
    std::fs::write(
        &config,
        good.replace("log_level = \"WARN\"", "log_level = \"ERROR\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let before = fetches.load(Ordering::Relaxed);
    send_signal(agent.pid().unwrap_or_default(), Signal::HUP)
        .unwrap_or_else(|e| panic!("kill -HUP: {e}"));
    eventually("SIGHUP applies log_level ERROR", TIMEOUT, || {
        log_level("spire-agent", &admin) == "ERROR"
    });
    eventually("fetches go on after the reloads", TIMEOUT, || {
        fetches.load(Ordering::Relaxed) >= before + 3
    });

    stop.store(true, Ordering::Relaxed);
    let failures = loader
        .join()
        .unwrap_or_else(|_| vec!["loader panicked".into()]);
    assert!(
        failures.is_empty(),
        "fetches failed during reloads: {failures:?}"
    );
    assert!(
        stream.is_open(),
        "the Workload API stream ended during the reloads"
    );
}

#[test]
fn explain_shows_missing_selectors_and_receiving_agents() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::create_dir_all(dir.path().join("server")).unwrap_or_else(|e| panic!("{e}"));
    let (server, agent, admin, agent_id) = server_and_agent(dir.path());
    let uid = current_uid();
    let uid_selector = format!("unix:uid:{uid}");
    server.create_entry(&[
        "-parentID",
        &agent_id,
        "-spiffeID",
        "spiffe://example.org/almost",
        "-selector",
        &uid_selector,
        "-selector",
        "unix:gid:4242424",
    ]);

    let mut sleeper = Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sleep: {e}"));
    let pid = sleeper.id().to_string();
    let mut explained = serde_json::Value::Null;
    eventually("the agent syncs the entry and explains it", TIMEOUT, || {
        explained = json_ok("spire-agent", &admin, &["api", "explain", "-pid", &pid]);
        explained["closest"][0]["spiffe_id"] == "spiffe://example.org/almost"
            && explained["sync"]["succeeded"] == true
    });
    let selectors: Vec<&str> = explained["selectors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(selectors.contains(&uid_selector.as_str()), "{explained}");
    assert_eq!(explained["matching"], serde_json::json!([]), "{explained}");
    assert_eq!(
        explained["closest"][0]["missing_selectors"],
        serde_json::json!(["unix:gid:4242424"]),
        "{explained}"
    );
    let plain = stdout(&run(
        "spire-agent",
        &admin,
        &["api", "explain", "-pid", &pid],
    ));
    assert!(plain.contains("No identity"), "{plain}");
    assert!(plain.contains("missing:   unix:gid:4242424"), "{plain}");
    assert!(plain.contains("Last sync: succeeded"), "{plain}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // The server side: the entry goes to the agent it is parented to.
    let receivers = server.cli_json(&[
        "entry",
        "explain",
        "-spiffeID",
        "spiffe://example.org/almost",
        "-parentID",
        &agent_id,
    ]);
    assert_eq!(
        receivers["entries"][0]["agents"][0]["spiffe_id"], agent_id,
        "{receivers}"
    );
    let plain = server.cli_ok(&[
        "entry",
        "explain",
        "-spiffeID",
        "spiffe://example.org/almost",
    ]);
    assert!(plain.contains("Received by      : 1 agent(s)"), "{plain}");
    assert!(plain.contains(&agent_id), "{plain}");
    // An entry under an unknown parent goes nowhere.
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/nobody",
        "-spiffeID",
        "spiffe://example.org/orphan",
        "-selector",
        "unix:uid:1",
    ]);
    let orphan = server.cli_json(&[
        "entry",
        "explain",
        "-spiffeID",
        "spiffe://example.org/orphan",
    ]);
    assert_eq!(
        orphan["entries"][0]["agents"],
        serde_json::json!([]),
        "{orphan}"
    );
    drop(agent);
}

/// Telemetry helpers (test-only code: panics report failures).
#[cfg(test)]
mod telemetry_support {
    use super::*;

    /// Appends `text` to the config file at `path`.
    pub(crate) fn append(path: &Path, text: &str) {
        let mut all = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read config: {e}"));
        all.push_str(text);
        std::fs::write(path, all).unwrap_or_else(|e| panic!("write config: {e}"));
    }

    /// `GET /metrics` on 127.0.0.1:`port`: the response, or `None` when nothing answers.
    pub(crate) fn scrape(port: u16) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.starts_with("HTTP/1.1 200").then_some(text)
    }

    /// A UDP collector for statsd lines.
    pub(crate) fn collector() -> (std::net::UdpSocket, String) {
        let socket =
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("udp: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap_or_else(|e| panic!("udp: {e}"));
        let address = socket
            .local_addr()
            .unwrap_or_else(|e| panic!("udp: {e}"))
            .to_string();
        (socket, address)
    }

    /// Waits until `socket` receives a statsd line starting with `prefix`, calling `poke`
    /// between reads so the process has something to count.
    pub(crate) fn receives_line(
        socket: &std::net::UdpSocket,
        prefix: &str,
        mut poke: impl FnMut(),
    ) -> String {
        let mut seen = String::new();
        eventually(&format!("a statsd line {prefix}…"), TIMEOUT, || {
            poke();
            let mut buf = [0u8; 9000];
            while let Ok(n) = socket.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if seen.lines().any(|l| l.starts_with(prefix)) {
                    return true;
                }
            }
            false
        });
        seen
    }
}

use telemetry_support::*;

#[test]
fn server_reload_applies_telemetry_sinks_live() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = ServerProcess::start(dir.path(), "");
    let socket = server.socket_path.clone();
    let config = server.config_path.clone();
    let [first_port, second_port] = spire_e2e::free_ports::<2>();
    assert!(scrape(first_port).is_none());

    // Prometheus turned on by a reload.
    let good = std::fs::read_to_string(&config).unwrap_or_default();
    append(
        &config,
        &format!(
            "\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {first_port}\n  }}\n}}\n"
        ),
    );
    let on = json_ok("spire-server", &socket, &["config", "reload"]);
    assert_eq!(keys(&on["applied"]), vec!["telemetry"], "{on}");
    assert_eq!(keys(&on["restart_needed"]), Vec::<String>::new(), "{on}");
    server.cli_ok(&["entry", "show"]);
    let text = scrape(first_port).unwrap_or_else(|| panic!("no /metrics on {first_port}"));
    assert!(
        text.contains("spire_server_rpc_entry_v1_entry_list_entries"),
        "{text}"
    );

    // Moved to another port, with a statsd address added: the new port serves, the old one
    // does not, and the running server sends statsd lines.
    let (udp, address) = collector();
    std::fs::write(
        &config,
        format!(
            "{good}\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {second_port}\n  }}\n  Statsd = [{{ address = \"{address}\" }}]\n}}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let moved = run("spire-server", &socket, &["config", "reload"]);
    assert!(moved.status.success(), "{moved:?}");
    let plain = stdout(&moved);
    assert!(
        plain.contains(&format!("Prometheus=127.0.0.1:{first_port}"))
            && plain.contains(&format!(
                "Prometheus=127.0.0.1:{second_port} Statsd={address}"
            )),
        "{plain}"
    );
    eventually("the old Prometheus port closes", TIMEOUT, || {
        scrape(first_port).is_none()
    });
    let text = scrape(second_port).unwrap_or_else(|| panic!("no /metrics on {second_port}"));
    assert!(
        text.contains("spire_server_rpc_entry_v1_entry_list_entries"),
        "{text}"
    );
    receives_line(&udp, "spire_server.rpc.", || {
        server.cli_ok(&["entry", "show"]);
    });

    // A Prometheus port that cannot be bound fails the reload and changes nothing: the
    // statsd address beside it is not removed.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let taken_port = taken.local_addr().map(|a| a.port()).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "{good}\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {taken_port}\n  }}\n}}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bad = run("spire-server", &socket, &["config", "reload"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("nothing changed")
            && err.contains(&format!(
                "unable to listen for Prometheus on 127.0.0.1:{taken_port}"
            )),
        "{err}"
    );
    // An unsupported sink is refused the same way.
    std::fs::write(
        &config,
        format!(
            "{good}\ntelemetry {{\n  M3 = [{{ address = \"127.0.0.1:9052\", env = \"x\" }}]\n}}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let m3 = run("spire-server", &socket, &["config", "reload"]);
    assert_eq!(m3.status.code(), Some(1), "{m3:?}");
    assert!(scrape(second_port).is_some());
    while udp.recv(&mut [0u8; 9000]).is_ok() {}
    receives_line(&udp, "spire_server.rpc.", || {
        server.cli_ok(&["entry", "show"]);
    });

    // Removed: the sinks stop.
    std::fs::write(&config, &good).unwrap_or_else(|e| panic!("{e}"));
    let off = json_ok("spire-server", &socket, &["config", "reload"]);
    assert_eq!(keys(&off["applied"]), vec!["telemetry"], "{off}");
    eventually("the Prometheus port closes", TIMEOUT, || {
        scrape(second_port).is_none()
    });
    drop(taken);
}

#[test]
fn agent_reload_adds_a_statsd_sink_live() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::create_dir_all(dir.path().join("server")).unwrap_or_else(|e| panic!("{e}"));
    let (_server, agent, admin, _agent_id) = server_and_agent(dir.path());
    let config = agent.config_path.clone();
    let (udp, address) = collector();
    append(
        &config,
        &format!("\ntelemetry {{\n  Statsd = [{{ address = \"{address}\" }}]\n}}\n"),
    );
    let applied = json_ok("spire-agent", &admin, &["config", "reload"]);
    assert_eq!(keys(&applied["applied"]), vec!["telemetry"], "{applied}");
    assert_eq!(
        keys(&applied["restart_needed"]),
        Vec::<String>::new(),
        "{applied}"
    );
    // The agent's Workload API calls and its periodic sync are counted.
    let workload_socket = agent.socket_path.clone();
    receives_line(&udp, "spire_agent.", || {
        let _ = Command::new(binary("spire-agent"))
            .args(["api", "fetch", "x509", "-timeout", "2s", "-socketPath"])
            .arg(&workload_socket)
            .output();
    });
}
