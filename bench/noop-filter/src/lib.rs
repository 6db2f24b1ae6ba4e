//! The baselines of `bench-envoy`: the cheapest useful proxy-wasm HTTP filter, in two modes.
//!
//! - set-up (b), any configuration: it reads one request header (`x-user-id`, the header cohort
//!   buckets on in set-up (c)) and lets the request through, so what it adds over no filter is
//!   the wasm VM, the context per stream and one host call: the floor any wasm filter pays;
//! - set-up (d), configuration [`SET_ROUTING_HEADER`]: it also sets `x-cohort-version`, to
//!   `canary` when the header's value ends in 0, 1 or 2 (30% of the bench's users, near the 27%
//!   cohort sends there) and to `stable` otherwise. Envoy then clears its route cache, matches
//!   the route again and splits the traffic over both upstreams as cohort does: the floor any
//!   filter pays that routes by a header it sets.
//!
//! Not shipped. Build it like the real filter:
//! `cargo build -p cohort-bench-noop-filter --target wasm32-wasip1 --profile wasm`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

/// The header read per request.
pub const HEADER: &str = "x-user-id";

/// The configuration that turns on setting the routing header.
pub const SET_ROUTING_HEADER: &str = "set-routing-header";

/// The header set in that mode.
pub const ROUTING_HEADER: &str = "x-cohort-version";

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
    sets_routing_header: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.sets_routing_header = self
            .get_plugin_configuration()
            .is_some_and(|config| config == SET_ROUTING_HEADER.as_bytes());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            sets_routing_header: self.sets_routing_header,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request: read the header, maybe set the routing header, continue.
#[derive(Debug, Default)]
pub struct Stream {
    sets_routing_header: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = std::hint::black_box(self.get_http_request_header_bytes(HEADER));
        if self.sets_routing_header {
            let version = version_for(value.as_deref());
            self.set_http_request_header_bytes(ROUTING_HEADER, Some(version.as_bytes()));
        }
        Action::Continue
    }
}

// The exported entry point only exists in the .wasm; native builds (clippy) skip it.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}
