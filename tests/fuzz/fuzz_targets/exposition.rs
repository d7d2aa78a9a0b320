//! The exposition rewriter (Prometheus text 0.0.4 and OpenMetrics 1.0) on arbitrary bodies.
//!
//! Input: byte 0 picks the contract (identity, inject-only, renames, label drops with summing,
//! keep/drop/require, the `exposition` section of a checked-in contract, or migrations), byte 1 how the body
//! is announced, the rest is the body. Properties:
//! - the rewriter never panics;
//! - a rewritten body is never larger than `max_body_bytes`;
//! - a rewritten body parses: fed back through an identity rewriter in its own format it is
//!   accepted and comes back byte for byte (the rewriter writes nothing it would not copy);
//! - with the identity contract and no format conversion, the output is the input, byte for
//!   byte, unless a line is written in a way the rewriter normalizes (see [`canonical`]);
//! - the policy, as the filter judges every rewritten scrape with every rule on, reads every
//!   rewritten body (the filter would log a scrape it cannot judge) and never panics.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metricpact::config::ExpositionSpec;
use serde_json::{json, Value};
use metricpact::exposition::{Format, Rewriter, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

const MAX_BODY: u32 = 1 << 20;

fn node(key: &str, _field: Option<&str>) -> Option<Vec<u8>> {
    match key {
        // Untrusted-looking metadata: quotes, separators and non-ASCII must come out escaped.
        "NAME" => Some(b"cart-7d9f8b6c5-x2x8k\"\\;.;=.=\n\xc3\xa9".to_vec()),
        "NAMESPACE" => Some(b"shop".to_vec()),
        "WORKLOAD_NAME" => Some(Vec::new()),
        _ => None,
    }
}

fn inject(name: &str, source: Value, default: &str, overwrite: bool) -> Value {
    json!({"name": name, "source": source, "default": default, "overwrite": overwrite})
}

fn rename(kind: &str, from: &str, to: &str) -> Value {
    json!({"match": {"kind": kind, "value": from}, "to": to})
}

/// An exposition spec from its JSON fields (as the filter reads it), over the defaults.
fn spec(fields: Value) -> ExpositionSpec {
    let mut spec = json!({"paths": ["/metrics"], "max_body_bytes": MAX_BODY});
    for (k, v) in fields.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(spec).expect("valid spec")
}

fn specs() -> Vec<ExpositionSpec> {
    let node_src = |key: &str| json!({"kind": "node", "key": key});
    let identity = spec(json!({}));
    let inject_only = spec(json!({
        "inject_labels": [
            inject("k8s_pod_name", node_src("NAME"), "", true),
            inject("k8s_namespace_name", node_src("NAMESPACE"), "", false),
            inject("service_name", node_src("WORKLOAD_NAME"), "svc", false),
            inject("le", json!({"kind": "constant", "value": "x"}), "", false),
            inject("missing", node_src("NOPE"), "", true),
        ],
    }));
    let renames = spec(json!({
        "rename_metrics": [
            rename("exact", "request_count", "http_requests_total"),
            rename("exact", "a_total", "b_total"),
            rename("exact", "a", "b"),
            rename("regex", "(.*)_ms", "${1}_milliseconds"),
            rename("regex", "x(.*)", "y$1"),
        ],
        "rename_labels": [
            {"from": "status_code", "to": "code"},
            {"from": "method", "to": "http_request_method"},
            {"from": "a", "to": "b"},
        ],
    }));
    let drops = spec(json!({
        "drop_labels": [
            {"label": "pid"},
            {"label": "a"},
            {"label": "instance", "metrics": [".*_total", "h.*"]},
        ],
        "map_values": [
            {"label": "status", "values": {"OK": "200", "200": "200", "q": "\"\\\n"}},
            {"label": "route", "regex": "(.*)/:([a-z]+)", "to": "$1/{$2}"},
            {"label": "b", "regex": ".*", "to": "same"},
        ],
        "drop_series": [{"label": "path", "regex": "/internal.*"}],
        "inject_labels": [inject("k8s_pod_name", json!({"kind": "constant", "value": "p"}), "", true)],
    }));
    let filters = spec(json!({
        "keep_metrics": ["[a-m].*", "x_.*"],
        "drop_metrics": ["go_.*", "a"],
        "require_metrics": ["b_total", "c", "x_info"],
    }));
    let mut all = vec![identity, inject_only, renames, drops, filters];
    for (path, text) in common::CONTRACTS {
        if let Some(spec) = common::compile(path, text).exposition {
            all.push(spec);
        }
    }
    // Last, so the checked-in seeds keep their contracts: migrations (a renamed family and
    // labels, one renamed twice) in families that are streamed and in families held for a drop.
    let migration = |kind: &str, old: &str, new: &str| {
        json!({"kind": kind, "old": old, "new": new, "sunset": "2100-01-01", "sunset_unix": 4_102_444_800u64})
    };
    all.push(spec(json!({
        "rename_metrics": [rename("exact", "request_count", "http_requests_total"), rename("exact", "c", "d")],
        "rename_labels": [{"from": "status_code", "to": "code"}, {"from": "a", "to": "c"}],
        "drop_labels": [{"label": "pid", "metrics": ["h.*", "http_.*"]}],
        "inject_labels": [inject("k8s_pod_name", node_src("NAME"), "", false)],
        "migrations": [
            migration("metric", "request_count", "http_requests_total"),
            migration("metric", "c_total", "d_total"),
            migration("label", "status_code", "code"),
            migration("label", "b", "c"),
            migration("label", "a", "b"),
        ],
    })));
    all
}

/// Whether every line of `body` is already written the way the rewriter writes the lines it
/// copies, so that an identity rewrite must return the body byte for byte. The rewriter may
/// normalize the others without changing what they mean: empty lines (it drops them in the
/// text format), `{}`, a trailing comma or blanks before `}`, a tab before the value, `#  HELP` or a trailing blank after a HELP name, a
/// TYPE the other format's name for (`untyped`/`unknown`, OpenMetrics-only types in the text
/// format), it ends an OpenMetrics `# EOF` with a newline, and it drops an OpenMetrics `# UNIT`
/// line its family name does not end in (which makes Prometheus refuse the whole scrape).
fn canonical(body: &[u8], format: Format) -> bool {
    let Ok(text) = std::str::from_utf8(body) else { return false };
    (text.is_empty() || text.ends_with('\n'))
        && text.split_inclusive('\n').all(|raw| canonical_line(raw.strip_suffix('\n').unwrap_or(raw), format))
}

fn canonical_line(line: &str, format: Format) -> bool {
    if line.is_empty() {
        return false;
    }
    if let Some(comment) = line.strip_prefix('#') {
        let keyword = comment.trim_start().split(' ').next().unwrap_or("");
        let meta = comment.starts_with([' ', '\t'])
            && (matches!(keyword, "HELP" | "TYPE") || (keyword == "UNIT" && format == Format::OpenMetrics));
        if !meta {
            return true;
        }
        let Some(rest) = comment.strip_prefix(' ').and_then(|c| c.strip_prefix(keyword)).and_then(|c| c.strip_prefix(' ')) else {
            return false;
        };
        let mut parts = rest.splitn(2, ' ');
        let name = parts.next().unwrap_or("");
        let Some(value) = parts.next() else { return true };
        return match keyword {
            "TYPE" => {
                let types: &[&str] = match format {
                    Format::Text => &["counter", "gauge", "histogram", "summary", "untyped"],
                    Format::OpenMetrics => &["counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"],
                };
                types.contains(&value)
            }
            "UNIT" => !value.is_empty() && (value.trim().is_empty() || name.ends_with(&format!("_{}", value.trim()))),
            _ => !value.is_empty(),
        };
    }
    let Some(open) = line.find(['{', ' ', '\t']) else { return true };
    let mut rest = &line[open..];
    if let Some(labels) = rest.strip_prefix('{') {
        // The label block is copied as written, less a trailing comma or blanks (and `{}`).
        let bytes = labels.as_bytes();
        let (mut i, mut quoted) = (0, false);
        loop {
            let Some(&b) = bytes.get(i) else { return true };
            match (quoted, b) {
                (true, b'\\') => i += 1,
                (_, b'"') => quoted = !quoted,
                (false, b'}') => break,
                _ => {}
            }
            i += 1;
        }
        let inner = &labels[..i];
        if inner.trim_end_matches([' ', ',']).len() != inner.len() || inner.trim().is_empty() {
            return false;
        }
        rest = &labels[i + 1..];
    }
    !rest.starts_with('\t')
}

/// Every policy rule at once, with regexes that match often.
fn policy() -> &'static metricpact::policy::Policy {
    static POLICY: OnceLock<metricpact::policy::Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let rule = |check: Value| json!({"error": true, "check": check});
        let spec = json!({"rules": [
            rule(json!({"rule": "counter-suffix"})), rule(json!({"rule": "base-unit"})),
            rule(json!({"rule": "gauge-type-suffix"})), rule(json!({"rule": "snake-case"})),
            rule(json!({"rule": "name-pattern", "pattern": "[a-z_]+", "metric_type": "counter"})),
            rule(json!({"rule": "forbidden-label", "label": "a"})),
            rule(json!({"rule": "forbidden-value", "label": "a", "pattern": ".*[0-9].*"})),
            rule(json!({"rule": "series-limit", "max": 2})), rule(json!({"rule": "help-required"})),
        ]});
        metricpact::policy::Policy::new(&serde_json::from_value(spec).expect("valid policy")).expect("compiles")
    })
}

fn rewriters() -> &'static Vec<Rewriter> {
    static REWRITERS: OnceLock<Vec<Rewriter>> = OnceLock::new();
    REWRITERS.get_or_init(|| specs().iter().map(|s| Rewriter::new(s, &node, 64).expect("valid spec")).collect())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let rewriters = rewriters();
    let identity = &rewriters[0];
    let index = data[0] as usize % rewriters.len();
    let rw = &rewriters[index];
    let body = &data[2..];
    let result = match data[1] % 6 {
        0 => rw.rewrite(body, None),
        1 => rw.rewrite(body, Some(TEXT_CONTENT_TYPE)),
        2 => rw.rewrite(body, Some(OPENMETRICS_CONTENT_TYPE)),
        3 => rw.rewrite(body, Some("text/plain")),
        4 => rw.rewrite_as(body, Format::Text),
        _ => rw.rewrite_as(body, Format::OpenMetrics),
    };
    let Ok(out) = result else { return };
    assert!(out.body.len() <= rw.max_body_bytes(), "rewritten body over the limit");
    let judged = std::str::from_utf8(&out.body).map_err(|e| e.to_string()).and_then(|b| policy().judge(b, 0));
    assert!(judged.is_ok(), "the policy cannot read a rewritten body: {judged:?}\n--- output\n{}", String::from_utf8_lossy(&out.body));
    let again = match identity.rewrite_as(&out.body, out.format) {
        Ok(again) => again,
        Err(e) => panic!(
            "rewriter {index} wrote a body it cannot read back as {:?}: {e}\n--- input\n{}\n--- output\n{}",
            out.format,
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&out.body)
        ),
    };
    assert!(
        again.body == out.body,
        "rewriter {index}: an identity rewrite of the output changed it\n--- output\n{}\n--- again\n{}",
        String::from_utf8_lossy(&out.body),
        String::from_utf8_lossy(&again.body)
    );
    if index == 0 && out.format == Format::detect(None, body) {
        assert!(
            out.body == body || !canonical(body, out.format),
            "identity rewrite changed the body\n--- input\n{}\n--- output\n{}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&out.body)
        );
    }
});
