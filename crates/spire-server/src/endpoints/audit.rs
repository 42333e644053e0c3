//! The audit layer (`audit_log_enabled`): sits inside the authorization layer, so it sees
//! only calls the policy admitted (as upstream's audit middleware, last in its chain). For
//! each it opens an [`AuditLog`] with the caller and RPC fields, hands it to the service
//! through the request extensions, and writes the entry when the call's gRPC status is
//! known: from the headers of a trailers-only answer, else from the trailers at the end of
//! the response stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::api::Caller;
use crate::api::audit::{AuditLog, Fields};

/// The tower layer; a no-op unless enabled.
#[derive(Debug, Clone, Copy)]
pub struct AuditLayer {
    enabled: bool,
}

impl AuditLayer {
    /// Audits every call when `enabled` (`audit_log_enabled`).
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service [`AuditLayer`] builds.
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    inner: S,
    enabled: bool,
}

impl<S> tower::Service<http::Request<Body>> for AuditService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if !self.enabled {
            return Box::pin(self.inner.call(request));
        }
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default();
        let log = AuditLog::new(base_fields(request.uri().path(), &caller));
        request.extensions_mut().insert(log.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            if let Some(status) = Status::from_header_map(&parts.headers) {
                log.finish(status.code(), status.message());
                return Ok(http::Response::from_parts(parts, body));
            }
            let pending = Pending {
                log: Some(log),
                inner: body,
            };
            Ok(http::Response::from_parts(parts, Body::new(pending)))
        })
    }
}

/// The fields upstream's RPC logger and authorization middleware put in every entry.
pub fn base_fields(path: &str, caller: &Caller) -> Fields {
    let (service, method) = names(path);
    let mut fields = Fields::new();
    fields.insert("subsystem_name".into(), "api".into());
    fields.insert("service".into(), service.into());
    fields.insert("method".into(), method.into());
    fields.insert("request_id".into(), uuid::Uuid::new_v4().to_string().into());
    fields.insert("authorized_as".into(), caller.authorized_as.into());
    fields.insert("authorized_via".into(), caller.authorized_via.into());
    if let Some(id) = &caller.spiffe_id {
        fields.insert("caller_id".into(), id.as_str().into());
    }
    if let Some(addr) = caller.addr {
        fields.insert("caller_addr".into(), addr.to_string().into());
    }
    if let Some(process) = caller.process {
        fields.insert("caller_uid".into(), process.uid.into());
        fields.insert("caller_gid".into(), process.gid.into());
        // As upstream: the path is left out when it cannot be read (no hostPID on k8s).
        if let Some(path) = process
            .pid
            .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        {
            fields.insert("caller_path".into(), path.to_string_lossy().into());
        }
    }
    fields
}

/// Upstream's `service` and `method` names: the service without `spire.api.server.`, and
/// `grpc.health.v1.Health` as `Health`.
fn names(path: &str) -> (String, String) {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = if let Some(rest) = service.strip_prefix("spire.api.server.") {
        rest
    } else if service == "grpc.health.v1.Health" {
        "Health"
    } else {
        service
    };
    (service.to_owned(), method.to_owned())
}

/// A response body that writes the entry when the status passes, or on drop (the client
/// went away first: upstream sees a cancelled context).
struct Pending {
    log: Option<AuditLog>,
    inner: Body,
}

impl Pending {
    fn finish(&mut self, code: Code, message: &str) {
        if let Some(log) = self.log.take() {
            log.finish(code, message);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Code::Cancelled, "context canceled");
    }
}

impl http_body::Body for Pending {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map) {
                    self.finish(status.code(), status.message());
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let message = e.to_string();
                self.finish(Code::Internal, &message);
            }
            Poll::Ready(None) => self.finish(Code::Ok, ""),
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
    use super::*;

    #[test]
    fn service_and_method_are_named_as_upstream() {
        assert_eq!(
            names("/spire.api.server.agent.v1.Agent/AttestAgent"),
            ("agent.v1.Agent".to_owned(), "AttestAgent".to_owned())
        );
        assert_eq!(
            names("/grpc.health.v1.Health/Check"),
            ("Health".to_owned(), "Check".to_owned())
        );
    }
}
