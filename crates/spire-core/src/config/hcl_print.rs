//! Prints a `plugin_data` value as HCL text, the form upstream hands to external plugins:
//! its catalog re-prints the block's syntax tree with hashicorp/hcl's printer, so plugins
//! (which decode with `hcl.Decode`) always receive HCL, whether the config file was HCL or
//! JSON. Our parser keeps values, not syntax, so the layout is rebuilt: scalars and lists
//! as attributes, objects as blocks, an object whose members are all objects as labeled
//! blocks (`clusters "blue" { }`, which `hcl:",key"` fields need), a list of objects as
//! repeated blocks. hcl v1 decodes these the same as upstream's text.

use serde_json::{Map, Value};

/// The HCL text of `data`'s members (no surrounding braces), items separated by a blank line
/// and `=` aligned within runs of attributes, as hcl's printer lays them out. An empty or
/// null value gives the empty string.
pub fn to_hcl(data: &Value) -> String {
    match data {
        Value::Object(map) => {
            let mut out = String::new();
            body(map, 0, &mut out);
            out.trim_end().to_owned()
        }
        Value::Null => String::new(),
        other => scalar_or_list(other),
    }
}

/// One printed item of a body.
enum Item {
    Attribute(String, String),
    Block(String),
}

fn body(map: &Map<String, Value>, depth: usize, out: &mut String) {
    let mut items = Vec::new();
    for (key, value) in map {
        collect(&[key_text(key)], value, depth, &mut items);
    }
    let indent = "  ".repeat(depth);
    // At the top every item stands alone; inside a block, runs of attributes are grouped
    // with their `=` aligned, as hcl's printer does.
    let mut groups: Vec<Vec<&Item>> = Vec::new();
    for item in &items {
        let joins = depth > 0
            && matches!(item, Item::Attribute(..))
            && groups
                .last()
                .and_then(|g| g.last())
                .is_some_and(|last| matches!(last, Item::Attribute(..)));
        match groups.last_mut() {
            Some(group) if joins => group.push(item),
            _ => groups.push(vec![item]),
        }
    }
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let width = group
            .iter()
            .map(|item| match item {
                Item::Attribute(k, _) => k.chars().count(),
                Item::Block(_) => 0,
            })
            .max()
            .unwrap_or(0);
        for item in group {
            match item {
                Item::Block(text) => out.push_str(text),
                Item::Attribute(key, value) => {
                    let pad = " ".repeat(width - key.chars().count());
                    out.push_str(&format!("{indent}{key}{pad} = {value}\n"));
                }
            }
        }
    }
}

fn collect(keys: &[String], value: &Value, depth: usize, items: &mut Vec<Item>) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() && map.values().all(Value::is_object) => {
            for (label, inner) in map {
                let mut labeled = keys.to_vec();
                labeled.push(quoted(label));
                collect(&labeled, inner, depth, items);
            }
        }
        Value::Object(map) => items.push(Item::Block(block(keys, map, depth))),
        Value::Array(list) if !list.is_empty() && list.iter().all(Value::is_object) => {
            for inner in list {
                if let Value::Object(map) = inner {
                    items.push(Item::Block(block(keys, map, depth)));
                }
            }
        }
        other => items.push(Item::Attribute(keys.join(" "), scalar_or_list(other))),
    }
}

fn block(keys: &[String], map: &Map<String, Value>, depth: usize) -> String {
    let indent = "  ".repeat(depth);
    let mut inner = String::new();
    body(map, depth + 1, &mut inner);
    if inner.is_empty() {
        format!("{indent}{} {{}}\n", keys.join(" "))
    } else {
        format!("{indent}{} {{\n{inner}{indent}}}\n", keys.join(" "))
    }
}

/// A value in attribute position; objects inside lists are printed as `{ k = v }` literals.
fn scalar_or_list(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted(s),
        Value::Array(list) => {
            let items: Vec<String> = list.iter().map(scalar_or_list).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {}", key_text(k), scalar_or_list(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// A key as an identifier when hcl accepts it bare, quoted otherwise.
fn key_text(key: &str) -> String {
    let bare = key
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if bare { key.to_owned() } else { quoted(key) }
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_labels_lists_and_scalars_print_as_upstreams_printer_lays_them_out() {
        let data = json!({
            "output": "/tmp/x",
            "count": 3,
            "labels": ["a", "quote\"d"],
            "clusters": {"blue": {"audience": ["spire"], "enabled": true}},
            "nested": {"depth": 2, "inner": [{"name": "a"}, {"name": "b"}]},
            "env": {"HOME": "/root", "with.dot": "x"},
        });
        assert_eq!(
            to_hcl(&data),
            r#"clusters "blue" {
  audience = ["spire"]
  enabled  = true
}

count = 3

env {
  HOME       = "/root"
  "with.dot" = "x"
}

labels = ["a", "quote\"d"]

nested {
  depth = 2

  inner {
    name = "a"
  }

  inner {
    name = "b"
  }
}

output = "/tmp/x""#
        );
    }

    #[test]
    fn empty_data_is_empty_text() {
        assert_eq!(to_hcl(&json!({})), "");
        assert_eq!(to_hcl(&Value::Null), "");
    }
}
