//! The listeners end to end: a real datastore and CA behind `Endpoints`, called over the
//! admin unix socket and over mTLS on a TCP port, checking who may call what.

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
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::spire::api::server::bundle::v1 as bundlepb;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::debug::v1::GetInfoRequest;
use spire_proto::spire::api::server::debug::v1::debug_client::DebugClient;
use spire_proto::spire::api::server::logger::v1 as loggerpb;
use spire_proto::spire::api::server::logger::v1::logger_client::LoggerClient;
use spire_proto::spire::api::types;
use spire_server::api::{ApiContext, ApiSettings};
use spire_server::authorized::{AuthorizedIndex, IndexOptions};
use spire_server::ca::{CaConfig, CaManager, X509SvidRequest};
use spire_server::datastore::DataStore;
use spire_server::endpoints::health_http::{self, HealthChecksConfig};
use spire_server::endpoints::{Endpoints, EndpointsConfig};
use spire_server::plugins::keymanager::memory::MemoryKeyManager;
use spire_server::plugins::nodeattestor::NodeAttestors;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";
const ADMIN_ID: &str = "spiffe://example.org/admin";

struct Server {
    _dir: tempfile::TempDir,
    ctx: Arc<ApiContext>,
    socket: PathBuf,
    tcp: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), spire_server::endpoints::EndpointsError>>,
}

async fn start() -> Server {
    start_with(IndexOptions::default()).await
}

async fn start_with(index_options: IndexOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = spire_server::datastore::sql::SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: dir
            .path()
            .join("datastore.sqlite3")
            .to_string_lossy()
            .into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    let datastore: Arc<dyn DataStore> = Arc::new(
        spire_server::datastore::sql::SqlDataStore::open(&config)
            .await
            .unwrap(),
    );
    let trust_domain = TrustDomain::new(TD).unwrap();
    let ca = CaManager::new(
        CaConfig::new(trust_domain.clone()),
        Arc::new(MemoryKeyManager::new()),
        None,
        datastore.clone(),
    )
    .await
    .unwrap();
    let index = AuthorizedIndex::load_with(datastore.clone(), index_options)
        .await
        .unwrap();
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
            admin_ids: vec![SpiffeId::parse(ADMIN_ID).unwrap()],
            ..ApiSettings::default()
        },
        log_level: Default::default(),
        started_at: Instant::now(),
        rate_limits: Default::default(),
        node_attestors,
        bundle_refresher,
    });
    let socket = dir.path().join("private").join("api.sock");
    let endpoints = Endpoints::bind(
        ctx.clone(),
        &EndpointsConfig {
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            socket_path: socket.clone(),
        },
    )
    .await
    .unwrap();
    let tcp = endpoints.local_tcp_addr().unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(endpoints.run(cancel.clone()));
    Server {
        _dir: dir,
        ctx,
        socket,
        tcp,
        cancel,
        task,
    }
}

impl Server {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("endpoints stop on cancel")
            .unwrap()
            .unwrap();
    }

    /// An X509-SVID for `id` signed by the server's CA: (chain, key).
    async fn svid(&self, id: &str) -> (Vec<Vec<u8>>, PrivateKey) {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let chain = self
            .ctx
            .ca
            .sign_workload_x509_svid(X509SvidRequest {
                public_key_der: key.public_key_der(),
                spiffe_id: SpiffeId::parse(id).unwrap(),
                dns_names: Vec::new(),
                ttl: None,
                subject: None,
            })
            .await
            .unwrap();
        (chain, key)
    }
}

fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://spire-server.admin").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }),
    )
}

/// Trusts any server certificate: these tests are about the server's client checks.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
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

fn client_tls(identity: Option<(Vec<Vec<u8>>, &PrivateKey)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                chain.into_iter().map(CertificateDer::from).collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

fn tls_channel(addr: SocketAddr, config: rustls::ClientConfig) -> Channel {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_static("http://spire-server.tcp").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = ServerName::try_from("spire-server").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        },
    ))
}

fn get_bundle_request() -> bundlepb::GetBundleRequest {
    bundlepb::GetBundleRequest { output_mask: None }
}

#[tokio::test]
async fn get_bundle_over_the_admin_socket_and_over_tls() {
    let server = start().await;

    let mode = std::fs::metadata(&server.socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o770,
        "server socket is 0770"
    );

    let over_socket = BundleClient::new(unix_channel(&server.socket))
        .get_bundle(get_bundle_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_socket.trust_domain, TD);
    assert!(!over_socket.x509_authorities.is_empty());

    // No client certificate: GetBundle is open to anyone.
    let over_tls = BundleClient::new(tls_channel(server.tcp, client_tls(None)))
        .get_bundle(get_bundle_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_tls, over_socket);

    // A masked request leaves the authorities out.
    let masked = BundleClient::new(unix_channel(&server.socket))
        .get_bundle(bundlepb::GetBundleRequest {
            output_mask: Some(types::BundleMask::default()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(masked.trust_domain, TD);
    assert!(masked.x509_authorities.is_empty());

    server.stop().await;
}

#[tokio::test]
async fn admin_rpcs_over_tls_need_an_admin_svid() {
    let server = start().await;

    // Without any certificate.
    let err = BundleClient::new(tls_channel(server.tcp, client_tls(None)))
        .count_bundles(bundlepb::CountBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "Authorization denied for method /spire.api.server.bundle.v1.Bundle/CountBundles"
    );

    // A valid workload SVID that is not an admin.
    let (chain, key) = server.svid("spiffe://example.org/workload").await;
    let err = BundleClient::new(tls_channel(server.tcp, client_tls(Some((chain, &key)))))
        .count_bundles(bundlepb::CountBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // An SVID listed in admin_ids.
    let (chain, key) = server.svid(ADMIN_ID).await;
    let admin_channel = tls_channel(server.tcp, client_tls(Some((chain, &key))));
    let count = BundleClient::new(admin_channel.clone())
        .count_bundles(bundlepb::CountBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.count, 1);

    // Admins still may not use the local-only RPCs.
    let err = DebugClient::new(admin_channel)
        .get_info(GetInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    server.stop().await;
}

#[tokio::test]
async fn an_svid_from_another_ca_fails_the_handshake() {
    let server = start().await;
    let foreign_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let foreign_ca = spire_core::x509::self_signed_ca(
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
    let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let issuer = spire_core::x509::Issuer::new(&foreign_ca, &foreign_key).unwrap();
    let leaf = spire_core::x509::x509_svid_for_key(
        &issuer,
        &leaf_key.public_key_der(),
        &spire_core::x509::SvidTemplate::new(
            SpiffeId::parse(ADMIN_ID).unwrap(),
            spire_core::x509::Validity::from_now(
                time::OffsetDateTime::now_utc(),
                time::Duration::minutes(10),
            ),
        ),
    )
    .unwrap();
    let err = BundleClient::new(tls_channel(
        server.tcp,
        client_tls(Some((vec![leaf], &leaf_key))),
    ))
    .count_bundles(bundlepb::CountBundlesRequest {})
    .await
    .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_ne!(
        err.code(),
        Code::PermissionDenied,
        "refused at the handshake: {err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn local_rpcs_work_over_the_admin_socket() {
    let server = start().await;
    let channel = unix_channel(&server.socket);

    let info = DebugClient::new(channel.clone())
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.agents_count, 0);
    assert_eq!(info.federated_bundles_count, 0);
    let leaf = info.svid_chain.first().expect("server SVID chain");
    assert_eq!(leaf.id.as_ref().unwrap().path, "/spire/server");

    let mut logger = LoggerClient::new(channel.clone());
    let set = logger
        .set_log_level(loggerpb::SetLogLevelRequest {
            new_level: types::LogLevel::Debug as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.current_level, types::LogLevel::Debug as i32);
    assert_eq!(set.launch_level, types::LogLevel::Info as i32);
    let reset = logger
        .reset_log_level(loggerpb::ResetLogLevelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.current_level, types::LogLevel::Info as i32);

    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    server.stop().await;
}

#[tokio::test]
async fn federated_bundles_refuse_the_own_trust_domain_per_item() {
    let server = start().await;
    let mut client = BundleClient::new(unix_channel(&server.socket));
    let own = client
        .get_bundle(get_bundle_request())
        .await
        .unwrap()
        .into_inner();
    let mut foreign = own.clone();
    foreign.trust_domain = "other.org".into();
    let response = client
        .batch_create_federated_bundle(bundlepb::BatchCreateFederatedBundleRequest {
            bundle: vec![
                own.clone(),
                foreign,
                types::Bundle {
                    trust_domain: "not a domain!".into(),
                    ..types::Bundle::default()
                },
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = response
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        [
            Code::InvalidArgument as i32,
            Code::Ok as i32,
            Code::InvalidArgument as i32
        ]
    );

    let listed = client
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .bundles
        .iter()
        .map(|b| b.trust_domain.as_str())
        .collect();
    assert_eq!(names, ["other.org"]);

    let err = client
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: TD.into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let deleted = client
        .batch_delete_federated_bundle(bundlepb::BatchDeleteFederatedBundleRequest {
            trust_domains: vec!["other.org".into(), "missing.org".into()],
            mode: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = deleted
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, [Code::Ok as i32, Code::NotFound as i32]);
    server.stop().await;
}

#[tokio::test]
async fn http_health_checks_answer_live_and_ready() {
    let server = start().await;
    let config = HealthChecksConfig {
        listener_enabled: true,
        bind_address: "127.0.0.1".into(),
        bind_port: 0,
        ..HealthChecksConfig::default()
    };
    let listener = spire_common::health::bind(&config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(health_http::serve_on(
        Some(listener),
        config.clone(),
        health_http::server_checks(server.ctx.clone(), server.socket.clone()),
        cancel.clone(),
    ));
    // The first round of checks runs at start; until then every subsystem is `null`.
    let healthy =
        "{\"catalog.datastore\":{},\"server\":{},\"server.ca\":{},\"server.ca.rotator\":{}}\n";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, "/ready").await;
        if status == 200 {
            assert_eq!(body, healthy);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(addr, "/live").await, (200, healthy.to_owned()));
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    cancel.cancel();
    task.await.unwrap().unwrap();

    // A server whose admin socket does not answer fails both probes, with upstream's details
    // key, while the other subsystems pass.
    let listener = spire_common::health::bind(&config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let gone = server.socket.with_file_name("gone.sock");
    let task = tokio::spawn(health_http::serve_on(
        Some(listener),
        config,
        health_http::server_checks(server.ctx.clone(), gone),
        cancel.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = http_get(addr, "/ready").await;
        assert_eq!(status, 500, "{body}");
        if !body.contains("null") {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never checked: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["server"]["get_bundle_err"].is_string(), "{body}");
    assert_eq!(body["catalog.datastore"], serde_json::json!({}));
    assert_eq!(http_get(addr, "/live").await.0, 500);
    cancel.cancel();
    task.await.unwrap().unwrap();
    server.stop().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (code, body)
}

#[tokio::test]
async fn agents_are_authorized_by_their_current_serial() {
    let server = start().await;
    let agent_id = "spiffe://example.org/spire/agent/join_token/abc";
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let chain = server
        .ctx
        .ca
        .sign_agent_x509_svid(&key.public_key_der(), &SpiffeId::parse(agent_id).unwrap())
        .await
        .unwrap();
    let serial = spire_core::x509::certificate_serial_decimal(&chain[0]).unwrap();
    let not_after = spire_core::x509::certificate_not_after(&chain[0])
        .unwrap()
        .unix_timestamp();
    let channel = tls_channel(server.tcp, client_tls(Some((chain, &key))));
    let request = || bundlepb::GetFederatedBundleRequest {
        trust_domain: "other.org".into(),
        output_mask: None,
    };

    // Not attested yet.
    let err = BundleClient::new(channel.clone())
        .get_federated_bundle(request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("is not attested"),
        "{}",
        err.message()
    );

    // Attested with this SVID as the new (renewed) one: allowed, and promoted to current.
    server
        .ctx
        .datastore
        .create_attested_node(spire_server::datastore::AttestedNode {
            spiffe_id: agent_id.into(),
            attestation_data_type: "join_token".into(),
            cert_serial_number: "12345".into(),
            cert_not_after: not_after,
            new_cert_serial_number: serial.clone(),
            new_cert_not_after: not_after,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = BundleClient::new(channel.clone())
        .get_federated_bundle(request())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "authorized, bundle missing: {err:?}"
    );
    let node = server
        .ctx
        .datastore
        .fetch_attested_node(agent_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.cert_serial_number, serial);
    assert_eq!(node.new_cert_serial_number, "");

    // Agents may not call admin RPCs.
    let err = BundleClient::new(channel.clone())
        .count_bundles(bundlepb::CountBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Another serial is current: not active.
    let mut other = node.clone();
    other.cert_serial_number = "999".into();
    server
        .ctx
        .datastore
        .update_attested_node(other, spire_server::datastore::AttestedNodeMask::ALL)
        .await
        .unwrap();
    let err = BundleClient::new(channel.clone())
        .get_federated_bundle(request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("expected to have serial number"),
        "{}",
        err.message()
    );

    // Banned (serials cleared).
    let mut banned = node;
    banned.cert_serial_number.clear();
    banned.new_cert_serial_number.clear();
    server
        .ctx
        .datastore
        .update_attested_node(banned, spire_server::datastore::AttestedNodeMask::ALL)
        .await
        .unwrap();
    let err = BundleClient::new(channel)
        .get_federated_bundle(request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("is banned"), "{}", err.message());
    server.stop().await;
}

/// An attested agent's SVID, its serial, and a TLS channel presenting it.
async fn attested_agent(server: &Server, agent_id: &str) -> (String, Channel) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let chain = server
        .ctx
        .ca
        .sign_agent_x509_svid(&key.public_key_der(), &SpiffeId::parse(agent_id).unwrap())
        .await
        .unwrap();
    let serial = spire_core::x509::certificate_serial_decimal(&chain[0]).unwrap();
    let not_after = spire_core::x509::certificate_not_after(&chain[0])
        .unwrap()
        .unix_timestamp();
    server
        .ctx
        .datastore
        .create_attested_node(spire_server::datastore::AttestedNode {
            spiffe_id: agent_id.into(),
            attestation_data_type: "join_token".into(),
            cert_serial_number: serial.clone(),
            cert_not_after: not_after,
            ..Default::default()
        })
        .await
        .unwrap();
    (
        serial,
        tls_channel(server.tcp, client_tls(Some((chain, &key)))),
    )
}

/// Bans the agent directly in the datastore, as another server sharing it would.
async fn ban_in_datastore(server: &Server, agent_id: &str) {
    let mut node = server
        .ctx
        .datastore
        .fetch_attested_node(agent_id)
        .await
        .unwrap()
        .unwrap();
    node.cert_serial_number.clear();
    node.new_cert_serial_number.clear();
    server
        .ctx
        .datastore
        .update_attested_node(node, spire_server::datastore::AttestedNodeMask::ALL)
        .await
        .unwrap();
}

async fn agent_call(channel: &Channel) -> Code {
    match BundleClient::new(channel.clone())
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn max_attested_node_info_staleness_zero_reads_the_datastore_on_every_call() {
    let server = start().await;
    let agent_id = "spiffe://example.org/spire/agent/join_token/fresh";
    let (_, channel) = attested_agent(&server, agent_id).await;
    // Authorized (then NotFound: no such federated bundle).
    assert_eq!(agent_call(&channel).await, Code::NotFound);
    ban_in_datastore(&server, agent_id).await;
    assert_eq!(agent_call(&channel).await, Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn max_attested_node_info_staleness_lets_a_recent_read_authorize() {
    let server = start_with(IndexOptions {
        max_attested_node_info_staleness: Duration::from_secs(2),
        ..IndexOptions::default()
    })
    .await;
    let agent_id = "spiffe://example.org/spire/agent/join_token/cached";
    let (_, channel) = attested_agent(&server, agent_id).await;
    assert_eq!(agent_call(&channel).await, Code::NotFound);
    // Banned behind this server's back: the serial read a moment ago still authorizes,
    // as upstream's node cache does within max_attested_node_info_staleness...
    ban_in_datastore(&server, agent_id).await;
    assert_eq!(agent_call(&channel).await, Code::NotFound);
    // ...and once it is stale the datastore is read again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(agent_call(&channel).await, Code::PermissionDenied);
    // A banned agent is not cached: it stays refused.
    assert_eq!(agent_call(&channel).await, Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn only_downstream_svids_may_mint_cas_and_publish_jwt_keys() {
    use spire_proto::spire::api::server::svid::v1 as svidpb;
    use spire_proto::spire::api::server::svid::v1::svid_client::SvidClient;
    use spire_server::datastore::RegistrationEntry;

    let server = start().await;
    for (spiffe_id, downstream) in [
        ("spiffe://example.org/workload", false),
        ("spiffe://example.org/nested-server", true),
    ] {
        server
            .ctx
            .datastore
            .create_registration_entry(RegistrationEntry {
                spiffe_id: spiffe_id.into(),
                parent_id: "spiffe://example.org/spire/agent/join_token/abc".into(),
                selectors: vec![spire_core::selector::Selector::parse("unix:uid:1000").unwrap()],
                downstream,
                ..RegistrationEntry::default()
            })
            .await
            .unwrap();
    }
    let csr = || {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        svidpb::NewDownstreamX509caRequest {
            csr: spire_core::x509::csr_der(&key).unwrap(),
            preferred_ttl: 600,
        }
    };
    let jwt_key = || {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        bundlepb::PublishJwtAuthorityRequest {
            jwt_authority: Some(types::JwtKey {
                public_key: key.public_key_der(),
                key_id: "nested-kid".into(),
                expires_at: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
                tainted: false,
            }),
        }
    };

    // A registered workload whose entry is not `-downstream`, and a caller without any
    // certificate: the authorization layer refuses both with PermissionDenied, as upstream's
    // `allow_if_downstream` policy (the handler's Internal is never reached).
    let (chain, key) = server.svid("spiffe://example.org/workload").await;
    let workload = tls_channel(server.tcp, client_tls(Some((chain, &key))));
    let anonymous = tls_channel(server.tcp, client_tls(None));
    for channel in [workload, anonymous] {
        let err = SvidClient::new(channel.clone())
            .new_downstream_x509ca(csr())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(
            err.message(),
            "Authorization denied for method /spire.api.server.svid.v1.SVID/NewDownstreamX509CA"
        );
        let err = BundleClient::new(channel)
            .publish_jwt_authority(jwt_key())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(
            err.message(),
            "Authorization denied for method /spire.api.server.bundle.v1.Bundle/PublishJWTAuthority"
        );
    }
    // The admin socket is no downstream either.
    let err = SvidClient::new(unix_channel(&server.socket))
        .new_downstream_x509ca(csr())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The SVID of the `-downstream` entry may do both.
    let (chain, key) = server.svid("spiffe://example.org/nested-server").await;
    let nested = tls_channel(server.tcp, client_tls(Some((chain, &key))));
    let minted = SvidClient::new(nested.clone())
        .new_downstream_x509ca(csr())
        .await
        .unwrap()
        .into_inner();
    assert!(!minted.ca_cert_chain.is_empty());
    let published = BundleClient::new(nested)
        .publish_jwt_authority(jwt_key())
        .await
        .unwrap()
        .into_inner();
    assert!(
        published
            .jwt_authorities
            .iter()
            .any(|k| k.key_id == "nested-kid"),
        "{published:?}"
    );

    server.stop().await;
}
