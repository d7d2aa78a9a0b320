//! The deployment side of a contract, lowered and checked: client-side metric names, the target
//! workload, and autoscaling targets. `render` turns it into Istio and autoscaler manifests.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::model::{AutoscalingDef, Contract, HistogramModeDef, PolicyKindDef, ScalingRulesDef, SelectPolicyDef};
use crate::config::{DurationSpec, MetricSpec, PluginConfig};
use crate::names;

pub const DEFAULT_PROMETHEUS_URL: &str = "http://prometheus.istio-system.svc:9090";
pub const DEFAULT_RATE_WINDOW: &str = "1m";
pub const DEFAULT_LATENCY_WINDOW: &str = "2m";

/// Everything `render` needs beyond the server-side plugin configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deployment {
    /// Plugin configuration for outbound traffic, when client metrics are enabled.
    pub client: Option<PluginConfig>,
    pub workload: Workload,
    pub autoscaling: Option<Autoscaling>,
    /// The app's metrics port, when the contract rewrites the app's exposition.
    pub metrics_port: Option<u16>,
    /// How Prometheus stores the duration histogram (the filter records it the same way).
    pub histogram: HistogramMode,
    /// The policy's honesty checks (`verify --target cross-check`).
    pub cross_checks: Vec<super::crosscheck::CrossCheck>,
}

/// Classic (`_bucket` series) or native (exponential) duration histograms in Prometheus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HistogramMode {
    #[default]
    Classic,
    Native,
    /// Both, while queries move from the classic series to the native ones.
    Both,
}

impl HistogramMode {
    /// Whether the sidecar's stats are scraped for native histograms.
    pub fn native(self) -> bool {
        self != HistogramMode::Classic
    }
    /// Whether the rendered queries read the native histogram.
    pub fn queries_native(self) -> bool {
        self != HistogramMode::Classic
    }
    pub fn word(self) -> &'static str {
        match self {
            HistogramMode::Classic => "classic",
            HistogramMode::Native => "native",
            HistogramMode::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    pub namespace: Option<String>,
    pub selector: BTreeMap<String, String>,
    pub target: Option<Target>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `Deployment`, `StatefulSet` or `Rollout` (one of [`TARGET_KINDS`]).
    pub kind: String,
    pub name: String,
}

/// The workload kinds an autoscaler can target, with their API versions (all have a `/scale`
/// subresource; Istio names each pod's workload after them in `WORKLOAD_NAME`).
pub const TARGET_KINDS: [(&str, &str); 3] = [("Deployment", "apps/v1"), ("StatefulSet", "apps/v1"), ("Rollout", "argoproj.io/v1alpha1")];

impl Target {
    pub fn api_version(&self) -> &'static str {
        TARGET_KINDS.iter().find(|(kind, _)| *kind == self.kind).map_or("apps/v1", |(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub qps_per_pod: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub rate_window: String,
    pub latency_window: String,
    pub prometheus_url: String,
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_seconds: u32,
    pub select_policy: &'static str,
    /// (`Pods` | `Percent`, value, periodSeconds)
    pub policies: Vec<(&'static str, u32, u32)>,
}

impl ScalingRules {
    fn default_up() -> ScalingRules {
        ScalingRules { stabilization_window_seconds: 0, select_policy: "Max", policies: vec![("Percent", 100, 15), ("Pods", 4, 15)] }
    }
    fn default_down() -> ScalingRules {
        ScalingRules { stabilization_window_seconds: 300, select_policy: "Max", policies: vec![("Percent", 50, 60)] }
    }
}

/// Where the deployment side's findings go (the checker; one trait for every lowering).
pub use super::report::Report;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn is_label_key(s: &str) -> bool {
    let name = match s.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label) {
                return false;
            }
            name
        }
        None => s,
    };
    !name.is_empty() && is_label_value(name)
}

/// The scrape interval of the rendered PodMonitor and of Istio's sample Prometheus (global).
const SCRAPE_INTERVAL_SECONDS: u64 = 15;

/// Seconds of a window `is_prometheus_window` accepts.
fn window_seconds(s: &str) -> u64 {
    let (digits, unit) = s.split_at(s.len() - 1);
    digits.parse::<u64>().unwrap_or(0).saturating_mul(match unit {
        "h" => 3600,
        "m" => 60,
        _ => 1,
    })
}

/// A Prometheus duration as rate windows use it: `30s`, `1m`, `2h`.
pub fn is_prometheus_window(s: &str) -> bool {
    let digits = s.trim_end_matches(['s', 'm', 'h']);
    s.len() - digits.len() == 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits != "0"
}

pub fn lower(contract: &Contract, server: &PluginConfig, report: &mut dyn Report) -> Deployment {
    let duration = contract.metrics.duration.as_ref();
    let histogram = duration.and_then(|d| d.value.histogram.as_ref()).map_or(HistogramMode::Classic, |h| match h.value {
        HistogramModeDef::Classic => HistogramMode::Classic,
        HistogramModeDef::Native => HistogramMode::Native,
        HistogramModeDef::Both => HistogramMode::Both,
    });
    if let (Some(h), Some(d)) = (duration.and_then(|d| d.value.histogram.as_ref()), &server.duration) {
        if histogram.native() && d.unit == crate::config::DurationUnit::Milliseconds {
            report.warn(
                &h.referenced,
                "native histograms put every value within 0.5 of zero into the zero bucket, and Envoy records whole \
                 milliseconds: requests faster than 1 ms all count as 0 (a p50 of a fast service reads 0); \
                 `unit: microseconds` keeps them apart"
                    .into(),
            );
        }
    }
    Deployment {
        histogram,
        cross_checks: super::crosscheck::lower(contract, server, histogram != HistogramMode::Native, report),
        client: client_config(contract, server, report),
        workload: workload(contract, report),
        autoscaling: contract.autoscaling.as_ref().and_then(|a| autoscaling(a, server, histogram, report)),
        metrics_port: contract.exposition.as_ref().and_then(|e| {
            let port = e.value.port.as_ref()?;
            if port.value == 0 {
                report.error(&port.referenced, "port must be between 1 and 65535".into());
            }
            Some(port.value)
        }),
    }
}

fn client_config(contract: &Contract, server: &PluginConfig, report: &mut dyn Report) -> Option<PluginConfig> {
    let def = &contract.client_metrics.as_ref()?.value;
    if !def.enabled {
        return None;
    }
    let mut taken: Vec<String> = server.metric_names().into_iter().map(str::to_string).collect();
    let mut name = |given: &Option<Spanned<String>>, default: String, check: &dyn Fn(&str) -> Option<String>| {
        let (value, at) = match given {
            Some(n) => (n.value.clone(), Some(n.referenced)),
            None => (default, None),
        };
        if let Some(at) = at {
            let problem = if !names::is_valid_metric_name(&value) {
                Some(format!("`{value}` is not a valid Prometheus metric name"))
            } else if taken.contains(&value) {
                Some(format!("metric name `{value}` is already used"))
            } else {
                check(&value)
            };
            if let Some(p) = problem {
                report.error(&at, p);
            }
        }
        taken.push(value.clone());
        value
    };
    let mut client = server.clone();
    client.client = true;
    // Metric renames concern the server-side names; label renames hold for both sides.
    client.migrations.retain(|m| m.kind == crate::config::MigrationKind::Label);
    client.requests = server.requests.as_ref().map(|_| MetricSpec {
        name: name(&def.requests, "http_client_requests_total".into(), &|n| {
            (!n.ends_with("_total")).then(|| format!("counter `{n}` must end in `_total`"))
        }),
    });
    client.duration = server.duration.as_ref().map(|d| DurationSpec {
        name: name(&def.duration, format!("http_client_request_duration_{}", d.unit.word()), &|n| {
            (!names::ends_with_unit(n, d.unit.word())).then(|| format!("histogram `{n}` must end in `_{}`", d.unit.word()))
        }),
        ..d.clone()
    });
    client.active_requests = server.active_requests.as_ref().map(|a| crate::config::ActiveSpec {
        name: name(&def.active_requests, "http_client_active_requests".into(), &|n| {
            n.ends_with("_total").then(|| format!("gauge `{n}` must not end in `_total`"))
        }),
        labels: a.labels.clone(),
    });
    Some(client)
}

fn workload(contract: &Contract, report: &mut dyn Report) -> Workload {
    let Some(def) = contract.workload.as_ref().map(|w| &w.value) else {
        return Workload::default();
    };
    if let Some(ns) = &def.namespace {
        if !is_dns_label(&ns.value) {
            report.error(&ns.referenced, format!("`{}` is not a valid Kubernetes namespace name", ns.value));
        }
    }
    if let Some(selector) = &def.selector {
        for (k, v) in &selector.value {
            if !is_label_key(k) || !is_label_value(v) {
                report.error(&selector.referenced, format!("`{k}: {v}` is not a valid Kubernetes label selector entry"));
            }
        }
    }
    let target = def.target.as_ref().map(|t| {
        let kind = t.value.kind.as_ref().map_or("Deployment".to_string(), |k| k.value.clone());
        if let Some(k) = &t.value.kind {
            if !TARGET_KINDS.iter().any(|(kind, _)| *kind == k.value) {
                report.error(&k.referenced, format!("target kind `{}` is not supported; use Deployment, StatefulSet or Rollout (Argo Rollouts)", k.value));
            }
        }
        if !is_dns_label(&t.value.name.value) {
            report.error(&t.value.name.referenced, format!("`{}` is not a valid workload name", t.value.name.value));
        }
        Target { kind, name: t.value.name.value.clone() }
    });
    Workload {
        namespace: def.namespace.as_ref().map(|n| n.value.clone()),
        selector: def.selector.as_ref().map(|s| s.value.clone()).unwrap_or_default(),
        target,
    }
}

/// A number as the contract writes it (`120`, `2.5`).
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn autoscaling(def: &Spanned<AutoscalingDef>, server: &PluginConfig, histogram: HistogramMode, report: &mut dyn Report) -> Option<Autoscaling> {
    let at = def.referenced;
    let def = &def.value;
    let min = def.min_replicas.as_ref().map_or(1, |m| m.value);
    let max = def.max_replicas.as_ref().map_or(10, |m| m.value);
    if let Some(m) = &def.min_replicas {
        if m.value == 0 {
            report.error(&m.referenced, "min_replicas must be at least 1 (the HPA cannot scale to zero)".into());
        }
    }
    if min > max {
        let where_ = def.max_replicas.as_ref().map_or(at, |m| m.referenced);
        report.error(&where_, format!("max_replicas ({max}) is below min_replicas ({min})"));
    }
    let positive = |v: &Option<Spanned<f64>>, report: &mut dyn Report, what: &str| {
        v.as_ref().map(|v| {
            if !(v.value.is_finite() && v.value > 0.0) {
                report.error(&v.referenced, format!("{what} must be a positive number"));
            }
            v.value
        })
    };
    let qps = positive(&def.qps_per_pod, report, "qps_per_pod");
    let p95 = positive(&def.p95_latency_ms, report, "p95_latency_ms");
    if qps.is_none() && p95.is_none() {
        report.error(&at, "autoscaling needs a target: qps_per_pod, p95_latency_ms or both".into());
    }
    if let (Some(_), None) = (&def.qps_per_pod, &server.requests) {
        report.error(&def.qps_per_pod.as_ref().map_or(at, |v| v.referenced), "qps_per_pod needs the request counter, which is disabled".into());
    }
    if let (Some(v), None) = (&def.p95_latency_ms, &server.duration) {
        report.error(&v.referenced, "p95_latency_ms needs the duration histogram, which is disabled".into());
    }
    if let (Some(v), Some(d), HistogramMode::Classic) = (&def.p95_latency_ms, &server.duration, histogram) {
        // histogram_quantile interpolates inside the bucket that holds the 95th percentile: only
        // a bound at the threshold decides "above or below" from the counts themselves.
        let threshold = v.value * d.unit.per_second() / 1000.0;
        if v.value.is_finite() && v.value > 0.0 && !d.buckets.iter().any(|b| (b - threshold).abs() < 1e-9) {
            let below = d.buckets.iter().copied().filter(|b| *b < threshold).fold(None, |_, b| Some(b));
            let above = d.buckets.iter().copied().find(|b| *b > threshold);
            let inside = match (below, above) {
                (Some(lo), Some(hi)) => format!("inside the bucket ({}, {}]", number(lo), number(hi)),
                (None, Some(hi)) => format!("inside the first bucket (0, {}]", number(hi)),
                (Some(lo), None) => format!("above the last bound {}", number(lo)),
                (None, None) => "with no bucket bounds".to_string(),
            };
            report.warn(
                &v.referenced,
                format!(
                    "p95_latency_ms {} ({} {}) falls {inside}, so histogram_quantile can only guess which side of it the \
                     p95 is; add {} to metrics.duration.buckets (or use `histogram: native`)",
                    number(v.value),
                    number(threshold),
                    d.unit.word(),
                    number(threshold)
                ),
            );
        }
    }
    if crate::render::autoscaling::workload_label(server).is_none() {
        report.warn(
            &at,
            format!(
                "no label takes its value from node.{key} alone, so the rendered autoscalers select the workload's pods \
                 by a pod-name regex (which misses the pods of workloads named with ~47+ characters, whose generated \
                 names Kubernetes cuts) and the HPA gets no p95 metric; add `{{name: k8s_workload_name, from: node.{key}}}` to `labels`",
                key = crate::render::autoscaling::WORKLOAD_NAME_KEY
            ),
        );
    }
    let window = |w: &Option<Spanned<String>>, default: &str, report: &mut dyn Report| {
        w.as_ref().map_or(default.to_string(), |w| {
            if !is_prometheus_window(&w.value) {
                report.error(&w.referenced, format!("`{}` is not a Prometheus duration such as 30s, 1m or 2h", w.value));
            } else if window_seconds(&w.value) < 4 * SCRAPE_INTERVAL_SECONDS {
                report.warn(
                    &w.referenced,
                    format!(
                        "`{}` spans fewer than 4 scrapes at the {SCRAPE_INTERVAL_SECONDS} s interval the rendered scrape wiring uses: \
                         rate() then rests on a sample or two, and one missed scrape drops a pod from the sum; use 1m or more",
                        w.value
                    ),
                );
            }
            w.value.clone()
        })
    };
    let rate_window = window(&def.rate_window, DEFAULT_RATE_WINDOW, report);
    let latency_window = window(&def.latency_window, DEFAULT_LATENCY_WINDOW, report);
    let prometheus_url = def.prometheus_url.as_ref().map_or(DEFAULT_PROMETHEUS_URL.to_string(), |u| {
        if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
            report.error(&u.referenced, format!("`{}` is not an http(s) URL", u.value));
        }
        u.value.clone()
    });
    let behavior = def.behavior.as_ref();
    let rules = |r: Option<&Spanned<ScalingRulesDef>>, default: ScalingRules, report: &mut dyn Report| {
        let Some(r) = r else { return default };
        let mut out = default;
        if let Some(w) = &r.value.stabilization_window_seconds {
            if w.value > 3600 {
                report.error(&w.referenced, "stabilization_window_seconds must be at most 3600".into());
            }
            out.stabilization_window_seconds = w.value;
        }
        if let Some(p) = &r.value.select_policy {
            out.select_policy = match p.value {
                SelectPolicyDef::Max => "Max",
                SelectPolicyDef::Min => "Min",
                SelectPolicyDef::Disabled => "Disabled",
            };
        }
        if let Some(policies) = &r.value.policies {
            out.policies = Vec::new();
            for p in policies {
                if p.value.value == 0 {
                    report.error(&p.referenced, "policy value must be at least 1".into());
                }
                if p.value.period_seconds == 0 || p.value.period_seconds > 1800 {
                    report.error(&p.referenced, "period_seconds must be between 1 and 1800".into());
                }
                let kind = match p.value.kind {
                    PolicyKindDef::Pods => "Pods",
                    PolicyKindDef::Percent => "Percent",
                };
                out.policies.push((kind, p.value.value, p.value.period_seconds));
            }
            if out.policies.is_empty() && out.select_policy != "Disabled" {
                report.error(&r.referenced, "policies is empty; list at least one, or set select_policy: Disabled".into());
            }
        }
        out
    };
    let scale_up = rules(behavior.and_then(|b| b.scale_up.as_ref()), ScalingRules::default_up(), report);
    let scale_down = rules(behavior.and_then(|b| b.scale_down.as_ref()), ScalingRules::default_down(), report);
    Some(Autoscaling {
        min_replicas: min,
        max_replicas: max,
        qps_per_pod: qps,
        p95_latency_ms: p95,
        rate_window,
        latency_window,
        prometheus_url,
        scale_up,
        scale_down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_label_syntax() {
        assert!(is_prometheus_window("30s") && is_prometheus_window("2m") && is_prometheus_window("1h"));
        assert!(!is_prometheus_window("0m") && !is_prometheus_window("1d") && !is_prometheus_window("m"));
        assert!(is_label_key("app.kubernetes.io/name") && is_label_key("app"));
        assert!(!is_label_key("-app") && !is_label_key("/app"));
        assert!(is_dns_label("shop") && !is_dns_label("Shop"));
        assert_eq!([window_seconds("20s"), window_seconds("1m"), window_seconds("2h")], [20, 60, 7200]);
    }
}
