//! The rules of a compiled plugin configuration, in one place. The filter refuses a
//! configuration that breaks any of them (before it builds anything), and `check` runs them on
//! the configuration it lowered from the YAML, mapping each error's field path back to the
//! position it came from — so the two cannot drift apart. `check` itself keeps only the rules
//! that need the YAML (which keys are given together, dates, warnings).

mod exposition;
mod policy;
mod traffic;

pub use exposition::MAX_BODY_LIMIT;
pub use traffic::LENGTH_LIMIT;

use crate::config::PluginConfig;
use crate::names;

/// One broken rule: the field (e.g. `labels[2].name`, `exposition.rename_metrics[0].to`), the
/// rule's stable id, and what is wrong, in the words `check` prints. The filter builds no
/// message (see [`broken!`]): its log names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub rule: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}: {}", self.path, self.rule)
        } else {
            write!(f, "{}: {} [{}]", self.path, self.message, self.rule)
        }
    }
}

/// Records a broken rule: `broken!(errors, "rule-id", path, message)`. The message is an
/// expression evaluated only in native builds: in the filter it is never called, so the ~40 KB
/// of message formatting stay out of the module (which must stay under 1 MB), and its log line
/// gives the field and the rule id — `metricpact check` explains them.
macro_rules! broken {
    ($errors:expr, $rule:literal, $path:expr, $message:expr $(,)?) => {
        $errors.push($path, $rule, || $message)
    };
}
use broken;

/// The id of every rule (a [`ConfigError`]'s `rule`). tests/check.rs holds each to a case: a
/// contract in tests/check whose output names it, or a configuration test for the few no
/// contract can break.
pub const RULES: &[&str] = &[
    // traffic.rs
    "labels-too-many",
    "label-name",
    "label-duplicate",
    "label-conflict",
    "label-no-source",
    "label-sources-mixed",
    "label-values-empty",
    "label-value-duplicate",
    "label-value-characters",
    "metric-name",
    "metric-name-self",
    "metric-name-twice",
    "counter-total",
    "histogram-unit",
    "histogram-suffix",
    "buckets-empty",
    "bucket-bound",
    "buckets-increasing",
    "gauge-total",
    "active-label-unknown",
    "active-label-response",
    "active-label-duplicate",
    "methods-empty",
    "method-token",
    "method-duplicate",
    "route-absolute",
    "route-regex",
    "route-template",
    "route-regexes-size",
    "migration-old-name",
    "migration-to-itself",
    "migration-twice",
    "migration-old-current",
    "migration-new-unknown",
    "migration-label-conflict",
    // exposition.rs
    "exposition-paths-empty",
    "exposition-path",
    "regex",
    "rename-target-name",
    "rename-counter-total",
    "rename-template-capture",
    "rename-template-name",
    "exposition-label-name",
    "exposition-label-reserved",
    "rename-label-twice",
    "value-map-shape",
    "inject-target-label",
    "inject-source",
    "require-name",
    // policy.rs
    "policy-regex",
    "policy-metric-type",
    "policy-label-name",
    "policy-waiver-rule",
    // mod.rs
    "range",
];

/// Every rule `config` breaks, in the order of its fields.
pub fn plugin_config(config: &PluginConfig) -> Vec<ConfigError> {
    let mut errors = Errors(Vec::new());
    traffic::check(config, &mut errors);
    if let Some(spec) = &config.exposition {
        exposition::check(spec, &mut errors);
    }
    if let Some(spec) = &config.policy {
        policy::check(spec, &mut errors);
    }
    errors.0
}

/// The errors as one log line: `path: rule; path: rule` (with the messages in native builds),
/// and where they are explained.
pub fn summary(errors: &[ConfigError]) -> String {
    let each = errors.iter().map(ConfigError::to_string).collect::<Vec<_>>().join("; ");
    format!("{each} (`metricpact check CONTRACT` explains each at its line)")
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push<M: Into<String>>(&mut self, path: impl Into<String>, rule: &'static str, message: impl FnOnce() -> M) {
        #[cfg(not(target_arch = "wasm32"))]
        let message = message().into();
        #[cfg(target_arch = "wasm32")]
        let message = {
            let _ = message;
            String::new()
        };
        self.0.push(ConfigError { path: path.into(), rule, message });
    }
}

/// A regex as the filter compiles it (anchored to the whole text): the error in one line,
/// quoting the pattern as written when that is what fails.
#[cfg(not(target_arch = "wasm32"))]
fn regex_problem(pattern: &str) -> Option<String> {
    let error = match regex::Regex::new(pattern) {
        // An anchored pattern can fail where the bare one compiles (`(?x)a #` comments out the
        // closing anchor): the filter compiles the anchored one, so that is the one that counts.
        Ok(_) => regex::Regex::new(&crate::routes::anchored(pattern)).err()?,
        Err(e) => e,
    };
    let text = error.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    Some(format!("regex does not compile: {text}"))
}

/// The filter logs no message: the anchored pattern alone decides (one compile, not two).
#[cfg(target_arch = "wasm32")]
fn regex_problem(pattern: &str) -> Option<String> {
    regex::Regex::new(&crate::routes::anchored(pattern)).is_err().then(String::new)
}

/// ` ; did you mean `x`?` for a misspelt name (native builds: the filter logs without it).
fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    #[cfg(not(target_arch = "wasm32"))]
    return crate::contract::suggest::hint(word, candidates);
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (word, candidates.into_iter());
        String::new()
    }
}

/// A bound on a number: `must be between 1 and MAX, found V`.
fn between(errors: &mut Errors, path: &str, value: u64, max: u64) {
    if value == 0 || value > max {
        broken!(errors, "range", path, format!("must be between 1 and {max}, found {value}"));
    }
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
    all_tags.iter().find_map(|other| shadowed(name, other))
}

/// Why tag `name` cannot sit beside tag `other`, if Envoy's regex for it matches inside `other`.
pub fn shadowed(name: &str, other: &str) -> Option<String> {
    names::tag_shadows(name, other).then(|| {
        format!("label `{name}` is a suffix of `{other}`: Envoy's unanchored tag regex for `{name}` would also match inside `{other}`; rename one of them")
    })
}
