//! The rules of the traffic side: labels, metric names, buckets, methods, routes, budgets and the
//! traffic metrics' migrations.

use std::collections::HashSet;

use super::{between, broken, hint, label_name_conflict, regex_problem, shadowed, Errors};
use crate::config::{MigrationKind, PluginConfig, RouteMatch, MAX_LABELS};
use crate::names;
use crate::routes::{anchored, check_template};

/// Longest configurable label value and raw route: Envoy stat names stay reasonable below it.
pub const LENGTH_LIMIT: u64 = 1024;

pub(super) fn check(config: &PluginConfig, errors: &mut Errors) {
    labels(config, errors);
    metrics(config, errors);
    methods(config, errors);
    routes(config, errors);
    between(errors, "max_series", config.max_series.into(), u32::MAX.into());
    between(errors, "max_value_length", config.max_value_length.into(), LENGTH_LIMIT);
    migrations(config, errors);
}

fn labels(config: &PluginConfig, errors: &mut Errors) {
    if config.labels.len() > MAX_LABELS {
        broken!(errors, "labels-too-many", "labels", format!("{} labels defined; at most {MAX_LABELS} are supported", config.labels.len()));
    }
    // The labels' tag names (a migrated label's old name is judged at its migration).
    let tags: Vec<&str> = config.labels.iter().map(|l| l.name.as_str()).chain(names::SELF_LABEL_NAMES.iter().copied()).collect();
    let mut seen = HashSet::new();
    for (i, label) in config.labels.iter().enumerate() {
        let name = &label.name;
        let at = format!("labels[{i}]");
        if !names::is_valid_label_name(name) {
            broken!(errors, "label-name", format!("{at}.name"), format!("`{name}` is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with `__`)"));
        } else if !seen.insert(name.as_str()) {
            broken!(errors, "label-duplicate", format!("{at}.name"), format!("duplicate label `{name}`"));
        } else if let Some(reason) = label_name_conflict(name, &tags) {
            broken!(errors, "label-conflict", format!("{at}.name"), reason);
        }
        if label.sources.is_empty() {
            broken!(errors, "label-no-source", format!("{at}.sources"), format!("label `{name}` has no source"));
        }
        let response = label.sources.iter().filter(|s| s.is_response_side()).count();
        if response > 0 && response < label.sources.len() {
            broken!(errors, "label-sources-mixed", format!("{at}.sources"), "a label cannot mix response sources with request or node sources");
        }
        between(errors, &format!("{at}.max_values"), label.max_values.into(), u32::MAX.into());
        if let Some(allowed) = &label.allowed {
            if allowed.is_empty() {
                broken!(errors, "label-values-empty", format!("{at}.allowed"), "`values` is empty: every value would become `_OTHER`; remove it or list the values");
            }
            let mut values = HashSet::new();
            for (j, v) in allowed.iter().enumerate() {
                if !values.insert(v.as_str()) {
                    broken!(errors, "label-value-duplicate", format!("{at}.allowed[{j}]"), format!("duplicate value `{v}`"));
                }
                if crate::label_values::sanitize(v.as_bytes(), usize::MAX) != *v {
                    broken!(errors, "label-value-characters", 
                        format!("{at}.allowed[{j}]"),
                        format!("value `{v}` contains characters label values cannot carry (`;`, `=`, `\"`, `\\`, spaces, controls or non-ASCII)"),
                    );
                }
            }
        }
    }
}

fn metrics(config: &PluginConfig, errors: &mut Errors) {
    let mut taken: Vec<&str> = Vec::new();
    let name = |errors: &mut Errors, taken: &mut Vec<&str>, path: &str, value: &str| {
        if !names::is_valid_metric_name(value) {
            broken!(errors, "metric-name", path, format!("`{value}` is not a valid Prometheus metric name ([a-zA-Z_][a-zA-Z0-9_]*; `:` is reserved for recording rules)"));
        } else if crate::telemetry::SELF_METRIC_NAMES.contains(&value) {
            broken!(errors, "metric-name-self", path, format!("`{value}` is one of metricpact's self-metrics"));
        } else if taken.contains(&value) {
            broken!(errors, "metric-name-twice", path, format!("metric name `{value}` is used twice"));
        }
    };
    if let Some(m) = &config.requests {
        name(errors, &mut taken, "requests.name", &m.name);
        if !m.name.ends_with("_total") {
            broken!(errors, "counter-total", "requests.name", format!("counter `{}` must end in `_total`", m.name));
        }
        taken.push(&m.name);
    }
    if let Some(d) = &config.duration {
        name(errors, &mut taken, "duration.name", &d.name);
        let unit = d.unit.word();
        if !names::ends_with_unit(&d.name, unit) {
            broken!(errors, "histogram-unit", "duration.name", format!("histogram `{}` records {unit}: its name must end in `_{unit}`", d.name));
        }
        for suffix in ["_bucket", "_sum", "_count", "_total"] {
            if d.name.ends_with(suffix) {
                broken!(errors, "histogram-suffix", "duration.name", format!("histogram `{}` must not end in `{suffix}`", d.name));
            }
        }
        if d.buckets.is_empty() {
            broken!(errors, "buckets-empty", "duration.buckets", "`buckets` is empty; list the upper bounds or omit it for the OTel defaults");
        }
        let mut previous: Option<f64> = None;
        for (j, &bound) in d.buckets.iter().enumerate() {
            if !bound.is_finite() || bound <= 0.0 {
                broken!(errors, "bucket-bound", format!("duration.buckets[{j}]"), format!("bucket bound {bound} must be a positive finite number"));
            } else if let Some(p) = previous.filter(|&p| bound <= p) {
                broken!(errors, "buckets-increasing", format!("duration.buckets[{j}]"), format!("buckets must be strictly increasing: {bound} follows {p}"));
            }
            previous = Some(bound);
        }
        taken.push(&d.name);
    }
    if let Some(a) = &config.active_requests {
        name(errors, &mut taken, "active_requests.name", &a.name);
        if a.name.ends_with("_total") {
            broken!(errors, "gauge-total", "active_requests.name", format!("gauge `{}` must not end in `_total`", a.name));
        }
        let mut seen = Vec::new();
        for (j, n) in a.labels.iter().enumerate() {
            let path = format!("active_requests.labels[{j}]");
            match config.labels.iter().find(|l| &l.name == n) {
                None => {
                    let hint = hint(n, config.labels.iter().map(|l| l.name.as_str()));
                    broken!(errors, "active-label-unknown", path, format!("`{n}` is not one of the contract's labels{hint}"));
                }
                Some(l) if l.sources.iter().any(|s| s.is_response_side()) => {
                    broken!(errors, "active-label-response", path, format!("`{n}` comes from the response, which an in-flight request does not have"));
                }
                Some(_) if seen.contains(&n) => broken!(errors, "active-label-duplicate", path, format!("duplicate label `{n}`")),
                Some(_) => seen.push(n),
            }
        }
    }
}

fn methods(config: &PluginConfig, errors: &mut Errors) {
    if config.methods.is_empty() {
        broken!(errors, "methods-empty", "methods", "`methods` is empty: every method would become `_OTHER`; omit it for the default list");
    }
    let mut seen = HashSet::new();
    for (j, m) in config.methods.iter().enumerate() {
        if !names::is_http_token(m) {
            broken!(errors, "method-token", format!("methods[{j}]"), format!("`{m}` is not an HTTP method token"));
        } else if !seen.insert(m.as_str()) {
            broken!(errors, "method-duplicate", format!("methods[{j}]"), format!("duplicate method `{m}`"));
        }
    }
}

fn routes(config: &PluginConfig, errors: &mut Errors) {
    let table = &config.routes;
    let mut patterns = Vec::new();
    for (i, rule) in table.rules.iter().enumerate() {
        let at = format!("routes.rules[{i}]");
        let regex = match &rule.matcher {
            RouteMatch::Exact(path) | RouteMatch::Prefix(path) => {
                if !path.starts_with('/') {
                    broken!(errors, "route-absolute", format!("{at}.match"), format!("`{path}` must start with `/`"));
                }
                None
            }
            RouteMatch::Regex(pattern) => match regex_problem(pattern) {
                Some(problem) => {
                    broken!(errors, "route-regex", format!("{at}.match"), problem);
                    continue; // its template's captures cannot be judged
                }
                None => {
                    patterns.push(anchored(pattern));
                    regex::Regex::new(&anchored(pattern)).ok()
                }
            },
        };
        if let Err(message) = check_template(&rule.template, regex.as_ref()) {
            broken!(errors, "route-template", format!("{at}.template"), message);
        }
    }
    // Each compiles alone; together they may still exceed the regex size limit.
    if let Err(e) = regex::RegexSet::new(&patterns) {
        broken!(errors, "route-regexes-size", "routes.rules", format!("the route regexes together do not compile: {e}"));
    }
    between(errors, "routes.raw_max_length", table.raw_max_length.into(), LENGTH_LIMIT);
}

fn migrations(config: &PluginConfig, errors: &mut Errors) {
    let current_metrics = config.traffic_metric_names();
    let current_labels: Vec<&str> = config.labels.iter().map(|l| l.name.as_str()).collect();
    let tags = config.tag_names();
    let mut seen: Vec<(MigrationKind, &str)> = Vec::new();
    // The traffic metrics' migrations, then the app metrics' (one old name has one migration
    // across both lists).
    let traffic = config.migrations.iter().enumerate().map(|(i, m)| (format!("migrations[{i}]"), m, true));
    let app = config.exposition.iter().flat_map(|e| e.migrations.iter()).enumerate().map(|(i, m)| (format!("exposition.migrations[{i}]"), m, false));
    for (at, m, is_traffic) in traffic.chain(app) {
        let (what, current) = match m.kind {
            MigrationKind::Metric => ("metric", &current_metrics),
            MigrationKind::Label => ("label", &current_labels),
        };
        if !old_name_ok(errors, &at, m, &mut seen) {
            continue;
        }
        if current.contains(&m.old.as_str()) {
            broken!(errors, "migration-old-current", format!("{at}.old"), format!("`{}` is still a {what} of this contract: a migration keeps an old name alive beside a new one", m.old));
            continue;
        }
        if !is_traffic {
            continue;
        }
        if !current.contains(&m.new.as_str()) {
            let hint = hint(&m.new, current.iter().copied());
            // Without an exposition rewrite, no other name could carry the old one.
            let why = if config.exposition.is_none() { " (and the contract has no `exposition` section)" } else { "" };
            broken!(errors, "migration-new-unknown", format!("{at}.new"), format!("`{}` is not a traffic {what} of this contract{hint}{why}", m.new));
            continue;
        }
        if m.kind == MigrationKind::Label {
            // The old name beside every tag, either way round (`status` would match inside the
            // old `http_status`, as the old `code` inside `status_code`).
            let conflict = label_name_conflict(&m.old, &tags)
                .or_else(|| current_labels.iter().find_map(|label| shadowed(label, &m.old)));
            if let Some(reason) = conflict {
                broken!(errors, "migration-label-conflict", format!("{at}.old"), reason);
            }
        }
    }
}

/// The rules every migration's old name follows (traffic and exposition alike); false when it
/// broke one, so the rest of that migration is not judged.
fn old_name_ok<'c>(errors: &mut Errors, at: &str, m: &'c crate::config::Migration, seen: &mut Vec<(MigrationKind, &'c str)>) -> bool {
    let (what, valid) = match m.kind {
        MigrationKind::Metric => ("metric", names::is_valid_metric_name(&m.old)),
        MigrationKind::Label => ("label", names::is_valid_label_name(&m.old)),
    };
    if !valid {
        broken!(errors, "migration-old-name", format!("{at}.old"), format!("`{}` is not a valid Prometheus {what} name", m.old));
        return false;
    }
    if m.old == m.new {
        broken!(errors, "migration-to-itself", format!("{at}.new"), format!("`{}` is renamed to itself", m.old));
        return false;
    }
    if seen.contains(&(m.kind, m.old.as_str())) {
        broken!(errors, "migration-twice", format!("{at}.old"), format!("{what} `{}` has two migrations", m.old));
        return false;
    }
    seen.push((m.kind, m.old.as_str()));
    true
}
