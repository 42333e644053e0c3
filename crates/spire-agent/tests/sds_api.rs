//! Envoy SDS v3 on the agent's socket, through tonic's generated SDS client, with a manager
//! the test drives: pushes on rotation and bundle change with increasing versions, NACKs,
//! streams that end (their cache subscription with them) when Envoy goes away or never
//! ACKs, and `disable_sds_api` / `disable_workload_api`. The comparison with upstream's
//! agent is the e2e test `sds`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prost::Message;
use spire_agent::config::SdsSettings;
use spire_agent::manager::{
    JwtIdentity, ManagerError, WorkloadIdentities, WorkloadUpdate, X509Identity,
};
use spire_agent::plugins::workloadattestor::{AttestError, PeerProcess, WorkloadAttestor};
use spire_agent::workload::{self, WorkloadApiError, WorkloadApiOptions};
use spire_core::bundle::Bundle;
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::sds::discovery::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse};
use spire_proto::sds::secret::secret_discovery_service_client::SecretDiscoveryServiceClient;
use spire_proto::sds::tls::{Secret, secret};
use spire_proto::workload::X509svidRequest;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

struct FakeIdentities {
    updates: watch::Sender<Arc<WorkloadUpdate>>,
}

fn identity(path: &str, chain: &[u8]) -> X509Identity {
    X509Identity {
        entry_id: path.to_owned(),
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap(),
        hint: String::new(),
        chain: vec![chain.to_vec()],
        key: Arc::new(PrivateKey::generate(KeyType::EcP256).unwrap()),
        federates_with: Vec::new(),
    }
}

fn bundle(ca: &[u8]) -> Arc<Bundle> {
    let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
    bundle.x509_authorities.push(ca.to_vec());
    Arc::new(bundle)
}

impl FakeIdentities {
    fn new() -> Arc<Self> {
        let update = WorkloadUpdate {
            identities: vec![identity("web", b"svid-1")],
            bundle: bundle(b"ca-1"),
            federated_bundles: BTreeMap::new(),
        };
        Arc::new(Self {
            updates: watch::Sender::new(Arc::new(update)),
        })
    }

    fn modify(&self, change: impl FnOnce(&mut WorkloadUpdate)) {
        self.updates.send_modify(|update| {
            let mut next = WorkloadUpdate::clone(update);
            change(&mut next);
            *update = Arc::new(next);
        });
    }

    /// Open subscriptions (streams) besides the sender's own.
    fn subscribers(&self) -> usize {
        self.updates.receiver_count()
    }
}

#[async_trait]
impl WorkloadIdentities for FakeIdentities {
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
        watch::Sender::new(Arc::new(BTreeMap::new())).subscribe()
    }
}

struct FakeAttestor;

#[async_trait]
impl WorkloadAttestor for FakeAttestor {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn attest(&self, _peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        Ok(vec![Selector::new("fake", "envoy").unwrap()])
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Arc<FakeIdentities>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), WorkloadApiError>>,
}

impl Harness {
    async fn start(disable_sds_api: bool, disable_workload_api: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let fake = FakeIdentities::new();
        let cancel = CancellationToken::new();
        let options = WorkloadApiOptions {
            sds: SdsSettings::default(),
            disable_sds_api,
            disable_workload_api,
            ..WorkloadApiOptions::default()
        };
        let task = tokio::spawn(workload::serve_with_options(
            Arc::clone(&fake) as Arc<dyn WorkloadIdentities>,
            vec![Arc::new(FakeAttestor)],
            options,
            socket.clone(),
            cancel.clone(),
        ));
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "no socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            _dir: dir,
            socket,
            fake,
            cancel,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        channel(&self.socket).await
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops when cancelled, even with open streams")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

async fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE.to_owned(),
        response_nonce: nonce.to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// An open StreamSecrets: what to send, and what came back.
struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn open(channel: Channel, first: DiscoveryRequest) -> Self {
        let (tx, requests) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = SecretDiscoveryServiceClient::new(channel)
            .stream_secrets(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .expect("the stream stays open")
    }

    async fn nothing_within(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected message: {message:?}");
        }
    }
}

/// (name, chain or CA bytes) of each secret.
fn contents(response: &DiscoveryResponse) -> Vec<(String, String)> {
    response
        .resources
        .iter()
        .map(|any| {
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            let text = match secret.r#type {
                Some(secret::Type::TlsCertificate(c)) => format!("{:?}", c.certificate_chain),
                Some(secret::Type::ValidationContext(v)) => format!("{v:?}"),
                other => panic!("unexpected secret {other:?}"),
            };
            (secret.name, text)
        })
        .collect()
}

async fn eventually_subscribers(fake: &FakeIdentities, wanted: usize) {
    let start = Instant::now();
    while fake.subscribers() != wanted {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} subscriptions open, wanted {wanted}",
            fake.subscribers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stream_pushes_rotations_and_bundle_changes_and_handles_acks() {
    let harness = Harness::start(false, false).await;
    let baseline = harness.fake.subscribers();
    let mut stream = Stream::open(
        harness.channel().await,
        request(&["default", "ROOTCA"], "", ""),
    )
    .await;
    let first = stream.next().await;
    assert_eq!(first.version_info, "1");
    assert_eq!(first.nonce.len(), 8);
    let names: Vec<String> = contents(&first).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["ROOTCA", "default"]);
    assert_eq!(harness.fake.subscribers(), baseline + 1);

    // ACK: nothing more until something changes.
    stream
        .send(request(&["default", "ROOTCA"], "1", &first.nonce))
        .await;
    stream.nothing_within(Duration::from_millis(300)).await;

    // A rotation is pushed with the next version.
    harness
        .fake
        .modify(|u| u.identities = vec![identity("web", b"svid-2")]);
    let rotated = stream.next().await;
    assert_eq!(rotated.version_info, "2");
    assert_ne!(contents(&rotated)[1], contents(&first)[1], "the new SVID");
    assert_ne!(rotated.nonce, first.nonce);

    // NACK (the old version with the new nonce): logged, not answered.
    let mut nack = request(&["default", "ROOTCA"], "1", &rotated.nonce);
    nack.error_detail = Some(envoy_status("bad certificate"));
    stream.send(nack).await;
    stream.nothing_within(Duration::from_millis(300)).await;

    // A bundle change is pushed too.
    harness.fake.modify(|u| u.bundle = bundle(b"ca-2"));
    let rebundled = stream.next().await;
    assert_eq!(rebundled.version_info, "3");

    // A stale nonce is ignored even when it changes the names; the right one is answered.
    stream.send(request(&["ROOTCA"], "3", "stale")).await;
    stream.nothing_within(Duration::from_millis(300)).await;
    stream
        .send(request(&["default"], "3", &rebundled.nonce))
        .await;
    let narrowed = stream.next().await;
    assert_eq!(narrowed.version_info, "3");
    let names: Vec<String> = contents(&narrowed).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["default"]);

    // Envoy going away ends the stream and its subscription.
    drop(stream);
    eventually_subscribers(&harness.fake, baseline).await;
    harness.stop().await;
}

fn envoy_status(message: &str) -> spire_proto::sds::rpc::Status {
    spire_proto::sds::rpc::Status {
        code: 3,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

#[tokio::test]
async fn streams_that_never_ack_or_ask_for_unknown_names_do_not_leak() {
    let harness = Harness::start(false, false).await;
    let baseline = harness.fake.subscribers();
    // Many streams that never ACK and never read past the first answer.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = Stream::open(harness.channel().await, request(&["default"], "", "")).await;
        stream.next().await;
        held.push(stream);
    }
    eventually_subscribers(&harness.fake, baseline + 20).await;
    // Updates keep flowing to them without blocking anything else.
    for n in 0..5u8 {
        harness
            .fake
            .modify(|u| u.identities = vec![identity("web", &[n])]);
    }
    let fetched = SecretDiscoveryServiceClient::new(harness.channel().await)
        .fetch_secrets(request(&["default"], "", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.version_info.is_empty() && fetched.nonce.is_empty());
    drop(held);
    eventually_subscribers(&harness.fake, baseline).await;

    // An unknown name ends the stream with upstream's status.
    let mut stream = Stream::open(harness.channel().await, request(&["nope"], "", "")).await;
    let status = tokio::time::timeout(Duration::from_secs(10), stream.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        r#"workload is not authorized for the requested identities ["nope"]"#
    );
    eventually_subscribers(&harness.fake, baseline).await;

    let delta = SecretDiscoveryServiceClient::new(harness.channel().await)
        .delta_secrets(tokio_stream::iter([DeltaDiscoveryRequest::default()]))
        .await
        .unwrap_err();
    assert_eq!(delta.code(), Code::Unimplemented);
    assert_eq!(delta.message(), "Method is not implemented");
    harness.stop().await;
}

#[tokio::test]
async fn each_api_can_be_disabled_alone() {
    let fetch_secrets = |channel: Channel| async move {
        SecretDiscoveryServiceClient::new(channel)
            .fetch_secrets(request(&["default"], "", ""))
            .await
    };
    let fetch_x509 = |channel: Channel| async move {
        let mut request = Request::new(X509svidRequest {});
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        SpiffeWorkloadApiClient::new(channel)
            .fetch_x509svid(request)
            .await
            .map(|_| ())
    };

    let no_sds = Harness::start(true, false).await;
    let err = fetch_secrets(no_sds.channel().await).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    fetch_x509(no_sds.channel().await).await.unwrap();
    no_sds.stop().await;

    let no_workload = Harness::start(false, true).await;
    fetch_secrets(no_workload.channel().await).await.unwrap();
    let err = fetch_x509(no_workload.channel().await).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    no_workload.stop().await;
}
