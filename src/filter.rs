//! The proxy-wasm layer: reads the compiled contract in `on_configure`, then hands each HTTP
//! stream's attributes to the core [`Engine`]. Fails open: nothing here panics on host input, and
//! a stream the engine cannot serve passes untouched.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::PluginConfig;
use crate::telemetry::{Engine, Flight, MetricHost, MetricKind, RequestAttributes, ResponseAttributes};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None }) });
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
        Some(Box::new(Stream { engine: self.engine.clone(), flight: None, status: None, started_nanos: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    engine: Option<Rc<RefCell<Engine>>>,
    flight: Option<Flight>,
    status: Option<u32>,
    started_nanos: Option<u64>,
}

/// The current stream's request, read lazily through hostcalls.
struct HostRequest;

impl RequestAttributes for HostRequest {
    fn method(&self) -> Option<Vec<u8>> {
        request_header(":method")
    }
    fn path(&self) -> Option<Vec<u8>> {
        request_header(":path")
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
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            if engine.records_duration() {
                self.started_nanos = now_nanos();
            }
            self.flight = Some(engine.start(&mut EnvoyStats, &HostRequest));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| parse_status(&s));
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            let flight = match self.flight.take() {
                Some(flight) => flight,
                None => engine.late_flight(&mut EnvoyStats, &HostRequest),
            };
            let response = HostResponse { status: self.status, started_nanos: self.started_nanos };
            engine.finish(&mut EnvoyStats, flight, &response);
        }
    }
}
