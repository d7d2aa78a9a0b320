//! One small contract per diagnostic: `tests/check/NAME.yaml` (its first line says what it
//! shows) and beside it `NAME.out`, exactly what `metricpact check NAME.yaml` prints. The exit
//! code follows from it: 1 with an error, else 0. `BLESS=1 cargo test --test check` rewrites the
//! `.out` files (read the diff before committing it).
//!
//! Every rule of the shared validator (`metricpact::validate::RULES`) has a case whose output
//! names it, except the few no YAML can reach, which are tested on a configuration below.

use std::path::{Path, PathBuf};
use std::process::Command;

use metricpact::config::{NameMatch, PluginConfig, ValueMap};
use metricpact::validate::{self, RULES};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    files
}

/// What `check` prints for `case`, run where the case is (so the output names it relatively).
fn check(case: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metricpact"))
        .current_dir(case.parent().unwrap())
        .env("METRICPACT_TODAY", "2026-11-23")
        .args(["check", case.file_name().unwrap().to_str().unwrap()])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn every_case_prints_exactly_its_expected_output() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    let files = cases();
    assert!(files.len() >= 100, "{} cases", files.len());
    for case in &files {
        let (code, got) = check(case);
        let expected_file = case.with_extension("out");
        assert!(!got.is_empty(), "{}: prints nothing, so it tests nothing", case.display());
        let error = got.lines().any(|l| l.contains(": error:") || l.contains(": error["));
        assert_eq!(code, Some(if error { 1 } else { 0 }), "{}: exit code\n{got}", case.display());
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if got != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ (BLESS=1 rewrites them):\n{}", failures.len(), files.len(), failures.join("\n"));
}

/// The rules no contract can break (check refuses the YAML before the configuration could):
/// the filter still judges hand-written configurations by them, tested below.
const UNREACHABLE_FROM_YAML: &[&str] = &["label-no-source", "value-map-shape"];

#[test]
fn every_validator_rule_has_a_case() {
    let outputs: String = cases().iter().map(|c| std::fs::read_to_string(c.with_extension("out")).unwrap_or_default()).collect();
    let missing: Vec<&str> = RULES.iter().copied().filter(|r| !UNREACHABLE_FROM_YAML.contains(r) && !outputs.contains(&format!("error[{r}]"))).collect();
    assert!(missing.is_empty(), "rules without a tests/check case: {missing:?}");
}

#[test]
fn the_rule_list_is_every_rule_the_validator_reports() {
    // The ids `broken!(errors, "id", …)` uses in src/validate, and RULES, are the same set.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/validate");
    let mut used = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            if let Some(rest) = line.split("broken!(errors, \"").nth(1) {
                used.push(rest.split('"').next().unwrap().to_string());
            }
        }
    }
    used.sort();
    used.dedup();
    let mut listed: Vec<String> = RULES.iter().map(|r| r.to_string()).collect();
    listed.sort();
    assert_eq!(used, listed);
}

fn base() -> PluginConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compiled = metricpact::contract::compile::compile_file(&root.join("contracts/rest-api.yaml"));
    compiled.config.expect("contracts/rest-api.yaml compiles")
}

fn broken(change: impl FnOnce(&mut PluginConfig)) -> Vec<(String, &'static str)> {
    let mut config = base();
    change(&mut config);
    validate::plugin_config(&config).into_iter().map(|e| (e.path, e.rule)).collect()
}

#[test]
fn rules_no_contract_reaches_hold_for_hand_written_configurations() {
    assert_eq!(validate::plugin_config(&base()), vec![]);
    assert_eq!(broken(|c| c.labels[0].sources.clear()), [("labels[0].sources".to_string(), "label-no-source")]);
    assert_eq!(
        broken(|c| c.exposition.as_mut().unwrap().map_values.push(ValueMap { label: "method".into(), values: None, regex: None, to: None })),
        [("exposition.map_values[1].values".to_string(), "value-map-shape")]
    );
    // A regex rename keeps the template rule the filter once skipped for any `$` target.
    assert_eq!(
        broken(|c| c.exposition.as_mut().unwrap().rename_metrics[2] = metricpact::config::MetricRename { matcher: NameMatch::Regex("orders_(.*)".into()), to: "app-$1".into() }),
        [("exposition.rename_metrics[2].to".to_string(), "rename-template-name")]
    );
}
