//! The agent's client for the SPIRE server's TCP API (agent, entry, svid and bundle
//! services), over TLS with ALPN h2.
//!
//! The server must present the X509-SVID of `spiffe://<trust domain>/spire/server` chained
//! to the agent's trust bundle (or, during insecure bootstrap only, any chain naming that
//! ID). The agent presents its own SVID once attested. One HTTP/2 connection is cached and
//! shared by every gRPC client handed out; [`ServerClient::set_identity`] and
//! [`ServerClient::set_bundle`] drop it so the next call reconnects with the new
//! credentials (the server promotes a renewed SVID on its first use).
//!
//! With several servers behind one address (a DNS name with several addresses, or a load
//! balancer), a server that stops or hangs must not strand the agent: as upstream's client
//! does, every call has a deadline ([`RPC_TIMEOUT`]) and a failed call drops the cached
//! connection, so the next call dials again; a dial tries every address the name resolves
//! to, each for at most [`ADDRESS_CONNECT_TIMEOUT`], starting one further along each time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::plugins::keymanager::AgentKey;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::agent::v1::agent_client::AgentClient;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use spire_proto::spire::api::server::svid::v1::svid_client::SvidClient;
use spire_proto::spire_rs::agent::notify::v1::agent_notify_client::AgentNotifyClient;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

pub mod denial;
mod server_api;
mod tls;

pub use self::denial::{AgentDenied, DenialKind, classify_denial};

/// How long dialing the server (TCP and TLS) may take before the call fails Unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one address may take to accept a TCP connection before the next is tried, so a
/// dead server host does not use up a dial meant for its healthy peers.
pub const ADDRESS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The deadline of every call to the server (upstream's agent client uses the same 30 s), so
/// a server that hung mid-connection fails the call instead of stalling the agent.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The trust bundle is empty or holds an unusable certificate.
    #[error("invalid trust bundle: {0}")]
    InvalidBundle(String),
    /// The agent SVID or its key cannot be used for TLS.
    #[error("invalid agent identity: {0}")]
    InvalidIdentity(String),
    /// The TLS configuration could not be built.
    #[error("{0}")]
    Tls(String),
    /// `server_address` and `server_port` do not form a usable endpoint.
    #[error("invalid server address {0:?}")]
    InvalidAddress(String),
}

/// The agent's X509-SVID (leaf first, DER) and its private key, presented to the server.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The SVID chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The SVID's private key (in process or in a KeyManager plugin).
    pub key: AgentKey,
}

/// How the agent decides to trust the server it dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Trust chains to these X.509 roots (DER), from the stored or configured bundle.
    Bundle(Vec<Vec<u8>>),
    /// `insecure_bootstrap = true`: accept any chain that names the server's SPIFFE ID, for
    /// the first attestation only; call [`ServerClient::set_bundle`] right after.
    InsecureBootstrap,
}

/// Where the server is: `server_address`, `server_port` and `trust_domain` of agent.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// Host name or IP address of the server.
    pub server_address: String,
    /// TCP port of the server API.
    pub server_port: u16,
    /// The agent's trust domain; the server must be `spiffe://<td>/spire/server`.
    pub trust_domain: TrustDomain,
}

/// A cheap-to-clone handle on the agent's connection to the server.
#[derive(Debug, Clone)]
pub struct ServerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    host: String,
    port: u16,
    server_id: String,
    /// The configuration new TLS connections use; read by the connector on every dial.
    tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    /// Counts dials, so each starts at a different resolved address.
    dials: Arc<AtomicUsize>,
    state: Mutex<State>,
    /// The latest denial of the agent itself seen on any call, until cleared.
    denial: watch::Sender<Option<AgentDenied>>,
    /// The server answered SyncAuthorizedEntries with Unimplemented: use
    /// GetAuthorizedEntries (servers before SyncAuthorizedEntries existed).
    no_sync_rpc: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct State {
    roots: Option<Vec<Vec<u8>>>,
    identity: Option<AgentIdentity>,
    channel: Option<Channel>,
}

impl ServerClient {
    /// A client for the server at `address`, trusting it per `trust`, presenting `identity`
    /// when the agent already has an SVID. No connection is made until the first call.
    pub fn new(
        address: &ServerAddress,
        trust: ServerTrust,
        identity: Option<AgentIdentity>,
    ) -> Result<Self, ClientError> {
        let server_id = format!("spiffe://{}/spire/server", address.trust_domain);
        let roots = match trust {
            ServerTrust::Bundle(roots) => Some(roots),
            ServerTrust::InsecureBootstrap => None,
        };
        let config = tls::client_config(
            tls::server_verifier(roots.as_deref(), &server_id)?,
            identity.as_ref(),
        )?;
        // The URI only names the target in logs; the connector dials host:port itself.
        let uri = format!(
            "http://{}:{}",
            bracket_ipv6(&address.server_address),
            address.server_port
        );
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|_| ClientError::InvalidAddress(uri))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                host: address.server_address.clone(),
                port: address.server_port,
                server_id,
                tls: Arc::new(RwLock::new(Arc::new(config))),
                dials: Arc::new(AtomicUsize::new(0)),
                state: Mutex::new(State {
                    roots,
                    identity,
                    channel: None,
                }),
                denial: watch::Sender::new(None),
                no_sync_rpc: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The SPIFFE ID the server must present, `spiffe://<td>/spire/server`.
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    /// The trust bundle roots in use; `None` during insecure bootstrap.
    pub fn bundle(&self) -> Option<Vec<Vec<u8>>> {
        self.lock().roots.clone()
    }

    /// The agent SVID presented to the server, if any.
    pub fn identity(&self) -> Option<AgentIdentity> {
        self.lock().identity.clone()
    }

    /// Presents `chain` and `key` on every later connection (after attestation or
    /// renewal). The cached connection is dropped; calls already running finish on it.
    pub fn set_identity(&self, chain: Vec<Vec<u8>>, key: AgentKey) -> Result<(), ClientError> {
        let mut state = self.lock();
        let identity = AgentIdentity { chain, key };
        let roots = state.roots.clone();
        self.rebuild(&mut state, roots, Some(identity.clone()))?;
        state.identity = Some(identity);
        Ok(())
    }

    /// Trusts `roots` from now on (after insecure bootstrap, or when the bundle rotates).
    /// The cached connection is dropped.
    pub fn set_bundle(&self, roots: Vec<Vec<u8>>) -> Result<(), ClientError> {
        let mut state = self.lock();
        let identity = state.identity.clone();
        self.rebuild(&mut state, Some(roots.clone()), identity)?;
        state.roots = Some(roots);
        Ok(())
    }

    /// Notes a failed call: the cached connection is dropped so the next call dials again
    /// (possibly reaching another server behind the same address, as upstream's client
    /// releases its connection on every error), and when `status` is the server denying the
    /// agent itself (evicted, expired, banned: see [`classify_denial`]) it is recorded, so
    /// whoever owns the agent SVID learns of it from [`ServerClient::denials`] whichever call
    /// saw it first (sync, minting, renewal). Returns the denial.
    pub fn note_status(&self, status: &tonic::Status) -> Option<AgentDenied> {
        self.reset_connection();
        let denial = classify_denial(status)?;
        tracing::warn!(reason = ?denial.kind, error = %denial.message, "the SPIRE server denied the agent");
        self.inner.denial.send_replace(Some(denial.clone()));
        Some(denial)
    }

    /// Watches the denials [`ServerClient::note_status`] records; `None` until one is seen.
    pub fn denials(&self) -> watch::Receiver<Option<AgentDenied>> {
        self.inner.denial.subscribe()
    }

    /// Forgets the recorded denial, after the agent attested again.
    pub fn clear_denial(&self) {
        self.inner.denial.send_replace(None);
    }

    /// A separate client for the same server and trust bundle that presents no SVID, for
    /// attesting again after the server stopped accepting the current one (upstream dials
    /// a fresh connection for re-attestation too). Its denials are its own.
    pub fn without_identity(&self) -> Result<Self, ClientError> {
        let roots = self.bundle();
        let config = tls::client_config(
            tls::server_verifier(roots.as_deref(), &self.inner.server_id)?,
            None,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint: self.inner.endpoint.clone(),
                host: self.inner.host.clone(),
                port: self.inner.port,
                server_id: self.inner.server_id.clone(),
                tls: Arc::new(RwLock::new(Arc::new(config))),
                dials: Arc::new(AtomicUsize::new(0)),
                state: Mutex::new(State {
                    roots,
                    identity: None,
                    channel: None,
                }),
                denial: watch::Sender::new(None),
                no_sync_rpc: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Forgets the cached connection, e.g. after the server refused the agent.
    pub fn reset_connection(&self) {
        self.lock().channel = None;
    }

    /// The shared HTTP/2 channel, dialed on first use.
    pub fn channel(&self) -> Channel {
        let mut state = self.lock();
        if let Some(channel) = &state.channel {
            return channel.clone();
        }
        let channel = self.connect();
        state.channel = Some(channel.clone());
        channel
    }

    /// `spire.api.server.agent.v1.Agent`: AttestAgent, RenewAgent.
    pub fn agent_client(&self) -> AgentClient<Channel> {
        AgentClient::new(self.channel())
    }

    /// `spire.api.server.entry.v1.Entry`: GetAuthorizedEntries, SyncAuthorizedEntries.
    pub fn entry_client(&self) -> EntryClient<Channel> {
        EntryClient::new(self.channel())
    }

    /// `spire.api.server.svid.v1.SVID`: BatchNewX509SVID, NewJWTSVID.
    pub fn svid_client(&self) -> SvidClient<Channel> {
        SvidClient::new(self.channel())
    }

    /// `spire_rs.agent.notify.v1.AgentNotify`: our own WatchSyncHints (not upstream's).
    pub fn notify_client(&self) -> AgentNotifyClient<Channel> {
        AgentNotifyClient::new(self.channel())
    }

    /// `spire.api.server.bundle.v1.Bundle`: GetBundle, ListFederatedBundles.
    pub fn bundle_client(&self) -> BundleClient<Channel> {
        BundleClient::new(self.channel())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced field by field after every fallible step, so a poisoned
        // lock still guards consistent data.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rebuild(
        &self,
        state: &mut State,
        roots: Option<Vec<Vec<u8>>>,
        identity: Option<AgentIdentity>,
    ) -> Result<(), ClientError> {
        let config = tls::client_config(
            tls::server_verifier(roots.as_deref(), &self.inner.server_id)?,
            identity.as_ref(),
        )?;
        *self
            .inner
            .tls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
        state.channel = None;
        Ok(())
    }

    fn connect(&self) -> Channel {
        let tls = self.inner.tls.clone();
        let host = self.inner.host.clone();
        let port = self.inner.port;
        let dials = self.inner.dials.clone();
        self.inner
            .endpoint
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let config = tls
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let host = host.clone();
                let start = dials.fetch_add(1, Ordering::Relaxed);
                async move {
                    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .collect();
                    let tcp = connect_any(&addresses, start, ADDRESS_CONNECT_TIMEOUT).await?;
                    // The server is identified by its SPIFFE ID, not by name; SNI carries
                    // the configured address when it is a valid name.
                    let name = ServerName::try_from(host)
                        .or_else(|_| ServerName::try_from("spire-server".to_owned()))
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    let tls = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
    }
}

/// Connects to the first of `addresses` that accepts within `per_address` each, trying them
/// in order from index `start` (wrapping), so successive dials spread over the servers and
/// one that is down or unreachable is skipped.
async fn connect_any(
    addresses: &[SocketAddr],
    start: usize,
    per_address: Duration,
) -> std::io::Result<TcpStream> {
    let mut last_error = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the server address resolves to no address",
    );
    let count = addresses.len();
    for offset in 0..count {
        let Some(address) = addresses.get(start.wrapping_add(offset) % count) else {
            continue;
        };
        match tokio::time::timeout(per_address, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                // Small gRPC messages (SyncAuthorizedEntries page requests) must not wait
                // for the server's delayed ACK (40 ms each on Linux).
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            Ok(Err(e)) => {
                tracing::debug!(%address, error = %e, "cannot connect to the server address");
                last_error = e;
            }
            Err(_) => {
                tracing::debug!(%address, "connecting to the server address timed out");
                last_error = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {address} timed out after {per_address:?}"),
                );
            }
        }
    }
    Err(last_error)
}

/// `::1` -> `[::1]`, so an IPv6 `server_address` forms a valid URI.
fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use tokio::net::{TcpListener, TcpSocket};

    /// A loopback port bound by a socket that never listens: connecting is refused at once,
    /// and nothing else can take the port while the caller holds the socket.
    fn refused_address() -> (TcpSocket, SocketAddr) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        let address = socket.local_addr().unwrap();
        (socket, address)
    }

    #[tokio::test]
    async fn a_dial_skips_addresses_that_refuse_or_hang() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_address = live.local_addr().unwrap();
        let (_refusing, refused) = refused_address();
        // TEST-NET-1 (RFC 5737): never routed, so a connect hangs or fails at once.
        let blackhole: SocketAddr = "192.0.2.1:8081".parse().unwrap();
        let started = std::time::Instant::now();
        let tcp = connect_any(
            &[blackhole, refused, live_address],
            0,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live_address);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "each dead address costs at most the per-address timeout: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn successive_dials_start_at_successive_addresses() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addresses = [first.local_addr().unwrap(), second.local_addr().unwrap()];
        for (start, expected) in [(0, addresses[0]), (1, addresses[1]), (2, addresses[0])] {
            let tcp = connect_any(&addresses, start, Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(tcp.peer_addr().unwrap(), expected, "start {start}");
        }
    }

    #[tokio::test]
    async fn no_address_that_accepts_is_an_error_naming_the_last_cause() {
        let (_refusing, refused) = refused_address();
        let err = connect_any(&[refused], 0, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = connect_any(&[], 0, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
