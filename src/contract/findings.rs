//! What `check`, `verify` and `diff` find: one type for all three, and the one place that
//! writes findings as text, JSON or GitHub Actions annotations.

use std::io::{self, Write};
use std::path::PathBuf;

/// How bad a finding is. Errors fail the command (a contract error, a `verify` violation, a
/// breaking `diff` change); warnings fail it only with `--strict`; notices never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Severity {
    Notice,
    #[default]
    Warning,
    Error,
}

/// One finding. Positions are 1-based; 0 when unknown (a scrape has no lines worth pointing at,
/// a `diff` change is about the whole file).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Finding {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub severity: Severity,
    /// Stable id of the rule (`verify`, `diff`), for filtering and waivers.
    pub rule: Option<&'static str>,
    /// What the finding is about when that is not a position (`verify`: the metric).
    pub subject: Option<String>,
    pub message: String,
    /// Consequences (`diff`: the rendered objects a breaking change breaks).
    pub related: Vec<String>,
}

impl Finding {
    /// A finding at a position of a file.
    pub fn at(file: impl Into<PathBuf>, line: u32, column: u32, severity: Severity, message: impl Into<String>) -> Finding {
        Finding { file: file.into(), line, column, severity, message: message.into(), ..Finding::default() }
    }
}

impl std::fmt::Display for Finding {
    /// `file:line:col: error: message`, the compiler convention editors and CI logs link
    /// (`file: error: message` without a position).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
        };
        let rule = self.rule.map(|r| format!("[{r}]")).unwrap_or_default();
        if self.line == 0 {
            // No position to point at (a file that cannot be read): none made up.
            return write!(f, "{}: {word}{rule}: {}", self.file.display(), self.message);
        }
        write!(f, "{}:{}:{}: {word}{rule}: {}", self.file.display(), self.line, self.column.max(1), self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Github,
}

/// The command reporting: it names the annotations and says its severities in its own words
/// (`verify` finds violations, `diff` breaking and compatible changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Check,
    Verify,
    Diff,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Check => "check",
            Command::Verify => "verify",
            Command::Diff => "diff",
        }
    }

    fn word(self, severity: Severity) -> &'static str {
        match (self, severity) {
            (Command::Verify, Severity::Error) => "violation",
            (Command::Diff, Severity::Error) => "breaking",
            (Command::Diff, _) => "compatible",
            (_, Severity::Error) => "error",
            (_, Severity::Warning) => "warning",
            (_, Severity::Notice) => "notice",
        }
    }
}

/// Writes `findings` in `format`. Text: one line per finding,
/// `[file:line:col: ]severity[rule]: [subject: ]message`, then `    breaks: …` lines; JSON: one
/// document `{"ok": …, "findings": […], …extra}`; GitHub: one workflow command per finding.
pub fn write(out: &mut dyn Write, format: Format, command: Command, findings: &[Finding], ok: bool, extra: serde_json::Map<String, serde_json::Value>) -> io::Result<()> {
    match format {
        Format::Text => {
            for f in findings {
                writeln!(out, "{}", text(command, f))?;
                for r in &f.related {
                    writeln!(out, "    breaks: {r}")?;
                }
            }
        }
        Format::Json => {
            let items: Vec<serde_json::Value> = findings.iter().map(|f| json(command, f)).collect();
            let mut document = serde_json::Map::new();
            document.insert("ok".into(), ok.into());
            document.insert("findings".into(), items.into());
            document.extend(extra);
            let text = serde_json::to_string_pretty(&serde_json::Value::Object(document)).map_err(io::Error::other)?;
            writeln!(out, "{text}")?;
        }
        Format::Github => {
            for f in findings {
                writeln!(out, "{}", github(command, f))?;
            }
        }
    }
    Ok(())
}

fn text(command: Command, f: &Finding) -> String {
    let mut line = String::new();
    if !f.file.as_os_str().is_empty() {
        line.push_str(&f.file.display().to_string());
        if f.line > 0 {
            line.push_str(&format!(":{}:{}", f.line, f.column.max(1)));
        }
        line.push_str(": ");
    }
    line.push_str(command.word(f.severity));
    if let Some(rule) = f.rule {
        line.push_str(&format!("[{rule}]"));
    }
    line.push_str(": ");
    if let Some(subject) = &f.subject {
        line.push_str(&format!("{subject}: "));
    }
    line.push_str(&f.message);
    line
}

fn json(command: Command, f: &Finding) -> serde_json::Value {
    let mut item = serde_json::Map::new();
    if !f.file.as_os_str().is_empty() {
        item.insert("file".into(), f.file.display().to_string().into());
    }
    if f.line > 0 {
        item.insert("line".into(), f.line.into());
        item.insert("column".into(), f.column.max(1).into());
    }
    let severity = match f.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Notice => "notice",
    };
    item.insert("severity".into(), severity.into());
    // The command's own word (violation, breaking, compatible) beside the common scale.
    item.insert("kind".into(), command.word(f.severity).into());
    if let Some(rule) = f.rule {
        item.insert("rule".into(), rule.into());
    }
    if let Some(subject) = &f.subject {
        item.insert("subject".into(), subject.clone().into());
    }
    item.insert("message".into(), f.message.clone().into());
    if !f.related.is_empty() {
        item.insert("related".into(), f.related.clone().into());
    }
    serde_json::Value::Object(item)
}

/// `::error file=…,line=…,col=…,title=metricpact check::message` (GitHub's workflow-command
/// syntax; the title carries the rule).
fn github(command: Command, f: &Finding) -> String {
    let level = match f.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Notice => "notice",
    };
    let mut properties = Vec::new();
    if !f.file.as_os_str().is_empty() {
        properties.push(format!("file={}", escape_property(&f.file.display().to_string())));
        if f.line > 0 {
            properties.push(format!("line={}", f.line));
            properties.push(format!("col={}", f.column.max(1)));
        }
    }
    let title = match f.rule {
        Some(rule) => format!("metricpact {} [{rule}]", command.name()),
        None => format!("metricpact {}", command.name()),
    };
    properties.push(format!("title={}", escape_property(&title)));
    let mut message = match &f.subject {
        Some(subject) => format!("{subject}: {}", f.message),
        None => f.message.clone(),
    };
    if !f.related.is_empty() {
        message.push_str(&format!(" (breaks: {})", f.related.join("; ")));
    }
    format!("::{level} {}::{}", properties.join(","), escape_data(&message))
}

/// GitHub's `escapeData` for a workflow command's message.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// GitHub's `escapeProperty` for a workflow command's property value.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: Format, command: Command, f: &Finding) -> String {
        let mut out = Vec::new();
        write(&mut out, format, command, std::slice::from_ref(f), false, Default::default()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_format_says_the_same_finding() {
        let check = Finding::at("c.yaml", 3, 5, Severity::Error, "bad, really: 100%");
        assert_eq!(render(Format::Text, Command::Check, &check), "c.yaml:3:5: error: bad, really: 100%\n");
        assert_eq!(render(Format::Github, Command::Check, &check), "::error file=c.yaml,line=3,col=5,title=metricpact check::bad, really: 100%25\n");
        let json: serde_json::Value = serde_json::from_str(&render(Format::Json, Command::Check, &check)).unwrap();
        assert_eq!(json, serde_json::json!({"ok": false, "findings": [{"file": "c.yaml", "line": 3, "column": 5, "severity": "error", "kind": "error", "message": "bad, really: 100%"}]}));

        let violation = Finding { severity: Severity::Error, rule: Some("metric-missing"), subject: Some("m_total".into()), message: "gone".into(), ..Finding::default() };
        assert_eq!(render(Format::Text, Command::Verify, &violation), "violation[metric-missing]: m_total: gone\n");
        assert_eq!(render(Format::Github, Command::Verify, &violation), "::error title=metricpact verify [metric-missing]::m_total: gone\n");

        let change = Finding { file: "new.yaml".into(), severity: Severity::Error, rule: Some("label-removed"), message: "label `a` is gone".into(), related: vec!["KEDA trigger".into(), "HPA".into()], ..Finding::default() };
        assert_eq!(render(Format::Text, Command::Diff, &change), "new.yaml: breaking[label-removed]: label `a` is gone\n    breaks: KEDA trigger\n    breaks: HPA\n");
        assert_eq!(render(Format::Github, Command::Diff, &change), "::error file=new.yaml,title=metricpact diff [label-removed]::label `a` is gone (breaks: KEDA trigger; HPA)\n");
    }
}
