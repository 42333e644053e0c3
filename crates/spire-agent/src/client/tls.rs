//! The agent's TLS toward the server: the server must present an X509-SVID for
//! `spiffe://<trust domain>/spire/server` that chains to the agent's trust bundle
//! (go-spiffe's `tlsconfig.AuthorizeID` with `x509svid.Verify`); the agent presents its
//! own SVID once it has one.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::{AgentIdentity, ClientError};

/// Checks the server's certificate: chained to `roots` (or, in insecure bootstrap, not
/// checked) and naming exactly the server's SPIFFE ID.
#[derive(Debug)]
pub(super) struct SpireServerVerifier {
    /// `None` in insecure bootstrap: only the SPIFFE ID is checked, as upstream does.
    anchors: Option<Vec<rustls::pki_types::TrustAnchor<'static>>>,
    server_id: String,
    provider: Arc<CryptoProvider>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl SpireServerVerifier {
    /// A verifier trusting `roots` (DER), or trusting any chain when `roots` is `None`.
    pub(super) fn new(roots: Option<&[Vec<u8>]>, server_id: &str) -> Result<Self, ClientError> {
        let anchors = match roots {
            None => None,
            Some([]) => {
                return Err(ClientError::InvalidBundle(
                    "the trust bundle has no X.509 authorities".into(),
                ));
            }
            Some(roots) => Some(
                roots
                    .iter()
                    .enumerate()
                    .map(|(i, der)| {
                        webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                            .map(|a| a.to_owned())
                            .map_err(|e| {
                                ClientError::InvalidBundle(format!(
                                    "trust bundle certificate #{i} is unusable: {e}"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self {
            anchors,
            server_id: server_id.to_owned(),
            provider: provider(),
        })
    }
}

/// The URI SANs of a DER certificate.
fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    uris
}

impl ServerCertVerifier for SpireServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = |what: String| {
            rustls::Error::General(format!("SPIRE server certificate refused: {what}"))
        };
        if let Some(anchors) = &self.anchors {
            let leaf = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|e| refused(format!("malformed certificate: {e}")))?;
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|e| {
                refused(format!(
                    "it does not chain to the agent's trust bundle ({e}); check \
                     trust_bundle_path / trust_bundle_url"
                ))
            })?;
        }
        let ids = uri_sans(end_entity.as_ref());
        if ids != [self.server_id.as_str()] {
            return Err(refused(format!(
                "it names {ids:?}, expected {}",
                self.server_id
            )));
        }
        Ok(ServerCertVerified::assertion())
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

/// The rustls client configuration: ALPN h2, the SPIRE server verifier, and the agent SVID
/// as client certificate when there is one.
pub(super) fn client_config(
    verifier: SpireServerVerifier,
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
