//! The bundle endpoint server (`federation.bundle_endpoint`): serves this trust domain's
//! bundle as a SPIFFE bundle document over HTTPS to the servers that federate with us, as
//! upstream's: `GET /` only, the configured `spiffe_refresh_hint`, the stored
//! `spiffe_sequence`, TLS 1.2 or newer with the certificate the profile provides.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use spire_core::TrustDomain;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::convert::bundle_to_document;
use crate::datastore::DataStore;

/// How long a served document is reused before the datastore is read again (upstream's
/// datastore cache keeps bundles one second).
const CACHE_EXPIRY: Duration = Duration::from_secs(1);

/// How long a client may take to finish the TLS handshake and send its request headers
/// (upstream's `ReadHeaderTimeout` is 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The address could not be bound.
    #[error("cannot listen on federation.bundle_endpoint {address}: {source}")]
    Bind {
        /// `address:port` from the config.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound bundle endpoint, ready to serve.
pub struct BundleEndpointServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    documents: Arc<DocumentCache>,
}

impl std::fmt::Debug for BundleEndpointServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleEndpointServer")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl BundleEndpointServer {
    /// Binds `address:port`; `tls` carries the profile's certificate resolver and ALPN.
    pub async fn bind(
        address: &str,
        port: u16,
        tls: rustls::ServerConfig,
        datastore: Arc<dyn DataStore>,
        trust_domain: TrustDomain,
        refresh_hint: Duration,
    ) -> Result<Self, EndpointError> {
        let listener =
            TcpListener::bind((address, port))
                .await
                .map_err(|source| EndpointError::Bind {
                    address: format!("{address}:{port}"),
                    source,
                })?;
        Ok(Self {
            listener,
            tls: Arc::new(tls),
            documents: Arc::new(DocumentCache {
                datastore,
                trust_domain,
                refresh_hint,
                cached: Mutex::new(None),
            }),
        })
    }

    /// The bound address (port 0 in the config picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `cancel` fires.
    pub async fn serve(self, cancel: CancellationToken) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls);
        loop {
            let (tcp, peer) = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "bundle endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let documents = self.documents.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "bundle endpoint: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "bundle endpoint: TLS handshake timed out");
                        return;
                    }
                };
                // An ACME tls-alpn-01 validation only needs the handshake.
                if tls.get_ref().1.alpn_protocol() == Some(b"acme-tls/1") {
                    return;
                }
                let service = hyper::service::service_fn(move |request| {
                    let documents = documents.clone();
                    async move { Ok::<_, std::convert::Infallible>(documents.answer(&request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                tokio::select! {
                    () = cancel.cancelled() => {}
                    served = connection => {
                        if let Err(e) = served {
                            tracing::debug!(%peer, error = %e, "bundle endpoint: connection ended");
                        }
                    }
                }
            });
        }
    }
}

type Response = http::Response<Full<Bytes>>;

/// The served document, rebuilt at most once per [`CACHE_EXPIRY`].
struct DocumentCache {
    datastore: Arc<dyn DataStore>,
    trust_domain: TrustDomain,
    refresh_hint: Duration,
    cached: Mutex<Option<(Instant, Bytes)>>,
}

impl DocumentCache {
    async fn answer<B>(&self, request: &http::Request<B>) -> Response {
        if request.method() != http::Method::GET {
            return text(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "405 method not allowed",
            );
        }
        if request.uri().path() != "/" {
            return text(http::StatusCode::NOT_FOUND, "404 page not found");
        }
        match self.document().await {
            Ok(body) => http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .unwrap_or_else(|_| text(http::StatusCode::INTERNAL_SERVER_ERROR, "500")),
            Err(e) => {
                tracing::error!(error = %e, "Unable to retrieve local bundle");
                text(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "500 unable to retrieve local bundle",
                )
            }
        }
    }

    async fn document(&self) -> Result<Bytes, String> {
        if let Some((at, body)) = self
            .cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < CACHE_EXPIRY
        {
            return Ok(body.clone());
        }
        let stored = self
            .datastore
            .fetch_bundle(self.trust_domain.name())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "trust domain bundle not found".to_owned())?;
        let mut document = bundle_to_document(&stored).map_err(|e| e.to_string())?;
        document.refresh_hint = Some(self.refresh_hint);
        let body = Bytes::from(document.to_spiffe_document().map_err(|e| e.to_string())?);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

/// A plain-text answer as Go's `http.Error` writes it.
fn text(status: http::StatusCode, message: &str) -> Response {
    let mut response = http::Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}
