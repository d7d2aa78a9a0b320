//! Routes from an OpenAPI document. An API's OpenAPI 3.x or Swagger 2.0 description (YAML or
//! JSON) already names every route template the app serves, so `metricpact routes` derives the
//! contract's `routes.rules` from it instead of having them written by hand, and
//! `metricpact check --openapi` tells when a contract's route table no longer gives the document's
//! paths their own templates. Native-only, like the rest of `contract`.
//!
//! What a document becomes (the README's "Routes from an OpenAPI document" says it for users):
//! - One rule per base path and `paths` key; its template is the base path followed by the key,
//!   exactly as written (`/api/v1/users/{id}`). A path without parameters is an `exact` rule, one
//!   with parameters a `regex` rule.
//! - A parameter matches one path segment, `[^/]+`, tightened when every operation of the path
//!   declares the same schema for it: `enum`/`const` → those values, `integer` → `[0-9]+` (with
//!   `-?` unless `minimum` ≥ 0), `boolean` → `true|false`, `format: uuid` → a UUID. `pattern` is
//!   left out (an ECMA-262 regex, which the regex crate does not always read the same way), so is
//!   any parameter with a `style` other than `simple`.
//! - Base paths: Swagger's `basePath`; OpenAPI's `servers` (operation-level over path-level over
//!   the document's), each URL's path part, server variables at their `default`, except a
//!   variable with several `enum` values, which becomes a named capture the template keeps
//!   (`(?P<version>v1|v2)` → `${version}`). Several distinct base paths give one rule per base
//!   path and key: each base path is a route of its own.
//! - Order: a trie walk over path segments, so that wherever two templates first differ, a literal
//!   segment comes before a segment mixing literal text and parameters (more literal text first),
//!   which comes before a bare parameter: `/users/me` precedes `/users/{id}`. Otherwise the
//!   document's order, grouped by shared leading segments.
// A document's problems come back as findings, once per read: their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use super::check::DEFAULT_RAW_MAX_LENGTH;
use super::compile::compile_source;
use super::load::{Diagnostic, Severity, Source};
use crate::config::{PluginConfig, RouteMatch, RouteRule, RouteTable, Unmatched};
use crate::routes::{route_text, RouteMatcher};

/// Operation keys of a path item (`query` is OpenAPI 3.2's; Swagger 2.0 has no `trace`).
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace", "query"];
/// A UUID in any case (`format: uuid`).
const UUID: &str = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
/// What a generated `format: uuid` example is (Swagger UI's).
const UUID_EXAMPLE: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
/// `$ref` chains longer than this are taken for cycles.
const MAX_REF_HOPS: usize = 32;
/// The deepest nesting a document may have, and the parser thread's stack: enough for that
/// depth in a debug build (the stack is reserved, not used, until a document is that deep).
const MAX_DEPTH: usize = 256;
const PARSE_STACK_BYTES: usize = 64 << 20;
/// A path item given as `null`, or one behind a `$ref` that is not followed.
static NULL: Value = Value::Null;

/// An OpenAPI document read for its routes.
#[derive(Debug)]
pub struct Spec {
    pub file: PathBuf,
    /// `OpenAPI 3.0.3` or `Swagger 2.0`: what the document says it is.
    pub dialect: String,
    /// One per base path and `paths` key, in rule order.
    pub routes: Vec<SpecRoute>,
    /// Problems that leave the routes usable (paths OpenAPI calls identical, `$ref`s to other files).
    pub warnings: Vec<Diagnostic>,
}

/// One rule of the route table and the requests it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecRoute {
    /// The `paths` key, e.g. `/users/{id}`.
    pub path: String,
    /// Where the key is in the document (0 when unknown).
    pub line: u32,
    pub column: u32,
    pub rule: Rule,
    /// A request path per operation (operations with the same one share it); empty for a path
    /// item without operations.
    pub examples: Vec<Example>,
}

/// A generated route rule, as the contract writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `exact: PATH`; the template is the path itself.
    Exact(String),
    /// `regex: REGEX` with `template: TEMPLATE` (`$$` for a literal `$`, `${name}` for a server
    /// variable's capture).
    Regex { regex: String, template: String },
}

/// A request the document describes and the route it must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Upper-case methods, in the path item's order.
    pub methods: Vec<String>,
    /// The request path: parameters at their example values, percent-encoded.
    pub path: String,
    /// The route value the rule gives it (server variables at the example's values).
    pub route: String,
}

impl Spec {
    /// The rules as the filter's configuration holds them (what `check` lowers the YAML to).
    pub fn rules(&self) -> Vec<RouteRule> {
        self.routes
            .iter()
            .map(|r| match &r.rule {
                Rule::Exact(path) => RouteRule { matcher: RouteMatch::Exact(path.clone()), template: path.replace('$', "$$") },
                Rule::Regex { regex, template } => RouteRule { matcher: RouteMatch::Regex(regex.clone()), template: template.clone() },
            })
            .collect()
    }
}


/// Reads the document at `path`; on failure every problem found (positioned where possible).
pub fn load(path: &Path) -> Result<Spec, Vec<Diagnostic>> {
    let problem = |message: String| vec![diagnostic(path, None, Severity::Error, message)];
    let bytes = std::fs::read(path).map_err(|e| problem(format!("cannot read OpenAPI document: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| problem("OpenAPI document is not valid UTF-8".into()))?;
    from_text(path, &text)
}

/// Reads a document's text (`path` names it in diagnostics).
pub fn from_text(path: &Path, text: &str) -> Result<Spec, Vec<Diagnostic>> {
    let (root, positions) = parse(path, text).map_err(|d| vec![d])?;
    Reader { file: path, root: &root, positions, errors: Vec::new(), warnings: Vec::new() }.spec()
}

fn diagnostic(file: &Path, at: Option<Location>, severity: Severity, message: impl Into<String>) -> Diagnostic {
    let (line, column) = at.map_or((0, 0), |l| (l.line() as u32, l.column() as u32));
    Diagnostic::at(file.to_path_buf(), line, column, severity, message)
}

// ---------------------------------------------------------------- parsing

/// Where the keys diagnostics point at are. The document is read twice, once as a plain JSON
/// value (what the routes are computed from: `$ref`s can point anywhere in it) and once for
/// these positions only, because positions cannot be had inside a `serde_json::Value`.
#[derive(Default, Deserialize)]
struct Positions {
    #[serde(default)]
    openapi: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    swagger: Option<Spanned<IgnoredAny>>,
    #[serde(default, rename = "basePath")]
    base_path: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    servers: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    paths: Option<Spanned<Keys>>,
}

/// A mapping's keys with their positions, its values skipped.
#[derive(Default)]
struct Keys(HashMap<String, Location>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = Keys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = HashMap::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.insert(key.value, key.referenced);
                }
                Ok(Keys(keys))
            }
            // Anything else has no keys; the checks on the JSON value say what is wrong with it.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Keys, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Keys::default())
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Keys, E> {
                Ok(Keys::default())
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Keys, E> {
                Ok(Keys::default())
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Keys, E> {
                Ok(Keys::default())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Keys, E> {
                Ok(Keys::default())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Keys, E> {
                Ok(Keys::default())
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Keys, E> {
                Ok(Keys::default())
            }
        }
        deserializer.deserialize_any(KeysVisitor)
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    // Published documents are large (GitHub's is 10 MB): well above the limits meant for configs.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 50_000_000;
    budget.max_nodes = 20_000_000;
    budget.max_depth = MAX_DEPTH;
    options.budget = Some(budget);
    // Read scalars as YAML 1.2 (OpenAPI's YAML) does: `yes` stays a string, `007` is not 7.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options
}

/// The document as a JSON value, and its positions. YAML is a superset of JSON, so one parser
/// reads both with positions; a JSON document it refuses is read by `serde_json`, without them.
fn parse(path: &Path, text: &str) -> Result<(Value, Positions), Diagnostic> {
    // Deserializing recurses per nesting level (some 20 KB of stack each in a debug build): on
    // a thread of its own with a large stack, a deep document is a budget error, not a crash.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_here(path, text))
            .map_err(|e| diagnostic(path, None, Severity::Error, format!("cannot start the parser: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(diagnostic(path, None, Severity::Error, "the parser failed")))
    })
}

fn parse_here(path: &Path, text: &str) -> Result<(Value, Positions), Diagnostic> {
    match serde_saphyr::from_str_with_options::<Value>(text, yaml_options()) {
        Ok(root) => {
            // The value parsed, so this can only fail on a shape the checks below report.
            let positions = serde_saphyr::from_str_with_options::<Positions>(text, yaml_options()).unwrap_or_default();
            Ok((root, positions))
        }
        Err(yaml_error) => {
            if text.trim_start().starts_with('{') {
                return match serde_json::from_str::<Value>(text) {
                    Ok(root) => Ok((root, Positions::default())),
                    Err(e) => Err(Diagnostic {
                        file: path.to_path_buf(),
                        line: e.line() as u32,
                        column: e.column() as u32,
                        severity: Severity::Error,
                        message: format!("not valid JSON: {}", strip_position(&e.to_string())),
                        ..Diagnostic::default()
                    }),
                };
            }
            let message = yaml_error.without_snippet().to_string();
            let message = message.lines().next().unwrap_or("invalid YAML").trim();
            Err(diagnostic(path, yaml_error.location(), Severity::Error, format!("not valid YAML: {}", strip_position(message))))
        }
    }
}

/// A parser message without its trailing ` at line X, column Y` (diagnostics carry their own).
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

// ---------------------------------------------------------------- templates

/// A piece of a route template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// Literal text (`/` included).
    Lit(String),
    /// A path parameter, `{name}`.
    Param(String),
    /// A server variable with several values: a named capture the template keeps.
    Var { capture: String, values: Vec<String>, default: String },
}

/// Splits a template on its `{name}` expressions.
fn template_parts(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match (rest.find('{'), rest.find('}')) {
            (None, None) => {
                parts.push(Part::Lit(rest.to_string()));
                break;
            }
            (None, Some(_)) => return Err("has a `}` without its `{`".into()),
            (Some(o), Some(c)) if c < o => return Err("has a `}` without its `{`".into()),
            (Some(_), None) => return Err("has a `{` without its `}`".into()),
            (Some(o), Some(c)) => {
                let name = &rest[o + 1..c];
                if name.contains('{') {
                    return Err("has a `{` inside `{…}`".into());
                }
                if name.is_empty() {
                    return Err("has an empty `{}`".into());
                }
                if o > 0 {
                    parts.push(Part::Lit(rest[..o].to_string()));
                }
                parts.push(Part::Param(name.to_string()));
                rest = &rest[c + 1..];
            }
        }
    }
    Ok(parts)
}

/// Escapes the characters that are special outside a character class, and only those, so the
/// generated regexes stay readable (`regex::escape` also escapes `-`, `#`, `&`, `~`).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-encodes an example value for one path segment (RFC 3986 `pchar` stays as is).
fn encode_segment(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A full template (base path and key) and the patterns of its parameters.
struct Template<'p> {
    parts: Vec<Part>,
    patterns: &'p HashMap<String, Option<String>>,
}

impl Template<'_> {
    fn has_captures(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Lit(_)))
    }

    /// The template as the contract writes it.
    fn contract_template(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(text) => text.replace('$', "$$"),
                Part::Param(name) => format!("{{{}}}", name.replace('$', "$$")),
                Part::Var { capture, .. } => format!("${{{capture}}}"),
            })
            .collect()
    }

    fn regex(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(text) => escape(text),
                Part::Param(name) => self.patterns.get(name).cloned().flatten().unwrap_or_else(|| "[^/]+".into()),
                Part::Var { capture, values, .. } => {
                    format!("(?P<{capture}>{})", values.iter().map(|v| escape(v)).collect::<Vec<_>>().join("|"))
                }
            })
            .collect()
    }

    /// The request path and route value for parameter values `params` and, for each server
    /// variable, `vars` (its default when absent).
    fn example(&self, params: &HashMap<String, String>, vars: &HashMap<&str, &str>) -> (String, String) {
        let (mut path, mut route) = (String::new(), String::new());
        for p in &self.parts {
            match p {
                Part::Lit(text) => {
                    path.push_str(text);
                    route.push_str(text);
                }
                Part::Param(name) => {
                    path.push_str(&encode_segment(params.get(name).map_or(name.as_str(), String::as_str)));
                    route.push_str(&format!("{{{name}}}"));
                }
                Part::Var { capture, default, .. } => {
                    let value = vars.get(capture.as_str()).copied().unwrap_or(default);
                    path.push_str(value);
                    route.push_str(value);
                }
            }
        }
        (path, route)
    }

    /// Two templates with the same shape match the same requests.
    fn shape(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(text) => escape(text),
                Part::Param(_) => "{}".into(),
                Part::Var { values, .. } => format!("({})", values.join("|")),
            })
            .collect()
    }

    /// The route value with server variables at their defaults (for messages).
    fn display(&self) -> String {
        self.example(&HashMap::new(), &HashMap::new()).1
    }

    /// Sort keys of the path segments (see [`order`]).
    fn segment_keys(&self) -> Vec<SegmentKey> {
        let mut segments: Vec<Vec<&Part>> = vec![Vec::new()];
        let mut pieces: Vec<Part> = Vec::new();
        for p in &self.parts {
            match p {
                Part::Lit(text) => {
                    for (i, piece) in text.split('/').enumerate() {
                        if i > 0 {
                            pieces.push(Part::Lit("/".into()));
                        }
                        if !piece.is_empty() {
                            pieces.push(Part::Lit(piece.into()));
                        }
                    }
                }
                other => pieces.push(other.clone()),
            }
        }
        for piece in &pieces {
            if matches!(piece, Part::Lit(t) if t == "/") {
                segments.push(Vec::new());
            } else if let Some(last) = segments.last_mut() {
                last.push(piece);
            }
        }
        // Every template starts with `/`: the text before it is no segment.
        segments.remove(0);
        segments
            .iter()
            .map(|parts| {
                let literal: usize = parts.iter().map(|p| if let Part::Lit(t) = p { t.len() } else { 0 }).sum();
                let text: String = parts
                    .iter()
                    .map(|p| match p {
                        Part::Lit(t) => t.clone(),
                        Part::Param(_) => "{}".into(),
                        Part::Var { capture, .. } => format!("${{{capture}}}"),
                    })
                    .collect();
                let params = parts.iter().filter(|p| matches!(p, Part::Param(_))).count();
                match (params, literal) {
                    (0, _) => SegmentKey::Literal(text),
                    (1, 0) if parts.len() == 1 => SegmentKey::Param,
                    _ => SegmentKey::Mixed { literal, text },
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SegmentKey {
    /// Literal text (a server variable's capture counts as literal: it is a fixed set of values).
    Literal(String),
    /// Literal text and parameters, e.g. `{name}.json`.
    Mixed { literal: usize, text: String },
    /// One parameter, the whole segment.
    Param,
}

/// The rule order: a depth-first walk of the segment trie. At each node the templates ending
/// there come first, then the children: literal segments in order of first appearance, then
/// mixed ones (most literal text first), then the parameter. So wherever two templates first
/// differ, the more literal one comes first; anything else keeps the document's order.
fn order(keys: &[Vec<SegmentKey>]) -> Vec<usize> {
    fn walk(items: Vec<usize>, depth: usize, keys: &[Vec<SegmentKey>], out: &mut Vec<usize>) {
        let mut groups: Vec<(&SegmentKey, Vec<usize>)> = Vec::new();
        for i in items {
            match keys[i].get(depth) {
                None => out.push(i),
                Some(key) => match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                },
            }
        }
        let rank = |key: &SegmentKey| match key {
            SegmentKey::Literal(_) => (0, 0),
            SegmentKey::Mixed { literal, .. } => (1, usize::MAX - literal),
            SegmentKey::Param => (2, 0),
        };
        // A stable sort: first appearance breaks ties.
        groups.sort_by_key(|(key, _)| rank(key));
        for (_, members) in groups {
            walk(members, depth + 1, keys, out);
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    walk((0..keys.len()).collect(), 0, keys, &mut out);
    out
}

// ---------------------------------------------------------------- reading a document

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenApi3,
    Swagger2,
}

struct Reader<'a> {
    file: &'a Path,
    root: &'a Value,
    positions: Positions,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// A route before ordering.
struct Draft {
    key: String,
    at: Option<Location>,
    rule: Rule,
    shape: String,
    display: String,
    segments: Vec<SegmentKey>,
    examples: Vec<Example>,
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<'a> Reader<'a> {
    fn error(&mut self, at: Option<Location>, message: impl Into<String>) {
        self.errors.push(diagnostic(self.file, at, Severity::Error, message));
    }

    fn warn(&mut self, at: Option<Location>, message: impl Into<String>) {
        self.warnings.push(diagnostic(self.file, at, Severity::Warning, message));
    }

    fn key_at(&self, key: &str) -> Option<Location> {
        self.positions.paths.as_ref().and_then(|p| p.value.0.get(key)).copied()
    }

    /// Follows `$ref` (local JSON pointers only, `#/…`); `Err` says why it could not.
    fn deref(&self, mut v: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..MAX_REF_HOPS {
            let Some(reference) = v.get("$ref").and_then(Value::as_str) else { return Ok(v) };
            let Some(pointer) = reference.strip_prefix('#') else {
                return Err(format!("`$ref: {reference}` points into another document, which is not read"));
            };
            // A JSON pointer in a URI fragment may be percent-encoded (`%7B` for `{`).
            let pointer = percent_decode(pointer);
            v = self.root.pointer(&pointer).ok_or_else(|| format!("`$ref: {reference}` points at nothing in this document"))?;
        }
        Err(format!("`$ref` chain longer than {MAX_REF_HOPS} (a cycle?)"))
    }

    fn spec(mut self) -> Result<Spec, Vec<Diagnostic>> {
        let root = self.root;
        let top = |p: &Option<Spanned<IgnoredAny>>| p.as_ref().map(|s| s.referenced);
        if !root.is_object() {
            self.error(None, "not an OpenAPI or Swagger document: expected a mapping with `openapi: 3.x` or `swagger: \"2.0\"`");
            return Err(self.errors);
        }
        let (dialect, name) = match (root.get("openapi"), root.get("swagger")) {
            (Some(_), Some(_)) => {
                let at = top(&self.positions.swagger);
                self.error(at, "has both `openapi` and `swagger`: keep the one the document follows");
                return Err(self.errors);
            }
            (Some(v), None) => match scalar_text(v) {
                Some(version) if version.starts_with("3.") => (Dialect::OpenApi3, format!("OpenAPI {version}")),
                other => {
                    let at = top(&self.positions.openapi);
                    self.error(at, format!("unsupported `openapi: {}`: this reads OpenAPI 3.x and Swagger 2.0", other.unwrap_or_default()));
                    return Err(self.errors);
                }
            },
            (None, Some(v)) => match scalar_text(v) {
                Some(version) if version == "2.0" => (Dialect::Swagger2, "Swagger 2.0".to_string()),
                other => {
                    let at = top(&self.positions.swagger);
                    self.error(at, format!("unsupported `swagger: {}`: this reads Swagger 2.0 and OpenAPI 3.x", other.unwrap_or_default()));
                    return Err(self.errors);
                }
            },
            (None, None) => {
                self.error(None, "not an OpenAPI or Swagger document: it has neither `openapi: 3.x` nor `swagger: \"2.0\"`");
                return Err(self.errors);
            }
        };
        let paths = match root.get("paths") {
            Some(Value::Object(paths)) => paths,
            Some(_) => {
                let at = self.positions.paths.as_ref().map(|p| p.referenced);
                self.error(at, "`paths` must be a mapping of path templates to path items");
                return Err(self.errors);
            }
            None => {
                self.error(None, "has no `paths`: there are no routes to generate");
                return Err(self.errors);
            }
        };
        let document_bases = match dialect {
            Dialect::Swagger2 => self.base_path(),
            Dialect::OpenApi3 => {
                let at = top(&self.positions.servers);
                self.servers(root.get("servers"), at).unwrap_or_else(|| vec![Vec::new()])
            }
        };

        let mut drafts = Vec::new();
        for (key, item) in paths {
            // `x-…` keys are extensions, not paths.
            if key.starts_with("x-") {
                continue;
            }
            let at = self.key_at(key);
            self.path(dialect, key, item, at, &document_bases, &mut drafts);
        }
        if drafts.is_empty() && self.errors.is_empty() {
            let at = self.positions.paths.as_ref().map(|p| p.referenced);
            self.error(at, "`paths` lists no path: there are no routes to generate");
        }
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.line, d.column));
            return Err(self.errors);
        }

        // Paths OpenAPI calls identical (the same but for parameter names) match the same requests.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut kept: Vec<Draft> = Vec::new();
        for draft in drafts {
            match seen.get(&draft.shape) {
                Some(&first) => {
                    let first = &kept[first];
                    let line = first.at.map_or(String::new(), |l| format!(" (line {})", l.line()));
                    let message = format!(
                        "`{}` matches the same requests as `{}`{line}: OpenAPI forbids paths that differ only in \
                         parameter names; it gets no rule of its own, its requests get `{}`",
                        draft.display, first.display, first.display
                    );
                    self.warn(draft.at, message);
                }
                None => {
                    seen.insert(draft.shape.clone(), kept.len());
                    kept.push(draft);
                }
            }
        }
        let keys: Vec<Vec<SegmentKey>> = kept.iter().map(|d| d.segments.clone()).collect();
        let mut slots: Vec<Option<Draft>> = kept.into_iter().map(Some).collect();
        let routes = order(&keys)
            .into_iter()
            .filter_map(|i| slots[i].take())
            .map(|d| {
                let (line, column) = d.at.map_or((0, 0), |l| (l.line() as u32, l.column() as u32));
                SpecRoute { path: d.key, line, column, rule: d.rule, examples: d.examples }
            })
            .collect();
        self.warnings.sort_by_key(|d| (d.line, d.column));
        Ok(Spec { file: self.file.to_path_buf(), dialect: name, routes, warnings: self.warnings })
    }

    /// Swagger 2.0's `basePath` (default `/`).
    fn base_path(&mut self) -> Vec<Vec<Part>> {
        let at = self.positions.base_path.as_ref().map(|p| p.referenced);
        match self.root.get("basePath") {
            None => vec![Vec::new()],
            Some(Value::String(base)) if base.starts_with('/') => vec![literal_base(base)],
            Some(_) => {
                self.error(at, "`basePath` must be a path starting with `/`");
                vec![Vec::new()]
            }
        }
    }

    /// The distinct base paths of a `servers` list; `None` when there is none (inherit).
    fn servers(&mut self, servers: Option<&'a Value>, at: Option<Location>) -> Option<Vec<Vec<Part>>> {
        let list = match servers {
            None | Some(Value::Null) => return None,
            Some(Value::Array(list)) if list.is_empty() => return None,
            Some(Value::Array(list)) => list,
            Some(_) => {
                self.error(at, "`servers` must be a list of Server objects");
                return None;
            }
        };
        let mut bases: Vec<Vec<Part>> = Vec::new();
        for server in list {
            let Some(url) = server.get("url").and_then(Value::as_str) else {
                self.error(at, "every server needs a `url`");
                continue;
            };
            match server_base(url, server.get("variables")) {
                Ok(base) => {
                    if !bases.contains(&base) {
                        bases.push(base);
                    }
                }
                Err(message) => self.error(at, format!("server `{url}`: {message}")),
            }
        }
        (!bases.is_empty()).then_some(bases)
    }

    /// The path parameters of a `parameters` list by name (resolved, `in: path` only).
    fn path_parameters(&mut self, list: Option<&'a Value>, at: Option<Location>, into: &mut HashMap<String, &'a Value>) {
        let Some(Value::Array(list)) = list else { return };
        for p in list {
            match self.deref(p) {
                Ok(p) => {
                    if p.get("in").and_then(Value::as_str) == Some("path") {
                        if let Some(name) = p.get("name").and_then(Value::as_str) {
                            into.insert(name.to_string(), p);
                        }
                    }
                }
                Err(message) => self.warn(at, format!("a parameter's {message}: it matches any segment")),
            }
        }
    }

    fn path(&mut self, dialect: Dialect, key: &str, item: &'a Value, at: Option<Location>, document_bases: &[Vec<Part>], drafts: &mut Vec<Draft>) {
        if !key.starts_with('/') {
            self.error(at, format!("path `{key}` must start with `/`"));
            return;
        }
        if key.chars().any(char::is_control) {
            self.error(at, format!("path `{}` contains a control character", key.escape_debug()));
            return;
        }
        let parts = match template_parts(key) {
            Ok(parts) => parts,
            Err(message) => {
                self.error(at, format!("path `{key}` {message}"));
                return;
            }
        };
        let item = match item {
            Value::Null => &NULL,
            other => match self.deref(other) {
                Ok(item) => item,
                Err(message) => {
                    self.warn(at, format!("path `{key}`: {message}: its operations are unknown; its parameters match any segment"));
                    &NULL
                }
            },
        };
        if !(item.is_object() || item.is_null()) {
            self.error(at, format!("path `{key}` must map to a Path Item (a mapping of operations)"));
            return;
        }

        let mut path_params = HashMap::new();
        self.path_parameters(item.get("parameters"), at, &mut path_params);
        let path_bases = match dialect {
            Dialect::OpenApi3 => self.servers(item.get("servers"), at),
            Dialect::Swagger2 => None,
        };
        let path_bases = path_bases.unwrap_or_else(|| document_bases.to_vec());

        // Each operation: its method, its parameters (path-level overridden by its own), its bases.
        struct Operation<'v> {
            method: String,
            params: HashMap<String, &'v Value>,
            bases: Vec<Vec<Part>>,
        }
        let mut operations = Vec::new();
        let methods = item.as_object().into_iter().flatten().filter(|(k, op)| METHODS.contains(&k.as_str()) && op.is_object());
        for (method, op) in methods {
            let mut params = path_params.clone();
            self.path_parameters(op.get("parameters"), at, &mut params);
            let bases = match dialect {
                Dialect::OpenApi3 => self.servers(op.get("servers"), at),
                Dialect::Swagger2 => None,
            };
            operations.push(Operation { method: method.to_ascii_uppercase(), params, bases: bases.unwrap_or_else(|| path_bases.clone()) });
        }

        let names: Vec<&str> = parts.iter().filter_map(|p| if let Part::Param(n) = p { Some(n.as_str()) } else { None }).collect();
        // A rule serves every method, so a parameter is tightened only when all operations agree.
        let mut patterns: HashMap<String, Option<String>> = HashMap::new();
        for name in &names {
            let mut declared: Vec<Option<String>> = operations.iter().map(|op| op.params.get(*name).and_then(|p| self.pattern(p))).collect();
            if operations.is_empty() {
                declared.push(path_params.get(*name).and_then(|p| self.pattern(p)));
            }
            let first = declared[0].clone();
            patterns.insert(name.to_string(), if declared.iter().all(|p| *p == first) { first } else { None });
        }

        // The path's base paths: its operations', or its own when it has no operation.
        let all: Vec<&Vec<Part>> =
            if operations.is_empty() { path_bases.iter().collect() } else { operations.iter().flat_map(|op| &op.bases).collect() };
        let mut bases: Vec<Vec<Part>> = Vec::new();
        for base in all {
            if !bases.contains(base) {
                bases.push(base.clone());
            }
        }
        for base in &bases {
            let mut full = base.clone();
            full.extend(parts.iter().cloned());
            let template = Template { parts: merge_literals(full), patterns: &patterns };
            let rule = if template.has_captures() {
                Rule::Regex { regex: template.regex(), template: template.contract_template() }
            } else {
                Rule::Exact(template.display())
            };
            let mut examples: Vec<Example> = Vec::new();
            for op in operations.iter().filter(|op| op.bases.contains(base)) {
                let values: HashMap<String, String> = names.iter().map(|n| (n.to_string(), self.example(n, op.params.get(*n).copied()))).collect();
                // Every value of every server variable (the others at their defaults).
                let mut variants = vec![HashMap::new()];
                for part in &template.parts {
                    if let Part::Var { capture, values, .. } = part {
                        variants.extend(values.iter().map(|v| HashMap::from([(capture.as_str(), v.as_str())])));
                    }
                }
                for vars in &variants {
                    let (path, route) = template.example(&values, vars);
                    match examples.iter_mut().find(|e| e.path == path && e.route == route) {
                        Some(e) => {
                            if !e.methods.contains(&op.method) {
                                e.methods.push(op.method.clone());
                            }
                        }
                        None => examples.push(Example { methods: vec![op.method.clone()], path, route }),
                    }
                }
            }
            drafts.push(Draft {
                key: key.to_string(),
                at,
                rule,
                shape: template.shape(),
                display: template.display(),
                segments: template.segment_keys(),
                examples,
            });
        }
    }

    /// A parameter's schema: OpenAPI 3's `schema` (or that of its `content`), Swagger 2.0's
    /// parameter itself; `$ref`s and a lone `allOf` followed.
    fn schema(&self, param: &'a Value) -> Option<&'a Value> {
        let schema = if param.get("in").is_some() && (param.get("schema").is_some() || param.get("content").is_some()) {
            match param.get("schema") {
                Some(s) => s,
                None => param.get("content")?.as_object()?.values().next()?.get("schema")?,
            }
        } else {
            param
        };
        let mut schema = self.deref(schema).ok()?;
        for _ in 0..MAX_REF_HOPS {
            match schema.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 && schema.get("type").is_none() => schema = self.deref(&all[0]).ok()?,
                _ => break,
            }
        }
        Some(schema)
    }

    /// The regex a parameter's values match, when its schema says more than "a segment".
    fn pattern(&self, param: &'a Value) -> Option<String> {
        // `label` and `matrix` values carry a prefix (`.5`, `;id=5`): not the schema's text alone.
        if param.get("style").and_then(Value::as_str).is_some_and(|s| s != "simple") {
            return None;
        }
        let schema = self.schema(param)?;
        let values: Option<Vec<String>> = match (schema.get("enum"), schema.get("const")) {
            (Some(Value::Array(values)), _) => values.iter().filter(|v| !v.is_null()).map(scalar_text).collect(),
            (None, Some(value)) => scalar_text(value).map(|v| vec![v]),
            _ => None,
        };
        if let Some(values) = values.filter(|v| !v.is_empty()) {
            let mut unique: Vec<String> = Vec::new();
            for v in values {
                let v = escape(&v);
                if !unique.contains(&v) {
                    unique.push(v);
                }
            }
            return Some(if unique.len() == 1 { unique.remove(0) } else { format!("(?:{})", unique.join("|")) });
        }
        match schema_type(schema)? {
            "integer" => {
                let unsigned = schema.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0);
                Some(if unsigned { "[0-9]+" } else { "-?[0-9]+" }.into())
            }
            "boolean" => Some("(?:true|false)".into()),
            "string" if schema.get("format").and_then(Value::as_str) == Some("uuid") => Some(UUID.into()),
            _ => None,
        }
    }

    /// A parameter's example value: the document's (`example`, `examples`, Swagger's
    /// `x-example`, the schema's `example`/`examples`/`default`/`enum`/`const`), else one that
    /// fits the schema.
    fn example(&self, name: &str, param: Option<&'a Value>) -> String {
        let Some(param) = param else { return format!("{name}-1") };
        let first_example = |examples: &'a Value| -> Option<String> {
            match examples {
                Value::Array(list) => list.iter().find_map(scalar_text),
                Value::Object(map) => map.values().find_map(|e| self.deref(e).ok()?.get("value").and_then(scalar_text)),
                _ => None,
            }
        };
        let declared = param
            .get("example")
            .and_then(scalar_text)
            .or_else(|| param.get("examples").and_then(first_example))
            .or_else(|| param.get("x-example").and_then(scalar_text));
        if let Some(value) = declared {
            return value;
        }
        let Some(schema) = self.schema(param) else { return format!("{name}-1") };
        let from_schema = schema
            .get("example")
            .and_then(scalar_text)
            .or_else(|| schema.get("examples").and_then(first_example))
            .or_else(|| schema.get("default").and_then(scalar_text))
            .or_else(|| schema.get("enum").and_then(Value::as_array).and_then(|v| v.iter().find_map(scalar_text)))
            .or_else(|| schema.get("const").and_then(scalar_text));
        if let Some(value) = from_schema {
            return value;
        }
        match schema_type(schema) {
            Some("integer") => {
                let min = schema.get("minimum").and_then(Value::as_f64).map_or(i64::MIN, |m| m.ceil() as i64);
                let max = schema.get("maximum").and_then(Value::as_f64).map_or(i64::MAX, |m| m.floor() as i64);
                42i64.max(min).min(max.max(min)).to_string()
            }
            Some("number") => "4.2".into(),
            Some("boolean") => "true".into(),
            Some("string") if schema.get("format").and_then(Value::as_str) == Some("uuid") => UUID_EXAMPLE.into(),
            _ => format!("{name}-1"),
        }
    }
}

/// A schema's one non-null `type` (OpenAPI 3.1 allows a list, e.g. `[integer, "null"]`).
fn schema_type(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => {
            let mut types = types.iter().filter_map(Value::as_str).filter(|t| *t != "null");
            let only = types.next()?;
            types.next().is_none().then_some(only)
        }
        _ => None,
    }
}

/// A base path without variables: `/` and a trailing `/` add nothing before a path key.
fn literal_base(base: &str) -> Vec<Part> {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        Vec::new()
    } else {
        vec![Part::Lit(base.to_string())]
    }
}

/// Adjacent literals as one (a base path and a key meet in one).
fn merge_literals(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    for p in parts {
        match (out.last_mut(), p) {
            (Some(Part::Lit(a)), Part::Lit(b)) => a.push_str(&b),
            (_, p) => out.push(p),
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The base path a server URL gives: its path part (an absolute URL's, or a relative URL as it
/// is), variables at their defaults but for those with several `enum` values, which become
/// captures.
fn server_base(url: &str, variables: Option<&Value>) -> Result<Vec<Part>, String> {
    let variable = |name: &str| -> Result<(String, Vec<String>), String> {
        let v = variables.and_then(|vars| vars.get(name)).ok_or_else(|| format!("variable `{{{name}}}` is not in `variables`"))?;
        let default = v.get("default").and_then(scalar_text).ok_or_else(|| format!("variable `{name}` has no `default`"))?;
        let mut values: Vec<String> = Vec::new();
        for value in v.get("enum").and_then(Value::as_array).into_iter().flatten().filter_map(scalar_text) {
            if !values.contains(&value) {
                values.push(value);
            }
        }
        Ok((default, values))
    };
    let after_authority = |url: &str| -> String {
        let rest = url.split_once("://").map_or_else(|| url.strip_prefix("//").unwrap_or(url), |(_, rest)| rest);
        rest.find('/').map_or(String::new(), |i| rest[i..].to_string())
    };
    let is_absolute = |url: &str| url.contains("://") || url.starts_with("//");
    let path = if is_absolute(url) {
        after_authority(url)
    } else {
        // `{server}/v1` with `server: https://api.example.com`: absolute once the variables are in.
        let mut substituted = String::new();
        for part in template_parts(url)? {
            match part {
                Part::Lit(text) => substituted.push_str(&text),
                Part::Param(name) => substituted.push_str(&variable(&name)?.0),
                Part::Var { .. } => {}
            }
        }
        if is_absolute(&substituted) {
            return Ok(literal_base(strip_query(&after_authority(&substituted))));
        }
        url.to_string()
    };
    let path = strip_query(&path);
    // A relative URL without a leading `/` (`v1`, `./v1`) is read from the root.
    let path = path.strip_prefix('.').filter(|p| p.is_empty() || p.starts_with('/')).unwrap_or(path);
    let path = if path.is_empty() || path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let path = path.trim_end_matches('/');

    let mut parts = Vec::new();
    let mut captures: Vec<String> = Vec::new();
    for part in template_parts(path)? {
        match part {
            Part::Param(name) => {
                let (default, values) = variable(&name)?;
                if values.len() > 1 {
                    // The template keeps the value (`${version}`); capture names are [A-Za-z0-9_].
                    let mut capture: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
                    if !capture.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                        capture.insert(0, '_');
                    }
                    let stem = capture.clone();
                    let mut n = 2;
                    while captures.contains(&capture) {
                        capture = format!("{stem}_{n}");
                        n += 1;
                    }
                    captures.push(capture.clone());
                    parts.push(Part::Var { capture, values, default });
                } else {
                    parts.push(Part::Lit(values.into_iter().next().unwrap_or(default)));
                }
            }
            lit => parts.push(lit),
        }
    }
    Ok(merge_literals(parts))
}

fn strip_query(path: &str) -> &str {
    &path[..path.find(['?', '#']).unwrap_or(path.len())]
}

// ---------------------------------------------------------------- output

/// A YAML scalar: plain when it cannot be misread, else single-quoted.
fn yaml_scalar(text: &str) -> String {
    let plain = text.starts_with('/') && text.chars().all(|c| c.is_ascii_alphanumeric() || "/_{}.$~-+@".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

/// The contract's `routes:` block for `spec`, ending in a newline: `unmatched` and
/// `raw_max_length` as given (what the contract had; `other` and none for a new one).
pub fn routes_block(spec: &Spec, source: &str, unmatched: Unmatched, raw_max_length: Option<u32>) -> String {
    let mut out = String::from("routes:\n");
    out.push_str(&format!(
        "  # Generated by `metricpact routes` from {} ({}):\n  # one rule per path, literal segments before parameters. Regenerate it rather than edit it.\n",
        source.replace(['\n', '\r'], " "),
        spec.dialect.replace(['\n', '\r'], " "),
    ));
    out.push_str("  rules:\n");
    for route in &spec.routes {
        match &route.rule {
            Rule::Exact(path) => out.push_str(&format!("    - exact: {}\n", yaml_scalar(path))),
            Rule::Regex { regex, template } => {
                out.push_str(&format!("    - regex: '{}'\n", regex.replace('\'', "''")));
                out.push_str(&format!("      template: {}\n", yaml_scalar(template)));
            }
        }
    }
    out.push_str(match unmatched {
        Unmatched::Other => "  unmatched: other\n",
        Unmatched::Raw => "  unmatched: raw\n",
    });
    if let Some(length) = raw_max_length {
        out.push_str(&format!("  raw_max_length: {length}\n"));
    }
    out
}

/// Whether a line is the top-level `routes:` key (plain or quoted).
fn is_routes_key(line: &str) -> bool {
    let rest = ["routes", "\"routes\"", "'routes'"].iter().find_map(|k| line.strip_prefix(k));
    let Some(rest) = rest.map(|r| r.trim_start_matches([' ', '\t'])) else { return false };
    let Some(after) = rest.strip_prefix(':') else { return false };
    after.is_empty() || after.starts_with([' ', '\t', '\r', '\n'])
}

/// `text` with its top-level `routes:` block replaced by `block` (`\n` line ends, turned into the
/// file's own): the block runs from the key to the next top-level line that is not a comment,
/// less the blank lines and top-level comments before that line (they introduce what follows).
/// Every other byte stays as it was. A contract without `routes:` gets the block at its end.
pub fn replace_routes_block(text: &str, block: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let keys: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| is_routes_key(l)).map(|(i, _)| i).collect();
    let crlf = text.contains("\r\n");
    let block = if crlf { block.replace('\n', "\r\n") } else { block.to_string() };
    let blank = |l: &str| l.trim().is_empty();
    match keys.as_slice() {
        [] => {
            let mut out = text.to_string();
            let newline = if crlf { "\r\n" } else { "\n" };
            if !out.is_empty() {
                if !out.ends_with('\n') {
                    out.push_str(newline);
                }
                if !lines.last().is_some_and(|l| blank(l)) {
                    out.push_str(newline);
                }
            }
            out.push_str(&block);
            Ok(out)
        }
        [start] => {
            let mut end = start + 1;
            while end < lines.len() && (blank(lines[end]) || lines[end].starts_with([' ', '\t', '#'])) {
                end += 1;
            }
            while end > start + 1 && (blank(lines[end - 1]) || lines[end - 1].starts_with('#')) {
                end -= 1;
            }
            let mut out: String = lines[..*start].concat();
            out.push_str(&block);
            out.push_str(&lines[end..].concat());
            Ok(out)
        }
        [first, second, ..] => Err(format!("has two top-level `routes:` keys (lines {} and {})", first + 1, second + 1)),
    }
}

/// What `routes --contract` makes of a contract.
#[derive(Debug)]
pub struct Update {
    /// The contract's text with the new `routes:` block.
    pub text: String,
    /// The old block's rules the new one lacks, e.g. ``prefix: /static/` → `/static/*``.
    pub dropped: Vec<String>,
}

/// The contract `source` (which checks clean and compiles to `config`) with a `routes:` block
/// made from `spec` (`shown` names it in the block's comment), keeping the contract's
/// `unmatched` and `raw_max_length`. The result is checked again: `Err` holds the diagnostics of
/// the contract as it would be, so that a write never leaves a contract that does not check.
pub fn update_contract(source: &Source, config: &PluginConfig, spec: &Spec, shown: &str) -> Result<Update, Vec<Diagnostic>> {
    let old = &config.routes;
    let raw_max_length = (old.raw_max_length != DEFAULT_RAW_MAX_LENGTH).then_some(old.raw_max_length);
    let block = routes_block(spec, shown, old.unmatched, raw_max_length);
    let text = replace_routes_block(&source.text, &block).map_err(|m| vec![diagnostic(&source.path, None, Severity::Error, m)])?;
    let updated = Source { path: source.path.clone(), text };
    let compiled = compile_source(&updated);
    let Some(new) = compiled.config else { return Err(compiled.diagnostics) };
    let describe = |rule: &RouteRule| {
        let (kind, text) = match &rule.matcher {
            RouteMatch::Exact(t) => ("exact", t),
            RouteMatch::Prefix(t) => ("prefix", t),
            RouteMatch::Regex(t) => ("regex", t),
        };
        format!("`{kind}: {text}` → `{}`", rule.template)
    };
    let dropped = old.rules.iter().filter(|r| !new.routes.rules.contains(r)).map(describe).collect();
    Ok(Update { text: updated.text, dropped })
}

/// Writes `text` over the file at `path` (through a symlink) by renaming a new file over it,
/// so that the file is either the old contract or the new one, never a part of it.
pub fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    let target = std::fs::canonicalize(path)?;
    let permissions = std::fs::metadata(&target)?.permissions();
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = target.with_file_name(format!(".{name}.metricpact-{}", std::process::id()));
    let written = std::fs::write(&temporary, text)
        .and_then(|()| std::fs::set_permissions(&temporary, permissions))
        .and_then(|()| std::fs::rename(&temporary, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

// ---------------------------------------------------------------- coverage

/// `check --openapi`: an error for every path of the document (per base path) with an example
/// request (one per operation and server-variable value) that `routes` does not route to the
/// path's own template, at the path's key, in document order. The document's own warnings are
/// the caller's to report, once.
pub fn coverage(spec: &Spec, contract: &Path, routes: &RouteTable) -> Vec<Diagnostic> {
    let matcher = match RouteMatcher::new(&routes.rules) {
        Ok(m) => m,
        Err(e) => {
            let message = format!("route rule {} of {} does not compile: {}", e.rule + 1, contract.display(), e.message);
            return vec![diagnostic(contract, None, Severity::Error, message)];
        }
    };
    let mut out = Vec::new();
    for route in &spec.routes {
        let mut astray = route.examples.iter().filter_map(|example| {
            let got = route_text(&matcher, &example.path);
            (got.as_deref() != Some(example.route.as_str())).then(|| (example, got.map(|g| g.into_owned())))
        });
        let Some((example, got)) = astray.next() else { continue };
        let got = match (got, routes.unmatched) {
            (Some(template), _) => format!("to `{template}`"),
            (None, Unmatched::Other) => "to `_OTHER` (no rule matches)".into(),
            (None, Unmatched::Raw) => "to its raw path (no rule matches; `unmatched: raw`)".into(),
        };
        let more = match astray.count() {
            0 => String::new(),
            1 => " (and 1 more example request of this path)".into(),
            n => format!(" (and {n} more example requests of this path)"),
        };
        out.push(Diagnostic {
            file: spec.file.clone(),
            line: route.line,
            column: route.column,
            severity: Severity::Error,
            message: format!(
                "{} {}: {} routes `{}` {got}, not `{}`{more}",
                example.methods.join(", "),
                route.path,
                contract.display(),
                example.path,
                example.route
            ),
            ..Diagnostic::default()
        });
    }
    // Rules are in match order; findings read best in the document's.
    out.sort_by_key(|d| (d.line, d.column));
    out
}

#[cfg(test)]
mod tests;
