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

pub use rustix::process::Signal;

pub mod aws;
pub mod aws_scripted;
pub mod azure_imds;
pub mod cloud;
pub mod ghostunnel;
pub mod kube;
pub mod pebble;
pub mod pki;
pub mod pop;
pub mod workload;

/// The binary the process `pid` runs (from `/proc/<pid>/exe`), canonical: tests that swap
/// binaries in place check which one really runs.
pub fn program_of(pid: Option<u32>) -> PathBuf {
    let pid = pid.unwrap_or_else(|| panic!("the process is not running"));
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/exe: {e}"))
}

/// A third-party binary named by the environment variable `var` (`SPIRE_UPSTREAM_SERVER`,
/// `SPIRE_UPSTREAM_AGENT`, `GHOSTUNNEL`), which `scripts/interop-deps.sh` builds and names in
/// `target/interop-deps.env`; a loud failure saying how to get it when it is not there.
pub fn interop_program(var: &str) -> PathBuf {
    let path = interop_path(var);
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

/// The folder of the Go test plugins `scripts/plugin-deps.sh` builds (named by
/// `SPIRE_TEST_PLUGINS` in `target/plugin-deps.env`); a loud failure saying how to make it.
pub fn test_plugins_dir() -> PathBuf {
    let dir = std::env::var_os("SPIRE_TEST_PLUGINS").unwrap_or_else(|| {
        panic!(
            "SPIRE_TEST_PLUGINS is not set: run scripts/plugin-deps.sh (needs Go and the Go \
             module proxy) and `. target/plugin-deps.env`"
        )
    });
    PathBuf::from(dir)
}

/// A Go test plugin binary by name; a missing one is a loud failure saying how to build it.
pub fn test_plugin(name: &str) -> PathBuf {
    let path = test_plugins_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/plugin-deps.sh",
        path.display()
    );
    path
}

/// Creates (if needed) and returns the folder `name` under `parent`.
pub fn subdir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

/// Like [`interop_program`] for any path the environment variable `var` names, a folder
/// such as `PEBBLE_CERTS_DIR` included.
pub fn interop_path(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run scripts/interop-deps.sh and source target/interop-deps.env \
             (the test command does both)"
        )
    });
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

/// Writes an executable script into `dir` that runs `program` with `SSL_CERT_FILE` set to
/// `ca_file`, and returns its path: a `spire-server` started through it trusts the PEM
/// certificates in `ca_file` for outgoing HTTPS instead of the system's roots (Go's
/// crypto/x509 and rustls-native-certs both read that variable), as an operator would point
/// it at a private CA.
pub fn with_ssl_cert_file(dir: &Path, program: &Path, ca_file: &Path) -> PathBuf {
    let name = program
        .file_name()
        .map_or_else(|| "program".into(), |n| n.to_string_lossy());
    let wrapper = dir.join(format!("{name}-with-ssl-cert-file"));
    let script = format!(
        "#!/bin/sh\nSSL_CERT_FILE='{}' exec '{}' \"$@\"\n",
        ca_file.display(),
        program.display()
    );
    // A shell writes the script, not this process: a child that another test thread forks
    // while this process holds the file open for writing would keep it open until that
    // child execs, and running the script meanwhile fails with "Text file busy".
    let written = Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s' \"$2\" > \"$1\" && chmod 755 \"$1\"",
            "sh",
        ])
        .arg(&wrapper)
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("run /bin/sh to write {}: {e}", wrapper.display()));
    assert!(
        written.status.success(),
        "write {}: {}",
        wrapper.display(),
        String::from_utf8_lossy(&written.stderr)
    );
    wrapper
}

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

/// Runs `command`, which must fail (an agent that may not start, say), with its output
/// written to `log_path`, and returns that output. Panics with `still_running` and the
/// output when it has not exited after `timeout` (then it is killed), or when it exited 0.
pub fn run_to_failure(
    mut command: Command,
    log_path: &Path,
    timeout: Duration,
    still_running: &str,
) -> String {
    let log = std::fs::File::create(log_path).unwrap_or_else(|e| panic!("create log: {e}"));
    let log_err = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let read = || std::fs::read_to_string(log_path).unwrap_or_default();
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{still_running}:\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = read();
    assert!(!status.success(), "{command:?} exited 0:\n{printed}");
    printed
}

/// The `type:value` strings of the `selectors` array of an `-output json` entry or agent.
pub fn selector_strings(selectors: &serde_json::Value) -> Vec<String> {
    selectors
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s["type"].as_str().unwrap_or_default(),
                        s["value"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1. Racy by nature (another process may take it before it is
/// bound again), so [`ServerProcess`] picks another one when its first start finds it taken.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` different free TCP ports on 127.0.0.1, for a program that listens on several at
/// once: each stays bound until all are chosen, so none is handed out twice (consecutive
/// [`free_port`] calls can return the same port). As racy as [`free_port`] otherwise.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("no free TCP port on 127.0.0.1: {e}"))
    });
    listeners.map(|listener| {
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no free TCP port on 127.0.0.1: {e}"))
            .port()
    })
}

/// Sends `signal` to process `pid`, as `kill -<signal> <pid>` would.
pub fn send_signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{pid} is not a process ID"),
            )
        })?;
    rustix::process::kill_process(pid, signal).map_err(std::io::Error::from)
}

/// The fields of the first logrus text line of `log` whose message is `msg` (values unquoted),
/// without the ones that differ from run to run (`time`, `pid`; the plugin's own `timestamp`
/// is checked for its shape only).
pub fn logged_fields(log: &str, msg: &str) -> std::collections::BTreeMap<String, String> {
    let wanted = format!("msg=\"{msg}\"");
    let line = log
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("no {msg:?} line in:\n{log}"));
    let mut fields = std::collections::BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut end = 0;
            let bytes = quoted.as_bytes();
            while end < bytes.len()
                && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\'))
            {
                end += 1;
            }
            (
                quoted[..end].to_owned(),
                quoted.get(end + 1..).unwrap_or(""),
            )
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        match key.as_str() {
            "time" | "pid" => {}
            // The plugin's own time, as hclog formats it (`2006-01-02T15:04:05.000Z0700`).
            "timestamp" => {
                assert!(
                    value.len() >= 24 && &value[10..11] == "T" && &value[19..20] == ".",
                    "{line}"
                );
                fields.insert(key, "present".to_owned());
            }
            _ => {
                fields.insert(key, value);
            }
        }
        rest = next;
    }
    fields
}

/// Fails when a process whose binary is in `dir` (a folder of hard links to test plugins,
/// private to one test) still runs 20 s from now, zombies aside: plugins must end with their
/// host.
pub fn assert_no_process_runs_from(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: Vec<PathBuf> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path().join("exe")).ok())
            .filter(|exe| exe.starts_with(dir))
            .collect();
        if running.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "plugin processes outlived their host: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `check` every 250 ms until it holds; fails naming `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `attempt` until it succeeds, up to [`CLEANUP_ATTEMPTS`] times with a growing pause
/// (0.2 s, 0.4 s, ...) between tries, for cleanup that can lose a race with the database
/// server (a `DROP DATABASE` while the server's own sessions on it are still ending);
/// returns the last error, naming `what`, when every attempt failed.
pub fn with_retries<T, E: std::fmt::Display>(
    what: &str,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if tries >= CLEANUP_ATTEMPTS => {
                return Err(format!("{what} failed {tries} times, last: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200) * tries),
        }
    }
}

/// How many times [`with_retries`] tries.
pub const CLEANUP_ATTEMPTS: u32 = 5;

/// How many ports [`ServerProcess::start_on_free_port`] tries.
const PORT_ATTEMPTS: u32 = 5;

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
    /// The `spire-server` binary: ours, or upstream's in interop tests.
    program: PathBuf,
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
        Self::start_program(&binary("spire-server"), dir, extra_server_keys)
    }

    /// Like [`start`](Self::start) with another `spire-server` binary (upstream's, for the
    /// interop tests) on the same config template.
    pub fn start_program(program: &Path, dir: &Path, extra_server_keys: &str) -> Self {
        let data_dir = dir.join("data");
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        Self::start_program_with_datastore(
            program,
            dir,
            "sqlite3",
            &connection_string,
            extra_server_keys,
        )
    }

    /// Like [`start`](Self::start) on the database given by `database_type` (`sqlite3`,
    /// `postgres`, `mysql`) and `connection_string`, so several servers can share one
    /// database (high availability); keys stay in each server's own `dir`.
    pub fn start_with_datastore(
        dir: &Path,
        database_type: &str,
        connection_string: &str,
        extra_server_keys: &str,
    ) -> Self {
        Self::start_program_with_datastore(
            &binary("spire-server"),
            dir,
            database_type,
            connection_string,
            extra_server_keys,
        )
    }

    /// Like [`start_with_datastore`](Self::start_with_datastore) with another `spire-server`
    /// binary, such as upstream's sharing a database with ours.
    pub fn start_program_with_datastore(
        program: &Path,
        dir: &Path,
        database_type: &str,
        connection_string: &str,
        extra_server_keys: &str,
    ) -> Self {
        let socket_path = dir.join("api.sock");
        let data_dir = dir.join("data");
        let config_path = dir.join("server.conf");
        Self::start_program_on_free_port(program, dir, |port| {
            let config = server_config(&ServerPaths {
                port,
                socket: &socket_path,
                data_dir: &data_dir,
                keys: &data_dir.join("keys.json"),
                database_type,
                connection_string,
                extra_server_keys,
            });
            std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
            (config_path.clone(), socket_path.clone())
        })
    }

    /// A first start: `write_config(port)` writes a config for a free `port` and returns its
    /// path and admin socket, and the server is started on it. [`free_port`] is racy, so when
    /// the server exits because something else took the port in the meantime, another port
    /// is tried.
    pub fn start_on_free_port(
        dir: &Path,
        write_config: impl FnMut(u16) -> (PathBuf, PathBuf),
    ) -> Self {
        Self::start_program_on_free_port(&binary("spire-server"), dir, write_config)
    }

    /// Like [`start_on_free_port`](Self::start_on_free_port) with another `spire-server`
    /// binary, such as upstream's for interop tests.
    pub fn start_program_on_free_port(
        program: &Path,
        dir: &Path,
        mut write_config: impl FnMut(u16) -> (PathBuf, PathBuf),
    ) -> Self {
        let mut attempt = 1;
        loop {
            let port = free_port();
            let (config_path, socket_path) = write_config(port);
            match Self::try_start_with_config(program, dir, &config_path, socket_path, port) {
                Ok(server) => return server,
                Err(failure) if failure.port_taken && attempt < PORT_ATTEMPTS => {
                    eprintln!(
                        "spire-server: port {port} was taken before the server bound it; \
                         trying another port"
                    );
                    attempt += 1;
                }
                Err(failure) => panic!("{}", failure.message),
            }
        }
    }

    /// Starts the server with an existing config whose socket and port are given.
    pub fn start_with_config(
        dir: &Path,
        config_path: &Path,
        socket_path: PathBuf,
        port: u16,
    ) -> Self {
        Self::try_start_with_config(&binary("spire-server"), dir, config_path, socket_path, port)
            .unwrap_or_else(|failure| panic!("{}", failure.message))
    }

    fn try_start_with_config(
        program: &Path,
        dir: &Path,
        config_path: &Path,
        socket_path: PathBuf,
        port: u16,
    ) -> Result<Self, StartFailure> {
        let log_path = dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open log: {e}"));
        // Where this start's output begins: the log is appended to across restarts.
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
        let child = Command::new(program)
            .args(["run", "-config"])
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn spire-server: {e}"));
        let mut server = Self {
            child: Some(child),
            program: program.to_path_buf(),
            socket_path,
            port,
            config_path: config_path.to_path_buf(),
            log_path,
        };
        server.wait_healthy(Duration::from_secs(60), log_start)?;
        Ok(server)
    }

    /// Polls `spire-server healthcheck` until it succeeds; the failure carries the server
    /// log, and says whether the server exited because its port was taken (judged from the
    /// log written from byte `log_start` on, this start's).
    fn wait_healthy(&mut self, timeout: Duration, log_start: u64) -> Result<(), StartFailure> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = self.log();
                let this_start = log
                    .get(usize::try_from(log_start).unwrap_or(0)..)
                    .unwrap_or(&log)
                    .to_lowercase();
                return Err(StartFailure {
                    port_taken: this_start.contains("address already in use")
                        || this_start.contains("address in use"),
                    message: format!("spire-server exited with {status}:\n{log}"),
                });
            }
            let out = self.cli(&["healthcheck"]);
            if out.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(StartFailure {
            port_taken: false,
            message: format!(
                "spire-server not healthy after {timeout:?}:\n{}",
                self.log()
            ),
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `spire-server <args> -socketPath <socket>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(&binary("spire-server"), args)
    }

    /// Like [`cli`](Self::cli) with another `spire-server` binary's CLI, such as upstream's.
    pub fn cli_with(&self, program: &Path, args: &[&str]) -> Output {
        Command::new(program)
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

    /// The agents `agent list -output json` names, in its order.
    pub fn agents(&self) -> Vec<ListedAgent> {
        let listed = self.cli_json(&["agent", "list"]);
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        listed["agents"]
            .as_array()
            .map(|agents| {
                agents
                    .iter()
                    .map(|a| ListedAgent {
                        spiffe_id: format!(
                            "spiffe://{}{}",
                            text(&a["id"]["trust_domain"]),
                            text(&a["id"]["path"])
                        ),
                        serial: text(&a["x509svid_serial_number"]),
                        banned: a["banned"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The SPIFFE IDs of [`agents`](Self::agents).
    pub fn agent_ids(&self) -> Vec<String> {
        self.agents().into_iter().map(|a| a.spiffe_id).collect()
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

    /// `entry create` of `spiffe_id` under `parent_id` for the workload selector
    /// `unix:uid:<uid>`, with `extra` flags; returns the new entry's ID.
    pub fn create_uid_entry(
        &self,
        parent_id: &str,
        spiffe_id: &str,
        uid: u32,
        extra: &[&str],
    ) -> String {
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "-parentID",
            parent_id,
            "-spiffeID",
            spiffe_id,
            "-selector",
            &selector,
        ];
        args.extend_from_slice(extra);
        self.create_entry(&args)
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
        let program = self.program.clone();
        self.start_again_as(&program);
    }

    /// Like [`start_again`](Self::start_again) with another `spire-server` binary on the
    /// same config and data directory: an operator swapping upstream's binary for ours in
    /// place, or back.
    pub fn start_again_as(&mut self, program: &Path) {
        self.stop();
        let dir = self
            .log_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let config_path = self.config_path.clone();
        *self = Self::try_start_with_config(
            program,
            &dir,
            &config_path,
            self.socket_path.clone(),
            self.port,
        )
        .unwrap_or_else(|failure| panic!("{}", failure.message));
    }

    /// The server's process ID while it runs, e.g. to freeze it with SIGSTOP as a hung
    /// server (send SIGCONT before [`stop`](Self::stop)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGTERM, then kill) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// One agent as `agent list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAgent {
    /// `spiffe://<trust domain><path>`.
    pub spiffe_id: String,
    /// The current agent SVID's serial (empty when banned): changes on every renewal.
    pub serial: String,
    /// Whether `agent ban` banned it.
    pub banned: bool,
}

/// Why [`ServerProcess::try_start_with_config`] failed.
struct StartFailure {
    /// The server exited saying its TCP port was in use.
    port_taken: bool,
    /// What to fail the test with, the server log included.
    message: String,
}

/// Sends SIGTERM to `child`, waits up to 10 s for it to exit, then kills it.
fn terminate(mut child: Child) {
    let _ = send_signal(child.id(), Signal::TERM);
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
        Self::start_at_port(dir, server.port, join_token, extra_agent_keys)
    }

    /// Like [`start_with_agent_keys`](Self::start_with_agent_keys) for a server reached at
    /// `127.0.0.1:server_port`, e.g. a [`TcpForwarder`] in front of several servers.
    pub fn start_at_port(
        dir: &Path,
        server_port: u16,
        join_token: Option<&str>,
        extra_agent_keys: &str,
    ) -> Self {
        Self::start_program_at_port(
            &binary("spire-agent"),
            dir,
            server_port,
            join_token,
            extra_agent_keys,
        )
    }

    /// Like [`start_at_port`](Self::start_at_port) with another `spire-agent` binary, such as
    /// upstream's, on the same config template.
    pub fn start_program_at_port(
        program: &Path,
        dir: &Path,
        server_port: u16,
        join_token: Option<&str>,
        extra_agent_keys: &str,
    ) -> Self {
        let (config_path, socket_path) = Self::write_config(dir, server_port, extra_agent_keys);
        Self::start_program_with_config(program, dir, &config_path, socket_path, join_token)
    }

    /// Writes the agent config every `start_*` uses into `dir` (`agent.conf`, Workload API
    /// socket `agent.sock`, `data_dir` `agent-data`) for a server at `127.0.0.1:server_port`,
    /// and returns the config's path and the socket's, for tests that start and restart
    /// agents themselves.
    pub fn write_config(
        dir: &Path,
        server_port: u16,
        extra_agent_keys: &str,
    ) -> (PathBuf, PathBuf) {
        let socket_path = dir.join("agent.sock");
        let data_dir = dir.join("agent-data");
        let config = agent_config(&AgentPaths {
            server_port,
            socket: &socket_path,
            data_dir: &data_dir,
            keys_dir: &data_dir,
            extra_agent_keys,
        });
        let config_path = dir.join("agent.conf");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        (config_path, socket_path)
    }

    /// Starts the agent with an existing config whose Workload API socket is given.
    pub fn start_with_config(
        dir: &Path,
        config_path: &Path,
        socket_path: PathBuf,
        join_token: Option<&str>,
    ) -> Self {
        Self::start_program_with_config(
            &binary("spire-agent"),
            dir,
            config_path,
            socket_path,
            join_token,
        )
    }

    /// Like [`start_with_config`](Self::start_with_config) with another `spire-agent` binary,
    /// such as upstream's for interop tests.
    pub fn start_program_with_config(
        program: &Path,
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
        let mut command = Command::new(program);
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

    /// The agent's process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for the agent to exit on its own (after `agent evict` or `agent ban`, say) and
    /// returns how it exited; fails with the agent log if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        let Some(child) = self.child.as_mut() else {
            panic!("the agent was already stopped");
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if start.elapsed() > timeout {
                panic!("spire-agent still runs after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent (SIGTERM, then kill) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a test server keeps everything, for [`server_config`].
pub struct ServerPaths<'a> {
    /// `bind_port` on 127.0.0.1.
    pub port: u16,
    /// `socket_path`, the admin socket.
    pub socket: &'a Path,
    /// `data_dir`.
    pub data_dir: &'a Path,
    /// The disk key manager's `keys_path`.
    pub keys: &'a Path,
    /// The SQL datastore's `database_type`.
    pub database_type: &'a str,
    /// The SQL datastore's `connection_string`.
    pub connection_string: &'a str,
    /// More `server { }` keys, one per line.
    pub extra_server_keys: &'a str,
}

/// A quickstart-like `server.conf` (trust domain `example.org`, SQL datastore, join_token,
/// disk key manager, DEBUG logs) at `paths`.
pub fn server_config(paths: &ServerPaths<'_>) -> String {
    format!(
        r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "example.org"
    data_dir = "{data}"
    log_level = "DEBUG"
    {extra}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "{database_type}"
            connection_string = "{connection_string}"
        }}
    }}

    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}

    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{keys}"
        }}
    }}
}}
"#,
        port = paths.port,
        socket = paths.socket.display(),
        data = paths.data_dir.display(),
        keys = paths.keys.display(),
        database_type = paths.database_type,
        connection_string = hcl_escape(paths.connection_string),
        extra = paths.extra_server_keys,
    )
}

/// Writes [`server_config`] with SQLite into `dir` for `port`, with `plugins` (HCL plugin
/// blocks) added after the join_token NodeAttestor, for tests of one more plugin; returns the
/// config path and the admin socket, as [`ServerProcess::start_on_free_port`] wants them.
pub fn write_server_config_with_plugins(
    dir: &Path,
    port: u16,
    plugins: &str,
) -> (PathBuf, PathBuf) {
    const JOIN_TOKEN_BLOCK: &str =
        "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";
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
    })
    .replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{plugins}"));
    std::fs::write(&config_path, config).unwrap();
    (config_path, socket)
}

/// Where a test agent keeps everything, for [`agent_config`].
pub struct AgentPaths<'a> {
    /// The server's port on 127.0.0.1.
    pub server_port: u16,
    /// `socket_path`, the Workload API socket.
    pub socket: &'a Path,
    /// `data_dir`.
    pub data_dir: &'a Path,
    /// The disk key manager's `directory`.
    pub keys_dir: &'a Path,
    /// More `agent { }` keys, one per line.
    pub extra_agent_keys: &'a str,
}

/// An `agent.conf` for a test server (insecure bootstrap, join_token, disk key manager, unix
/// workload attestor, DEBUG logs) at `paths`.
pub fn agent_config(paths: &AgentPaths<'_>) -> String {
    format!(
        r#"agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{server_port}"
    socket_path = "{socket}"
    insecure_bootstrap = true
    {extra}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{keys}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
        data = paths.data_dir.display(),
        server_port = paths.server_port,
        socket = paths.socket.display(),
        keys = paths.keys_dir.display(),
        extra = paths.extra_agent_keys,
    )
}

/// `value` as the inside of an HCL double-quoted string.
fn hcl_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A loopback TCP forwarder: agents dial its port and it relays each connection to the
/// upstream port of the moment, as a load balancer or a DNS name with several addresses
/// would in front of several servers. Tests switch or drop the upstream while connections
/// come and go.
pub struct TcpForwarder {
    /// The port clients dial on 127.0.0.1.
    pub port: u16,
    shared: std::sync::Arc<ForwarderShared>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

struct ForwarderShared {
    upstream: std::sync::Mutex<Option<u16>>,
    /// Both sockets of every relayed connection, so they can be cut.
    connections: std::sync::Mutex<Vec<std::net::TcpStream>>,
    accepted: std::sync::atomic::AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
}

impl ForwarderShared {
    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Vec<std::net::TcpStream>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn upstream(&self) -> Option<u16> {
        *self
            .upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TcpForwarder {
    /// Listens on a free loopback port and relays to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;

        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("forwarder: bind a loopback port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("forwarder: local address: {e}"))
            .port();
        let shared = Arc::new(ForwarderShared {
            upstream: std::sync::Mutex::new(Some(upstream_port)),
            connections: std::sync::Mutex::new(Vec::new()),
            accepted: std::sync::atomic::AtomicUsize::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let accept_thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                // No upstream: the connection is closed at once, as a dead backend would.
                let Some(upstream_port) = accept_shared.upstream() else {
                    continue;
                };
                let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", upstream_port))
                else {
                    continue;
                };
                relay(&accept_shared, client, upstream);
            }
        });
        Self {
            port,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// New connections go to `127.0.0.1:upstream_port`; open ones stay where they are.
    pub fn set_upstream(&self, upstream_port: u16) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(upstream_port);
    }

    /// New connections are accepted and closed at once, as if every backend were gone.
    pub fn drop_upstream(&self) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Cuts every open relayed connection (both sides see the connection end).
    pub fn drop_connections(&self) {
        for stream in self.shared.lock_connections().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// How many client connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copies bytes both ways between `client` and `upstream` on two threads; when either
/// direction ends, both connections are shut down.
fn relay(shared: &ForwarderShared, client: std::net::TcpStream, upstream: std::net::TcpStream) {
    let clones = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    );
    let (Ok(client_tracked), Ok(upstream_tracked), Ok(client_write), Ok(upstream_write)) = clones
    else {
        return;
    };
    shared
        .lock_connections()
        .extend([client_tracked, upstream_tracked]);
    let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
        move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        }
    };
    std::thread::spawn(pipe(client, upstream_write));
    std::thread::spawn(pipe(upstream, client_write));
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        self.drop_connections();
    }
}

/// A fresh PostgreSQL or MySQL/MariaDB database that several servers share, created through
/// the server named by `SPIRE_TEST_POSTGRES` / `SPIRE_TEST_MYSQL` (upstream's
/// connection-string formats; `scripts/test-databases.sh` starts local servers and prints
/// them). Dropped again when the test passes (a drop that keeps failing is reported on
/// standard error, never failing the test); a failed test leaves it for inspection.
pub struct SharedDatabase {
    /// `postgres` or `mysql`, as `database_type` takes it.
    pub database_type: &'static str,
    /// The `connection_string` that opens this database.
    pub connection_string: String,
    /// The database's name.
    pub name: String,
    /// The configured connection string the database was created through.
    base: String,
}

impl SharedDatabase {
    /// Creates database `name` on the `database_type` (`postgres` or `mysql`) server, or
    /// returns `None` after printing a line saying the engine is skipped when its variable
    /// is not set. A database of that name left by an earlier run is dropped first.
    pub fn create(database_type: &str, name: &str) -> Option<Self> {
        let (database_type, var) = match database_type {
            "postgres" => ("postgres", "SPIRE_TEST_POSTGRES"),
            "mysql" => ("mysql", "SPIRE_TEST_MYSQL"),
            other => panic!("SharedDatabase: unsupported database_type {other:?}"),
        };
        let base = match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => value,
            _ => {
                println!(
                    "skipped {name} on {database_type}: {var} is not set (run scripts/test-databases.sh)"
                );
                return None;
            }
        };
        let connection_string = if database_type == "postgres" {
            postgres_with_database(&base, name)
        } else {
            mysql_with_database(&base, name)
        };
        let db = Self {
            database_type,
            connection_string,
            name: name.to_owned(),
            base,
        };
        with_retries(&format!("dropping a leftover {name}"), || {
            db.admin_sql(&[&db.drop_statement()])
        })
        .and_then(|()| db.admin_sql(&[&db.create_statement()]))
        .unwrap_or_else(|e| panic!("creating database {name} on {database_type}: {e}"));
        Some(db)
    }

    fn create_statement(&self) -> String {
        if self.database_type == "postgres" {
            format!("CREATE DATABASE \"{}\"", self.name)
        } else {
            format!("CREATE DATABASE `{}`", self.name)
        }
    }

    fn drop_statement(&self) -> String {
        if self.database_type == "postgres" {
            format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)
        } else {
            format!("DROP DATABASE IF EXISTS `{}`", self.name)
        }
    }

    /// Runs `statements`, one at a time, with `psql` or `mysql` (`mariadb` where there is no
    /// `mysql`) on the configured server.
    fn admin_sql(&self, statements: &[&str]) -> Result<(), String> {
        let mut command = if self.database_type == "postgres" {
            let mut command = Command::new("psql");
            command.args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-d", &self.base]);
            for statement in statements {
                command.args(["-c", statement]);
            }
            command
        } else {
            let dsn = MysqlDsn::parse(&self.base);
            let mut command = Command::new(mysql_client());
            command
                .args([
                    "--protocol=TCP",
                    "-h",
                    &dsn.host,
                    "-P",
                    &dsn.port,
                    "-u",
                    &dsn.user,
                ])
                .env("MYSQL_PWD", &dsn.password)
                .args(["-e", &statements.join("; ")]);
            command
        };
        let out = command.output().map_err(|e| {
            let program = command.get_program().to_string_lossy().into_owned();
            format!("run the {} client {program}: {e}", self.database_type)
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{statements:?} on {} failed: {}",
                self.database_type,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ))
        }
    }
}

impl Drop for SharedDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // The test passed; a database left behind is only litter, not a failure.
        if let Err(e) = with_retries(&format!("dropping database {}", self.name), || {
            self.admin_sql(&[&self.drop_statement()])
        }) {
            eprintln!(
                "warning: {e}; it is left on the {} server",
                self.database_type
            );
        }
    }
}

/// The MySQL/MariaDB command-line client: `mysql`, or `mariadb` where only that is installed
/// (MariaDB 11 packages drop the `mysql` name).
fn mysql_client() -> &'static str {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    if !on_path("mysql") && on_path("mariadb") {
        "mariadb"
    } else {
        "mysql"
    }
}

/// `base` (libpq `key=value` or a `postgres://` URL) naming database `name` instead.
fn postgres_with_database(base: &str, name: &str) -> String {
    if let Some(scheme_end) = base.find("://") {
        let rest = &base[scheme_end + 3..];
        let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let query = rest[host_end..]
            .find('?')
            .map(|q| &rest[host_end + q..])
            .unwrap_or("");
        return format!(
            "{}{}/{name}{query}",
            &base[..scheme_end + 3],
            &rest[..host_end]
        );
    }
    let mut parts: Vec<&str> = base
        .split_whitespace()
        .filter(|part| !part.starts_with("dbname="))
        .collect();
    let dbname = format!("dbname={name}");
    parts.push(&dbname);
    parts.join(" ")
}

/// `base` (go-sql-driver `user:pass@tcp(host:port)/db?params`) naming database `name`.
fn mysql_with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.rfind('?') {
        Some(q) => (&base[..q], &base[q..]),
        None => (base, ""),
    };
    let slash = head
        .rfind('/')
        .unwrap_or_else(|| panic!("MySQL DSN without /dbname: {base:?}"));
    format!("{}/{name}{query}", &head[..slash])
}

/// The parts of a go-sql-driver DSN the `mysql` client needs.
struct MysqlDsn {
    user: String,
    password: String,
    host: String,
    port: String,
}

impl MysqlDsn {
    fn parse(dsn: &str) -> Self {
        let at = dsn
            .rfind('@')
            .unwrap_or_else(|| panic!("MySQL DSN without user@: {dsn:?}"));
        let (user, password) = dsn[..at].split_once(':').unwrap_or((&dsn[..at], ""));
        let rest = &dsn[at + 1..];
        let address = rest
            .find('(')
            .and_then(|open| {
                rest[open + 1..]
                    .find(')')
                    .map(|close| &rest[open + 1..open + 1 + close])
            })
            .unwrap_or("127.0.0.1:3306");
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "3306"));
        Self {
            user: user.to_owned(),
            password: password.to_owned(),
            host: host.to_owned(),
            port: port.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn postgres_connection_strings_name_the_new_database() {
        assert_eq!(
            postgres_with_database("dbname=spire user=u host=127.0.0.1", "ha_1"),
            "user=u host=127.0.0.1 dbname=ha_1"
        );
        assert_eq!(
            postgres_with_database("postgres://u:p@h:5432/spire?sslmode=disable", "ha_1"),
            "postgres://u:p@h:5432/ha_1?sslmode=disable"
        );
        assert_eq!(
            postgres_with_database("postgresql://u@h", "ha_1"),
            "postgresql://u@h/ha_1"
        );
    }

    #[test]
    fn mysql_dsns_name_the_new_database() {
        assert_eq!(
            mysql_with_database("spire:pw@tcp(127.0.0.1:3306)/spire?parseTime=true", "ha_1"),
            "spire:pw@tcp(127.0.0.1:3306)/ha_1?parseTime=true"
        );
        let dsn = MysqlDsn::parse("spire:p@ss@tcp(db.local:3307)/spire");
        assert_eq!(
            (
                dsn.user.as_str(),
                dsn.password.as_str(),
                dsn.host.as_str(),
                dsn.port.as_str()
            ),
            ("spire", "p@ss", "db.local", "3307")
        );
    }

    /// An echo server on a free port that answers each connection with `tag` then echoes.
    fn tagged_echo(tag: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let _ = stream.write_all(tag);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn dial(port: u16) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }

    #[test]
    fn forwarder_relays_switches_and_cuts() {
        let a = tagged_echo(b"A");
        let b = tagged_echo(b"B");
        let forwarder = TcpForwarder::start(a);

        let mut first = dial(forwarder.port);
        let mut buf = [0u8; 3];
        first.write_all(b"hi").unwrap();
        first.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"Ahi");

        forwarder.set_upstream(b);
        let mut second = dial(forwarder.port);
        let mut tag = [0u8; 1];
        second.read_exact(&mut tag).unwrap();
        assert_eq!(&tag, b"B", "new connections go to the new upstream");
        first.write_all(b"x").unwrap();
        let mut echo = [0u8; 1];
        first.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"x", "open connections stay on the old upstream");

        forwarder.drop_connections();
        assert_eq!(first.read(&mut echo).unwrap_or(0), 0, "cut connections end");

        forwarder.drop_upstream();
        let mut third = dial(forwarder.port);
        assert_eq!(
            third.read(&mut echo).unwrap_or(0),
            0,
            "no upstream: closed at once"
        );
        assert_eq!(forwarder.accepted(), 3);
    }
}
