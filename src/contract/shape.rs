//! The structural check: a contract's YAML tree walked against the contract's own JSON Schema
//! (`model::json_schema()`, the one the editors use), reporting every unknown key, wrong kind of
//! value, bad choice and missing key at once, in words, with "did you mean".
//!
//! It is never stricter than serde: `load` reports these problems only when serde refuses the
//! file too (and uses them to blank out the offending entries, so the semantic checks still run
//! on the rest).

use serde_json::{Map, Value as Schema};

use super::suggest;
use super::yaml::{Node, Pos, Value};

/// One structural problem.
#[derive(Debug, Clone)]
pub struct Problem {
    pub at: Pos,
    /// The field, e.g. `workload.target` or `labels[2].from` (empty for the whole file).
    pub path: String,
    pub message: String,
    /// Bytes that can be blanked out (an unknown key's entry, an optional value of the wrong kind)
    /// leaving a file serde reads without this problem; `None` when nothing can be removed.
    pub blank: Option<(usize, usize)>,
    /// The parts of the file whose meaning changes once `blank` is blanked, where the semantic
    /// checks' findings would be consequences of the blanking, not of the file: for a missing
    /// mapping or list the mapping holding it, for a list item the whole file (later items move
    /// up), for a scalar or key left out its sibling scalars (a name judged by a unit left out).
    pub scope: Vec<(Pos, Pos)>,
    /// Whether leaving the value out changes more than the value (see `Walker::mismatch`).
    consequential: bool,
}

/// Walks `root` against `schema`; the problems in file order.
pub fn check(root: &Node, schema: &Schema, text: &str) -> Vec<Problem> {
    let defs = schema.get("$defs").and_then(Schema::as_object).cloned().unwrap_or_default();
    let mut walker = Walker { defs: &defs, text, problems: Vec::new(), emptied: false };
    walker.walk(root, schema, "", None, None);
    walker.problems.sort_by_key(|p| p.at);
    walker.problems
}

struct Walker<'s> {
    defs: &'s Map<String, Schema>,
    text: &'s str,
    problems: Vec<Problem>,
    /// Set by a mapping every entry of which is blanked out: left empty it would be null, which
    /// serde refuses, so the entry holding it goes instead.
    emptied: bool,
}

/// A short example of each mapping people write, for "must be a mapping like …".
fn example(def: &str, found: Option<&str>) -> Option<String> {
    // A word written where the mapping was is most likely its name.
    let name = found.filter(|s| s.starts_with(|c: char| c.is_ascii_alphabetic()) && !s.contains(char::is_whitespace));
    Some(match def {
        "TargetDef" => format!("{{kind: Deployment, name: {}}}", name.unwrap_or("billing")),
        "WorkloadDef" => "{namespace: shop, target: {kind: Deployment, name: cart}}".into(),
        "LabelDef" => format!("{{name: {}, from: request.header.x-tenant}}", name.unwrap_or("tenant")),
        "InjectDef" => format!("{{name: {}, from: node.NAMESPACE}}", name.unwrap_or("k8s_namespace_name")),
        "RouteRuleDef" => "{regex: '/users/[0-9]+', template: /users/{id}}".into(),
        "Routes" => "{rules: [{exact: /healthz}], unmatched: other}".into(),
        "Metrics" => "{requests: {name: http_server_requests_total}}".into(),
        "CounterDef" => format!("{{name: {}}}", name.unwrap_or("http_server_requests_total")),
        "DurationDef" => "{name: http_server_request_duration_milliseconds, unit: milliseconds}".into(),
        "ActiveDef" => format!("{{name: {}}}", name.unwrap_or("http_server_active_requests")),
        "Cardinality" => "{max_series: 1000, max_values_per_label: 100}".into(),
        "AutoscalingDef" => "{qps_per_pod: 50, p95_latency_ms: 250}".into(),
        "PolicyDef" => "{type: Percent, value: 100, period_seconds: 15}".into(),
        "SeriesDropDef" => "{label: path, regex: '/debug/.*'}".into(),
        "MetricRenameDef" => "{from: requests_total, to: http_server_requests_total}".into(),
        "LabelRenameDef" => "{from: status, to: http_response_status_code}".into(),
        "ValueMapDef" => "{label: method, values: {get: GET}}".into(),
        "LabelDropDef" => format!("{{label: {}}}", name.unwrap_or("instance")),
        "RequireDef" => format!("{{name: {}, type: counter}}", name.unwrap_or("http_server_requests_total")),
        "MigrationDef" => "{metric: http_requests_total, renamed_to: http_server_requests_total, sunset: 2027-03-01}".into(),
        "ClientMetricsDef" => "{enabled: true}".into(),
        _ => return None,
    })
}

impl Walker<'_> {
    fn problem(&mut self, node: &Node, path: &str, message: String, blank: Option<(usize, usize)>) {
        self.problems.push(Problem { at: node.start, path: path.to_string(), message, blank, scope: Vec::new(), consequential: false });
    }

    /// A value of the wrong kind (a string for a mapping, a mapping for a source): left out, it
    /// leaves its mapping without what it was meant to give. (A bad choice, number or key left
    /// out falls back to its default: only its sibling scalars' findings may follow from that.)
    fn mismatch(&mut self, node: &Node, path: &str, message: String, blank: Option<(usize, usize)>) {
        self.problems.push(Problem { at: node.start, path: path.to_string(), message, blank, scope: Vec::new(), consequential: true });
    }

    /// A block list item with its `- `, which can be blanked (a flow list's item cannot: its
    /// commas would be left behind).
    fn list_item(&self, item: &Node) -> Option<(usize, usize)> {
        let before = self.text.get(..item.start.offset)?;
        let dash = before.trim_end_matches([' ', '\t']);
        (dash.ends_with('-') && before.len() > dash.len()).then(|| (dash.len() - 1, item.end.offset))
    }

    /// `entry`: the byte range of the whole mapping entry (key and value) holding this node, which
    /// can be blanked when the node is of the wrong kind.
    fn walk(&mut self, node: &Node, schema: &Schema, path: &str, def: Option<&str>, entry: Option<(usize, usize)>) {
        if matches!(node.value, Value::Alias) {
            return; // its anchor is checked where it is written, if anywhere
        }
        let (schema, def) = resolve(self.defs, schema, def);
        if let Some(alternatives) = schema.get("anyOf").and_then(Schema::as_array) {
            return self.any_of(node, schema, alternatives, path, def, entry);
        }
        let types = types(schema);
        if types.is_empty() {
            return self.duplicates(node, path); // any value: only its keys must be unique
        }
        if node.is_null() && types.contains(&"null") {
            return;
        }
        let fits = |t: &str| match t {
            "object" => matches!(node.value, Value::Map(_)),
            "array" => matches!(node.value, Value::Seq(_)),
            // serde-saphyr reads `~` into a string field too (as an empty string).
            "string" => node.scalar().is_some(),
            "boolean" => node.as_bool().is_some(),
            "integer" => node.as_number().is_some_and(|v| v.fract() == 0.0),
            "number" => node.as_number().is_some(),
            "null" => node.is_null(),
            _ => true,
        };
        let Some(&kind) = types.iter().find(|t| fits(t)) else {
            let expected = self.expected(schema, def, node.scalar());
            let message = format!("{} must be {expected}, found {}", field(path), node.describe());
            // A scalar of the wrong kind falls back to its default; a missing mapping or list
            // leaves its holder without what it was meant to give.
            if types.iter().any(|t| matches!(*t, "object" | "array")) {
                return self.mismatch(node, path, message, entry);
            }
            return self.problem(node, path, message, entry);
        };
        match kind {
            "object" => self.object(node, schema, path),
            "array" => {
                let Value::Seq(items) = &node.value else { return };
                let item_schema = schema.get("items").cloned().unwrap_or(Schema::Bool(true));
                for (i, item) in items.iter().enumerate() {
                    let whole = self.list_item(item);
                    let before = self.problems.len();
                    self.walk(item, &item_schema, &format!("{path}[{i}]"), None, whole);
                    // An item left empty by its blanked keys goes whole, with its `- `.
                    let emptied = std::mem::take(&mut self.emptied);
                    // Without the item, later ones move up and what names it is dangling: no
                    // semantic finding can be trusted.
                    for p in &mut self.problems[before..] {
                        if whole.is_some() && (emptied || p.blank == whole) {
                            p.blank = whole;
                            p.scope = vec![(Pos::default(), Pos { line: u32::MAX, column: u32::MAX, offset: usize::MAX })];
                        }
                    }
                }
            }
            "integer" | "number" => self.range(node, schema, path, entry),
            _ => self.choice(node, schema, path, entry),
        }
    }

    fn any_of(&mut self, node: &Node, schema: &Schema, alternatives: &[Schema], path: &str, def: Option<&str>, entry: Option<(usize, usize)>) {
        let alternatives: Vec<&Schema> = alternatives.iter().filter(|a| types(a) != ["null"]).collect();
        let nullable = alternatives.len() < schema["anyOf"].as_array().map_or(0, Vec::len);
        if node.is_null() && nullable {
            return;
        }
        // The alternative whose kind of value this node is: its problems are the node's.
        for alternative in &alternatives {
            let mut trial = Walker { defs: self.defs, text: self.text, problems: Vec::new(), emptied: false };
            trial.walk(node, alternative, path, def, entry);
            let kind_fits = trial.problems.iter().all(|p| p.path != path || p.at != node.start);
            if trial.problems.is_empty() || (kind_fits && alternatives.len() > 1) {
                self.problems.extend(trial.problems);
                return;
            }
            if alternatives.len() == 1 {
                self.problems.extend(trial.problems);
                return;
            }
        }
        let expected = match def {
            Some("FromDef") => "a source (e.g. `request.route`) or a list of sources tried in order".to_string(),
            _ => alternatives.iter().map(|a| self.expected(a, def, None)).collect::<Vec<_>>().join(" or "),
        };
        let message = format!("{} must be {expected}, found {}", field(path), node.describe());
        self.mismatch(node, path, message, entry);
    }

    fn object(&mut self, node: &Node, schema: &Schema, path: &str) {
        let Value::Map(entries) = &node.value else { return };
        let empty = Map::new();
        let properties = schema.get("properties").and_then(Schema::as_object).unwrap_or(&empty);
        let additional = schema.get("additionalProperties");
        let mut seen: Vec<&str> = Vec::new();
        let mut removed = 0;
        // Problems of this mapping's own scalars and keys, whose scope is their siblings.
        let mut local = Vec::new();
        for (key, value) in entries {
            if matches!(key.value, Value::Alias) {
                continue; // a key that is an alias: serde reads its anchor's text
            }
            // Every spelling of null is the same key to serde.
            let Some(name) = (if key.is_null() { Some("~") } else { key.scalar() }) else {
                self.problem(key, path, format!("{} has a key that is not a plain word; keys are names like `{}`", field(path), properties.keys().next().map_or("name", |k| k.as_str())), None);
                continue;
            };
            if name == "<<" {
                continue; // a YAML merge key: its keys are checked where they were written
            }
            let child = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
            let whole = Some((key.start.offset, value.end.offset.max(key.end.offset)));
            if seen.contains(&name) {
                local.push(self.problems.len());
                self.problem(key, &child, format!("duplicate key `{name}`; each key may appear once"), whole);
                removed += 1;
                continue;
            }
            seen.push(name);
            let before = self.problems.len();
            if let Some(property) = properties.get(name) {
                let optional = !required(schema).contains(&name);
                self.walk(value, property, &child, None, if optional { whole } else { None });
            } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                self.walk(value, extra, &child, None, whole);
            }
            // Left empty by its blanked entries, the value goes whole: its own findings would
            // follow from its defaults.
            if std::mem::take(&mut self.emptied) && whole.is_some() {
                for p in &mut self.problems[before..] {
                    p.blank = whole;
                    p.scope = vec![(value.start, value.end)];
                }
            }
            for (i, p) in self.problems.iter_mut().enumerate().skip(before) {
                if p.blank == whole && whole.is_some() && p.scope.is_empty() {
                    if p.consequential {
                        // A missing mapping or list changes what its holder means.
                        p.scope = vec![(node.start, node.end)];
                    } else {
                        local.push(i);
                    }
                }
            }
            if self.problems[before..].iter().any(|p| p.blank == whole && whole.is_some()) {
                removed += 1;
            }
            if properties.contains_key(name) || additional.is_some_and(|a| a.is_object()) {
                continue;
            } else if additional.is_some_and(|a| a == &Schema::Bool(false)) {
                let keys: Vec<&str> = properties.keys().map(String::as_str).collect();
                let hint = suggest::hint(name, keys.iter().copied());
                let message = format!("unknown key `{name}` in {}{hint} (valid keys: {})", field(path), keys.join(", "));
                local.push(self.problems.len());
                self.problem(key, &child, message, whole);
                removed += 1;
            }
        }
        let siblings: Vec<(Pos, Pos)> = entries.iter().filter(|(_, v)| matches!(v.value, Value::Scalar { .. })).map(|(k, v)| (k.start, v.end)).collect();
        for i in local {
            if self.problems[i].scope.is_empty() {
                self.problems[i].scope = siblings.clone();
            }
        }
        self.emptied = removed > 0 && removed == entries.len();
        for name in required(schema) {
            if !seen.contains(&name) && !entries.iter().any(|(k, _)| k.scalar() == Some("<<")) {
                let about = properties
                    .get(name)
                    .and_then(|p| p.get("description"))
                    .and_then(Schema::as_str)
                    .map(|d| format!(" ({})", first_sentence(d)))
                    .unwrap_or_default();
                let message = format!("missing key `{name}` in {}{about}", field(path));
                self.problem(node, path, message, None);
            }
        }
    }

    /// Duplicate keys anywhere under a node the schema leaves open.
    fn duplicates(&mut self, node: &Node, path: &str) {
        match &node.value {
            Value::Map(entries) => {
                let mut seen: Vec<&str> = Vec::new();
                for (key, value) in entries {
                    let name = if key.is_null() { "~" } else { key.scalar().unwrap_or("") };
                    if !name.is_empty() && seen.contains(&name) {
                        let whole = Some((key.start.offset, value.end.offset.max(key.end.offset)));
                        self.problem(key, path, format!("duplicate key `{name}`; each key may appear once"), whole);
                    }
                    seen.push(name);
                    self.duplicates(value, path);
                }
            }
            Value::Seq(items) => items.iter().for_each(|item| self.duplicates(item, path)),
            Value::Scalar { .. } | Value::Alias => {}
        }
    }

    /// An enum's value.
    fn choice(&mut self, node: &Node, schema: &Schema, path: &str, entry: Option<(usize, usize)>) {
        let Some(options) = schema.get("enum").and_then(Schema::as_array) else { return };
        let options: Vec<&str> = options.iter().filter_map(Schema::as_str).collect();
        let Some(text) = node.scalar() else { return };
        if !options.contains(&text) {
            let hint = suggest::hint(text, options.iter().copied());
            let listed = options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
            let message = format!("{} must be one of {listed}, found `{text}`{hint}", field(path));
            self.problem(node, path, message, entry);
        }
    }

    /// A number's bounds (`minimum`/`maximum`, and the range of its `format`).
    fn range(&mut self, node: &Node, schema: &Schema, path: &str, entry: Option<(usize, usize)>) {
        let Some(v) = node.as_number() else { return };
        let (low, high) = bounds(schema);
        if low.is_some_and(|l| v < l) || high.is_some_and(|h| v > h) {
            let message = format!("{} must be {}, found {}", field(path), self.expected(schema, None, None), node.describe());
            self.problem(node, path, message, entry);
        }
    }

    /// The expected value in words: "a mapping like `{…}`", "a list of strings", "a whole number".
    fn expected(&self, schema: &Schema, def: Option<&str>, found: Option<&str>) -> String {
        let (schema, def) = resolve(self.defs, schema, def);
        if let Some(alternatives) = schema.get("anyOf").and_then(Schema::as_array) {
            let words: Vec<String> = alternatives.iter().filter(|a| types(a) != ["null"]).map(|a| self.expected(a, def, found)).collect();
            return words.join(" or ");
        }
        let types: Vec<&str> = types(schema).into_iter().filter(|t| *t != "null").collect();
        let words: Vec<String> = types
            .iter()
            .map(|t| match *t {
                "object" => match def.and_then(|d| example(d, found)) {
                    Some(example) => format!("a mapping like `{example}`"),
                    None => {
                        let keys: Vec<String> = schema.get("properties").and_then(Schema::as_object).map_or_else(Vec::new, |p| p.keys().take(4).map(|k| format!("`{k}`")).collect());
                        if keys.is_empty() { "a mapping".into() } else { format!("a mapping with keys such as {}", keys.join(", ")) }
                    }
                },
                "array" => {
                    let item = schema.get("items").map(|i| self.expected(i, None, None)).unwrap_or_else(|| "values".into());
                    format!("a list of {}", plural(&item))
                }
                "string" => match schema.get("enum").and_then(Schema::as_array) {
                    Some(options) => format!("one of {}", options.iter().filter_map(Schema::as_str).map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")),
                    None => "a string".into(),
                },
                "integer" => match bounds(schema) {
                    (Some(l), Some(h)) => format!("a whole number from {l} to {h}"),
                    (Some(l), None) => format!("a whole number of at least {l}"),
                    _ => "a whole number".into(),
                },
                "number" => match bounds(schema) {
                    (Some(l), _) if l > 0.0 => format!("a number of at least {l}"),
                    _ => "a number".into(),
                },
                "boolean" => "`true` or `false`".into(),
                other => other.to_string(),
            })
            .collect();
        words.join(" or ")
    }
}

/// `schema` after following a `$ref`, and the definition's name.
fn resolve<'a>(defs: &'a Map<String, Schema>, schema: &'a Schema, def: Option<&'a str>) -> (&'a Schema, Option<&'a str>) {
    match schema.get("$ref").and_then(Schema::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => match defs.get_key_value(name) {
            Some((name, target)) => (target, Some(name.as_str())),
            None => (schema, def),
        },
        None => (schema, def),
    }
}

fn types(schema: &Schema) -> Vec<&str> {
    match schema.get("type") {
        Some(Schema::String(t)) => vec![t.as_str()],
        Some(Schema::Array(ts)) => ts.iter().filter_map(Schema::as_str).collect(),
        _ => Vec::new(),
    }
}

fn required(schema: &Schema) -> Vec<&str> {
    schema.get("required").and_then(Schema::as_array).map_or_else(Vec::new, |r| r.iter().filter_map(Schema::as_str).collect())
}

fn bounds(schema: &Schema) -> (Option<f64>, Option<f64>) {
    let format_bounds = match schema.get("format").and_then(Schema::as_str) {
        Some("uint32") => (Some(0.0), Some(u32::MAX as f64)),
        Some("uint16") => (Some(0.0), Some(u16::MAX as f64)),
        Some("uint64") | Some("uint") => (Some(0.0), Some(u64::MAX as f64)),
        Some("int32") => (Some(i32::MIN as f64), Some(i32::MAX as f64)),
        _ => (None, None),
    };
    let low = schema.get("minimum").and_then(Schema::as_f64).or(format_bounds.0);
    let high = schema.get("maximum").and_then(Schema::as_f64).or(format_bounds.1);
    (low, high)
}

/// "a string" → "strings", "a mapping like `{…}`" → "mappings like `{…}`".
fn plural(words: &str) -> String {
    let rest = words.strip_prefix("a ").or_else(|| words.strip_prefix("an ")).unwrap_or(words);
    match rest.split_once(' ') {
        Some((noun, tail)) => format!("{noun}s {tail}"),
        None => format!("{rest}s"),
    }
}

fn first_sentence(text: &str) -> &str {
    let text = text.lines().next().unwrap_or(text);
    match text.find(". ") {
        Some(i) => &text[..i],
        None => text.trim_end_matches('.'),
    }
}

fn field(path: &str) -> String {
    if path.is_empty() {
        "the contract".into()
    } else {
        format!("`{path}`")
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{model, yaml};

    fn problems(text: &str) -> Vec<String> {
        let root = yaml::parse(text).unwrap().unwrap();
        check(&root, &model::json_schema(), text).into_iter().map(|p| format!("{}:{}: {}", p.at.line, p.at.column, p.message)).collect()
    }

    const HEAD: &str = "format: metricpact/v1\nname: billing\nversion: 1.0.0\n";

    #[test]
    fn a_clean_contract_has_no_problems() {
        for file in ["contracts/http-server.yaml", "contracts/rest-api.yaml", "contracts/grpc-service.yaml"] {
            let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
            assert_eq!(problems(&text), Vec::<String>::new(), "{file}");
        }
    }

    #[test]
    fn every_problem_comes_at_once_in_words() {
        let text = format!(
            "{HEAD}metric:\n  requests: {{name: x}}\nworkload:\n  target: billing\nroutes:\n  unmatched: others\n  raw_max_length: -1\nlabels:\n  - name: a\n    form: request.method\n  - 5\n"
        );
        assert_eq!(
            problems(&text),
            [
                "4:1: unknown key `metric` in the contract; did you mean `metrics`? (valid keys: format, name, version, description, metrics, labels, methods, routes, cardinality, client_metrics, workload, autoscaling, exposition, migrations, policy)",
                "7:11: `workload.target` must be a mapping like `{kind: Deployment, name: billing}`, found the string `billing`",
                "9:14: `routes.unmatched` must be one of `other`, `raw`, found `others`; did you mean `other`?",
                "10:19: `routes.raw_max_length` must be a whole number from 0 to 4294967295, found the number `-1`",
                "13:5: unknown key `form` in `labels[0]`; did you mean `from`? (valid keys: name, from, value, default, max_values, values)",
                "14:5: `labels[1]` must be a mapping like `{name: tenant, from: request.header.x-tenant}`, found the number `5`",
            ]
        );
    }

    #[test]
    fn missing_keys_say_what_they_are_for() {
        assert_eq!(
            problems("format: metricpact/v1\nversion: 1\nworkload: {target: {kind: Deployment}}\n"),
            [
                "1:1: missing key `name` in the contract (Contract name: lowercase letters, digits and `-` (it names rendered Kubernetes objects))",
                "3:20: missing key `name` in `workload.target` (Name of the Deployment / StatefulSet)",
            ]
        );
    }
}
