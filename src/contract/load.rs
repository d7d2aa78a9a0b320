//! Reading a contract file: YAML into the [`model`](super::model) with positions, and the
//! [`Diagnostic`] type every contract problem is reported as.

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::Contract;

/// How bad a finding is: errors fail `check`, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem, at a 1-based line and column of a file (0 when the position is unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {severity}: {}", self.file.display(), self.line.max(1), self.column.max(1), self.message)
    }
}

/// A contract file read into memory.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// The file's text; on failure the diagnostic, and whether the file could not be read at all
    /// (true) rather than read and found not to be text (false).
    pub fn read(path: &Path) -> Result<Source, (Diagnostic, bool)> {
        let bytes = std::fs::read(path).map_err(|e| {
            let d = Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                severity: Severity::Error,
                message: format!("cannot read contract: {e}"),
            };
            (d, true)
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, column) = position_of_byte(&e.as_bytes()[..e.utf8_error().valid_up_to()]);
            let d = Diagnostic {
                file: path.to_path_buf(),
                line,
                column,
                severity: Severity::Error,
                message: "contract is not valid UTF-8".into(),
            };
            (d, false)
        })?;
        Ok(Source { path: path.to_path_buf(), text })
    }

    /// Parses the YAML; a structural problem (syntax, unknown field, wrong type) is one diagnostic.
    pub fn parse(&self) -> Result<Contract, Diagnostic> {
        serde_saphyr::from_str::<Contract>(&self.text).map_err(|e| {
            let (line, column, message) = match e.location() {
                Some(l) => (l.line() as u32, l.column() as u32, plain_message(&e)),
                // Rare (serde itself reports a field twice that YAML keys spelled differently, e.g.
                // behind a tag): say so rather than point at a made-up place.
                None => (1, 1, format!("{} (the YAML parser gave no position)", plain_message(&e))),
            };
            Diagnostic { file: self.path.clone(), line, column, severity: Severity::Error, message }
        })
    }

    pub fn diagnostic(&self, at: &serde_saphyr::Location, severity: Severity, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.path.clone(),
            line: at.line() as u32,
            column: at.column() as u32,
            severity,
            message: message.into(),
        }
    }
}

/// The parser's message without its source snippet and position (we print our own).
fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid contract").trim();
    // Drop a trailing " at line X, column Y" the message may carry.
    let first = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    humanize(first)
}

/// Rewords the parser's messages that speak in Rust types rather than contract terms.
fn humanize(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest);
        return format!("duplicate key `{key}`; each key may appear once");
    }
    if message.starts_with("invalid u32") || message.starts_with("invalid u64") {
        return "expected a whole number".into();
    }
    if message.contains("untagged enum FromDef") {
        return "expected a source (e.g. `request.route`) or a list of sources".into();
    }
    message.to_string()
}

fn position_of_byte(prefix: &[u8]) -> (u32, u32) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
    let column = prefix.iter().rev().take_while(|&&b| b != b'\n').count() as u32 + 1;
    (line, column)
}
