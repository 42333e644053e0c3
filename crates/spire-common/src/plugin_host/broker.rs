//! Host services offered to external plugins through hashicorp go-plugin's gRPC broker.
//!
//! The plugin serves go-plugin's `plugin.GRPCBroker.StartStream`; the host opens that stream,
//! listens on a fresh unix socket, serves its host services there and announces the socket on
//! the stream as `ConnInfo { service_id: 1, network: "unix", address }` (id 1 is
//! spire-plugin-sdk's `HostServiceProviderID`). When `Init` names host services and the plugin
//! implements `BrokerHostServices`, the SDK dials broker id 1 (waiting up to five seconds for
//! the announcement) and binds the clients whose service names `Init` listed. This is what
//! upstream's `hcClientPlugin.GRPCClient` does with `broker.Accept`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Channel;

use spire_proto::goplugin::ConnInfo;
use spire_proto::goplugin::grpc_broker_client::GrpcBrokerClient;

/// The broker id on which the SDK dials the host (`private.HostServiceProviderID`).
pub const HOST_SERVICE_PROVIDER_ID: u32 = 1;

/// The gRPC services SPIRE offers to the plugins it hosts (upstream's `HostServices`): their
/// names go to the plugin in `Init`, and their servers answer on the brokered connection.
#[derive(Clone, Default)]
pub struct HostServices {
    names: Vec<String>,
    routes: Option<Routes>,
}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices")
            .field("names", &self.names)
            .finish()
    }
}

impl HostServices {
    /// No host services (the plugin's `BrokerClient` calls all answer false).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds the gRPC server `service` (e.g. an `AgentStoreServer`) under its service name.
    #[must_use]
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = Infallible,
                Response = http::Response<tonic::body::Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME.to_owned());
        self.routes = Some(match self.routes.take() {
            Some(routes) => routes.add_service(service),
            None => Routes::new(service),
        });
        self
    }

    /// The gRPC service names, as sent in `Init`.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The brokered host-service server of one plugin; dropping it stops the server, closes the
/// broker stream and removes the socket.
pub(crate) struct HostServer {
    _stop: DropGuard,
    // Kept open for the plugin's lifetime: closing it ends the plugin's broker.
    _stream: mpsc::Sender<ConnInfo>,
    dir: PathBuf,
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Serves `services` on a new unix socket and announces it to the plugin behind `channel` on
/// broker id 1, as upstream does before calling `Init`. `plugin_name` names the plugin in
/// the log of a failing server.
pub(crate) async fn serve(
    channel: Channel,
    services: &HostServices,
    plugin_name: &str,
) -> Result<HostServer, String> {
    let dir = std::env::temp_dir().join(format!(
        "spire-plugin-broker-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {} for the host services: {e}", dir.display()))?;
    }
    let socket = dir.join("plugin.sock");
    let listener = UnixListener::bind(&socket).map_err(|e| {
        format!(
            "cannot listen on {} for the host services: {e}",
            socket.display()
        )
    })?;
    let cancel = CancellationToken::new();
    let routes = services.routes.clone().unwrap_or_default();
    let stop = cancel.clone();
    let name = plugin_name.to_owned();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(plugin_name = %name, error = %e, "Host services server failed");
        }
    });

    let (tx, rx) = mpsc::channel(4);
    let mut broker = GrpcBrokerClient::new(channel);
    tx.send(ConnInfo {
        service_id: HOST_SERVICE_PROVIDER_ID,
        network: "unix".to_owned(),
        address: socket.display().to_string(),
    })
    .await
    .map_err(|_| "the broker stream closed".to_owned())?;
    // The call resolves only when the plugin sends something back, which SPIRE plugins never
    // do (they broker nothing themselves): run it in the background; hyper sends the
    // announcement meanwhile, and the stream stays open until the server is dropped.
    let drain = cancel.clone();
    let name = plugin_name.to_owned();
    tokio::spawn(async move {
        let call = broker.start_stream(ReceiverStream::new(rx));
        let responses = tokio::select! {
            () = drain.cancelled() => return,
            responses = call => match responses {
                Ok(responses) => responses,
                Err(status) => {
                    tracing::debug!(plugin_name = %name, error = %status.message(), "go-plugin broker stream ended");
                    return;
                }
            },
        };
        let mut inbound = responses.into_inner();
        loop {
            tokio::select! {
                () = drain.cancelled() => return,
                message = inbound.message() => match message {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                },
            }
        }
    });
    Ok(HostServer {
        _stop: cancel.drop_guard(),
        _stream: tx,
        dir,
    })
}
