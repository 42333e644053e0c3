//! Harness for the end-to-end tests in `tests/`: finds the real `spire-server` and
//! `spire-agent` binaries built by `cargo test --workspace`, writes configs into temporary
//! directories, starts processes on free ports and stops them when dropped.

#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test harness: failing loudly with the server log is its whole job"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`spire-server`, `spire-agent`) next to the test executable.
///
/// Cargo puts test executables in `target/<profile>/deps/` and binaries in
/// `target/<profile>/`; `cargo test --workspace` builds both before running anything.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --bins` or `cargo test --workspace`",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (racy by nature, good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18081)
}

/// The uid this test process runs as (the owner of `/proc/self`), for `unix:uid:` selectors.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or_else(|e| panic!("read /proc/self to learn our uid: {e}"))
}

/// A running `spire-server` with its own data directory, port and admin socket.
pub struct ServerProcess {
    child: Option<Child>,
    /// The admin socket path (pass as `-socketPath`).
    pub socket_path: PathBuf,
    /// The TCP port agents connect to.
    pub port: u16,
    /// The config file the server was started with.
    pub config_path: PathBuf,
    /// Where the server writes logs (stdout and stderr).
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Writes a quickstart-like HCL config into `dir` (SQLite, disk key manager, join_token)
    /// with `extra_server_keys` appended inside `server { }`, and starts the server.
    pub fn start(dir: &Path, extra_server_keys: &str) -> Self {
        let port = free_port();
        let socket_path = dir.join("api.sock");
        let data_dir = dir.join("data");
        let config = format!(
            r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "example.org"
    data_dir = "{data}"
    log_level = "DEBUG"
    {extra_server_keys}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}

    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}

    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{data}/keys.json"
        }}
    }}
}}
"#,
            socket = socket_path.display(),
            data = data_dir.display(),
        );
        let config_path = dir.join("server.conf");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        Self::start_with_config(dir, &config_path, socket_path, port)
    }

    /// Starts the server with an existing config whose socket and port are given.
    pub fn start_with_config(
        dir: &Path,
        config_path: &Path,
        socket_path: PathBuf,
        port: u16,
    ) -> Self {
        let log_path = dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open log: {e}"));
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
        let child = Command::new(binary("spire-server"))
            .args(["run", "-config"])
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn spire-server: {e}"));
        let mut server = Self {
            child: Some(child),
            socket_path,
            port,
            config_path: config_path.to_path_buf(),
            log_path,
        };
        server.wait_healthy(Duration::from_secs(60));
        server
    }

    /// Polls `spire-server healthcheck` until it succeeds, failing with the server log.
    fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("spire-server exited with {status}:\n{}", self.log());
            }
            let out = self.cli(&["healthcheck"]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "spire-server not healthy after {timeout:?}:\n{}",
            self.log()
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `spire-server <args> -socketPath <socket>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket_path)
            .output()
            .unwrap_or_else(|e| panic!("run spire-server {args:?}: {e}"))
    }

    /// Like [`cli`](Self::cli) but requires success and returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "spire-server {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`cli_ok`](Self::cli_ok) with `-output json`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-output", "json"]);
        let text = self.cli_ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// `token generate -spiffeID <spiffe_id>`: a join token whose agent is aliased to
    /// `spiffe_id`, so entries can use it as their `-parentID`.
    pub fn generate_join_token(&self, spiffe_id: &str) -> String {
        let out = self.cli_ok(&["token", "generate", "-spiffeID", spiffe_id]);
        out.trim()
            .strip_prefix("Token: ")
            .unwrap_or_else(|| panic!("token generate printed no token: {out}"))
            .to_owned()
    }

    /// `entry create <args>` with `-output json`; returns the new entry's ID.
    pub fn create_entry(&self, args: &[&str]) -> String {
        let mut all = vec!["entry", "create"];
        all.extend_from_slice(args);
        let created = self.cli_json(&all);
        created["results"][0]["entry"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("entry create {args:?} returned no entry ID: {created}"))
            .to_owned()
    }

    /// Starts the server again (after [`stop`](Self::stop)) with the same config, port,
    /// socket and data directory, as an operator restarting it would.
    pub fn start_again(&mut self) {
        self.stop();
        let dir = self
            .log_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let config_path = self.config_path.clone();
        *self = Self::start_with_config(&dir, &config_path, self.socket_path.clone(), self.port);
    }

    /// Stops the server (SIGTERM, then kill) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
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
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `spire-agent` with its own data directory and Workload API socket.
pub struct AgentProcess {
    child: Option<Child>,
    /// The Workload API socket (pass as `-socketPath`).
    pub socket_path: PathBuf,
    /// The config file the agent was started with.
    pub config_path: PathBuf,
    /// Where the agent writes logs (stdout and stderr).
    pub log_path: PathBuf,
}

impl AgentProcess {
    /// Writes an agent config into `dir` for `server` (insecure bootstrap, disk key manager,
    /// unix workload attestor) and starts the agent, with `-joinToken` when given.
    pub fn start(dir: &Path, server: &ServerProcess, join_token: Option<&str>) -> Self {
        Self::start_with_agent_keys(dir, server, join_token, "")
    }

    /// Like [`start`](Self::start) with `extra_agent_keys` appended inside `agent { }`, for
    /// tests of settings such as `x509_svid_cache_max_size`.
    pub fn start_with_agent_keys(
        dir: &Path,
        server: &ServerProcess,
        join_token: Option<&str>,
        extra_agent_keys: &str,
    ) -> Self {
        let socket_path = dir.join("agent.sock");
        let data_dir = dir.join("agent-data");
        let config = format!(
            r#"agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    insecure_bootstrap = true
    {extra_agent_keys}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{data}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
            data = data_dir.display(),
            port = server.port,
            socket = socket_path.display(),
        );
        let config_path = dir.join("agent.conf");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        Self::start_with_config(dir, &config_path, socket_path, join_token)
    }

    /// Starts the agent with an existing config whose Workload API socket is given.
    pub fn start_with_config(
        dir: &Path,
        config_path: &Path,
        socket_path: PathBuf,
        join_token: Option<&str>,
    ) -> Self {
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open log: {e}"));
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
        let mut command = Command::new(binary("spire-agent"));
        command.args(["run", "-config"]).arg(config_path);
        if let Some(token) = join_token {
            command.args(["-joinToken", token]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn spire-agent: {e}"));
        let mut agent = Self {
            child: Some(child),
            socket_path,
            config_path: config_path.to_path_buf(),
            log_path,
        };
        agent.wait_socket(Duration::from_secs(60));
        agent
    }

    fn wait_socket(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("spire-agent exited with {status}:\n{}", self.log());
            }
            if self.socket_path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "spire-agent socket not there after {timeout:?}:\n{}",
            self.log()
        );
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `spire-agent <args> -socketPath <socket>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("spire-agent"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket_path)
            .output()
            .unwrap_or_else(|e| panic!("run spire-agent {args:?}: {e}"))
    }

    /// Retries `spire-agent <args>` until it succeeds (the agent syncs every few seconds),
    /// returning its stdout; fails with the agent log after `timeout`.
    pub fn cli_eventually(&self, args: &[&str], timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = self.cli(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if start.elapsed() > timeout {
                panic!(
                    "spire-agent {args:?} kept failing: {}\nagent log:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the agent (SIGTERM, then kill) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
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
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
