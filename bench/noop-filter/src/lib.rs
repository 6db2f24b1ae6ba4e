//! The baselines of `bench-envoy`: the cheapest useful proxy-wasm HTTP filter, in two modes.
//!
//! - set-up (b), any configuration: it reads one request header (`x-user-id`, the header cohort
//!   buckets on in set-up (c)) and lets the request through, so what it adds over no filter is
//!   the wasm VM, the context per stream and one host call: the floor any wasm filter pays;
//! - set-up (d), configuration [`SET_ROUTING_HEADER`]: it also sets `x-cohort-version`, to
//!   `canary` when the header's value ends in 0, 1 or 2 (30% of the bench's users, near the 27%
//!   cohort sends there) and to `stable` otherwise. Envoy then clears its route cache, matches
//!   the route again and splits the traffic over both upstreams as cohort does: the floor any
//!   filter pays that routes by a header it sets;
//! - set-up (f), configuration [`CONTRACT_HOST_CALLS`]: it makes the host calls cohort makes per
//!   request when its config lists events (set-up (g)), and nothing else: on the request, the
//!   request's header map (one call), the routing header as in (d) and the decision counter; on
//!   the response, the events header (one value, by name) and the events counter for the event
//!   it names. What (f) adds is the floor for any filter that keeps the metric contract
//!   (ARCHITECTURE.md, Contracts); what (g) adds over (f) is cohort's own computation, less what
//!   cohort saves by exporting only the callbacks it implements (this module keeps the SDK's full
//!   set unless `scripts/bench-envoy --noop-trimmed`).
//!
//! Not shipped. Build it like the real filter:
//! `cargo build -p cohort-bench-noop-filter --target wasm32-wasip1 --profile wasm`.

use cohort_core::header_pairs::HeaderPairs;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType, Status};

/// The response header (f) reads, as cohort's default `eventsHeader`.
pub const EVENTS_HEADER: &str = "x-cohort-events";

/// The event (f) counts, the one the bench's upstreams report.
pub const EVENT: &[u8] = b"checkout";

/// The header read per request.
pub const HEADER: &str = "x-user-id";

/// The configuration that turns on setting the routing header.
pub const SET_ROUTING_HEADER: &str = "set-routing-header";

/// The header set in that mode.
pub const ROUTING_HEADER: &str = "x-cohort-version";

/// The configuration that makes cohort's per-request host calls (set-up (f)).
pub const CONTRACT_HOST_CALLS: &str = "contract-host-calls";

/// What the filter does per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// (b): read one header.
    #[default]
    ReadHeader,
    /// (d): also set the routing header.
    SetRoutingHeader,
    /// (f): cohort's host calls.
    ContractHostCalls(Metrics),
}

/// The metric ids (f) writes, defined once per configuration as cohort's are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    decisions: u32,
    events: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
        Some(Metrics {
            decisions: hostcalls::define_metric(MetricType::Counter, "bench_decisions_total")
                .ok()?,
            events: hostcalls::define_metric(MetricType::Counter, "bench_events_total").ok()?,
        })
    }
}

/// The version (d) routes a request to, by the last byte of its [`HEADER`].
pub fn version_for(value: Option<&[u8]>) -> &'static str {
    match value.and_then(<[u8]>::last) {
        Some(b'0'..=b'2') => "canary",
        _ => "stable",
    }
}

/// Makes one [`Stream`] per request.
#[derive(Debug, Default)]
pub struct Root {
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.mode = if config == SET_ROUTING_HEADER.as_bytes() {
            Mode::SetRoutingHeader
        } else if config == CONTRACT_HOST_CALLS.as_bytes() {
            match Metrics::define() {
                Some(metrics) => Mode::ContractHostCalls(metrics),
                None => return false,
            }
        } else {
            Mode::ReadHeader
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { mode: self.mode }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request: read the header, maybe set the routing header, continue; in (f), also what
/// cohort reads and counts.
#[derive(Debug, Default)]
pub struct Stream {
    mode: Mode,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.mode {
            Mode::ReadHeader => {
                std::hint::black_box(self.get_http_request_header_bytes(HEADER));
            }
            Mode::SetRoutingHeader => {
                let value = self.get_http_request_header_bytes(HEADER);
                let version = version_for(value.as_deref());
                self.set_http_request_header_bytes(ROUTING_HEADER, Some(version.as_bytes()));
            }
            Mode::ContractHostCalls(metrics) => {
                let map = header_map_pairs(MapType::HttpRequestHeaders);
                let version = version_for(HeaderPairs::parse(&map).get(HEADER));
                self.set_http_request_header_bytes(ROUTING_HEADER, Some(version.as_bytes()));
                let _ = hostcalls::increment_metric(metrics.decisions, 1);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Mode::ContractHostCalls(metrics) = self.mode {
            let reported = self.get_http_response_header_bytes(EVENTS_HEADER);
            if reported.is_some_and(|value| value.split(|&b| b == b',').any(|e| e == EVENT)) {
                let _ = hostcalls::increment_metric(metrics.events, 1);
            }
        }
        Action::Continue
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// One header map in one host call, as cohort's filter reads it: a copy of `filter/src/host.rs`'s
/// reader, since this crate cannot link the filter crate (both export the module's entry
/// points), and the SDK's own `get_map_bytes` would also copy every pair into owned strings,
/// making (f) dearer than cohort's calls.
#[allow(unsafe_code)]
fn header_map_pairs(map_type: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in filter/src/host.rs: a non-null pointer is a block of exactly `size` bytes
    // from this module's `proxy_on_memory_allocate` (a boxed `[u8]` of that length).
    unsafe {
        if !matches!(
            proxy_get_header_map_pairs(map_type, &mut data, &mut size),
            Status::Ok
        ) || data.is_null()
        {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

// The exported entry point only exists in the .wasm; native builds (clippy) skip it.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}
