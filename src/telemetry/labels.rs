//! The contract's labels: where each one's value comes from, how a request's attributes become
//! values (methods, route templates, schemes, protocols), the per-label value tables with their
//! budgets, and how a label combination is written into Istio's stat-name encoding.

use std::borrow::Cow;

use crate::config::{NodeLookup, PluginConfig, Source, Unmatched, MAX_LABELS};
use crate::label_values::{sanitize, sanitize_str, ValueTable, EMPTY_ID, OTHER_ID};
use crate::names::OTHER;
use crate::routes::{RouteMatcher, RouteOutcome};

use super::error_type::{GRPC_STATUS_CODES, GRPC_STATUS_NAMES};
use super::migrations::{self, LabelAlias};
use super::series::{push_tag, Key};
use super::{Bytes, MetricHost, MetricKind, RequestAttributes, LABEL_OVERFLOW_METRIC};

pub(super) struct Label {
    pub name: String,
    pub sources: Vec<Source>,
    /// Value id used when no source yields a value.
    default_id: u32,
    /// For labels whose sources are all static: the value id fixed at configure time.
    static_id: Option<u32>,
    pub response_side: bool,
    overflow_counter: Option<u32>,
    /// Process-wide budget scope of this label's values.
    budget_scope: String,
    max_values: u32,
}

impl Label {
    pub fn is_static(&self) -> bool {
        self.static_id.is_some()
    }
}

/// The labels of a configuration with their value tables (parallel vectors: a label's position is
/// its index in a series [`Key`]) and the aliases migrations add.
pub(super) struct LabelSet {
    pub labels: Vec<Label>,
    tables: Vec<ValueTable>,
    aliases: Vec<LabelAlias>,
    max_value_length: usize,
}

impl LabelSet {
    /// Builds the labels of `config`. Node metadata is read here only, through `node`: a label of
    /// node sources alone becomes a constant of this sidecar; in a chain with request sources it
    /// becomes the constant fallback it is (or goes, when the node lacks it). Fixed values
    /// (methods, fixed route templates, gRPC statuses, defaults) are interned up front, outside
    /// the budgets.
    pub fn new(config: &PluginConfig, routes: &RouteMatcher, node: &NodeLookup<'_>, budget_prefix: &str) -> LabelSet {
        let max_value_length = config.max_value_length as usize;
        let clean = |v: &[u8]| sanitize(v, max_value_length).into_owned();
        let mut labels = Vec::with_capacity(config.labels.len());
        let mut tables = Vec::with_capacity(config.labels.len());
        for spec in &config.labels {
            let mut table = ValueTable::new(spec.max_values, spec.allowed.as_deref());
            for source in &spec.sources {
                match source {
                    Source::RequestMethod => {
                        for m in &config.methods {
                            table.intern_fixed(m);
                        }
                    }
                    Source::RequestRoute => {
                        for index in routes.fixed_rules() {
                            table.intern_fixed(&clean(routes.template(index).as_bytes()));
                        }
                    }
                    Source::ResponseGrpcStatusName => {
                        for name in GRPC_STATUS_NAMES {
                            table.intern_fixed(name);
                        }
                    }
                    Source::ResponseGrpcStatus => {
                        for code in GRPC_STATUS_CODES {
                            table.intern_fixed(code);
                        }
                    }
                    _ => {}
                }
            }
            let default_id = table.intern_fixed(&clean(spec.default.as_bytes()));
            let static_id = spec.sources.iter().all(Source::is_static).then(|| {
                // The first source with a value wins: an empty one falls through to the next.
                let value = spec.sources.iter().find_map(|s| match s {
                    Source::Constant { value } => Some(clean(value.as_bytes())).filter(|v| !v.is_empty()),
                    Source::Node { key, field } => node(key, field.as_deref()).map(|v| clean(&v)).filter(|v| !v.is_empty()),
                    _ => None,
                });
                match value {
                    Some(v) => table.intern_fixed(&v),
                    None => default_id,
                }
            });
            let sources = spec
                .sources
                .iter()
                .filter_map(|s| match s {
                    Source::Node { key, field } => node(key, field.as_deref())
                        .map(|v| Source::Constant { value: String::from_utf8_lossy(&v).into_owned() }),
                    other => Some(other.clone()),
                })
                .collect();
            labels.push(Label {
                name: spec.name.clone(),
                sources,
                default_id,
                static_id,
                response_side: spec.sources.iter().any(Source::is_response_side),
                overflow_counter: None,
                budget_scope: format!("{budget_prefix}.label.{}", spec.name),
                max_values: spec.max_values,
            });
            tables.push(table);
        }
        let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
        let aliases = migrations::label_aliases(config, &names);
        LabelSet { labels, tables, aliases, max_value_length }
    }

    /// The position of the label called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.labels.iter().position(|l| l.name == name)
    }

    /// Whether any label reads a source `wanted` selects.
    pub fn any_source(&self, wanted: impl Fn(&Source) -> bool) -> bool {
        self.labels.iter().any(|l| l.sources.iter().any(&wanted))
    }

    pub fn value(&self, position: usize, id: u32) -> &str {
        self.tables[position].value(id)
    }

    /// A key with only the static labels' values and every other label's default.
    pub fn blank_key(&self) -> Key {
        let mut key = [EMPTY_ID; MAX_LABELS];
        for (i, label) in self.labels.iter().enumerate() {
            key[i] = label.static_id.unwrap_or(label.default_id);
        }
        key
    }

    /// Defines the overflow counter of every label whose values come from traffic.
    pub fn define_overflow_counters(&mut self, host: &mut dyn MetricHost) {
        for label in &mut self.labels {
            if label.static_id.is_none() {
                let name = format!("{LABEL_OVERFLOW_METRIC}.{}", super::encode_tags(&[("metricpact_label", &label.name)]));
                label.overflow_counter = host.define(MetricKind::Counter, &name);
            }
        }
    }

    /// Resolves the label at `position`: the first of its sources `side` has a (non-empty) value
    /// for, sanitized and interned, or its default; values its budget refuses are counted.
    pub fn resolve(&mut self, position: usize, host: &mut dyn MetricHost, side: &impl ValueSource) -> u32 {
        let label = &self.labels[position];
        let Some(value) = label.sources.iter().find_map(|s| side.value(s).filter(|v| !v.is_empty())) else {
            return label.default_id;
        };
        let value = sanitize_str(&value, self.max_value_length);
        let interned = self.tables[position].intern_with(&value, |v| host.admit(&label.budget_scope, v, label.max_values));
        if interned.overflowed {
            if let Some(id) = label.overflow_counter {
                host.increment(id, 1);
            }
        }
        interned.id
    }

    /// The key every over-budget combination collapses into: traffic-derived labels become
    /// `_OTHER`, the pod's own identity (static labels) is kept so per-pod sums stay whole.
    pub fn overflow_key(&self, key: &Key) -> Key {
        let mut overflow = *key;
        for (i, label) in self.labels.iter().enumerate() {
            if label.static_id.is_none() && key[i] != label.default_id {
                overflow[i] = OTHER_ID;
            }
        }
        overflow
    }

    /// The stat-name tags of `key` (the positions `mask` selects, all without one), each renamed
    /// label followed by its old name while its migration runs.
    pub fn encode(&self, key: &Key, mask: Option<&[bool; MAX_LABELS]>) -> String {
        let mut out = String::new();
        for (i, label) in self.labels.iter().enumerate() {
            if mask.is_some_and(|m| !m[i]) {
                continue;
            }
            let value = self.tables[i].value(key[i]);
            push_tag(&mut out, &label.name, value);
            for alias in self.aliases.iter().filter(|a| a.position == i) {
                push_tag(&mut out, &alias.old, value);
            }
        }
        out
    }

    /// Ends the aliases whose sunset has passed; returns the latest sunset that ended, if any.
    pub fn expire_aliases(&mut self, now_unix: u64) -> Option<u64> {
        migrations::expire_aliases(&mut self.aliases, now_unix)
    }

    pub fn alias_sunsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.aliases.iter().map(|a| a.sunset_unix)
    }
}

/// What gives label sources their values: the request side at request headers, the response side
/// ([`super::error_type::Verdict`]) when the stream is done. The implementations are `#[inline]`
/// into [`LabelSet::resolve`]: a call per source costs more than the match does (natively 2,982
/// instead of 2,722 instructions per request of the default contract).
pub(super) trait ValueSource {
    /// The value `source` has for this stream, before sanitizing (`None`: it has none, the
    /// label's next source is asked).
    fn value<'a>(&'a self, source: &'a Source) -> Option<Cow<'a, str>>;
}

/// The request side of a stream.
pub(super) struct RequestSide<'a> {
    pub normalizer: &'a Normalizer,
    pub request: &'a dyn RequestAttributes,
    pub grpc: bool,
}

impl ValueSource for RequestSide<'_> {
    // Inlined: see `ValueSource`.
    #[inline]
    fn value<'a>(&'a self, source: &'a Source) -> Option<Cow<'a, str>> {
        self.normalizer.request_value(source, self.request, self.grpc)
    }
}

/// Turns request attributes into label values (immutable after configure).
pub(super) struct Normalizer {
    pub methods: Vec<String>,
    pub routes: RouteMatcher,
    pub unmatched: Unmatched,
    pub raw_max_length: usize,
}

impl Normalizer {
    fn request_value<'a>(&'a self, source: &'a Source, request: &'a dyn RequestAttributes, grpc: bool) -> Option<Cow<'a, str>> {
        match source {
            Source::RequestGrpcMethod | Source::RequestGrpcService => {
                if !grpc {
                    return None;
                }
                let path = request.path()?;
                Some(match grpc_path(&path) {
                    Some((service, method)) => {
                        let part = if *source == Source::RequestGrpcService { service } else { method };
                        Cow::Owned(String::from_utf8_lossy(part).into_owned())
                    }
                    None => Cow::Borrowed(OTHER),
                })
            }
            Source::RequestMethod => {
                let method = request.method()?;
                let known = self.methods.iter().find(|m| m.as_bytes() == &*method);
                Some(Cow::Borrowed(known.map_or(OTHER, |m| m.as_str())))
            }
            Source::RequestRoute => {
                let path = request.path()?;
                let path = text(&path);
                Some(match self.routes.route(&path) {
                    RouteOutcome::Fixed(i) => Cow::Borrowed(self.routes.template(i)),
                    RouteOutcome::Expanded(s) => Cow::Owned(s),
                    RouteOutcome::Unmatched(raw) => match self.unmatched {
                        Unmatched::Other => Cow::Borrowed(OTHER),
                        Unmatched::Raw => Cow::Owned(raw[..floor_char_boundary(raw, self.raw_max_length)].to_string()),
                    },
                })
            }
            Source::RequestScheme => {
                if let Some(proto) = request.forwarded_proto() {
                    if proto.eq_ignore_ascii_case(b"https") {
                        return Some(Cow::Borrowed("https"));
                    }
                    if proto.eq_ignore_ascii_case(b"http") {
                        return Some(Cow::Borrowed("http"));
                    }
                }
                match &*request.scheme()? {
                    b"http" => Some(Cow::Borrowed("http")),
                    b"https" => Some(Cow::Borrowed("https")),
                    other => Some(Cow::Owned(String::from_utf8_lossy(other).to_ascii_lowercase())),
                }
            }
            Source::RequestProtocol => {
                let protocol = request.protocol()?;
                Some(match &*protocol {
                    b"HTTP/1.1" => Cow::Borrowed("1.1"),
                    b"HTTP/2" => Cow::Borrowed("2"),
                    b"HTTP/3" => Cow::Borrowed("3"),
                    b"HTTP/1.0" => Cow::Borrowed("1.0"),
                    other => Cow::Owned(String::from_utf8_lossy(other.strip_prefix(b"HTTP/").unwrap_or(other)).into_owned()),
                })
            }
            Source::RequestHeader { name } => request.header(name).map(into_text),
            // A static source after request sources that yielded nothing.
            Source::Constant { value } => Some(Cow::Borrowed(value.as_str())),
            _ => None,
        }
    }
}

/// `(service, method)` of a gRPC `:path` `/package.Service/Method` (query cut), if it has that shape.
fn grpc_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let path = path.split(|&b| b == b'?').next()?.strip_prefix(b"/")?;
    let slash = path.iter().position(|&b| b == b'/')?;
    let (service, method) = (&path[..slash], &path[slash + 1..]);
    (!service.is_empty() && !method.is_empty() && !method.contains(&b'/')).then_some((service, path))
}

/// Bytes as text, invalid UTF-8 replaced: `from_utf8_lossy`'s result, but valid input (nearly
/// all of it) takes `from_utf8`'s faster scan.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// [`text`] of an attribute, borrowing what the attribute borrows.
fn into_text(bytes: Bytes<'_>) -> Cow<'_, str> {
    match bytes {
        Cow::Borrowed(b) => text(b),
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
