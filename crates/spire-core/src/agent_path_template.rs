//! `agent_path_template`: the Go `text/template` subset upstream's x509pop and sshpop node
//! attestors use to shape an agent's SPIFFE ID path (`/{{ .PluginName }}/{{ .Fingerprint }}`).
//!
//! Supported: text, `{{ }}` actions with `{{-`/`-}}` trimming, field chains (`.Subject.CommonName`),
//! string and integer literals, parentheses, pipelines (`|`) and these functions: Go's
//! `index`, `len`, `print`, `printf` (`%s`, `%d`, `%v`, `%q`, `%x`) and sprig's `lower`, `upper`,
//! `trim`, `trimAll`, `trimPrefix`, `trimSuffix`, `replace`, `trunc`, `substr`, `default`,
//! `join`, `first`, `last`, `sha1sum`, `sha256sum`, `b64enc`, `contains`, `hasPrefix`,
//! `hasSuffix`. A missing field or map key is an error, as upstream's `missingkey=error`.
//! Control structures (`if`, `range`, `with`, variables) are not supported and refused when
//! the template is parsed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;

/// A value a template reads or computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list (Go slice).
    List(Vec<Value>),
    /// A struct or map: fields by name.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        Self::Str(s.into())
    }

    /// A list of strings.
    pub fn strs<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::List(items.into_iter().map(|s| Self::Str(s.into())).collect())
    }

    /// How Go's `text/template` prints the value.
    fn render(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::List(items) => {
                let inner: Vec<String> = items.iter().map(Self::render).collect();
                format!("[{}]", inner.join(" "))
            }
            Self::Map(fields) => {
                let inner: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.render()))
                    .collect();
                format!("map[{}]", inner.join(" "))
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Str(s) => s.is_empty(),
            Self::Int(i) => *i == 0,
            Self::Bool(b) => !b,
            Self::List(l) => l.is_empty(),
            Self::Map(m) => m.is_empty(),
        }
    }
}

/// Why a template could not be parsed or executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

fn err<T>(message: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError(message.into()))
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Field(Vec<String>),
    Str(String),
    Int(i64),
    Func(String),
    Sub(Pipeline),
}

type Command = Vec<Operand>;
type Pipeline = Vec<Command>;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Pipeline),
}

/// A parsed agent path template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

const FUNCTIONS: [&str; 23] = [
    "index",
    "len",
    "print",
    "printf",
    "lower",
    "upper",
    "trim",
    "trimAll",
    "trimPrefix",
    "trimSuffix",
    "replace",
    "trunc",
    "substr",
    "default",
    "join",
    "first",
    "last",
    "sha1sum",
    "sha256sum",
    "b64enc",
    "contains",
    "hasPrefix",
    "hasSuffix",
];

impl Template {
    /// Parses `text`; unknown functions and unsupported syntax are errors.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut nodes = Vec::new();
        let mut rest = text;
        let mut trim_next_text = false;
        while let Some(start) = rest.find("{{") {
            let mut literal = &rest[..start];
            if trim_next_text {
                literal = literal.trim_start();
            }
            let after = &rest[start + 2..];
            let (trim_left, after) = match after.strip_prefix("- ") {
                Some(a) => (true, a),
                None => (false, after),
            };
            if trim_left {
                literal = literal.trim_end();
            }
            if !literal.is_empty() {
                nodes.push(Node::Text(literal.to_owned()));
            }
            let Some(end) = find_close(after) else {
                return err("unclosed action");
            };
            let mut inner = &after[..end];
            rest = &after[end + 2..];
            trim_next_text = false;
            if let Some(i) = inner.strip_suffix(" -") {
                inner = i;
                trim_next_text = true;
            }
            let tokens = tokenize(inner)?;
            if tokens.is_empty() {
                return err("missing value for command");
            }
            let mut pos = 0;
            let pipeline = parse_pipeline(&tokens, &mut pos)?;
            if pos != tokens.len() {
                return err(format!("unexpected {:?} in command", tokens[pos]));
            }
            nodes.push(Node::Action(pipeline));
        }
        let literal = if trim_next_text {
            rest.trim_start()
        } else {
            rest
        };
        if !literal.is_empty() {
            nodes.push(Node::Text(literal.to_owned()));
        }
        Ok(Self { nodes })
    }

    /// Renders the template with `data` as `.`.
    pub fn execute(&self, data: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => out.push_str(&eval_pipeline(p, data)?.render()),
            }
        }
        Ok(out)
    }
}

/// The end of an action: `}}` outside a string literal.
fn find_close(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == b'\\' && q == b'"' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'`' => quote = Some(b),
            None if b == b'}' && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(Vec<String>),
    Ident(String),
    Str(String),
    Int(i64),
    Pipe,
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Token>, TemplateError> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '|' {
            tokens.push(Token::Pipe);
            i += 1;
        } else if c == '(' {
            tokens.push(Token::Open);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            i += 1;
        } else if c == '.' {
            let mut path = Vec::new();
            while i < chars.len() && chars[i] == '.' {
                i += 1;
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name.is_empty() {
                    if path.is_empty() && (i >= chars.len() || !chars[i].is_alphanumeric()) {
                        break;
                    }
                    return err("bad field name");
                }
                path.push(name);
            }
            tokens.push(Token::Field(path));
        } else if c == '"' {
            let mut value = String::new();
            i += 1;
            loop {
                let Some(&ch) = chars.get(i) else {
                    return err("unterminated quoted string");
                };
                i += 1;
                match ch {
                    '"' => break,
                    '\\' => {
                        let Some(&esc) = chars.get(i) else {
                            return err("unterminated quoted string");
                        };
                        i += 1;
                        value.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            '\\' => '\\',
                            '"' => '"',
                            other => return err(format!("unknown escape sequence \\{other}")),
                        });
                    }
                    ch => value.push(ch),
                }
            }
            tokens.push(Token::Str(value));
        } else if c == '`' {
            let start = i + 1;
            let Some(len) = chars[start..].iter().position(|&ch| ch == '`') else {
                return err("unterminated raw quoted string");
            };
            tokens.push(Token::Str(chars[start..start + len].iter().collect()));
            i = start + len + 1;
        } else if c.is_ascii_digit() || c == '-' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse()
                .map_err(|_| TemplateError(format!("bad number syntax: {text:?}")))?;
            tokens.push(Token::Int(n));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '$' {
            return err("template variables ($) are not supported");
        } else {
            return err(format!("unexpected {c:?} in command"));
        }
    }
    Ok(tokens)
}

fn parse_pipeline(tokens: &[Token], pos: &mut usize) -> Result<Pipeline, TemplateError> {
    let mut pipeline = Vec::new();
    loop {
        let mut command = Vec::new();
        while let Some(token) = tokens.get(*pos) {
            match token {
                Token::Pipe | Token::Close => break,
                Token::Open => {
                    *pos += 1;
                    let sub = parse_pipeline(tokens, pos)?;
                    if tokens.get(*pos) != Some(&Token::Close) {
                        return err("unclosed left paren");
                    }
                    *pos += 1;
                    command.push(Operand::Sub(sub));
                    continue;
                }
                Token::Field(path) => command.push(Operand::Field(path.clone())),
                Token::Str(s) => command.push(Operand::Str(s.clone())),
                Token::Int(n) => command.push(Operand::Int(*n)),
                Token::Ident(name) => match name.as_str() {
                    "if" | "range" | "with" | "end" | "else" | "define" | "template" | "block" => {
                        return err(format!("{name:?} is not supported in agent_path_template"));
                    }
                    _ if FUNCTIONS.contains(&name.as_str()) => {
                        command.push(Operand::Func(name.clone()));
                    }
                    _ => return err(format!("function {name:?} not defined")),
                },
            }
            *pos += 1;
        }
        if command.is_empty() {
            return err("missing value for command");
        }
        pipeline.push(command);
        if tokens.get(*pos) == Some(&Token::Pipe) {
            *pos += 1;
        } else {
            return Ok(pipeline);
        }
    }
}

fn eval_pipeline(pipeline: &Pipeline, data: &Value) -> Result<Value, TemplateError> {
    let mut piped: Option<Value> = None;
    for command in pipeline {
        piped = Some(eval_command(command, data, piped)?);
    }
    piped.map_or_else(|| err("empty pipeline"), Ok)
}

fn eval_operand(operand: &Operand, data: &Value) -> Result<Value, TemplateError> {
    match operand {
        Operand::Field(path) => {
            let mut value = data;
            for name in path {
                let Value::Map(fields) = value else {
                    return err(format!("can't evaluate field {name} in a non-struct value"));
                };
                value = fields
                    .get(name)
                    .ok_or_else(|| TemplateError(format!("can't evaluate field {name}")))?;
            }
            Ok(value.clone())
        }
        Operand::Str(s) => Ok(Value::Str(s.clone())),
        Operand::Int(n) => Ok(Value::Int(*n)),
        Operand::Sub(p) => eval_pipeline(p, data),
        Operand::Func(name) => call(name, Vec::new()),
    }
}

fn eval_command(
    command: &Command,
    data: &Value,
    piped: Option<Value>,
) -> Result<Value, TemplateError> {
    let (first, rest) = command
        .split_first()
        .ok_or_else(|| TemplateError("missing value for command".into()))?;
    match first {
        Operand::Func(name) => {
            let mut args = rest
                .iter()
                .map(|o| eval_operand(o, data))
                .collect::<Result<Vec<_>, _>>()?;
            args.extend(piped);
            call(name, args)
        }
        _ if !rest.is_empty() || piped.is_some() => err("can't give argument to non-function"),
        operand => eval_operand(operand, data),
    }
}

fn string_arg(name: &str, value: &Value) -> Result<String, TemplateError> {
    match value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(_) | Value::Bool(_) => Ok(value.render()),
        _ => err(format!("{name}: expected a string, got {}", value.render())),
    }
}

fn int_arg(name: &str, value: &Value) -> Result<i64, TemplateError> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::Str(s) => s
            .parse()
            .map_err(|_| TemplateError(format!("{name}: expected an integer"))),
        _ => err(format!("{name}: expected an integer")),
    }
}

fn arity(name: &str, args: &[Value], n: usize) -> Result<(), TemplateError> {
    if args.len() == n {
        Ok(())
    } else {
        err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ))
    }
}

fn call(name: &str, args: Vec<Value>) -> Result<Value, TemplateError> {
    let s = |i: usize| string_arg(name, &args[i]);
    let text = |v: String| Ok(Value::Str(v));
    match name {
        "index" => {
            let Some((first, keys)) = args.split_first() else {
                return err("wrong number of args for index");
            };
            let mut value = first.clone();
            for key in keys {
                value = match (&value, key) {
                    (Value::Map(m), Value::Str(k)) => m
                        .get(k)
                        .cloned()
                        .ok_or_else(|| TemplateError(format!("map has no entry for key {k:?}")))?,
                    (Value::List(l), Value::Int(i)) => usize::try_from(*i)
                        .ok()
                        .and_then(|i| l.get(i).cloned())
                        .ok_or_else(|| TemplateError(format!("index out of range: {i}")))?,
                    _ => return err("can't index item"),
                };
            }
            Ok(value)
        }
        "len" => {
            arity(name, &args, 1)?;
            let n = match &args[0] {
                Value::Str(s) => s.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                _ => return err("len of unsupported type"),
            };
            Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
        }
        "print" => text(args.iter().map(Value::render).collect()),
        "printf" => {
            let Some((format, rest)) = args.split_first() else {
                return err("wrong number of args for printf");
            };
            text(printf(&string_arg(name, format)?, rest))
        }
        "lower" | "upper" | "trim" | "sha1sum" | "sha256sum" | "b64enc" => {
            arity(name, &args, 1)?;
            let v = s(0)?;
            text(match name {
                "lower" => v.to_lowercase(),
                "upper" => v.to_uppercase(),
                "trim" => v.trim().to_owned(),
                "sha1sum" => hex(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    v.as_bytes(),
                )
                .as_ref()),
                "sha256sum" => hex(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    v.as_bytes(),
                )
                .as_ref()),
                _ => base64::engine::general_purpose::STANDARD.encode(v.as_bytes()),
            })
        }
        "trimAll" | "trimPrefix" | "trimSuffix" | "contains" | "hasPrefix" | "hasSuffix" => {
            arity(name, &args, 2)?;
            let (a, v) = (s(0)?, s(1)?);
            match name {
                "trimAll" => text(v.trim_matches(|c| a.contains(c)).to_owned()),
                "trimPrefix" => text(v.strip_prefix(a.as_str()).unwrap_or(&v).to_owned()),
                "trimSuffix" => text(v.strip_suffix(a.as_str()).unwrap_or(&v).to_owned()),
                "contains" => Ok(Value::Bool(v.contains(a.as_str()))),
                "hasPrefix" => Ok(Value::Bool(v.starts_with(a.as_str()))),
                _ => Ok(Value::Bool(v.ends_with(a.as_str()))),
            }
        }
        "replace" => {
            arity(name, &args, 3)?;
            text(s(2)?.replace(&s(0)?, &s(1)?))
        }
        "trunc" => {
            arity(name, &args, 2)?;
            let n = int_arg(name, &args[0])?;
            let v: Vec<char> = s(1)?.chars().collect();
            let len = i64::try_from(v.len()).unwrap_or(i64::MAX);
            let kept: String = if n < 0 {
                let skip = usize::try_from((len + n).max(0)).unwrap_or(0);
                v[skip..].iter().collect()
            } else {
                v.iter().take(usize::try_from(n).unwrap_or(0)).collect()
            };
            text(kept)
        }
        "substr" => {
            arity(name, &args, 3)?;
            let (start, end) = (int_arg(name, &args[0])?, int_arg(name, &args[1])?);
            let v: Vec<char> = s(2)?.chars().collect();
            let len = v.len();
            let clamp = |i: i64| usize::try_from(i.max(0)).unwrap_or(0).min(len);
            let from = clamp(start);
            let to = if end < 0 { len } else { clamp(end) };
            text(v[from.min(to)..to].iter().collect())
        }
        "default" => {
            arity(name, &args, 2)?;
            Ok(if args[1].is_empty() {
                args[0].clone()
            } else {
                args[1].clone()
            })
        }
        "join" => {
            arity(name, &args, 2)?;
            let sep = s(0)?;
            match &args[1] {
                Value::List(items) => text(
                    items
                        .iter()
                        .map(Value::render)
                        .collect::<Vec<_>>()
                        .join(&sep),
                ),
                other => text(other.render()),
            }
        }
        "first" | "last" => {
            arity(name, &args, 1)?;
            match &args[0] {
                Value::List(items) => {
                    let item = if name == "first" {
                        items.first()
                    } else {
                        items.last()
                    };
                    Ok(item.cloned().unwrap_or(Value::Str(String::new())))
                }
                _ => err(format!("{name}: expected a list")),
            }
        }
        other => err(format!("function {other:?} not defined")),
    }
}

fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) => match (verb, args.next()) {
                ('q', Some(v)) => {
                    let _ = write!(out, "{:?}", v.render());
                }
                ('x', Some(Value::Int(i))) => {
                    let _ = write!(out, "{i:x}");
                }
                ('x', Some(v)) => out.push_str(&hex(v.render().as_bytes())),
                (_, Some(v)) => out.push_str(&v.render()),
                (verb, None) => {
                    let _ = write!(out, "%!{verb}(MISSING)");
                }
            },
            None => out.push_str("%!(NOVERB)"),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Value {
        let mut subject = BTreeMap::new();
        subject.insert("CommonName".to_owned(), Value::str("Node-1"));
        let mut sans = BTreeMap::new();
        sans.insert("datacenter".to_owned(), Value::str("us-east"));
        let mut d = BTreeMap::new();
        d.insert("PluginName".to_owned(), Value::str("x509pop"));
        d.insert("Fingerprint".to_owned(), Value::str("abcd"));
        d.insert("Subject".to_owned(), Value::Map(subject));
        d.insert("URISanSelectors".to_owned(), Value::Map(sans));
        d.insert(
            "ValidPrincipals".to_owned(),
            Value::strs(["a.example.org", "b"]),
        );
        Value::Map(d)
    }

    fn render(t: &str) -> Result<String, TemplateError> {
        Template::parse(t)?.execute(&data())
    }

    #[test]
    fn upstream_defaults_and_documented_examples_render() {
        assert_eq!(
            render("/{{ .PluginName }}/{{ .Fingerprint }}").unwrap(),
            "/x509pop/abcd"
        );
        assert_eq!(
            render("/{{ .PluginName}}/{{ .Fingerprint }}").unwrap(),
            "/x509pop/abcd"
        );
        assert_eq!(
            render("/cn/{{ .Subject.CommonName }}").unwrap(),
            "/cn/Node-1"
        );
        assert_eq!(
            render("/static/{{ index .ValidPrincipals 0 }}").unwrap(),
            "/static/a.example.org"
        );
        assert_eq!(
            render(r#"/dc/{{ index .URISanSelectors "datacenter" }}"#).unwrap(),
            "/dc/us-east"
        );
    }

    #[test]
    fn functions_and_pipelines() {
        assert_eq!(
            render("/{{ .Subject.CommonName | lower }}").unwrap(),
            "/node-1"
        );
        assert_eq!(
            render(r#"/{{ printf "%s-%s" .PluginName (upper .Fingerprint) }}"#).unwrap(),
            "/x509pop-ABCD"
        );
        assert_eq!(
            render(r#"/{{ .Fingerprint | trimPrefix "ab" }}  {{- " x " -}}  y"#).unwrap(),
            "/cd x y"
        );
        assert_eq!(render("/{{ trunc 2 .Fingerprint }}").unwrap(), "/ab");
        assert_eq!(
            render(r#"/{{ replace "-" "_" .Subject.CommonName }}"#).unwrap(),
            "/Node_1"
        );
    }

    #[test]
    fn missing_keys_unknown_functions_and_bad_syntax_are_errors() {
        assert!(render("/{{ .Nope }}").is_err());
        assert!(render("/{{ .Subject.Nope }}").is_err());
        assert!(render(r#"/{{ index .URISanSelectors "nope" }}"#).is_err());
        assert_eq!(
            Template::parse("/{{ nope .X }}").unwrap_err().to_string(),
            "function \"nope\" not defined"
        );
        assert!(Template::parse("/{{ .X ").is_err());
        assert!(Template::parse("/{{ if .X }}a{{ end }}").is_err());
        assert!(Template::parse("/{{ }}").is_err());
        assert!(Template::parse("/{{ (lower .X }}").is_err());
    }
}
