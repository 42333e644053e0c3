//! The SPIFFE Workload API served on a real unix socket, driven by the generated tonic client
//! and by the independent `spiffe` crate, with a fake manager whose state the tests control.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spire_agent::manager::{
    JwtIdentity, ManagerError, WorkloadIdentities, WorkloadUpdate, X509Identity,
};
use spire_agent::plugins::workloadattestor::unix::{UnixAttestor, UnixAttestorConfig};
use spire_agent::plugins::workloadattestor::{AttestError, PeerProcess, WorkloadAttestor};
use spire_agent::workload::{self, WorkloadApiError};
use spire_core::bundle::Bundle;
use spire_core::jwt::{JwtAuthority, JwtSvidParams, mint_jwt_svid};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{
    CaTemplate, Issuer, SvidTemplate, Validity, self_signed_ca, x509_svid_for_key,
};
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use spire_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};

const JWT_KEY_ID: &str = "jwt-key-1";

/// A trust domain's CA and JWT signing key, and the bundle holding both.
struct Authority {
    ca_key: PrivateKey,
    ca_der: Vec<u8>,
    jwt_key: PrivateKey,
    bundle: Bundle,
}

fn validity() -> Validity {
    Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(1))
}

fn authority(trust_domain: &str) -> Authority {
    let td = TrustDomain::new(trust_domain).unwrap();
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let ca_der = self_signed_ca(&ca_key, &CaTemplate::new(td.clone(), validity())).unwrap();
    let jwt_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut bundle = Bundle::new(td);
    bundle.add_x509_authority(ca_der.clone()).unwrap();
    bundle
        .add_jwt_authority(JwtAuthority {
            key_id: JWT_KEY_ID.to_owned(),
            public_key_der: jwt_key.public_key_der(),
            expires_at: None,
        })
        .unwrap();
    Authority {
        ca_key,
        ca_der,
        jwt_key,
        bundle,
    }
}

fn x509_identity(authority: &Authority, id: &str, hint: &str) -> X509Identity {
    let spiffe_id = SpiffeId::parse(id).unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let issuer = Issuer::new(&authority.ca_der, &authority.ca_key).unwrap();
    let leaf = x509_svid_for_key(
        &issuer,
        &key.public_key_der(),
        &SvidTemplate::new(spiffe_id.clone(), validity()),
    )
    .unwrap();
    X509Identity {
        entry_id: format!("entry-{id}"),
        spiffe_id,
        hint: hint.to_owned(),
        chain: vec![leaf],
        key: Arc::new(key),
        federates_with: Vec::new(),
    }
}

fn mint(authority: &Authority, id: &SpiffeId, audience: &[String]) -> String {
    mint_jwt_svid(
        &authority.jwt_key,
        JWT_KEY_ID,
        &JwtSvidParams {
            subject: id.clone(),
            audience: audience.to_vec(),
            expires_at: time::OffsetDateTime::now_utc().unix_timestamp() + 600,
            issued_at: None,
            issuer: None,
            algorithm: None,
            jwt_id: None,
        },
    )
    .unwrap()
}

/// The manager as the tests want it: watch channels they push into, JWT-SVIDs minted on
/// demand for `jwt_ids`, and the selectors every call came with.
struct FakeIdentities {
    authority: Authority,
    updates: watch::Sender<Arc<WorkloadUpdate>>,
    bundles: watch::Sender<Arc<BTreeMap<String, Arc<Bundle>>>>,
    jwt_ids: Mutex<Vec<(SpiffeId, String)>>,
    seen_selectors: Mutex<Vec<Vec<Selector>>>,
}

impl FakeIdentities {
    fn new() -> Arc<Self> {
        let authority = authority("example.org");
        let bundle = Arc::new(authority.bundle.clone());
        let update = WorkloadUpdate {
            identities: Vec::new(),
            bundle: Arc::clone(&bundle),
            federated_bundles: BTreeMap::new(),
        };
        let all = BTreeMap::from([("example.org".to_owned(), bundle)]);
        Arc::new(Self {
            authority,
            updates: watch::Sender::new(Arc::new(update)),
            bundles: watch::Sender::new(Arc::new(all)),
            jwt_ids: Mutex::new(Vec::new()),
            seen_selectors: Mutex::new(Vec::new()),
        })
    }

    fn own_bundle(&self) -> Arc<Bundle> {
        Arc::clone(&self.updates.borrow().bundle)
    }

    fn set_identities(&self, identities: Vec<X509Identity>) {
        self.updates.send_modify(|update| {
            let mut next = WorkloadUpdate::clone(update);
            next.identities = identities;
            *update = Arc::new(next);
        });
    }

    fn set_update(&self, update: WorkloadUpdate) {
        self.updates.send_replace(Arc::new(update));
    }

    fn last_selectors(&self) -> Vec<Selector> {
        self.seen_selectors
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl WorkloadIdentities for FakeIdentities {
    fn subscribe(&self, selectors: Vec<Selector>) -> watch::Receiver<Arc<WorkloadUpdate>> {
        self.seen_selectors.lock().unwrap().push(selectors);
        self.updates.subscribe()
    }

    async fn fetch_jwt_svids(
        &self,
        selectors: &[Selector],
        spiffe_id: Option<&SpiffeId>,
        audience: &[String],
    ) -> Result<Vec<JwtIdentity>, ManagerError> {
        self.seen_selectors.lock().unwrap().push(selectors.to_vec());
        let ids = self.jwt_ids.lock().unwrap().clone();
        Ok(ids
            .into_iter()
            .filter(|(id, _)| spiffe_id.is_none_or(|wanted| wanted == id))
            .map(|(id, hint)| JwtIdentity {
                token: mint(&self.authority, &id, audience),
                spiffe_id: id,
                hint,
            })
            .collect())
    }

    fn bundles(&self) -> watch::Receiver<Arc<BTreeMap<String, Arc<Bundle>>>> {
        self.bundles.subscribe()
    }
}

/// Gives fixed selectors, or fails as a vanished process does.
struct FakeAttestor {
    fail: bool,
}

#[async_trait]
impl WorkloadAttestor for FakeAttestor {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        if self.fail {
            return Err(AttestError::ProcessGone(format!(
                "process {} not found",
                peer.pid
            )));
        }
        Ok(vec![Selector::new("fake", "workload").unwrap()])
    }
}

/// A Workload API served on a temp socket.
struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Arc<FakeIdentities>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), WorkloadApiError>>,
}

impl Harness {
    async fn start(attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("public").join("api.sock");
        let fake = FakeIdentities::new();
        let cancel = CancellationToken::new();
        let identities: Arc<dyn WorkloadIdentities> = Arc::clone(&fake) as _;
        let task = tokio::spawn(workload::serve(
            identities,
            attestors,
            socket.clone(),
            cancel.clone(),
        ));
        wait_for_socket(&socket).await;
        Self {
            _dir: dir,
            socket,
            fake,
            cancel,
            task,
        }
    }

    async fn with_fake_attestor() -> Self {
        Self::start(vec![Arc::new(FakeAttestor { fail: false })]).await
    }

    async fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
        let path = self.socket.clone();
        let channel = Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap();
        SpiffeWorkloadApiClient::new(channel)
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

fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// The first message of an X509-SVID stream, or the status that ended it.
async fn first_x509(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> (
    Result<X509svidResponse, Status>,
    Option<tonic::Streaming<X509svidResponse>>,
) {
    match client.fetch_x509svid(with_header(X509svidRequest {})).await {
        Err(status) => (Err(status), None),
        Ok(response) => {
            let mut stream = response.into_inner();
            let first = match stream.message().await {
                Ok(Some(message)) => Ok(message),
                Ok(None) => panic!("stream ended without a message"),
                Err(status) => Err(status),
            };
            (first, Some(stream))
        }
    }
}

async fn next_within<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update within 5 s")
        .unwrap()
        .expect("the stream stays open")
}

#[tokio::test]
async fn socket_is_world_writable_in_a_created_folder() {
    let harness = Harness::with_fake_attestor().await;
    let mode = std::fs::metadata(&harness.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o777);
    let parent = harness.socket.parent().unwrap();
    // Created 0755 (less under a stricter umask, as upstream's MkdirAll): never writable by
    // others, who could otherwise replace the socket.
    let dir_mode = std::fs::metadata(parent).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o022, 0, "{dir_mode:o}");
    assert_eq!(dir_mode & 0o700, 0o700, "{dir_mode:o}");
    harness.stop().await;
}

/// Waits until the Workload API socket accepts connections, failing the test after 10 s.
async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(path).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "Workload API socket {} did not accept connections within 10 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    std::fs::write(&socket, b"stale").unwrap();
    let fake = FakeIdentities::new();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(workload::serve(
        fake as Arc<dyn WorkloadIdentities>,
        Vec::new(),
        socket.clone(),
        cancel.clone(),
    ));
    wait_for_socket(&socket).await;
    cancel.cancel();
    assert!(task.await.unwrap().is_ok());
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

#[tokio::test]
async fn missing_security_header_is_invalid_argument() {
    let harness = Harness::with_fake_attestor().await;
    let mut client = harness.client().await;

    let status = client
        .fetch_x509svid(Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");

    // The header is checked before anything else, even a missing audience.
    let status = client
        .fetch_jwtsvid(Request::new(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");

    let mut wrong = Request::new(ValidateJwtsvidRequest {
        audience: "a".into(),
        svid: "b".into(),
    });
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let status = client.validate_jwtsvid(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    harness.stop().await;
}

#[tokio::test]
async fn caller_without_identity_is_permission_denied() {
    let harness = Harness::with_fake_attestor().await;
    let mut client = harness.client().await;

    let (first, _) = first_x509(&mut client).await;
    let status = first.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("no identity issued"));

    let status = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("no identity issued"));

    let bundles = match client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
    {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(bundles.code(), Code::PermissionDenied);
    harness.stop().await;
}

#[tokio::test]
async fn x509_svid_is_sent_then_pushed_again_on_every_change() {
    let harness = Harness::with_fake_attestor().await;
    let fake = &harness.fake;
    let federated = authority("fed.example");
    let first_identity = x509_identity(&fake.authority, "spiffe://example.org/web", "web");
    fake.set_update(WorkloadUpdate {
        identities: vec![first_identity.clone()],
        bundle: fake.own_bundle(),
        federated_bundles: BTreeMap::from([(
            "fed.example".to_owned(),
            Arc::new(federated.bundle.clone()),
        )]),
    });
    let mut client = harness.client().await;

    let (first, stream) = first_x509(&mut client).await;
    let first = first.unwrap();
    assert_eq!(first.svids.len(), 1);
    let svid = &first.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/web");
    assert_eq!(svid.x509_svid, first_identity.chain.concat());
    assert_eq!(svid.x509_svid_key, first_identity.key.pkcs8_der());
    assert_eq!(svid.bundle, fake.authority.ca_der);
    assert_eq!(svid.hint, "web");
    assert_eq!(
        first.federated_bundles.get("spiffe://fed.example"),
        Some(&federated.ca_der)
    );
    assert_eq!(
        harness.fake.last_selectors(),
        vec![Selector::new("fake", "workload").unwrap()]
    );

    // A rotation reaches the open stream.
    let mut stream = stream.unwrap();
    let rotated = x509_identity(&fake.authority, "spiffe://example.org/web", "web");
    fake.set_identities(vec![rotated.clone()]);
    let second = next_within(&mut stream).await;
    assert_eq!(second.svids[0].x509_svid, rotated.chain.concat());

    // Two entries with the same hint: only the first is sent; no hint means no dedup.
    fake.set_identities(vec![
        x509_identity(&fake.authority, "spiffe://example.org/a", "shared"),
        x509_identity(&fake.authority, "spiffe://example.org/b", "shared"),
        x509_identity(&fake.authority, "spiffe://example.org/c", ""),
        x509_identity(&fake.authority, "spiffe://example.org/d", ""),
    ]);
    let third = next_within(&mut stream).await;
    let ids: Vec<&str> = third.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/a",
            "spiffe://example.org/c",
            "spiffe://example.org/d"
        ]
    );

    // The entry deleted: the stream ends with PermissionDenied.
    fake.set_identities(Vec::new());
    let status = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    harness.stop().await;
}

#[tokio::test]
async fn open_stream_ends_cleanly_when_the_agent_stops() {
    let harness = Harness::with_fake_attestor().await;
    let identity = x509_identity(&harness.fake.authority, "spiffe://example.org/w", "");
    harness.fake.set_identities(vec![identity]);
    let mut client = harness.client().await;
    let (first, stream) = first_x509(&mut client).await;
    first.unwrap();
    let mut stream = stream.unwrap();
    harness.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn a_client_going_away_does_not_disturb_other_workloads() {
    let harness = Harness::with_fake_attestor().await;
    let identity = x509_identity(&harness.fake.authority, "spiffe://example.org/w", "");
    harness.fake.set_identities(vec![identity]);

    let mut gone = harness.client().await;
    let (first, stream) = first_x509(&mut gone).await;
    first.unwrap();
    drop(stream);
    drop(gone);

    let mut other = harness.client().await;
    let (first, stream) = first_x509(&mut other).await;
    first.unwrap();
    let mut stream = stream.unwrap();
    let rotated = x509_identity(&harness.fake.authority, "spiffe://example.org/w", "");
    harness.fake.set_identities(vec![rotated.clone()]);
    let next = next_within(&mut stream).await;
    assert_eq!(next.svids[0].x509_svid, rotated.chain.concat());
    harness.stop().await;
}

#[tokio::test]
async fn bundle_streams_send_own_and_federated_bundles_and_push_changes() {
    let harness = Harness::with_fake_attestor().await;
    let fake = &harness.fake;
    let federated = authority("fed.example");
    fake.set_update(WorkloadUpdate {
        identities: vec![x509_identity(&fake.authority, "spiffe://example.org/w", "")],
        bundle: fake.own_bundle(),
        federated_bundles: BTreeMap::from([(
            "fed.example".to_owned(),
            Arc::new(federated.bundle.clone()),
        )]),
    });
    let mut client = harness.client().await;

    let mut x509 = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut x509).await;
    assert_eq!(first.bundles.len(), 2);
    assert_eq!(
        first.bundles.get("spiffe://example.org"),
        Some(&fake.authority.ca_der)
    );
    assert_eq!(
        first.bundles.get("spiffe://fed.example"),
        Some(&federated.ca_der)
    );

    let mut jwt = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut jwt).await;
    assert_eq!(first.bundles.len(), 2);
    let own: serde_json::Value =
        serde_json::from_slice(&first.bundles["spiffe://example.org"]).unwrap();
    let keys = own["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "only JWT authorities: {own}");
    assert_eq!(keys[0]["kid"], JWT_KEY_ID);
    assert_eq!(keys[0]["use"], "jwt-svid");
    let parsed = Bundle::from_spiffe_document(
        TrustDomain::new("example.org").unwrap(),
        &first.bundles["spiffe://example.org"],
    )
    .unwrap();
    assert_eq!(
        parsed.jwt_authorities,
        fake.authority.bundle.jwt_authorities
    );

    // A new X.509 authority: both streams push; the JWT stream's content is unchanged and
    // so it sends nothing until a JWT authority changes.
    let extra = authority("example.org");
    let mut bundle = Bundle::clone(&fake.own_bundle());
    bundle.add_x509_authority(extra.ca_der.clone()).unwrap();
    let update = WorkloadUpdate::clone(&fake.updates.borrow());
    fake.set_update(WorkloadUpdate {
        bundle: Arc::new(bundle.clone()),
        ..update
    });
    let second = next_within(&mut x509).await;
    assert_eq!(
        second.bundles["spiffe://example.org"],
        [fake.authority.ca_der.clone(), extra.ca_der.clone()].concat()
    );
    bundle
        .add_jwt_authority(JwtAuthority {
            key_id: "jwt-key-2".into(),
            public_key_der: extra.jwt_key.public_key_der(),
            expires_at: None,
        })
        .unwrap();
    let update = WorkloadUpdate::clone(&fake.updates.borrow());
    fake.set_update(WorkloadUpdate {
        bundle: Arc::new(bundle),
        ..update
    });
    let second = next_within(&mut jwt).await;
    let own: serde_json::Value =
        serde_json::from_slice(&second.bundles["spiffe://example.org"]).unwrap();
    assert_eq!(own["keys"].as_array().unwrap().len(), 2);
    harness.stop().await;
}

#[tokio::test]
async fn jwt_svid_needs_an_audience_and_returns_the_minted_tokens() {
    let harness = Harness::with_fake_attestor().await;
    let mut client = harness.client().await;

    let status = client
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "audience must be specified");

    let status = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "not a spiffe id".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    *harness.fake.jwt_ids.lock().unwrap() = vec![
        (
            SpiffeId::parse("spiffe://example.org/a").unwrap(),
            "h".into(),
        ),
        (
            SpiffeId::parse("spiffe://example.org/b").unwrap(),
            "h".into(),
        ),
        (
            SpiffeId::parse("spiffe://example.org/c").unwrap(),
            String::new(),
        ),
    ];
    let response = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = response
        .svids
        .iter()
        .map(|s| s.spiffe_id.as_str())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/c"]);
    assert_eq!(response.svids[0].hint, "h");

    let only_c = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "spiffe://example.org/c".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_c.svids.len(), 1);
    assert_eq!(only_c.svids[0].spiffe_id, "spiffe://example.org/c");

    // The token is a JWT-SVID this API validates for the same audience.
    let validated = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: only_c.svids[0].svid.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.spiffe_id, "spiffe://example.org/c");
    harness.stop().await;
}

#[tokio::test]
async fn validate_jwt_svid_returns_claims_or_invalid_argument() {
    let harness = Harness::with_fake_attestor().await;
    let mut client = harness.client().await;
    let id = SpiffeId::parse("spiffe://example.org/svc").unwrap();
    let token = mint(&harness.fake.authority, &id, &["api".to_owned()]);

    let response = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "api".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.spiffe_id, "spiffe://example.org/svc");
    let claims = serde_json::to_value(response.claims.unwrap()).unwrap();
    assert_eq!(claims["sub"], "spiffe://example.org/svc");
    assert_eq!(claims["aud"], serde_json::json!(["api"]));
    assert!(claims["exp"].is_number(), "{claims}");

    for (audience, svid, why) in [
        ("", token.as_str(), "audience must be specified"),
        ("api", "", "svid must be specified"),
    ] {
        let status = client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), why);
    }

    let other_signer = authority("example.org");
    let forged = mint(&other_signer, &id, &["api".to_owned()]);
    let huge = "a".repeat(1 << 20);
    for bad in [token.as_str(), "not.a.jwt", forged.as_str(), huge.as_str()] {
        let audience = if bad == token {
            "other-audience"
        } else {
            "api"
        };
        let status = client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: bad.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    harness.stop().await;
}

#[tokio::test]
async fn failed_attestation_is_refused() {
    let harness = Harness::start(vec![Arc::new(FakeAttestor { fail: true })]).await;
    harness.fake.set_identities(vec![x509_identity(
        &harness.fake.authority,
        "spiffe://example.org/w",
        "",
    )]);
    let mut client = harness.client().await;
    let (first, _) = first_x509(&mut client).await;
    let status = first.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(harness.fake.seen_selectors.lock().unwrap().is_empty());
    harness.stop().await;
}

fn id_command(flag: &str) -> String {
    let out = std::process::Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn unix_attestor_attests_the_connecting_process() {
    let unix = UnixAttestor::new(UnixAttestorConfig::default());
    let harness =
        Harness::start(vec![Arc::new(unix), Arc::new(FakeAttestor { fail: false })]).await;
    harness.fake.set_identities(vec![x509_identity(
        &harness.fake.authority,
        "spiffe://example.org/w",
        "",
    )]);
    let mut client = harness.client().await;
    let (first, _) = first_x509(&mut client).await;
    first.unwrap();
    let selectors = harness.fake.last_selectors();
    let uid = Selector::new("unix", format!("uid:{}", id_command("-u"))).unwrap();
    let gid = Selector::new("unix", format!("gid:{}", id_command("-g"))).unwrap();
    assert_eq!(
        selectors.first(),
        Some(&uid),
        "unix selectors come first: {selectors:?}"
    );
    assert!(selectors.contains(&gid));
    assert_eq!(
        selectors.last(),
        Some(&Selector::new("fake", "workload").unwrap())
    );
    harness.stop().await;
}

fn spiffe_endpoint(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

#[tokio::test]
async fn spiffe_crate_client_fetches_and_validates() {
    let harness = Harness::with_fake_attestor().await;
    let fake = &harness.fake;
    fake.set_identities(vec![x509_identity(
        &fake.authority,
        "spiffe://example.org/web",
        "",
    )]);
    *fake.jwt_ids.lock().unwrap() = vec![(
        SpiffeId::parse("spiffe://example.org/web").unwrap(),
        String::new(),
    )];

    let client = spiffe::WorkloadApiClient::connect_to(spiffe_endpoint(&harness.socket))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.cert_chain().len(), 1);

    let context = client.fetch_x509_context().await.unwrap();
    assert_eq!(context.svids().len(), 1);

    let jwt = client.fetch_jwt_svid(["my-audience"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(jwt.audience(), ["my-audience".to_owned()]);

    let validated = client
        .validate_jwt_token("my-audience", jwt.token())
        .await
        .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/web"
    );
    assert!(
        client
            .validate_jwt_token("someone-else", jwt.token())
            .await
            .is_err()
    );

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert!(jwt_bundles.get(&td).is_some());
    harness.stop().await;
}

#[tokio::test]
async fn spiffe_crate_client_sees_no_identity_issued() {
    let harness = Harness::with_fake_attestor().await;
    let client = spiffe::WorkloadApiClient::connect_to(spiffe_endpoint(&harness.socket))
        .await
        .unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(
            err,
            spiffe::workload_api::WorkloadApiError::NoIdentityIssued
        ),
        "{err:?}"
    );
    harness.stop().await;
}
