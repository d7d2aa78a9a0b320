//! The rules of the `policy` section (what the app's own metrics must look like).

use super::{between, broken, hint, regex_problem, Errors};
use crate::config::{PolicyCheck, PolicySpec, POLICY_RULES};
use crate::names;

/// The metric types an exposition can declare.
const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped", "info", "stateset", "gaugehistogram", "unknown"];

pub(super) fn check(spec: &PolicySpec, errors: &mut Errors) {
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("policy.rules[{i}]");
        match &rule.check {
            PolicyCheck::NamePattern { pattern, metric_type } => {
                if let Some(problem) = regex_problem(pattern) {
                    broken!(errors, "policy-regex", format!("{at}.pattern"), problem);
                }
                if let Some(t) = metric_type.as_ref().filter(|t| !TYPES.contains(&t.as_str())) {
                    let hint = hint(t, TYPES.iter().copied());
                    broken!(errors, "policy-metric-type", format!("{at}.metric_type"), format!("`{t}` is not a metric type{hint} (types: {})", TYPES.join(", ")));
                }
            }
            PolicyCheck::ForbiddenLabel { label } => label_name(errors, &format!("{at}.label"), label),
            PolicyCheck::ForbiddenValue { label, pattern } => {
                label_name(errors, &format!("{at}.label"), label);
                if let Some(problem) = regex_problem(pattern) {
                    broken!(errors, "policy-regex", format!("{at}.pattern"), problem);
                }
            }
            PolicyCheck::SeriesLimit { max } => between(errors, &format!("{at}.max"), (*max).into(), u32::MAX.into()),
            PolicyCheck::CounterSuffix | PolicyCheck::BaseUnit | PolicyCheck::GaugeTypeSuffix | PolicyCheck::SnakeCase | PolicyCheck::HelpRequired => {}
        }
    }
    for (i, w) in spec.waivers.iter().enumerate() {
        if !POLICY_RULES.contains(&w.rule.as_str()) {
            let hint = hint(&w.rule, POLICY_RULES.iter().copied());
            broken!(errors, "policy-waiver-rule", format!("policy.waivers[{i}].rule"), format!("`{}` is not a policy rule{hint} (rules: {})", w.rule, POLICY_RULES.join(", ")));
        }
    }
}

fn label_name(errors: &mut Errors, path: &str, name: &str) {
    if !names::is_valid_label_name(name) {
        broken!(errors, "policy-label-name", path, format!("`{name}` is not a valid Prometheus label name"));
    }
}
