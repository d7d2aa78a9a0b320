//! The label pipeline: one sample's series — its name and labels — written straight into the
//! output with the contract's edits applied in a fixed order: labels renamed, values mapped,
//! injected labels overwriting or added, dropped labels left out, migrated labels repeated under
//! their old names. Every path of the rewrite (streamed samples, held families, their fallback)
//! writes through it. It works on slices of the input; per sample it allocates only for a regex
//! value map or an escaped value a map looks up, and the per-label lookups are made once per
//! sequence of label names (a [`Plan`]), not for every sample.

use super::error::Problem;
use super::line::{prefix_is, Sample};
use super::rules::{map_value, Rewriter, ValueRule};

/// Which edits a write applies beyond renames, injections and aliases (which always apply).
#[derive(Clone, Copy)]
pub(super) struct Edits<'a> {
    /// Value maps apply (not in the fallback of a family whose merge was refused).
    pub map_values: bool,
    /// Labels to leave out.
    pub drops: &'a [String],
    /// Refuse a series with a label twice even without renames (a held family's samples are
    /// keyed by their labels, so a duplicate would make two series one).
    pub strict: bool,
}

/// What the pipeline does with one label of a sample.
#[derive(Clone, Copy)]
enum Step<'a> {
    Drop,
    /// The sample's value, under this (new) name.
    Raw(&'a str),
    /// An injected label's value (escaped) overwrites the sample's.
    Inject(&'a str, &'a str),
    /// The sample's value through a value map.
    Map(&'a str, &'a ValueRule),
}

/// The pipeline worked out for one sequence of label names: the per-label lookups (renames,
/// injections, value maps, drops, aliases, duplicates) are made once, not for every sample.
pub(super) struct Plan<'a> {
    /// The label names (as the app wrote them) this plan is for.
    names: Vec<&'a str>,
    steps: Vec<Step<'a>>,
    /// Injected labels the sample lacks: (name, escaped value).
    appended: Vec<(&'a str, &'a str)>,
    /// Migrated labels: the old name, and the written label whose value it repeats.
    aliases: Vec<(&'a str, usize)>,
    /// A label name occurs twice after the renames.
    duplicate: bool,
}

/// How many plans a cache keeps: a histogram's `_bucket` and `_sum`/`_count` samples differ by
/// `le`, and some families mix label sets.
const PLANS: usize = 4;

/// The plans of one kind of write (streamed, held, a refused merge's fallback: each applies
/// different edits), with the pipeline's scratch space.
#[derive(Default)]
pub(super) struct Plans<'a> {
    plans: Vec<Plan<'a>>,
    /// The plan the next miss replaces once the cache is full.
    next: usize,
    /// Where each written label's value went in the output (a migrated label repeats it).
    values: Vec<(u32, u32)>,
}

impl Plans<'_> {
    /// Forgets the plans (the edits they were made for changed: the next family drops others).
    pub fn clear(&mut self) {
        self.plans.clear();
        self.next = 0;
    }
}

/// Equality of the short strings compared for every sample (suffixes, family and label names),
/// without the call into the C library's memcmp that `==` makes.
#[inline]
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && prefix_is(a, b)
}

impl<'a> Rewriter {
    #[inline]
    fn label_name(&'a self, name: &'a str) -> &'a str {
        if self.label_renames.is_empty() {
            return name;
        }
        self.label_renames.get(name).map_or(name, String::as_str)
    }

    /// Whether a sample's labels need the general pipeline (otherwise they are copied as written
    /// and the injected labels appended: [`Rewriter::write_verbatim_series`]).
    pub(super) fn edits_labels(&self, edits: Edits<'_>) -> bool {
        !self.label_renames.is_empty() || !self.label_aliases.is_empty() || !edits.drops.is_empty() || (edits.map_values && !self.value_maps.is_empty()) || edits.strict
    }

    /// Writes `name{labels}` of `sample` into `out` (`name`: the series' new name, written as
    /// `name` + `suffix`, or the sample's own when `None`), every edit applied; `plans` caches
    /// the plans of this kind of write. Fails on a series whose labels, renamed, name one label
    /// twice (checked with renames or `strict`).
    #[inline(always)]
    pub(super) fn write_series(
        &'a self,
        out: &mut Vec<u8>,
        name: Option<&str>,
        suffix: &str,
        sample: &Sample<'a, '_>,
        edits: Edits<'_>,
        plans: &mut Plans<'a>,
    ) -> Result<(), Problem> {
        if !self.edits_labels(edits) && self.write_verbatim_series(out, name, suffix, sample) {
            return Ok(());
        }
        self.write_edited_series(out, name, suffix, sample, edits, plans)
    }

    /// The plan for a sample with these labels (the cached one when the family's previous
    /// samples had the same label names, as they nearly always do).
    fn plan<'p>(&'a self, plans: &'p mut Plans<'a>, labels: &[(&'a str, &'a str)], edits: Edits<'_>) -> &'p Plan<'a> {
        let hit = plans.plans.iter().position(|p| p.names.len() == labels.len() && p.names.iter().zip(labels).all(|(a, (b, _))| same(a.as_bytes(), b.as_bytes())));
        let at = match hit {
            Some(at) => at,
            None => {
                let plan = self.make_plan(labels, edits);
                if plans.plans.len() < PLANS {
                    plans.plans.push(plan);
                    plans.plans.len() - 1
                } else {
                    let at = plans.next;
                    plans.next = (at + 1) % PLANS;
                    plans.plans[at] = plan;
                    at
                }
            }
        };
        &plans.plans[at]
    }

    /// Works out what the pipeline does with a series of these label names.
    fn make_plan(&'a self, labels: &[(&'a str, &'a str)], edits: Edits<'_>) -> Plan<'a> {
        let renamed: Vec<&'a str> = labels.iter().map(|(name, _)| self.label_name(name)).collect();
        let duplicate = (edits.strict || !self.label_renames.is_empty())
            && renamed.iter().enumerate().any(|(i, a)| renamed[i + 1..].iter().any(|b| same(a.as_bytes(), b.as_bytes())));
        let dropped = |name: &str| edits.drops.iter().any(|d| same(d.as_bytes(), name.as_bytes()));
        let mut written: Vec<&'a str> = Vec::new();
        let steps = renamed
            .iter()
            .map(|&name| {
                if dropped(name) {
                    return Step::Drop;
                }
                written.push(name);
                match self.injects.iter().find(|i| same(i.name.as_bytes(), name.as_bytes())) {
                    Some(inject) if inject.overwrite => Step::Inject(name, &inject.escaped_value),
                    _ => match self.value_maps.get(name).filter(|_| edits.map_values) {
                        None => Step::Raw(name),
                        Some(rule) => Step::Map(name, rule),
                    },
                }
            })
            .collect();
        let mut appended = Vec::new();
        for inject in &self.injects {
            let present = renamed.iter().any(|n| same(n.as_bytes(), inject.name.as_bytes()));
            if !present && !dropped(&inject.name) {
                written.push(&inject.name);
                appended.push((inject.name.as_str(), inject.escaped_value.as_str()));
            }
        }
        // A migrated label repeats the new one's value under the old name, unless the series
        // has the old name itself.
        let aliases = self
            .label_aliases
            .iter()
            .filter(|(_, old, _)| !written.iter().any(|w| same(w.as_bytes(), old.as_bytes())))
            .filter_map(|(new, old, _)| Some((old.as_str(), written.iter().position(|w| same(w.as_bytes(), new.as_bytes()))?)))
            .collect();
        Plan { names: labels.iter().map(|(name, _)| *name).collect(), steps, appended, aliases, duplicate }
    }

    /// The general case of [`Rewriter::write_series`], out of line so the verbatim fast path
    /// stays small where it is inlined: the sample's plan, then its labels written by it.
    #[inline(never)]
    fn write_edited_series(
        &'a self,
        out: &mut Vec<u8>,
        name: Option<&str>,
        suffix: &str,
        sample: &Sample<'a, '_>,
        edits: Edits<'_>,
        plans: &mut Plans<'a>,
    ) -> Result<(), Problem> {
        let mut values = std::mem::take(&mut plans.values);
        let plan = self.plan(plans, sample.labels, edits);
        if plan.duplicate {
            plans.values = values;
            return Err(Problem::DuplicateLabel);
        }
        match name {
            Some(name) => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(suffix.as_bytes());
            }
            None => out.extend_from_slice(sample.name.as_bytes()),
        }
        values.clear();
        for (step, (_, raw)) in plan.steps.iter().zip(sample.labels) {
            match *step {
                Step::Drop => {}
                Step::Raw(name) => label(out, &mut values, name, raw),
                Step::Inject(name, value) => label(out, &mut values, name, value),
                Step::Map(name, rule) => label(out, &mut values, name, &map_value(rule, raw)),
            }
        }
        for &(name, value) in &plan.appended {
            label(out, &mut values, name, value);
        }
        for &(old, at) in &plan.aliases {
            let (a, b) = values[at];
            // Follows the label it repeats, so never the first one.
            out.push(b',');
            out.extend_from_slice(old.as_bytes());
            out.extend_from_slice(b"=\"");
            out.extend_from_within(a as usize..b as usize);
            out.push(b'"');
        }
        if !values.is_empty() {
            out.push(b'}');
        }
        plans.values = values;
        Ok(())
    }

    /// The fast path of samples whose labels no rule rewrites: the label block is copied as the
    /// app wrote it and the injected labels appended (all of them at once in the usual case that
    /// the sample has none of them). `false` (nothing written) when an injected label must
    /// overwrite one the sample has.
    #[inline(always)]
    fn write_verbatim_series(&self, out: &mut Vec<u8>, name: Option<&str>, suffix: &str, sample: &Sample<'_, '_>) -> bool {
        if self.injects.len() > 64 {
            return false;
        }
        // Bit i: the sample already has injects[i] (kept, as on_conflict says).
        let mut present = 0u64;
        for (label, _) in sample.labels {
            for (i, inject) in self.injects.iter().enumerate() {
                if same(label.as_bytes(), inject.name.as_bytes()) {
                    if inject.overwrite {
                        return false;
                    }
                    present |= 1 << i;
                }
            }
        }
        // Inside the braces, without a trailing comma or blanks (`{a="1",}` is valid input).
        let text = sample.label_text.as_bytes();
        let mut inner: &[u8] = match (text.first(), text.last()) {
            (Some(b'{'), Some(b'}')) if !sample.labels.is_empty() && text.len() >= 2 => &text[1..text.len() - 1],
            _ => b"",
        };
        while let Some((b' ' | b',', rest)) = inner.split_last() {
            inner = rest;
        }
        let braces = !inner.is_empty() || present.count_ones() as usize != self.injects.len();
        match name {
            Some(name) => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(suffix.as_bytes());
                if braces {
                    out.push(b'{');
                    out.extend_from_slice(inner);
                }
            }
            // The name and the labels as written, in one piece.
            None if braces && !inner.is_empty() => out.extend_from_slice(&sample.line.as_bytes()[..sample.name.len() + 1 + inner.len()]),
            None if braces => {
                out.extend_from_slice(sample.name.as_bytes());
                out.push(b'{');
            }
            None => out.extend_from_slice(sample.name.as_bytes()),
        }
        if braces {
            if present == 0 {
                let all = if inner.is_empty() { &self.injected_text[1..] } else { &self.injected_text[..] };
                out.extend_from_slice(all.as_bytes());
            } else {
                let mut first = inner.is_empty();
                for (i, inject) in self.injects.iter().enumerate() {
                    if present & (1 << i) != 0 {
                        continue;
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(inject.name.as_bytes());
                    out.extend_from_slice(b"=\"");
                    out.extend_from_slice(inject.escaped_value.as_bytes());
                    out.push(b'"');
                }
            }
            out.push(b'}');
        }
        true
    }
}

/// Writes one label (`{` before the first, `,` before the others), remembering where its value
/// went.
#[inline(always)]
fn label(out: &mut Vec<u8>, values: &mut Vec<(u32, u32)>, name: &str, value: &str) {
    out.push(if values.is_empty() { b'{' } else { b',' });
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    let start = out.len() as u32;
    out.extend_from_slice(value.as_bytes());
    values.push((start, out.len() as u32));
    out.push(b'"');
}
