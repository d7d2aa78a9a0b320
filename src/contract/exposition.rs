//! Checking and lowering a contract's `exposition` section (the app-metrics rewrite).

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::model::{ConflictDef, ExpositionDef};
use super::report::Report;
use super::sources::parse_source;
use crate::config::{ExpositionSpec, Injection, LabelDrop, LabelRename, MetricRename, NameMatch, SeriesDrop, Source, ValueMap};

pub const DEFAULT_PATH: &str = "/metrics";
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1_000_000;

/// Lowers `exposition`. The rules of the lowered section are the validator's
/// (`validate/exposition.rs`); here: which keys go together, the 1 MiB warning, and the label
/// drops that would have to sum a gauge (which needs the `require` types).
pub fn lower(def: &Spanned<ExpositionDef>, report: &mut dyn Report) -> ExpositionSpec {
    let d = &def.value;
    let at = |field: &str| format!("exposition.{field}");
    report.origin("exposition".into(), &def.referenced);
    let paths: Vec<String> = match &d.paths {
        None => vec![DEFAULT_PATH.into()],
        Some(paths) => {
            report.origin(at("paths"), &def.referenced);
            for (i, p) in paths.iter().enumerate() {
                report.origin(at(&format!("paths[{i}]")), &p.referenced);
            }
            paths.iter().map(|p| p.value.clone()).collect()
        }
    };
    let max_body_bytes = match &d.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(m) => {
            report.origin(at("max_body_bytes"), &m.referenced);
            if m.value > 1 << 20 && u64::from(m.value) <= crate::validate::MAX_BODY_LIMIT {
                report.warn(&m.referenced, "above 1 MiB: raise the listener's per_connection_buffer_limit_bytes above it too, or Envoy resets scrapes whose body outgrows its buffer".into());
            }
            m.value
        }
    };
    let list = |report: &mut dyn Report, field: &str, list: &Option<Vec<Spanned<String>>>| -> Vec<String> {
        let items: Vec<&Spanned<String>> = list.iter().flatten().collect();
        for (i, p) in items.iter().enumerate() {
            report.origin(at(&format!("{field}[{i}]")), &p.referenced);
        }
        items.iter().map(|p| p.value.clone()).collect()
    };
    let keep_metrics = d.keep_metrics.as_ref().map(|_| list(report, "keep_metrics", &d.keep_metrics));
    let drop_metrics = list(report, "drop_metrics", &d.drop_metrics);

    let mut drop_series = Vec::new();
    for (i, s) in d.drop_series.iter().flatten().enumerate() {
        report.origin(at(&format!("drop_series[{i}]")), &s.referenced);
        report.origin(at(&format!("drop_series[{i}].regex")), &s.value.regex.referenced);
        drop_series.push(SeriesDrop { label: s.value.label.value.clone(), regex: s.value.regex.value.clone() });
    }

    let mut rename_metrics = Vec::new();
    for r in d.rename_metrics.iter().flatten() {
        let matcher = match (&r.value.from, &r.value.regex) {
            (Some(from), None) => {
                report.origin(at(&format!("rename_metrics[{}].match", rename_metrics.len())), &from.referenced);
                NameMatch::Exact(from.value.clone())
            }
            (None, Some(regex)) => {
                report.origin(at(&format!("rename_metrics[{}].match", rename_metrics.len())), &regex.referenced);
                NameMatch::Regex(regex.value.clone())
            }
            _ => {
                report.error(&r.referenced, "a rename needs exactly one of `from` (a name) or `regex`".into());
                continue;
            }
        };
        report.origin(at(&format!("rename_metrics[{}]", rename_metrics.len())), &r.referenced);
        report.origin(at(&format!("rename_metrics[{}].to", rename_metrics.len())), &r.value.to.referenced);
        rename_metrics.push(MetricRename { matcher, to: r.value.to.value.clone() });
    }

    let mut rename_labels = Vec::new();
    for (i, r) in d.rename_labels.iter().flatten().enumerate() {
        report.origin(at(&format!("rename_labels[{i}]")), &r.referenced);
        report.origin(at(&format!("rename_labels[{i}].from")), &r.value.from.referenced);
        report.origin(at(&format!("rename_labels[{i}].to")), &r.value.to.referenced);
        rename_labels.push(LabelRename { from: r.value.from.value.clone(), to: r.value.to.value.clone() });
    }

    let mut map_values = Vec::new();
    for m in d.map_values.iter().flatten() {
        let v = &m.value;
        let i = map_values.len();
        let map = match (&v.values, &v.regex, &v.to) {
            (Some(values), None, None) => ValueMap { label: v.label.value.clone(), values: Some(values.clone()), regex: None, to: None },
            (None, Some(regex), Some(to)) => {
                report.origin(at(&format!("map_values[{i}].regex")), &regex.referenced);
                ValueMap { label: v.label.value.clone(), values: None, regex: Some(regex.value.clone()), to: Some(to.value.clone()) }
            }
            // Still lowered (without its mapping), so the validator judges its label.
            _ => {
                report.error(&m.referenced, "map_values needs `values: {old: new}`, or `regex` with `to`".into());
                report.refused(at(&format!("map_values[{i}].values")));
                ValueMap { label: v.label.value.clone(), values: None, regex: None, to: None }
            }
        };
        report.origin(at(&format!("map_values[{i}]")), &m.referenced);
        report.origin(at(&format!("map_values[{i}].label")), &v.label.referenced);
        map_values.push(map);
    }

    let required_kinds: BTreeMap<&str, &str> = d
        .require
        .iter()
        .flatten()
        .filter_map(|r| r.value.kind.as_ref().map(|k| (r.value.name.value.as_str(), k.value.as_str())))
        .collect();
    let mut drop_labels = Vec::new();
    for (i, l) in d.drop_labels.iter().flatten().enumerate() {
        report.origin(at(&format!("drop_labels[{i}]")), &l.referenced);
        report.origin(at(&format!("drop_labels[{i}].label")), &l.value.label.referenced);
        let metrics: Option<Vec<String>> = l.value.metrics.as_ref().map(|m| {
            for (j, p) in m.iter().enumerate() {
                report.origin(at(&format!("drop_labels[{i}].metrics[{j}]")), &p.referenced);
            }
            m.iter().map(|p| p.value.clone()).collect()
        });
        // A drop that hits a metric the contract declares a gauge or summary would have to sum it.
        for (name, kind) in &required_kinds {
            let applies = match &metrics {
                None => true,
                Some(patterns) => patterns.iter().any(|p| regex::Regex::new(&crate::routes::anchored(p)).is_ok_and(|r| r.is_match(name))),
            };
            if applies && matches!(*kind, "gauge" | "info" | "stateset") {
                report.error(
                    &l.value.label.referenced,
                    format!("dropping `{}` would have to aggregate `{name}`, a {kind}, whose series cannot be summed; limit the drop with `metrics:`", l.value.label.value),
                );
            }
        }
        drop_labels.push(LabelDrop { label: l.value.label.value.clone(), metrics });
    }

    let mut inject_labels = Vec::new();
    for i in d.inject_labels.iter().flatten() {
        let v = &i.value;
        let at_i = at(&format!("inject_labels[{}]", inject_labels.len()));
        // A refused source still lowers the label (with an empty constant), so the validator
        // judges its name.
        let refused = Source::Constant { value: String::new() };
        let source = match (&v.from, &v.value) {
            (Some(from), None) => match parse_source(&from.value) {
                Ok(s) => {
                    report.origin(format!("{at_i}.source"), &from.referenced);
                    s
                }
                Err(m) => {
                    report.error(&from.referenced, m);
                    report.refused(format!("{at_i}.source"));
                    refused
                }
            },
            (None, Some(value)) => Source::Constant { value: value.value.clone() },
            _ => {
                report.error(&i.referenced, "inject_labels needs exactly one of `from` or `value`".into());
                report.refused(format!("{at_i}.source"));
                refused
            }
        };
        report.origin(at_i.clone(), &i.referenced);
        report.origin(format!("{at_i}.name"), &v.name.referenced);
        let overwrite = v.on_conflict.as_ref().is_none_or(|c| c.value == ConflictDef::Overwrite);
        inject_labels.push(Injection { name: v.name.value.clone(), source, default: v.default.clone().unwrap_or_default(), overwrite });
    }

    let mut require_metrics = Vec::new();
    for (i, r) in d.require.iter().flatten().enumerate() {
        report.origin(at(&format!("require_metrics[{i}]")), &r.value.name.referenced);
        if let Some(k) = &r.value.kind {
            const TYPES: [&str; 7] = ["counter", "gauge", "histogram", "summary", "info", "stateset", "unknown"];
            if !TYPES.contains(&k.value.as_str()) {
                let hint = super::suggest::hint(&k.value, TYPES);
                report.error(&k.referenced, format!("unknown metric type `{}`{hint} (one of {})", k.value, TYPES.join(", ")));
            }
        }
        require_metrics.push(r.value.name.value.clone());
    }

    ExpositionSpec {
        paths,
        max_body_bytes,
        keep_metrics,
        drop_metrics,
        drop_series,
        rename_metrics,
        rename_labels,
        map_values,
        drop_labels,
        inject_labels,
        require_metrics,
        migrations: Vec::new(),
    }
}
