//! Two servers of one trust domain on one database (high availability), in process: each
//! with its own CA, datastore pool, authorized-entry index and mTLS listener, as two
//! `spire-server` processes would be. Runs on SQLite, and on PostgreSQL and MariaDB when
//! `SPIRE_TEST_POSTGRES` / `SPIRE_TEST_MYSQL` are set (see `sql_engines`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

#[macro_use]
mod sql_engines;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::spire::api::server::bundle::v1 as bundlepb;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use spire_server::api::{ApiContext, ApiSettings};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::{AttestedNode, DataStore, RegistrationEntry};
use spire_server::endpoints::{Endpoints, EndpointsConfig};
use spire_server::plugins::keymanager::memory::MemoryKeyManager;
use spire_server::plugins::nodeattestor::NodeAttestors;
use sql_engines::TestDb;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";
const AGENT_ID: &str = "spiffe://example.org/spire/agent/join_token/ha";

/// One server: its own CA (own key manager), datastore pool, index and listeners.
struct Server {
    ctx: Arc<ApiContext>,
    tcp: SocketAddr,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server on `db`. Its index is loaded once and not polled, so only what the
    /// API does on its own refreshes it.
    async fn start(db: &TestDb) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let datastore: Arc<dyn DataStore> = Arc::new(db.open().await);
        let trust_domain = TrustDomain::new(TD).unwrap();
        let ca = CaManager::new(
            CaConfig::new(trust_domain.clone()),
            Arc::new(MemoryKeyManager::new()),
            None,
            datastore.clone(),
        )
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
            ca,
            index,
            settings: ApiSettings::default(),
            log_level: Default::default(),
            started_at: Instant::now(),
            rate_limits: Default::default(),
            node_attestors,
            bundle_refresher,
        });
        let endpoints = Endpoints::bind(
            ctx.clone(),
            &EndpointsConfig {
                bind_addr: "127.0.0.1:0".parse().unwrap(),
                socket_path: dir.path().join("api.sock"),
            },
        )
        .await
        .unwrap();
        let tcp = endpoints.local_tcp_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(endpoints.run(cancel.clone()));
        Self {
            ctx,
            tcp,
            cancel,
            _dir: dir,
        }
    }

    /// This server's own X509-SVID chain (leaf first, no root).
    fn identity_chain(&self) -> Vec<Vec<u8>> {
        self.ctx
            .ca
            .server_identity()
            .borrow()
            .clone()
            .expect("the server has an identity")
            .chain
    }

    /// An agent SVID for [`AGENT_ID`] signed by this server's CA, and its key.
    async fn agent_svid(&self) -> (Vec<Vec<u8>>, PrivateKey) {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let chain = self
            .ctx
            .ca
            .sign_agent_x509_svid(&key.public_key_der(), &SpiffeId::parse(AGENT_ID).unwrap())
            .await
            .unwrap();
        (chain, key)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Accepts any server chain: these tests are about the server's view of the client.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A fresh (unshared) mTLS channel to `addr` presenting `chain`.
fn agent_channel(addr: SocketAddr, chain: &[Vec<u8>], key: &PrivateKey) -> Channel {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            chain.iter().cloned().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_static("http://spire-server")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = ServerName::try_from("spire-server").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

/// Records the agent as attested with `chain`'s serial (through whichever server).
async fn attest(ds: &dyn DataStore, chain: &[Vec<u8>], selectors: &[Selector]) {
    let serial = spire_core::x509::certificate_serial_decimal(&chain[0]).unwrap();
    let not_after = spire_core::x509::certificate_not_after(&chain[0])
        .unwrap()
        .unix_timestamp();
    ds.create_attested_node(AttestedNode {
        spiffe_id: AGENT_ID.into(),
        attestation_data_type: "join_token".into(),
        cert_serial_number: serial,
        cert_not_after: not_after,
        ..Default::default()
    })
    .await
    .unwrap();
    ds.set_node_selectors(AGENT_ID, selectors).await.unwrap();
}

/// An agent-only RPC that succeeds past authorization with NotFound (no such federated
/// bundle): `Ok(())` means the listener accepted the agent's SVID.
async fn agent_call(addr: SocketAddr, chain: &[Vec<u8>], key: &PrivateKey) -> Result<(), String> {
    let result = BundleClient::new(agent_channel(addr, chain, key))
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await;
    match result {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(_) => Err("a federated bundle that does not exist was returned".into()),
    }
}

async fn servers_share_one_bundle_and_trust_each_others_agents(db: &TestDb) {
    let a = Server::start(db).await;
    let b = Server::start(db).await;
    let started_b = Instant::now();

    // The one bundle holds both CAs and both JWT keys.
    let bundle = a.ctx.datastore.fetch_bundle(TD).await.unwrap().unwrap();
    let roots: Vec<Vec<u8>> = bundle
        .x509_authorities
        .iter()
        .map(|c| c.asn1.clone())
        .collect();
    assert_eq!(roots.len(), 2, "one root per server");
    assert_eq!(bundle.jwt_authorities.len(), 2, "one JWT key per server");

    // Each server's own SVID chains to its own root, which the other does not sign with.
    let now = time::OffsetDateTime::now_utc();
    for (server, name) in [(&a, "A"), (&b, "B")] {
        let chain = server.identity_chain();
        spire_core::x509::verify_x509_svid(&chain, &roots, now)
            .unwrap_or_else(|e| panic!("server {name}'s SVID against the union bundle: {e}"));
        let own_root: Vec<Vec<u8>> = roots
            .iter()
            .filter(|root| {
                spire_core::x509::verify_x509_svid(&chain, &[(*root).clone()], now).is_ok()
            })
            .cloned()
            .collect();
        assert_eq!(
            own_root.len(),
            1,
            "server {name} chains to exactly one root"
        );
    }
    assert_ne!(a.identity_chain(), b.identity_chain());

    // An agent whose SVID B's CA signed is accepted by A's listener within a bundle
    // refresh (A loaded its bundle cache before B's root existed), and by B at once.
    let (chain, key) = b.agent_svid().await;
    attest(b.ctx.datastore.as_ref(), &chain, &[]).await;
    agent_call(b.tcp, &chain, &key).await.unwrap();
    let deadline = started_b + Duration::from_secs(15);
    loop {
        match agent_call(a.tcp, &chain, &key).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "A still refuses an agent SVID signed by B's CA 15 s after B started: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{}: A accepted an agent SVID of B's CA {:?} after B started",
        db.engine.database_type(),
        started_b.elapsed()
    );

    // Renewed through A: B accepts the A-signed SVID, promoting it there.
    let (renewed, renewed_key) = a.agent_svid().await;
    let mut node = a
        .ctx
        .datastore
        .fetch_attested_node(AGENT_ID)
        .await
        .unwrap()
        .unwrap();
    node.new_cert_serial_number =
        spire_core::x509::certificate_serial_decimal(&renewed[0]).unwrap();
    node.new_cert_not_after = node.cert_not_after;
    a.ctx
        .datastore
        .update_attested_node(node, spire_server::datastore::AttestedNodeMask::ALL)
        .await
        .unwrap();
    agent_call(b.tcp, &renewed, &renewed_key).await.unwrap();
    let err = agent_call(a.tcp, &chain, &key).await.unwrap_err();
    assert!(
        err.contains("PermissionDenied"),
        "the old SVID is refused by the other server too once the new one was used: {err}"
    );
    drop((a, b));
}

async fn an_agent_attested_elsewhere_gets_its_alias_entries_on_its_first_sync(db: &TestDb) {
    let a = Server::start(db).await;
    let b = Server::start(db).await;

    // Attested through A, with an alias entry and a workload entry created through A after
    // B loaded its index (B's index is not polled in this test).
    let (chain, key) = a.agent_svid().await;
    let node_selector = Selector {
        kind: "join_token".into(),
        value: "ha".into(),
    };
    attest(
        a.ctx.datastore.as_ref(),
        &chain,
        std::slice::from_ref(&node_selector),
    )
    .await;
    let alias = "spiffe://example.org/node";
    for (spiffe_id, parent_id, selector) in [
        (
            alias,
            "spiffe://example.org/spire/server",
            node_selector.clone(),
        ),
        (
            "spiffe://example.org/workload",
            alias,
            Selector {
                kind: "unix".into(),
                value: "uid:1000".into(),
            },
        ),
    ] {
        a.ctx
            .datastore
            .create_registration_entry(RegistrationEntry {
                spiffe_id: spiffe_id.into(),
                parent_id: parent_id.into(),
                selectors: vec![selector],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // The agent's first sync goes to B, which has not seen the agent yet.
    let entries = EntryClient::new(agent_channel(b.tcp, &chain, &key))
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let ids: Vec<String> = entries
        .iter()
        .filter_map(|e| e.spiffe_id.as_ref())
        .map(|id| format!("spiffe://{}{}", id.trust_domain, id.path))
        .collect();
    assert_eq!(ids, ["spiffe://example.org/workload"]);
    drop((a, b));
}

on_every_engine!(
    servers_share_one_bundle_and_trust_each_others_agents,
    an_agent_attested_elsewhere_gets_its_alias_entries_on_its_first_sync,
);

/// Runs the server's `catalog.datastore` health check until `done` accepts its state, for at
/// most two minutes (a refused connection may take the pool's acquire timeout to surface).
async fn datastore_health_until(
    check: &Arc<dyn spire_common::health::HealthCheck>,
    what: &str,
    done: impl Fn(&spire_common::health::HealthState) -> bool,
) -> spire_common::health::HealthState {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = check.check().await;
        if done(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "{what}: last state {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/ready` goes false while the datastore is unavailable and back once it returns, with
/// upstream's `catalog.datastore` details. The database is the test's own PostgreSQL
/// database, closed to connections (`ALLOW_CONNECTIONS false` and its backends terminated)
/// rather than the shared server stopped.
#[tokio::test]
async fn the_datastore_health_check_follows_the_database() {
    let db = sql_engines::TestDb::create(sql_engines::Engine::Postgres, "health_follows_db")
        .await
        .expect("SPIRE_TEST_POSTGRES must name a PostgreSQL server: run scripts/test-databases.sh");
    let server = Server::start(&db).await;
    let check = spire_server::endpoints::health_http::server_checks(
        server.ctx.clone(),
        std::path::PathBuf::from("/nonexistent/api.sock"),
    )
    .into_iter()
    .find(|c| c.name() == "catalog.datastore")
    .unwrap();
    let healthy = datastore_health_until(&check, "healthy at start", |s| s.ready).await;
    assert!(healthy.live);
    assert_eq!(healthy.ready_details, serde_json::json!({}));

    let name = &db.name;
    db.admin(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .await
    .unwrap();
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await
    .unwrap();
    let down = datastore_health_until(&check, "unready without the database", |s| !s.ready).await;
    assert!(
        !down.live,
        "upstream's datastore check sets live and ready alike"
    );
    let reason = down.ready_details["list_bundle_err"]
        .as_str()
        .unwrap_or_else(|| panic!("upstream's details key: {}", down.ready_details));
    assert!(!reason.is_empty());
    assert_eq!(down.live_details, down.ready_details);

    db.admin(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let back = datastore_health_until(&check, "ready again", |s| s.ready).await;
    assert!(back.live);
    assert_eq!(back.ready_details, serde_json::json!({}));
    drop(server);
    db.remove().await;
}
