//! Scrape wiring: who scrapes the sidecar's stats (where the traffic metrics live) and the app's
//! own metrics, exactly once per pod, in the two common Prometheus setups.
//!
//! With metrics merging on (Istio's default, no exposition rewrite) nothing is rendered here: the
//! injector points `prometheus.io/port` at istio-agent's :15020, which serves Envoy's stats merged
//! with the app's scrape, and both Istio's sample Prometheus (`kubernetes-pods` job) and Istio's
//! `envoy-stats-monitor` PodMonitor scrape that. With merging off (needed for the rewrite, since
//! istio-agent would fetch the app over localhost, past Envoy), the pod's `prometheus.io/*`
//! annotations point at the app's metrics port and nobody scrapes the sidecar's :15090 any more:
//! - Istio's sample Prometheus gets one extra job, `metricpact-sidecars`, for :15090 of the pods
//!   the patch labels `metricpact.io/scrape-sidecar`;
//! - Prometheus Operator users get a PodMonitor with two endpoints (sidecar stats, app metrics),
//!   and the pods carry `istio-prometheus-ignore`, which Istio's monitor skips (it would fetch
//!   `APP_PORT/stats/prometheus` otherwise).
//!
//! Both skip pods whose `prometheus.io/port` still names :15020 or :15090: those already get the
//! sidecar's stats from the annotation-driven scrape, and a second scrape would count every
//! traffic series twice.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::istio::SCRAPE_SIDECAR_LABEL;
use super::{Inputs, Rendered, MESH_NAMESPACE};

/// The sidecar's Prometheus endpoint, as Istio's injection template declares it on the
/// istio-proxy container (`containerPort: 15090`, `name: http-envoy-prom`).
pub const SIDECAR_STATS_PORT_NAME: &str = "http-envoy-prom";
pub const SIDECAR_STATS_PATH: &str = "/stats/prometheus";
/// Ports whose scrape already holds the sidecar's stats: istio-agent's merged endpoint and
/// Envoy's own.
const SIDECAR_SCRAPE_PORTS: &str = "15020|15090";
/// Scrape interval of the rendered PodMonitor (Istio's envoy-stats-monitor uses the same); the
/// annotation-driven setups scrape at their global interval (15 s in Istio's sample).
pub const SCRAPE_INTERVAL: &str = "15s";
/// Name of the rendered scrape job (one per Prometheus: every render writes the same job).
pub const SIDECAR_JOB: &str = "metricpact-sidecars";

/// Prometheus' `__meta_kubernetes_pod_label_*` name of a pod label (non-alphanumerics to `_`).
fn meta_label(prefix: &str, name: &str) -> String {
    let sanitized: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{prefix}{sanitized}")
}

/// The `metricpact-sidecars` job for an annotation-driven Prometheus (Istio's sample
/// `kubernetes-pods` job): the same target labels as that job, for the sidecar's :15090.
pub fn sidecar_scrape_job() -> Value {
    let (label, value) = SCRAPE_SIDECAR_LABEL;
    json!({
        "job_name": SIDECAR_JOB,
        "honor_labels": true,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "metrics_path": SIDECAR_STATS_PATH,
        "relabel_configs": [
            {"action": "keep", "source_labels": [meta_label("__meta_kubernetes_pod_label_", label)], "regex": value},
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": SIDECAR_STATS_PORT_NAME},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"], "regex": SIDECAR_SCRAPE_PORTS},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "false"},
            {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
            {"action": "replace", "source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"action": "replace", "source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed|Completed"},
            {"action": "replace", "source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        ],
    })
}

pub fn prometheus_scrape_config(inputs: &Inputs) -> Option<Rendered> {
    inputs.server.exposition.as_ref()?;
    Some(Rendered {
        file: "prometheus-scrape-config.yaml",
        comment: format!(
            "For Istio's sample Prometheus (or any Prometheus with the annotation-driven kubernetes-pods job): with\n\
             metrics merging off, kubernetes-pods scrapes the app's metrics port named by the prometheus.io/*\n\
             annotations, and this job scrapes the sidecar's own stats (:15090, {SIDECAR_STATS_PORT_NAME}) of the pods\n\
             labelled {}={}. Add it once per Prometheus, to prometheus.yml's scrape_configs\n\
             (kubectl -n istio-system edit configmap prometheus, key prometheus.yml; Helm chart `prometheus`:\n\
             extraScrapeConfigs, or from chart 28 (Istio >= 1.29's sample) a new key under scrapeConfigs).\n\
             Prometheus Operator users: podmonitor.yaml instead.",
            SCRAPE_SIDECAR_LABEL.0, SCRAPE_SIDECAR_LABEL.1
        ),
        documents: vec![json!({"scrape_configs": [sidecar_scrape_job()]})],
    })
}

/// The PodMonitor for Prometheus Operator: the sidecar's stats and the app's (rewritten) metrics
/// of the workload's pods.
pub fn pod_monitor(inputs: &Inputs) -> Option<Rendered> {
    let exposition = inputs.server.exposition.as_ref()?;
    let mut match_labels: BTreeMap<String, String> = inputs.selector.clone();
    match_labels.insert(SCRAPE_SIDECAR_LABEL.0.into(), SCRAPE_SIDECAR_LABEL.1.into());
    let guard = json!([{
        "action": "drop",
        "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"],
        "regex": SIDECAR_SCRAPE_PORTS,
    }]);
    // Istio's monitor scrapes every 15 s too; the operator's default (30 s) would leave a 1m rate
    // window two samples, and one missed scrape would drop a pod from the sum.
    let mut endpoints = vec![json!({"port": SIDECAR_STATS_PORT_NAME, "path": SIDECAR_STATS_PATH, "interval": SCRAPE_INTERVAL, "relabelings": guard})];
    if let Some(port) = inputs.deployment.metrics_port {
        // By number: the app's port need not be named; it must be a declared containerPort.
        endpoints.push(json!({"portNumber": port, "path": exposition.paths.first().cloned().unwrap_or_default(), "interval": SCRAPE_INTERVAL}));
    }
    let mut spec = json!({"selector": {"matchLabels": match_labels}, "podMetricsEndpoints": endpoints});
    if inputs.namespace() == MESH_NAMESPACE && inputs.namespace.is_none() {
        // A mesh-wide render lives in istio-system and selects pods everywhere.
        spec["namespaceSelector"] = json!({"any": true});
    }
    let mut metadata = inputs.metadata(&inputs.object_name());
    add_labels(&mut metadata, &inputs.monitor_labels);
    Some(Rendered {
        file: "podmonitor.yaml",
        comment: format!(
            "For Prometheus Operator (kube-prometheus-stack) with Istio's envoy-stats-monitor: with metrics merging\n\
             off, this PodMonitor scrapes the sidecar's stats ({SIDECAR_STATS_PORT_NAME}) and the app's metrics{} of the\n\
             workload's pods; the pods carry istio-prometheus-ignore, so Istio's monitor skips them. Needs the PodMonitor\n\
             CRD of Prometheus Operator >= 0.79 (portNumber; Helm does not upgrade CRDs: kubectl get crd\n\
             podmonitors.monitoring.coreos.com -o jsonpath='{{.metadata.annotations.operator\\.prometheus\\.io/version}}').\n\
             Its labels must match your Prometheus' podMonitorSelector\n\
             (kubectl get prometheus -A -o jsonpath='{{..podMonitorSelector}}'; render --monitor-label KEY=VALUE).\n\
             kubectl apply -f podmonitor.yaml  (instead of prometheus-scrape-config.yaml)",
            inputs.deployment.metrics_port.map_or(String::new(), |p| format!(" (port {p})"))
        ),
        documents: vec![json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": metadata,
            "spec": spec,
        })],
    })
}

/// Adds `labels` to an object's `metadata.labels`.
pub fn add_labels(metadata: &mut Value, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        metadata["labels"][k] = json!(v);
    }
}
