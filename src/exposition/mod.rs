//! Rewrites an app's Prometheus text (0.0.4) or OpenMetrics (1.0) exposition per contract in one
//! pass over the buffered body: metric families are renamed, dropped or kept, labels renamed,
//! mapped, dropped (summing counters and histograms whose series then collide) and injected.
//! Lines no rule touches are copied verbatim; only a family whose series may merge is held back
//! until it ends. Anything that does not parse is reported, so the caller can pass the original
//! body through unchanged.
//!
//! [`format`] knows the two formats, [`rules`] compiles the contract's rules, [`line`] tokenizes
//! a line, [`family`] walks the body family by family, [`edit`] writes each series through the
//! one label pipeline, [`error`] says why a body is left alone, [`scrape`] which responses are
//! rewritten at all.

mod edit;
pub mod error;
mod family;
pub mod format;
pub(crate) mod line;
mod rules;
pub mod scrape;

/// The fast non-keyed hash map of names from the app's exposition (the policy judges them too).
pub(crate) use rules::{FastHasher, FastMap};

pub use error::{Problem, RewriteError};
pub use format::{Format, OPENMETRICS_CONTENT_TYPE, SCRAPE_ACCEPT, TEXT_CONTENT_TYPE};
pub use rules::Rewriter;

use family::Run;

/// How far beyond `max_body_bytes` the output may grow while a held family waits to be merged.
const HELD_ROOM: usize = 4;
/// How often (in lines) the rewrite compares its output with `max_body_bytes` before the end.
const CHECK_EVERY: usize = 64;

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

impl Rewriter {
    /// Rewrites a whole body, or says why it cannot (the caller then passes it through). The
    /// format comes from `content_type` when it is specific, else from the body.
    pub fn rewrite(&self, body: &[u8], content_type: Option<&str>) -> Result<Rewritten, RewriteError> {
        self.rewrite_as(body, Format::detect(content_type, body))
    }

    /// Rewrites a body and writes it as `format` (the format already announced to the scraper).
    /// An OpenMetrics body to be written as text is converted: `# EOF` and `# UNIT` go, info and
    /// stateset become gauges, counters are typed by their `_total` name, exemplars are dropped and
    /// timestamps turn from seconds into milliseconds.
    pub fn rewrite_as(&self, body: &[u8], format: Format) -> Result<Rewritten, RewriteError> {
        if body.len() > self.max_body_bytes {
            return Err(RewriteError::body(Problem::BodyTooLarge));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            RewriteError::at(body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1, Problem::NotUtf8)
        })?;
        let input = Format::detect(None, body);
        if format == Format::OpenMetrics && input != Format::OpenMetrics {
            return Err(RewriteError::body(Problem::MissingEof));
        }
        let mut run = Run::new(self, text, input, format);
        let room = self.max_body_bytes.saturating_mul(HELD_ROOM);
        let mut saw_eof = false;
        // Every sample's labels, in one buffer for the whole body.
        let mut labels = Vec::new();
        for (index, raw) in text.split_inclusive('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\n').unwrap_or(raw);
            if saw_eof {
                return Err(RewriteError::at(line_no, Problem::ContentAfterEof));
            }
            if !raw.ends_with('\n') && input == Format::Text && !line.is_empty() {
                // A text exposition ends with a newline; a missing one means a truncated body.
                return Err(RewriteError::at(line_no, Problem::Unterminated));
            }
            if line == "# EOF" {
                saw_eof = true;
                run.end();
                if format == Format::OpenMetrics {
                    run.out.extend_from_slice(b"# EOF\n");
                }
                continue;
            }
            run.line(line, line_no, &mut labels)?;
            // Stop once the output is sure to outgrow the limit: that is what bounds the memory a
            // body can make the VM take (injected labels multiply short lines). Looked at every
            // CHECK_EVERY lines, which bounds the overshoot and costs nothing per line; a held
            // family may shrink when its series merge, so it gets room until then.
            if line_no % CHECK_EVERY == 0 && run.out.len() > self.max_body_bytes && (run.final_len() > self.max_body_bytes || run.out.len() > room) {
                return Err(RewriteError::body(Problem::RewrittenTooLarge));
            }
        }
        if input == Format::OpenMetrics && !saw_eof {
            return Err(RewriteError::body(Problem::MissingEof));
        }
        run.end();
        if run.out.len() > self.max_body_bytes {
            // Envoy buffers the rewritten body too: never hand it more than the contract allows.
            return Err(RewriteError::body(Problem::RewrittenTooLarge));
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
}

#[cfg(test)]
mod tests;
