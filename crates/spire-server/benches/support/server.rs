//! An in-process server for the benchmarks: what `spire-server run` builds on a fresh
//! database of the selected engine, minus the listeners, and the helpers that call it as an
//! agent or an admin would.

#![allow(dead_code, reason = "each benchmark uses part of it")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::spire::api::types;
use spire_server::api::ratelimit::RateLimiters;
use spire_server::api::{ApiContext, ApiSettings, Caller};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::datastore::{AttestedNode, DataStore};
use spire_server::plugins::keymanager::memory::MemoryKeyManager;
use spire_server::plugins::nodeattestor::NodeAttestors;
use tonic::Request;

use super::{BenchDb, Engine};

/// The trust domain of every benchmark server.
pub(crate) const TD: &str = "example.org";

/// One in-process server: what `spire-server run` builds, minus the listeners.
pub(crate) struct Server {
    pub(crate) ctx: Arc<ApiContext>,
    pub(crate) db: BenchDb,
}

/// A server on a fresh database of the selected engine; `label` names the database.
pub(crate) async fn server(label: &str) -> Server {
    let db = BenchDb::create(Engine::from_env(), label).await;
    let config: SqlConfig = db.config();
    let datastore: Arc<dyn DataStore> =
        Arc::new(SqlDataStore::open(&config).await.unwrap_or_else(|e| {
            panic!("opening the {} datastore: {e}", db.engine.database_type())
        }));
    let trust_domain = TrustDomain::new(TD).unwrap();
    let ca = CaManager::new(
        CaConfig::new(trust_domain.clone()),
        Arc::new(MemoryKeyManager::new()),
        None,
        datastore.clone(),
    )
    .await
    .expect("CA manager");
    let index = AuthorizedIndex::load(datastore.clone())
        .await
        .expect("index");
    let node_attestors = NodeAttestors::join_token_only(datastore.clone(), &trust_domain);
    let bundle_refresher = spire_server::federation::refresher::BundleRefresher::new(
        datastore.clone(),
        trust_domain.clone(),
        &Default::default(),
        Default::default(),
    );
    let ctx = Arc::new(ApiContext {
        trust_domain,
        datastore,
        ca,
        index,
        settings: ApiSettings {
            rate_limit_attestation: false,
            rate_limit_signing: false,
            ..ApiSettings::default()
        },
        log_level: Default::default(),
        started_at: Instant::now(),
        rate_limits: RateLimiters::new(false, false),
        node_attestors,
        bundle_refresher,
    });
    Server { ctx, db }
}

pub(crate) fn agent_id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/spire/agent/join_token/{name}")).unwrap()
}

/// Stores an attested agent whose SVID is current, as a successful attestation would.
pub(crate) async fn add_agent(server: &Server, id: &SpiffeId) {
    server
        .ctx
        .datastore
        .create_attested_node(AttestedNode {
            spiffe_id: id.to_string(),
            attestation_data_type: "join_token".into(),
            cert_serial_number: "1".into(),
            cert_not_after: 4_000_000_000,
            ..AttestedNode::default()
        })
        .await
        .expect("create agent");
}

pub(crate) fn agent_caller(id: &SpiffeId) -> Caller {
    Caller {
        agent_id: Some(id.clone()),
        spiffe_id: Some(id.clone()),
        ..Caller::default()
    }
}

pub(crate) fn admin_caller() -> Caller {
    Caller {
        local: true,
        ..Caller::default()
    }
}

pub(crate) fn req<T>(caller: Caller, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(caller);
    request
}

/// Runs the server `serve` starts (it returns the address it listens on) alone on a thread
/// named `name` with a current-thread runtime: the accept loop, the connections, the
/// handlers and the tasks they spawn all run there, so the CPU time of that thread
/// ([`ServerThread::cpu`]) is the server's share of an exchange (handlers, index, protobuf
/// encoding, HTTP/2 framing), without the bench client's work. SQLite's own worker thread
/// is not included.
pub(crate) fn on_own_thread<F, Fut>(name: &str, serve: F) -> (SocketAddr, ServerThread)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = SocketAddr>,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let addr = serve().await;
                // `/proc/thread-self` links to `<pid>/task/<tid>`.
                let task = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
                ready_tx.send((addr, task)).expect("bench thread gone");
                std::future::pending::<()>().await;
            });
        });
    spawned.expect("server thread");
    let (addr, task) = ready_rx.recv().expect("server thread failed");
    (
        addr,
        ServerThread {
            schedstat: std::path::Path::new("/proc").join(task).join("schedstat"),
        },
    )
}

/// The thread [`on_own_thread`] runs its server on.
pub(crate) struct ServerThread {
    schedstat: std::path::PathBuf,
}

impl ServerThread {
    /// CPU time the thread has used so far (`/proc/<pid>/task/<tid>/schedstat`, first field,
    /// nanoseconds).
    pub(crate) fn cpu(&self) -> Duration {
        let text = std::fs::read_to_string(&self.schedstat).expect("schedstat");
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("schedstat field");
        Duration::from_nanos(ns)
    }
}

/// Connections to a new loopback TCP listener, each with `TCP_NODELAY` set as the server's
/// TCP endpoint sets it (without it small responses wait on delayed ACKs), and the
/// listener's address.
pub(crate) async fn loopback_incoming() -> (
    SocketAddr,
    impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(stream) = &conn {
                let _ = stream.set_nodelay(true);
            }
            conn
        },
    );
    (addr, incoming)
}

/// A SPIFFE ID of [`TD`] in its wire form.
pub(crate) fn wire_id(path: &str) -> Option<types::Spiffeid> {
    Some(types::Spiffeid {
        trust_domain: TD.into(),
        path: path.into(),
    })
}
