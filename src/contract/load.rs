//! Reading a contract file: YAML into the [`model`](super::model) with positions, and the
//! [`Diagnostic`] type every contract problem is reported as.

use std::path::{Path, PathBuf};

use super::model::{self, Contract};
use super::{shape, yaml};

/// A parsed contract file: the contract when serde could read it (perhaps without entries that
/// are structural problems), and those problems.
pub struct Parsed {
    pub contract: Option<Contract>,
    pub diagnostics: Vec<Diagnostic>,
    /// (line, column) ranges where findings about the partially read contract would only be
    /// consequences of leaving a wrong value out.
    pub unreliable: Vec<((u32, u32), (u32, u32))>,
}

impl Parsed {
    /// Whether a finding at `line:column` of the partially read contract can be trusted.
    pub fn reliable(&self, line: u32, column: u32) -> bool {
        !self.unreliable.iter().any(|&(start, end)| (line, column) >= start && (line, column) <= end)
    }
}

pub use super::findings::Severity;

/// A problem in a contract file, at a 1-based line and column (0 when the position is unknown).
pub type Diagnostic = super::findings::Finding;

/// A contract file read into memory.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// The file's text; on failure the diagnostic, and whether the file could not be read at all
    /// (true) rather than read and found not to be text (false).
    #[allow(clippy::result_large_err)] // once per file, on the way to an error message
    pub fn read(path: &Path) -> Result<Source, (Diagnostic, bool)> {
        let bytes = std::fs::read(path).map_err(|e| {
            let d = Diagnostic::at(path.to_path_buf(), 0, 0, Severity::Error, format!("cannot read contract: {e}"));
            (d, true)
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, column) = position_of_byte(&e.as_bytes()[..e.utf8_error().valid_up_to()]);
            let d = Diagnostic::at(path.to_path_buf(), line, column, Severity::Error, "contract is not valid UTF-8");
            (d, false)
        })?;
        Ok(Source { path: path.to_path_buf(), text })
    }

    /// Parses the YAML. Every structural problem (unknown key, wrong kind of value, bad choice,
    /// missing key) comes at once, each at its position; the contract is still read when the
    /// offending entries can be left out, so the semantic checks run on the rest of the file.
    pub fn parse(&self) -> Parsed {
        let first = match serde_saphyr::from_str::<Contract>(&self.text) {
            Ok(contract) => return Parsed { contract: Some(contract), diagnostics: Vec::new(), unreliable: Vec::new() },
            Err(e) => self.serde_diagnostic(&e),
        };
        let root = match yaml::parse(&self.text) {
            Ok(Some(root)) => root,
            // A syntax error: the YAML parser's own words ("did not find expected ',' or ']'"),
            // which say more than serde's.
            Err(e) => {
                let d = Diagnostic::at(self.path.clone(), e.at.line, e.at.column, Severity::Error, e.message);
                return Parsed { contract: None, diagnostics: vec![d], unreliable: Vec::new() };
            }
            Ok(None) => return Parsed { contract: None, diagnostics: vec![first], unreliable: Vec::new() },
        };
        let problems = shape::check(&root, &model::json_schema(), &self.text);
        if problems.is_empty() {
            return Parsed { contract: None, diagnostics: vec![first], unreliable: Vec::new() };
        }
        let diagnostics: Vec<Diagnostic> = problems
            .iter()
            .map(|p| Diagnostic::at(self.path.clone(), p.at.line, p.at.column, Severity::Error, p.message.clone()))
            .collect();
        // Without the offending entries (blanked to spaces, so every position stays where it was),
        // does the rest read? Then its semantic checks can run too.
        let mut contract = None;
        if problems.iter().all(|p| p.blank.is_some()) {
            let mut text = self.text.clone().into_bytes();
            for (start, end) in problems.iter().filter_map(|p| p.blank) {
                blank(&mut text, start, end);
            }
            let text = String::from_utf8(text).expect("blanking keeps UTF-8");
            // If it still does not read (something the shape pass did not see, or what leaving
            // the entries out did to the file), the problems above are reported alone and the
            // rest comes once they are fixed.
            contract = serde_saphyr::from_str::<Contract>(&text).ok();
        }
        let unreliable = problems.iter().flat_map(|p| p.scope.iter()).map(|(s, e)| ((s.line, s.column), (e.line, e.column))).collect();
        Parsed { contract, diagnostics, unreliable }
    }

    fn serde_diagnostic(&self, e: &serde_saphyr::Error) -> Diagnostic {
        let (line, column, message) = match e.location() {
            Some(l) => (l.line() as u32, l.column() as u32, plain_message(e)),
            // Rare (serde itself reports a field twice that YAML keys spelled differently, e.g.
            // behind a tag): say so rather than point at a made-up place.
            None => (1, 1, format!("{} (the YAML parser gave no position)", plain_message(e))),
        };
        Diagnostic::at(self.path.clone(), line, column, Severity::Error, message)
    }

    pub fn diagnostic(&self, at: &serde_saphyr::Location, severity: Severity, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.path.clone(), at.line() as u32, at.column() as u32, severity, message.into())
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

/// Replaces every character of `text[start..end]` but line breaks by a space: the same lines and
/// columns, without what was there.
fn blank(text: &mut [u8], start: usize, end: usize) {
    let end = end.min(text.len());
    let mut i = start.min(end);
    while i < end {
        let b = text[i];
        let width = match b {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        if b == b'\n' || b == b'\r' {
            i += 1;
            continue;
        }
        // As many spaces as the character had bytes, so later byte offsets stay put; a column
        // after it on the same line can move, which only a flow collection would notice.
        text[i..(i + width).min(end)].fill(b' ');
        i += width;
    }
}

fn position_of_byte(prefix: &[u8]) -> (u32, u32) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
    let column = prefix.iter().rev().take_while(|&&b| b != b'\n').count() as u32 + 1;
    (line, column)
}
