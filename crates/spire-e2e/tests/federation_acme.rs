//! The bundle endpoint's ACME certificate end to end: the real `spire-server` with
//! `profile "https_web" { acme { ... } }` (and upstream's deprecated `acme` block directly
//! in `bundle_endpoint`) gets a certificate for `bundle.spire-rs.test` from Pebble, which
//! really validates the tls-alpn-01 challenge on the bundle endpoint's own port, and a client
//! trusting only Pebble's issuing root fetches the trust domain's bundle there. Without
//! `tos_accepted` nothing is served; after a restart with Pebble gone the cached certificate
//! from `<data_dir>/bundle-acme` is.
//!
//! The server trusts Pebble's HTTPS directory through `SSL_CERT_FILE`, as an operator would
//! point it at a private ACME CA. Pebble comes from `scripts/interop-deps.sh` (the test
//! command runs it and sources `target/interop-deps.env`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use spire_e2e::pebble::{
    HttpsResponse, LETS_ENCRYPT_VALIDITY, Pebble, TERMS_OF_SERVICE, TEST_DOMAIN, https_get,
    minica_path,
};
use spire_e2e::{ServerProcess, binary, free_port, with_ssl_cert_file};

/// The bundle endpoint's `refresh_hint`, and what the document must say (in seconds).
const REFRESH_HINT: (&str, u64) = ("7m", 420);

/// Longest wait for the first certificate: the server's first attempt comes at once and
/// Pebble issues in well under a second, but it rejects 5% of nonces (a retry after 1 s).
const CERTIFICATE_WAIT: Duration = Duration::from_secs(60);

/// Where the `acme` block goes in `federation { bundle_endpoint { } }`.
enum AcmeForm {
    /// `profile "https_web" { acme { ... } }`.
    Profile,
    /// `acme { ... }` directly in `bundle_endpoint`, deprecated upstream.
    Deprecated,
}

/// A server whose bundle endpoint gets its certificate from its own Pebble.
struct AcmeServer {
    server: ServerProcess,
    pebble: Pebble,
    /// The bundle endpoint's port, where Pebble validates tls-alpn-01 challenges.
    bundle_port: u16,
    /// Pebble's issuing root, the only root the test's client trusts.
    root: CertificateDer<'static>,
    /// Pebble's intermediate CA, kept for when Pebble is stopped.
    intermediate: CertificateDer<'static>,
    dir: PathBuf,
}

impl AcmeServer {
    fn start(dir: &Path, form: AcmeForm, tos_accepted: bool) -> Self {
        let bundle_port = free_port();
        let pebble = Pebble::start(dir, bundle_port, LETS_ENCRYPT_VALIDITY);
        let root = pebble.issuing_root();
        let intermediate = pebble.intermediate();
        let acme = format!(
            "acme {{\n directory_url = \"{}\"\n domain_name = \"{TEST_DOMAIN}\"\n \
             email = \"federation-admin@spire-rs.test\"\n tos_accepted = {tos_accepted}\n }}",
            pebble.directory_url
        );
        let acme = match form {
            AcmeForm::Profile => format!("profile \"https_web\" {{\n {acme}\n }}"),
            AcmeForm::Deprecated => acme,
        };
        let federation = format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {bundle_port}\n \
             refresh_hint = \"{}\"\n {acme}\n }}\n }}",
            REFRESH_HINT.0
        );
        let program = with_ssl_cert_file(dir, &binary("spire-server"), &minica_path());
        let server = ServerProcess::start_program(&program, dir, &federation);
        Self {
            server,
            pebble,
            bundle_port,
            root,
            intermediate,
            dir: dir.to_path_buf(),
        }
    }

    /// `GET /` from the bundle endpoint with SNI `server_name`, trusting only Pebble's root.
    fn get(&self, server_name: &str) -> Result<HttpsResponse, String> {
        https_get(
            self.bundle_port,
            server_name,
            std::slice::from_ref(&self.root),
            "/",
        )
    }

    /// [`get`](Self::get) until the endpoint has a certificate to present.
    fn wait_served(&self) -> HttpsResponse {
        let start = Instant::now();
        loop {
            match self.get(TEST_DOMAIN) {
                Ok(response) => return response,
                Err(e) => assert!(
                    start.elapsed() < CERTIFICATE_WAIT,
                    "no certificate on the bundle endpoint after {CERTIFICATE_WAIT:?} ({e})\n\
                     server log:\n{}\npebble log:\n{}",
                    self.server.log(),
                    self.pebble.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the server has logged `line`.
    fn wait_logged(&self, line: &str) {
        let start = Instant::now();
        while !self.server.log().contains(line) {
            assert!(
                start.elapsed() < CERTIFICATE_WAIT,
                "the server never logged {line:?}:\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cached certificate chain, `<data_dir>/bundle-acme/<domain>`.
    fn cached_chain(&self) -> Vec<CertificateDer<'static>> {
        let path = self.dir.join("data/bundle-acme").join(TEST_DOMAIN);
        CertificateDer::pem_file_iter(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Checks `response` is the trust domain's bundle as `spire-server bundle show` has it,
    /// with the configured refresh hint, presented with a Pebble certificate for the domain.
    fn check_bundle_answer(&self, response: &HttpsResponse) {
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(
            response
                .headers
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{}",
            response.headers
        );
        let document: serde_json::Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()));
        assert_eq!(
            document["spiffe_refresh_hint"].as_u64(),
            Some(REFRESH_HINT.1),
            "{document}"
        );
        let served: Vec<Vec<u8>> = document["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("no keys: {document}"))
            .iter()
            .filter(|key| key["use"] == "x509-svid")
            .map(|key| {
                let x5c = key["x5c"].as_array().unwrap();
                assert_eq!(x5c.len(), 1, "{key}");
                base64::engine::general_purpose::STANDARD
                    .decode(x5c[0].as_str().unwrap())
                    .unwrap()
            })
            .collect();
        let shown = self.server.cli_ok(&["bundle", "show"]);
        let authorities: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(shown.as_bytes())
            .map(|cert| cert.unwrap().to_vec())
            .collect();
        assert!(!authorities.is_empty(), "{shown}");
        assert_eq!(served, authorities, "{document}\nbundle show:\n{shown}");

        // The handshake verified the chain against Pebble's issuing root alone and the leaf
        // against the name sent; the chain goes through Pebble's intermediate.
        assert!(response.chain.len() >= 2, "{:?}", response.chain);
        assert_eq!(response.chain[1], self.intermediate);
    }
}

#[test]
fn the_acme_profile_serves_the_bundle_with_a_pebble_certificate_cached_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut acme = AcmeServer::start(dir.path(), AcmeForm::Profile, true);
    let started = Instant::now();
    let response = acme.wait_served();
    println!(
        "federation acme: the bundle endpoint served a Pebble certificate {:.1} s after the \
         server was healthy",
        started.elapsed().as_secs_f64()
    );
    acme.check_bundle_answer(&response);
    let leaf = response.chain[0].clone();
    assert_eq!(acme.cached_chain()[0], leaf, "the certificate is cached");
    // Only the domain gets it: a client sending no name gets a handshake failure.
    let error = acme.get("127.0.0.1").unwrap_err();
    assert!(error.contains("alert"), "{error}");

    // Without Pebble, a restarted server serves the cached certificate.
    acme.pebble.stop();
    let before_restart = acme.server.log().len();
    acme.server.start_again();
    let response = acme.wait_served();
    assert_eq!(response.chain[0], leaf);
    acme.check_bundle_answer(&response);
    let log = acme.server.log();
    let after_restart = &log[before_restart..];
    assert!(
        after_restart.contains("Using the cached ACME certificate"),
        "{after_restart}"
    );
    assert_eq!(
        log.matches("Obtained a certificate from the ACME server")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn the_deprecated_acme_block_in_bundle_endpoint_works_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let acme = AcmeServer::start(dir.path(), AcmeForm::Deprecated, true);
    let log = acme.server.log();
    assert!(
        log.contains(
            "ACME configuration within the bundle_endpoint is deprecated. Please use ACME \
             configuration as part of the https_web profile instead."
        ),
        "{log}"
    );
    let response = acme.wait_served();
    acme.check_bundle_answer(&response);
}

#[test]
fn without_tos_accepted_the_server_runs_but_serves_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let acme = AcmeServer::start(dir.path(), AcmeForm::Profile, false);
    // Said once the directory was read (over HTTPS trusted through SSL_CERT_FILE).
    acme.wait_logged("No ACME certificate will be obtained until the configuration changes");
    let log = acme.server.log();
    assert!(
        log.contains("ACME Terms of Service have not been accepted")
            && log.contains(TERMS_OF_SERVICE),
        "{log}"
    );
    let error = acme.get(TEST_DOMAIN).unwrap_err();
    assert!(error.contains("alert"), "{error}");
    assert!(
        !dir.path()
            .join("data/bundle-acme")
            .join(TEST_DOMAIN)
            .exists(),
        "no certificate cached"
    );
    // The rest of the server is unaffected.
    acme.server.cli_ok(&["healthcheck"]);
}
