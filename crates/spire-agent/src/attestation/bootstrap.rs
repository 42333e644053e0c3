//! Which bundle the agent trusts before it has talked to the server: the bundle kept in
//! `data_dir` from a previous run wins; otherwise `trust_bundle_path`, or
//! `trust_bundle_url` downloaded now (in `trust_bundle_format`, optionally through
//! `trust_bundle_unix_socket`), or the trust domain's bundle from another agent's Workload
//! API (`trust_bundle_spiffe_workload_api`), or, with `insecure_bootstrap`, none at all for
//! the first attestation (as upstream).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spire_core::spiffe_id::TrustDomain;

use super::AttestError;
use crate::client::ServerTrust;
use crate::config::{BootstrapBundle, TrustBundleFormat, parse_bootstrap_bundle};
use spire_common::http_get;

/// How long connecting, sending the request and reading the whole bundle may take; a
/// bundle server that hangs must not hang the agent's start forever.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the other agent's Workload API has to answer, as upstream's.
const WORKLOAD_API_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest bundle body accepted; real bundles are a few kilobytes.
const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// Decides how the agent trusts the server: `stored` (the bundle in `data_dir`) when
/// present, else the configured source, downloading `trust_bundle_url` when that is the
/// source. Fails with a message naming the setting to fix.
pub async fn bootstrap_trust(
    stored: Option<Vec<Vec<u8>>>,
    bootstrap: &BootstrapBundle,
    trust_domain: &TrustDomain,
) -> Result<ServerTrust, AttestError> {
    if let Some(roots) = stored.filter(|r| !r.is_empty()) {
        return Ok(ServerTrust::Bundle(roots));
    }
    match bootstrap {
        BootstrapBundle::Insecure => Ok(ServerTrust::InsecureBootstrap),
        BootstrapBundle::Path { path, .. } => {
            let roots = bootstrap
                .read_file(trust_domain)
                .unwrap_or_else(|| Err("no bundle file".to_owned()))
                .map_err(|e| {
                    AttestError::Bootstrap(format!(
                        "agent.trust_bundle_path {}: {e}",
                        path.display()
                    ))
                })?;
            Ok(ServerTrust::Bundle(roots))
        }
        BootstrapBundle::Url {
            url,
            format,
            unix_socket,
        } => {
            let roots =
                download_trust_bundle(url, unix_socket.as_deref(), *format, trust_domain).await?;
            Ok(ServerTrust::Bundle(roots))
        }
        BootstrapBundle::WorkloadApi {
            socket_path,
            address,
        } => {
            let roots = fetch_workload_api_bundle(socket_path, address, trust_domain).await?;
            Ok(ServerTrust::Bundle(roots))
        }
    }
}

/// The X.509 authorities of `trust_domain` from the Workload API at `socket_path`, as
/// upstream's `fetchTrustBundleFromWorkloadAPI` (one FetchX509Bundles answer).
async fn fetch_workload_api_bundle(
    socket_path: &Path,
    address: &str,
    trust_domain: &TrustDomain,
) -> Result<Vec<Vec<u8>>, AttestError> {
    use spire_proto::workload as wl;
    let fetch = async {
        let mut client = crate::cli::client::workload_client(socket_path)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = client
            .fetch_x509_bundles(wl::X509BundlesRequest {})
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        stream
            .message()
            .await
            .map_err(|s| s.message().to_owned())?
            .ok_or_else(|| "the Workload API closed the stream without an answer".to_owned())
    };
    let response = tokio::time::timeout(WORKLOAD_API_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} seconds",
                WORKLOAD_API_TIMEOUT.as_secs()
            ))
        })
        .map_err(|e| {
            AttestError::Bootstrap(format!(
                "unable to fetch trust bundle from SPIFFE Workload API {address}: {e}"
            ))
        })?;
    let bundle = response
        .bundles
        .get(&trust_domain.id_string())
        .filter(|der| !der.is_empty())
        .ok_or_else(|| {
            AttestError::Bootstrap(format!(
                "SPIFFE Workload API {address} did not provide a trust bundle for trust domain \"{}\"",
                trust_domain.name()
            ))
        })?;
    spire_core::x509::parse_certificates(bundle).map_err(|e| {
        AttestError::Bootstrap(format!(
            "SPIFFE Workload API {address} sent an unreadable bundle for \"{}\": {e}",
            trust_domain.name()
        ))
    })
}

/// Downloads the bootstrap bundle with an HTTP GET of `url` and returns its X.509
/// authorities (DER), as upstream's `downloadTrustBundle`: any status but 200 is an error
/// naming it. With `unix_socket` the request goes through that socket instead of TCP;
/// `https` URLs are verified against the system's root certificates (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured). The config only lets `https` through over TCP.
pub async fn download_trust_bundle(
    url: &str,
    unix_socket: Option<&Path>,
    format: TrustBundleFormat,
    trust_domain: &TrustDomain,
) -> Result<Vec<Vec<u8>>, AttestError> {
    let body = tokio::time::timeout(DOWNLOAD_TIMEOUT, fetch(url, unix_socket))
        .await
        .map_err(|_| {
            url_error(
                url,
                format!(
                    "unable to fetch trust bundle URL: no complete answer within {}s",
                    DOWNLOAD_TIMEOUT.as_secs()
                ),
            )
        })??;
    parse_bootstrap_bundle(&body, format, trust_domain).map_err(|e| {
        let name = match format {
            TrustBundleFormat::Pem => "pem",
            TrustBundleFormat::Spiffe => "spiffe",
        };
        url_error(
            url,
            format!(
                "the downloaded bundle is not in trust_bundle_format {name:?}: {e}; check \
                 agent.trust_bundle_format"
            ),
        )
    })
}

/// An error naming the setting and the URL.
fn url_error(url: &str, reason: String) -> AttestError {
    AttestError::Bootstrap(format!("agent.trust_bundle_url {url}: {reason}"))
}

/// The GET itself: returns the body of a 200 answer.
async fn fetch(url: &str, unix_socket: Option<&Path>) -> Result<Vec<u8>, AttestError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| url_error(url, format!("not a valid URL: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(url_error(
                url,
                "the URL must start with https:// (or http:// with \
                 agent.trust_bundle_unix_socket)"
                    .to_owned(),
            ));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| url_error(url, "the URL has no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let fetch_failed = |e: &dyn std::fmt::Display| {
        url_error(url, format!("unable to fetch trust bundle URL: {e}"))
    };

    let stream: Box<dyn http_get::Connection> = match unix_socket {
        Some(socket) => Box::new(tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            url_error(
                url,
                format!(
                    "unable to connect to agent.trust_bundle_unix_socket {}: {e}",
                    socket.display()
                ),
            )
        })?),
        None => Box::new(
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| fetch_failed(&e))?,
        ),
    };
    let stream: Box<dyn http_get::Connection> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| url_error(url, format!("invalid host name {host:?}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(system_roots_config(url)?));
        Box::new(
            connector
                .connect(name, stream)
                .await
                .map_err(|e| fetch_failed(&e))?,
        )
    } else {
        stream
    };

    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let (status, body) = http_get::get(
        stream,
        authority,
        path,
        "spire-agent",
        &[],
        MAX_BUNDLE_BYTES,
    )
    .await
    .map_err(|e| match e {
        http_get::GetError::Transport(e) => fetch_failed(&e),
        http_get::GetError::Body(e) => {
            url_error(url, format!("unable to read from trust bundle URL: {e}"))
        }
    })?;
    if status != http::StatusCode::OK {
        return Err(url_error(
            url,
            format!("error downloading trust bundle: {status}"),
        ));
    }
    Ok(body)
}

/// A TLS client configuration trusting the platform's root certificates, as Go's default
/// HTTP client does.
fn system_roots_config(url: &str) -> Result<rustls::ClientConfig, AttestError> {
    http_get::system_roots_tls_config().map_err(|e| url_error(url, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[tokio::test]
    async fn the_stored_bundle_wins() {
        let trust = bootstrap_trust(Some(vec![vec![1]]), &BootstrapBundle::Insecure, &td())
            .await
            .unwrap();
        assert_eq!(trust, ServerTrust::Bundle(vec![vec![1]]));
    }

    #[tokio::test]
    async fn insecure_bootstrap_trusts_no_bundle() {
        assert_eq!(
            bootstrap_trust(None, &BootstrapBundle::Insecure, &td())
                .await
                .unwrap(),
            ServerTrust::InsecureBootstrap
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_named() {
        let bootstrap = BootstrapBundle::Path {
            path: "/nonexistent/bundle.pem".into(),
            format: TrustBundleFormat::Pem,
        };
        let err = bootstrap_trust(None, &bootstrap, &td())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.trust_bundle_path"), "{err}");
        assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_unix_socket_is_named() {
        let err = download_trust_bundle(
            "http://localhost/bundle",
            Some(Path::new("/nonexistent/bundle.sock")),
            TrustBundleFormat::Pem,
            &td(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("agent.trust_bundle_unix_socket"), "{err}");
        assert!(err.contains("/nonexistent/bundle.sock"), "{err}");
    }

    fn ca() -> Vec<u8> {
        let key =
            spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
        spire_core::x509::self_signed_ca(
            &key,
            &spire_core::x509::CaTemplate::new(
                td(),
                spire_core::x509::Validity::from_now(
                    time::OffsetDateTime::now_utc(),
                    time::Duration::hours(1),
                ),
            ),
        )
        .unwrap()
    }

    /// A bundle server: `/bundle.pem`, `/bundle.json` (SPIFFE), `/garbage`; anything
    /// else is 404.
    fn bundle_routes(der: &[u8]) -> axum::Router {
        let pem = spire_core::pem::encode_certificates([der]);
        let mut bundle = spire_core::bundle::Bundle::new(td());
        bundle.add_x509_authority(der.to_vec()).unwrap();
        let spiffe = bundle.to_spiffe_document().unwrap();
        axum::Router::new()
            .route(
                "/bundle.pem",
                axum::routing::get(move || async move { pem }),
            )
            .route(
                "/bundle.json",
                axum::routing::get(move || async move { spiffe }),
            )
            .route("/garbage", axum::routing::get(|| async { "not a bundle" }))
    }

    #[tokio::test]
    async fn downloads_pem_and_spiffe_bundles_over_tcp_and_names_http_errors() {
        let der = ca();
        let routes = bundle_routes(&der);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, routes).await.unwrap();
        });
        let base = format!("http://{addr}");

        let pem = download_trust_bundle(
            &format!("{base}/bundle.pem"),
            None,
            TrustBundleFormat::Pem,
            &td(),
        )
        .await
        .unwrap();
        assert_eq!(pem, vec![der.clone()]);
        let spiffe = download_trust_bundle(
            &format!("{base}/bundle.json"),
            None,
            TrustBundleFormat::Spiffe,
            &td(),
        )
        .await
        .unwrap();
        assert_eq!(spiffe, vec![der]);

        let url = format!("{base}/missing");
        let err = download_trust_bundle(&url, None, TrustBundleFormat::Pem, &td())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.trust_bundle_url"), "{err}");
        assert!(err.contains(&url), "{err}");
        assert!(err.contains("404 Not Found"), "{err}");

        // A PEM document read as SPIFFE, and a body that is no bundle at all.
        let err = download_trust_bundle(
            &format!("{base}/bundle.pem"),
            None,
            TrustBundleFormat::Spiffe,
            &td(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("agent.trust_bundle_format"), "{err}");
        let err = download_trust_bundle(
            &format!("{base}/garbage"),
            None,
            TrustBundleFormat::Pem,
            &td(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no PEM blocks"), "{err}");
        server.abort();
    }

    #[tokio::test]
    async fn downloads_through_the_configured_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bundle.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let der = ca();
        let routes = bundle_routes(&der);
        let server = tokio::spawn(async move {
            axum::serve(listener, routes).await.unwrap();
        });
        // The host in the URL is only the Host header: the socket is what is dialed.
        let roots = download_trust_bundle(
            "http://bundle.invalid/bundle.json",
            Some(&socket),
            TrustBundleFormat::Spiffe,
            &td(),
        )
        .await
        .unwrap();
        assert_eq!(roots, vec![der]);
        let trust = bootstrap_trust(
            None,
            &BootstrapBundle::Url {
                url: "http://bundle.invalid/missing".into(),
                format: TrustBundleFormat::Pem,
                unix_socket: Some(socket.clone()),
            },
            &td(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(trust.contains("404 Not Found"), "{trust}");
        server.abort();
    }

    #[tokio::test]
    async fn https_is_verified_against_the_system_roots() {
        // A TLS server with a self-signed certificate no system root vouches for.
        let key = self_signed_server_config();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(key));
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let err = download_trust_bundle(
            &format!("https://127.0.0.1:{}/bundle.pem", addr.port()),
            None,
            TrustBundleFormat::Pem,
            &td(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("unable to fetch trust bundle URL"), "{err}");
        assert!(
            err.contains("certificate") || err.contains("root certificates"),
            "{err}"
        );
        server.abort();
    }

    /// A rustls server configuration with a self-signed CA certificate as its own leaf.
    fn self_signed_server_config() -> rustls::ServerConfig {
        let key =
            spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
        let der = spire_core::x509::self_signed_ca(
            &key,
            &spire_core::x509::CaTemplate::new(
                td(),
                spire_core::x509::Validity::from_now(
                    time::OffsetDateTime::now_utc(),
                    time::Duration::hours(1),
                ),
            ),
        )
        .unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
                key.pkcs8_der().to_vec(),
            )),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn other_schemes_are_refused() {
        let err = download_trust_bundle("ftp://x/b", None, TrustBundleFormat::Pem, &td())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with https://"), "{err}");
    }
}
