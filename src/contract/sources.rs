//! Label sources as contracts write them (`request.method`, `node.LABELS.app`, …), and the
//! default label set.

use super::suggest;
use crate::config::Source;

/// The label set used when a contract has no `labels:` section (OTel HTTP server conventions).
pub fn default_labels() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("http_request_method", vec!["request.method"]),
        ("http_route", vec!["request.route"]),
        ("http_response_status_code", vec!["response.status_code"]),
        ("error_type", vec!["response.error_type"]),
        ("url_scheme", vec!["request.scheme"]),
        ("network_protocol_version", vec!["request.protocol"]),
        ("k8s_pod_name", vec!["node.NAME"]),
        ("k8s_namespace_name", vec!["node.NAMESPACE"]),
        ("k8s_workload_name", vec!["node.WORKLOAD_NAME"]),
        (
            "service_name",
            vec![
                "node.LABELS.service.istio.io/canonical-name",
                "node.LABELS.app.kubernetes.io/name",
                "node.LABELS.app",
                "node.WORKLOAD_NAME",
            ],
        ),
    ]
}

/// Parses one source expression (`request.method`, `node.LABELS.app`, …).
pub fn parse_source(text: &str) -> Result<Source, String> {
    let simple = SIMPLE_SOURCES.iter().find(|(name, _)| *name == text).map(|(_, source)| source.clone());
    if let Some(source) = simple {
        return Ok(source);
    }
    if let Some(name) = text.strip_prefix("request.header.") {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !valid {
            return Err(format!(
                "`{name}` is not a valid header name: use lowercase letters, digits and `-` (Envoy lowercases header names)"
            ));
        }
        return Ok(Source::RequestHeader { name: name.to_string() });
    }
    if let Some(rest) = text.strip_prefix("node.") {
        let (key, field) = match rest.split_once('.') {
            Some((key, field)) => (key, Some(field)),
            None => (rest, None),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`{key}` is not a node metadata key (Istio sets e.g. NAME, NAMESPACE, WORKLOAD_NAME, LABELS)"));
        }
        if field == Some("") {
            return Err("empty field after `node.KEY.`".into());
        }
        return Ok(Source::Node { key: key.to_string(), field: field.map(str::to_string) });
    }
    // A misspelt parameterized source keeps its parameter: `request.headers.x-tenant` →
    // `request.header.x-tenant`, `nodes.NAME` → `node.NAME`.
    let parameterized = [("request.header", 2), ("node", 1)].into_iter().find_map(|(prefix, parts)| {
        let mut split = text.splitn(parts + 1, '.');
        let head: Vec<&str> = split.by_ref().take(parts).collect();
        let rest = split.next().filter(|r| !r.is_empty())?;
        suggest::closest(&head.join("."), [prefix]).map(|p| format!("{p}.{rest}"))
    });
    let hint = match parameterized {
        Some(source) => format!("; did you mean `{source}`?"),
        None => suggest::hint(text, SIMPLE_SOURCES.iter().map(|(name, _)| *name)),
    };
    Err(format!(
        "unknown source `{text}`{hint} (sources: request.method, request.route, request.scheme, request.protocol, \
         request.header.NAME, response.status_code, response.status_class, response.error_type, node.KEY, node.KEY.FIELD, \
         and for gRPC requests request.grpc_method, request.grpc_service, response.grpc_status, response.grpc_status_name)"
    ))
}

/// The sources without a parameter.
const SIMPLE_SOURCES: &[(&str, Source)] = &[
    ("request.method", Source::RequestMethod),
    ("request.route", Source::RequestRoute),
    ("request.scheme", Source::RequestScheme),
    ("request.protocol", Source::RequestProtocol),
    ("response.status_code", Source::ResponseStatusCode),
    ("response.status_class", Source::ResponseStatusClass),
    ("response.error_type", Source::ResponseErrorType),
    ("request.grpc_method", Source::RequestGrpcMethod),
    ("request.grpc_service", Source::RequestGrpcService),
    ("response.grpc_status", Source::ResponseGrpcStatus),
    ("response.grpc_status_name", Source::ResponseGrpcStatusName),
];

