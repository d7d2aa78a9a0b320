#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config::*;

fn spec() -> ExpositionSpec {
    ExpositionSpec {
        paths: vec!["/metrics".into()],
        max_body_bytes: 1 << 20,
        keep_metrics: None,
        drop_metrics: vec![],
        drop_series: vec![],
        rename_metrics: vec![],
        rename_labels: vec![],
        map_values: vec![],
        drop_labels: vec![],
        inject_labels: vec![],
        require_metrics: vec![],
    }
}

fn node(key: &str, _field: Option<&str>) -> Option<Vec<u8>> {
    match key {
        "NAME" => Some(b"cart-1".to_vec()),
        "NAMESPACE" => Some(b"shop".to_vec()),
        _ => None,
    }
}

fn rewrite(spec: &ExpositionSpec, input: &str) -> String {
    let rw = Rewriter::new(spec, &node, 128).expect("valid spec");
    let out = rw.rewrite(input.as_bytes(), None).expect("parses");
    String::from_utf8(out.body).unwrap()
}

fn inject(name: &str, source: Source, overwrite: bool) -> Injection {
    Injection { name: name.into(), source, default: String::new(), overwrite }
}

const PROM_CLIENT: &str = "\
# HELP request_count Requests served
# TYPE request_count counter
request_count{status_code=\"200\",method=\"GET\"} 7
request_count{status_code=\"500\",method=\"GET\"} 1
# HELP latency_ms Latency
# TYPE latency_ms histogram
latency_ms_bucket{le=\"10\",pid=\"1\"} 1
latency_ms_bucket{le=\"+Inf\",pid=\"1\"} 2
latency_ms_sum{pid=\"1\"} 30
latency_ms_count{pid=\"1\"} 2
latency_ms_bucket{le=\"10\",pid=\"2\"} 3
latency_ms_bucket{le=\"+Inf\",pid=\"2\"} 3
latency_ms_sum{pid=\"2\"} 6
latency_ms_count{pid=\"2\"} 3
# HELP go_goroutines Goroutines
# TYPE go_goroutines gauge
go_goroutines 12
";

#[test]
fn untouched_input_is_copied_byte_for_byte() {
    assert_eq!(rewrite(&spec(), PROM_CLIENT), PROM_CLIENT);
}

#[test]
fn renames_families_with_help_type_and_samples_in_step() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("request_count".into()), to: "http_requests_total".into() });
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Regex("(.*)_ms".into()), to: "${1}_milliseconds".into() });
    s.rename_labels.push(LabelRename { from: "status_code".into(), to: "code".into() });
    let out = rewrite(&s, PROM_CLIENT);
    assert!(out.starts_with(
        "# HELP http_requests_total Requests served\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\",method=\"GET\"} 7\n"
    ), "{out}");
    assert!(out.contains("# TYPE latency_milliseconds histogram\nlatency_milliseconds_bucket{le=\"10\",pid=\"1\"} 1\n"));
    assert!(out.contains("latency_milliseconds_sum{pid=\"2\"} 6\n"));
}

#[test]
fn drops_and_keeps_whole_families() {
    let mut s = spec();
    s.drop_metrics.push("go_.*".into());
    let out = rewrite(&s, PROM_CLIENT);
    assert!(!out.contains("go_goroutines"));
    let mut s = spec();
    s.keep_metrics = Some(vec!["request_count".into()]);
    assert_eq!(
        rewrite(&s, PROM_CLIENT),
        "# HELP request_count Requests served\n# TYPE request_count counter\nrequest_count{status_code=\"200\",method=\"GET\"} 7\nrequest_count{status_code=\"500\",method=\"GET\"} 1\n"
    );
}

#[test]
fn dropping_a_label_sums_histogram_series_that_collide() {
    let mut s = spec();
    s.drop_labels.push(LabelDrop { label: "pid".into(), metrics: None });
    s.keep_metrics = Some(vec!["latency_ms".into()]);
    assert_eq!(
        rewrite(&s, PROM_CLIENT),
        "# HELP latency_ms Latency\n# TYPE latency_ms histogram\nlatency_ms_bucket{le=\"10\"} 4\nlatency_ms_bucket{le=\"+Inf\"} 5\nlatency_ms_sum 36\nlatency_ms_count 5\n"
    );
}

#[test]
fn dropping_a_label_never_sums_gauges() {
    let mut s = spec();
    s.drop_labels.push(LabelDrop { label: "queue".into(), metrics: None });
    let input = "# TYPE jobs gauge\njobs{queue=\"a\"} 1\njobs{queue=\"b\"} 2\n";
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let out = rw.rewrite(input.as_bytes(), None).unwrap();
    assert_eq!(String::from_utf8(out.body).unwrap(), input);
    assert_eq!(out.stats.aggregation_refused, 1);
    // Without a collision the label simply goes.
    let one = "# TYPE jobs gauge\njobs{queue=\"a\"} 1\n";
    assert_eq!(rewrite(&s, one), "# TYPE jobs gauge\njobs 1\n");
}

#[test]
fn injects_identity_labels_and_respects_conflicts() {
    let mut s = spec();
    s.inject_labels.push(inject("k8s_pod_name", Source::Node { key: "NAME".into(), field: None }, true));
    s.inject_labels.push(inject("method", Source::Constant { value: "ignored".into() }, false));
    s.keep_metrics = Some(vec!["request_count".into(), "go_.*".into()]);
    let out = rewrite(&s, PROM_CLIENT);
    assert!(out.contains("request_count{status_code=\"200\",method=\"GET\",k8s_pod_name=\"cart-1\"} 7\n"), "{out}");
    assert!(out.contains("go_goroutines{k8s_pod_name=\"cart-1\",method=\"ignored\"} 12\n"), "{out}");
}

#[test]
fn maps_values_by_table_and_regex_with_escaping() {
    let mut s = spec();
    s.map_values.push(ValueMap { label: "method".into(), values: Some([("GET".to_string(), "get \"x\"".to_string())].into()), regex: None, to: None });
    s.map_values.push(ValueMap { label: "status_code".into(), values: None, regex: Some("([0-9])[0-9][0-9]".into()), to: Some("${1}xx".into()) });
    s.keep_metrics = Some(vec!["request_count".into()]);
    let out = rewrite(&s, PROM_CLIENT);
    assert!(out.contains("request_count{status_code=\"2xx\",method=\"get \\\"x\\\"\"} 7\n"), "{out}");
}

#[test]
fn drops_series_by_label_value() {
    let mut s = spec();
    s.drop_series.push(SeriesDrop { label: "status_code".into(), regex: "5..".into() });
    let out = rewrite(&s, PROM_CLIENT);
    assert!(!out.contains("status_code=\"500\""));
    assert!(out.contains("status_code=\"200\""));
}

const OPENMETRICS: &str = "\
# TYPE http_requests counter
# HELP http_requests Requests.
http_requests_total{code=\"200\"} 3.0 # {trace_id=\"abc\"} 1.0 1700000000.000
http_requests_created{code=\"200\"} 1.7e+09
# TYPE queue_bytes gauge
# UNIT queue_bytes bytes
queue_bytes 10.0
# EOF
";

#[test]
fn openmetrics_counters_are_renamed_by_their_total_name_and_keep_exemplars() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("http_requests_total".into()), to: "http_server_requests_total".into() });
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("queue_bytes".into()), to: "app_queue_bytes".into() });
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let out = rw.rewrite(OPENMETRICS.as_bytes(), Some("application/openmetrics-text; version=1.0.0")).unwrap();
    assert_eq!(out.format, Format::OpenMetrics);
    assert_eq!(
        String::from_utf8(out.body).unwrap(),
        "# TYPE http_server_requests counter\n# HELP http_server_requests Requests.\nhttp_server_requests_total{code=\"200\"} 3.0 # {trace_id=\"abc\"} 1.0 1700000000.000\nhttp_server_requests_created{code=\"200\"} 1.7e+09\n# TYPE app_queue_bytes gauge\n# UNIT app_queue_bytes bytes\napp_queue_bytes 10.0\n# EOF\n"
    );
}

#[test]
fn text_created_gauges_follow_their_counter() {
    let input = "# HELP x_total X\n# TYPE x_total counter\nx_total 1.0\n# HELP x_created X\n# TYPE x_created gauge\nx_created 1.7e+09\n";
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("x_total".into()), to: "y_total".into() });
    assert_eq!(rewrite(&s, input), "# HELP y_total X\n# TYPE y_total counter\ny_total 1.0\n# HELP y_created X\n# TYPE y_created gauge\ny_created 1.7e+09\n");
}

#[test]
fn required_metrics_are_reported_when_missing() {
    let mut s = spec();
    s.require_metrics = vec!["request_count".into(), "http_requests_total".into(), "latency_ms".into()];
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let out = rw.rewrite(PROM_CLIENT.as_bytes(), None).unwrap();
    assert_eq!(out.stats.missing_required, vec![1]);
}

#[test]
fn malformed_truncated_and_binary_bodies_are_refused() {
    let rw = Rewriter::new(&spec(), &node, 128).unwrap();
    for bad in [
        &b"metric{a=\"1\" 2\n"[..],
        b"metric{a=\"1\"} \n",
        b"metric 1\nother{",
        b"\xff\xfe metric 1\n",
        b"# TYPE x nonsense\nx 1\n",
        b"metric 1\nnot a metric line\n",
    ] {
        assert!(rw.rewrite(bad, None).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let truncated_om = "# TYPE a counter\na_total 1\n";
    assert!(rw.rewrite(truncated_om.as_bytes(), Some("application/openmetrics-text")).is_err());
    let small = Rewriter::new(&ExpositionSpec { max_body_bytes: 4, ..spec() }, &node, 128).unwrap();
    assert_eq!(small.rewrite(b"metric 1\n", None).unwrap_err().reason, "body larger than max_body_bytes");
}

#[test]
fn untyped_samples_and_comments_in_text_format() {
    let input = "# a free comment\nsome_metric{x=\"1\"} 5 1700000000000\n\nother 1\n";
    assert_eq!(rewrite(&spec(), input), "# a free comment\nsome_metric{x=\"1\"} 5 1700000000000\nother 1\n");
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("other".into()), to: "renamed".into() });
    assert!(rewrite(&s, input).ends_with("renamed 1\n"));
}

#[test]
fn format_detection() {
    assert_eq!(Format::detect(Some("text/plain"), b"a 1\n# EOF\n"), Format::OpenMetrics);
    assert_eq!(Format::detect(None, b"a 1\n"), Format::Text);
    assert_eq!(Format::detect(Some("application/openmetrics-text; version=1.0.0"), b""), Format::OpenMetrics);
}
