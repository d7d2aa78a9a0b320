//! Istio objects: the Wasm filter as EnvoyFilter / WasmPlugin / TrafficExtension, and the proxy
//! configuration (`extraStatTags`, histogram buckets) without which Istio flattens every label
//! combination into its own metric name.

use serde_json::{json, Value};

use super::{plugin_config_object, plugin_config_string, Inputs, Rendered, WasmSource, DEFAULT_WASM_DIR};
use crate::contract::deploy::HistogramMode;
use crate::config::PluginConfig;
use crate::envoy_stats::WASM_CUSTOM_PREFIX;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HCM: &str = "envoy.filters.network.http_connection_manager";
/// The EnvoyFilter's anchor: metricpact goes right before it, which is where WasmPlugin and
/// TrafficExtension put a `STATS`-phase plugin (after authn/authz/RBAC, before grpc_stats, fault,
/// CORS, istio.stats and the router: `buildHTTPConnectionManager` in Istio's
/// pilot/pkg/networking/core/listener_builder.go appends grpc_stats unconditionally, on inbound
/// and outbound). So all three deliveries count the same requests: fault-injected aborts and CORS
/// preflights with every label, RBAC denials at the end of the stream (`on_log`).
pub const ANCHOR_FILTER: &str = "envoy.filters.http.grpc_stats";
/// Name of the ConfigMap holding the module in local-file mode.
pub const WASM_CONFIGMAP: &str = "metricpact-wasm";
/// Pod label that `pod-annotations.yaml` sets where it mounts the module. In local-file mode the
/// filter selects only pods carrying it: any other sidecar would fail to load the file and
/// reject the whole listener update, `FAIL_OPEN` notwithstanding.
pub const MOUNTED_LABEL: (&str, &str) = ("metricpact.io/wasm", "mounted");

/// The pod labels the Istio objects select: the workload's, plus the mount marker in file mode.
pub fn selector(inputs: &Inputs) -> std::collections::BTreeMap<String, String> {
    let mut selector = inputs.selector.clone();
    if let WasmSource::File(_) = inputs.wasm {
        selector.insert(MOUNTED_LABEL.0.to_string(), MOUNTED_LABEL.1.to_string());
    }
    selector
}

/// The sides a contract measures: (filter name, Istio context / match mode, plugin config).
fn sides<'a>(inputs: &'a Inputs) -> Vec<(&'static str, &'static str, &'static str, &'a PluginConfig)> {
    let mut sides = vec![("metricpact", "SIDECAR_INBOUND", "SERVER", inputs.server)];
    if let Some(client) = &inputs.deployment.client {
        sides.push(("metricpact-client", "SIDECAR_OUTBOUND", "CLIENT", client));
    }
    sides
}

/// The Envoy Wasm filter config (the `config` of `envoy.extensions.filters.http.wasm.v3.Wasm`).
fn wasm_config(name: &str, config: &PluginConfig, code: Value) -> Value {
    json!({
        "name": name,
        "root_id": name,
        "failure_policy": "FAIL_OPEN",
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin_config_string(config),
        },
        "vm_config": {
            "vm_id": "metricpact",
            "runtime": "envoy.wasm.runtime.v8",
            "code": code,
        },
    })
}

/// A named Wasm HTTP filter (or ECDS extension) loading `code`.
fn wasm_filter(name: &str, config: &PluginConfig, code: Value) -> Value {
    json!({"name": name, "typed_config": {"@type": WASM_TYPE, "config": wasm_config(name, config, code)}})
}

fn listener_match(context: &str) -> Value {
    json!({
        "context": context,
        "listener": {"filterChain": {"filter": {"name": HCM, "subFilter": {"name": ANCHOR_FILTER}}}},
    })
}

pub fn envoy_filter(inputs: &Inputs) -> Rendered {
    let mut patches = Vec::new();
    for (name, context, _, config) in sides(inputs) {
        match &inputs.wasm {
            WasmSource::File(path) => patches.push(json!({
                "applyTo": "HTTP_FILTER",
                "match": listener_match(context),
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": wasm_filter(name, config, json!({"local": {"filename": path}})),
                },
            })),
            WasmSource::Remote { url, sha256 } => {
                // Remote modules go through ECDS so istio-agent downloads and verifies them.
                patches.push(json!({
                    "applyTo": "EXTENSION_CONFIG",
                    "patch": {
                        "operation": "ADD",
                        "value": wasm_filter(name, config, json!({"remote": {
                            "http_uri": {"uri": url, "cluster": "_", "timeout": "30s"},
                            "sha256": sha256,
                        }})),
                    },
                }));
                patches.push(json!({
                    "applyTo": "HTTP_FILTER",
                    "match": listener_match(context),
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {
                            "name": name,
                            "config_discovery": {
                                "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                                "type_urls": [WASM_TYPE],
                            },
                        },
                    },
                }));
            }
        }
    }
    let mut spec = json!({"configPatches": patches});
    let selector = selector(inputs);
    if !selector.is_empty() {
        spec["workloadSelector"] = json!({"labels": selector});
    }
    Rendered {
        file: "envoyfilter.yaml",
        comment: format!(
            "EnvoyFilter: metricpact on {} sidecar traffic, before {ANCHOR_FILTER} (where WasmPlugin/TrafficExtension\nput a STATS-phase plugin: after RBAC, before fault, CORS and istio.stats).\nkubectl apply -f envoyfilter.yaml  (plus pod-annotations.yaml or mesh-config.yaml for labels and buckets)",
            if inputs.deployment.client.is_some() { "inbound and outbound" } else { "inbound" }
        ),
        documents: vec![json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": inputs.metadata(&inputs.object_name()),
            "spec": spec,
        })],
    }
}

/// `url` (and `sha256`) of WasmPlugin / TrafficExtension.
fn module_reference(wasm: &WasmSource) -> Value {
    match wasm {
        WasmSource::File(path) => json!({"url": format!("file://{path}")}),
        WasmSource::Remote { url, sha256 } => json!({"url": url, "sha256": sha256}),
    }
}

fn extension_fields(config: &PluginConfig, wasm: &WasmSource, name: &str) -> Value {
    let mut fields = module_reference(wasm);
    fields["imagePullPolicy"] = json!("IfNotPresent");
    fields["failStrategy"] = json!("FAIL_OPEN");
    fields["pluginName"] = json!(name);
    fields["pluginConfig"] = plugin_config_object(config);
    fields["type"] = json!("HTTP");
    fields
}

pub fn wasm_plugin(inputs: &Inputs) -> Rendered {
    let documents = sides(inputs)
        .into_iter()
        .map(|(name, _, mode, config)| {
            let mut spec = extension_fields(config, &inputs.wasm, name);
            spec["phase"] = json!("STATS");
            spec["match"] = json!([{"mode": mode}]);
            extension_object(inputs, "WasmPlugin", mode, spec)
        })
        .collect();
    Rendered {
        file: "wasmplugin.yaml",
        comment: "WasmPlugin (Istio <= 1.29): the same filter, delivered by istiod over ECDS.\nkubectl apply -f wasmplugin.yaml  (instead of envoyfilter.yaml, not with it)".into(),
        documents,
    }
}

pub fn traffic_extension(inputs: &Inputs) -> Rendered {
    let documents = sides(inputs)
        .into_iter()
        .map(|(name, _, mode, config)| {
            let spec = json!({
                "phase": "STATS",
                "match": [{"mode": mode}],
                "wasm": extension_fields(config, &inputs.wasm, name),
            });
            extension_object(inputs, "TrafficExtension", mode, spec)
        })
        .collect();
    Rendered {
        file: "trafficextension.yaml",
        comment: "TrafficExtension (Istio >= 1.30, supersedes WasmPlugin).\nkubectl apply -f trafficextension.yaml  (instead of envoyfilter.yaml or wasmplugin.yaml)".into(),
        documents,
    }
}

/// A WasmPlugin or TrafficExtension for one side, selecting the workload's pods.
fn extension_object(inputs: &Inputs, kind: &str, mode: &str, mut spec: Value) -> Value {
    let selector = selector(inputs);
    if !selector.is_empty() {
        spec["selector"] = json!({"matchLabels": selector});
    }
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": kind,
        "metadata": inputs.metadata(&object_name(inputs, mode)),
        "spec": spec,
    })
}

fn object_name(inputs: &Inputs, mode: &str) -> String {
    if mode == "CLIENT" {
        format!("{}-client", inputs.object_name())
    } else {
        inputs.object_name()
    }
}

/// Every tag the sidecar must extract: the contract's labels and metricpact's self-metric labels.
pub fn extra_stat_tags(inputs: &Inputs) -> Vec<String> {
    inputs.server.tag_names().into_iter().map(str::to_string).collect()
}

/// `sidecar.istio.io/statsHistogramBuckets`: bucket bounds per duration histogram, keyed by the
/// stat-name prefix Envoy matches before tag extraction.
pub fn histogram_buckets_annotation(inputs: &Inputs) -> String {
    let mut map = serde_json::Map::new();
    for (_, _, _, config) in sides(inputs) {
        if let Some(d) = &config.duration {
            let bounds: Vec<Value> = d.buckets.iter().map(|b| number(*b)).collect();
            for name in config.duration_names() {
                map.insert(format!("{WASM_CUSTOM_PREFIX}{name}."), Value::Array(bounds.clone()));
            }
        }
    }
    Value::Object(map).to_string()
}

/// Whole numbers print without a fraction (`250`, not `250.0`).
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

/// The `proxy.istio.io/config` annotation value (a ProxyConfig YAML document): the pod's existing
/// ProxyConfig (`--proxy-config`) with metricpact's tags added to its `extraStatTags`, or just
/// those tags. The annotation is one string, so a patch replaces whatever the pod had there; and
/// Istio merges it over `meshConfig.defaultConfig` field by field (`MergeProxyConfig` in
/// pkg/config/mesh/mesh.go), so its `extraStatTags` list replaces the mesh-wide one.
pub fn proxy_config_yaml(inputs: &Inputs) -> Result<String, String> {
    let mut config = match inputs.existing_proxy_config.as_deref().map(str::trim) {
        None | Some("") => serde_json::Map::new(),
        Some(text) => match serde_saphyr::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(Value::Null) => serde_json::Map::new(),
            Ok(other) => return Err(format!("the existing ProxyConfig must be a YAML mapping, found {}", json_kind(&other))),
            Err(e) => return Err(format!("the existing ProxyConfig is not valid YAML: {e}")),
        },
    };
    let mut tags: Vec<Value> = match config.remove("extraStatTags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => tags,
        Some(other) => return Err(format!("the existing ProxyConfig's extraStatTags must be a list, found {}", json_kind(&other))),
    };
    for tag in extra_stat_tags(inputs) {
        if !tags.iter().any(|t| t.as_str() == Some(&tag)) {
            tags.push(Value::String(tag));
        }
    }
    config.insert("extraStatTags".into(), Value::Array(tags));
    super::yaml_text(&Value::Object(config))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Pod label that opts a pod whose metrics merging is off into the rendered sidecar-stats scrape
/// (`prometheus-scrape-config.yaml`, `podmonitor.yaml`): nobody else scrapes its :15090 then.
/// Its value says how: [`scrape_sidecar_value`].
pub const SCRAPE_SIDECAR_LABEL: &str = "metricpact.io/scrape-sidecar";

/// `true`: the sidecar's stats as text; `native`: as protobuf with native histograms (the
/// merged :15020 endpoint only ever asks Envoy for text); `both`: text, plus the duration
/// histogram once more as a native one.
pub fn scrape_sidecar_value(mode: HistogramMode) -> &'static str {
    match mode {
        HistogramMode::Classic => "true",
        HistogramMode::Native => "native",
        HistogramMode::Both => "both",
    }
}
/// Pod label Istio's `envoy-stats-monitor` PodMonitor skips pods by
/// (samples/addons/extras/prometheus-operator.yaml): with merging off it would fetch
/// `APP_PORT/stats/prometheus`, which is the app's, not Envoy's.
pub const ISTIO_MONITOR_IGNORE_LABEL: (&str, &str) = ("istio-prometheus-ignore", "true");

/// The labels the pod-template patch adds: the mount marker (local-file mode) and, when metrics
/// merging is off (exposition rewrite, native histograms), the scrape markers.
pub fn pod_template_labels(inputs: &Inputs) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    if let WasmSource::File(_) = inputs.wasm {
        labels.insert(MOUNTED_LABEL.0.to_string(), MOUNTED_LABEL.1.to_string());
    }
    if inputs.unmerged() {
        labels.insert(SCRAPE_SIDECAR_LABEL.to_string(), scrape_sidecar_value(inputs.deployment.histogram).to_string());
        labels.insert(ISTIO_MONITOR_IGNORE_LABEL.0.to_string(), ISTIO_MONITOR_IGNORE_LABEL.1.to_string());
    }
    labels
}

pub fn pod_annotations(inputs: &Inputs) -> Result<Rendered, String> {
    let mut annotations = serde_json::Map::new();
    annotations.insert("proxy.istio.io/config".into(), json!(proxy_config_yaml(inputs)?));
    annotations.insert("sidecar.istio.io/statsHistogramBuckets".into(), json!(histogram_buckets_annotation(inputs)));
    if let WasmSource::File(_) = &inputs.wasm {
        annotations.insert(
            "sidecar.istio.io/userVolume".into(),
            json!(json!({"metricpact-wasm": {"configMap": {"name": WASM_CONFIGMAP}}}).to_string()),
        );
        annotations.insert(
            "sidecar.istio.io/userVolumeMount".into(),
            json!(json!({"metricpact-wasm": {"mountPath": DEFAULT_WASM_DIR, "readOnly": true}}).to_string()),
        );
    }
    if inputs.unmerged() {
        // The app's own /metrics must reach the sidecar (with merging on, istio-agent scrapes the
        // app over localhost and bypasses Envoy), and native histograms need a protobuf scrape of
        // Envoy (istio-agent's merge asks it for text only). Per pod, never mesh-wide: merging off
        // removes the istio_* metrics of every workload it applies to. The sidecar's own stats
        // are then scraped on :15090 by the rendered scrape job / PodMonitor, which select the
        // scrape-sidecar label.
        annotations.insert("prometheus.istio.io/merge-metrics".into(), json!("false"));
    }
    if let Some(exposition) = &inputs.server.exposition {
        // The prometheus.io annotations point Prometheus at the app's port, through the sidecar,
        // which rewrites the body.
        if let Some(port) = inputs.deployment.metrics_port {
            annotations.insert("prometheus.io/scrape".into(), json!("true"));
            annotations.insert("prometheus.io/port".into(), json!(port.to_string()));
            annotations.insert("prometheus.io/path".into(), json!(exposition.paths.first().cloned().unwrap_or_default()));
        }
    }
    let (kind, target) = match &inputs.target {
        Some(t) => (t.kind.to_ascii_lowercase(), t.name.clone()),
        None => ("deployment".to_string(), "<workload>".to_string()),
    };
    let namespace = inputs.namespace.clone().unwrap_or_else(|| "<namespace>".into());
    let mut template = json!({"metadata": {"annotations": annotations}});
    let labels = pod_template_labels(inputs);
    if !labels.is_empty() {
        template["metadata"]["labels"] = json!(labels);
    }
    let mut adds = Vec::new();
    if matches!(inputs.wasm, WasmSource::File(_)) {
        adds.push("the metricpact.wasm volume and the label that opts the pod into the filter");
    }
    if inputs.server.exposition.is_some() {
        adds.push("metrics merging off with the app's metrics port to scrape (the exposition rewrite) and the\nlabels that route the sidecar's own stats to the rendered scrape job / PodMonitor");
    } else if inputs.unmerged() {
        adds.push("metrics merging off (native histograms need Envoy's stats as protobuf) and the labels that route\nthe sidecar's stats to the rendered scrape job / PodMonitor");
    }
    let adds = if adds.is_empty() { String::new() } else { format!(", plus {}", adds.join(", ")) };
    let existing = if inputs.existing_proxy_config.is_some() {
        "proxy.istio.io/config holds the pod's existing ProxyConfig (--proxy-config) with the tags added."
    } else {
        "proxy.istio.io/config replaces the pod's existing value: if the pod template already has one (e.g.\nholdApplicationUntilProxyStarts), render again with it merged in:\n  kubectl -n NS get KIND NAME -o jsonpath='{.spec.template.metadata.annotations.proxy\\.istio\\.io/config}' > proxy-config.yaml\n  metricpact render ... --proxy-config proxy-config.yaml"
    };
    Ok(Rendered {
        file: "pod-annotations.yaml",
        comment: format!(
            "Pod-template patch: annotations that make Istio extract every label (extraStatTags) and bucket the\nduration histogram{adds}.\n{existing}\nRead at sidecar start: apply, then let the pods restart. (A JSON merge patch, which merges the annotation\nand label maps key by key and, unlike the default strategic merge, also works on a Rollout.)\nkubectl -n {namespace} patch {kind} {target} --type merge --patch-file pod-annotations.yaml"
        ),
        documents: vec![json!({"spec": {"template": template}})],
    })
}

/// PeerAuthentication letting Prometheus' plaintext scrape reach the app's metrics port through
/// the sidecar under STRICT mTLS (the rest of the pod keeps the namespace's mode).
pub fn peer_authentication(inputs: &Inputs) -> Option<Rendered> {
    inputs.server.exposition.as_ref()?;
    let port = inputs.deployment.metrics_port?;
    // Istio accepts port-level mTLS only with a workload selector.
    if inputs.selector.is_empty() {
        return None;
    }
    let spec = json!({
        "selector": {"matchLabels": inputs.selector},
        "portLevelMtls": {port.to_string(): {"mode": "PERMISSIVE"}},
    });
    Some(Rendered {
        file: "peer-authentication.yaml",
        comment: format!("Lets Prometheus scrape the app's metrics port ({port}) in plaintext through the sidecar, which rewrites\nthe exposition; other ports keep the namespace's mTLS mode.\nkubectl apply -f peer-authentication.yaml"),
        documents: vec![json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": inputs.metadata(&format!("{}-metrics", inputs.object_name())),
            "spec": spec,
        })],
    })
}

/// The mesh-wide `meshConfig` part: `defaultConfig.extraStatTags` only. Metrics merging stays on
/// mesh-wide (`enablePrometheusMerge: false` would remove the istio_* metrics of every other
/// workload); the pod patch turns it off for the pods whose exposition is rewritten.
fn mesh_config_value(inputs: &Inputs) -> Value {
    json!({"defaultConfig": {"extraStatTags": extra_stat_tags(inputs)}})
}

const MESH_WIDE_CAVEATS: &str = "Histogram buckets have no mesh-wide ProxyConfig field: keep the sidecar.istio.io/statsHistogramBuckets\nannotation from pod-annotations.yaml. A pod's own proxy.istio.io/config extraStatTags replace this list.";

pub fn mesh_config(inputs: &Inputs) -> Rendered {
    Rendered {
        file: "mesh-config.yaml",
        comment: format!("Mesh-wide alternative to the extraStatTags annotation, as istiod Helm values (Helm installs; for\nistioctl installs use istio-operator.yaml). {MESH_WIDE_CAVEATS}\nhelm upgrade istiod istio/istiod -n istio-system --reuse-values -f mesh-config.yaml"),
        documents: vec![json!({"meshConfig": mesh_config_value(inputs)})],
    }
}

/// The same as an IstioOperator overlay: an istioctl install has no Helm release to upgrade.
pub fn istio_operator(inputs: &Inputs) -> Rendered {
    Rendered {
        file: "istio-operator.yaml",
        comment: format!("Mesh-wide extraStatTags for istioctl installs: an IstioOperator overlay. istioctl install applies its\nprofile plus the files given, so pass the file(s) you installed with first (if one already sets\nmeshConfig.defaultConfig.extraStatTags, add these to it instead: lists are replaced, not merged).\n{MESH_WIDE_CAVEATS}\nistioctl install -f YOUR-ISTIO-OPERATOR.yaml -f istio-operator.yaml"),
        documents: vec![json!({
            "apiVersion": "install.istio.io/v1alpha1",
            "kind": "IstioOperator",
            "spec": {"meshConfig": mesh_config_value(inputs)},
        })],
    }
}
