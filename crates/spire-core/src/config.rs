//! Loading `server.conf` / `agent.conf` in HCL or JSON into serde structs.
//!
//! Both formats are first read into a `serde_json::Value` (HCL through hcl-rs, which maps
//! blocks the way HCL's JSON form writes them), then deserialized into the caller's type with
//! the path of every error tracked, so an unknown or mistyped key is reported with the block it
//! sits in. `-expandEnv` substitutes `$VAR` and `${VAR}` in the raw text first, exactly as Go's
//! `os.ExpandEnv` does.

pub mod de;
pub mod feature_flags;
mod hcl1;
pub mod hcl_print;
pub mod plugins;
pub mod sections;

use serde::de::DeserializeOwned;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Which syntax a configuration file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// HashiCorp Configuration Language, upstream's default.
    Hcl,
    /// JSON, as the Helm charts render configs.
    Json,
}

impl ConfigFormat {
    /// Picks the format from the file name (`.json`) or, failing that, from the first
    /// non-blank character (`{` means JSON).
    pub fn detect(source: &str, text: &str) -> Self {
        if source.ends_with(".json") || text.trim_start().starts_with('{') {
            Self::Json
        } else {
            Self::Hcl
        }
    }
}

/// Why a configuration could not be loaded or is not valid. Every variant names the file and
/// says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("could not find config file {path}: please use the -config flag")]
    NotFound {
        /// The absolute path looked at.
        path: String,
    },
    /// The file exists but could not be read.
    #[error("unable to read configuration at {path:?}: {message}")]
    Read {
        /// The path given.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The text is not valid HCL or JSON.
    #[error("{file}: could not parse {format}: {message}")]
    Syntax {
        /// The file (or other source) name.
        file: String,
        /// "HCL" or "JSON".
        format: &'static str,
        /// The parser's description, with line and column where it has them.
        message: String,
    },
    /// A key that the block does not have.
    #[error("{file}: unknown key {key:?} in {block}; {expected}")]
    UnknownKey {
        /// The file name.
        file: String,
        /// The unknown key.
        key: String,
        /// The block it appeared in, e.g. `the "server" block` or `the top level`.
        block: String,
        /// What the block accepts.
        expected: String,
    },
    /// A value of the wrong type or form, or a missing required key.
    #[error("{file}: {path}: {message}")]
    Invalid {
        /// The file name.
        file: String,
        /// Where in the document, e.g. `server.ca_ttl`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A value that parses but is not acceptable: `path` is the key (`agent.trust_domain`),
    /// `message` says what is wrong and how to fix it.
    pub fn invalid(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_owned(),
            path: path.into(),
            message: message.into(),
        }
    }

    /// The error for a config file at `path` that could not be read: [`Self::NotFound`]
    /// (with the absolute path, as upstream prints it) or [`Self::Read`].
    pub fn unreadable(path: &std::path::Path, error: &std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::NotFound {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            Self::NotFound {
                path: absolute.display().to_string(),
            }
        } else {
            Self::Read {
                path: path.display().to_string(),
                message: error.to_string(),
            }
        }
    }
}

/// Reads a configuration from `text` into `T`.
///
/// `source` names the file in errors. With `expand_env`, `$VAR` and `${VAR}` are replaced by
/// `lookup(VAR)` (empty when unset) before parsing.
pub fn load<T: DeserializeOwned>(
    source: &str,
    text: &str,
    expand_env: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let expanded;
    let text = if expand_env {
        expanded = expand_env_vars(text, lookup);
        expanded.as_str()
    } else {
        text
    };
    let value = parse_value(source, text)?;
    from_value(source, value)
}

/// Parses HCL or JSON text into a JSON value without interpreting it.
pub fn parse_value(source: &str, text: &str) -> Result<Value, ConfigError> {
    match ConfigFormat::detect(source, text) {
        ConfigFormat::Json => serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
            file: source.to_owned(),
            format: "JSON",
            message: e.to_string(),
        }),
        ConfigFormat::Hcl => parse_hcl(source, text),
    }
}

/// Parses HCL as upstream's HCL v1 parser reads it: after [`hcl1_compat`], every value must
/// be a literal (quoted string, number, boolean, list, object or heredoc). HCL v2, which
/// hcl-rs implements, would read `data_dir = spire_data` as a variable and hand us the text
/// `${spire_data}`; HCL v1 refuses the bare word, and so do we, naming line, column and key.
fn parse_hcl(source: &str, text: &str) -> Result<Value, ConfigError> {
    let syntax = |message: String| ConfigError::Syntax {
        file: source.to_owned(),
        format: "HCL",
        message,
    };
    let (compat, offsets) = hcl1_compat_mapped(text);
    let body = hcl::edit::parser::parse_body(&compat)
        .map_err(|e| syntax(hcl::Error::from(e).to_string()))?;
    if let Some(found) = hcl1::first_non_literal(&body) {
        let offset = offsets.original(found.offset);
        let (line, column) = line_and_column(text, offset);
        let shown = compat
            .get(found.span.clone())
            .unwrap_or_default()
            .trim()
            .to_owned();
        return Err(syntax(found.message(line, column, &shown)));
    }
    hcl::from_body(hcl::Body::from(body)).map_err(|e| syntax(e.to_string()))
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
    (line, column)
}

/// Deserializes an already parsed document into `T`, naming the path of any error.
pub fn from_value<T: DeserializeOwned>(source: &str, value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        describe(source, &path, &message)
    })
}

fn describe(source: &str, path: &str, message: &str) -> ConfigError {
    if let Some((key, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        // The reported path ends at the enclosing block or, depending on the
        // deserializer, at the unknown key itself.
        let parent = if path == key {
            ""
        } else {
            path.strip_suffix(key)
                .and_then(|p| p.strip_suffix('.'))
                .unwrap_or(path)
        };
        let block = if parent.is_empty() || parent == "." {
            "the top level".to_owned()
        } else {
            format!("the {parent:?} block")
        };
        let expected = expected.trim_start_matches(", ").trim();
        let expected = if expected.is_empty() {
            "this block takes no keys".to_owned()
        } else {
            expected.replace('`', "\"")
        };
        return ConfigError::UnknownKey {
            file: source.to_owned(),
            key: key.to_owned(),
            block,
            expected,
        };
    }
    ConfigError::Invalid {
        file: source.to_owned(),
        path: if path.is_empty() || path == "." {
            "top level".to_owned()
        } else {
            path.to_owned()
        },
        message: message.to_owned(),
    }
}

/// Replaces `$VAR` and `${VAR}` as Go's `os.Expand` does: unset variables become empty,
/// `${}` and an unterminated `${` are dropped, and a `$` followed by anything else stays.
pub fn expand_env_vars(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(rest.get(..pos).unwrap_or_default());
        let after = rest.get(pos + 1..).unwrap_or_default();
        if after.is_empty() {
            out.push('$');
            rest = after;
            break;
        }
        let (name, consumed) = shell_name(after);
        match (name, consumed) {
            (None, 0) => out.push('$'),
            (None, _) => {}
            (Some(name), _) => out.push_str(&lookup(name).unwrap_or_default()),
        }
        rest = after.get(consumed..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

fn is_special_var(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

/// Go's `getShellName`: the variable name after a `$` and how many bytes it used.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b'{') => {
            if bytes.len() > 2
                && bytes.get(1).copied().is_some_and(is_special_var)
                && bytes.get(2) == Some(&b'}')
            {
                return (s.get(1..2), 3);
            }
            match s.get(1..).and_then(|inner| inner.find('}')) {
                Some(0) => (None, 2),
                Some(end) => (s.get(1..=end), end + 2),
                None => (None, 1),
            }
        }
        Some(&c) if is_special_var(c) => (s.get(..1), 1),
        _ => {
            let end = s
                .bytes()
                .position(|c| !(c == b'_' || c.is_ascii_alphanumeric()))
                .unwrap_or(s.len());
            if end == 0 {
                (None, 0)
            } else {
                (s.get(..end), end)
            }
        }
    }
}

/// Rewrites the HCL v1 forms upstream accepts and hcl-rs (HCL v2) refuses, leaving meaning
/// unchanged: quoted block types and keys at the start of a line (`"server" {`,
/// `"trust_domain" = ...`) lose their quotes, and every `{` and `}` outside strings, comments
/// and heredocs gets its own line, so one-line nested blocks (`NodeAttestor "x" { plugin_data
/// {} }`) parse.
pub fn hcl1_compat(text: &str) -> String {
    hcl1_compat_mapped(text).0
}

/// Where each piece of [`hcl1_compat`]'s output came from in its input, so errors found in
/// the rewritten text name the line and column the operator wrote.
#[derive(Debug, Default)]
struct OffsetMap {
    /// `(output offset, input offset)` at the start of each piece, in increasing order.
    starts: Vec<(usize, usize)>,
}

impl OffsetMap {
    /// The input offset of output byte `out`.
    fn original(&self, out: usize) -> usize {
        let index = self.starts.partition_point(|&(o, _)| o <= out);
        match index.checked_sub(1).and_then(|i| self.starts.get(i)) {
            Some(&(o, i)) => i + (out - o),
            None => out,
        }
    }
}

/// [`hcl1_compat`] with the [`OffsetMap`] of its output.
fn hcl1_compat_mapped(text: &str) -> (String, OffsetMap) {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut offsets = OffsetMap::default();
    let mut chars = text.char_indices().peekable();
    let mut at_line_start = true;
    // Open `{` and `[` outside strings, comments and heredocs, innermost last.
    let mut open: Vec<char> = Vec::new();
    while let Some((i, c)) = chars.next() {
        offsets.starts.push((out.len(), i));
        let rest = text.get(i..).unwrap_or_default();
        match c {
            '"' => {
                let end = string_end(rest);
                let literal = rest.get(..end).unwrap_or(rest);
                let inner = literal
                    .get(1..literal.len().saturating_sub(1))
                    .unwrap_or_default();
                let after = rest
                    .get(end..)
                    .unwrap_or_default()
                    .trim_start_matches([' ', '\t']);
                let unquote = at_line_start
                    && is_identifier(inner)
                    && (after.starts_with('=') || after.starts_with('{') || after.starts_with('"'));
                out.push_str(if unquote { inner } else { literal });
                skip(&mut chars, i + end);
                at_line_start = false;
            }
            '#' => copy_until(
                &mut out,
                &mut chars,
                rest,
                rest.find('\n').unwrap_or(rest.len()),
                i,
            ),
            '/' if rest.starts_with("//") => {
                copy_until(
                    &mut out,
                    &mut chars,
                    rest,
                    rest.find('\n').unwrap_or(rest.len()),
                    i,
                );
            }
            '/' if rest.starts_with("/*") => {
                let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
                copy_until(&mut out, &mut chars, rest, end, i);
            }
            '<' if rest.starts_with("<<") => {
                copy_until(&mut out, &mut chars, rest, heredoc_end(rest), i);
                at_line_start = false;
            }
            '{' => {
                open.push('{');
                out.push_str("{\n");
                at_line_start = true;
            }
            '}' => {
                open.pop();
                out.push_str("\n}");
                at_line_start = false;
            }
            // HCL v1 lets commas separate the attributes of a block (`server_address = "h",`);
            // HCL v2 separates them by newlines only. Commas in lists stay.
            ',' if open.last() == Some(&'{') => {
                out.push('\n');
                at_line_start = true;
            }
            '\n' => {
                out.push('\n');
                at_line_start = true;
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                match c {
                    '[' => open.push('['),
                    ']' => {
                        open.pop();
                    }
                    _ => {}
                }
                if !at_line_start && starts_new_attribute(&out, rest) {
                    out.push('\n');
                    offsets.starts.push((out.len(), i));
                }
                out.push(c);
                at_line_start = false;
            }
        }
    }
    (out, offsets)
}

/// Whether `rest` starts a `key = value` attribute that HCL v1 lets follow the previous value
/// on the same line (`{ database_type = "sqlite3" connection_string = "x" }`), which hcl-rs
/// only accepts on a line of its own.
fn starts_new_attribute(out: &str, rest: &str) -> bool {
    if !out.ends_with([' ', '\t']) {
        return false;
    }
    let previous_ends_value = out
        .trim_end_matches([' ', '\t'])
        .chars()
        .next_back()
        .is_some_and(|p| p == '"' || p == ']' || p == '}' || p.is_alphanumeric());
    let key_len = rest
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '-'))
        .unwrap_or(rest.len());
    let after_key = rest
        .get(key_len..)
        .unwrap_or_default()
        .trim_start_matches([' ', '\t']);
    previous_ends_value
        && key_len > 0
        && rest.starts_with(|ch: char| ch.is_alphabetic() || ch == '_')
        && after_key.starts_with('=')
        && !after_key.starts_with("==")
}

/// Length of the string literal at the start of `s` (which starts with `"`), quotes included.
fn string_end(s: &str) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return i + 1,
            '\n' => return i,
            _ => escaped = false,
        }
    }
    s.len()
}

/// Length of the heredoc at the start of `s` (`<<EOF` or `<<-EOF` ... `EOF`).
fn heredoc_end(s: &str) -> usize {
    let header_end = s.find('\n').unwrap_or(s.len());
    let marker = s
        .get(2..header_end)
        .unwrap_or_default()
        .trim_start_matches('-')
        .trim();
    if marker.is_empty() {
        return 2;
    }
    let mut offset = header_end;
    while offset < s.len() {
        let line_start = offset + 1;
        let line_end = s
            .get(line_start..)
            .and_then(|r| r.find('\n'))
            .map_or(s.len(), |e| line_start + e);
        if s.get(line_start..line_end).unwrap_or_default().trim() == marker {
            return line_end;
        }
        offset = line_end;
    }
    s.len()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// Advances `chars` to byte offset `end` (absolute).
fn skip(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, end: usize) {
    while chars.peek().is_some_and(|(j, _)| *j < end) {
        chars.next();
    }
}

/// Copies `rest[..len]` verbatim and advances `chars` past it.
fn copy_until(
    out: &mut String,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    rest: &str,
    len: usize,
    start: usize,
) {
    out.push_str(rest.get(..len).unwrap_or(rest));
    skip(chars, start + len);
}

/// Deserializes a block that HCL writes as an object and JSON configs sometimes write as a
/// one-element array (`"server": [{...}]`), as upstream's HCL v1 decoder accepts both.
/// Errors inside the block keep their full path.
pub fn single_block<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_any(BlockVisitor(std::marker::PhantomData))
}

struct BlockVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for BlockVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a block (an object, or a list holding one object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let first = seq
            .next_element()?
            .ok_or_else(|| serde::de::Error::custom("block is an empty list; write it once"))?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(serde::de::Error::custom(
                "block is given more than once; it may appear once",
            ));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Server {
        trust_domain: String,
        #[serde(default)]
        bind_port: Option<u16>,
        #[serde(default, with = "crate::duration::serde_go::option")]
        ca_ttl: Option<std::time::Duration>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(deserialize_with = "single_block")]
        server: Server,
        #[serde(default)]
        plugins: Option<Value>,
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const HCL: &str = r#"
server {
    trust_domain = "example.org"
    bind_port = 8081
    ca_ttl = "168h"
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "/run/spire/data/datastore.sqlite3"
        }
    }
}
"#;

    #[test]
    fn hcl_and_json_load_into_the_same_struct() {
        let from_hcl: File = load("server.conf", HCL, false, no_env).unwrap();
        assert_eq!(from_hcl.server.trust_domain, "example.org");
        assert_eq!(from_hcl.server.bind_port, Some(8081));
        assert_eq!(
            from_hcl.server.ca_ttl,
            Some(std::time::Duration::from_secs(168 * 3600))
        );
        let json = r#"{"server": {"trust_domain": "example.org", "bind_port": 8081, "ca_ttl": "168h"},
            "plugins": {"DataStore": {"sql": {"plugin_data": {"database_type": "sqlite3",
            "connection_string": "/run/spire/data/datastore.sqlite3"}}}}}"#;
        let from_json: File = load("server.json", json, false, no_env).unwrap();
        assert_eq!(from_hcl, from_json);
    }

    #[test]
    fn json_blocks_may_be_one_element_arrays() {
        let json = r#"{"server": [{"trust_domain": "example.org"}]}"#;
        let file: File = load("server.conf", json, false, no_env).unwrap();
        assert_eq!(file.server.trust_domain, "example.org");
        let json = r#"{"server": [{"trust_domain": "a"}, {"trust_domain": "b"}]}"#;
        let err = load::<File>("server.conf", json, false, no_env).unwrap_err();
        assert!(err.to_string().contains("may appear once"), "{err}");
        let json = r#"{"server": [{"trust_domain": "a", "bind_port": "x"}]}"#;
        let err = load::<File>("server.conf", json, false, no_env).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("server.conf: server[0].bind_port: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_the_block_and_the_file() {
        let text = "server {\n trust_domain = \"td\"\n trust_domian = \"x\"\n}\n";
        let err = load::<File>("/etc/spire/server.conf", text, false, no_env).unwrap_err();
        let ConfigError::UnknownKey { key, block, .. } = &err else {
            panic!("wrong error: {err}");
        };
        assert_eq!(key, "trust_domian");
        assert_eq!(block, "the \"server\" block");
        let msg = err.to_string();
        assert!(
            msg.starts_with("/etc/spire/server.conf: unknown key \"trust_domian\""),
            "{msg}"
        );
        assert!(
            msg.contains("\"trust_domain\""),
            "the message lists valid keys: {msg}"
        );

        let err = load::<File>(
            "a.conf",
            "server { trust_domain = \"td\" }\nsrever {}\n",
            false,
            no_env,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key \"srever\" in the top level"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_their_path() {
        let text = "server {\n trust_domain = \"td\"\n ca_ttl = \"10d\"\n}\n";
        let err = load::<File>("s.conf", text, false, no_env).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("s.conf: server.ca_ttl: unknown unit \"d\""),
            "{msg}"
        );
        let err = load::<File>("s.conf", "server {}\n", false, no_env).unwrap_err();
        assert!(
            err.to_string().contains("missing field `trust_domain`"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_name_the_file_and_format() {
        let err = load::<File>("s.conf", "server {\n", false, no_env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { format: "HCL", .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("s.conf: could not parse HCL"));
        let err = load::<File>("s.json", "{\"server\": ", false, no_env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { format: "JSON", .. }),
            "{err}"
        );
    }

    /// Shapes found in upstream's documented configs that HCL v2 parsers refuse.
    const HCL1: &str = r#"
# comment with { braces }
"server" {
    "trust_domain" = "example.org"
    bind_port = "8081"
    ca_subject = {
        Country = ["US"],
        Organization = ["SPIFFE"],
        CommonName = "",
    }
    jwt_issuer = "https://x/{a}"  // trailing { comment
}

plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" } }
    KeyManager "memory" {
        plugin_data = {}
    }
    NodeAttestor "join_token" { plugin_data {} }
    UpstreamAuthority "disk" {
        plugin_data {
            pem = <<EOT
{ not a block }
EOT
        }
    }
    Notifier "x" {
        plugin_data {
            address = "h, i",
            port = "8081",
            list = ["a", "b",
                "c"],
            nested { x = 1, y = [1, 2] }
        }
    }
}
"#;

    #[test]
    fn hcl1_only_forms_parse() {
        let value = parse_value("server.conf", HCL1).unwrap();
        assert_eq!(value["server"]["trust_domain"], "example.org");
        assert_eq!(value["server"]["bind_port"], "8081");
        assert_eq!(value["server"]["jwt_issuer"], "https://x/{a}");
        assert_eq!(value["server"]["ca_subject"]["Country"][0], "US");
        let plugins = &value["plugins"];
        assert_eq!(
            plugins["DataStore"]["sql"]["plugin_data"]["database_type"],
            "sqlite3"
        );
        assert!(plugins["NodeAttestor"]["join_token"]["plugin_data"].is_object());
        assert_eq!(
            plugins["UpstreamAuthority"]["disk"]["plugin_data"]["pem"],
            "{ not a block }\n"
        );
        let commas = &plugins["Notifier"]["x"]["plugin_data"];
        assert_eq!(commas["address"], "h, i");
        assert_eq!(commas["port"], "8081");
        assert_eq!(commas["list"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(commas["nested"]["x"], 1);
        assert_eq!(commas["nested"]["y"], serde_json::json!([1, 2]));
    }

    #[test]
    fn hcl1_one_line_attributes_without_commas_parse() {
        let text = "plugins {\n  DataStore \"sql\" { plugin_data { database_type = \"sqlite3\" \
                    connection_string = \"./d.sqlite3\" max_open_conns = 5 } }\n}\n\
                    telemetry { M3 = [{ address = \"localhost:9000\" env = \"prod\" }] }\n";
        let value = parse_value("server.conf", text).unwrap();
        let data = &value["plugins"]["DataStore"]["sql"]["plugin_data"];
        assert_eq!(data["database_type"], "sqlite3");
        assert_eq!(data["connection_string"], "./d.sqlite3");
        assert_eq!(data["max_open_conns"], 5);
        assert_eq!(value["telemetry"]["M3"][0]["env"], "prod");
        // A value that merely contains `x = y` is left alone.
        let quoted = "a = \"b c = d\"\n";
        assert_eq!(hcl1_compat(quoted), quoted);
    }

    #[test]
    fn hcl1_compat_leaves_strings_alone() {
        let text = "a = \"{\\\"}\"\nb = \"x\" # {\n";
        assert_eq!(hcl1_compat(text), text);
    }

    #[test]
    fn hcl_bare_words_are_refused_with_line_column_and_key() {
        // Upstream's HCL v1 parser refuses these; HCL v2 would read a variable and the server
        // would create a folder literally named `${spire_data}`.
        let text = "server {\n    trust_domain = \"example.org\"\n    data_dir = spire_data\n}\n";
        let err = parse_value("server.conf", text).unwrap_err().to_string();
        assert_eq!(
            err,
            "server.conf: could not parse HCL: At 3:16: server.data_dir = spire_data: a bare \
             word is not a value; put it in double quotes: server.data_dir = \"spire_data\""
        );

        // In a one-line nested block the line and column are still the operator's.
        let text =
            "plugins {\n  DataStore \"sql\" { plugin_data { database_type = sqlite3 } }\n}\n";
        let err = parse_value("server.conf", text).unwrap_err().to_string();
        assert!(
            err.contains("At 2:51: plugins.DataStore \"sql\".plugin_data.database_type = sqlite3"),
            "{err}"
        );

        for (text, shown) in [
            ("a = [\"x\", y]\n", "At 1:11: a[1] = y"),
            ("a = { b = c }\n", "At 1:11: a.b = c"),
            ("a = { \"${x}\" = c }\n", "= c: a bare word"),
            ("a = null\n", "At 1:5: a = null"),
            ("a = 1 + 2\n", "At 1:5: a = 1 + 2"),
            ("a = upper(\"x\")\n", "At 1:5: a = upper(\"x\")"),
            ("a = b.c\n", "At 1:5: a = b.c"),
        ] {
            let err = parse_value("agent.conf", text).unwrap_err().to_string();
            assert!(err.contains(shown), "{text}: {err}");
        }
    }

    #[test]
    fn hcl_literals_still_parse() {
        let text = "a = -5\nb = 1.5\nc = true\nd = [\"x\", 2, [false]]\ne = { f = \"g\" }\n\
                    h = \"${NOT_EXPANDED}\"\ni = <<EOT\nx\nEOT\n";
        let value = parse_value("s.conf", text).unwrap();
        assert_eq!(value["a"], -5);
        assert_eq!(value["c"], true);
        assert_eq!(value["d"][2][0], false);
        assert_eq!(value["e"]["f"], "g");
        assert_eq!(value["h"], "${NOT_EXPANDED}");
        assert_eq!(value["i"], "x\n");
    }

    #[test]
    fn expand_env_substitutes_before_parsing() {
        let env: HashMap<&str, &str> = [("TD", "prod.example.org"), ("PORT", "9000")].into();
        let lookup = |k: &str| env.get(k).map(|v| (*v).to_owned());
        let text = "server {\n trust_domain = \"${TD}\"\n bind_port = $PORT\n}\n";
        let file: File = load("s.conf", text, true, lookup).unwrap();
        assert_eq!(file.server.trust_domain, "prod.example.org");
        assert_eq!(file.server.bind_port, Some(9000));
        // Without -expandEnv the text is taken literally.
        let file: File =
            load("s.conf", "server { trust_domain = \"$TD\" }", false, lookup).unwrap();
        assert_eq!(file.server.trust_domain, "$TD");
    }

    #[test]
    fn expansion_matches_go_os_expand() {
        let lookup = |k: &str| match k {
            "A" => Some("x".to_owned()),
            "1" => Some("one".to_owned()),
            _ => None,
        };
        let cases = [
            ("$A", "x"),
            ("${A}", "x"),
            ("a${A}b", "axb"),
            ("$A$A", "xx"),
            ("$UNSET", ""),
            ("${UNSET}", ""),
            ("$", "$"),
            ("a$", "a$"),
            ("$ a", "$ a"),
            ("${}", ""),
            ("${A", "A"),
            ("$1", "one"),
            ("${1}", "one"),
            ("$$", ""),
            ("cost: 5$/h", "cost: 5$/h"),
            ("ünïcödé $A", "ünïcödé x"),
        ];
        for (input, want) in cases {
            assert_eq!(expand_env_vars(input, lookup), want, "{input:?}");
        }
    }
}
