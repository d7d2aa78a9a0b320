//! Autoscaling objects that read the contract's metrics: Prometheus recording rules,
//! prometheus-adapter rules with the HPA that uses them, and a KEDA ScaledObject.

use serde_json::{json, Value};

use super::{Inputs, Rendered};
use crate::contract::deploy::{Autoscaling, ScalingRules, Target, DEFAULT_LATENCY_WINDOW, DEFAULT_PROMETHEUS_URL, DEFAULT_RATE_WINDOW};

/// The quantile the latency objects compute.
pub const QUANTILE: f64 = 0.95;

fn windows(inputs: &Inputs) -> (String, String) {
    match &inputs.deployment.autoscaling {
        Some(a) => (a.rate_window.clone(), a.latency_window.clone()),
        None => (DEFAULT_RATE_WINDOW.into(), DEFAULT_LATENCY_WINDOW.into()),
    }
}

/// Name prometheus-adapter gives the per-second rate of a `_total` counter.
pub fn qps_metric_name(counter: &str) -> String {
    format!("{}_per_second", counter.strip_suffix("_total").unwrap_or(counter))
}

/// Name prometheus-adapter gives the p95 of a histogram.
pub fn p95_metric_name(histogram: &str) -> String {
    format!("{histogram}_p95")
}

/// The alphabet Kubernetes draws generated name suffixes from (no vowels, no look-alikes).
const SUFFIX_CHARS: &str = "[bcdfghjklmnpqrstvwxz2456789]";

/// Matches the pods of a Deployment (`name-<rs hash>-<pod hash>`) or StatefulSet (`name-N`),
/// and not those of another workload whose name merely starts the same way.
pub fn pod_regex(target: &Target) -> String {
    match target.kind.as_str() {
        "StatefulSet" => format!("{}-[0-9]+", target.name),
        _ => format!("{}-{SUFFIX_CHARS}{{1,10}}-{SUFFIX_CHARS}{{5}}", target.name),
    }
}

fn workload_matchers(inputs: &Inputs, target: &Target) -> String {
    format!("namespace=\"{}\",pod=~\"{}\"", inputs.namespace(), pod_regex(target))
}

/// KEDA's QPS query: the workload's total rate; KEDA divides by the replica count (AverageValue).
pub fn keda_qps_query(inputs: &Inputs, target: &Target, counter: &str, window: &str) -> String {
    format!("sum(rate({counter}{{{}}}[{window}]))", workload_matchers(inputs, target))
}

/// KEDA's latency query: the workload's p95 across its pods. Without traffic the quantile is NaN;
/// `>= 0` turns that into an empty result, which KEDA's default `ignoreNullValues` reads as 0
/// (no `or vector(0)`: that would also hide metrics that are missing altogether).
pub fn keda_p95_query(inputs: &Inputs, target: &Target, histogram: &str, window: &str) -> String {
    format!(
        "histogram_quantile({QUANTILE}, sum(rate({histogram}_bucket{{{}}}[{window}])) by (le)) >= 0",
        workload_matchers(inputs, target)
    )
}

pub fn recording_rules(inputs: &Inputs) -> Rendered {
    let (rate_window, latency_window) = windows(inputs);
    let mut rules = Vec::new();
    if let Some(m) = &inputs.server.requests {
        let base = m.name.strip_suffix("_total").unwrap_or(&m.name);
        rules.push(json!({
            "record": format!("namespace_pod:{base}:rate{rate_window}"),
            "expr": format!("sum by (namespace, pod) (rate({}[{rate_window}]))", m.name),
        }));
    }
    if let Some(d) = &inputs.server.duration {
        rules.push(json!({
            "record": format!("namespace_pod:{}:p95_{latency_window}", d.name),
            "expr": format!("histogram_quantile({QUANTILE}, sum by (namespace, pod, le) (rate({}_bucket[{latency_window}])))", d.name),
        }));
    }
    Rendered {
        file: "recording-rules.yaml",
        comment: "Prometheus recording rules: per-pod QPS and p95 (rule file; wrap in a PrometheusRule for the operator).\npromtool check rules recording-rules.yaml".into(),
        documents: vec![json!({"groups": [{"name": format!("metricpact-{}", inputs.server.contract.name), "rules": rules}]})],
    }
}

/// prometheus-adapter's per-pod QPS rule and p95 rule, as `(seriesQuery, name.matches, name.as, metricsQuery)`.
pub fn adapter_rule_values(inputs: &Inputs) -> Vec<Value> {
    let (rate_window, latency_window) = windows(inputs);
    let resources = json!({"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}});
    let mut rules = Vec::new();
    if let Some(m) = &inputs.server.requests {
        rules.push(json!({
            "seriesQuery": format!("{}{{namespace!=\"\",pod!=\"\"}}", m.name),
            "resources": resources,
            "name": {"matches": "^(.*)_total$", "as": "${1}_per_second"},
            "metricsQuery": format!("sum(rate(<<.Series>>{{<<.LabelMatchers>>}}[{rate_window}])) by (<<.GroupBy>>)"),
        }));
    }
    if let Some(d) = &inputs.server.duration {
        rules.push(json!({
            "seriesQuery": format!("{}_bucket{{namespace!=\"\",pod!=\"\"}}", d.name),
            "resources": resources,
            "name": {"matches": "^(.*)_bucket$", "as": "${1}_p95"},
            "metricsQuery": format!(
                "histogram_quantile({QUANTILE}, sum(rate(<<.Series>>{{<<.LabelMatchers>>}}[{latency_window}])) by (le, <<.GroupBy>>))"
            ),
        }));
    }
    rules
}

pub fn adapter_rules(inputs: &Inputs) -> Rendered {
    Rendered {
        file: "prometheus-adapter-rules.yaml",
        comment: "prometheus-adapter rules (config.yaml `rules:`; Helm: rules.custom) serving per-pod QPS and p95\non custom.metrics.k8s.io. Verify: kubectl get --raw \"/apis/custom.metrics.k8s.io/v1beta1/namespaces/NS/pods/*/METRIC\"".into(),
        documents: vec![json!({"rules": adapter_rule_values(inputs)})],
    }
}

fn behavior(a: &Autoscaling) -> Value {
    let rules = |r: &ScalingRules| {
        json!({
            "stabilizationWindowSeconds": r.stabilization_window_seconds,
            "selectPolicy": r.select_policy,
            "policies": r.policies.iter().map(|(kind, value, period)| json!({"type": kind, "value": value, "periodSeconds": period})).collect::<Vec<_>>(),
        })
    };
    json!({"scaleUp": rules(&a.scale_up), "scaleDown": rules(&a.scale_down)})
}

fn scale_target(target: &Target) -> Value {
    json!({"apiVersion": "apps/v1", "kind": target.kind, "name": target.name})
}

/// Kubernetes quantity for a target value (milli-units when fractional).
pub fn quantity(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{}", value as i64)
    } else {
        format!("{}m", (value * 1000.0).round() as i64)
    }
}

pub fn hpa(inputs: &Inputs) -> Rendered {
    let (Some(target), Some(a)) = (&inputs.target, &inputs.deployment.autoscaling) else {
        unreachable!("render() only asks for an HPA with a target and an autoscaling section")
    };
    let mut metrics = Vec::new();
    if let (Some(qps), Some(m)) = (a.qps_per_pod, &inputs.server.requests) {
        metrics.push(json!({"type": "Pods", "pods": {
            "metric": {"name": qps_metric_name(&m.name)},
            "target": {"type": "AverageValue", "averageValue": quantity(qps)},
        }}));
    }
    if let (Some(p95), Some(d)) = (a.p95_latency_ms, &inputs.server.duration) {
        let in_unit = p95 * d.unit.per_second() / 1000.0;
        metrics.push(json!({"type": "Pods", "pods": {
            "metric": {"name": p95_metric_name(&d.name)},
            "target": {"type": "AverageValue", "averageValue": quantity(in_unit)},
        }}));
    }
    Rendered {
        file: "hpa.yaml",
        comment: "HorizontalPodAutoscaler on the prometheus-adapter metrics (use this or keda-scaledobject.yaml).\nkubectl apply -f hpa.yaml; kubectl describe hpa".into(),
        documents: vec![json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": inputs.metadata(&inputs.object_name()),
            "spec": {
                "scaleTargetRef": scale_target(target),
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": metrics,
                "behavior": behavior(a),
            },
        })],
    }
}

pub fn keda(inputs: &Inputs) -> Rendered {
    let (Some(target), Some(a)) = (&inputs.target, &inputs.deployment.autoscaling) else {
        unreachable!("render() only asks for a ScaledObject with a target and an autoscaling section")
    };
    let server_address = inputs.prometheus_url.clone().unwrap_or_else(|| {
        if a.prometheus_url.is_empty() { DEFAULT_PROMETHEUS_URL.to_string() } else { a.prometheus_url.clone() }
    });
    let mut triggers = Vec::new();
    if let (Some(qps), Some(m)) = (a.qps_per_pod, &inputs.server.requests) {
        triggers.push(json!({
            "type": "prometheus",
            "name": "qps-per-pod",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": server_address,
                "query": keda_qps_query(inputs, target, &m.name, &a.rate_window),
                "threshold": quantity(qps),
            },
        }));
    }
    if let (Some(p95), Some(d)) = (a.p95_latency_ms, &inputs.server.duration) {
        let in_unit = p95 * d.unit.per_second() / 1000.0;
        triggers.push(json!({
            "type": "prometheus",
            "name": "p95-latency",
            "metricType": "Value",
            "metadata": {
                "serverAddress": server_address,
                "query": keda_p95_query(inputs, target, &d.name, &a.latency_window),
                "threshold": quantity(in_unit),
            },
        }));
    }
    Rendered {
        file: "keda-scaledobject.yaml",
        comment: "KEDA ScaledObject with Prometheus triggers (use this or hpa.yaml, not both).\nkubectl apply -f keda-scaledobject.yaml; kubectl get hpa keda-hpa-<name>".into(),
        documents: vec![json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": inputs.metadata(&inputs.object_name()),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": target.kind, "name": target.name},
                "minReplicaCount": a.min_replicas,
                "maxReplicaCount": a.max_replicas,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(a)}},
                "triggers": triggers,
            },
        })],
    }
}
