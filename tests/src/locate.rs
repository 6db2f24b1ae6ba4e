//! The workspace's Envoy binary and filter, found by the lab's locator
//! (`cohort_lab::locate`) with the tests' policy: nothing missing is skipped, and the
//! filter is rebuilt (once per test process, a no-op when fresh) so a stale one never runs.

use std::path::PathBuf;
use std::sync::OnceLock;

use cohort_lab::locate::{self, WasmBuild};

use crate::{workspace_root, Result};

/// The Envoy binary: `$COHORT_ENVOY`, else the workspace's `.venv-envoy`, else `envoy` on `PATH`.
pub fn envoy_binary() -> Result<PathBuf> {
    Ok(locate::envoy_binary(None, Some(&workspace_root()))?)
}

/// The filter's `.wasm`: `$COHORT_WASM` if set, else built with cargo.
pub fn filter_wasm() -> Result<PathBuf> {
    static WASM: OnceLock<Result<PathBuf>> = OnceLock::new();
    WASM.get_or_init(|| {
        let found = locate::filter_wasm(None, Some(&workspace_root()), WasmBuild::Always)?;
        Ok(found.path)
    })
    .clone()
}

/// `cargo build -p PACKAGE --target wasm32-wasip1 --profile wasm` (a no-op when fresh), and the
/// `.wasm` it made.
pub fn build_wasm(package: &str) -> Result<PathBuf> {
    Ok(locate::build_wasm(&workspace_root(), package)?)
}
