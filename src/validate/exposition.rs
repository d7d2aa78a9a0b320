//! The rules of the app-exposition rewrite (`exposition`).

use std::collections::HashSet;

use super::{between, broken, regex_problem, Errors};
use crate::config::{ExpositionSpec, NameMatch, Source};
use crate::names;

/// Largest scrape body the rewrite buffers.
pub const MAX_BODY_LIMIT: u64 = 64 << 20;
/// Labels with a meaning to Prometheus that a rewrite must not touch.
const RESERVED: &[&str] = &["le", "quantile"];

pub(super) fn check(spec: &ExpositionSpec, errors: &mut Errors) {
    if spec.paths.is_empty() {
        broken!(errors, "exposition-paths-empty", "exposition.paths", "`paths` is empty: nothing would be rewritten");
    }
    for (i, p) in spec.paths.iter().enumerate() {
        if !p.starts_with('/') || p.contains('?') {
            broken!(errors, "exposition-path", format!("exposition.paths[{i}]"), format!("`{p}` must be a path starting with `/`, without a query"));
        }
    }
    between(errors, "exposition.max_body_bytes", spec.max_body_bytes.into(), MAX_BODY_LIMIT);
    for (i, p) in spec.keep_metrics.iter().flatten().enumerate() {
        regex(errors, &format!("exposition.keep_metrics[{i}]"), p);
    }
    for (i, p) in spec.drop_metrics.iter().enumerate() {
        regex(errors, &format!("exposition.drop_metrics[{i}]"), p);
    }
    for (i, s) in spec.drop_series.iter().enumerate() {
        regex(errors, &format!("exposition.drop_series[{i}].regex"), &s.regex);
    }
    for (i, r) in spec.rename_metrics.iter().enumerate() {
        let at = format!("exposition.rename_metrics[{i}]");
        match &r.matcher {
            NameMatch::Exact(from) => {
                if !names::is_valid_metric_name(&r.to) {
                    broken!(errors, "rename-target-name", format!("{at}.to"), format!("`{}` is not a valid Prometheus metric name", r.to));
                }
                if from.ends_with("_total") && !r.to.ends_with("_total") {
                    broken!(errors, "rename-counter-total", format!("{at}.to"), format!("`{from}` is a counter: its new name must end in `_total` too"));
                }
            }
            NameMatch::Regex(pattern) => {
                if regex(errors, &format!("{at}.match"), pattern) {
                    let re = regex::Regex::new(&crate::routes::anchored(pattern)).ok();
                    match crate::routes::check_template(&r.to, re.as_ref()) {
                        Err(m) => broken!(errors, "rename-template-capture", format!("{at}.to"), m),
                        Ok(_) => {
                            if let Some(m) = rename_template_problem(&r.to) {
                                broken!(errors, "rename-template-name", format!("{at}.to"), m);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut renamed = HashSet::new();
    for (i, r) in spec.rename_labels.iter().enumerate() {
        let at = format!("exposition.rename_labels[{i}]");
        label_name(errors, &format!("{at}.from"), &r.from, "renamed");
        label_name(errors, &format!("{at}.to"), &r.to, "a rename target");
        if !renamed.insert(r.from.as_str()) {
            broken!(errors, "rename-label-twice", format!("{at}.from"), format!("label `{}` is renamed twice", r.from));
        }
    }
    for (i, m) in spec.map_values.iter().enumerate() {
        let at = format!("exposition.map_values[{i}]");
        label_name(errors, &format!("{at}.label"), &m.label, "mapped");
        match (&m.values, &m.regex, &m.to) {
            (Some(_), None, None) => {}
            (None, Some(pattern), Some(_)) => {
                regex(errors, &format!("{at}.regex"), pattern);
            }
            _ => broken!(errors, "value-map-shape", format!("{at}.values"), "map_values needs `values: {old: new}`, or `regex` with `to`"),
        }
    }
    for (i, d) in spec.drop_labels.iter().enumerate() {
        let at = format!("exposition.drop_labels[{i}]");
        label_name(errors, &format!("{at}.label"), &d.label, "dropped");
        for (j, p) in d.metrics.iter().flatten().enumerate() {
            regex(errors, &format!("{at}.metrics[{j}]"), p);
        }
    }
    for (i, inject) in spec.inject_labels.iter().enumerate() {
        let at = format!("exposition.inject_labels[{i}]");
        let name = &inject.name;
        label_name(errors, &format!("{at}.name"), name, "injected");
        if names::PROMETHEUS_TARGET_LABELS.contains(&name.as_str()) {
            broken!(errors, "inject-target-label", format!("{at}.name"), format!("`{name}` collides with the target label Prometheus attaches; use e.g. `k8s_{name}_name`"));
        }
        if !matches!(inject.source, Source::Node { .. } | Source::Constant { .. }) {
            broken!(errors, "inject-source", 
                format!("{at}.source"),
                "injected labels come from node metadata (`node.KEY`) or a constant (`value:`); request attributes do not exist for a scrape",
            );
        }
    }
    for (i, name) in spec.require_metrics.iter().enumerate() {
        if !names::is_valid_metric_name(name) {
            broken!(errors, "require-name", format!("exposition.require_metrics[{i}]"), format!("`{name}` is not a valid Prometheus metric name"));
        }
    }
}

/// False (and an error) when `pattern` does not compile as the filter compiles it.
fn regex(errors: &mut Errors, path: &str, pattern: &str) -> bool {
    match regex_problem(pattern) {
        Some(problem) => {
            broken!(errors, "regex", path, problem);
            false
        }
        None => true,
    }
}

fn label_name(errors: &mut Errors, path: &str, name: &str, what: &str) {
    if !names::is_valid_label_name(name) {
        broken!(errors, "exposition-label-name", path, format!("`{name}` is not a valid Prometheus label name"));
    } else if RESERVED.contains(&name) {
        broken!(errors, "exposition-label-reserved", path, format!("`{name}` is reserved for histogram and summary buckets; it cannot be {what}"));
    }
}

/// Why a regex rename's template cannot make a valid metric name, if it cannot: its text outside
/// the captures may only hold name characters and must not start with a digit, and without
/// captures it must be a valid name itself. (The captures come from a metric name.)
fn rename_template_problem(template: &str) -> Option<String> {
    // The template without its `${name}` and `$name` references (a scan: the regex crate's
    // replace machinery would cost the module more than this whole check).
    let mut literal = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let skip = match after.strip_prefix('{') {
            Some(inner) => inner.find('}').map(|end| end + 2),
            None => Some(after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len())).filter(|&n| n > 0),
        };
        match skip {
            Some(n) => rest = &after[n..],
            None => {
                literal.push('$');
                rest = after;
            }
        }
    }
    literal.push_str(rest);
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
