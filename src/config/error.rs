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
        let message = err.message().trim().to_string();
        match err.span() {
            Some(span) => self.at(span, message),
            None => self.whole_file(message),
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
        let line_start = self.source[..offset].rfind('\n').map_or(0, |p| p + 1);
        let line_end = self.source[offset..]
            .find('\n')
            .map_or(self.source.len(), |p| offset + p);
        let line = self.source[line_start..line_end].trim();
        let key = if line.starts_with('[') {
            ""
        } else {
            line.split('=').next().unwrap_or("").trim()
        };
        let table = self.table_at(line_start);
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }

    fn table_at(&self, line_start: usize) -> String {
        let mut current = String::new();
        let mut counts: Vec<(String, usize)> = Vec::new();
        for line in self.source[..line_start].lines() {
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
}
