//! A contract's YAML as a tree of nodes with positions, read from the parser's events.
//!
//! serde stops at the first problem; the shape pass (`shape.rs`) walks this tree instead, so a
//! file with several structural problems gets all of them in one run, each at its own position.

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, StructureStyle};

/// A position in the file: 1-based line and column (in characters), and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
    pub offset: usize,
}

impl Pos {
    fn of(m: &Marker, text: &str) -> Pos {
        let offset = m.byte_offset().unwrap_or_else(|| text.char_indices().nth(m.index()).map_or(text.len(), |(i, _)| i));
        Pos { line: m.line() as u32, column: m.col() as u32 + 1, offset }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    /// Where the node starts (for a mapping entry's value: after the key).
    pub start: Pos,
    /// Just past its last character (for a collection: of its last child).
    pub end: Pos,
}

#[derive(Debug, Clone)]
pub enum Value {
    /// A scalar's text after escape processing; `plain` when it was written without quotes or
    /// block indicators (only plain scalars can mean null, a boolean or a number).
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// `*name`: not expanded (a few bytes of aliases can stand for millions of nodes, and a copy
    /// would carry its anchor's positions); the shape check takes it as it comes.
    Alias,
}

impl Node {
    /// True for `~`, `null`, `Null`, `NULL` or nothing at all, written plain.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The node in words, for "found …" in a message.
    pub fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing (null)".into(),
            Value::Scalar { text, .. } => {
                let kind = if self.as_bool().is_some() {
                    "the boolean"
                } else if self.as_number().is_some() {
                    "the number"
                } else {
                    "the string"
                };
                let shown: String = text.chars().take(40).collect();
                let ellipsis = if shown.len() < text.len() { "…" } else { "" };
                format!("{kind} `{shown}{ellipsis}`")
            }
            Value::Seq(items) => format!("a list of {}", count(items.len(), "item")),
            Value::Map(entries) => format!("a mapping with {}", count(entries.len(), "key")),
            Value::Alias => "an alias".into(),
        }
    }

    /// A scalar read as a boolean: serde-saphyr takes `true`/`false` in any case, and the YAML 1.1
    /// words (`yes`, `off`, …); the shape check must not refuse what it reads.
    pub fn as_bool(&self) -> Option<bool> {
        match self.scalar()?.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Some(true),
            "false" | "no" | "off" | "n" => Some(false),
            _ => None,
        }
    }

    /// A scalar read as a number (quoted numbers too: serde-saphyr reads `"5"` into a number field).
    pub fn as_number(&self) -> Option<f64> {
        let text = self.scalar()?.trim();
        let infinite = match text.strip_prefix(['-', '+']).unwrap_or(text) {
            ".inf" | ".Inf" | ".INF" => Some(if text.starts_with('-') { f64::NEG_INFINITY } else { f64::INFINITY }),
            ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
            _ => None,
        };
        if infinite.is_some() {
            return infinite;
        }
        let digits = text.replace('_', "");
        if let Ok(v) = digits.parse::<f64>() {
            return v.is_finite().then_some(v);
        }
        let (negative, rest) = match digits.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, digits.strip_prefix('+').unwrap_or(&digits)),
        };
        let parsed = if let Some(hex) = rest.strip_prefix("0x") {
            i128::from_str_radix(hex, 16).ok()
        } else if let Some(oct) = rest.strip_prefix("0o") {
            i128::from_str_radix(oct, 8).ok()
        } else {
            None
        };
        parsed.map(|v| if negative { -(v as f64) } else { v as f64 })
    }

    /// The entry `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.scalar() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A syntax error: where and what.
#[derive(Debug)]
pub struct SyntaxError {
    pub at: Pos,
    pub message: String,
}

/// Parses the first document of `text` into a tree; `None` for an empty file.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder { stack: Vec::new(), root: None };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError { at: Pos::of(e.marker(), text), message: e.info().to_string() })?;
        let (start, end) = (Pos::of(&span.start, text), Pos::of(&span.end, text));
        match event {
            Event::Scalar(value, style, _, _) => {
                let plain = style == ScalarStyle::Plain;
                builder.node(Node { value: Value::Scalar { text: value.into_owned(), plain }, start, end });
            }
            Event::SequenceStart(style, _, _) => {
                builder.stack.push(Open { value: Value::Seq(Vec::new()), start, key: None, flow: style == StructureStyle::Flow })
            }
            Event::MappingStart(style, _, _) => {
                builder.stack.push(Open { value: Value::Map(Vec::new()), start, key: None, flow: style == StructureStyle::Flow })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let open = builder.stack.pop().expect("the parser balances collections");
                // A flow collection ends with its bracket; a block one with its last child (its end
                // event stands where the next key begins).
                let end = match &open.value {
                    _ if open.flow => end,
                    Value::Seq(items) => items.last().map_or(end, |n| n.end),
                    Value::Map(entries) => entries.last().map_or(end, |(_, v)| v.end),
                    Value::Scalar { .. } | Value::Alias => end,
                };
                builder.node(Node { value: open.value, start: open.start, end });
            }
            Event::Alias(_) => builder.node(Node { value: Value::Alias, start, end }),
            Event::DocumentEnd => break,
            _ => {}
        }
    }
    Ok(builder.root)
}

struct Open {
    value: Value,
    start: Pos,
    /// In a mapping: the key read, waiting for its value.
    key: Option<Node>,
    /// Written `[…]`/`{…}`.
    flow: bool,
}

struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
}

impl Builder {
    fn node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open { value: Value::Seq(items), .. }) => items.push(node),
            Some(open) => match open.key.take() {
                None => open.key = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut open.value {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_collections_end_at_their_last_child() {
        let text = "a: 1\nb:\n  c: [x, 'y']\n  d: ~\n";
        let root = parse(text).unwrap().unwrap();
        let b = root.get("b").unwrap();
        assert_eq!((b.start.line, b.start.column), (3, 3));
        let c = b.get("c").unwrap();
        assert_eq!((c.start.line, c.start.column), (3, 6));
        let Value::Seq(items) = &c.value else { panic!() };
        assert!(matches!(&items[1].value, Value::Scalar { text, plain: false } if text == "y"));
        assert_eq!((items[1].start.line, items[1].start.column), (3, 10));
        assert!(b.get("d").unwrap().is_null());
        assert_eq!(b.end.line, 4);
        assert_eq!(&text[root.get("a").unwrap().start.offset..][..1], "1");
    }

    #[test]
    fn aliases_stay_aliases() {
        // Ten levels of ten aliases would be 10^10 nodes expanded.
        let mut text = String::from("a0: &a0 x\n");
        for level in 1..=10 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let root = parse(&text).unwrap().unwrap();
        let Value::Seq(items) = &root.get("a10").unwrap().value else { panic!() };
        assert!(items.iter().all(|n| matches!(n.value, Value::Alias)) && items.len() == 10);
        assert_eq!(root.get("a10").unwrap().start.line, 11);
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.at.line >= 1, "{e:?}");
    }
}
