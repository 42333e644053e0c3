//! One HTTP/1.1 GET over a stream the caller connected (TCP, TLS or a unix socket): what the
//! agent needs for `trust_bundle_url` and the kubelet's `/pods`, and the server for federated
//! bundle endpoints, without a client pool.

use std::sync::Arc;

use std::pin::Pin;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connected stream a request can go over.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// Why the exchange failed; the caller adds which URL it was.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The request could not be sent or the answer not received.
    #[error("{0}")]
    Transport(String),
    /// The body could not be read, or was larger than allowed.
    #[error("{0}")]
    Body(String),
}

/// Sends `GET <path_and_query>` with `Host: <authority>`, `User-Agent: <user_agent>` and
/// `headers` over `stream`, and returns the status and at most `limit` bytes of body.
pub async fn get(
    stream: Box<dyn Connection>,
    authority: &str,
    path_and_query: &str,
    user_agent: &str,
    headers: &[(http::HeaderName, String)],
    limit: usize,
) -> Result<(http::StatusCode, Vec<u8>), GetError> {
    let transport = |e: &dyn std::fmt::Display| GetError::Transport(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    let mut request = http::Request::get(path_and_query)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, user_agent);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| GetError::Transport(format!("cannot build the request: {e}")))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| GetError::Body(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok((status, body))
    };
    // The connection future drives the socket; it only ends early when the connection
    // fails, in which case the exchange cannot complete.
    let mut connection: Pin<Box<_>> = Box::pin(connection);
    tokio::select! {
        biased;
        result = exchange => result,
        closed = &mut connection => Err(match closed {
            Ok(()) => GetError::Transport("the server closed the connection without an answer".to_owned()),
            Err(e) => transport(&e),
        }),
    }
}

/// A TLS client configuration trusting the platform's root certificates (or `SSL_CERT_FILE`),
/// as Go's default HTTP client does, speaking HTTP/1.1. The error says why no root was found.
pub fn system_roots_tls_config() -> Result<rustls::ClientConfig, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let detail = loaded
            .errors
            .first()
            .map_or_else(String::new, |e| format!(": {e}"));
        return Err(format!(
            "no system root certificates found to verify the server{detail}; install the CA \
             certificates or set SSL_CERT_FILE"
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot build the TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
