//! The TCP listener: accepts connections, runs the TLS handshake off the accept loop (a
//! slow client cannot stall others), and hands finished connections, tagged with their
//! [`Peer`], to the gRPC server.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::PeerIo;
use super::proxy_protocol::{Cidr, Preamble, read_preamble};
use crate::api::Peer;

/// A client that has not finished the TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections waiting for the gRPC server to pick them up.
pub const BACKLOG: usize = 128;

/// A TLS connection with its caller information.
pub type TlsConnection = PeerIo<TlsStream<TcpStream>>;

/// The peer of a finished handshake: address (the PROXY header's source when one was
/// accepted), presented chain and its SPIFFE ID.
fn peer_of(stream: &TlsStream<TcpStream>, addr: SocketAddr) -> Peer {
    let (_, session) = stream.get_ref();
    let chain: Option<Vec<Vec<u8>>> = session
        .peer_certificates()
        .map(|certs| certs.iter().map(|der| der.as_ref().to_vec()).collect());
    let spiffe_id = chain
        .as_ref()
        .and_then(|chain| chain.first())
        .and_then(|leaf| spire_core::x509::certificate_spiffe_id(leaf).ok());
    Peer::Tcp {
        addr: Some(addr),
        chain,
        spiffe_id,
    }
}

/// Accepts on `listener` until `cancel` fires or the receiver is dropped, sending every
/// connection that completed its handshake to `connections`.
/// With `proxy_trusted` non-empty, every connection may start with a PROXY protocol header
/// (see [`super::proxy_protocol`]).
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<io::Result<TlsConnection>>,
    proxy_trusted: Arc<[Cidr]>,
    cancel: CancellationToken,
) {
    let acceptor = Arc::new(acceptor);
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            () = connections.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "failed to accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        handshakes.spawn(handshake(
            acceptor,
            tcp,
            addr,
            Arc::clone(&proxy_trusted),
            connections,
        ));
    }
    handshakes.shutdown().await;
}

async fn handshake(
    acceptor: Arc<TlsAcceptor>,
    mut tcp: TcpStream,
    mut addr: SocketAddr,
    proxy_trusted: Arc<[Cidr]>,
    connections: mpsc::Sender<io::Result<TlsConnection>>,
) {
    if !proxy_trusted.is_empty() {
        match read_preamble(&mut tcp, addr, &proxy_trusted, HANDSHAKE_TIMEOUT).await {
            Ok(Preamble::Proxied(source)) => {
                tracing::debug!(peer = %addr, caller_addr = %source, "PROXY header accepted");
                addr = source;
            }
            Ok(Preamble::None | Preamble::Local) => {}
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "Connection closed before TLS");
                return;
            }
        }
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let peer = peer_of(&stream, addr);
            let _ = connections.send(Ok(PeerIo::new(stream, peer))).await;
        }
        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
    }
}
