//! HTTP requests to cloud metadata services and provider APIs (GCP metadata server, Google's
//! certificates and Compute API, Azure IMDS, Microsoft Entra ID and Resource Manager): plain
//! HTTP for link-local metadata endpoints, HTTPS with the system roots for the rest, one
//! pooled client per plugin, a deadline on every exchange and a bounded body.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one exchange may take: metadata services answer in milliseconds, provider APIs
/// in seconds; a hung peer must not hold an attestation forever.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest body read: identity documents, key sets and API objects are kilobytes.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// An answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body, at most [`BODY_LIMIT`] bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy), clipped for error messages.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(1024).collect()
    }

    /// The body if the status is 200 OK, else an error naming the status and the start of
    /// the body (which is where providers explain themselves).
    pub fn ok_body(self) -> Result<Vec<u8>, String> {
        if self.status == http::StatusCode::OK {
            Ok(self.body)
        } else {
            Err(format!(
                "unexpected status code {}: {}",
                self.status.as_u16(),
                self.body_excerpt()
            ))
        }
    }
}

/// A client for `http://` and `https://` URLs.
#[derive(Clone)]
pub struct CloudHttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for CloudHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloudHttpClient")
    }
}

impl Default for CloudHttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl CloudHttpClient {
    /// A client trusting the system's root certificates for HTTPS. Without any (a minimal
    /// container), HTTPS requests fail naming the cause while plain HTTP still works.
    pub fn new() -> Self {
        let tls = match crate::http_get::system_roots_tls_config() {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS requests to cloud providers will fail");
                empty_roots_config()
            }
        };
        Self::with_tls(tls)
    }

    /// A client with its own TLS configuration (a private CA's roots, a client certificate
    /// for mutual TLS), e.g. for an on-premises CA's REST API.
    pub fn with_tls(mut tls: rustls::ClientConfig) -> Self {
        // The connector sets ALPN itself and refuses a preset list.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `method url` with `headers` and `body` and reads the answer.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build a request to {url:?}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request to {url:?} failed: {}", error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, BODY_LIMIT)
                .collect()
                .await
                .map_err(|e| format!("reading the answer of {url:?} failed: {e}"))?
                .to_bytes()
                .to_vec();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("request to {url:?} timed out after {TIMEOUT:?}"))?
    }

    /// `GET url` with `headers`.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        self.send(http::Method::GET, url, headers, Vec::new()).await
    }

    /// `POST url` of an `application/x-www-form-urlencoded` form.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Response, String> {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            http::Method::POST,
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.into_bytes(),
        )
        .await
    }
}

/// Percent-encodes `s` for a query string or form value (RFC 3986 unreserved characters
/// stay as they are), as Go's `url.QueryEscape` does apart from spaces (`%20`, which every
/// server reads the same).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn empty_roots_config() -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions();
    match builder {
        Ok(b) => b
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        // The default provider supports the default versions; cannot happen.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved_characters() {
        assert_eq!(
            url_encode("https://management.azure.com/"),
            "https%3A%2F%2Fmanagement.azure.com%2F"
        );
        assert_eq!(url_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(url_encode("a b"), "a%20b");
    }
}
