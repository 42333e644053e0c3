//! `spire.api.server.entry.v1.Entry`: registration entry management for admins, and the
//! authorized-entry views agents sync from (answered from the in-memory index, not SQL).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use spire_proto::spire::api::server::entry::v1 as pb;
use spire_proto::spire::api::types;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::ApiContext;
use super::agent::{caller_agent_id, caller_of};
use super::audit::{self, AuditLog};
use super::convert::{self, make_err, make_status};
use crate::authorized::SyncSnapshot;
use crate::datastore::{DataStoreError, ListEntriesRequest, Pagination, RegistrationEntry};

/// Upstream's page size for SyncAuthorizedEntries: up to this many entries are sent whole;
/// above it, revisions go first and full entries are paged on request.
pub const DEFAULT_ENTRY_PAGE_SIZE: usize = 500;

/// The entry service.
pub struct EntryApi {
    ctx: Arc<ApiContext>,
    entry_page_size: usize,
}

impl EntryApi {
    /// Builds the service over the shared API context.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self {
            ctx,
            entry_page_size: DEFAULT_ENTRY_PAGE_SIZE,
        }
    }

    /// Overrides the SyncAuthorizedEntries page size (tests exercise paging with small ones).
    pub fn with_entry_page_size(mut self, size: usize) -> Self {
        self.entry_page_size = size.max(1);
        self
    }

    async fn refresh_index(&self) {
        if let Err(err) = self.ctx.index.refresh().await {
            tracing::warn!(error = %err, "Failed to refresh the authorized-entry index");
        }
    }

    /// Builds the datastore filter shared by CountEntries and ListEntries.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per wire filter field"
    )]
    fn filter(
        &self,
        by_spiffe_id: Option<&types::Spiffeid>,
        by_parent_id: Option<&types::Spiffeid>,
        by_selectors: Option<&types::SelectorMatch>,
        by_federates_with: Option<&types::FederatesWithMatch>,
        by_hint: Option<&pbjson_types::StringValue>,
        by_downstream: Option<&pbjson_types::BoolValue>,
    ) -> Result<ListEntriesRequest, Status> {
        let td = &self.ctx.trust_domain;
        let mut request = ListEntriesRequest {
            by_hint: by_hint.map(|h| h.value.clone()),
            by_downstream: by_downstream.map(|d| d.value),
            ..ListEntriesRequest::default()
        };
        if let Some(id) = by_parent_id {
            let parent = convert::member_id_from_proto(td, Some(id)).map_err(|e| {
                make_err(
                    Code::InvalidArgument,
                    "malformed parent ID filter",
                    Some(&e),
                )
            })?;
            request.by_parent_id = Some(parent.to_string());
        }
        if let Some(id) = by_spiffe_id {
            let id = convert::workload_id_from_proto(td, Some(id)).map_err(|e| {
                make_err(
                    Code::InvalidArgument,
                    "malformed SPIFFE ID filter",
                    Some(&e),
                )
            })?;
            request.by_spiffe_id = Some(id.to_string());
        }
        if let Some(matcher) = by_selectors {
            let bad = |e: &dyn std::fmt::Display| {
                make_err(Code::InvalidArgument, "malformed selectors filter", Some(e))
            };
            let selectors =
                convert::selectors_from_proto(&matcher.selectors).map_err(|e| bad(&e))?;
            if selectors.is_empty() {
                return Err(bad(&"empty selector set"));
            }
            let mode = convert::match_from_proto(matcher.r#match).map_err(|e| bad(&e))?;
            request.by_selectors = Some((selectors, mode));
        }
        if let Some(matcher) = by_federates_with {
            let bad = |e: &dyn std::fmt::Display| {
                make_err(
                    Code::InvalidArgument,
                    "malformed federates with filter",
                    Some(e),
                )
            };
            let trust_domains = matcher
                .trust_domains
                .iter()
                .map(|name| spire_core::spiffe_id::TrustDomain::new(name).map(|td| td.id_string()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            if trust_domains.is_empty() {
                return Err(bad(&"empty trust domain set"));
            }
            let mode = convert::match_from_proto(matcher.r#match).map_err(|e| bad(&e))?;
            request.by_federates_with = Some((trust_domains, mode));
        }
        Ok(request)
    }

    /// The caller agent's authorized entries on the wire, masked.
    async fn authorized_entries(
        &self,
        agent_id: &str,
        mask: Option<&types::EntryMask>,
    ) -> Vec<types::Entry> {
        let entries = self
            .ctx
            .index
            .authorized_entries_of_attested(agent_id)
            .await;
        entries
            .iter()
            .filter_map(|entry| wire_entry(entry, mask))
            .collect()
    }

    /// Validates every entry, stores the valid ones in one datastore batch, and answers one
    /// result per input in order.
    async fn create_entries(
        &self,
        entries: &[types::Entry],
        output_mask: Option<&types::EntryMask>,
    ) -> Vec<pb::batch_create_entry_response::Result> {
        let failed =
            |code, message, err: &dyn std::fmt::Display| pb::batch_create_entry_response::Result {
                status: Some(make_status(code, message, Some(err))),
                entry: None,
            };
        let mut results: Vec<Option<pb::batch_create_entry_response::Result>> =
            Vec::with_capacity(entries.len());
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            match convert::entry_from_proto(&self.ctx.trust_domain, entry, None) {
                Ok(record) => {
                    records.push(record);
                    results.push(None);
                }
                Err(err) => results.push(Some(failed(
                    Code::InvalidArgument,
                    "failed to convert entry",
                    &err,
                ))),
            }
        }
        let mut stored = self
            .ctx
            .datastore
            .create_or_return_registration_entries(records)
            .await
            .into_iter();
        results
            .into_iter()
            .map(|slot| {
                if let Some(done) = slot {
                    return done;
                }
                let (entry, existing) = match stored.next() {
                    Some(Ok(result)) => result,
                    Some(Err(err)) => {
                        return failed(
                            convert::datastore_code(&err),
                            "failed to create entry",
                            &err,
                        );
                    }
                    None => {
                        return failed(
                            Code::Internal,
                            "failed to create entry",
                            &"the datastore returned fewer results than entries",
                        );
                    }
                };
                let status = if existing {
                    make_status(Code::AlreadyExists, "similar entry already exists", None)
                } else {
                    convert::ok_status()
                };
                match convert::entry_to_proto(&entry) {
                    Ok(mut wire) => {
                        if !existing {
                            sort_as_stored(&mut wire);
                        }
                        convert::apply_entry_mask(&mut wire, output_mask);
                        pb::batch_create_entry_response::Result {
                            status: Some(status),
                            entry: Some(wire),
                        }
                    }
                    Err(err) => failed(Code::Internal, "failed to convert entry", &err),
                }
            })
            .collect()
    }

    async fn update_entry(
        &self,
        entry: &types::Entry,
        input_mask: Option<&types::EntryMask>,
        output_mask: Option<&types::EntryMask>,
    ) -> pb::batch_update_entry_response::Result {
        let failed = |status| pb::batch_update_entry_response::Result {
            status: Some(status),
            entry: None,
        };
        let record = match convert::entry_from_proto(&self.ctx.trust_domain, entry, input_mask) {
            Ok(record) => record,
            Err(err) => {
                return failed(make_status(
                    Code::InvalidArgument,
                    "failed to convert entry",
                    Some(&err),
                ));
            }
        };
        // An empty ID is looked up like any other and not found, as upstream's datastore does.
        let stored = match self
            .ctx
            .datastore
            .update_registration_entry(record, convert::record_entry_mask(input_mask))
            .await
        {
            Ok(stored) => stored,
            Err(err) => {
                return failed(make_status(
                    convert::datastore_code(&err),
                    "failed to update entry",
                    Some(&err),
                ));
            }
        };
        match convert::entry_to_proto(&stored) {
            Ok(mut wire) => {
                sort_as_stored(&mut wire);
                convert::apply_entry_mask(&mut wire, output_mask);
                pb::batch_update_entry_response::Result {
                    status: Some(convert::ok_status()),
                    entry: Some(wire),
                }
            }
            Err(err) => failed(make_status(
                Code::Internal,
                "failed to convert entry in updateEntry",
                Some(&err),
            )),
        }
    }

    async fn delete_entry(&self, id: &str) -> pb::batch_delete_entry_response::Result {
        let status = if id.is_empty() {
            make_status(Code::InvalidArgument, "missing entry ID", None)
        } else {
            match self.ctx.datastore.delete_registration_entry(id).await {
                Ok(_) => convert::ok_status(),
                Err(DataStoreError::NotFound(_)) => {
                    make_status(Code::NotFound, "entry not found", None)
                }
                Err(err) => make_status(Code::Internal, "failed to delete entry", Some(&err)),
            }
        };
        pb::batch_delete_entry_response::Result {
            status: Some(status),
            id: id.to_owned(),
        }
    }
}

/// A response stream that stops its producer task when the client goes away, so the task
/// never outlives the RPC it serves.
pub struct SyncStream {
    inner: ReceiverStream<Result<pb::SyncAuthorizedEntriesResponse, Status>>,
    task: Option<JoinHandle<()>>,
}

impl Stream for SyncStream {
    type Item = Result<pb::SyncAuthorizedEntriesResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for SyncStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Orders a created or updated entry's selectors (by type, then value) and DNS names as
/// upstream's answer to BatchCreateEntry and BatchUpdateEntry has them: it reads the entry
/// back through the children's unique indexes, which sort them. Listings keep stored order.
fn sort_as_stored(entry: &mut types::Entry) {
    entry
        .selectors
        .sort_by(|a, b| (&a.r#type, &a.value).cmp(&(&b.r#type, &b.value)));
    entry.dns_names.sort();
}

/// An authorized entry on the wire, masked; logged and skipped when it cannot be converted.
fn wire_entry(entry: &RegistrationEntry, mask: Option<&types::EntryMask>) -> Option<types::Entry> {
    match convert::entry_to_proto(entry) {
        Ok(mut wire) => {
            convert::apply_entry_mask(&mut wire, mask);
            Some(wire)
        }
        Err(err) => {
            tracing::error!(entry_id = %entry.entry_id, error = %err, "Failed to convert entry");
            None
        }
    }
}

/// Sends the snapshot's revisions in pages, then answers each request for full entries with
/// pages of at most `page_size`, the last one with `more = false`, until the client closes.
/// Entries are converted to the wire form only when the client asks for them, so an agent
/// that is up to date costs one copy of the revisions.
async fn sync_pages<S>(
    snapshot: Arc<SyncSnapshot>,
    mask: Option<types::EntryMask>,
    page_size: usize,
    mut inbound: S,
    tx: mpsc::Sender<Result<pb::SyncAuthorizedEntriesResponse, Status>>,
) where
    S: Stream<Item = Result<pb::SyncAuthorizedEntriesRequest, Status>> + Unpin,
{
    use tokio_stream::StreamExt as _;

    let page_size = page_size.max(1);
    let total = snapshot.len();
    for start in (0..total).step_by(page_size) {
        let end = (start + page_size).min(total);
        let entry_revisions = snapshot
            .revisions(start..end)
            .map(|r| pb::EntryRevision {
                id: r.id.to_owned(),
                revision_number: r.revision_number,
                created_at: r.created_at,
            })
            .collect();
        let response = pb::SyncAuthorizedEntriesResponse {
            entry_revisions,
            entries: Vec::new(),
            more: end < total,
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }

    while let Some(request) = inbound.next().await {
        let mut request = match request {
            Ok(request) => request,
            // The client closing or cancelling ends the exchange normally.
            Err(status) if status.code() == Code::Cancelled => return,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        request.ids.sort();
        request.ids.dedup();
        let mut page = Vec::new();
        for id in &request.ids {
            let Some(entry) = snapshot.find(id) else {
                continue;
            };
            let Some(wire) = wire_entry(entry, mask.as_ref()) else {
                continue;
            };
            if page.len() == page_size {
                let response = pb::SyncAuthorizedEntriesResponse {
                    entry_revisions: Vec::new(),
                    entries: std::mem::take(&mut page),
                    more: true,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            page.push(wire);
        }
        let response = pb::SyncAuthorizedEntriesResponse {
            entry_revisions: Vec::new(),
            entries: page,
            more: false,
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

type SyncStreamBox =
    Pin<Box<dyn Stream<Item = Result<pb::SyncAuthorizedEntriesResponse, Status>> + Send + 'static>>;

/// Upstream's audit fields of an entry list/count filter (`fieldsFromListEntryFilter`).
fn audit_entry_filter(
    audit: &AuditLog,
    by_spiffe_id: Option<&types::Spiffeid>,
    by_parent_id: Option<&types::Spiffeid>,
    by_selectors: Option<&types::SelectorMatch>,
    by_federates_with: Option<&types::FederatesWithMatch>,
    by_hint: Option<&pbjson_types::StringValue>,
    by_downstream: Option<&pbjson_types::BoolValue>,
) {
    if let Some(hint) = by_hint {
        audit.add("hint", hint.value.as_str());
    }
    if let Some(Ok(id)) = by_parent_id.map(|id| convert::id_from_proto(Some(id))) {
        audit.add("parent_id", id.as_str());
    }
    if let Some(Ok(id)) = by_spiffe_id.map(|id| convert::id_from_proto(Some(id))) {
        audit.add("spiffe_id", id.as_str());
    }
    if let Some(m) = by_selectors {
        let name = types::selector_match::MatchBehavior::try_from(m.r#match)
            .map_or_else(|_| m.r#match.to_string(), |b| b.as_str_name().to_owned());
        audit.add("by_selector_match", name);
        audit.add("by_selectors", audit::selectors_field(&m.selectors));
    }
    if let Some(m) = by_federates_with {
        let name = types::federates_with_match::MatchBehavior::try_from(m.r#match)
            .map_or_else(|_| m.r#match.to_string(), |b| b.as_str_name().to_owned());
        audit.add("federates_with_match", name);
        audit.add("federates_with", m.trust_domains.join(","));
    }
    if let Some(downstream) = by_downstream {
        audit.add("downstream", downstream.value);
    }
}

#[tonic::async_trait]
impl pb::entry_server::Entry for EntryApi {
    async fn count_entries(
        &self,
        request: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if let Some(f) = request.filter.as_ref() {
            audit_entry_filter(
                &audit,
                f.by_spiffe_id.as_ref(),
                f.by_parent_id.as_ref(),
                f.by_selectors.as_ref(),
                f.by_federates_with.as_ref(),
                f.by_hint.as_ref(),
                f.by_downstream.as_ref(),
            );
        }
        let filter = match request.filter.as_ref() {
            Some(f) => self.filter(
                f.by_spiffe_id.as_ref(),
                f.by_parent_id.as_ref(),
                f.by_selectors.as_ref(),
                f.by_federates_with.as_ref(),
                f.by_hint.as_ref(),
                f.by_downstream.as_ref(),
            )?,
            None => ListEntriesRequest::default(),
        };
        let count = self
            .ctx
            .datastore
            .count_registration_entries(&filter)
            .await
            .map_err(|e| make_err(Code::Internal, "failed to count entries", Some(&e)))?;
        Ok(Response::new(pb::CountEntriesResponse {
            count: i32::try_from(count).unwrap_or(i32::MAX),
        }))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if let Some(f) = request.filter.as_ref() {
            audit_entry_filter(
                &audit,
                f.by_spiffe_id.as_ref(),
                f.by_parent_id.as_ref(),
                f.by_selectors.as_ref(),
                f.by_federates_with.as_ref(),
                f.by_hint.as_ref(),
                f.by_downstream.as_ref(),
            );
        }
        let mut filter = match request.filter.as_ref() {
            Some(f) => self.filter(
                f.by_spiffe_id.as_ref(),
                f.by_parent_id.as_ref(),
                f.by_selectors.as_ref(),
                f.by_federates_with.as_ref(),
                f.by_hint.as_ref(),
                f.by_downstream.as_ref(),
            )?,
            None => ListEntriesRequest::default(),
        };
        if request.page_size > 0 {
            filter.pagination = Some(Pagination {
                token: request.page_token.clone(),
                page_size: request.page_size.unsigned_abs(),
            });
        }
        let (records, next_page_token) = self
            .ctx
            .datastore
            .list_registration_entries(&filter)
            .await
            .map_err(|e| convert::datastore_status("failed to list entries", &e))?;
        let mut entries = Vec::new();
        for record in &records {
            match convert::entry_to_proto(record) {
                Ok(mut wire) => {
                    convert::apply_entry_mask(&mut wire, request.output_mask.as_ref());
                    entries.push(wire);
                }
                Err(err) => {
                    tracing::error!(entry_id = %record.entry_id, error = %err, "Failed to convert entry");
                }
            }
        }
        Ok(Response::new(pb::ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("entry_id", request.id.as_str());
        if request.id.is_empty() {
            return Err(make_err(Code::InvalidArgument, "missing ID", None));
        }
        let record = self
            .ctx
            .datastore
            .fetch_registration_entry(&request.id)
            .await
            .map_err(|e| make_err(Code::Internal, "failed to fetch entry", Some(&e)))?
            .ok_or_else(|| make_err(Code::NotFound, "entry not found", None))?;
        let mut entry = convert::entry_to_proto(&record)
            .map_err(|e| make_err(Code::Internal, "failed to convert entry", Some(&e)))?;
        convert::apply_entry_mask(&mut entry, request.output_mask.as_ref());
        Ok(Response::new(entry))
    }

    async fn batch_create_entry(
        &self,
        request: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let results = self
            .create_entries(&request.entries, request.output_mask.as_ref())
            .await;
        for (entry, result) in request.entries.iter().zip(&results) {
            let (code, message) = audit::item_status(result.status.as_ref());
            audit.item(code, message, audit::entry_fields(entry, None));
        }
        self.refresh_index().await;
        Ok(Response::new(pb::BatchCreateEntryResponse { results }))
    }

    async fn batch_update_entry(
        &self,
        request: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.entries.len());
        for entry in &request.entries {
            results.push(
                self.update_entry(
                    entry,
                    request.input_mask.as_ref(),
                    request.output_mask.as_ref(),
                )
                .await,
            );
        }
        for (entry, result) in request.entries.iter().zip(&results) {
            let (code, message) = audit::item_status(result.status.as_ref());
            let fields = audit::entry_fields(entry, request.input_mask.as_ref());
            audit.item(code, message, fields);
        }
        self.refresh_index().await;
        Ok(Response::new(pb::BatchUpdateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        request: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.ids.len());
        for id in &request.ids {
            let result = self.delete_entry(id).await;
            let (code, message) = audit::item_status(result.status.as_ref());
            audit.item(code, message, audit::field("entry_id", id.as_str()));
            results.push(result);
        }
        self.refresh_index().await;
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }

    async fn get_authorized_entries(
        &self,
        request: Request<pb::GetAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::GetAuthorizedEntriesResponse>, Status> {
        let caller = caller_of(&request);
        let agent_id = caller_agent_id(&caller)?;
        let entries = self
            .authorized_entries(agent_id.as_str(), request.get_ref().output_mask.as_ref())
            .await;
        Ok(Response::new(pb::GetAuthorizedEntriesResponse { entries }))
    }

    type SyncAuthorizedEntriesStream = SyncStreamBox;

    async fn sync_authorized_entries(
        &self,
        request: Request<Streaming<pb::SyncAuthorizedEntriesRequest>>,
    ) -> Result<Response<Self::SyncAuthorizedEntriesStream>, Status> {
        let caller = caller_of(&request);
        let agent_id = caller_agent_id(&caller)?.clone();
        let mut inbound = request.into_inner();
        let first = match inbound.message().await? {
            Some(first) => first,
            None => {
                let empty: SyncStreamBox = Box::pin(tokio_stream::empty());
                return Ok(Response::new(empty));
            }
        };
        if !first.ids.is_empty() {
            return Err(make_err(
                Code::InvalidArgument,
                "specifying IDs on initial request is not supported",
                None,
            ));
        }
        // The caller compares revisions to decide what to fetch, so they cannot be masked.
        if first
            .output_mask
            .as_ref()
            .is_some_and(|m| !m.revision_number)
        {
            return Err(make_err(
                Code::InvalidArgument,
                "revision number cannot be masked",
                None,
            ));
        }
        let snapshot = self
            .ctx
            .index
            .sync_snapshot_of_attested(agent_id.as_str())
            .await;
        let mask = first.output_mask;
        if snapshot.len() <= self.entry_page_size {
            let response = pb::SyncAuthorizedEntriesResponse {
                entry_revisions: Vec::new(),
                entries: snapshot
                    .entries()
                    .iter()
                    .filter_map(|entry| wire_entry(entry, mask.as_ref()))
                    .collect(),
                more: false,
            };
            let once: SyncStreamBox = Box::pin(tokio_stream::once(Ok(response)));
            return Ok(Response::new(once));
        }
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(sync_pages(
            snapshot,
            mask,
            self.entry_page_size,
            inbound,
            tx,
        ));
        let stream: SyncStreamBox = Box::pin(SyncStream {
            inner: ReceiverStream::new(rx),
            task: Some(task),
        });
        Ok(Response::new(stream))
    }
}
