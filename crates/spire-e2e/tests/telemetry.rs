//! Telemetry as an operator's monitoring sees it: a real Prometheus (Debian's package)
//! scrapes our server and agent, and its query API returns upstream's series for the calls
//! made: the agent's attestation on the server, a Workload API fetch on the agent, the
//! `started` gauge, the latency histograms, the non-RPC series (CA rotation, datastore
//! calls, agent sync, SVID expiry, Workload API connections, cache counters) and the
//! `process_*` series. A UDP listener receives the same metrics as statsd and
//! DogStatsD lines from both processes, and an `InMem` server writes its data to the log
//! on SIGUSR1.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spire_e2e::{AgentProcess, ServerProcess, free_ports};

/// Debian's `prometheus`, installed by scripts/ops-deps.sh.
fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("SPIRE_TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "SPIRE_TEST_PROMETHEUS is not set: run scripts/ops-deps.sh (apt-get install \
                 prometheus) and source target/ops-deps.env (the test command does both)"
            )
        });
    assert!(
        path.is_file(),
        "SPIRE_TEST_PROMETHEUS={} is not a file",
        path.display()
    );
    path
}

fn http_get(port: u16, path_and_query: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (code, body)
}

struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &std::path::Path, port: u16, targets: &[u16]) -> Self {
        let targets = targets
            .iter()
            .map(|p| format!("'127.0.0.1:{p}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: spire\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start prometheus: {e}"));
        Self { child, port }
    }

    /// The instant vector for `query` once it is non-empty.
    fn query_eventually(&self, query: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                drop(stream);
                let (code, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"));
                if code == 200 {
                    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let result = answer["data"]["result"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !result.is_empty() {
                        return result;
                    }
                }
                last = body;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("Prometheus never had {query}: {last}");
    }
}

#[test]
fn a_real_prometheus_scrapes_upstreams_series_from_server_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let [server_metrics, agent_metrics, prometheus_port] = free_ports();
    let server = ServerProcess::start(dir.path(), "");
    // The telemetry block sits beside server { }: append it to the config and restart.
    let mut config = std::fs::read_to_string(&server.config_path).unwrap();
    config.push_str(&format!(
        "\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {server_metrics}\n  }}\n  \
         EnableTrustDomainLabel = true\n}}\n"
    ));
    std::fs::write(&server.config_path, config).unwrap();
    let mut server = server;
    server.start_again();

    let token = server.generate_join_token("spiffe://example.org/telemetry-agent");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (agent_config, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let mut text = std::fs::read_to_string(&agent_config).unwrap();
    text.push_str(&format!(
        "\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {agent_metrics}\n  }}\n}}\n"
    ));
    std::fs::write(&agent_config, text).unwrap();
    let agent = AgentProcess::start_with_config(&agent_dir, &agent_config, socket, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let uid = spire_e2e::current_uid();
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/telemetry-agent",
        "-spiffeID",
        "spiffe://example.org/telemetry-workload",
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(60));

    // Every path of the listener answers with the exposition, as upstream's does.
    let (code, exposition) = http_get(server_metrics, "/anything");
    assert_eq!(code, 200);
    assert!(exposition.contains("spire_server_started{"), "{exposition}");

    let prometheus = Prometheus::start(
        dir.path(),
        prometheus_port,
        &[server_metrics, agent_metrics],
    );
    let timeout = Duration::from_secs(90);
    let attest = prometheus.query_eventually(
        "spire_server_rpc_agent_v1_agent_attest_agent{status=\"OK\"}",
        timeout,
    );
    assert_eq!(
        attest[0]["metric"]["trust_domain"], "example_org",
        "{attest:?}"
    );
    assert!(attest[0]["metric"]["host"].is_string(), "{attest:?}");
    let fetch = prometheus.query_eventually(
        "spire_agent_rpc_workload_api_fetch_x509svid{status=\"OK\"}",
        timeout,
    );
    assert!(
        fetch[0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 1.0,
        "{fetch:?}"
    );
    prometheus.query_eventually(
        "spire_server_rpc_svid_v1_svid_batch_new_x509svid_elapsed_time_bucket",
        timeout,
    );
    prometheus.query_eventually(
        "histogram_quantile(0.5, spire_agent_rpc_workload_api_fetch_x509svid_elapsed_time_bucket)",
        timeout,
    );
    let started = prometheus.query_eventually("spire_agent_started", timeout);
    assert_eq!(
        started[0]["metric"]["trust_domain_id"], "example_org",
        "{started:?}"
    );
    prometheus.query_eventually("spire_server_uptime_in_ms", timeout);

    // Non-RPC series, each from the place that does the work. The server was restarted, so
    // its CA and JWT key were loaded (activated again) rather than prepared.
    for query in [
        "spire_server_ca_manager_x509_ca_activate",
        "spire_server_manager_jwt_key_activate",
        "spire_server_manager_x509_ca_rotate_expiration{trust_domain_id=\"example_org\"} > time()",
        "spire_server_manager_jwt_key_rotate_expiration > time()",
        "spire_server_server_ca_sign_x509_svid >= 2",
        "spire_server_datastore_node_create{status=\"OK\"}",
        "spire_server_datastore_registration_entry_create_elapsed_time_bucket",
        "spire_server_entry_cache_reload{status=\"OK\"}",
        "spire_server_entry_entries_by_entryid_cache_count >= 1",
        "spire_server_server_key_manager_get_public_key{status=\"OK\"}",
        "spire_server_server_key_manager_get_public_keys{status=\"OK\"}",
        "spire_server_node_agents_by_id_cache_count >= 1",
        "spire_server_node_agents_by_expiresat_cache_count >= 1",
        "spire_server_svid_expiration > time()",
        "spire_agent_node_attestor_new_svid{attestor=\"join_token\",status=\"OK\"}",
        "spire_agent_manager_sync_fetch_entries_updates{status=\"OK\"}",
        "spire_agent_manager_sync_fetch_svids_updates{status=\"OK\"}",
        "spire_agent_lru_cache_record_map_size >= 1",
        "spire_agent_agent_svid_expiration > time()",
        "spire_agent_workload_api_workload_attestation{status=\"OK\"}",
        "spire_agent_workload_api_workload_attestor{attestor=\"unix\",status=\"OK\"}",
        "spire_agent_agent_key_manager_generate_key{status=\"OK\"}",
        // Series upstream has beyond the first set: per-API connections on the Workload API
        // listener, the LRU cache's entry counters and the sync stats, the server's
        // event-cache gauges, and the Go client's process series (unprefixed, on both).
        "spire_agent_workload_api_connection >= 1",
        "spire_agent_workload_api_connections >= 0",
        "spire_agent_lru_cache_entry_add >= 1",
        "spire_agent_sync_entries_dropped",
        "spire_server_entry_entries_by_parentid_cache_count >= 1",
        "count(process_resident_memory_bytes > 1000000) == 2",
        "count(process_start_time_seconds < time()) == 2",
        "count(process_open_fds <= process_max_fds) == 2",
        "process_cpu_seconds_total{instance=\"127.0.0.1:{agent_metrics}\"}",
    ] {
        let query = query.replace("{agent_metrics}", &agent_metrics.to_string());
        prometheus.query_eventually(&query, timeout);
    }
}

/// Datagrams received on a UDP socket, split into lines.
struct UdpCollector {
    socket: std::net::UdpSocket,
    lines: Vec<String>,
}

impl UdpCollector {
    fn bind() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Self {
            socket,
            lines: Vec::new(),
        }
    }

    fn address(&self) -> String {
        self.socket.local_addr().unwrap().to_string()
    }

    /// Waits for a line `matches` accepts; returns it.
    fn line_eventually(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut buf = [0u8; 65536];
        loop {
            if let Some(line) = self.lines.iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} line among {:#?}",
                self.lines
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                let packet = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.lines
                    .extend(packet.lines().filter(|l| !l.is_empty()).map(str::to_owned));
            }
        }
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn statsd_and_dogstatsd_collectors_receive_upstreams_lines_from_server_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut statsd = UdpCollector::bind();
    let mut dogstatsd = UdpCollector::bind();
    let sinks = format!(
        "\ntelemetry {{\n  Statsd = [{{ address = \"{}\" }}]\n  DogStatsd = [{{ address = \"{}\" }}]\n}}\n",
        statsd.address(),
        dogstatsd.address()
    );
    let mut server = ServerProcess::start(dir.path(), "");
    let mut config = std::fs::read_to_string(&server.config_path).unwrap();
    config.push_str(&sinks);
    std::fs::write(&server.config_path, config).unwrap();
    server.start_again();

    let token = server.generate_join_token("spiffe://example.org/statsd-agent");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (agent_config, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let mut text = std::fs::read_to_string(&agent_config).unwrap();
    text.push_str(&sinks);
    std::fs::write(&agent_config, text).unwrap();
    let agent = AgentProcess::start_with_config(&agent_dir, &agent_config, socket, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));

    let host = host();
    // go-metrics' statsd: label values appended to the name, `%f` values.
    statsd.line_eventually("server AttestAgent counter", |l| {
        l == format!("spire_server.rpc.agent.v1.agent.attest_agent.OK.{host}:1.000000|c")
    });
    statsd.line_eventually("server AttestAgent latency", |l| {
        l.starts_with(&format!(
            "spire_server.rpc.agent.v1.agent.attest_agent.elapsed_time.OK.{host}:"
        )) && l.ends_with("|ms")
    });
    statsd.line_eventually("agent started gauge", |l| {
        l.starts_with("spire_agent.started.")
            && l.ends_with(&format!(".example_org.{host}:1.000000|g"))
    });
    statsd.line_eventually("agent node attestation", |l| {
        l == format!("spire_agent.node.attestor.new_svid.join_token.OK.{host}:1.000000|c")
    });
    statsd.line_eventually("server datastore call", |l| {
        l == format!("spire_server.datastore.node.create.OK.{host}:1.000000|c")
    });
    // datadog-go: tags, integer counts.
    dogstatsd.line_eventually("server AttestAgent counter", |l| {
        l == format!("spire_server.rpc.agent.v1.agent.attest_agent:1|c|#status:OK,host:{host}")
    });
    dogstatsd.line_eventually("agent uptime gauge", |l| {
        l.starts_with("spire_agent.uptime_in_ms:") && l.ends_with(&format!("|g|#host:{host}"))
    });
    dogstatsd.line_eventually("CA expiry gauge", |l| {
        l.starts_with("spire_server.manager.x509_ca.rotate.expiration:")
            && l.ends_with(&format!("|g|#trust_domain_id:example_org,host:{host}"))
    });
    dogstatsd.line_eventually("agent sync", |l| {
        l == format!("spire_agent.manager.sync.fetch_entries_updates:1|c|#status:OK,host:{host}")
    });
}

#[test]
fn an_inmem_server_writes_its_metrics_to_the_log_on_sigusr1() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), "");
    let mut config = std::fs::read_to_string(&server.config_path).unwrap();
    config.push_str("\ntelemetry {\n  InMem {}\n  EnableHostnameLabel = false\n}\n");
    std::fs::write(&server.config_path, config).unwrap();
    server.start_again();
    server.generate_join_token("spiffe://example.org/inmem");
    // The interval being filled is not printed: wait for it to close.
    std::thread::sleep(Duration::from_secs(2));
    let pid = server.pid().unwrap();
    spire_e2e::eventually("an InMem dump in the log", Duration::from_secs(60), || {
        spire_e2e::send_signal(pid, spire_e2e::Signal::USR1).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let log = server.log();
        log.contains("[G] 'spire_server.started.")
            && log.contains(" +0000 UTC][C] 'spire_server.rpc.agent.v1.agent.create_join_token.OK': Count: 1 Sum: 1.000 LastUpdated: ")
    });
    // The server keeps serving after the signal.
    server.generate_join_token("spiffe://example.org/inmem-2");
}

#[test]
fn a_sink_this_build_lacks_is_refused_at_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let mut config = std::fs::read_to_string(&server.config_path).unwrap();
    config
        .push_str("\ntelemetry {\n  M3 = [{ address = \"127.0.0.1:9052\", env = \"prod\" }]\n}\n");
    let path = dir.path().join("m3.conf");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(spire_e2e::binary("spire-server"))
        .args(["validate", "-config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("telemetry.M3"), "{text}");
}
