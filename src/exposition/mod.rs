//! Rewrites an app's Prometheus text (0.0.4) or OpenMetrics (1.0) exposition per contract in one
//! pass over the buffered body: metric families are renamed, dropped or kept, labels renamed,
//! mapped, dropped (summing counters and histograms whose series then collide) and injected.
//! Lines no rule touches are copied verbatim; only a family that must be aggregated is held
//! back until it ends. Anything that does not parse is reported, so the caller can pass the
//! original body through unchanged.

pub(crate) mod line;
pub mod scrape;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use regex::Regex;

use crate::config::{ExpositionSpec, MigrationKind, NameMatch, NodeLookup, Source};
use crate::label_values::sanitize;
use line::{escape_label_value, parse_sample, unescape_label_value, Sample};

/// Content types of the two formats the rewriter reads and writes.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What a scrape through the sidecar asks the app for: the text format, which every client
/// library serves and whose Content-Type the filter can commit to before the body arrives.
pub const SCRAPE_ACCEPT: &str = "text/plain;version=0.0.4";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// The format of a body, from its Content-Type when that is specific, else from the body
    /// (OpenMetrics ends with `# EOF`).
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Format {
        if content_type.is_some_and(|c| c.trim_start().starts_with("application/openmetrics-text")) {
            return Format::OpenMetrics;
        }
        let trimmed = body.strip_suffix(b"\n").unwrap_or(body);
        // The last line itself, not a HELP text or comment that ends in `# EOF`.
        if trimmed.rsplit(|&b| b == b'\n').next() == Some(&b"# EOF"[..]) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The format the sidecar announces for a response with this Content-Type, before it has
    /// seen the body: OpenMetrics only when the app says so, text otherwise.
    pub fn announced(content_type: Option<&str>) -> Format {
        match content_type {
            Some(c) if c.trim_start().starts_with("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Why a body was left unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsable {
    /// 1-based line of the problem (0 for whole-body problems).
    pub line: usize,
    pub reason: &'static str,
}

const BODY_TOO_LARGE: &str = "body larger than max_body_bytes";
const REWRITTEN_TOO_LARGE: &str = "rewritten body larger than max_body_bytes";

impl Unparsable {
    /// The body (or what it would have become) exceeds `max_body_bytes`: too large, not broken.
    pub fn is_too_large(&self) -> bool {
        self.line == 0 && (self.reason == BODY_TOO_LARGE || self.reason == REWRITTEN_TOO_LARGE)
    }
}

impl std::fmt::Display for Unparsable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// What one rewrite did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewriteStats {
    pub families_dropped: usize,
    pub series_dropped: usize,
    /// Series merged into another by a dropped label.
    pub series_aggregated: usize,
    /// Families where dropping a label would have merged gauges or quantiles: label kept.
    pub aggregation_refused: usize,
    /// Indices into `require_metrics` of the metrics that were absent.
    pub missing_required: Vec<usize>,
}

/// A rewritten body.
#[derive(Debug)]
pub struct Rewritten {
    pub body: Vec<u8>,
    pub format: Format,
    pub stats: RewriteStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "gaugehistogram" => Kind::GaugeHistogram,
            "summary" => Kind::Summary,
            "info" => Kind::Info,
            "stateset" => Kind::StateSet,
            "untyped" | "unknown" => Kind::Unknown,
            _ => return None,
        })
    }

    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["_total", "_created", ""],
            Kind::Histogram => &["_bucket", "_count", "_sum", "_created"],
            Kind::GaugeHistogram => &["_bucket", "_gcount", "_gsum"],
            Kind::Summary => &["_count", "_sum", "_created", ""],
            Kind::Info => &["_info"],
            Kind::Gauge | Kind::StateSet | Kind::Unknown => &[""],
        }
    }
}

struct Compiled<T> {
    regex: Regex,
    value: T,
}

fn whole(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex `{pattern}`: {e}"))
}

enum ValueRule {
    Table(FastMap<String, String>),
    Regex(Regex, String),
}

/// Hashes held series keys: they come from the app's exposition, which the sidecar trusts as much
/// as the app itself, so a fast non-keyed hash (FxHash's) is enough.
#[derive(Default)]
struct FastHasher(u64);

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
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A label injected into every series: name and value escaped once at configure time.
struct Inject {
    name: String,
    escaped_value: String,
    overwrite: bool,
}

/// The configured rewriter; build once, use for every scrape.
pub struct Rewriter {
    keep: Option<Vec<Regex>>,
    drop: Vec<Regex>,
    drop_series: Vec<(String, Regex)>,
    exact_renames: FastMap<String, String>,
    regex_renames: Vec<Compiled<String>>,
    label_renames: FastMap<String, String>,
    value_maps: FastMap<String, ValueRule>,
    label_drops: Vec<(String, Option<Vec<Regex>>)>,
    injects: Vec<Inject>,
    /// `,name="value"` of every injected label, in order: what most samples get appended.
    injected_text: String,
    required: Vec<String>,
    max_body_bytes: usize,
    /// Migrated families: final name (text naming) → (old name, sunset in Unix seconds).
    metric_aliases: FastMap<String, (String, u64)>,
    /// Migrated labels: (new name, old name, sunset in Unix seconds).
    label_aliases: Vec<(String, String, u64)>,
}

impl Rewriter {
    /// Compiles `spec`. `node` resolves node-metadata sources of injected labels (configure time).
    pub fn new(spec: &ExpositionSpec, node: &NodeLookup<'_>, max_value_length: usize) -> Result<Rewriter, String> {
        let regexes = |list: &[String]| list.iter().map(|p| whole(p)).collect::<Result<Vec<_>, _>>();
        let mut exact_renames = FastMap::default();
        let mut regex_renames = Vec::new();
        for rename in &spec.rename_metrics {
            if !crate::names::is_valid_metric_name(&rename.to) && !rename.to.contains('$') {
                return Err(format!("rename target `{}` is not a valid metric name", rename.to));
            }
            match &rename.matcher {
                NameMatch::Exact(from) => {
                    exact_renames.entry(from.clone()).or_insert_with(|| rename.to.clone());
                }
                NameMatch::Regex(pattern) => regex_renames.push(Compiled { regex: whole(pattern)?, value: rename.to.clone() }),
            }
        }
        let mut value_maps = FastMap::default();
        for map in &spec.map_values {
            let rule = match (&map.values, &map.regex, &map.to) {
                (Some(values), None, None) => ValueRule::Table(values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                (None, Some(regex), Some(to)) => ValueRule::Regex(whole(regex)?, to.clone()),
                _ => return Err(format!("map_values for `{}` needs either `values` or `regex` with `to`", map.label)),
            };
            value_maps.insert(map.label.clone(), rule);
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
            label_renames: spec.rename_labels.iter().map(|r| (r.from.clone(), r.to.clone())).collect(),
            value_maps,
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
            label_aliases: spec
                .migrations
                .iter()
                .filter(|m| m.kind == MigrationKind::Label)
                .map(|m| (m.new.clone(), m.old.clone(), m.sunset_unix))
                .collect(),
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
    fn old_family_name(&self, new_key: &str, suffix: &str, companion: bool) -> Option<String> {
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

    /// Rewrites a whole body, or says why it cannot (the caller then passes it through). The
    /// format comes from `content_type` when it is specific, else from the body.
    pub fn rewrite(&self, body: &[u8], content_type: Option<&str>) -> Result<Rewritten, Unparsable> {
        self.rewrite_as(body, Format::detect(content_type, body))
    }

    /// Rewrites a body and writes it as `format` (the format already announced to the scraper).
    /// An OpenMetrics body to be written as text is converted: `# EOF` and `# UNIT` go, info and
    /// stateset become gauges, counters are typed by their `_total` name, exemplars are dropped and
    /// timestamps turn from seconds into milliseconds.
    pub fn rewrite_as(&self, body: &[u8], format: Format) -> Result<Rewritten, Unparsable> {
        if body.len() > self.max_body_bytes {
            return Err(Unparsable { line: 0, reason: BODY_TOO_LARGE });
        }
        let text = std::str::from_utf8(body).map_err(|e| Unparsable {
            line: body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1,
            reason: "not valid UTF-8",
        })?;
        let input = Format::detect(None, body);
        if format == Format::OpenMetrics && input != Format::OpenMetrics {
            return Err(Unparsable { line: 0, reason: "OpenMetrics body without # EOF (truncated?)" });
        }
        let mut run = Run::new(self, input, text.len());
        run.output = format;
        let mut saw_eof = false;
        // Every sample's labels, in one buffer for the whole body.
        let mut labels = Vec::new();
        for (index, raw) in text.split_inclusive('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\n').unwrap_or(raw);
            if saw_eof {
                return Err(Unparsable { line: line_no, reason: "content after # EOF" });
            }
            if !raw.ends_with('\n') && input == Format::Text && !line.is_empty() {
                // A text exposition ends with a newline; a missing one means a truncated body.
                return Err(Unparsable { line: line_no, reason: "last line is not terminated (truncated body?)" });
            }
            if line == "# EOF" {
                saw_eof = true;
                run.finish_family();
                run.flush_pending();
                run.finish_family();
                if format == Format::OpenMetrics {
                    run.out.extend_from_slice(b"# EOF\n");
                }
                continue;
            }
            run.line(line, line_no, &mut labels)?;
        }
        if input == Format::OpenMetrics && !saw_eof {
            return Err(Unparsable { line: 0, reason: "OpenMetrics body without # EOF (truncated?)" });
        }
        run.finish_family();
        run.flush_pending();
        run.finish_family();
        if run.out.len() > self.max_body_bytes {
            // Envoy buffers the rewritten body too: never hand it more than the contract allows.
            return Err(Unparsable { line: 0, reason: REWRITTEN_TOO_LARGE });
        }
        let missing_required = self
            .required
            .iter()
            .enumerate()
            .filter(|(_, name)| !run.emitted.contains(name.as_str()))
            .map(|(i, _)| i)
            .collect();
        run.stats.missing_required = missing_required;
        Ok(Rewritten { body: run.out, format, stats: run.stats })
    }

    /// The family's new match key, if a rename applies (`key` as the app names the metric).
    fn renamed(&self, key: &str) -> Option<String> {
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

    fn keeps(&self, key: &str) -> bool {
        if let Some(keep) = &self.keep {
            if !keep.iter().any(|r| r.is_match(key)) {
                return false;
            }
        }
        !self.drop.iter().any(|r| r.is_match(key))
    }

    /// Labels to drop from family `key` (final name).
    fn drops_for(&self, key: &str) -> Vec<String> {
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
    #[allow(dead_code)]
    unit_ok: bool,
    /// Held-back output of a family being aggregated: (series key, value, is_created).
    held: Vec<(String, f64, bool)>,
    held_index: FastMap<String, usize>,
    /// The same samples with unmapped values and all labels, used if aggregation is refused.
    held_plain: Vec<u8>,
    /// The same samples rewritten but not merged (timestamps and exemplars intact), used when no
    /// two series collided.
    held_exact: Vec<u8>,
    collided: bool,
    refuse: bool,
    /// For a migrated family: where its output starts, and the old name to repeat it under.
    alias: Option<(usize, String)>,
}

/// State of one rewrite.
struct Run<'r> {
    rw: &'r Rewriter,
    /// Format of the body read.
    format: Format,
    /// Format written.
    output: Format,
    out: Vec<u8>,
    family: Option<Family>,
    /// Match key of the previous family (to recognize `_created` companions).
    last_family: Option<String>,
    /// Metadata lines (HELP/UNIT) seen before their family's TYPE line or first sample.
    pending: Vec<(String, String)>,
    emitted: std::collections::HashSet<String>,
    stats: RewriteStats,
    labels: Vec<(String, String)>,
    /// `labels` before value maps (for families that may have to fall back).
    unmapped: Vec<(String, String)>,
    /// Scratch space for a held sample's series key.
    key: Vec<u8>,
}

impl<'r> Run<'r> {
    fn new(rw: &'r Rewriter, format: Format, size: usize) -> Run<'r> {
        Run {
            rw,
            format,
            output: format,
            out: Vec::with_capacity(size + size / 4),
            family: None,
            last_family: None,
            pending: Vec::new(),
            emitted: std::collections::HashSet::new(),
            stats: RewriteStats::default(),
            labels: Vec::new(),
            unmapped: Vec::new(),
            key: Vec::new(),
        }
    }

    fn line<'a>(&mut self, line: &'a str, line_no: usize, labels: &mut Vec<(&'a str, &'a str)>) -> Result<(), Unparsable> {
        if line.is_empty() {
            if self.format == Format::OpenMetrics {
                return Err(Unparsable { line: line_no, reason: "empty line in OpenMetrics" });
            }
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(line, comment, line_no);
        }
        // Samples mostly follow their family's TYPE line: its name need not be scanned again.
        let hint = self.family.as_ref().map_or("", |f| f.name.as_str());
        let sample = parse_sample(line, labels, hint).ok_or(Unparsable { line: line_no, reason: "malformed sample line" })?;
        self.sample(sample, line_no)
    }

    fn comment(&mut self, line: &str, comment: &str, line_no: usize) -> Result<(), Unparsable> {
        let mut parts = comment.trim_start().splitn(3, ' ');
        // `#HELP` is no HELP line (Prometheus needs a blank after the `#`), nor is UNIT in the
        // text format: free comments.
        let keyword = parts
            .next()
            .filter(|k| comment.starts_with([' ', '\t']) && (*k != "UNIT" || self.format == Format::OpenMetrics))
            .unwrap_or("");
        if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
            if self.format == Format::OpenMetrics {
                return Err(Unparsable { line: line_no, reason: "unknown # line in OpenMetrics" });
            }
            // A free comment in the text format: kept only outside dropped families, and after
            // the HELP lines before it (held until their family's TYPE line or sample).
            if !self.pending.is_empty() {
                self.pending.push(("#".into(), line.to_string()));
            } else if self.family.as_ref().is_none_or(|f| f.keep) {
                self.out.extend_from_slice(line.as_bytes());
                self.out.push(b'\n');
            }
            return Ok(());
        }
        let name = parts.next().filter(|n| line::is_metric_name(n)).ok_or(Unparsable { line: line_no, reason: "malformed # HELP/TYPE/UNIT line" })?;
        let rest = parts.next().unwrap_or("");
        if keyword == "TYPE" {
            let kind = Kind::parse(rest.trim()).ok_or(Unparsable { line: line_no, reason: "unknown metric type" })?;
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
    fn flush_pending(&mut self) {
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
        // Rules see families as the text format names them: OpenMetrics types a counter as `x`
        // and an info metric as `x`, whose samples are `x_total` and `x_info`.
        let om = self.format == Format::OpenMetrics;
        let suffix = match kind {
            Kind::Counter if om => "_total",
            Kind::Info if om => "_info",
            _ => "",
        };
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
        self.family = Some(Family {
            name: name.to_string(),
            kind,
            drops,
            hold,
            created_companion: companion,
            emitted: false,
            unit_ok: true,
            same_name: new_name == name,
            new_name,
            keep,
            held: Vec::new(),
            held_index: HashMap::default(),
            held_plain: Vec::new(),
            held_exact: Vec::new(),
            collided: false,
            refuse: false,
            alias,
        });
    }

    fn emit_type(&mut self, kind: Kind) {
        let Some(family) = &self.family else { return };
        if !family.keep {
            return;
        }
        let to_text = self.output == Format::Text;
        let kind_text = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::GaugeHistogram if to_text => "histogram",
            Kind::GaugeHistogram => "gaugehistogram",
            Kind::Summary => "summary",
            Kind::Info | Kind::StateSet if to_text => "gauge",
            Kind::Info => "info",
            Kind::StateSet => "stateset",
            Kind::Unknown if self.output == Format::OpenMetrics => "unknown",
            Kind::Unknown => "untyped",
        };
        // Converting OpenMetrics to text: the family takes its samples' name.
        let suffix = match kind {
            Kind::Counter if to_text && self.format == Format::OpenMetrics => "_total",
            Kind::Info if to_text && self.format == Format::OpenMetrics => "_info",
            _ => "",
        };
        let line = format!("# TYPE {}{suffix} {kind_text}\n", family.new_name);
        self.out.extend_from_slice(line.as_bytes());
    }

    fn emit_metadata(&mut self, keyword: &str, rest: &str) {
        let Some(family) = &self.family else { return };
        if !family.keep {
            return;
        }
        if keyword == "#" {
            // A free comment that came with the metadata.
            self.out.extend_from_slice(rest.as_bytes());
            self.out.push(b'\n');
            return;
        }
        if keyword == "UNIT" {
            // Text has no UNIT; and a renamed family must still end in its unit, or the line goes.
            let unit = rest.trim();
            if self.output == Format::Text || (!unit.is_empty() && !family.new_name.ends_with(&format!("_{unit}"))) {
                return;
            }
        }
        let suffix = match family.kind {
            Kind::Counter if self.output == Format::Text && self.format == Format::OpenMetrics => "_total",
            Kind::Info if self.output == Format::Text && self.format == Format::OpenMetrics => "_info",
            _ => "",
        };
        let line = if rest.is_empty() { format!("# {keyword} {}{suffix}\n", family.new_name) } else { format!("# {keyword} {}{suffix} {rest}\n", family.new_name) };
        self.out.extend_from_slice(line.as_bytes());
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

    fn sample(&mut self, sample: Sample<'_, '_>, line_no: usize) -> Result<(), Unparsable> {
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
        let rest = if self.output == Format::Text && self.format == Format::OpenMetrics {
            Cow::Owned(line::openmetrics_rest_to_text(sample.rest).ok_or(Unparsable { line: line_no, reason: "malformed value or timestamp" })?)
        } else {
            Cow::Borrowed(sample.rest)
        };
        if !family.emitted {
            self.emitted.insert(required_name(&family.new_name, family.kind, self.format));
        }
        if !family.hold {
            // The common path: written straight out, no per-label allocation.
            let new_name = if family.same_name { None } else { Some(family.new_name.as_str()) };
            write_direct(&mut self.out, rw, new_name, suffix, &sample, &rest)
                .map_err(|reason| Unparsable { line: line_no, reason })?;
            if let Some(f) = self.family.as_mut() {
                f.emitted = true;
            }
            return Ok(());
        }
        // Labels: rename, map values, inject (drops are applied per family below).
        self.labels.clear();
        for (name, raw) in sample.labels {
            let name = rw.label_renames.get(*name).map_or(*name, String::as_str);
            if self.labels.iter().any(|(n, _)| n == name) {
                return Err(Unparsable { line: line_no, reason: "label renamed onto another label of the same series" });
            }
            let value = match rw.value_maps.get(name) {
                None => raw.to_string(),
                Some(rule) => map_value(rule, raw),
            };
            self.labels.push((name.to_string(), value));
        }
        self.unmapped.clear();
        if family.hold {
            for (name, raw) in sample.labels {
                let name = rw.label_renames.get(*name).map_or(*name, String::as_str);
                self.unmapped.push((name.to_string(), raw.to_string()));
            }
        }
        inject_into(&mut self.labels, &rw.injects);
        if family.hold {
            inject_into(&mut self.unmapped, &rw.injects);
        }
        let new_sample_name = format!("{}{suffix}", family.new_name);
        if let Some(f) = self.family.as_mut() {
            f.emitted = true;
        }
        self.hold(new_sample_name, &rest, suffix, line_no)
    }

    /// Buffers a sample of a family whose dropped labels may merge series.
    fn hold(&mut self, name: String, rest: &str, suffix: &str, line_no: usize) -> Result<(), Unparsable> {
        let Some(family) = self.family.as_mut() else { return Ok(()) };
        // As the app had it (values unmapped, labels kept): what a refused family falls back to.
        add_label_aliases(&mut self.unmapped, &self.rw.label_aliases);
        write_sample(&mut family.held_plain, &name, &self.unmapped, rest);
        // Dropped labels go (in place: `labels` is rebuilt for every sample), aliases are added.
        self.labels.retain(|(n, _)| !family.drops.contains(n));
        add_label_aliases(&mut self.labels, &self.rw.label_aliases);
        let kept = &self.labels;
        // Rewritten, with its timestamp and exemplar: what a family without collisions emits.
        write_sample(&mut family.held_exact, &name, kept, rest);
        self.key.clear();
        write_sample(&mut self.key, &name, kept, "");
        let key = std::str::from_utf8(&self.key).unwrap_or_default();
        let value_text = rest.split_whitespace().next().ok_or(Unparsable { line: line_no, reason: "sample without value" })?;
        let value = line::parse_value(value_text).ok_or(Unparsable { line: line_no, reason: "sample value is not a number" })?;
        let created = suffix == "_created" || family.created_companion;
        let summable = created || match family.kind {
            Kind::Counter | Kind::Histogram => true,
            Kind::Summary => suffix == "_sum" || suffix == "_count",
            _ => false,
        };
        match family.held_index.get(key) {
            Some(&i) => {
                if !summable {
                    family.refuse = true;
                }
                family.collided = true;
                let entry = &mut family.held[i];
                entry.1 = if created { entry.1.min(value) } else { entry.1 + value };
                self.stats.series_aggregated += 1;
            }
            None => {
                family.held_index.insert(key.to_string(), family.held.len());
                family.held.push((key.to_string(), value, created));
            }
        }
        Ok(())
    }

    /// Emits the open family's held-back samples (aggregated, or as they were if refused).
    fn finish_family(&mut self) {
        let Some(family) = self.family.take() else { return };
        if family.held.is_empty() {
            // Nothing held back.
        } else if family.refuse {
            self.stats.aggregation_refused += 1;
            self.out.extend_from_slice(&family.held_plain);
        } else if !family.collided {
            self.out.extend_from_slice(&family.held_exact);
        } else {
            for (key, value, _) in &family.held {
                self.out.extend_from_slice(key.as_bytes());
                self.out.push(b' ');
                self.out.extend_from_slice(line::format_value(*value).as_bytes());
                self.out.push(b'\n');
            }
        }
        if let Some((start, old)) = &family.alias {
            repeat_family(&mut self.out, *start, &family.new_name, old);
        }
    }
}

/// Equality of the short strings compared for every sample (suffixes, family and label names),
/// without the call into the C library's memcmp that `==` makes.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && line::prefix_is(a, b)
}

/// The name `require_metrics` knows a family by (counters with `_total`, others by their name).
fn required_name(family: &str, kind: Kind, format: Format) -> String {
    match kind {
        Kind::Counter if format == Format::OpenMetrics => format!("{family}_total"),
        Kind::Info if format == Format::OpenMetrics => format!("{family}_info"),
        _ => family.to_string(),
    }
}

/// Writes a sample with renamed, mapped and injected labels directly into `out` (the path of
/// families that are not held back), allocating only for values a map actually changes.
/// `family`: the family's new name, `None` when samples keep theirs.
fn write_direct<'a>(out: &mut Vec<u8>, rw: &'a Rewriter, family: Option<&str>, suffix: &str, sample: &Sample<'a, '_>, rest: &str) -> Result<(), &'static str> {
    if rw.label_renames.is_empty() && rw.value_maps.is_empty() && rw.label_aliases.is_empty() {
        if let Some(()) = write_verbatim_labels(out, rw, family, suffix, sample, rest) {
            return Ok(());
        }
    }
    fn renamed<'a>(rw: &'a Rewriter, name: &'a str) -> &'a str {
        rw.label_renames.get(name).map_or(name, String::as_str)
    }
    if !rw.label_renames.is_empty() {
        for (i, (a, _)) in sample.labels.iter().enumerate() {
            let a = renamed(rw, a);
            if sample.labels[i + 1..].iter().any(|(b, _)| renamed(rw, b) == a) {
                return Err("label renamed onto another label of the same series");
            }
        }
    }
    match family {
        Some(family) => {
            out.extend_from_slice(family.as_bytes());
            out.extend_from_slice(suffix.as_bytes());
        }
        None => out.extend_from_slice(sample.name.as_bytes()),
    }
    let mut written = 0;
    // Written labels' names and value positions, kept only while a label migration needs them.
    let mut positions: Vec<(&str, usize, usize)> = Vec::new();
    let track = !rw.label_aliases.is_empty();
    let mut label = |out: &mut Vec<u8>, name: &'a str, value: &str| {
        out.push(if written == 0 { b'{' } else { b',' });
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        let start = out.len();
        out.extend_from_slice(value.as_bytes());
        if track {
            positions.push((name, start, out.len()));
        }
        out.push(b'"');
        written += 1;
    };
    for (name, raw) in sample.labels {
        let name = rw.label_renames.get(*name).map_or(*name, String::as_str);
        match rw.injects.iter().find(|i| i.name == name) {
            Some(inject) if inject.overwrite => label(out, name, &inject.escaped_value),
            _ => match rw.value_maps.get(name) {
                None => label(out, name, raw),
                Some(rule) => label(out, name, &map_value(rule, raw)),
            },
        }
    }
    for inject in &rw.injects {
        let present = sample.labels.iter().any(|(n, _)| rw.label_renames.get(*n).map_or(*n, String::as_str) == inject.name);
        if !present {
            label(out, &inject.name, &inject.escaped_value);
        }
    }
    if track {
        for (new, old, _) in &rw.label_aliases {
            let value = positions.iter().find(|(n, _, _)| n == new).map(|&(_, a, b)| (a, b));
            if let Some((a, b)) = value.filter(|_| !positions.iter().any(|(n, _, _)| n == old)) {
                // Follows a written label, so never the first one.
                out.push(b',');
                out.extend_from_slice(old.as_bytes());
                out.extend_from_slice(b"=\"");
                out.extend_from_within(a..b);
                out.push(b'"');
            }
        }
    }
    if written > 0 {
        out.push(b'}');
    }
    if !rest.starts_with(' ') {
        out.push(b' ');
    }
    out.extend_from_slice(rest.as_bytes());
    out.push(b'\n');
    Ok(())
}

/// The fast path of samples whose labels no rule rewrites: the label block is copied as the app
/// wrote it and the injected labels appended (all of them at once in the usual case that the
/// sample has none of them). `None` (nothing written) when an injected label must overwrite one
/// the sample has.
fn write_verbatim_labels(out: &mut Vec<u8>, rw: &Rewriter, family: Option<&str>, suffix: &str, sample: &Sample<'_, '_>, rest: &str) -> Option<()> {
    if rw.injects.len() > 64 {
        return None;
    }
    // Bit i: the sample already has injects[i] (kept, as on_conflict says).
    let mut present = 0u64;
    for (name, _) in sample.labels {
        for (i, inject) in rw.injects.iter().enumerate() {
            if same(name.as_bytes(), inject.name.as_bytes()) {
                if inject.overwrite {
                    return None;
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
    let family_len = family.map_or(0, str::len);
    out.reserve(family_len + sample.name.len() + inner.len() + rw.injected_text.len() + rest.len() + 4);
    let braces = !inner.is_empty() || present.count_ones() as usize != rw.injects.len();
    match family {
        Some(family) => {
            out.extend_from_slice(family.as_bytes());
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
            let all = if inner.is_empty() { &rw.injected_text[1..] } else { &rw.injected_text[..] };
            out.extend_from_slice(all.as_bytes());
        } else {
            let mut first = inner.is_empty();
            for (i, inject) in rw.injects.iter().enumerate() {
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
    if !rest.starts_with(' ') {
        out.push(b' ');
    }
    out.extend_from_slice(rest.as_bytes());
    out.push(b'\n');
    Some(())
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

/// Adds each migrated label's old name with the new label's value (unless the series has it).
fn add_label_aliases(labels: &mut Vec<(String, String)>, aliases: &[(String, String, u64)]) {
    for (new, old, _) in aliases {
        if labels.iter().any(|(n, _)| n == old) {
            continue;
        }
        if let Some(value) = labels.iter().find(|(n, _)| n == new).map(|(_, v)| v.clone()) {
            labels.push((old.clone(), value));
        }
    }
}

fn inject_into(labels: &mut Vec<(String, String)>, injects: &[Inject]) {
    for inject in injects {
        match labels.iter_mut().find(|(n, _)| *n == inject.name) {
            Some((_, value)) if inject.overwrite => *value = inject.escaped_value.clone(),
            Some(_) => {}
            None => labels.push((inject.name.clone(), inject.escaped_value.clone())),
        }
    }
}

fn map_value(rule: &ValueRule, raw: &str) -> String {
    let value = unescape_label_value(raw);
    let mapped = match rule {
        ValueRule::Table(table) => table.get(value.as_ref()).cloned(),
        ValueRule::Regex(regex, to) => regex.captures(&value).map(|caps| {
            let mut out = String::new();
            caps.expand(to, &mut out);
            out
        }),
    };
    match mapped {
        Some(v) => escape_label_value(&v),
        None => raw.to_string(),
    }
}

/// Writes `name{labels}rest\n` (labels already escaped; `{}` left out when there are none).
fn write_sample(out: &mut Vec<u8>, name: &str, labels: &[(String, String)], rest: &str) {
    out.extend_from_slice(name.as_bytes());
    if !labels.is_empty() {
        out.push(b'{');
        for (i, (n, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b"=\"");
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    if !rest.is_empty() {
        if !rest.starts_with(' ') {
            out.push(b' ');
        }
        out.extend_from_slice(rest.as_bytes());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests;
