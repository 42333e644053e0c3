//! Starting an external plugin process the way hashicorp go-plugin's client does: the magic
//! cookie and protocol versions in its environment, then the one handshake line it prints on
//! stdout (`CORE|APP|NETWORK|ADDRESS|PROTOCOL[|CERT]`). Its stderr goes to our log; its exit is
//! logged; the process is killed when the handle is dropped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{ExternalPlugin, PluginLoadError};

/// go-plugin's core protocol version, the first field of the handshake line.
const CORE_PROTOCOL_VERSION: &str = "1";
/// The application protocol version SPIRE plugins speak (`ProtocolVersion: 1`).
const APP_PROTOCOL_VERSION: &str = "1";
/// Lines of stderr kept to explain a plugin that exits before its handshake.
const STDERR_TAIL: usize = 10;

/// Plugin processes running now, so [`kill_all`] can end them when the host exits without
/// unwinding (`std::process::exit` skips the drops that would kill them).
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: Option<u32>) {
    if let (Some(pid), Ok(mut running)) = (pid, RUNNING.lock()) {
        running.push(pid);
    }
}

fn unregister(pid: Option<u32>) {
    if let (Some(pid), Ok(mut running)) = (pid, RUNNING.lock()) {
        running.retain(|p| *p != pid);
    }
}

/// Sends SIGKILL to `pid` at once (not waiting for the runtime to run the watcher task).
fn kill_now(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Kills every plugin process still running; the binaries call this right before they exit.
pub fn kill_all() {
    let pids = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
    for pid in pids {
        kill_now(pid);
    }
}

/// Where the plugin's gRPC server listens, from its handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PluginAddress {
    /// A unix socket path (the only kind go-plugin uses outside Windows).
    Unix(PathBuf),
    /// `host:port` (go-plugin on Windows).
    Tcp(String),
}

/// A running plugin process: killed when dropped; its exit status is published.
pub(crate) struct PluginProcess {
    pub(crate) pid: Option<u32>,
    exited: watch::Receiver<Option<String>>,
    stop: Option<DropGuard>,
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        // Still ours and running: kill it now; the watcher task reaps it.
        if self.stop.is_some()
            && self.exit().is_none()
            && let Some(pid) = self.pid
        {
            kill_now(pid);
        }
    }
}

impl PluginProcess {
    /// Waits up to `grace` for the process to exit by itself, then kills it.
    pub(crate) async fn stop(mut self, grace: Duration) {
        let mut exited = self.exited.clone();
        let _ = tokio::time::timeout(grace, exited.wait_for(Option::is_some)).await;
        if let Some(guard) = self.stop.take() {
            let token = guard.disarm();
            token.cancel();
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), exited.wait_for(Option::is_some)).await;
    }

    /// How the process ended, waiting up to `wait` for it to end.
    pub(crate) async fn exited_within(&self, wait: Duration) -> Option<String> {
        let mut exited = self.exited.clone();
        let _ = tokio::time::timeout(wait, exited.wait_for(Option::is_some)).await;
        self.exit()
    }

    /// How the process ended, once it has.
    pub(crate) fn exit(&self) -> Option<String> {
        self.exited.borrow().clone()
    }
}

/// Parses go-plugin's handshake line, refusing other versions and protocols as its client does.
pub(crate) fn parse_handshake(line: &str) -> Result<PluginAddress, String> {
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    if parts.len() < 4 {
        return Err(format!("unrecognized remote plugin message: {line:?}"));
    }
    if parts[0] != CORE_PROTOCOL_VERSION {
        return Err(format!(
            "incompatible core API version with plugin: plugin version {}, ours {CORE_PROTOCOL_VERSION}",
            parts[0]
        ));
    }
    if parts[1] != APP_PROTOCOL_VERSION {
        return Err(format!(
            "incompatible plugin protocol version: plugin version {}, ours {APP_PROTOCOL_VERSION}",
            parts[1]
        ));
    }
    let protocol = parts.get(4).copied().unwrap_or("netrpc");
    if protocol != "grpc" {
        return Err(format!(
            "the plugin speaks protocol {protocol:?}; SPIRE plugins speak \"grpc\""
        ));
    }
    if parts.get(5).is_some_and(|cert| !cert.is_empty()) {
        return Err("the plugin asked for TLS (AutoMTLS), which SPIRE does not use".to_owned());
    }
    match parts[2] {
        "unix" => Ok(PluginAddress::Unix(PathBuf::from(parts[3]))),
        "tcp" => Ok(PluginAddress::Tcp(parts[3].to_owned())),
        other => Err(format!("unknown network type {other:?} in the handshake")),
    }
}

/// Starts `plugin` and waits up to `timeout` for its handshake line.
pub(crate) async fn start(
    plugin: &ExternalPlugin,
    path: &Path,
    timeout: Duration,
) -> Result<(PluginProcess, PluginAddress), PluginLoadError> {
    let fail = |reason: String| PluginLoadError::new(plugin, reason);
    let mut command = Command::new(path);
    command
        .args(&plugin.args)
        .env(&plugin.kind, &plugin.kind)
        .env("PLUGIN_MIN_PORT", "10000")
        .env("PLUGIN_MAX_PORT", "25000")
        .env("PLUGIN_PROTOCOL_VERSIONS", APP_PROTOCOL_VERSION)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", path.display())))?;
    let pid = child.id();
    register(pid);
    tracing::debug!(
        plugin_type = %plugin.kind,
        plugin_name = %plugin.name,
        path = %path.display(),
        pid,
        "Starting plugin process"
    );

    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    if let Some(stderr) = child.stderr.take() {
        let mut forwarder = super::hclog::Forwarder::new(&plugin.kind, &plugin.name, path);
        let tail = Arc::clone(&tail);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == STDERR_TAIL {
                        tail.remove(0);
                    }
                    tail.push(line.clone());
                }
                forwarder.forward(&line);
            }
        });
    }
    let Some(stdout) = child.stdout.take() else {
        unregister(pid);
        return Err(fail("the plugin's stdout could not be read".to_owned()));
    };
    let mut stdout = BufReader::new(stdout).lines();

    let handshake = tokio::select! {
        line = stdout.next_line() => line,
        status = child.wait() => {
            // A program that printed a line and exited at once may be seen exiting before
            // its line is read: the pipe still holds it, so the line decides (a non-plugin's
            // line is then named as such below).
            match tokio::time::timeout(Duration::from_secs(1), stdout.next_line()).await {
                Ok(Ok(Some(line))) => Ok(Some(line)),
                _ => {
                    // Let the stderr reader catch up so the reason can be shown.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let status = status.map(describe).unwrap_or_else(|e| e.to_string());
                    unregister(pid);
                    return Err(fail(exited_early(&plugin.kind, &status, &tail)));
                }
            }
        }
        () = tokio::time::sleep(timeout) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            unregister(pid);
            return Err(fail(format!(
                "timed out after {}s waiting for the plugin handshake on stdout; is {} a SPIRE plugin?",
                timeout.as_secs(),
                path.display()
            )));
        }
    };
    let line = match handshake {
        Ok(Some(line)) => line,
        Ok(None) | Err(_) => {
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let status = match status {
                Ok(Ok(status)) => describe(status),
                _ => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    "closed its stdout".to_owned()
                }
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            unregister(pid);
            return Err(fail(exited_early(&plugin.kind, &status, &tail)));
        }
    };
    let address = match parse_handshake(&line) {
        Ok(address) => address,
        Err(reason) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            unregister(pid);
            return Err(fail(format!(
                "{reason}; this usually means {} is not a SPIRE plugin",
                path.display()
            )));
        }
    };

    // Further stdout is not part of the protocol; keep reading it so the plugin never blocks.
    let (kind, name) = (plugin.kind.clone(), plugin.name.clone());
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            tracing::debug!(plugin_type = %kind, plugin_name = %name, "plugin stdout: {line}");
        }
    });

    let (exited_tx, exited) = watch::channel(None);
    let token = CancellationToken::new();
    tokio::spawn(watch_exit(
        pid,
        child,
        token.clone(),
        exited_tx,
        (plugin.kind.clone(), plugin.name.clone(), path.to_path_buf()),
    ));
    Ok((
        PluginProcess {
            pid,
            exited,
            stop: Some(token.drop_guard()),
        },
        address,
    ))
}

/// Waits for the plugin to exit (logging it as go-plugin's client does) or kills it when asked.
async fn watch_exit(
    pid: Option<u32>,
    mut child: Child,
    stop: CancellationToken,
    exited: watch::Sender<Option<String>>,
    who: (String, String, PathBuf),
) {
    let (kind, name, path) = who;
    let (status, asked) = tokio::select! {
        status = child.wait() => (status, false),
        () = stop.cancelled() => {
            let _ = child.start_kill();
            (child.wait().await, true)
        }
    };
    unregister(child.id().or(pid));
    let success = status.as_ref().is_ok_and(ExitStatus::success);
    let status = status.map(describe).unwrap_or_else(|e| e.to_string());
    let id = pid.map(|p| p.to_string()).unwrap_or_default();
    if asked {
        tracing::debug!(plugin_type = %kind, plugin_name = %name, external = true, plugin = %path.display(), id = %id, error = %status, "Plugin process stopped");
    } else if success {
        // go-plugin's client's line, with its fields: the binary's path and pid.
        tracing::info!(plugin_type = %kind, plugin_name = %name, external = true, plugin = %path.display(), id = %id, "plugin process exited");
    } else {
        tracing::error!(plugin_type = %kind, plugin_name = %name, external = true, plugin = %path.display(), id = %id, error = %status, "plugin process exited");
    }
    let _ = exited.send(Some(status));
}

/// How a process ended, worded as Go's `os.ProcessState` (what upstream's log shows):
/// `exit status 3`, `signal: killed`.
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    let Some(signal) = status.signal() else {
        return status.to_string();
    };
    let name = match signal {
        1 => "hangup".to_owned(),
        2 => "interrupt".to_owned(),
        3 => "quit".to_owned(),
        4 => "illegal instruction".to_owned(),
        5 => "trace/breakpoint trap".to_owned(),
        6 => "aborted".to_owned(),
        7 => "bus error".to_owned(),
        8 => "floating point exception".to_owned(),
        9 => "killed".to_owned(),
        10 => "user defined signal 1".to_owned(),
        11 => "segmentation fault".to_owned(),
        12 => "user defined signal 2".to_owned(),
        13 => "broken pipe".to_owned(),
        14 => "alarm clock".to_owned(),
        15 => "terminated".to_owned(),
        other => format!("signal {other}"),
    };
    if status.core_dumped() {
        format!("signal: {name} (core dumped)")
    } else {
        format!("signal: {name}")
    }
}

fn exited_early(kind: &str, status: &str, tail: &Mutex<Vec<String>>) -> String {
    let lines = tail.lock().map(|t| t.clone()).unwrap_or_default();
    let text: Vec<String> = lines
        .iter()
        .map(|l| super::hclog::parse_line(l).text)
        .collect();
    let mut reason = format!("plugin exited before completing the handshake ({status})");
    if !text.is_empty() {
        reason.push_str(&format!("; its stderr: {}", text.join(" / ")));
    }
    if text.iter().any(|l| l.contains("This binary is a plugin")) {
        reason.push_str(&format!(
            "; the binary refused the {kind} magic cookie, so it is a plugin of another type"
        ));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_plugin_handshake_line_gives_its_socket() {
        assert_eq!(
            parse_handshake("1|1|unix|/tmp/plugin123|grpc|\n"),
            Ok(PluginAddress::Unix(PathBuf::from("/tmp/plugin123")))
        );
        assert_eq!(
            parse_handshake("1|1|tcp|127.0.0.1:10000|grpc"),
            Ok(PluginAddress::Tcp("127.0.0.1:10000".into()))
        );
    }

    #[test]
    fn exits_are_worded_as_go_words_them() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(0)), "exit status 0");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal: killed");
        assert_eq!(describe(ExitStatus::from_raw(15)), "signal: terminated");
        assert_eq!(
            describe(ExitStatus::from_raw(6 | 0x80)),
            "signal: aborted (core dumped)"
        );
        assert_eq!(describe(ExitStatus::from_raw(40)), "signal: signal 40");
    }

    #[test]
    fn other_output_versions_and_protocols_are_refused() {
        assert!(parse_handshake("hello, I am not a plugin").is_err());
        assert!(parse_handshake("2|1|unix|/tmp/p|grpc|").is_err());
        assert!(parse_handshake("1|2|unix|/tmp/p|grpc|").is_err());
        assert!(parse_handshake("1|1|unix|/tmp/p|netrpc|").is_err());
        assert!(parse_handshake("1|1|unix|/tmp/p").is_err());
    }
}
