//! What HCL v1 (upstream's config parser) accepts as a value and HCL v2 (hcl-rs) reads as
//! something else: a bare word is a variable to HCL v2 but an error to HCL v1, and so are
//! function calls, operators, conditionals and `for` expressions. Finding the first such
//! value lets the loader refuse it the way upstream does instead of storing its source text.

use std::ops::Range;

use hcl::edit::Span;
use hcl::edit::expr::{Expression, ObjectKey, UnaryOperator};
use hcl::edit::structure::{Body, Structure};

/// A value HCL v1 would refuse, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NonLiteral {
    /// The key it is the value of, as a path (`server.data_dir`,
    /// `plugins.DataStore "sql".plugin_data.database_type`, `list[1]`).
    pub(super) key: String,
    /// Its bytes in the parsed text.
    pub(super) span: Range<usize>,
    /// Where it starts in the parsed text.
    pub(super) offset: usize,
    /// The bare word, when that is what it is.
    pub(super) bare_word: Option<String>,
}

impl NonLiteral {
    /// The error text, upstream-style (`At line:column: ...`), with the fix.
    pub(super) fn message(&self, line: usize, column: usize, shown: &str) -> String {
        let key = &self.key;
        match &self.bare_word {
            Some(word) => format!(
                "At {line}:{column}: {key} = {word}: a bare word is not a value; \
                 put it in double quotes: {key} = \"{word}\""
            ),
            None => format!(
                "At {line}:{column}: {key} = {shown}: HCL takes only literal values here \
                 (quoted strings, numbers, true/false, lists, objects and heredocs), \
                 not expressions; put the value in double quotes"
            ),
        }
    }
}

/// The first value in `body`, in document order, that HCL v1 would not parse.
pub(super) fn first_non_literal(body: &Body) -> Option<NonLiteral> {
    in_body(body, "")
}

fn in_body(body: &Body, prefix: &str) -> Option<NonLiteral> {
    body.iter().find_map(|structure| match structure {
        Structure::Attribute(attribute) => {
            in_expression(&attribute.value, &join(prefix, attribute.key.as_str()))
        }
        Structure::Block(block) => {
            let mut path = join(prefix, block.ident.as_str());
            for label in &block.labels {
                path.push_str(&format!(" {:?}", label.as_str()));
            }
            in_body(&block.body, &path)
        }
    })
}

fn in_expression(expression: &Expression, key: &str) -> Option<NonLiteral> {
    let found = |bare_word: Option<String>| {
        let span = expression.span().unwrap_or_default();
        Some(NonLiteral {
            key: key.to_owned(),
            offset: span.start,
            span,
            bare_word,
        })
    };
    match expression {
        Expression::Bool(_)
        | Expression::Number(_)
        | Expression::String(_)
        | Expression::StringTemplate(_)
        | Expression::HeredocTemplate(_) => None,
        // A negative number.
        Expression::UnaryOp(op)
            if *op.operator.value() == UnaryOperator::Neg
                && matches!(op.expr, Expression::Number(_)) =>
        {
            None
        }
        Expression::Array(array) => array
            .iter()
            .enumerate()
            .find_map(|(i, value)| in_expression(value, &format!("{key}[{i}]"))),
        Expression::Object(object) => object.iter().find_map(|(object_key, value)| {
            let name = match object_key {
                ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                ObjectKey::Expression(Expression::String(s)) => s.as_str().to_owned(),
                ObjectKey::Expression(other) => {
                    if let Some(found) = in_expression(other, key) {
                        return Some(found);
                    }
                    other.to_string()
                }
            };
            in_expression(value.expr(), &join(key, &name))
        }),
        // `null` is a bare word to HCL v1 too.
        Expression::Null(_) => found(Some("null".to_owned())),
        Expression::Variable(word) => found(Some(word.as_str().to_owned())),
        _ => found(None),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
