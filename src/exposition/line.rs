//! Tokenizing one exposition line: a sample's name, its labels (values left escaped, as slices of
//! the line) and the rest (value, timestamp, exemplar) kept verbatim.

use std::borrow::Cow;

/// A sample line, borrowing from the body.
pub struct Sample<'a> {
    pub name: &'a str,
    /// `(name, raw escaped value)`.
    pub labels: Vec<(&'a str, &'a str)>,
    /// The label block as written, braces included (`""` when the line has none).
    pub label_text: &'a str,
    /// Everything after the name and labels, starting with the separating space.
    pub rest: &'a str,
}

/// Byte classes for the scanner: a table lookup per byte instead of a chain of comparisons.
const NAME_CHAR: u8 = 1;
const NAME_START: u8 = 2;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alpha = c.is_ascii_alphabetic() || c == b'_' || c == b':';
        if alpha || c.is_ascii_digit() {
            table[b] |= NAME_CHAR;
        }
        if alpha {
            table[b] |= NAME_START;
        }
        b += 1;
    }
    table
};

pub fn is_metric_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty() && CLASS[bytes[0] as usize] & NAME_START != 0 && name_end(bytes, 1) == bytes.len()
}

/// End of the run of name characters starting at `from`.
fn name_end(bytes: &[u8], mut from: usize) -> usize {
    while from < bytes.len() && CLASS[bytes[from] as usize] & NAME_CHAR != 0 {
        from += 1;
    }
    from
}

fn skip_spaces(bytes: &[u8], mut from: usize) -> usize {
    while bytes.get(from) == Some(&b' ') {
        from += 1;
    }
    from
}

/// Parses `name{a="x",b="y"} 1 123`; `None` when the line is not a well-formed sample. One pass
/// over the bytes; label names and values are slices of the line.
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let bytes = line.as_bytes();
    if bytes.is_empty() || CLASS[bytes[0] as usize] & NAME_START == 0 {
        return None;
    }
    let mut i = name_end(bytes, 1);
    let name = &line[..i];
    let mut labels = Vec::new();
    if bytes.get(i) == Some(&b'{') {
        i += 1;
        loop {
            i = skip_spaces(bytes, i);
            if *bytes.get(i)? == b'}' {
                i += 1;
                break;
            }
            let label_start = i;
            i = name_end(bytes, i);
            if i == label_start || bytes[label_start].is_ascii_digit() {
                return None;
            }
            let label = &line[label_start..i];
            i = skip_spaces(bytes, i);
            if bytes.get(i) != Some(&b'=') {
                return None;
            }
            i = skip_spaces(bytes, i + 1);
            if bytes.get(i) != Some(&b'"') {
                return None;
            }
            i += 1;
            let value_start = i;
            loop {
                match *bytes.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break,
                    b'\n' => return None,
                    _ => i += 1,
                }
            }
            labels.push((label, &line[value_start..i]));
            i = skip_spaces(bytes, i + 1);
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return None,
            }
        }
    }
    // A value must follow, separated by whitespace.
    if !matches!(bytes.get(i), Some(b' ' | b'\t')) {
        return None;
    }
    let label_text = &line[name.len()..i];
    let rest = &line[i..];
    let value = rest.split_whitespace().next()?;
    if !is_plain_decimal(value) {
        parse_value(value)?;
    }
    Some(Sample { name, labels, label_text, rest })
}

/// `[+-]?digits[.digits]`: the common value, accepted without a float parse (a subset of what
/// [`parse_value`] accepts).
fn is_plain_decimal(s: &str) -> bool {
    let bytes = s.as_bytes();
    let digits = bytes.strip_prefix(b"-").or_else(|| bytes.strip_prefix(b"+")).unwrap_or(bytes);
    let (whole, fraction) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &digits[..0]),
    };
    !whole.is_empty() && whole.iter().all(u8::is_ascii_digit) && fraction.iter().all(u8::is_ascii_digit)
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
