//! The contract's `policy` judging real client libraries' expositions with the real binary:
//! `verify --target app` on the scrapes recorded in tests/data/expositions from
//! prometheus_client 0.26.0, prom-client and the OpenTelemetry Prometheus exporter
//! (tests/apps/metrics_*.py / .js, the versions pinned in tests/requirements.txt and
//! tests/apps/package.json), text and OpenMetrics, with exact findings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn metricpact_on(today: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metricpact"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("METRICPACT_TODAY", today)
        .args(args)
        .output()
        .expect("run metricpact")
}

fn contract(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metricpact-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const PRESET: &str = "format: metricpact/v1\nname: app\nversion: 1.0.0\nexposition: {}\npolicy:\n  presets: [prometheus]\n  require_help: true\n";

fn verify(today: &str, contract: &Path, scrape: &str) -> (Option<i32>, String) {
    let out = metricpact_on(today, &["verify", "--target", "app", contract.to_str().unwrap(), scrape]);
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn each_client_librarys_exposition_against_the_prometheus_preset() {
    let c = contract("preset.yaml", PRESET);
    for (scrape, expected_code, expected) in EXPECTED {
        let (code, got) = verify("2026-11-23", &c, scrape);
        assert_eq!((code, got.as_str()), (Some(*expected_code), *expected), "{scrape}");
    }
}

#[test]
fn the_rules_judge_what_prometheus_stores_in_each_format() {
    // OpenMetrics requires `_total` on every counter sample, so the same app scraped as
    // OpenMetrics stores `request_count_total`: only its text scrape breaks counter-suffix.
    let c = contract("preset-om.yaml", PRESET);
    for lib in ["python_prometheus_client", "node_prom_client", "python_otel"] {
        let text = format!("tests/data/expositions/{lib}.txt");
        let om = format!("tests/data/expositions/{lib}.om.txt");
        let (a, b) = (verify("2026-11-23", &c, &text), verify("2026-11-23", &c, &om));
        let text_findings: Vec<String> = a.1.replace(&text, "FILE").lines().filter(|l| !l.contains("[counter-suffix]")).map(String::from).collect();
        let om_findings: Vec<String> = b.1.replace(&om, "FILE").lines().map(String::from).collect();
        assert_eq!((a.0.is_some(), text_findings), (b.0.is_some(), om_findings), "{lib}");
        assert!(!b.1.contains("[counter-suffix]"), "{lib}: {}", b.1);
    }
}

#[test]
fn a_waiver_holds_until_it_expires_and_check_says_when() {
    let c = contract(
        "waiver.yaml",
        &format!("{PRESET}  waivers:\n    - {{rule: base-unit, metric: http_request_duration_ms, reason: dashboards move in Q1, expires: 2026-12-10}}\n"),
    );
    let scrape = "tests/data/expositions/node_prom_client.txt";
    let (_, before) = verify("2026-11-23", &c, scrape);
    assert!(!before.contains("base-unit"), "{before}");
    // From the expiry day the contract itself is refused, as an ended migration is: verify says
    // why (the waiver's own expiry is unit-tested in src/policy.rs).
    let after = metricpact_on("2026-12-10", &["verify", "--target", "app", c.to_str().unwrap(), scrape]);
    assert_eq!(after.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&after.stderr),
        format!("{}:9:99: error: the waiver of `base-unit` for `http_request_duration_ms` expired on 2026-12-10: fix the metric, or renew the waiver with a new reason\n", c.display())
    );
    // check warns in the 30 days before, and fails from that day on.
    let soon = metricpact_on("2026-11-23", &["check", c.to_str().unwrap()]);
    assert_eq!(soon.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&soon.stdout),
        format!("{}:9:99: warning: the waiver of `base-unit` for `http_request_duration_ms` expires in 17 days (2026-12-10)\n", c.display())
    );
    let late = metricpact_on("2026-12-10", &["check", c.to_str().unwrap()]);
    assert_eq!(late.status.code(), Some(1));
}

#[test]
fn severities_turn_rules_into_warnings_or_off() {
    let c = contract("severity.yaml", &format!("{PRESET}  severity: {{gauge-type-suffix: warning, base-unit: off, counter-suffix: warning}}\n"));
    let (code, got) = verify("2026-11-23", &c, "tests/data/expositions/node_prom_client.txt");
    // Only warnings left: verify passes.
    assert_eq!(code, Some(0), "{got}");
    assert!(!got.contains("base-unit") && got.contains("warning[gauge-type-suffix]") && !got.contains("violation["), "{got}");
}

/// `verify --target app` on each recorded scrape: exit code and exact output.
const EXPECTED: &[(&str, i32, &str)] = &[
    // prometheus_client's process/platform/GC collectors and the app's metrics: clean.
    ("tests/data/expositions/python_prometheus_client.txt", 0, "coverage: 0/0 contract metrics present, 0/0 contract labels seen\n"),
    // prom-client's defaults name three gauges `_total`; the app's own metrics are in ms and a
    // counter lacks `_total`.
    (
        "tests/data/expositions/node_prom_client.txt",
        1,
        "tests/data/expositions/node_prom_client.txt: violation[base-unit]: http_request_duration_ms: `http_request_duration_ms` is in `ms`: Prometheus names carry the base unit (`_seconds`), and values in it\n\
         tests/data/expositions/node_prom_client.txt: violation[gauge-type-suffix]: nodejs_active_handles_total: gauge `nodejs_active_handles_total` ends in `_total`, which names a counter or a histogram's series\n\
         tests/data/expositions/node_prom_client.txt: violation[gauge-type-suffix]: nodejs_active_requests_total: gauge `nodejs_active_requests_total` ends in `_total`, which names a counter or a histogram's series\n\
         tests/data/expositions/node_prom_client.txt: violation[gauge-type-suffix]: nodejs_active_resources_total: gauge `nodejs_active_resources_total` ends in `_total`, which names a counter or a histogram's series\n\
         tests/data/expositions/node_prom_client.txt: violation[counter-suffix]: request_count: counter `request_count` is stored without `_total`\n\
         coverage: 0/0 contract metrics present, 0/0 contract labels seen\n",
    ),
    // The OpenTelemetry exporter converts units and suffixes itself: clean.
    ("tests/data/expositions/python_otel.txt", 0, "coverage: 0/0 contract metrics present, 0/0 contract labels seen\n"),
];

#[test]
fn diff_calls_a_tightened_policy_breaking_for_the_apps_that_break_it() {
    let old = contract("diff-old.yaml", PRESET);
    let new = contract("diff-new.yaml", &format!("{PRESET}  forbidden_labels: [user_id]\n  severity: {{gauge-type-suffix: warning}}\n"));
    let out = metricpact_on("2026-11-23", &["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let n = new.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{n}: breaking[policy-tightened]: policy rule `forbidden-label` added (no `user_id` label), as an error\n\
             \x20   breaks: verify --target app, for every app that breaks `forbidden-label`\n\
             {n}: compatible[policy-loosened]: policy rule `gauge-type-suffix` (no type suffix on gauges) is now a warning (was an error)\n"
        )
    );
    // A waiver only loosens: compatible, exit 0.
    let waived = contract(
        "diff-waived.yaml",
        &format!("{PRESET}  waivers:\n    - {{rule: base-unit, metric: http_request_duration_ms, reason: dashboards move in Q1, expires: 2027-03-31}}\n"),
    );
    let out = metricpact_on("2026-11-23", &["diff", old.to_str().unwrap(), waived.to_str().unwrap()]);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
        (Some(0), format!("{}: compatible[policy-loosened]: `base-unit` waived for `http_request_duration_ms` until 2027-03-31\n", waived.display()))
    );
}

#[test]
fn diff_calls_a_new_or_stricter_cross_check_breaking() {
    let check = |tolerance: u32| format!("{PRESET}  cross_checks:\n    - {{app: app_requests_total, tolerance_percent: {tolerance}}}\n");
    let none = contract("cc-none.yaml", PRESET);
    let loose = contract("cc-loose.yaml", &check(10));
    let strict = contract("cc-strict.yaml", &check(5));
    let diff = |a: &Path, b: &Path| {
        let out = metricpact_on("2026-11-23", &["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(
        diff(&none, &loose),
        (
            Some(1),
            format!(
                "{}: breaking[policy-tightened]: cross-check of `app_requests_total` against `http_server_requests_total` added (tolerance 10 %)\n\
                 \x20   breaks: verify --target cross-check, for every app whose `app_requests_total` drifts from `http_server_requests_total` by more than 10 %\n",
                loose.display()
            )
        )
    );
    assert_eq!(diff(&loose, &strict).0, Some(1));
    assert_eq!(
        diff(&strict, &loose),
        (Some(0), format!("{}: compatible[policy-loosened]: cross-check of `app_requests_total`: tolerance raised to 10 % (was 5 %)\n", loose.display()))
    );
    assert_eq!(diff(&loose, &none), (Some(0), format!("{}: compatible[policy-loosened]: cross-check of `app_requests_total` removed\n", none.display())));
}

#[test]
fn a_cross_check_without_its_inputs_is_a_usage_error() {
    let without = contract("cc-without.yaml", PRESET);
    let with = contract("cc-with.yaml", &format!("{PRESET}  cross_checks:\n    - {{app: app_requests_total}}\n"));
    let run = |args: &[&str]| {
        let out = metricpact_on("2026-11-23", args);
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let (w, wo) = (with.to_str().unwrap(), without.to_str().unwrap());
    assert_eq!(
        run(&["verify", w, "--target", "cross-check"]),
        (Some(2), "metricpact: --target cross-check needs --app-url and --sidecar-url (two scrapes of each), or --prometheus URL\n".into())
    );
    assert_eq!(
        run(&["verify", wo, "--target", "cross-check", "--prometheus", "http://127.0.0.1:9"]),
        (Some(2), format!("{wo}: the contract's policy has no cross_checks\n"))
    );
    assert_eq!(
        run(&["verify", w, "--target", "app", "--window", "5m", "-"]),
        (Some(2), "metricpact: --app-url, --sidecar-url, --prometheus and --window are for --target cross-check\n".into())
    );
    assert_eq!(run(&["verify", w, "--target", "cross-check", "--prometheus", "http://127.0.0.1:9", "--window", "5x"]).0, Some(2));
}
