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
        migrations: vec![],
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
    assert_eq!(small.rewrite(b"metric 1\n", None).unwrap_err().problem.message(), "body larger than max_body_bytes");
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

#[test]
fn openmetrics_bodies_announced_as_text_are_converted_to_text() {
    let rw = Rewriter::new(&spec(), &node, 128).unwrap();
    let input = "# TYPE http_requests counter\n# HELP http_requests Requests.\nhttp_requests_total{code=\"200\"} 3.0 # {trace_id=\"abc\"} 1.0 1700000000.000\nhttp_requests_created{code=\"200\"} 1.7e+09\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# TYPE queue_bytes gauge\n# UNIT queue_bytes bytes\nqueue_bytes 10.0 1700000000.5\n# EOF\n";
    let out = rw.rewrite_as(input.as_bytes(), Format::Text).unwrap();
    assert_eq!(
        String::from_utf8(out.body).unwrap(),
        "# TYPE http_requests_total counter\n# HELP http_requests_total Requests.\nhttp_requests_total{code=\"200\"} 3.0\nhttp_requests_created{code=\"200\"} 1.7e+09\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n# TYPE queue_bytes gauge\nqueue_bytes 10.0 1700000000500\n"
    );
    // Announced as OpenMetrics, a body without # EOF is refused.
    assert!(rw.rewrite_as(b"a 1\n", Format::OpenMetrics).is_err());
}

#[test]
fn rules_match_openmetrics_info_families_by_their_info_name() {
    let mut s = spec();
    s.drop_metrics.push("target_info".into());
    let out = rewrite(&s, "# TYPE target info\ntarget_info{service_name=\"x\"} 1\n# TYPE a gauge\na 1\n# EOF\n");
    assert_eq!(out, "# TYPE a gauge\na 1\n# EOF\n");
}

#[test]
fn renamed_families_drop_a_unit_they_no_longer_end_in() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("d_seconds".into()), to: "d".into() });
    let out = rewrite(&s, "# TYPE d_seconds gauge\n# UNIT d_seconds seconds\nd_seconds 1\n# EOF\n");
    assert_eq!(out, "# TYPE d gauge\nd 1\n# EOF\n");
}

#[test]
fn created_gauges_of_renamed_histograms_follow_and_merge_by_minimum() {
    let input = "# TYPE lat histogram\nlat_bucket{le=\"+Inf\",route=\"a\"} 1\nlat_bucket{le=\"+Inf\",route=\"b\"} 2\nlat_sum{route=\"a\"} 1\nlat_sum{route=\"b\"} 2\nlat_count{route=\"a\"} 1\nlat_count{route=\"b\"} 2\n# TYPE lat_created gauge\nlat_created{route=\"a\"} 20\nlat_created{route=\"b\"} 10\n";
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("lat".into()), to: "latency".into() });
    s.drop_labels.push(LabelDrop { label: "route".into(), metrics: None });
    assert_eq!(
        rewrite(&s, input),
        "# TYPE latency histogram\nlatency_bucket{le=\"+Inf\"} 3\nlatency_sum 3\nlatency_count 3\n# TYPE latency_created gauge\nlatency_created 10\n"
    );
}

#[test]
fn value_maps_that_merge_series_sum_them() {
    let mut s = spec();
    s.map_values.push(ValueMap { label: "path".into(), values: None, regex: Some("/users/[0-9]+".into()), to: Some("/users/{id}".into()) });
    let input = "# TYPE hits_total counter\nhits_total{path=\"/users/1\"} 3\nhits_total{path=\"/users/2\"} 4\n";
    assert_eq!(rewrite(&s, input), "# TYPE hits_total counter\nhits_total{path=\"/users/{id}\"} 7\n");
}

#[test]
fn a_rewrite_larger_than_the_limit_is_refused() {
    let mut s = spec();
    s.max_body_bytes = 40;
    s.inject_labels.push(inject("k8s_namespace_name", Source::Node { key: "NAMESPACE".into(), field: None }, true));
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let err = rw.rewrite(b"a 1\nb 2\nc 3\nd 4\n", None).unwrap_err();
    assert_eq!(err.problem.message(), "rewritten body larger than max_body_bytes");
}

/// Mutated expositions (bytes flipped, inserted, cut) never panic the rewriter: it either
/// rewrites or refuses. A cheap always-on companion to real fuzzing.
#[test]
fn mutated_inputs_never_panic() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Regex("(.*)_ms".into()), to: "${1}_milliseconds".into() });
    s.rename_labels.push(LabelRename { from: "status_code".into(), to: "code".into() });
    s.drop_labels.push(LabelDrop { label: "pid".into(), metrics: None });
    s.map_values.push(ValueMap { label: "method".into(), values: Some([("GET".to_string(), "get".to_string())].into()), regex: None, to: None });
    s.inject_labels.push(inject("k8s_pod_name", Source::Node { key: "NAME".into(), field: None }, false));
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let seeds = [PROM_CLIENT.as_bytes(), OPENMETRICS.as_bytes()];
    let alphabet = b"{}\",=# \n\\_aZ09.+-eEINfT";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let mut input = seeds[i % 2].to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % (input.len() + 1);
            match next() % 4 {
                0 if at < input.len() => input[at] = alphabet[(next() as usize) % alphabet.len()],
                1 => input.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                2 if at < input.len() => {
                    input.remove(at);
                }
                _ => input.truncate(at),
            }
        }
        for format in [Format::Text, Format::OpenMetrics] {
            if let Ok(out) = rw.rewrite_as(&input, format) {
                assert!(std::str::from_utf8(&out.body).is_ok());
            }
        }
    }
}

#[test]
fn families_without_collisions_keep_timestamps_and_exemplars() {
    let mut s = spec();
    s.map_values.push(ValueMap { label: "path".into(), values: Some([("/a".to_string(), "/b".to_string())].into()), regex: None, to: None });
    let input = "# TYPE up_since gauge\nup_since{job=\"a\"} 5 1700000000000\n# TYPE c_total counter\nc_total 3.0\n";
    assert_eq!(rewrite(&s, input), input);
}

#[test]
fn value_maps_never_merge_gauges() {
    let mut s = spec();
    s.map_values.push(ValueMap { label: "path".into(), values: None, regex: Some("/users/[0-9]+".into()), to: Some("/users/{id}".into()) });
    let input = "# TYPE inflight gauge\ninflight{path=\"/users/1\"} 3\ninflight{path=\"/users/2\"} 4\n";
    assert_eq!(rewrite(&s, input), input);
}

#[test]
fn the_output_bound_counts_the_last_held_family() {
    let mut s = spec();
    s.drop_labels.push(LabelDrop { label: "pid".into(), metrics: None });
    s.inject_labels.push(inject("k8s_namespace_name", Source::Node { key: "NAMESPACE".into(), field: None }, true));
    s.max_body_bytes = 60;
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let input = "# TYPE r counter\nr{pid=\"1\"} 1\nr{pid=\"2\"} 1\n";
    assert!(input.len() <= 60);
    let out = rw.rewrite(input.as_bytes(), None);
    assert!(out.is_ok(), "{out:?}");
    let mut s2 = s.clone();
    s2.max_body_bytes = 45;
    let rw = Rewriter::new(&s2, &node, 128).unwrap();
    assert_eq!(rw.rewrite(input.as_bytes(), None).unwrap_err().problem.message(), "rewritten body larger than max_body_bytes");
}

fn migration(kind: MigrationKind, old: &str, new: &str, sunset_unix: u64) -> Migration {
    Migration { kind, old: old.into(), new: new.into(), sunset: "2027-01-01".into(), sunset_unix }
}

#[test]
fn a_migrated_family_is_written_under_its_old_name_too() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("request_count".into()), to: "http_requests_total".into() });
    s.rename_labels.push(LabelRename { from: "status_code".into(), to: "code".into() });
    s.migrations.push(migration(MigrationKind::Metric, "request_count", "http_requests_total", 5_000));
    s.migrations.push(migration(MigrationKind::Label, "status_code", "code", 5_000));
    let out = rewrite(&s, PROM_CLIENT);
    assert_eq!(
        out.split("# HELP latency_ms").next().unwrap(),
        "# HELP http_requests_total Requests served\n# TYPE http_requests_total counter\n\
         http_requests_total{code=\"200\",method=\"GET\",status_code=\"200\"} 7\n\
         http_requests_total{code=\"500\",method=\"GET\",status_code=\"500\"} 1\n\
         # HELP request_count Requests served\n# TYPE request_count counter\n\
         request_count{code=\"200\",method=\"GET\",status_code=\"200\"} 7\n\
         request_count{code=\"500\",method=\"GET\",status_code=\"500\"} 1\n"
    );
    // Families without the migrated names are untouched.
    assert!(out.ends_with(PROM_CLIENT.split("request_count{status_code=\"500\",method=\"GET\"} 1\n").nth(1).unwrap()), "{out}");
}

#[test]
fn migrated_openmetrics_counters_and_summed_families_keep_both_names() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("jobs_total".into()), to: "work_items_total".into() });
    s.drop_labels.push(LabelDrop { label: "pid".into(), metrics: None });
    s.migrations.push(migration(MigrationKind::Metric, "jobs_total", "work_items_total", 5_000));
    let input = "# TYPE jobs counter\n# HELP jobs Jobs done\njobs_total{pid=\"1\"} 2\njobs_total{pid=\"2\"} 3\njobs_created{pid=\"1\"} 100\n# EOF\n";
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let out = String::from_utf8(rw.rewrite(input.as_bytes(), Some(OPENMETRICS_CONTENT_TYPE)).unwrap().body).unwrap();
    assert_eq!(
        out,
        "# TYPE work_items counter\n# HELP work_items Jobs done\nwork_items_total 5\nwork_items_created 100\n\
         # TYPE jobs counter\n# HELP jobs Jobs done\njobs_total 5\njobs_created 100\n# EOF\n"
    );
}

#[test]
fn migrations_in_the_rewrite_end_at_their_sunset() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Exact("go_goroutines".into()), to: "process_goroutines".into() });
    s.migrations.push(migration(MigrationKind::Metric, "go_goroutines", "process_goroutines", 5_000));
    let mut rw = Rewriter::new(&s, &node, 128).unwrap();
    let body = "# TYPE go_goroutines gauge\ngo_goroutines 12\n";
    let out = |rw: &Rewriter| String::from_utf8(rw.rewrite(body.as_bytes(), None).unwrap().body).unwrap();
    assert_eq!(out(&rw), "# TYPE process_goroutines gauge\nprocess_goroutines 12\n# TYPE go_goroutines gauge\ngo_goroutines 12\n");
    assert_eq!(rw.next_sunset(), Some(5_000));
    assert!(!rw.expire_migrations(4_999));
    assert!(rw.expire_migrations(5_000));
    assert_eq!(out(&rw), "# TYPE process_goroutines gauge\nprocess_goroutines 12\n");
    assert_eq!(rw.next_sunset(), None);
}

// Found by fuzzing (tests/fuzz, target `exposition`): an identity rewrite must copy the body.
#[test]
fn metadata_of_a_metric_without_samples_keeps_its_place() {
    for input in ["# HELP a x\n# TYPE b counter\nb 1\n", "# HELP a x\n# UNIT a y\nb 1\n"] {
        assert_eq!(rewrite(&spec(), input), input);
    }
}

#[test]
fn comments_without_a_blank_after_the_hash_are_kept_as_they_are() {
    let input = "a 1\n#HELP a not a HELP line\n#TYPE a info\n# UNIT a text has no UNIT lines\nb 2\n";
    assert_eq!(rewrite(&spec(), input), input);
}

#[test]
fn free_comments_and_repeated_help_lines_keep_their_order() {
    let input = "# HELP a x\n# a comment\n# HELP b y\n# HELP a z\n# TYPE a counter\na 1\n";
    assert_eq!(rewrite(&spec(), input), input);
}

#[test]
fn samples_after_another_metrics_help_line_stay_after_it() {
    for input in ["# TYPE a counter\na 1\n# HELP b y\na 2\n", "# HELP a x\n# HELP b y\n# HELP c z\nb 1\n"] {
        assert_eq!(rewrite(&spec(), input), input);
    }
}

#[test]
fn a_text_body_whose_last_line_ends_in_eof_is_text() {
    let input = "# HELP a Counts # EOF\n# TYPE a counter\na 1\n# a comment # EOF\n";
    assert_eq!(Format::detect(None, input.as_bytes()), Format::Text);
    assert_eq!(rewrite(&spec(), input), input);
}

#[test]
fn a_regex_rename_that_makes_a_bad_name_leaves_the_family_alone() {
    let mut s = spec();
    s.rename_metrics.push(MetricRename { matcher: NameMatch::Regex("x_(.*)".into()), to: "$1".into() });
    let body = "# TYPE x_9 gauge\nx_9 1\n# TYPE x_ok gauge\nx_ok 2\n";
    assert_eq!(rewrite(&s, body), "# TYPE x_9 gauge\nx_9 1\n# TYPE ok gauge\nok 2\n");
}

#[test]
fn a_held_family_keeps_its_metadata_and_comments_before_its_samples() {
    let mut s = spec();
    s.drop_labels.push(LabelDrop { label: "pid".into(), metrics: None });
    s.rename_labels.push(LabelRename { from: "status".into(), to: "code".into() });
    s.inject_labels.push(inject("k8s_pod_name", Source::Node { key: "NAME".into(), field: None }, false));
    // Summed (counter), kept as written (no two series meet), refused (a gauge): in each case a
    // HELP line and a free comment that came after the first sample stay before the samples.
    let input = "# TYPE c_total counter\nc_total{pid=\"1\",status=\"200\"} 1\n# HELP c_total Counted\n\
                 # a comment\nc_total{pid=\"2\",status=\"200\"} 2\n\
                 # TYPE u_total counter\nu_total{pid=\"1\"} 1\n# HELP u_total Unique\nu_total{status=\"500\"} 2\n\
                 # TYPE g gauge\ng{pid=\"1\"} 1\n# HELP g Refused\ng{pid=\"2\",status=\"1\"} 2 17\ng{pid=\"3\",status=\"1\"} 3\n";
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let out = rw.rewrite(input.as_bytes(), None).unwrap();
    assert_eq!(
        String::from_utf8(out.body).unwrap(),
        "# TYPE c_total counter\n# HELP c_total Counted\n# a comment\nc_total{code=\"200\",k8s_pod_name=\"cart-1\"} 3\n\
         # TYPE u_total counter\n# HELP u_total Unique\nu_total{k8s_pod_name=\"cart-1\"} 1\nu_total{code=\"500\",k8s_pod_name=\"cart-1\"} 2\n\
         # TYPE g gauge\n# HELP g Refused\ng{pid=\"1\",k8s_pod_name=\"cart-1\"} 1\ng{pid=\"2\",code=\"1\",k8s_pod_name=\"cart-1\"} 2 17\n\
         g{pid=\"3\",code=\"1\",k8s_pod_name=\"cart-1\"} 3\n"
    );
    assert_eq!((out.stats.series_aggregated, out.stats.aggregation_refused), (2, 1));
}

#[test]
fn every_old_name_of_a_label_renamed_twice_is_written_on_every_path() {
    let label = |old: &str, new: &str| migration(MigrationKind::Label, old, new, 4_102_444_800);
    // `a` became `b`, then `b` became `c` (listed in either order), and `c` twice is one alias.
    for migrations in [vec![label("b", "c"), label("a", "b")], vec![label("a", "b"), label("b", "c"), label("b", "c")]] {
        let mut s = spec();
        s.migrations = migrations.clone();
        let streamed = rewrite(&s, "# TYPE x_total counter\nx_total{c=\"1\"} 1\n");
        s.drop_labels.push(LabelDrop { label: "pid".into(), metrics: None });
        let held = rewrite(&s, "# TYPE x_total counter\nx_total{c=\"1\",pid=\"9\"} 1\n");
        let order = if migrations[0].old == "b" { "b=\"1\",a=\"1\"" } else { "a=\"1\",b=\"1\"" };
        let expected = format!("# TYPE x_total counter\nx_total{{c=\"1\",{order}}} 1\n");
        assert_eq!((streamed.as_str(), held.as_str()), (expected.as_str(), expected.as_str()));
    }
}

#[test]
fn the_rewrite_stops_where_the_output_outgrows_the_limit() {
    // Short lines and a long injected label: the output would be many times the input. The
    // rewrite stops at the line that crosses the limit (the memory it takes stays bounded), so
    // a malformed line after it is never read.
    let mut s = spec();
    s.inject_labels.push(Injection { name: "k8s_pod_name".into(), source: Source::Constant { value: "p".repeat(100) }, default: String::new(), overwrite: false });
    s.max_body_bytes = 4096;
    let rw = Rewriter::new(&s, &node, 128).unwrap();
    let body = format!("{}m{{ broken\n", "a 1\n".repeat(100));
    let err = rw.rewrite(body.as_bytes(), None).unwrap_err();
    assert_eq!((err.line, err.problem), (0, Problem::RewrittenTooLarge));
    assert!(err.is_too_large());
}
