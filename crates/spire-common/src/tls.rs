//! SPIFFE authentication of a TLS server, as go-spiffe's `tlsconfig.AuthorizeID` with
//! `x509svid.Verify` does it: the server's certificate must chain to a trust bundle and name
//! exactly one expected SPIFFE ID; the host name is not checked. The agent uses it toward its
//! server, the server toward `https_spiffe` federation bundle endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_parser::extensions::GeneralName;

/// Checks a server certificate: chained to the trust anchors (or, when there are none
/// because the caller bootstraps insecurely, not checked) and naming exactly the expected
/// SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeIdVerifier {
    /// `None` in the agent's insecure bootstrap: only the SPIFFE ID is checked, as upstream.
    anchors: Option<Vec<TrustAnchor<'static>>>,
    expected_id: String,
    /// What refused certificates are: "SPIRE server", "bundle endpoint", ...
    peer: &'static str,
    /// Where the trust anchors came from, so a refusal tells the operator what to check.
    roots_hint: &'static str,
    provider: Arc<CryptoProvider>,
}

/// Whether `experimental.require_pq_kem = true` is in force for this process: upstream's TLS
/// policy is process-wide (the server's API listener and federation client, the agent's
/// connections to its server), so it is set once at start by [`require_pq_kem`].
static REQUIRE_PQ_KEM: AtomicBool = AtomicBool::new(false);

/// Applies upstream's `experimental.require_pq_kem` policy to every later [`provider`] of this
/// process: TLS 1.3 with X25519MLKEM768 as the only key exchange. Upstream v1.13.3 lists the
/// withdrawn Kyber draft (0x6399) there, which its Go 1.24+ toolchain no longer implements;
/// X25519MLKEM768 is the post-quantum hybrid Go and rustls both speak.
pub fn require_pq_kem(enabled: bool) {
    REQUIRE_PQ_KEM.store(enabled, Ordering::Relaxed);
    if enabled {
        tracing::debug!(
            "Experimental option 'require_pq_kem' is enabled; all TLS connections will require \
             use of a post-quantum safe KEM"
        );
    }
}

/// The crypto provider every TLS configuration of ours uses toward SPIRE peers: the default
/// one, or the post-quantum-only one when [`require_pq_kem`] is in force.
pub fn provider() -> Arc<CryptoProvider> {
    if REQUIRE_PQ_KEM.load(Ordering::Relaxed) {
        Arc::new(pq_kem_provider())
    } else {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }
}

/// The default provider restricted to X25519MLKEM768, a TLS 1.3-only group (so TLS 1.2 can
/// never be negotiated with it).
pub fn pq_kem_provider() -> CryptoProvider {
    let mut crypto = rustls::crypto::aws_lc_rs::default_provider();
    crypto
        .kx_groups
        .retain(|group| group.name() == rustls::NamedGroup::X25519MLKEM768);
    crypto
}

impl SpiffeIdVerifier {
    /// A verifier trusting `roots` (DER certificates) or, when `roots` is `None`, any chain;
    /// `peer` names the server in errors and `roots_hint` says where the roots came from.
    /// An empty or unusable root is an error naming it.
    pub fn new(
        roots: Option<&[Vec<u8>]>,
        expected_id: &str,
        peer: &'static str,
        roots_hint: &'static str,
    ) -> Result<Self, String> {
        let anchors = match roots {
            None => None,
            Some([]) => return Err("the trust bundle has no X.509 authorities".to_owned()),
            Some(roots) => Some(
                roots
                    .iter()
                    .enumerate()
                    .map(|(i, der)| {
                        webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                            .map(|a| a.to_owned())
                            .map_err(|e| format!("trust bundle certificate #{i} is unusable: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self {
            anchors,
            expected_id: expected_id.to_owned(),
            peer,
            roots_hint,
            provider: provider(),
        })
    }
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
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

impl ServerCertVerifier for SpiffeIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = |what: String| {
            rustls::Error::General(format!("{} certificate refused: {what}", self.peer))
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
            .map_err(|e| match e {
                webpki::Error::CertExpired { .. } => refused(format!("it has expired ({e})")),
                webpki::Error::CertNotValidYet { .. } => {
                    refused(format!("it is not valid yet ({e}); check the clocks"))
                }
                e => refused(format!(
                    "it does not chain to the trust bundle ({e}); {}",
                    self.roots_hint
                )),
            })?;
        }
        let ids = uri_sans(end_entity.as_ref());
        if ids != [self.expected_id.as_str()] {
            return Err(refused(format!(
                "it names {ids:?}, expected {}",
                self.expected_id
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
