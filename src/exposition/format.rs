//! The two exposition formats (Prometheus text 0.0.4, OpenMetrics 1.0), the metric types they
//! declare, and the one rule that tells their family names apart.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
    pub fn parse(s: &str) -> Option<Kind> {
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

    /// The suffixes a family's sample names add to the family's name.
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["_total", "_created", ""],
            Kind::Histogram => &["_bucket", "_count", "_sum", "_created"],
            Kind::GaugeHistogram => &["_bucket", "_gcount", "_gsum"],
            Kind::Summary => &["_count", "_sum", "_created", ""],
            Kind::Info => &["_info"],
            Kind::Gauge | Kind::StateSet | Kind::Unknown => &[""],
        }
    }

    /// What the text format's name of a family of this kind adds to its name in `format`: an
    /// OpenMetrics counter `x` is the text format's `x_total`, an info metric `x` its `x_info`
    /// (the names of their samples in both). The one place this rule lives: rules match family
    /// names as the text format has them, `require` names them so, and a conversion to text
    /// renames the family so.
    pub fn text_suffix(self, format: Format) -> &'static str {
        match (self, format) {
            (Kind::Counter, Format::OpenMetrics) => "_total",
            (Kind::Info, Format::OpenMetrics) => "_info",
            _ => "",
        }
    }

    /// The type's keyword when written as `output`: text has no gauge histograms, infos or
    /// statesets (they become histograms and gauges) and calls unknown `untyped`.
    pub fn keyword(self, output: Format) -> &'static str {
        let text = output == Format::Text;
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::GaugeHistogram if text => "histogram",
            Kind::GaugeHistogram => "gaugehistogram",
            Kind::Summary => "summary",
            Kind::Info | Kind::StateSet if text => "gauge",
            Kind::Info => "info",
            Kind::StateSet => "stateset",
            Kind::Unknown if text => "untyped",
            Kind::Unknown => "unknown",
        }
    }

    /// Whether series of this kind may be summed when a dropped label merges them (`suffix`:
    /// the sample's; `created`: a `_created` sample, merged by keeping the earliest).
    pub fn summable(self, suffix: &str, created: bool) -> bool {
        created
            || match self {
                Kind::Counter | Kind::Histogram => true,
                Kind::Summary => suffix == "_sum" || suffix == "_count",
                _ => false,
            }
    }
}
