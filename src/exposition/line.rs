//! Tokenizing one exposition line: a sample's name, its labels (values left escaped, as slices of
//! the line) and the rest (value, timestamp, exemplar) kept verbatim.

use std::borrow::Cow;

/// A sample line, borrowing from the body (and its labels from the caller's reused buffer).
pub struct Sample<'a, 's> {
    /// The whole line.
    pub line: &'a str,
    pub name: &'a str,
    /// `name` starts with the hint given to [`parse_sample`].
    pub starts_with_hint: bool,
    /// `(name, raw escaped value)`.
    pub labels: &'s [(&'a str, &'a str)],
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

/// End of the run of name characters (`[A-Za-z0-9_:]`) starting at `from`: eight bytes per step,
/// then a byte at a time. Inlined: most names are short, and the call would cost as much as the scan.
#[inline(always)]
fn name_end(bytes: &[u8], mut from: usize) -> usize {
    while let Some(chunk) = bytes.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let others = non_name_lanes(word);
        if others != 0 {
            return from + (others.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while from < bytes.len() && CLASS[bytes[from] as usize] & NAME_CHAR != 0 {
        from += 1;
    }
    from
}

/// The high bit of each lane of `word` that is not a name character. Lane arithmetic: for an
/// ASCII byte x, `x + (0x80 - lo)` has its high bit set iff x >= lo, and cannot carry into the
/// next lane. A non-ASCII lane is flagged itself and may carry into the lanes above it, which
/// only matters above the lowest flagged lane, the one the caller uses.
fn non_name_lanes(word: u64) -> u64 {
    const HIGH: u64 = lanes(0x80);
    let at_least = |x: u64, lo: u8| x.wrapping_add(lanes(0x80 - lo)) & HIGH;
    let in_range = |x: u64, lo: u8, hi: u8| at_least(x, lo) & !at_least(x, hi + 1);
    let lower = word | lanes(0x20);
    let letter = in_range(lower, b'a', b'z');
    let digit_or_colon = in_range(word, b'0', b':');
    let underscore = {
        // Exactly the zero lanes (no borrow between lanes, unlike the has-zero-byte trick).
        let x = word ^ lanes(b'_');
        !(((x & lanes(0x7f)) + lanes(0x7f)) | x) & HIGH
    };
    let name = (letter | digit_or_colon | underscore) & !(word & HIGH);
    !name & HIGH
}

fn skip_spaces(bytes: &[u8], mut from: usize) -> usize {
    while bytes.get(from) == Some(&b' ') {
        from += 1;
    }
    from
}

/// A byte in every lane of a word, for the word-at-a-time scans.
const fn lanes(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// The first `"` or `\\` at or after `from`: eight bytes per step (the has-zero-byte trick; the
/// lowest flagged lane of each mask is exact, so the lowest of both is the first match).
fn quote_or_backslash(bytes: &[u8], mut from: usize) -> Option<usize> {
    const LOW: u64 = lanes(1);
    const HIGH: u64 = lanes(0x80);
    while let Some(chunk) = bytes.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let quotes = word ^ lanes(b'"');
        let backslashes = word ^ lanes(b'\\');
        let found = (quotes.wrapping_sub(LOW) & !quotes | backslashes.wrapping_sub(LOW) & !backslashes) & HIGH;
        if found != 0 {
            return Some(from + (found.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    bytes[from.min(bytes.len())..].iter().position(|&b| b == b'"' || b == b'\\').map(|i| from + i)
}

/// `bytes` starts with `prefix`, compared eight bytes at a time (no call into the C library's
/// memcmp, which costs more than comparing a metric name).
pub(crate) fn prefix_is(bytes: &[u8], prefix: &[u8]) -> bool {
    let Some(head) = bytes.get(..prefix.len()) else { return false };
    let (mut a, mut b) = (head.chunks_exact(8), prefix.chunks_exact(8));
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    (&mut a).zip(&mut b).all(|(x, y)| word(x) == word(y)) && a.remainder().iter().zip(b.remainder()).all(|(x, y)| x == y)
}

/// A line of an exposition, as the readers that judge one (`verify`, the policy) see it.
pub enum Line<'a, 's> {
    /// `# TYPE name kind`.
    Type { name: &'a str, kind: &'a str },
    /// `# HELP name text`.
    Help { name: &'a str, text: &'a str },
    Sample(Sample<'a, 's>),
}

/// Calls `each` for every TYPE, HELP and sample line of `body` (other comments, blank lines and
/// `# EOF` skipped); a line that is none of these is an error naming it.
pub fn walk<'a>(body: &'a str, mut each: impl FnMut(Line<'a, '_>)) -> Result<(), String> {
    let mut labels = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                each(Line::Type { name, kind });
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                each(Line::Help { name, text });
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line, &mut labels, "").ok_or_else(|| format!("line {}: not a sample: {line}", i + 1))?;
        each(Line::Sample(sample));
    }
    Ok(())
}

/// Parses `name{a="x",b="y"} 1 123`; `None` when the line is not a well-formed sample. One pass
/// over the bytes; label names and values are slices of the line, collected into `labels`
/// (cleared first: one buffer serves every line of a body). `hint`, a valid metric name or `""`,
/// is what the name likely starts with: if it does, those bytes need not be checked again.
#[inline(always)]
pub fn parse_sample<'a, 's>(line: &'a str, labels: &'s mut Vec<(&'a str, &'a str)>, hint: &str) -> Option<Sample<'a, 's>> {
    let bytes = line.as_bytes();
    labels.clear();
    if bytes.is_empty() || CLASS[bytes[0] as usize] & NAME_START == 0 {
        return None;
    }
    let starts_with_hint = !hint.is_empty() && bytes.len() > hint.len() && prefix_is(bytes, hint.as_bytes());
    let mut i = name_end(bytes, if starts_with_hint { hint.len() } else { 1 });
    let name = &line[..i];
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
                // A line holds no newline (the body is split at them), so only these two matter.
                i = quote_or_backslash(bytes, i)?;
                if bytes[i] == b'"' {
                    break;
                }
                i += 2;
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
    // The common ` 123` or ` 1.5 1700000000`, checked without splitting on Unicode whitespace.
    let after_blank = &rest.as_bytes()[1..];
    let plain_end = after_blank.iter().position(|&b| b == b' ').unwrap_or(after_blank.len());
    let plain = rest.as_bytes()[0] == b' ' && is_plain_decimal_bytes(&after_blank[..plain_end]);
    if !plain {
        let value = rest.split_whitespace().next()?;
        if !is_plain_decimal(value) {
            parse_value(value)?;
        }
    }
    Some(Sample { line, name, starts_with_hint, labels, label_text, rest })
}

/// `[+-]?digits[.digits]`: the common value, accepted without a float parse (a subset of what
/// [`parse_value`] accepts).
fn is_plain_decimal(s: &str) -> bool {
    is_plain_decimal_bytes(s.as_bytes())
}

fn is_plain_decimal_bytes(bytes: &[u8]) -> bool {
    let digits = bytes.strip_prefix(b"-").or_else(|| bytes.strip_prefix(b"+")).unwrap_or(bytes);
    // One pass: digits, at most one dot, and at least one digit before it.
    let mut dot = false;
    for (i, &b) in digits.iter().enumerate() {
        if b == b'.' && !dot && i > 0 {
            dot = true;
        } else if !b.is_ascii_digit() {
            return false;
        }
    }
    !digits.is_empty()
}

pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Writes a sample value as the exposition formats spell it (`NaN`, `+Inf`, `-Inf`, else Rust's
/// shortest round-trip decimal), without allocating.
pub fn write_value(out: &mut Vec<u8>, v: f64) {
    use std::io::Write;
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{v}");
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
/// the text format, into `out`: the exemplar goes, the timestamp turns from seconds into
/// milliseconds. `None` if the value or timestamp is malformed.
pub fn openmetrics_rest_to_text(rest: &str, out: &mut String) -> Option<()> {
    use std::fmt::Write;
    let without_exemplar = rest.split(" # ").next().unwrap_or(rest);
    let mut parts = without_exemplar.split_whitespace();
    let value = parts.next()?;
    parse_value(value)?;
    out.push(' ');
    out.push_str(value);
    if let Some(ts) = parts.next() {
        let seconds: f64 = ts.parse().ok()?;
        // Writing into a String cannot fail.
        let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn name_end_bytewise(bytes: &[u8], from: usize) -> usize {
        from + bytes[from..].iter().take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b == b':').count()
    }

    fn quote_or_backslash_bytewise(bytes: &[u8], from: usize) -> Option<usize> {
        bytes[from..].iter().position(|&b| b == b'"' || b == b'\\').map(|i| from + i)
    }

    #[test]
    fn plain_decimals_are_sign_digits_and_one_dot_after_a_digit() {
        for yes in ["0", "12345", "-1", "+7", "1.", "37.5", "-0.001"] {
            assert!(is_plain_decimal(yes), "{yes}");
        }
        for no in ["", "-", "+", ".", ".5", "1.2.3", "1e3", "NaN", "+Inf", "1_000", "--1", "1 ", "0x1"] {
            assert!(!is_plain_decimal(no), "{no}");
        }
    }

    /// Every byte value in every lane, after name bytes and after each byte that could disturb
    /// a neighbouring lane (`_`, `"`, `\`, 0x00, 0x01, 0x7f, 0x80, 0xff): the word-at-a-time scans
    /// agree with the byte-at-a-time definitions.
    #[test]
    fn word_scans_agree_with_bytewise_scans() {
        let neighbours = [b'a', b'_', b'"', b'\\', 0x00, 0x01, b'^', b'[', 0x7f, 0x80, 0xff];
        for stop in 0..=255u8 {
            for &before in &neighbours {
                for at in 0..12 {
                    let mut bytes = vec![b'a'; 20];
                    bytes[at] = stop;
                    if at > 0 {
                        bytes[at - 1] = before;
                    }
                    for from in 0..3 {
                        assert_eq!(name_end(&bytes, from), name_end_bytewise(&bytes, from), "{bytes:?} from {from}");
                        assert_eq!(quote_or_backslash(&bytes, from), quote_or_backslash_bytewise(&bytes, from), "{bytes:?} from {from}");
                    }
                }
            }
        }
    }
}
