//! Route templating, label sanitizing and the Istio-style stat-name encoding, end to end.
//!
//! Arbitrary requests (method, path, scheme, `x-forwarded-proto`, protocol, header values,
//! status, response details) and node metadata go through the filter's core ([`Engine`]) with an
//! in-memory host. Every stat name it defines is decoded the way Envoy's tag extraction does with
//! the `stats_tags` metricpact renders (`(TAG=\.=(.*?);\.;)`, first match on the full name, the
//! match removed from the tag-extracted name; see [`tag_match`]), and:
//! - every tag-extracted name is exactly `wasmcustom.METRIC.` for a metric the config emits;
//! - no decoded value can carry a separator (`;`, `=`), a quote, a backslash, a control or
//!   non-ASCII byte, or exceed `max_value_length` (`_OTHER` aside);
//! - the series a request is counted, timed and marked active in decodes to exactly the labels
//!   the contract means for it: an independent reading of the documented rules (first source
//!   that yields a value, routes in contract order with `$$` a literal dollar, sanitizing, the
//!   per-label value budget and allow-list, the series budget's overflow series).
//!
//! Input: byte 0 picks the configuration; the rest is split at 0xFF into the node metadata and
//! up to 16 requests, each split at 0xFE into its fields.
#![no_main]

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metricpact::config::*;
use metricpact::envoy_stats::{tag_regex, WASM_CUSTOM_PREFIX};
use metricpact::label_values::sanitize;
use metricpact::names::OTHER;
use metricpact::routes::anchored;
use metricpact::routes::RouteMatcher;
use metricpact::telemetry::{
    error_type, status_class, Bytes, Engine, MetricHost, MetricKind, RequestAttributes, ResponseAttributes, CONTRACT_INFO_METRIC, GRPC_STATUS_NAMES,
    SELF_METRIC_NAMES,
};
use regex::Regex;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Configurations

fn label(name: &str, sources: serde_json::Value, default: &str, max_values: u32, allowed: Option<&[&str]>) -> serde_json::Value {
    let mut label = json!({"name": name, "sources": sources, "default": default, "max_values": max_values});
    if let Some(allowed) = allowed {
        label["allowed"] = json!(allowed);
    }
    label
}

fn node_src(key: &str, field: Option<&str>) -> serde_json::Value {
    match field {
        Some(field) => json!({"kind": "node", "key": key, "field": field}),
        None => json!({"kind": "node", "key": key}),
    }
}

fn header(name: &str) -> serde_json::Value {
    json!({"kind": "request_header", "name": name})
}

fn kind(kind: &str) -> serde_json::Value {
    json!({"kind": kind})
}

fn rule(matcher: &str, value: &str, template: &str) -> serde_json::Value {
    json!({"match": {"kind": matcher, "value": value}, "template": template})
}

/// A contract that tries to break the encoding: capture-expanding and literal route templates,
/// raw unmatched paths, header values, mixed source chains, a constant with separators, tight
/// budgets and a short `max_value_length`. Built from JSON, as the filter reads it. (Allow-list
/// values and methods a stat name cannot carry, such as `x;y` or `BR=EW`, are refused by the
/// validator the filter shares with `check`: the hostile text comes from defaults, constants,
/// headers and paths.)
fn hostile(tight: bool) -> PluginConfig {
    let max = |n: u32| if tight { n } else { 10_000 };
    let config = json!({
        "format": CONFIG_FORMAT,
        "contract": {"name": "hostile", "version": "1.0;.;x=.=y\"\\", "hash": "0123456789ab"},
        "requests": {"name": "req_total"},
        "duration": {"name": "dur_milliseconds", "unit": "milliseconds", "buckets": [1, 10]},
        "active_requests": {
            "name": "active",
            "labels": ["http_request_method", "http_route", "tenant", "zone", "k8s_pod_name"],
        },
        "labels": [
            label("http_request_method", json!([kind("request_method")]), "", max(3), None),
            label("http_route", json!([kind("request_route")]), "", max(4), None),
            label("http_response_status_code", json!([kind("response_status_code")]), "", max(4), None),
            label("http_response_status_class", json!([kind("response_status_class")]), "", max(100), None),
            label("error_type", json!([kind("response_error_type")]), "", max(3), None),
            label("url_scheme", json!([kind("request_scheme")]), "", max(2), None),
            label("network_protocol_version", json!([kind("request_protocol")]), "", max(3), None),
            label("tenant", json!([header("x-tenant"), header("x-org")]), "no;ne", max(3), None),
            label("tier", json!([header("x-tier")]), "none", max(100), Some(&["free", "pro", "x-y"])),
            label("zone", json!([header("x-zone"), node_src("NAMESPACE", None)]), "", max(3), None),
            label("k8s_pod_name", json!([node_src("NAME", None)]), "", 1, None),
            label(
                "service_name",
                json!([
                    node_src("LABELS", Some("service.istio.io/canonical-name")),
                    node_src("LABELS", Some("app")),
                    node_src("WORKLOAD_NAME", None),
                ]),
                "svc",
                1,
                None,
            ),
            label("env", json!([{"kind": "constant", "value": "prod;.;k8s_pod_name=.=evil"}]), "", 1, None),
        ],
        "methods": ["GET", "POST", "get", "BREW"],
        "routes": {
            "rules": [
                rule("exact", "/healthz", "/healthz"),
                rule("regex", "/users/(?P<id>[^/]*)", "/users/$id"),
                rule("regex", "/r/(.*)/(.*)", "/r/${2}-$1/{x}"),
                rule("regex", "/e(.*)", "$1"),
                rule("prefix", "/price/", "/price/$$"),
                rule("regex", "/cost/[0-9]+", "/cost/$$/{n}"),
                rule("regex", "/money/([0-9]+)", "/money/$$$1"),
                rule("prefix", "/static/", "/static/*"),
                rule("exact", "/odd", "/odd;.;k8s_pod_name=.=x"),
            ],
            "unmatched": if tight { "raw" } else { "other" },
            "raw_max_length": if tight { 7 } else { 64 },
        },
        "max_series": if tight { 5 } else { 100_000 },
        "max_value_length": if tight { 12 } else { 128 },
    });
    PluginConfig::from_json(config.to_string().as_bytes()).expect("fixture configuration loads")
}

fn configs() -> &'static Vec<PluginConfig> {
    static CONFIGS: OnceLock<Vec<PluginConfig>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let mut configs: Vec<PluginConfig> =
            common::CONTRACTS[..3].iter().map(|(path, text)| common::compile(path, text)).collect();
        configs.push(hostile(true));
        configs.push(hostile(false));
        configs
    })
}

thread_local! {
    /// Each configuration's compiled route table (validated with the engine once).
    static ROUTES: Vec<RouteMatcher> = configs()
        .iter()
        .map(|c| Engine::new(c, &|_, _| None).and_then(|_| Engine::routes(c)).expect("fixture configuration loads"))
        .collect();
}

/// The tag extractors Envoy gets for a configuration (`metricpact envoy-stats`, Istio's
/// `extraStatTags`), in order. [`tag_match`] implements the regex they render, checked here.
fn extractors() -> &'static Vec<Vec<String>> {
    static EXTRACTORS: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    EXTRACTORS.get_or_init(|| {
        configs()
            .iter()
            .map(|c| {
                c.tag_names()
                    .into_iter()
                    .map(|t| {
                        assert_eq!(tag_regex(t), format!("({t}=\\.=(.*?);\\.;)"), "the rendered tag regex changed: update tag_match");
                        let regex = Regex::new(&tag_regex(t)).unwrap();
                        for probe in [format!("m.{t}=.=v;.;"), format!("m.x{t}=.=a\n;.;{t}=.=b;.;"), "m.".to_string()] {
                            let want = regex.captures(&probe).map(|c| (c.get(1).unwrap().range(), c[2].to_string()));
                            let got = tag_match(&probe, t).map(|(a, b, v)| (a..b, v.to_string()));
                            assert_eq!(got, want, "tag_match disagrees with the tag regex on {probe:?}");
                        }
                        t.to_string()
                    })
                    .collect()
            })
            .collect()
    })
}

/// Where `=.=` and `;.;` start in a stat name, overlapping occurrences included: found once per
/// name, so matching each of a configuration's tags costs a few comparisons, not a search.
struct Separators {
    heads: Vec<usize>,
    ends: Vec<usize>,
}

impl Separators {
    fn of(name: &str) -> Separators {
        let b = name.as_bytes();
        let (mut heads, mut ends) = (Vec::new(), Vec::new());
        for i in 0..b.len().saturating_sub(2) {
            match &b[i..i + 3] {
                b"=.=" => heads.push(i),
                b";.;" => ends.push(i),
                _ => {}
            }
        }
        Separators { heads, ends }
    }
}

/// What Envoy's tag regex `(TAG=\.=(.*?);\.;)` finds in `name` (the first match; `.` does not
/// match a newline): the match's range and the value. Checked against the regex itself.
fn tag_match<'a>(name: &'a str, tag: &str) -> Option<(usize, usize, &'a str)> {
    tag_match_in(name, &Separators::of(name), tag)
}

fn tag_match_in<'a>(name: &'a str, seps: &Separators, tag: &str) -> Option<(usize, usize, &'a str)> {
    let bytes = name.as_bytes();
    for &head in &seps.heads {
        // The leftmost `TAG=.=` first, as the regex finds it.
        if head < tag.len() || &bytes[head - tag.len()..head] != tag.as_bytes() {
            continue;
        }
        let value_start = head + 3;
        let next_end = seps.ends.partition_point(|&e| e < value_start);
        if let Some(&end) = seps.ends.get(next_end) {
            let value = &name[value_start..end];
            if !value.contains('\n') {
                return Some((head - tag.len(), end + 3, value));
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Envoy's side: defining stats and extracting tags

#[derive(Default)]
struct Host {
    names: Vec<(MetricKind, String)>,
    /// `(id, delta)` of every increment and `(id, value)` of every record, in order.
    increments: Vec<(u32, i64)>,
    records: Vec<u32>,
    budgets: HashMap<String, HashSet<String>>,
}

impl MetricHost for Host {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(i) = self.names.iter().position(|(_, n)| n == name) {
            return Some(i as u32);
        }
        self.names.push((kind, name.to_string()));
        Some(self.names.len() as u32 - 1)
    }
    fn increment(&mut self, id: u32, delta: i64) {
        self.increments.push((id, delta));
    }
    fn record(&mut self, id: u32, _value: u64) {
        self.records.push(id);
    }
    fn admit(&mut self, scope: &str, member: &str, max: u32) -> bool {
        let members = self.budgets.entry(scope.to_string()).or_default();
        if members.contains(member) {
            return true;
        }
        if members.len() >= max as usize {
            return false;
        }
        members.insert(member.to_string());
        true
    }
}

/// What Envoy makes of a stat name: each extractor's first match on the full name gives its
/// tag (group 2) and is removed (group 1) from the tag-extracted name.
fn extract(name: &str, extractors: &[String]) -> (String, BTreeMap<String, String>) {
    let full = format!("{WASM_CUSTOM_PREFIX}{name}");
    let seps = Separators::of(&full);
    let mut removed = vec![false; full.len()];
    let mut tags = BTreeMap::new();
    for tag in extractors {
        if let Some((start, end, value)) = tag_match_in(&full, &seps, tag) {
            removed[start..end].iter_mut().for_each(|r| *r = true);
            assert!(tags.insert(tag.clone(), value.to_string()).is_none(), "tag `{tag}` extracted twice from {name}");
        }
    }
    let residual: Vec<u8> = full.bytes().zip(&removed).filter(|(_, r)| !**r).map(|(b, _)| b).collect();
    (String::from_utf8(residual).expect("extraction splits no character"), tags)
}

/// The label set of stat `name`, checked to be a clean extraction of metric `metric`.
fn decode(name: &str, extractors: &[String], metrics: &[&str], max_len: usize) -> (String, BTreeMap<String, String>) {
    let (residual, tags) = extract(name, extractors);
    let metric = residual
        .strip_prefix(WASM_CUSTOM_PREFIX)
        .and_then(|r| r.strip_suffix('.'))
        .filter(|m| metrics.contains(m))
        .unwrap_or_else(|| panic!("stat `{name}` extracts to `{residual}`, not `{WASM_CUSTOM_PREFIX}METRIC.`"));
    for (tag, value) in &tags {
        assert!(!value.is_empty(), "stat `{name}`: empty value for `{tag}`");
        assert!(
            value.bytes().all(|b| (0x21..=0x7e).contains(&b) && !b";=\"\\".contains(&b)),
            "stat `{name}`: value `{value}` of `{tag}` carries a separator, quote, control or non-ASCII byte"
        );
        assert!(value.len() <= max_len || value == OTHER || tag.starts_with("metricpact_"), "stat `{name}`: value of `{tag}` longer than {max_len}");
    }
    (metric.to_string(), tags)
}

/// The contract's labels of a decoded series; a renamed label's old name (a migration) must
/// carry the same value as the new one.
fn traffic_labels(config: &PluginConfig, name: &str, tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    for m in config.migrations.iter().filter(|m| m.kind == MigrationKind::Label) {
        if let Some(old) = tags.get(&m.old) {
            assert_eq!(Some(old), tags.get(&m.new), "stat `{name}`: old label `{}` differs from `{}`", m.old, m.new);
        }
    }
    tags.iter().filter(|(k, _)| config.labels.iter().any(|l| &l.name == *k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// The request side

#[derive(Default, Debug)]
struct Req {
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    scheme: Option<Vec<u8>>,
    forwarded_proto: Option<Vec<u8>>,
    protocol: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl RequestAttributes for Req {
    fn method(&self) -> Option<Bytes<'_>> {
        self.method.as_deref().map(Bytes::Borrowed)
    }
    fn path(&self) -> Option<Bytes<'_>> {
        self.path.as_deref().map(Bytes::Borrowed)
    }
    fn scheme(&self) -> Option<Bytes<'_>> {
        self.scheme.as_deref().map(Bytes::Borrowed)
    }
    fn forwarded_proto(&self) -> Option<Bytes<'_>> {
        self.forwarded_proto.as_deref().map(Bytes::Borrowed)
    }
    fn protocol(&self) -> Option<Bytes<'_>> {
        self.protocol.as_deref().map(Bytes::Borrowed)
    }
    fn header(&self, name: &str) -> Option<Bytes<'_>> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| Bytes::Borrowed(v.as_slice()))
    }
}

#[derive(Debug)]
struct Resp {
    status: Option<u32>,
    details: Option<Vec<u8>>,
    /// Envoy's `response.grpc_status` (-1 when unreadable; Envoy reports one for any request).
    grpc_status: Option<i64>,
}

impl ResponseAttributes for Resp {
    fn status_code(&self) -> Option<u32> {
        self.status
    }
    fn code_details(&self) -> Option<Vec<u8>> {
        self.details.clone()
    }
    fn duration_nanos(&self) -> Option<u64> {
        Some(3_000_000)
    }
    fn grpc_status(&self) -> Option<i64> {
        self.grpc_status
    }
}

const HEADERS: [&str; 5] = ["x-tenant", "x-org", "x-tier", "x-zone", "x-tenant-tier"];

fn opt(field: Option<&[u8]>) -> Option<Vec<u8>> {
    field.map(<[u8]>::to_vec)
}

fn request(chunk: &[u8]) -> (Req, Resp, bool) {
    let f: Vec<&[u8]> = chunk.split(|&b| b == 0xFE).collect();
    let get = |i: usize| f.get(i).copied();
    let flags = get(0).and_then(|f| f.first().copied()).unwrap_or(0);
    let mut headers = Vec::new();
    for (i, name) in HEADERS.iter().enumerate() {
        if let Some(v) = get(6 + i) {
            headers.push((*name, v.to_vec()));
        }
    }
    // Field 13: a content-type (gRPC or not); field 14: the gRPC status, -2 ..= 253.
    if let Some(v) = get(13) {
        headers.push(("content-type", v.to_vec()));
    }
    let req = Req {
        method: opt(get(1)),
        path: opt(get(2)),
        scheme: opt(get(3)),
        forwarded_proto: opt(get(4)),
        protocol: opt(get(5)),
        headers,
    };
    let status = get(11).filter(|s| s.len() >= 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as u32 % 1100);
    let grpc_status = get(14).and_then(|s| s.first()).map(|&b| i64::from(b) - 2);
    let resp = Resp { status, details: opt(get(12)), grpc_status };
    (req, resp, flags & 1 == 1)
}

// ---------------------------------------------------------------------------------------------
// The oracle: what the documentation says each label is

/// gRPC is `application/grpc`, alone or with `+subtype` or parameters (not `grpc-web`).
fn is_grpc(req: &Req) -> bool {
    let Some(content_type) = req.header("content-type") else { return false };
    let content_type = lossy(&content_type).to_ascii_lowercase();
    content_type == "application/grpc" || content_type.starts_with("application/grpc+") || content_type.starts_with("application/grpc;")
}

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// `$$` is a literal dollar; other `$` references expand regex captures.
fn literal_template(template: &str) -> String {
    template.replace("$$", "$")
}

/// The route of `path` per the contract: rules in order, the first that matches wins.
fn route(config: &PluginConfig, regexes: &[Option<Regex>], path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    for (rule, regex) in config.routes.rules.iter().zip(regexes) {
        let hit = match &rule.matcher {
            RouteMatch::Exact(p) => p == path,
            RouteMatch::Prefix(p) => path.starts_with(p.as_str()),
            RouteMatch::Regex(_) => regex.as_ref().unwrap().is_match(path),
        };
        if !hit {
            continue;
        }
        return match regex {
            Some(regex) => {
                let mut out = String::new();
                regex.captures(path).unwrap().expand(&rule.template, &mut out);
                out
            }
            None => literal_template(&rule.template),
        };
    }
    match config.routes.unmatched {
        Unmatched::Other => OTHER.into(),
        Unmatched::Raw => {
            let mut end = path.len().min(config.routes.raw_max_length as usize);
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            path[..end].to_string()
        }
    }
}

struct Oracle<'c> {
    config: &'c PluginConfig,
    node: &'c dyn Fn(&str, Option<&str>) -> Option<Vec<u8>>,
    regexes: &'c [Option<Regex>],
    /// Per label: values it already has, traffic-admitted count, closed by an allow-list.
    tables: Vec<(HashSet<String>, usize, bool)>,
}

impl<'c> Oracle<'c> {
    /// The route rules' regexes (anchored), compiled once per configuration.
    fn regexes(config: &PluginConfig) -> Vec<Option<Regex>> {
        config
            .routes
            .rules
            .iter()
            .map(|r| match &r.matcher {
                RouteMatch::Regex(p) => Some(Regex::new(&anchored(p)).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn new(config: &'c PluginConfig, regexes: &'c [Option<Regex>], node: &'c dyn Fn(&str, Option<&str>) -> Option<Vec<u8>>) -> Oracle<'c> {
        let max_len = config.max_value_length as usize;
        let mut oracle = Oracle { config, node, regexes, tables: Vec::new() };
        for spec in &config.labels {
            let mut known: HashSet<String> = ["".to_string(), OTHER.to_string()].into();
            if let Some(allowed) = &spec.allowed {
                known.extend(allowed.iter().cloned());
            }
            for source in &spec.sources {
                match source {
                    Source::RequestMethod => known.extend(config.methods.iter().cloned()),
                    Source::RequestRoute => {
                        for (rule, regex) in config.routes.rules.iter().zip(oracle.regexes) {
                            let captures = regex.is_some() && rule.template.replace("$$", "").contains('$');
                            if !captures {
                                known.insert(sanitize(literal_template(&rule.template).as_bytes(), max_len).into_owned());
                            }
                        }
                    }
                    _ => {}
                }
            }
            known.insert(oracle.clean(&spec.default));
            if let Some(v) = oracle.static_value(spec) {
                known.insert(v);
            }
            oracle.tables.push((known, 0, spec.allowed.is_some()));
        }
        oracle
    }

    fn clean(&self, v: &str) -> String {
        self.clean_bytes(v.as_bytes())
    }

    /// Sanitizing works on bytes: node metadata is taken as it is, request values (UTF-8 in the
    /// filter) after lossy decoding.
    fn clean_bytes(&self, v: &[u8]) -> String {
        sanitize(v, self.config.max_value_length as usize).into_owned()
    }

    fn is_static(spec: &LabelSpec) -> bool {
        spec.sources.iter().all(Source::is_static)
    }

    fn static_source(&self, source: &Source) -> Option<Vec<u8>> {
        match source {
            Source::Constant { value } => Some(value.clone().into_bytes()),
            Source::Node { key, field } => (self.node)(key, field.as_deref()),
            _ => None,
        }
    }

    /// A label whose sources are all static: fixed at configure time.
    fn static_value(&self, spec: &LabelSpec) -> Option<String> {
        if !Self::is_static(spec) {
            return None;
        }
        let value = spec.sources.iter().find_map(|s| self.static_source(s).filter(|v| !v.is_empty()));
        Some(self.clean_bytes(&value.unwrap_or_else(|| spec.default.clone().into_bytes())))
    }

    fn request_value(&self, source: &Source, req: &Req) -> Option<Vec<u8>> {
        Some(match source {
            Source::RequestMethod => {
                let method = req.method.as_ref()?;
                self.config.methods.iter().find(|m| m.as_bytes() == method.as_slice()).cloned().unwrap_or_else(|| OTHER.into())
            }
            Source::RequestRoute => route(self.config, self.regexes, &lossy(req.path.as_ref()?)),
            Source::RequestScheme => match req.forwarded_proto.as_deref() {
                Some(p) if p.eq_ignore_ascii_case(b"https") => "https".into(),
                Some(p) if p.eq_ignore_ascii_case(b"http") => "http".into(),
                _ => lossy(req.scheme.as_ref()?).to_ascii_lowercase(),
            },
            Source::RequestProtocol => {
                let p = req.protocol.as_ref()?;
                lossy(p.strip_prefix(b"HTTP/").unwrap_or(p))
            }
            Source::RequestHeader { name } => lossy(&req.header(name)?),
            Source::RequestGrpcMethod | Source::RequestGrpcService => {
                if !is_grpc(req) {
                    return None;
                }
                let path = lossy(req.path.as_ref()?);
                let path = path.split('?').next().unwrap_or("");
                let parts: Vec<&str> = path.split('/').collect();
                match parts.as_slice() {
                    ["", service, method] if !service.is_empty() && !method.is_empty() => {
                        if *source == Source::RequestGrpcService { service.to_string() } else { format!("{service}/{method}") }
                    }
                    _ => OTHER.into(),
                }
            }
            // Node metadata in a chain with request sources: Envoy's (UTF-8) strings.
            other => lossy(&self.static_source(other)?),
        }
        .into_bytes())
    }

    fn response_value(&self, source: &Source, req: &Req, resp: &Resp) -> Option<Vec<u8>> {
        let status = resp.status.filter(|s| (100..=999).contains(s));
        // gRPC calls only: the status by number and name, `_OTHER` when Envoy could not read it.
        let grpc = resp.grpc_status.filter(|_| is_grpc(req));
        let known = grpc.filter(|c| (0..=16).contains(c)).map(|c| c as usize);
        let grpc_name = grpc.map(|_| known.map_or(OTHER, |c| GRPC_STATUS_NAMES[c]).to_string());
        // Server: OTel's server-error list; client: anything but OK; unreadable: an error.
        let grpc_error = grpc.is_some()
            && known.is_none_or(|c| if self.config.client { c != 0 } else { [2, 4, 12, 13, 14, 15].contains(&c) });
        let value = match source {
            Source::ResponseStatusCode => status.map(|s| s.to_string()),
            Source::ResponseStatusClass => status.map(|s| status_class(s).to_string()),
            Source::ResponseGrpcStatus => grpc.map(|_| known.map_or(OTHER.to_string(), |c| c.to_string())),
            Source::ResponseGrpcStatusName => grpc_name.clone(),
            Source::ResponseErrorType => {
                let failed = status.is_none_or(|s| s >= 500) || grpc_error;
                // A proxy failure class wins; `error_type` without a status says whether there is one.
                let proxy = error_type(None, resp.details.as_deref()).into_owned();
                failed.then(|| match () {
                    _ if proxy != OTHER => proxy,
                    _ if grpc_error => grpc_name.clone().unwrap_or_default(),
                    _ => error_type(status, resp.details.as_deref()).into_owned(),
                })
            }
            _ => None,
        };
        value.map(String::into_bytes)
    }

    /// The value label `i` gets: its first source with a value, sanitized, through the budget.
    fn resolve(&mut self, i: usize, req: &Req, resp: Option<&Resp>) -> String {
        let spec = &self.config.labels[i];
        if let Some(v) = self.static_value(spec) {
            return v;
        }
        let response_side = spec.sources.iter().any(Source::is_response_side);
        let raw = match (response_side, resp) {
            (true, Some(resp)) => spec.sources.iter().find_map(|s| self.response_value(s, req, resp).filter(|v| !v.is_empty())),
            (true, None) => return String::new(),
            (false, _) => spec.sources.iter().find_map(|s| self.request_value(s, req).filter(|v| !v.is_empty())),
        };
        let Some(raw) = raw else { return self.clean(&spec.default) };
        let value = self.clean_bytes(&raw);
        let max_values = spec.max_values as usize;
        let (known, admitted, closed) = &mut self.tables[i];
        if known.contains(&value) {
            return value;
        }
        if *closed || *admitted >= max_values {
            return OTHER.into();
        }
        *admitted += 1;
        known.insert(value.clone());
        value
    }

    /// The labels of a series (empty values are absent), folded into the overflow series if the
    /// series budget refused it: traffic labels not at their default become `_OTHER`.
    fn series(&self, values: &[String], mask: Option<&[String]>, overflowed: bool) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for (spec, value) in self.config.labels.iter().zip(values) {
            if mask.is_some_and(|m| !m.contains(&spec.name)) {
                continue;
            }
            let value = if overflowed && !Self::is_static(spec) && *value != self.clean(&spec.default) { OTHER.to_string() } else { value.clone() };
            if !value.is_empty() {
                labels.insert(spec.name.clone(), value);
            }
        }
        labels
    }
}

// ---------------------------------------------------------------------------------------------

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let configs = configs();
    let index = selector as usize % configs.len();
    let config = &configs[index];
    let extractors = &extractors()[index];
    let max_len = config.max_value_length as usize;

    let mut chunks = rest.split(|&b| b == 0xFF);
    let node_fields: Vec<Vec<u8>> = chunks.next().unwrap_or(b"").split(|&b| b == 0xFE).map(<[u8]>::to_vec).collect();
    let node = move |key: &str, field: Option<&str>| -> Option<Vec<u8>> {
        let i = match (key, field) {
            ("NAME", None) => 0,
            ("NAMESPACE", None) => 1,
            ("LABELS", Some("service.istio.io/canonical-name")) => 2,
            ("LABELS", Some("app")) => 3,
            ("LABELS", Some("app.kubernetes.io/name")) => 4,
            ("WORKLOAD_NAME", None) => 5,
            ("CLUSTER_ID", None) => 6,
            _ => return None,
        };
        node_fields.get(i).cloned()
    };

    // A fresh engine per input (its state is what is tested), around the configuration's route
    // table compiled once: the regex compilation was most of each iteration.
    let mut engine = Engine::with_routes(config, ROUTES.with(|r| r[index].clone()), &node);
    let mut host = Host::default();
    engine.define_self_metrics(&mut host);
    static REGEXES: OnceLock<Vec<Vec<Option<Regex>>>> = OnceLock::new();
    let regexes = &REGEXES.get_or_init(|| configs.iter().map(Oracle::regexes).collect())[index];
    let mut oracle = Oracle::new(config, regexes, &node);

    let mut metrics: Vec<&str> = config.metric_names();
    metrics.sort();
    let requests_metric = config.requests.as_ref().map(|m| m.name.as_str());
    let duration_metric = config.duration.as_ref().map(|m| m.name.as_str());
    let active_metric = config.active_requests.as_ref().map(|m| m.name.as_str());

    // Stat names decode once (ids are stable): (metric, every tag, the contract's labels).
    type Decoded = (String, BTreeMap<String, String>, BTreeMap<String, String>);
    let decoded: RefCell<HashMap<u32, Decoded>> = RefCell::default();
    let decode_full = |host: &Host, id: u32| -> Decoded {
        let mut decoded = decoded.borrow_mut();
        let entry = decoded.entry(id).or_insert_with(|| {
            let name = &host.names[id as usize].1;
            let (metric, tags) = decode(name, extractors, &metrics, max_len);
            let traffic = traffic_labels(config, name, &tags);
            (metric, tags, traffic)
        });
        entry.clone()
    };
    let decode_id = |host: &Host, id: u32| {
        let (metric, _, traffic) = decode_full(host, id);
        (metric, traffic)
    };

    for chunk in chunks.take(16) {
        let (req, resp, late) = request(chunk);

        // Request side.
        let before = (host.increments.len(), engine.stats().series_overflows);
        let flight = if late { engine.late_flight(&mut host, &req) } else { engine.start(&mut host, &req) };
        let active_overflowed = engine.stats().series_overflows > before.1;
        let request_values: Vec<String> = (0..config.labels.len()).map(|i| oracle.resolve(i, &req, None)).collect();
        if let (Some(active), false) = (active_metric, late) {
            let marks: Vec<u32> = host.increments[before.0..].iter().filter(|(_, d)| *d == 1).map(|(id, _)| *id).collect();
            let marks: Vec<_> = marks.into_iter().map(|id| decode_id(&host, id)).filter(|(m, _)| m == active).collect();
            assert_eq!(marks.len(), 1, "one active mark per request: {req:?}");
            let mask = &config.active_requests.as_ref().unwrap().labels;
            let want = oracle.series(&request_values, Some(mask), active_overflowed);
            assert_eq!(marks[0].1, want, "active gauge labels for {req:?} (overflowed: {active_overflowed})");
        }

        // Response side.
        let before = (host.increments.len(), host.records.len(), engine.stats().series_overflows);
        engine.finish(&mut host, flight, &resp);
        let overflowed = engine.stats().series_overflows > before.2;
        let mut values = request_values;
        for (i, spec) in config.labels.iter().enumerate() {
            if spec.sources.iter().any(Source::is_response_side) {
                values[i] = oracle.resolve(i, &req, Some(&resp));
            }
        }
        let want = oracle.series(&values, None, overflowed);
        if let Some(requests) = requests_metric {
            let counted: Vec<_> = host.increments[before.0..]
                .iter()
                .filter(|(_, d)| *d == 1)
                .map(|(id, _)| decode_id(&host, *id))
                .filter(|(m, _)| m == requests)
                .collect();
            assert_eq!(counted.len(), 1, "one count per request: {req:?} {resp:?}");
            assert_eq!(counted[0].1, want, "request counter labels for {req:?} {resp:?} (overflowed: {overflowed})");
        }
        if let Some(duration) = duration_metric {
            let timed: Vec<_> = host.records[before.1..].iter().map(|id| decode_id(&host, *id)).filter(|(m, _)| m == duration).collect();
            assert_eq!(timed.len(), 1, "one duration per request");
            assert_eq!(timed[0].1, want, "duration labels for {req:?} {resp:?} (overflowed: {overflowed})");
        }
    }

    // Every stat the engine defined, self-metrics included, decodes cleanly.
    let tags: HashSet<&str> = config.tag_names().into_iter().collect();
    // The pod's identity: labels whose every source is fixed per sidecar (node metadata, constants).
    let identity: HashSet<&str> =
        config.labels.iter().filter(|l| l.sources.iter().all(Source::is_static)).map(|l| l.name.as_str()).collect();
    for (id, (_, name)) in host.names.iter().enumerate() {
        let (metric, labels, _) = decode_full(&host, id as u32);
        assert!(labels.keys().all(|k| tags.contains(k.as_str())));
        if metric == CONTRACT_INFO_METRIC {
            let traffic: Vec<_> = labels.keys().filter(|k| !k.starts_with("metricpact_") && !identity.contains(k.as_str())).collect();
            assert!(traffic.is_empty(), "contract info `{name}` carries traffic labels {traffic:?}");
        } else if SELF_METRIC_NAMES.contains(&metric.as_str()) {
            assert!(labels.keys().all(|k| k.starts_with("metricpact_")), "self-metric `{name}` carries traffic labels");
        } else {
            assert!(labels.keys().all(|k| !k.starts_with("metricpact_")), "`{name}` carries a self-metric label");
        }
    }

    // Sanitizing on its own: same length (cut at the limit), unsafe bytes replaced one for one.
    for chunk in rest.split(|&b| b == 0xFE).take(4) {
        let clean = sanitize(chunk, max_len);
        assert_eq!(clean.len(), chunk.len().min(max_len));
        for (&raw, &out) in chunk.iter().zip(clean.as_bytes()) {
            let safe = (0x21..=0x7e).contains(&raw) && !b";=\"\\".contains(&raw);
            assert_eq!(out, if safe { raw } else { b'_' });
        }
    }
});
