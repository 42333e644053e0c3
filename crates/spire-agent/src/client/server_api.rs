//! The manager's [`ServerApi`] over the real server connection: SyncAuthorizedEntries (with
//! GetAuthorizedEntries for servers without it), our own WatchSyncHints, BatchNewX509SVID, GetBundle, GetFederatedBundle, NewJWTSVID and PostStatus with the agent's SVID.

use async_trait::async_trait;
use spire_proto::spire::api::server::agent::v1 as agent_pb;
use spire_proto::spire::api::server::bundle::v1 as bundle_pb;
use spire_proto::spire::api::server::entry::v1 as entry_pb;
use spire_proto::spire::api::server::svid::v1 as svid_pb;
use spire_proto::spire::api::types;
use spire_proto::spire_rs::agent::notify::v1 as notify_pb;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::Code;

use super::ServerClient;
use crate::manager::ManagerError;
use crate::manager::server_api::{
    EntryRevision, HintsOffer, NamedChanges, ServerApi, StaleEntries, SyncHint, SyncedEntries,
};

/// One SyncAuthorizedEntries exchange, as upstream's agent runs it: the first request gets
/// either every entry (few enough for one page) or every revision, page by page; then the
/// entries `stale` names are asked for a page at a time.
async fn sync_exchange(
    client: &ServerClient,
    stale: StaleEntries<'_>,
) -> Result<SyncedEntries, tonic::Status> {
    let (tx, rx) = mpsc::channel(2);
    let first = entry_pb::SyncAuthorizedEntriesRequest {
        ids: Vec::new(),
        output_mask: None,
    };
    tx.send(first)
        .await
        .map_err(|_| tonic::Status::internal("request stream closed"))?;
    let mut responses = client
        .entry_client()
        .sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let protocol = |what: &str| tonic::Status::internal(format!("SyncAuthorizedEntries: {what}"));
    let mut response = responses
        .message()
        .await?
        .ok_or_else(|| protocol("the server sent no answer"))?;
    if response.entry_revisions.is_empty() {
        return Ok(SyncedEntries::Full(response.entries));
    }
    // The server's page size is the size of its first page of revisions.
    let page_size = response.entry_revisions.len();
    let mut revisions = Vec::new();
    let mut needed = Vec::new();
    loop {
        if !response.entries.is_empty() {
            return Err(protocol("entries among the revision pages"));
        }
        let page: Vec<EntryRevision> = response
            .entry_revisions
            .into_iter()
            .filter(|r| {
                let usable = !r.id.is_empty() && r.revision_number >= 0;
                if !usable {
                    tracing::warn!(entry_id = %r.id, revision = r.revision_number, "Received malformed entry revision from SPIRE server");
                }
                usable
            })
            .map(|r| EntryRevision {
                id: r.id,
                revision: r.revision_number,
                created_at: r.created_at,
            })
            .collect();
        needed.extend(stale(&page));
        revisions.extend(page);
        if !response.more {
            break;
        }
        response = responses
            .message()
            .await?
            .ok_or_else(|| protocol("the revision pages ended early"))?;
    }
    needed.sort_unstable();
    let mut entries = Vec::with_capacity(needed.len());
    for ids in needed.chunks(page_size.max(1)) {
        let request = entry_pb::SyncAuthorizedEntriesRequest {
            ids: ids.to_vec(),
            output_mask: None,
        };
        tx.send(request)
            .await
            .map_err(|_| protocol("the server closed the exchange"))?;
        loop {
            let response = responses
                .message()
                .await?
                .ok_or_else(|| protocol("the entry pages ended early"))?;
            if !response.entry_revisions.is_empty() {
                return Err(protocol("revisions among the entry pages"));
            }
            entries.extend(response.entries);
            if !response.more {
                break;
            }
        }
    }
    Ok(SyncedEntries::Revisions { revisions, entries })
}

/// A failed call: the sync loop backs off on Unavailable and keeps serving its cache. A
/// denial of the agent itself is also recorded on the client, where the agent SVID's owner
/// reacts to it (re-attestation or shutdown).
fn call_failed(client: &ServerClient, rpc: &str, status: &tonic::Status) -> ManagerError {
    client.note_status(status);
    // The transport's causes (e.g. the TLS refusal of the server's certificate) are kept:
    // rebootstrapping reacts to a server that no longer chains to the agent's bundle.
    let mut message = format!("{rpc} failed: {}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    match status.code() {
        Code::InvalidArgument => ManagerError::InvalidArgument(message),
        _ => ManagerError::Unavailable(message),
    }
}

#[async_trait]
impl ServerApi for ServerClient {
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError> {
        let response = self
            .entry_client()
            .get_authorized_entries(entry_pb::GetAuthorizedEntriesRequest { output_mask: None })
            .await
            .map_err(|s| call_failed(self, "GetAuthorizedEntries", &s))?;
        Ok(response.into_inner().entries)
    }

    async fn sync_authorized_entries(
        &self,
        stale: StaleEntries<'_>,
    ) -> Result<SyncedEntries, ManagerError> {
        if !self.inner.no_sync_rpc.load(Ordering::Relaxed) {
            match sync_exchange(self, stale).await {
                Ok(synced) => return Ok(synced),
                Err(status) if status.code() == Code::Unimplemented => {
                    tracing::info!(
                        "the server has no SyncAuthorizedEntries; using GetAuthorizedEntries"
                    );
                    self.inner.no_sync_rpc.store(true, Ordering::Relaxed);
                }
                Err(status) => return Err(call_failed(self, "SyncAuthorizedEntries", &status)),
            }
        }
        Ok(SyncedEntries::Full(self.authorized_entries().await?))
    }

    async fn watch_sync_hints(&self) -> Result<HintsOffer, ManagerError> {
        let response = self
            .notify_client()
            .watch_sync_hints(notify_pb::WatchSyncHintsRequest {})
            .await;
        let stream = match response {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => {
                return Ok(HintsOffer::NotOffered);
            }
            Err(status) => return Err(call_failed(self, "WatchSyncHints", &status)),
        };
        let client = self.clone();
        let hints = stream.map(move |hint| match hint {
            Ok(hint) => Ok(SyncHint {
                sequence: hint.sequence,
                entries: hint.entries,
                bundles: hint.bundles,
                itemized: hint.entries_itemized.then(|| NamedChanges {
                    changed: hint.changed_entries.into_iter().map(|e| e.id).collect(),
                    removed: hint.removed_entry_ids,
                }),
            }),
            // A denial (banned, deleted) is recorded like on any other call, so the agent
            // stops or attests again at once.
            Err(status) => Err(call_failed(&client, "WatchSyncHints", &status)),
        });
        Ok(HintsOffer::Offered(Box::pin(hints)))
    }

    async fn fetch_entries(&self, ids: &[String]) -> Result<Vec<types::Entry>, ManagerError> {
        let response = self
            .notify_client()
            .fetch_entries(notify_pb::FetchEntriesRequest { ids: ids.to_vec() })
            .await
            .map_err(|status| call_failed(self, "FetchEntries", &status))?;
        Ok(response.into_inner().entries)
    }

    async fn new_x509_svids(
        &self,
        csrs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError> {
        let expected = csrs.len();
        let params = csrs
            .into_iter()
            .map(|(entry_id, csr)| svid_pb::NewX509svidParams { entry_id, csr })
            .collect();
        let response = self
            .svid_client()
            .batch_new_x509svid(svid_pb::BatchNewX509svidRequest { params })
            .await
            .map_err(|s| call_failed(self, "BatchNewX509SVID", &s))?
            .into_inner();
        if response.results.len() != expected {
            return Err(ManagerError::Internal(format!(
                "BatchNewX509SVID answered {} results for {expected} CSRs",
                response.results.len()
            )));
        }
        Ok(response
            .results
            .into_iter()
            .map(|result| {
                let status = result.status.unwrap_or_default();
                match result.svid {
                    Some(svid) if status.code == 0 => Ok(svid.cert_chain),
                    _ => Err(ManagerError::Unavailable(format!(
                        "server refused to sign: code {}: {}",
                        status.code, status.message
                    ))),
                }
            })
            .collect())
    }

    async fn bundle(&self) -> Result<types::Bundle, ManagerError> {
        let response = self
            .bundle_client()
            .get_bundle(bundle_pb::GetBundleRequest { output_mask: None })
            .await
            .map_err(|s| call_failed(self, "GetBundle", &s))?;
        Ok(response.into_inner())
    }

    async fn federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::Bundle>, ManagerError> {
        let response = self
            .bundle_client()
            .get_federated_bundle(bundle_pb::GetFederatedBundleRequest {
                trust_domain: trust_domain.to_owned(),
                output_mask: None,
            })
            .await;
        match response {
            Ok(bundle) => Ok(Some(bundle.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(call_failed(self, "GetFederatedBundle", &status)),
        }
    }

    async fn new_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, ManagerError> {
        let response = self
            .svid_client()
            .new_jwtsvid(svid_pb::NewJwtsvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(|s| call_failed(self, "NewJWTSVID", &s))?
            .into_inner();
        response
            .svid
            .map(|svid| svid.token)
            .ok_or_else(|| ManagerError::Internal("NewJWTSVID answered no token".to_owned()))
    }

    async fn post_status(&self, agent_version: &str) -> Result<(), ManagerError> {
        self.agent_client()
            .post_status(agent_pb::PostStatusRequest {
                agent_version: agent_version.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| call_failed(self, "PostStatus", &s))?;
        Ok(())
    }
}
