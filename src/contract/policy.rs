//! Lowering a contract's `policy` section to the configuration's [`PolicySpec`]. The rules of the
//! lowered section (regexes, label names, waived rule ids) are the validator's
//! (`validate/policy.rs`); here: the severity map, waiver dates.

use serde_saphyr::Spanned;

use super::migrations::{parse_date, WARN_DAYS};
use super::model::{NamingPolicyDef, PresetDef, RuleSeverityDef};
use super::report::Report;
use crate::config::{PolicyCheck, PolicyRule, PolicySpec, Waiver, POLICY_RULES};

pub fn lower(def: &Spanned<NamingPolicyDef>, today: i64, report: &mut dyn Report) -> PolicySpec {
    let d = &def.value;
    report.origin("policy".into(), &def.referenced);
    // (check, where it was written)
    let mut checks: Vec<(PolicyCheck, Vec<(&str, serde_saphyr::Location)>)> = Vec::new();
    for p in d.presets.iter().flatten() {
        match p.value {
            PresetDef::Prometheus => {
                for check in [PolicyCheck::CounterSuffix, PolicyCheck::BaseUnit, PolicyCheck::GaugeTypeSuffix, PolicyCheck::SnakeCase] {
                    checks.push((check, vec![("", p.referenced)]));
                }
            }
        }
    }
    for n in d.metric_names.iter().flatten() {
        let check = PolicyCheck::NamePattern { pattern: n.value.pattern.value.clone(), metric_type: n.value.kind.as_ref().map(|k| k.value.clone()) };
        let mut at = vec![("", n.referenced), (".pattern", n.value.pattern.referenced)];
        at.extend(n.value.kind.as_ref().map(|k| (".metric_type", k.referenced)));
        checks.push((check, at));
    }
    for l in d.forbidden_labels.iter().flatten() {
        checks.push((PolicyCheck::ForbiddenLabel { label: l.value.clone() }, vec![("", l.referenced), (".label", l.referenced)]));
    }
    for v in d.forbidden_values.iter().flatten() {
        let check = PolicyCheck::ForbiddenValue { label: v.value.label.value.clone(), pattern: v.value.pattern.value.clone() };
        checks.push((check, vec![("", v.referenced), (".label", v.value.label.referenced), (".pattern", v.value.pattern.referenced)]));
    }
    if let Some(m) = &d.max_series_per_metric {
        checks.push((PolicyCheck::SeriesLimit { max: m.value }, vec![("", m.referenced), (".max", m.referenced)]));
    }
    if let Some(h) = d.require_help.as_ref().filter(|h| h.value) {
        checks.push((PolicyCheck::HelpRequired, vec![("", h.referenced)]));
    }

    // Severity per rule id: every rule is an error unless the map says otherwise.
    let severities = d.severity.as_ref().map(|s| &s.value);
    if let Some(map) = &d.severity {
        for id in map.value.keys() {
            if !POLICY_RULES.contains(&id.as_str()) {
                let hint = super::suggest::hint(id, POLICY_RULES.iter().copied());
                report.error(&map.referenced, format!("`{id}` is not a policy rule{hint} (rules: {})", POLICY_RULES.join(", ")));
            }
        }
    }
    let mut rules = Vec::new();
    for (check, at) in checks {
        let severity = severities.and_then(|m| m.get(check.id())).copied().unwrap_or(RuleSeverityDef::Error);
        if severity == RuleSeverityDef::Off {
            continue;
        }
        let path = format!("policy.rules[{}]", rules.len());
        for (field, location) in at {
            report.origin(format!("{path}{field}"), &location);
        }
        rules.push(PolicyRule { error: severity == RuleSeverityDef::Error, check });
    }

    let mut waivers = Vec::new();
    for w in d.waivers.iter().flatten() {
        let v = &w.value;
        let path = format!("policy.waivers[{}]", waivers.len());
        report.origin(path.clone(), &w.referenced);
        report.origin(format!("{path}.rule"), &v.rule.referenced);
        if v.reason.value.trim().is_empty() {
            report.error(&v.reason.referenced, "a waiver needs a reason (for the reviewers who renew it)".into());
        }
        let expires = parse_date(&v.expires.value);
        match expires.map(|day| day - today) {
            None => report.error(&v.expires.referenced, format!("expiry `{}` is not a date in the form YYYY-MM-DD", v.expires.value)),
            Some(left) if left <= 0 => report.error(
                &v.expires.referenced,
                format!("the waiver of `{}` for `{}` expired on {}: fix the metric, or renew the waiver with a new reason", v.rule.value, v.metric.value, v.expires.value),
            ),
            Some(left) if left <= WARN_DAYS => report.warn(
                &v.expires.referenced,
                format!("the waiver of `{}` for `{}` expires in {left} day{} ({})", v.rule.value, v.metric.value, if left == 1 { "" } else { "s" }, v.expires.value),
            ),
            Some(_) => {}
        }
        let expires_unix = expires.map_or(0, |day| (day.max(0) as u64) * 86_400);
        waivers.push(Waiver { rule: v.rule.value.clone(), metric: v.metric.value.clone(), reason: v.reason.value.clone(), expires: v.expires.value.clone(), expires_unix });
    }
    PolicySpec { rules, waivers }
}
