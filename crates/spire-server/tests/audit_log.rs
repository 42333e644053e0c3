//! `audit_log_enabled` and `disable_jwt_svids` through the real listeners: the audit layer
//! writes upstream's "API accessed" entries (caller, RPC, status, request fields; one entry
//! per batch item; none for calls authorization refused), and a server with JWT-SVIDs
//! disabled answers the JWT RPCs Unimplemented and keeps no JWT keys.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use spire_core::keys::PrivateKey;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::agent::v1 as agentpb;
use spire_proto::spire::api::server::agent::v1::agent_client::AgentClient;
use spire_proto::spire::api::server::bundle::v1 as bundlepb;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use spire_proto::spire::api::server::localauthority::v1 as lapb;
use spire_proto::spire::api::server::localauthority::v1::local_authority_client::LocalAuthorityClient;
use spire_proto::spire::api::server::svid::v1 as svidpb;
use spire_proto::spire::api::server::svid::v1::svid_client::SvidClient;
use spire_proto::spire::api::types;
use spire_server::api::{ApiContext, ApiSettings};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::DataStore;
use spire_server::endpoints::{Endpoints, EndpointsConfig};
use spire_server::plugins::keymanager::memory::MemoryKeyManager;
use spire_server::plugins::nodeattestor::NodeAttestors;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

const TD: &str = "example.org";

/// Log lines written by the server under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// The audit entries so far, as JSON objects.
    fn audit_entries(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|entry| entry["type"] == "audit")
            .collect()
    }
}

struct Server {
    _dir: tempfile::TempDir,
    ctx: Arc<ApiContext>,
    socket: PathBuf,
    tcp: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), spire_server::endpoints::EndpointsError>>,
}

async fn start(audit_log_enabled: bool, disable_jwt_svids: bool) -> Server {
    start_with_proxy(audit_log_enabled, disable_jwt_svids, &[]).await
}

/// A server whose TCP listener accepts PROXY headers from `trusted_cidrs`.
async fn start_with_proxy(
    audit_log_enabled: bool,
    disable_jwt_svids: bool,
    trusted_cidrs: &[&str],
) -> Server {
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
    let mut ca_config = CaConfig::new(trust_domain.clone());
    ca_config.disable_jwt_svids = disable_jwt_svids;
    let ca = CaManager::new(
        ca_config,
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
        settings: ApiSettings {
            rate_limit_attestation: false,
            rate_limit_signing: false,
            audit_log_enabled,
            disable_jwt_svids,
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
    .unwrap()
    .with_proxy_protocol(trusted_cidrs.iter().map(|c| c.parse().unwrap()).collect());
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

/// Logs of this (current-thread) test go to the returned buffer, as JSON lines.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let (subscriber, _level) =
        spire_common::logging::build("info", "json", BoxMakeWriter::new(captured.clone()), false)
            .unwrap();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

fn entry(spiffe_id: &str) -> types::Entry {
    types::Entry {
        spiffe_id: Some(types::Spiffeid {
            trust_domain: TD.into(),
            path: spiffe_id.into(),
        }),
        parent_id: Some(types::Spiffeid {
            trust_domain: TD.into(),
            path: "/node".into(),
        }),
        selectors: vec![types::Selector {
            r#type: "unix".into(),
            value: "uid:1000".into(),
        }],
        x509_svid_ttl: 600,
        ..types::Entry::default()
    }
}

#[tokio::test]
async fn admin_calls_write_upstreams_audit_entries() {
    let (captured, _guard) = capture();
    let server = start(true, false).await;

    // A batch: one entry per item, with its own status and the entry's fields.
    let mut entries = EntryClient::new(unix_channel(&server.socket));
    entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![entry("/workload"), entry("no-leading-slash")],
            output_mask: None,
        })
        .await
        .unwrap();
    let audit = captured.audit_entries();
    assert_eq!(audit.len(), 2, "{audit:#?}");
    let ok = &audit[0];
    assert_eq!(ok["msg"], "API accessed");
    assert_eq!(ok["level"], "info");
    assert_eq!(ok["status"], "success");
    assert_eq!(ok["service"], "entry.v1.Entry");
    assert_eq!(ok["method"], "BatchCreateEntry");
    assert_eq!(ok["spiffe_id"], "spiffe://example.org/workload");
    assert_eq!(ok["parent_id"], "spiffe://example.org/node");
    assert_eq!(ok["selectors"], "unix:uid:1000");
    assert_eq!(ok["x509_svid_ttl"], 600);
    assert_eq!(ok["admin"], false);
    assert_eq!(ok["authorized_as"], "local");
    assert_eq!(ok["authorized_via"], "transport");
    // A local caller: who it is, from the socket's peer credentials.
    assert_eq!(ok["caller_uid"], u64::from(process_uid()));
    let path = ok["caller_path"].as_str().expect("caller_path");
    assert!(Path::new(path).exists(), "{path}");
    assert!(ok["request_id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(ok.get("caller_addr").is_none());
    let bad = &audit[1];
    assert_eq!(bad["status"], "error");
    assert_eq!(bad["status_code"], "InvalidArgument");
    assert!(
        bad["status_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(bad["request_id"], ok["request_id"]);

    // A failing unary call: one error entry with the fields added so far.
    let status = AgentClient::new(unix_channel(&server.socket))
        .get_agent(agentpb::GetAgentRequest {
            id: Some(types::Spiffeid {
                trust_domain: TD.into(),
                path: "/spire/agent/x/missing".into(),
            }),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let audit = captured.audit_entries();
    let last = audit.last().unwrap();
    assert_eq!(last["method"], "GetAgent");
    assert_eq!(last["service"], "agent.v1.Agent");
    assert_eq!(last["status"], "error");
    assert_eq!(last["status_code"], "NotFound");
    assert_eq!(last["status_message"], "agent not found");
    assert_eq!(
        last["spiffe_id"],
        "spiffe://example.org/spire/agent/x/missing"
    );

    // An open RPC over TCP: the caller's address, authorized as nobody.
    BundleClient::new(tls_channel(server.tcp, client_tls(None)))
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .unwrap();
    let audit = captured.audit_entries();
    let last = audit.last().unwrap();
    assert_eq!(last["method"], "GetBundle");
    assert_eq!(last["status"], "success");
    assert_eq!(last["trust_domain_id"], TD);
    assert_eq!(last["authorized_as"], "nobody");
    assert_eq!(last["authorized_via"], "");
    assert!(
        last["caller_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert!(last.get("caller_uid").is_none());

    // Refused by authorization: no entry, as upstream's audit middleware runs last.
    let before = captured.audit_entries().len();
    let status = EntryClient::new(tls_channel(server.tcp, client_tls(None)))
        .count_entries(entrypb::CountEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(captured.audit_entries().len(), before);

    server.stop().await;
}

/// The test process's user id, read from /proc (no libc in this test).
fn process_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn no_audit_entries_unless_enabled() {
    let (captured, _guard) = capture();
    let server = start(false, false).await;
    EntryClient::new(unix_channel(&server.socket))
        .count_entries(entrypb::CountEntriesRequest::default())
        .await
        .unwrap();
    assert!(captured.audit_entries().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn disable_jwt_svids_refuses_the_jwt_rpcs_and_keeps_no_jwt_keys() {
    let server = start(false, true).await;
    let status = SvidClient::new(unix_channel(&server.socket))
        .mint_jwtsvid(svidpb::MintJwtsvidRequest {
            id: Some(types::Spiffeid {
                trust_domain: TD.into(),
                path: "/workload".into(),
            }),
            audience: vec!["aud".into()],
            ttl: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "JWT functionality is disabled");
    let status = LocalAuthorityClient::new(unix_channel(&server.socket))
        .get_jwt_authority_state(lapb::GetJwtAuthorityStateRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // X.509 keeps working, and the bundle has no JWT authority.
    let bundle = BundleClient::new(unix_channel(&server.socket))
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!bundle.x509_authorities.is_empty());
    assert!(bundle.jwt_authorities.is_empty(), "{bundle:?}");
    server.ctx.ca.rotate().await.unwrap();
    server.stop().await;

    // The same server with JWT-SVIDs on signs them.
    let server = start(false, false).await;
    let minted = SvidClient::new(unix_channel(&server.socket))
        .mint_jwtsvid(svidpb::MintJwtsvidRequest {
            id: Some(types::Spiffeid {
                trust_domain: TD.into(),
                path: "/workload".into(),
            }),
            audience: vec!["aud".into()],
            ttl: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(minted.svid.is_some());
    server.stop().await;
}

/// A TLS channel whose TCP connection first sends `preamble` (a PROXY header), as a load
/// balancer would, then the TLS handshake.
fn tls_channel_after(addr: SocketAddr, config: rustls::ClientConfig, preamble: Vec<u8>) -> Channel {
    use tokio::io::AsyncWriteExt;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_static("http://spire-server.tcp").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let connector = connector.clone();
            let preamble = preamble.clone();
            async move {
                let mut tcp = TcpStream::connect(addr).await?;
                tcp.write_all(&preamble).await?;
                let name = ServerName::try_from("spire-server").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        },
    ))
}

/// GetBundle over TCP after `preamble`; the `caller_addr` of its audit entry.
async fn audited_caller_addr(
    server: &Server,
    captured: &Captured,
    preamble: Vec<u8>,
) -> Result<String, tonic::Status> {
    BundleClient::new(tls_channel_after(server.tcp, client_tls(None), preamble))
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await?;
    let audit = captured.audit_entries();
    let last = audit.last().unwrap();
    assert_eq!(last["method"], "GetBundle");
    Ok(last["caller_addr"].as_str().unwrap().to_owned())
}

fn v2_header(source: &str, destination: SocketAddr) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let source: SocketAddr = source.parse().unwrap();
    let destination = if source.is_ipv6() {
        SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), destination.port())
    } else {
        destination
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn proxy_protocol_headers_from_trusted_sources_name_the_caller() {
    let (captured, _guard) = capture();
    let server = start_with_proxy(true, false, &["127.0.0.0/8"]).await;

    // v1, as HAProxy's `send-proxy` writes it.
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n",
        server.tcp.port()
    );
    let addr = audited_caller_addr(&server, &captured, v1.into_bytes())
        .await
        .unwrap();
    assert_eq!(addr, "203.0.113.7:40000");

    // v2 (binary), IPv4 and IPv6, as `send-proxy-v2` and cloud load balancers write it.
    let addr = audited_caller_addr(
        &server,
        &captured,
        v2_header("198.51.100.9:41000", server.tcp),
    )
    .await
    .unwrap();
    assert_eq!(addr, "198.51.100.9:41000");
    let addr = audited_caller_addr(
        &server,
        &captured,
        v2_header("[2001:db8::7]:42000", server.tcp),
    )
    .await
    .unwrap();
    assert_eq!(addr, "[2001:db8::7]:42000");

    // The header is optional from a trusted source, and LOCAL / UNKNOWN keep the peer.
    let addr = audited_caller_addr(&server, &captured, Vec::new())
        .await
        .unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let addr = audited_caller_addr(&server, &captured, b"PROXY UNKNOWN\r\n".to_vec())
        .await
        .unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // A malformed header closes the connection.
    let err = audited_caller_addr(&server, &captured, b"PROXY TCP4 nonsense\r\n".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn proxy_protocol_headers_from_untrusted_sources_close_the_connection() {
    let (captured, _guard) = capture();
    // 127.0.0.1 is not in the trusted range.
    let server = start_with_proxy(true, false, &["10.0.0.0/8"]).await;
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n",
        server.tcp.port()
    );
    let err = audited_caller_addr(&server, &captured, v1.into_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let err = audited_caller_addr(
        &server,
        &captured,
        v2_header("198.51.100.9:41000", server.tcp),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // Without a header the same source is served, with its own address.
    let addr = audited_caller_addr(&server, &captured, Vec::new())
        .await
        .unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn without_proxy_protocol_a_header_is_just_bad_tls() {
    let (captured, _guard) = capture();
    let server = start(true, false).await;
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n",
        server.tcp.port()
    );
    let err = audited_caller_addr(&server, &captured, v1.into_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    server.stop().await;
}

/// The newest audit entry of `method`.
fn last_of(captured: &Captured, method: &str) -> Value {
    captured
        .audit_entries()
        .into_iter()
        .rev()
        .find(|e| e["method"] == method)
        .unwrap_or_else(|| panic!("no audit entry for {method}"))
}

#[tokio::test]
async fn bundle_authority_and_agent_calls_carry_upstreams_request_fields() {
    use spire_server::api::audit::sha256_hex;
    let (captured, _guard) = capture();
    let server = start(true, false).await;

    // AppendBundle: upstream's per-authority fields (FieldsFrom{Jwt,X509}AuthoritiesProto).
    let ca_key = PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
    let validity = spire_core::x509::Validity::from_now(
        time::OffsetDateTime::now_utc(),
        time::Duration::hours(1),
    );
    let ca_der = spire_core::x509::self_signed_ca(
        &ca_key,
        &spire_core::x509::CaTemplate::new(TrustDomain::new(TD).unwrap(), validity),
    )
    .unwrap();
    let jwt_key = PrivateKey::generate(spire_core::keys::KeyType::EcP256)
        .unwrap()
        .public_key_der();
    BundleClient::new(unix_channel(&server.socket))
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![types::X509Certificate {
                asn1: ca_der.clone(),
                tainted: false,
            }],
            jwt_authorities: vec![types::JwtKey {
                public_key: jwt_key.clone(),
                key_id: "appended-key".into(),
                expires_at: 1_900_000_000,
                tainted: false,
            }],
            wit_authorities: Vec::new(),
            output_mask: None,
        })
        .await
        .unwrap();
    let e = last_of(&captured, "AppendBundle");
    assert_eq!(e["service"], "bundle.v1.Bundle");
    assert_eq!(e["status"], "success");
    assert_eq!(e["x509_authorities_asn1_sha256.0"], sha256_hex(&ca_der));
    assert_eq!(e["jwt_authority_key_id.0"], "appended-key");
    assert_eq!(e["jwt_authority_expires_at.0"], 1_900_000_000);
    assert_eq!(e["jwt_authority_public_key_sha256.0"], sha256_hex(&jwt_key));

    // A LocalAuthority RPC.
    LocalAuthorityClient::new(unix_channel(&server.socket))
        .get_jwt_authority_state(lapb::GetJwtAuthorityStateRequest {})
        .await
        .unwrap();
    let e = last_of(&captured, "GetJWTAuthorityState");
    assert_eq!(e["service"], "localauthority.v1.LocalAuthority");
    assert_eq!(e["status"], "success");

    // An agent: AttestAgent with a join token over TCP, then RenewAgent with its SVID.
    AgentClient::new(unix_channel(&server.socket))
        .create_join_token(agentpb::CreateJoinTokenRequest {
            ttl: 600,
            token: "audit-token".into(),
            agent_id: None,
        })
        .await
        .unwrap();
    let key = PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
    let csr = spire_core::x509::csr_der(&key).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: "join_token".into(),
                    payload: b"audit-token".to_vec(),
                }),
                params: Some(agentpb::AgentX509svidParams { csr: csr.clone() }),
            },
        )),
    })
    .await
    .unwrap();
    let mut responses = AgentClient::new(tls_channel(server.tcp, client_tls(None)))
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    drop(tx);
    let Some(agentpb::attest_agent_response::Step::Result(result)) = response.step else {
        panic!("join_token needs no challenge");
    };
    let chain = result.svid.unwrap().cert_chain;
    let e = last_of(&captured, "AttestAgent");
    assert_eq!(e["service"], "agent.v1.Agent");
    assert_eq!(e["status"], "success");
    assert_eq!(e["node_attestor_type"], "join_token");
    assert_eq!(
        e["agent_id"],
        "spiffe://example.org/spire/agent/join_token/audit-token"
    );
    assert!(
        e["caller_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );

    let renew_key = PrivateKey::generate(spire_core::keys::KeyType::EcP256).unwrap();
    let renew_csr = spire_core::x509::csr_der(&renew_key).unwrap();
    AgentClient::new(tls_channel(server.tcp, client_tls(Some((chain, &key)))))
        .renew_agent(agentpb::RenewAgentRequest {
            params: Some(agentpb::AgentX509svidParams {
                csr: renew_csr.clone(),
            }),
        })
        .await
        .unwrap();
    let e = last_of(&captured, "RenewAgent");
    assert_eq!(e["status"], "success");
    assert_eq!(e["authorized_as"], "agent");
    assert_eq!(
        e["caller_id"],
        "spiffe://example.org/spire/agent/join_token/audit-token"
    );
    assert_eq!(e["csr"], sha256_hex(&renew_csr));

    server.stop().await;
}
