//! Every hostcall the filter makes, called directly: the SDK's wrappers panic on a status they do
//! not expect, and a panic takes the worker's VM down for good. Here any refusal is just `None` /
//! `false`, and the caller carries on without it (fail open).

use std::ptr::null_mut;

use crate::telemetry::budget::{SetOutcome, SharedStore, Unavailable};

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_replace_header_map_value(map_type: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(map_type: u32, key: *const u8, key_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize) -> u32;
    fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize) -> u32;
    fn proxy_get_shared_data(key: *const u8, key_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize, return_cas: *mut u32) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_define_metric(metric_type: u32, name: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
}

const OK: u32 = 0;
/// `Status::CasMismatch` of the proxy-wasm ABI.
const CAS_MISMATCH: u32 = 8;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const RESPONSE_BODY: u32 = 1;
pub const PLUGIN_CONFIGURATION: u32 = 7;

pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;
pub const HISTOGRAM: u32 = 2;

/// Takes ownership of what the host returned: it allocated it through `proxy_on_memory_allocate`
/// (a boxed slice of `size` bytes).
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    (!data.is_null()).then(|| Vec::from_raw_parts(data, size, size))
}

pub fn set_header(map: u32, name: &str, value: &str) -> bool {
    unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) == OK }
}

pub fn remove_header(map: u32, name: &str) -> bool {
    unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) == OK }
}

pub fn header(map: u32, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    unsafe {
        let status = proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size);
        let value = owned(data, size);
        (status == OK).then_some(value).flatten()
    }
}

/// A header map serialized as proxy-wasm does; one hostcall for all of it.
pub fn header_pairs(map: u32) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    unsafe {
        let status = proxy_get_header_map_pairs(map, &mut data, &mut size);
        let value = owned(data, size);
        (status == OK).then_some(value).flatten()
    }
}

pub fn buffer(buffer_type: u32, max_size: usize) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    unsafe {
        let status = proxy_get_buffer_bytes(buffer_type, 0, max_size, &mut data, &mut size);
        let value = owned(data, size);
        (status == OK).then_some(value).flatten()
    }
}

pub fn replace_buffer(buffer_type: u32, old_size: usize, bytes: &[u8]) -> bool {
    unsafe { proxy_set_buffer_bytes(buffer_type, 0, old_size, bytes.as_ptr(), bytes.len()) == OK }
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0);
    unsafe {
        let status = proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size);
        let value = owned(data, size);
        (status == OK).then_some(value).flatten()
    }
}

/// The value (if any) and its CAS token.
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), Unavailable> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    unsafe {
        let status = proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas);
        let value = owned(data, size);
        match status {
            OK => Ok((value, cas)),
            // NotFound
            1 => Ok((None, 0)),
            _ => Err(Unavailable),
        }
    }
}

pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> SetOutcome {
    match unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) } {
        OK => SetOutcome::Stored,
        CAS_MISMATCH => SetOutcome::CasMismatch,
        _ => SetOutcome::Failed,
    }
}

/// Envoy's shared data (every VM with our vm_id sees it): where the budgets live.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), Unavailable> {
        shared_data(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        set_shared_data(key, value, cas)
    }
}

pub fn define_metric(kind: u32, name: &str) -> Option<u32> {
    let mut id = 0;
    (unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) } == OK).then_some(id)
}

pub fn increment_metric(id: u32, delta: i64) {
    unsafe { proxy_increment_metric(id, delta) };
}

pub fn record_metric(id: u32, value: u64) {
    unsafe { proxy_record_metric(id, value) };
}

pub fn metric(id: u32) -> Option<u64> {
    let mut value = 0;
    (unsafe { proxy_get_metric(id, &mut value) } == OK).then_some(value)
}

pub fn now_nanos() -> Option<u64> {
    let mut now = 0;
    (unsafe { proxy_get_current_time_nanoseconds(&mut now) } == OK).then_some(now)
}

pub fn set_tick_period(period: std::time::Duration) -> bool {
    unsafe { proxy_set_tick_period_milliseconds(period.as_millis().min(u32::MAX as u128) as u32) == OK }
}
