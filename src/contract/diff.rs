//! Classifies the changes between two contract versions as breaking or compatible, and names the
//! rendered autoscaling objects (KEDA triggers, adapter rules, recording rules) each breaking
//! change would break.

use crate::config::{LabelSpec, Migration, MigrationKind, PluginConfig, PolicyCheck, PolicyRule, PolicySpec, RouteMatch};

use super::crosscheck::CrossCheck;
use super::deploy::{Deployment, HistogramMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Impact {
    Compatible,
    Breaking,
}

/// One change between two versions: a finding whose severity is its impact (breaking: error,
/// compatible: notice), with the rendered objects it breaks as `related`.
pub type Change = super::findings::Finding;

impl Impact {
    fn severity(self) -> super::findings::Severity {
        match self {
            Impact::Breaking => super::findings::Severity::Error,
            Impact::Compatible => super::findings::Severity::Notice,
        }
    }
}

fn qps_consumers(name: &str) -> Vec<String> {
    vec![
        format!("KEDA trigger qps-per-pod ({name})"),
        format!("prometheus-adapter rule {name} -> {}", crate::render::autoscaling::qps_metric_name(name)),
        format!("HPA Pods metric {}", crate::render::autoscaling::qps_metric_name(name)),
        format!("recording rule namespace_pod:{}:rate*", name.strip_suffix("_total").unwrap_or(name)),
    ]
}

fn latency_consumers(name: &str) -> Vec<String> {
    latency_consumers_of(name, false)
}

/// What reads the duration histogram: of its classic `_bucket` series or of the native one.
fn latency_consumers_of(name: &str, native: bool) -> Vec<String> {
    let series = if native { format!("{name} (native)") } else { format!("{name}_bucket") };
    vec![
        format!("KEDA trigger p95-latency ({series})"),
        format!("prometheus-adapter external rule {series} -> {}", crate::render::autoscaling::p95_metric_name(name)),
        format!("HPA External metric {}", crate::render::autoscaling::p95_metric_name(name)),
        format!("recording rule namespace_pod:{name}:p95_*"),
    ]
}

/// What counts failed requests by the error label.
fn error_label_consumers(config: &PluginConfig) -> Vec<String> {
    match &config.requests {
        Some(m) => vec![format!("recording rule {}", crate::render::autoscaling::error_ratio_record(&m.name, "*"))],
        None => vec![],
    }
}

/// What selects a workload's series by its workload label (`k8s_workload_name`).
fn workload_label_consumers(label: &str) -> Vec<String> {
    vec![
        format!("KEDA triggers qps-per-pod and p95-latency (select {label}=WORKLOAD)"),
        format!("prometheus-adapter external rule (seriesQuery {label}!=\"\")"),
        format!("HPA External metric selector ({label})"),
    ]
}

struct Differ<'a> {
    changes: Vec<Change>,
    /// Renames the new version declares (traffic and exposition): old names still emitted.
    migrations: Vec<&'a Migration>,
}

impl Differ<'_> {
    /// The new version's migration from `old` to `new`, if it declares one.
    fn migration(&self, kind: MigrationKind, old: &str, new: Option<&str>) -> Option<&Migration> {
        self.migrations.iter().copied().find(|m| m.kind == kind && m.old == old && new.is_none_or(|n| m.new == n))
    }

    fn push(&mut self, impact: Impact, rule: &'static str, message: String, breaks: Vec<String>) {
        self.changes.push(Change { severity: impact.severity(), rule: Some(rule), message, related: breaks, ..Change::default() });
    }

    fn metric(&mut self, what: &str, old: Option<&str>, new: Option<&str>, consumers: fn(&str) -> Vec<String>) {
        match (old, new) {
            (Some(o), Some(n)) if o != n && self.migration(MigrationKind::Metric, o, Some(n)).is_some() => {
                let sunset = self.migration(MigrationKind::Metric, o, Some(n)).map(|m| m.sunset.clone()).unwrap_or_default();
                self.push(
                    Impact::Compatible,
                    "metric-migrated",
                    format!("{what} renamed from `{o}` to `{n}` with a migration: both names are emitted until {sunset}; move queries on `{o}` before then"),
                    vec![],
                )
            }
            (Some(o), Some(n)) if o != n => self.push(
                Impact::Breaking,
                "metric-renamed",
                format!("{what} renamed from `{o}` to `{n}`: queries on `{o}` find nothing"),
                consumers(o),
            ),
            (Some(o), None) => self.push(Impact::Breaking, "metric-removed", format!("{what} `{o}` is no longer emitted"), consumers(o)),
            (None, Some(n)) => self.push(Impact::Compatible, "metric-added", format!("{what} `{n}` is now emitted"), vec![]),
            _ => {}
        }
    }
}

fn label<'a>(config: &'a PluginConfig, name: &str) -> Option<&'a LabelSpec> {
    config.labels.iter().find(|l| l.name == name)
}

fn route_key(m: &RouteMatch) -> String {
    match m {
        RouteMatch::Exact(p) => format!("exact {p}"),
        RouteMatch::Prefix(p) => format!("prefix {p}"),
        RouteMatch::Regex(p) => format!("regex {p}"),
    }
}

/// Every change from `old` to `new`, breaking ones first.
pub fn diff(old: &PluginConfig, old_deploy: &Deployment, new: &PluginConfig, new_deploy: &Deployment) -> Vec<Change> {
    let exposition_migrations = new.exposition.iter().flat_map(|e| &e.migrations);
    let mut d = Differ { changes: Vec::new(), migrations: new.migrations.iter().chain(exposition_migrations).collect() };
    d.metric("request counter", old.requests.as_ref().map(|m| m.name.as_str()), new.requests.as_ref().map(|m| m.name.as_str()), qps_consumers);
    d.metric("duration histogram", old.duration.as_ref().map(|m| m.name.as_str()), new.duration.as_ref().map(|m| m.name.as_str()), latency_consumers);
    d.metric("active-requests gauge", old.active_requests.as_ref().map(|m| m.name.as_str()), new.active_requests.as_ref().map(|m| m.name.as_str()), |_| vec![]);
    if let (Some(o), Some(n)) = (&old.duration, &new.duration) {
        if o.name == n.name && o.unit != n.unit {
            d.push(Impact::Breaking, "unit-changed", format!("`{}` now records {} instead of {}: latency thresholds change meaning", n.name, n.unit.word(), o.unit.word()), latency_consumers(&n.name));
        }
        let (was, is) = (old_deploy.histogram, new_deploy.histogram);
        let classic = |m: HistogramMode| m != HistogramMode::Native;
        if o.name == n.name && classic(was) && !classic(is) {
            d.push(
                Impact::Breaking,
                "histogram-now-native",
                format!("`{}` is stored as a native histogram only: its `_bucket` series are gone, so queries with `_bucket` and `by (le)` find nothing; move over with `histogram: both` first (both shapes are stored), then `native`", n.name),
                latency_consumers_of(&n.name, false),
            );
        } else if o.name == n.name && was.native() && !is.native() {
            d.push(
                Impact::Breaking,
                "histogram-now-classic",
                format!("`{}` is no longer stored as a native histogram: queries on the native histogram find nothing", n.name),
                latency_consumers_of(&n.name, true),
            );
        } else if o.name == n.name && was != is {
            d.push(
                Impact::Compatible,
                "histogram-mode-changed",
                format!("`{}` is now stored as {} histograms ({}): the existing series stay; rendered queries read the native one", n.name, if is == HistogramMode::Both { "classic and native" } else { "native" }, is.word()),
                vec![],
            );
        }
        if o.name == n.name && o.buckets != n.buckets && classic(was) && classic(is) {
            d.push(Impact::Breaking, "buckets-changed", format!("`{}` bucket bounds changed: p95 over windows that span the change is wrong, and bucket-based alerts lose their `le`", n.name), latency_consumers(&n.name));
        }
    }
    for l in &old.labels {
        match label(new, &l.name) {
            None if d.migration(MigrationKind::Label, &l.name, None).is_some_and(|m| label(new, &m.new).is_some()) => {
                let m = d.migration(MigrationKind::Label, &l.name, None).cloned();
                let (to, sunset) = m.map(|m| (m.new, m.sunset)).unwrap_or_default();
                d.push(Impact::Compatible, "label-migrated", format!("label `{}` renamed to `{to}` with a migration: series carry both until {sunset}", l.name), vec![]);
            }
            None => {
                let breaks = if crate::render::autoscaling::workload_label(old) == Some(l.name.as_str()) {
                    workload_label_consumers(&l.name)
                } else if crate::render::autoscaling::error_label(old) == Some(l.name.as_str()) {
                    error_label_consumers(old)
                } else {
                    vec![]
                };
                d.push(Impact::Breaking, "label-removed", format!("label `{}` is gone: queries, dashboards and alerts selecting or grouping by it break", l.name), breaks)
            }
            Some(n) => {
                if n.sources != l.sources {
                    let breaks = if crate::render::autoscaling::workload_label(old) == Some(l.name.as_str())
                        && crate::render::autoscaling::workload_label(new) != Some(n.name.as_str())
                    {
                        workload_label_consumers(&l.name)
                    } else if crate::render::autoscaling::error_label(old) == Some(l.name.as_str())
                        && crate::render::autoscaling::error_label(new) != Some(n.name.as_str())
                    {
                        error_label_consumers(old)
                    } else {
                        vec![]
                    };
                    d.push(Impact::Breaking, "label-source-changed", format!("label `{}` takes its value from a different source: its values change", l.name), breaks);
                }
                if let (Some(old_values), Some(new_values)) = (&l.allowed, &n.allowed) {
                    let removed: Vec<&String> = old_values.iter().filter(|v| !new_values.contains(v)).collect();
                    if !removed.is_empty() {
                        d.push(Impact::Breaking, "values-narrowed", format!("label `{}` no longer allows {removed:?}: those series become `_OTHER`", l.name), vec![]);
                    }
                } else if l.allowed.is_none() && n.allowed.is_some() {
                    d.push(Impact::Breaking, "values-narrowed", format!("label `{}` now has an allow-list: other values become `_OTHER`", l.name), vec![]);
                }
                if n.max_values < l.max_values {
                    d.push(Impact::Compatible, "budget-lowered", format!("label `{}` keeps at most {} values (was {})", l.name, n.max_values, l.max_values), vec![]);
                }
            }
        }
    }
    for n in &new.labels {
        if label(old, &n.name).is_none() {
            d.push(Impact::Compatible, "label-added", format!("label `{}` added: existing series split, sums are unchanged", n.name), vec![]);
        }
    }
    let removed_methods: Vec<&String> = old.methods.iter().filter(|m| !new.methods.contains(m)).collect();
    if !removed_methods.is_empty() {
        d.push(Impact::Breaking, "methods-narrowed", format!("methods {removed_methods:?} now count as `_OTHER`"), vec![]);
    }
    for rule in &old.routes.rules {
        let key = route_key(&rule.matcher);
        match new.routes.rules.iter().find(|r| route_key(&r.matcher) == key) {
            None => d.push(Impact::Breaking, "route-removed", format!("route rule `{key}` ({}) removed: its requests get another `http_route`", rule.template), vec![]),
            Some(n) if n.template != rule.template => d.push(
                Impact::Breaking,
                "route-template-changed",
                format!("route `{key}` now yields `{}` instead of `{}`", n.template, rule.template),
                vec![],
            ),
            _ => {}
        }
    }
    for rule in &new.routes.rules {
        let key = route_key(&rule.matcher);
        if !old.routes.rules.iter().any(|r| route_key(&r.matcher) == key) {
            d.push(Impact::Compatible, "route-added", format!("route rule `{key}` -> `{}` added", rule.template), vec![]);
        }
    }
    if new.max_series < old.max_series {
        d.push(Impact::Compatible, "budget-lowered", format!("series budget lowered to {} (was {})", new.max_series, old.max_series), vec![]);
    }
    if let (Some(o), Some(n)) = (&old_deploy.autoscaling, &new_deploy.autoscaling) {
        if o.qps_per_pod != n.qps_per_pod || o.p95_latency_ms != n.p95_latency_ms {
            d.push(Impact::Compatible, "targets-changed", format!("autoscaling targets changed: qps_per_pod {:?} -> {:?}, p95_latency_ms {:?} -> {:?}", o.qps_per_pod, n.qps_per_pod, o.p95_latency_ms, n.p95_latency_ms), vec![]);
        }
    }
    if let (Some(o), Some(n)) = (&old.exposition, &new.exposition) {
        for name in &o.require_metrics {
            if !n.require_metrics.contains(name) {
                if let Some(m) = d.migration(MigrationKind::Metric, name, None).cloned() {
                    d.push(Impact::Compatible, "metric-migrated", format!("app metric `{name}` renamed to `{}` with a migration: both names are written until {}", m.new, m.sunset), vec![]);
                    continue;
                }
                d.push(Impact::Breaking, "required-metric-removed", format!("app metric `{name}` is no longer required (renamed or dropped?)"), vec![]);
            }
        }
    }
    policy(&mut d, old.policy.as_ref(), new.policy.as_ref());
    cross_checks(&mut d, &old_deploy.cross_checks, &new_deploy.cross_checks);
    d.changes.sort_by_key(|c| std::cmp::Reverse(c.severity));
    d.changes
}

/// A policy tightened (a rule added, a warning made an error, a limit lowered, a waiver
/// withdrawn) breaks `verify --target app` for every app that breaks it; loosened is compatible.
fn policy(d: &mut Differ<'_>, old: Option<&PolicySpec>, new: Option<&PolicySpec>) {
    let empty = PolicySpec { rules: Vec::new(), waivers: Vec::new() };
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let fails = |id: &str| vec![format!("verify --target app, for every app that breaks `{id}`")];
    for rule in &new.rules {
        let id = rule.check.id();
        match old.rules.iter().find(|r| r.check == rule.check) {
            None => {
                let limit = |rules: &[PolicyRule]| rules.iter().find_map(|r| if let PolicyCheck::SeriesLimit { max } = r.check { Some(max) } else { None });
                match (&rule.check, limit(&old.rules)) {
                    (PolicyCheck::SeriesLimit { max }, Some(was)) if *max > was => {
                        d.push(Impact::Compatible, "policy-loosened", format!("policy `series-limit` raised to {max} (was {was})"), vec![]);
                    }
                    (PolicyCheck::SeriesLimit { max }, Some(was)) => {
                        d.push(Impact::Breaking, "policy-tightened", format!("policy `series-limit` lowered to {max} (was {was})"), fails(id));
                    }
                    _ => {
                        let severity = if rule.error { "an error" } else { "a warning" };
                        let impact = if rule.error { Impact::Breaking } else { Impact::Compatible };
                        let breaks = if rule.error { fails(id) } else { vec![] };
                        d.push(impact, if rule.error { "policy-tightened" } else { "policy-rule-added" }, format!("policy rule `{id}` added ({}), as {severity}", describe(&rule.check)), breaks);
                    }
                }
            }
            Some(was) if rule.error && !was.error => {
                d.push(Impact::Breaking, "policy-tightened", format!("policy rule `{id}` ({}) is now an error (was a warning)", describe(&rule.check)), fails(id));
            }
            Some(was) if !rule.error && was.error => {
                d.push(Impact::Compatible, "policy-loosened", format!("policy rule `{id}` ({}) is now a warning (was an error)", describe(&rule.check)), vec![]);
            }
            Some(_) => {}
        }
    }
    for rule in &old.rules {
        let same_limit = matches!(rule.check, PolicyCheck::SeriesLimit { .. }) && new.rules.iter().any(|r| matches!(r.check, PolicyCheck::SeriesLimit { .. }));
        if !same_limit && !new.rules.iter().any(|r| r.check == rule.check) {
            d.push(Impact::Compatible, "policy-loosened", format!("policy rule `{}` ({}) removed", rule.check.id(), describe(&rule.check)), vec![]);
        }
    }
    for w in &new.waivers {
        if !old.waivers.iter().any(|o| o.rule == w.rule && o.metric == w.metric) {
            d.push(Impact::Compatible, "policy-loosened", format!("`{}` waived for `{}` until {}", w.rule, w.metric, w.expires), vec![]);
        }
    }
    for w in &old.waivers {
        if !new.waivers.iter().any(|n| n.rule == w.rule && n.metric == w.metric) {
            let breaks = vec![format!("verify --target app, for apps where `{}` still breaks `{}`", w.metric, w.rule)];
            d.push(Impact::Breaking, "policy-tightened", format!("the waiver of `{}` for `{}` is withdrawn (it ran until {})", w.rule, w.metric, w.expires), breaks);
        }
    }
}

/// A cross-check added or made stricter breaks `verify --target cross-check` for every app whose
/// counter drifts from the sidecar's by more than the new tolerance.
fn cross_checks(d: &mut Differ<'_>, old: &[CrossCheck], new: &[CrossCheck]) {
    let fails = |c: &CrossCheck| vec![format!("verify --target cross-check, for every app whose `{}` drifts from `{}` by more than {} %", c.app, c.sidecar, c.tolerance_percent)];
    for n in new {
        match old.iter().find(|o| o.app == n.app) {
            None => d.push(Impact::Breaking, "policy-tightened", format!("cross-check of `{}` against `{}` added (tolerance {} %)", n.app, n.sidecar, n.tolerance_percent), fails(n)),
            Some(o) if n.tolerance_percent < o.tolerance_percent => d.push(
                Impact::Breaking,
                "policy-tightened",
                format!("cross-check of `{}`: tolerance lowered to {} % (was {} %)", n.app, n.tolerance_percent, o.tolerance_percent),
                fails(n),
            ),
            Some(o) if n.tolerance_percent > o.tolerance_percent => d.push(
                Impact::Compatible,
                "policy-loosened",
                format!("cross-check of `{}`: tolerance raised to {} % (was {} %)", n.app, n.tolerance_percent, o.tolerance_percent),
                vec![],
            ),
            Some(_) => {}
        }
        if let Some(o) = old.iter().find(|o| o.app == n.app) {
            // What is compared changed: the verdict may change either way.
            let exclude = |c: &CrossCheck| c.exclude.iter().map(|(l, p, _)| (l.clone(), p.clone())).collect::<Vec<_>>();
            let changed: Vec<&str> = [("sidecar", o.sidecar != n.sidecar), ("match", o.matching != n.matching), ("exclude", exclude(o) != exclude(n))]
                .into_iter()
                .filter_map(|(field, changed)| changed.then_some(field))
                .collect();
            if !changed.is_empty() {
                d.push(Impact::Breaking, "policy-tightened", format!("cross-check of `{}`: {} changed", n.app, changed.join(", ")), fails(n));
            }
            if n.min_requests < o.min_requests {
                d.push(Impact::Breaking, "policy-tightened", format!("cross-check of `{}`: min_requests lowered to {} (was {})", n.app, n.min_requests, o.min_requests), fails(n));
            }
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|n| n.app == o.app)) {
        d.push(Impact::Compatible, "policy-loosened", format!("cross-check of `{}` removed", o.app), vec![]);
    }
}

fn describe(check: &PolicyCheck) -> String {
    match check {
        PolicyCheck::NamePattern { pattern, metric_type: Some(t) } => format!("{t} names match `{pattern}`"),
        PolicyCheck::NamePattern { pattern, metric_type: None } => format!("names match `{pattern}`"),
        PolicyCheck::ForbiddenLabel { label } => format!("no `{label}` label"),
        PolicyCheck::ForbiddenValue { label, pattern } => format!("no `{label}` value matching `{pattern}`"),
        PolicyCheck::SeriesLimit { max } => format!("at most {max} series per metric"),
        PolicyCheck::CounterSuffix => "counters end in `_total`".into(),
        PolicyCheck::BaseUnit => "base units".into(),
        PolicyCheck::GaugeTypeSuffix => "no type suffix on gauges".into(),
        PolicyCheck::SnakeCase => "snake_case names".into(),
        PolicyCheck::HelpRequired => "HELP on every metric".into(),
    }
}
