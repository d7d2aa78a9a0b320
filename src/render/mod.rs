//! Renders what Istio and the autoscaler need from a compiled contract: the Wasm filter as an
//! EnvoyFilter, a WasmPlugin and a TrafficExtension; the proxy configuration that labels and
//! buckets the metrics; KEDA, prometheus-adapter, HPA and recording rules. Native-only.

pub mod autoscaling;
pub mod istio;
pub mod scrape;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::PluginConfig;
use crate::contract::deploy::{Deployment, Target};

/// Where the sidecar gets `metricpact.wasm` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmSource {
    /// A file mounted into the sidecar (e.g. from a ConfigMap via `sidecar.istio.io/userVolume`).
    File(String),
    /// Downloaded by istio-agent (`https://` or `oci://`) and verified against `sha256`: for
    /// `https://` the module file's sha256, for `oci://` the image *manifest* digest (what
    /// `metricpact package` prints; istio-agent compares it with the digest it resolves).
    Remote { url: String, sha256: String },
}

/// Default mount point of the module in local-file mode.
pub const DEFAULT_WASM_DIR: &str = "/var/local/wasm";
pub const DEFAULT_WASM_FILE: &str = "/var/local/wasm/metricpact.wasm";
/// Root namespace: objects there apply to every sidecar of the mesh.
pub const MESH_NAMESPACE: &str = "istio-system";

/// Everything a render needs: the contract's compiled halves plus command-line choices.
pub struct Inputs<'a> {
    pub server: &'a PluginConfig,
    pub deployment: &'a Deployment,
    pub namespace: Option<String>,
    pub selector: BTreeMap<String, String>,
    pub target: Option<Target>,
    pub wasm: WasmSource,
    pub prometheus_url: Option<String>,
    /// The pod's current `proxy.istio.io/config` (ProxyConfig YAML), kept in the patch.
    pub existing_proxy_config: Option<String>,
    /// Labels of the PodMonitor and PrometheusRule (Prometheus Operator's selectors match them).
    pub monitor_labels: BTreeMap<String, String>,
}

/// The label kube-prometheus-stack's default `podMonitorSelector` / `ruleSelector` match
/// (`release: <Helm release name>`), for its usual release name.
pub const DEFAULT_MONITOR_LABEL: (&str, &str) = ("release", "kube-prometheus-stack");

/// One rendered file: its name in the output directory and its YAML documents.
pub struct Rendered {
    pub file: &'static str,
    pub documents: Vec<Value>,
    /// A leading comment saying how to use it.
    pub comment: String,
}

impl Inputs<'_> {
    /// Namespace of namespaced objects (the workload's, or the mesh root namespace).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(MESH_NAMESPACE)
    }

    /// Whether the pod patch turns metrics merging off: the exposition rewrite needs the app's
    /// scrape to pass the sidecar, native histograms a protobuf scrape of Envoy.
    pub fn unmerged(&self) -> bool {
        self.server.exposition.is_some() || self.deployment.histogram.native()
    }

    /// Base name of rendered objects.
    pub fn object_name(&self) -> String {
        match &self.target {
            Some(t) => format!("metricpact-{}", t.name),
            None => format!("metricpact-{}", self.server.contract.name),
        }
    }

    pub fn metadata(&self, name: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace(),
            "labels": {
                "app.kubernetes.io/name": "metricpact",
                "app.kubernetes.io/managed-by": "metricpact",
            },
            "annotations": {
                "metricpact.io/contract": format!("{} {}", self.server.contract.name, self.server.contract.version),
                "metricpact.io/contract-hash": self.server.contract.hash,
            },
        })
    }
}

/// Renders every file for `inputs`: scrape wiring only when metrics merging is off (exposition
/// rewrite), autoscaling objects only when a target workload is known.
pub fn render(inputs: &Inputs) -> Result<Vec<Rendered>, String> {
    let mut files = vec![
        istio::envoy_filter(inputs),
        istio::wasm_plugin(inputs),
        istio::traffic_extension(inputs),
        istio::pod_annotations(inputs)?,
        istio::mesh_config(inputs),
        istio::istio_operator(inputs),
        autoscaling::recording_rules(inputs),
        autoscaling::prometheus_rule(inputs),
        autoscaling::adapter_rules(inputs),
    ];
    files.extend(istio::peer_authentication(inputs));
    files.extend(scrape::prometheus_scrape_config(inputs));
    files.extend(scrape::pod_monitor(inputs));
    if inputs.target.is_some() && inputs.deployment.autoscaling.is_some() {
        files.push(autoscaling::hpa(inputs));
        files.push(autoscaling::keda(inputs));
    }
    Ok(files)
}

/// YAML text of one rendered file.
pub fn to_yaml(rendered: &Rendered) -> Result<String, String> {
    let mut out = String::new();
    for line in rendered.comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    for (i, doc) in rendered.documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&yaml_text(doc)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// One YAML document. Long strings (queries, JSON) stay on one line: folding them would hurt
/// diffs and reading.
pub fn yaml_text(value: &Value) -> Result<String, String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options).map_err(|e| e.to_string())
}

/// A plugin configuration as the JSON object WasmPlugin/TrafficExtension `pluginConfig` takes.
pub fn plugin_config_object(config: &PluginConfig) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// A plugin configuration as the JSON string the Envoy Wasm filter `configuration` takes.
pub fn plugin_config_string(config: &PluginConfig) -> String {
    crate::contract::compile::to_json(config, false)
}
