//! Checks an exposition (a sidecar's `/stats/prometheus`, or an app's `/metrics`) against a
//! contract: the metrics it promises are there with the right type, their labels are the
//! contract's, values stay inside allow-lists, route templates and budgets. Each finding has a
//! severity and a stable rule id.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;

use crate::config::{MigrationKind, PluginConfig, Source, Unmatched};
use crate::exposition::line::{unescape_label_value, walk, Line};
use crate::names::OTHER;

pub use super::findings::{Finding, Severity};

/// The rule ids `verify` reports (a finding's `rule`).
pub const RULES: &[&str] = &[
    "metric-missing",
    "metric-type",
    "label-forbidden",
    "label-unknown",
    "value-not-allowed",
    "method-unknown",
    "route-raw",
    "cardinality-label",
    "cardinality-series",
];

/// What the exposition is: the sidecar's own metrics, or the app's (rewritten) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Sidecar,
    App,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub metrics_expected: usize,
    pub metrics_found: usize,
    pub labels_expected: usize,
    pub labels_seen: usize,
}

struct Family {
    kind: String,
    /// Series (label sets) of the family's main samples (`_bucket` etc. folded in).
    series: Vec<BTreeMap<String, String>>,
}

/// Parses the samples of an exposition into families (the subset verify needs).
fn families(body: &str) -> Result<HashMap<String, Family>, String> {
    let mut out: HashMap<String, Family> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    walk(body, |line| {
        let sample = match line {
            Line::Type { name, kind } => {
                types.insert(name.to_string(), kind.to_string());
                return;
            }
            Line::Help { .. } => return,
            Line::Sample(sample) => sample,
        };
        let mut family = sample.name.to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.name.strip_suffix(suffix) {
                if types.get(base).is_some_and(|k| k == "histogram" || k == "summary") {
                    family = base.to_string();
                }
            }
        }
        if (sample.name.ends_with("_sum") || sample.name.ends_with("_count")) && family != sample.name {
            return;
        }
        let labels: BTreeMap<String, String> = sample
            .labels
            .iter()
            .filter(|(n, _)| *n != "le")
            .map(|(n, v)| (n.to_string(), unescape_label_value(v).into_owned()))
            .collect();
        let kind = types.get(&family).cloned().unwrap_or_else(|| "untyped".into());
        let entry = out.entry(family).or_insert_with(|| Family { kind, series: Vec::new() });
        if !entry.series.contains(&labels) {
            entry.series.push(labels);
        }
    })?;
    Ok(out)
}

/// A regex for the values a route label may take: every fixed template, captures as wildcards.
fn route_values(config: &PluginConfig) -> Regex {
    let mut alternatives: Vec<String> = config
        .routes
        .rules
        .iter()
        .map(|r| {
            let mut pattern = String::new();
            let mut rest = r.template.as_str();
            while let Some(i) = rest.find('$') {
                pattern.push_str(&regex::escape(&rest[..i]));
                let after = &rest[i + 1..];
                if let Some(literal) = after.strip_prefix('$') {
                    // `$$` is a literal `$`.
                    pattern.push_str(&regex::escape("$"));
                    rest = literal;
                    continue;
                }
                let skip = if let Some(inner) = after.strip_prefix('{') {
                    inner.find('}').map_or(after.len(), |e| e + 2)
                } else {
                    after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len())
                };
                pattern.push_str(".+");
                rest = &after[skip..];
            }
            pattern.push_str(&regex::escape(rest));
            pattern
        })
        .collect();
    alternatives.push(regex::escape(OTHER));
    Regex::new(&format!("^(?:{})$", alternatives.join("|"))).unwrap_or_else(|_| Regex::new("^$").expect("valid"))
}

pub fn verify(config: &PluginConfig, body: &str, target: Target) -> Result<Report, String> {
    let families = families(body)?;
    let mut report = Report::default();
    // Every finding names its metric; a violation is an error of the findings scale.
    let mut find = |severity, rule, metric: &str, message: String| {
        report.findings.push(Finding { severity, rule: Some(rule), subject: Some(metric.to_string()), message, ..Finding::default() })
    };
    let mut expected: Vec<(String, Option<&str>)> = Vec::new();
    match target {
        Target::Sidecar => {
            if let Some(m) = &config.requests {
                expected.push((m.name.clone(), Some("counter")));
            }
            if let Some(m) = &config.duration {
                expected.push((m.name.clone(), Some("histogram")));
            }
            if let Some(m) = &config.active_requests {
                expected.push((m.name.clone(), Some("gauge")));
            }
            // During a migration the old name must be there too, as the same kind of metric.
            for (name, kind) in expected.clone() {
                if let Some(m) = config.old_metric_name(&name) {
                    expected.push((m.old.clone(), kind));
                }
            }
        }
        Target::App => {
            let migrations = config.exposition.iter().flat_map(|e| e.migrations.iter());
            for name in config.exposition.iter().flat_map(|e| e.require_metrics.iter()) {
                expected.push((name.clone(), None));
                if let Some(m) = migrations.clone().find(|m| m.kind == MigrationKind::Metric && &m.new == name) {
                    expected.push((m.old.clone(), None));
                }
            }
        }
    }
    let contract_labels: BTreeSet<&str> = config.labels.iter().map(|l| l.name.as_str()).collect();
    let migrated_labels: BTreeSet<&str> =
        config.migrations.iter().filter(|m| m.kind == MigrationKind::Label).map(|m| m.old.as_str()).collect();
    let mut seen_labels = BTreeSet::new();
    let mut found = 0;
    let route_ok = route_values(config);
    for (name, kind) in &expected {
        let Some(family) = families.get(name) else {
            find(Severity::Error, "metric-missing", name, format!("`{name}` is not in the exposition"));
            continue;
        };
        found += 1;
        if let Some(kind) = kind {
            if family.kind != *kind {
                find(Severity::Error, "metric-type", name, format!("`{name}` is a {}, the contract says {kind}", family.kind));
            }
        }
        if target == Target::App {
            continue;
        }
        let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for series in &family.series {
            for (label, value) in series {
                if crate::names::PROMETHEUS_TARGET_LABELS.contains(&label.as_str()) {
                    find(Severity::Error, "label-forbidden", name, format!("`{name}` carries `{label}`, which Prometheus sets as a target label"));
                } else if !contract_labels.contains(label.as_str()) && !migrated_labels.contains(label.as_str()) {
                    find(Severity::Warning, "label-unknown", name, format!("`{name}` carries `{label}`, which the contract does not define"));
                }
                seen_labels.insert(label.clone());
                values.entry(label.as_str()).or_default().insert(value.as_str());
            }
        }
        for spec in &config.labels {
            let Some(vals) = values.get(spec.name.as_str()) else { continue };
            let real: Vec<&&str> = vals.iter().filter(|v| **v != OTHER && !v.is_empty()).collect();
            if real.len() > spec.max_values as usize {
                find(Severity::Error, "cardinality-label", name, format!("`{}` has {} values, over its budget of {}", spec.name, real.len(), spec.max_values));
            }
            for value in real {
                if let Some(allowed) = &spec.allowed {
                    if !allowed.iter().any(|a| a == *value) {
                        find(Severity::Error, "value-not-allowed", name, format!("`{}=\"{value}\"` is outside the allow-list", spec.name));
                    }
                }
                if spec.sources.contains(&Source::RequestMethod) && !config.methods.iter().any(|m| m == *value) {
                    find(Severity::Error, "method-unknown", name, format!("`{}=\"{value}\"` is not a known method (it should be `_OTHER`)", spec.name));
                }
                if spec.sources.contains(&Source::RequestRoute) && config.routes.unmatched == Unmatched::Other && !route_ok.is_match(value) {
                    find(Severity::Error, "route-raw", name, format!("`{}=\"{value}\"` is not a route template of the contract: a raw path?", spec.name));
                }
            }
        }
        if family.series.len() > config.max_series as usize + 1 {
            find(Severity::Error, "cardinality-series", name, format!("`{name}` has {} series, over the budget of {}", family.series.len(), config.max_series));
        }
    }
    // The app's own metrics judged by the contract's policy (waivers as of today).
    if let (Target::App, Some(policy)) = (target, &config.policy) {
        let now = super::migrations::today().map(|day| (day.max(0) as u64) * 86_400)?;
        for v in crate::policy::Policy::new(policy)?.judge(body, now)? {
            find(if v.error { Severity::Error } else { Severity::Warning }, v.rule, &v.metric, v.message);
        }
    }
    report.metrics_expected = expected.len();
    report.metrics_found = found;
    report.labels_expected = if target == Target::Sidecar { contract_labels.len() } else { 0 };
    report.labels_seen = seen_labels.iter().filter(|l| contract_labels.contains(l.as_str())).count();
    report.findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.subject.cmp(&b.subject)));
    report.findings.dedup();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    fn config() -> PluginConfig {
        let label = |name: &str, sources: Vec<Source>| LabelSpec { name: name.into(), sources, default: String::new(), max_values: 3, allowed: None };
        PluginConfig {
            format: CONFIG_FORMAT,
            contract: ContractInfo { name: "t".into(), version: "1".into(), hash: "h".into() },
            requests: Some(MetricSpec { name: "req_total".into() }),
            duration: Some(DurationSpec { name: "dur_milliseconds".into(), unit: DurationUnit::Milliseconds, buckets: vec![10.0] }),
            active_requests: None,
            labels: vec![
                label("http_request_method", vec![Source::RequestMethod]),
                label("http_route", vec![Source::RequestRoute]),
                LabelSpec { allowed: Some(vec!["gold".into()]), ..label("tier", vec![Source::RequestHeader { name: "x-tier".into() }]) },
            ],
            methods: vec!["GET".into()],
            routes: RouteTable {
                rules: vec![RouteRule { matcher: RouteMatch::Regex("/api/(?P<v>v[12])/x".into()), template: "/api/${v}/x".into() }],
                unmatched: Unmatched::Other,
                raw_max_length: 64,
            },
            max_series: 10,
            max_value_length: 64,
            exposition: None,
            migrations: vec![],
            client: false,
            policy: None,
        }
    }

    fn rules(report: &Report) -> Vec<&str> {
        report.findings.iter().filter_map(|f| f.rule).collect()
    }

    #[test]
    fn a_conforming_exposition_has_no_findings() {
        let body = "# TYPE req_total counter\nreq_total{http_request_method=\"GET\",http_route=\"/api/v1/x\",tier=\"gold\"} 3\nreq_total{http_request_method=\"_OTHER\",http_route=\"_OTHER\"} 1\n# TYPE dur_milliseconds histogram\ndur_milliseconds_bucket{http_route=\"/api/v2/x\",le=\"10\"} 1\ndur_milliseconds_sum{http_route=\"/api/v2/x\"} 3\ndur_milliseconds_count{http_route=\"/api/v2/x\"} 1\n";
        let report = verify(&config(), body, Target::Sidecar).unwrap();
        assert_eq!(report.findings, vec![]);
        assert_eq!((report.metrics_found, report.metrics_expected, report.labels_seen, report.labels_expected), (2, 2, 3, 3));
    }

    #[test]
    fn a_double_dollar_in_a_template_is_a_literal_dollar() {
        // Found by fuzzing (tests/fuzz, stat_names): the filter now writes `/price/$$` as `/price/$`.
        let mut c = config();
        c.routes.rules.push(RouteRule { matcher: RouteMatch::Prefix("/price/".into()), template: "/price/$$".into() });
        let body = "# TYPE req_total counter\nreq_total{http_request_method=\"GET\",http_route=\"/price/$\"} 1\n";
        let report = verify(&c, body, Target::Sidecar).unwrap();
        assert!(!rules(&report).contains(&"route-raw"), "{:?}", report.findings);
    }

    #[test]
    fn each_rule_fires_on_its_mistake() {
        let body = "# TYPE req_total gauge\nreq_total{http_request_method=\"BREW\",http_route=\"/users/42\",tier=\"silver\",pod=\"p\",extra=\"1\"} 3\nreq_total{http_route=\"/a\"} 1\nreq_total{http_route=\"/b\"} 1\nreq_total{http_route=\"/c\"} 1\n";
        let report = verify(&config(), body, Target::Sidecar).unwrap();
        let mut got = rules(&report);
        got.sort();
        got.dedup();
        assert_eq!(
            got,
            ["cardinality-label", "label-forbidden", "label-unknown", "method-unknown", "metric-missing", "metric-type", "route-raw", "value-not-allowed"]
        );
    }

    #[test]
    fn the_series_budget_is_checked() {
        let mut c = config();
        c.max_series = 1;
        let body = "# TYPE req_total counter\nreq_total{http_route=\"_OTHER\",http_request_method=\"GET\"} 1\nreq_total{http_route=\"_OTHER\"} 1\nreq_total 1\n";
        assert!(rules(&verify(&c, body, Target::Sidecar).unwrap()).contains(&"cardinality-series"));
    }
}
