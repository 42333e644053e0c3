//! The two documents, as upstream's `handler.go` serves them: `/.well-known/openid-configuration`
//! (the issuer and `jwks_uri` derived from the Host, or from `jwt_issuer` / `jwks_uri`, and
//! SPIRE's fixed capabilities) and `/keys` (the JWK Set), both under `server_path_prefix`.
//! Status codes and plain-text error bodies are upstream's (Go's `http.Error` and `ServeMux`),
//! since relying parties and operators' probes see them.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Serialize;

use crate::domain::{DomainPolicy, host_domain};
use crate::jwks;
use crate::source::KeySource;

/// The algorithms SPIRE signs JWT-SVIDs with, as upstream lists them.
const SIGNING_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "ES384"];

/// What the handler needs from the configuration.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// `domains`.
    pub domains: DomainPolicy,
    /// `allow_insecure_scheme`.
    pub allow_insecure_scheme: bool,
    /// `set_key_use`.
    pub set_key_use: bool,
    /// `jwt_issuer`.
    pub jwt_issuer: Option<String>,
    /// `jwks_uri`.
    pub jwks_uri: Option<String>,
    /// `server_path_prefix`, `/` when unset.
    pub server_path_prefix: String,
}

/// Serves the discovery document and the keys.
#[derive(Debug, Clone)]
pub struct Handler {
    config: HandlerConfig,
    source: KeySource,
    well_known_path: String,
    keys_path: String,
}

/// The discovery document, members in upstream's order.
#[derive(Serialize)]
struct Discovery<'a> {
    issuer: String,
    jwks_uri: String,
    authorization_endpoint: &'a str,
    response_types_supported: [&'a str; 1],
    subject_types_supported: [&'a str; 1],
    id_token_signing_alg_values_supported: [&'a str; 3],
}

impl Handler {
    /// A handler serving the keys of `source`.
    pub fn new(mut config: HandlerConfig, source: KeySource) -> Self {
        if config.server_path_prefix.is_empty() {
            config.server_path_prefix = "/".to_owned();
        }
        let route = |elem: &str| {
            let joined = join_path(&config.server_path_prefix, elem);
            if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        };
        let well_known_path = route("/.well-known/openid-configuration");
        let keys_path = route("/keys");
        Self {
            config,
            source,
            well_known_path,
            keys_path,
        }
    }

    /// The answer to `request`, which arrived over TLS when `tls`.
    pub fn handle<B>(&self, request: &Request<B>, tls: bool) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let clean = clean_path(path);
        if clean != path {
            return redirect(request, &clean);
        }
        if path == self.well_known_path {
            self.well_known(request, tls)
        } else if path == self.keys_path {
            self.keys(request)
        } else {
            text_error(StatusCode::NOT_FOUND, "404 page not found")
        }
    }

    fn well_known<B>(&self, request: &Request<B>, tls: bool) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let headers = request.headers();
        // gorilla's ProxyHeaders: X-Forwarded-Host replaces the Host, the forwarded
        // protocol becomes the URL scheme.
        let host = header_str(headers, "x-forwarded-host")
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| request_host(request));
        let forwarded_scheme = forwarded_scheme(headers);
        let scheme = if self.config.allow_insecure_scheme
            && !tls
            && forwarded_scheme.as_deref() != Some("https")
        {
            "http"
        } else {
            "https"
        };

        let prefix = self.config.server_path_prefix.as_str();
        let issuer = match &self.config.jwt_issuer {
            Some(issuer) => issuer.clone(),
            None if prefix != "/" => url_string(scheme, &host, prefix),
            None => url_string(scheme, &host, ""),
        };
        let jwks_uri = match (&self.config.jwks_uri, &self.config.jwt_issuer) {
            (Some(uri), _) => uri.clone(),
            (None, Some(issuer)) => {
                let (issuer_scheme, issuer_host, issuer_path) = split_url(issuer);
                url_string(issuer_scheme, issuer_host, &join_path(issuer_path, "keys"))
            }
            (None, None) => url_string(scheme, &host, &join_path(prefix, "keys")),
        };

        if let Err(message) = self.config.domains.check(host_domain(&host)) {
            return text_error(StatusCode::BAD_REQUEST, &message);
        }

        let document = Discovery {
            issuer,
            jwks_uri,
            authorization_endpoint: "",
            response_types_supported: ["id_token"],
            subject_types_supported: ["public"],
            id_token_signing_alg_values_supported: SIGNING_ALGORITHMS,
        };
        let mut response = Response::new(Full::new(Bytes::from(jwks::go_json_indent(&document))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    fn keys<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let Some(key_set) = self.source.key_set() else {
            return text_error(StatusCode::INTERNAL_SERVER_ERROR, "document not available");
        };
        let body = jwks::render(&key_set.keys, self.config.set_key_use);
        let modified = truncate_to_seconds(key_set.modified);

        let mut response = Response::new(Full::new(Bytes::new()));
        let out = response.headers_mut();
        out.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        out.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        out.insert(header::EXPIRES, HeaderValue::from_static("0"));
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            out.insert(header::LAST_MODIFIED, value);
        }
        // Go's http.ServeContent: a client holding this version gets 304.
        let not_modified = header_str(request.headers(), "if-modified-since")
            .filter(|_| !request.headers().contains_key(header::IF_NONE_MATCH))
            .and_then(|since| httpdate::parse_http_date(since).ok())
            .is_some_and(|since| modified <= since);
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        let out = response.headers_mut();
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let size = body.len();
        let range = header_str(request.headers(), "range").unwrap_or_default();
        match parse_range(range, size) {
            Err(RangeError::Invalid) => {
                return text_error(StatusCode::RANGE_NOT_SATISFIABLE, "invalid range");
            }
            Err(RangeError::NoOverlap) => {
                let mut error = text_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid range: failed to overlap",
                );
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    error.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return error;
            }
            Ok(Some((start, length))) => {
                let end = start + length - 1;
                if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let part = body
                    .get(start..start + length)
                    .unwrap_or_default()
                    .to_owned();
                *response.body_mut() = Full::new(Bytes::from(part));
                return response;
            }
            Ok(None) => {}
        }
        *response.body_mut() = Full::new(Bytes::from(body));
        response
    }
}

/// Why a `Range` header cannot be served.
#[derive(Debug, PartialEq, Eq)]
enum RangeError {
    /// Not a byte range Go's `ServeContent` reads.
    Invalid,
    /// Every range starts past the end.
    NoOverlap,
}

/// Go's `parseRange` as `ServeContent` uses it on a body of `size` bytes: `None` serves the
/// whole body (no header, or several ranges, which Go would send as multipart unless they
/// add up to more than the body), `Some((start, length))` one part.
fn parse_range(header: &str, size: usize) -> Result<Option<(usize, usize)>, RangeError> {
    if header.is_empty() {
        return Ok(None);
    }
    let specs = header.strip_prefix("bytes=").ok_or(RangeError::Invalid)?;
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let (start, end) = spec.split_once('-').ok_or(RangeError::Invalid)?;
        let (start, end) = (start.trim(), end.trim());
        if start.is_empty() {
            if end.is_empty() || end.starts_with('-') {
                return Err(RangeError::Invalid);
            }
            let suffix: usize = end.parse().map_err(|_| RangeError::Invalid)?;
            let suffix = suffix.min(size);
            ranges.push((size - suffix, suffix));
        } else {
            let first: usize = start.parse().map_err(|_| RangeError::Invalid)?;
            if first >= size {
                no_overlap = true;
                continue;
            }
            let length = if end.is_empty() {
                size - first
            } else {
                let last: usize = end.parse().map_err(|_| RangeError::Invalid)?;
                if first > last {
                    return Err(RangeError::Invalid);
                }
                last.min(size - 1) - first + 1
            };
            ranges.push((first, length));
        }
    }
    if no_overlap && ranges.is_empty() {
        return Err(RangeError::NoOverlap);
    }
    match ranges.as_slice() {
        [single] => Ok(Some(*single)),
        _ => Ok(None),
    }
}

/// Go's `ServeMux` answer to a path that is not clean (`//keys`, `/a/../keys`): a redirect
/// to the clean path, with the query kept. 307 as Go 1.26's ServeMux answers (the toolchain
/// that builds the reference upstream binary); earlier Go releases answered 301.
fn redirect<B>(request: &Request<B>, clean: &str) -> Response<Full<Bytes>> {
    let location = match request.uri().query() {
        Some(query) => format!("{clean}?{query}"),
        None => clean.to_owned(),
    };
    let method = request.method();
    let body = if method == Method::GET {
        format!(
            "<a href=\"{}\">Temporary Redirect</a>.\n\n",
            html_escape(&location)
        )
    } else {
        String::new()
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if method == Method::GET || method == Method::HEAD {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    response
}

/// Go's `htmlEscape` of `http.Redirect`.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Go's `cleanPath` of `ServeMux`: `path.Clean` of the path made absolute, keeping a
/// trailing slash.
fn clean_path(path: &str) -> String {
    let absolute = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for segment in absolute.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if absolute.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Go's `http.Error`: plain text, `nosniff`, the message and a newline.
pub fn text_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Go's `r.Host`: the Host header, or the authority of an HTTP/2 request.
fn request_host<B>(request: &Request<B>) -> String {
    header_str(request.headers(), "host")
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default()
}

/// gorilla's `getScheme`: X-Forwarded-Proto, X-Forwarded-Scheme, or `proto=` of Forwarded,
/// lower-cased.
fn forwarded_scheme(headers: &HeaderMap) -> Option<String> {
    if let Some(proto) = header_str(headers, "x-forwarded-proto").filter(|p| !p.is_empty()) {
        return Some(proto.to_ascii_lowercase());
    }
    if let Some(proto) = header_str(headers, "x-forwarded-scheme").filter(|p| !p.is_empty()) {
        return Some(proto.to_ascii_lowercase());
    }
    let forwarded = header_str(headers, "forwarded")?.to_ascii_lowercase();
    let at = forwarded.find("proto=")?;
    let value = forwarded.get(at + "proto=".len()..)?;
    if value.starts_with("https") {
        Some("https".to_owned())
    } else if value.starts_with("http") {
        Some("http".to_owned())
    } else {
        None
    }
}

/// Go's `url.URL{Scheme, Host, Path}.String()`: a relative path gets a `/` after the host.
fn url_string(scheme: &str, host: &str, path: &str) -> String {
    let mut out = format!("{scheme}:");
    if !host.is_empty() || !path.is_empty() {
        out.push_str("//");
    }
    out.push_str(host);
    if !path.is_empty() && !path.starts_with('/') && !host.is_empty() {
        out.push('/');
    }
    out.push_str(path);
    out
}

/// The scheme, host and path of an absolute URL (query and fragment dropped, as upstream's
/// `jwks_uri` derivation drops them).
fn split_url(url: &str) -> (&str, &str, &str) {
    let (scheme, rest) = url.split_once(':').unwrap_or(("", url));
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (scheme, host, path)
}

/// Go's `url.JoinPath(base, elem)` on a path: `path.Join` of both, relative when `base` is,
/// keeping a trailing slash of `elem`.
fn join_path(base: &str, elem: &str) -> String {
    let absolute = base.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for segment in base.split('/').chain(elem.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut joined = parts.join("/");
    if absolute {
        joined.insert(0, '/');
    }
    if elem.ends_with('/') && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

/// HTTP dates have whole seconds; Go compares modification times at that precision.
fn truncate_to_seconds(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[cfg(test)]
mod tests;
