//! Judging an app's exposition by the contract's `policy`: naming rules (the Prometheus preset:
//! counters end in `_total`, base units, no type suffix on gauges, snake_case), name patterns,
//! forbidden labels and values, a series limit per metric, HELP required — with waivers.
//! Host-independent: `verify --target app` runs it on a saved or live scrape.

use std::collections::BTreeMap;

use regex::Regex;

use crate::config::{PolicyCheck, PolicySpec};
use crate::exposition::line::{unescape_label_value, walk, Line};

/// One broken rule, about one metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    /// Error (else warning).
    pub error: bool,
    pub metric: String,
    pub message: String,
}

/// A metric as Prometheus stores it: its family (histograms and summaries under their base
/// name), its type, whether it has a HELP text, its sample names and series.
#[derive(Debug, Default)]
struct Metric {
    kind: String,
    help: bool,
    samples: Vec<String>,
    series: Vec<Vec<(String, String)>>,
}

/// Non-base unit words and the base unit Prometheus names carry instead.
const UNITS: &[(&str, &str)] = &[
    ("ms", "seconds"),
    ("msec", "seconds"),
    ("millis", "seconds"),
    ("milliseconds", "seconds"),
    ("us", "seconds"),
    ("usec", "seconds"),
    ("microseconds", "seconds"),
    ("ns", "seconds"),
    ("nanoseconds", "seconds"),
    ("minutes", "seconds"),
    ("hours", "seconds"),
    ("days", "seconds"),
    ("kb", "bytes"),
    ("kib", "bytes"),
    ("kilobytes", "bytes"),
    ("mb", "bytes"),
    ("mib", "bytes"),
    ("megabytes", "bytes"),
    ("gb", "bytes"),
    ("gib", "bytes"),
    ("gigabytes", "bytes"),
    ("bits", "bytes"),
    ("percent", "ratio"),
];

/// The metrics of an exposition (text 0.0.4 or OpenMetrics), in name order.
fn metrics(body: &str) -> Result<BTreeMap<String, Metric>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: Vec<String> = Vec::new();
    let mut out: BTreeMap<String, Metric> = BTreeMap::new();
    walk(body, |line| {
        let sample = match line {
            Line::Type { name, kind } => {
                types.insert(name.to_string(), kind.to_string());
                return;
            }
            Line::Help { name, text } => {
                if !text.trim().is_empty() {
                    helps.push(name.to_string());
                }
                return;
            }
            Line::Sample(sample) => sample,
        };
        let name = sample.name;
        // The family a sample belongs to: its TYPE'd name, with the suffixes its type adds.
        let family = ["", "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info"]
            .iter()
            .find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            types.contains_key(base).then(|| base.to_string())
        })
        .unwrap_or_else(|| name.to_string());
        let kind = types.get(&family).cloned().unwrap_or_else(|| "untyped".into());
        let metric = out.entry(family.clone()).or_default();
        metric.kind = kind;
        metric.help = helps.contains(&family);
        if !metric.samples.iter().any(|s| s == name) {
            metric.samples.push(name.to_string());
        }
        let labels: Vec<(String, String)> =
            sample.labels.iter().filter(|(n, _)| !matches!(*n, "le" | "quantile")).map(|(n, v)| (n.to_string(), unescape_label_value(v).into_owned())).collect();
        if !metric.series.contains(&labels) {
            metric.series.push(labels);
        }
    })?;
    Ok(out)
}

fn snake_case(name: &str) -> bool {
    name.split('_').all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Every violation of `spec` in `body`, by metric then rule; waivers in force at `now_unix`
/// (seconds) leave their metric's rule out.
pub fn judge(spec: &PolicySpec, body: &str, now_unix: u64) -> Result<Vec<Violation>, String> {
    let metrics = metrics(body)?;
    let mut out = Vec::new();
    for rule in &spec.rules {
        let id = rule.check.id();
        let mut found = |metric: &str, message: String| {
            let waived = spec.waivers.iter().any(|w| w.rule == id && w.metric == metric && now_unix < w.expires_unix);
            if !waived {
                out.push(Violation { rule: id, error: rule.error, metric: metric.to_string(), message });
            }
        };
        let anchored = |pattern: &str| Regex::new(&crate::routes::anchored(pattern)).map_err(|e| format!("policy regex `{pattern}`: {e}"));
        match &rule.check {
            PolicyCheck::CounterSuffix => {
                for (name, m) in metrics.iter().filter(|(_, m)| m.kind == "counter") {
                    for sample in m.samples.iter().filter(|s| !s.ends_with("_total") && !s.ends_with("_created")) {
                        found(name, format!("counter `{sample}` is stored without `_total`"));
                    }
                }
            }
            PolicyCheck::BaseUnit => {
                for name in metrics.keys() {
                    if let Some((word, base)) = name.split('_').find_map(|w| UNITS.iter().find(|(u, _)| *u == w)) {
                        found(name, format!("`{name}` is in `{word}`: Prometheus names carry the base unit (`_{base}`), and values in it"));
                    }
                }
            }
            PolicyCheck::GaugeTypeSuffix => {
                for (name, _) in metrics.iter().filter(|(_, m)| m.kind == "gauge") {
                    if let Some(suffix) = ["_total", "_count", "_sum", "_bucket"].iter().find(|s| name.ends_with(**s)) {
                        found(name, format!("gauge `{name}` ends in `{suffix}`, which names a counter or a histogram's series"));
                    }
                }
            }
            PolicyCheck::SnakeCase => {
                for (name, m) in &metrics {
                    if !snake_case(name) {
                        found(name, format!("`{name}` is not snake_case (lowercase words joined by `_`)"));
                    }
                    let mut labels: Vec<&str> = m.series.iter().flatten().map(|(l, _)| l.as_str()).collect();
                    labels.sort_unstable();
                    labels.dedup();
                    for label in labels.into_iter().filter(|l| !snake_case(l)) {
                        found(name, format!("label `{label}` of `{name}` is not snake_case"));
                    }
                }
            }
            PolicyCheck::NamePattern { pattern, metric_type } => {
                let re = anchored(pattern)?;
                for (name, _) in metrics.iter().filter(|(_, m)| metric_type.as_ref().is_none_or(|t| *t == m.kind)) {
                    if !re.is_match(name) {
                        let scope = metric_type.as_ref().map(|t| format!("{t} ")).unwrap_or_default();
                        found(name, format!("{scope}`{name}` does not match `{pattern}`"));
                    }
                }
            }
            PolicyCheck::ForbiddenLabel { label } => {
                for (name, m) in &metrics {
                    if m.series.iter().flatten().any(|(l, _)| l == label) {
                        found(name, format!("`{name}` carries the forbidden label `{label}`"));
                    }
                }
            }
            PolicyCheck::ForbiddenValue { label, pattern } => {
                let re = anchored(pattern)?;
                for (name, m) in &metrics {
                    let mut bad: Vec<&str> = m.series.iter().flatten().filter(|(l, v)| l == label && re.is_match(v)).map(|(_, v)| v.as_str()).collect();
                    bad.sort_unstable();
                    bad.dedup();
                    if let Some(first) = bad.first() {
                        let more = if bad.len() > 1 { format!(" (and {} more)", bad.len() - 1) } else { String::new() };
                        found(name, format!("`{name}` has `{label}=\"{first}\"`{more}, a value matching the forbidden `{pattern}`"));
                    }
                }
            }
            PolicyCheck::SeriesLimit { max } => {
                for (name, m) in metrics.iter().filter(|(_, m)| m.series.len() > *max as usize) {
                    found(name, format!("`{name}` has {} series, over the policy's {max}", m.series.len()));
                }
            }
            PolicyCheck::HelpRequired => {
                for (name, _) in metrics.iter().filter(|(_, m)| !m.help) {
                    found(name, format!("`{name}` has no HELP text"));
                }
            }
        }
    }
    out.sort_by(|a, b| a.metric.cmp(&b.metric).then(a.rule.cmp(b.rule)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyRule, Waiver};

    fn spec(checks: Vec<PolicyCheck>) -> PolicySpec {
        PolicySpec { rules: checks.into_iter().map(|check| PolicyRule { error: true, check }).collect(), waivers: Vec::new() }
    }

    fn found(spec: &PolicySpec, body: &str) -> Vec<(&'static str, String)> {
        judge(spec, body, 0).unwrap().into_iter().map(|v| (v.rule, v.metric)).collect()
    }

    const BODY: &str = "\
# HELP jobs_done_total Jobs.
# TYPE jobs_done_total counter
jobs_done_total{queue=\"a\"} 3
# TYPE jobs_failed counter
jobs_failed 1
# HELP latency_ms Latency.
# TYPE latency_ms histogram
latency_ms_bucket{le=\"1\"} 1
latency_ms_bucket{le=\"+Inf\"} 1
latency_ms_sum 0.5
latency_ms_count 1
# HELP queue_depth_total Depth.
# TYPE queue_depth_total gauge
queue_depth_total{Queue=\"a\"} 4
";

    #[test]
    fn the_prometheus_preset_rules_each_catch_their_mistake() {
        let s = spec(vec![PolicyCheck::CounterSuffix, PolicyCheck::BaseUnit, PolicyCheck::GaugeTypeSuffix, PolicyCheck::SnakeCase, PolicyCheck::HelpRequired]);
        assert_eq!(
            found(&s, BODY),
            [
                ("counter-suffix", "jobs_failed".to_string()),
                ("help-required", "jobs_failed".to_string()),
                ("base-unit", "latency_ms".to_string()),
                ("gauge-type-suffix", "queue_depth_total".to_string()),
                ("snake-case", "queue_depth_total".to_string()),
            ]
        );
    }

    #[test]
    fn openmetrics_counters_are_judged_by_their_stored_name() {
        let s = spec(vec![PolicyCheck::CounterSuffix]);
        assert_eq!(found(&s, "# TYPE jobs counter\njobs_total 1\njobs_created 1.7e9\n# EOF\n"), []);
        assert_eq!(found(&s, "# TYPE jobs counter\njobs 1\n"), [("counter-suffix", "jobs".to_string())]);
    }

    #[test]
    fn patterns_labels_values_and_limits() {
        let s = spec(vec![
            PolicyCheck::NamePattern { pattern: "[a-z_]+_seconds".into(), metric_type: Some("histogram".into()) },
            PolicyCheck::ForbiddenLabel { label: "queue".into() },
            PolicyCheck::ForbiddenValue { label: "Queue".into(), pattern: "[a-z]".into() },
            PolicyCheck::SeriesLimit { max: 0 },
        ]);
        let got = judge(&s, BODY, 0).unwrap();
        let messages: Vec<String> = got.iter().map(|v| format!("{} {}: {}", v.rule, v.metric, v.message)).collect();
        assert_eq!(
            messages,
            [
                "forbidden-label jobs_done_total: `jobs_done_total` carries the forbidden label `queue`",
                "series-limit jobs_done_total: `jobs_done_total` has 1 series, over the policy's 0",
                "series-limit jobs_failed: `jobs_failed` has 1 series, over the policy's 0",
                "name-pattern latency_ms: histogram `latency_ms` does not match `[a-z_]+_seconds`",
                "series-limit latency_ms: `latency_ms` has 1 series, over the policy's 0",
                "forbidden-value queue_depth_total: `queue_depth_total` has `Queue=\"a\"`, a value matching the forbidden `[a-z]`",
                "series-limit queue_depth_total: `queue_depth_total` has 1 series, over the policy's 0",
            ]
        );
    }

    #[test]
    fn a_waiver_holds_until_it_expires() {
        let mut s = spec(vec![PolicyCheck::BaseUnit]);
        s.waivers.push(Waiver { rule: "base-unit".into(), metric: "latency_ms".into(), reason: "r".into(), expires: "2027-01-01".into(), expires_unix: 1_798_761_600 });
        assert_eq!(judge(&s, BODY, 1_798_761_599).unwrap(), []);
        assert_eq!(judge(&s, BODY, 1_798_761_600).unwrap().len(), 1);
    }
}
