//! Upstream's per-RPC metrics as a tower layer for tonic servers: every call counts in
//! `rpc.<service>.<method>` with its gRPC status, and its duration in `…elapsed_time`. A
//! streaming call is recorded when its stream ends (its status is in the trailers). A stream
//! the client closes first (a Workload API watcher going away) counts as `OK`, as upstream's
//! streaming handlers return no error when their caller leaves.
//!
//! On the agent's Workload API and admin listeners the layer also counts calls per API as
//! upstream's `withPerServiceConnectionMetrics` does ([`RpcMetricsLayer::with_connections`]):
//! `<api>_connection` +1 when a call starts, and the gauge `<api>_connections` of calls in
//! flight (open streams included), for `workload_api`, `sds_api` and
//! `delegated_identity_api`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
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
    connections: Option<Arc<Connections>>,
}

impl RpcMetricsLayer {
    /// Records into `metrics` (nothing when it has no sink).
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            connections: None,
        }
    }

    /// Also counts the calls of the agent's APIs (`workload_api_connection(s)`,
    /// `sds_api_connection(s)`, `delegated_identity_api_connection(s)`), with gauges of
    /// their own: upstream keeps one count per listener.
    pub fn with_connections(mut self) -> Self {
        self.connections = Some(Arc::default());
        self
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
            connections: self.connections.clone(),
        }
    }
}

/// The calls in flight of each API one listener serves.
#[derive(Debug, Default)]
struct Connections {
    workload_api: AtomicI64,
    sds_api: AtomicI64,
    delegated_identity_api: AtomicI64,
}

impl Connections {
    /// The metric key part and counter of the API `path` belongs to (upstream's raw
    /// service names), or `None` for the others (health, reflection, debug, logger).
    fn of(self: &Arc<Self>, path: &str) -> Option<(&'static str, Arc<Self>)> {
        let service = path.strip_prefix('/')?.split('/').next()?;
        let api = match service {
            "SpiffeWorkloadAPI" => "workload_api",
            "envoy.service.secret.v3.SecretDiscoveryService" => "sds_api",
            "spire.api.agent.delegatedidentity.v1.DelegatedIdentity" => "delegated_identity_api",
            _ => return None,
        };
        Some((api, Arc::clone(self)))
    }

    fn counter(&self, api: &str) -> &AtomicI64 {
        match api {
            "workload_api" => &self.workload_api,
            "sds_api" => &self.sds_api,
            _ => &self.delegated_identity_api,
        }
    }
}

/// One call of an API counted in [`Connections`]: `<api>_connection` +1 and the gauge up
/// when made, the gauge down when the call ends (or its response is dropped).
struct Connection {
    metrics: Metrics,
    api: &'static str,
    connections: Arc<Connections>,
}

impl Connection {
    fn open(metrics: Metrics, api: &'static str, connections: Arc<Connections>) -> Self {
        let open = connections.counter(api).fetch_add(1, Ordering::Relaxed) + 1;
        metrics.incr_counter(&[api, "connection"], &[], 1);
        #[allow(clippy::cast_precision_loss, reason = "connection counts")]
        metrics.set_gauge(&[api, "connections"], &[], open as f64);
        Self {
            metrics,
            api,
            connections,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let open = self
            .connections
            .counter(self.api)
            .fetch_sub(1, Ordering::Relaxed)
            - 1;
        #[allow(clippy::cast_precision_loss, reason = "connection counts")]
        self.metrics
            .set_gauge(&[self.api, "connections"], &[], open as f64);
    }
}

/// The service [`RpcMetricsLayer`] builds.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
    connections: Option<Arc<Connections>>,
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
        let enabled = self.metrics.enabled();
        let key = enabled
            .then(|| names::rpc_key(request.uri().path()))
            .flatten();
        let connection = self
            .connections
            .as_ref()
            .filter(|_| enabled)
            .and_then(|c| c.of(request.uri().path()))
            .map(|(api, c)| Connection::open(self.metrics.clone(), api, c));
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
                connection,
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
    /// Released when the call is recorded.
    connection: Option<Connection>,
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
        self.connection = None;
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Ready;

    use tower::{Layer as _, Service as _};

    use super::*;
    use crate::telemetry::{PrometheusListener, TelemetryConfig};

    /// A response body that never ends: an open stream.
    struct Open;

    impl http_body::Body for Open {
        type Data = <Body as http_body::Body>::Data;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    /// A handler answering every call with an open stream.
    struct Handler;

    impl tower::Service<http::Request<()>> for Handler {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::new(Open))))
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn agent_api_calls_count_as_connections_while_in_flight() {
        let metrics = Metrics::new(TelemetryConfig {
            prometheus: Some(PrometheusListener {
                host: "localhost".into(),
                port: 1,
            }),
            prefix: "spire_agent".into(),
            ..TelemetryConfig::default()
        })
        .unwrap();
        let mut service = RpcMetricsLayer::new(metrics.clone())
            .with_connections()
            .layer(Handler);
        let first = service
            .call(request("/SpiffeWorkloadAPI/FetchX509SVID"))
            .await
            .unwrap();
        let second = service
            .call(request("/SpiffeWorkloadAPI/FetchJWTBundles"))
            .await
            .unwrap();
        let sds = service
            .call(request(
                "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            ))
            .await
            .unwrap();
        let health = service
            .call(request("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        let text = metrics.prometheus_text().unwrap();
        assert!(
            text.contains("spire_agent_workload_api_connection 2\n"),
            "{text}"
        );
        assert!(
            text.contains("spire_agent_workload_api_connections 2\n"),
            "{text}"
        );
        assert!(
            text.contains("spire_agent_sds_api_connection 1\n"),
            "{text}"
        );
        assert!(
            text.contains("spire_agent_sds_api_connections 1\n"),
            "{text}"
        );
        assert!(!text.contains("health_connection"), "{text}");
        drop((first, health));
        let text = metrics.prometheus_text().unwrap();
        assert!(
            text.contains("spire_agent_workload_api_connections 1\n"),
            "{text}"
        );
        assert!(
            text.contains("spire_agent_workload_api_connection 2\n"),
            "{text}"
        );
        drop((second, sds));
        let text = metrics.prometheus_text().unwrap();
        assert!(
            text.contains("spire_agent_workload_api_connections 0\n"),
            "{text}"
        );
        assert!(
            text.contains("spire_agent_sds_api_connections 0\n"),
            "{text}"
        );

        // A listener without connection counting (the server's) emits none.
        let plain = Metrics::new(TelemetryConfig {
            prometheus: Some(PrometheusListener {
                host: "localhost".into(),
                port: 1,
            }),
            prefix: "spire_server".into(),
            ..TelemetryConfig::default()
        })
        .unwrap();
        let mut service = RpcMetricsLayer::new(plain.clone()).layer(Handler);
        drop(
            service
                .call(request(
                    "/spire.api.agent.delegatedidentity.v1.DelegatedIdentity/SubscribeToX509SVIDs",
                ))
                .await
                .unwrap(),
        );
        let text = plain.prometheus_text().unwrap();
        assert!(!text.contains("connection"), "{text}");
        assert!(text.contains("spire_server_rpc_"), "{text}");
    }
}
