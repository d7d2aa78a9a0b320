//! A proxy-wasm HTTP filter that makes one kind of hostcall N times in each request's
//! `on_http_request_headers`, configured as `OPERATION:N` (e.g. `property:50`). Measured against
//! the empty filter, (its CPU - the empty filter's) / N is what one such hostcall costs in Envoy.
//! The operations are the hostcalls metricpact makes per request, made the way it makes them:
//!   clock      proxy_get_current_time_nanoseconds
//!   headers    proxy_get_header_map_pairs (request headers, serialized map, no parsing)
//!   header     proxy_get_header_map_value (`:path`)
//!   property   proxy_get_property (`request.protocol`)
//!   counter    proxy_increment_metric on a counter
//!   gauge      proxy_increment_metric on a gauge (+1, then -1 in the next call)
//!   histogram  proxy_record_metric on a histogram
//!   cel1, cel4 proxy_call_foreign_function("expr_evaluate") of a CEL expression created in
//!              on_configure: `request.protocol`, and a list of four attributes (batching)
//! Results returned by the host are freed at once. A configuration it cannot read makes
//! on_configure fail (the bench checks the probe's counter moved). A call that fails (a status
//! other than Ok, or no data where data must come back) is counted in `probe.failures`: the bench
//! refuses to price a call that did not work.

use std::cell::Cell;
use std::ptr::null_mut;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

extern "C" {
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(map_type: u32, key_data: *const u8, key_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize) -> u32;
    fn proxy_get_property(path_data: *const u8, path_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_call_foreign_function(name_data: *const u8, name_size: usize, arguments_data: *const u8, arguments_size: usize, return_results_data: *mut *mut u8, return_results_size: *mut usize) -> u32;
}

const REQUEST_HEADERS: u32 = 0;

#[derive(Clone, Copy)]
enum Operation {
    Clock,
    Headers,
    Header,
    Property,
    Counter,
    Gauge,
    Histogram,
    Cel1,
    Cel4,
}

#[derive(Clone, Copy)]
struct Probe {
    operation: Operation,
    count: u32,
    /// The metric the operation updates; `calls` counts the probe's requests, to show it ran;
    /// `failures` the calls that did not work.
    metric: u32,
    calls: u32,
    failures: u32,
    /// The CEL expression's token (`expr_create`), for the cel operations.
    token: u32,
}

thread_local! {
    static PROBE: Cell<Option<Probe>> = const { Cell::new(None) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().and_then(|c| String::from_utf8(c).ok()).unwrap_or_default();
        let Some((name, count)) = config.split_once(':') else { return false };
        let Ok(count) = count.parse() else { return false };
        let (operation, kind) = match name {
            "clock" => (Operation::Clock, MetricType::Counter),
            "headers" => (Operation::Headers, MetricType::Counter),
            "header" => (Operation::Header, MetricType::Counter),
            "property" => (Operation::Property, MetricType::Counter),
            "counter" => (Operation::Counter, MetricType::Counter),
            "gauge" => (Operation::Gauge, MetricType::Gauge),
            "histogram" => (Operation::Histogram, MetricType::Histogram),
            "cel1" => (Operation::Cel1, MetricType::Counter),
            "cel4" => (Operation::Cel4, MetricType::Counter),
            _ => return false,
        };
        let (Ok(metric), Ok(calls), Ok(failures)) = (
            hostcalls::define_metric(kind, "probe.metric"),
            hostcalls::define_metric(MetricType::Counter, "probe.requests"),
            hostcalls::define_metric(MetricType::Counter, "probe.failures"),
        ) else {
            return false;
        };
        let expression = match operation {
            Operation::Cel1 => Some("request.protocol"),
            Operation::Cel4 => Some("[request.protocol, request.method, request.path, 'x-tenant-tier' in request.headers ? request.headers['x-tenant-tier'] : '']"),
            _ => None,
        };
        let mut token = 0;
        if let Some(expression) = expression {
            match hostcalls::call_foreign_function("expr_create", Some(expression.as_bytes())) {
                Ok(Some(t)) if t.len() == 4 => token = u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
                _ => return false,
            }
        }
        PROBE.with(|p| p.set(Some(Probe { operation, count, metric, calls, failures, token })));
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream;

impl Context for Stream {}

/// Frees what the host allocated in this VM for a hostcall's result.
fn free(data: *mut u8, size: usize) {
    if !data.is_null() {
        drop(unsafe { Vec::from_raw_parts(data, size, size) });
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(probe) = PROBE.with(|p| p.get()) else { return Action::Continue };
        let (mut data, mut size) = (null_mut(), 0);
        let mut failed = 0;
        for i in 0..probe.count {
            // Ok is 0 in the proxy-wasm ABI; data-returning calls must also return data.
            let worked = unsafe {
                match probe.operation {
                    Operation::Clock => {
                        let mut now = 0;
                        proxy_get_current_time_nanoseconds(&mut now) == 0 && now > 0
                    }
                    Operation::Headers => {
                        let status = proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size);
                        free(data, size);
                        status == 0 && size > 0
                    }
                    Operation::Header => {
                        let status = proxy_get_header_map_value(REQUEST_HEADERS, b":path".as_ptr(), 5, &mut data, &mut size);
                        free(data, size);
                        status == 0 && size > 0
                    }
                    Operation::Property => {
                        let path = b"request\0protocol";
                        let status = proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size);
                        free(data, size);
                        status == 0 && size > 0
                    }
                    Operation::Counter => proxy_increment_metric(probe.metric, 1) == 0,
                    Operation::Gauge => proxy_increment_metric(probe.metric, if i % 2 == 0 { 1 } else { -1 }) == 0,
                    Operation::Histogram => proxy_record_metric(probe.metric, 42) == 0,
                    Operation::Cel1 | Operation::Cel4 => {
                        let name = b"expr_evaluate";
                        let token = probe.token.to_le_bytes();
                        let status = proxy_call_foreign_function(name.as_ptr(), name.len(), token.as_ptr(), 4, &mut data, &mut size);
                        free(data, size);
                        status == 0 && size > 0
                    }
                }
            };
            failed += u32::from(!worked);
            (data, size) = (null_mut(), 0);
        }
        unsafe {
            proxy_increment_metric(probe.calls, 1);
            if failed > 0 {
                proxy_increment_metric(probe.failures, i64::from(failed));
            }
        }
        Action::Continue
    }
}
