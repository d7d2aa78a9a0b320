//! Tokenizing one exposition line: a sample's name, its labels (values left escaped, as slices of
//! the line) and the rest (value, timestamp, exemplar) kept verbatim.

use std::borrow::Cow;

/// A sample line, borrowing from the body.
pub struct Sample<'a> {
    pub name: &'a str,
    /// `(name, raw escaped value)`.
    pub labels: Vec<(&'a str, &'a str)>,
    /// Everything after the name and labels, starting with the separating space.
    pub rest: &'a str,
}

pub fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn name_end(s: &str) -> usize {
    s.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')).unwrap_or(s.len())
}

/// Parses `name{a="x",b="y"} 1 123`; `None` when the line is not a well-formed sample.
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let end = name_end(line);
    let name = &line[..end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut s = body;
        loop {
            s = s.trim_start_matches(' ');
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let n_end = name_end(s);
            let label = &s[..n_end];
            if label.is_empty() || label.as_bytes()[0].is_ascii_digit() {
                return None;
            }
            s = s[n_end..].trim_start_matches(' ').strip_prefix('=')?.trim_start_matches(' ').strip_prefix('"')?;
            let v_end = closing_quote(s)?;
            labels.push((label, &s[..v_end]));
            s = s[v_end + 1..].trim_start_matches(' ');
            if let Some(after) = s.strip_prefix(',') {
                s = after;
            } else if !s.starts_with('}') {
                return None;
            }
        }
    }
    // A value must follow, separated by whitespace.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let value = rest.split_whitespace().next()?;
    parse_value(value)?;
    Some(Sample { name, labels, rest })
}

/// Index of the quote closing a label value (escapes skipped).
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            b'\n' => return None,
            _ => i += 1,
        }
    }
    None
}

pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

pub fn unescape_label_value(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Converts what follows an OpenMetrics sample's labels (` value [timestamp] [# exemplar]`) into
/// the text format: the exemplar goes, the timestamp turns from seconds into milliseconds.
pub fn openmetrics_rest_to_text(rest: &str) -> Option<String> {
    let without_exemplar = rest.split(" # ").next().unwrap_or(rest);
    let mut parts = without_exemplar.split_whitespace();
    let value = parts.next()?;
    parse_value(value)?;
    match parts.next() {
        None => Some(format!(" {value}")),
        Some(ts) => {
            let seconds: f64 = ts.parse().ok()?;
            Some(format!(" {value} {}", (seconds * 1000.0).round() as i64))
        }
    }
}
