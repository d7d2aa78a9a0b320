//! Checking and lowering a contract's `exposition` section (the app-metrics rewrite).

use std::collections::BTreeMap;

use serde_saphyr::{Location, Spanned};

use super::check::parse_source;
use super::deploy::Report;
use super::model::{ConflictDef, ExpositionDef};
use crate::config::{ExpositionSpec, Injection, LabelDrop, LabelRename, MetricRename, NameMatch, SeriesDrop, Source, ValueMap};
use crate::names;

pub const DEFAULT_PATH: &str = "/metrics";
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1_000_000;
const MAX_BODY_LIMIT: u32 = 64 << 20;
/// Labels with a meaning to Prometheus that a rewrite must not touch.
const RESERVED: &[&str] = &["le", "quantile"];

/// Why a regex rename's template cannot make a valid metric name, if it cannot: its text outside
/// the captures may only hold name characters and must not start with a digit, and without
/// captures it must be a valid name itself. (The captures come from a metric name.)
fn rename_template_problem(template: &str) -> Option<String> {
    let captures = regex::Regex::new(r"\$\{[^}]*\}|\$[A-Za-z0-9_]+").ok()?;
    let literal = captures.replace_all(template, "");
    if literal.len() == template.len() {
        return (!names::is_valid_metric_name(template)).then(|| format!("`{template}` is not a valid Prometheus metric name"));
    }
    if let Some(bad) = literal.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Some(format!("`{template}` cannot make a valid Prometheus metric name: `{bad}` outside the captures"));
    }
    if template.starts_with(|c: char| c.is_ascii_digit()) {
        return Some(format!("`{template}` cannot make a valid Prometheus metric name: it starts with a digit"));
    }
    None
}

fn regex_ok(report: &mut dyn Report, pattern: &Spanned<String>) -> bool {
    match regex::Regex::new(&pattern.value) {
        Ok(_) => true,
        Err(e) => {
            let text = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
            report.error(&pattern.referenced, format!("regex does not compile: {text}"));
            false
        }
    }
}

fn label_name(report: &mut dyn Report, name: &Spanned<String>, what: &str) {
    if !names::is_valid_label_name(&name.value) {
        report.error(&name.referenced, format!("`{}` is not a valid Prometheus label name", name.value));
    } else if RESERVED.contains(&name.value.as_str()) {
        report.error(&name.referenced, format!("`{}` is reserved for histogram and summary buckets; it cannot be {what}", name.value));
    }
}

fn strings(list: &Option<Vec<Spanned<String>>>) -> Vec<&Spanned<String>> {
    list.iter().flatten().collect()
}

pub fn lower(def: &Spanned<ExpositionDef>, report: &mut dyn Report, warn: &mut dyn FnMut(&Location, String)) -> ExpositionSpec {
    let d = &def.value;
    let paths: Vec<String> = match &d.paths {
        None => vec![DEFAULT_PATH.into()],
        Some(paths) => {
            if paths.is_empty() {
                report.error(&def.referenced, "`paths` is empty: nothing would be rewritten".into());
            }
            for p in paths {
                if !p.value.starts_with('/') || p.value.contains('?') {
                    report.error(&p.referenced, format!("`{}` must be a path starting with `/`, without a query", p.value));
                }
            }
            paths.iter().map(|p| p.value.clone()).collect()
        }
    };
    let max_body_bytes = match &d.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(m) if m.value == 0 || m.value > MAX_BODY_LIMIT => {
            report.error(&m.referenced, format!("max_body_bytes must be between 1 and {MAX_BODY_LIMIT}"));
            DEFAULT_MAX_BODY_BYTES
        }
        Some(m) => {
            if m.value > 1 << 20 {
                warn(&m.referenced, "above 1 MiB: raise the listener's per_connection_buffer_limit_bytes above it too, or Envoy resets scrapes whose body outgrows its buffer".into());
            }
            m.value
        }
    };
    let mut regex_list = |list: &Option<Vec<Spanned<String>>>| -> Vec<String> {
        strings(list).into_iter().filter(|p| regex_ok(report, p)).map(|p| p.value.clone()).collect()
    };
    let keep_metrics = d.keep_metrics.as_ref().map(|_| regex_list(&d.keep_metrics));
    let drop_metrics = regex_list(&d.drop_metrics);

    let mut drop_series = Vec::new();
    for s in d.drop_series.iter().flatten() {
        if regex_ok(report, &s.value.regex) {
            drop_series.push(SeriesDrop { label: s.value.label.value.clone(), regex: s.value.regex.value.clone() });
        }
    }

    let mut rename_metrics = Vec::new();
    for r in d.rename_metrics.iter().flatten() {
        let to = &r.value.to;
        let matcher = match (&r.value.from, &r.value.regex) {
            (Some(from), None) => {
                if !names::is_valid_metric_name(&to.value) {
                    report.error(&to.referenced, format!("`{}` is not a valid Prometheus metric name", to.value));
                }
                if from.value.ends_with("_total") && !to.value.ends_with("_total") {
                    report.error(&to.referenced, format!("`{}` is a counter: its new name must end in `_total` too", from.value));
                }
                NameMatch::Exact(from.value.clone())
            }
            (None, Some(regex)) => {
                if regex_ok(report, regex) {
                    if let Ok(re) = regex::Regex::new(&format!("^(?:{})$", regex.value)) {
                        match crate::routes::check_template(&to.value, Some(&re)) {
                            Err(m) => report.error(&to.referenced, m),
                            Ok(_) => {
                                if let Some(m) = rename_template_problem(&to.value) {
                                    report.error(&to.referenced, m);
                                }
                            }
                        }
                    }
                }
                NameMatch::Regex(regex.value.clone())
            }
            _ => {
                report.error(&r.referenced, "a rename needs exactly one of `from` (a name) or `regex`".into());
                continue;
            }
        };
        rename_metrics.push(MetricRename { matcher, to: to.value.clone() });
    }

    let mut rename_labels = Vec::new();
    let mut renamed_from = std::collections::HashSet::new();
    for r in d.rename_labels.iter().flatten() {
        label_name(report, &r.value.from, "renamed");
        label_name(report, &r.value.to, "a rename target");
        if !renamed_from.insert(r.value.from.value.clone()) {
            report.error(&r.value.from.referenced, format!("label `{}` is renamed twice", r.value.from.value));
        }
        rename_labels.push(LabelRename { from: r.value.from.value.clone(), to: r.value.to.value.clone() });
    }

    let mut map_values = Vec::new();
    for m in d.map_values.iter().flatten() {
        let v = &m.value;
        label_name(report, &v.label, "mapped");
        match (&v.values, &v.regex, &v.to) {
            (Some(values), None, None) => map_values.push(ValueMap { label: v.label.value.clone(), values: Some(values.clone()), regex: None, to: None }),
            (None, Some(regex), Some(to)) => {
                regex_ok(report, regex);
                map_values.push(ValueMap { label: v.label.value.clone(), values: None, regex: Some(regex.value.clone()), to: Some(to.value.clone()) });
            }
            _ => report.error(&m.referenced, "map_values needs `values: {old: new}`, or `regex` with `to`".into()),
        }
    }

    let required_kinds: BTreeMap<&str, &str> = d
        .require
        .iter()
        .flatten()
        .filter_map(|r| r.value.kind.as_ref().map(|k| (r.value.name.value.as_str(), k.value.as_str())))
        .collect();
    let mut drop_labels = Vec::new();
    for l in d.drop_labels.iter().flatten() {
        label_name(report, &l.value.label, "dropped");
        let metrics: Option<Vec<String>> = l.value.metrics.as_ref().map(|m| m.iter().filter(|p| regex_ok(report, p)).map(|p| p.value.clone()).collect());
        // A drop that hits a metric the contract declares a gauge or summary would have to sum it.
        for (name, kind) in &required_kinds {
            let applies = match &metrics {
                None => true,
                Some(patterns) => patterns.iter().any(|p| regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|r| r.is_match(name))),
            };
            if applies && matches!(*kind, "gauge" | "info" | "stateset") {
                report.error(
                    &l.value.label.referenced,
                    format!("dropping `{}` would have to aggregate `{name}`, a {kind}, whose series cannot be summed; limit the drop with `metrics:`", l.value.label.value),
                );
            }
        }
        drop_labels.push(LabelDrop { label: l.value.label.value.clone(), metrics });
    }

    let mut inject_labels = Vec::new();
    for i in d.inject_labels.iter().flatten() {
        let v = &i.value;
        label_name(report, &v.name, "injected");
        if names::PROMETHEUS_TARGET_LABELS.contains(&v.name.value.as_str()) {
            report.error(&v.name.referenced, format!("`{}` collides with the target label Prometheus attaches; use e.g. `k8s_{}_name`", v.name.value, v.name.value));
        }
        let source = match (&v.from, &v.value) {
            (Some(from), None) => match parse_source(&from.value) {
                Ok(s @ Source::Node { .. }) => s,
                Ok(_) => {
                    report.error(&from.referenced, "injected labels come from node metadata (`node.KEY`) or a constant (`value:`); request attributes do not exist for a scrape".into());
                    continue;
                }
                Err(m) => {
                    report.error(&from.referenced, m);
                    continue;
                }
            },
            (None, Some(value)) => Source::Constant { value: value.value.clone() },
            _ => {
                report.error(&i.referenced, "inject_labels needs exactly one of `from` or `value`".into());
                continue;
            }
        };
        let overwrite = v.on_conflict.as_ref().is_none_or(|c| c.value == ConflictDef::Overwrite);
        inject_labels.push(Injection { name: v.name.value.clone(), source, default: v.default.clone().unwrap_or_default(), overwrite });
    }

    let mut require_metrics = Vec::new();
    for r in d.require.iter().flatten() {
        if !names::is_valid_metric_name(&r.value.name.value) {
            report.error(&r.value.name.referenced, format!("`{}` is not a valid Prometheus metric name", r.value.name.value));
        }
        if let Some(k) = &r.value.kind {
            const TYPES: [&str; 7] = ["counter", "gauge", "histogram", "summary", "info", "stateset", "unknown"];
            if !TYPES.contains(&k.value.as_str()) {
                let hint = super::suggest::hint(&k.value, TYPES);
                report.error(&k.referenced, format!("unknown metric type `{}`{hint} (one of {})", k.value, TYPES.join(", ")));
            }
        }
        require_metrics.push(r.value.name.value.clone());
    }

    ExpositionSpec {
        paths,
        max_body_bytes,
        keep_metrics,
        drop_metrics,
        drop_series,
        rename_metrics,
        rename_labels,
        map_values,
        drop_labels,
        inject_labels,
        require_metrics,
        migrations: Vec::new(),
    }
}
