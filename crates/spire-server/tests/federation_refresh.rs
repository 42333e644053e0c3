//! The federated bundle refresher against bundle endpoints on 127.0.0.1, in process: our own
//! `BundleEndpointServer` (b.test publishing its bundle, with an X509-SVID read from files by
//! `ServingCert`) and a small HTTPS server that answers whatever a test tells it to. The
//! a.test side refreshes b.test's bundle with `https_spiffe` into its SQLite datastore: what it
//! stores, what it refuses (and that a refusal leaves the stored bundle as it was), the
//! stale-write guard of two servers on one database, the serving certificate's reload, and the
//! endpoint's HTTP answers as upstream's.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use spire_core::bundle::Bundle;
use spire_core::x509::{CaTemplate, Issuer, SvidTemplate, Validity};
use spire_core::{KeyType, PrivateKey, SpiffeId, TrustDomain};
use spire_proto::spire::api::types;
use spire_server::api::convert::bundle_from_document;
use spire_server::datastore::DataStore;
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::federation::client::MAX_BUNDLE_BYTES;
use spire_server::federation::endpoint::BundleEndpointServer;
use spire_server::federation::refresher::{RefreshError, Refreshed, Relationship, update_bundle};
use spire_server::federation::serving_cert::ServingCert;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SERVER_ID: &str = "spiffe://b.test/spire/server";
/// The `spiffe_refresh_hint` b.test's endpoint publishes.
const HINT: Duration = Duration::from_secs(300);

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Valid from an hour ago for a day.
fn valid_now() -> Validity {
    Validity {
        not_before: now() - time::Duration::hours(1),
        not_after: now() + time::Duration::days(1),
    }
}

/// A root CA of a trust domain.
struct Ca {
    key: PrivateKey,
    der: Vec<u8>,
}

impl Ca {
    fn new(trust_domain: &str) -> Self {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let validity = Validity {
            not_before: now() - time::Duration::days(1),
            not_after: now() + time::Duration::days(2),
        };
        let der =
            spire_core::x509::self_signed_ca(&key, &CaTemplate::new(td(trust_domain), validity))
                .unwrap();
        Self { key, der }
    }

    fn svid(&self, id: &str, validity: Validity) -> Svid {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let issuer = Issuer::new(&self.der, &self.key).unwrap();
        let leaf = spire_core::x509::x509_svid_for_key(
            &issuer,
            &key.public_key_der(),
            &SvidTemplate::new(SpiffeId::parse(id).unwrap(), validity),
        )
        .unwrap();
        Svid {
            chain: vec![leaf],
            key,
        }
    }
}

/// An X509-SVID chain (leaf first) and its key.
struct Svid {
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
}

impl Svid {
    fn leaf(&self) -> &[u8] {
        &self.chain[0]
    }

    fn cert_pem(&self) -> String {
        spire_core::pem::encode_certificates(self.chain.iter().map(Vec::as_slice))
    }

    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, self.cert_pem()).unwrap();
        std::fs::write(&key, self.key.to_pem().as_bytes()).unwrap();
        (cert, key)
    }
}

/// A SPIFFE bundle of `trust_domain` holding `cas`.
fn bundle(trust_domain: &str, cas: &[&[u8]], sequence: u64, hint: Option<Duration>) -> Bundle {
    let mut bundle = Bundle::new(td(trust_domain));
    for der in cas {
        bundle.add_x509_authority(der.to_vec()).unwrap();
    }
    bundle.sequence_number = sequence;
    bundle.refresh_hint = hint;
    bundle
}

/// The SPIFFE bundle document of [`bundle`].
fn document(trust_domain: &str, cas: &[&[u8]], sequence: u64) -> Vec<u8> {
    bundle(trust_domain, cas, sequence, Some(HINT))
        .to_spiffe_document()
        .unwrap()
        .into_bytes()
}

async fn open_store(path: &Path) -> Arc<SqlDataStore> {
    let config = SqlConfig::from_plugin_data(&serde_json::json!({
        "database_type": "sqlite3",
        "connection_string": path.to_str().unwrap(),
    }))
    .unwrap();
    Arc::new(SqlDataStore::open(&config).await.unwrap())
}

/// Stores (creates or replaces) b.test's bundle, as `spire-server bundle set` would.
async fn set_b_bundle(store: &SqlDataStore, cas: &[&[u8]], sequence: u64) {
    store
        .set_bundle(bundle_from_document(bundle("b.test", cas, sequence, None)))
        .await
        .unwrap();
}

async fn stored_b_bundle(store: &SqlDataStore) -> Option<types::Bundle> {
    store.fetch_bundle("b.test").await.unwrap()
}

fn ders(bundle: &types::Bundle) -> Vec<&[u8]> {
    bundle
        .x509_authorities
        .iter()
        .map(|a| a.asn1.as_slice())
        .collect()
}

fn relationship(url: &str) -> Relationship {
    Relationship {
        url: url.to_owned(),
        endpoint_spiffe_id: Some(SpiffeId::parse(SERVER_ID).unwrap()),
    }
}

/// Refreshes b.test's bundle in `store` from `url` with `https_spiffe`.
async fn refresh(
    store: &SqlDataStore,
    url: &str,
) -> Result<(Refreshed, Option<Bundle>), RefreshError> {
    update_bundle(store, &td("b.test"), &relationship(url)).await
}

fn server_tls(resolver: Arc<ServingCert>) -> rustls::ServerConfig {
    let mut tls = rustls::ServerConfig::builder_with_provider(spire_common::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tls
}

/// b.test's bundle endpoint: our `BundleEndpointServer` serving `store`'s b.test bundle with
/// the SVID of the files, until dropped.
struct Endpoint {
    addr: SocketAddr,
    url: String,
    cert: Arc<ServingCert>,
    cancel: CancellationToken,
}

impl Endpoint {
    async fn start(store: Arc<SqlDataStore>, cert_file: &Path, key_file: &Path) -> Self {
        let cert = ServingCert::load(cert_file, key_file).unwrap();
        let server = BundleEndpointServer::bind(
            "127.0.0.1",
            0,
            server_tls(cert.clone()),
            store,
            td("b.test"),
            HINT,
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(server.serve(cancel.clone()));
        Self {
            addr,
            url: format!("https://{addr}/"),
            cert,
            cancel,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Holds an answer until the test releases it.
#[derive(Default)]
struct Gate {
    request_seen: Notify,
    release: Notify,
}

/// What the fake endpoint answers.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The `Content-Length` sent; above the body's length, the rest never comes.
    declared_len: usize,
    gate: Option<Arc<Gate>>,
}

impl Answer {
    fn new(status: u16, body: &[u8]) -> Self {
        Self {
            status,
            body: body.to_vec(),
            declared_len: body.len(),
            gate: None,
        }
    }
}

/// An HTTPS server presenting a given certificate chain and answering every request with the
/// current [`Answer`], written raw on the TLS stream.
struct FakeEndpoint {
    url: String,
    answer: Arc<Mutex<Answer>>,
    connections: Arc<AtomicUsize>,
}

impl FakeEndpoint {
    async fn start(svid: &Svid, answer: Answer) -> Self {
        let chain = svid
            .chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.pkcs8_der().to_vec()));
        let tls = rustls::ServerConfig::builder_with_provider(spire_common::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(answer));
        let connections = Arc::new(AtomicUsize::new(0));
        let (current, count) = (answer.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let answer = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = answer_one(tls, answer).await;
                    }
                });
            }
        });
        Self {
            url,
            answer,
            connections,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// Answers one request as a Go server does: the answer, then the connection kept open (for
/// another request) until the client closes it.
async fn answer_one(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    answer: Answer,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    if let Some(gate) = &answer.gate {
        gate.request_seen.notify_one();
        gate.release.notified().await;
    }
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        answer.status,
        http::StatusCode::from_u16(answer.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown"),
        answer.declared_len
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(&answer.body).await?;
    tls.flush().await?;
    while tls.read(&mut buf).await? > 0 {}
    Ok(())
}

/// A TLS client authenticating the endpoint as `https_spiffe` does: an SVID for
/// [`SERVER_ID`] chaining to `roots`.
async fn connect(
    addr: SocketAddr,
    roots: &[Vec<u8>],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let verifier = spire_common::tls::SpiffeIdVerifier::new(
        Some(roots),
        SERVER_ID,
        "bundle endpoint",
        "the test's roots",
    )
    .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(spire_common::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// The leaf certificate a new handshake with `addr` sees.
async fn served_leaf(addr: SocketAddr, roots: &[Vec<u8>]) -> Vec<u8> {
    let tls = connect(addr, roots, b"http/1.1").await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One request to `addr` over the protocol `alpn` names (`h2` or `http/1.1`).
async fn request(
    addr: SocketAddr,
    roots: &[Vec<u8>],
    alpn: &[u8],
    method: http::Method,
    path: &str,
) -> http::Response<Bytes> {
    let tls = connect(addr, roots, alpn).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "ALPN agreed");
    let io = TokioIo::new(tls);
    let response = if alpn == b"h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(method)
            .uri(format!("https://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap()
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    http::Response::from_parts(parts, body)
}

#[tokio::test]
async fn https_spiffe_refresh_stores_the_endpoint_bundle_and_its_updates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("b.test");
    let (cert_file, key_file) = ca
        .svid(SERVER_ID, valid_now())
        .write(dir.path(), "endpoint");
    // b.test: its own bundle, published by its endpoint.
    let b_store = open_store(&dir.path().join("b.sqlite3")).await;
    set_b_bundle(&b_store, &[&ca.der], 1).await;
    let endpoint = Endpoint::start(b_store.clone(), &cert_file, &key_file).await;
    // a.test: b.test's CA set by hand, without sequence number or refresh hint.
    let a_store = open_store(&dir.path().join("a.sqlite3")).await;
    set_b_bundle(&a_store, &[&ca.der], 0).await;

    let (refreshed, in_force) = refresh(&a_store, &endpoint.url).await.unwrap();
    assert_eq!(refreshed, Refreshed::Stored);
    let stored = stored_b_bundle(&a_store).await.unwrap();
    assert_eq!(ders(&stored), [ca.der.as_slice()]);
    assert_eq!(stored.sequence_number, 1, "the endpoint's spiffe_sequence");
    assert_eq!(
        stored.refresh_hint, 300,
        "the endpoint's spiffe_refresh_hint"
    );
    let in_force = in_force.unwrap();
    assert_eq!(
        (in_force.sequence_number, in_force.refresh_hint),
        (1, Some(HINT))
    );

    let (refreshed, _) = refresh(&a_store, &endpoint.url).await.unwrap();
    assert_eq!(refreshed, Refreshed::Unchanged);
    assert_eq!(stored_b_bundle(&a_store).await.unwrap(), stored);

    // b.test prepares its next CA: appended to its bundle, sequence number raised.
    let next = Ca::new("b.test");
    let appended = b_store
        .append_bundle(bundle_from_document(bundle(
            "b.test",
            &[&next.der],
            0,
            None,
        )))
        .await
        .unwrap();
    assert_eq!(appended.sequence_number, 2);
    // The endpoint reuses its document for a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (refreshed, _) = refresh(&a_store, &endpoint.url).await.unwrap();
    assert_eq!(refreshed, Refreshed::Stored);
    let stored = stored_b_bundle(&a_store).await.unwrap();
    assert_eq!(ders(&stored), [ca.der.as_slice(), next.der.as_slice()]);
    assert_eq!((stored.sequence_number, stored.refresh_hint), (2, 300));
}

/// a.test's side for the refusal tests: b.test's CA stored as the local copy (sequence 1, no
/// hint), and an SVID of b.test's endpoint. Each fake endpoint serves, unless a test says
/// otherwise, a valid document that differs from the stored one, so a missing check would
/// store it.
struct Refusals {
    dir: tempfile::TempDir,
    ca: Ca,
    store: Arc<SqlDataStore>,
    good_document: Vec<u8>,
}

impl Refusals {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("b.test");
        let store = open_store(&dir.path().join("a.sqlite3")).await;
        set_b_bundle(&store, &[&ca.der], 1).await;
        let next = Ca::new("b.test");
        let good_document = document("b.test", &[&ca.der, &next.der], 2);
        Self {
            dir,
            ca,
            store,
            good_document,
        }
    }

    fn server_svid(&self) -> Svid {
        self.ca.svid(SERVER_ID, valid_now())
    }

    /// Refreshes from `url`, expecting a refusal naming the URL that leaves the stored bundle
    /// as it was.
    async fn refused(&self, url: &str) -> RefreshError {
        let before = stored_b_bundle(&self.store).await;
        let err = refresh(&self.store, url).await.unwrap_err();
        assert_eq!(
            stored_b_bundle(&self.store).await,
            before,
            "the stored bundle is untouched after: {err}"
        );
        assert!(err.to_string().starts_with(&format!("{url}: ")), "{err}");
        err
    }
}

#[tokio::test]
async fn an_endpoint_serving_something_else_than_a_bundle_is_refused() {
    let t = Refusals::new().await;
    let endpoint = FakeEndpoint::start(&t.server_svid(), Answer::new(200, b"<html>")).await;
    for body in [
        &b"<html><body>It works!</body></html>"[..],
        b"{\"keys\": [",
        b"{\"keys\": []}",
        b"",
    ] {
        endpoint.set(Answer::new(200, body));
        let err = t.refused(&endpoint.url).await;
        assert!(
            err.to_string().contains("failed to decode bundle"),
            "{:?}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    // The same endpoint's real document is stored: the refusals came from the bodies.
    endpoint.set(Answer::new(200, &t.good_document));
    let (refreshed, _) = refresh(&t.store, &endpoint.url).await.unwrap();
    assert_eq!(refreshed, Refreshed::Stored);
}

#[tokio::test]
async fn an_endpoint_with_another_spiffe_id_is_refused() {
    let t = Refusals::new().await;
    let impostor = t.ca.svid("spiffe://b.test/not-the-server", valid_now());
    let endpoint = FakeEndpoint::start(&impostor, Answer::new(200, &t.good_document)).await;
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(
        err.contains("spiffe://b.test/not-the-server") && err.contains(SERVER_ID),
        "{err}"
    );
}

#[tokio::test]
async fn an_endpoint_with_an_expired_svid_is_refused() {
    let t = Refusals::new().await;
    let expired = t.ca.svid(
        SERVER_ID,
        Validity {
            not_before: now() - time::Duration::hours(2),
            not_after: now() - time::Duration::hours(1),
        },
    );
    let endpoint = FakeEndpoint::start(&expired, Answer::new(200, &t.good_document)).await;
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(err.contains("Expired"), "{err}");
}

#[tokio::test]
async fn an_endpoint_whose_svid_does_not_chain_to_the_local_bundle_is_refused() {
    let t = Refusals::new().await;
    let stranger = Ca::new("b.test").svid(SERVER_ID, valid_now());
    let endpoint = FakeEndpoint::start(&stranger, Answer::new(200, &t.good_document)).await;
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(err.contains("does not chain to the trust bundle"), "{err}");
}

#[tokio::test]
async fn the_bundle_of_another_trust_domain_is_refused() {
    let t = Refusals::new().await;
    let c_ca = Ca::new("c.test");
    // A well-formed document, but its CA is c.test's.
    let endpoint = FakeEndpoint::start(
        &t.server_svid(),
        Answer::new(200, &document("b.test", &[&c_ca.der], 2)),
    )
    .await;
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(
        err.contains("failed to decode bundle") && err.contains("\"c.test\""),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_reading_it_all() {
    let t = Refusals::new().await;
    // 10 MB announced; the first 3 MB sent, then the connection stays open: a client that
    // waited for the whole body would hang until its 30 s timeout.
    let mut answer = Answer::new(200, &vec![b' '; 3 * 1024 * 1024]);
    answer.declared_len = 10 * 1024 * 1024;
    let endpoint = FakeEndpoint::start(&t.server_svid(), answer).await;
    let started = Instant::now();
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused after {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("at most {MAX_BUNDLE_BYTES} bytes")),
        "{err}"
    );
}

#[tokio::test]
async fn a_status_other_than_200_is_refused() {
    let t = Refusals::new().await;
    let endpoint = FakeEndpoint::start(
        &t.server_svid(),
        Answer::new(503, b"down for maintenance\n"),
    )
    .await;
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(
        err.contains("unexpected status 503") && err.contains("down for maintenance"),
        "{err}"
    );
    // A 404 with a valid bundle document as its body is no bundle either.
    endpoint.set(Answer::new(404, &t.good_document));
    let err = t.refused(&endpoint.url).await.to_string();
    assert!(err.contains("unexpected status 404"), "{err}");
}

#[tokio::test]
async fn https_spiffe_without_a_local_copy_of_the_endpoint_bundle_is_refused() {
    let t = Refusals::new().await;
    let endpoint = FakeEndpoint::start(&t.server_svid(), Answer::new(200, &t.good_document)).await;
    let empty = open_store(&t.dir.path().join("empty.sqlite3")).await;
    let err = refresh(&empty, &endpoint.url).await.unwrap_err();
    assert!(
        matches!(&err, RefreshError::NoLocalBundle(td) if td == "b.test"),
        "{err:?}"
    );
    assert!(err.to_string().contains("local copy of bundle not found"));
    assert_eq!(stored_b_bundle(&empty).await, None, "nothing stored");
    assert_eq!(
        endpoint.connections.load(Ordering::SeqCst),
        0,
        "the endpoint is not contacted without roots to check it"
    );
}

/// Two servers on one database (high availability), both refreshing b.test.
struct TwoServers {
    _dir: tempfile::TempDir,
    ca: Ca,
    server1: Arc<SqlDataStore>,
    server2: Arc<SqlDataStore>,
}

impl TwoServers {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let server1 = open_store(&path).await;
        let server2 = open_store(&path).await;
        Self {
            _dir: dir,
            ca: Ca::new("b.test"),
            server1,
            server2,
        }
    }
}

#[tokio::test]
async fn a_refresh_does_not_put_back_an_older_bundle_another_server_stored_over() {
    let t = TwoServers::new().await;
    set_b_bundle(&t.server1, &[&t.ca.der], 4).await;
    let endpoint = FakeEndpoint::start(
        &t.ca.svid(SERVER_ID, valid_now()),
        Answer::new(200, &document("b.test", &[&t.ca.der], 4)),
    )
    .await;
    // Server 1 got sequence 5 (with b.test's next CA) from a newer endpoint answer.
    let next = Ca::new("b.test");
    set_b_bundle(&t.server1, &[&t.ca.der, &next.der], 5).await;
    let newer = stored_b_bundle(&t.server2).await.unwrap();
    assert_eq!(newer.sequence_number, 5, "server 2 sees server 1's write");

    // Server 2 still gets sequence 4, with no authority the stored bundle lacks.
    let (refreshed, in_force) = refresh(&t.server2, &endpoint.url).await.unwrap();
    assert_eq!(refreshed, Refreshed::Stale);
    assert_eq!(in_force.unwrap().sequence_number, 5);
    assert_eq!(stored_b_bundle(&t.server1).await.unwrap(), newer);

    // b.test rebuilt from scratch: a new CA, its sequence restarted at 1. That is stored.
    let rebuilt = Ca::new("b.test");
    endpoint.set(Answer::new(200, &document("b.test", &[&rebuilt.der], 1)));
    let (refreshed, _) = refresh(&t.server2, &endpoint.url).await.unwrap();
    assert_eq!(refreshed, Refreshed::Stored);
    let stored = stored_b_bundle(&t.server1).await.unwrap();
    assert_eq!(ders(&stored), [rebuilt.der.as_slice()]);
    assert_eq!(stored.sequence_number, 1);
}

#[tokio::test]
async fn a_slow_refresh_does_not_put_back_an_older_bundle_stored_over_meanwhile() {
    let t = TwoServers::new().await;
    set_b_bundle(&t.server1, &[&t.ca.der], 3).await;
    let gate = Arc::new(Gate::default());
    let mut answer = Answer::new(200, &document("b.test", &[&t.ca.der], 4));
    answer.gate = Some(gate.clone());
    let endpoint = FakeEndpoint::start(&t.ca.svid(SERVER_ID, valid_now()), answer).await;
    let next = Ca::new("b.test");

    // Server 2's endpoint answers sequence 4 slowly; in the meantime server 1 stores 5.
    let both = async {
        tokio::join!(refresh(&t.server2, &endpoint.url), async {
            gate.request_seen.notified().await;
            set_b_bundle(&t.server1, &[&t.ca.der, &next.der], 5).await;
            gate.release.notify_one();
        })
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(20), both)
        .await
        .expect("the refresh reached the endpoint and finished");
    let (refreshed, _) = result.unwrap();
    assert_eq!(refreshed, Refreshed::Stale);
    let stored = stored_b_bundle(&t.server1).await.unwrap();
    assert_eq!(stored.sequence_number, 5);
    assert_eq!(ders(&stored), [t.ca.der.as_slice(), next.der.as_slice()]);
}

/// Replaces `path`'s contents and gives it a modification time of its own, so a reload
/// notices even on a file system with coarse time stamps.
fn replace(path: &Path, contents: &[u8], generation: u64) {
    std::fs::write(path, contents).unwrap();
    let stamp = SystemTime::now() + Duration::from_secs(generation);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
}

#[tokio::test]
async fn the_serving_certificate_is_reloaded_from_its_files_and_a_broken_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("b.test");
    let roots = [ca.der.clone()];
    let first = ca.svid(SERVER_ID, valid_now());
    let (cert_file, key_file) = first.write(dir.path(), "serving");
    let store = open_store(&dir.path().join("b.sqlite3")).await;
    set_b_bundle(&store, &[&ca.der], 1).await;
    let endpoint = Endpoint::start(store, &cert_file, &key_file).await;
    assert_eq!(served_leaf(endpoint.addr, &roots).await, first.leaf());

    let second = ca.svid(SERVER_ID, valid_now());
    replace(&cert_file, second.cert_pem().as_bytes(), 1);
    replace(&key_file, second.key.to_pem().as_bytes(), 1);
    endpoint.cert.sync();
    assert_eq!(served_leaf(endpoint.addr, &roots).await, second.leaf());

    // A file that cannot be read as a certificate, then a certificate that does not fit the
    // key: the second pair stays in service.
    let third = ca.svid(SERVER_ID, valid_now());
    for (generation, broken) in [
        (2, b"-----BEGIN CERTIFICATE-----\nnot base64\n".to_vec()),
        (3, b"no PEM here".to_vec()),
        (4, third.cert_pem().into_bytes()),
    ] {
        replace(&cert_file, &broken, generation);
        endpoint.cert.sync();
        assert_eq!(
            served_leaf(endpoint.addr, &roots).await,
            second.leaf(),
            "after {:?}",
            String::from_utf8_lossy(&broken)
        );
    }

    // The watch loop picks up the key that completes the third pair.
    let watch = CancellationToken::new();
    tokio::spawn(
        endpoint
            .cert
            .clone()
            .watch(Duration::from_millis(50), watch.clone()),
    );
    replace(&key_file, third.key.to_pem().as_bytes(), 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_leaf(endpoint.addr, &roots).await != third.leaf() {
        assert!(Instant::now() < deadline, "the third pair was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.cancel();
}

#[tokio::test]
async fn the_bundle_endpoint_answers_as_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("b.test");
    let roots = [ca.der.clone()];
    let (cert_file, key_file) = ca
        .svid(SERVER_ID, valid_now())
        .write(dir.path(), "endpoint");
    let store = open_store(&dir.path().join("b.sqlite3")).await;
    set_b_bundle(&store, &[&ca.der], 7).await;
    let endpoint = Endpoint::start(store.clone(), &cert_file, &key_file).await;

    for alpn in [&b"http/1.1"[..], b"h2"] {
        let proto = String::from_utf8_lossy(alpn);
        let post = request(endpoint.addr, &roots, alpn, http::Method::POST, "/").await;
        assert_eq!(post.status(), 405, "{proto}");
        assert_eq!(post.body().as_ref(), b"405 method not allowed\n", "{proto}");

        let other = request(endpoint.addr, &roots, alpn, http::Method::GET, "/other").await;
        assert_eq!(other.status(), 404, "{proto}");
        assert_eq!(other.body().as_ref(), b"404 page not found\n", "{proto}");

        let get = request(endpoint.addr, &roots, alpn, http::Method::GET, "/").await;
        assert_eq!(get.status(), 200, "{proto}");
        assert_eq!(
            get.headers()[http::header::CONTENT_TYPE],
            "application/json",
            "{proto}"
        );
        let served = Bundle::from_spiffe_document(td("b.test"), get.body()).unwrap();
        assert_eq!(served.x509_authorities, roots, "{proto}");
        assert_eq!(served.sequence_number, 7, "{proto}");
        assert_eq!(served.refresh_hint, Some(HINT), "{proto}");
    }

    // No bundle to serve: upstream's 500.
    store
        .delete_bundle(
            "b.test",
            spire_server::datastore::DeleteBundleMode::Restrict,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let get = request(endpoint.addr, &roots, b"http/1.1", http::Method::GET, "/").await;
    assert_eq!(get.status(), 500);
    assert_eq!(
        get.body().as_ref(),
        b"500 unable to retrieve local bundle\n"
    );
}
