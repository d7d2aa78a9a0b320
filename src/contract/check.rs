//! The semantic checks of a contract, collected (not stopping at the first), each at the
//! `line:col` of the value it concerns. The contract is lowered to the plugin configuration it
//! means (recording which YAML each field came from) with the checks that need the YAML itself;
//! then the validator the filter runs (`crate::validate`) judges the configuration, and each of
//! its errors is reported at its field's origin. The configuration is valid only when no error
//! was reported.

use serde_saphyr::{Location, Spanned};

use super::deploy::Deployment;
use super::load::{Diagnostic, Severity, Source as File};
use super::model::{self, Contract, DurationUnitDef, LabelDef, UnmatchedDef};
use super::report::Report;
pub use super::sources::{default_labels, parse_source};
use crate::config::{
    ActiveSpec, ContractInfo, DurationSpec, DurationUnit, LabelSpec, MetricSpec, PluginConfig, RouteMatch, RouteRule,
    RouteTable, Source, Unmatched, CONFIG_FORMAT, DEFAULT_METHODS,
};

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

/// Checks a parsed contract; returns the configuration it compiles to, its deployment side and
/// every finding: the lowering's own (what needs the YAML) and the validator's on the lowered
/// configuration, each at the position its field came from.
pub fn check(file: &File, contract: &Contract) -> (PluginConfig, Deployment, Vec<Diagnostic>) {
    let mut checker = Checker { file, diags: Vec::new(), origins: Vec::new(), refused: Vec::new(), root: contract.format.referenced };
    let config = checker.contract(contract);
    for e in crate::validate::plugin_config(&config) {
        if checker.refused.iter().any(|p| under(&e.path, p)) {
            continue;
        }
        // The validator's findings carry its rule id, as rustc's coded errors do.
        let at = checker.locate(&e.path);
        let mut finding = checker.file.diagnostic(&at, Severity::Error, e.message);
        finding.rule = Some(e.rule);
        checker.diags.push(finding);
    }
    let deployment = super::deploy::lower(contract, &config, &mut checker);
    let mut diags = checker.diags;
    diags.sort_by_key(|d| (d.line, d.column));
    (config, deployment, diags)
}

/// `path` is `prefix` or a field or item under it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

impl Report for Checker<'_> {
    fn error(&mut self, at: &Location, message: String) {
        Checker::error(self, at, message);
    }
    fn warn(&mut self, at: &Location, message: String) {
        Checker::warn(self, at, message);
    }
    fn origin(&mut self, path: String, at: &Location) {
        Checker::origin(self, path, at);
    }
    fn refused(&mut self, path: String) {
        self.refused.push(path);
    }
}

struct Checker<'a> {
    file: &'a File,
    diags: Vec<Diagnostic>,
    /// Configuration field → the YAML it was lowered from.
    origins: Vec<(String, Location)>,
    /// Fields whose YAML was refused already.
    refused: Vec<String>,
    /// Where a field without any recorded origin is reported (the `format` line).
    root: Location,
}

impl Checker<'_> {
    fn error(&mut self, at: &Location, message: impl Into<String>) {
        self.diags.push(self.file.diagnostic(at, Severity::Error, message));
    }

    fn warn(&mut self, at: &Location, message: impl Into<String>) {
        self.diags.push(self.file.diagnostic(at, Severity::Warning, message));
    }

    fn origin(&mut self, path: impl Into<String>, at: &Location) {
        self.origins.push((path.into(), *at));
    }

    /// The position of `path`'s YAML: its own origin, else its nearest enclosing field's.
    fn locate(&self, path: &str) -> Location {
        let mut path = path;
        loop {
            if let Some((_, at)) = self.origins.iter().find(|(p, _)| p == path) {
                return *at;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return self.root,
            }
        }
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

        // A default for every label, not a field of the configuration: checked here.
        let max_values_default = match &c.cardinality.max_values_per_label {
            Some(v) if v.value == 0 => {
                self.error(&v.referenced, "must be between 1 and 4294967295, found 0");
                DEFAULT_MAX_VALUES_PER_LABEL
            }
            Some(v) => v.value,
            None => DEFAULT_MAX_VALUES_PER_LABEL,
        };
        let max_series = self.number("max_series", c.cardinality.max_series.as_ref(), DEFAULT_MAX_SERIES);
        let max_value_length = self.number("max_value_length", c.cardinality.max_value_length.as_ref(), DEFAULT_MAX_VALUE_LENGTH);

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

        let mut config = PluginConfig {
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
            policy: None,
        };
        if let Some(def) = &c.exposition {
            config.exposition = Some(super::exposition::lower(def, self));
        }
        // The day migrations and waivers are judged by (METRICPACT_TODAY, else the clock).
        let today = if c.migrations.is_some() || c.policy.is_some() {
            super::migrations::today().unwrap_or_else(|e| {
                self.error(&c.format.referenced, e);
                0
            })
        } else {
            0
        };
        if let Some(defs) = &c.migrations {
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
        if let Some(def) = &c.policy {
            let policy = super::policy::lower(def, today, self);
            if config.exposition.is_none() && !policy.rules.is_empty() {
                self.warn(
                    &def.referenced,
                    "without an `exposition` section the sidecar does not see the app's scrapes, so it counts no policy \
                     violations (only `verify --target app` judges the policy); `exposition: {}` rewrites nothing and \
                     turns the count on",
                );
            }
            config.policy = Some(policy);
        }
        if config.requests.is_none() && config.duration.is_none() && config.active_requests.is_none() {
            self.warn(&c.name.referenced, "every traffic metric is disabled: the filter will only export its self-metrics");
        }
        config
    }

    /// A number of the configuration as written (the validator judges it), or its default.
    fn number(&mut self, path: &str, value: Option<&Spanned<u32>>, default: u32) -> u32 {
        match value {
            None => default,
            Some(v) => {
                self.origin(path, &v.referenced);
                v.value
            }
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
        self.origin("labels", &defs.referenced);
        let mut specs = Vec::new();
        for def in &defs.value {
            specs.push(self.label(def, specs.len(), max_values_default));
        }
        specs
    }

    /// The label lowered as configuration item `index`.
    fn label(&mut self, def: &LabelDef, index: usize, max_values_default: u32) -> LabelSpec {
        let at = format!("labels[{index}]");
        // A label whose sources are refused still goes into the configuration (without them), so
        // the validator judges its name, its values and the labels around it.
        let sources = match (&def.from, &def.value) {
            (Some(_), Some(value)) => {
                self.error(&value.referenced, format!("label `{}` has both `from` and `value`; keep one", def.name.value));
                Report::refused(self, format!("{at}.sources"));
                Vec::new()
            }
            (None, None) => {
                self.error(&def.name.referenced, format!("label `{}` needs `from: SOURCE` or `value: CONSTANT`", def.name.value));
                Report::refused(self, format!("{at}.sources"));
                Vec::new()
            }
            (None, Some(value)) => {
                self.origin(format!("{at}.sources"), &value.referenced);
                vec![Source::Constant { value: value.value.clone() }]
            }
            (Some(from), None) => {
                self.origin(format!("{at}.sources"), &from.referenced);
                let texts = from.value.sources();
                if texts.is_empty() {
                    self.error(&from.referenced, "`from` lists no source");
                    Report::refused(self, format!("{at}.sources"));
                }
                let mut sources = Vec::new();
                for text in &texts {
                    match parse_source(text) {
                        Ok(source) => sources.push(source),
                        Err(message) => {
                            self.error(&from.referenced, message);
                            Report::refused(self, format!("{at}.sources"));
                        }
                    }
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
        self.origin(format!("{at}.name"), &def.name.referenced);
        let max_values = self.number(&format!("{at}.max_values"), def.max_values.as_ref(), max_values_default);
        let allowed = def.values.as_ref().map(|values| {
            self.origin(format!("{at}.allowed"), &values.referenced);
            for (j, v) in values.value.iter().enumerate() {
                self.origin(format!("{at}.allowed[{j}]"), &v.referenced);
            }
            values.value.iter().map(|v| v.value.clone()).collect()
        });
        LabelSpec {
            name: def.name.value.clone(),
            sources,
            default: def.default.as_ref().map(|d| d.value.clone()).unwrap_or_default(),
            max_values,
            allowed,
        }
    }

    /// A metric's name as written, or its default; `path` is its configuration field.
    fn metric_name(&mut self, path: &str, name: Option<&Spanned<String>>, default: &str) -> String {
        match name {
            Some(n) => {
                self.origin(path, &n.referenced);
                n.value.clone()
            }
            None => default.to_string(),
        }
    }

    fn metrics(&mut self, c: &Contract, labels: &[LabelSpec]) -> (Option<MetricSpec>, Option<DurationSpec>, Option<ActiveSpec>) {
        let m = &c.metrics;

        let requests = match &m.requests {
            Some(d) if d.value.enabled == Some(false) => None,
            d => Some(MetricSpec { name: self.metric_name("requests.name", d.as_ref().and_then(|d| d.value.name.as_ref()), DEFAULT_REQUESTS_NAME) }),
        };

        let duration = match &m.duration {
            Some(d) if d.value.enabled == Some(false) => None,
            d => {
                let def = d.as_ref().map(|d| &d.value);
                let unit = match def.and_then(|d| d.unit.as_ref()).map(|u| u.value) {
                    Some(DurationUnitDef::Microseconds) => DurationUnit::Microseconds,
                    _ => DurationUnit::Milliseconds,
                };
                // A name that does not fit its unit is shown at the unit when the name is the default.
                if let (Some(u), None) = (def.and_then(|d| d.unit.as_ref()), def.and_then(|d| d.name.as_ref())) {
                    self.origin("duration.name", &u.referenced);
                }
                let name = self.metric_name("duration.name", def.and_then(|d| d.name.as_ref()), DEFAULT_DURATION_NAME);
                let buckets = match def.and_then(|d| d.buckets.as_ref()) {
                    None => OTEL_DURATION_BUCKETS_SECONDS.iter().map(|s| (s * unit.per_second()).round()).collect(),
                    Some(b) => {
                        self.origin("duration.buckets", &b.referenced);
                        for (j, bound) in b.value.iter().enumerate() {
                            self.origin(format!("duration.buckets[{j}]"), &bound.referenced);
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
                let name = self.metric_name("active_requests.name", def.and_then(|d| d.name.as_ref()), DEFAULT_ACTIVE_NAME);
                let names = match def.and_then(|d| d.labels.as_ref()) {
                    // Every request-side label, each once (a label defined twice is reported there).
                    None => {
                        let mut names: Vec<String> = Vec::new();
                        for l in labels.iter().filter(|l| !l.sources.iter().any(Source::is_response_side)) {
                            if !names.contains(&l.name) {
                                names.push(l.name.clone());
                            }
                        }
                        names
                    }
                    Some(list) => {
                        for (j, n) in list.iter().enumerate() {
                            self.origin(format!("active_requests.labels[{j}]"), &n.referenced);
                        }
                        list.iter().map(|n| n.value.clone()).collect()
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
        self.origin("methods", &list.referenced);
        let mut seen = std::collections::HashSet::new();
        for (j, m) in list.value.iter().enumerate() {
            self.origin(format!("methods[{j}]"), &m.referenced);
            // Only for a method the validator accepts (a token, the first of its name).
            if crate::names::is_http_token(&m.value) && seen.insert(m.value.as_str()) && m.value.bytes().any(|b| b.is_ascii_lowercase()) {
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
            let matcher = match kind {
                "exact" => RouteMatch::Exact(text.value.clone()),
                "prefix" => RouteMatch::Prefix(text.value.clone()),
                _ => RouteMatch::Regex(text.value.clone()),
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
            let at = format!("routes.rules[{}]", rules.len());
            if rules.is_empty() {
                // The table as a whole (its regexes together too big): at its first rule.
                self.origin("routes.rules", &rule.referenced);
            }
            self.origin(at.clone(), &rule.referenced);
            self.origin(format!("{at}.match"), &text.referenced);
            if let Some(t) = &def.template {
                self.origin(format!("{at}.template"), &t.referenced);
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
        let raw_max_length = self.number("routes.raw_max_length", r.raw_max_length.as_ref(), DEFAULT_RAW_MAX_LENGTH);
        RouteTable { rules, unmatched, raw_max_length }
    }
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
