//! The contract's exposition rules, compiled once per configuration: which families stay, their
//! new names, label renames, value maps, label drops, injected labels and running migrations,
//! and the lookups the rewrite makes of them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use regex::Regex;

use crate::config::{ExpositionSpec, MigrationKind, NameMatch, NodeLookup, Source};
use crate::label_values::sanitize;

use super::line::{escape_label_value, unescape_label_value};

struct Compiled<T> {
    regex: Regex,
    value: T,
}

fn whole(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex `{pattern}`: {e}"))
}

pub(super) enum ValueRule {
    /// Value (unescaped) → new value, escaped once here.
    Table(FastMap<String, String>),
    Regex(Regex, String),
}

/// Hashes held series keys: they come from the app's exposition, which the sidecar trusts as much
/// as the app itself, so a fast non-keyed hash (FxHash's) is enough.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Maps keyed by names from the contract or the app's exposition (see [`FastHasher`]).
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A map keyed by label names, looked up for every label of every sample: the few entries a
/// contract usually has are scanned (comparing lengths first), which costs less than hashing
/// the name; many go into a hash map.
pub(super) enum NameMap<V> {
    Few(Vec<(String, V)>),
    Many(FastMap<String, V>),
}

/// Up to this many entries are scanned.
const FEW: usize = 8;

impl<V> NameMap<V> {
    /// Builds the map; a later entry for the same name replaces an earlier one.
    fn new(entries: impl IntoIterator<Item = (String, V)>) -> NameMap<V> {
        let mut few: Vec<(String, V)> = Vec::new();
        for (name, value) in entries {
            match few.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = value,
                None => few.push((name, value)),
            }
        }
        if few.len() <= FEW {
            NameMap::Few(few)
        } else {
            NameMap::Many(few.into_iter().collect())
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            NameMap::Few(few) => few.is_empty(),
            NameMap::Many(many) => many.is_empty(),
        }
    }

    #[inline]
    pub fn get(&self, name: &str) -> Option<&V> {
        match self {
            NameMap::Few(few) => few.iter().find(|(n, _)| super::edit::same(n.as_bytes(), name.as_bytes())).map(|(_, v)| v),
            NameMap::Many(many) => many.get(name),
        }
    }
}

/// A label injected into every series: name and value escaped once at configure time.
pub(super) struct Inject {
    pub name: String,
    pub escaped_value: String,
    pub overwrite: bool,
}

/// The configured rewriter; build once, use for every scrape.
pub struct Rewriter {
    keep: Option<Vec<Regex>>,
    drop: Vec<Regex>,
    pub(super) drop_series: Vec<(String, Regex)>,
    exact_renames: FastMap<String, String>,
    regex_renames: Vec<Compiled<String>>,
    pub(super) label_renames: NameMap<String>,
    pub(super) value_maps: NameMap<ValueRule>,
    label_drops: Vec<(String, Option<Vec<Regex>>)>,
    pub(super) injects: Vec<Inject>,
    /// `,name="value"` of every injected label, in order: what most samples get appended.
    pub(super) injected_text: String,
    pub(super) required: Vec<String>,
    pub(super) max_body_bytes: usize,
    /// Migrated families: final name (text naming) → (old name, sunset in Unix seconds).
    pub(super) metric_aliases: FastMap<String, (String, u64)>,
    /// Migrated labels: (new name, old name, sunset in Unix seconds).
    pub(super) label_aliases: Vec<(String, String, u64)>,
}

impl Rewriter {
    /// Compiles `spec`. `node` resolves node-metadata sources of injected labels (configure time).
    pub fn new(spec: &ExpositionSpec, node: &NodeLookup<'_>, max_value_length: usize) -> Result<Rewriter, String> {
        let regexes = |list: &[String]| list.iter().map(|p| whole(p)).collect::<Result<Vec<_>, _>>();
        let mut exact_renames = FastMap::default();
        let mut regex_renames = Vec::new();
        for rename in &spec.rename_metrics {
            match &rename.matcher {
                NameMatch::Exact(from) => {
                    exact_renames.entry(from.clone()).or_insert_with(|| rename.to.clone());
                }
                NameMatch::Regex(pattern) => regex_renames.push(Compiled { regex: whole(pattern)?, value: rename.to.clone() }),
            }
        }
        let mut value_maps = Vec::new();
        for map in &spec.map_values {
            let rule = match (&map.values, &map.regex, &map.to) {
                (Some(values), None, None) => ValueRule::Table(values.iter().map(|(k, v)| (k.clone(), escape_label_value(v))).collect()),
                (None, Some(regex), Some(to)) => ValueRule::Regex(whole(regex)?, to.clone()),
                _ => return Err(format!("map_values for `{}` needs either `values` or `regex` with `to`", map.label)),
            };
            value_maps.push((map.label.clone(), rule));
        }
        let mut injects = Vec::new();
        for inject in &spec.inject_labels {
            let value = match &inject.source {
                Source::Constant { value } => Some(value.clone().into_bytes()),
                Source::Node { key, field } => node(key, field.as_deref()),
                other => return Err(format!("inject_labels `{}`: source {other:?} is not available for the exposition", inject.name)),
            };
            let value = value.filter(|v| !v.is_empty()).unwrap_or_else(|| inject.default.clone().into_bytes());
            if value.is_empty() {
                continue;
            }
            let clean = sanitize(&value, max_value_length);
            injects.push(Inject { name: inject.name.clone(), escaped_value: escape_label_value(&clean), overwrite: inject.overwrite });
        }
        let injected_text = injects.iter().map(|i| format!(",{}=\"{}\"", i.name, i.escaped_value)).collect();
        Ok(Rewriter {
            injected_text,
            keep: spec.keep_metrics.as_deref().map(regexes).transpose()?,
            drop: regexes(&spec.drop_metrics)?,
            drop_series: spec.drop_series.iter().map(|d| Ok((d.label.clone(), whole(&d.regex)?))).collect::<Result<_, String>>()?,
            exact_renames,
            regex_renames,
            label_renames: NameMap::new(spec.rename_labels.iter().map(|r| (r.from.clone(), r.to.clone()))),
            value_maps: NameMap::new(value_maps),
            label_drops: spec
                .label_drops()
                .map(|(label, metrics)| Ok((label.to_string(), metrics.map(regexes).transpose()?)))
                .collect::<Result<_, String>>()?,
            injects,
            required: spec.require_metrics.clone(),
            max_body_bytes: spec.max_body_bytes as usize,
            metric_aliases: spec
                .migrations
                .iter()
                .filter(|m| m.kind == MigrationKind::Metric)
                .map(|m| (m.new.clone(), (m.old.clone(), m.sunset_unix)))
                .collect(),
            label_aliases: label_aliases(&spec.migrations),
        })
    }

    /// Stops writing old names whose sunset has passed at `now_unix` (seconds); returns whether
    /// any migration ended.
    pub fn expire_migrations(&mut self, now_unix: u64) -> bool {
        let before = self.metric_aliases.len() + self.label_aliases.len();
        self.metric_aliases.retain(|_, (_, sunset)| *sunset > now_unix);
        self.label_aliases.retain(|(_, _, sunset)| *sunset > now_unix);
        before != self.metric_aliases.len() + self.label_aliases.len()
    }

    /// The earliest sunset of a migration still running, if any.
    pub fn next_sunset(&self) -> Option<u64> {
        let metrics = self.metric_aliases.values().map(|(_, sunset)| *sunset);
        metrics.chain(self.label_aliases.iter().map(|(_, _, sunset)| *sunset)).min()
    }

    /// The old family name to write a migrated family under as well: `new_key` is the family's
    /// final name as the text format has it, `suffix` what the output's family name lacks of it.
    pub(super) fn old_family_name(&self, new_key: &str, suffix: &str, companion: bool) -> Option<String> {
        let old = if companion {
            let base = new_key.strip_suffix("_created")?;
            let (old, _) = self.metric_aliases.get(&format!("{base}_total")).or_else(|| self.metric_aliases.get(base))?;
            format!("{}_created", old.strip_suffix("_total").unwrap_or(old))
        } else {
            self.metric_aliases.get(new_key)?.0.clone()
        };
        Some(old.strip_suffix(suffix).filter(|_| !suffix.is_empty()).unwrap_or(&old).to_string())
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The family's new match key, if a rename applies (`key` as the app names the metric).
    pub(super) fn renamed(&self, key: &str) -> Option<String> {
        if let Some(to) = self.exact_renames.get(key) {
            return Some(to.clone());
        }
        for rename in &self.regex_renames {
            if let Some(caps) = rename.regex.captures(key) {
                let mut out = String::new();
                caps.expand(&rename.value, &mut out);
                // A capture can still make a bad name (`$1` of `x_(\d+)`): the family keeps its own.
                return crate::names::is_valid_metric_name(&out).then_some(out);
            }
        }
        None
    }

    pub(super) fn keeps(&self, key: &str) -> bool {
        if let Some(keep) = &self.keep {
            if !keep.iter().any(|r| r.is_match(key)) {
                return false;
            }
        }
        !self.drop.iter().any(|r| r.is_match(key))
    }

    /// Labels to drop from family `key` (final name).
    pub(super) fn drops_for(&self, key: &str) -> Vec<String> {
        self.label_drops
            .iter()
            .filter(|(_, metrics)| metrics.as_ref().is_none_or(|m| m.iter().any(|r| r.is_match(key))))
            .map(|(label, _)| label.clone())
            .collect()
    }
}

impl ExpositionSpec {
    fn label_drops(&self) -> impl Iterator<Item = (&str, Option<&[String]>)> {
        self.drop_labels.iter().map(|d| (d.label.as_str(), d.metrics.as_deref()))
    }
}

/// The label migrations as (label the series carries, old name, sunset): each old name once (the
/// first migration naming it: a series with the label twice would be refused by Prometheus), and
/// a chain (`a` renamed to `b`, later `b` to `c`) followed to the label the series has today, so
/// every old name of the chain is written beside it, whatever the order of the migrations.
fn label_aliases(migrations: &[crate::config::Migration]) -> Vec<(String, String, u64)> {
    let labels: Vec<_> = migrations.iter().filter(|m| m.kind == MigrationKind::Label).collect();
    let mut aliases: Vec<(String, String, u64)> = Vec::new();
    for m in &labels {
        if aliases.iter().any(|(_, old, _)| *old == m.old) {
            continue;
        }
        let mut current = m.new.as_str();
        // At most one step per migration: a cycle stops where it started.
        for _ in 0..labels.len() {
            match labels.iter().find(|next| next.old == current) {
                Some(next) if next.new != m.old => current = &next.new,
                _ => break,
            }
        }
        aliases.push((current.to_string(), m.old.clone(), m.sunset_unix));
    }
    aliases
}

/// A label value after the value maps: the mapped value (escaped), or `raw` when no rule maps it.
/// Borrowed from the table or the input in all but the regex case.
pub(super) fn map_value<'a>(rule: &'a ValueRule, raw: &'a str) -> Cow<'a, str> {
    let value = unescape_label_value(raw);
    match rule {
        ValueRule::Table(table) => table.get(value.as_ref()).map_or(Cow::Borrowed(raw), |v| Cow::Borrowed(v.as_str())),
        ValueRule::Regex(regex, to) => match regex.captures(&value) {
            Some(caps) => {
                let mut out = String::new();
                caps.expand(to, &mut out);
                Cow::Owned(escape_label_value(&out))
            }
            None => Cow::Borrowed(raw),
        },
    }
}
