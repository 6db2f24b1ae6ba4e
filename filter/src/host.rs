//! Every call into the proxy goes through this module. The SDK's convenience methods unwrap
//! results and decode headers as UTF-8 (a panic on hostile bytes), so only the raw `_bytes`
//! hostcalls are used here, and every failure becomes `None` or is ignored.
//!
//! Crossing into the host is what a request costs the filter (the decision itself is about
//! 0.1 µs), so headers are read as whole maps: one call per direction instead of one per name.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

/// A header map serialized by the host; read it with
/// [`HeaderPairs::parse`](cohort_core::header_pairs::HeaderPairs::parse). Empty on any failure.
pub fn request_headers() -> Vec<u8> {
    header_map_pairs(MapType::HttpRequestHeaders)
}

/// The response's headers, serialized like [`request_headers`].
pub fn response_headers() -> Vec<u8> {
    header_map_pairs(MapType::HttpResponseHeaders)
}

/// One response header's value, for when only one is needed: reading a whole map costs about
/// as much again as one value (BENCHMARKS.md, "Instructions per request"). `None` when absent
/// or on any failure.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    header_map_value(MapType::HttpResponseHeaders, name)
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// `proxy_get_header_map_pairs` without the SDK's wrapper, which panics on a header name that is
/// not UTF-8 and on a layout it does not expect; the bytes are checked by `HeaderPairs` instead.
#[allow(unsafe_code)]
fn header_map_pairs(map_type: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if !matches!(status, Status::Ok) {
        return Vec::new();
    }
    // SAFETY: `data` and `size` are what the successful call returned.
    unsafe { take_host_bytes(data, size) }
}

/// `proxy_get_header_map_value` without the SDK's wrapper, which panics on a value that is not
/// UTF-8 and on an unexpected status.
#[allow(unsafe_code)]
fn header_map_value(map_type: MapType, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host reads `name` within its length and writes a pointer and a size into the
    // two locals.
    let status = unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    if !matches!(status, Status::Ok) {
        return None;
    }
    // SAFETY: `data` and `size` are what the successful call returned.
    Some(unsafe { take_host_bytes(data, size) })
}

/// Takes ownership of the bytes a successful host call returned in `data` and `size` (empty
/// when `data` is null).
///
/// # Safety
/// A non-null `data` must be what the host returned: a block of exactly `size` bytes that it
/// obtained from this module's `proxy_on_memory_allocate` (the SDK's allocator: a boxed `[u8]`
/// of that length), owned by no one else. The Vec then takes ownership with length = capacity
/// = `size`, as the SDK's own wrappers do.
#[allow(unsafe_code)]
unsafe fn take_host_bytes(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller's contract above.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Sets (replaces) a request header.
pub fn set_request_header(name: &str, value: &[u8]) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value));
}

/// Removes a request header.
pub fn remove_request_header(name: &str) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
}

/// Adds a response header (keeps existing ones of the same name).
pub fn add_response_header(name: &str, value: &[u8]) {
    let _ = hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value);
}

/// The plugin configuration (Envoy `configuration`, Istio `pluginConfig`).
pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

/// Host time in nanoseconds since the Unix epoch (0 if unavailable).
pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes to Envoy's log.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Defines (or looks up) a metric; Envoy returns the same id for the same name.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

/// Adds `by` to a counter. Envoy rejects increments ≤ 0, so those are skipped here.
pub fn increment(metric: Option<u32>, by: u64) {
    if let (Some(id), Ok(by @ 1..)) = (metric, i64::try_from(by)) {
        let _ = hostcalls::increment_metric(id, by);
    }
}

/// Records a histogram sample or sets a gauge.
pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, value);
    }
}
