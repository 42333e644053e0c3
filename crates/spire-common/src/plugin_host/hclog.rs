//! Forwards what an external plugin writes to stderr into our log. Plugins built with
//! spire-plugin-sdk log through hclog as one JSON object per line (`@level`, `@message`,
//! `@timestamp`, `@module` and free-form fields); anything else is logged as it is.

use serde_json::{Map, Value};

/// One line of a plugin's stderr, as our log should show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginLogLine {
    /// hclog's level, or `None` for a line that is not hclog JSON.
    pub(crate) level: Option<tracing::Level>,
    /// The message followed by the entry's own fields as `key=value`.
    pub(crate) text: String,
}

/// Parses one stderr line: hclog JSON gives its level, message and fields; other text is kept
/// whole (a panic trace, a `fmt.Println`).
pub(crate) fn parse_line(line: &str) -> PluginLogLine {
    let Ok(Value::Object(mut entry)) = serde_json::from_str::<Value>(line) else {
        return PluginLogLine {
            level: None,
            text: line.to_owned(),
        };
    };
    let level = match entry.remove("@level").as_ref().and_then(Value::as_str) {
        Some("trace") => tracing::Level::TRACE,
        Some("debug") => tracing::Level::DEBUG,
        Some("warn") => tracing::Level::WARN,
        Some("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let message = match entry.remove("@message") {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    entry.remove("@timestamp");
    entry.remove("@module");
    entry.remove("@caller");
    PluginLogLine {
        level: Some(level),
        text: with_fields(message, &entry),
    }
}

fn with_fields(mut message: String, fields: &Map<String, Value>) -> String {
    for (key, value) in fields {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        message.push_str(&format!(" {key}={value:?}"));
    }
    message
}

/// Logs a plugin's stderr line with the plugin's type and name, at the plugin's own level
/// (plain text at info, as go-plugin's host reports unstructured output).
pub(crate) fn forward(kind: &str, name: &str, line: &str) {
    let parsed = parse_line(line);
    let text = parsed.text;
    match parsed.level.unwrap_or(tracing::Level::INFO) {
        tracing::Level::ERROR => {
            tracing::error!(plugin_type = kind, plugin_name = name, "{text}")
        }
        tracing::Level::WARN => tracing::warn!(plugin_type = kind, plugin_name = name, "{text}"),
        tracing::Level::INFO => tracing::info!(plugin_type = kind, plugin_name = name, "{text}"),
        tracing::Level::DEBUG => {
            tracing::debug!(plugin_type = kind, plugin_name = name, "{text}")
        }
        tracing::Level::TRACE => {
            tracing::trace!(plugin_type = kind, plugin_name = name, "{text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hclog_json_gives_level_message_and_fields() {
        let line = r#"{"@level":"warn","@message":"disk is slow","@timestamp":"2026-01-01T00:00:00Z","@module":"x","ms":12,"path":"/a"}"#;
        let parsed = parse_line(line);
        assert_eq!(parsed.level, Some(tracing::Level::WARN));
        assert_eq!(parsed.text, r#"disk is slow ms="12" path="/a""#);
    }

    #[test]
    fn other_text_is_kept_whole() {
        let parsed = parse_line("panic: runtime error");
        assert_eq!(parsed.level, None);
        assert_eq!(parsed.text, "panic: runtime error");
    }
}
