//! Autoscaling objects that read the contract's metrics: Prometheus recording rules,
//! prometheus-adapter rules with the HPA that uses them, and a KEDA ScaledObject.

use serde_json::{json, Value};

use super::scrape::add_labels;
use super::{Inputs, Rendered};
use crate::config::{PluginConfig, Source};
use crate::contract::deploy::{Autoscaling, ScalingRules, Target, DEFAULT_LATENCY_WINDOW, DEFAULT_PROMETHEUS_URL, DEFAULT_RATE_WINDOW};
use crate::telemetry::CONTRACT_INFO_METRIC;

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

/// Matches the pods of a Deployment (`name-<rs hash>-<pod hash>`) or StatefulSet (`name-N`).
/// Only the fallback for contracts without a workload label: Kubernetes cuts a generated name's
/// base at 58 characters, so for Deployment names of about 47 characters or more the pods'
/// names no longer have this shape.
pub fn pod_regex(target: &Target) -> String {
    match target.kind.as_str() {
        "StatefulSet" => format!("{}-[0-9]+", target.name),
        _ => format!("{}-{SUFFIX_CHARS}{{1,10}}-{SUFFIX_CHARS}{{5}}", target.name),
    }
}

/// The contract label that names the pod's workload: one whose only source is Istio's
/// `WORKLOAD_NAME` node metadata (the owning Deployment, StatefulSet or Rollout, whatever its
/// pods are called). The autoscaling queries select a workload's series by it.
pub fn workload_label(config: &PluginConfig) -> Option<&str> {
    config
        .labels
        .iter()
        .find(|l| matches!(l.sources.as_slice(), [Source::Node { key, field: None }] if key == WORKLOAD_NAME_KEY))
        .map(|l| l.name.as_str())
}

/// The contract label that carries `response.error_type` (set on failed requests only): the
/// error-ratio rule counts the series that have it.
pub fn error_label(config: &PluginConfig) -> Option<&str> {
    config.labels.iter().find(|l| l.sources == [Source::ResponseErrorType]).map(|l| l.name.as_str())
}

/// Name of the per-pod error-ratio recording rule.
pub fn error_ratio_record(counter: &str, window: &str) -> String {
    format!("namespace_pod:{}:error_ratio_rate{window}", counter.strip_suffix("_total").unwrap_or(counter))
}

/// The node metadata key Istio's injector fills with the workload's name.
pub const WORKLOAD_NAME_KEY: &str = "WORKLOAD_NAME";

/// PromQL matchers selecting the target workload's series: `namespace` (a target label both
/// Prometheus setups add) and the workload label, else a pod-name regex.
pub fn workload_matchers(inputs: &Inputs, target: &Target) -> String {
    match workload_label(inputs.server) {
        Some(label) => format!("namespace=\"{}\",{label}=\"{}\"", inputs.namespace(), target.name),
        None => format!("namespace=\"{}\",pod=~\"{}\"", inputs.namespace(), pod_regex(target)),
    }
}

/// `0` while the workload's filter reports (its info series exists from the moment it runs),
/// nothing when its metrics are missing altogether: appended with `or` to a query, it turns "no
/// traffic" into 0 and leaves "no data" empty, which the rendered autoscalers treat as an error.
fn zero_while_reporting(matchers: &str) -> String {
    format!("sum({CONTRACT_INFO_METRIC}{{{matchers}}}) * 0")
}

/// The workload's total request rate; KEDA divides it by the replica count (AverageValue).
pub fn qps_query(counter: &str, matchers: &str, window: &str) -> String {
    format!("sum(rate({counter}{{{matchers}}}[{window}])) or {}", zero_while_reporting(matchers))
}

/// The workload-wide p95 (one histogram over all its pods, not an average of per-pod p95s), of
/// the classic `_bucket` series or of the native histogram. Without traffic `histogram_quantile`
/// is NaN: `>= 0` drops it and the info series answers 0.
pub fn p95_query(histogram: &str, native: bool, matchers: &str, window: &str) -> String {
    let quantile = if native {
        format!("histogram_quantile({QUANTILE}, sum(rate({histogram}{{{matchers}}}[{window}])))")
    } else {
        format!("histogram_quantile({QUANTILE}, sum(rate({histogram}_bucket{{{matchers}}}[{window}])) by (le))")
    };
    format!("{quantile} >= 0 or {}", zero_while_reporting(matchers))
}

pub fn keda_qps_query(inputs: &Inputs, target: &Target, counter: &str, window: &str) -> String {
    qps_query(counter, &workload_matchers(inputs, target), window)
}

pub fn keda_p95_query(inputs: &Inputs, target: &Target, histogram: &str, window: &str) -> String {
    p95_query(histogram, inputs.deployment.histogram.queries_native(), &workload_matchers(inputs, target), window)
}

fn recording_rule_groups(inputs: &Inputs) -> Value {
    let (rate_window, latency_window) = windows(inputs);
    let mut rules = Vec::new();
    if let Some(m) = &inputs.server.requests {
        let base = m.name.strip_suffix("_total").unwrap_or(&m.name);
        rules.push(json!({
            "record": format!("namespace_pod:{base}:rate{rate_window}"),
            "expr": format!("sum by (namespace, pod) (rate({}[{rate_window}]))", m.name),
        }));
    }
    if let (Some(m), Some(error)) = (&inputs.server.requests, error_label(inputs.server)) {
        // Failed requests over all requests; `or … * 0` makes a pod with traffic and no
        // failure read 0 rather than nothing (a pod without traffic reads NaN: 0/0).
        let all = format!("sum by (namespace, pod) (rate({}[{rate_window}]))", m.name);
        rules.push(json!({
            "record": error_ratio_record(&m.name, &rate_window),
            "expr": format!(
                "(sum by (namespace, pod) (rate({}{{{error}!=\"\"}}[{rate_window}])) or {all} * 0) / {all}",
                m.name
            ),
        }));
    }
    if let Some(d) = &inputs.server.duration {
        rules.push(json!({
            "record": format!("namespace_pod:{}:p95_{latency_window}", d.name),
            "expr": if inputs.deployment.histogram.queries_native() {
                format!("histogram_quantile({QUANTILE}, sum by (namespace, pod) (rate({}[{latency_window}])))", d.name)
            } else {
                format!("histogram_quantile({QUANTILE}, sum by (namespace, pod, le) (rate({}_bucket[{latency_window}])))", d.name)
            },
        }));
    }
    json!([{"name": format!("metricpact-{}", inputs.server.contract.name), "rules": rules}])
}

pub fn recording_rules(inputs: &Inputs) -> Rendered {
    Rendered {
        file: "recording-rules.yaml",
        comment: "Prometheus recording rules: per-pod QPS, error ratio and p95, as a rule file (Prometheus Operator: prometheus-rule.yaml).\npromtool check rules recording-rules.yaml".into(),
        documents: vec![json!({"groups": recording_rule_groups(inputs)})],
    }
}

/// The same rules as a PrometheusRule, labelled for the operator's `ruleSelector`.
pub fn prometheus_rule(inputs: &Inputs) -> Rendered {
    let mut metadata = inputs.metadata(&inputs.object_name());
    add_labels(&mut metadata, &inputs.monitor_labels);
    Rendered {
        file: "prometheus-rule.yaml",
        comment: "The recording rules as a PrometheusRule for Prometheus Operator (kube-prometheus-stack). Its labels must\nmatch your Prometheus' ruleSelector (kubectl get prometheus -A -o jsonpath='{..ruleSelector}';\nrender --monitor-label KEY=VALUE).\nkubectl apply -f prometheus-rule.yaml  (instead of recording-rules.yaml)".into(),
        documents: vec![json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata,
            "spec": {"groups": recording_rule_groups(inputs)},
        })],
    }
}

/// Every adapter rule discovers its metric from `metricpact_contract_info`, which each pod's
/// filter reports from its start: the metric exists (0 for an idle pod) before the first
/// request, and without waiting for the adapter's next relist once traffic comes. The traffic
/// series a rule reads is named in its query.
fn discovered_from_info(matchers: &str, resources: Value, name: &str, metrics_query: String) -> Value {
    json!({
        "seriesQuery": format!("{CONTRACT_INFO_METRIC}{{{matchers}}}"),
        "resources": resources,
        "name": {"matches": format!("^{CONTRACT_INFO_METRIC}$"), "as": name},
        "metricsQuery": metrics_query,
    })
}

/// prometheus-adapter's per-pod QPS rule (custom metrics, `rules:`): each pod's rate, 0 while
/// its filter reports without traffic.
pub fn adapter_rule_values(inputs: &Inputs) -> Vec<Value> {
    let (rate_window, _) = windows(inputs);
    let mut rules = Vec::new();
    if let Some(m) = &inputs.server.requests {
        rules.push(discovered_from_info(
            "namespace!=\"\",pod!=\"\"",
            json!({"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}),
            &qps_metric_name(&m.name),
            format!(
                "sum(rate({}{{<<.LabelMatchers>>}}[{rate_window}])) by (<<.GroupBy>>) or sum({CONTRACT_INFO_METRIC}{{<<.LabelMatchers>>}}) by (<<.GroupBy>>) * 0",
                m.name
            ),
        ));
    }
    rules
}

/// prometheus-adapter's workload-wide p95 (external metrics, `externalRules:`): the HPA selects the
/// workload with `metric.selector` on the workload label, and the adapter adds the HPA's
/// namespace. The same query as KEDA's p95 trigger, so both autoscalers read one quantity.
pub fn adapter_external_rule_values(inputs: &Inputs) -> Vec<Value> {
    let (_, latency_window) = windows(inputs);
    let (Some(d), Some(label)) = (&inputs.server.duration, workload_label(inputs.server)) else { return Vec::new() };
    vec![discovered_from_info(
        &format!("namespace!=\"\",{label}!=\"\""),
        json!({"overrides": {"namespace": {"resource": "namespace"}}}),
        &p95_metric_name(&d.name),
        p95_query(&d.name, inputs.deployment.histogram.queries_native(), "<<.LabelMatchers>>", &latency_window),
    )]
}

pub fn adapter_rules(inputs: &Inputs) -> Rendered {
    let mut config = json!({"rules": adapter_rule_values(inputs)});
    let external = adapter_external_rule_values(inputs);
    if !external.is_empty() {
        config["externalRules"] = json!(external);
    }
    Rendered {
        file: "prometheus-adapter-rules.yaml",
        comment: "prometheus-adapter rules (config.yaml `rules:` and `externalRules:`; Helm: rules.custom and rules.external):\nper-pod QPS on custom.metrics.k8s.io, the workload-wide p95 on external.metrics.k8s.io. Verify:\nkubectl get --raw \"/apis/custom.metrics.k8s.io/v1beta1/namespaces/NS/pods/*/METRIC\"\nkubectl get --raw \"/apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC?labelSelector=LABEL%3DWORKLOAD\"".into(),
        documents: vec![config],
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
    json!({"apiVersion": target.api_version(), "kind": target.kind, "name": target.name})
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
    let mut comment = String::from("HorizontalPodAutoscaler on the prometheus-adapter metrics (use this or keda-scaledobject.yaml).");
    if let (Some(p95), Some(d)) = (a.p95_latency_ms, &inputs.server.duration) {
        match workload_label(inputs.server) {
            Some(label) => metrics.push(json!({"type": "External", "external": {
                "metric": {"name": p95_metric_name(&d.name), "selector": {"matchLabels": {label: target.name}}},
                "target": {"type": "Value", "value": quantity(p95 * d.unit.per_second() / 1000.0)},
            }})),
            None => comment.push_str(&format!(
                "\nNo p95 metric: the contract has no label from node.{WORKLOAD_NAME_KEY} to select the workload's series by."
            )),
        }
    }
    comment.push_str("\nkubectl apply -f hpa.yaml; kubectl describe hpa");
    Rendered {
        file: "hpa.yaml",
        comment,
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

/// Consecutive failed metric reads after which KEDA applies the fallback.
pub const FALLBACK_FAILURE_THRESHOLD: u32 = 3;

pub fn keda(inputs: &Inputs) -> Rendered {
    let (Some(target), Some(a)) = (&inputs.target, &inputs.deployment.autoscaling) else {
        unreachable!("render() only asks for a ScaledObject with a target and an autoscaling section")
    };
    let server_address = inputs.prometheus_url.clone().unwrap_or_else(|| {
        if a.prometheus_url.is_empty() { DEFAULT_PROMETHEUS_URL.to_string() } else { a.prometheus_url.clone() }
    });
    // An empty result is "no data" (the queries answer 0 for "no traffic"): with
    // ignoreNullValues=false KEDA reports it as an error and, after the failure threshold,
    // applies the fallback, instead of reading 0 and scaling down.
    let trigger = |name: &str, metric_type: &str, query: String, threshold: String| {
        json!({
            "type": "prometheus",
            "name": name,
            "metricType": metric_type,
            "metadata": {
                "serverAddress": server_address,
                "query": query,
                "threshold": threshold,
                "ignoreNullValues": "false",
            },
        })
    };
    let mut triggers = Vec::new();
    if let (Some(qps), Some(m)) = (a.qps_per_pod, &inputs.server.requests) {
        triggers.push(trigger("qps-per-pod", "AverageValue", keda_qps_query(inputs, target, &m.name, &a.rate_window), quantity(qps)));
    }
    if let (Some(p95), Some(d)) = (a.p95_latency_ms, &inputs.server.duration) {
        let in_unit = p95 * d.unit.per_second() / 1000.0;
        triggers.push(trigger("p95-latency", "Value", keda_p95_query(inputs, target, &d.name, &a.latency_window), quantity(in_unit)));
    }
    Rendered {
        file: "keda-scaledobject.yaml",
        comment: format!(
            "KEDA ScaledObject with Prometheus triggers (use this or hpa.yaml, not both). Needs KEDA >= {KEDA_MIN_VERSION}\n\
             (fallback with a Value-type trigger). Missing metrics are an error, not 0: once more than\n\
             {FALLBACK_FAILURE_THRESHOLD} reads in a row failed, KEDA keeps the current replica count (never fewer than {}).\n\
             serverAddress {server_address} must be your Prometheus (contract autoscaling.prometheus_url,\n\
             render --prometheus-url; Istio's sample: http://prometheus.istio-system.svc:9090).\n\
             kubectl apply -f keda-scaledobject.yaml; kubectl get hpa keda-hpa-<name>",
            a.min_replicas
        ),
        documents: vec![json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": inputs.metadata(&inputs.object_name()),
            "spec": {
                "scaleTargetRef": scale_target(target),
                "minReplicaCount": a.min_replicas,
                "maxReplicaCount": a.max_replicas,
                "fallback": {
                    "failureThreshold": FALLBACK_FAILURE_THRESHOLD,
                    "replicas": a.min_replicas,
                    "behavior": "currentReplicasIfHigher",
                },
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(a)}},
                "triggers": triggers,
            },
        })],
    }
}

/// The oldest KEDA release the rendered ScaledObject works with.
pub const KEDA_MIN_VERSION: &str = "2.18";
