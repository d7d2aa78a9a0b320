//! Contract to plugin configuration: load, check, fill in the contract hash, serialize.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::check::check;
use super::deploy::Deployment;
use super::load::{Diagnostic, Severity, Source};
use crate::config::PluginConfig;

/// The outcome of compiling one contract file.
pub struct Compiled {
    /// Present when no error was found.
    pub config: Option<PluginConfig>,
    /// The deployment side (client metrics, workload, autoscaling); meaningful with `config`.
    pub deployment: Deployment,
    /// Every finding, errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// The file could not be read at all (an I/O error, not a finding about its content): the
    /// CLI exits 2 for unusable input.
    pub unreadable: bool,
}

/// Loads, checks and compiles the contract at `path`.
pub fn compile_file(path: &Path) -> Compiled {
    let source = match Source::read(path) {
        Ok(s) => s,
        Err((d, unreadable)) => return Compiled { config: None, deployment: Deployment::default(), diagnostics: vec![d], unreadable },
    };
    compile_source(&source)
}

pub fn compile_source(source: &Source) -> Compiled {
    let parsed = source.parse();
    let Some(contract) = &parsed.contract else {
        return Compiled { config: None, deployment: Deployment::default(), diagnostics: parsed.diagnostics, unreadable: false };
    };
    let (mut config, mut deployment, semantic) = check(source, contract);
    // Read without its structural problems, the rest of the file still gets its semantic errors
    // (not those that only follow from a wrong value left out); its warnings wait for a whole
    // file (one may be about a default standing in for a section that was left out).
    let partial = !parsed.diagnostics.is_empty();
    let semantic: Vec<Diagnostic> =
        semantic.into_iter().filter(|d| !partial || (d.severity == Severity::Error && parsed.reliable(d.line, d.column))).collect();
    let mut diagnostics = parsed.diagnostics;
    diagnostics.extend(semantic);
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
    config.contract.hash = contract_hash(&config);
    if let Some(client) = &mut deployment.client {
        client.contract.hash = config.contract.hash.clone();
    }
    Compiled { config: (!failed).then_some(config), deployment, diagnostics, unreadable: false }
}

/// First 12 hex digits of the sha256 of the configuration with an empty hash: identifies what
/// the filter runs, whatever the YAML's comments or layout.
pub fn contract_hash(config: &PluginConfig) -> String {
    let mut unhashed = config.clone();
    unhashed.contract.hash = String::new();
    let json = serde_json::to_vec(&unhashed).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The plugin configuration JSON, as the filter reads it.
pub fn to_json(config: &PluginConfig, pretty: bool) -> String {
    let result = if pretty { serde_json::to_string_pretty(config) } else { serde_json::to_string(config) };
    result.unwrap_or_default()
}
