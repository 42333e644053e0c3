//! `acme { }`: HTTPS on port 443 with certificates from an ACME server for every name in
//! `domains` (upstream's autocert `HostWhitelist`), validated with tls-alpn-01 on that same
//! port. Each domain gets one [`AcmeManager`] (shared with the federation bundle endpoint)
//! that obtains its certificate at start, caches it in `cache_dir` and renews it; a handshake
//! is answered by the manager of the name it asks for (SNI), and refused for other names.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use spire_common::acme::{AcmeConfig as ManagerConfig, AcmeManager, alpn_protocols};
use tokio_util::sync::CancellationToken;

use crate::config::AcmeConfig;

/// The port upstream's provider serves ACME certificates on (it is not configurable).
pub const ACME_PORT: u16 = 443;

/// Picks the manager of the requested name.
#[derive(Debug)]
struct DomainResolver {
    managers: Vec<(String, Arc<AcmeManager>)>,
}

impl ResolvesServerCert for DomainResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let (_, manager) = self.managers.iter().find(|(domain, _)| *domain == name)?;
        manager.resolve(client_hello)
    }
}

/// Creates the managers of `domains`, starts them (each runs until `cancel`) and returns
/// the TLS configuration of the listener: certificates by SNI, ALPN `h2`, `http/1.1` and
/// `acme-tls/1`.
pub fn start(
    config: &AcmeConfig,
    domains: &[String],
    cancel: &CancellationToken,
) -> Result<rustls::ServerConfig, String> {
    // `cache_dir = ""` turns the cache off upstream (certificates live in memory); the
    // managers need a folder, so they get a private one of this process.
    let cache_dir = config.cache_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "oidc-discovery-provider-acme-{}",
            std::process::id()
        ))
    });
    let mut managers = Vec::with_capacity(domains.len());
    for domain in domains {
        let manager = AcmeManager::new(ManagerConfig {
            directory_url: config.directory_url.clone(),
            domain_name: domain.clone(),
            email: config.email.clone(),
            tos_accepted: config.tos_accepted,
            cache_dir: PathBuf::from(&cache_dir),
            extra_root_cas_pem: None,
        })
        .map_err(|e| format!("acme: domain {domain:?}: {e}"))?;
        managers.push((domain.to_ascii_lowercase(), manager));
    }
    for (_, manager) in &managers {
        tokio::spawn(manager.clone().run(cancel.clone()));
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(spire_common::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("acme: TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(DomainResolver { managers }));
    tls.alpn_protocols = alpn_protocols();
    Ok(tls)
}
