//! The honesty cross-check (`policy.cross_checks`): an app's own request counter judged against
//! the sidecar's count of the same requests over a window. The sidecar sees every request that
//! reaches the app, so its count is the truth; an app whose counter drifts from it by more than
//! the tolerance under-counts (or over-counts) what dashboards and autoscalers read from it.
//!
//! Pure: the counts come in as expositions (two scrapes of each endpoint) or as Prometheus
//! query results; the CLI does the fetching.

use std::collections::BTreeMap;

use regex::Regex;
use serde_saphyr::Spanned;

use super::findings::{Finding, Severity};
use super::model::{CompareDef, Contract, CrossCheckDef};
use super::report::Report;
use super::suggest::hint;
use crate::config::PluginConfig;
use crate::exposition::line::{escape_label_value, unescape_label_value, walk, Line};
use crate::names::{is_valid_label_name, is_valid_metric_name};

/// How far before the window its start values are looked for (Prometheus' default lookback).
const LOOKBACK_SECONDS: u64 = 300;

/// The rule id of every cross-check finding.
pub const RULE: &str = "cross-check";

#[derive(Debug, Clone)]
pub struct CrossCheck {
    /// The app's counter, as stored.
    pub app: String,
    /// The sidecar's metric counting the same requests.
    pub sidecar: String,
    pub matching: Vec<LabelPair>,
    /// Sidecar series left out: (label, pattern as written, the pattern anchored).
    pub exclude: Vec<(String, String, Regex)>,
    pub tolerance_percent: f64,
    pub min_requests: u64,
}

impl PartialEq for CrossCheck {
    /// Equal as written (the compiled regexes follow from the patterns).
    fn eq(&self, other: &CrossCheck) -> bool {
        let written = |c: &CrossCheck| (c.exclude.iter().map(|(l, p, _)| (l.clone(), p.clone())).collect::<Vec<_>>(), c.tolerance_percent, c.min_requests);
        self.app == other.app && self.sidecar == other.sidecar && self.matching == other.matching && written(self) == written(other)
    }
}

/// An app label and the sidecar label that says the same thing.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelPair {
    pub app: String,
    pub sidecar: String,
    pub by: Compare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Value,
    /// `200` and `2xx` are both `2xx`.
    StatusClass,
}

impl Compare {
    fn key(self, value: &str) -> String {
        match (self, value.parse::<u32>()) {
            (Compare::StatusClass, Ok(code)) => crate::telemetry::status_class(code).to_string(),
            _ => value.to_string(),
        }
    }
}

/// Lowers `policy.cross_checks`, reporting what cannot be checked.
/// `classic_count`: Prometheus stores the duration histogram's `_count` (classic or both
/// histograms; native ones have none).
pub fn lower(contract: &Contract, server: &PluginConfig, classic_count: bool, report: &mut dyn Report) -> Vec<CrossCheck> {
    let defs = contract.policy.as_ref().and_then(|p| p.value.cross_checks.as_ref());
    defs.into_iter().flatten().filter_map(|def| lower_one(def, server, classic_count, report)).collect()
}

fn lower_one(def: &Spanned<CrossCheckDef>, server: &PluginConfig, classic_count: bool, report: &mut dyn Report) -> Option<CrossCheck> {
    let d = &def.value;
    let mut ok = true;
    if !is_valid_metric_name(&d.app.value) {
        report.error(&d.app.referenced, format!("`{}` is not a valid Prometheus metric name", d.app.value));
        ok = false;
    }
    // What the sidecar counts requests in: the counter, or the histogram's count.
    let counted: Vec<String> = server
        .requests
        .iter()
        .map(|r| r.name.clone())
        .chain(server.duration.iter().filter(|_| classic_count).map(|d| format!("{}_count", d.name)))
        .collect();
    let sidecar = match &d.sidecar {
        Some(s) if counted.contains(&s.value) => s.value.clone(),
        Some(s) => {
            let hint = hint(&s.value, counted.iter().map(String::as_str));
            report.error(&s.referenced, format!("`{}` is not a sidecar metric counting requests{hint} (this contract's: {})", s.value, counted.join(", ")));
            return None;
        }
        None => match counted.first() {
            Some(name) => name.clone(),
            None => {
                report.error(&def.referenced, "the sidecar counts no requests (its traffic metrics are disabled): nothing to check the app against".into());
                return None;
            }
        },
    };
    let labels: Vec<&str> = server.labels.iter().map(|l| l.name.as_str()).collect();
    let sidecar_label = |name: &str, at: &serde_saphyr::Location, report: &mut dyn Report| {
        let known = labels.contains(&name);
        if !known {
            let hint = hint(name, labels.iter().copied());
            report.error(at, format!("`{name}` is not a label of the sidecar's metrics{hint} (labels: {})", labels.join(", ")));
        }
        known
    };
    let mut matching = Vec::new();
    for m in d.matching.iter().flatten() {
        ok &= sidecar_label(&m.value.sidecar.value, &m.value.sidecar.referenced, report);
        if !is_valid_label_name(&m.value.app.value) {
            report.error(&m.value.app.referenced, format!("`{}` is not a valid Prometheus label name", m.value.app.value));
            ok = false;
        }
        let by = match m.value.by.as_ref().map(|b| b.value) {
            Some(CompareDef::StatusClass) => Compare::StatusClass,
            Some(CompareDef::Value) | None => Compare::Value,
        };
        matching.push(LabelPair { app: m.value.app.value.clone(), sidecar: m.value.sidecar.value.clone(), by });
    }
    let mut exclude = Vec::new();
    if let Some(map) = &d.exclude {
        for (label, pattern) in &map.value {
            if !sidecar_label(label, &map.referenced, report) {
                ok = false;
                continue;
            }
            match Regex::new(&crate::routes::anchored(pattern)) {
                Ok(re) => exclude.push((label.clone(), pattern.clone(), re)),
                Err(e) => {
                    report.error(&map.referenced, format!("exclude `{label}`: regex `{pattern}`: {}", e.to_string().lines().last().unwrap_or("invalid")));
                    ok = false;
                }
            }
        }
    }
    let tolerance_percent = d.tolerance_percent.as_ref().map_or(5.0, |t| t.value);
    if let Some(t) = d.tolerance_percent.as_ref().filter(|t| !(t.value > 0.0 && t.value <= 100.0)) {
        report.error(&t.referenced, format!("tolerance_percent must be above 0 and at most 100, found {}", t.value));
        ok = false;
    }
    let min_requests = d.min_requests.as_ref().map_or(100, |m| m.value);
    if let Some(m) = d.min_requests.as_ref().filter(|m| m.value == 0) {
        report.error(&m.referenced, "min_requests must be at least 1".into());
        ok = false;
    }
    ok.then(|| CrossCheck { app: d.app.value.clone(), sidecar, matching, exclude, tolerance_percent, min_requests })
}

/// One counter's series at one instant: (labels, value).
pub type Snapshot = Vec<(BTreeMap<String, String>, f64)>;

/// The samples of `metric` (the stored sample name) in an exposition.
pub fn snapshot(body: &str, metric: &str) -> Result<Snapshot, String> {
    let mut out = Vec::new();
    let mut bad = None;
    walk(body, |line| {
        let Line::Sample(sample) = line else { return };
        if sample.name != metric {
            return;
        }
        let value = sample.rest.split_whitespace().next().and_then(crate::exposition::line::parse_value);
        match value {
            Some(v) => out.push((sample.labels.iter().map(|(n, v)| (n.to_string(), unescape_label_value(v).into_owned())).collect(), v)),
            None => bad = Some(sample.line.to_string()),
        }
    })?;
    match bad {
        Some(line) => Err(format!("not a sample value: {line}")),
        None => Ok(out),
    }
}

/// Counts per group: the matched labels' values (compared as the check says), in `matching`
/// order; one empty key without matching.
pub type Groups = BTreeMap<Vec<String>, f64>;

/// Which side of the check a count is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    App,
    Sidecar,
}

impl CrossCheck {
    pub fn metric(&self, side: Side) -> &str {
        match side {
            Side::App => &self.app,
            Side::Sidecar => &self.sidecar,
        }
    }

    /// The group of a series, `None` for a sidecar series the check leaves out.
    pub fn group(&self, side: Side, labels: &BTreeMap<String, String>) -> Option<Vec<String>> {
        if side == Side::Sidecar && self.exclude.iter().any(|(label, _, re)| labels.get(label).is_some_and(|v| re.is_match(v))) {
            return None;
        }
        Some(
            self.matching
                .iter()
                .map(|pair| pair.by.key(labels.get(if side == Side::App { &pair.app } else { &pair.sidecar }).map_or("", String::as_str)))
                .collect(),
        )
    }

    /// How much each group grew from `before` to `after` (series new in `after` grew from 0);
    /// `Err` names a series that went down: a counter reset (a restart) inside the window.
    pub fn increase(&self, side: Side, before: &Snapshot, after: &Snapshot) -> Result<Groups, String> {
        let before: std::collections::HashMap<&BTreeMap<String, String>, f64> = before.iter().map(|(l, v)| (l, *v)).collect();
        let mut out = Groups::new();
        for (labels, value) in after {
            let Some(group) = self.group(side, labels) else { continue };
            let was = before.get(labels).copied().unwrap_or(0.0);
            if *value < was {
                return Err(format!("`{}{}` went down from {was} to {value} in the window: a counter reset (a restart)", self.metric(side), braces(labels)));
            }
            *out.entry(group).or_default() += value - was;
        }
        Ok(out)
    }

    /// `app_requests_total{SELECTOR}`; on the sidecar side the excluded series are left out by
    /// negative regex matchers (PromQL anchors them as `exclude` is anchored).
    pub fn prometheus_selector(&self, side: Side, selector: &str) -> String {
        // The selector as given (its matchers may hold commas inside quoted values).
        let mut matchers: Vec<String> = Some(selector.trim().trim_matches(['{', '}']).trim()).filter(|s| !s.is_empty()).map(str::to_string).into_iter().collect();
        if side == Side::Sidecar {
            matchers.extend(self.exclude.iter().map(|(label, pattern, _)| format!("{label}!~{}", promql_string(pattern))));
        }
        format!("{}{{{}}}", self.metric(side), matchers.join(", "))
    }

    /// The queries of one window, each series apart: `(start, end)`, evaluated at the start and
    /// the end. Both read the last sample (within the lookback before the start; within the
    /// window at the end): a range read skips the staleness marker a failed scrape leaves, and a
    /// pod replaced in the window keeps its last count.
    pub fn prometheus_queries(&self, side: Side, selector: &str, window_seconds: u64) -> (String, String) {
        let series = self.prometheus_selector(side, selector);
        (format!("last_over_time({series}[{LOOKBACK_SECONDS}s])"), format!("last_over_time({series}[{window_seconds}s])"))
    }

    /// The resets from the start's sample on: `(at the end, at the start)`, whose difference
    /// counts the resets inside the window and between the start's sample and the window's first
    /// (a restart there would go unseen by `resets()` over the window alone).
    pub fn prometheus_resets_queries(&self, side: Side, selector: &str, window_seconds: u64) -> (String, String) {
        let series = self.prometheus_selector(side, selector);
        (
            format!("sum(resets({series}[{}s]))", window_seconds + LOOKBACK_SECONDS),
            format!("sum(resets({series}[{LOOKBACK_SECONDS}s]))"),
        )
    }

    /// The verdict on one window: per group a notice (within the tolerance) or an error; a
    /// warning instead of a verdict when the sidecar saw fewer than `min_requests`.
    pub fn judge(&self, app: &Groups, sidecar: &Groups, window: &str) -> Vec<Finding> {
        let finding = |severity, message: String| Finding { severity, rule: Some(RULE), subject: Some(self.app.clone()), message, ..Finding::default() };
        let total: f64 = sidecar.values().sum();
        let mut out = Vec::new();
        let enough = total >= self.min_requests as f64;
        if !enough {
            out.push(finding(
                Severity::Warning,
                format!(
                    "too little traffic to judge: the sidecar counted {total} requests in {window} (min_requests: {}); run it under load or over a longer window",
                    self.min_requests
                ),
            ));
        }
        let mut groups: Vec<&Vec<String>> = app.keys().chain(sidecar.keys()).collect();
        groups.sort();
        groups.dedup();
        for group in groups {
            let (a, s) = (app.get(group).copied().unwrap_or(0.0), sidecar.get(group).copied().unwrap_or(0.0));
            let what = if self.matching.is_empty() {
                String::new()
            } else {
                let labels: Vec<String> = self.matching.iter().zip(group).map(|(p, v)| format!("{}=\"{v}\"", p.app)).collect();
                format!("{{{}}}: ", labels.join(","))
            };
            if s == 0.0 && a == 0.0 {
                continue;
            }
            if s == 0.0 {
                out.push(finding(if enough { Severity::Error } else { Severity::Notice }, format!("{what}the app counted {a} requests in {window}, the sidecar none")));
                continue;
            }
            let deviation = (a - s) / s * 100.0;
            let within = deviation.abs() <= self.tolerance_percent;
            // A group with few requests is not judged: one request in flight at a scrape would
            // be a large deviation of it.
            let judged = enough && s >= self.min_requests as f64;
            let message = format!(
                "{what}the app counted {a} requests in {window}, the sidecar {s} ({deviation:+.1} %, {} {} %){}",
                if within { "within" } else { "tolerance" },
                self.tolerance_percent,
                if judged || !enough { String::new() } else { format!("; too few in this group to judge (min_requests: {})", self.min_requests) }
            );
            out.push(finding(if within || !judged { Severity::Notice } else { Severity::Error }, message));
        }
        if app.is_empty() && enough {
            out.push(finding(Severity::Error, format!("not in the app's exposition, or it counted no request in {window}")));
        }
        out
    }
}

/// `{a="x",b="y"}` (empty without labels).
fn braces(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", promql_string(v))).collect();
    format!("{{{}}}", pairs.join(","))
}

/// A PromQL double-quoted string: the exposition formats' label-value escaping (`\\`, `\"`,
/// `\n`) is PromQL's too.
fn promql_string(s: &str) -> String {
    format!("\"{}\"", escape_label_value(s))
}

/// The series of one Prometheus instant-query result (`data.result` of `/api/v1/query`), as a
/// snapshot (`__name__` left out: `last_over_time` drops it).
pub fn snapshot_of_query(result: &serde_json::Value) -> Result<Snapshot, String> {
    let mut out = Snapshot::new();
    for series in result.as_array().ok_or("the result is not a vector")? {
        let labels: BTreeMap<String, String> = series["metric"]
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| *k != "__name__").filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let value = series["value"][1].as_str().and_then(crate::exposition::line::parse_value).ok_or("a series has no value")?;
        out.push((labels, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> CrossCheck {
        CrossCheck {
            app: "app_requests_total".into(),
            sidecar: "http_server_requests_total".into(),
            matching: vec![LabelPair { app: "code".into(), sidecar: "http_response_status_code".into(), by: Compare::StatusClass }],
            exclude: vec![("http_route".into(), "/metrics|/healthz".into(), Regex::new("^(?:/metrics|/healthz)$").unwrap())],
            tolerance_percent: 5.0,
            min_requests: 100,
        }
    }

    fn messages(findings: &[Finding]) -> Vec<String> {
        findings.iter().map(|f| format!("{:?} {}", f.severity, f.message)).collect()
    }

    #[test]
    fn two_scrapes_of_each_side_give_the_increase_per_group() {
        let c = check();
        let sidecar_before = "# TYPE http_server_requests_total counter\n\
            http_server_requests_total{http_route=\"/metrics\",http_response_status_code=\"200\"} 7\n";
        let sidecar_after = "# TYPE http_server_requests_total counter\n\
            http_server_requests_total{http_route=\"/metrics\",http_response_status_code=\"200\"} 9\n\
            http_server_requests_total{http_route=\"_OTHER\",http_response_status_code=\"200\"} 600\n\
            http_server_requests_total{http_route=\"_OTHER\",http_response_status_code=\"201\"} 200\n\
            http_server_requests_total{http_route=\"_OTHER\",http_response_status_code=\"503\"} 200\n";
        let app_before = "app_requests_total{code=\"200\"} 10\n";
        let app_after = "app_requests_total{code=\"200\"} 730\napp_requests_total{code=\"503\"} 180\n";
        let sidecar = c.increase(Side::Sidecar, &snapshot(sidecar_before, &c.sidecar).unwrap(), &snapshot(sidecar_after, &c.sidecar).unwrap()).unwrap();
        let app = c.increase(Side::App, &snapshot(app_before, &c.app).unwrap(), &snapshot(app_after, &c.app).unwrap()).unwrap();
        assert_eq!(sidecar, Groups::from([(vec!["2xx".to_string()], 800.0), (vec!["5xx".to_string()], 200.0)]));
        assert_eq!(app, Groups::from([(vec!["2xx".to_string()], 720.0), (vec!["5xx".to_string()], 180.0)]));
        assert_eq!(
            messages(&c.judge(&app, &sidecar, "30 s")),
            [
                "Error {code=\"2xx\"}: the app counted 720 requests in 30 s, the sidecar 800 (-10.0 %, tolerance 5 %)",
                "Error {code=\"5xx\"}: the app counted 180 requests in 30 s, the sidecar 200 (-10.0 %, tolerance 5 %)",
            ]
        );
        assert_eq!(messages(&c.judge(&sidecar, &sidecar, "30 s"))[0], "Notice {code=\"2xx\"}: the app counted 800 requests in 30 s, the sidecar 800 (+0.0 %, within 5 %)");
    }

    #[test]
    fn a_reset_or_too_little_traffic_gives_no_verdict() {
        let c = check();
        let err = c.increase(Side::App, &snapshot("app_requests_total{code=\"200\"} 10\n", &c.app).unwrap(), &snapshot("app_requests_total{code=\"200\"} 3\n", &c.app).unwrap());
        assert_eq!(err.unwrap_err(), "`app_requests_total{code=\"200\"}` went down from 10 to 3 in the window: a counter reset (a restart)");
        let few = Groups::from([(vec!["2xx".to_string()], 50.0)]);
        let none = Groups::new();
        let got = messages(&c.judge(&none, &few, "30 s"));
        assert_eq!(got[0], "Warning too little traffic to judge: the sidecar counted 50 requests in 30 s (min_requests: 100); run it under load or over a longer window");
        assert!(got[1].starts_with("Notice "), "{got:?}");
        let many = Groups::from([(vec!["2xx".to_string()], 500.0)]);
        assert_eq!(messages(&c.judge(&none, &many, "30 s")).last().unwrap(), "Error not in the app's exposition, or it counted no request in 30 s");
    }

    #[test]
    fn prometheus_queries_read_each_series_at_both_ends_of_the_window() {
        let c = check();
        assert_eq!(c.prometheus_selector(Side::App, "namespace=\"shop\""), "app_requests_total{namespace=\"shop\"}");
        assert_eq!(c.prometheus_selector(Side::App, "{pod=~\"a,b\"}"), "app_requests_total{pod=~\"a,b\"}");
        let (start, end) = c.prometheus_queries(Side::Sidecar, "", 60);
        assert_eq!(start, "last_over_time(http_server_requests_total{http_route!~\"/metrics|/healthz\"}[300s])");
        assert_eq!(end, "last_over_time(http_server_requests_total{http_route!~\"/metrics|/healthz\"}[60s])");
        let (to_end, to_start) = c.prometheus_resets_queries(Side::Sidecar, "", 60);
        assert_eq!(to_end, "sum(resets(http_server_requests_total{http_route!~\"/metrics|/healthz\"}[360s]))");
        assert_eq!(to_start, "sum(resets(http_server_requests_total{http_route!~\"/metrics|/healthz\"}[300s]))");
        // A pod replaced in the window: the old one's last count and the new one's both count.
        let at_start = serde_json::json!([
            {"metric": {"__name__": "http_server_requests_total", "pod": "a", "http_response_status_code": "200"}, "value": [1, "100"]}]);
        let at_end = serde_json::json!([
            {"metric": {"pod": "a", "http_response_status_code": "200"}, "value": [2, "400"]},
            {"metric": {"pod": "b", "http_response_status_code": "204"}, "value": [2, "50"]}]);
        let before = snapshot_of_query(&at_start).unwrap();
        let after = snapshot_of_query(&at_end).unwrap();
        assert_eq!(c.increase(Side::Sidecar, &before, &after).unwrap(), Groups::from([(vec!["2xx".to_string()], 350.0)]));
    }

    #[test]
    fn a_group_with_few_requests_is_not_judged() {
        let c = check();
        let sidecar = Groups::from([(vec!["2xx".to_string()], 1000.0), (vec!["5xx".to_string()], 3.0)]);
        let app = Groups::from([(vec!["2xx".to_string()], 1000.0), (vec!["5xx".to_string()], 2.0)]);
        assert_eq!(
            messages(&c.judge(&app, &sidecar, "30 s")),
            [
                "Notice {code=\"2xx\"}: the app counted 1000 requests in 30 s, the sidecar 1000 (+0.0 %, within 5 %)",
                "Notice {code=\"5xx\"}: the app counted 2 requests in 30 s, the sidecar 3 (-33.3 %, tolerance 5 %); too few in this group to judge (min_requests: 100)",
            ]
        );
    }
}
