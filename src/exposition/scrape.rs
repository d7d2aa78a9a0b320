//! Which responses to an app-metrics scrape the filter rewrites, and what became of each scrape
//! (`metricpact_exposition_scrapes_total{metricpact_result=…}`). Decided from what the proxy
//! sees of the stream — the request line, then the response headers, then the body's size —
//! with the header lookups passed in, so the proxy-wasm layer only fetches and forwards.

use super::{Format, RewriteError};

/// What happened to one scrape the filter took on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Rewritten,
    /// The body did not parse: passed on unchanged.
    Unparsable,
    /// The body (declared, buffered or rewritten) exceeded `max_body_bytes`: passed on unchanged.
    TooLarge,
    /// The app compressed the body although asked not to: passed on unchanged.
    Compressed,
    /// A format the rewriter does not read (protobuf): passed on unchanged.
    UnsupportedFormat,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [Outcome::Rewritten, Outcome::Unparsable, Outcome::TooLarge, Outcome::Compressed, Outcome::UnsupportedFormat];

    /// The `metricpact_result` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Rewritten => "rewritten",
            Outcome::Unparsable => "unparsable",
            Outcome::TooLarge => "too_large",
            Outcome::Compressed => "compressed",
            Outcome::UnsupportedFormat => "unsupported_format",
        }
    }

    /// Position in [`Outcome::ALL`] (for per-outcome metric ids).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The outcome of a rewrite that failed.
    pub fn of_error(error: &RewriteError) -> Outcome {
        if error.is_too_large() {
            Outcome::TooLarge
        } else {
            Outcome::Unparsable
        }
    }
}

/// Whether a request is a scrape of one of the contract's metrics paths: a GET of the path, any
/// query string aside.
pub fn is_scrape(paths: &[String], method: Option<&[u8]>, path: Option<&[u8]>) -> bool {
    let (Some(b"GET"), Some(path)) = (method, path) else { return false };
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    paths.iter().any(|p| p.as_bytes() == path)
}

/// What to do with a scrape's response, once its headers are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not a body to rewrite (not a 200, or no body): pass it on, count nothing.
    Pass,
    /// Pass it on unchanged, counted as this outcome.
    Refuse(Outcome),
    /// Hold the body and rewrite it in this format (announced in the Content-Type now, as
    /// Envoy sends the headers before the body can be rewritten).
    Rewrite(Format),
}

/// Decides from the response's status, whether it ends with its headers, and `header` (a lookup
/// in the response headers, each one asked for only when the decision needs it: a lookup is a
/// hostcall in the filter).
pub fn decide(status: Option<u32>, end_of_stream: bool, max_body_bytes: usize, header: &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> Decision {
    if status != Some(200) || end_of_stream {
        return Decision::Pass;
    }
    if header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case(b"identity")) {
        return Decision::Refuse(Outcome::Compressed);
    }
    let content_type = header("content-type").map(|c| String::from_utf8_lossy(&c).into_owned());
    if content_type.as_deref().is_some_and(|c| c.contains("protobuf")) {
        return Decision::Refuse(Outcome::UnsupportedFormat);
    }
    let declared = header("content-length").and_then(|l| std::str::from_utf8(&l).ok()?.parse::<usize>().ok());
    if declared.is_some_and(|l| l > max_body_bytes) {
        return Decision::Refuse(Outcome::TooLarge);
    }
    Decision::Rewrite(Format::announced(content_type.as_deref()))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn decide_with(status: Option<u32>, end: bool, headers: &[(&str, &str)]) -> (Decision, Vec<String>) {
        let mut asked = Vec::new();
        let mut header = |name: &str| {
            asked.push(name.to_string());
            headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes().to_vec())
        };
        let decision = decide(status, end, 1000, &mut header);
        (decision, asked)
    }

    #[test]
    fn a_plain_text_scrape_is_rewritten_as_text() {
        let (d, asked) = decide_with(Some(200), false, &[("content-type", "text/plain; version=0.0.4"), ("content-length", "999")]);
        assert_eq!(d, Decision::Rewrite(Format::Text));
        assert_eq!(asked, ["content-encoding", "content-type", "content-length"]);
        assert_eq!(decide_with(Some(200), false, &[]).0, Decision::Rewrite(Format::Text), "no headers at all");
        assert_eq!(decide_with(Some(200), false, &[("content-encoding", "IDENTITY")]).0, Decision::Rewrite(Format::Text));
    }

    #[test]
    fn openmetrics_is_rewritten_as_openmetrics_only_when_declared() {
        let om = [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")];
        assert_eq!(decide_with(Some(200), false, &om).0, Decision::Rewrite(Format::OpenMetrics));
        assert_eq!(decide_with(Some(200), false, &[("content-type", "text/html")]).0, Decision::Rewrite(Format::Text));
    }

    #[test]
    fn what_is_not_a_body_to_rewrite_passes_uncounted_and_unasked() {
        for (status, end) in [(Some(404), false), (Some(500), false), (None, false), (Some(200), true), (Some(204), false)] {
            let (d, asked) = decide_with(status, end, &[("content-encoding", "gzip")]);
            assert_eq!(d, Decision::Pass, "{status:?} end={end}");
            assert!(asked.is_empty(), "no header lookups for {status:?}");
        }
    }

    #[test]
    fn compressed_protobuf_and_oversized_bodies_are_refused_in_that_order() {
        let (d, asked) = decide_with(Some(200), false, &[("content-encoding", "gzip"), ("content-type", "application/vnd.google.protobuf")]);
        assert_eq!(d, Decision::Refuse(Outcome::Compressed));
        assert_eq!(asked, ["content-encoding"], "decided without further lookups");
        let protobuf = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
        let (d, asked) = decide_with(Some(200), false, &[("content-type", protobuf), ("content-length", "5000")]);
        assert_eq!(d, Decision::Refuse(Outcome::UnsupportedFormat));
        assert_eq!(asked, ["content-encoding", "content-type"]);
        assert_eq!(decide_with(Some(200), false, &[("content-length", "1001")]).0, Decision::Refuse(Outcome::TooLarge));
        assert_eq!(decide_with(Some(200), false, &[("content-length", "1000")]).0, Decision::Rewrite(Format::Text));
        assert_eq!(decide_with(Some(200), false, &[("content-length", "lots")]).0, Decision::Rewrite(Format::Text), "unreadable: the body's size decides later");
    }

    #[test]
    fn scrapes_are_gets_of_a_metrics_path() {
        let paths = vec!["/metrics".to_string(), "/actuator/prometheus".to_string()];
        let yes = |m: &[u8], p: &[u8]| is_scrape(&paths, Some(m), Some(p));
        assert!(yes(b"GET", b"/metrics"));
        assert!(yes(b"GET", b"/metrics?name[]=up"));
        assert!(yes(b"GET", b"/actuator/prometheus"));
        assert!(!yes(b"POST", b"/metrics"));
        assert!(!yes(b"HEAD", b"/metrics"));
        assert!(!yes(b"GET", b"/metrics/"));
        assert!(!yes(b"GET", b"/metricsx"));
        assert!(!is_scrape(&paths, None, Some(b"/metrics")));
        assert!(!is_scrape(&paths, Some(b"GET"), None));
    }

    #[test]
    fn outcomes_have_stable_labels_and_errors_map_to_them() {
        let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, ["rewritten", "unparsable", "too_large", "compressed", "unsupported_format"]);
        assert!(Outcome::ALL.iter().enumerate().all(|(i, o)| o.index() == i));
        let spec: crate::config::ExpositionSpec = serde_json::from_str(r#"{"paths": ["/metrics"], "max_body_bytes": 8}"#).unwrap();
        let rw = crate::exposition::Rewriter::new(&spec, &|_, _| None, 64).unwrap();
        let too_large = rw.rewrite_as(b"metric_one 1\n", Format::Text).unwrap_err();
        assert_eq!(Outcome::of_error(&too_large), Outcome::TooLarge);
        let broken = rw.rewrite_as(b"m{ 1\n", Format::Text).unwrap_err();
        assert_eq!(Outcome::of_error(&broken), Outcome::Unparsable);
    }
}
