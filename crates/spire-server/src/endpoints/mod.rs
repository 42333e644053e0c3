//! The server's listeners: the admin unix socket (local callers) and the TCP port (mTLS with
//! optional client certificates), both serving the same gRPC services behind the
//! authorization layer, plus the optional HTTP health-check listener.
//!
//! Every connection carries a [`Peer`] (set here, from the socket type and the verified TLS
//! chain); [`auth::AuthLayer`] turns it into a [`Caller`](crate::api::Caller) for each
//! request and refuses what the policy does not allow.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;

use crate::api::agent::AgentApi;
use crate::api::bundle::BundleApi;
use crate::api::debug::DebugApi;
use crate::api::entry::EntryApi;
use crate::api::localauthority::LocalAuthorityApi;
use crate::api::logger::LoggerApi;
use crate::api::notify::NotifyApi;
use crate::api::svid::SvidApi;
use crate::api::trustdomain::TrustDomainApi;
use crate::api::{ApiContext, Peer};
use spire_proto::spire::api::server::agent::v1::agent_server::AgentServer;
use spire_proto::spire::api::server::bundle::v1::bundle_server::BundleServer;
use spire_proto::spire::api::server::debug::v1::debug_server::DebugServer;
use spire_proto::spire::api::server::entry::v1::entry_server::EntryServer;
use spire_proto::spire::api::server::localauthority::v1::local_authority_server::LocalAuthorityServer;
use spire_proto::spire::api::server::logger::v1::logger_server::LoggerServer;
use spire_proto::spire::api::server::svid::v1::svid_server::SvidServer;
use spire_proto::spire::api::server::trustdomain::v1::trust_domain_server::TrustDomainServer;
use spire_proto::spire_rs::agent::notify::v1::agent_notify_server::AgentNotifyServer;

pub mod audit;
pub mod auth;
pub mod health_http;
pub mod proxy_protocol;
pub mod tcp;
pub mod tls;
pub mod unix;

/// Where the server listens.
#[derive(Debug, Clone)]
pub struct EndpointsConfig {
    /// `bind_address:bind_port` of the TCP (agent and remote admin) listener.
    pub bind_addr: SocketAddr,
    /// `socket_path` of the admin unix socket.
    pub socket_path: PathBuf,
}

/// Why the listeners could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointsError {
    /// The admin socket could not be set up.
    #[error(transparent)]
    Socket(#[from] unix::SocketError),
    /// The TCP port could not be bound (in use, or a privileged port).
    #[error("unable to listen on {addr}: {source}")]
    BindTcp {
        /// The address from `bind_address`/`bind_port`.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A gRPC server failed while serving.
    #[error("{listener} gRPC server failed: {source}")]
    Serve {
        /// `tcp` or `unix`.
        listener: &'static str,
        /// tonic's error.
        source: tonic::transport::Error,
    },
}

/// A connection with the caller information the authorization layer reads from the request
/// extensions (tonic copies [`Connected::ConnectInfo`] into every request).
#[derive(Debug)]
pub struct PeerIo<T> {
    inner: T,
    peer: Peer,
}

impl<T> PeerIo<T> {
    /// Tags `inner` with `peer`.
    pub fn new(inner: T, peer: Peer) -> Self {
        Self { inner, peer }
    }
}

impl<T> Connected for PeerIo<T> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PeerIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PeerIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Every gRPC service the server offers, as one router.
pub fn routes(
    ctx: &Arc<ApiContext>,
    health: crate::api::health::GrpcHealthServer,
    reloader: Option<&Arc<crate::reload::Reloader>>,
) -> Routes {
    let mut builder = Routes::builder();
    if let Some(reloader) = reloader {
        // Local callers only (see the policy table): TCP callers are refused.
        builder.add_service(spire_common::reload::config_service(Arc::clone(reloader)));
    }
    builder
        .add_service(BundleServer::new(BundleApi::new(ctx.clone())))
        .add_service(DebugServer::new(DebugApi::new(ctx.clone())))
        .add_service(LoggerServer::new(LoggerApi::new(ctx.clone())))
        .add_service(LocalAuthorityServer::new(LocalAuthorityApi::new(
            ctx.clone(),
        )))
        .add_service(TrustDomainServer::new(TrustDomainApi::new(ctx.clone())))
        .add_service(AgentServer::new(AgentApi::new(ctx.clone())))
        .add_service(EntryServer::new(EntryApi::new(ctx.clone())))
        .add_service(SvidServer::new(SvidApi::new(ctx.clone())))
        .add_service(AgentNotifyServer::new(NotifyApi::new(ctx.clone())))
        .add_service(health);
    builder.routes()
}

/// Listeners bound and ready to serve; [`Endpoints::local_tcp_addr`] tells which port was
/// chosen when the configuration asked for port 0.
pub struct Endpoints {
    ctx: Arc<ApiContext>,
    unix: UnixListener,
    tcp: TcpListener,
    tls: rustls::ServerConfig,
    bundles: Arc<tls::BundleCache>,
    metrics: spire_common::telemetry::Metrics,
    reloader: Option<Arc<crate::reload::Reloader>>,
    proxy_trusted: Arc<[proxy_protocol::Cidr]>,
}

impl Endpoints {
    /// Binds the admin socket and the TCP port and loads the bundles the TLS verifier needs.
    pub async fn bind(
        ctx: Arc<ApiContext>,
        config: &EndpointsConfig,
    ) -> Result<Self, EndpointsError> {
        let bundles = Arc::new(tls::BundleCache::new());
        if let Err(e) = bundles.refresh(ctx.datastore.as_ref()).await {
            // The refresh task retries; until then only certificate-less calls succeed.
            tracing::warn!(error = %e, "failed to load bundles for client verification");
        }
        let tls = tls::server_config(ctx.ca.server_identity(), bundles.clone())?;
        let unix = spire_common::socket::bind_admin(&config.socket_path)?;
        let tcp = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|source| EndpointsError::BindTcp {
                addr: config.bind_addr,
                source,
            })?;
        Ok(Self {
            ctx,
            unix,
            tcp,
            tls,
            bundles,
            metrics: spire_common::telemetry::Metrics::default(),
            reloader: None,
            proxy_trusted: Arc::from(Vec::new()),
        })
    }

    /// Serves `spire-server config reload` with `reloader`.
    pub fn with_reloader(mut self, reloader: Option<Arc<crate::reload::Reloader>>) -> Self {
        self.reloader = reloader;
        self
    }

    /// Accepts PROXY protocol v1/v2 headers on the TCP listener from `trusted` sources
    /// (`proxy_protocol_trusted_cidrs`); empty (the default) turns it off.
    pub fn with_proxy_protocol(mut self, trusted: Vec<proxy_protocol::Cidr>) -> Self {
        if !trusted.is_empty() {
            let shown: Vec<String> = trusted.iter().map(ToString::to_string).collect();
            tracing::info!(
                trusted_cidrs = %shown.join(","),
                "PROXY protocol enabled on TCP listener"
            );
        }
        self.proxy_trusted = trusted.into();
        self
    }

    /// Records upstream's per-RPC metrics of both listeners into `metrics`.
    pub fn with_metrics(mut self, metrics: spire_common::telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The address the TCP listener is bound to.
    pub fn local_tcp_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves both listeners until `cancel` fires or one of them fails.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), EndpointsError> {
        let Self {
            ctx,
            unix,
            tcp,
            tls,
            bundles,
            metrics,
            reloader,
            proxy_trusted,
        } = self;
        // Upstream's start-up lines, which operators grep for the listening addresses.
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!(address = %addr, network = "tcp", "Starting Server APIs");
        }
        if let Some(path) = unix
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        {
            tracing::info!(address = %path, network = "unix", "Starting Server APIs");
        }
        let rpc_metrics = spire_common::telemetry::rpc::RpcMetricsLayer::new(metrics);
        let stop = cancel.child_token();
        let mut tasks = JoinSet::new();

        let (reporter, health) = crate::api::health::grpc_health();
        tasks.spawn(crate::api::health::report_until_cancelled(
            reporter,
            ctx.clone(),
            stop.clone(),
        ));
        {
            let bundles = bundles.clone();
            let datastore = ctx.datastore.clone();
            let stop = stop.clone();
            tasks.spawn(async move { bundles.refresh_until_cancelled(datastore, stop).await });
        }
        {
            // Sync hint streams never end on their own: end them when the listeners stop,
            // or graceful shutdown would wait for every connected agent.
            let hints = ctx.index.hints().clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                stop.cancelled().await;
                hints.close();
            });
        }
        let (connections, incoming) = tokio::sync::mpsc::channel(tcp::BACKLOG);
        tasks.spawn(tcp::accept_loop(
            tcp,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            connections,
            proxy_trusted,
            stop.clone(),
        ));

        let routes = routes(&ctx, health, reloader.as_ref());
        let unix_server = {
            let stop = stop.clone();
            let routes = routes.clone();
            let layer = auth::AuthLayer::new(ctx.clone());
            let audit = audit::AuditLayer::new(ctx.settings.audit_log_enabled);
            let rpc_metrics = rpc_metrics.clone();
            async move {
                let result = tonic::transport::Server::builder()
                    .layer(rpc_metrics)
                    .layer(spire_common::grpc_status::MessageSizeStatusLayer)
                    .layer(layer)
                    .layer(audit)
                    .serve_with_incoming_shutdown(
                        routes,
                        unix::incoming(unix),
                        stop.clone().cancelled_owned(),
                    )
                    .await;
                stop.cancel();
                result.map_err(|source| EndpointsError::Serve {
                    listener: "unix",
                    source,
                })
            }
        };
        let tcp_server = {
            let stop = stop.clone();
            let layer = auth::AuthLayer::new(ctx.clone());
            let audit = audit::AuditLayer::new(ctx.settings.audit_log_enabled);
            let rpc_metrics = rpc_metrics.clone();
            async move {
                let result = tonic::transport::Server::builder()
                    .layer(rpc_metrics)
                    .layer(spire_common::grpc_status::MessageSizeStatusLayer)
                    .layer(layer)
                    .layer(audit)
                    .serve_with_incoming_shutdown(
                        routes,
                        tokio_stream::wrappers::ReceiverStream::new(incoming),
                        stop.clone().cancelled_owned(),
                    )
                    .await;
                stop.cancel();
                result.map_err(|source| EndpointsError::Serve {
                    listener: "tcp",
                    source,
                })
            }
        };
        let (unix_result, tcp_result) = tokio::join!(unix_server, tcp_server);
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        tracing::info!("Server APIs have stopped");
        unix_result.and(tcp_result)
    }
}

/// Binds both listeners and serves until `cancel` fires, recording RPC metrics into
/// `metrics`.
pub async fn serve(
    ctx: Arc<ApiContext>,
    config: EndpointsConfig,
    metrics: spire_common::telemetry::Metrics,
    reloader: Option<Arc<crate::reload::Reloader>>,
    proxy_trusted: Vec<proxy_protocol::Cidr>,
    cancel: CancellationToken,
) -> Result<(), EndpointsError> {
    Endpoints::bind(ctx, &config)
        .await?
        .with_metrics(metrics)
        .with_reloader(reloader)
        .with_proxy_protocol(proxy_trusted)
        .run(cancel)
        .await
}
