//! The rewrite's state machine over a body's lines: which family a line belongs to, its
//! metadata (HELP/TYPE/UNIT, kept in place, renamed with the family), its samples — written
//! straight out, or held back while a dropped label or a value map may merge series — and what
//! each family becomes when it ends.

use std::collections::HashSet;
use std::hash::Hasher;

use super::edit::{same, Edits, Plans};
use super::error::{Problem, RewriteError};
use super::format::{Format, Kind};
use super::line::{self, parse_sample, unescape_label_value, Sample};
use super::rules::{FastHasher, FastMap, Rewriter};
use super::RewriteStats;

/// One family being rewritten.
struct Family {
    /// Name on the TYPE line / of untyped samples, as the app wrote it.
    name: String,
    kind: Kind,
    /// New family name (what replaces `name`).
    new_name: String,
    /// `new_name` is `name`: samples keep the name the app wrote.
    same_name: bool,
    keep: bool,
    /// Labels to drop (with aggregation) in this family.
    drops: Vec<String>,
    /// Samples are held and merged (labels dropped, or values mapped onto each other).
    hold: bool,
    /// A text-format `x_created` gauge that belongs to counter/histogram/summary `x`.
    created_companion: bool,
    /// A sample of it has been written (it counts as present for `require`).
    emitted: bool,
    /// For a migrated family: where its output starts, and the old name to repeat it under.
    alias: Option<(usize, String)>,
}

/// The samples of the held family, until it ends (one per rewrite: its buffers serve every held
/// family of the body). They are written into the output as they come, rewritten, each line
/// with its value, timestamp and exemplar — what the family emits when no two of its series
/// merged — and replaced when the family ends if some did.
#[derive(Default)]
struct Held {
    /// Where the held samples start in the output, once the first is written.
    start: Option<usize>,
    /// What the family writes besides samples once they started (a HELP after them, free
    /// comments): it goes before them, where a held family always had it.
    prefix: Vec<u8>,
    /// The merged samples, built before they replace the held ones.
    merged: Vec<u8>,
    /// Distinct series, in order of appearance.
    series: Vec<HeldSeries>,
    /// Hash of a series' bytes → the last of `series` with that hash (earlier ones chained by
    /// `next`).
    index: FastMap<u64, u32>,
    /// Each held sample's input line (offsets into the body) and suffix: rewritten again without
    /// value maps and drops if the merge is refused.
    lines: Vec<(u32, u32, &'static str)>,
    collided: bool,
    /// Two series merged that may not be summed (gauges, quantiles): the family keeps its labels.
    refuse: bool,
}

struct HeldSeries {
    /// `name{labels}` in the output.
    key: (usize, usize),
    value: f64,
    /// The next series with the same hash.
    next: u32,
}

const NO_SERIES: u32 = u32::MAX;

impl Held {
    fn clear(&mut self) {
        self.start = None;
        self.prefix.clear();
        self.series.clear();
        self.index.clear();
        self.lines.clear();
        self.collided = false;
        self.refuse = false;
    }

    /// The index of the series `out[key.0..key.1]` if it is held already; else it is added.
    fn find_or_add(&mut self, out: &[u8], key: (usize, usize), value: f64) -> Option<usize> {
        let bytes = &out[key.0..key.1];
        let mut hasher = FastHasher::default();
        hasher.write(bytes);
        let hash = hasher.finish();
        let head = self.index.get(&hash).copied().unwrap_or(NO_SERIES);
        let mut at = head;
        while at != NO_SERIES {
            let series = &self.series[at as usize];
            if &out[series.key.0..series.key.1] == bytes {
                return Some(at as usize);
            }
            at = series.next;
        }
        self.index.insert(hash, self.series.len() as u32);
        self.series.push(HeldSeries { key, value, next: head });
        None
    }
}

/// State of one rewrite.
pub(super) struct Run<'a> {
    rw: &'a Rewriter,
    /// The body (held samples are read again from it).
    body: &'a str,
    /// Format of the body read.
    format: Format,
    /// Format written.
    output: Format,
    pub out: Vec<u8>,
    family: Option<Family>,
    /// Match key of the previous family (to recognize `_created` companions).
    last_family: Option<String>,
    /// Metadata lines (HELP/UNIT) seen before their family's TYPE line or first sample.
    pending: Vec<(String, String)>,
    pub emitted: HashSet<String>,
    pub stats: RewriteStats,
    held: Held,
    /// The label pipeline's plans for streamed samples, held ones (per family: their drops
    /// differ) and a refused merge's fallback.
    streamed: Plans<'a>,
    holding: Plans<'a>,
    unmerged: Plans<'a>,
    /// Scratch space for an OpenMetrics sample's value and timestamp converted to text.
    rest: String,
}

impl<'a> Run<'a> {
    pub fn new(rw: &'a Rewriter, body: &'a str, format: Format, output: Format) -> Run<'a> {
        Run {
            rw,
            body,
            format,
            output,
            out: Vec::with_capacity(body.len() + body.len() / 4),
            family: None,
            last_family: None,
            pending: Vec::new(),
            emitted: HashSet::new(),
            stats: RewriteStats::default(),
            held: Held::default(),
            streamed: Plans::default(),
            holding: Plans::default(),
            unmerged: Plans::default(),
            rest: String::new(),
        }
    }

    /// How much of the output is final: all of it but a held family's samples, which may merge.
    #[inline]
    pub fn final_len(&self) -> usize {
        self.held.start.unwrap_or(self.out.len())
    }

    /// Ends the body (or the part before `# EOF`): what is still open or pending is written.
    pub fn end(&mut self) {
        self.finish_family();
        self.flush_pending();
        self.finish_family();
    }

    pub fn line(&mut self, line: &'a str, line_no: usize, labels: &mut Vec<(&'a str, &'a str)>) -> Result<(), RewriteError> {
        if line.is_empty() {
            if self.format == Format::OpenMetrics {
                return Err(RewriteError::at(line_no, Problem::EmptyLineInOpenMetrics));
            }
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(line, comment, line_no);
        }
        // Samples mostly follow their family's TYPE line: its name need not be scanned again.
        let hint = self.family.as_ref().map_or("", |f| f.name.as_str());
        let sample = parse_sample(line, labels, hint).ok_or(RewriteError::at(line_no, Problem::MalformedSample))?;
        self.sample(sample, line_no)
    }

    fn comment(&mut self, line: &str, comment: &str, line_no: usize) -> Result<(), RewriteError> {
        let mut parts = comment.trim_start().splitn(3, ' ');
        // `#HELP` is no HELP line (Prometheus needs a blank after the `#`), nor is UNIT in the
        // text format: free comments.
        let keyword = parts
            .next()
            .filter(|k| comment.starts_with([' ', '\t']) && (*k != "UNIT" || self.format == Format::OpenMetrics))
            .unwrap_or("");
        if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
            if self.format == Format::OpenMetrics {
                return Err(RewriteError::at(line_no, Problem::UnknownCommentInOpenMetrics));
            }
            // A free comment in the text format: kept only outside dropped families, and after
            // the HELP lines before it (held until their family's TYPE line or sample).
            if !self.pending.is_empty() {
                self.pending.push(("#".into(), line.to_string()));
            } else if self.family.as_ref().is_none_or(|f| f.keep) {
                let out = self.meta_out();
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
            return Ok(());
        }
        let name = parts.next().filter(|n| line::is_metric_name(n)).ok_or(RewriteError::at(line_no, Problem::MalformedMetadata))?;
        let rest = parts.next().unwrap_or("");
        if keyword == "TYPE" {
            let kind = Kind::parse(rest.trim()).ok_or(RewriteError::at(line_no, Problem::UnknownType))?;
            self.start_family(name, kind);
            return Ok(());
        }
        // HELP/UNIT: belongs to the open family if it names it (and no other metadata waits
        // before it), else to the next one.
        if self.pending.is_empty() && self.family.as_ref().is_some_and(|f| f.name == name) {
            self.emit_metadata(keyword, rest);
        } else {
            self.finish_family();
            if self.pending.first().is_some_and(|(_, n)| n != name) {
                self.flush_pending();
            }
            if self.pending.is_empty() {
                self.pending.push(("NAME".into(), name.to_string()));
            }
            self.pending.push((keyword.to_string(), rest.to_string()));
        }
        Ok(())
    }

    /// Emits metadata of a metric that never got a TYPE line or a sample.
    pub fn flush_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let Some((_, name)) = pending.first() else { return };
        self.open(&name.clone(), Kind::Unknown);
        for (keyword, rest) in pending.into_iter().skip(1) {
            self.emit_metadata(&keyword, &rest);
        }
    }

    fn start_family(&mut self, name: &str, kind: Kind) {
        self.finish_family();
        let pending_name = self.pending.first().map(|(_, n)| n.clone());
        let pending = if pending_name.as_deref() == Some(name) {
            std::mem::take(&mut self.pending)
        } else {
            // HELP/UNIT of another metric (one without a TYPE line or samples) keep their place.
            self.flush_pending();
            self.finish_family();
            Vec::new()
        };
        self.open(name, kind);
        // Metadata that came before the TYPE line keeps its place.
        for (keyword, rest) in pending.into_iter().skip(1) {
            self.emit_metadata(&keyword, &rest);
        }
        self.emit_type(kind);
    }

    /// Opens family `name`: decides keep/drop, its new name and the labels to drop.
    fn open(&mut self, name: &str, kind: Kind) {
        let rw = self.rw;
        // Rules see families as the text format names them.
        let suffix = kind.text_suffix(self.format);
        let key = format!("{name}{suffix}");
        let mut companion = false;
        let renamed = rw.renamed(&key).or_else(|| {
            // A text-format `x_created` gauge belongs to counter `x_total`, or histogram/summary `x`.
            let base = key.strip_suffix("_created")?;
            let parent = rw.renamed(&format!("{base}_total")).or_else(|| rw.renamed(base))?;
            companion = true;
            Some(format!("{}_created", parent.strip_suffix("_total").unwrap_or(&parent)))
        });
        if !companion && kind == Kind::Gauge {
            if let Some(base) = key.strip_suffix("_created") {
                companion = self.last_family.as_deref().is_some_and(|prev| prev == base || prev == format!("{base}_total"));
            }
        }
        let new_key = renamed.unwrap_or_else(|| key.clone());
        let new_name = new_key.strip_suffix(suffix).filter(|_| !suffix.is_empty()).unwrap_or(&new_key).to_string();
        let keep = rw.keeps(&key);
        if !keep {
            self.stats.families_dropped += 1;
        }
        // A companion `_created` gauge loses the labels its parent loses, keeping the earliest time.
        let drops_key = if companion { new_key.strip_suffix("_created").unwrap_or(&new_key).to_string() } else { new_key.clone() };
        let drops = rw.drops_for(&drops_key);
        let hold = !drops.is_empty() || !rw.value_maps.is_empty();
        let alias = if rw.metric_aliases.is_empty() || !keep {
            None
        } else {
            rw.old_family_name(&new_key, suffix, companion).map(|old| (self.out.len(), old))
        };
        self.last_family = Some(key.clone());
        // The held samples' plans were made for the previous family's drops.
        self.holding.clear();
        self.family = Some(Family {
            name: name.to_string(),
            kind,
            drops,
            hold,
            created_companion: companion,
            emitted: false,
            same_name: new_name == name,
            new_name,
            keep,
            alias,
        });
    }

    fn emit_type(&mut self, kind: Kind) {
        let Some(family) = &self.family else { return };
        if !family.keep {
            return;
        }
        // Converting OpenMetrics to text: the family takes its samples' name.
        let suffix = if self.output == Format::Text { kind.text_suffix(self.format) } else { "" };
        for part in ["# TYPE ", &family.new_name, suffix, " ", kind.keyword(self.output), "\n"] {
            self.out.extend_from_slice(part.as_bytes());
        }
    }

    /// Where metadata and comments go: the output, or before the held samples once they started.
    fn meta_out(&mut self) -> &mut Vec<u8> {
        if self.held.start.is_some() {
            &mut self.held.prefix
        } else {
            &mut self.out
        }
    }

    fn emit_metadata(&mut self, keyword: &str, rest: &str) {
        let Some(family) = &self.family else { return };
        if !family.keep {
            return;
        }
        if keyword == "#" {
            // A free comment that came with the metadata.
            let out = self.meta_out();
            out.extend_from_slice(rest.as_bytes());
            out.push(b'\n');
            return;
        }
        if keyword == "UNIT" {
            // Text has no UNIT; and a renamed family must still end in its unit, or the line goes.
            let unit = rest.trim();
            let in_unit = family.new_name.strip_suffix(unit).is_some_and(|n| n.ends_with('_'));
            if self.output == Format::Text || (!unit.is_empty() && !in_unit) {
                return;
            }
        }
        let suffix = if self.output == Format::Text { family.kind.text_suffix(self.format) } else { "" };
        let out = if self.held.start.is_some() { &mut self.held.prefix } else { &mut self.out };
        // (Not `meta_out()`: `family` still borrows `self.family`.)
        for part in ["# ", keyword, " ", &family.new_name, suffix] {
            out.extend_from_slice(part.as_bytes());
        }
        if !rest.is_empty() {
            out.push(b' ');
            out.extend_from_slice(rest.as_bytes());
        }
        out.push(b'\n');
    }

    /// The suffix of `sample_name` within the open family, if it belongs to it.
    /// `known_prefix`: the sample's name is already known to start with the family's name.
    fn suffix_in_family(&self, sample_name: &str, known_prefix: bool) -> Option<&'static str> {
        let family = self.family.as_ref()?;
        let (name, family_name) = (sample_name.as_bytes(), family.name.as_bytes());
        if name.len() < family_name.len() || !(known_prefix || same(&name[..family_name.len()], family_name)) {
            return None;
        }
        let rest = &name[family_name.len()..];
        family.kind.suffixes().iter().find(|s| same(s.as_bytes(), rest)).copied()
    }

    fn sample(&mut self, sample: Sample<'a, '_>, line_no: usize) -> Result<(), RewriteError> {
        // A sample after HELP/UNIT lines of another metric does not go back into the open family.
        let suffix = match self.suffix_in_family(sample.name, sample.starts_with_hint).filter(|_| self.pending.is_empty()) {
            Some(s) => s,
            None => {
                // An untyped sample (text format): its own family, metadata from `pending`.
                let pending = std::mem::take(&mut self.pending);
                self.finish_family();
                if pending.first().is_some_and(|(_, n)| n != sample.name) {
                    // HELP/UNIT of another metric (one without a TYPE line or samples) keep their place.
                    self.pending = pending.clone();
                    self.flush_pending();
                    self.finish_family();
                }
                self.open(sample.name, Kind::Unknown);
                if pending.first().is_some_and(|(_, n)| n == sample.name) {
                    for (keyword, rest) in pending.into_iter().skip(1) {
                        self.emit_metadata(&keyword, &rest);
                    }
                }
                ""
            }
        };
        let rw = self.rw;
        let Some(family) = &self.family else { return Ok(()) };
        if !family.keep {
            return Ok(());
        }
        // Drop series (original label names and values).
        for (label, regex) in &rw.drop_series {
            if let Some((_, raw)) = sample.labels.iter().find(|(n, _)| n == label) {
                if regex.is_match(&unescape_label_value(raw)) {
                    self.stats.series_dropped += 1;
                    return Ok(());
                }
            }
        }
        let rest = rest_as_output(self.format, self.output, &mut self.rest, sample.rest).ok_or(RewriteError::at(line_no, Problem::MalformedValue))?;
        if !family.emitted {
            self.emitted.insert(format!("{}{}", family.new_name, family.kind.text_suffix(self.format)));
        }
        let name = if family.same_name { None } else { Some(family.new_name.as_str()) };
        if !family.hold {
            // The common path: written straight out.
            let edits = Edits { map_values: false, drops: &[], strict: false };
            rw.write_series(&mut self.out, name, suffix, &sample, edits, &mut self.streamed).map_err(|p| RewriteError::at(line_no, p))?;
            write_rest(&mut self.out, rest);
        } else {
            // Held: rewritten into the output, and looked up by its series.
            let held = &mut self.held;
            let start = self.out.len();
            held.start.get_or_insert(start);
            let edits = Edits { map_values: true, drops: &family.drops, strict: true };
            rw.write_series(&mut self.out, Some(&family.new_name), suffix, &sample, edits, &mut self.holding)
                .map_err(|p| RewriteError::at(line_no, p))?;
            let key = (start, self.out.len());
            write_rest(&mut self.out, rest);
            let value_text = rest.split_whitespace().next().ok_or(RewriteError::at(line_no, Problem::SampleWithoutValue))?;
            let value = line::parse_value(value_text).ok_or(RewriteError::at(line_no, Problem::ValueNotANumber))?;
            let offset = sample.line.as_ptr() as usize - self.body.as_ptr() as usize;
            held.lines.push((offset as u32, (offset + sample.line.len()) as u32, suffix));
            if let Some(i) = held.find_or_add(&self.out, key, value) {
                let created = suffix == "_created" || family.created_companion;
                if !family.kind.summable(suffix, created) {
                    held.refuse = true;
                }
                held.collided = true;
                let entry = &mut held.series[i];
                entry.value = if created { entry.value.min(value) } else { entry.value + value };
                self.stats.series_aggregated += 1;
            }
        }
        if let Some(f) = self.family.as_mut() {
            f.emitted = true;
        }
        Ok(())
    }

    /// Ends the open family: its held samples stay as written, are merged, or (a refused merge)
    /// are written again as they were.
    fn finish_family(&mut self) {
        let Some(family) = self.family.take() else { return };
        if let Some(start) = self.held.start {
            let held = &mut self.held;
            if held.refuse {
                self.stats.aggregation_refused += 1;
                self.out.truncate(start);
                self.out.extend_from_slice(&held.prefix);
                self.write_unmerged(&family);
            } else if held.collided {
                held.merged.clear();
                for series in &held.series {
                    held.merged.extend_from_slice(&self.out[series.key.0..series.key.1]);
                    held.merged.push(b' ');
                    line::write_value(&mut held.merged, series.value);
                    held.merged.push(b'\n');
                }
                self.out.truncate(start);
                self.out.extend_from_slice(&held.prefix);
                self.out.extend_from_slice(&held.merged);
            } else if !held.prefix.is_empty() {
                // Rare: a HELP line or comment after the first sample.
                self.out.splice(start..start, held.prefix.iter().copied());
            }
        }
        self.held.clear();
        if let Some((start, old)) = &family.alias {
            repeat_family(&mut self.out, *start, &family.new_name, old);
        }
    }

    /// A family whose merge was refused: its held samples again, renamed, injected and aliased
    /// but with their own values and every label (each was rewritten once already, so none fails).
    fn write_unmerged(&mut self, family: &Family) {
        let mut labels = Vec::new();
        let edits = Edits { map_values: false, drops: &[], strict: true };
        for &(start, end, suffix) in &self.held.lines {
            let text = &self.body[start as usize..end as usize];
            let Some(sample) = reparse(text, &mut labels) else { continue };
            let Some(rest) = rest_as_output(self.format, self.output, &mut self.rest, sample.rest) else { continue };
            if self.rw.write_series(&mut self.out, Some(&family.new_name), suffix, &sample, edits, &mut self.unmerged).is_ok() {
                write_rest(&mut self.out, rest);
            }
        }
    }
}

/// What follows a sample's labels as `output` writes it: as read, or an OpenMetrics value and
/// timestamp converted to text (into `scratch`). `None` if the conversion finds them malformed.
#[inline(always)]
fn rest_as_output<'s>(read: Format, output: Format, scratch: &'s mut String, rest: &'s str) -> Option<&'s str> {
    if output == Format::Text && read == Format::OpenMetrics {
        scratch.clear();
        line::openmetrics_rest_to_text(rest, scratch)?;
        Some(scratch.as_str())
    } else {
        Some(rest)
    }
}

/// [`parse_sample`] for the rare second reading of a held line, out of line: the per-line call
/// in [`Run::line`] stays the only inlined copy.
#[inline(never)]
fn reparse<'a, 's>(text: &'a str, labels: &'s mut Vec<(&'a str, &'a str)>) -> Option<Sample<'a, 's>> {
    parse_sample(text, labels, "")
}

/// Writes what follows a series (` value [timestamp] [exemplar]`) and the newline.
#[inline]
fn write_rest(out: &mut Vec<u8>, rest: &str) {
    if !rest.starts_with(' ') {
        out.push(b' ');
    }
    out.extend_from_slice(rest.as_bytes());
    out.push(b'\n');
}

/// Repeats the family written at `out[start..]` under its old name (HELP, TYPE, UNIT and samples;
/// free comments are not repeated).
fn repeat_family(out: &mut Vec<u8>, start: usize, new_name: &str, old_name: &str) {
    let written = out[start..].to_vec();
    for line in written.split_inclusive(|&b| b == b'\n') {
        let (head, name_and_rest) = match line.strip_prefix(b"# ") {
            Some(comment) => {
                let keyword_end = comment.iter().position(|&b| b == b' ').map_or(comment.len(), |i| i + 1);
                (&line[..2 + keyword_end], &comment[keyword_end..])
            }
            None => (&line[..0], line),
        };
        let Some(rest) = name_and_rest.strip_prefix(new_name.as_bytes()) else { continue };
        out.extend_from_slice(head);
        out.extend_from_slice(old_name.as_bytes());
        out.extend_from_slice(rest);
    }
}
