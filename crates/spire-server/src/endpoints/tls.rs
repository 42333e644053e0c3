//! TLS for the TCP listener: the server presents its current `spiffe://<td>/spire/server`
//! SVID and, when a client offers a certificate, verifies it as an X509-SVID against the
//! current bundle of the client's trust domain.
//!
//! Both sides read live state: the certificate resolver reads the CA manager's identity
//! channel at every handshake and the verifier reads a bundle cache refreshed from the
//! datastore, so CA rotation and bundle changes need no restart. Session resumption is off,
//! so every connection's client certificate is checked against the bundle of that moment.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use spire_core::x509::X509Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::ServerIdentity;
use crate::datastore::DataStore;

/// How often the bundle cache re-reads the datastore. Upstream re-reads the bundle at a
/// handshake once its one-second cache has expired; with several servers on one database
/// this bounds how long an agent SVID signed by a newly started server's CA is refused here.
pub const BUNDLE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the protocol versions or provider.
    #[error("cannot build the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The X.509 roots of every bundle the datastore holds, by trust domain name.
#[derive(Debug, Default)]
pub struct BundleCache {
    roots: RwLock<HashMap<String, Arc<Vec<Vec<u8>>>>>,
}

impl BundleCache {
    /// An empty cache; [`BundleCache::refresh`] fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The X.509 authorities of `trust_domain`'s bundle, if it is known.
    pub fn roots(&self, trust_domain: &str) -> Option<Arc<Vec<Vec<u8>>>> {
        self.roots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(trust_domain)
            .cloned()
    }

    /// Re-reads every bundle from the datastore.
    pub async fn refresh(
        &self,
        datastore: &dyn DataStore,
    ) -> Result<(), crate::datastore::DataStoreError> {
        let (bundles, _) = datastore.list_bundles(None).await?;
        let roots = bundles
            .into_iter()
            .map(|bundle| {
                let certs = bundle
                    .x509_authorities
                    .into_iter()
                    .map(|authority| authority.asn1)
                    .collect();
                (bundle.trust_domain, Arc::new(certs))
            })
            .collect();
        *self.roots.write().unwrap_or_else(PoisonError::into_inner) = roots;
        Ok(())
    }

    /// Refreshes every [`BUNDLE_REFRESH_INTERVAL`] until `cancel` fires.
    pub async fn refresh_until_cancelled(
        &self,
        datastore: Arc<dyn DataStore>,
        cancel: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(BUNDLE_REFRESH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {
                    if let Err(e) = self.refresh(datastore.as_ref()).await {
                        tracing::warn!(error = %e, "failed to refresh the bundle cache for TLS");
                    }
                }
            }
        }
    }
}

/// Verifies client certificates as X509-SVIDs against the cached bundle of their own trust
/// domain. A client may also present none (AttestAgent, GetBundle).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<BundleCache>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    /// A verifier reading `bundles`.
    pub fn new(bundles: Arc<BundleCache>, provider: Arc<CryptoProvider>) -> Self {
        Self { bundles, provider }
    }
}

fn certificate_error(error: X509Error) -> rustls::Error {
    let kind = match error {
        X509Error::Expired { .. } => CertificateError::Expired,
        X509Error::NotYetValid { .. } => CertificateError::NotValidYet,
        X509Error::UnknownIssuer | X509Error::EmptyBundle => CertificateError::UnknownIssuer,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let leaf_id =
            spire_core::x509::certificate_spiffe_id(end_entity).map_err(certificate_error)?;
        let Some(roots) = self.bundles.roots(leaf_id.trust_domain_name()) else {
            tracing::debug!(
                id = leaf_id.as_str(),
                "client SVID of an unknown trust domain"
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|der| der.as_ref().to_vec())
            .collect();
        let now = i64::try_from(now.as_secs())
            .ok()
            .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
            .ok_or(rustls::Error::FailedToGetCurrentTime)?;
        spire_core::x509::verify_x509_svid(&chain, &roots, now).map_err(|e| {
            tracing::debug!(id = leaf_id.as_str(), error = %e, "client SVID rejected");
            certificate_error(e)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves the CA manager's current server identity at every handshake.
pub struct IdentityResolver {
    identity: watch::Receiver<Option<ServerIdentity>>,
    provider: Arc<CryptoProvider>,
    /// The last identity turned into a rustls key, by leaf certificate.
    cached: RwLock<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for IdentityResolver {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityResolver").finish_non_exhaustive()
    }
}

impl IdentityResolver {
    /// A resolver reading `identity`.
    pub fn new(
        identity: watch::Receiver<Option<ServerIdentity>>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            identity,
            provider,
            cached: RwLock::new(None),
        }
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let identity = self.identity.borrow().clone()?;
        let leaf = identity.chain.first()?.clone();
        if let Some((cached_leaf, key)) = self
            .cached
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && *cached_leaf == leaf
        {
            return Some(key.clone());
        }
        let key_der =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.pkcs8_der().to_vec()));
        let signing_key = match self.provider.key_provider.load_private_key(key_der) {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(error = %e, "server identity key cannot be used for TLS");
                return None;
            }
        };
        let chain = identity
            .chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
        *self.cached.write().unwrap_or_else(PoisonError::into_inner) =
            Some((leaf, certified.clone()));
        Some(certified)
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.certified_key();
        if key.is_none() {
            tracing::warn!("TLS handshake refused: the server has no identity yet");
        }
        key
    }
}

/// The TCP listener's rustls configuration: ALPN `h2` (grpc-go requires it), optional
/// client certificates verified as X509-SVIDs, no session resumption.
pub fn server_config(
    identity: watch::Receiver<Option<ServerIdentity>>,
    bundles: Arc<BundleCache>,
) -> Result<rustls::ServerConfig, TlsError> {
    // experimental.require_pq_kem applies here, as upstream's TLS policy on this listener.
    let provider = spire_common::tls::provider();
    let verifier = Arc::new(SpiffeClientVerifier::new(bundles, provider.clone()));
    let resolver = Arc::new(IdentityResolver::new(identity, provider.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session would skip verify_client_cert; every connection is verified anew.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}
