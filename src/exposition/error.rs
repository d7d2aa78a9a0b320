//! Why a body is left unchanged: one typed problem, at the line it was found on.

/// What is wrong with a body (or what it would have become).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The body exceeds `max_body_bytes`.
    BodyTooLarge,
    /// The rewritten body would exceed `max_body_bytes` (Envoy buffers it too).
    RewrittenTooLarge,
    NotUtf8,
    /// A text body whose last line has no newline: a truncated body.
    Unterminated,
    /// An OpenMetrics body without `# EOF`, or one announced as OpenMetrics without it.
    MissingEof,
    ContentAfterEof,
    EmptyLineInOpenMetrics,
    UnknownCommentInOpenMetrics,
    MalformedMetadata,
    UnknownType,
    MalformedSample,
    /// An OpenMetrics value or timestamp that does not convert to the text format.
    MalformedValue,
    SampleWithoutValue,
    ValueNotANumber,
    /// A label rename (or the series itself) gives one series the same label twice.
    DuplicateLabel,
}

impl Problem {
    pub fn message(self) -> &'static str {
        match self {
            Problem::BodyTooLarge => "body larger than max_body_bytes",
            Problem::RewrittenTooLarge => "rewritten body larger than max_body_bytes",
            Problem::NotUtf8 => "not valid UTF-8",
            Problem::Unterminated => "last line is not terminated (truncated body?)",
            Problem::MissingEof => "OpenMetrics body without # EOF (truncated?)",
            Problem::ContentAfterEof => "content after # EOF",
            Problem::EmptyLineInOpenMetrics => "empty line in OpenMetrics",
            Problem::UnknownCommentInOpenMetrics => "unknown # line in OpenMetrics",
            Problem::MalformedMetadata => "malformed # HELP/TYPE/UNIT line",
            Problem::UnknownType => "unknown metric type",
            Problem::MalformedSample => "malformed sample line",
            Problem::MalformedValue => "malformed value or timestamp",
            Problem::SampleWithoutValue => "sample without value",
            Problem::ValueNotANumber => "sample value is not a number",
            Problem::DuplicateLabel => "label renamed onto another label of the same series",
        }
    }
}

/// Why a body was left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteError {
    /// 1-based line of the problem (0 for whole-body problems).
    pub line: usize,
    pub problem: Problem,
}

impl RewriteError {
    pub(super) fn at(line: usize, problem: Problem) -> RewriteError {
        RewriteError { line, problem }
    }

    pub(super) fn body(problem: Problem) -> RewriteError {
        RewriteError { line: 0, problem }
    }

    /// The body (or what it would have become) exceeds `max_body_bytes`: too large, not broken.
    pub fn is_too_large(&self) -> bool {
        matches!(self.problem, Problem::BodyTooLarge | Problem::RewrittenTooLarge)
    }
}

impl std::fmt::Display for RewriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem.message())
    }
}

impl std::error::Error for RewriteError {}
