//! Log lines in upstream's shape: upstream SPIRE logs through logrus, and operators' log
//! pipelines (Fluent Bit parsers, Loki queries, alert rules) match its field names, so a
//! drop-in replacement writes the same lines.
//!
//! - `log_format = "json"`: one object per line, keys sorted (Go's `encoding/json` sorts a
//!   map's keys): `time` (RFC 3339 with nanoseconds), `level`, `msg`, and every field of the
//!   event at the top level with its JSON type. A field called `time`, `level` or `msg` is
//!   renamed `fields.time`, ... as logrus does.
//! - `log_format = "text"`: `time="…" level=info msg="…" key=value …`, the fields sorted,
//!   a value quoted (Go `%q`) unless it is made only of letters, digits and `-._/@^+`.
//! - no `log_format` (upstream's default text formatter): the same with whole seconds.
//!
//! Levels are logrus's words: `error`, `warning`, `info`, `debug`, `trace`. Times are in the
//! process's local time zone (the `TZ` variable or `/etc/localtime`), as Go writes them; `Z`
//! when that zone is UTC. With `log_source_location`, `file` (`name.rs:line`) and `func`
//! (the Rust module path, since Rust keeps no function names at run time) are added, as
//! upstream's source-location hook adds `file` and `func`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// Which of logrus's formatters a line imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// No `log_format`: logrus's default text formatter, times to the second.
    Default,
    /// `log_format = "text"`: text with nanosecond times.
    Text,
    /// `log_format = "json"`.
    Json,
}

impl LogFormat {
    /// Parses `log_format` as upstream does (any case; empty is the default).
    pub fn parse(format: &str) -> Option<Self> {
        match format.trim().to_ascii_lowercase().as_str() {
            "" => Some(Self::Default),
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// A field value with the JSON type logrus would give it.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    /// An object, array or null from [`super::DYNAMIC_FIELDS`]: logrus's JSON formatter
    /// marshals a struct field as a nested object (upstream's oidc-discovery-provider logs a
    /// request's `url` so).
    Json(serde_json::Value),
}

impl FieldValue {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Str(s) => serde_json::Value::String(s.clone()),
            Self::I64(n) => (*n).into(),
            Self::U64(n) => (*n).into(),
            Self::F64(n) => serde_json::Number::from_f64(*n)
                .map_or_else(|| serde_json::Value::String(n.to_string()), Into::into),
            Self::Bool(b) => (*b).into(),
            Self::Json(value) => value.clone(),
        }
    }

    fn to_text(&self) -> String {
        match self {
            Self::Str(s) => quote_if_needed(s),
            Self::I64(n) => n.to_string(),
            Self::U64(n) => n.to_string(),
            Self::F64(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Json(value) => quote_if_needed(&value.to_string()),
        }
    }
}

/// The message and fields of one event.
#[derive(Default)]
struct Fields {
    msg: String,
    data: BTreeMap<String, FieldValue>,
}

impl Fields {
    fn insert(&mut self, field: &Field, value: FieldValue) {
        let name = field.name();
        if name == "message" {
            self.msg = match value {
                FieldValue::Str(s) => s,
                other => other.to_text(),
            };
            return;
        }
        self.insert_named(name, value);
    }

    /// Inserts one field; the [`super::DYNAMIC_FIELDS`] object is spread into its members.
    fn insert_named(&mut self, name: &str, value: FieldValue) {
        if name == super::DYNAMIC_FIELDS
            && let FieldValue::Str(json) = &value
            && let Ok(serde_json::Value::Object(members)) = serde_json::from_str(json)
        {
            for (key, value) in members {
                let value = match value {
                    serde_json::Value::String(s) => FieldValue::Str(s),
                    serde_json::Value::Bool(b) => FieldValue::Bool(b),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .map(FieldValue::I64)
                        .or_else(|| n.as_u64().map(FieldValue::U64))
                        .unwrap_or_else(|| FieldValue::F64(n.as_f64().unwrap_or_default())),
                    other => FieldValue::Json(other),
                };
                self.insert_plain(&key, value);
            }
            return;
        }
        self.insert_plain(name, value);
    }

    fn insert_plain(&mut self, name: &str, value: FieldValue) {
        // logrus keeps its own keys and moves a clashing field aside.
        let key = match name {
            "time" | "level" | "msg" => format!("fields.{name}"),
            _ => name.to_owned(),
        };
        self.data.insert(key, value);
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, FieldValue::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, FieldValue::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, FieldValue::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, FieldValue::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, FieldValue::Str(value.to_owned()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, FieldValue::Str(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field, FieldValue::Str(format!("{value:?}")));
    }
}

/// logrus's level words.
fn level_word(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// `now` as Go's RFC 3339 layouts write it: `nanos` adds the fraction with its trailing zeros
/// trimmed (RFC3339Nano), and a zero offset is `Z`.
fn rfc3339(now: &jiff::Zoned, nanos: bool) -> String {
    let dt = now.datetime();
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let fraction = dt.subsec_nanosecond();
    if nanos && fraction > 0 {
        let digits = format!("{fraction:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    let offset = now.offset().seconds();
    if offset == 0 {
        out.push('Z');
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let minutes = offset.unsigned_abs() / 60;
        let _ = write!(out, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
    }
    out
}

/// A text value as logrus writes it: bare when it is only letters, digits and `-._/@^+`
/// (or empty), otherwise Go-quoted.
fn quote_if_needed(value: &str) -> String {
    let bare = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+'));
    if bare {
        value.to_owned()
    } else {
        go_quote(value)
    }
}

/// Go's `%q` of a string: double quotes, `\"` and `\\`, the usual short escapes, and `\x..`
/// / `\u....` for other control characters; printable Unicode stays as it is.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line (with its newline) for an event.
fn format_line(format: LogFormat, now: &jiff::Zoned, level: &Level, fields: &Fields) -> String {
    match format {
        LogFormat::Json => {
            let mut object: BTreeMap<&str, serde_json::Value> = fields
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_json()))
                .collect();
            object.insert("time", rfc3339(now, true).into());
            object.insert("level", level_word(level).into());
            object.insert("msg", fields.msg.clone().into());
            let mut line = serde_json::to_string(&object).unwrap_or_default();
            line.push('\n');
            line
        }
        LogFormat::Text | LogFormat::Default => {
            let mut line = format!(
                "time={} level={} msg={}",
                quote_if_needed(&rfc3339(now, format == LogFormat::Text)),
                level_word(level),
                quote_if_needed(&fields.msg)
            );
            for (key, value) in &fields.data {
                let _ = write!(line, " {key}={}", value.to_text());
            }
            line.push('\n');
            line
        }
    }
}

/// The layer that writes every event it sees as one logrus line to its writer.
pub struct LogrusLayer {
    format: LogFormat,
    writer: BoxMakeWriter,
    source_location: bool,
}

impl LogrusLayer {
    /// Writes `format` lines to `writer`; `source_location` adds `file` and `func`.
    pub fn new(format: LogFormat, writer: BoxMakeWriter, source_location: bool) -> Self {
        Self {
            format,
            writer,
            source_location,
        }
    }
}

impl<S: Subscriber> Layer<S> for LogrusLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        if !fields.data.contains_key("subsystem_name")
            && let Some(name) = super::subsystem::subsystem_for(meta.target())
        {
            fields.data.insert(
                "subsystem_name".to_owned(),
                FieldValue::Str(name.to_owned()),
            );
        }
        if self.source_location {
            if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
                let base = file.rsplit('/').next().unwrap_or(file);
                fields
                    .data
                    .insert("file".to_owned(), FieldValue::Str(format!("{base}:{line}")));
            }
            if let Some(module) = meta.module_path() {
                fields
                    .data
                    .insert("func".to_owned(), FieldValue::Str(module.to_owned()));
            }
        }
        let line = format_line(self.format, &jiff::Zoned::now(), meta.level(), &fields);
        // One write per line, so lines from different threads never interleave. A log line
        // that cannot be written has nowhere else to go.
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zoned(text: &str) -> jiff::Zoned {
        text.parse().unwrap()
    }

    #[test]
    fn times_are_written_as_go_writes_rfc3339() {
        let utc = zoned("2026-12-07T01:02:03.450000000+00:00[UTC]");
        assert_eq!(rfc3339(&utc, false), "2026-12-07T01:02:03Z");
        assert_eq!(rfc3339(&utc, true), "2026-12-07T01:02:03.45Z");
        let whole = zoned("2026-12-07T01:02:03+00:00[UTC]");
        assert_eq!(rfc3339(&whole, true), "2026-12-07T01:02:03Z");
        let paris = zoned("2026-12-07T02:02:03.000000001+01:00[Europe/Paris]");
        assert_eq!(rfc3339(&paris, true), "2026-12-07T02:02:03.000000001+01:00");
        let newfoundland = zoned("2026-12-07T01:02:03-03:30[America/St_Johns]");
        assert_eq!(rfc3339(&newfoundland, false), "2026-12-07T01:02:03-03:30");
    }

    #[test]
    fn text_values_are_quoted_like_logrus() {
        assert_eq!(quote_if_needed("example.org"), "example.org");
        assert_eq!(
            quote_if_needed("spiffe://example.org/x"),
            "\"spiffe://example.org/x\""
        );
        assert_eq!(quote_if_needed(""), "");
        assert_eq!(quote_if_needed("a b"), "\"a b\"");
        assert_eq!(quote_if_needed("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(quote_if_needed("bell\u{7}nul\u{0}"), "\"bell\\anul\\x00\"");
        assert_eq!(quote_if_needed("é"), "\"é\"");
    }

    #[test]
    fn lines_have_logrus_keys_in_logrus_order() {
        let now = zoned("2026-12-07T01:02:03.5+00:00[UTC]");
        let mut fields = Fields {
            msg: "Starting Server APIs".into(),
            ..Fields::default()
        };
        fields
            .data
            .insert("subsystem_name".into(), FieldValue::Str("endpoints".into()));
        fields
            .data
            .insert("address".into(), FieldValue::Str("127.0.0.1:8081".into()));
        fields.data.insert("fields.msg".into(), FieldValue::I64(3));
        assert_eq!(
            format_line(LogFormat::Json, &now, &Level::WARN, &fields),
            "{\"address\":\"127.0.0.1:8081\",\"fields.msg\":3,\"level\":\"warning\",\
             \"msg\":\"Starting Server APIs\",\"subsystem_name\":\"endpoints\",\
             \"time\":\"2026-12-07T01:02:03.5Z\"}\n"
        );
        assert_eq!(
            format_line(LogFormat::Default, &now, &Level::INFO, &fields),
            "time=\"2026-12-07T01:02:03Z\" level=info msg=\"Starting Server APIs\" \
             address=\"127.0.0.1:8081\" fields.msg=3 subsystem_name=endpoints\n"
        );
        assert_eq!(
            format_line(LogFormat::Text, &now, &Level::DEBUG, &fields),
            "time=\"2026-12-07T01:02:03.5Z\" level=debug msg=\"Starting Server APIs\" \
             address=\"127.0.0.1:8081\" fields.msg=3 subsystem_name=endpoints\n"
        );
    }

    #[test]
    fn dynamic_fields_are_spread_at_the_top_level_with_their_types() {
        let now = zoned("2026-12-07T01:02:03+00:00[UTC]");
        let mut fields = Fields {
            msg: "API accessed".into(),
            ..Fields::default()
        };
        fields.insert_named(
            super::super::DYNAMIC_FIELDS,
            FieldValue::Str(r#"{"type":"audit","caller_uid":0,"admin":false,"msg":"x"}"#.into()),
        );
        assert_eq!(
            format_line(LogFormat::Default, &now, &Level::INFO, &fields),
            "time=\"2026-12-07T01:02:03Z\" level=info msg=\"API accessed\" admin=false \
             caller_uid=0 fields.msg=x type=audit\n"
        );
    }

    #[test]
    fn nested_dynamic_fields_stay_objects_in_json_and_text_in_text() {
        let now = zoned("2026-12-07T01:02:03+00:00[UTC]");
        let mut fields = Fields {
            msg: "Incoming request".into(),
            ..Fields::default()
        };
        fields.insert_named(
            super::super::DYNAMIC_FIELDS,
            FieldValue::Str(r#"{"url":{"Path":"/keys","User":null}}"#.into()),
        );
        let line: serde_json::Value =
            serde_json::from_str(&format_line(LogFormat::Json, &now, &Level::DEBUG, &fields))
                .unwrap();
        assert_eq!(line["url"]["Path"], "/keys");
        assert!(line["url"]["User"].is_null());
        assert_eq!(
            format_line(LogFormat::Default, &now, &Level::DEBUG, &fields),
            "time=\"2026-12-07T01:02:03Z\" level=debug msg=\"Incoming request\" \
             url=\"{\\\"Path\\\":\\\"/keys\\\",\\\"User\\\":null}\"\n"
        );
    }

    #[test]
    fn lines_carry_the_subsystem_of_the_module_that_wrote_them() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = LogrusLayer::new(
            LogFormat::Json,
            BoxMakeWriter::new(move || writer.clone()),
            false,
        );
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!(target: "spire_server::ca::manager", "X509 CA prepared");
            tracing::info!(target: "spire_server::api::audit", subsystem_name = "api", "API accessed");
            tracing::info!(target: "spire_server::server", "starting spire-server");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0]["subsystem_name"], "ca_manager");
        assert_eq!(lines[1]["subsystem_name"], "api");
        assert!(lines[2].get("subsystem_name").is_none(), "{}", lines[2]);
    }
}
