//! The listeners: plain HTTP on `insecure_addr` or on the unix socket `listen_socket_path`,
//! HTTPS with `serving_cert_file` or `acme`, and the health checks' own port. Every connection is served
//! by hyper (HTTP/1.1, and HTTP/2 over TLS) until the process is asked to stop.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::health::HealthHandler;
use crate::request_log::UrlStyle;

/// What answers requests on the main listener.
#[derive(Debug)]
pub struct App {
    /// The documents.
    pub handler: Handler,
    /// `log_requests`: whether to log each request, and how its URL is written.
    pub log_requests: Option<UrlStyle>,
}

/// Binds a TCP address given Go-style (`:8080` means every interface).
pub async fn bind_tcp(addr: &str) -> std::io::Result<TcpListener> {
    if let Some(port) = addr.strip_prefix(':') {
        // Both families, as Go's net.Listen does for an empty host; IPv4 alone where IPv6
        // is not available.
        match TcpListener::bind(format!("[::]:{port}")).await {
            Ok(listener) => return Ok(listener),
            Err(_) => return TcpListener::bind(format!("0.0.0.0:{port}")).await,
        }
    }
    TcpListener::bind(addr).await
}

/// Binds `addr`, an address from the configuration.
pub async fn bind_socket_addr(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.ip().is_unspecified() {
        return bind_tcp(&format!(":{}", addr.port())).await;
    }
    TcpListener::bind(addr).await
}

/// Binds the unix socket at `path` as upstream does: a stale file is removed first and the
/// socket is made accessible to everyone (the proxy in front decides who gets in).
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(listener)
}

/// Serves `app` over plain HTTP on `listener` until `cancel` fires.
pub async fn serve_tcp(listener: TcpListener, app: Arc<App>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, false, peer.to_string(), app.clone());
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// Serves `app` over plain HTTP on the unix socket `listener` until `cancel` fires.
pub async fn serve_unix(listener: UnixListener, app: Arc<App>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => spawn_connection(stream, false, "@".to_owned(), app.clone()),
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// Serves `app` over HTTPS with `tls` on `listener` until `cancel` fires.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    cancel: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            // An ACME server's tls-alpn-01 validation only looks at the
                            // certificate (RFC 8737): close without serving HTTP.
                            let negotiated = tls_stream.get_ref().1.alpn_protocol();
                            if spire_common::acme::is_challenge_connection(negotiated) {
                                return;
                            }
                            serve_connection(tls_stream, true, peer.to_string(), app).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(remote = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(remote = %peer, "TLS handshake timed out"),
                    }
                });
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// Serves the health probes on `listener` until `cancel` fires.
pub async fn serve_health(
    listener: TcpListener,
    health: Arc<HealthHandler>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let health = health.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let response = health.handle(&request);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// A failed accept (too many open files, say) is logged and retried a little later.
async fn accept_failed(error: &std::io::Error) {
    tracing::error!(error = %error, "Failed to accept a connection");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn spawn_connection<IO>(io: IO, tls: bool, remote: String, app: Arc<App>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(serve_connection(io, tls, remote, app));
}

async fn serve_connection<IO>(io: IO, tls: bool, remote: String, app: Arc<App>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        if let Some(style) = app.log_requests {
            crate::request_log::log_request(
                style,
                &remote,
                request.method(),
                request.uri(),
                request
                    .headers()
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default(),
            );
        }
        let response = app.handler.handle(&request, tls);
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(error = %e, "Connection ended with an error");
    }
}
