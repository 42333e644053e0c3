//! The agent's TLS toward the server: the server must present an X509-SVID for
//! `spiffe://<trust domain>/spire/server` that chains to the agent's trust bundle
//! (go-spiffe's `tlsconfig.AuthorizeID` with `x509svid.Verify`); the agent presents its
//! own SVID once it has one.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
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
        Some(identity) => builder
            .with_client_auth_cert(
                identity
                    .chain
                    .iter()
                    .cloned()
                    .map(CertificateDer::from)
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.pkcs8_der().to_vec())),
            )
            .map_err(|e| {
                ClientError::InvalidIdentity(format!(
                    "the agent SVID and key cannot be used as a TLS client certificate: {e}"
                ))
            })?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
