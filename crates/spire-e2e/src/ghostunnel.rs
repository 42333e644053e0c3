//! ghostunnel v1.8.4 (built by `scripts/interop-deps.sh`, named by `GHOSTUNNEL`): a real
//! mTLS proxy built on go-spiffe that takes its identity from a Workload API and authorises
//! peers by SPIFFE ID, plus the echo backend and round trips the tests drive through it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, interop_program};

/// A running ghostunnel; killed when dropped.
pub struct Ghostunnel {
    child: Child,
    log_path: PathBuf,
    /// Where it listens for plain connections (client mode) or TLS ones (server mode).
    pub port: u16,
}

impl Ghostunnel {
    /// `ghostunnel <mode> --listen 127.0.0.1:<free port> --target 127.0.0.1:<target>` with
    /// its identity from the agent at `agent_socket`, plus `authz` flags.
    pub fn start(
        dir: &Path,
        name: &str,
        mode: &str,
        target: u16,
        agent_socket: &Path,
        authz: &[&str],
    ) -> Self {
        let port = free_port();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(interop_program("GHOSTUNNEL"))
            .arg(mode)
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--target=127.0.0.1:{target}"))
            .arg(format!(
                "--use-workload-api-addr=unix://{}",
                agent_socket.display()
            ))
            .args(authz)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ghostunnel: {e}"));
        Self {
            child,
            log_path,
            port,
        }
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Ghostunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An echo backend behind the server-side ghostunnel, on a port it already holds.
pub fn echo_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// One round trip of `message` through the ghostunnel listening on `port`: what came back,
/// or why nothing did (a refused peer shows as a closed connection).
pub fn round_trip(port: u16, message: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut echoed = vec![0u8; message.len()];
    stream
        .read_exact(&mut echoed)
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&echoed).into_owned())
}

/// Retries a round trip until it succeeds; fails with the ghostunnel logs after `timeout`.
pub fn round_trip_eventually(
    port: u16,
    message: &str,
    timeout: Duration,
    logs: &[&Ghostunnel],
) -> String {
    let start = Instant::now();
    loop {
        match round_trip(port, message) {
            Ok(echoed) => return echoed,
            Err(e) if start.elapsed() > timeout => {
                let logs: Vec<String> = logs.iter().map(|g| g.log()).collect();
                panic!(
                    "no round trip within {timeout:?}: {e}\n{}",
                    logs.join("\n----\n")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
