//! Judging an app's exposition by the contract's `policy`: naming rules (the Prometheus preset:
//! counters end in `_total`, base units, no type suffix on gauges, snake_case), name patterns,
//! forbidden labels and values, a series limit per metric, HELP required — with waivers.
//! Host-independent: `verify --target app` runs it on a saved or live scrape, the filter on every
//! scrape it rewrites (counting violations by rule and metric). Messages are built natively only:
//! the filter counts, it does not explain.

use std::collections::BTreeMap;

use regex::Regex;

use crate::config::{PolicyCheck, PolicyRule, PolicySpec};
use crate::names::OTHER;
use crate::telemetry::{encode_tags, MetricHost, MetricKind, POLICY_VIOLATIONS_METRIC};
use crate::exposition::line::{unescape_label_value, walk, Line};
use crate::exposition::{FastHasher, FastMap};

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
/// name), its type, whether it has a HELP text, its sample names and distinct series (label
/// sets but `le`/`quantile`, values as written).
#[derive(Debug)]
struct Metric<'a> {
    name: &'a str,
    kind: &'a str,
    /// A TYPE line named it (its samples may carry the type's suffixes).
    typed: bool,
    help: bool,
    samples: Vec<&'a str>,
    series: Vec<Vec<(&'a str, &'a str)>>,
    /// The label names its series carry, each once.
    label_names: Vec<&'a str>,
}

/// The suffixes a family's type adds to its samples' names.
const SAMPLE_SUFFIXES: [&str; 8] = ["_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info"];

fn hash_of(parts: &[&str]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = FastHasher::default();
    for part in parts {
        hasher.write(part.as_bytes());
        hasher.write(&[0xff]);
    }
    hasher.finish()
}

/// The families of an exposition in the order they first appear, found by name through a hash
/// map (names compared on a hit: a collision only costs a second family entry).
#[derive(Default)]
struct Families<'a> {
    list: Vec<Metric<'a>>,
    by_name: FastMap<u64, u32>,
}

impl<'a> Families<'a> {
    fn find(&self, name: &str) -> Option<usize> {
        let i = *self.by_name.get(&hash_of(&[name]))? as usize;
        if self.list[i].name == name {
            return Some(i);
        }
        // Two names with one hash: the app's own doing (the hash is not keyed), paid by it.
        self.list.iter().position(|m| m.name == name)
    }

    fn find_or_add(&mut self, name: &'a str) -> usize {
        if let Some(i) = self.find(name) {
            return i;
        }
        // The first family of a hash keeps the entry; a colliding one is found by the scan.
        self.by_name.entry(hash_of(&[name])).or_insert(self.list.len() as u32);
        self.list.push(Metric { name, kind: "untyped", typed: false, help: false, samples: Vec::new(), series: Vec::new(), label_names: Vec::new() });
        self.list.len() - 1
    }

    /// The family a sample named `name` belongs to, if one is known: its own name, or a typed
    /// family's name plus one of its type's suffixes.
    fn of_sample(&self, name: &str) -> Option<usize> {
        std::iter::once("").chain(SAMPLE_SUFFIXES).find_map(|suffix| {
            let i = self.find(name.strip_suffix(suffix)?)?;
            (suffix.is_empty() || self.list[i].typed).then_some(i)
        })
    }
}

/// The metrics of an exposition (text 0.0.4 or OpenMetrics), in the order they first appear.
/// The filter judges every scrape with this, so it stays lean and linear: no sorting, one hash
/// lookup per line (fewer when a family's samples follow its TYPE line, as both formats say).
fn metrics(body: &str) -> Result<Vec<Metric<'_>>, String> {
    let mut families = Families::default();
    // Series by the hash of their family and labels -> where they are kept (labels compared
    // on a hit, so a collision cannot hide a series' labels from the rules).
    let mut series_index: FastMap<u64, u32> = FastMap::default();
    let mut series_at: Vec<(u32, u32)> = Vec::new();
    // Label names by the hash of their family and name -> (family, name), compared on a hit.
    let mut label_index: FastMap<u64, u32> = FastMap::default();
    let mut label_keys: Vec<(usize, &str)> = Vec::new();
    // The family the last TYPE line or sample was of; a HELP line not yet claimed by a family.
    let mut current: Option<usize> = None;
    let mut help: Option<&str> = None;
    let mut labels: Vec<(&str, &str)> = Vec::new();
    let mut key: Vec<&str> = Vec::new();
    let (mut last_family, mut last_labels): (Option<usize>, Vec<(&str, &str)>) = (None, Vec::new());
    walk(body, |line| match line {
        Line::Type { name, kind } => {
            let i = families.find_or_add(name);
            let m = &mut families.list[i];
            (m.kind, m.typed) = (kind, true);
            m.help |= help == Some(name);
            current = Some(i);
        }
        Line::Help { name, text } => {
            if text.trim().is_empty() {
                return;
            }
            match current {
                Some(i) if families.list[i].name == name => families.list[i].help = true,
                _ => help = Some(name),
            }
        }
        Line::Sample(sample) => {
            let name = sample.name;
            let follows = current.filter(|&i| {
                let m = &families.list[i];
                let rest = name.strip_prefix(m.name);
                rest == Some("") || (m.typed && rest.is_some_and(|r| SAMPLE_SUFFIXES.contains(&r)))
            });
            let i = match follows.or_else(|| families.of_sample(name)) {
                Some(i) => i,
                None => {
                    let i = families.find_or_add(name);
                    families.list[i].help |= help == Some(name);
                    i
                }
            };
            current = Some(i);
            let m = &mut families.list[i];
            if !m.samples.contains(&name) {
                m.samples.push(name);
            }
            labels.clear();
            labels.extend(sample.labels.iter().filter(|(n, _)| !matches!(*n, "le" | "quantile")));
            // A histogram's or summary's lines of one series follow each other: seen already.
            if last_family == Some(i) && labels == last_labels {
                return;
            }
            last_family = Some(i);
            last_labels.clone_from(&labels);
            key.clear();
            key.push(m.name);
            key.extend(labels.iter().flat_map(|(n, v)| [*n, *v]));
            let hash = hash_of(&key);
            let known = series_index.get(&hash).is_some_and(|&at| {
                let (f, s) = series_at[at as usize];
                f as usize == i && families.list[i].series[s as usize] == labels
            });
            if !known {
                let m = &mut families.list[i];
                for (label, _) in &labels {
                    // Keyed by the family's index, not its name: a long name is hashed once.
                    let key = hash_of(&[label]) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let new = match label_index.get(&key) {
                        None => {
                            label_index.insert(key, label_keys.len() as u32);
                            label_keys.push((i, *label));
                            true
                        }
                        Some(&at) if label_keys[at as usize] == (i, *label) => false,
                        // A collision (the app's doing): the family's own list says.
                        Some(_) => !m.label_names.contains(label),
                    };
                    if new {
                        m.label_names.push(label);
                    }
                }
                // On a collision the first series keeps the index entry; this one is still kept.
                let at = series_at.len() as u32;
                if *series_index.entry(hash).or_insert(at) == at {
                    series_at.push((i as u32, m.series.len() as u32));
                }
                m.series.push(labels.clone());
            }
        }
    })?;
    // The text format writes a counter's, histogram's or summary's creation time as a gauge
    // family of its own (`requestLatencyMs_created`; `jobs_created` for `jobs_total`): judged
    // with its family, not as a second metric repeating its family's violations.
    let created: Vec<bool> = families
        .list
        .iter()
        .map(|m| {
            let Some(base) = m.name.strip_suffix("_created").filter(|_| matches!(m.kind, "gauge" | "untyped")) else { return false };
            let parent = |name: &str, kinds: &[&str]| families.find(name).is_some_and(|i| kinds.contains(&families.list[i].kind));
            parent(base, &["counter", "histogram", "summary"]) || parent(&format!("{base}_total"), &["counter"])
        })
        .collect();
    let mut index = 0;
    families.list.retain(|_| {
        index += 1;
        !created[index - 1]
    });
    Ok(families.list)
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

/// The words of a name: split at `_` and where a lowercase letter or digit meets an uppercase one
/// (`requestLatencyMs` → request, Latency, Ms).
fn words(name: &str) -> impl Iterator<Item = &str> {
    name.split('_').flat_map(|part| {
        let bytes = part.as_bytes();
        let mut start = 0;
        let mut cuts = Vec::new();
        for i in 1..bytes.len() {
            if bytes[i].is_ascii_uppercase() && !bytes[i - 1].is_ascii_uppercase() {
                cuts.push(&part[start..i]);
                start = i;
            }
        }
        cuts.push(&part[start..]);
        cuts
    })
}

/// Lowercase words of letters and digits joined by single `_`, starting with a letter.
fn snake_case(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.last() != Some(&b'_')
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        && !bytes.windows(2).any(|w| w == b"__")
}

/// A contract's policy with its regexes compiled (once: the filter judges every scrape).
#[derive(Debug)]
pub struct Policy {
    spec: PolicySpec,
    /// Per rule, the anchored regex of a `name-pattern` or `forbidden-value` rule.
    regexes: Vec<Option<Regex>>,
}

impl Policy {
    pub fn new(spec: &PolicySpec) -> Result<Policy, String> {
        let regexes = spec
            .rules
            .iter()
            .map(|rule| match &rule.check {
                PolicyCheck::NamePattern { pattern, .. } | PolicyCheck::ForbiddenValue { pattern, .. } => {
                    Regex::new(&crate::routes::anchored(pattern)).map(Some).map_err(|e| format!("policy regex `{pattern}`: {e}"))
                }
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy { spec: spec.clone(), regexes })
    }

    /// Every violation in `body`, by rule then metric (as the metrics appear); waivers in force
    /// at `now_unix` (seconds) leave their metric's rule out.
    pub fn judge(&self, body: &str, now_unix: u64) -> Result<Vec<Violation>, String> {
        judge(&self.spec, &self.regexes, body, now_unix)
    }
}

/// Most (rule, metric) series of the violations counter per sidecar; later pairs count under
/// metric `_OTHER` (the app's exposition decides how many metrics break a rule).
pub const MAX_VIOLATION_SERIES: u32 = 200;

/// The sidecar's side of the policy: judges each rewritten scrape and counts what it breaks in
/// `metricpact_policy_violations_total{metricpact_rule, metricpact_metric, metricpact_severity}`,
/// one per scrape per broken (rule, metric), so a dashboard shows which apps break the contract.
#[derive(Debug)]
pub struct ViolationCounter {
    policy: Policy,
    /// Counter ids by (rule, metric, error): a scrape repeats the same names.
    ids: BTreeMap<(&'static str, String, bool), Option<u32>>,
    /// How many of them the budget admitted.
    admitted: usize,
}

impl ViolationCounter {
    pub fn new(policy: Policy) -> ViolationCounter {
        ViolationCounter { policy, ids: BTreeMap::new(), admitted: 0 }
    }

    /// Judges one scrape's rewritten body and counts its violations; the number of series
    /// counted, or why the body could not be judged.
    pub fn count(&mut self, host: &mut dyn MetricHost, body: &str, now_unix: u64) -> Result<usize, String> {
        let violations = self.policy.judge(body, now_unix)?;
        // A metric that breaks a rule twice (two labels not in snake_case, two forbidden
        // labels) counts once.
        let mut counted: FastMap<u64, u32> = FastMap::default();
        for v in &violations {
            if counted.insert(hash_of(&[v.rule, &v.metric, if v.error { "error" } else { "warning" }]), 0).is_some() {
                continue;
            }
            if let Some(id) = self.id(host, v.rule, &v.metric, v.error) {
                host.increment(id, 1);
            }
        }
        let counted = counted.len();
        Ok(counted)
    }

    fn id(&mut self, host: &mut dyn MetricHost, rule: &'static str, metric: &str, error: bool) -> Option<u32> {
        if let Some(id) = self.ids.get(&(rule, metric.to_string(), error)) {
            return *id;
        }
        // Once the cache holds as many refusals as admissions, the budget is not asked again
        // (shared data takes a lock every worker shares).
        let asks = self.admitted < MAX_VIOLATION_SERIES as usize && self.ids.len() < 2 * MAX_VIOLATION_SERIES as usize;
        let admitted = asks && host.admit(VIOLATIONS_SCOPE, &format!("{rule}/{metric}"), MAX_VIOLATION_SERIES);
        self.admitted += usize::from(admitted);
        let counted_as = if admitted { metric } else { OTHER };
        let id = match self.ids.get(&(rule, counted_as.to_string(), error)) {
            Some(id) => *id,
            None => {
                let severity = if error { "error" } else { "warning" };
                let tags = encode_tags(&[("metricpact_rule", rule), ("metricpact_metric", counted_as), ("metricpact_severity", severity)]);
                let id = host.define(MetricKind::Counter, &format!("{POLICY_VIOLATIONS_METRIC}.{tags}"));
                self.ids.insert((rule, counted_as.to_string(), error), id);
                id
            }
        };
        // A refused metric is remembered too (as many as admitted ones at most), so the next
        // scrapes do not ask the shared budget again.
        if !admitted && self.ids.len() < 2 * MAX_VIOLATION_SERIES as usize {
            self.ids.insert((rule, metric.to_string(), error), id);
        }
        id
    }
}

/// The shared-data budget scope of the violation series.
const VIOLATIONS_SCOPE: &str = "metricpact.policy";

/// A violation's message, built natively only (the filter counts violations, it logs none).
macro_rules! says {
    ($($arg:tt)*) => {{
        #[cfg(not(target_arch = "wasm32"))]
        let message = format!($($arg)*);
        #[cfg(target_arch = "wasm32")]
        let message = {
            let _ = || format!($($arg)*);
            String::new()
        };
        message
    }};
}

fn judge(spec: &PolicySpec, regexes: &[Option<Regex>], body: &str, now_unix: u64) -> Result<Vec<Violation>, String> {
    let metrics = metrics(body)?;
    let mut out = Vec::new();
    for (rule, re) in spec.rules.iter().zip(regexes) {
        let mut found = Found { spec, rule, now_unix, out: &mut out };
        match &rule.check {
            PolicyCheck::CounterSuffix => {
                for m in metrics.iter().filter(|m| m.kind == "counter") {
                    for sample in m.samples.iter().filter(|s| !s.ends_with("_total") && !s.ends_with("_created")) {
                        found.at(m.name, says!("counter `{sample}` is stored without `_total`"));
                    }
                }
            }
            PolicyCheck::BaseUnit => {
                for m in &metrics {
                    if let Some((word, base)) = words(m.name).find_map(|w| UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(w))) {
                        found.at(m.name, says!("`{}` is in `{}`: Prometheus names carry the base unit (`_{base}`), and values in it", m.name, word.to_ascii_lowercase()));
                    }
                }
            }
            PolicyCheck::GaugeTypeSuffix => {
                for m in metrics.iter().filter(|m| m.kind == "gauge") {
                    if let Some(suffix) = ["_total", "_count", "_sum", "_bucket"].iter().find(|s| m.name.ends_with(**s)) {
                        found.at(m.name, says!("gauge `{}` ends in `{suffix}`, which names a counter or a histogram's series", m.name));
                    }
                }
            }
            PolicyCheck::SnakeCase => {
                for m in &metrics {
                    if !snake_case(m.name) {
                        found.at(m.name, says!("`{}` is not snake_case (lowercase words joined by `_`)", m.name));
                    }
                    for label in m.label_names.iter().filter(|l| !snake_case(l)) {
                        found.at(m.name, says!("label `{label}` of `{}` is not snake_case", m.name));
                    }
                }
            }
            PolicyCheck::NamePattern { pattern, metric_type } => {
                let Some(re) = re else { continue };
                for m in metrics.iter().filter(|m| metric_type.as_ref().is_none_or(|t| t == m.kind)) {
                    if !re.is_match(m.name) {
                        found.at(m.name, says!("{}`{}` does not match `{pattern}`", metric_type.as_ref().map(|t| format!("{t} ")).unwrap_or_default(), m.name));
                    }
                }
            }
            PolicyCheck::ForbiddenLabel { label } => {
                for m in metrics.iter().filter(|m| m.label_names.contains(&label.as_str())) {
                    found.at(m.name, says!("`{}` carries the forbidden label `{label}`", m.name));
                }
            }
            PolicyCheck::ForbiddenValue { label, pattern } => {
                let Some(re) = re else { continue };
                for m in &metrics {
                    if !m.label_names.contains(&label.as_str()) {
                        continue;
                    }
                    let mut bad = m.series.iter().flatten().filter(|(l, v)| l == label && re.is_match(&unescape_label_value(v)));
                    if let Some((_, first)) = bad.next() {
                        let more = bad.count();
                        found.at(m.name, says!("`{}` has `{label}=\"{}\"`{}, a value matching the forbidden `{pattern}`", m.name, unescape_label_value(first), if more > 0 { format!(" (and {more} more series)") } else { String::new() }));
                    }
                }
            }
            PolicyCheck::SeriesLimit { max } => {
                for m in metrics.iter().filter(|m| m.series.len() > *max as usize) {
                    found.at(m.name, says!("`{}` has {} series, over the policy's {max}", m.name, m.series.len()));
                }
            }
            PolicyCheck::HelpRequired => {
                for m in metrics.iter().filter(|m| !m.help) {
                    found.at(m.name, says!("`{}` has no HELP text", m.name));
                }
            }
        }
    }
    Ok(out)
}

/// Where one rule's violations go: out, unless a waiver in force holds them back.
struct Found<'a> {
    spec: &'a PolicySpec,
    rule: &'a PolicyRule,
    now_unix: u64,
    out: &'a mut Vec<Violation>,
}

impl Found<'_> {
    fn at(&mut self, metric: &str, message: String) {
        let id = self.rule.check.id();
        if !self.spec.waivers.iter().any(|w| w.rule == id && w.metric == metric && self.now_unix < w.expires_unix) {
            self.out.push(Violation { rule: id, error: self.rule.error, metric: metric.to_string(), message });
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::Waiver;

    fn spec(checks: Vec<PolicyCheck>) -> PolicySpec {
        PolicySpec { rules: checks.into_iter().map(|check| PolicyRule { error: true, check }).collect(), waivers: Vec::new() }
    }

    fn found(spec: &PolicySpec, body: &str) -> Vec<(&'static str, String)> {
        let mut found: Vec<_> = Policy::new(spec).unwrap().judge(body, 0).unwrap().into_iter().map(|v| (v.rule, v.metric)).collect();
        found.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
        found
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

    // Messages are built natively only.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn patterns_labels_values_and_limits() {
        let s = spec(vec![
            PolicyCheck::NamePattern { pattern: "[a-z_]+_seconds".into(), metric_type: Some("histogram".into()) },
            PolicyCheck::ForbiddenLabel { label: "queue".into() },
            PolicyCheck::ForbiddenValue { label: "Queue".into(), pattern: "[a-z]".into() },
            PolicyCheck::SeriesLimit { max: 0 },
        ]);
        let mut got = Policy::new(&s).unwrap().judge(BODY, 0).unwrap();
        got.sort_by(|a, b| (&a.metric, a.rule).cmp(&(&b.metric, b.rule)));
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
        let policy = Policy::new(&s).unwrap();
        assert_eq!(policy.judge(BODY, 1_798_761_599).unwrap(), []);
        assert_eq!(policy.judge(BODY, 1_798_761_600).unwrap().len(), 1);
    }

    /// Counts by full metric name, with a shared budget like Envoy's shared data.
    #[derive(Default)]
    struct Stats {
        names: Vec<String>,
        values: BTreeMap<String, i64>,
        admitted: Vec<String>,
    }

    impl MetricHost for Stats {
        fn define(&mut self, _kind: MetricKind, name: &str) -> Option<u32> {
            self.names.push(name.to_string());
            Some(self.names.len() as u32 - 1)
        }
        fn increment(&mut self, id: u32, delta: i64) {
            *self.values.entry(self.names[id as usize].clone()).or_default() += delta;
        }
        fn record(&mut self, _id: u32, _value: u64) {}
        fn admit(&mut self, _scope: &str, member: &str, max: u32) -> bool {
            if !self.admitted.iter().any(|m| m == member) && self.admitted.len() < max as usize {
                self.admitted.push(member.to_string());
            }
            self.admitted.iter().any(|m| m == member)
        }
    }

    #[test]
    fn the_sidecar_counts_each_violation_once_per_scrape_by_rule_metric_and_severity() {
        let mut s = spec(vec![PolicyCheck::BaseUnit, PolicyCheck::HelpRequired]);
        s.rules[1].error = false;
        let mut counter = ViolationCounter::new(Policy::new(&s).unwrap());
        let mut stats = Stats::default();
        for _ in 0..3 {
            assert_eq!(counter.count(&mut stats, BODY, 0).unwrap(), 2);
        }
        let counted: Vec<(&str, i64)> = stats.values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            counted,
            [
                ("metricpact_policy_violations_total.metricpact_rule=.=base-unit;.;metricpact_metric=.=latency_ms;.;metricpact_severity=.=error;.;", 3),
                ("metricpact_policy_violations_total.metricpact_rule=.=help-required;.;metricpact_metric=.=jobs_failed;.;metricpact_severity=.=warning;.;", 3),
            ]
        );
        assert_eq!(stats.names.len(), 2, "defined once each");
    }

    #[test]
    fn a_metric_breaking_rules_of_one_id_twice_counts_once_a_scrape() {
        let s = spec(vec![PolicyCheck::ForbiddenLabel { label: "user_id".into() }, PolicyCheck::ForbiddenLabel { label: "email".into() }]);
        let mut counter = ViolationCounter::new(Policy::new(&s).unwrap());
        let mut stats = Stats::default();
        let body = "a{user_id=\"1\",email=\"x\"} 1\nb{user_id=\"1\",email=\"x\"} 1\n";
        assert_eq!(counter.count(&mut stats, body, 0).unwrap(), 2);
        assert_eq!(stats.values.values().copied().collect::<Vec<_>>(), [1, 1]);
        // One of them a warning: the metric is counted under each severity once.
        let mut s = s;
        s.rules[1].error = false;
        let mut counter = ViolationCounter::new(Policy::new(&s).unwrap());
        let mut stats = Stats::default();
        assert_eq!(counter.count(&mut stats, body, 0).unwrap(), 4);
        assert_eq!(stats.values.len(), 4);
    }

    #[test]
    fn violation_series_beyond_the_budget_count_under_other() {
        let body: String = (0..MAX_VIOLATION_SERIES + 5).map(|i| format!("# TYPE m{i}_ms gauge\nm{i}_ms 1\n")).collect();
        let mut counter = ViolationCounter::new(Policy::new(&spec(vec![PolicyCheck::BaseUnit])).unwrap());
        let mut stats = Stats::default();
        assert_eq!(counter.count(&mut stats, &body, 0).unwrap(), MAX_VIOLATION_SERIES as usize + 5);
        assert_eq!(stats.values.len(), MAX_VIOLATION_SERIES as usize + 1);
        assert_eq!(stats.values["metricpact_policy_violations_total.metricpact_rule=.=base-unit;.;metricpact_metric=.=_OTHER;.;metricpact_severity=.=error;.;"], 5);
    }

    #[test]
    fn families_and_series_are_told_apart_wherever_their_lines_are() {
        // A histogram's series counted once for all its lines; an untyped family written in two
        // places is one metric; HELP before or after TYPE.
        let body = "# TYPE h histogram\nh_bucket{a=\"1\",le=\"1\"} 1\nh_bucket{a=\"1\",le=\"+Inf\"} 1\nh_sum{a=\"1\"} 1\nh_count{a=\"1\"} 1\n\
h_bucket{a=\"2\",le=\"+Inf\"} 1\nh_count{a=\"2\"} 1\n# HELP h H.\nu 1\n# HELP g G.\n# TYPE g gauge\ng 1\nu{x=\"y\"} 2\n\
# TYPE h_created gauge\nh_created{a=\"1\"} 1.7e9\n# TYPE c_total counter\nc_total 1\n# TYPE c_created gauge\nc_created 1.7e9\n\
# TYPE g_created gauge\ng_created 1\n# TYPE j counter\nj_total 1\n# TYPE k gauge\nk 1\nj_created 1\n";
        let got = metrics(body).unwrap();
        let shape: Vec<(&str, &str, bool, usize, Vec<&str>)> = got.iter().map(|m| (m.name, m.kind, m.help, m.series.len(), m.samples.clone())).collect();
        assert_eq!(
            shape,
            [
                ("h", "histogram", true, 2, vec!["h_bucket", "h_sum", "h_count"]),
                ("u", "untyped", false, 2, vec!["u"]),
                ("g", "gauge", true, 1, vec!["g"]),
                ("c_total", "counter", false, 1, vec!["c_total"]),
                ("g_created", "gauge", false, 1, vec!["g_created"]),
                ("j", "counter", false, 1, vec!["j_total", "j_created"]),
                ("k", "gauge", false, 1, vec!["k"]),
            ],
            "the text format's `_created` gauges of counters and histograms are part of them"
        );
    }
}
