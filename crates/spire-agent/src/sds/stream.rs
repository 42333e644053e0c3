//! One StreamSecrets stream: the xDS state-of-the-world protocol as upstream's agent speaks
//! it. Each workload update bumps the version; a response goes out when the update changes
//! or when Envoy asks for a different set of names. A request answering the last nonce with
//! another version is a NACK: logged, and answered only if it changes the names. A request
//! with a stale nonce is ignored.
//!
//! The stream is a task that ends, dropping the cache subscription, as soon as Envoy closes
//! its side, the client goes away, an answer cannot be built (the stream ends with that
//! status) or the agent stops.

use std::sync::Arc;

use spire_proto::sds::core::Node;
use spire_proto::sds::discovery::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::response::build_response;
use crate::config::SdsSettings;
use crate::manager::WorkloadUpdate;

/// Starts the stream's task; gives the responses to send.
pub(super) fn spawn(
    settings: Arc<SdsSettings>,
    requests: Streaming<DiscoveryRequest>,
    updates: watch::Receiver<Arc<WorkloadUpdate>>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<DiscoveryResponse, Status>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run(settings, requests, updates, shutdown, tx));
    ReceiverStream::new(rx)
}

/// What the stream knows between messages.
#[derive(Default)]
struct State {
    version: u64,
    last_nonce: String,
    last_node: Option<Node>,
    last_request: Option<DiscoveryRequest>,
}

impl State {
    fn version_info(&self) -> String {
        self.version.to_string()
    }

    /// Takes in a request; true when it must be answered now.
    fn accept(&mut self, mut request: DiscoveryRequest) -> bool {
        tracing::debug!(
            resource_names = ?request.resource_names,
            version_info = %request.version_info,
            nonce = %request.response_nonce,
            "Received StreamSecrets request"
        );
        if let Some(detail) = &request.error_detail {
            tracing::error!(resource_names = ?request.resource_names, error = %detail.message, "Envoy reported errors applying secrets");
        }
        if !self.last_nonce.is_empty() {
            if request.response_nonce != self.last_nonce {
                tracing::warn!(nonce = %request.response_nonce, expect = %self.last_nonce, "Received unexpected nonce; ignoring request");
                return false;
            }
            let expected = self.version_info();
            if request.version_info.is_empty() || request.version_info != expected {
                // A NACK may also change the names, so it is processed further.
                tracing::error!(version_info = %request.version_info, expect = %expected, "Client rejected expected version and rolled back");
            }
            if request.node.is_none() {
                request.node.clone_from(&self.last_node);
            }
        }
        let changed = self
            .last_request
            .as_ref()
            .is_none_or(|last| names_changed(&last.resource_names, &request.resource_names));
        self.last_request = Some(request);
        changed
    }
}

/// Whether the requested names differ (as sets of the same length, as upstream compares).
fn names_changed(old: &[String], new: &[String]) -> bool {
    old.len() != new.len() || new.iter().any(|name| !old.contains(name))
}

async fn run(
    settings: Arc<SdsSettings>,
    mut requests: Streaming<DiscoveryRequest>,
    mut updates: watch::Receiver<Arc<WorkloadUpdate>>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    // The subscription's current value is the first update.
    let mut update = Arc::clone(&updates.borrow_and_update());
    let mut state = State {
        version: 1,
        ..State::default()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            received = requests.message() => match received {
                Ok(Some(request)) => {
                    if !state.accept(request) {
                        continue;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    if status.code() != tonic::Code::Cancelled {
                        tracing::error!(error = %status.message(), "Received error from stream secrets server");
                    }
                    return;
                }
            },
            changed = updates.changed() => {
                if changed.is_err() {
                    // The manager dropped the subscription: nothing more will come.
                    let gone = Err(Status::unavailable("the agent stopped serving updates"));
                    send(&tx, gone, &shutdown).await;
                    return;
                }
                update = Arc::clone(&updates.borrow_and_update());
                state.version += 1;
                if state.last_request.is_none() {
                    continue;
                }
            }
        }
        let Some(request) = state.last_request.as_ref() else {
            continue;
        };
        let response = match build_response(&settings, &state.version_info(), request, &update) {
            Ok(response) => response,
            Err(status) => {
                tracing::error!(error = %status.message(), "Error building stream secrets response");
                send(&tx, Err(status), &shutdown).await;
                return;
            }
        };
        tracing::debug!(
            version_info = %response.version_info,
            nonce = %response.nonce,
            count = response.resources.len(),
            "Sending StreamSecrets response"
        );
        let nonce = response.nonce.clone();
        if !send(&tx, Ok(response), &shutdown).await {
            return;
        }
        state.last_nonce = nonce;
        if let Some(node) = request.node.clone() {
            state.last_node = Some(node);
        }
    }
}

/// Hands a message to tonic, waiting while the client is slow to read; false when the client
/// went away or the agent is stopping.
async fn send(
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    message: Result<DiscoveryResponse, Status>,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        sent = tx.send(message) => sent.is_ok(),
        () = shutdown.cancelled() => false,
    }
}
