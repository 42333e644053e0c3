//! The providers' logs side by side: with `log_requests = true` both write an
//! `Incoming request` line per request; ours must carry upstream's field names and values
//! (logrus's text or JSON formatter), so log pipelines written for upstream keep working.

use std::collections::{BTreeMap, BTreeSet};

/// One log line's fields; values as written (text: still quoted; JSON: the JSON value).
type Entry = BTreeMap<String, String>;

/// Splits a logrus text line (`key=value key="quoted \" value"`) into its fields, values
/// kept as written so quoting differences show.
fn text_fields(line: &str) -> Entry {
    let mut fields = Entry::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("not a logrus text line: {line:?}"));
        let value_len = if after.starts_with('"') {
            let mut escaped = false;
            let end = after
                .char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("unterminated quote in {line:?}"));
            end + 1
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        fields.insert(key.to_owned(), after[..value_len].to_owned());
        rest = after[value_len..].trim_start();
    }
    fields
}

/// Every line of `log` as fields; with `json`, each line must be one JSON object carrying
/// logrus's `time`, `level` and `msg`.
fn entries(who: &str, log: &str, json: bool) -> Vec<Entry> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            if !json {
                return text_fields(line);
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{who}: a log line is not JSON ({e}): {line}"));
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{who}: a log line is not an object: {line}"));
            for key in ["time", "level", "msg"] {
                assert!(
                    object.get(key).is_some_and(serde_json::Value::is_string),
                    "{who}: no {key} in {line}"
                );
            }
            object
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The `Incoming request` lines of a log without what differs from run to run (`time`, the
/// client's port), each kind of request once (the two providers' readiness polls differ in
/// number).
fn requests(who: &str, log: &str, json: bool) -> BTreeSet<Entry> {
    // Quoted in both formats: a text value with a space, a JSON string.
    let message = "\"Incoming request\"";
    entries(who, log, json)
        .into_iter()
        .filter(|entry| entry.get("msg").map(String::as_str) == Some(message))
        .map(|mut entry| {
            entry.remove("time");
            let remote = entry
                .get_mut("remote-addr")
                .unwrap_or_else(|| panic!("{who}: no remote-addr in an Incoming request line"));
            let host_end = remote
                .rfind(':')
                .unwrap_or_else(|| panic!("{who}: no port in remote-addr {remote}"));
            assert!(remote.contains("127.0.0.1"), "{who}: remote-addr {remote}");
            remote.truncate(host_end);
            entry
        })
        .collect()
}

/// Asserts both providers logged that they log requests and logged the same request lines
/// (`json`: `log_format = "json"`, every line parsed as JSON). `sent` is how many different
/// requests the test made, each of which must show.
pub(crate) fn assert_same_request_logs(
    name: &str,
    ours: &str,
    upstream: &str,
    json: bool,
    sent: usize,
) {
    for (who, log) in [("ours", ours), ("upstream's", upstream)] {
        assert!(
            log.contains("Logging all requests"),
            "{name}: {who} does not say it logs requests:\n{log}"
        );
    }
    let ours_requests = requests("ours", ours, json);
    let upstream_requests = requests("upstream's", upstream, json);
    assert!(
        upstream_requests.len() >= sent,
        "{name}: upstream's logged {} kinds of request, {sent} sent:\n{upstream}",
        upstream_requests.len()
    );
    let only_ours: Vec<_> = ours_requests.difference(&upstream_requests).collect();
    let only_upstream: Vec<_> = upstream_requests.difference(&ours_requests).collect();
    assert!(
        only_ours.is_empty() && only_upstream.is_empty(),
        "{name}: request log lines differ\nonly ours: {only_ours:#?}\nonly upstream's: \
         {only_upstream:#?}"
    );
    println!(
        "{name}: the same {} request log lines ({})",
        ours_requests.len(),
        if json { "json" } else { "text" }
    );
}
