//! Config errors in the one shape operators grep for: `file:line: key: what is wrong`.
//! Messages describe the problem, never the offending value, so a secret pasted into the
//! wrong key is not echoed to a terminal or a log.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// All the errors found in one file; validation keeps going after the first so an operator
/// fixes everything in one round trip.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Maps byte offsets in the source text to 1-based line numbers.
pub struct SourceMap<'a> {
    pub file: &'a Path,
    text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Turns a TOML syntax or schema error into our shape. The parser knows the span but not
    /// the dotted key, so the key is recovered from the text: the nearest table header above
    /// the span plus the key on the span's line.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let key = span
            .as_ref()
            .map(|s| self.key_path_at(s.start))
            .unwrap_or_default();
        // toml's message is one line of prose; its Display adds a source excerpt, which could
        // contain a secret value, so only the bare message is kept.
        self.error(span, &key, redact_quoted(err.message().trim()))
    }

    fn key_path_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = self.text[line_start..line_end].trim();
        let mut table = String::new();
        let mut routes_seen = 0usize;
        for l in self.text[..line_start].lines() {
            let l = l.trim();
            if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                let name = name.trim();
                table = if name == "route" {
                    routes_seen += 1;
                    format!("route[{}]", routes_seen - 1)
                } else {
                    name.to_string()
                };
            } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
                table = name.trim().to_string();
            }
        }
        if line.starts_with('[') {
            return line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        let key = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }
}

/// serde quotes offending string values (`invalid type: string "s3cr3t", expected ...`)
/// and puts field names in backticks; the quoted values go, the names stay.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for c in message.chars() {
        match (c, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("(value hidden)");
            }
            ('"', true) => in_quote = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_redacted_but_names_kept() {
        assert_eq!(
            redact_quoted("invalid type: string \"hunter2\", expected a sequence"),
            "invalid type: string (value hidden), expected a sequence"
        );
        assert_eq!(
            redact_quoted("unknown field `lisen`, expected `listen`"),
            "unknown field `lisen`, expected `listen`"
        );
    }

    #[test]
    fn keys_are_recovered_from_tables_and_routes() {
        let text = "[server]\nlisten = 1\n\n[[route]]\npath = 1\n[[route]]\nupstream = 2\n";
        let map = SourceMap::new(Path::new("c.toml"), text);
        assert_eq!(
            map.key_path_at(text.find("listen").unwrap()),
            "server.listen"
        );
        assert_eq!(map.key_path_at(text.find("path").unwrap()), "route[0].path");
        assert_eq!(
            map.key_path_at(text.find("upstream").unwrap()),
            "route[1].upstream"
        );
    }
}
