//! The SPIRE OIDC Discovery Provider: publishes a trust domain's JWT authorities as an
//! OpenID Connect discovery document (`/.well-known/openid-configuration`) and JWK Set
//! (`/keys`), so relying parties that speak OIDC (cloud IAMs, Vault) can verify JWT-SVIDs.
//! It reads the keys from the server's admin socket, an agent's Workload API or a bundle
//! file, and is configured with upstream's `oidc-discovery-provider.conf`
//! (see `docs/oidc-discovery.md`).

pub mod acme;
pub mod cli;
pub mod config;
pub mod domain;
pub mod handler;
pub mod health;
pub mod jwks;
pub mod request_log;
pub mod serve;
pub mod source;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenerConfig};
use crate::domain::DomainPolicy;
use crate::handler::{Handler, HandlerConfig};
use crate::request_log::UrlStyle;
use crate::serve::App;
use crate::source::KeySource;

/// Why the provider could not start or stopped; each says what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration file is missing or invalid.
    #[error("{0}")]
    Config(#[from] spire_core::config::ConfigError),
    /// A name in `domains` is not a valid domain.
    #[error("domains: {0}")]
    Domains(String),
    /// Logging could not be set up (`log_level`, `log_format`, `log_path`).
    #[error("{0}")]
    Logging(String),
    /// A listener could not be opened.
    #[error("{what}: {source}")]
    Listen {
        /// Which listener, with its address.
        what: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The serving certificate could not be loaded.
    #[error("serving_cert_file: {0}")]
    ServingCert(String),
    /// The `acme { }` section could not be set up.
    #[error("{0}")]
    Acme(String),
}

/// Runs the provider with `config` until SIGINT or SIGTERM (or `cancel`).
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), RunError> {
    for key in &config.windows_only_keys {
        tracing::warn!(
            key,
            "Named pipes exist only on Windows; this key has no effect here"
        );
    }
    let domains = DomainPolicy::allowlist(&config.domains).map_err(RunError::Domains)?;
    if config.jwks_uri.is_none() && config.jwt_issuer.is_some() {
        tracing::warn!(
            "The jwt_issuer configuration will also affect the jwks_uri behavior when jwks_uri \
             is not set"
        );
    }

    let source = KeySource::new();
    let poller = tokio::spawn(source::poll(
        config.source.clone(),
        source.clone(),
        cancel.clone(),
    ));

    let handler = Handler::new(
        HandlerConfig {
            domains,
            allow_insecure_scheme: config.allow_insecure_scheme,
            set_key_use: config.set_key_use,
            jwt_issuer: config.jwt_issuer.clone(),
            jwks_uri: config.jwks_uri.clone(),
            server_path_prefix: config.server_path_prefix.clone(),
        },
        source.clone(),
    );
    if config.log_requests {
        tracing::info!("Logging all requests");
    }
    let app = Arc::new(App {
        handler,
        log_requests: config.log_requests.then(|| {
            if spire_common::logging::LogFormat::parse(&config.log_format)
                == Some(spire_common::logging::LogFormat::Json)
            {
                UrlStyle::GoStruct
            } else {
                UrlStyle::Text
            }
        }),
    });

    let main = match &config.listener {
        ListenerConfig::Insecure(addr) => {
            let listener = serve::bind_tcp(addr)
                .await
                .map_err(|source| RunError::Listen {
                    what: format!("insecure_addr {addr}"),
                    source,
                })?;
            tracing::warn!(address = %addr, "Serving HTTP (insecure)");
            tokio::spawn(serve::serve_tcp(listener, app, cancel.clone()))
        }
        ListenerConfig::UnixSocket(path) => {
            let listener = serve::bind_unix(path).map_err(|source| RunError::Listen {
                what: format!("listen_socket_path {}", path.display()),
                source,
            })?;
            tracing::info!(network = "unix", address = %path.display(), "Serving HTTP");
            tokio::spawn(serve::serve_unix(listener, app, cancel.clone()))
        }
        ListenerConfig::ServingCert(serving) => {
            let cert = spire_common::serving_cert::ServingCert::load(
                &serving.cert_file_path,
                &serving.key_file_path,
            )
            .map_err(RunError::ServingCert)?;
            tokio::spawn(
                cert.clone()
                    .watch(serving.file_sync_interval, cancel.clone()),
            );
            let mut tls =
                rustls::ServerConfig::builder_with_provider(spire_common::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| RunError::ServingCert(e.to_string()))?
                    .with_no_client_auth()
                    .with_cert_resolver(cert);
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let listener = serve::bind_socket_addr(serving.addr)
                .await
                .map_err(|source| RunError::Listen {
                    what: format!("serving_cert_file addr {}", serving.addr),
                    source,
                })?;
            tracing::info!(
                cert_file_path = %serving.cert_file_path.display(),
                address = %serving.addr,
                "Serving HTTPS using certificate loaded from disk"
            );
            tokio::spawn(serve::serve_tls(
                listener,
                Arc::new(tls),
                app,
                cancel.clone(),
            ))
        }
        ListenerConfig::Acme(acme_config) => {
            let tls = acme::start(acme_config, &config.domains, &cancel).map_err(RunError::Acme)?;
            let listener = serve::bind_tcp(&format!(":{}", acme::ACME_PORT))
                .await
                .map_err(|source| RunError::Listen {
                    what: format!("the acme listener on port {}", acme::ACME_PORT),
                    source,
                })?;
            tracing::info!("Serving HTTPS via ACME");
            tokio::spawn(serve::serve_tls(
                listener,
                Arc::new(tls),
                app,
                cancel.clone(),
            ))
        }
    };

    if let Some(health_config) = &config.health_checks {
        let port = health_config.bind_port;
        let listener = serve::bind_tcp(&format!(":{port}"))
            .await
            .map_err(|source| RunError::Listen {
                what: format!("health_checks bind_port {port}"),
                source,
            })?;
        let health = health::HealthHandler::new(
            health_config.clone(),
            source.clone(),
            health::threshold(config.source.poll_interval()),
        );
        tokio::spawn(serve::serve_health(
            listener,
            Arc::new(health),
            cancel.clone(),
        ));
    }

    cancel.cancelled().await;
    let _ = main.await;
    let _ = poller.await;
    Ok(())
}
