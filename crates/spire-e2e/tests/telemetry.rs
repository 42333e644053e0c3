//! Telemetry as an operator's monitoring sees it: a real Prometheus (Debian's package)
//! scrapes our server and agent, and its query API returns upstream's series for the calls
//! made: the agent's attestation on the server, a Workload API fetch on the agent, the
//! `started` gauge, and the latency histograms.

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
}

#[test]
fn a_sink_this_build_lacks_is_refused_at_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let mut config = std::fs::read_to_string(&server.config_path).unwrap();
    config.push_str("\ntelemetry {\n  Statsd = [{ address = \"127.0.0.1:8125\" }]\n}\n");
    let path = dir.path().join("statsd.conf");
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
    assert!(text.contains("telemetry.Statsd"), "{text}");
}
