//! Who may read what either process leaves on disk, tried as another local user would.
//!
//! The attack this guards against: the server once created `data_dir` 0755 and the SQLite
//! database (with its `-wal` and `-shm` files) 0644. Any local user could then read a pending
//! join token out of the database files (`SELECT token FROM join_tokens`, or just `strings`),
//! run `spire-agent run -joinToken <stolen>` before the real node did, and receive every SVID
//! parented to that token's alias, while the entry table leaked every workload's selectors.
//! Here both processes run as root with umask 000 (the loosest an operator could leave), a
//! join token is pending, and uid 65534 (`nobody`) tries to read every file and folder and to
//! connect to every socket: only the Workload API socket lets it in, as upstream's does.
//!
//! Needs root (CI runs as root): only root can start a process as another user.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use spire_e2e::{
    AgentPaths, AgentProcess, ServerPaths, ServerProcess, agent_config, binary, current_uid,
    server_config,
};

/// The user every check runs as.
const NOBODY: u32 = 65534;

fn require_root() {
    assert_eq!(
        current_uid(),
        0,
        "these tests start commands as uid {NOBODY} and need root; run the test command as \
         root (as CI does)"
    );
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Asserts `path` has no permission bit beyond `widest`.
fn assert_at_most(path: &Path, widest: u32) {
    let mode = mode(path);
    assert_eq!(
        mode & !widest,
        0,
        "{} has mode {mode:04o}, wider than {widest:04o}",
        path.display()
    );
}

/// Runs `program args` as uid/gid 65534 with no supplementary groups.
fn as_nobody(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(program)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .unwrap()
}

/// `cat path` as nobody must fail with "Permission denied".
fn assert_unreadable_by_nobody(path: &Path) {
    assert!(path.exists(), "{} was never created", path.display());
    let out = as_nobody("cat", &[path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "uid {NOBODY} could read {} ({:?}): {stderr}",
        path.display(),
        out.status
    );
}

/// `ls path` as nobody must fail with "Permission denied".
fn assert_unlistable_by_nobody(path: &Path) {
    let out = as_nobody("ls", &[path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "uid {NOBODY} could list {}: {stderr}",
        path.display()
    );
}

/// A temporary folder everyone may traverse (tempfile makes them 0700, which would hide
/// whatever the processes do inside).
fn open_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// Sets this test process's umask, which the spawned processes inherit; every test in this
/// binary wants the same loose one.
fn loosest_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0));
}

struct Layout {
    dir: PathBuf,
    server_data: PathBuf,
    server_socket: PathBuf,
    server_log: PathBuf,
    agent_data: PathBuf,
    agent_keys: PathBuf,
    workload_socket: PathBuf,
    admin_socket: PathBuf,
    agent_log: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            server_data: dir.join("server-data"),
            server_socket: dir.join("server-private/api.sock"),
            server_log: dir.join("server-file.log"),
            agent_data: dir.join("agent-data"),
            agent_keys: dir.join("agent-keys"),
            workload_socket: dir.join("spire-agent/public/api.sock"),
            admin_socket: dir.join("agent-admin/admin.sock"),
            agent_log: dir.join("agent-file.log"),
        }
    }

    fn database(&self) -> PathBuf {
        self.server_data.join("datastore.sqlite3")
    }

    /// Starts the server with every path in a folder it must create itself.
    fn start_server(&self) -> ServerProcess {
        ServerProcess::start_on_free_port(&self.dir, |port| {
            let config = server_config(&ServerPaths {
                port,
                socket: &self.server_socket,
                data_dir: &self.server_data,
                keys: &self.server_data.join("keys.json"),
                database_type: "sqlite3",
                connection_string: &self.database().display().to_string(),
                extra_server_keys: &format!("log_file = \"{}\"", self.server_log.display()),
            });
            let config_path = self.dir.join("server.conf");
            std::fs::write(&config_path, config).unwrap();
            (config_path, self.server_socket.clone())
        })
    }

    fn start_agent(&self, server: &ServerProcess, token: Option<&str>) -> AgentProcess {
        let config = agent_config(&AgentPaths {
            server_port: server.port,
            socket: &self.workload_socket,
            data_dir: &self.agent_data,
            keys_dir: &self.agent_keys,
            extra_agent_keys: &format!(
                "log_file = \"{}\"\n    admin_socket_path = \"{}\"",
                self.agent_log.display(),
                self.admin_socket.display()
            ),
        });
        let config_path = self.dir.join("agent.conf");
        std::fs::write(&config_path, config).unwrap();
        AgentProcess::start_with_config(
            &self.dir,
            &config_path,
            self.workload_socket.clone(),
            token,
        )
    }
}

/// The files each process keeps, and who may read or connect to what, with both processes
/// running and a join token pending.
#[test]
fn other_users_cannot_read_state_or_reach_admin_sockets() {
    require_root();
    loosest_umask();
    let tmp = open_tempdir();
    let layout = Layout::new(tmp.path());
    let server = layout.start_server();
    let agent_token = server.generate_join_token("spiffe://example.org/node");
    let agent = layout.start_agent(&server, Some(&agent_token));
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/node",
        "-spiffeID",
        "spiffe://example.org/root-workload",
        "-selector",
        "unix:uid:0",
    ]);
    // The token a thief would want: generated, not yet used.
    let pending = server.generate_join_token("spiffe://example.org/next-node");
    let svid_out = tmp.path().join("fetched");
    std::fs::create_dir(&svid_out).unwrap();
    agent.cli_eventually(
        &["api", "fetch", "x509", "-write", svid_out.to_str().unwrap()],
        Duration::from_secs(60),
    );

    // Modes: upstream's (0755/0644 under its 0027 umask) or stricter, whatever our umask.
    let database = layout.database();
    assert_at_most(&layout.server_data, 0o750);
    assert_at_most(&database, 0o640);
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", database.display()));
        assert_at_most(&companion, 0o640);
        assert_unreadable_by_nobody(&companion);
    }
    assert_eq!(mode(&layout.server_data.join("keys.json")), 0o600);
    assert_at_most(layout.server_socket.parent().unwrap(), 0o750);
    assert_eq!(mode(&layout.server_socket), 0o770);
    assert_at_most(&layout.server_log, 0o640);
    assert_at_most(&layout.agent_data, 0o750);
    assert_eq!(mode(&layout.agent_data.join("agent-data.json")), 0o600);
    assert_at_most(&layout.agent_keys, 0o700);
    for key in std::fs::read_dir(&layout.agent_keys).unwrap() {
        let key = key.unwrap().path();
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    assert_at_most(layout.admin_socket.parent().unwrap(), 0o750);
    assert_eq!(mode(&layout.admin_socket), 0o770);
    assert_at_most(&layout.agent_log, 0o640);
    // The Workload API must stay reachable by every user: attestation decides.
    // Both folders the agent created (as for the default /tmp/spire-agent/public/api.sock).
    let public = layout.workload_socket.parent().unwrap();
    assert_eq!(mode(public), 0o755);
    assert_eq!(mode(public.parent().unwrap()), 0o755);
    assert_eq!(mode(&layout.workload_socket), 0o777);
    assert_eq!(mode(&svid_out.join("svid.0.key")), 0o600);
    assert_eq!(mode(&svid_out.join("svid.0.pem")), 0o644);
    assert_eq!(mode(&svid_out.join("bundle.0.pem")), 0o644);

    // Nobody reads the database (the pending token is in there), the keys or the logs.
    for path in [
        database.clone(),
        layout.server_data.join("keys.json"),
        layout.server_log.clone(),
        layout.agent_data.join("agent-data.json"),
        layout.agent_keys.join("keys.json"),
        layout.agent_log.clone(),
        svid_out.join("svid.0.key"),
    ] {
        assert_unreadable_by_nobody(&path);
    }
    for dir in [
        &layout.server_data,
        &layout.agent_data,
        &layout.agent_keys,
        &layout.server_socket.parent().unwrap().to_path_buf(),
        &layout.admin_socket.parent().unwrap().to_path_buf(),
    ] {
        assert_unlistable_by_nobody(dir);
    }
    // The token really is in the files root can read: the test is not vacuous.
    let bytes = std::fs::read(&database).unwrap();
    let wal = std::fs::read(format!("{}-wal", database.display())).unwrap_or_default();
    let needle = pending.as_bytes();
    let contains = |haystack: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&bytes) || contains(&wal),
        "the pending token is not in the database files, so reading them proves nothing"
    );

    // Nobody reaches the server's admin API or the agent's.
    let server_cli = as_nobody(
        binary("spire-server"),
        &[
            "token".as_ref(),
            "generate".as_ref(),
            "-socketPath".as_ref(),
            layout.server_socket.as_os_str(),
        ],
    );
    assert!(!server_cli.status.success(), "{server_cli:?}");
    assert!(
        String::from_utf8_lossy(&server_cli.stderr).contains("ermission denied"),
        "{server_cli:?}"
    );
    let agent_admin = as_nobody(
        binary("spire-agent"),
        &[
            "logger".as_ref(),
            "get".as_ref(),
            "-socketPath".as_ref(),
            layout.admin_socket.as_os_str(),
        ],
    );
    assert!(!agent_admin.status.success(), "{agent_admin:?}");
    assert!(
        String::from_utf8_lossy(&agent_admin.stderr).contains("ermission denied"),
        "{agent_admin:?}"
    );
    // ...but does reach the Workload API, which tells it it has no identity.
    let workload = as_nobody(
        binary("spire-agent"),
        &[
            "api".as_ref(),
            "fetch".as_ref(),
            "x509".as_ref(),
            "-socketPath".as_ref(),
            layout.workload_socket.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&workload.stderr);
    assert!(
        !workload.status.success() && stderr.contains("no identity issued"),
        "{workload:?}"
    );
    drop(agent);
    drop(server);
}

/// A data folder and database that an older install (or upstream with a loose umask) left
/// open to everyone are narrowed at start, with a warning naming each path and its old mode.
#[test]
fn too_open_state_left_by_an_earlier_run_is_narrowed_at_start_with_a_warning() {
    require_root();
    loosest_umask();
    let tmp = open_tempdir();
    let layout = Layout::new(tmp.path());
    let mut server = layout.start_server();
    let token = server.generate_join_token("spiffe://example.org/node");
    let mut agent = layout.start_agent(&server, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    agent.stop();
    server.stop();

    let database = layout.database();
    let mut opened = vec![
        layout.server_data.clone(),
        database.clone(),
        layout.agent_data.clone(),
    ];
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", database.display()));
        if !companion.exists() {
            std::fs::write(&companion, b"").unwrap();
        }
        opened.push(companion);
    }
    for path in &opened {
        let wide = if path.is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wide)).unwrap();
    }

    server.start_again();
    let agent = layout.start_agent(&server, None);
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let logs = format!(
        "{}\n{}",
        std::fs::read_to_string(&layout.server_log).unwrap_or_default(),
        std::fs::read_to_string(&layout.agent_log).unwrap_or_default()
    );
    for path in &opened {
        let (widest, old) = if path.is_dir() {
            (0o750, "0777")
        } else {
            (0o640, "0666")
        };
        assert_at_most(path, widest);
        let expected = format!(
            "Permissions of {} were too open ({old}); tightened to {:04o}",
            path.display(),
            widest
        );
        assert!(
            logs.contains(&expected),
            "no warning {expected:?} in:\n{logs}"
        );
    }
    // Started without a join token, the agent ran on the SVID kept in its narrowed data_dir.
    drop(agent);
}

/// The process umask is raised to upstream's 0027 at start, with upstream's warning.
#[test]
fn a_loose_umask_is_raised_with_a_warning() {
    require_root();
    loosest_umask();
    let tmp = open_tempdir();
    let layout = Layout::new(tmp.path());
    let server = layout.start_server();
    let log = std::fs::read_to_string(&layout.server_log).unwrap_or_default();
    assert!(
        log.contains("Current umask 0000 is too permissive; setting umask 0027"),
        "{log}"
    );
    drop(server);
}
