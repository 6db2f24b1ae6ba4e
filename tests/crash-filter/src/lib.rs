//! Test-only: a proxy-wasm HTTP filter that crashes its VM on demand, loaded in cohort's own
//! bootstrap and ECDS shape (`failure_policy: FAIL_RELOAD`) by `tests/tests/fault_drills.rs`.
//! cohort's filter has no way to crash on purpose, and must not get one; this stands in for it
//! to show what Envoy does when a filter VM dies.
//!
//! - Every request gets `x-cohort-version: canary` when it carries `x-route: canary`, else
//!   `stable` (the bootstrap's routes then pick the cluster), like cohort's filter.
//! - A request with `x-crash` panics; built with `panic = "abort"` (the `wasm` profile), the VM
//!   traps and Envoy marks it failed.
//! - `crash_test_vm_starts` counts VM starts, so a test sees a fresh VM after a reload.
//! - `crash_test_configs` counts accepted configurations (`on_configure` runs again in a new VM).
//!
//! Build: `cargo build -p cohort-test-crash-filter --target wasm32-wasip1 --profile wasm`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

/// The header that crashes the VM.
pub const CRASH_HEADER: &str = "x-crash";
/// The header that picks the version.
pub const ROUTE_HEADER: &str = "x-route";
/// Counter of VM starts.
pub const VM_STARTS: &str = "crash_test_vm_starts";
/// Counter of accepted configurations.
pub const CONFIGS: &str = "crash_test_configs";

fn count(name: &str) {
    if let Ok(id) = hostcalls::define_metric(MetricType::Counter, name) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// The root context: counts VM starts and configurations.
#[derive(Debug, Default)]
pub struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        count(VM_STARTS);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        count(CONFIGS);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request.
#[derive(Debug, Default)]
pub struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let header = |name| {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
        };
        if header(CRASH_HEADER).is_some() {
            #[allow(clippy::panic)]
            {
                panic!("crash requested by the {CRASH_HEADER} header");
            }
        }
        let version: &[u8] = if header(ROUTE_HEADER).as_deref() == Some(b"canary") {
            b"canary"
        } else {
            b"stable"
        };
        let _ = hostcalls::set_map_value_bytes(
            MapType::HttpRequestHeaders,
            "x-cohort-version",
            Some(version),
        );
        Action::Continue
    }
}

// The exported entry point only exists in the .wasm; native builds (clippy) skip it.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
