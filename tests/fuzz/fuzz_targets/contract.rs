//! The contract loader and checker on arbitrary YAML text.
//!
//! Properties:
//! - parsing and checking never panic;
//! - every error and warning names a position inside the file (1-based line and column);
//! - the structural check is never stricter than serde: a file serde reads has no structural
//!   problem, and one it refuses has at least one diagnostic;
//! - a contract `check` accepts compiles to a configuration the filter accepts: it serializes,
//!   loads back through `PluginConfig::from_json` unchanged, passes the filter's validation, and
//!   builds the engine and the exposition rewriter.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use metricpact::config::PluginConfig;
use metricpact::contract::check::check;
use metricpact::contract::compile::{contract_hash, to_json};
use metricpact::contract::load::{Diagnostic, Severity, Source};
use metricpact::contract::{shape, yaml};
use metricpact::exposition::Rewriter;
use metricpact::telemetry::Engine;

fn schema() -> &'static serde_json::Value {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(metricpact::contract::model::json_schema)
}

fn node(key: &str, _field: Option<&str>) -> Option<Vec<u8>> {
    (key != "CLUSTER_ID").then(|| key.as_bytes().to_vec())
}

fn assert_positioned(d: &Diagnostic, text: &str) {
    // YAML breaks lines at LF, CRLF and a lone CR.
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() as u32;
    assert!(
        d.line >= 1 && d.line <= lines && d.column >= 1,
        "diagnostic without a position in the file ({} lines): {}:{}: {}",
        lines,
        d.line,
        d.column,
        d.message
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = Source { path: PathBuf::from("fuzz.yaml"), text: text.to_string() };
    let serde_reads = serde_saphyr::from_str::<metricpact::contract::model::Contract>(text).is_ok();
    if serde_reads {
        if let Ok(Some(root)) = yaml::parse(text) {
            let problems = shape::check(&root, schema(), text);
            assert!(problems.is_empty(), "the structural check refuses what serde reads: {problems:?}");
        }
    }
    let parsed = source.parse();
    assert_eq!(parsed.diagnostics.is_empty(), serde_reads, "{:?}", parsed.diagnostics);
    for d in &parsed.diagnostics {
        assert_eq!(d.severity, Severity::Error);
        assert_positioned(d, text);
    }
    let Some(contract) = parsed.contract else { return };
    if !serde_reads {
        // Read without its structural problems: the semantic checks still place what they find.
        let (_, _, diagnostics) = check(&source, &contract);
        for d in &diagnostics {
            assert_positioned(d, text);
        }
        return;
    }
    let (mut config, _deployment, diagnostics) = check(&source, &contract);
    for d in &diagnostics {
        assert_positioned(d, text);
    }
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return;
    }
    config.contract.hash = contract_hash(&config);
    let json = to_json(&config, false);
    let loaded = match PluginConfig::from_json(json.as_bytes()) {
        Ok(loaded) => loaded,
        Err(e) => panic!("a checked contract compiles to a configuration the filter refuses: {e}\n{json}"),
    };
    assert_eq!(to_json(&loaded, false), json, "compiled configuration changed when loaded");
    // check runs the validator itself, so this holds by construction; kept as the guard.
    let errors = metricpact::validate::plugin_config(&loaded);
    if !errors.is_empty() {
        panic!("a checked contract fails the filter's validation: {}\n{json}", metricpact::validate::summary(&errors));
    }
    if let Some(spec) = &loaded.exposition {
        if let Err(e) = Rewriter::new(spec, &node, loaded.max_value_length as usize) {
            panic!("a checked contract's exposition is refused by the filter: {e}\n{json}");
        }
    }
    if let Err(e) = Engine::new(&loaded, &node) {
        panic!("a checked contract's configuration is refused by the filter: {e}\n{json}");
    }
});
