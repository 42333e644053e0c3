//! The `plugins { Type "name" { plugin_data { .. } } }` block both binaries read: walking the
//! shapes HCL and JSON give it, the keys every plugin block takes, and upstream's rules for
//! them (a plugin given twice, `enabled = false`, `plugin_data` or `plugin_data_file`,
//! `plugin_cmd` naming an external plugin). Each binary then interprets the declarations it
//! supports.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{ConfigError, de};

/// One enabled `Type "name" { }` declaration with its `plugin_data`, ready to interpret.
#[derive(Debug, Clone)]
pub struct PluginDeclaration {
    /// The plugin type, e.g. `KeyManager`.
    pub kind: String,
    /// The plugin name, e.g. `disk`.
    pub name: String,
    /// `plugin_data` (or the content of `plugin_data_file`); an empty object when absent.
    pub data: Value,
    /// The file errors in `data` are reported against: the config or the data file.
    data_file: String,
    /// Set when the block names an external plugin with `plugin_cmd`.
    pub external: Option<ExternalPlugin>,
}

/// Where an external plugin's configuration text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginData {
    /// `plugin_data` (possibly empty), fixed for the life of the process: a block (from HCL
    /// or JSON) is handed over as HCL text, as upstream re-prints it; a string as written.
    Fixed(String),
    /// `plugin_data_file`: read at start-up and again on every SIGUSR1, as upstream does.
    File(std::path::PathBuf),
}

impl PluginData {
    /// The configuration text as the plugin receives it.
    pub fn load(&self) -> std::io::Result<String> {
        match self {
            Self::Fixed(text) => Ok(text.clone()),
            Self::File(path) => std::fs::read_to_string(path),
        }
    }
}

/// One `Type "name" { plugin_cmd = .. }` declaration: a plugin binary speaking upstream's
/// plugin protocol (spire-plugin-sdk), hosted by `spire_common::plugin_host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPlugin {
    /// The plugin type (`NodeAttestor`): also go-plugin's magic cookie key and value.
    pub kind: String,
    /// The plugin name from the configuration.
    pub name: String,
    /// `plugin_cmd`: the binary, resolved against the working directory (never `PATH`).
    pub cmd: std::path::PathBuf,
    /// `plugin_args`.
    pub args: Vec<String>,
    /// `plugin_checksum`: the hex sha256 the binary must have, when set.
    pub checksum: Option<String>,
    /// `plugin_data` or `plugin_data_file`.
    pub data: PluginData,
}

impl PluginDeclaration {
    /// Deserializes `plugin_data` into the plugin's settings, refusing unknown keys with an
    /// error that names the block (`the plugin_data of KeyManager "disk"`).
    pub fn parse_data<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        parse_part(
            &self.data_file,
            &self.data,
            &format!("the plugin_data of {} {:?}", self.kind, self.name),
            &self.data_path(),
        )
    }

    /// `plugins.<Type>.<name>.plugin_data`, the key path errors about the data name.
    pub fn data_path(&self) -> String {
        format!("plugins.{}.{}.plugin_data", self.kind, self.name)
    }

    /// The file the data came from (the config file or `plugin_data_file`).
    pub fn data_file(&self) -> &str {
        &self.data_file
    }
}

/// The enabled plugin declarations of `plugins` (from `file`), in order. Unknown plugin types
/// (not in `known_types`), a type and name given twice, `plugin_cmd` and malformed blocks are
/// errors naming the block; `read_file` reads `plugin_data_file`.
pub fn enabled_plugins(
    file: &str,
    plugins: &Value,
    known_types: &[&str],
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Vec<PluginDeclaration>, ConfigError> {
    let mut declarations = Vec::new();
    collect_types(file, plugins, known_types, &mut declarations)?;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut enabled = Vec::new();
    for decl in declarations {
        let ident = (decl.kind.clone(), decl.name.clone());
        if seen.contains(&ident) {
            return Err(invalid(
                file,
                format!("plugins.{}", decl.kind),
                format!(
                    "plugin {} {:?} is configured more than once; keep one block",
                    decl.kind, decl.name
                ),
            ));
        }
        seen.push(ident);
        let label = format!("{} {:?}", decl.kind, decl.name);
        let body: PluginBody = parse_part(
            file,
            &decl.body,
            &label,
            &format!("plugins.{}.{}", decl.kind, decl.name),
        )?;
        if body.enabled == Some(false) {
            continue;
        }
        if let Some(cmd) = body.plugin_cmd.clone().filter(|c| !c.is_empty()) {
            enabled.push(external(file, decl, body, cmd, &label)?);
            continue;
        }
        let (data, data_source) = plugin_data(file, &decl, &body, read_file)?;
        enabled.push(PluginDeclaration {
            kind: decl.kind,
            name: decl.name,
            data,
            data_file: data_source.unwrap_or_else(|| file.to_owned()),
            external: None,
        });
    }
    Ok(enabled)
}

/// An external plugin's declaration: its data is handed to the plugin as text, unparsed
/// (the plugin validates it in `Configure`), and `plugin_data_file` is read when it starts.
fn external(
    file: &str,
    decl: Declaration,
    body: PluginBody,
    cmd: String,
    label: &str,
) -> Result<PluginDeclaration, ConfigError> {
    let key = format!("plugins.{}.{}", decl.kind, decl.name);
    let data = match (body.plugin_data, body.plugin_data_file) {
        (Some(data), Some(_)) if !data.is_null() => {
            return Err(invalid(
                file,
                key,
                format!(
                    "{label}: plugin_data and plugin_data_file are mutually exclusive; keep one"
                ),
            ));
        }
        (_, Some(path)) => PluginData::File(path.into()),
        (None | Some(Value::Null), None) => PluginData::Fixed(String::new()),
        (Some(Value::String(text)), None) => PluginData::Fixed(text),
        (Some(data), None) => PluginData::Fixed(super::hcl_print::to_hcl(&normalize_data(data))),
    };
    Ok(PluginDeclaration {
        external: Some(ExternalPlugin {
            kind: decl.kind.clone(),
            name: decl.name.clone(),
            cmd: cmd.into(),
            args: body.plugin_args,
            checksum: body.plugin_checksum.filter(|c| !c.is_empty()),
            data,
        }),
        kind: decl.kind,
        name: decl.name,
        data: Value::Object(Map::new()),
        data_file: file.to_owned(),
    })
}

/// Takes the one plugin of `kind` from `found`; none or several is an error that says what
/// to add (`example`) or remove.
pub fn exactly_one<T>(
    file: &str,
    kind: &str,
    mut found: Vec<T>,
    example: &str,
) -> Result<T, ConfigError> {
    if found.len() > 1 {
        return Err(invalid(
            file,
            format!("plugins.{kind}"),
            format!(
                "exactly one {kind} must be configured; found {}: keep one of them",
                found.len()
            ),
        ));
    }
    found.pop().ok_or_else(|| {
        invalid(
            file,
            format!("plugins.{kind}"),
            format!("exactly one {kind} must be configured; found none: add a {example} block"),
        )
    })
}

fn invalid(file: &str, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        path: path.into(),
        message: message.into(),
    }
}

/// One `Type "name" { }` declaration, before interpretation.
struct Declaration {
    kind: String,
    name: String,
    body: Value,
}

/// The keys every plugin block takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginBody {
    #[serde(default, deserialize_with = "de::opt_string")]
    plugin_cmd: Option<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    plugin_args: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    plugin_checksum: Option<String>,
    #[serde(default)]
    plugin_data: Option<Value>,
    #[serde(default, deserialize_with = "de::opt_string")]
    plugin_data_file: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    enabled: Option<bool>,
}

/// Reads `plugin_data` (a block, a string holding HCL/JSON, or absent) or `plugin_data_file`.
/// Returns the data and, for a data file, its name for error messages.
fn plugin_data(
    file: &str,
    decl: &Declaration,
    body: &PluginBody,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<(Value, Option<String>), ConfigError> {
    let key = format!("plugins.{}.{}", decl.kind, decl.name);
    let data = body.plugin_data.clone().unwrap_or(Value::Null);
    if let Some(path) = &body.plugin_data_file {
        if !data.is_null() {
            return Err(invalid(
                file,
                key,
                "plugin_data and plugin_data_file are mutually exclusive; keep one",
            ));
        }
        let text = read_file(path).map_err(|e| {
            invalid(
                file,
                format!("{key}.plugin_data_file"),
                format!("could not read {path:?}: {e}"),
            )
        })?;
        let value = super::parse_value(path, &text)?;
        return Ok((normalize_data(value), Some(path.clone())));
    }
    let data = match data {
        Value::String(text) => super::parse_value(&format!("{file} ({key}.plugin_data)"), &text)?,
        other => other,
    };
    Ok((normalize_data(data), None))
}

/// `plugin_data` may be absent, null, an object, or a one-element list (JSON forms).
fn normalize_data(value: Value) -> Value {
    match value {
        Value::Null => Value::Object(Map::new()),
        Value::Array(mut items) if items.len() == 1 => {
            normalize_data(items.pop().unwrap_or(Value::Null))
        }
        other => other,
    }
}

/// Deserializes part of the plugins block, rewriting error locations so they name the block
/// (`the plugin_data of KeyManager "disk"`) and the full key path.
pub fn parse_part<T: DeserializeOwned>(
    file: &str,
    value: &Value,
    label: &str,
    path: &str,
) -> Result<T, ConfigError> {
    use ConfigError as Core;
    super::from_value(file, value.clone()).map_err(|err| match err {
        Core::UnknownKey {
            file,
            key,
            expected,
            ..
        } => Core::UnknownKey {
            file,
            key,
            block: label.to_owned(),
            expected,
        },
        Core::Invalid {
            file,
            path: inner,
            message,
        } => Core::Invalid {
            file,
            path: if inner == "top level" {
                path.to_owned()
            } else {
                format!("{path}.{inner}")
            },
            message,
        },
        other => other,
    })
}

/// Walks `plugins`: `{ Type: {..} }` or a list of such objects (JSON forms).
fn collect_types(
    file: &str,
    plugins: &Value,
    known_types: &[&str],
    out: &mut Vec<Declaration>,
) -> Result<(), ConfigError> {
    match plugins {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| collect_types(file, item, known_types, out)),
        Value::Object(map) => {
            for (kind, named) in map {
                if !known_types.contains(&kind.as_str()) {
                    return Err(invalid(
                        file,
                        format!("plugins.{kind}"),
                        format!(
                            "unknown plugin type {kind:?}; plugin types are {}",
                            known_types.join(", ")
                        ),
                    ));
                }
                collect_names(file, kind, named, out)?;
            }
            Ok(())
        }
        _ => Err(invalid(
            file,
            "plugins",
            "plugins must be a block of Type \"name\" { } declarations",
        )),
    }
}

/// Walks one type: `{ name: body }`, `{ name: [body, ..] }` or a list of such objects.
fn collect_names(
    file: &str,
    kind: &str,
    named: &Value,
    out: &mut Vec<Declaration>,
) -> Result<(), ConfigError> {
    match named {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| collect_names(file, kind, item, out)),
        Value::Object(map) => {
            for (name, body) in map {
                match body {
                    Value::Array(bodies) => {
                        for b in bodies {
                            out.push(declaration(file, kind, name, b)?);
                        }
                    }
                    b => out.push(declaration(file, kind, name, b)?),
                }
            }
            Ok(())
        }
        _ => Err(invalid(
            file,
            format!("plugins.{kind}"),
            format!("write {kind} plugins as {kind} \"name\" {{ plugin_data {{ }} }}"),
        )),
    }
}

fn declaration(
    file: &str,
    kind: &str,
    name: &str,
    body: &Value,
) -> Result<Declaration, ConfigError> {
    let body = match body {
        Value::Null => Value::Object(Map::new()),
        Value::Object(_) => body.clone(),
        _ => {
            return Err(invalid(
                file,
                format!("plugins.{kind}.{name}"),
                format!(
                    "{kind} {name:?} must be a block: {kind} \"{name}\" {{ plugin_data {{ }} }}"
                ),
            ));
        }
    };
    Ok(Declaration {
        kind: kind.to_owned(),
        name: name.to_owned(),
        body,
    })
}
