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
    // A server that answers with `Connection: close` ends the connection future as soon as the
    // answer is read; the exchange then still completes from what was read (or fails
    // itself when nothing came).
    let mut connection: Pin<Box<_>> = Box::pin(connection);
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        biased;
        result = &mut exchange => result,
        closed = &mut connection => match closed {
            Ok(()) => exchange.await,
            Err(e) => Err(transport(&e)),
        },
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server that answers once with `Connection: close` and closes (HTTP/1.0 servers,
    /// some proxies): the answer must still be read.
    #[tokio::test]
    async fn an_answer_followed_by_close_is_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await.unwrap();
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )
                .await
                .unwrap();
        });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (status, body) = get(Box::new(stream), "x", "/", "test", &[], 1024)
            .await
            .unwrap();
        assert_eq!(
            (status, body.as_slice()),
            (http::StatusCode::OK, &b"hello"[..])
        );
    }

    #[tokio::test]
    async fn a_close_without_answer_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await.unwrap();
        });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        assert!(
            get(Box::new(stream), "x", "/", "test", &[], 1024)
                .await
                .is_err()
        );
    }
}
