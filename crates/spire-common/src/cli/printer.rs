//! Output helpers shared by the commands: upstream's `-output json` (protobuf JSON with
//! proto field names and every unpopulated field, as Go's protojson with `UseProtoNames`
//! and `EmitUnpopulated`), Go's time and plural formatting, and SPIFFE ID conversions.

use std::collections::HashMap;
use std::sync::OnceLock;

use pbjson_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use prost::Message;
use serde::Serialize;
use serde_json::{Map, Value};
use spire_proto::spire::api::types;

use super::{CliError, Env, OutputFormat};

/// Message and enum descriptors of every proto we compiled, by full name (`.pkg.Msg`).
struct Descriptors {
    messages: HashMap<String, DescriptorProto>,
    enum_zero: HashMap<String, String>,
}

fn descriptors() -> &'static Descriptors {
    static DESCRIPTORS: OnceLock<Descriptors> = OnceLock::new();
    DESCRIPTORS.get_or_init(|| {
        let mut d = Descriptors {
            messages: HashMap::new(),
            enum_zero: HashMap::new(),
        };
        // The set is compiled into spire-proto by its build script; it always decodes.
        let set = FileDescriptorSet::decode(spire_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        for file in set.file {
            let prefix = match &file.package {
                Some(p) => format!(".{p}"),
                None => String::new(),
            };
            for e in &file.enum_type {
                add_enum(&mut d, &prefix, e);
            }
            for m in file.message_type {
                add_message(&mut d, &prefix, m);
            }
        }
        d
    })
}

fn add_enum(d: &mut Descriptors, prefix: &str, e: &pbjson_types::EnumDescriptorProto) {
    let name = format!("{prefix}.{}", e.name.clone().unwrap_or_default());
    let zero = e
        .value
        .iter()
        .find(|v| v.number == Some(0))
        .and_then(|v| v.name.clone())
        .unwrap_or_default();
    d.enum_zero.insert(name, zero);
}

fn add_message(d: &mut Descriptors, prefix: &str, m: DescriptorProto) {
    let name = format!("{prefix}.{}", m.name.clone().unwrap_or_default());
    for e in &m.enum_type {
        add_enum(d, &name, e);
    }
    for nested in m.nested_type.clone() {
        add_message(d, &name, nested);
    }
    d.messages.insert(name, m);
}

/// protobuf field type numbers (descriptor.proto `FieldDescriptorProto.Type`).
mod field_type {
    pub(super) const INT64: i32 = 3;
    pub(super) const UINT64: i32 = 4;
    pub(super) const FIXED64: i32 = 6;
    pub(super) const BOOL: i32 = 8;
    pub(super) const STRING: i32 = 9;
    pub(super) const MESSAGE: i32 = 11;
    pub(super) const BYTES: i32 = 12;
    pub(super) const ENUM: i32 = 14;
    pub(super) const SFIXED64: i32 = 16;
    pub(super) const SINT64: i32 = 18;
}

const LABEL_REPEATED: i32 = 3;

fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn is_map_entry(type_name: &str) -> bool {
    descriptors()
        .messages
        .get(type_name)
        .and_then(|m| m.options.as_ref())
        .and_then(|o| o.map_entry)
        .unwrap_or(false)
}

fn default_value(field: &FieldDescriptorProto) -> Value {
    let type_name = field.type_name.clone().unwrap_or_default();
    if field.label == Some(LABEL_REPEATED) {
        if is_map_entry(&type_name) {
            return Value::Object(Map::new());
        }
        return Value::Array(Vec::new());
    }
    match field.r#type.unwrap_or_default() {
        field_type::MESSAGE => Value::Null,
        field_type::STRING | field_type::BYTES => Value::String(String::new()),
        field_type::BOOL => Value::Bool(false),
        field_type::INT64
        | field_type::UINT64
        | field_type::FIXED64
        | field_type::SFIXED64
        | field_type::SINT64 => Value::String("0".to_owned()),
        field_type::ENUM => Value::String(
            descriptors()
                .enum_zero
                .get(&type_name)
                .cloned()
                .unwrap_or_default(),
        ),
        _ => Value::from(0),
    }
}

/// JSON as upstream's CLI prints it: upstream marshals with protojson, then decodes the text
/// into Go maps and encodes it again, so object keys come out sorted, `null` members and
/// elements are dropped, and `<`, `>`, `&` are escaped.
enum Ordered {
    Plain(Value),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    fn write(&self, out: &mut String) {
        match self {
            Self::Plain(v) => write_value(v, out),
            Self::Array(items) => write_array(items, out, Self::is_null, Self::write),
            Self::Object(members) => write_object(
                members.iter().map(|(k, v)| (k, v)),
                out,
                Self::is_null,
                Self::write,
            ),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Self::Plain(Value::Null))
    }
}

/// Writes `value` with sorted keys and without `null` members or elements, as Go does after
/// decoding into `map[string]any`.
fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => write_array(items, out, Value::is_null, write_value),
        Value::Object(members) => write_object(members.iter(), out, Value::is_null, write_value),
        other => out.push_str(&other.to_string()),
    }
}

/// `[...]` of the items that are not null.
fn write_array<T>(
    items: &[T],
    out: &mut String,
    is_null: impl Fn(&T) -> bool,
    write: impl Fn(&T, &mut String),
) {
    out.push('[');
    for (i, item) in items.iter().filter(|i| !is_null(i)).enumerate() {
        if i != 0 {
            out.push(',');
        }
        write(item, out);
    }
    out.push(']');
}

/// `{...}` of the members that are not null, sorted by key.
fn write_object<'a, T: 'a>(
    members: impl Iterator<Item = (&'a String, &'a T)>,
    out: &mut String,
    is_null: impl Fn(&T) -> bool,
    write: impl Fn(&T, &mut String),
) {
    let mut members: Vec<_> = members.filter(|(_, v)| !is_null(v)).collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i != 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        write(value, out);
    }
    out.push('}');
}

/// Go's `encoding/json` escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings; they cannot
/// appear in JSON outside strings, so replacing them everywhere is exact.
fn escape_html(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn convert_single(value: Value, field: &FieldDescriptorProto) -> Ordered {
    let type_name = field.type_name.as_deref().unwrap_or_default();
    if field.r#type == Some(field_type::MESSAGE) && !type_name.starts_with(".google.protobuf.") {
        return transcode(value, type_name);
    }
    Ordered::Plain(value)
}

/// Rewrites pbjson's JSON (camelCase names, defaults left out) of message `full_name` into
/// Go protojson's with `UseProtoNames` and `EmitUnpopulated`: proto field names, unset
/// fields present with their zero values (unset messages as `null`, which [`Ordered`]
/// then leaves out as upstream's printer does).
fn transcode(value: Value, full_name: &str) -> Ordered {
    let Some(message) = descriptors().messages.get(full_name) else {
        return Ordered::Plain(value);
    };
    let Value::Object(mut object) = value else {
        return Ordered::Plain(value);
    };
    let mut out = Vec::with_capacity(message.field.len());
    for field in &message.field {
        let name = field.name.clone().unwrap_or_default();
        let json_name = field
            .json_name
            .clone()
            .unwrap_or_else(|| lower_camel(&name));
        let found = object.remove(&json_name).or_else(|| object.remove(&name));
        let explicit_presence = field.proto3_optional == Some(true) || field.oneof_index.is_some();
        let converted = match found {
            None | Some(Value::Null) if explicit_presence => continue,
            None => Ordered::Plain(default_value(field)),
            Some(v) if field.label == Some(LABEL_REPEATED) => {
                let type_name = field.type_name.clone().unwrap_or_default();
                match v {
                    Value::Array(items) if !is_map_entry(&type_name) => Ordered::Array(
                        items
                            .into_iter()
                            .map(|i| convert_single(i, field))
                            .collect(),
                    ),
                    other => Ordered::Plain(other),
                }
            }
            Some(v) => convert_single(v, field),
        };
        out.push((name, converted));
    }
    Ordered::Object(out)
}

/// The protobuf JSON upstream's `-output json` prints for `message` (full proto name such as
/// `spire.api.types.Agent`).
pub fn proto_json<T: Serialize>(message: &T, full_name: &str) -> Result<String, CliError> {
    let value = serde_json::to_value(message)
        .map_err(|e| CliError::invalid(format!("cannot encode the response as JSON: {e}")))?;
    let mut out = String::new();
    transcode(value, &format!(".{full_name}")).write(&mut out);
    Ok(escape_html(&out))
}

/// Prints `message` as `-output` asks: JSON on one line, or the command's pretty layout.
pub fn print_proto<T: Serialize>(
    env: &mut Env<'_>,
    output: OutputFormat,
    message: &T,
    full_name: &str,
    pretty: impl FnOnce(&mut Env<'_>, &T) -> Result<(), CliError>,
) -> Result<(), CliError> {
    match output {
        OutputFormat::Json => {
            let text = proto_json(message, full_name)?;
            env.print(&text);
            env.print("\n");
            Ok(())
        }
        OutputFormat::Pretty => pretty(env, message),
    }
}

/// Prints a plain serde value (not a proto message) as JSON in its fields' order, as Go's
/// `json.Marshal` of a struct, or pretty.
///
/// The JSON is a one-element array, as upstream prints it: its `PrintStruct(msg ...any)`
/// hands its variadic slice on as a single value, so `json.Marshal` sees a slice.
pub fn print_struct<T: Serialize>(
    env: &mut Env<'_>,
    output: OutputFormat,
    value: &T,
    pretty: impl FnOnce(&mut Env<'_>, &T) -> Result<(), CliError>,
) -> Result<(), CliError> {
    match output {
        OutputFormat::Json => {
            let text = serde_json::to_string(&[value])
                .map_err(|e| CliError::invalid(format!("cannot encode output as JSON: {e}")))?;
            env.print(&escape_html(&text));
            env.print("\n");
            Ok(())
        }
        OutputFormat::Pretty => pretty(env, value),
    }
}

/// Upstream's `util.Pluralizer`: `msg` followed by the singular for exactly one.
pub fn pluralize(msg: &str, singular: &str, plural: &str, count: usize) -> String {
    if count == 1 {
        format!("{msg}{singular}")
    } else {
        format!("{msg}{plural}")
    }
}

/// Go's `time.Unix(secs, 0).UTC().Format(time.RFC3339)`: `2019-03-12T16:24:26Z`.
pub fn rfc3339_utc(secs: i64) -> String {
    format_utc(secs, 'T', "Z")
}

/// Whether an SVID minted with `-ttl ttl` that expires at `expires_at` (Unix seconds) lives
/// shorter than asked, judged as upstream's `x509 mint` and `jwt mint` do: `time.Until(eol) <
/// ttl` with the clock's nanoseconds, so a whole-second expiry almost always counts as
/// capped and the warning is printed whenever a TTL is given. No TTL, no warning.
pub fn lifetime_capped(expires_at: i64, ttl: std::time::Duration) -> bool {
    if ttl.is_zero() {
        return false;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let until = i128::from(expires_at) * 1_000_000_000 - i128::try_from(now).unwrap_or(i128::MAX);
    until < i128::try_from(ttl.as_nanos()).unwrap_or(i128::MAX)
}

/// Go's `time.Unix(secs, 0).UTC().String()`: `2019-03-12 16:24:26 +0000 UTC`.
pub fn go_time_utc(secs: i64) -> String {
    format_utc(secs, ' ', " +0000 UTC")
}

/// `secs` in UTC as `YYYY-MM-DD<sep>hh:mm:ss<suffix>`; out of range, the number itself.
fn format_utc(secs: i64, sep: char, suffix: &str) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}{suffix}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => secs.to_string(),
    }
}

/// `spiffe://td/path` from its proto form; empty when absent.
pub fn id_string(id: Option<&types::Spiffeid>) -> String {
    match id {
        Some(id) => format!("spiffe://{}{}", id.trust_domain, id.path),
        None => String::new(),
    }
}

/// The proto form of a SPIFFE ID given on the command line.
pub fn id_proto(input: &str) -> Result<types::Spiffeid, CliError> {
    let id = spire_core::SpiffeId::parse(input).map_err(|e| CliError::invalid(e.to_string()))?;
    Ok(types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    })
}

/// A `-selector type:value` flag as the API's selector.
pub fn selector_proto(input: &str) -> Result<types::Selector, CliError> {
    match input.split_once(':') {
        Some((kind, value)) => Ok(types::Selector {
            r#type: kind.to_owned(),
            value: value.to_owned(),
        }),
        None => Err(CliError::invalid(format!(
            "selector \"{input}\" must be formatted as type:value"
        ))),
    }
}

/// Parses `true`/`false` and Go's other boolean spellings for Go-style bool flags.
pub fn go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("parse error: invalid boolean {value:?}")),
    }
}

/// Parses a Go duration flag (`1h`, `90s`).
pub fn go_duration(value: &str) -> Result<std::time::Duration, String> {
    spire_core::duration::parse(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_second_expiry_counts_as_capped_as_upstreams_does() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ttl = std::time::Duration::from_secs(3600);
        let at = |secs: u64| i64::try_from(secs).unwrap();
        // The server's now + ttl, truncated to the second, is a hair short of ttl from here.
        assert!(lifetime_capped(at(now + 3600), ttl));
        assert!(!lifetime_capped(at(now + 3602), ttl));
        assert!(
            !lifetime_capped(at(now), std::time::Duration::ZERO),
            "no -ttl, no warning"
        );
    }

    #[test]
    fn agent_json_uses_proto_names_and_emits_zero_fields() {
        let agent = types::Agent {
            id: Some(types::Spiffeid {
                trust_domain: "example.org".into(),
                path: "/spire/agent/agent1".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            proto_json(&agent, "spire.api.types.Agent").unwrap(),
            r#"{"agent_version":"","attestation_type":"","banned":false,"can_reattest":false,"id":{"path":"/spire/agent/agent1","trust_domain":"example.org"},"selectors":[],"x509svid_expires_at":"0","x509svid_serial_number":""}"#
        );
    }

    #[test]
    fn nested_messages_and_enums_are_rewritten() {
        use spire_proto::spire::api::server::entry::v1::{
            BatchCreateEntryResponse, batch_create_entry_response,
        };
        let resp = BatchCreateEntryResponse {
            results: vec![batch_create_entry_response::Result {
                status: Some(types::Status {
                    code: 0,
                    message: "OK".into(),
                }),
                entry: Some(types::Entry {
                    id: "e1".into(),
                    x509_svid_ttl: 60,
                    ..Default::default()
                }),
            }],
        };
        let json: Value = serde_json::from_str(
            &proto_json(&resp, "spire.api.server.entry.v1.BatchCreateEntryResponse").unwrap(),
        )
        .unwrap();
        let entry = &json["results"][0]["entry"];
        assert_eq!(entry["id"], "e1");
        assert_eq!(entry["x509_svid_ttl"], 60);
        // Unset messages are left out, as upstream's printer drops nulls.
        assert!(entry.get("spiffe_id").is_none(), "{entry}");
        assert_eq!(entry["revision_number"], "0");
        assert_eq!(entry["federates_with"], Value::Array(vec![]));
        assert_eq!(json["results"][0]["status"]["code"], 0);
    }

    #[test]
    fn html_characters_are_escaped_as_go_does() {
        let selector = types::Selector {
            r#type: "unix".into(),
            value: "path:/a<b>&c".into(),
        };
        assert_eq!(
            proto_json(&selector, "spire.api.types.Selector").unwrap(),
            r#"{"type":"unix","value":"path:/a\u003cb\u003e\u0026c"}"#
        );
    }

    #[test]
    fn go_formats() {
        assert_eq!(go_time_utc(1_552_410_266), "2019-03-12 17:04:26 +0000 UTC");
        assert_eq!(rfc3339_utc(1_552_410_266), "2019-03-12T17:04:26Z");
        assert_eq!(
            pluralize("Found 1 ", "entry", "entries", 1),
            "Found 1 entry"
        );
        assert_eq!(
            pluralize("Found 0 ", "entry", "entries", 0),
            "Found 0 entries"
        );
    }

    #[test]
    fn selectors_need_a_colon() {
        let s = selector_proto("k8s:pod-label:app:web").unwrap();
        assert_eq!(
            (s.r#type.as_str(), s.value.as_str()),
            ("k8s", "pod-label:app:web")
        );
        assert_eq!(
            selector_proto("unix").unwrap_err().to_string(),
            "selector \"unix\" must be formatted as type:value"
        );
    }
}
