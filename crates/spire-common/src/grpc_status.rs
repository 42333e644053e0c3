//! gRPC says a message over the size limit is `RESOURCE_EXHAUSTED` (grpc-go, and so upstream
//! SPIRE, answers that); tonic answers `OUT_OF_RANGE` for a request it will not decode and a
//! response it will not encode. [`MessageSizeStatusLayer`] rewrites exactly those two
//! statuses, wherever tonic puts them (the headers of a trailers-only answer, or the trailers
//! of a stream), so clients that retry or alert on upstream's code see upstream's code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::{Code, Status};

/// The start of tonic's messages for a request or response over the size limit.
const TOO_LARGE: [&str; 2] = [
    "Error, decoded message length too large",
    "Error, encoded message length too large",
];

/// A tower layer for `tonic::transport::Server::builder().layer(..)` that turns tonic's
/// `OUT_OF_RANGE` for an oversized message into gRPC's `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageSizeStatusLayer;

impl<S> tower::Layer<S> for MessageSizeStatusLayer {
    type Service = MessageSizeStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSizeStatus { inner }
    }
}

/// The service [`MessageSizeStatusLayer`] builds.
#[derive(Debug, Clone)]
pub struct MessageSizeStatus<S> {
    inner: S,
}

impl<S, Request> tower::Service<Request> for MessageSizeStatus<S>
where
    S: tower::Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let (mut parts, body) = response.await?.into_parts();
            rewrite(&mut parts.headers);
            let body = body.map_frame(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            });
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// Replaces an oversized-message `OUT_OF_RANGE` status in `headers` by `RESOURCE_EXHAUSTED`
/// with the same message; any other status is left as it is.
fn rewrite(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::OutOfRange
        || !TOO_LARGE
            .iter()
            .any(|prefix| status.message().starts_with(prefix))
    {
        return;
    }
    let replacement = Status::resource_exhausted(status.message().to_owned());
    // Adding the header only fails for a message that could not have been parsed above.
    let _ = replacement.add_header(headers);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn headers_of(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn an_oversized_message_becomes_resource_exhausted_with_its_message() {
        let tonic_status = Status::out_of_range(
            "Error, decoded message length too large: found 5242885 bytes, the limit is: 4194304 bytes",
        );
        let mut headers = headers_of(&tonic_status);
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), tonic_status.message());
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            Status::out_of_range("page token past the end"),
            Status::invalid_argument("Error, decoded message length too large"),
            Status::ok(""),
        ] {
            let mut headers = headers_of(&status);
            let before = headers.clone();
            rewrite(&mut headers);
            assert_eq!(headers, before);
        }
    }
}
