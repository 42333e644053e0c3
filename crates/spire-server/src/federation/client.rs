//! Fetching a foreign trust domain's bundle from its bundle endpoint: one HTTPS GET,
//! authenticated either as the web does (`https_web`: system roots and the URL's host name) or
//! as SPIFFE does (`https_spiffe`: the endpoint's X509-SVID must chain to the bundle we hold
//! for its trust domain and name the configured SPIFFE ID), then the SPIFFE bundle document
//! checked before anything is stored.

use std::sync::Arc;
use std::time::Duration;

use spire_common::http_get;
use spire_common::tls::SpiffeIdVerifier;
use spire_core::TrustDomain;
use spire_core::bundle::Bundle;
use spire_core::spiffe_id::SpiffeId;

/// The largest bundle document accepted: far above any real bundle (a hundred CA
/// certificates are about 200 KB), low enough that a hostile endpoint cannot exhaust memory.
pub const MAX_BUNDLE_BYTES: usize = 2 * 1024 * 1024;

/// How long one fetch (connect, handshake, answer) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Sent as `User-Agent`, so the endpoint's operator can tell who polls.
const USER_AGENT: &str = concat!("spire-server/", env!("CARGO_PKG_VERSION"));

/// How the endpoint proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointAuth {
    /// `https_web`: a certificate for the URL's host from a root the system trusts.
    Web,
    /// `https_spiffe`: an X509-SVID for `endpoint_id` chaining to `roots`.
    Spiffe {
        /// The SPIFFE ID the endpoint must present.
        endpoint_id: SpiffeId,
        /// The X.509 authorities of the endpoint's trust domain, DER.
        roots: Vec<Vec<u8>>,
    },
}

/// Why a fetch failed; the text is what the log shows after the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an https URL with a host.
    #[error("invalid bundle endpoint URL: {0}")]
    Url(String),
    /// The TLS client could not be set up (no roots, unusable bundle).
    #[error("{0}")]
    Tls(String),
    /// Connecting, the handshake or the exchange failed.
    #[error("failed to fetch bundle: {0}")]
    Transport(String),
    /// The endpoint answered something other than 200.
    #[error("unexpected status {status} fetching bundle: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the body, for the operator.
        body: String,
    },
    /// The body is not a usable bundle for the trust domain.
    #[error("failed to decode bundle: {0}")]
    Decode(String),
}

/// Fetches and checks the bundle of `trust_domain` from `url`.
pub async fn fetch_bundle(
    url: &str,
    trust_domain: &TrustDomain,
    auth: &EndpointAuth,
) -> Result<Bundle, FetchError> {
    match tokio::time::timeout(FETCH_TIMEOUT, fetch(url, trust_domain, auth)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Transport(format!(
            "no answer within {}s",
            FETCH_TIMEOUT.as_secs()
        ))),
    }
}

async fn fetch(
    url: &str,
    trust_domain: &TrustDomain,
    auth: &EndpointAuth,
) -> Result<Bundle, FetchError> {
    let uri: http::Uri = url.parse().map_err(|e| FetchError::Url(format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(FetchError::Url("the scheme must be https".to_owned()));
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| FetchError::Url("the URL has no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let config = match auth {
        EndpointAuth::Web => http_get::system_roots_tls_config().map_err(FetchError::Tls)?,
        EndpointAuth::Spiffe { endpoint_id, roots } => spiffe_tls_config(endpoint_id, roots)?,
    };
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| FetchError::Url(format!("invalid host name {host:?}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Transport(web_auth_hint(auth, e)))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let (status, body) = http_get::get(
        Box::new(tls),
        authority,
        path,
        USER_AGENT,
        &[],
        MAX_BUNDLE_BYTES,
    )
    .await
    .map_err(|e| match e {
        http_get::GetError::Transport(e) => FetchError::Transport(e),
        http_get::GetError::Body(e) => FetchError::Transport(format!(
            "cannot read the answer (at most {MAX_BUNDLE_BYTES} bytes are accepted): {e}"
        )),
    })?;
    if status != http::StatusCode::OK {
        let start = &body[..body.len().min(1024)];
        return Err(FetchError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(start).trim_end().to_owned(),
        });
    }
    decode(trust_domain, &body)
}

/// Reads the document and refuses one that cannot be `trust_domain`'s: no X.509 authority
/// at all, or a SPIRE CA certificate naming another trust domain (SPIRE's CAs carry
/// `spiffe://<trust domain>` as URI SAN; certificates without one are accepted).
pub fn decode(trust_domain: &TrustDomain, body: &[u8]) -> Result<Bundle, FetchError> {
    let bundle = Bundle::from_spiffe_document(trust_domain.clone(), body)
        .map_err(|e| FetchError::Decode(e.to_string()))?;
    if bundle.x509_authorities.is_empty() {
        return Err(FetchError::Decode(
            "the bundle has no X.509 authority".to_owned(),
        ));
    }
    for der in &bundle.x509_authorities {
        for uri in spire_common::tls::uri_sans(der) {
            let Ok(id) = SpiffeId::parse(&uri) else {
                continue;
            };
            if id.trust_domain() != *trust_domain {
                return Err(FetchError::Decode(format!(
                    "the bundle holds a CA of trust domain {:?}, not {:?}",
                    id.trust_domain().name(),
                    trust_domain.name()
                )));
            }
        }
    }
    Ok(bundle)
}

fn spiffe_tls_config(
    endpoint_id: &SpiffeId,
    roots: &[Vec<u8>],
) -> Result<rustls::ClientConfig, FetchError> {
    let verifier = SpiffeIdVerifier::new(
        Some(roots),
        endpoint_id.as_ref(),
        "bundle endpoint",
        "check the bundle held for the endpoint's trust domain (trust_domain_bundle or \
         `spire-server bundle set`)",
    )
    .map_err(|e| {
        FetchError::Tls(format!(
            "can't perform SPIFFE Authentication with the local bundle of {:?}: {e}",
            endpoint_id.trust_domain().name()
        ))
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(spire_common::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(format!("cannot build the TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Upstream's hint when a web-authenticated endpoint presents an X509-SVID.
fn web_auth_hint(auth: &EndpointAuth, e: std::io::Error) -> String {
    if *auth == EndpointAuth::Web && e.to_string().contains("NotValidForName") {
        return format!(
            "{e}: the server certificate does not match the URL's host; if the endpoint \
             serves an X509-SVID, use https_spiffe instead of https_web"
        );
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn ca_document(ca_td: &str) -> String {
        let key =
            spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
        let template = spire_core::x509::CaTemplate::new(
            td(ca_td),
            spire_core::x509::Validity::from_now(
                time::OffsetDateTime::now_utc(),
                time::Duration::hours(1),
            ),
        );
        let der = spire_core::x509::self_signed_ca(&key, &template).unwrap();
        let mut bundle = Bundle::new(td(ca_td));
        bundle.add_x509_authority(der).unwrap();
        bundle.to_spiffe_document().unwrap()
    }

    #[test]
    fn a_bundle_of_its_own_trust_domain_is_accepted() {
        let bundle = decode(&td("b.test"), ca_document("b.test").as_bytes()).unwrap();
        assert_eq!(bundle.x509_authorities.len(), 1);
    }

    #[test]
    fn a_bundle_of_another_trust_domain_is_refused() {
        let err = decode(&td("b.test"), ca_document("c.test").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("\"c.test\""), "{err}");
    }

    #[test]
    fn garbage_and_empty_bundles_are_refused() {
        assert!(decode(&td("b.test"), b"<html>").is_err());
        let err = decode(&td("b.test"), br#"{"keys":[]}"#).unwrap_err();
        assert!(err.to_string().contains("no X.509 authority"), "{err}");
    }

    #[tokio::test]
    async fn only_https_urls_are_fetched() {
        let err = fetch_bundle("http://127.0.0.1:1/", &td("b.test"), &EndpointAuth::Web)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Url(_)), "{err}");
    }
}
