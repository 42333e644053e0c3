//! Upstream's per-RPC metrics as a tower layer for tonic servers: every call counts in
//! `rpc.<service>.<method>` with its gRPC status, and its duration in `…elapsed_time`. A
//! streaming call is recorded when its stream ends (its status is in the trailers). A stream
//! the client closes first (a Workload API watcher going away) counts as `OK`, as upstream's
//! streaming handlers return no error when their caller leaves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Frame, SizeHint};
use tonic::body::Body;

use super::{Metrics, names};
use crate::cli::client::code_name_i32;

/// A tower layer for `tonic::transport::Server::builder().layer(..)`.
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    /// Records into `metrics` (nothing when it has no sink).
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] builds.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let key = self
            .metrics
            .enabled()
            .then(|| names::rpc_key(request.uri().path()))
            .flatten();
        let response = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = response.await?;
            let Some(key) = key else {
                return Ok(response);
            };
            let call = Call {
                metrics,
                key,
                started: Instant::now(),
                done: false,
            };
            let (parts, body) = response.into_parts();
            // A trailers-only answer (an error before any message) has its status here.
            if let Some(code) = status_code(&parts.headers) {
                call.finish(code);
                return Ok(http::Response::from_parts(parts, body));
            }
            Ok(http::Response::from_parts(
                parts,
                Body::new(Recorded { inner: body, call }),
            ))
        })
    }
}

/// The `grpc-status` in `headers`, when there is one.
fn status_code(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A call waiting for its status.
struct Call {
    metrics: Metrics,
    key: Vec<String>,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(mut self, code: i32) {
        self.record(code);
    }

    fn record(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let key: Vec<&str> = self.key.iter().map(String::as_str).collect();
        self.metrics
            .record_call(&key, &[], code_name_i32(code), self.started);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The client went away before the status was sent.
        self.record(tonic::Code::Ok as i32);
    }
}

/// A response body that records the call when its trailers pass.
struct Recorded {
    inner: Body,
    call: Call,
}

impl http_body::Body for Recorded {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.call.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.record(tonic::Code::Internal as i32),
            Poll::Ready(None) => self.call.record(tonic::Code::Ok as i32),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
