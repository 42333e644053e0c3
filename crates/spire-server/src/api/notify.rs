//! `spire_rs.agent.notify.v1.AgentNotify`: our own service (upstream has no such RPC) that
//! streams "sync now" hints to a connected agent when the authorized-entry index applies a
//! change that concerns it, or the trust bundle changes. A hint names the entries that
//! changed when it can (see `authorized::hints`), and FetchEntries answers just those, so
//! an agent with 100k entries does not list them all for one change; otherwise the agent
//! syncs through the usual entry and bundle RPCs.
//!
//! Only agents may call it (the auth layer checks the SVID as for GetAuthorizedEntries). A
//! ban or deletion ends the agent's streams with the PermissionDenied details its next call
//! would get, so the agent stops (or attests again) at once.

use std::pin::Pin;
use std::sync::Arc;

use spire_proto::spire::api::types::permission_denied_details::Reason;
use spire_proto::spire_rs::agent::notify::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::ApiContext;
use super::agent::{caller_agent_id, caller_of};
use crate::authorized::{AgentGone, AgentSignal, AuthorizedIndex, EntryChange, SyncHints};

/// Most entries a hint names; more changes at once make a hint without names (the agent
/// syncs everything, which is cheaper than fetching thousands one by one).
const MAX_NAMED_CHANGES: usize = 256;

/// Most entry IDs one FetchEntries call may ask for.
const MAX_FETCH_IDS: usize = 1000;

/// The notify service.
pub struct NotifyApi {
    hints: Arc<SyncHints>,
    index: Arc<AuthorizedIndex>,
}

impl NotifyApi {
    /// Builds the service over the index's hint channels, and starts forwarding the CA's
    /// bundle changes to them (until the CA manager goes away).
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        let hints = Arc::clone(ctx.index.hints());
        tokio::spawn(forward_bundle_changes(
            ctx.ca.bundle_changes(),
            Arc::clone(&hints),
        ));
        Self {
            hints,
            index: Arc::clone(&ctx.index),
        }
    }
}

/// Signals every connected agent whenever the CA changed the stored bundle.
async fn forward_bundle_changes(mut changes: watch::Receiver<u64>, hints: Arc<SyncHints>) {
    while changes.changed().await.is_ok() {
        hints.bundles_changed();
    }
}

type HintStream = Pin<Box<dyn Stream<Item = Result<pb::SyncHint, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::agent_notify_server::AgentNotify for NotifyApi {
    type WatchSyncHintsStream = HintStream;

    async fn watch_sync_hints(
        &self,
        request: Request<pb::WatchSyncHintsRequest>,
    ) -> Result<Response<Self::WatchSyncHintsStream>, Status> {
        let caller = caller_of(&request);
        let agent_id = caller_agent_id(&caller)?.to_string();
        let signals = self
            .hints
            .subscribe(&agent_id)
            .ok_or_else(|| Status::unavailable("the server is shutting down"))?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(stream_hints(agent_id, signals, tx));
        let stream: HintStream = Box::pin(ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    async fn fetch_entries(
        &self,
        request: Request<pb::FetchEntriesRequest>,
    ) -> Result<Response<pb::FetchEntriesResponse>, Status> {
        let caller = caller_of(&request);
        let agent_id = caller_agent_id(&caller)?.to_string();
        let ids = &request.get_ref().ids;
        if ids.len() > MAX_FETCH_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_FETCH_IDS} entry IDs per FetchEntries call, got {}",
                ids.len()
            )));
        }
        let entries = ids
            .iter()
            .filter_map(|id| self.index.authorized_entry(&agent_id, id))
            .filter_map(|entry| match super::convert::entry_to_proto(&entry) {
                Ok(wire) => Some(wire),
                Err(err) => {
                    tracing::error!(entry_id = %entry.entry_id, error = %err, "Failed to convert entry");
                    None
                }
            })
            .collect();
        Ok(Response::new(pb::FetchEntriesResponse { entries }))
    }
}

/// The hint for what changed between `seen` and `now`: entry changes named when they all
/// can be (and are few enough), else a bare "entries changed".
fn hint_between(sequence: u64, seen: &AgentSignal, now: &AgentSignal) -> pb::SyncHint {
    let mut hint = pb::SyncHint {
        sequence,
        entries: now.entries != seen.entries,
        bundles: now.bundles != seen.bundles,
        ..pb::SyncHint::default()
    };
    if !hint.entries {
        return hint;
    }
    let Some(changes) = now
        .changes_since(seen.entries)
        .filter(|c| c.len() <= MAX_NAMED_CHANGES)
    else {
        return hint;
    };
    hint.entries_itemized = true;
    for change in changes {
        match change {
            EntryChange::Changed { id, revision } => {
                hint.changed_entries.push(pb::EntryRevision {
                    id,
                    revision_number: revision,
                });
            }
            EntryChange::Removed(id) => hint.removed_entry_ids.push(id),
            EntryChange::Unknown => {}
        }
    }
    hint
}

/// Sends the first hint at once, then one per observed change (changes that come faster
/// than the agent reads coalesce), until the agent hangs up or is gone.
async fn stream_hints(
    agent_id: String,
    mut signals: watch::Receiver<AgentSignal>,
    tx: mpsc::Sender<Result<pb::SyncHint, Status>>,
) {
    let mut seen = signals.borrow_and_update().clone();
    seen.recent.clear();
    let first = pb::SyncHint {
        sequence: 0,
        entries: true,
        bundles: true,
        ..pb::SyncHint::default()
    };
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let mut sequence = 0_u64;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            changed = signals.changed() => {
                if changed.is_err() {
                    // Server shutdown: end the stream so graceful shutdown can finish.
                    return;
                }
            }
        }
        let (gone, hint, entries, bundles) = {
            let now = signals.borrow_and_update();
            let next = sequence.wrapping_add(1);
            (
                now.gone,
                hint_between(next, &seen, &now),
                now.entries,
                now.bundles,
            )
        };
        if let Some(gone) = gone {
            let (reason, message) = match gone {
                AgentGone::Banned => (Reason::AgentBanned, format!("agent {agent_id:?} is banned")),
                AgentGone::Deleted => (
                    Reason::AgentNotAttested,
                    format!("agent {agent_id:?} is not attested"),
                ),
            };
            tracing::info!(agent = %agent_id, ?gone, "ending the agent's sync hints");
            let _ = tx
                .send(Err(super::convert::permission_denied(reason, &message)))
                .await;
            return;
        }
        sequence = sequence.wrapping_add(1);
        seen.entries = entries;
        seen.bundles = bundles;
        if tx.send(Ok(hint)).await.is_err() {
            return;
        }
    }
}
