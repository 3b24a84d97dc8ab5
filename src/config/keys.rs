//! The dotted key that a byte of a config file belongs to, read from the parsed document, so
//! that an error inside a multi-line array, an inline table or a `[rules.when]` table names
//! the key it is about.

use std::ops::Range;
use toml_edit::{ImDocument, Item, Table, Value};

/// The deepest key whose name or value holds `offset`, like `rules[1].when.status`; `None`
/// when the text is not valid TOML (the caller then reads the lines instead).
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let document = ImDocument::parse(source).ok()?;
    let mut found = None;
    in_table(document.as_table(), "", offset, &mut found);
    found
}

fn join(prefix: &str, key: &str) -> String {
    match prefix.is_empty() {
        true => key.to_string(),
        false => format!("{prefix}.{key}"),
    }
}

fn holds(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|span| span.contains(&offset))
}

fn in_table(table: &Table, path: &str, offset: usize, found: &mut Option<String>) {
    if holds(table.span(), offset) {
        *found = Some(path.to_string());
    }
    for (name, item) in table.iter() {
        let path = join(path, name);
        if holds(table.key(name).and_then(|key| key.span()), offset) {
            *found = Some(path.clone());
        }
        match item {
            Item::Table(table) => in_table(table, &path, offset, found),
            Item::ArrayOfTables(tables) => {
                for (index, table) in tables.iter().enumerate() {
                    in_table(table, &format!("{path}[{index}]"), offset, found);
                }
            }
            Item::Value(value) => in_value(value, &path, offset, found),
            Item::None => {}
        }
    }
}

/// Values of an array are named by the array's key, but tables in an array by their index.
fn in_value(value: &Value, path: &str, offset: usize, found: &mut Option<String>) {
    if !holds(value.span(), offset) {
        return;
    }
    *found = Some(path.to_string());
    match value {
        Value::InlineTable(table) => {
            for (name, value) in table.iter() {
                let path = join(path, name);
                if holds(table.key(name).and_then(|key| key.span()), offset) {
                    *found = Some(path.clone());
                }
                in_value(value, &path, offset, found);
            }
        }
        Value::Array(values) => {
            for (index, value) in values.iter().enumerate() {
                if value.is_inline_table() {
                    in_value(value, &format!("{path}[{index}]"), offset, found);
                }
            }
        }
        _ => {}
    }
}
