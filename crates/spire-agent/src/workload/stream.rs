//! The response stream of the streaming RPCs: one message for the current state, then one
//! per change, until the client goes away (tonic drops the stream), an error is sent (the
//! stream ends with that status) or the agent shuts down.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::manager::WorkloadUpdate;

/// Turns an update into the message to send; `Ok(None)` sends nothing (e.g. the same bundles
/// as last time), `Err` ends the stream with that status.
type Render<T> = Box<dyn FnMut(&WorkloadUpdate) -> Result<Option<T>, Status> + Send>;

/// A stream of responses rendered from a workload's subscription (the response type of
/// the streaming RPCs).
pub struct UpdateStream<T> {
    updates: WatchStream<Arc<WorkloadUpdate>>,
    render: Render<T>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    finished: bool,
}

impl<T> UpdateStream<T> {
    /// Sends `render(update)` for the current update and each later one until `shutdown`.
    pub(super) fn new(
        updates: watch::Receiver<Arc<WorkloadUpdate>>,
        shutdown: CancellationToken,
        render: impl FnMut(&WorkloadUpdate) -> Result<Option<T>, Status> + Send + 'static,
    ) -> Self {
        Self {
            updates: WatchStream::new(updates),
            render: Box::new(render),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            finished: false,
        }
    }
}

impl<T> Stream for UpdateStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if this.shutdown.as_mut().poll(cx).is_ready() {
                this.finished = true;
                return Poll::Ready(None);
            }
            let update = match Pin::new(&mut this.updates).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // The manager dropped the subscription: nothing more will come.
                    this.finished = true;
                    return Poll::Ready(Some(Err(Status::unavailable(
                        "the agent stopped serving updates",
                    ))));
                }
                Poll::Ready(Some(update)) => update,
            };
            match (this.render)(&update) {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
    }
}

impl<T> std::fmt::Debug for UpdateStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateStream")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}
