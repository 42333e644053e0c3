//! The agent's `health_checks` subsystem (`AgentHealth`) against a real Workload API on a
//! unix socket: ready while it answers, not ready (and not live) once it stops, ready again
//! when it is back, and upstream's answer when both public APIs are disabled. The bodies are
//! read over HTTP from the real `health_checks` listener.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spire_agent::client::AgentIdentity;
use spire_agent::health::AgentHealth;
use spire_agent::manager::{JwtIdentity, ManagerError, WorkloadIdentities, WorkloadUpdate};
use spire_agent::workload::{self, WorkloadApiError};
use spire_common::health::{self, HealthCheck, HealthConfig, Subsystems};
use spire_core::bundle::Bundle;
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{CaTemplate, Validity, self_signed_ca};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A manager with no identities: the Workload API answers, which is all the check needs.
struct NoIdentities {
    updates: watch::Sender<Arc<WorkloadUpdate>>,
    bundles: watch::Sender<Arc<BTreeMap<String, Arc<Bundle>>>>,
}

impl NoIdentities {
    fn new() -> Arc<Self> {
        let bundle = Arc::new(Bundle::new(TrustDomain::new("example.org").unwrap()));
        Arc::new(Self {
            updates: watch::Sender::new(Arc::new(WorkloadUpdate {
                identities: Vec::new(),
                bundle,
                federated_bundles: BTreeMap::new(),
            })),
            bundles: watch::Sender::new(Arc::new(BTreeMap::new())),
        })
    }
}

#[async_trait]
impl WorkloadIdentities for NoIdentities {
    fn subscribe(&self, _selectors: Vec<Selector>) -> watch::Receiver<Arc<WorkloadUpdate>> {
        self.updates.subscribe()
    }

    async fn fetch_jwt_svids(
        &self,
        _selectors: &[Selector],
        _spiffe_id: Option<&SpiffeId>,
        _audience: &[String],
    ) -> Result<Vec<JwtIdentity>, ManagerError> {
        Ok(Vec::new())
    }

    fn bundles(&self) -> watch::Receiver<Arc<BTreeMap<String, Arc<Bundle>>>> {
        self.bundles.subscribe()
    }
}

/// An agent identity whose certificate is valid for an hour.
fn identity() -> watch::Receiver<AgentIdentity> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let validity = Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(1));
    let td = TrustDomain::new("example.org").unwrap();
    let cert = self_signed_ca(&key, &CaTemplate::new(td, validity)).unwrap();
    let (tx, rx) = watch::channel(AgentIdentity {
        chain: vec![cert],
        key: spire_agent::plugins::keymanager::AgentKey::Local(Arc::new(key)),
    });
    std::mem::forget(tx);
    rx
}

/// Serves the Workload API on `socket` and waits until it accepts connections.
async fn serve_workload_api(
    socket: &Path,
) -> (CancellationToken, JoinHandle<Result<(), WorkloadApiError>>) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(workload::serve(
        NoIdentities::new() as Arc<dyn WorkloadIdentities>,
        Vec::new(),
        socket.to_owned(),
        cancel.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        assert!(Instant::now() < deadline, "the Workload API never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (cancel, task)
}

/// The real listener, fed by hand with the check's outcomes (the production loop waits a
/// minute between checks of a healthy agent, as upstream's).
struct Listener {
    port: u16,
    state: watch::Sender<Subsystems>,
    cancel: CancellationToken,
}

impl Listener {
    async fn start() -> Self {
        let config = HealthConfig {
            listener_enabled: true,
            bind_address: "127.0.0.1".into(),
            bind_port: 0,
            ..HealthConfig::default()
        };
        let listener = health::bind(&config).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, rx) = watch::channel(Subsystems::from([("agent".to_owned(), None)]));
        let cancel = CancellationToken::new();
        tokio::spawn({
            let cancel = cancel.clone();
            async move { health::serve(listener, &config, rx, cancel).await }
        });
        Self {
            port,
            state,
            cancel,
        }
    }

    /// Runs `check` once and answers `(status, body)` of `/live` and `/ready`.
    async fn probe(&self, check: &AgentHealth) -> ((u16, String), (u16, String)) {
        let state = check.check().await;
        self.state
            .send_replace(Subsystems::from([("agent".to_owned(), Some(state))]));
        (self.get("/live").await, self.get("/ready").await)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (code, body)
    }
}

const HEALTHY: &str = "{\"agent\":{}}\n";
const UNAVAILABLE: &str = "{\"agent\":{\"make_new_x509_err\":\"workload api is unavailable\"}}\n";

#[tokio::test]
async fn ready_follows_the_workload_api_with_upstreams_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let listener = Listener::start().await;
    let check = AgentHealth::new(Some(socket.clone()), identity());

    // Not listening yet: not ready, but live (a probe must not restart a starting agent).
    let (live, ready) = listener.probe(&check).await;
    assert_eq!(live, (200, HEALTHY.to_owned()));
    assert_eq!(ready, (500, UNAVAILABLE.to_owned()));

    let (cancel, task) = serve_workload_api(&socket).await;
    let (live, ready) = listener.probe(&check).await;
    assert_eq!(live, (200, HEALTHY.to_owned()));
    assert_eq!(ready, (200, HEALTHY.to_owned()));

    // The Workload API goes away after it started: neither ready nor live.
    cancel.cancel();
    task.await.unwrap().unwrap();
    let (live, ready) = listener.probe(&check).await;
    assert_eq!(live, (500, UNAVAILABLE.to_owned()));
    assert_eq!(ready, (500, UNAVAILABLE.to_owned()));

    // A stale socket file that nobody serves counts the same.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (live, ready) = listener.probe(&check).await;
    assert_eq!(live, (500, UNAVAILABLE.to_owned()));
    assert_eq!(ready, (500, UNAVAILABLE.to_owned()));

    // Back: ready again.
    let (cancel, task) = serve_workload_api(&socket).await;
    let (live, ready) = listener.probe(&check).await;
    assert_eq!(live, (200, HEALTHY.to_owned()));
    assert_eq!(ready, (200, HEALTHY.to_owned()));
    cancel.cancel();
    task.await.unwrap().unwrap();
    listener.cancel.cancel();
}

#[tokio::test]
async fn with_both_public_apis_disabled_a_started_agent_is_ready_as_upstreams() {
    // Upstream v1.15.3's CheckHealth without a bind address: Ready = started, Live = true,
    // no details, so both paths answer 200 `{"agent":null}`.
    let listener = Listener::start().await;
    let check = AgentHealth::new(None, identity());
    let (live, ready) = listener.probe(&check).await;
    assert_eq!(live, (200, "{\"agent\":null}\n".to_owned()));
    assert_eq!(ready, (200, "{\"agent\":null}\n".to_owned()));
    listener.cancel.cancel();
}
