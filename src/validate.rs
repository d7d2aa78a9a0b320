//! Semantic validation of a compiled [`PluginConfig`]: the rules the filter enforces before it
//! starts. `check` applies the same predicates to the YAML, with positions.

use std::collections::HashSet;

use crate::config::{MigrationKind, PluginConfig, MAX_LABELS};
use crate::names;

/// Checks everything that does not need regex compilation; returns the first problem.
pub fn plugin_config(config: &PluginConfig) -> Result<(), String> {
    if config.labels.len() > MAX_LABELS {
        return Err(format!("{} labels configured; at most {MAX_LABELS} are supported", config.labels.len()));
    }
    for name in config.metric_names() {
        if !names::is_valid_metric_name(name) {
            return Err(format!("`{name}` is not a valid Prometheus metric name"));
        }
    }
    let mut seen = HashSet::new();
    let tags = config.tag_names();
    for label in &config.labels {
        if !names::is_valid_label_name(&label.name) {
            return Err(format!("`{}` is not a valid Prometheus label name", label.name));
        }
        if !seen.insert(label.name.as_str()) {
            return Err(format!("label `{}` is defined twice", label.name));
        }
        if label.sources.is_empty() {
            return Err(format!("label `{}` has no source", label.name));
        }
        if let Some(reason) = label_name_conflict(&label.name, &tags) {
            return Err(reason);
        }
    }
    if let Some(active) = &config.active_requests {
        for name in &active.labels {
            let Some(label) = config.labels.iter().find(|l| &l.name == name) else {
                return Err(format!("active_requests label `{name}` is not one of the contract's labels"));
            };
            if label.sources.iter().any(|s| s.is_response_side()) {
                return Err(format!("active_requests label `{name}` comes from the response, which an in-flight request does not have yet"));
            }
        }
    }
    for migration in &config.migrations {
        let (old, new) = (&migration.old, &migration.new);
        match migration.kind {
            MigrationKind::Metric => {
                let current = [config.requests.as_ref().map(|m| &m.name), config.duration.as_ref().map(|m| &m.name), config.active_requests.as_ref().map(|m| &m.name)];
                if !current.iter().flatten().any(|n| *n == new) {
                    return Err(format!("migration of `{old}`: `{new}` is not one of the contract's traffic metrics"));
                }
                if current.iter().flatten().any(|n| *n == old) {
                    return Err(format!("migration of `{old}`: the old name is still a traffic metric of the contract"));
                }
            }
            MigrationKind::Label => {
                if !config.labels.iter().any(|l| &l.name == new) {
                    return Err(format!("migration of label `{old}`: `{new}` is not one of the contract's labels"));
                }
                if !names::is_valid_label_name(old) {
                    return Err(format!("`{old}` is not a valid Prometheus label name"));
                }
                if !seen.insert(old.as_str()) {
                    return Err(format!("label `{old}` is both a label and a migrated label's old name"));
                }
                if let Some(reason) = label_name_conflict(old, &tags) {
                    return Err(reason);
                }
            }
        }
    }
    if config.max_series == 0 {
        return Err("max_series must be at least 1".into());
    }
    if config.max_value_length == 0 {
        return Err("max_value_length must be at least 1".into());
    }
    Ok(())
}

/// Why a label name cannot be extracted reliably from Envoy stat names, if it cannot.
pub fn label_name_conflict(name: &str, all_tags: &[&str]) -> Option<String> {
    if names::PROMETHEUS_TARGET_LABELS.contains(&name) {
        return Some(format!(
            "label `{name}` collides with the `{name}` target label Prometheus attaches to every scraped series; use a distinct name such as `k8s_{name}_name`"
        ));
    }
    if names::ISTIO_TAG_NAMES.contains(&name) {
        return Some(format!("label `{name}` reuses a tag name Istio's sidecar already extracts; the first extractor wins, so rename it"));
    }
    for other in all_tags {
        if names::tag_shadows(name, other) {
            return Some(format!(
                "label `{name}` is a suffix of `{other}`: Envoy's unanchored tag regex for `{name}` would also match inside `{other}`; rename one of them"
            ));
        }
    }
    None
}
