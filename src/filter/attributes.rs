//! The stream's attributes as the core reads them: request headers from one header-map read,
//! status and timing from what the stream saw, properties only as the fallback.

use crate::header_map::HeaderPairs;
use crate::telemetry::{Bytes, RequestAttributes, ResponseAttributes};

use super::host;

pub(super) fn property(path: &[&str]) -> Option<Vec<u8>> {
    host::property(path)
}

fn property_i64(path: &[&str]) -> Option<i64> {
    let bytes: [u8; 8] = property(path)?.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

pub(super) fn response_header(name: &str) -> Option<Vec<u8>> {
    host::header(host::RESPONSE_HEADERS, name)
}

/// The current stream's request headers, fetched at most once and in one hostcall (hostcalls,
/// each with a VM re-entry to allocate its result, are most of the filter's cost).
#[derive(Default)]
pub(super) struct HostRequest {
    headers: std::cell::OnceCell<Option<HeaderPairs>>,
}

impl HostRequest {
    /// A request header, borrowed from the map read once per request.
    fn get(&self, name: &str) -> Option<Bytes<'_>> {
        let pairs = self.headers.get_or_init(|| host::header_pairs(host::REQUEST_HEADERS).map(HeaderPairs));
        pairs.as_ref()?.get(name).map(Bytes::Borrowed)
    }
}

impl RequestAttributes for HostRequest {
    fn method(&self) -> Option<Bytes<'_>> {
        self.get(":method")
    }
    fn path(&self) -> Option<Bytes<'_>> {
        self.get(":path")
    }
    fn scheme(&self) -> Option<Bytes<'_>> {
        self.get(":scheme")
    }
    fn forwarded_proto(&self) -> Option<Bytes<'_>> {
        self.get("x-forwarded-proto")
    }
    fn protocol(&self) -> Option<Bytes<'_>> {
        property(&["request", "protocol"]).map(Bytes::Owned)
    }
    fn header(&self, name: &str) -> Option<Bytes<'_>> {
        self.get(name)
    }
}

/// The current stream's outcome. Status and timing come from what the stream already saw
/// (the `:status` header, two clock reads): property lookups cost several microseconds each, so
/// they are only the fallback for streams whose response headers never passed this filter.
pub(super) struct HostResponse {
    pub status: Option<u32>,
    pub response_done: Option<bool>,
    pub started_nanos: Option<u64>,
}

impl ResponseAttributes for HostResponse {
    fn status_code(&self) -> Option<u32> {
        self.status
            .or_else(|| property_i64(&["response", "code"]).and_then(|c| u32::try_from(c).ok()))
    }
    fn code_details(&self) -> Option<Vec<u8>> {
        property(&["response", "code_details"])
    }
    fn completed(&self) -> bool {
        self.response_done.unwrap_or(true)
    }
    fn grpc_status(&self) -> Option<i64> {
        property_i64(&["response", "grpc_status"])
    }
    fn duration_nanos(&self) -> Option<u64> {
        match self.started_nanos {
            Some(start) => now_nanos().map(|now| now.saturating_sub(start)),
            None => property_i64(&["request", "duration"]).and_then(|d| u64::try_from(d).ok()),
        }
    }
}

pub(super) fn now_nanos() -> Option<u64> {
    host::now_nanos()
}

pub(super) fn parse_status(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

