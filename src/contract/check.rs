//! Every semantic check on a contract, collected (not stopping at the first), each at the
//! `line:col` of the value it concerns. Checking and lowering happen in one pass: the result is
//! the plugin configuration the contract means, valid only when no error was reported.

use std::collections::HashSet;

use serde_saphyr::{Location, Spanned};

use super::deploy::Deployment;
use super::load::{Diagnostic, Severity, Source as File};
use super::suggest;
use super::model::{self, Contract, DurationUnitDef, LabelDef, UnmatchedDef};
use crate::config::{
    ActiveSpec, ContractInfo, DurationSpec, DurationUnit, LabelSpec, MetricSpec, PluginConfig, RouteMatch, RouteRule,
    RouteTable, Source, Unmatched, CONFIG_FORMAT, DEFAULT_METHODS, MAX_LABELS,
};
use crate::names;
use crate::routes::{anchored, check_template};
use crate::telemetry::SELF_METRIC_NAMES;

pub const DEFAULT_REQUESTS_NAME: &str = "http_server_requests_total";
pub const DEFAULT_DURATION_NAME: &str = "http_server_request_duration_milliseconds";
pub const DEFAULT_ACTIVE_NAME: &str = "http_server_active_requests";
/// OTel's advisory buckets for `http.server.request.duration`, in seconds.
pub const OTEL_DURATION_BUCKETS_SECONDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
pub const DEFAULT_MAX_VALUES_PER_LABEL: u32 = 100;
pub const DEFAULT_MAX_SERIES: u32 = 1000;
pub const DEFAULT_MAX_VALUE_LENGTH: u32 = 128;
pub const DEFAULT_RAW_MAX_LENGTH: u32 = 64;
/// Upper bound for configurable lengths: Envoy stat names stay reasonable below it.
const LENGTH_LIMIT: u32 = 1024;

/// The label set used when a contract has no `labels:` section (OTel HTTP server conventions).
pub fn default_labels() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("http_request_method", vec!["request.method"]),
        ("http_route", vec!["request.route"]),
        ("http_response_status_code", vec!["response.status_code"]),
        ("error_type", vec!["response.error_type"]),
        ("url_scheme", vec!["request.scheme"]),
        ("network_protocol_version", vec!["request.protocol"]),
        ("k8s_pod_name", vec!["node.NAME"]),
        ("k8s_namespace_name", vec!["node.NAMESPACE"]),
        ("k8s_workload_name", vec!["node.WORKLOAD_NAME"]),
        (
            "service_name",
            vec![
                "node.LABELS.service.istio.io/canonical-name",
                "node.LABELS.app.kubernetes.io/name",
                "node.LABELS.app",
                "node.WORKLOAD_NAME",
            ],
        ),
    ]
}

/// Parses one source expression (`request.method`, `node.LABELS.app`, …).
pub fn parse_source(text: &str) -> Result<Source, String> {
    let simple = SIMPLE_SOURCES.iter().find(|(name, _)| *name == text).map(|(_, source)| source.clone());
    if let Some(source) = simple {
        return Ok(source);
    }
    if let Some(name) = text.strip_prefix("request.header.") {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !valid {
            return Err(format!(
                "`{name}` is not a valid header name: use lowercase letters, digits and `-` (Envoy lowercases header names)"
            ));
        }
        return Ok(Source::RequestHeader { name: name.to_string() });
    }
    if let Some(rest) = text.strip_prefix("node.") {
        let (key, field) = match rest.split_once('.') {
            Some((key, field)) => (key, Some(field)),
            None => (rest, None),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`{key}` is not a node metadata key (Istio sets e.g. NAME, NAMESPACE, WORKLOAD_NAME, LABELS)"));
        }
        if field == Some("") {
            return Err("empty field after `node.KEY.`".into());
        }
        return Ok(Source::Node { key: key.to_string(), field: field.map(str::to_string) });
    }
    // A misspelt parameterized source keeps its parameter: `request.headers.x-tenant` →
    // `request.header.x-tenant`, `nodes.NAME` → `node.NAME`.
    let parameterized = [("request.header", 2), ("node", 1)].into_iter().find_map(|(prefix, parts)| {
        let mut split = text.splitn(parts + 1, '.');
        let head: Vec<&str> = split.by_ref().take(parts).collect();
        let rest = split.next().filter(|r| !r.is_empty())?;
        suggest::closest(&head.join("."), [prefix]).map(|p| format!("{p}.{rest}"))
    });
    let hint = match parameterized {
        Some(source) => format!("; did you mean `{source}`?"),
        None => suggest::hint(text, SIMPLE_SOURCES.iter().map(|(name, _)| *name)),
    };
    Err(format!(
        "unknown source `{text}`{hint} (sources: request.method, request.route, request.scheme, request.protocol, \
         request.header.NAME, response.status_code, response.status_class, response.error_type, node.KEY, node.KEY.FIELD, \
         and for gRPC requests request.grpc_method, request.grpc_service, response.grpc_status, response.grpc_status_name)"
    ))
}

/// The sources without a parameter.
const SIMPLE_SOURCES: &[(&str, Source)] = &[
    ("request.method", Source::RequestMethod),
    ("request.route", Source::RequestRoute),
    ("request.scheme", Source::RequestScheme),
    ("request.protocol", Source::RequestProtocol),
    ("response.status_code", Source::ResponseStatusCode),
    ("response.status_class", Source::ResponseStatusClass),
    ("response.error_type", Source::ResponseErrorType),
    ("request.grpc_method", Source::RequestGrpcMethod),
    ("request.grpc_service", Source::RequestGrpcService),
    ("response.grpc_status", Source::ResponseGrpcStatus),
    ("response.grpc_status_name", Source::ResponseGrpcStatusName),
];

/// Checks a parsed contract; returns the configuration it compiles to, its deployment side and
/// every finding.
pub fn check(file: &File, contract: &Contract) -> (PluginConfig, Deployment, Vec<Diagnostic>) {
    let mut checker = Checker { file, diags: Vec::new() };
    let config = checker.contract(contract);
    let deployment = super::deploy::lower(contract, &config, &mut checker);
    let mut diags = checker.diags;
    diags.sort_by_key(|d| (d.line, d.column));
    (config, deployment, diags)
}

impl super::migrations::Findings for Checker<'_> {
    fn error(&mut self, at: &Location, message: String) {
        Checker::error(self, at, message);
    }
    fn warn(&mut self, at: &Location, message: String) {
        Checker::warn(self, at, message);
    }
}

struct Checker<'a> {
    file: &'a File,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, at: &Location, message: impl Into<String>) {
        self.diags.push(self.file.diagnostic(at, Severity::Error, message));
    }

    fn warn(&mut self, at: &Location, message: impl Into<String>) {
        self.diags.push(self.file.diagnostic(at, Severity::Warning, message));
    }

    fn contract(&mut self, c: &Contract) -> PluginConfig {
        if c.format.value != model::FORMAT {
            self.error(&c.format.referenced, format!("unsupported format `{}`; this build reads `{}`", c.format.value, model::FORMAT));
        }
        let name_ok = !c.name.value.is_empty()
            && c.name.value.len() <= 63
            && c.name.value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.name.value.starts_with('-')
            && !c.name.value.ends_with('-');
        if !name_ok {
            self.error(&c.name.referenced, "contract name must be 1-63 lowercase letters, digits or `-`, starting and ending with a letter or digit (it names Kubernetes objects)");
        }
        if c.version.value.trim().is_empty() {
            self.error(&c.version.referenced, "contract version must not be empty");
        }

        let max_values_default = self.positive("cardinality.max_values_per_label", c.cardinality.max_values_per_label.as_ref(), DEFAULT_MAX_VALUES_PER_LABEL, u32::MAX);
        let max_series = self.positive("cardinality.max_series", c.cardinality.max_series.as_ref(), DEFAULT_MAX_SERIES, u32::MAX);
        let max_value_length = self.positive("cardinality.max_value_length", c.cardinality.max_value_length.as_ref(), DEFAULT_MAX_VALUE_LENGTH, LENGTH_LIMIT);

        let labels = self.labels(c, max_values_default);
        let (requests, duration, active) = self.metrics(c, &labels);
        let methods = self.methods(c);
        let routes = self.routes(c);
        if let Some(list) = &c.methods {
            let grpc = labels.iter().find(|l| l.sources.iter().any(Source::is_grpc_only));
            let reads_method = labels.iter().any(|l| l.sources.contains(&Source::RequestMethod));
            if let Some(label) = grpc.filter(|_| reads_method && !methods.iter().any(|m| m == "POST")) {
                self.warn(
                    &list.referenced,
                    format!(
                        "label `{}` reads gRPC calls, and every gRPC call is a POST, but `methods` lacks POST: \
                         `request.method` reads `_OTHER` for all of them; add POST",
                        label.name
                    ),
                );
            }
        }

        let config = PluginConfig {
            format: CONFIG_FORMAT,
            contract: ContractInfo { name: c.name.value.clone(), version: c.version.value.clone(), hash: String::new() },
            requests,
            duration,
            active_requests: active,
            labels,
            methods,
            routes,
            max_series,
            max_value_length,
            exposition: None,
            migrations: Vec::new(),
            client: false,
        };
        let mut config = config;
        if let Some(def) = &c.exposition {
            let mut warnings = Vec::new();
            config.exposition = Some(super::exposition::lower(def, self, &mut |at, m| warnings.push((*at, m))));
            for (at, m) in warnings {
                self.warn(&at, m);
            }
        }
        if let Some(defs) = &c.migrations {
            let today = super::migrations::today().unwrap_or_else(|e| {
                self.error(&c.format.referenced, e);
                0
            });
            let names = config.exposition.as_ref().map(|e| super::migrations::ExpositionNames {
                metrics: e
                    .rename_metrics
                    .iter()
                    .filter(|r| matches!(r.matcher, crate::config::NameMatch::Exact(_)))
                    .map(|r| r.to.clone())
                    .chain(e.require_metrics.iter().cloned())
                    .collect(),
                labels: e.rename_labels.iter().map(|r| r.to.clone()).chain(e.inject_labels.iter().map(|i| i.name.clone())).collect(),
            });
            super::migrations::lower(defs, &mut config, names.as_ref(), today, self);
        }
        if config.requests.is_none() && config.duration.is_none() && config.active_requests.is_none() {
            self.warn(&c.name.referenced, "every traffic metric is disabled: the filter will only export its self-metrics");
        }
        config
    }

    fn positive(&mut self, field: &str, value: Option<&Spanned<u32>>, default: u32, max: u32) -> u32 {
        match value {
            None => default,
            Some(v) if v.value == 0 || v.value > max => {
                self.error(&v.referenced, format!("`{field}` must be between 1 and {max}, found {}", v.value));
                default
            }
            Some(v) => v.value,
        }
    }

    fn labels(&mut self, c: &Contract, max_values_default: u32) -> Vec<LabelSpec> {
        let Some(defs) = &c.labels else {
            return default_labels()
                .into_iter()
                .map(|(name, sources)| LabelSpec {
                    name: name.to_string(),
                    sources: sources.iter().filter_map(|s| parse_source(s).ok()).collect(),
                    default: String::new(),
                    max_values: max_values_default,
                    allowed: None,
                })
                .collect();
        };
        if defs.value.len() > MAX_LABELS {
            self.error(&defs.referenced, format!("{} labels defined; at most {MAX_LABELS} are supported", defs.value.len()));
        }
        let mut specs = Vec::new();
        let mut seen = HashSet::new();
        let all_tags: Vec<String> = defs
            .value
            .iter()
            .map(|d| d.name.value.clone())
            .chain(names::SELF_LABEL_NAMES.iter().map(|s| s.to_string()))
            .collect();
        let all_tags: Vec<&str> = all_tags.iter().map(String::as_str).collect();
        for def in &defs.value {
            let name = &def.name;
            if !names::is_valid_label_name(&name.value) {
                self.error(&name.referenced, format!("`{}` is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with `__`)", name.value));
            } else if !seen.insert(name.value.clone()) {
                self.error(&name.referenced, format!("duplicate label `{}`", name.value));
            } else if let Some(reason) = crate::validate::label_name_conflict(&name.value, &all_tags) {
                self.error(&name.referenced, reason);
            }
            if let Some(spec) = self.label(def, max_values_default) {
                specs.push(spec);
            }
        }
        specs
    }

    fn label(&mut self, def: &LabelDef, max_values_default: u32) -> Option<LabelSpec> {
        let sources = match (&def.from, &def.value) {
            (Some(_), Some(value)) => {
                self.error(&value.referenced, format!("label `{}` has both `from` and `value`; keep one", def.name.value));
                return None;
            }
            (None, None) => {
                self.error(&def.name.referenced, format!("label `{}` needs `from: SOURCE` or `value: CONSTANT`", def.name.value));
                return None;
            }
            (None, Some(value)) => vec![Source::Constant { value: value.value.clone() }],
            (Some(from), None) => {
                let texts = from.value.sources();
                if texts.is_empty() {
                    self.error(&from.referenced, "`from` lists no source");
                    return None;
                }
                let mut sources = Vec::new();
                for text in &texts {
                    match parse_source(text) {
                        Ok(source) => sources.push(source),
                        Err(message) => self.error(&from.referenced, message),
                    }
                }
                let response = sources.iter().filter(|s| s.is_response_side()).count();
                if response > 0 && response < sources.len() {
                    self.error(&from.referenced, "a label cannot mix response sources with request or node sources");
                }
                // Sources are tried in order: after one that always has a value the rest are dead.
                let always = sources.iter().position(|s| matches!(s, Source::RequestMethod | Source::RequestRoute));
                if let Some(i) = always.filter(|_| sources.len() == texts.len()) {
                    if i + 1 < texts.len() {
                        let hint = if sources[i + 1..].iter().any(Source::is_grpc_only) {
                            "; put the gRPC source first: it has a value for gRPC requests only, and the others fall through to the next"
                        } else {
                            ""
                        };
                        self.warn(
                            &from.referenced,
                            format!("`{}` always has a value, so `{}` after it is never used{hint}", texts[i], texts[i + 1..].join("`, `")),
                        );
                    }
                }
                sources
            }
        };
        let max_values = self.positive("max_values", def.max_values.as_ref(), max_values_default, u32::MAX);
        let allowed = def.values.as_ref().map(|values| {
            if values.value.is_empty() {
                self.error(&values.referenced, "`values` is empty: every value would become `_OTHER`; remove it or list the values");
            }
            let mut seen = HashSet::new();
            for v in &values.value {
                if !seen.insert(v.value.as_str()) {
                    self.error(&v.referenced, format!("duplicate value `{}`", v.value));
                }
                if crate::label_values::sanitize(v.value.as_bytes(), usize::MAX) != v.value {
                    self.error(&v.referenced, format!("value `{}` contains characters label values cannot carry (`;`, `=`, `\"`, `\\`, spaces, controls or non-ASCII)", v.value));
                }
            }
            values.value.iter().map(|v| v.value.clone()).collect()
        });
        Some(LabelSpec {
            name: def.name.value.clone(),
            sources,
            default: def.default.as_ref().map(|d| d.value.clone()).unwrap_or_default(),
            max_values,
            allowed,
        })
    }

    fn metric_name(&mut self, name: Option<&Spanned<String>>, default: &str, taken: &mut Vec<String>) -> (String, Option<Location>) {
        let (value, at) = match name {
            Some(n) => (n.value.clone(), Some(n.referenced)),
            None => (default.to_string(), None),
        };
        if let Some(at) = &at {
            if !names::is_valid_metric_name(&value) {
                self.error(at, format!("`{value}` is not a valid Prometheus metric name ([a-zA-Z_][a-zA-Z0-9_]*; `:` is reserved for recording rules)"));
            } else if SELF_METRIC_NAMES.contains(&value.as_str()) {
                self.error(at, format!("`{value}` is one of metricpact's self-metrics"));
            } else if taken.contains(&value) {
                self.error(at, format!("metric name `{value}` is used twice"));
            }
        }
        taken.push(value.clone());
        (value, at)
    }

    fn metrics(&mut self, c: &Contract, labels: &[LabelSpec]) -> (Option<MetricSpec>, Option<DurationSpec>, Option<ActiveSpec>) {
        let mut taken = Vec::new();
        let m = &c.metrics;

        let requests = match &m.requests {
            Some(d) if d.value.enabled == Some(false) => None,
            d => {
                let (name, at) = self.metric_name(d.as_ref().and_then(|d| d.value.name.as_ref()), DEFAULT_REQUESTS_NAME, &mut taken);
                if let Some(at) = at.filter(|_| !name.ends_with("_total")) {
                    self.error(&at, format!("counter `{name}` must end in `_total`"));
                }
                Some(MetricSpec { name })
            }
        };

        let duration = match &m.duration {
            Some(d) if d.value.enabled == Some(false) => None,
            d => {
                let def = d.as_ref().map(|d| &d.value);
                let unit = match def.and_then(|d| d.unit.as_ref()).map(|u| u.value) {
                    Some(DurationUnitDef::Microseconds) => DurationUnit::Microseconds,
                    _ => DurationUnit::Milliseconds,
                };
                let (name, at) = self.metric_name(def.and_then(|d| d.name.as_ref()), DEFAULT_DURATION_NAME, &mut taken);
                let at = at.or(def.and_then(|d| d.unit.as_ref()).map(|u| u.referenced));
                if let Some(at) = at {
                    if !names::ends_with_unit(&name, unit.word()) {
                        self.error(&at, format!("histogram `{name}` records {}: its name must end in `_{}`", unit.word(), unit.word()));
                    }
                    for suffix in ["_bucket", "_sum", "_count", "_total"] {
                        if name.ends_with(suffix) {
                            self.error(&at, format!("histogram `{name}` must not end in `{suffix}`"));
                        }
                    }
                }
                let buckets = match def.and_then(|d| d.buckets.as_ref()) {
                    None => OTEL_DURATION_BUCKETS_SECONDS.iter().map(|s| (s * unit.per_second()).round()).collect(),
                    Some(b) => {
                        if b.value.is_empty() {
                            self.error(&b.referenced, "`buckets` is empty; list the upper bounds or omit it for the OTel defaults");
                        }
                        let mut previous: Option<f64> = None;
                        for bound in &b.value {
                            if !bound.value.is_finite() || bound.value <= 0.0 {
                                self.error(&bound.referenced, format!("bucket bound {} must be a positive finite number", bound.value));
                            } else if previous.is_some_and(|p| bound.value <= p) {
                                self.error(&bound.referenced, format!("buckets must be strictly increasing: {} follows {}", bound.value, previous.unwrap_or(0.0)));
                            }
                            previous = Some(bound.value);
                        }
                        b.value.iter().map(|v| v.value).collect()
                    }
                };
                Some(DurationSpec { name, unit, buckets })
            }
        };

        let active = match &m.active_requests {
            Some(d) if d.value.enabled == Some(false) => None,
            d => {
                let def = d.as_ref().map(|d| &d.value);
                let (name, at) = self.metric_name(def.and_then(|d| d.name.as_ref()), DEFAULT_ACTIVE_NAME, &mut taken);
                if let Some(at) = at.filter(|_| name.ends_with("_total")) {
                    self.error(&at, format!("gauge `{name}` must not end in `_total`"));
                }
                let names = match def.and_then(|d| d.labels.as_ref()) {
                    None => labels.iter().filter(|l| !l.sources.iter().any(Source::is_response_side)).map(|l| l.name.clone()).collect(),
                    Some(list) => {
                        let mut names = Vec::new();
                        for n in list {
                            match labels.iter().find(|l| l.name == n.value) {
                                None => {
                                    let hint = suggest::hint(&n.value, labels.iter().map(|l| l.name.as_str()));
                                    self.error(&n.referenced, format!("`{}` is not one of the contract's labels{hint}", n.value))
                                }
                                Some(l) if l.sources.iter().any(Source::is_response_side) => self.error(
                                    &n.referenced,
                                    format!("`{}` comes from the response, which an in-flight request does not have", n.value),
                                ),
                                Some(_) if names.contains(&n.value) => self.error(&n.referenced, format!("duplicate label `{}`", n.value)),
                                Some(_) => names.push(n.value.clone()),
                            }
                        }
                        names
                    }
                };
                Some(ActiveSpec { name, labels: names })
            }
        };
        (requests, duration, active)
    }

    fn methods(&mut self, c: &Contract) -> Vec<String> {
        let Some(list) = &c.methods else {
            return DEFAULT_METHODS.iter().map(|m| m.to_string()).collect();
        };
        if list.value.is_empty() {
            self.error(&list.referenced, "`methods` is empty: every method would become `_OTHER`; omit it for the default list");
        }
        let mut seen = HashSet::new();
        for m in &list.value {
            let token = !m.value.is_empty() && m.value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.error(&m.referenced, format!("`{}` is not an HTTP method token", m.value));
            } else if !seen.insert(m.value.as_str()) {
                self.error(&m.referenced, format!("duplicate method `{}`", m.value));
            } else if m.value.bytes().any(|b| b.is_ascii_lowercase()) {
                self.warn(&m.referenced, format!("methods are case-sensitive: `{}` will not match `{}`", m.value, m.value.to_ascii_uppercase()));
            }
        }
        list.value.iter().map(|m| m.value.clone()).collect()
    }

    fn routes(&mut self, c: &Contract) -> RouteTable {
        let r = &c.routes;
        let mut rules = Vec::new();
        for rule in &r.rules {
            let def = &rule.value;
            let given: Vec<(&str, &Spanned<String>)> = [("exact", &def.exact), ("prefix", &def.prefix), ("regex", &def.regex)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .collect();
            let (kind, text) = match given.as_slice() {
                [one] => *one,
                [] => {
                    self.error(&rule.referenced, "route rule needs one of `exact`, `prefix` or `regex`");
                    continue;
                }
                [_, second, ..] => {
                    self.error(&second.1.referenced, "route rule has more than one of `exact`, `prefix`, `regex`; split it into separate rules");
                    continue;
                }
            };
            let mut regex = None;
            let matcher = match kind {
                "exact" | "prefix" => {
                    if !text.value.starts_with('/') {
                        self.error(&text.referenced, format!("`{}` must start with `/`", text.value));
                    }
                    if kind == "exact" {
                        RouteMatch::Exact(text.value.clone())
                    } else {
                        RouteMatch::Prefix(text.value.clone())
                    }
                }
                _ => {
                    // Compile the pattern as written first, so errors quote the user's text.
                    match regex::Regex::new(&text.value).and_then(|_| regex::Regex::new(&anchored(&text.value))) {
                        Ok(re) => regex = Some(re),
                        Err(e) => self.error(&text.referenced, format!("regex does not compile: {}", one_line(&e.to_string()))),
                    }
                    RouteMatch::Regex(text.value.clone())
                }
            };
            let template = match (&def.template, kind) {
                (Some(t), _) => t.value.clone(),
                // The path itself; a `$` in it is a literal dollar (`$$`), not a capture.
                (None, "exact") => text.value.replace('$', "$$"),
                (None, _) => {
                    self.error(&rule.referenced, format!("`{kind}` rule needs a `template` (the route value, e.g. /users/{{id}})"));
                    continue;
                }
            };
            if let Some(t) = &def.template {
                if kind != "regex" || regex.is_some() {
                    if let Err(message) = check_template(&t.value, regex.as_ref()) {
                        self.error(&t.referenced, message);
                    }
                }
                if crate::label_values::sanitize(t.value.as_bytes(), usize::MAX) != t.value {
                    self.warn(&t.referenced, "template contains characters label values cannot carry; they will be replaced by `_`");
                }
            }
            rules.push(RouteRule { matcher, template });
        }
        let unmatched = match r.unmatched.as_ref().map(|u| (u.value, u.referenced)) {
            Some((UnmatchedDef::Raw, at)) => {
                self.warn(&at, "`unmatched: raw` puts raw request paths in `http_route`; they are cut and capped, but OTel says routes must not come from raw paths");
                Unmatched::Raw
            }
            _ => Unmatched::Other,
        };
        let raw_max_length = self.positive("routes.raw_max_length", r.raw_max_length.as_ref(), DEFAULT_RAW_MAX_LENGTH, LENGTH_LIMIT);
        RouteTable { rules, unmatched, raw_max_length }
    }
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::routes::{route_text, RouteMatcher};

    #[test]
    fn an_exact_path_with_a_dollar_is_its_own_route() {
        // Found by fuzzing (tests/fuzz, contract): the template `exact: /price/$5` defaults to
        // (the path) passed `check`, and the filter then refused its `$5` as a capture.
        let file = File {
            path: PathBuf::from("c.yaml"),
            text: "format: metricpact/v1\nname: c\nversion: '1'\nroutes:\n  rules:\n    - exact: /price/$5\n".into(),
        };
        let (config, _, diags) = check(&file, &file.parse().contract.unwrap());
        assert!(diags.iter().all(|d| d.severity != Severity::Error), "{diags:?}");
        let routes = RouteMatcher::new(&config.routes.rules).expect("the filter accepts the route");
        assert_eq!(route_text(&routes, "/price/$5").as_deref(), Some("/price/$5"));
    }
}
