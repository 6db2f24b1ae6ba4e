//! Every call into the proxy goes through this module. The SDK's convenience methods unwrap
//! results and decode headers as UTF-8 (a panic on hostile bytes), so only the raw `_bytes`
//! hostcalls are used here, and every failure becomes `None` or is ignored.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};

use cohort_core::decide::RequestView;

/// The current request's headers, read from the host.
pub struct RequestHeaders;

impl RequestView for RequestHeaders {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }
}

/// Sets (replaces) a request header.
pub fn set_request_header(name: &str, value: &[u8]) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value));
}

/// Removes a request header.
pub fn remove_request_header(name: &str) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
}

/// A response header as raw bytes.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
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
