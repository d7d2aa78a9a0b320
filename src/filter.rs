//! The proxy-wasm layer: reads the compiled contract in `on_configure`, then hands each HTTP
//! stream's attributes to the core [`Engine`]. Fails open: nothing here panics on host input, and
//! a stream the engine cannot serve passes untouched.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::PluginConfig;
use crate::exposition::{Format, Rewriter, SCRAPE_ACCEPT};
use crate::telemetry::{encode_tags, Engine, Flight, MetricHost, MetricKind, RequestAttributes, ResponseAttributes};

/// Raw hostcalls for changing a response: the SDK's wrappers panic on a status they do not
/// expect, and a panic would take the whole VM down; here a refusal just leaves things as they are.
mod raw {
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_replace_header_map_value(map_type: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32;
        fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, value: *const u8, value_size: usize) -> u32;
        fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
    }

    const RESPONSE_HEADERS: u32 = 2;
    const REQUEST_HEADERS: u32 = 0;
    const RESPONSE_BODY: u32 = 1;
    const OK: u32 = 0;

    pub fn set_response_header(name: &str, value: &str) -> bool {
        unsafe { proxy_replace_header_map_value(RESPONSE_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len()) == OK }
    }

    pub fn remove_response_header(name: &str) -> bool {
        unsafe { proxy_remove_header_map_value(RESPONSE_HEADERS, name.as_ptr(), name.len()) == OK }
    }

    pub fn set_request_header(name: &str, value: &str) -> bool {
        unsafe { proxy_replace_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len()) == OK }
    }

    pub fn replace_response_body(old_size: usize, body: &[u8]) -> bool {
        unsafe { proxy_set_buffer_bytes(RESPONSE_BODY, 0, old_size, body.as_ptr(), body.len()) == OK }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None, exposition: None }) });
}}

/// Envoy's stats, through the proxy-wasm metric hostcalls.
struct EnvoyStats;

impl MetricHost for EnvoyStats {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name).ok()
    }

    fn increment(&mut self, id: u32, delta: i64) {
        let _ = hostcalls::increment_metric(id, delta);
    }

    fn record(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    /// Budgets live in Envoy's shared data (shared by every VM with our vm_id): one key per
    /// admitted member and a counter updated with compare-and-swap.
    fn admit(&mut self, scope: &str, member: &str, max: u32) -> bool {
        let member_key = format!("metricpact.{scope}.member.{member}");
        if let Ok((Some(_), _)) = hostcalls::get_shared_data(&member_key) {
            return true;
        }
        let count_key = format!("metricpact.{scope}.count");
        for _ in 0..16 {
            let (count, cas) = match hostcalls::get_shared_data(&count_key) {
                Ok((data, cas)) => (data.and_then(|d| <[u8; 4]>::try_from(d.as_slice()).ok()).map_or(0, u32::from_le_bytes), cas),
                // Shared data unavailable: fail open on the budget, never on the request.
                Err(_) => return true,
            };
            if count >= max {
                return false;
            }
            match hostcalls::set_shared_data(&count_key, Some(&(count + 1).to_le_bytes()), cas) {
                Ok(()) => {
                    let _ = hostcalls::set_shared_data(&member_key, Some(b"1"), None);
                    return true;
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => return true,
            }
        }
        false
    }
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

fn property_i64(path: &[&str]) -> Option<i64> {
    let bytes: [u8; 8] = property(path)?.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
}

struct Root {
    engine: Option<Rc<RefCell<Engine>>>,
    exposition: Option<Rc<Exposition>>,
}

/// The app-exposition rewrite and its self-metric ids.
struct Exposition {
    rewriter: Rewriter,
    paths: Vec<String>,
    outcomes: [Option<u32>; OUTCOMES.len()],
    missing: Vec<Option<u32>>,
}

/// What happened to one scrape (`metricpact_exposition_scrapes_total{metricpact_result=…}`).
const OUTCOMES: [&str; 5] = ["rewritten", "unparsable", "too_large", "compressed", "unsupported_format"];
const REWRITTEN: usize = 0;
const UNPARSABLE: usize = 1;
const TOO_LARGE: usize = 2;
const COMPRESSED: usize = 3;
const UNSUPPORTED: usize = 4;

impl Exposition {
    fn count(&self, outcome: usize) {
        if let Some(id) = self.outcomes[outcome] {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn is_scrape(&self, path: &[u8]) -> bool {
        let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
        self.paths.iter().any(|p| p.as_bytes() == path)
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                log::error!("metricpact: refusing to start: no plugin configuration (pass the output of `metricpact compile CONTRACT`)");
                return false;
            }
        };
        let config = match PluginConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("metricpact: refusing to start: invalid plugin configuration: {e}");
                return false;
            }
        };
        let node = |key: &str, field: Option<&str>| {
            let mut path = vec!["xds", "node", "metadata", key];
            path.extend(field);
            property(&path)
        };
        if let Some(spec) = &config.exposition {
            match Rewriter::new(spec, &node, config.max_value_length as usize) {
                Ok(rewriter) => self.exposition = Some(Rc::new(define_exposition_metrics(rewriter, spec))),
                Err(e) => {
                    log::error!("metricpact: refusing to start: invalid plugin configuration: exposition: {e}");
                    return false;
                }
            }
        }
        match Engine::new(&config, &node) {
            Ok(mut engine) => {
                engine.define_self_metrics(&mut EnvoyStats);
                log::info!(
                    "metricpact: contract {} {} ({}) loaded",
                    config.contract.name,
                    config.contract.version,
                    config.contract.hash
                );
                self.engine = Some(Rc::new(RefCell::new(engine)));
                true
            }
            Err(e) => {
                log::error!("metricpact: refusing to start: invalid plugin configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            engine: self.engine.clone(),
            exposition: self.exposition.clone(),
            flight: None,
            status: None,
            started_nanos: None,
            scrape: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    engine: Option<Rc<RefCell<Engine>>>,
    exposition: Option<Rc<Exposition>>,
    flight: Option<Flight>,
    status: Option<u32>,
    started_nanos: Option<u64>,
    /// Set while this stream is a metrics scrape whose response we hold for rewriting.
    scrape: Option<Scrape>,
}

struct Scrape {
    exposition: Rc<Exposition>,
    /// Decided at response headers; `None` until then.
    format: Option<Format>,
}

fn define_exposition_metrics(rewriter: Rewriter, spec: &crate::config::ExpositionSpec) -> Exposition {
    let mut outcomes = [None; OUTCOMES.len()];
    for (slot, outcome) in outcomes.iter_mut().zip(OUTCOMES) {
        let name = format!("{}.{}", crate::telemetry::EXPOSITION_SCRAPES_METRIC, encode_tags(&[("metricpact_result", outcome)]));
        *slot = EnvoyStats.define(MetricKind::Counter, &name);
    }
    let missing = spec
        .require_metrics
        .iter()
        .map(|m| {
            let name = format!("{}.{}", crate::telemetry::MISSING_REQUIRED_METRIC, encode_tags(&[("metricpact_metric", m)]));
            EnvoyStats.define(MetricKind::Counter, &name)
        })
        .collect();
    Exposition { rewriter, paths: spec.paths.clone(), outcomes, missing }
}

fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
}

/// The current stream's request, read lazily through hostcalls; `:method` and `:path` are kept
/// once read, since both the labels and the scrape check want them.
#[derive(Default)]
struct HostRequest {
    method: std::cell::OnceCell<Option<Vec<u8>>>,
    path: std::cell::OnceCell<Option<Vec<u8>>>,
}

impl RequestAttributes for HostRequest {
    fn method(&self) -> Option<Vec<u8>> {
        self.method.get_or_init(|| request_header(":method")).clone()
    }
    fn path(&self) -> Option<Vec<u8>> {
        self.path.get_or_init(|| request_header(":path")).clone()
    }
    fn scheme(&self) -> Option<Vec<u8>> {
        request_header(":scheme")
    }
    fn forwarded_proto(&self) -> Option<Vec<u8>> {
        request_header("x-forwarded-proto")
    }
    fn protocol(&self) -> Option<Vec<u8>> {
        property(&["request", "protocol"])
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        request_header(name)
    }
}

/// The current stream's outcome. Status and timing come from what the stream already saw
/// (the `:status` header, two clock reads): property lookups cost several microseconds each, so
/// they are only the fallback for streams whose response headers never passed this filter.
struct HostResponse {
    status: Option<u32>,
    started_nanos: Option<u64>,
}

impl ResponseAttributes for HostResponse {
    fn status_code(&self) -> Option<u32> {
        self.status
            .or_else(|| property_i64(&["response", "code"]).and_then(|c| u32::try_from(c).ok()))
    }
    fn code_details(&self) -> Option<Vec<u8>> {
        property(&["response", "code_details"])
    }
    fn duration_nanos(&self) -> Option<u64> {
        match self.started_nanos {
            Some(start) => now_nanos().map(|now| now.saturating_sub(start)),
            None => property_i64(&["request", "duration"]).and_then(|d| u64::try_from(d).ok()),
        }
    }
}

fn now_nanos() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    now.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_nanos() as u64)
}

fn parse_status(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let request = HostRequest::default();
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            if engine.records_duration() {
                self.started_nanos = now_nanos();
            }
            self.flight = Some(engine.start(&mut EnvoyStats, &request));
        }
        if let Some(exposition) = &self.exposition {
            let is_get = request.method().is_some_and(|m| m == b"GET");
            if is_get && request.path().is_some_and(|p| exposition.is_scrape(&p)) {
                // Ask the app for the text format, uncompressed. The response headers leave before
                // the body can be read (proxy-wasm cannot hold them and still see the body without
                // allow_on_headers_stop_iteration), so the format must be known from them: text is
                // what every client library speaks, and an app that sends OpenMetrics anyway either
                // says so in its Content-Type or gets converted to text.
                raw::set_request_header("accept", SCRAPE_ACCEPT);
                raw::set_request_header("accept-encoding", "identity");
                self.scrape = Some(Scrape { exposition: exposition.clone(), format: None });
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.status = response_header(":status").and_then(|s| parse_status(&s));
        let Some(scrape) = self.scrape.as_mut() else { return Action::Continue };
        if self.status != Some(200) || end_of_stream {
            self.scrape = None;
            return Action::Continue;
        }
        let exposition = scrape.exposition.clone();
        if response_header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case(b"identity")) {
            exposition.count(COMPRESSED);
            self.scrape = None;
            return Action::Continue;
        }
        let content_type = response_header("content-type").map(|c| String::from_utf8_lossy(&c).into_owned());
        if content_type.as_deref().is_some_and(|c| c.contains("protobuf")) {
            exposition.count(UNSUPPORTED);
            self.scrape = None;
            return Action::Continue;
        }
        let declared = response_header("content-length").and_then(|l| std::str::from_utf8(&l).ok()?.parse::<usize>().ok());
        if declared.is_some_and(|l| l > exposition.rewriter.max_body_bytes()) {
            exposition.count(TOO_LARGE);
            self.scrape = None;
            return Action::Continue;
        }
        // Envoy sends these headers before the body can be rewritten, so they are fixed now: the
        // format follows what the app declared (the body is rewritten in that format), and the
        // length goes, since it changes (HTTP/1.1 then uses chunked encoding).
        let format = Format::announced(content_type.as_deref());
        raw::set_response_header("content-type", format.content_type());
        raw::remove_response_header("content-length");
        scrape.format = Some(format);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(scrape) = self.scrape.as_ref() else { return Action::Continue };
        let exposition = scrape.exposition.clone();
        if body_size > exposition.rewriter.max_body_bytes() {
            // Release what was held, unchanged; the rest streams through.
            exposition.count(TOO_LARGE);
            self.scrape = None;
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let format = scrape.format;
        self.scrape = None;
        let Some(format) = format else { return Action::Continue };
        let body = match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) {
            Ok(Some(body)) => body,
            _ => return Action::Continue,
        };
        match exposition.rewriter.rewrite_as(&body, format) {
            Ok(rewritten) => {
                if raw::replace_response_body(body_size, &rewritten.body) {
                    exposition.count(REWRITTEN);
                    for i in rewritten.stats.missing_required {
                        if let Some(Some(id)) = exposition.missing.get(i) {
                            let _ = hostcalls::increment_metric(*id, 1);
                        }
                    }
                }
            }
            Err(e) if e.line == 0 && e.reason.contains("larger than") => exposition.count(TOO_LARGE),
            Err(_) => exposition.count(UNPARSABLE),
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            let flight = match self.flight.take() {
                Some(flight) => flight,
                None => engine.late_flight(&mut EnvoyStats, &HostRequest::default()),
            };
            let response = HostResponse { status: self.status, started_nanos: self.started_nanos };
            engine.finish(&mut EnvoyStats, flight, &response);
        }
    }
}
