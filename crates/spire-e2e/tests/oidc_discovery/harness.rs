//! The harness of `oidc_discovery.rs`: an `oidc-discovery-provider` process (ours or
//! upstream's), one-shot HTTP requests over TCP, unix sockets and TLS, and the comparison of
//! two answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spire_e2e::pebble::{TEST_DOMAIN, https_get};
use spire_e2e::{eventually, free_ports};

/// Attestation, first syncs and process starts on two busy cores.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(90);

/// A running `oidc-discovery-provider` (ours or upstream's) on plain HTTP.
pub(crate) struct Provider {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) health_port: u16,
    pub(crate) log_path: PathBuf,
}

/// One HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Provider {
    /// Starts `program` in `dir/name` with `body` (sources and options) plus a plain-HTTP
    /// listener on 127.0.0.1 and health checks, and waits until it answers.
    pub(crate) fn start(program: &Path, dir: &Path, name: &str, body: &str) -> Self {
        let [port, health_port] = free_ports::<2>();
        Self::start_on(program, dir, name, body, port, health_port)
    }

    /// Like [`start`](Self::start) on the given ports.
    pub(crate) fn start_on(
        program: &Path,
        dir: &Path,
        name: &str,
        body: &str,
        port: u16,
        health_port: u16,
    ) -> Self {
        let listener = format!("insecure_addr = \"127.0.0.1:{port}\"");
        Self::start_with_listener(program, dir, name, &listener, body, port, health_port)
    }

    /// Starts with `listener` (the listener's config keys), which listens on `port`.
    pub(crate) fn start_with_listener(
        program: &Path,
        dir: &Path,
        name: &str,
        listener: &str,
        body: &str,
        port: u16,
        health_port: u16,
    ) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("oidc-discovery-provider.conf");
        let config = format!(
            "log_level = \"debug\"\nlog_requests = true\n{listener}\nhealth_checks {{\n \
             bind_port = {health_port}\n}}\n{body}\n"
        );
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.join("provider.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(program)
            .arg("-config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let mut provider = Self {
            child,
            port,
            health_port,
            log_path,
        };
        let start = Instant::now();
        let socket = listener
            .strip_prefix("listen_socket_path = \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .map(PathBuf::from);
        let listening = || match &socket {
            Some(path) => UnixStream::connect(path).is_ok(),
            None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        while !listening() {
            assert!(provider.running(), "{name} exited:\n{}", provider.log());
            assert!(
                start.elapsed() < READY_WAIT,
                "{name} does not listen on {port}:\n{}",
                provider.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        provider
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn get(&self, path: &str, host: &str) -> Answer {
        request(self.port, "GET", path, host)
    }

    pub(crate) fn health(&self, path: &str) -> u16 {
        request(self.health_port, "GET", path, "localhost").status
    }

    /// Waits until `/keys` answers 200 (the first poll succeeded).
    pub(crate) fn wait_keys(&self, what: &str) {
        self.wait_keys_at("/keys", what);
    }

    /// Waits until `/keys` answers 200 over HTTPS on port 443 with a certificate from `root`.
    pub(crate) fn wait_keys_over_tls(&self, root: &rustls::pki_types::CertificateDer<'static>) {
        eventually("keys over HTTPS", READY_WAIT, || {
            https_get(443, TEST_DOMAIN, std::slice::from_ref(root), "/keys")
                .is_ok_and(|answer| answer.status == 200)
        });
    }

    /// Waits until `keys_path` answers 200.
    pub(crate) fn wait_keys_at(&self, keys_path: &str, what: &str) {
        eventually(what, READY_WAIT, || {
            self.get(keys_path, "localhost").status == 200
        });
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot HTTP/1.1 request with the given Host header.
pub(crate) fn request(port: u16, method: &str, path: &str, host: &str) -> Answer {
    request_with(port, method, path, host, "")
}

/// Like [`request`] with more header lines (`extra`, each ending in CRLF).
pub(crate) fn request_with(port: u16, method: &str, path: &str, host: &str, extra: &str) -> Answer {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    request_over(stream, method, path, host, extra)
}

/// Like [`request`] over the unix socket at `socket`.
pub(crate) fn unix_request(socket: &Path, method: &str, path: &str, host: &str) -> Answer {
    let stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    request_over(stream, method, path, host, "")
}

pub(crate) fn request_over(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
) -> Answer {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: oidc-e2e\r\n{extra}Connection: \
         close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A JSON body with the `keys` array sorted by `kid`, so documents compare whatever order
/// each implementation lists keys in (upstream's workload_api and file sources take them
/// from a Go map).
pub(crate) fn normalised(body: &str) -> serde_json::Value {
    let mut value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    if let Some(keys) = value.get_mut("keys").and_then(|k| k.as_array_mut()) {
        keys.sort_by_key(|k| k["kid"].as_str().unwrap_or_default().to_owned());
    }
    value
}

/// Compares one request's answers from both providers: status, content type, redirect and
/// the body (as normalised JSON when it is a whole JSON document, as text otherwise: byte
/// ranges of the keys compare Go's formatting exactly).
pub(crate) fn assert_same(what: &str, ours: &Answer, upstream: &Answer) {
    assert_eq!(
        ours.status, upstream.status,
        "{what}: status differs\nours:\n{}\n{}\nupstream:\n{}\n{}",
        ours.headers, ours.body, upstream.headers, upstream.body
    );
    assert_eq!(
        ours.content_type, upstream.content_type,
        "{what}: content type differs"
    );
    assert_eq!(
        header_value(&ours.headers, "location"),
        header_value(&upstream.headers, "location"),
        "{what}: redirect differs"
    );
    if ours.content_type == "application/json" && ours.status == 200 {
        assert_eq!(
            normalised(&ours.body),
            normalised(&upstream.body),
            "{what}: documents differ\nours:\n{}\nupstream:\n{}",
            ours.body,
            upstream.body
        );
    } else {
        assert_eq!(ours.body, upstream.body, "{what}: bodies differ");
    }
}

/// The value of header `name` in `head`, if present.
pub(crate) fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The answer of [`https_get`] as an [`Answer`].
pub(crate) fn https_answer(
    port: u16,
    root: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> Answer {
    let answer = https_get(port, "localhost", std::slice::from_ref(root), path)
        .unwrap_or_else(|e| panic!("GET https://localhost:{port}{path}: {e}"));
    let content_type = answer
        .headers
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        status: answer.status,
        content_type,
        headers: answer.headers.clone(),
        body: answer.text(),
    }
}
