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

use super::istio::{scrape_sidecar_value, SCRAPE_SIDECAR_LABEL};
use crate::contract::deploy::HistogramMode;
use super::{Inputs, Rendered, MESH_NAMESPACE};

/// The sidecar's Prometheus endpoint, as Istio's injection template declares it on the
/// istio-proxy container (`containerPort: 15090`, `name: http-envoy-prom`).
pub const SIDECAR_STATS_PORT_NAME: &str = "http-envoy-prom";
pub const SIDECAR_STATS_PATH: &str = "/stats/prometheus";
/// Ports whose scrape already holds the sidecar's stats: istio-agent's merged endpoint and
/// Envoy's own.
const SIDECAR_SCRAPE_PORTS: &str = "15020|15090";
/// Scrape interval of the rendered PodMonitor and scrape jobs (Istio's envoy-stats-monitor and
/// sample Prometheus use the same). Set on the jobs too, not left to the global interval: the
/// rendered queries' 1m rate windows need two samples, and Helm's `prometheus` chart scrapes every
/// 1m by default, where they would read empty (and the autoscaler 0). The pods' own
/// annotation-driven job still scrapes at the global interval.
pub const SCRAPE_INTERVAL: &str = "15s";
/// Name of the rendered scrape job (one per Prometheus: every render writes the same job).
pub const SIDECAR_JOB: &str = "metricpact-sidecars";

/// Prometheus' `__meta_kubernetes_pod_label_*` name of a pod label (non-alphanumerics to `_`).
fn meta_label(prefix: &str, name: &str) -> String {
    let sanitized: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{prefix}{sanitized}")
}

/// The query parameter with which Envoy's admin `/stats/prometheus` serves native histograms
/// (protobuf only: in text it is a 400).
pub const NATIVE_PARAMS: (&str, &str) = ("histogram_buckets", "prometheusnative");
/// And the one that lets it keep its finest resolution: Envoy lowers a native histogram's
/// resolution until it fits 20 buckets by default, which put a long-tailed p95 6-10 % off
/// (`make fidelity`); 160 (the OpenTelemetry SDKs' default for exponential histograms) keeps
/// schema 4 (buckets 4.4 % wide) over about ten octaves of latency.
pub const NATIVE_MAX_BUCKETS: (&str, &str) = ("native_histogram_max_buckets", "160");

fn native_params() -> Value {
    json!({NATIVE_PARAMS.0: [NATIVE_PARAMS.1], NATIVE_MAX_BUCKETS.0: [NATIVE_MAX_BUCKETS.1]})
}
/// Names of the rendered jobs.
pub const NATIVE_SIDECAR_JOB: &str = "metricpact-sidecars-native";

/// The relabeling every sidecar-stats job starts with: the labelled pods' :15090, never a pod
/// already scraped through istio-agent's :15020 or with prometheus.io/port on 15090.
fn sidecar_target_rules(scrape_sidecar: &str) -> Vec<Value> {
    vec![
        json!({"action": "keep", "source_labels": [meta_label("__meta_kubernetes_pod_label_", SCRAPE_SIDECAR_LABEL)], "regex": scrape_sidecar}),
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": SIDECAR_STATS_PORT_NAME}),
        json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"], "regex": SIDECAR_SCRAPE_PORTS}),
        json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "false"}),
    ]
}

/// The target labels of Istio's sample `kubernetes-pods` job, so the series look alike.
fn kubernetes_pods_target_labels() -> Vec<Value> {
    vec![
        json!({"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"}),
        json!({"action": "replace", "source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
        json!({"action": "replace", "source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}),
        json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed|Completed"}),
        json!({"action": "replace", "source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"}),
    ]
}

fn sidecar_job(name: &str, rules: Vec<Value>) -> Value {
    json!({
        "job_name": name,
        "scrape_interval": SCRAPE_INTERVAL,
        "honor_labels": true,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "metrics_path": SIDECAR_STATS_PATH,
        "relabel_configs": rules,
    })
}

/// Asks Envoy for protobuf with native histograms (Prometheus >= 3.8: `scrape_native_histograms`
/// puts PrometheusProto first in the Accept header; 2.40-3.7: the native-histograms flag).
fn natively(mut job: Value) -> Value {
    job["params"] = native_params();
    job["scrape_native_histograms"] = json!(true);
    job
}

/// A keep rule for the duration histograms of the contract (both sides), by metric name.
fn duration_names_regex(inputs: &Inputs) -> String {
    let mut names: Vec<String> = inputs.server.duration_names().into_iter().map(str::to_string).collect();
    if let Some(client) = &inputs.deployment.client {
        names.extend(client.duration_names().into_iter().map(str::to_string));
    }
    names.join("|")
}

/// The `metricpact-sidecars` job for an annotation-driven Prometheus (Istio's sample
/// `kubernetes-pods` job): the same target labels as that job, for the sidecar's :15090 as text.
/// Every render writes it the same: one per Prometheus.
pub fn sidecar_scrape_job() -> Value {
    let mut rules = sidecar_target_rules("true|both");
    rules.extend(kubernetes_pods_target_labels());
    sidecar_job(SIDECAR_JOB, rules)
}

/// The jobs `prometheus-scrape-config.yaml` holds for this render.
pub fn sidecar_scrape_jobs(inputs: &Inputs) -> Vec<Value> {
    match inputs.deployment.histogram {
        HistogramMode::Classic => vec![sidecar_scrape_job()],
        HistogramMode::Native => {
            // One protobuf scrape: the traffic metrics and the native histograms together.
            let mut rules = sidecar_target_rules("native");
            rules.extend(kubernetes_pods_target_labels());
            vec![sidecar_scrape_job(), natively(sidecar_job(NATIVE_SIDECAR_JOB, rules))]
        }
        HistogramMode::Both => {
            // The text scrape keeps everything classic; a second scrape of this workload's pods
            // takes only its duration histograms, as native ones (anything more would count the
            // counters twice).
            let mut rules = sidecar_target_rules("both");
            rules.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_namespace"], "regex": inputs.namespace()}));
            for (k, v) in &inputs.selector {
                rules.push(json!({"action": "keep", "source_labels": [meta_label("__meta_kubernetes_pod_label_", k)], "regex": v.replace('.', "\\.")}));
            }
            rules.extend(kubernetes_pods_target_labels());
            let mut job = natively(sidecar_job(&format!("{NATIVE_SIDECAR_JOB}-{}", inputs.object_name()), rules));
            job["metric_relabel_configs"] = json!([{"action": "keep", "source_labels": ["__name__"], "regex": duration_names_regex(inputs)}]);
            vec![sidecar_scrape_job(), job]
        }
    }
}

/// What a native-histogram scrape needs from Prometheus, for the comments.
pub const NATIVE_PROMETHEUS: &str = "Native histograms: Prometheus >= 3.8 (scrape_native_histograms, as rendered); on 2.40-3.7 drop that key\n\
     and start Prometheus with --enable-feature=native-histograms. Every histogram of that scrape becomes native,\n\
     Envoy's own included (no envoy_*_bucket series for these pods).";

pub fn prometheus_scrape_config(inputs: &Inputs) -> Option<Rendered> {
    if !inputs.unmerged() {
        return None;
    }
    let native = if inputs.deployment.histogram.native() { format!("\n{NATIVE_PROMETHEUS}") } else { String::new() };
    Some(Rendered {
        file: "prometheus-scrape-config.yaml",
        comment: format!(
            "For Istio's sample Prometheus (or any Prometheus with the annotation-driven kubernetes-pods job): with\n\
             metrics merging off, kubernetes-pods scrapes what the pods' prometheus.io/* annotations name (the app's\n\
             metrics port), and these jobs scrape the sidecar's own stats (:15090, {SIDECAR_STATS_PORT_NAME}) of the pods\n\
             labelled {SCRAPE_SIDECAR_LABEL}. Add each job once per Prometheus (the {SIDECAR_JOB} job is the same in\n\
             every render), to prometheus.yml's scrape_configs (kubectl -n istio-system edit configmap prometheus, key\n\
             prometheus.yml; Helm chart `prometheus`: extraScrapeConfigs, or from chart 28 (Istio >= 1.29's sample) a new\n\
             key under scrapeConfigs). Prometheus Operator users: podmonitor.yaml instead.{native}"
        ),
        documents: vec![json!({"scrape_configs": sidecar_scrape_jobs(inputs)})],
    })
}

/// The PodMonitor for Prometheus Operator: the sidecar's stats and the app's (rewritten) metrics
/// of the workload's pods.
pub fn pod_monitor(inputs: &Inputs) -> Option<Rendered> {
    if !inputs.unmerged() {
        return None;
    }
    let mode = inputs.deployment.histogram;
    let mut match_labels: BTreeMap<String, String> = inputs.selector.clone();
    match_labels.insert(SCRAPE_SIDECAR_LABEL.into(), scrape_sidecar_value(mode).into());
    let guard = json!([{
        "action": "drop",
        "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"],
        "regex": SIDECAR_SCRAPE_PORTS,
    }]);
    // Istio's monitor scrapes every 15 s too; the operator's default (30 s) would leave a 1m rate
    // window two samples, and one missed scrape would drop a pod from the sum.
    let sidecar = json!({"port": SIDECAR_STATS_PORT_NAME, "path": SIDECAR_STATS_PATH, "interval": SCRAPE_INTERVAL, "relabelings": guard});
    let mut native = sidecar.clone();
    native["params"] = native_params();
    let mut endpoints = match mode {
        HistogramMode::Classic => vec![sidecar],
        HistogramMode::Native => vec![native],
        HistogramMode::Both => {
            native["metricRelabelings"] = json!([{"action": "keep", "sourceLabels": ["__name__"], "regex": duration_names_regex(inputs)}]);
            vec![sidecar, native]
        }
    };
    match (inputs.deployment.metrics_port, &inputs.server.exposition) {
        (Some(port), Some(exposition)) => {
            // By number: the app's port need not be named; it must be a declared containerPort.
            endpoints.push(json!({"portNumber": port, "path": exposition.paths.first().cloned().unwrap_or_default(), "interval": SCRAPE_INTERVAL}));
        }
        (_, None) => {
            // Native histograms alone turned merging off: the app's own metrics, which istio-agent
            // merged before, are scraped where its prometheus.io annotations point (through the
            // sidecar, untouched), as Istio's monitor does it -- one target per pod, istio-proxy's.
            endpoints.push(json!({"interval": SCRAPE_INTERVAL, "relabelings": app_by_annotations()}));
        }
        (None, Some(_)) => {}
    }
    let mut spec = json!({"selector": {"matchLabels": match_labels}, "podMetricsEndpoints": endpoints});
    if mode.native() {
        spec["scrapeNativeHistograms"] = json!(true);
    }
    if inputs.namespace() == MESH_NAMESPACE && inputs.namespace.is_none() {
        // A mesh-wide render lives in istio-system and selects pods everywhere.
        spec["namespaceSelector"] = json!({"any": true});
    }
    let mut metadata = inputs.metadata(&inputs.object_name());
    add_labels(&mut metadata, &inputs.monitor_labels);
    let native = if mode.native() { format!("\n{}", NATIVE_PROMETHEUS.replace("scrape_native_histograms", "scrapeNativeHistograms")) } else { String::new() };
    Some(Rendered {
        file: "podmonitor.yaml",
        comment: format!(
            "For Prometheus Operator (kube-prometheus-stack) with Istio's envoy-stats-monitor: with metrics merging\n\
             off, this PodMonitor scrapes the sidecar's stats ({SIDECAR_STATS_PORT_NAME}){} of the workload's pods; the\n\
             pods carry istio-prometheus-ignore, so Istio's monitor skips them. Needs the PodMonitor CRD of Prometheus\n\
             Operator >= 0.79 (portNumber; Helm does not upgrade CRDs: kubectl get crd podmonitors.monitoring.coreos.com\n\
             -o jsonpath='{{.metadata.annotations.operator\\.prometheus\\.io/version}}'). Its labels must match your\n\
             Prometheus' podMonitorSelector (kubectl get prometheus -A -o jsonpath='{{..podMonitorSelector}}';\n\
             render --monitor-label KEY=VALUE).{native}\n\
             kubectl apply -f podmonitor.yaml  (instead of prometheus-scrape-config.yaml)",
            inputs.deployment.metrics_port.filter(|_| inputs.server.exposition.is_some()).map_or(String::new(), |p| format!(" and the app's metrics (port {p})"))
        ),
        documents: vec![json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": metadata,
            "spec": spec,
        })],
    })
}

/// PodMonitor relabelings scraping the app where its `prometheus.io/{scrape,port,path}`
/// annotations say, modelled on Istio's envoy-stats-monitor (one target per pod: keep the
/// istio-proxy container's, then point its address at the annotated port).
fn app_by_annotations() -> Value {
    json!([
        {"action": "keep", "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true"},
        {"action": "keep", "sourceLabels": ["__meta_kubernetes_pod_container_name"], "regex": "istio-proxy"},
        {"action": "drop", "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"], "regex": format!("|{SIDECAR_SCRAPE_PORTS}")},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_port", "__meta_kubernetes_pod_ip"],
         "regex": "(\\d+);(([A-Fa-f0-9]{1,4}::?){1,7}[A-Fa-f0-9]{1,4})", "replacement": "[$2]:$1", "targetLabel": "__address__"},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_port", "__meta_kubernetes_pod_ip"],
         "regex": "(\\d+);((([0-9]+?)(\\.|$)){4})", "replacement": "$2:$1", "targetLabel": "__address__"},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "regex": "(.+)", "targetLabel": "__metrics_path__"},
    ])
}

/// Adds `labels` to an object's `metadata.labels`.
pub fn add_labels(metadata: &mut Value, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        metadata["labels"][k] = json!(v);
    }
}
