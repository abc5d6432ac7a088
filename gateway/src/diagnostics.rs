//! Reading TOML with every error reported at once, each with its file, line and key.
//!
//! serde stops at the first error. To report them all, [`parse_all`] deserializes, notes the error
//! with its place, comments the offending lines out of a scratch copy of the text and tries again,
//! until the text deserializes or nothing more can be taken out. Semantic checks then add their
//! own errors through [`Diagnostics::at_key`], which finds a key's line by its path.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// The key (dotted path) the problem is about, when known.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one or more files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} error(s) in configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Errors collected for one file, with the text to find line numbers in.
#[derive(Debug)]
pub struct Diagnostics<'a> {
    file: PathBuf,
    text: &'a str,
    pub errors: Vec<ConfigError>,
}

/// How many errors one file may report before we stop looking (a file of garbage).
const MAX_ERRORS: usize = 50;

impl<'a> Diagnostics<'a> {
    pub fn new(file: &Path, text: &'a str) -> Self {
        Diagnostics {
            file: file.to_owned(),
            text,
            errors: Vec::new(),
        }
    }

    /// Records an error about `key` (a dotted path such as `mqtt.subscriptions.1.decoder`;
    /// numeric parts index arrays of tables), at the line where that key is written, or the
    /// nearest enclosing table's line when the key is absent.
    pub fn at_key(&mut self, key: &str, message: impl Into<String>) {
        let line = locate(self.text, key);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Deserializes `text`, collecting every structural error (syntax, unknown key, wrong type,
/// missing key). Returns the value when there was none, and the diagnostics either way so the
/// caller can add semantic errors.
pub fn parse_all<'a, T: DeserializeOwned>(file: &Path, text: &'a str) -> (Option<T>, Diagnostics<'a>) {
    let mut diags = Diagnostics::new(file, text);
    let mut scratch: Vec<String> = text.lines().map(str::to_owned).collect();
    loop {
        let joined = scratch.join("\n");
        match toml::from_str::<T>(&joined) {
            Ok(value) => {
                return if diags.errors.is_empty() {
                    (Some(value), diags)
                } else {
                    (None, diags)
                };
            }
            Err(e) => {
                let message = e.message().trim().to_owned();
                let Some(span) = e.span() else {
                    diags.errors.push(ConfigError {
                        file: file.to_owned(),
                        line: 0,
                        key: String::new(),
                        message,
                    });
                    return (None, diags);
                };
                let (first, last) = line_range(&joined, span.clone());
                let key = key_at(&scratch, first, &joined[span.clone()]);
                diags.errors.push(ConfigError {
                    file: file.to_owned(),
                    line: first + 1,
                    key,
                    message,
                });
                if diags.errors.len() >= MAX_ERRORS || !comment_out(&mut scratch, first, last) {
                    return (None, diags);
                }
            }
        }
    }
}

/// 0-based first and last line covered by a byte span.
fn line_range(text: &str, span: std::ops::Range<usize>) -> (usize, usize) {
    let start = span.start.min(text.len());
    let end = span.end.max(span.start).min(text.len());
    let first = text[..start].matches('\n').count();
    let last = first + text[start..end].trim_end_matches('\n').matches('\n').count();
    (first, last)
}

/// Comments out lines `first..=last`; a table header takes its whole table with it, so its keys
/// do not fall into the table above. Returns false when nothing changed (no progress possible).
fn comment_out(lines: &mut [String], first: usize, mut last: usize) -> bool {
    if lines.get(first).is_some_and(|l| l.trim_start().starts_with('[')) {
        last = first;
        while last + 1 < lines.len() && !lines[last + 1].trim_start().starts_with('[') {
            last += 1;
        }
    }
    let mut changed = false;
    for line in lines.iter_mut().take(last + 1).skip(first) {
        if !line.trim_start().starts_with('#') && !line.trim().is_empty() {
            line.insert(0, '#');
            changed = true;
        }
    }
    changed
}

/// The dotted key an error on line `line` is about: the enclosing table header plus the key
/// written on that line (or the span's own text when it is a key).
fn key_at(lines: &[String], line: usize, span_text: &str) -> String {
    let mut table = String::new();
    for l in lines.iter().take(line + 1).rev() {
        let t = l.trim();
        if t.starts_with('[') && !t.starts_with('#') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            break;
        }
    }
    let this = lines.get(line).map(|l| l.trim()).unwrap_or("");
    if this.starts_with('[') {
        return table;
    }
    let key = match this.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_owned(),
        None => span_text.trim().trim_matches('"').to_owned(),
    };
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Finds the 1-based line of a dotted key path by a light scan of the text: table headers,
/// arrays of tables (counted for numeric path parts) and `key =` lines. Falls back to the
/// deepest part found, then to 0.
pub fn locate(text: &str, path: &str) -> usize {
    let parts: Vec<&str> = path.split('.').collect();
    // Split the path into the table part (names and indexes) and a trailing key.
    let mut best = 0;
    let mut current_table: Vec<String> = Vec::new();
    let mut array_counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.starts_with("[[") {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            let idx = array_counts.entry(name.clone()).and_modify(|c| *c += 1).or_insert(0);
            current_table = name.split('.').map(str::to_owned).collect();
            current_table.push(idx.to_string());
        } else if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            current_table = name.split('.').map(str::to_owned).collect();
        } else if let Some((k, _)) = t.split_once('=') {
            if t.starts_with('#') {
                continue;
            }
            let mut full = current_table.clone();
            full.extend(k.trim().trim_matches('"').split('.').map(str::to_owned));
            if full.len() == parts.len() && full.iter().zip(&parts).all(|(a, b)| a == b) {
                return n + 1;
            }
            continue;
        } else {
            continue;
        }
        // A header: remember it when it is a prefix of the path.
        if current_table.len() <= parts.len() && current_table.iter().zip(&parts).all(|(a, b)| a == b) {
            best = n + 1;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        inner: Inner,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        a: u32,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
    }

    #[test]
    fn reports_every_structural_error_with_lines() {
        let text = "name = \"x\"\nport = \"eighty\"\ncolour = 3\n[inner]\na = -1\nb = 2\n[[items]]\nid = 7\n";
        let (value, diags) = parse_all::<Demo>(Path::new("demo.toml"), text);
        assert!(value.is_none());
        let lines: Vec<(usize, &str)> = diags.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(lines.contains(&(2, "port")), "{lines:?}");
        assert!(lines.contains(&(3, "colour")), "{lines:?}");
        assert!(lines.contains(&(5, "inner.a")), "{lines:?}");
        assert!(lines.contains(&(6, "inner.b")), "{lines:?}");
        assert!(lines.contains(&(8, "items.id")), "{lines:?}");
    }

    #[test]
    fn locates_keys_in_arrays_of_tables() {
        let text = "[mqtt]\nmode = \"x\"\n[[mqtt.subscriptions]]\nfilter = \"a\"\n[[mqtt.subscriptions]]\nfilter = \"b\"\ndecoder = \"c\"\n";
        assert_eq!(locate(text, "mqtt.mode"), 2);
        assert_eq!(locate(text, "mqtt.subscriptions.1.decoder"), 7);
        assert_eq!(locate(text, "mqtt.subscriptions.1.profile"), 5);
        assert_eq!(locate(text, "nothing.here"), 0);
    }
}
