//! The response stream of the Delegated Identity subscriptions: one message for the current
//! value of a watch channel, then one per change, until the client goes away, an error is sent
//! (the stream ends with that status) or the agent shuts down.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

/// Turns a value into the message to send; `Ok(None)` sends nothing, `Err` ends the stream.
type Render<V, T> = Box<dyn FnMut(&V) -> Result<Option<T>, Status> + Send>;

/// Messages rendered from every value of a watch channel.
pub struct WatchResponses<V, T> {
    values: WatchStream<V>,
    render: Render<V, T>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    finished: bool,
}

impl<V: Clone + Send + Sync + 'static, T> WatchResponses<V, T> {
    /// Sends `render(value)` for the current value and each later one until `shutdown`.
    pub(super) fn new(
        values: watch::Receiver<V>,
        shutdown: CancellationToken,
        render: impl FnMut(&V) -> Result<Option<T>, Status> + Send + 'static,
    ) -> Self {
        Self {
            values: WatchStream::new(values),
            render: Box::new(render),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            finished: false,
        }
    }
}

impl<V: Clone + Send + Sync + 'static, T> Stream for WatchResponses<V, T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished || this.shutdown.as_mut().poll(cx).is_ready() {
                this.finished = true;
                return Poll::Ready(None);
            }
            let value = match Pin::new(&mut this.values).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(Status::unavailable(
                        "the agent stopped serving updates",
                    ))));
                }
                Poll::Ready(Some(value)) => value,
            };
            match (this.render)(&value) {
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

impl<V, T> std::fmt::Debug for WatchResponses<V, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchResponses")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}
