//! `log_requests`: one debug line per request, in upstream's shape, so log pipelines written
//! for upstream's provider keep matching. Upstream logs the fields `remote-addr`, `method`,
//! `url` and `user-agent` with the message `Incoming request`. Its `url` is Go's `*url.URL`:
//! the text formatter writes the URL, the JSON formatter marshals the struct, so a JSON line
//! holds an object (`Path`, `RawQuery`, ...) rather than a string.

use http::Uri;

/// How `url` is written: as text, or as Go's marshalled `url.URL` for `log_format = "json"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlStyle {
    /// The request target as sent (logrus's text formatters).
    Text,
    /// Go's `url.URL` struct as a JSON object (logrus's JSON formatter).
    GoStruct,
}

/// Logs one incoming request at debug level.
pub fn log_request(style: UrlStyle, remote: &str, method: &http::Method, uri: &Uri, agent: &str) {
    match style {
        UrlStyle::Text => tracing::debug!(
            "remote-addr" = %remote,
            method = %method,
            url = %uri,
            "user-agent" = agent,
            "Incoming request"
        ),
        UrlStyle::GoStruct => {
            let url = serde_json::json!({ "url": go_url(uri) }).to_string();
            tracing::debug!(
                "remote-addr" = %remote,
                method = %method,
                { spire_common::logging::DYNAMIC_FIELDS } = url.as_str(),
                "user-agent" = agent,
                "Incoming request"
            );
        }
    }
}

/// The request target as Go's `url.ParseRequestURI` fills a `url.URL`, marshalled by
/// `encoding/json` (every exported field, `User` null as requests carry no user info).
fn go_url(uri: &Uri) -> serde_json::Value {
    let raw_path = uri.path();
    let (path, raw) = match unescape(raw_path) {
        // Go keeps RawPath only when it is not the default escaping of Path.
        Some(path) if escape(&path) == raw_path => (path, String::new()),
        Some(path) => (path, raw_path.to_owned()),
        None => (raw_path.to_owned(), String::new()),
    };
    let target = uri.to_string();
    serde_json::json!({
        "Scheme": uri.scheme_str().unwrap_or_default(),
        "Opaque": "",
        "User": null,
        "Host": uri.host().map(|host| match uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }).unwrap_or_default(),
        "Path": path,
        "RawPath": raw,
        "OmitHost": false,
        "ForceQuery": target.ends_with('?') && uri.query().is_none_or(str::is_empty),
        "RawQuery": uri.query().unwrap_or_default(),
        "Fragment": "",
        "RawFragment": "",
    })
}

/// Go's `unescape(s, encodePath)`: `%XX` decoded, `+` kept; `None` for a bad escape.
fn unescape(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `escape(s, encodePath)`: everything but unreserved characters and `$&+,/:;=@` is
/// percent-encoded, in upper-case hex.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(target: &str) -> serde_json::Value {
        go_url(&target.parse::<Uri>().unwrap())
    }

    #[test]
    fn a_plain_path_and_query_fill_path_and_raw_query() {
        let url = url("/keys?a=1");
        assert_eq!(url["Path"], "/keys");
        assert_eq!(url["RawQuery"], "a=1");
        assert_eq!(url["RawPath"], "");
        assert_eq!(url["Scheme"], "");
        assert!(url["User"].is_null());
        assert_eq!(url["ForceQuery"], false);
        assert_eq!(url.as_object().unwrap().len(), 11, "every field of url.URL");
    }

    #[test]
    fn escapes_are_decoded_and_an_unusual_escaping_is_kept_as_raw_path() {
        assert_eq!(url("/a%20b")["Path"], "/a b");
        assert_eq!(url("/a%20b")["RawPath"], "");
        // Go would not escape `:`, so `%3A` is kept as the raw path.
        assert_eq!(url("/a%3Ab")["Path"], "/a:b");
        assert_eq!(url("/a%3Ab")["RawPath"], "/a%3Ab");
        assert_eq!(url("/keys?")["ForceQuery"], true);
    }

    #[test]
    fn an_absolute_target_fills_scheme_and_host() {
        let url = url("http://oidc.example.org:8080/keys");
        assert_eq!(url["Scheme"], "http");
        assert_eq!(url["Host"], "oidc.example.org:8080");
        assert_eq!(url["Path"], "/keys");
    }
}
