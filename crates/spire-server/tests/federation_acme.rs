//! The federation bundle endpoint's ACME certificates (`https_web` profile) against a real
//! Pebble, Let's Encrypt's test ACME server: an [`AcmeManager`] behind a rustls listener on
//! 127.0.0.1 gets its certificate through a tls-alpn-01 challenge Pebble really validates
//! (on that listener, `PEBBLE_VA_ALWAYS_VALID` unset), serves it only for its domain, reuses
//! it from the cache without asking Pebble again, refuses Terms of Service it was not told to
//! accept, and retries until an ACME server that was away comes back.
//!
//! Pebble and `pebble-challtestsrv`, the DNS server that resolves the domain to 127.0.0.1
//! for it, run through [`spire_e2e::pebble`] (they come from `scripts/interop-deps.sh`,
//! named in `target/interop-deps.env`). `spire-e2e`'s `tests/federation_acme.rs` does the
//! same with the real `spire-server` binary.

#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test: failing loudly with the logs is its whole job"
)]

use std::net::TcpListener as StdTcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use spire_e2e::free_port;
use spire_e2e::pebble::{
    LETS_ENCRYPT_VALIDITY, Pebble, TERMS_OF_SERVICE, TEST_DOMAIN as DOMAIN, directory_url,
    minica_pem, tls_client_config,
};
use spire_server::federation::acme::{
    ACME_TLS_ALPN_PROTOCOL, AcmeConfig, AcmeError, AcmeManager, CACHE_DIR_NAME,
    is_challenge_connection,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

/// Longest wait for a certificate (Pebble issues in well under a second).
const OBTAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A handshake seen by the test listener: the SNI and the negotiated ALPN protocol.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<Vec<u8>>)>>>;

/// The bundle endpoint stand-in: a rustls listener on 127.0.0.1 with the manager's server
/// configuration that records every completed handshake, closes ACME validations and answers
/// anything else with one HTTP response.
struct Endpoint {
    port: u16,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Binds the port now (Pebble's configuration needs it before the manager exists).
    fn bind() -> StdTcpListener {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    }

    fn serve(listener: StdTcpListener, manager: &Arc<AcmeManager>) -> Self {
        let port = listener.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(manager.server_config().unwrap()));
        let seen = Seen::default();
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, connection) = tls.get_ref();
                    let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
                    let challenge = is_challenge_connection(alpn.as_deref());
                    let sni = connection.server_name().map(str::to_owned);
                    recorded.lock().unwrap().push((sni, alpn));
                    if !challenge {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { port, seen, task }
    }

    /// Whether an ACME server completed a tls-alpn-01 handshake for `DOMAIN` here.
    fn validated(&self) -> bool {
        self.seen.lock().unwrap().iter().any(|(sni, alpn)| {
            sni.as_deref() == Some(DOMAIN) && alpn.as_deref() == Some(ACME_TLS_ALPN_PROTOCOL)
        })
    }

    /// A client handshake with SNI `server_name` (an IP address sends none), trusting only
    /// `root`: the chain the endpoint presented, or the client's error.
    async fn connect(
        &self,
        server_name: &str,
        root: &CertificateDer<'static>,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        let connector =
            tokio_rustls::TlsConnector::from(tls_client_config(std::slice::from_ref(root)));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        let _ = tls.read_to_end(&mut body).await;
        assert!(body.ends_with(b"ok"), "{}", String::from_utf8_lossy(&body));
        Ok(tls.get_ref().1.peer_certificates().unwrap().to_vec())
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Log lines of the manager, captured for the test's own thread (the tests run on
/// current-thread runtimes, so every task of theirs logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

fn config(directory_url: &str, cache_dir: &Path, tos_accepted: bool) -> AcmeConfig {
    AcmeConfig {
        directory_url: directory_url.to_owned(),
        domain_name: DOMAIN.to_owned(),
        email: "federation-admin@spire-rs.test".to_owned(),
        tos_accepted,
        cache_dir: cache_dir.to_path_buf(),
        extra_root_cas_pem: Some(minica_pem()),
    }
}

/// Waits until `manager` serves a certificate; the time it took.
async fn wait_for_certificate(manager: &AcmeManager, pebble: &Pebble, logs: &Logs) -> Duration {
    let started = Instant::now();
    while manager.certificate().is_none() {
        assert!(
            started.elapsed() < OBTAIN_TIMEOUT,
            "no certificate after {OBTAIN_TIMEOUT:?}\nmanager log:\n{}\npebble log:\n{}",
            logs.text(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn leaf_dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn a_validated_certificate_is_served_for_the_domain_only_and_reused_from_the_cache() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join(CACHE_DIR_NAME);
    let listener = Endpoint::bind();
    let tls_port = listener.local_addr().unwrap().port();
    let mut pebble = Pebble::start(dir.path(), tls_port, LETS_ENCRYPT_VALIDITY);

    let manager = AcmeManager::new(config(&pebble.directory_url, &cache_dir, true)).unwrap();
    assert!(manager.certificate().is_none(), "nothing cached yet");
    let endpoint = Endpoint::serve(listener, &manager);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(manager.clone().run(cancel.clone()));
    let took = wait_for_certificate(&manager, &pebble, &logs).await;
    eprintln!("certificate obtained from Pebble in {took:?}");

    // Pebble's validation authority connected to our listener with acme-tls/1 and accepted
    // the challenge certificate it got there.
    assert!(
        endpoint.validated(),
        "no tls-alpn-01 handshake reached the listener: {:?}",
        endpoint.seen.lock().unwrap()
    );
    let pebble_log = pebble.log();
    assert!(
        !pebble_log.contains("always returns valid"),
        "Pebble must really validate:\n{pebble_log}"
    );

    // A client trusting only Pebble's issuing root gets a chain for the domain.
    let root = pebble.issuing_root();
    let chain = endpoint.connect(DOMAIN, &root).await.unwrap();
    let leaf = manager.certificate().unwrap();
    assert_eq!(chain[0], leaf);
    assert_eq!(leaf_dns_names(&leaf), [DOMAIN]);
    assert!(
        chain.len() >= 2,
        "leaf and Pebble's intermediate: {}",
        chain.len()
    );

    // Other names, and no name at all, get no certificate.
    let error = endpoint
        .connect("other.spire-rs.test", &root)
        .await
        .unwrap_err();
    assert!(error.contains("alert"), "{error}");
    let error = endpoint.connect("127.0.0.1", &root).await.unwrap_err();
    assert!(error.contains("alert"), "{error}");

    // The cache: the chain under the domain's name, its key and the account, all private.
    for file in [DOMAIN, &format!("{DOMAIN}+key"), "acme_account.json"] {
        assert_eq!(mode(&cache_dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&cache_dir), 0o700);

    // Stop everything, Pebble included: a new manager on the same cache serves the same
    // certificate at once, and its attempt takes the cache without asking anyone.
    cancel.cancel();
    running.await.unwrap();
    drop(endpoint);
    pebble.stop();
    let logged_before_restart = logs.text().len();
    let restarted = AcmeManager::new(config(&pebble.directory_url, &cache_dir, true)).unwrap();
    assert_eq!(restarted.certificate().as_ref(), Some(&leaf));
    restarted.obtain_certificate().await.unwrap();
    let listener = Endpoint::bind();
    let endpoint = Endpoint::serve(listener, &restarted);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(restarted.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let chain = endpoint.connect(DOMAIN, &root).await.unwrap();
    assert_eq!(chain[0], leaf);
    cancel.cancel();
    running.await.unwrap();
    let text = logs.text();
    assert_eq!(
        text.matches("Obtained a certificate from the ACME server")
            .count(),
        1,
        "{text}"
    );
    let after_restart = &text[logged_before_restart..];
    assert!(
        after_restart.contains("Using the cached ACME certificate"),
        "{after_restart}"
    );
    assert!(
        !after_restart.contains("Could not obtain"),
        "{after_restart}"
    );
}

#[tokio::test]
async fn no_certificate_unless_the_terms_of_service_are_accepted() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join(CACHE_DIR_NAME);
    let listener = Endpoint::bind();
    let pebble = Pebble::start(
        dir.path(),
        listener.local_addr().unwrap().port(),
        LETS_ENCRYPT_VALIDITY,
    );

    let manager = AcmeManager::new(config(&pebble.directory_url, &cache_dir, false)).unwrap();
    let error = manager.obtain_certificate().await.unwrap_err();
    match &error {
        AcmeError::TermsOfServiceNotAccepted {
            directory_url,
            tos_url,
        } => {
            assert_eq!(directory_url, &pebble.directory_url);
            assert_eq!(tos_url, TERMS_OF_SERVICE);
        }
        other => panic!("expected the Terms of Service refusal, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("tos_accepted = true"), "{message}");
    assert!(!cache_dir.join("acme_account.json").exists(), "no account");

    // The run loop says so once and stops trying; the endpoint has nothing to serve.
    let endpoint = Endpoint::serve(listener, &manager);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(manager.clone().run(cancel.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs
        .text()
        .contains("No ACME certificate will be obtained until the configuration changes")
    {
        assert!(Instant::now() < deadline, "{}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = logs.text();
    assert!(
        text.contains("ACME Terms of Service have not been accepted"),
        "{text}"
    );
    assert!(text.contains(TERMS_OF_SERVICE), "{text}");
    assert!(manager.certificate().is_none());
    let root = pebble.issuing_root();
    assert!(endpoint.connect(DOMAIN, &root).await.is_err());
    assert!(!endpoint.validated());
    cancel.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn the_manager_retries_until_the_acme_server_is_back() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join(CACHE_DIR_NAME);
    let listener = Endpoint::bind();
    let tls_port = listener.local_addr().unwrap().port();
    let acme_port = free_port();
    let url = directory_url(acme_port);

    let manager = AcmeManager::new(config(&url, &cache_dir, true)).unwrap();
    let endpoint = Endpoint::serve(listener, &manager);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(manager.clone().run(cancel.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs.text().contains("Could not obtain an ACME certificate") {
        assert!(Instant::now() < deadline, "{}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = logs.text();
    assert!(
        text.contains(&url),
        "the warning names the directory: {text}"
    );
    assert!(text.contains("retry_in"), "{text}");

    let pebble = Pebble::start_on(dir.path(), tls_port, acme_port, LETS_ENCRYPT_VALIDITY);
    let took = wait_for_certificate(&manager, &pebble, &logs).await;
    eprintln!("certificate obtained {took:?} after Pebble came back");
    assert!(endpoint.validated());
    let root = pebble.issuing_root();
    let chain = endpoint.connect(DOMAIN, &root).await.unwrap();
    assert_eq!(leaf_dns_names(&chain[0]), [DOMAIN]);
    cancel.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn a_challenge_nobody_answers_is_not_validated() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let dir = tempfile::tempdir().unwrap();
    // Pebble validates on a port where nothing listens: the manager's challenge certificate
    // is never seen, so there must be no certificate.
    let nobody = free_port();
    let pebble = Pebble::start(dir.path(), nobody, LETS_ENCRYPT_VALIDITY);
    let manager = AcmeManager::new(config(
        &pebble.directory_url,
        &dir.path().join(CACHE_DIR_NAME),
        true,
    ))
    .unwrap();
    // Pebble rejects 5% of nonces; instant-acme retries each request twice, and a rarer
    // streak is a failed attempt the run loop would retry too.
    let mut attempts = 0;
    let error = loop {
        attempts += 1;
        match manager.obtain_certificate().await {
            Err(AcmeError::Server { message, .. })
                if message.contains("badNonce") && attempts < 3 => {}
            result => break result.unwrap_err(),
        }
    };
    eprintln!("unanswered challenge: {error}");
    match &error {
        AcmeError::Challenge { domain, detail, .. } => {
            assert_eq!(domain, DOMAIN);
            assert!(
                detail.contains(&format!("127.0.0.1:{nobody}")),
                "Pebble's reason: {detail}"
            );
        }
        other => panic!(
            "expected a failed validation, got {other:?}\n{}",
            pebble.log()
        ),
    }
    assert!(error.to_string().contains("tls-alpn-01"), "{error}");
    assert!(manager.certificate().is_none());
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_at_two_thirds_of_its_lifetime() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join(CACHE_DIR_NAME);
    let listener = Endpoint::bind();
    let tls_port = listener.local_addr().unwrap().port();
    // 12 s certificates: renewed about 7 s after they start, 4 s before they end.
    let pebble = Pebble::start(dir.path(), tls_port, Duration::from_secs(12));
    let manager = AcmeManager::new(config(&pebble.directory_url, &cache_dir, true)).unwrap();
    let endpoint = Endpoint::serve(listener, &manager);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(manager.clone().run(cancel.clone()));
    wait_for_certificate(&manager, &pebble, &logs).await;
    let first = manager.certificate().unwrap();
    let (first_start, first_end) = validity(&first);

    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let current = manager.certificate().unwrap();
        if current != first {
            break current;
        }
        assert!(Instant::now() < deadline, "not renewed\n{}", logs.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let renewed_at = unix_now();
    assert!(
        renewed_at < first_end,
        "renewed at {renewed_at}, after the first certificate ended at {first_end}"
    );
    assert!(
        renewed_at >= first_start + 6,
        "renewed at {renewed_at}, too early for one that started at {first_start}"
    );
    let (second_start, _) = validity(&second);
    assert!(second_start >= first_start);
    let root = pebble.issuing_root();
    let chain = endpoint.connect(DOMAIN, &root).await.unwrap();
    assert_eq!(
        chain[0], second,
        "the endpoint serves the renewed certificate"
    );
    let on_disk = std::fs::read(cache_dir.join(DOMAIN)).unwrap();
    let cached = CertificateDer::pem_slice_iter(&on_disk)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(cached, second, "and caches it");
    cancel.cancel();
    running.await.unwrap();
}

/// A certificate's notBefore and notAfter, in Unix seconds.
fn validity(der: &CertificateDer<'_>) -> (i64, i64) {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}
