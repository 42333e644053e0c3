//! The agent's TLS toward the server: the server must present an X509-SVID for
//! `spiffe://<trust domain>/spire/server` that chains to the agent's trust bundle
//! (go-spiffe's `tlsconfig.AuthorizeID` with `x509svid.Verify`); the agent presents its
//! own SVID once it has one.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use spire_common::tls::{SpiffeIdVerifier, provider};

use super::{AgentIdentity, ClientError};

/// The verifier of the SPIRE server's certificate: chained to `roots` (or, in insecure
/// bootstrap, not checked) and naming exactly `server_id`.
pub(super) fn server_verifier(
    roots: Option<&[Vec<u8>]>,
    server_id: &str,
) -> Result<SpiffeIdVerifier, ClientError> {
    SpiffeIdVerifier::new(
        roots,
        server_id,
        "SPIRE server",
        "check trust_bundle_path / trust_bundle_url",
    )
    .map_err(ClientError::InvalidBundle)
}

/// The rustls client configuration: ALPN h2, the SPIRE server verifier, and the agent SVID
/// as client certificate when there is one.
pub(super) fn client_config(
    verifier: SpiffeIdVerifier,
    identity: Option<&AgentIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("cannot build the TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let invalid = |e: String| {
                ClientError::InvalidIdentity(format!(
                    "the agent SVID and key cannot be used as a TLS client certificate: {e}"
                ))
            };
            let chain: Vec<CertificateDer<'static>> = identity
                .chain
                .iter()
                .cloned()
                .map(CertificateDer::from)
                .collect();
            let certified =
                CertifiedKey::new(chain, identity.key.tls_signing_key().map_err(invalid)?);
            // As `with_client_auth_cert` does: the key must be the certificate's.
            certified.keys_match().map_err(|e| invalid(e.to_string()))?;
            builder.with_client_cert_resolver(Arc::new(AgentSvidCert(Arc::new(certified))))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Presents the agent SVID to the server whatever it asks, as upstream's client does. The
/// key may sign in a KeyManager plugin (`AgentKey::Plugin`), which rustls's own
/// `with_client_auth_cert` cannot express.
#[derive(Debug)]
struct AgentSvidCert(Arc<CertifiedKey>);

impl ResolvesClientCert for AgentSvidCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
