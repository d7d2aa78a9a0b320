//! How a finished stream is judged: its status, its gRPC status, whether it failed, and the
//! OpenTelemetry `error.type` it gets — the values of every response-side label.

use std::borrow::Cow;

use crate::config::Source;
use crate::names::OTHER;

use super::labels::ValueSource;
use super::ResponseAttributes;

/// gRPC status names by code (grpc/grpc doc/statuscodes.md; OpenTelemetry spells them so).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

/// The codes as label values.
pub(super) const GRPC_STATUS_CODES: [&str; 17] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// Whether a gRPC status is an error: for a server, only those OpenTelemetry's RPC conventions
/// count as server errors (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS: the others are the caller's); for a client every status but OK.
pub fn grpc_is_error(code: usize, client: bool) -> bool {
    if client {
        code != 0
    } else {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    }
}

/// Whether a request is gRPC, by its `content-type`: `application/grpc`, alone or followed by `+`
/// (`+proto`, `+json`) or parameters, as Envoy's `Grpc::Common::hasGrpcContentType` decides
/// (`application/grpc-web` is not gRPC: its status travels in the body).
pub(super) fn is_grpc(content_type: Option<&[u8]>) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.is_some_and(|c| {
        c.len() >= GRPC.len() && c[..GRPC.len()].eq_ignore_ascii_case(GRPC) && matches!(c.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// What the response-side labels need to know of the stream, asked of the host only when a
/// configured label needs it (each answer may be a hostcall).
#[derive(Clone, Copy)]
pub(super) struct Needs {
    /// A gRPC request whose status a label (or error_type) reads.
    pub grpc_status: bool,
    pub error_type: bool,
    /// Client-side configuration (OpenTelemetry's client rules for gRPC errors).
    pub client: bool,
}

/// A finished stream's response-side label values.
pub(super) struct Verdict {
    status: Option<u32>,
    /// The status as text (valid only when `status` is).
    code: [u8; 3],
    /// `None`: not a gRPC stream whose status was asked; `Some(None)`: a grpc-status Envoy could
    /// not read.
    grpc: Option<Option<usize>>,
    error: Option<Cow<'static, str>>,
}

impl Verdict {
    pub fn of(response: &dyn ResponseAttributes, needs: Needs) -> Verdict {
        let status = response.status_code().filter(|s| (100..=999).contains(s));
        let cut_short = !response.completed();
        let grpc = needs
            .grpc_status
            .then(|| response.grpc_status())
            .flatten()
            .map(|code| usize::try_from(code).ok().filter(|&c| c < GRPC_STATUS_NAMES.len()));
        let grpc_error = grpc.is_some_and(|code| code.is_none_or(|c| grpc_is_error(c, needs.client)));
        let failed = cut_short || status.is_none_or(|s| s >= 500) || grpc_error;
        // Details are a hostcall: fetched only for failures, and only if a label wants them.
        let error = (failed && needs.error_type).then(|| {
            let details = response.code_details();
            match failure_class(details.as_deref()) {
                // A proxy failure keeps its name, gRPC or not.
                Some(class) => Cow::Borrowed(class),
                None if grpc_error => Cow::Borrowed(grpc.flatten().map_or(OTHER, |c| GRPC_STATUS_NAMES[c])),
                // A cut-short 2xx with no known cause still failed: never report its status as the error.
                None if cut_short && status.is_some_and(|s| s < 500) => Cow::Borrowed(OTHER),
                None => error_type(status, details.as_deref()),
            }
        });
        let code = status.map_or([0; 3], |s| [b'0' + (s / 100 % 10) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]);
        Verdict { status, code, grpc, error }
    }
}

impl ValueSource for Verdict {
    // Inlined: see `ValueSource`.
    #[inline]
    fn value<'a>(&'a self, source: &'a Source) -> Option<Cow<'a, str>> {
        let value = match source {
            Source::ResponseStatusCode => self.status.and_then(|_| std::str::from_utf8(&self.code).ok()),
            Source::ResponseStatusClass => self.status.map(status_class),
            Source::ResponseErrorType => self.error.as_deref(),
            Source::ResponseGrpcStatus => self.grpc.map(|c| c.map_or(OTHER, |c| GRPC_STATUS_CODES[c])),
            Source::ResponseGrpcStatusName => self.grpc.map(|c| c.map_or(OTHER, |c| GRPC_STATUS_NAMES[c])),
            _ => None,
        };
        value.map(Cow::Borrowed)
    }
}

/// `2xx`-style class of a status code.
pub fn status_class(status: u32) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => OTHER,
    }
}

/// OTel `error.type` for a failed server request: a proxy failure class when Envoy's response
/// details say the response did not come from the upstream, else the 5xx status as a string.
pub fn error_type(status: Option<u32>, details: Option<&[u8]>) -> Cow<'static, str> {
    match (failure_class(details), status) {
        (Some(class), _) => Cow::Borrowed(class),
        (None, Some(status)) => Cow::Owned(status.to_string()),
        (None, None) => Cow::Borrowed(OTHER),
    }
}

/// The proxy failure class Envoy's response details name, if any.
fn failure_class(details: Option<&[u8]>) -> Option<&'static str> {
    let details = details.and_then(|d| std::str::from_utf8(d).ok()).unwrap_or("");
    if details.is_empty() || details == "via_upstream" {
        None
    } else if details.contains("timeout") || details == "max_duration_reached" {
        Some("timeout")
    } else if details.contains("no_healthy_upstream") {
        Some("no_healthy_upstream")
    } else if details.contains("connection_failure") || details.contains("connection_termination") && details.contains("before_response") {
        Some("connection_failure")
    } else if details.starts_with("upstream_reset") {
        Some("upstream_reset")
    } else if details.contains("cluster_not_found") || details.contains("route_not_found") {
        Some("no_route")
    } else if details.starts_with("downstream_") || details.starts_with("http") && details.ends_with(".remote_reset") {
        // `http2.remote_reset` (and h3's) at the stream level is the downstream codec's peer, the
        // client, resetting: a gRPC client's deadline or cancel.
        Some("downstream_disconnect")
    } else if details.contains("overload") {
        Some("overload")
    } else {
        None
    }
}
