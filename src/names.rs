//! Naming rules shared by `check` and the filter: Prometheus metric/label name syntax, names
//! reserved by Prometheus targets and Istio, and the tag-name shapes that break Envoy's
//! unanchored tag-extraction regexes.

/// The value every out-of-vocabulary or over-budget label value collapses to (OTel's `_OTHER`).
pub const OTHER: &str = "_OTHER";

/// Label names the usual `kubernetes-pods` scrape job attaches as target labels: emitting them
/// from the sidecar would override or shadow the target's own identity.
pub const PROMETHEUS_TARGET_LABELS: &[&str] = &["pod", "namespace", "job", "instance", "node"];

/// Tag names Istio's bootstrap already extracts (`tools/packaging/common/envoy_bootstrap.json`
/// and the standard `istio_*` dimensions); the first extractor wins, so reusing one steals it.
pub const ISTIO_TAG_NAMES: &[&str] = &[
    "cluster_name",
    "http_conn_manager_prefix",
    "thread_name",
    "tcp_prefix",
    "response_code",
    "response_code_class",
    "http_conn_manager_listener_prefix",
    "listener_address",
    "mongo_prefix",
    "cache",
    "component",
    "tag",
    "wasm_filter",
    "authz_enforce_result",
    "authz_dry_run_action",
    "authz_dry_run_result",
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Label names of metricpact's own self-metrics; they share the sidecar's tag namespace.
pub const SELF_LABEL_NAMES: &[&str] = &[
    "metricpact_contract_name",
    "metricpact_contract_version",
    "metricpact_contract_hash",
    "metricpact_label",
    "metricpact_metric",
    "metricpact_result",
    "metricpact_rule",
    "metricpact_severity",
];

/// Whether `name` is a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), without the
/// `:` that is reserved for recording rules.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An HTTP method token (RFC 9110 `token`).
pub fn is_http_token(method: &str) -> bool {
    !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `name` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed).
pub fn is_valid_label_name(name: &str) -> bool {
    is_valid_metric_name(name) && !name.starts_with("__")
}

/// If `name` is a suffix of `other` at a position where Envoy's unanchored `(name=\.=(.*?);\.;)`
/// would match inside `other`'s tag, they cannot coexist.
pub fn tag_shadows(name: &str, other: &str) -> bool {
    name != other && other.ends_with(name)
}

/// Whether an OTel-style semantic metric name's unit word matches a duration unit.
pub fn ends_with_unit(name: &str, unit_word: &str) -> bool {
    name.strip_suffix(unit_word)
        .is_some_and(|rest| rest.ends_with('_'))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn metric_names_follow_prometheus_rules() {
        assert!(is_valid_metric_name("http_server_requests_total"));
        assert!(is_valid_metric_name("_private"));
        assert!(!is_valid_metric_name("9lives"));
        assert!(!is_valid_metric_name("http.server"));
        assert!(!is_valid_metric_name("rule:recorded"));
        assert!(!is_valid_metric_name(""));
    }

    #[test]
    fn label_names_reject_reserved_prefix() {
        assert!(is_valid_label_name("http_route"));
        assert!(!is_valid_label_name("__name__"));
        assert!(!is_valid_label_name("k8s-pod"));
    }

    #[test]
    fn suffix_tags_shadow_each_other() {
        assert!(tag_shadows("status", "http_status"));
        assert!(!tag_shadows("http_status", "status"));
        assert!(!tag_shadows("route", "route"));
        assert!(!tag_shadows("metricpact_contract_name", "metricpact_contract_name_x"));
    }

    #[test]
    fn unit_suffix_needs_a_word_boundary() {
        assert!(ends_with_unit("http_server_request_duration_milliseconds", "milliseconds"));
        assert!(!ends_with_unit("xmilliseconds", "milliseconds"));
    }
}
