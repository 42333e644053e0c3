//! `spire_rs.agent.notify.v1.AgentNotify`: our own service (upstream has no such RPC) that
//! streams "sync now" hints to a connected agent when the authorized-entry index applies a
//! change that concerns it, or the trust bundle changes. Agents still fetch everything
//! through the usual entry and bundle RPCs; a hint only moves their next sync forward.
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
use crate::authorized::{AgentGone, AgentSignal, SyncHints};

/// The notify service.
pub struct NotifyApi {
    hints: Arc<SyncHints>,
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
        Self { hints }
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
}

/// Sends the first hint at once, then one per observed change (changes that come faster
/// than the agent reads coalesce), until the agent hangs up or is gone.
async fn stream_hints(
    agent_id: String,
    mut signals: watch::Receiver<AgentSignal>,
    tx: mpsc::Sender<Result<pb::SyncHint, Status>>,
) {
    let mut seen = *signals.borrow_and_update();
    let first = pb::SyncHint {
        sequence: 0,
        entries: true,
        bundles: true,
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
        let now = *signals.borrow_and_update();
        if let Some(gone) = now.gone {
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
        let hint = pb::SyncHint {
            sequence,
            entries: now.entries != seen.entries,
            bundles: now.bundles != seen.bundles,
        };
        seen = now;
        if tx.send(Ok(hint)).await.is_err() {
            return;
        }
    }
}
