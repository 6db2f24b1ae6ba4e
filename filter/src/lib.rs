//! cohort's proxy-wasm HTTP filter: decides per user, inside Envoy, whether a request goes to
//! the stable or the canary version, sets the routing header the route matches, and emits
//! version-tagged metrics.
//!
//! The decisions live in `cohort-core`; this crate is the thin shell around them:
//! [`host`] wraps every host call, [`root`] owns the config lifecycle and hands each stream the
//! [`active`] config, [`stream`] handles one request over the [`stream_host::Host`] calls it
//! makes, [`metrics`] defines metric ids once per config.

pub mod active;
#[cfg(test)]
mod fake_host;
pub mod host;
pub mod metrics;
pub mod root;
pub mod stream;
pub mod stream_host;

// The exported entry point only exists in the .wasm; native builds (clippy, unit tests) skip it.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // So a panic is at least logged before the VM dies. Not the SDK's hook (`set_log_level`): it
    // unwraps its log call, so a failing log would panic again inside the hook.
    std::panic::set_hook(Box::new(|panic| host::log(proxy_wasm::types::LogLevel::Critical, &panic.to_string())));
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::default()) });
}}
