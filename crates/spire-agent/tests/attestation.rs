//! The agent's server client, join-token attestation, renewal and data directory against a
//! real server assembled in process from the spire-server library, over its real TCP
//! listener (TLS with ALPN h2) and admin socket.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use spire_agent::attestation::{self, AgentSvid, AttestError, RotationConfig};
use spire_agent::client::{AgentIdentity, DenialKind, ServerAddress, ServerClient, ServerTrust};
use spire_agent::config::{BootstrapBundle, TrustBundleFormat};
use spire_agent::plugins::keymanager::{
    AGENT_SVID_KEY_A, AGENT_SVID_KEY_B, AGENT_SVID_KEY_TYPE, AgentKey, DiskKeyManager, KeyManager,
    find_agent_svid_key,
};
use spire_agent::plugins::nodeattestor::join_token::JoinTokenAttestor;
use spire_agent::storage::AgentStorage;
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::agent::v1 as agentpb;
use spire_proto::spire::api::server::agent::v1::agent_client::AgentClient;
use spire_proto::spire::api::server::bundle::v1 as bundlepb;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_server::api::ratelimit::RateLimiters;
use spire_server::api::{ApiContext, ApiSettings};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::DataStore;
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::endpoints::{Endpoints, EndpointsConfig, EndpointsError};
use spire_server::plugins::nodeattestor::NodeAttestors;
use tokio::net::UnixStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";

struct Server {
    store: Arc<SqlDataStore>,
    socket: PathBuf,
    tcp: SocketAddr,
    cancel: CancellationToken,
    endpoints: JoinHandle<Result<(), EndpointsError>>,
    background: JoinSet<()>,
}

/// A server on `dir` (datastore, keys, admin socket), listening on 127.0.0.1:0.
async fn start(dir: &Path, agent_ttl: Option<Duration>) -> Server {
    let store = Arc::new(
        SqlDataStore::open(&SqlConfig {
            database_type: "sqlite3".into(),
            connection_string: dir.join("datastore.sqlite3").to_string_lossy().into_owned(),
            max_open_conns: None,
            disable_migration: false,
        })
        .await
        .unwrap(),
    );
    let datastore: Arc<dyn DataStore> = store.clone();
    let key_manager = Arc::new(
        spire_server::plugins::keymanager::disk::DiskKeyManager::open(dir.join("keys.json"))
            .unwrap(),
    );
    let trust_domain = TrustDomain::new(TD).unwrap();
    let mut ca_config = CaConfig::new(trust_domain.clone());
    ca_config.agent_ttl = agent_ttl;
    let ca = CaManager::new(ca_config, key_manager, None, datastore.clone())
        .await
        .unwrap();
    let index = AuthorizedIndex::load(datastore.clone()).await.unwrap();
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
        ca: ca.clone(),
        index: index.clone(),
        settings: ApiSettings {
            agent_ttl,
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
    let cancel = CancellationToken::new();
    let mut background = JoinSet::new();
    background.spawn(ca.run(cancel.clone()));
    background.spawn(index.run(Duration::from_secs(1), cancel.clone()));
    let socket = dir.join("private").join("api.sock");
    let endpoints = Endpoints::bind(
        ctx,
        &EndpointsConfig {
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            socket_path: socket.clone(),
        },
    )
    .await
    .unwrap();
    let tcp = endpoints.local_tcp_addr().unwrap();
    let endpoints = tokio::spawn(endpoints.run(cancel.clone()));
    Server {
        store,
        socket,
        tcp,
        cancel,
        endpoints,
        background,
    }
}

impl Server {
    async fn stop(self) {
        let Self {
            store,
            cancel,
            endpoints,
            mut background,
            ..
        } = self;
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), endpoints).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while background.join_next().await.is_some() {}
        })
        .await;
        store.close().await;
    }

    fn admin(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::from_static("http://spire-server.admin").connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                }
            }),
        )
    }

    async fn join_token(&self) -> String {
        AgentClient::new(self.admin())
            .create_join_token(agentpb::CreateJoinTokenRequest {
                ttl: 600,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .value
    }

    async fn roots(&self) -> Vec<Vec<u8>> {
        BundleClient::new(self.admin())
            .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
            .await
            .unwrap()
            .into_inner()
            .x509_authorities
            .into_iter()
            .map(|a| a.asn1)
            .collect()
    }

    fn address(&self) -> ServerAddress {
        ServerAddress {
            server_address: self.tcp.ip().to_string(),
            server_port: self.tcp.port(),
            trust_domain: TrustDomain::new(TD).unwrap(),
        }
    }

    fn client(&self, trust: ServerTrust) -> ServerClient {
        ServerClient::new(&self.address(), trust, None).unwrap()
    }
}

fn spiffe_id(chain: &[Vec<u8>]) -> String {
    spire_core::x509::certificate_spiffe_id(&chain[0])
        .unwrap()
        .to_string()
}

fn serial(chain: &[Vec<u8>]) -> String {
    spire_core::x509::certificate_serial_decimal(&chain[0]).unwrap()
}

/// An agent with an SVID can call the agent-only APIs.
async fn authorized_entries(client: &ServerClient) -> Result<usize, tonic::Status> {
    Ok(client
        .entry_client()
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await?
        .into_inner()
        .entries
        .len())
}

/// Attests with a join token through the node attestation driver.
async fn attest_join_token(
    client: &ServerClient,
    token: &str,
    key: &AgentKey,
) -> Result<attestation::AttestResult, attestation::AttestError> {
    attestation::attest(client, &JoinTokenAttestor::new(Some(token.to_owned())), key).await
}

#[tokio::test]
async fn join_token_attestation_renewal_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None).await;
    let roots = server.roots().await;
    let client = server.client(ServerTrust::Bundle(roots.clone()));

    // Attest with a fresh token: the SVID names the join-token agent path and chains to
    // the bundle.
    let token = server.join_token().await;
    let key = AgentKey::Local(Arc::new(PrivateKey::generate(KeyType::EcP256).unwrap()));
    let result = attest_join_token(&client, &token, &key).await.unwrap();
    assert!(!result.reattestable);
    let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
    assert_eq!(spiffe_id(&result.svid_chain), agent_id);
    spire_core::x509::verify_x509_svid(&result.svid_chain, &roots, time::OffsetDateTime::now_utc())
        .unwrap();

    // The same token again is refused with the server's explanation.
    let err = attest_join_token(&client, &token, &key).await.unwrap_err();
    assert!(matches!(err, AttestError::InvalidArgument(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("join token does not exist or has already been used"),
        "{err}"
    );

    // With its SVID the agent calls agent-only APIs.
    client
        .set_identity(result.svid_chain.clone(), key.clone())
        .unwrap();
    assert_eq!(authorized_entries(&client).await.unwrap(), 0);
    assert_eq!(attestation::fetch_bundle(&client).await.unwrap(), roots);

    // Renewal: a fresh key, a new SVID with the same ID, accepted on the next connection.
    let new_key = AgentKey::Local(Arc::new(PrivateKey::generate(KeyType::EcP256).unwrap()));
    let renewed = attestation::renew(&client, &new_key).await.unwrap();
    assert_eq!(spiffe_id(&renewed), agent_id);
    assert_ne!(serial(&renewed), serial(&result.svid_chain));
    assert_eq!(
        spire_core::x509::certificate_public_key(&renewed[0]).unwrap(),
        new_key.public_key_der()
    );
    client
        .set_identity(renewed.clone(), new_key.clone())
        .unwrap();
    assert_eq!(authorized_entries(&client).await.unwrap(), 0);
    // The old SVID is no longer current once the new one was used.
    let old = ServerClient::new(
        &server.address(),
        ServerTrust::Bundle(roots.clone()),
        Some(AgentIdentity {
            chain: result.svid_chain.clone(),
            key: key.clone(),
        }),
    )
    .unwrap();
    let denied = authorized_entries(&old).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let err = attestation::renew(&old, &new_key).await.unwrap_err();
    assert!(
        matches!(&err, AttestError::Denied(d) if d.kind == DenialKind::MustReattest),
        "{err:?}"
    );

    // A client with another trust bundle refuses the server, and the token is not spent.
    let foreign_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let foreign_root = spire_core::x509::self_signed_ca(
        &foreign_key,
        &spire_core::x509::CaTemplate::new(
            TrustDomain::new(TD).unwrap(),
            spire_core::x509::Validity::from_now(
                time::OffsetDateTime::now_utc(),
                time::Duration::hours(1),
            ),
        ),
    )
    .unwrap();
    let stranger = server.client(ServerTrust::Bundle(vec![foreign_root]));
    let token = server.join_token().await;
    let err = attest_join_token(&stranger, &token, &key)
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::Unavailable(_)), "{err:?}");
    // A client expecting another trust domain's server refuses it too.
    let other_td = ServerClient::new(
        &ServerAddress {
            trust_domain: TrustDomain::new("other.org").unwrap(),
            ..server.address()
        },
        ServerTrust::Bundle(roots.clone()),
        None,
    )
    .unwrap();
    let err = attest_join_token(&other_td, &token, &key)
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::Unavailable(_)), "{err:?}");
    // Insecure bootstrap checks only the server's ID; then the bundle is fetched.
    let insecure = server.client(ServerTrust::InsecureBootstrap);
    let result = attest_join_token(&insecure, &token, &key)
        .await
        .expect("the token was never sent to an untrusted server");
    insecure
        .set_identity(result.svid_chain, key.clone())
        .unwrap();
    let fetched = attestation::fetch_bundle(&insecure).await.unwrap();
    assert_eq!(fetched, roots);
    insecure.set_bundle(fetched).unwrap();
    assert_eq!(authorized_entries(&insecure).await.unwrap(), 0);

    // The trust bundle file path works as bootstrap.
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle_path,
        spire_core::pem::encode_certificates(roots.iter().map(Vec::as_slice)),
    )
    .unwrap();
    let trust = attestation::bootstrap_trust(
        None,
        &BootstrapBundle::Path {
            path: bundle_path,
            format: TrustBundleFormat::Pem,
        },
        &TrustDomain::new(TD).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(trust, ServerTrust::Bundle(roots.clone()));

    drop((client, old, stranger, other_td, insecure));
    server.stop().await;
}

#[tokio::test]
async fn rotation_renews_at_half_life_and_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    // 20 s TTL: with upstream's 10 s not-before cushion, half-life comes ~5 s after issue.
    let server = start(dir.path(), Some(Duration::from_secs(20))).await;
    let roots = server.roots().await;
    let data_dir = dir.path().join("agent");
    let storage = Arc::new(AgentStorage::open(&data_dir).unwrap());
    let key_manager: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::open(&data_dir).unwrap());
    let client = server.client(ServerTrust::Bundle(roots.clone()));

    let key = key_manager
        .generate_key(AGENT_SVID_KEY_A, AGENT_SVID_KEY_TYPE)
        .await
        .unwrap();
    let token = server.join_token().await;
    let result = attest_join_token(&client, &token, &key).await.unwrap();
    storage.store_svid(&result.svid_chain, false).unwrap();
    storage.store_bundle(&roots).unwrap();
    client
        .set_identity(result.svid_chain.clone(), key.clone())
        .unwrap();

    let (tx, mut rx) = tokio::sync::watch::channel(AgentIdentity {
        chain: result.svid_chain.clone(),
        key: key.clone(),
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(attestation::run_rotation(
        RotationConfig {
            client: client.clone(),
            key_manager: key_manager.clone(),
            storage: storage.clone(),
            reattestable: false,
            updates: Some(tx),
            tainted_roots: None,
            availability_target: None,
        },
        AgentSvid {
            chain: result.svid_chain.clone(),
            key: key.clone(),
            key_id: AGENT_SVID_KEY_A.into(),
        },
        cancel.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(30), rx.changed())
        .await
        .expect("renewed within the half-life")
        .unwrap();
    let renewed = rx.borrow().clone();
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_ne!(serial(&renewed.chain), serial(&result.svid_chain));
    assert_eq!(spiffe_id(&renewed.chain), spiffe_id(&result.svid_chain));
    // The new key went to the other slot, the client uses the new SVID, and the data
    // directory holds it.
    let slot_b = key_manager
        .get_key(AGENT_SVID_KEY_B)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slot_b.public_key_der(), renewed.key.public_key_der());
    assert_eq!(client.identity().unwrap().chain, renewed.chain);
    assert_eq!(authorized_entries(&client).await.unwrap(), 0);
    assert_eq!(storage.load_svid(), Some((renewed.chain.clone(), false)));

    // A restarted agent on the same data_dir finds its SVID, its bundle and the key that
    // goes with it, and the server accepts it without re-attestation.
    drop(storage);
    let storage = AgentStorage::open(&data_dir).unwrap();
    let (chain, reattestable) = storage.load_svid().unwrap();
    assert!(!reattestable);
    assert_eq!(chain, renewed.chain);
    assert_eq!(storage.load_bundle().unwrap(), roots);
    let key_manager = DiskKeyManager::open(&data_dir).unwrap();
    let (key_id, key) = find_agent_svid_key(&key_manager, &chain[0])
        .await
        .unwrap()
        .expect("the SVID's key is on disk");
    assert_eq!(key_id, AGENT_SVID_KEY_B);
    let restarted = ServerClient::new(
        &server.address(),
        ServerTrust::Bundle(storage.load_bundle().unwrap()),
        Some(AgentIdentity { chain, key }),
    )
    .unwrap();
    assert_eq!(authorized_entries(&restarted).await.unwrap(), 0);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["agent-data.json", "keys.json"] {
            let mode = std::fs::metadata(data_dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    drop((client, restarted));
    server.stop().await;
}

/// An agent config for `server`: bundle file bootstrap, disk key manager in `data_dir`,
/// a 1 s sync interval, and `token` when given.
fn agent_config(
    server: &Server,
    dir: &Path,
    token: Option<&str>,
) -> spire_agent::config::ResolvedAgentConfig {
    let data_dir = dir.join("agent-data");
    let token = token.map_or_else(String::new, |t| format!("join_token = \"{t}\""));
    let text = format!(
        r#"
        agent {{
            trust_domain = "{TD}"
            server_address = "127.0.0.1"
            server_port = {port}
            trust_bundle_path = "{bundle}"
            data_dir = "{data}"
            socket_path = "{socket}"
            log_level = "debug"
            {token}
            experimental {{ sync_interval = "1s" }}
        }}
        plugins {{
            NodeAttestor "join_token" {{}}
            KeyManager "disk" {{ plugin_data {{ directory = "{data}" }} }}
            WorkloadAttestor "unix" {{}}
        }}
        "#,
        port = server.tcp.port(),
        bundle = dir.join("bundle.pem").display(),
        data = data_dir.display(),
        socket = dir.join("api.sock").display(),
    );
    spire_agent::config::load_str("agent.conf", &text, false)
        .unwrap()
        .resolve()
        .unwrap()
}

/// Runs the agent until `stop` fires.
fn spawn_agent(
    config: spire_agent::config::ResolvedAgentConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(spire_agent::agent::run(
        config,
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

/// Waits until `data_dir` holds an agent SVID naming `agent_id`.
async fn stored_svid_for(data_dir: &Path, agent_id: &str) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(storage) = AgentStorage::open(data_dir)
            && let Some((chain, _)) = storage.load_svid()
            && spiffe_id(&chain) == agent_id
        {
            return chain;
        }
        assert!(Instant::now() < deadline, "no SVID for {agent_id} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_evicted_join_token_agent_stops_forgets_its_svid_and_attests_again_with_a_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None).await;
    let roots = server.roots().await;
    std::fs::write(
        dir.path().join("bundle.pem"),
        spire_core::pem::encode_certificates(roots.iter().map(Vec::as_slice)),
    )
    .unwrap();
    let data_dir = dir.path().join("agent-data");

    let first = server.join_token().await;
    let (_stop, run) = spawn_agent(agent_config(&server, dir.path(), Some(&first)));
    let first_id = format!("spiffe://{TD}/spire/agent/join_token/{first}");
    stored_svid_for(&data_dir, &first_id).await;

    // `spire-server agent evict`: the next sync is denied, and a join-token agent cannot
    // re-attest, so it stops saying so and removes its SVID.
    AgentClient::new(server.admin())
        .delete_agent(agentpb::DeleteAgentRequest {
            id: Some(spire_proto::spire::api::types::Spiffeid {
                trust_domain: TD.into(),
                path: format!("/spire/agent/join_token/{first}"),
            }),
        })
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the evicted agent stops")
        .unwrap()
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("re-attest"), "{message}");
    assert!(message.contains("new join token"), "{message}");
    assert!(message.contains("is not attested"), "{message}");
    let storage = AgentStorage::open(&data_dir).unwrap();
    assert_eq!(storage.load_svid(), None);
    assert_eq!(storage.load_bundle(), Some(roots.clone()));
    drop(storage);

    // Restarted with the same (spent) token it cannot come back (without retry_bootstrap,
    // which would try again for a minute as upstream's does)...
    let mut spent = agent_config(&server, dir.path(), Some(&first));
    spent.retry_bootstrap = false;
    let err = tokio::time::timeout(Duration::from_secs(30), spawn_agent(spent).1)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("join token does not exist or has already been used"),
        "{err:#}"
    );

    // ...with a new token it attests again and keeps running.
    let second = server.join_token().await;
    let (stop, run) = spawn_agent(agent_config(&server, dir.path(), Some(&second)));
    let chain = stored_svid_for(
        &data_dir,
        &format!("spiffe://{TD}/spire/agent/join_token/{second}"),
    )
    .await;
    spire_core::x509::verify_x509_svid(&chain, &roots, time::OffsetDateTime::now_utc()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the re-attested agent keeps syncing");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_expired_stored_svid_is_not_reused_the_join_token_attests_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Some(Duration::from_secs(1))).await;
    let roots = server.roots().await;
    std::fs::write(
        dir.path().join("bundle.pem"),
        spire_core::pem::encode_certificates(roots.iter().map(Vec::as_slice)),
    )
    .unwrap();
    let data_dir = dir.path().join("agent-data");

    // A previous run left an SVID (and its key) that has since expired.
    let storage = AgentStorage::open(&data_dir).unwrap();
    let key_manager = DiskKeyManager::open(&data_dir).unwrap();
    let key = key_manager
        .generate_key(AGENT_SVID_KEY_A, AGENT_SVID_KEY_TYPE)
        .await
        .unwrap();
    let client = server.client(ServerTrust::Bundle(roots.clone()));
    let old = attest_join_token(&client, &server.join_token().await, &key)
        .await
        .unwrap();
    storage.store_svid(&old.svid_chain, false).unwrap();
    drop((storage, key_manager, client));
    let not_after = spire_core::x509::certificate_not_after(&old.svid_chain[0]).unwrap();
    let wait = (not_after - time::OffsetDateTime::now_utc()).whole_milliseconds() + 500;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait.max(0)).unwrap())).await;

    // Without a token the agent says it needs one rather than using the expired SVID (at
    // once without retry_bootstrap, which would try again for a minute as upstream's does).
    let mut tokenless = agent_config(&server, dir.path(), None);
    tokenless.retry_bootstrap = false;
    let err = tokio::time::timeout(Duration::from_secs(30), spawn_agent(tokenless).1)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("-joinToken"), "{err:#}");

    // With one it attests.
    let token = server.join_token().await;
    let (stop, run) = spawn_agent(agent_config(&server, dir.path(), Some(&token)));
    let chain = stored_svid_for(
        &data_dir,
        &format!("spiffe://{TD}/spire/agent/join_token/{token}"),
    )
    .await;
    assert_ne!(serial(&chain), serial(&old.svid_chain));
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    server.stop().await;
}

#[tokio::test]
async fn a_reattestable_agent_attests_again_after_eviction_and_carries_on() {
    // Join tokens are never re-attestable on the server; the keeper's re-attestation path
    // is driven here as if the attestation had said so, with a second token standing in
    // for an attestor that can prove the node again.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None).await;
    let roots = server.roots().await;
    let data_dir = dir.path().join("agent");
    let storage = Arc::new(AgentStorage::open(&data_dir).unwrap());
    let key_manager: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::open(&data_dir).unwrap());
    let client = server.client(ServerTrust::Bundle(roots.clone()));
    let key = key_manager
        .generate_key(AGENT_SVID_KEY_A, AGENT_SVID_KEY_TYPE)
        .await
        .unwrap();
    let first = server.join_token().await;
    let result = attest_join_token(&client, &first, &key).await.unwrap();
    storage.store_svid(&result.svid_chain, true).unwrap();
    client
        .set_identity(result.svid_chain.clone(), key.clone())
        .unwrap();
    let second = server.join_token().await;
    let cancel = CancellationToken::new();
    let keeper = tokio::spawn(attestation::keep_agent_svid(
        RotationConfig {
            client: client.clone(),
            key_manager: key_manager.clone(),
            storage: storage.clone(),
            reattestable: true,
            updates: None,
            tainted_roots: None,
            availability_target: None,
        },
        Arc::new(JoinTokenAttestor::new(Some(second.clone()))),
        AgentSvid {
            chain: result.svid_chain.clone(),
            key,
            key_id: AGENT_SVID_KEY_A.into(),
        },
        cancel.clone(),
    ));

    AgentClient::new(server.admin())
        .delete_agent(agentpb::DeleteAgentRequest {
            id: Some(spire_proto::spire::api::types::Spiffeid {
                trust_domain: TD.into(),
                path: format!("/spire/agent/join_token/{first}"),
            }),
        })
        .await
        .unwrap();
    // The next call is denied; the keeper re-attests and the client carries on.
    let denied = authorized_entries(&client).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(client.note_status(&denied).is_some());
    let second_id = format!("spiffe://{TD}/spire/agent/join_token/{second}");
    stored_svid_for(&data_dir, &second_id).await;
    assert_eq!(spiffe_id(&client.identity().unwrap().chain), second_id);
    assert_eq!(authorized_entries(&client).await.unwrap(), 0);
    assert!(!keeper.is_finished());
    cancel.cancel();
    keeper.await.unwrap().unwrap();
    drop((client, storage));
    server.stop().await;
}
