//! The agent's admin API on a real unix socket: Debug/GetInfo (and `spire-agent debug
//! getinfo`), the Logger service (and `spire-agent logger`), and the Delegated Identity API
//! with its authorized-delegate check, served over a real [`Manager`] fed by a fake server.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    reason = "tests"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spire_agent::admin::{self, AdminOptions};
use spire_agent::cli::run_cli;
use spire_agent::client::AgentIdentity;
use spire_agent::logging::LogLevelHandle;
use spire_agent::manager::{Manager, ManagerError, ManagerOptions, ServerApi, bundle_from_proto};
use spire_agent::plugins::workloadattestor::{AttestError, PeerProcess, WorkloadAttestor};
use spire_core::jwt::{JwtSvidParams, mint_jwt_svid, parse_jwt_svid_insecure};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{
    CaTemplate, Issuer, SvidTemplate, Validity, self_signed_ca, x509_svid_for_key,
    x509_svid_from_csr,
};
use spire_proto::spire::agent::debug::v1::GetInfoRequest;
use spire_proto::spire::agent::debug::v1::debug_client::DebugClient;
use spire_proto::spire::api::agent::delegatedidentity::v1 as pb;
use spire_proto::spire::api::agent::delegatedidentity::v1::delegated_identity_client::DelegatedIdentityClient;
use spire_proto::spire::api::types;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";
const DELEGATE_ID: &str = "spiffe://example.org/workload/delegate";

/// The fake server: one CA, entries the test edits, extra roots to simulate a CA rotation.
struct FakeServer {
    ca_key: PrivateKey,
    ca_cert: Vec<u8>,
    entries: Mutex<Vec<types::Entry>>,
    extra_roots: Mutex<Vec<Vec<u8>>>,
}

impl FakeServer {
    fn new() -> Arc<Self> {
        let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let ca_cert = self_signed_ca(
            &ca_key,
            &CaTemplate::new(TrustDomain::new(TD).unwrap(), validity(24)),
        )
        .unwrap();
        Arc::new(Self {
            ca_key,
            ca_cert,
            entries: Mutex::new(Vec::new()),
            extra_roots: Mutex::new(Vec::new()),
        })
    }

    fn add_entry(&self, id: &str, selectors: &[&str]) {
        let entry = types::Entry {
            id: id.to_owned(),
            spiffe_id: Some(types::Spiffeid {
                trust_domain: TD.to_owned(),
                path: format!("/workload/{id}"),
            }),
            selectors: selectors
                .iter()
                .map(|s| {
                    let sel = Selector::parse(s).unwrap();
                    types::Selector {
                        r#type: sel.kind,
                        value: sel.value,
                    }
                })
                .collect(),
            hint: format!("hint-{id}"),
            revision_number: 1,
            ..Default::default()
        };
        self.entries.lock().unwrap().push(entry);
    }

    fn spiffe_id_of(&self, entry_id: &str) -> Option<SpiffeId> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.id == entry_id)
            .map(|e| {
                let id = e.spiffe_id.as_ref().unwrap();
                SpiffeId::parse(&format!("spiffe://{}{}", id.trust_domain, id.path)).unwrap()
            })
    }

    fn proto_bundle(&self) -> types::Bundle {
        let mut x509_authorities = vec![types::X509Certificate {
            asn1: self.ca_cert.clone(),
            tainted: false,
        }];
        for root in self.extra_roots.lock().unwrap().iter() {
            x509_authorities.push(types::X509Certificate {
                asn1: root.clone(),
                tainted: false,
            });
        }
        types::Bundle {
            trust_domain: TD.to_owned(),
            x509_authorities,
            jwt_authorities: vec![types::JwtKey {
                public_key: self.ca_key.public_key_der(),
                key_id: "kid1".to_owned(),
                expires_at: 0,
                tainted: false,
            }],
            refresh_hint: 0,
            sequence_number: 1,
            wit_authorities: Vec::new(),
        }
    }

    /// An agent SVID signed by the CA, as node attestation would give.
    fn agent_identity(&self) -> AgentIdentity {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let issuer = Issuer::new(&self.ca_cert, &self.ca_key).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/spire/agent/join_token/t").unwrap();
        let leaf = x509_svid_for_key(
            &issuer,
            &key.public_key_der(),
            &SvidTemplate::new(id, validity(1)),
        )
        .unwrap();
        AgentIdentity {
            chain: vec![leaf],
            key: spire_agent::plugins::keymanager::AgentKey::Local(Arc::new(key)),
        }
    }
}

fn validity(hours: i64) -> Validity {
    Validity::from_now(OffsetDateTime::now_utc(), time::Duration::hours(hours))
}

#[async_trait]
impl ServerApi for FakeServer {
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError> {
        Ok(self.entries.lock().unwrap().clone())
    }

    async fn new_x509_svids(
        &self,
        csrs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError> {
        let issuer = Issuer::new(&self.ca_cert, &self.ca_key).unwrap();
        Ok(csrs
            .iter()
            .map(|(entry_id, csr)| {
                let spiffe_id = self
                    .spiffe_id_of(entry_id)
                    .ok_or_else(|| ManagerError::Internal(format!("no entry {entry_id}")))?;
                let leaf =
                    x509_svid_from_csr(&issuer, csr, &SvidTemplate::new(spiffe_id, validity(1)))
                        .map_err(|e| ManagerError::Internal(e.to_string()))?;
                Ok(vec![leaf])
            })
            .collect())
    }

    async fn bundle(&self) -> Result<types::Bundle, ManagerError> {
        Ok(self.proto_bundle())
    }

    async fn federated_bundle(&self, _: &str) -> Result<Option<types::Bundle>, ManagerError> {
        Ok(None)
    }

    async fn new_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, ManagerError> {
        let subject = self
            .spiffe_id_of(entry_id)
            .ok_or_else(|| ManagerError::Internal(format!("no entry {entry_id}")))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        mint_jwt_svid(
            &self.ca_key,
            "kid1",
            &JwtSvidParams {
                subject,
                audience: audience.to_vec(),
                expires_at: now + 300,
                issued_at: Some(now),
                issuer: None,
                algorithm: None,
                jwt_id: None,
            },
        )
        .map_err(|e| ManagerError::Internal(e.to_string()))
    }

    async fn post_status(&self, _: &str) -> Result<(), ManagerError> {
        Ok(())
    }
}

/// An attestor giving the selectors the test sets to its own process and `other:pid:<pid>`
/// to any other process.
struct FakeAttestor {
    own: Mutex<Vec<Selector>>,
}

#[async_trait]
impl WorkloadAttestor for FakeAttestor {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        if u32::try_from(peer.pid).ok() == Some(std::process::id()) {
            Ok(self.own.lock().unwrap().clone())
        } else {
            Ok(vec![
                Selector::new("other", format!("pid:{}", peer.pid)).unwrap(),
            ])
        }
    }
}

/// A running admin API over a synced manager.
struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    server: Arc<FakeServer>,
    manager: Arc<Manager>,
    attestor: Arc<FakeAttestor>,
    agent_svid: AgentIdentity,
    log_level: LogLevelHandle,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), admin::AdminError>>,
}

impl Harness {
    /// The caller (this process) is attested as `caller:me`; the delegate entry matches it,
    /// `web` matches `sa:web`.
    async fn start(authorized_delegates: &[&str]) -> Self {
        let server = FakeServer::new();
        server.add_entry("delegate", &["caller:me"]);
        server.add_entry("web", &["sa:web"]);
        let manager = Manager::new(
            Arc::clone(&server) as Arc<dyn ServerApi>,
            TrustDomain::new(TD).unwrap(),
            bundle_from_proto(&server.proto_bundle()).unwrap(),
            ManagerOptions::default(),
        );
        manager.sync_once().await.unwrap();
        let attestor = Arc::new(FakeAttestor {
            own: Mutex::new(vec![Selector::parse("caller:me").unwrap()]),
        });
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin").join("admin.sock");
        let agent_svid = server.agent_identity();
        let (_svid_tx, svid_rx) = watch::channel(agent_svid.clone());
        let log_level = LogLevelHandle::default();
        let cancel = CancellationToken::new();
        let options = AdminOptions {
            trust_domain: TrustDomain::new(TD).unwrap(),
            authorized_delegates: authorized_delegates
                .iter()
                .map(|id| SpiffeId::parse(id).unwrap())
                .collect(),
            log_level: log_level.clone(),
            started_at: Instant::now(),
            metrics: Default::default(),
        };
        let task = tokio::spawn(admin::serve(
            options,
            Arc::clone(&manager),
            vec![Arc::clone(&attestor) as Arc<dyn WorkloadAttestor>],
            svid_rx,
            socket.clone(),
            cancel.clone(),
        ));
        wait_for_socket(&socket).await;
        Self {
            _dir: dir,
            socket,
            server,
            manager,
            attestor,
            agent_svid,
            log_level,
            cancel,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::from_static("http://admin.local")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }

    async fn delegated(&self) -> DelegatedIdentityClient<Channel> {
        DelegatedIdentityClient::new(self.channel().await)
    }

    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        all.push("-socketPath".to_owned());
        all.push(self.socket.to_str().unwrap().to_owned());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_cli(all, &mut out, &mut err).await;
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("admin API stops on cancel")
            .unwrap()
            .unwrap();
        assert!(!self.socket.exists(), "the socket is removed on shutdown");
    }
}

async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(path).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "admin socket {} did not accept connections within 10 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn selector(kind: &str, value: &str) -> types::Selector {
    types::Selector {
        r#type: kind.to_owned(),
        value: value.to_owned(),
    }
}

fn svid_ids(response: &pb::SubscribeToX509sviDsResponse) -> Vec<String> {
    response
        .x509_svids
        .iter()
        .map(|s| {
            let id = s.x509_svid.as_ref().unwrap().id.as_ref().unwrap();
            format!("spiffe://{}{}", id.trust_domain, id.path)
        })
        .collect()
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<T, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream stays open")
}

#[tokio::test]
async fn get_info_reports_the_agent_chain_and_cache_over_the_socket() {
    let h = Harness::start(&[DELEGATE_ID]).await;
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o770, "the admin socket is not world-accessible");

    let info = DebugClient::new(h.channel().await)
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.svid_chain.len(),
        2,
        "agent SVID and the root it chains to"
    );
    let leaf_id = info.svid_chain[0].id.as_ref().unwrap();
    assert_eq!(
        (leaf_id.trust_domain.as_str(), leaf_id.path.as_str()),
        (TD, "/spire/agent/join_token/t")
    );
    let leaf_expiry = spire_core::x509::certificate_not_after(&h.agent_svid.chain[0]).unwrap();
    assert_eq!(info.svid_chain[0].expires_at, leaf_expiry.unix_timestamp());
    assert!(
        info.svid_chain[1].subject.contains("O=SPIFFE,C=US"),
        "{}",
        info.svid_chain[1].subject
    );
    assert_eq!(info.svids_count, 2, "delegate and web were minted");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - info.last_sync_success).abs() < 60);
    assert!(info.uptime >= 0);

    let (code, out, err) = h.cli(&["debug", "getinfo"]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.contains("SVIDs:\t\t\t2\n"), "{out}");
    assert!(
        out.contains("Chain #1:\t\tspiffe://example.org/spire/agent/join_token/t"),
        "{out}"
    );
    assert!(out.contains("Chain #2:\t\t"), "{out}");
    h.stop().await;
}

#[tokio::test]
async fn a_caller_that_is_not_an_authorized_delegate_is_denied() {
    let h = Harness::start(&["spiffe://example.org/workload/someone-else"]).await;
    let mut client = h.delegated().await;
    let status = client
        .subscribe_to_x509svi_ds(pb::SubscribeToX509sviDsRequest {
            selectors: vec![selector("sa", "web")],
            pid: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "caller not configured as an authorized delegate"
    );
    let status = client
        .fetch_jwtsvi_ds(pb::FetchJwtsviDsRequest {
            audience: vec!["aud".to_owned()],
            selectors: vec![selector("sa", "web")],
            pid: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A caller without any entry has no identity at all.
    *h.attestor.own.lock().unwrap() = vec![Selector::parse("caller:stranger").unwrap()];
    let status = client
        .subscribe_to_x509_bundles(pb::SubscribeToX509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "no identity issued")
    );
    h.stop().await;
}

#[tokio::test]
async fn an_authorized_delegate_gets_the_svids_of_the_selectors_and_every_change() {
    let h = Harness::start(&[DELEGATE_ID]).await;
    let mut client = h.delegated().await;

    let status = client
        .subscribe_to_x509svi_ds(pb::SubscribeToX509sviDsRequest {
            selectors: vec![selector("sa", "web")],
            pid: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .subscribe_to_x509svi_ds(pb::SubscribeToX509sviDsRequest {
            selectors: vec![selector("sa:x", "web")],
            pid: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "could not parse provided selectors")
    );

    let mut stream = client
        .subscribe_to_x509svi_ds(pb::SubscribeToX509sviDsRequest {
            selectors: vec![selector("sa", "web")],
            pid: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await.unwrap();
    assert_eq!(svid_ids(&first), ["spiffe://example.org/workload/web"]);
    let svid = &first.x509_svids[0];
    let chain = &svid.x509_svid.as_ref().unwrap().cert_chain;
    let key = PrivateKey::from_der(&svid.x509_svid_key).unwrap();
    assert_eq!(
        spire_core::x509::certificate_public_key(&chain[0]).unwrap(),
        key.public_key_der(),
        "the key is the SVID's"
    );
    assert_eq!(svid.x509_svid.as_ref().unwrap().hint, "hint-web");

    // A new entry for the same selectors reaches the open stream after the next sync.
    h.server.add_entry("web2", &["sa:web", "ns:prod"]);
    h.server.add_entry("web3", &["sa:web"]);
    h.manager.sync_once().await.unwrap();
    let second = next(&mut stream).await.unwrap();
    assert_eq!(
        svid_ids(&second),
        [
            "spiffe://example.org/workload/web",
            "spiffe://example.org/workload/web3"
        ]
    );

    // The delegate's own process, named by pid, is attested with the workload attestors.
    let pid = i32::try_from(std::process::id()).unwrap();
    let mut own = client
        .subscribe_to_x509svi_ds(pb::SubscribeToX509sviDsRequest {
            selectors: vec![],
            pid,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(svid_ids(&next(&mut own).await.unwrap()), [DELEGATE_ID]);
    h.stop().await;
}

#[tokio::test]
async fn an_authorized_delegate_fetches_jwt_svids_for_selectors() {
    let h = Harness::start(&[DELEGATE_ID]).await;
    let mut client = h.delegated().await;
    let status = client
        .fetch_jwtsvi_ds(pb::FetchJwtsviDsRequest {
            audience: vec![],
            selectors: vec![selector("sa", "web")],
            pid: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "audience must be specified")
    );

    let response = client
        .fetch_jwtsvi_ds(pb::FetchJwtsviDsRequest {
            audience: vec!["db".to_owned()],
            selectors: vec![selector("sa", "web")],
            pid: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.svids.len(), 1);
    let svid = &response.svids[0];
    let parsed = parse_jwt_svid_insecure(&svid.token).unwrap();
    assert_eq!(
        parsed.spiffe_id.to_string(),
        "spiffe://example.org/workload/web"
    );
    assert_eq!(parsed.audience, ["db"]);
    assert_eq!(svid.expires_at, parsed.expiry);
    assert!(svid.issued_at > 0 && svid.issued_at <= svid.expires_at);
    assert_eq!(svid.hint, "hint-web");

    let status = client
        .fetch_jwtsvi_ds(pb::FetchJwtsviDsRequest {
            audience: vec!["db".to_owned()],
            selectors: vec![selector("sa", "nobody")],
            pid: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "no identity issued")
    );
    h.stop().await;
}

#[tokio::test]
async fn bundle_subscriptions_send_the_bundles_and_push_a_rotation() {
    let h = Harness::start(&[DELEGATE_ID]).await;
    let mut client = h.delegated().await;
    let mut x509 = client
        .subscribe_to_x509_bundles(pb::SubscribeToX509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut jwt = client
        .subscribe_to_jwt_bundles(pb::SubscribeToJwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut x509).await.unwrap();
    assert_eq!(
        first.ca_certificates.get("spiffe://example.org"),
        Some(&h.server.ca_cert)
    );
    let jwks = next(&mut jwt).await.unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(jwks.bundles.get("spiffe://example.org").unwrap()).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "JWT authorities only: {doc}");
    assert_eq!(keys[0]["kid"], "kid1");

    // A new root (CA rotation) reaches the X.509 bundle stream.
    let new_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let new_root = self_signed_ca(
        &new_key,
        &CaTemplate::new(TrustDomain::new(TD).unwrap(), validity(24)),
    )
    .unwrap();
    h.server.extra_roots.lock().unwrap().push(new_root.clone());
    h.manager.sync_once().await.unwrap();
    let second = next(&mut x509).await.unwrap();
    let mut expected = h.server.ca_cert.clone();
    expected.extend_from_slice(&new_root);
    assert_eq!(
        second.ca_certificates.get("spiffe://example.org"),
        Some(&expected)
    );
    h.stop().await;
}

#[tokio::test]
async fn logger_cli_sets_gets_and_resets_the_level() {
    let h = Harness::start(&[DELEGATE_ID]).await;
    let (code, out, err) = h.cli(&["logger", "get"]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "Logger Level : info\nLaunch Level : info\n\n");

    let (code, out, err) = h.cli(&["logger", "set", "-level", "debug"]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "Logger Level : debug\nLaunch Level : info\n\n");
    assert_eq!(h.log_level.get(), "debug", "the running level changed");

    let (code, out, _) = h.cli(&["logger", "reset", "-output", "json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "{\"current_level\":\"INFO\",\"launch_level\":\"INFO\"}\n"
    );
    assert_eq!(h.log_level.get(), "info");
    h.stop().await;
}

#[tokio::test]
async fn a_delegate_registered_after_the_last_sync_is_served_once_its_svid_is_minted() {
    let late = "spiffe://example.org/workload/late";
    let h = Harness::start(&[late]).await;
    let sync_loop = tokio::spawn(Arc::clone(&h.manager).run(h.cancel.clone()));
    h.server.add_entry("late", &["caller:late"]);
    *h.attestor.own.lock().unwrap() = vec![Selector::parse("caller:late").unwrap()];

    let response = tokio::time::timeout(
        Duration::from_secs(10),
        h.delegated()
            .await
            .fetch_jwtsvi_ds(pb::FetchJwtsviDsRequest {
                audience: vec!["db".to_owned()],
                selectors: vec![selector("sa", "web")],
                pid: 0,
            }),
    )
    .await
    .expect("answered after the triggered sync")
    .unwrap()
    .into_inner();
    assert_eq!(response.svids.len(), 1);
    h.stop().await;
    sync_loop.await.unwrap();
}
