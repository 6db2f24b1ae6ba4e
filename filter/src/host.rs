//! Every call into the proxy goes through this module, straight to the host's imports. The SDK's
//! `hostcalls` wrappers panic on any status they do not expect (a host error, or one newer than
//! the SDK), and with `panic = "abort"` that kills the VM in every worker; its convenience methods
//! also decode headers as UTF-8 (a panic on hostile bytes). Here every failure becomes `None` or
//! is ignored, and filter/clippy.toml keeps the SDK's wrappers out of this crate. [`Envoy`] is
//! the stream's [`Host`] made of these calls.
//!
//! Crossing into the host is what a request costs the filter (the decision itself is about
//! 0.1 µs), so the request's headers are read as one map: one call instead of one per name. Of
//! the response only one header is ever read (the events header), so that is read by name.

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

use crate::stream_host::Host;

/// The host's answer to a call, kept as the integer it is on the wire: the host may answer with
/// a status the SDK's `Status` lacks (the ABI's `Unimplemented`, 12), and reading such a value as
/// that enum would be undefined behaviour.
type RawStatus = u32;

const OK: RawStatus = Status::Ok as RawStatus;

/// A header map serialized by the host; read it with
/// [`HeaderPairs::parse`](cohort_core::header_pairs::HeaderPairs::parse). Empty on any failure.
pub fn request_headers() -> Vec<u8> {
    header_map_pairs(MapType::HttpRequestHeaders)
}

/// One response header's value, for when only one is needed: reading a whole map costs about
/// as much again as one value (BENCHMARKS.md, "Instructions per request"). `None` when absent
/// or on any failure.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    header_map_value(MapType::HttpResponseHeaders, name)
}

// The proxy-wasm ABI 0.2.1 imports, declared as the SDK's hostcalls.rs declares them except for
// the status, a [`RawStatus`].
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> RawStatus;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> RawStatus;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> RawStatus;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> RawStatus;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> RawStatus;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> RawStatus;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> RawStatus;
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> RawStatus;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> RawStatus;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> RawStatus;
    fn proxy_record_metric(metric_id: u32, value: u64) -> RawStatus;
}

/// `proxy_get_header_map_pairs` without the SDK's wrapper, which panics on a header name that is
/// not UTF-8 and on a layout it does not expect; the bytes are checked by `HeaderPairs` instead.
#[allow(unsafe_code)]
fn header_map_pairs(map_type: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if status != OK {
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
    if status != OK {
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

/// Replaces a request header; `false` when the host refused. The stream sets its routing
/// header through [`Host::set_request_header`], which removes the header on a refusal.
#[allow(unsafe_code)]
pub fn replace_request_header(name: &str, value: &[u8]) -> bool {
    // SAFETY: the host reads `name` and `value` within their lengths.
    let status = unsafe {
        proxy_replace_header_map_value(
            MapType::HttpRequestHeaders,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    status == OK
}

/// Removes a request header. A failure is ignored: the request goes on as it is.
#[allow(unsafe_code)]
pub fn remove_request_header(name: &str) {
    // SAFETY: the host reads `name` within its length.
    let _ = unsafe {
        proxy_remove_header_map_value(MapType::HttpRequestHeaders, name.as_ptr(), name.len())
    };
}

/// Adds a response header (keeps existing ones of the same name). A failure is ignored: the
/// response goes on as it is.
#[allow(unsafe_code)]
pub fn add_response_header(name: &str, value: &[u8]) {
    // SAFETY: the host reads `name` and `value` within their lengths.
    let _ = unsafe {
        proxy_add_header_map_value(
            MapType::HttpResponseHeaders,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
}

/// The plugin configuration (Envoy `configuration`, Istio `pluginConfig`); `None` when there is
/// none or on any failure.
#[allow(unsafe_code)]
pub fn plugin_configuration() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two locals.
    let status = unsafe {
        proxy_get_buffer_bytes(
            BufferType::PluginConfiguration,
            0,
            usize::MAX,
            &mut data,
            &mut size,
        )
    };
    if status != OK || data.is_null() {
        return None;
    }
    // SAFETY: `data` and `size` are what the successful call returned.
    Some(unsafe { take_host_bytes(data, size) })
}

/// Host time in nanoseconds since the Unix epoch (0 if unavailable).
#[allow(unsafe_code)]
pub fn now_nanos() -> u64 {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes the time into the local.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        nanos
    } else {
        0
    }
}

/// Writes to Envoy's log. A failure is ignored: there is nowhere left to report it.
#[allow(unsafe_code)]
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the host reads `message` within its length.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// Defines a metric: a fresh id for every call, the same series for the same name. `None` on any
/// failure: the metric is then not updated.
#[allow(unsafe_code)]
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: the host reads `name` within its length and writes the id into the local.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

/// Adds `by` to a counter. Envoy rejects increments ≤ 0, so those are skipped here; a failure is
/// ignored.
#[allow(unsafe_code)]
pub fn increment(metric: Option<u32>, by: u64) {
    if let (Some(id), Ok(by @ 1..)) = (metric, i64::try_from(by)) {
        // SAFETY: plain values, no memory shared with the host.
        let _ = unsafe { proxy_increment_metric(id, by) };
    }
}

/// Records a histogram sample or sets a gauge; a failure is ignored.
#[allow(unsafe_code)]
pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        // SAFETY: plain values, no memory shared with the host.
        let _ = unsafe { proxy_record_metric(id, value) };
    }
}

/// The real host: the stream's host calls made through this module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envoy;

impl Host for Envoy {
    fn request_headers(&mut self) -> Vec<u8> {
        request_headers()
    }

    fn replace_request_header(&mut self, name: &str, value: &[u8]) -> bool {
        replace_request_header(name, value)
    }

    fn remove_request_header(&mut self, name: &str) {
        remove_request_header(name);
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        response_header(name)
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        add_response_header(name, value);
    }

    fn now_nanos(&mut self) -> u64 {
        now_nanos()
    }

    fn increment(&mut self, metric: Option<u32>, by: u64) {
        increment(metric, by);
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    //! A fake host: the `proxy_*` imports resolve to the functions below in the test binary, so
    //! the wrappers meet whatever status a test sets, as they would in Envoy.

    use std::cell::{Cell, RefCell};

    use super::*;

    const METRIC_ID: u32 = 7;
    const NOW_NANOS: u64 = 1_700_000_000_123_456_789;
    const CONFIGURATION: &[u8] = br#"{"version": 1}"#;

    /// OK, the errors Envoy answers with, and one the SDK's `Status` lacks (`Unimplemented`).
    const STATUSES: [u32; 5] = [0, 1, 2, 10, 12];

    thread_local! {
        static STATUS: Cell<u32> = const { Cell::new(0) };
        static CALLS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// The host calls `run` made, each answered with `status`.
    fn calls_with_status(status: u32, run: impl FnOnce()) -> Vec<String> {
        STATUS.set(status);
        CALLS.take();
        run();
        CALLS.take()
    }

    /// Notes a call and answers with the status the test set.
    fn answer(call: String) -> u32 {
        CALLS.with_borrow_mut(|calls| calls.push(call));
        STATUS.get()
    }

    /// # Safety
    /// `data` points to `size` readable bytes.
    unsafe fn text(data: *const u8, size: usize) -> String {
        // SAFETY: the caller's contract above.
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(data, size) }).into_owned()
    }

    #[no_mangle]
    extern "C" fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32 {
        // SAFETY: the wrapper passes a name it holds and a local for the id.
        let name = unsafe { text(name_data, name_size) };
        let status = answer(format!("define {metric_type:?} {name}"));
        // SAFETY: as above.
        unsafe { *return_id = METRIC_ID };
        status
    }

    #[no_mangle]
    extern "C" fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32 {
        answer(format!("increment {metric_id} by {offset}"))
    }

    #[no_mangle]
    extern "C" fn proxy_record_metric(metric_id: u32, value: u64) -> u32 {
        answer(format!("record {metric_id} = {value}"))
    }

    #[no_mangle]
    extern "C" fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32 {
        // SAFETY: the wrapper passes a name and a value it holds.
        unsafe {
            header_write(
                "replace", map_type, key_data, key_size, value_data, value_size,
            )
        }
    }

    #[no_mangle]
    extern "C" fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> u32 {
        // SAFETY: the wrapper passes a name it holds.
        let key = unsafe { text(key_data, key_size) };
        answer(format!("remove {map_type:?} {key}"))
    }

    #[no_mangle]
    extern "C" fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32 {
        // SAFETY: the wrapper passes a name and a value it holds.
        unsafe { header_write("add", map_type, key_data, key_size, value_data, value_size) }
    }

    /// Notes a header write, `verb MAP name: value`, and answers.
    ///
    /// # Safety
    /// `key_data` and `value_data` point to `key_size` and `value_size` readable bytes.
    unsafe fn header_write(
        verb: &str,
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32 {
        // SAFETY: the caller's contract above.
        let (key, value) = unsafe { (text(key_data, key_size), text(value_data, value_size)) };
        answer(format!("{verb} {map_type:?} {key}: {value}"))
    }

    #[no_mangle]
    extern "C" fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32 {
        // SAFETY: the wrapper passes a local for the time.
        unsafe { *return_time = NOW_NANOS };
        answer("time".to_owned())
    }

    #[no_mangle]
    extern "C" fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> u32 {
        // SAFETY: the wrapper passes a message it holds.
        let message = unsafe { text(message_data, message_size) };
        answer(format!("log {level:?} {message}"))
    }

    #[no_mangle]
    extern "C" fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32 {
        // The whole buffer, from its start.
        let whole = start == 0 && max_size == usize::MAX;
        let status = answer(format!(
            "buffer {buffer_type:?}{}",
            if whole { "" } else { " (part)" }
        ));
        if status == 0 {
            // Allocated as the SDK's `proxy_on_memory_allocate` does: a boxed slice.
            let data: Box<[u8]> = CONFIGURATION.into();
            // SAFETY: the wrapper passes two locals; it takes ownership of the block.
            unsafe {
                *return_buffer_size = data.len();
                *return_buffer_data = Box::into_raw(data).cast::<u8>();
            }
        }
        status
    }

    #[test]
    fn every_host_call_survives_every_status() {
        // (the host call it makes, a wrapper call checking its result given whether the host
        // answered OK)
        type Row = (&'static str, fn(bool));
        let table: &[Row] = &[
            ("define Counter requests", |ok| {
                let id = define_metric(MetricType::Counter, "requests");
                assert_eq!(id, ok.then_some(METRIC_ID));
            }),
            ("buffer PluginConfiguration", |ok| {
                assert_eq!(plugin_configuration(), ok.then(|| CONFIGURATION.to_vec()));
            }),
            ("time", |ok| {
                assert_eq!(now_nanos(), if ok { NOW_NANOS } else { 0 });
            }),
            (
                "replace HttpRequestHeaders x-cohort-version: canary",
                |_| {
                    Envoy.set_request_header("x-cohort-version", b"canary");
                },
            ),
            ("replace HttpRequestHeaders x-other: v", |ok| {
                assert_eq!(replace_request_header("x-other", b"v"), ok);
            }),
            ("remove HttpRequestHeaders x-cohort-force", |_| {
                remove_request_header("x-cohort-force");
            }),
            ("add HttpResponseHeaders set-cookie: id=1", |_| {
                add_response_header("set-cookie", b"id=1");
            }),
            ("log Info hello", |_| log(LogLevel::Info, "hello")),
            ("increment 3 by 4", |_| increment(Some(3), 4)),
            ("record 5 = 6", |_| record(Some(5), 6)),
        ];
        let mut failures = Vec::new();
        for status in STATUSES {
            for (want, call) in table {
                // A refused routing header is removed instead, so the client's value goes.
                let want = match (*want, status) {
                    ("replace HttpRequestHeaders x-cohort-version: canary", 1..) => {
                        "replace HttpRequestHeaders x-cohort-version: canary; \
                         remove HttpRequestHeaders x-cohort-version"
                    }
                    (want, _) => want,
                };
                match std::panic::catch_unwind(|| calls_with_status(status, || call(status == 0))) {
                    Ok(calls) if calls.join("; ") == want => {}
                    Ok(calls) => failures.push(format!("{want}, status {status}: made {calls:?}")),
                    Err(_) => failures.push(format!("{want}, status {status}: panicked")),
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn metric_updates_the_host_would_reject_are_not_made() {
        let over_i64 = u64::try_from(i64::MAX).unwrap() + 1;
        // (metric, increment by, the host call made)
        let table: &[(Option<u32>, u64, Option<&str>)] = &[
            (Some(3), 1, Some("increment 3 by 1")),
            (
                Some(3),
                over_i64 - 1,
                Some("increment 3 by 9223372036854775807"),
            ),
            (Some(3), 0, None),
            (Some(3), over_i64, None),
            (None, 1, None),
        ];
        for (metric, by, want) in table {
            let calls = calls_with_status(0, || increment(*metric, *by));
            assert_eq!(
                calls.first().map(String::as_str),
                *want,
                "{metric:?} by {by}"
            );
        }
        assert_eq!(
            calls_with_status(0, || record(None, 1)),
            Vec::<String>::new()
        );
    }
}
