//! The contract shared by cohort's proxy filter and its controller.
//!
//! Pure code only: no I/O, no host calls. It builds and is tested on native targets and on
//! `wasm32-wasip1`, where the filter runs it inside Envoy.
//!
//! - [`bucket`]: which cohort and basis-point bucket a user key falls in.
//! - [`config`]: the filter's JSON wire format and its validation into a ready-to-use [`config::Compiled`].
//! - [`decide`]: the per-request decision (which rollout, which user key, which version).
//! - [`header_pairs`]: reading a header map in the layout the proxy-wasm host serializes it.
//! - [`telemetry`]: metric names and the tag encoding Envoy's tag extraction expects.

pub mod bucket;
pub mod config;
pub mod decide;
pub mod header_pairs;
mod sort;
pub mod telemetry;
