//! The baseline of `bench-envoy`'s set-up (b): the cheapest useful proxy-wasm HTTP filter. It
//! reads one request header (`x-user-id`, the header cohort buckets on in set-up (c)) and lets
//! the request through, so what set-up (b) adds over no filter is the wasm VM, the context
//! per stream and one host call: the floor any wasm filter pays. Not shipped.
//!
//! Build it like the real filter:
//! `cargo build -p cohort-bench-noop-filter --target wasm32-wasip1 --profile wasm`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

/// The header read per request.
pub const HEADER: &str = "x-user-id";

/// Makes one [`Stream`] per request.
#[derive(Debug, Default)]
pub struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request: read the header, continue.
#[derive(Debug, Default)]
pub struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        std::hint::black_box(self.get_http_request_header(HEADER));
        Action::Continue
    }
}

// The exported entry point only exists in the .wasm; native builds (clippy) skip it.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
