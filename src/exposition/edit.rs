//! The label pipeline: one sample's series — its name and labels — written straight into the
//! output with the contract's edits applied in a fixed order: labels renamed, values mapped,
//! injected labels overwriting or added, dropped labels left out, migrated labels repeated under
//! their old names. Every path of the rewrite (streamed samples, held families, their fallback)
//! writes through it; it works on slices of the input and allocates only for a regex value map.

use super::error::Problem;
use super::line::{prefix_is, Sample};
use super::rules::{map_value, Rewriter};

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

/// Where one written label's name and value sit in the output (for migrated labels, whose old
/// name repeats the value, and for the check that an alias does not exist already).
#[derive(Clone, Copy)]
pub(super) struct Written {
    name: (u32, u32),
    value: (u32, u32),
}

/// Equality of the short strings compared for every sample (suffixes, family and label names),
/// without the call into the C library's memcmp that `==` makes.
#[inline]
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && prefix_is(a, b)
}

impl Rewriter {
    #[inline]
    fn label_name<'a>(&'a self, name: &'a str) -> &'a str {
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
    /// `name` + `suffix`, or the sample's own when `None`), every edit applied; `written` is
    /// scratch space. Fails on a series that would carry a label twice.
    #[inline(always)]
    pub(super) fn write_series(
        &self,
        out: &mut Vec<u8>,
        name: Option<&str>,
        suffix: &str,
        sample: &Sample<'_, '_>,
        edits: Edits<'_>,
        written: &mut Vec<Written>,
    ) -> Result<(), Problem> {
        if !self.edits_labels(edits) && self.write_verbatim_series(out, name, suffix, sample) {
            return Ok(());
        }
        self.write_edited_series(out, name, suffix, sample, edits, written)
    }

    #[inline(never)]
    fn write_edited_series(
        &self,
        out: &mut Vec<u8>,
        name: Option<&str>,
        suffix: &str,
        sample: &Sample<'_, '_>,
        edits: Edits<'_>,
        written: &mut Vec<Written>,
    ) -> Result<(), Problem> {
        // Each label's name after the renames, looked up once (on the stack for the usual few).
        const ON_STACK: usize = 32;
        let mut stack = [""; ON_STACK];
        let heap: Vec<&str>;
        let names: &[&str] = if sample.labels.len() <= ON_STACK {
            for (slot, (name, _)) in stack.iter_mut().zip(sample.labels) {
                *slot = self.label_name(name);
            }
            &stack[..sample.labels.len()]
        } else {
            heap = sample.labels.iter().map(|(name, _)| self.label_name(name)).collect();
            &heap
        };
        if edits.strict || !self.label_renames.is_empty() {
            for (i, a) in names.iter().enumerate() {
                if names[i + 1..].iter().any(|b| same(a.as_bytes(), b.as_bytes())) {
                    return Err(Problem::DuplicateLabel);
                }
            }
        }
        match name {
            Some(name) => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(suffix.as_bytes());
            }
            None => out.extend_from_slice(sample.name.as_bytes()),
        }
        written.clear();
        let dropped = |name: &str| edits.drops.iter().any(|d| same(d.as_bytes(), name.as_bytes()));
        for (&name, (_, raw)) in names.iter().zip(sample.labels) {
            if dropped(name) {
                continue;
            }
            match self.injects.iter().find(|i| same(i.name.as_bytes(), name.as_bytes())) {
                Some(inject) if inject.overwrite => label(out, written, name, &inject.escaped_value),
                _ => match self.value_maps.get(name).filter(|_| edits.map_values) {
                    None => label(out, written, name, raw),
                    Some(rule) => label(out, written, name, &map_value(rule, raw)),
                },
            }
        }
        for inject in &self.injects {
            let present = names.iter().any(|n| same(n.as_bytes(), inject.name.as_bytes()));
            if !present && !dropped(&inject.name) {
                label(out, written, &inject.name, &inject.escaped_value);
            }
        }
        for (new, old, _) in &self.label_aliases {
            let has = |wanted: &str| written.iter().find(|w| same(&out[w.name.0 as usize..w.name.1 as usize], wanted.as_bytes())).copied();
            if has(old).is_some() {
                continue;
            }
            if let Some(w) = has(new) {
                let (a, b) = (w.value.0 as usize, w.value.1 as usize);
                out.push(if written.is_empty() { b'{' } else { b',' });
                out.extend_from_slice(old.as_bytes());
                out.extend_from_slice(b"=\"");
                out.extend_from_within(a..b);
                out.push(b'"');
            }
        }
        if !written.is_empty() {
            out.push(b'}');
        }
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
        let inner = sample
            .label_text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or("")
            .trim_end_matches([' ', ',']);
        let inner = if sample.labels.is_empty() { "" } else { inner };
        let braces = !inner.is_empty() || present.count_ones() as usize != self.injects.len();
        match name {
            Some(name) => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(suffix.as_bytes());
                if braces {
                    out.push(b'{');
                    out.extend_from_slice(inner.as_bytes());
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

/// Writes one label (`{` before the first, `,` before the others), remembering where it went.
#[inline(always)]
fn label(out: &mut Vec<u8>, written: &mut Vec<Written>, name: &str, value: &str) {
    out.push(if written.is_empty() { b'{' } else { b',' });
    let name_start = out.len() as u32;
    out.extend_from_slice(name.as_bytes());
    let name_end = out.len() as u32;
    out.extend_from_slice(b"=\"");
    let value_start = out.len() as u32;
    out.extend_from_slice(value.as_bytes());
    written.push(Written { name: (name_start, name_end), value: (value_start, out.len() as u32) });
    out.push(b'"');
}
