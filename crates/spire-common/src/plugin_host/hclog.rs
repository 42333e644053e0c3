//! Forwards what an external plugin writes to stderr into our log, as upstream's host does it
//! (go-plugin's client reading the plugin's stderr, then SPIRE's hclog-to-logrus adapter):
//!
//! - Plugins built with spire-plugin-sdk log through hclog as one JSON object per line
//!   (`@level`, `@message`, `@timestamp`, free-form fields). The line is logged at its level
//!   with its message, its fields as fields of their own, and `timestamp` (the plugin's time as
//!   hclog writes it).
//! - Any other line (a `fmt.Println`, a panic trace) is logged whole: at the level a
//!   `[TRACE]`...`[ERROR]` prefix names, at error from a `panic: ` or `fatal error: ` line on,
//!   and at debug otherwise.
//!
//! Every line carries `plugin_type`, `plugin_name`, `external=true` and `subsystem_name`
//! `<plugin name>.<binary file name>`, the names upstream's lines carry.

use serde_json::{Map, Value};

/// One line of a plugin's stderr, as our log should show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginLogLine {
    /// hclog's level, or `None` for a line that is not hclog JSON.
    pub(crate) level: Option<tracing::Level>,
    /// The message followed by the entry's own fields as `key=value` (for error messages).
    pub(crate) text: String,
    /// The message alone.
    pub(crate) message: String,
    /// The entry's own fields, with `timestamp`.
    pub(crate) fields: Map<String, Value>,
}

/// Parses one stderr line: hclog JSON gives its level, message and fields; other text is kept
/// whole.
pub(crate) fn parse_line(line: &str) -> PluginLogLine {
    let plain = || PluginLogLine {
        level: None,
        text: line.to_owned(),
        message: line.to_owned(),
        fields: Map::new(),
    };
    let Ok(Value::Object(mut entry)) = serde_json::from_str::<Value>(line) else {
        return plain();
    };
    let level = match entry.remove("@level").as_ref().and_then(Value::as_str) {
        Some("trace") => tracing::Level::TRACE,
        Some("debug") => tracing::Level::DEBUG,
        Some("info") => tracing::Level::INFO,
        Some("warn") => tracing::Level::WARN,
        Some("error") => tracing::Level::ERROR,
        // JSON that is not hclog's: go-plugin writes it verbatim.
        _ => return plain(),
    };
    let message = match entry.remove("@message") {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let timestamp = entry.remove("@timestamp");
    entry.remove("@module");
    entry.remove("@caller");
    let text = with_fields(message.clone(), &entry);
    if let Some(timestamp) = timestamp.as_ref().and_then(Value::as_str) {
        entry.insert("timestamp".into(), hclog_time(timestamp).into());
    }
    PluginLogLine {
        level: Some(level),
        text,
        message,
        fields: entry,
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

/// hclog's `@timestamp` (RFC 3339 with microseconds) in hclog's `TimeFormat`
/// (`2006-01-02T15:04:05.000Z0700`), which go-plugin hands on as `timestamp`; kept as written
/// when it does not parse.
fn hclog_time(timestamp: &str) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
    else {
        return timestamp.to_owned();
    };
    let offset = t.offset();
    let zone = if offset.is_utc() {
        "Z".to_owned()
    } else {
        let (h, m, _) = offset.as_hms();
        let sign = if h < 0 || m < 0 { '-' } else { '+' };
        format!("{sign}{:02}{:02}", h.unsigned_abs(), m.unsigned_abs())
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{zone}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The level go-plugin gives a line that is not hclog JSON; `in_panic` stays set from a panic
/// line on, so the whole trace is logged as an error.
fn plain_level(line: &str, in_panic: &mut bool) -> tracing::Level {
    for (prefix, level) in [
        ("[TRACE]", tracing::Level::TRACE),
        ("[DEBUG]", tracing::Level::DEBUG),
        ("[INFO]", tracing::Level::INFO),
        ("[WARN]", tracing::Level::WARN),
        ("[ERROR]", tracing::Level::ERROR),
    ] {
        if line.starts_with(prefix) {
            return level;
        }
    }
    if line.starts_with("panic: ") || line.starts_with("fatal error: ") {
        *in_panic = true;
    }
    if *in_panic {
        tracing::Level::ERROR
    } else {
        tracing::Level::DEBUG
    }
}

/// Forwards the stderr lines of one plugin process: its type, its name and the file name of
/// its binary, as upstream names them.
#[derive(Debug)]
pub(crate) struct Forwarder {
    kind: String,
    name: String,
    subsystem: String,
    in_panic: bool,
}

impl Forwarder {
    /// A forwarder for plugin `kind` `name` run from `binary`.
    pub(crate) fn new(kind: &str, name: &str, binary: &std::path::Path) -> Self {
        let file = binary
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            subsystem: format!("{name}.{file}"),
            in_panic: false,
        }
    }

    /// Logs one stderr line.
    pub(crate) fn forward(&mut self, line: &str) {
        let parsed = parse_line(line);
        let level = match parsed.level {
            Some(level) => level,
            None => plain_level(line, &mut self.in_panic),
        };
        let mut fields = parsed.fields;
        fields.insert("subsystem_name".into(), self.subsystem.clone().into());
        let fields = Value::Object(fields).to_string();
        let (kind, name, text) = (self.kind.as_str(), self.name.as_str(), parsed.message);
        macro_rules! emit {
            ($macro:ident) => {
                tracing::$macro!(
                    plugin_type = kind,
                    plugin_name = name,
                    external = true,
                    { crate::logging::DYNAMIC_FIELDS } = fields.as_str(),
                    "{text}"
                )
            };
        }
        match level {
            tracing::Level::ERROR => emit!(error),
            tracing::Level::WARN => emit!(warn),
            tracing::Level::INFO => emit!(info),
            tracing::Level::DEBUG => emit!(debug),
            tracing::Level::TRACE => emit!(trace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hclog_json_gives_level_message_and_fields() {
        let line = r#"{"@level":"warn","@message":"disk is slow","@timestamp":"2026-01-01T10:11:12.345678Z","@module":"x","ms":12,"path":"/a"}"#;
        let parsed = parse_line(line);
        assert_eq!(parsed.level, Some(tracing::Level::WARN));
        assert_eq!(parsed.text, r#"disk is slow ms="12" path="/a""#);
        assert_eq!(parsed.message, "disk is slow");
        assert_eq!(parsed.fields["ms"], 12);
        assert_eq!(parsed.fields["path"], "/a");
        assert_eq!(parsed.fields["timestamp"], "2026-01-01T10:11:12.345Z");
        assert!(!parsed.fields.contains_key("@module"));
    }

    #[test]
    fn timestamps_take_hclogs_format() {
        assert_eq!(
            hclog_time("2026-01-01T10:11:12.000001+01:30"),
            "2026-01-01T10:11:12.000+0130"
        );
        assert_eq!(hclog_time("not a time"), "not a time");
    }

    #[test]
    fn other_text_is_kept_whole() {
        let parsed = parse_line("panic: runtime error");
        assert_eq!(parsed.level, None);
        assert_eq!(parsed.text, "panic: runtime error");
        // JSON without an hclog level is not hclog's.
        assert_eq!(parse_line(r#"{"a":1}"#).level, None);
    }

    #[test]
    fn plain_lines_get_go_plugins_levels() {
        let mut in_panic = false;
        assert_eq!(plain_level("hello", &mut in_panic), tracing::Level::DEBUG);
        assert_eq!(
            plain_level("[WARN] careful", &mut in_panic),
            tracing::Level::WARN
        );
        assert_eq!(
            plain_level("[INFO] note", &mut in_panic),
            tracing::Level::INFO
        );
        assert_eq!(
            plain_level("panic: boom", &mut in_panic),
            tracing::Level::ERROR
        );
        // The trace after a panic line is part of it.
        assert_eq!(
            plain_level("goroutine 1 [running]:", &mut in_panic),
            tracing::Level::ERROR
        );
    }
}
