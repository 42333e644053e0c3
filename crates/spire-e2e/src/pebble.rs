//! Pebble v2.10.3, Let's Encrypt's test ACME server, for the tests of the bundle endpoint's
//! ACME certificates: [`Pebble::start`] runs it on free loopback ports with
//! `pebble-challtestsrv` as its DNS server (every name resolves to 127.0.0.1, so Pebble
//! validates tls-alpn-01 challenges on `127.0.0.1:<tls_port>`), really validating but at
//! once (`PEBBLE_VA_NOSLEEP=1`, `PEBBLE_VA_ALWAYS_VALID` unset).
//!
//! Both programs and Pebble's test CA come from `scripts/interop-deps.sh` (the test command
//! runs it), which names them in `PEBBLE`, `PEBBLE_CHALLTESTSRV` and `PEBBLE_CERTS_DIR` in
//! `target/interop-deps.env`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::{free_ports, interop_path, interop_program};

/// A name for the certificate: challtestsrv resolves it to 127.0.0.1 for Pebble (ACME wants
/// at least two labels, so `localhost` will not do).
pub const TEST_DOMAIN: &str = "bundle.spire-rs.test";

/// What Pebble's directory says its Terms of Service are.
pub const TERMS_OF_SERVICE: &str = "data:text/plain,Do%20what%20thou%20wilt";

/// Let's Encrypt's certificate lifetime, 90 days.
pub const LETS_ENCRYPT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long [`Pebble::start`] waits for a program to listen, and [`https_get`] for an answer.
const WAIT: Duration = Duration::from_secs(30);

/// How many sets of ports [`Pebble::start`] tries.
const PORT_ATTEMPTS: u32 = 5;

/// Pebble and the DNS server it validates through, on loopback ports of their own; both are
/// killed when dropped.
pub struct Pebble {
    /// Dropped (stopped) before the DNS server.
    pebble: Option<Process>,
    _dns: Process,
    /// The ACME directory, `https://127.0.0.1:<acme_port>/dir`.
    pub directory_url: String,
    management_port: u16,
}

impl Pebble {
    /// Starts Pebble with its ACME directory on a free port ([`directory_url`](Self::directory_url)
    /// says where), validating tls-alpn-01 challenges on `tls_port` of 127.0.0.1 (the port of
    /// the listener that answers them), issuing certificates valid for `validity` (whole
    /// seconds). Its configuration and logs are written into `dir`, named after the ACME port.
    pub fn start(dir: &Path, tls_port: u16, validity: Duration) -> Self {
        Self::start_with(dir, tls_port, None, validity)
    }

    /// Like [`start`](Self::start) with the ACME directory on `acme_port` (see
    /// [`directory_url`]), for a client configured before Pebble runs. `acme_port` must be
    /// free and differ from `tls_port`.
    pub fn start_on(dir: &Path, tls_port: u16, acme_port: u16, validity: Duration) -> Self {
        assert_ne!(tls_port, acme_port, "Pebble's ACME and tls-alpn-01 ports");
        Self::start_with(dir, tls_port, Some(acme_port), validity)
    }

    /// Starts Pebble and its DNS server on free ports (the ACME one `acme_port` when given),
    /// with other ports when another process took one before they bound it.
    fn start_with(dir: &Path, tls_port: u16, acme_port: Option<u16>, validity: Duration) -> Self {
        let mut attempt = 1;
        loop {
            let ports = loop {
                let [acme, dns, dns_management, management, http] = free_ports();
                let ports = Ports {
                    acme: acme_port.unwrap_or(acme),
                    dns,
                    dns_management,
                    management,
                    http,
                };
                let all = [acme, dns, dns_management, management, http];
                if !all.contains(&tls_port) && acme_port.is_none_or(|port| !all.contains(&port)) {
                    break ports;
                }
            };
            match Self::try_start(dir, tls_port, &ports, validity) {
                Ok(pebble) => return pebble,
                Err(PortTaken(log)) if attempt < PORT_ATTEMPTS => {
                    eprintln!(
                        "pebble: a port was taken before it was bound; trying others:\n{log}"
                    );
                    attempt += 1;
                }
                Err(PortTaken(log)) => panic!("pebble: ports taken {attempt} times:\n{log}"),
            }
        }
    }

    /// One start of both programs on `ports`; the log of the one that found a port taken.
    fn try_start(
        dir: &Path,
        tls_port: u16,
        ports: &Ports,
        validity: Duration,
    ) -> Result<Self, PortTaken> {
        let certs = interop_path("PEBBLE_CERTS_DIR");
        let mut dns = Command::new(interop_program("PEBBLE_CHALLTESTSRV"));
        dns.args(["-dnsserver", &format!("127.0.0.1:{}", ports.dns)])
            .args([
                "-management",
                &format!("127.0.0.1:{}", ports.dns_management),
            ])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""]);
        let mut dns = Process::spawn(dns, dir.join(format!("challtestsrv-{}.log", ports.acme)));
        dns.wait_for_port(ports.dns, "pebble-challtestsrv")?;
        dns.wait_for_port(
            ports.dns_management,
            "pebble-challtestsrv's management interface",
        )?;

        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", ports.acme),
                "managementListenAddress": format!("127.0.0.1:{}", ports.management),
                "certificate": certs.join("localhost/cert.pem"),
                "privateKey": certs.join("localhost/key.pem"),
                "httpPort": ports.http,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "keyAlgorithm": "ecdsa",
                "profiles": {
                    "default": {
                        "description": "the test's",
                        "validityPeriod": validity.as_secs()
                    }
                }
            }
        });
        let config_path = dir.join(format!("pebble-{}.json", ports.acme));
        std::fs::write(&config_path, config.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let mut pebble = Command::new(interop_program("PEBBLE"));
        pebble
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{}", ports.dns)])
            // Validate at once, but really validate.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env_remove("PEBBLE_VA_ALWAYS_VALID");
        let mut pebble = Process::spawn(pebble, dir.join(format!("pebble-{}.log", ports.acme)));
        pebble.wait_for_port(ports.acme, "pebble")?;
        pebble.wait_for_port(ports.management, "pebble's management interface")?;
        Ok(Self {
            pebble: Some(pebble),
            _dns: dns,
            directory_url: directory_url(ports.acme),
            management_port: ports.management,
        })
    }

    /// What Pebble printed so far (empty once stopped).
    pub fn log(&self) -> String {
        self.pebble.as_ref().map(Process::log).unwrap_or_default()
    }

    /// Stops Pebble (its DNS server keeps running): its directory no longer answers.
    pub fn stop(&mut self) {
        self.pebble = None;
    }

    /// The root Pebble's certificates chain to, from its management interface.
    pub fn issuing_root(&self) -> CertificateDer<'static> {
        self.management_certificate("/roots/0")
    }

    /// The intermediate CA that signs Pebble's certificates, from its management interface.
    pub fn intermediate(&self) -> CertificateDer<'static> {
        self.management_certificate("/intermediates/0")
    }

    /// The one PEM certificate Pebble's management interface answers `path` with.
    fn management_certificate(&self, path: &str) -> CertificateDer<'static> {
        let minica = CertificateDer::from_pem_file(minica_path())
            .unwrap_or_else(|e| panic!("read Pebble's test CA: {e}"));
        let response = https_get(self.management_port, "127.0.0.1", &[minica], path)
            .unwrap_or_else(|e| panic!("GET {path} from Pebble's management interface: {e}"));
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        let certificates: Vec<_> = CertificateDer::pem_slice_iter(&response.body)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", response.text()));
        match <[_; 1]>::try_from(certificates) {
            Ok([certificate]) => certificate,
            Err(all) => panic!("GET {path}: {} certificates, not one", all.len()),
        }
    }
}

/// The ACME directory URL of a Pebble started on `acme_port`, known before it starts.
pub fn directory_url(acme_port: u16) -> String {
    format!("https://127.0.0.1:{acme_port}/dir")
}

/// Pebble's test CA (`pebble.minica.pem`), which signs the certificate of its ACME directory
/// and management interface (not the certificates it issues): a client of the directory
/// trusts it, e.g. a `spire-server` through `SSL_CERT_FILE`.
pub fn minica_path() -> PathBuf {
    interop_path("PEBBLE_CERTS_DIR").join("pebble.minica.pem")
}

/// The contents of [`minica_path`].
pub fn minica_pem() -> String {
    let path = minica_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A rustls client configuration (aws-lc-rs, ALPN `http/1.1`) trusting only `roots`.
pub fn tls_client_config(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .unwrap_or_else(|e| panic!("not a usable root certificate: {e}"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("TLS client configuration: {e}"))
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP/1.1 answer read by [`https_get`].
#[derive(Debug)]
pub struct HttpsResponse {
    /// The status code.
    pub status: u16,
    /// The header lines, as sent.
    pub headers: String,
    /// The body (not chunked: [`https_get`] refuses chunked answers).
    pub body: Vec<u8>,
    /// The certificate chain the server presented, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

impl HttpsResponse {
    /// The body as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One `GET path` over HTTPS to `127.0.0.1:port` with SNI `server_name` (an IP address sends
/// none, and is what the certificate must then be for), trusting only `roots`. A handshake
/// or connection failure is the error, as text (`received fatal alert: ...`, say).
pub fn https_get(
    port: u16,
    server_name: &str,
    roots: &[CertificateDer<'static>],
    path: &str,
) -> Result<HttpsResponse, String> {
    let name = ServerName::try_from(server_name.to_owned())
        .unwrap_or_else(|e| panic!("{server_name:?} is not a server name: {e}"));
    let connection =
        rustls::ClientConnection::new(tls_client_config(roots), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify after its answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let chain = tls
        .conn
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!("not an HTTP answer: {text}"));
    };
    let headers = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status code: {text}"))?;
    assert!(
        !headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {path}: a chunked answer, which this client does not read: {text}"
    );
    Ok(HttpsResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
        chain,
    })
}

/// The ports of one [`Pebble::start`] attempt.
struct Ports {
    /// The ACME directory's.
    acme: u16,
    /// challtestsrv's DNS server (UDP and TCP).
    dns: u16,
    /// challtestsrv's management interface.
    dns_management: u16,
    /// Pebble's management interface.
    management: u16,
    /// Where Pebble would validate http-01 challenges (never asked for here).
    http: u16,
}

/// A process exited because one of its ports was taken: its log.
struct PortTaken(String);

/// A child process killed when dropped, its output in a log file.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let file_err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("clone {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until something accepts TCP connections on `port` of 127.0.0.1; the process's
    /// log when it exited because a port was taken.
    fn wait_for_port(&mut self, port: u16, what: &str) -> Result<(), PortTaken> {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(PortTaken(log));
                }
                panic!("{what} exited with {status}; its log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "{what} does not listen on 127.0.0.1:{port}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
