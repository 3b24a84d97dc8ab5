//! Config errors that name the file, the line and column, and the key at fault.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (e.g. the file is missing).
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `routes[1].upstream`; empty when unknown.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte spans of one TOML source into errors with line, column and key path.
pub struct Locator<'a> {
    pub file: &'a Path,
    pub source: &'a str,
}

/// serde's names for the types it expected, in the config's words.
fn plain_words(message: &str) -> String {
    let mut text = message.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ] {
        text = text.replace(rust, plain);
    }
    // `workers = "2"`: a number in quotes is a string to TOML.
    if text.starts_with("invalid type: string") && text.contains("expected a whole number") {
        text.push_str(" (write the number without quotes)");
    }
    // `listen = 8080`, `name = 42`: TOML strings need their quotes.
    if text.starts_with("invalid type: integer") || text.starts_with("invalid type: floating") {
        text = text.replace(
            "expected a string",
            "expected a string (write the value in quotes)",
        );
    }
    if let Some(at) = text.find("expected struct Raw") {
        let end = text[at..].find(['\n', ',']).map_or(text.len(), |e| at + e);
        text.replace_range(at..end, "expected a table");
    }
    text
}

impl Locator<'_> {
    pub fn whole_file(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: message.into(),
        }
    }

    /// An error at `span`, with the key path worked out from the source text.
    pub fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_column(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: self.key_path(span.start),
            message: message.into(),
        }
    }

    /// An error at `span` whose key path the caller knows better than the text does.
    pub fn at_key(
        &self,
        span: Range<usize>,
        key: String,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            key,
            ..self.at(span, message)
        }
    }

    pub fn from_toml(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim();
        match err.span() {
            Some(span) if message.is_empty() => {
                let message = self.syntax_message(span.start);
                self.at(span, message)
            }
            Some(span) => {
                let mut err = self.at(span, plain_words(message));
                if message.starts_with("invalid type: map, expected a sequence") {
                    err.message += &format!(
                        " (write each entry as [[{}]], an array of tables, not [{0}])",
                        err.key
                    );
                }
                err
            }
            None if message.is_empty() => self.whole_file("invalid TOML"),
            None => self.whole_file(message),
        }
    }

    /// A message of our own for a syntax error the TOML parser gives none for (it does so for a
    /// stray carriage return, for one), from the character found where the error is.
    fn syntax_message(&self, offset: usize) -> String {
        let offset = offset.min(self.source.len());
        let rest = self.source.get(offset..).unwrap_or("");
        match rest.chars().next() {
            Some('\r') if !rest.starts_with("\r\n") => {
                "invalid TOML: a carriage return must be followed by a line feed".to_string()
            }
            Some(c) if c.is_control() && c != '\n' => {
                format!(
                    "invalid TOML: control character U+{:04X} is not allowed here",
                    u32::from(c)
                )
            }
            Some(c) => format!("invalid TOML: unexpected `{}`", c.escape_debug()),
            None => "invalid TOML: unexpected end of file".to_string(),
        }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = &self.source.as_bytes()[..offset];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        let column = self.source[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// `table.key` for the line holding `offset`: the nearest `[table]` or `[[table]]` header
    /// above it (with the array index counted), and the key written before `=` on that line.
    fn key_path(&self, offset: usize) -> String {
        let offset = offset.min(self.source.len());
        if let Some(key) = super::keys::key_at(self.source, offset) {
            return key;
        }
        let line_start = self.source[..offset].rfind('\n').map_or(0, |p| p + 1);
        let line_end = self.source[offset..]
            .find('\n')
            .map_or(self.source.len(), |p| offset + p);
        let line = self.source[line_start..line_end].trim();
        // On a header line the error belongs to the table that line opens, not to the one
        // above it, so the header itself is counted.
        let (key, table) = if line.starts_with('[') {
            ("", self.table_at(line_end))
        } else {
            (
                line.split('=').next().unwrap_or("").trim(),
                self.table_at(line_start),
            )
        };
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }

    /// The table open at `end`: the last `[table]` or `[[table]]` header before it.
    fn table_at(&self, end: usize) -> String {
        let mut current = String::new();
        let mut counts: Vec<(String, usize)> = Vec::new();
        for line in self.source[..end].lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
                let name = name.trim().to_string();
                let index = match counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => {
                        *count += 1;
                        *count
                    }
                    None => {
                        counts.push((name.clone(), 0));
                        0
                    }
                };
                current = format!("{name}[{index}]");
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
                current = name.trim().to_string();
            }
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_follow_tables_and_arrays() {
        let source =
            "[server]\nlisten = \"x\"\n\n[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n";
        let locator = Locator {
            file: Path::new("f.toml"),
            source,
        };
        let at = |needle: &str| {
            let start = source.rfind(needle).unwrap();
            locator.at(start..start + 1, "m")
        };
        let err = at("\"x\"");
        assert_eq!(
            (err.line, err.column, err.key.as_str()),
            (2, 10, "server.listen")
        );
        let err = at("\"b\"");
        assert_eq!((err.line, err.key.as_str()), (7, "routes[1].name"));
        assert_eq!(err.to_string(), "f.toml:7:8: key `routes[1].name`: m");
    }

    #[test]
    fn a_header_line_names_its_own_table() {
        let source = "[limits]\nuri = 1\n[server.tls]\n[[routes]]\n[[routes]]\n";
        let locator = Locator {
            file: Path::new("f.toml"),
            source,
        };
        let key_on = |needle: &str| {
            let start = source.rfind(needle).unwrap();
            locator.at(start..start + 1, "m").key
        };
        assert_eq!(key_on("[server.tls]"), "server.tls");
        assert_eq!(key_on("[[routes]]"), "routes[1]");
        assert_eq!(key_on("uri"), "limits.uri");
    }

    #[test]
    fn syntax_errors_without_a_message_get_one() {
        let locator = Locator {
            file: Path::new("f.toml"),
            source: "a\rb\0",
        };
        assert!(locator.syntax_message(1).contains("carriage return"));
        assert!(locator.syntax_message(3).contains("U+0000"));
        assert!(locator.syntax_message(9).contains("end of file"));
    }
}
