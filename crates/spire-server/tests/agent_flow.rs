//! An agent's life against a real server, over the real listeners, as an upstream
//! spire-agent lives it: bootstrap over TLS without a client certificate (checking the
//! server's SVID against the trust bundle), join-token attestation, then mTLS with the agent
//! SVID for entry sync, workload SVID signing, JWT-SVIDs and renewal; admin calls over the
//! unix socket (tokens, entries, bans); and a restart on the same data directory.
//!
//! Everything issued is checked with verifiers independent of the server: rustls-webpki for
//! the chains, the `spiffe` crate for the X509-SVID rules and JWT-SVID signatures.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use prost::Message as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::agent::v1 as agentpb;
use spire_proto::spire::api::server::agent::v1::agent_client::AgentClient;
use spire_proto::spire::api::server::bundle::v1 as bundlepb;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use spire_proto::spire::api::server::svid::v1 as svidpb;
use spire_proto::spire::api::server::svid::v1::svid_client::SvidClient;
use spire_proto::spire::api::types;
use spire_proto::spire::api::types::permission_denied_details::Reason;
use spire_server::api::ratelimit::RateLimiters;
use spire_server::api::{ApiContext, ApiSettings};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::datastore::{DataStore, JoinToken};
use spire_server::endpoints::{Endpoints, EndpointsConfig, EndpointsError};
use spire_server::plugins::keymanager::disk::DiskKeyManager;
use spire_server::plugins::nodeattestor::NodeAttestors;
use tokio::net::{TcpStream, UnixStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use x509_parser::extensions::GeneralName;

const TD: &str = "example.org";
const SERVER_ID: &str = "spiffe://example.org/spire/server";
const WORKLOAD_DNS: &str = "workload.example.org";
const AUDIENCE: &str = "spire-test-audience";

// ---------------------------------------------------------------------------------------
// The server, assembled as `spire-server run` assembles it, on a data directory.
// ---------------------------------------------------------------------------------------

struct Server {
    ctx: Arc<ApiContext>,
    store: Arc<SqlDataStore>,
    socket: PathBuf,
    tcp: SocketAddr,
    cancel: CancellationToken,
    endpoints: JoinHandle<Result<(), EndpointsError>>,
    background: JoinSet<()>,
}

/// Starts a server whose datastore, keys and socket live in `dir`; a second call on the
/// same `dir` is a restart.
async fn start(dir: &Path, rate_limit_attestation: bool) -> Server {
    let store = Arc::new(
        SqlDataStore::open(&SqlConfig {
            database_type: "sqlite3".into(),
            connection_string: dir.join("datastore.sqlite3").to_string_lossy().into_owned(),
            max_open_conns: None,
            disable_migration: false,
        })
        .await
        .expect("open the sqlite datastore"),
    );
    let datastore: Arc<dyn DataStore> = store.clone();
    let key_manager =
        Arc::new(DiskKeyManager::open(dir.join("keys.json")).expect("open the disk key manager"));
    let trust_domain = TrustDomain::new(TD).unwrap();
    let ca = CaManager::new(
        CaConfig::new(trust_domain.clone()),
        key_manager,
        None,
        datastore.clone(),
    )
    .await
    .expect("start the CA");
    let index = AuthorizedIndex::load(datastore.clone())
        .await
        .expect("load the authorized-entry index");
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
            rate_limit_attestation,
            rate_limit_signing: false,
            ..ApiSettings::default()
        },
        log_level: Default::default(),
        started_at: Instant::now(),
        rate_limits: RateLimiters::new(rate_limit_attestation, false),
        node_attestors,
        bundle_refresher,
    });
    let cancel = CancellationToken::new();
    let mut background = JoinSet::new();
    background.spawn(ca.run(cancel.clone()));
    background.spawn(index.run(Duration::from_secs(1), cancel.clone()));
    let socket = dir.join("private").join("api.sock");
    let endpoints = Endpoints::bind(
        ctx.clone(),
        &EndpointsConfig {
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            socket_path: socket.clone(),
        },
    )
    .await
    .expect("bind the listeners");
    let tcp = endpoints.local_tcp_addr().unwrap();
    let endpoints = tokio::spawn(endpoints.run(cancel.clone()));
    Server {
        ctx,
        store,
        socket,
        tcp,
        cancel,
        endpoints,
        background,
    }
}

impl Server {
    /// Stops every task and closes the datastore, as a SIGTERM would.
    async fn stop(self) {
        let Self {
            ctx,
            store,
            cancel,
            endpoints,
            mut background,
            ..
        } = self;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), endpoints)
            .await
            .expect("the listeners stop on cancel")
            .unwrap()
            .expect("the listeners stop cleanly");
        tokio::time::timeout(Duration::from_secs(10), async {
            while background.join_next().await.is_some() {}
        })
        .await
        .expect("the CA and index tasks stop on cancel");
        drop(ctx);
        store.close().await;
    }

    fn admin(&self) -> Admin {
        Admin(unix_channel(&self.socket))
    }

    /// A TLS connection as an agent makes it: verifying the server against `bundle`, and
    /// presenting `identity` when it has an SVID.
    fn agent_channel(&self, bundle: &[Vec<u8>], identity: Option<&AgentSvid>) -> Channel {
        let (verifier, _) = SpiffeServerVerifier::new(bundle, SERVER_ID);
        tls_channel(self.tcp, agent_tls(verifier, identity))
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

fn tls_channel(addr: SocketAddr, config: rustls::ClientConfig) -> Channel {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_static("http://spire-server.tcp").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                // Agents dial by address; the name plays no part in the SPIFFE check.
                let name = ServerName::try_from("spire-server").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        },
    ))
}

// ---------------------------------------------------------------------------------------
// The agent's TLS: the server must present an X509-SVID for `spiffe://<td>/spire/server`
// chained to the agent's trust bundle (go-spiffe's `tlsconfig.AuthorizeID` with
// `x509svid.Verify`), checked here with rustls-webpki, not with the server's own code.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Vec<CertificateDer<'static>>,
    expected_id: String,
    provider: Arc<CryptoProvider>,
    checked: Arc<AtomicUsize>,
}

impl SpiffeServerVerifier {
    /// The verifier and a counter of the server certificates it accepted.
    fn new(bundle: &[Vec<u8>], expected_id: &str) -> (Arc<Self>, Arc<AtomicUsize>) {
        let checked = Arc::new(AtomicUsize::new(0));
        let verifier = Self {
            roots: bundle
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
            expected_id: expected_id.to_owned(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            checked: checked.clone(),
        };
        (Arc::new(verifier), checked)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let general = |what: &str, e: &dyn std::fmt::Debug| {
            rustls::Error::General(format!("server certificate refused: {what}: {e:?}"))
        };
        let anchors = self
            .roots
            .iter()
            .map(|root| webpki::anchor_from_trusted_cert(root).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| general("bad bundle certificate", &e))?;
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| general("malformed leaf", &e))?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| general("chain does not verify against the trust bundle", &e))?;
        let ids = uri_sans(end_entity.as_ref());
        if ids != [self.expected_id.as_str()] {
            return Err(general(
                "unexpected SPIFFE ID",
                &format!("{ids:?}, want {}", self.expected_id),
            ));
        }
        self.checked.fetch_add(1, Ordering::SeqCst);
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn agent_tls(
    verifier: Arc<SpiffeServerVerifier>,
    identity: Option<&AgentSvid>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(svid) => builder
            .with_client_auth_cert(
                svid.chain
                    .iter()
                    .cloned()
                    .map(CertificateDer::from)
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.pkcs8_der().to_vec())),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

// ---------------------------------------------------------------------------------------
// Certificate helpers.
// ---------------------------------------------------------------------------------------

/// The URI SANs of a DER certificate.
fn uri_sans(der: &[u8]) -> Vec<String> {
    names(der).0
}

/// (URI SANs, DNS SANs, subject common name) of a DER certificate.
fn names(der: &[u8]) -> (Vec<String>, Vec<String>, Option<String>) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return (Vec::new(), Vec::new(), None);
    };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                _ => {}
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    (uris, dns, cn)
}

/// Checks `chain` (leaf first) with verifiers independent of the server: the `spiffe`
/// crate's X509-SVID rules (with the private key it belongs to), rustls-webpki's path
/// validation to `bundle` for client authentication (how the server and other workloads
/// will check it), and that the leaf holds `key`'s public key. spire-core's verifier must
/// agree. Returns the SPIFFE ID.
fn verify_svid(chain: &[Vec<u8>], key: &PrivateKey, bundle: &[Vec<u8>]) -> String {
    let svid = spiffe::X509Svid::parse_from_der(&chain.concat(), key.pkcs8_der())
        .expect("a valid X509-SVID per the spiffe crate");
    let leaf_der = CertificateDer::from(chain[0].as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let anchors: Vec<_> = bundle
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .unwrap()
                .to_owned()
        })
        .collect();
    let intermediates: Vec<_> = chain[1..]
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("the SVID chains to the trust bundle");
    assert_eq!(
        spire_core::x509::certificate_public_key(&chain[0]).unwrap(),
        key.public_key_der(),
        "the SVID certifies the CSR's key"
    );
    let by_core =
        spire_core::x509::verify_x509_svid(chain, bundle, time::OffsetDateTime::now_utc())
            .expect("spire-core agrees the SVID verifies");
    assert_eq!(by_core.as_str(), svid.spiffe_id().to_string());
    svid.spiffe_id().to_string()
}

fn serial(chain: &[Vec<u8>]) -> String {
    spire_core::x509::certificate_serial_decimal(&chain[0]).unwrap()
}

/// Seconds from now until the leaf expires.
fn seconds_left(chain: &[Vec<u8>]) -> i64 {
    let not_after = spire_core::x509::certificate_not_after(&chain[0]).unwrap();
    (not_after - time::OffsetDateTime::now_utc()).whole_seconds()
}

/// A CSR for `key` that asks for `uri` as its URI SAN, which the server must ignore.
fn csr_asking_for(key: &PrivateKey, uri: &str) -> Vec<u8> {
    let key_pair = rcgen::KeyPair::try_from(key.pkcs8_der()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example.org".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    params.serialize_request(&key_pair).unwrap().der().to_vec()
}

// ---------------------------------------------------------------------------------------
// Status helpers.
// ---------------------------------------------------------------------------------------

/// `google.rpc.Status`, to read the details the server attaches.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<AnyDetail>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyDetail {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The `PermissionDeniedDetails` reason an agent reads to decide whether to re-attest.
fn denied_reason(status: &Status) -> Option<Reason> {
    let decoded = RpcStatus::decode(status.details()).ok()?;
    let detail = decoded.details.iter().find(|d| {
        d.type_url
            .ends_with("spire.api.types.PermissionDeniedDetails")
    })?;
    let details = types::PermissionDeniedDetails::decode(detail.value.as_slice()).ok()?;
    Reason::try_from(details.reason).ok()
}

#[track_caller]
fn assert_denied(result: Result<impl std::fmt::Debug, Status>, reason: Reason, message: &str) {
    let err = result.expect_err("the call is refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(message), "{err:?}");
    assert_eq!(denied_reason(&err), Some(reason), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Admin calls over the unix socket.
// ---------------------------------------------------------------------------------------

fn spiffe_id(path: &str) -> Option<types::Spiffeid> {
    Some(types::Spiffeid {
        trust_domain: TD.into(),
        path: path.into(),
    })
}

fn selector(kind: &str, value: &str) -> types::Selector {
    types::Selector {
        r#type: kind.into(),
        value: value.into(),
    }
}

fn join_token_agent_path(token: &str) -> String {
    format!("/spire/agent/join_token/{token}")
}

struct Admin(Channel);

impl Admin {
    async fn bundle(&self) -> types::Bundle {
        BundleClient::new(self.0.clone())
            .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
            .await
            .unwrap()
            .into_inner()
    }

    async fn join_token(&self, alias_path: Option<&str>) -> String {
        let token = AgentClient::new(self.0.clone())
            .create_join_token(agentpb::CreateJoinTokenRequest {
                ttl: 600,
                token: String::new(),
                agent_id: alias_path.and_then(spiffe_id),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!token.value.is_empty());
        let left = token.expires_at - time::OffsetDateTime::now_utc().unix_timestamp();
        // A little slack below 600: a loaded machine can take seconds between the two clocks.
        assert!((590..=600).contains(&left), "token TTL 600 s, {left} left");
        token.value
    }

    /// Creates the entries and returns their IDs, in order.
    async fn create_entries(&self, entries: Vec<types::Entry>) -> Vec<String> {
        let results = EntryClient::new(self.0.clone())
            .batch_create_entry(entrypb::BatchCreateEntryRequest {
                entries,
                output_mask: None,
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        results
            .into_iter()
            .map(|r| {
                let status = r.status.unwrap();
                assert_eq!(status.code, Code::Ok as i32, "{}", status.message);
                r.entry.unwrap().id
            })
            .collect()
    }

    async fn entries(&self) -> Vec<types::Entry> {
        let mut entries = EntryClient::new(self.0.clone())
            .list_entries(entrypb::ListEntriesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries;
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries
    }

    async fn agent(&self, path: &str) -> types::Agent {
        AgentClient::new(self.0.clone())
            .get_agent(agentpb::GetAgentRequest {
                id: spiffe_id(path),
                output_mask: None,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn ban(&self, path: &str) {
        AgentClient::new(self.0.clone())
            .ban_agent(agentpb::BanAgentRequest {
                id: spiffe_id(path),
            })
            .await
            .unwrap();
    }
}

fn x509_roots(bundle: &types::Bundle) -> Vec<Vec<u8>> {
    bundle
        .x509_authorities
        .iter()
        .map(|a| a.asn1.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Agent calls.
// ---------------------------------------------------------------------------------------

/// An agent's X509-SVID and its key.
struct AgentSvid {
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
}

fn attest_request(data_type: &str, payload: &[u8], csr: Vec<u8>) -> agentpb::AttestAgentRequest {
    agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: data_type.into(),
                    payload: payload.to_vec(),
                }),
                params: Some(agentpb::AgentX509svidParams { csr }),
            },
        )),
    }
}

/// Runs the AttestAgent stream with a join token, as the agent's join_token attestor does.
async fn attest(channel: Channel, token: &str) -> Result<(types::X509svid, PrivateKey), Status> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let request = attest_request(
        "join_token",
        token.as_bytes(),
        spire_core::x509::csr_der(&key).unwrap(),
    );
    // The stream stays open until the server answered, as the agent's does.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.unwrap();
    let mut responses = AgentClient::new(channel)
        .attest_agent(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let response = responses
        .message()
        .await?
        .ok_or_else(|| Status::internal("the attestation stream ended without a result"))?;
    drop(tx);
    match response.step {
        Some(agentpb::attest_agent_response::Step::Result(result)) => {
            assert!(!result.reattestable, "join_token agents cannot re-attest");
            Ok((result.svid.expect("an agent SVID"), key))
        }
        other => panic!("join_token needs no challenge, got {other:?}"),
    }
}

/// SyncAuthorizedEntries as the agent's sync client runs it: an empty first request, then
/// (for a small set) every entry in one page.
async fn sync_entries(channel: Channel) -> Result<Vec<types::Entry>, Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(entrypb::SyncAuthorizedEntriesRequest::default())
        .await
        .unwrap();
    let mut responses = EntryClient::new(channel)
        .sync_authorized_entries(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = responses
        .message()
        .await?
        .ok_or_else(|| Status::internal("the sync stream ended without a page"))?;
    drop(tx);
    assert!(!first.more, "a small set fits one page");
    assert!(
        first.entry_revisions.is_empty(),
        "full entries, not revisions"
    );
    Ok(first.entries)
}

async fn authorized_entries(channel: Channel) -> Result<Vec<types::Entry>, Status> {
    Ok(EntryClient::new(channel)
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await?
        .into_inner()
        .entries)
}

fn spiffe_ids(entries: &[types::Entry]) -> BTreeSet<String> {
    entries
        .iter()
        .map(|e| {
            let id = e.spiffe_id.as_ref().unwrap();
            format!("spiffe://{}{}", id.trust_domain, id.path)
        })
        .collect()
}

async fn new_x509_svids(
    channel: Channel,
    params: Vec<svidpb::NewX509svidParams>,
) -> Result<Vec<svidpb::batch_new_x509svid_response::Result>, Status> {
    Ok(SvidClient::new(channel)
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params })
        .await?
        .into_inner()
        .results)
}

/// The trust bundle's JWT authorities, for spire-core's validator and, through the SPIFFE
/// bundle document, for the `spiffe` crate's.
fn jwt_bundles(bundle: &types::Bundle) -> (spire_core::bundle::Bundle, spiffe::JwtBundleSet) {
    let mut core = spire_core::bundle::Bundle::new(TrustDomain::new(TD).unwrap());
    for key in &bundle.jwt_authorities {
        core.add_jwt_authority(spire_core::jwt::JwtAuthority {
            key_id: key.key_id.clone(),
            public_key_der: key.public_key.clone(),
            expires_at: Some(key.expires_at),
        })
        .unwrap();
    }
    assert!(!core.jwt_authorities.is_empty(), "the bundle has JWT keys");
    let document = core.to_spiffe_document().unwrap();
    let jwt = spiffe::JwtBundle::from_jwt_authorities(
        spiffe::TrustDomain::new(TD).unwrap(),
        document.as_bytes(),
    )
    .unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(jwt);
    (core, set)
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// Steps 1–4: admin setup over the socket, bootstrap, then everything an agent does over
/// mTLS, renewal with upstream's serial promotion, admin refusal and banning.
#[tokio::test]
async fn an_agent_attests_syncs_signs_renews_and_is_banned() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), false).await;
    let admin = server.admin();

    // 1. The operator creates a join token whose agent gets the alias /node-alias, and the
    //    entries: one for the agent, one under the alias, one for another agent.
    let token = admin.join_token(Some("/node-alias")).await;
    let agent_path = join_token_agent_path(&token);
    let agent_id = format!("spiffe://{TD}{agent_path}");
    let workload = types::Entry {
        spiffe_id: spiffe_id("/workload"),
        parent_id: spiffe_id(&agent_path),
        selectors: vec![selector("unix", "uid:1000")],
        x509_svid_ttl: 600,
        jwt_svid_ttl: 120,
        dns_names: vec![WORKLOAD_DNS.into(), "other.example.org".into()],
        ..types::Entry::default()
    };
    let under_alias = types::Entry {
        spiffe_id: spiffe_id("/under-alias"),
        parent_id: spiffe_id("/node-alias"),
        selectors: vec![selector("unix", "uid:1001")],
        additional_attributes: Some(types::entry::AdditionalAttributes {
            disable_x509_svid_prefetch: false,
            jwt_svid_include_jti: true,
        }),
        ..types::Entry::default()
    };
    let foreign = types::Entry {
        spiffe_id: spiffe_id("/foreign"),
        parent_id: spiffe_id("/spire/agent/join_token/someone-else"),
        selectors: vec![selector("unix", "uid:1000")],
        ..types::Entry::default()
    };
    let ids = admin
        .create_entries(vec![workload, under_alias, foreign])
        .await;
    let (workload_id, under_alias_id, foreign_id) = (&ids[0], &ids[1], &ids[2]);
    let all_entries = admin.entries().await;
    assert_eq!(all_entries.len(), 4, "three entries plus the alias entry");
    let alias_entry = all_entries
        .iter()
        .find(|e| e.spiffe_id == spiffe_id("/node-alias"))
        .expect("CreateJoinToken with agent_id made the alias entry");
    assert_eq!(alias_entry.parent_id, spiffe_id(&agent_path));
    assert_eq!(
        alias_entry.selectors,
        [selector("spiffe_id", &agent_id)],
        "upstream selects the alias by the agent's SPIFFE ID"
    );

    // 2. Bootstrap: the agent's trust bundle comes from the operator (GetBundle over the
    //    socket); the first connection has no client certificate.
    let bundle = admin.bundle().await;
    assert_eq!(bundle.trust_domain, TD);
    let roots = x509_roots(&bundle);
    assert!(!roots.is_empty());
    let (verifier, checked) = SpiffeServerVerifier::new(&roots, SERVER_ID);
    let bootstrap = tls_channel(server.tcp, agent_tls(verifier, None));
    let over_tls = BundleClient::new(bootstrap.clone())
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_tls, bundle, "the same bundle over TLS and the socket");
    assert_eq!(
        checked.load(Ordering::SeqCst),
        1,
        "the server SVID was checked"
    );

    let (svid, key) = attest(bootstrap.clone(), &token).await.expect("attested");
    assert_eq!(svid.id, spiffe_id(&agent_path));
    assert_eq!(verify_svid(&svid.cert_chain, &key, &roots), agent_id);
    assert_eq!(
        svid.expires_at,
        spire_core::x509::certificate_not_after(&svid.cert_chain[0])
            .unwrap()
            .unix_timestamp()
    );
    let left = seconds_left(&svid.cert_chain);
    assert!(
        (3590..=3600).contains(&left),
        "agent SVIDs default to the X509-SVID TTL (1h): {left}"
    );
    let first = AgentSvid {
        chain: svid.cert_chain,
        key,
    };
    let listed = admin.agent(&agent_path).await;
    assert_eq!(listed.attestation_type, "join_token");
    assert_eq!(listed.x509svid_serial_number, serial(&first.chain));
    assert!(!listed.banned);

    // A used token cannot attest again: InvalidArgument, as upstream.
    let err = attest(bootstrap.clone(), &token).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("join token does not exist or has already been used"),
        "{err:?}"
    );

    // Agent RPCs need the agent SVID.
    let err = authorized_entries(bootstrap.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // 3. mTLS with the agent SVID.
    let agent = server.agent_channel(&roots, Some(&first));
    let expected: BTreeSet<String> = [
        "spiffe://example.org/workload",
        "spiffe://example.org/node-alias",
        "spiffe://example.org/under-alias",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let synced = sync_entries(agent.clone()).await.unwrap();
    assert_eq!(
        spiffe_ids(&synced),
        expected,
        "direct, alias and under-alias"
    );
    let fetched = authorized_entries(agent.clone()).await.unwrap();
    assert_eq!(spiffe_ids(&fetched), expected);
    let synced_workload = synced.iter().find(|e| &e.id == workload_id).unwrap();
    assert_eq!(synced_workload.selectors, [selector("unix", "uid:1000")]);
    assert_eq!(synced_workload.x509_svid_ttl, 600);
    assert!(synced_workload.revision_number >= 0);
    assert_eq!(synced_workload.additional_attributes, None);
    for entries in [&synced, &fetched] {
        let alias = entries.iter().find(|e| &e.id == under_alias_id).unwrap();
        assert_eq!(
            alias.additional_attributes.map(|a| a.jwt_svid_include_jti),
            Some(true),
            "agents learn the entry's attributes"
        );
    }

    let workload_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let alias_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let evil_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let results = new_x509_svids(
        agent.clone(),
        vec![
            svidpb::NewX509svidParams {
                entry_id: workload_id.clone(),
                csr: spire_core::x509::csr_der(&workload_key).unwrap(),
            },
            svidpb::NewX509svidParams {
                entry_id: under_alias_id.clone(),
                csr: spire_core::x509::csr_der(&alias_key).unwrap(),
            },
            svidpb::NewX509svidParams {
                entry_id: workload_id.clone(),
                csr: csr_asking_for(&evil_key, "spiffe://example.org/admin"),
            },
            svidpb::NewX509svidParams {
                entry_id: foreign_id.clone(),
                csr: spire_core::x509::csr_der(&workload_key).unwrap(),
            },
        ],
    )
    .await
    .unwrap();
    let codes: Vec<i32> = results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        [
            Code::Ok as i32,
            Code::Ok as i32,
            Code::Ok as i32,
            Code::NotFound as i32
        ],
        "{results:?}"
    );
    assert_eq!(
        results[3].status.as_ref().unwrap().message,
        "entry not found or not authorized"
    );
    assert!(results[3].svid.is_none());

    let workload_svid = results[0].svid.as_ref().unwrap();
    let chain = &workload_svid.cert_chain;
    assert_eq!(
        verify_svid(chain, &workload_key, &roots),
        "spiffe://example.org/workload"
    );
    let (uris, dns, cn) = names(&chain[0]);
    assert_eq!(uris, ["spiffe://example.org/workload"]);
    assert_eq!(dns, [WORKLOAD_DNS, "other.example.org"]);
    assert_eq!(
        cn.as_deref(),
        Some(WORKLOAD_DNS),
        "upstream sets the CN to the first DNS name"
    );
    let left = seconds_left(chain);
    assert!((590..=600).contains(&left), "entry TTL 600 s: {left}");
    let validity = spire_core::x509::certificate_validity(&chain[0]).unwrap();
    let backdated = (time::OffsetDateTime::now_utc() - validity.not_before).whole_seconds();
    assert!(
        (10..=20).contains(&backdated),
        "upstream backdates NotBefore by 10 s: {backdated}"
    );
    assert_eq!(
        workload_svid.expires_at,
        spire_core::x509::certificate_not_after(&chain[0])
            .unwrap()
            .unix_timestamp()
    );

    let alias_svid = results[1].svid.as_ref().unwrap();
    assert_eq!(
        verify_svid(&alias_svid.cert_chain, &alias_key, &roots),
        "spiffe://example.org/under-alias"
    );
    let left = seconds_left(&alias_svid.cert_chain);
    assert!(
        (3590..=3600).contains(&left),
        "no entry TTL: the default 1h: {left}"
    );

    let evil = results[2].svid.as_ref().unwrap();
    assert_eq!(
        verify_svid(&evil.cert_chain, &evil_key, &roots),
        "spiffe://example.org/workload",
        "the CSR's URI SAN is ignored"
    );
    let (uris, dns, _) = names(&evil.cert_chain[0]);
    assert_eq!(uris, ["spiffe://example.org/workload"]);
    assert_eq!(dns, [WORKLOAD_DNS, "other.example.org"], "CSR DNS ignored");

    // JWT-SVIDs, validated against the bundle's JWT authorities.
    let jwt = SvidClient::new(agent.clone())
        .new_jwtsvid(svidpb::NewJwtsvidRequest {
            entry_id: workload_id.clone(),
            audience: vec![AUDIENCE.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(jwt.id, spiffe_id("/workload"));
    assert_eq!(jwt.expires_at - jwt.issued_at, 120, "the entry's JWT TTL");
    let (core_bundle, spiffe_bundles) = jwt_bundles(&bundle);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let validated =
        spire_core::jwt::validate_jwt_svid(&jwt.token, &core_bundle, &[AUDIENCE], now).unwrap();
    assert_eq!(
        validated.spiffe_id.as_str(),
        "spiffe://example.org/workload"
    );
    assert_eq!(validated.audience, [AUDIENCE]);
    assert!(
        spire_core::jwt::validate_jwt_svid(&jwt.token, &core_bundle, &["someone-else"], now)
            .is_err(),
        "the token is only for its audience"
    );
    let by_spiffe = spiffe::JwtSvid::parse_and_validate(&jwt.token, &spiffe_bundles, &[AUDIENCE])
        .expect("the spiffe crate validates the JWT-SVID");
    assert_eq!(
        by_spiffe.spiffe_id().to_string(),
        "spiffe://example.org/workload"
    );
    assert!(
        !validated.claims.contains_key("jti"),
        "no jti unless the entry asks"
    );
    // An entry with jwt_svid_include_jti: every token has its own 22-character jti.
    let mut jtis = BTreeSet::new();
    for _ in 0..2 {
        let token = SvidClient::new(agent.clone())
            .new_jwtsvid(svidpb::NewJwtsvidRequest {
                entry_id: under_alias_id.clone(),
                audience: vec![AUDIENCE.into()],
            })
            .await
            .unwrap()
            .into_inner()
            .svid
            .unwrap()
            .token;
        let claims =
            spire_core::jwt::validate_jwt_svid(&token, &core_bundle, &[AUDIENCE], now).unwrap();
        let jti = claims.claims["jti"].as_str().unwrap().to_owned();
        assert_eq!(jti.len(), 22, "{jti}");
        jtis.insert(jti);
    }
    assert_eq!(jtis.len(), 2, "unique per token");

    // PostStatus records the agent's version (at most 255 bytes; empty changes nothing).
    let mut agents = AgentClient::new(agent.clone());
    agents
        .post_status(agentpb::PostStatusRequest {
            agent_version: "1.15.3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    agents
        .post_status(agentpb::PostStatusRequest::default())
        .await
        .unwrap();
    let err = agents
        .post_status(agentpb::PostStatusRequest {
            agent_version: "9".repeat(256),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "agent version is too long (max 255 characters)"
    );
    assert_eq!(admin.agent(&agent_path).await.agent_version, "1.15.3");

    let err = SvidClient::new(agent.clone())
        .new_jwtsvid(svidpb::NewJwtsvidRequest {
            entry_id: foreign_id.clone(),
            audience: vec![AUDIENCE.into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // 4a. Agents are not admins.
    let err = EntryClient::new(agent.clone())
        .list_entries(entrypb::ListEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "Authorization denied for method /spire.api.server.entry.v1.Entry/ListEntries"
    );
    let err = AgentClient::new(agent.clone())
        .create_join_token(agentpb::CreateJoinTokenRequest {
            ttl: 600,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // 3 (cont.). RenewAgent, with upstream's promotion rule: the renewed SVID's serial is
    // "new" until the agent first uses it; until then the old SVID still works; once it is
    // used it becomes current and the old one is refused as not active.
    let renew_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let renewed = AgentClient::new(agent.clone())
        .renew_agent(agentpb::RenewAgentRequest {
            params: Some(agentpb::AgentX509svidParams {
                csr: spire_core::x509::csr_der(&renew_key).unwrap(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(renewed.id, spiffe_id(&agent_path));
    assert_eq!(
        verify_svid(&renewed.cert_chain, &renew_key, &roots),
        agent_id
    );
    let second = AgentSvid {
        chain: renewed.cert_chain,
        key: renew_key,
    };
    assert_ne!(serial(&second.chain), serial(&first.chain));
    assert_eq!(
        admin.agent(&agent_path).await.x509svid_serial_number,
        serial(&first.chain),
        "not promoted before use"
    );
    authorized_entries(agent.clone())
        .await
        .expect("the old SVID works until the new one is used");

    let renewed_channel = server.agent_channel(&roots, Some(&second));
    let fetched = authorized_entries(renewed_channel.clone())
        .await
        .expect("the renewed SVID works");
    assert_eq!(spiffe_ids(&fetched), expected);
    assert_eq!(
        admin.agent(&agent_path).await.x509svid_serial_number,
        serial(&second.chain),
        "promoted on first use"
    );
    assert_denied(
        authorized_entries(agent.clone()).await,
        Reason::AgentNotActive,
        "expected to have serial number",
    );
    // A fresh connection with the old SVID is refused the same way.
    assert_denied(
        authorized_entries(server.agent_channel(&roots, Some(&first))).await,
        Reason::AgentNotActive,
        "expected to have serial number",
    );
    new_x509_svids(
        renewed_channel.clone(),
        vec![svidpb::NewX509svidParams {
            entry_id: workload_id.clone(),
            csr: spire_core::x509::csr_der(&workload_key).unwrap(),
        }],
    )
    .await
    .expect("signing works with the renewed SVID");

    // 4b. Ban: the agent's next call is refused, on the open connection and a new one.
    admin.ban(&agent_path).await;
    assert!(admin.agent(&agent_path).await.banned);
    assert_denied(
        authorized_entries(renewed_channel.clone()).await,
        Reason::AgentBanned,
        "is banned",
    );
    assert_denied(
        new_x509_svids(
            server.agent_channel(&roots, Some(&second)),
            vec![svidpb::NewX509svidParams {
                entry_id: workload_id.clone(),
                csr: spire_core::x509::csr_der(&workload_key).unwrap(),
            }],
        )
        .await,
        Reason::AgentBanned,
        "is banned",
    );
    assert_denied(
        AgentClient::new(renewed_channel.clone())
            .renew_agent(agentpb::RenewAgentRequest {
                params: Some(agentpb::AgentX509svidParams {
                    csr: spire_core::x509::csr_der(&workload_key).unwrap(),
                }),
            })
            .await,
        Reason::AgentBanned,
        "is banned",
    );

    drop((admin, bootstrap, agent, renewed_channel));
    server.stop().await;
}

/// Step 2's failures: tokens that are unknown, expired or for another server, and an agent
/// that does not trust the server it reaches.
#[tokio::test]
async fn bootstrap_refuses_bad_tokens_and_untrusted_servers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), false).await;
    let admin = server.admin();
    let roots = x509_roots(&admin.bundle().await);
    let bootstrap = server.agent_channel(&roots, None);

    let err = attest(bootstrap.clone(), "no-such-token")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("join token does not exist or has already been used"),
        "{err:?}"
    );

    // An expired token (written with a past expiry rather than waiting for one to lapse) is
    // refused, and consumed.
    server
        .ctx
        .datastore
        .create_join_token(JoinToken {
            token: "expired-token".into(),
            expiry: time::OffsetDateTime::now_utc().unix_timestamp() - 60,
        })
        .await
        .unwrap();
    let err = attest(bootstrap.clone(), "expired-token")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("join token expired"), "{err:?}");
    let err = attest(bootstrap.clone(), "expired-token")
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("join token does not exist or has already been used"),
        "{err:?}"
    );

    // An attestor the server does not run.
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let request = attest_request("aws_iid", b"{}", spire_core::x509::csr_der(&key).unwrap());
    let err = AgentClient::new(bootstrap.clone())
        .attest_agent(tokio_stream::iter(vec![request]))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.message(),
        "error getting node attestor: could not find node attestor type \"aws_iid\""
    );

    // A failed attestation leaves no agent behind.
    let agents = AgentClient::new(admin.0.clone())
        .count_agents(agentpb::CountAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(agents.count, 0);

    // The agent refuses a server whose SVID does not chain to its bundle ...
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
    let (verifier, checked) = SpiffeServerVerifier::new(&[foreign_root], SERVER_ID);
    let token = admin.join_token(None).await;
    let err = attest(tls_channel(server.tcp, agent_tls(verifier, None)), &token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(checked.load(Ordering::SeqCst), 0);
    // ... or that is not the server of the trust domain.
    let (verifier, checked) =
        SpiffeServerVerifier::new(&roots, "spiffe://example.org/spire/not-the-server");
    let err = attest(tls_channel(server.tcp, agent_tls(verifier, None)), &token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(checked.load(Ordering::SeqCst), 0);
    // The token was never sent, so it still works with the right bundle.
    let (svid, _) = attest(bootstrap.clone(), &token).await.unwrap();
    assert_eq!(svid.id, spiffe_id(&join_token_agent_path(&token)));

    drop((admin, bootstrap));
    server.stop().await;
}

/// Step 5: a restart on the same data directory keeps the bundle, entries, agents and bans,
/// and an agent SVID issued before the restart still works.
#[tokio::test]
async fn a_restarted_server_keeps_its_ca_entries_and_agents() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), false).await;
    let admin = server.admin();
    let bundle = admin.bundle().await;
    let roots = x509_roots(&bundle);

    // Two agents: one stays, one is banned.
    let kept_token = admin.join_token(None).await;
    let banned_token = admin.join_token(None).await;
    let kept_path = join_token_agent_path(&kept_token);
    let banned_path = join_token_agent_path(&banned_token);
    let ids = admin
        .create_entries(vec![
            types::Entry {
                spiffe_id: spiffe_id("/kept-workload"),
                parent_id: spiffe_id(&kept_path),
                selectors: vec![selector("unix", "uid:1000")],
                x509_svid_ttl: 600,
                ..types::Entry::default()
            },
            types::Entry {
                spiffe_id: spiffe_id("/banned-workload"),
                parent_id: spiffe_id(&banned_path),
                selectors: vec![selector("unix", "uid:1000")],
                ..types::Entry::default()
            },
        ])
        .await;
    let bootstrap = server.agent_channel(&roots, None);
    let (svid, key) = attest(bootstrap.clone(), &kept_token).await.unwrap();
    let kept = AgentSvid {
        chain: svid.cert_chain,
        key,
    };
    let (svid, key) = attest(bootstrap.clone(), &banned_token).await.unwrap();
    let banned = AgentSvid {
        chain: svid.cert_chain,
        key,
    };
    admin.ban(&banned_path).await;
    let entries_before = admin.entries().await;
    let kept_before = admin.agent(&kept_path).await;
    drop((admin, bootstrap));
    server.stop().await;

    let server = start(dir.path(), false).await;
    let admin = server.admin();
    assert_eq!(admin.bundle().await, bundle, "same CA and JWT keys");
    assert_eq!(admin.entries().await, entries_before);
    assert_eq!(admin.agent(&kept_path).await, kept_before);
    assert!(admin.agent(&banned_path).await.banned);

    // The new server SVID chains to the bundle the agent already has, and the agent's SVID
    // from before the restart is still its current one.
    let (verifier, checked) = SpiffeServerVerifier::new(&roots, SERVER_ID);
    let agent = tls_channel(server.tcp, agent_tls(verifier, Some(&kept)));
    let entries = authorized_entries(agent.clone()).await.unwrap();
    assert_eq!(
        spiffe_ids(&entries),
        BTreeSet::from(["spiffe://example.org/kept-workload".to_owned()])
    );
    assert_eq!(checked.load(Ordering::SeqCst), 1);
    let workload_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let results = new_x509_svids(
        agent.clone(),
        vec![svidpb::NewX509svidParams {
            entry_id: ids[0].clone(),
            csr: spire_core::x509::csr_der(&workload_key).unwrap(),
        }],
    )
    .await
    .unwrap();
    let svid = results[0].svid.as_ref().expect("signed after the restart");
    assert_eq!(
        verify_svid(&svid.cert_chain, &workload_key, &roots),
        "spiffe://example.org/kept-workload"
    );

    // The ban survived.
    assert_denied(
        authorized_entries(server.agent_channel(&roots, Some(&banned))).await,
        Reason::AgentBanned,
        "is banned",
    );

    // A used token stays used.
    let err = attest(server.agent_channel(&roots, None), &kept_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    drop((admin, agent));
    server.stop().await;
}

/// With `ratelimit.attestation` on, AttestAgent is limited per IP (upstream: one per second,
/// waiting rather than failing within the burst), while local admin calls are not.
#[tokio::test]
async fn attestation_is_rate_limited_per_ip_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), true).await;
    let admin = server.admin();
    let roots = x509_roots(&admin.bundle().await);
    let bootstrap = server.agent_channel(&roots, None);
    let first = admin.join_token(None).await;
    let second = admin.join_token(None).await;
    let started = Instant::now();
    attest(bootstrap.clone(), &first).await.unwrap();
    attest(bootstrap.clone(), &second).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "the second attestation from the same IP waits about a second: {elapsed:?}"
    );
    drop((admin, bootstrap));
    server.stop().await;
}
