//! The agent's server client against a server without SyncAuthorizedEntries (upstream
//! servers before it existed) and without our sync hint service: it falls back to
//! GetAuthorizedEntries, remembers that, and reports that no hints are offered.
//!
//! Every SPIRE server built here (ours, upstream v1.13.3) has SyncAuthorizedEntries, so the
//! server is a hand-written entry service answering Unimplemented, served over real TLS
//! with a `spire/server` SVID as the client requires.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use spire_agent::client::{ServerAddress, ServerClient, ServerTrust};
use spire_agent::manager::{HintsOffer, ServerApi, SyncedEntries};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{
    CaTemplate, Issuer, SvidTemplate, Validity, self_signed_ca, x509_svid_for_key,
};
use spire_proto::spire::api::server::entry::v1 as pb;
use spire_proto::spire::api::server::entry::v1::entry_server::{Entry, EntryServer};
use spire_proto::spire::api::types;
use spire_server::api::Peer;
use spire_server::endpoints::PeerIo;
use time::OffsetDateTime;
use tonic::{Request, Response, Status, Streaming};

/// An entry service from before SyncAuthorizedEntries: only GetAuthorizedEntries answers.
#[derive(Default)]
struct OldEntryService {
    sync_calls: Arc<AtomicUsize>,
    get_calls: Arc<AtomicUsize>,
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("unknown method"))
}

#[tonic::async_trait]
impl Entry for OldEntryService {
    async fn count_entries(
        &self,
        _: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        unimplemented()
    }
    async fn list_entries(
        &self,
        _: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        unimplemented()
    }
    async fn get_entry(
        &self,
        _: Request<pb::GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        unimplemented()
    }
    async fn batch_create_entry(
        &self,
        _: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        unimplemented()
    }
    async fn batch_update_entry(
        &self,
        _: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        unimplemented()
    }
    async fn batch_delete_entry(
        &self,
        _: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        unimplemented()
    }
    async fn get_authorized_entries(
        &self,
        _: Request<pb::GetAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::GetAuthorizedEntriesResponse>, Status> {
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::GetAuthorizedEntriesResponse {
            entries: vec![types::Entry {
                id: "e1".to_owned(),
                revision_number: 3,
                ..Default::default()
            }],
        }))
    }
    type SyncAuthorizedEntriesStream =
        tokio_stream::Empty<Result<pb::SyncAuthorizedEntriesResponse, Status>>;
    async fn sync_authorized_entries(
        &self,
        _: Request<Streaming<pb::SyncAuthorizedEntriesRequest>>,
    ) -> Result<Response<Self::SyncAuthorizedEntriesStream>, Status> {
        self.sync_calls.fetch_add(1, Ordering::SeqCst);
        unimplemented()
    }
}

/// Serves `service` over TLS as `spiffe://example.org/spire/server`; returns the port and
/// the CA certificate the client trusts.
async fn serve(service: OldEntryService) -> (u16, Vec<u8>) {
    let now = OffsetDateTime::now_utc();
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let ca = self_signed_ca(
        &ca_key,
        &CaTemplate::new(
            TrustDomain::new("example.org").unwrap(),
            Validity::from_now(now, time::Duration::days(1)),
        ),
    )
    .unwrap();
    let server_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = x509_svid_for_key(
        &Issuer::new(&ca, &ca_key).unwrap(),
        &server_key.public_key_der(),
        &SvidTemplate::new(
            SpiffeId::parse("spiffe://example.org/spire/server").unwrap(),
            Validity::from_now(now, time::Duration::hours(1)),
        ),
    )
    .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.into(), ca.clone().into()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.pkcs8_der().to_vec().into()),
    )
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = async_stream_of(listener, acceptor);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EntryServer::new(service))
            .serve_with_incoming(incoming),
    );
    (port, ca)
}

/// Accepted TLS connections as tonic's incoming stream.
fn async_stream_of(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<PeerIo<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            if tx
                .send(Ok(PeerIo::new(tls, Peer::Local { process: None })))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tokio::test]
async fn an_old_server_is_asked_with_get_authorized_entries_and_offers_no_hints() {
    let service = OldEntryService::default();
    let (sync_calls, get_calls) = (service.sync_calls.clone(), service.get_calls.clone());
    let (port, ca) = serve(service).await;
    let client = ServerClient::new(
        &ServerAddress {
            server_address: "127.0.0.1".to_owned(),
            server_port: port,
            trust_domain: TrustDomain::new("example.org").unwrap(),
        },
        ServerTrust::Bundle(vec![ca]),
        None,
    )
    .unwrap();

    let stale = |_: &[spire_agent::manager::EntryRevision]| Vec::new();
    for round in 1..=2 {
        match client.sync_authorized_entries(&stale).await.unwrap() {
            SyncedEntries::Full(entries) => {
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].id, "e1");
            }
            SyncedEntries::Revisions { .. } => panic!("the old server has no revisions"),
        }
        assert_eq!(get_calls.load(Ordering::SeqCst), round);
    }
    assert_eq!(
        sync_calls.load(Ordering::SeqCst),
        1,
        "Unimplemented is remembered: SyncAuthorizedEntries is not tried on every sync"
    );
    assert!(matches!(
        client.watch_sync_hints().await.unwrap(),
        HintsOffer::NotOffered
    ));
}
