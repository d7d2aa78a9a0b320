//! The Envoy bootstrap `stats_config` that makes a contract's metrics come out labelled and
//! correctly bucketed: one Istio-style tag extractor per label, and bucket bounds for the
//! duration histogram. Istio generates the same extractors from `extraStatTags`.

use serde_json::{json, Value};

use crate::config::PluginConfig;

/// Envoy's full-name prefix of Wasm custom metrics.
pub const WASM_CUSTOM_PREFIX: &str = "wasmcustom.";

/// The tag regex Istio renders for an `extraStatTags` entry.
pub fn tag_regex(tag: &str) -> String {
    format!("({tag}=\\.=(.*?);\\.;)")
}

/// `stats_tags` entries for every tag the contract emits.
pub fn stats_tags(config: &PluginConfig) -> Vec<Value> {
    config.tag_names().into_iter().map(|t| json!({"tag_name": t, "regex": tag_regex(t)})).collect()
}

/// `histogram_bucket_settings` for the duration histogram (empty when it is disabled).
pub fn histogram_bucket_settings(config: &PluginConfig) -> Vec<Value> {
    let Some(d) = &config.duration else { return Vec::new() };
    config
        .duration_names()
        .into_iter()
        .map(|name| json!({"match": {"prefix": format!("{WASM_CUSTOM_PREFIX}{name}.")}, "buckets": d.buckets}))
        .collect()
}

/// A complete `stats_config` for a plain Envoy bootstrap.
pub fn stats_config(config: &PluginConfig) -> Value {
    json!({
        "use_all_default_tags": false,
        "stats_tags": stats_tags(config),
        "histogram_bucket_settings": histogram_bucket_settings(config),
    })
}
